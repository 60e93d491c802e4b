/* SPDX-License-Identifier: Apache-2.0 */
/* The worker side of the task transport: XREADGROUP per route, verify, run through the registry, store the
 * outcome and ack atomically, reclaim idle entries, move delayed tasks, obey revokes, stop gracefully. */
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
#include "task_int.h"

#define KEYLEN 512
#define HANDBACK_IDLE "1000000000" /* ms: older than any visibility timeout, so it is claimed at once */
#define STOP_HARD_MS 5000          /* after the grace, how long results may still take to reach Redis */

typedef struct ctask_s ctask_t;
typedef struct route_s route_t;

enum { P_START = 1, P_RUN, P_FINISH, P_HANDBACK };

struct route_s {
  dibba_task_consumer_t *c;
  char route[DIBBA_ROUTE_LEN + 1];
  char stream[KEYLEN];
  dibba_redis_t *rd; /* blocking reads only */
  int reading, group_ok, group_pending, draining, claiming, want_read;
  char cursor[64];
  uint32_t limit, inflight;
  ctask_t **starting; /* read but not yet sent: their STARTED goes out in one call (flush_starts) */
  size_t nstarting;
};

struct ctask_s {
  ctask_t *prev, *next;
  dibba_task_consumer_t *c;
  route_t *rt;
  Dibba__V1__TaskEnvelope *env;
  char entry[64];
  char runid[DIBBA_ID_LEN + 1];
  char rkey[KEYLEN];
  dibba_task_run_t run;
  int phase, run_started, run_done, resend, handback, sent;
  /* the outcome, kept so the final write can be re-sent after a lost reply */
  int fin_state;
  char *fin_result, *fin_error;
  dibba_envelope_wire_t retry;
  int64_t retry_due;
};

struct dibba_task_consumer_s {
  uv_loop_t *loop;
  char *prefix, *consumer;
  const dibba_task_key_t *key;
  const dibba_task_registry_t *reg;
  route_t *routes;
  size_t nroutes;
  dibba_redis_t *cmd;
  dibba_redis_sub_t *sub;
  uv_timer_t tick;
  uv_check_t after_io; /* reads wanted by tasks that ended during this loop turn are sent here, as one read */
  ctask_t head;        /* circular list of tasks in flight */
  uint32_t vis_ms, block_ms, ttl_s, tick_ms;
  uint32_t wait_replicas, wait_timeout_ms; /* final writes: WAIT (0: off) */
  uint64_t wait_short;                     /* final writes fewer replicas acknowledged (logged) */
  uint64_t next_claim, next_touch;
  int moving;
  dibba_task_consumer_stats_t st;
  /* stopping */
  int stopping, closing, cancelled_rest;
  uint64_t grace_deadline, hard_deadline;
  int pending_closes;
  dibba_task_consumer_stop_cb stop_cb;
  void *stop_data;
  char revoked_key[KEYLEN], delayed_key[KEYLEN], revoke_chan[KEYLEN];
};

static void start_read(route_t *rt);
static void send_state(ctask_t *t);
static void maybe_close(dibba_task_consumer_t *c);

/* prefix + "task:" + id + suffix into out (KEYLEN), truncated like snprintf; hot enough to avoid printf. */
static void task_key(char out[KEYLEN], const char *prefix, const char *id, const char *suffix) {
  const char *parts[] = {prefix, "task:", id, suffix};
  size_t o = 0;
  for (size_t i = 0; i < 4; i++) {
    size_t n = strlen(parts[i]);
    if (n > KEYLEN - 1 - o)
      n = KEYLEN - 1 - o;
    memcpy(out + o, parts[i], n);
    o += n;
  }
  out[o] = '\0';
}

/* Decimal v into out (at least 21 bytes), NUL-terminated; returns out. */
static char *fmt_i64(char *out, int64_t v) {
  char tmp[24];
  size_t n = 0, o = 0;
  uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
  do {
    tmp[n++] = (char)('0' + u % 10);
    u /= 10;
  } while (u);
  if (v < 0)
    out[o++] = '-';
  while (n)
    out[o++] = tmp[--n];
  out[o] = '\0';
  return out;
}

static json_t *lf(const ctask_t *t) {
  return json_pack("{s:s, s:s, s:s}", "task_id", t->env ? t->env->id : "", "task", t->env ? t->env->name : "", "entry",
                   t->entry);
}

/* ---- task list ---- */

static ctask_t *find_entry(dibba_task_consumer_t *c, route_t *rt, const char *id, size_t len) {
  for (ctask_t *t = c->head.next; t != &c->head; t = t->next)
    if (t->rt == rt && strlen(t->entry) == len && memcmp(t->entry, id, len) == 0)
      return t;
  return NULL;
}

static void task_free(ctask_t *t) {
  dibba_task_consumer_t *c = t->c;
  route_t *rt = t->rt;
  t->prev->next = t->next;
  t->next->prev = t->prev;
  rt->inflight--;
  if (t->run_started)
    dibba_task_run_free(&t->run);
  dibba_envelope_free(t->env);
  free(t->fin_result);
  free(t->fin_error);
  dibba_envelope_wire_free(&t->retry);
  free(t);
  if (c->stopping)
    maybe_close(c);
  else
    rt->want_read = 1; /* after_io: one read for all the slots freed in this turn, not one read per slot */
}

