/* SPDX-License-Identifier: Apache-2.0 */
/* Builds OCI runtime specs the way containerd's and CRI's defaults do, with Kubernetes command/args rules. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "dibba/alloc.h"
#include "dibba/error.h"
#include "dibba/oci.h"

#define CPU_PERIOD 100000
#define MIN_QUOTA 1000 /* the kernel refuses cfs_quota_us below 1 ms */
#define MIN_SHARES 2
#define DEFAULT_PATH "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

static const char *const default_caps[] = {
    "CAP_CHOWN",   "CAP_DAC_OVERRIDE", "CAP_FSETID",           "CAP_FOWNER",
    "CAP_MKNOD",   "CAP_NET_RAW",      "CAP_SETGID",           "CAP_SETUID",
    "CAP_SETFCAP", "CAP_SETPCAP",      "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT",
    "CAP_KILL",    "CAP_AUDIT_WRITE",
};

static const char *const masked_paths[] = {
    "/proc/acpi",       "/proc/asound",      "/proc/kcore",       "/proc/keys",    "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
};

static const char *const readonly_paths[] = {
    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
};

static const char *const namespace_types[] = {"pid", "ipc", "uts", "mount", "network", "cgroup", "user"};

static json_t *str_array(const char *const *v, size_t n) {
  json_t *a = json_array();
  for (size_t i = 0; i < n; i++)
    json_array_append_new(a, json_string(v[i]));
  return a;
}

static json_t *mount_obj(const char *dst, const char *type, const char *src, const char *const *opts, size_t n) {
  return json_pack("{s:s, s:s, s:s, s:o}", "destination", dst, "type", type, "source", src, "options",
                   str_array(opts, n));
}

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define MOUNT(dst, type, src, ...)                                                                                     \
  do {                                                                                                                 \
    static const char *const o_[] = {__VA_ARGS__};                                                                     \
    json_array_append_new(mounts, mount_obj(dst, type, src, o_, ARRAY_LEN(o_)));                                       \
  } while (0)

static json_t *default_mounts(void) {
  json_t *mounts = json_array();
  MOUNT("/proc", "proc", "proc", "nosuid", "noexec", "nodev");
  MOUNT("/dev", "tmpfs", "tmpfs", "nosuid", "strictatime", "mode=755", "size=65536k");
  MOUNT("/dev/pts", "devpts", "devpts", "nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5");
  MOUNT("/dev/shm", "tmpfs", "shm", "nosuid", "noexec", "nodev", "mode=1777", "size=65536k");
  MOUNT("/dev/mqueue", "mqueue", "mqueue", "nosuid", "noexec", "nodev");
  MOUNT("/sys", "sysfs", "sysfs", "nosuid", "noexec", "nodev", "ro");
  MOUNT("/sys/fs/cgroup", "cgroup", "cgroup", "nosuid", "noexec", "nodev", "relatime", "ro");
  MOUNT("/run", "tmpfs", "tmpfs", "nosuid", "strictatime", "mode=755", "size=65536k");
  return mounts;
}

static json_t *capabilities(void) {
  return json_pack("{s:o, s:o, s:o}", "bounding", str_array(default_caps, ARRAY_LEN(default_caps)), "effective",
                   str_array(default_caps, ARRAY_LEN(default_caps)), "permitted",
                   str_array(default_caps, ARRAY_LEN(default_caps)));
}

static json_t *rlimits(uint64_t nofile) {
  return json_pack("[{s:s, s:I, s:I}]", "type", "RLIMIT_NOFILE", "hard", (json_int_t)nofile, "soft",
                   (json_int_t)nofile);
}

