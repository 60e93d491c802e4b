/* SPDX-License-Identifier: Apache-2.0 */
/* The aws task plugin: create_worker_nodes, terminate_worker_node and get_ec2_instances on EC2, with the
 * namespace's instances mirrored in Redis (<prefix>ns:<namespace>:instances). */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/sha.h>

#include "dibba/alloc.h"
#include "dibba/log.h"
#include "dibba/aws.h"
#include "dibba/error.h"
#include "dibba/pbjson.h"
#include "dibba/plugin.h"
#include "dibba/redis.h"

#define NS_MAX 64
#define MAX_INSTANCES 100
#define MAX_TAGS 40
#define BOOTSTRAP_VALUE_MAX 2048

/* ---- settings (plugin config: {"aws": {...}, "redis": {"url", "prefix"}}) ---- */

typedef struct settings_s {
  char *endpoint, *region, *akid, *secret, *token;
  char *redis_url, *prefix;
  uint32_t timeout_ms;
  size_t max_response;
  uint32_t retry_max, retry_base_ms, retry_cap_ms;
  uint32_t poll_base_ms, poll_cap_ms, wait_timeout_ms, notfound_window_ms;
} settings_t;

static const char *cfg_str(const json_t *root, const char *section, const char *key) {
  const char *s = json_string_value(json_object_get(json_object_get(root, section), key));
  return s && s[0] ? s : NULL;
}

static uint32_t cfg_u32(const json_t *root, const char *section, const char *key, uint32_t def, uint32_t min,
                        uint32_t max) {
  const json_t *v = json_object_get(json_object_get(root, section), key);
  long long n = def;
  if (json_is_integer(v))
    n = json_integer_value(v);
  else if (json_is_string(v))
    n = strtoll(json_string_value(v), NULL, 10);
  if (n < min)
    n = min;
  if (n > max)
    n = max;
  return (uint32_t)n;
}

static void wipe_free(char *s) {
  if (s) {
    explicit_bzero(s, strlen(s));
    free(s);
  }
}

static void settings_free(settings_t *s) {
  free(s->endpoint);
  free(s->region);
  wipe_free(s->akid);
  wipe_free(s->secret);
  wipe_free(s->token);
  wipe_free(s->redis_url);
  free(s->prefix);
  memset(s, 0, sizeof *s);
}

static void settings_load(settings_t *s, const json_t *root) {
  memset(s, 0, sizeof *s);
  s->endpoint = dibba_xstrdup(cfg_str(root, "aws", "endpoint"));
  s->region = dibba_xstrdup(cfg_str(root, "aws", "region"));
  s->akid = dibba_xstrdup(cfg_str(root, "aws", "access_key_id"));
  s->secret = dibba_xstrdup(cfg_str(root, "aws", "secret_access_key"));
  s->token = dibba_xstrdup(cfg_str(root, "aws", "session_token"));
  const char *url = cfg_str(root, "redis", "url");
  s->redis_url = dibba_xstrdup(url ? url : "redis://127.0.0.1:6379/0");
  const char *prefix = json_string_value(json_object_get(json_object_get(root, "redis"), "prefix"));
  s->prefix = dibba_xstrdup(prefix ? prefix : "dibba:");
  s->timeout_ms = cfg_u32(root, "aws", "request_timeout_ms", 30000, 100, 600000);
  s->max_response = cfg_u32(root, "aws", "max_response_bytes", 4u << 20, 4096, DIBBA_EC2_XML_MAX);
  s->retry_max = cfg_u32(root, "aws", "retry_max", 6, 0, 20);
  s->retry_base_ms = cfg_u32(root, "aws", "retry_base_ms", 500, 1, 60000);
  s->retry_cap_ms = cfg_u32(root, "aws", "retry_cap_ms", 20000, 1, 600000);
  s->poll_base_ms = cfg_u32(root, "aws", "poll_base_ms", 2000, 1, 60000);
  s->poll_cap_ms = cfg_u32(root, "aws", "poll_cap_ms", 15000, 1, 600000);
  s->wait_timeout_ms = cfg_u32(root, "aws", "wait_timeout_ms", 600000, 100, 3600000);
  s->notfound_window_ms = cfg_u32(root, "aws", "notfound_window_ms", 60000, 0, 600000);
}

/* ---- one task ---- */

typedef enum { JOB_CREATE, JOB_TERMINATE, JOB_GET } job_kind_t;

typedef struct inst_s {
  char id[32];
  char state[32];
  char private_ip[48];
  char private_dns[256];
  char launch_time[40];
  char err_code[128];
  char err_msg[512];
  int done; /* create: running; terminate: shutting-down/terminated or gone */
  int failed;
} inst_t;

typedef struct job_s job_t;
typedef void (*step_fn)(job_t *j, const dibba_ec2_result_t *res);
typedef void (*timer_fn)(job_t *j);

struct job_s {
  dibba_task_ctx_t *t;
  const settings_t *cfg;
  job_kind_t kind;
  dibba_ec2_t *ec2;
  dibba_redis_t *redis;
  uv_timer_t timer; /* retries and polls; closed last, its close callback reports and frees */
  unsigned pending_closes;
  int finishing;
  int timer_ready;
  /* outcome */
  int err;
  char code[128];
  char msg[2048];
  /* work */
  char ns[NS_MAX + 1];
  char key[256]; /* <prefix>ns:<namespace>:instances */
  dibba_ec2_params_t params;
  int have_params;
  step_fn next;
  timer_fn on_timer;
  unsigned attempt;
  uint64_t poll_ms;
  uint64_t started_ms;
  uint64_t launched_ms;
  inst_t *inst;
  size_t n;
  size_t cursor; /* terminate: next instance to terminate */
  char next_token[1024];
  uint64_t rng;
};

static uint64_t now_ms(const job_t *j) { return uv_now(j->t->loop); }

