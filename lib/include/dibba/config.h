/* SPDX-License-Identifier: Apache-2.0 */
/* Configuration: a JSON file, overridden by environment variables, read through dotted paths. */
#ifndef DIBBA_CONFIG_H
#define DIBBA_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#define DIBBA_CONFIG_MAX_BYTES (1024 * 1024)
#define DIBBA_SECRET_MAX_BYTES 4096
#define DIBBA_SECRET_MIN_BYTES 16

typedef struct dibba_config_s {
  json_t *root; /* the merged tree (file, then environment) */
  char *path;   /* the file it came from, or NULL */
} dibba_config_t;

/* Load path (NULL: no file, environment and defaults only) and apply the environment overrides listed in
 * config.c (CONTAINERD_SOCKET, CNI_NET_NAME, DIBBA_REDIS_URL, ...). On error returns -ENOENT, -EFBIG,
 * -EINVAL or DIBBA_ECONFIG and writes one readable line into err. */
int dibba_config_load(dibba_config_t *cfg, const char *path, char *err, size_t errlen);
/* Release the tree; safe to call twice. */
void dibba_config_free(dibba_config_t *cfg);

/* Look up a dotted path ("redis.url"). Returns the value, or the built-in default for known keys, or def.
 * The string is owned by cfg. If the value exists with the wrong type, returns DIBBA_ECONFIG and fills err. */
int dibba_config_str(const dibba_config_t *cfg, const char *path, const char *def, const char **out, char *err,
                     size_t errlen);
/* Integer in [min, max]; strings of digits (from the environment) are accepted. */
int dibba_config_int(const dibba_config_t *cfg, const char *path, int64_t def, int64_t min, int64_t max, int64_t *out,
                     char *err, size_t errlen);
/* Boolean; "1/0/true/false/yes/no" strings are accepted. */
int dibba_config_bool(const dibba_config_t *cfg, const char *path, int def, int *out, char *err, size_t errlen);
/* The JSON node at path, or NULL (borrowed). */
json_t *dibba_config_node(const dibba_config_t *cfg, const char *path);

/* A secret named by path: either the value itself at path, or a file named at "<path>_file" (bounded read,
 * trailing newline trimmed). A missing or short (< DIBBA_SECRET_MIN_BYTES) secret is an error, never a
 * default: -ENOENT / -EINVAL with a one-line reason in err. *out is malloc'd; the caller wipes and frees it. */
int dibba_config_secret(const dibba_config_t *cfg, const char *path, char **out, size_t *outlen, char *err,
                        size_t errlen);

/* Read a whole small file (at most max bytes) into a malloc'd NUL-terminated buffer. Start-up use only.
 * Returns 0, -EFBIG if larger than max, or a negative errno. */
int dibba_read_small_file(const char *path, size_t max, char **out, size_t *len);

#endif
