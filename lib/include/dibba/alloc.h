/* SPDX-License-Identifier: Apache-2.0 */
/* Dibba's out-of-memory policy: allocation failure aborts with a message, so no caller handles NULL. */
#ifndef DIBBA_ALLOC_H
#define DIBBA_ALLOC_H

#include <stddef.h>

/* Allocate n bytes (n == 0 allocates 1). Never returns NULL: on failure logs to stderr and aborts. */
void *dibba_xmalloc(size_t n);
/* Zeroed allocation of nmemb * size bytes; aborts on overflow or failure. */
void *dibba_xcalloc(size_t nmemb, size_t size);
/* Resize p to n bytes; aborts on failure. */
void *dibba_xrealloc(void *p, size_t n);
/* Resize p to nmemb * size bytes; aborts on overflow or failure. */
void *dibba_xreallocarray(void *p, size_t nmemb, size_t size);
/* Copy a NUL-terminated string (NULL gives NULL). */
char *dibba_xstrdup(const char *s);
/* Copy at most n bytes of s and terminate the copy. */
char *dibba_xstrndup(const char *s, size_t n);
/* printf into a new string. */
char *dibba_xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Report an impossible allocation and abort; used by the x* helpers and by libraries' hooks. */
_Noreturn void dibba_oom(size_t n);

/* Install the OOM policy into jansson and protobuf-c allocators. Call once at start-up. */
void dibba_alloc_init(void);

#endif
