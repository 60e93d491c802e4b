/* SPDX-License-Identifier: Apache-2.0 */
/* Strict HTTP/1.1 request parsing on llhttp (lenient flags off) plus the checks llhttp 8.1 leaves to us. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "dibba/alloc.h"
#include "http_private.h"

/* llhttp 8.1 (Debian) already rejects: CL with TE, any duplicate Content-Length (even equal values), bad chunk
 * sizes and terminators, bare LF inside chunked framing, NUL and CTLs in values. It accepts, and we reject here:
 * a bare LF ending the request line or a header line, obs-fold continuation lines, "X : v" (space before colon),
 * and Transfer-Encoding lists such as "gzip, chunked". */

enum { PAUSE_NONE = 0, PAUSE_BEGIN, PAUSE_HEAD, PAUSE_DONE };

static int fail(dibba__http_parser_t *p, int status, const char *detail) {
  if (!p->error_status) {
    p->error_status = status;
    p->error_detail = detail;
  }
  return HPE_USER;
}

static dibba__http_parser_t *P(llhttp_t *ll) { return (dibba__http_parser_t *)ll->data; }

static int on_message_begin(llhttp_t *ll) {
  dibba__http_parser_t *p = P(ll);
  if (p->cur == NULL)
    p->cur = dibba__http_req_new(p->srv);
  p->pause_req = PAUSE_BEGIN;
  return HPE_PAUSED;
}

static int on_url(llhttp_t *ll, const char *at, size_t n) {
  dibba__http_parser_t *p = P(ll);
  dibba_http_req_t *r = p->cur;
  if (n > p->lim->max_url_bytes - r->url_len || dibba_buf_add(&r->head, at, n) < 0)
    return fail(p, 414, "URI too long");
  r->url_len += n;
  return 0;
}

static int on_url_complete(llhttp_t *ll) {
  dibba__http_parser_t *p = P(ll);
  dibba_http_req_t *r = p->cur;
  if (dibba_buf_add(&r->head, "", 1) < 0)
    return fail(p, 431, "Request header fields too large");
  const char *url = r->head.data;
  if (r->url_len == 0 || url[0] != '/')
    return fail(p, 400, "Only origin-form request targets are accepted");
  const char *q = memchr(url, '?', r->url_len);
  const char *hash = memchr(url, '#', r->url_len);
  if (hash)
    return fail(p, 400, "Fragment in request target");
  size_t plen = q ? (size_t)(q - url) : r->url_len;
  r->path = dibba_xstrndup(url, plen);
  r->query = q ? dibba_xstrndup(q + 1, r->url_len - plen - 1) : NULL;
  return 0;
}

static int on_header_field(llhttp_t *ll, const char *at, size_t n) {
  dibba__http_parser_t *p = P(ll);
  dibba_http_req_t *r = p->cur;
  if (r->headers_done)
    return 0; /* trailer fields are ignored */
  if (!r->in_hdr_value && r->nhdrs > 0 && r->hdrs[r->nhdrs - 1].name_len == UINT32_MAX) {
    /* continuing the current name */
  } else {
    if (r->nhdrs >= p->lim->max_headers)
      return fail(p, 431, "Too many header fields");
    if (r->nhdrs == r->hdrs_alloc) {
      r->hdrs_alloc = r->hdrs_alloc ? r->hdrs_alloc * 2 : 16;
      r->hdrs = dibba_xreallocarray(r->hdrs, r->hdrs_alloc, sizeof *r->hdrs);
    }
    dibba__http_hdr_t *h = &r->hdrs[r->nhdrs++];
    h->name_off = (uint32_t)r->head.len;
    h->name_len = UINT32_MAX; /* open */
    r->in_hdr_value = 0;
  }
  if (dibba_buf_add(&r->head, at, n) < 0)
    return fail(p, 431, "Request header fields too large");
  return 0;
}

