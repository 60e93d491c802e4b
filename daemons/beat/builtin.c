/* SPDX-License-Identifier: Apache-2.0 */
/* dibba-beat's built-in housekeeping jobs, run inside beat: offline nodes, the purge of old task records and a
 * reconcile_pods task per online pods host. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dibba/alloc.h"
#include "dibba/config.h"
#include "dibba/error.h"
#include "dibba/log.h"
#include "dibba/task_queue.h"
#include "dibba/time.h"

#include "beat.h"

#define NODE_OFFLINE_JOB "beat.node-offline"
#define TASK_PURGE_JOB "beat.task-purge"
#define POD_RECONCILE_JOB "beat.pod-reconcile"
#define POD_RECONCILE_TASK "reconcile_pods"
#define SCAN_COUNT "500"

/* KEYS: nodes zset, offline hash. ARGV: offline cutoff ms, removal cutoff ms, now ms.
 * Hosts silent since before the offline cutoff are recorded in the offline hash (host -> JSON); those silent
 * since before the removal cutoff leave both; hosts that heartbeat again leave the offline hash. */
static const char lua_nodes[] =
    "local marked, removed, back = 0, 0, 0\n"
    "local stale = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1], 'WITHSCORES')\n"
    "for i = 1, #stale, 2 do\n"
    "  local h, last = stale[i], stale[i + 1]\n"
    "  if tonumber(last) < tonumber(ARGV[2]) then\n"
    "    redis.call('ZREM', KEYS[1], h)\n"
    "    redis.call('HDEL', KEYS[2], h)\n"
    "    removed = removed + 1\n"
    "  elseif redis.call('HSETNX', KEYS[2], h, '{\"last_heartbeat_ms\":' .. last .. ',\"marked_at_ms\":' .. ARGV[3]\n"
    "      .. '}') == 1 then\n"
    "    marked = marked + 1\n"
    "  end\n"
    "end\n"
    "for _, h in ipairs(redis.call('HKEYS', KEYS[2])) do\n"
    "  local s = redis.call('ZSCORE', KEYS[1], h)\n"
    "  if not s or tonumber(s) >= tonumber(ARGV[1]) then\n"
    "    redis.call('HDEL', KEYS[2], h)\n"
    "    back = back + 1\n"
    "  end\n"
    "end\n"
    "return {marked, removed, back}\n";

/* KEYS: task records. ARGV: now ms, record ttl s. Final records without a TTL get the rest of theirs (or go
 * if it has passed); waiting records whose envelope expired more than a TTL ago go (nothing can run them). */
static const char lua_purge[] = "local now, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])\n"
                                "local deleted, expiring = 0, 0\n"
                                "for _, k in ipairs(KEYS) do\n"
                                "  if redis.call('TTL', k) == -1 and redis.call('TYPE', k).ok == 'hash' then\n"
                                "    local v = redis.call('HMGET', k, 'state', 'finished', 'updated', 'expires')\n"
                                "    local st = v[1]\n"
                                "    if st == 'SUCCESS' or st == 'FAILURE' or st == 'REVOKED' then\n"
                                "      local fin = tonumber(v[2] or v[3] or '') or 0\n"
                                "      local left = math.floor((fin - now) / 1000) + ttl\n"
                                "      if left <= 0 then\n"
                                "        redis.call('DEL', k)\n"
                                "        deleted = deleted + 1\n"
                                "      else\n"
                                "        redis.call('EXPIRE', k, left)\n"
                                "        expiring = expiring + 1\n"
                                "      end\n"
                                "    elseif st == 'PENDING' or st == 'RETRY' then\n"
                                "      local exp = tonumber(v[4] or '') or 0\n"
                                "      if exp > 0 and exp + ttl * 1000 < now then\n"
                                "        redis.call('DEL', k)\n"
                                "        deleted = deleted + 1\n"
                                "      end\n"
                                "    end\n"
                                "  end\n"
                                "end\n"
                                "return {deleted, expiring}\n";

/* KEYS: nodes zset. ARGV: heartbeat cutoff ms, prefix. The hosts with a fresh heartbeat whose node hash lists the
 * pods plugin (as dibba-api's placement reads it). */
static const char lua_pod_hosts[] = "local out = {}\n"
                                    "for _, h in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf')) do\n"
                                    "  local pl = redis.call('HGET', ARGV[2] .. 'node:' .. h, 'plugins')\n"
                                    "  if pl then\n"
                                    "    for x in string.gmatch(pl, '[^, ]+') do\n"
                                    "      if x == 'pods' then out[#out + 1] = h break end\n"
                                    "    end\n"
                                    "  end\n"
                                    "end\n"
                                    "return out\n";

