/* SPDX-License-Identifier: Apache-2.0 */
/* Async Redis client on the daemon's libuv loop: URL parsing, reconnects, timeouts, pub/sub, reply helpers. */
#ifndef DIBBA_REDIS_H
#define DIBBA_REDIS_H

#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>
#include <uv.h>

#include "dibba/config.h"

/* A Redis error reply (type REDIS_REPLY_ERROR) was received; the reply is passed along so its text can be read. */
#define DIBBA_REDIS_EREPLY (-5101)
/* Sentinel mode: the server is not (or no longer) the master: ROLE said replica, a write got READONLY, or the
 * sentinels announced a failover (+switch-master). The client re-resolves through the sentinels. */
#define DIBBA_REDIS_ENOTMASTER (-5102)
/* DIBBA_REDIS_WAIT_REPLICAS: the command ran (its reply is passed along) but fewer replicas than asked
 * acknowledged it within the WAIT timeout; see "What a failover can lose" below. */
#define DIBBA_REDIS_EWAIT (-5103)

/* Name for any status this module hands out (DIBBA_REDIS_EREPLY, UV_E*, errno, DIBBA_E*). Static string. */
const char *dibba_redis_strerror(int status);

/* ---- Addresses ---------------------------------------------------------------------------------------- */

typedef enum { DIBBA_REDIS_TCP = 1, DIBBA_REDIS_UNIX = 2, DIBBA_REDIS_SENTINEL = 3 } dibba_redis_kind_t;

/* One sentinel of a DIBBA_REDIS_SENTINEL address. */
typedef struct dibba_redis_hostport_s {
  char *host; /* host name or IP literal (brackets stripped for IPv6) */
  int port;   /* default 26379 */
} dibba_redis_hostport_t;

#define DIBBA_REDIS_SENTINELS_MAX 16

/* A parsed address. All strings are malloc'd and owned by the struct (dibba_redis_addr_free). */
typedef struct dibba_redis_addr_s {
  dibba_redis_kind_t kind;
  char *host;     /* TCP: host name or IP literal (brackets stripped for IPv6) */
  int port;       /* TCP: 1..65535, default 6379 */
  char *path;     /* UNIX: socket path */
  char *user;     /* ACL user, percent-decoded, or NULL (SENTINEL: for the master, not the sentinels) */
  char *password; /* percent-decoded, or NULL; never logged */
  int db;         /* 0..(2^31-1), default 0 */
  /* SENTINEL only (NULL / 0 otherwise): */
  char *master_name;                 /* the name the sentinels monitor, percent-decoded */
  dibba_redis_hostport_t *sentinels; /* 1..DIBBA_REDIS_SENTINELS_MAX, asked in this order */
  size_t nsentinels;
  char *sentinel_user;     /* AUTH for the sentinels (query sentinel_user=), or NULL */
  char *sentinel_password; /* (query sentinel_password=), or NULL; never logged */
} dibba_redis_addr_t;

/* Parse redis://[user[:pass]@]host[:port][/db], unix:///path[?db=N], unix:/path, redis+unix:///path, and
 * redis+sentinel://[user:pass@]host1[:port1],host2[:port2],.../MASTERNAME[/db][?sentinel_user=U&sentinel_password=P]
 * (sentinel ports default to 26379, IPv6 hosts in brackets; user:pass and db are for the master).
 * The unix forms also accept user=, password= query parameters. On success fills out (free it with
 * dibba_redis_addr_free). Returns -EINVAL with a one-line reason in err (never containing the password). */
int dibba_redis_url_parse(const char *url, dibba_redis_addr_t *out, char *err, size_t errlen);
/* Release an address (the password is wiped). Safe to call twice. */
void dibba_redis_addr_free(dibba_redis_addr_t *a);

/* ---- Connection ----------------------------------------------------------------------------------------- */

typedef struct dibba_redis_s dibba_redis_t;