/* Parse a decimal id in [0, 2^32-2]; the whole string must be digits. */
static int parse_id(const char *s, size_t len, uint32_t *out) {
  uint64_t v = 0;
  if (len == 0 || len > 10)
    return -EINVAL;
  for (size_t i = 0; i < len; i++) {
    if (s[i] < '0' || s[i] > '9')
      return -EINVAL;
    v = v * 10 + (uint64_t)(s[i] - '0');
  }
  if (v > UINT32_MAX - 1)
    return -EINVAL;
  *out = (uint32_t)v;
  return 0;
}

static int is_numeric(const char *s, size_t len) {
  if (len == 0)
    return 0;
  for (size_t i = 0; i < len; i++)
    if (s[i] < '0' || s[i] > '9')
      return 0;
  return 1;
}

/* Split line into up to max ':'-separated fields (in place on a copy). Returns the field count. */
static size_t split_fields(char *line, char **f, size_t max) {
  size_t n = 0;
  char *p = line;
  while (n < max) {
    f[n++] = p;
    char *c = strchr(p, ':');
    if (!c)
      break;
    *c = '\0';
    p = c + 1;
  }
  return n;
}

/* Walk the lines of an /etc/passwd- or /etc/group-style text; cb returns non-zero to stop. */
typedef int (*line_cb)(char **f, size_t n, void *data);
static int each_line(const char *text, size_t want_fields, line_cb cb, void *data) {
  int rc = 0;
  if (!text)
    return 0;
  const char *p = text;
  while (*p && !rc) {
    const char *nl = strchr(p, '\n');
    size_t len = nl ? (size_t)(nl - p) : strlen(p);
    if (len > 0 && p[0] != '#') {
      char *copy = dibba_xstrndup(p, len);
      char *f[8];
      size_t n = split_fields(copy, f, 8);
      if (n >= want_fields)
        rc = cb(f, n, data);
      free(copy);
    }
    p += len;
    if (*p == '\n')
      p++;
  }
  return rc;
}

typedef struct lookup_s {
  const char *name; /* match by name (len) or by id */
  size_t name_len;
  int by_id;
  uint32_t id;
  int found;
  uint32_t out_id;
  uint32_t out_gid;
  char out_name[256];
} lookup_t;

static int passwd_line(char **f, size_t n, void *data) {
  lookup_t *l = data;
  uint32_t uid, gid;
  if (parse_id(f[2], strlen(f[2]), &uid) < 0 || parse_id(f[3], strlen(f[3]), &gid) < 0)
    return 0;
  if (l->by_id ? uid == l->id : (strlen(f[0]) == l->name_len && !memcmp(f[0], l->name, l->name_len))) {
    l->found = 1;
    l->out_id = uid;
    l->out_gid = gid;
    snprintf(l->out_name, sizeof l->out_name, "%s", f[0]);
    return 1;
  }
  return 0;
}

static int group_line(char **f, size_t n, void *data) {
  lookup_t *l = data;
  uint32_t gid;
  if (parse_id(f[2], strlen(f[2]), &gid) < 0)
    return 0;
  if (strlen(f[0]) == l->name_len && !memcmp(f[0], l->name, l->name_len)) {
    l->found = 1;
    l->out_id = gid;
    return 1;
  }
  return 0;
}

typedef struct groups_s {
  const char *user;
  uint32_t primary;
  uint32_t *gids;
  size_t n;
} groups_t;

static int member_line(char **f, size_t n, void *data) {
  groups_t *g = data;
  uint32_t gid;
  if (n < 4 || parse_id(f[2], strlen(f[2]), &gid) < 0 || gid == g->primary)
    return 0;
  char *save = NULL;
  for (char *m = strtok_r(f[3], ",", &save); m; m = strtok_r(NULL, ",", &save)) {
    if (!strcmp(m, g->user)) {
      for (size_t i = 0; i < g->n; i++)
        if (g->gids[i] == gid)
          return 0;
      if (g->n >= 64) /* bounded: the kernel's NGROUPS is far larger, but a container needs few */
        return 1;
      g->gids = dibba_xreallocarray(g->gids, g->n + 1, sizeof *g->gids);
      g->gids[g->n++] = gid;
      return 0;
    }
  }
  return 0;
}

