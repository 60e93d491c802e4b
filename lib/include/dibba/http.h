/* SPDX-License-Identifier: Apache-2.0 */
/* Dibba's hardened HTTP/1.1 server: strict llhttp framing, limits, router with roles, metrics, async handlers. */
#ifndef DIBBA_HTTP_H
#define DIBBA_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <uv.h>

#include "dibba/buf.h"
#include "dibba/config.h"

typedef struct dibba_http_server_s dibba_http_server_t;
typedef struct dibba_http_router_s dibba_http_router_t;
typedef struct dibba_http_req_s dibba_http_req_t;
typedef struct dibba_ws_s dibba_ws_t;

/* Limits; dibba_http_limits_default() fills sane values. Times are in milliseconds. */
typedef struct dibba_http_limits_s {
  size_t max_url_bytes;         /* 414 above this (default 8 KiB) */
  size_t max_header_bytes;      /* whole header block incl. request line; 431 above (default 16 KiB) */
  size_t max_headers;           /* header count; 431 above (default 64) */
  size_t max_body_bytes;        /* 413 above (default 1 MiB) */
  uint64_t read_timeout_ms;     /* header block (and each body gap) must arrive in this; 408 + close (10 s) */
  uint64_t idle_timeout_ms;     /* keep-alive idle close (60 s) */
  size_t max_pipeline;          /* requests parsed ahead of their responses before reading pauses (16) */
  size_t write_high_water;      /* stop reading above this many queued output bytes (1 MiB) */
  size_t write_hard_limit;      /* stream/WebSocket sends fail with UV_ENOBUFS above this (8 MiB) */
  uint64_t shutdown_timeout_ms; /* graceful stop force-closes what is left after this (10 s) */
  size_t ws_max_frame_bytes;    /* WebSocket frame payload cap, close 1009 above (1 MiB) */
  size_t ws_max_message_bytes;  /* reassembled message cap, close 1009 above (4 MiB) */
  uint64_t ws_ping_interval_ms; /* server ping period; no pong within one period closes (30 s; 0 = off) */
  uint64_t ws_close_timeout_ms; /* wait for the peer's close frame after ours (5 s) */
  int access_log;               /* 1: one JSON access line per request via dibba_log_info("http") (default 1) */
} dibba_http_limits_t;

/* Fill l with the defaults above. */
void dibba_http_limits_default(dibba_http_limits_t *l);
/* Override l from config keys api.max_url_bytes, api.max_header_bytes, api.max_headers, api.max_body_bytes,
 * api.read_timeout_ms, api.idle_timeout_ms, api.access_log. Returns 0 or DIBBA_ECONFIG (err filled). */
int dibba_http_limits_from_config(dibba_http_limits_t *l, const dibba_config_t *cfg, char *err, size_t errlen);

/* Roles, ranked: a route requiring rank r accepts principals with rank >= r. PUBLIC means no authentication. */
typedef enum {
  DIBBA_ROLE_PUBLIC = 0,
  DIBBA_ROLE_VIEWER = 1,
  DIBBA_ROLE_OPERATOR = 2,
  DIBBA_ROLE_ADMIN = 3,
} dibba_http_role_t;

/* "viewer"/"operator"/"admin" -> rank; -EINVAL otherwise. */
int dibba_http_role_parse(const char *s, dibba_http_role_t *out);
/* Static name of a role ("public" for PUBLIC). */
const char *dibba_http_role_name(dibba_http_role_t r);

/* Who made the request, as the authenticator established it. */
typedef struct dibba_http_principal_s {
  char user[128];
  dibba_http_role_t role;
} dibba_http_principal_t;

/* Returned by an authenticator that will answer later through dibba_http_auth_done(). */
#define DIBBA_HTTP_AUTH_PENDING 1

/* Authenticator for non-public routes. token is the bearer token (Authorization header, or for WebSocket
 * routes the Sec-WebSocket-Protocol "dibba.bearer, <token>" form) or NULL if none was sent. Return 0 after
 * filling *out, 401 or 403 to reject, or DIBBA_HTTP_AUTH_PENDING and later call dibba_http_auth_done(). */
