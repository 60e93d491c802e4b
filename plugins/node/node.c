/* SPDX-License-Identifier: Apache-2.0 */
/* The node plugin: get_worker_node_info, get_host_ip, get_usage (sampled on a uv timer), sleep and noop. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dibba/node.h"
#include "dibba/plugin.h"

#define USAGE_SAMPLE_MS 250 /* default CPU sampling interval of get_usage; args {"interval_ms": N} */

typedef struct node_plugin_s {
  dibba_plugin_ctx_t *ctx;
  char hostname[256];
} node_plugin_t;

static void tlog(dibba_task_ctx_t *t, int level, const char *what, const char *arg) {
  char buf[512];
  snprintf(buf, sizeof buf, "%s%s", what, arg);
  t->ops->log(t, level, buf);
}

static int run_info(dibba_task_ctx_t *t) {
  node_plugin_t *p = t->handler_data;
  Dibba__V1__NodeInfo *m = NULL;
  int rc = dibba_node_info(p->hostname, &m);
  if (rc < 0)
    return rc;
  rc = t->ops->complete_msg(t, &m->base);
  dibba_node_msg_free(m);
  return rc < 0 ? rc : 0;
}

static int run_ip(dibba_task_ctx_t *t) {
  node_plugin_t *p = t->handler_data;
  Dibba__V1__HostAddress *m = NULL;
  int rc = dibba_node_host_address(p->hostname, &m);
  if (rc < 0) {
    tlog(t, DIBBA_PLUGIN_LOG_WARN, "no host address: ", strerror(-rc));
    return dibba_task_fail(t, rc, "ENOENT", "no default route and no address");
  }
  if (m->host_ip == protobuf_c_empty_string)
    tlog(t, DIBBA_PLUGIN_LOG_WARN, "no default route: host_ip is empty", "");
  rc = t->ops->complete_msg(t, &m->base);
  dibba_node_msg_free(m);
  return 0;
}

/* ---- timers: get_usage and sleep share one shape ---- */

typedef struct timed_s {
  uv_timer_t timer;
  dibba_task_ctx_t *t;
  dibba_node_cpu_sample_t first;
  int usage, cancelled, fail;
  unsigned ms;
  node_plugin_t *p;
} timed_t;

static void timed_closed(uv_handle_t *h) {
  timed_t *s = h->data;
  dibba_task_ctx_t *t = s->t;
  int cancelled = s->cancelled;
  if (cancelled) {
    dibba_node_cpu_sample_free(&s->first);
    free(s);
    dibba_task_fail(t, -ECANCELED, "ECANCELED", "cancelled");
    return;
  }
  if (s->usage) {
    dibba_node_cpu_sample_t second;
    Dibba__V1__NodeUsage *m = NULL;
    int rc = dibba_node_cpu_sample(&second);
    if (rc == 0)
      rc = dibba_node_usage(&s->first, &second, &m);
    dibba_node_cpu_sample_free(&second);
    dibba_node_cpu_sample_free(&s->first);
    free(s);
    if (rc < 0) {
      dibba_task_fail(t, rc, "EIO", "cannot read usage");
      return;
    }
    t->ops->complete_msg(t, &m->base);
    dibba_node_msg_free(m);
    return;
  }
  int fail = s->fail;
  unsigned ms = s->ms;
  node_plugin_t *p = s->p;
  free(s);
  if (fail)
    dibba_task_fail(t, -EIO, "EIO", "asked to fail");
  else
    dibba_task_complete(t, json_pack("{s:i, s:s}", "slept_ms", (int)ms, "worker", p->hostname));
}

static void timed_fired(uv_timer_t *timer) {
  timed_t *s = timer->data;
  s->t->ops->on_cancel(s->t, NULL, NULL);
  if (!s->usage)
    dibba_task_progress(s->t, 1, 1, "woke up");
  uv_close((uv_handle_t *)&s->timer, timed_closed);
}

static void timed_cancel(dibba_task_ctx_t *t, void *data) {
  timed_t *s = data;
  (void)t;
  s->cancelled = 1;
  uv_timer_stop(&s->timer);
  uv_close((uv_handle_t *)&s->timer, timed_closed);
}

static int timed_start(dibba_task_ctx_t *t, unsigned ms, int usage, int fail) {
  timed_t *s = calloc(1, sizeof *s);
  if (s == NULL)
    abort();
  s->t = t;
  s->ms = ms;
  s->usage = usage;
  s->fail = fail;
  s->p = t->handler_data;
  if (usage) {
    int rc = dibba_node_cpu_sample(&s->first);
    if (rc < 0) {
      free(s);
      return rc;
    }
  }
  uv_timer_init(t->loop, &s->timer);
  s->timer.data = s;
  t->ops->on_cancel(t, timed_cancel, s);
  uv_timer_start(&s->timer, timed_fired, ms, 0);
  return 0;
}

static int run_usage(dibba_task_ctx_t *t) {
  json_int_t ms = json_integer_value(json_object_get(t->args, "interval_ms"));
  if (ms <= 0 || ms > 10000)
    ms = USAGE_SAMPLE_MS;
  return timed_start(t, (unsigned)ms, 1, 0);
}

static int run_sleep(dibba_task_ctx_t *t) {
  json_int_t ms = json_integer_value(json_object_get(t->args, "ms"));
  int fail = json_is_true(json_object_get(t->args, "fail"));
  if (ms < 0 || ms > 24 * 3600 * 1000)
    return -EINVAL;
  return timed_start(t, (unsigned)ms, 0, fail);
}

static int run_noop(dibba_task_ctx_t *t) {
  node_plugin_t *p = t->handler_data;
  return dibba_task_complete(t, json_pack("{s:s}", "worker", p->hostname));
}

static int node_init(dibba_plugin_ctx_t *ctx) {
  node_plugin_t *p = calloc(1, sizeof *p);
  if (p == NULL)
    abort();
  p->ctx = ctx;
  snprintf(p->hostname, sizeof p->hostname, "%s", ctx->hostname ? ctx->hostname : "");
  ctx->data = p;
  const dibba_task_handler_t hs[] = {
      {.name = "get_worker_node_info", .args_type = "dibba.v1.NodeQuery", .run = run_info, .data = p},
      {.name = "get_host_ip", .args_type = "dibba.v1.NodeQuery", .run = run_ip, .data = p},
      {.name = "get_usage", .run = run_usage, .data = p},
      {.name = "sleep", .args_type = "dibba.v1.SleepArgs", .run = run_sleep, .data = p},
      {.name = "noop", .run = run_noop, .data = p},
  };
  for (size_t i = 0; i < sizeof hs / sizeof hs[0]; i++) {
    int rc = ctx->ops->register_task(ctx, &hs[i]);
    if (rc < 0) {
      free(p);
      ctx->data = NULL;
      return rc;
    }
  }
  ctx->ops->log(ctx, DIBBA_PLUGIN_LOG_INFO, "node plugin ready");
  return 0;
}

static void node_fini(dibba_plugin_ctx_t *ctx) {
  free(ctx->data);
  ctx->data = NULL;
}

static const dibba_plugin_t node_plugin = {
    .abi_version = DIBBA_PLUGIN_ABI_VERSION,
    .name = "node",
    .version = "1.0.0",
    .init = node_init,
    .fini = node_fini,
};

DIBBA_PLUGIN_EXPORT const dibba_plugin_t *dibba_plugin_entry(void);
DIBBA_PLUGIN_EXPORT const dibba_plugin_t *dibba_plugin_entry(void) { return &node_plugin; }
