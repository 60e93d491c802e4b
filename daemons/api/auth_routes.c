/* SPDX-License-Identifier: Apache-2.0 */
/* dibba-api authentication: the bearer-token authenticator, POST /token (OAuth2 password grant), GET /v1/me, the
 * /v1/users admin routes, and the users file kept in sync through a directory watch and SIGHUP. */
#include <errno.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dibba/alloc.h"
#include "dibba/error.h"
#include "dibba/log.h"

#include "api.h"

#define FORM_MAX_BYTES 4096
#define RELOAD_DEBOUNCE_MS 50

/* ---- the authenticator ---- */

static int authenticate(void *data, dibba_http_req_t *req, const char *token, dibba_http_principal_t *out) {
  api_t *api = data;
  dibba_auth_claims_t c;
  if (token == NULL)
    return 401;
  size_t len = strlen(token);
  int64_t now = (int64_t)time(NULL);
  int r = dibba_auth_token_check(&api->jwt, &api->users, token, len, now, &c);
  if (r == -EACCES) {
    /* A valid signature for a user who is gone, disabled or changed role: say who tried, for the audit. */
    if (dibba_auth_jwt_verify(&api->jwt, token, len, now, &c) == 0)
      dibba_http_req_set_subject(req, c.sub);
    return 401;
  }
  if (r < 0)
    return 401;
  snprintf(out->user, sizeof out->user, "%s", c.sub);
  out->role = (dibba_http_role_t)c.role; /* the two enums share their ranks */
  return 0;
}

/* ---- POST /token ---- */

typedef struct login_s {
  api_t *api;
  dibba_http_req_t *req;
  char user[DIBBA_AUTH_NAME_MAX * 4 + 1];
  char addr[64];
} login_t;

static void addr_of(dibba_http_req_t *req, char *out, size_t len) {
  /* The rate limit is per client address, not per connection: drop the port. */
  const char *r = dibba_http_req_remote(req);
  const char *colon = strrchr(r, ':');
  size_t n = colon ? (size_t)(colon - r) : strlen(r);
  if (n >= len)
    n = len - 1;
  memcpy(out, r, n);
  out[n] = '\0';
}

static void on_login(int status, const char *name, dibba_auth_role_t role, void *data) {
  login_t *l = data;
  api_t *api = l->api;
  dibba_http_req_t *req = l->req;
  if (status == 0) {
    char *token = NULL;
    int64_t expires_in = 0;
    int r = dibba_auth_jwt_issue(&api->jwt, name, role, (int64_t)time(NULL), &token, &expires_in);
    if (r < 0) {
      dibba_http_respond_error(req, 500, "could not issue a token");
    } else {
      dibba_auth_rl_success(api->rl, name);
      api->logins_ok++;
      dibba_http_add_header(req, "Cache-Control", "no-store");
      dibba_http_respond_json(req, 200,
                              json_pack("{s:s,s:s,s:I}", "access_token", token, "token_type", "bearer", "expires_in",
                                        (json_int_t)expires_in));
      explicit_bzero(token, strlen(token));
      free(token);
    }
  } else {
    if (status != UV_ECANCELED) {
      dibba_auth_rl_fail(api->rl, l->user, l->addr, (int64_t)uv_now(api->loop));
      api->login_failures++;
    }
    dibba_http_respond_error(req, 401, "Incorrect username or password");
  }
  dibba_http_req_unref(req);
  free(l);
  api_maybe_finish(api);
}

