/* SPDX-License-Identifier: Apache-2.0 */
/* Beat jobs: the job model, the directory loader, the pure scheduler core and its uv_timer driver. */
#ifndef DIBBA_BEAT_H
#define DIBBA_BEAT_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <uv.h>

#include "dibba/cron.h"

/*
 * A job file is one job object or {"jobs": [job, ...]}. A job:
 *   name              required, [a-z0-9_.-]{1,64}, unique across the directory
 *   task              required, [A-Za-z0-9_.:-]{1,128}: the task name handed to the producer
 *   args              object, default {}
 *   route             required, {"host": NAME} or {"role": NAME} (exactly one key), NAME [A-Za-z0-9_.-]{1,253}
 *   schedule          required, {"every": "30s"} or {"cron": "0 2 * * *"} (exactly one key)
 *   timezone          IANA name, default "UTC"; validated by loading the zone; used by cron schedules only
 *   expires           seconds a fired task stays valid, 1..604800; default: the interval for `every` (at most
 *                     3600), 3600 for cron
 *   starting_deadline seconds, 0..604800: a slot missed while no beat was running is caught up (once, coalesced)
 *                     only if it is at most this old; default: one interval for `every` (at most 604800), 300 for
 *                     cron (a restart or failover around the slot still fires it; a nightly job is not run hours
 *                     late after an outage)
 *   enabled           boolean, default true
 * Unknown fields are rejected. Files are at most DIBBA_BEAT_FILE_MAX bytes; a directory holds at most
 * DIBBA_BEAT_MAX_JOBS jobs. A file with any error is rejected whole (its jobs do not run, on start-up and on
 * reload alike, so a restart behaves like a reload); every other file's jobs keep running.
 */

#define DIBBA_BEAT_FILE_MAX (256 * 1024)
#define DIBBA_BEAT_MAX_JOBS 1000
#define DIBBA_BEAT_MAX_FILES 1000
#define DIBBA_BEAT_MAX_SECONDS 604800
#define DIBBA_BEAT_CRON_DEADLINE 300
#define DIBBA_BEAT_NEVER INT64_MAX /* next slot of a disabled or never-firing job */

typedef enum { DIBBA_BEAT_ROUTE_HOST = 1, DIBBA_BEAT_ROUTE_ROLE = 2 } dibba_beat_route_kind_t;

/* One job. Immutable once loaded and reference counted, so a firing in flight may outlive a reload. */
typedef struct dibba_beat_job_s {
  char *name;
  char *task;
  json_t *args; /* object */
  dibba_beat_route_kind_t route_kind;
  char *route;
  char *schedule_text; /* "every 30s" or "cron 0 2 * * *", for logs */
  dibba_schedule_t schedule;
  const dibba_tz_t *tz; /* from the zone cache */
  int64_t expires;
  int64_t starting_deadline;
  int enabled;
  char *file;      /* the file it came from (base name) */
  char *canonical; /* the job object as sorted compact JSON: equal text means an unchanged job */
  uint64_t hash;   /* FNV-1a of canonical */
  unsigned refs;
} dibba_beat_job_t;

/* Take and drop a reference; the last unref frees the job. unref(NULL) is a no-op. Loop thread only. */
dibba_beat_job_t *dibba_beat_job_ref(dibba_beat_job_t *job);
void dibba_beat_job_unref(dibba_beat_job_t *job);
/* Build a job from one JSON object (borrowed). file names it in errors. On error returns -EINVAL and writes the
 * offending field path (e.g. "schedule.cron") into field and the reason into err. */
int dibba_beat_job_parse(const char *file, json_t *obj, dibba_beat_job_t **out, char *field, size_t fieldlen, char *err,
                         size_t errlen);

/* A rejected file. */
typedef struct dibba_beat_error_s {
  char *file;
  char *field; /* "" when the whole file is at fault (size, JSON syntax) */
  char *reason;
} dibba_beat_error_t;

/* A loaded job set (sorted by name) and the files that were rejected. */
typedef struct dibba_beat_jobs_s {
  dibba_beat_job_t **v;
  size_t n;
  dibba_beat_error_t *errors;
  size_t nerrors;
  size_t files; /* files accepted */
} dibba_beat_jobs_t;

void dibba_beat_jobs_init(dibba_beat_jobs_t *set);
/* Drop every job reference and error. Safe to call twice. */
void dibba_beat_jobs_free(dibba_beat_jobs_t *set);
/* Add the jobs of one file's contents (len bytes, need not be terminated) to set, all or none. A rejected file
 * is recorded in set->errors and -EINVAL (or -EFBIG, -E2BIG for too many jobs) is returned; set keeps its jobs.
 * Duplicate names reject the file that brings the second one. Pure: no I/O, no logging. */
int dibba_beat_jobs_add_file(dibba_beat_jobs_t *set, const char *file, const char *data, size_t len);
/* Load every "*.json" file of dir (sorted by name; hidden files skipped) into set. Per-file errors are recorded
 * in set->errors, not returned. Returns 0, or a negative errno if dir cannot be read. Blocking I/O and zone
 * loading: call it at start-up or from a thread-pool work function. Does not log. */
