/* SPDX-License-Identifier: Apache-2.0 */
/* Percent-decoding, query strings and application/x-www-form-urlencoded bodies. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "dibba/alloc.h"
#include "dibba/http.h"

#define FORM_MAX_PAIRS 256

static int hexval(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

int dibba_http_urldecode(const char *src, size_t len, int plus_space, char **out, size_t *outlen) {
  char *d = dibba_xmalloc(len + 1);
  size_t o = 0;
  int rc = 0;
  for (size_t i = 0; i < len; i++) {
    char c = src[i];
    if (c == '%') {
      int hi, lo;
      if (len - i < 3) {
        rc = -EINVAL;
        goto fail;
      }
      hi = hexval(src[i + 1]);
      lo = hexval(src[i + 2]);
      if (hi < 0 || lo < 0) {
        rc = -EINVAL;
        goto fail;
      }
      c = (char)(hi * 16 + lo);
      i += 2;
    } else if (c == '+' && plus_space) {
      c = ' ';
    }
    if (c == '\0') {
      rc = -EINVAL;
      goto fail;
    }
    d[o++] = c;
  }
  d[o] = '\0';
  *out = d;
  if (outlen)
    *outlen = o;
  return 0;
fail:
  free(d);
  *out = NULL;
  return rc;
}

int dibba_http_parse_form(const char *src, size_t len, size_t max_bytes, json_t **out) {
  json_t *o = NULL;
  size_t pairs = 0;
  int rc = 0;
  *out = NULL;
  if (len > max_bytes)
    return -E2BIG;
  o = json_object();
  const char *p = src, *end = src + len;
  while (p < end) {
    const char *amp = memchr(p, '&', (size_t)(end - p));
    const char *e = amp ? amp : end;
    if (e > p) {
      if (++pairs > FORM_MAX_PAIRS) {
        rc = -E2BIG;
        goto fail;
      }
      const char *eq = memchr(p, '=', (size_t)(e - p));
      const char *ke = eq ? eq : e;
      char *k = NULL, *v = NULL;
      size_t kl, vl;
      if (dibba_http_urldecode(p, (size_t)(ke - p), 1, &k, &kl) < 0 ||
          dibba_http_urldecode(eq ? eq + 1 : e, eq ? (size_t)(e - eq - 1) : 0, 1, &v, &vl) < 0) {
        free(k);
        rc = -EINVAL;
        goto fail;
      }
      json_t *js = json_stringn(v, vl);
      if (js == NULL) { /* not UTF-8 */
        free(k);
        free(v);
        rc = -EINVAL;
        goto fail;
      }
      if (kl > 0 && json_object_get(o, k) == NULL)
        json_object_set_new(o, k, js);
      else
        json_decref(js);
      free(k);
      free(v);
    }
    p = e + 1;
  }
  *out = o;
  return 0;
fail:
  json_decref(o);
  return rc;
}
