/* SPDX-License-Identifier: Apache-2.0 */
/* The pod manager: sandbox (netns + pause + CNI), app containers, exits, restart backoff, delete and status. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/sha.h>

#include "dibba/alloc.h"
#include "dibba/containerd_container.h"
#include "dibba/error.h"
#include "dibba/id.h"
#include "dibba/log.h"
#include "dibba/netns.h"
#include "dibba/pbjson.h"
#include "dibba/time.h"

#include "pod_int.h"

/* ---------------- small helpers ---------------- */

static void pod_hold(pod_t *p) { p->ops++; }
static void pod_release(pod_t *p);

static const char *pod_ns_of(const Dibba__V1__Pod *pod) {
  return pod->metadata->namespace_ && *pod->metadata->namespace_ ? pod->metadata->namespace_ : "default";
}

Dibba__V1__Pod *dibba__pod_copy(const Dibba__V1__Pod *pod) {
  size_t len = protobuf_c_message_get_packed_size(&pod->base);
  uint8_t *buf = dibba_xmalloc(len ? len : 1);
  protobuf_c_message_pack(&pod->base, buf);
  Dibba__V1__Pod *c = dibba__v1__pod__unpack(NULL, len, buf);
  free(buf);
  if (!c)
    abort(); /* we just packed it */
  return c;
}

static void key_of(const char *uid, char key[9]) {
  unsigned char d[SHA256_DIGEST_LENGTH];
  SHA256((const unsigned char *)uid, strlen(uid), d);
  for (int i = 0; i < 4; i++)
    snprintf(key + 2 * i, 3, "%02x", d[i]);
}

pod_t *dibba__pod_find(dibba_pod_mgr_t *m, const char *ns, const char *name, int include_deleting) {
  for (pod_t *p = m->pods; p; p = p->next)
    if (p->ns && p->name && strcmp(p->ns, ns) == 0 && strcmp(p->name, name) == 0 && (include_deleting || !p->deleting))
      return p;
  return NULL;
}

pod_t *dibba__pod_find_key(dibba_pod_mgr_t *m, const char *key) {
  for (pod_t *p = m->pods; p; p = p->next)
    if (strcmp(p->key, key) == 0)
      return p;
  return NULL;
}

/* ---------------- status ---------------- */

static void fmt_time(int64_t ms, char *out, size_t len) {
  if (ms > 0)
    dibba_time_format_ms(ms, out, len);
  else
    out[0] = '\0';
}

static json_t *terminated_json(const ctr_term_t *t, const char *cid) {
  char s[40], f[40];
  fmt_time(t->started_ms, s, sizeof s);
  fmt_time(t->finished_ms, f, sizeof f);
  json_t *o = json_pack("{s:i, s:s, s:s, s:s, s:s}", "exitCode", t->exit_code, "reason", t->reason, "startedAt", s,
                        "finishedAt", f, "containerId", cid);
  if (t->exit_code > 128)
    json_object_set_new(o, "signal", json_integer(t->exit_code - 128));
  return json_pack("{s:o}", "terminated", o);
}

static int pod_phase(const pod_t *p) {
  if (p->sb == SB_FAILED)
    return DIBBA__V1__POD_PHASE__Failed;
  if (p->sb != SB_READY)
    return DIBBA__V1__POD_PHASE__Pending;
  int live = 0, failed = 0;
  for (size_t i = 0; i < p->n; i++) {
    const ctr_t *c = &p->c[i];
    if (!c->ever_started)
      return DIBBA__V1__POD_PHASE__Pending;
    if (c->state != CS_TERMINATED)
      live = 1;
    else if (c->term.exit_code != 0)
      failed = 1;
  }
  if (live)
    return DIBBA__V1__POD_PHASE__Running;
  return failed ? DIBBA__V1__POD_PHASE__Failed : DIBBA__V1__POD_PHASE__Succeeded;
}

json_t *dibba__pod_status_json(const pod_t *p) {
  static const char *const phases[] = {"Pending", "Running", "Succeeded", "Failed", "Unknown"};
  char t[40];
  json_t *cs = json_array();
  for (size_t i = 0; i < p->n; i++) {
    const ctr_t *c = &p->c[i];
    char cid[120];
    snprintf(cid, sizeof cid, "containerd://%s", c->id);
    json_t *state;
    if (c->state == CS_RUNNING) {
      fmt_time(c->started_ms, t, sizeof t);
      state = json_pack("{s:{s:s}}", "running", "startedAt", t);
    } else if (c->state == CS_TERMINATED) {
      state = terminated_json(&c->term, cid);
    } else {
      state = json_pack("{s:{s:s, s:s}}", "waiting", "reason", c->wait_reason ? c->wait_reason : "ContainerCreating",
                        "message", c->msg);
    }
    json_t *o =
        json_pack("{s:s, s:o, s:i, s:b, s:s, s:s}", "name", c->name, "state", state, "restartCount", c->restart_count,
                  "ready", c->state == CS_RUNNING, "image", c->spec ? c->spec->image : "", "containerId", cid);
    if (c->has_last)
      json_object_set_new(o, "lastState", terminated_json(&c->last, cid));
    json_array_append_new(cs, o);
  }
  fmt_time(p->start_ms, t, sizeof t);
  return json_pack("{s:s, s:s, s:s, s:o, s:s, s:s, s:s}", "phase", phases[pod_phase(p)], "podIP", p->ip, "hostName",
                   p->m->host_name, "containerStatuses", cs, "startTime", t, "reason", p->reason, "message",
                   p->message);
}

