/* SPDX-License-Identifier: Apache-2.0 */
/* Structured logging: one JSON object per line {ts, level, component, msg, ...fields}. */
#ifndef DIBBA_LOG_H
#define DIBBA_LOG_H

#include <jansson.h>

typedef enum {
  DIBBA_LOG_DEBUG = 0,
  DIBBA_LOG_INFO = 1,
  DIBBA_LOG_WARN = 2,
  DIBBA_LOG_ERROR = 3,
} dibba_log_level_t;

/* Parse "debug", "info", "warn"/"warning", "error". Returns 0 or -EINVAL. */
int dibba_log_level_parse(const char *s, dibba_log_level_t *out);
/* Set the threshold and sink. path NULL, "" or "-" means stderr. Returns 0, -EINVAL for a bad level, or
 * a negative errno if the file cannot be opened (the previous sink stays). */
int dibba_log_open(const char *level, const char *path);
/* Open the logger from a config "log" object ({"level": ..., "file": ...}; NULL or missing keys keep the
 * defaults). For plugins, which link their own copy of this logger: they call it from init with the "log"
 * section the worker passes them, so their lines go where the daemon's go. Same errors as dibba_log_open. */
int dibba_log_open_json(const json_t *log);
/* Reopen the file sink (after rotation); no-op for stderr. */
int dibba_log_reopen(void);
/* Close the file sink and return to stderr. Safe to call twice. */
void dibba_log_close(void);
/* 1 if a message at this level would be written. */
int dibba_log_enabled(dibba_log_level_t level);
/* Write one line. fields (may be NULL) must be a JSON object; it is consumed (reference stolen). Fields named
 * ts, level, component or msg are ignored. Lines are written with one write(2), so concurrent processes
 * sharing a file do not interleave. */
void dibba_log(dibba_log_level_t level, const char *component, json_t *fields, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define dibba_log_debug(comp, fields, ...) dibba_log(DIBBA_LOG_DEBUG, comp, fields, __VA_ARGS__)
#define dibba_log_info(comp, fields, ...) dibba_log(DIBBA_LOG_INFO, comp, fields, __VA_ARGS__)
#define dibba_log_warn(comp, fields, ...) dibba_log(DIBBA_LOG_WARN, comp, fields, __VA_ARGS__)
#define dibba_log_error(comp, fields, ...) dibba_log(DIBBA_LOG_ERROR, comp, fields, __VA_ARGS__)

#endif
