/* SPDX-License-Identifier: Apache-2.0 */
/* dibba-beat: fires periodic jobs read from a directory of JSON files. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dibba/alloc.h"
#include "dibba/beat.h"
#include "dibba/config.h"
#include "dibba/daemon.h"
#include "dibba/error.h"
#include "dibba/log.h"
#include "dibba/task_queue.h"
#include "dibba/time.h"

#include "beat.h"

/* Directory events come in bursts (an editor writes, renames, chmods): reload once they settle. */
#define RELOAD_DEBOUNCE_MS 250

/* ---- the job set in Redis: <prefix>beat:jobs (name -> job JSON) for the API, and catch-up ---- */

static json_t *job_json(beat_t *b, const dibba_beat_job_t *job) {
  const char *sp = strchr(job->schedule_text, ' ');
  int64_t next = dibba_beat_sched_next(&b->sched.sched, job->name);
  json_t *o = json_pack("{s:s,s:s,s:O,s:{s:s},s:{s:s},s:s,s:b,s:I,s:I,s:s,s:b}", "name", job->name, "task", job->task,
                        "args", job->args, "route", job->route_kind == DIBBA_BEAT_ROUTE_HOST ? "host" : "role",
                        job->route, "schedule", job->schedule.kind == DIBBA_SCHED_EVERY ? "every" : "cron",
                        sp ? sp + 1 : "", "timezone", dibba_tz_name(job->tz), "enabled", job->enabled, "expires",
                        (json_int_t)job->expires, "starting_deadline", (json_int_t)job->starting_deadline, "file",
                        job->file, "builtin", beat_builtin_is(job));
  json_object_set_new(o, "next_fire_ms", next == DIBBA_BEAT_NEVER ? json_null() : json_integer(next * 1000));
  return o;
}

static void published(dibba_redis_t *r, int status, redisReply *reply, void *data) {
  (void)r, (void)reply, (void)data;
  if (status < 0)
    dibba_log_warn("beat", json_pack("{s:s}", "error", dibba_redis_strerror(status)),
                   "could not publish the job set (retried on reconnect and reload)");
}

/* Replace <prefix>beat:jobs with the current set in one MULTI. */
static void publish(beat_t *b) {
  const dibba_beat_sched_t *s = &b->sched.sched;
  char key[512];
  snprintf(key, sizeof key, "%sbeat:jobs", b->prefix);
  const char *del[] = {"DEL", key};
  const char **hset = dibba_xcalloc(2 + 2 * s->n, sizeof *hset);
  char **texts = dibba_xcalloc(s->n + 1, sizeof *texts);
  hset[0] = "HSET";
  hset[1] = key;
  for (size_t i = 0; i < s->n; i++) {
    json_t *j = job_json(b, s->v[i].job);
    texts[i] = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(j);
    hset[2 + 2 * i] = s->v[i].job->name;
    hset[3 + 2 * i] = texts[i];
  }
  dibba_redis_argv_t cmds[] = {{2, del, NULL}, {(int)(2 + 2 * s->n), hset, NULL}};
  if (dibba_redis_multi(b->redis, published, b, NULL, s->n ? 2 : 1, cmds) < 0)
    b->synced = 0; /* not connected: on_connect publishes */
  for (size_t i = 0; i < s->n; i++)
    free(texts[i]);
  free(texts);
  free(hset);
}

typedef struct catchup_s {
  beat_t *b;
  char **names;
  size_t n;
} catchup_t;

static void catchup_free(catchup_t *c) {
  for (size_t i = 0; i < c->n; i++)
    free(c->names[i]);
  free(c->names);
  free(c);
}

static dibba_beat_job_t *current_job(beat_t *b, const char *name) {
  const dibba_beat_sched_t *s = &b->sched.sched;
  for (size_t i = 0; i < s->n; i++)
    if (strcmp(s->v[i].job->name, name) == 0)
      return s->v[i].job;
  return NULL;
}

