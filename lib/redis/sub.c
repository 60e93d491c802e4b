/* SPDX-License-Identifier: Apache-2.0 */
/* Pub/sub subscriber on its own connection: remembers subscriptions and restores them after reconnects. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "dibba/alloc.h"
#include "dibba/log.h"
#include "redis_int.h"

#define SUB_MAX 4096
#define NAME_MAX_BYTES 65536

typedef struct {
  char *name;
  size_t len;
  int pattern;
} sub_entry_t;

struct dibba_redis_sub_s {
  dibba_redis_t *r;
  dibba_redis_sub_cb on_message;
  dibba_redis_sub_event_cb on_resubscribed;
  void *data;
  sub_entry_t *subs;
  size_t n, alloc;
  size_t confirm_pending; /* (p)subscribe confirmations still due for the batch sent at connect */
  int closing;
  dibba_redis_sub_close_cb close_cb;
};

static void on_sub_reply(redisAsyncContext *ac, void *reply_, void *privdata) {
  dibba_redis_sub_t *s = privdata;
  redisReply *reply = reply_;
  if (reply == NULL || s->closing)
    return; /* the context is going away */
  if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 3 || reply->element[0]->type != REDIS_REPLY_STRING)
    return;
  const char *kind = reply->element[0]->str;
  dibba_redis_sub_msg_t m;
  memset(&m, 0, sizeof m);
  redisReply **e = reply->element;
  if (strcasecmp(kind, "message") == 0) {
    m.kind = DIBBA_REDIS_SUB_MESSAGE;
    m.channel = e[1]->str;
    m.channel_len = e[1]->len;
    m.payload = e[2]->str;
    m.payload_len = e[2]->len;
  } else if (strcasecmp(kind, "pmessage") == 0 && reply->elements >= 4) {
    m.kind = DIBBA_REDIS_SUB_MESSAGE;
    m.is_pattern = 1;
    m.pattern = e[1]->str;
    m.pattern_len = e[1]->len;
    m.channel = e[2]->str;
    m.channel_len = e[2]->len;
    m.payload = e[3]->str;
    m.payload_len = e[3]->len;
  } else if (strcasecmp(kind, "subscribe") == 0 || strcasecmp(kind, "psubscribe") == 0) {
    m.kind = DIBBA_REDIS_SUB_SUBSCRIBED;
    m.is_pattern = kind[0] == 'p' || kind[0] == 'P';
    m.channel = e[1]->str;
    m.channel_len = e[1]->len;
  } else if (strcasecmp(kind, "unsubscribe") == 0 || strcasecmp(kind, "punsubscribe") == 0) {
    m.kind = DIBBA_REDIS_SUB_UNSUBSCRIBED;
    m.is_pattern = kind[0] == 'p' || kind[0] == 'P';
    m.channel = e[1]->str;
    m.channel_len = e[1]->len;
  } else {
    return;
  }
  if (s->on_message)
    s->on_message(s, &m, s->data);
  if (m.kind == DIBBA_REDIS_SUB_SUBSCRIBED && s->confirm_pending > 0 && --s->confirm_pending == 0 &&
      s->on_resubscribed && !s->closing)
    s->on_resubscribed(s, s->data);
}

/* Send one (P)SUBSCRIBE/(P)UNSUBSCRIBE for every entry of the given kind (or just e when not NULL). */
static void send_sub(dibba_redis_sub_t *s, redisAsyncContext *ac, const char *verb, int pattern,
                     const sub_entry_t *only) {
  size_t n = 0;
  for (size_t i = 0; i < s->n; i++)
    n += s->subs[i].pattern == pattern;
  if (only)
    n = 1;
  if (n == 0)
    return;
  const char **argv = dibba_xcalloc(n + 1, sizeof *argv);
  size_t *lens = dibba_xcalloc(n + 1, sizeof *lens);
  argv[0] = verb;
  lens[0] = strlen(verb);
  size_t k = 1;
  if (only) {
    argv[k] = only->name;
    lens[k++] = only->len;
  } else {
    for (size_t i = 0; i < s->n; i++)
      if (s->subs[i].pattern == pattern) {
        argv[k] = s->subs[i].name;
        lens[k++] = s->subs[i].len;
      }
  }
  redisAsyncCommandArgv(ac, on_sub_reply, s, (int)k, argv, lens);
  free(argv);
  free(lens);
}

