/* SPDX-License-Identifier: Apache-2.0 */
/* CNI ADD / CHECK / DEL: plugin chains with prevResult, runtimeConfig by capability, and the result cache. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cni-int.h"
#include "dibba/alloc.h"
#include "dibba/buf.h"
#include "dibba/cni.h"
#include "dibba/error.h"
#include "dibba/log.h"

#define CACHE_KIND "dibba-cni-cache/1"
/* Plugins call iptables, ip, ... themselves, so they get a plain system PATH (not the daemon's). */
#define PLUGIN_PATH_ENV "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

struct dibba_cni_s {
  uv_loop_t *loop;
  char *path; /* CNI_PATH as given */
  char *conf_dir, *net_name, *ifname, *state_dir, *cache_dir;
  uint64_t timeout_ms;
  int ops;     /* operations in flight */
  int closing; /* dibba_cni_free was called: free when ops reaches 0 */
};

typedef enum { OP_ADD, OP_CHECK, OP_DEL } op_kind_t;

typedef struct op_s op_t;
typedef void (*write_cb)(op_t *op, int status);

struct op_s {
  dibba_cni_t *cni;
  op_kind_t kind;
  int rollback;  /* ADD failed, DEL is running over the chain */
  int rb_failed; /* a DEL of that rollback failed too: keep the cache entry for a later DEL */
  int werr;      /* error of the cache write in progress */
  char *cid, *ifname, *netns, *args, *net;
  json_t *list, *runtime, *prev;
  size_t idx; /* ADD/CHECK: next plugin; DEL: plugins left to run (counts down) */
  int status;
  dibba_buf_t err;
  char ip4[INET_ADDRSTRLEN], ip6[INET6_ADDRSTRLEN];
  /* cache file I/O */
  uv_fs_t fs;
  char *cache_path, *tmp_path, *wdata;
  size_t wlen, woff;
  uv_file fd;
  write_cb after_write;
  dibba_cni_cb cb;
  void *data;
};

static void run_next(op_t *op);

/* ---- lifetime ---- */

static void cni_destroy(dibba_cni_t *cni) {
  free(cni->path);
  free(cni->conf_dir);
  free(cni->net_name);
  free(cni->ifname);
  free(cni->state_dir);
  free(cni->cache_dir);
  free(cni);
}

void dibba_cni_free(dibba_cni_t *cni) {
  if (!cni || cni->closing)
    return;
  cni->closing = 1;
  if (cni->ops == 0)
    cni_destroy(cni);
}

static int mkdir_p1(const char *d) { return mkdir(d, 0700) == 0 || errno == EEXIST ? 0 : -errno; }

int dibba_cni_new(uv_loop_t *loop, const dibba_cni_opts_t *o, dibba_cni_t **out) {
  *out = NULL;
  if (!o->path || !o->conf_dir || !o->net_name || !*o->net_name || !o->state_dir || !*o->state_dir)
    return -EINVAL;
  dibba_cni_t *cni = dibba_xcalloc(1, sizeof *cni);
  cni->loop = loop;
  cni->path = dibba_xstrdup(o->path);
  cni->conf_dir = dibba_xstrdup(o->conf_dir);
  cni->net_name = dibba_xstrdup(o->net_name);
  cni->ifname = dibba_xstrdup(o->ifname && *o->ifname ? o->ifname : "eth0");
  cni->state_dir = dibba_xstrdup(o->state_dir);
  cni->cache_dir = dibba_xasprintf("%s/cni", o->state_dir);
  cni->timeout_ms = o->timeout_ms ? o->timeout_ms : 30000;
  int err = mkdir_p1(cni->state_dir);
  if (err == 0)
    err = mkdir_p1(cni->cache_dir);
  if (err < 0) {
    cni_destroy(cni);
    return err;
  }
  *out = cni;
  return 0;
}

