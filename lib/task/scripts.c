/* SPDX-License-Identifier: Apache-2.0 */
/* The task transport's Lua scripts: each runs atomically in Redis, so a record and its stream never disagree. */
#include "task_int.h"

/* Run with EVALSHA (dibba_redis_eval): Redis would otherwise hash the whole text on every call. */

static const char submit_lua[] =
    "local claim = nil\n"
    "if ARGV[13] ~= '' then\n"
    "  claim = redis.call('GET', KEYS[3])\n"
    "  if claim and claim ~= ARGV[13] then return 2 end\n"
    "end\n"
    "local function claimed()\n"
    "  if ARGV[13] ~= '' and not claim then redis.call('SET', KEYS[3], ARGV[13], 'PX', ARGV[14]) end\n"
    "end\n"
    "if redis.call('EXISTS', KEYS[1]) == 1 then claimed() return 0 end\n"
    "redis.call('HSET', KEYS[1], 'state', 'PENDING', 'name', ARGV[2], 'target', ARGV[3], 'route', ARGV[4],\n"
    "  'created', ARGV[5], 'updated', ARGV[5], 'expires', ARGV[6], 'max_retries', ARGV[7], 'attempt', '0')\n"
    "if ARGV[10] == '1' then\n"
    "  redis.call('HSET', KEYS[1], 'e', ARGV[8], 'm', ARGV[9], 'stream', ARGV[12])\n"
    "  redis.call('ZADD', KEYS[2], ARGV[11], ARGV[1])\n"
    "else\n"
    "  redis.call('XADD', KEYS[2], '*', 'e', ARGV[8], 'm', ARGV[9])\n"
    "end\n"
    "claimed()\n"
    "return 1\n";

/* ARGV: 1 id, 2 state, 3 now, 4 worker, 5 progress json, 6 event channel, 7 result json, 8 error json,
 * 9 final (0/1), 10 ttl, 11 entry id to ack ('' none), 12 revoked set, 13 check revoked (0/1), 14 run id,
 * 15 delayed zset, 16 retry envelope ('' none), 17 retry mac, 18 retry due, 19 attempt.
 * The first final write wins; a later one from another run only counts itself in 'completions'. The record's
 * fields are written with one HSET (each redis.call costs a command dispatch). */
static const char state_lua[] =
    "local function ack()\n"
    "  if ARGV[11] ~= '' then\n"
    "    redis.call('XACK', KEYS[2], 'workers', ARGV[11])\n"
    "    redis.call('XDEL', KEYS[2], ARGV[11])\n"
    "  end\n"
    "end\n"
    "local function publish(state, extra)\n"
    "  local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)\n"
    "  redis.call('PUBLISH', ARGV[6], '{\"task_id\":' .. cjson.encode(ARGV[1]) .. ',\"seq\":' .. seq ..\n"
    "    ',\"status\":\"' .. state .. '\",\"time_ms\":' .. ARGV[3] .. extra .. '}')\n"
    "  return seq\n"
    "end\n"
    "local st = redis.call('HGET', KEYS[1], 'state')\n"
    "if not st then ack() return -1 end\n"
    "if st == 'SUCCESS' or st == 'FAILURE' or st == 'REVOKED' then\n"
    "  if ARGV[9] == '1' and redis.call('HGET', KEYS[1], 'run') ~= ARGV[14] then\n"
    "    redis.call('HINCRBY', KEYS[1], 'completions', 1)\n"
    "  end\n"
    "  ack() return 0\n"
    "end\n"
    "if ARGV[13] == '1' and redis.call('SISMEMBER', ARGV[12], ARGV[1]) == 1 then\n"
    "  local e = '{\"code\":\"REVOKED\",\"message\":\"revoked\"}'\n"
    "  redis.call('HSET', KEYS[1], 'state', 'REVOKED', 'updated', ARGV[3], 'finished', ARGV[3], 'error', e)\n"
    "  redis.call('EXPIRE', KEYS[1], ARGV[10])\n"
    "  ack()\n"
    "  publish('REVOKED', ',\"error\":' .. e)\n"
    "  return -2\n"
    "end\n"
    "local extra = ''\n"
    "local f = {'state', ARGV[2], 'updated', ARGV[3]}\n"
    "local function set(k, v) f[#f + 1] = k f[#f + 1] = v end\n"
    "if ARGV[4] ~= '' then set('worker', ARGV[4]) end\n"
    "if ARGV[2] == 'STARTED' then set('started', ARGV[3]) set('attempt', ARGV[19]) end\n"
    "if ARGV[5] ~= '' then set('progress', ARGV[5]) extra = extra .. ',\"progress\":' .. ARGV[5] end\n"
    "if ARGV[7] ~= '' then set('result', ARGV[7]) extra = extra .. ',\"result\":' .. ARGV[7] end\n"
    "if ARGV[8] ~= '' then set('error', ARGV[8]) extra = extra .. ',\"error\":' .. ARGV[8] end\n"
    "if ARGV[9] == '1' then set('finished', ARGV[3]) set('run', ARGV[14]) end\n"
    "if ARGV[16] ~= '' then\n"
    "  set('e', ARGV[16]) set('m', ARGV[17]) set('stream', KEYS[2]) set('attempt', ARGV[19])\n"
    "end\n"
    "redis.call('HSET', KEYS[1], unpack(f))\n"
    "if ARGV[9] == '1' then\n"
    "  redis.call('HINCRBY', KEYS[1], 'completions', 1)\n"
    "  redis.call('EXPIRE', KEYS[1], ARGV[10])\n"
    "end\n"
    "if ARGV[16] ~= '' then redis.call('ZADD', ARGV[15], ARGV[18], ARGV[1]) end\n"
    "local seq = publish(ARGV[2], extra)\n"
    "if ARGV[9] == '1' or ARGV[16] ~= '' then ack() end\n"
    "return seq\n";

