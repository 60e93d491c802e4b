/* SPDX-License-Identifier: Apache-2.0 */
/* JWTs: issued with libjwt, verified here with the algorithm pinned and the HMAC compared in constant time. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <jwt.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/core_names.h>
#include <openssl/hmac.h>

#include "dibba/alloc.h"
#include "dibba/error.h"
#include "dibba/id.h"

#include "auth-int.h"

static const char *alg_names[] = {"HS256", "HS384", "HS512"};

/* Parsing is the largest cost of a verify (jansson: 36k of 80k instructions per GET /v1/me), and a client
 * sends the same token many times. What is reused is only what parsing the same bytes would give again: a
 * header whose base64url text is one of the two canonical headers of the pinned algorithm is known to pass
 * the header checks, and the claims of a payload whose text was parsed before (after its signature verified)
 * are taken from a small table keyed by the full payload text. The signature, the times and the user are
 * still checked on every call; failures are never kept. */
#define PAYLOADS 64

typedef struct payload_s {
  char *seg; /* base64url payload text, malloc'd; NULL: empty slot */
  size_t len;
  char sub[DIBBA_AUTH_NAME_MAX + 1];
  char jti[64];
  dibba_auth_role_t role;
  int64_t iat, nbf, exp;
} payload_t;

typedef struct parsed_s {
  char *hdr[2]; /* base64url of {"alg":A,"typ":"JWT"} and {"typ":"JWT","alg":A} */
  size_t hdrlen[2];
  payload_t p[PAYLOADS];
} parsed_t;

static uint32_t fnv1a(const char *s, size_t n) {
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < n; i++)
    h = (h ^ (unsigned char)s[i]) * 16777619u;
  return h;
}

static parsed_t *parsed_new(dibba_auth_alg_t alg) {
  parsed_t *c = dibba_xcalloc(1, sizeof *c);
  char h[64];
  for (int i = 0; i < 2; i++) {
    int n = snprintf(h, sizeof h, i == 0 ? "{\"alg\":\"%s\",\"typ\":\"JWT\"}" : "{\"typ\":\"JWT\",\"alg\":\"%s\"}",
                     alg_names[alg]);
    c->hdr[i] = dibba__b64url_encode(h, (size_t)n);
    c->hdrlen[i] = strlen(c->hdr[i]);
  }
  return c;
}

static void parsed_free(parsed_t *c) {
  if (c == NULL)
    return;
  for (int i = 0; i < 2; i++)
    free(c->hdr[i]);
  for (size_t i = 0; i < PAYLOADS; i++)
    free(c->p[i].seg);
  free(c);
}

static int canonical_header(const parsed_t *c, const char *seg, size_t n) {
  for (int i = 0; i < 2; i++)
    if (n == c->hdrlen[i] && memcmp(seg, c->hdr[i], n) == 0)
      return 1;
  return 0;
}

int dibba_auth_alg_parse(const char *s, dibba_auth_alg_t *out) {
  for (int i = 0; s && i < 3; i++) {
    if (strcmp(s, alg_names[i]) == 0) {
      *out = (dibba_auth_alg_t)i;
      return 0;
    }
  }
  return -EINVAL;
}

static const EVP_MD *alg_md(dibba_auth_alg_t alg) {
  switch (alg) {
  case DIBBA_AUTH_HS384: return EVP_sha384();
  case DIBBA_AUTH_HS512: return EVP_sha512();
  default: return EVP_sha256();
  }
}

static jwt_alg_t alg_libjwt(dibba_auth_alg_t alg) {
  switch (alg) {
  case DIBBA_AUTH_HS384: return JWT_ALG_HS384;
  case DIBBA_AUTH_HS512: return JWT_ALG_HS512;
  default: return JWT_ALG_HS256;
  }
}

