/* SPDX-License-Identifier: Apache-2.0 */
/* Internal connection API shared by server.c, conn.c, request.c and websocket.c. */
#ifndef DIBBA_HTTP_SERVER_H
#define DIBBA_HTTP_SERVER_H

#include "http_private.h"

void dibba__http_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
void dibba__http_read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf);
void dibba__http_timer_cb(uv_timer_t *t);
void dibba__http_idle_cb(uv_idle_t *h);

/* Queue head (copied) and body (owned, freed with free) as one writev. */
void dibba__http_conn_write(dibba__http_conn_t *c, const char *head, size_t hlen, void *body, size_t blen);
size_t dibba__http_conn_out_bytes(const dibba__http_conn_t *c);
void dibba__http_conn_update_reading(dibba__http_conn_t *c);
void dibba__http_conn_schedule_resume(dibba__http_conn_t *c);
void dibba__http_conn_arm(dibba__http_conn_t *c, uint64_t ms);
void dibba__http_conn_close(dibba__http_conn_t *c);
void dibba__http_conn_begin_shutdown(dibba__http_conn_t *c);
void dibba__http_conn_ref(dibba__http_conn_t *c);
void dibba__http_conn_unref(dibba__http_conn_t *c);

/* conn.c */
void dibba__http_conn_setup_parser(dibba__http_conn_t *c);
void dibba__http_conn_input(dibba__http_conn_t *c, const char *data, size_t len);
void dibba__http_conn_resume(dibba__http_conn_t *c);
/* Answer status (with Connection: close) after the queued responses, then close. */
void dibba__http_conn_fail(dibba__http_conn_t *c, int status, const char *detail);
/* Write finished responses in request order; handles upgrade takeover and closing. */
void dibba__http_conn_flush(dibba__http_conn_t *c);

/* request.c */
void dibba__http_dispatch(dibba_http_req_t *req);
int dibba__http_respond_status(dibba_http_req_t *req, int status, const char *detail);
int dibba__http_head_check(dibba_http_req_t *req, int expect);

/* websocket.c */
void dibba__ws_input(dibba__http_conn_t *c, const char *data, size_t len);
void dibba__ws_timer(dibba__http_conn_t *c);
void dibba__ws_start(dibba__http_conn_t *c, dibba_http_req_t *req);
void dibba__ws_opened(dibba__http_conn_t *c);
void dibba__ws_notify_close(dibba__http_conn_t *c, int code);
/* Validate an upgrade request for a websocket route: 0, or a status (400/403/426) with headers added. */
int dibba__ws_check(dibba_http_req_t *req);
/* Send the 101 response. */
int dibba__ws_accept(dibba_http_req_t *req);

#endif