/* KEYS: the revoked set. ARGV: prefix, ids. Ids whose record is gone are dropped. */
static const char lua_trim[] = "local n = 0\n"
                               "for i = 2, #ARGV do\n"
                               "  if redis.call('EXISTS', ARGV[1] .. 'task:' .. ARGV[i]) == 0 then\n"
                               "    redis.call('SREM', KEYS[1], ARGV[i])\n"
                               "    n = n + 1\n"
                               "  end\n"
                               "end\n"
                               "return n\n";

int beat_builtin_config(beat_t *b, char *err, size_t errlen) {
  const dibba_config_t *cfg = &b->d->cfg;
  beat_builtin_cfg_t *c = &b->builtin;
  int64_t secs;
  size_t pos;
  char why[128];
  int r;
  if ((r = dibba_config_bool(cfg, "beat.builtin.node_offline.enabled", 1, &c->node_offline, err, errlen)) < 0 ||
      (r = dibba_config_str(cfg, "beat.builtin.node_offline.every", "30s", &c->node_offline_every, err, errlen)) < 0 ||
      (r = dibba_config_int(cfg, "beat.builtin.node_offline.remove_after_s", 86400, 1, 365LL * 86400,
                            &c->node_remove_after_s, err, errlen)) < 0 ||
      (r = dibba_config_bool(cfg, "beat.builtin.task_purge.enabled", 1, &c->task_purge, err, errlen)) < 0 ||
      (r = dibba_config_str(cfg, "beat.builtin.task_purge.every", "10m", &c->task_purge_every, err, errlen)) < 0 ||
      (r = dibba_config_bool(cfg, "beat.builtin.pod_reconcile.enabled", 1, &c->pod_reconcile, err, errlen)) < 0 ||
      (r = dibba_config_str(cfg, "beat.builtin.pod_reconcile.every", "60s", &c->pod_reconcile_every, err, errlen)) <
          0 ||
      (r = dibba_config_int(cfg, "worker.heartbeat_seconds", 5, 1, 3600, &c->heartbeat_s, err, errlen)) < 0 ||
      (r = dibba_config_int(cfg, "task.record_ttl", DIBBA_TASK_RESULT_TTL_S, 1, 365LL * 86400, &c->record_ttl_s, err,
                            errlen)) < 0)
    return r;
  if (dibba_every_parse(c->node_offline_every, &secs, &pos, why, sizeof why) < 0)
    return dibba_error_set(err, errlen, DIBBA_ECONFIG, "config: beat.builtin.node_offline.every: %s", why);
  if (dibba_every_parse(c->task_purge_every, &secs, &pos, why, sizeof why) < 0)
    return dibba_error_set(err, errlen, DIBBA_ECONFIG, "config: beat.builtin.task_purge.every: %s", why);
  if (dibba_every_parse(c->pod_reconcile_every, &secs, &pos, why, sizeof why) < 0)
    return dibba_error_set(err, errlen, DIBBA_ECONFIG, "config: beat.builtin.pod_reconcile.every: %s", why);
  c->pod_reconcile_expires_s = secs < 5 ? 5 : secs > 300 ? 300 : secs;
  return 0;
}

static void add_one(dibba_beat_jobs_t *set, json_t *job) {
  char *text = json_dumps(job, JSON_COMPACT);
  /* The inputs were checked in beat_builtin_config; a failure is recorded in set->errors and logged. */
  (void)dibba_beat_jobs_add_file(set, BEAT_BUILTIN_FILE, text, strlen(text));
  free(text);
  json_decref(job);
}

void beat_builtin_add(beat_t *b, dibba_beat_jobs_t *set) {
  const beat_builtin_cfg_t *c = &b->builtin;
  if (c->node_offline)
    add_one(set, json_pack("{s:s,s:s,s:{s:I,s:I},s:{s:s},s:{s:s}}", "name", NODE_OFFLINE_JOB, "task",
                           "beat.node_offline", "args", "offline_after_s", (json_int_t)(3 * c->heartbeat_s),
                           "remove_after_s", (json_int_t)c->node_remove_after_s, "route", "role", "control", "schedule",
                           "every", c->node_offline_every));
  if (c->task_purge)
    add_one(set, json_pack("{s:s,s:s,s:{s:I},s:{s:s},s:{s:s}}", "name", TASK_PURGE_JOB, "task", "beat.task_purge",
                           "args", "record_ttl_s", (json_int_t)c->record_ttl_s, "route", "role", "control", "schedule",
                           "every", c->task_purge_every));
  if (c->pod_reconcile)
    add_one(set, json_pack("{s:s,s:s,s:{},s:{s:s},s:{s:s}}", "name", POD_RECONCILE_JOB, "task", "beat.pod_reconcile",
                           "args", "route", "role", "control", "schedule", "every", c->pod_reconcile_every));
}

