/* SPDX-License-Identifier: Apache-2.0 */
/* The dashboard's static files: a bounded set read into memory (at start-up, and again on SIGHUP through
 * uv_fs_* so the loop never waits on the disk), served under /ui with ETags, Cache-Control and a strict
 * Content-Security-Policy. A request never opens a file, so no request path can reach outside the set. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/evp.h>

#include "dibba-config.h"
#include "dibba/alloc.h"
#include "dibba/error.h"
#include "dibba/log.h"

#include "ui.h"

typedef struct ui_file_s {
  char name[API_UI_NAME_MAX + 1];
  char *data;
  size_t len;
  const char *ctype;
  char etag[36]; /* "\"" + 32 hex digits of SHA-256 + "\"" */
} ui_file_t;

typedef struct ui_set_s {
  ui_file_t *files; /* API_UI_MAX_FILES slots */
  size_t n, bytes;
} ui_set_t;

typedef struct loader_s loader_t;

struct api_ui_s {
  uv_loop_t *loop;
  char *dir;
  ui_set_t set;
  loader_t *loader; /* the read in flight, or NULL */
  int again;        /* a reload was asked for while one ran */
  int closing;
  void (*close_cb)(void *);
  void *close_data;
  uint64_t reloads, reload_errors;
};

enum { L_SCAN, L_OPEN, L_STAT, L_READ, L_CLOSE, L_ABORT };

/* One pass over the directory: scandir, then open/fstat/read/close per file, each step a uv_fs request. With
 * sync set the requests run at once (uv_fs_* without a callback): used only for the start-up read. */
struct loader_s {
  api_ui_t *u;
  uv_fs_t req;
  int sync, step;
  char *names[API_UI_MAX_FILES];
  size_t nnames, next;
  ui_set_t set;
  uv_file fd;
  size_t size, got;
  int status;
  char err[256];
};

static const struct {
  const char *ext, *ctype;
} ctypes[] = {
    {".html", "text/html; charset=utf-8"},
    {".js", "text/javascript; charset=utf-8"},
    {".css", "text/css; charset=utf-8"},
    {".json", "application/json"},
    {".map", "application/json"},
    {".svg", "image/svg+xml"},
    {".png", "image/png"},
    {".ico", "image/x-icon"},
    {".webp", "image/webp"},
    {".woff2", "font/woff2"},
    {".txt", "text/plain; charset=utf-8"},
};

static const char *ctype_of(const char *name) {
  size_t nl = strlen(name);
  for (size_t i = 0; i < sizeof ctypes / sizeof ctypes[0]; i++) {
    size_t el = strlen(ctypes[i].ext);
    if (nl > el && strcmp(name + nl - el, ctypes[i].ext) == 0)
      return ctypes[i].ctype;
  }
  return "application/octet-stream";
}

/* [a-z0-9][a-z0-9._-]*, at most API_UI_NAME_MAX bytes: no dot files, no separators, no "..". */
static int name_ok(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > API_UI_NAME_MAX || s[0] == '.' || s[0] == '-' || s[0] == '_')
    return 0;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-'))
      return 0;
  }
  return strstr(s, "..") == NULL;
}

static void set_free(ui_set_t *s) {
  for (size_t i = 0; s->files && i < s->n; i++)
    free(s->files[i].data);
  free(s->files);
  memset(s, 0, sizeof *s);
}

static void etag_of(ui_file_t *f) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int mdlen = 0;
  static const char hex[] = "0123456789abcdef";
  if (EVP_Digest(f->data, f->len, md, &mdlen, EVP_sha256(), NULL) != 1 || mdlen < 16) {
    /* Only with a broken OpenSSL: no ETag then, and clients simply fetch the file again. */
    f->etag[0] = '\0';
    return;
  }
  char *p = f->etag;
  *p++ = '"';
  for (int i = 0; i < 16; i++) {
    *p++ = hex[md[i] >> 4];
    *p++ = hex[md[i] & 15];
  }
  *p++ = '"';
  *p = '\0';
}

/* ---- the loader ---- */

static void on_fs(uv_fs_t *req);
static void loader_start(api_ui_t *u);

/* After issuing a request: 1 if its result is already in l->req (sync mode, or it failed to start; libuv
 * then calls no callback), 0 if on_fs follows. */
static int issued(loader_t *l, int rc) {
  if (l->sync)
    return 1;
  if (rc < 0) {
    l->req.result = rc;
    return 1;
  }
  return 0;
}

static uv_fs_cb fs_cb(loader_t *l) { return l->sync ? NULL : on_fs; }