int dibba_beat_jobs_load_dir(dibba_beat_jobs_t *set, const char *dir);
/* Log one error line per rejected file (file, field, reason). Loop thread. */
void dibba_beat_jobs_log_errors(const dibba_beat_jobs_t *set);
/* The job named name, or NULL. */
dibba_beat_job_t *dibba_beat_jobs_find(const dibba_beat_jobs_t *set, const char *name);

/* ---- Scheduler core: pure, time injected ------------------------------------------------------------------ */

/* The slot to run after downtime: the latest slot in (last_fired, now] that is at most job->starting_deadline
 * old. last_fired is the last slot known to have fired (from Redis). Returns 0 and *slot, or -ENOENT when there
 * is nothing to catch up (no missed slot, or the latest one is too old, or the job is disabled). */
int dibba_beat_catchup_slot(const dibba_beat_job_t *job, int64_t last_fired, int64_t now, int64_t *slot);

typedef struct dibba_beat_entry_s {
  dibba_beat_job_t *job; /* reference held */
  int64_t next;          /* next slot, or DIBBA_BEAT_NEVER */
} dibba_beat_entry_t;

typedef struct dibba_beat_sched_s {
  dibba_beat_entry_t *v; /* sorted by job name */
  size_t n;
} dibba_beat_sched_t;

/* What a dibba_beat_sched_update changed. */
typedef struct dibba_beat_diff_s {
  size_t kept, added, changed, removed;
} dibba_beat_diff_t;

/* Called once per firing: slot is the scheduled UTC instant (seconds). The job is borrowed; take a reference
 * to keep it past the call. */
typedef void (*dibba_beat_fire_cb)(void *data, dibba_beat_job_t *job, int64_t slot);

void dibba_beat_sched_init(dibba_beat_sched_t *s);
/* Release every entry. Safe to call twice. */
void dibba_beat_sched_free(dibba_beat_sched_t *s);
/* Replace the jobs with set's (references are taken). A job with the same name and the same canonical content
 * keeps its next slot; a new or changed job is scheduled from now (its missed slots are not run). diff may be
 * NULL. */
void dibba_beat_sched_update(dibba_beat_sched_t *s, const dibba_beat_jobs_t *set, int64_t now, dibba_beat_diff_t *diff);
/* Fire every entry whose next slot is <= now, once: slots that all passed since the last run coalesce into the
 * latest one. Then move each fired entry to its first slot after now. Returns the earliest next slot of all
 * entries (DIBBA_BEAT_NEVER if none). */
int64_t dibba_beat_sched_run(dibba_beat_sched_t *s, int64_t now, dibba_beat_fire_cb cb, void *data);
/* Catch up one job after downtime (see dibba_beat_catchup_slot): calls cb at most once. Returns 0 if it fired,
 * -ENOENT if there was nothing to run or no such job. */
int dibba_beat_sched_catchup(dibba_beat_sched_t *s, const char *name, int64_t last_fired, int64_t now,
                             dibba_beat_fire_cb cb, void *data);
/* Next slot of a job, or DIBBA_BEAT_NEVER if unknown or never. */
int64_t dibba_beat_sched_next(const dibba_beat_sched_t *s, const char *name);

/* ---- Driver: a uv_timer on the wall clock --------------------------------------------------------------- */

typedef struct dibba_beat_timer_s dibba_beat_timer_t;
typedef void (*dibba_beat_timer_fire_cb)(dibba_beat_timer_t *t, dibba_beat_job_t *job, int64_t slot);
typedef void (*dibba_beat_timer_close_cb)(dibba_beat_timer_t *t);

#define DIBBA_BEAT_MAX_SLEEP_MS 30000 /* re-read the wall clock at least this often (clock steps, suspend) */

struct dibba_beat_timer_s {
  uv_timer_t timer; /* data = this */
  dibba_beat_sched_t sched;
  dibba_beat_timer_fire_cb fire;
  dibba_beat_timer_close_cb on_close;
  int64_t (*now_ms)(void); /* wall clock in ms; dibba_now_ms unless a test injects one */
  int closing;
  void *data;
};

/* Initialise t on loop (t is embedded by the caller). fire is called for every slot. Returns 0 or a UV_E*
 * code. No jobs yet: call dibba_beat_timer_set_jobs. */
int dibba_beat_timer_init(uv_loop_t *loop, dibba_beat_timer_t *t, dibba_beat_timer_fire_cb fire, void *data);
/* Install a job set (see dibba_beat_sched_update) and re-arm. */
void dibba_beat_timer_set_jobs(dibba_beat_timer_t *t, const dibba_beat_jobs_t *set, dibba_beat_diff_t *diff);
/* Stop and close; on_close (may be NULL) runs from the close callback, after which t may be freed. Safe to call
 * twice (the second call does nothing). */
void dibba_beat_timer_close(dibba_beat_timer_t *t, dibba_beat_timer_close_cb on_close);

#endif