int dibba_oci_resolve_user(const char *user, const char *passwd, const char *group, uint32_t *uid, uint32_t *gid,
                           uint32_t **additional, size_t *n_additional, char *err, size_t errlen) {
  int rc = 0;
  const char *u = user && *user ? user : "0";
  const char *colon = strchr(u, ':');
  size_t ulen = colon ? (size_t)(colon - u) : strlen(u);
  const char *g = colon ? colon + 1 : NULL;
  lookup_t l = {0};
  char uname[256] = "";
  if (additional)
    *additional = NULL;
  if (n_additional)
    *n_additional = 0;
  if (ulen == 0 || (g && (!*g || strchr(g, ':')))) {
    rc = dibba_error_set(err, errlen, -EINVAL, "user \"%s\": expected uid, uid:gid, name or name:group", u);
    goto out;
  }
  if (is_numeric(u, ulen)) {
    if (parse_id(u, ulen, uid) < 0) {
      rc = dibba_error_set(err, errlen, -EINVAL, "user \"%s\": uid out of range", u);
      goto out;
    }
    *gid = 0;
    l.by_id = 1;
    l.id = *uid;
    each_line(passwd, 7, passwd_line, &l);
    if (l.found) {
      *gid = l.out_gid;
      snprintf(uname, sizeof uname, "%s", l.out_name);
    }
  } else {
    if (!passwd) {
      rc = dibba_error_set(err, errlen, -ENOENT, "user \"%.*s\": names need the image's /etc/passwd", (int)ulen, u);
      goto out;
    }
    l.name = u;
    l.name_len = ulen;
    each_line(passwd, 7, passwd_line, &l);
    if (!l.found) {
      rc = dibba_error_set(err, errlen, -ENOENT, "user \"%.*s\" not found in the image's /etc/passwd", (int)ulen, u);
      goto out;
    }
    *uid = l.out_id;
    *gid = l.out_gid;
    snprintf(uname, sizeof uname, "%s", l.out_name);
  }
  if (g) {
    size_t glen = strlen(g);
    if (is_numeric(g, glen)) {
      if (parse_id(g, glen, gid) < 0) {
        rc = dibba_error_set(err, errlen, -EINVAL, "user \"%s\": gid out of range", u);
        goto out;
      }
    } else {
      lookup_t gl = {.name = g, .name_len = glen};
      if (!group) {
        rc = dibba_error_set(err, errlen, -ENOENT, "group \"%s\": names need the image's /etc/group", g);
        goto out;
      }
      each_line(group, 3, group_line, &gl);
      if (!gl.found) {
        rc = dibba_error_set(err, errlen, -ENOENT, "group \"%s\" not found in the image's /etc/group", g);
        goto out;
      }
      *gid = gl.out_id;
    }
  }
  if (additional && n_additional && *uname && group) {
    groups_t gs = {.user = uname, .primary = *gid};
    each_line(group, 4, member_line, &gs);
    *additional = gs.gids;
    *n_additional = gs.n;
  }
out:
  return rc;
}

/* Append "K=V" to env, replacing an existing entry with the same key. */
static void env_set(json_t *env, const char *kv) {
  const char *eq = strchr(kv, '=');
  size_t klen = eq ? (size_t)(eq - kv) : strlen(kv);
  size_t i;
  json_t *v;
  json_array_foreach(env, i, v) {
    const char *s = json_string_value(v);
    if (s && !strncmp(s, kv, klen) && (s[klen] == '=' || s[klen] == '\0')) {
      json_array_set_new(env, i, json_string(kv));
      return;
    }
  }
  json_array_append_new(env, json_string(kv));
}

static int has_key(const json_t *env, const char *key) {
  size_t i, klen = strlen(key);
  json_t *v;
  json_array_foreach(env, i, v) {
    const char *s = json_string_value(v);
    if (s && !strncmp(s, key, klen) && s[klen] == '=')
      return 1;
  }
  return 0;
}

