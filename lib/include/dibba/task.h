/* SPDX-License-Identifier: Apache-2.0 */
/* Tasks without Redis: MACed envelopes on the wire, Celery-style states, and retry backoff. */
#ifndef DIBBA_TASK_H
#define DIBBA_TASK_H

#include <stddef.h>
#include <stdint.h>

#include "dibba/route.h"
#include "task.pb-c.h"

/* ---- envelopes ---- */

#define DIBBA_ENVELOPE_MAX_BYTES (1024 * 1024) /* checked before MAC and unpack */
#define DIBBA_ENVELOPE_MAC_LEN 32
#define DIBBA_ENVELOPE_MAX_SKEW_MS (5 * 60 * 1000) /* issued_at may be this far ahead of the worker's clock */
#define DIBBA_ENVELOPE_FIELD "e"                   /* stream entry field: envelope bytes */
#define DIBBA_ENVELOPE_MAC_FIELD "m"               /* stream entry field: 32 raw MAC bytes */

/* One sealed envelope as it goes into XADD: fields "e" and "m". */
typedef struct dibba_envelope_wire_s {
  uint8_t *e; /* malloc'd protobuf bytes */
  size_t elen;
  uint8_t m[DIBBA_ENVELOPE_MAC_LEN]; /* HMAC-SHA256(mac_key, e) */
} dibba_envelope_wire_t;

/* Pack env and MAC its bytes. env must have id, name, route (a valid route) and expires_at_ms > 0.
 * out->e is owned by the caller (dibba_envelope_wire_free). Returns 0, -EINVAL, or -E2BIG (packed size over
 * DIBBA_ENVELOPE_MAX_BYTES). */
int dibba_envelope_seal(const dibba_task_key_t *k, const Dibba__V1__TaskEnvelope *env, dibba_envelope_wire_t *out);
/* Free out->e; safe to call twice. */
void dibba_envelope_wire_free(dibba_envelope_wire_t *w);

/* Verify and unpack one stream entry read from the stream of stream_route, at time now_ms (the injectable
 * clock). In order: size (elen 1..DIBBA_ENVELOPE_MAX_BYTES, mlen == 32), MAC (constant-time), unpack, shape
 * (id, name, route, expiry), route == stream_route, issued_at not beyond now + skew, expiry, attempts.
 * On success *out is the unpacked envelope (free with dibba_envelope_free).
 * Returns 0, -EINVAL (malformed/oversized), DIBBA_EFORGED (bad MAC), DIBBA_EREPLAY (valid envelope read from
 * another route's stream), DIBBA_EEXPIRED (now >= expires_at_ms), -ELOOP (attempt > max_retries). */
int dibba_envelope_open(const dibba_task_key_t *k, const void *e, size_t elen, const void *m, size_t mlen,
                        const char *stream_route, int64_t now_ms, Dibba__V1__TaskEnvelope **out);
/* Free an envelope from dibba_envelope_open (NULL is fine). */
void dibba_envelope_free(Dibba__V1__TaskEnvelope *env);

/* ---- states ---- */

/* Celery's state names; the numbers are dibba.v1.TaskState's. */
typedef enum {
  DIBBA_TASK_PENDING = DIBBA__V1__TASK_STATE__PENDING,
  DIBBA_TASK_RECEIVED = DIBBA__V1__TASK_STATE__RECEIVED,
  DIBBA_TASK_STARTED = DIBBA__V1__TASK_STATE__STARTED,
  DIBBA_TASK_PROGRESS = DIBBA__V1__TASK_STATE__PROGRESS,
  DIBBA_TASK_SUCCESS = DIBBA__V1__TASK_STATE__SUCCESS,
  DIBBA_TASK_FAILURE = DIBBA__V1__TASK_STATE__FAILURE,
  DIBBA_TASK_RETRY = DIBBA__V1__TASK_STATE__RETRY,
  DIBBA_TASK_REVOKED = DIBBA__V1__TASK_STATE__REVOKED,
} dibba_task_state_t;

/* "PENDING" ... "REVOKED"; "UNKNOWN" for anything else. */
const char *dibba_task_state_name(int state);
/* Parse an exact (upper-case) state name. Returns 0 or -EINVAL. */
int dibba_task_state_parse(const char *s, dibba_task_state_t *out);
/* 1 for SUCCESS, FAILURE and REVOKED. */
int dibba_task_state_is_final(int state);
/* 1 if a record in state `from` may move to `to`. Nothing leaves a final state. A redelivered task may go
 * back to RECEIVED/STARTED from RECEIVED, STARTED or PROGRESS (at-least-once delivery after a crash);
 * PROGRESS -> PROGRESS is allowed (one per progress report); other self-transitions are not. */
int dibba_task_state_can_transition(int from, int to);

/* Retry delay for attempt n (0-based): d = min(cap_ms, base_ms * 2^n), result in [d/2, d] using rnd for the
 * jitter ("equal jitter": spreads retries and never waits less than half). base_ms <= 0 gives 0. */
int64_t dibba_task_backoff_ms(uint32_t attempt, int64_t base_ms, int64_t cap_ms, uint64_t rnd);

#endif