static void token_handler(dibba_http_req_t *req, void *data) {
  api_t *api = data;
  size_t blen = 0;
  const char *body = dibba_http_req_body(req, &blen);
  json_t *form = NULL;
  int r = dibba_http_parse_form(body, blen, FORM_MAX_BYTES, &form);
  if (r == -E2BIG) {
    dibba_http_respond_error(req, 400, "form too large");
    return;
  }
  if (r < 0) {
    dibba_http_respond_error(req, 400, "malformed form body");
    return;
  }
  const char *user = json_string_value(json_object_get(form, "username"));
  const char *pw = json_string_value(json_object_get(form, "password"));
  const char *grant = json_string_value(json_object_get(form, "grant_type"));
  if (user && dibba_auth_username_valid(user))
    dibba_http_req_set_subject(req, user);
  if (grant && strcmp(grant, "password") != 0) {
    /* RFC 6749 5.2, with the detail every Dibba error carries. */
    dibba_http_respond_json(req, 400,
                            json_pack("{s:s,s:s}", "error", "unsupported_grant_type", "detail",
                                      "unsupported_grant_type: only grant_type=password is supported"));
    goto out;
  }
  if (user == NULL || user[0] == '\0') {
    dibba_http_respond_422(req, "username", "Field required", "missing");
    goto out;
  }
  if (pw == NULL || pw[0] == '\0') {
    dibba_http_respond_422(req, "password", "Field required", "missing");
    goto out;
  }
  login_t *l = dibba_xcalloc(1, sizeof *l);
  l->api = api;
  l->req = req;
  snprintf(l->user, sizeof l->user, "%s", user);
  addr_of(req, l->addr, sizeof l->addr);
  int64_t retry = 0;
  if (dibba_auth_rl_check(api->rl, l->user, l->addr, (int64_t)uv_now(api->loop), &retry) == -EBUSY) {
    api->login_limited++;
    dibba_http_respond_429(req, (unsigned)retry, "Too many failed logins; try again later");
    free(l);
    goto out;
  }
  r = dibba_auth_login_async(api->loop, &api->users, user, pw, strlen(pw), on_login, l);
  if (r == -EINVAL) {
    /* Over-long name or password: no user can have it. Same answer as a wrong password. */
    dibba_auth_rl_fail(api->rl, l->user, l->addr, (int64_t)uv_now(api->loop));
    api->login_failures++;
    dibba_http_respond_error(req, 401, "Incorrect username or password");
    free(l);
  } else if (r < 0) {
    dibba_http_respond_error(req, 503, "login unavailable");
    free(l);
  } else {
    dibba_http_req_ref(req);
  }
out:
  json_decref(form);
}

/* ---- GET /v1/me ---- */

static void me_handler(dibba_http_req_t *req, void *data) {
  (void)data;
  const dibba_http_principal_t *p = dibba_http_req_principal(req);
  dibba_http_respond_json(req, 200, json_pack("{s:s,s:s}", "sub", p->user, "role", dibba_http_role_name(p->role)));
}

/* ---- /v1/users ---- */

static json_t *user_json(const dibba_auth_user_t *x) {
  return json_pack("{s:s,s:s,s:b,s:I,s:I}", "name", x->name, "role", dibba_auth_role_name(x->role), "enabled",
                   x->enabled, "created_at", (json_int_t)x->created_at, "updated_at", (json_int_t)x->updated_at);
}

static size_t enabled_admins(const dibba_auth_users_t *u) {
  size_t n = 0;
  for (size_t i = 0; i < u->n; i++)
    n += u->users[i].enabled && u->users[i].role == DIBBA_AUTH_ROLE_ADMIN;
  return n;
}

typedef struct users_op_s {
  api_t *api;
  dibba_http_req_t *req;
  int kind; /* OP_CREATE, OP_PATCH, OP_DELETE */
  char name[DIBBA_AUTH_NAME_MAX + 1];
  int has_role, has_enabled;
  dibba_auth_role_t role;
  int enabled;
} users_op_t;

enum { OP_CREATE = 1, OP_PATCH, OP_DELETE };

static void op_done(users_op_t *op) {
  api_t *api = op->api;
  dibba_http_req_unref(op->req);
  free(op);
  api_maybe_finish(api);
}

