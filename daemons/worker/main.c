/* SPDX-License-Identifier: Apache-2.0 */
/* dibba-worker: the host agent that consumes its route's tasks, runs them through plugins and heartbeats. */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dibba-config.h"
#include "dibba/alloc.h"
#include "dibba/config.h"
#include "dibba/daemon.h"
#include "dibba/error.h"
#include "dibba/log.h"
#include "dibba/node.h"
#include "dibba/pbjson.h"
#include "dibba/redis.h"
#include "dibba/task_queue.h"
#include "dibba/time.h"

#define MAX_ROUTES 8

typedef struct worker_s {
  dibba_daemon_t *d;
  char *routing_key;
  size_t routing_key_len;
  dibba_task_key_t key;
  dibba_task_registry_t reg;
  char hostname[256];
  char roles[256];
  char plugins[256]; /* the loaded plugins' names, comma-separated: in the heartbeat for placement */
  const char *prefix;
  char routes[MAX_ROUTES][DIBBA_ROUTE_LEN + 1];
  size_t nroutes;
  dibba_task_consumer_t *consumer;
  dibba_redis_t *hb;
  uv_timer_t hb_timer;
  int hb_timer_open, hb_inflight;
  int64_t hb_seconds;
  int64_t grace_ms;
  dibba_node_cpu_sample_t last_cpu;
  char *node_info_json;
  json_t *plugin_cfgs; /* the config objects handed to plugins: they borrow them until the registry is freed */
} worker_t;

/* ---- plugins ---- */

/* What plugin `base` sees as its config: "plugins.<base>", plus the daemon's own "<base>" section (aws.* with
 * the AWS_* environment overrides), "redis" and "log" sections, unless "plugins.<base>" sets those keys itself. A
 * plugin that reads the daemon's settings for its name (the aws plugin reads aws.* and redis.*) gets them
 * whether or not the operator repeated them under plugins. The object is kept in w->plugin_cfgs. */
static const json_t *plugin_config(worker_t *w, const char *base) {
  const dibba_config_t *cfg = &w->d->cfg;
  char key[128];
  snprintf(key, sizeof key, "plugins.%s", base);
  json_t *own = dibba_config_node(cfg, key);
  json_t *out = json_is_object(own) ? json_copy(own) : json_object();
  json_t *section = json_object_get(cfg->root, base);
  json_t *redis = json_object_get(cfg->root, "redis");
  if (json_is_object(section) && json_object_get(out, base) == NULL)
    json_object_set(out, base, section);
  if (json_is_object(redis) && json_object_get(out, "redis") == NULL)
    json_object_set(out, "redis", redis);
  /* A plugin links its own copy of lib/core: it opens its logger with the daemon's level and file. */
  json_t *log = json_object_get(cfg->root, "log");
  if (json_is_object(log) && json_object_get(out, "log") == NULL)
    json_object_set(out, "log", log);
  if (w->plugin_cfgs == NULL)
    w->plugin_cfgs = json_array();
  json_array_append_new(w->plugin_cfgs, out);
  return out;
}

static int resolve_plugin(const char *dir, const char *name, char *out, size_t len) {
  if (strchr(name, '/')) {
    snprintf(out, len, "%s", name);
    return 0;
  }
  for (int i = 0; i < 3; i++) {
    if (i == 0)
      snprintf(out, len, "%s/%s.so", dir, name);
    else if (i == 1)
      snprintf(out, len, "%s/%s/%s.so", dir, name, name);
    else
      snprintf(out, len, "%s/dibba_%s.so", dir, name);
    if (access(out, R_OK) == 0)
      return 0;
  }
  return -ENOENT;
}

