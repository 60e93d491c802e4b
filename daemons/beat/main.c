/* SPDX-License-Identifier: Apache-2.0 */
/* dibba-beat: fires periodic jobs read from a directory of JSON files. */
#include <stdlib.h>
#include <string.h>

#include "dibba/alloc.h"
#include "dibba/beat.h"
#include "dibba/config.h"
#include "dibba/daemon.h"
#include "dibba/error.h"
#include "dibba/log.h"
#include "dibba/time.h"

/* Directory events come in bursts (an editor writes, renames, chmods): reload once they settle. */
#define RELOAD_DEBOUNCE_MS 250

typedef struct beat_s {
  dibba_daemon_t *d;
  char *routing_key;
  size_t routing_key_len;
  char *dir;                 /* beat.dir, or NULL: no jobs */
  dibba_beat_timer_t sched;  /* the scheduler's uv_timer */
  uv_fs_event_t watch;       /* on dir */
  uv_timer_t debounce;       /* reload after a burst of directory events */
  uv_work_t work;            /* a directory load on the thread pool */
  dibba_beat_jobs_t loaded;  /* the work's result, read by after_work on the loop */
  int load_rc;               /* the work's dibba_beat_jobs_load_dir status */
  int loading, reload_again; /* a load is in flight; another was asked for meanwhile */
  int handles;               /* handles initialised and not yet closed */
  int stopping;
} beat_t;

static void log_slot(const char *msg, dibba_beat_job_t *job, int64_t slot) {
  char when[40];
  dibba_time_format_ms(slot * 1000, when, sizeof when);
  dibba_log_info("beat",
                 json_pack("{s:s,s:s,s:I,s:s,s:s,s:s,s:I}", "job", job->name, "slot", when, "slot_ts", (json_int_t)slot,
                           "task", job->task, "route_kind", job->route_kind == DIBBA_BEAT_ROUTE_HOST ? "host" : "role",
                           "route", job->route, "expires", (json_int_t)job->expires),
                 "%s: job %s slot %s task %s", msg, job->name, when, job->task);
}

/* The firing. The lead wires this to `SET <prefix>beat:fired:<job>:<slot> NX PX` and the task producer. */
static void on_fire(dibba_beat_timer_t *t, dibba_beat_job_t *job, int64_t slot) {
  (void)t;
  log_slot("job fired", job, slot);
}

static void install(beat_t *b, dibba_beat_jobs_t *set, const char *why) {
  dibba_beat_diff_t diff;
  dibba_beat_jobs_log_errors(set);
  dibba_beat_timer_set_jobs(&b->sched, set, &diff);
  dibba_log_info("beat",
                 json_pack("{s:s,s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "dir", b->dir, "jobs", (json_int_t)set->n, "files",
                           (json_int_t)set->files, "rejected_files", (json_int_t)set->nerrors, "kept",
                           (json_int_t)diff.kept, "added", (json_int_t)diff.added, "changed", (json_int_t)diff.changed,
                           "removed", (json_int_t)diff.removed),
                 "jobs %s", why);
}

static void load_work(uv_work_t *w) {
  beat_t *b = w->data;
  dibba_beat_jobs_init(&b->loaded);
  b->load_rc = dibba_beat_jobs_load_dir(&b->loaded, b->dir);
}

static void start_reload(beat_t *b);

static void load_done(uv_work_t *w, int status) {
  beat_t *b = w->data;
  b->loading = 0;
  if (status == 0 && !b->stopping) {
    if (b->load_rc < 0)
      dibba_log_error("beat", json_pack("{s:s,s:s}", "dir", b->dir, "error", dibba_strerror(b->load_rc)),
                      "cannot read the job directory; keeping the current jobs");
    else
      install(b, &b->loaded, "reloaded");
  }
  if (status == 0)
    dibba_beat_jobs_free(&b->loaded);
  if (b->reload_again && !b->stopping) {
    b->reload_again = 0;
    start_reload(b);
  }
}

/* Load the directory off the loop (file reads and zone files), then swap the jobs in on the loop. */
static void start_reload(beat_t *b) {
  if (b->dir == NULL || b->stopping)
    return;
  if (b->loading) {
    b->reload_again = 1;
    return;
  }
  b->work.data = b;
  int r = uv_queue_work(&b->d->loop, &b->work, load_work, load_done);
  if (r < 0) {
    dibba_log_error("beat", json_pack("{s:s}", "error", uv_strerror(r)), "cannot start a reload");
    return;
  }
  b->loading = 1;
}

