/* SPDX-License-Identifier: Apache-2.0 */
/* The route table: patterns with {params}, 404/405 matching, roles, and the OpenAPI document built from it. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "dibba/alloc.h"
#include "http_private.h"

static const char *const role_names[] = {"public", "viewer", "operator", "admin"};

int dibba_http_role_parse(const char *s, dibba_http_role_t *out) {
  for (int i = 1; i < 4; i++) {
    if (s && strcmp(s, role_names[i]) == 0) {
      *out = (dibba_http_role_t)i;
      return 0;
    }
  }
  return -EINVAL;
}

const char *dibba_http_role_name(dibba_http_role_t r) { return (unsigned)r < 4 ? role_names[r] : "unknown"; }

dibba_http_router_t *dibba_http_router_new(void) { return dibba_xcalloc(1, sizeof(dibba_http_router_t)); }

static void route_free(dibba__http_route_t *rt) {
  free(rt->method);
  free(rt->pattern);
  free(rt->summary);
  json_decref(rt->req_schema);
  json_decref(rt->resp_schema);
  for (size_t i = 0; i < rt->nsegs; i++)
    free(rt->segs[i]);
  free(rt->segs);
}

void dibba_http_router_free(dibba_http_router_t *r) {
  if (r == NULL)
    return;
  for (size_t i = 0; i < r->n; i++)
    route_free(&r->routes[i]);
  free(r->routes);
  free(r);
}

static int method_known(const char *m) {
  static const char *const ok[] = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"};
  for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
    if (strcmp(m, ok[i]) == 0)
      return 1;
  return 0;
}

static int split_pattern(const char *pattern, char ***segs, size_t *nsegs) {
  size_t n = 0;
  char **v = NULL;
  const char *p = pattern + 1;
  int rc = 0;
  if (pattern[0] != '/')
    return -EINVAL;
  while (*p) {
    const char *e = strchr(p, '/');
    size_t len = e ? (size_t)(e - p) : strlen(p);
    if (len == 0) {
      if (e == NULL || e[1] == '\0')
        break; /* trailing slash */
      rc = -EINVAL;
      goto fail;
    }
    if (p[0] == '{' && (p[len - 1] != '}' || len < 3 || memchr(p + 1, '{', len - 1))) {
      rc = -EINVAL;
      goto fail;
    }
    v = dibba_xreallocarray(v, n + 1, sizeof *v);
    v[n++] = dibba_xstrndup(p, len);
    if (e == NULL)
      break;
    p = e + 1;
  }
  *segs = v;
  *nsegs = n;
  return 0;
fail:
  for (size_t i = 0; i < n; i++)
    free(v[i]);
  free(v);
  return rc;
}

int dibba_http_router_add(dibba_http_router_t *r, const dibba_http_route_t *route) {
  dibba__http_route_t rt;
  size_t nparams = 0;
  int rc = 0;
  if (route->method == NULL || route->pattern == NULL || !method_known(route->method) ||
      (route->handler == NULL && route->ws == NULL) || (unsigned)route->role > DIBBA_ROLE_ADMIN)
    return -EINVAL;
  memset(&rt, 0, sizeof rt);
  if (split_pattern(route->pattern, &rt.segs, &rt.nsegs) < 0)
    return -EINVAL;
  for (size_t i = 0; i < rt.nsegs; i++)
    nparams += rt.segs[i][0] == '{';
  if (nparams > DIBBA_HTTP_MAX_PARAMS) {
    rc = -EINVAL;
    goto fail;
  }
  if (route->request_schema && (rt.req_schema = json_loads(route->request_schema, 0, NULL)) == NULL) {
    rc = -EINVAL;
    goto fail;
  }
  if (route->response_schema && (rt.resp_schema = json_loads(route->response_schema, 0, NULL)) == NULL) {
    rc = -EINVAL;
    goto fail;
  }
  /* canonical pattern: no trailing slash (except "/") */
  size_t pl = strlen(route->pattern);
  while (pl > 1 && route->pattern[pl - 1] == '/')
    pl--;
  rt.pattern = dibba_xstrndup(route->pattern, pl);
  rt.method = dibba_xstrdup(route->method);
  rt.summary = route->summary ? dibba_xstrdup(route->summary) : NULL;
  for (size_t i = 0; i < r->n; i++) {
    if (strcmp(r->routes[i].method, rt.method) == 0 && strcmp(r->routes[i].pattern, rt.pattern) == 0) {
      rc = -EEXIST;
      goto fail;
    }
  }
  rt.handler = route->handler;
  rt.data = route->data;
  rt.role = route->role;
  rt.body = route->body;
  rt.ws = route->ws;
  if (r->n == r->alloc) {
    r->alloc = r->alloc ? r->alloc * 2 : 16;
    r->routes = dibba_xreallocarray(r->routes, r->alloc, sizeof *r->routes);
  }
  r->routes[r->n++] = rt;
  return 0;
fail:
  route_free(&rt);
  return rc;
}

