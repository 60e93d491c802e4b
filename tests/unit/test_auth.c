/* SPDX-License-Identifier: Apache-2.0 */
/* Unit tests for lib/auth: JWT verification, passwords, users file, async login, rate limits, the user CLI. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "dibba/alloc.h"
#include "dibba/auth.h"
#include "dibba/error.h"
#include "dibba/id.h"

#include "../../lib/auth/auth-int.h"

extern char **environ;

/* Cheap scrypt so the tests stay fast; the format and code path are the same as with the defaults. */
static const dibba_auth_scrypt_t fast = {1024, 8, 1};
static const char key[] = "0123456789abcdef0123456789abcdef";
static const int64_t NOW = 1800000000;

static char *tmpdir(void) {
  char *d = dibba_xstrdup("/tmp/dibba-auth-XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(d));
  return d;
}

static void rmtree(const char *dir) {
  char *cmd = dibba_xasprintf("rm -rf '%s'", dir);
  ck_assert_int_eq(system(cmd), 0);
  free(cmd);
}

static void write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  ck_assert_ptr_nonnull(f);
  fputs(text, f);
  fclose(f);
}

static char *read_file(const char *path) {
  char *buf = NULL;
  size_t len = 0;
  ck_assert_int_eq(dibba_read_small_file(path, 1 << 20, &buf, &len), 0);
  return buf;
}

static char *hash_of(const char *pw) {
  char *h = NULL;
  ck_assert_int_eq(dibba_auth_password_hash(pw, strlen(pw), &fast, &h), 0);
  return h;
}

/* A store (in a fresh directory) with alice (admin) and bob (viewer). */
static void make_users(dibba_auth_users_t *u, char **dir) {
  *dir = tmpdir();
  char *path = dibba_xasprintf("%s/users.json", *dir);
  dibba_auth_users_init(u, path, &fast);
  free(path);
  char *h = hash_of("alice-password");
  ck_assert_int_eq(dibba_auth_users_add(u, "alice", DIBBA_AUTH_ROLE_ADMIN, h, NOW), 0);
  free(h);
  h = hash_of("bob-password");
  ck_assert_int_eq(dibba_auth_users_add(u, "bob", DIBBA_AUTH_ROLE_VIEWER, h, NOW), 0);
  free(h);
}

static void jwt_hs256(dibba_auth_jwt_t *j) {
  ck_assert_int_eq(dibba_auth_jwt_init(j, DIBBA_AUTH_HS256, key, strlen(key), 3600, 30), 0);
}

/* header.payload.signature from raw JSON texts; md NULL gives an empty signature. */
static char *craft_key(const char *hdr, const char *payload, const EVP_MD *md, const char *k) {
  char *h = dibba__b64url_encode(hdr, strlen(hdr));
  char *p = dibba__b64url_encode(payload, strlen(payload));
  char *signing = dibba_xasprintf("%s.%s", h, p);
  char *sig = dibba_xstrdup("");
  if (md) {
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    ck_assert_ptr_nonnull(HMAC(md, k, (int)strlen(k), (const unsigned char *)signing, strlen(signing), mac, &maclen));
    free(sig);
    sig = dibba__b64url_encode(mac, maclen);
  }
  char *tok = dibba_xasprintf("%s.%s", signing, sig);
  free(h);
  free(p);
  free(signing);
  free(sig);
  return tok;
}

static char *craft(const char *hdr, const char *payload, const EVP_MD *md) { return craft_key(hdr, payload, md, key); }

static char *claims_json(const char *sub, const char *role, const char *iat, const char *nbf, const char *exp) {
  return dibba_xasprintf("{\"sub\":\"%s\",\"role\":\"%s\",\"iat\":%s,\"nbf\":%s,\"exp\":%s,\"jti\":\"x-1\"}", sub, role,
                         iat, nbf, exp);
}

static const char *HS256 = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";

static int verify(const dibba_auth_jwt_t *j, const char *tok) {
  dibba_auth_claims_t c;
  return dibba_auth_jwt_verify(j, tok, strlen(tok), NOW, &c);
}

/* ---- JWT ---- */

START_TEST(jwt_valid_token_accepted) {
  dibba_auth_jwt_t j;
  dibba_auth_users_t u;
  dibba_auth_claims_t c;
  char *dir, *tok = NULL;
  int64_t exp_in = 0;
  jwt_hs256(&j);
  make_users(&u, &dir);
  ck_assert_int_eq(dibba_auth_jwt_issue(&j, "alice", DIBBA_AUTH_ROLE_ADMIN, NOW, &tok, &exp_in), 0);
  ck_assert_int_eq(exp_in, 3600);
  ck_assert_int_eq(dibba_auth_token_check(&j, &u, tok, strlen(tok), NOW + 10, &c), 0);
  ck_assert_str_eq(c.sub, "alice");
  ck_assert_int_eq(c.role, DIBBA_AUTH_ROLE_ADMIN);
  ck_assert_int_eq(c.exp, NOW + 3600);
  ck_assert_int_eq(c.iat, NOW);
  ck_assert_int_eq(c.nbf, NOW);
  ck_assert(dibba_id_valid(c.jti));
  /* jti is random: two tokens issued in the same second differ. */
  char *tok2 = NULL;
  ck_assert_int_eq(dibba_auth_jwt_issue(&j, "alice", DIBBA_AUTH_ROLE_ADMIN, NOW, &tok2, &exp_in), 0);
  ck_assert_str_ne(tok, tok2);
  /* Our crafting helper makes tokens the verifier accepts, so the rejections below are about what they change. */
  char *pl = claims_json("bob", "viewer", "1800000000", "1800000000", "1800003600");
  char *crafted = craft(HS256, pl, EVP_sha256());
  ck_assert_int_eq(dibba_auth_token_check(&j, &u, crafted, strlen(crafted), NOW, &c), 0);
  ck_assert_str_eq(c.sub, "bob");
  char *no_typ = craft("{\"alg\":\"HS256\"}", pl, EVP_sha256());
  ck_assert_int_eq(verify(&j, no_typ), 0);
  free(pl);
  free(crafted);
  free(no_typ);
  free(tok);
  free(tok2);
  dibba_auth_users_free(&u);
  dibba_auth_users_free(&u);
  dibba_auth_jwt_free(&j);
  dibba_auth_jwt_free(&j);
  rmtree(dir);
  free(dir);
}
END_TEST

START_TEST(jwt_alg_none_rejected) {
  dibba_auth_jwt_t j;
  jwt_hs256(&j);
  char *pl = claims_json("alice", "admin", "1800000000", "1800000000", "1800003600");
  char *t1 = craft("{\"alg\":\"none\",\"typ\":\"JWT\"}", pl, NULL);
  char *t2 = craft("{\"alg\":\"none\"}", pl, NULL);
  char *t3 = craft(HS256, pl, NULL); /* pinned alg named, but no signature */
  ck_assert_int_eq(verify(&j, t1), DIBBA_EFORGED);
  ck_assert_int_eq(verify(&j, t2), DIBBA_EFORGED);
  ck_assert_int_ne(verify(&j, t3), 0);
  free(pl);
  free(t1);
  free(t2);
  free(t3);
  dibba_auth_jwt_free(&j);
}
END_TEST

START_TEST(jwt_other_key_rejected) {
  dibba_auth_jwt_t j;
  jwt_hs256(&j);
  char *pl = claims_json("alice", "admin", "1800000000", "1800000000", "1800003600");
  char *t = craft_key(HS256, pl, EVP_sha256(), "another-key-another-key-another!!");
  ck_assert_int_eq(verify(&j, t), DIBBA_EFORGED);
  /* and a token issued by a server with another secret */
  dibba_auth_jwt_t other;
  char *t2 = NULL;
  int64_t e;
  ck_assert_int_eq(dibba_auth_jwt_init(&other, DIBBA_AUTH_HS256, "zzzzzzzzzzzzzzzzzzzz", 20, 3600, 30), 0);
  ck_assert_int_eq(dibba_auth_jwt_issue(&other, "alice", DIBBA_AUTH_ROLE_ADMIN, NOW, &t2, &e), 0);
  ck_assert_int_eq(verify(&j, t2), DIBBA_EFORGED);
  free(pl);
  free(t);
  free(t2);
  dibba_auth_jwt_free(&other);
  dibba_auth_jwt_free(&j);
}
END_TEST

