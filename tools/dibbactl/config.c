/* SPDX-License-Identifier: Apache-2.0 */
/* dibbactl's settings: config.json (server) and credentials.json (token), under $XDG_CONFIG_HOME/dibba. */
#include <errno.h>
#include <fcntl.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "dibba/alloc.h"
#include "ctl.h"

#define DEFAULT_SERVER "http://127.0.0.1:8080"

static char *config_dir(void) {
  const char *x = getenv("XDG_CONFIG_HOME");
  if (x && x[0] == '/')
    return dibba_xasprintf("%s/dibba", x);
  const char *home = getenv("HOME");
  if (home == NULL || home[0] != '/') {
    struct passwd *pw = getpwuid(getuid());
    home = pw ? pw->pw_dir : NULL;
  }
  if (home == NULL)
    return NULL;
  return dibba_xasprintf("%s/.config/dibba", home);
}

/* Read a small JSON object file. Missing file: 0 and *out NULL. Errors print one line. */
static int read_json_file(const char *path, json_t **out) {
  *out = NULL;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT)
      return 0;
    return ctl_fail(CTL_EFAIL, "cannot read %s: %s", path, strerror(errno));
  }
  struct stat st;
  if (fstat(fd, &st) < 0 || st.st_size > (off_t)CTL_CONFIG_MAX) {
    close(fd);
    return ctl_fail(CTL_EFAIL, "%s is larger than %u bytes", path, CTL_CONFIG_MAX);
  }
  json_error_t je;
  json_t *j = json_loadfd(fd, JSON_REJECT_DUPLICATES, &je);
  close(fd);
  if (j == NULL)
    return ctl_fail(CTL_EFAIL, "%s:%d:%d: %s", path, je.line, je.column, je.text);
  if (!json_is_object(j)) {
    json_decref(j);
    return ctl_fail(CTL_EFAIL, "%s: not a JSON object", path);
  }
  *out = j;
  return 0;
}

static char *normalize_server(const char *s) {
  size_t n = strlen(s);
  while (n > 0 && s[n - 1] == '/')
    n--;
  return dibba_xstrndup(s, n);
}

char *ctl_config_credentials_path(const ctl_t *c) { return dibba_xasprintf("%s/credentials.json", c->config_dir); }

int ctl_config_load(ctl_t *c, const char *server_flag) {
  json_t *cfg = NULL, *cred = NULL;
  char *path = NULL;
  int rc = 0;
  c->config_dir = config_dir();
  if (c->config_dir == NULL)
    return ctl_fail(CTL_EFAIL, "cannot find a config directory: set HOME or XDG_CONFIG_HOME");
  path = dibba_xasprintf("%s/config.json", c->config_dir);
  if ((rc = read_json_file(path, &cfg)) != 0)
    goto out;
  free(path);
  path = ctl_config_credentials_path(c);
  if ((rc = read_json_file(path, &cred)) != 0)
    goto out;
  const char *env = getenv("DIBBA_SERVER");
  const char *from_cfg = json_string_value(json_object_get(cfg, "server"));
  const char *from_cred = json_string_value(json_object_get(cred, "server"));
  const char *s = server_flag && server_flag[0] ? server_flag
                  : env && env[0]               ? env
                  : from_cfg && from_cfg[0]     ? from_cfg
                  : from_cred && from_cred[0]   ? from_cred
                                                : DEFAULT_SERVER;
  c->server = normalize_server(s);
  if (strncmp(c->server, "http://", 7) != 0 && strncmp(c->server, "https://", 8) != 0) {
    rc = ctl_fail(CTL_EUSAGE, "server %s: the URL must start with http:// or https://", c->server);
    goto out;
  }
  const char *tok = json_string_value(json_object_get(cred, "token"));
  if (tok && tok[0] && from_cred) {
    /* A token goes only to the server that issued it. */
    char *cs = normalize_server(from_cred);
    if (strcmp(cs, c->server) == 0) {
      c->token = dibba_xstrdup(tok);
      c->user = dibba_xstrdup(json_string_value(json_object_get(cred, "user")));
      c->token_expires = (int64_t)json_integer_value(json_object_get(cred, "expires_at"));
    } else {
      c->token_other_server = 1;
    }
    free(cs);
  }
out:
  free(path);
  json_decref(cfg);
  json_decref(cred);
  return rc;
}

