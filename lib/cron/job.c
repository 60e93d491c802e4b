/* SPDX-License-Identifier: Apache-2.0 */
/* Beat jobs from a directory of JSON files: validation with file/field/reason errors, size caps, job sets. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dibba/alloc.h"
#include "dibba/beat.h"
#include "dibba/config.h"
#include "dibba/error.h"
#include "dibba/log.h"

#define NAME_MAX_LEN 64
#define TASK_MAX_LEN 128
#define ROUTE_MAX_LEN 253
#define SCHED_TEXT_MAX 300

dibba_beat_job_t *dibba_beat_job_ref(dibba_beat_job_t *job) {
  job->refs++;
  return job;
}

void dibba_beat_job_unref(dibba_beat_job_t *job) {
  if (job == NULL || --job->refs > 0)
    return;
  free(job->name);
  free(job->task);
  json_decref(job->args);
  free(job->route);
  free(job->schedule_text);
  free(job->file);
  free(job->canonical);
  free(job);
}

static int charset_ok(const char *s, size_t max, const char *extra, int upper) {
  size_t n = strlen(s);
  if (n == 0 || n > max)
    return 0;
  for (size_t i = 0; i < n; i++) {
    char ch = s[i];
    if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || (upper && ch >= 'A' && ch <= 'Z') ||
          strchr(extra, ch)))
      return 0;
  }
  return 1;
}

static uint64_t fnv1a(const char *s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (; *s; s++)
    h = (h ^ (unsigned char)*s) * 0x100000001b3ULL;
  return h;
}

/* A duration field: an integer in [min, DIBBA_BEAT_MAX_SECONDS]. */
static int get_seconds(json_t *v, int64_t min, int64_t *out) {
  if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > DIBBA_BEAT_MAX_SECONDS)
    return -1;
  *out = json_integer_value(v);
  return 0;
}

#define FAIL(f, ...)                                                                                                   \
  do {                                                                                                                 \
    snprintf(field, fieldlen, "%s", f);                                                                                \
    r = dibba_error_set(err, errlen, -EINVAL, __VA_ARGS__);                                                            \
    goto out;                                                                                                          \
  } while (0)

