/* SPDX-License-Identifier: Apache-2.0 */
/* libFuzzer target: task envelopes as a worker reads them, both as forged bytes and as MAC-valid bytes. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "dibba/alloc.h"
#include "dibba/pbjson.h"
#include "dibba/task.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define KEY "fuzz-key-0123456789abcdef-fuzz!!"
#define NOW 1700000000000LL

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static dibba_task_key_t key;
  static char route[DIBBA_ROUTE_LEN + 1];
  static int ready;
  Dibba__V1__TaskEnvelope *env = NULL;
  uint8_t mac[DIBBA_ENVELOPE_MAC_LEN];
  unsigned int ml = 0;

  if (!ready) {
    dibba_alloc_init();
    if (dibba_task_key_init(&key, KEY, strlen(KEY)) < 0 || dibba_route_host(&key, "fuzz-host", route) < 0)
      abort();
    ready = 1; /* route is "dctfzxzouk7g5keuvv3amhip3t"; the corpus envelopes use it */
  }

  /* 1. An attacker's entry: the last 32 bytes as the MAC. Must be rejected, never crash. */
  if (size >= DIBBA_ENVELOPE_MAC_LEN) {
    if (dibba_envelope_open(&key, data, size - DIBBA_ENVELOPE_MAC_LEN, data + size - DIBBA_ENVELOPE_MAC_LEN,
                            DIBBA_ENVELOPE_MAC_LEN, route, NOW, &env) == 0)
      abort(); /* a forged MAC that verifies means the MAC is broken */
  }

  /* 2. The same bytes MACed with the real key: exercises unpack and every check after the MAC. */
  if (size > 0 && size <= DIBBA_ENVELOPE_MAX_BYTES) {
    if (HMAC(EVP_sha256(), key.mac_key, sizeof key.mac_key, data, size, mac, &ml) == NULL)
      abort();
    if (dibba_envelope_open(&key, data, size, mac, sizeof mac, route, NOW, &env) == 0) {
      /* what the worker does next: render the args and the envelope as JSON, and seal it again */
      char *s = dibba_pbjson_dumps(&env->base, 0);
      ProtobufCMessage *back = NULL;
      if (dibba_pbjson_parse(s, strlen(s), &dibba__v1__task_envelope__descriptor, NULL, &back, NULL) == 0)
        dibba_pbjson_message_free(back);
      free(s);
      dibba_envelope_wire_t w;
      if (dibba_envelope_seal(&key, env, &w) == 0)
        dibba_envelope_wire_free(&w);
      dibba_envelope_free(env);
    }
  }
  return 0;
}