typedef int (*dibba_http_auth_cb)(void *data, dibba_http_req_t *req, const char *token, dibba_http_principal_t *out);
/* Finish a pending authentication: status 0 (principal used) or 401/403. Ignored if the client went away. */
void dibba_http_auth_done(dibba_http_req_t *req, int status, const dibba_http_principal_t *principal);

/* A route handler. It must eventually respond (now or later) unless the request is cancelled. */
typedef void (*dibba_http_handler_cb)(dibba_http_req_t *req, void *data);

/* WebSocket callbacks for a route marked websocket (see dibba/websocket.h). */
typedef struct dibba_ws_ops_s {
  void (*on_open)(dibba_ws_t *ws, dibba_http_req_t *req, void *data);
  /* opcode 1 = text (valid UTF-8), 2 = binary; data is valid during the call only. */
  void (*on_message)(dibba_ws_t *ws, int opcode, const char *msg, size_t len, void *data);
  /* The WebSocket is gone (code received or sent; 1006 for an abnormal end). Do not send after this. */
  void (*on_close)(dibba_ws_t *ws, int code, void *data);
} dibba_ws_ops_t;

/* Route body kinds: a JSON route answers 415 for another Content-Type and 422 for malformed JSON. */
enum { DIBBA_HTTP_BODY_ANY = 0, DIBBA_HTTP_BODY_JSON = 1, DIBBA_HTTP_BODY_FORM = 2 };

/* One route table entry; strings are copied by dibba_http_router_add. */
typedef struct dibba_http_route_s {
  const char *method;            /* "GET", "POST", ... */
  const char *pattern;           /* "/v1/pods/{ns}/{name}" */
  dibba_http_handler_cb handler; /* NULL for a websocket route */
  void *data;                    /* handler / ws callback data */
  dibba_http_role_t role;        /* least role required, or DIBBA_ROLE_PUBLIC */
  const char *summary;           /* OpenAPI summary */
  const char *request_schema;    /* optional JSON Schema text for the request body */
  const char *response_schema;   /* optional JSON Schema text for the 200 response */
  int body;                      /* DIBBA_HTTP_BODY_* */
  const dibba_ws_ops_t *ws;      /* non-NULL: the route upgrades to a WebSocket */
} dibba_http_route_t;

/* Create an empty router. Never NULL. */
dibba_http_router_t *dibba_http_router_new(void);
/* Free the router; safe with NULL. The server must be closed first. */
void dibba_http_router_free(dibba_http_router_t *r);
/* Add a route (copied). Returns 0, -EINVAL (bad method/pattern/schema JSON) or -EEXIST (same method+pattern). */
int dibba_http_router_add(dibba_http_router_t *r, const dibba_http_route_t *route);
/* Generate the OpenAPI 3.0 document of every route (new reference). */
json_t *dibba_http_router_openapi(const dibba_http_router_t *r, const char *title, const char *version);

/* Renders extra Prometheus lines for GET /metrics (append to out). */
typedef void (*dibba_http_metrics_cb)(void *data, dibba_buf_t *out);

/* Create a server bound to loop with a router (borrowed; must outlive the server) and limits (copied; NULL for
 * defaults). Never NULL. */
dibba_http_server_t *dibba_http_server_new(uv_loop_t *loop, dibba_http_router_t *router,
                                           const dibba_http_limits_t *limits);
/* Set the authenticator used for non-public routes (without one they answer 401). */
void dibba_http_server_set_auth(dibba_http_server_t *s, dibba_http_auth_cb cb, void *data);
/* Allowed WebSocket Origins (exact match, e.g. "https://dibba.example"); a request without Origin is allowed.
 * NULL/0 allows any Origin. The strings are copied. */
