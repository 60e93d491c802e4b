/* SPDX-License-Identifier: Apache-2.0 */
/* GET /v1/events: the dashboards' live task stream. One subscriber per API process PSUBSCRIBEs
 * <prefix>task:*:ev while any client is connected; each event gets the task's name, worker and target from its
 * record (one HMGET on the API's command connection, answered in order, so events keep their order) and goes to
 * every client whose state filter accepts it. A client that cannot keep up is closed, never buffered for. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dibba/alloc.h"
#include "dibba/error.h"
#include "dibba/id.h"
#include "dibba/log.h"
#include "dibba/task.h"
#include "dibba/websocket.h"

#include "events.h"

#define EVENTS_MAX_PENDING 1024        /* events waiting for their record look-up */
#define EVENTS_MAX_PAYLOAD (64u << 10) /* a task event is a few hundred bytes; anything bigger is not one */
#define EVENTS_MAX_CLIENT_MSG 4096
#define STATE_BITS_ALL 0u /* no filter */

typedef struct client_s client_t;
typedef struct pending_s pending_t;

struct api_events_s {
  uv_loop_t *loop;
  dibba_redis_t *r;
  dibba_redis_sub_t *sub;
  char *prefix, *pattern;
  client_t *clients;
  size_t nclients, max_clients, queue_bytes;
  pending_t *head, *tail;
  size_t npending;
  int psubscribed; /* PSUBSCRIBE asked for (some client is connected) */
  int live;        /* ... and confirmed on the current connection */
  int closing;
  void (*close_cb)(void *);
  void *close_data;
  uint64_t events_in, events_out, filtered, dropped, slow_closes, refused;
};

struct client_s {
  client_t *next, **pprev;
  api_events_t *e;
  dibba_ws_t *ws;
  unsigned states; /* bit per dibba_task_state_t; STATE_BITS_ALL: every state */
  int ready, closing;
};

/* One event in arrival order; sent once its look-up (and every earlier one) has answered. */
struct pending_s {
  pending_t *next;
  api_events_t *e;
  json_t *ev;
  unsigned bit;
  int done;
};

static void maybe_free(api_events_t *e);

static unsigned state_bit(const char *s) {
  dibba_task_state_t st;
  if (s == NULL || dibba_task_state_parse(s, &st) < 0 || (unsigned)st >= 31)
    return 1u << 31; /* unknown: only unfiltered clients get it */
  return 1u << (unsigned)st;
}

static int wants(const client_t *c, unsigned bit) { return c->states == STATE_BITS_ALL || (c->states & bit) != 0; }

/* Send text to one client, or close it when its output queue is over the limit (it is not reading). */
static void client_send(client_t *c, const char *msg, size_t len) {
  api_events_t *e = c->e;
  if (c->closing)
    return;
  if (dibba_http_req_write_queue(dibba_ws_request(c->ws)) > e->queue_bytes) {
    c->closing = 1;
    e->slow_closes++;
    dibba_log_warn("events", json_pack("{s:s}", "remote", dibba_http_req_remote(dibba_ws_request(c->ws))),
                   "dashboard client too slow; closing it");
    dibba_ws_close(c->ws, 1008, "too slow: events are not being read");
    return;
  }
  int rc = dibba_ws_send_text(c->ws, msg, len);
  if (rc < 0 && rc != UV_ENOTCONN) {
    c->closing = 1;
    dibba_ws_close(c->ws, 1011, "cannot send");
  }
}

static void client_send_json(client_t *c, json_t *msg) {
  char *s = json_dumps(msg, JSON_COMPACT);
  client_send(c, s, strlen(s));
  free(s);
  json_decref(msg);
}

/* ---- fan-out ---- */

static void fan_out(api_events_t *e, pending_t *p) {
  char *s = NULL;
  size_t len = 0;
  for (client_t *c = e->clients, *next; c; c = next) {
    next = c->next;
    if (!c->ready || c->closing || !wants(c, p->bit))
      continue;
    if (s == NULL) {
      s = json_dumps(p->ev, JSON_COMPACT);
      len = strlen(s);
    }
    client_send(c, s, len);
    e->events_out++;
  }
  free(s);
}

static void flush(api_events_t *e) {
  while (e->head && e->head->done) {
    pending_t *p = e->head;
    e->head = p->next;
    if (e->head == NULL)
      e->tail = NULL;
    e->npending--;
    if (!e->closing)
      fan_out(e, p);
    json_decref(p->ev);
    free(p);
  }
  if (e->closing)
    maybe_free(e);
}

