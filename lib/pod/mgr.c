/* SPDX-License-Identifier: Apache-2.0 */
/* The pod manager: options, containerd task events, periodic and reconnect-time reconcile, public calls. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dibba/alloc.h"
#include "dibba/log.h"
#include "dibba/netns.h"
#include "dibba/pbjson.h"

#include "pod_int.h"

#define RESUBSCRIBE_MS 1000

struct rec_s {
  dibba_pod_mgr_t *m;
  Dibba__V1__Pod **desired;
  size_t n_desired;
  int given;
  uint64_t since; /* given: pods born after this generation are kept, and no desired pod is created when a
                     delete happened after it (the desired set was read before them) */
  waiter_t *waiters;
  Containerd__Services__Containers__V1__ListContainersResponse *ctrs;
  Containerd__Services__Tasks__V1__ListTasksResponse *tasks;
  uv_fs_t scan;
  int scanned; /* scan holds a result to clean up */
  int pending;
  int err;
  char msg[256];
};

static void rec_start(rec_t *r);
static void rec_cancel(rec_t *r);

/* ---------------- manager lifetime ---------------- */

static void on_handle_closed(uv_handle_t *h) {
  dibba_pod_mgr_t *m = h->data;
  m->handles_open--;
  dibba__mgr_maybe_closed(m);
}

void dibba__mgr_maybe_closed(dibba_pod_mgr_t *m) {
  if (!m->closing || m->handles_open || m->live_pods || m->rec || m->sub)
    return;
  dibba_pod_close_cb cb = m->close_cb;
  void *data = m->close_data;
  free(m->ns);
  free(m->netns_dir);
  free(m->cni_cache_dir);
  free(m->pod_dir);
  free(m->log_dir);
  free(m->logger);
  free(m->pause_image);
  free(m->net_name);
  free(m->ifname);
  free(m->host_name);
  free(m);
  if (cb)
    cb(NULL, data);
}

static void on_reconcile_timer(uv_timer_t *t);

int dibba_pod_mgr_new(uv_loop_t *loop, const dibba_pod_mgr_opts_t *o, dibba_pod_mgr_t **out) {
  if (!loop || !o || !o->ctd || !o->cni || !o->cni_state_dir || !o->pod_dir || o->pod_dir[0] != '/' || !o->log_dir ||
      o->log_dir[0] != '/' || !o->logger || o->logger[0] != '/')
    return -EINVAL;
  dibba_pod_mgr_t *m = dibba_xcalloc(1, sizeof *m);
  char host[256];
  size_t hl = sizeof host;
  if (uv_os_gethostname(host, &hl) < 0)
    snprintf(host, sizeof host, "localhost");
  m->loop = loop;
  m->ctd = o->ctd;
  m->cni = o->cni;
  m->ns = dibba_xstrdup(o->ns ? o->ns : dibba_containerd_namespace(o->ctd));
  m->netns_dir = dibba_xstrdup(o->netns_dir ? o->netns_dir : DIBBA_POD_DEFAULT_NETNS_DIR);
  m->cni_cache_dir = dibba_xasprintf("%s/cni", o->cni_state_dir);
  m->pod_dir = dibba_xstrdup(o->pod_dir);
  m->log_dir = dibba_xstrdup(o->log_dir);
  m->logger = dibba_xstrdup(o->logger);
  m->pause_image = dibba_xstrdup(o->pause_image ? o->pause_image : DIBBA_POD_DEFAULT_PAUSE_IMAGE);
  m->net_name = o->net_name ? dibba_xstrdup(o->net_name) : NULL;
  m->ifname = o->ifname ? dibba_xstrdup(o->ifname) : NULL;
  m->host_name = dibba_xstrdup(host);
  m->backoff_base = o->backoff_base_ms ? o->backoff_base_ms : DIBBA_POD_BACKOFF_BASE_MS;
  m->backoff_max = o->backoff_max_ms ? o->backoff_max_ms : DIBBA_POD_BACKOFF_MAX_MS;
  m->reconcile_ms = o->reconcile_ms ? o->reconcile_ms : DIBBA_POD_RECONCILE_MS;
  m->keep_logs = o->keep_logs;
  m->status_cb = o->status_cb;
  m->data = o->data;
  uv_timer_init(loop, &m->reconcile_timer);
  uv_timer_init(loop, &m->sub_timer);
  m->reconcile_timer.data = m->sub_timer.data = m;
  m->handles_open = 2;
  if (m->reconcile_ms != UINT64_MAX)
    uv_timer_start(&m->reconcile_timer, on_reconcile_timer, m->reconcile_ms, m->reconcile_ms);
  *out = m;
  return 0;
}