int beat_builtin_is(const dibba_beat_job_t *job) { return strcmp(job->file, BEAT_BUILTIN_FILE) == 0; }

/* ---- offline nodes ---- */

static void nodes_done(dibba_redis_t *r, int status, redisReply *reply, void *data) {
  beat_firing_t *f = data;
  long long v[3] = {0, 0, 0};
  (void)r;
  for (size_t i = 0; status == 0 && i < 3; i++)
    if (dibba_redis_reply_int(dibba_redis_reply_at(reply, i), &v[i]) < 0)
      status = DIBBA_EPROTO;
  if (status == 0 && (v[0] || v[1] || v[2]))
    dibba_log_info("beat",
                   json_pack("{s:s,s:I,s:I,s:I}", "job", f->job->name, "marked_offline", (json_int_t)v[0], "removed",
                             (json_int_t)v[1], "back_online", (json_int_t)v[2]),
                   "nodes: %lld marked offline, %lld removed, %lld back online", v[0], v[1], v[2]);
  beat_fire_done(f, status);
}

static void run_nodes(beat_firing_t *f) {
  beat_t *b = f->b;
  char zkey[512], okey[512], off_s[24], rm_s[24], now_s[24];
  int64_t now = dibba_now_ms();
  snprintf(zkey, sizeof zkey, "%snodes", b->prefix);
  snprintf(okey, sizeof okey, "%snodes:offline", b->prefix);
  snprintf(off_s, sizeof off_s, "%" PRId64, now - 3 * b->builtin.heartbeat_s * 1000);
  snprintf(rm_s, sizeof rm_s, "%" PRId64, now - b->builtin.node_remove_after_s * 1000);
  snprintf(now_s, sizeof now_s, "%" PRId64, now);
  const char *argv[] = {"EVAL", lua_nodes, "2", zkey, okey, off_s, rm_s, now_s};
  int rc = dibba_redis_command_argv(b->redis, nodes_done, f, NULL, 8, argv, NULL);
  if (rc < 0)
    beat_fire_done(f, rc);
}

/* ---- task record purge: SCAN the records, then SSCAN the revoked set, one bounded batch per command ---- */

struct beat_sweep_s {
  beat_firing_t *f;
  int phase; /* 0: task records, 1: revoked ids */
  char cursor[32];
  long long deleted, expiring, trimmed;
};

static void sweep_next(beat_sweep_t *s);

static void sweep_finish(beat_sweep_t *s, int status) {
  beat_firing_t *f = s->f;
  f->b->sweep = NULL;
  if (status == 0 && (s->deleted || s->expiring || s->trimmed))
    dibba_log_info("beat",
                   json_pack("{s:s,s:I,s:I,s:I}", "job", f->job->name, "deleted", (json_int_t)s->deleted, "expiring",
                             (json_int_t)s->expiring, "revoked_trimmed", (json_int_t)s->trimmed),
                   "task records: %lld deleted, %lld given a TTL, %lld revoked ids trimmed", s->deleted, s->expiring,
                   s->trimmed);
  else if (status < 0)
    dibba_log_warn("beat", json_pack("{s:s,s:s}", "job", f->job->name, "error", dibba_redis_strerror(status)),
                   "task record purge interrupted");
  free(s);
  beat_fire_done(f, status);
}

static void batch_done(dibba_redis_t *r, int status, redisReply *reply, void *data) {
  beat_sweep_t *s = data;
  long long v;
  (void)r;
  if (status < 0 || s->f->b->stopping) {
    sweep_finish(s, status < 0 ? status : UV_ECANCELED);
    return;
  }
  if (s->phase == 0) {
    if (dibba_redis_reply_int(dibba_redis_reply_at(reply, 0), &v) == 0)
      s->deleted += v;
    if (dibba_redis_reply_int(dibba_redis_reply_at(reply, 1), &v) == 0)
      s->expiring += v;
  } else if (dibba_redis_reply_int(reply, &v) == 0) {
    s->trimmed += v;
  }
  sweep_next(s);
}

