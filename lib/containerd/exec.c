/* SPDX-License-Identifier: Apache-2.0 */
/* Exec in a running container: FIFO stdio read on the loop, Exec/Start/Wait/Kill/DeleteProcess, capped output. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dibba/alloc.h"
#include "dibba/buf.h"
#include "dibba/containerd_exec.h"
#include "dibba/error.h"
#include "dibba/id.h"
#include "dibba/oci.h"

#define WAIT_RETRY_MS 100
/* After the exit, how long the shim may take to flush and close the FIFOs before we stop reading. */
#define DRAIN_MS 2000
/* Wait has no natural deadline: a long one, renewed (the call is retried) when it expires. */
#define WAIT_CALL_MS (3600u * 1000u)
#define READ_CHUNK 65536

typedef struct stream_s {
  dibba_exec_t *x;
  uv_pipe_t pipe;
  int rfd, wfd; /* raw fds until the pipe owns rfd; wfd is our placeholder writer until Start returns */
  int opened;   /* pipe initialised */
  int made;     /* we created the FIFO (and remove it) */
  int eof;
  int truncated;
  dibba_buf_t buf;
  char path[4200];
  char chunk[READ_CHUNK];
} stream_t;

struct dibba_exec_s {
  dibba_containerd_t *ctd;
  uv_loop_t *loop;
  uv_work_t work;
  uv_timer_t timeout, aux;
  stream_t s[2]; /* stdout, stderr */
  char *ns, *id, *exec_id, *state_dir, *process;
  uint64_t timeout_ms;
  size_t cap;
  dibba_exec_cb cb;
  void *data;
  int setup_err;
  int created, started, exited, deleting, finishing, timed_out, cancelled, killed;
  int pending; /* handle closes still to come */
  uint32_t exit_status;
  int err;
  char msg[256];
};

static void finish(dibba_exec_t *x);
static void maybe_delete(dibba_exec_t *x);

static void set_err(dibba_exec_t *x, int err, const char *what, const char *detail) {
  if (x->err)
    return;
  x->err = err;
  snprintf(x->msg, sizeof x->msg, "exec %s in %s: %s: %s", x->exec_id, x->id, what,
           detail && *detail ? detail : dibba_strerror(err));
}

static void close_writers(dibba_exec_t *x) {
  for (int i = 0; i < 2; i++)
    if (x->s[i].wfd >= 0) {
      close(x->s[i].wfd); /* a FIFO end: no I/O on close */
      x->s[i].wfd = -1;
    }
}

/* ---------------- the end: close handles, unlink FIFOs on the pool, report ---------------- */

static void work_unlink(uv_work_t *w) {
  dibba_exec_t *x = w->data;
  for (int i = 0; i < 2; i++)
    if (x->s[i].made)
      unlink(x->s[i].path);
}

static void report(uv_work_t *w, int status) {
  dibba_exec_t *x = w->data;
  dibba_exec_result_t r = {.exit_status = x->exit_status,
                           .timed_out = x->timed_out,
                           .out = x->s[0].buf.data ? x->s[0].buf.data : "",
                           .out_len = x->s[0].buf.len,
                           .out_truncated = x->s[0].truncated,
                           .err = x->s[1].buf.data ? x->s[1].buf.data : "",
                           .err_len = x->s[1].buf.len,
                           .err_truncated = x->s[1].truncated};
  int have = x->exited && (!x->err || x->err == UV_ECANCELED);
  x->cb(x->ctd, x->err, x->err ? x->msg : "", have ? &r : NULL, x->data);
  for (int i = 0; i < 2; i++)
    dibba_buf_free(&x->s[i].buf);
  free(x->ns);
  free(x->id);
  free(x->exec_id);
  free(x->state_dir);
  free(x->process);
  free(x);
}

static void on_closed(uv_handle_t *h) {
  dibba_exec_t *x = h->data;
  if (--x->pending > 0)
    return;
  x->work.data = x;
  if (uv_queue_work(x->loop, &x->work, work_unlink, report) < 0) {
    work_unlink(&x->work); /* cannot happen with a live loop; unlink is a quick metadata call */
    report(&x->work, 0);
  }
}