void *dibba_pod_mgr_data(const dibba_pod_mgr_t *m) { return m->data; }

void dibba_pod_mgr_close(dibba_pod_mgr_t *m, dibba_pod_close_cb cb, void *data) {
  if (!m || m->closing)
    return;
  m->closing = 1;
  m->close_cb = cb;
  m->close_data = data;
  if (m->sub)
    dibba_grpc_call_cancel(m->sub);
  uv_close((uv_handle_t *)&m->reconcile_timer, on_handle_closed);
  uv_close((uv_handle_t *)&m->sub_timer, on_handle_closed);
  while (m->deferred) {
    deferred_t *d = m->deferred;
    m->deferred = d->next;
    d->cb(m, UV_ECANCELED, "pod manager closing", NULL, d->data);
    protobuf_c_message_free_unpacked(&d->pod->base, NULL);
    free(d);
  }
  while (m->pods) {
    pod_t *p = m->pods;
    waiter_t *w = p->create_waiters, *dw = p->delete_waiters;
    p->create_waiters = p->delete_waiters = NULL;
    dibba__pod_forget(p); /* unlinks p; it is freed once its operations in flight end */
    while (w) {
      waiter_t *next = w->next;
      w->ccb(m, UV_ECANCELED, "pod manager closing", NULL, w->data);
      free(w);
      w = next;
    }
    while (dw) {
      waiter_t *next = dw->next;
      if (dw->dcb)
        dw->dcb(m, UV_ECANCELED, "pod manager closing", dw->data);
      else if (dw->ccb)
        dw->ccb(m, UV_ECANCELED, "pod manager closing", NULL, dw->data);
      if (dw->pending_create)
        protobuf_c_message_free_unpacked(&dw->pending_create->base, NULL);
      free(dw);
      dw = next;
    }
  }
  if (m->rec_next) {
    rec_t *n = m->rec_next;
    m->rec_next = NULL;
    n->m = m;
    rec_cancel(n);
  }
  dibba__mgr_maybe_closed(m);
}

/* ---------------- events ---------------- */

static ctr_t *find_ctr(dibba_pod_mgr_t *m, const char *id, pod_t **sandbox_of) {
  *sandbox_of = NULL;
  for (pod_t *p = m->pods; p; p = p->next) {
    if (strcmp(p->sandbox_id, id) == 0) {
      *sandbox_of = p;
      return NULL;
    }
    for (size_t i = 0; i < p->n; i++)
      if (strcmp(p->c[i].id, id) == 0)
        return &p->c[i];
  }
  return NULL;
}

static int64_t ts_ms(const Google__Protobuf__Timestamp *t) { return t ? t->seconds * 1000 + t->nanos / 1000000 : 0; }

static void on_event(dibba_containerd_t *ctd, Containerd__Services__Events__V1__Envelope *env, void *data) {
  (void)ctd;
  dibba_pod_mgr_t *m = data;
  if (m->closing || !env->topic || strncmp(env->topic, "/tasks/", 7) != 0)
    return;
  ProtobufCMessage *ev = dibba_containerd_event_decode(env);
  if (!ev)
    return;
  pod_t *sb;
  if (ev->descriptor == &containerd__events__task_exit__descriptor) {
    Containerd__Events__TaskExit *x = (Containerd__Events__TaskExit *)ev;
    if (x->id && x->container_id && strcmp(x->id, x->container_id) == 0) { /* the init process, not an exec */
      ctr_t *c = find_ctr(m, x->container_id, &sb);
      if (sb && x->pid == sb->sb_pid)
        dibba__pod_sandbox_died(sb);
      else if (c)
        dibba__ctr_exited(c, x->exit_status, 0, x->pid, ts_ms(x->exited_at));
    }
  } else if (ev->descriptor == &containerd__events__task_oom__descriptor) {
    ctr_t *c = find_ctr(m, ((Containerd__Events__TaskOOM *)ev)->container_id, &sb);
    if (c)
      dibba__ctr_oom(c);
  }
  protobuf_c_message_free_unpacked(ev, NULL);
}

static void subscribe(dibba_pod_mgr_t *m);

static void on_sub_timer(uv_timer_t *t) { subscribe(t->data); }

