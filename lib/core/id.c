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
  snprintf(out, DIBBA_ID_LEN + 1, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
           b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
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