/* ---- acks of entries that are never run ---- */

static void ignore_reply(dibba_redis_t *r, int status, redisReply *reply, void *data) {
  (void)r, (void)reply, (void)data, (void)status;
}

static void ack_only(route_t *rt, const char *id, size_t len) {
  char idz[64];
  snprintf(idz, sizeof idz, "%.*s", (int)(len < 63 ? len : 63), id);
  const char *a1[] = {"XACK", rt->stream, DIBBA_TASK_GROUP, idz};
  const char *a2[] = {"XDEL", rt->stream, idz};
  dibba_redis_argv_t cmds[] = {{4, a1, NULL}, {3, a2, NULL}};
  dibba_redis_cmd_opts_t o = {.flags = DIBBA_REDIS_QUEUE};
  (void)dibba_redis_multi(rt->c->cmd, ignore_reply, NULL, &o, 2, cmds);
}

/* ---- the state script ---- */

typedef struct state_args_s {
  const char *state, *progress, *result, *error, *entry, *runid;
  int final, check_revoked;
  const dibba_envelope_wire_t *retry;
  int64_t retry_due;
  uint32_t attempt;
} state_args_t;

static int eval_state(dibba_task_consumer_t *c, route_t *rt, const char *id, const state_args_t *a, dibba_redis_cb cb,
                      void *data) {
  char rkey[KEYLEN], chan[KEYLEN], now_s[24], ttl_s[24], due_s[24], att_s[24];
  task_key(rkey, c->prefix, id, "");
  task_key(chan, c->prefix, id, ":ev");
  fmt_i64(now_s, dibba_now_ms());
  fmt_i64(ttl_s, c->ttl_s);
  fmt_i64(due_s, a->retry_due);
  fmt_i64(att_s, a->attempt);
  int has_retry = a->retry && a->retry->e;
  const char *argv[] = {rkey,
                        rt->stream,
                        id,
                        a->state,
                        now_s,
                        c->consumer,
                        a->progress ? a->progress : "",
                        chan,
                        a->result ? a->result : "",
                        a->error ? a->error : "",
                        a->final ? "1" : "0",
                        ttl_s,
                        a->entry ? a->entry : "",
                        c->revoked_key,
                        a->check_revoked ? "1" : "0",
                        a->runid ? a->runid : "",
                        c->delayed_key,
                        has_retry ? (const char *)a->retry->e : "",
                        has_retry ? (const char *)a->retry->m : "",
                        due_s,
                        att_s};
  size_t n = sizeof argv / sizeof argv[0], len[sizeof argv / sizeof argv[0]];
  for (size_t i = 0; i < n; i++)
    len[i] = i == 17 || i == 18 ? 0 : strlen(argv[i]);
  len[17] = has_retry ? a->retry->elen : 0;
  len[18] = has_retry ? DIBBA_ENVELOPE_MAC_LEN : 0;
  dibba_redis_cmd_opts_t o = {.flags = DIBBA_REDIS_QUEUE};
  if (c->wait_replicas > 0 && (a->final || has_retry)) {
    o.flags |= DIBBA_REDIS_WAIT_REPLICAS;
    o.wait_replicas = c->wait_replicas;
    o.wait_timeout_ms = c->wait_timeout_ms;
  }
  return dibba_redis_eval(c->cmd, &dibba__lua_state, cb, data, &o, 2, (int)n, argv, len);
}

/* ---- running ---- */

static char *error_json(const char *code, const char *msg) {
  json_t *j = json_pack("{s:s, s:s}", "code", code ? code : "EIO", "message", msg ? msg : "");
  char *s = json_dumps(j, JSON_COMPACT);
  json_decref(j);
  return s;
}

static void handback_done(dibba_redis_t *r, int status, redisReply *reply, void *data) {
  ctask_t *t = data;
  (void)r, (void)reply, (void)status;
  t->c->st.handed_back++;
  task_free(t);
}

static void send_handback(ctask_t *t) {
  const char *argv[] = {"XCLAIM", t->rt->stream, DIBBA_TASK_GROUP, t->c->consumer, "0",
                        t->entry, "IDLE",        HANDBACK_IDLE,    "JUSTID"};
  dibba_redis_cmd_opts_t o = {.flags = DIBBA_REDIS_QUEUE};
  t->phase = P_HANDBACK;
  dibba_log_info("task", lf(t), "handing back an unfinished task");
  if (dibba_redis_command_argv(t->c->cmd, handback_done, t, &o, 9, argv, NULL) < 0)
    task_free(t);
}

