/* SPDX-License-Identifier: Apache-2.0 */
/* The audit trail: one record per mutating request in the Redis stream <prefix>audit, written from the HTTP
 * server's response hook so that every route (today's and the ones added later) is covered without code of its
 * own. Records hold who, what, where and the outcome; never a body, a query string, a password or a token. */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "dibba/log.h"
#include "dibba/time.h"

#include "api.h"

#define AUDIT_MAXLEN "100000"

static void on_xadd(dibba_redis_t *r, int status, redisReply *reply, void *data) {
  api_t *api = data;
  (void)r;
  (void)reply;
  if (status == 0) {
    api->audit_records++;
    return;
  }
  api->audit_errors++;
  dibba_log_warn("audit", json_pack("{s:s}", "error", dibba_redis_strerror(status)), "audit record lost");
}

static int is_read_only(const char *method) {
  return strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0 || strcmp(method, "OPTIONS") == 0;
}

void api_audit_response(void *data, dibba_http_req_t *req, int status) {
  api_t *api = data;
  const char *method = dibba_http_req_method(req);
  const char *route = dibba_http_req_route(req);
  /* Requests that matched no route never reached a handler or the authenticator: nothing to attribute. */
  if (route == NULL || is_read_only(method))
    return;
  const dibba_http_principal_t *p = dibba_http_req_principal(req);
  const char *user = dibba_http_req_subject(req);
  char st[16], ts[40];
  snprintf(st, sizeof st, "%d", status);
  dibba_time_format_ms(dibba_now_ms(), ts, sizeof ts);
  const char *argv[] = {
      "XADD",       api->audit_key,
      "MAXLEN",     "~",
      AUDIT_MAXLEN, "*",
      "user",       user ? user : "-",
      "role",       p ? dibba_http_role_name(p->role) : "-",
      "method",     method,
      "route",      route,
      "target",     dibba_http_req_path(req),
      "status",     st,
      "remote",     dibba_http_req_remote(req),
      "request_id", dibba_http_req_id(req),
      "time",       ts,
  };
  if (api->redis == NULL) {
    api->audit_errors++;
    return;
  }
  /* Queued while Redis reconnects (bounded, with the command timeout), so a short outage loses nothing. */
  dibba_redis_cmd_opts_t o = {.flags = DIBBA_REDIS_QUEUE};
  int r = dibba_redis_command_argv(api->redis, on_xadd, api, &o, (int)(sizeof argv / sizeof argv[0]), argv, NULL);
  if (r < 0) {
    api->audit_errors++;
    dibba_log_warn("audit",
                   json_pack("{s:s,s:s,s:s}", "error", dibba_redis_strerror(r), "route", route, "method", method),
                   "audit record lost");
  }
}
