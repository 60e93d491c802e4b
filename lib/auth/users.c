/* SPDX-License-Identifier: Apache-2.0 */
/* The users store: one JSON file, loaded and reloaded whole, written atomically with mode 0600. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/crypto.h>

#include "dibba-config.h"
#include "dibba/alloc.h"
#include "dibba/error.h"
#include "dibba/log.h"

#include "auth-int.h"

static void user_clear(dibba_auth_user_t *x) {
  free(x->name);
  x->name = NULL;
  if (x->password_hash) {
    OPENSSL_cleanse(x->password_hash, strlen(x->password_hash));
    free(x->password_hash);
    x->password_hash = NULL;
  }
}

static void users_array_free(dibba_auth_user_t *a, size_t n) {
  for (size_t i = 0; i < n; i++)
    user_clear(&a[i]);
  free(a);
}

void dibba_auth_users_init(dibba_auth_users_t *u, const char *path, const dibba_auth_scrypt_t *params) {
  memset(u, 0, sizeof *u);
  u->path = dibba_xstrdup(path);
  u->params = params ? *params : DIBBA_AUTH_SCRYPT_DEFAULT;
  u->dummy_hash = dibba__auth_dummy_hash(&u->params);
}

void dibba_auth_users_free(dibba_auth_users_t *u) {
  if (u->pending > 0) {
    fprintf(stderr, "dibba: auth: users store freed with %u async operations pending\n", u->pending);
    abort();
  }
  dibba__auth_save_free(u);
  users_array_free(u->users, u->n);
  u->users = NULL;
  u->n = 0;
  free(u->path);
  u->path = NULL;
  free(u->dummy_hash);
  u->dummy_hash = NULL;
}

int dibba_auth_scrypt_config(const dibba_config_t *cfg, dibba_auth_scrypt_t *out, char *err, size_t errlen) {
  int64_t n, r, p;
  dibba_auth_scrypt_t def = DIBBA_AUTH_SCRYPT_DEFAULT;
  int rc = dibba_config_int(cfg, "auth.scrypt_n", (int64_t)def.n, 2, 1 << 20, &n, err, errlen);
  if (rc == 0)
    rc = dibba_config_int(cfg, "auth.scrypt_r", def.r, 1, 32, &r, err, errlen);
  if (rc == 0)
    rc = dibba_config_int(cfg, "auth.scrypt_p", def.p, 1, 16, &p, err, errlen);
  if (rc < 0)
    return rc;
  if ((n & (n - 1)) != 0)
    return dibba_error_set(err, errlen, DIBBA_ECONFIG, "config: auth.scrypt_n: must be a power of two");
  if (128 * r * n > (INT64_C(1) << 30))
    return dibba_error_set(err, errlen, DIBBA_ECONFIG, "config: auth.scrypt_n * auth.scrypt_r: more than 1 GiB");
  out->n = (uint64_t)n;
  out->r = (uint32_t)r;
  out->p = (uint32_t)p;
  return 0;
}

int dibba_auth_users_path(const dibba_config_t *cfg, char **out, char *err, size_t errlen) {
  const char *v = NULL;
  int r = dibba_config_str(cfg, "auth.users_file", NULL, &v, err, errlen);
  if (r < 0)
    return r;
  if (v && *v == '\0')
    return dibba_error_set(err, errlen, DIBBA_ECONFIG, "config: auth.users_file: empty path");
  if (v && v[0] == '/') {
    *out = dibba_xstrdup(v);
    return 0;
  }
  if (cfg->path) {
    char *copy = dibba_xstrdup(cfg->path);
    *out = dibba_xasprintf("%s/%s", dirname(copy), v ? v : "users.json");
    free(copy);
    return 0;
  }
  *out = v ? dibba_xstrdup(v) : dibba_xstrdup(DIBBA_SYSCONFDIR "/users.json");
  return 0;
}

/* ---- parse / serialise ---- */

