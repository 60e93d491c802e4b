/* SPDX-License-Identifier: Apache-2.0 */
/* dibbactl get and describe: nodes, tasks, pods, schedules and users as tables, names, JSON or describe views. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dibba/alloc.h"
#include "ctl.h"

#define NODE_DETAILS_MAX 500 /* per-node GETs for the table; beyond, only the list's own columns */

typedef enum { RES_NODE = 1, RES_TASK, RES_POD, RES_SCHEDULE, RES_USER } res_t;

static res_t resource(const char *s) {
  static const struct {
    const char *name;
    res_t r;
  } names[] = {{"node", RES_NODE},          {"nodes", RES_NODE}, {"no", RES_NODE},
               {"task", RES_TASK},          {"tasks", RES_TASK}, {"pod", RES_POD},
               {"pods", RES_POD},           {"po", RES_POD},     {"schedule", RES_SCHEDULE},
               {"schedules", RES_SCHEDULE}, {"user", RES_USER},  {"users", RES_USER}};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (strcmp(s, names[i].name) == 0)
      return names[i].r;
  return 0;
}

/* A number, or a numeric string (proto3 JSON writes 64-bit integers as strings). */
static int num(const json_t *v, double *out) {
  if (json_is_number(v)) {
    *out = json_number_value(v);
    return 0;
  }
  if (json_is_string(v) && json_string_length(v) > 0) {
    char *end;
    *out = strtod(json_string_value(v), &end);
    return *end ? -1 : 0;
  }
  return -1;
}

/* The array of items in a list answer: a bare array, or obj[key], or obj.items. Borrowed. */
static json_t *items_of(json_t *resp, const char *key) {
  if (json_is_array(resp))
    return resp;
  json_t *a = ctl_jget(resp, key, "items", NULL);
  return json_is_array(a) ? a : NULL;
}

static int shape_error(const char *what) {
  return ctl_fail(CTL_EFAIL, "%s: the server's answer does not have the expected shape", what);
}

/* ---- nodes ---- */

static void node_row(ctl_table_t *t, const json_t *n, const json_t *detail, int wide) {
  char buf[64];
  const json_t *d = detail ? detail : n;
  const json_t *info = json_object_get(d, "info"), *usage = json_object_get(d, "usage");
  double v;
  ctl_table_cell(t, json_string_value(json_object_get(n, "hostname")));
  ctl_table_cell(t, json_is_true(json_object_get(d, "online")) ? "online" : "offline");
  if (num(ctl_jget(info, "logicalCpus", "logical_cpus", NULL), &v) == 0)
    ctl_table_cellf(t, "%.0f", v);
  else
    ctl_table_cell(t, "-");
  if (num(ctl_jget(info, "memoryTotalBytes", "memory_total_bytes", NULL), &v) == 0) {
    ctl_fmt_bytes(v, buf, sizeof buf);
    ctl_table_cell(t, buf);
  } else
    ctl_table_cell(t, "-");
  if (num(ctl_jget(usage, "load1", NULL), &v) == 0)
    ctl_table_cellf(t, "%.2f", v);
  else
    ctl_table_cell(t, "-");
  ctl_fmt_age(ctl_time_ms(ctl_jget(d, "lastHeartbeatMs", "last_heartbeat_ms", NULL)), buf, sizeof buf);
  ctl_table_cell(t, buf);
  if (wide) {
    ctl_table_cell(t, json_string_value(ctl_jget(d, "workerVersion", "worker_version", NULL)));
    ctl_table_cell(t, ctl_jstr(json_object_get(d, "roles"), buf, sizeof buf));
    if (num(ctl_jget(usage, "memoryUsedBytes", "memory_used_bytes", NULL), &v) == 0) {
      ctl_fmt_bytes(v, buf, sizeof buf);
      ctl_table_cell(t, buf);
    } else
      ctl_table_cell(t, "-");
    ctl_table_cell(t, json_string_value(ctl_jget(info, "os", NULL)));
    ctl_table_cell(t, json_string_value(ctl_jget(info, "kernelRelease", "kernel_release", NULL)));
  }
  ctl_table_row(t);
}

static const char *const node_cols[] = {"NAME",    "STATUS", "CPUS",     "MEMORY", "LOAD",   "LAST-HEARTBEAT",
                                        "VERSION", "ROLES",  "MEM-USED", "OS",     "KERNEL", NULL};

static ctl_table_t *table_for(const char *const *cols, size_t narrow, int wide) {
  const char *h[16];
  size_t n = 0;
  for (; cols[n] && n < 15 && (wide || n < narrow); n++)
    h[n] = cols[n];
  h[n] = NULL;
  return ctl_table_new(h);
}