/* Replace every credential in s with "***" before it goes to a log, an error or Redis. */
static void scrub(const settings_t *cfg, char *s) {
  const char *needles[] = {cfg->secret, cfg->token, cfg->akid};
  for (size_t k = 0; k < 3; k++) {
    size_t n = needles[k] ? strlen(needles[k]) : 0;
    char *p;
    while (n && (p = strstr(s, needles[k])) != NULL) {
      size_t keep = n < 3 ? n : 3;
      memcpy(p, "***", keep);
      memmove(p + keep, p + n, strlen(p + n) + 1);
    }
  }
}

static void job_log(job_t *j, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void job_log(job_t *j, int level, const char *fmt, ...) {
  char line[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  scrub(j->cfg, line);
  j->t->ops->log(j->t, level, line);
}

static void job_progress(job_t *j, uint64_t cur, uint64_t total, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void job_progress(job_t *j, uint64_t cur, uint64_t total, const char *fmt, ...) {
  char line[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  scrub(j->cfg, line);
  dibba_task_progress(j->t, cur, total, line);
}

static void job_free(job_t *j) {
  if (j->have_params)
    dibba_ec2_params_free(&j->params);
  free(j->inst);
  free(j);
}

static void report_instances(job_t *j) {
  Dibba__V1__Ec2Instances out = DIBBA__V1__EC2_INSTANCES__INIT;
  Dibba__V1__Ec2Instance *items = dibba_xcalloc(j->n ? j->n : 1, sizeof *items);
  Dibba__V1__Ec2Instance **ptrs = dibba_xcalloc(j->n ? j->n : 1, sizeof *ptrs);
  for (size_t i = 0; i < j->n; i++) {
    dibba__v1__ec2_instance__init(&items[i]);
    items[i].instance_id = j->inst[i].id;
    items[i].state = j->inst[i].state;
    items[i].private_ip = j->inst[i].private_ip;
    items[i].private_dns = j->inst[i].private_dns;
    items[i].error_code = j->inst[i].err_code;
    items[i].error_message = j->inst[i].err_msg;
    ptrs[i] = &items[i];
  }
  out.n_instances = j->n;
  out.instances = ptrs;
  out.namespace_ = j->ns;
  j->t->ops->complete_msg(j->t, &out.base);
  free(items);
  free(ptrs);
}

static void timer_closed(uv_handle_t *h) {
  job_t *j = h->data;
  dibba_task_ctx_t *t = j->t;
  t->ops->on_cancel(t, NULL, NULL);
  if (j->err == 0) {
    report_instances(j);
  } else {
    scrub(j->cfg, j->msg);
    scrub(j->cfg, j->code);
    dibba_task_fail(t, j->err, j->code[0] ? j->code : NULL, j->msg);
  }
  job_free(j);
}

static void maybe_done(job_t *j) {
  if (j->finishing && j->pending_closes == 0)
    uv_close((uv_handle_t *)&j->timer, timer_closed);
}

static void ec2_closed(dibba_ec2_t *c, void *data) {
  job_t *j = data;
  (void)c;
  j->ec2 = NULL;
  j->pending_closes--;
  maybe_done(j);
}

static void redis_closed(dibba_redis_t *r, void *data) {
  job_t *j = data;
  (void)r;
  j->redis = NULL;
  j->pending_closes--;
  maybe_done(j);
}

/* End the task: close every client, then (from the timer's close callback) report. Safe from any callback. */
static void job_end(job_t *j) {
  if (j->finishing)
    return;
  j->finishing = 1;
  uv_timer_stop(&j->timer);
  if (j->ec2) {
    j->pending_closes++;
    dibba_ec2_close(j->ec2, ec2_closed, j);
  }
  if (j->redis) {
    j->pending_closes++;
    dibba_redis_close(j->redis, redis_closed);
  }
  maybe_done(j);
}

static void job_fail(job_t *j, int err, const char *code, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void job_fail(job_t *j, int err, const char *code, const char *fmt, ...) {
  if (j->finishing)
    return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(j->msg, sizeof j->msg, fmt, ap);
  va_end(ap);
  snprintf(j->code, sizeof j->code, "%s", code ? code : "");
  j->err = err < 0 ? err : -EIO;
  job_log(j, DIBBA_PLUGIN_LOG_WARN, "%s: %s%s%s", j->t->name, j->code, j->code[0] ? ": " : "", j->msg);
  job_end(j);
}

static void job_fail_ec2(job_t *j, const char *what, const dibba_ec2_result_t *res) {
  if (res->status == DIBBA_EC2_EAPI)
    job_fail(j, DIBBA_EC2_EAPI, res->code, "%s: %s", what, res->message);
  else
    job_fail(j, res->status, dibba_strerror(res->status), "%s: %s", what,
             res->message[0] ? res->message : dibba_strerror(res->status));
}

static void cancel_cb(dibba_task_ctx_t *t, void *data) {
  job_t *j = data;
  (void)t;
  job_fail(j, UV_ECANCELED, "ECANCELED", "cancelled");
}

static void timer_cb(uv_timer_t *timer) {
  job_t *j = timer->data;
  if (!j->finishing && j->on_timer)
    j->on_timer(j);
}

static void schedule(job_t *j, uint64_t ms, timer_fn fn) {
  j->on_timer = fn;
  uv_timer_start(&j->timer, timer_cb, ms, 0);
}

/* Exponential backoff with equal jitter: base * 2^attempt, capped, then [d/2, d). */
static uint64_t backoff(job_t *j, uint32_t base, uint32_t cap, unsigned attempt) {
  uint64_t d = base;
  for (unsigned i = 0; i < attempt && d < cap; i++)
    d *= 2;
  if (d > cap)
    d = cap;
  j->rng ^= j->rng << 13;
  j->rng ^= j->rng >> 7;
  j->rng ^= j->rng << 17;
  return d / 2 + (d > 1 ? j->rng % (d - d / 2) : 0);
}

/* ---- EC2 calls with bounded retries of throttling and transport errors ---- */

static void ec2_send(job_t *j);

static int retryable(const dibba_ec2_result_t *res) {
  if (res->status == DIBBA_EC2_EAPI)
    return strcmp(res->code, "RequestLimitExceeded") == 0 || strcmp(res->code, "Throttling") == 0 ||
           strcmp(res->code, "InternalError") == 0 || strcmp(res->code, "Unavailable") == 0 ||
           strcmp(res->code, "ServiceUnavailable") == 0;
  return res->status == UV_ETIMEDOUT || res->status == UV_ECONNREFUSED || res->status == -EIO ||
         (res->status == DIBBA_EPROTO && res->http_code >= 500);
}

static void ec2_done(dibba_ec2_t *c, const dibba_ec2_result_t *res, void *data) {
  job_t *j = data;
  (void)c;
  if (j->finishing)
    return;
  if (res->status != 0 && retryable(res) && j->attempt < j->cfg->retry_max) {
    uint64_t d = backoff(j, j->cfg->retry_base_ms, j->cfg->retry_cap_ms, j->attempt);
    j->attempt++;
    job_log(j, DIBBA_PLUGIN_LOG_INFO, "EC2 %s (%s), retry %u/%u in %" PRIu64 " ms",
            res->status == DIBBA_EC2_EAPI ? res->code : dibba_strerror(res->status), res->message, j->attempt,
            j->cfg->retry_max, d);
    schedule(j, d, ec2_send);
    return;
  }
  j->attempt = 0;
  j->next(j, res);
}

static void ec2_send(job_t *j) {
  int rc = dibba_ec2_call(j->ec2, &j->params, ec2_done, j, NULL);
  if (rc < 0)
    job_fail(j, rc, dibba_strerror(rc), "EC2 request could not be sent");
}

/* Start a call: the parameters stay in the job so that a retry sends the same request (same ClientToken). */
static void ec2_start(job_t *j, const char *action, step_fn next) {
  if (j->have_params)
    dibba_ec2_params_free(&j->params);
  dibba_ec2_params_init(&j->params, action);
  j->have_params = 1;
  j->next = next;
  j->attempt = 0;
}

/* ---- Redis mirror ---- */

static char *instance_json(const inst_t *in) {
  json_t *o = json_pack("{s:s, s:s, s:s, s:s}", "state", in->state, "private_ip", in->private_ip, "private_dns",
                        in->private_dns, "launched_at", in->launch_time);
  char *s = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
  json_decref(o);
  if (s == NULL)
    dibba_oom(0);
  return s;
}

typedef void (*redis_step_fn)(job_t *j, redisReply *reply);

typedef struct redis_req_s {
  job_t *j;
  redis_step_fn next;
} redis_req_t;

static void redis_done(dibba_redis_t *r, int status, redisReply *reply, void *data) {
  redis_req_t *rq = data;
  job_t *j = rq->j;
  redis_step_fn next = rq->next;
  (void)r;
  free(rq);
  if (j->finishing)
    return;
  if (status != 0) {
    char detail[256] = "";
    const char *s = NULL;
    size_t len = 0;
    if (status == DIBBA_REDIS_EREPLY && reply && dibba_redis_reply_str(reply, &s, &len) == 0)
      snprintf(detail, sizeof detail, ": %.*s", (int)len, s);
    job_fail(j, status, "EREDIS", "redis: %s%s", dibba_redis_strerror(status), detail);
    return;
  }
  next(j, reply);
}

static int redis_send(job_t *j, redis_step_fn next, int argc, const char **argv) {
  redis_req_t *rq = dibba_xcalloc(1, sizeof *rq);
  rq->j = j;
  rq->next = next;
  dibba_redis_cmd_opts_t o = {.flags = DIBBA_REDIS_QUEUE};
  int rc = dibba_redis_command_argv(j->redis, redis_done, rq, &o, argc, argv, NULL);
  if (rc < 0) {
    free(rq);
    job_fail(j, rc, "EREDIS", "redis: %s", dibba_redis_strerror(rc));
  }
  return rc;
}

/* HSET key id json ... for every instance (or only the ones with done set when only_done). */
static void redis_store(job_t *j, redis_step_fn next) {
  const char **argv = dibba_xcalloc(2 + 2 * j->n, sizeof *argv);
  char **owned = dibba_xcalloc(j->n ? j->n : 1, sizeof *owned);
  int argc = 0;
  argv[argc++] = "HSET";
  argv[argc++] = j->key;
  for (size_t i = 0; i < j->n; i++) {
    owned[i] = instance_json(&j->inst[i]);
    argv[argc++] = j->inst[i].id;
    argv[argc++] = owned[i];
  }
  redis_send(j, next, argc, argv);
  for (size_t i = 0; i < j->n; i++)
    free(owned[i]);
  free(owned);
  free(argv);
}

/* ---- create_worker_nodes ---- */

static const char bootstrap_template[] =
    "#cloud-config\n"
    "# Rendered by Dibba's aws plugin: installs dibba-worker and joins this host to the cluster.\n"
    "write_files:\n"
    "  - path: /etc/dibba/worker.env\n"
    "    owner: root:root\n"
    "    permissions: '0600'\n"
    "    content: |\n"
    "      DIBBA_REDIS_URL=%s\n"
    "      DIBBA_ROUTING_KEY=%s\n"
    "      DIBBA_EC2_NAMESPACE=%s\n"
    "  - path: /etc/systemd/system/dibba-worker.service.d/bootstrap.conf\n"
    "    permissions: '0644'\n"
    "    content: |\n"
    "      [Service]\n"
    "      EnvironmentFile=/etc/dibba/worker.env\n"
    "packages:\n"
    "  - dibba-worker\n"
    "runcmd:\n"
    "  - [sh, -c, 'test -e /etc/dibba/dibba.json || echo {} > /etc/dibba/dibba.json']\n"
    "  - [systemctl, daemon-reload]\n"
    "  - [systemctl, enable, --now, dibba-worker.service]\n";

/* A value that can go into the YAML block and an environment file as is. */
static int safe_value(const char *s) {
  size_t n = strnlen(s, BOOTSTRAP_VALUE_MAX + 1);
  if (n == 0 || n > BOOTSTRAP_VALUE_MAX)
    return 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c <= ' ' || c >= 0x7f || c == '"' || c == '\'' || c == '\\' || c == '`' || c == '$')
      return 0;
  }
  return 1;
}

static int valid_ns(const char *s) {
  size_t n = strnlen(s, NS_MAX + 1);
  if (n == 0 || n > NS_MAX)
    return 0;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
          c == '.'))
      return 0;
  }
  return 1;
}

