/* SPDX-License-Identifier: Apache-2.0 */
/* dibba-api's task routes on lib/task's producer: submit, read, revoke, nodes, and WebSocket watchers. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dibba/alloc.h"
#include "dibba/error.h"
#include "dibba/log.h"
#include "dibba/task_queue.h"
#include "dibba/time.h"
#include "dibba/websocket.h"
#include "tasks.h"

typedef struct watcher_s watcher_t;

struct api_tasks_s {
  uv_loop_t *loop;
  dibba_redis_t *r;
  dibba_redis_sub_t *sub;
  dibba_task_key_t key;
  char *prefix;
  int64_t hb_ms;
  int64_t wait_replicas, wait_timeout_ms; /* redis.wait_replicas: submits WAIT for replicas (0: off) */
  watcher_t *watchers;
  void (*close_cb)(void *);
  void *close_data;
};

struct watcher_s {
  watcher_t *next;
  api_tasks_t *t;
  dibba_ws_t *ws;
  char id[DIBBA_ID_LEN + 1];
  char chan[512];
  int subscribed, done;
  long long seq;
};

/* ---- helpers ---- */

static int hexval(int c) {
  return c >= '0' && c <= '9'   ? c - '0'
         : c >= 'a' && c <= 'f' ? c - 'a' + 10
         : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                : -1;
}

/* The decoded value of one query parameter into out, or -ENOENT. */
static int query_get(const char *q, const char *name, char *out, size_t len) {
  size_t nl = strlen(name);
  while (q && *q) {
    const char *amp = strchr(q, '&');
    size_t seg = amp ? (size_t)(amp - q) : strlen(q);
    if (seg > nl && strncmp(q, name, nl) == 0 && q[nl] == '=') {
      size_t o = 0;
      for (size_t i = nl + 1; i < seg && o + 1 < len; i++) {
        if (q[i] == '%' && i + 2 < seg + 1 && hexval(q[i + 1]) >= 0 && hexval(q[i + 2]) >= 0) {
          out[o++] = (char)(hexval(q[i + 1]) * 16 + hexval(q[i + 2]));
          i += 2;
        } else {
          out[o++] = q[i] == '+' ? ' ' : q[i];
        }
      }
      out[o] = '\0';
      return 0;
    }
    q = amp ? amp + 1 : NULL;
  }
  return -ENOENT;
}

/* host_name from ?host_name= or a JSON body {host_name}. */
static int host_param(dibba_http_req_t *req, char *out, size_t len) {
  if (query_get(dibba_http_req_query(req), "host_name", out, len) == 0 && out[0])
    return 0;
  size_t blen = 0;
  const char *body = dibba_http_req_body(req, &blen);
  if (body && blen) {
    json_t *j = json_loadb(body, blen, 0, NULL);
    const char *h = json_string_value(json_object_get(j, "host_name"));
    if (h && strlen(h) < len) {
      snprintf(out, len, "%s", h);
      json_decref(j);
      return 0;
    }
    json_decref(j);
  }
  return -ENOENT;
}

/* ---- submit after a liveness check of the target host ---- */

typedef struct submit_s {
  api_tasks_t *t;
  dibba_http_req_t *req;
  dibba_task_submit_t s;
  char host[256], role[65], name[DIBBA_TASK_NAME_MAX + 1], id[DIBBA_ID_LEN + 1];
  char *args;
  int generic; /* POST /v1/tasks: 202 {task_id} */
} submit_t;

static void submit_free(submit_t *q) {
  dibba_http_req_unref(q->req);
  free(q->args);
  free(q);
}

