/* SPDX-License-Identifier: Apache-2.0 */
/* Run a helper program from the loop: stdin fed, stdout/stderr captured with caps, process-group timeout. */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "cni-int.h"
#include "dibba/alloc.h"
#include "dibba/buf.h"

typedef struct exec_s {
  uv_process_t proc;
  uv_pipe_t in, out, err;
  uv_timer_t timer;
  uv_write_t wreq;
  char *input;
  dibba_buf_t obuf, ebuf;
  int pending; /* handles not yet closed */
  int exited, out_eof, err_eof;
  int err_code;
  int64_t exit_status;
  int term_signal;
  pid_t pid;
  dibba__exec_cb cb;
  void *data;
} exec_t;

static void on_close(uv_handle_t *h) {
  exec_t *x = h->data;
  if (--x->pending > 0)
    return;
  dibba__exec_result_t r = {
      .err = x->err_code,
      .exit_status = x->exit_status,
      .term_signal = x->term_signal,
      .pid = x->pid,
      .out = x->obuf.data ? x->obuf.data : "",
      .out_len = x->obuf.len,
      .errout = x->ebuf.data ? x->ebuf.data : "",
      .err_len = x->ebuf.len,
  };
  if (x->cb)
    x->cb(&r, x->data);
  dibba_buf_free(&x->obuf);
  dibba_buf_free(&x->ebuf);
  free(x->input);
  free(x);
}

static void close_one(exec_t *x, uv_handle_t *h) {
  if (!uv_is_closing(h))
    uv_close(h, on_close);
}

static void kill_group(exec_t *x) {
  /* The plugin leads its own process group (setsid), so this reaches whatever it forked, too. */
  if (x->pid > 0)
    kill(-x->pid, SIGKILL);
}

/* Finish once the process is reaped and both output pipes reached EOF (or were cut off). */
static void maybe_done(exec_t *x) {
  if (!x->exited || !x->out_eof || !x->err_eof)
    return;
  close_one(x, (uv_handle_t *)&x->timer);
  close_one(x, (uv_handle_t *)&x->proc);
  close_one(x, (uv_handle_t *)&x->in);
  close_one(x, (uv_handle_t *)&x->out);
  close_one(x, (uv_handle_t *)&x->err);
}

static void on_exit_cb(uv_process_t *p, int64_t status, int sig) {
  exec_t *x = p->data;
  x->exited = 1;
  x->exit_status = status;
  x->term_signal = sig;
  if (x->err_code == UV_ETIMEDOUT) {
    /* Killed at the timeout: do not wait for pipes that something outside the group may hold. */
    if (!x->out_eof)
      uv_read_stop((uv_stream_t *)&x->out);
    if (!x->err_eof)
      uv_read_stop((uv_stream_t *)&x->err);
    x->out_eof = x->err_eof = 1;
  }
  maybe_done(x);
}

static void on_timer(uv_timer_t *t) {
  exec_t *x = t->data;
  if (!x->err_code)
    x->err_code = UV_ETIMEDOUT;
  kill_group(x);
  /* A grandchild outside the group could still hold the pipes: stop waiting for them. */
  if (x->exited) {
    if (!x->out_eof)
      uv_read_stop((uv_stream_t *)&x->out);
    if (!x->err_eof)
      uv_read_stop((uv_stream_t *)&x->err);
    x->out_eof = x->err_eof = 1;
    maybe_done(x);
  }
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  (void)h;
  (void)hint;
  static char scratch[65536]; /* single-threaded loop: read callbacks copy out before the next read */
  buf->base = scratch;
  buf->len = sizeof scratch;
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  exec_t *x = s->data;
  int is_out = s == (uv_stream_t *)&x->out;
  if (n > 0) {
    dibba_buf_t *b = is_out ? &x->obuf : &x->ebuf;
    size_t room = b->len < b->cap ? b->cap - b->len : 0;
    size_t take = (size_t)n < room ? (size_t)n : room;
    dibba_buf_add(b, buf->base, take);
    if (take < (size_t)n && is_out) {
      /* A result larger than the cap is not a result: stop the plugin. */
      if (!x->err_code)
        x->err_code = -E2BIG;
      kill_group(x);
    }
    return;
  }
  if (n == 0)
    return;
  uv_read_stop(s);
  if (is_out)
    x->out_eof = 1;
  else
    x->err_eof = 1;
  maybe_done(x);
}

static void on_write(uv_write_t *w, int status) {
  exec_t *x = w->data;
  (void)status; /* a plugin that does not read its stdin fails on its own terms */
  close_one(x, (uv_handle_t *)&x->in);
}

int dibba__exec(uv_loop_t *loop, const char *file, char **argv, char **env, const char *input, size_t input_len,
                uint64_t timeout_ms, size_t out_cap, size_t err_cap, dibba__exec_cb cb, void *data) {
  exec_t *x = dibba_xcalloc(1, sizeof *x);
  int err;
  x->cb = cb;
  x->data = data;
  dibba_buf_init(&x->obuf, out_cap);
  dibba_buf_init(&x->ebuf, err_cap);
  uv_pipe_init(loop, &x->in, 0);
  uv_pipe_init(loop, &x->out, 0);
  uv_pipe_init(loop, &x->err, 0);
  uv_timer_init(loop, &x->timer);
  x->in.data = x->out.data = x->err.data = x->timer.data = x->proc.data = x->wreq.data = x;
  x->pending = 5;

  uv_stdio_container_t stdio[3] = {
      {.flags = UV_CREATE_PIPE | UV_READABLE_PIPE, .data.stream = (uv_stream_t *)&x->in},
      {.flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE, .data.stream = (uv_stream_t *)&x->out},
      {.flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE, .data.stream = (uv_stream_t *)&x->err},
  };
  uv_process_options_t po = {
      .exit_cb = on_exit_cb,
      .file = file,
      .args = argv,
      .env = env,
      .flags = UV_PROCESS_DETACHED, /* setsid(): its own process group, so the timeout can kill it all */
      .stdio_count = 3,
      .stdio = stdio,
  };
  err = uv_spawn(loop, &x->proc, &po);
  if (err < 0)
    goto fail;
  x->pid = x->proc.pid;
  x->input = dibba_xmalloc(input_len + 1);
  memcpy(x->input, input, input_len);
  uv_buf_t b = uv_buf_init(x->input, (unsigned)input_len);
  if (uv_write(&x->wreq, (uv_stream_t *)&x->in, &b, 1, on_write) < 0)
    close_one(x, (uv_handle_t *)&x->in);
  if (uv_read_start((uv_stream_t *)&x->out, on_alloc, on_read) < 0)
    x->out_eof = 1;
  if (uv_read_start((uv_stream_t *)&x->err, on_alloc, on_read) < 0)
    x->err_eof = 1;
  uv_timer_start(&x->timer, on_timer, timeout_ms ? timeout_ms : 30000, 0);
  return 0;

fail:
  /* uv_spawn failed: every handle, the process one included, still has to be closed; cb must not run. */
  x->cb = NULL;
  close_one(x, (uv_handle_t *)&x->proc);
  close_one(x, (uv_handle_t *)&x->in);
  close_one(x, (uv_handle_t *)&x->out);
  close_one(x, (uv_handle_t *)&x->err);
  close_one(x, (uv_handle_t *)&x->timer);
  return err;
}