static void set_str(json_t *ev, const char *key, const redisReply *v) {
  const char *s;
  size_t n;
  if (v && dibba_redis_reply_str(v, &s, &n) == 0 && n > 0) {
    json_t *j = json_stringn(s, n);
    if (j)
      json_object_set_new(ev, key, j);
  }
}

static void lookup_done(dibba_redis_t *r, int status, redisReply *reply, void *data) {
  pending_t *p = data;
  (void)r;
  /* Without the record (expired, or Redis trouble) the event still goes out, just without the names. */
  if (status == 0 && reply && reply->type == REDIS_REPLY_ARRAY && reply->elements == 3) {
    set_str(p->ev, "name", dibba_redis_reply_at(reply, 0));
    set_str(p->ev, "worker", dibba_redis_reply_at(reply, 1));
    set_str(p->ev, "target", dibba_redis_reply_at(reply, 2));
  }
  p->done = 1;
  flush(p->e);
}

static void on_task_event(api_events_t *e, const dibba_redis_sub_msg_t *m) {
  e->events_in++;
  if (m->payload_len > EVENTS_MAX_PAYLOAD) {
    e->dropped++;
    return;
  }
  json_t *ev = json_loadb(m->payload, m->payload_len, 0, NULL);
  const char *id = json_string_value(json_object_get(ev, "task_id"));
  if (!json_is_object(ev) || id == NULL || !dibba_id_valid(id)) {
    json_decref(ev);
    e->dropped++;
    return;
  }
  unsigned bit = state_bit(json_string_value(json_object_get(ev, "status")));
  int anyone = 0;
  for (client_t *c = e->clients; c && !anyone; c = c->next)
    anyone = c->ready && !c->closing && wants(c, bit);
  if (!anyone || e->npending >= EVENTS_MAX_PENDING) {
    /* Nobody wants it, or record look-ups are this far behind: Redis is struggling, do not add to it. */
    if (anyone)
      e->dropped++;
    else
      e->filtered++;
    json_decref(ev);
    return;
  }
  /* Results can be large and dashboards show states: clients that want one read GET /v1/tasks/{id}. */
  if (json_object_get(ev, "result")) {
    json_object_del(ev, "result");
    json_object_set_new(ev, "hasResult", json_true());
  }
  json_object_set_new(ev, "type", json_string("task"));
  pending_t *p = dibba_xcalloc(1, sizeof *p);
  p->e = e;
  p->ev = ev;
  p->bit = bit;
  if (e->tail)
    e->tail->next = p;
  else
    e->head = p;
  e->tail = p;
  e->npending++;
  if (dibba_redis_command(e->r, lookup_done, p, NULL, "HMGET %stask:%s name worker target", e->prefix, id) < 0) {
    p->done = 1;
    flush(e);
  }
}

/* ---- the subscriber ---- */

static void set_ready_all(api_events_t *e) {
  for (client_t *c = e->clients, *next; c; c = next) {
    next = c->next;
    if (!c->ready && !c->closing) {
      c->ready = 1;
      client_send_json(c, json_pack("{s:s}", "type", "ready"));
    }
  }
}

static void on_sub(dibba_redis_sub_t *s, const dibba_redis_sub_msg_t *m, void *data) {
  api_events_t *e = data;
  (void)s;
  int ours =
      m->is_pattern && m->channel_len == strlen(e->pattern) && memcmp(m->channel, e->pattern, m->channel_len) == 0;
  switch (m->kind) {
  case DIBBA_REDIS_SUB_SUBSCRIBED:
    if (ours && e->psubscribed) {
      e->live = 1;
      set_ready_all(e);
    }
    break;
  case DIBBA_REDIS_SUB_UNSUBSCRIBED:
    if (ours && !e->psubscribed)
      e->live = 0;
    break;
  case DIBBA_REDIS_SUB_MESSAGE:
    if (m->is_pattern && e->live && !e->closing)
      on_task_event(e, m);
    break;
  }
}

static void on_sub_disconnect(dibba_redis_t *r, int status, void *data) {
  api_events_t *e = data;
  (void)r;
  (void)status;
  /* Events published from now until the pattern is confirmed again are lost: tell the dashboards, which show
   * the stream as stale and re-read the tasks they show once "ready" comes again. */
  e->live = 0;
  for (client_t *c = e->clients, *next; c; c = next) {
    next = c->next;
    if (c->ready && !c->closing) {
      c->ready = 0;
      client_send_json(c, json_pack("{s:s,s:s}", "type", "lost", "detail", "event source unavailable"));
    }
  }
}