static Dibba__V1__PodStatus *status_msg(const pod_t *p) {
  json_t *j = dibba__pod_status_json(p);
  ProtobufCMessage *msg = NULL;
  dibba_pbjson_error_t pe = {0};
  if (dibba_pbjson_to_message(j, &dibba__v1__pod_status__descriptor, NULL, &msg, &pe) < 0) {
    dibba_log_error("pod", NULL, "status does not convert: %s: %s", pe.path, pe.msg); /* a bug */
    abort();
  }
  json_decref(j);
  return (Dibba__V1__PodStatus *)msg;
}

static void finish_waiters(pod_t *p, int err, const char *msg) {
  waiter_t *w = p->create_waiters;
  p->create_waiters = NULL;
  Dibba__V1__PodStatus *st = err ? NULL : status_msg(p);
  while (w) {
    waiter_t *next = w->next;
    w->ccb(p->m, err, err ? msg : "", st, w->data);
    free(w);
    w = next;
  }
  if (st)
    protobuf_c_message_free_unpacked(&st->base, NULL);
}

/* Something changed: report the status and release create waiters once the pod is past Pending. */
static void pod_changed(pod_t *p) {
  if (p->m->closing || !p->pod)
    return;
  int phase = pod_phase(p);
  if (p->create_waiters && phase != DIBBA__V1__POD_PHASE__Pending)
    finish_waiters(p, 0, NULL);
  if (p->m->status_cb && !p->deleting) {
    Dibba__V1__PodStatus *st = status_msg(p);
    p->m->status_cb(p->m, p->ns, p->name, p->uid, st, p->m->data);
    protobuf_c_message_free_unpacked(&st->base, NULL);
  }
}

/* ---------------- pod objects ---------------- */

static void on_timer_closed(uv_handle_t *h) {
  pod_t *p = h->data;
  dibba_pod_mgr_t *m = p->m;
  for (size_t i = 0; i < p->n; i++) {
    free(p->c[i].id);
    free(p->c[i].log_path);
  }
  free(p->c);
  if (p->pod)
    protobuf_c_message_free_unpacked(&p->pod->base, NULL);
  free(p->ns);
  free(p->name);
  free(p->uid);
  free(p->hash);
  free(p->spec_json);
  free(p->sandbox_id);
  free(p->netns_name);
  free(p->netns_path);
  free(p->dir);
  free(p->log_dir);
  free(p);
  m->live_pods--;
  dibba__mgr_maybe_closed(m);
}

static void pod_unlink(pod_t *p) {
  for (pod_t **pp = &p->m->pods; *pp; pp = &(*pp)->next)
    if (*pp == p) {
      *pp = p->next;
      break;
    }
  p->next = NULL;
}

/* Drop the pod from the manager; freed once nothing is in flight. */
static void pod_discard(pod_t *p) {
  if (p->discarded)
    return;
  p->discarded = 1;
  pod_unlink(p);
  uv_timer_stop(&p->timer);
  pod_hold(p);
  pod_release(p);
}

void dibba__pod_forget(pod_t *p) { pod_discard(p); }

static void pod_tick(uv_timer_t *t);

pod_t *dibba__pod_new(dibba_pod_mgr_t *m, Dibba__V1__Pod *pod, const char *uid, const char *key) {
  pod_t *p = dibba_xcalloc(1, sizeof *p);
  char k[9];
  p->m = m;
  p->pod = pod;
  if (uid)
    key_of(uid, k);
  snprintf(p->key, sizeof p->key, "%s", key ? key : k);
  p->uid = uid ? dibba_xstrdup(uid) : NULL;
  p->sandbox_id = dibba_xasprintf("dp-%s", p->key);
  p->netns_name = dibba_xasprintf("dibba-%s", p->key);
  p->netns_path = dibba_xasprintf("%s/%s", m->netns_dir, p->netns_name);
  if (uid)
    p->dir = dibba_xasprintf("%s/%s", m->pod_dir, uid);
  if (pod) {
    char hash[17];
    p->ns = dibba_xstrdup(pod_ns_of(pod));
    p->name = dibba_xstrdup(pod->metadata->name);
    p->spec_json = dibba_pod_normalized(pod, hash);
    p->hash = dibba_xstrdup(hash);
    p->log_dir = dibba_xasprintf("%s/%s_%s_%s", m->log_dir, p->ns, p->name, uid);
    p->n = pod->spec->n_containers;
    p->c = dibba_xcalloc(p->n, sizeof *p->c);
    for (size_t i = 0; i < p->n; i++) {
      ctr_t *c = &p->c[i];
      c->pod = p;
      c->spec = pod->spec->containers[i];
      c->name = c->spec->name;
      c->id = dibba_xasprintf("dp-%s-%s", p->key, c->name);
      c->log_path = dibba_xasprintf("%s/%s.log", p->log_dir, c->name);
      c->wait_reason = "ContainerCreating";
    }
  }
  snprintf(p->reason, sizeof p->reason, "%s", "");
  uv_timer_init(m->loop, &p->timer);
  p->timer.data = p;
  p->next = m->pods;
  m->pods = p;
  m->live_pods++;
  return p;
}

/* Add an extra container id (orphans: what containerd lists for a pod that is no longer wanted). */
void dibba__pod_add_orphan_ctr(pod_t *p, const char *id) {
  p->c = dibba_xreallocarray(p->c, p->n + 1, sizeof *p->c);
  memset(&p->c[p->n], 0, sizeof p->c[p->n]);
  p->c[p->n].pod = p;
  p->c[p->n].id = dibba_xstrdup(id);
  p->c[p->n].name = "";
  p->n++;
}

static void pod_schedule(pod_t *p) {
  if (p->discarded || p->m->closing)
    return;
  uint64_t now = uv_now(p->m->loop), next = UINT64_MAX;
  for (size_t i = 0; i < p->n; i++)
    if (p->c[i].restart_at && p->c[i].restart_at < next)
      next = p->c[i].restart_at;
  if (next != UINT64_MAX)
    uv_timer_start(&p->timer, pod_tick, next > now ? next - now : 0, 0);
}

