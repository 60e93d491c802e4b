/* SPDX-License-Identifier: Apache-2.0 */
/* HTTP(S) requests with libcurl's multi-socket API, driven by one uv_poll_t per socket and one uv_timer_t. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "dibba/alloc.h"
#include "dibba/aws.h"

#define HTTP_DEFAULT_TIMEOUT_MS 30000u
#define HTTP_DEFAULT_MAX_RESPONSE (4u * 1024u * 1024u)

struct dibba_aws_http_req_s {
  dibba_aws_http_t *h;
  CURL *easy;
  struct curl_slist *headers;
  char *body;
  dibba_buf_t resp;
  int too_big;
  int cancelled;
  dibba_aws_http_cb cb;
  void *data;
  char errbuf[CURL_ERROR_SIZE];
  dibba_aws_http_req_t *next, *prev;
};

/* One socket libcurl asked us to watch. Freed from its close callback. */
typedef struct sock_s {
  uv_poll_t poll;
  dibba_aws_http_t *h;
  curl_socket_t fd;
  struct sock_s *next, *prev;
} sock_t;

struct dibba_aws_http_s {
  uv_loop_t *loop;
  CURLM *multi;
  uv_timer_t timer;
  uv_idle_t idle;             /* delivers cancellations on a later loop turn */
  dibba_aws_http_req_t *reqs; /* in flight (attached to multi) */
  dibba_aws_http_req_t *done; /* finished but not yet reported (cancelled) */
  sock_t *socks;              /* watched sockets */
  unsigned pending_closes;    /* uv_close calls whose callback has not run */
  int closing;
  int dispatching;
  int close_requested;
  dibba_aws_http_close_cb close_cb;
  void *close_data;
};

static void list_remove(dibba_aws_http_req_t **head, dibba_aws_http_req_t *r) {
  if (r->prev)
    r->prev->next = r->next;
  else
    *head = r->next;
  if (r->next)
    r->next->prev = r->prev;
  r->next = r->prev = NULL;
}

static void list_push(dibba_aws_http_req_t **head, dibba_aws_http_req_t *r) {
  r->prev = NULL;
  r->next = *head;
  if (*head)
    (*head)->prev = r;
  *head = r;
}

static void req_free(dibba_aws_http_req_t *r) {
  if (r->easy)
    curl_easy_cleanup(r->easy);
  curl_slist_free_all(r->headers);
  free(r->body);
  dibba_buf_free(&r->resp);
  free(r);
}

static void report(dibba_aws_http_req_t *r, int status, long code, const char *error) {
  dibba_aws_http_res_t res = {.status = status,
                              .http_code = status == 0 ? code : 0,
                              .body = r->resp.data && status == 0 ? r->resp.data : "",
                              .len = status == 0 ? r->resp.len : 0,
                              .error = error ? error : ""};
  r->cb(&res, r->data);
}

static int map_curl(CURLcode c, const dibba_aws_http_req_t *r) {
  switch (c) {
  case CURLE_OK: return 0;
  case CURLE_OPERATION_TIMEDOUT: return UV_ETIMEDOUT;
  case CURLE_COULDNT_CONNECT: return UV_ECONNREFUSED;
  case CURLE_WRITE_ERROR: return r->too_big ? -EFBIG : -EIO;
  case CURLE_FILESIZE_EXCEEDED: return -EFBIG;
  default: return -EIO;
  }
}

static void finish_close(dibba_aws_http_t *h);

/* Report every finished transfer. Callbacks may send, cancel or close; closing is finished afterwards. */
static void check_done(dibba_aws_http_t *h) {
  CURLMsg *msg;
  int left;
  h->dispatching++;
  while ((msg = curl_multi_info_read(h->multi, &left)) != NULL) {
    if (msg->msg != CURLMSG_DONE)
      continue;
    dibba_aws_http_req_t *r = NULL;
    CURL *easy = msg->easy_handle;
    CURLcode result = msg->data.result;
    curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&r);
    long code = 0;
    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &code);
    curl_multi_remove_handle(h->multi, easy);
    list_remove(&h->reqs, r);
    int status = map_curl(result, r);
    report(r, status, code, status ? (r->errbuf[0] ? r->errbuf : curl_easy_strerror(result)) : NULL);
    req_free(r);
  }
  h->dispatching--;
  if (h->dispatching == 0 && h->close_requested)
    finish_close(h);
}

