/* SPDX-License-Identifier: Apache-2.0 */
/* The task handler registry and the plugin loader (uv_dlopen, ABI check, init/fini). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dibba/alloc.h"
#include "dibba/error.h"
#include "dibba/log.h"
#include "dibba/task_registry.h"

struct dibba__task_entry_s {
  dibba_task_handler_t h; /* name and args_type are owned copies */
  dibba__plugin_t *owner; /* NULL for built-ins */
};

struct dibba__plugin_s {
  uv_lib_t lib;
  dibba_plugin_ctx_t ctx;
  const dibba_plugin_t *desc;
  dibba_task_registry_t *reg;
  char *path;
  int register_failed;
};

static int valid_name(const char *s, size_t max, int allow_dot) {
  size_t n = s ? strnlen(s, max + 1) : 0;
  if (n == 0 || n > max)
    return 0;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-' || (allow_dot && c == '.')))
      return 0;
  }
  return 1;
}

void dibba_task_registry_init(dibba_task_registry_t *reg, uv_loop_t *loop, const char *hostname) {
  memset(reg, 0, sizeof *reg);
  reg->loop = loop;
  reg->hostname = dibba_xstrdup(hostname);
}

static void drop_tasks_of(dibba_task_registry_t *reg, dibba__plugin_t *owner) {
  size_t o = 0;
  for (size_t i = 0; i < reg->ntasks; i++) {
    if (reg->tasks[i].owner == owner) {
      free((char *)reg->tasks[i].h.name);
      free((char *)reg->tasks[i].h.args_type);
    } else {
      reg->tasks[o++] = reg->tasks[i];
    }
  }
  reg->ntasks = o;
}

static void plugin_free(dibba__plugin_t *p) {
  uv_dlclose(&p->lib);
  free(p->path);
  free(p);
}

void dibba_task_registry_free(dibba_task_registry_t *reg) {
  for (size_t i = reg->nplugins; i > 0; i--) {
    dibba__plugin_t *p = reg->plugins[i - 1];
    if (p->desc->fini)
      p->desc->fini(&p->ctx);
    drop_tasks_of(reg, p);
    plugin_free(p);
  }
  drop_tasks_of(reg, NULL);
  free(reg->plugins);
  free(reg->tasks);
  free(reg->hostname);
  reg->plugins = NULL;
  reg->nplugins = 0;
  reg->tasks = NULL;
  reg->ntasks = 0;
  reg->hostname = NULL;
}

const dibba_task_handler_t *dibba_task_lookup(const dibba_task_registry_t *reg, const char *name) {
  if (name == NULL)
    return NULL;
  for (size_t i = 0; i < reg->ntasks; i++)
    if (strcmp(reg->tasks[i].h.name, name) == 0)
      return &reg->tasks[i].h;
  return NULL;
}

static int add_task(dibba_task_registry_t *reg, const dibba_task_handler_t *h, dibba__plugin_t *owner) {
  if (h == NULL || h->run == NULL || !valid_name(h->name, DIBBA_TASK_NAME_MAX, 1))
    return -EINVAL;
  if (h->args_type && strnlen(h->args_type, 256) == 256)
    return -EINVAL;
  if (dibba_task_lookup(reg, h->name))
    return -EEXIST;
  /* Entries are copied by value; lookups hand out pointers, so no registration may happen while tasks run. */
  reg->tasks = dibba_xreallocarray(reg->tasks, reg->ntasks + 1, sizeof *reg->tasks);
  dibba__task_entry_t *e = &reg->tasks[reg->ntasks++];
  e->h = *h;
  e->h.name = dibba_xstrdup(h->name);
  e->h.args_type = dibba_xstrdup(h->args_type);
  e->owner = owner;
  return 0;
}

int dibba_task_register(dibba_task_registry_t *reg, const dibba_task_handler_t *h) { return add_task(reg, h, NULL); }

static int host_register(dibba_plugin_ctx_t *ctx, const dibba_task_handler_t *h) {
  dibba__plugin_t *p = ctx->host;
  int r = add_task(p->reg, h, p);
  if (r < 0) {
    p->register_failed = r;
    dibba_log_error("task", json_pack("{s:s, s:s}", "plugin", p->desc->name, "task", h && h->name ? h->name : "?"),
                    "plugin task registration failed: %s", r == -EEXIST ? "duplicate task name" : "invalid handler");
  }
  return r;
}