static void on_sub_done(dibba_containerd_t *ctd, int err, const dibba_grpc_status_t *st, void *data) {
  (void)ctd;
  (void)st;
  dibba_pod_mgr_t *m = data;
  m->sub = NULL;
  if (m->closing) {
    dibba__mgr_maybe_closed(m);
    return;
  }
  dibba_log_warn("pod", NULL, "containerd event stream ended: %s", err ? uv_strerror(err) : "eof");
  if (m->ready)
    uv_timer_start(&m->sub_timer, on_sub_timer, RESUBSCRIBE_MS, 0);
}

static void subscribe(dibba_pod_mgr_t *m) {
  if (m->sub || m->closing || !m->ready)
    return;
  char *filter = dibba_xasprintf("namespace==\"%s\"", m->ns);
  char *filters[] = {filter};
  Containerd__Services__Events__V1__SubscribeRequest req = CONTAINERD__SERVICES__EVENTS__V1__SUBSCRIBE_REQUEST__INIT;
  req.n_filters = 1;
  req.filters = filters;
  dibba_containerd_call_opts_t o = {.timeout_ms = UINT64_MAX / 2};
  if (dibba_containerd_events_subscribe(m->ctd, &o, &req, on_event, on_sub_done, m, &m->sub) < 0) {
    m->sub = NULL;
    uv_timer_start(&m->sub_timer, on_sub_timer, RESUBSCRIBE_MS, 0);
  }
  free(filter);
}

void dibba_pod_mgr_containerd_state(dibba_pod_mgr_t *m, dibba_grpc_state_t state) {
  if (!m || m->closing)
    return;
  m->ready = state == DIBBA_GRPC_READY;
  if (!m->ready)
    return;
  subscribe(m);
  dibba_pod_reconcile(m, NULL, 0, NULL, NULL);
}

static void on_reconcile_timer(uv_timer_t *t) {
  dibba_pod_mgr_t *m = t->data;
  if (m->ready)
    dibba_pod_reconcile(m, NULL, 0, NULL, NULL);
}

/* ---------------- reconcile ---------------- */

static void rec_free(rec_t *r) {
  for (size_t i = 0; i < r->n_desired; i++)
    protobuf_c_message_free_unpacked(&r->desired[i]->base, NULL);
  free(r->desired);
  if (r->ctrs)
    protobuf_c_message_free_unpacked(&r->ctrs->base, NULL);
  if (r->tasks)
    protobuf_c_message_free_unpacked(&r->tasks->base, NULL);
  free(r);
}

/* A queued reconcile that will not run: its callbacks get UV_ECANCELED. */
static void rec_cancel(rec_t *r) {
  while (r->waiters) {
    waiter_t *w = r->waiters;
    r->waiters = w->next;
    w->dcb(r->m, UV_ECANCELED, "pod manager closing", w->data);
    free(w);
  }
  rec_free(r);
}

static void on_created_by_rec(dibba_pod_mgr_t *m, int err, const char *msg, const Dibba__V1__PodStatus *st,
                              void *data) {
  (void)m;
  (void)st;
  (void)data;
  if (err < 0 && err != UV_ECANCELED)
    dibba_log_warn("pod", NULL, "reconcile: create failed: %s", msg);
}

static void rec_finish(rec_t *r) {
  dibba_pod_mgr_t *m = r->m;
  waiter_t *w = r->waiters;
  m->rec = NULL;
  if (!m->closing && !m->reconciled) {
    m->reconciled = 1;
    while (m->deferred) {
      deferred_t *d = m->deferred;
      m->deferred = d->next;
      int rc = dibba__pod_create(m, d->pod, d->cb, d->data);
      if (rc < 0)
        d->cb(m, rc, "a pod of that name exists with a different spec", NULL, d->data);
      free(d);
    }
  }
  while (w) {
    waiter_t *next = w->next;
    if (w->dcb)
      w->dcb(m->closing ? NULL : m, m->closing ? UV_ECANCELED : r->err, r->msg, w->data);
    free(w);
    w = next;
  }
  rec_free(r);
  if (m->closing) {
    dibba__mgr_maybe_closed(m);
    return;
  }
  if (m->rec_next) {
    rec_t *n = m->rec_next;
    m->rec_next = NULL;
    rec_start(n);
  }
}

static void rec_fail(rec_t *r, int err, const char *what) {
  r->err = err;
  snprintf(r->msg, sizeof r->msg, "reconcile: %s: %s", what, uv_strerror(err));
  rec_finish(r);
}