static void on_run_done(dibba_task_run_t *r) {
  ctask_t *t = r->data;
  t->run_done = 1;
  if (t->handback) {
    send_handback(t);
    return;
  }
  t->phase = P_FINISH;
  t->fin_state = r->state;
  if (r->state == DIBBA_TASK_SUCCESS) {
    t->fin_result =
        json_is_null(r->result) ? dibba_xstrdup("null") : json_dumps(r->result, JSON_COMPACT | JSON_ENCODE_ANY);
  } else if (r->state == DIBBA_TASK_RETRY) {
    Dibba__V1__TaskEnvelope next = *t->env;
    int64_t now = dibba_now_ms();
    int64_t delay =
        r->retry_delay_ms >= 0 ? r->retry_delay_ms : dibba_task_backoff_ms(t->env->attempt, 1000, 60000, (uint64_t)now);
    next.attempt = t->env->attempt + 1;
    next.issued_at_ms = now;
    t->retry_due = now + delay;
    next.eta_ms = t->retry_due;
    t->fin_error = error_json(r->error_code, r->error_message);
    if (t->retry_due >= t->env->expires_at_ms || dibba_envelope_seal(t->c->key, &next, &t->retry) < 0)
      t->fin_state = DIBBA_TASK_FAILURE;
  } else {
    t->fin_error = error_json(r->state == DIBBA_TASK_REVOKED ? "REVOKED" : r->error_code, r->error_message);
  }
  send_state(t);
}

static void on_run_progress(dibba_task_run_t *r, uint64_t cur, uint64_t total, const char *msg) {
  ctask_t *t = r->data;
  json_t *j =
      json_pack("{s:I, s:I, s:s}", "current", (json_int_t)cur, "total", (json_int_t)total, "message", msg ? msg : "");
  char *p = json_dumps(j, JSON_COMPACT);
  json_decref(j);
  state_args_t a = {.state = "PROGRESS", .progress = p, .attempt = t->env->attempt};
  (void)eval_state(t->c, t->rt, t->env->id, &a, ignore_reply, NULL);
  free(p);
}

static void run_task(ctask_t *t) {
  char err[256];
  dibba_task_consumer_t *c = t->c;
  t->phase = P_RUN;
  c->st.started++;
  t->run_started = 1;
  int rc = dibba_task_run_start(&t->run, c->reg, t->env, NULL, on_run_done, t, err, sizeof err);
  if (rc < 0) {
    t->run_started = 0;
    dibba_log_warn("task", lf(t), "cannot run: %s", err);
    t->phase = P_FINISH;
    t->fin_state = DIBBA_TASK_FAILURE;
    t->fin_error = error_json(rc == -ENOENT ? "ENOENT" : "EINVAL", err);
    t->run_done = 1;
    send_state(t);
    return;
  }
  if (!t->run_done)
    t->run.on_progress = on_run_progress;
}

/* The STARTED transition answered v (see dibba__lua_state). */
static void start_result(ctask_t *t, long long v) {
  dibba_task_consumer_t *c = t->c;
  if (v > 0 && !c->stopping) {
    run_task(t);
    return;
  }
  if (v > 0) { /* started, but we are stopping: give it back untouched */
    send_handback(t);
    return;
  }
  if (v == -2) {
    c->st.revoked++;
    dibba_log_info("task", lf(t), "revoked before it ran");
  } else {
    c->st.rejected_replay++;
    dibba_log_warn("task", lf(t),
                   v == 0 ? "rejected: the task is already final (replay or redelivery)" : "rejected: no task record");
  }
  task_free(t);
}

static void state_done(dibba_redis_t *r, int status, redisReply *reply, void *data) {
  ctask_t *t = data;
  dibba_task_consumer_t *c = t->c;
  long long v = 0;
  t->sent = 0;
  if (status == DIBBA_REDIS_EWAIT) {
    /* The script ran on the master; only the replica acknowledgement is short. Sending it again would not
     * change that, so the outcome stands (it may not survive a failover until a replica catches up). */
    if (c->wait_short++ % 1000 == 0)
      dibba_log_warn("task", lf(t), "final state written, but only %d of %u replicas acknowledged it",
                     dibba_redis_wait_acked(r), c->wait_replicas);
    status = 0;
  }
  if (status == 0 && dibba_redis_reply_int(reply, &v) < 0)
    status = DIBBA_EPROTO;
  if (status < 0) {
    if (status == DIBBA_REDIS_EREPLY && reply && reply->str)
      dibba_log_error("task", lf(t), "state script: %s", reply->str);
    t->resend = 1; /* the script is idempotent for one run: safe to send again */
    return;
  }
  if (t->phase == P_START) {
    start_result(t, v);
    return;
  }
  /* P_FINISH */
  if (v == 0) {
    dibba_log_info("task", lf(t), "result not stored: the task was already final");
  } else {
    switch (t->fin_state) {
    case DIBBA_TASK_SUCCESS: c->st.succeeded++; break;
    case DIBBA_TASK_RETRY: c->st.retried++; break;
    case DIBBA_TASK_REVOKED: c->st.revoked++; break;
    default: c->st.failed++; break;
    }
  }
  task_free(t);
}

static void send_state(ctask_t *t) {
  state_args_t a = {.entry = t->entry, .runid = t->runid, .attempt = t->env->attempt};
  if (t->phase == P_START) {
    a.state = "STARTED";
    a.check_revoked = 1;
  } else {
    a.state = dibba_task_state_name(t->fin_state);
    a.final = dibba_task_state_is_final(t->fin_state);
    a.result = t->fin_result;
    a.error = t->fin_error;
    if (t->fin_state == DIBBA_TASK_RETRY) {
      a.retry = &t->retry;
      a.retry_due = t->retry_due;
      a.attempt = t->env->attempt + 1;
    }
  }
  t->resend = 0;
  t->sent = 1;
  if (eval_state(t->c, t->rt, t->env->id, &a, state_done, t) < 0) {
    t->sent = 0;
    t->resend = 1;
  }
}