void dibba_http_server_set_ws_origins(dibba_http_server_t *s, const char *const *origins, size_t n);
/* App hook appended to the /metrics text. */
void dibba_http_server_set_metrics_hook(dibba_http_server_t *s, dibba_http_metrics_cb cb, void *data);
/* Called once for every completed response (after the last byte was queued, before the request can be freed),
 * with the final status, in the order responses are produced: the place for audit records and other per-request
 * bookkeeping that must cover every route. Requests whose client went away before a response are not reported. */
typedef void (*dibba_http_response_cb)(void *data, dibba_http_req_t *req, int status);
/* Set the response hook (NULL cb: none). */
void dibba_http_server_set_response_hook(dibba_http_server_t *s, dibba_http_response_cb cb, void *data);
/* Listen on host:port ("127.0.0.1", 8080; port 0 picks one). Returns 0 or a UV_E* code. */
int dibba_http_server_listen(dibba_http_server_t *s, const char *host, int port);
/* Listen on an "host:port" address string ("[::1]:8080" too). Returns 0, -EINVAL or a UV_E* code. */
int dibba_http_server_listen_addr(dibba_http_server_t *s, const char *addr);
/* The bound port (after listen), else 0. */
int dibba_http_server_port(const dibba_http_server_t *s);
/* Graceful stop: stop accepting, let in-flight requests finish, close idle keep-alive connections, close
 * WebSockets with 1001, force-close leftovers after shutdown_timeout_ms. done(s, data) runs once every handle
 * is closed; then dibba_http_server_free() may be called (from done too). Calling it twice is harmless. */
typedef void (*dibba_http_done_cb)(dibba_http_server_t *s, void *data);
void dibba_http_server_shutdown(dibba_http_server_t *s, dibba_http_done_cb done, void *data);
/* Free a server whose shutdown completed (or that never listened). Safe with NULL. */
void dibba_http_server_free(dibba_http_server_t *s);
/* Render the server's Prometheus metrics (plus the app hook) into out. */
void dibba_http_server_metrics(dibba_http_server_t *s, dibba_buf_t *out);
/* Ready-made handlers: GET /metrics (data = server) and GET /openapi.json (data = server). */
void dibba_http_metrics_handler(dibba_http_req_t *req, void *data);
void dibba_http_openapi_handler(dibba_http_req_t *req, void *data);

/* ---- the request (valid until it is responded AND unreferenced, or the client went away) ---- */

/* Method name ("GET"). */
const char *dibba_http_req_method(const dibba_http_req_t *req);
/* The raw path without the query ("/v1/pods/a%20b"). */
const char *dibba_http_req_path(const dibba_http_req_t *req);
/* The raw query string after '?', "" if none. */
const char *dibba_http_req_query(const dibba_http_req_t *req);
/* The matched route pattern, or NULL. */
const char *dibba_http_req_route(const dibba_http_req_t *req);
/* A header value by case-insensitive name (first occurrence), NULL if absent. Borrowed from req. */
const char *dibba_http_req_header(const dibba_http_req_t *req, const char *name);
/* A decoded path parameter by name ("ns"), NULL if absent. */
const char *dibba_http_req_param(const dibba_http_req_t *req, const char *name);
/* The request body (may contain NULs; NUL-terminated past len). */
const char *dibba_http_req_body(const dibba_http_req_t *req, size_t *len);
/* The parsed JSON body for DIBBA_HTTP_BODY_JSON routes (borrowed), else NULL. */
json_t *dibba_http_req_json(const dibba_http_req_t *req);
/* The authenticated principal, or NULL for public routes. */
const dibba_http_principal_t *dibba_http_req_principal(const dibba_http_req_t *req);
/* Record who a request was about when no principal was established (the username of a failed login, the sub
 * of a token whose user is gone). Copied, truncated to fit dibba_http_principal_t.user. NULL clears it. */