static int valid_id_like(const char *s, size_t max) {
  size_t n = strnlen(s, max + 1);
  if (n == 0 || n > max)
    return 0;
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)s[i] <= ' ' || (unsigned char)s[i] >= 0x7f)
      return 0;
  return 1;
}

/* ClientToken: the same task id always gives the same token, so a redelivered task launches nothing new. */
static void client_token(const char *task_id, char out[47]) {
  static const char digits[] = "0123456789abcdef";
  unsigned char md[SHA256_DIGEST_LENGTH];
  /* Domain-separated: "dibba.create_worker_nodes\0<task id>". */
  char *in = dibba_xasprintf("dibba.create_worker_nodes%c%s", 0, task_id);
  SHA256((const unsigned char *)in, 26 + strlen(task_id), md);
  free(in);
  memcpy(out, "dibba-", 6);
  for (size_t i = 0; i < 20; i++) {
    out[6 + 2 * i] = digits[md[i] >> 4];
    out[6 + 2 * i + 1] = digits[md[i] & 15];
  }
  out[46] = '\0';
}

static void create_poll(job_t *j);

static void merge(job_t *j, const dibba_ec2_instance_t *v, size_t n) {
  for (size_t k = 0; k < n; k++) {
    for (size_t i = 0; i < j->n; i++) {
      inst_t *in = &j->inst[i];
      if (strcmp(in->id, v[k].id) != 0)
        continue;
      snprintf(in->state, sizeof in->state, "%s", v[k].state);
      if (v[k].private_ip[0])
        snprintf(in->private_ip, sizeof in->private_ip, "%s", v[k].private_ip);
      if (v[k].private_dns[0])
        snprintf(in->private_dns, sizeof in->private_dns, "%s", v[k].private_dns);
      if (v[k].launch_time[0])
        snprintf(in->launch_time, sizeof in->launch_time, "%s", v[k].launch_time);
    }
  }
}