static int parse_user(json_t *o, size_t idx, dibba_auth_user_t *x, char *err, size_t errlen) {
  const char *name = NULL, *role = NULL, *hash = NULL;
  json_t *enabled = NULL, *created = NULL, *updated = NULL;
  json_error_t je;
  if (json_unpack_ex(o, &je, JSON_STRICT, "{s:s, s:s, s:o, s:s, s:o, s:o}", "name", &name, "role", &role, "enabled",
                     &enabled, "password_hash", &hash, "created_at", &created, "updated_at", &updated) < 0)
    return dibba_error_set(err, errlen, -EINVAL, "users[%zu]: %s", idx, je.text);
  if (!dibba_auth_username_valid(name))
    return dibba_error_set(err, errlen, -EINVAL, "users[%zu]: invalid name", idx);
  if (dibba_auth_role_parse(role, &x->role) < 0)
    return dibba_error_set(err, errlen, -EINVAL, "users[%zu] (%s): unknown role \"%s\"", idx, name, role);
  if (!json_is_boolean(enabled))
    return dibba_error_set(err, errlen, -EINVAL, "users[%zu] (%s): enabled must be true or false", idx, name);
  if (!json_is_integer(created) || !json_is_integer(updated))
    return dibba_error_set(err, errlen, -EINVAL, "users[%zu] (%s): created_at/updated_at must be integers", idx, name);
  if (!dibba__auth_hash_wellformed(hash))
    return dibba_error_set(err, errlen, -EINVAL, "users[%zu] (%s): malformed password_hash", idx, name);
  x->enabled = json_is_true(enabled);
  x->created_at = json_integer_value(created);
  x->updated_at = json_integer_value(updated);
  x->name = dibba_xstrdup(name);
  x->password_hash = dibba_xstrdup(hash);
  return 0;
}

static int parse_file(const char *data, size_t len, dibba_auth_user_t **out, size_t *outn, char *err, size_t errlen) {
  json_error_t je;
  dibba_auth_user_t *a = NULL;
  size_t n = 0;
  int r = 0;
  json_t *root = json_loadb(data, len, JSON_REJECT_DUPLICATES, &je);
  json_t *list = NULL;
  if (root == NULL) {
    r = dibba_error_set(err, errlen, -EINVAL, "line %d: %s", je.line, je.text);
    goto out;
  }
  json_int_t version = 0;
  if (json_unpack_ex(root, &je, JSON_STRICT, "{s:I, s:o}", "version", &version, "users", &list) < 0 ||
      !json_is_array(list)) {
    r = dibba_error_set(err, errlen, -EINVAL, "expected {\"version\": 1, \"users\": [...]}");
    goto out;
  }
  if (version != 1) {
    r = dibba_error_set(err, errlen, -EINVAL, "unsupported version %lld", (long long)version);
    goto out;
  }
  if (json_array_size(list) > DIBBA_AUTH_USERS_MAX) {
    r = dibba_error_set(err, errlen, -EINVAL, "more than %d users", DIBBA_AUTH_USERS_MAX);
    goto out;
  }
  a = dibba_xcalloc(json_array_size(list) + 1, sizeof *a);
  for (size_t i = 0; i < json_array_size(list); i++) {
    r = parse_user(json_array_get(list, i), i, &a[n], err, errlen);
    if (r < 0)
      goto out;
    n++;
    for (size_t k = 0; k + 1 < n; k++) {
      if (strcmp(a[k].name, a[n - 1].name) == 0) {
        r = dibba_error_set(err, errlen, -EINVAL, "users[%zu]: duplicate name \"%s\"", i, a[k].name);
        goto out;
      }
    }
  }
  *out = a;
  *outn = n;
  a = NULL;
out:
  if (a)
    users_array_free(a, n);
  json_decref(root);
  return r;
}

