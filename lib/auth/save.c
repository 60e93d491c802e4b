/* SPDX-License-Identifier: Apache-2.0 */
/* Saving the users file from libuv's worker pool, one save at a time and in order. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "dibba/alloc.h"
#include "dibba/error.h"
#include "dibba/log.h"

#include "auth-int.h"

typedef struct waiter_s {
  struct waiter_s *next;
  dibba_auth_save_cb cb;
  void *data;
} waiter_t;

struct dibba__auth_save_s {
  uv_work_t work;
  dibba_auth_users_t *u;
  int running;
  waiter_t *running_head; /* served by the save in flight */
  waiter_t *next_head;    /* need a save that starts after the one in flight */
  waiter_t **next_tail;
  char *path;
  char *text;
  size_t len;
  int status;
  char err[512];
};

static void work_cb(uv_work_t *w) {
  struct dibba__auth_save_s *s = w->data;
  s->status = dibba__auth_write_atomic(s->path, s->text, s->len, s->err, sizeof s->err);
}

static void after_cb(uv_work_t *w, int status);

/* Serialise the store as it is now and hand the write to the pool. */
static int start(uv_loop_t *loop, struct dibba__auth_save_s *s) {
  s->text = dibba__auth_users_serialize(s->u, &s->len);
  free(s->path);
  s->path = dibba_xstrdup(s->u->path);
  s->err[0] = '\0';
  s->work.data = s;
  int r = uv_queue_work(loop, &s->work, work_cb, after_cb);
  if (r < 0) {
    OPENSSL_cleanse(s->text, s->len);
    free(s->text);
    s->text = NULL;
    return r;
  }
  s->running = 1;
  s->running_head = s->next_head;
  s->next_head = NULL;
  s->next_tail = &s->next_head;
  return 0;
}

static void finish(dibba_auth_users_t *u, waiter_t *w, int status) {
  while (w) {
    waiter_t *next = w->next;
    dibba_auth_save_cb cb = w->cb;
    void *data = w->data;
    free(w);
    u->pending--;
    if (cb)
      cb(u, status, data);
    w = next;
  }
}

static void after_cb(uv_work_t *w, int status) {
  struct dibba__auth_save_s *s = w->data;
  dibba_auth_users_t *u = s->u;
  int r = status < 0 ? status : s->status;
  waiter_t *done = s->running_head;
  s->running_head = NULL;
  s->running = 0;
  OPENSSL_cleanse(s->text, s->len);
  free(s->text);
  s->text = NULL;
  if (r < 0)
    dibba_log_error("auth", json_pack("{s:s}", "error", s->err[0] ? s->err : dibba_strerror(r)),
                    "saving the users file failed");
  if (s->next_head) {
    int sr = start(w->loop, s);
    if (sr < 0) {
      waiter_t *failed = s->next_head;
      s->next_head = NULL;
      s->next_tail = &s->next_head;
      finish(u, failed, sr);
    }
  }
  finish(u, done, r);
}

int dibba_auth_users_save_async(uv_loop_t *loop, dibba_auth_users_t *u, dibba_auth_save_cb cb, void *data) {
  struct dibba__auth_save_s *s = u->save;
  if (s == NULL) {
    s = u->save = dibba_xcalloc(1, sizeof *s);
    s->u = u;
    s->next_tail = &s->next_head;
  }
  waiter_t *w = dibba_xcalloc(1, sizeof *w);
  w->cb = cb;
  w->data = data;
  *s->next_tail = w;
  s->next_tail = &w->next;
  u->pending++;
  if (s->running)
    return 0;
  int r = start(loop, s);
  if (r < 0) {
    s->next_head = NULL;
    s->next_tail = &s->next_head;
    free(w);
    u->pending--;
  }
  return r;
}

void dibba__auth_save_free(dibba_auth_users_t *u) {
  struct dibba__auth_save_s *s = u->save;
  if (s == NULL)
    return;
  free(s->path);
  free(s);
  u->save = NULL;
}
