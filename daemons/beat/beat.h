/* SPDX-License-Identifier: Apache-2.0 */
/* dibba-beat's shared state: the job directory, the scheduler, the Redis client and the firings in flight. */
#ifndef DIBBA_BEAT_DAEMON_H
#define DIBBA_BEAT_DAEMON_H

#include <stdint.h>

#include <uv.h>

#include "dibba/beat.h"
#include "dibba/daemon.h"
#include "dibba/id.h"
#include "dibba/redis.h"
#include "dibba/route.h"

/* The file name that built-in jobs carry: the loader only reads "*.json", so no job file can be called this. */
#define BEAT_BUILTIN_FILE "(builtin)"

typedef struct beat_s beat_t;

/* One firing of one slot: claim and task in one script (a built-in job: claim, then its action), then the job's
 * record. */
typedef struct beat_firing_s {
  struct beat_firing_s *prev, *next; /* in beat_t.firings */
  beat_t *b;
  dibba_beat_job_t *job; /* reference held */
  int64_t slot;          /* seconds */
  int64_t next_fire_ms;  /* the job's next slot after this run, or -1 */
  int64_t deadline_ms;   /* give up retrying after this wall-clock time */
  int64_t retry_at_ms;   /* when waiting: the next attempt */
  int step;              /* FIRE_CLAIM, FIRE_RUN, FIRE_RECORD */
  int waiting;           /* on the retry list (no command in flight) */
  int won;               /* this replica claimed the slot */
  unsigned attempts;
  char task_id[DIBBA_ID_LEN + 1]; /* "" for built-in actions */
} beat_firing_t;

/* The last slot this process handled per job: a catch-up never repeats what the timer already fired. */
typedef struct beat_seen_s {
  struct beat_seen_s *next;
  char *name;
  int64_t slot;
} beat_seen_t;

/* The built-in housekeeping settings (beat.builtin.*). */
typedef struct beat_builtin_cfg_s {
  int node_offline, task_purge, pod_reconcile; /* enabled */
  const char *node_offline_every, *task_purge_every, *pod_reconcile_every;
  int64_t pod_reconcile_expires_s; /* a reconcile_pods task expires after its period (at least 5 s, at most 5 min) */
  int64_t heartbeat_s;             /* worker.heartbeat_seconds: offline after 3 missed */
  int64_t node_remove_after_s;     /* drop a host from the nodes zset after this long offline */
  int64_t record_ttl_s;            /* task.record_ttl */
} beat_builtin_cfg_t;

typedef struct beat_sweep_s beat_sweep_t;

struct beat_s {
  dibba_daemon_t *d;
  char *routing_key;
  size_t routing_key_len;
  dibba_task_key_t key;
  const char *prefix; /* redis.prefix (owned by the config) */
  char replica[300];  /* beat.replica_id: hostname:pid unless configured */
  char *dir;          /* beat.dir, or NULL: built-in jobs only */
  dibba_redis_t *redis;
  dibba_beat_timer_t sched;  /* the scheduler's uv_timer */
  uv_fs_event_t watch;       /* on dir */
  uv_timer_t debounce;       /* reload after a burst of directory events */
  uv_timer_t retry;          /* retries firings that failed on Redis errors */
  uv_work_t work;            /* a directory load on the thread pool */
  dibba_beat_jobs_t loaded;  /* the work's result, read by after_work on the loop */
  int load_rc;               /* the work's dibba_beat_jobs_load_dir status */
  int loading, reload_again; /* a load is in flight; another was asked for meanwhile */
  int handles;               /* handles initialised and not yet closed */
  int watching;              /* watch and debounce were initialised */
  int stopping;
  int synced;           /* the current job set was published and caught up since the last connect */
  char **catchup_names; /* jobs to catch up on the next sync (NULL: all) */
  size_t ncatchup;
  beat_firing_t *firings;
  size_t nfirings;
  beat_seen_t *seen;
  beat_builtin_cfg_t builtin;
  beat_sweep_t *sweep; /* a task-purge sweep in progress, or NULL */
  uint64_t fired, won, lost, retried, given_up;
};

/* fire.c */
/* The scheduler's callback: start a firing of job's slot (deduplicated in-process and in Redis). */
void beat_fire(beat_t *b, dibba_beat_job_t *job, int64_t slot);
/* The deterministic task id of a job's slot: UUIDv5(BEAT_UUID_NS, "<prefix>beat:<job>:<slot_ms>"). */
void beat_task_id(const char *prefix, const char *job, int64_t slot_ms, char out[DIBBA_ID_LEN + 1]);
/* Redis is back: retry every waiting firing now, oldest slot first, instead of at its backoff time. */
void beat_firings_resume(beat_t *b);
/* Drop every firing that is not waiting on a command (stop). Commands in flight free theirs on completion. */
void beat_firings_stop(beat_t *b);
/* 1 if this process already fired job for a slot >= slot (a firing in flight counts). */
int beat_seen(const beat_t *b, const char *job, int64_t slot);
void beat_seen_free(beat_t *b);
/* A built-in firing won its slot: run the action, then call beat_fire_done(f, status). */
void beat_fire_done(beat_firing_t *f, int status);

/* builtin.c */
/* Read beat.builtin.* (and worker.heartbeat_seconds, task.record_ttl). Returns 0 or < 0 with err. */
int beat_builtin_config(beat_t *b, char *err, size_t errlen);
/* Add the enabled built-in jobs to set (before the directory's, so a file reusing a name is rejected). */
void beat_builtin_add(beat_t *b, dibba_beat_jobs_t *set);
/* 1 if job is a built-in. */
int beat_builtin_is(const dibba_beat_job_t *job);
/* Run a built-in job's action for firing f; calls beat_fire_done when finished. */
void beat_builtin_run(beat_firing_t *f);

#endif
