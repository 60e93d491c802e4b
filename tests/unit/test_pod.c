/* SPDX-License-Identifier: Apache-2.0 */
/* Tests for plugins/pods: the plugin loaded through the registry, each task driven by dibba_task_run against a
 * real, private containerd that this test starts and removes. */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "dibba/alloc.h"
#include "dibba/task.h"
#include "dibba/task_registry.h"

extern char **environ;

static char tmpdir[64];
static char sockpath[128];
static char busybox_tar[160];

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

int main(void) {
  dibba_alloc_init();
  Suite *s = suite_create("pod");
  TCase *tc = tcase_create("live");
  tcase_add_unchecked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 90);
  tcase_add_test(tc, pods_plugin_lifecycle);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
