/* SPDX-License-Identifier: Apache-2.0 */
/* Private declarations shared by the connection core (conn.c) and the subscriber (sub.c). */
#ifndef DIBBA_REDIS_INT_H
#define DIBBA_REDIS_INT_H

#include <hiredis/async.h>

#include "dibba/redis.h"

/* Hooks a wrapper (the subscriber) installs on its private client. */
typedef struct dibba__redis_hooks_s {
  /* The connection became ready (AUTH/SELECT done); ac may be used to send. Called before on_connect. */
  void (*ready)(dibba_redis_t *r, redisAsyncContext *ac, void *data);
} dibba__redis_hooks_t;

int dibba__redis_new(uv_loop_t *loop, const dibba_redis_options_t *opts, const dibba__redis_hooks_t *hooks,
                     void *hook_data, dibba_redis_t **out, char *err, size_t errlen);
/* The ready connection's context, or NULL when not ready. Only for sending; never freed by the caller. */
redisAsyncContext *dibba__redis_ready_ac(dibba_redis_t *r);
/* The hook_data given to dibba__redis_new. */
void *dibba__redis_hook_data(const dibba_redis_t *r);
/* 1 once dibba_redis_close was called. */
int dibba__redis_closing(const dibba_redis_t *r);

/* The default resolver (numeric address, uv_getaddrinfo, or unix path); keeps its state in r. */
extern const dibba_redis_resolver_t dibba__redis_builtin_resolver;
/* Give up the current connection, attempt or backoff and start a new attempt at once (a failover was
 * announced). A live connection is dropped with cause (its in-flight commands fail with UV_ECONNRESET). */
void dibba__redis_reresolve(dibba_redis_t *r, int cause);

/* The Sentinel machinery a client with a redis+sentinel:// URL owns (sentinel.c). */
typedef struct dibba__sentinel_s dibba__sentinel_t;
/* Start it for owner (its address is DIBBA_REDIS_SENTINEL): the +switch-master subscription starts at once;
 * *res is set to the resolver that asks the sentinels. Never fails. */
dibba__sentinel_t *dibba__sentinel_new(dibba_redis_t *owner, const dibba_redis_options_t *opts,
                                       dibba_redis_resolver_t *res);
/* Cancel everything and close every connection; cb(owner) runs once all are closed (normally on a later loop
 * turn; at once if none was open), and s is gone when it runs. */
void dibba__sentinel_close(dibba__sentinel_t *s, void (*cb)(dibba_redis_t *owner));

#endif
