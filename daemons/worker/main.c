/* SPDX-License-Identifier: Apache-2.0 */
/* dibba-worker: the host agent that consumes its route's tasks and runs pods on containerd. */
#include <stdlib.h>
#include <string.h>

#include "dibba/config.h"
#include "dibba/daemon.h"
#include "dibba/log.h"

typedef struct worker_s {
  char *routing_key;
  size_t routing_key_len;
} worker_t;

static int worker_start(dibba_daemon_t *d, char *err, size_t errlen) {
  worker_t *w = d->data;
  return dibba_config_secret(&d->cfg, "task.routing_key", &w->routing_key, &w->routing_key_len, err, errlen);
}

static void worker_stop(dibba_daemon_t *d) {
  worker_t *w = d->data;
  if (w->routing_key) {
    explicit_bzero(w->routing_key, w->routing_key_len);
    free(w->routing_key);
    w->routing_key = NULL;
  }
}

int main(int argc, char **argv) {
  static const dibba_daemon_ops_t ops = {
      .name = "dibba-worker",
      .start = worker_start,
      .stop = worker_stop,
  };
  worker_t w;
  memset(&w, 0, sizeof w);
  return dibba_daemon_main(&ops, &w, argc, argv);
}
