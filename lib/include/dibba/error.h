/* SPDX-License-Identifier: Apache-2.0 */
/* Error codes: functions return 0 or a negative errno / UV_E* code; these helpers name them. */
#ifndef DIBBA_ERROR_H
#define DIBBA_ERROR_H

#include <stddef.h>

/* Dibba's own codes, below the errno range libuv uses. */
enum {
  DIBBA_EFORGED = -5001,  /* MAC check failed */
  DIBBA_EEXPIRED = -5002, /* envelope or token past its expiry */
  DIBBA_EREPLAY = -5003,  /* task already final */
  DIBBA_EREVOKED = -5004, /* task was revoked */
  DIBBA_ECONFIG = -5005,  /* configuration invalid */
  DIBBA_EPROTO = -5006,   /* peer broke its protocol */
};

/* A static, human-readable name for any code this project returns (errno, UV_E*, DIBBA_E*). */
const char *dibba_strerror(int err);

/* Write "what: reason" into buf (always terminated) and return err, for one-line error reports. */
int dibba_error_set(char *buf, size_t len, int err, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

#endif