static void submitted(int status, const char *id, void *data) {
  submit_t *q = data;
  if (status == DIBBA_REDIS_EWAIT)
    /* On the master, not yet on enough replicas: the client may resubmit with this id (POST /v1/tasks). */
    dibba_http_respond_json(
        q->req, 503,
        json_pack("{s:s, s:s}", "detail", "task stored, but not acknowledged by enough replicas", "task_id", id));
  else if (status < 0)
    dibba_http_respond_error(q->req, 503, "task store unavailable");
  else if (q->generic)
    dibba_http_respond_json(q->req, 202, json_pack("{s:s}", "task_id", id));
  else
    dibba_http_respond_json(q->req, 200,
                            json_pack("{s:s, s:s}", "message", "Task submitted successfully", "task_id", id));
  submit_free(q);
}

static void do_submit(submit_t *q) {
  char id[DIBBA_ID_LEN + 1], err[256];
  q->s.wait_replicas = (uint32_t)q->t->wait_replicas;
  q->s.wait_timeout_ms = (uint32_t)q->t->wait_timeout_ms;
  int rc = dibba_task_submit(q->t->r, q->t->prefix, &q->t->key, &q->s, submitted, q, id, err, sizeof err);
  if (rc < 0) {
    if (rc == -EINVAL || rc == -E2BIG)
      dibba_http_respond_422(q->req, "body", err, "value_error");
    else
      dibba_http_respond_error(q->req, 503, "task store unavailable");
    submit_free(q);
  }
}

static void host_checked(dibba_redis_t *r, int status, redisReply *reply, void *data) {
  submit_t *q = data;
  long long last = 0;
  (void)r;
  if (status < 0) {
    dibba_http_respond_error(q->req, 503, "task store unavailable");
    submit_free(q);
    return;
  }
  if (dibba_redis_reply_int(reply, &last) < 0 || last < dibba_now_ms() - 3 * q->t->hb_ms) {
    dibba_http_respond_error(q->req, 404, "unknown or offline host");
    submit_free(q);
    return;
  }
  do_submit(q);
}

static void start_submit(api_tasks_t *t, dibba_http_req_t *req, submit_t *q) {
  q->t = t;
  q->req = req;
  dibba_http_req_ref(req);
  if (q->s.host) {
    if (dibba_redis_command(t->r, host_checked, q, NULL, "ZSCORE %snodes %s", t->prefix, q->s.host) < 0) {
      dibba_http_respond_error(req, 503, "task store unavailable");
      submit_free(q);
    }
    return;
  }
  do_submit(q);
}

static void node_task(dibba_http_req_t *req, api_tasks_t *t, const char *name) {
  submit_t *q = dibba_xcalloc(1, sizeof *q);
  if (host_param(req, q->host, sizeof q->host) < 0) {
    free(q);
    dibba_http_respond_422(req, "host_name", "field required", "missing");
    return;
  }
  snprintf(q->name, sizeof q->name, "%s", name);
  q->s.name = q->name;
  q->s.host = q->host;
  start_submit(t, req, q);
}

static void h_node_data(dibba_http_req_t *req, void *data) { node_task(req, data, "get_worker_node_info"); }
static void h_node_ip(dibba_http_req_t *req, void *data) { node_task(req, data, "get_host_ip"); }
static void h_usage(dibba_http_req_t *req, void *data) { node_task(req, data, "get_usage"); }