/* ---- WebSocket ---- */

static void ws_open(dibba_ws_t *ws, dibba_http_req_t *req, void *data) {
  api_events_t *e = data;
  (void)req;
  if (e->closing || e->nclients >= e->max_clients) {
    e->refused++;
    dibba_ws_close(ws, 1013, "too many dashboard clients");
    return;
  }
  client_t *c = dibba_xcalloc(1, sizeof *c);
  c->e = e;
  c->ws = ws;
  c->next = e->clients;
  if (c->next)
    c->next->pprev = &c->next;
  c->pprev = &e->clients;
  e->clients = c;
  e->nclients++;
  dibba_ws_set_data(ws, c);
  if (!e->psubscribed) {
    int rc = dibba_redis_sub_psubscribe(e->sub, e->pattern, strlen(e->pattern));
    if (rc < 0 && rc != -EALREADY) {
      c->closing = 1;
      dibba_ws_close(ws, 1011, "cannot subscribe to events");
      return;
    }
    e->psubscribed = 1;
  } else if (e->live) {
    c->ready = 1;
    client_send_json(c, json_pack("{s:s}", "type", "ready"));
  }
}

static json_t *states_json(unsigned states) {
  json_t *a = json_array();
  for (unsigned st = 0; st < 31; st++)
    if (states & (1u << st))
      json_array_append_new(a, json_string(dibba_task_state_name((int)st)));
  return a;
}

/* {"filter": {"states": ["PROGRESS", ...]}}; an empty list or null means every state. */
static void ws_message(dibba_ws_t *ws, int opcode, const char *msg, size_t len, void *data) {
  client_t *c = dibba_ws_get_data(ws);
  const char *detail = NULL;
  json_t *j = NULL;
  unsigned states = STATE_BITS_ALL;
  (void)data;
  if (c == NULL || c->closing)
    return;
  if (opcode != DIBBA_WS_TEXT || len > EVENTS_MAX_CLIENT_MSG) {
    detail = "expected a JSON text message of at most 4096 bytes";
    goto out;
  }
  j = json_loadb(msg, len, 0, NULL);
  json_t *f = json_object_get(j, "filter");
  if (!json_is_object(j) || !json_is_object(f)) {
    detail = "expected {\"filter\": {\"states\": [...]}}";
    goto out;
  }
  json_t *sts = json_object_get(f, "states"), *v;
  size_t i;
  if (sts != NULL && !json_is_null(sts) && !json_is_array(sts)) {
    detail = "filter.states must be a list of task states";
    goto out;
  }
  json_array_foreach(sts, i, v) {
    dibba_task_state_t st;
    if (!json_is_string(v) || dibba_task_state_parse(json_string_value(v), &st) < 0) {
      detail = "filter.states: unknown task state";
      goto out;
    }
    states |= 1u << (unsigned)st;
  }
  c->states = states;
out:
  json_decref(j);
  if (detail)
    client_send_json(c, json_pack("{s:s,s:s}", "type", "error", "detail", detail));
  else
    client_send_json(c, json_pack("{s:s,s:o}", "type", "filter", "states", states_json(c->states)));
}

static void ws_close(dibba_ws_t *ws, int code, void *data) {
  client_t *c = dibba_ws_get_data(ws);
  api_events_t *e = data;
  (void)code;
  if (c == NULL)
    return;
  dibba_ws_set_data(ws, NULL);
  *c->pprev = c->next;
  if (c->next)
    c->next->pprev = c->pprev;
  e->nclients--;
  free(c);
  /* The last dashboard left: stop receiving every task event of the cluster. */
  if (e->nclients == 0 && e->psubscribed && !e->closing) {
    e->psubscribed = 0;
    (void)dibba_redis_sub_punsubscribe(e->sub, e->pattern, strlen(e->pattern));
  }
}

static const dibba_ws_ops_t events_ops = {.on_open = ws_open, .on_message = ws_message, .on_close = ws_close};

/* ---- life cycle ---- */