int dibba_auth_jwt_init(dibba_auth_jwt_t *j, dibba_auth_alg_t alg, const void *key, size_t keylen, int64_t ttl,
                        int64_t leeway) {
  memset(j, 0, sizeof *j);
  if (alg > DIBBA_AUTH_HS512 || key == NULL || keylen < DIBBA_SECRET_MIN_BYTES || keylen > DIBBA_SECRET_MAX_BYTES ||
      ttl < 1 || leeway < 0)
    return -EINVAL;
  j->alg = alg;
  j->key = dibba_xmalloc(keylen);
  memcpy(j->key, key, keylen);
  j->keylen = keylen;
  j->ttl = ttl;
  j->leeway = leeway;
  /* Key the HMAC once; each verify re-initialises it with the same key, which skips the per-call algorithm
   * fetch and key set-up that one-shot HMAC() does (about half the cost of a verify). */
  EVP_MAC *m = EVP_MAC_fetch(NULL, "HMAC", NULL);
  EVP_MAC_CTX *ctx = m ? EVP_MAC_CTX_new(m) : NULL;
  EVP_MAC_free(m);
  OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string("digest", (char *)EVP_MD_get0_name(alg_md(alg)), 0),
                         OSSL_PARAM_construct_end()};
  if (ctx == NULL || EVP_MAC_init(ctx, j->key, j->keylen, params) != 1) {
    EVP_MAC_CTX_free(ctx);
    dibba_auth_jwt_free(j);
    return -ENOMEM;
  }
  j->mac = ctx;
  j->parsed = parsed_new(alg);
  return 0;
}

int dibba_auth_jwt_from_config(dibba_auth_jwt_t *j, const dibba_config_t *cfg, char *err, size_t errlen) {
  const char *name = NULL;
  char *secret = NULL;
  size_t secretlen = 0;
  int64_t ttl = 0, leeway = 0;
  dibba_auth_alg_t alg;
  int r = dibba_config_str(cfg, "auth.jwt_alg", "HS256", &name, err, errlen);
  if (r < 0)
    goto out;
  if (dibba_auth_alg_parse(name, &alg) < 0) {
    r = dibba_error_set(err, errlen, DIBBA_ECONFIG, "config: auth.jwt_alg: \"%s\" is not HS256, HS384 or HS512", name);
    goto out;
  }
  r = dibba_config_int(cfg, "auth.token_ttl_seconds", 3600, 60, 30 * 86400, &ttl, err, errlen);
  if (r < 0)
    goto out;
  r = dibba_config_int(cfg, "auth.jwt_leeway_seconds", 30, 0, 600, &leeway, err, errlen);
  if (r < 0)
    goto out;
  r = dibba_config_secret(cfg, "auth.jwt_secret", &secret, &secretlen, err, errlen);
  if (r < 0)
    goto out;
  r = dibba_auth_jwt_init(j, alg, secret, secretlen, ttl, leeway);
  if (r < 0)
    dibba_error_set(err, errlen, r, "auth.jwt_secret: unusable secret");
out:
  if (secret) {
    OPENSSL_cleanse(secret, secretlen);
    free(secret);
  }
  return r;
}

void dibba_auth_jwt_free(dibba_auth_jwt_t *j) {
  if (j->key) {
    OPENSSL_cleanse(j->key, j->keylen);
    free(j->key);
  }
  j->key = NULL;
  j->keylen = 0;
  EVP_MAC_CTX_free(j->mac);
  j->mac = NULL;
  parsed_free(j->parsed);
  j->parsed = NULL;
}

