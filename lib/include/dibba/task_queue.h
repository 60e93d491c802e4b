/* SPDX-License-Identifier: Apache-2.0 */
/* The task transport over Redis Streams: producer (submit, revoke, results) and the worker-side consumer. */
#ifndef DIBBA_TASK_QUEUE_H
#define DIBBA_TASK_QUEUE_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <uv.h>

#include "dibba/id.h"
#include "dibba/redis.h"
#include "dibba/task.h"
#include "dibba/task_registry.h"

#define DIBBA_TASK_GROUP "workers"
#define DIBBA_TASK_DEFAULT_EXPIRES_MS (24LL * 3600 * 1000)
#define DIBBA_TASK_RESULT_TTL_S (24 * 3600)

/* ---- producer ---- */

/* What to submit. Exactly one of host/role; at most one of args_json/args_msg. */
typedef struct dibba_task_submit_s {
  const char *name;                 /* task name, [a-z0-9_.-]{1,64} */
  const char *host;                 /* route to this host ... */
  const char *role;                 /* ... or to this shared role */
  const char *args_json;            /* a JSON object as text, or NULL */
  const ProtobufCMessage *args_msg; /* a TaskEnvelope args member (NodeQuery, SleepArgs, Pod...), or NULL */
  const char *id;                   /* a caller-chosen id (idempotent resubmit), or NULL for a new UUID */
  int64_t countdown_ms;             /* run no sooner than now + countdown (0: at once) */
  int64_t eta_ms;                   /* or at this epoch time (wins over countdown when > 0) */
  int64_t expires_ms;               /* relative expiry from now (0: DIBBA_TASK_DEFAULT_EXPIRES_MS) */
  uint32_t max_retries;
  /* > 0: the script is followed by WAIT wait_replicas wait_timeout_ms (DIBBA_REDIS_WAIT_REPLICAS), so status 0
   * or 1 means that many replicas have the record and the entry; fewer acknowledgements give
   * DIBBA_REDIS_EWAIT (written on the master, may not survive a failover: resubmit with the same id). 0: off. */
  uint32_t wait_replicas;
  uint32_t wait_timeout_ms; /* with wait_replicas: WAIT's timeout (0: 1000) */
  /* Optional at-most-once guard, checked and set in the same script as the record and the XADD: submit only if
   * claim_key is free or already holds claim_value, and then SET claim_key claim_value PX claim_ttl_ms. A claim
   * key therefore never exists without its task. A submit with a claim is not queued while disconnected: it
   * fails at once with UV_ENOTCONN, so the caller decides whether it is still in time to retry. */
  const char *claim_key;   /* NULL: no guard */
  const char *claim_value; /* non-empty */
  int64_t claim_ttl_ms;    /* > 0 */
} dibba_task_submit_t;

/* Submitted: status 0 (created), 1 (a record with this id already existed: nothing was written), 2 (claim_key
 * holds another claim_value: nothing was written), or a dibba_redis_cb status (< 0) when the outcome is
 * unknown. */
typedef void (*dibba_task_submit_cb)(int status, const char *id, void *data);

/* Build and seal the envelope, then in one atomic Lua script (idempotent by task id) write the record
 * <prefix>task:<id> (state PENDING) and XADD {e, m} to <prefix>q:<route>, or ZADD the id to <prefix>delayed
 * (envelope kept in the record) when it is due later. id_out (DIBBA_ID_LEN + 1) gets the id at once.
 * Returns 0 (cb follows, never from inside this call), -EINVAL (bad input, reason in err), -E2BIG, or a
 * dibba_redis_command error (UV_ENOTCONN, -ENOBUFS, UV_ECANCELED). */
int dibba_task_submit(dibba_redis_t *r, const char *prefix, const dibba_task_key_t *k, const dibba_task_submit_t *s,
                      dibba_task_submit_cb cb, void *data, char id_out[DIBBA_ID_LEN + 1], char *err, size_t errlen);

/* A record read back: status 0 and a new JSON object {task_id, status, result, progress, error, worker, name,
 * target, attempt, seq, created_at_ms, updated_at_ms, finished_at_ms} (owned by the callee: valid during the
 * call only), -ENOENT (no such task) or a redis error. */