int dibba_cni_new_from_config(uv_loop_t *loop, const dibba_config_t *cfg, dibba_cni_t **out, char *err, size_t errlen) {
  dibba_cni_opts_t o = {0};
  int64_t t = 0;
  int rc;
  *out = NULL;
  if ((rc = dibba_config_str(cfg, "cni.path", "/opt/cni/bin", &o.path, err, errlen)) < 0 ||
      (rc = dibba_config_str(cfg, "cni.conf_dir", "/etc/cni/net.d", &o.conf_dir, err, errlen)) < 0 ||
      (rc = dibba_config_str(cfg, "cni.net_name", NULL, &o.net_name, err, errlen)) < 0 ||
      (rc = dibba_config_str(cfg, "cni.ifname", "eth0", &o.ifname, err, errlen)) < 0 ||
      (rc = dibba_config_str(cfg, "worker.state_dir", "/var/lib/dibba", &o.state_dir, err, errlen)) < 0 ||
      (rc = dibba_config_int(cfg, "cni.timeout_ms", 30000, 1, 3600000, &t, err, errlen)) < 0)
    return rc;
  o.timeout_ms = (uint64_t)t;
  if (!o.net_name || !*o.net_name)
    return dibba_error_set(err, errlen, DIBBA_ECONFIG, "cni.net_name is empty");
  rc = dibba_cni_new(loop, &o, out);
  if (rc < 0)
    dibba_error_set(err, errlen, rc, "cni: state dir %s/cni: %s", o.state_dir, dibba_strerror(rc));
  return rc;
}

/* ---- requests ---- */

static int id_valid(const char *s, size_t max) {
  if (!s || !*s || *s == '.' || strlen(s) > max)
    return 0;
  for (const char *p = s; *p; p++)
    if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '_' || *p == '-' ||
          *p == '.'))
      return 0;
  return 1;
}

static json_t *port_mappings_json(const dibba_cni_req_t *req) {
  json_t *rt = json_object();
  if (req->n_port_mappings == 0)
    return rt;
  json_t *a = json_array();
  for (size_t i = 0; i < req->n_port_mappings; i++) {
    const dibba_cni_port_mapping_t *m = &req->port_mappings[i];
    json_t *o = json_pack("{s:i, s:i, s:s}", "hostPort", m->host_port, "containerPort", m->container_port, "protocol",
                          m->protocol ? m->protocol : "tcp");
    if (m->host_ip)
      json_object_set_new(o, "hostIP", json_string(m->host_ip));
    json_array_append_new(a, o);
  }
  json_object_set_new(rt, "portMappings", a);
  return rt;
}

static op_t *op_new(dibba_cni_t *cni, op_kind_t kind, const char *cid, dibba_cni_cb cb, void *data) {
  op_t *op = dibba_xcalloc(1, sizeof *op);
  op->cni = cni;
  op->kind = kind;
  op->cid = dibba_xstrdup(cid);
  op->cb = cb;
  op->data = data;
  op->fd = -1;
  op->fs.data = op;
  dibba_buf_init(&op->err, DIBBA_CNI_ERR_MAX);
  op->cache_path = dibba_xasprintf("%s/%s.json", cni->cache_dir, cid);
  op->tmp_path = dibba_xasprintf("%s/.%s.json.tmp", cni->cache_dir, cid);
  cni->ops++;
  return op;
}

static void op_free(op_t *op) {
  free(op->cid);
  free(op->ifname);
  free(op->netns);
  free(op->args);
  free(op->net);
  json_decref(op->list);
  json_decref(op->runtime);
  json_decref(op->prev);
  dibba_buf_free(&op->err);
  free(op->cache_path);
  free(op->tmp_path);
  free(op->wdata);
  free(op);
}

