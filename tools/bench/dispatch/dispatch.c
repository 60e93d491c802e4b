/* SPDX-License-Identifier: Apache-2.0 */
/* dibba-dispatch: submit tasks with lib/task's producer on libuv, and the end-to-end dispatch benchmark. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dibba/alloc.h"
#include "dibba/config.h"
#include "dibba/error.h"
#include "dibba/log.h"
#include "dibba/redis.h"
#include "dibba/task_queue.h"
#include "dibba/time.h"

typedef struct app_s {
  uv_loop_t loop;
  dibba_config_t cfg;
  dibba_task_key_t key;
  const char *prefix;
  dibba_redis_t *r;
  dibba_redis_sub_t *sub;
  dibba_task_submit_t s;
  long count, submitted, acked, done, window, inflight, low;
  int bench, failed, closing;
  /* submit: --rate paces submissions (tasks/s, 0: as fast as the window allows); --resubmit sends a task
   * whose outcome is unknown (lost reply, timeout, too few replicas) again with the same id until it is
   * created or found to exist, as an idempotent producer does */
  long rate, resubmits, existed, gave_up;
  int resubmit;
  uint64_t rate_t0;
  uv_timer_t pace;
  struct req_s *reqs;
  uint64_t *start_ns; /* per bench task, by index */
  char (*ids)[DIBBA_ID_LEN + 1];
  double *lat_ms;
  long nlat;
  uint64_t t0, t1;
} app_t;

/* One submitted task (submit mode): its index, for resubmits with the same id. */
typedef struct req_s {
  struct app_s *a;
  long i;
  int tries;
  uv_timer_t retry;
} req_t;

#define RESUBMIT_DELAY_MS 200
#define RESUBMIT_MAX 100

static void closed(dibba_redis_t *r, void *data) { (void)r, (void)data; }
static void sub_closed(dibba_redis_sub_t *s, void *data) { (void)s, (void)data; }

static void finish(app_t *a) {
  if (a->closing)
    return;
  a->closing = 1;
  dibba_redis_close(a->r, closed);
  if (a->rate > 0 && !a->bench)
    uv_close((uv_handle_t *)&a->pace, NULL);
  if (a->sub)
    dibba_redis_sub_close(a->sub, sub_closed);
}

static void submit_more(app_t *a);

static int submit_one(app_t *a, long i, req_t *q, char *err, size_t errlen);
static void resubmit_cb(uv_timer_t *h);

/* Outcome unknown: try again later with the same id (the submit script is idempotent by id). */
static int retry_later(req_t *q, int status) {
  app_t *a = q->a;
  if (!a->resubmit || q->tries >= RESUBMIT_MAX || a->closing)
    return 0;
  q->tries++;
  a->resubmits++;
  if (q->tries == 1 || q->tries % 10 == 0)
    fprintf(stderr, "submit %s: %s, resubmitting (try %d)\n", a->ids[q->i], dibba_redis_strerror(status), q->tries);
  uv_timer_start(&q->retry, resubmit_cb, RESUBMIT_DELAY_MS, 0);
  return 1;
}

static void submitted(int status, const char *id, void *data) {
  req_t *q = data;
  app_t *a = q->a;
  if (status < 0 && retry_later(q, status))
    return;
  a->acked++;
  if (status < 0) {
    fprintf(stderr, "submit %s: %s\n", id, dibba_redis_strerror(status));
    a->failed = 1;
    a->gave_up++;
  }
  if (status == 1)
    a->existed++;
  if (!a->bench) {
    if (a->resubmit)
      printf("%s %s\n", id, status == 0 ? "created" : status == 1 ? "existed" : "failed");
    else
      printf("%s\n", id);
    if (a->acked == a->count)
      finish(a);
    else if (!a->closing)
      submit_more(a);
  }
}

static void resubmit_cb(uv_timer_t *h) {
  req_t *q = h->data;
  char err[256];
  if (q->a->closing) {
    submitted(UV_ECANCELED, q->a->ids[q->i], q);
    return;
  }
  int rc = submit_one(q->a, q->i, q, err, sizeof err);
  if (rc < 0 && !retry_later(q, rc)) {
    fprintf(stderr, "submit: %s\n", err);
    submitted(rc, q->a->ids[q->i], q);
  }
}

static int submit_one(app_t *a, long i, req_t *q, char *err, size_t errlen) {
  dibba_task_submit_t s = a->s;
  if (q->tries > 0)
    s.id = a->ids[i]; /* the same id again */
  return dibba_task_submit(a->r, a->prefix, &a->key, &s, submitted, q, a->ids[i], err, errlen);
}

static void bench_submitted(int status, const char *id, void *data) {
  app_t *a = data;
  a->acked++;
  if (status < 0) {
    fprintf(stderr, "submit %s: %s\n", id, dibba_redis_strerror(status));
    a->failed = 1;
  }
}

static void pace_cb(uv_timer_t *h) { submit_more(h->data); }

