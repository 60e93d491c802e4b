/* SPDX-License-Identifier: Apache-2.0 */
/* Pods on one host: pause sandbox + app containers on containerd, pinned netns + CNI, restarts, reconcile. */
#ifndef DIBBA_POD_H
#define DIBBA_POD_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "dibba/cni.h"
#include "dibba/containerd.h"

#include "pod.pb-c.h"

#define DIBBA_POD_DEFAULT_PAUSE_IMAGE "registry.local/dibba/pause:1"
#define DIBBA_POD_DEFAULT_NETNS_DIR "/var/run/netns"
#define DIBBA_POD_BACKOFF_BASE_MS 10000u /* kubelet's crash-loop backoff: 10 s doubling ... */
#define DIBBA_POD_BACKOFF_MAX_MS 300000u /* ... up to 5 min */
#define DIBBA_POD_RECONCILE_MS 30000u    /* periodic reconcile */
#define DIBBA_POD_SPEC_LABEL_MAX 3800u   /* the normalized spec is kept as a sandbox label up to this size */

/* Labels on every container of a pod. */
#define DIBBA_POD_LABEL_UID "dibba.io/pod-uid"
#define DIBBA_POD_LABEL_NAMESPACE "dibba.io/pod-namespace"
#define DIBBA_POD_LABEL_NAME "dibba.io/pod-name"
#define DIBBA_POD_LABEL_CONTAINER "dibba.io/container"
#define DIBBA_POD_LABEL_ROLE "dibba.io/role" /* "sandbox" or "app" */
#define DIBBA_POD_LABEL_HASH "dibba.io/pod-spec-hash"
#define DIBBA_POD_LABEL_SPEC "dibba.io/pod-spec" /* sandbox only: the normalized pod JSON (if small) */

typedef struct dibba_pod_mgr_s dibba_pod_mgr_t;

/* A pod's status changed (phase, IP, a container's state). st is borrowed for the call. */
typedef void (*dibba_pod_status_cb)(dibba_pod_mgr_t *m, const char *ns, const char *name, const char *uid,
                                    const Dibba__V1__PodStatus *st, void *data);
/* create: err 0 with the status once the pod is Running (or already Succeeded/Failed), or err < 0 with msg
 * (sandbox could not be made, manager closing, conflict). st is borrowed for the call. */
typedef void (*dibba_pod_create_cb)(dibba_pod_mgr_t *m, int err, const char *msg, const Dibba__V1__PodStatus *st,
                                    void *data);
/* delete / reconcile: err 0 or negative, msg one line ("" on success). */
typedef void (*dibba_pod_done_cb)(dibba_pod_mgr_t *m, int err, const char *msg, void *data);
typedef void (*dibba_pod_close_cb)(dibba_pod_mgr_t *m, void *data);

typedef struct dibba_pod_mgr_opts_s {
  dibba_containerd_t *ctd;       /* borrowed; required; must outlive the manager's close callback */
  dibba_cni_t *cni;              /* borrowed; required; same */
  const char *ns;                /* containerd namespace; NULL: the client's */
  const char *netns_dir;         /* NULL: DIBBA_POD_DEFAULT_NETNS_DIR */
  const char *cni_state_dir;     /* the CNI runner's state_dir (cache in <it>/cni) for orphan sweeps; required */
  const char *pod_dir;           /* per-pod directories (emptyDir volumes): <pod_dir>/<uid>/; required, absolute */
  const char *log_dir;           /* <log_dir>/<ns>_<name>_<uid>/<container>.log; required, absolute */
  const char *logger;            /* dibba-logger binary; required, absolute */
  const char *pause_image;       /* NULL: DIBBA_POD_DEFAULT_PAUSE_IMAGE */
  const char *net_name;          /* default CNI network (NULL: the runner's) */
  const char *ifname;            /* default container interface (NULL: the runner's) */
  uint64_t backoff_base_ms;      /* 0: DIBBA_POD_BACKOFF_BASE_MS */
  uint64_t backoff_max_ms;       /* 0: DIBBA_POD_BACKOFF_MAX_MS */
  uint64_t reconcile_ms;         /* 0: DIBBA_POD_RECONCILE_MS; UINT64_MAX: no periodic reconcile */
  int keep_logs;                 /* delete keeps the pod's log directory */
  dibba_pod_status_cb status_cb; /* may be NULL */
  void *data;
} dibba_pod_mgr_opts_t;

/* Make a manager (strings copied). It subscribes to containerd's task events, and the first reconcile (adopt
 * every labelled pod whose spec label is readable) runs when dibba_pod_mgr_containerd_state reports READY;
 * creates wait for it. Returns 0 or -EINVAL (missing option). */
int dibba_pod_mgr_new(uv_loop_t *loop, const dibba_pod_mgr_opts_t *opts, dibba_pod_mgr_t **out);
/* Forget every pod without touching containerd, CNI or netns (as a worker that exits): pending creates get
 * UV_ECANCELED, in-flight operations finish first, then cb (may be NULL) runs and m is freed. Safe twice. */