typedef void (*dibba_task_record_cb)(int status, const json_t *record, void *data);
/* HGETALL the record of id. Returns 0 (cb follows) or a dibba_redis_command error. */
int dibba_task_record_get(dibba_redis_t *r, const char *prefix, const char *id, dibba_task_record_cb cb, void *data);
/* Turn an HGETALL reply of a task record into the JSON view above (new reference), or NULL if empty. */
json_t *dibba_task_record_json(const char *id, const redisReply *hgetall);

/* Revoked: status 1 (the record was still waiting and is now REVOKED), 0 (marked revoked; a running task is
 * told to cancel), -ENOENT (no such task), or a redis error. */
typedef void (*dibba_task_revoke_cb)(int status, void *data);
/* SADD <prefix>revoked id; a PENDING/RETRY record becomes REVOKED at once; PUBLISH id on <prefix>revoke.
 * Returns 0 (cb follows) or a dibba_redis_command error. */
int dibba_task_revoke(dibba_redis_t *r, const char *prefix, const char *id, dibba_task_revoke_cb cb, void *data);

/* ---- consumer ---- */

typedef struct dibba_task_consumer_s dibba_task_consumer_t;

typedef struct dibba_task_consumer_options_s {
  const dibba_redis_options_t *redis; /* connection template (url, timeouts); one connection per route, one
                                         for commands and one subscriber are made from it */
  const char *prefix;
  const dibba_task_key_t *key;      /* borrowed; outlives the consumer */
  const dibba_task_registry_t *reg; /* borrowed; outlives the consumer */
  const char *consumer;             /* consumer name in the group: the hostname */
  const char *const *routes;        /* the routes to consume (dibba_route_host / dibba_route_role) */
  size_t nroutes;
  uint32_t concurrency;           /* tasks in flight, split evenly across routes (0: 16) */
  uint32_t visibility_timeout_ms; /* reclaim other consumers' entries idle longer than this (0: 60000) */
  uint32_t block_ms;              /* XREADGROUP BLOCK (0: 2000) */
  uint32_t result_ttl_s;          /* TTL of final records (0: DIBBA_TASK_RESULT_TTL_S) */
  uint32_t delayed_interval_ms;   /* delayed mover period (0: 100) */
  /* > 0: final (and retry) writes wait for this many replicas (DIBBA_REDIS_WAIT_REPLICAS), so a result the
   * worker has let go of survives a failover to one of them. Fewer acknowledgements are logged and accepted
   * (the result is on the master; re-sending cannot make a replica appear). 0: off. */
  uint32_t wait_replicas;
  uint32_t wait_timeout_ms; /* with wait_replicas: WAIT's timeout (0: 1000) */
} dibba_task_consumer_options_t;

/* Counters for metrics and the heartbeat. */
typedef struct dibba_task_consumer_stats_s {
  uint64_t received, started, succeeded, failed, retried, revoked;
  uint64_t rejected_forged, rejected_expired, rejected_replay, rejected_malformed;
  uint64_t reclaimed, handed_back, moved_delayed;
  uint32_t in_flight;
} dibba_task_consumer_stats_t;

/* Create the consumer and start consuming at once (group created with MKSTREAM; own pending entries first,
 * then new ones). Returns 0 or -EINVAL (reason in err). */
int dibba_task_consumer_new(uv_loop_t *loop, const dibba_task_consumer_options_t *opts, dibba_task_consumer_t **out,
                            char *err, size_t errlen);
void dibba_task_consumer_stats(const dibba_task_consumer_t *c, dibba_task_consumer_stats_t *out);
/* The stats as a new JSON object. */
json_t *dibba_task_consumer_stats_json(const dibba_task_consumer_t *c);

typedef void (*dibba_task_consumer_stop_cb)(dibba_task_consumer_t *c, void *data);
/* Graceful stop: stop reading, let in-flight tasks finish for up to grace_ms (their results are stored and
 * acked), then cancel the rest and hand their entries back (pending, idle time set very high so any worker
 * of the route claims them at once), close every connection and handle, call cb, and free c.
 * Returns 0 or UV_EALREADY. */
int dibba_task_consumer_stop(dibba_task_consumer_t *c, uint32_t grace_ms, dibba_task_consumer_stop_cb cb, void *data);

#endif