static size_t count_state(const job_t *j, const char *state) {
  size_t c = 0;
  for (size_t i = 0; i < j->n; i++)
    c += strcmp(j->inst[i].state, state) == 0;
  return c;
}

static void create_stored_final(job_t *j, redisReply *reply) {
  (void)reply;
  job_progress(j, j->n, j->n, "all %zu instances running", j->n);
  job_end(j);
}

static void create_stored_progress(job_t *j, redisReply *reply) {
  (void)reply;
  if (now_ms(j) - j->started_ms > j->cfg->wait_timeout_ms) {
    job_fail(j, UV_ETIMEDOUT, "ETIMEDOUT", "%zu of %zu instances running after %u ms", count_state(j, "running"), j->n,
             j->cfg->wait_timeout_ms);
    return;
  }
  uint64_t d = j->poll_ms;
  j->poll_ms = j->poll_ms * 2 > j->cfg->poll_cap_ms ? j->cfg->poll_cap_ms : j->poll_ms * 2;
  schedule(j, d, create_poll);
}

static void create_described(job_t *j, const dibba_ec2_result_t *res) {
  if (res->status == DIBBA_EC2_EAPI && strcmp(res->code, "InvalidInstanceID.NotFound") == 0 &&
      now_ms(j) - j->launched_ms <= j->cfg->notfound_window_ms) {
    /* EC2 is eventually consistent: a fresh instance may be unknown to DescribeInstances for a while. */
    job_log(j, DIBBA_PLUGIN_LOG_DEBUG, "instances not visible yet, polling again");
    create_stored_progress(j, NULL);
    return;
  }
  if (res->status != 0) {
    job_fail_ec2(j, "DescribeInstances", res);
    return;
  }
  dibba_ec2_instance_t *v = NULL;
  size_t n = 0;
  int rc = dibba_ec2_parse_instances(res->body, res->len, &v, &n, NULL, 0);
  if (rc < 0) {
    job_fail(j, rc, "EPROTO", "DescribeInstances: unreadable answer");
    return;
  }
  merge(j, v, n);
  free(v);
  for (size_t i = 0; i < j->n; i++) {
    const char *s = j->inst[i].state;
    if (strcmp(s, "shutting-down") == 0 || strcmp(s, "terminated") == 0 || strcmp(s, "stopping") == 0 ||
        strcmp(s, "stopped") == 0) {
      job_fail(j, -EIO, "InstanceLost", "instance %s is %s before it ran", j->inst[i].id, s);
      return;
    }
  }
  size_t running = count_state(j, "running");
  job_progress(j, running, j->n, "%zu/%zu instances running", running, j->n);
  redis_store(j, running == j->n ? create_stored_final : create_stored_progress);
}

