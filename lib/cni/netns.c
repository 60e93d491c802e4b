/* SPDX-License-Identifier: Apache-2.0 */
/* Pinned network namespaces: created by a spawned `unshare --net=<file>`, removed by lazy unmount + unlink. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cni-int.h"
#include "dibba/alloc.h"
#include "dibba/config.h"
#include "dibba/error.h"
#include "dibba/netns.h"

#define HELPER_TIMEOUT_MS 10000

typedef struct req_s {
  uv_loop_t *loop;
  uv_fs_t fs;
  char *dir, *path;
  int create;
  int status;
  char err[256];
  dibba_netns_cb cb;
  void *data;
} req_t;

int dibba_netns_name_valid(const char *s) {
  if (!s || !*s || *s == '.' || strlen(s) > DIBBA_NETNS_NAME_MAX)
    return 0;
  for (const char *p = s; *p; p++)
    if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '_' || *p == '-' ||
          *p == '.'))
      return 0;
  return 1;
}

static void finish(req_t *r) {
  r->cb(r->status, r->status ? r->err : "", r->data);
  free(r->dir);
  free(r->path);
  free(r);
}

static void fail(req_t *r, int status, const char *what) {
  if (!r->status) {
    r->status = status;
    snprintf(r->err, sizeof r->err, "netns %s: %s: %s", r->path, what, uv_strerror(status));
  }
}

static void on_unlink_done(uv_fs_t *fs) {
  req_t *r = fs->data;
  int res = (int)fs->result;
  uv_fs_req_cleanup(fs);
  if (res < 0 && res != UV_ENOENT && !r->create)
    fail(r, res, "unlink");
  finish(r);
}

static void unlink_and_finish(req_t *r) {
  if (uv_fs_unlink(r->loop, &r->fs, r->path, on_unlink_done) < 0)
    finish(r);
}

static void on_unshare(const dibba__exec_result_t *x, void *data) {
  req_t *r = data;
  if (x->err || x->exit_status != 0 || x->term_signal) {
    r->status = x->err ? x->err : -EIO;
    snprintf(r->err, sizeof r->err, "netns %s: unshare %s: %.160s", r->path,
             x->err == UV_ETIMEDOUT ? "timed out" : "failed", x->errout);
    unlink_and_finish(r); /* the empty pin file */
    return;
  }
  finish(r);
}

static int spawn_helper(req_t *r, char **argv, dibba__exec_cb cb) {
  static char *env[] = {"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", NULL};
  return dibba__exec(r->loop, argv[0], argv, env, "", 0, HELPER_TIMEOUT_MS, 4096, 4096, cb, r);
}

static void on_pin_closed(uv_fs_t *fs) {
  req_t *r = fs->data;
  uv_fs_req_cleanup(fs);
  char *opt = dibba_xasprintf("--net=%s", r->path);
  char *argv[] = {"unshare", opt, "true", NULL};
  int e = spawn_helper(r, argv, on_unshare);
  free(opt);
  if (e < 0) {
    fail(r, e, "spawn unshare");
    unlink_and_finish(r);
  }
}

static void on_pin_open(uv_fs_t *fs) {
  req_t *r = fs->data;
  int fd = (int)fs->result;
  uv_fs_req_cleanup(fs);
  if (fd < 0) {
    fail(r, fd, "create");
    if (fd == UV_EEXIST)
      r->status = -EEXIST;
    finish(r);
    return;
  }
  /* Pool I/O for a close is cheap and keeps the loop clean; the error of close on a new empty file is moot. */
  if (uv_fs_close(r->loop, &r->fs, fd, on_pin_closed) < 0)
    on_pin_closed(&r->fs);
}

static void on_mkdir(uv_fs_t *fs) {
  req_t *r = fs->data;
  int res = (int)fs->result;
  uv_fs_req_cleanup(fs);
  if (res < 0 && res != UV_EEXIST) {
    fail(r, res, "mkdir");
    finish(r);
    return;
  }
  int e = uv_fs_open(r->loop, &r->fs, r->path, O_RDONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0444, on_pin_open);
  if (e < 0) {
    fail(r, e, "create");
    finish(r);
  }
}

