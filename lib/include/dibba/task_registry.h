/* SPDX-License-Identifier: Apache-2.0 */
/* The host side of task plugins: the handler registry, the plugin loader and a driver that runs one task. */
#ifndef DIBBA_TASK_REGISTRY_H
#define DIBBA_TASK_REGISTRY_H

#include <stddef.h>

#include <jansson.h>
#include <uv.h>

#include "dibba/plugin.h"

typedef struct dibba__task_entry_s dibba__task_entry_t;
typedef struct dibba__plugin_s dibba__plugin_t;

typedef struct dibba_task_registry_s {
  uv_loop_t *loop;
  char *hostname;
  dibba__task_entry_t *tasks; /* registration order */
  size_t ntasks;
  dibba__plugin_t **plugins; /* load order */
  size_t nplugins;
} dibba_task_registry_t;

/* Initialise an empty registry for handlers that will run on loop. hostname is copied (may be NULL). */
void dibba_task_registry_init(dibba_task_registry_t *reg, uv_loop_t *loop, const char *hostname);
/* Call every plugin's fini (reverse load order), unload them and free everything. Safe to call twice. No task
 * may be running. */
void dibba_task_registry_free(dibba_task_registry_t *reg);

/* Register a built-in handler (not from a plugin). Returns 0, -EINVAL or -EEXIST. */
int dibba_task_register(dibba_task_registry_t *reg, const dibba_task_handler_t *h);
/* The handler for name, or NULL. Borrowed from the registry. */
const dibba_task_handler_t *dibba_task_lookup(const dibba_task_registry_t *reg, const char *name);

/* Load one plugin: uv_dlopen(path), find dibba_plugin_entry, check the descriptor and its ABI version, and run
 * init with config (borrowed; must outlive the registry). On failure nothing stays registered or loaded and
 * err gets one line. Returns 0, or -ENOENT (cannot open / no entry symbol), -EPROTO (ABI mismatch or bad
 * descriptor), -EEXIST / -EINVAL (a registration failed), or init's error. */
int dibba_plugin_load(dibba_task_registry_t *reg, const char *path, const json_t *config, char *err, size_t errlen);

/* ---- running one task (used by tests now, by the worker's consumer later) ---- */

typedef struct dibba_task_run_s dibba_task_run_t;
/* The task ended: r->state is SUCCESS, FAILURE, RETRY or REVOKED; r->result / r->error_* are set. May be called
 * from inside dibba_task_run_start. Do not free r from inside this callback. */
typedef void (*dibba_task_run_cb)(dibba_task_run_t *r);
/* A progress report (optional). */
typedef void (*dibba_task_progress_cb)(dibba_task_run_t *r, uint64_t current, uint64_t total, const char *msg);

struct dibba_task_run_s {
  dibba_task_ctx_t ctx; /* what the handler sees */
  const dibba_task_handler_t *handler;
  dibba_task_run_cb on_done;
  dibba_task_progress_cb on_progress;
  void *data;
  /* outcome */
  int done;
  int state;           /* dibba_task_state_t */
  json_t *result;      /* SUCCESS: owned */
  int error;           /* FAILURE/RETRY: negative code */
  char *error_code;    /* owned, may be NULL */
  char *error_message; /* owned, may be NULL */
  int64_t retry_delay_ms;
  /* internal */
  json_t *args;
  ProtobufCMessage *args_owned;
  dibba_task_cancel_cb cancel_cb;
  void *cancel_data;
  int cancelled;
};

/* Look up env->name, build the args (typed args rendered with pbjson; args_json parsed and, when the handler
 * names args_type, validated into that type) and call the handler's run. env and config are borrowed until
 * on_done. Returns 0 (on_done will be called, maybe already), -ENOENT (no handler), -EINVAL (args do not match;
 * err gets the reason) or -EALREADY. When it returns < 0, on_done is not called. */
int dibba_task_run_start(dibba_task_run_t *r, const dibba_task_registry_t *reg, const Dibba__V1__TaskEnvelope *env,
                         const json_t *config, dibba_task_run_cb on_done, void *data, char *err, size_t errlen);
/* Ask the handler to stop (its cancel callback). Returns 0, -EALREADY (ended) or -ENOTSUP (no callback). */
int dibba_task_run_cancel(dibba_task_run_t *r);
/* Free the outcome and args; safe to call twice. Only after on_done (or a failed start). */
void dibba_task_run_free(dibba_task_run_t *r);

#endif
