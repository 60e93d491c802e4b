/* SPDX-License-Identifier: Apache-2.0 */
/* AWS Signature Version 4: canonical request, string to sign, the HMAC key chain and the Authorization value. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>

#include "dibba/alloc.h"
#include "dibba/aws.h"

#define SIGV4_TEXT_MAX (64u * 1024u)

static void hex(const unsigned char *in, size_t n, char *out) {
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = digits[in[i] >> 4];
    out[2 * i + 1] = digits[in[i] & 15];
  }
  out[2 * n] = '\0';
}

static void sha256_hex(const void *p, size_t n, char out[65]) {
  unsigned char md[SHA256_DIGEST_LENGTH];
  SHA256(p ? p : "", n, md);
  hex(md, sizeof md, out);
}

static void hmac(const void *key, size_t keylen, const char *msg, unsigned char out[32]) {
  unsigned int len = 32;
  HMAC(EVP_sha256(), key, (int)keylen, (const unsigned char *)msg, strlen(msg), out, &len);
}

void dibba_aws_amz_date(time_t t, char out[17]) {
  struct tm tm;
  gmtime_r(&t, &tm);
  strftime(out, 17, "%Y%m%dT%H%M%SZ", &tm);
}

static int unreserved(unsigned char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
         c == '.' || c == '~';
}

int dibba_aws_uri_encode(dibba_buf_t *b, const char *s, size_t n, int keep_slash) {
  static const char digits[] = "0123456789ABCDEF";
  int rc = 0;
  for (size_t i = 0; i < n && rc == 0; i++) {
    unsigned char c = (unsigned char)s[i];
    if (unreserved(c) || (keep_slash && c == '/')) {
      rc = dibba_buf_add(b, &s[i], 1);
    } else {
      char esc[3] = {'%', digits[c >> 4], digits[c & 15]};
      rc = dibba_buf_add(b, esc, 3);
    }
  }
  return rc;
}

static int hexval(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

/* Decode %XX (and '+' is kept literally, as AWS does for the canonical query) then re-encode canonically. */
static int canon_component(dibba_buf_t *out, const char *s, size_t n) {
  char *d = dibba_xmalloc(n + 1);
  size_t j = 0;
  int rc = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] != '%') {
      d[j++] = s[i];
      continue;
    }
    int hi = i + 1 < n ? hexval(s[i + 1]) : -1, lo = i + 2 < n ? hexval(s[i + 2]) : -1;
    if (hi < 0 || lo < 0) {
      rc = -EINVAL;
      goto out;
    }
    d[j++] = (char)(hi * 16 + lo);
    i += 2;
  }
  rc = dibba_aws_uri_encode(out, d, j, 0);
out:
  free(d);
  return rc;
}

typedef struct pair_s {
  char *k;
  char *v;
} pair_t;

static int pair_cmp(const void *a, const void *b) {
  const pair_t *x = a, *y = b;
  int c = strcmp(x->k, y->k);
  return c ? c : strcmp(x->v, y->v);
}

/* The canonical query string: every k=v encoded, sorted by key then value, joined with '&'. */
static int canon_query(dibba_buf_t *out, const char *q) {
  pair_t *pairs = NULL;
  size_t n = 0;
  int rc = 0;
  const char *p = q;
  while (p && *p) {
    const char *amp = strchr(p, '&');
    size_t len = amp ? (size_t)(amp - p) : strlen(p);
    if (len > 0) {
      const char *eq = memchr(p, '=', len);
      size_t klen = eq ? (size_t)(eq - p) : len;
      dibba_buf_t k, v;
      dibba_buf_init(&k, SIGV4_TEXT_MAX);
      dibba_buf_init(&v, SIGV4_TEXT_MAX);
      rc = canon_component(&k, p, klen);
      if (rc == 0 && eq)
        rc = canon_component(&v, eq + 1, len - klen - 1);
      if (rc < 0) {
        dibba_buf_free(&k);
        dibba_buf_free(&v);
        goto out;
      }
      pairs = dibba_xreallocarray(pairs, n + 1, sizeof *pairs);
      pairs[n].k = k.data ? dibba_buf_steal(&k, NULL) : dibba_xstrdup("");
      pairs[n].v = v.data ? dibba_buf_steal(&v, NULL) : dibba_xstrdup("");
      n++;
    }
    p = amp ? amp + 1 : NULL;
  }
  if (n > 1)
    qsort(pairs, n, sizeof *pairs, pair_cmp);
  for (size_t i = 0; i < n && rc == 0; i++)
    rc = dibba_buf_printf(out, "%s%s=%s", i ? "&" : "", pairs[i].k, pairs[i].v);
out:
  for (size_t i = 0; i < n; i++) {
    free(pairs[i].k);
    free(pairs[i].v);
  }
  free(pairs);
  return rc;
}

typedef struct hdr_s {
  char *name;  /* lowercase */
  char *value; /* trimmed, spaces folded */
} hdr_t;

static int hdr_cmp(const void *a, const void *b) { return strcmp(((const hdr_t *)a)->name, ((const hdr_t *)b)->name); }

static char *fold_value(const char *v) {
  size_t n = strlen(v);
  char *d = dibba_xmalloc(n + 1);
  size_t j = 0;
  int space = 0;
  for (size_t i = 0; i < n; i++) {
    char c = v[i];
    if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
      space = j > 0;
      continue;
    }
    if (space)
      d[j++] = ' ';
    space = 0;
    d[j++] = c;
  }
  d[j] = '\0';
  return d;
}

