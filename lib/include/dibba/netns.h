/* SPDX-License-Identifier: Apache-2.0 */
/* Network namespaces pinned by a bind mount on a file under a directory (default /var/run/netns). */
#ifndef DIBBA_NETNS_H
#define DIBBA_NETNS_H

#include <stddef.h>

#include <uv.h>

#define DIBBA_NETNS_NAME_MAX 64

/* Completion of a create or delete: status 0 or a negative errno / UV_E* code, err a one-line reason
 * ("" on success) that is valid only during the call. */
typedef void (*dibba_netns_cb)(int status, const char *err, void *data);

/* 1 if name is usable as a pinned netns file name: [A-Za-z0-9_.-], 1..DIBBA_NETNS_NAME_MAX, no leading '.'. */
int dibba_netns_name_valid(const char *name);

/* Create a new network namespace pinned at dir/name. The directory is created if missing, the pin file
 * is created exclusively, and `unshare --net=<file> true` is spawned (in its own process group, killed at
 * the timeout) to make and bind-mount the namespace, so the loop never blocks. Strings are copied.
 * Returns 0 (cb runs later with the outcome: 0, -EEXIST if the file exists, UV_ETIMEDOUT, -EIO if unshare
 * failed, or a UV_E* code) or -EINVAL at once for a bad name. */
int dibba_netns_create(uv_loop_t *loop, const char *dir, const char *name, dibba_netns_cb cb, void *data);

/* Delete dir/name: lazy unmount (spawned `umount --lazy`) and unlink. A missing file is success, so delete
 * is idempotent. Returns 0 (cb runs later: 0 or a negative code, -EBUSY if the file is still a mount)
 * or -EINVAL at once for a bad name. */
int dibba_netns_delete(uv_loop_t *loop, const char *dir, const char *name, dibba_netns_cb cb, void *data);

/* The names of the regular files in dir that are pinned namespaces (an nsfs mount, from
 * /proc/self/mountinfo), sorted; for reconcile at start-up (small bounded reads). *names is a malloc'd
 * array of malloc'd strings that the caller frees with dibba_netns_list_free. A missing dir is an empty
 * list. Returns 0 or a negative errno. */
int dibba_netns_list(const char *dir, char ***names, size_t *n);
/* Free a list from dibba_netns_list; safe with NULL. */
void dibba_netns_list_free(char **names, size_t n);

#endif