/* ---- STARTED for a whole read ---- */

typedef struct start_batch_s {
  size_t n;
  ctask_t *t[];
} start_batch_t;

static void starts_done(dibba_redis_t *r, int status, redisReply *reply, void *data) {
  start_batch_t *b = data;
  (void)r;
  if (status == 0 && (reply->type != REDIS_REPLY_ARRAY || reply->elements != b->n))
    status = DIBBA_EPROTO;
  for (size_t i = 0; status == 0 && i < b->n; i++)
    if (reply->element[i]->type != REDIS_REPLY_INTEGER)
      status = DIBBA_EPROTO;
  if (status == DIBBA_REDIS_EREPLY && reply && reply->str)
    dibba_log_error("task", json_pack("{s:s}", "error", reply->str), "start script");
  for (size_t i = 0; i < b->n; i++) {
    ctask_t *t = b->t[i];
    t->sent = 0;
    if (status < 0)
      t->resend = 1; /* each is sent again on its own (the state script) by the tick */
    else
      start_result(t, reply->element[i]->integer);
  }
  free(b);
}

/* Send the STARTED transitions of the tasks read since the last flush as one script call. */
static void flush_starts(route_t *rt) {
  dibba_task_consumer_t *c = rt->c;
  size_t n = rt->nstarting;
  if (n == 0)
    return;
  rt->nstarting = 0;
  char now_s[24], ttl_s[24];
  size_t argc = 2 + n + 3 + 3 * n;
  const char **argv = dibba_xcalloc(argc, sizeof *argv);
  char(*att)[24] = dibba_xcalloc(n, sizeof *att);
  start_batch_t *b = dibba_xmalloc(sizeof *b + n * sizeof b->t[0]);
  b->n = n;
  size_t k = 0, a = 2 + n;
  argv[k++] = rt->stream;
  argv[k++] = c->revoked_key;
  argv[a++] = fmt_i64(now_s, dibba_now_ms());
  argv[a++] = c->consumer;
  argv[a++] = fmt_i64(ttl_s, c->ttl_s);
  for (size_t i = 0; i < n; i++) {
    ctask_t *t = rt->starting[i];
    b->t[i] = t;
    t->resend = 0;
    t->sent = 1;
    argv[k++] = t->rkey;
    argv[a++] = t->env->id;
    argv[a++] = t->entry;
    argv[a++] = fmt_i64(att[i], t->env->attempt);
  }
  dibba_redis_cmd_opts_t o = {.flags = DIBBA_REDIS_QUEUE};
  if (dibba_redis_eval(c->cmd, &dibba__lua_start, starts_done, b, &o, (int)(2 + n), (int)argc, argv, NULL) < 0) {
    for (size_t i = 0; i < n; i++) {
      b->t[i]->sent = 0;
      b->t[i]->resend = 1;
    }
    free(b);
  }
  free(att);
  free(argv);
}

/* ---- entries ---- */

static int on_entry(const dibba_redis_entry_t *e, void *data) {
  route_t *rt = data;
  dibba_task_consumer_t *c = rt->c;
  const char *ev, *mv;
  size_t elen, mlen;
  Dibba__V1__TaskEnvelope *env = NULL;
  json_t *f;

  if (find_entry(c, rt, e->id, e->id_len))
    return 0;
  if (e->fields == NULL) { /* deleted while pending: nothing to run */
    ack_only(rt, e->id, e->id_len);
    return 0;
  }
  f = NULL; /* log fields, built only when something is logged */
#define F() (f ? f : (f = json_pack("{s:s%, s:s}", "entry", e->id, e->id_len, "route", rt->route)))
  if (dibba_redis_reply_field(e->fields, DIBBA_ENVELOPE_FIELD, &ev, &elen) < 0 ||
      dibba_redis_reply_field(e->fields, DIBBA_ENVELOPE_MAC_FIELD, &mv, &mlen) < 0) {
    c->st.rejected_malformed++;
    dibba_log_warn("task", F(), "rejected: malformed stream entry");
    ack_only(rt, e->id, e->id_len);
    return 0;
  }
  int rc = dibba_envelope_open(c->key, ev, elen, mv, mlen, rt->route, dibba_now_ms(), &env);
  if (rc == DIBBA_EEXPIRED) {
    /* The MAC was good: the id is trustworthy, so the record can say why it never ran. */
    Dibba__V1__TaskEnvelope *x = dibba__v1__task_envelope__unpack(NULL, elen, (const uint8_t *)ev);
    c->st.rejected_expired++;
    if (x && x->id && dibba_id_valid(x->id)) {
      json_object_set_new(F(), "task_id", json_string(x->id));
      char *err = error_json("EEXPIRED", "expired");
      char idz[64];
      snprintf(idz, sizeof idz, "%.*s", (int)(e->id_len < 63 ? e->id_len : 63), e->id);
      state_args_t a = {.state = "FAILURE", .error = err, .final = 1, .entry = idz, .runid = "expired"};
      if (eval_state(c, rt, x->id, &a, ignore_reply, NULL) < 0)
        ack_only(rt, e->id, e->id_len);
      free(err);
    } else {
      ack_only(rt, e->id, e->id_len);
    }
    dibba_envelope_free(x);
    dibba_log_warn("task", F(), "rejected: expired envelope");
    return 0;
  }
  if (rc < 0) {
    if (rc == DIBBA_EFORGED)
      c->st.rejected_forged++;
    else if (rc == DIBBA_EREPLAY)
      c->st.rejected_replay++;
    else
      c->st.rejected_malformed++;
    dibba_log_warn("task", F(), "rejected: %s",
                   rc == DIBBA_EFORGED   ? "bad MAC (forged)"
                   : rc == DIBBA_EREPLAY ? "envelope for another route"
                                         : "malformed envelope");
    ack_only(rt, e->id, e->id_len);
    return 0;
  }
#undef F
  c->st.received++;
  ctask_t *t = dibba_xcalloc(1, sizeof *t);
  t->c = c;
  t->rt = rt;
  t->env = env;
  snprintf(t->entry, sizeof t->entry, "%.*s", (int)(e->id_len < 63 ? e->id_len : 63), e->id);
  dibba_id_new(t->runid);
  t->next = &c->head;
  t->prev = c->head.prev;
  c->head.prev->next = t;
  c->head.prev = t;
  rt->inflight++;
  t->phase = P_START;
  task_key(t->rkey, c->prefix, env->id, "");
  if (rt->nstarting == rt->limit)
    flush_starts(rt);                /* not reached: a read asks for at most limit - inflight entries */
  rt->starting[rt->nstarting++] = t; /* flush_starts, once the whole reply is read */
  return 0;
}