/* A command completed. status 0: reply is the server's reply. DIBBA_REDIS_EREPLY: reply is the error reply.
 * Any other status (UV_ECONNRESET, UV_ETIMEDOUT, UV_ECANCELED, UV_ENOTCONN): reply is NULL. The reply is only
 * valid during the callback. Called exactly once per accepted command, never from inside the call that
 * issued it. */
typedef void (*dibba_redis_cb)(dibba_redis_t *r, int status, redisReply *reply, void *data);
/* Connection events. on_connect: status 0 when the connection is ready (AUTH and SELECT done), or the error
 * of a failed attempt (UV_ECONNREFUSED, UV_ENOENT, UV_ETIMEDOUT, -EACCES for a rejected AUTH, -EINVAL for a
 * rejected SELECT, ...); a retry is already scheduled. on_disconnect: a ready connection was lost (status is
 * the cause); pending commands have already been failed. */
typedef void (*dibba_redis_event_cb)(dibba_redis_t *r, int status, void *data);
/* dibba_redis_close finished: every handle is closed and r is about to be freed. */
typedef void (*dibba_redis_close_cb)(dibba_redis_t *r, void *data);

/* Where to connect this attempt. Strings are borrowed for the duration of the done call only. */
typedef struct dibba_redis_target_s {
  dibba_redis_kind_t kind;
  const char *ip;   /* TCP: numeric address */
  int port;         /* TCP */
  const char *path; /* UNIX */
} dibba_redis_target_t;
typedef void (*dibba_redis_resolve_done)(dibba_redis_t *r, int status, const dibba_redis_target_t *target);
/* The pluggable address resolution step, run before every connect attempt (e.g. Sentinel discovery later).
 * It must call done exactly once (it may do so synchronously), unless dibba_redis_close is called first,
 * in which case cancel is called and done must not be called afterwards. Return 0 or a negative error
 * (then done is not called and the attempt fails with that error). */
typedef struct dibba_redis_resolver_s {
  int (*resolve)(dibba_redis_t *r, const dibba_redis_addr_t *addr, dibba_redis_resolve_done done, void *data);
  void (*cancel)(dibba_redis_t *r, void *data);
  void *data;
} dibba_redis_resolver_t;

typedef struct dibba_redis_options_s {
  const char *url;             /* required; copied */
  const char *name;            /* label for logs (default "redis"); copied */
  uint32_t connect_timeout_ms; /* connect + AUTH + SELECT; 0: 3000 */
  uint32_t command_timeout_ms; /* default per-command timeout; 0: 5000 */
  uint32_t backoff_base_ms;    /* 0: 100 */
  uint32_t backoff_cap_ms;     /* 0: 5000 */
  uint32_t queue_max;          /* commands waiting for a connection (DIBBA_REDIS_QUEUE); 0: 1024 */
  uint32_t close_grace_ms;     /* how long dibba_redis_close lets in-flight commands finish; 0: 2000 */
  dibba_redis_event_cb on_connect;
  dibba_redis_event_cb on_disconnect;
  const dibba_redis_resolver_t *resolver; /* NULL: built-in (URL host via uv_getaddrinfo, or unix path, or
                                             the Sentinel resolver for redis+sentinel:// URLs) */
  void *data;                             /* user pointer passed to every callback */
  /* Sentinel mode (redis+sentinel:// URLs); ignored otherwise. Both strings override the URL's; copied. */
  const char *sentinel_user;
  const char *sentinel_password;
  uint32_t sentinel_timeout_ms; /* per sentinel: connect + answer; 0: 500 */
} dibba_redis_options_t;