static void on_saved(dibba_auth_users_t *u, int status, void *data) {
  users_op_t *op = data;
  api_t *api = op->api;
  (void)u;
  api->saves_inflight--;
  if (status < 0) {
    char err[256];
    dibba_log_error("users", json_pack("{s:s,s:s}", "error", dibba_strerror(status), "user", op->name),
                    "saving the users file failed; reloading it");
    if (api_users_reload(api, err, sizeof err) < 0)
      dibba_log_error("users", json_pack("{s:s}", "error", err), "reloading the users file failed");
    dibba_http_respond_error(op->req, 500, "could not save the users file");
  } else if (op->kind == OP_DELETE) {
    dibba_http_respond(op->req, 204, NULL, NULL, 0);
  } else {
    const dibba_auth_user_t *x = dibba_auth_users_find(&api->users, op->name);
    if (x)
      dibba_http_respond_json(op->req, op->kind == OP_CREATE ? 201 : 200, user_json(x));
    else
      dibba_http_respond_error(op->req, 404, "user not found");
  }
  op_done(op);
}

static void save(users_op_t *op) {
  api_t *api = op->api;
  int r = dibba_auth_users_save_async(api->loop, &api->users, on_saved, op);
  if (r < 0) {
    on_saved(&api->users, r, op);
    return;
  }
  api->saves_inflight++;
}

/* Would this change leave no enabled admin? (role/enabled after the change; del: the user goes away) */
static int removes_last_admin(const api_t *api, const char *name, int del, dibba_auth_role_t role, int enabled) {
  const dibba_auth_user_t *x = dibba_auth_users_find(&api->users, name);
  if (x == NULL || !x->enabled || x->role != DIBBA_AUTH_ROLE_ADMIN)
    return 0;
  if (!del && enabled && role == DIBBA_AUTH_ROLE_ADMIN)
    return 0;
  return enabled_admins(&api->users) <= 1;
}

/* Apply a PATCH's role/enabled, and hash if given (NULL: no password change). Returns an HTTP status or 0. */
static int apply_patch(users_op_t *op, const char *hash) {
  api_t *api = op->api;
  int64_t now = (int64_t)time(NULL);
  const dibba_auth_user_t *x = dibba_auth_users_find(&api->users, op->name);
  if (x == NULL)
    return 404;
  dibba_auth_role_t role = op->has_role ? op->role : x->role;
  int enabled = op->has_enabled ? op->enabled : x->enabled;
  if (removes_last_admin(api, op->name, 0, role, enabled))
    return 409;
  if (op->has_role)
    dibba_auth_users_set_role(&api->users, op->name, role, now);
  if (op->has_enabled)
    dibba_auth_users_set_enabled(&api->users, op->name, enabled, now);
  if (hash)
    dibba_auth_users_set_hash(&api->users, op->name, hash, now);
  return 0;
}

static void on_hashed(int status, const char *hash, void *data) {
  users_op_t *op = data;
  api_t *api = op->api;
  int st = 0;
  if (status < 0) {
    dibba_http_respond_error(op->req, 500, "could not hash the password");
    op_done(op);
    return;
  }
  /* The store may have changed while scrypt ran: check again. */
  if (op->kind == OP_CREATE) {
    int r = dibba_auth_users_add(&api->users, op->name, op->role, hash, (int64_t)time(NULL));
    if (r == 0 && op->has_enabled && !op->enabled)
      dibba_auth_users_set_enabled(&api->users, op->name, 0, (int64_t)time(NULL));
    st = r == -EEXIST ? 409 : r == -ENOSPC ? 507 : r < 0 ? 500 : 0;
  } else {
    st = apply_patch(op, hash);
  }
  if (st) {
    dibba_http_respond_error(op->req, st,
                             st == 409
                                 ? (op->kind == OP_CREATE ? "user already exists" : "this would leave no enabled admin")
                             : st == 404 ? "user not found"
                                         : "could not change the user");
    op_done(op);
    return;
  }
  save(op);
}