static int load_plugins(worker_t *w, char *err, size_t errlen) {
  const dibba_config_t *cfg = &w->d->cfg;
  const char *dir = NULL;
  int rc = dibba_config_str(cfg, "worker.plugin_dir", NULL, &dir, err, errlen);
  if (rc < 0)
    return rc;
  if (dir == NULL)
    dir = getenv("DIBBA_PLUGIN_DIR");
  if (dir == NULL)
    dir = DIBBA_PLUGINDIR;
  json_t *list = dibba_config_node(cfg, "worker.plugins");
  json_t *def = NULL;
  if (list == NULL)
    list = def = json_pack("[s]", "node");
  if (!json_is_array(list)) {
    json_decref(def);
    return dibba_error_set(err, errlen, DIBBA_ECONFIG, "worker.plugins must be a list of names or paths");
  }
  size_t i;
  json_t *v;
  json_array_foreach(list, i, v) {
    char path[PATH_MAX], e2[256], base[64];
    const char *name = json_string_value(v);
    if (name == NULL) {
      rc = dibba_error_set(err, errlen, DIBBA_ECONFIG, "worker.plugins[%zu] is not a string", i);
      break;
    }
    if (resolve_plugin(dir, name, path, sizeof path) < 0) {
      rc = dibba_error_set(err, errlen, -ENOENT, "plugin %s not found in %s", name, dir);
      break;
    }
    const char *file = strrchr(name, '/') ? strrchr(name, '/') + 1 : name;
    snprintf(base, sizeof base, "%.*s", (int)strcspn(file, "."), file);
    if ((rc = dibba_plugin_load(&w->reg, path, plugin_config(w, base), e2, sizeof e2)) < 0) {
      dibba_error_set(err, errlen, rc, "plugin %s: %s", path, e2);
      break;
    }
    dibba_log_info("dibba-worker", json_pack("{s:s}", "path", path), "plugin loaded");
    size_t used = strlen(w->plugins);
    snprintf(w->plugins + used, sizeof w->plugins - used, "%s%s", used ? "," : "", base);
  }
  json_decref(def);
  return rc;
}

/* ---- heartbeat ---- */

static void hb_done(dibba_redis_t *r, int status, redisReply *reply, void *data) {
  worker_t *w = data;
  (void)r, (void)reply;
  w->hb_inflight = 0;
  if (status < 0)
    dibba_log_warn("dibba-worker", NULL, "heartbeat failed: %s", dibba_redis_strerror(status));
}

static void heartbeat(uv_timer_t *h) {
  worker_t *w = h->data;
  char nkey[512], zkey[512], now_s[24], ttl_s[16];
  if (w->hb_inflight || !dibba_redis_is_ready(w->hb))
    return;
  dibba_node_cpu_sample_t cur;
  Dibba__V1__NodeUsage *u = NULL;
  int have = dibba_node_cpu_sample(&cur) == 0;
  (void)dibba_node_usage(w->last_cpu.n ? &w->last_cpu : NULL, have ? &cur : NULL, &u);
  if (have) {
    dibba_node_cpu_sample_free(&w->last_cpu);
    w->last_cpu = cur;
  }
  char *usage = dibba_pbjson_dumps(&u->base, 0);
  dibba_node_msg_free(u);
  json_t *cj = w->consumer ? dibba_task_consumer_stats_json(w->consumer) : json_object();
  char *counters = json_dumps(cj, JSON_COMPACT);
  json_decref(cj);
  int64_t now = dibba_now_ms();
  snprintf(nkey, sizeof nkey, "%snode:%s", w->prefix, w->hostname);
  snprintf(zkey, sizeof zkey, "%snodes", w->prefix);
  snprintf(now_s, sizeof now_s, "%" PRId64, now);
  snprintf(ttl_s, sizeof ttl_s, "%" PRId64, w->hb_seconds * 3);
  const char *a1[] = {"HSET",
                      nkey,
                      "hostname",
                      w->hostname,
                      "info",
                      w->node_info_json,
                      "usage",
                      usage,
                      "last_heartbeat",
                      now_s,
                      "roles",
                      w->roles,
                      "version",
                      DIBBA_VERSION,
                      "counters",
                      counters,
                      "heartbeat_seconds",
                      ttl_s,
                      "plugins",
                      w->plugins};
  const char *a2[] = {"EXPIRE", nkey, ttl_s};
  const char *a3[] = {"ZADD", zkey, now_s, w->hostname};
  dibba_redis_argv_t cmds[] = {{20, a1, NULL}, {3, a2, NULL}, {4, a3, NULL}};
  snprintf(ttl_s, sizeof ttl_s, "%" PRId64, w->hb_seconds * 3);
  if (dibba_redis_multi(w->hb, hb_done, w, NULL, 3, cmds) == 0)
    w->hb_inflight = 1;
  free(usage);
  free(counters);
}

