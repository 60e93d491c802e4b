/* SPDX-License-Identifier: Apache-2.0 */
/* Tests for lib/oci: runtime spec defaults, Kubernetes command/args rules, users, resources and mounts. */
#include <check.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "dibba/oci.h"

static json_t *image_config(void) {
  return json_loads("{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{"
                    "\"Entrypoint\":[\"/bin/entry\"],\"Cmd\":[\"serve\",\"--port=80\"],"
                    "\"Env\":[\"PATH=/bin\",\"A=image\",\"B=image\"],\"WorkingDir\":\"/srv\",\"User\":\"1000\"}}",
                    0, NULL);
}

static const char passwd[] = "root:x:0:0:root:/root:/bin/sh\n"
                             "# comment\n"
                             "www:x:33:34:www:/var/www:/bin/false\n"
                             "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
static const char group[] = "root:x:0:\nwww:x:34:\naudio:x:29:www,other\nvideo:x:44:other\nnogroup:x:65534:\n";

static json_t *build(const dibba_oci_opts_t *o, int want_rc, const char *want_err) {
  char err[256] = "";
  json_t *spec = NULL;
  int rc = dibba_oci_spec_build(o, &spec, err, sizeof err);
  ck_assert_msg(rc == want_rc, "rc %d want %d: %s", rc, want_rc, err);
  if (want_err)
    ck_assert_msg(strstr(err, want_err), "error \"%s\" lacks \"%s\"", err, want_err);
  if (rc < 0)
    ck_assert_ptr_null(spec);
  return spec;
}

static const char *str_at(json_t *spec, const char *path) {
  json_t *v = spec;
  char buf[256];
  snprintf(buf, sizeof buf, "%s", path);
  char *save = NULL;
  for (char *p = strtok_r(buf, ".", &save); p && v; p = strtok_r(NULL, ".", &save))
    v = (*p >= '0' && *p <= '9') ? json_array_get(v, (size_t)atoi(p)) : json_object_get(v, p);
  return json_string_value(v);
}

static json_int_t int_at(json_t *spec, const char *a, const char *b, const char *c) {
  json_t *v = json_object_get(json_object_get(json_object_get(spec, a), b), c);
  ck_assert_msg(json_is_integer(v), "%s.%s.%s is not an integer", a, b, c);
  return json_integer_value(v);
}

static int array_has(json_t *arr, const char *s) {
  size_t i;
  json_t *v;
  json_array_foreach(arr, i, v) if (json_is_string(v) && !strcmp(json_string_value(v), s)) return 1;
  return 0;
}

