/* SPDX-License-Identifier: Apache-2.0 */
/* dibba-beat's firings: claim a slot and submit its task (deterministic id) in one script, record the run. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "dibba/alloc.h"
#include "dibba/error.h"
#include "dibba/log.h"
#include "dibba/task_queue.h"
#include "dibba/time.h"

#include "beat.h"

enum { FIRE_CLAIM = 1, FIRE_RUN = 2, FIRE_RECORD = 3 };

#define RETRY_MIN_MS 100
#define RETRY_MAX_MS 2000
#define RETRY_TICK_MS 100
/* Firings of a slot are retried at least this long, even when starting_deadline is shorter. */
#define MIN_RETRY_WINDOW_MS 1000
#define FIRED_TTL_EXTRA_S 60

/* The namespace of beat task ids (a fixed random UUID; see README "Schedules"). */
static const unsigned char beat_uuid_ns[16] = {0x5b, 0x0e, 0x6d, 0x3a, 0x2c, 0x41, 0x4f, 0x8e,
                                               0x9a, 0x57, 0x1d, 0x2f, 0x3c, 0x4b, 0x5a, 0x69};

/* Built-in jobs only (task jobs claim in the producer's submit script, see do_submit).
 * KEYS: fired key, job record. ARGV: replica id, ttl ms, next fire ms ('' if none).
 * 1: this call claimed the slot; 2: this replica had claimed it before (a reply lost to a disconnect); 0: taken. */
static const char lua_claim[] = "if ARGV[3] ~= '' then redis.call('HSET', KEYS[2], 'next_fire_ms', ARGV[3]) end\n"
                                "if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end\n"
                                "if redis.call('GET', KEYS[1]) == ARGV[1] then return 2 end\n"
                                "return 0\n";

/* KEYS: job record. ARGV: slot ms, fire ms, task id, replica, next fire ms ('' if none). A late run never moves
 * last_slot_ms (or next_fire_ms) backwards. */
static const char lua_record[] =
    "local last = tonumber(redis.call('HGET', KEYS[1], 'last_slot_ms') or '-1')\n"
    "if tonumber(ARGV[1]) >= last then\n"
    "  redis.call('HSET', KEYS[1], 'last_slot_ms', ARGV[1], 'last_fire_ms', ARGV[2], 'last_task_id', ARGV[3],\n"
    "    'last_replica', ARGV[4])\n"
    "  if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'next_fire_ms', ARGV[5]) end\n"
    "  return 1\n"
    "end\n"
    "return 0\n";

void beat_task_id(const char *prefix, const char *job, int64_t slot_ms, char out[DIBBA_ID_LEN + 1]) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned mdlen = 0;
  char name[512];
  int n = snprintf(name, sizeof name, "%sbeat:%s:%" PRId64, prefix, job, slot_ms);
  EVP_MD_CTX *c = EVP_MD_CTX_new();
  if (c == NULL || !EVP_DigestInit_ex(c, EVP_sha1(), NULL) || !EVP_DigestUpdate(c, beat_uuid_ns, 16) ||
      !EVP_DigestUpdate(c, name, (size_t)n) || !EVP_DigestFinal_ex(c, md, &mdlen))
    dibba_oom(sizeof name); /* OpenSSL fails here only when it cannot allocate */
  EVP_MD_CTX_free(c);
  md[6] = (unsigned char)((md[6] & 0x0f) | 0x50); /* version 5 */
  md[8] = (unsigned char)((md[8] & 0x3f) | 0x80); /* RFC 4122 variant */
  snprintf(out, DIBBA_ID_LEN + 1, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", md[0], md[1],
           md[2], md[3], md[4], md[5], md[6], md[7], md[8], md[9], md[10], md[11], md[12], md[13], md[14], md[15]);
}

/* ---- in-process bookkeeping ---- */

static beat_seen_t *seen_find(const beat_t *b, const char *job) {
  for (beat_seen_t *s = b->seen; s; s = s->next)
    if (strcmp(s->name, job) == 0)
      return s;
  return NULL;
}

int beat_seen(const beat_t *b, const char *job, int64_t slot) {
  const beat_seen_t *s = seen_find(b, job);
  return s && s->slot >= slot;
}

