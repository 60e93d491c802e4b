/* SPDX-License-Identifier: Apache-2.0 */
/* Tests for plugins/pods: the plugin loaded through the registry, each task driven by dibba_task_run against a
 * real, private containerd that this test starts and removes. */
#include <arpa/inet.h>
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdarg.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "dibba/alloc.h"
#include "dibba/config.h"
#include "dibba/task.h"
#include "dibba/task_registry.h"
#include "dibba/pbjson.h"
#include "dibba/pod.h"

extern char **environ;

static char tmpdir[64];
static char sockpath[128];
static char busybox_tar[160];
static char pause_tar[160];

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
static void setup(void) {
  snprintf(tmpdir, sizeof tmpdir, "/tmp/dibba-pod-XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(tmpdir));
  snprintf(sockpath, sizeof sockpath, "%s/containerd.sock", tmpdir);
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
                              "[plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"%s/opt\"\n",
                              tmpdir, tmpdir, sockpath, sockpath, tmpdir);
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
  snprintf(pause_tar, sizeof pause_tar, "%s/pause.tar", tmpdir);
  snprintf(cmd, sizeof cmd,
           "/usr/bin/python3 %s/tools/image/build-oci.py pause --pause-bin %s/tools/pause/dibba-pause --out %s "
           ">>%s/build-oci.log 2>&1",
           src ? src : "..", getenv("DIBBA_BUILDDIR"), pause_tar, tmpdir);
  if (system(cmd) != 0)
    fprintf(stderr, "building %s failed (see %s/build-oci.log)\n", pause_tar, tmpdir);
  containerd_start();
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

static void teardown(void) {
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

static char *capture(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *capture(const char *fmt, ...) {
  char cmd[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(cmd, sizeof cmd, fmt, ap);
  va_end(ap);
  FILE *f = popen(cmd, "r");
  ck_assert_ptr_nonnull(f);
  char *out = dibba_xcalloc(1, 65536);
  size_t n = fread(out, 1, 65535, f);
  out[n] = '\0';
  pclose(f);
  return out;
}

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...) {
  char cmd[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(cmd, sizeof cmd, fmt, ap);
  va_end(ap);
  int rc = system(cmd);
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

/* A session directory in the integration fixtures' format (RUN_ROOT/<tag>/{owner,ledger}), so that
 * fixtures.cleanup_stale() removes our bridge, subnet rules and pinned netns if this process dies. */
typedef struct session_s {
  char *dir, *tag;
} session_t;

static session_t sess;

static char *proc_starttime(pid_t pid) {
  char p[64];
  snprintf(p, sizeof p, "/proc/%d/stat", (int)pid);
  char *t = NULL;
  size_t len = 0;
  if (dibba_read_small_file(p, 4096, &t, &len) < 0)
    return NULL;
  char *rp = strrchr(t, ')');
  char *save = NULL, *tok = strtok_r(rp + 1, " ", &save);
  for (int i = 0; tok && i < 19; i++)
    tok = strtok_r(NULL, " ", &save);
  char *r = dibba_xstrdup(tok ? tok : "0");
  free(t);
  return r;
}

static const char *run_root(void) {
  const char *r = getenv("DIBBA_IT_ROOT");
  return r ? r : "/tmp/dibba-it";
}

static void session_open(void) {
  mkdir(run_root(), 0755);
  char rnd[8];
  snprintf(rnd, sizeof rnd, "%04x", (unsigned)(getpid() ^ (unsigned)time(NULL)) & 0xffff);
  sess.tag = dibba_xasprintf("%x%s", (unsigned)getpid(), rnd);
  sess.dir = dibba_xasprintf("%s/%s", run_root(), sess.tag);
  if (mkdir(sess.dir, 0700) < 0) {
    perror(sess.dir);
    exit(EXIT_FAILURE);
  }
  char *st = proc_starttime(getpid());
  char *p = dibba_xasprintf("%s/owner", sess.dir);
  FILE *f = fopen(p, "w");
  if (!f) {
    perror(p);
    exit(EXIT_FAILURE);
  }
  fprintf(f, "%d %s\n", (int)getpid(), st);
  fclose(f);
  free(p);
  free(st);
}

static void session_record(const char *kind, const char *value) {
  char *p = dibba_xasprintf("%s/ledger", sess.dir);
  FILE *f = fopen(p, "a");
  ck_assert_ptr_nonnull(f);
  fprintf(f, "%s %s\n", kind, value);
  fflush(f);
  fsync(fileno(f));
  fclose(f);
  free(p);
}

/* The fixtures' own teardown: netns, bridges, iptables rules of the recorded subnets, mounts, the dir. */
static void session_close(void) {
  if (!sess.dir)
    return;
  const char *src = getenv("DIBBA_SRCDIR");
  sh("cd '%s/tests/integration' && python3 -c 'import fixtures; fixtures.clean_session(\"%s\")' >/dev/null 2>&1",
     src ? src : ".", sess.dir);
  /* Backstop if python is missing: the pinned netns mounts and the directory. */
  sh("for m in $(grep -o ' %s/[^ ]*' /proc/self/mountinfo); do umount -l $m; done 2>/dev/null; rm -rf '%s'", sess.dir,
     sess.dir);
  free(sess.dir);
  free(sess.tag);
  sess.dir = NULL;
}

typedef struct net_s {
  char name[64], bridge[32], subnet[32], gateway[32], prefix[32];
  char *conf_dir, *data_dir, *state_dir, *netns_dir;
} net_t;

/* A fresh dbt<N> bridge and a 10.244.X.0/24 subnet that no live session and no route uses. */
static void net_new(net_t *n, const char *name) {
  char *lockp = dibba_xasprintf("%s/.lock-net", run_root());
  int lk = open(lockp, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  free(lockp);
  ck_assert_int_ge(lk, 0);
  flock(lk, LOCK_EX);
  char *used = capture("cat %s/*/ledger 2>/dev/null; ip -4 route show table all; ip -4 addr", run_root());
  int x = -1;
  for (int tries = 0; tries < 400 && x < 0; tries++) {
    int c = 10 + rand() % 240;
    char s[32];
    snprintf(s, sizeof s, "10.244.%d.", c);
    if (!strstr(used, s))
      x = c;
  }
  ck_assert_int_ge(x, 0);
  for (int i = 0; i < 100000; i++) {
    snprintf(n->bridge, sizeof n->bridge, "dbt%d", i);
    char needle[48], sysp[64];
    snprintf(needle, sizeof needle, "bridge %s\n", n->bridge);
    snprintf(sysp, sizeof sysp, "/sys/class/net/%s", n->bridge);
    if (!strstr(used, needle) && access(sysp, F_OK) != 0)
      break;
  }
  free(used);
  snprintf(n->name, sizeof n->name, "%s", name);
  snprintf(n->subnet, sizeof n->subnet, "10.244.%d.0/24", x);
  snprintf(n->gateway, sizeof n->gateway, "10.244.%d.1", x);
  snprintf(n->prefix, sizeof n->prefix, "10.244.%d.", x);
  session_record("subnet", n->subnet);
  session_record("bridge", n->bridge);
  session_record("netname", n->name);
  flock(lk, LOCK_UN);
  close(lk);
  char *base = dibba_xasprintf("%s/cni-%s", sess.dir, n->bridge);
  mkdir(base, 0755);
  n->conf_dir = dibba_xasprintf("%s/net.d", base);
  n->data_dir = dibba_xasprintf("%s/ipam", base);
  n->state_dir = dibba_xasprintf("%s/state", base);
  n->netns_dir = dibba_xasprintf("%s/netns", base);
  mkdir(n->conf_dir, 0755);
  mkdir(n->data_dir, 0755);
  char *conf = dibba_xasprintf(
      "{\"cniVersion\":\"1.0.0\",\"name\":\"%s\",\"plugins\":["
      "{\"type\":\"bridge\",\"bridge\":\"%s\",\"isGateway\":true,\"ipMasq\":true,\"hairpinMode\":true,"
      "\"ipam\":{\"type\":\"host-local\",\"dataDir\":\"%s\",\"ranges\":[[{\"subnet\":\"%s\",\"gateway\":\"%s\"}]],"
      "\"routes\":[{\"dst\":\"0.0.0.0/0\"}]}},"
      "{\"type\":\"portmap\",\"capabilities\":{\"portMappings\":true}},"
      "{\"type\":\"loopback\"}]}",
      n->name, n->bridge, n->data_dir, n->subnet, n->gateway);
  char *cpath = dibba_xasprintf("%s/10-test.conflist", n->conf_dir);
  write_file(cpath, conf);
  free(cpath);
  free(conf);
  free(base);
}

static void net_free(net_t *n) {
  free(n->conf_dir);
  free(n->data_dir);
  free(n->state_dir);
  free(n->netns_dir);
}

/* ---------------- driving tasks ---------------- */

static int done;
static void on_done(dibba_task_run_t *r) { done++; }
static void tick(uv_timer_t *t) {}

/* Run task name with args (JSON text) to its end; returns the run (caller frees). */
static void run_task(uv_loop_t *loop, dibba_task_registry_t *reg, const char *name, const char *args,
                     dibba_task_run_t *r, uint64_t ms) {
  Dibba__V1__TaskEnvelope env = DIBBA__V1__TASK_ENVELOPE__INIT;
  env.id = (char *)name;
  env.name = (char *)name;
  env.args_case = DIBBA__V1__TASK_ENVELOPE__ARGS_ARGS_JSON;
  env.args_json = (char *)args;
  char err[256] = "";
  done = 0;
  ck_assert_msg(dibba_task_run_start(r, reg, &env, NULL, on_done, NULL, err, sizeof err) == 0, "%s: %s", name, err);
  uv_timer_t t;
  uv_timer_init(loop, &t);
  uv_timer_start(&t, tick, 10, 10);
  uint64_t end = uv_now(loop) + ms;
  while (!done && uv_now(loop) < end)
    uv_run(loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
  ck_assert_msg(done, "%s did not end", name);
}

static const char *result_str(dibba_task_run_t *r, const char *key) {
  return json_string_value(json_object_get(r->result, key));
}

static void expect_ok(dibba_task_run_t *r, const char *name) {
  ck_assert_msg(r->state == DIBBA_TASK_SUCCESS, "%s: state %d: %s", name, r->state,
                r->error_message ? r->error_message : "");
}

START_TEST(pods_plugin_lifecycle) {
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  dibba_task_registry_t reg;
  dibba_task_registry_init(&reg, &loop, "node1");
  char plugin[300], err[512];
  snprintf(plugin, sizeof plugin, "%s/plugins/pods/pods.so", getenv("DIBBA_BUILDDIR"));
  char *cfgtext = dibba_xasprintf("{\"containerd\": {\"socket\": \"unix://%s\", \"namespace\": \"dibba-pods\"},"
                                  " \"logger\": \"%s/tools/logger/dibba-logger\", \"log_dir\": \"%s/logs\","
                                  " \"state_dir\": \"%s/exec\"}",
                                  sockpath, getenv("DIBBA_BUILDDIR"), tmpdir, tmpdir);
  json_t *cfg = json_loads(cfgtext, 0, NULL);
  free(cfgtext);
  ck_assert_ptr_nonnull(cfg);
  ck_assert_msg(dibba_plugin_load(&reg, plugin, cfg, err, sizeof err) == 0, "load: %s", err);
  const char *names[] = {"import_image",   "pull_image",       "list_images",    "run_container",
                         "stop_container", "delete_container", "container_logs", "exec"};
  for (size_t i = 0; i < 8; i++)
    ck_assert_ptr_nonnull(dibba_task_lookup(&reg, names[i]));

  dibba_task_run_t r;
  char args[600];
  /* Argument validation names the field. */
  run_task(&loop, &reg, "run_container", "{\"image\": \"x\"}", &r, 5000);
  ck_assert_int_eq(r.state, DIBBA_TASK_FAILURE);
  ck_assert_ptr_nonnull(strstr(r.error_message, "args.id"));
  dibba_task_run_free(&r);
  run_task(&loop, &reg, "exec", "{\"id\": \"p1\", \"command\": \"ls\"}", &r, 5000);
  ck_assert_int_eq(r.state, DIBBA_TASK_FAILURE);
  ck_assert_ptr_nonnull(strstr(r.error_message, "args.command"));
  dibba_task_run_free(&r);

  snprintf(args, sizeof args, "{\"archive\": \"%s\"}", busybox_tar);
  run_task(&loop, &reg, "import_image", args, &r, 60000);
  expect_ok(&r, "import_image");
  ck_assert_str_eq(result_str(&r, "name"), "docker.io/library/busybox:latest");
  dibba_task_run_free(&r);
  run_task(&loop, &reg, "list_images", "{}", &r, 10000);
  expect_ok(&r, "list_images");
  ck_assert_str_eq(json_string_value(json_object_get(json_array_get(json_object_get(r.result, "images"), 0), "name")),
                   "docker.io/library/busybox:latest");
  dibba_task_run_free(&r);

  run_task(&loop, &reg, "run_container",
           "{\"id\": \"p1\", \"image\": \"docker.io/library/busybox:latest\", \"command\": [\"sh\", \"-c\"],"
           " \"args\": [\"echo marker-$GREETING; exec sleep 60\"], \"env\": {\"GREETING\": \"pods\"},"
           " \"workingDir\": \"/tmp\", \"resources\": {\"cpu_millicores\": 500, \"memory\": 67108864}}",
           &r, 60000);
  expect_ok(&r, "run_container");
  ck_assert_str_eq(result_str(&r, "status"), "running");
  ck_assert_int_gt(json_integer_value(json_object_get(r.result, "pid")), 0);
  dibba_task_run_free(&r);

  int seen = 0;
  for (int i = 0; i < 50 && !seen; i++) {
    run_task(&loop, &reg, "container_logs", "{\"id\": \"p1\", \"tail_lines\": 10}", &r, 5000);
    if (r.state == DIBBA_TASK_SUCCESS) {
      const char *l = json_string_value(json_array_get(json_object_get(r.result, "lines"), 0));
      seen = l && strstr(l, " stdout F marker-pods") != NULL;
    }
    dibba_task_run_free(&r);
    if (!seen)
      usleep(100 * 1000);
  }
  ck_assert_msg(seen, "marker not in the container log");

  run_task(&loop, &reg, "exec",
           "{\"id\": \"p1\", \"command\": [\"sh\", \"-c\", \"pwd; echo e >&2; exit 4\"], \"timeout_ms\": 10000}", &r,
           20000);
  expect_ok(&r, "exec");
  ck_assert_int_eq(json_integer_value(json_object_get(r.result, "exit_code")), 4);
  ck_assert_str_eq(result_str(&r, "stdout"), "/\n");
  ck_assert_str_eq(result_str(&r, "stderr"), "e\n");
  ck_assert(json_is_false(json_object_get(r.result, "timed_out")));
  dibba_task_run_free(&r);

  run_task(&loop, &reg, "stop_container", "{\"id\": \"p1\", \"grace_ms\": 300}", &r, 30000);
  expect_ok(&r, "stop_container");
  ck_assert_int_eq(json_integer_value(json_object_get(r.result, "exit_status")), 128 + SIGKILL);
  dibba_task_run_free(&r);
  run_task(&loop, &reg, "delete_container", "{\"id\": \"p1\"}", &r, 30000);
  expect_ok(&r, "delete_container");
  dibba_task_run_free(&r);
  /* Exec into what is gone: ENOENT. */
  run_task(&loop, &reg, "exec", "{\"id\": \"p1\", \"command\": [\"true\"]}", &r, 20000);
  ck_assert_int_eq(r.state, DIBBA_TASK_FAILURE);
  ck_assert_int_eq(r.error, -ENOENT);
  dibba_task_run_free(&r);

  /* Nothing left in the namespace: no container, task or container snapshot (only the image's layer). */
  char cmd[600], out[4096] = "";
  snprintf(cmd, sizeof cmd,
           "ctr -a %s -n dibba-pods c ls -q; ctr -a %s -n dibba-pods t ls -q; ctr -a %s -n dibba-pods snapshot ls",
           sockpath, sockpath, sockpath);
  FILE *f = popen(cmd, "r");
  ck_assert_ptr_nonnull(f);
  size_t n = fread(out, 1, sizeof out - 1, f);
  out[n] = '\0';
  pclose(f);
  ck_assert_msg(strstr(out, "p1") == NULL, "left over: %s", out);
  ck_assert_msg(strstr(out, "Active") == NULL, "active snapshot left: %s", out);

  dibba_task_registry_free(&reg);
  uv_run(&loop, UV_RUN_DEFAULT); /* the plugin's containerd client finishes closing */
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  json_decref(cfg);
}
END_TEST

/* ---------------- pods on a real bridge ---------------- */

typedef struct live_s {
  uv_loop_t loop;
  dibba_task_registry_t reg;
  json_t *cfg;
  net_t net;
} live_t;

static void plugin_load(live_t *l) {
  char plugin[300], err[512];
  snprintf(plugin, sizeof plugin, "%s/plugins/pods/pods.so", getenv("DIBBA_BUILDDIR"));
  dibba_task_registry_init(&l->reg, &l->loop, "node1");
  ck_assert_msg(dibba_plugin_load(&l->reg, plugin, l->cfg, err, sizeof err) == 0, "load: %s", err);
}

static void plugin_unload(live_t *l) {
  dibba_task_registry_free(&l->reg);
  for (int i = 0; i < 50; i++)
    uv_run(&l->loop, UV_RUN_NOWAIT), usleep(10 * 1000);
}

/* The manager's periodic reconcile; a test that must not lean on it sets it high before live_open. */
static int live_reconcile_ms = 1000;

static void live_open(live_t *l, const char *netname) {
  ck_assert_int_eq(uv_loop_init(&l->loop), 0);
  net_new(&l->net, netname);
  char *cfgtext = dibba_xasprintf(
      "{\"containerd\": {\"socket\": \"unix://%s\", \"namespace\": \"%s\"},"
      " \"logger\": \"%s/tools/logger/dibba-logger\", \"log_dir\": \"%s/logs\", \"state_dir\": \"%s/exec\","
      " \"cni\": {\"path\": \"/usr/lib/cni\", \"conf_dir\": \"%s\", \"net_name\": \"%s\", \"timeout_ms\": 60000},"
      " \"worker\": {\"state_dir\": \"%s\", \"netns_dir\": \"%s\"},"
      " \"pod\": {\"backoff_base_ms\": 200, \"backoff_max_ms\": 2000, \"reconcile_ms\": %d, \"dir\": \"%s/pods\"}}",
      sockpath, netname, getenv("DIBBA_BUILDDIR"), tmpdir, tmpdir, l->net.conf_dir, l->net.name, l->net.state_dir,
      l->net.netns_dir, live_reconcile_ms, l->net.state_dir);
  l->cfg = json_loads(cfgtext, 0, NULL);
  free(cfgtext);
  ck_assert_ptr_nonnull(l->cfg);
  plugin_load(l);
  dibba_task_run_t r;
  char args[300];
  snprintf(args, sizeof args, "{\"archive\": \"%s\"}", busybox_tar);
  run_task(&l->loop, &l->reg, "import_image", args, &r, 60000);
  expect_ok(&r, "import busybox");
  dibba_task_run_free(&r);
  snprintf(args, sizeof args, "{\"archive\": \"%s\"}", pause_tar);
  run_task(&l->loop, &l->reg, "import_image", args, &r, 60000);
  expect_ok(&r, "import pause");
  dibba_task_run_free(&r);
}

static void live_close(live_t *l) {
  plugin_unload(l);
  uv_run(&l->loop, UV_RUN_DEFAULT);
  ck_assert_int_eq(uv_loop_close(&l->loop), 0);
  json_decref(l->cfg);
  net_free(&l->net);
}

static const char *pod_phase_of(dibba_task_run_t *r) {
  return json_string_value(json_object_get(json_object_get(r->result, "status"), "phase"));
}

static json_t *cstatus(json_t *status, const char *name) {
  size_t i;
  json_t *c;
  json_array_foreach(json_object_get(status, "containerStatuses"), i,
                     c) if (strcmp(json_string_value(json_object_get(c, "name")), name) == 0) return c;
  return NULL;
}

static void get_pod(live_t *l, const char *name, dibba_task_run_t *r) {
  char args[200];
  snprintf(args, sizeof args, "{\"name\": \"%s\"}", name);
  run_task(&l->loop, &l->reg, "get_pod", args, r, 5000);
}

/* Run the loop for ms, so that timers and events are handled. */
static void spin(live_t *l, uint64_t ms) {
  uv_timer_t t;
  uv_timer_init(&l->loop, &t);
  uv_timer_start(&t, tick, 10, 10);
  uint64_t end = uv_now(&l->loop) + ms;
  while (uv_now(&l->loop) < end)
    uv_run(&l->loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(&l->loop, UV_RUN_NOWAIT);
}

static int ip_reserved(net_t *n, const char *ip) {
  char *p = dibba_xasprintf("%s/%s/%s", n->data_dir, n->name, ip);
  int r = access(p, F_OK) == 0;
  free(p);
  return r;
}

static void delete_pod(live_t *l, const char *name) {
  dibba_task_run_t r;
  char args[200];
  snprintf(args, sizeof args, "{\"name\": \"%s\"}", name);
  run_task(&l->loop, &l->reg, "delete_pod", args, &r, 60000);
  expect_ok(&r, "delete_pod");
  dibba_task_run_free(&r);
}

/* Nothing of any pod left: containers, tasks, active snapshots, netns pins, veths, IP reservations. */
static void assert_clean(live_t *l) {
  const char *ns = l->net.name;
  char *out = capture("ctr -a %s -n %s c ls -q; ctr -a %s -n %s t ls -q; ctr -a %s -n %s snapshot ls | grep -c Active",
                      sockpath, ns, sockpath, ns, sockpath, ns);
  ck_assert_msg(strstr(out, "dp-") == NULL && atoi(out) == 0, "left over: %s", out);
  free(out);
  char *pins = capture("ls %s 2>/dev/null", l->net.netns_dir);
  ck_assert_msg(pins[0] == '\0', "netns left: %s", pins);
  free(pins);
  char *veths = capture("ip -o link show master %s 2>/dev/null | wc -l", l->net.bridge);
  ck_assert_int_eq(atoi(veths), 0);
  free(veths);
  char *ips = capture("ls %s/%s 2>/dev/null | grep -c '^10\\.'", l->net.data_dir, l->net.name);
  ck_assert_int_eq(atoi(ips), 0);
  free(ips);
}

/* GET / from ip:port straight from the test (the pod's netns is the test's own), 2 s limit. */
static int http_get(const char *ip, int port, char *out, size_t outlen) {
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  if (inet_pton(AF_INET, ip, &sa.sin_addr) != 1)
    return -1;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct timeval tv = {.tv_sec = 2};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  size_t got = 0;
  int rc = -1;
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0 && write(fd, "GET / HTTP/1.0\r\n\r\n", 18) == 18) {
    ssize_t n;
    while (got + 1 < outlen && (n = read(fd, out + got, outlen - 1 - got)) > 0)
      got += (size_t)n;
    rc = 0;
  }
  out[got] = '\0';
  close(fd);
  return rc;
}

#define WEB_POD                                                                                                        \
  "{\"metadata\": {\"name\": \"web\", \"labels\": {\"app\": \"web\"}}, \"spec\": {\"terminationGracePeriodSeconds\": " \
  "2,"                                                                                                                 \
  " \"containers\": [{\"name\": \"httpd\", \"image\": \"docker.io/library/busybox:latest\", \"command\": [\"sh\", "    \
  "\"-c\"], \"args\": [\"mkdir -p /www && echo hello-$WHO > /www/index.html && exec httpd -f -p 80 -h /www\"],"        \
  " \"env\": [{\"name\": \"WHO\", \"value\": \"dibba\"}], \"resources\": {\"limits\": {\"cpu\": \"500m\", "            \
  "\"memory\": "                                                                                                       \
  "\"64Mi\"}}, \"volumeMounts\": [{\"name\": \"scratch\", \"mountPath\": \"/scratch\"}]},"                             \
  " {\"name\": \"fetch\", \"image\": \"docker.io/library/busybox:latest\", \"workingDir\": \"/tmp\", \"command\": "    \
  "[\"sh\", \"-c\", \"while true; do wget -q -O - http://127.0.0.1/; sleep 0.5; done\"]}],"                            \
  " \"volumes\": [{\"name\": \"scratch\", \"emptyDir\": {}}]}}"

START_TEST(pod_two_containers) {
  if (geteuid() != 0)
    return;
  live_t l;
  live_open(&l, "dibba-pod-a");
  dibba_task_run_t r;
  run_task(&l.loop, &l.reg, "create_pod", WEB_POD, &r, 90000);
  expect_ok(&r, "create_pod");
  ck_assert_str_eq(json_string_value(json_object_get(r.result, "phase")), "Running");
  char ip[64];
  snprintf(ip, sizeof ip, "%s", json_string_value(json_object_get(r.result, "podIP")));
  ck_assert_msg(strncmp(ip, l.net.prefix, strlen(l.net.prefix)) == 0, "pod IP %s", ip);
  dibba_task_run_free(&r);
  ck_assert(ip_reserved(&l.net, ip));

  /* The page, from the host to the pod IP. */
  int ok = 0;
  for (int i = 0; i < 50 && !ok; i++) {
    char page[4096];
    ok = http_get(ip, 80, page, sizeof page) == 0 && strstr(page, "hello-dibba") != NULL;
    if (!ok)
      usleep(100 * 1000);
  }
  if (!ok) {
    char *dbg = capture("ctr -a %s -n %s t ls; cat %s/logs/*/*.log | tail -5; nsenter --net=%s/$(ls %s) ip -o addr",
                        sockpath, l.net.name, tmpdir, l.net.netns_dir, l.net.netns_dir);
    ck_abort_msg("no page from %s:80: %s", ip, dbg);
  }
  /* The second container fetched it over localhost: its log says so. */
  ok = 0;
  for (int i = 0; i < 50 && !ok; i++) {
    run_task(&l.loop, &l.reg, "pod_logs", "{\"name\": \"web\", \"container\": \"fetch\", \"tailLines\": 5}", &r, 5000);
    ok = r.state == DIBBA_TASK_SUCCESS &&
         strcmp(json_string_value(json_array_get(json_object_get(r.result, "lines"), 0)) ?: "", "hello-dibba") == 0;
    dibba_task_run_free(&r);
    if (!ok)
      spin(&l, 100);
  }
  ck_assert_msg(ok, "fetch container log lacks the page");
  /* Exec: the shared UTS namespace has the pod's hostname; env and emptyDir are there. */
  run_task(&l.loop, &l.reg, "pod_exec",
           "{\"name\": \"web\", \"container\": \"httpd\", \"command\": [\"sh\", \"-c\", \"hostname; tr \\\"\\\\000\\\" "
           "\\\"\\\\n\\\" < /proc/$(pidof httpd)/environ | grep ^WHO=; "
           "touch /scratch/x && echo ok\"]}",
           &r, 20000);
  expect_ok(&r, "pod_exec");
  ck_assert_str_eq(result_str(&r, "stdout"), "web\nWHO=dibba\nok\n");
  dibba_task_run_free(&r);

  /* Same spec again: a no-op with the status; another spec under that name: conflict. */
  run_task(&l.loop, &l.reg, "create_pod", WEB_POD, &r, 20000);
  expect_ok(&r, "create_pod again");
  ck_assert_str_eq(json_string_value(json_object_get(r.result, "podIP")), ip);
  dibba_task_run_free(&r);
  run_task(
      &l.loop, &l.reg, "create_pod",
      "{\"metadata\": {\"name\": \"web\"}, \"spec\": {\"containers\": [{\"name\": \"x\", \"image\": \"busybox\"}]}}",
      &r, 20000);
  ck_assert_int_eq(r.state, DIBBA_TASK_FAILURE);
  ck_assert_int_eq(r.error, -EEXIST);
  dibba_task_run_free(&r);
  run_task(&l.loop, &l.reg, "list_pods", "{\"labelSelector\": \"app=web\"}", &r, 5000);
  expect_ok(&r, "list_pods");
  ck_assert_int_eq(json_array_size(json_object_get(r.result, "items")), 1);
  dibba_task_run_free(&r);

  delete_pod(&l, "web");
  ck_assert(!ip_reserved(&l.net, ip));
  assert_clean(&l);
  delete_pod(&l, "web"); /* a missing pod: success */
  live_close(&l);
}
END_TEST

#define CRASH_POD(name, policy)                                                                                        \
  "{\"metadata\": {\"name\": \"" name "\"}, \"spec\": {\"restartPolicy\": \"" policy                                   \
  "\", \"containers\": [{\"name\": "                                                                                   \
  "\"c\", \"image\": \"docker.io/library/busybox:latest\", \"command\": [\"sh\", \"-c\", \"sleep 0.2; exit 1\"]}]}}"

START_TEST(pod_restart_policy) {
  if (geteuid() != 0)
    return;
  live_t l;
  live_open(&l, "dibba-pod-b");
  dibba_task_run_t r;
  run_task(&l.loop, &l.reg, "create_pod", CRASH_POD("crash", "Always"), &r, 90000);
  expect_ok(&r, "create_pod Always");
  dibba_task_run_free(&r);
  int restarts = 0, last = -1;
  for (int i = 0; i < 200 && restarts < 3; i++) {
    get_pod(&l, "crash", &r);
    expect_ok(&r, "get_pod");
    json_t *c = cstatus(json_object_get(r.result, "status"), "c");
    int n = (int)json_integer_value(json_object_get(c, "restartCount"));
    ck_assert_int_ge(n, last); /* never goes back */
    last = restarts = n;
    if (n > 0) {
      json_t *ls = json_object_get(json_object_get(c, "lastState"), "terminated");
      ck_assert_int_eq(json_integer_value(json_object_get(ls, "exitCode")), 1);
      ck_assert_str_eq(json_string_value(json_object_get(ls, "reason")), "Error");
    }
    dibba_task_run_free(&r);
    spin(&l, 100);
  }
  ck_assert_msg(restarts >= 3, "only %d restarts", restarts);

  run_task(&l.loop, &l.reg, "create_pod", CRASH_POD("once", "Never"), &r, 90000);
  expect_ok(&r, "create_pod Never");
  dibba_task_run_free(&r);
  int done_ok = 0;
  for (int i = 0; i < 100 && !done_ok; i++) {
    get_pod(&l, "once", &r);
    json_t *st = json_object_get(r.result, "status");
    json_t *term = json_object_get(json_object_get(cstatus(st, "c"), "state"), "terminated");
    done_ok = term && json_integer_value(json_object_get(term, "exitCode")) == 1 &&
              strcmp(json_string_value(json_object_get(term, "reason")), "Error") == 0 &&
              strcmp(pod_phase_of(&r), "Failed") == 0;
    dibba_task_run_free(&r);
    spin(&l, 100);
  }
  ck_assert_msg(done_ok, "the Never pod did not end Failed with exit code 1");
  spin(&l, 1000);
  get_pod(&l, "once", &r);
  ck_assert_int_eq(
      json_integer_value(json_object_get(cstatus(json_object_get(r.result, "status"), "c"), "restartCount")), 0);
  dibba_task_run_free(&r);
  delete_pod(&l, "crash");
  delete_pod(&l, "once");
  assert_clean(&l);
  live_close(&l);
}
END_TEST

#define SLEEP_POD                                                                                                      \
  "{\"metadata\": {\"name\": \"sleeper\"}, \"spec\": {\"terminationGracePeriodSeconds\": 1, \"containers\": "          \
  "[{\"name\": \"s\", \"image\": \"docker.io/library/busybox:latest\", \"command\": [\"sleep\", \"3600\"]}]}}"

START_TEST(pod_reconcile) {
  if (geteuid() != 0)
    return;
  live_t l;
  live_open(&l, "dibba-pod-c");
  dibba_task_run_t r;
  run_task(&l.loop, &l.reg, "create_pod", SLEEP_POD, &r, 90000);
  expect_ok(&r, "create_pod");
  char ip[64];
  snprintf(ip, sizeof ip, "%s", json_string_value(json_object_get(r.result, "podIP")));
  dibba_task_run_free(&r);
  /* The worker goes away; its pods stay. An app process is killed meanwhile. */
  plugin_unload(&l);
  char *pid = capture("ctr -a %s -n %s t ls | awk '$1 ~ /^dp-.*-s$/ {print $2}'", sockpath, l.net.name);
  ck_assert_int_gt(atoi(pid), 0);
  ck_assert_int_eq(kill(atoi(pid), SIGKILL), 0);
  free(pid);
  plugin_load(&l);
  int ok = 0;
  for (int i = 0; i < 100 && !ok; i++) {
    spin(&l, 100);
    get_pod(&l, "sleeper", &r);
    if (r.state == DIBBA_TASK_SUCCESS) {
      json_t *st = json_object_get(r.result, "status");
      json_t *c = cstatus(st, "s");
      ok = strcmp(pod_phase_of(&r), "Running") == 0 && json_object_get(json_object_get(c, "state"), "running") &&
           json_integer_value(json_object_get(c, "restartCount")) == 1 &&
           strcmp(json_string_value(json_object_get(st, "podIP")), ip) == 0;
    }
    dibba_task_run_free(&r);
  }
  ck_assert_msg(ok, "the pod was not re-adopted and restarted");
  char *n = capture("ctr -a %s -n %s c ls -q | grep -c dp-", sockpath, l.net.name);
  ck_assert_int_eq(atoi(n), 2); /* sandbox + app: no duplicates */
  free(n);
  /* The pinned netns disappears; delete still runs CNI DEL and releases the IP. */
  char *pin = capture("ls %s", l.net.netns_dir);
  pin[strcspn(pin, "\n")] = '\0';
  char *path = dibba_xasprintf("%s/%s", l.net.netns_dir, pin);
  umount2(path, MNT_DETACH);
  ck_assert_int_eq(unlink(path), 0);
  free(path);
  free(pin);
  ck_assert(ip_reserved(&l.net, ip));
  delete_pod(&l, "sleeper");
  ck_assert(!ip_reserved(&l.net, ip));
  assert_clean(&l);
  live_close(&l);
}
END_TEST

#define KILL_POD(name, policy)                                                                                         \
  "{\"metadata\": {\"name\": \"" name "\"}, \"spec\": {\"restartPolicy\": \"" policy                                   \
  "\", \"terminationGracePeriodSeconds\": 1, \"containers\": [{\"name\": \"s\", \"image\": "                           \
  "\"docker.io/library/busybox:latest\", \"command\": [\"sleep\", \"3600\"]}]}}"

/* The pid of pod name's app task "s", from containerd (0 when there is none or it is not running). */
static int app_pid(live_t *l, const char *name) {
  char *out = capture("ctr -a %s -n %s c ls 'labels.\"dibba.io/pod-name\"==%s' -q 2>/dev/null | grep -- '-s$' | "
                      "while read c; do ctr -a %s -n %s t ls | awk -v c=$c '$1 == c && $3 == \"RUNNING\" {print $2}'; "
                      "done",
                      sockpath, l->net.name, name, sockpath, l->net.name);
  int pid = atoi(out);
  free(out);
  return pid;
}

/* While containerd is down, the app process of each pod is SIGKILLed; containerd comes back on the same socket, root
 * and state. The manager must notice the exits (events are re-subscribed, reconcile runs at READY) and apply the
 * restart policy: Always restarts the container, Never leaves it terminated with 137 and the pod Failed. */
START_TEST(pod_exit_while_containerd_down) {
  if (geteuid() != 0)
    return;
  live_t l;
  live_reconcile_ms = 600000; /* what notices the exits is the READY-time reconcile or the re-subscribed events */
  live_open(&l, "dibba-pod-e");
  dibba_task_run_t r;
  run_task(&l.loop, &l.reg, "create_pod", KILL_POD("always", "Always"), &r, 90000);
  expect_ok(&r, "create_pod Always");
  ck_assert_str_eq(json_string_value(json_object_get(r.result, "phase")), "Running");
  dibba_task_run_free(&r);
  run_task(&l.loop, &l.reg, "create_pod", KILL_POD("never", "Never"), &r, 90000);
  expect_ok(&r, "create_pod Never");
  ck_assert_str_eq(json_string_value(json_object_get(r.result, "phase")), "Running");
  dibba_task_run_free(&r);
  int pa = 0, pn = 0;
  for (int i = 0; i < 50 && (!pa || !pn); i++) {
    spin(&l, 100);
    pa = app_pid(&l, "always");
    pn = app_pid(&l, "never");
  }
  ck_assert_msg(pa > 0 && pn > 0, "no app task pids (%d, %d)", pa, pn);

  containerd_kill();
  spin(&l, 300); /* the manager sees the connection go */
  ck_assert_int_eq(kill(pa, SIGKILL), 0);
  ck_assert_int_eq(kill(pn, SIGKILL), 0);
  for (int i = 0; i < 100 && (kill(pa, 0) == 0 || kill(pn, 0) == 0); i++)
    usleep(20 * 1000); /* the shims reap them */
  spin(&l, 500);
  containerd_start();

  int ok_a = 0, ok_n = 0, newpid = 0;
  for (int i = 0; i < 300 && !(ok_a && ok_n); i++) {
    spin(&l, 100);
    get_pod(&l, "always", &r);
    if (!ok_a && r.state == DIBBA_TASK_SUCCESS) {
      json_t *c = cstatus(json_object_get(r.result, "status"), "s");
      int n = (int)json_integer_value(json_object_get(c, "restartCount"));
      ck_assert_int_le(n, 1);
      if (n == 1 && json_object_get(json_object_get(c, "state"), "running") &&
          strcmp(pod_phase_of(&r), "Running") == 0) {
        json_t *ls = json_object_get(json_object_get(c, "lastState"), "terminated");
        ck_assert_int_eq(json_integer_value(json_object_get(ls, "exitCode")), 137);
        newpid = app_pid(&l, "always");
        ok_a = newpid > 0 && newpid != pa;
      }
    }
    dibba_task_run_free(&r);
    get_pod(&l, "never", &r);
    if (!ok_n && r.state == DIBBA_TASK_SUCCESS) {
      json_t *c = cstatus(json_object_get(r.result, "status"), "s");
      json_t *term = json_object_get(json_object_get(c, "state"), "terminated");
      ok_n = term && json_integer_value(json_object_get(term, "exitCode")) == 137 &&
             strcmp(json_string_value(json_object_get(term, "reason")) ?: "", "Error") == 0 &&
             strcmp(pod_phase_of(&r) ?: "", "Failed") == 0;
    }
    dibba_task_run_free(&r);
  }
  if (!ok_a || !ok_n) {
    char *dbg = capture("ctr -a %s -n %s t ls 2>&1", sockpath, l.net.name);
    get_pod(&l, "always", &r);
    char *a = json_dumps(r.result, 0);
    dibba_task_run_free(&r);
    get_pod(&l, "never", &r);
    char *n = json_dumps(r.result, 0);
    dibba_task_run_free(&r);
    ck_abort_msg("exits not handled after containerd came back (always %d, never %d): %s\nalways: %s\nnever: %s", ok_a,
                 ok_n, dbg, a ? a : "", n ? n : "");
  }
  /* Settled: one restart, the Never container stays down, no duplicate containers. */
  spin(&l, 1500);
  get_pod(&l, "always", &r);
  ck_assert_int_eq(
      json_integer_value(json_object_get(cstatus(json_object_get(r.result, "status"), "s"), "restartCount")), 1);
  dibba_task_run_free(&r);
  ck_assert_int_eq(app_pid(&l, "always"), newpid);
  get_pod(&l, "never", &r);
  ck_assert_int_eq(
      json_integer_value(json_object_get(cstatus(json_object_get(r.result, "status"), "s"), "restartCount")), 0);
  dibba_task_run_free(&r);
  char *cnt = capture("ctr -a %s -n %s c ls -q | grep -c dp-", sockpath, l.net.name);
  ck_assert_int_eq(atoi(cnt), 4); /* two sandboxes + two apps */
  free(cnt);
  delete_pod(&l, "always");
  delete_pod(&l, "never");
  assert_clean(&l);
  live_close(&l);
}
END_TEST

#define NPODS 10

START_TEST(pod_many) {
  if (geteuid() != 0)
    return;
  live_t l;
  live_open(&l, "dibba-pod-d");
  dibba_task_run_t runs[NPODS];
  Dibba__V1__TaskEnvelope envs[NPODS];
  char args[NPODS][400], names[NPODS][16], err[256];
  int ended = 0;
  for (int i = 0; i < NPODS; i++) {
    snprintf(names[i], sizeof names[i], "p%d", i);
    snprintf(args[i], sizeof args[i],
             "{\"metadata\": {\"name\": \"%s\"}, \"spec\": {\"terminationGracePeriodSeconds\": 1, \"containers\": "
             "[{\"name\": \"s\", \"image\": \"docker.io/library/busybox:latest\", \"command\": [\"sleep\", "
             "\"3600\"]}]}}",
             names[i]);
    envs[i] = (Dibba__V1__TaskEnvelope)DIBBA__V1__TASK_ENVELOPE__INIT;
    envs[i].id = names[i];
    envs[i].name = "create_pod";
    envs[i].args_case = DIBBA__V1__TASK_ENVELOPE__ARGS_ARGS_JSON;
    envs[i].args_json = args[i];
  }
  done = 0;
  for (int i = 0; i < NPODS; i++)
    ck_assert_msg(dibba_task_run_start(&runs[i], &l.reg, &envs[i], NULL, on_done, NULL, err, sizeof err) == 0, "%s",
                  err);
  uv_timer_t t;
  uv_timer_init(&l.loop, &t);
  uv_timer_start(&t, tick, 10, 10);
  uint64_t end = uv_now(&l.loop) + 100000;
  while (done < NPODS && uv_now(&l.loop) < end)
    uv_run(&l.loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&t, NULL);
  ended = done;
  ck_assert_int_eq(ended, NPODS);
  for (int i = 0; i < NPODS; i++) {
    expect_ok(&runs[i], names[i]);
    const char *ip = json_string_value(json_object_get(runs[i].result, "podIP"));
    ck_assert_msg(ip && strncmp(ip, l.net.prefix, strlen(l.net.prefix)) == 0, "%s",
                  ip ? ip : json_dumps(runs[i].result, 0));
    for (int j = 0; j < i; j++)
      ck_assert_str_ne(ip, json_string_value(json_object_get(runs[j].result, "podIP")));
  }
  for (int i = 0; i < NPODS; i++)
    dibba_task_run_free(&runs[i]);
  for (int i = 0; i < NPODS; i++)
    delete_pod(&l, names[i]);
  assert_clean(&l);
  live_close(&l);
}
END_TEST

START_TEST(pod_pure) {
  int64_t v;
  ck_assert_int_eq(dibba_pod_parse_cpu("500m", &v), 0);
  ck_assert_int_eq(v, 500);
  ck_assert_int_eq(dibba_pod_parse_cpu("1.5", &v), 0);
  ck_assert_int_eq(v, 1500);
  ck_assert_int_eq(dibba_pod_parse_memory("64Mi", &v), 0);
  ck_assert_int_eq(v, 64 << 20);
  ck_assert_int_eq(dibba_pod_parse_memory("1G", &v), 0);
  ck_assert_int_eq(v, 1000000000);
  ck_assert_int_eq(dibba_pod_parse_memory("1Q", &v), -EINVAL);
  ck_assert_int_eq(dibba_pod_backoff_ms(10000, 300000, 0), 10000);
  ck_assert_int_eq(dibba_pod_backoff_ms(10000, 300000, 3), 80000);
  ck_assert_int_eq(dibba_pod_backoff_ms(10000, 300000, 10), 300000);
  Dibba__V1__ObjectMeta__LabelsEntry a = DIBBA__V1__OBJECT_META__LABELS_ENTRY__INIT, *ls[] = {&a};
  a.key = "app";
  a.value = "web";
  ck_assert_int_eq(dibba_pod_selector_match("app=web", ls, 1), 1);
  ck_assert_int_eq(dibba_pod_selector_match("app!=web", ls, 1), 0);
  ck_assert_int_eq(dibba_pod_selector_match("app,!tier", ls, 1), 1);
  ck_assert_int_eq(dibba_pod_selector_match("tier", ls, 1), 0);
  ProtobufCMessage *m = NULL;
  const char *bad = "{\"metadata\": {\"name\": \"Bad_Name\"}, \"spec\": {\"containers\": [{\"name\": \"a\", "
                    "\"image\": \"x\"}]}}";
  ck_assert_int_eq(dibba_pbjson_parse(bad, strlen(bad), &dibba__v1__pod__descriptor, NULL, &m, NULL), 0);
  char err[200];
  ck_assert_int_eq(dibba_pod_validate((Dibba__V1__Pod *)m, err, sizeof err), -EINVAL);
  ck_assert_ptr_nonnull(strstr(err, "metadata.name"));
  char h1[17], h2[17];
  Dibba__V1__Pod *p = (Dibba__V1__Pod *)m;
  free(dibba_pod_normalized(p, h1));
  p->metadata->uid = "changes-nothing";
  free(dibba_pod_normalized(p, h2));
  p->metadata->uid = NULL;
  ck_assert_str_eq(h1, h2);
  protobuf_c_message_free_unpacked(m, NULL);
}
END_TEST

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  dibba_alloc_init();
  Suite *s = suite_create("pod");
  TCase *tc = tcase_create("live");
  tcase_add_unchecked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 90);
  /* DIBBA_POD_TEST=<name> runs one live test. */
  const char *only = getenv("DIBBA_POD_TEST");
#define ADD(fn)                                                                                                        \
  if (!only || strcmp(only, #fn) == 0)                                                                                 \
  tcase_add_test(tc, fn)
  ADD(pods_plugin_lifecycle);
  ADD(pod_two_containers);
  ADD(pod_restart_policy);
  ADD(pod_reconcile);
  ADD(pod_exit_while_containerd_down);
  ADD(pod_many);
  suite_add_tcase(s, tc);
  TCase *pure = tcase_create("pure");
  tcase_add_test(pure, pod_pure);
  suite_add_tcase(s, pure);
  srand((unsigned)(getpid() ^ time(NULL)));
  if (geteuid() == 0) {
    sh("cd '%s/tests/integration' 2>/dev/null && python3 -c 'import fixtures; fixtures.cleanup_stale()' "
       ">/dev/null 2>&1",
       getenv("DIBBA_SRCDIR") ? getenv("DIBBA_SRCDIR") : ".");
    session_open();
  }
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  session_close();
  return failed ? 1 : 0;
}
