/* SPDX-License-Identifier: Apache-2.0 */
/* dibba-api's task routes: node data tasks, generic submit, results, revoke, node registry, WebSocket watch. */
#ifndef DIBBA_API_TASKS_H
#define DIBBA_API_TASKS_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "dibba/config.h"
#include "dibba/http.h"
#include "dibba/redis.h"

typedef struct api_tasks_s api_tasks_t;

/* Register the task routes on router. redis is borrowed (commands); a subscriber for task events is created
 * here. routing_key (keylen bytes) is copied. Returns 0 or < 0 with one line in err. */
int api_tasks_new(uv_loop_t *loop, const dibba_config_t *cfg, dibba_redis_t *redis, dibba_http_router_t *router,
                  const uint8_t *routing_key, size_t keylen, api_tasks_t **out, char *err, size_t errlen);
/* Close the subscriber and free t after every watcher is gone; cb (may be NULL) runs when done. The HTTP
 * server must be shut down first. Safe with NULL. */
void api_tasks_close(api_tasks_t *t, void (*cb)(void *data), void *data);

#endif
