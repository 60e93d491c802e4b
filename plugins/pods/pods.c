/* SPDX-License-Identifier: Apache-2.0 */
/* The pods plugin: container tasks (import/pull/list images, run/stop/delete containers, logs, exec) on containerd. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dibba/alloc.h"
#include "dibba/config.h"
#include "dibba/containerd.h"
#include "dibba/containerd_container.h"
#include "dibba/containerd_exec.h"
#include "dibba/containerd_image.h"
#include "dibba/cni.h"
#include "dibba/error.h"
#include "dibba/pbjson.h"
#include "dibba/plugin.h"
#include "dibba/pod.h"
#include "dibba/redis.h"
#include "dibba/time.h"

#define LOG_TAIL_MAX (1u << 20) /* bytes read from the end of a log file */
#define TAIL_LINES_MAX 10000
#define ARGV_MAX 256

typedef struct pods_s {
  dibba_plugin_ctx_t *ctx;
  dibba_containerd_t *ctd;
  char *ns;
  char *logger;         /* dibba-logger binary */
  char *log_dir;        /* <log_dir>/<ns>/<id>.log */
  char *state_dir;      /* exec FIFOs */
  dibba_cni_t *cni;     /* pods: NULL without a "cni" section */
  dibba_pod_mgr_t *mgr; /* one pod manager per worker */
  /* Redis (with a pod manager and a redis section): pod records, status, the desired set */
  dibba_redis_t *redis;
  char *prefix, *host;
  uv_timer_t desired_timer;
  int timer_open;
  uint64_t desired_ms;
  int ctd_ready;
  int desired_busy;          /* a desired-set read or reconcile is in flight */
  int desired_again;         /* another was asked for meanwhile */
  struct rwait_s *rwait;     /* reconcile_pods tasks waiting for the next desired-set run to start */
  struct desired_s *desired; /* the desired-set run in flight, or NULL */
  int closes;                /* asynchronous closes still to come before p is freed */
} pods_t;

/* One running task: the handler's state, freed when the task ends. */
typedef struct op_s {
  dibba_task_ctx_t *t;
  pods_t *p;
  uv_work_t work;
  char *ns, *id, *path;
  const char **argv[4]; /* command, args, env, exec argv */
  size_t argc[4];
  dibba_oci_mount_t *mounts;
  size_t n_mounts;
  dibba_container_opts_t co;
  uint64_t n;
  int strip;      /* pod_logs: drop the CRI prefix of each line */
  int64_t offset; /* pod_logs: read forward from this byte offset (-1: the last n lines) */
  json_t *result;
  int err;
  dibba_exec_t *exec;
} op_t;

static pods_t *pods_of(dibba_task_ctx_t *t) { return t->handler_data; }
static void plog(dibba_plugin_ctx_t *ctx, int level, const char *msg);

static void op_free(op_t *o) {
  free(o->ns);
  free(o->id);
  free(o->path);
  for (int i = 0; i < 4; i++)
    free(o->argv[i]);
  free(o->mounts);
  json_decref(o->result);
  free(o);
}

static void op_fail(op_t *o, int err, const char *msg) {
  dibba_task_ctx_t *t = o->t;
  op_free(o);
  dibba_task_fail(t, err, NULL, msg);
}

static void op_done(op_t *o, json_t *result) {
  dibba_task_ctx_t *t = o->t;
  op_free(o);
  dibba_task_complete(t, result);
}

static int bad_arg(dibba_task_ctx_t *t, const char *field, const char *what) {
  char msg[200];
  snprintf(msg, sizeof msg, "args.%s: %s", field, what);
  dibba_task_fail(t, -EINVAL, "EINVAL", msg);
  return 0;
}

/* A string argument: 1 found, 0 absent (and not required), -1 invalid (the task has been failed). */
static int arg_str(dibba_task_ctx_t *t, const char *key, int required, const char **out) {
  json_t *v = json_object_get(t->args, key);
  *out = NULL;
  if (!v || json_is_null(v)) {
    if (required) {
      bad_arg(t, key, "required string");
      return -1;
    }
    return 0;
  }
  if (!json_is_string(v) || !*json_string_value(v)) {
    bad_arg(t, key, "must be a non-empty string");
    return -1;
  }
  *out = json_string_value(v);
  return 1;
}

static int arg_uint(dibba_task_ctx_t *t, const json_t *obj, const char *key, const char *field, uint64_t *out) {
  json_t *v = json_object_get(obj, key);
  if (!v || json_is_null(v))
    return 0;
  if (!json_is_integer(v) || json_integer_value(v) < 0) {
    bad_arg(t, field, "must be a non-negative integer");
    return -1;
  }
  *out = (uint64_t)json_integer_value(v);
  return 1;
}

/* An array of strings (or, for env, an object of strings turned into "K=V"), borrowed from args except env
 * objects, whose strings are kept in o->result until the task ends. */
static int arg_strv(op_t *o, const char *key, int slot, int allow_object) {
  json_t *v = json_object_get(o->t->args, key);
  if (!v || json_is_null(v))
    return 0;
  if (allow_object && json_is_object(v)) {
    if (!o->result)
      o->result = json_array();
    const char *k;
    json_t *val;
    o->argv[slot] = dibba_xcalloc(json_object_size(v) + 1, sizeof(char *));
    json_object_foreach(v, k, val) {
      if (!json_is_string(val))
        return bad_arg(o->t, key, "values must be strings") - 1;
      char *kv = dibba_xasprintf("%s=%s", k, json_string_value(val));
      json_array_append_new(o->result, json_string(kv));
      free(kv);
      o->argv[slot][o->argc[slot]++] = json_string_value(json_array_get(o->result, json_array_size(o->result) - 1));
    }
    return 1;
  }
  if (!json_is_array(v) || json_array_size(v) > ARGV_MAX)
    return bad_arg(o->t, key,
                   allow_object ? "must be an object or an array of strings" : "must be an array of strings") -
           1;
  o->argv[slot] = dibba_xcalloc(json_array_size(v) + 1, sizeof(char *));
  size_t i;
  json_t *e;
  json_array_foreach(v, i, e) {
    if (!json_is_string(e))
      return bad_arg(o->t, key, "must be an array of strings") - 1;
    o->argv[slot][o->argc[slot]++] = json_string_value(e);
  }
  return 1;
}

static op_t *op_new(dibba_task_ctx_t *t) {
  op_t *o = dibba_xcalloc(1, sizeof *o);
  o->t = t;
  o->p = pods_of(t);
  o->offset = -1;
  return o;
}

/* id and namespace, common to most tasks. Returns 0, or -1 when the task has been failed. */
static int op_target(op_t *o, int need_id) {
  const char *id = NULL, *ns = NULL;
  if ((need_id && arg_str(o->t, "id", 1, &id) < 0) || arg_str(o->t, "namespace", 0, &ns) < 0)
    return -1;
  if (id && (strchr(id, '/') || strlen(id) > 76 || id[0] == '.')) {
    bad_arg(o->t, "id", "must be a container id ([A-Za-z0-9._-], at most 76)");
    return -1;
  }
  o->id = id ? dibba_xstrdup(id) : NULL;
  o->ns = dibba_xstrdup(ns ? ns : o->p->ns);
  return 0;
}

/* ---------------- import_image ---------------- */

static void on_imported(dibba_containerd_t *ctd, int err, const char *msg, const dibba_image_result_t *res,
                        void *data) {
  op_t *o = data;
  if (err < 0) {
    op_fail(o, err, msg);
    return;
  }
  op_done(o, json_pack("{s:s, s:s, s:s, s:I, s:I}", "name", res->name, "digest", res->manifest_digest, "chain_id",
                       res->chain_id, "layers", (json_int_t)res->layers, "layers_unpacked",
                       (json_int_t)res->layers_unpacked));
}

