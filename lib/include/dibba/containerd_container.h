/* SPDX-License-Identifier: Apache-2.0 */
/* Containers on containerd: run (image → snapshot → container → task), stop, wait and idempotent delete. */
#ifndef DIBBA_CONTAINERD_CONTAINER_H
#define DIBBA_CONTAINERD_CONTAINER_H

#include <stdint.h>

#include "dibba/containerd.h"
#include "dibba/oci.h"

#define DIBBA_CONTAINER_RUNTIME "io.containerd.runc.v2"
#define DIBBA_CONTAINER_SPEC_TYPE "types.containerd.io/opencontainers/runtime-spec/1/Spec"

typedef struct dibba_container_opts_s {
  const char *id;    /* container id; required */
  const char *ns;    /* NULL: the client's namespace */
  const char *image; /* image name in ns; required */
  const char *pod;   /* label dibba.io/pod (may be NULL) */
  /* Extra labels: n_labels key/value pairs, labels[2i] = key, labels[2i+1] = value. A key equal to one of the
   * default labels (dibba.io/namespace, dibba.io/container, dibba.io/pod) replaces it. Borrowed until the run
   * callback. */
  const char *const *labels;
  size_t n_labels;
  /* Process, resources, namespaces and mounts; id, ns and image_config are filled in by run. Its strings and
   * arrays are borrowed and must stay valid until the run callback. */
  dibba_oci_opts_t oci;
  /* Logs: stdout/stderr go through the binary:// driver logger (dibba-logger) into log_path (CRI format).
   * Both NULL: no logs (stdio discarded). */
  const char *logger;
  const char *log_path;
  uint64_t log_max_size; /* 0: no rotation */
  unsigned log_max_files;
} dibba_container_opts_t;

/* err 0 or negative; msg one line on error. pid is the task's pid on success. */
typedef void (*dibba_container_run_cb)(dibba_containerd_t *ctd, int err, const char *msg, uint32_t pid, void *data);
/* Exit of a task: status as containerd reports it (128+signal for signals); oom is 1 when the memory cgroup
 * recorded an OOM kill. */
typedef void (*dibba_container_exit_cb)(dibba_containerd_t *ctd, int err, const char *msg, uint32_t exit_status,
                                        int oom, void *data);
typedef void (*dibba_container_done_cb)(dibba_containerd_t *ctd, int err, const char *msg, void *data);

/* Run a container: resolve the image, build the spec (errors such as a too small memory limit are reported
 * before anything is created), remove a stale task/container/snapshot with the same id, prepare the rootfs
 * snapshot from the image's chain id, create the container (runc v2, labels dibba.io/pod, dibba.io/namespace), create
 * and start the task. On failure after creation, what was created is removed again. Returns 0 (cb runs once, later) or
 * -EINVAL without calling cb. */
int dibba_containerd_container_run(dibba_containerd_t *ctd, const dibba_container_opts_t *opts,
                                   dibba_container_run_cb cb, void *data);

/* Wait until the task has stopped (polls Tasks.Get, so it survives reconnects and missed events), up to
 * timeout_ms (0: no limit; then UV_ETIMEDOUT). -ENOENT if there is no task. */
int dibba_containerd_container_wait(dibba_containerd_t *ctd, const char *ns, const char *id, uint64_t timeout_ms,
                                    dibba_container_exit_cb cb, void *data);

/* Stop: SIGTERM, then SIGKILL after grace_ms, then wait for the exit. A task already stopped reports its exit.
 * Returns 0 or -EINVAL. */
int dibba_containerd_container_stop(dibba_containerd_t *ctd, const char *ns, const char *id, uint64_t grace_ms,
                                    dibba_container_exit_cb cb, void *data);

/* Delete task (killing it first), container and snapshot; each NotFound counts as done, so it is idempotent
 * and a retry finishes what an interrupted delete left. Returns 0 or -EINVAL. */
int dibba_containerd_container_delete(dibba_containerd_t *ctd, const char *ns, const char *id,
                                      dibba_container_done_cb cb, void *data);

#endif
