/* SPDX-License-Identifier: Apache-2.0 */
/* Container lifecycle on containerd: run from an image, wait, stop with a grace period, idempotent delete. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dibba/alloc.h"
#include "dibba/id.h"
#include "dibba/containerd_container.h"
#include "dibba/containerd_image.h"
#include "dibba/error.h"

#define POLL_MS 100
#define DELETE_RETRIES 100
/* A task create for an id whose earlier task create was cut (the caller was killed) can find that attempt's
 * shim state directory (bundle) still there: containerd finishes or unwinds the cut create on its own time, so
 * a delete + create of the same id in quick succession fails with "file exists". Delete and retry. */
#define CREATE_RETRIES 50
#define CREATE_RETRY_MS 200

static void close_free(uv_handle_t *h) { free(h->data); }

/* ---------------- delete ---------------- */

typedef struct del_s {
  dibba_containerd_t *ctd;
  uv_timer_t timer;
  char *ns, *id;
  int tries;
  dibba_container_done_cb cb;
  void *data;
  int err;
  char msg[256];
} del_t;

static void del_task(del_t *d);

static void del_end(del_t *d) {
  d->cb(d->ctd, d->err, d->err ? d->msg : "", d->data);
  free(d->ns);
  free(d->id);
  uv_close((uv_handle_t *)&d->timer, close_free);
}

static void del_fail(del_t *d, int err, const char *what, const dibba_grpc_status_t *st) {
  d->err = err;
  snprintf(d->msg, sizeof d->msg, "delete %s: %s: %s", d->id, what,
           st && st->message && *st->message ? st->message : dibba_strerror(err));
  del_end(d);
}

static void on_snap_removed(dibba_containerd_t *ctd, int err, const dibba_grpc_status_t *st,
                            Google__Protobuf__Empty *resp, void *data) {
  del_t *d = data;
  if (err < 0 && err != -ENOENT)
    del_fail(d, err, "snapshot remove", st);
  else
    del_end(d);
}

static void on_ctr_deleted(dibba_containerd_t *ctd, int err, const dibba_grpc_status_t *st,
                           Google__Protobuf__Empty *resp, void *data) {
  del_t *d = data;
  if (err < 0 && err != -ENOENT) {
    del_fail(d, err, "container delete", st);
    return;
  }
  Containerd__Services__Snapshots__V1__RemoveSnapshotRequest req =
      CONTAINERD__SERVICES__SNAPSHOTS__V1__REMOVE_SNAPSHOT_REQUEST__INIT;
  req.snapshotter = (char *)dibba_containerd_snapshotter(ctd);
  req.key = d->id;
  dibba_containerd_call_opts_t o = {.ns = d->ns};
  int rc = dibba_containerd_snapshots_remove(ctd, &o, &req, on_snap_removed, d);
  if (rc < 0)
    del_fail(d, rc, "snapshot remove", NULL);
}

static void on_retry(uv_timer_t *t) { del_task(t->data); }

static void on_task_deleted(dibba_containerd_t *ctd, int err, const dibba_grpc_status_t *st,
                            Containerd__Services__Tasks__V1__DeleteResponse *resp, void *data) {
  del_t *d = data;
  /* Still running after the SIGKILL: FailedPrecondition, or (from the runc shim) Unknown "cannot delete a running
   * process". */
  int busy = err == -EBUSY || (err == DIBBA_EPROTO && st->message && strstr(st->message, "running process"));
  if (busy && ++d->tries < DELETE_RETRIES) {
    /* Still running: the SIGKILL has not landed yet. */
    uv_timer_start(&d->timer, on_retry, POLL_MS, 0);
    return;
  }
  if (err < 0 && err != -ENOENT) {
    del_fail(d, err, "task delete", st);
    return;
  }
  Containerd__Services__Containers__V1__DeleteContainerRequest req =
      CONTAINERD__SERVICES__CONTAINERS__V1__DELETE_CONTAINER_REQUEST__INIT;
  req.id = d->id;
  dibba_containerd_call_opts_t o = {.ns = d->ns};
  int rc = dibba_containerd_containers_delete(ctd, &o, &req, on_ctr_deleted, d);
  if (rc < 0)
    del_fail(d, rc, "container delete", NULL);
}