static void finish(loader_t *l) {
  api_ui_t *u = l->u;
  for (size_t i = 0; i < l->nnames; i++)
    free(l->names[i]);
  if (l->status == 0) {
    set_free(&u->set);
    u->set = l->set;
    u->reloads++;
    dibba_log_info("ui",
                   json_pack("{s:s,s:i,s:I}", "dir", u->dir, "files", (int)u->set.n, "bytes", (json_int_t)u->set.bytes),
                   "dashboard files loaded");
  } else {
    set_free(&l->set);
    u->reload_errors++;
    dibba_log_warn("ui", json_pack("{s:s,s:s,s:i}", "dir", u->dir, "error", l->err, "files_kept", (int)u->set.n),
                   "dashboard files not loaded; the previous set stays");
  }
  u->loader = NULL;
  free(l);
  if (u->closing) {
    void (*cb)(void *) = u->close_cb;
    void *cd = u->close_data;
    set_free(&u->set);
    free(u->dir);
    free(u);
    if (cb)
      cb(cd);
  } else if (u->again) {
    u->again = 0;
    loader_start(u);
  }
}

/* Record the first error; close the open file (if any) before finishing. Returns what step() returns. */
static int fail(loader_t *l, int rc, const char *what) {
  if (l->status == 0) {
    l->status = rc < 0 ? rc : -EIO;
    snprintf(l->err, sizeof l->err, "%s%s%s: %s", what, l->nnames > l->next ? " " : "",
             l->nnames > l->next ? l->names[l->next] : "", uv_strerror(l->status));
  }
  if (l->fd >= 0) {
    uv_file fd = l->fd;
    l->fd = -1;
    l->step = L_ABORT;
    return issued(l, uv_fs_close(l->u->loop, &l->req, fd, fs_cb(l)));
  }
  finish(l);
  return 0;
}

static int next_file(loader_t *l) {
  char path[4096];
  if (l->next == l->nnames) {
    finish(l);
    return 0;
  }
  int n = snprintf(path, sizeof path, "%s/%s", l->u->dir, l->names[l->next]);
  if (n < 0 || (size_t)n >= sizeof path)
    return fail(l, -ENAMETOOLONG, "open");
  l->step = L_OPEN;
  /* O_NONBLOCK: a FIFO planted in the directory must not hang a pool thread (or the loop, at start-up). */
  return issued(l, uv_fs_open(l->u->loop, &l->req, path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0, fs_cb(l)));
}

static int read_more(loader_t *l) {
  ui_file_t *f = &l->set.files[l->set.n];
  uv_buf_t b = uv_buf_init(f->data + l->got, (unsigned)(l->size - l->got));
  l->step = L_READ;
  return issued(l, uv_fs_read(l->u->loop, &l->req, l->fd, &b, 1, (int64_t)l->got, fs_cb(l)));
}

static int close_file(loader_t *l) {
  uv_file fd = l->fd;
  l->fd = -1;
  l->step = L_CLOSE;
  return issued(l, uv_fs_close(l->u->loop, &l->req, fd, fs_cb(l)));
}

/* Consume the result in l->req and issue the next request. Returns 1 if that request's result is already
 * available (run step again), 0 if a callback follows or the load finished (l is then freed). */