static int import_run(dibba_task_ctx_t *t) {
  const char *archive, *name;
  if (arg_str(t, "archive", 1, &archive) < 0 || arg_str(t, "name", 0, &name) < 0)
    return 0;
  if (archive[0] != '/')
    return bad_arg(t, "archive", "must be an absolute path");
  op_t *o = op_new(t);
  if (op_target(o, 0) < 0) {
    op_free(o);
    return 0;
  }
  dibba_image_import_opts_t io = {.archive = archive, .name = name, .ns = o->ns};
  int rc = dibba_containerd_image_import(o->p->ctd, &io, on_imported, o);
  if (rc < 0)
    op_fail(o, rc, "import_image: cannot open the archive");
  return 0;
}

/* ---------------- pull_image (CRI) ---------------- */

static void on_pulled(dibba_containerd_t *ctd, int err, const dibba_grpc_status_t *st,
                      Runtime__V1__PullImageResponse *resp, void *data) {
  op_t *o = data;
  if (err < 0) {
    char msg[300];
    snprintf(msg, sizeof msg, "pull_image: %s", st->message && *st->message ? st->message : dibba_strerror(err));
    op_fail(o, err, msg);
    return;
  }
  op_done(o, json_pack("{s:s}", "image_ref", resp->image_ref));
}

static int pull_run(dibba_task_ctx_t *t) {
  const char *image, *user, *pass, *ns;
  if (arg_str(t, "image", 1, &image) < 0 || arg_str(t, "username", 0, &user) < 0 ||
      arg_str(t, "password", 0, &pass) < 0 || arg_str(t, "namespace", 0, &ns) < 0)
    return 0;
  if (!user != !pass)
    return bad_arg(t, user ? "password" : "username", "username and password go together");
  op_t *o = op_new(t);
  Runtime__V1__ImageSpec spec = RUNTIME__V1__IMAGE_SPEC__INIT;
  spec.image = (char *)image;
  Runtime__V1__AuthConfig auth = RUNTIME__V1__AUTH_CONFIG__INIT;
  auth.username = (char *)(user ? user : "");
  auth.password = (char *)(pass ? pass : "");
  Runtime__V1__PullImageRequest req = RUNTIME__V1__PULL_IMAGE_REQUEST__INIT;
  req.image = &spec;
  req.auth = user ? &auth : NULL;
  /* CRI keeps its images in its own namespace (k8s.io): a namespace argument cannot change that. */
  dibba_containerd_call_opts_t co = {.timeout_ms = 10 * 60 * 1000};
  char line[300];
  snprintf(line, sizeof line, "pulling %s%s", image, user ? " with credentials" : "");
  t->ops->log(t, DIBBA_PLUGIN_LOG_INFO, line);
  int rc = dibba_containerd_cri_pull_image(o->p->ctd, &co, &req, on_pulled, o);
  if (rc < 0)
    op_fail(o, rc, "pull_image: containerd unreachable");
  return 0;
}

/* ---------------- list_images ---------------- */

static void on_listed(dibba_containerd_t *ctd, int err, const dibba_grpc_status_t *st,
                      Containerd__Services__Images__V1__ListImagesResponse *resp, void *data) {
  op_t *o = data;
  if (err < 0) {
    op_fail(o, err, "list_images: Images.List failed");
    return;
  }
  json_t *arr = json_array();
  for (size_t i = 0; i < resp->n_images; i++) {
    const Containerd__Services__Images__V1__Image *im = resp->images[i];
    json_array_append_new(arr, json_pack("{s:s, s:s}", "name", im->name, "digest",
                                         im->target && im->target->digest ? im->target->digest : ""));
  }
  op_done(o, json_pack("{s:s, s:o}", "namespace", o->ns, "images", arr));
}

static int list_run(dibba_task_ctx_t *t) {
  op_t *o = op_new(t);
  if (op_target(o, 0) < 0) {
    op_free(o);
    return 0;
  }
  Containerd__Services__Images__V1__ListImagesRequest req = CONTAINERD__SERVICES__IMAGES__V1__LIST_IMAGES_REQUEST__INIT;
  dibba_containerd_call_opts_t co = {.ns = o->ns};
  int rc = dibba_containerd_images_list(o->p->ctd, &co, &req, on_listed, o);
  if (rc < 0)
    op_fail(o, rc, "list_images: containerd unreachable");
  return 0;
}

/* ---------------- run_container ---------------- */

static void on_ran(dibba_containerd_t *ctd, int err, const char *msg, uint32_t pid, void *data) {
  op_t *o = data;
  if (err < 0) {
    op_fail(o, err, msg);
    return;
  }
  op_done(o, json_pack("{s:s, s:s, s:I, s:s, s:s}", "id", o->id, "namespace", o->ns, "pid", (json_int_t)pid, "status",
                       "running", "log_path", o->path));
}

static void work_mkdir(uv_work_t *w) {
  op_t *o = w->data;
  char dir[4200];
  snprintf(dir, sizeof dir, "%s", o->path);
  char *slash = strrchr(dir, '/');
  if (slash)
    *slash = '\0';
  o->err = 0;
  for (char *q = dir + 1; *q; q++)
    if (*q == '/') {
      *q = '\0';
      if (mkdir(dir, 0755) < 0 && errno != EEXIST)
        o->err = -errno;
      *q = '/';
    }
  if (mkdir(dir, 0755) < 0 && errno != EEXIST)
    o->err = -errno;
}

static void after_mkdir(uv_work_t *w, int status) {
  op_t *o = w->data;
  if (status < 0 || o->err < 0) {
    op_fail(o, status < 0 ? status : o->err, "run_container: cannot create the log directory");
    return;
  }
  int rc = dibba_containerd_container_run(o->p->ctd, &o->co, on_ran, o);
  if (rc < 0)
    op_fail(o, rc, "run_container: invalid options (memory below the minimum, or a bad log path)");
}

static int run_parse_mounts(op_t *o) {
  json_t *m = json_object_get(o->t->args, "mounts");
  if (!m || json_is_null(m))
    return 0;
  if (!json_is_array(m) || json_array_size(m) > ARGV_MAX)
    return bad_arg(o->t, "mounts", "must be an array") - 1;
  o->mounts = dibba_xcalloc(json_array_size(m) + 1, sizeof *o->mounts);
  size_t i;
  json_t *e;
  json_array_foreach(m, i, e) {
    const char *dst = json_string_value(json_object_get(e, "destination"));
    const char *src = json_string_value(json_object_get(e, "source"));
    if (!dst || dst[0] != '/' || !src || src[0] != '/')
      return bad_arg(o->t, "mounts", "each needs absolute destination and source") - 1;
    o->mounts[i].destination = dst;
    o->mounts[i].source = src;
    o->mounts[i].readonly = json_is_true(json_object_get(e, "readonly"));
  }
  o->n_mounts = json_array_size(m);
  return 0;
}

