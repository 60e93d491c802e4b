/* SPDX-License-Identifier: Apache-2.0 */
/* gRPC message framing (length-prefixed messages) and status handling, independent of the transport. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "dibba/alloc.h"
#include "dibba/error.h"
#include "dibba/grpc.h"

static const char *const code_names[] = {
    "OK",        "CANCELLED",       "UNKNOWN",           "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED",
    "NOT_FOUND", "ALREADY_EXISTS",  "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED",   "OUT_OF_RANGE",    "UNIMPLEMENTED",     "INTERNAL",           "UNAVAILABLE",
    "DATA_LOSS", "UNAUTHENTICATED",
};

const char *dibba_grpc_code_name(dibba_grpc_code_t code) {
  if ((unsigned)code < sizeof code_names / sizeof code_names[0])
    return code_names[code];
  return "UNKNOWN";
}

int dibba_grpc_code_to_errno(dibba_grpc_code_t code) {
  switch (code) {
  case DIBBA_GRPC_OK: return 0;
  case DIBBA_GRPC_CANCELLED: return UV_ECANCELED;
  case DIBBA_GRPC_INVALID_ARGUMENT: return -EINVAL;
  case DIBBA_GRPC_OUT_OF_RANGE: return -EINVAL;
  case DIBBA_GRPC_DEADLINE_EXCEEDED: return UV_ETIMEDOUT;
  case DIBBA_GRPC_NOT_FOUND: return -ENOENT;
  case DIBBA_GRPC_ALREADY_EXISTS: return -EEXIST;
  case DIBBA_GRPC_PERMISSION_DENIED: return -EACCES;
  case DIBBA_GRPC_UNAUTHENTICATED: return -EACCES;
  case DIBBA_GRPC_RESOURCE_EXHAUSTED: return -ENOSPC;
  case DIBBA_GRPC_FAILED_PRECONDITION: return -EBUSY;
  case DIBBA_GRPC_ABORTED: return -EAGAIN;
  case DIBBA_GRPC_UNIMPLEMENTED: return -ENOSYS;
  case DIBBA_GRPC_UNAVAILABLE: return UV_ECONNREFUSED;
  case DIBBA_GRPC_UNKNOWN:
  case DIBBA_GRPC_INTERNAL:
  case DIBBA_GRPC_DATA_LOSS:
  default: return DIBBA_EPROTO;
  }
}

void dibba_grpc_status_set(dibba_grpc_status_t *st, dibba_grpc_code_t code, const char *message) {
  free(st->message);
  st->code = code;
  st->message = dibba_xstrdup(message ? message : "");
}

void dibba_grpc_status_free(dibba_grpc_status_t *st) {
  free(st->message);
  st->message = NULL;
}

static int hexval(int ch) {
  if (ch >= '0' && ch <= '9')
    return ch - '0';
  if (ch >= 'a' && ch <= 'f')
    return ch - 'a' + 10;
  if (ch >= 'A' && ch <= 'F')
    return ch - 'A' + 10;
  return -1;
}

char *dibba_grpc_percent_decode(const char *src, size_t max) {
  size_t n = strlen(src);
  if (n > max)
    n = max;
  char *out = dibba_xmalloc(n + 1);
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    int hi, lo;
    if (src[i] == '%' && i + 2 < n && (hi = hexval((unsigned char)src[i + 1])) >= 0 &&
        (lo = hexval((unsigned char)src[i + 2])) >= 0) {
      out[o++] = (char)(hi << 4 | lo);
      i += 2;
    } else {
      out[o++] = src[i];
    }
  }
  out[o] = '\0';
  return out;
}

static dibba_grpc_code_t http_to_grpc(long http) {
  switch (http) {
  case 400: return DIBBA_GRPC_INTERNAL;
  case 401: return DIBBA_GRPC_UNAUTHENTICATED;
  case 403: return DIBBA_GRPC_PERMISSION_DENIED;
  case 404: return DIBBA_GRPC_UNIMPLEMENTED;
  case 429:
  case 502:
  case 503:
  case 504: return DIBBA_GRPC_UNAVAILABLE;
  default: return DIBBA_GRPC_UNKNOWN;
  }
}

void dibba_grpc_status_from_headers(dibba_grpc_status_t *out, const char *http_status, const char *grpc_status,
                                    const char *grpc_message) {
  char *end = NULL;
  long http = http_status ? strtol(http_status, &end, 10) : 0;
  if (!http_status || *end || http != 200) {
    char msg[64];
    snprintf(msg, sizeof msg, "HTTP status %s", http_status ? http_status : "missing");
    dibba_grpc_status_set(out, http_status ? http_to_grpc(http) : DIBBA_GRPC_INTERNAL, msg);
    return;
  }
  if (!grpc_status) {
    dibba_grpc_status_set(out, DIBBA_GRPC_INTERNAL, "response without grpc-status");
    return;
  }
  end = NULL;
  long code = strtol(grpc_status, &end, 10);
  if (!*grpc_status || *end || code < 0 || code > 16) {
    /* An unknown code is UNKNOWN per the spec; garbage is a broken peer. */
    dibba_grpc_status_set(out, (*end || !*grpc_status) ? DIBBA_GRPC_INTERNAL : DIBBA_GRPC_UNKNOWN,
                          "invalid grpc-status");
    return;
  }
  free(out->message);
  out->code = (dibba_grpc_code_t)code;
  out->message = dibba_grpc_percent_decode(grpc_message ? grpc_message : "", DIBBA_GRPC_MAX_STATUS_MESSAGE);
}

