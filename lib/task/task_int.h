/* SPDX-License-Identifier: Apache-2.0 */
/* Private to lib/task: the Lua scripts that keep the task record, the streams and the events consistent. */
#ifndef DIBBA_TASK_INT_H
#define DIBBA_TASK_INT_H

#include <stddef.h>

#include "dibba/redis.h"

/* HMAC-SHA256 of a then b with a context from dibba_task_key_t (route_mac, envelope_mac). Returns 0 or -EINVAL. */
int dibba__task_mac(void *ctx, const void *a, size_t alen, const void *b, size_t blen, unsigned char out[32]);

/* KEYS: record, stream or delayed zset, claim key (only with a claim). ARGV: id, name, target, route, now, expires,
 * max_retries, e, m, delayed(0/1), due, stream key, claim value ('' none), claim ttl ms. Returns 1 (created), 0 (the
 * record exists: nothing written but a missing claim) or 2 (the claim key holds another value: nothing written).
 * The claim is set last, so a claim key never exists without the record it stands for. */
extern const dibba_redis_script_t dibba__lua_submit;
/* KEYS: record, stream. See scripts.c for ARGV. Returns seq (> 0), 0 (already final; entry acked), -1 (no
 * record; entry acked), -2 (revoked now; entry acked). */
extern const dibba_redis_script_t dibba__lua_state;
/* KEYS: stream, revoked set, then one record per task. ARGV: now, worker, ttl, then id, entry, attempt per task.
 * The STARTED transition of a whole read; returns one state_lua code per task. See scripts.c. */
extern const dibba_redis_script_t dibba__lua_start;
/* KEYS: delayed zset. ARGV: now, limit, prefix. Moves due envelopes to their streams; returns how many. */
extern const dibba_redis_script_t dibba__lua_mover;
/* KEYS: record, revoked set. ARGV: id, now, channel of the task, revoke channel, ttl. */
extern const dibba_redis_script_t dibba__lua_revoke;

#endif
