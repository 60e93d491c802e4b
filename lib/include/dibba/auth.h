/* SPDX-License-Identifier: Apache-2.0 */
/* Authentication: roles, scrypt passwords, the users file, pinned-algorithm JWTs, login rate limits, `user` CLI. */
#ifndef DIBBA_AUTH_H
#define DIBBA_AUTH_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "dibba/config.h"

/* ---- Roles ------------------------------------------------------------------------------------------------ */

/* Ordered: a higher role can do everything a lower one can. */
typedef enum {
  DIBBA_AUTH_ROLE_NONE = 0,
  DIBBA_AUTH_ROLE_VIEWER = 1,
  DIBBA_AUTH_ROLE_OPERATOR = 2,
  DIBBA_AUTH_ROLE_ADMIN = 3,
} dibba_auth_role_t;

/* Parse "admin", "operator" or "viewer" (exact, lower case). Returns 0 or -EINVAL. */
int dibba_auth_role_parse(const char *s, dibba_auth_role_t *out);
/* The static name of a role ("admin", ...), or "none". */
const char *dibba_auth_role_name(dibba_auth_role_t role);
/* 1 if a holder of `have` may do what needs `need` (admin > operator > viewer), else 0. NONE allows nothing. */
int dibba_auth_role_allows(dibba_auth_role_t have, dibba_auth_role_t need);

/* ---- Names and passwords ---------------------------------------------------------------------------------- */

#define DIBBA_AUTH_NAME_MAX 64
#define DIBBA_AUTH_PASSWORD_MIN 8
#define DIBBA_AUTH_PASSWORD_MAX 1024

/* 1 if name is 1-64 characters of [A-Za-z0-9._@-], else 0. Names are case-sensitive. */
int dibba_auth_username_valid(const char *name);
/* 1 if the password is 8-1024 bytes with no NUL byte, else 0. */
int dibba_auth_password_valid(const char *pw, size_t len);

/* scrypt cost parameters. New hashes use the store's; verification uses the ones stored in the hash. */
typedef struct dibba_auth_scrypt_s {
  uint64_t n; /* CPU/memory cost, a power of two in [2, 2^20] */
  uint32_t r; /* block size, 1-32 */
  uint32_t p; /* parallelism, 1-16 */
} dibba_auth_scrypt_t;

/* Defaults: N=32768, r=8, p=1 (32 MiB, some tens of ms). Verification refuses 128*r*N above 1 GiB. */
#define DIBBA_AUTH_SCRYPT_DEFAULT ((dibba_auth_scrypt_t){32768, 8, 1})

/* Hash a password with scrypt and a fresh 16-byte random salt into a malloc'd string
 * "scrypt$N$r$p$<salt b64url>$<hash b64url>" (caller frees). params NULL means the defaults. Slow by design:
 * call it from a worker thread or a CLI, not on the loop. Returns 0, -EINVAL (bad password or parameters) or
 * -ENOMEM if OpenSSL refuses the memory. */
int dibba_auth_password_hash(const char *pw, size_t len, const dibba_auth_scrypt_t *params, char **out);
/* Check a password against a stored hash in constant time. Returns 0 on a match, -EACCES on a mismatch, and
 * -EINVAL if the stored hash is malformed or its parameters are out of bounds (nothing is computed then). */
int dibba_auth_password_verify(const char *stored, const char *pw, size_t len);

/* ---- Users store ------------------------------------------------------------------------------------------ */

typedef struct dibba_auth_user_s {
  char *name;
  dibba_auth_role_t role;
  int enabled;
  char *password_hash;
  int64_t created_at; /* Unix seconds */
  int64_t updated_at;
} dibba_auth_user_t;

/* The users, loaded from one JSON file: {"version":1,"users":[{name, role, enabled, password_hash, created_at,
 * updated_at}, ...]}. Everything here runs on the loop thread only. */
typedef struct dibba_auth_users_s {
  char *path;
  dibba_auth_user_t *users;
  size_t n;
  dibba_auth_scrypt_t params;      /* for new hashes */
  char *dummy_hash;                /* verified against when a user does not exist, so timing does not tell */
  unsigned pending;                /* async logins and saves in flight; the store must outlive them */
  struct dibba__auth_save_s *save; /* async save state, internal */
} dibba_auth_users_t;

