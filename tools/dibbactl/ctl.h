/* SPDX-License-Identifier: Apache-2.0 */
/* dibbactl's private declarations: exit codes, the invocation context, HTTP calls, config, output, manifests. */
#ifndef DIBBACTL_CTL_H
#define DIBBACTL_CTL_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

/* Exit codes; stable, documented in `dibbactl --help` and README. */
enum {
  CTL_OK = 0,
  CTL_EFAIL = 1,     /* the server answered with another error, or a local failure */
  CTL_EUSAGE = 2,    /* bad command line */
  CTL_EAUTH = 3,     /* not logged in, 401, 403 */
  CTL_ENOTFOUND = 4, /* 404 of an object (not of a route) */
  CTL_EINVALID = 5,  /* 409, 422, or a manifest that does not parse or validate */
  CTL_EUNAVAIL = 6,  /* connection failure, timeout, 502/503/504 */
};

/* Caps on everything read. */
#define CTL_RESPONSE_MAX (16u << 20) /* one HTTP response body */
#define CTL_MANIFEST_MAX (1u << 20)  /* apply -f / instances create -f */
#define CTL_CONFIG_MAX (64u << 10)   /* config.json, credentials.json */
#define CTL_PASSWORD_MAX 1024
#define CTL_WS_MESSAGE_MAX (1u << 20)

typedef enum { CTL_OUT_TABLE = 0, CTL_OUT_WIDE, CTL_OUT_JSON, CTL_OUT_NAME } ctl_output_t;

typedef struct ctl_s {
  char *server;           /* effective server URL, no trailing '/' */
  char *token;            /* bearer token issued by server, or NULL */
  char *user;             /* who the token belongs to, or NULL */
  int64_t token_expires;  /* epoch seconds, 0 if unknown */
  int token_other_server; /* a token exists, for another server */
  char *config_dir;       /* $XDG_CONFIG_HOME/dibba or ~/.config/dibba */
  ctl_output_t output;
  int output_set; /* -o given */
} ctl_t;

/* ---- messages (main.c) ---- */

