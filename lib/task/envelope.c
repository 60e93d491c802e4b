/* SPDX-License-Identifier: Apache-2.0 */
/* Sealing and opening task envelopes: protobuf bytes plus an HMAC-SHA256, checked before anything is parsed. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "dibba/alloc.h"
#include "dibba/error.h"
#include "dibba/task.h"
#include "task_int.h"

static int mac_bytes(const dibba_task_key_t *k, const void *e, size_t elen, uint8_t out[DIBBA_ENVELOPE_MAC_LEN]) {
  if (k->envelope_mac == NULL)
    return -EINVAL;
  return dibba__task_mac(k->envelope_mac, e, elen, NULL, 0, out);
}

static int shape_ok(const Dibba__V1__TaskEnvelope *env) {
  return env->id && env->id[0] && env->name && env->name[0] && dibba_route_valid(env->route) &&
         env->expires_at_ms > 0 && env->expires_at_ms >= env->issued_at_ms;
}

int dibba_envelope_seal(const dibba_task_key_t *k, const Dibba__V1__TaskEnvelope *env, dibba_envelope_wire_t *out) {
  int r = 0;
  memset(out, 0, sizeof *out);
  if (k == NULL || k->secret == NULL || env == NULL || !shape_ok(env))
    return -EINVAL;
  size_t n = protobuf_c_message_get_packed_size(&env->base);
  if (n == 0 || n > DIBBA_ENVELOPE_MAX_BYTES)
    return n == 0 ? -EINVAL : -E2BIG;
  out->e = dibba_xmalloc(n);
  out->elen = protobuf_c_message_pack(&env->base, out->e);
  if (out->elen != n) {
    r = -EINVAL;
    goto fail;
  }
  if ((r = mac_bytes(k, out->e, out->elen, out->m)) < 0)
    goto fail;
  return 0;
fail:
  dibba_envelope_wire_free(out);
  return r;
}

void dibba_envelope_wire_free(dibba_envelope_wire_t *w) {
  free(w->e);
  w->e = NULL;
  w->elen = 0;
}

int dibba_envelope_open(const dibba_task_key_t *k, const void *e, size_t elen, const void *m, size_t mlen,
                        const char *stream_route, int64_t now_ms, Dibba__V1__TaskEnvelope **out) {
  uint8_t want[DIBBA_ENVELOPE_MAC_LEN];
  Dibba__V1__TaskEnvelope *env = NULL;
  int r;

  *out = NULL;
  if (k == NULL || k->secret == NULL || e == NULL || elen == 0 || elen > DIBBA_ENVELOPE_MAX_BYTES)
    return -EINVAL;
  if (m == NULL || mlen != DIBBA_ENVELOPE_MAC_LEN)
    return DIBBA_EFORGED;
  if ((r = mac_bytes(k, e, elen, want)) < 0)
    return r;
  if (CRYPTO_memcmp(want, m, DIBBA_ENVELOPE_MAC_LEN) != 0)
    return DIBBA_EFORGED;
  /* From here on the bytes come from a key holder; the checks below still guard against bugs and replays. */
  env = dibba__v1__task_envelope__unpack(NULL, elen, e);
  if (env == NULL || !shape_ok(env)) {
    r = -EINVAL;
    goto out;
  }
  if (stream_route == NULL || strcmp(env->route, stream_route) != 0) {
    r = DIBBA_EREPLAY;
    goto out;
  }
  if (env->issued_at_ms > now_ms + DIBBA_ENVELOPE_MAX_SKEW_MS) {
    r = -EINVAL;
    goto out;
  }
  if (now_ms >= env->expires_at_ms) {
    r = DIBBA_EEXPIRED;
    goto out;
  }
  if (env->attempt > env->max_retries) {
    r = -ELOOP;
    goto out;
  }
  *out = env;
  env = NULL;
  r = 0;
out:
  dibba_envelope_free(env);
  return r;
}

void dibba_envelope_free(Dibba__V1__TaskEnvelope *env) {
  if (env)
    dibba__v1__task_envelope__free_unpacked(env, NULL);
}