int api_events_new(uv_loop_t *loop, const dibba_config_t *cfg, dibba_redis_t *redis, dibba_http_router_t *router,
                   api_events_t **out, char *err, size_t errlen) {
  const char *prefix;
  int64_t maxc, qb;
  dibba_redis_options_t ro;
  int rc;
  *out = NULL;
  if ((rc = dibba_config_str(cfg, "redis.prefix", "dibba:", &prefix, err, errlen)) < 0 ||
      (rc = dibba_config_int(cfg, "api.events_max_clients", 256, 1, 65536, &maxc, err, errlen)) < 0 ||
      (rc = dibba_config_int(cfg, "api.events_queue_bytes", 256 << 10, 4096, 64 << 20, &qb, err, errlen)) < 0 ||
      (rc = dibba_redis_options_from_config(cfg, &ro, err, errlen)) < 0)
    return rc;
  api_events_t *e = dibba_xcalloc(1, sizeof *e);
  e->loop = loop;
  e->r = redis;
  e->prefix = dibba_xstrdup(prefix);
  e->pattern = dibba_xasprintf("%stask:*:ev", prefix);
  e->max_clients = (size_t)maxc;
  e->queue_bytes = (size_t)qb;
  dibba_redis_sub_options_t so = {.conn = ro, .on_message = on_sub, .data = e};
  so.conn.name = "dashboard-events";
  so.conn.on_disconnect = on_sub_disconnect;
  so.conn.data = e;
  if ((rc = dibba_redis_sub_new(loop, &so, &e->sub, err, errlen)) < 0)
    goto fail;
  const dibba_http_route_t route = {
      .method = "GET",
      .pattern = "/v1/events",
      .data = e,
      .role = DIBBA_ROLE_VIEWER,
      .ws = &events_ops,
      .summary = "WebSocket: every task event, live, with {\"filter\": {\"states\": [...]}} from the client",
  };
  if ((rc = dibba_http_router_add(router, &route)) < 0) {
    dibba_error_set(err, errlen, rc, "route GET /v1/events");
    goto fail;
  }
  *out = e;
  return 0;
fail:
  if (e->sub)
    dibba_redis_sub_close(e->sub, NULL);
  free(e->pattern);
  free(e->prefix);
  free(e);
  return rc;
}

static void maybe_free(api_events_t *e) {
  if (!e->closing || e->sub != NULL || e->npending > 0)
    return;
  void (*cb)(void *) = e->close_cb;
  void *cd = e->close_data;
  free(e->pattern);
  free(e->prefix);
  free(e);
  if (cb)
    cb(cd);
}

static void sub_closed(dibba_redis_sub_t *s, void *data) {
  api_events_t *e = data;
  (void)s;
  e->sub = NULL;
  maybe_free(e);
}

void api_events_close(api_events_t *e, void (*cb)(void *data), void *data) {
  if (e == NULL || e->closing)
    return;
  e->closing = 1;
  e->close_cb = cb;
  e->close_data = data;
  if (dibba_redis_sub_close(e->sub, sub_closed) < 0) {
    e->sub = NULL;
    maybe_free(e);
  }
}

void api_events_metrics(const api_events_t *e, dibba_buf_t *out) {
  if (e == NULL)
    return;
  dibba_buf_printf(out,
                   "# HELP dibba_events_clients Connected /v1/events clients.\n"
                   "# TYPE dibba_events_clients gauge\n"
                   "dibba_events_clients %zu\n"
                   "# HELP dibba_events_received_total Task events received by the dashboard subscriber.\n"
                   "# TYPE dibba_events_received_total counter\n"
                   "dibba_events_received_total %llu\n"
                   "# HELP dibba_events_sent_total Task events sent to dashboard clients (one per client).\n"
                   "# TYPE dibba_events_sent_total counter\n"
                   "dibba_events_sent_total %llu\n"
                   "# HELP dibba_events_filtered_total Task events no client's filter wanted.\n"
                   "# TYPE dibba_events_filtered_total counter\n"
                   "dibba_events_filtered_total %llu\n"
                   "# HELP dibba_events_dropped_total Task events dropped (malformed, or look-ups too far behind).\n"
                   "# TYPE dibba_events_dropped_total counter\n"
                   "dibba_events_dropped_total %llu\n"
                   "# HELP dibba_events_slow_closes_total Clients closed with 1008 for not reading their events.\n"
                   "# TYPE dibba_events_slow_closes_total counter\n"
                   "dibba_events_slow_closes_total %llu\n"
                   "# HELP dibba_events_refused_total Clients refused with 1013 over api.events_max_clients.\n"
                   "# TYPE dibba_events_refused_total counter\n"
                   "dibba_events_refused_total %llu\n",
                   e->nclients, (unsigned long long)e->events_in, (unsigned long long)e->events_out,
                   (unsigned long long)e->filtered, (unsigned long long)e->dropped, (unsigned long long)e->slow_closes,
                   (unsigned long long)e->refused);
}