/* ---------------- jobs: sandbox up, sandbox down (recreate), delete ---------------- */

static const int up_steps[] = {S_DIRS, S_NETNS, S_PAUSE, S_CNI_ADD, S_END};
static const int recreate_steps[] = {S_DEL_APPS, S_DEL_SANDBOX, S_CNI_DEL, S_NETNS_DEL, S_END};
static const int delete_steps[] = {S_STOP_APPS, S_DEL_APPS, S_DEL_SANDBOX, S_CNI_DEL, S_NETNS_DEL, S_RM_DIRS, S_END};
static const int fail_steps[] = {S_DEL_SANDBOX, S_CNI_DEL, S_NETNS_DEL, S_END};

static void job_run(pod_t *p);
static void ctr_start(ctr_t *c);

static void job_start(pod_t *p, int job) {
  p->job = job;
  p->si = 0;
  p->job_err = 0;
  p->job_msg[0] = '\0';
  p->retried = 0;
  p->steps = job == JOB_UP         ? up_steps
             : job == JOB_RECREATE ? recreate_steps
             : job == JOB_DELETE   ? delete_steps
                                   : fail_steps;
  job_run(p);
}

/* Record the first error of the job (fmt has one %s: detail, or the error's text). */
static void job_error(pod_t *p, int err, const char *what, const char *detail) {
  char line[sizeof p->job_msg];
  snprintf(line, sizeof line, "%s: %s", what, detail && *detail ? detail : dibba_strerror(err));
  if (!p->job_err) {
    p->job_err = err;
    memcpy(p->job_msg, line, sizeof line);
  }
  dibba_log_warn("pod", json_pack("{s:s, s:s}", "pod", p->name ? p->name : "", "sandbox", p->sandbox_id), "%s", line);
}

static void delete_finished(pod_t *p) {
  waiter_t *w = p->delete_waiters;
  p->delete_waiters = NULL;
  finish_waiters(p, -ECANCELED, "pod deleted");
  pod_discard(p);
  dibba_pod_mgr_t *m = p->m;
  while (w) {
    waiter_t *next = w->next;
    if (w->dcb)
      w->dcb(m, p->job_err, p->job_msg, w->data);
    if (w->pending_create) {
      int rc = dibba__pod_create(m, w->pending_create, w->ccb, w->data);
      if (rc < 0)
        w->ccb(m, rc, "pod exists with a different spec", NULL, w->data);
    }
    free(w);
    w = next;
  }
}

static void job_end(pod_t *p) {
  int job = p->job;
  p->job = JOB_NONE;
  if (p->m->closing)
    return;
  if (p->deleting && job != JOB_DELETE) {
    job_start(p, JOB_DELETE);
    return;
  }
  switch (job) {
  case JOB_UP:
    if (p->job_err) {
      char msg[sizeof p->message];
      int err = p->job_err;
      size_t ml = strnlen(p->job_msg, sizeof msg - 1);
      memcpy(msg, p->job_msg, ml);
      msg[ml] = '\0';
      memcpy(p->message, msg, ml + 1);
      snprintf(p->reason, sizeof p->reason, "SandboxCreateFailed");
      p->sb = SB_FAILED;
      finish_waiters(p, err, msg); /* before the status report, which would answer them with the status */
      pod_changed(p);
      job_start(p, JOB_FAIL_CLEANUP);
      return;
    }
    p->sb = SB_READY;
    if (!p->start_ms)
      p->start_ms = dibba_now_ms();
    p->reason[0] = p->message[0] = '\0';
    for (size_t i = 0; i < p->n; i++)
      if (p->c[i].state != CS_TERMINATED || dibba__ctr_should_restart(&p->c[i]))
        ctr_start(&p->c[i]);
    pod_changed(p);
    break;
  case JOB_RECREATE:
    if (p->pod->spec->restart_policy == DIBBA__V1__RESTART_POLICY__Never) {
      p->sb = SB_FAILED;
      snprintf(p->reason, sizeof p->reason, "SandboxDied");
      snprintf(p->message, sizeof p->message, "the pod sandbox exited");
      pod_changed(p);
    } else {
      p->sb = SB_STARTING;
      job_start(p, JOB_UP);
    }
    break;
  case JOB_DELETE: delete_finished(p); break;
  default: break;
  }
}

static void step_done(pod_t *p) {
  if (--p->par > 0)
    return;
  p->si++;
  pod_release(p);
}

/* ---- step: directories (pool thread) ---- */

static int mkdir_p(const char *path) {
  char buf[4096];
  if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
    return -ENAMETOOLONG;
  for (char *q = buf + 1; *q; q++)
    if (*q == '/') {
      *q = '\0';
      if (mkdir(buf, 0755) < 0 && errno != EEXIST)
        return -errno;
      *q = '/';
    }
  if (mkdir(buf, 0755) < 0 && errno != EEXIST)
    return -errno;
  return 0;
}

static int rm_cb(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st;
  (void)ftw;
  return (flag == FTW_DP ? rmdir(path) : unlink(path)) < 0 && errno != ENOENT ? -1 : 0;
}