/* Sentinel mode (url redis+sentinel://...). Each attempt runs the Sentinel resolver: it asks the sentinels in
 * URL order, one at a time, SENTINEL get-master-addr-by-name (each within sentinel_timeout_ms); the first
 * address wins. After AUTH and SELECT the client sends ROLE and the connection only becomes ready if the
 * server says "master"; a replica fails the attempt with DIBBA_REDIS_ENOTMASTER (backoff, then ask again).
 * The client also keeps a subscription to +switch-master on one sentinel (moving along the list when that
 * one fails; on every resubscribe it asks the sentinels again, since events are lost while disconnected).
 * When the master is switched it drops the connection (on_disconnect gets DIBBA_REDIS_ENOTMASTER; in-flight
 * commands fail with UV_ECONNRESET and are never re-sent) and connects to the announced master at once,
 * without backoff. A READONLY error reply does the same (a master demoted without an event). A
 * dibba_redis_sub_t with a sentinel URL follows the master the same way and resubscribes as usual.
 * Costs: one extra connection per client for the +switch-master subscription, one short-lived sentinel
 * connection per question. The ACL user of the master needs +role.
 *
 * What a failover can lose. Replication is asynchronous: a write is acknowledged by the master before any
 * replica has it. If the master dies, Sentinel promotes a replica, and every acknowledged write that had not
 * reached that replica is gone (the counter goes back). DIBBA_REDIS_WAIT_REPLICAS narrows the window: a
 * command that completes with status 0 was acknowledged by at least wait_replicas replicas, and survives
 * the promotion of any one of them. It is still not a guarantee: Sentinel may promote a replica that
 * missed the write (for instance the only one it can reach, or when replicas > wait_replicas), WAIT does not
 * make the write durable on disk, and a command that failed with UV_ECONNRESET / UV_ETIMEDOUT or
 * DIBBA_REDIS_EWAIT may or may not have been applied, and may or may not survive (retry only what is
 * idempotent). Writes made to an old master that was partitioned away are lost when it rejoins as a
 * replica (min-replicas-to-write on the server bounds that). */

/* Fill opts from cfg: redis.url (env DIBBA_REDIS_URL; may be a redis+sentinel:// URL),
 * redis.connect_timeout_ms, redis.command_timeout_ms, and for Sentinel redis.sentinel_user,
 * redis.sentinel_password, redis.sentinel_timeout_ms.
 * Other fields are zeroed (defaults). opts->url is owned by cfg. Returns 0 or DIBBA_ECONFIG with err. */
int dibba_redis_options_from_config(const dibba_config_t *cfg, dibba_redis_options_t *opts, char *err, size_t errlen);

/* Create a client and start connecting at once (asynchronously; nothing blocks). Reconnects forever with
 * exponential backoff and full jitter until dibba_redis_close. Returns 0 and *out, or -EINVAL (bad URL or
 * options, reason in err). */
int dibba_redis_new(uv_loop_t *loop, const dibba_redis_options_t *opts, dibba_redis_t **out, char *err, size_t errlen);

/* Stop reconnecting, fail queued commands with UV_ECANCELED, let in-flight commands finish for up to
 * close_grace_ms (then they fail with UV_ECANCELED), close every handle and call cb (may be NULL); r is freed
 * right after cb returns. Safe to call from any callback. Returns 0, or UV_EALREADY if already closing. */
int dibba_redis_close(dibba_redis_t *r, dibba_redis_close_cb cb);

/* Per-command flags. */
enum {
  /* While there is no ready connection, wait in the bounded queue (the timeout still runs) instead of
   * failing at once with UV_ENOTCONN. Queued commands are sent, in order, right after AUTH/SELECT. */
  DIBBA_REDIS_QUEUE = 1 << 0,
  /* No timeout for this command (and, since replies are ordered, for those sent after it). */
  DIBBA_REDIS_NO_TIMEOUT = 1 << 1,
  /* Send WAIT wait_replicas wait_timeout_ms right behind the command (or the MULTI/EXEC batch), in the same
   * pipeline. The callback gets the command's reply; status is DIBBA_REDIS_EWAIT (with that reply) when
   * fewer replicas acknowledged. dibba_redis_wait_acked tells how many did. The WAIT time is added to the
   * command's timeout. */
  DIBBA_REDIS_WAIT_REPLICAS = 1 << 2,
};