static int run_run(dibba_task_ctx_t *t) {
  const char *image, *wd, *user;
  if (arg_str(t, "image", 1, &image) < 0 || arg_str(t, "workingDir", 0, &wd) < 0 || arg_str(t, "user", 0, &user) < 0)
    return 0;
  op_t *o = op_new(t);
  if (op_target(o, 1) < 0 || arg_strv(o, "command", 0, 0) < 0 || arg_strv(o, "args", 1, 0) < 0 ||
      arg_strv(o, "env", 2, 1) < 0 || run_parse_mounts(o) < 0) {
    op_free(o);
    return 0;
  }
  dibba_oci_opts_t *oci = &o->co.oci;
  json_t *res = json_object_get(t->args, "resources");
  if (res && !json_is_null(res)) {
    uint64_t cpu = 0, mem = 0;
    const char *cpuset = json_string_value(json_object_get(res, "cpuset_cpus"));
    if (!json_is_object(res)) {
      bad_arg(t, "resources", "must be an object");
      op_free(o);
      return 0;
    }
    if (arg_uint(t, res, "cpu_millicores", "resources.cpu_millicores", &cpu) < 0 ||
        arg_uint(t, res, "memory", "resources.memory", &mem) < 0) {
      op_free(o);
      return 0;
    }
    if (mem && mem < (uint64_t)DIBBA_OCI_MIN_MEMORY) {
      bad_arg(t, "resources.memory", "below the minimum of 6 MiB");
      op_free(o);
      return 0;
    }
    oci->cpu_millis = (int64_t)cpu;
    oci->memory_bytes = (int64_t)mem;
    oci->cpuset = cpuset;
  }
  oci->command = o->argv[0];
  oci->n_command = o->argc[0];
  oci->args = o->argv[1];
  oci->n_args = o->argc[1];
  oci->env = o->argv[2];
  oci->n_env = o->argc[2];
  oci->working_dir = wd;
  oci->user = user;
  oci->mounts = o->mounts;
  oci->n_mounts = o->n_mounts;
  o->path = dibba_xasprintf("%s/%s/%s.log", o->p->log_dir, o->ns, o->id);
  o->co.id = o->id;
  o->co.ns = o->ns;
  o->co.image = image;
  o->co.logger = o->p->logger;
  o->co.log_path = o->path;
  o->co.log_max_size = 10u << 20;
  o->co.log_max_files = 2;
  o->work.data = o;
  int rc = uv_queue_work(t->loop, &o->work, work_mkdir, after_mkdir);
  if (rc < 0)
    op_fail(o, rc, "run_container: queue work");
  return 0;
}

/* ---------------- stop_container / delete_container ---------------- */

static void on_stopped(dibba_containerd_t *ctd, int err, const char *msg, uint32_t status, int oom, void *data) {
  op_t *o = data;
  if (err < 0) {
    op_fail(o, err, msg);
    return;
  }
  op_done(o, json_pack("{s:s, s:s, s:I, s:b}", "id", o->id, "status", "stopped", "exit_status", (json_int_t)status,
                       "oom_killed", oom));
}

static int stop_run(dibba_task_ctx_t *t) {
  op_t *o = op_new(t);
  uint64_t grace = 10000;
  if (op_target(o, 1) < 0 || arg_uint(t, t->args, "grace_ms", "grace_ms", &grace) < 0) {
    op_free(o);
    return 0;
  }
  int rc = dibba_containerd_container_stop(o->p->ctd, o->ns, o->id, grace, on_stopped, o);
  if (rc < 0)
    op_fail(o, rc, "stop_container: invalid arguments");
  return 0;
}

static void on_removed(dibba_containerd_t *ctd, int err, const char *msg, void *data) {
  op_t *o = data;
  if (err < 0) {
    op_fail(o, err, msg);
    return;
  }
  op_done(o, json_pack("{s:s, s:s}", "id", o->id, "status", "deleted"));
}

static int delete_run(dibba_task_ctx_t *t) {
  op_t *o = op_new(t);
  if (op_target(o, 1) < 0) {
    op_free(o);
    return 0;
  }
  int rc = dibba_containerd_container_delete(o->p->ctd, o->ns, o->id, on_removed, o);
  if (rc < 0)
    op_fail(o, rc, "delete_container: invalid arguments");
  return 0;
}

/* ---------------- container_logs: the last N lines, from at most LOG_TAIL_MAX bytes (on the pool) ---------------- */

static void work_tail(uv_work_t *w) {
  op_t *o = w->data;
  int fd = open(o->path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    o->err = -errno;
    return;
  }
  struct stat st;
  char *buf = NULL;
  size_t got = 0;
  if (fstat(fd, &st) < 0) {
    o->err = -errno;
    goto out;
  }
  off_t start = st.st_size > (off_t)LOG_TAIL_MAX ? st.st_size - (off_t)LOG_TAIL_MAX : 0;
  int forward = o->offset >= 0, rotated = 0;
  if (forward) {
    /* Follow mode: from the caller's position on; a file shorter than it was rotated: start over. */
    start = (off_t)o->offset;
    if (start > st.st_size) {
      start = 0;
      rotated = 1;
    }
  }
  size_t want = (size_t)(st.st_size - start);
  if (want > LOG_TAIL_MAX)
    want = LOG_TAIL_MAX;
  buf = dibba_xmalloc(want + 1);
  while (got < want) {
    ssize_t n = pread(fd, buf + got, want - got, start + (off_t)got);
    if (n <= 0)
      break;
    got += (size_t)n;
  }
  buf[got] = '\0';
  /* Complete lines only; a first line cut by the window is dropped. Keep the last n. */
  char *p = buf, *end = buf + got;
  if (start > 0 && !forward) {
    char *nl = memchr(p, '\n', got);
    p = nl ? nl + 1 : end;
  }
  json_t *lines = json_array();
  while (p < end) {
    char *nl = memchr(p, '\n', (size_t)(end - p));
    if (!nl)
      break; /* being written */
    const char *l = p;
    for (int field = 0; o->strip && field < 3 && l < nl; field++) {
      const char *sp = memchr(l, ' ', (size_t)(nl - l));
      l = sp ? sp + 1 : nl;
    }
    json_array_append_new(lines, json_stringn(l, (size_t)(nl - l)));
    if (!forward && json_array_size(lines) > o->n)
      json_array_remove(lines, 0);
    p = nl + 1;
  }
  /* next_offset: just past the last complete line, where a follower reads on. */
  o->result = json_pack("{s:o, s:I}", "lines", lines, "next_offset", (json_int_t)(start + (off_t)(p - buf)));
  if (rotated)
    json_object_set_new(o->result, "rotated", json_true());
out:
  free(buf);
  close(fd);
}

static void after_tail(uv_work_t *w, int status) {
  op_t *o = w->data;
  if (status < 0 || o->err < 0) {
    op_fail(o, status < 0 ? status : o->err, o->err == -ENOENT ? "container_logs: no log file" : "container_logs");
    return;
  }
  json_t *r = o->result;
  o->result = NULL;
  json_object_set_new(r, "id", json_string(o->id));
  op_done(o, r);
}

static int logs_run(dibba_task_ctx_t *t) {
  op_t *o = op_new(t);
  o->n = 100;
  if (op_target(o, 1) < 0 || arg_uint(t, t->args, "tail_lines", "tail_lines", &o->n) < 0) {
    op_free(o);
    return 0;
  }
  if (o->n > TAIL_LINES_MAX) {
    op_free(o);
    return bad_arg(t, "tail_lines", "at most 10000");
  }
  o->path = dibba_xasprintf("%s/%s/%s.log", o->p->log_dir, o->ns, o->id);
  o->work.data = o;
  int rc = uv_queue_work(t->loop, &o->work, work_tail, after_tail);
  if (rc < 0)
    op_fail(o, rc, "container_logs: queue work");
  return 0;
}

/* ---------------- exec ---------------- */

static void on_execd(dibba_containerd_t *ctd, int err, const char *msg, const dibba_exec_result_t *res, void *data) {
  op_t *o = data;
  o->t->ops->on_cancel(o->t, NULL, NULL);
  if (err < 0) {
    op_fail(o, err, msg);
    return;
  }
  op_done(o, json_pack("{s:s, s:i, s:s%, s:s%, s:b, s:b, s:b}", "id", o->id, "exit_code", (int)res->exit_status,
                       "stdout", res->out, res->out_len, "stderr", res->err, res->err_len, "timed_out", res->timed_out,
                       "stdout_truncated", res->out_truncated, "stderr_truncated", res->err_truncated));
}

static void exec_cancel(dibba_task_ctx_t *t, void *data) {
  op_t *o = data;
  dibba_containerd_exec_cancel(o->exec);
}