static char *node_path(const char *host) {
  char *e = ctl_esc(host);
  char *p = dibba_xasprintf("/v1/nodes/%s", e);
  free(e);
  return p;
}

static int get_nodes(ctl_t *c, const char *name) {
  json_t *resp = NULL;
  int rc;
  int wide = c->output == CTL_OUT_WIDE;
  if (name) {
    char *path = node_path(name);
    rc = ctl_call(c, "GET", path, NULL, "get node", &resp);
    free(path);
    if (rc != 0)
      return rc;
    if (c->output == CTL_OUT_JSON)
      ctl_print_json(resp);
    else if (c->output == CTL_OUT_NAME)
      printf("%s\n", name);
    else {
      ctl_table_t *t = table_for(node_cols, 6, wide);
      node_row(t, resp, resp, wide);
      ctl_table_print(t);
    }
    json_decref(resp);
    return 0;
  }
  if ((rc = ctl_call(c, "GET", "/v1/nodes", NULL, "get nodes", &resp)) != 0)
    return rc;
  json_t *items = items_of(resp, "nodes");
  if (items == NULL) {
    json_decref(resp);
    return shape_error("get nodes");
  }
  size_t i;
  json_t *n;
  if (c->output == CTL_OUT_JSON) {
    ctl_print_json(resp);
  } else if (c->output == CTL_OUT_NAME) {
    json_array_foreach(items, i, n) {
      const char *h = json_string_value(json_object_get(n, "hostname"));
      printf("%s\n", h ? h : "");
    }
  } else {
    ctl_table_t *t = table_for(node_cols, 6, wide);
    json_array_foreach(items, i, n) {
      const char *host = json_string_value(json_object_get(n, "hostname"));
      json_t *detail = NULL;
      if (host && i < NODE_DETAILS_MAX && json_is_true(json_object_get(n, "online"))) {
        /* The list holds liveness only; facts and usage come from each node's own view. */
        char *path = node_path(host);
        ctl_resp_t r;
        if (ctl_request(c, "GET", path, NULL, 0, 0, &r) == 0 && r.status == 200 && json_is_object(r.json)) {
          detail = r.json;
          r.json = NULL;
        }
        ctl_resp_free(&r);
        free(path);
      }
      node_row(t, n, detail, wide);
      json_decref(detail);
    }
    ctl_table_print(t);
  }
  json_decref(resp);
  return 0;
}

/* ---- tasks ---- */

static const char *const task_cols[] = {"ID",     "NAME",    "STATUS", "PROGRESS", "WORKER",
                                        "TARGET", "ATTEMPT", "AGE",    "ERROR",    NULL};

static void task_row(ctl_table_t *t, const json_t *x, int wide) {
  char buf[128];
  ctl_table_cell(t, json_string_value(ctl_jget(x, "task_id", "id", NULL)));
  ctl_table_cell(t, json_string_value(json_object_get(x, "name")));
  ctl_table_cell(t, json_string_value(ctl_jget(x, "status", "state", NULL)));
  const json_t *p = json_object_get(x, "progress");
  double cur, tot;
  if (num(json_object_get(p, "current"), &cur) == 0 && num(json_object_get(p, "total"), &tot) == 0 && tot > 0)
    ctl_table_cellf(t, "%.0f%% (%.0f/%.0f)", cur * 100 / tot, cur, tot);
  else
    ctl_table_cell(t, "-");
  ctl_table_cell(t, json_string_value(json_object_get(x, "worker")));
  if (wide) {
    ctl_table_cell(t, json_string_value(json_object_get(x, "target")));
    ctl_table_cell(t, ctl_jstr(json_object_get(x, "attempt"), buf, sizeof buf));
    ctl_fmt_age(ctl_time_ms(json_object_get(x, "created_at_ms")), buf, sizeof buf);
    ctl_table_cell(t, buf);
    const json_t *e = json_object_get(x, "error");
    const char *msg = json_string_value(ctl_jget(e, "message", "code", NULL));
    ctl_table_cell(t, msg ? msg : json_is_string(e) ? json_string_value(e) : "");
  }
  ctl_table_row(t);
}

