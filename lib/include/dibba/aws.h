/* SPDX-License-Identifier: Apache-2.0 */
/* AWS access for libdibba: SigV4 signing, HTTPS with libcurl's multi-socket API on a libuv loop, and the EC2
 * Query API (requests and the XML of its answers). Built only with the `aws` feature (DIBBA_HAVE_AWS). */
#ifndef DIBBA_AWS_H
#define DIBBA_AWS_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <uv.h>

#include "dibba/buf.h"

/* ---- SigV4 --------------------------------------------------------------------------------------------- */

/* A header to sign. Names are matched case-insensitively; values are trimmed and inner runs of spaces folded. */
typedef struct dibba_aws_header_s {
  const char *name;
  const char *value;
} dibba_aws_header_t;

/* One request to sign. The signed headers are exactly the ones given (host and x-amz-date must be among them;
 * add x-amz-security-token when a session token is used). */
typedef struct dibba_aws_sigv4_req_s {
  const char *method;
  const char *path;  /* absolute path, already URI-encoded ("/"); NULL means "/" */
  const char *query; /* the raw query string without '?', or NULL; parameters are decoded, re-encoded, sorted */
  const dibba_aws_header_t *headers;
  size_t nheaders;
  const void *payload; /* the body bytes (may be NULL when payload_len is 0) */
  size_t payload_len;
} dibba_aws_sigv4_req_t;

/* Who signs, for which scope. Strings are borrowed. */
typedef struct dibba_aws_sigv4_key_s {
  const char *access_key_id;
  const char *secret_access_key;
  const char *region;
  const char *service;
  const char *amz_date; /* "YYYYMMDDTHHMMSSZ" (dibba_aws_amz_date) */
} dibba_aws_sigv4_key_t;

/* Everything the signer produced; strings are malloc'd (dibba_aws_sigv4_free). */
typedef struct dibba_aws_sigv4_s {
  char *canonical_request;
  char *string_to_sign;
  char *signed_headers;
  char *authorization; /* the Authorization header value */
  char signature[65];  /* lowercase hex */
  char payload_hash[65];
} dibba_aws_sigv4_t;

/* Sign req with key (AWS4-HMAC-SHA256). On success fills out (free with dibba_aws_sigv4_free). Returns 0, or
 * -EINVAL (missing method/key fields, a malformed amz_date, a header name that is empty or has ':' or
 * control characters, a query with a bad %-escape), or -E2BIG (over 64 KiB of headers/query). */
int dibba_aws_sigv4_sign(const dibba_aws_sigv4_req_t *req, const dibba_aws_sigv4_key_t *key, dibba_aws_sigv4_t *out);
/* Release what dibba_aws_sigv4_sign produced. Safe to call twice. */
void dibba_aws_sigv4_free(dibba_aws_sigv4_t *s);
/* Write t (UTC) as "YYYYMMDDTHHMMSSZ" into out. */
void dibba_aws_amz_date(time_t t, char out[17]);
/* Append s[0..n) URI-encoded the AWS way (RFC 3986 unreserved kept, everything else %XX uppercase); '/' is
 * kept when keep_slash. Returns 0 or -E2BIG (the buffer's cap). */
int dibba_aws_uri_encode(dibba_buf_t *b, const char *s, size_t n, int keep_slash);

/* ---- HTTP(S) on the loop ---------------------------------------------------------------------------------- */

typedef struct dibba_aws_http_s dibba_aws_http_t;
typedef struct dibba_aws_http_req_s dibba_aws_http_req_t;

/* The outcome of one request; every pointer is valid only during the callback. */
typedef struct dibba_aws_http_res_s {
  int status;       /* 0: a response arrived (any HTTP code); UV_ETIMEDOUT, UV_ECONNREFUSED, -EFBIG (over the
                       response cap), UV_ECANCELED, -EIO (anything else libcurl reports) */
  long http_code;   /* 0 unless status is 0 */
  const char *body; /* NUL-terminated, "" when empty */
  size_t len;
  const char *error; /* libcurl's one-line reason when status != 0, else "" */
} dibba_aws_http_res_t;

/* Called exactly once per accepted request, never from inside dibba_aws_http_send. */
typedef void (*dibba_aws_http_cb)(const dibba_aws_http_res_t *res, void *data);
/* dibba_aws_http_close finished: every handle is closed; h is freed right after this returns. */
typedef void (*dibba_aws_http_close_cb)(dibba_aws_http_t *h, void *data);

typedef struct dibba_aws_http_opts_s {
  const char *method;         /* "GET", "POST" */
  const char *url;            /* http:// or https:// only; redirects are not followed */
  const char *const *headers; /* "Name: value" lines, copied */
  size_t nheaders;
  const void *body; /* copied */
  size_t body_len;
  uint32_t timeout_ms; /* whole request; 0: 30000 */
  size_t max_response; /* response body cap; 0: 4 MiB */
} dibba_aws_http_opts_t;

/* Create a client (one libcurl multi handle driven by uv_poll_t per socket and one uv_timer_t). Never blocks.
 * Returns 0 and *out, or -ENOMEM when libcurl cannot be initialised. */
int dibba_aws_http_new(uv_loop_t *loop, dibba_aws_http_t **out);
/* Start a request. Returns 0 (cb will be called) and optionally *out (valid until cb), -EINVAL (bad options or
 * scheme), or UV_ECANCELED (closing). */
int dibba_aws_http_send(dibba_aws_http_t *h, const dibba_aws_http_opts_t *o, dibba_aws_http_cb cb, void *data,
                        dibba_aws_http_req_t **out);