static void add_error(op_t *op, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void add_error(op_t *op, int status, const char *fmt, ...) {
  if (!op->status)
    op->status = status;
  if (op->err.len)
    dibba_buf_adds(&op->err, "; ");
  va_list ap;
  va_start(ap, fmt);
  dibba_buf_vprintf(&op->err, fmt, ap);
  va_end(ap);
}

/* Runs on a loop callback (never inside the API call), then frees op and maybe the runner. */
static void op_finish(op_t *op) {
  dibba_cni_t *cni = op->cni;
  dibba_cni_status_t st = {.status = op->status, .error = op->err.data ? op->err.data : ""};
  if (op->kind == OP_ADD && op->status == 0) {
    st.result = op->prev;
    memcpy(st.ip4, op->ip4, sizeof st.ip4);
    memcpy(st.ip6, op->ip6, sizeof st.ip6);
  }
  dibba_log(op->status ? DIBBA_LOG_WARN : DIBBA_LOG_DEBUG, "cni",
            json_pack("{s:s, s:s, s:s}", "container_id", op->cid, "net", op->net ? op->net : "", "error", st.error),
            "CNI %s %s",
            op->kind == OP_ADD     ? "ADD"
            : op->kind == OP_CHECK ? "CHECK"
                                   : "DEL",
            op->status ? "failed" : "done");
  if (op->cb)
    op->cb(cni, &st, op->data);
  op_free(op);
  if (--cni->ops == 0 && cni->closing)
    cni_destroy(cni);
}

/* ---- cache file: atomic write (tmp, fsync, rename) and unlink, all with uv_fs ---- */

static void write_end(op_t *op, int status) {
  write_cb cb = op->after_write;
  free(op->wdata);
  op->wdata = NULL;
  cb(op, status);
}

static void on_w_rename(uv_fs_t *req) {
  op_t *op = req->data;
  int r = (int)req->result;
  uv_fs_req_cleanup(req);
  write_end(op, r < 0 ? r : 0);
}

static void on_w_unlink_tmp(uv_fs_t *req) {
  op_t *op = req->data;
  uv_fs_req_cleanup(req);
  write_end(op, op->werr);
}

static void w_fail(op_t *op, int err) {
  op->werr = err;
  if (uv_fs_unlink(op->cni->loop, &op->fs, op->tmp_path, on_w_unlink_tmp) < 0)
    write_end(op, err);
}

static void on_w_close(uv_fs_t *req) {
  op_t *op = req->data;
  int r = (int)req->result;
  uv_fs_req_cleanup(req);
  op->fd = -1;
  if (r < 0 || op->woff < op->wlen) {
    w_fail(op, r < 0 ? r : op->werr ? op->werr : -EIO);
    return;
  }
  int e = uv_fs_rename(op->cni->loop, &op->fs, op->tmp_path, op->cache_path, on_w_rename);
  if (e < 0)
    w_fail(op, e);
}

static void w_close(op_t *op) {
  int e = uv_fs_close(op->cni->loop, &op->fs, op->fd, on_w_close);
  if (e < 0)
    w_fail(op, e);
}

static void on_w_fsync(uv_fs_t *req) {
  op_t *op = req->data;
  int r = (int)req->result;
  uv_fs_req_cleanup(req);
  if (r < 0)
    op->woff = 0; /* makes on_w_close fail the write */
  w_close(op);
}

static void w_write(op_t *op);

static void on_w_write(uv_fs_t *req) {
  op_t *op = req->data;
  ssize_t r = req->result;
  uv_fs_req_cleanup(req);
  if (r <= 0) {
    op->woff = 0;
    w_close(op);
    return;
  }
  op->woff += (size_t)r;
  w_write(op);
}

static void w_write(op_t *op) {
  int e;
  if (op->woff < op->wlen) {
    uv_buf_t b = uv_buf_init(op->wdata + op->woff, (unsigned)(op->wlen - op->woff));
    e = uv_fs_write(op->cni->loop, &op->fs, op->fd, &b, 1, -1, on_w_write);
  } else {
    e = uv_fs_fsync(op->cni->loop, &op->fs, op->fd, on_w_fsync);
  }
  if (e < 0) {
    op->woff = 0;
    w_close(op);
  }
}

static void on_w_open(uv_fs_t *req) {
  op_t *op = req->data;
  int r = (int)req->result;
  uv_fs_req_cleanup(req);
  if (r < 0) {
    write_end(op, r);
    return;
  }
  op->fd = r;
  op->woff = 0;
  w_write(op);
}

/* Write the cache entry {containerId, network, ifName, netns, cniArgs, runtimeConfig, result?}. */
static void cache_write(op_t *op, int with_result, write_cb cb) {
  json_t *doc =
      json_pack("{s:s, s:s, s:O, s:s, s:s, s:s, s:O}", "kind", CACHE_KIND, "containerId", op->cid, "network", op->list,
                "ifName", op->ifname, "netns", op->netns, "cniArgs", op->args, "runtimeConfig", op->runtime);
  if (with_result && op->prev)
    json_object_set(doc, "result", op->prev);
  op->wdata = json_dumps(doc, JSON_COMPACT);
  json_decref(doc);
  op->wlen = strlen(op->wdata);
  op->after_write = cb;
  int e = uv_fs_open(op->cni->loop, &op->fs, op->tmp_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600, on_w_open);
  if (e < 0)
    write_end(op, e); /* only on bad arguments; never inside the API call since we run from callbacks */
}

static void on_cache_unlinked(uv_fs_t *req) {
  op_t *op = req->data;
  int r = (int)req->result;
  uv_fs_req_cleanup(req);
  if (r < 0 && r != UV_ENOENT && !op->rollback)
    add_error(op, r, "removing cache %s: %s", op->cache_path, uv_strerror(r));
  op_finish(op);
}

static void cache_remove_and_finish(op_t *op) {
  if (uv_fs_unlink(op->cni->loop, &op->fs, op->cache_path, on_cache_unlinked) < 0)
    op_finish(op);
}

int dibba_cni_cached(dibba_cni_t *cni, const char *container_id, json_t **out) {
  *out = NULL;
  if (!id_valid(container_id, DIBBA_CNI_ID_MAX))
    return -EINVAL;
  char *p = dibba_xasprintf("%s/%s.json", cni->cache_dir, container_id);
  char *text = NULL;
  size_t len = 0;
  int rc = dibba_read_small_file(p, DIBBA_CNI_CONF_MAX_BYTES, &text, &len);
  free(p);
  if (rc < 0)
    return rc;
  json_t *doc = json_loadb(text, len, 0, NULL);
  free(text);
  const char *kind = json_string_value(json_object_get(doc, "kind"));
  if (!kind || strcmp(kind, CACHE_KIND) != 0 || !json_is_object(json_object_get(doc, "network"))) {
    json_decref(doc);
    return -EINVAL;
  }
  *out = doc;
  return 0;
}

/* ---- plugin execution ---- */

static const char *cmd_name(const op_t *op) {
  if (op->kind == OP_DEL || op->rollback)
    return "DEL";
  return op->kind == OP_ADD ? "ADD" : "CHECK";
}

/* The first directory of CNI_PATH that holds an executable plugin of this type. */
static char *find_plugin(const dibba_cni_t *cni, const char *type) {
  const char *p = cni->path;
  while (*p) {
    const char *colon = strchr(p, ':');
    size_t n = colon ? (size_t)(colon - p) : strlen(p);
    if (n > 0) {
      char *f = dibba_xasprintf("%.*s/%s", (int)n, p, type);
      if (access(f, X_OK) == 0)
        return f;
      free(f);
    }
    p += n + (colon ? 1 : 0);
  }
  return NULL;
}

static const char *plugin_type(const op_t *op, size_t i) {
  return json_string_value(json_object_get(json_array_get(json_object_get(op->list, "plugins"), i), "type"));
}

static size_t trimmed_len(const char *s, size_t n) {
  while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == ' ' || s[n - 1] == '\r' || s[n - 1] == '\t'))
    n--;
  return n;
}

