/* SPDX-License-Identifier: Apache-2.0 */
/* Manifests for apply and instances create: JSON as is, YAML (libyaml events) turned into the same JSON. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <yaml.h>

#include "dibba/alloc.h"
#include "dibba/buf.h"
#include "ctl.h"

#define YAML_DEPTH_MAX 64
#define YAML_NODES_MAX 100000

static int read_all(const char *path, dibba_buf_t *b) {
  int fd = strcmp(path, "-") == 0 ? STDIN_FILENO : open(path, O_RDONLY | O_CLOEXEC);
  int rc = 0;
  if (fd < 0)
    return ctl_fail(CTL_EFAIL, "cannot open %s: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
    rc = ctl_fail(CTL_EFAIL, "%s is a directory", path);
    goto out;
  }
  for (;;) {
    char chunk[65536];
    ssize_t n = read(fd, chunk, sizeof chunk);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      rc = ctl_fail(CTL_EFAIL, "cannot read %s: %s", path, strerror(errno));
      goto out;
    }
    if (n == 0)
      break;
    if (dibba_buf_add(b, chunk, (size_t)n) < 0) {
      rc = ctl_fail(CTL_EINVALID, "%s is larger than %u bytes", path, CTL_MANIFEST_MAX);
      goto out;
    }
  }
out:
  if (fd != STDIN_FILENO)
    close(fd);
  return rc;
}

/* ---- YAML ---- */

typedef struct yconv_s {
  yaml_parser_t p;
  const char *name;
  size_t nodes;
  int rc;
} yconv_t;