START_TEST(defaults_from_image) {
  json_t *ic = image_config();
  dibba_oci_opts_t o = {.id = "c1", .ns = "default", .image_config = ic};
  json_t *s = build(&o, 0, NULL);
  json_t *p = json_object_get(s, "process");
  ck_assert_str_eq(str_at(s, "process.args.0"), "/bin/entry");
  ck_assert_str_eq(str_at(s, "process.args.1"), "serve");
  ck_assert_str_eq(str_at(s, "process.args.2"), "--port=80");
  ck_assert_str_eq(str_at(s, "process.cwd"), "/srv");
  ck_assert_int_eq(int_at(s, "process", "user", "uid"), 1000);
  ck_assert_int_eq(int_at(s, "process", "user", "gid"), 0);
  ck_assert(json_is_true(json_object_get(p, "noNewPrivileges")));
  ck_assert_str_eq(str_at(s, "linux.cgroupsPath"), "/dibba/default/c1");
  ck_assert_str_eq(str_at(s, "root.path"), "rootfs");
  ck_assert_str_eq(str_at(s, "process.rlimits.0.type"), "RLIMIT_NOFILE");
  ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(json_object_get(p, "rlimits"), 0), "soft")), 1024);
  json_t *caps = json_object_get(p, "capabilities");
  const char *want[] = {"CAP_CHOWN",   "CAP_DAC_OVERRIDE", "CAP_FSETID",           "CAP_FOWNER",
                        "CAP_MKNOD",   "CAP_NET_RAW",      "CAP_SETGID",           "CAP_SETUID",
                        "CAP_SETFCAP", "CAP_SETPCAP",      "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT",
                        "CAP_KILL",    "CAP_AUDIT_WRITE"};
  const char *sets[] = {"bounding", "effective", "permitted"};
  for (size_t k = 0; k < 3; k++) {
    ck_assert_int_eq(json_array_size(json_object_get(caps, sets[k])), 14);
    for (size_t i = 0; i < 14; i++)
      ck_assert_msg(array_has(json_object_get(caps, sets[k]), want[i]), "%s lacks %s", sets[k], want[i]);
  }
  ck_assert(!array_has(json_object_get(caps, "bounding"), "CAP_SYS_ADMIN"));
  /* Default mounts. */
  json_t *mounts = json_object_get(s, "mounts");
  const char *dsts[] = {"/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup"};
  for (size_t i = 0; i < 7; i++) {
    int found = 0;
    size_t j;
    json_t *m;
    json_array_foreach(mounts, j, m) if (!strcmp(json_string_value(json_object_get(m, "destination")), dsts[i])) {
      found = 1;
      if (!strcmp(dsts[i], "/sys") || !strcmp(dsts[i], "/sys/fs/cgroup"))
        ck_assert(array_has(json_object_get(m, "options"), "ro"));
    }
    ck_assert_msg(found, "no mount at %s", dsts[i]);
  }
  json_t *lx = json_object_get(s, "linux");
  ck_assert(array_has(json_object_get(lx, "maskedPaths"), "/proc/kcore"));
  ck_assert(array_has(json_object_get(lx, "maskedPaths"), "/sys/firmware"));
  ck_assert(array_has(json_object_get(lx, "readonlyPaths"), "/proc/sys"));
  ck_assert(array_has(json_object_get(lx, "readonlyPaths"), "/proc/sysrq-trigger"));
  json_t *nss = json_object_get(lx, "namespaces");
  ck_assert_int_eq(json_array_size(nss), 5);
  ck_assert_ptr_null(json_object_get(json_array_get(nss, 0), "path"));
  ck_assert_ptr_null(json_object_get(json_object_get(lx, "resources"), "memory"));
  ck_assert_str_eq(str_at(s, "linux.resources.devices.0.access"), "rwm");
  json_decref(s);
  json_decref(ic);
}
END_TEST