static void work_dirs(uv_work_t *w) {
  pod_t *p = w->data;
  p->work_err = 0;
  if (p->steps[p->si] == S_RM_DIRS) {
    if (p->dir && nftw(p->dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS) < 0 && errno != ENOENT)
      p->work_err = -errno;
    if (p->log_dir && !p->m->keep_logs && nftw(p->log_dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS) < 0 && errno != ENOENT)
      p->work_err = -errno;
    return;
  }
  int rc = mkdir_p(p->log_dir);
  const Dibba__V1__PodSpec *s = p->pod->spec;
  for (size_t i = 0; i < s->n_volumes && rc == 0; i++) {
    const Dibba__V1__Volume *v = s->volumes[i];
    if (v->source_case == DIBBA__V1__VOLUME__SOURCE_EMPTY_DIR) {
      char *d = dibba_xasprintf("%s/volumes/%s", p->dir, v->name);
      rc = mkdir_p(d);
      free(d);
    } else if (v->host_path->type && strcmp(v->host_path->type, "DirectoryOrCreate") == 0) {
      rc = mkdir_p(v->host_path->path);
    } else if (v->host_path->type && strcmp(v->host_path->type, "FileOrCreate") == 0) {
      int fd = open(v->host_path->path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
      rc = fd < 0 ? -errno : 0;
      if (fd >= 0)
        close(fd);
    } else if (access(v->host_path->path, F_OK) < 0 && v->host_path->type && *v->host_path->type) {
      rc = -errno;
    }
  }
  p->work_err = rc;
}

static void after_dirs(uv_work_t *w, int status) {
  pod_t *p = w->data;
  int err = status < 0 ? status : p->work_err;
  if (err < 0 && p->steps[p->si] == S_DIRS)
    job_error(p, err, "pod directories", NULL);
  else if (err < 0)
    dibba_log_warn("pod", NULL, "removing %s: %s", p->dir ? p->dir : "", dibba_strerror(err));
  step_done(p);
}

/* ---- step: netns ---- */

static void on_netns(int status, const char *err, void *data);

/* A stale pin from a crash was removed: create the namespace again. */
static void on_netns_stale(int status, const char *err, void *data) {
  pod_t *p = data;
  if (status == 0 && dibba_netns_create(p->m->loop, p->m->netns_dir, p->netns_name, on_netns, p) == 0)
    return;
  job_error(p, status < 0 ? status : -EINVAL, "netns create", err);
  step_done(p);
}

static void on_netns(int status, const char *err, void *data) {
  pod_t *p = data;
  int step = p->steps[p->si];
  if (step == S_NETNS && status == -EEXIST && !p->retried) {
    p->retried = 1;
    if (dibba_netns_delete(p->m->loop, p->m->netns_dir, p->netns_name, on_netns_stale, p) == 0)
      return;
  }
  if (status < 0)
    job_error(p, status, step == S_NETNS ? "netns create" : "netns delete", err);
  step_done(p);
}

/* ---- step: pause container ---- */

static void runargs_free(runargs_t *ra) {
  if (!ra)
    return;
  for (size_t i = 0; i < ra->n_env; i++)
    free(ra->envs[i]);
  for (size_t i = 0; i < ra->n_mounts; i++)
    free(ra->srcs[i]);
  free(ra->env);
  free(ra->envs);
  free(ra->srcs);
  free(ra->mounts);
  free(ra);
}

static void on_pause_run(dibba_containerd_t *ctd, int err, const char *msg, uint32_t pid, void *data) {
  (void)ctd;
  pod_t *p = data;
  runargs_free(p->pause_ra);
  p->pause_ra = NULL;
  if (err < 0)
    job_error(p, err, "pause container", msg);
  else
    p->sb_pid = pid;
  step_done(p);
}

static void labels_for(pod_t *p, const char *container, const char *role, const char **l, size_t *n) {
  size_t k = 0;
  l[k++] = DIBBA_POD_LABEL_UID, l[k++] = p->uid;
  l[k++] = DIBBA_POD_LABEL_NAMESPACE, l[k++] = p->ns;
  l[k++] = DIBBA_POD_LABEL_NAME, l[k++] = p->name;
  l[k++] = DIBBA_POD_LABEL_CONTAINER, l[k++] = container;
  l[k++] = DIBBA_POD_LABEL_ROLE, l[k++] = role;
  l[k++] = DIBBA_POD_LABEL_HASH, l[k++] = p->hash;
  if (strcmp(role, "sandbox") == 0 && strlen(p->spec_json) <= DIBBA_POD_SPEC_LABEL_MAX)
    l[k++] = DIBBA_POD_LABEL_SPEC, l[k++] = p->spec_json;
  *n = k / 2;
}

static int start_pause(pod_t *p) {
  runargs_t *ra = p->pause_ra = dibba_xcalloc(1, sizeof *ra);
  const char **labels = ra->labels;
  size_t nl;
  labels_for(p, "POD", "sandbox", labels, &nl);
  dibba_oci_namespace_t *nss = ra->nss;
  nss[0] = (dibba_oci_namespace_t){"network", p->netns_path};
  nss[1] = (dibba_oci_namespace_t){"ipc", NULL};
  nss[2] = (dibba_oci_namespace_t){"uts", NULL};
  nss[3] = (dibba_oci_namespace_t){"pid", NULL};
  nss[4] = (dibba_oci_namespace_t){"mount", NULL};
  const char *hostname = p->pod->spec->hostname && *p->pod->spec->hostname ? p->pod->spec->hostname : p->name;
  dibba_container_opts_t co = {
      .id = p->sandbox_id, .ns = p->m->ns, .image = p->m->pause_image, .pod = p->uid, .labels = labels, .n_labels = nl};
  co.oci.hostname = hostname;
  co.oci.namespaces = nss;
  co.oci.n_namespaces = 5;
  co.oci.cpu_millis = 0;
  int rc = dibba_containerd_container_run(p->m->ctd, &co, on_pause_run, p);
  if (rc < 0) {
    runargs_free(ra);
    p->pause_ra = NULL;
  }
  return rc;
}

/* ---- step: CNI ---- */

static void on_cni(dibba_cni_t *cni, const dibba_cni_status_t *st, void *data) {
  (void)cni;
  pod_t *p = data;
  int step = p->steps[p->si];
  if (step == S_CNI_ADD) {
    if (st->status == 0) {
      snprintf(p->ip, sizeof p->ip, "%s", st->ip4[0] ? st->ip4 : st->ip6);
    } else {
      job_error(p, st->status, "CNI ADD", st->error);
    }
  } else if (st->status < 0 && st->status != -ENOENT) {
    job_error(p, st->status, "CNI DEL", st->error);
  } else {
    p->ip[0] = '\0';
  }
  step_done(p);
}

static int cni_add(pod_t *p, char *err, size_t errlen);

static void on_cni_stale(dibba_cni_t *cni, const dibba_cni_status_t *st, void *data) {
  (void)cni;
  pod_t *p = data;
  char err[DIBBA_CNI_ERR_MAX];
  int rc = st->status < 0 && st->status != -ENOENT ? st->status : cni_add(p, err, sizeof err);
  if (rc == 0)
    return;
  job_error(p, rc, "CNI ADD", st->status < 0 ? st->error : err);
  step_done(p);
}

static int cni_add(pod_t *p, char *err, size_t errlen) {
  const Dibba__V1__Pod *pod = p->pod;
  size_t np = 0;
  for (size_t i = 0; i < pod->spec->n_containers; i++)
    np += pod->spec->containers[i]->n_ports;
  dibba_cni_port_mapping_t *pm = dibba_xcalloc(np + 1, sizeof *pm);
  static const char *const protos[] = {"tcp", "udp", "sctp"};
  np = 0;
  for (size_t i = 0; i < pod->spec->n_containers; i++)
    for (size_t j = 0; j < pod->spec->containers[i]->n_ports; j++) {
      const Dibba__V1__ContainerPort *cp = pod->spec->containers[i]->ports[j];
      if (cp->host_port <= 0)
        continue;
      pm[np].host_port = cp->host_port;
      pm[np].container_port = cp->container_port;
      pm[np].protocol = protos[cp->protocol <= 2 ? cp->protocol : 0];
      pm[np].host_ip = cp->host_ip && *cp->host_ip ? cp->host_ip : NULL;
      np++;
    }
  const Dibba__V1__RuntimeOverrides *ro = pod->runtime;
  dibba_cni_req_t req = {.container_id = p->sandbox_id,
                         .net = ro && ro->cni_network && *ro->cni_network ? ro->cni_network : p->m->net_name,
                         .ifname = ro && ro->cni_ifname && *ro->cni_ifname ? ro->cni_ifname : p->m->ifname,
                         .netns_path = p->netns_path,
                         .pod_ns = p->ns,
                         .pod_name = p->name,
                         .port_mappings = pm,
                         .n_port_mappings = np};
  int rc = dibba_cni_add(p->m->cni, &req, on_cni, p, err, errlen);
  free(pm);
  return rc;
}

/* ---- steps on app containers ---- */

static void on_app_gone(dibba_containerd_t *ctd, int err, const char *msg, void *data) {
  (void)ctd;
  ctr_t *c = data;
  if (err < 0)
    job_error(c->pod, err, "container delete", msg);
  step_done(c->pod);
}

static void on_app_stopped(dibba_containerd_t *ctd, int err, const char *msg, uint32_t status, int oom, void *data) {
  (void)ctd;
  (void)msg;
  ctr_t *c = data;
  if (err == 0)
    dibba__ctr_exited(c, status, oom, 0, 0);
  step_done(c->pod);
}

static void on_sandbox_gone(dibba_containerd_t *ctd, int err, const char *msg, void *data) {
  (void)ctd;
  pod_t *p = data;
  if (err < 0)
    job_error(p, err, "pause delete", msg);
  p->sb_pid = 0;
  step_done(p);
}

static void job_run(pod_t *p) {
  char err[DIBBA_CNI_ERR_MAX];
  int rc;
  for (;;) {
    if (p->app_ops > 0) {
      p->job_waiting = 1; /* resumed when the app operations in flight are done */
      return;
    }
    p->job_waiting = 0;
    int step = p->steps[p->si];
    if (step == S_END || p->m->closing || (p->job == JOB_UP && (p->job_err || p->deleting))) {
      job_end(p);
      return;
    }
    p->par = 1; /* one for the step itself, released below */
    pod_hold(p);
    rc = 0;
    switch (step) {
    case S_DIRS:
    case S_RM_DIRS:
      p->work.data = p;
      if ((rc = uv_queue_work(p->m->loop, &p->work, work_dirs, after_dirs)) == 0)
        p->par++;
      break;
    case S_NETNS:
      if ((rc = dibba_netns_create(p->m->loop, p->m->netns_dir, p->netns_name, on_netns, p)) == 0)
        p->par++;
      break;
    case S_NETNS_DEL:
      if ((rc = dibba_netns_delete(p->m->loop, p->m->netns_dir, p->netns_name, on_netns, p)) == 0)
        p->par++;
      break;
    case S_PAUSE:
      if ((rc = start_pause(p)) == 0)
        p->par++;
      break;
    case S_CNI_ADD:
      if ((rc = cni_add(p, err, sizeof err)) == -EEXIST) {
        /* A cached ADD from an earlier sandbox of this pod: DEL it first, then ADD. */
        dibba_cni_req_t del = {.container_id = p->sandbox_id};
        rc = dibba_cni_del(p->m->cni, &del, on_cni_stale, p, err, sizeof err);
      }
      if (rc == 0)
        p->par++;
      else
        job_error(p, rc, "CNI ADD", err);
      rc = 0;
      break;
    case S_CNI_DEL: {
      dibba_cni_req_t del = {.container_id = p->sandbox_id};
      if ((rc = dibba_cni_del(p->m->cni, &del, on_cni, p, err, sizeof err)) == 0)
        p->par++;
      else if (rc != -ENOENT)
        job_error(p, rc, "CNI DEL", err);
      rc = 0;
      break;
    }
    case S_DEL_SANDBOX:
      if ((rc = dibba_containerd_container_delete(p->m->ctd, p->m->ns, p->sandbox_id, on_sandbox_gone, p)) == 0)
        p->par++;
      break;
    case S_STOP_APPS:
    case S_DEL_APPS:
      for (size_t i = 0; i < p->n; i++) {
        ctr_t *c = &p->c[i];
        if (step == S_STOP_APPS) {
          if (c->state != CS_RUNNING)
            continue;
          int64_t g = p->pod ? p->pod->spec->termination_grace_period_seconds : 0;
          uint64_t grace = g > 0 ? (uint64_t)g * 1000 : g < 0 ? 1 : 30000;
          rc = dibba_containerd_container_stop(p->m->ctd, p->m->ns, c->id, grace, on_app_stopped, c);
        } else {
          rc = dibba_containerd_container_delete(p->m->ctd, p->m->ns, c->id, on_app_gone, c);
        }
        if (rc == 0)
          p->par++;
        else
          job_error(p, rc, "container", c->id);
      }
      rc = 0;
      break;
    }
    if (rc < 0)
      job_error(p, rc, "pod step", NULL);
    if (p->par > 1) {
      p->par--; /* the step's own hold stays until the last callback */
      return;
    }
    /* Nothing async was started: move on synchronously. */
    p->par = 0;
    p->si++;
    p->ops--;
  }
}

/* ---------------- app containers ---------------- */

int dibba__ctr_should_restart(const ctr_t *c) {
  int policy = c->pod->pod ? (int)c->pod->pod->spec->restart_policy : DIBBA__V1__RESTART_POLICY__Never;
  if (policy == DIBBA__V1__RESTART_POLICY__Always)
    return 1;
  return policy == DIBBA__V1__RESTART_POLICY__OnFailure && c->term.exit_code != 0;
}

static void on_ctr_run(dibba_containerd_t *ctd, int err, const char *msg, uint32_t pid, void *data) {
  (void)ctd;
  ctr_t *c = data;
  pod_t *p = c->pod;
  c->busy = 0;
  p->app_ops--;
  runargs_free(c->ra);
  c->ra = NULL;
  if (!p->m->closing && !p->deleting && p->job == JOB_NONE) {
    if (err < 0) {
      c->state = CS_WAITING;
      c->wait_reason = "CreateContainerError";
      snprintf(c->msg, sizeof c->msg, "%s", msg);
      c->restart_at = uv_now(p->m->loop) + dibba_pod_backoff_ms(p->m->backoff_base, p->m->backoff_max, c->backoff_n++);
      pod_schedule(p);
    } else {
      if (c->ever_started)
        c->restart_count++;
      c->ever_started = 1;
      c->state = CS_RUNNING;
      c->pid = pid;
      c->oom = 0;
      c->started_ms = dibba_now_ms();
      c->run_mono = uv_now(p->m->loop);
      c->msg[0] = '\0';
      if (c->early_pid == pid && pid) {
        dibba__ctr_exited(c, c->early_status, 0, pid, 0);
        c->early_pid = 0;
      }
    }
    pod_changed(p);
  }
  pod_release(p);
}

static void ctr_start(ctr_t *c) {
  pod_t *p = c->pod;
  const Dibba__V1__Container *s = c->spec;
  const Dibba__V1__PodSpec *ps = p->pod->spec;
  if (c->busy || p->job != JOB_NONE || p->deleting || p->m->closing || p->sb != SB_READY)
    return;
  c->restart_at = 0;
  c->busy = 1;
  c->early_pid = 0;
  c->wait_reason = c->ever_started ? "CrashLoopBackOff" : "ContainerCreating";
  runargs_t *ra = c->ra = dibba_xcalloc(1, sizeof *ra);
  snprintf(ra->ipc, sizeof ra->ipc, "/proc/%u/ns/ipc", p->sb_pid);
  snprintf(ra->uts, sizeof ra->uts, "/proc/%u/ns/uts", p->sb_pid);
  snprintf(ra->pidns, sizeof ra->pidns, "/proc/%u/ns/pid", p->sb_pid);
  dibba_oci_namespace_t *nss = ra->nss;
  nss[0] = (dibba_oci_namespace_t){"network", p->netns_path}; /* the pinned path, never /proc/<pid>/ns/net */
  nss[1] = (dibba_oci_namespace_t){"ipc", ra->ipc};
  nss[2] = (dibba_oci_namespace_t){"uts", ra->uts};
  nss[3] = (dibba_oci_namespace_t){"pid", ra->pidns};
  nss[4] = (dibba_oci_namespace_t){"mount", NULL};
  const char **env = ra->env = dibba_xcalloc(s->n_env + 1, sizeof *env);
  char **envs = ra->envs = dibba_xcalloc(s->n_env + 1, sizeof *envs);
  ra->n_env = s->n_env;
  for (size_t i = 0; i < s->n_env; i++)
    env[i] = envs[i] = dibba_xasprintf("%s=%s", s->env[i]->name, s->env[i]->value ? s->env[i]->value : "");
  dibba_oci_mount_t *mounts = ra->mounts = dibba_xcalloc(s->n_volume_mounts + 1, sizeof *mounts);
  char **srcs = ra->srcs = dibba_xcalloc(s->n_volume_mounts + 1, sizeof *srcs);
  ra->n_mounts = s->n_volume_mounts;
  for (size_t i = 0; i < s->n_volume_mounts; i++) {
    const Dibba__V1__VolumeMount *vm = s->volume_mounts[i];
    const char *base = NULL;
    char *own = NULL;
    for (size_t j = 0; j < ps->n_volumes; j++)
      if (strcmp(ps->volumes[j]->name, vm->name) == 0)
        base = ps->volumes[j]->source_case == DIBBA__V1__VOLUME__SOURCE_HOST_PATH
                   ? ps->volumes[j]->host_path->path
                   : (own = dibba_xasprintf("%s/volumes/%s", p->dir, vm->name));
    srcs[i] = vm->sub_path && *vm->sub_path ? dibba_xasprintf("%s/%s", base, vm->sub_path) : dibba_xstrdup(base);
    free(own);
    mounts[i].destination = vm->mount_path;
    mounts[i].source = srcs[i];
    mounts[i].readonly = vm->read_only;
    mounts[i].recursive = 1;
  }
  const char **labels = ra->labels;
  size_t nl;
  labels_for(p, c->name, "app", labels, &nl);
  dibba_container_opts_t co = {.id = c->id,
                               .ns = p->m->ns,
                               .image = s->image,
                               .pod = p->uid,
                               .labels = labels,
                               .n_labels = nl,
                               .logger = p->m->logger,
                               .log_path = c->log_path,
                               .log_max_size = 10u << 20,
                               .log_max_files = 2};
  dibba_oci_opts_t *o = &co.oci;
  o->command = s->n_command ? (const char *const *)s->command : NULL;
  o->n_command = s->n_command;
  o->args = s->n_args ? (const char *const *)s->args : NULL;
  o->n_args = s->n_args;
  o->env = env;
  o->n_env = s->n_env;
  o->working_dir = s->working_dir && *s->working_dir ? s->working_dir : NULL;
  const Dibba__V1__ResourceList *lim = s->resources ? s->resources->limits : NULL;
  if (lim && lim->cpu && *lim->cpu)
    dibba_pod_parse_cpu(lim->cpu, &o->cpu_millis);
  if (lim && lim->memory && *lim->memory)
    dibba_pod_parse_memory(lim->memory, &o->memory_bytes);
  o->namespaces = nss;
  o->n_namespaces = 5;
  o->mounts = mounts;
  o->n_mounts = s->n_volume_mounts;
  pod_hold(p);
  p->app_ops++;
  int rc = dibba_containerd_container_run(p->m->ctd, &co, on_ctr_run, c);
  if (rc < 0)
    on_ctr_run(p->m->ctd, rc, "invalid container options", 0, c);
}

void dibba__ctr_exited(ctr_t *c, uint32_t status, int oom, uint32_t pid, int64_t finished_ms) {
  pod_t *p = c->pod;
  if (c->busy && pid) {
    /* The exit of a task whose start has not been reported yet: applied when it is. */
    c->early_pid = pid;
    c->early_status = status;
    return;
  }
  if (c->state != CS_RUNNING || (pid && c->pid && pid != c->pid))
    return;
  c->state = CS_TERMINATED;
  c->term.exit_code = (int)status;
  c->term.started_ms = c->started_ms;
  c->term.finished_ms = finished_ms > 0 ? finished_ms : dibba_now_ms();
  c->term.reason = oom || c->oom ? "OOMKilled" : status == 0 ? "Completed" : "Error";
  if (!p->deleting && !p->m->closing && p->job == JOB_NONE && dibba__ctr_should_restart(c)) {
    /* A container that ran long enough starts over with the base delay, as kubelet does. */
    if (uv_now(p->m->loop) - c->run_mono > 2 * p->m->backoff_max)
      c->backoff_n = 0;
    c->last = c->term;
    c->has_last = 1;
    c->state = CS_WAITING;
    c->wait_reason = "CrashLoopBackOff";
    snprintf(c->msg, sizeof c->msg, "back-off restarting failed container %s", c->name);
    c->restart_at = uv_now(p->m->loop) + dibba_pod_backoff_ms(p->m->backoff_base, p->m->backoff_max, c->backoff_n++);
    pod_schedule(p);
  }
  pod_changed(p);
}

void dibba__ctr_oom(ctr_t *c) {
  c->oom = 1;
  if (c->state == CS_TERMINATED && c->term.exit_code != 0) {
    c->term.reason = "OOMKilled";
    pod_changed(c->pod);
  } else if (c->has_last && c->state == CS_WAITING && c->last.exit_code != 0) {
    c->last.reason = "OOMKilled";
    pod_changed(c->pod);
  }
}

void dibba__pod_sandbox_died(pod_t *p) {
  if (p->job != JOB_NONE || p->deleting || p->sb != SB_READY || p->m->closing)
    return;
  dibba_log_warn("pod", json_pack("{s:s, s:s}", "pod", p->name, "namespace", p->ns), "sandbox exited");
  p->sb = SB_DOWN;
  for (size_t i = 0; i < p->n; i++) {
    ctr_t *c = &p->c[i];
    c->restart_at = 0;
    if (c->state == CS_RUNNING) {
      c->state = CS_TERMINATED;
      c->term =
          (ctr_term_t){.exit_code = 137, .reason = "Error", .started_ms = c->started_ms, .finished_ms = dibba_now_ms()};
      if (p->pod->spec->restart_policy != DIBBA__V1__RESTART_POLICY__Never) {
        c->last = c->term;
        c->has_last = 1;
        c->state = CS_WAITING;
        c->wait_reason = "ContainerCreating";
      }
    }
  }
  uv_timer_stop(&p->timer);
  pod_changed(p);
  job_start(p, JOB_RECREATE);
}

static void pod_tick(uv_timer_t *t) {
  pod_t *p = t->data;
  dibba__pod_flush_waiters(p);
  uint64_t now = uv_now(p->m->loop);
  for (size_t i = 0; i < p->n; i++)
    if (p->c[i].restart_at && p->c[i].restart_at <= now)
      ctr_start(&p->c[i]);
  pod_schedule(p);
}

/* Start what is due; used after adoption. */
void dibba__pod_kick(pod_t *p) {
  for (size_t i = 0; i < p->n; i++)
    if (!p->c[i].ever_started && p->c[i].state == CS_WAITING && !p->c[i].restart_at)
      p->c[i].restart_at = uv_now(p->m->loop);
  pod_schedule(p);
}

static void pod_release(pod_t *p) {
  if (--p->ops > 0)
    return;
  if (p->discarded) {
    if (!uv_is_closing((uv_handle_t *)&p->timer))
      uv_close((uv_handle_t *)&p->timer, on_timer_closed);
    return;
  }
  if (p->m->closing)
    return;
  if (p->job != JOB_NONE && (p->job_waiting || p->par == 0))
    job_run(p);
}

/* ---------------- public: create / delete / get / list ---------------- */

void dibba__pod_start(pod_t *p) {
  p->sb = SB_STARTING;
  p->reason[0] = p->message[0] = '\0';
  for (size_t i = 0; i < p->n; i++) {
    p->c[i].state = CS_WAITING;
    p->c[i].wait_reason = "ContainerCreating";
  }
  pod_changed(p);
  job_start(p, JOB_UP);
}

int dibba__pod_create(dibba_pod_mgr_t *m, Dibba__V1__Pod *copy, dibba_pod_create_cb cb, void *data) {
  char hash[17];
  const char *ns = pod_ns_of(copy);
  free(dibba_pod_normalized(copy, hash));
  pod_t *p = dibba__pod_find(m, ns, copy->metadata->name, 1);
  if (p && p->deleting) {
    /* Created again while the old one goes away: start after the delete. */
    waiter_t *w = dibba_xcalloc(1, sizeof *w);
    w->pending_create = copy;
    w->ccb = cb;
    w->data = data;
    w->next = p->delete_waiters;
    p->delete_waiters = w;
    return 0;
  }
  if (p && strcmp(p->hash, hash) != 0) {
    protobuf_c_message_free_unpacked(&copy->base, NULL);
    return -EEXIST;
  }
  if (!p) {
    char uid[DIBBA_ID_LEN + 1], key[9];
    const char *u = copy->metadata->uid && *copy->metadata->uid ? copy->metadata->uid : NULL;
    for (int tries = 0; !u || tries == 0; tries++) {
      if (!copy->metadata->uid || !*copy->metadata->uid)
        dibba_id_new(uid), u = uid;
      key_of(u, key);
      if (!dibba__pod_find_key(m, key))
        break;
      if (copy->metadata->uid && *copy->metadata->uid) {
        protobuf_c_message_free_unpacked(&copy->base, NULL);
        return -EEXIST;
      }
      u = NULL;
    }
    p = dibba__pod_new(m, copy, u, NULL);
    p->born = ++m->gen;
    copy = NULL;
    dibba__pod_start(p);
  } else if (p->sb == SB_FAILED && p->job == JOB_NONE && p->reason[0] &&
             strcmp(p->reason, "SandboxCreateFailed") == 0) {
    dibba__pod_start(p);
  }
  if (copy)
    protobuf_c_message_free_unpacked(&copy->base, NULL);
  waiter_t *w = dibba_xcalloc(1, sizeof *w);
  w->ccb = cb;
  w->data = data;
  w->next = p->create_waiters;
  p->create_waiters = w;
  if (pod_phase(p) != DIBBA__V1__POD_PHASE__Pending && p->job == JOB_NONE) {
    /* Already past Pending: answer on the next loop turn, never from inside this call. */
    pod_hold(p);
    p->kick_pending = 1;
    uv_timer_start(&p->timer, pod_tick, 0, 0);
    pod_release(p);
  }
  return 0;
}

void dibba__pod_delete(pod_t *p, dibba_pod_done_cb cb, void *data) {
  waiter_t *w = dibba_xcalloc(1, sizeof *w);
  w->dcb = cb;
  w->data = data;
  w->next = p->delete_waiters;
  p->delete_waiters = w;
  if (p->deleting)
    return;
  p->deleting = 1;
  p->m->last_delete_gen = ++p->m->gen;
  uv_timer_stop(&p->timer);
  for (size_t i = 0; i < p->n; i++)
    p->c[i].restart_at = 0;
  if (p->job == JOB_NONE)
    job_start(p, JOB_DELETE);
  /* else job_end switches to the delete */
}

Dibba__V1__Pod *dibba__pod_view(const pod_t *p) {
  json_t *j = dibba_pbjson_from_message(&p->pod->base, 0);
  json_t *md = json_object_get(j, "metadata");
  json_object_set_new(md, "uid", json_string(p->uid));
  json_object_set_new(md, "namespace", json_string(p->ns));
  json_object_set_new(j, "status", dibba__pod_status_json(p));
  ProtobufCMessage *msg = NULL;
  if (dibba_pbjson_to_message(j, &dibba__v1__pod__descriptor, NULL, &msg, NULL) < 0)
    abort(); /* built from valid messages */
  json_decref(j);
  return (Dibba__V1__Pod *)msg;
}

void dibba__pod_flush_waiters(pod_t *p) {
  if (p->kick_pending && pod_phase(p) != DIBBA__V1__POD_PHASE__Pending) {
    p->kick_pending = 0;
    finish_waiters(p, 0, NULL);
  }
}