static void on_rec_op(dibba_pod_mgr_t *m, int err, const char *msg, void *data) {
  (void)m;
  rec_t *r = data;
  if (err < 0 && !r->err) {
    r->err = err;
    snprintf(r->msg, sizeof r->msg, "reconcile: removing an orphan: %s", msg);
  }
  if (--r->pending == 0)
    rec_finish(r);
}

static const char *clabel(const Containerd__Services__Containers__V1__Container *c, const char *k) {
  for (size_t i = 0; i < c->n_labels; i++)
    if (strcmp(c->labels[i]->key, k) == 0)
      return c->labels[i]->value;
  return NULL;
}

static const Containerd__V1__Types__Process *find_task(rec_t *r, const char *id) {
  /* Tasks.List names a task by id (its container's id); container_id is often left empty. */
  for (size_t i = 0; r->tasks && i < r->tasks->n_tasks; i++) {
    const Containerd__V1__Types__Process *t = r->tasks->tasks[i];
    if (strcmp(t->container_id && *t->container_id ? t->container_id : t->id, id) == 0)
      return t;
  }
  return NULL;
}

static const Containerd__Services__Containers__V1__Container *find_cid(rec_t *r, const char *id) {
  for (size_t i = 0; i < r->ctrs->n_containers; i++)
    if (strcmp(r->ctrs->containers[i]->id, id) == 0)
      return r->ctrs->containers[i];
  return NULL;
}

static Dibba__V1__Pod *find_desired(rec_t *r, const char *ns, const char *name, int *idx) {
  for (size_t i = 0; i < r->n_desired; i++) {
    const Dibba__V1__Pod *d = r->desired[i];
    const char *dns = d->metadata->namespace_ && *d->metadata->namespace_ ? d->metadata->namespace_ : "default";
    if (strcmp(dns, ns) == 0 && strcmp(d->metadata->name, name) == 0) {
      *idx = (int)i;
      return r->desired[i];
    }
  }
  return NULL;
}

static void check_running(rec_t *r, pod_t *p) {
  if (p->job != JOB_NONE || p->deleting)
    return;
  if (p->sb == SB_READY) {
    const Containerd__V1__Types__Process *t = find_task(r, p->sandbox_id);
    if (!t || t->status != CONTAINERD__V1__TYPES__STATUS__RUNNING) {
      dibba__pod_sandbox_died(p);
      return;
    }
  }
  for (size_t i = 0; i < p->n; i++) {
    ctr_t *c = &p->c[i];
    if (c->state != CS_RUNNING || c->busy)
      continue;
    const Containerd__V1__Types__Process *t = find_task(r, c->id);
    if (!t)
      dibba__ctr_exited(c, 255, 0, 0, 0); /* the task is gone: its exit status is unknown */
    else if (t->status == CONTAINERD__V1__TYPES__STATUS__STOPPED)
      dibba__ctr_exited(c, t->exit_status, 0, t->pid, ts_ms(t->exited_at));
  }
}

