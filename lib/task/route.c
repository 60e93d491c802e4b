/* SPDX-License-Identifier: Apache-2.0 */
/* Route names: keyed, domain-separated HMACs of host and role names, so streams reveal nothing without the key. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "dibba/alloc.h"
#include "dibba/route.h"
#include "task_int.h"

#define ROLE_NAME_MAX 64

static const char MAC_LABEL[] = "mac\0envelope/v1"; /* sizeof includes the inner NUL */

static int hmac2(const unsigned char *key, size_t keylen, const char *label, size_t label_len, const char *name,
                 size_t name_len, unsigned char out[32]) {
  unsigned char msg[16 + DIBBA_ROUTE_NAME_MAX];
  unsigned int outlen = 0;
  if (label_len + name_len > sizeof msg)
    return -EINVAL;
  memcpy(msg, label, label_len);
  memcpy(msg + label_len, name, name_len);
  if (HMAC(EVP_sha256(), key, (int)keylen, msg, label_len + name_len, out, &outlen) == NULL || outlen != 32)
    return -EINVAL;
  return 0;
}

/* An HMAC-SHA256 context keyed with key, or NULL. */
static void *keyed_mac(const unsigned char *key, size_t keylen) {
  EVP_MAC *m = EVP_MAC_fetch(NULL, "HMAC", NULL);
  EVP_MAC_CTX *ctx = m ? EVP_MAC_CTX_new(m) : NULL;
  EVP_MAC_free(m);
  OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
                         OSSL_PARAM_construct_end()};
  if (ctx == NULL || EVP_MAC_init(ctx, key, keylen, params) != 1) {
    EVP_MAC_CTX_free(ctx);
    return NULL;
  }
  return ctx;
}

int dibba__task_mac(void *ctx, const void *a, size_t alen, const void *b, size_t blen, unsigned char out[32]) {
  size_t n = 0;
  if (EVP_MAC_init(ctx, NULL, 0, NULL) != 1 || EVP_MAC_update(ctx, a, alen) != 1 ||
      (blen && EVP_MAC_update(ctx, b, blen) != 1) || EVP_MAC_final(ctx, out, &n, 32) != 1 || n != 32)
    return -EINVAL;
  return 0;
}

int dibba_task_key_init(dibba_task_key_t *k, const void *secret, size_t len) {
  memset(k, 0, sizeof *k);
  if (secret == NULL || len < DIBBA_TASK_KEY_MIN || len > DIBBA_TASK_KEY_MAX)
    return -EINVAL;
  k->secret = dibba_xmalloc(len);
  memcpy(k->secret, secret, len);
  k->secret_len = len;
  int r = hmac2(k->secret, len, MAC_LABEL, sizeof MAC_LABEL - 1, "", 0, k->mac_key);
  if (r == 0) {
    k->route_mac = keyed_mac(k->secret, len);
    k->envelope_mac = keyed_mac(k->mac_key, sizeof k->mac_key);
    if (k->route_mac == NULL || k->envelope_mac == NULL)
      r = -ENOMEM;
  }
  if (r < 0)
    dibba_task_key_free(k);
  return r;
}

void dibba_task_key_free(dibba_task_key_t *k) {
  EVP_MAC_CTX_free(k->route_mac);
  EVP_MAC_CTX_free(k->envelope_mac);
  if (k->secret) {
    OPENSSL_cleanse(k->secret, k->secret_len);
    free(k->secret);
  }
  OPENSSL_cleanse(k, sizeof *k);
}

size_t dibba_base32_encode(const void *data, size_t n, char *out, size_t outlen) {
  static const char alpha[] = "abcdefghijklmnopqrstuvwxyz234567";
  const unsigned char *p = data;
  size_t o = 0;
  unsigned acc = 0;
  int bits = 0;
  if (outlen == 0)
    return 0;
  for (size_t i = 0; i < n && o + 1 < outlen; i++) {
    acc = (acc << 8) | p[i];
    bits += 8;
    while (bits >= 5 && o + 1 < outlen) {
      bits -= 5;
      out[o++] = alpha[(acc >> bits) & 31];
    }
    acc &= (1u << bits) - 1;
  }
  if (bits > 0 && o + 1 < outlen)
    out[o++] = alpha[(acc << (5 - bits)) & 31];
  out[o] = '\0';
  return o;
}

static int route_of(const dibba_task_key_t *k, const char *label, size_t label_len, const char *name, size_t n,
                    char out[DIBBA_ROUTE_LEN + 1]) {
  unsigned char mac[32];
  if (k == NULL || k->secret == NULL || k->route_mac == NULL)
    return -EINVAL;
  int r = dibba__task_mac(k->route_mac, label, label_len, name, n, mac);
  if (r < 0)
    return r;
  dibba_base32_encode(mac, sizeof mac, out, DIBBA_ROUTE_LEN + 1);
  OPENSSL_cleanse(mac, sizeof mac);
  return 0;
}

int dibba_route_host(const dibba_task_key_t *k, const char *hostname, char out[DIBBA_ROUTE_LEN + 1]) {
  char norm[DIBBA_ROUTE_NAME_MAX + 1];
  size_t n;
  out[0] = '\0';
  if (hostname == NULL)
    return -EINVAL;
  n = strnlen(hostname, DIBBA_ROUTE_NAME_MAX + 2);
  if (n > 1 && hostname[n - 1] == '.')
    n--;
  if (n == 0 || n > DIBBA_ROUTE_NAME_MAX)
    return -EINVAL;
  for (size_t i = 0; i < n; i++) {
    char c = hostname[i];
    if (c >= 'A' && c <= 'Z')
      c = (char)(c - 'A' + 'a');
    else if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_'))
      return -EINVAL;
    norm[i] = c;
  }
  return route_of(k, "route", sizeof "route", norm, n, out);
}

int dibba_route_role(const dibba_task_key_t *k, const char *role, char out[DIBBA_ROUTE_LEN + 1]) {
  size_t n;
  out[0] = '\0';
  if (role == NULL)
    return -EINVAL;
  n = strnlen(role, ROLE_NAME_MAX + 1);
  if (n == 0 || n > ROLE_NAME_MAX)
    return -EINVAL;
  for (size_t i = 0; i < n; i++) {
    char c = role[i];
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_'))
      return -EINVAL;
  }
  return route_of(k, "role", sizeof "role", role, n, out);
}

int dibba_route_valid(const char *s) {
  size_t i;
  if (s == NULL)
    return 0;
  for (i = 0; s[i] && i <= DIBBA_ROUTE_LEN; i++)
    if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '2' && s[i] <= '7')))
      return 0;
  return i == DIBBA_ROUTE_LEN;
}

int dibba_route_stream_key(const char *prefix, const char *route, char *out, size_t len) {
  if (!dibba_route_valid(route))
    return -EINVAL;
  int n = snprintf(out, len, "%sq:%s", prefix ? prefix : "", route);
  if (n < 0 || (size_t)n >= len)
    return -ENAMETOOLONG;
  return 0;
}
