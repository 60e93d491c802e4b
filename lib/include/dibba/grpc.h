/* SPDX-License-Identifier: Apache-2.0 */
/* A gRPC client over HTTP/2 (nghttp2) on a libuv unix-socket pipe: unary, server- and client-streaming calls. */
#ifndef DIBBA_GRPC_H
#define DIBBA_GRPC_H

#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>
#include <uv.h>

#include "dibba/buf.h"

/* Largest message accepted in either direction unless the client options say otherwise. */
#define DIBBA_GRPC_DEFAULT_MAX_MESSAGE (16u * 1024u * 1024u)
/* Longest grpc-message kept (after percent-decoding); longer ones are truncated. */
#define DIBBA_GRPC_MAX_STATUS_MESSAGE 4096

/* gRPC status codes (values are the wire values). */
typedef enum {
  DIBBA_GRPC_OK = 0,
  DIBBA_GRPC_CANCELLED = 1,
  DIBBA_GRPC_UNKNOWN = 2,
  DIBBA_GRPC_INVALID_ARGUMENT = 3,
  DIBBA_GRPC_DEADLINE_EXCEEDED = 4,
  DIBBA_GRPC_NOT_FOUND = 5,
  DIBBA_GRPC_ALREADY_EXISTS = 6,
  DIBBA_GRPC_PERMISSION_DENIED = 7,
  DIBBA_GRPC_RESOURCE_EXHAUSTED = 8,
  DIBBA_GRPC_FAILED_PRECONDITION = 9,
  DIBBA_GRPC_ABORTED = 10,
  DIBBA_GRPC_OUT_OF_RANGE = 11,
  DIBBA_GRPC_UNIMPLEMENTED = 12,
  DIBBA_GRPC_INTERNAL = 13,
  DIBBA_GRPC_UNAVAILABLE = 14,
  DIBBA_GRPC_DATA_LOSS = 15,
  DIBBA_GRPC_UNAUTHENTICATED = 16,
} dibba_grpc_code_t;

/* The final status of a call. message is owned by the status (NUL-terminated, never NULL once set). */
typedef struct dibba_grpc_status_s {
  dibba_grpc_code_t code;
  char *message;
} dibba_grpc_status_t;

/* "NOT_FOUND" etc.; "CODE_<n>" style names are not produced: unknown values give "UNKNOWN". */
const char *dibba_grpc_code_name(dibba_grpc_code_t code);
/* Map a gRPC code to Dibba's error convention: OK→0, NOT_FOUND→-ENOENT, ALREADY_EXISTS→-EEXIST,
 * INVALID_ARGUMENT/OUT_OF_RANGE→-EINVAL, DEADLINE_EXCEEDED→UV_ETIMEDOUT, UNAVAILABLE→UV_ECONNREFUSED,
 * CANCELLED→UV_ECANCELED, FAILED_PRECONDITION→-EBUSY, PERMISSION_DENIED/UNAUTHENTICATED→-EACCES,
 * RESOURCE_EXHAUSTED→-ENOSPC, ABORTED→-EAGAIN, UNIMPLEMENTED→-ENOSYS, others→DIBBA_EPROTO. */
int dibba_grpc_code_to_errno(dibba_grpc_code_t code);

/* Build a status from response header values (any may be NULL): the HTTP :status, grpc-status and the
 * percent-encoded grpc-message. A non-200 HTTP status maps as gRPC specifies (404→UNIMPLEMENTED,
 * 429/502/503/504→UNAVAILABLE, 401→UNAUTHENTICATED, 403→PERMISSION_DENIED, else UNKNOWN); a missing or
 * malformed grpc-status is INTERNAL. out->message is malloc'd; free with dibba_grpc_status_free. */
void dibba_grpc_status_from_headers(dibba_grpc_status_t *out, const char *http_status, const char *grpc_status,
                                    const char *grpc_message);
/* Set code and a copy of message. */
void dibba_grpc_status_set(dibba_grpc_status_t *st, dibba_grpc_code_t code, const char *message);
/* Free the message; safe to call twice. */
void dibba_grpc_status_free(dibba_grpc_status_t *st);
/* Percent-decode src (grpc-message encoding) into a new string of at most max bytes; invalid escapes are
 * kept literally. */