START_TEST(kubernetes_command_args_env) {
  json_t *ic = image_config();
  const char *cmd[] = {"/bin/sh", "-c"};
  const char *args[] = {"echo hi"};
  const char *env[] = {"B=pod", "C=pod"};
  /* command replaces Entrypoint and drops Cmd. */
  dibba_oci_opts_t o = {.id = "c1", .ns = "n", .image_config = ic, .command = cmd, .n_command = 2};
  json_t *s = build(&o, 0, NULL);
  ck_assert_int_eq(json_array_size(json_object_get(json_object_get(s, "process"), "args")), 2);
  ck_assert_str_eq(str_at(s, "process.args.0"), "/bin/sh");
  json_decref(s);
  /* args alone replace Cmd and keep Entrypoint. */
  o = (dibba_oci_opts_t){.id = "c1", .ns = "n", .image_config = ic, .args = args, .n_args = 1};
  s = build(&o, 0, NULL);
  ck_assert_int_eq(json_array_size(json_object_get(json_object_get(s, "process"), "args")), 2);
  ck_assert_str_eq(str_at(s, "process.args.0"), "/bin/entry");
  ck_assert_str_eq(str_at(s, "process.args.1"), "echo hi");
  json_decref(s);
  /* both, env override and append, working dir override. */
  o = (dibba_oci_opts_t){.id = "c1",
                         .ns = "n",
                         .image_config = ic,
                         .command = cmd,
                         .n_command = 2,
                         .args = args,
                         .n_args = 1,
                         .env = env,
                         .n_env = 2,
                         .working_dir = "/tmp"};
  s = build(&o, 0, NULL);
  json_t *p = json_object_get(s, "process");
  ck_assert_int_eq(json_array_size(json_object_get(p, "args")), 3);
  ck_assert_str_eq(str_at(s, "process.args.2"), "echo hi");
  json_t *e = json_object_get(p, "env");
  ck_assert(array_has(e, "PATH=/bin"));
  ck_assert(array_has(e, "A=image"));
  ck_assert(array_has(e, "B=pod"));
  ck_assert(!array_has(e, "B=image"));
  ck_assert(array_has(e, "C=pod"));
  ck_assert_str_eq(str_at(s, "process.cwd"), "/tmp");
  json_decref(s);
  /* no image, no command: rejected. */
  o = (dibba_oci_opts_t){.id = "c1", .ns = "n"};
  build(&o, -EINVAL, "no command");
  /* empty command array counts as set (drops Cmd) and leaves nothing to run. */
  o = (dibba_oci_opts_t){.id = "c1", .ns = "n", .image_config = ic, .command = cmd, .n_command = 0};
  build(&o, -EINVAL, "no command");
  /* a default PATH is added when neither image nor pod sets one. */
  o = (dibba_oci_opts_t){.id = "c1", .ns = "n", .command = cmd, .n_command = 1};
  s = build(&o, 0, NULL);
  ck_assert_str_eq(str_at(s, "process.env.0"), "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
  ck_assert_str_eq(str_at(s, "process.cwd"), "/");
  json_decref(s);
  json_t *bad = json_loads("{\"config\":{\"Cmd\":\"not-an-array\"}}", 0, NULL);
  o = (dibba_oci_opts_t){.id = "c1", .ns = "n", .image_config = bad};
  build(&o, -EINVAL, "Cmd");
  json_decref(bad);
  o = (dibba_oci_opts_t){.id = "c1", .ns = "n", .image_config = ic, .working_dir = "relative"};
  build(&o, -EINVAL, "not absolute");
  json_decref(ic);
}
END_TEST

START_TEST(users) {
  uint32_t uid, gid, *extra = NULL;
  size_t n = 0;
  char err[256];
  ck_assert_int_eq(dibba_oci_resolve_user("65534", NULL, NULL, &uid, &gid, &extra, &n, err, sizeof err), 0);
  ck_assert_uint_eq(uid, 65534);
  ck_assert_uint_eq(gid, 0);
  ck_assert_int_eq(dibba_oci_resolve_user("65534", passwd, group, &uid, &gid, &extra, &n, err, sizeof err), 0);
  ck_assert_uint_eq(gid, 65534);
  free(extra);
  ck_assert_int_eq(dibba_oci_resolve_user("12:34", NULL, NULL, &uid, &gid, NULL, NULL, err, sizeof err), 0);
  ck_assert_uint_eq(uid, 12);
  ck_assert_uint_eq(gid, 34);
  ck_assert_int_eq(dibba_oci_resolve_user("www", passwd, group, &uid, &gid, &extra, &n, err, sizeof err), 0);
  ck_assert_uint_eq(uid, 33);
  ck_assert_uint_eq(gid, 34);
  ck_assert_uint_eq(n, 1);
  ck_assert_uint_eq(extra[0], 29);
  free(extra);
  ck_assert_int_eq(dibba_oci_resolve_user("www:video", passwd, group, &uid, &gid, &extra, &n, err, sizeof err), 0);
  ck_assert_uint_eq(gid, 44);
  free(extra);
  ck_assert_int_eq(dibba_oci_resolve_user("0:nogroup", passwd, group, &uid, &gid, NULL, NULL, err, sizeof err), 0);
  ck_assert_uint_eq(uid, 0);
  ck_assert_uint_eq(gid, 65534);
  ck_assert_int_eq(dibba_oci_resolve_user("www", NULL, NULL, &uid, &gid, NULL, NULL, err, sizeof err), -ENOENT);
  ck_assert_ptr_nonnull(strstr(err, "/etc/passwd"));
  ck_assert_int_eq(dibba_oci_resolve_user("ghost", passwd, group, &uid, &gid, NULL, NULL, err, sizeof err), -ENOENT);
  ck_assert_int_eq(dibba_oci_resolve_user("www:ghost", passwd, group, &uid, &gid, NULL, NULL, err, sizeof err),
                   -ENOENT);
  ck_assert_int_eq(dibba_oci_resolve_user("4294967295", NULL, NULL, &uid, &gid, NULL, NULL, err, sizeof err), -EINVAL);
  ck_assert_int_eq(dibba_oci_resolve_user("1:", NULL, NULL, &uid, &gid, NULL, NULL, err, sizeof err), -EINVAL);
  ck_assert_int_eq(dibba_oci_resolve_user(":1", NULL, NULL, &uid, &gid, NULL, NULL, err, sizeof err), -EINVAL);
  ck_assert_int_eq(dibba_oci_resolve_user("1:2:3", NULL, NULL, &uid, &gid, NULL, NULL, err, sizeof err), -EINVAL);
  /* Through the spec builder: the pod's user overrides the image's. */
  const char *cmd[] = {"/bin/true"};
  dibba_oci_opts_t o = {
      .id = "c", .ns = "n", .command = cmd, .n_command = 1, .user = "www", .passwd = passwd, .group = group};
  json_t *s = build(&o, 0, NULL);
  ck_assert_int_eq(int_at(s, "process", "user", "uid"), 33);
  ck_assert_int_eq(json_integer_value(json_array_get(
                       json_object_get(json_object_get(json_object_get(s, "process"), "user"), "additionalGids"), 0)),
                   29);
  json_decref(s);
  o.passwd = NULL;
  build(&o, -ENOENT, "/etc/passwd");
}
END_TEST

START_TEST(resources_and_limits) {
  const char *cmd[] = {"/bin/true"};
  dibba_oci_opts_t o = {.id = "c",
                        .ns = "n",
                        .command = cmd,
                        .n_command = 1,
                        .cpu_millis = 250,
                        .memory_bytes = 64ll << 20,
                        .cpuset = "0-1",
                        .nofile = 4096,
                        .cgroups_path = "/x/y"};
  json_t *s = build(&o, 0, NULL);
  json_t *res = json_object_get(json_object_get(s, "linux"), "resources");
  ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(res, "cpu"), "quota")), 25000);
  ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(res, "cpu"), "period")), 100000);
  ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(res, "cpu"), "shares")), 256);
  ck_assert_str_eq(json_string_value(json_object_get(json_object_get(res, "cpu"), "cpus")), "0-1");
  ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(res, "memory"), "limit")), 64ll << 20);
  ck_assert_str_eq(str_at(s, "linux.cgroupsPath"), "/x/y");
  ck_assert_int_eq(json_integer_value(json_object_get(
                       json_array_get(json_object_get(json_object_get(s, "process"), "rlimits"), 0), "hard")),
                   4096);
  json_decref(s);
  /* 1 millicore: shares clamp to 2, quota to the kernel's 1 ms minimum. */
  o.cpu_millis = 1;
  o.memory_bytes = DIBBA_OCI_MIN_MEMORY;
  s = build(&o, 0, NULL);
  res = json_object_get(json_object_get(s, "linux"), "resources");
  ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(res, "cpu"), "shares")), 2);
  ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(res, "cpu"), "quota")), 1000);
  json_decref(s);
  o.memory_bytes = 4ll << 20;
  build(&o, -EINVAL, "below the minimum");
  o.memory_bytes = 0;
  o.cpu_millis = -1;
  build(&o, -EINVAL, "cpu");
}
END_TEST