START_TEST(jwt_rs256_header_rejected) {
  dibba_auth_jwt_t j;
  jwt_hs256(&j);
  char *pl = claims_json("alice", "admin", "1800000000", "1800000000", "1800003600");
  /* alg confusion: RS256 named, signed with HMAC-SHA256 of the shared key as if it were a public key */
  char *t1 = craft("{\"alg\":\"RS256\",\"typ\":\"JWT\"}", pl, EVP_sha256());
  char *t2 = craft("{\"alg\":\"RS256\",\"typ\":\"JWT\"}", pl, EVP_sha512());
  char *t3 = craft("{\"alg\":\"hs256\",\"typ\":\"JWT\"}", pl, EVP_sha256());
  ck_assert_int_eq(verify(&j, t1), DIBBA_EFORGED);
  ck_assert_int_eq(verify(&j, t2), DIBBA_EFORGED);
  ck_assert_int_eq(verify(&j, t3), DIBBA_EFORGED);
  free(pl);
  free(t1);
  free(t2);
  free(t3);
  dibba_auth_jwt_free(&j);
}
END_TEST

START_TEST(jwt_hs512_when_hs256_pinned_rejected) {
  dibba_auth_jwt_t j, j512;
  char *t = NULL;
  int64_t e;
  jwt_hs256(&j);
  ck_assert_int_eq(dibba_auth_jwt_init(&j512, DIBBA_AUTH_HS512, key, strlen(key), 3600, 30), 0);
  ck_assert_int_eq(dibba_auth_jwt_issue(&j512, "alice", DIBBA_AUTH_ROLE_ADMIN, NOW, &t, &e), 0);
  ck_assert_int_eq(verify(&j512, t), 0);
  ck_assert_int_eq(verify(&j, t), DIBBA_EFORGED);
  char *pl = claims_json("alice", "admin", "1800000000", "1800000000", "1800003600");
  char *t2 = craft("{\"alg\":\"HS512\",\"typ\":\"JWT\"}", pl, EVP_sha512());
  ck_assert_int_eq(verify(&j, t2), DIBBA_EFORGED);
  /* the HS256 signature under an HS512 pin is refused too */
  char *t3 = craft(HS256, pl, EVP_sha256());
  ck_assert_int_eq(verify(&j512, t3), DIBBA_EFORGED);
  free(pl);
  free(t);
  free(t2);
  free(t3);
  dibba_auth_jwt_free(&j);
  dibba_auth_jwt_free(&j512);
}
END_TEST

START_TEST(jwt_hs384_roundtrip) {
  dibba_auth_jwt_t j;
  char *t = NULL;
  int64_t e;
  ck_assert_int_eq(dibba_auth_jwt_init(&j, DIBBA_AUTH_HS384, key, strlen(key), 60, 0), 0);
  ck_assert_int_eq(dibba_auth_jwt_issue(&j, "bob", DIBBA_AUTH_ROLE_VIEWER, NOW, &t, &e), 0);
  ck_assert_int_eq(verify(&j, t), 0);
  ck_assert_int_eq(e, 60);
  free(t);
  dibba_auth_jwt_free(&j);
}
END_TEST

