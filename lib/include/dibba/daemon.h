/* SPDX-License-Identifier: Apache-2.0 */
/* The shared main of every Dibba daemon: flags, config, logging, signals and a clean loop shutdown. */
#ifndef DIBBA_DAEMON_H
#define DIBBA_DAEMON_H

#include <stddef.h>

#include <uv.h>

#include "dibba/config.h"

typedef struct dibba_daemon_s dibba_daemon_t;

typedef struct dibba_daemon_ops_s {
  const char *name;  /* "dibba-api" */
  const char *usage; /* extra lines for --help (options and sub-commands), may be NULL */
  /* Create the daemon's handles on d->loop. On failure write one line into err and return < 0. */
  int (*start)(dibba_daemon_t *d, char *err, size_t errlen);
  /* Begin a graceful stop: close every handle the daemon owns (asynchronously is fine). Called once. */
  void (*stop)(dibba_daemon_t *d);
  /* SIGHUP: reload what can be reloaded. NULL if the daemon has nothing to reload. Return < 0 to log a failure
   * and keep the old state. */
  int (*reload)(dibba_daemon_t *d, char *err, size_t errlen);
  /* A sub-command (first non-option argument), run instead of the daemon; NULL if there are none.
   * argv[0] is the sub-command name. Returns the process exit code. */
  int (*command)(dibba_daemon_t *d, int argc, char **argv);
} dibba_daemon_ops_t;

struct dibba_daemon_s {
  uv_loop_t loop;
  dibba_config_t cfg;
  const dibba_daemon_ops_t *ops;
  void *data;
  int stopping;
  uv_signal_t sig_int;
  uv_signal_t sig_term;
  uv_signal_t sig_hup;
};

/* Parse --config/--version/--help, load config and logging, run ops->start and the loop until a stop, then
 * close the loop and check that nothing leaked. Returns the process exit code: 0 after a clean stop, 1 on a
 * start or shutdown error, 2 on a usage error. data is stored in d->data. */
int dibba_daemon_main(const dibba_daemon_ops_t *ops, void *data, int argc, char **argv);

/* Ask the daemon to stop as SIGTERM would (for fatal runtime errors). exit_code is what main returns. */
void dibba_daemon_shutdown(dibba_daemon_t *d, int exit_code);

#endif