static int is_tchar(unsigned char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
    return 1;
  return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static int on_header_field_complete(llhttp_t *ll) {
  dibba__http_parser_t *p = P(ll);
  dibba_http_req_t *r = p->cur;
  if (r->headers_done)
    return 0;
  dibba__http_hdr_t *h = &r->hdrs[r->nhdrs - 1];
  h->name_len = (uint32_t)(r->head.len - h->name_off);
  if (h->name_len == 0)
    return fail(p, 400, "Empty header name");
  for (uint32_t i = 0; i < h->name_len; i++)
    if (!is_tchar((unsigned char)r->head.data[h->name_off + i]))
      return fail(p, 400, "Invalid character in header name");
  if (dibba_buf_add(&r->head, "", 1) < 0)
    return fail(p, 431, "Request header fields too large");
  h->val_off = (uint32_t)r->head.len;
  h->val_len = 0;
  r->in_hdr_value = 1;
  return 0;
}

static int on_header_value(llhttp_t *ll, const char *at, size_t n) {
  dibba__http_parser_t *p = P(ll);
  dibba_http_req_t *r = p->cur;
  if (r->headers_done)
    return 0;
  if (dibba_buf_add(&r->head, at, n) < 0)
    return fail(p, 431, "Request header fields too large");
  return 0;
}

static int on_header_value_complete(llhttp_t *ll) {
  dibba__http_parser_t *p = P(ll);
  dibba_http_req_t *r = p->cur;
  if (r->headers_done)
    return 0;
  dibba__http_hdr_t *h = &r->hdrs[r->nhdrs - 1];
  h->val_len = (uint32_t)(r->head.len - h->val_off);
  /* trim trailing whitespace (llhttp strips the leading part) */
  while (h->val_len > 0 &&
         (r->head.data[h->val_off + h->val_len - 1] == ' ' || r->head.data[h->val_off + h->val_len - 1] == '\t'))
    h->val_len--;
  r->head.len = h->val_off + h->val_len;
  if (dibba_buf_add(&r->head, "", 1) < 0)
    return fail(p, 431, "Request header fields too large");
  r->in_hdr_value = 0;
  const char *name = r->head.data + h->name_off;
  const char *val = r->head.data + h->val_off;
  if (h->name_len == 4 && strcasecmp(name, "host") == 0) {
    if (r->has_host)
      return fail(p, 400, "Duplicate Host header");
    r->has_host = 1;
  } else if (h->name_len == 17 && strcasecmp(name, "transfer-encoding") == 0) {
    if (r->te_seen || strcasecmp(val, "chunked") != 0)
      return fail(p, 400, "Only Transfer-Encoding: chunked is accepted");
    r->te_seen = 1;
  }
  return 0;
}

static int on_headers_complete(llhttp_t *ll) {
  dibba__http_parser_t *p = P(ll);
  dibba_http_req_t *r = p->cur;
  r->headers_done = 1;
  r->method = ll->method;
  r->major = ll->http_major;
  r->minor = ll->http_minor;
  if (r->major != 1)
    return fail(p, 400, "Unsupported HTTP version");
  if (r->minor >= 1 && !r->has_host)
    return fail(p, 400, "Missing Host header");
  if ((ll->flags & F_TRANSFER_ENCODING) && !r->te_seen)
    return fail(p, 400, "Only Transfer-Encoding: chunked is accepted");
  if ((ll->flags & F_CONTENT_LENGTH) && ll->content_length > p->lim->max_body_bytes)
    return fail(p, 413, "Request body too large");
  p->pause_req = PAUSE_HEAD;
  return HPE_PAUSED;
}

static int on_body(llhttp_t *ll, const char *at, size_t n) {
  dibba__http_parser_t *p = P(ll);
  if (dibba_buf_add(&p->cur->body, at, n) < 0)
    return fail(p, 413, "Request body too large");
  return 0;
}

static int on_message_complete(llhttp_t *ll) {
  dibba__http_parser_t *p = P(ll);
  p->cur->keep_alive = llhttp_should_keep_alive(ll) ? 1 : 0;
  p->cur->upgrade = ll->upgrade ? 1 : 0;
  p->pause_req = PAUSE_DONE;
  return HPE_PAUSED;
}

static const llhttp_settings_t settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
    .on_url_complete = on_url_complete,
    .on_header_field_complete = on_header_field_complete,
    .on_header_value_complete = on_header_value_complete,
};