static int step(loader_t *l) {
  ssize_t r = l->req.result;
  switch (l->step) {
  case L_SCAN: {
    uv_dirent_t ent;
    int rc = 0;
    if (r < 0) {
      uv_fs_req_cleanup(&l->req);
      return fail(l, (int)r, "scandir");
    }
    while (uv_fs_scandir_next(&l->req, &ent) != UV_EOF) {
      if (ent.type == UV_DIRENT_DIR || !name_ok(ent.name))
        continue; /* editor backups, dot files, sub-directories: not part of the dashboard */
      if (l->nnames == API_UI_MAX_FILES) {
        rc = -E2BIG;
        break;
      }
      l->names[l->nnames++] = dibba_xstrdup(ent.name);
    }
    uv_fs_req_cleanup(&l->req);
    if (rc < 0) {
      l->next = l->nnames; /* no single file to blame */
      return fail(l, rc, "more than 64 files in the directory");
    }
    return next_file(l);
  }
  case L_OPEN:
    uv_fs_req_cleanup(&l->req);
    if (r < 0)
      return fail(l, (int)r, "open");
    l->fd = (uv_file)r;
    l->step = L_STAT;
    return issued(l, uv_fs_fstat(l->u->loop, &l->req, l->fd, fs_cb(l)));
  case L_STAT: {
    uv_stat_t st = l->req.statbuf;
    uv_fs_req_cleanup(&l->req);
    if (r < 0)
      return fail(l, (int)r, "fstat");
    if (!S_ISREG(st.st_mode))
      return fail(l, -EINVAL, "not a regular file:");
    if (st.st_size > API_UI_MAX_BYTES - l->set.bytes)
      return fail(l, -EFBIG, "over 2 MiB in all at");
    ui_file_t *f = &l->set.files[l->set.n];
    snprintf(f->name, sizeof f->name, "%s", l->names[l->next]);
    l->size = (size_t)st.st_size;
    l->got = 0;
    f->data = dibba_xmalloc(l->size + 1);
    if (l->size == 0)
      return close_file(l);
    return read_more(l);
  }
  case L_READ:
    uv_fs_req_cleanup(&l->req);
    if (r < 0)
      return fail(l, (int)r, "read");
    l->got += (size_t)r;
    if (r > 0 && l->got < l->size)
      return read_more(l);
    return close_file(l); /* complete, or the file shrank since fstat: keep what was there */
  case L_CLOSE: {
    uv_fs_req_cleanup(&l->req);
    ui_file_t *f = &l->set.files[l->set.n];
    f->len = l->got;
    f->data[f->len] = '\0';
    f->ctype = ctype_of(f->name);
    etag_of(f);
    l->set.n++;
    l->set.bytes += f->len;
    l->next++;
    return next_file(l);
  }
  case L_ABORT:
  default:
    uv_fs_req_cleanup(&l->req);
    finish(l);
    return 0;
  }
}

static void on_fs(uv_fs_t *req) {
  loader_t *l = req->data;
  while (step(l))
    ;
}

static loader_t *loader_new(api_ui_t *u, int sync) {
  loader_t *l = dibba_xcalloc(1, sizeof *l);
  l->u = u;
  l->sync = sync;
  l->fd = -1;
  l->set.files = dibba_xcalloc(API_UI_MAX_FILES, sizeof *l->set.files);
  l->req.data = l;
  u->loader = l;
  return l;
}

static void loader_start(api_ui_t *u) {
  loader_t *l = loader_new(u, 0);
  l->step = L_SCAN;
  if (issued(l, uv_fs_scandir(u->loop, &l->req, u->dir, 0, on_fs)))
    on_fs(&l->req);
}

/* ---- serving ---- */

static const ui_file_t *find(const api_ui_t *u, const char *name) {
  for (size_t i = 0; i < u->set.n; i++)
    if (strcmp(u->set.files[i].name, name) == 0)
      return &u->set.files[i];
  return NULL;
}

/* If-None-Match: "*" or a comma-separated list of (possibly weak) tags; weak comparison (RFC 9110 13.1.2). */
static int etag_matches(const char *inm, const char *etag) {
  size_t el = strlen(etag);
  const char *p = inm;
  if (el == 0)
    return 0;
  while (*p) {
    while (*p == ' ' || *p == '\t' || *p == ',')
      p++;
    if (*p == '\0')
      break;
    const char *e = strchr(p, ',');
    size_t n = e ? (size_t)(e - p) : strlen(p);
    while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t'))
      n--;
    if (n >= 2 && p[0] == 'W' && p[1] == '/') {
      p += 2;
      n -= 2;
    }
    if ((n == 1 && p[0] == '*') || (n == el && memcmp(p, etag, el) == 0))
      return 1;
    if (e == NULL)
      break;
    p = e + 1;
  }
  return 0;
}

static void security_headers(dibba_http_req_t *req) {
  /* connect-src 'self' covers the same-origin ws:// and wss:// of /v1/events (CSP Level 3). */
  dibba_http_add_header(req, "Content-Security-Policy",
                        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
                        "frame-ancestors 'none'");
  dibba_http_add_header(req, "X-Content-Type-Options", "nosniff");
  dibba_http_add_header(req, "X-Frame-Options", "DENY");
  dibba_http_add_header(req, "Referrer-Policy", "no-referrer");
  dibba_http_add_header(req, "Cross-Origin-Opener-Policy", "same-origin");
  dibba_http_add_header(req, "Cross-Origin-Resource-Policy", "same-origin");
}

