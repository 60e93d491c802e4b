/* SPDX-License-Identifier: Apache-2.0 */
/* scrypt password hashes "scrypt$N$r$p$salt$hash" with a per-user salt, checked in constant time. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "dibba/alloc.h"
#include "dibba/id.h"

#include "auth-int.h"

#define SALT_LEN 16
#define HASH_LEN 32
#define SALT_MIN 8
#define SALT_MAX 64
#define HASH_MAX 64
#define MEM_MAX (UINT64_C(1) << 30)
#define STORED_MAX 512

typedef struct parsed_s {
  dibba_auth_scrypt_t params;
  unsigned char salt[SALT_MAX];
  size_t saltlen;
  unsigned char hash[HASH_MAX];
  size_t hashlen;
} parsed_t;

static int params_ok(const dibba_auth_scrypt_t *p) {
  if (p->n < 2 || p->n > (UINT64_C(1) << 20) || (p->n & (p->n - 1)) != 0)
    return 0;
  if (p->r < 1 || p->r > 32 || p->p < 1 || p->p > 16)
    return 0;
  /* A hash read from the users file must not be able to ask for more than 1 GiB. */
  return 128u * (uint64_t)p->r * p->n <= MEM_MAX;
}

/* Memory scrypt needs for these parameters, plus slack; passed to OpenSSL so its 32 MiB default does not
 * refuse N=32768, r=8. Bounded by params_ok: about 1 GiB at most. */
static uint64_t maxmem(const dibba_auth_scrypt_t *p) {
  return 128u * (uint64_t)p->r * (p->n + 2) + 128u * (uint64_t)p->r * p->p + (1u << 20);
}

static int parse_u64(const char *s, size_t n, uint64_t *out) {
  uint64_t v = 0;
  if (n == 0 || n > 8 || (n > 1 && s[0] == '0'))
    return -EINVAL;
  for (size_t i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9')
      return -EINVAL;
    v = v * 10 + (uint64_t)(s[i] - '0');
  }
  *out = v;
  return 0;
}

static int parse(const char *stored, parsed_t *out) {
  const char *f[6];
  size_t flen[6];
  int nf = 0;
  if (stored == NULL || strlen(stored) > STORED_MAX || strncmp(stored, "scrypt$", 7) != 0)
    return -EINVAL;
  const char *p = stored;
  while (nf < 6) {
    const char *d = strchr(p, '$');
    f[nf] = p;
    flen[nf] = d ? (size_t)(d - p) : strlen(p);
    nf++;
    if (d == NULL)
      break;
    p = d + 1;
  }
  if (nf != 6 || strchr(f[5], '$') != NULL)
    return -EINVAL;
  uint64_t n, r, pp;
  if (parse_u64(f[1], flen[1], &n) < 0 || parse_u64(f[2], flen[2], &r) < 0 || parse_u64(f[3], flen[3], &pp) < 0)
    return -EINVAL;
  if (r > UINT32_MAX || pp > UINT32_MAX)
    return -EINVAL;
  out->params.n = n;
  out->params.r = (uint32_t)r;
  out->params.p = (uint32_t)pp;
  if (!params_ok(&out->params))
    return -EINVAL;
  long sl = dibba__b64url_decode(f[4], flen[4], out->salt, sizeof out->salt);
  long hl = dibba__b64url_decode(f[5], flen[5], out->hash, sizeof out->hash);
  /* Exactly HASH_LEN: scrypt's output is a prefix-stable PBKDF2, so a cut-short hash would still match. */
  if (sl < SALT_MIN || hl != HASH_LEN)
    return -EINVAL;
  out->saltlen = (size_t)sl;
  out->hashlen = (size_t)hl;
  return 0;
}

int dibba__auth_hash_wellformed(const char *s) {
  parsed_t p;
  return parse(s, &p) == 0;
}

static int derive(const char *pw, size_t len, const dibba_auth_scrypt_t *params, const unsigned char *salt,
                  size_t saltlen, unsigned char *out, size_t outlen) {
  if (EVP_PBE_scrypt(pw, len, salt, saltlen, params->n, params->r, params->p, maxmem(params), out, outlen) != 1)
    return -ENOMEM;
  return 0;
}

static char *format(const dibba_auth_scrypt_t *params, const unsigned char *salt, size_t saltlen,
                    const unsigned char *hash, size_t hashlen) {
  char *s = dibba__b64url_encode(salt, saltlen);
  char *h = dibba__b64url_encode(hash, hashlen);
  char *out =
      dibba_xasprintf("scrypt$%" PRIu64 "$%" PRIu32 "$%" PRIu32 "$%s$%s", params->n, params->r, params->p, s, h);
  free(s);
  free(h);
  return out;
}

int dibba_auth_password_hash(const char *pw, size_t len, const dibba_auth_scrypt_t *params, char **out) {
  dibba_auth_scrypt_t def = DIBBA_AUTH_SCRYPT_DEFAULT;
  unsigned char salt[SALT_LEN], hash[HASH_LEN];
  int r = 0;
  if (params == NULL)
    params = &def;
  if (!dibba_auth_password_valid(pw, len) || !params_ok(params))
    return -EINVAL;
  dibba_random_bytes(salt, sizeof salt);
  r = derive(pw, len, params, salt, sizeof salt, hash, sizeof hash);
  if (r < 0)
    goto out;
  *out = format(params, salt, sizeof salt, hash, sizeof hash);
out:
  OPENSSL_cleanse(hash, sizeof hash);
  return r;
}

int dibba_auth_password_verify(const char *stored, const char *pw, size_t len) {
  parsed_t p;
  unsigned char got[HASH_MAX];
  int r = parse(stored, &p);
  if (r < 0)
    return r;
  if (pw == NULL || len > DIBBA_AUTH_PASSWORD_MAX) {
    r = -EACCES;
    goto out;
  }
  r = derive(pw, len, &p.params, p.salt, p.saltlen, got, p.hashlen);
  if (r < 0)
    goto out;
  r = CRYPTO_memcmp(got, p.hash, p.hashlen) == 0 ? 0 : -EACCES;
out:
  OPENSSL_cleanse(got, sizeof got);
  return r;
}

char *dibba__auth_dummy_hash(const dibba_auth_scrypt_t *params) {
  unsigned char salt[SALT_LEN], hash[HASH_LEN];
  dibba_random_bytes(salt, sizeof salt);
  dibba_random_bytes(hash, sizeof hash);
  return format(params, salt, sizeof salt, hash, sizeof hash);
}