static void plugin_failed(op_t *op, const char *type, int status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void plugin_failed(op_t *op, const char *type, int status, const char *fmt, ...) {
  char why[768];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, sizeof why, fmt, ap);
  va_end(ap);
  add_error(op, status, "%splugin %s %s", op->rollback ? "rollback: " : "", type, why);
  if (op->rollback)
    op->rb_failed = 1;
  if (op->kind == OP_ADD && !op->rollback) {
    /* A failed ADD is followed by DEL over the whole chain, with whatever result exists. */
    op->rollback = 1;
    op->idx = json_array_size(json_object_get(op->list, "plugins"));
  } else if (op->kind == OP_CHECK) {
    op->idx = SIZE_MAX; /* stop */
  }
}

static void on_plugin_done(const dibba__exec_result_t *r, void *data) {
  op_t *op = data;
  size_t i = (op->kind == OP_DEL || op->rollback) ? op->idx : op->idx - 1;
  const char *type = plugin_type(op, i);
  const char *cmd = cmd_name(op);
  if (r->err == UV_ETIMEDOUT) {
    plugin_failed(op, type, UV_ETIMEDOUT, "%s timed out after %" PRIu64 " ms (process group %d killed)", cmd,
                  op->cni->timeout_ms, (int)r->pid);
  } else if (r->err) {
    plugin_failed(op, type, r->err == -E2BIG ? -EINVAL : -EIO, "%s: %s", cmd,
                  r->err == -E2BIG ? "output over the cap (killed)" : uv_strerror(r->err));
  } else if (r->exit_status != 0 || r->term_signal) {
    char why[900];
    if (dibba_cni_error_parse(r->out, r->out_len, why, sizeof why) <= 0) {
      size_t n = trimmed_len(r->errout, r->err_len);
      const char *tail = n > 300 ? r->errout + n - 300 : r->errout;
      if (r->term_signal)
        snprintf(why, sizeof why, "killed by signal %d: %.*s", r->term_signal, (int)(n > 300 ? 300 : n), tail);
      else
        snprintf(why, sizeof why, "exit status %d: %.*s", (int)r->exit_status, (int)(n > 300 ? 300 : n), tail);
    }
    plugin_failed(op, type, -EIO, "%s failed: %s", cmd, why);
  } else if (op->kind == OP_ADD && !op->rollback && trimmed_len(r->out, r->out_len) > 0) {
    json_t *res = NULL;
    char why[512];
    if (dibba_cni_result_parse(r->out, r->out_len, &res, why, sizeof why) < 0) {
      plugin_failed(op, type, -EINVAL, "ADD: %s", why);
    } else {
      json_decref(op->prev);
      op->prev = res;
    }
  }
  run_next(op);
}