/* The STARTED transition of every entry of one read, in one call: for each task exactly what state_lua does
 * with state STARTED, check revoked 1 and its entry (no result, so nothing is acked unless it is refused).
 * KEYS: 1 stream, 2 revoked set, 2+i the record of task i. ARGV: 1 now, 2 worker, 3 ttl, then per task i
 * (from 4 + 3(i-1)): id, entry id, attempt. Events go to <record>:ev. Returns one code per task, as state_lua:
 * seq (> 0), 0 (already final), -1 (no record), -2 (revoked now); each refused entry is acked. */
static const char start_lua[] =
    "local out = {}\n"
    "local now, worker, ttl = ARGV[1], ARGV[2], ARGV[3]\n"
    "for i = 3, #KEYS do\n"
    "  local rk, b = KEYS[i], 4 + (i - 3) * 3\n"
    "  local id, entry, attempt = ARGV[b], ARGV[b + 1], ARGV[b + 2]\n"
    "  local st = redis.call('HGET', rk, 'state')\n"
    "  local extra, state, code = nil, nil, nil\n"
    "  if not st then\n"
    "    code = -1\n"
    "  elseif st == 'SUCCESS' or st == 'FAILURE' or st == 'REVOKED' then\n"
    "    code = 0\n"
    "  elseif redis.call('SISMEMBER', KEYS[2], id) == 1 then\n"
    "    local e = '{\"code\":\"REVOKED\",\"message\":\"revoked\"}'\n"
    "    redis.call('HSET', rk, 'state', 'REVOKED', 'updated', now, 'finished', now, 'error', e)\n"
    "    redis.call('EXPIRE', rk, ttl)\n"
    "    code, state, extra = -2, 'REVOKED', ',\"error\":' .. e\n"
    "  else\n"
    "    redis.call('HSET', rk, 'state', 'STARTED', 'updated', now, 'worker', worker, 'started', now,\n"
    "      'attempt', attempt)\n"
    "    state, extra = 'STARTED', ''\n"
    "  end\n"
    "  if code then\n"
    "    redis.call('XACK', KEYS[1], 'workers', entry)\n"
    "    redis.call('XDEL', KEYS[1], entry)\n"
    "  end\n"
    "  if state then\n"
    "    local seq = redis.call('HINCRBY', rk, 'seq', 1)\n"
    "    redis.call('PUBLISH', rk .. ':ev', '{\"task_id\":' .. cjson.encode(id) .. ',\"seq\":' .. seq ..\n"
    "      ',\"status\":\"' .. state .. '\",\"time_ms\":' .. now .. extra .. '}')\n"
    "    code = code or seq\n"
    "  end\n"
    "  out[#out + 1] = code\n"
    "end\n"
    "return out\n";

static const char mover_lua[] =
    "local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])\n"
    "local n = 0\n"
    "for _, id in ipairs(ids) do\n"
    "  redis.call('ZREM', KEYS[1], id)\n"
    "  local rk = ARGV[3] .. 'task:' .. id\n"
    "  local v = redis.call('HMGET', rk, 'e', 'm', 'stream', 'state')\n"
    "  if v[1] and v[2] and v[3] and v[4] ~= 'SUCCESS' and v[4] ~= 'FAILURE' and v[4] ~= 'REVOKED' then\n"
    "    redis.call('XADD', v[3], '*', 'e', v[1], 'm', v[2])\n"
    "    redis.call('HDEL', rk, 'e', 'm')\n"
    "    n = n + 1\n"
    "  end\n"
    "end\n"
    "return n\n";

static const char revoke_lua[] =
    "local st = redis.call('HGET', KEYS[1], 'state')\n"
    "if not st then return -1 end\n"
    "redis.call('SADD', KEYS[2], ARGV[1])\n"
    "redis.call('PUBLISH', ARGV[4], ARGV[1])\n"
    "if st == 'PENDING' or st == 'RETRY' then\n"
    "  local e = '{\"code\":\"REVOKED\",\"message\":\"revoked\"}'\n"
    "  redis.call('HSET', KEYS[1], 'state', 'REVOKED', 'updated', ARGV[2], 'finished', ARGV[2], 'error', e)\n"
    "  redis.call('HDEL', KEYS[1], 'e', 'm')\n"
    "  redis.call('EXPIRE', KEYS[1], ARGV[5])\n"
    "  local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)\n"
    "  redis.call('PUBLISH', ARGV[3], '{\"task_id\":' .. cjson.encode(ARGV[1]) .. ',\"seq\":' .. seq ..\n"
    "    ',\"status\":\"REVOKED\",\"time_ms\":' .. ARGV[2] .. ',\"error\":' .. e .. '}')\n"
    "  return 1\n"
    "end\n"
    "return 0\n";

const dibba_redis_script_t dibba__lua_submit = {submit_lua};
const dibba_redis_script_t dibba__lua_state = {state_lua};
const dibba_redis_script_t dibba__lua_start = {start_lua};
const dibba_redis_script_t dibba__lua_mover = {mover_lua};
const dibba_redis_script_t dibba__lua_revoke = {revoke_lua};