/* [HGET last_slot_ms per job]: fire each job's latest missed slot if it is within its starting deadline. */
static void catchup_read(dibba_redis_t *r, int status, redisReply *reply, void *data) {
  catchup_t *c = data;
  beat_t *b = c->b;
  (void)r;
  if (status < 0 || b->stopping) {
    if (status < 0)
      dibba_log_warn("beat", json_pack("{s:s}", "error", dibba_redis_strerror(status)),
                     "could not read the last fired slots; catch-up retried on reconnect");
    catchup_free(c);
    return;
  }
  int64_t now = dibba_now_ms() / 1000;
  for (size_t i = 0; i < c->n; i++) {
    long long last_ms;
    int64_t slot;
    dibba_beat_job_t *job = current_job(b, c->names[i]);
    if (job == NULL || dibba_redis_reply_int(dibba_redis_reply_at(reply, i), &last_ms) < 0)
      continue; /* gone since, or never fired: a new job starts from now */
    if (dibba_beat_catchup_slot(job, (int64_t)(last_ms / 1000), now, &slot) < 0 || beat_seen(b, job->name, slot))
      continue;
    char when[40];
    dibba_time_format_ms(slot * 1000, when, sizeof when);
    dibba_log_info("beat",
                   json_pack("{s:s,s:s,s:I,s:I}", "job", job->name, "slot", when, "last_slot_ms", (json_int_t)last_ms,
                             "starting_deadline", (json_int_t)job->starting_deadline),
                   "catching up job %s: slot %s", job->name, when);
    beat_fire(b, job, slot);
  }
  catchup_free(c);
}

/* Catch up the named jobs (names NULL: every job). Takes ownership of names. */
static void catchup(beat_t *b, char **names, size_t n) {
  if (names == NULL) {
    const dibba_beat_sched_t *s = &b->sched.sched;
    n = s->n;
    names = dibba_xcalloc(n + 1, sizeof *names);
    for (size_t i = 0; i < n; i++)
      names[i] = dibba_xstrdup(s->v[i].job->name);
  }
  catchup_t *c = dibba_xcalloc(1, sizeof *c);
  c->b = b;
  c->names = names;
  c->n = n;
  if (n == 0) {
    catchup_free(c);
    return;
  }
  char **keys = dibba_xcalloc(n, sizeof *keys);
  const char **argv = dibba_xcalloc(3 * n, sizeof *argv);
  dibba_redis_argv_t *cmds = dibba_xcalloc(n, sizeof *cmds);
  for (size_t i = 0; i < n; i++) {
    keys[i] = dibba_xasprintf("%sbeat:job:%s", b->prefix, names[i]);
    argv[3 * i] = "HGET";
    argv[3 * i + 1] = keys[i];
    argv[3 * i + 2] = "last_slot_ms";
    cmds[i] = (dibba_redis_argv_t){3, &argv[3 * i], NULL};
  }
  if (dibba_redis_multi(b->redis, catchup_read, c, NULL, (int)n, cmds) < 0) {
    b->synced = 0; /* not connected: on_connect catches up every job */
    catchup_free(c);
  }
  for (size_t i = 0; i < n; i++)
    free(keys[i]);
  free(keys);
  free(argv);
  free(cmds);
}

/* Publish the job set and catch up (names as in catchup()), now if Redis is ready, else on connect. */
static void sync_jobs(beat_t *b, char **names, size_t n) {
  if (b->redis == NULL || !dibba_redis_is_ready(b->redis)) {
    for (size_t i = 0; i < n; i++)
      free(names[i]);
    free(names);
    b->synced = 0;
    return;
  }
  b->synced = 1;
  publish(b);
  catchup(b, names, n);
}

