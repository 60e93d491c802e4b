/* SPDX-License-Identifier: Apache-2.0 */
/* dibba-api: the HTTP + WebSocket control plane. */
#include <stdlib.h>
#include <string.h>

#include "dibba/auth.h"
#include "dibba/config.h"
#include "dibba/daemon.h"
#include "dibba/log.h"

typedef struct api_s {
  char *jwt_secret;
  size_t jwt_secret_len;
} api_t;

static int api_start(dibba_daemon_t *d, char *err, size_t errlen) {
  api_t *api = d->data;
  int r = dibba_config_secret(&d->cfg, "auth.jwt_secret", &api->jwt_secret, &api->jwt_secret_len, err, errlen);
  if (r < 0)
    return r;
  return 0;
}

static void api_stop(dibba_daemon_t *d) {
  api_t *api = d->data;
  if (api->jwt_secret) {
    explicit_bzero(api->jwt_secret, api->jwt_secret_len);
    free(api->jwt_secret);
    api->jwt_secret = NULL;
  }
}

static int api_command(dibba_daemon_t *d, int argc, char **argv) { return dibba_auth_command(&d->cfg, argc, argv); }

int main(int argc, char **argv) {
  static const dibba_daemon_ops_t ops = {
      .name = "dibba-api",
      .start = api_start,
      .stop = api_stop,
      .command = api_command,
  };
  api_t api;
  memset(&api, 0, sizeof api);
  return dibba_daemon_main(&ops, &api, argc, argv);
}