static void adopt(rec_t *r, Dibba__V1__Pod *pod, const char *uid) {
  dibba_pod_mgr_t *m = r->m;
  pod_t *p = dibba__pod_new(m, pod, uid, NULL);
  const Containerd__Services__Containers__V1__Container *sbc = find_cid(r, p->sandbox_id);
  const Containerd__V1__Types__Process *st = find_task(r, p->sandbox_id);
  json_t *cached = NULL;
  p->sb = SB_READY;
  p->start_ms = sbc ? ts_ms(sbc->created_at) : 0;
  if (st)
    p->sb_pid = st->pid;
  if (dibba_cni_cached(m->cni, p->sandbox_id, &cached) == 0) {
    char ip4[INET_ADDRSTRLEN] = "", ip6[INET6_ADDRSTRLEN] = "";
    const char *ifn = json_string_value(json_object_get(cached, "ifName"));
    dibba_cni_result_ips(json_object_get(cached, "result"), ifn ? ifn : "eth0", ip4, ip6);
    snprintf(p->ip, sizeof p->ip, "%s", ip4[0] ? ip4 : ip6);
    json_decref(cached);
  }
  for (size_t i = 0; i < p->n; i++) {
    ctr_t *c = &p->c[i];
    const Containerd__Services__Containers__V1__Container *cc = find_cid(r, c->id);
    const Containerd__V1__Types__Process *t = find_task(r, c->id);
    c->ever_started = cc != NULL;
    if (t &&
        (t->status == CONTAINERD__V1__TYPES__STATUS__RUNNING || t->status == CONTAINERD__V1__TYPES__STATUS__STOPPED)) {
      c->state = CS_RUNNING;
      c->pid = t->pid;
      c->started_ms = cc ? ts_ms(cc->created_at) : 0;
      c->run_mono = uv_now(m->loop);
    }
  }
  dibba_log_info("pod", json_pack("{s:s, s:s, s:s}", "namespace", p->ns, "pod", p->name, "uid", uid), "re-adopted pod");
  /* No cached CNI result: the worker died during CNI ADD (or before it), so the sandbox has no network, or a
   * half-made one nobody recorded. Recreate it: teardown runs CNI DEL, which frees what ADD had allocated. */
  int net_unknown = !p->pod->spec->host_network && p->ip[0] == '\0';
  if (net_unknown)
    dibba_log_warn("pod", json_pack("{s:s, s:s}", "namespace", p->ns, "pod", p->name),
                   "adopted sandbox has no CNI result: recreating it");
  if (!st || st->status != CONTAINERD__V1__TYPES__STATUS__RUNNING || net_unknown) {
    dibba__pod_sandbox_died(p);
    return;
  }
  /* Exits that happened while nobody watched go through the restart policy now. */
  for (size_t i = 0; i < p->n; i++) {
    const Containerd__V1__Types__Process *t = find_task(r, p->c[i].id);
    if (t && t->status == CONTAINERD__V1__TYPES__STATUS__STOPPED)
      dibba__ctr_exited(&p->c[i], t->exit_status, 0, 0, ts_ms(t->exited_at));
  }
  dibba__pod_kick(p);
}

static void orphan(rec_t *r, const char *uid, const char *key, const char *ns, const char *name) {
  pod_t *p = dibba__pod_new(r->m, NULL, uid, key);
  if (ns && name) {
    p->ns = dibba_xstrdup(ns);
    p->name = dibba_xstrdup(name);
    if (uid)
      p->log_dir = dibba_xasprintf("%s/%s_%s_%s", r->m->log_dir, ns, name, uid);
  }
  for (size_t i = 0; r->ctrs && uid && i < r->ctrs->n_containers; i++) {
    const Containerd__Services__Containers__V1__Container *c = r->ctrs->containers[i];
    const char *u = clabel(c, DIBBA_POD_LABEL_UID), *role = clabel(c, DIBBA_POD_LABEL_ROLE);
    if (u && strcmp(u, uid) == 0 && role && strcmp(role, "app") == 0)
      dibba__pod_add_orphan_ctr(p, c->id);
  }
  dibba_log_info("pod", json_pack("{s:s}", "sandbox", p->sandbox_id), "removing orphaned pod resources");
  r->pending++;
  dibba__pod_delete(p, on_rec_op, r);
}

static int hexkey(const char *s) {
  if (strlen(s) != 8)
    return 0;
  for (int i = 0; i < 8; i++)
    if (!strchr("0123456789abcdef", s[i]))
      return 0;
  return 1;
}