static void exec_plugin(op_t *op, size_t i) {
  dibba_cni_t *cni = op->cni;
  const char *type = plugin_type(op, i);
  const char *cmd = cmd_name(op);
  char *file = find_plugin(cni, type);
  if (!file) {
    plugin_failed(op, type, -ENOENT, "%s: not found in CNI_PATH %s", cmd, cni->path);
    run_next(op);
    return;
  }
  json_t *conf = dibba_cni_plugin_conf(op->list, i, op->prev, op->runtime);
  char *input = json_dumps(conf, JSON_COMPACT);
  json_decref(conf);
  char *env[] = {
      dibba_xasprintf("CNI_COMMAND=%s", cmd),
      dibba_xasprintf("CNI_CONTAINERID=%s", op->cid),
      dibba_xasprintf("CNI_NETNS=%s", op->netns),
      dibba_xasprintf("CNI_IFNAME=%s", op->ifname),
      dibba_xasprintf("CNI_ARGS=%s", op->args),
      dibba_xasprintf("CNI_PATH=%s", cni->path),
      dibba_xstrdup(PLUGIN_PATH_ENV),
      NULL,
  };
  char *argv[] = {file, NULL};
  int e = dibba__exec(cni->loop, file, argv, env, input, strlen(input), cni->timeout_ms, DIBBA_CNI_STDOUT_MAX_BYTES,
                      DIBBA_CNI_STDERR_MAX_BYTES, on_plugin_done, op);
  for (size_t k = 0; env[k]; k++)
    free(env[k]);
  free(input);
  free(file);
  if (e < 0) {
    plugin_failed(op, type, e, "%s: spawn: %s", cmd, uv_strerror(e));
    run_next(op);
  }
}

/* ---- the state machine ---- */

static void on_add_cached(op_t *op, int status) {
  if (status < 0) {
    add_error(op, status, "writing cache %s: %s", op->cache_path, uv_strerror(status));
    op->rollback = 1;
    op->idx = json_array_size(json_object_get(op->list, "plugins"));
  }
  run_next(op);
}

static void on_pending_cached(op_t *op, int status) {
  if (status < 0) {
    /* Without a cache entry DEL could not run later: do not start. */
    add_error(op, status, "writing cache %s: %s", op->cache_path, uv_strerror(status));
    op_finish(op);
    return;
  }
  run_next(op);
}