static users_op_t *op_new(api_t *api, dibba_http_req_t *req, int kind, const char *name) {
  users_op_t *op = dibba_xcalloc(1, sizeof *op);
  op->api = api;
  op->req = req;
  op->kind = kind;
  snprintf(op->name, sizeof op->name, "%s", name);
  dibba_http_req_ref(req);
  return op;
}

/* Read "role" and "enabled" if present. Returns 0 or responds 422 and returns -1. */
static int read_role_enabled(dibba_http_req_t *req, json_t *body, users_op_t *op) {
  json_t *jr = json_object_get(body, "role"), *je = json_object_get(body, "enabled");
  if (jr) {
    if (!json_is_string(jr) || dibba_auth_role_parse(json_string_value(jr), &op->role) < 0) {
      dibba_http_respond_422(req, "role", "role must be admin, operator or viewer", "enum");
      return -1;
    }
    op->has_role = 1;
  }
  if (je) {
    if (!json_is_boolean(je)) {
      dibba_http_respond_422(req, "enabled", "enabled must be a boolean", "bool_type");
      return -1;
    }
    op->has_enabled = 1;
    op->enabled = json_is_true(je);
  }
  return 0;
}

static int read_password(dibba_http_req_t *req, json_t *body, const char **pw, int required) {
  json_t *jp = json_object_get(body, "password");
  *pw = NULL;
  if (jp == NULL) {
    if (required)
      dibba_http_respond_422(req, "password", "Field required", "missing");
    return required ? -1 : 0;
  }
  if (!json_is_string(jp) || !dibba_auth_password_valid(json_string_value(jp), json_string_length(jp))) {
    dibba_http_respond_422(req, "password", "password must be 8 to 1024 bytes", "string_length");
    return -1;
  }
  *pw = json_string_value(jp);
  return 0;
}

static void users_list(dibba_http_req_t *req, void *data) {
  api_t *api = data;
  dibba_http_respond_json(req, 200, dibba_auth_users_list(&api->users));
}

static void users_get(dibba_http_req_t *req, void *data) {
  api_t *api = data;
  const dibba_auth_user_t *x = dibba_auth_users_find(&api->users, dibba_http_req_param(req, "name"));
  if (x == NULL)
    dibba_http_respond_error(req, 404, "user not found");
  else
    dibba_http_respond_json(req, 200, user_json(x));
}

static void start_hash(users_op_t *op, const char *pw) {
  int r = dibba_auth_password_hash_async(op->api->loop, pw, strlen(pw), &op->api->users.params, on_hashed, op);
  if (r < 0) {
    dibba_http_respond_error(op->req, 503, "password hashing unavailable");
    op_done(op);
  }
}

static void users_create(dibba_http_req_t *req, void *data) {
  api_t *api = data;
  json_t *body = dibba_http_req_json(req);
  const char *pw = NULL;
  if (!json_is_object(body)) {
    dibba_http_respond_422(req, NULL, "body must be a JSON object", "dict_type");
    return;
  }
  json_t *jn = json_object_get(body, "name");
  if (jn == NULL) {
    dibba_http_respond_422(req, "name", "Field required", "missing");
    return;
  }
  if (!json_is_string(jn) || !dibba_auth_username_valid(json_string_value(jn))) {
    dibba_http_respond_422(req, "name", "name must be 1-64 characters of A-Z a-z 0-9 . _ @ -", "string_pattern");
    return;
  }
  if (json_object_get(body, "role") == NULL) {
    dibba_http_respond_422(req, "role", "Field required", "missing");
    return;
  }
  users_op_t tmp;
  memset(&tmp, 0, sizeof tmp);
  if (read_role_enabled(req, body, &tmp) < 0 || read_password(req, body, &pw, 1) < 0)
    return;
  const char *name = json_string_value(jn);
  if (dibba_auth_users_find(&api->users, name)) {
    dibba_http_respond_error(req, 409, "user already exists");
    return;
  }
  users_op_t *op = op_new(api, req, OP_CREATE, name);
  op->has_role = 1;
  op->role = tmp.role;
  op->has_enabled = tmp.has_enabled;
  op->enabled = tmp.enabled;
  start_hash(op, pw);
}

