/* SPDX-License-Identifier: Apache-2.0 */
/* Random identifiers (UUID v4 text) for tasks, requests and tokens. */
#ifndef DIBBA_ID_H
#define DIBBA_ID_H

#define DIBBA_ID_LEN 36

/* Write a new random UUID v4 (36 chars + NUL) into out. Uses the kernel CSPRNG. */
void dibba_id_new(char out[DIBBA_ID_LEN + 1]);
/* 1 if s is a well-formed UUID text (any version), else 0. */
int dibba_id_valid(const char *s);
/* Fill buf with n cryptographically random bytes; aborts if the kernel cannot supply them. */
void dibba_random_bytes(void *buf, size_t n);

#endif