static int valid_amz_date(const char *s) {
  if (s == NULL || strlen(s) != 16 || s[8] != 'T' || s[15] != 'Z')
    return 0;
  for (int i = 0; i < 15; i++)
    if (i != 8 && (s[i] < '0' || s[i] > '9'))
      return 0;
  return 1;
}

int dibba_aws_sigv4_sign(const dibba_aws_sigv4_req_t *req, const dibba_aws_sigv4_key_t *key, dibba_aws_sigv4_t *out) {
  int rc = 0;
  hdr_t *h = NULL;
  size_t nh = 0;
  dibba_buf_t creq, names, sts;
  dibba_buf_init(&creq, SIGV4_TEXT_MAX);
  dibba_buf_init(&names, SIGV4_TEXT_MAX);
  dibba_buf_init(&sts, SIGV4_TEXT_MAX);
  memset(out, 0, sizeof *out);

  if (req->method == NULL || key->access_key_id == NULL || key->secret_access_key == NULL || key->region == NULL ||
      key->service == NULL || !valid_amz_date(key->amz_date)) {
    rc = -EINVAL;
    goto out;
  }
  /* Headers: lowercase names, sorted; repeated names are joined with ',' in the order given. */
  h = dibba_xcalloc(req->nheaders ? req->nheaders : 1, sizeof *h);
  for (size_t i = 0; i < req->nheaders; i++) {
    const char *name = req->headers[i].name;
    size_t len = name ? strlen(name) : 0;
    if (len == 0) {
      rc = -EINVAL;
      goto out;
    }
    char *lower = dibba_xmalloc(len + 1);
    for (size_t j = 0; j <= len; j++) {
      unsigned char c = (unsigned char)name[j];
      if (j < len && (c <= ' ' || c == ':' || c >= 0x7f)) {
        free(lower);
        rc = -EINVAL;
        goto out;
      }
      lower[j] = (char)((c >= 'A' && c <= 'Z') ? c + 32 : c);
    }
    char *value = fold_value(req->headers[i].value ? req->headers[i].value : "");
    size_t k;
    for (k = 0; k < nh && strcmp(h[k].name, lower) != 0; k++)
      ;
    if (k < nh) {
      char *joined = dibba_xasprintf("%s,%s", h[k].value, value);
      free(h[k].value);
      free(value);
      free(lower);
      h[k].value = joined;
    } else {
      h[nh].name = lower;
      h[nh].value = value;
      nh++;
    }
  }
  qsort(h, nh, sizeof *h, hdr_cmp);

  sha256_hex(req->payload, req->payload_len, out->payload_hash);
  rc = dibba_buf_printf(&creq, "%s\n%s\n", req->method, req->path && *req->path ? req->path : "/");
  if (rc == 0)
    rc = canon_query(&creq, req->query);
  if (rc == 0)
    rc = dibba_buf_adds(&creq, "\n");
  for (size_t i = 0; i < nh && rc == 0; i++) {
    rc = dibba_buf_printf(&creq, "%s:%s\n", h[i].name, h[i].value);
    if (rc == 0)
      rc = dibba_buf_printf(&names, "%s%s", i ? ";" : "", h[i].name);
  }
  if (rc == 0)
    rc = dibba_buf_printf(&creq, "\n%s\n%s", names.data ? names.data : "", out->payload_hash);
  if (rc < 0)
    goto out;

  char creq_hash[65], date[9];
  sha256_hex(creq.data, creq.len, creq_hash);
  memcpy(date, key->amz_date, 8);
  date[8] = '\0';
  rc = dibba_buf_printf(&sts, "AWS4-HMAC-SHA256\n%s\n%s/%s/%s/aws4_request\n%s", key->amz_date, date, key->region,
                        key->service, creq_hash);
  if (rc < 0)
    goto out;

  /* kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request") */
  unsigned char k[32], sig[32];
  char *k0 = dibba_xasprintf("AWS4%s", key->secret_access_key);
  hmac(k0, strlen(k0), date, k);
  explicit_bzero(k0, strlen(k0));
  free(k0);
  hmac(k, sizeof k, key->region, k);
  hmac(k, sizeof k, key->service, k);
  hmac(k, sizeof k, "aws4_request", k);
  hmac(k, sizeof k, sts.data, sig);
  explicit_bzero(k, sizeof k);
  hex(sig, sizeof sig, out->signature);

  out->signed_headers = dibba_xstrdup(names.data ? names.data : "");
  out->authorization =
      dibba_xasprintf("AWS4-HMAC-SHA256 Credential=%s/%s/%s/%s/aws4_request, SignedHeaders=%s, Signature=%s",
                      key->access_key_id, date, key->region, key->service, out->signed_headers, out->signature);
  out->canonical_request = dibba_buf_steal(&creq, NULL);
  out->string_to_sign = dibba_buf_steal(&sts, NULL);
out:
  for (size_t i = 0; i < nh; i++) {
    free(h[i].name);
    free(h[i].value);
  }
  free(h);
  dibba_buf_free(&creq);
  dibba_buf_free(&names);
  dibba_buf_free(&sts);
  if (rc < 0)
    dibba_aws_sigv4_free(out);
  return rc;
}

void dibba_aws_sigv4_free(dibba_aws_sigv4_t *s) {
  free(s->canonical_request);
  free(s->string_to_sign);
  free(s->signed_headers);
  free(s->authorization);
  s->canonical_request = s->string_to_sign = s->signed_headers = s->authorization = NULL;
}
