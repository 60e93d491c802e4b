/* SPDX-License-Identifier: Apache-2.0 */
/* A growable byte buffer with a hard cap, so no input can grow memory without bound. */
#ifndef DIBBA_BUF_H
#define DIBBA_BUF_H

#include <stdarg.h>
#include <stddef.h>

typedef struct dibba_buf_s {
  char *data; /* always NUL-terminated past len when non-NULL */
  size_t len;
  size_t alloc;
  size_t cap; /* most bytes the buffer may hold; 0 means unlimited */
} dibba_buf_t;

/* Initialise an empty buffer that may hold at most cap bytes (0: no cap). */
void dibba_buf_init(dibba_buf_t *b, size_t cap);
/* Release the storage; safe to call twice. */
void dibba_buf_free(dibba_buf_t *b);
/* Drop the contents and keep the storage. */
void dibba_buf_reset(dibba_buf_t *b);
/* Make room for n more bytes, so that appending them allocates nothing. Returns 0 or -E2BIG (past the cap). */
int dibba_buf_reserve(dibba_buf_t *b, size_t n);
/* Append n bytes. Returns 0, or -E2BIG (buffer unchanged) if the cap would be passed. */
int dibba_buf_add(dibba_buf_t *b, const void *p, size_t n);
/* Append a NUL-terminated string. Same errors as dibba_buf_add. */
int dibba_buf_adds(dibba_buf_t *b, const char *s);
/* Append formatted text. Same errors as dibba_buf_add. */
int dibba_buf_printf(dibba_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int dibba_buf_vprintf(dibba_buf_t *b, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));
/* Remove the first n bytes (n > len removes all). */
void dibba_buf_consume(dibba_buf_t *b, size_t n);
/* Hand the storage to the caller (who frees it) and reset the buffer. May return NULL when empty. */
char *dibba_buf_steal(dibba_buf_t *b, size_t *len);

#endif