START_TEST(namespaces_mounts_hostname) {
  const char *cmd[] = {"/bin/true"};
  dibba_oci_namespace_t nss[] = {{"pid", NULL},
                                 {"ipc", "/proc/42/ns/ipc"},
                                 {"uts", "/proc/42/ns/uts"},
                                 {"mount", NULL},
                                 {"network", "/var/run/netns/pod1"}};
  dibba_oci_mount_t mounts[] = {{"/data", "/srv/data", 1, 0}, {"/cache", "/var/lib/dibba/empty/c", 0, 1}};
  dibba_oci_opts_t o = {.id = "c",
                        .ns = "n",
                        .command = cmd,
                        .n_command = 1,
                        .namespaces = nss,
                        .n_namespaces = 5,
                        .mounts = mounts,
                        .n_mounts = 2,
                        .hostname = "pod1",
                        .readonly_rootfs = 1};
  json_t *s = build(&o, 0, NULL);
  ck_assert_str_eq(str_at(s, "hostname"), "pod1");
  ck_assert(json_is_true(json_object_get(json_object_get(s, "root"), "readonly")));
  ck_assert_str_eq(str_at(s, "linux.namespaces.4.type"), "network");
  ck_assert_str_eq(str_at(s, "linux.namespaces.4.path"), "/var/run/netns/pod1");
  ck_assert_ptr_null(str_at(s, "linux.namespaces.0.path"));
  json_t *ms = json_object_get(s, "mounts");
  size_t n = json_array_size(ms);
  json_t *data = json_array_get(ms, n - 2), *cache = json_array_get(ms, n - 1);
  ck_assert_str_eq(json_string_value(json_object_get(data, "destination")), "/data");
  ck_assert_str_eq(json_string_value(json_object_get(data, "type")), "bind");
  ck_assert(array_has(json_object_get(data, "options"), "bind"));
  ck_assert(array_has(json_object_get(data, "options"), "ro"));
  ck_assert(array_has(json_object_get(cache, "options"), "rbind"));
  ck_assert(array_has(json_object_get(cache, "options"), "rw"));
  json_decref(s);
  dibba_oci_namespace_t bad[] = {{"bogus", NULL}};
  o.namespaces = bad;
  o.n_namespaces = 1;
  build(&o, -EINVAL, "bogus");
  o.namespaces = NULL;
  dibba_oci_mount_t rel[] = {{"data", "/srv", 0, 0}};
  o.mounts = rel;
  o.n_mounts = 1;
  build(&o, -EINVAL, "absolute");
  o = (dibba_oci_opts_t){.ns = "n", .command = cmd, .n_command = 1};
  build(&o, -EINVAL, "required");
}
END_TEST