void dibba_http_req_set_subject(dibba_http_req_t *req, const char *user);
/* The principal's user if authenticated, else the subject set above, else NULL. */
const char *dibba_http_req_subject(const dibba_http_req_t *req);
/* The request id (inbound X-Request-Id if sane, else generated). */
const char *dibba_http_req_id(const dibba_http_req_t *req);
/* The client address text ("127.0.0.1:51234"). */
const char *dibba_http_req_remote(const dibba_http_req_t *req);
/* The server. */
dibba_http_server_t *dibba_http_req_server(const dibba_http_req_t *req);
/* App pointer slot. */
void dibba_http_req_set_data(dibba_http_req_t *req, void *data);
void *dibba_http_req_get_data(const dibba_http_req_t *req);

/* Async handlers: take a reference before returning, drop it when the async work finished. The request memory
 * stays valid while referenced even if the client went away; responding then returns UV_ENOTCONN. */
void dibba_http_req_ref(dibba_http_req_t *req);
void dibba_http_req_unref(dibba_http_req_t *req);
/* 1 if the connection is gone (responses are dropped). */
int dibba_http_req_gone(const dibba_http_req_t *req);
/* Called once if the client goes away before the response was completed (not called after a response). */
typedef void (*dibba_http_cancel_cb)(dibba_http_req_t *req, void *data);
void dibba_http_req_on_cancel(dibba_http_req_t *req, dibba_http_cancel_cb cb, void *data);

/* ---- responses: exactly one respond or stream_begin per request; headers must be added before ---- */

/* Add a response header (copied). Returns 0, -EINVAL (CR/LF/NUL or bad name) or -EALREADY after responding. */
int dibba_http_add_header(dibba_http_req_t *req, const char *name, const char *value);
/* Respond with a raw body (copied) and content type (NULL: none). Returns 0, -EALREADY or UV_ENOTCONN. */
int dibba_http_respond(dibba_http_req_t *req, int status, const char *content_type, const void *body, size_t len);
/* Respond with a JSON body; the reference to body is stolen. Same errors. */
int dibba_http_respond_json(dibba_http_req_t *req, int status, json_t *body);
/* Respond {"detail": detail} with status; adds WWW-Authenticate: Bearer for 401. Same errors. */
int dibba_http_respond_error(dibba_http_req_t *req, int status, const char *detail);
/* 422 FastAPI-style: {"detail":[{"loc":["body",field],"msg":msg,"type":type}]}. Same errors. */
int dibba_http_respond_422(dibba_http_req_t *req, const char *field, const char *msg, const char *type);
/* 429 with Retry-After: seconds. Same errors. */
int dibba_http_respond_429(dibba_http_req_t *req, unsigned retry_after_s, const char *detail);
/* Start a chunked response. Returns 0, -EALREADY or UV_ENOTCONN. */
int dibba_http_stream_begin(dibba_http_req_t *req, int status, const char *content_type);
/* Send one chunk (copied; len 0 is ignored). Returns 0, -EINVAL (not streaming), UV_ENOTCONN, or UV_ENOBUFS
 * when more than write_hard_limit bytes are queued (slow client: retry later or end). */
int dibba_http_stream_write(dibba_http_req_t *req, const void *data, size_t len);
/* Finish the chunked response. Returns 0, -EINVAL or UV_ENOTCONN. */
int dibba_http_stream_end(dibba_http_req_t *req);
/* Bytes queued for this request's connection (for streaming flow control). */
size_t dibba_http_req_write_queue(const dibba_http_req_t *req);

/* ---- parsing helpers ---- */

/* Percent-decode src[0..len) into a new string; plus_space turns '+' into ' '. Returns 0, -EINVAL (bad escape or
 * a decoded NUL) ; *out is malloc'd. */
int dibba_http_urldecode(const char *src, size_t len, int plus_space, char **out, size_t *outlen);
/* Parse application/x-www-form-urlencoded or a query string into a JSON object of strings (the first value of a
 * repeated key wins). At most max_bytes of input (-E2BIG above) and 256 pairs. Returns 0 or -EINVAL/-E2BIG;
 * *out is a new reference. */
int dibba_http_parse_form(const char *src, size_t len, size_t max_bytes, json_t **out);

#endif