int dibba_auth_jwt_issue(const dibba_auth_jwt_t *j, const char *sub, dibba_auth_role_t role, int64_t now, char **token,
                         int64_t *expires_in) {
  jwt_t *t = NULL;
  char *s = NULL;
  char jti[DIBBA_ID_LEN + 1];
  int r = -EINVAL;
  if (j->key == NULL || !dibba_auth_username_valid(sub) || role < DIBBA_AUTH_ROLE_VIEWER ||
      role > DIBBA_AUTH_ROLE_ADMIN)
    goto out;
  dibba_id_new(jti);
  r = -ENOMEM;
  if (jwt_new(&t) != 0)
    goto out;
  if (jwt_set_alg(t, alg_libjwt(j->alg), j->key, (int)j->keylen) != 0 || jwt_add_grant(t, "sub", sub) != 0 ||
      jwt_add_grant(t, "role", dibba_auth_role_name(role)) != 0 || jwt_add_grant(t, "jti", jti) != 0 ||
      jwt_add_grant_int(t, "iat", (long)now) != 0 || jwt_add_grant_int(t, "nbf", (long)now) != 0 ||
      jwt_add_grant_int(t, "exp", (long)(now + j->ttl)) != 0)
    goto out;
  s = jwt_encode_str(t);
  if (s == NULL)
    goto out;
  *token = dibba_xstrdup(s);
  *expires_in = j->ttl;
  r = 0;
out:
  free(s);
  jwt_free(t);
  return r;
}

/* An integer claim; reals, strings ("100"), booleans and null are refused. */
static int int_claim(json_t *o, const char *k, int64_t *out) {
  json_t *v = json_object_get(o, k);
  if (!json_is_integer(v))
    return -EINVAL;
  *out = json_integer_value(v);
  return 0;
}

static int str_is(json_t *v, const char *want) {
  return json_is_string(v) && json_string_length(v) == strlen(want) && strcmp(json_string_value(v), want) == 0;
}

static json_t *decode_json(const char *seg, size_t n, unsigned char *buf, size_t max) {
  long len = dibba__b64url_decode(seg, n, buf, max);
  if (len <= 0)
    return NULL;
  json_t *v = json_loadb((const char *)buf, (size_t)len, JSON_REJECT_DUPLICATES, NULL);
  if (v && !json_is_object(v)) {
    json_decref(v);
    v = NULL;
  }
  return v;
}

