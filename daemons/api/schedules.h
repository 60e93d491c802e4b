/* SPDX-License-Identifier: Apache-2.0 */
/* dibba-api's schedule routes: the beat job set and its last runs (from Redis), and running a job now. */
#ifndef DIBBA_API_SCHEDULES_H
#define DIBBA_API_SCHEDULES_H

#include <stddef.h>
#include <stdint.h>

#include "dibba/config.h"
#include "dibba/http.h"
#include "dibba/redis.h"

typedef struct api_schedules_s api_schedules_t;

/* Register GET /v1/schedules (viewer) and POST /v1/schedules/{name}/run (operator) on router. redis is
 * borrowed; routing_key (keylen bytes) is copied. Returns 0 or < 0 with one line in err; *out is set either way
 * (routes added before a failure point at it), so always free it with api_schedules_free. */
int api_schedules_new(const dibba_config_t *cfg, dibba_redis_t *redis, dibba_http_router_t *router,
                      const uint8_t *routing_key, size_t keylen, api_schedules_t **out, char *err, size_t errlen);
/* Free s once the Redis client is closed (callbacks in flight use it). NULL is fine. */
void api_schedules_free(api_schedules_t *s);

#endif
