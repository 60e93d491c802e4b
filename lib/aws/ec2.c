/* SPDX-License-Identifier: Apache-2.0 */
/* The EC2 Query API: signed form POSTs on dibba_aws_http_t, and the XML of the answers (libxml2, no network). */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libxml/parser.h>
#include <libxml/tree.h>

#include "dibba/alloc.h"
#include "dibba/aws.h"
#include "dibba/error.h"

#define EC2_PARAMS_MAX (256u * 1024u)

struct dibba_ec2_call_s {
  dibba_ec2_t *c;
  dibba_aws_http_req_t *req;
  dibba_ec2_cb cb;
  void *data;
  dibba_ec2_call_t *next, *prev;
};

struct dibba_ec2_s {
  uv_loop_t *loop;
  dibba_aws_http_t *http;
  char *url;
  char *host; /* the Host header value: authority of url */
  char *region;
  char *access_key_id;
  char *secret;
  char *token;
  uint32_t timeout_ms;
  size_t max_response;
  dibba_ec2_call_t *calls;
  int closing;
  dibba_ec2_close_cb close_cb;
  void *close_data;
};

/* ---- parameters ---- */

void dibba_ec2_params_init(dibba_ec2_params_t *p, const char *action) {
  dibba_buf_init(&p->body, EC2_PARAMS_MAX);
  dibba_buf_adds(&p->body, "Action=");
  dibba_aws_uri_encode(&p->body, action, strlen(action), 0);
  dibba_buf_adds(&p->body, "&Version=" DIBBA_EC2_API_VERSION);
}

int dibba_ec2_params_add(dibba_ec2_params_t *p, const char *value, const char *keyfmt, ...) {
  char key[256];
  va_list ap;
  va_start(ap, keyfmt);
  int n = vsnprintf(key, sizeof key, keyfmt, ap);
  va_end(ap);
  if (n < 0 || (size_t)n >= sizeof key)
    return -E2BIG;
  size_t mark = p->body.len;
  int rc = dibba_buf_adds(&p->body, "&");
  if (rc == 0)
    rc = dibba_aws_uri_encode(&p->body, key, (size_t)n, 0);
  if (rc == 0)
    rc = dibba_buf_adds(&p->body, "=");
  if (rc == 0)
    rc = dibba_aws_uri_encode(&p->body, value, strlen(value), 0);
  if (rc < 0) { /* leave the list as it was */
    p->body.len = mark;
    p->body.data[mark] = '\0';
  }
  return rc;
}

void dibba_ec2_params_free(dibba_ec2_params_t *p) { dibba_buf_free(&p->body); }

/* ---- client ---- */

static void wipe_free(char *s) {
  if (s) {
    explicit_bzero(s, strlen(s));
    free(s);
  }
}

static void client_free(dibba_ec2_t *c) {
  free(c->url);
  free(c->host);
  free(c->region);
  wipe_free(c->access_key_id);
  wipe_free(c->secret);
  wipe_free(c->token);
  free(c);
}

