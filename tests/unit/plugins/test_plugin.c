/* SPDX-License-Identifier: Apache-2.0 */
/* A test task plugin: "test.echo" (answers its args at once) and "test.sleep" (a timer, progress, cancel). */
#include <errno.h>
#include <stdlib.h>

#include "dibba/plugin.h"

typedef struct sleep_s {
  uv_timer_t timer;
  dibba_task_ctx_t *t;
  int cancelled;
  int fail;
} sleep_t;

static int echo_run(dibba_task_ctx_t *t) {
  json_t *out = json_pack("{s:O, s:s, s:I}", "args", (json_t *)t->args, "id", t->id, "calls",
                          (json_int_t)++ * (int *)t->handler_data);
  return dibba_task_complete(t, out);
}

static void sleep_closed(uv_handle_t *h) {
  sleep_t *s = h->data;
  dibba_task_ctx_t *t = s->t;
  int cancelled = s->cancelled, fail = s->fail;
  free(s);
  if (cancelled)
    dibba_task_fail(t, -ECANCELED, "ECANCELED", "cancelled");
  else if (fail)
    dibba_task_fail(t, -EIO, "EIO", "asked to fail");
  else
    dibba_task_complete(t, json_pack("{s:b}", "slept", 1));
}

static void sleep_fired(uv_timer_t *timer) {
  sleep_t *s = timer->data;
  dibba_task_progress(s->t, 1, 1, "woke up");
  s->t->ops->on_cancel(s->t, NULL, NULL);
  uv_close((uv_handle_t *)&s->timer, sleep_closed);
}

static void sleep_cancel(dibba_task_ctx_t *t, void *data) {
  sleep_t *s = data;
  s->cancelled = 1;
  uv_timer_stop(&s->timer);
  uv_close((uv_handle_t *)&s->timer, sleep_closed);
}

static int sleep_run(dibba_task_ctx_t *t) {
  const Dibba__V1__SleepArgs *a = (const Dibba__V1__SleepArgs *)t->args_msg;
  if (a == NULL)
    return -EINVAL;
  sleep_t *s = calloc(1, sizeof *s);
  if (s == NULL)
    return -ENOMEM;
  s->t = t;
  s->fail = a->fail;
  uv_timer_init(t->loop, &s->timer);
  s->timer.data = s;
  uv_timer_start(&s->timer, sleep_fired, a->ms, 0);
  t->ops->on_cancel(t, sleep_cancel, s);
  return dibba_task_progress(t, 0, 1, "sleeping");
}

static int echo_calls;

static int test_init(dibba_plugin_ctx_t *ctx) {
  static const dibba_task_handler_t echo = {.name = "test.echo", .run = echo_run, .data = &echo_calls};
  static const dibba_task_handler_t sleeper = {
      .name = "test.sleep", .args_type = "dibba.v1.SleepArgs", .run = sleep_run};
  int r = ctx->ops->register_task(ctx, &echo);
  if (r == 0)
    r = ctx->ops->register_task(ctx, &sleeper);
#ifdef TEST_PLUGIN_DUP
  if (r == 0)
    r = ctx->ops->register_task(ctx, &echo);
#endif
  ctx->data = &echo_calls;
  return r;
}

static void test_fini(dibba_plugin_ctx_t *ctx) { *(int *)ctx->data = 0; }

DIBBA_PLUGIN_EXPORT const dibba_plugin_t *dibba_plugin_entry(void);

const dibba_plugin_t *dibba_plugin_entry(void) {
  static const dibba_plugin_t desc = {
#ifdef TEST_PLUGIN_BAD_ABI
      .abi_version = DIBBA_PLUGIN_ABI_VERSION + 41,
#else
      .abi_version = DIBBA_PLUGIN_ABI_VERSION,
#endif
#ifdef TEST_PLUGIN_DUP
      .name = "testdup",
#else
      .name = "test",
#endif
      .version = "0.0.1",
      .init = test_init,
      .fini = test_fini,
  };
  return &desc;
}