static req_t *req_new(uv_loop_t *loop, const char *dir, const char *name, int create, dibba_netns_cb cb, void *data) {
  req_t *r = dibba_xcalloc(1, sizeof *r);
  r->loop = loop;
  r->dir = dibba_xstrdup(dir);
  r->path = dibba_xasprintf("%s/%s", dir, name);
  r->create = create;
  r->cb = cb;
  r->data = data;
  r->fs.data = r;
  return r;
}

int dibba_netns_create(uv_loop_t *loop, const char *dir, const char *name, dibba_netns_cb cb, void *data) {
  if (!dir || !*dir || !dibba_netns_name_valid(name) || !cb)
    return -EINVAL;
  req_t *r = req_new(loop, dir, name, 1, cb, data);
  int e = uv_fs_mkdir(loop, &r->fs, r->dir, 0755, on_mkdir);
  if (e < 0) {
    free(r->dir);
    free(r->path);
    free(r);
  }
  return e;
}

static void on_umount(const dibba__exec_result_t *x, void *data) {
  req_t *r = data;
  /* umount fails for a file that is not (or no longer) a mount: unlink tells whether that matters
   * (EBUSY if it is still mounted, ENOENT if it is gone, which is success). */
  (void)x;
  unlink_and_finish(r);
}

int dibba_netns_delete(uv_loop_t *loop, const char *dir, const char *name, dibba_netns_cb cb, void *data) {
  if (!dir || !*dir || !dibba_netns_name_valid(name) || !cb)
    return -EINVAL;
  req_t *r = req_new(loop, dir, name, 0, cb, data);
  char *argv[] = {"umount", "--lazy", r->path, NULL};
  int e = spawn_helper(r, argv, on_umount);
  if (e < 0) {
    free(r->dir);
    free(r->path);
    free(r);
  }
  return e;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* mountinfo escapes space, tab, newline and backslash as \ooo. */
static void unescape(char *s) {
  char *w = s;
  for (char *p = s; *p; p++) {
    if (p[0] == '\\' && p[1] >= '0' && p[1] <= '3' && p[2] >= '0' && p[2] <= '7' && p[3] >= '0' && p[3] <= '7') {
      *w++ = (char)((p[1] - '0') * 64 + (p[2] - '0') * 8 + (p[3] - '0'));
      p += 3;
    } else {
      *w++ = *p;
    }
  }
  *w = '\0';
}

int dibba_netns_list(const char *dir, char ***names, size_t *n) {
  char *text = NULL;
  size_t len = 0;
  *names = NULL;
  *n = 0;
  /* /proc files report size 0, so dibba_read_small_file's stat check passes; the read is capped. */
  int rc = dibba_read_small_file("/proc/self/mountinfo", 4 * 1024 * 1024, &text, &len);
  if (rc < 0)
    return rc;
  size_t dlen = strlen(dir);
  while (dlen > 1 && dir[dlen - 1] == '/')
    dlen--;
  char *save = NULL;
  for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
    /* id parent major:minor root mountpoint options... - fstype source superopts */
    char *f[5] = {0};
    char *s2 = NULL, *tok = strtok_r(line, " ", &s2);
    for (int i = 0; i < 5 && tok; i++, tok = strtok_r(NULL, " ", &s2))
      f[i] = tok;
    if (!f[4])
      continue;
    char *fstype = NULL;
    for (; tok; tok = strtok_r(NULL, " ", &s2))
      if (strcmp(tok, "-") == 0) {
        fstype = strtok_r(NULL, " ", &s2);
        break;
      }
    if (!fstype || strcmp(fstype, "nsfs") != 0 || strncmp(f[3], "net:", 4) != 0)
      continue;
    unescape(f[4]);
    if (strncmp(f[4], dir, dlen) != 0 || f[4][dlen] != '/' || strchr(f[4] + dlen + 1, '/'))
      continue;
    const char *name = f[4] + dlen + 1;
    int dup = 0;
    for (size_t i = 0; i < *n; i++)
      dup |= strcmp((*names)[i], name) == 0;
    if (dup || !dibba_netns_name_valid(name) || *n >= 65536)
      continue;
    *names = dibba_xreallocarray(*names, *n + 1, sizeof **names);
    (*names)[(*n)++] = dibba_xstrdup(name);
  }
  free(text);
  if (*n)
    qsort(*names, *n, sizeof **names, cmp_str);
  return 0;
}

void dibba_netns_list_free(char **names, size_t n) {
  for (size_t i = 0; names && i < n; i++)
    free(names[i]);
  free(names);
}