/* A record key is exactly <prefix>task:<uuid>. */
static int is_record_key(const char *prefix, const char *k, size_t len) {
  size_t pl = strlen(prefix);
  return len == pl + 5 + DIBBA_ID_LEN && memcmp(k, prefix, pl) == 0 && memcmp(k + pl, "task:", 5) == 0;
}

static void scanned(dibba_redis_t *r, int status, redisReply *reply, void *data) {
  beat_sweep_t *s = data;
  beat_t *b = s->f->b;
  const redisReply *cur = dibba_redis_reply_at(reply, 0), *items = dibba_redis_reply_at(reply, 1);
  const char *c;
  size_t clen;
  (void)r;
  if (status == 0 && (dibba_redis_reply_str(cur, &c, &clen) < 0 || clen >= sizeof s->cursor || items == NULL ||
                      items->type != REDIS_REPLY_ARRAY))
    status = DIBBA_EPROTO;
  if (status < 0 || b->stopping) {
    sweep_finish(s, status < 0 ? status : UV_ECANCELED);
    return;
  }
  memcpy(s->cursor, c, clen);
  s->cursor[clen] = '\0';
  size_t n = items->elements, k = 0;
  const char **argv = dibba_xcalloc(n + 5, sizeof *argv);
  size_t *lens = dibba_xcalloc(n + 5, sizeof *lens);
  char rkey[512], now_s[24], ttl_s[24], nkeys[24];
  argv[k++] = "EVAL";
  if (s->phase == 0) {
    argv[k++] = lua_purge;
    argv[k++] = nkeys;
    for (size_t i = 0; i < n; i++)
      if (items->element[i]->type == REDIS_REPLY_STRING &&
          is_record_key(b->prefix, items->element[i]->str, items->element[i]->len)) {
        lens[k] = items->element[i]->len;
        argv[k++] = items->element[i]->str;
      }
    snprintf(nkeys, sizeof nkeys, "%zu", k - 3);
    snprintf(now_s, sizeof now_s, "%" PRId64, dibba_now_ms());
    snprintf(ttl_s, sizeof ttl_s, "%" PRId64, b->builtin.record_ttl_s);
    argv[k++] = now_s;
    argv[k++] = ttl_s;
  } else {
    snprintf(rkey, sizeof rkey, "%srevoked", b->prefix);
    argv[k++] = lua_trim;
    argv[k++] = "1";
    argv[k++] = rkey;
    argv[k++] = b->prefix;
    for (size_t i = 0; i < n; i++)
      if (items->element[i]->type == REDIS_REPLY_STRING && items->element[i]->len == DIBBA_ID_LEN) {
        lens[k] = items->element[i]->len;
        argv[k++] = items->element[i]->str;
      }
  }
  for (size_t i = 0; i < k; i++)
    if (lens[i] == 0)
      lens[i] = strlen(argv[i]);
  int rc;
  if (k == 5)
    rc = 1; /* nothing in this batch */
  else
    rc = dibba_redis_command_argv(b->redis, batch_done, s, NULL, (int)k, argv, lens);
  free(argv);
  free(lens);
  if (rc == 1)
    sweep_next(s);
  else if (rc < 0)
    sweep_finish(s, rc);
}

static void sweep_next(beat_sweep_t *s) {
  beat_t *b = s->f->b;
  char key[512];
  int rc;
  if (strcmp(s->cursor, "0") == 0) {
    if (s->phase == 1) {
      sweep_finish(s, 0);
      return;
    }
    s->phase = 1;
    snprintf(s->cursor, sizeof s->cursor, "init");
  }
  const char *cursor = strcmp(s->cursor, "init") == 0 ? "0" : s->cursor;
  if (s->phase == 0) {
    snprintf(key, sizeof key, "%stask:*", b->prefix);
    rc = dibba_redis_command(b->redis, scanned, s, NULL, "SCAN %s MATCH %s COUNT " SCAN_COUNT, cursor, key);
  } else {
    snprintf(key, sizeof key, "%srevoked", b->prefix);
    rc = dibba_redis_command(b->redis, scanned, s, NULL, "SSCAN %s %s COUNT " SCAN_COUNT, key, cursor);
  }
  if (rc < 0)
    sweep_finish(s, rc);
}

static void run_purge(beat_firing_t *f) {
  beat_t *b = f->b;
  if (b->sweep) {
    dibba_log_warn("beat", json_pack("{s:s}", "job", f->job->name), "the previous purge is still running; skipped");
    beat_fire_done(f, 0);
    return;
  }
  beat_sweep_t *s = dibba_xcalloc(1, sizeof *s);
  s->f = f;
  snprintf(s->cursor, sizeof s->cursor, "init");
  b->sweep = s;
  sweep_next(s);
}