typedef struct dibba_redis_cmd_opts_s {
  uint32_t timeout_ms;      /* 0: the client's command_timeout_ms. For BLPOP/XREAD BLOCK use block time + margin */
  unsigned flags;           /* DIBBA_REDIS_QUEUE, DIBBA_REDIS_NO_TIMEOUT, DIBBA_REDIS_WAIT_REPLICAS */
  uint32_t wait_replicas;   /* DIBBA_REDIS_WAIT_REPLICAS: how many replicas must acknowledge; 0: 1 */
  uint32_t wait_timeout_ms; /* DIBBA_REDIS_WAIT_REPLICAS: WAIT's timeout; 0: 1000 */
} dibba_redis_cmd_opts_t;

/* Send a command (hiredis format: %s C string, %b binary pointer + size_t length). opts may be NULL.
 * Returns 0 when accepted (cb is then called exactly once later), else cb is never called and:
 * UV_ENOTCONN (not ready and no DIBBA_REDIS_QUEUE), -ENOBUFS (queue full), UV_ECANCELED (closing),
 * -EINVAL (bad format, or SUBSCRIBE/MONITOR-like commands that belong on a dibba_redis_sub_t).
 * On timeout the command fails with UV_ETIMEDOUT; if it had been sent, the connection is dropped (a reply
 * can no longer be matched), every other in-flight command fails with UV_ECONNRESET, and it reconnects.
 * Nothing is ever re-sent: a command whose reply was lost fails with UV_ECONNRESET. Commands queued behind
 * a slow one inherit its deadline when it is later (replies are ordered, they cannot come sooner). */
int dibba_redis_command(dibba_redis_t *r, dibba_redis_cb cb, void *data, const dibba_redis_cmd_opts_t *opts,
                        const char *fmt, ...);
/* Same, binary safe: argc arguments argv[i] of argvlen[i] bytes (argvlen NULL: strlen). Arguments are copied. */
int dibba_redis_command_argv(dibba_redis_t *r, dibba_redis_cb cb, void *data, const dibba_redis_cmd_opts_t *opts,
                             int argc, const char **argv, const size_t *argvlen);

/* A Lua script run with EVALSHA. text is borrowed and must outlive every client that ran it (a static string). */
typedef struct dibba_redis_script_s {
  const char *text;
} dibba_redis_script_t;
/* Run script s with argv[0..nkeys) as KEYS and the rest as ARGV (argvlen NULL: strlen), as EVALSHA. The first
 * use on a client computes the SHA-1 and sends SCRIPT LOAD; every new connection loads the client's scripts
 * again before its queued commands. A NOSCRIPT reply (SCRIPT FLUSH, a failover) makes the client send the
 * same call once as EVAL, which did not run the first time; cb sees only the final reply. In Sentinel mode the
 * new master after a failover is a new connection: the scripts are loaded there before anything queued.
 * DIBBA_REDIS_WAIT_REPLICAS works as for any command: WAIT follows the EVALSHA, and after NOSCRIPT it follows
 * the EVAL again (the first WAIT's count is ignored). Same return values and timeout semantics as
 * dibba_redis_command_argv. */
int dibba_redis_eval(dibba_redis_t *r, const dibba_redis_script_t *s, dibba_redis_cb cb, void *data,
                     const dibba_redis_cmd_opts_t *opts, int nkeys, int argc, const char **argv, const size_t *argvlen);

/* One command of a transaction. */
typedef struct dibba_redis_argv_s {
  int argc;
  const char **argv;
  const size_t *argvlen; /* NULL: strlen */
} dibba_redis_argv_t;
/* Send MULTI, the n commands and EXEC as one batch; cb gets the EXEC reply (an array with one reply per
 * command, or an EXECABORT error reply). Nothing interleaves on one connection, so the batch is atomic.
 * Same return values and timeout semantics as dibba_redis_command (one deadline for the whole batch). */