int dibba_auth_jwt_verify(const dibba_auth_jwt_t *j, const char *token, size_t len, int64_t now,
                          dibba_auth_claims_t *claims) {
  json_t *hdr = NULL, *pl = NULL;
  unsigned char *buf = NULL;
  unsigned char mac[EVP_MAX_MD_SIZE], sig[EVP_MAX_MD_SIZE];
  int64_t iat, nbf, exp;
  int r = -EINVAL;

  if (token == NULL || j->key == NULL)
    goto out;
  if (len > DIBBA_AUTH_TOKEN_MAX) {
    r = -E2BIG;
    goto out;
  }
  if (memchr(token, '\0', len) != NULL)
    goto out;
  const char *d1 = memchr(token, '.', len);
  const char *d2 = d1 ? memchr(d1 + 1, '.', len - (size_t)(d1 + 1 - token)) : NULL;
  if (d2 == NULL || memchr(d2 + 1, '.', len - (size_t)(d2 + 1 - token)) != NULL)
    goto out;
  size_t hlen = (size_t)(d1 - token), plen = (size_t)(d2 - d1 - 1), slen = len - (size_t)(d2 + 1 - token);
  buf = dibba_xmalloc(len);

  parsed_t *pc = j->parsed;

  /* 1. The header, parsed here: only the pinned algorithm is acceptable, whatever else it says. */
  if (!canonical_header(pc, token, hlen)) {
    hdr = decode_json(token, hlen, buf, len);
    if (hdr == NULL)
      goto out;
    json_t *typ = json_object_get(hdr, "typ");
    if (typ && !str_is(typ, "JWT"))
      goto out;
    if (!str_is(json_object_get(hdr, "alg"), alg_names[j->alg]) || json_object_get(hdr, "crit") != NULL) {
      r = DIBBA_EFORGED;
      goto out;
    }
  }

  /* 2. The signature over "header.payload", before anything in the payload is believed. */
  long siglen = dibba__b64url_decode(d2 + 1, slen, sig, sizeof sig);
  size_t maclen = 0;
  if (EVP_MAC_init(j->mac, NULL, 0, NULL) != 1 ||
      EVP_MAC_update(j->mac, (const unsigned char *)token, (size_t)(d2 - token)) != 1 ||
      EVP_MAC_final(j->mac, mac, &maclen, sizeof mac) != 1) {
    r = -ENOMEM;
    goto out;
  }
  if (siglen != (long)maclen || CRYPTO_memcmp(mac, sig, maclen) != 0) {
    r = DIBBA_EFORGED;
    goto out;
  }

  /* 3. The claims: parsed, or the same text's claims parsed before. */
  payload_t *slot = &pc->p[fnv1a(d1 + 1, plen) % PAYLOADS];
  const char *subs, *jtis;
  dibba_auth_role_t rl;
  if (slot->seg && slot->len == plen && memcmp(slot->seg, d1 + 1, plen) == 0) {
    subs = slot->sub;
    jtis = slot->jti;
    rl = slot->role;
    iat = slot->iat;
    nbf = slot->nbf;
    exp = slot->exp;
  } else {
    pl = decode_json(d1 + 1, plen, buf, len);
    if (pl == NULL)
      goto out;
    if (int_claim(pl, "exp", &exp) < 0 || int_claim(pl, "nbf", &nbf) < 0 || int_claim(pl, "iat", &iat) < 0)
      goto out;
    json_t *sub = json_object_get(pl, "sub"), *role = json_object_get(pl, "role"), *jti = json_object_get(pl, "jti");
    if (!json_is_string(sub) || !json_is_string(role) || !json_is_string(jti))
      goto out;
    subs = json_string_value(sub);
    jtis = json_string_value(jti);
    if (json_string_length(sub) != strlen(subs) || !dibba_auth_username_valid(subs))
      goto out;
    if (json_string_length(jti) != strlen(jtis) || strlen(jtis) == 0 || strlen(jtis) >= sizeof claims->jti)
      goto out;
    if (json_string_length(role) != strlen(json_string_value(role)) ||
        dibba_auth_role_parse(json_string_value(role), &rl) < 0)
      goto out;
    /* Parsed and well-formed under a good signature: keep what parsing gave (not whether it verifies). */
    free(slot->seg);
    slot->seg = dibba_xmalloc(plen);
    memcpy(slot->seg, d1 + 1, plen);
    slot->len = plen;
    strcpy(slot->sub, subs);
    strcpy(slot->jti, jtis);
    slot->role = rl;
    slot->iat = iat;
    slot->nbf = nbf;
    slot->exp = exp;
  }
  if (exp <= now - j->leeway) {
    r = DIBBA_EEXPIRED;
    goto out;
  }
  if (nbf > now + j->leeway || iat > now + j->leeway) {
    r = -ERANGE;
    goto out;
  }
  memset(claims, 0, sizeof *claims);
  strcpy(claims->sub, subs);
  strcpy(claims->jti, jtis);
  claims->role = rl;
  claims->iat = iat;
  claims->nbf = nbf;
  claims->exp = exp;
  r = 0;
out:
  OPENSSL_cleanse(mac, sizeof mac);
  json_decref(hdr);
  json_decref(pl);
  free(buf);
  return r;
}

int dibba_auth_token_check(const dibba_auth_jwt_t *j, const dibba_auth_users_t *u, const char *token, size_t len,
                           int64_t now, dibba_auth_claims_t *claims) {
  dibba_auth_claims_t c;
  int r = dibba_auth_jwt_verify(j, token, len, now, &c);
  if (r < 0)
    return r;
  const dibba_auth_user_t *x = dibba_auth_users_find(u, c.sub);
  if (x == NULL || !x->enabled || x->role != c.role)
    return -EACCES;
  *claims = c;
  return 0;
}