static void hb_connected(dibba_redis_t *r, int status, void *data) {
  worker_t *w = data;
  (void)r;
  if (status == 0 && w->hb_timer_open)
    heartbeat(&w->hb_timer); /* announce at once, not one period later */
}

/* ---- start / stop ---- */

static int worker_start(dibba_daemon_t *d, char *err, size_t errlen) {
  worker_t *w = d->data;
  const dibba_config_t *cfg = &d->cfg;
  const char *host = NULL, *roles = NULL;
  int64_t conc, vis, block, wait_n, wait_ms;
  dibba_redis_options_t ro;
  int rc;
  w->d = d;
  if ((rc = dibba_config_secret(cfg, "task.routing_key", &w->routing_key, &w->routing_key_len, err, errlen)) < 0)
    return rc;
  if ((rc = dibba_task_key_init(&w->key, w->routing_key, w->routing_key_len)) < 0)
    return dibba_error_set(err, errlen, rc, "task.routing_key: unusable");
  if ((rc = dibba_config_str(cfg, "worker.hostname", NULL, &host, err, errlen)) < 0 ||
      (rc = dibba_config_str(cfg, "worker.roles", "", &roles, err, errlen)) < 0 ||
      (rc = dibba_config_str(cfg, "redis.prefix", "dibba:", &w->prefix, err, errlen)) < 0 ||
      (rc = dibba_config_int(cfg, "worker.concurrency", 16, 1, 100000, &conc, err, errlen)) < 0 ||
      (rc = dibba_config_int(cfg, "task.visibility_timeout_ms", 60000, 100, 86400000, &vis, err, errlen)) < 0 ||
      (rc = dibba_config_int(cfg, "worker.block_ms", 2000, 10, 60000, &block, err, errlen)) < 0 ||
      (rc = dibba_config_int(cfg, "worker.heartbeat_seconds", 5, 1, 3600, &w->hb_seconds, err, errlen)) < 0 ||
      (rc = dibba_config_int(cfg, "worker.shutdown_grace_ms", 10000, 0, 3600000, &w->grace_ms, err, errlen)) < 0 ||
      (rc = dibba_config_int(cfg, "redis.wait_replicas", 0, 0, 64, &wait_n, err, errlen)) < 0 ||
      (rc = dibba_config_int(cfg, "redis.wait_timeout_ms", 1000, 1, 60000, &wait_ms, err, errlen)) < 0)
    return rc;
  if (host)
    snprintf(w->hostname, sizeof w->hostname, "%s", host);
  else if (gethostname(w->hostname, sizeof w->hostname - 1) < 0)
    return dibba_error_set(err, errlen, -errno, "gethostname");
  snprintf(w->roles, sizeof w->roles, "%s", roles);
  if ((rc = dibba_route_host(&w->key, w->hostname, w->routes[0])) < 0)
    return dibba_error_set(err, errlen, rc, "worker.hostname %s is not a valid host name", w->hostname);
  w->nroutes = 1;
  char tmp[256];
  snprintf(tmp, sizeof tmp, "%s", roles);
  char *save = NULL;
  for (char *r = strtok_r(tmp, ", ", &save); r; r = strtok_r(NULL, ", ", &save)) {
    if (w->nroutes == MAX_ROUTES)
      return dibba_error_set(err, errlen, DIBBA_ECONFIG, "worker.roles: too many roles");
    if ((rc = dibba_route_role(&w->key, r, w->routes[w->nroutes])) < 0)
      return dibba_error_set(err, errlen, DIBBA_ECONFIG, "worker.roles: bad role %s", r);
    w->nroutes++;
  }
  dibba_task_registry_init(&w->reg, &d->loop, w->hostname);
  if ((rc = load_plugins(w, err, errlen)) < 0)
    return rc;
  Dibba__V1__NodeInfo *info = NULL;
  if (dibba_node_info(w->hostname, &info) == 0) {
    w->node_info_json = dibba_pbjson_dumps(&info->base, 0);
    dibba_node_msg_free(info);
  } else {
    w->node_info_json = dibba_xstrdup("{}");
  }
  (void)dibba_node_cpu_sample(&w->last_cpu);
  if ((rc = dibba_redis_options_from_config(cfg, &ro, err, errlen)) < 0)
    return rc;
  const char *routes[MAX_ROUTES];
  for (size_t i = 0; i < w->nroutes; i++)
    routes[i] = w->routes[i];
  dibba_task_consumer_options_t co = {
      .redis = &ro,
      .prefix = w->prefix,
      .key = &w->key,
      .reg = &w->reg,
      .consumer = w->hostname,
      .routes = routes,
      .nroutes = w->nroutes,
      .concurrency = (uint32_t)conc,
      .visibility_timeout_ms = (uint32_t)vis,
      .block_ms = (uint32_t)block,
      .wait_replicas = (uint32_t)wait_n,
      .wait_timeout_ms = (uint32_t)wait_ms,
  };
  if ((rc = dibba_task_consumer_new(&d->loop, &co, &w->consumer, err, errlen)) < 0)
    return rc;
  ro.name = "heartbeat";
  ro.on_connect = hb_connected;
  ro.data = w;
  if ((rc = dibba_redis_new(&d->loop, &ro, &w->hb, err, errlen)) < 0)
    return rc;
  uv_timer_init(&d->loop, &w->hb_timer);
  w->hb_timer.data = w;
  w->hb_timer_open = 1;
  uv_timer_start(&w->hb_timer, heartbeat, (uint64_t)w->hb_seconds * 1000, (uint64_t)w->hb_seconds * 1000);
  dibba_log_info("dibba-worker",
                 json_pack("{s:s, s:s, s:s, s:I, s:I}", "hostname", w->hostname, "route", w->routes[0], "roles",
                           w->roles, "concurrency", (json_int_t)conc, "wait_replicas", (json_int_t)wait_n),
                 "consuming");
  return 0;
}