static void h_submit(dibba_http_req_t *req, void *data) {
  json_t *b = dibba_http_req_json(req);
  const char *name = json_string_value(json_object_get(b, "name"));
  const char *host = json_string_value(json_object_get(b, "host"));
  const char *role = json_string_value(json_object_get(b, "role"));
  const char *id = json_string_value(json_object_get(b, "id"));
  json_t *args = json_object_get(b, "args");
  if (name == NULL || strlen(name) > DIBBA_TASK_NAME_MAX) {
    dibba_http_respond_422(req, "name", "a task name is required", "missing");
    return;
  }
  if ((host == NULL) == (role == NULL) || (host && strlen(host) > 253) || (role && strlen(role) > 64)) {
    dibba_http_respond_422(req, "host", "exactly one of host and role", "value_error");
    return;
  }
  if (args && !json_is_object(args) && !json_is_null(args)) {
    dibba_http_respond_422(req, "args", "must be an object", "type_error");
    return;
  }
  /* A caller-chosen id makes a resubmit after a lost reply idempotent: an existing task is not written again. */
  if ((json_object_get(b, "id") && !json_is_null(json_object_get(b, "id")) && id == NULL) ||
      (id && !dibba_id_valid(id))) {
    dibba_http_respond_422(req, "id", "must be a UUID", "value_error");
    return;
  }
  submit_t *q = dibba_xcalloc(1, sizeof *q);
  if (id) {
    snprintf(q->id, sizeof q->id, "%s", id);
    q->s.id = q->id;
  }
  snprintf(q->name, sizeof q->name, "%s", name);
  q->s.name = q->name;
  if (host) {
    snprintf(q->host, sizeof q->host, "%s", host);
    q->s.host = q->host;
  } else {
    snprintf(q->role, sizeof q->role, "%s", role);
    q->s.role = q->role;
  }
  if (json_is_object(args)) {
    q->args = json_dumps(args, JSON_COMPACT);
    q->s.args_json = q->args;
  }
  q->s.countdown_ms = (int64_t)(json_number_value(json_object_get(b, "countdown")) * 1000);
  q->s.expires_ms = (int64_t)(json_number_value(json_object_get(b, "expires")) * 1000);
  q->s.max_retries = (uint32_t)json_integer_value(json_object_get(b, "max_retries"));
  q->generic = 1;
  start_submit(data, req, q);
}

/* ---- records ---- */

static void record_done(int status, const json_t *rec, void *data) {
  dibba_http_req_t *req = data;
  if (status == -ENOENT)
    dibba_http_respond_error(req, 404, "unknown task");
  else if (status < 0)
    dibba_http_respond_error(req, 503, "task store unavailable");
  else
    dibba_http_respond_json(req, 200, json_deep_copy(rec));
  dibba_http_req_unref(req);
}

static void h_task(dibba_http_req_t *req, void *data) {
  api_tasks_t *t = data;
  const char *id = dibba_http_req_param(req, "task_id");
  if (id == NULL || !dibba_id_valid(id)) {
    dibba_http_respond_error(req, 404, "unknown task");
    return;
  }
  dibba_http_req_ref(req);
  if (dibba_task_record_get(t->r, t->prefix, id, record_done, req) < 0) {
    dibba_http_respond_error(req, 503, "task store unavailable");
    dibba_http_req_unref(req);
  }
}

static void revoke_done(int status, void *data) {
  dibba_http_req_t *req = data;
  if (status == -ENOENT)
    dibba_http_respond_error(req, 404, "unknown task");
  else if (status < 0)
    dibba_http_respond_error(req, 503, "task store unavailable");
  else
    dibba_http_respond_json(req, 202,
                            json_pack("{s:s, s:b}", "task_id", dibba_http_req_param(req, "task_id"), "revoked", 1));
  dibba_http_req_unref(req);
}

static void h_revoke(dibba_http_req_t *req, void *data) {
  api_tasks_t *t = data;
  const char *id = dibba_http_req_param(req, "task_id");
  if (id == NULL || !dibba_id_valid(id)) {
    dibba_http_respond_error(req, 404, "unknown task");
    return;
  }
  dibba_http_req_ref(req);
  if (dibba_task_revoke(t->r, t->prefix, id, revoke_done, req) < 0) {
    dibba_http_respond_error(req, 503, "task store unavailable");
    dibba_http_req_unref(req);
  }
}

/* ---- nodes ---- */

typedef struct nodes_s {
  api_tasks_t *t;
  dibba_http_req_t *req;
  int one;
} nodes_t;

