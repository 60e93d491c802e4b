/* SPDX-License-Identifier: Apache-2.0 */
/* Runs one task through its handler: builds the args, implements the plugin-facing ops, records the outcome. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "dibba/alloc.h"
#include "dibba/error.h"
#include "dibba/log.h"
#include "dibba/pbjson.h"
#include "dibba/task.h"
#include "dibba/task_registry.h"

#define RUN(t) ((dibba_task_run_t *)(t)->host)

static void finish(dibba_task_run_t *r, int state) {
  r->done = 1;
  r->state = r->cancelled && state != DIBBA_TASK_SUCCESS ? DIBBA_TASK_REVOKED : state;
  r->cancel_cb = NULL;
  if (r->on_done)
    r->on_done(r);
}

static int op_progress(dibba_task_ctx_t *t, uint64_t cur, uint64_t total, const char *msg) {
  dibba_task_run_t *r = RUN(t);
  if (r->done)
    return -EALREADY;
  r->state = DIBBA_TASK_PROGRESS;
  if (r->on_progress)
    r->on_progress(r, cur, total, msg);
  return 0;
}

static void op_on_cancel(dibba_task_ctx_t *t, dibba_task_cancel_cb cb, void *data) {
  dibba_task_run_t *r = RUN(t);
  r->cancel_cb = cb;
  r->cancel_data = data;
}

static int op_complete(dibba_task_ctx_t *t, json_t *result) {
  dibba_task_run_t *r = RUN(t);
  if (r->done) {
    json_decref(result);
    return -EALREADY;
  }
  r->result = result ? result : json_null();
  finish(r, DIBBA_TASK_SUCCESS);
  return 0;
}

static int op_complete_msg(dibba_task_ctx_t *t, const ProtobufCMessage *result) {
  if (result == NULL)
    return -EINVAL;
  return op_complete(t, dibba_pbjson_from_message(result, 0));
}

static int op_fail(dibba_task_ctx_t *t, int err, const char *code, const char *msg) {
  dibba_task_run_t *r = RUN(t);
  if (r->done)
    return -EALREADY;
  r->error = err < 0 ? err : -EIO;
  r->error_code = dibba_xstrdup(code);
  r->error_message = dibba_xstrdup(msg ? msg : dibba_strerror(r->error));
  finish(r, DIBBA_TASK_FAILURE);
  return 0;
}

static int op_retry(dibba_task_ctx_t *t, int64_t delay_ms, const char *reason) {
  dibba_task_run_t *r = RUN(t);
  const Dibba__V1__TaskEnvelope *env = t->envelope;
  if (r->done)
    return -EALREADY;
  r->error = -EAGAIN;
  r->error_code = dibba_xstrdup("RETRY");
  r->error_message = dibba_xstrdup(reason ? reason : "retry requested");
  if (env->attempt >= env->max_retries) {
    finish(r, DIBBA_TASK_FAILURE);
    return 0;
  }
  r->retry_delay_ms = delay_ms;
  finish(r, DIBBA_TASK_RETRY);
  return 0;
}

static void op_log(dibba_task_ctx_t *t, int level, const char *msg) {
  if (level < DIBBA_LOG_DEBUG || level > DIBBA_LOG_ERROR)
    level = DIBBA_LOG_INFO;
  dibba_log((dibba_log_level_t)level, "task", json_pack("{s:s, s:s}", "task_id", t->id, "task", t->name), "%s",
            msg ? msg : "");
}

static const dibba_task_ops_t run_ops = {
    .progress = op_progress,
    .on_cancel = op_on_cancel,
    .complete = op_complete,
    .complete_msg = op_complete_msg,
    .failure = op_fail,
    .retry = op_retry,
    .log = op_log,
};

/* The envelope's args oneof member that carries messages of type `full_name`, or NULL. */
static const ProtobufCFieldDescriptor *args_field_for(const char *full_name) {
  const ProtobufCMessageDescriptor *d = &dibba__v1__task_envelope__descriptor;
  for (unsigned i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *f = &d->fields[i];
    if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) && f->type == PROTOBUF_C_TYPE_MESSAGE &&
        strcmp(((const ProtobufCMessageDescriptor *)f->descriptor)->name, full_name) == 0)
      return f;
  }
  return NULL;
}