/* Abort a request: its callback runs (later, on the loop) with UV_ECANCELED. Returns 0 or -EALREADY. */
int dibba_aws_http_cancel(dibba_aws_http_req_t *r);
/* Fail every request with UV_ECANCELED, close the handles, then call cb (may be NULL) and free h. Safe from any
 * callback. Returns 0 or UV_EALREADY. */
int dibba_aws_http_close(dibba_aws_http_t *h, dibba_aws_http_close_cb cb, void *data);

/* ---- EC2 Query API ------------------------------------------------------------------------------------------ */

#define DIBBA_EC2_API_VERSION "2016-11-15"
/* An EC2 error response (<Response><Errors><Error><Code>/<Message>); see dibba_ec2_result_t.code/message. */
#define DIBBA_EC2_EAPI (-5201)

/* Form parameters of one call (Action=...&Version=...&k=v...), URI-encoded as they are added. */
typedef struct dibba_ec2_params_s {
  dibba_buf_t body;
} dibba_ec2_params_t;

/* Start a parameter list for action (Version is added). */
void dibba_ec2_params_init(dibba_ec2_params_t *p, const char *action);
/* Add one parameter; the key is printf-formatted ("TagSpecification.1.Tag.%zu.Key"). Returns 0 or -E2BIG. */
int dibba_ec2_params_add(dibba_ec2_params_t *p, const char *value, const char *keyfmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Release the list; safe to call twice. */
void dibba_ec2_params_free(dibba_ec2_params_t *p);

/* Connection settings. Strings are copied; the secret and token are wiped when the client is freed. */
typedef struct dibba_ec2_config_s {
  const char *endpoint; /* "https://ec2.<region>.amazonaws.com" when NULL or "" */
  const char *region;   /* required */
  const char *access_key_id;
  const char *secret_access_key;
  const char *session_token; /* NULL or "": none */
  uint32_t timeout_ms;       /* per request; 0: 30000 */
  size_t max_response;       /* 0: 4 MiB */
} dibba_ec2_config_t;

typedef struct dibba_ec2_s dibba_ec2_t;
typedef struct dibba_ec2_call_s dibba_ec2_call_t;

/* One answer. status 0: HTTP 2xx, body is the XML. DIBBA_EC2_EAPI: AWS answered with an error; code and
 * message are set (message scrubbed of the credentials). Else a transport status from dibba_aws_http_res_t
 * (or DIBBA_EPROTO for a non-2xx answer that is not an EC2 error document). */
typedef struct dibba_ec2_result_s {
  int status;
  long http_code;
  const char *body;
  size_t len;
  char code[128];
  char message[512];
} dibba_ec2_result_t;

typedef void (*dibba_ec2_cb)(dibba_ec2_t *c, const dibba_ec2_result_t *res, void *data);
typedef void (*dibba_ec2_close_cb)(dibba_ec2_t *c, void *data);

/* Create a client. Returns 0, or -EINVAL (missing region or credentials, bad endpoint; reason in err, never a
 * credential), or -ENOMEM (libcurl). */
int dibba_ec2_new(uv_loop_t *loop, const dibba_ec2_config_t *cfg, dibba_ec2_t **out, char *err, size_t errlen);
/* Sign (SigV4, service "ec2", X-Amz-Date now, X-Amz-Security-Token when set) and POST the parameters. p stays
 * the caller's. Returns 0 (cb called once, later), -E2BIG, or UV_ECANCELED (closing). */
int dibba_ec2_call(dibba_ec2_t *c, const dibba_ec2_params_t *p, dibba_ec2_cb cb, void *data, dibba_ec2_call_t **out);
/* Abort a call: cb runs with UV_ECANCELED. Returns 0 or -EALREADY. */
int dibba_ec2_call_cancel(dibba_ec2_call_t *call);
/* Cancel every call, close the HTTP client, call cb (may be NULL), then free c. Returns 0 or UV_EALREADY. */
int dibba_ec2_close(dibba_ec2_t *c, dibba_ec2_close_cb cb, void *data);
/* Replace every occurrence of the client's access key id, secret and token in s (NUL-terminated) with "***". */
void dibba_ec2_scrub(const dibba_ec2_t *c, char *s);

/* One instance as an EC2 answer describes it (RunInstances, DescribeInstances, TerminateInstances). */
typedef struct dibba_ec2_instance_s {
  char id[32];
  char state[32]; /* instanceState/name or currentState/name: pending, running, shutting-down, ... */
  char private_ip[48];
  char private_dns[256];
  char launch_time[40];
} dibba_ec2_instance_t;

/* Documents larger than this are refused before parsing. */
#define DIBBA_EC2_XML_MAX (8u * 1024u * 1024u)

/* Collect every instancesSet/item of an EC2 answer, in document order (a malloc'd array; free it). next_token
 * (may be NULL) receives <nextToken> or "". Parsed without network access or entity substitution. Returns 0,
 * -EFBIG (over DIBBA_EC2_XML_MAX), DIBBA_EPROTO (not XML, or an item without instanceId). */
int dibba_ec2_parse_instances(const char *xml, size_t len, dibba_ec2_instance_t **out, size_t *n, char *next_token,
                              size_t next_token_len);
/* Read the first <Error><Code>/<Message> of an error document. Returns 0, -ENOENT (no Error element), -EFBIG or
 * DIBBA_EPROTO. */
int dibba_ec2_parse_error(const char *xml, size_t len, char *code, size_t codelen, char *msg, size_t msglen);

#endif