static void poll_cb(uv_poll_t *p, int status, int events) {
  sock_t *s = p->data;
  dibba_aws_http_t *h = s->h;
  int flags = 0, running = 0;
  if (status < 0)
    flags = CURL_CSELECT_ERR;
  if (events & UV_READABLE)
    flags |= CURL_CSELECT_IN;
  if (events & UV_WRITABLE)
    flags |= CURL_CSELECT_OUT;
  curl_multi_socket_action(h->multi, s->fd, flags, &running);
  check_done(h);
}

static void timer_cb(uv_timer_t *t) {
  dibba_aws_http_t *h = t->data;
  int running = 0;
  curl_multi_socket_action(h->multi, CURL_SOCKET_TIMEOUT, 0, &running);
  check_done(h);
}

static void maybe_free(dibba_aws_http_t *h) {
  if (h->closing && h->pending_closes == 0) {
    if (h->close_cb)
      h->close_cb(h, h->close_data);
    free(h);
  }
}

static void handle_closed(uv_handle_t *handle) {
  dibba_aws_http_t *h = handle->data;
  h->pending_closes--;
  maybe_free(h);
}

static void sock_closed(uv_handle_t *handle) {
  sock_t *s = handle->data;
  dibba_aws_http_t *h = s->h;
  free(s);
  h->pending_closes--;
  maybe_free(h);
}

static void sock_close(dibba_aws_http_t *h, sock_t *s) {
  if (s->prev)
    s->prev->next = s->next;
  else
    h->socks = s->next;
  if (s->next)
    s->next->prev = s->prev;
  uv_poll_stop(&s->poll);
  h->pending_closes++;
  uv_close((uv_handle_t *)&s->poll, sock_closed);
}

static int socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp) {
  dibba_aws_http_t *h = userp;
  sock_t *s = socketp;
  (void)easy;
  if (what == CURL_POLL_REMOVE) {
    if (s) {
      sock_close(h, s);
      if (h->multi)
        curl_multi_assign(h->multi, fd, NULL);
    }
    return 0;
  }
  if (s == NULL) {
    s = dibba_xcalloc(1, sizeof *s);
    s->h = h;
    s->fd = fd;
    if (uv_poll_init_socket(h->loop, &s->poll, fd) < 0) {
      free(s);
      return -1;
    }
    s->poll.data = s;
    s->next = h->socks;
    if (h->socks)
      h->socks->prev = s;
    h->socks = s;
    curl_multi_assign(h->multi, fd, s);
  }
  int events = 0;
  if (what == CURL_POLL_IN || what == CURL_POLL_INOUT)
    events |= UV_READABLE;
  if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT)
    events |= UV_WRITABLE;
  return uv_poll_start(&s->poll, events, poll_cb) < 0 ? -1 : 0;
}

static int timer_fn(CURLM *multi, long timeout_ms, void *userp) {
  dibba_aws_http_t *h = userp;
  (void)multi;
  if (timeout_ms < 0)
    uv_timer_stop(&h->timer);
  else
    uv_timer_start(&h->timer, timer_cb, (uint64_t)timeout_ms, 0);
  return 0;
}

static size_t write_cb(char *p, size_t size, size_t nmemb, void *userp) {
  dibba_aws_http_req_t *r = userp;
  size_t n = size * nmemb;
  if (dibba_buf_add(&r->resp, p, n) < 0) {
    r->too_big = 1;
    return 0;
  }
  return n;
}

static void idle_cb(uv_idle_t *idle) {
  dibba_aws_http_t *h = idle->data;
  uv_idle_stop(idle);
  h->dispatching++;
  while (h->done) {
    dibba_aws_http_req_t *r = h->done;
    list_remove(&h->done, r);
    report(r, UV_ECANCELED, 0, "cancelled");
    req_free(r);
  }
  h->dispatching--;
  if (h->dispatching == 0 && h->close_requested)
    finish_close(h);
}

int dibba_aws_http_new(uv_loop_t *loop, dibba_aws_http_t **out) {
  static int global_done;
  if (!global_done) {
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
      return -ENOMEM;
    global_done = 1;
  }
  dibba_aws_http_t *h = dibba_xcalloc(1, sizeof *h);
  h->loop = loop;
  h->multi = curl_multi_init();
  if (h->multi == NULL) {
    free(h);
    return -ENOMEM;
  }
  curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
  curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
  curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, timer_fn);
  curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
  uv_timer_init(loop, &h->timer);
  h->timer.data = h;
  uv_idle_init(loop, &h->idle);
  h->idle.data = h;
  *out = h;
  return 0;
}