static int build_args(dibba_task_run_t *r, const Dibba__V1__TaskEnvelope *env, char *err, size_t errlen) {
  const char *want = r->handler->args_type;
  const ProtobufCFieldDescriptor *f;
  dibba_pbjson_error_t pe = {0};
  int rc = 0;

  if (env->args_case == DIBBA__V1__TASK_ENVELOPE__ARGS__NOT_SET) {
    r->args = json_object();
    return 0;
  }
  if (env->args_case == DIBBA__V1__TASK_ENVELOPE__ARGS_ARGS_JSON) {
    json_error_t je;
    r->args = json_loads(env->args_json, JSON_REJECT_DUPLICATES, &je);
    if (r->args == NULL || !json_is_object(r->args))
      return dibba_error_set(err, errlen, -EINVAL, "args_json is not a JSON object");
    if (want == NULL)
      return 0;
    f = args_field_for(want);
    if (f == NULL)
      return dibba_error_set(err, errlen, -EINVAL, "handler args type %s is not an envelope args type", want);
    rc = dibba_pbjson_to_message(r->args, f->descriptor, NULL, &r->args_owned, &pe);
    if (rc < 0)
      dibba_error_set(err, errlen, rc, "args.%s: %s", pe.path, pe.msg);
    dibba_pbjson_error_clear(&pe);
    r->ctx.args_msg = r->args_owned;
    return rc;
  }
  const ProtobufCFieldDescriptor *member =
      protobuf_c_message_descriptor_get_field(&dibba__v1__task_envelope__descriptor, env->args_case);
  const ProtobufCMessage *m = *(ProtobufCMessage *const *)((const char *)env + member->offset);
  if (m == NULL)
    return dibba_error_set(err, errlen, -EINVAL, "args member %s is empty", member->name);
  if (want && strcmp(m->descriptor->name, want) != 0)
    return dibba_error_set(err, errlen, -EINVAL, "task %s takes %s, got %s", env->name, want, m->descriptor->name);
  r->ctx.args_msg = m;
  r->args = dibba_pbjson_from_message(m, 0);
  return 0;
}

int dibba_task_run_start(dibba_task_run_t *r, const dibba_task_registry_t *reg, const Dibba__V1__TaskEnvelope *env,
                         const json_t *config, dibba_task_run_cb on_done, void *data, char *err, size_t errlen) {
  int rc;
  memset(r, 0, sizeof *r);
  r->on_done = on_done;
  r->data = data;
  r->state = DIBBA_TASK_RECEIVED;
  r->handler = dibba_task_lookup(reg, env->name);
  if (r->handler == NULL)
    return dibba_error_set(err, errlen, -ENOENT, "no handler for task %s", env->name);
  if ((rc = build_args(r, env, err, errlen)) < 0)
    goto fail;
  r->ctx.abi_version = DIBBA_PLUGIN_ABI_VERSION;
  r->ctx.ops = &run_ops;
  r->ctx.envelope = env;
  r->ctx.id = env->id;
  r->ctx.name = env->name;
  r->ctx.args = r->args;
  r->ctx.loop = reg->loop;
  r->ctx.config = config;
  r->ctx.handler_data = r->handler->data;
  r->ctx.host = r;
  r->state = DIBBA_TASK_STARTED;
  rc = r->handler->run(&r->ctx);
  if (rc < 0 && !r->done) {
    /* The handler refused synchronously: report it like any failure. */
    op_fail(&r->ctx, rc, NULL, NULL);
  }
  return 0;
fail:
  dibba_task_run_free(r);
  return rc;
}

int dibba_task_run_cancel(dibba_task_run_t *r) {
  if (r->done)
    return -EALREADY;
  if (r->cancel_cb == NULL)
    return -ENOTSUP;
  r->cancelled = 1;
  dibba_task_cancel_cb cb = r->cancel_cb;
  r->cancel_cb = NULL;
  cb(&r->ctx, r->cancel_data);
  return 0;
}

void dibba_task_run_free(dibba_task_run_t *r) {
  json_decref(r->args);
  r->args = NULL;
  json_decref(r->result);
  r->result = NULL;
  dibba_pbjson_message_free(r->args_owned);
  r->args_owned = NULL;
  free(r->error_code);
  r->error_code = NULL;
  free(r->error_message);
  r->error_message = NULL;
}