static json_t *node_json(api_tasks_t *t, const redisReply *h) {
  const char *v;
  size_t n;
  json_t *o = json_object();
  static const char *const objs[] = {"info", "usage", "counters"};
  for (size_t i = 0; i < 3; i++)
    if (dibba_redis_reply_field(h, objs[i], &v, &n) == 0)
      json_object_set_new(o, objs[i], json_loadb(v, n, 0, NULL));
  if (dibba_redis_reply_field(h, "hostname", &v, &n) == 0)
    json_object_set_new(o, "hostname", json_stringn(v, n));
  if (dibba_redis_reply_field(h, "version", &v, &n) == 0)
    json_object_set_new(o, "workerVersion", json_stringn(v, n));
  if (dibba_redis_reply_field(h, "roles", &v, &n) == 0)
    json_object_set_new(o, "roles", json_stringn(v, n));
  long long last = 0;
  if (dibba_redis_reply_field(h, "last_heartbeat", &v, &n) == 0 && n < 24) {
    char tmp[24];
    memcpy(tmp, v, n);
    tmp[n] = '\0';
    last = strtoll(tmp, NULL, 10);
  }
  json_object_set_new(o, "lastHeartbeatMs", json_integer(last));
  json_object_set_new(o, "online", json_boolean(last >= dibba_now_ms() - 3 * t->hb_ms));
  return o;
}

static void nodes_done(dibba_redis_t *r, int status, redisReply *reply, void *data) {
  nodes_t *q = data;
  (void)r;
  if (status < 0) {
    dibba_http_respond_error(q->req, 503, "task store unavailable");
  } else if (q->one) {
    /* [ZSCORE, HGETALL] */
    const redisReply *score = dibba_redis_reply_at(reply, 0), *h = dibba_redis_reply_at(reply, 1);
    long long last = 0;
    if (h && h->type == REDIS_REPLY_ARRAY && h->elements > 0) {
      dibba_http_respond_json(q->req, 200, node_json(q->t, h));
    } else if (score && dibba_redis_reply_int(score, &last) == 0) {
      /* the hash expired after missed heartbeats: known but offline */
      dibba_http_respond_json(q->req, 200,
                              json_pack("{s:s, s:I, s:b}", "hostname", dibba_http_req_param(q->req, "host"),
                                        "lastHeartbeatMs", (json_int_t)last, "online", 0));
    } else {
      dibba_http_respond_error(q->req, 404, "unknown host");
    }
  } else {
    /* ZRANGE nodes 0 -1 WITHSCORES */
    json_t *arr = json_array();
    for (size_t i = 0; reply && reply->type == REDIS_REPLY_ARRAY && i + 1 < reply->elements; i += 2) {
      long long last = 0;
      dibba_redis_reply_int(reply->element[i + 1], &last);
      json_array_append_new(arr, json_pack("{s:s, s:I, s:b}", "hostname", reply->element[i]->str, "lastHeartbeatMs",
                                           (json_int_t)last, "online", last >= dibba_now_ms() - 3 * q->t->hb_ms));
    }
    dibba_http_respond_json(q->req, 200, json_pack("{s:o}", "nodes", arr));
  }
  dibba_http_req_unref(q->req);
  free(q);
}

static void h_nodes(dibba_http_req_t *req, void *data) {
  api_tasks_t *t = data;
  nodes_t *q = dibba_xcalloc(1, sizeof *q);
  q->t = t;
  q->req = req;
  dibba_http_req_ref(req);
  int rc;
  const char *host = dibba_http_req_param(req, "host");
  if (host) {
    char zk[512], nk[512];
    q->one = 1;
    snprintf(zk, sizeof zk, "%snodes", t->prefix);
    snprintf(nk, sizeof nk, "%snode:%s", t->prefix, host);
    const char *a1[] = {"ZSCORE", zk, host};
    const char *a2[] = {"HGETALL", nk};
    dibba_redis_argv_t cmds[] = {{3, a1, NULL}, {2, a2, NULL}};
    rc = dibba_redis_multi(t->r, nodes_done, q, NULL, 2, cmds);
  } else {
    rc = dibba_redis_command(t->r, nodes_done, q, NULL, "ZRANGE %snodes 0 -1 WITHSCORES", t->prefix);
  }
  if (rc < 0) {
    dibba_http_respond_error(req, 503, "task store unavailable");
    dibba_http_req_unref(req);
    free(q);
  }
}