static void seen_set(beat_t *b, const char *job, int64_t slot) {
  beat_seen_t *s = seen_find(b, job);
  if (s == NULL) {
    s = dibba_xcalloc(1, sizeof *s);
    s->name = dibba_xstrdup(job);
    s->slot = slot;
    s->next = b->seen;
    b->seen = s;
  } else if (slot > s->slot) {
    s->slot = slot;
  }
}

void beat_seen_free(beat_t *b) {
  while (b->seen) {
    beat_seen_t *s = b->seen;
    b->seen = s->next;
    free(s->name);
    free(s);
  }
}

static void firing_free(beat_firing_t *f) {
  beat_t *b = f->b;
  if (f->prev)
    f->prev->next = f->next;
  else
    b->firings = f->next;
  if (f->next)
    f->next->prev = f->prev;
  b->nfirings--;
  dibba_beat_job_unref(f->job);
  free(f);
}

static void log_firing(int level, beat_firing_t *f, const char *msg, const char *error) {
  char when[40];
  dibba_time_format_ms(f->slot * 1000, when, sizeof when);
  json_t *o =
      json_pack("{s:s,s:s,s:I,s:s,s:s,s:s}", "job", f->job->name, "slot", when, "slot_ms", (json_int_t)(f->slot * 1000),
                "task", f->job->task, "route", f->job->route, "replica", f->b->replica);
  if (f->task_id[0])
    json_object_set_new(o, "task_id", json_string(f->task_id));
  if (error)
    json_object_set_new(o, "error", json_string(error));
  if (f->attempts > 1)
    json_object_set_new(o, "attempts", json_integer(f->attempts));
  dibba_log((dibba_log_level_t)level, "beat", o, "%s: job %s slot %s", msg, f->job->name, when);
}

/* ---- retries ---- */

static void step(beat_firing_t *f);

static int by_slot(const void *x, const void *y) {
  const beat_firing_t *a = *(beat_firing_t *const *)x, *c = *(beat_firing_t *const *)y;
  return a->slot < c->slot ? -1 : a->slot > c->slot ? 1 : strcmp(a->job->name, c->job->name);
}

/* Retry the waiting firings due by until_ms, oldest slot first: their commands reach Redis in slot order, so after an
 * outage a newer slot does not overtake the older ones that were waiting. */
static void run_waiting(beat_t *b, int64_t until_ms) {
  size_t n = 0, i = 0;
  for (beat_firing_t *f = b->firings; f; f = f->next)
    n += f->waiting && f->retry_at_ms <= until_ms;
  if (n > 0) {
    beat_firing_t **v = dibba_xcalloc(n, sizeof *v);
    for (beat_firing_t *f = b->firings; f; f = f->next)
      if (f->waiting && f->retry_at_ms <= until_ms)
        v[i++] = f;
    qsort(v, n, sizeof *v, by_slot);
    for (i = 0; i < n; i++)
      v[i]->waiting = 0;
    for (i = 0; i < n; i++)
      step(v[i]); /* may free v[i], and nothing else */
    free(v);
  }
  int left = 0;
  for (beat_firing_t *f = b->firings; f; f = f->next)
    left |= f->waiting;
  if (!left)
    uv_timer_stop(&b->retry);
}

static void on_retry(uv_timer_t *t) { run_waiting(t->data, dibba_now_ms()); }

void beat_firings_resume(beat_t *b) {
  if (!b->stopping)
    run_waiting(b, INT64_MAX);
}

/* A Redis error: try again later, within the slot's deadline; the claim and the task id make that safe. */
static void retry_later(beat_firing_t *f, const char *error) {
  beat_t *b = f->b;
  int64_t now = dibba_now_ms();
  int64_t delay = RETRY_MIN_MS << (f->attempts < 5 ? f->attempts : 5);
  if (delay > RETRY_MAX_MS)
    delay = RETRY_MAX_MS;
  if (b->stopping || now + delay > f->deadline_ms) {
    b->given_up++;
    log_firing(DIBBA_LOG_ERROR, f,
               f->step == FIRE_RECORD ? "job fired, but its run could not be recorded"
                                      : "job firing given up: starting deadline passed",
               error);
    firing_free(f);
    return;
  }
  b->retried++;
  log_firing(DIBBA_LOG_WARN, f, "job firing will be retried", error);
  f->waiting = 1;
  f->retry_at_ms = now + delay;
  if (!uv_is_active((uv_handle_t *)&b->retry))
    uv_timer_start(&b->retry, on_retry, RETRY_TICK_MS, RETRY_TICK_MS);
}