void dibba_pod_mgr_close(dibba_pod_mgr_t *m, dibba_pod_close_cb cb, void *data);
/* Feed the containerd client's state: READY (re)subscribes to events and reconciles with the pods in memory. */
void dibba_pod_mgr_containerd_state(dibba_pod_mgr_t *m, dibba_grpc_state_t state);
void *dibba_pod_mgr_data(const dibba_pod_mgr_t *m);

/* Create a pod (pod is copied; namespace "" means "default"). An existing pod with the same normalized spec
 * is a no-op (cb gets its status when it is no longer Pending); a different spec fails with -EEXIST. Returns 0
 * (cb runs later, once) or at once -EINVAL (validation; reason in err) or -ECANCELED (closing). */
int dibba_pod_create(dibba_pod_mgr_t *m, const Dibba__V1__Pod *pod, dibba_pod_create_cb cb, void *data, char *err,
                     size_t errlen);
/* Delete a pod: stop app containers (grace from the spec, default 30 s), delete tasks, containers and
 * snapshots, the pause container, CNI DEL (also when the netns is gone), the netns, the pod directory and,
 * unless keep_logs, its logs. A pod that does not exist succeeds. Returns 0 (cb later) or -EINVAL. */
int dibba_pod_delete(dibba_pod_mgr_t *m, const char *ns, const char *name, dibba_pod_done_cb cb, void *data);
/* A copy of the pod with its current status (*out: free with protobuf_c_message_free_unpacked(.., NULL)).
 * Returns 0 or -ENOENT. */
int dibba_pod_get(dibba_pod_mgr_t *m, const char *ns, const char *name, Dibba__V1__Pod **out);
/* The pods (of ns, or all when ns is NULL/"") whose labels match selector ("k=v,k!=v,k,!k"; NULL/"": all).
 * *out as dibba_pod_get. Returns 0 or -EINVAL (bad selector). */
int dibba_pod_list(dibba_pod_mgr_t *m, const char *ns, const char *selector, Dibba__V1__PodList **out);
/* The containerd id and log path of a container of a pod (container NULL: the first). Strings malloc'd.
 * Returns 0 or -ENOENT. */
int dibba_pod_container(dibba_pod_mgr_t *m, const char *ns, const char *name, const char *container, char **id,
                        char **log_path);
/* Reconcile with containerd (labelled containers and tasks), the pinned netns and the CNI cache. desired
 * (n pods, copied) is the set that should exist; desired NULL means "the pods in memory plus every labelled
 * pod whose spec label is readable". Live pods are re-adopted, missed exits handled by policy, missing desired
 * pods created, everything else of ours removed. Returns 0 (cb, may be NULL, runs later) or -ECANCELED. */
int dibba_pod_reconcile(dibba_pod_mgr_t *m, const Dibba__V1__Pod *const *desired, size_t n, dibba_pod_done_cb cb,
                        void *data);

/* The manager's generation: a counter bumped by every create and delete. */
uint64_t dibba_pod_mgr_generation(const dibba_pod_mgr_t *m);
/* dibba_pod_reconcile with a desired set that was read at generation since (dibba_pod_mgr_generation before
 * the read was sent): pods created after since are kept even when desired lacks them or differs, and no
 * missing desired pod is created if any pod was deleted after since (the set predates those operations; the
 * next reconcile settles them). since UINT64_MAX: plain dibba_pod_reconcile. Same returns. */
int dibba_pod_reconcile_since(dibba_pod_mgr_t *m, const Dibba__V1__Pod *const *desired, size_t n, uint64_t since,
                              dibba_pod_done_cb cb, void *data);

/* ---- pure parts ---- */

/* Check a pod (names, containers, volumes, quantities, ports). Returns 0 or -EINVAL with a line in err. */
int dibba_pod_validate(const Dibba__V1__Pod *pod, char *err, size_t errlen);
/* The normalized JSON of a pod (metadata name/namespace/labels/annotations, spec, runtime; no uid, times or
 * status; namespace defaulted), malloc'd, and its hash (16 hex chars + NUL). */
char *dibba_pod_normalized(const Dibba__V1__Pod *pod, char hash[17]);
/* Kubernetes quantities: CPU ("500m", "1.5") in millicores, memory ("128Mi", "1G", "1000") in bytes.
 * Returns 0 or -EINVAL. */
int dibba_pod_parse_cpu(const char *q, int64_t *millis);
int dibba_pod_parse_memory(const char *q, int64_t *bytes);
/* 1 if the labels match the selector, 0 if not, -EINVAL for a bad selector. */
int dibba_pod_selector_match(const char *selector, Dibba__V1__ObjectMeta__LabelsEntry *const *labels, size_t n);
/* Restart delay before restart number n (0-based): base << n, capped at max. */
uint64_t dibba_pod_backoff_ms(uint64_t base, uint64_t max, unsigned n);

#endif
