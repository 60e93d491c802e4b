/* SPDX-License-Identifier: Apache-2.0 */
/* Private declarations shared by lib/pod/pod.c (lifecycle) and lib/pod/mgr.c (manager, events, reconcile). */
#ifndef DIBBA_POD_INT_H
#define DIBBA_POD_INT_H

#include <netinet/in.h>

#include "dibba/oci.h"
#include "dibba/pod.h"

enum { CS_WAITING, CS_RUNNING, CS_TERMINATED };
enum { SB_NONE, SB_STARTING, SB_READY, SB_DOWN, SB_FAILED };
enum { JOB_NONE, JOB_UP, JOB_RECREATE, JOB_DELETE, JOB_FAIL_CLEANUP };
enum {
  S_END,
  S_DIRS,
  S_NETNS,
  S_PAUSE,
  S_CNI_ADD,
  S_STOP_APPS,
  S_DEL_APPS,
  S_DEL_SANDBOX,
  S_CNI_DEL,
  S_NETNS_DEL,
  S_RM_DIRS
};

typedef struct pod_s pod_t;

typedef struct waiter_s {
  struct waiter_s *next;
  dibba_pod_create_cb ccb;
  dibba_pod_done_cb dcb;
  Dibba__V1__Pod *pending_create; /* a create queued behind a delete (owned) */
  void *data;
} waiter_t;

typedef struct ctr_term_s {
  int exit_code;
  const char *reason; /* static */
  int64_t started_ms, finished_ms;
} ctr_term_t;

/* What a container run borrows until its callback: kept by the container (or pod, for pause) until then. */
typedef struct runargs_s {
  dibba_oci_namespace_t nss[5];
  char ipc[64], uts[64], pidns[64];
  const char *labels[16];
  const char **env;
  char **envs;
  size_t n_env;
  dibba_oci_mount_t *mounts;
  char **srcs;
  size_t n_mounts;
} runargs_t;

typedef struct ctr_s {
  pod_t *pod;
  const Dibba__V1__Container *spec; /* NULL for an orphan's container */
  const char *name;
  char *id, *log_path;
  int state;
  const char *wait_reason; /* static */
  char msg[256];
  uint32_t pid;
  int oom;
  int64_t started_ms;
  uint64_t run_mono;
  ctr_term_t term, last;
  int has_last;
  int restart_count;
  unsigned backoff_n;
  uint64_t restart_at; /* loop time of the next start, 0: none */
  int busy;            /* a run is in flight */
  int ever_started;
  uint32_t early_pid, early_status;
  runargs_t *ra; /* while a run is in flight */
} ctr_t;

struct pod_s {
  dibba_pod_mgr_t *m;
  pod_t *next;
  Dibba__V1__Pod *pod; /* owned; NULL for an orphan being removed */
  char *ns, *name, *uid, *hash, *spec_json;
  char key[9];
  char *sandbox_id, *netns_name, *netns_path, *dir, *log_dir;
  int sb;
  uint32_t sb_pid;
  char ip[INET6_ADDRSTRLEN];
  int64_t start_ms;
  char reason[64], message[512];
  ctr_t *c;
  size_t n;
  uv_timer_t timer;
  runargs_t *pause_ra;
  uv_work_t work;
  int work_err;
  /* the job (one at a time) */
  int job;
  const int *steps;
  size_t si;
  int par;
  int job_err;
  char job_msg[DIBBA_CNI_ERR_MAX + 64];
  int retried;
  int job_waiting;
  int app_ops;
  int ops; /* operations in flight; the pod is freed when 0 after it was discarded */
  int deleting, discarded, kick_pending;
  uint64_t born; /* the manager's generation when it was created */
  waiter_t *create_waiters, *delete_waiters;
};

typedef struct deferred_s {
  struct deferred_s *next;
  Dibba__V1__Pod *pod;
  dibba_pod_create_cb cb;
  void *data;
} deferred_t;

typedef struct rec_s rec_t;

struct dibba_pod_mgr_s {
  uv_loop_t *loop;
  dibba_containerd_t *ctd;
  dibba_cni_t *cni;
  char *ns, *netns_dir, *cni_cache_dir, *pod_dir, *log_dir, *logger, *pause_image, *net_name, *ifname, *host_name;
  uint64_t backoff_base, backoff_max, reconcile_ms;
  int keep_logs;
  dibba_pod_status_cb status_cb;
  void *data;
  pod_t *pods;
  size_t live_pods;
  uv_timer_t reconcile_timer, sub_timer;
  int handles_open;
  dibba_grpc_call_t *sub;
  int ready;      /* containerd READY */
  int reconciled; /* the first reconcile finished: creates may run */
  rec_t *rec;     /* the reconcile running now */
  rec_t *rec_next;
  uint64_t gen;             /* bumped by every create and delete */
  uint64_t last_delete_gen; /* gen of the latest delete */
  deferred_t *deferred;
  int closing;
  dibba_pod_close_cb close_cb;
  void *close_data;
};

Dibba__V1__Pod *dibba__pod_copy(const Dibba__V1__Pod *pod);
pod_t *dibba__pod_find(dibba_pod_mgr_t *m, const char *ns, const char *name, int include_deleting);
pod_t *dibba__pod_find_key(dibba_pod_mgr_t *m, const char *key);
pod_t *dibba__pod_new(dibba_pod_mgr_t *m, Dibba__V1__Pod *pod, const char *uid, const char *key);
void dibba__pod_add_orphan_ctr(pod_t *p, const char *id);
json_t *dibba__pod_status_json(const pod_t *p);
Dibba__V1__Pod *dibba__pod_view(const pod_t *p);
void dibba__pod_start(pod_t *p);
void dibba__pod_kick(pod_t *p);
void dibba__pod_flush_waiters(pod_t *p);
/* Takes copy. Returns 0 or -EEXIST (a different spec under that name). */
int dibba__pod_create(dibba_pod_mgr_t *m, Dibba__V1__Pod *copy, dibba_pod_create_cb cb, void *data);
void dibba__pod_delete(pod_t *p, dibba_pod_done_cb cb, void *data);
int dibba__ctr_should_restart(const ctr_t *c);
void dibba__ctr_exited(ctr_t *c, uint32_t status, int oom, uint32_t pid, int64_t finished_ms);
void dibba__ctr_oom(ctr_t *c);
void dibba__pod_sandbox_died(pod_t *p);
void dibba__mgr_maybe_closed(dibba_pod_mgr_t *m);
/* Drop a pod from the manager without touching containerd (manager close). */
void dibba__pod_forget(pod_t *p);

#endif