/* ---- the steps ---- */

/* The claim must outlive every moment a replica could still fire the slot: the catch-up window and one period (a
 * replica that reads an old last_slot_ms), twice over, plus a margin. */
static int64_t claim_ttl_ms(const beat_firing_t *f) {
  const dibba_beat_job_t *job = f->job;
  int64_t period = job->schedule.kind == DIBBA_SCHED_EVERY ? job->schedule.every : 0;
  if (period == 0) {
    int64_t nx;
    period = dibba_schedule_next(&job->schedule, job->tz, f->slot, &nx) == 0 ? nx - f->slot : DIBBA_BEAT_MAX_SECONDS;
  }
  if (period > DIBBA_BEAT_MAX_SECONDS)
    period = DIBBA_BEAT_MAX_SECONDS;
  int64_t win = job->starting_deadline > period ? job->starting_deadline : period;
  return (win * 2 + FIRED_TTL_EXTRA_S) * 1000;
}

static void fired_key(const beat_firing_t *f, char out[512]) {
  snprintf(out, 512, "%sbeat:fired:%s:%" PRId64, f->b->prefix, f->job->name, f->slot * 1000);
}

static void next_ms_text(const beat_firing_t *f, char out[24]) {
  if (f->next_fire_ms >= 0)
    snprintf(out, 24, "%" PRId64, f->next_fire_ms);
  else
    out[0] = '\0';
}

static void lost(beat_firing_t *f) {
  f->b->lost++;
  log_firing(DIBBA_LOG_DEBUG, f, "job slot fired by another replica", NULL);
  firing_free(f);
}

static void won(beat_firing_t *f, int next_step) {
  f->b->won++;
  f->won = 1;
  f->step = next_step;
  f->attempts = 0;
  step(f);
}

static void recorded(dibba_redis_t *r, int status, redisReply *reply, void *data) {
  beat_firing_t *f = data;
  (void)r, (void)reply;
  if (status < 0 && !f->b->stopping) {
    retry_later(f, dibba_redis_strerror(status));
    return;
  }
  firing_free(f);
}

static void do_record(beat_firing_t *f) {
  beat_t *b = f->b;
  char jkey[512], slot_s[24], now_s[24], next_s[24];
  snprintf(jkey, sizeof jkey, "%sbeat:job:%s", b->prefix, f->job->name);
  snprintf(slot_s, sizeof slot_s, "%" PRId64, f->slot * 1000);
  snprintf(now_s, sizeof now_s, "%" PRId64, dibba_now_ms());
  next_ms_text(f, next_s);
  const char *argv[] = {"EVAL", lua_record, "1", jkey, slot_s, now_s, f->task_id, b->replica, next_s};
  int rc = dibba_redis_command_argv(b->redis, recorded, f, NULL, 9, argv, NULL);
  if (rc < 0)
    retry_later(f, dibba_redis_strerror(rc));
}

void beat_fire_done(beat_firing_t *f, int status) {
  if (status < 0 && !f->b->stopping) {
    retry_later(f, dibba_redis_strerror(status));
    return;
  }
  if (f->b->stopping) {
    firing_free(f);
    return;
  }
  f->step = FIRE_RECORD;
  f->attempts = 0;
  step(f);
}

static void submitted(int status, const char *id, void *data) {
  beat_firing_t *f = data;
  (void)id;
  if (status < 0) {
    if (f->b->stopping)
      firing_free(f);
    else
      retry_later(f, dibba_redis_strerror(status));
    return;
  }
  if (status == 2) {
    lost(f); /* the claim and the task are written together: another replica's claim is a submitted task */
    return;
  }
  log_firing(DIBBA_LOG_INFO, f, status == 0 ? "job fired" : "job fired (task already submitted)", NULL);
  if (f->b->stopping)
    firing_free(f);
  else
    won(f, FIRE_RECORD);
}

/* Claim the slot and submit its task in one script: a claim can never exist without its task, so a replica that
 * sees another's claim may drop its firing, whatever happens to the claimer afterwards. */