/* Copy a JSON array of strings (NULL or null: none). Returns -EINVAL if it is not an array of strings. */
static int append_strings(json_t *dst, const json_t *src) {
  size_t i;
  json_t *v;
  if (!src || json_is_null(src))
    return 0;
  if (!json_is_array(src))
    return -EINVAL;
  json_array_foreach(src, i, v) {
    if (!json_is_string(v))
      return -EINVAL;
    json_array_append(dst, v);
  }
  return 0;
}

static json_t *process_obj(json_t *args, json_t *env, const char *cwd, uint32_t uid, uint32_t gid,
                           const uint32_t *extra, size_t n_extra, uint64_t nofile) {
  json_t *user = json_pack("{s:I, s:I}", "uid", (json_int_t)uid, "gid", (json_int_t)gid);
  if (n_extra) {
    json_t *ag = json_array();
    for (size_t i = 0; i < n_extra; i++)
      json_array_append_new(ag, json_integer(extra[i]));
    json_object_set_new(user, "additionalGids", ag);
  }
  return json_pack("{s:b, s:o, s:o, s:o, s:s, s:o, s:b, s:o}", "terminal", 0, "user", user, "args", args, "env", env,
                   "cwd", cwd, "capabilities", capabilities(), "noNewPrivileges", 1, "rlimits", rlimits(nofile));
}

int dibba_oci_process_build(const char *const *args, size_t n_args, const char *const *env, size_t n_env,
                            const char *cwd, uint32_t uid, uint32_t gid, json_t **out, char *err, size_t errlen) {
  if (!args || n_args == 0 || !args[0] || !*args[0])
    return dibba_error_set(err, errlen, -EINVAL, "process args are empty");
  if (cwd && cwd[0] != '/')
    return dibba_error_set(err, errlen, -EINVAL, "working dir \"%s\" is not absolute", cwd);
  json_t *e = json_array();
  for (size_t i = 0; i < n_env; i++)
    env_set(e, env[i]);
  if (!has_key(e, "PATH"))
    json_array_append_new(e, json_string(DEFAULT_PATH));
  *out = process_obj(str_array(args, n_args), e, cwd ? cwd : "/", uid, gid, NULL, 0, DIBBA_OCI_DEFAULT_NOFILE);
  return 0;
}

static int valid_namespace_type(const char *t) {
  for (size_t i = 0; t && i < ARRAY_LEN(namespace_types); i++)
    if (!strcmp(t, namespace_types[i]))
      return 1;
  return 0;
}

static int build_resources(const dibba_oci_opts_t *o, json_t *lnx, char *err, size_t errlen) {
  if (o->memory_bytes < 0 || (o->memory_bytes > 0 && o->memory_bytes < DIBBA_OCI_MIN_MEMORY))
    return dibba_error_set(err, errlen, -EINVAL, "memory limit %" PRId64 " bytes is below the minimum of %lld (6 MiB)",
                           o->memory_bytes, DIBBA_OCI_MIN_MEMORY);
  if (o->cpu_millis < 0 || o->cpu_millis > INT64_MAX / 1024)
    return dibba_error_set(err, errlen, -EINVAL, "cpu limit %" PRId64 " millicores is out of range", o->cpu_millis);
  json_t *res = json_pack("{s:[{s:b, s:s}]}", "devices", "allow", 0, "access", "rwm");
  if (o->cpu_millis > 0 || o->cpuset) {
    json_t *cpu = json_object();
    if (o->cpu_millis > 0) {
      int64_t quota = o->cpu_millis * CPU_PERIOD / 1000;
      int64_t shares = o->cpu_millis * 1024 / 1000;
      json_object_set_new(cpu, "quota", json_integer(quota < MIN_QUOTA ? MIN_QUOTA : quota));
      json_object_set_new(cpu, "period", json_integer(CPU_PERIOD));
      json_object_set_new(cpu, "shares", json_integer(shares < MIN_SHARES ? MIN_SHARES : shares));
    }
    if (o->cpuset)
      json_object_set_new(cpu, "cpus", json_string(o->cpuset));
    json_object_set_new(res, "cpu", cpu);
  }
  if (o->memory_bytes > 0)
    json_object_set_new(res, "memory", json_pack("{s:I}", "limit", (json_int_t)o->memory_bytes));
  json_object_set_new(lnx, "resources", res);
  return 0;
}