/* ---- reading ---- */

static void group_done(dibba_redis_t *r, int status, redisReply *reply, void *data) {
  route_t *rt = data;
  (void)r;
  rt->group_pending = 0;
  if (status == 0 || (status == DIBBA_REDIS_EREPLY && reply && reply->str && strstr(reply->str, "BUSYGROUP")))
    rt->group_ok = 1;
  if (rt->group_ok && !rt->c->stopping)
    start_read(rt);
}

static void read_done(dibba_redis_t *r, int status, redisReply *reply, void *data) {
  route_t *rt = data;
  dibba_task_consumer_t *c = rt->c;
  (void)r;
  rt->reading = 0;
  if (status == DIBBA_REDIS_EREPLY && reply && reply->str && strstr(reply->str, "NOGROUP")) {
    rt->group_ok = 0;
    rt->draining = 1;
    snprintf(rt->cursor, sizeof rt->cursor, "0");
    return; /* the tick re-creates it */
  }
  if (status < 0)
    return; /* the tick retries */
  if (c->stopping) {
    /* Entries read while stopping are ours now: give them straight back. */
    const redisReply *s = dibba_redis_reply_at(reply, 0);
    const redisReply *ents = dibba_redis_reply_at(s, 1);
    for (size_t i = 0; ents && i < ents->elements; i++) {
      const redisReply *id = dibba_redis_reply_at(ents->element[i], 0);
      if (id && id->type == REDIS_REPLY_STRING) {
        const char *argv[] = {"XCLAIM", rt->stream, DIBBA_TASK_GROUP, c->consumer, "0",
                              id->str,  "IDLE",     HANDBACK_IDLE,    "JUSTID"};
        dibba_redis_cmd_opts_t o = {.flags = DIBBA_REDIS_QUEUE};
        (void)dibba_redis_command_argv(c->cmd, ignore_reply, NULL, &o, 9, argv, NULL);
      }
    }
    return;
  }
  size_t n = 0;
  const redisReply *s = dibba_redis_reply_at(reply, 0);
  const redisReply *ents = dibba_redis_reply_at(s, 1);
  if (ents)
    n = ents->elements;
  if (rt->draining) {
    const redisReply *last = n ? dibba_redis_reply_at(ents->element[n - 1], 0) : NULL;
    if (last && last->type == REDIS_REPLY_STRING)
      snprintf(rt->cursor, sizeof rt->cursor, "%s", last->str);
    else {
      rt->draining = 0;
      snprintf(rt->cursor, sizeof rt->cursor, ">");
    }
  }
  if (dibba_redis_reply_entries(reply, on_entry, rt) == DIBBA_EPROTO)
    dibba_log_error("task", json_pack("{s:s}", "route", rt->route), "malformed XREADGROUP reply");
  flush_starts(rt);
  start_read(rt);
}

static void start_read(route_t *rt) {
  dibba_task_consumer_t *c = rt->c;
  if (c->stopping || rt->reading || rt->inflight >= rt->limit || !dibba_redis_is_ready(rt->rd))
    return;
  if (!rt->group_ok) {
    if (!rt->group_pending && dibba_redis_command(c->cmd, group_done, rt, NULL, "XGROUP CREATE %s %s 0 MKSTREAM",
                                                  rt->stream, DIBBA_TASK_GROUP) == 0)
      rt->group_pending = 1;
    return;
  }
  uint32_t count = rt->limit - rt->inflight;
  int rc;
  if (rt->draining) {
    rc = dibba_redis_command(rt->rd, read_done, rt, NULL, "XREADGROUP GROUP %s %s COUNT %u STREAMS %s %s",
                             DIBBA_TASK_GROUP, c->consumer, count, rt->stream, rt->cursor);
  } else {
    dibba_redis_cmd_opts_t o = {.timeout_ms = c->block_ms + 5000};
    rc = dibba_redis_command(rt->rd, read_done, rt, &o, "XREADGROUP GROUP %s %s COUNT %u BLOCK %u STREAMS %s >",
                             DIBBA_TASK_GROUP, c->consumer, count, c->block_ms, rt->stream);
  }
  if (rc == 0)
    rt->reading = 1;
}