static int show_list(ctl_t *c, json_t *resp, json_t *items, const char *const *cols, size_t narrow,
                     void (*row)(ctl_table_t *, const json_t *, int),
                     const char *(*name_of)(const json_t *, char *, size_t)) {
  size_t i;
  json_t *x;
  char buf[512];
  if (c->output == CTL_OUT_JSON) {
    ctl_print_json(resp);
  } else if (c->output == CTL_OUT_NAME) {
    json_array_foreach(items, i, x) printf("%s\n", name_of(x, buf, sizeof buf));
  } else {
    ctl_table_t *t = table_for(cols, narrow, c->output == CTL_OUT_WIDE);
    json_array_foreach(items, i, x) row(t, x, c->output == CTL_OUT_WIDE);
    ctl_table_print(t);
  }
  return 0;
}

static const char *task_name(const json_t *x, char *buf, size_t len) {
  return ctl_jstr(ctl_jget(x, "task_id", "id", NULL), buf, len);
}

static char *task_path(const char *id) {
  char *e = ctl_esc(id);
  char *p = dibba_xasprintf("/v1/tasks/%s", e);
  free(e);
  return p;
}

static int get_tasks(ctl_t *c, const char *id, const char *state, const char *limit) {
  json_t *resp = NULL;
  int rc;
  if (id) {
    char *path = task_path(id);
    rc = ctl_call(c, "GET", path, NULL, "get task", &resp);
    free(path);
    if (rc == 0) {
      json_t *one = json_array();
      json_array_append(one, resp);
      show_list(c, resp, one, task_cols, 5, task_row, task_name);
      json_decref(one);
    }
    json_decref(resp);
    return rc;
  }
  char *es = state ? ctl_esc(state) : NULL, *el = limit ? ctl_esc(limit) : NULL;
  char *path = dibba_xasprintf("/v1/tasks%s%s%s%s%s%s", es || el ? "?" : "", es ? "state=" : "", es ? es : "",
                               es && el ? "&" : "", el ? "limit=" : "", el ? el : "");
  free(es);
  free(el);
  rc = ctl_call(c, "GET", path, NULL, "listing tasks", &resp);
  free(path);
  if (rc != 0)
    return rc;
  json_t *items = items_of(resp, "tasks");
  rc = items ? show_list(c, resp, items, task_cols, 5, task_row, task_name) : shape_error("get tasks");
  json_decref(resp);
  return rc;
}

/* ---- pods ---- */

static const char *const pod_cols[] = {"NAMESPACE", "NAME",  "PHASE",   "IP",  "HOST",
                                       "RESTARTS",  "READY", "HOST-IP", "AGE", NULL};

static const char *phase_name(const json_t *v, char *buf, size_t len) {
  static const char *const phases[] = {"Pending", "Running", "Succeeded", "Failed", "Unknown"};
  if (json_is_integer(v) && json_integer_value(v) >= 0 && json_integer_value(v) < 5)
    return phases[json_integer_value(v)];
  return ctl_jstr(v, buf, len);
}

static void pod_row(ctl_table_t *t, const json_t *p, int wide) {
  char buf[128];
  const json_t *meta = json_object_get(p, "metadata"), *st = json_object_get(p, "status"),
               *spec = json_object_get(p, "spec");
  ctl_table_cell(t, json_string_value(json_object_get(meta, "namespace")));
  ctl_table_cell(t, json_string_value(json_object_get(meta, "name")));
  ctl_table_cell(t, phase_name(json_object_get(st, "phase"), buf, sizeof buf));
  ctl_table_cell(t, json_string_value(ctl_jget(st, "podIP", "pod_ip", NULL)));
  /* The Dibba node is spec.nodeName; status.hostName is the machine's own hostname (not the worker's name). */
  const char *host = json_string_value(ctl_jget(spec, "nodeName", "node_name", NULL));
  ctl_table_cell(t, host ? host : json_string_value(ctl_jget(st, "hostName", "host_name", NULL)));
  const json_t *cs = ctl_jget(st, "containerStatuses", "container_statuses", NULL);
  double restarts = 0, v;
  size_t i, ready = 0, total = json_array_size(ctl_jget(spec, "containers", NULL));
  json_t *x;
  json_array_foreach(cs, i, x) {
    if (num(ctl_jget(x, "restartCount", "restart_count", NULL), &v) == 0)
      restarts += v;
    ready += json_is_true(json_object_get(x, "ready"));
  }
  ctl_table_cellf(t, "%.0f", restarts);
  if (wide) {
    ctl_table_cellf(t, "%zu/%zu", ready, total ? total : json_array_size(cs));
    ctl_table_cell(t, json_string_value(ctl_jget(st, "hostIP", "host_ip", NULL)));
    ctl_fmt_age(ctl_time_ms(ctl_jget(meta, "creationTimestamp", "creation_timestamp", NULL)), buf, sizeof buf);
    ctl_table_cell(t, buf);
  }
  ctl_table_row(t);
}