/* ---- pod reconcile: a reconcile_pods task to every online host that runs the pods plugin ---- */

typedef struct pod_sweep_s {
  beat_firing_t *f;
  size_t pending;
  int status; /* the first Redis error of a submit: the firing is retried (the task ids make that safe) */
  long long created, existed, refused;
} pod_sweep_t;

static void pod_sweep_end(pod_sweep_t *s) {
  beat_firing_t *f = s->f;
  int status = s->status;
  if (s->created || s->refused)
    dibba_log_info("beat",
                   json_pack("{s:s,s:s,s:I,s:I,s:I}", "job", f->job->name, "task", POD_RECONCILE_TASK, "submitted",
                             (json_int_t)s->created, "already_submitted", (json_int_t)s->existed, "refused",
                             (json_int_t)s->refused),
                   "pod reconcile: %lld hosts asked, %lld already asked, %lld refused", s->created, s->existed,
                   s->refused);
  free(s);
  beat_fire_done(f, status);
}

static void pod_submitted(int status, const char *id, void *data) {
  pod_sweep_t *s = data;
  (void)id;
  if (status < 0 && s->status == 0)
    s->status = status;
  else if (status == 0)
    s->created++;
  else if (status > 0)
    s->existed++;
  if (--s->pending == 0)
    pod_sweep_end(s);
}

static void pod_hosts_read(dibba_redis_t *r, int status, redisReply *reply, void *data) {
  beat_firing_t *f = data;
  beat_t *b = f->b;
  (void)r;
  if (status == 0 && (reply == NULL || reply->type != REDIS_REPLY_ARRAY))
    status = DIBBA_EPROTO;
  if (status < 0 || b->stopping) {
    beat_fire_done(f, status);
    return;
  }
  pod_sweep_t *s = dibba_xcalloc(1, sizeof *s);
  s->f = f;
  s->pending = 1; /* held until every submit is sent */
  for (size_t i = 0; i < reply->elements; i++) {
    const char *h;
    size_t hl;
    char host[256], job[320], id[DIBBA_ID_LEN + 1], out[DIBBA_ID_LEN + 1], err[256];
    if (dibba_redis_reply_str(reply->element[i], &h, &hl) < 0 || hl == 0 || hl >= sizeof host) {
      s->refused++;
      continue;
    }
    memcpy(host, h, hl);
    host[hl] = '\0';
    /* One id per host and slot: a retried firing (or another replica's) resubmits the same task. */
    snprintf(job, sizeof job, "%s/%s", f->job->name, host);
    beat_task_id(b->prefix, job, f->slot * 1000, id);
    dibba_task_submit_t sub = {.name = POD_RECONCILE_TASK,
                               .host = host,
                               .args_json = "{}",
                               .id = id,
                               .expires_ms = b->builtin.pod_reconcile_expires_s * 1000};
    s->pending++;
    int rc = dibba_task_submit(b->redis, b->prefix, &b->key, &sub, pod_submitted, s, out, err, sizeof err);
    if (rc < 0) {
      s->pending--;
      if (rc == -EINVAL || rc == -E2BIG) {
        s->refused++;
        dibba_log_warn("beat", json_pack("{s:s,s:s,s:s}", "job", f->job->name, "host", host, "error", err),
                       "pod reconcile: cannot submit to host %s", host);
      } else if (s->status == 0) {
        s->status = rc;
      }
    }
  }
  if (--s->pending == 0)
    pod_sweep_end(s);
}

static void run_pod_reconcile(beat_firing_t *f) {
  beat_t *b = f->b;
  char zkey[512], since[24];
  snprintf(zkey, sizeof zkey, "%snodes", b->prefix);
  snprintf(since, sizeof since, "%" PRId64, dibba_now_ms() - 3 * b->builtin.heartbeat_s * 1000);
  const char *argv[] = {"EVAL", lua_pod_hosts, "1", zkey, since, b->prefix};
  int rc = dibba_redis_command_argv(b->redis, pod_hosts_read, f, NULL, 6, argv, NULL);
  if (rc < 0)
    beat_fire_done(f, rc);
}

void beat_builtin_run(beat_firing_t *f) {
  if (strcmp(f->job->name, NODE_OFFLINE_JOB) == 0)
    run_nodes(f);
  else if (strcmp(f->job->name, POD_RECONCILE_JOB) == 0)
    run_pod_reconcile(f);
  else
    run_purge(f);
}