/* ---- reclaiming, touching, moving ---- */

static void claim_done(dibba_redis_t *r, int status, redisReply *reply, void *data) {
  route_t *rt = data;
  (void)r;
  rt->claiming = 0;
  if (status < 0 || rt->c->stopping)
    return;
  const redisReply *ents = dibba_redis_reply_at(reply, 1);
  if (ents == NULL)
    return;
  uint64_t before = rt->c->st.received + rt->c->st.rejected_forged + rt->c->st.rejected_expired +
                    rt->c->st.rejected_replay + rt->c->st.rejected_malformed;
  (void)dibba_redis_reply_entries(ents, on_entry, rt);
  flush_starts(rt);
  uint64_t after = rt->c->st.received + rt->c->st.rejected_forged + rt->c->st.rejected_expired +
                   rt->c->st.rejected_replay + rt->c->st.rejected_malformed;
  if (after > before) {
    rt->c->st.reclaimed += after - before;
    dibba_log_info("task", json_pack("{s:s, s:I}", "route", rt->route, "n", (json_int_t)(after - before)),
                   "reclaimed idle entries");
  }
}

static void claim(route_t *rt) {
  dibba_task_consumer_t *c = rt->c;
  if (rt->claiming || !rt->group_ok || rt->inflight >= rt->limit)
    return;
  if (dibba_redis_command(c->cmd, claim_done, rt, NULL, "XAUTOCLAIM %s %s %s %u 0-0 COUNT %u", rt->stream,
                          DIBBA_TASK_GROUP, c->consumer, c->vis_ms, rt->limit - rt->inflight) == 0)
    rt->claiming = 1;
}

/* Reset the idle time of our own in-flight entries so a long task is not taken by another worker. */
static void touch(route_t *rt) {
  dibba_task_consumer_t *c = rt->c;
  size_t n = 0;
  for (ctask_t *t = c->head.next; t != &c->head; t = t->next)
    if (t->rt == rt)
      n++;
  if (n == 0)
    return;
  const char **argv = dibba_xcalloc(n + 6, sizeof *argv);
  int i = 0;
  argv[i++] = "XCLAIM";
  argv[i++] = rt->stream;
  argv[i++] = DIBBA_TASK_GROUP;
  argv[i++] = c->consumer;
  argv[i++] = "0";
  for (ctask_t *t = c->head.next; t != &c->head; t = t->next)
    if (t->rt == rt && t->phase != P_HANDBACK)
      argv[i++] = t->entry;
  argv[i++] = "JUSTID";
  (void)dibba_redis_command_argv(c->cmd, ignore_reply, NULL, NULL, i, argv, NULL);
  free(argv);
}

static void mover_done(dibba_redis_t *r, int status, redisReply *reply, void *data) {
  dibba_task_consumer_t *c = data;
  long long v = 0;
  (void)r;
  c->moving = 0;
  if (status == 0 && dibba_redis_reply_int(reply, &v) == 0 && v > 0)
    c->st.moved_delayed += (uint64_t)v;
}

static void move_delayed(dibba_task_consumer_t *c) {
  char now_s[24];
  if (c->moving)
    return;
  snprintf(now_s, sizeof now_s, "%" PRId64, dibba_now_ms());
  const char *argv[] = {c->delayed_key, now_s, "500", c->prefix};
  if (dibba_redis_eval(c->cmd, &dibba__lua_mover, mover_done, c, NULL, 1, 4, argv, NULL) == 0)
    c->moving = 1;
}

/* ---- revokes ---- */

static void on_revoke(dibba_redis_sub_t *s, const dibba_redis_sub_msg_t *m, void *data) {
  dibba_task_consumer_t *c = data;
  (void)s;
  if (m->kind != DIBBA_REDIS_SUB_MESSAGE || m->payload == NULL)
    return;
  for (ctask_t *t = c->head.next; t != &c->head; t = t->next) {
    if (t->phase == P_RUN && !t->run_done && strlen(t->env->id) == m->payload_len &&
        memcmp(t->env->id, m->payload, m->payload_len) == 0) {
      dibba_log_info("task", lf(t), "revoked while running: cancelling");
      int rc = dibba_task_run_cancel(&t->run);
      if (rc == -ENOTSUP)
        dibba_log_warn("task", lf(t), "the handler cannot be cancelled");
      return;
    }
  }
}

/* ---- the tick ---- */

static void stop_tick(dibba_task_consumer_t *c) {
  uint64_t now = uv_now(c->loop);
  if (!c->cancelled_rest && now >= c->grace_deadline) {
    c->cancelled_rest = 1;
    /* Cancel what still runs; on_run_done hands each one back instead of storing a result. */
    ctask_t *next;
    for (ctask_t *t = c->head.next; t != &c->head; t = next) {
      next = t->next;
      if (t->phase == P_RUN && !t->run_done) {
        t->handback = 1;
        if (dibba_task_run_cancel(&t->run) == -ENOTSUP)
          dibba_log_warn("task", lf(t), "cannot cancel; waiting for it");
      }
    }
  }
  if (now >= c->hard_deadline) {
    /* Redis is unreachable: what is left stays pending in Redis and is reclaimed later. */
    ctask_t *next;
    for (ctask_t *t = c->head.next; t != &c->head; t = next) {
      next = t->next;
      if (!t->sent && (t->phase != P_RUN || t->run_done))
        task_free(t);
    }
  }
  maybe_close(c);
}