static const char *pod_name(const json_t *p, char *buf, size_t len) {
  const json_t *meta = json_object_get(p, "metadata");
  const char *ns = json_string_value(json_object_get(meta, "namespace")),
             *n = json_string_value(json_object_get(meta, "name"));
  snprintf(buf, len, "%s/%s", ns ? ns : "", n ? n : "");
  return buf;
}

int ctl_pod_ref(const char *cmd, const char *ns_flag, const char *arg, char **ns, char **name) {
  const char *slash = strchr(arg, '/');
  *ns = *name = NULL;
  if (slash) {
    if (ns_flag)
      return ctl_usage(cmd, "give the namespace once: NS/NAME or -n NS NAME");
    if (slash == arg || slash[1] == '\0' || strchr(slash + 1, '/'))
      return ctl_usage(cmd, "\"%s\" is not NS/NAME", arg);
    *ns = dibba_xstrndup(arg, (size_t)(slash - arg));
    *name = dibba_xstrdup(slash + 1);
    return 0;
  }
  if (arg[0] == '\0')
    return ctl_usage(cmd, "an empty pod name");
  *ns = dibba_xstrdup(ns_flag && ns_flag[0] ? ns_flag : "default");
  *name = dibba_xstrdup(arg);
  return 0;
}

static char *pod_path(const char *ns, const char *name, const char *suffix) {
  char *en = ctl_esc(ns), *nn = ctl_esc(name);
  char *p = dibba_xasprintf("/v1/pods/%s/%s%s", en, nn, suffix ? suffix : "");
  free(en);
  free(nn);
  return p;
}

static int get_pods(ctl_t *c, const char *ref, const char *ns_flag, const char *host, const char *selector) {
  json_t *resp = NULL;
  int rc;
  if (ref) {
    char *ns, *name;
    if ((rc = ctl_pod_ref("get pods", ns_flag, ref, &ns, &name)) != 0)
      return rc;
    char *path = pod_path(ns, name, NULL);
    rc = ctl_call(c, "GET", path, NULL, "get pod", &resp);
    if (rc == 0) {
      json_t *one = json_array();
      json_array_append(one, resp);
      show_list(c, resp, one, pod_cols, 6, pod_row, pod_name);
      json_decref(one);
    }
    json_decref(resp);
    free(path);
    free(ns);
    free(name);
    return rc;
  }
  char query[2048] = "";
  size_t q = 0;
  const char *keys[] = {"namespace", "host", "labelSelector"};
  const char *vals[] = {ns_flag, host, selector};
  for (size_t i = 0; i < 3; i++) {
    if (vals[i] == NULL)
      continue;
    char *e = ctl_esc(vals[i]);
    int w = snprintf(query + q, sizeof query - q, "%c%s=%s", q ? '&' : '?', keys[i], e);
    free(e);
    if (w < 0 || (size_t)w >= sizeof query - q)
      return ctl_usage("get pods", "the filters are too long");
    q += (size_t)w;
  }
  char *path = dibba_xasprintf("/v1/pods%s", query);
  rc = ctl_call(c, "GET", path, NULL, "listing pods", &resp);
  free(path);
  if (rc != 0)
    return rc;
  json_t *items = items_of(resp, "pods");
  rc = items ? show_list(c, resp, items, pod_cols, 6, pod_row, pod_name) : shape_error("get pods");
  json_decref(resp);
  return rc;
}

/* ---- schedules ---- */

static const char *const sched_cols[] = {"NAME", "SCHEDULE", "NEXT",    "LAST", "LAST-TASK",
                                         "TASK", "ROUTE",    "ENABLED", NULL};

static const char *sched_text(const json_t *s, char *buf, size_t len) {
  const json_t *v = json_object_get(s, "schedule");
  if (json_is_object(v)) {
    const char *k;
    json_t *x;
    buf[0] = '\0';
    json_object_foreach((json_t *)v, k, x) {
      char val[128];
      snprintf(buf, len, "%s %s", k, ctl_jstr(x, val, sizeof val));
      break;
    }
    return buf;
  }
  return ctl_jstr(v, buf, len);
}

