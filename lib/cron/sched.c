/* SPDX-License-Identifier: Apache-2.0 */
/* The beat scheduler: a pure core (next slots, coalescing, catch-up, reload diff) and a uv_timer driver. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "dibba/alloc.h"
#include "dibba/beat.h"
#include "dibba/time.h"

/* How far back a run looks for the latest passed slot: bounds the work after a long stall or clock step. */
#define COALESCE_WINDOW (8 * 86400)

static int64_t next_after(const dibba_beat_job_t *job, int64_t t) {
  int64_t next;
  if (!job->enabled || dibba_schedule_next(&job->schedule, job->tz, t, &next) < 0)
    return DIBBA_BEAT_NEVER;
  return next;
}

int dibba_beat_catchup_slot(const dibba_beat_job_t *job, int64_t last_fired, int64_t now, int64_t *slot) {
  if (!job->enabled || now < DIBBA_SCHED_TIME_MIN + DIBBA_BEAT_MAX_SECONDS + 1)
    return -ENOENT;
  int64_t from = now - job->starting_deadline - 1; /* slots must be >= now - starting_deadline */
  if (last_fired > from)
    from = last_fired;
  return dibba_schedule_latest(&job->schedule, job->tz, from, now, slot) < 0 ? -ENOENT : 0;
}

void dibba_beat_sched_init(dibba_beat_sched_t *s) { memset(s, 0, sizeof *s); }

void dibba_beat_sched_free(dibba_beat_sched_t *s) {
  for (size_t i = 0; i < s->n; i++)
    dibba_beat_job_unref(s->v[i].job);
  free(s->v);
  memset(s, 0, sizeof *s);
}

static dibba_beat_entry_t *find(const dibba_beat_sched_t *s, const char *name) {
  size_t lo = 0, hi = s->n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    int c = strcmp(s->v[mid].job->name, name);
    if (c == 0)
      return &s->v[mid];
    if (c < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  return NULL;
}

void dibba_beat_sched_update(dibba_beat_sched_t *s, const dibba_beat_jobs_t *set, int64_t now,
                             dibba_beat_diff_t *diff) {
  dibba_beat_diff_t d = {0};
  dibba_beat_entry_t *v = dibba_xcalloc(set->n ? set->n : 1, sizeof *v);
  size_t matched = 0;
  /* set->v is sorted by name, so the new entries are too. */
  for (size_t i = 0; i < set->n; i++) {
    dibba_beat_job_t *job = set->v[i];
    dibba_beat_entry_t *old = find(s, job->name);
    v[i].job = dibba_beat_job_ref(job);
    if (old)
      matched++;
    if (old && old->job->hash == job->hash && strcmp(old->job->canonical, job->canonical) == 0) {
      v[i].next = old->next;
      d.kept++;
    } else {
      v[i].next = next_after(job, now);
      if (old)
        d.changed++;
      else
        d.added++;
    }
  }
  d.removed = s->n - matched;
  dibba_beat_sched_free(s);
  s->v = v;
  s->n = set->n;
  if (diff)
    *diff = d;
}

int64_t dibba_beat_sched_run(dibba_beat_sched_t *s, int64_t now, dibba_beat_fire_cb cb, void *data) {
  int64_t earliest = DIBBA_BEAT_NEVER;
  for (size_t i = 0; i < s->n; i++) {
    dibba_beat_entry_t *e = &s->v[i];
    if (e->next <= now) {
      /* Coalesce: one firing for the latest slot that has passed. */
      int64_t from = e->next - 1, slot = e->next;
      if (from < now - COALESCE_WINDOW)
        from = now - COALESCE_WINDOW;
      if (dibba_schedule_latest(&e->job->schedule, e->job->tz, from, now, &slot) < 0 || slot < e->next)
        slot = e->next;
      dibba_beat_job_t *job = dibba_beat_job_ref(e->job);
      e->next = next_after(job, now);
      cb(data, job, slot);
      dibba_beat_job_unref(job);
    }
    if (e->next < earliest)
      earliest = e->next;
  }
  return earliest;
}

int dibba_beat_sched_catchup(dibba_beat_sched_t *s, const char *name, int64_t last_fired, int64_t now,
                             dibba_beat_fire_cb cb, void *data) {
  dibba_beat_entry_t *e = find(s, name);
  int64_t slot;
  if (e == NULL || dibba_beat_catchup_slot(e->job, last_fired, now, &slot) < 0)
    return -ENOENT;
  dibba_beat_job_t *job = dibba_beat_job_ref(e->job);
  cb(data, job, slot);
  dibba_beat_job_unref(job);
  return 0;
}

int64_t dibba_beat_sched_next(const dibba_beat_sched_t *s, const char *name) {
  dibba_beat_entry_t *e = find(s, name);
  return e ? e->next : DIBBA_BEAT_NEVER;
}

/* ---- Driver ------------------------------------------------------------------------------------------------ */

static void timer_fire(void *data, dibba_beat_job_t *job, int64_t slot) {
  dibba_beat_timer_t *t = data;
  if (!t->closing)
    t->fire(t, job, slot);
}

static void on_timer(uv_timer_t *h);

/* Fire what is due and sleep until the next slot, waking at least every DIBBA_BEAT_MAX_SLEEP_MS: uv timers run on
 * the monotonic clock, slots on the wall clock. */
static void arm(dibba_beat_timer_t *t) {
  int64_t now_ms = t->now_ms();
  int64_t next = dibba_beat_sched_run(&t->sched, now_ms / 1000, timer_fire, t);
  if (t->closing)
    return;
  uint64_t delay = DIBBA_BEAT_MAX_SLEEP_MS;
  if (next != DIBBA_BEAT_NEVER && next * 1000 - now_ms < DIBBA_BEAT_MAX_SLEEP_MS)
    delay = next * 1000 > now_ms ? (uint64_t)(next * 1000 - now_ms) : 0;
  uv_timer_start(&t->timer, on_timer, delay, 0);
}

static void on_timer(uv_timer_t *h) {
  dibba_beat_timer_t *t = h->data;
  if (!t->closing)
    arm(t);
}

int dibba_beat_timer_init(uv_loop_t *loop, dibba_beat_timer_t *t, dibba_beat_timer_fire_cb fire, void *data) {
  memset(t, 0, sizeof *t);
  int r = uv_timer_init(loop, &t->timer);
  if (r < 0)
    return r;
  t->timer.data = t;
  t->fire = fire;
  t->data = data;
  t->now_ms = dibba_now_ms;
  dibba_beat_sched_init(&t->sched);
  return 0;
}

void dibba_beat_timer_set_jobs(dibba_beat_timer_t *t, const dibba_beat_jobs_t *set, dibba_beat_diff_t *diff) {
  if (t->closing)
    return;
  dibba_beat_sched_update(&t->sched, set, t->now_ms() / 1000, diff);
  arm(t);
}

static void on_closed(uv_handle_t *h) {
  dibba_beat_timer_t *t = h->data;
  dibba_beat_sched_free(&t->sched);
  if (t->on_close)
    t->on_close(t);
}

void dibba_beat_timer_close(dibba_beat_timer_t *t, dibba_beat_timer_close_cb on_close) {
  if (t->closing)
    return;
  t->closing = 1;
  t->on_close = on_close;
  uv_timer_stop(&t->timer);
  uv_close((uv_handle_t *)&t->timer, on_closed);
}