/* ---- WebSocket watch ---- */

static void watcher_unlink(watcher_t *w) {
  api_tasks_t *t = w->t;
  int others = 0;
  for (watcher_t **pp = &t->watchers; *pp;) {
    if (*pp == w)
      *pp = w->next;
    else {
      others |= strcmp((*pp)->chan, w->chan) == 0;
      pp = &(*pp)->next;
    }
  }
  if (!others && t->sub)
    (void)dibba_redis_sub_unsubscribe(t->sub, w->chan, strlen(w->chan));
}

static int is_final_name(const char *s) {
  dibba_task_state_t st;
  return s && dibba_task_state_parse(s, &st) == 0 && dibba_task_state_is_final(st);
}

static void watch_send(watcher_t *w, json_t *ev) {
  if (w->done)
    return;
  char *s = json_dumps(ev, JSON_COMPACT);
  dibba_ws_send_text(w->ws, s, strlen(s));
  free(s);
  if (is_final_name(json_string_value(json_object_get(ev, "status")))) {
    w->done = 1;
    dibba_ws_close(w->ws, 1000, "final");
  }
}

static void watch_record(int status, const json_t *rec, void *data) {
  watcher_t *w = data;
  if (w->ws && !w->done) {
    if (status == -ENOENT) {
      w->done = 1;
      dibba_ws_close(w->ws, 4404, "unknown task");
    } else if (status == 0) {
      long long seq = json_integer_value(json_object_get(rec, "seq"));
      if (seq > w->seq || w->seq == 0) {
        w->seq = seq;
        watch_send(w, (json_t *)rec);
      }
    }
  }
  dibba_ws_unref(w->ws);
}

static void watch_read(watcher_t *w) {
  dibba_ws_ref(w->ws);
  if (dibba_task_record_get(w->t->r, w->t->prefix, w->id, watch_record, w) < 0)
    dibba_ws_unref(w->ws);
}

static void ws_open(dibba_ws_t *ws, dibba_http_req_t *req, void *data) {
  api_tasks_t *t = data;
  const char *id = dibba_http_req_param(req, "task_id");
  if (id == NULL || !dibba_id_valid(id)) {
    dibba_ws_close(ws, 4404, "unknown task");
    return;
  }
  watcher_t *w = dibba_xcalloc(1, sizeof *w);
  w->t = t;
  w->ws = ws;
  snprintf(w->id, sizeof w->id, "%s", id);
  snprintf(w->chan, sizeof w->chan, "%stask:%s:ev", t->prefix, id);
  dibba_ws_set_data(ws, w);
  int already = 0;
  for (watcher_t *o = t->watchers; o; o = o->next)
    if (strcmp(o->chan, w->chan) == 0 && o->subscribed)
      already = 1;
  w->next = t->watchers;
  t->watchers = w;
  /* Subscribe first; the record is read once the subscription is confirmed, so no change falls between. */
  if (already) {
    w->subscribed = 1;
    watch_read(w);
  } else {
    (void)dibba_redis_sub_subscribe(t->sub, w->chan, strlen(w->chan));
  }
}

static void ws_message(dibba_ws_t *ws, int opcode, const char *msg, size_t len, void *data) {
  (void)ws, (void)opcode, (void)msg, (void)len, (void)data;
}

static void ws_close(dibba_ws_t *ws, int code, void *data) {
  watcher_t *w = dibba_ws_get_data(ws);
  (void)code, (void)data;
  if (w == NULL)
    return;
  watcher_unlink(w);
  /* A record read may still be in flight: it holds a ws reference and checks w->done. */
  w->done = 1;
  w->ws = NULL;
  dibba_ws_set_data(ws, NULL);
  free(w);
}

