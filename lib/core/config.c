/* SPDX-License-Identifier: Apache-2.0 */
/* Configuration loading: JSON file, environment overrides, built-in defaults, secrets. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dibba/alloc.h"
#include "dibba/config.h"
#include "dibba/error.h"

/* Every environment variable Dibba reads, the config path it overrides, and the built-in default. */
static const struct {
  const char *env;
  const char *path;
  const char *def;
} known[] = {
    {"DIBBA_LOG_LEVEL", "log.level", "info"},
    {"DIBBA_LOG_FILE", "log.file", NULL},
    {"DIBBA_REDIS_URL", "redis.url", "redis://127.0.0.1:6379/0"},
    {"DIBBA_REDIS_PREFIX", "redis.prefix", "dibba:"},
    {"DIBBA_JWT_SECRET", "auth.jwt_secret", NULL},
    {"DIBBA_JWT_SECRET_FILE", "auth.jwt_secret_file", NULL},
    {"DIBBA_USERS_FILE", "auth.users_file", NULL},
    {"DIBBA_ROUTING_KEY", "task.routing_key", NULL},
    {"DIBBA_ROUTING_KEY_FILE", "task.routing_key_file", NULL},
    {"DIBBA_API_LISTEN", "api.listen", "127.0.0.1:8080"},
    {"DIBBA_UI_DIR", "api.ui_dir", NULL},
    {"DIBBA_HOSTNAME", "worker.hostname", NULL},
    {"DIBBA_PLUGIN_DIR", "worker.plugin_dir", NULL},
    {"DIBBA_WORKER_ROLES", "worker.roles", NULL},
    {"DIBBA_STATE_DIR", "worker.state_dir", "/var/lib/dibba"},
    {"DIBBA_NETNS_DIR", "worker.netns_dir", "/var/run/netns"},
    {"DIBBA_BEAT_DIR", "beat.dir", NULL},
    {"CONTAINERD_SOCKET", "containerd.socket", "unix:///run/containerd/containerd.sock"},
    {"CONTAINERD_NAMESPACE", "containerd.namespace", "k8s.io"},
    {"CONTAINERD_SNAPSHOTTER", "containerd.snapshotter", "overlayfs"},
    {"CNI_PATH", "cni.path", "/opt/cni/bin"},
    {"CNI_CONF_DIR", "cni.conf_dir", "/etc/cni/net.d"},
    {"CNI_NET_NAME", "cni.net_name", "calico"},
    {"CNI_IFNAME", "cni.ifname", "eth0"},
    {"AWS_ACCESS_KEY_ID", "aws.access_key_id", NULL},
    {"AWS_SECRET_ACCESS_KEY", "aws.secret_access_key", NULL},
    {"AWS_SESSION_TOKEN", "aws.session_token", NULL},
    {"AWS_REGION", "aws.region", NULL},
    {"AWS_DEFAULT_REGION", "aws.region", NULL},
    {"DIBBA_EC2_ENDPOINT", "aws.endpoint", NULL},
};

int dibba_read_small_file(const char *path, size_t max, char **out, size_t *len) {
  int err = 0;
  char *buf = NULL;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return -errno;
  struct stat st;
  if (fstat(fd, &st) < 0) {
    err = -errno;
    goto out;
  }
  if (!S_ISREG(st.st_mode)) {
    err = -EINVAL;
    goto out;
  }
  if ((uint64_t)st.st_size > max) {
    err = -EFBIG;
    goto out;
  }
  buf = dibba_xmalloc(max + 1);
  size_t n = 0;
  for (;;) {
    ssize_t r = read(fd, buf + n, max + 1 - n);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0) {
      err = -errno;
      goto out;
    }
    if (r == 0)
      break;
    n += (size_t)r;
    if (n > max) { /* grew while we read it */
      err = -EFBIG;
      goto out;
    }
  }
  buf[n] = '\0';
  *out = buf;
  buf = NULL;
  if (len)
    *len = n;
out:
  free(buf);
  close(fd);
  return err;
}

/* Walk or create objects along a dotted path and set the leaf. */
static void set_path(json_t *root, const char *path, json_t *value) {
  char *copy = dibba_xstrdup(path);
  json_t *node = root;
  char *save = NULL;
  char *part = strtok_r(copy, ".", &save);
  while (part) {
    char *next = strtok_r(NULL, ".", &save);
    if (next == NULL) {
      json_object_set_new(node, part, value);
      break;
    }
    json_t *child = json_object_get(node, part);
    if (!json_is_object(child)) {
      child = json_object();
      json_object_set_new(node, part, child);
    }
    node = child;
    part = next;
  }
  free(copy);
}

json_t *dibba_config_node(const dibba_config_t *cfg, const char *path) {
  if (cfg == NULL || cfg->root == NULL)
    return NULL;
  char buf[256];
  if (strlen(path) >= sizeof buf)
    return NULL;
  strcpy(buf, path);
  json_t *node = cfg->root;
  char *save = NULL;
  for (char *part = strtok_r(buf, ".", &save); part; part = strtok_r(NULL, ".", &save)) {
    if (!json_is_object(node))
      return NULL;
    node = json_object_get(node, part);
    if (node == NULL)
      return NULL;
  }
  return node;
}