int dibba_grpc_frame(dibba_buf_t *out, const ProtobufCMessage *msg, size_t max) {
  size_t n = msg ? protobuf_c_message_get_packed_size(msg) : 0;
  if (n > max || n > UINT32_MAX)
    return -EMSGSIZE;
  uint8_t hdr[5] = {0, (uint8_t)(n >> 24), (uint8_t)(n >> 16), (uint8_t)(n >> 8), (uint8_t)n};
  size_t old = out->len;
  int rc = dibba_buf_add(out, hdr, sizeof hdr);
  if (rc < 0)
    return rc;
  if (n == 0)
    return 0;
  uint8_t *tmp = dibba_xmalloc(n);
  size_t packed = protobuf_c_message_pack(msg, tmp);
  rc = packed == n ? dibba_buf_add(out, tmp, n) : -EMSGSIZE;
  free(tmp);
  if (rc < 0)
    out->len = old;
  return rc;
}

void dibba_grpc_deframer_init(dibba_grpc_deframer_t *d, size_t max) {
  memset(d, 0, sizeof *d);
  d->max = max ? max : DIBBA_GRPC_DEFAULT_MAX_MESSAGE;
}

void dibba_grpc_deframer_free(dibba_grpc_deframer_t *d) {
  free(d->msg);
  d->msg = NULL;
  d->msg_len = d->msg_have = d->hdr_len = 0;
}

int dibba_grpc_deframer_partial(const dibba_grpc_deframer_t *d) { return d->hdr_len > 0; }

int dibba_grpc_deframer_feed(dibba_grpc_deframer_t *d, const uint8_t *p, size_t n, dibba_grpc_deframe_cb cb,
                             void *data) {
  int rc = 0;
  if (d->failed) {
    rc = d->failed;
    goto out;
  }
  while (n > 0) {
    if (d->hdr_len < 5) {
      size_t take = 5 - d->hdr_len < n ? 5 - d->hdr_len : n;
      memcpy(d->hdr + d->hdr_len, p, take);
      d->hdr_len += take;
      p += take;
      n -= take;
      if (d->hdr_len < 5)
        break;
      if (d->hdr[0] != 0) {
        rc = -ENOTSUP; /* compressed (or a bad flag): we never negotiate compression */
        goto fail;
      }
      size_t len = (size_t)d->hdr[1] << 24 | (size_t)d->hdr[2] << 16 | (size_t)d->hdr[3] << 8 | d->hdr[4];
      if (len > d->max) {
        rc = -EMSGSIZE;
        goto fail;
      }
      d->msg_len = len;
      d->msg_have = 0;
      d->msg = len ? dibba_xmalloc(len) : NULL;
    }
    size_t take = d->msg_len - d->msg_have < n ? d->msg_len - d->msg_have : n;
    if (take) {
      memcpy(d->msg + d->msg_have, p, take);
      d->msg_have += take;
      p += take;
      n -= take;
    }
    if (d->msg_have == d->msg_len) {
      uint8_t *m = d->msg;
      size_t mlen = d->msg_len;
      d->msg = NULL;
      d->hdr_len = 0;
      d->msg_len = d->msg_have = 0;
      rc = cb(data, m ? m : (const uint8_t *)"", mlen);
      free(m);
      if (rc)
        goto fail;
    }
  }
  goto out;
fail:
  d->failed = rc;
  dibba_grpc_deframer_free(d);
out:
  return rc;
}
