/* SPDX-License-Identifier: Apache-2.0 */
/* dibba-api's schedule routes: dibba-beat publishes its jobs in <prefix>beat:jobs and their runs in
 * <prefix>beat:job:<name>; the API reads those (it never reads job files) and submits a job's task on demand. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dibba/alloc.h"
#include "dibba/error.h"
#include "dibba/log.h"
#include "dibba/task_queue.h"
#include "schedules.h"

#define NAME_MAX_LEN 64 /* job names are [a-z0-9_.-]{1,64} */

struct api_schedules_s {
  dibba_redis_t *r;
  dibba_task_key_t key;
  char *prefix;
};

/* ---- GET /v1/schedules ---- */

typedef struct list_s {
  api_schedules_t *s;
  dibba_http_req_t *req;
  json_t *jobs; /* array of job objects, sorted by name */
} list_t;

static void list_free(list_t *q) {
  dibba_http_req_unref(q->req);
  json_decref(q->jobs);
  free(q);
}

static int by_name(const void *a, const void *b) {
  const json_t *x = *(json_t *const *)a, *y = *(json_t *const *)b;
  return strcmp(json_string_value(json_object_get(x, "name")), json_string_value(json_object_get(y, "name")));
}

static json_t *int_field(const redisReply *h, const char *name) {
  long long v;
  const char *s;
  size_t n;
  char tmp[24];
  if (dibba_redis_reply_field(h, name, &s, &n) < 0 || n == 0 || n >= sizeof tmp)
    return json_null();
  memcpy(tmp, s, n);
  tmp[n] = '\0';
  char *end;
  v = strtoll(tmp, &end, 10);
  return *end ? json_null() : json_integer(v);
}

/* [HGETALL beat:job:<name> ...]: merge each job's runs into its object. */
static void runs_read(dibba_redis_t *r, int status, redisReply *reply, void *data) {
  list_t *q = data;
  (void)r;
  if (status < 0) {
    dibba_http_respond_error(q->req, 503, "schedule store unavailable");
    list_free(q);
    return;
  }
  size_t i;
  json_t *job;
  json_array_foreach(q->jobs, i, job) {
    const redisReply *h = dibba_redis_reply_at(reply, i);
    const char *s;
    size_t n;
    json_t *next = int_field(h, "next_fire_ms");
    /* The replica that fires a slot writes next_fire_ms; the published job set has the value at load time. */
    if (json_is_integer(next) && json_is_true(json_object_get(job, "enabled")))
      json_object_set(job, "next_fire_ms", next);
    json_decref(next);
    json_object_set_new(job, "last_fire_ms", int_field(h, "last_fire_ms"));
    json_object_set_new(job, "last_slot_ms", int_field(h, "last_slot_ms"));
    if (dibba_redis_reply_field(h, "last_task_id", &s, &n) == 0 && n > 0)
      json_object_set_new(job, "last_task_id", json_stringn(s, n));
    else
      json_object_set_new(job, "last_task_id", json_null());
  }
  dibba_http_respond_json(q->req, 200, json_pack("{s:O}", "schedules", q->jobs));
  list_free(q);
}

static void jobs_read(dibba_redis_t *r, int status, redisReply *reply, void *data) {
  list_t *q = data;
  (void)r;
  if (status < 0 || reply->type != REDIS_REPLY_ARRAY) {
    dibba_http_respond_error(q->req, 503, "schedule store unavailable");
    list_free(q);
    return;
  }
  for (size_t i = 0; i + 1 < reply->elements; i += 2) {
    const redisReply *v = reply->element[i + 1];
    json_t *job = v->type == REDIS_REPLY_STRING ? json_loadb(v->str, v->len, 0, NULL) : NULL;
    if (!json_is_object(job) || !json_is_string(json_object_get(job, "name"))) {
      json_decref(job);
      continue; /* not written by dibba-beat */
    }
    json_array_append_new(q->jobs, job);
  }
  size_t n = json_array_size(q->jobs);
  if (n == 0) {
    dibba_http_respond_json(q->req, 200, json_pack("{s:[]}", "schedules"));
    list_free(q);
    return;
  }
  json_t **v = dibba_xcalloc(n, sizeof *v);
  for (size_t i = 0; i < n; i++)
    v[i] = json_incref(json_array_get(q->jobs, i));
  qsort(v, n, sizeof *v, by_name);
  json_array_clear(q->jobs);
  for (size_t i = 0; i < n; i++)
    json_array_append_new(q->jobs, v[i]);
  free(v);
  char **keys = dibba_xcalloc(n, sizeof *keys);
  const char **argv = dibba_xcalloc(2 * n, sizeof *argv);
  dibba_redis_argv_t *cmds = dibba_xcalloc(n, sizeof *cmds);
  for (size_t i = 0; i < n; i++) {
    keys[i] = dibba_xasprintf("%sbeat:job:%s", q->s->prefix,
                              json_string_value(json_object_get(json_array_get(q->jobs, i), "name")));
    argv[2 * i] = "HGETALL";
    argv[2 * i + 1] = keys[i];
    cmds[i] = (dibba_redis_argv_t){2, &argv[2 * i], NULL};
  }
  if (dibba_redis_multi(q->s->r, runs_read, q, NULL, (int)n, cmds) < 0) {
    dibba_http_respond_error(q->req, 503, "schedule store unavailable");
    list_free(q);
  }
  for (size_t i = 0; i < n; i++)
    free(keys[i]);
  free(keys);
  free(argv);
  free(cmds);
}

