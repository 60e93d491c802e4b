/* SPDX-License-Identifier: Apache-2.0 */
/* Sentinel mode: a resolver that asks the sentinels where the master is, and a +switch-master follower. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dibba/alloc.h"
#include "dibba/error.h"
#include "dibba/log.h"
#include "redis_int.h"

#define LOG_COMP "redis"
#define SWITCH_CHANNEL "+switch-master"

typedef struct query_s query_t;
typedef struct probe_s probe_t;
typedef void (*answer_cb)(dibba__sentinel_t *s, int status, const char *ip, int port);

/* One question ("where is the master?") asked of the sentinels in order until one answers. */
struct query_s {
  dibba__sentinel_t *s;
  answer_cb cb;
  size_t next;     /* the sentinel asked next */
  int last_status; /* why the previous one did not answer */
  probe_t *probe;  /* the sentinel being asked now */
};

/* One short-lived connection to one sentinel for one question. Freed from its client's close callback. */
struct probe_s {
  dibba__sentinel_t *s;
  query_t *q; /* NULL once nobody waits for the answer */
  dibba_redis_t *c;
  int decided;
};

struct dibba__sentinel_s {
  dibba_redis_t *owner;
  uv_loop_t *loop;
  const dibba_redis_addr_t *addr; /* the owner's; outlives us */
  char *user, *password;          /* for the sentinels */
  uint32_t timeout_ms, backoff_base_ms, backoff_cap_ms;
  query_t *resolve_q; /* the owner's connect attempt waits for this one */
  dibba_redis_resolve_done done;
  query_t *check_q; /* asked after every resubscribe: events may have been missed */
  char hint_ip[64]; /* announced by +switch-master: the next attempt goes there without asking */
  int hint_port;
  char known_ip[64]; /* last master seen, for logs */
  int known_port;
  dibba_redis_sub_t *sub;
  size_t sub_next; /* the sentinel the subscriber tries next */
  int children;    /* probes and the subscriber not yet closed */
  int closing;
  void (*close_cb)(dibba_redis_t *owner);
};

static void probe_start(query_t *q);

static void wipe_free(char *p) {
  if (p) {
    explicit_bzero(p, strlen(p));
    free(p);
  }
}

static void maybe_freed(dibba__sentinel_t *s) {
  if (!s->closing || s->children > 0)
    return;
  void (*cb)(dibba_redis_t *) = s->close_cb;
  dibba_redis_t *owner = s->owner;
  free(s->user);
  wipe_free(s->password);
  free(s);
  if (cb)
    cb(owner);
}

/* Append s percent-encoded (everything but RFC 3986 unreserved characters). */
static void pct_append(char *out, size_t *o, const char *s) {
  static const char hex[] = "0123456789ABCDEF";
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || strchr("-._~", ch)) {
      out[(*o)++] = (char)ch;
    } else {
      out[(*o)++] = '%';
      out[(*o)++] = hex[ch >> 4];
      out[(*o)++] = hex[ch & 15];
    }
  }
}

/* redis://[user:pass@]host:port for sentinel i; the caller wipes and frees it. */
static char *sentinel_url(const dibba__sentinel_t *s, size_t i) {
  const dibba_redis_hostport_t *h = &s->addr->sentinels[i];
  size_t n = 32 + strlen(h->host) + 3 * ((s->user ? strlen(s->user) : 0) + (s->password ? strlen(s->password) : 0));
  char *out = dibba_xmalloc(n);
  size_t o = 0;
  memcpy(out, "redis://", 8);
  o = 8;
  if (s->password) {
    if (s->user)
      pct_append(out, &o, s->user);
    out[o++] = ':';
    pct_append(out, &o, s->password);
    out[o++] = '@';
  }
  int v6 = strchr(h->host, ':') != NULL;
  snprintf(out + o, n - o, "%s%s%s:%d", v6 ? "[" : "", h->host, v6 ? "]" : "", h->port);
  return out;
}

/* ---- questions to the sentinels ---- */

static query_t *query_new(dibba__sentinel_t *s, answer_cb cb) {
  query_t *q = dibba_xcalloc(1, sizeof *q);
  q->s = s;
  q->cb = cb;
  q->last_status = UV_ECONNREFUSED;
  return q;
}

static void query_finish(query_t *q, int status, const char *ip, int port) {
  dibba__sentinel_t *s = q->s;
  answer_cb cb = q->cb;
  if (s->resolve_q == q)
    s->resolve_q = NULL;
  if (s->check_q == q)
    s->check_q = NULL;
  free(q);
  cb(s, status, ip, port);
}