static void on_tick(uv_timer_t *h) {
  dibba_task_consumer_t *c = h->data;
  uint64_t now = uv_now(c->loop);
  for (ctask_t *t = c->head.next; t != &c->head; t = t->next)
    if (t->resend && !t->sent && dibba_redis_is_ready(c->cmd))
      send_state(t);
  if (c->stopping) {
    stop_tick(c);
    return;
  }
  if (!dibba_redis_is_ready(c->cmd))
    return;
  move_delayed(c);
  for (size_t i = 0; i < c->nroutes; i++)
    start_read(&c->routes[i]);
  if (now >= c->next_claim) {
    c->next_claim = now + c->vis_ms / 2;
    for (size_t i = 0; i < c->nroutes; i++)
      claim(&c->routes[i]);
  }
  if (now >= c->next_touch) {
    c->next_touch = now + c->vis_ms / 3;
    for (size_t i = 0; i < c->nroutes; i++)
      touch(&c->routes[i]);
  }
}

static void on_after_io(uv_check_t *h) {
  dibba_task_consumer_t *c = h->data;
  for (size_t i = 0; i < c->nroutes; i++) {
    route_t *rt = &c->routes[i];
    if (rt->want_read) {
      rt->want_read = 0;
      start_read(rt);
    }
  }
}

/* ---- life cycle ---- */

static void consumer_free(dibba_task_consumer_t *c) {
  for (size_t i = 0; c->routes && i < c->nroutes; i++)
    free(c->routes[i].starting);
  free(c->routes);
  free(c->prefix);
  free(c->consumer);
  free(c);
}

static void one_closed(dibba_task_consumer_t *c) {
  if (--c->pending_closes > 0 || !c->closing)
    return;
  dibba_task_consumer_stop_cb cb = c->stop_cb;
  void *data = c->stop_data;
  if (cb)
    cb(c, data);
  consumer_free(c);
}

static void rd_closed(dibba_redis_t *r, void *data) {
  (void)r;
  one_closed(data);
}
static void route_closed(dibba_redis_t *r, void *data) {
  route_t *rt = data;
  (void)r;
  one_closed(rt->c);
}
static void sub_closed(dibba_redis_sub_t *s, void *data) {
  (void)s;
  one_closed(data);
}
static void tick_closed(uv_handle_t *h) { one_closed(h->data); }
static void check_closed(uv_handle_t *h) { one_closed(h->data); }

static void maybe_close(dibba_task_consumer_t *c) {
  if (c->closing || c->head.next != &c->head)
    return;
  c->closing = 1;
  c->pending_closes += 4; /* cmd, sub, tick, after_io (the read connections were counted when closed) */
  dibba_redis_close(c->cmd, rd_closed);
  dibba_redis_sub_close(c->sub, sub_closed);
  uv_close((uv_handle_t *)&c->tick, tick_closed);
  uv_close((uv_handle_t *)&c->after_io, check_closed);
}

static void on_cmd_connect(dibba_redis_t *r, int status, void *data) {
  dibba_task_consumer_t *c = data;
  (void)r;
  if (status == 0)
    for (size_t i = 0; i < c->nroutes; i++)
      c->routes[i].group_ok = 0; /* the server may have restarted without its data */
}

static void on_rd_connect(dibba_redis_t *r, int status, void *data) {
  route_t *rt = data;
  (void)r;
  if (status == 0) {
    /* A reply lost with the old connection may have delivered entries to us: read our pending ones again. */
    rt->draining = 1;
    snprintf(rt->cursor, sizeof rt->cursor, "0");
  }
}