static int exec_run(dibba_task_ctx_t *t) {
  op_t *o = op_new(t);
  uint64_t timeout = 0;
  if (op_target(o, 1) < 0 || arg_strv(o, "command", 3, 0) < 0 ||
      arg_uint(t, t->args, "timeout_ms", "timeout_ms", &timeout) < 0) {
    op_free(o);
    return 0;
  }
  if (o->argc[3] == 0) {
    op_free(o);
    return bad_arg(t, "command", "required non-empty array of strings");
  }
  dibba_exec_opts_t xo = {.id = o->id,
                          .ns = o->ns,
                          .args = o->argv[3],
                          .n_args = o->argc[3],
                          .timeout_ms = timeout,
                          .state_dir = o->p->state_dir};
  int rc = dibba_containerd_exec(o->p->ctd, &xo, on_execd, o, &o->exec);
  if (rc < 0) {
    op_fail(o, rc, "exec: invalid process");
    return 0;
  }
  t->ops->on_cancel(t, exec_cancel, o);
  return 0;
}

/* ---------------- pod records in Redis ----------------
 *
 * <prefix>pod:<ns>/<name> hash: spec (the Pod JSON, no status), hash (of the spec without nodeName), host,
 * status (PodStatus JSON), created, updated (ms), task_id, deleting ("1" once a delete was asked for).
 * <prefix>pods and <prefix>pods:host:<host> are sets of "<ns>/<name>". Changes are published on
 * <prefix>pod:<ns>/<name>:ev as {"event": "status"|"deleted", ...}. dibba-api writes the record first; the
 * worker writes status, creates the record for a create_pod that came another way, and removes it when the pod
 * is deleted. The desired set of a worker is every record of its host that is not being deleted. */

/* KEYS: record. ARGV: status JSON, now, host, channel, event JSON. Only our own, existing record. */
static const char lua_status[] = "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end\n"
                                 "local h = redis.call('HGET', KEYS[1], 'host')\n"
                                 "if h and h ~= ARGV[3] then return 0 end\n"
                                 "redis.call('HSET', KEYS[1], 'status', ARGV[1], 'updated', ARGV[2])\n"
                                 "redis.call('PUBLISH', ARGV[4], ARGV[5])\n"
                                 "return 1\n";
/* KEYS: record, all set, host set. ARGV: member, spec, hash, host, now, task id. Only when there is none. */
static const char lua_ensure[] = "if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end\n"
                                 "redis.call('HSET', KEYS[1], 'spec', ARGV[2], 'hash', ARGV[3], 'host', ARGV[4],\n"
                                 "  'created', ARGV[5], 'updated', ARGV[5], 'task_id', ARGV[6])\n"
                                 "redis.call('SADD', KEYS[2], ARGV[1])\n"
                                 "redis.call('SADD', KEYS[3], ARGV[1])\n"
                                 "return 1\n";
/* KEYS: record, all set, host set. ARGV: member, host, channel. Not a record another host owns. */
static const char lua_forget[] = "local h = redis.call('HGET', KEYS[1], 'host')\n"
                                 "if h and h ~= ARGV[2] then return 0 end\n"
                                 "redis.call('DEL', KEYS[1])\n"
                                 "redis.call('SREM', KEYS[2], ARGV[1])\n"
                                 "redis.call('SREM', KEYS[3], ARGV[1])\n"
                                 "redis.call('PUBLISH', ARGV[3], '{\"event\":\"deleted\"}')\n"
                                 "return 1\n";
/* KEYS: host set. ARGV: prefix. [member, spec, deleting, ...] */
static const char lua_desired[] = "local out = {}\n"
                                  "for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do\n"
                                  "  local v = redis.call('HMGET', ARGV[1] .. 'pod:' .. m, 'spec', 'deleting')\n"
                                  "  out[#out + 1] = m\n"
                                  "  out[#out + 1] = v[1] or ''\n"
                                  "  out[#out + 1] = v[2] or ''\n"
                                  "end\n"
                                  "return out\n";

/* The record's hash: the normalized spec without nodeName (placement fills that in). */
static void spec_hash(const Dibba__V1__Pod *pod, char hash[17]) {
  Dibba__V1__Pod copy = *pod;
  Dibba__V1__PodSpec spec;
  if (pod->spec) {
    spec = *pod->spec;
    spec.node_name = (char *)"";
    copy.spec = &spec;
  }
  copy.status = NULL;
  free(dibba_pod_normalized(&copy, hash));
}

typedef struct rop_s {
  pods_t *p;
  dibba_task_ctx_t *t; /* the task that waits for this write, or NULL */
  Dibba__V1__Pod *pod; /* create_pod: the args, borrowed from t */
} rop_t;

static void redis_warn(pods_t *p, const char *what, int status) {
  char line[300];
  snprintf(line, sizeof line, "pods: redis %s: %s", what, dibba_redis_strerror(status));
  plog(p->ctx, DIBBA_PLUGIN_LOG_WARN, line);
}

static void on_status_written(dibba_redis_t *r, int status, redisReply *reply, void *data) {
  (void)r, (void)reply;
  if (status < 0)
    redis_warn(data, "status write", status);
}

static void status_write(pods_t *p, const char *ns, const char *name, const Dibba__V1__PodStatus *st) {
  if (!p->redis)
    return;
  char *key = dibba_xasprintf("%spod:%s/%s", p->prefix, ns, name), *chan = dibba_xasprintf("%s:ev", key);
  char now[24];
  json_t *sj = dibba_pbjson_from_message(&st->base, 0);
  char *stext = json_dumps(sj, JSON_COMPACT);
  json_t *ev = json_pack("{s:s, s:o, s:I}", "event", "status", "status", sj, "updated", (json_int_t)dibba_now_ms());
  char *etext = json_dumps(ev, JSON_COMPACT);
  json_decref(ev);
  snprintf(now, sizeof now, "%lld", (long long)dibba_now_ms());
  const char *argv[] = {"EVAL", lua_status, "1", key, stext, now, p->host, chan, etext};
  dibba_redis_cmd_opts_t o = {.flags = DIBBA_REDIS_QUEUE};
  if (dibba_redis_command_argv(p->redis, on_status_written, p, &o, 9, argv, NULL) < 0)
    redis_warn(p, "status write", UV_ENOTCONN);
  free(key);
  free(chan);
  free(stext);
  free(etext);
}

static void on_pod_status(dibba_pod_mgr_t *m, const char *ns, const char *name, const char *uid,
                          const Dibba__V1__PodStatus *st, void *data) {
  (void)m, (void)uid;
  status_write(data, ns, name, st);
}

/* Every pod in memory: after a reconcile, so a status write lost to a Redis outage is made good. */
static void status_write_all(pods_t *p) {
  Dibba__V1__PodList *l = NULL;
  if (!p->mgr || dibba_pod_list(p->mgr, NULL, NULL, &l) < 0)
    return;
  for (size_t i = 0; i < l->n_items; i++)
    if (l->items[i]->status)
      status_write(p, l->items[i]->metadata->namespace_, l->items[i]->metadata->name, l->items[i]->status);
  protobuf_c_message_free_unpacked(&l->base, NULL);
}

/* Run one of the three record scripts on a pod; cb gets rq. Returns 0 or a dibba_redis_command error. */
static int record_script(pods_t *p, const char *script, const char *ns, const char *name, const char *spec,
                         const char *hash, const char *task_id, dibba_redis_cb cb, rop_t *rq) {
  char *key = dibba_xasprintf("%spod:%s/%s", p->prefix, ns, name), *all = dibba_xasprintf("%spods", p->prefix);
  char *hset = dibba_xasprintf("%spods:host:%s", p->prefix, p->host), *member = dibba_xasprintf("%s/%s", ns, name);
  char *chan = dibba_xasprintf("%s:ev", key), now[24];
  snprintf(now, sizeof now, "%lld", (long long)dibba_now_ms());
  dibba_redis_cmd_opts_t o = {.flags = DIBBA_REDIS_QUEUE};
  int rc;
  if (script == lua_ensure) {
    const char *argv[] = {"EVAL", script, "3", key, all, hset, member, spec, hash, p->host, now, task_id};
    rc = dibba_redis_command_argv(p->redis, cb, rq, &o, 12, argv, NULL);
  } else {
    const char *argv[] = {"EVAL", script, "3", key, all, hset, member, p->host, chan};
    rc = dibba_redis_command_argv(p->redis, cb, rq, &o, 9, argv, NULL);
  }
  free(key);
  free(all);
  free(hset);
  free(member);
  free(chan);
  return rc;
}