static int yfail(yconv_t *y, const yaml_mark_t *m, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int yfail(yconv_t *y, const yaml_mark_t *m, const char *fmt, ...) {
  char msg[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  y->rc = ctl_fail(CTL_EINVALID, "%s:%zu:%zu: %s", y->name, m->line + 1, m->column + 1, msg);
  return -1;
}

static int next_event(yconv_t *y, yaml_event_t *ev) {
  if (!yaml_parser_parse(&y->p, ev)) {
    const yaml_mark_t *m = y->p.problem_mark.line || y->p.problem_mark.column ? &y->p.problem_mark : &y->p.context_mark;
    char msg[256];
    snprintf(msg, sizeof msg, "%s%s%s", y->p.problem ? y->p.problem : "syntax error", y->p.context ? " " : "",
             y->p.context ? y->p.context : "");
    y->rc = ctl_fail(CTL_EINVALID, "%s:%zu:%zu: %s", y->name, m->line + 1, m->column + 1, msg);
    return -1;
  }
  return 0;
}

static int all_in(const char *s, const char *set) { return s[0] && strspn(s, set) == strlen(s); }

/* A plain scalar under the YAML 1.2 core schema: null, bool, int, float, else string. */
static json_t *resolve_plain(yconv_t *y, const yaml_event_t *ev, const char *s, size_t n) {
  if (n == 0 || strcmp(s, "~") == 0 || strcmp(s, "null") == 0 || strcmp(s, "Null") == 0 || strcmp(s, "NULL") == 0)
    return json_null();
  if (strcmp(s, "true") == 0 || strcmp(s, "True") == 0 || strcmp(s, "TRUE") == 0)
    return json_true();
  if (strcmp(s, "false") == 0 || strcmp(s, "False") == 0 || strcmp(s, "FALSE") == 0)
    return json_false();
  const char *d = s + (s[0] == '-' || s[0] == '+');
  int base = 0;
  const char *digits = NULL;
  if (all_in(d, "0123456789"))
    base = 10, digits = d;
  else if (s[0] == '0' && s[1] == 'o' && all_in(s + 2, "01234567"))
    base = 8, digits = s + 2;
  else if (s[0] == '0' && s[1] == 'x' && all_in(s + 2, "0123456789abcdefABCDEF"))
    base = 16, digits = s + 2;
  if (base) {
    errno = 0;
    char *end;
    long long v = strtoll(base == 10 ? s : digits, &end, base);
    if (errno == ERANGE || *end) {
      yfail(y, &ev->start_mark, "integer %s is out of range", s);
      return NULL;
    }
    return json_integer(v);
  }
  if (strcmp(d, ".inf") == 0 || strcmp(d, ".Inf") == 0 || strcmp(d, ".INF") == 0 || strcmp(s, ".nan") == 0 ||
      strcmp(s, ".NaN") == 0 || strcmp(s, ".NAN") == 0) {
    yfail(y, &ev->start_mark, "%s cannot be represented in JSON", s);
    return NULL;
  }
  /* [-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)? */
  const char *q = d;
  size_t ip = strspn(q, "0123456789");
  q += ip;
  size_t fp = 0;
  if (*q == '.') {
    q++;
    fp = strspn(q, "0123456789");
    q += fp;
  }
  int ok = ip + fp > 0;
  if (ok && (*q == 'e' || *q == 'E')) {
    q++;
    q += *q == '-' || *q == '+';
    size_t ep = strspn(q, "0123456789");
    ok = ep > 0;
    q += ep;
  }
  if (ok && *q == '\0') {
    double v = strtod(s, NULL);
    if (!isfinite(v)) {
      yfail(y, &ev->start_mark, "number %s is out of range", s);
      return NULL;
    }
    return json_real(v);
  }
  return json_stringn(s, n);
}

static json_t *scalar(yconv_t *y, const yaml_event_t *ev) {
  const char *s = (const char *)ev->data.scalar.value;
  size_t n = ev->data.scalar.length;
  const char *tag = (const char *)ev->data.scalar.tag;
  if (memchr(s, '\0', n)) {
    yfail(y, &ev->start_mark, "%s", "a NUL character in a scalar");
    return NULL;
  }
  if (tag) {
    if (strcmp(tag, YAML_STR_TAG) == 0)
      return json_stringn(s, n);
    if (strcmp(tag, YAML_NULL_TAG) == 0 || strcmp(tag, YAML_BOOL_TAG) == 0 || strcmp(tag, YAML_INT_TAG) == 0 ||
        strcmp(tag, YAML_FLOAT_TAG) == 0) {
      json_t *v = resolve_plain(y, ev, s, n);
      int want = strcmp(tag, YAML_NULL_TAG) == 0   ? JSON_NULL
                 : strcmp(tag, YAML_BOOL_TAG) == 0 ? JSON_TRUE
                 : strcmp(tag, YAML_INT_TAG) == 0  ? JSON_INTEGER
                                                   : JSON_REAL;
      int got = v ? (int)json_typeof(v) : -1;
      if (want == JSON_TRUE && got == JSON_FALSE)
        got = JSON_TRUE;
      if (want == JSON_REAL && got == JSON_INTEGER) {
        json_t *r = json_real((double)json_integer_value(v));
        json_decref(v);
        return r;
      }
      if (v && got != want) {
        json_decref(v);
        yfail(y, &ev->start_mark, "the value does not match its tag %s", tag);
        return NULL;
      }
      return v;
    }
    if (strcmp(tag, "!") != 0) {
      yfail(y, &ev->start_mark, "unsupported tag %s", tag);
      return NULL;
    }
    return json_stringn(s, n);
  }
  if (ev->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
    return json_stringn(s, n);
  return resolve_plain(y, ev, s, n);
}

static json_t *node(yconv_t *y, yaml_event_t *ev, int depth);

/* Parse the next node (reads its first event). */
static json_t *next_node(yconv_t *y, int depth, int *end, yaml_event_type_t end_type) {
  yaml_event_t ev;
  *end = 0;
  if (next_event(y, &ev) < 0)
    return NULL;
  if (ev.type == end_type) {
    *end = 1;
    yaml_event_delete(&ev);
    return NULL;
  }
  json_t *v = node(y, &ev, depth);
  yaml_event_delete(&ev);
  return v;
}

static json_t *node(yconv_t *y, yaml_event_t *ev, int depth) {
  if (++y->nodes > YAML_NODES_MAX) {
    yfail(y, &ev->start_mark, "more than %d nodes", YAML_NODES_MAX);
    return NULL;
  }
  if (depth > YAML_DEPTH_MAX) {
    yfail(y, &ev->start_mark, "nested deeper than %d levels", YAML_DEPTH_MAX);
    return NULL;
  }
  int end;
  switch (ev->type) {
  case YAML_ALIAS_EVENT:
    yfail(y, &ev->start_mark, "aliases (*%s) are not supported", (char *)ev->data.alias.anchor);
    return NULL;
  case YAML_SCALAR_EVENT: return scalar(y, ev);
  case YAML_SEQUENCE_START_EVENT: {
    json_t *a = json_array();
    for (;;) {
      json_t *v = next_node(y, depth + 1, &end, YAML_SEQUENCE_END_EVENT);
      if (end)
        return a;
      if (v == NULL) {
        json_decref(a);
        return NULL;
      }
      json_array_append_new(a, v);
    }
  }
  case YAML_MAPPING_START_EVENT: {
    json_t *o = json_object();
    for (;;) {
      yaml_event_t kev;
      if (next_event(y, &kev) < 0)
        goto fail;
      if (kev.type == YAML_MAPPING_END_EVENT) {
        yaml_event_delete(&kev);
        return o;
      }
      if (kev.type != YAML_SCALAR_EVENT) {
        yfail(y, &kev.start_mark, "%s",
              kev.type == YAML_ALIAS_EVENT ? "aliases are not supported" : "a mapping key must be a scalar");
        yaml_event_delete(&kev);
        goto fail;
      }
      char *key = dibba_xstrndup((const char *)kev.data.scalar.value, kev.data.scalar.length);
      yaml_mark_t km = kev.start_mark;
      int merge = kev.data.scalar.style == YAML_PLAIN_SCALAR_STYLE && strcmp(key, "<<") == 0;
      yaml_event_delete(&kev);
      if (merge) {
        free(key);
        yfail(y, &km, "%s", "merge keys (<<) are not supported");
        goto fail;
      }
      if (json_object_get(o, key)) {
        yfail(y, &km, "duplicate key \"%s\"", key);
        free(key);
        goto fail;
      }
      json_t *v = next_node(y, depth + 1, &end, YAML_MAPPING_END_EVENT);
      if (v == NULL) {
        free(key);
        goto fail;
      }
      json_object_set_new(o, key, v);
      free(key);
    }
  fail:
    json_decref(o);
    return NULL;
  }
  default: yfail(y, &ev->start_mark, "%s", "unexpected YAML event"); return NULL;
  }
}

static int parse_yaml(const char *name, const char *text, size_t len, json_t **out) {
  yconv_t y = {.name = name};
  yaml_event_t ev;
  json_t *doc = NULL;
  int docs = 0;
  *out = NULL;
  if (!yaml_parser_initialize(&y.p))
    dibba_oom(sizeof y.p);
  yaml_parser_set_input_string(&y.p, (const unsigned char *)text, len);
  for (;;) {
    if (next_event(&y, &ev) < 0)
      goto out;
    yaml_event_type_t t = ev.type;
    yaml_mark_t m = ev.start_mark;
    if (t == YAML_STREAM_END_EVENT) {
      yaml_event_delete(&ev);
      break;
    }
    yaml_event_delete(&ev);
    if (t != YAML_DOCUMENT_START_EVENT)
      continue;
    if (++docs > 1) {
      yfail(&y, &m, "%s", "more than one document (---): apply one object per file");
      goto out;
    }
    int end;
    doc = next_node(&y, 0, &end, YAML_DOCUMENT_END_EVENT);
    if (doc == NULL && !end)
      goto out;
    if (end)
      continue;
    if (next_event(&y, &ev) < 0)
      goto out;
    yaml_event_delete(&ev); /* DOCUMENT-END */
  }
  if (doc == NULL) {
    y.rc = ctl_fail(CTL_EINVALID, "%s: empty document", name);
    goto out;
  }
  *out = doc;
  doc = NULL;
out:
  json_decref(doc);
  yaml_parser_delete(&y.p);
  return y.rc;
}

int ctl_manifest_parse(const char *name, const char *text, size_t len, int json, json_t **out) {
  *out = NULL;
  if (json) {
    json_error_t je;
    json_t *j = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (j == NULL)
      return ctl_fail(CTL_EINVALID, "%s:%d:%d: %s", name, je.line, je.column, je.text);
    *out = j;
    return 0;
  }
  return parse_yaml(name, text, len, out);
}

int ctl_manifest_load(const char *path, json_t **out) {
  dibba_buf_t b;
  const char *name = strcmp(path, "-") == 0 ? "<stdin>" : path;
  dibba_buf_init(&b, CTL_MANIFEST_MAX);
  int rc = read_all(path, &b);
  if (rc == 0) {
    size_t n = strlen(path);
    int json = n > 5 && strcmp(path + n - 5, ".json") == 0;
    if (!json && strcmp(path, "-") == 0) {
      size_t i = strspn(b.data ? b.data : "", " \t\r\n");
      json = b.data && b.data[i] == '{';
    }
    rc = ctl_manifest_parse(name, b.data ? b.data : "", b.len, json, out);
  }
  dibba_buf_free(&b);
  return rc;
}
