/* SPDX-License-Identifier: Apache-2.0 */
/* dibba-api's AWS routes (admin only): create and terminate EC2 worker instances, list a namespace's instances. */
#ifndef DIBBA_API_AWS_H
#define DIBBA_API_AWS_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "dibba/config.h"
#include "dibba/http.h"
#include "dibba/redis.h"

typedef struct api_aws_s api_aws_t;

/* Register POST /create-instances, POST /terminate-namespace, GET /v1/namespaces/{ns}/instances and
 * GET /aws/instances on router. redis is borrowed and must outlive every request; routing_key (keylen bytes)
 * is copied. Returns 0 or < 0 (DIBBA_ECONFIG, -EINVAL, -EEXIST) with one line in err. */
int api_aws_new(const dibba_config_t *cfg, dibba_redis_t *redis, dibba_http_router_t *router,
                const uint8_t *routing_key, size_t keylen, api_aws_t **out, char *err, size_t errlen);
/* Release a once the HTTP server has drained: freed at once, or by the last Redis callback still in flight
 * (they run, cancelled, when the Redis client closes). Safe with NULL; the caller forgets a. */
void api_aws_close(api_aws_t *a);

#endif