static void rec_apply(rec_t *r) {
  dibba_pod_mgr_t *m = r->m;
  char *used = dibba_xcalloc(r->n_desired + 1, 1);
  int idx;
  r->pending = 1;
  /* 1. pods in memory */
  for (pod_t *p = m->pods, *next; p; p = next) {
    next = p->next;
    if (p->deleting || !p->pod)
      continue;
    if (r->given) {
      Dibba__V1__Pod *d = find_desired(r, p->ns, p->name, &idx);
      char hash[17];
      if (p->born > r->since) {
        if (d)
          used[idx] = 1;
        check_running(r, p); /* newer than the desired set: the next reconcile decides */
        continue;
      }
      if (!d) {
        r->pending++;
        dibba__pod_delete(p, on_rec_op, r);
        continue;
      }
      free(dibba_pod_normalized(d, hash));
      if (strcmp(hash, p->hash) != 0) {
        used[idx] = 1;
        dibba__pod_delete(p, NULL, NULL);
        dibba__pod_create(m, dibba__pod_copy(d), on_created_by_rec, NULL); /* queued behind the delete */
        continue;
      }
      used[idx] = 1;
    }
    check_running(r, p);
  }
  /* 2. labelled containers of pods not in memory: adopt or remove */
  for (size_t i = 0; r->ctrs && i < r->ctrs->n_containers; i++) {
    const Containerd__Services__Containers__V1__Container *c = r->ctrs->containers[i];
    const char *uid = clabel(c, DIBBA_POD_LABEL_UID), *role = clabel(c, DIBBA_POD_LABEL_ROLE);
    const char *ns = clabel(c, DIBBA_POD_LABEL_NAMESPACE), *name = clabel(c, DIBBA_POD_LABEL_NAME);
    if (!uid || !role || !ns || !name || strncmp(c->id, "dp-", 3) != 0 || strlen(c->id) < 11)
      continue;
    char key[9];
    snprintf(key, sizeof key, "%.8s", c->id + 3);
    if (dibba__pod_find_key(m, key))
      continue; /* in memory (adopted or being removed) */
    const Containerd__Services__Containers__V1__Container *sbc = NULL;
    char sid[16];
    snprintf(sid, sizeof sid, "dp-%s", key);
    sbc = find_cid(r, sid);
    const char *hash = sbc ? clabel(sbc, DIBBA_POD_LABEL_HASH) : NULL;
    Dibba__V1__Pod *spec = NULL;
    if (r->given) {
      Dibba__V1__Pod *d = find_desired(r, ns, name, &idx);
      char dh[17];
      if (d && !used[idx] && !dibba__pod_find(m, ns, name, 1)) {
        free(dibba_pod_normalized(d, dh));
        if (hash && strcmp(hash, dh) == 0) {
          used[idx] = 1;
          spec = dibba__pod_copy(d);
        }
      }
    } else if (!dibba__pod_find(m, ns, name, 1)) {
      const char *text = sbc ? clabel(sbc, DIBBA_POD_LABEL_SPEC) : NULL;
      ProtobufCMessage *msg = NULL;
      char err[200], dh[17];
      if (text && dibba_pbjson_parse(text, strlen(text), &dibba__v1__pod__descriptor, NULL, &msg, NULL) == 0) {
        spec = (Dibba__V1__Pod *)msg;
        free(dibba_pod_normalized(spec, dh));
        if (dibba_pod_validate(spec, err, sizeof err) < 0 || !hash || strcmp(hash, dh) != 0) {
          protobuf_c_message_free_unpacked(msg, NULL);
          spec = NULL;
        }
      }
    }
    if (spec)
      adopt(r, spec, uid);
    else
      orphan(r, uid, key, ns, name);
  }
  /* 3. pinned netns and CNI cache entries of no pod in memory */
  char **names = NULL;
  size_t nn = 0;
  if (dibba_netns_list(m->netns_dir, &names, &nn) == 0)
    for (size_t i = 0; i < nn; i++)
      if (strncmp(names[i], "dibba-", 6) == 0 && hexkey(names[i] + 6) && !dibba__pod_find_key(m, names[i] + 6))
        orphan(r, NULL, names[i] + 6, NULL, NULL);
  dibba_netns_list_free(names, nn);
  uv_dirent_t de;
  while (r->scan.result >= 0 && uv_fs_scandir_next(&r->scan, &de) != UV_EOF) {
    char key[9];
    size_t len = strlen(de.name);
    if (len == 16 && strncmp(de.name, "dp-", 3) == 0 && strcmp(de.name + 11, ".json") == 0) {
      snprintf(key, sizeof key, "%.8s", de.name + 3);
      if (hexkey(key) && !dibba__pod_find_key(m, key))
        orphan(r, NULL, key, NULL, NULL);
    }
  }
  if (r->scanned)
    uv_fs_req_cleanup(&r->scan);
  r->scanned = 0;
  /* 4. desired pods that exist nowhere (unless one was deleted since the desired set was read) */
  for (size_t i = 0; i < r->n_desired && !(r->given && m->last_delete_gen > r->since); i++)
    if (!used[i] && !dibba__pod_find(m,
                                     r->desired[i]->metadata->namespace_ && *r->desired[i]->metadata->namespace_
                                         ? r->desired[i]->metadata->namespace_
                                         : "default",
                                     r->desired[i]->metadata->name, 0)) {
      int rc = dibba__pod_create(m, dibba__pod_copy(r->desired[i]), on_created_by_rec, NULL);
      if (rc < 0)
        dibba_log_warn("pod", NULL, "reconcile: create %s: %s", r->desired[i]->metadata->name, uv_strerror(rc));
    }
  free(used);
  on_rec_op(m, 0, "", r);
}

static void on_scan(uv_fs_t *req) {
  rec_t *r = req->data;
  r->scanned = 1;
  if (!r->m->closing) {
    rec_apply(r); /* cleans req up; r may be gone afterwards */
  } else {
    uv_fs_req_cleanup(req);
    rec_finish(r);
  }
}