static void sched_row(ctl_table_t *t, const json_t *s, int wide) {
  char buf[256];
  ctl_table_cell(t, json_string_value(json_object_get(s, "name")));
  ctl_table_cell(t, sched_text(s, buf, sizeof buf));
  /* GET /v1/schedules: next_fire_ms (null when disabled), last_fire_ms; the older guesses stay as fallbacks. */
  ctl_fmt_age(ctl_time_ms(ctl_jget(s, "next_fire_ms", "next", "next_run", "next_ms", "next_at_ms", "next_run_ms",
                                   "nextRunMs", NULL)),
              buf, sizeof buf);
  ctl_table_cell(t, buf);
  ctl_fmt_age(ctl_time_ms(ctl_jget(s, "last_fire_ms", "last", "last_run", "last_ms", "last_at_ms", "last_run_ms",
                                   "lastRunMs", "last_fired_ms", NULL)),
              buf, sizeof buf);
  ctl_table_cell(t, buf);
  ctl_table_cell(t, json_string_value(ctl_jget(s, "last_task", "last_task_id", "lastTaskId", NULL)));
  if (wide) {
    ctl_table_cell(t, json_string_value(json_object_get(s, "task")));
    ctl_table_cell(t, ctl_jstr(json_object_get(s, "route"), buf, sizeof buf));
    ctl_table_cell(t, ctl_jstr(json_object_get(s, "enabled"), buf, sizeof buf));
  }
  ctl_table_row(t);
}

static const char *sched_name(const json_t *s, char *buf, size_t len) {
  return ctl_jstr(json_object_get(s, "name"), buf, len);
}

/* GET /v1/schedules; with name, *one gets that schedule (404 if absent). */
static int fetch_schedules(ctl_t *c, const char *name, json_t **resp, json_t **one) {
  int rc = ctl_call(c, "GET", "/v1/schedules", NULL, "listing schedules", resp);
  *one = NULL;
  if (rc != 0)
    return rc;
  json_t *items = items_of(*resp, "schedules");
  if (items == NULL)
    return shape_error("get schedules");
  if (name) {
    size_t i;
    json_t *x;
    json_array_foreach(items, i, x) {
      const char *n = json_string_value(json_object_get(x, "name"));
      if (n && strcmp(n, name) == 0)
        *one = x;
    }
    if (*one == NULL)
      return ctl_fail(CTL_ENOTFOUND, "schedule %s not found", name);
  }
  return 0;
}

static int get_schedules(ctl_t *c, const char *name) {
  json_t *resp = NULL, *one = NULL;
  int rc = fetch_schedules(c, name, &resp, &one);
  if (rc == 0) {
    if (one) {
      json_t *a = json_array();
      json_array_append(a, one);
      show_list(c, one, a, sched_cols, 5, sched_row, sched_name);
      json_decref(a);
    } else {
      show_list(c, resp, items_of(resp, "schedules"), sched_cols, 5, sched_row, sched_name);
    }
  }
  json_decref(resp);
  return rc;
}

/* ---- users ---- */

static const char *const user_cols[] = {"NAME", "ROLE", "ENABLED", "CREATED", "UPDATED", NULL};

static void user_row(ctl_table_t *t, const json_t *u, int wide) {
  char buf[64];
  ctl_table_cell(t, json_string_value(json_object_get(u, "name")));
  ctl_table_cell(t, json_string_value(json_object_get(u, "role")));
  ctl_table_cell(t, ctl_jstr(json_object_get(u, "enabled"), buf, sizeof buf));
  if (wide) {
    ctl_fmt_age(ctl_time_ms(json_object_get(u, "created_at")), buf, sizeof buf);
    ctl_table_cell(t, buf);
    ctl_fmt_age(ctl_time_ms(json_object_get(u, "updated_at")), buf, sizeof buf);
    ctl_table_cell(t, buf);
  }
  ctl_table_row(t);
}

static const char *user_name(const json_t *u, char *buf, size_t len) {
  return ctl_jstr(json_object_get(u, "name"), buf, len);
}

static int get_users(ctl_t *c, const char *name) {
  json_t *resp = NULL;
  int rc;
  if (name) {
    char *e = ctl_esc(name);
    char *path = dibba_xasprintf("/v1/users/%s", e);
    free(e);
    rc = ctl_call(c, "GET", path, NULL, "get user", &resp);
    free(path);
    if (rc == 0) {
      json_t *one = json_array();
      json_array_append(one, resp);
      show_list(c, resp, one, user_cols, 3, user_row, user_name);
      json_decref(one);
    }
    json_decref(resp);
    return rc;
  }
  if ((rc = ctl_call(c, "GET", "/v1/users", NULL, "listing users", &resp)) != 0)
    return rc;
  json_t *items = items_of(resp, "users");
  rc = items ? show_list(c, resp, items, user_cols, 3, user_row, user_name) : shape_error("get users");
  json_decref(resp);
  return rc;
}

/* ---- the commands ---- */