int dibba_aws_http_send(dibba_aws_http_t *h, const dibba_aws_http_opts_t *o, dibba_aws_http_cb cb, void *data,
                        dibba_aws_http_req_t **out) {
  if (h->closing || h->close_requested)
    return UV_ECANCELED;
  if (o->url == NULL || o->method == NULL || cb == NULL ||
      (strncmp(o->url, "http://", 7) != 0 && strncmp(o->url, "https://", 8) != 0))
    return -EINVAL;
  dibba_aws_http_req_t *r = dibba_xcalloc(1, sizeof *r);
  r->h = h;
  r->cb = cb;
  r->data = data;
  dibba_buf_init(&r->resp, o->max_response ? o->max_response : HTTP_DEFAULT_MAX_RESPONSE);
  r->easy = curl_easy_init();
  if (r->easy == NULL) {
    req_free(r);
    return -ENOMEM;
  }
  for (size_t i = 0; i < o->nheaders; i++) {
    struct curl_slist *l = curl_slist_append(r->headers, o->headers[i]);
    if (l == NULL)
      dibba_oom(strlen(o->headers[i]));
    r->headers = l;
  }
  /* libcurl adds "Expect: 100-continue" to larger POSTs; AWS does not need the extra round trip. */
  r->headers = curl_slist_append(r->headers, "Expect:");
  CURL *e = r->easy;
  curl_easy_setopt(e, CURLOPT_URL, o->url);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->headers);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(o->timeout_ms ? o->timeout_ms : HTTP_DEFAULT_TIMEOUT_MS));
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->errbuf);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
  curl_easy_setopt(e, CURLOPT_PRIVATE, r);
  curl_easy_setopt(e, CURLOPT_USERAGENT, "dibba-aws/1");
  curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE,
                   (curl_off_t)(o->max_response ? o->max_response : HTTP_DEFAULT_MAX_RESPONSE));
  if (strcmp(o->method, "POST") == 0) {
    r->body = dibba_xmalloc(o->body_len + 1);
    if (o->body_len)
      memcpy(r->body, o->body, o->body_len);
    r->body[o->body_len] = '\0';
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)o->body_len);
  } else if (strcmp(o->method, "GET") != 0) {
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, o->method);
  }
  if (curl_multi_add_handle(h->multi, e) != CURLM_OK) {
    req_free(r);
    return -EIO;
  }
  list_push(&h->reqs, r);
  if (out)
    *out = r;
  return 0;
}

int dibba_aws_http_cancel(dibba_aws_http_req_t *r) {
  dibba_aws_http_t *h = r->h;
  if (r->cancelled)
    return -EALREADY;
  r->cancelled = 1;
  curl_multi_remove_handle(h->multi, r->easy);
  list_remove(&h->reqs, r);
  list_push(&h->done, r);
  uv_idle_start(&h->idle, idle_cb);
  return 0;
}

/* Tear down once no callback of ours is on the stack. */
static void finish_close(dibba_aws_http_t *h) {
  h->close_requested = 0;
  while (h->reqs)
    dibba_aws_http_cancel(h->reqs);
  /* Report the cancellations now: nothing may run after the handles are closed. */
  h->dispatching++;
  while (h->done) {
    dibba_aws_http_req_t *r = h->done;
    list_remove(&h->done, r);
    report(r, UV_ECANCELED, 0, "cancelled");
    req_free(r);
  }
  h->dispatching--;
  h->closing = 1;
  h->pending_closes += 2;
  CURLM *multi = h->multi;
  h->multi = NULL;
  curl_multi_cleanup(multi); /* may still call socket_cb with CURL_POLL_REMOVE */
  while (h->socks)           /* sockets libcurl did not hand back */
    sock_close(h, h->socks);
  uv_timer_stop(&h->timer);
  uv_idle_stop(&h->idle);
  uv_close((uv_handle_t *)&h->timer, handle_closed);
  uv_close((uv_handle_t *)&h->idle, handle_closed);
}

int dibba_aws_http_close(dibba_aws_http_t *h, dibba_aws_http_close_cb cb, void *data) {
  if (h == NULL || h->closing || h->close_requested)
    return UV_EALREADY;
  h->close_cb = cb;
  h->close_data = data;
  h->close_requested = 1;
  if (h->dispatching == 0)
    finish_close(h);
  return 0;
}