static char *serialize(const dibba_auth_users_t *u, size_t *len) {
  json_t *list = json_array();
  for (size_t i = 0; i < u->n; i++) {
    const dibba_auth_user_t *x = &u->users[i];
    json_array_append_new(list, json_pack("{s:s, s:s, s:b, s:s, s:I, s:I}", "name", x->name, "role",
                                          dibba_auth_role_name(x->role), "enabled", x->enabled, "password_hash",
                                          x->password_hash, "created_at", (json_int_t)x->created_at, "updated_at",
                                          (json_int_t)x->updated_at));
  }
  json_t *root = json_pack("{s:i, s:o}", "version", 1, "users", list);
  char *s = json_dumps(root, JSON_INDENT(2));
  json_decref(root);
  if (s == NULL)
    dibba_oom(0);
  char *out = dibba_xasprintf("%s\n", s);
  OPENSSL_cleanse(s, strlen(s));
  free(s);
  *len = strlen(out);
  return out;
}

/* ---- load / reload ---- */

static int load(dibba_auth_users_t *u, int missing_ok, char *err, size_t errlen) {
  char *data = NULL, inner[400] = "";
  size_t len = 0;
  dibba_auth_user_t *a = NULL;
  size_t n = 0;
  int r = dibba_read_small_file(u->path, DIBBA_AUTH_USERS_FILE_MAX, &data, &len);
  if (r == -ENOENT && missing_ok) {
    users_array_free(u->users, u->n);
    u->users = NULL;
    u->n = 0;
    r = 0;
    goto out;
  }
  if (r < 0) {
    r = dibba_error_set(err, errlen, r, "users file %s: %s", u->path, r == -EFBIG ? "larger than 4 MiB" : strerror(-r));
    goto out;
  }
  r = parse_file(data, len, &a, &n, inner, sizeof inner);
  if (r < 0) {
    dibba_error_set(err, errlen, r, "users file %s: %s", u->path, inner);
    goto out;
  }
  users_array_free(u->users, u->n);
  u->users = a;
  u->n = n;
out:
  if (data) {
    OPENSSL_cleanse(data, len);
    free(data);
  }
  return r;
}

int dibba_auth_users_load(dibba_auth_users_t *u, char *err, size_t errlen) { return load(u, 1, err, errlen); }

int dibba_auth_users_reload(dibba_auth_users_t *u, char *err, size_t errlen) { return load(u, 0, err, errlen); }

/* ---- save ---- */