int dibba_redis_multi(dibba_redis_t *r, dibba_redis_cb cb, void *data, const dibba_redis_cmd_opts_t *opts, int n,
                      const dibba_redis_argv_t *cmds);

/* Counters for metrics. */
typedef struct dibba_redis_stats_s {
  uint64_t connects;         /* times a connection became ready */
  uint64_t reconnects;       /* ready again after a previous ready connection was lost */
  uint64_t connect_failures; /* failed attempts (refused, timeout, AUTH/SELECT rejected, ...) */
  uint64_t disconnects;      /* ready connections lost */
  uint64_t timeouts;         /* commands failed with UV_ETIMEDOUT */
} dibba_redis_stats_t;
void dibba_redis_stats(const dibba_redis_t *r, dibba_redis_stats_t *out);
/* 1 when commands are sent at once (ready), else 0. */
int dibba_redis_is_ready(const dibba_redis_t *r);
/* The last connection error as text ("" once ready); owned by r, overwritten by the next failure. Never a
 * password (server error texts such as WRONGPASS are kept). */
const char *dibba_redis_last_error(const dibba_redis_t *r);
/* Inside the callback of a DIBBA_REDIS_WAIT_REPLICAS command: how many replicas acknowledged it (WAIT's
 * reply), or -1 when WAIT got no integer reply. Anywhere else: -1. */
int dibba_redis_wait_acked(const dibba_redis_t *r);
/* The address of the current ready connection (ip and port; for unix sockets the path and 0), or -ENOTCONN.
 * In Sentinel mode this is the master in use. ip is owned by r and valid until the next reconnect. */
int dibba_redis_current(const dibba_redis_t *r, const char **ip, int *port);
/* The user pointer from the options. */
void *dibba_redis_data(const dibba_redis_t *r);
uv_loop_t *dibba_redis_loop(const dibba_redis_t *r);
/* The parsed address (borrowed), e.g. for a resolver. */
const dibba_redis_addr_t *dibba_redis_addr(const dibba_redis_t *r);

/* ---- Pub/sub -------------------------------------------------------------------------------------------- */

typedef struct dibba_redis_sub_s dibba_redis_sub_t;

typedef enum {
  DIBBA_REDIS_SUB_MESSAGE = 1,    /* a message on a channel (pattern set for pattern subscriptions) */
  DIBBA_REDIS_SUB_SUBSCRIBED = 2, /* the server confirmed a (p)subscribe of channel (a pattern if is_pattern) */
  DIBBA_REDIS_SUB_UNSUBSCRIBED = 3,
} dibba_redis_sub_kind_t;

/* One event; every pointer refers to reply memory valid only during the callback. */
typedef struct dibba_redis_sub_msg_s {
  dibba_redis_sub_kind_t kind;
  int is_pattern;
  const char *pattern; /* pattern that matched, or NULL */
  size_t pattern_len;
  const char *channel; /* channel, or the (p)subscribed name for confirmations */
  size_t channel_len;
  const char *payload; /* message bytes (may contain NUL) or NULL */
  size_t payload_len;
} dibba_redis_sub_msg_t;

typedef void (*dibba_redis_sub_cb)(dibba_redis_sub_t *s, const dibba_redis_sub_msg_t *msg, void *data);
/* Every time a connection becomes ready and all current subscriptions are confirmed (also the first time);
 * messages published while disconnected are lost, so re-read the state here. */
typedef void (*dibba_redis_sub_event_cb)(dibba_redis_sub_t *s, void *data);
typedef void (*dibba_redis_sub_close_cb)(dibba_redis_sub_t *s, void *data);