START_TEST(exec_process) {
  const char *args[] = {"/bin/sh", "-c", "id"};
  const char *env[] = {"X=1"};
  json_t *p = NULL;
  char err[128];
  ck_assert_int_eq(dibba_oci_process_build(args, 3, env, 1, "/tmp", 65534, 65534, &p, err, sizeof err), 0);
  ck_assert_str_eq(json_string_value(json_array_get(json_object_get(p, "args"), 2)), "id");
  ck_assert_str_eq(json_string_value(json_object_get(p, "cwd")), "/tmp");
  ck_assert(array_has(json_object_get(p, "env"), "X=1"));
  ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(p, "user"), "uid")), 65534);
  ck_assert(json_is_true(json_object_get(p, "noNewPrivileges")));
  json_decref(p);
  ck_assert_int_eq(dibba_oci_process_build(args, 0, NULL, 0, NULL, 0, 0, &p, err, sizeof err), -EINVAL);
}
END_TEST

int main(void) {
  Suite *s = suite_create("oci");
  TCase *tc = tcase_create("spec");
  tcase_add_test(tc, defaults_from_image);
  tcase_add_test(tc, kubernetes_command_args_env);
  tcase_add_test(tc, users);
  tcase_add_test(tc, resources_and_limits);
  tcase_add_test(tc, namespaces_mounts_hostname);
  tcase_add_test(tc, exec_process);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
