/* SPDX-License-Identifier: Apache-2.0 */
/* JSON-lines logger. Lines are small and bounded, and are written with one write(2) to stderr or an
 * O_APPEND file, as Redis and h2o log: a blocking write of a few hundred bytes is cheaper than a queue. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "dibba/alloc.h"
#include "dibba/buf.h"
#include "dibba/log.h"
#include "dibba/time.h"

#define LOG_MSG_MAX 4096
#define LOG_LINE_MAX (64 * 1024)
#define LOG_LINE_TYPICAL 480 /* an access log line fits: one malloc, no realloc */

static struct {
  dibba_log_level_t level;
  int fd;
  char *path;
} logger = {DIBBA_LOG_INFO, STDERR_FILENO, NULL};

static const char *level_names[] = {"debug", "info", "warn", "error"};

int dibba_log_level_parse(const char *s, dibba_log_level_t *out) {
  if (s == NULL)
    return -EINVAL;
  for (int i = 0; i < 4; i++) {
    if (strcasecmp(s, level_names[i]) == 0) {
      *out = (dibba_log_level_t)i;
      return 0;
    }
  }
  if (strcasecmp(s, "warning") == 0) {
    *out = DIBBA_LOG_WARN;
    return 0;
  }
  return -EINVAL;
}

static int open_sink(const char *path) {
  int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
  return fd < 0 ? -errno : fd;
}

int dibba_log_open(const char *level, const char *path) {
  dibba_log_level_t lv = logger.level;
  if (level && *level && dibba_log_level_parse(level, &lv) < 0)
    return -EINVAL;
  int fd = STDERR_FILENO;
  if (path && *path && strcmp(path, "-") != 0) {
    fd = open_sink(path);
    if (fd < 0)
      return fd;
  }
  dibba_log_close();
  logger.level = lv;
  logger.fd = fd;
  logger.path = fd == STDERR_FILENO ? NULL : dibba_xstrdup(path);
  return 0;
}

int dibba_log_open_json(const json_t *log) {
  if (!json_is_object(log))
    return 0;
  const char *level = json_string_value(json_object_get(log, "level"));
  const char *file = json_string_value(json_object_get(log, "file"));
  return dibba_log_open(level, file);
}

int dibba_log_reopen(void) {
  if (logger.path == NULL)
    return 0;
  int fd = open_sink(logger.path);
  if (fd < 0)
    return fd;
  close(logger.fd);
  logger.fd = fd;
  return 0;
}

void dibba_log_close(void) {
  if (logger.fd != STDERR_FILENO)
    close(logger.fd);
  logger.fd = STDERR_FILENO;
  free(logger.path);
  logger.path = NULL;
}

int dibba_log_enabled(dibba_log_level_t level) { return level >= logger.level; }

/* JSON string body escaping (RFC 8259) into b; non-ASCII bytes pass through (the caller's text is UTF-8). */
static void put_escaped(dibba_buf_t *b, const char *p, size_t n) {
  static const char hex[] = "0123456789abcdef";
  size_t run = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)p[i];
    if (c >= 0x20 && c != '"' && c != '\\')
      continue;
    dibba_buf_add(b, p + run, i - run);
    run = i + 1;
    char esc[6] = {'\\', 0, 0, 0, 0, 0};
    size_t elen = 2;
    switch (c) {
    case '"': esc[1] = '"'; break;
    case '\\': esc[1] = '\\'; break;
    case '\n': esc[1] = 'n'; break;
    case '\r': esc[1] = 'r'; break;
    case '\t': esc[1] = 't'; break;
    default:
      esc[1] = 'u';
      esc[2] = '0';
      esc[3] = '0';
      esc[4] = hex[c >> 4];
      esc[5] = hex[c & 15];
      elen = 6;
    }
    dibba_buf_add(b, esc, elen);
  }
  dibba_buf_add(b, p + run, n - run);
}