char *dibba_grpc_percent_decode(const char *src, size_t max);

/* --- Message framing: 1 byte compressed flag (must be 0), 4 bytes big-endian length, payload. --- */

/* Append one framed message (msg packed) to out. Returns 0, -EMSGSIZE if the packed size exceeds max, or
 * -E2BIG if out's cap would be passed. */
int dibba_grpc_frame(dibba_buf_t *out, const ProtobufCMessage *msg, size_t max);

/* Called once per complete message; the bytes are only valid during the call. Non-zero return stops
 * feeding and is returned by dibba_grpc_deframer_feed. */
typedef int (*dibba_grpc_deframe_cb)(void *data, const uint8_t *msg, size_t len);

/* Reassembles messages from arbitrary chunks (one stream's DATA payloads). */
typedef struct dibba_grpc_deframer_s {
  uint8_t hdr[5];
  size_t hdr_len;
  uint8_t *msg; /* payload being assembled, msg_len bytes allocated */
  size_t msg_len;
  size_t msg_have;
  size_t max;
  int failed;
} dibba_grpc_deframer_t;

/* Messages longer than max are rejected (0: DIBBA_GRPC_DEFAULT_MAX_MESSAGE). */
void dibba_grpc_deframer_init(dibba_grpc_deframer_t *d, size_t max);
/* Feed n bytes. Returns 0, -EMSGSIZE for a length above max (checked before allocating), -ENOTSUP for a
 * compressed message, or the callback's non-zero return. After an error the deframer stays failed. */
int dibba_grpc_deframer_feed(dibba_grpc_deframer_t *d, const uint8_t *p, size_t n, dibba_grpc_deframe_cb cb,
                             void *data);
/* 1 if part of a message (prefix or payload) is buffered, so ending the stream now would cut it. */
int dibba_grpc_deframer_partial(const dibba_grpc_deframer_t *d);
/* Release the buffer; safe to call twice. */
void dibba_grpc_deframer_free(dibba_grpc_deframer_t *d);

/* --- Client --- */

typedef struct dibba_grpc_client_s dibba_grpc_client_t;
typedef struct dibba_grpc_call_s dibba_grpc_call_t;

typedef enum {
  DIBBA_GRPC_CONNECTING = 0,
  DIBBA_GRPC_READY = 1,
  DIBBA_GRPC_TRANSIENT_FAILURE = 2, /* disconnected, a reconnect is scheduled with backoff */
  DIBBA_GRPC_SHUTDOWN = 3,          /* dibba_grpc_client_close was called */
} dibba_grpc_state_t;

/* Connection state changes. err is the reason for TRANSIENT_FAILURE (a UV_E* code), else 0. On READY after a
 * reconnect, streams that the user wants (event subscriptions) must be started again: every call in flight
 * when the connection dropped has already finished with UNAVAILABLE. Called from loop callbacks, never from
 * inside another client callback. */
typedef void (*dibba_grpc_state_cb)(dibba_grpc_client_t *c, dibba_grpc_state_t state, int err, void *data);
/* All handles closed and the client freed. */
typedef void (*dibba_grpc_close_cb)(dibba_grpc_client_t *c, void *data);

typedef struct dibba_grpc_client_opts_s {
  const char *address;          /* "unix:///run/containerd/containerd.sock" or a bare path; required */
  const char *authority;        /* :authority; NULL: "localhost" */
  size_t max_message;           /* 0: DIBBA_GRPC_DEFAULT_MAX_MESSAGE */
  uint32_t initial_window;      /* per-stream receive window; 0: 1 MiB */
  uint64_t backoff_initial_ms;  /* 0: 100 ms */
  uint64_t backoff_max_ms;      /* 0: 5 s */
  dibba_grpc_state_cb state_cb; /* may be NULL */
  void *data;
} dibba_grpc_client_opts_t;

/* Create a client and start connecting. The address is copied. Returns 0, -EINVAL (bad address or too long
 * for a sun_path), or a UV_E* code. */
