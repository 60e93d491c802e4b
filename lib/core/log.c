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
#include "dibba/log.h"
#include "dibba/time.h"

#define LOG_MSG_MAX 4096

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

void dibba_log(dibba_log_level_t level, const char *component, json_t *fields, const char *fmt, ...) {
  if (!dibba_log_enabled(level)) {
    json_decref(fields);
    return;
  }
  char msg[LOG_MSG_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);

  char ts[40];
  dibba_time_format_ms(dibba_now_ms(), ts, sizeof ts);
  json_t *o = json_object();
  json_object_set_new(o, "ts", json_string(ts));
  json_object_set_new(o, "level", json_string(level_names[level]));
  json_object_set_new(o, "component", json_string(component ? component : "-"));
  json_object_set_new(o, "msg", json_stringn(msg, strlen(msg)));
  if (json_is_object(fields)) {
    const char *k;
    json_t *v;
    json_object_foreach(fields, k, v) {
      if (strcmp(k, "ts") && strcmp(k, "level") && strcmp(k, "component") && strcmp(k, "msg"))
        json_object_set(o, k, v);
    }
  }
  json_decref(fields);
  char *line = json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII);
  json_decref(o);
  if (line == NULL)
    return;
  size_t n = strlen(line);
  line[n] = '\n'; /* json_dumps leaves room for its NUL; we replace it and write n + 1 bytes */
  ssize_t w;
  do
    w = write(logger.fd, line, n + 1);
  while (w < 0 && errno == EINTR);
  free(line);
}