static void on_forgot(dibba_redis_t *r, int status, redisReply *reply, void *data) {
  rop_t *rq = data;
  (void)r, (void)reply;
  if (status < 0)
    redis_warn(rq->p, "pod record removal", status);
  if (rq->t)
    dibba_task_complete(rq->t, json_pack("{s:s}", "status", "deleted"));
  free(rq);
}

/* Remove the record of a deleted pod; t (may be NULL) is completed once that is done (or failed to be). */
static void record_forget(pods_t *p, const char *ns, const char *name, dibba_task_ctx_t *t) {
  rop_t *rq = dibba_xcalloc(1, sizeof *rq);
  rq->p = p;
  rq->t = t;
  if (!p->redis || record_script(p, lua_forget, ns, name, NULL, NULL, NULL, on_forgot, rq) < 0)
    on_forgot(NULL, p->redis ? UV_ENOTCONN : 0, NULL, rq);
}

/* ---- the desired set: at start, on containerd READY, after a Redis reconnect, every desired_ms and on a
 * reconcile_pods task ---- */

/* A reconcile_pods task: waits on pods_t.rwait for the next run to start, then on that run's list. */
typedef struct rwait_s {
  struct rwait_s *next;
  dibba_task_ctx_t *t;
} rwait_t;

typedef struct desired_s {
  pods_t *p;
  uint64_t since;
  char **gone; /* "<ns>/<name>" of records being deleted: removed once the reconcile has removed their pods */
  size_t n_gone;
  size_t n_desired; /* pods in the desired set */
  rwait_t *tasks;   /* reconcile_pods tasks that this run answers */
} desired_t;

static void desired_run(pods_t *p);

/* End every task on *list: SUCCESS with the run's summary (d, err 0) or FAILURE with msg. */
static void rwait_end(pods_t *p, rwait_t **list, const desired_t *d, int err, const char *msg) {
  while (*list) {
    rwait_t *w = *list;
    *list = w->next;
    dibba_task_ctx_t *t = w->t;
    free(w);
    t->ops->on_cancel(t, NULL, NULL);
    if (err < 0) {
      dibba_task_fail(t, err, NULL, msg);
      continue;
    }
    Dibba__V1__PodList *l = NULL;
    json_int_t pods = -1;
    if (p->mgr && dibba_pod_list(p->mgr, NULL, NULL, &l) == 0) {
      pods = (json_int_t)l->n_items;
      protobuf_c_message_free_unpacked(&l->base, NULL);
    }
    dibba_task_complete(t, json_pack("{s:b,s:s,s:I,s:I,s:I}", "reconciled", 1, "host", p->host, "desired",
                                     (json_int_t)d->n_desired, "deleting", (json_int_t)d->n_gone, "pods", pods));
  }
}

static void desired_free(desired_t *d) {
  for (size_t i = 0; i < d->n_gone; i++)
    free(d->gone[i]);
  free(d->gone);
  free(d);
}

static void desired_end(pods_t *p) {
  p->desired_busy = 0;
  if (p->desired_again) {
    p->desired_again = 0;
    desired_run(p);
  }
}

static void on_desired_reconciled(dibba_pod_mgr_t *m, int err, const char *msg, void *data) {
  desired_t *d = data;
  pods_t *p = d->p;
  (void)m;
  if (err < 0) {
    char line[400];
    snprintf(line, sizeof line, "pods: reconcile with the desired set failed: %s", msg);
    plog(p->ctx, DIBBA_PLUGIN_LOG_WARN, line);
  } else if (p->mgr) {
    for (size_t i = 0; i < d->n_gone; i++) {
      char *slash = strchr(d->gone[i], '/');
      *slash = '\0';
      record_forget(p, d->gone[i], slash + 1, NULL);
      *slash = '/';
    }
    status_write_all(p);
  }
  p->desired = NULL;
  rwait_end(p, &d->tasks, d, err < 0 ? err : p->mgr ? 0 : UV_ECANCELED, err < 0 ? msg : "pods: closing");
  desired_free(d);
  desired_end(p);
}

static void on_desired_read(dibba_redis_t *r, int status, redisReply *reply, void *data) {
  desired_t *d = data;
  pods_t *p = d->p;
  (void)r;
  Dibba__V1__Pod **pods = NULL;
  size_t n = 0, bad = 0;
  int fail = 0;
  char why[200] = "";
  if (status < 0 || !reply || reply->type != REDIS_REPLY_ARRAY || !p->mgr) {
    if (status < 0)
      redis_warn(p, "desired set read", status);
    fail = status < 0 ? status : !p->mgr ? UV_ECANCELED : DIBBA_EPROTO;
    snprintf(why, sizeof why, "pods: desired set read: %s",
             status < 0 ? dibba_redis_strerror(status)
             : !p->mgr  ? "closing"
                        : "unexpected reply");
    goto out;
  }
  pods = dibba_xcalloc(reply->elements / 3 + 1, sizeof *pods);
  d->gone = dibba_xcalloc(reply->elements / 3 + 1, sizeof *d->gone);
  for (size_t i = 0; i + 2 < reply->elements; i += 3) {
    const char *member, *spec, *del;
    size_t ml, sl, dl;
    if (dibba_redis_reply_str(reply->element[i], &member, &ml) < 0 ||
        dibba_redis_reply_str(reply->element[i + 1], &spec, &sl) < 0 ||
        dibba_redis_reply_str(reply->element[i + 2], &del, &dl) < 0 || !memchr(member, '/', ml)) {
      bad++;
      continue;
    }
    if (dl == 1 && del[0] == '1') {
      d->gone[d->n_gone++] = dibba_xstrndup(member, ml);
      continue;
    }
    if (sl == 0)
      continue; /* a set member without a record: nothing is desired */
    ProtobufCMessage *msg = NULL;
    char err[200];
    if (dibba_pbjson_parse(spec, sl, &dibba__v1__pod__descriptor, NULL, &msg, NULL) < 0 ||
        dibba_pod_validate((Dibba__V1__Pod *)msg, err, sizeof err) < 0) {
      dibba_pbjson_message_free(msg);
      bad++;
      continue;
    }
    pods[n++] = (Dibba__V1__Pod *)msg;
  }
  if (bad) {
    /* Never remove pods because of a record this worker cannot read: skip this round. */
    char line[200];
    snprintf(line, sizeof line, "pods: %zu unreadable pod records for host %s; reconcile skipped", bad, p->host);
    plog(p->ctx, DIBBA_PLUGIN_LOG_ERROR, line);
    fail = -EINVAL;
    snprintf(why, sizeof why, "%s", line);
    goto out;
  }
  d->n_desired = n;
  if ((fail = dibba_pod_reconcile_since(p->mgr, (const Dibba__V1__Pod *const *)pods, n, d->since, on_desired_reconciled,
                                        d)) == 0)
    d = NULL;
  else
    snprintf(why, sizeof why, "pods: reconcile: %s", dibba_strerror(fail));
out:
  for (size_t i = 0; i < n; i++)
    dibba_pbjson_message_free(&pods[i]->base);
  free(pods);
  if (d) {
    p->desired = NULL;
    rwait_end(p, &d->tasks, d, fail, why);
    desired_free(d);
    desired_end(p);
  }
}

