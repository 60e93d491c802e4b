/* SPDX-License-Identifier: Apache-2.0 */
/* Capped growable buffers (after curl's dynbuf): every length is checked before it is allocated. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dibba/alloc.h"
#include "dibba/buf.h"

void dibba_buf_init(dibba_buf_t *b, size_t cap) {
  b->data = NULL;
  b->len = 0;
  b->alloc = 0;
  b->cap = cap;
}

void dibba_buf_free(dibba_buf_t *b) {
  free(b->data);
  b->data = NULL;
  b->len = 0;
  b->alloc = 0;
}

void dibba_buf_reset(dibba_buf_t *b) {
  b->len = 0;
  if (b->data)
    b->data[0] = '\0';
}

static int reserve(dibba_buf_t *b, size_t n) {
  if (n > SIZE_MAX - b->len - 1)
    return -E2BIG;
  size_t need = b->len + n;
  if (b->cap && need > b->cap)
    return -E2BIG;
  if (need + 1 <= b->alloc)
    return 0;
  size_t a = b->alloc ? b->alloc : 64;
  while (a < need + 1)
    a = a > SIZE_MAX / 2 ? need + 1 : a * 2;
  /* need <= cap here, so cap >= need and cap + 1 cannot wrap unless cap == SIZE_MAX (then need + 1 fits). */
  if (b->cap && b->cap < SIZE_MAX && a > b->cap + 1)
    a = b->cap + 1;
  b->data = dibba_xrealloc(b->data, a);
  b->alloc = a;
  return 0;
}

int dibba_buf_reserve(dibba_buf_t *b, size_t n) { return reserve(b, n); }

int dibba_buf_add(dibba_buf_t *b, const void *p, size_t n) {
  int r = reserve(b, n);
  if (r < 0)
    return r;
  if (n)
    memcpy(b->data + b->len, p, n);
  b->len += n;
  b->data[b->len] = '\0';
  return 0;
}

int dibba_buf_adds(dibba_buf_t *b, const char *s) { return dibba_buf_add(b, s, strlen(s)); }

int dibba_buf_vprintf(dibba_buf_t *b, const char *fmt, va_list ap) {
  va_list ap2;
  va_copy(ap2, ap);
  int n = vsnprintf(NULL, 0, fmt, ap2);
  va_end(ap2);
  if (n < 0)
    return -EINVAL;
  int r = reserve(b, (size_t)n);
  if (r < 0)
    return r;
  vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
  b->len += (size_t)n;
  return 0;
}

int dibba_buf_printf(dibba_buf_t *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int r = dibba_buf_vprintf(b, fmt, ap);
  va_end(ap);
  return r;
}

void dibba_buf_consume(dibba_buf_t *b, size_t n) {
  if (n >= b->len) {
    dibba_buf_reset(b);
    return;
  }
  memmove(b->data, b->data + n, b->len - n);
  b->len -= n;
  b->data[b->len] = '\0';
}

char *dibba_buf_steal(dibba_buf_t *b, size_t *len) {
  char *p = b->data;
  if (len)
    *len = b->len;
  b->data = NULL;
  b->len = 0;
  b->alloc = 0;
  return p;
}