static int build_namespaces(const dibba_oci_opts_t *o, json_t *lnx, char *err, size_t errlen) {
  static const dibba_oci_namespace_t defaults[] = {
      {"pid", NULL}, {"ipc", NULL}, {"uts", NULL}, {"mount", NULL}, {"network", NULL}};
  const dibba_oci_namespace_t *nsv = o->namespaces ? o->namespaces : defaults;
  size_t n = o->namespaces ? o->n_namespaces : ARRAY_LEN(defaults);
  json_t *arr = json_array();
  for (size_t i = 0; i < n; i++) {
    if (!valid_namespace_type(nsv[i].type)) {
      json_decref(arr);
      return dibba_error_set(err, errlen, -EINVAL, "unknown namespace type \"%s\"",
                             nsv[i].type ? nsv[i].type : "(null)");
    }
    if (nsv[i].path && nsv[i].path[0] != '/') {
      json_decref(arr);
      return dibba_error_set(err, errlen, -EINVAL, "namespace path \"%s\" is not absolute", nsv[i].path);
    }
    json_t *ns = json_pack("{s:s}", "type", nsv[i].type);
    if (nsv[i].path)
      json_object_set_new(ns, "path", json_string(nsv[i].path));
    json_array_append_new(arr, ns);
  }
  json_object_set_new(lnx, "namespaces", arr);
  return 0;
}

static int build_mounts(const dibba_oci_opts_t *o, json_t **out, char *err, size_t errlen) {
  json_t *mounts = default_mounts();
  for (size_t i = 0; i < o->n_mounts; i++) {
    const dibba_oci_mount_t *m = &o->mounts[i];
    if (!m->destination || m->destination[0] != '/' || !m->source || m->source[0] != '/') {
      json_decref(mounts);
      return dibba_error_set(err, errlen, -EINVAL, "mount %zu: source and destination must be absolute paths", i);
    }
    const char *opts[] = {m->recursive ? "rbind" : "bind", m->readonly ? "ro" : "rw"};
    json_array_append_new(mounts, mount_obj(m->destination, "bind", m->source, opts, 2));
  }
  *out = mounts;
  return 0;
}

