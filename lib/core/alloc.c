/* SPDX-License-Identifier: Apache-2.0 */
/* The out-of-memory policy: every allocation either succeeds or aborts the process with a message. */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "dibba/alloc.h"

_Noreturn void dibba_oom(size_t n) {
  fprintf(stderr, "{\"level\":\"fatal\",\"component\":\"core\",\"msg\":\"out of memory\",\"bytes\":%zu}\n", n);
  abort();
}

void *dibba_xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (p == NULL)
    dibba_oom(n);
  return p;
}

void *dibba_xcalloc(size_t nmemb, size_t size) {
  void *p = calloc(nmemb ? nmemb : 1, size ? size : 1);
  if (p == NULL)
    dibba_oom(nmemb * size);
  return p;
}

void *dibba_xrealloc(void *p, size_t n) {
  void *q = realloc(p, n ? n : 1);
  if (q == NULL)
    dibba_oom(n);
  return q;
}

void *dibba_xreallocarray(void *p, size_t nmemb, size_t size) {
  if (size != 0 && nmemb > SIZE_MAX / size)
    dibba_oom(SIZE_MAX);
  return dibba_xrealloc(p, nmemb * size);
}

char *dibba_xstrdup(const char *s) {
  if (s == NULL)
    return NULL;
  return dibba_xstrndup(s, strlen(s));
}

char *dibba_xstrndup(const char *s, size_t n) {
  size_t len = strnlen(s, n);
  char *p = dibba_xmalloc(len + 1);
  memcpy(p, s, len);
  p[len] = '\0';
  return p;
}

char *dibba_xasprintf(const char *fmt, ...) {
  va_list ap;
  char *s = NULL;
  va_start(ap, fmt);
  int n = vasprintf(&s, fmt, ap);
  va_end(ap);
  if (n < 0)
    dibba_oom(0);
  return s;
}

static void *json_alloc(size_t n) { return dibba_xmalloc(n); }

void dibba_alloc_init(void) { json_set_alloc_funcs(json_alloc, free); }