#define DIBBA_AUTH_USERS_MAX 10000
#define DIBBA_AUTH_USERS_FILE_MAX (4 * 1024 * 1024)

/* Resolve the users file path into a malloc'd string: auth.users_file (or DIBBA_USERS_FILE) when set, a
 * relative value being taken relative to the config file's directory; otherwise "users.json" next to the
 * config file; otherwise DIBBA_SYSCONFDIR "/users.json". Returns 0 or DIBBA_ECONFIG with err filled. */
int dibba_auth_users_path(const dibba_config_t *cfg, char **out, char *err, size_t errlen);
/* Read auth.scrypt_n / auth.scrypt_r / auth.scrypt_p (defaults above). Returns 0 or DIBBA_ECONFIG. */
int dibba_auth_scrypt_config(const dibba_config_t *cfg, dibba_auth_scrypt_t *out, char *err, size_t errlen);

/* Initialise an empty store for path (copied) and params (NULL: defaults). Does not read the file. */
void dibba_auth_users_init(dibba_auth_users_t *u, const char *path, const dibba_auth_scrypt_t *params);
/* Free everything; safe to call twice. Aborts if async work is still pending (a programming error). */
void dibba_auth_users_free(dibba_auth_users_t *u);
/* First load: a missing file gives an empty store. Returns 0, or -EINVAL / -EFBIG / -errno with one line in err;
 * on error the store is unchanged. Small bounded synchronous read: start-up use. */
int dibba_auth_users_load(dibba_auth_users_t *u, char *err, size_t errlen);
/* Re-read the file after it changed (the API calls this from its uv_fs_event watcher). Any error, including a
 * missing file, keeps the old users and returns < 0 with one line in err. */
int dibba_auth_users_reload(dibba_auth_users_t *u, char *err, size_t errlen);
/* Write the file atomically: temp file in the same directory, mode 0600, fsync, rename, fsync the directory.
 * Synchronous (CLI, tests). Returns 0 or a negative errno with one line in err. */
int dibba_auth_users_save(dibba_auth_users_t *u, char *err, size_t errlen);

typedef void (*dibba_auth_save_cb)(dibba_auth_users_t *u, int status, void *data);
/* Save the current users from libuv's worker pool. The contents are serialised on the loop now; saves never
 * overlap and complete in order. cb runs on the loop with 0 or a negative errno. If a save fails the in-memory
 * state is ahead of the file: call dibba_auth_users_reload to go back to the file. Returns 0 or a uv error
 * (then cb is not called). */
int dibba_auth_users_save_async(uv_loop_t *loop, dibba_auth_users_t *u, dibba_auth_save_cb cb, void *data);

/* The user named name, or NULL. The pointer is valid until the next change to the store. */
const dibba_auth_user_t *dibba_auth_users_find(const dibba_auth_users_t *u, const char *name);
/* In-memory changes; the caller then saves (dibba_auth_users_save[_async]). now is Unix seconds.
 * add: -EINVAL (bad name, role NONE or malformed hash), -EEXIST, -ENOSPC (DIBBA_AUTH_USERS_MAX). hash is copied.
 * others: -ENOENT for an unknown user, -EINVAL for bad arguments. */
int dibba_auth_users_add(dibba_auth_users_t *u, const char *name, dibba_auth_role_t role, const char *hash,
                         int64_t now);
int dibba_auth_users_set_role(dibba_auth_users_t *u, const char *name, dibba_auth_role_t role, int64_t now);
int dibba_auth_users_set_enabled(dibba_auth_users_t *u, const char *name, int enabled, int64_t now);
int dibba_auth_users_set_hash(dibba_auth_users_t *u, const char *name, const char *hash, int64_t now);
int dibba_auth_users_del(dibba_auth_users_t *u, const char *name);
/* A new JSON array of {name, role, enabled, created_at, updated_at}, without hashes (caller decrefs). */
json_t *dibba_auth_users_list(const dibba_auth_users_t *u);

/* ---- Async login ------------------------------------------------------------------------------------------ */

/* status: 0 (name and role are the user's), -EACCES (unknown user, wrong password or disabled account: the same
 * answer for all three), or UV_ECANCELED. name is only valid during the call. */