static void serve(dibba_http_req_t *req, const api_ui_t *u, const char *name) {
  security_headers(req);
  const ui_file_t *f = name_ok(name) ? find(u, name) : NULL;
  if (f == NULL) {
    dibba_http_respond_error(req, 404, u->set.n ? "no such dashboard file" : "dashboard not installed");
    return;
  }
  /* Names are not content-hashed, so every use revalidates; the ETag makes that a 304 without a body. */
  dibba_http_add_header(req, "Cache-Control", "no-cache");
  if (f->etag[0])
    dibba_http_add_header(req, "ETag", f->etag);
  const char *inm = dibba_http_req_header(req, "if-none-match");
  if (inm && etag_matches(inm, f->etag)) {
    dibba_http_respond(req, 304, NULL, NULL, 0);
    return;
  }
  dibba_http_respond(req, 200, f->ctype, f->data, f->len);
}

static void h_index(dibba_http_req_t *req, void *data) { serve(req, data, "index.html"); }

static void h_file(dibba_http_req_t *req, void *data) {
  const char *name = dibba_http_req_param(req, "file");
  serve(req, data, name ? name : "");
}

/* ---- life cycle ---- */

int api_ui_new(uv_loop_t *loop, const dibba_config_t *cfg, dibba_http_router_t *router, api_ui_t **out, char *err,
               size_t errlen) {
  const char *dir = NULL;
  int rc, configured;
  *out = NULL;
  if ((rc = dibba_config_str(cfg, "api.ui_dir", NULL, &dir, err, errlen)) < 0)
    return rc;
  configured = dir != NULL && dir[0] != '\0';
  api_ui_t *u = dibba_xcalloc(1, sizeof *u);
  u->loop = loop;
  u->dir = configured ? dibba_xstrdup(dir) : dibba_xasprintf("%s/ui", DIBBA_DATADIR);
  /* The start-up read: at most 64 files and 2 MiB, before the loop serves anything. */
  loader_t *l = loader_new(u, 1);
  l->step = L_SCAN;
  uv_fs_scandir(loop, &l->req, u->dir, 0, NULL);
  while (step(l))
    ;
  if (configured && u->set.n == 0) {
    rc = dibba_error_set(err, errlen, -ENOENT, "api.ui_dir %s: no dashboard files could be loaded", u->dir);
    goto fail;
  }
  const dibba_http_route_t routes[] = {
      {.method = "GET", .pattern = "/ui", .handler = h_index, .data = u, .summary = "The dashboard (index.html)"},
      {.method = "GET", .pattern = "/ui/{file}", .handler = h_file, .data = u, .summary = "A dashboard file"},
  };
  for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
    if ((rc = dibba_http_router_add(router, &routes[i])) < 0) {
      dibba_error_set(err, errlen, rc, "route %s %s", routes[i].method, routes[i].pattern);
      goto fail;
    }
  *out = u;
  return 0;
fail:
  /* A route already added points at u: a failed start stops the daemon before any request is served. */
  set_free(&u->set);
  free(u->dir);
  free(u);
  return rc;
}

void api_ui_reload(api_ui_t *u) {
  if (u == NULL || u->closing)
    return;
  if (u->loader) {
    u->again = 1;
    return;
  }
  loader_start(u);
}

void api_ui_close(api_ui_t *u, void (*cb)(void *data), void *data) {
  if (u == NULL || u->closing)
    return;
  u->closing = 1;
  u->close_cb = cb;
  u->close_data = data;
  if (u->loader)
    return; /* finish() frees u when the read in flight completes */
  set_free(&u->set);
  free(u->dir);
  free(u);
  if (cb)
    cb(data);
}

void api_ui_metrics(const api_ui_t *u, dibba_buf_t *out) {
  if (u == NULL)
    return;
  dibba_buf_printf(out,
                   "# HELP dibba_ui_files Dashboard files held in memory.\n"
                   "# TYPE dibba_ui_files gauge\n"
                   "dibba_ui_files %zu\n"
                   "# HELP dibba_ui_bytes Bytes of dashboard files held in memory.\n"
                   "# TYPE dibba_ui_bytes gauge\n"
                   "dibba_ui_bytes %zu\n"
                   "# HELP dibba_ui_loads_total Dashboard file sets loaded (start-up and SIGHUP).\n"
                   "# TYPE dibba_ui_loads_total counter\n"
                   "dibba_ui_loads_total %llu\n"
                   "# HELP dibba_ui_load_errors_total Dashboard loads that failed and kept the previous set.\n"
                   "# TYPE dibba_ui_load_errors_total counter\n"
                   "dibba_ui_load_errors_total %llu\n",
                   u->set.n, u->set.bytes, (unsigned long long)u->reloads, (unsigned long long)u->reload_errors);
}