static void on_event(dibba_redis_sub_t *s, const dibba_redis_sub_msg_t *m, void *data) {
  api_tasks_t *t = data;
  (void)s;
  if (m->kind == DIBBA_REDIS_SUB_SUBSCRIBED) {
    for (watcher_t *w = t->watchers; w; w = w->next)
      if (!w->subscribed && strlen(w->chan) == m->channel_len && memcmp(w->chan, m->channel, m->channel_len) == 0) {
        w->subscribed = 1;
        watch_read(w);
      }
    return;
  }
  if (m->kind != DIBBA_REDIS_SUB_MESSAGE)
    return;
  json_t *ev = NULL;
  for (watcher_t *w = t->watchers; w; w = w->next) {
    if (!w->subscribed || strlen(w->chan) != m->channel_len || memcmp(w->chan, m->channel, m->channel_len) != 0)
      continue;
    if (ev == NULL && (ev = json_loadb(m->payload, m->payload_len, 0, NULL)) == NULL)
      return;
    long long seq = json_integer_value(json_object_get(ev, "seq"));
    if (seq <= w->seq)
      continue; /* dedupe: already sent through the record */
    w->seq = seq;
    watch_send(w, ev);
  }
  json_decref(ev);
}

static void on_resub(dibba_redis_sub_t *s, void *data) {
  api_tasks_t *t = data;
  (void)s;
  /* Events published while we were disconnected are lost: read every watched record again. */
  for (watcher_t *w = t->watchers; w; w = w->next)
    if (w->subscribed && !w->done)
      watch_read(w);
}

/* ---- life cycle ---- */

static const dibba_ws_ops_t watch_ops = {.on_open = ws_open, .on_message = ws_message, .on_close = ws_close};