/* "dibbactl: <msg>" on one line of stderr (control characters of msg are replaced). Returns code. */
int ctl_fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A usage error for command cmd: one line, then exit code 2. */
int ctl_usage(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A getopt_long failure (':' missing value, '?' unknown option) as a usage error. */
int ctl_opt_error(const char *cmd, int opt, char **argv);

/* ---- config and credentials (config.c) ---- */

/* Resolve the config directory, the server (flag > DIBBA_SERVER > config.json > credentials > default) and the
 * token for that server. Returns 0 or an exit code (message printed). */
int ctl_config_load(ctl_t *c, const char *server_flag);
/* Store server, user, token and expiry in credentials.json (dir 0700, file 0600, atomic). Returns 0 or exit code. */
int ctl_config_save_token(ctl_t *c, const char *user, const char *token, int64_t expires_at);
/* Remove the stored token. *had is set to 1 when there was one. Returns 0 or an exit code. */
int ctl_config_forget_token(ctl_t *c, int *had);
/* Path of the credentials file (owned by c's config_dir lifetime; new string). */
char *ctl_config_credentials_path(const ctl_t *c);
void ctl_config_free(ctl_t *c);

/* ---- HTTP (client.c) ---- */

typedef struct ctl_resp_s {
  long status;
  char *body; /* NUL-terminated, may be NULL when empty */
  size_t len;
  json_t *json; /* the body parsed, if it was JSON */
  char ctype[128];
} ctl_resp_t;

/* Flags of ctl_request. */
enum {
  CTL_REQ_NOAUTH = 1, /* do not require or send the token */
  CTL_REQ_STREAM = 2, /* write a 2xx body to stdout as it arrives, no total timeout */
  CTL_REQ_FORM = 4,   /* body is application/x-www-form-urlencoded (default: JSON) */
};

int ctl_http_init(void);
void ctl_http_cleanup(void);
/* One request to c->server + path. body may be NULL. On success (any HTTP status) returns 0 and fills resp;
 * on a connection failure or an over-cap response prints one line and returns the exit code. */
int ctl_request(ctl_t *c, const char *method, const char *path, const char *body, size_t len, int flags,
                ctl_resp_t *resp);
void ctl_resp_free(ctl_resp_t *r);
/* Map a non-2xx response to its exit code and print one line naming what was asked. 2xx returns 0. */
int ctl_resp_check(ctl_t *c, const ctl_resp_t *r, const char *method, const char *path, const char *what);
/* request + check + JSON body: *out gets a new reference (may be NULL for 204). Returns 0 or exit code. */
int ctl_call(ctl_t *c, const char *method, const char *path, json_t *body, const char *what, json_t **out);
/* A path segment or query value, percent-encoded (new string). */
char *ctl_esc(const char *s);
/* Require a token for c->server; prints "not logged in" and returns 3 otherwise. */
int ctl_need_token(ctl_t *c);

/* ---- WebSocket (ws.c) ---- */

typedef struct ctl_ws_s ctl_ws_t;
/* Open path on c->server as a WebSocket with the bearer token. Returns 0 or an exit code (message printed). */
int ctl_ws_open(ctl_t *c, const char *path, ctl_ws_t **out);
/* Wait up to timeout_ms (-1: forever) for the next text message. Returns 1 and *msg (owned by ws, valid until the
 * next call), 0 when the connection ended (*close_code: the server's code, 1005 if none, 1006 without a close
 * frame), -ETIMEDOUT (nothing printed), or a negated exit code (message printed). */
int ctl_ws_next(ctl_ws_t *ws, int timeout_ms, const char **msg, size_t *len, int *close_code, char *reason,
                size_t reasonlen);
void ctl_ws_close(ctl_ws_t *ws);

/* ---- output (output.c) ---- */

typedef struct ctl_table_s ctl_table_t;
/* A table with n columns named by the NULL-terminated header list. */
ctl_table_t *ctl_table_new(const char *const *header);
/* Append a cell to the current row (NULL prints "<none>"); ctl_table_row ends the row. */
void ctl_table_cell(ctl_table_t *t, const char *s);
void ctl_table_cellf(ctl_table_t *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void ctl_table_row(ctl_table_t *t);
/* Print (aligned) and free. */
void ctl_table_print(ctl_table_t *t);
/* Pretty JSON on stdout. */
void ctl_print_json(const json_t *j);
/* A describe view: keys and values as indented lines. */
void ctl_print_describe(const json_t *j);
/* The first present field among names (NULL-terminated) of obj, or NULL. */
json_t *ctl_jget(const json_t *obj, ...) __attribute__((sentinel));
/* A scalar as text into buf ("" for null/absent). */
const char *ctl_jstr(const json_t *v, char *buf, size_t len);
/* An age ("5s", "3m", "2h", "4d") from a time in epoch ms to now; "in 5m" for future times. */
void ctl_fmt_age(int64_t ms, char *buf, size_t len);
/* A time value (epoch s or ms number, or RFC 3339 string) as epoch ms; 0 if unknown. */
int64_t ctl_time_ms(const json_t *v);
/* Bytes as "7.6Gi". */
void ctl_fmt_bytes(double b, char *buf, size_t len);

/* ---- manifests (manifest.c) ---- */

/* Load a JSON or YAML document from path ("-": stdin) with CTL_MANIFEST_MAX. YAML is converted with the YAML 1.2
 * core schema; errors name the file, line and column. Returns 0 and *out, or an exit code (message printed). */
int ctl_manifest_load(const char *path, json_t **out);
/* The same for text already in memory (name is used in messages); json selects the JSON parser. */
int ctl_manifest_parse(const char *name, const char *text, size_t len, int json, json_t **out);

/* ---- commands ---- */

int ctl_cmd_login(ctl_t *c, int argc, char **argv);
int ctl_cmd_logout(ctl_t *c, int argc, char **argv);
int ctl_cmd_whoami(ctl_t *c, int argc, char **argv);
int ctl_cmd_users(ctl_t *c, int argc, char **argv);
int ctl_cmd_get(ctl_t *c, int argc, char **argv);
int ctl_cmd_describe(ctl_t *c, int argc, char **argv);
int ctl_cmd_apply(ctl_t *c, int argc, char **argv);
int ctl_cmd_delete(ctl_t *c, int argc, char **argv);
int ctl_cmd_logs(ctl_t *c, int argc, char **argv);
int ctl_cmd_exec(ctl_t *c, int argc, char **argv);
int ctl_cmd_run(ctl_t *c, int argc, char **argv);
int ctl_cmd_revoke(ctl_t *c, int argc, char **argv);
int ctl_cmd_watch(ctl_t *c, int argc, char **argv);
int ctl_cmd_instances(ctl_t *c, int argc, char **argv);
int ctl_cmd_schedules(ctl_t *c, int argc, char **argv);
/* Watch one task until it is final (shared by watch and run --watch). */
int ctl_watch_task(ctl_t *c, const char *id, int timeout_s);
/* Split "NS/NAME" or take ns_flag + NAME; default namespace "default". Returns 0 or a usage error code. */
int ctl_pod_ref(const char *cmd, const char *ns_flag, const char *arg, char **ns, char **name);

#endif