static void run_next(op_t *op) {
  size_t n = json_array_size(json_object_get(op->list, "plugins"));
  if (op->kind == OP_DEL || op->rollback) {
    if (op->idx > 0) {
      op->idx--;
      exec_plugin(op, op->idx);
      return;
    }
    if (op->rollback) {
      if (op->rb_failed) {
        add_error(op, op->status, "cache entry kept for a later DEL");
        op_finish(op);
      } else {
        cache_remove_and_finish(op);
      }
      return;
    }
    if (op->status == 0) {
      cache_remove_and_finish(op);
      return;
    }
    op_finish(op);
    return;
  }
  if (op->idx < n) {
    exec_plugin(op, op->idx++);
    return;
  }
  if (op->kind == OP_CHECK || op->status) {
    op_finish(op);
    return;
  }
  /* ADD done: the pod IPs, then the cache entry with the result. */
  if (!op->prev) {
    add_error(op, -EINVAL, "ADD: the chain returned no result");
    op->rollback = 1;
    op->idx = n;
    run_next(op);
    return;
  }
  if (op->after_write != on_add_cached) {
    dibba_cni_result_ips(op->prev, op->ifname, op->ip4, op->ip6);
    cache_write(op, 1, on_add_cached);
    return;
  }
  op_finish(op);
}

static void on_netns_stat(uv_fs_t *req) {
  op_t *op = req->data;
  int r = (int)req->result;
  uv_fs_req_cleanup(req);
  if (r < 0 && op->kind == OP_DEL) {
    /* The namespace is gone: DEL still runs, with an empty CNI_NETNS as the spec allows. */
    free(op->netns);
    op->netns = dibba_xstrdup("");
  } else if (r < 0) {
    add_error(op, r, "CHECK: netns %s: %s", op->netns, uv_strerror(r));
    op_finish(op);
    return;
  }
  if (op->kind == OP_CHECK) {
    const char *v = json_string_value(json_object_get(op->list, "cniVersion"));
    if (v && strncmp(v, "0.3.", 4) == 0) {
      add_error(op, -ENOTSUP, "CHECK: cniVersion %s does not support CHECK", v);
      op_finish(op);
      return;
    }
    if (json_is_true(json_object_get(op->list, "disableCheck"))) {
      op_finish(op);
      return;
    }
  }
  run_next(op);
}

static int validate(dibba_cni_t *cni, const dibba_cni_req_t *req, char *err, size_t errlen) {
  if (!cni || cni->closing || !req)
    return dibba_error_set(err, errlen, -EINVAL, "cni: closed runner or no request");
  if (!id_valid(req->container_id, DIBBA_CNI_ID_MAX))
    return dibba_error_set(err, errlen, -EINVAL, "cni: invalid container id");
  if (req->ifname && !id_valid(req->ifname, 15))
    return dibba_error_set(err, errlen, -EINVAL, "cni: invalid interface name");
  for (size_t i = 0; i < req->n_port_mappings; i++) {
    const dibba_cni_port_mapping_t *m = &req->port_mappings[i];
    if (m->host_port < 1 || m->host_port > 65535 || m->container_port < 1 || m->container_port > 65535)
      return dibba_error_set(err, errlen, -EINVAL, "cni: port mapping %zu out of range", i);
  }
  return 0;
}

/* Fill op from the config dir and the request (ADD, or DEL without a cache entry). */
static int op_from_request(op_t *op, const dibba_cni_req_t *req, char *err, size_t errlen) {
  dibba_cni_t *cni = op->cni;
  op->net = dibba_xstrdup(req->net && *req->net ? req->net : cni->net_name);
  op->ifname = dibba_xstrdup(req->ifname && *req->ifname ? req->ifname : cni->ifname);
  op->netns = dibba_xstrdup(req->netns_path ? req->netns_path : "");
  op->args = dibba_cni_args(req->pod_ns, req->pod_name, req->container_id);
  if (!op->args)
    return dibba_error_set(err, errlen, -EINVAL, "cni: pod namespace/name must not contain ';' or '='");
  op->runtime = port_mappings_json(req);
  return dibba_cni_conflist_load(cni->conf_dir, op->net, &op->list, NULL, err, errlen);
}

