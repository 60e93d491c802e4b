/* SPDX-License-Identifier: Apache-2.0 */
/* Tests for lib/cni: config lists, chain configs, results; fake plugins (no root); real CNI plugins (root). */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "dibba/alloc.h"
#include "dibba/cni.h"
#include "dibba/config.h"
#include "dibba/netns.h"

/* ---- helpers ---- */

static void write_file(const char *dir, const char *name, const char *text, mode_t mode) {
  char *p = dibba_xasprintf("%s/%s", dir, name);
  FILE *f = fopen(p, "w");
  ck_assert_ptr_nonnull(f);
  fputs(text, f);
  fclose(f);
  chmod(p, mode);
  free(p);
}

static char *read_file(const char *dir, const char *name) {
  char *p = dibba_xasprintf("%s/%s", dir, name);
  char *text = NULL;
  size_t len = 0;
  int rc = dibba_read_small_file(p, 1 << 20, &text, &len);
  free(p);
  return rc < 0 ? NULL : text;
}

static char *tmpdir(void) {
  char t[] = "/tmp/dibba-cni-XXXXXX";
  ck_assert_ptr_nonnull(mkdtemp(t));
  return dibba_xstrdup(t);
}

static void rmtree(const char *d) {
  char *cmd = dibba_xasprintf("rm -rf '%s'", d);
  ck_assert_int_eq(system(cmd), 0);
  free(cmd);
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

/* One async outcome, copied out of the callback. */
typedef struct outcome_s {
  int done;
  int status;
  char error[DIBBA_CNI_ERR_MAX + 64];
  json_t *result;
  char ip4[INET_ADDRSTRLEN], ip6[INET6_ADDRSTRLEN];
} outcome_t;

static void on_cni(dibba_cni_t *cni, const dibba_cni_status_t *st, void *data) {
  (void)cni;
  outcome_t *o = data;
  o->done = 1;
  o->status = st->status;
  snprintf(o->error, sizeof o->error, "%s", st->error);
  o->result = st->result ? json_incref(st->result) : NULL;
  memcpy(o->ip4, st->ip4, sizeof o->ip4);
  memcpy(o->ip6, st->ip6, sizeof o->ip6);
}

static void on_netns(int status, const char *err, void *data) {
  outcome_t *o = data;
  o->done = 1;
  o->status = status;
  snprintf(o->error, sizeof o->error, "%s", err);
}

static void run_until(uv_loop_t *loop, outcome_t *o) {
  while (!o->done)
    uv_run(loop, UV_RUN_ONCE);
}

typedef int (*cni_fn)(dibba_cni_t *, const dibba_cni_req_t *, dibba_cni_cb, void *, char *, size_t);

static outcome_t call(uv_loop_t *loop, dibba_cni_t *cni, cni_fn fn, const dibba_cni_req_t *req) {
  outcome_t o = {0};
  char err[1024] = "";
  int rc = fn(cni, req, on_cni, &o, err, sizeof err);
  ck_assert_msg(rc == 0, "call failed at once: %d %s", rc, err);
  ck_assert_int_eq(o.done, 0); /* never from inside the call */
  run_until(loop, &o);
  return o;
}

/* ---- pure parts ---- */

START_TEST(test_versions) {
  ck_assert(dibba_cni_version_supported("1.0.0"));
  ck_assert(dibba_cni_version_supported("0.4.0"));
  ck_assert(dibba_cni_version_supported("0.3.1"));
  ck_assert(dibba_cni_version_supported("0.3.0"));
  ck_assert(!dibba_cni_version_supported("0.2.0"));
  ck_assert(!dibba_cni_version_supported("1.1.0"));
  ck_assert(!dibba_cni_version_supported(NULL));
  json_t *l = NULL;
  char err[256];
  const char *old = "{\"cniVersion\":\"0.2.0\",\"name\":\"n\",\"plugins\":[{\"type\":\"bridge\"}]}";
  ck_assert_int_eq(dibba_cni_conflist_parse(old, strlen(old), 1, &l, err, sizeof err), -EINVAL);
  ck_assert_msg(strstr(err, "unsupported cniVersion \"0.2.0\""), "%s", err);
  const char *v4 = "{\"cniVersion\":\"0.4.0\",\"name\":\"n\",\"plugins\":[{\"type\":\"bridge\"}]}";
  ck_assert_int_eq(dibba_cni_conflist_parse(v4, strlen(v4), 1, &l, err, sizeof err), 0);
  json_decref(l);
}
END_TEST

START_TEST(test_parse_invalid) {
  static const struct {
    const char *text;
    int is_list;
    const char *why;
  } cases[] = {
      {"{", 1, "not JSON"},
      {"[]", 1, "not a JSON object"},
      {"{\"cniVersion\":\"1.0.0\",\"plugins\":[{\"type\":\"a\"}]}", 1, "no name"},
      {"{\"name\":\"n\",\"plugins\":[{\"type\":\"a\"}]}", 1, "no cniVersion"},
      {"{\"cniVersion\":\"1.0.0\",\"name\":\"n\"}", 1, "plugins is not a non-empty array"},
      {"{\"cniVersion\":\"1.0.0\",\"name\":\"n\",\"plugins\":[]}", 1, "plugins is not a non-empty array"},
      {"{\"cniVersion\":\"1.0.0\",\"name\":\"n\",\"plugins\":[{\"bridge\":\"x\"}]}", 1, "plugins[0] has no type"},
      {"{\"cniVersion\":\"1.0.0\",\"name\":\"n\",\"plugins\":[{\"type\":\"a\"},{\"type\":\"../sh\"}]}", 1,
       "plugins[1] has an invalid type"},
      {"{\"cniVersion\":\"1.0.0\",\"name\":\"n\",\"plugins\":[{\"type\":\"a\",\"capabilities\":1}]}", 1,
       "capabilities is not an object"},
      {"{\"cniVersion\":\"1.0.0\",\"name\":\"n\"}", 0, "plugins[0] has no type"},
      {"{\"cniVersion\":\"1.0.0\",\"name\":\"n\",\"type\":\"a\",\"plugins\":[]}", 0, "has a plugins array"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    json_t *l = (json_t *)1;
    char err[256] = "";
    ck_assert_int_eq(
        dibba_cni_conflist_parse(cases[i].text, strlen(cases[i].text), cases[i].is_list, &l, err, sizeof err), -EINVAL);
    ck_assert_ptr_null(l);
    ck_assert_msg(strstr(err, cases[i].why), "case %zu: \"%s\" lacks \"%s\"", i, err, cases[i].why);
  }
}
END_TEST

START_TEST(test_conflist_select) {
  char *d = tmpdir();
  write_file(d, "00-bad.conf", "{not json", 0644);
  write_file(d, "05-other.conflist", "{\"cniVersion\":\"1.0.0\",\"name\":\"other\",\"plugins\":[{\"type\":\"x\"}]}",
             0644);
  write_file(d, "10-noversion.conflist", "{\"name\":\"want\",\"plugins\":[{\"type\":\"x\"}]}", 0644);
  write_file(d, "20-want.conflist",
             "{\"cniVersion\":\"1.0.0\",\"name\":\"want\",\"plugins\":[{\"type\":\"bridge\"},{\"type\":\"portmap\"}]}",
             0644);
  write_file(d, "25-want-again.conflist", "{\"cniVersion\":\"0.4.0\",\"name\":\"want\",\"plugins\":[{\"type\":\"y\"}]}",
             0644);
  write_file(d, "30-single.conf",
             "{\"cniVersion\":\"0.4.0\",\"name\":\"single\",\"type\":\"bridge\",\"bridge\":\"b0\"}", 0644);
  write_file(d, "40-j.json", "{\"cniVersion\":\"0.3.1\",\"name\":\"jnet\",\"type\":\"ptp\"}", 0644);
  write_file(d, "50-old.conflist", "{\"cniVersion\":\"0.1.0\",\"name\":\"old\",\"plugins\":[{\"type\":\"x\"}]}", 0644);
  write_file(d, "README.txt", "{\"cniVersion\":\"1.0.0\",\"name\":\"txt\",\"type\":\"x\"}", 0644);

  json_t *l = NULL;
  char *path = NULL;
  char err[1024] = "";
  ck_assert_int_eq(dibba_cni_conflist_load(d, "want", &l, &path, err, sizeof err), 0);
  ck_assert_msg(strstr(path, "/20-want.conflist"), "%s", path);
  ck_assert_int_eq(json_array_size(json_object_get(l, "plugins")), 2);
  json_decref(l);
  free(path);

  ck_assert_int_eq(dibba_cni_conflist_load(d, "single", &l, &path, err, sizeof err), 0);
  ck_assert_msg(strstr(path, "/30-single.conf"), "%s", path);
  json_t *p0 = json_array_get(json_object_get(l, "plugins"), 0);
  ck_assert_str_eq(json_string_value(json_object_get(p0, "type")), "bridge");
  ck_assert_str_eq(json_string_value(json_object_get(p0, "bridge")), "b0");
  ck_assert_ptr_null(json_object_get(p0, "name"));
  ck_assert_str_eq(json_string_value(json_object_get(l, "cniVersion")), "0.4.0");
  json_decref(l);
  free(path);

  ck_assert_int_eq(dibba_cni_conflist_load(d, "jnet", &l, NULL, err, sizeof err), 0);
  json_decref(l);

  ck_assert_int_eq(dibba_cni_conflist_load(d, "txt", &l, NULL, err, sizeof err), -ENOENT);
  ck_assert_int_eq(dibba_cni_conflist_load(d, "old", &l, NULL, err, sizeof err), -ENOENT);
  ck_assert_ptr_null(l);
  ck_assert_msg(strstr(err, "00-bad.conf: not JSON"), "%s", err);
  ck_assert_msg(strstr(err, "10-noversion.conflist: no cniVersion"), "%s", err);
  ck_assert_msg(strstr(err, "50-old.conflist: unsupported cniVersion \"0.1.0\""), "%s", err);
  ck_assert_int_eq(dibba_cni_conflist_load("/nonexistent-dibba", "x", &l, NULL, err, sizeof err), -ENOENT);
  rmtree(d);
  free(d);
}
END_TEST

START_TEST(test_plugin_conf) {
  json_t *list = json_loads("{\"cniVersion\":\"1.0.0\",\"name\":\"net1\",\"plugins\":["
                            "{\"type\":\"bridge\",\"bridge\":\"br0\",\"runtimeConfig\":{\"stale\":1}},"
                            "{\"type\":\"portmap\",\"capabilities\":{\"portMappings\":true,\"bandwidth\":false}},"
                            "{\"type\":\"bandwidth\",\"capabilities\":{\"bandwidth\":true}}]}",
                            0, NULL);
  json_t *runtime = json_loads("{\"portMappings\":[{\"hostPort\":8080,\"containerPort\":80,\"protocol\":\"tcp\"}],"
                               "\"ips\":[\"10.0.0.1\"]}",
                               0, NULL);
  json_t *prev = json_loads("{\"cniVersion\":\"1.0.0\",\"ips\":[{\"address\":\"10.1.0.2/24\"}]}", 0, NULL);
  ck_assert_ptr_nonnull(list);
  ck_assert_ptr_nonnull(runtime);

  json_t *c0 = dibba_cni_plugin_conf(list, 0, NULL, runtime);
  ck_assert_str_eq(json_string_value(json_object_get(c0, "name")), "net1");
  ck_assert_str_eq(json_string_value(json_object_get(c0, "cniVersion")), "1.0.0");
  ck_assert_str_eq(json_string_value(json_object_get(c0, "bridge")), "br0");
  ck_assert_ptr_null(json_object_get(c0, "prevResult"));
  ck_assert_ptr_null(json_object_get(c0, "runtimeConfig")); /* no capabilities: nothing passed */

  json_t *c1 = dibba_cni_plugin_conf(list, 1, prev, runtime);
  ck_assert(json_equal(json_object_get(c1, "prevResult"), prev));
  json_t *rc = json_object_get(c1, "runtimeConfig");
  ck_assert_int_eq(json_object_size(rc), 1);
  ck_assert(json_equal(json_object_get(rc, "portMappings"), json_object_get(runtime, "portMappings")));

  json_t *c2 = dibba_cni_plugin_conf(list, 2, prev, runtime);
  ck_assert_ptr_null(json_object_get(c2, "runtimeConfig")); /* wants bandwidth, which the runtime lacks */

  json_decref(c0);
  json_decref(c1);
  json_decref(c2);
  json_decref(list);
  json_decref(runtime);
  json_decref(prev);
}
END_TEST

START_TEST(test_args) {
  char *a = dibba_cni_args("default", "web-1", "abc123");
  ck_assert_str_eq(a, "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1;K8S_POD_INFRA_CONTAINER_ID=abc123");
  free(a);
  a = dibba_cni_args(NULL, NULL, "c");
  ck_assert_str_eq(a, "IgnoreUnknown=1;K8S_POD_INFRA_CONTAINER_ID=c");
  free(a);
  ck_assert_ptr_null(dibba_cni_args("a;b", "x", "c"));
  ck_assert_ptr_null(dibba_cni_args("a", "x=y", "c"));
}
END_TEST

START_TEST(test_result_100) {
  const char *t = "{\"cniVersion\":\"1.0.0\",\"interfaces\":["
                  "{\"name\":\"cni0\",\"mac\":\"00:11:22:33:44:55\"},"
                  "{\"name\":\"veth1\",\"mac\":\"00:11:22:33:44:66\"},"
                  "{\"name\":\"eth0\",\"mac\":\"00:11:22:33:44:77\",\"sandbox\":\"/var/run/netns/x\"}],"
                  "\"ips\":[{\"address\":\"10.9.9.1/24\",\"interface\":0},"
                  "{\"address\":\"10.1.0.5/24\",\"gateway\":\"10.1.0.1\",\"interface\":2},"
                  "{\"address\":\"fd00::5/64\",\"interface\":2}],"
                  "\"routes\":[{\"dst\":\"0.0.0.0/0\"}],\"dns\":{}}";
  json_t *r = NULL;
  char err[256];
  ck_assert_int_eq(dibba_cni_result_parse(t, strlen(t), &r, err, sizeof err), 0);
  char ip4[INET_ADDRSTRLEN], ip6[INET6_ADDRSTRLEN];
  ck_assert_int_eq(dibba_cni_result_ips(r, "eth0", ip4, ip6), 0);
  ck_assert_str_eq(ip4, "10.1.0.5");
  ck_assert_str_eq(ip6, "fd00::5");
  ck_assert_int_eq(dibba_cni_result_ips(r, "eth1", ip4, ip6), -ENOENT); /* no such container interface */
  json_decref(r);

  static const char *bad[] = {"{}",
                              "[]",
                              "{\"cniVersion\":\"1.0.0\",\"ips\":{}}",
                              "{\"cniVersion\":\"1.0.0\",\"ips\":[{\"gateway\":\"1.2.3.4\"}]}",
                              "{\"cniVersion\":\"1.0.0\",\"ips\":[{\"address\":\"1.2.3.4/8\",\"interface\":-1}]}",
                              "{\"cniVersion\":\"1.0.0\",\"interfaces\":[1]}"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    ck_assert_int_eq(dibba_cni_result_parse(bad[i], strlen(bad[i]), &r, err, sizeof err), -EINVAL);
    ck_assert_ptr_null(r);
  }
}
END_TEST

START_TEST(test_result_040) {
  const char *t = "{\"cniVersion\":\"0.4.0\",\"interfaces\":[{\"name\":\"eth0\",\"sandbox\":\"/proc/1/ns/net\"}],"
                  "\"ips\":[{\"version\":\"6\",\"address\":\"10.2.0.9/16\",\"interface\":0},"
                  "{\"version\":\"4\",\"address\":\"10.2.0.8/16\",\"interface\":0},"
                  "{\"version\":\"6\",\"address\":\"2001:db8::8/64\",\"interface\":0}]}";
  json_t *r = NULL;
  char err[256];
  ck_assert_int_eq(dibba_cni_result_parse(t, strlen(t), &r, err, sizeof err), 0);
  char ip4[INET_ADDRSTRLEN], ip6[INET6_ADDRSTRLEN];
  ck_assert_int_eq(dibba_cni_result_ips(r, "eth0", ip4, ip6), 0);
  ck_assert_str_eq(ip4, "10.2.0.8"); /* the one whose version disagrees is skipped */
  ck_assert_str_eq(ip6, "2001:db8::8");
  json_decref(r);
  /* 0.3.x results from IPAM-only plugins name no interface: used when nothing names the container one. */
  t = "{\"cniVersion\":\"0.3.1\",\"ips\":[{\"version\":\"4\",\"address\":\"10.3.0.4/24\"}]}";
  ck_assert_int_eq(dibba_cni_result_parse(t, strlen(t), &r, err, sizeof err), 0);
  ck_assert_int_eq(dibba_cni_result_ips(r, "eth0", ip4, ip6), 0);
  ck_assert_str_eq(ip4, "10.3.0.4");
  ck_assert_str_eq(ip6, "");
  json_decref(r);
}
END_TEST

START_TEST(test_error_parse) {
  char err[512];
  const char *t = "{\"cniVersion\":\"1.0.0\",\"code\":7,\"msg\":\"invalid network config\",\"details\":\"no bridge\"}";
  ck_assert_int_eq(dibba_cni_error_parse(t, strlen(t), err, sizeof err), 7);
  ck_assert_str_eq(err, "code 7: invalid network config (no bridge)");
  t = "{\"code\":11,\"msg\":\"try again later\"}";
  ck_assert_int_eq(dibba_cni_error_parse(t, strlen(t), err, sizeof err), 11);
  ck_assert_str_eq(err, "code 11: try again later");
  ck_assert_int_eq(dibba_cni_error_parse("oops", 4, err, sizeof err), -EINVAL);
  ck_assert_int_eq(dibba_cni_error_parse("{\"code\":0}", 10, err, sizeof err), -EINVAL);
  ck_assert_int_eq(dibba_cni_error_parse("{\"code\":\"7\"}", 12, err, sizeof err), -EINVAL);
}
END_TEST

/* ---- fake plugins: real uv_spawn, no root ---- */

/* Each fake plugin logs its command, stdin and CNI_* environment, and answers ADD with a fixed result. */
static void fake_plugin(const char *bin, const char *log, const char *name, const char *add_result, const char *extra) {
  char *script = dibba_xasprintf("#!/bin/sh\n"
                                 "cat > %s/%s.$CNI_COMMAND.in\n"
                                 "env | grep '^CNI_' | sort > %s/%s.$CNI_COMMAND.env\n"
                                 "echo %s-$CNI_COMMAND >> %s/order\n"
                                 "%s\n"
                                 "if [ \"$CNI_COMMAND\" = ADD ]; then printf '%%s' '%s'; fi\n"
                                 "exit 0\n",
                                 log, name, log, name, name, log, extra ? extra : "", add_result ? add_result : "");
  write_file(bin, name, script, 0755);
  free(script);
}

typedef struct env_s {
  char *root, *bin, *conf, *state, *log;
  uv_loop_t loop;
  dibba_cni_t *cni;
} env_t;

static void env_init(env_t *e, const char *conflist, uint64_t timeout_ms) {
  e->root = tmpdir();
  e->bin = dibba_xasprintf("%s/bin", e->root);
  e->conf = dibba_xasprintf("%s/net.d", e->root);
  e->state = dibba_xasprintf("%s/state", e->root);
  e->log = dibba_xasprintf("%s/log", e->root);
  ck_assert_int_eq(mkdir(e->bin, 0755), 0);
  ck_assert_int_eq(mkdir(e->conf, 0755), 0);
  ck_assert_int_eq(mkdir(e->log, 0755), 0);
  write_file(e->conf, "10-fake.conflist", conflist, 0644);
  write_file(e->root, "netns", "", 0644); /* stands in for a netns path */
  ck_assert_int_eq(uv_loop_init(&e->loop), 0);
  /* Built from a config file, so the cni.* keys and worker.state_dir are exercised too. */
  char *cfgtext = dibba_xasprintf("{\"cni\":{\"path\":\"/nonexistent:%s\",\"conf_dir\":\"%s\",\"net_name\":\"fake\","
                                  "\"timeout_ms\":%llu},\"worker\":{\"state_dir\":\"%s\"}}",
                                  e->bin, e->conf, (unsigned long long)timeout_ms, e->state);
  write_file(e->root, "dibba.json", cfgtext, 0644);
  free(cfgtext);
  char *cfgpath = dibba_xasprintf("%s/dibba.json", e->root);
  dibba_config_t cfg = {0};
  char err[256] = "";
  ck_assert_msg(dibba_config_load(&cfg, cfgpath, err, sizeof err) == 0, "%s", err);
  ck_assert_msg(dibba_cni_new_from_config(&e->loop, &cfg, &e->cni, err, sizeof err) == 0, "%s", err);
  dibba_config_free(&cfg);
  free(cfgpath);
  char *cache_dir = dibba_xasprintf("%s/cni", e->state);
  ck_assert_int_eq(access(cache_dir, F_OK), 0);
  free(cache_dir);
}

static void env_done(env_t *e) {
  dibba_cni_free(e->cni);
  ck_assert_int_eq(uv_run(&e->loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(uv_loop_close(&e->loop), 0);
  rmtree(e->root);
  free(e->root);
  free(e->bin);
  free(e->conf);
  free(e->state);
  free(e->log);
}

#define RES_A                                                                                                          \
  "{\"cniVersion\":\"1.0.0\",\"interfaces\":[{\"name\":\"eth0\",\"sandbox\":\"/"                                       \
  "x\"}],\"ips\":[{\"address\":\"10.9.0.7/24\",\"interface\":0}]}"
#define RES_B                                                                                                          \
  "{\"cniVersion\":\"1.0.0\",\"interfaces\":[{\"name\":\"eth0\",\"sandbox\":\"/"                                       \
  "x\"}],\"ips\":[{\"address\":\"10.9.0.8/24\",\"interface\":0},{\"address\":\"fd00::8/64\",\"interface\":0}]}"

static json_t *logged_conf(env_t *e, const char *name) {
  char *t = read_file(e->log, name);
  ck_assert_msg(t != NULL, "plugin did not log %s", name);
  json_t *j = json_loads(t, 0, NULL);
  ck_assert_ptr_nonnull(j);
  free(t);
  return j;
}

START_TEST(test_chain_fake) {
  env_t e;
  env_init(&e,
           "{\"cniVersion\":\"1.0.0\",\"name\":\"fake\",\"plugins\":[{\"type\":\"a\"},{\"type\":\"c\"},"
           "{\"type\":\"b\",\"capabilities\":{\"portMappings\":true}}]}",
           10000);
  fake_plugin(e.bin, e.log, "a", RES_A, NULL);
  /* c passes ADD through without output, and fails DEL with a CNI error while log/c-fail exists. */
  char *cfail = dibba_xasprintf("if [ \"$CNI_COMMAND\" = DEL ] && [ -e %s/c-fail ]; then "
                                "printf '{\"cniVersion\":\"1.0.0\",\"code\":7,\"msg\":\"boom\",\"details\":\"d\"}'; "
                                "exit 1; fi",
                                e.log);
  fake_plugin(e.bin, e.log, "c", NULL, cfail);
  free(cfail);
  fake_plugin(e.bin, e.log, "b", RES_B, NULL);
  char *nspath = dibba_xasprintf("%s/netns", e.root);
  dibba_cni_port_mapping_t pm = {.host_port = 8080, .container_port = 80};
  dibba_cni_req_t req = {.container_id = "c1",
                         .netns_path = nspath,
                         .pod_ns = "default",
                         .pod_name = "web",
                         .port_mappings = &pm,
                         .n_port_mappings = 1};

  outcome_t o = call(&e.loop, e.cni, dibba_cni_add, &req);
  ck_assert_msg(o.status == 0, "%s", o.error);
  ck_assert_str_eq(o.ip4, "10.9.0.8"); /* the chain's result is the last plugin's */
  ck_assert_str_eq(o.ip6, "fd00::8");
  json_decref(o.result);
  json_t *a = logged_conf(&e, "a.ADD.in"), *b = logged_conf(&e, "b.ADD.in"), *c = logged_conf(&e, "c.ADD.in");
  ck_assert_ptr_null(json_object_get(a, "prevResult"));
  ck_assert_ptr_null(json_object_get(a, "runtimeConfig"));
  ck_assert_str_eq(json_string_value(json_object_get(a, "name")), "fake");
  json_t *want_prev = json_loads(RES_A, 0, NULL);
  ck_assert(json_equal(json_object_get(c, "prevResult"), want_prev));
  ck_assert(json_equal(json_object_get(b, "prevResult"), want_prev)); /* c gave no output: prev kept */
  json_t *pms = json_object_get(json_object_get(b, "runtimeConfig"), "portMappings");
  ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(pms, 0), "hostPort")), 8080);
  ck_assert_ptr_null(json_object_get(c, "runtimeConfig"));
  json_decref(a);
  json_decref(b);
  json_decref(c);
  json_decref(want_prev);
  char *env = read_file(e.log, "a.ADD.env");
  ck_assert_msg(strstr(env, "CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;"
                            "K8S_POD_INFRA_CONTAINER_ID=c1\n"),
                "%s", env);
  ck_assert(strstr(env, "CNI_COMMAND=ADD\n") && strstr(env, "CNI_CONTAINERID=c1\n") &&
            strstr(env, "CNI_IFNAME=eth0\n"));
  ck_assert_msg(strstr(env, "CNI_PATH=/nonexistent:"), "%s", env);
  free(env);

  json_t *cached = NULL;
  ck_assert_int_eq(dibba_cni_cached(e.cni, "c1", &cached), 0);
  json_t *want_res = json_loads(RES_B, 0, NULL);
  ck_assert(json_equal(json_object_get(cached, "result"), want_res));
  json_decref(cached);

  /* A second ADD for the same container is refused until it is deleted. */
  char err[256];
  ck_assert_int_eq(dibba_cni_add(e.cni, &req, on_cni, &o, err, sizeof err), -EEXIST);

  /* CHECK runs in order with the cached result as prevResult. */
  o = call(&e.loop, e.cni, dibba_cni_check, &req);
  ck_assert_msg(o.status == 0, "%s", o.error);
  b = logged_conf(&e, "b.CHECK.in");
  ck_assert(json_equal(json_object_get(b, "prevResult"), want_res));
  json_decref(b);

  /* DEL in reverse order; c fails with a CNI error, a still runs, the cache stays. */
  write_file(e.log, "c-fail", "", 0644);
  dibba_cni_req_t del = {.container_id = "c1"}; /* from the cache alone */
  o = call(&e.loop, e.cni, dibba_cni_del, &del);
  ck_assert_int_eq(o.status, -EIO);
  ck_assert_msg(strstr(o.error, "plugin c DEL failed: code 7: boom (d)"), "%s", o.error);
  a = logged_conf(&e, "a.DEL.in");
  ck_assert(json_equal(json_object_get(a, "prevResult"), want_res));
  json_decref(a);
  env = read_file(e.log, "a.DEL.env");
  ck_assert_msg(strstr(env, "CNI_NETNS=") && strstr(env, "/netns\n"), "%s", env);
  free(env);
  ck_assert_int_eq(dibba_cni_cached(e.cni, "c1", &cached), 0);
  json_decref(cached);
  char *cf = dibba_xasprintf("%s/c-fail", e.log);
  unlink(cf);
  free(cf);

  o = call(&e.loop, e.cni, dibba_cni_del, &del);
  ck_assert_msg(o.status == 0, "%s", o.error);
  ck_assert_int_eq(dibba_cni_cached(e.cni, "c1", &cached), -ENOENT);
  char *order = read_file(e.log, "order");
  ck_assert_str_eq(order, "a-ADD\nc-ADD\nb-ADD\na-CHECK\nc-CHECK\nb-CHECK\nb-DEL\nc-DEL\na-DEL\nb-DEL\nc-DEL\na-DEL\n");
  free(order);
  json_decref(want_res);

  /* Bad requests fail at once. */
  dibba_cni_req_t bad = {.container_id = "../x", .netns_path = nspath};
  ck_assert_int_eq(dibba_cni_add(e.cni, &bad, on_cni, &o, err, sizeof err), -EINVAL);
  bad.container_id = "c2";
  bad.net = "nope";
  ck_assert_int_eq(dibba_cni_add(e.cni, &bad, on_cni, &o, err, sizeof err), -ENOENT);
  ck_assert_msg(strstr(err, "no CNI network \"nope\""), "%s", err);
  free(nspath);
  env_done(&e);
}
END_TEST

static int proc_dead(pid_t pid) {
  char p[64];
  snprintf(p, sizeof p, "/proc/%d/stat", (int)pid);
  FILE *f = fopen(p, "r");
  if (!f)
    return 1;
  char buf[512] = "";
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  buf[n] = '\0';
  fclose(f);
  char *rp = strrchr(buf, ')');
  return rp && rp[1] == ' ' && (rp[2] == 'Z' || rp[2] == 'X'); /* a zombie waiting for its reaper is dead */
}

START_TEST(test_timeout_kills_group) {
  env_t e;
  env_init(&e, "{\"cniVersion\":\"1.0.0\",\"name\":\"fake\",\"plugins\":[{\"type\":\"ok\"},{\"type\":\"hang\"}]}", 400);
  fake_plugin(e.bin, e.log, "ok", RES_A, NULL);
  char *hang = dibba_xasprintf("if [ \"$CNI_COMMAND\" = ADD ]; then echo $$ > %s/pid; sleep 600 & "
                               "echo $! > %s/child; wait; fi",
                               e.log, e.log);
  fake_plugin(e.bin, e.log, "hang", NULL, hang);
  free(hang);
  char *nspath = dibba_xasprintf("%s/netns", e.root);
  dibba_cni_req_t req = {.container_id = "slow", .netns_path = nspath};
  outcome_t o = call(&e.loop, e.cni, dibba_cni_add, &req);
  ck_assert_int_eq(o.status, UV_ETIMEDOUT);
  ck_assert_msg(strstr(o.error, "plugin hang ADD timed out after 400 ms (process group"), "%s", o.error);
  char *pid = read_file(e.log, "pid"), *child = read_file(e.log, "child");
  ck_assert(pid && child);
  ck_assert_msg(proc_dead(atoi(pid)) && proc_dead(atoi(child)), "plugin %s / its child %s survived", pid, child);
  ck_assert_int_eq(kill(-atoi(pid), 0) == 0 && !proc_dead(atoi(child)), 0);
  free(pid);
  free(child);
  /* The failed ADD was followed by DEL over the chain, with the result so far, and the cache is gone. */
  char *order = read_file(e.log, "order");
  ck_assert_str_eq(order, "ok-ADD\nhang-ADD\nhang-DEL\nok-DEL\n");
  free(order);
  json_t *d = logged_conf(&e, "hang.DEL.in");
  json_t *want = json_loads(RES_A, 0, NULL);
  ck_assert(json_equal(json_object_get(d, "prevResult"), want));
  json_decref(d);
  json_decref(want);
  json_t *cached = NULL;
  ck_assert_int_eq(dibba_cni_cached(e.cni, "slow", &cached), -ENOENT);
  free(nspath);
  env_done(&e);
}
END_TEST

START_TEST(test_missing_plugin) {
  env_t e;
  env_init(&e, "{\"cniVersion\":\"0.4.0\",\"name\":\"fake\",\"plugins\":[{\"type\":\"ok\"},{\"type\":\"ghost\"}]}",
           5000);
  fake_plugin(e.bin, e.log, "ok", RES_A, NULL);
  char *nspath = dibba_xasprintf("%s/netns", e.root);
  dibba_cni_req_t req = {.container_id = "g", .netns_path = nspath};
  outcome_t o = call(&e.loop, e.cni, dibba_cni_add, &req);
  ck_assert_int_eq(o.status, -ENOENT);
  ck_assert_msg(strstr(o.error, "plugin ghost ADD: not found in CNI_PATH"), "%s", o.error);
  ck_assert_msg(strstr(o.error, "rollback: plugin ghost DEL: not found"), "%s", o.error);
  /* The rollback DEL of ghost failed, so the entry stays for a later DEL. */
  json_t *cached = NULL;
  ck_assert_int_eq(dibba_cni_cached(e.cni, "g", &cached), 0);
  json_decref(cached);
  free(nspath);
  env_done(&e);
}
END_TEST

/* ---- real plugins (root) ---- */

static const char *cni_bin(void) {
  const char *p = getenv("DIBBA_IT_CNI_PATH");
  return p ? p : "/usr/lib/cni";
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
  write_file(n->conf_dir, "10-test.conflist", conf, 0644);
  free(conf);
  free(base);
}

static void net_free(net_t *n) {
  free(n->conf_dir);
  free(n->data_dir);
  free(n->state_dir);
  free(n->netns_dir);
}

static dibba_cni_t *net_cni(net_t *n, uv_loop_t *loop) {
  dibba_cni_t *cni = NULL;
  dibba_cni_opts_t o = {
      .path = cni_bin(), .conf_dir = n->conf_dir, .net_name = n->name, .state_dir = n->state_dir, .timeout_ms = 60000};
  ck_assert_int_eq(dibba_cni_new(loop, &o, &cni), 0);
  return cni;
}

static void netns_create(uv_loop_t *loop, net_t *n, const char *name) {
  outcome_t o = {0};
  ck_assert_int_eq(dibba_netns_create(loop, n->netns_dir, name, on_netns, &o), 0);
  run_until(loop, &o);
  ck_assert_msg(o.status == 0, "%s", o.error);
}

static void netns_delete(uv_loop_t *loop, net_t *n, const char *name) {
  outcome_t o = {0};
  ck_assert_int_eq(dibba_netns_delete(loop, n->netns_dir, name, on_netns, &o), 0);
  run_until(loop, &o);
  ck_assert_msg(o.status == 0, "%s", o.error);
}

static int ip_reserved(net_t *n, const char *ip) {
  char *p = dibba_xasprintf("%s/%s/%s", n->data_dir, n->name, ip);
  int r = access(p, F_OK) == 0;
  free(p);
  return r;
}

static int nat_mentions(const char *cid) {
  char *out = capture("iptables-save -t nat 2>/dev/null | grep -c -- '%s'", cid);
  int c = atoi(out);
  free(out);
  return c;
}

START_TEST(test_real_bridge) {
  if (geteuid() != 0) {
    fprintf(stderr, "test_real_bridge: needs root, skipped\n");
    return;
  }
  net_t n;
  net_new(&n, "dibba-cni-unit");
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  dibba_cni_t *cni = net_cni(&n, &loop);
  char *ns_a = dibba_xasprintf("dbt-%s-a", sess.tag), *ns_b = dibba_xasprintf("dbt-%s-b", sess.tag);
  netns_create(&loop, &n, ns_a);
  char **names = NULL;
  size_t nn = 0;
  ck_assert_int_eq(dibba_netns_list(n.netns_dir, &names, &nn), 0);
  ck_assert_int_eq(nn, 1);
  ck_assert_str_eq(names[0], ns_a);
  dibba_netns_list_free(names, nn);
  outcome_t again = {0};
  ck_assert_int_eq(dibba_netns_create(&loop, n.netns_dir, ns_a, on_netns, &again), 0);
  run_until(&loop, &again);
  ck_assert_int_eq(again.status, -EEXIST);

  char *path_a = dibba_xasprintf("%s/%s", n.netns_dir, ns_a);
  int hp = 20000 + rand() % 20000;
  dibba_cni_port_mapping_t pm = {.host_port = hp, .container_port = 80};
  dibba_cni_req_t req = {.container_id = "dbtcidA",
                         .netns_path = path_a,
                         .pod_ns = "default",
                         .pod_name = "a",
                         .port_mappings = &pm,
                         .n_port_mappings = 1};
  outcome_t o = call(&loop, cni, dibba_cni_add, &req);
  ck_assert_msg(o.status == 0, "ADD: %s", o.error);
  ck_assert_msg(strncmp(o.ip4, n.prefix, strlen(n.prefix)) == 0, "ip %s not in %s", o.ip4, n.subnet);
  json_decref(o.result);
  char ip[INET_ADDRSTRLEN];
  memcpy(ip, o.ip4, sizeof ip);

  char *addr = capture("nsenter --net=%s ip -o -4 addr show dev eth0", path_a);
  char *want = dibba_xasprintf(" %s/24 ", ip);
  ck_assert_msg(strstr(addr, want), "eth0 lacks %s: %s", ip, addr);
  free(addr);
  free(want);
  char *lo = capture("nsenter --net=%s ip -o link show lo", path_a);
  ck_assert_msg(strstr(lo, ",UP") || strstr(lo, "<LOOPBACK,UP"), "lo is not up: %s", lo);
  free(lo);
  ck_assert_msg(sh("busybox ping -c 1 -W 3 %s >/dev/null 2>&1", ip) == 0, "no ping reply from %s", ip);
  ck_assert(ip_reserved(&n, ip));
  ck_assert_int_gt(nat_mentions("dbtcidA"), 0); /* portmap's DNAT chain for this container */

  /* Debian's portmap CHECK wrongly looks for ip6tables rules of an IPv4-only container when port mappings
   * are set (containernetworking/plugins#819); accept only that failure here. CHECK without port mappings
   * (container b below) must pass. */
  o = call(&loop, cni, dibba_cni_check, &req);
  ck_assert_msg(o.status == 0 || (o.status == -EIO && strstr(o.error, "plugin portmap CHECK failed: code 999: "
                                                                      "could not check ipv6 dnat")),
                "CHECK: %s", o.error);

  dibba_cni_req_t del = {.container_id = "dbtcidA"};
  o = call(&loop, cni, dibba_cni_del, &del);
  ck_assert_msg(o.status == 0, "DEL: %s", o.error);
  char *veths = capture("ip -o link show master %s 2>/dev/null | wc -l", n.bridge);
  ck_assert_int_eq(atoi(veths), 0);
  free(veths);
  char *ifs = capture("nsenter --net=%s ip -o link show 2>/dev/null | grep -c eth0", path_a);
  ck_assert_int_eq(atoi(ifs), 0);
  free(ifs);
  ck_assert(!ip_reserved(&n, ip));
  ck_assert_int_eq(nat_mentions("dbtcidA"), 0);
  json_t *cached = NULL;
  ck_assert_int_eq(dibba_cni_cached(cni, "dbtcidA", &cached), -ENOENT);
  netns_delete(&loop, &n, ns_a);
  netns_delete(&loop, &n, ns_a); /* idempotent */
  ck_assert_int_ne(access(path_a, F_OK), 0);

  /* The netns goes first; DEL still runs from the cache and releases the IP. */
  netns_create(&loop, &n, ns_b);
  char *path_b = dibba_xasprintf("%s/%s", n.netns_dir, ns_b);
  dibba_cni_req_t req_b = {.container_id = "dbtcidB", .netns_path = path_b, .pod_ns = "default", .pod_name = "b"};
  o = call(&loop, cni, dibba_cni_add, &req_b);
  ck_assert_msg(o.status == 0, "ADD b: %s", o.error);
  json_decref(o.result);
  memcpy(ip, o.ip4, sizeof ip);
  ck_assert(ip_reserved(&n, ip));
  o = call(&loop, cni, dibba_cni_check, &req_b);
  ck_assert_msg(o.status == 0, "CHECK b: %s", o.error);
  netns_delete(&loop, &n, ns_b);
  ck_assert_int_ne(access(path_b, F_OK), 0);
  dibba_cni_req_t del_b = {.container_id = "dbtcidB", .netns_path = path_b};
  o = call(&loop, cni, dibba_cni_del, &del_b);
  ck_assert_msg(o.status == 0, "DEL b: %s", o.error);
  ck_assert(!ip_reserved(&n, ip));
  ck_assert_int_eq(dibba_cni_cached(cni, "dbtcidB", &cached), -ENOENT);

  dibba_cni_free(cni);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  free(path_a);
  free(path_b);
  free(ns_a);
  free(ns_b);
  net_free(&n);
}
END_TEST

#define NCONC 10

START_TEST(test_real_concurrent) {
  if (geteuid() != 0) {
    fprintf(stderr, "test_real_concurrent: needs root, skipped\n");
    return;
  }
  net_t n;
  net_new(&n, "dibba-cni-conc");
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  dibba_cni_t *cni = net_cni(&n, &loop);
  char *ns[NCONC], *paths[NCONC], cids[NCONC][32];
  dibba_cni_req_t reqs[NCONC];
  outcome_t outs[NCONC];
  memset(outs, 0, sizeof outs);
  for (int i = 0; i < NCONC; i++) {
    ns[i] = dibba_xasprintf("dbt-%s-c%d", sess.tag, i);
    netns_create(&loop, &n, ns[i]);
    paths[i] = dibba_xasprintf("%s/%s", n.netns_dir, ns[i]);
    snprintf(cids[i], sizeof cids[i], "dbtconc%d", i);
    reqs[i] = (dibba_cni_req_t){.container_id = cids[i], .netns_path = paths[i]};
  }
  char err[512];
  for (int i = 0; i < NCONC; i++)
    ck_assert_int_eq(dibba_cni_add(cni, &reqs[i], on_cni, &outs[i], err, sizeof err), 0);
  for (int i = 0; i < NCONC; i++)
    run_until(&loop, &outs[i]);
  for (int i = 0; i < NCONC; i++) {
    ck_assert_msg(outs[i].status == 0, "ADD %d: %s", i, outs[i].error);
    ck_assert_msg(strncmp(outs[i].ip4, n.prefix, strlen(n.prefix)) == 0, "%s", outs[i].ip4);
    ck_assert(ip_reserved(&n, outs[i].ip4));
    for (int j = 0; j < i; j++)
      ck_assert_str_ne(outs[i].ip4, outs[j].ip4);
    json_decref(outs[i].result);
  }
  outcome_t dels[NCONC];
  memset(dels, 0, sizeof dels);
  for (int i = 0; i < NCONC; i++)
    ck_assert_int_eq(dibba_cni_del(cni, &reqs[i], on_cni, &dels[i], err, sizeof err), 0);
  for (int i = 0; i < NCONC; i++)
    run_until(&loop, &dels[i]);
  for (int i = 0; i < NCONC; i++) {
    ck_assert_msg(dels[i].status == 0, "DEL %d: %s", i, dels[i].error);
    ck_assert(!ip_reserved(&n, outs[i].ip4));
    netns_delete(&loop, &n, ns[i]);
    free(ns[i]);
    free(paths[i]);
  }
  char *veths = capture("ip -o link show master %s 2>/dev/null | wc -l", n.bridge);
  ck_assert_int_eq(atoi(veths), 0);
  free(veths);
  dibba_cni_free(cni);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  net_free(&n);
}
END_TEST

static Suite *cni_suite(void) {
  Suite *s = suite_create("cni");
  TCase *t = tcase_create("pure");
  tcase_add_test(t, test_versions);
  tcase_add_test(t, test_parse_invalid);
  tcase_add_test(t, test_conflist_select);
  tcase_add_test(t, test_plugin_conf);
  tcase_add_test(t, test_args);
  tcase_add_test(t, test_result_100);
  tcase_add_test(t, test_result_040);
  tcase_add_test(t, test_error_parse);
  suite_add_tcase(s, t);
  t = tcase_create("exec");
  tcase_add_test(t, test_chain_fake);
  tcase_add_test(t, test_timeout_kills_group);
  tcase_add_test(t, test_missing_plugin);
  suite_add_tcase(s, t);
  t = tcase_create("real");
  tcase_set_timeout(t, 110);
  tcase_add_test(t, test_real_bridge);
  tcase_add_test(t, test_real_concurrent);
  suite_add_tcase(s, t);
  return s;
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  /* These would override the test's config files. */
  static const char *const overrides[] = {"CNI_PATH", "CNI_CONF_DIR", "CNI_NET_NAME", "CNI_IFNAME", "DIBBA_STATE_DIR"};
  for (size_t i = 0; i < sizeof overrides / sizeof overrides[0]; i++)
    unsetenv(overrides[i]);
  dibba_alloc_init();
  srand((unsigned)(getpid() ^ time(NULL)));
  if (geteuid() == 0) {
    sh("cd '%s/tests/integration' 2>/dev/null && python3 -c 'import fixtures; fixtures.cleanup_stale()' "
       ">/dev/null 2>&1",
       getenv("DIBBA_SRCDIR") ? getenv("DIBBA_SRCDIR") : ".");
    session_open();
  }
  SRunner *sr = srunner_create(cni_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  session_close();
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