static void probe_closed(dibba_redis_t *c, void *data) {
  probe_t *p = data;
  dibba__sentinel_t *s = p->s;
  free(p);
  s->children--;
  maybe_freed(s);
}

/* The probe has its result: close its connection, and answer the query or ask the next sentinel. */
static void probe_decide(probe_t *p, int status, const char *ip, int port) {
  if (p->decided)
    return;
  p->decided = 1;
  query_t *q = p->q;
  p->q = NULL;
  dibba_redis_close(p->c, probe_closed);
  if (q == NULL)
    return;
  q->probe = NULL;
  if (status == 0) {
    query_finish(q, 0, ip, port);
    return;
  }
  q->last_status = status;
  probe_start(q);
}

static void query_cancel(query_t *q) {
  if (q == NULL)
    return;
  probe_t *p = q->probe;
  if (p) {
    p->q = NULL;
    probe_decide(p, UV_ECANCELED, NULL, 0);
  }
  free(q);
}

static void probe_connected(dibba_redis_t *c, int status, void *data) {
  if (status < 0) /* refused, timed out, AUTH rejected: do not wait for the command timeout */
    probe_decide(data, status, NULL, 0);
}

static void probe_reply(dibba_redis_t *c, int status, redisReply *reply, void *data) {
  probe_t *p = data;
  if (status != 0) {
    if (status == DIBBA_REDIS_EREPLY)
      dibba_log(DIBBA_LOG_WARN, LOG_COMP, json_pack("{s:s}", "error", reply->str), "sentinel refused the question");
    probe_decide(p, status, NULL, 0);
    return;
  }
  if (dibba_redis_reply_is_nil(reply)) { /* this sentinel does not monitor that name */
    probe_decide(p, -ENOENT, NULL, 0);
    return;
  }
  const char *ip, *port;
  size_t iplen, portlen;
  char ipbuf[64], portbuf[8];
  if (dibba_redis_reply_str(dibba_redis_reply_at(reply, 0), &ip, &iplen) < 0 ||
      dibba_redis_reply_str(dibba_redis_reply_at(reply, 1), &port, &portlen) < 0 || iplen == 0 ||
      iplen >= sizeof ipbuf || portlen == 0 || portlen >= sizeof portbuf) {
    probe_decide(p, DIBBA_EPROTO, NULL, 0);
    return;
  }
  memcpy(ipbuf, ip, iplen);
  ipbuf[iplen] = '\0';
  memcpy(portbuf, port, portlen);
  portbuf[portlen] = '\0';
  char *end;
  long pn = strtol(portbuf, &end, 10);
  if (*end != '\0' || pn < 1 || pn > 65535) {
    probe_decide(p, DIBBA_EPROTO, NULL, 0);
    return;
  }
  probe_decide(p, 0, ipbuf, (int)pn);
}

/* Ask sentinel q->next; past the last one the query fails with the last reason. */
static void probe_start(query_t *q) {
  dibba__sentinel_t *s = q->s;
  if (q->next >= s->addr->nsentinels) {
    query_finish(q, q->last_status, NULL, 0);
    return;
  }
  probe_t *p = dibba_xcalloc(1, sizeof *p);
  p->s = s;
  p->q = q;
  char *url = sentinel_url(s, q->next++);
  /* One attempt only: the backoff is longer than the probe lives. */
  dibba_redis_options_t o = {.url = url,
                             .name = "sentinel",
                             .connect_timeout_ms = s->timeout_ms,
                             .command_timeout_ms = s->timeout_ms,
                             .backoff_base_ms = 600000,
                             .backoff_cap_ms = 600000,
                             .close_grace_ms = 1,
                             .on_connect = probe_connected,
                             .data = p};
  char err[256];
  int rc = dibba_redis_new(s->loop, &o, &p->c, err, sizeof err);
  wipe_free(url);
  if (rc < 0) { /* the URL parsed once already; cannot happen */
    free(p);
    q->last_status = rc;
    probe_start(q);
    return;
  }
  s->children++;
  q->probe = p;
  dibba_redis_cmd_opts_t co = {.timeout_ms = s->timeout_ms, .flags = DIBBA_REDIS_QUEUE};
  rc = dibba_redis_command(p->c, probe_reply, p, &co, "SENTINEL get-master-addr-by-name %s", s->addr->master_name);
  if (rc < 0)
    probe_decide(p, rc, NULL, 0);
}

/* ---- the resolver ---- */

static int is_numeric(const char *ip) {
  unsigned char tmp[16];
  return uv_inet_pton(AF_INET, ip, tmp) == 0 || uv_inet_pton(AF_INET6, ip, tmp) == 0;
}