int dibba_oci_spec_build(const dibba_oci_opts_t *o, json_t **out, char *err, size_t errlen) {
  int rc = 0;
  json_t *spec = NULL, *args = NULL, *env = NULL, *lnx = NULL, *mounts = NULL;
  uint32_t *extra = NULL;
  size_t n_extra = 0;
  const json_t *ic = NULL;
  *out = NULL;
  if (!o || !o->id || !*o->id || !o->ns || !*o->ns) {
    rc = dibba_error_set(err, errlen, -EINVAL, "container id and namespace are required");
    goto out;
  }
  if (o->image_config) {
    ic = json_object_get(o->image_config, "config");
    if (ic && !json_is_object(ic) && !json_is_null(ic)) {
      rc = dibba_error_set(err, errlen, -EINVAL, "image config: \"config\" is not an object");
      goto out;
    }
    if (ic && json_is_null(ic))
      ic = NULL;
  }
  /* Kubernetes: command replaces Entrypoint and drops Cmd; args replace Cmd. */
  args = json_array();
  if (o->command) {
    json_t *c = str_array(o->command, o->n_command);
    json_array_extend(args, c);
    json_decref(c);
  } else if (append_strings(args, ic ? json_object_get(ic, "Entrypoint") : NULL) < 0) {
    rc = dibba_error_set(err, errlen, -EINVAL, "image config: Entrypoint is not an array of strings");
    goto out;
  }
  if (o->args) {
    json_t *a = str_array(o->args, o->n_args);
    json_array_extend(args, a);
    json_decref(a);
  } else if (!o->command && append_strings(args, ic ? json_object_get(ic, "Cmd") : NULL) < 0) {
    rc = dibba_error_set(err, errlen, -EINVAL, "image config: Cmd is not an array of strings");
    goto out;
  }
  if (json_array_size(args) == 0 || !*json_string_value(json_array_get(args, 0))) {
    rc = dibba_error_set(err, errlen, -EINVAL, "no command: the image has no Entrypoint/Cmd and none was given");
    goto out;
  }
  env = json_array();
  if (append_strings(env, ic ? json_object_get(ic, "Env") : NULL) < 0) {
    rc = dibba_error_set(err, errlen, -EINVAL, "image config: Env is not an array of strings");
    goto out;
  }
  for (size_t i = 0; i < o->n_env; i++)
    env_set(env, o->env[i]);
  if (!has_key(env, "PATH"))
    json_array_append_new(env, json_string(DEFAULT_PATH));
  const char *cwd = o->working_dir;
  if (!cwd || !*cwd)
    cwd = ic ? json_string_value(json_object_get(ic, "WorkingDir")) : NULL;
  if (!cwd || !*cwd)
    cwd = "/";
  if (cwd[0] != '/') {
    rc = dibba_error_set(err, errlen, -EINVAL, "working dir \"%s\" is not absolute", cwd);
    goto out;
  }
  const char *user = o->user;
  if (!user || !*user)
    user = ic ? json_string_value(json_object_get(ic, "User")) : NULL;
  uint32_t uid = 0, gid = 0;
  if ((rc = dibba_oci_resolve_user(user, o->passwd, o->group, &uid, &gid, &extra, &n_extra, err, errlen)) < 0)
    goto out;

  lnx = json_object();
  if ((rc = build_resources(o, lnx, err, errlen)) < 0 || (rc = build_namespaces(o, lnx, err, errlen)) < 0 ||
      (rc = build_mounts(o, &mounts, err, errlen)) < 0)
    goto out;
  char *cg = o->cgroups_path ? dibba_xstrdup(o->cgroups_path) : dibba_xasprintf("/dibba/%s/%s", o->ns, o->id);
  json_object_set_new(lnx, "cgroupsPath", json_string(cg));
  free(cg);
  json_object_set_new(lnx, "maskedPaths", str_array(masked_paths, ARRAY_LEN(masked_paths)));
  json_object_set_new(lnx, "readonlyPaths", str_array(readonly_paths, ARRAY_LEN(readonly_paths)));

  spec =
      json_pack("{s:s, s:o, s:{s:s, s:b}, s:o, s:o}", "ociVersion", "1.0.2", "process",
                process_obj(args, env, cwd, uid, gid, extra, n_extra, o->nofile ? o->nofile : DIBBA_OCI_DEFAULT_NOFILE),
                "root", "path", "rootfs", "readonly", o->readonly_rootfs ? 1 : 0, "mounts", mounts, "linux", lnx);
  args = env = mounts = lnx = NULL; /* stolen by json_pack's "o" */
  if (!spec) {
    rc = dibba_error_set(err, errlen, -EINVAL, "spec: a string is not valid UTF-8");
    goto out;
  }
  if (o->hostname && *o->hostname)
    json_object_set_new(spec, "hostname", json_string(o->hostname));
  *out = spec;
  spec = NULL;
out:
  free(extra);
  json_decref(args);
  json_decref(env);
  json_decref(mounts);
  json_decref(lnx);
  json_decref(spec);
  return rc;
}