int ctl_cmd_get(ctl_t *c, int argc, char **argv) {
  static const struct option opts[] = {{"namespace", required_argument, NULL, 'n'},
                                       {"all-namespaces", no_argument, NULL, 'A'},
                                       {"host", required_argument, NULL, 'H'},
                                       {"selector", required_argument, NULL, 'l'},
                                       {"state", required_argument, NULL, 'S'},
                                       {"limit", required_argument, NULL, 'L'},
                                       {NULL, 0, NULL, 0}};
  const char *ns = NULL, *host = NULL, *sel = NULL, *state = NULL, *limit = NULL;
  int o;
  optind = 0;
  opterr = 0;
  while ((o = getopt_long(argc, argv, ":n:Al:", opts, NULL)) != -1) {
    switch (o) {
    case 'n': ns = optarg; break;
    case 'A': ns = NULL; break;
    case 'H': host = optarg; break;
    case 'l': sel = optarg; break;
    case 'S': state = optarg; break;
    case 'L': limit = optarg; break;
    default: return ctl_opt_error("get", o, argv);
    }
  }
  int n = argc - optind;
  char **a = argv + optind;
  if (n < 1)
    return ctl_usage("get", "say what to get: nodes, tasks, pods, schedules or users");
  res_t r = resource(a[0]);
  if (r == 0)
    return ctl_usage("get", "unknown resource \"%s\" (nodes, tasks, pods, schedules, users)", a[0]);
  if (n > 2)
    return ctl_usage("get", "unexpected argument \"%s\"", a[2]);
  const char *name = n == 2 ? a[1] : NULL;
  if (limit && (strspn(limit, "0123456789") != strlen(limit) || !limit[0]))
    return ctl_usage("get", "--limit takes a number");
  if (r != RES_POD && (ns || host || sel))
    return ctl_usage("get", "-n, --host and -l only apply to pods");
  if (r != RES_TASK && (state || limit))
    return ctl_usage("get", "--state and --limit only apply to tasks");
  switch (r) {
  case RES_NODE: return get_nodes(c, name);
  case RES_TASK: return get_tasks(c, name, state, limit);
  case RES_POD: return get_pods(c, name, ns, name ? NULL : host, name ? NULL : sel);
  case RES_SCHEDULE: return get_schedules(c, name);
  case RES_USER: return get_users(c, name);
  }
  return CTL_EFAIL;
}

int ctl_cmd_describe(ctl_t *c, int argc, char **argv) {
  static const struct option opts[] = {{"namespace", required_argument, NULL, 'n'}, {NULL, 0, NULL, 0}};
  const char *ns = NULL;
  int o, rc;
  optind = 0;
  opterr = 0;
  while ((o = getopt_long(argc, argv, ":n:", opts, NULL)) != -1) {
    if (o == 'n')
      ns = optarg;
    else
      return ctl_opt_error("describe", o, argv);
  }
  int n = argc - optind;
  char **a = argv + optind;
  if (n != 2)
    return ctl_usage("describe", "say describe node|task|pod|schedule|user NAME");
  res_t r = resource(a[0]);
  json_t *resp = NULL, *one = NULL;
  char *path = NULL;
  switch (r) {
  case RES_NODE: path = node_path(a[1]); break;
  case RES_TASK: path = task_path(a[1]); break;
  case RES_POD: {
    char *pns, *pname;
    if ((rc = ctl_pod_ref("describe", ns, a[1], &pns, &pname)) != 0)
      return rc;
    path = pod_path(pns, pname, NULL);
    free(pns);
    free(pname);
    break;
  }
  case RES_USER: {
    char *e = ctl_esc(a[1]);
    path = dibba_xasprintf("/v1/users/%s", e);
    free(e);
    break;
  }
  case RES_SCHEDULE: break;
  default: return ctl_usage("describe", "unknown resource \"%s\" (node, task, pod, schedule, user)", a[0]);
  }
  if (ns && r != RES_POD) {
    free(path);
    return ctl_usage("describe", "-n only applies to pods");
  }
  if (r == RES_SCHEDULE)
    rc = fetch_schedules(c, a[1], &resp, &one);
  else
    rc = ctl_call(c, "GET", path, NULL, "describe", &resp);
  if (rc == 0) {
    const json_t *obj = one ? one : resp;
    if (c->output == CTL_OUT_JSON)
      ctl_print_json(obj);
    else
      ctl_print_describe(obj);
  }
  json_decref(resp);
  free(path);
  return rc;
}

/* ---- pods: apply, delete, logs, exec ---- */