static void create_poll(job_t *j) {
  ec2_start(j, "DescribeInstances", create_described);
  for (size_t i = 0; i < j->n; i++)
    dibba_ec2_params_add(&j->params, j->inst[i].id, "InstanceId.%zu", i + 1);
  ec2_send(j);
}

static void create_registered(job_t *j, redisReply *reply) {
  (void)reply;
  job_progress(j, count_state(j, "running"), j->n, "launched %zu instances, registered in %s", j->n, j->key);
  j->poll_ms = j->cfg->poll_base_ms;
  create_stored_progress(j, NULL);
}

static void create_launched(job_t *j, const dibba_ec2_result_t *res) {
  if (res->status != 0) {
    job_fail_ec2(j, "RunInstances", res);
    return;
  }
  dibba_ec2_instance_t *v = NULL;
  size_t n = 0;
  int rc = dibba_ec2_parse_instances(res->body, res->len, &v, &n, NULL, 0);
  if (rc < 0 || n == 0 || n > MAX_INSTANCES) {
    free(v);
    job_fail(j, rc < 0 ? rc : DIBBA_EPROTO, "EPROTO", "RunInstances: answer without instances");
    return;
  }
  j->inst = dibba_xcalloc(n, sizeof *j->inst);
  j->n = n;
  for (size_t i = 0; i < n; i++) {
    snprintf(j->inst[i].id, sizeof j->inst[i].id, "%s", v[i].id);
    snprintf(j->inst[i].state, sizeof j->inst[i].state, "%s", v[i].state);
    snprintf(j->inst[i].private_ip, sizeof j->inst[i].private_ip, "%s", v[i].private_ip);
    snprintf(j->inst[i].private_dns, sizeof j->inst[i].private_dns, "%s", v[i].private_dns);
    snprintf(j->inst[i].launch_time, sizeof j->inst[i].launch_time, "%s", v[i].launch_time);
  }
  free(v);
  j->launched_ms = now_ms(j);
  job_log(j, DIBBA_PLUGIN_LOG_INFO, "RunInstances answered with %zu instances in namespace %s", n, j->ns);
  /* Record them at once: if this worker dies now, terminate_worker_node still finds them. */
  redis_store(j, create_registered);
}

static int add_tag(job_t *j, size_t *idx, const char *k, const char *v) {
  int rc = dibba_ec2_params_add(&j->params, k, "TagSpecification.1.Tag.%zu.Key", *idx);
  if (rc == 0)
    rc = dibba_ec2_params_add(&j->params, v, "TagSpecification.1.Tag.%zu.Value", *idx);
  (*idx)++;
  return rc;
}

/* Build the RunInstances request; returns 0 or fails the job and returns < 0. */
static int create_params(job_t *j, const Dibba__V1__Ec2LaunchSpec *a) {
  uint32_t min = a->min_count, max = a->max_count;
  if (min == 0 && max == 0)
    min = max = a->count ? a->count : 1;
  if (min == 0)
    min = 1;
  if (max == 0)
    max = min;
  if (min > max || max > MAX_INSTANCES) {
    job_fail(j, -EINVAL, "InvalidArgs", "need 1 <= min_count <= max_count <= %d", MAX_INSTANCES);
    return -EINVAL;
  }
  if (!valid_id_like(a->ami_id, 128) || !valid_id_like(a->instance_type, 64)) {
    job_fail(j, -EINVAL, "InvalidArgs", "ami_id and instance_type are required");
    return -EINVAL;
  }
  if (a->user_data[0] && a->bootstrap) {
    job_fail(j, -EINVAL, "InvalidArgs", "user_data and bootstrap are exclusive");
    return -EINVAL;
  }
  if (a->n_tags > MAX_TAGS) {
    job_fail(j, -EINVAL, "InvalidArgs", "at most %d tags", MAX_TAGS);
    return -EINVAL;
  }
  char token[47], num[16];
  client_token(j->t->id, token);
  ec2_start(j, "RunInstances", create_launched);
  dibba_ec2_params_t *p = &j->params;
  int rc = dibba_ec2_params_add(p, a->ami_id, "ImageId");
  rc = rc ? rc : dibba_ec2_params_add(p, a->instance_type, "InstanceType");
  snprintf(num, sizeof num, "%" PRIu32, min);
  rc = rc ? rc : dibba_ec2_params_add(p, num, "MinCount");
  snprintf(num, sizeof num, "%" PRIu32, max);
  rc = rc ? rc : dibba_ec2_params_add(p, num, "MaxCount");
  rc = rc ? rc : dibba_ec2_params_add(p, token, "ClientToken");
  if (a->key_name[0])
    rc = rc ? rc : dibba_ec2_params_add(p, a->key_name, "KeyName");
  if (a->subnet_id[0])
    rc = rc ? rc : dibba_ec2_params_add(p, a->subnet_id, "SubnetId");
  for (size_t i = 0; i < a->n_security_group_ids; i++)
    rc = rc ? rc : dibba_ec2_params_add(p, a->security_group_ids[i], "SecurityGroupId.%zu", i + 1);
  if (a->iam_instance_profile[0])
    rc = rc ? rc : dibba_ec2_params_add(p, a->iam_instance_profile, "IamInstanceProfile.Name");
  char *ud = NULL;
  if (a->user_data[0]) {
    ud = dibba_base64_encode(a->user_data, strlen(a->user_data));
  } else if (a->bootstrap) {
    if (!safe_value(a->bootstrap->redis_url) || !safe_value(a->bootstrap->routing_key)) {
      job_fail(j, -EINVAL, "InvalidArgs",
               "bootstrap.redis_url and bootstrap.routing_key must be printable, "
               "without spaces, quotes, '\\\\', '`' or '$'");
      return -EINVAL;
    }
    char *text = dibba_xasprintf(bootstrap_template, a->bootstrap->redis_url, a->bootstrap->routing_key, j->ns);
    ud = dibba_base64_encode(text, strlen(text));
    explicit_bzero(text, strlen(text));
    free(text);
  }
  if (ud) {
    /* EC2 takes at most 16 KiB of user data before base64. */
    if (strlen(ud) > 16384 * 4 / 3 + 4) {
      wipe_free(ud);
      job_fail(j, -E2BIG, "InvalidArgs", "user data over 16 KiB");
      return -E2BIG;
    }
    rc = rc ? rc : dibba_ec2_params_add(p, ud, "UserData");
    wipe_free(ud);
  }
  rc = rc ? rc : dibba_ec2_params_add(p, "instance", "TagSpecification.1.ResourceType");
  size_t idx = 1;
  int user_name = 0;
  for (size_t i = 0; i < a->n_tags; i++) {
    const char *k = a->tags[i]->key, *v = a->tags[i]->value;
    if (strcmp(k, "Namespace") == 0 || strcmp(k, "dibba:managed") == 0 || strncmp(k, "aws:", 4) == 0 ||
        !valid_id_like(k, 128) || strlen(v) > 256) {
      job_fail(j, -EINVAL, "InvalidArgs", "tag %.128s is reserved or invalid", k);
      return -EINVAL;
    }
    user_name |= strcmp(k, "Name") == 0;
  }
  rc = rc ? rc : add_tag(j, &idx, "Namespace", j->ns);
  rc = rc ? rc : add_tag(j, &idx, "dibba:managed", "true");
  if (!user_name) {
    char name[NS_MAX + 16];
    snprintf(name, sizeof name, "dibba-%s", j->ns);
    rc = rc ? rc : add_tag(j, &idx, "Name", name);
  }
  for (size_t i = 0; i < a->n_tags; i++)
    rc = rc ? rc : add_tag(j, &idx, a->tags[i]->key, a->tags[i]->value);
  if (rc < 0) {
    job_fail(j, rc, "InvalidArgs", "request too large");
    return rc;
  }
  return 0;
}