static void del_task(del_t *d) {
  Containerd__Services__Tasks__V1__DeleteTaskRequest req = CONTAINERD__SERVICES__TASKS__V1__DELETE_TASK_REQUEST__INIT;
  req.container_id = d->id;
  dibba_containerd_call_opts_t o = {.ns = d->ns};
  int rc = dibba_containerd_tasks_delete(d->ctd, &o, &req, on_task_deleted, d);
  if (rc < 0)
    del_fail(d, rc, "task delete", NULL);
}

static void on_del_killed(dibba_containerd_t *ctd, int err, const dibba_grpc_status_t *st,
                          Google__Protobuf__Empty *resp, void *data) {
  del_task(data); /* NotFound or "already stopped" are both fine here */
}

int dibba_containerd_container_delete(dibba_containerd_t *ctd, const char *ns, const char *id,
                                      dibba_container_done_cb cb, void *data) {
  if (!ctd || !id || !*id || !cb)
    return -EINVAL;
  del_t *d = dibba_xcalloc(1, sizeof *d);
  d->ctd = ctd;
  d->ns = dibba_xstrdup(ns ? ns : dibba_containerd_namespace(ctd));
  d->id = dibba_xstrdup(id);
  d->cb = cb;
  d->data = data;
  uv_timer_init(dibba_containerd_loop(ctd), &d->timer);
  d->timer.data = d;
  Containerd__Services__Tasks__V1__KillRequest req = CONTAINERD__SERVICES__TASKS__V1__KILL_REQUEST__INIT;
  req.container_id = d->id;
  req.signal = SIGKILL;
  req.all = 1;
  dibba_containerd_call_opts_t o = {.ns = d->ns};
  if (dibba_containerd_tasks_kill(ctd, &o, &req, on_del_killed, d) < 0)
    del_task(d);
  return 0;
}

/* ---------------- wait ---------------- */

typedef struct wait_s {
  dibba_containerd_t *ctd;
  uv_timer_t timer;
  uv_fs_t fs;
  char *ns, *id;
  char cgroup[512];
  uint64_t deadline;
  uint32_t exit_status;
  int oom;
  char oombuf[1024];
  dibba_container_exit_cb cb;
  void *data;
  int err;
  char msg[256];
} wait_t;

static void wait_poll(wait_t *w);

static void wait_end(wait_t *w) {
  w->cb(w->ctd, w->err, w->err ? w->msg : "", w->exit_status, w->oom, w->data);
  free(w->ns);
  free(w->id);
  uv_close((uv_handle_t *)&w->timer, close_free);
}

static void wait_fail(wait_t *w, int err, const char *what) {
  w->err = err;
  snprintf(w->msg, sizeof w->msg, "wait %s: %s: %s", w->id, what, dibba_strerror(err));
  wait_end(w);
}

static void on_oom_read(uv_fs_t *req) {
  wait_t *w = req->data;
  ssize_t n = req->result;
  uv_fs_req_cleanup(req);
  if (n > 0) {
    w->oombuf[n < (ssize_t)sizeof w->oombuf ? n : (ssize_t)sizeof w->oombuf - 1] = '\0';
    const char *k = strstr(w->oombuf, "oom_kill ");
    w->oom = k && atoll(k + 9) > 0;
  }
  int fd = (int)w->fs.file;
  uv_fs_close(NULL, req, fd, NULL); /* sync close of a cgroup file: no disk I/O */
  uv_fs_req_cleanup(req);
  wait_end(w);
}