int dibba_task_consumer_new(uv_loop_t *loop, const dibba_task_consumer_options_t *opts, dibba_task_consumer_t **out,
                            char *err, size_t errlen) {
  int rc;
  *out = NULL;
  if (opts->nroutes == 0 || opts->consumer == NULL || opts->key == NULL || opts->reg == NULL || opts->prefix == NULL)
    return dibba_error_set(err, errlen, -EINVAL, "consumer: routes, name, key, registry and prefix are required");
  dibba_task_consumer_t *c = dibba_xcalloc(1, sizeof *c);
  c->loop = loop;
  c->prefix = dibba_xstrdup(opts->prefix);
  c->consumer = dibba_xstrdup(opts->consumer);
  c->key = opts->key;
  c->reg = opts->reg;
  c->head.next = c->head.prev = &c->head;
  c->vis_ms = opts->visibility_timeout_ms ? opts->visibility_timeout_ms : 60000;
  c->block_ms = opts->block_ms ? opts->block_ms : 2000;
  c->ttl_s = opts->result_ttl_s ? opts->result_ttl_s : DIBBA_TASK_RESULT_TTL_S;
  c->tick_ms = opts->delayed_interval_ms ? opts->delayed_interval_ms : 100;
  c->wait_replicas = opts->wait_replicas;
  c->wait_timeout_ms = opts->wait_timeout_ms;
  snprintf(c->revoked_key, sizeof c->revoked_key, "%srevoked", c->prefix);
  snprintf(c->delayed_key, sizeof c->delayed_key, "%sdelayed", c->prefix);
  snprintf(c->revoke_chan, sizeof c->revoke_chan, "%srevoke", c->prefix);
  uint32_t conc = opts->concurrency ? opts->concurrency : 16;
  c->nroutes = opts->nroutes;
  c->routes = dibba_xcalloc(c->nroutes, sizeof *c->routes);
  for (size_t i = 0; i < c->nroutes; i++) {
    route_t *rt = &c->routes[i];
    rt->c = c;
    snprintf(rt->route, sizeof rt->route, "%s", opts->routes[i]);
    if ((rc = dibba_route_stream_key(c->prefix, rt->route, rt->stream, sizeof rt->stream)) < 0) {
      dibba_error_set(err, errlen, rc, "bad route %s", opts->routes[i]);
      goto fail;
    }
    rt->limit = conc / (uint32_t)c->nroutes;
    if (rt->limit == 0)
      rt->limit = 1;
    rt->starting = dibba_xcalloc(rt->limit, sizeof *rt->starting);
    rt->draining = 1;
    snprintf(rt->cursor, sizeof rt->cursor, "0");
  }
  dibba_redis_options_t ro = *opts->redis;
  ro.name = "tasks";
  ro.on_connect = on_cmd_connect;
  ro.on_disconnect = NULL;
  ro.data = c;
  ro.queue_max = 65536;
  if ((rc = dibba_redis_new(loop, &ro, &c->cmd, err, errlen)) < 0)
    goto fail;
  for (size_t i = 0; i < c->nroutes; i++) {
    dibba_redis_options_t rr = *opts->redis;
    rr.name = "tasks-read";
    rr.on_connect = on_rd_connect;
    rr.on_disconnect = NULL;
    rr.close_grace_ms = 1;
    rr.data = &c->routes[i];
    if ((rc = dibba_redis_new(loop, &rr, &c->routes[i].rd, err, errlen)) < 0)
      goto fail; /* not reached with a URL that parsed once */
  }
  dibba_redis_sub_options_t so = {.conn = *opts->redis, .on_message = on_revoke, .data = c};
  so.conn.name = "tasks-revoke";
  so.conn.on_connect = NULL;
  so.conn.on_disconnect = NULL;
  so.conn.data = c;
  if ((rc = dibba_redis_sub_new(loop, &so, &c->sub, err, errlen)) < 0)
    goto fail;
  (void)dibba_redis_sub_subscribe(c->sub, c->revoke_chan, strlen(c->revoke_chan));
  uv_timer_init(loop, &c->tick);
  c->tick.data = c;
  uv_timer_start(&c->tick, on_tick, c->tick_ms, c->tick_ms);
  uv_check_init(loop, &c->after_io);
  c->after_io.data = c;
  uv_check_start(&c->after_io, on_after_io);
  *out = c;
  return 0;
fail:
  /* Only reached before any connection exists (URL errors surface on the first dibba_redis_new). */
  consumer_free(c);
  return rc;
}

void dibba_task_consumer_stats(const dibba_task_consumer_t *c, dibba_task_consumer_stats_t *out) {
  *out = c->st;
  uint32_t n = 0;
  for (const ctask_t *t = c->head.next; t != &c->head; t = t->next)
    n++;
  out->in_flight = n;
}

json_t *dibba_task_consumer_stats_json(const dibba_task_consumer_t *c) {
  dibba_task_consumer_stats_t s;
  dibba_task_consumer_stats(c, &s);
  return json_pack(
      "{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "received", (json_int_t)s.received,
      "started", (json_int_t)s.started, "succeeded", (json_int_t)s.succeeded, "failed", (json_int_t)s.failed, "retried",
      (json_int_t)s.retried, "revoked", (json_int_t)s.revoked, "rejected_forged", (json_int_t)s.rejected_forged,
      "rejected_expired", (json_int_t)s.rejected_expired, "rejected_replay", (json_int_t)s.rejected_replay,
      "rejected_malformed", (json_int_t)s.rejected_malformed, "reclaimed", (json_int_t)s.reclaimed, "handed_back",
      (json_int_t)s.handed_back, "moved_delayed", (json_int_t)s.moved_delayed, "in_flight", (json_int_t)s.in_flight);
}

int dibba_task_consumer_stop(dibba_task_consumer_t *c, uint32_t grace_ms, dibba_task_consumer_stop_cb cb, void *data) {
  if (c->stopping)
    return UV_EALREADY;
  c->stopping = 1;
  c->stop_cb = cb;
  c->stop_data = data;
  c->grace_deadline = uv_now(c->loop) + grace_ms;
  c->hard_deadline = c->grace_deadline + STOP_HARD_MS;
  /* Stop reading at once; a blocked XREADGROUP is failed (its entries, if any, stay pending for us). */
  c->pending_closes += (int)c->nroutes;
  for (size_t i = 0; i < c->nroutes; i++)
    dibba_redis_close(c->routes[i].rd, route_closed);
  stop_tick(c);
  return 0;
}