int dibba_ec2_new(uv_loop_t *loop, const dibba_ec2_config_t *cfg, dibba_ec2_t **out, char *err, size_t errlen) {
  int rc;
  if (cfg->region == NULL || cfg->region[0] == '\0')
    return dibba_error_set(err, errlen, -EINVAL, "aws.region is not set");
  if (cfg->access_key_id == NULL || cfg->access_key_id[0] == '\0' || cfg->secret_access_key == NULL ||
      cfg->secret_access_key[0] == '\0')
    return dibba_error_set(err, errlen, -EINVAL,
                           "aws credentials are not set (aws.access_key_id, "
                           "aws.secret_access_key)");
  for (const char *p = cfg->region; *p; p++)
    if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-'))
      return dibba_error_set(err, errlen, -EINVAL, "aws.region is not a region name");
  dibba_ec2_t *c = dibba_xcalloc(1, sizeof *c);
  c->loop = loop;
  c->region = dibba_xstrdup(cfg->region);
  if (cfg->endpoint && cfg->endpoint[0])
    c->url = dibba_xstrdup(cfg->endpoint);
  else
    c->url = dibba_xasprintf("https://ec2.%s.amazonaws.com/", cfg->region);
  const char *auth = NULL;
  if (strncmp(c->url, "https://", 8) == 0)
    auth = c->url + 8;
  else if (strncmp(c->url, "http://", 7) == 0)
    auth = c->url + 7;
  size_t alen = auth ? strcspn(auth, "/?#") : 0;
  if (alen == 0 || memchr(auth, '@', alen) != NULL) {
    rc = dibba_error_set(err, errlen, -EINVAL, "aws.endpoint must be http(s)://host[:port][/]");
    goto fail;
  }
  c->host = dibba_xstrndup(auth, alen);
  if (auth[alen] == '\0') { /* the signed path is "/": make the URL say so */
    char *u = dibba_xasprintf("%s/", c->url);
    free(c->url);
    c->url = u;
  } else if (strcmp(auth + alen, "/") != 0) {
    rc = dibba_error_set(err, errlen, -EINVAL, "aws.endpoint must not have a path");
    goto fail;
  }
  c->access_key_id = dibba_xstrdup(cfg->access_key_id);
  c->secret = dibba_xstrdup(cfg->secret_access_key);
  c->token = cfg->session_token && cfg->session_token[0] ? dibba_xstrdup(cfg->session_token) : NULL;
  c->timeout_ms = cfg->timeout_ms;
  c->max_response = cfg->max_response;
  if ((rc = dibba_aws_http_new(loop, &c->http)) < 0) {
    dibba_error_set(err, errlen, rc, "libcurl could not be initialised");
    goto fail;
  }
  *out = c;
  return 0;
fail:
  client_free(c);
  return rc;
}

static void replace_all(char *s, const char *needle) {
  size_t n = needle ? strlen(needle) : 0;
  if (n == 0)
    return;
  char *p;
  while ((p = strstr(s, needle)) != NULL) {
    size_t rest = strlen(p + n);
    memcpy(p, "***", n < 3 ? n : 3);
    size_t keep = n < 3 ? n : 3;
    memmove(p + keep, p + n, rest + 1);
  }
}

void dibba_ec2_scrub(const dibba_ec2_t *c, char *s) {
  if (c == NULL || s == NULL)
    return;
  replace_all(s, c->secret);
  replace_all(s, c->token);
  replace_all(s, c->access_key_id);
}

static void http_done(const dibba_aws_http_res_t *res, void *data) {
  dibba_ec2_call_t *call = data;
  dibba_ec2_t *c = call->c;
  dibba_ec2_result_t r = {.status = res->status, .http_code = res->http_code, .body = res->body, .len = res->len};
  if (call->prev)
    call->prev->next = call->next;
  else
    c->calls = call->next;
  if (call->next)
    call->next->prev = call->prev;
  if (res->status != 0) {
    snprintf(r.message, sizeof r.message, "%s", res->error);
  } else if (res->http_code < 200 || res->http_code > 299) {
    int prc = dibba_ec2_parse_error(res->body, res->len, r.code, sizeof r.code, r.message, sizeof r.message);
    if (prc == 0) {
      r.status = DIBBA_EC2_EAPI;
    } else {
      r.status = DIBBA_EPROTO;
      snprintf(r.message, sizeof r.message, "HTTP %ld without an EC2 error document", res->http_code);
    }
  }
  dibba_ec2_scrub(c, r.message);
  dibba_ec2_scrub(c, r.code);
  call->cb(c, &r, call->data);
  free(call);
}

