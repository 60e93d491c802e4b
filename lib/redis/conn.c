/* SPDX-License-Identifier: Apache-2.0 */
/* The connection core: resolve, connect, AUTH/SELECT(/ROLE), RESP formatting, command queue and deadlines, WAIT,
 * EVALSHA scripts, backoff, close. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <limits.h>

#include <hiredis/adapters/libuv.h>
#include <openssl/evp.h>
#include <hiredis/async.h>

#include "dibba/alloc.h"
#include "dibba/buf.h"
#include "dibba/error.h"
#include "dibba/id.h"
#include "dibba/log.h"
#include "redis_int.h"

#define NO_DEADLINE UINT64_MAX
#define LOG_COMP "redis"

enum { ST_IDLE, ST_RESOLVING, ST_CONNECTING, ST_HANDSHAKE, ST_READY, ST_DROPPING };

typedef struct cmd_s {
  struct cmd_s *next, *prev;
  dibba_redis_t *r;
  dibba_redis_cb cb;
  void *data;
  uint64_t deadline;
  int done;               /* the user callback has run */
  int nparts;             /* formatted commands in buf (MULTI batches have several; WAIT is the last part) */
  int wait_n;             /* DIBBA_REDIS_WAIT_REPLICAS: replicas asked for, else 0 */
  redisReply *main_reply; /* with wait_n: a copy of the command's own reply, until WAIT's arrives */
  int parts_seen;         /* replies to the non-last parts received so far */
  size_t *lens;           /* length of each part (points at len1 for a single command) */
  size_t len1;
  char *buf;
  /* EVALSHA: the script to fall back to (EVAL) on NOSCRIPT, and where the arguments after the SHA start. */
  const dibba_redis_script_t *script;
  size_t tail_off;
  int argc;
} cmd_t;

/* A script this client has used: loaded (SCRIPT LOAD) on every new connection, before queued commands. */
typedef struct script_ent_s {
  const dibba_redis_script_t *s;
  char sha[41];
} script_ent_t;

typedef struct {
  cmd_t *head, *tail;
  size_t n;
} cmd_list_t;

/* A built-in getaddrinfo request; heap-allocated because a cancelled one may outlive the attempt. */
typedef struct gai_s {
  uv_getaddrinfo_t req;
  dibba_redis_t *r;
  dibba_redis_resolve_done done;
  int port;
  int cancelled;
} gai_t;

struct dibba_redis_s {
  uv_loop_t *loop;
  dibba_redis_addr_t addr;
  char *name;
  char *where; /* address for logs, no credentials */
  uint32_t connect_timeout_ms, command_timeout_ms, backoff_base_ms, backoff_cap_ms, queue_max, close_grace_ms;
  dibba_redis_event_cb on_connect, on_disconnect;
  dibba_redis_resolver_t resolver;
  void *data;
  dibba__redis_hooks_t hooks;
  void *hook_data;

  uv_timer_t conn_timer;  /* connect timeout, then the close grace period */
  uv_timer_t retry_timer; /* backoff */
  uv_timer_t cmd_timer;   /* earliest command deadline */
  uv_timer_t kick_timer;  /* work deferred out of hiredis callbacks */
  int pending_closes;
  int handles_closing;

  redisAsyncContext *ac;
  int state;
  int was_ready, ever_ready;
  unsigned attempt;
  int hs_pending, hs_status;
  int kill_status; /* drop the connection with this cause on the next kick */
  int lost_cause;  /* why we dropped it ourselves */
  int drop_status; /* status given to in-flight commands when the context dies */
  gai_t *gai;      /* built-in resolver request in flight */
  int gai_inflight;
  cmd_list_t queue, inflight;
  int verify_role;             /* sentinel mode: ROLE must say master before ready; READONLY re-resolves */
  int fast_retry;              /* the next attempt starts at once (a failover was announced) */
  int wait_acked;              /* dibba_redis_wait_acked during a WAIT command's callback */
  dibba__sentinel_t *sentinel; /* the owned Sentinel resolver, or NULL */
  int sentinel_state;          /* 0 running, 1 closing, 2 closed */
  char cur_ip[64];             /* target of the current connection (TCP) */
  char *cur_path;              /* target of the current connection (UNIX) */
  int cur_port;
  script_ent_t *scripts;
  size_t nscripts;

  int closing;
  uint64_t close_deadline;
  dibba_redis_close_cb close_cb;
  dibba_redis_stats_t stats;
  char last_error[256];
  int error_fresh; /* last_error was written during the current attempt */
};

static void kick(dibba_redis_t *r);
static void schedule_retry(dibba_redis_t *r);
static void arm_cmd_timer(dibba_redis_t *r);
static void cmd_timer_cb(uv_timer_t *t);

/* ---- small helpers ---- */

static void list_push(cmd_list_t *l, cmd_t *c) {
  c->next = NULL;
  c->prev = l->tail;
  if (l->tail)
    l->tail->next = c;
  else
    l->head = c;
  l->tail = c;
  l->n++;
}

static void list_remove(cmd_list_t *l, cmd_t *c) {
  if (c->prev)
    c->prev->next = c->next;
  else
    l->head = c->next;
  if (c->next)
    c->next->prev = c->prev;
  else
    l->tail = c->prev;
  c->next = c->prev = NULL;
  l->n--;
}

static void cmd_free(cmd_t *c) {
  if (c->main_reply)
    freeReplyObject(c->main_reply);
  free(c->buf);
  if (c->lens != &c->len1)
    free(c->lens);
  free(c);
}

/* Hand a command its result once. */
static void cmd_finish(dibba_redis_t *r, cmd_t *c, int status, redisReply *reply) {
  if (c->done)
    return;
  c->done = 1;
  if (status == UV_ETIMEDOUT)
    r->stats.timeouts++;
  c->cb(r, status, reply, c->data);
}

static int errno_status(int e, int def) { return e > 0 ? -e : def; }