/* ---- terminate_worker_node ---- */

static void terminate_next(job_t *j);

static void add_instance(job_t *j, const char *id) {
  for (size_t i = 0; i < j->n; i++)
    if (strcmp(j->inst[i].id, id) == 0)
      return;
  if (j->n >= 4 * MAX_INSTANCES || strlen(id) >= sizeof j->inst[0].id)
    return;
  j->inst = dibba_xreallocarray(j->inst, j->n + 1, sizeof *j->inst);
  memset(&j->inst[j->n], 0, sizeof *j->inst);
  snprintf(j->inst[j->n].id, sizeof j->inst[0].id, "%s", id);
  j->n++;
}

static void terminate_removed(job_t *j, redisReply *reply) {
  (void)reply;
  size_t failed = 0, ok = 0;
  const char *first_code = NULL;
  int same = 1;
  dibba_buf_t b;
  dibba_buf_init(&b, sizeof j->msg - 1);
  for (size_t i = 0; i < j->n; i++) {
    inst_t *in = &j->inst[i];
    if (!in->failed) {
      ok++;
      continue;
    }
    failed++;
    if (first_code == NULL)
      first_code = in->err_code;
    else if (strcmp(first_code, in->err_code) != 0)
      same = 0;
    dibba_buf_printf(&b, "%s%s: %s: %s", failed > 1 ? "; " : "", in->id, in->err_code, in->err_msg);
  }
  if (failed) {
    job_fail(j, DIBBA_EC2_EAPI, same ? first_code : "PartialFailure", "%zu of %zu instances not terminated: %s", failed,
             j->n, b.data ? b.data : "");
  } else {
    job_progress(j, ok, j->n, "%zu instances terminated", ok);
    job_end(j);
  }
  dibba_buf_free(&b);
}

static void terminate_finish(job_t *j) {
  /* Forget in Redis every instance that is going away; the failed ones stay. */
  const char **argv = dibba_xcalloc(2 + j->n, sizeof *argv);
  int argc = 0;
  argv[argc++] = "HDEL";
  argv[argc++] = j->key;
  for (size_t i = 0; i < j->n; i++)
    if (!j->inst[i].failed)
      argv[argc++] = j->inst[i].id;
  if (argc > 2)
    redis_send(j, terminate_removed, argc, (const char **)argv);
  else
    terminate_removed(j, NULL);
  free(argv);
}

static int going_away(const char *state) {
  return strcmp(state, "shutting-down") == 0 || strcmp(state, "terminated") == 0;
}

static void terminate_poll(job_t *j);

static void terminate_described(job_t *j, const dibba_ec2_result_t *res) {
  if (res->status != 0) {
    job_fail_ec2(j, "DescribeInstances", res);
    return;
  }
  dibba_ec2_instance_t *v = NULL;
  size_t n = 0;
  if (dibba_ec2_parse_instances(res->body, res->len, &v, &n, NULL, 0) < 0) {
    job_fail(j, DIBBA_EPROTO, "EPROTO", "DescribeInstances: unreadable answer");
    return;
  }
  merge(j, v, n);
  free(v);
  size_t waiting = 0;
  for (size_t i = 0; i < j->n; i++) {
    inst_t *in = &j->inst[i];
    if (!in->failed && !in->done && going_away(in->state))
      in->done = 1;
    waiting += !in->failed && !in->done;
  }
  if (waiting == 0) {
    terminate_finish(j);
    return;
  }
  if (now_ms(j) - j->started_ms > j->cfg->wait_timeout_ms) {
    job_fail(j, UV_ETIMEDOUT, "ETIMEDOUT", "%zu instances still not shutting down", waiting);
    return;
  }
  uint64_t d = j->poll_ms;
  j->poll_ms = j->poll_ms * 2 > j->cfg->poll_cap_ms ? j->cfg->poll_cap_ms : j->poll_ms * 2;
  schedule(j, d, terminate_poll);
}