int dibba_grpc_client_new(uv_loop_t *loop, const dibba_grpc_client_opts_t *opts, dibba_grpc_client_t **out);
/* Graceful close: sends GOAWAY, finishes every call with CANCELLED (their done callbacks still run), closes
 * all handles and frees the client, then calls cb (may be NULL). Safe to call twice and from any client
 * callback; the pointer must not be used after cb. */
void dibba_grpc_client_close(dibba_grpc_client_t *c, dibba_grpc_close_cb cb, void *data);
dibba_grpc_state_t dibba_grpc_client_state(const dibba_grpc_client_t *c);
/* Number of calls not yet finished (queued, in flight, or waiting for their done callback). */
size_t dibba_grpc_client_calls(const dibba_grpc_client_t *c);
void *dibba_grpc_client_data(const dibba_grpc_client_t *c);

/* One request header; name must be lowercase ASCII and not start with ':' or "grpc-". */
typedef struct dibba_grpc_md_s {
  const char *name;
  const char *value;
} dibba_grpc_md_t;

/* Each response message of a streaming call; msg is freed after the callback returns. */
typedef void (*dibba_grpc_message_cb)(dibba_grpc_call_t *call, ProtobufCMessage *msg, void *data);
/* The call finished. err is dibba_grpc_code_to_errno(st->code). For unary calls (no on_message) resp is the
 * response on success, else NULL; it and the call are freed after the callback returns. Always called exactly
 * once per started call, from the loop, never from inside dibba_grpc_call_start/cancel. */
typedef void (*dibba_grpc_done_cb)(dibba_grpc_call_t *call, int err, const dibba_grpc_status_t *st,
                                   ProtobufCMessage *resp, void *data);

typedef struct dibba_grpc_call_opts_s {
  const char *path;                                /* "/containerd.services.version.v1.Version/Version" */
  const ProtobufCMessageDescriptor *response_desc; /* to unpack responses */
  const dibba_grpc_md_t *metadata;                 /* extra headers, copied */
  size_t n_metadata;
  uint64_t timeout_ms;              /* 0: no deadline; else sent as grpc-timeout and enforced locally */
  dibba_grpc_message_cb on_message; /* NULL: unary response (exactly one message, given to on_done) */
  dibba_grpc_done_cb on_done;       /* required */
  int client_stream;                /* keep the request side open for dibba_grpc_call_send */
  void *data;
} dibba_grpc_call_opts_t;

/* Start a call and send req (may be NULL for a client stream that sends later). Unless client_stream, the
 * request side is closed after req. Calls beyond the server's MAX_CONCURRENT_STREAMS wait in nghttp2's queue;
 * calls made while connecting wait for the connection. Returns 0 (on_done will run), -EINVAL, -EMSGSIZE,
 * -ESHUTDOWN (client closing) or UV_ECONNREFUSED (disconnected, waiting to reconnect); on error on_done is
 * not called. *out (may be NULL) is valid until on_done returns. */
int dibba_grpc_call_start(dibba_grpc_client_t *c, const dibba_grpc_call_opts_t *opts, const ProtobufCMessage *req,
                          dibba_grpc_call_t **out);
/* Queue one more request message on a client_stream call. Returns 0, -EPIPE (send side closed or call
 * finished), -EMSGSIZE, or -ENOBUFS when more than 2 × max_message bytes are waiting (retry after
 * dibba_grpc_call_pending_send drops). */
int dibba_grpc_call_send(dibba_grpc_call_t *call, const ProtobufCMessage *msg);
/* Half-close the request side (END_STREAM after what is queued). Idempotent. */
int dibba_grpc_call_close_send(dibba_grpc_call_t *call);
/* Bytes of request messages not yet handed to HTTP/2. */
size_t dibba_grpc_call_pending_send(const dibba_grpc_call_t *call);
/* Cancel: RST_STREAM(CANCEL) and on_done with CANCELLED on a later loop turn. No-op once finished. */
void dibba_grpc_call_cancel(dibba_grpc_call_t *call);
dibba_grpc_client_t *dibba_grpc_call_client(const dibba_grpc_call_t *call);

#endif