/* Fill op from a cache entry; the request may still name the netns path. */
static int op_from_cache(op_t *op, json_t *doc, const dibba_cni_req_t *req, char *err, size_t errlen) {
  const char *ifname = json_string_value(json_object_get(doc, "ifName"));
  const char *netns = json_string_value(json_object_get(doc, "netns"));
  const char *args = json_string_value(json_object_get(doc, "cniArgs"));
  json_t *list = json_object_get(doc, "network");
  if (!ifname || !netns || !args || !json_is_array(json_object_get(list, "plugins")))
    return dibba_error_set(err, errlen, -EINVAL, "cni: cache entry of %s is malformed", op->cid);
  op->net = dibba_xstrdup(json_string_value(json_object_get(list, "name")));
  op->ifname = dibba_xstrdup(ifname);
  op->netns = dibba_xstrdup(req->netns_path ? req->netns_path : netns);
  op->args = dibba_xstrdup(args);
  op->list = json_incref(list);
  op->runtime = json_incref(
      json_is_object(json_object_get(doc, "runtimeConfig")) ? json_object_get(doc, "runtimeConfig") : json_object());
  if (json_object_get(doc, "result"))
    op->prev = json_incref(json_object_get(doc, "result"));
  return 0;
}

int dibba_cni_add(dibba_cni_t *cni, const dibba_cni_req_t *req, dibba_cni_cb cb, void *data, char *err, size_t errlen) {
  int rc = validate(cni, req, err, errlen);
  if (rc < 0)
    return rc;
  if (!req->netns_path || !*req->netns_path)
    return dibba_error_set(err, errlen, -EINVAL, "cni: ADD needs a netns path");
  op_t *op = op_new(cni, OP_ADD, req->container_id, cb, data);
  if (access(op->cache_path, F_OK) == 0) {
    rc = dibba_error_set(err, errlen, -EEXIST, "cni: %s already has a cached ADD; DEL it first", op->cid);
    goto fail;
  }
  if ((rc = op_from_request(op, req, err, errlen)) < 0)
    goto fail;
  /* A pending entry first, so that a DEL after a crash mid-ADD still knows the network and netns. */
  cache_write(op, 0, on_pending_cached);
  return 0;
fail:
  op->cb = NULL;
  op_free(op);
  cni->ops--;
  return rc;
}

static int start_from_cache_or_conf(dibba_cni_t *cni, op_kind_t kind, const dibba_cni_req_t *req, dibba_cni_cb cb,
                                    void *data, char *err, size_t errlen) {
  int rc = validate(cni, req, err, errlen);
  if (rc < 0)
    return rc;
  op_t *op = op_new(cni, kind, req->container_id, cb, data);
  json_t *doc = NULL;
  rc = dibba_cni_cached(cni, req->container_id, &doc);
  if (rc == 0) {
    rc = op_from_cache(op, doc, req, err, errlen);
    json_decref(doc);
  } else if (kind == OP_DEL && rc == -ENOENT) {
    rc = op_from_request(op, req, err, errlen);
  } else {
    rc = dibba_error_set(err, errlen, rc, "cni: no usable cache entry for %s: %s", op->cid, dibba_strerror(rc));
  }
  if (rc < 0)
    goto fail;
  if (kind == OP_CHECK && !op->prev) {
    rc = dibba_error_set(err, errlen, -ENOENT, "cni: %s has no cached ADD result to CHECK", op->cid);
    goto fail;
  }
  if (kind == OP_DEL)
    op->idx = json_array_size(json_object_get(op->list, "plugins"));
  if (!*op->netns) {
    if (kind == OP_CHECK) {
      rc = dibba_error_set(err, errlen, -EINVAL, "cni: CHECK needs a netns path");
      goto fail;
    }
    /* Nothing to stat: go through a stat of the cache dir so the callback still comes on a later turn. */
    free(op->netns);
    op->netns = dibba_xstrdup("");
  }
  rc = uv_fs_stat(cni->loop, &op->fs, *op->netns ? op->netns : cni->cache_dir, on_netns_stat);
  if (rc < 0) {
    dibba_error_set(err, errlen, rc, "cni: stat: %s", uv_strerror(rc));
    goto fail;
  }
  return 0;
fail:
  op->cb = NULL;
  op_free(op);
  cni->ops--;
  return rc;
}

int dibba_cni_check(dibba_cni_t *cni, const dibba_cni_req_t *req, dibba_cni_cb cb, void *data, char *err,
                    size_t errlen) {
  return start_from_cache_or_conf(cni, OP_CHECK, req, cb, data, err, errlen);
}

int dibba_cni_del(dibba_cni_t *cni, const dibba_cni_req_t *req, dibba_cni_cb cb, void *data, char *err, size_t errlen) {
  return start_from_cache_or_conf(cni, OP_DEL, req, cb, data, err, errlen);
}
