/* SPDX-License-Identifier: Apache-2.0 */
/* lib/cni internals: running a helper program with a timeout that kills its whole process group. */
#ifndef DIBBA_CNI_INT_H
#define DIBBA_CNI_INT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <uv.h>

typedef struct dibba__exec_result_s {
  int err;             /* 0, or UV_ETIMEDOUT (killed at the timeout), -E2BIG (stdout over the cap, killed),
                          or the uv_spawn error */
  int64_t exit_status; /* valid when err == 0 */
  int term_signal;
  pid_t pid;       /* also the process group id */
  const char *out; /* stdout, NUL-terminated (borrowed) */
  size_t out_len;
  const char *errout; /* stderr, NUL-terminated, capped (borrowed) */
  size_t err_len;
} dibba__exec_result_t;

typedef void (*dibba__exec_cb)(const dibba__exec_result_t *r, void *data);

/* Spawn file with argv and env (NULL-terminated; copied by libuv) as a session and process-group leader,
 * write input to its stdin and close it, capture stdout (cap out_cap) and stderr (cap err_cap, excess
 * dropped). At timeout_ms kill(-pgid, SIGKILL). cb runs once, on a later loop turn, after the process was
 * reaped and every handle closed. Returns 0 (cb will run) or the uv_spawn error (cb will not run). */
int dibba__exec(uv_loop_t *loop, const char *file, char **argv, char **env, const char *input, size_t input_len,
                uint64_t timeout_ms, size_t out_cap, size_t err_cap, dibba__exec_cb cb, void *data);

#endif
