/* SPDX-License-Identifier: Apache-2.0 */
/* dibbactl's HTTP client on libcurl's easy API: capped bodies, streamed bodies, and server errors as exit codes. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <curl/curl.h>

#include "dibba-config.h"
#include "dibba/alloc.h"
#include "dibba/buf.h"
#include "ctl.h"

#define CONNECT_TIMEOUT_S 10L
#define REQUEST_TIMEOUT_S 120L

int ctl_http_init(void) {
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
    return ctl_fail(CTL_EFAIL, "libcurl initialisation failed");
  return 0;
}

void ctl_http_cleanup(void) { curl_global_cleanup(); }

void ctl_resp_free(ctl_resp_t *r) {
  free(r->body);
  json_decref(r->json);
  r->body = NULL;
  r->json = NULL;
  r->len = 0;
}

char *ctl_esc(const char *s) {
  char *e = curl_easy_escape(NULL, s, 0);
  if (e == NULL)
    dibba_oom(strlen(s) * 3);
  char *out = dibba_xstrdup(e);
  curl_free(e);
  return out;
}

int ctl_need_token(ctl_t *c) {
  if (c->token == NULL) {
    if (c->token_other_server)
      return ctl_fail(CTL_EAUTH, "not logged in to %s (the stored token is for another server): run 'dibbactl login'",
                      c->server);
    return ctl_fail(CTL_EAUTH, "not logged in to %s: run 'dibbactl login'", c->server);
  }
  if (c->token_expires > 0 && c->token_expires <= (int64_t)time(NULL))
    return ctl_fail(CTL_EAUTH, "the token for %s has expired: run 'dibbactl login'", c->server);
  return 0;
}

typedef struct xfer_s {
  CURL *h;
  dibba_buf_t body;
  int stream;
  int too_big;
  int write_failed;
} xfer_t;

static size_t on_data(char *p, size_t size, size_t n, void *data) {
  xfer_t *x = data;
  size_t len = size * n;
  if (x->stream) {
    long st = 0;
    curl_easy_getinfo(x->h, CURLINFO_RESPONSE_CODE, &st);
    if (st >= 200 && st < 300) {
      if (fwrite(p, 1, len, stdout) != len) {
        x->write_failed = errno ? errno : EIO;
        return 0;
      }
      fflush(stdout);
      return len;
    }
  }
  if (dibba_buf_add(&x->body, p, len) < 0) {
    x->too_big = 1;
    return 0;
  }
  return len;
}

int ctl_request(ctl_t *c, const char *method, const char *path, const char *body, size_t len, int flags,
                ctl_resp_t *resp) {
  xfer_t x = {0};
  struct curl_slist *hdrs = NULL;
  char *url = dibba_xasprintf("%s%s", c->server, path), *auth = NULL;
  int rc = 0;
  memset(resp, 0, sizeof *resp);
  if (!(flags & CTL_REQ_NOAUTH) && (rc = ctl_need_token(c)) != 0)
    goto out;
  x.h = curl_easy_init();
  if (x.h == NULL) {
    rc = ctl_fail(CTL_EFAIL, "libcurl: cannot create a handle");
    goto out;
  }
  x.stream = (flags & CTL_REQ_STREAM) != 0;
  dibba_buf_init(&x.body, CTL_RESPONSE_MAX);
  curl_easy_setopt(x.h, CURLOPT_URL, url);
  curl_easy_setopt(x.h, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(x.h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(x.h, CURLOPT_CONNECTTIMEOUT, CONNECT_TIMEOUT_S);
  if (!x.stream)
    curl_easy_setopt(x.h, CURLOPT_TIMEOUT, REQUEST_TIMEOUT_S);
  curl_easy_setopt(x.h, CURLOPT_USERAGENT, "dibbactl/" DIBBA_VERSION);
  curl_easy_setopt(x.h, CURLOPT_WRITEFUNCTION, on_data);
  curl_easy_setopt(x.h, CURLOPT_WRITEDATA, &x);
  /* A redirect would carry the bearer token elsewhere: never follow one. */
  curl_easy_setopt(x.h, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(x.h, CURLOPT_CUSTOMREQUEST, method);
  if (strcmp(method, "HEAD") == 0)
    curl_easy_setopt(x.h, CURLOPT_NOBODY, 1L);
  if (body) {
    curl_easy_setopt(x.h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(x.h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    hdrs = curl_slist_append(hdrs, flags & CTL_REQ_FORM ? "Content-Type: application/x-www-form-urlencoded"
                                                        : "Content-Type: application/json");
  }
  hdrs = curl_slist_append(hdrs, "Accept: application/json");
  hdrs = curl_slist_append(hdrs, "Expect:");
  if (!(flags & CTL_REQ_NOAUTH)) {
    auth = dibba_xasprintf("Authorization: Bearer %s", c->token);
    hdrs = curl_slist_append(hdrs, auth);
  }
  curl_easy_setopt(x.h, CURLOPT_HTTPHEADER, hdrs);
  CURLcode cr = curl_easy_perform(x.h);
  curl_easy_getinfo(x.h, CURLINFO_RESPONSE_CODE, &resp->status);
  if (x.too_big) {
    rc = ctl_fail(CTL_EFAIL, "%s %s: the response is larger than %u bytes", method, path, CTL_RESPONSE_MAX);
    goto out;
  }
  if (x.write_failed) {
    /* `dibbactl logs ... | head`: the reader went away, which is not an error of ours. */
    rc = x.write_failed == EPIPE ? 0 : ctl_fail(CTL_EFAIL, "writing output: %s", strerror(x.write_failed));
    resp->status = x.write_failed == EPIPE ? resp->status : 0;
    goto out;
  }
  if (cr != CURLE_OK) {
    if (resp->status >= 200 && x.stream)
      rc = ctl_fail(CTL_EUNAVAIL, "%s: the stream broke: %s", c->server, curl_easy_strerror(cr));
    else
      rc = ctl_fail(CTL_EUNAVAIL, "cannot reach %s: %s", c->server, curl_easy_strerror(cr));
    goto out;
  }
  char *ct = NULL;
  curl_easy_getinfo(x.h, CURLINFO_CONTENT_TYPE, &ct);
  snprintf(resp->ctype, sizeof resp->ctype, "%s", ct ? ct : "");
  resp->body = dibba_buf_steal(&x.body, &resp->len);
  if (resp->body && strncasecmp(resp->ctype, "application/json", 16) == 0)
    resp->json = json_loadb(resp->body, resp->len, 0, NULL);
out:
  if (rc != 0)
    ctl_resp_free(resp);
  dibba_buf_free(&x.body);
  curl_slist_free_all(hdrs);
  if (x.h)
    curl_easy_cleanup(x.h);
  if (auth) {
    explicit_bzero(auth, strlen(auth));
    free(auth);
  }
  free(url);
  return rc;
}

/* The server's "detail": a string, or FastAPI-style [{loc, msg}] for 422. */
static void detail_text(const ctl_resp_t *r, char *out, size_t len) {
  json_t *d = json_object_get(r->json, "detail");
  out[0] = '\0';
  if (json_is_string(d)) {
    snprintf(out, len, "%s", json_string_value(d));
  } else if (json_is_array(d)) {
    size_t i, o = 0;
    json_t *e;
    json_array_foreach(d, i, e) {
      char loc[256] = "";
      size_t lo = 0, k;
      json_t *part;
      json_array_foreach(json_object_get(e, "loc"), k, part) {
        int w = json_is_integer(part)
                    ? snprintf(loc + lo, sizeof loc - lo, "%s%lld", lo ? "." : "", (long long)json_integer_value(part))
                    : snprintf(loc + lo, sizeof loc - lo, "%s%s", lo ? "." : "",
                               json_is_string(part) ? json_string_value(part) : "?");
        if (w < 0 || (size_t)w >= sizeof loc - lo)
          break;
        lo += (size_t)w;
      }
      const char *msg = json_string_value(json_object_get(e, "msg"));
      int w = snprintf(out + o, len - o, "%s%s%s%s", o ? "; " : "", loc, loc[0] ? ": " : "", msg ? msg : "invalid");
      if (w < 0 || (size_t)w >= len - o)
        break;
      o += (size_t)w;
    }
  } else if (r->json && json_is_string(json_object_get(r->json, "error"))) {
    snprintf(out, len, "%s", json_string_value(json_object_get(r->json, "error")));
  } else if (r->body && r->len > 0 && r->json == NULL) {
    snprintf(out, len, "%.*s", (int)(r->len < 200 ? r->len : 200), r->body);
  }
}

int ctl_resp_check(ctl_t *c, const ctl_resp_t *r, const char *method, const char *path, const char *what) {
  char detail[512];
  long st = r->status;
  if (st >= 200 && st < 300)
    return 0;
  detail_text(r, detail, sizeof detail);
  if (!detail[0])
    snprintf(detail, sizeof detail, "HTTP %ld", st);
  /* The router's own answers (no handler ran) carry the bare reason phrase: the route itself is missing. */
  if ((st == 404 && strcmp(detail, "Not Found") == 0) || (st == 405 && strcmp(detail, "Method Not Allowed") == 0)) {
    const char *q = strchr(path, '?');
    return ctl_fail(CTL_EFAIL, "%s: %s has no %s %.*s route yet (HTTP %ld): the server does not support this", what,
                    c->server, method, q ? (int)(q - path) : (int)strlen(path), path, st);
  }
  switch (st) {
  case 401:
    if (c->token == NULL)
      return ctl_fail(CTL_EAUTH, "%s: %s (401)", what, detail);
    return ctl_fail(CTL_EAUTH, "%s: %s (401): run 'dibbactl login'", what, detail);
  case 403: return ctl_fail(CTL_EAUTH, "%s: %s (403)", what, detail);
  case 404: return ctl_fail(CTL_ENOTFOUND, "%s: %s (404)", what, detail);
  case 409:
  case 422: return ctl_fail(CTL_EINVALID, "%s: %s (%ld)", what, detail, st);
  case 429: return ctl_fail(CTL_EFAIL, "%s: %s (429)", what, detail);
  case 502:
  case 503:
  case 504: return ctl_fail(CTL_EUNAVAIL, "%s: %s (%ld)", what, detail, st);
  default: return ctl_fail(CTL_EFAIL, "%s: %s (%ld)", what, detail, st);
  }
}

int ctl_call(ctl_t *c, const char *method, const char *path, json_t *body, const char *what, json_t **out) {
  ctl_resp_t r;
  char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
  int rc = ctl_request(c, method, path, text, text ? strlen(text) : 0, 0, &r);
  free(text);
  if (out)
    *out = NULL;
  if (rc != 0)
    return rc;
  rc = ctl_resp_check(c, &r, method, path, what);
  if (rc == 0 && r.len > 0 && r.json == NULL)
    rc = ctl_fail(CTL_EFAIL, "%s: the server's answer is not JSON (%s)", what, r.ctype[0] ? r.ctype : "no type");
  if (rc == 0 && out) {
    *out = r.json;
    r.json = NULL;
  }
  ctl_resp_free(&r);
  return rc;
}
