/* SPDX-License-Identifier: Apache-2.0 */
/* Task and request ids from the kernel's random source. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "dibba/id.h"

void dibba_random_bytes(void *buf, size_t n) {
  unsigned char *p = buf;
  while (n > 0) {
    ssize_t r = getrandom(p, n, 0);
    if (r < 0) {
      if (errno == EINTR)
        continue;
      fprintf(stderr, "{\"level\":\"fatal\",\"component\":\"core\",\"msg\":\"getrandom failed\"}\n");
      abort();
    }
    p += r;
    n -= (size_t)r;
  }
}

void dibba_id_new(char out[DIBBA_ID_LEN + 1]) {
  unsigned char b[16];
  dibba_random_bytes(b, sizeof b);
  b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
  b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
  /* 8-4-4-4-12 lower-case hex, as "%02x..." would print it (a worker makes one per task run). */
  static const char hex[] = "0123456789abcdef";
  size_t o = 0;
  for (int i = 0; i < 16; i++) {
    if (i == 4 || i == 6 || i == 8 || i == 10)
      out[o++] = '-';
    out[o++] = hex[b[i] >> 4];
    out[o++] = hex[b[i] & 15];
  }
  out[o] = '\0';
}

int dibba_id_valid(const char *s) {
  if (s == NULL || strlen(s) != DIBBA_ID_LEN)
    return 0;
  for (int i = 0; i < DIBBA_ID_LEN; i++) {
    char c = s[i];
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (c != '-')
        return 0;
    } else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))) {
      return 0;
    }
  }
  return 1;
}