static void submit_more(app_t *a) {
  char err[256];
  long allowed = a->count;
  if (a->rate > 0 && !a->bench) {
    uint64_t now = uv_now(&a->loop);
    if (a->rate_t0 == 0)
      a->rate_t0 = now;
    allowed = (long)((now - a->rate_t0) * (uint64_t)a->rate / 1000) + 1;
  }
  while (a->submitted < a->count && a->submitted < allowed &&
         (a->bench ? a->inflight < a->window : a->submitted - a->acked < a->window)) {
    long i = a->submitted;
    int rc;
    if (a->bench) {
      a->start_ns[i] = uv_hrtime();
      a->inflight++;
      rc = dibba_task_submit(a->r, a->prefix, &a->key, &a->s, bench_submitted, a, a->ids[i], err, sizeof err);
    } else {
      req_t *q = &a->reqs[i];
      q->a = a;
      q->i = i;
      uv_timer_init(&a->loop, &q->retry);
      q->retry.data = q;
      rc = submit_one(a, i, q, err, sizeof err);
      if (rc < 0 && retry_later(q, rc)) {
        a->submitted++;
        continue;
      }
    }
    if (rc < 0) {
      fprintf(stderr, "submit: %s\n", err);
      a->failed = 1;
      finish(a);
      return;
    }
    a->submitted++;
  }
}

/* Bench: every task's events arrive on one pattern subscription; SUCCESS ends a round trip. The index of a
 * task is found by a linear search from the oldest one still in flight, which stays short with a window. */
static void on_event(dibba_redis_sub_t *s, const dibba_redis_sub_msg_t *m, void *data) {
  app_t *a = data;
  (void)s;
  if (m->kind != DIBBA_REDIS_SUB_MESSAGE)
    return;
  if (memmem(m->payload, m->payload_len, "\"SUCCESS\"", 9) == NULL &&
      memmem(m->payload, m->payload_len, "\"FAILURE\"", 9) == NULL)
    return;
  const char *p = memmem(m->payload, m->payload_len, "\"task_id\":\"", 11);
  if (p == NULL)
    return;
  p += 11;
  for (long i = a->low; i < a->submitted; i++) {
    if (a->start_ns[i] && memcmp(a->ids[i], p, DIBBA_ID_LEN) == 0) {
      a->lat_ms[a->nlat++] = (double)(uv_hrtime() - a->start_ns[i]) / 1e6;
      a->start_ns[i] = 0;
      a->inflight--;
      while (a->low < a->submitted && a->start_ns[a->low] == 0)
        a->low++;
      break;
    }
  }
  if (a->nlat == a->count) {
    a->t1 = uv_hrtime();
    finish(a);
    return;
  }
  submit_more(a);
}

static void on_ready(dibba_redis_sub_t *s, void *data) {
  app_t *a = data;
  (void)s;
  if (a->t0 == 0) {
    a->t0 = uv_hrtime();
    submit_more(a);
  }
}

static int cmp(const void *x, const void *y) {
  double a = *(const double *)x, b = *(const double *)y;
  return a < b ? -1 : a > b;
}

static void usage(void) {
  fprintf(stderr, "usage: dibba-dispatch --config CFG (submit|bench) (--host H|--role R) [--name N] [--args JSON]\n"
                  "       [--count N] [--window W] [--countdown MS] [--expires MS] [--max-retries N] [--id UUID]\n"
                  "       [--wait-replicas N] [--wait-timeout MS] [--rate TASKS_PER_S] [--resubmit]\n"
                  "  --wait-replicas: WAIT for N replicas after each submit (default: redis.wait_replicas)\n"
                  "  --resubmit: resubmit unknown outcomes with the same id; prints 'ID created|existed|failed'\n");
  exit(2);
}