static void terminate_poll(job_t *j) {
  ec2_start(j, "DescribeInstances", terminate_described);
  size_t k = 0;
  for (size_t i = 0; i < j->n; i++)
    if (!j->inst[i].failed && !j->inst[i].done)
      dibba_ec2_params_add(&j->params, j->inst[i].id, "InstanceId.%zu", ++k);
  ec2_send(j);
}

static void terminate_one_done(job_t *j, const dibba_ec2_result_t *res) {
  inst_t *in = &j->inst[j->cursor];
  if (res->status == DIBBA_EC2_EAPI && strcmp(res->code, "InvalidInstanceID.NotFound") == 0) {
    snprintf(in->state, sizeof in->state, "terminated"); /* already gone */
    in->done = 1;
  } else if (res->status != 0) {
    in->failed = 1;
    snprintf(in->err_code, sizeof in->err_code, "%s",
             res->status == DIBBA_EC2_EAPI ? res->code : dibba_strerror(res->status));
    snprintf(in->err_msg, sizeof in->err_msg, "%s", res->message);
    job_log(j, DIBBA_PLUGIN_LOG_WARN, "TerminateInstances %s: %s: %s", in->id, in->err_code, in->err_msg);
  } else {
    dibba_ec2_instance_t *v = NULL;
    size_t n = 0;
    if (dibba_ec2_parse_instances(res->body, res->len, &v, &n, NULL, 0) == 0)
      merge(j, v, n);
    free(v);
    in->done = going_away(in->state);
  }
  j->cursor++;
  job_progress(j, j->cursor, j->n, "terminate requested for %zu/%zu instances", j->cursor, j->n);
  terminate_next(j);
}

static void terminate_next(job_t *j) {
  if (j->cursor < j->n) {
    ec2_start(j, "TerminateInstances", terminate_one_done);
    dibba_ec2_params_add(&j->params, j->inst[j->cursor].id, "InstanceId.1");
    ec2_send(j);
    return;
  }
  j->poll_ms = j->cfg->poll_base_ms;
  size_t waiting = 0;
  for (size_t i = 0; i < j->n; i++)
    waiting += !j->inst[i].failed && !j->inst[i].done;
  if (waiting)
    schedule(j, j->poll_ms, terminate_poll);
  else
    terminate_finish(j);
}

/* DescribeInstances by tag (namespace, or every managed instance), page after page. */
static void describe_by_tag(job_t *j, step_fn next) {
  ec2_start(j, "DescribeInstances", next);
  int f = 1;
  if (j->ns[0]) {
    dibba_ec2_params_add(&j->params, "tag:Namespace", "Filter.%d.Name", f);
    dibba_ec2_params_add(&j->params, j->ns, "Filter.%d.Value.1", f);
    f++;
  }
  dibba_ec2_params_add(&j->params, "tag:dibba:managed", "Filter.%d.Name", f);
  dibba_ec2_params_add(&j->params, "true", "Filter.%d.Value.1", f);
  if (j->next_token[0])
    dibba_ec2_params_add(&j->params, j->next_token, "NextToken");
  ec2_send(j);
}

static void terminate_listed(job_t *j, const dibba_ec2_result_t *res) {
  if (res->status != 0) {
    job_fail_ec2(j, "DescribeInstances", res);
    return;
  }
  dibba_ec2_instance_t *v = NULL;
  size_t n = 0;
  if (dibba_ec2_parse_instances(res->body, res->len, &v, &n, j->next_token, sizeof j->next_token) < 0) {
    job_fail(j, DIBBA_EPROTO, "EPROTO", "DescribeInstances: unreadable answer");
    return;
  }
  for (size_t i = 0; i < n; i++)
    if (strcmp(v[i].state, "terminated") != 0)
      add_instance(j, v[i].id);
  free(v);
  if (j->next_token[0]) {
    describe_by_tag(j, terminate_listed);
    return;
  }
  job_progress(j, 0, j->n, "terminating %zu instances of %s", j->n, j->ns);
  j->cursor = 0;
  terminate_next(j);
}

static void terminate_read(job_t *j, redisReply *reply) {
  /* HGETALL: id, json, id, json, ... */
  for (size_t i = 0; reply && i + 1 < reply->elements; i += 2) {
    const char *s;
    size_t len;
    if (dibba_redis_reply_str(reply->element[i], &s, &len) == 0 && len < sizeof j->inst[0].id) {
      char id[32];
      snprintf(id, sizeof id, "%.*s", (int)len, s);
      add_instance(j, id);
    }
  }
  /* Also instances tagged with the namespace that Redis never heard of (a worker died before recording). */
  describe_by_tag(j, terminate_listed);
}

/* ---- get_ec2_instances ---- */

static void get_listed(job_t *j, const dibba_ec2_result_t *res) {
  if (res->status != 0) {
    job_fail_ec2(j, "DescribeInstances", res);
    return;
  }
  dibba_ec2_instance_t *v = NULL;
  size_t n = 0;
  if (dibba_ec2_parse_instances(res->body, res->len, &v, &n, j->next_token, sizeof j->next_token) < 0) {
    job_fail(j, DIBBA_EPROTO, "EPROTO", "DescribeInstances: unreadable answer");
    return;
  }
  for (size_t i = 0; i < n; i++) {
    add_instance(j, v[i].id);
    merge(j, &v[i], 1);
  }
  free(v);
  if (j->next_token[0])
    describe_by_tag(j, get_listed);
  else
    job_end(j);
}

/* ---- task entry points ---- */