START_TEST(jwt_string_times_rejected) {
  dibba_auth_jwt_t j;
  jwt_hs256(&j);
  const char *cases[][3] = {
      {"1800000000", "1800000000", "\"100\""},        {"1800000000", "1800000000", "\"1800003600\""},
      {"\"1800000000\"", "1800000000", "1800003600"}, {"1800000000", "\"1800000000\"", "1800003600"},
      {"1800000000", "1800000000", "1800003600.5"},   {"1800000000", "1800000000", "null"},
      {"1800000000", "1800000000", "true"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char *pl = claims_json("alice", "admin", cases[i][0], cases[i][1], cases[i][2]);
    char *t = craft(HS256, pl, EVP_sha256());
    ck_assert_msg(verify(&j, t) == -EINVAL, "case %zu accepted: %s", i, pl);
    free(pl);
    free(t);
  }
  /* missing claims */
  /* A duplicate "exp" key, split over two literals to fit the line. */
  static const char dup_exp[] = "{\"sub\":\"alice\",\"role\":\"admin\",\"iat\":1800000000,\"nbf\":1800000000,"
                                "\"exp\":1800003600,\"exp\":1900000000,\"jti\":\"a\"}";
  const char *missing[] = {
      "{\"role\":\"admin\",\"iat\":1800000000,\"nbf\":1800000000,\"exp\":1800003600,\"jti\":\"a\"}",
      "{\"sub\":\"alice\",\"iat\":1800000000,\"nbf\":1800000000,\"exp\":1800003600,\"jti\":\"a\"}",
      "{\"sub\":\"alice\",\"role\":\"admin\",\"nbf\":1800000000,\"exp\":1800003600,\"jti\":\"a\"}",
      "{\"sub\":\"alice\",\"role\":\"admin\",\"iat\":1800000000,\"exp\":1800003600,\"jti\":\"a\"}",
      "{\"sub\":\"alice\",\"role\":\"admin\",\"iat\":1800000000,\"nbf\":1800000000,\"jti\":\"a\"}",
      "{\"sub\":\"alice\",\"role\":\"root\",\"iat\":1800000000,\"nbf\":1800000000,\"exp\":1800003600,\"jti\":\"a\"}",
      "{\"sub\":7,\"role\":\"admin\",\"iat\":1800000000,\"nbf\":1800000000,\"exp\":1800003600,\"jti\":\"a\"}",
      "{\"sub\":\"al ice\",\"role\":\"admin\",\"iat\":1800000000,\"nbf\":1800000000,\"exp\":1800003600,\"jti\":\"a\"}",
      dup_exp,
  };
  for (size_t i = 0; i < sizeof missing / sizeof missing[0]; i++) {
    char *t = craft(HS256, missing[i], EVP_sha256());
    ck_assert_msg(verify(&j, t) == -EINVAL, "case %zu accepted", i);
    free(t);
  }
  dibba_auth_jwt_free(&j);
}
END_TEST

/* The second verify of the same text reuses its parse; every check still runs on every call. */
START_TEST(jwt_reuse_keeps_checks) {
  dibba_auth_jwt_t j;
  dibba_auth_claims_t c;
  jwt_hs256(&j);
  char *pl = claims_json("alice", "admin", "1800000000", "1800000000", "1800003600");
  char *t = craft(HS256, pl, EVP_sha256());
  ck_assert_int_eq(verify(&j, t), 0);
  ck_assert_int_eq(dibba_auth_jwt_verify(&j, t, strlen(t), NOW, &c), 0);
  ck_assert_str_eq(c.sub, "alice");
  ck_assert_str_eq(c.jti, "x-1");
  ck_assert_int_eq(c.role, DIBBA_AUTH_ROLE_ADMIN);
  ck_assert_int_eq(c.exp, 1800003600);
  /* same payload text: later clock, bad signature, other key, other algorithm in the header */
  ck_assert_int_eq(dibba_auth_jwt_verify(&j, t, strlen(t), 1800003700, &c), DIBBA_EEXPIRED);
  ck_assert_int_eq(dibba_auth_jwt_verify(&j, t, strlen(t), 1799999000, &c), -ERANGE);
  char *bad = dibba_xstrdup(t);
  bad[strlen(bad) - 2] = bad[strlen(bad) - 2] == 'A' ? 'B' : 'A';
  ck_assert_int_eq(verify(&j, bad), DIBBA_EFORGED);
  char *other = craft_key(HS256, pl, EVP_sha256(), "another key of at least thirty-two bytes!");
  ck_assert_int_eq(verify(&j, other), DIBBA_EFORGED);
  char *h384 = craft("{\"alg\":\"HS384\",\"typ\":\"JWT\"}", pl, EVP_sha384());
  ck_assert_int_eq(verify(&j, h384), DIBBA_EFORGED);
  /* the other canonical order of the header, and a header that must be parsed */
  char *swapped = craft("{\"typ\":\"JWT\",\"alg\":\"HS256\"}", pl, EVP_sha256());
  ck_assert_int_eq(verify(&j, swapped), 0);
  char *crit = craft("{\"alg\":\"HS256\",\"crit\":[\"x\"]}", pl, EVP_sha256());
  ck_assert_int_eq(verify(&j, crit), DIBBA_EFORGED);
  free(pl);
  free(t);
  free(bad);
  free(other);
  free(h384);
  free(swapped);
  free(crit);
  dibba_auth_jwt_free(&j);
  dibba_auth_jwt_free(&j); /* twice is fine */
}
END_TEST

START_TEST(jwt_time_window) {
  dibba_auth_jwt_t j;
  char *t = NULL;
  int64_t e;
  jwt_hs256(&j);
  /* expired: issued two hours ago with a one-hour ttl */
  ck_assert_int_eq(dibba_auth_jwt_issue(&j, "alice", DIBBA_AUTH_ROLE_ADMIN, NOW - 7200, &t, &e), 0);
  ck_assert_int_eq(verify(&j, t), DIBBA_EEXPIRED);
  free(t);
  /* expired within the leeway still passes; just past it does not */
  char *pl = claims_json("alice", "admin", "1799996000", "1799996000", "1799999990");
  t = craft(HS256, pl, EVP_sha256());
  ck_assert_int_eq(verify(&j, t), 0);
  free(pl);
  free(t);
  pl = claims_json("alice", "admin", "1799996000", "1799996000", "1799999970");
  t = craft(HS256, pl, EVP_sha256());
  ck_assert_int_eq(verify(&j, t), DIBBA_EEXPIRED);
  free(pl);
  free(t);
  /* nbf in the future, beyond the 30 s leeway */
  pl = claims_json("alice", "admin", "1800000000", "1800000120", "1800003600");
  t = craft(HS256, pl, EVP_sha256());
  ck_assert_int_eq(verify(&j, t), -ERANGE);
  free(pl);
  free(t);
  /* nbf 10 s ahead: within the leeway */
  pl = claims_json("alice", "admin", "1800000000", "1800000010", "1800003600");
  t = craft(HS256, pl, EVP_sha256());
  ck_assert_int_eq(verify(&j, t), 0);
  free(pl);
  free(t);
  /* iat in the future beyond the leeway */
  pl = claims_json("alice", "admin", "1800000100", "1800000000", "1800003600");
  t = craft(HS256, pl, EVP_sha256());
  ck_assert_int_eq(verify(&j, t), -ERANGE);
  free(pl);
  free(t);
  dibba_auth_jwt_free(&j);
}
END_TEST

START_TEST(jwt_changed_payload_rejected) {
  dibba_auth_jwt_t j;
  char *t = NULL;
  int64_t e;
  jwt_hs256(&j);
  ck_assert_int_eq(dibba_auth_jwt_issue(&j, "bob", DIBBA_AUTH_ROLE_VIEWER, NOW, &t, &e), 0);
  ck_assert_int_eq(verify(&j, t), 0);
  char *d1 = strchr(t, '.'), *d2 = strrchr(t, '.');
  unsigned char raw[1024];
  long n = dibba__b64url_decode(d1 + 1, (size_t)(d2 - d1 - 1), raw, sizeof raw - 1);
  ck_assert_int_gt(n, 0);
  raw[n] = '\0';
  char *role = strstr((char *)raw, "\"viewer\"");
  ck_assert_ptr_nonnull(role);
  /* same length, so only the role changes */
  memcpy(role, "\"admin\" ", 8);
  char *pl = dibba__b64url_encode(raw, (size_t)n);
  *d1 = '\0';
  char *forged = dibba_xasprintf("%s.%s.%s", t, pl, d2 + 1);
  ck_assert_int_eq(verify(&j, forged), DIBBA_EFORGED);
  free(pl);
  free(forged);
  free(t);
  dibba_auth_jwt_free(&j);
}
END_TEST

START_TEST(jwt_users_store_checks) {
  dibba_auth_jwt_t j;
  dibba_auth_users_t u;
  dibba_auth_claims_t c;
  char *dir, *ta = NULL, *tb = NULL;
  int64_t e;
  jwt_hs256(&j);
  make_users(&u, &dir);
  ck_assert_int_eq(dibba_auth_jwt_issue(&j, "alice", DIBBA_AUTH_ROLE_ADMIN, NOW, &ta, &e), 0);
  ck_assert_int_eq(dibba_auth_jwt_issue(&j, "bob", DIBBA_AUTH_ROLE_VIEWER, NOW, &tb, &e), 0);
  ck_assert_int_eq(dibba_auth_token_check(&j, &u, ta, strlen(ta), NOW, &c), 0);
  ck_assert_int_eq(dibba_auth_token_check(&j, &u, tb, strlen(tb), NOW, &c), 0);
  /* role downgrade: the old admin token stops working */
  ck_assert_int_eq(dibba_auth_users_set_role(&u, "alice", DIBBA_AUTH_ROLE_OPERATOR, NOW), 0);
  ck_assert_int_eq(dibba_auth_token_check(&j, &u, ta, strlen(ta), NOW, &c), -EACCES);
  /* disabled user */
  ck_assert_int_eq(dibba_auth_users_set_enabled(&u, "bob", 0, NOW), 0);
  ck_assert_int_eq(dibba_auth_token_check(&j, &u, tb, strlen(tb), NOW, &c), -EACCES);
  ck_assert_int_eq(dibba_auth_users_set_enabled(&u, "bob", 1, NOW), 0);
  ck_assert_int_eq(dibba_auth_token_check(&j, &u, tb, strlen(tb), NOW, &c), 0);
  /* deleted user: the signature is still good, the user is gone */
  ck_assert_int_eq(dibba_auth_users_del(&u, "bob"), 0);
  ck_assert_int_eq(verify(&j, tb), 0);
  ck_assert_int_eq(dibba_auth_token_check(&j, &u, tb, strlen(tb), NOW, &c), -EACCES);
  free(ta);
  free(tb);
  dibba_auth_users_free(&u);
  dibba_auth_jwt_free(&j);
  rmtree(dir);
  free(dir);
}
END_TEST

START_TEST(jwt_malformed_rejected) {
  dibba_auth_jwt_t j;
  jwt_hs256(&j);
  char *pl = claims_json("alice", "admin", "1800000000", "1800000000", "1800003600");
  char *good = craft(HS256, pl, EVP_sha256());
  ck_assert_int_eq(verify(&j, good), 0);
  /* oversized */
  size_t big = DIBBA_AUTH_TOKEN_MAX + 1;
  char *huge = dibba_xmalloc(big + 1);
  memset(huge, 'A', big);
  huge[big] = '\0';
  ck_assert_int_eq(verify(&j, huge), -E2BIG);
  /* a correctly signed token made huge by a long claim */
  char *padded = dibba_xmalloc(9000);
  memset(padded, 'x', 8999);
  padded[8999] = '\0';
  char *bigpl = dibba_xasprintf("{\"sub\":\"alice\",\"role\":\"admin\",\"iat\":1800000000,\"nbf\":1800000000,\"exp\":"
                                "1800003600,\"jti\":\"a\",\"pad\":\"%s\"}",
                                padded);
  char *bigtok = craft(HS256, bigpl, EVP_sha256());
  ck_assert_int_eq(verify(&j, bigtok), -E2BIG);
  const char *bad[] = {"", "abc", "a.b", "a.b.c.d", "..", "!!!.e30.abc", "e30.e30.", "eyJhbGciOiJIUzI1NiJ9=.e30.AAAA"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    ck_assert_msg(verify(&j, bad[i]) != 0, "accepted %s", bad[i]);
  /* header: not JSON, an array, trailing garbage, duplicate alg, odd typ, crit */
  const char *hdrs[] = {"not json",
                        "[\"HS256\"]",
                        "{\"alg\":\"HS256\"} x",
                        "{\"alg\":\"none\",\"alg\":\"HS256\"}",
                        "{\"alg\":\"HS256\",\"typ\":\"JWS\"}",
                        "{\"alg\":\"HS256\",\"typ\":1}",
                        "{\"alg\":\"HS256\",\"crit\":[\"exp\"]}",
                        "{\"alg\":\"HS256\\u0000x\"}"};
  for (size_t i = 0; i < sizeof hdrs / sizeof hdrs[0]; i++) {
    char *t = craft(hdrs[i], pl, EVP_sha256());
    ck_assert_msg(verify(&j, t) != 0, "accepted header %s", hdrs[i]);
    free(t);
  }
  /* payload: correctly signed, but not a JSON object */
  const char *pls[] = {"not json", "[1]", "\"s\"", "{\"sub\":\"alice\"", ""};
  for (size_t i = 0; i < sizeof pls / sizeof pls[0]; i++) {
    char *t = craft(HS256, pls[i], EVP_sha256());
    ck_assert_msg(verify(&j, t) == -EINVAL, "accepted payload %s", pls[i]);
    free(t);
  }
  /* a NUL inside the given length */
  char withnul[512];
  size_t gl = strlen(good);
  memcpy(withnul, good, gl + 1);
  withnul[5] = '\0';
  dibba_auth_claims_t c;
  ck_assert_int_ne(dibba_auth_jwt_verify(&j, withnul, gl, NOW, &c), 0);
  /* a signature with a non-canonical last character (different trailing bits) */
  char *mod = dibba_xstrdup(good);
  char *last = mod + strlen(mod) - 1;
  *last = *last == 'A' ? 'B' : 'A';
  ck_assert_int_ne(verify(&j, mod), 0);
  free(mod);
  free(huge);
  free(padded);
  free(bigpl);
  free(bigtok);
  free(pl);
  free(good);
  dibba_auth_jwt_free(&j);
}
END_TEST

START_TEST(jwt_config) {
  char err[256] = "";
  char *dir = tmpdir();
  char *path = dibba_xasprintf("%s/dibba.json", dir);
  dibba_config_t cfg;
  dibba_auth_jwt_t j;
  unsetenv("DIBBA_JWT_SECRET");
  unsetenv("DIBBA_JWT_SECRET_FILE");
  write_file(path,
             "{\"auth\":{\"jwt_alg\":\"HS512\",\"jwt_secret\":\"0123456789abcdef0123\",\"token_ttl_seconds\":120}}");
  ck_assert_int_eq(dibba_config_load(&cfg, path, err, sizeof err), 0);
  ck_assert_int_eq(dibba_auth_jwt_from_config(&j, &cfg, err, sizeof err), 0);
  ck_assert_int_eq(j.alg, DIBBA_AUTH_HS512);
  ck_assert_int_eq(j.ttl, 120);
  ck_assert_int_eq(j.leeway, 30);
  dibba_auth_jwt_free(&j);
  dibba_config_free(&cfg);
  write_file(path, "{\"auth\":{\"jwt_alg\":\"none\",\"jwt_secret\":\"0123456789abcdef0123\"}}");
  ck_assert_int_eq(dibba_config_load(&cfg, path, err, sizeof err), 0);
  ck_assert_int_eq(dibba_auth_jwt_from_config(&j, &cfg, err, sizeof err), DIBBA_ECONFIG);
  ck_assert_ptr_nonnull(strstr(err, "auth.jwt_alg"));
  dibba_config_free(&cfg);
  write_file(path, "{}");
  ck_assert_int_eq(dibba_config_load(&cfg, path, err, sizeof err), 0);
  ck_assert_int_eq(dibba_auth_jwt_from_config(&j, &cfg, err, sizeof err), -ENOENT);
  ck_assert_ptr_nonnull(strstr(err, "auth.jwt_secret"));
  dibba_config_free(&cfg);
  free(path);
  rmtree(dir);
  free(dir);
}
END_TEST

/* ---- roles and names ---- */

START_TEST(roles_and_names) {
  dibba_auth_role_t r;
  ck_assert_int_eq(dibba_auth_role_parse("admin", &r), 0);
  ck_assert_int_eq(r, DIBBA_AUTH_ROLE_ADMIN);
  ck_assert_int_eq(dibba_auth_role_parse("operator", &r), 0);
  ck_assert_int_eq(dibba_auth_role_parse("viewer", &r), 0);
  ck_assert_int_eq(dibba_auth_role_parse("Admin", &r), -EINVAL);
  ck_assert_int_eq(dibba_auth_role_parse("root", &r), -EINVAL);
  ck_assert_int_eq(dibba_auth_role_parse(NULL, &r), -EINVAL);
  ck_assert(dibba_auth_role_allows(DIBBA_AUTH_ROLE_ADMIN, DIBBA_AUTH_ROLE_OPERATOR));
  ck_assert(dibba_auth_role_allows(DIBBA_AUTH_ROLE_OPERATOR, DIBBA_AUTH_ROLE_OPERATOR));
  ck_assert(dibba_auth_role_allows(DIBBA_AUTH_ROLE_OPERATOR, DIBBA_AUTH_ROLE_VIEWER));
  ck_assert(!dibba_auth_role_allows(DIBBA_AUTH_ROLE_VIEWER, DIBBA_AUTH_ROLE_OPERATOR));
  ck_assert(!dibba_auth_role_allows(DIBBA_AUTH_ROLE_OPERATOR, DIBBA_AUTH_ROLE_ADMIN));
  ck_assert(!dibba_auth_role_allows(DIBBA_AUTH_ROLE_NONE, DIBBA_AUTH_ROLE_VIEWER));
  ck_assert(!dibba_auth_role_allows(DIBBA_AUTH_ROLE_ADMIN, DIBBA_AUTH_ROLE_NONE));
  ck_assert_str_eq(dibba_auth_role_name(DIBBA_AUTH_ROLE_OPERATOR), "operator");

  ck_assert(dibba_auth_username_valid("a"));
  ck_assert(dibba_auth_username_valid("ops.team_1@example-corp"));
  char n64[65], n65[66];
  memset(n64, 'x', 64);
  n64[64] = '\0';
  memset(n65, 'x', 65);
  n65[65] = '\0';
  ck_assert(dibba_auth_username_valid(n64));
  ck_assert(!dibba_auth_username_valid(n65));
  ck_assert(!dibba_auth_username_valid(""));
  ck_assert(!dibba_auth_username_valid(NULL));
  ck_assert(!dibba_auth_username_valid("a b"));
  ck_assert(!dibba_auth_username_valid("a/b"));
  ck_assert(!dibba_auth_username_valid("é"));
  ck_assert(dibba_auth_password_valid("12345678", 8));
  ck_assert(!dibba_auth_password_valid("1234567", 7));
  ck_assert(!dibba_auth_password_valid("1234\0678", 8));
  char *big = dibba_xmalloc(1025);
  memset(big, 'p', 1025);
  ck_assert(dibba_auth_password_valid(big, 1024));
  ck_assert(!dibba_auth_password_valid(big, 1025));
  free(big);
}
END_TEST

/* ---- passwords ---- */

START_TEST(password_roundtrip) {
  char *h1 = hash_of("correct horse"), *h2 = hash_of("correct horse");
  ck_assert_int_eq(strncmp(h1, "scrypt$1024$8$1$", 16), 0);
  ck_assert_int_eq(dibba_auth_password_verify(h1, "correct horse", 13), 0);
  ck_assert_int_eq(dibba_auth_password_verify(h2, "correct horse", 13), 0);
  ck_assert_int_eq(dibba_auth_password_verify(h1, "correct horsE", 13), -EACCES);
  ck_assert_int_eq(dibba_auth_password_verify(h1, "correct hors", 12), -EACCES);
  ck_assert_int_eq(dibba_auth_password_verify(h1, "", 0), -EACCES);
  /* a fresh salt each time: same password, different hashes (and different salt fields) */
  ck_assert_str_ne(h1, h2);
  ck_assert_int_ne(strncmp(strrchr(h1, '$') - 22, strrchr(h2, '$') - 22, 22), 0);
  char *h = NULL;
  ck_assert_int_eq(dibba_auth_password_hash("short", 5, &fast, &h), -EINVAL);
  dibba_auth_scrypt_t bad = {1000, 8, 1};
  ck_assert_int_eq(dibba_auth_password_hash("long enough", 11, &bad, &h), -EINVAL);
  free(h1);
  free(h2);
}
END_TEST

START_TEST(password_default_params) {
  char *h = NULL;
  ck_assert_int_eq(dibba_auth_password_hash("default params", 14, NULL, &h), 0);
  ck_assert_int_eq(strncmp(h, "scrypt$32768$8$1$", 17), 0);
  ck_assert_int_eq(dibba_auth_password_verify(h, "default params", 14), 0);
  free(h);
}
END_TEST

START_TEST(password_garbled_hash_fails_cleanly) {
  const char *pw = "truncate me";
  char *h = hash_of(pw);
  size_t n = strlen(h);
  /* every prefix fails: -EINVAL for a bad form, never 0 */
  for (size_t len = 0; len < n; len++) {
    char *cut = dibba_xstrndup(h, len);
    ck_assert_msg(dibba_auth_password_verify(cut, pw, strlen(pw)) != 0, "prefix %zu verified", len);
    free(cut);
  }
  /* every single-character change fails */
  for (size_t i = 0; i < n; i++) {
    char *g = dibba_xstrdup(h);
    g[i] = g[i] == 'A' ? 'B' : 'A';
    ck_assert_msg(dibba_auth_password_verify(g, pw, strlen(pw)) != 0, "garbled at %zu verified", i);
    free(g);
  }
  const char *bad[] = {NULL,
                       "",
                       "bcrypt$10$abc",
                       "scrypt$$$$$",
                       "scrypt$1024$8$1$c2FsdHNhbHRzYWx0$",
                       "scrypt$1000$8$1$c2FsdHNhbHRzYWx0c2FsdA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                       "scrypt$1048576$32$1$c2FsdHNhbHRzYWx0c2FsdA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                       "scrypt$01024$8$1$c2FsdHNhbHRzYWx0c2FsdA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                       "scrypt$1024$8$1$c2FsdHNhbHRzYWx0c2FsdA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA$x",
                       "scrypt$-1024$8$1$c2FsdHNhbHRzYWx0c2FsdA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    ck_assert_int_eq(dibba_auth_password_verify(bad[i], pw, strlen(pw)), -EINVAL);
  /* well-formed hash of some other password */
  ck_assert_int_eq(
      dibba_auth_password_verify("scrypt$1024$8$1$c2FsdHNhbHRzYWx0c2FsdA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                                 pw, strlen(pw)),
      -EACCES);
  free(h);
}
END_TEST

/* ---- rate limiting ---- */

static dibba_auth_rl_t *rl_new(size_t table_max) {
  dibba_auth_rl_config_t cfg = {5, 20, 300000, table_max};
  return dibba_auth_rl_new(&cfg);
}

START_TEST(rl_user_limit_and_expiry) {
  dibba_auth_rl_t *rl = rl_new(100);
  int64_t ra = -1, t0 = 1000000;
  for (int i = 0; i < 4; i++) {
    ck_assert_int_eq(dibba_auth_rl_check(rl, "alice", "10.0.0.1", t0 + i * 1000, &ra), 0);
    dibba_auth_rl_fail(rl, "alice", "10.0.0.1", t0 + i * 1000);
  }
  ck_assert_int_eq(dibba_auth_rl_check(rl, "alice", "10.0.0.1", t0 + 4000, &ra), 0);
  dibba_auth_rl_fail(rl, "alice", "10.0.0.1", t0 + 4000);
  /* fifth failure: limited, from any address; retry when the oldest failure leaves the window */
  ck_assert_int_eq(dibba_auth_rl_check(rl, "alice", "10.0.0.1", t0 + 10000, &ra), -EBUSY);
  ck_assert_int_eq(ra, 290);
  ck_assert_int_eq(dibba_auth_rl_check(rl, "alice", "192.168.1.1", t0 + 10000, &ra), -EBUSY);
  ck_assert_int_eq(dibba_auth_rl_check(rl, "bob", "10.0.0.1", t0 + 10000, &ra), 0);
  ck_assert_int_eq(dibba_auth_rl_check(rl, "alice", NULL, t0 + 299999, &ra), -EBUSY);
  ck_assert_int_eq(ra, 1);
  /* the window moves on: the first failure expires and alice may try again */
  ck_assert_int_eq(dibba_auth_rl_check(rl, "alice", "10.0.0.1", t0 + 300000, &ra), 0);
  ck_assert_int_eq(dibba_auth_rl_check(rl, "alice", "10.0.0.1", t0 + 400000, &ra), 0);
  /* all expired: the entries are gone */
  size_t nu, na;
  dibba_auth_rl_check(rl, "alice", "10.0.0.1", t0 + 400000, &ra);
  dibba_auth_rl_size(rl, &nu, &na);
  ck_assert_uint_eq(nu, 0);
  ck_assert_uint_eq(na, 0);
  dibba_auth_rl_free(rl);
  dibba_auth_rl_free(NULL);
}
END_TEST

START_TEST(rl_address_limit_across_users) {
  dibba_auth_rl_t *rl = rl_new(100);
  int64_t ra = 0;
  char name[32];
  for (int i = 0; i < 20; i++) {
    snprintf(name, sizeof name, "user%d", i);
    ck_assert_int_eq(dibba_auth_rl_check(rl, name, "203.0.113.9", 5000 + i, &ra), 0);
    dibba_auth_rl_fail(rl, name, "203.0.113.9", 5000 + i);
  }
  ck_assert_int_eq(dibba_auth_rl_check(rl, "fresh", "203.0.113.9", 6000, &ra), -EBUSY);
  ck_assert_int_gt(ra, 0);
  ck_assert_int_le(ra, 300);
  ck_assert_int_eq(dibba_auth_rl_check(rl, "fresh", "203.0.113.10", 6000, &ra), 0);
  ck_assert_int_eq(dibba_auth_rl_check(rl, "user0", "203.0.113.10", 6000, &ra), 0);
  dibba_auth_rl_free(rl);
}
END_TEST

START_TEST(rl_success_resets_user) {
  dibba_auth_rl_t *rl = rl_new(100);
  int64_t ra = 0;
  for (int i = 0; i < 4; i++)
    dibba_auth_rl_fail(rl, "carol", "a", 1000 + i);
  dibba_auth_rl_success(rl, "carol");
  for (int i = 0; i < 4; i++)
    dibba_auth_rl_fail(rl, "carol", "b", 2000 + i);
  ck_assert_int_eq(dibba_auth_rl_check(rl, "carol", "c", 3000, &ra), 0);
  dibba_auth_rl_fail(rl, "carol", "b", 3000);
  ck_assert_int_eq(dibba_auth_rl_check(rl, "carol", "c", 3001, &ra), -EBUSY);
  dibba_auth_rl_free(rl);
}
END_TEST

START_TEST(rl_memory_bound) {
  dibba_auth_rl_t *rl = rl_new(64);
  int64_t ra = 0;
  char name[32], addr[32];
  size_t nu, na;
  for (int i = 0; i < 5000; i++) {
    snprintf(name, sizeof name, "u%d", i);
    snprintf(addr, sizeof addr, "10.%d.%d.1", i / 256, i % 256);
    dibba_auth_rl_fail(rl, name, addr, 1000 + i);
    dibba_auth_rl_size(rl, &nu, &na);
    ck_assert_uint_le(nu, 64);
    ck_assert_uint_le(na, 64);
  }
  ck_assert_uint_eq(nu, 64);
  /* the most recent attacker is still tracked and limited */
  for (int i = 0; i < 5; i++)
    dibba_auth_rl_fail(rl, "target", "x", 7000 + i);
  ck_assert_int_eq(dibba_auth_rl_check(rl, "target", NULL, 7010, &ra), -EBUSY);
  /* very long keys are clipped consistently and still counted */
  char longname[600];
  memset(longname, 'L', sizeof longname - 1);
  longname[sizeof longname - 1] = '\0';
  for (int i = 0; i < 5; i++)
    dibba_auth_rl_fail(rl, longname, NULL, 8000 + i);
  ck_assert_int_eq(dibba_auth_rl_check(rl, longname, NULL, 8010, &ra), -EBUSY);
  dibba_auth_rl_free(rl);
}
END_TEST

/* ---- users file ---- */

START_TEST(users_save_reload_perms) {
  dibba_auth_users_t u, v;
  char *dir, err[512] = "";
  struct stat st;
  make_users(&u, &dir);
  ck_assert_int_eq(dibba_auth_users_save(&u, err, sizeof err), 0);
  ck_assert_int_eq(stat(u.path, &st), 0);
  ck_assert_int_eq(st.st_mode & 0777, 0600);
  /* no temp file left behind */
  char *cmd = dibba_xasprintf("test $(ls -A '%s' | wc -l) -eq 1", dir);
  ck_assert_int_eq(system(cmd), 0);
  free(cmd);
  char *text = read_file(u.path);
  ck_assert_ptr_nonnull(strstr(text, "\"password_hash\""));
  ck_assert_ptr_nonnull(strstr(text, "\"created_at\""));
  free(text);

  dibba_auth_users_init(&v, u.path, &fast);
  ck_assert_int_eq(dibba_auth_users_load(&v, err, sizeof err), 0);
  ck_assert_uint_eq(v.n, 2);
  const dibba_auth_user_t *a = dibba_auth_users_find(&v, "alice");
  ck_assert_ptr_nonnull(a);
  ck_assert_int_eq(a->role, DIBBA_AUTH_ROLE_ADMIN);
  ck_assert_int_eq(a->enabled, 1);
  ck_assert_int_eq(a->created_at, NOW);
  ck_assert_int_eq(dibba_auth_password_verify(a->password_hash, "alice-password", 14), 0);

  /* a change saved by one store is seen by the other's reload */
  ck_assert_int_eq(dibba_auth_users_set_role(&u, "bob", DIBBA_AUTH_ROLE_OPERATOR, NOW + 5), 0);
  ck_assert_int_eq(dibba_auth_users_del(&u, "alice"), 0);
  ck_assert_int_eq(dibba_auth_users_save(&u, err, sizeof err), 0);
  ck_assert_int_eq(stat(u.path, &st), 0);
  ck_assert_int_eq(st.st_mode & 0777, 0600);
  ck_assert_int_eq(dibba_auth_users_reload(&v, err, sizeof err), 0);
  ck_assert_uint_eq(v.n, 1);
  ck_assert_ptr_null(dibba_auth_users_find(&v, "alice"));
  ck_assert_int_eq(dibba_auth_users_find(&v, "bob")->role, DIBBA_AUTH_ROLE_OPERATOR);
  ck_assert_int_eq(dibba_auth_users_find(&v, "bob")->updated_at, NOW + 5);

  /* the list has no hashes */
  json_t *list = dibba_auth_users_list(&v);
  char *dump = json_dumps(list, 0);
  ck_assert_ptr_null(strstr(dump, "scrypt"));
  ck_assert_ptr_null(strstr(dump, "password"));
  ck_assert_ptr_nonnull(strstr(dump, "\"operator\""));
  free(dump);
  json_decref(list);

  dibba_auth_users_free(&u);
  dibba_auth_users_free(&v);
  rmtree(dir);
  free(dir);
}
END_TEST

START_TEST(users_invalid_file_keeps_state) {
  dibba_auth_users_t u;
  char *dir, err[512] = "";
  make_users(&u, &dir);
  ck_assert_int_eq(dibba_auth_users_save(&u, err, sizeof err), 0);
  char *good = read_file(u.path);
  char *h = hash_of("whatever-pass");
  const char *bad[] = {
      "not json",
      "[]",
      "{\"version\":2,\"users\":[]}",
      "{\"version\":1,\"users\":[{\"name\":\"x\"}]}",
      "{\"version\":1,\"users\":[{\"name\":\"x y\",\"role\":\"admin\",\"enabled\":true,\"password_hash\":\"%s\","
      "\"created_at\":1,\"updated_at\":1}]}",
      "{\"version\":1,\"users\":[{\"name\":\"x\",\"role\":\"root\",\"enabled\":true,\"password_hash\":\"%s\","
      "\"created_at\":1,\"updated_at\":1}]}",
      "{\"version\":1,\"users\":[{\"name\":\"x\",\"role\":\"admin\",\"enabled\":\"yes\",\"password_hash\":\"%s\","
      "\"created_at\":1,\"updated_at\":1}]}",
      "{\"version\":1,\"users\":[{\"name\":\"x\",\"role\":\"admin\",\"enabled\":true,\"password_hash\":\"plain\","
      "\"created_at\":1,\"updated_at\":1}]}",
      "{\"version\":1,\"users\":[{\"name\":\"x\",\"role\":\"admin\",\"enabled\":true,\"password_hash\":\"%s\","
      "\"created_at\":\"1\",\"updated_at\":1}]}",
      "{\"version\":1,\"users\":[{\"name\":\"x\",\"role\":\"admin\",\"enabled\":true,\"password_hash\":\"%s\","
      "\"created_at\":1,\"updated_at\":1},{\"name\":\"x\",\"role\":\"viewer\",\"enabled\":true,\"password_hash\":"
      "\"%s\",\"created_at\":1,\"updated_at\":1}]}",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char *text = dibba_xstrdup(bad[i]);
    /* fill in the hash wherever the case wants a valid one */
    while (strstr(text, "%s")) {
      char *p = strstr(text, "%s");
      *p = '\0';
      char *next = dibba_xasprintf("%s%s%s", text, h, p + 2);
      free(text);
      text = next;
    }
    write_file(u.path, text);
    err[0] = '\0';
    ck_assert_msg(dibba_auth_users_reload(&u, err, sizeof err) == -EINVAL, "case %zu loaded", i);
    ck_assert_ptr_nonnull(strstr(err, u.path));
    ck_assert_uint_eq(u.n, 2);
    ck_assert_ptr_nonnull(dibba_auth_users_find(&u, "alice"));
    free(text);
  }
  /* a vanished file also keeps the old state on reload, but is an empty store on first load */
  unlink(u.path);
  ck_assert_int_eq(dibba_auth_users_reload(&u, err, sizeof err), -ENOENT);
  ck_assert_uint_eq(u.n, 2);
  dibba_auth_users_t e;
  dibba_auth_users_init(&e, u.path, &fast);
  ck_assert_int_eq(dibba_auth_users_load(&e, err, sizeof err), 0);
  ck_assert_uint_eq(e.n, 0);
  dibba_auth_users_free(&e);
  /* the good file loads again */
  write_file(u.path, good);
  ck_assert_int_eq(dibba_auth_users_reload(&u, err, sizeof err), 0);
  ck_assert_uint_eq(u.n, 2);
  free(good);
  free(h);
  dibba_auth_users_free(&u);
  rmtree(dir);
  free(dir);
}
END_TEST

START_TEST(users_crud_validation) {
  dibba_auth_users_t u;
  char *dir;
  make_users(&u, &dir);
  char *h = hash_of("carol-password");
  ck_assert_int_eq(dibba_auth_users_add(&u, "alice", DIBBA_AUTH_ROLE_VIEWER, h, NOW), -EEXIST);
  ck_assert_int_eq(dibba_auth_users_add(&u, "bad name", DIBBA_AUTH_ROLE_VIEWER, h, NOW), -EINVAL);
  ck_assert_int_eq(dibba_auth_users_add(&u, "carol", DIBBA_AUTH_ROLE_NONE, h, NOW), -EINVAL);
  ck_assert_int_eq(dibba_auth_users_add(&u, "carol", DIBBA_AUTH_ROLE_VIEWER, "plaintext", NOW), -EINVAL);
  ck_assert_int_eq(dibba_auth_users_add(&u, "carol", DIBBA_AUTH_ROLE_VIEWER, h, NOW), 0);
  ck_assert_int_eq(dibba_auth_users_set_role(&u, "nobody", DIBBA_AUTH_ROLE_VIEWER, NOW), -ENOENT);
  ck_assert_int_eq(dibba_auth_users_set_enabled(&u, "nobody", 0, NOW), -ENOENT);
  ck_assert_int_eq(dibba_auth_users_set_hash(&u, "nobody", h, NOW), -ENOENT);
  ck_assert_int_eq(dibba_auth_users_set_hash(&u, "alice", "x", NOW), -EINVAL);
  ck_assert_int_eq(dibba_auth_users_set_hash(&u, "alice", h, NOW + 1), 0);
  ck_assert_int_eq(dibba_auth_password_verify(dibba_auth_users_find(&u, "alice")->password_hash, "carol-password", 14),
                   0);
  ck_assert_int_eq(dibba_auth_users_del(&u, "nobody"), -ENOENT);
  ck_assert_int_eq(dibba_auth_users_del(&u, "alice"), 0);
  ck_assert_int_eq(dibba_auth_users_del(&u, "alice"), -ENOENT);
  ck_assert_uint_eq(u.n, 2);
  ck_assert_ptr_nonnull(dibba_auth_users_find(&u, "carol"));
  free(h);
  dibba_auth_users_free(&u);
  rmtree(dir);
  free(dir);
}
END_TEST

START_TEST(users_path_resolution) {
  char err[256] = "", *p = NULL;
  dibba_config_t cfg;
  char *dir = tmpdir();
  char *conf = dibba_xasprintf("%s/dibba.json", dir);
  unsetenv("DIBBA_USERS_FILE");
  write_file(conf, "{}");
  ck_assert_int_eq(dibba_config_load(&cfg, conf, err, sizeof err), 0);
  ck_assert_int_eq(dibba_auth_users_path(&cfg, &p, err, sizeof err), 0);
  char *want = dibba_xasprintf("%s/users.json", dir);
  ck_assert_str_eq(p, want);
  free(p);
  free(want);
  dibba_config_free(&cfg);
  write_file(conf, "{\"auth\":{\"users_file\":\"sub/u.json\"}}");
  ck_assert_int_eq(dibba_config_load(&cfg, conf, err, sizeof err), 0);
  ck_assert_int_eq(dibba_auth_users_path(&cfg, &p, err, sizeof err), 0);
  want = dibba_xasprintf("%s/sub/u.json", dir);
  ck_assert_str_eq(p, want);
  free(p);
  free(want);
  dibba_config_free(&cfg);
  write_file(conf, "{\"auth\":{\"users_file\":\"/abs/u.json\"}}");
  ck_assert_int_eq(dibba_config_load(&cfg, conf, err, sizeof err), 0);
  ck_assert_int_eq(dibba_auth_users_path(&cfg, &p, err, sizeof err), 0);
  ck_assert_str_eq(p, "/abs/u.json");
  free(p);
  dibba_config_free(&cfg);
  free(conf);
  rmtree(dir);
  free(dir);
}
END_TEST

static int saves_done;
static int save_status_sum;

static void on_saved(dibba_auth_users_t *u, int status, void *data) {
  (void)u;
  saves_done++;
  save_status_sum += status;
  ck_assert_int_eq(saves_done, (int)(intptr_t)data);
}

START_TEST(users_save_async) {
  uv_loop_t loop;
  dibba_auth_users_t u;
  char *dir, err[256];
  make_users(&u, &dir);
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  saves_done = save_status_sum = 0;
  ck_assert_int_eq(dibba_auth_users_save_async(&loop, &u, on_saved, (void *)1), 0);
  ck_assert_int_eq(dibba_auth_users_set_role(&u, "bob", DIBBA_AUTH_ROLE_ADMIN, NOW), 0);
  ck_assert_int_eq(dibba_auth_users_save_async(&loop, &u, on_saved, (void *)2), 0);
  ck_assert_int_eq(dibba_auth_users_set_enabled(&u, "bob", 0, NOW), 0);
  ck_assert_int_eq(dibba_auth_users_save_async(&loop, &u, on_saved, (void *)3), 0);
  ck_assert_uint_eq(u.pending, 3);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(saves_done, 3);
  ck_assert_int_eq(save_status_sum, 0);
  ck_assert_uint_eq(u.pending, 0);
  dibba_auth_users_t v;
  dibba_auth_users_init(&v, u.path, &fast);
  ck_assert_int_eq(dibba_auth_users_load(&v, err, sizeof err), 0);
  ck_assert_int_eq(dibba_auth_users_find(&v, "bob")->role, DIBBA_AUTH_ROLE_ADMIN);
  ck_assert_int_eq(dibba_auth_users_find(&v, "bob")->enabled, 0);
  dibba_auth_users_free(&v);
  /* a failing save reports its error */
  free(u.path);
  u.path = dibba_xasprintf("%s/missing-dir/users.json", dir);
  saves_done = 0;
  ck_assert_int_eq(dibba_auth_users_save_async(&loop, &u, on_saved, (void *)1), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(saves_done, 1);
  ck_assert_int_eq(save_status_sum, -ENOENT);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  dibba_auth_users_free(&u);
  rmtree(dir);
  free(dir);
}
END_TEST

/* ---- async login ---- */

typedef struct login_result_s {
  int called;
  int status;
  dibba_auth_role_t role;
  char name[80];
} login_result_t;

static void on_login(int status, const char *name, dibba_auth_role_t role, void *data) {
  login_result_t *r = data;
  r->called++;
  r->status = status;
  r->role = role;
  snprintf(r->name, sizeof r->name, "%s", name);
}

static int login(uv_loop_t *loop, dibba_auth_users_t *u, const char *name, const char *pw, login_result_t *res) {
  memset(res, 0, sizeof *res);
  return dibba_auth_login_async(loop, u, name, pw, strlen(pw), on_login, res);
}

START_TEST(login_async) {
  uv_loop_t loop;
  dibba_auth_users_t u;
  char *dir;
  login_result_t ok, wrong, unknown, disabled, deleted, changed;
  make_users(&u, &dir);
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  char *h = hash_of("carol-password");
  ck_assert_int_eq(dibba_auth_users_add(&u, "carol", DIBBA_AUTH_ROLE_OPERATOR, h, NOW), 0);
  ck_assert_int_eq(dibba_auth_users_add(&u, "dave", DIBBA_AUTH_ROLE_OPERATOR, h, NOW), 0);
  ck_assert_int_eq(dibba_auth_users_set_enabled(&u, "dave", 0, NOW), 0);
  ck_assert_int_eq(dibba_auth_users_add(&u, "erin", DIBBA_AUTH_ROLE_OPERATOR, h, NOW), 0);

  ck_assert_int_eq(login(&loop, &u, "alice", "alice-password", &ok), 0);
  ck_assert_int_eq(login(&loop, &u, "alice", "alice-passwore", &wrong), 0);
  ck_assert_int_eq(login(&loop, &u, "mallory", "alice-password", &unknown), 0);
  ck_assert_int_eq(login(&loop, &u, "dave", "carol-password", &disabled), 0);
  ck_assert_int_eq(login(&loop, &u, "carol", "carol-password", &deleted), 0);
  ck_assert_int_eq(login(&loop, &u, "erin", "carol-password", &changed), 0);
  /* never called back synchronously */
  ck_assert_int_eq(ok.called, 0);
  ck_assert_uint_eq(u.pending, 6);
  /* while scrypt runs: carol is deleted, erin gets a new password */
  ck_assert_int_eq(dibba_auth_users_del(&u, "carol"), 0);
  char *h2 = hash_of("erin-new-password");
  ck_assert_int_eq(dibba_auth_users_set_hash(&u, "erin", h2, NOW), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(ok.called, 1);
  ck_assert_int_eq(ok.status, 0);
  ck_assert_int_eq(ok.role, DIBBA_AUTH_ROLE_ADMIN);
  ck_assert_str_eq(ok.name, "alice");
  ck_assert_int_eq(wrong.called, 1);
  ck_assert_int_eq(wrong.status, -EACCES);
  ck_assert_int_eq(unknown.status, -EACCES);
  ck_assert_int_eq(disabled.status, -EACCES);
  ck_assert_int_eq(deleted.called, 1);
  ck_assert_int_eq(deleted.status, -EACCES);
  ck_assert_int_eq(changed.status, -EACCES);
  ck_assert_uint_eq(u.pending, 0);
  char *big = dibba_xmalloc(2000);
  memset(big, 'p', 2000);
  ck_assert_int_eq(dibba_auth_login_async(&loop, &u, "alice", big, 2000, on_login, &ok), -EINVAL);
  free(big);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  free(h);
  free(h2);
  dibba_auth_users_free(&u);
  rmtree(dir);
  free(dir);
}
END_TEST

static char *async_hash;
static int async_hash_status = 1;

static void on_hashed(int status, const char *hash, void *data) {
  (void)data;
  async_hash_status = status;
  async_hash = hash ? dibba_xstrdup(hash) : NULL;
}

START_TEST(password_hash_async) {
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  ck_assert_int_eq(dibba_auth_password_hash_async(&loop, "short", 5, &fast, on_hashed, NULL), -EINVAL);
  ck_assert_int_eq(dibba_auth_password_hash_async(&loop, "async-password", 14, &fast, on_hashed, NULL), 0);
  ck_assert_int_eq(async_hash_status, 1);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(async_hash_status, 0);
  ck_assert_ptr_nonnull(async_hash);
  ck_assert_int_eq(dibba_auth_password_verify(async_hash, "async-password", 14), 0);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  free(async_hash);
}
END_TEST

/* ---- CLI, through the built dibba-api ---- */

static char *api_bin(void) {
  const char *env = getenv("DIBBA_API_BIN");
  if (env)
    return dibba_xstrdup(env);
  char self[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  ck_assert_int_gt(n, 0);
  self[n] = '\0';
  /* build/tests/unit/test-auth -> build/daemons/api/dibba-api */
  return dibba_xasprintf("%s/../../daemons/api/dibba-api", dirname(self));
}

/* Run dibba-api --config CONF ARGS... with stdin_text (NULL: /dev/null); stdout+stderr go to *out. */
static int run_cli(const char *conf, const char *stdin_text, char **out, const char *const *args) {
  char *bin = api_bin();
  char *dir = tmpdir();
  char *in_path = dibba_xasprintf("%s/in", dir), *out_path = dibba_xasprintf("%s/out", dir);
  write_file(in_path, stdin_text ? stdin_text : "");
  const char *argv[32];
  int argc = 0;
  argv[argc++] = bin;
  argv[argc++] = "--config";
  argv[argc++] = conf;
  for (; *args; args++)
    argv[argc++] = *args;
  argv[argc] = NULL;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, stdin_text ? in_path : "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, out_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  pid_t pid;
  ck_assert_msg(access(bin, X_OK) == 0, "dibba-api not built at %s", bin);
  ck_assert_int_eq(posix_spawn(&pid, bin, &fa, NULL, (char *const *)argv, environ), 0);
  posix_spawn_file_actions_destroy(&fa);
  int st = 0;
  ck_assert_int_eq(waitpid(pid, &st, 0), pid);
  ck_assert(WIFEXITED(st));
  *out = read_file(out_path);
  rmtree(dir);
  free(dir);
  free(in_path);
  free(out_path);
  free(bin);
  return WEXITSTATUS(st);
}

#define CLI(conf, in, out, ...) run_cli(conf, in, out, (const char *const[]){__VA_ARGS__, NULL})

START_TEST(cli_user_commands) {
  char *dir = tmpdir(), *out = NULL, err[256];
  char *conf = dibba_xasprintf("%s/dibba.json", dir), *users = dibba_xasprintf("%s/users.json", dir);
  unsetenv("DIBBA_USERS_FILE");
  write_file(conf, "{\"auth\":{\"scrypt_n\":1024}}");

  ck_assert_int_eq(CLI(conf, "s3cret-admin-pw\n", &out, "user", "add", "admin", "--role", "admin", "--password-stdin"),
                   0);
  free(out);
  struct stat st;
  ck_assert_int_eq(stat(users, &st), 0);
  ck_assert_int_eq(st.st_mode & 0777, 0600);
  dibba_auth_users_t u;
  dibba_auth_users_init(&u, users, &fast);
  ck_assert_int_eq(dibba_auth_users_load(&u, err, sizeof err), 0);
  ck_assert_int_eq(dibba_auth_users_find(&u, "admin")->role, DIBBA_AUTH_ROLE_ADMIN);
  /* newline trimmed: the password is exactly the line */
  ck_assert_int_eq(dibba_auth_password_verify(dibba_auth_users_find(&u, "admin")->password_hash, "s3cret-admin-pw", 15),
                   0);
  dibba_auth_users_free(&u);

  /* duplicate add */
  ck_assert_int_eq(
      CLI(conf, "another-password\n", &out, "user", "add", "admin", "--role", "viewer", "--password-stdin"), 1);
  ck_assert_ptr_nonnull(strstr(out, "user exists"));
  ck_assert_ptr_null(strchr(strchr(out, '\n') + 1, '\n')); /* one line */
  free(out);
  /* bad role */
  ck_assert_int_eq(CLI(conf, "another-password\n", &out, "user", "add", "op", "--role", "root", "--password-stdin"), 1);
  ck_assert_ptr_nonnull(strstr(out, "unknown role"));
  free(out);
  /* no TTY and no --password-stdin */
  ck_assert_int_eq(CLI(conf, NULL, &out, "user", "add", "op", "--role", "operator"), 1);
  ck_assert_ptr_nonnull(strstr(out, "--password-stdin"));
  free(out);
  /* too short a password */
  ck_assert_int_eq(CLI(conf, "short\n", &out, "user", "add", "op", "--role", "operator", "--password-stdin"), 1);
  ck_assert_ptr_nonnull(strstr(out, "8 to 1024"));
  free(out);
  /* bad name */
  ck_assert_int_eq(CLI(conf, "operator-pass\n", &out, "user", "add", "o p", "--role", "operator", "--password-stdin"),
                   1);
  free(out);
  ck_assert_int_eq(CLI(conf, "operator-pass\r\n", &out, "user", "add", "op", "--role", "operator", "--password-stdin"),
                   0);
  free(out);

  ck_assert_int_eq(CLI(conf, NULL, &out, "user", "list"), 0);
  ck_assert_ptr_nonnull(strstr(out, "NAME"));
  ck_assert_ptr_nonnull(strstr(out, "admin"));
  ck_assert_ptr_nonnull(strstr(out, "operator"));
  ck_assert_ptr_null(strstr(out, "scrypt"));
  free(out);

  ck_assert_int_eq(CLI(conf, "a-new-password\n", &out, "user", "passwd", "op", "--password-stdin"), 0);
  free(out);
  ck_assert_int_eq(CLI(conf, "a-new-password\n", &out, "user", "passwd", "ghost", "--password-stdin"), 1);
  ck_assert_ptr_nonnull(strstr(out, "no such user"));
  free(out);
  ck_assert_int_eq(CLI(conf, NULL, &out, "user", "role", "op", "viewer"), 0);
  free(out);
  ck_assert_int_eq(CLI(conf, NULL, &out, "user", "role", "op", "superuser"), 1);
  free(out);
  ck_assert_int_eq(CLI(conf, NULL, &out, "user", "disable", "op"), 0);
  free(out);

  dibba_auth_users_init(&u, users, &fast);
  ck_assert_int_eq(dibba_auth_users_load(&u, err, sizeof err), 0);
  const dibba_auth_user_t *op = dibba_auth_users_find(&u, "op");
  ck_assert_ptr_nonnull(op);
  ck_assert_int_eq(op->role, DIBBA_AUTH_ROLE_VIEWER);
  ck_assert_int_eq(op->enabled, 0);
  ck_assert_int_eq(dibba_auth_password_verify(op->password_hash, "a-new-password", 14), 0);
  ck_assert_int_eq(dibba_auth_password_verify(op->password_hash, "operator-pass", 13), -EACCES);
  dibba_auth_users_free(&u);

  ck_assert_int_eq(CLI(conf, NULL, &out, "user", "list"), 0);
  ck_assert_ptr_nonnull(strstr(out, " no\n"));
  free(out);
  ck_assert_int_eq(CLI(conf, NULL, &out, "user", "enable", "op"), 0);
  free(out);
  ck_assert_int_eq(CLI(conf, NULL, &out, "user", "del", "op"), 0);
  free(out);
  ck_assert_int_eq(CLI(conf, NULL, &out, "user", "del", "op"), 1);
  ck_assert_ptr_nonnull(strstr(out, "no such user"));
  free(out);
  ck_assert_int_eq(CLI(conf, NULL, &out, "user", "frobnicate", "op"), 2);
  free(out);
  ck_assert_int_eq(CLI(conf, NULL, &out, "group", "list"), 2);
  free(out);

  dibba_auth_users_init(&u, users, &fast);
  ck_assert_int_eq(dibba_auth_users_load(&u, err, sizeof err), 0);
  ck_assert_uint_eq(u.n, 1);
  dibba_auth_users_free(&u);

  /* a broken users file: one clear line, non-zero exit, file untouched */
  write_file(users, "{broken");
  ck_assert_int_eq(CLI(conf, NULL, &out, "user", "list"), 1);
  ck_assert_ptr_nonnull(strstr(out, users));
  free(out);
  out = read_file(users);
  ck_assert_str_eq(out, "{broken");
  free(out);

  free(conf);
  free(users);
  rmtree(dir);
  free(dir);
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("auth");
  TCase *tc = tcase_create("jwt");
  tcase_add_test(tc, jwt_valid_token_accepted);
  tcase_add_test(tc, jwt_reuse_keeps_checks);
  tcase_add_test(tc, jwt_alg_none_rejected);
  tcase_add_test(tc, jwt_other_key_rejected);
  tcase_add_test(tc, jwt_rs256_header_rejected);
  tcase_add_test(tc, jwt_hs512_when_hs256_pinned_rejected);
  tcase_add_test(tc, jwt_hs384_roundtrip);
  tcase_add_test(tc, jwt_string_times_rejected);
  tcase_add_test(tc, jwt_time_window);
  tcase_add_test(tc, jwt_changed_payload_rejected);
  tcase_add_test(tc, jwt_users_store_checks);
  tcase_add_test(tc, jwt_malformed_rejected);
  tcase_add_test(tc, jwt_config);
  suite_add_tcase(s, tc);
  tc = tcase_create("passwords");
  tcase_add_test(tc, roles_and_names);
  tcase_add_test(tc, password_roundtrip);
  tcase_add_test(tc, password_default_params);
  tcase_add_test(tc, password_garbled_hash_fails_cleanly);
  suite_add_tcase(s, tc);
  tc = tcase_create("ratelimit");
  tcase_add_test(tc, rl_user_limit_and_expiry);
  tcase_add_test(tc, rl_address_limit_across_users);
  tcase_add_test(tc, rl_success_resets_user);
  tcase_add_test(tc, rl_memory_bound);
  suite_add_tcase(s, tc);
  tc = tcase_create("users");
  tcase_add_test(tc, users_save_reload_perms);
  tcase_add_test(tc, users_invalid_file_keeps_state);
  tcase_add_test(tc, users_crud_validation);
  tcase_add_test(tc, users_path_resolution);
  tcase_add_test(tc, users_save_async);
  tcase_add_test(tc, login_async);
  tcase_add_test(tc, password_hash_async);
  suite_add_tcase(s, tc);
  tc = tcase_create("cli");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, cli_user_commands);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  dibba_alloc_init();
  SRunner *sr = srunner_create(suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