/* Split the request path into at most 32 segments; a trailing slash is ignored. */
static int split_path(const char *path, const char **seg, size_t *len, size_t max) {
  size_t n = 0;
  const char *p = path + 1;
  if (path[0] != '/')
    return -1;
  while (*p) {
    const char *e = strchr(p, '/');
    size_t l = e ? (size_t)(e - p) : strlen(p);
    if (l == 0)
      return (e && e[1] == '\0') || e == NULL ? (int)n : -1;
    if (n == max)
      return -1;
    seg[n] = p;
    len[n++] = l;
    if (e == NULL)
      break;
    if (e[1] == '\0')
      break;
    p = e + 1;
  }
  return (int)n;
}

const dibba__http_route_t *dibba__http_route_match(const dibba_http_router_t *r, dibba_http_req_t *req, int *status,
                                                   char *allow, size_t allowlen) {
  const char *seg[32];
  size_t len[32];
  const char *method = llhttp_method_name((llhttp_method_t)req->method);
  int head = req->method == HTTP_HEAD;
  int n = req->path ? split_path(req->path, seg, len, 32) : -1;
  size_t al = 0;
  const dibba__http_route_t *found = NULL;
  allow[0] = '\0';
  *status = 404;
  if (n < 0 || r == NULL)
    return NULL;
  for (size_t i = 0; i < r->n; i++) {
    const dibba__http_route_t *rt = &r->routes[i];
    if (rt->nsegs != (size_t)n)
      continue;
    size_t k;
    for (k = 0; k < rt->nsegs; k++) {
      if (rt->segs[k][0] == '{')
        continue;
      if (strlen(rt->segs[k]) != len[k] || memcmp(rt->segs[k], seg[k], len[k]) != 0)
        break;
    }
    if (k < rt->nsegs)
      continue;
    if (strcmp(rt->method, method) == 0 || (head && strcmp(rt->method, "GET") == 0 && found == NULL)) {
      found = rt;
      if (!head || strcmp(rt->method, "HEAD") == 0)
        break;
      continue;
    }
    *status = 405;
    int w = snprintf(allow + al, allowlen - al, "%s%s", al ? ", " : "", rt->method);
    if (w > 0 && (size_t)w < allowlen - al)
      al += (size_t)w;
  }
  if (found == NULL)
    return NULL;
  /* decode params into req */
  for (size_t i = 0; i < req->nparams; i++)
    free(req->params[i].value);
  req->nparams = 0;
  for (size_t k = 0; k < found->nsegs; k++) {
    if (found->segs[k][0] != '{')
      continue;
    char *v = NULL;
    size_t vl;
    if (dibba_http_urldecode(seg[k], len[k], 0, &v, &vl) < 0 || vl == 0) {
      free(v);
      *status = 404;
      return NULL;
    }
    req->params[req->nparams].name = found->segs[k]; /* "{name}": compared without braces below */
    req->params[req->nparams++].value = v;
  }
  *status = 0;
  return found;
}

