/* SPDX-License-Identifier: Apache-2.0 */
/* Exec: run one more process in a running container and collect its exit code and (capped) output. */
#ifndef DIBBA_CONTAINERD_EXEC_H
#define DIBBA_CONTAINERD_EXEC_H

#include <stddef.h>
#include <stdint.h>

#include "dibba/containerd.h"

#define DIBBA_EXEC_PROCESS_TYPE "types.containerd.io/opencontainers/runtime-spec/1/Process"
/* Default cap on each of stdout and stderr; bytes past it are dropped and the stream is flagged truncated. */
#define DIBBA_EXEC_OUTPUT_MAX (1u << 20)

typedef struct dibba_exec_s dibba_exec_t;

typedef struct dibba_exec_opts_s {
  const char *id;      /* container id (its task must be running); required */
  const char *ns;      /* NULL: the client's namespace */
  const char *exec_id; /* NULL: a random "exec-<uuid>" */
  const char *const *args;
  size_t n_args;          /* >= 1 */
  const char *const *env; /* "K=V"; may be NULL */
  size_t n_env;
  const char *cwd; /* NULL: "/" */
  uint32_t uid, gid;
  uint64_t timeout_ms;   /* from the process start; then SIGKILL and timed_out. 0: no limit */
  const char *state_dir; /* absolute directory (created if missing) for the stdout/stderr FIFOs; required */
  size_t output_max;     /* per stream; 0: DIBBA_EXEC_OUTPUT_MAX */
} dibba_exec_opts_t;

/* Valid during the callback only. out/err are NUL-terminated (may contain other NULs: use the lengths). */
typedef struct dibba_exec_result_s {
  uint32_t exit_status; /* 128+signal when killed */
  int timed_out;
  const char *out;
  size_t out_len;
  int out_truncated;
  const char *err;
  size_t err_len;
  int err_truncated;
} dibba_exec_result_t;

/* err 0 (the process ran; res set, also when timed out), UV_ECANCELED (dibba_containerd_exec_cancel; res set),
 * -ENOENT (no such container or task), or another negative error with res NULL; msg is one line on error. */
typedef void (*dibba_exec_cb)(dibba_containerd_t *ctd, int err, const char *msg, const dibba_exec_result_t *res,
                              void *data);

/* Exec a process: make two FIFOs in state_dir and read them on the loop, Tasks.Exec (spec from
 * dibba_oci_process_build), Tasks.Start, Tasks.Wait (SIGKILL through Tasks.Kill on timeout or cancel), drain the
 * output, Tasks.DeleteProcess, remove the FIFOs. cb runs exactly once, later; everything is closed and removed
 * by then. *out (may be NULL) is valid until cb. Returns 0, or -EINVAL (bad options or process) without calling
 * cb. */
int dibba_containerd_exec(dibba_containerd_t *ctd, const dibba_exec_opts_t *opts, dibba_exec_cb cb, void *data,
                          dibba_exec_t **out);

/* Kill the process (SIGKILL) and finish with UV_ECANCELED. Returns 0 or -EALREADY (already finishing). */
int dibba_containerd_exec_cancel(dibba_exec_t *x);

#endif
