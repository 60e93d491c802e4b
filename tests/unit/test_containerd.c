/* SPDX-License-Identifier: Apache-2.0 */
/* Tests for lib/containerd against a real, private containerd that this test starts and removes. */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "dibba/alloc.h"
#include "dibba/containerd.h"
#include "dibba/containerd_container.h"
#include "dibba/containerd_exec.h"
#include "dibba/containerd_image.h"
#include "dibba/error.h"

extern char **environ;

static char tmpdir[64];
static char sockpath[128];
static char busybox_tar[160];
static int registry_port; /* the CRI config sends plain HTTP to 127.0.0.1:registry_port (registry_pull_run) */
static pid_t registry_pid;

static void write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  ck_assert_ptr_nonnull(f);
  fputs(text, f);
  fclose(f);
}

static pid_t read_pid(void) {
  char p[160];
  snprintf(p, sizeof p, "%s/containerd.pid", tmpdir);
  FILE *f = fopen(p, "r");
  int pid = 0;
  if (f) {
    if (fscanf(f, "%d", &pid) != 1)
      pid = 0;
    fclose(f);
  }
  return (pid_t)pid;
}

/* Start containerd on the private config and wait (up to 20 s) for its socket to accept connections. */
static void containerd_start(void) {
  char cfg[160], log[160], pidf[160], pidtext[32];
  snprintf(cfg, sizeof cfg, "%s/config.toml", tmpdir);
  snprintf(log, sizeof log, "%s/containerd.log", tmpdir);
  snprintf(pidf, sizeof pidf, "%s/containerd.pid", tmpdir);
  unlink(sockpath);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, log, O_WRONLY | O_CREAT | O_APPEND, 0600);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  char *argv[] = {"containerd", "--config", cfg, NULL};
  pid_t pid;
  /* Its own process group: check kills a forked test's group when the test ends, and a containerd restarted
   * inside a test must outlive it. */
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);
  posix_spawnattr_setpgroup(&attr, 0);
  int rc = posix_spawnp(&pid, "containerd", &fa, &attr, argv, environ);
  posix_spawnattr_destroy(&attr);
  posix_spawn_file_actions_destroy(&fa);
  ck_assert_msg(rc == 0, "spawn containerd: %s", strerror(rc));
  snprintf(pidtext, sizeof pidtext, "%d\n", (int)pid);
  write_file(pidf, pidtext);
  for (int i = 0; i < 200; i++) {
    struct stat st;
    if (stat(sockpath, &st) == 0 && S_ISSOCK(st.st_mode))
      return;
    ck_assert_msg(waitpid(pid, NULL, WNOHANG) == 0, "containerd exited; see %s", log);
    usleep(100 * 1000);
  }
  ck_abort_msg("containerd socket %s did not appear", sockpath);
}

static void containerd_kill(void) {
  pid_t pid = read_pid();
  if (pid > 0 && kill(pid, SIGKILL) == 0) {
    /* Reap it when it is our child; otherwise wait until it is gone. */
    if (waitpid(pid, NULL, 0) < 0)
      for (int i = 0; i < 100 && kill(pid, 0) == 0; i++)
        usleep(20 * 1000);
  }
}

/* Unchecked fixture (runs in the parent): one containerd for the whole suite, removed even when tests fail. */
/* A TCP port on loopback that nothing listens on now. */
static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), port = 0;
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof sa;
  if (fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 && getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
    port = ntohs(sa.sin_port);
  if (fd >= 0)
    close(fd);
  return port;
}

static void setup(void) {
  snprintf(tmpdir, sizeof tmpdir, "/tmp/dibba-ctd-XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(tmpdir));
  snprintf(sockpath, sizeof sockpath, "%s/containerd.sock", tmpdir);
  registry_port = free_port();
  char *cfg = dibba_xasprintf("version = 2\n"
                              "root = \"%s/root\"\n"
                              "state = \"%s/state\"\n"
                              "[grpc]\n  address = \"%s\"\n"
                              "[ttrpc]\n  address = \"%s.ttrpc\"\n"
                              "[debug]\n  address = \"\"\n"
                              "[metrics]\n  address = \"\"\n"
                              "[plugins.\"io.containerd.grpc.v1.cri\"]\n"
                              "  disable_tcp_service = true\n"
                              "  stream_server_address = \"127.0.0.1\"\n"
                              "  stream_server_port = \"0\"\n"
                              "[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"127.0.0.1:%d\"]\n"
                              "  endpoint = [\"http://127.0.0.1:%d\"]\n"
                              "[plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"%s/opt\"\n",
                              tmpdir, tmpdir, sockpath, sockpath, registry_port, registry_port, tmpdir);
  char path[160];
  snprintf(path, sizeof path, "%s/config.toml", tmpdir);
  write_file(path, cfg);
  free(cfg);
  /* The busybox image, built locally by the project's tool. */
  const char *src = getenv("DIBBA_SRCDIR");
  snprintf(busybox_tar, sizeof busybox_tar, "%s/busybox.tar", tmpdir);
  char cmd[512];
  snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s/tools/image/build-oci.py busybox --out %s >%s/build-oci.log 2>&1",
           src ? src : "..", busybox_tar, tmpdir);
  if (system(cmd) != 0)
    fprintf(stderr, "building %s failed (see %s/build-oci.log)\n", busybox_tar, tmpdir);
  containerd_start();
}

static void kill_shims(void);

static void teardown(void) {
  /* A registry a failed forked test left (its pid is in the file; the child's registry_pid is not ours). */
  char rp[160];
  snprintf(rp, sizeof rp, "%s/registry.pid", tmpdir);
  FILE *rf = fopen(rp, "r");
  int rpid = 0;
  if (rf) {
    if (fscanf(rf, "%d", &rpid) == 1 && rpid > 0)
      kill(rpid, SIGKILL);
    fclose(rf);
  }
  containerd_kill();
  kill_shims(); /* shims outlive a killed containerd; a failed test may leave one */
  char cmd[512];
  /* Keep containerd's log for a failed run to look at. */
  const char *keep = getenv("DIBBA_KEEP_CONTAINERD_LOG");
  if (keep && *keep) {
    snprintf(cmd, sizeof cmd, "cp %s/containerd.log %s", tmpdir, keep);
    if (system(cmd) != 0)
      fprintf(stderr, "cannot copy the containerd log to %s\n", keep);
  }
  /* Every mount below tmpdir (a container rootfs left by a failed test too), deepest first, lazily. */
  snprintf(cmd, sizeof cmd,
           "awk '$2 ~ \"^%s/\" {print $2}' /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null; rm -rf %s",
           tmpdir, tmpdir);
  if (system(cmd) != 0)
    fprintf(stderr, "cleanup of %s failed\n", tmpdir);
}

/* ---------------- loop harness ---------------- */

typedef struct {
  uv_loop_t loop;
  dibba_containerd_t *ctd;
  int ready;
  int failures;
  int closed;
  /* events */
  int resubscribe;
  dibba_grpc_call_t *sub;
  int sub_done;
  int events;
  char last_ns_event[128];
  /* task events of watch_id (subscribe with task_filters) */
  int task_filters;
  const char *watch_id;
  int task_start, task_exit, task_delete;
  uint32_t event_exit_status;
} env_t;