/* Thread-safe (runs on the worker pool too): no strerror, no logging. */
int dibba__auth_write_atomic(const char *path, const char *data, size_t len, char *err, size_t errlen) {
  char *tmp = dibba_xasprintf("%s.tmp.XXXXXX", path);
  char *dircopy = dibba_xstrdup(path);
  const char *what = "create";
  int r = 0, fd = mkostemp(tmp, O_CLOEXEC), dfd = -1;
  if (fd < 0) {
    r = -errno;
    goto out;
  }
  what = "chmod";
  if (fchmod(fd, 0600) < 0) {
    r = -errno;
    goto out_unlink;
  }
  what = "write";
  for (size_t off = 0; off < len;) {
    ssize_t w = write(fd, data + off, len - off);
    if (w < 0 && errno == EINTR)
      continue;
    if (w < 0) {
      r = -errno;
      goto out_unlink;
    }
    off += (size_t)w;
  }
  what = "fsync";
  if (fsync(fd) < 0) {
    r = -errno;
    goto out_unlink;
  }
  what = "close";
  r = close(fd);
  fd = -1;
  if (r < 0) {
    r = -errno;
    goto out_unlink;
  }
  what = "rename";
  if (rename(tmp, path) < 0) {
    r = -errno;
    goto out_unlink;
  }
  /* The rename is only durable once the directory is. */
  dfd = open(dirname(dircopy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    fsync(dfd);
    close(dfd);
  }
  goto out;
out_unlink:
  unlink(tmp);
out:
  if (fd >= 0)
    close(fd);
  if (r < 0)
    dibba_error_set(err, errlen, r, "users file %s: %s: %s", path, what, dibba_strerror(r));
  free(tmp);
  free(dircopy);
  return r;
}

int dibba_auth_users_save(dibba_auth_users_t *u, char *err, size_t errlen) {
  size_t len = 0;
  char *data = serialize(u, &len);
  int r = dibba__auth_write_atomic(u->path, data, len, err, errlen);
  OPENSSL_cleanse(data, len);
  free(data);
  return r;
}

char *dibba__auth_users_serialize(const dibba_auth_users_t *u, size_t *len) { return serialize(u, len); }

/* ---- lookups and changes ---- */

static dibba_auth_user_t *find(const dibba_auth_users_t *u, const char *name) {
  if (name == NULL)
    return NULL;
  for (size_t i = 0; i < u->n; i++)
    if (strcmp(u->users[i].name, name) == 0)
      return &u->users[i];
  return NULL;
}

const dibba_auth_user_t *dibba_auth_users_find(const dibba_auth_users_t *u, const char *name) { return find(u, name); }

int dibba_auth_users_add(dibba_auth_users_t *u, const char *name, dibba_auth_role_t role, const char *hash,
                         int64_t now) {
  if (!dibba_auth_username_valid(name) || role == DIBBA_AUTH_ROLE_NONE || role > DIBBA_AUTH_ROLE_ADMIN ||
      !dibba__auth_hash_wellformed(hash))
    return -EINVAL;
  if (find(u, name))
    return -EEXIST;
  if (u->n >= DIBBA_AUTH_USERS_MAX)
    return -ENOSPC;
  u->users = dibba_xreallocarray(u->users, u->n + 1, sizeof *u->users);
  dibba_auth_user_t *x = &u->users[u->n++];
  x->name = dibba_xstrdup(name);
  x->role = role;
  x->enabled = 1;
  x->password_hash = dibba_xstrdup(hash);
  x->created_at = now;
  x->updated_at = now;
  return 0;
}

int dibba_auth_users_set_role(dibba_auth_users_t *u, const char *name, dibba_auth_role_t role, int64_t now) {
  if (role == DIBBA_AUTH_ROLE_NONE || role > DIBBA_AUTH_ROLE_ADMIN)
    return -EINVAL;
  dibba_auth_user_t *x = find(u, name);
  if (x == NULL)
    return -ENOENT;
  x->role = role;
  x->updated_at = now;
  return 0;
}

int dibba_auth_users_set_enabled(dibba_auth_users_t *u, const char *name, int enabled, int64_t now) {
  dibba_auth_user_t *x = find(u, name);
  if (x == NULL)
    return -ENOENT;
  x->enabled = enabled ? 1 : 0;
  x->updated_at = now;
  return 0;
}

int dibba_auth_users_set_hash(dibba_auth_users_t *u, const char *name, const char *hash, int64_t now) {
  if (!dibba__auth_hash_wellformed(hash))
    return -EINVAL;
  dibba_auth_user_t *x = find(u, name);
  if (x == NULL)
    return -ENOENT;
  char *old = x->password_hash;
  x->password_hash = dibba_xstrdup(hash);
  OPENSSL_cleanse(old, strlen(old));
  free(old);
  x->updated_at = now;
  return 0;
}

int dibba_auth_users_del(dibba_auth_users_t *u, const char *name) {
  dibba_auth_user_t *x = find(u, name);
  if (x == NULL)
    return -ENOENT;
  size_t i = (size_t)(x - u->users);
  user_clear(x);
  memmove(&u->users[i], &u->users[i + 1], (u->n - i - 1) * sizeof *u->users);
  u->n--;
  return 0;
}

json_t *dibba_auth_users_list(const dibba_auth_users_t *u) {
  json_t *list = json_array();
  for (size_t i = 0; i < u->n; i++) {
    const dibba_auth_user_t *x = &u->users[i];
    json_array_append_new(list, json_pack("{s:s, s:s, s:b, s:I, s:I}", "name", x->name, "role",
                                          dibba_auth_role_name(x->role), "enabled", x->enabled, "created_at",
                                          (json_int_t)x->created_at, "updated_at", (json_int_t)x->updated_at));
  }
  return list;
}
