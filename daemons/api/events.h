/* SPDX-License-Identifier: Apache-2.0 */
/* dibba-api's live event stream for dashboards: WebSocket GET /v1/events, task events from one shared
 * PSUBSCRIBE, fanned out to every connected client with a server-side state filter. */
#ifndef DIBBA_API_EVENTS_H
#define DIBBA_API_EVENTS_H

#include <uv.h>

#include "dibba/buf.h"
#include "dibba/config.h"
#include "dibba/http.h"
#include "dibba/redis.h"

typedef struct api_events_s api_events_t;

/* Register GET /v1/events (viewer) on router and create the subscriber (its own Redis connection; the pattern
 * <prefix>task:*:ev is subscribed while at least one client is connected). redis is borrowed for the record
 * look-ups that add name, worker and target to each event. Config: api.events_max_clients (256),
 * api.events_queue_bytes (256 KiB: a client with more output queued is closed with 1008).
 * Returns 0 or < 0 with one line in err. */
int api_events_new(uv_loop_t *loop, const dibba_config_t *cfg, dibba_redis_t *redis, dibba_http_router_t *router,
                   api_events_t **out, char *err, size_t errlen);
/* Close the subscriber and free e once every look-up has answered; cb (may be NULL) runs then, possibly before
 * this returns. The HTTP server must be shut down first (no client left). Safe with NULL. */
void api_events_close(api_events_t *e, void (*cb)(void *data), void *data);
/* Prometheus lines: clients, events in and out, filtered, dropped, slow clients closed. */
void api_events_metrics(const api_events_t *e, dibba_buf_t *out);

#endif