static void desired_run(pods_t *p) {
  if (!p->mgr || !p->redis || !p->ctd_ready || !dibba_redis_is_ready(p->redis)) {
    rwait_end(p, &p->rwait, NULL, !p->mgr || !p->redis ? -ENOTSUP : UV_EAGAIN,
              !p->mgr         ? "pods: the plugin has no cni configuration"
              : !p->redis     ? "pods: the plugin has no redis configuration"
              : !p->ctd_ready ? "pods: containerd is not ready"
                              : "pods: redis is not connected");
    return;
  }
  if (p->desired_busy) {
    p->desired_again = 1; /* the waiting tasks go with the next run: the one in flight may have read before them */
    return;
  }
  desired_t *d = dibba_xcalloc(1, sizeof *d);
  d->p = p;
  d->since = dibba_pod_mgr_generation(p->mgr); /* before the read: what changes after it is not in the set */
  d->tasks = p->rwait;
  p->rwait = NULL;
  char *hset = dibba_xasprintf("%spods:host:%s", p->prefix, p->host);
  const char *argv[] = {"EVAL", lua_desired, "1", hset, p->prefix};
  p->desired_busy = 1;
  p->desired = d;
  int rc = dibba_redis_command_argv(p->redis, on_desired_read, d, NULL, 5, argv, NULL);
  if (rc < 0) {
    p->desired_busy = 0;
    p->desired = NULL;
    rwait_end(p, &d->tasks, d, rc, "pods: desired set read: redis command failed");
    desired_free(d);
  }
  free(hset);
}

static void on_desired_timer(uv_timer_t *t) { desired_run(t->data); }

/* Unlink t from list; 1 if it was there. */
static int rwait_remove(rwait_t **list, dibba_task_ctx_t *t) {
  for (; *list; list = &(*list)->next)
    if ((*list)->t == t) {
      rwait_t *w = *list;
      *list = w->next;
      free(w);
      return 1;
    }
  return 0;
}

static void reconcile_cancel(dibba_task_ctx_t *t, void *data) {
  pods_t *p = data;
  if (rwait_remove(&p->rwait, t) || (p->desired && rwait_remove(&p->desired->tasks, t)))
    dibba_task_fail(t, UV_ECANCELED, NULL, "reconcile_pods: cancelled (the reconcile itself goes on)");
}

/* reconcile_pods (no args): run the desired-set reconcile now (or right after the one in flight) and report
 * {reconciled, host, desired, deleting, pods}. */
static int reconcile_pods_run(dibba_task_ctx_t *t) {
  pods_t *p = pods_of(t);
  if (json_object_size(t->args) > 0) {
    dibba_task_fail(t, -EINVAL, "EINVAL", "reconcile_pods takes no arguments");
    return 0;
  }
  rwait_t *w = dibba_xcalloc(1, sizeof *w);
  w->t = t;
  w->next = p->rwait;
  p->rwait = w;
  t->ops->on_cancel(t, reconcile_cancel, p);
  desired_run(p); /* may end t at once */
  return 0;
}

static void on_redis_connect(dibba_redis_t *r, int status, void *data) {
  (void)r;
  if (status == 0)
    desired_run(data); /* writes may have been lost while it was away */
}

/* ---------------- pods (lib/pod) ---------------- */

static int need_mgr(dibba_task_ctx_t *t) {
  if (pods_of(t)->mgr)
    return 0;
  dibba_task_fail(t, -ENOTSUP, "ENOTSUP", "pods: the plugin has no cni configuration");
  return -1;
}

static void on_pod_created(dibba_pod_mgr_t *m, int err, const char *msg, const Dibba__V1__PodStatus *st, void *data) {
  dibba_task_ctx_t *t = data;
  if (err < 0)
    dibba_task_fail(t, err, err == -EEXIST ? "EEXIST" : NULL, msg);
  else
    t->ops->complete_msg(t, &st->base);
}

static void create_pod_start(dibba_task_ctx_t *t) {
  char err[300] = "";
  if (!pods_of(t)->mgr) {
    dibba_task_fail(t, UV_ECANCELED, NULL, "pods: closing");
    return;
  }
  const Dibba__V1__Pod *pod = (const Dibba__V1__Pod *)t->args_msg;
  int rc = dibba_pod_create(pods_of(t)->mgr, pod, on_pod_created, t, err, sizeof err);
  if (rc < 0)
    dibba_task_fail(t, rc, rc == -EEXIST ? "EEXIST" : rc == -EINVAL ? "EINVAL" : NULL, err[0] ? err : NULL);
}

static void on_record_ensured(dibba_redis_t *r, int status, redisReply *reply, void *data) {
  rop_t *rq = data;
  (void)r, (void)reply;
  if (status < 0)
    redis_warn(rq->p, "pod record", status); /* the pod still runs; the next status write has no record */
  dibba_task_ctx_t *t = rq->t;
  free(rq);
  create_pod_start(t);
}

/* The record goes first (when the API did not write it, e.g. a create_pod from POST /v1/tasks), so a
 * reconcile with the desired set keeps the pod. */
static int create_pod_run(dibba_task_ctx_t *t) {
  char err[300] = "", hash[17];
  pods_t *p = pods_of(t);
  if (need_mgr(t) < 0)
    return 0;
  const Dibba__V1__Pod *pod = (const Dibba__V1__Pod *)t->args_msg;
  if (!pod || dibba_pod_validate(pod, err, sizeof err) < 0) {
    dibba_task_fail(t, -EINVAL, "EINVAL", pod ? err : "args: a dibba.v1.Pod is required");
    return 0;
  }
  if (!p->redis) {
    create_pod_start(t);
    return 0;
  }
  Dibba__V1__Pod view = *pod;
  Dibba__V1__ObjectMeta md = *pod->metadata;
  Dibba__V1__PodSpec spec = *pod->spec;
  md.namespace_ = (char *)(md.namespace_ && *md.namespace_ ? md.namespace_ : "default");
  spec.node_name = p->host;
  view.metadata = &md;
  view.spec = &spec;
  view.status = NULL;
  spec_hash(&view, hash);
  char *text = dibba_pbjson_dumps(&view.base, 0);
  rop_t *rq = dibba_xcalloc(1, sizeof *rq);
  rq->p = p;
  rq->t = t;
  if (record_script(p, lua_ensure, md.namespace_, md.name, text, hash, t->id, on_record_ensured, rq) < 0)
    on_record_ensured(NULL, UV_ENOTCONN, NULL, rq);
  free(text);
  return 0;
}

static void on_pod_deleted(dibba_pod_mgr_t *m, int err, const char *msg, void *data) {
  dibba_task_ctx_t *t = data;
  const char *ns = NULL, *name = NULL;
  (void)m;
  if (err < 0) {
    dibba_task_fail(t, err, NULL, msg);
    return;
  }
  /* The record goes before the task succeeds: whoever sees SUCCESS sees no record. */
  (void)arg_str(t, "namespace", 0, &ns);
  (void)arg_str(t, "name", 1, &name);
  record_forget(pods_of(t), ns ? ns : "default", name, t);
}

/* namespace (optional, "default") and name (required). Returns 0, or -1 when the task has been failed. */
static int pod_ref(dibba_task_ctx_t *t, const char **ns, const char **name) {
  if (need_mgr(t) < 0 || arg_str(t, "namespace", 0, ns) < 0 || arg_str(t, "name", 1, name) < 0)
    return -1;
  if (!*ns)
    *ns = "default";
  return 0;
}

static int delete_pod_run(dibba_task_ctx_t *t) {
  const char *ns, *name;
  if (pod_ref(t, &ns, &name) < 0)
    return 0;
  int rc = dibba_pod_delete(pods_of(t)->mgr, ns, name, on_pod_deleted, t);
  if (rc < 0)
    dibba_task_fail(t, rc, NULL, "delete_pod");
  return 0;
}