static void note_master(dibba__sentinel_t *s, const char *ip, int port, const char *how) {
  if (strcmp(ip, s->known_ip) == 0 && port == s->known_port)
    return;
  dibba_log(DIBBA_LOG_INFO, LOG_COMP,
            json_pack("{s:s, s:s, s:i, s:s, s:i, s:s}", "master", s->addr->master_name, "addr", ip, "port", port,
                      "previous", s->known_ip, "previous_port", s->known_port, "source", how),
            "sentinel: master address");
  snprintf(s->known_ip, sizeof s->known_ip, "%s", ip);
  s->known_port = port;
}

/* Hand an address to the owner's attempt; host names (resolve-hostnames yes) go through getaddrinfo. */
static void deliver(dibba__sentinel_t *s, dibba_redis_resolve_done done, int status, const char *ip, int port) {
  if (status < 0) {
    done(s->owner, status, NULL);
    return;
  }
  if (is_numeric(ip)) {
    dibba_redis_target_t t = {.kind = DIBBA_REDIS_TCP, .ip = ip, .port = port};
    done(s->owner, 0, &t);
    return;
  }
  dibba_redis_addr_t tmp = {.kind = DIBBA_REDIS_TCP, .host = (char *)ip, .port = port};
  int rc = dibba__redis_builtin_resolver.resolve(s->owner, &tmp, done, NULL);
  if (rc < 0)
    done(s->owner, rc, NULL);
}

static void resolve_answer(dibba__sentinel_t *s, int status, const char *ip, int port) {
  dibba_redis_resolve_done done = s->done;
  s->done = NULL;
  if (status == 0)
    note_master(s, ip, port, "sentinel");
  else
    dibba_log(DIBBA_LOG_WARN, LOG_COMP,
              json_pack("{s:s, s:i, s:s}", "master", s->addr->master_name, "sentinels", (int)s->addr->nsentinels,
                        "error", dibba_redis_strerror(status)),
              "sentinel: no sentinel told where the master is");
  deliver(s, done, status, ip, port);
}

static int sentinel_resolve(dibba_redis_t *r, const dibba_redis_addr_t *a, dibba_redis_resolve_done done, void *data) {
  dibba__sentinel_t *s = data;
  if (s->hint_port) { /* announced by +switch-master just now: no need to ask */
    char ip[64];
    int port = s->hint_port;
    snprintf(ip, sizeof ip, "%s", s->hint_ip);
    s->hint_port = 0;
    note_master(s, ip, port, "+switch-master");
    deliver(s, done, 0, ip, port);
    return 0;
  }
  s->done = done;
  s->resolve_q = query_new(s, resolve_answer);
  probe_start(s->resolve_q);
  return 0;
}

static void sentinel_cancel(dibba_redis_t *r, void *data) {
  dibba__sentinel_t *s = data;
  query_t *q = s->resolve_q;
  s->resolve_q = NULL;
  s->done = NULL;
  query_cancel(q);
  dibba__redis_builtin_resolver.cancel(r, NULL);
}

/* ---- following failovers ---- */

/* Switch the owner to ip:port at once, unless it is already connected there. */
static void switch_to(dibba__sentinel_t *s, const char *ip, int port, const char *why) {
  const char *cur;
  int cport;
  if (dibba_redis_current(s->owner, &cur, &cport) == 0 && strcmp(cur, ip) == 0 && cport == port)
    return;
  dibba_log(DIBBA_LOG_WARN, LOG_COMP,
            json_pack("{s:s, s:s, s:i, s:s}", "master", s->addr->master_name, "addr", ip, "port", port, "why", why),
            "sentinel: master switched, reconnecting");
  snprintf(s->hint_ip, sizeof s->hint_ip, "%s", ip);
  s->hint_port = port;
  dibba__redis_reresolve(s->owner, DIBBA_REDIS_ENOTMASTER);
}

static void check_answer(dibba__sentinel_t *s, int status, const char *ip, int port) {
  const char *cur;
  int cport;
  /* Only a ready connection can be on the wrong server; an attempt in progress asks by itself. */
  if (status == 0 && !s->closing && dibba_redis_current(s->owner, &cur, &cport) == 0)
    switch_to(s, ip, port, "sentinels disagree with the current connection");
}

static void sub_resubscribed(dibba_redis_sub_t *sub, void *data) {
  dibba__sentinel_t *s = data;
  if (s->closing || s->check_q)
    return;
  s->check_q = query_new(s, check_answer);
  probe_start(s->check_q);
}