static void on_tasks(dibba_containerd_t *ctd, int err, const dibba_grpc_status_t *st,
                     Containerd__Services__Tasks__V1__ListTasksResponse *resp, void *data) {
  (void)ctd;
  (void)st;
  rec_t *r = data;
  if (err < 0 || r->m->closing) {
    rec_fail(r, err < 0 ? err : UV_ECANCELED, "Tasks.List");
    return;
  }
  size_t len = protobuf_c_message_get_packed_size(&resp->base);
  uint8_t *buf = dibba_xmalloc(len + 1);
  protobuf_c_message_pack(&resp->base, buf);
  r->tasks = containerd__services__tasks__v1__list_tasks_response__unpack(NULL, len, buf);
  free(buf);
  r->scan.data = r;
  int rc = uv_fs_scandir(r->m->loop, &r->scan, r->m->cni_cache_dir, 0, on_scan);
  if (rc < 0) {
    r->scan.result = rc;
    rec_apply(r);
  }
}

static void on_ctrs(dibba_containerd_t *ctd, int err, const dibba_grpc_status_t *st,
                    Containerd__Services__Containers__V1__ListContainersResponse *resp, void *data) {
  (void)st;
  rec_t *r = data;
  if (err < 0 || r->m->closing) {
    rec_fail(r, err < 0 ? err : UV_ECANCELED, "Containers.List");
    return;
  }
  size_t len = protobuf_c_message_get_packed_size(&resp->base);
  uint8_t *buf = dibba_xmalloc(len + 1);
  protobuf_c_message_pack(&resp->base, buf);
  r->ctrs = containerd__services__containers__v1__list_containers_response__unpack(NULL, len, buf);
  free(buf);
  Containerd__Services__Tasks__V1__ListTasksRequest req = CONTAINERD__SERVICES__TASKS__V1__LIST_TASKS_REQUEST__INIT;
  dibba_containerd_call_opts_t o = {.ns = r->m->ns};
  int rc = dibba_containerd_tasks_list(ctd, &o, &req, on_tasks, r);
  if (rc < 0)
    rec_fail(r, rc, "Tasks.List");
}

static void rec_start(rec_t *r) {
  dibba_pod_mgr_t *m = r->m;
  m->rec = r;
  char *filter = dibba_xasprintf("labels.\"%s\"", DIBBA_POD_LABEL_ROLE);
  char *filters[] = {filter};
  Containerd__Services__Containers__V1__ListContainersRequest req =
      CONTAINERD__SERVICES__CONTAINERS__V1__LIST_CONTAINERS_REQUEST__INIT;
  req.n_filters = 1;
  req.filters = filters;
  dibba_containerd_call_opts_t o = {.ns = m->ns};
  int rc = dibba_containerd_containers_list(m->ctd, &o, &req, on_ctrs, r);
  free(filter);
  if (rc < 0)
    rec_fail(r, rc, "Containers.List");
}

int dibba_pod_reconcile(dibba_pod_mgr_t *m, const Dibba__V1__Pod *const *desired, size_t n, dibba_pod_done_cb cb,
                        void *data) {
  return dibba_pod_reconcile_since(m, desired, n, UINT64_MAX, cb, data);
}

uint64_t dibba_pod_mgr_generation(const dibba_pod_mgr_t *m) { return m->gen; }

int dibba_pod_reconcile_since(dibba_pod_mgr_t *m, const Dibba__V1__Pod *const *desired, size_t n, uint64_t since,
                              dibba_pod_done_cb cb, void *data) {
  if (m->closing)
    return -ECANCELED;
  rec_t *r = m->rec ? m->rec_next : NULL;
  if (!r) {
    r = dibba_xcalloc(1, sizeof *r);
    r->m = m;
  }
  if (desired || !r->given) {
    for (size_t i = 0; i < r->n_desired; i++)
      protobuf_c_message_free_unpacked(&r->desired[i]->base, NULL);
    free(r->desired);
    r->desired = dibba_xcalloc(n + 1, sizeof *r->desired);
    for (size_t i = 0; desired && i < n; i++)
      r->desired[i] = dibba__pod_copy(desired[i]);
    r->n_desired = desired ? n : 0;
    r->given = desired != NULL;
    r->since = since;
  }
  if (cb) {
    waiter_t *w = dibba_xcalloc(1, sizeof *w);
    w->dcb = cb;
    w->data = data;
    w->next = r->waiters;
    r->waiters = w;
  }
  if (m->rec)
    m->rec_next = r;
  else
    rec_start(r);
  return 0;
}