static void users_patch(dibba_http_req_t *req, void *data) {
  api_t *api = data;
  json_t *body = dibba_http_req_json(req);
  const char *name = dibba_http_req_param(req, "name"), *pw = NULL;
  if (!json_is_object(body)) {
    dibba_http_respond_422(req, NULL, "body must be a JSON object", "dict_type");
    return;
  }
  users_op_t tmp;
  memset(&tmp, 0, sizeof tmp);
  if (read_role_enabled(req, body, &tmp) < 0 || read_password(req, body, &pw, 0) < 0)
    return;
  if (dibba_auth_users_find(&api->users, name) == NULL) {
    dibba_http_respond_error(req, 404, "user not found");
    return;
  }
  users_op_t *op = op_new(api, req, OP_PATCH, name);
  op->has_role = tmp.has_role;
  op->role = tmp.role;
  op->has_enabled = tmp.has_enabled;
  op->enabled = tmp.enabled;
  if (pw) {
    start_hash(op, pw);
    return;
  }
  int st = apply_patch(op, NULL);
  if (st) {
    dibba_http_respond_error(req, st, st == 409 ? "this would leave no enabled admin" : "user not found");
    op_done(op);
    return;
  }
  save(op);
}

static void users_delete(dibba_http_req_t *req, void *data) {
  api_t *api = data;
  const char *name = dibba_http_req_param(req, "name");
  if (dibba_auth_users_find(&api->users, name) == NULL) {
    dibba_http_respond_error(req, 404, "user not found");
    return;
  }
  if (removes_last_admin(api, name, 1, DIBBA_AUTH_ROLE_NONE, 0)) {
    dibba_http_respond_error(req, 409, "this would leave no enabled admin");
    return;
  }
  users_op_t *op = op_new(api, req, OP_DELETE, name);
  dibba_auth_users_del(&api->users, name);
  save(op);
}

/* ---- the users file: reload on change ---- */

int api_users_reload(api_t *api, char *err, size_t errlen) {
  int r = dibba_auth_users_reload(&api->users, err, errlen);
  if (r < 0) {
    api->users_reload_errors++;
    return r;
  }
  api->users_reloads++;
  return 0;
}

static void on_reload_timer(uv_timer_t *t) {
  api_t *api = t->data;
  char err[256];
  if (api->saves_inflight > 0) {
    /* Our own save is being written: the file is about to change again. */
    uv_timer_start(&api->users_timer, on_reload_timer, RELOAD_DEBOUNCE_MS, 0);
    return;
  }
  if (api_users_reload(api, err, sizeof err) < 0)
    dibba_log_error("users", json_pack("{s:s}", "error", err), "users file reload failed; keeping the old users");
  else
    dibba_log_info("users", json_pack("{s:I}", "users", (json_int_t)api->users.n), "users file reloaded");
}

static void on_users_event(uv_fs_event_t *h, const char *filename, int events, int status) {
  api_t *api = h->data;
  (void)events;
  if (status < 0 || api->stopping)
    return;
  if (filename && strcmp(filename, api->users_base) != 0)
    return;
  uv_timer_start(&api->users_timer, on_reload_timer, RELOAD_DEBOUNCE_MS, 0);
}