/* "+switch-master <name> <old-ip> <old-port> <new-ip> <new-port>" */
static void sub_message(dibba_redis_sub_t *sub, const dibba_redis_sub_msg_t *m, void *data) {
  dibba__sentinel_t *s = data;
  if (s->closing || m->kind != DIBBA_REDIS_SUB_MESSAGE || m->payload_len == 0 || m->payload_len >= 512)
    return;
  char buf[512], name[256], oldip[64], newip[64];
  int oldport, newport;
  memcpy(buf, m->payload, m->payload_len);
  buf[m->payload_len] = '\0';
  if (sscanf(buf, "%255s %63s %d %63s %d", name, oldip, &oldport, newip, &newport) != 5 || newport < 1 ||
      newport > 65535 || strcmp(name, s->addr->master_name) != 0)
    return;
  switch_to(s, newip, newport, "+switch-master");
}

/* The subscriber goes round the sentinel list: each attempt tries the next one. */
static int sub_resolve(dibba_redis_t *r, const dibba_redis_addr_t *a, dibba_redis_resolve_done done, void *data) {
  dibba__sentinel_t *s = data;
  const dibba_redis_hostport_t *h = &s->addr->sentinels[s->sub_next++ % s->addr->nsentinels];
  dibba_redis_addr_t tmp = {.kind = DIBBA_REDIS_TCP, .host = h->host, .port = h->port};
  return dibba__redis_builtin_resolver.resolve(r, &tmp, done, NULL);
}

static void sub_cancel(dibba_redis_t *r, void *data) { dibba__redis_builtin_resolver.cancel(r, NULL); }

static void sub_closed(dibba_redis_sub_t *sub, void *data) {
  dibba__sentinel_t *s = data;
  s->sub = NULL;
  s->children--;
  maybe_freed(s);
}

dibba__sentinel_t *dibba__sentinel_new(dibba_redis_t *owner, const dibba_redis_options_t *opts,
                                       dibba_redis_resolver_t *res) {
  dibba__sentinel_t *s = dibba_xcalloc(1, sizeof *s);
  const dibba_redis_addr_t *a = dibba_redis_addr(owner);
  s->owner = owner;
  s->loop = dibba_redis_loop(owner);
  s->addr = a;
  s->user = dibba_xstrdup(opts->sentinel_user ? opts->sentinel_user : a->sentinel_user);
  s->password = dibba_xstrdup(opts->sentinel_password ? opts->sentinel_password : a->sentinel_password);
  s->timeout_ms = opts->sentinel_timeout_ms ? opts->sentinel_timeout_ms : 500;
  /* The event subscription moves to the next sentinel on every failure, so it must not wait for the owner's
   * (possibly long) backoff; a whole round of dead sentinels still costs about a second. */
  s->backoff_base_ms = 100;
  s->backoff_cap_ms = 1000;
  *res = (dibba_redis_resolver_t){sentinel_resolve, sentinel_cancel, s};

  dibba_redis_resolver_t sr = {sub_resolve, sub_cancel, s};
  char *url = sentinel_url(s, 0); /* credentials only: sub_resolve picks the host */
  dibba_redis_sub_options_t so = {.conn = {.url = url,
                                           .name = "sentinel-events",
                                           .connect_timeout_ms = s->timeout_ms,
                                           .backoff_base_ms = s->backoff_base_ms,
                                           .backoff_cap_ms = s->backoff_cap_ms,
                                           .resolver = &sr},
                                  .on_message = sub_message,
                                  .on_resubscribed = sub_resubscribed,
                                  .data = s};
  char err[256];
  if (dibba_redis_sub_new(s->loop, &so, &s->sub, err, sizeof err) < 0) { /* the URL parsed once already */
    s->sub = NULL;
    dibba_log(DIBBA_LOG_ERROR, LOG_COMP, json_pack("{s:s}", "error", err), "sentinel: cannot follow failovers");
  } else {
    s->children++;
    dibba_redis_sub_subscribe(s->sub, SWITCH_CHANNEL, strlen(SWITCH_CHANNEL));
  }
  wipe_free(url);
  return s;
}

void dibba__sentinel_close(dibba__sentinel_t *s, void (*cb)(dibba_redis_t *owner)) {
  s->closing = 1;
  s->close_cb = cb;
  query_t *rq = s->resolve_q, *cq = s->check_q;
  s->resolve_q = s->check_q = NULL;
  s->done = NULL;
  query_cancel(rq);
  query_cancel(cq);
  if (s->sub)
    dibba_redis_sub_close(s->sub, sub_closed);
  maybe_freed(s); /* at once only when nothing was open */
}