int ctl_cmd_apply(ctl_t *c, int argc, char **argv) {
  static const struct option opts[] = {
      {"filename", required_argument, NULL, 'f'}, {"namespace", required_argument, NULL, 'n'}, {NULL, 0, NULL, 0}};
  const char *file = NULL, *ns = NULL;
  int o, rc;
  optind = 0;
  opterr = 0;
  while ((o = getopt_long(argc, argv, ":f:n:", opts, NULL)) != -1) {
    switch (o) {
    case 'f': file = optarg; break;
    case 'n': ns = optarg; break;
    default: return ctl_opt_error("apply", o, argv);
    }
  }
  if (file == NULL)
    return ctl_usage("apply", "-f FILE is required");
  if (optind != argc)
    return ctl_usage("apply", "unexpected argument \"%s\"", argv[optind]);
  json_t *pod = NULL, *out = NULL;
  if ((rc = ctl_manifest_load(file, &pod)) != 0)
    return rc;
  const char *where = strcmp(file, "-") == 0 ? "<stdin>" : file;
  json_t *meta = json_object_get(pod, "metadata");
  const char *kind = json_string_value(json_object_get(pod, "kind"));
  const char *name = json_string_value(json_object_get(meta, "name"));
  const char *mns = json_string_value(json_object_get(meta, "namespace"));
  if (!json_is_object(pod))
    rc = ctl_fail(CTL_EINVALID, "%s: the document is not an object", where);
  else if (json_object_get(pod, "kind") && (kind == NULL || strcmp(kind, "Pod") != 0))
    rc = ctl_fail(CTL_EINVALID, "%s: kind must be Pod", where);
  else if (!json_is_object(meta) || name == NULL || name[0] == '\0')
    rc = ctl_fail(CTL_EINVALID, "%s: metadata.name is required", where);
  else if (json_object_get(meta, "namespace") && mns == NULL)
    rc = ctl_fail(CTL_EINVALID, "%s: metadata.namespace must be a string", where);
  else if (ns && mns && strcmp(ns, mns) != 0)
    rc = ctl_fail(CTL_EINVALID, "%s: metadata.namespace is %s, not %s", where, mns, ns);
  if (rc != 0)
    goto out;
  if (ns && mns == NULL) {
    json_object_set_new(meta, "namespace", json_string(ns));
    mns = json_string_value(json_object_get(meta, "namespace"));
  }
  if ((rc = ctl_call(c, "POST", "/v1/pods", pod, "apply", &out)) != 0)
    goto out;
  if (c->output == CTL_OUT_JSON) {
    ctl_print_json(out);
  } else {
    const json_t *om = json_object_get(out, "metadata");
    const char *ons = json_string_value(json_object_get(om, "namespace"));
    printf("pod %s/%s created\n", ons ? ons : mns ? mns : "default", name);
  }
out:
  json_decref(out);
  json_decref(pod);
  return rc;
}

int ctl_cmd_delete(ctl_t *c, int argc, char **argv) {
  static const struct option opts[] = {{"namespace", required_argument, NULL, 'n'}, {NULL, 0, NULL, 0}};
  const char *nsf = NULL;
  int o, rc;
  optind = 0;
  opterr = 0;
  while ((o = getopt_long(argc, argv, ":n:", opts, NULL)) != -1) {
    if (o == 'n')
      nsf = optarg;
    else
      return ctl_opt_error("delete", o, argv);
  }
  int n = argc - optind;
  char **a = argv + optind;
  if (n != 2 || resource(a[0]) != RES_POD)
    return ctl_usage("delete", "say delete pod NS/NAME or delete pod -n NS NAME");
  char *ns, *name;
  if ((rc = ctl_pod_ref("delete", nsf, a[1], &ns, &name)) != 0)
    return rc;
  char *path = pod_path(ns, name, NULL);
  json_t *out = NULL;
  rc = ctl_call(c, "DELETE", path, NULL, "delete pod", &out);
  if (rc == 0) {
    if (c->output == CTL_OUT_JSON && out)
      ctl_print_json(out);
    else
      printf("pod %s/%s deleted\n", ns, name);
  }
  json_decref(out);
  free(path);
  free(ns);
  free(name);
  return rc;
}