static void finish(dibba_exec_t *x) {
  if (x->finishing)
    return;
  x->finishing = 1;
  close_writers(x);
  for (int i = 0; i < 2; i++) {
    stream_t *s = &x->s[i];
    if (s->opened) {
      s->pipe.data = x;
      x->pending++;
      uv_close((uv_handle_t *)&s->pipe, on_closed);
    }
    if (s->rfd >= 0) { /* not adopted by the pipe */
      close(s->rfd);
      s->rfd = -1;
    }
  }
  x->timeout.data = x;
  x->aux.data = x;
  x->pending += 2;
  uv_close((uv_handle_t *)&x->timeout, on_closed);
  uv_close((uv_handle_t *)&x->aux, on_closed);
}

/* ---------------- DeleteProcess ---------------- */

static void on_deleted(dibba_containerd_t *ctd, int err, const dibba_grpc_status_t *st,
                       Containerd__Services__Tasks__V1__DeleteResponse *resp, void *data) {
  dibba_exec_t *x = data;
  if (err < 0 && err != -ENOENT)
    set_err(x, err, "delete process", st->message);
  finish(x);
}

static void delete_process(dibba_exec_t *x) {
  if (x->deleting)
    return;
  x->deleting = 1;
  uv_timer_stop(&x->timeout);
  uv_timer_stop(&x->aux);
  if (!x->created) {
    finish(x);
    return;
  }
  Containerd__Services__Tasks__V1__DeleteProcessRequest req =
      CONTAINERD__SERVICES__TASKS__V1__DELETE_PROCESS_REQUEST__INIT;
  req.container_id = x->id;
  req.exec_id = x->exec_id;
  dibba_containerd_call_opts_t o = {.ns = x->ns};
  int rc = dibba_containerd_tasks_delete_process(x->ctd, &o, &req, on_deleted, x);
  if (rc < 0) {
    set_err(x, rc, "delete process", NULL);
    finish(x);
  }
}

static void on_drain_timeout(uv_timer_t *t) { delete_process(t->data); }

/* After the exit, delete once both streams reached EOF (or the drain time passed). */
static void maybe_delete(dibba_exec_t *x) {
  if (x->exited && x->s[0].eof && x->s[1].eof)
    delete_process(x);
}

/* ---------------- reading the FIFOs ---------------- */

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  stream_t *s = h->data;
  *buf = uv_buf_init(s->chunk, sizeof s->chunk);
}

static void on_read(uv_stream_t *h, ssize_t n, const uv_buf_t *buf) {
  stream_t *s = h->data;
  if (n > 0) {
    size_t room = s->buf.cap - s->buf.len, take = (size_t)n < room ? (size_t)n : room;
    if (take)
      dibba_buf_add(&s->buf, buf->base, take);
    if (take < (size_t)n)
      s->truncated = 1;
    return;
  }
  if (n < 0) { /* EOF (the shim closed its writer) or an error: either way this stream is done */
    uv_read_stop(h);
    s->eof = 1;
    maybe_delete(s->x);
  }
}

/* ---------------- Wait, Kill ---------------- */

static void start_wait(dibba_exec_t *x);
static void on_wait_retry(uv_timer_t *t) { start_wait(t->data); }

static void on_wait(dibba_containerd_t *ctd, int err, const dibba_grpc_status_t *st,
                    Containerd__Services__Tasks__V1__WaitResponse *resp, void *data) {
  dibba_exec_t *x = data;
  if (x->deleting)
    return;
  if (err == 0) {
    x->exited = 1;
    x->exit_status = resp->exit_status;
    uv_timer_stop(&x->timeout);
    x->aux.data = x;
    uv_timer_start(&x->aux, on_drain_timeout, DRAIN_MS, 0);
    maybe_delete(x);
    return;
  }
  if (err == -ENOENT || err == UV_ECANCELED) { /* the task went away under us, or the client is closing */
    set_err(x, err, "wait", st->message);
    delete_process(x);
    return;
  }
  /* Deadline, or containerd restarting: wait again. */
  x->aux.data = x;
  uv_timer_start(&x->aux, on_wait_retry, WAIT_RETRY_MS, 0);
}

static void start_wait(dibba_exec_t *x) {
  Containerd__Services__Tasks__V1__WaitRequest req = CONTAINERD__SERVICES__TASKS__V1__WAIT_REQUEST__INIT;
  req.container_id = x->id;
  req.exec_id = x->exec_id;
  dibba_containerd_call_opts_t o = {.ns = x->ns, .timeout_ms = WAIT_CALL_MS};
  if (dibba_containerd_tasks_wait(x->ctd, &o, &req, on_wait, x) < 0) {
    x->aux.data = x;
    uv_timer_start(&x->aux, on_wait_retry, WAIT_RETRY_MS, 0);
  }
}

