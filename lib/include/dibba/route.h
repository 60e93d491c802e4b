/* SPDX-License-Identifier: Apache-2.0 */
/* Task routing: the shared task key and the opaque stream names derived from it for hosts and roles. */
#ifndef DIBBA_ROUTE_H
#define DIBBA_ROUTE_H

#include <stddef.h>

#define DIBBA_ROUTE_LEN 26       /* base32 chars: 130 bits of the HMAC */
#define DIBBA_TASK_KEY_MIN 16    /* bytes */
#define DIBBA_TASK_KEY_MAX 4096  /* bytes */
#define DIBBA_ROUTE_NAME_MAX 253 /* a DNS name */

/* The routing/MAC secret and the MAC key derived from it. Routes use the secret itself under the domain
 * prefixes "route\0" (hosts) and "role\0" (roles); the envelope MAC key is HMAC-SHA256(secret, "mac\0envelope/v1").
 * The three inputs start with different NUL-terminated labels, so no route can equal or reveal the MAC key
 * and a host can never be named so that its route equals a role's. */
typedef struct dibba_task_key_s {
  unsigned char *secret; /* owned copy, wiped on free */
  size_t secret_len;
  unsigned char mac_key[32];
  /* HMAC-SHA256 contexts keyed once (EVP_MAC_CTX *), re-initialised per message: a one-shot HMAC() fetches the
   * digest and hashes the key pads every time, which was a fifth of a worker's cost per task. Not for use from
   * two threads at once. */
  void *route_mac, *envelope_mac;
} dibba_task_key_t;

/* Copy secret (DIBBA_TASK_KEY_MIN..DIBBA_TASK_KEY_MAX bytes) and derive the MAC key. Returns 0 or -EINVAL. */
int dibba_task_key_init(dibba_task_key_t *k, const void *secret, size_t len);
/* Wipe and free; safe to call twice. */
void dibba_task_key_free(dibba_task_key_t *k);

/* route = first 26 chars of lowercase unpadded RFC 4648 base32(HMAC-SHA256(secret, "route\0" + host)).
 * The hostname is lowercased and one trailing dot is dropped first, since DNS names are case-insensitive.
 * Names are 1..253 chars of [A-Za-z0-9._-]. out gets DIBBA_ROUTE_LEN chars + NUL. Returns 0 or -EINVAL. */
int dibba_route_host(const dibba_task_key_t *k, const char *hostname, char out[DIBBA_ROUTE_LEN + 1]);
/* The same under the "role\0" domain, for shared roles ("control", "aws", "health"); roles are lowercase
 * [a-z0-9_-], 1..64 chars. Returns 0 or -EINVAL. */
int dibba_route_role(const dibba_task_key_t *k, const char *role, char out[DIBBA_ROUTE_LEN + 1]);
/* 1 if s has the shape of a route (26 chars of [a-z2-7]). */
int dibba_route_valid(const char *s);
/* Stream key of a route: prefix + "q:" + route ("dibba:q:abcd..."). Returns 0, -EINVAL (bad route) or
 * -ENAMETOOLONG if it does not fit in len. */
int dibba_route_stream_key(const char *prefix, const char *route, char *out, size_t len);

/* Lowercase unpadded RFC 4648 base32 of n bytes into out (at most outlen - 1 chars, always terminated).
 * Returns the number of chars written. */
size_t dibba_base32_encode(const void *data, size_t n, char *out, size_t outlen);

#endif
