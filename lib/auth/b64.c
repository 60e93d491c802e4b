/* SPDX-License-Identifier: Apache-2.0 */
/* Strict, unpadded base64url for JWT segments and password hashes. */
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "dibba/alloc.h"

#include "auth-int.h"

static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

char *dibba__b64url_encode(const void *p, size_t n) {
  const unsigned char *in = p;
  if (n > (SIZE_MAX - 8) / 4 * 3)
    dibba_oom(n);
  char *out = dibba_xmalloc(n / 3 * 4 + 5);
  size_t o = 0, i = 0;
  for (; i + 3 <= n; i += 3) {
    uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
    out[o++] = alphabet[v >> 18 & 63];
    out[o++] = alphabet[v >> 12 & 63];
    out[o++] = alphabet[v >> 6 & 63];
    out[o++] = alphabet[v & 63];
  }
  if (n - i == 1) {
    uint32_t v = (uint32_t)in[i] << 16;
    out[o++] = alphabet[v >> 18 & 63];
    out[o++] = alphabet[v >> 12 & 63];
  } else if (n - i == 2) {
    uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
    out[o++] = alphabet[v >> 18 & 63];
    out[o++] = alphabet[v >> 12 & 63];
    out[o++] = alphabet[v >> 6 & 63];
  }
  out[o] = '\0';
  return out;
}

static int value(char c) {
  if (c >= 'A' && c <= 'Z')
    return c - 'A';
  if (c >= 'a' && c <= 'z')
    return c - 'a' + 26;
  if (c >= '0' && c <= '9')
    return c - '0' + 52;
  if (c == '-')
    return 62;
  if (c == '_')
    return 63;
  return -1;
}

long dibba__b64url_decode(const char *s, size_t n, unsigned char *out, size_t max) {
  size_t o = 0;
  uint32_t acc = 0;
  int bits = 0;
  if (n % 4 == 1)
    return -EINVAL;
  for (size_t i = 0; i < n; i++) {
    int v = value(s[i]);
    if (v < 0)
      return -EINVAL;
    acc = acc << 6 | (uint32_t)v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      if (o >= max)
        return -E2BIG;
      out[o++] = (unsigned char)(acc >> bits & 0xff);
    }
  }
  /* Leftover bits must be zero, so each byte string has exactly one encoding. */
  if (bits > 0 && (acc & ((1u << bits) - 1)) != 0)
    return -EINVAL;
  return (long)o;
}