int dibba_config_load(dibba_config_t *cfg, const char *path, char *err, size_t errlen) {
  int r = 0;
  char *text = NULL;
  cfg->root = NULL;
  cfg->path = NULL;
  if (path) {
    size_t len;
    r = dibba_read_small_file(path, DIBBA_CONFIG_MAX_BYTES, &text, &len);
    if (r == -EFBIG) {
      dibba_error_set(err, errlen, r, "config %s: larger than %d bytes", path, DIBBA_CONFIG_MAX_BYTES);
      goto out;
    }
    if (r < 0) {
      dibba_error_set(err, errlen, r, "config %s: %s", path, strerror(-r));
      goto out;
    }
    json_error_t je;
    cfg->root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (cfg->root == NULL) {
      r = dibba_error_set(err, errlen, DIBBA_ECONFIG, "config %s: line %d column %d: %s", path, je.line, je.column,
                          je.text);
      goto out;
    }
    if (!json_is_object(cfg->root)) {
      r = dibba_error_set(err, errlen, DIBBA_ECONFIG, "config %s: top level must be a JSON object", path);
      goto out;
    }
    cfg->path = dibba_xstrdup(path);
  } else {
    cfg->root = json_object();
  }
  for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
    const char *v = getenv(known[i].env);
    if (v && *v)
      set_path(cfg->root, known[i].path, json_string(v));
  }
out:
  free(text);
  if (r < 0)
    dibba_config_free(cfg);
  return r;
}

void dibba_config_free(dibba_config_t *cfg) {
  json_decref(cfg->root);
  cfg->root = NULL;
  free(cfg->path);
  cfg->path = NULL;
}

static const char *builtin_default(const char *path) {
  for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
    if (strcmp(known[i].path, path) == 0 && known[i].def)
      return known[i].def;
  return NULL;
}

int dibba_config_str(const dibba_config_t *cfg, const char *path, const char *def, const char **out, char *err,
                     size_t errlen) {
  json_t *n = dibba_config_node(cfg, path);
  if (n == NULL || json_is_null(n)) {
    const char *b = builtin_default(path);
    *out = b ? b : def;
    return 0;
  }
  if (!json_is_string(n))
    return dibba_error_set(err, errlen, DIBBA_ECONFIG, "config: %s: expected a string", path);
  *out = json_string_value(n);
  return 0;
}

int dibba_config_int(const dibba_config_t *cfg, const char *path, int64_t def, int64_t min, int64_t max, int64_t *out,
                     char *err, size_t errlen) {
  json_t *n = dibba_config_node(cfg, path);
  int64_t v = def;
  if (n && json_is_integer(n)) {
    v = json_integer_value(n);
  } else if (n && json_is_string(n)) {
    const char *s = json_string_value(n);
    char *end = NULL;
    errno = 0;
    long long x = strtoll(s, &end, 10);
    if (errno || end == s || *end != '\0')
      return dibba_error_set(err, errlen, DIBBA_ECONFIG, "config: %s: expected an integer, got \"%s\"", path, s);
    v = x;
  } else if (n && !json_is_null(n)) {
    return dibba_error_set(err, errlen, DIBBA_ECONFIG, "config: %s: expected an integer", path);
  }
  if (v < min || v > max)
    return dibba_error_set(err, errlen, DIBBA_ECONFIG, "config: %s: %" PRId64 " is outside [%" PRId64 ", %" PRId64 "]",
                           path, v, min, max);
  *out = v;
  return 0;
}

int dibba_config_bool(const dibba_config_t *cfg, const char *path, int def, int *out, char *err, size_t errlen) {
  json_t *n = dibba_config_node(cfg, path);
  if (n == NULL || json_is_null(n)) {
    *out = def;
    return 0;
  }
  if (json_is_boolean(n)) {
    *out = json_is_true(n);
    return 0;
  }
  if (json_is_string(n)) {
    const char *s = json_string_value(n);
    if (!strcmp(s, "1") || !strcmp(s, "true") || !strcmp(s, "yes")) {
      *out = 1;
      return 0;
    }
    if (!strcmp(s, "0") || !strcmp(s, "false") || !strcmp(s, "no")) {
      *out = 0;
      return 0;
    }
  }
  return dibba_error_set(err, errlen, DIBBA_ECONFIG, "config: %s: expected true or false", path);
}

int dibba_config_secret(const dibba_config_t *cfg, const char *path, char **out, size_t *outlen, char *err,
                        size_t errlen) {
  int r = 0;
  char *val = NULL;
  size_t len = 0;
  const char *direct = NULL;
  r = dibba_config_str(cfg, path, NULL, &direct, err, errlen);
  if (r < 0)
    return r;
  char filekey[256];
  snprintf(filekey, sizeof filekey, "%s_file", path);
  const char *file = NULL;
  r = dibba_config_str(cfg, filekey, NULL, &file, err, errlen);
  if (r < 0)
    return r;
  if (direct && *direct) {
    val = dibba_xstrdup(direct);
    len = strlen(val);
  } else if (file && *file) {
    r = dibba_read_small_file(file, DIBBA_SECRET_MAX_BYTES, &val, &len);
    if (r < 0)
      return dibba_error_set(err, errlen, r, "secret %s: cannot read %s: %s", path, file,
                             r == -EFBIG ? "file too large" : strerror(-r));
    while (len > 0 && (val[len - 1] == '\n' || val[len - 1] == '\r'))
      val[--len] = '\0';
  } else {
    return dibba_error_set(err, errlen, -ENOENT,
                           "secret %s is not set (set %s or %s in the config, or its environment "
                           "variable); there is no default",
                           path, path, filekey);
  }
  if (len < DIBBA_SECRET_MIN_BYTES) {
    explicit_bzero(val, len);
    free(val);
    return dibba_error_set(err, errlen, -EINVAL, "secret %s is shorter than %d bytes", path, DIBBA_SECRET_MIN_BYTES);
  }
  *out = val;
  *outlen = len;
  return 0;
}