static void on_oom_open(uv_fs_t *req) {
  wait_t *w = req->data;
  int fd = (int)req->result;
  uv_fs_req_cleanup(req);
  if (fd < 0) {
    wait_end(w); /* no memory cgroup (already removed): no OOM information */
    return;
  }
  w->fs.file = fd;
  uv_buf_t b = uv_buf_init(w->oombuf, sizeof w->oombuf - 1);
  if (uv_fs_read(dibba_containerd_loop(w->ctd), &w->fs, fd, &b, 1, 0, on_oom_read) < 0)
    wait_end(w);
}

/* The task stopped: an exit by SIGKILL may be the kernel's OOM killer; the memory cgroup says which. */
static void check_oom(wait_t *w) {
  char path[600];
  w->fs.data = w;
  snprintf(path, sizeof path, "/sys/fs/cgroup/memory%s/memory.oom_control", w->cgroup);
  if (!*w->cgroup || w->exit_status != 128 + SIGKILL ||
      uv_fs_open(dibba_containerd_loop(w->ctd), &w->fs, path, O_RDONLY | O_CLOEXEC, 0, on_oom_open) < 0)
    wait_end(w);
}

static void on_wait_timer(uv_timer_t *t) { wait_poll(t->data); }

static void on_task_get(dibba_containerd_t *ctd, int err, const dibba_grpc_status_t *st,
                        Containerd__Services__Tasks__V1__GetResponse *resp, void *data) {
  wait_t *w = data;
  if (err == 0 && resp->process && resp->process->status == CONTAINERD__V1__TYPES__STATUS__STOPPED) {
    w->exit_status = resp->process->exit_status;
    check_oom(w);
    return;
  }
  if (err == -ENOENT) {
    wait_fail(w, err, "no task");
    return;
  }
  /* Running, or containerd unreachable (a restart): keep polling until the deadline. */
  if (w->deadline && uv_now(dibba_containerd_loop(ctd)) >= w->deadline) {
    wait_fail(w, UV_ETIMEDOUT, "still running");
    return;
  }
  uv_timer_start(&w->timer, on_wait_timer, POLL_MS, 0);
}

static void wait_poll(wait_t *w) {
  Containerd__Services__Tasks__V1__GetRequest req = CONTAINERD__SERVICES__TASKS__V1__GET_REQUEST__INIT;
  req.container_id = w->id;
  dibba_containerd_call_opts_t o = {.ns = w->ns, .timeout_ms = 10000};
  if (dibba_containerd_tasks_get(w->ctd, &o, &req, on_task_get, w) < 0)
    uv_timer_start(&w->timer, on_wait_timer, POLL_MS, 0); /* disconnected: retry after the reconnect */
}

static void on_wait_ctr(dibba_containerd_t *ctd, int err, const dibba_grpc_status_t *st,
                        Containerd__Services__Containers__V1__GetContainerResponse *resp, void *data) {
  wait_t *w = data;
  if (err == 0 && resp->container && resp->container->spec) {
    json_t *spec =
        json_loadb((const char *)resp->container->spec->value.data, resp->container->spec->value.len, 0, NULL);
    const char *cg = json_string_value(json_object_get(json_object_get(spec, "linux"), "cgroupsPath"));
    if (cg && cg[0] == '/' && !strstr(cg, ".."))
      snprintf(w->cgroup, sizeof w->cgroup, "%s", cg);
    json_decref(spec);
  }
  wait_poll(w);
}

int dibba_containerd_container_wait(dibba_containerd_t *ctd, const char *ns, const char *id, uint64_t timeout_ms,
                                    dibba_container_exit_cb cb, void *data) {
  if (!ctd || !id || !*id || !cb)
    return -EINVAL;
  wait_t *w = dibba_xcalloc(1, sizeof *w);
  w->ctd = ctd;
  w->ns = dibba_xstrdup(ns ? ns : dibba_containerd_namespace(ctd));
  w->id = dibba_xstrdup(id);
  w->cb = cb;
  w->data = data;
  uv_loop_t *loop = dibba_containerd_loop(ctd);
  uv_update_time(loop);
  w->deadline = timeout_ms ? uv_now(loop) + timeout_ms : 0;
  uv_timer_init(loop, &w->timer);
  w->timer.data = w;
  Containerd__Services__Containers__V1__GetContainerRequest req =
      CONTAINERD__SERVICES__CONTAINERS__V1__GET_CONTAINER_REQUEST__INIT;
  req.id = w->id;
  dibba_containerd_call_opts_t o = {.ns = w->ns};
  if (dibba_containerd_containers_get(ctd, &o, &req, on_wait_ctr, w) < 0)
    wait_poll(w);
  return 0;
}