static int get_pod_run(dibba_task_ctx_t *t) {
  const char *ns, *name;
  Dibba__V1__Pod *pod = NULL;
  if (pod_ref(t, &ns, &name) < 0)
    return 0;
  int rc = dibba_pod_get(pods_of(t)->mgr, ns, name, &pod);
  if (rc < 0) {
    dibba_task_fail(t, rc, "ENOENT", "no such pod");
    return 0;
  }
  json_t *j = dibba_pbjson_from_message(&pod->base, 0);
  protobuf_c_message_free_unpacked(&pod->base, NULL);
  dibba_task_complete(t, j);
  return 0;
}

static int list_pods_run(dibba_task_ctx_t *t) {
  const char *ns, *sel;
  Dibba__V1__PodList *l = NULL;
  if (need_mgr(t) < 0 || arg_str(t, "namespace", 0, &ns) < 0 || arg_str(t, "labelSelector", 0, &sel) < 0)
    return 0;
  if (dibba_pod_list(pods_of(t)->mgr, ns, sel, &l) < 0)
    return bad_arg(t, "labelSelector", "must be k=v, k!=v, k or !k terms separated by commas");
  json_t *j = dibba_pbjson_from_message(&l->base, DIBBA_PBJSON_EMIT_DEFAULTS & 0);
  if (!json_object_get(j, "items"))
    json_object_set_new(j, "items", json_array());
  protobuf_c_message_free_unpacked(&l->base, NULL);
  dibba_task_complete(t, j);
  return 0;
}

/* The pod's container named by args.container (or the first): o->id, o->path (its log). */
static int pod_target(op_t *o) {
  const char *ns, *name, *ctr;
  if (pod_ref(o->t, &ns, &name) < 0 || arg_str(o->t, "container", 0, &ctr) < 0)
    return -1;
  if (dibba_pod_container(o->p->mgr, ns, name, ctr, &o->id, &o->path) < 0) {
    dibba_task_fail(o->t, -ENOENT, "ENOENT", ctr ? "no such pod or container" : "no such pod");
    return -1;
  }
  o->ns = dibba_xstrdup(o->p->ns);
  return 0;
}

static int pod_logs_run(dibba_task_ctx_t *t) {
  op_t *o = op_new(t);
  uint64_t off = 0;
  int has_off = 0;
  o->n = 100;
  o->strip = !json_is_true(json_object_get(t->args, "timestamps"));
  if (pod_target(o) < 0 || arg_uint(t, t->args, "tailLines", "tailLines", &o->n) < 0 ||
      (has_off = arg_uint(t, t->args, "offset", "offset", &off)) < 0) {
    op_free(o);
    return 0;
  }
  o->offset = has_off ? (int64_t)off : -1;
  if (o->n > TAIL_LINES_MAX) {
    op_free(o);
    return bad_arg(t, "tailLines", "at most 10000");
  }
  o->work.data = o;
  int rc = uv_queue_work(t->loop, &o->work, work_tail, after_tail);
  if (rc < 0)
    op_fail(o, rc, "pod_logs: queue work");
  return 0;
}

static int pod_exec_run(dibba_task_ctx_t *t) {
  op_t *o = op_new(t);
  uint64_t timeout = 0;
  if (pod_target(o) < 0 || arg_strv(o, "command", 3, 0) < 0 ||
      arg_uint(t, t->args, "timeout_ms", "timeout_ms", &timeout) < 0) {
    op_free(o);
    return 0;
  }
  if (o->argc[3] == 0) {
    op_free(o);
    return bad_arg(t, "command", "required non-empty array of strings");
  }
  dibba_exec_opts_t xo = {.id = o->id,
                          .ns = o->ns,
                          .args = o->argv[3],
                          .n_args = o->argc[3],
                          .timeout_ms = timeout,
                          .state_dir = o->p->state_dir};
  int rc = dibba_containerd_exec(o->p->ctd, &xo, on_execd, o, &o->exec);
  if (rc < 0) {
    op_fail(o, rc, "pod_exec: invalid process");
    return 0;
  }
  t->ops->on_cancel(t, exec_cancel, o);
  return 0;
}

/* ---------------- plugin ---------------- */

static const char *cfg_str(const json_t *cfg, const char *section, const char *key, const char *def) {
  const json_t *obj = section ? json_object_get(cfg, section) : cfg;
  const char *v = json_string_value(json_object_get(obj, key));
  return v && *v ? v : def;
}

static void plog(dibba_plugin_ctx_t *ctx, int level, const char *msg) { ctx->ops->log(ctx, level, msg); }

static void on_ctd_state(dibba_containerd_t *ctd, dibba_grpc_state_t state, int err, void *data) {
  pods_t *p = data;
  (void)ctd, (void)err;
  p->ctd_ready = state == DIBBA_GRPC_READY;
  if (p->mgr)
    dibba_pod_mgr_containerd_state(p->mgr, state); /* reconciles with the pods in memory first ... */
  if (p->ctd_ready)
    desired_run(p); /* ... then with the desired set in Redis (queued behind it) */
}

static uint64_t cfg_uint(const json_t *cfg, const char *section, const char *key, uint64_t def) {
  json_int_t v = json_integer_value(json_object_get(json_object_get(cfg, section), key));
  return v > 0 ? (uint64_t)v : def;
}

/* The pod manager, when the config has a "cni" section: cni.{path, conf_dir, net_name, ifname, timeout_ms},
 * worker.{state_dir, netns_dir}, pod.{pause_image, dir, backoff_base_ms, backoff_max_ms, reconcile_ms,
 * keep_logs, desired_reconcile_ms}. With a redis section too (dibba-worker adds the daemon's): pod records,
 * status and the desired set in Redis (redis.{url, prefix, ...}). */
static int pods_mgr_init(pods_t *p, const json_t *cfg) {
  char line[512];
  if (!json_is_object(json_object_get(cfg, "cni")))
    return 0;
  const char *state_dir = cfg_str(cfg, "worker", "state_dir", "/var/lib/dibba");
  dibba_cni_opts_t co = {.path = cfg_str(cfg, "cni", "path", "/opt/cni/bin"),
                         .conf_dir = cfg_str(cfg, "cni", "conf_dir", "/etc/cni/net.d"),
                         .net_name = cfg_str(cfg, "cni", "net_name", "calico"),
                         .ifname = cfg_str(cfg, "cni", "ifname", "eth0"),
                         .state_dir = state_dir,
                         .timeout_ms = cfg_uint(cfg, "cni", "timeout_ms", 0)};
  int rc = dibba_cni_new(p->ctx->loop, &co, &p->cni);
  if (rc < 0) {
    snprintf(line, sizeof line, "pods: CNI runner: %s", dibba_strerror(rc));
    plog(p->ctx, DIBBA_PLUGIN_LOG_ERROR, line);
    return rc;
  }
  char *pod_dir = dibba_xasprintf("%s/pods", state_dir);
  dibba_pod_mgr_opts_t mo = {.ctd = p->ctd,
                             .cni = p->cni,
                             .ns = p->ns,
                             .netns_dir = cfg_str(cfg, "worker", "netns_dir", DIBBA_POD_DEFAULT_NETNS_DIR),
                             .cni_state_dir = state_dir,
                             .pod_dir = cfg_str(cfg, "pod", "dir", pod_dir),
                             .log_dir = p->log_dir,
                             .logger = p->logger,
                             .pause_image = cfg_str(cfg, "pod", "pause_image", DIBBA_POD_DEFAULT_PAUSE_IMAGE),
                             .backoff_base_ms = cfg_uint(cfg, "pod", "backoff_base_ms", 0),
                             .backoff_max_ms = cfg_uint(cfg, "pod", "backoff_max_ms", 0),
                             .reconcile_ms = cfg_uint(cfg, "pod", "reconcile_ms", 0),
                             .keep_logs = json_is_true(json_object_get(json_object_get(cfg, "pod"), "keep_logs")),
                             .status_cb = on_pod_status,
                             .data = p};
  rc = dibba_pod_mgr_new(p->ctx->loop, &mo, &p->mgr);
  free(pod_dir);
  if (rc < 0) {
    plog(p->ctx, DIBBA_PLUGIN_LOG_ERROR, "pods: pod manager: state_dir and pod.dir must be absolute");
    dibba_cni_free(p->cni);
    p->cni = NULL;
    return rc;
  }
  if (!json_is_object(json_object_get(cfg, "redis")))
    return 0;
  /* The plugin's config has the daemon's redis section: read it as a config tree of its own. */
  dibba_config_t rc_cfg = {.root = (json_t *)cfg, .path = NULL};
  dibba_redis_options_t ro;
  char err[256];
  if ((rc = dibba_redis_options_from_config(&rc_cfg, &ro, err, sizeof err)) < 0) {
    snprintf(line, sizeof line, "pods: redis: %s", err);
    plog(p->ctx, DIBBA_PLUGIN_LOG_ERROR, line);
    return rc;
  }
  p->prefix = dibba_xstrdup(cfg_str(cfg, "redis", "prefix", "dibba:"));
  p->host = dibba_xstrdup(p->ctx->hostname);
  p->desired_ms = cfg_uint(cfg, "pod", "desired_reconcile_ms", 30000);
  ro.name = "pods";
  ro.on_connect = on_redis_connect;
  ro.data = p;
  if ((rc = dibba_redis_new(p->ctx->loop, &ro, &p->redis, err, sizeof err)) < 0) {
    snprintf(line, sizeof line, "pods: redis: %s", err);
    plog(p->ctx, DIBBA_PLUGIN_LOG_ERROR, line);
    return rc;
  }
  uv_timer_init(p->ctx->loop, &p->desired_timer);
  p->desired_timer.data = p;
  p->timer_open = 1;
  uv_timer_start(&p->desired_timer, on_desired_timer, p->desired_ms, p->desired_ms);
  return 0;
}