int dibba_beat_job_parse(const char *file, json_t *obj, dibba_beat_job_t **out, char *field, size_t fieldlen, char *err,
                         size_t errlen) {
  static const char *const known[] = {
      "name", "task", "args", "route", "schedule", "timezone", "expires", "enabled", "starting_deadline"};
  dibba_beat_job_t *job = dibba_xcalloc(1, sizeof *job);
  const char *key, *zone_name = "UTC";
  json_t *v;
  int r = 0;
  char why[256];

  job->refs = 1;
  job->enabled = 1;
  job->file = dibba_xstrdup(file);
  *out = NULL;
  if (field && fieldlen)
    field[0] = '\0';
  if (!json_is_object(obj))
    FAIL("", "a job must be a JSON object");
  json_object_foreach(obj, key, v) {
    size_t i = 0;
    while (i < sizeof known / sizeof known[0] && strcmp(key, known[i]) != 0)
      i++;
    if (i == sizeof known / sizeof known[0])
      FAIL(key, "unknown field");
  }
  v = json_object_get(obj, "name");
  if (!json_is_string(v) || !charset_ok(json_string_value(v), NAME_MAX_LEN, "_.-", 0))
    FAIL("name", "required: 1-%d characters of [a-z0-9_.-]", NAME_MAX_LEN);
  job->name = dibba_xstrdup(json_string_value(v));
  v = json_object_get(obj, "task");
  if (!json_is_string(v) || !charset_ok(json_string_value(v), TASK_MAX_LEN, "_.:-", 1))
    FAIL("task", "required: 1-%d characters of [A-Za-z0-9_.:-]", TASK_MAX_LEN);
  job->task = dibba_xstrdup(json_string_value(v));
  v = json_object_get(obj, "args");
  if (v && !json_is_object(v))
    FAIL("args", "must be an object");
  job->args = v ? json_deep_copy(v) : json_object();
  if (job->args == NULL)
    dibba_oom(0);

  v = json_object_get(obj, "route");
  if (!json_is_object(v) || json_object_size(v) != 1)
    FAIL("route", "required: {\"host\": NAME} or {\"role\": NAME}");
  json_t *host = json_object_get(v, "host"), *role = json_object_get(v, "role");
  json_t *rv = host ? host : role;
  if (rv == NULL)
    FAIL("route", "must have one key, \"host\" or \"role\"");
  if (!json_is_string(rv) || !charset_ok(json_string_value(rv), ROUTE_MAX_LEN, "_.-", 1))
    FAIL(host ? "route.host" : "route.role", "must be 1-%d characters of [A-Za-z0-9_.-]", ROUTE_MAX_LEN);
  job->route_kind = host ? DIBBA_BEAT_ROUTE_HOST : DIBBA_BEAT_ROUTE_ROLE;
  job->route = dibba_xstrdup(json_string_value(rv));

  v = json_object_get(obj, "timezone");
  if (v && !json_is_string(v))
    FAIL("timezone", "must be a string (an IANA zone name)");
  if (v)
    zone_name = json_string_value(v);
  if (dibba_tz_get(zone_name, &job->tz, why, sizeof why) < 0)
    FAIL("timezone", "%s", why);

  v = json_object_get(obj, "schedule");
  if (!json_is_object(v) || json_object_size(v) != 1)
    FAIL("schedule", "required: {\"every\": \"30s\"} or {\"cron\": \"0 2 * * *\"}");
  json_t *every = json_object_get(v, "every"), *cron = json_object_get(v, "cron");
  if (every) {
    if (!json_is_string(every) ||
        dibba_every_parse(json_string_value(every), &job->schedule.every, NULL, why, sizeof why) < 0)
      FAIL("schedule.every", "%s", json_is_string(every) ? why : "must be a string such as \"30s\"");
    job->schedule.kind = DIBBA_SCHED_EVERY;
    job->schedule_text = dibba_xasprintf("every %s", json_string_value(every));
  } else if (cron) {
    if (!json_is_string(cron) ||
        dibba_cron_parse(json_string_value(cron), &job->schedule.cron, NULL, why, sizeof why) < 0)
      FAIL("schedule.cron", "%s", json_is_string(cron) ? why : "must be a string such as \"0 2 * * *\"");
    job->schedule.kind = DIBBA_SCHED_CRON;
    job->schedule_text = dibba_xasprintf("cron %s", json_string_value(cron));
  } else {
    FAIL("schedule", "must have one key, \"every\" or \"cron\"");
  }

  int is_every = job->schedule.kind == DIBBA_SCHED_EVERY;
  job->expires = is_every ? (job->schedule.every < 3600 ? job->schedule.every : 3600) : 3600;
  job->starting_deadline =
      is_every ? (job->schedule.every < DIBBA_BEAT_MAX_SECONDS ? job->schedule.every : DIBBA_BEAT_MAX_SECONDS)
               : DIBBA_BEAT_CRON_DEADLINE;
  v = json_object_get(obj, "expires");
  if (v && get_seconds(v, 1, &job->expires) < 0)
    FAIL("expires", "must be an integer number of seconds, 1..%d", DIBBA_BEAT_MAX_SECONDS);
  v = json_object_get(obj, "starting_deadline");
  if (v && get_seconds(v, 0, &job->starting_deadline) < 0)
    FAIL("starting_deadline", "must be an integer number of seconds, 0..%d", DIBBA_BEAT_MAX_SECONDS);
  v = json_object_get(obj, "enabled");
  if (v && !json_is_boolean(v))
    FAIL("enabled", "must be true or false");
  if (v)
    job->enabled = json_is_true(v);

  job->canonical = json_dumps(obj, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENSURE_ASCII);
  if (job->canonical == NULL)
    dibba_oom(0);
  job->hash = fnv1a(job->canonical);
  *out = job;
  job = NULL;
out:
  dibba_beat_job_unref(job);
  return r;
}

/* ---- Sets ---------------------------------------------------------------------------------------------------- */

void dibba_beat_jobs_init(dibba_beat_jobs_t *set) { memset(set, 0, sizeof *set); }

void dibba_beat_jobs_free(dibba_beat_jobs_t *set) {
  for (size_t i = 0; i < set->n; i++)
    dibba_beat_job_unref(set->v[i]);
  for (size_t i = 0; i < set->nerrors; i++) {
    free(set->errors[i].file);
    free(set->errors[i].field);
    free(set->errors[i].reason);
  }
  free(set->v);
  free(set->errors);
  memset(set, 0, sizeof *set);
}

static int add_error(dibba_beat_jobs_t *set, const char *file, const char *field, const char *reason, int r) {
  set->errors = dibba_xreallocarray(set->errors, set->nerrors + 1, sizeof *set->errors);
  dibba_beat_error_t *e = &set->errors[set->nerrors++];
  e->file = dibba_xstrdup(file);
  e->field = dibba_xstrdup(field);
  e->reason = dibba_xstrdup(reason);
  return r;
}

static int by_name(const void *a, const void *b) {
  return strcmp((*(dibba_beat_job_t *const *)a)->name, (*(dibba_beat_job_t *const *)b)->name);
}

dibba_beat_job_t *dibba_beat_jobs_find(const dibba_beat_jobs_t *set, const char *name) {
  dibba_beat_job_t key = {.name = (char *)name}, *kp = &key;
  dibba_beat_job_t **hit = set->n ? bsearch(&kp, set->v, set->n, sizeof *set->v, by_name) : NULL;
  return hit ? *hit : NULL;
}