/* ---------------- stop ---------------- */

typedef struct stop_s {
  char *ns, *id;
  dibba_container_exit_cb cb;
  void *data;
  int killed;
} stop_t;

static void stop_end(stop_t *s, dibba_containerd_t *ctd, int err, const char *msg, uint32_t status, int oom) {
  s->cb(ctd, err, msg, status, oom, s->data);
  free(s->ns);
  free(s->id);
  free(s);
}

static void on_stop_killed(dibba_containerd_t *ctd, int err, const dibba_grpc_status_t *st,
                           Google__Protobuf__Empty *resp, void *data);

static void send_kill(dibba_containerd_t *ctd, stop_t *s, int sig) {
  Containerd__Services__Tasks__V1__KillRequest req = CONTAINERD__SERVICES__TASKS__V1__KILL_REQUEST__INIT;
  req.container_id = s->id;
  req.signal = (uint32_t)sig;
  req.all = sig == SIGKILL;
  dibba_containerd_call_opts_t o = {.ns = s->ns};
  int rc = dibba_containerd_tasks_kill(ctd, &o, &req, on_stop_killed, s);
  if (rc < 0)
    stop_end(s, ctd, rc, "stop: kill", 0, 0);
}

static void on_stop_exit(dibba_containerd_t *ctd, int err, const char *msg, uint32_t status, int oom, void *data) {
  stop_t *s = data;
  if (err == UV_ETIMEDOUT && !s->killed) {
    s->killed = 1;
    send_kill(ctd, s, SIGKILL);
    return;
  }
  stop_end(s, ctd, err, msg, status, oom);
}

static uint64_t stop_grace(stop_t *s);

static void on_stop_killed(dibba_containerd_t *ctd, int err, const dibba_grpc_status_t *st,
                           Google__Protobuf__Empty *resp, void *data) {
  stop_t *s = data;
  /* A kill of a stopped task fails (NotFound "process already finished"): the wait reports the exit. */
  int rc = dibba_containerd_container_wait(ctd, s->ns, s->id, s->killed ? 30000 : stop_grace(s), on_stop_exit, s);
  if (rc < 0)
    stop_end(s, ctd, rc, "stop: wait", 0, 0);
}

/* The grace period is stored in the data pointer slot of the first phase; see dibba_containerd_container_stop. */
typedef struct stop_full_s {
  stop_t s;
  uint64_t grace_ms;
} stop_full_t;

static uint64_t stop_grace(stop_t *s) { return ((stop_full_t *)s)->grace_ms ? ((stop_full_t *)s)->grace_ms : 1; }

int dibba_containerd_container_stop(dibba_containerd_t *ctd, const char *ns, const char *id, uint64_t grace_ms,
                                    dibba_container_exit_cb cb, void *data) {
  if (!ctd || !id || !*id || !cb)
    return -EINVAL;
  stop_full_t *f = dibba_xcalloc(1, sizeof *f);
  f->s.ns = dibba_xstrdup(ns ? ns : dibba_containerd_namespace(ctd));
  f->s.id = dibba_xstrdup(id);
  f->s.cb = cb;
  f->s.data = data;
  f->grace_ms = grace_ms;
  f->s.killed = !grace_ms; /* before send_kill, which frees f when the call cannot be made */
  send_kill(ctd, &f->s, grace_ms ? SIGTERM : SIGKILL);
  return 0;
}

