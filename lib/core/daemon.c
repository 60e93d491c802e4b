/* SPDX-License-Identifier: Apache-2.0 */
/* Shared daemon main: every daemon is one libuv loop that stops on SIGINT/SIGTERM with all handles closed. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dibba-config.h"
#include "dibba/alloc.h"
#include "dibba/daemon.h"
#include "dibba/log.h"

static int exit_status;

static void usage(const dibba_daemon_ops_t *ops, FILE *f) {
  fprintf(f,
          "Usage: %s [--config FILE] [OPTIONS]%s\n"
          "\n"
          "  -c, --config FILE   JSON configuration file (environment variables override it)\n"
          "  -V, --version       print the version and exit\n"
          "  -h, --help          print this help and exit\n",
          ops->name, ops->command ? " [COMMAND ...]" : "");
  if (ops->usage)
    fprintf(f, "\n%s", ops->usage);
}

static void close_signal(uv_signal_t *s) {
  if (!uv_is_closing((uv_handle_t *)s))
    uv_close((uv_handle_t *)s, NULL);
}

void dibba_daemon_shutdown(dibba_daemon_t *d, int exit_code) {
  if (exit_code > exit_status)
    exit_status = exit_code;
  if (d->stopping)
    return;
  d->stopping = 1;
  dibba_log_info(d->ops->name, NULL, "stopping");
  if (d->ops->stop)
    d->ops->stop(d);
  /* SIGINT/SIGTERM stay installed, unreferenced, so that a second one forces an exit while the loop drains. */
  uv_unref((uv_handle_t *)&d->sig_int);
  uv_unref((uv_handle_t *)&d->sig_term);
  close_signal(&d->sig_hup);
}

static void on_signal(uv_signal_t *s, int signum) {
  dibba_daemon_t *d = s->data;
  if (signum == SIGHUP) {
    char err[512] = "";
    if (d->ops->reload == NULL)
      return;
    dibba_log_reopen();
    if (d->ops->reload(d, err, sizeof err) < 0)
      dibba_log_error(d->ops->name, json_pack("{s:s}", "error", err), "reload failed; keeping the old state");
    else
      dibba_log_info(d->ops->name, NULL, "reloaded");
    return;
  }
  if (d->stopping) {
    dibba_log_warn(d->ops->name, NULL, "second signal: exiting without a graceful stop");
    _exit(1);
  }
  dibba_log_info(d->ops->name, json_pack("{s:i}", "signal", signum), "signal received");
  dibba_daemon_shutdown(d, 0);
}

static void walk_report(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h))
    dibba_log_error("core", json_pack("{s:s}", "type", uv_handle_type_name(h->type)), "handle left open at exit");
}

static int start_signal(dibba_daemon_t *d, uv_signal_t *s, int signum) {
  uv_signal_init(&d->loop, s);
  s->data = d;
  return uv_signal_start(s, on_signal, signum);
}

int dibba_daemon_main(const dibba_daemon_ops_t *ops, void *data, int argc, char **argv) {
  static const struct option opts[] = {
      {"config", required_argument, NULL, 'c'},
      {"version", no_argument, NULL, 'V'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  const char *config_path = NULL;
  dibba_daemon_t d;
  char err[1024] = "";
  int rc = 0, opt;

  memset(&d, 0, sizeof d);
  d.ops = ops;
  d.data = data;
  exit_status = 0;
  dibba_alloc_init();
  opterr = 0;
  optind = 1;
  while ((opt = getopt_long(argc, argv, "+c:Vh", opts, NULL)) != -1) {
    switch (opt) {
    case 'c': config_path = optarg; break;
    case 'V': printf("%s %s\n", ops->name, DIBBA_VERSION); return 0;
    case 'h': usage(ops, stdout); return 0;
    default:
      fprintf(stderr, "%s: unknown or incomplete option '%s' (see --help)\n", ops->name, argv[optind - 1]);
      return 2;
    }
  }
  if (optind < argc && ops->command == NULL) {
    fprintf(stderr, "%s: unexpected argument '%s' (see --help)\n", ops->name, argv[optind]);
    return 2;
  }

  if (dibba_config_load(&d.cfg, config_path, err, sizeof err) < 0) {
    fprintf(stderr, "%s: %s\n", ops->name, err);
    return 1;
  }
  const char *level = NULL, *file = NULL;
  if (dibba_config_str(&d.cfg, "log.level", "info", &level, err, sizeof err) < 0 ||
      dibba_config_str(&d.cfg, "log.file", NULL, &file, err, sizeof err) < 0) {
    fprintf(stderr, "%s: %s\n", ops->name, err);
    rc = 1;
    goto out_config;
  }
  int lr = dibba_log_open(level, file);
  if (lr < 0) {
    if (lr == -EINVAL)
      fprintf(stderr, "%s: config: log.level: unknown level \"%s\" (debug, info, warn, error)\n", ops->name, level);
    else
      fprintf(stderr, "%s: config: log.file: cannot open %s: %s\n", ops->name, file, strerror(-lr));
    rc = 1;
    goto out_config;
  }

  if (uv_loop_init(&d.loop) < 0) {
    fprintf(stderr, "%s: cannot create the event loop\n", ops->name);
    rc = 1;
    goto out_log;
  }
  if (optind < argc) {
    rc = ops->command(&d, argc - optind, argv + optind);
    goto out_loop;
  }

  signal(SIGPIPE, SIG_IGN);
  if (start_signal(&d, &d.sig_int, SIGINT) < 0 || start_signal(&d, &d.sig_term, SIGTERM) < 0 ||
      start_signal(&d, &d.sig_hup, SIGHUP) < 0) {
    fprintf(stderr, "%s: cannot install signal handlers\n", ops->name);
    rc = 1;
    goto out_signals;
  }
  if (ops->start(&d, err, sizeof err) < 0) {
    fprintf(stderr, "%s: %s\n", ops->name, err[0] ? err : "start failed");
    rc = 1;
    d.stopping = 1;
    if (ops->stop)
      ops->stop(&d);
    goto out_signals;
  }
  dibba_log_info(ops->name, json_pack("{s:s,s:s?}", "version", DIBBA_VERSION, "config", config_path), "started");
  uv_run(&d.loop, UV_RUN_DEFAULT);
  rc = exit_status;

out_signals:
  close_signal(&d.sig_int);
  close_signal(&d.sig_term);
  close_signal(&d.sig_hup);
out_loop:
  uv_run(&d.loop, UV_RUN_DEFAULT);
  if (uv_loop_close(&d.loop) != 0) {
    uv_walk(&d.loop, walk_report, NULL);
    if (rc == 0)
      rc = 1;
  } else if (rc == 0 && optind >= argc) {
    dibba_log_info(ops->name, NULL, "stopped cleanly");
  }
out_log:
  dibba_log_close();
out_config:
  dibba_config_free(&d.cfg);
  return rc;
}