int dibba_ec2_call(dibba_ec2_t *c, const dibba_ec2_params_t *p, dibba_ec2_cb cb, void *data, dibba_ec2_call_t **out) {
  if (c->closing)
    return UV_ECANCELED;
  char date[17];
  dibba_aws_amz_date(time(NULL), date);
  const char *ctype = "application/x-www-form-urlencoded; charset=utf-8";
  dibba_aws_header_t hs[4] = {{"Content-Type", ctype}, {"Host", c->host}, {"X-Amz-Date", date}};
  size_t nh = 3;
  if (c->token)
    hs[nh++] = (dibba_aws_header_t){"X-Amz-Security-Token", c->token};
  const char *body = p->body.data ? p->body.data : "";
  dibba_aws_sigv4_req_t req = {
      .method = "POST", .path = "/", .headers = hs, .nheaders = nh, .payload = body, .payload_len = p->body.len};
  dibba_aws_sigv4_key_t key = {.access_key_id = c->access_key_id,
                               .secret_access_key = c->secret,
                               .region = c->region,
                               .service = "ec2",
                               .amz_date = date};
  dibba_aws_sigv4_t sig;
  int rc = dibba_aws_sigv4_sign(&req, &key, &sig);
  if (rc < 0)
    return rc;
  char *lines[5];
  size_t nl = 0;
  lines[nl++] = dibba_xasprintf("Content-Type: %s", ctype);
  lines[nl++] = dibba_xasprintf("X-Amz-Date: %s", date);
  lines[nl++] = dibba_xasprintf("Authorization: %s", sig.authorization);
  if (c->token)
    lines[nl++] = dibba_xasprintf("X-Amz-Security-Token: %s", c->token);
  dibba_ec2_call_t *call = dibba_xcalloc(1, sizeof *call);
  call->c = c;
  call->cb = cb;
  call->data = data;
  dibba_aws_http_opts_t o = {.method = "POST",
                             .url = c->url,
                             .headers = (const char *const *)lines,
                             .nheaders = nl,
                             .body = body,
                             .body_len = p->body.len,
                             .timeout_ms = c->timeout_ms,
                             .max_response = c->max_response};
  rc = dibba_aws_http_send(c->http, &o, http_done, call, &call->req);
  for (size_t i = 0; i < nl; i++)
    wipe_free(lines[i]);
  dibba_aws_sigv4_free(&sig);
  if (rc < 0) {
    free(call);
    return rc;
  }
  call->next = c->calls;
  if (c->calls)
    c->calls->prev = call;
  c->calls = call;
  if (out)
    *out = call;
  return 0;
}

int dibba_ec2_call_cancel(dibba_ec2_call_t *call) { return dibba_aws_http_cancel(call->req); }

static void http_closed(dibba_aws_http_t *h, void *data) {
  dibba_ec2_t *c = data;
  (void)h;
  if (c->close_cb)
    c->close_cb(c, c->close_data);
  client_free(c);
}

int dibba_ec2_close(dibba_ec2_t *c, dibba_ec2_close_cb cb, void *data) {
  if (c == NULL || c->closing)
    return UV_EALREADY;
  c->closing = 1;
  c->close_cb = cb;
  c->close_data = data;
  /* Closing the HTTP client fails every call with UV_ECANCELED before its handles go. */
  return dibba_aws_http_close(c->http, http_closed, c);
}

/* ---- XML ---- */

static int name_is(const xmlNode *n, const char *name) {
  return n && n->type == XML_ELEMENT_NODE && xmlStrcmp(n->name, (const xmlChar *)name) == 0;
}

static const xmlNode *child(const xmlNode *n, const char *name) {
  for (const xmlNode *c = n ? n->children : NULL; c; c = c->next)
    if (name_is(c, name))
      return c;
  return NULL;
}

/* Copy the text of n into out (always terminated; cut at outlen). */
static void text_of(const xmlNode *n, char *out, size_t outlen) {
  out[0] = '\0';
  if (n == NULL)
    return;
  xmlChar *t = xmlNodeGetContent(n);
  if (t) {
    snprintf(out, outlen, "%s", (const char *)t);
    xmlFree(t);
  }
}