static void on_redis_connect(dibba_redis_t *r, int status, void *data) {
  beat_t *b = data;
  if (status < 0) {
    dibba_log_warn("beat", json_pack("{s:s}", "error", dibba_redis_last_error(r)), "redis connect failed");
    return;
  }
  dibba_log_info("beat", json_pack("{s:s}", "replica", b->replica), "redis connected");
  if (b->stopping)
    return;
  /* The slots that failed while Redis was away go first, in order, ahead of any slot the timer fires from now on. */
  beat_firings_resume(b);
  sync_jobs(b, NULL, 0); /* firings may have been given up while it was away */
}

static void on_redis_disconnect(dibba_redis_t *r, int status, void *data) {
  beat_t *b = data;
  (void)r;
  b->synced = 0;
  dibba_log_warn("beat", json_pack("{s:s}", "error", dibba_redis_strerror(status)), "redis connection lost");
}

static void on_fire(dibba_beat_timer_t *t, dibba_beat_job_t *job, int64_t slot) { beat_fire(t->data, job, slot); }

/* The names of set's jobs that the scheduler already runs unchanged (a reload catches up only those). */
static char **kept_names(beat_t *b, const dibba_beat_jobs_t *set, size_t *n) {
  char **v = dibba_xcalloc(set->n + 1, sizeof *v);
  *n = 0;
  for (size_t i = 0; i < set->n; i++) {
    dibba_beat_job_t *old = current_job(b, set->v[i]->name);
    if (old && strcmp(old->canonical, set->v[i]->canonical) == 0)
      v[(*n)++] = dibba_xstrdup(set->v[i]->name);
  }
  return v;
}

static void install(beat_t *b, dibba_beat_jobs_t *set, const char *why, int initial) {
  dibba_beat_diff_t diff;
  size_t nkept = 0;
  char **kept = initial ? NULL : kept_names(b, set, &nkept);
  dibba_beat_jobs_log_errors(set);
  dibba_beat_timer_set_jobs(&b->sched, set, &diff);
  dibba_log_info("beat",
                 json_pack("{s:s,s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "dir", b->dir ? b->dir : "", "jobs", (json_int_t)set->n,
                           "files", (json_int_t)set->files, "rejected_files", (json_int_t)set->nerrors, "kept",
                           (json_int_t)diff.kept, "added", (json_int_t)diff.added, "changed", (json_int_t)diff.changed,
                           "removed", (json_int_t)diff.removed),
                 "jobs %s", why);
  sync_jobs(b, kept, nkept);
}

