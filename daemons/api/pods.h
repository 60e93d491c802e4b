/* SPDX-License-Identifier: Apache-2.0 */
/* dibba-api's pod routes: /v1/pods (create, list, get, delete, logs, exec) and the seed's POST /create-pods. */
#ifndef DIBBA_API_PODS_H
#define DIBBA_API_PODS_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "dibba/config.h"
#include "dibba/http.h"
#include "dibba/redis.h"

typedef struct api_pods_s api_pods_t;

/* Register the pod routes on router. redis is borrowed and must outlive every request; routing_key (keylen
 * bytes) is copied. Returns 0 or < 0 (DIBBA_ECONFIG, -EINVAL, -EEXIST) with one line in err. */
int api_pods_new(uv_loop_t *loop, const dibba_config_t *cfg, dibba_redis_t *redis, dibba_http_router_t *router,
                 const uint8_t *routing_key, size_t keylen, api_pods_t **out, char *err, size_t errlen);
/* Release p once the HTTP server has drained: waits (timers, Redis calls) are cancelled, and p is freed by
 * the last callback still in flight. Safe with NULL; the caller forgets p. */
void api_pods_close(api_pods_t *p);

#endif