typedef void (*dibba_auth_login_cb)(int status, const char *name, dibba_auth_role_t role, void *data);

/* Check a username and password without blocking the loop: scrypt runs on libuv's worker pool (uv_queue_work)
 * against a copy of the stored hash, or against a dummy hash when the user does not exist. When the work is done
 * the user is looked up again, so a user deleted, disabled or given a new password meanwhile is refused.
 * The password is copied and wiped. cb is called exactly once, on the loop, never from inside this call.
 * Returns 0, -EINVAL (NULL arguments, a name over 256 bytes or a password over DIBBA_AUTH_PASSWORD_MAX) or a uv
 * error (cb then not called). Rate limiting is the caller's: dibba_auth_rl_check before, _fail/_success after. */
int dibba_auth_login_async(uv_loop_t *loop, dibba_auth_users_t *u, const char *name, const char *pw, size_t len,
                           dibba_auth_login_cb cb, void *data);

/* hash: the new "scrypt$..." string, only valid during the call (copy it), or NULL when status < 0. */
typedef void (*dibba_auth_hash_cb)(int status, const char *hash, void *data);
/* dibba_auth_password_hash on the worker pool, for /v1/users add and set-password. The password is copied and
 * wiped. cb runs once on the loop with 0, -EINVAL, -ENOMEM or UV_ECANCELED. Returns 0, -EINVAL (invalid
 * password: checked here, before queueing) or a uv error (cb then not called). */
int dibba_auth_password_hash_async(uv_loop_t *loop, const char *pw, size_t len, const dibba_auth_scrypt_t *params,
                                   dibba_auth_hash_cb cb, void *data);

/* ---- JWT -------------------------------------------------------------------------------------------------- */

typedef enum {
  DIBBA_AUTH_HS256 = 0,
  DIBBA_AUTH_HS384 = 1,
  DIBBA_AUTH_HS512 = 2,
} dibba_auth_alg_t;

#define DIBBA_AUTH_TOKEN_MAX 8192

typedef struct dibba_auth_jwt_s {
  dibba_auth_alg_t alg; /* pinned: a token naming any other algorithm is refused */
  unsigned char *key;
  size_t keylen;
  int64_t ttl;    /* seconds */
  int64_t leeway; /* seconds of clock skew allowed for exp, nbf and iat */
  void *mac;      /* keyed HMAC state (EVP_MAC_CTX), re-initialised per token: verify is single-threaded */
  void *parsed;   /* the canonical headers and recently parsed payloads (jwt.c); never a verification result */
} dibba_auth_jwt_t;

typedef struct dibba_auth_claims_s {
  char sub[DIBBA_AUTH_NAME_MAX + 1];
  dibba_auth_role_t role;
  int64_t iat, nbf, exp;
  char jti[64];
} dibba_auth_claims_t;

/* Parse "HS256", "HS384" or "HS512". Returns 0 or -EINVAL. */
int dibba_auth_alg_parse(const char *s, dibba_auth_alg_t *out);
/* Set up a signer/verifier. The key is copied (at least DIBBA_SECRET_MIN_BYTES). ttl >= 1, leeway >= 0.
 * Returns 0 or -EINVAL. */
int dibba_auth_jwt_init(dibba_auth_jwt_t *j, dibba_auth_alg_t alg, const void *key, size_t keylen, int64_t ttl,
                        int64_t leeway);
/* From config: auth.jwt_alg (HS256), auth.jwt_secret / auth.jwt_secret_file (required, via dibba_config_secret),
 * auth.token_ttl_seconds (3600), auth.jwt_leeway_seconds (30). Returns 0 or < 0 with one line in err. */
int dibba_auth_jwt_from_config(dibba_auth_jwt_t *j, const dibba_config_t *cfg, char *err, size_t errlen);
/* Wipe and free the key; safe to call twice. */
void dibba_auth_jwt_free(dibba_auth_jwt_t *j);

/* Issue a token for sub/role at time now (Unix seconds) with claims sub, role, iat=nbf=now, exp=now+ttl and a
 * random jti, signed with libjwt. *token is malloc'd (caller frees); *expires_in is the ttl.
 * Returns 0, -EINVAL (bad name or role) or -ENOMEM (libjwt failure). */