int api_auth_init(api_t *api, char *err, size_t errlen) {
  const dibba_config_t *cfg = &api->d->cfg;
  dibba_auth_scrypt_t params;
  dibba_auth_rl_config_t rlc;
  char *path = NULL, *dir = NULL;
  int r = dibba_auth_jwt_from_config(&api->jwt, cfg, err, errlen);
  if (r < 0)
    goto out;
  r = dibba_auth_scrypt_config(cfg, &params, err, errlen);
  if (r < 0)
    goto out;
  r = dibba_auth_rl_config(cfg, &rlc, err, errlen);
  if (r < 0)
    goto out;
  r = dibba_auth_users_path(cfg, &path, err, errlen);
  if (r < 0)
    goto out;
  api->rl = dibba_auth_rl_new(&rlc);
  dibba_auth_users_init(&api->users, path, &params);
  api->users_ready = 1;
  r = dibba_auth_users_load(&api->users, err, errlen);
  if (r < 0)
    goto out;
  /* Watch the directory, not the file: a save renames a new file over the old one. */
  char *tmp = dibba_xstrdup(path);
  api->users_base = dibba_xstrdup(basename(tmp));
  free(tmp);
  tmp = dibba_xstrdup(path);
  dir = dibba_xstrdup(dirname(tmp));
  free(tmp);
  uv_fs_event_init(api->loop, &api->users_watch);
  uv_timer_init(api->loop, &api->users_timer);
  api->users_watch.data = api->users_timer.data = api;
  api->handles = 2;
  r = uv_fs_event_start(&api->users_watch, on_users_event, dir, 0);
  if (r < 0) {
    r = dibba_error_set(err, errlen, r, "watching %s: %s", dir, uv_strerror(r));
    goto out;
  }
  dibba_log_info("users", json_pack("{s:s,s:I}", "file", path, "users", (json_int_t)api->users.n), "users loaded");
out:
  free(path);
  free(dir);
  return r;
}

static void on_handle_closed(uv_handle_t *h) {
  api_t *api = h->data;
  api->closes_pending--;
  api_maybe_finish(api);
}

void api_auth_stop(api_t *api) {
  if (api->handles == 0)
    return;
  api->handles = 0;
  api->closes_pending += 2;
  uv_close((uv_handle_t *)&api->users_watch, on_handle_closed);
  uv_close((uv_handle_t *)&api->users_timer, on_handle_closed);
}

int api_auth_free(api_t *api) {
  if (api->users_ready && api->users.pending > 0)
    return 0;
  if (api->users_ready)
    dibba_auth_users_free(&api->users);
  api->users_ready = 0;
  dibba_auth_rl_free(api->rl);
  api->rl = NULL;
  dibba_auth_jwt_free(&api->jwt);
  free(api->users_base);
  api->users_base = NULL;
  return 1;
}

void api_auth_metrics(api_t *api, dibba_buf_t *out) {
  dibba_buf_printf(out,
                   "# HELP dibba_auth_logins_total Successful logins at POST /token.\n"
                   "# TYPE dibba_auth_logins_total counter\n"
                   "dibba_auth_logins_total %llu\n"
                   "# HELP dibba_auth_login_failures_total Failed logins (wrong user or password).\n"
                   "# TYPE dibba_auth_login_failures_total counter\n"
                   "dibba_auth_login_failures_total %llu\n"
                   "# HELP dibba_auth_login_rate_limited_total Logins refused with 429 by the failure limit.\n"
                   "# TYPE dibba_auth_login_rate_limited_total counter\n"
                   "dibba_auth_login_rate_limited_total %llu\n"
                   "# HELP dibba_auth_users_reloads_total Users file reloads (ok, failed).\n"
                   "# TYPE dibba_auth_users_reloads_total counter\n"
                   "dibba_auth_users_reloads_total{result=\"ok\"} %llu\n"
                   "dibba_auth_users_reloads_total{result=\"error\"} %llu\n",
                   (unsigned long long)api->logins_ok, (unsigned long long)api->login_failures,
                   (unsigned long long)api->login_limited, (unsigned long long)api->users_reloads,
                   (unsigned long long)api->users_reload_errors);
}

/* ---- the route table ---- */

static const char user_schema[] =
    "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\"},\"role\":{\"type\":\"string\",\"enum\":["
    "\"admin\",\"operator\",\"viewer\"]},\"enabled\":{\"type\":\"boolean\"},\"created_at\":{\"type\":\"integer\"},"
    "\"updated_at\":{\"type\":\"integer\"}}}";