int api_tasks_new(uv_loop_t *loop, const dibba_config_t *cfg, dibba_redis_t *redis, dibba_http_router_t *router,
                  const uint8_t *routing_key, size_t keylen, api_tasks_t **out, char *err, size_t errlen) {
  const char *prefix;
  int64_t hb, wait_n, wait_ms;
  dibba_redis_options_t ro;
  int rc;
  *out = NULL;
  if ((rc = dibba_config_str(cfg, "redis.prefix", "dibba:", &prefix, err, errlen)) < 0 ||
      (rc = dibba_config_int(cfg, "worker.heartbeat_seconds", 5, 1, 3600, &hb, err, errlen)) < 0 ||
      (rc = dibba_config_int(cfg, "redis.wait_replicas", 0, 0, 64, &wait_n, err, errlen)) < 0 ||
      (rc = dibba_config_int(cfg, "redis.wait_timeout_ms", 1000, 1, 60000, &wait_ms, err, errlen)) < 0 ||
      (rc = dibba_redis_options_from_config(cfg, &ro, err, errlen)) < 0)
    return rc;
  api_tasks_t *t = dibba_xcalloc(1, sizeof *t);
  t->loop = loop;
  t->r = redis;
  t->prefix = dibba_xstrdup(prefix);
  t->hb_ms = hb * 1000;
  t->wait_replicas = wait_n;
  t->wait_timeout_ms = wait_ms;
  if ((rc = dibba_task_key_init(&t->key, routing_key, keylen)) < 0) {
    dibba_error_set(err, errlen, rc, "task.routing_key: unusable");
    goto fail;
  }
  dibba_redis_sub_options_t so = {.conn = ro, .on_message = on_event, .on_resubscribed = on_resub, .data = t};
  so.conn.name = "task-events";
  if ((rc = dibba_redis_sub_new(loop, &so, &t->sub, err, errlen)) < 0)
    goto fail;
  const dibba_http_route_t routes[] = {
      {.method = "GET",
       .pattern = "/get_worker_node_data",
       .handler = h_node_data,
       .data = t,
       .role = DIBBA_ROLE_OPERATOR,
       .summary = "Submit get_worker_node_info to ?host_name="},
      {.method = "GET",
       .pattern = "/get_worker_node_ip",
       .handler = h_node_ip,
       .data = t,
       .role = DIBBA_ROLE_OPERATOR,
       .summary = "Submit get_host_ip to ?host_name="},
      {.method = "GET",
       .pattern = "/get_worker_usage_data",
       .handler = h_usage,
       .data = t,
       .role = DIBBA_ROLE_OPERATOR,
       .summary = "Submit get_usage to ?host_name="},
      {.method = "GET",
       .pattern = "/task/{task_id}",
       .handler = h_task,
       .data = t,
       .role = DIBBA_ROLE_VIEWER,
       .summary = "A task's status, result and progress"},
      {.method = "GET",
       .pattern = "/v1/tasks/{task_id}",
       .handler = h_task,
       .data = t,
       .role = DIBBA_ROLE_VIEWER,
       .summary = "A task's status, result and progress"},
      {.method = "POST",
       .pattern = "/v1/tasks",
       .handler = h_submit,
       .data = t,
       .role = DIBBA_ROLE_OPERATOR,
       .body = DIBBA_HTTP_BODY_JSON,
       .summary = "Submit a task {name, host|role, args, countdown, expires, max_retries}"},
      {.method = "POST",
       .pattern = "/v1/tasks/{task_id}/revoke",
       .handler = h_revoke,
       .data = t,
       .role = DIBBA_ROLE_OPERATOR,
       .summary = "Revoke a task"},
      {.method = "GET",
       .pattern = "/v1/nodes",
       .handler = h_nodes,
       .data = t,
       .role = DIBBA_ROLE_VIEWER,
       .summary = "Worker nodes from their heartbeats"},
      {.method = "GET",
       .pattern = "/v1/nodes/{host}",
       .handler = h_nodes,
       .data = t,
       .role = DIBBA_ROLE_VIEWER,
       .summary = "One worker node"},
      {.method = "GET",
       .pattern = "/v1/tasks/{task_id}/watch",
       .data = t,
       .role = DIBBA_ROLE_VIEWER,
       .ws = &watch_ops,
       .summary = "WebSocket: the task's state, then every change until it is final"},
      {.method = "GET",
       .pattern = "/task/{task_id}/watch",
       .data = t,
       .role = DIBBA_ROLE_VIEWER,
       .ws = &watch_ops,
       .summary = "WebSocket: the task's state, then every change until it is final"},
  };
  for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
    if ((rc = dibba_http_router_add(router, &routes[i])) < 0) {
      dibba_error_set(err, errlen, rc, "route %s %s", routes[i].method, routes[i].pattern);
      goto fail;
    }
  *out = t;
  return 0;
fail:
  /* Routes already added point at t: a failed start stops the daemon before any request is served. */
  if (t->sub) {
    dibba_redis_sub_close(t->sub, NULL);
    t->sub = NULL;
  }
  dibba_task_key_free(&t->key);
  free(t->prefix);
  free(t);
  return rc;
}

static void sub_closed(dibba_redis_sub_t *s, void *data) {
  api_tasks_t *t = data;
  (void)s;
  void (*cb)(void *) = t->close_cb;
  void *cd = t->close_data;
  dibba_task_key_free(&t->key);
  free(t->prefix);
  free(t);
  if (cb)
    cb(cd);
}

void api_tasks_close(api_tasks_t *t, void (*cb)(void *data), void *data) {
  if (t == NULL)
    return;
  t->close_cb = cb;
  t->close_data = data;
  /* The server is shut down first, so every watcher has had its on_close. */
  dibba_redis_sub_close(t->sub, sub_closed);
}