static void host_log(dibba_plugin_ctx_t *ctx, int level, const char *msg) {
  dibba__plugin_t *p = ctx->host;
  if (level < DIBBA_LOG_DEBUG || level > DIBBA_LOG_ERROR)
    level = DIBBA_LOG_INFO;
  dibba_log((dibba_log_level_t)level, "plugin", json_pack("{s:s}", "plugin", p->desc->name), "%s", msg ? msg : "");
}

static const dibba_plugin_host_ops_t host_ops = {
    .register_task = host_register,
    .log = host_log,
};

int dibba_plugin_load(dibba_task_registry_t *reg, const char *path, const json_t *config, char *err, size_t errlen) {
  dibba__plugin_t *p = dibba_xcalloc(1, sizeof *p);
  dibba_plugin_entry_fn entry = NULL;
  int r;

  p->reg = reg;
  p->path = dibba_xstrdup(path);
  if (uv_dlopen(path, &p->lib) != 0) {
    r = dibba_error_set(err, errlen, -ENOENT, "plugin %s: cannot load: %s", path, uv_dlerror(&p->lib));
    goto fail;
  }
  if (uv_dlsym(&p->lib, DIBBA_PLUGIN_ENTRY_SYMBOL, (void **)&entry) != 0 || entry == NULL) {
    r = dibba_error_set(err, errlen, -ENOENT, "plugin %s: no %s symbol: %s", path, DIBBA_PLUGIN_ENTRY_SYMBOL,
                        uv_dlerror(&p->lib));
    goto fail;
  }
  p->desc = entry();
  if (p->desc == NULL) {
    r = dibba_error_set(err, errlen, -EPROTO, "plugin %s: %s returned NULL", path, DIBBA_PLUGIN_ENTRY_SYMBOL);
    goto fail;
  }
  if (p->desc->abi_version != DIBBA_PLUGIN_ABI_VERSION) {
    r = dibba_error_set(err, errlen, -EPROTO, "plugin %s: ABI version %u, this host speaks %u; rebuild the plugin",
                        path, p->desc->abi_version, DIBBA_PLUGIN_ABI_VERSION);
    goto fail;
  }
  if (!valid_name(p->desc->name, 64, 0) || p->desc->init == NULL) {
    r = dibba_error_set(err, errlen, -EPROTO, "plugin %s: descriptor needs a name ([a-z0-9_-]{1,64}) and init", path);
    goto fail;
  }
  for (size_t i = 0; i < reg->nplugins; i++) {
    if (strcmp(reg->plugins[i]->desc->name, p->desc->name) == 0) {
      r = dibba_error_set(err, errlen, -EEXIST, "plugin %s: a plugin named %s is already loaded", path, p->desc->name);
      goto fail;
    }
  }
  p->ctx.abi_version = DIBBA_PLUGIN_ABI_VERSION;
  p->ctx.ops = &host_ops;
  p->ctx.loop = reg->loop;
  p->ctx.config = config;
  p->ctx.hostname = reg->hostname;
  p->ctx.host = p;
  r = p->desc->init(&p->ctx);
  if (r == 0 && p->register_failed)
    r = p->register_failed;
  if (r < 0) {
    dibba_error_set(err, errlen, r, "plugin %s (%s): init failed: %s", path, p->desc->name,
                    r == -EEXIST ? "duplicate task name" : dibba_strerror(r));
    /* init failed: fini is not called; the plugin must clean up after itself. */
    drop_tasks_of(reg, p);
    goto fail;
  }
  reg->plugins = dibba_xreallocarray(reg->plugins, reg->nplugins + 1, sizeof *reg->plugins);
  reg->plugins[reg->nplugins++] = p;
  dibba_log_info("task",
                 json_pack("{s:s, s:s, s:s}", "plugin", p->desc->name, "version",
                           p->desc->version ? p->desc->version : "", "path", path),
                 "plugin loaded");
  return 0;
fail:
  uv_dlclose(&p->lib); /* also frees the error text of a failed uv_dlopen */
  free(p->path);
  free(p);
  return r;
}