static void do_submit(beat_firing_t *f) {
  beat_t *b = f->b;
  const dibba_beat_job_t *job = f->job;
  char err[256], fkey[512];
  fired_key(f, fkey);
  char *args = json_dumps(job->args, JSON_COMPACT | JSON_SORT_KEYS);
  dibba_task_submit_t s = {
      .name = job->task,
      .host = job->route_kind == DIBBA_BEAT_ROUTE_HOST ? job->route : NULL,
      .role = job->route_kind == DIBBA_BEAT_ROUTE_ROLE ? job->route : NULL,
      .args_json = args,
      .id = f->task_id,
      .expires_ms = job->expires * 1000,
      .claim_key = fkey,
      .claim_value = b->replica,
      .claim_ttl_ms = claim_ttl_ms(f),
  };
  char id[DIBBA_ID_LEN + 1];
  int rc = dibba_task_submit(b->redis, b->prefix, &b->key, &s, submitted, f, id, err, sizeof err);
  free(args);
  if (rc == -EINVAL || rc == -E2BIG) {
    /* The job itself cannot become a task (e.g. a task name the producer refuses): retrying cannot help. */
    log_firing(DIBBA_LOG_ERROR, f, "job cannot be submitted", err);
    firing_free(f);
  } else if (rc < 0) {
    retry_later(f, err);
  }
}

/* A built-in job's claim (its action is not a task, so it cannot share the claim's script). */
static void claimed(dibba_redis_t *r, int status, redisReply *reply, void *data) {
  beat_firing_t *f = data;
  long long v = 0;
  (void)r;
  if (status == 0 && dibba_redis_reply_int(reply, &v) < 0)
    status = DIBBA_EPROTO;
  if (status < 0) {
    if (f->b->stopping)
      firing_free(f);
    else
      retry_later(f, dibba_redis_strerror(status));
    return;
  }
  if (v == 0)
    lost(f);
  else
    won(f, FIRE_RUN);
}

static void do_claim(beat_firing_t *f) {
  beat_t *b = f->b;
  char fkey[512], jkey[512], ttl_s[24], next_s[24];
  fired_key(f, fkey);
  snprintf(jkey, sizeof jkey, "%sbeat:job:%s", b->prefix, f->job->name);
  snprintf(ttl_s, sizeof ttl_s, "%" PRId64, claim_ttl_ms(f));
  next_ms_text(f, next_s);
  const char *argv[] = {"EVAL", lua_claim, "2", fkey, jkey, b->replica, ttl_s, next_s};
  int rc = dibba_redis_command_argv(b->redis, claimed, f, NULL, 8, argv, NULL);
  if (rc < 0)
    retry_later(f, dibba_redis_strerror(rc));
}

static void step(beat_firing_t *f) {
  f->attempts++;
  switch (f->step) {
  case FIRE_CLAIM:
    if (beat_builtin_is(f->job))
      do_claim(f);
    else
      do_submit(f);
    break;
  case FIRE_RUN: beat_builtin_run(f); break;
  default: do_record(f); break;
  }
}

void beat_fire(beat_t *b, dibba_beat_job_t *job, int64_t slot) {
  if (b->stopping || beat_seen(b, job->name, slot))
    return;
  seen_set(b, job->name, slot);
  beat_firing_t *f = dibba_xcalloc(1, sizeof *f);
  f->b = b;
  f->job = dibba_beat_job_ref(job);
  f->slot = slot;
  int64_t next = dibba_beat_sched_next(&b->sched.sched, job->name);
  f->next_fire_ms = next == DIBBA_BEAT_NEVER ? -1 : next * 1000;
  int64_t window = job->starting_deadline * 1000;
  f->deadline_ms = slot * 1000 + (window > MIN_RETRY_WINDOW_MS ? window : MIN_RETRY_WINDOW_MS);
  f->step = FIRE_CLAIM;
  if (!beat_builtin_is(job))
    beat_task_id(b->prefix, job->name, slot * 1000, f->task_id);
  f->next = b->firings;
  if (b->firings)
    b->firings->prev = f;
  b->firings = f;
  b->nfirings++;
  b->fired++;
  step(f);
}

void beat_firings_stop(beat_t *b) {
  for (beat_firing_t *f = b->firings, *next; f; f = next) {
    next = f->next;
    if (f->waiting)
      firing_free(f);
  }
}