static void on_killed(dibba_containerd_t *ctd, int err, const dibba_grpc_status_t *st, Google__Protobuf__Empty *resp,
                      void *data) {
  /* Nothing to do: Wait reports the exit. A failure means the process had already exited. */
}

static void kill_process(dibba_exec_t *x) {
  if (x->killed || x->exited || x->deleting)
    return;
  x->killed = 1;
  Containerd__Services__Tasks__V1__KillRequest req = CONTAINERD__SERVICES__TASKS__V1__KILL_REQUEST__INIT;
  req.container_id = x->id;
  req.exec_id = x->exec_id;
  req.signal = SIGKILL;
  dibba_containerd_call_opts_t o = {.ns = x->ns};
  dibba_containerd_tasks_kill(x->ctd, &o, &req, on_killed, NULL);
}

static void on_timeout(uv_timer_t *t) {
  dibba_exec_t *x = t->data;
  x->timed_out = 1;
  kill_process(x);
}

int dibba_containerd_exec_cancel(dibba_exec_t *x) {
  if (!x || x->cancelled || x->deleting || x->finishing)
    return -EALREADY;
  x->cancelled = 1;
  set_err(x, UV_ECANCELED, "cancelled", NULL);
  if (x->started)
    kill_process(x);
  /* Before Start: the Exec/Start callbacks see the flag and clean up. */
  return 0;
}

/* ---------------- Exec, Start ---------------- */

static void on_started(dibba_containerd_t *ctd, int err, const dibba_grpc_status_t *st,
                       Containerd__Services__Tasks__V1__StartResponse *resp, void *data) {
  dibba_exec_t *x = data;
  /* The shim holds its writers now: drop ours so that its close gives us EOF. */
  close_writers(x);
  if (err < 0) {
    set_err(x, err, "start", st->message);
    delete_process(x);
    return;
  }
  x->started = 1;
  if (x->cancelled)
    kill_process(x);
  if (x->timeout_ms) {
    x->timeout.data = x;
    uv_timer_start(&x->timeout, on_timeout, x->timeout_ms, 0);
  }
  start_wait(x);
}

static void on_exec(dibba_containerd_t *ctd, int err, const dibba_grpc_status_t *st, Google__Protobuf__Empty *resp,
                    void *data) {
  dibba_exec_t *x = data;
  if (err < 0) {
    set_err(x, err, "exec", st->message);
    finish(x);
    return;
  }
  x->created = 1;
  if (x->cancelled) {
    delete_process(x);
    return;
  }
  Containerd__Services__Tasks__V1__StartRequest req = CONTAINERD__SERVICES__TASKS__V1__START_REQUEST__INIT;
  req.container_id = x->id;
  req.exec_id = x->exec_id;
  dibba_containerd_call_opts_t o = {.ns = x->ns};
  int rc = dibba_containerd_tasks_start(ctd, &o, &req, on_started, x);
  if (rc < 0) {
    set_err(x, rc, "start", NULL);
    delete_process(x);
  }
}

/* ---------------- FIFOs (on the pool: mkdir, mkfifo and open touch the filesystem) ---------------- */

static void work_setup(uv_work_t *w) {
  dibba_exec_t *x = w->data;
  if (mkdir(x->state_dir, 0700) < 0 && errno != EEXIST) {
    x->setup_err = -errno;
    return;
  }
  for (int i = 0; i < 2; i++) {
    stream_t *s = &x->s[i];
    if (mkfifo(s->path, 0600) < 0) {
      x->setup_err = -errno;
      return;
    }
    s->made = 1;
    /* Non-blocking read end first, then a writer of our own so that reads do not see EOF before the shim
     * opens the FIFO. */
    if ((s->rfd = open(s->path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)) < 0 ||
        (s->wfd = open(s->path, O_WRONLY | O_NONBLOCK | O_CLOEXEC)) < 0) {
      x->setup_err = -errno;
      return;
    }
  }
}

