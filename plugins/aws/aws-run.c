/* SPDX-License-Identifier: Apache-2.0 */
/* dibba-aws-run: load the aws plugin and run one of its tasks with the dibba_task_run driver (tests, operators).
 * Prints one JSON object per line: {"event":"progress",...} and finally {"event":"done","state":...}. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dibba/alloc.h"
#include "dibba/config.h"
#include "dibba/log.h"
#include "dibba/task.h"
#include "dibba/task_registry.h"

static void print_line(json_t *o) {
  char *s = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
  json_decref(o);
  if (s) {
    fputs(s, stdout);
    fputc('\n', stdout);
    fflush(stdout);
    free(s);
  }
}

static void on_progress(dibba_task_run_t *r, uint64_t cur, uint64_t total, const char *msg) {
  (void)r;
  print_line(json_pack("{s:s, s:I, s:I, s:s?}", "event", "progress", "current", (json_int_t)cur, "total",
                       (json_int_t)total, "message", msg));
}

static void on_done(dibba_task_run_t *r) { uv_stop(r->ctx.loop); }

static const char *state_name(int s) {
  switch (s) {
  case DIBBA_TASK_SUCCESS: return "SUCCESS";
  case DIBBA_TASK_FAILURE: return "FAILURE";
  case DIBBA_TASK_RETRY: return "RETRY";
  case DIBBA_TASK_REVOKED: return "REVOKED";
  default: return "UNKNOWN";
  }
}

static void usage(void) {
  fprintf(stderr, "usage: dibba-aws-run --plugin PATH [--config FILE] --task NAME --id TASK_ID [--args JSON]\n");
}

int main(int argc, char **argv) {
  const char *plugin = NULL, *config = NULL, *task = NULL, *id = NULL, *args = "{}";
  static const struct option opts[] = {
      {"plugin", required_argument, NULL, 'p'}, {"config", required_argument, NULL, 'c'},
      {"task", required_argument, NULL, 't'},   {"id", required_argument, NULL, 'i'},
      {"args", required_argument, NULL, 'a'},   {NULL, 0, NULL, 0}};
  int c;
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (c) {
    case 'p': plugin = optarg; break;
    case 'c': config = optarg; break;
    case 't': task = optarg; break;
    case 'i': id = optarg; break;
    case 'a': args = optarg; break;
    default: usage(); return 2;
    }
  }
  if (!plugin || !task || !id) {
    usage();
    return 2;
  }
  dibba_alloc_init();
  char err[512];
  int rc, exit_code = 1;
  dibba_config_t cfg = {0};
  if ((rc = dibba_config_load(&cfg, config, err, sizeof err)) < 0) {
    fprintf(stderr, "dibba-aws-run: %s\n", err);
    return 2;
  }
  const char *level = "info", *file = NULL;
  dibba_config_str(&cfg, "log.level", "info", &level, err, sizeof err);
  dibba_config_str(&cfg, "log.file", NULL, &file, err, sizeof err);
  dibba_log_open(level, file);

  uv_loop_t loop;
  uv_loop_init(&loop);
  dibba_task_registry_t reg;
  dibba_task_registry_init(&reg, &loop, "aws-run");
  if ((rc = dibba_plugin_load(&reg, plugin, cfg.root, err, sizeof err)) < 0) {
    fprintf(stderr, "dibba-aws-run: %s\n", err);
    goto out;
  }
  Dibba__V1__TaskEnvelope env = DIBBA__V1__TASK_ENVELOPE__INIT;
  env.id = (char *)id;
  env.name = (char *)task;
  env.args_case = DIBBA__V1__TASK_ENVELOPE__ARGS_ARGS_JSON;
  env.args_json = (char *)args;
  dibba_task_run_t run;
  if ((rc = dibba_task_run_start(&run, &reg, &env, NULL, on_done, NULL, err, sizeof err)) < 0) {
    fprintf(stderr, "dibba-aws-run: %s\n", err);
    goto out;
  }
  run.on_progress = on_progress;
  if (!run.done)
    uv_run(&loop, UV_RUN_DEFAULT);
  print_line(json_pack("{s:s, s:s, s:O?, s:s?, s:s?}", "event", "done", "state", state_name(run.state), "result",
                       run.result, "error_code", run.error_code, "error_message", run.error_message));
  exit_code = run.state == DIBBA_TASK_SUCCESS ? 0 : 1;
  dibba_task_run_free(&run);
out:
  dibba_task_registry_free(&reg);
  /* Everything the task opened is closed before it reports; a handle left here is a leak. */
  uv_run(&loop, UV_RUN_NOWAIT);
  if (uv_loop_close(&loop) != 0) {
    fprintf(stderr, "dibba-aws-run: handles left open on the loop\n");
    exit_code = 3;
  }
  dibba_config_free(&cfg);
  dibba_log_close();
  return exit_code;
}