static void on_ready(dibba_redis_t *r, redisAsyncContext *ac, void *data) {
  dibba_redis_sub_t *s = data;
  s->confirm_pending = s->n;
  send_sub(s, ac, "SUBSCRIBE", 0, NULL);
  send_sub(s, ac, "PSUBSCRIBE", 1, NULL);
  if (s->confirm_pending == 0 && s->on_resubscribed && !s->closing)
    s->on_resubscribed(s, s->data);
}

static const dibba__redis_hooks_t sub_hooks = {on_ready};

static ssize_t find(const dibba_redis_sub_t *s, const char *name, size_t len, int pattern) {
  for (size_t i = 0; i < s->n; i++)
    if (s->subs[i].pattern == pattern && s->subs[i].len == len && memcmp(s->subs[i].name, name, len) == 0)
      return (ssize_t)i;
  return -1;
}

static int add(dibba_redis_sub_t *s, const char *name, size_t len, int pattern) {
  if (s->closing)
    return UV_ECANCELED;
  if (name == NULL || len == 0)
    return -EINVAL;
  if (len > NAME_MAX_BYTES || s->n >= SUB_MAX)
    return -E2BIG;
  if (find(s, name, len, pattern) >= 0)
    return -EALREADY;
  if (s->n == s->alloc) {
    s->alloc = s->alloc ? s->alloc * 2 : 8;
    s->subs = dibba_xreallocarray(s->subs, s->alloc, sizeof *s->subs);
  }
  sub_entry_t *e = &s->subs[s->n++];
  e->name = dibba_xmalloc(len);
  memcpy(e->name, name, len);
  e->len = len;
  e->pattern = pattern;
  redisAsyncContext *ac = dibba__redis_ready_ac(s->r);
  if (ac) /* otherwise it goes out with the batch when the connection is ready */
    send_sub(s, ac, pattern ? "PSUBSCRIBE" : "SUBSCRIBE", pattern, e);
  return 0;
}

static int del(dibba_redis_sub_t *s, const char *name, size_t len, int pattern) {
  if (s->closing)
    return UV_ECANCELED;
  ssize_t i = find(s, name, len, pattern);
  if (i < 0)
    return -ENOENT;
  /* Only unsubscribe what was sent on this context: hiredis 0.14 asserts on unexpected unsubscribe replies. */
  redisAsyncContext *ac = dibba__redis_ready_ac(s->r);
  if (ac)
    send_sub(s, ac, pattern ? "PUNSUBSCRIBE" : "UNSUBSCRIBE", pattern, &s->subs[i]);
  free(s->subs[i].name);
  s->subs[i] = s->subs[--s->n];
  return 0;
}

int dibba_redis_sub_subscribe(dibba_redis_sub_t *s, const char *c, size_t len) { return add(s, c, len, 0); }
int dibba_redis_sub_psubscribe(dibba_redis_sub_t *s, const char *p, size_t len) { return add(s, p, len, 1); }
int dibba_redis_sub_unsubscribe(dibba_redis_sub_t *s, const char *c, size_t len) { return del(s, c, len, 0); }
int dibba_redis_sub_punsubscribe(dibba_redis_sub_t *s, const char *p, size_t len) { return del(s, p, len, 1); }

int dibba_redis_sub_new(uv_loop_t *loop, const dibba_redis_sub_options_t *opts, dibba_redis_sub_t **out, char *err,
                        size_t errlen) {
  dibba_redis_sub_t *s = dibba_xcalloc(1, sizeof *s);
  s->on_message = opts->on_message;
  s->on_resubscribed = opts->on_resubscribed;
  s->data = opts->data;
  int rc = dibba__redis_new(loop, &opts->conn, &sub_hooks, s, &s->r, err, errlen);
  if (rc < 0) {
    free(s);
    return rc;
  }
  *out = s;
  return 0;
}

static void conn_closed(dibba_redis_t *r, void *data) {
  dibba_redis_sub_t *s = NULL;
  /* r's data is the user's conn.data; find s through the hook data instead. */
  (void)data;
  s = dibba__redis_hook_data(r);
  if (s->close_cb)
    s->close_cb(s, s->data);
  for (size_t i = 0; i < s->n; i++)
    free(s->subs[i].name);
  free(s->subs);
  free(s);
}

int dibba_redis_sub_close(dibba_redis_sub_t *s, dibba_redis_sub_close_cb cb) {
  if (s == NULL)
    return -EINVAL;
  if (s->closing)
    return UV_EALREADY;
  s->closing = 1;
  s->close_cb = cb;
  return dibba_redis_close(s->r, conn_closed);
}

dibba_redis_t *dibba_redis_sub_conn(dibba_redis_sub_t *s) { return s->r; }
void *dibba_redis_sub_data(const dibba_redis_sub_t *s) { return s->data; }