static void load_work(uv_work_t *w) {
  beat_t *b = w->data;
  dibba_beat_jobs_init(&b->loaded);
  beat_builtin_add(b, &b->loaded);
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
      install(b, &b->loaded, "reloaded", 0);
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
  dibba_redis_options_t ro;
  const char *dir = NULL, *replica = NULL;
  int r;

  b->d = d;
  dibba_beat_jobs_init(&set);
  r = dibba_config_secret(&d->cfg, "task.routing_key", &b->routing_key, &b->routing_key_len, err, errlen);
  if (r < 0)
    goto out;
  r = dibba_task_key_init(&b->key, b->routing_key, b->routing_key_len);
  explicit_bzero(b->routing_key, b->routing_key_len);
  free(b->routing_key);
  b->routing_key = NULL;
  if (r < 0) {
    dibba_error_set(err, errlen, r, "task.routing_key: unusable");
    goto out;
  }
  if ((r = dibba_config_str(&d->cfg, "beat.dir", NULL, &dir, err, errlen)) < 0 ||
      (r = dibba_config_str(&d->cfg, "redis.prefix", "dibba:", &b->prefix, err, errlen)) < 0 ||
      (r = dibba_config_str(&d->cfg, "beat.replica_id", NULL, &replica, err, errlen)) < 0 ||
      (r = beat_builtin_config(b, err, errlen)) < 0 ||
      (r = dibba_redis_options_from_config(&d->cfg, &ro, err, errlen)) < 0)
    goto out;
  if (replica && replica[0]) {
    snprintf(b->replica, sizeof b->replica, "%s", replica);
  } else {
    char host[256] = "beat";
    (void)gethostname(host, sizeof host - 1);
    snprintf(b->replica, sizeof b->replica, "%s:%d", host, (int)getpid());
  }
  r = dibba_beat_timer_init(&d->loop, &b->sched, on_fire, b);
  if (r < 0) {
    dibba_error_set(err, errlen, r, "beat timer: %s", uv_strerror(r));
    goto out;
  }
  b->handles++;
  uv_timer_init(&d->loop, &b->retry);
  b->retry.data = b;
  b->handles++;
  ro.name = "beat";
  ro.on_connect = on_redis_connect;
  ro.on_disconnect = on_redis_disconnect;
  ro.data = b;
  if ((r = dibba_redis_new(&d->loop, &ro, &b->redis, err, errlen)) < 0)
    goto out;
  beat_builtin_add(b, &set);
  if (dir == NULL || dir[0] == '\0') {
    dibba_log_warn("beat", NULL, "beat.dir is not set: built-in jobs only");
    install(b, &set, "loaded", 1);
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
  uv_fs_event_init(&d->loop, &b->watch);
  b->watch.data = b;
  b->handles += 2;
  b->watching = 1;
  r = uv_fs_event_start(&b->watch, on_dir_event, b->dir, 0);
  if (r < 0) {
    dibba_error_set(err, errlen, r, "config: beat.dir: cannot watch %s: %s", b->dir, uv_strerror(r));
    goto out;
  }
  install(b, &set, "loaded", 1);
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

/* Every firing has finished or been cancelled once the client is gone: only now may the key go. */
static void on_redis_closed(dibba_redis_t *r, void *data) {
  beat_t *b = data;
  (void)r;
  b->redis = NULL;
  dibba_task_key_free(&b->key);
  dibba_log_info("beat",
                 json_pack("{s:I,s:I,s:I,s:I,s:I}", "fired", (json_int_t)b->fired, "won", (json_int_t)b->won, "lost",
                           (json_int_t)b->lost, "retried", (json_int_t)b->retried, "given_up", (json_int_t)b->given_up),
                 "beat stopped");
}

static void beat_stop(dibba_daemon_t *d) {
  beat_t *b = d->data;
  if (b->stopping)
    return;
  b->stopping = 1;
  /* A load in flight finishes (or is cancelled) on its own; load_done then drops its result. */
  if (b->loading)
    uv_cancel((uv_req_t *)&b->work);
  if (b->sched.timer.loop)
    dibba_beat_timer_close(&b->sched, on_sched_closed);
  if (b->retry.loop && !uv_is_closing((uv_handle_t *)&b->retry))
    uv_close((uv_handle_t *)&b->retry, on_closed);
  if (b->watching) {
    b->watching = 0;
    uv_close((uv_handle_t *)&b->debounce, on_closed);
    uv_close((uv_handle_t *)&b->watch, on_closed);
  }
  beat_firings_stop(b);
  if (b->redis)
    dibba_redis_close(b->redis, on_redis_closed); /* commands in flight fail and free their firings */
  else
    dibba_task_key_free(&b->key);
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
               "it is watched, and SIGHUP reloads it too. beat.replica_id (default hostname:pid) marks this\n"
               "replica's claims; beat.builtin.node_offline.*, beat.builtin.task_purge.* and\n"
               "beat.builtin.pod_reconcile.* set the built-in housekeeping jobs (enabled, every). See README.md,\n"
               "\"Schedules\".\n",
      .start = beat_start,
      .stop = beat_stop,
      .reload = beat_reload,
  };
  beat_t b;
  memset(&b, 0, sizeof b);
  int rc = dibba_daemon_main(&ops, &b, argc, argv);
  beat_seen_free(&b);
  free(b.dir);
  dibba_tz_cache_clear();
  return rc;
}
