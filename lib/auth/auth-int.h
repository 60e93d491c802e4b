/* SPDX-License-Identifier: Apache-2.0 */
/* Private helpers shared by the files of lib/auth (and its unit test). */
#ifndef DIBBA_AUTH_INT_H
#define DIBBA_AUTH_INT_H

#include <stddef.h>

#include "dibba/auth.h"

/* Unpadded base64url of n bytes into a malloc'd NUL-terminated string. */
char *dibba__b64url_encode(const void *p, size_t n);
/* Strict unpadded base64url decode: rejects padding, other characters, a length of 1 mod 4 and non-zero
 * trailing bits. Writes at most max bytes into out. Returns the decoded length, or -EINVAL / -E2BIG. */
long dibba__b64url_decode(const char *s, size_t n, unsigned char *out, size_t max);

/* A dummy hash with the given parameters and random salt/hash: verifying anything against it costs a real
 * scrypt and never matches. Malloc'd. */
char *dibba__auth_dummy_hash(const dibba_auth_scrypt_t *params);
/* 1 if s parses as a stored hash with parameters within bounds. */
int dibba__auth_hash_wellformed(const char *s);

/* The users file's text for the current store (malloc'd, *len set). */
char *dibba__auth_users_serialize(const dibba_auth_users_t *u, size_t *len);
/* Temp file + fchmod 0600 + write + fsync + rename + directory fsync. Thread-safe; one line in err on error. */
int dibba__auth_write_atomic(const char *path, const char *data, size_t len, char *err, size_t errlen);
/* Release the async-save state of a store (nothing may be in flight). */
void dibba__auth_save_free(dibba_auth_users_t *u);

#endif