static void pods_closed(pods_t *p) {
  if (--p->closes > 0)
    return;
  free(p->ns);
  free(p->logger);
  free(p->log_dir);
  free(p->state_dir);
  free(p->prefix);
  free(p->host);
  free(p);
}

static void on_ctd_closed(dibba_containerd_t *ctd, void *data) {
  (void)ctd;
  pods_closed(data);
}

static void on_redis_closed(dibba_redis_t *r, void *data) {
  (void)r;
  pods_closed(data);
}

static void on_timer_closed(uv_handle_t *h) { pods_closed(h->data); }

/* Close everything; p is freed when the containerd client, the Redis client and the timer have closed (their
 * callbacks point at p). The module stays mapped (-z nodelete) for those later loop turns. Pods keep running:
 * the next manager re-adopts them. */
static void pods_release(pods_t *p) {
  rwait_end(p, &p->rwait, NULL, UV_ECANCELED, "pods: closing");
  dibba_pod_mgr_close(p->mgr, NULL, NULL);
  p->mgr = NULL;
  dibba_cni_free(p->cni);
  p->cni = NULL;
  p->closes = 1;
  if (p->timer_open) {
    p->timer_open = 0;
    p->closes++;
    uv_close((uv_handle_t *)&p->desired_timer, on_timer_closed);
  }
  if (p->redis) {
    dibba_redis_t *r = p->redis;
    p->redis = NULL;
    p->closes++;
    if (dibba_redis_close(r, on_redis_closed) < 0)
      p->closes--;
  }
  dibba_containerd_close(p->ctd, on_ctd_closed, p);
}

static int pods_init(dibba_plugin_ctx_t *ctx) {
  static const dibba_task_handler_t handlers[] = {
      {.name = "import_image", .run = import_run},
      {.name = "pull_image", .run = pull_run},
      {.name = "list_images", .run = list_run},
      {.name = "run_container", .run = run_run},
      {.name = "stop_container", .run = stop_run},
      {.name = "delete_container", .run = delete_run},
      {.name = "container_logs", .run = logs_run},
      {.name = "exec", .run = exec_run},
      {.name = "create_pod", .args_type = "dibba.v1.Pod", .run = create_pod_run, .timeout_ms = 10 * 60 * 1000},
      {.name = "delete_pod", .run = delete_pod_run, .timeout_ms = 10 * 60 * 1000},
      {.name = "get_pod", .run = get_pod_run},
      {.name = "list_pods", .run = list_pods_run},
      {.name = "pod_logs", .run = pod_logs_run},
      {.name = "pod_exec", .run = pod_exec_run},
      {.name = "reconcile_pods", .run = reconcile_pods_run, .timeout_ms = 10 * 60 * 1000},
  };
  const json_t *cfg = ctx->config;
  char line[512];
  pods_t *p = dibba_xcalloc(1, sizeof *p);
  p->ctx = ctx;
  const char *sock = cfg_str(cfg, "containerd", "socket", "/run/containerd/containerd.sock");
  p->ns = dibba_xstrdup(cfg_str(cfg, "containerd", "namespace", "dibba"));
  json_int_t tmo = json_integer_value(json_object_get(json_object_get(cfg, "containerd"), "timeout_ms"));
  p->logger = dibba_xstrdup(cfg_str(cfg, NULL, "logger", PODS_DEFAULT_LOGGER));
  p->log_dir = dibba_xstrdup(cfg_str(cfg, NULL, "log_dir", "/var/log/dibba/containers"));
  p->state_dir = dibba_xstrdup(cfg_str(cfg, NULL, "state_dir", "/run/dibba/pods"));
  dibba_containerd_opts_t o = {.socket = sock,
                               .ns = p->ns,
                               .snapshotter = cfg_str(cfg, "containerd", "snapshotter", NULL),
                               .timeout_ms = tmo > 0 ? (uint64_t)tmo : 0,
                               .state_cb = on_ctd_state,
                               .data = p};
  int rc = p->logger[0] == '/' && p->log_dir[0] == '/' && p->state_dir[0] == '/' ? 0 : -EINVAL;
  if (rc < 0) {
    plog(ctx, DIBBA_PLUGIN_LOG_ERROR, "pods: logger, log_dir and state_dir must be absolute paths");
    goto fail;
  }
  if ((rc = dibba_containerd_new(ctx->loop, &o, &p->ctd)) < 0) {
    snprintf(line, sizeof line, "pods: containerd client for %s: %s", sock, dibba_strerror(rc));
    plog(ctx, DIBBA_PLUGIN_LOG_ERROR, line);
    goto fail;
  }
  if ((rc = pods_mgr_init(p, cfg)) < 0)
    goto fail_client;
  for (size_t i = 0; i < sizeof handlers / sizeof handlers[0]; i++) {
    dibba_task_handler_t h = handlers[i];
    h.data = p;
    if ((rc = ctx->ops->register_task(ctx, &h)) < 0)
      goto fail_client;
  }
  snprintf(line, sizeof line, "pods: containerd %s, namespace %s, logs in %s", sock, p->ns, p->log_dir);
  plog(ctx, DIBBA_PLUGIN_LOG_INFO, line);
  ctx->data = p;
  return 0;
fail_client:
  pods_release(p);
  return rc;
fail:
  free(p->ns);
  free(p->logger);
  free(p->log_dir);
  free(p->state_dir);
  free(p);
  return rc;
}

static void pods_fini(dibba_plugin_ctx_t *ctx) {
  pods_t *p = ctx->data;
  if (!p)
    return;
  ctx->data = NULL;
  pods_release(p);
}

static const dibba_plugin_t pods_plugin = {
    .abi_version = DIBBA_PLUGIN_ABI_VERSION, .name = "pods", .version = "0.1", .init = pods_init, .fini = pods_fini};

DIBBA_PLUGIN_EXPORT const dibba_plugin_t *dibba_plugin_entry(void);
DIBBA_PLUGIN_EXPORT const dibba_plugin_t *dibba_plugin_entry(void) { return &pods_plugin; }