/* mkdir -p for the config directory: the parents 0755 as usual, the dibba directory itself 0700. */
static int make_dir(const char *dir) {
  char *p = dibba_xstrdup(dir);
  int rc = 0;
  for (char *s = strchr(p + 1, '/'); s; s = strchr(s + 1, '/')) {
    *s = '\0';
    if (mkdir(p, 0755) < 0 && errno != EEXIST) {
      rc = ctl_fail(CTL_EFAIL, "cannot create %s: %s", p, strerror(errno));
      goto out;
    }
    *s = '/';
  }
  if (mkdir(p, 0700) < 0 && errno != EEXIST) {
    rc = ctl_fail(CTL_EFAIL, "cannot create %s: %s", p, strerror(errno));
    goto out;
  }
  /* It holds a credential: tighten a directory made earlier with a looser mode. */
  if (chmod(p, 0700) < 0)
    rc = ctl_fail(CTL_EFAIL, "cannot chmod %s: %s", p, strerror(errno));
out:
  free(p);
  return rc;
}

/* Write obj to path atomically: a 0600 temporary file, fsync, rename, fsync of the directory. */
static int write_atomic(const ctl_t *c, const char *path, const json_t *obj) {
  char *tmp = dibba_xasprintf("%s.tmp.%ld", path, (long)getpid());
  char *text = json_dumps(obj, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
  int rc = 0, fd = -1;
  size_t len = strlen(text), off = 0;
  (void)unlink(tmp);
  fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    rc = ctl_fail(CTL_EFAIL, "cannot write %s: %s", tmp, strerror(errno));
    goto out;
  }
  while (off < len) {
    ssize_t w = write(fd, text + off, len - off);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0) {
      rc = ctl_fail(CTL_EFAIL, "cannot write %s: %s", tmp, strerror(errno));
      goto out;
    }
    off += (size_t)w;
  }
  if (write(fd, "\n", 1) != 1 || fsync(fd) < 0) {
    rc = ctl_fail(CTL_EFAIL, "cannot write %s: %s", tmp, strerror(errno));
    goto out;
  }
  close(fd);
  fd = -1;
  if (rename(tmp, path) < 0) {
    rc = ctl_fail(CTL_EFAIL, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
    goto out;
  }
  int dfd = open(c->config_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)fsync(dfd);
    close(dfd);
  }
out:
  if (fd >= 0)
    close(fd);
  if (rc != 0)
    (void)unlink(tmp);
  if (text) {
    explicit_bzero(text, len);
    free(text);
  }
  free(tmp);
  return rc;
}

int ctl_config_save_token(ctl_t *c, const char *user, const char *token, int64_t expires_at) {
  char *path = ctl_config_credentials_path(c);
  int rc = make_dir(c->config_dir);
  if (rc == 0) {
    json_t *o = json_pack("{s:s, s:s, s:s, s:I}", "server", c->server, "user", user, "token", token, "expires_at",
                          (json_int_t)expires_at);
    rc = write_atomic(c, path, o);
    json_decref(o);
  }
  free(path);
  return rc;
}

int ctl_config_forget_token(ctl_t *c, int *had) {
  char *path = ctl_config_credentials_path(c);
  json_t *cred = NULL;
  int rc = read_json_file(path, &cred);
  *had = 0;
  if (rc == 0 && cred) {
    *had = json_object_get(cred, "token") != NULL;
    /* Keep the server, so later commands still go where the user logged in. */
    json_object_del(cred, "token");
    json_object_del(cred, "expires_at");
    json_object_del(cred, "user");
    rc = write_atomic(c, path, cred);
  }
  json_decref(cred);
  free(path);
  return rc;
}

void ctl_config_free(ctl_t *c) {
  free(c->server);
  if (c->token) {
    explicit_bzero(c->token, strlen(c->token));
    free(c->token);
  }
  free(c->user);
  free(c->config_dir);
  c->server = c->token = c->user = c->config_dir = NULL;
}
