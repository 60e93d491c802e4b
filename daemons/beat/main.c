/* SPDX-License-Identifier: Apache-2.0 */
/* dibba-beat: fires periodic jobs read from a directory of JSON files. */
#include <stdlib.h>
#include <string.h>

#include "dibba/config.h"
#include "dibba/daemon.h"
#include "dibba/log.h"

typedef struct beat_s {
  char *routing_key;
  size_t routing_key_len;
} beat_t;

static int beat_start(dibba_daemon_t *d, char *err, size_t errlen) {
  beat_t *b = d->data;
  return dibba_config_secret(&d->cfg, "task.routing_key", &b->routing_key, &b->routing_key_len, err, errlen);
}

static void beat_stop(dibba_daemon_t *d) {
  beat_t *b = d->data;
  if (b->routing_key) {
    explicit_bzero(b->routing_key, b->routing_key_len);
    free(b->routing_key);
    b->routing_key = NULL;
  }
}

static int beat_reload(dibba_daemon_t *d, char *err, size_t errlen) { return 0; }

int main(int argc, char **argv) {
  static const dibba_daemon_ops_t ops = {
      .name = "dibba-beat",
      .start = beat_start,
      .stop = beat_stop,
      .reload = beat_reload,
  };
  beat_t b;
  memset(&b, 0, sizeof b);
  return dibba_daemon_main(&ops, &b, argc, argv);
}