static void tick(uv_timer_t *t) {}

static int run_until(uv_loop_t *loop, const int *flag, int want, uint64_t ms) {
  uv_timer_t t;
  uv_timer_init(loop, &t);
  uv_timer_start(&t, tick, 10, 10);
  uint64_t end = uv_now(loop) + ms;
  while (*flag < want && uv_now(loop) < end)
    uv_run(loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
  return *flag >= want;
}

static void on_event(dibba_containerd_t *ctd, Containerd__Services__Events__V1__Envelope *env, void *data) {
  env_t *e = data;
  e->events++;
  ProtobufCMessage *m = dibba_containerd_event_decode(env);
  if (m && m->descriptor == &containerd__events__namespace_create__descriptor)
    snprintf(e->last_ns_event, sizeof e->last_ns_event, "%s:%s", env->topic,
             ((Containerd__Events__NamespaceCreate *)m)->name);
  if (m && e->watch_id) {
    if (m->descriptor == &containerd__events__task_start__descriptor &&
        !strcmp(((Containerd__Events__TaskStart *)m)->container_id, e->watch_id))
      e->task_start++;
    if (m->descriptor == &containerd__events__task_exit__descriptor &&
        !strcmp(((Containerd__Events__TaskExit *)m)->container_id, e->watch_id)) {
      e->task_exit++;
      e->event_exit_status = ((Containerd__Events__TaskExit *)m)->exit_status;
    }
    if (m->descriptor == &containerd__events__task_delete__descriptor &&
        !strcmp(((Containerd__Events__TaskDelete *)m)->container_id, e->watch_id))
      e->task_delete++;
  }
  if (m)
    protobuf_c_message_free_unpacked(m, NULL);
}

static void on_sub_done(dibba_containerd_t *ctd, int err, const dibba_grpc_status_t *st, void *data) {
  env_t *e = data;
  e->sub = NULL;
  e->sub_done++;
}

static void subscribe(env_t *e) {
  char *filters[] = {"topic==\"/namespaces/create\""};
  char *task_filters[] = {"topic==\"/tasks/start\"", "topic==\"/tasks/exit\"", "topic==\"/tasks/delete\""};
  Containerd__Services__Events__V1__SubscribeRequest req = CONTAINERD__SERVICES__EVENTS__V1__SUBSCRIBE_REQUEST__INIT;
  req.n_filters = e->task_filters ? 3 : 1;
  req.filters = e->task_filters ? task_filters : filters;
  /* A subscription lives long: give it a deadline far beyond the default. */
  dibba_containerd_call_opts_t lo = {.timeout_ms = 3600 * 1000};
  ck_assert_int_eq(dibba_containerd_events_subscribe(e->ctd, &lo, &req, on_event, on_sub_done, e, &e->sub), 0);
}

static void on_state(dibba_containerd_t *ctd, dibba_grpc_state_t st, int err, void *data) {
  env_t *e = data;
  if (st == DIBBA_GRPC_READY) {
    e->ready++;
    if (e->resubscribe && !e->sub)
      subscribe(e); /* re-establish the stream after a reconnect */
  }
  if (st == DIBBA_GRPC_TRANSIENT_FAILURE)
    e->failures++;
}

static void on_closed(dibba_containerd_t *ctd, void *data) { ((env_t *)data)->closed = 1; }

static void env_up(env_t *e) {
  memset(e, 0, sizeof *e);
  ck_assert_int_eq(uv_loop_init(&e->loop), 0);
  char addr[160];
  snprintf(addr, sizeof addr, "unix://%s", sockpath);
  dibba_containerd_opts_t o = {.socket = addr, .ns = "dibba-test", .state_cb = on_state, .data = e};
  ck_assert_int_eq(dibba_containerd_new(&e->loop, &o, &e->ctd), 0);
  ck_assert(run_until(&e->loop, &e->ready, 1, 5000));
}

static void env_down(env_t *e) {
  dibba_containerd_close(e->ctd, on_closed, e);
  dibba_containerd_close(e->ctd, on_closed, e);
  ck_assert(run_until(&e->loop, &e->closed, 1, 5000));
  uv_run(&e->loop, UV_RUN_DEFAULT);
  ck_assert_int_eq(uv_loop_close(&e->loop), 0);
}

typedef struct {
  int done;
  int err;
  dibba_grpc_code_t code;
  char text[256];
  int found;
} res_t;

static void on_version(dibba_containerd_t *ctd, int err, const dibba_grpc_status_t *st,
                       Containerd__Services__Version__V1__VersionResponse *resp, void *data) {
  res_t *r = data;
  r->done++;
  r->err = err;
  r->code = st->code;
  if (resp)
    snprintf(r->text, sizeof r->text, "%s", resp->version);
}

static void on_ns_create(dibba_containerd_t *ctd, int err, const dibba_grpc_status_t *st,
                         Containerd__Services__Namespaces__V1__CreateNamespaceResponse *resp, void *data) {
  res_t *r = data;
  r->done++;
  r->err = err;
}

static void on_ns_list(dibba_containerd_t *ctd, int err, const dibba_grpc_status_t *st,
                       Containerd__Services__Namespaces__V1__ListNamespacesResponse *resp, void *data) {
  res_t *r = data;
  r->done++;
  r->err = err;
  for (size_t i = 0; resp && i < resp->n_namespaces; i++)
    if (!strcmp(resp->namespaces[i]->name, "dibba-ns1"))
      r->found = 1;
}

static void on_ctr_get(dibba_containerd_t *ctd, int err, const dibba_grpc_status_t *st,
                       Containerd__Services__Containers__V1__GetContainerResponse *resp, void *data) {
  res_t *r = data;
  r->done++;
  r->err = err;
  r->code = st->code;
  r->found = resp != NULL;
  snprintf(r->text, sizeof r->text, "%s", st->message);
}

static void on_plugins(dibba_containerd_t *ctd, int err, const dibba_grpc_status_t *st,
                       Containerd__Services__Introspection__V1__PluginsResponse *resp, void *data) {
  res_t *r = data;
  r->done++;
  r->err = err;
  for (size_t i = 0; resp && i < resp->n_plugins; i++)
    if (!strcmp(resp->plugins[i]->type, "io.containerd.snapshotter.v1") && !strcmp(resp->plugins[i]->id, "overlayfs"))
      r->found = 1;
}

static void on_cri_list(dibba_containerd_t *ctd, int err, const dibba_grpc_status_t *st,
                        Runtime__V1__ListImagesResponse *resp, void *data) {
  res_t *r = data;
  r->done++;
  r->err = err;
  snprintf(r->text, sizeof r->text, "%s", st->message);
}

static void on_cri_status(dibba_containerd_t *ctd, int err, const dibba_grpc_status_t *st,
                          Runtime__V1__ImageStatusResponse *resp, void *data) {
  res_t *r = data;
  r->done++;
  r->err = err;
  r->found = resp && resp->image; /* CRI answers OK with no image for an unknown one */
}

static void on_tasks_list(dibba_containerd_t *ctd, int err, const dibba_grpc_status_t *st,
                          Containerd__Services__Tasks__V1__ListTasksResponse *resp, void *data) {
  res_t *r = data;
  r->done++;
  r->err = err;
  r->found = resp ? (int)resp->n_tasks : -1;
}

static void version(env_t *e, res_t *r) {
  Google__Protobuf__Empty req = GOOGLE__PROTOBUF__EMPTY__INIT;
  ck_assert_int_eq(dibba_containerd_version(e->ctd, NULL, &req, on_version, r), 0);
}

START_TEST(version_namespaces_and_not_found) {
  env_t e;
  env_up(&e);
  res_t v = {0};
  version(&e, &v);
  ck_assert(run_until(&e.loop, &v.done, 1, 10000));
  ck_assert_int_eq(v.err, 0);
  ck_assert_msg(!strncmp(v.text, "1.6.", 4), "version %s", v.text);

  Containerd__Services__Namespaces__V1__Namespace ns = CONTAINERD__SERVICES__NAMESPACES__V1__NAMESPACE__INIT;
  ns.name = "dibba-ns1";
  Containerd__Services__Namespaces__V1__CreateNamespaceRequest creq =
      CONTAINERD__SERVICES__NAMESPACES__V1__CREATE_NAMESPACE_REQUEST__INIT;
  creq.namespace_ = &ns;
  res_t c1 = {0}, c2 = {0}, l = {0};
  ck_assert_int_eq(dibba_containerd_namespaces_create(e.ctd, NULL, &creq, on_ns_create, &c1), 0);
  ck_assert(run_until(&e.loop, &c1.done, 1, 10000));
  ck_assert_int_eq(c1.err, 0);
  ck_assert_int_eq(dibba_containerd_namespaces_create(e.ctd, NULL, &creq, on_ns_create, &c2), 0);
  ck_assert(run_until(&e.loop, &c2.done, 1, 10000));
  ck_assert_int_eq(c2.err, -EEXIST);
  Containerd__Services__Namespaces__V1__ListNamespacesRequest lreq =
      CONTAINERD__SERVICES__NAMESPACES__V1__LIST_NAMESPACES_REQUEST__INIT;
  ck_assert_int_eq(dibba_containerd_namespaces_list(e.ctd, NULL, &lreq, on_ns_list, &l), 0);
  ck_assert(run_until(&e.loop, &l.done, 1, 10000));
  ck_assert_int_eq(l.err, 0);
  ck_assert_int_eq(l.found, 1);

  Containerd__Services__Containers__V1__GetContainerRequest greq =
      CONTAINERD__SERVICES__CONTAINERS__V1__GET_CONTAINER_REQUEST__INIT;
  greq.id = "no-such-container";
  res_t g = {0};
  dibba_containerd_call_opts_t per_call = {.ns = "dibba-ns1", .timeout_ms = 5000};
  ck_assert_int_eq(dibba_containerd_containers_get(e.ctd, &per_call, &greq, on_ctr_get, &g), 0);
  ck_assert(run_until(&e.loop, &g.done, 1, 10000));
  ck_assert_int_eq(g.code, DIBBA_GRPC_NOT_FOUND);
  ck_assert_int_eq(g.err, -ENOENT);
  ck_assert_int_eq(g.found, 0);
  ck_assert_ptr_nonnull(strstr(g.text, "no-such-container"));

  Containerd__Services__Tasks__V1__ListTasksRequest treq = CONTAINERD__SERVICES__TASKS__V1__LIST_TASKS_REQUEST__INIT;
  res_t t = {0};
  ck_assert_int_eq(dibba_containerd_tasks_list(e.ctd, NULL, &treq, on_tasks_list, &t), 0);
  ck_assert(run_until(&e.loop, &t.done, 1, 10000));
  ck_assert_int_eq(t.err, 0);
  ck_assert_int_eq(t.found, 0);
  env_down(&e);
}
END_TEST

START_TEST(fifty_concurrent_versions) {
  env_t e;
  env_up(&e);
  res_t r[50];
  memset(r, 0, sizeof r);
  for (int i = 0; i < 50; i++)
    version(&e, &r[i]);
  for (int i = 0; i < 50; i++) {
    ck_assert(run_until(&e.loop, &r[i].done, 1, 10000));
    ck_assert_int_eq(r[i].err, 0);
    ck_assert(!strncmp(r[i].text, "1.6.", 4));
  }
  env_down(&e);
}
END_TEST

START_TEST(introspection_and_cri_images) {
  env_t e;
  env_up(&e);
  Containerd__Services__Introspection__V1__PluginsRequest preq =
      CONTAINERD__SERVICES__INTROSPECTION__V1__PLUGINS_REQUEST__INIT;
  res_t p = {0};
  ck_assert_int_eq(dibba_containerd_introspection_plugins(e.ctd, NULL, &preq, on_plugins, &p), 0);
  ck_assert(run_until(&e.loop, &p.done, 1, 10000));
  ck_assert_int_eq(p.err, 0);
  ck_assert_int_eq(p.found, 1);

  Runtime__V1__ListImagesRequest lreq = RUNTIME__V1__LIST_IMAGES_REQUEST__INIT;
  res_t l = {0};
  ck_assert_int_eq(dibba_containerd_cri_list_images(e.ctd, NULL, &lreq, on_cri_list, &l), 0);
  ck_assert(run_until(&e.loop, &l.done, 1, 10000));
  ck_assert_msg(l.err == 0, "CRI ListImages: %s (%s)", dibba_strerror(l.err), l.text);
  Runtime__V1__ImageSpec spec = RUNTIME__V1__IMAGE_SPEC__INIT;
  spec.image = "docker.io/library/does-not-exist:latest";
  Runtime__V1__ImageStatusRequest sreq = RUNTIME__V1__IMAGE_STATUS_REQUEST__INIT;
  sreq.image = &spec;
  res_t s = {0};
  ck_assert_int_eq(dibba_containerd_cri_image_status(e.ctd, NULL, &sreq, on_cri_status, &s), 0);
  ck_assert(run_until(&e.loop, &s.done, 1, 10000));
  ck_assert_int_eq(s.err, 0);
  ck_assert_int_eq(s.found, 0);
  env_down(&e);
}
END_TEST

static void create_ns(env_t *e, const char *name, res_t *r) {
  Containerd__Services__Namespaces__V1__Namespace ns = CONTAINERD__SERVICES__NAMESPACES__V1__NAMESPACE__INIT;
  ns.name = (char *)name;
  Containerd__Services__Namespaces__V1__CreateNamespaceRequest req =
      CONTAINERD__SERVICES__NAMESPACES__V1__CREATE_NAMESPACE_REQUEST__INIT;
  req.namespace_ = &ns;
  ck_assert_int_eq(dibba_containerd_namespaces_create(e->ctd, NULL, &req, on_ns_create, r), 0);
}

/* Create namespaces until the subscription reports one (it is live only once containerd has registered it). */
static void expect_ns_event(env_t *e, const char *prefix) {
  char name[64], want[128];
  for (int i = 0; i < 20; i++) {
    res_t r = {0};
    snprintf(name, sizeof name, "%s-%d", prefix, i);
    create_ns(e, name, &r);
    ck_assert(run_until(&e->loop, &r.done, 1, 10000));
    ck_assert_int_eq(r.err, 0);
    snprintf(want, sizeof want, "/namespaces/create:%s", name);
    int seen = 0;
    for (int t = 0; t < 25 && !seen; t++) {
      run_until(&e->loop, &seen, 1, 20);
      seen = !strcmp(e->last_ns_event, want);
    }
    if (seen)
      return;
  }
  ck_abort_msg("no /namespaces/create event for %s-*", prefix);
}

START_TEST(events_and_reconnect_after_kill) {
  env_t e;
  env_up(&e);
  e.resubscribe = 1;
  subscribe(&e);
  expect_ns_event(&e, "ev-a");
  ck_assert_int_eq(e.sub_done, 0);

  /* kill -9 containerd: the stream ends with UNAVAILABLE and the client reconnects by itself. */
  containerd_kill();
  ck_assert(run_until(&e.loop, &e.sub_done, 1, 10000));
  ck_assert(run_until(&e.loop, &e.failures, 1, 10000));
  res_t down = {0};
  Google__Protobuf__Empty empty = GOOGLE__PROTOBUF__EMPTY__INIT;
  int rc = dibba_containerd_version(e.ctd, NULL, &empty, on_version, &down);
  if (rc == 0) /* accepted while a reconnect attempt was in progress: it fails once that attempt fails */
    ck_assert(run_until(&e.loop, &down.done, 1, 10000));
  else
    ck_assert_int_eq(rc, UV_ECONNREFUSED);
  int ready_before = e.ready;
  containerd_start();
  ck_assert(run_until(&e.loop, &e.ready, ready_before + 1, 15000));
  res_t v = {0};
  version(&e, &v);
  ck_assert(run_until(&e.loop, &v.done, 1, 10000));
  ck_assert_int_eq(v.err, 0);
  ck_assert_ptr_nonnull(e.sub); /* the state callback subscribed again */
  expect_ns_event(&e, "ev-b");
  e.resubscribe = 0;
  dibba_grpc_call_cancel(e.sub);
  ck_assert(run_until(&e.loop, &e.sub_done, 2, 5000));
  env_down(&e);
}
END_TEST

/* ---------------- image import ---------------- */

typedef struct {
  int done;
  int err;
  char msg[256];
  char name[128];
  char chain[80];
  char manifest[80];
  char cmd0[64];
  size_t layers, unpacked, reused, written;
} img_t;

static void on_image(dibba_containerd_t *ctd, int err, const char *msg, const dibba_image_result_t *res, void *data) {
  img_t *r = data;
  r->done++;
  r->err = err;
  snprintf(r->msg, sizeof r->msg, "%s", msg);
  if (res) {
    snprintf(r->name, sizeof r->name, "%s", res->name);
    snprintf(r->chain, sizeof r->chain, "%s", res->chain_id);
    snprintf(r->manifest, sizeof r->manifest, "%s", res->manifest_digest);
    const char *c =
        json_string_value(json_array_get(json_object_get(json_object_get(res->config, "config"), "Cmd"), 0));
    snprintf(r->cmd0, sizeof r->cmd0, "%s", c ? c : "");
    r->layers = res->layers;
    r->unpacked = res->layers_unpacked;
    r->reused = res->layers_reused;
    r->written = res->blobs_written;
  }
}

static void on_snap_stat(dibba_containerd_t *ctd, int err, const dibba_grpc_status_t *st,
                         Containerd__Services__Snapshots__V1__StatSnapshotResponse *resp, void *data) {
  res_t *r = data;
  r->done++;
  r->err = err;
  r->found = resp && resp->info && resp->info->kind == CONTAINERD__SERVICES__SNAPSHOTS__V1__KIND__COMMITTED;
}

static void import_archive(env_t *e, const char *ns, const char *archive, img_t *r) {
  memset(r, 0, sizeof *r);
  dibba_image_import_opts_t o = {.archive = archive, .ns = ns};
  ck_assert_int_eq(dibba_containerd_image_import(e->ctd, &o, on_image, r), 0);
  ck_assert(run_until(&e->loop, &r->done, 1, 60000));
}

START_TEST(image_import_twice_reuses_snapshots) {
  env_t e;
  env_up(&e);
  img_t a, b, bad;
  import_archive(&e, "dibba-imp", busybox_tar, &a);
  ck_assert_msg(a.err == 0, "import: %s", a.msg);
  ck_assert_str_eq(a.name, "docker.io/library/busybox:latest");
  ck_assert_uint_eq(a.layers, 1);
  ck_assert_uint_eq(a.unpacked, 1);
  ck_assert_uint_eq(a.reused, 0);
  ck_assert_uint_eq(a.written, 3); /* layer, config, manifest */
  ck_assert(!strncmp(a.chain, "sha256:", 7));

  import_archive(&e, "dibba-imp", busybox_tar, &b);
  ck_assert_msg(b.err == 0, "second import: %s", b.msg);
  ck_assert_uint_eq(b.unpacked, 0);
  ck_assert_uint_eq(b.reused, 1);
  ck_assert_uint_eq(b.written, 0);
  ck_assert_str_eq(a.chain, b.chain);

  /* The unpacked snapshot is committed under the chain id, in that namespace only. */
  Containerd__Services__Snapshots__V1__StatSnapshotRequest sreq =
      CONTAINERD__SERVICES__SNAPSHOTS__V1__STAT_SNAPSHOT_REQUEST__INIT;
  sreq.snapshotter = "overlayfs";
  sreq.key = a.chain;
  res_t s1 = {0}, s2 = {0};
  dibba_containerd_call_opts_t in_imp = {.ns = "dibba-imp"}, in_other = {.ns = "dibba-other"};
  ck_assert_int_eq(dibba_containerd_snapshots_stat(e.ctd, &in_imp, &sreq, on_snap_stat, &s1), 0);
  ck_assert(run_until(&e.loop, &s1.done, 1, 10000));
  ck_assert_int_eq(s1.err, 0);
  ck_assert_int_eq(s1.found, 1);
  ck_assert_int_eq(dibba_containerd_snapshots_stat(e.ctd, &in_other, &sreq, on_snap_stat, &s2), 0);
  ck_assert(run_until(&e.loop, &s2.done, 1, 10000));
  ck_assert_int_eq(s2.err, -ENOENT);

  /* Resolve by name gives the same manifest, config and chain id. */
  img_t r = {0};
  ck_assert_int_eq(dibba_containerd_image_resolve(e.ctd, "dibba-imp", a.name, on_image, &r), 0);
  ck_assert(run_until(&e.loop, &r.done, 1, 10000));
  ck_assert_msg(r.err == 0, "resolve: %s", r.msg);
  ck_assert_str_eq(r.chain, a.chain);
  ck_assert_str_eq(r.manifest, a.manifest);
  ck_assert_str_eq(r.cmd0, "sh");
  img_t missing = {0};
  ck_assert_int_eq(dibba_containerd_image_resolve(e.ctd, "dibba-imp", "no/such:image", on_image, &missing), 0);
  ck_assert(run_until(&e.loop, &missing.done, 1, 10000));
  ck_assert_int_eq(missing.err, -ENOENT);

  /* Not an archive: a clear error, and the lease is still dropped. */
  char notar[200];
  snprintf(notar, sizeof notar, "%s/config.toml", tmpdir);
  import_archive(&e, "dibba-imp", notar, &bad);
  ck_assert_int_ne(bad.err, 0);
  ck_assert_msg(strstr(bad.msg, "archive"), "msg %s", bad.msg);
  env_down(&e);
}
END_TEST

/* ---------------- containers ---------------- */

typedef struct {
  int done, err, oom;
  uint32_t pid, status;
  char msg[256];
} ctr_t;

static void on_run(dibba_containerd_t *ctd, int err, const char *msg, uint32_t pid, void *data) {
  ctr_t *c = data;
  c->done++;
  c->err = err;
  c->pid = pid;
  snprintf(c->msg, sizeof c->msg, "%s", msg);
}
static void on_exit_cb(dibba_containerd_t *ctd, int err, const char *msg, uint32_t status, int oom, void *data) {
  ctr_t *c = data;
  c->done++;
  c->err = err;
  c->status = status;
  c->oom = oom;
  snprintf(c->msg, sizeof c->msg, "%s", msg);
}
static void on_deleted(dibba_containerd_t *ctd, int err, const char *msg, void *data) {
  ctr_t *c = data;
  c->done++;
  c->err = err;
  snprintf(c->msg, sizeof c->msg, "%s", msg);
}

static long read_long(const char *path) {
  FILE *f = fopen(path, "r");
  long v = -1;
  if (f) {
    if (fscanf(f, "%ld", &v) != 1)
      v = -1;
    fclose(f);
  }
  return v;
}

/* containerd-shim processes whose command line names our private containerd socket. */
static int count_shims(void) {
  int n = 0;
  DIR *d = opendir("/proc");
  struct dirent *de;
  while (d && (de = readdir(d))) {
    char path[300], buf[4096];
    if (de->d_name[0] < '0' || de->d_name[0] > '9')
      continue;
    snprintf(path, sizeof path, "/proc/%s/cmdline", de->d_name);
    FILE *f = fopen(path, "r");
    if (!f)
      continue;
    size_t len = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[len] = '\0';
    int shim = strstr(buf, "containerd-shim") != NULL, ours = 0;
    for (size_t k = 0; k < len; k += strlen(buf + k) + 1)
      if (strstr(buf + k, sockpath))
        ours = 1;
    n += shim && ours;
  }
  if (d)
    closedir(d);
  return n;
}

static void kill_shims(void) {
  DIR *d = opendir("/proc");
  struct dirent *de;
  while (d && (de = readdir(d))) {
    char path[300], buf[4096];
    if (de->d_name[0] < '0' || de->d_name[0] > '9')
      continue;
    snprintf(path, sizeof path, "/proc/%s/cmdline", de->d_name);
    FILE *f = fopen(path, "r");
    if (!f)
      continue;
    size_t len = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[len] = '\0';
    int ours = 0;
    for (size_t k = 0; k < len; k += strlen(buf + k) + 1)
      if (strstr(buf + k, sockpath))
        ours = 1;
    if (ours && strstr(buf, "containerd-shim"))
      kill(atoi(de->d_name), SIGKILL);
  }
  if (d)
    closedir(d);
}

static int log_has(const char *path, const char *needle, int ms) {
  for (int i = 0; i < ms / 50; i++) {
    FILE *f = fopen(path, "r");
    char line[1024];
    int found = 0;
    while (f && fgets(line, sizeof line, f))
      if (strstr(line, needle))
        found = 1;
    if (f)
      fclose(f);
    if (found)
      return 1;
    usleep(50 * 1000);
  }
  return 0;
}

START_TEST(container_run_logs_cgroup_stop_delete_oom) {
  env_t e;
  env_up(&e);
  img_t im;
  import_archive(&e, "dibba-run", busybox_tar, &im);
  ck_assert_msg(im.err == 0, "import: %s", im.msg);
  char logger[300], logpath[200];
  snprintf(logger, sizeof logger, "%s/tools/logger/dibba-logger", getenv("DIBBA_BUILDDIR"));
  snprintf(logpath, sizeof logpath, "%s/c1.log", tmpdir);
  const char *cmd[] = {"/bin/sh", "-c"};
  const char *args[] = {"echo \"greeting=$GREETING\"; echo \"cwd=$(pwd)\"; echo \"uid=$(id -u)\"; "
                        "echo oops >&2; exec sleep 60"};
  const char *env_kv[] = {"GREETING=hello-dibba"};
  dibba_container_opts_t o = {.id = "c1",
                              .ns = "dibba-run",
                              .image = im.name,
                              .pod = "p1",
                              .logger = logger,
                              .log_path = logpath,
                              .log_max_size = 1 << 20,
                              .log_max_files = 2};
  o.oci.command = cmd;
  o.oci.n_command = 2;
  o.oci.args = args;
  o.oci.n_args = 1;
  o.oci.env = env_kv;
  o.oci.n_env = 1;
  o.oci.working_dir = "/tmp";
  o.oci.user = "65534";
  o.oci.cpu_millis = 500;
  o.oci.memory_bytes = 64ll << 20;
  ctr_t run = {0};
  ck_assert_int_eq(dibba_containerd_container_run(e.ctd, &o, on_run, &run), 0);
  ck_assert(run_until(&e.loop, &run.done, 1, 60000));
  ck_assert_msg(run.err == 0, "run: %s", run.msg);
  ck_assert_uint_gt(run.pid, 0);
  ck_assert(log_has(logpath, " stdout F greeting=hello-dibba", 5000));
  ck_assert(log_has(logpath, " stdout F cwd=/tmp", 2000));
  ck_assert(log_has(logpath, " stdout F uid=65534", 2000));
  ck_assert(log_has(logpath, " stderr F oops", 2000));
  ck_assert_int_eq(read_long("/sys/fs/cgroup/cpu/dibba/dibba-run/c1/cpu.cfs_quota_us"), 50000);
  ck_assert_int_eq(read_long("/sys/fs/cgroup/memory/dibba/dibba-run/c1/memory.limit_in_bytes"), 64l << 20);
  ck_assert_int_ge(count_shims(), 1);

  /* A run under the same id replaces the stale one (crash recovery) — here: stop, then delete twice. */
  ctr_t stop = {0};
  ck_assert_int_eq(dibba_containerd_container_stop(e.ctd, "dibba-run", "c1", 500, on_exit_cb, &stop), 0);
  ck_assert(run_until(&e.loop, &stop.done, 1, 40000));
  ck_assert_msg(stop.err == 0, "stop: %s", stop.msg);
  ck_assert_uint_eq(stop.status, 128 + SIGKILL); /* sh as pid 1 ignores SIGTERM: killed after the grace */
  ck_assert_int_eq(stop.oom, 0);
  for (int i = 0; i < 2; i++) {
    ctr_t del = {0};
    ck_assert_int_eq(dibba_containerd_container_delete(e.ctd, "dibba-run", "c1", on_deleted, &del), 0);
    ck_assert(run_until(&e.loop, &del.done, 1, 30000));
    ck_assert_msg(del.err == 0, "delete %d: %s", i, del.msg);
  }
  res_t g = {0};
  Containerd__Services__Containers__V1__GetContainerRequest greq =
      CONTAINERD__SERVICES__CONTAINERS__V1__GET_CONTAINER_REQUEST__INIT;
  greq.id = "c1";
  dibba_containerd_call_opts_t in_run = {.ns = "dibba-run"};
  ck_assert_int_eq(dibba_containerd_containers_get(e.ctd, &in_run, &greq, on_ctr_get, &g), 0);
  ck_assert(run_until(&e.loop, &g.done, 1, 10000));
  ck_assert_int_eq(g.err, -ENOENT);
  Containerd__Services__Snapshots__V1__StatSnapshotRequest sreq =
      CONTAINERD__SERVICES__SNAPSHOTS__V1__STAT_SNAPSHOT_REQUEST__INIT;
  sreq.snapshotter = "overlayfs";
  sreq.key = "c1";
  res_t s = {0};
  ck_assert_int_eq(dibba_containerd_snapshots_stat(e.ctd, &in_run, &sreq, on_snap_stat, &s), 0);
  ck_assert(run_until(&e.loop, &s.done, 1, 10000));
  ck_assert_int_eq(s.err, -ENOENT);
  for (int i = 0; i < 100 && count_shims() > 0; i++)
    usleep(50 * 1000);
  ck_assert_int_eq(count_shims(), 0);

  /* 4 MiB is refused before anything is created. */
  o.id = "c-small";
  o.oci.memory_bytes = 4ll << 20;
  ck_assert_int_eq(dibba_containerd_container_run(e.ctd, &o, on_run, &run), -EINVAL);

  /* dd with a 20 MiB buffer under a 15 MiB limit: OOMKilled. */
  const char *dd[] = {"dd", "if=/dev/zero", "of=/dev/null", "bs=20M"};
  dibba_container_opts_t oo = {.id = "c-oom", .ns = "dibba-run", .image = im.name};
  oo.oci.command = dd;
  oo.oci.n_command = 4;
  oo.oci.memory_bytes = 15ll << 20;
  ctr_t run2 = {0}, w = {0}, del = {0};
  ck_assert_int_eq(dibba_containerd_container_run(e.ctd, &oo, on_run, &run2), 0);
  ck_assert(run_until(&e.loop, &run2.done, 1, 60000));
  ck_assert_msg(run2.err == 0, "run oom: %s", run2.msg);
  ck_assert_int_eq(dibba_containerd_container_wait(e.ctd, "dibba-run", "c-oom", 30000, on_exit_cb, &w), 0);
  ck_assert(run_until(&e.loop, &w.done, 1, 40000));
  ck_assert_msg(w.err == 0, "wait: %s", w.msg);
  ck_assert_uint_eq(w.status, 128 + SIGKILL);
  ck_assert_int_eq(w.oom, 1);
  ck_assert_int_eq(dibba_containerd_container_delete(e.ctd, "dibba-run", "c-oom", on_deleted, &del), 0);
  ck_assert(run_until(&e.loop, &del.done, 1, 30000));
  ck_assert_msg(del.err == 0, "delete: %s", del.msg);
  env_down(&e);
}
END_TEST

/* ---------------- exec ---------------- */

typedef struct {
  int done, err, have, timed_out, out_trunc;
  uint32_t status;
  char out[256], errtext[256], msg[256];
  size_t out_len;
} exec_res_t;

static void on_exec_done(dibba_containerd_t *ctd, int err, const char *msg, const dibba_exec_result_t *res,
                         void *data) {
  exec_res_t *r = data;
  r->done++;
  r->err = err;
  snprintf(r->msg, sizeof r->msg, "%s", msg);
  if (res) {
    r->have = 1;
    r->status = res->exit_status;
    r->timed_out = res->timed_out;
    r->out_trunc = res->out_truncated;
    r->out_len = res->out_len;
    snprintf(r->out, sizeof r->out, "%s", res->out);
    snprintf(r->errtext, sizeof r->errtext, "%s", res->err);
  }
}

static void on_task_get_res(dibba_containerd_t *ctd, int err, const dibba_grpc_status_t *st,
                            Containerd__Services__Tasks__V1__GetResponse *resp, void *data) {
  res_t *r = data;
  r->done++;
  r->err = err;
}

static int dir_entries(const char *path) {
  int n = 0;
  DIR *d = opendir(path);
  struct dirent *de;
  while (d && (de = readdir(d)))
    n += de->d_name[0] != '.';
  if (d)
    closedir(d);
  return n;
}

/* A process whose cmdline is exactly argv (NUL-separated). */
static int process_running(const char *const *argv, int n) {
  char want[256];
  size_t wl = 0;
  for (int i = 0; i < n; i++) {
    size_t l = strlen(argv[i]) + 1;
    memcpy(want + wl, argv[i], l);
    wl += l;
  }
  int found = 0;
  DIR *d = opendir("/proc");
  struct dirent *de;
  while (d && (de = readdir(d))) {
    char path[300], buf[256];
    if (de->d_name[0] < '0' || de->d_name[0] > '9')
      continue;
    snprintf(path, sizeof path, "/proc/%s/cmdline", de->d_name);
    FILE *f = fopen(path, "r");
    if (!f)
      continue;
    size_t len = fread(buf, 1, sizeof buf, f);
    fclose(f);
    found |= len == wl && !memcmp(buf, want, wl);
  }
  if (d)
    closedir(d);
  return found;
}

START_TEST(exec_output_timeout_and_missing) {
  env_t e;
  env_up(&e);
  img_t im;
  /* A namespace of this run only: runc's state (/run/containerd/runc/<ns>/<id>) is shared by every containerd. */
  char ns[64];
  snprintf(ns, sizeof ns, "dibba-exec-%d", (int)getpid());
  import_archive(&e, ns, busybox_tar, &im);
  ck_assert_msg(im.err == 0, "import: %s", im.msg);
  const char *cmd[] = {"sleep", "60"};
  dibba_container_opts_t o = {.id = "x1", .ns = ns, .image = im.name};
  o.oci.command = cmd;
  o.oci.n_command = 2;
  ctr_t run = {0};
  ck_assert_int_eq(dibba_containerd_container_run(e.ctd, &o, on_run, &run), 0);
  ck_assert(run_until(&e.loop, &run.done, 1, 60000));
  ck_assert_msg(run.err == 0, "run: %s", run.msg);

  char state[200];
  snprintf(state, sizeof state, "%s/exec-state", tmpdir);
  const char *sh[] = {"sh", "-c", "echo out; echo err >&2; exit 3"};
  dibba_exec_opts_t xo = {.id = "x1", .ns = ns, .args = sh, .n_args = 3, .state_dir = state};
  exec_res_t r1 = {0};
  ck_assert_int_eq(dibba_containerd_exec(e.ctd, &xo, on_exec_done, &r1, NULL), 0);
  ck_assert(run_until(&e.loop, &r1.done, 1, 20000));
  ck_assert_msg(r1.err == 0, "exec: %s", r1.msg);
  ck_assert_int_eq(r1.have, 1);
  ck_assert_uint_eq(r1.status, 3);
  ck_assert_str_eq(r1.out, "out\n");
  ck_assert_str_eq(r1.errtext, "err\n");
  ck_assert_int_eq(r1.timed_out, 0);
  ck_assert_int_eq(dir_entries(state), 0); /* FIFOs removed */

  /* Output beyond the cap is dropped and flagged. */
  const char *big[] = {"sh", "-c", "head -c 100000 /dev/zero | tr '\\0' x"};
  dibba_exec_opts_t bo = {.id = "x1", .ns = ns, .args = big, .n_args = 3, .state_dir = state, .output_max = 1000};
  exec_res_t rb = {0};
  ck_assert_int_eq(dibba_containerd_exec(e.ctd, &bo, on_exec_done, &rb, NULL), 0);
  ck_assert(run_until(&e.loop, &rb.done, 1, 20000));
  ck_assert_msg(rb.err == 0, "exec big: %s", rb.msg);
  ck_assert_uint_eq(rb.status, 0);
  ck_assert_uint_eq(rb.out_len, 1000);
  ck_assert_int_eq(rb.out_trunc, 1);

  /* A timeout kills the process, and it is gone afterwards. */
  const char *sl[] = {"sleep", "10"};
  dibba_exec_opts_t so = {
      .id = "x1", .ns = ns, .exec_id = "slow", .args = sl, .n_args = 2, .state_dir = state, .timeout_ms = 500};
  exec_res_t r2 = {0};
  uint64_t t0 = uv_now(&e.loop);
  ck_assert_int_eq(dibba_containerd_exec(e.ctd, &so, on_exec_done, &r2, NULL), 0);
  ck_assert(run_until(&e.loop, &r2.done, 1, 20000));
  ck_assert_msg(r2.err == 0, "exec sleep: %s", r2.msg);
  ck_assert_int_eq(r2.timed_out, 1);
  ck_assert_uint_eq(r2.status, 128 + SIGKILL);
  ck_assert_uint_lt(uv_now(&e.loop) - t0, 5000);
  ck_assert_int_eq(process_running(sl, 2), 0);
  Containerd__Services__Tasks__V1__GetRequest greq = CONTAINERD__SERVICES__TASKS__V1__GET_REQUEST__INIT;
  greq.container_id = "x1";
  greq.exec_id = "slow";
  res_t g = {0};
  dibba_containerd_call_opts_t in_exec = {.ns = ns};
  ck_assert_int_eq(dibba_containerd_tasks_get(e.ctd, &in_exec, &greq, on_task_get_res, &g), 0);
  ck_assert(run_until(&e.loop, &g.done, 1, 10000));
  ck_assert_int_eq(g.err, -ENOENT);
  ck_assert_int_eq(dir_entries(state), 0);

  /* No such container. */
  dibba_exec_opts_t mo = {.id = "no-such", .ns = ns, .args = sh, .n_args = 3, .state_dir = state};
  exec_res_t r3 = {0};
  ck_assert_int_eq(dibba_containerd_exec(e.ctd, &mo, on_exec_done, &r3, NULL), 0);
  ck_assert(run_until(&e.loop, &r3.done, 1, 20000));
  ck_assert_int_eq(r3.err, -ENOENT);
  ck_assert_int_eq(r3.have, 0);
  ck_assert_int_eq(dir_entries(state), 0);
  /* Bad arguments fail at once. */
  mo.n_args = 0;
  ck_assert_int_eq(dibba_containerd_exec(e.ctd, &mo, on_exec_done, &r3, NULL), -EINVAL);

  ctr_t del = {0};
  ck_assert_int_eq(dibba_containerd_container_delete(e.ctd, ns, "x1", on_deleted, &del), 0);
  ck_assert(run_until(&e.loop, &del.done, 1, 30000));
  ck_assert_msg(del.err == 0, "delete: %s", del.msg);
  env_down(&e);
}
END_TEST

/* ---------------- CRI pull from a local registry ---------------- */

static int port_open(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in sa = {
      .sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  int ok = fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
  if (fd >= 0)
    close(fd);
  return ok;
}

/* Debian's docker-registry on 127.0.0.1:registry_port, storage below tmpdir. It stays in the test's process
 * group (check kills that group when a forked test ends), and the registry.pid file lets teardown kill it too. */
static void registry_start(void) {
  char cfg[200], log[200], pidf[200], pidtext[32];
  snprintf(cfg, sizeof cfg, "%s/registry.yml", tmpdir);
  snprintf(log, sizeof log, "%s/registry.log", tmpdir);
  snprintf(pidf, sizeof pidf, "%s/registry.pid", tmpdir);
  char *yml = dibba_xasprintf("version: 0.1\n"
                              "log:\n  level: warn\n"
                              "storage:\n  filesystem:\n    rootdirectory: %s/registry\n"
                              "http:\n  addr: 127.0.0.1:%d\n",
                              tmpdir, registry_port);
  write_file(cfg, yml);
  free(yml);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, log, O_WRONLY | O_CREAT | O_APPEND, 0600);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  char *argv[] = {"docker-registry", "serve", cfg, NULL};
  int rc = posix_spawnp(&registry_pid, "docker-registry", &fa, NULL, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  ck_assert_msg(rc == 0, "spawn docker-registry: %s", strerror(rc));
  snprintf(pidtext, sizeof pidtext, "%d\n", (int)registry_pid);
  write_file(pidf, pidtext);
  for (int i = 0; i < 200 && !port_open(registry_port); i++) {
    ck_assert_msg(waitpid(registry_pid, NULL, WNOHANG) == 0, "docker-registry exited; see %s", log);
    usleep(50 * 1000);
  }
  ck_assert_msg(port_open(registry_port), "docker-registry does not listen on %d; see %s", registry_port, log);
}

static void registry_stop(void) {
  if (registry_pid > 0 && kill(registry_pid, SIGKILL) == 0)
    waitpid(registry_pid, NULL, 0);
  registry_pid = 0;
}

typedef struct {
  int done, err;
  char ref[200], msg[256];
} pull_t;

static void on_cri_pull(dibba_containerd_t *ctd, int err, const dibba_grpc_status_t *st,
                        Runtime__V1__PullImageResponse *resp, void *data) {
  pull_t *p = data;
  p->done++;
  p->err = err;
  snprintf(p->msg, sizeof p->msg, "%s", st && st->message ? st->message : "");
  if (resp && resp->image_ref)
    snprintf(p->ref, sizeof p->ref, "%s", resp->image_ref);
}

START_TEST(cri_pull_from_local_registry_and_run) {
  registry_start();
  char cmd[700], image[128];
  snprintf(image, sizeof image, "127.0.0.1:%d/dibba/busybox:latest", registry_port);
  snprintf(cmd, sizeof cmd,
           "skopeo --insecure-policy copy --dest-tls-verify=false oci-archive:%s docker://%s >%s/skopeo.log 2>&1",
           busybox_tar, image, tmpdir);
  ck_assert_msg(system(cmd) == 0, "skopeo copy failed; see %s/skopeo.log", tmpdir);

  env_t e;
  env_up(&e);
  Runtime__V1__ImageSpec spec = RUNTIME__V1__IMAGE_SPEC__INIT;
  spec.image = image;
  Runtime__V1__PullImageRequest req = RUNTIME__V1__PULL_IMAGE_REQUEST__INIT;
  req.image = &spec;
  dibba_containerd_call_opts_t co = {.timeout_ms = 60000};
  pull_t p = {0};
  ck_assert_int_eq(dibba_containerd_cri_pull_image(e.ctd, &co, &req, on_cri_pull, &p), 0);
  ck_assert(run_until(&e.loop, &p.done, 1, 65000));
  ck_assert_msg(p.err == 0, "CRI PullImage: %s (%s)", dibba_strerror(p.err), p.msg);
  ck_assert_msg(!strncmp(p.ref, "sha256:", 7), "image_ref %s", p.ref);

  /* CRI keeps the image in k8s.io: run a container from it there and read its output. The id carries the pid:
   * runc's state directory is shared with any other containerd's k8s.io. */
  char id[64], logger[300], logpath[200];
  snprintf(id, sizeof id, "dibba-pull-%d", (int)getpid());
  snprintf(logger, sizeof logger, "%s/tools/logger/dibba-logger", getenv("DIBBA_BUILDDIR"));
  snprintf(logpath, sizeof logpath, "%s/pull.log", tmpdir);
  const char *sh[] = {"sh", "-c", "echo from-registry; exit 0"};
  dibba_container_opts_t o = {.id = id, .ns = "k8s.io", .image = image, .logger = logger, .log_path = logpath};
  o.oci.command = sh;
  o.oci.n_command = 3;
  ctr_t run = {0}, w = {0}, del = {0};
  ck_assert_int_eq(dibba_containerd_container_run(e.ctd, &o, on_run, &run), 0);
  ck_assert(run_until(&e.loop, &run.done, 1, 60000));
  ck_assert_msg(run.err == 0, "run: %s", run.msg);
  ck_assert_int_eq(dibba_containerd_container_wait(e.ctd, "k8s.io", id, 30000, on_exit_cb, &w), 0);
  ck_assert(run_until(&e.loop, &w.done, 1, 40000));
  ck_assert_msg(w.err == 0, "wait: %s", w.msg);
  ck_assert_uint_eq(w.status, 0);
  ck_assert(log_has(logpath, " stdout F from-registry", 5000));
  ck_assert_int_eq(dibba_containerd_container_delete(e.ctd, "k8s.io", id, on_deleted, &del), 0);
  ck_assert(run_until(&e.loop, &del.done, 1, 30000));
  ck_assert_msg(del.err == 0, "delete: %s", del.msg);
  env_down(&e);
  registry_stop();
}
END_TEST

/* ---------------- an exit while containerd is down ---------------- */

START_TEST(exit_while_containerd_down_is_not_missed) {
  env_t e;
  env_up(&e);
  char ns[64], id[64];
  snprintf(ns, sizeof ns, "dibba-rs-%d", (int)getpid());
  snprintf(id, sizeof id, "rs-%d", (int)getpid());
  img_t im;
  import_archive(&e, ns, busybox_tar, &im);
  ck_assert_msg(im.err == 0, "import: %s", im.msg);
  e.task_filters = 1;
  e.watch_id = id;
  e.resubscribe = 1;
  subscribe(&e);

  const char *sh[] = {"sh", "-c", "sleep 2; exit 7"};
  dibba_container_opts_t o = {.id = id, .ns = ns, .image = im.name};
  o.oci.command = sh;
  o.oci.n_command = 3;
  ctr_t run = {0}, w = {0}, del = {0};
  ck_assert_int_eq(dibba_containerd_container_run(e.ctd, &o, on_run, &run), 0);
  ck_assert(run_until(&e.loop, &run.done, 1, 60000));
  ck_assert_msg(run.err == 0, "run: %s", run.msg);
  ck_assert(run_until(&e.loop, &e.task_start, 1, 10000));
  /* The waiter is in flight across the whole outage. */
  ck_assert_int_eq(dibba_containerd_container_wait(e.ctd, ns, id, 60000, on_exit_cb, &w), 0);

  /* kill -9 containerd; the shim keeps the container running until it exits on its own. */
  containerd_kill();
  ck_assert(run_until(&e.loop, &e.sub_done, 1, 10000));
  ck_assert_int_ge(count_shims(), 1);
  int gone = 0;
  for (int i = 0; i < 200 && !gone; i++) {
    run_until(&e.loop, &gone, 1, 50);
    gone = kill((pid_t)run.pid, 0) < 0 && errno == ESRCH;
  }
  ck_assert_msg(gone, "the container's process %u did not exit", run.pid);
  ck_assert_int_eq(w.done, 0);
  ck_assert_int_eq(e.task_exit, 0);

  /* containerd again on the same socket, root and state: the client reconnects by itself, the state callback
   * subscribes again, and the waiter resyncs through Tasks.Get. */
  int ready_before = e.ready;
  containerd_start();
  ck_assert(run_until(&e.loop, &e.ready, ready_before + 1, 15000));
  ck_assert(run_until(&e.loop, &w.done, 1, 30000));
  ck_assert_msg(w.err == 0, "wait: %s", w.msg);
  ck_assert_uint_eq(w.status, 7);
  ck_assert_int_eq(w.oom, 0);
  /* The event stream is back: the delete is seen on it. (The shim's own requeued /tasks/exit may or may not have
   * arrived; when it did, it carries the same status.) */
  ck_assert_ptr_nonnull(e.sub);
  if (e.task_exit)
    ck_assert_uint_eq(e.event_exit_status, 7);
  ck_assert_int_eq(dibba_containerd_container_delete(e.ctd, ns, id, on_deleted, &del), 0);
  ck_assert(run_until(&e.loop, &del.done, 1, 30000));
  ck_assert_msg(del.err == 0, "delete: %s", del.msg);
  ck_assert(run_until(&e.loop, &e.task_delete, 1, 10000));
  e.resubscribe = 0;
  dibba_grpc_call_cancel(e.sub);
  ck_assert(run_until(&e.loop, &e.sub_done, 2, 5000));
  env_down(&e);
}
END_TEST

int main(void) {
  dibba_alloc_init();
  Suite *s = suite_create("containerd");
  TCase *tc = tcase_create("live");
  tcase_add_unchecked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 90);
  tcase_add_test(tc, version_namespaces_and_not_found);
  tcase_add_test(tc, fifty_concurrent_versions);
  tcase_add_test(tc, introspection_and_cri_images);
  tcase_add_test(tc, events_and_reconnect_after_kill);
  tcase_add_test(tc, image_import_twice_reuses_snapshots);
  tcase_add_test(tc, container_run_logs_cgroup_stop_delete_oom);
  tcase_add_test(tc, exec_output_timeout_and_missing);
  tcase_add_test(tc, cri_pull_from_local_registry_and_run);
  tcase_add_test(tc, exit_while_containerd_down_is_not_missed);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