int dibba_beat_jobs_add_file(dibba_beat_jobs_t *set, const char *file, const char *data, size_t len) {
  dibba_beat_job_t **jobs = NULL;
  size_t n = 0, count;
  json_t *root = NULL, *list;
  json_error_t je;
  char field[128], reason[512];
  int r = 0;

  if (len > DIBBA_BEAT_FILE_MAX) {
    snprintf(reason, sizeof reason, "file larger than %d bytes", DIBBA_BEAT_FILE_MAX);
    r = add_error(set, file, "", reason, -EFBIG);
    goto out;
  }
  root = json_loadb(data, len, JSON_REJECT_DUPLICATES, &je);
  if (root == NULL) {
    snprintf(reason, sizeof reason, "line %d column %d: %s", je.line, je.column, je.text);
    r = add_error(set, file, "", reason, -EINVAL);
    goto out;
  }
  list = json_object_get(root, "jobs");
  if (list && (!json_is_array(list) || json_object_size(root) != 1)) {
    r = add_error(set, file, "jobs", "must be an array and the only key of the file", -EINVAL);
    goto out;
  }
  count = list ? json_array_size(list) : 1;
  if (count > DIBBA_BEAT_MAX_JOBS - set->n) {
    snprintf(reason, sizeof reason, "more than %d jobs in the directory", DIBBA_BEAT_MAX_JOBS);
    r = add_error(set, file, list ? "jobs" : "", reason, -E2BIG);
    goto out;
  }
  jobs = dibba_xcalloc(count ? count : 1, sizeof *jobs);
  for (n = 0; n < count; n++) {
    char path[160];
    json_t *obj = list ? json_array_get(list, n) : root;
    r = dibba_beat_job_parse(file, obj, &jobs[n], field, sizeof field, reason, sizeof reason);
    if (list)
      snprintf(path, sizeof path, "jobs[%zu]%s%s", n, field[0] ? "." : "", field);
    else
      snprintf(path, sizeof path, "%s", field);
    if (r < 0) {
      add_error(set, file, path, reason, r);
      goto out;
    }
    dibba_beat_job_t *dup = dibba_beat_jobs_find(set, jobs[n]->name);
    for (size_t k = 0; dup == NULL && k < n; k++)
      if (strcmp(jobs[k]->name, jobs[n]->name) == 0)
        dup = jobs[k];
    if (dup) {
      snprintf(reason, sizeof reason, "duplicate job name \"%s\" (already defined in %s)", jobs[n]->name, dup->file);
      if (list)
        snprintf(path, sizeof path, "jobs[%zu].name", n);
      else
        snprintf(path, sizeof path, "name");
      r = add_error(set, file, path, reason, -EINVAL);
      n++;
      goto out;
    }
  }
  set->v = dibba_xreallocarray(set->v, set->n + count, sizeof *set->v);
  memcpy(set->v + set->n, jobs, count * sizeof *jobs);
  set->n += count;
  qsort(set->v, set->n, sizeof *set->v, by_name);
  set->files++;
  n = 0; /* the set owns them now */
out:
  for (size_t k = 0; k < n; k++)
    dibba_beat_job_unref(jobs[k]);
  free(jobs);
  json_decref(root);
  return r;
}

static int json_file(const struct dirent *de) {
  size_t n = strlen(de->d_name);
  return de->d_name[0] != '.' && n > 5 && strcmp(de->d_name + n - 5, ".json") == 0;
}

int dibba_beat_jobs_load_dir(dibba_beat_jobs_t *set, const char *dir) {
  struct dirent **names = NULL;
  int n = scandir(dir, &names, json_file, alphasort), r = 0;
  if (n < 0)
    return -errno;
  for (int i = 0; i < n; i++) {
    char *path = NULL, *data = NULL, reason[256];
    size_t len = 0;
    if (i >= DIBBA_BEAT_MAX_FILES) {
      snprintf(reason, sizeof reason, "more than %d job files in the directory", DIBBA_BEAT_MAX_FILES);
      add_error(set, names[i]->d_name, "", reason, -E2BIG);
      continue;
    }
    path = dibba_xasprintf("%s/%s", dir, names[i]->d_name);
    r = dibba_read_small_file(path, DIBBA_BEAT_FILE_MAX, &data, &len);
    if (r == -EFBIG) {
      snprintf(reason, sizeof reason, "file larger than %d bytes", DIBBA_BEAT_FILE_MAX);
      add_error(set, names[i]->d_name, "", reason, r);
    } else if (r < 0) {
      add_error(set, names[i]->d_name, "", dibba_strerror(r), r);
    } else {
      dibba_beat_jobs_add_file(set, names[i]->d_name, data, len);
    }
    free(path);
    free(data);
  }
  for (int i = 0; i < n; i++)
    free(names[i]);
  free(names);
  return 0;
}

void dibba_beat_jobs_log_errors(const dibba_beat_jobs_t *set) {
  for (size_t i = 0; i < set->nerrors; i++) {
    const dibba_beat_error_t *e = &set->errors[i];
    dibba_log_error("beat", json_pack("{s:s,s:s,s:s}", "file", e->file, "field", e->field, "error", e->reason),
                    "job file rejected: %s: %s%s%s", e->file, e->field, e->field[0] ? ": " : "", e->reason);
  }
}