int dibba_auth_jwt_issue(const dibba_auth_jwt_t *j, const char *sub, dibba_auth_role_t role, int64_t now, char **token,
                         int64_t *expires_in);
/* Verify a token's form, header, signature and claims at time now, without looking at users. The header must be
 * base64url JSON with "alg" exactly the pinned algorithm and "typ" absent or "JWT", and no "crit"; the HMAC is
 * recomputed and compared with CRYPTO_memcmp before the payload is parsed. exp, nbf and iat must be integers;
 * sub a valid user name; role a known role; jti a string. Returns 0 and fills *claims, or:
 * -E2BIG (longer than DIBBA_AUTH_TOKEN_MAX), -EINVAL (malformed), DIBBA_EFORGED (algorithm or signature),
 * DIBBA_EEXPIRED (exp + leeway <= now), -ERANGE (nbf or iat later than now + leeway). */
int dibba_auth_jwt_verify(const dibba_auth_jwt_t *j, const char *token, size_t len, int64_t now,
                          dibba_auth_claims_t *claims);
/* dibba_auth_jwt_verify, then the user must exist, be enabled and hold exactly the token's role.
 * Extra errors: -EACCES (unknown, disabled, or role changed). */
int dibba_auth_token_check(const dibba_auth_jwt_t *j, const dibba_auth_users_t *u, const char *token, size_t len,
                           int64_t now, dibba_auth_claims_t *claims);

/* ---- Failed-login rate limiting --------------------------------------------------------------------------- */

typedef struct dibba_auth_rl_config_s {
  unsigned user_max; /* failures per user per window (5) */
  unsigned addr_max; /* failures per client address per window (20) */
  int64_t window_ms; /* sliding window (300000) */
  size_t table_max;  /* most users and most addresses tracked, each (10000) */
} dibba_auth_rl_config_t;

typedef struct dibba_auth_rl_s dibba_auth_rl_t;

/* Read auth.login_user_failures, auth.login_addr_failures, auth.login_window_seconds, auth.login_table_max. */
int dibba_auth_rl_config(const dibba_config_t *cfg, dibba_auth_rl_config_t *out, char *err, size_t errlen);
/* A new limiter (cfg NULL: defaults). Free with dibba_auth_rl_free (NULL is fine). */
dibba_auth_rl_t *dibba_auth_rl_new(const dibba_auth_rl_config_t *cfg);
void dibba_auth_rl_free(dibba_auth_rl_t *rl);
/* Before checking a password: 0 if allowed, or -EBUSY with *retry_after (whole seconds, >= 1) set when the user
 * or the address (either may be NULL) has too many failures in the window. now_ms is any monotonic clock. */
int dibba_auth_rl_check(dibba_auth_rl_t *rl, const char *user, const char *addr, int64_t now_ms, int64_t *retry_after);
/* Record a failed login for the user and the address (either may be NULL). */
void dibba_auth_rl_fail(dibba_auth_rl_t *rl, const char *user, const char *addr, int64_t now_ms);
/* Record a successful login: forget the user's failures (the address keeps its count). */
void dibba_auth_rl_success(dibba_auth_rl_t *rl, const char *user);
/* Entries tracked now (users, addresses), for tests and metrics. */
void dibba_auth_rl_size(const dibba_auth_rl_t *rl, size_t *users, size_t *addrs);

/* ---- CLI -------------------------------------------------------------------------------------------------- */

/* `dibba-api --config FILE user ...`: add NAME --role ROLE [--password-stdin], passwd NAME [--password-stdin],
 * del NAME, list, role NAME ROLE, enable NAME, disable NAME. argv[0] is "user". Errors are one line on stderr.
 * Returns the exit code: 0, 1 (failure) or 2 (usage). */
int dibba_auth_command(const dibba_config_t *cfg, int argc, char **argv);

#define DIBBA_AUTH_USAGE                                                                                               \
  "Commands:\n"                                                                                                        \
  "  user add NAME --role admin|operator|viewer [--password-stdin]\n"                                                  \
  "  user passwd NAME [--password-stdin]\n"                                                                            \
  "  user role NAME admin|operator|viewer\n"                                                                           \
  "  user enable NAME | user disable NAME | user del NAME | user list\n"

#endif