/* ---------------- public calls ---------------- */

int dibba_pod_create(dibba_pod_mgr_t *m, const Dibba__V1__Pod *pod, dibba_pod_create_cb cb, void *data, char *err,
                     size_t errlen) {
  if (m->closing)
    return -ECANCELED;
  int rc = dibba_pod_validate(pod, err, errlen);
  if (rc < 0)
    return rc;
  Dibba__V1__Pod *copy = dibba__pod_copy(pod);
  if (!m->reconciled) {
    deferred_t *d = dibba_xcalloc(1, sizeof *d), **pp = &m->deferred;
    d->pod = copy;
    d->cb = cb;
    d->data = data;
    while (*pp)
      pp = &(*pp)->next;
    *pp = d;
    if (!m->rec && m->ready)
      dibba_pod_reconcile(m, NULL, 0, NULL, NULL);
    return 0;
  }
  rc = dibba__pod_create(m, copy, cb, data);
  if (rc == -EEXIST)
    snprintf(err, errlen, "pod %s/%s exists with a different spec", pod->metadata->namespace_, pod->metadata->name);
  return rc;
}

typedef struct later_s {
  uv_timer_t t;
  dibba_pod_mgr_t *m;
  dibba_pod_done_cb cb;
  void *data;
} later_t;

static void on_later_closed(uv_handle_t *h) { free(h->data); }
static void on_later(uv_timer_t *t) {
  later_t *l = t->data;
  l->cb(l->m, 0, "", l->data);
  uv_close((uv_handle_t *)&l->t, on_later_closed);
}

int dibba_pod_delete(dibba_pod_mgr_t *m, const char *ns, const char *name, dibba_pod_done_cb cb, void *data) {
  if (!ns || !*ns)
    ns = "default";
  if (!name || !*name)
    return -EINVAL;
  pod_t *p = dibba__pod_find(m, ns, name, 1);
  if (p) {
    dibba__pod_delete(p, cb, data);
    return 0;
  }
  /* Nothing to delete: success, on a later loop turn. */
  later_t *l = dibba_xcalloc(1, sizeof *l);
  l->m = m;
  l->cb = cb;
  l->data = data;
  uv_timer_init(m->loop, &l->t);
  l->t.data = l;
  uv_timer_start(&l->t, on_later, 0, 0);
  return 0;
}

int dibba_pod_get(dibba_pod_mgr_t *m, const char *ns, const char *name, Dibba__V1__Pod **out) {
  pod_t *p = dibba__pod_find(m, ns && *ns ? ns : "default", name ? name : "", 0);
  if (!p || !p->pod)
    return -ENOENT;
  *out = dibba__pod_view(p);
  return 0;
}

int dibba_pod_list(dibba_pod_mgr_t *m, const char *ns, const char *selector, Dibba__V1__PodList **out) {
  Dibba__V1__PodList *l = dibba_xmalloc(sizeof *l);
  dibba__v1__pod_list__init(l);
  if (dibba_pod_selector_match(selector, NULL, 0) < 0) {
    free(l);
    return -EINVAL;
  }
  size_t n = 0;
  for (pod_t *p = m->pods; p; p = p->next)
    n++;
  l->items = dibba_xcalloc(n + 1, sizeof *l->items);
  for (pod_t *p = m->pods; p; p = p->next) {
    if (!p->pod || p->deleting || (ns && *ns && strcmp(ns, p->ns) != 0))
      continue;
    if (dibba_pod_selector_match(selector, p->pod->metadata->labels, p->pod->metadata->n_labels) != 1)
      continue;
    l->items[l->n_items++] = dibba__pod_view(p);
  }
  *out = l;
  return 0;
}

int dibba_pod_container(dibba_pod_mgr_t *m, const char *ns, const char *name, const char *container, char **id,
                        char **log_path) {
  pod_t *p = dibba__pod_find(m, ns && *ns ? ns : "default", name ? name : "", 0);
  if (!p || !p->pod)
    return -ENOENT;
  for (size_t i = 0; i < p->n; i++)
    if (!container || !*container || strcmp(container, p->c[i].name) == 0) {
      if (id)
        *id = dibba_xstrdup(p->c[i].id);
      if (log_path)
        *log_path = dibba_xstrdup(p->c[i].log_path);
      return 0;
    }
  return -ENOENT;
}