static void after_setup(uv_work_t *w, int status) {
  dibba_exec_t *x = w->data;
  int rc = status < 0 ? status : x->setup_err;
  if (rc < 0) {
    set_err(x, rc, "fifo", NULL);
    finish(x);
    return;
  }
  for (int i = 0; i < 2; i++) {
    stream_t *s = &x->s[i];
    uv_pipe_init(x->loop, &s->pipe, 0);
    s->pipe.data = s;
    s->opened = 1;
    if ((rc = uv_pipe_open(&s->pipe, s->rfd)) == 0) {
      s->rfd = -1; /* the pipe owns it now */
      rc = uv_read_start((uv_stream_t *)&s->pipe, on_alloc, on_read);
    }
    if (rc < 0) {
      set_err(x, rc, "fifo", NULL);
      finish(x);
      return;
    }
  }
  if (x->cancelled) {
    finish(x);
    return;
  }
  Google__Protobuf__Any spec = GOOGLE__PROTOBUF__ANY__INIT;
  spec.type_url = DIBBA_EXEC_PROCESS_TYPE;
  spec.value.data = (uint8_t *)x->process;
  spec.value.len = strlen(x->process);
  Containerd__Services__Tasks__V1__ExecProcessRequest req = CONTAINERD__SERVICES__TASKS__V1__EXEC_PROCESS_REQUEST__INIT;
  req.container_id = x->id;
  req.exec_id = x->exec_id;
  req.stdin = "";
  req.stdout = x->s[0].path;
  req.stderr = x->s[1].path;
  req.spec = &spec;
  dibba_containerd_call_opts_t o = {.ns = x->ns};
  if ((rc = dibba_containerd_tasks_exec(x->ctd, &o, &req, on_exec, x)) < 0) {
    set_err(x, rc, "exec", NULL);
    finish(x);
  }
}

static int valid_exec_id(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > 76)
    return 0;
  for (; *s; s++)
    if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') || strchr("._-", *s)))
      return 0;
  return 1;
}

int dibba_containerd_exec(dibba_containerd_t *ctd, const dibba_exec_opts_t *opts, dibba_exec_cb cb, void *data,
                          dibba_exec_t **out) {
  char emsg[256], gen[DIBBA_ID_LEN + 8];
  json_t *proc = NULL;
  if (!ctd || !opts || !cb || !opts->id || !*opts->id || !opts->state_dir || opts->state_dir[0] != '/' ||
      strlen(opts->state_dir) > 4000 || (opts->exec_id && !valid_exec_id(opts->exec_id)))
    return -EINVAL;
  int rc = dibba_oci_process_build(opts->args, opts->n_args, opts->env, opts->n_env, opts->cwd, opts->uid, opts->gid,
                                   &proc, emsg, sizeof emsg);
  if (rc < 0)
    return rc;
  dibba_exec_t *x = dibba_xcalloc(1, sizeof *x);
  x->ctd = ctd;
  x->loop = dibba_containerd_loop(ctd);
  x->process = json_dumps(proc, JSON_COMPACT);
  json_decref(proc);
  x->ns = dibba_xstrdup(opts->ns ? opts->ns : dibba_containerd_namespace(ctd));
  x->id = dibba_xstrdup(opts->id);
  if (!opts->exec_id) {
    memcpy(gen, "exec-", 5);
    dibba_id_new(gen + 5);
  }
  x->exec_id = dibba_xstrdup(opts->exec_id ? opts->exec_id : gen);
  x->state_dir = dibba_xstrdup(opts->state_dir);
  x->timeout_ms = opts->timeout_ms;
  x->cap = opts->output_max ? opts->output_max : DIBBA_EXEC_OUTPUT_MAX;
  x->cb = cb;
  x->data = data;
  for (int i = 0; i < 2; i++) {
    stream_t *s = &x->s[i];
    s->x = x;
    s->rfd = s->wfd = -1;
    dibba_buf_init(&s->buf, x->cap);
    snprintf(s->path, sizeof s->path, "%s/%s.%s", x->state_dir, x->exec_id, i ? "stderr" : "stdout");
  }
  uv_timer_init(x->loop, &x->timeout);
  uv_timer_init(x->loop, &x->aux);
  x->work.data = x;
  if ((rc = uv_queue_work(x->loop, &x->work, work_setup, after_setup)) < 0) {
    set_err(x, rc, "queue work", NULL);
    finish(x);
  }
  if (out)
    *out = x;
  return 0;
}