typedef struct dibba_redis_sub_options_s {
  dibba_redis_options_t conn; /* its own connection; on_connect/on_disconnect are passed through (r is the
                                 subscriber's internal client) */
  dibba_redis_sub_cb on_message;
  dibba_redis_sub_event_cb on_resubscribed;
  void *data;
} dibba_redis_sub_options_t;

/* Create a subscriber on its own connection and start connecting. Returns 0, or -EINVAL (reason in err). */
int dibba_redis_sub_new(uv_loop_t *loop, const dibba_redis_sub_options_t *opts, dibba_redis_sub_t **out, char *err,
                        size_t errlen);
/* Subscribe to a channel (binary name). Remembered across reconnects; sent now if connected. Returns 0,
 * -EALREADY if already subscribed, UV_ECANCELED if closing, -E2BIG over 4096 subscriptions or a name over
 * 64 KiB. */
int dibba_redis_sub_subscribe(dibba_redis_sub_t *s, const char *channel, size_t len);
int dibba_redis_sub_psubscribe(dibba_redis_sub_t *s, const char *pattern, size_t len);
/* Forget a subscription (and UNSUBSCRIBE if connected). Returns 0, -ENOENT, UV_ECANCELED. */
int dibba_redis_sub_unsubscribe(dibba_redis_sub_t *s, const char *channel, size_t len);
int dibba_redis_sub_punsubscribe(dibba_redis_sub_t *s, const char *pattern, size_t len);
/* Close the connection and free s after cb (may be NULL). Returns 0 or UV_EALREADY. */
int dibba_redis_sub_close(dibba_redis_sub_t *s, dibba_redis_sub_close_cb cb);
/* The subscriber's client, for stats / is_ready / last_error. Do not send commands or close it directly. */
dibba_redis_t *dibba_redis_sub_conn(dibba_redis_sub_t *s);
void *dibba_redis_sub_data(const dibba_redis_sub_t *s);

/* ---- Reply helpers (type-checked; pointers borrow from the reply) ------------------------------------------ */

/* 1 if reply is a nil (REDIS_REPLY_NIL), else 0. */
int dibba_redis_reply_is_nil(const redisReply *reply);
/* String or status reply → *s and *len. Returns 0, -ENOENT for nil, DIBBA_EPROTO for any other type. */
int dibba_redis_reply_str(const redisReply *reply, const char **s, size_t *len);
/* Integer reply, or a string holding a decimal integer. Returns 0, -ENOENT for nil, DIBBA_EPROTO otherwise. */
int dibba_redis_reply_int(const redisReply *reply, long long *out);
/* Element i of an array reply, or NULL if reply is not an array or i is out of range. */
const redisReply *dibba_redis_reply_at(const redisReply *reply, size_t i);
/* In a flat field/value array (HGETALL, an XREAD entry's fields), find field. Returns 0 with *val and *len,
 * -ENOENT if absent, DIBBA_EPROTO if the shape is wrong. */
int dibba_redis_reply_field(const redisReply *pairs, const char *field, const char **val, size_t *len);

/* One stream entry of an XREAD/XREADGROUP/XRANGE reply. fields is the flat field/value array (NULL for an
 * entry deleted while pending); use dibba_redis_reply_field on it. */
typedef struct dibba_redis_entry_s {
  const char *stream; /* NULL for XRANGE replies */
  size_t stream_len;
  const char *id;
  size_t id_len;
  const redisReply *fields;
} dibba_redis_entry_t;
/* Call fn for every entry of an XREAD/XREADGROUP reply ([[stream, [[id, [f, v, ...]], ...]], ...], or nil)
 * or of an XRANGE/XAUTOCLAIM-entries array ([[id, [...]], ...]). fn returns 0 to go on, anything else stops
 * and is returned. Returns 0, fn's value, or DIBBA_EPROTO (nothing is called for a malformed reply). */
int dibba_redis_reply_entries(const redisReply *reply, int (*fn)(const dibba_redis_entry_t *e, void *data), void *data);

#endif