static int read_doc(const char *xml, size_t len, xmlDoc **out) {
  if (len > DIBBA_EC2_XML_MAX || len > INT_MAX)
    return -EFBIG;
  if (xml == NULL || len == 0)
    return DIBBA_EPROTO;
  /* No network, no DTD loading, no entity substitution (XML_PARSE_NOENT is deliberately absent). */
  xmlDoc *doc = xmlReadMemory(xml, (int)len, "ec2.xml", NULL,
                              XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING | XML_PARSE_NOCDATA);
  if (doc == NULL || xmlDocGetRootElement(doc) == NULL) {
    xmlFreeDoc(doc);
    return DIBBA_EPROTO;
  }
  *out = doc;
  return 0;
}

typedef struct walk_s {
  dibba_ec2_instance_t *v;
  size_t n;
  int bad;
  char *next_token;
  size_t next_token_len;
} walk_t;

static void walk(const xmlNode *n, walk_t *w, unsigned depth) {
  if (depth > 64)
    return;
  for (; n; n = n->next) {
    if (n->type != XML_ELEMENT_NODE)
      continue;
    if (name_is(n, "item") && name_is(n->parent, "instancesSet")) {
      dibba_ec2_instance_t in;
      memset(&in, 0, sizeof in);
      text_of(child(n, "instanceId"), in.id, sizeof in.id);
      const xmlNode *st = child(n, "instanceState");
      if (st == NULL)
        st = child(n, "currentState");
      text_of(child(st, "name"), in.state, sizeof in.state);
      text_of(child(n, "privateIpAddress"), in.private_ip, sizeof in.private_ip);
      text_of(child(n, "privateDnsName"), in.private_dns, sizeof in.private_dns);
      text_of(child(n, "launchTime"), in.launch_time, sizeof in.launch_time);
      if (in.id[0] == '\0') {
        w->bad = 1;
        continue;
      }
      w->v = dibba_xreallocarray(w->v, w->n + 1, sizeof *w->v);
      w->v[w->n++] = in;
      continue; /* nothing nested in an instance is another instance */
    }
    if (name_is(n, "nextToken") && w->next_token && depth == 1)
      text_of(n, w->next_token, w->next_token_len);
    walk(n->children, w, depth + 1);
  }
}

int dibba_ec2_parse_instances(const char *xml, size_t len, dibba_ec2_instance_t **out, size_t *n, char *next_token,
                              size_t next_token_len) {
  xmlDoc *doc = NULL;
  *out = NULL;
  *n = 0;
  if (next_token && next_token_len)
    next_token[0] = '\0';
  int rc = read_doc(xml, len, &doc);
  if (rc < 0)
    return rc;
  walk_t w = {.next_token = next_token_len ? next_token : NULL, .next_token_len = next_token_len};
  walk(xmlDocGetRootElement(doc)->children, &w, 1);
  xmlFreeDoc(doc);
  if (w.bad) {
    free(w.v);
    return DIBBA_EPROTO;
  }
  *out = w.v;
  *n = w.n;
  return 0;
}

static const xmlNode *find(const xmlNode *n, const char *name, unsigned depth) {
  for (; n && depth < 16; n = n->next) {
    if (name_is(n, name))
      return n;
    const xmlNode *f = find(n->children, name, depth + 1);
    if (f)
      return f;
  }
  return NULL;
}

int dibba_ec2_parse_error(const char *xml, size_t len, char *code, size_t codelen, char *msg, size_t msglen) {
  xmlDoc *doc = NULL;
  code[0] = '\0';
  msg[0] = '\0';
  int rc = read_doc(xml, len, &doc);
  if (rc < 0)
    return rc;
  const xmlNode *e = find(xmlDocGetRootElement(doc), "Error", 0);
  if (e == NULL) {
    rc = -ENOENT;
  } else {
    text_of(child(e, "Code"), code, codelen);
    text_of(child(e, "Message"), msg, msglen);
    if (code[0] == '\0')
      rc = -ENOENT;
  }
  xmlFreeDoc(doc);
  return rc;
}
