/* SPDX-License-Identifier: Apache-2.0 */
/* Wall-clock and monotonic time helpers. */
#ifndef DIBBA_TIME_H
#define DIBBA_TIME_H

#include <stddef.h>
#include <stdint.h>

/* Milliseconds since the Unix epoch (wall clock). */
int64_t dibba_now_ms(void);
/* Monotonic milliseconds, for timeouts and latencies. */
uint64_t dibba_mono_ms(void);
/* RFC 3339 UTC with milliseconds ("2026-01-02T03:04:05.678Z") of an epoch-ms time into out. */
void dibba_time_format_ms(int64_t ms, char *out, size_t len);

#endif