int ctl_cmd_logs(ctl_t *c, int argc, char **argv) {
  static const struct option opts[] = {{"follow", no_argument, NULL, 'f'},
                                       {"container", required_argument, NULL, 'c'},
                                       {"tail", required_argument, NULL, 't'},
                                       {"namespace", required_argument, NULL, 'n'},
                                       {NULL, 0, NULL, 0}};
  const char *container = NULL, *tail = NULL, *nsf = NULL;
  int follow = 0, o, rc;
  optind = 0;
  opterr = 0;
  while ((o = getopt_long(argc, argv, ":fc:n:", opts, NULL)) != -1) {
    switch (o) {
    case 'f': follow = 1; break;
    case 'c': container = optarg; break;
    case 't': tail = optarg; break;
    case 'n': nsf = optarg; break;
    default: return ctl_opt_error("logs", o, argv);
    }
  }
  if (argc - optind != 1)
    return ctl_usage("logs", "say logs [-f] [-c CONTAINER] [--tail N] NS/NAME");
  if (tail && (tail[0] == '\0' || strspn(tail, "0123456789") != strlen(tail)))
    return ctl_usage("logs", "--tail takes a number of lines");
  char *ns, *name;
  if ((rc = ctl_pod_ref("logs", nsf, argv[optind], &ns, &name)) != 0)
    return rc;
  char *ec = container ? ctl_esc(container) : NULL;
  char *q = dibba_xasprintf("/logs?follow=%s%s%s%s%s", follow ? "true" : "false", ec ? "&container=" : "", ec ? ec : "",
                            tail ? "&tailLines=" : "", tail ? tail : "");
  char *path = pod_path(ns, name, q);
  ctl_resp_t r;
  rc = ctl_request(c, "GET", path, NULL, 0, CTL_REQ_STREAM, &r);
  if (rc == 0) {
    rc = ctl_resp_check(c, &r, "GET", path, "logs");
    ctl_resp_free(&r);
  }
  free(path);
  free(q);
  free(ec);
  free(ns);
  free(name);
  return rc;
}

int ctl_cmd_exec(ctl_t *c, int argc, char **argv) {
  static const struct option opts[] = {
      {"container", required_argument, NULL, 'c'}, {"namespace", required_argument, NULL, 'n'}, {NULL, 0, NULL, 0}};
  const char *container = NULL, *nsf = NULL;
  int o, rc;
  /* Options and NS/NAME come before "--"; everything after it is the command, never parsed. */
  int dash = 1;
  while (dash < argc && strcmp(argv[dash], "--") != 0)
    dash++;
  optind = 0;
  opterr = 0;
  while ((o = getopt_long(dash, argv, ":c:n:", opts, NULL)) != -1) {
    switch (o) {
    case 'c': container = optarg; break;
    case 'n': nsf = optarg; break;
    default: return ctl_opt_error("exec", o, argv);
    }
  }
  if (optind >= dash)
    return ctl_usage("exec", "say exec NS/NAME [-c CONTAINER] -- COMMAND [ARG...]");
  const char *ref = argv[optind];
  /* Without "--", the words after NS/NAME are the command. */
  int cmd_at = dash < argc ? dash + 1 : optind + 1;
  if (dash < argc && optind + 1 < dash)
    return ctl_usage("exec", "unexpected argument \"%s\" before --", argv[optind + 1]);
  if (cmd_at >= argc)
    return ctl_usage("exec", "no command to run: exec NS/NAME -- COMMAND [ARG...]");
  char *ns, *name;
  if ((rc = ctl_pod_ref("exec", nsf, ref, &ns, &name)) != 0)
    return rc;
  json_t *cmd = json_array();
  for (int i = cmd_at; i < argc; i++)
    json_array_append_new(cmd, json_string(argv[i]));
  json_t *body = json_object(), *out = NULL;
  if (container)
    json_object_set_new(body, "container", json_string(container));
  json_object_set_new(body, "command", cmd);
  char *path = pod_path(ns, name, "/exec");
  rc = ctl_call(c, "POST", path, body, "exec", &out);
  if (rc == 0) {
    const json_t *code = ctl_jget(out, "exit_code", "exitCode", NULL);
    const json_t *so = json_object_get(out, "stdout"), *se = json_object_get(out, "stderr");
    if (c->output == CTL_OUT_JSON) {
      ctl_print_json(out);
    } else {
      fwrite(json_string_value(so) ? json_string_value(so) : "", 1, json_string_length(so), stdout);
      fflush(stdout);
      fwrite(json_string_value(se) ? json_string_value(se) : "", 1, json_string_length(se), stderr);
    }
    if (json_is_true(ctl_jget(out, "timed_out", "timedOut", NULL)))
      rc = ctl_fail(CTL_EFAIL, "exec: the command timed out");
    else if (!json_is_integer(code))
      rc = ctl_fail(CTL_EFAIL, "exec: the server's answer has no exit_code");
    else {
      json_int_t x = json_integer_value(code);
      rc = x < 0 ? 128 + (int)(-x & 127) : x > 255 ? 255 : (int)x;
    }
  }
  json_decref(out);
  json_decref(body);
  free(path);
  free(ns);
  free(name);
  return rc;
}
