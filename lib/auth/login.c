/* SPDX-License-Identifier: Apache-2.0 */
/* Password logins checked on libuv's worker pool, so scrypt never stalls the loop. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/err.h>

#include "dibba/alloc.h"

#include "auth-int.h"

typedef struct login_s {
  uv_work_t work;
  dibba_auth_users_t *u;
  char *name;
  char *pw;
  size_t len;
  char *hash; /* copy of the user's hash, or of the dummy one */
  int found;
  int result; /* from the worker */
  dibba_auth_login_cb cb;
  void *data;
} login_t;

static void wipe_free(char *s, size_t n) {
  if (s) {
    OPENSSL_cleanse(s, n);
    free(s);
  }
}

static void work_cb(uv_work_t *w) {
  login_t *l = w->data;
  l->result = dibba_auth_password_verify(l->hash, l->pw, l->len);
  /* Pool threads live until exit: drop OpenSSL's per-thread state now rather than leave it to thread exit. */
  OPENSSL_thread_stop();
}

static void after_cb(uv_work_t *w, int status) {
  login_t *l = w->data;
  dibba_auth_users_t *u = l->u;
  dibba_auth_role_t role = DIBBA_AUTH_ROLE_NONE;
  int r = -EACCES;
  if (status < 0) {
    r = status;
  } else if (l->found && l->result == 0) {
    /* The store may have changed while scrypt ran: the user must still exist, be enabled and have the very hash
     * that was checked. */
    const dibba_auth_user_t *x = dibba_auth_users_find(u, l->name);
    if (x && x->enabled && strcmp(x->password_hash, l->hash) == 0) {
      r = 0;
      role = x->role;
    }
  }
  u->pending--;
  l->cb(r, l->name, role, l->data);
  free(l->name);
  wipe_free(l->pw, l->len);
  wipe_free(l->hash, strlen(l->hash));
  free(l);
}

int dibba_auth_login_async(uv_loop_t *loop, dibba_auth_users_t *u, const char *name, const char *pw, size_t len,
                           dibba_auth_login_cb cb, void *data) {
  if (pw == NULL || len > DIBBA_AUTH_PASSWORD_MAX || cb == NULL || name == NULL ||
      strlen(name) > 4 * DIBBA_AUTH_NAME_MAX)
    return -EINVAL;
  login_t *l = dibba_xcalloc(1, sizeof *l);
  const dibba_auth_user_t *x = dibba_auth_users_find(u, name);
  l->u = u;
  l->name = dibba_xstrdup(name);
  l->pw = dibba_xmalloc(len + 1);
  memcpy(l->pw, pw, len);
  l->pw[len] = '\0';
  l->len = len;
  /* A missing or disabled user still costs one scrypt, so the answer's timing does not say which. */
  l->found = x != NULL;
  l->hash = dibba_xstrdup(x ? x->password_hash : u->dummy_hash);
  l->cb = cb;
  l->data = data;
  l->work.data = l;
  int r = uv_queue_work(loop, &l->work, work_cb, after_cb);
  if (r < 0) {
    free(l->name);
    wipe_free(l->pw, l->len);
    wipe_free(l->hash, strlen(l->hash));
    free(l);
    return r;
  }
  u->pending++;
  return 0;
}

typedef struct hash_req_s {
  uv_work_t work;
  char *pw;
  size_t len;
  dibba_auth_scrypt_t params;
  char *hash;
  int result;
  dibba_auth_hash_cb cb;
  void *data;
} hash_req_t;

static void hash_work_cb(uv_work_t *w) {
  hash_req_t *h = w->data;
  h->result = dibba_auth_password_hash(h->pw, h->len, &h->params, &h->hash);
  OPENSSL_thread_stop();
}

static void hash_after_cb(uv_work_t *w, int status) {
  hash_req_t *h = w->data;
  int r = status < 0 ? status : h->result;
  h->cb(r, r == 0 ? h->hash : NULL, h->data);
  wipe_free(h->pw, h->len);
  if (h->hash)
    wipe_free(h->hash, strlen(h->hash));
  free(h);
}

int dibba_auth_password_hash_async(uv_loop_t *loop, const char *pw, size_t len, const dibba_auth_scrypt_t *params,
                                   dibba_auth_hash_cb cb, void *data) {
  if (!dibba_auth_password_valid(pw, len) || cb == NULL)
    return -EINVAL;
  hash_req_t *h = dibba_xcalloc(1, sizeof *h);
  h->pw = dibba_xmalloc(len + 1);
  memcpy(h->pw, pw, len);
  h->pw[len] = '\0';
  h->len = len;
  h->params = params ? *params : DIBBA_AUTH_SCRYPT_DEFAULT;
  h->cb = cb;
  h->data = data;
  h->work.data = h;
  int r = uv_queue_work(loop, &h->work, hash_work_cb, hash_after_cb);
  if (r < 0) {
    wipe_free(h->pw, h->len);
    free(h);
  }
  return r;
}