static void on_debounce(uv_timer_t *t) { start_reload(t->data); }

static void on_dir_event(uv_fs_event_t *h, const char *filename, int events, int status) {
  beat_t *b = h->data;
  (void)filename;
  (void)events;
  if (status < 0) {
    dibba_log_warn("beat", json_pack("{s:s,s:s}", "dir", b->dir, "error", uv_strerror(status)),
                   "directory watch error");
    return;
  }
  if (!b->stopping)
    uv_timer_start(&b->debounce, on_debounce, RELOAD_DEBOUNCE_MS, 0);
}

static int beat_start(dibba_daemon_t *d, char *err, size_t errlen) {
  beat_t *b = d->data;
  dibba_beat_jobs_t set;
  const char *dir = NULL;
  int r;

  b->d = d;
  dibba_beat_jobs_init(&set);
  r = dibba_config_secret(&d->cfg, "task.routing_key", &b->routing_key, &b->routing_key_len, err, errlen);
  if (r < 0)
    goto out;
  r = dibba_config_str(&d->cfg, "beat.dir", NULL, &dir, err, errlen);
  if (r < 0)
    goto out;
  r = dibba_beat_timer_init(&d->loop, &b->sched, on_fire, b);
  if (r < 0) {
    dibba_error_set(err, errlen, r, "beat timer: %s", uv_strerror(r));
    goto out;
  }
  b->handles++;
  if (dir == NULL || dir[0] == '\0') {
    dibba_log_warn("beat", NULL, "beat.dir is not set: no jobs");
    goto out;
  }
  b->dir = dibba_xstrdup(dir);
  /* Start-up reads are small and bounded; later reloads go through the thread pool. */
  r = dibba_beat_jobs_load_dir(&set, b->dir);
  if (r < 0) {
    dibba_error_set(err, errlen, r, "config: beat.dir: cannot read %s: %s", b->dir, dibba_strerror(r));
    goto out;
  }
  uv_timer_init(&d->loop, &b->debounce);
  b->debounce.data = b;
  b->handles++;
  uv_fs_event_init(&d->loop, &b->watch);
  b->watch.data = b;
  b->handles++;
  r = uv_fs_event_start(&b->watch, on_dir_event, b->dir, 0);
  if (r < 0) {
    dibba_error_set(err, errlen, r, "config: beat.dir: cannot watch %s: %s", b->dir, uv_strerror(r));
    goto out;
  }
  install(b, &set, "loaded");
out:
  dibba_beat_jobs_free(&set);
  return r;
}

static void on_closed(uv_handle_t *h) {
  beat_t *b = h->data;
  b->handles--;
}

static void on_sched_closed(dibba_beat_timer_t *t) {
  beat_t *b = t->data;
  b->handles--;
}

static void beat_stop(dibba_daemon_t *d) {
  beat_t *b = d->data;
  if (b->stopping)
    return;
  b->stopping = 1;
  /* A load in flight finishes (or is cancelled) on its own; load_done then drops its result. */
  if (b->loading)
    uv_cancel((uv_req_t *)&b->work);
  if (b->handles >= 1)
    dibba_beat_timer_close(&b->sched, on_sched_closed);
  if (b->handles >= 2 && !uv_is_closing((uv_handle_t *)&b->debounce))
    uv_close((uv_handle_t *)&b->debounce, on_closed);
  if (b->handles >= 3 && !uv_is_closing((uv_handle_t *)&b->watch))
    uv_close((uv_handle_t *)&b->watch, on_closed);
  if (b->routing_key) {
    explicit_bzero(b->routing_key, b->routing_key_len);
    free(b->routing_key);
    b->routing_key = NULL;
  }
}

static int beat_reload(dibba_daemon_t *d, char *err, size_t errlen) {
  beat_t *b = d->data;
  (void)err;
  (void)errlen;
  start_reload(b); /* asynchronous: the outcome is logged when the load completes */
  return 0;
}

int main(int argc, char **argv) {
  static const dibba_daemon_ops_t ops = {
      .name = "dibba-beat",
      .usage = "Configuration: beat.dir (env DIBBA_BEAT_DIR), a directory of *.json job files;\n"
               "it is watched, and SIGHUP reloads it too.\n",
      .start = beat_start,
      .stop = beat_stop,
      .reload = beat_reload,
  };
  beat_t b;
  memset(&b, 0, sizeof b);
  int rc = dibba_daemon_main(&ops, &b, argc, argv);
  free(b.dir);
  dibba_tz_cache_clear();
  return rc;
}