static void set_error(dibba_redis_t *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_error(dibba_redis_t *r, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(r->last_error, sizeof r->last_error, fmt, ap);
  va_end(ap);
  r->error_fresh = 1;
}

static void log_event(dibba_redis_t *r, dibba_log_level_t lvl, int status, const char *what) {
  dibba_log(lvl, LOG_COMP,
            json_pack("{s:s, s:s, s:s, s:s}", "client", r->name, "addr", r->where, "error",
                      status ? dibba_redis_strerror(status) : "", "detail", r->last_error),
            "%s", what);
}

const char *dibba_redis_strerror(int status) {
  if (status == DIBBA_REDIS_EREPLY)
    return "redis error reply";
  if (status == DIBBA_REDIS_ENOTMASTER)
    return "not the master";
  if (status == DIBBA_REDIS_EWAIT)
    return "too few replicas acknowledged";
  return dibba_strerror(status);
}

/* ---- built-in resolver ---- */

static void gai_cb(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  gai_t *g = req->data;
  dibba_redis_t *r = g->r;
  r->gai_inflight--;
  if (r->gai == g)
    r->gai = NULL;
  if (g->cancelled) {
    uv_freeaddrinfo(res);
    free(g);
    kick(r); /* close may be waiting for us */
    return;
  }
  char ip[64] = "";
  if (status == 0 && res != NULL) {
    if (res->ai_family == AF_INET6)
      status = uv_ip6_name((const struct sockaddr_in6 *)res->ai_addr, ip, sizeof ip);
    else
      status = uv_ip4_name((const struct sockaddr_in *)res->ai_addr, ip, sizeof ip);
  } else if (status == 0) {
    status = UV_EAI_NONAME;
  }
  uv_freeaddrinfo(res);
  dibba_redis_target_t t = {.kind = DIBBA_REDIS_TCP, .ip = ip, .port = g->port};
  dibba_redis_resolve_done done = g->done;
  free(g);
  done(r, status, status == 0 ? &t : NULL);
}

static int builtin_resolve(dibba_redis_t *r, const dibba_redis_addr_t *a, dibba_redis_resolve_done done, void *data) {
  dibba_redis_target_t t = {.kind = a->kind, .port = a->port};
  if (a->kind != DIBBA_REDIS_TCP && a->kind != DIBBA_REDIS_UNIX)
    return -EINVAL;
  if (a->kind == DIBBA_REDIS_UNIX) {
    t.path = a->path;
    done(r, 0, &t);
    return 0;
  }
  unsigned char tmp[16];
  if (uv_inet_pton(AF_INET, a->host, tmp) == 0 || uv_inet_pton(AF_INET6, a->host, tmp) == 0) {
    t.ip = a->host;
    done(r, 0, &t);
    return 0;
  }
  gai_t *g = dibba_xcalloc(1, sizeof *g);
  g->r = r;
  g->done = done;
  g->port = a->port;
  g->req.data = g;
  struct addrinfo hints;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  int rc = uv_getaddrinfo(r->loop, &g->req, gai_cb, a->host, NULL, &hints);
  if (rc < 0) {
    free(g);
    return rc;
  }
  r->gai = g;
  r->gai_inflight++;
  return 0;
}

static void builtin_cancel(dibba_redis_t *r, void *data) {
  if (r->gai) {
    r->gai->cancelled = 1;
    uv_cancel((uv_req_t *)&r->gai->req);
    r->gai = NULL;
  }
}

const dibba_redis_resolver_t dibba__redis_builtin_resolver = {builtin_resolve, builtin_cancel, NULL};

/* ---- libuv adapter fix-up ----
 * hiredis 0.14's libuv adapter returns early when libuv reports a poll error (POLLERR, e.g. a refused TCP
 * connect or a reset), and libuv has then stopped the handle: the failure would only surface at the next
 * timeout. We keep the adapter (its attach and cleanup) but install event hooks whose callback lets hiredis
 * read or write anyway, so it sees the socket error at once. */

static void poll_cb(uv_poll_t *h, int status, int events) {
  redisLibuvEvents *p = h->data;
  int ev = status < 0 ? p->events : events;
  if (p->context != NULL && (ev & UV_READABLE))
    redisAsyncHandleRead(p->context);
  if (p->context != NULL && (ev & UV_WRITABLE))
    redisAsyncHandleWrite(p->context);
}

static void poll_update(redisLibuvEvents *p) {
  if (p->events)
    uv_poll_start(&p->handle, p->events, poll_cb);
  else
    uv_poll_stop(&p->handle);
}

static void ev_add_read(void *privdata) {
  redisLibuvEvents *p = privdata;
  p->events |= UV_READABLE;
  poll_update(p);
}

static void ev_del_read(void *privdata) {
  redisLibuvEvents *p = privdata;
  p->events &= ~UV_READABLE;
  poll_update(p);
}

static void ev_add_write(void *privdata) {
  redisLibuvEvents *p = privdata;
  p->events |= UV_WRITABLE;
  poll_update(p);
}

static void ev_del_write(void *privdata) {
  redisLibuvEvents *p = privdata;
  p->events &= ~UV_WRITABLE;
  poll_update(p);
}

/* ---- connection state machine ---- */

/* A connect attempt (resolve, connect or handshake) failed; ac is already gone or being freed by hiredis. */
static void attempt_failed(dibba_redis_t *r, int status) {
  r->ac = NULL;
  r->kill_status = 0;
  r->state = ST_IDLE;
  uv_timer_stop(&r->conn_timer);
  r->stats.connect_failures++;
  if (!r->error_fresh)
    set_error(r, "%s", dibba_redis_strerror(status));
  if (r->closing) {
    kick(r);
    return;
  }
  log_event(r, DIBBA_LOG_WARN, status, "redis connect failed");
  if (r->on_connect)
    r->on_connect(r, status, r->data);
  if (!r->closing)
    schedule_retry(r);
  else
    kick(r);
}

/* A connected context (handshake or ready) is gone; hiredis has failed its callbacks and frees it. */
static void conn_lost(dibba_redis_t *r, int cause) {
  if (!r->was_ready) {
    attempt_failed(r, cause);
    return;
  }
  r->was_ready = 0;
  r->ac = NULL;
  r->kill_status = 0;
  r->state = ST_IDLE;
  uv_timer_stop(&r->conn_timer);
  r->stats.disconnects++;
  if (r->closing) {
    kick(r);
    return;
  }
  log_event(r, DIBBA_LOG_WARN, cause, "redis connection lost");
  if (r->on_disconnect)
    r->on_disconnect(r, cause, r->data);
  if (!r->closing)
    schedule_retry(r);
  else
    kick(r);
}

/* Free the current context from outside any hiredis callback. Pending commands fail with r->drop_status. */
static void conn_drop(dibba_redis_t *r, int cause) {
  redisAsyncContext *ac = r->ac;
  if (ac == NULL)
    return;
  r->lost_cause = cause;
  r->state = ST_DROPPING;
  redisAsyncFree(ac); /* runs pending callbacks, then on_hiredis_disconnect if it was connected */
  if (r->ac == ac)    /* never connected: hiredis does not call the disconnect callback */
    attempt_failed(r, cause);
  r->lost_cause = 0;
}

static void on_hiredis_disconnect(const redisAsyncContext *ac, int status) {
  dibba_redis_t *r = ac->data;
  if (r->ac != ac)
    return;
  int cause = r->lost_cause ? r->lost_cause : UV_ECONNRESET;
  if (r->lost_cause == 0 && ac->errstr[0])
    set_error(r, "%s", ac->errstr);
  conn_lost(r, cause);
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata);
static void on_part_reply(redisAsyncContext *ac, void *reply, void *privdata);
static void script_load(dibba_redis_t *r, const script_ent_t *e);

/* Send every part; the last one carries the callback. In sentinel mode or with WAIT the others get
 * on_part_reply (READONLY detection; the command's own reply is kept for WAIT). */
static int send_cmd_parts(dibba_redis_t *r, cmd_t *c) {
  if (r->inflight.tail && r->inflight.tail->deadline > c->deadline)
    c->deadline = r->inflight.tail->deadline;
  size_t off = 0;
  int watch = r->verify_role || c->wait_n;
  for (int i = 0; i < c->nparts; i++) {
    int last = i == c->nparts - 1;
    redisCallbackFn *fn = last ? on_reply : watch ? on_part_reply : NULL;
    int rc = redisAsyncFormattedCommand(r->ac, fn, fn ? c : NULL, c->buf + off, c->lens[i]);
    if (rc != REDIS_OK && i == 0)
      return UV_ENOTCONN;
    off += c->lens[i];
  }
  list_push(&r->inflight, c);
  return 0;
}

static void become_ready(dibba_redis_t *r) {
  uv_timer_stop(&r->conn_timer);
  r->state = ST_READY;
  r->was_ready = 1;
  r->attempt = 0;
  r->stats.connects++;
  if (r->ever_ready)
    r->stats.reconnects++;
  r->ever_ready = 1;
  r->last_error[0] = '\0';
  r->drop_status = UV_ECONNRESET;
  log_event(r, DIBBA_LOG_INFO, 0, "redis connected");
  if (r->hooks.ready)
    r->hooks.ready(r, r->ac, r->hook_data);
  /* Scripts first, so the EVALSHAs queued behind them find their script. */
  for (size_t i = 0; i < r->nscripts && r->state == ST_READY; i++)
    script_load(r, &r->scripts[i]);
  /* Flush the queue in order. Detach it first: callbacks may queue more. */
  while (r->queue.head && r->state == ST_READY) {
    cmd_t *c = r->queue.head;
    list_remove(&r->queue, c);
    if (send_cmd_parts(r, c) < 0) {
      cmd_finish(r, c, UV_ENOTCONN, NULL);
      cmd_free(c);
    }
  }
  arm_cmd_timer(r);
  if (r->on_connect && r->state == ST_READY && !r->closing)
    r->on_connect(r, 0, r->data);
}

/* One handshake reply was checked: status 0, or the attempt fails with status and the text why. */
static void hs_step(dibba_redis_t *r, int status, const char *why) {
  r->hs_pending--;
  if (status && r->hs_status == 0) {
    r->hs_status = status;
    set_error(r, "%s", why);
  }
  if (r->hs_pending > 0)
    return;
  if (r->hs_status) {
    r->kill_status = r->hs_status;
    kick(r);
  } else {
    become_ready(r);
  }
}

static void hs_reply(redisAsyncContext *ac, redisReply *reply, int fail_status) {
  dibba_redis_t *r = ac->data;
  if (reply == NULL || r->state != ST_HANDSHAKE)
    return; /* the context is going away; conn_lost reports it */
  int bad = reply->type == REDIS_REPLY_ERROR;
  hs_step(r, bad ? fail_status : 0, bad ? reply->str : "");
}

/* Sentinel mode: only a master may become ready; a replica is a stale answer (or a master demoted since). */
static void on_role_reply(redisAsyncContext *ac, void *reply_, void *privdata) {
  dibba_redis_t *r = ac->data;
  redisReply *reply = reply_;
  if (reply == NULL || r->state != ST_HANDSHAKE)
    return;
  if (reply->type == REDIS_REPLY_ERROR) {
    hs_step(r, -EACCES, reply->str);
    return;
  }
  const redisReply *role = dibba_redis_reply_at(reply, 0);
  const char *s = "?";
  size_t len = 1;
  if (role)
    dibba_redis_reply_str(role, &s, &len);
  if (len == 6 && memcmp(s, "master", 6) == 0) {
    hs_step(r, 0, "");
    return;
  }
  char why[128];
  snprintf(why, sizeof why, "%s:%d reports role '%.*s', not master", r->cur_ip, r->cur_port, (int)(len < 32 ? len : 32),
           s);
  hs_step(r, DIBBA_REDIS_ENOTMASTER, why);
}

static void on_auth_reply(redisAsyncContext *ac, void *reply, void *privdata) { hs_reply(ac, reply, -EACCES); }
static void on_select_reply(redisAsyncContext *ac, void *reply, void *privdata) { hs_reply(ac, reply, -EINVAL); }

static void on_hiredis_connect(const redisAsyncContext *cac, int status) {
  int e = errno;
  redisAsyncContext *ac = (redisAsyncContext *)cac;
  dibba_redis_t *r = ac->data;
  if (r->ac != ac)
    return;
  if (status != REDIS_OK) {
    set_error(r, "%s", ac->errstr);
    attempt_failed(r, errno_status(ac->c.err == REDIS_ERR_IO ? e : 0, UV_ECONNREFUSED));
    return; /* hiredis frees ac after we return */
  }
  r->state = ST_HANDSHAKE;
  r->hs_pending = 0;
  r->hs_status = 0;
  if (r->closing) {
    kick(r);
    return;
  }
  if (r->addr.password) {
    const char *argv[3] = {"AUTH", r->addr.user, r->addr.password};
    if (r->addr.user)
      redisAsyncCommandArgv(ac, on_auth_reply, NULL, 3, argv, NULL);
    else
      redisAsyncCommandArgv(ac, on_auth_reply, NULL, 2, (const char *[]){"AUTH", r->addr.password}, NULL);
    r->hs_pending++;
  }
  if (r->addr.db != 0) {
    char db[16];
    snprintf(db, sizeof db, "%d", r->addr.db);
    redisAsyncCommandArgv(ac, on_select_reply, NULL, 2, (const char *[]){"SELECT", db}, NULL);
    r->hs_pending++;
  }
  if (r->verify_role) {
    redisAsyncCommand(ac, on_role_reply, NULL, "ROLE");
    r->hs_pending++;
  }
  if (r->hs_pending == 0)
    become_ready(r);
}

static void resolved(dibba_redis_t *r, int status, const dibba_redis_target_t *t) {
  int e = 0;
  if (r->state != ST_RESOLVING)
    return;
  if (status < 0) {
    set_error(r, "resolve %s: %s", r->where, dibba_strerror(status));
    attempt_failed(r, status);
    return;
  }
  free(r->cur_path);
  r->cur_path = NULL;
  r->cur_ip[0] = '\0';
  r->cur_port = 0;
  if (t->kind == DIBBA_REDIS_UNIX) {
    r->cur_path = dibba_xstrdup(t->path);
  } else {
    snprintf(r->cur_ip, sizeof r->cur_ip, "%s", t->ip);
    r->cur_port = t->port;
  }
  if (r->addr.kind == DIBBA_REDIS_SENTINEL) {
    free(r->where);
    r->where = dibba_xasprintf("sentinel %s -> %s:%d db %d", r->addr.master_name, r->cur_ip, r->cur_port, r->addr.db);
  }
  errno = 0;
  redisAsyncContext *ac =
      t->kind == DIBBA_REDIS_UNIX ? redisAsyncConnectUnix(t->path) : redisAsyncConnect(t->ip, t->port);
  e = errno;
  if (ac == NULL)
    dibba_oom(sizeof(redisAsyncContext));
  if (ac->err) {
    set_error(r, "%s", ac->errstr);
    redisAsyncFree(ac);
    attempt_failed(r, errno_status(e, UV_ECONNREFUSED));
    return;
  }
  ac->data = r;
  if (redisLibuvAttach(ac, r->loop) != REDIS_OK) {
    redisAsyncFree(ac);
    set_error(r, "cannot watch the socket");
    attempt_failed(r, -EIO);
    return;
  }
  ac->ev.addRead = ev_add_read;
  ac->ev.delRead = ev_del_read;
  ac->ev.addWrite = ev_add_write;
  ac->ev.delWrite = ev_del_write;
  if (t->kind == DIBBA_REDIS_TCP)
    redisEnableKeepAlive(&ac->c);
  r->ac = ac;
  r->state = ST_CONNECTING;
  redisAsyncSetDisconnectCallback(ac, on_hiredis_disconnect);
  redisAsyncSetConnectCallback(ac, on_hiredis_connect); /* after attach: it arms the write watcher */
}

static void conn_timer_cb(uv_timer_t *t) {
  dibba_redis_t *r = t->data;
  set_error(r, "connect timeout after %u ms", r->connect_timeout_ms);
  if (r->state == ST_RESOLVING) {
    if (r->resolver.cancel)
      r->resolver.cancel(r, r->resolver.data);
    attempt_failed(r, UV_ETIMEDOUT);
  } else if (r->state == ST_CONNECTING || r->state == ST_HANDSHAKE) {
    conn_drop(r, UV_ETIMEDOUT);
  }
}

static void start_attempt(dibba_redis_t *r) {
  if (r->closing || r->state != ST_IDLE)
    return;
  r->state = ST_RESOLVING;
  r->error_fresh = 0; /* keep the old text until this attempt produces a new one */
  uv_timer_start(&r->conn_timer, conn_timer_cb, r->connect_timeout_ms, 0);
  int rc = r->resolver.resolve(r, &r->addr, resolved, r->resolver.data);
  if (rc < 0 && r->state == ST_RESOLVING) {
    set_error(r, "resolve %s: %s", r->where, dibba_strerror(rc));
    attempt_failed(r, rc);
  }
}

static void retry_cb(uv_timer_t *t) { start_attempt(t->data); }

static void schedule_retry(dibba_redis_t *r) {
  if (r->fast_retry) { /* a failover was announced: the new master is known, do not wait */
    r->fast_retry = 0;
    r->attempt = 0;
    uv_timer_start(&r->retry_timer, retry_cb, 0, 0);
    return;
  }
  unsigned exp = r->attempt < 16 ? r->attempt : 16;
  uint64_t ceil = (uint64_t)r->backoff_base_ms << exp;
  if (ceil > r->backoff_cap_ms)
    ceil = r->backoff_cap_ms;
  uint32_t rnd;
  dibba_random_bytes(&rnd, sizeof rnd);
  uint64_t delay = rnd % (ceil + 1); /* full jitter */
  r->attempt++;
  uv_timer_start(&r->retry_timer, retry_cb, delay, 0);
}

void dibba__redis_reresolve(dibba_redis_t *r, int cause) {
  if (r->closing)
    return;
  switch (r->state) {
  case ST_RESOLVING:
    if (r->resolver.cancel)
      r->resolver.cancel(r, r->resolver.data);
    r->state = ST_IDLE;
    uv_timer_stop(&r->conn_timer);
    /* fall through */
  case ST_IDLE:
    r->attempt = 0;
    uv_timer_start(&r->retry_timer, retry_cb, 0, 0);
    break;
  default: /* connecting, handshake, ready or dropping: drop it, then retry at once */
    r->fast_retry = 1;
    if (r->state != ST_DROPPING && r->kill_status == 0) {
      r->kill_status = cause;
      kick(r);
    }
    break;
  }
}

/* ---- commands ---- */

/* Sentinel mode: a write refused with READONLY means this server was demoted without us hearing of it. */
static void check_readonly(dibba_redis_t *r, const redisReply *reply) {
  if (!r->verify_role || reply == NULL || reply->type != REDIS_REPLY_ERROR || reply->len < 8 ||
      strncmp(reply->str, "READONLY", 8) != 0 || r->state != ST_READY || r->kill_status)
    return;
  set_error(r, "%s:%d: %.120s", r->cur_ip, r->cur_port, reply->str);
  r->kill_status = DIBBA_REDIS_ENOTMASTER; /* not from inside hiredis: on the next kick */
  r->fast_retry = 1;
  kick(r);
}

static redisReply *reply_copy(const redisReply *in) {
  redisReply *out = dibba_xcalloc(1, sizeof *out);
  out->type = in->type;
  out->integer = in->integer;
  if (in->str) {
    out->len = in->len;
    out->str = dibba_xmalloc(in->len + 1);
    memcpy(out->str, in->str, in->len);
    out->str[in->len] = '\0';
  }
  if (in->type == REDIS_REPLY_ARRAY && in->elements > 0) {
    out->elements = in->elements;
    out->element = dibba_xcalloc(in->elements, sizeof *out->element);
    for (size_t i = 0; i < in->elements; i++)
      out->element[i] = in->element[i] ? reply_copy(in->element[i]) : NULL;
  }
  return out;
}

static void on_part_reply(redisAsyncContext *ac, void *reply_, void *privdata) {
  cmd_t *c = privdata;
  redisReply *reply = reply_;
  if (reply == NULL)
    return; /* the context is going away: on_reply fails the command */
  check_readonly(c->r, reply);
  /* With WAIT, the part before it is the command (or EXEC): hiredis frees the reply when we return. */
  if (c->wait_n && c->parts_seen == c->nparts - 2)
    c->main_reply = reply_copy(reply);
  c->parts_seen++;
}

static int eval_fallback(dibba_redis_t *r, cmd_t *c);

/* An EVALSHA (reply: its own reply, with WAIT the saved copy) found no script on this server: SCRIPT FLUSH,
 * or a new master after a failover whose SCRIPT LOAD has not run first. */
static int is_noscript(const dibba_redis_t *r, const cmd_t *c, const redisReply *reply) {
  return c->script && !c->done && r->state == ST_READY && reply && reply->type == REDIS_REPLY_ERROR &&
         reply->len >= 8 && memcmp(reply->str, "NOSCRIPT", 8) == 0;
}

static void on_reply(redisAsyncContext *ac, void *reply_, void *privdata) {
  cmd_t *c = privdata;
  dibba_redis_t *r = c->r;
  redisReply *reply = reply_;
  list_remove(&r->inflight, c);
  if (reply == NULL && r->state == ST_READY)
    r->state = ST_DROPPING; /* the context is being freed: nothing new may be sent on it */
  int status = reply == NULL ? r->drop_status : reply->type == REDIS_REPLY_ERROR ? DIBBA_REDIS_EREPLY : 0;
  if (reply != NULL && c->wait_n) { /* reply is WAIT's; the user gets the command's own */
    long long acked = reply->type == REDIS_REPLY_INTEGER ? reply->integer : -1;
    redisReply *main = c->main_reply;
    if (is_noscript(r, c, main) && eval_fallback(r, c) == 0)
      return; /* the script did not run: EVAL and WAIT sent again */
    status = main == NULL                      ? DIBBA_EPROTO
             : main->type == REDIS_REPLY_ERROR ? DIBBA_REDIS_EREPLY
             : acked < c->wait_n               ? DIBBA_REDIS_EWAIT
                                               : 0;
    r->wait_acked = acked > INT32_MAX ? INT32_MAX : (int)acked;
    cmd_finish(r, c, status, main);
    r->wait_acked = -1;
  } else {
    if (is_noscript(r, c, reply) && eval_fallback(r, c) == 0)
      return; /* the script did not run: sent again as EVAL, which also loads it */
    check_readonly(r, reply);
    cmd_finish(r, c, status, reply);
  }
  cmd_free(c);
  if (reply != NULL)
    arm_cmd_timer(r);
  if (r->closing && r->inflight.head == NULL)
    kick(r);
}

static void arm_cmd_timer(dibba_redis_t *r) {
  uint64_t earliest = NO_DEADLINE;
  for (cmd_t *c = r->inflight.head; c; c = c->next)
    if (!c->done) {
      earliest = c->deadline;
      break;
    }
  for (cmd_t *c = r->queue.head; c; c = c->next)
    if (c->deadline < earliest)
      earliest = c->deadline;
  if (earliest == NO_DEADLINE || uv_is_closing((uv_handle_t *)&r->cmd_timer)) {
    uv_timer_stop(&r->cmd_timer);
    return;
  }
  uint64_t now = uv_now(r->loop);
  uv_timer_start(&r->cmd_timer, cmd_timer_cb, earliest > now ? earliest - now : 0, 0);
}

static void cmd_timer_cb(uv_timer_t *t) {
  dibba_redis_t *r = t->data;
  uint64_t now = uv_now(r->loop);
  cmd_list_t expired = {0};
  for (cmd_t *c = r->queue.head, *next; c; c = next) {
    next = c->next;
    if (c->deadline <= now) {
      list_remove(&r->queue, c);
      list_push(&expired, c);
    }
  }
  cmd_t *late = NULL;
  if (r->state == ST_READY) {
    for (cmd_t *c = r->inflight.head; c; c = c->next)
      if (!c->done) {
        if (c->deadline <= now)
          late = c;
        break;
      }
  }
  if (late)
    r->state = ST_DROPPING; /* its reply can no longer be matched: the connection is done */
  while (expired.head) {
    cmd_t *c = expired.head;
    list_remove(&expired, c);
    cmd_finish(r, c, UV_ETIMEDOUT, NULL);
    cmd_free(c);
  }
  if (late) {
    set_error(r, "command timed out");
    cmd_finish(r, late, UV_ETIMEDOUT, NULL); /* stays in inflight until hiredis drops it */
    conn_drop(r, UV_ETIMEDOUT);
  }
  arm_cmd_timer(r);
}

/* Name of the first argument of a formatted command ("*N\r\n$L\r\nNAME\r\n"). */
static int first_arg(const char *buf, size_t len, const char **name, size_t *nlen) {
  const char *p = memchr(buf, '\n', len);
  if (p == NULL || (size_t)(p + 1 - buf) >= len || p[1] != '$')
    return -EINVAL;
  char *end;
  unsigned long l = strtoul(p + 2, &end, 10);
  if (*end != '\r' || (size_t)(end + 2 - buf) + l > len)
    return -EINVAL;
  *name = end + 2;
  *nlen = l;
  return 0;
}

static int forbidden(const char *buf, size_t len) {
  static const char *const bad[] = {"subscribe", "psubscribe", "unsubscribe", "punsubscribe", "monitor", NULL};
  const char *n;
  size_t l;
  if (first_arg(buf, len, &n, &l) < 0)
    return 1;
  for (int i = 0; bad[i]; i++)
    if (strlen(bad[i]) == l && strncasecmp(bad[i], n, l) == 0)
      return 1;
  return 0;
}

/* Decimal digits of v into p (no terminator); returns how many. */
static size_t put_u(char *p, size_t v) {
  char tmp[24];
  size_t n = 0;
  do {
    tmp[n++] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  for (size_t i = 0; i < n; i++)
    p[i] = tmp[n - 1 - i];
  return n;
}

static size_t digits(size_t v) {
  size_t n = 1;
  while (v >= 10) {
    v /= 10;
    n++;
  }
  return n;
}

static size_t bulk_len(size_t n) { return 1 + digits(n) + 2 + n + 2; }

static char *put_bulk(char *p, const char *s, size_t n) {
  *p++ = '$';
  p += put_u(p, n);
  *p++ = '\r';
  *p++ = '\n';
  if (n)
    memcpy(p, s, n);
  p += n;
  *p++ = '\r';
  *p++ = '\n';
  return p;
}

/* RESP for head[0..nhead) followed by argv[0..argc); hiredis's formatter prints every length with sprintf,
 * which was a third of the worker's time per task. Returns the length; *out is malloc'd. */
static size_t format_cmd(int nhead, const char *const *head, const size_t *headlen, int argc, const char **argv,
                         const size_t *argvlen, size_t *tail_off, char **out) {
  size_t total = 1 + digits((size_t)(nhead + argc)) + 2;
  for (int i = 0; i < nhead; i++)
    total += bulk_len(headlen[i]);
  for (int i = 0; i < argc; i++)
    total += bulk_len(argvlen ? argvlen[i] : strlen(argv[i]));
  char *buf = dibba_xmalloc(total), *p = buf;
  *p++ = '*';
  p += put_u(p, (size_t)(nhead + argc));
  *p++ = '\r';
  *p++ = '\n';
  for (int i = 0; i < nhead; i++)
    p = put_bulk(p, head[i], headlen[i]);
  if (tail_off)
    *tail_off = (size_t)(p - buf);
  for (int i = 0; i < argc; i++)
    p = put_bulk(p, argv[i], argvlen ? argvlen[i] : strlen(argv[i]));
  *out = buf;
  return total;
}

static cmd_t *cmd_new(dibba_redis_t *r, dibba_redis_cb cb, void *data, int nparts) {
  cmd_t *c = dibba_xcalloc(1, sizeof *c);
  c->r = r;
  c->cb = cb;
  c->data = data;
  c->nparts = nparts;
  c->lens = nparts == 1 ? &c->len1 : dibba_xcalloc((size_t)nparts, sizeof *c->lens);
  return c;
}

/* Take ownership of c: send, queue, or free it and return an error. */
static int submit(dibba_redis_t *r, cmd_t *c, const dibba_redis_cmd_opts_t *opts) {
  int rc = 0;
  unsigned flags = opts ? opts->flags : 0;
  uint64_t tmo = opts && opts->timeout_ms ? opts->timeout_ms : r->command_timeout_ms;
  if (flags & DIBBA_REDIS_WAIT_REPLICAS) {
    uint32_t n = opts->wait_replicas ? opts->wait_replicas : 1;
    uint32_t wt = opts->wait_timeout_ms ? opts->wait_timeout_ms : 1000;
    if (n > 1000000) {
      rc = -EINVAL;
      goto out;
    }
    char ns[24], ts[24], *w = NULL;
    const char *wargv[] = {"WAIT", ns, ts};
    const size_t wlens[] = {4, put_u(ns, n), put_u(ts, wt)};
    size_t wlen = format_cmd(0, NULL, NULL, 3, wargv, wlens, NULL, &w);
    size_t old = 0;
    for (int i = 0; i < c->nparts; i++)
      old += c->lens[i];
    c->buf = dibba_xrealloc(c->buf, old + wlen);
    memcpy(c->buf + old, w, wlen);
    free(w);
    if (c->lens == &c->len1) { /* a single command grows a second part */
      c->lens = dibba_xcalloc(2, sizeof *c->lens);
      c->lens[0] = c->len1;
    } else {
      c->lens = dibba_xreallocarray(c->lens, (size_t)c->nparts + 1, sizeof *c->lens);
    }
    c->lens[c->nparts++] = wlen;
    c->wait_n = (int)n;
    tmo += wt;
  }
  c->deadline = (flags & DIBBA_REDIS_NO_TIMEOUT) ? NO_DEADLINE : uv_now(r->loop) + tmo;
  if (r->closing) {
    rc = UV_ECANCELED;
    goto out;
  }
  if (r->state == ST_READY) {
    rc = send_cmd_parts(r, c);
    goto out;
  }
  if (!(flags & DIBBA_REDIS_QUEUE)) {
    rc = UV_ENOTCONN;
    goto out;
  }
  if (r->queue.n >= r->queue_max) {
    rc = -ENOBUFS;
    goto out;
  }
  list_push(&r->queue, c);
out:
  if (rc < 0)
    cmd_free(c);
  else
    arm_cmd_timer(r);
  return rc;
}

int dibba_redis_command(dibba_redis_t *r, dibba_redis_cb cb, void *data, const dibba_redis_cmd_opts_t *opts,
                        const char *fmt, ...) {
  char *buf = NULL;
  va_list ap;
  va_start(ap, fmt);
  int len = redisvFormatCommand(&buf, fmt, ap);
  va_end(ap);
  if (len == -2)
    dibba_oom(0);
  if (len < 0)
    return -EINVAL;
  if (forbidden(buf, (size_t)len)) {
    free(buf);
    return -EINVAL;
  }
  cmd_t *c = cmd_new(r, cb, data, 1);
  c->buf = buf;
  c->lens[0] = (size_t)len;
  return submit(r, c, opts);
}

static int format_argv(int argc, const char **argv, const size_t *argvlen, char **out) {
  if (argc < 1 || argv == NULL)
    return -EINVAL;
  size_t len = format_cmd(0, NULL, NULL, argc, argv, argvlen, NULL, out);
  if (len > INT_MAX || forbidden(*out, len)) {
    free(*out);
    *out = NULL;
    return -EINVAL;
  }
  return (int)len;
}

int dibba_redis_command_argv(dibba_redis_t *r, dibba_redis_cb cb, void *data, const dibba_redis_cmd_opts_t *opts,
                             int argc, const char **argv, const size_t *argvlen) {
  char *buf = NULL;
  int len = format_argv(argc, argv, argvlen, &buf);
  if (len < 0)
    return len;
  cmd_t *c = cmd_new(r, cb, data, 1);
  c->buf = buf;
  c->lens[0] = (size_t)len;
  return submit(r, c, opts);
}

/* ---- scripts ---- */

static void script_loaded(dibba_redis_t *r, int status, redisReply *reply, void *data) {
  (void)data;
  if (status == DIBBA_REDIS_EREPLY && reply && reply->str)
    dibba_log_error(LOG_COMP, json_pack("{s:s, s:s}", "client", r->name, "error", reply->str), "SCRIPT LOAD failed");
}

/* Sent straight on the ready connection; the EVALSHAs behind it are ordered after it. */
static void script_load(dibba_redis_t *r, const script_ent_t *e) {
  const char *argv[] = {"SCRIPT", "LOAD", e->s->text};
  cmd_t *c = cmd_new(r, script_loaded, NULL, 1);
  c->len1 = format_cmd(0, NULL, NULL, 3, argv, NULL, NULL, &c->buf);
  c->deadline = uv_now(r->loop) + r->command_timeout_ms;
  if (send_cmd_parts(r, c) < 0)
    cmd_free(c);
}

static const script_ent_t *script_ent(dibba_redis_t *r, const dibba_redis_script_t *s) {
  for (size_t i = 0; i < r->nscripts; i++)
    if (r->scripts[i].s == s)
      return &r->scripts[i];
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int mdlen = 0;
  if (EVP_Digest(s->text, strlen(s->text), md, &mdlen, EVP_sha1(), NULL) != 1 || mdlen != 20)
    dibba_oom(0); /* only an allocation failure makes a SHA-1 of a string fail */
  r->scripts = dibba_xreallocarray(r->scripts, r->nscripts + 1, sizeof *r->scripts);
  script_ent_t *e = &r->scripts[r->nscripts++];
  e->s = s;
  for (int i = 0; i < 20; i++) {
    e->sha[2 * i] = "0123456789abcdef"[md[i] >> 4];
    e->sha[2 * i + 1] = "0123456789abcdef"[md[i] & 15];
  }
  e->sha[40] = '\0';
  if (r->state == ST_READY && !r->closing)
    script_load(r, e);
  return e;
}

int dibba_redis_eval(dibba_redis_t *r, const dibba_redis_script_t *s, dibba_redis_cb cb, void *data,
                     const dibba_redis_cmd_opts_t *opts, int nkeys, int argc, const char **argv,
                     const size_t *argvlen) {
  char nk[24];
  if (s == NULL || s->text == NULL || nkeys < 0 || argc < nkeys || (argc > 0 && argv == NULL))
    return -EINVAL;
  if (r->closing)
    return UV_ECANCELED;
  const script_ent_t *e = script_ent(r, s);
  size_t nklen = put_u(nk, (size_t)nkeys);
  const char *head[] = {"EVALSHA", e->sha, nk};
  const size_t headlen[] = {7, 40, nklen};
  cmd_t *c = cmd_new(r, cb, data, 1);
  c->len1 = format_cmd(3, head, headlen, argc, argv, argvlen, &c->tail_off, &c->buf);
  c->tail_off -= bulk_len(nklen); /* the tail starts at numkeys: EVAL takes the same arguments after the body */
  c->script = s;
  c->argc = argc + 3;
  return submit(r, c, opts);
}

/* Rebuild part 0 of c as EVAL <body> <the same tail>, keep the parts after it (WAIT), and send it all again;
 * its deadline is kept. */
static int eval_fallback(dibba_redis_t *r, cmd_t *c) {
  const char *text = c->script->text;
  size_t tlen = strlen(text), tail = c->lens[0] - c->tail_off, rest = 0;
  for (int i = 1; i < c->nparts; i++)
    rest += c->lens[i];
  size_t n = 1 + digits((size_t)c->argc) + 2 + bulk_len(4) + bulk_len(tlen) + tail;
  char *buf = dibba_xmalloc(n + rest), *p = buf;
  *p++ = '*';
  p += put_u(p, (size_t)c->argc);
  *p++ = '\r';
  *p++ = '\n';
  p = put_bulk(p, "EVAL", 4);
  p = put_bulk(p, text, tlen);
  memcpy(p, c->buf + c->tail_off, tail);
  memcpy(p + tail, c->buf + c->lens[0], rest);
  free(c->buf);
  c->buf = buf;
  c->lens[0] = n;
  c->script = NULL; /* once */
  /* With WAIT the replies are collected afresh; the old copy stays for cmd_finish if the send fails. */
  redisReply *old = c->main_reply;
  c->main_reply = NULL;
  c->parts_seen = 0;
  if (send_cmd_parts(r, c) < 0) {
    c->main_reply = old;
    return UV_ENOTCONN;
  }
  if (old)
    freeReplyObject(old);
  arm_cmd_timer(r);
  return 0;
}

int dibba_redis_multi(dibba_redis_t *r, dibba_redis_cb cb, void *data, const dibba_redis_cmd_opts_t *opts, int n,
                      const dibba_redis_argv_t *cmds) {
  int rc = 0;
  dibba_buf_t b;
  dibba_buf_init(&b, 0);
  if (n < 1 || n > 100000 || cmds == NULL)
    return -EINVAL;
  cmd_t *c = cmd_new(r, cb, data, n + 2);
  static const char multi[] = "*1\r\n$5\r\nMULTI\r\n", exec[] = "*1\r\n$4\r\nEXEC\r\n";
  dibba_buf_add(&b, multi, sizeof multi - 1);
  c->lens[0] = sizeof multi - 1;
  for (int i = 0; i < n; i++) {
    char *one = NULL;
    int len = format_argv(cmds[i].argc, cmds[i].argv, cmds[i].argvlen, &one);
    if (len < 0) {
      rc = len;
      goto fail;
    }
    dibba_buf_add(&b, one, (size_t)len);
    c->lens[i + 1] = (size_t)len;
    free(one);
  }
  dibba_buf_add(&b, exec, sizeof exec - 1);
  c->lens[n + 1] = sizeof exec - 1;
  c->buf = dibba_buf_steal(&b, NULL);
  return submit(r, c, opts);
fail:
  dibba_buf_free(&b);
  cmd_free(c);
  return rc;
}

/* ---- close ---- */

static void handle_closed(uv_handle_t *h) {
  dibba_redis_t *r = h->data;
  if (--r->pending_closes > 0)
    return;
  if (r->close_cb)
    r->close_cb(r, r->data);
  dibba_redis_addr_free(&r->addr);
  free(r->cur_path);
  free(r->scripts);
  free(r->name);
  free(r->where);
  free(r);
}

static void fail_queue(dibba_redis_t *r, int status) {
  cmd_list_t l = r->queue;
  memset(&r->queue, 0, sizeof r->queue);
  while (l.head) {
    cmd_t *c = l.head;
    list_remove(&l, c);
    cmd_finish(r, c, status, NULL);
    cmd_free(c);
  }
}

static void grace_cb(uv_timer_t *t) { kick(t->data); }

static void sentinel_closed(dibba_redis_t *r) {
  r->sentinel = NULL; /* it freed itself */
  r->sentinel_state = 2;
  kick(r);
}

static void close_step(dibba_redis_t *r) {
  if (r->handles_closing)
    return;
  uv_timer_stop(&r->retry_timer);
  if (r->state == ST_RESOLVING) {
    if (r->resolver.cancel)
      r->resolver.cancel(r, r->resolver.data);
    r->state = ST_IDLE;
    uv_timer_stop(&r->conn_timer);
  }
  fail_queue(r, UV_ECANCELED);
  if (r->ac) {
    uint64_t now = uv_now(r->loop);
    if (r->state == ST_READY && r->inflight.head && now < r->close_deadline) {
      uv_timer_start(&r->conn_timer, grace_cb, r->close_deadline - now, 0);
      return;
    }
    r->drop_status = UV_ECANCELED;
    conn_drop(r, UV_ECANCELED);
  }
  if (r->sentinel_state == 0 && r->sentinel) {
    r->sentinel_state = 1;
    dibba__sentinel_close(r->sentinel, sentinel_closed);
  }
  if (r->sentinel_state == 1)
    return; /* sentinel_closed kicks us again */
  if (r->gai_inflight > 0)
    return; /* gai_cb kicks us again */
  r->handles_closing = 1;
  r->pending_closes = 4;
  uv_close((uv_handle_t *)&r->conn_timer, handle_closed);
  uv_close((uv_handle_t *)&r->retry_timer, handle_closed);
  uv_close((uv_handle_t *)&r->cmd_timer, handle_closed);
  uv_close((uv_handle_t *)&r->kick_timer, handle_closed);
}

static void kick_cb(uv_timer_t *t) {
  dibba_redis_t *r = t->data;
  if (r->kill_status) {
    int st = r->kill_status;
    r->kill_status = 0;
    conn_drop(r, st);
  }
  if (r->closing)
    close_step(r);
}

static void kick(dibba_redis_t *r) {
  if (!r->handles_closing)
    uv_timer_start(&r->kick_timer, kick_cb, 0, 0);
}

int dibba_redis_close(dibba_redis_t *r, dibba_redis_close_cb cb) {
  if (r == NULL)
    return -EINVAL;
  if (r->closing)
    return UV_EALREADY;
  r->closing = 1;
  r->close_cb = cb;
  r->close_deadline = uv_now(r->loop) + r->close_grace_ms;
  kick(r);
  return 0;
}

/* ---- construction and accessors ---- */

int dibba__redis_new(uv_loop_t *loop, const dibba_redis_options_t *opts, const dibba__redis_hooks_t *hooks,
                     void *hook_data, dibba_redis_t **out, char *err, size_t errlen) {
  dibba_redis_addr_t addr;
  int rc = dibba_redis_url_parse(opts ? opts->url : NULL, &addr, err, errlen);
  if (rc < 0)
    return rc;
  dibba_redis_t *r = dibba_xcalloc(1, sizeof *r);
  r->loop = loop;
  r->addr = addr;
  r->name = dibba_xstrdup(opts->name ? opts->name : "redis");
  if (addr.kind == DIBBA_REDIS_UNIX)
    r->where = dibba_xasprintf("unix:%s db %d", addr.path, addr.db);
  else if (addr.kind == DIBBA_REDIS_SENTINEL)
    r->where = dibba_xasprintf("sentinel %s db %d", addr.master_name, addr.db);
  else
    r->where = dibba_xasprintf("%s:%d db %d", addr.host, addr.port, addr.db);
  r->connect_timeout_ms = opts->connect_timeout_ms ? opts->connect_timeout_ms : 3000;
  r->command_timeout_ms = opts->command_timeout_ms ? opts->command_timeout_ms : 5000;
  r->backoff_base_ms = opts->backoff_base_ms ? opts->backoff_base_ms : 100;
  r->backoff_cap_ms = opts->backoff_cap_ms ? opts->backoff_cap_ms : 5000;
  if (r->backoff_cap_ms < r->backoff_base_ms)
    r->backoff_cap_ms = r->backoff_base_ms;
  r->queue_max = opts->queue_max ? opts->queue_max : 1024;
  r->close_grace_ms = opts->close_grace_ms ? opts->close_grace_ms : 2000;
  r->on_connect = opts->on_connect;
  r->on_disconnect = opts->on_disconnect;
  r->resolver = opts->resolver ? *opts->resolver : dibba__redis_builtin_resolver;
  r->data = opts->data;
  if (hooks)
    r->hooks = *hooks;
  r->hook_data = hook_data;
  r->drop_status = UV_ECONNRESET;
  r->wait_acked = -1;
  r->verify_role = addr.kind == DIBBA_REDIS_SENTINEL;
  uv_timer_t *timers[] = {&r->conn_timer, &r->retry_timer, &r->cmd_timer, &r->kick_timer};
  for (size_t i = 0; i < 4; i++) {
    uv_timer_init(loop, timers[i]);
    timers[i]->data = r;
  }
  if (addr.kind == DIBBA_REDIS_SENTINEL && opts->resolver == NULL)
    r->sentinel = dibba__sentinel_new(r, opts, &r->resolver);
  /* First attempt on the next loop turn, so no callback runs inside this call. */
  uv_timer_start(&r->retry_timer, retry_cb, 0, 0);
  *out = r;
  return 0;
}

int dibba_redis_new(uv_loop_t *loop, const dibba_redis_options_t *opts, dibba_redis_t **out, char *err, size_t errlen) {
  return dibba__redis_new(loop, opts, NULL, NULL, out, err, errlen);
}

int dibba_redis_options_from_config(const dibba_config_t *cfg, dibba_redis_options_t *opts, char *err, size_t errlen) {
  int rc;
  int64_t v;
  memset(opts, 0, sizeof *opts);
  rc = dibba_config_str(cfg, "redis.url", NULL, &opts->url, err, errlen);
  if (rc < 0)
    goto out;
  if (opts->url == NULL) {
    rc = dibba_error_set(err, errlen, DIBBA_ECONFIG, "redis.url is not set");
    goto out;
  }
  rc = dibba_config_int(cfg, "redis.connect_timeout_ms", 3000, 1, 600000, &v, err, errlen);
  if (rc < 0)
    goto out;
  opts->connect_timeout_ms = (uint32_t)v;
  rc = dibba_config_int(cfg, "redis.command_timeout_ms", 5000, 1, 3600000, &v, err, errlen);
  if (rc < 0)
    goto out;
  opts->command_timeout_ms = (uint32_t)v;
  rc = dibba_config_str(cfg, "redis.sentinel_user", NULL, &opts->sentinel_user, err, errlen);
  if (rc < 0)
    goto out;
  rc = dibba_config_str(cfg, "redis.sentinel_password", NULL, &opts->sentinel_password, err, errlen);
  if (rc < 0)
    goto out;
  rc = dibba_config_int(cfg, "redis.sentinel_timeout_ms", 500, 1, 600000, &v, err, errlen);
  if (rc < 0)
    goto out;
  opts->sentinel_timeout_ms = (uint32_t)v;
out:
  return rc;
}

redisAsyncContext *dibba__redis_ready_ac(dibba_redis_t *r) { return r->state == ST_READY ? r->ac : NULL; }
int dibba__redis_closing(const dibba_redis_t *r) { return r->closing; }
void *dibba__redis_hook_data(const dibba_redis_t *r) { return r->hook_data; }
void dibba_redis_stats(const dibba_redis_t *r, dibba_redis_stats_t *out) { *out = r->stats; }
int dibba_redis_is_ready(const dibba_redis_t *r) { return r->state == ST_READY; }
const char *dibba_redis_last_error(const dibba_redis_t *r) { return r->last_error; }
void *dibba_redis_data(const dibba_redis_t *r) { return r->data; }
uv_loop_t *dibba_redis_loop(const dibba_redis_t *r) { return r->loop; }
const dibba_redis_addr_t *dibba_redis_addr(const dibba_redis_t *r) { return &r->addr; }
int dibba_redis_wait_acked(const dibba_redis_t *r) { return r->wait_acked; }

int dibba_redis_current(const dibba_redis_t *r, const char **ip, int *port) {
  if (r->state != ST_READY)
    return -ENOTCONN;
  *ip = r->cur_path ? r->cur_path : r->cur_ip;
  *port = r->cur_port;
  return 0;
}
