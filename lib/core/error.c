/* SPDX-License-Identifier: Apache-2.0 */
/* Names for error codes, shared by every module. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <uv.h>

#include "dibba/error.h"

const char *dibba_strerror(int err) {
  switch (err) {
  case 0: return "success";
  case DIBBA_EFORGED: return "forged (bad MAC)";
  case DIBBA_EEXPIRED: return "expired";
  case DIBBA_EREPLAY: return "replayed";
  case DIBBA_EREVOKED: return "revoked";
  case DIBBA_ECONFIG: return "invalid configuration";
  case DIBBA_EPROTO: return "protocol error";
  default: return uv_strerror(err);
  }
}

int dibba_error_set(char *buf, size_t len, int err, const char *fmt, ...) {
  if (buf == NULL || len == 0)
    return err;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, len, fmt, ap);
  va_end(ap);
  return err;
}