/* ---------------- run ---------------- */

typedef struct run_s {
  dibba_containerd_t *ctd;
  dibba_container_opts_t o; /* strings below are our copies */
  char *ns, *id, *image, *pod, *stdio;
  char *spec;
  char *chain;
  Containerd__Services__Snapshots__V1__PrepareSnapshotResponse *mounts;
  dibba_container_run_cb cb;
  void *data;
  int created;      /* something may exist to clean up */
  int create_tries; /* task creates refused because the killed attempt's shim state is still there */
  char lease[96];   /* holds the new snapshot until the container references it (containerd's GC) */
  int have_lease;
  uint32_t pid;
  int err;
  char msg[256];
} run_t;

static void run_free(run_t *r) {
  free(r->ns);
  free(r->id);
  free(r->image);
  free(r->pod);
  free(r->stdio);
  free(r->spec);
  free(r->chain);
  if (r->mounts)
    protobuf_c_message_free_unpacked(&r->mounts->base, NULL);
  free(r);
}

static void on_run_lease_deleted(dibba_containerd_t *ctd, int err, const dibba_grpc_status_t *st,
                                 Google__Protobuf__Empty *resp, void *data) {
  free(data);
}

/* Drop the lease (fire and forget: a leftover lease only delays GC of what it holds). */
static void run_drop_lease(run_t *r) {
  if (!r->have_lease)
    return;
  r->have_lease = 0;
  Containerd__Services__Leases__V1__DeleteRequest req = CONTAINERD__SERVICES__LEASES__V1__DELETE_REQUEST__INIT;
  req.id = r->lease;
  dibba_containerd_call_opts_t o = {.ns = r->ns};
  char *keep = dibba_xstrdup(r->lease);
  if (dibba_containerd_leases_delete(r->ctd, &o, &req, on_run_lease_deleted, keep) < 0)
    free(keep);
}

static void run_report(run_t *r) {
  run_drop_lease(r);
  r->cb(r->ctd, r->err, r->err ? r->msg : "", r->pid, r->data);
  run_free(r);
}

static void on_cleanup_done(dibba_containerd_t *ctd, int err, const char *msg, void *data) { run_report(data); }

static void run_fail(run_t *r, int err, const char *what, const char *detail) {
  r->err = err;
  snprintf(r->msg, sizeof r->msg, "run %s: %s: %s", r->id, what, detail && *detail ? detail : dibba_strerror(err));
  if (r->created && dibba_containerd_container_delete(r->ctd, r->ns, r->id, on_cleanup_done, r) == 0)
    return;
  run_report(r);
}

static void on_started(dibba_containerd_t *ctd, int err, const dibba_grpc_status_t *st,
                       Containerd__Services__Tasks__V1__StartResponse *resp, void *data) {
  run_t *r = data;
  if (err < 0) {
    run_fail(r, err, "task start", st->message);
    return;
  }
  r->pid = resp->pid;
  run_report(r);
}

static void send_task_create(run_t *r);

typedef struct run_retry_s {
  uv_timer_t timer;
  run_t *r;
} run_retry_t;

static void on_create_retry(uv_timer_t *t) {
  run_retry_t *rr = t->data;
  run_t *r = rr->r;
  uv_close((uv_handle_t *)t, close_free);
  send_task_create(r);
}

static void on_stale_task_deleted(dibba_containerd_t *ctd, int err, const dibba_grpc_status_t *st,
                                  Containerd__Services__Tasks__V1__DeleteResponse *resp, void *data) {
  (void)err; /* NotFound: the cut create never registered a task; its bundle goes when containerd unwinds it */
  run_retry_t *rr = dibba_xcalloc(1, sizeof *rr);
  rr->r = data;
  uv_timer_init(dibba_containerd_loop(ctd), &rr->timer);
  rr->timer.data = rr;
  uv_timer_start(&rr->timer, on_create_retry, CREATE_RETRY_MS, 0);
}