static void h_list(dibba_http_req_t *req, void *data) {
  api_schedules_t *s = data;
  list_t *q = dibba_xcalloc(1, sizeof *q);
  q->s = s;
  q->req = req;
  q->jobs = json_array();
  dibba_http_req_ref(req);
  if (dibba_redis_command(s->r, jobs_read, q, NULL, "HGETALL %sbeat:jobs", s->prefix) < 0) {
    dibba_http_respond_error(req, 503, "schedule store unavailable");
    list_free(q);
  }
}

/* ---- POST /v1/schedules/{name}/run ---- */

typedef struct run_s {
  api_schedules_t *s;
  dibba_http_req_t *req;
} run_t;

static void run_free(run_t *q) {
  dibba_http_req_unref(q->req);
  free(q);
}

static void run_submitted(int status, const char *id, void *data) {
  run_t *q = data;
  if (status < 0)
    dibba_http_respond_error(q->req, 503, "task store unavailable");
  else
    dibba_http_respond_json(q->req, 202,
                            json_pack("{s:s,s:s}", "task_id", id, "name", dibba_http_req_param(q->req, "name")));
  run_free(q);
}

static void job_read(dibba_redis_t *r, int status, redisReply *reply, void *data) {
  run_t *q = data;
  const char *text;
  size_t len;
  (void)r;
  if (status < 0) {
    dibba_http_respond_error(q->req, 503, "schedule store unavailable");
    run_free(q);
    return;
  }
  if (dibba_redis_reply_str(reply, &text, &len) < 0) {
    dibba_http_respond_error(q->req, 404, "unknown schedule");
    run_free(q);
    return;
  }
  json_t *job = json_loadb(text, len, 0, NULL);
  json_t *route = json_object_get(job, "route");
  const char *task = json_string_value(json_object_get(job, "task"));
  if (json_is_true(json_object_get(job, "builtin"))) {
    dibba_http_respond_error(q->req, 409, "a built-in job runs inside dibba-beat and has no task to submit");
  } else if (task == NULL || !json_is_object(route)) {
    dibba_http_respond_error(q->req, 500, "malformed schedule in the store");
  } else {
    json_t *a = json_object_get(job, "args");
    char *args = json_is_object(a) ? json_dumps(a, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    char id[DIBBA_ID_LEN + 1], err[256];
    dibba_task_submit_t s = {
        .name = task,
        .host = json_string_value(json_object_get(route, "host")),
        .role = json_string_value(json_object_get(route, "role")),
        .args_json = args,
        .expires_ms = json_integer_value(json_object_get(job, "expires")) * 1000,
    };
    int rc = dibba_task_submit(q->s->r, q->s->prefix, &q->s->key, &s, run_submitted, q, id, err, sizeof err);
    free(args);
    json_decref(job);
    if (rc == 0)
      return; /* run_submitted answers */
    if (rc == -EINVAL || rc == -E2BIG)
      dibba_http_respond_422(q->req, "name", err, "value_error");
    else
      dibba_http_respond_error(q->req, 503, "task store unavailable");
    run_free(q);
    return;
  }
  json_decref(job);
  run_free(q);
}

static void h_run(dibba_http_req_t *req, void *data) {
  api_schedules_t *s = data;
  const char *name = dibba_http_req_param(req, "name");
  if (name == NULL || name[0] == '\0' || strlen(name) > NAME_MAX_LEN) {
    dibba_http_respond_error(req, 404, "unknown schedule");
    return;
  }
  run_t *q = dibba_xcalloc(1, sizeof *q);
  q->s = s;
  q->req = req;
  dibba_http_req_ref(req);
  if (dibba_redis_command(s->r, job_read, q, NULL, "HGET %sbeat:jobs %s", s->prefix, name) < 0) {
    dibba_http_respond_error(req, 503, "schedule store unavailable");
    run_free(q);
  }
}

/* ---- life cycle ---- */

int api_schedules_new(const dibba_config_t *cfg, dibba_redis_t *redis, dibba_http_router_t *router,
                      const uint8_t *routing_key, size_t keylen, api_schedules_t **out, char *err, size_t errlen) {
  const char *prefix;
  int rc;
  *out = NULL;
  if ((rc = dibba_config_str(cfg, "redis.prefix", "dibba:", &prefix, err, errlen)) < 0)
    return rc;
  api_schedules_t *s = dibba_xcalloc(1, sizeof *s);
  s->r = redis;
  s->prefix = dibba_xstrdup(prefix);
  if ((rc = dibba_task_key_init(&s->key, routing_key, keylen)) < 0) {
    dibba_error_set(err, errlen, rc, "task.routing_key: unusable");
    goto fail;
  }
  const dibba_http_route_t routes[] = {
      {.method = "GET",
       .pattern = "/v1/schedules",
       .handler = h_list,
       .data = s,
       .role = DIBBA_ROLE_VIEWER,
       .summary = "The beat jobs (as published by dibba-beat) with their next and last runs"},
      {.method = "POST",
       .pattern = "/v1/schedules/{name}/run",
       .handler = h_run,
       .data = s,
       .role = DIBBA_ROLE_OPERATOR,
       .summary = "Submit a beat job's task now: 202 {task_id}"},
  };
  for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
    if ((rc = dibba_http_router_add(router, &routes[i])) < 0) {
      dibba_error_set(err, errlen, rc, "route %s %s", routes[i].method, routes[i].pattern);
      goto fail;
    }
  *out = s;
  return 0;
fail:
  /* Routes already added point at s: a failed start stops the daemon before any request is served. */
  *out = s;
  return rc;
}

void api_schedules_free(api_schedules_t *s) {
  if (s == NULL)
    return;
  dibba_task_key_free(&s->key);
  free(s->prefix);
  free(s);
}
