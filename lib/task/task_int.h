/* SPDX-License-Identifier: Apache-2.0 */
/* Private to lib/task: the Lua scripts that keep the task record, the streams and the events consistent. */
#ifndef DIBBA_TASK_INT_H
#define DIBBA_TASK_INT_H

/* KEYS: record, stream or delayed zset. ARGV: id, name, target, route, now, expires, max_retries, e, m,
 * delayed(0/1), due, stream key. Returns 1 (created) or 0 (the record exists: nothing written). */
extern const char dibba__lua_submit[];
/* KEYS: record, stream. See scripts.c for ARGV. Returns seq (> 0), 0 (already final; entry acked), -1 (no
 * record; entry acked), -2 (revoked now; entry acked). */
extern const char dibba__lua_state[];
/* KEYS: delayed zset. ARGV: now, limit, prefix. Moves due envelopes to their streams; returns how many. */
extern const char dibba__lua_mover[];
/* KEYS: record, revoked set. ARGV: id, now, channel of the task, revoke channel, ttl. */
extern const char dibba__lua_revoke[];

#endif
