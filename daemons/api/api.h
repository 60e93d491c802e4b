/* SPDX-License-Identifier: Apache-2.0 */
/* dibba-api's shared state: the HTTP server, the one Redis client, the users store, and the route modules. */
#ifndef DIBBA_API_H
#define DIBBA_API_H

#include <stdint.h>

#include <uv.h>

#include "dibba/auth.h"
#include "dibba/daemon.h"
#include "dibba/http.h"
#include "dibba/redis.h"

#include "aws.h"
#include "events.h"
#include "pods.h"
#include "schedules.h"
#include "tasks.h"
#include "ui.h"

typedef struct api_s {
  dibba_daemon_t *d;
  uv_loop_t *loop;
  dibba_redis_t *redis; /* the API's one Redis client; task routes share it */
  char *prefix;         /* redis.prefix ("dibba:") */
  char *audit_key;      /* <prefix>audit */
  dibba_http_router_t *router;
  dibba_http_server_t *http;
  /* tasks: the routing/MAC key, and the task and node routes (tasks.c) */
  char *routing_key;
  size_t routing_key_len;
  api_tasks_t *tasks;
  api_aws_t *aws;             /* aws.c: EC2 instance routes (admin) */
  api_schedules_t *schedules; /* schedules.c; freed once Redis is closed */
  api_ui_t *ui;               /* ui.c: the dashboard files under /ui */
  api_events_t *events;       /* events.c: the dashboards' live task stream, GET /v1/events */
  api_pods_t *pods;           /* pods.c: /v1/pods and POST /create-pods */
  /* auth */
  dibba_auth_jwt_t jwt;
  dibba_auth_users_t users;
  int users_ready;
  dibba_auth_rl_t *rl;
  uv_fs_event_t users_watch; /* on the users file's directory: saves replace the file by rename */
  uv_timer_t users_timer;    /* debounces watch events into one reload */
  char *users_base;          /* the users file's name inside that directory */
  unsigned saves_inflight;   /* our own async saves: a reload waits for them */
  /* lifecycle */
  int handles; /* embedded handles initialised (closed on stop) */
  int closes_pending;
  int stopping, finished;
  /* counters for /metrics */
  uint64_t logins_ok, login_failures, login_limited, audit_records, audit_errors, users_reloads, users_reload_errors;
} api_t;

/* auth_routes.c: the authenticator, POST /token, /v1/me, /v1/users*, the users file watch. */
int api_auth_init(api_t *api, char *err, size_t errlen);
int api_auth_routes(api_t *api, char *err, size_t errlen);
/* Re-read the users file (SIGHUP, watch). Keeps the old users on error. */
int api_users_reload(api_t *api, char *err, size_t errlen);
/* Close the watch handles (close callbacks count down api->closes_pending). */
void api_auth_stop(api_t *api);
/* Free the users store once nothing async uses it; returns 0 if still busy. */
int api_auth_free(api_t *api);
void api_auth_metrics(api_t *api, dibba_buf_t *out);

/* audit.c: the response hook that writes one XADD per mutating call. */
void api_audit_response(void *data, dibba_http_req_t *req, int status);

/* main.c: check whether every close finished and nothing async is left; then log and release the rest. */
void api_maybe_finish(api_t *api);

#endif