int main(int argc, char **argv) {
  app_t a;
  char err[256], *secret = NULL;
  size_t slen = 0;
  const char *cfgpath = NULL, *mode = NULL;
  long wait_n = -1;
  int64_t cfg_wait = 0, cfg_wait_ms = 0;
  memset(&a, 0, sizeof a);
  a.count = 1;
  a.window = 256;
  a.s.name = "noop";
  for (int i = 1; i < argc; i++) {
    const char *o = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(o, "submit") == 0 || strcmp(o, "bench") == 0) {
      mode = o;
      continue;
    }
    if (strcmp(o, "--resubmit") == 0) {
      a.resubmit = 1;
      continue;
    }
    if (v == NULL)
      usage();
    i++;
    if (!strcmp(o, "--config"))
      cfgpath = v;
    else if (!strcmp(o, "--host"))
      a.s.host = v;
    else if (!strcmp(o, "--role"))
      a.s.role = v;
    else if (!strcmp(o, "--name"))
      a.s.name = v;
    else if (!strcmp(o, "--args"))
      a.s.args_json = v;
    else if (!strcmp(o, "--id"))
      a.s.id = v;
    else if (!strcmp(o, "--count"))
      a.count = atol(v);
    else if (!strcmp(o, "--window"))
      a.window = atol(v);
    else if (!strcmp(o, "--countdown"))
      a.s.countdown_ms = atoll(v);
    else if (!strcmp(o, "--expires"))
      a.s.expires_ms = atoll(v);
    else if (!strcmp(o, "--max-retries"))
      a.s.max_retries = (uint32_t)atol(v);
    else if (!strcmp(o, "--wait-replicas"))
      wait_n = atol(v);
    else if (!strcmp(o, "--wait-timeout"))
      a.s.wait_timeout_ms = (uint32_t)atol(v);
    else if (!strcmp(o, "--rate"))
      a.rate = atol(v);
    else
      usage();
  }
  if (mode == NULL || cfgpath == NULL || a.count < 1 || a.window < 1 || a.rate < 0 || wait_n > 64)
    usage();
  a.bench = strcmp(mode, "bench") == 0;
  if (dibba_config_load(&a.cfg, cfgpath, err, sizeof err) < 0 ||
      dibba_config_secret(&a.cfg, "task.routing_key", &secret, &slen, err, sizeof err) < 0 ||
      dibba_config_str(&a.cfg, "redis.prefix", "dibba:", &a.prefix, err, sizeof err) < 0 ||
      dibba_config_int(&a.cfg, "redis.wait_replicas", 0, 0, 64, &cfg_wait, err, sizeof err) < 0 ||
      dibba_config_int(&a.cfg, "redis.wait_timeout_ms", 1000, 1, 60000, &cfg_wait_ms, err, sizeof err) < 0) {
    fprintf(stderr, "dibba-dispatch: %s\n", err);
    return 1;
  }
  a.s.wait_replicas = (uint32_t)(wait_n >= 0 ? wait_n : cfg_wait);
  if (a.s.wait_timeout_ms == 0)
    a.s.wait_timeout_ms = (uint32_t)cfg_wait_ms;
  if (!a.bench && a.window == 256 && a.resubmit)
    a.window = 4096;
  dibba_log_open("error", NULL);
  dibba_task_key_init(&a.key, secret, slen);
  explicit_bzero(secret, slen);
  free(secret);
  uv_loop_init(&a.loop);
  a.ids = dibba_xcalloc((size_t)a.count, sizeof *a.ids);
  a.start_ns = dibba_xcalloc((size_t)a.count, sizeof *a.start_ns);
  a.lat_ms = dibba_xcalloc((size_t)a.count, sizeof *a.lat_ms);
  a.reqs = dibba_xcalloc((size_t)a.count, sizeof *a.reqs);
  dibba_redis_options_t ro;
  if (dibba_redis_options_from_config(&a.cfg, &ro, err, sizeof err) < 0) {
    fprintf(stderr, "dibba-dispatch: %s\n", err);
    return 1;
  }
  ro.queue_max = 1u << 20;
  ro.command_timeout_ms = 30000;
  if (dibba_redis_new(&a.loop, &ro, &a.r, err, sizeof err) < 0) {
    fprintf(stderr, "dibba-dispatch: %s\n", err);
    return 1;
  }
  if (a.bench) {
    char pat[512];
    dibba_redis_sub_options_t so = {.conn = ro, .on_message = on_event, .on_resubscribed = on_ready, .data = &a};
    dibba_redis_sub_new(&a.loop, &so, &a.sub, err, sizeof err);
    snprintf(pat, sizeof pat, "%stask:*:ev", a.prefix);
    dibba_redis_sub_psubscribe(a.sub, pat, strlen(pat));
  } else {
    if (a.rate > 0) {
      uv_timer_init(&a.loop, &a.pace);
      a.pace.data = &a;
      uv_timer_start(&a.pace, pace_cb, 5, 5);
    }
    submit_more(&a);
  }
  uv_run(&a.loop, UV_RUN_DEFAULT);
  /* The per-task retry timers (initialised as tasks were submitted) close last. */
  for (long i = 0; !a.bench && i < a.submitted; i++)
    if (a.reqs[i].a)
      uv_close((uv_handle_t *)&a.reqs[i].retry, NULL);
  uv_run(&a.loop, UV_RUN_DEFAULT);
  if (a.resubmit)
    fprintf(stderr, "{\"submitted\": %ld, \"acked\": %ld, \"existed\": %ld, \"resubmits\": %ld, \"gave_up\": %ld}\n",
            a.submitted, a.acked, a.existed, a.resubmits, a.gave_up);
  if (a.bench && a.nlat == a.count) {
    qsort(a.lat_ms, (size_t)a.nlat, sizeof *a.lat_ms, cmp);
    double secs = (double)(a.t1 - a.t0) / 1e9;
    printf("{\"tasks\": %ld, \"seconds\": %.3f, \"throughput\": %.1f, \"p50_ms\": %.3f, \"p99_ms\": %.3f}\n", a.count,
           secs, (double)a.count / secs, a.lat_ms[a.nlat / 2], a.lat_ms[(size_t)((double)a.nlat * 0.99)]);
  }
  int rc = uv_loop_close(&a.loop) == 0 && !a.failed ? 0 : 1;
  free(a.ids);
  free(a.start_ns);
  free(a.lat_ms);
  free(a.reqs);
  dibba_task_key_free(&a.key);
  dibba_config_free(&a.cfg);
  return rc;
}