static int stale_bundle(int err, const dibba_grpc_status_t *st) {
  return err < 0 && st && st->message && strstr(st->message, "file exists");
}

static void on_task_created(dibba_containerd_t *ctd, int err, const dibba_grpc_status_t *st,
                            Containerd__Services__Tasks__V1__CreateTaskResponse *resp, void *data) {
  run_t *r = data;
  if (stale_bundle(err, st) && ++r->create_tries < CREATE_RETRIES) {
    Containerd__Services__Tasks__V1__DeleteTaskRequest dreq =
        CONTAINERD__SERVICES__TASKS__V1__DELETE_TASK_REQUEST__INIT;
    dreq.container_id = r->id;
    dibba_containerd_call_opts_t o = {.ns = r->ns};
    if (dibba_containerd_tasks_delete(ctd, &o, &dreq, on_stale_task_deleted, r) == 0)
      return;
  }
  if (err < 0) {
    run_fail(r, err, "task create", st->message);
    return;
  }
  Containerd__Services__Tasks__V1__StartRequest req = CONTAINERD__SERVICES__TASKS__V1__START_REQUEST__INIT;
  req.container_id = r->id;
  dibba_containerd_call_opts_t o = {.ns = r->ns};
  int rc = dibba_containerd_tasks_start(ctd, &o, &req, on_started, r);
  if (rc < 0)
    run_fail(r, rc, "task start", NULL);
}

static void on_ctr_created(dibba_containerd_t *ctd, int err, const dibba_grpc_status_t *st,
                           Containerd__Services__Containers__V1__CreateContainerResponse *resp, void *data) {
  run_t *r = data;
  if (err < 0) {
    run_fail(r, err, "container create", st->message);
    return;
  }
  run_drop_lease(r); /* the container now references its snapshot */
  send_task_create(r);
}

static void send_task_create(run_t *r) {
  Containerd__Services__Tasks__V1__CreateTaskRequest req = CONTAINERD__SERVICES__TASKS__V1__CREATE_TASK_REQUEST__INIT;
  req.container_id = r->id;
  req.n_rootfs = r->mounts->n_mounts;
  req.rootfs = r->mounts->mounts;
  req.stdin = "";
  req.stdout = r->stdio ? r->stdio : "";
  req.stderr = r->stdio ? r->stdio : "";
  dibba_containerd_call_opts_t o = {.ns = r->ns, .timeout_ms = 60000};
  int rc = dibba_containerd_tasks_create(r->ctd, &o, &req, on_task_created, r);
  if (rc < 0)
    run_fail(r, rc, "task create", NULL);
}