static int job_new(dibba_task_ctx_t *t, job_kind_t kind, const char *ns, const char *region, job_t **out) {
  const settings_t *cfg = t->handler_data;
  job_t *j = dibba_xcalloc(1, sizeof *j);
  j->t = t;
  j->cfg = cfg;
  j->kind = kind;
  j->rng = uv_hrtime() | 1;
  snprintf(j->ns, sizeof j->ns, "%s", ns);
  snprintf(j->key, sizeof j->key, "%.128sns:%s:instances", cfg->prefix, ns);
  uv_timer_init(t->loop, &j->timer);
  j->timer.data = j;
  j->started_ms = uv_now(t->loop);
  t->data = j;
  t->ops->on_cancel(t, cancel_cb, j);
  *out = j;

  char err[256];
  dibba_ec2_config_t ec = {.endpoint = cfg->endpoint,
                           .region = region && region[0] ? region : cfg->region,
                           .access_key_id = cfg->akid,
                           .secret_access_key = cfg->secret,
                           .session_token = cfg->token,
                           .timeout_ms = cfg->timeout_ms,
                           .max_response = cfg->max_response};
  int rc = dibba_ec2_new(t->loop, &ec, &j->ec2, err, sizeof err);
  if (rc < 0) {
    job_fail(j, DIBBA_ECONFIG, "ECONFIG", "%s", err);
    return rc;
  }
  if (kind != JOB_GET) {
    dibba_redis_options_t ro = {.url = cfg->redis_url, .name = "aws", .data = j};
    rc = dibba_redis_new(t->loop, &ro, &j->redis, err, sizeof err);
    if (rc < 0) {
      job_fail(j, DIBBA_ECONFIG, "ECONFIG", "redis.url: %s", err);
      return rc;
    }
  }
  return 0;
}

static int create_run(dibba_task_ctx_t *t) {
  const Dibba__V1__Ec2LaunchSpec *a = (const Dibba__V1__Ec2LaunchSpec *)t->args_msg;
  if (a == NULL || !valid_ns(a->namespace_))
    return -EINVAL; /* the driver reports it */
  job_t *j;
  if (job_new(t, JOB_CREATE, a->namespace_, a->region, &j) < 0)
    return 0;
  if (create_params(j, a) < 0)
    return 0;
  job_log(j, DIBBA_PLUGIN_LOG_INFO, "RunInstances %s x%u..%u in namespace %s", a->instance_type,
          a->min_count ? a->min_count : (a->count ? a->count : 1), a->max_count ? a->max_count : a->min_count, j->ns);
  dibba_task_progress(t, 0, 0, "launching");
  ec2_send(j);
  return 0;
}

static int terminate_run(dibba_task_ctx_t *t) {
  const Dibba__V1__Ec2Namespace *a = (const Dibba__V1__Ec2Namespace *)t->args_msg;
  if (a == NULL || !valid_ns(a->namespace_))
    return -EINVAL;
  job_t *j;
  if (job_new(t, JOB_TERMINATE, a->namespace_, a->region, &j) < 0)
    return 0;
  for (size_t i = 0; i < a->n_instance_ids; i++)
    add_instance(j, a->instance_ids[i]);
  if (a->n_instance_ids) { /* only these */
    terminate_next(j);
    return 0;
  }
  const char *argv[] = {"HGETALL", j->key};
  redis_send(j, terminate_read, 2, argv);
  return 0;
}

static int get_run(dibba_task_ctx_t *t) {
  const Dibba__V1__Ec2Namespace *a = (const Dibba__V1__Ec2Namespace *)t->args_msg;
  const char *ns = a ? a->namespace_ : "";
  if (ns[0] && !valid_ns(ns))
    return -EINVAL;
  job_t *j;
  if (job_new(t, JOB_GET, ns, a ? a->region : NULL, &j) < 0)
    return 0;
  describe_by_tag(j, get_listed);
  return 0;
}

static int aws_init(dibba_plugin_ctx_t *ctx) {
  dibba_log_open_json(json_object_get(ctx->config, "log"));
  settings_t *s = dibba_xcalloc(1, sizeof *s);
  settings_load(s, ctx->config);
  static dibba_task_handler_t create = {.name = "create_worker_nodes",
                                        .args_type = "dibba.v1.Ec2LaunchSpec",
                                        .run = create_run,
                                        .timeout_ms = 30 * 60 * 1000};
  static dibba_task_handler_t terminate = {.name = "terminate_worker_node",
                                           .args_type = "dibba.v1.Ec2Namespace",
                                           .run = terminate_run,
                                           .timeout_ms = 30 * 60 * 1000};
  static dibba_task_handler_t get = {
      .name = "get_ec2_instances", .args_type = "dibba.v1.Ec2Namespace", .run = get_run, .timeout_ms = 5 * 60 * 1000};
  create.data = terminate.data = get.data = s;
  int rc = ctx->ops->register_task(ctx, &create);
  if (rc == 0)
    rc = ctx->ops->register_task(ctx, &terminate);
  if (rc == 0)
    rc = ctx->ops->register_task(ctx, &get);
  if (rc < 0) {
    settings_free(s);
    free(s);
    return rc;
  }
  if (s->akid == NULL || s->secret == NULL || s->region == NULL)
    ctx->ops->log(ctx, DIBBA_PLUGIN_LOG_WARN, "aws credentials or region not configured; EC2 tasks will fail");
  ctx->data = s;
  return 0;
}

static void aws_fini(dibba_plugin_ctx_t *ctx) {
  settings_t *s = ctx->data;
  if (s) {
    settings_free(s);
    free(s);
    ctx->data = NULL;
  }
}

DIBBA_PLUGIN_EXPORT const dibba_plugin_t *dibba_plugin_entry(void);

const dibba_plugin_t *dibba_plugin_entry(void) {
  static const dibba_plugin_t desc = {
      .abi_version = DIBBA_PLUGIN_ABI_VERSION,
      .name = "aws",
      .version = "0.1.0",
      .init = aws_init,
      .fini = aws_fini,
  };
  return &desc;
}