/* ---- OpenAPI ---- */

json_t *dibba_http_router_openapi(const dibba_http_router_t *r, const char *title, const char *version) {
  json_t *paths = json_object();
  for (size_t i = 0; i < r->n; i++) {
    const dibba__http_route_t *rt = &r->routes[i];
    json_t *item = json_object_get(paths, rt->pattern);
    if (item == NULL) {
      item = json_object();
      json_object_set_new(paths, rt->pattern, item);
    }
    json_t *op = json_object();
    char lower[16];
    size_t ml = strlen(rt->method);
    for (size_t k = 0; k <= ml && k < sizeof lower; k++)
      lower[k] = (char)(rt->method[k] >= 'A' && rt->method[k] <= 'Z' ? rt->method[k] + 32 : rt->method[k]);
    lower[sizeof lower - 1] = '\0';
    if (rt->summary)
      json_object_set_new(op, "summary", json_string(rt->summary));
    char opid[512];
    size_t o = (size_t)snprintf(opid, sizeof opid, "%s", lower);
    for (const char *p = rt->pattern; *p && o + 1 < sizeof opid; p++)
      opid[o++] = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ? *p : '_';
    opid[o] = '\0';
    json_object_set_new(op, "operationId", json_string(opid));
    json_t *params = json_array();
    for (size_t k = 0; k < rt->nsegs; k++) {
      if (rt->segs[k][0] != '{')
        continue;
      json_array_append_new(params,
                            json_pack("{s:s%,s:s,s:b,s:{s:s}}", "name", rt->segs[k] + 1, strlen(rt->segs[k]) - 2, "in",
                                      "path", "required", 1, "schema", "type", "string"));
    }
    if (json_array_size(params))
      json_object_set_new(op, "parameters", params);
    else
      json_decref(params);
    if (rt->req_schema || rt->body != DIBBA_HTTP_BODY_ANY) {
      const char *mt = rt->body == DIBBA_HTTP_BODY_FORM ? "application/x-www-form-urlencoded" : "application/json";
      json_t *schema = rt->req_schema ? json_incref(rt->req_schema) : json_pack("{s:s}", "type", "object");
      json_object_set_new(op, "requestBody",
                          json_pack("{s:b,s:{s:{s:o}}}", "required", 1, "content", mt, "schema", schema));
    }
    json_t *ok = json_pack("{s:s}", "description", rt->ws ? "Switching Protocols (WebSocket)" : "Successful Response");
    if (rt->resp_schema)
      json_object_set_new(ok, "content", json_pack("{s:{s:O}}", "application/json", "schema", rt->resp_schema));
    json_t *responses = json_object();
    json_object_set_new(responses, rt->ws ? "101" : "200", ok);
    if (rt->role != DIBBA_ROLE_PUBLIC) {
      json_object_set_new(responses, "401", json_pack("{s:s}", "description", "Not authenticated"));
      json_object_set_new(responses, "403", json_pack("{s:s}", "description", "Not enough permissions"));
      json_object_set_new(op, "security", json_pack("[{s:[]}]", "bearer"));
      json_object_set_new(op, "x-required-role", json_string(dibba_http_role_name(rt->role)));
    }
    if (rt->body == DIBBA_HTTP_BODY_JSON)
      json_object_set_new(responses, "422", json_pack("{s:s}", "description", "Validation Error"));
    json_object_set_new(op, "responses", responses);
    json_object_set_new(item, lower, op);
  }
  return json_pack("{s:s,s:{s:s,s:s},s:o,s:{s:{s:{s:s,s:s,s:s}}}}", "openapi", "3.0.3", "info", "title",
                   title ? title : "Dibba API", "version", version ? version : "0", "paths", paths, "components",
                   "securitySchemes", "bearer", "type", "http", "scheme", "bearer", "bearerFormat", "JWT");
}