static void on_prepared(dibba_containerd_t *ctd, int err, const dibba_grpc_status_t *st,
                        Containerd__Services__Snapshots__V1__PrepareSnapshotResponse *resp, void *data) {
  run_t *r = data;
  if (err < 0) {
    run_fail(r, err, "snapshot prepare", st->message);
    return;
  }
  /* The response is freed after this callback: keep our own copy of the mounts. */
  size_t len = protobuf_c_message_get_packed_size(&resp->base);
  uint8_t *buf = dibba_xmalloc(len);
  protobuf_c_message_pack(&resp->base, buf);
  r->mounts = containerd__services__snapshots__v1__prepare_snapshot_response__unpack(NULL, len, buf);
  free(buf);
  /* Default labels first, then the caller's; a caller's key replaces a default of the same name. */
  size_t nl = 0, cap = 3 + r->o.n_labels;
  Containerd__Services__Containers__V1__Container__LabelsEntry *entries = dibba_xcalloc(cap, sizeof *entries);
  Containerd__Services__Containers__V1__Container__LabelsEntry **labels = dibba_xcalloc(cap, sizeof *labels);
  const char *defaults[6] = {"dibba.io/namespace", r->ns, "dibba.io/container", r->id, "dibba.io/pod", r->pod};
  for (size_t i = 0; i < 3; i++) {
    int replaced = !defaults[2 * i + 1];
    for (size_t j = 0; j < r->o.n_labels && !replaced; j++)
      replaced = strcmp(r->o.labels[2 * j], defaults[2 * i]) == 0;
    if (replaced)
      continue;
    entries[nl] = (Containerd__Services__Containers__V1__Container__LabelsEntry)
        CONTAINERD__SERVICES__CONTAINERS__V1__CONTAINER__LABELS_ENTRY__INIT;
    entries[nl].key = (char *)defaults[2 * i];
    entries[nl].value = (char *)defaults[2 * i + 1];
    labels[nl] = &entries[nl];
    nl++;
  }
  for (size_t j = 0; j < r->o.n_labels; j++) {
    entries[nl] = (Containerd__Services__Containers__V1__Container__LabelsEntry)
        CONTAINERD__SERVICES__CONTAINERS__V1__CONTAINER__LABELS_ENTRY__INIT;
    entries[nl].key = (char *)r->o.labels[2 * j];
    entries[nl].value = (char *)r->o.labels[2 * j + 1];
    labels[nl] = &entries[nl];
    nl++;
  }
  Google__Protobuf__Any spec = GOOGLE__PROTOBUF__ANY__INIT;
  spec.type_url = DIBBA_CONTAINER_SPEC_TYPE;
  spec.value.data = (uint8_t *)r->spec;
  spec.value.len = strlen(r->spec);
  Containerd__Services__Containers__V1__Container__Runtime rt =
      CONTAINERD__SERVICES__CONTAINERS__V1__CONTAINER__RUNTIME__INIT;
  rt.name = DIBBA_CONTAINER_RUNTIME;
  Containerd__Services__Containers__V1__Container c = CONTAINERD__SERVICES__CONTAINERS__V1__CONTAINER__INIT;
  c.id = r->id;
  c.image = r->image;
  c.n_labels = nl;
  c.labels = labels;
  c.runtime = &rt;
  c.spec = &spec;
  c.snapshotter = (char *)dibba_containerd_snapshotter(ctd);
  c.snapshot_key = r->id;
  Containerd__Services__Containers__V1__CreateContainerRequest req =
      CONTAINERD__SERVICES__CONTAINERS__V1__CREATE_CONTAINER_REQUEST__INIT;
  req.container = &c;
  dibba_containerd_call_opts_t o = {.ns = r->ns};
  int rc = dibba_containerd_containers_create(ctd, &o, &req, on_ctr_created, r);
  free(labels); /* the request was packed by the call */
  free(entries);
  if (rc < 0)
    run_fail(r, rc, "container create", NULL);
}

static void on_run_lease(dibba_containerd_t *ctd, int err, const dibba_grpc_status_t *st,
                         Containerd__Services__Leases__V1__CreateResponse *resp, void *data);

static void on_stale_removed(dibba_containerd_t *ctd, int err, const char *msg, void *data) {
  run_t *r = data;
  if (err < 0) {
    run_fail(r, err, "removing a stale container", msg);
    return;
  }
  r->created = 1;
  /* Under a lease: containerd's GC may otherwise remove the new snapshot before the container references it. */
  Containerd__Services__Leases__V1__CreateRequest lreq = CONTAINERD__SERVICES__LEASES__V1__CREATE_REQUEST__INIT;
  char rnd[8];
  dibba_random_bytes(rnd, sizeof rnd);
  snprintf(r->lease, sizeof r->lease, "dibba-run-%.40s-%02x%02x%02x%02x", r->id, (unsigned char)rnd[0],
           (unsigned char)rnd[1], (unsigned char)rnd[2], (unsigned char)rnd[3]);
  lreq.id = r->lease;
  dibba_containerd_call_opts_t lo = {.ns = r->ns};
  int rc = dibba_containerd_leases_create(ctd, &lo, &lreq, on_run_lease, r);
  if (rc < 0)
    run_fail(r, rc, "lease create", NULL);
}