static void release(worker_t *w) {
  dibba_task_registry_free(&w->reg);
  json_decref(w->plugin_cfgs);
  w->plugin_cfgs = NULL;
  dibba_task_key_free(&w->key);
  dibba_node_cpu_sample_free(&w->last_cpu);
  free(w->node_info_json);
  w->node_info_json = NULL;
  if (w->routing_key) {
    explicit_bzero(w->routing_key, w->routing_key_len);
    free(w->routing_key);
    w->routing_key = NULL;
  }
}

static void hb_closed(dibba_redis_t *r, void *data) { (void)r, (void)data; }

static void hb_timer_closed(uv_handle_t *h) { (void)h; }

static void consumer_stopped(dibba_task_consumer_t *c, void *data) {
  worker_t *w = data;
  dibba_task_consumer_stats_t st;
  dibba_task_consumer_stats(c, &st);
  dibba_log_info(
      "dibba-worker",
      json_pack("{s:I, s:I}", "succeeded", (json_int_t)st.succeeded, "handed_back", (json_int_t)st.handed_back),
      "consumer stopped");
  w->consumer = NULL;
  if (w->hb) {
    dibba_redis_close(w->hb, hb_closed);
    w->hb = NULL;
  }
  /* Every task has ended: the plugins can go. */
  release(w);
}

static void worker_stop(dibba_daemon_t *d) {
  worker_t *w = d->data;
  if (w->hb_timer_open) {
    w->hb_timer_open = 0;
    uv_close((uv_handle_t *)&w->hb_timer, hb_timer_closed);
  }
  if (w->consumer) {
    dibba_log_info("dibba-worker", json_pack("{s:I}", "grace_ms", (json_int_t)w->grace_ms), "stopping");
    dibba_task_consumer_stop(w->consumer, (uint32_t)w->grace_ms, consumer_stopped, w);
    return;
  }
  if (w->hb) {
    dibba_redis_close(w->hb, hb_closed);
    w->hb = NULL;
  }
  release(w);
}

int main(int argc, char **argv) {
  static const dibba_daemon_ops_t ops = {
      .name = "dibba-worker",
      .start = worker_start,
      .stop = worker_stop,
  };
  worker_t w;
  memset(&w, 0, sizeof w);
  return dibba_daemon_main(&ops, &w, argc, argv);
}
