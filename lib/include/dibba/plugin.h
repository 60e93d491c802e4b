/* SPDX-License-Identifier: Apache-2.0 */
/* The task plugin ABI: the only surface a plugin (plugins/node, pods, aws) sees. Versioned; the host checks it. */
#ifndef DIBBA_PLUGIN_H
#define DIBBA_PLUGIN_H

#include <stdint.h>

#include <jansson.h>
#include <protobuf-c/protobuf-c.h>
#include <uv.h>

#include "task.pb-c.h"

/* Bump on any change to the structs below (layout or meaning). The host refuses other versions. */
#define DIBBA_PLUGIN_ABI_VERSION 1u
/* A plugin exports `const dibba_plugin_t *dibba_plugin_entry(void)` with DIBBA_PLUGIN_EXPORT. */
#define DIBBA_PLUGIN_ENTRY_SYMBOL "dibba_plugin_entry"
#define DIBBA_PLUGIN_EXPORT __attribute__((visibility("default")))
#define DIBBA_TASK_NAME_MAX 64

typedef struct dibba_task_ctx_s dibba_task_ctx_t;
typedef struct dibba_plugin_ctx_s dibba_plugin_ctx_t;

/* Levels for the log functions (same numbers as dibba_log_level_t). */
enum { DIBBA_PLUGIN_LOG_DEBUG = 0, DIBBA_PLUGIN_LOG_INFO = 1, DIBBA_PLUGIN_LOG_WARN = 2, DIBBA_PLUGIN_LOG_ERROR = 3 };

/* Called (on the loop) when the task is revoked or times out. The handler stops its work, closes its handles
 * and then reports with failure() (the driver records REVOKED). */
typedef void (*dibba_task_cancel_cb)(dibba_task_ctx_t *t, void *data);

/* What the driver (the worker's consumer, or dibba_task_run) offers a running task. All calls are loop-thread
 * only. complete/complete_msg/failure/retry end the task: exactly one of them, once; later calls return -EALREADY.
 * The driver may report the end synchronously, so a handler must not touch t after ending it. */
typedef struct dibba_task_ops_s {
  /* Report progress (state PROGRESS). msg may be NULL. Returns 0 or -EALREADY. */
  int (*progress)(dibba_task_ctx_t *t, uint64_t current, uint64_t total, const char *msg);
  /* Set (or clear with cb NULL) the cancel callback. */
  void (*on_cancel)(dibba_task_ctx_t *t, dibba_task_cancel_cb cb, void *data);
  /* SUCCESS with a JSON result (reference stolen; NULL means null). */
  int (*complete)(dibba_task_ctx_t *t, json_t *result);
  /* SUCCESS with a typed result (a TaskResult oneof member type, e.g. dibba.v1.PodStatus); copied. */
  int (*complete_msg)(dibba_task_ctx_t *t, const ProtobufCMessage *result);
  /* FAILURE. err is a negative errno, UV_E... or DIBBA_E... code; code ("ENOENT") and msg may be NULL. */
  int (*failure)(dibba_task_ctx_t *t, int err, const char *code, const char *msg);
  /* RETRY after delay_ms (< 0: the driver's backoff). The driver turns it into FAILURE past max_retries. */
  int (*retry)(dibba_task_ctx_t *t, int64_t delay_ms, const char *reason);
  /* One log line tagged with the task id and name. */
  void (*log)(dibba_task_ctx_t *t, int level, const char *msg);
} dibba_task_ops_t;

/* One running task. Everything is borrowed from the driver and valid until the task ends. */
struct dibba_task_ctx_s {
  uint32_t abi_version;
  const dibba_task_ops_t *ops;
  const Dibba__V1__TaskEnvelope *envelope;
  const char *id;
  const char *name;
  const json_t *args;               /* args as a JSON object ({} when there are none) */
  const ProtobufCMessage *args_msg; /* typed args (type named by the handler's args_type), or NULL */
  uv_loop_t *loop;
  const json_t *config; /* the plugin's config subtree, or NULL */
  void *handler_data;   /* dibba_task_handler_t.data */
  void *data;           /* the handler's per-task state */
  void *host;           /* private to the driver */
};

/* A task handler, registered by name from a plugin's init. The registry copies the struct and strings. */
typedef struct dibba_task_handler_s {
  const char *name;      /* [a-z0-9_.-]{1,64}, unique across all plugins */
  const char *args_type; /* full proto name of the args ("dibba.v1.Pod"), or NULL for free JSON args. When set,
                            the driver validates the args into that type (args_json is converted too) */
  /* Start the task. Return 0 and end it later through t->ops, or return < 0 (without ending it) to fail it. */
  int (*run)(dibba_task_ctx_t *t);
  void *data;
  uint32_t timeout_ms; /* 0: the driver's default */
} dibba_task_handler_t;

/* What the host offers a plugin during init. */
typedef struct dibba_plugin_host_ops_s {
  /* Register a handler. Returns 0, -EINVAL (bad name/run) or -EEXIST (name taken). Any failure also makes
   * the load fail, even if init ignores it. */
  int (*register_task)(dibba_plugin_ctx_t *p, const dibba_task_handler_t *h);
  void (*log)(dibba_plugin_ctx_t *p, int level, const char *msg);
} dibba_plugin_host_ops_t;

struct dibba_plugin_ctx_s {
  uint32_t abi_version;
  const dibba_plugin_host_ops_t *ops;
  uv_loop_t *loop;
  /* dibba-worker: "plugins.<name>" of the daemon config, plus the daemon's "<name>" and "redis" sections when
   * "plugins.<name>" does not set those keys (the aws plugin reads aws.* and redis.*). Other hosts (dibba-aws-run)
   * may pass the whole config. May be NULL; borrowed for the plugin's life. */
  const json_t *config;
  const char *hostname;
  void *data; /* the plugin's state: set by init, seen again by fini */
  void *host; /* private */
};

/* The descriptor dibba_plugin_entry returns (static storage in the plugin). */
typedef struct dibba_plugin_s {
  uint32_t abi_version; /* DIBBA_PLUGIN_ABI_VERSION */
  const char *name;     /* [a-z0-9_-]{1,64} */
  const char *version;
  /* Register handlers. Return 0 or a negative error (the load fails and fini is not called). */
  int (*init)(dibba_plugin_ctx_t *ctx);
  /* Release the plugin's state; called once at unload after a successful init. May be NULL. */
  void (*fini)(dibba_plugin_ctx_t *ctx);
} dibba_plugin_t;

typedef const dibba_plugin_t *(*dibba_plugin_entry_fn)(void);

/* Short-hands for handlers. */
static inline int dibba_task_progress(dibba_task_ctx_t *t, uint64_t cur, uint64_t total, const char *msg) {
  return t->ops->progress(t, cur, total, msg);
}
static inline int dibba_task_complete(dibba_task_ctx_t *t, json_t *result) { return t->ops->complete(t, result); }
static inline int dibba_task_fail(dibba_task_ctx_t *t, int err, const char *code, const char *msg) {
  return t->ops->failure(t, err, code, msg);
}

#endif