static void on_run_lease(dibba_containerd_t *ctd, int err, const dibba_grpc_status_t *st,
                         Containerd__Services__Leases__V1__CreateResponse *resp, void *data) {
  run_t *r = data;
  if (err < 0) {
    run_fail(r, err, "lease create", st->message);
    return;
  }
  r->have_lease = 1;
  Containerd__Services__Snapshots__V1__PrepareSnapshotRequest req =
      CONTAINERD__SERVICES__SNAPSHOTS__V1__PREPARE_SNAPSHOT_REQUEST__INIT;
  req.snapshotter = (char *)dibba_containerd_snapshotter(ctd);
  req.key = r->id;
  req.parent = r->chain;
  dibba_containerd_call_opts_t o = {.ns = r->ns, .lease = r->lease};
  int rc = dibba_containerd_snapshots_prepare(ctd, &o, &req, on_prepared, r);
  if (rc < 0)
    run_fail(r, rc, "snapshot prepare", NULL);
}

static void on_resolved(dibba_containerd_t *ctd, int err, const char *msg, const dibba_image_result_t *res,
                        void *data) {
  run_t *r = data;
  char emsg[256];
  json_t *spec = NULL;
  if (err < 0) {
    run_fail(r, err, "image", msg);
    return;
  }
  dibba_oci_opts_t oo = r->o.oci;
  oo.id = r->id;
  oo.ns = r->ns;
  oo.image_config = res->config;
  int rc = dibba_oci_spec_build(&oo, &spec, emsg, sizeof emsg);
  if (rc < 0) {
    run_fail(r, rc, "spec", emsg);
    return;
  }
  r->spec = json_dumps(spec, JSON_COMPACT);
  json_decref(spec);
  r->chain = dibba_xstrdup(res->chain_id);
  /* A crash may have left a task, container or snapshot under this id: remove them first. */
  if ((rc = dibba_containerd_container_delete(ctd, r->ns, r->id, on_stale_removed, r)) < 0)
    run_fail(r, rc, "removing a stale container", NULL);
}

static int safe_uri_path(const char *s) {
  for (; *s; s++)
    if (strchr("?&#% \t\n=+", *s))
      return 0;
  return 1;
}

int dibba_containerd_container_run(dibba_containerd_t *ctd, const dibba_container_opts_t *opts,
                                   dibba_container_run_cb cb, void *data) {
  if (!ctd || !opts || !opts->id || !*opts->id || !opts->image || !*opts->image || !cb)
    return -EINVAL;
  /* Checked here so that nothing at all is created for an impossible limit. */
  if (opts->oci.memory_bytes < 0 || (opts->oci.memory_bytes > 0 && opts->oci.memory_bytes < DIBBA_OCI_MIN_MEMORY))
    return -EINVAL;
  if (opts->log_path && (!opts->logger || opts->logger[0] != '/' || opts->log_path[0] != '/' ||
                         !safe_uri_path(opts->logger) || !safe_uri_path(opts->log_path)))
    return -EINVAL;
  run_t *r = dibba_xcalloc(1, sizeof *r);
  r->ctd = ctd;
  r->o = *opts;
  r->ns = dibba_xstrdup(opts->ns ? opts->ns : dibba_containerd_namespace(ctd));
  r->id = dibba_xstrdup(opts->id);
  r->image = dibba_xstrdup(opts->image);
  r->pod = opts->pod ? dibba_xstrdup(opts->pod) : NULL;
  if (opts->log_path)
    r->stdio = dibba_xasprintf("binary://%s?path=%s&max-size=%llu&max-files=%u", opts->logger, opts->log_path,
                               (unsigned long long)opts->log_max_size, opts->log_max_files);
  r->cb = cb;
  r->data = data;
  int rc = dibba_containerd_image_resolve(ctd, r->ns, r->image, on_resolved, r);
  if (rc < 0)
    run_free(r);
  return rc;
}
