/* SPDX-License-Identifier: Apache-2.0 */
/* Task states (Celery's names), the transitions a record may take, and retry backoff. */
#include <errno.h>
#include <string.h>

#include "dibba/task.h"

static const char *const names[] = {"PENDING", "RECEIVED", "STARTED", "PROGRESS",
                                    "SUCCESS", "FAILURE",  "RETRY",   "REVOKED"};
#define NSTATES (sizeof names / sizeof names[0])

_Static_assert(DIBBA_TASK_REVOKED == 7 && NSTATES == 8, "state table matches dibba.v1.TaskState");

#define B(s) (1u << DIBBA_TASK_##s)
/* allowed[from] = set of `to` states */
static const unsigned allowed[NSTATES] = {
    [DIBBA_TASK_PENDING] = B(RECEIVED) | B(STARTED) | B(FAILURE) | B(RETRY) | B(REVOKED),
    [DIBBA_TASK_RECEIVED] = B(RECEIVED) | B(STARTED) | B(FAILURE) | B(RETRY) | B(REVOKED),
    [DIBBA_TASK_STARTED] = B(RECEIVED) | B(STARTED) | B(PROGRESS) | B(SUCCESS) | B(FAILURE) | B(RETRY) | B(REVOKED),
    [DIBBA_TASK_PROGRESS] = B(RECEIVED) | B(STARTED) | B(PROGRESS) | B(SUCCESS) | B(FAILURE) | B(RETRY) | B(REVOKED),
    [DIBBA_TASK_RETRY] = B(PENDING) | B(RECEIVED) | B(STARTED) | B(FAILURE) | B(REVOKED),
    [DIBBA_TASK_SUCCESS] = 0,
    [DIBBA_TASK_FAILURE] = 0,
    [DIBBA_TASK_REVOKED] = 0,
};
#undef B

const char *dibba_task_state_name(int state) {
  if (state < 0 || (unsigned)state >= NSTATES)
    return "UNKNOWN";
  return names[state];
}

int dibba_task_state_parse(const char *s, dibba_task_state_t *out) {
  if (s == NULL)
    return -EINVAL;
  for (unsigned i = 0; i < NSTATES; i++) {
    if (strcmp(s, names[i]) == 0) {
      *out = (dibba_task_state_t)i;
      return 0;
    }
  }
  return -EINVAL;
}

int dibba_task_state_is_final(int state) {
  return state == DIBBA_TASK_SUCCESS || state == DIBBA_TASK_FAILURE || state == DIBBA_TASK_REVOKED;
}

int dibba_task_state_can_transition(int from, int to) {
  if (from < 0 || (unsigned)from >= NSTATES || to < 0 || (unsigned)to >= NSTATES)
    return 0;
  return (allowed[from] >> to) & 1u;
}

int64_t dibba_task_backoff_ms(uint32_t attempt, int64_t base_ms, int64_t cap_ms, uint64_t rnd) {
  if (base_ms <= 0)
    return 0;
  if (cap_ms < base_ms)
    cap_ms = base_ms;
  int64_t d = base_ms;
  for (uint32_t i = 0; i < attempt && d < cap_ms; i++)
    d = d > cap_ms / 2 ? cap_ms : d * 2;
  if (d > cap_ms)
    d = cap_ms;
  int64_t half = d / 2;
  return half + (int64_t)(rnd % (uint64_t)(d - half + 1));
}
