/* SPDX-License-Identifier: Apache-2.0 */
/* libFuzzer target: bytes into the WebSocket frame parser (server side, masked frames, small caps). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dibba/websocket.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int on_frame(dibba_ws_parser_t *p, int op, const char *d, size_t n) {
  if (op == DIBBA_WS_TEXT && !dibba_utf8_valid(d, n))
    abort(); /* the parser must only deliver valid UTF-8 text */
  if ((op & 8) && n > 125)
    abort();
  if (!(op & 8) && n > p->max_message)
    abort();
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  dibba_ws_parser_t p;
  dibba_ws_parser_init(&p, 1024, 4096, size > 0 && (data[0] & 1));
  p.cb = on_frame;
  size_t step = size > 1 ? (size_t)data[1] % 17 + 1 : 1;
  for (size_t off = 0; off < size;) {
    size_t n = size - off < step ? size - off : step;
    int64_t r = dibba_ws_parser_feed(&p, (const char *)data + off, n);
    if (r < 0)
      break;
    if (dibba_ws_parser_allocated(&p) > 4096 + 1)
      abort();
    off += (size_t)r;
    if ((size_t)r < n)
      break;
  }
  dibba_ws_parser_free(&p);
  return 0;
}