int api_auth_routes(api_t *api, char *err, size_t errlen) {
  dibba_http_server_set_auth(api->http, authenticate, api);
  const dibba_http_route_t routes[] = {
      {.method = "POST",
       .pattern = "/token",
       .handler = token_handler,
       .data = api,
       .body = DIBBA_HTTP_BODY_FORM,
       .summary = "Log in (OAuth2 password grant, form-encoded username/password) and get a bearer token",
       .request_schema = "{\"type\":\"object\",\"required\":[\"username\",\"password\"],\"properties\":{"
                         "\"grant_type\":{\"type\":\"string\",\"enum\":[\"password\"]},\"username\":{\"type\":"
                         "\"string\"},\"password\":{\"type\":\"string\",\"format\":\"password\"},\"scope\":{"
                         "\"type\":\"string\"}}}",
       .response_schema = "{\"type\":\"object\",\"properties\":{\"access_token\":{\"type\":\"string\"},"
                          "\"token_type\":{\"type\":\"string\"},\"expires_in\":{\"type\":\"integer\"}}}"},
      {.method = "GET",
       .pattern = "/v1/me",
       .handler = me_handler,
       .data = api,
       .role = DIBBA_ROLE_VIEWER,
       .summary = "Who the bearer token belongs to",
       .response_schema = "{\"type\":\"object\",\"properties\":{\"sub\":{\"type\":\"string\"},\"role\":{\"type\":"
                          "\"string\"}}}"},
      {.method = "GET",
       .pattern = "/v1/users",
       .handler = users_list,
       .data = api,
       .role = DIBBA_ROLE_ADMIN,
       .summary = "List users (without password hashes)"},
      {.method = "POST",
       .pattern = "/v1/users",
       .handler = users_create,
       .data = api,
       .role = DIBBA_ROLE_ADMIN,
       .body = DIBBA_HTTP_BODY_JSON,
       .summary = "Create a user",
       .request_schema = "{\"type\":\"object\",\"required\":[\"name\",\"password\",\"role\"],\"properties\":{"
                         "\"name\":{\"type\":\"string\"},\"password\":{\"type\":\"string\",\"format\":\"password\"},"
                         "\"role\":{\"type\":\"string\",\"enum\":[\"admin\",\"operator\",\"viewer\"]},\"enabled\":{"
                         "\"type\":\"boolean\"}}}",
       .response_schema = user_schema},
      {.method = "GET",
       .pattern = "/v1/users/{name}",
       .handler = users_get,
       .data = api,
       .role = DIBBA_ROLE_ADMIN,
       .summary = "Show a user",
       .response_schema = user_schema},
      {.method = "PATCH",
       .pattern = "/v1/users/{name}",
       .handler = users_patch,
       .data = api,
       .role = DIBBA_ROLE_ADMIN,
       .body = DIBBA_HTTP_BODY_JSON,
       .summary = "Change a user's role, enabled flag or password",
       .request_schema = "{\"type\":\"object\",\"properties\":{\"password\":{\"type\":\"string\",\"format\":"
                         "\"password\"},\"role\":{\"type\":\"string\",\"enum\":[\"admin\",\"operator\",\"viewer\"]},"
                         "\"enabled\":{\"type\":\"boolean\"}}}",
       .response_schema = user_schema},
      {.method = "DELETE",
       .pattern = "/v1/users/{name}",
       .handler = users_delete,
       .data = api,
       .role = DIBBA_ROLE_ADMIN,
       .summary = "Delete a user (not the last enabled admin)"},
  };
  for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
    int r = dibba_http_router_add(api->router, &routes[i]);
    if (r < 0)
      return dibba_error_set(err, errlen, r, "route %s %s", routes[i].method, routes[i].pattern);
  }
  return 0;
}