void dibba__http_parser_init(dibba__http_parser_t *p, dibba_http_server_t *srv, const dibba_http_limits_t *lim) {
  memset(p, 0, sizeof *p);
  llhttp_init(&p->ll, HTTP_REQUEST, &settings);
  p->ll.data = p;
  p->lim = lim;
  p->srv = srv;
}

void dibba__http_parser_free(dibba__http_parser_t *p) {
  if (p->cur) {
    dibba_http_req_unref(p->cur);
    p->cur = NULL;
  }
}

/* Bytes outside bodies: every LF must follow a CR, and no header line may start with SP/HTAB (obs-fold). */
static int scan_head(dibba__http_parser_t *p, const char *s, size_t n, int phase) {
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (c == '\n') {
      if (!p->prev_cr)
        return -1;
      p->in_line_start = 1;
    } else if (p->in_line_start && phase == 1 && (c == ' ' || c == '\t')) {
      return -2;
    } else {
      p->in_line_start = 0;
    }
    p->prev_cr = c == '\r';
  }
  return 0;
}

int dibba__http_parser_feed(dibba__http_parser_t *p, const char *data, size_t len, size_t *consumed) {
  size_t off = 0;
  int rc = 0;
  if (p->failed) {
    rc = -1;
    goto out;
  }
  int again = 0;
  while (off < len || again) {
    int phase = p->phase;
    again = 0;
    p->pause_req = PAUSE_NONE;
    llhttp_errno_t e = llhttp_execute(&p->ll, data + off, len - off);
    size_t n = len - off;
    if (e == HPE_PAUSED || e == HPE_PAUSED_UPGRADE)
      n = (size_t)(llhttp_get_error_pos(&p->ll) - (data + off));
    else if (e != HPE_OK) {
      if (!p->error_status) {
        p->error_status = 400;
        p->error_detail = llhttp_get_error_reason(&p->ll);
        if (p->error_detail == NULL)
          p->error_detail = "Malformed request";
      }
      p->failed = 1;
      rc = -1;
      goto out;
    }
    if (phase != 2) {
      int sr = scan_head(p, data + off, n, phase);
      if (sr < 0) {
        p->error_status = 400;
        p->error_detail = sr == -1 ? "Bare LF in request head" : "Obsolete line folding";
        p->failed = 1;
        rc = -1;
        goto out;
      }
      if (phase == 1) {
        p->head_bytes += n;
        if (p->head_bytes > p->lim->max_header_bytes + p->lim->max_url_bytes ||
            p->head_bytes - (p->cur ? p->cur->url_len : 0) > p->lim->max_header_bytes) {
          p->error_status = 431;
          p->error_detail = "Request header fields too large";
          p->failed = 1;
          rc = -1;
          goto out;
        }
      }
    }
    off += n;
    if (e == HPE_PAUSED_UPGRADE) {
      rc = 2;
      goto out;
    }
    if (e != HPE_PAUSED)
      continue;
    llhttp_resume(&p->ll);
    if (p->pause_req == PAUSE_BEGIN) {
      p->phase = 1;
      p->head_bytes = 0;
      p->prev_cr = 0;
      p->in_line_start = 0;
      if (p->on_begin)
        p->on_begin(p, p->cur);
    } else if (p->pause_req == PAUSE_HEAD) {
      p->phase = 2;
      int st = p->on_head ? p->on_head(p, p->cur) : 0;
      if (st) {
        p->error_status = st;
        p->error_detail = NULL;
        p->failed = 1;
        rc = -1;
        goto out;
      }
      again = 1; /* a body-less message completes on a zero-length execute */
    } else if (p->pause_req == PAUSE_DONE) {
      dibba_http_req_t *r = p->cur;
      p->cur = NULL;
      p->phase = 0;
      p->prev_cr = 0;
      if (p->on_request(p, r)) {
        rc = 1;
        goto out;
      }
    }
  }
out:
  *consumed = off;
  return rc;
}

void dibba__http_parser_resume_upgrade(dibba__http_parser_t *p) { llhttp_resume_after_upgrade(&p->ll); }