static void put_string(dibba_buf_t *b, const char *p, size_t n) {
  dibba_buf_add(b, "\"", 1);
  put_escaped(b, p, n);
  dibba_buf_add(b, "\"", 1);
}

/* Scalars are written directly (the hot path: access logs); containers go through jansson. */
static void put_value(dibba_buf_t *b, json_t *v) {
  char num[64];
  switch (json_typeof(v)) {
  case JSON_STRING: put_string(b, json_string_value(v), json_string_length(v)); break;
  case JSON_INTEGER:
    snprintf(num, sizeof num, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    dibba_buf_adds(b, num);
    break;
  case JSON_TRUE: dibba_buf_adds(b, "true"); break;
  case JSON_FALSE: dibba_buf_adds(b, "false"); break;
  case JSON_NULL: dibba_buf_adds(b, "null"); break;
  default: {
    char *t = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    dibba_buf_adds(b, t ? t : "null");
    free(t);
  }
  }
}

/* The timestamp's seconds part is formatted once per second. */
static void put_ts(dibba_buf_t *b) {
  static int64_t cached_sec = -1;
  static char cached[32];
  int64_t ms = dibba_now_ms();
  if (ms / 1000 != cached_sec) {
    char full[40];
    dibba_time_format_ms(ms, full, sizeof full);
    memcpy(cached, full, 20); /* "YYYY-MM-DDTHH:MM:SS." */
    cached[20] = '\0';
    cached_sec = ms / 1000;
  }
  char tail[8];
  snprintf(tail, sizeof tail, "%03dZ", (int)(ms % 1000));
  dibba_buf_add(b, cached, 20);
  dibba_buf_adds(b, tail);
}

void dibba_log(dibba_log_level_t level, const char *component, json_t *fields, const char *fmt, ...) {
  if (!dibba_log_enabled(level)) {
    json_decref(fields);
    return;
  }
  char msg[LOG_MSG_MAX];
  va_list ap;
  va_start(ap, fmt);
  int mlen = vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (mlen < 0)
    mlen = 0;
  if ((size_t)mlen >= sizeof msg)
    mlen = sizeof msg - 1;

  /* The line belongs to this call. A buffer kept in a thread-local would have no owner to free it: it is lost
   * when its thread exits, and when a plugin that links lib/ statically (with its own copy of this file) is
   * unloaded, its TLS block goes and the buffer with it. One malloc per line costs little next to write(2). */
  dibba_buf_t b;
  dibba_buf_init(&b, 0);
  dibba_buf_reserve(&b, LOG_LINE_TYPICAL);

  dibba_buf_adds(&b, "{\"ts\":\"");
  put_ts(&b);
  dibba_buf_adds(&b, "\",\"level\":\"");
  dibba_buf_adds(&b, level_names[level]);
  dibba_buf_adds(&b, "\",\"component\":");
  const char *comp = component ? component : "-";
  put_string(&b, comp, strlen(comp));
  dibba_buf_adds(&b, ",\"msg\":");
  put_string(&b, msg, (size_t)mlen);
  if (json_is_object(fields)) {
    const char *k;
    json_t *v;
    json_object_foreach(fields, k, v) {
      if (!strcmp(k, "ts") || !strcmp(k, "level") || !strcmp(k, "component") || !strcmp(k, "msg"))
        continue;
      size_t before = b.len;
      dibba_buf_add(&b, ",", 1);
      put_string(&b, k, strlen(k));
      dibba_buf_add(&b, ":", 1);
      put_value(&b, v);
      if (b.len > LOG_LINE_MAX) { /* drop the field that made the line too long, and say so */
        b.len = before;
        b.data[b.len] = '\0';
        dibba_buf_adds(&b, ",\"truncated\":true");
        break;
      }
    }
  }
  json_decref(fields);
  dibba_buf_adds(&b, "}\n");
  ssize_t w;
  do
    w = write(logger.fd, b.data, b.len);
  while (w < 0 && errno == EINTR);
  dibba_buf_free(&b);
}
