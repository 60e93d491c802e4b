/* SPDX-License-Identifier: Apache-2.0 */
/* dibba-api's AWS routes: strict validation of launch requests, a liveness check of the aws role, and task
 * submission to it (create_worker_nodes, terminate_worker_node, get_ec2_instances); the namespace mirror read.
 *
 * Secrets: the API takes no AWS credential (they live only in the aws workers' config); an unknown body field,
 * such as one carrying a credential, is rejected with a 422 that names the field and never echoes its value.
 * bootstrap.routing_key is a caller's secret: it travels only inside the task envelope's args (MACed, not
 * encrypted) on the aws role stream, whose entry is deleted once the result is stored. The task record holds
 * no args, no error or log line here repeats a value, and the audit stream never sees a body. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "dibba/alloc.h"
#include "dibba/error.h"
#include "dibba/log.h"
#include "dibba/pbjson.h"
#include "dibba/route.h"
#include "dibba/task_queue.h"
#include "dibba/time.h"

#include "aws.pb-c.h"
#include "aws.h"

#define AWS_ROLE "aws"
#define NS_MAX 63
#define COUNT_MAX 100
#define SG_MAX 16
#define TAGS_MAX 40
#define USER_DATA_MAX 16384 /* EC2's limit before base64 */
#define BOOTSTRAP_MAX 2048  /* the plugin's cap on each bootstrap value */
#define INSTANCES_MAX 10000 /* entries read back from one namespace hash */

struct api_aws_s {
  dibba_redis_t *r;
  dibba_task_key_t key;
  char *prefix;
  char *nodes_key; /* <prefix>nodes */
  int64_t hb_ms;
  unsigned inflight; /* Redis callbacks still to come; the last one frees a closed api_aws_t */
  int closed;
};

/* 1 if any host whose heartbeat is fresh (ZSCORE >= ARGV[1]) lists role ARGV[3] in its node hash's "roles"
 * ("aws", "control,aws" or "control aws", as worker.roles is written). */
static const char lua_role_alive[] = "local hosts = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf')\n"
                                     "for _, h in ipairs(hosts) do\n"
                                     "  local roles = redis.call('HGET', ARGV[2] .. 'node:' .. h, 'roles')\n"
                                     "  if roles then\n"
                                     "    for r in string.gmatch(roles, '[^, ]+') do\n"
                                     "      if r == ARGV[3] then return 1 end\n"
                                     "    end\n"
                                     "  end\n"
                                     "end\n"
                                     "return 0\n";

static void aws_free(api_aws_t *a) {
  dibba_task_key_free(&a->key);
  free(a->prefix);
  free(a->nodes_key);
  free(a);
}

static void op_unhold(api_aws_t *a) {
  a->inflight--;
  if (a->closed && a->inflight == 0)
    aws_free(a);
}

/* ---- 422s in FastAPI's shape; values are never echoed ---- */

static void reject(dibba_http_req_t *req, json_t *loc, const char *msg, const char *type) {
  dibba_http_respond_json(req, 422, json_pack("{s:[{s:o, s:s, s:s}]}", "detail", "loc", loc, "msg", msg, "type", type));
}

/* loc ["body", field] or ["body", field, sub] (sub NULL: none). A caller's key is cut at 64 bytes. */
static json_t *loc2(const char *where, const char *field, const char *sub) {
  json_t *loc = json_pack("[s, s%]", where, field, strnlen(field, 64));
  if (sub)
    json_array_append_new(loc, json_stringn(sub, strnlen(sub, 64)));
  return loc;
}

static int in_list(const char *k, const char *const *names, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (strcmp(k, names[i]) == 0)
      return 1;
  return 0;
}

/* The first key of o that is not in names: 422 extra_forbidden naming it. parent NULL: a top-level field. */
static int reject_unknown(dibba_http_req_t *req, const json_t *o, const char *parent, const char *const *names,
                          size_t n) {
  const char *k;
  json_t *v;
  json_object_foreach((json_t *)o, k, v) {
    (void)v;
    if (!in_list(k, names, n)) {
      reject(req, parent ? loc2("body", parent, k) : loc2("body", k, NULL), "extra fields not permitted",
             "extra_forbidden");
      return -1;
    }
  }
  return 0;
}

/* ---- character classes (no locale, ASCII only) ---- */

static int is_lower_alnum(int c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }
static int is_hex(int c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); }

/* [a-z0-9-]{1,63} */
static int valid_namespace(const char *s) {
  size_t n = strnlen(s, NS_MAX + 1);
  if (n == 0 || n > NS_MAX)
    return 0;
  for (size_t i = 0; i < n; i++)
    if (!is_lower_alnum((unsigned char)s[i]) && s[i] != '-')
      return 0;
  return 1;
}

/* <prefix>-<hex>, with 8 to 17 hex digits (EC2's short and long ids). */
static int valid_ec2_id(const char *s, const char *prefix) {
  size_t pl = strlen(prefix), n = strnlen(s, pl + 18);
  if (n < pl + 8 || n > pl + 17 || strncmp(s, prefix, pl) != 0)
    return 0;
  for (size_t i = pl; i < n; i++)
    if (!is_hex((unsigned char)s[i]))
      return 0;
  return 1;
}

/* family.size: [a-z0-9][a-z0-9-]*\.[a-z0-9]+ ("t3.micro", "u-6tb1.metal"), at most 64 bytes. */
static int valid_instance_type(const char *s) {
  size_t n = strnlen(s, 65), dot = 0, dots = 0;
  if (n == 0 || n > 64 || !is_lower_alnum((unsigned char)s[0]))
    return 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] == '.') {
      dot = i;
      dots++;
    } else if (!is_lower_alnum((unsigned char)s[i]) && !(s[i] == '-' && dots == 0)) {
      return 0;
    }
  }
  return dots == 1 && dot > 0 && dot + 1 < n;
}

/* Printable ASCII (space allowed when spaces), 1..max bytes. */
static int printable(const char *s, size_t max, int spaces) {
  size_t n = strnlen(s, max + 1);
  if (n == 0 || n > max)
    return 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c < (spaces ? 0x20 : 0x21) || c > 0x7e)
      return 0;
  }
  return 1;
}

/* IamInstanceProfile.Name: [A-Za-z0-9+=,.@_-]{1,128}. */
static int valid_profile(const char *s) {
  size_t n = strnlen(s, 129);
  if (n == 0 || n > 128)
    return 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (!((c >= 'A' && c <= 'Z') || is_lower_alnum(c) || strchr("+=,.@_-", c)))
      return 0;
  }
  return 1;
}

/* What the plugin can write into its cloud-config and environment file as is (no quoting needed). */
static int bootstrap_safe(const char *s, size_t min) {
  size_t n = strnlen(s, BOOTSTRAP_MAX + 1);
  if (n < min || n > BOOTSTRAP_MAX)
    return 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c <= ' ' || c >= 0x7f || c == '"' || c == '\'' || c == '\\' || c == '`' || c == '$')
      return 0;
  }
  return 1;
}

/* A string field: -1 after a 422 (wrong type or missing when required), 0 absent, 1 present in *out. */
static int get_str(dibba_http_req_t *req, const json_t *b, const char *parent, const char *name, int required,
                   const char **out) {
  const json_t *v = json_object_get(b, name);
  *out = NULL;
  if (v == NULL || (json_is_null(v) && !required)) {
    if (!required)
      return 0;
    reject(req, parent ? loc2("body", parent, name) : loc2("body", name, NULL), "field required", "missing");
    return -1;
  }
  if (!json_is_string(v)) {
    reject(req, parent ? loc2("body", parent, name) : loc2("body", name, NULL), "must be a string", "type_error");
    return -1;
  }
  *out = json_string_value(v);
  return 1;
}

static int get_count(dibba_http_req_t *req, const json_t *b, const char *name, json_int_t *out) {
  const json_t *v = json_object_get(b, name);
  if (v == NULL || json_is_null(v)) {
    reject(req, loc2("body", name, NULL), "field required", "missing");
    return -1;
  }
  if (!json_is_integer(v)) {
    reject(req, loc2("body", name, NULL), "must be an integer", "type_error");
    return -1;
  }
  *out = json_integer_value(v);
  if (*out < 1 || *out > COUNT_MAX) {
    reject(req, loc2("body", name, NULL), "must be between 1 and 100", "out_of_range");
    return -1;
  }
  return 0;
}

/* ---- POST /create-instances: the body becomes a dibba.v1.Ec2LaunchSpec, field by field ---- */

static const char *const create_fields[] = {
    "instance_type", "ami_id",    "key_name", "security_group_ids",   "subnet_id", "namespace", "min_count",
    "max_count",     "user_data", "tags",     "iam_instance_profile", "bootstrap"};
static const char *const bootstrap_fields[] = {"redis_url", "routing_key"};

static int check_sgs(dibba_http_req_t *req, const json_t *b, json_t *args) {
  const json_t *v = json_object_get(b, "security_group_ids");
  if (v == NULL || json_is_null(v)) {
    reject(req, loc2("body", "security_group_ids", NULL), "field required", "missing");
    return -1;
  }
  if (!json_is_array(v)) {
    reject(req, loc2("body", "security_group_ids", NULL), "must be a list of strings", "type_error");
    return -1;
  }
  size_t n = json_array_size(v);
  if (n == 0 || n > SG_MAX) {
    reject(req, loc2("body", "security_group_ids", NULL), "must hold 1 to 16 security group ids", "value_error");
    return -1;
  }
  json_t *out = json_array();
  for (size_t i = 0; i < n; i++) {
    const char *s = json_string_value(json_array_get(v, i));
    const char *why = s == NULL ? "must be a string" : !valid_ec2_id(s, "sg-") ? "must match sg-[0-9a-f]{8,17}" : NULL;
    for (size_t k = 0; why == NULL && k < i; k++)
      if (strcmp(s, json_string_value(json_array_get(v, k))) == 0)
        why = "duplicate security group id";
    if (why) {
      json_decref(out);
      reject(req, json_pack("[s, s, I]", "body", "security_group_ids", (json_int_t)i), why,
             s == NULL ? "type_error" : "value_error");
      return -1;
    }
    json_array_append_new(out, json_string(s));
  }
  json_object_set_new(args, "security_group_ids", out);
  return 0;
}

static int check_tags(dibba_http_req_t *req, const json_t *b, json_t *args) {
  const json_t *v = json_object_get(b, "tags");
  if (v == NULL || json_is_null(v))
    return 0;
  if (!json_is_object(v)) {
    reject(req, loc2("body", "tags", NULL), "must be an object of string to string", "type_error");
    return -1;
  }
  if (json_object_size(v) > TAGS_MAX) {
    reject(req, loc2("body", "tags", NULL), "at most 40 tags", "value_error");
    return -1;
  }
  json_t *out = json_object();
  const char *k;
  json_t *val;
  json_object_foreach((json_t *)v, k, val) {
    const char *s = json_string_value(val);
    const char *why = NULL, *type = "value_error";
    if (!printable(k, 128, 0))
      why = "tag keys are 1 to 128 printable ASCII characters without spaces";
    else if (strncasecmp(k, "aws:", 4) == 0 || strcmp(k, "Namespace") == 0 || strcmp(k, "dibba:managed") == 0)
      why = "reserved tag key (aws:*, Namespace, dibba:managed)";
    else if (s == NULL)
      why = "tag values must be strings", type = "type_error";
    else if (s[0] && !printable(s, 256, 1))
      why = "tag values are at most 256 printable ASCII characters";
    if (why) {
      json_decref(out);
      reject(req, loc2("body", "tags", k), why, type);
      return -1;
    }
    json_object_set_new(out, k, json_string(s));
  }
  json_object_set_new(args, "tags", out);
  return 0;
}

static int check_bootstrap(dibba_http_req_t *req, const json_t *b, json_t *args) {
  const json_t *v = json_object_get(b, "bootstrap");
  const char *url, *key;
  if (v == NULL || json_is_null(v))
    return 0;
  if (!json_is_object(v)) {
    reject(req, loc2("body", "bootstrap", NULL), "must be an object {redis_url, routing_key}", "type_error");
    return -1;
  }
  if (reject_unknown(req, v, "bootstrap", bootstrap_fields, 2) < 0 ||
      get_str(req, v, "bootstrap", "redis_url", 1, &url) < 0 ||
      get_str(req, v, "bootstrap", "routing_key", 1, &key) < 0)
    return -1;
  if ((strncmp(url, "redis://", 8) != 0 && strncmp(url, "rediss://", 9) != 0) || !bootstrap_safe(url, 9)) {
    reject(req, loc2("body", "bootstrap", "redis_url"),
           "must be a redis:// or rediss:// URL of at most 2048 printable characters without spaces, quotes, "
           "'\\', '`' or '$'",
           "value_error");
    return -1;
  }
  if (!bootstrap_safe(key, DIBBA_SECRET_MIN_BYTES)) {
    reject(req, loc2("body", "bootstrap", "routing_key"),
           "must be 16 to 2048 printable characters without spaces, quotes, '\\', '`' or '$'", "value_error");
    return -1;
  }
  json_object_set_new(args, "bootstrap", json_pack("{s:s, s:s}", "redis_url", url, "routing_key", key));
  return 0;
}

/* Validate the body into the launch spec's JSON (proto names); NULL after a 422. */
static json_t *create_args(dibba_http_req_t *req) {
  const json_t *b = dibba_http_req_json(req);
  const char *s;
  json_int_t min = 0, max = 0;
  if (!json_is_object(b)) {
    reject(req, json_pack("[s]", "body"), "must be a JSON object", "type_error");
    return NULL;
  }
  if (reject_unknown(req, b, NULL, create_fields, sizeof create_fields / sizeof create_fields[0]) < 0)
    return NULL;
  json_t *args = json_object();
  /* Required fields in the order of the seed's model. */
  if (get_str(req, b, NULL, "instance_type", 1, &s) < 0)
    goto fail;
  if (!valid_instance_type(s)) {
    reject(req, loc2("body", "instance_type", NULL), "must look like t3.micro ([a-z0-9-]+.[a-z0-9]+)", "value_error");
    goto fail;
  }
  json_object_set_new(args, "instance_type", json_string(s));
  if (get_str(req, b, NULL, "ami_id", 1, &s) < 0)
    goto fail;
  if (!valid_ec2_id(s, "ami-")) {
    reject(req, loc2("body", "ami_id", NULL), "must match ami-[0-9a-f]{8,17}", "value_error");
    goto fail;
  }
  json_object_set_new(args, "ami_id", json_string(s));
  if (get_str(req, b, NULL, "key_name", 1, &s) < 0)
    goto fail;
  if (!printable(s, 255, 1)) {
    reject(req, loc2("body", "key_name", NULL), "must be 1 to 255 printable ASCII characters", "value_error");
    goto fail;
  }
  json_object_set_new(args, "key_name", json_string(s));
  if (check_sgs(req, b, args) < 0)
    goto fail;
  if (get_str(req, b, NULL, "subnet_id", 1, &s) < 0)
    goto fail;
  if (!valid_ec2_id(s, "subnet-")) {
    reject(req, loc2("body", "subnet_id", NULL), "must match subnet-[0-9a-f]{8,17}", "value_error");
    goto fail;
  }
  json_object_set_new(args, "subnet_id", json_string(s));
  if (get_str(req, b, NULL, "namespace", 1, &s) < 0)
    goto fail;
  if (!valid_namespace(s)) {
    reject(req, loc2("body", "namespace", NULL), "must match [a-z0-9-]{1,63}", "value_error");
    goto fail;
  }
  json_object_set_new(args, "namespace", json_string(s));
  if (get_count(req, b, "min_count", &min) < 0 || get_count(req, b, "max_count", &max) < 0)
    goto fail;
  if (min > max) {
    reject(req, loc2("body", "max_count", NULL), "must be at least min_count", "value_error");
    goto fail;
  }
  json_object_set_new(args, "min_count", json_integer(min));
  json_object_set_new(args, "max_count", json_integer(max));
  /* Optional fields. */
  int rc = get_str(req, b, NULL, "user_data", 0, &s);
  if (rc < 0)
    goto fail;
  if (rc > 0) {
    if (strlen(s) > USER_DATA_MAX) {
      reject(req, loc2("body", "user_data", NULL), "at most 16384 bytes", "too_long");
      goto fail;
    }
    if (s[0])
      json_object_set_new(args, "user_data", json_string(s));
  }
  if (check_tags(req, b, args) < 0)
    goto fail;
  if ((rc = get_str(req, b, NULL, "iam_instance_profile", 0, &s)) < 0)
    goto fail;
  if (rc > 0) {
    if (!valid_profile(s)) {
      reject(req, loc2("body", "iam_instance_profile", NULL), "must match [A-Za-z0-9+=,.@_-]{1,128}", "value_error");
      goto fail;
    }
    json_object_set_new(args, "iam_instance_profile", json_string(s));
  }
  if (check_bootstrap(req, b, args) < 0)
    goto fail;
  if (json_object_get(args, "user_data") && json_object_get(args, "bootstrap")) {
    reject(req, loc2("body", "bootstrap", NULL), "user_data and bootstrap are exclusive", "value_error");
    goto fail;
  }
  return args;
fail:
  json_decref(args);
  return NULL;
}

/* Overwrite the routing key's copies before they are freed: the envelope is the only place it may live. */
static void wipe_args_json(json_t *args) {
  json_t *key = json_object_get(json_object_get(args, "bootstrap"), "routing_key");
  if (json_is_string(key))
    explicit_bzero((char *)json_string_value(key), json_string_length(key));
}

static void wipe_launch(ProtobufCMessage *m) {
  if (m && m->descriptor == &dibba__v1__ec2_launch_spec__descriptor) {
    Dibba__V1__Ec2LaunchSpec *a = (Dibba__V1__Ec2LaunchSpec *)m;
    if (a->bootstrap && a->bootstrap->routing_key)
      explicit_bzero(a->bootstrap->routing_key, strlen(a->bootstrap->routing_key));
  }
}

/* ---- liveness of the aws role, then submit ---- */

typedef struct op_s {
  api_aws_t *a;
  dibba_http_req_t *req;
  const char *task; /* static task name */
  ProtobufCMessage *msg;
  char ns[NS_MAX + 1];
} op_t;

static void op_free(op_t *q) {
  wipe_launch(q->msg);
  dibba_pbjson_message_free(q->msg);
  dibba_http_req_unref(q->req);
  api_aws_t *a = q->a;
  free(q);
  op_unhold(a);
}

static void submitted(int status, const char *id, void *data) {
  op_t *q = data;
  if (status < 0) {
    dibba_http_respond_error(q->req, 503, "task store unavailable");
  } else {
    const char *user = dibba_http_req_subject(q->req);
    dibba_log_info("aws",
                   json_pack("{s:s, s:s, s:s, s:s}", "task_id", id, "task", q->task, "namespace", q->ns, "user",
                             user ? user : "-"),
                   "aws task submitted");
    dibba_http_respond_json(q->req, 200,
                            json_pack("{s:s, s:s}", "message", "Task submitted successfully", "task_id", id));
  }
  op_free(q);
}

static void role_checked(dibba_redis_t *r, int status, redisReply *reply, void *data) {
  op_t *q = data;
  api_aws_t *a = q->a;
  long long alive = 0;
  char id[DIBBA_ID_LEN + 1], err[256];
  (void)r;
  if (status < 0 || dibba_redis_reply_int(reply, &alive) < 0) {
    dibba_http_respond_error(q->req, 503, "task store unavailable");
    op_free(q);
    return;
  }
  if (!alive) {
    dibba_http_respond_error(q->req, 503, "no worker serves the aws role");
    op_free(q);
    return;
  }
  if (a->closed) {
    dibba_http_respond_error(q->req, 503, "shutting down");
    op_free(q);
    return;
  }
  dibba_task_submit_t s = {.name = q->task, .role = AWS_ROLE, .args_msg = q->msg};
  int rc = dibba_task_submit(a->r, a->prefix, &a->key, &s, submitted, q, id, err, sizeof err);
  /* The envelope is sealed (and holds its own copy of the args): the message can go now. */
  wipe_launch(q->msg);
  dibba_pbjson_message_free(q->msg);
  q->msg = NULL;
  if (rc < 0) {
    /* err names what was wrong, never an args value */
    dibba_log_warn("aws", json_pack("{s:s, s:s}", "task", q->task, "error", err), "aws task not submitted");
    if (rc == -E2BIG)
      dibba_http_respond_422(q->req, "body", "the request is too large for one task", "too_long");
    else
      dibba_http_respond_error(q->req, 503, "task store unavailable");
    op_free(q);
  }
}

/* Takes msg (may be NULL for no args). Responds in every case. */
static void submit_to_role(api_aws_t *a, dibba_http_req_t *req, const char *task, ProtobufCMessage *msg,
                           const char *ns) {
  char since[24];
  op_t *q = dibba_xcalloc(1, sizeof *q);
  q->a = a;
  q->req = req;
  q->task = task;
  q->msg = msg;
  snprintf(q->ns, sizeof q->ns, "%s", ns ? ns : "");
  dibba_http_req_ref(req);
  a->inflight++;
  snprintf(since, sizeof since, "%lld", (long long)(dibba_now_ms() - 3 * a->hb_ms));
  const char *argv[] = {"EVAL", lua_role_alive, "1", a->nodes_key, since, a->prefix, AWS_ROLE};
  if (dibba_redis_command_argv(a->r, role_checked, q, NULL, 7, argv, NULL) < 0) {
    dibba_http_respond_error(req, 503, "task store unavailable");
    op_free(q);
  }
}

/* JSON (proto names) -> message; a failure here is a bug in the checks above, so it is a 422 on the body. */
static ProtobufCMessage *to_message(dibba_http_req_t *req, const json_t *args, const ProtobufCMessageDescriptor *d) {
  ProtobufCMessage *m = NULL;
  dibba_pbjson_error_t pe;
  memset(&pe, 0, sizeof pe);
  if (dibba_pbjson_to_message(args, d, NULL, &m, &pe) < 0) {
    json_t *loc = json_pack("[s]", "body");
    if (pe.loc)
      json_array_extend(loc, pe.loc);
    reject(req, loc, pe.msg, pe.type ? pe.type : "value_error");
    dibba_pbjson_error_clear(&pe);
    return NULL;
  }
  return m;
}

static void h_create(dibba_http_req_t *req, void *data) {
  json_t *args = create_args(req);
  if (args == NULL)
    return;
  char ns[NS_MAX + 1];
  snprintf(ns, sizeof ns, "%s", json_string_value(json_object_get(args, "namespace")));
  ProtobufCMessage *m = to_message(req, args, &dibba__v1__ec2_launch_spec__descriptor);
  wipe_args_json(args);
  json_decref(args);
  if (m)
    submit_to_role(data, req, "create_worker_nodes", m, ns);
}

static const char *const ns_fields[] = {"namespace"};

static void h_terminate(dibba_http_req_t *req, void *data) {
  const json_t *b = dibba_http_req_json(req);
  const char *ns;
  if (!json_is_object(b)) {
    reject(req, json_pack("[s]", "body"), "must be a JSON object", "type_error");
    return;
  }
  if (reject_unknown(req, b, NULL, ns_fields, 1) < 0 || get_str(req, b, NULL, "namespace", 1, &ns) < 0)
    return;
  if (!valid_namespace(ns)) {
    reject(req, loc2("body", "namespace", NULL), "must match [a-z0-9-]{1,63}", "value_error");
    return;
  }
  json_t *args = json_pack("{s:s}", "namespace", ns);
  ProtobufCMessage *m = to_message(req, args, &dibba__v1__ec2_namespace__descriptor);
  json_decref(args);
  if (m)
    submit_to_role(data, req, "terminate_worker_node", m, ns);
}

/* ?namespace= (optional): one namespace's instances, else every instance Dibba manages. */
static void h_ec2_instances(dibba_http_req_t *req, void *data) {
  json_t *q = NULL;
  const char *query = dibba_http_req_query(req);
  if (dibba_http_parse_form(query, strlen(query), 4096, &q) < 0) {
    dibba_http_respond_422(req, "query", "malformed query string", "value_error");
    return;
  }
  const char *k;
  json_t *v;
  json_object_foreach(q, k, v) {
    (void)v;
    if (strcmp(k, "namespace") != 0) {
      dibba_http_respond_json(req, 422,
                              json_pack("{s:[{s:[s, s%], s:s, s:s}]}", "detail", "loc", "query", k, strnlen(k, 64),
                                        "msg", "extra fields not permitted", "type", "extra_forbidden"));
      json_decref(q);
      return;
    }
  }
  const char *ns = json_string_value(json_object_get(q, "namespace"));
  if (ns && ns[0] && !valid_namespace(ns)) {
    json_decref(q);
    reject(req, json_pack("[s, s]", "query", "namespace"), "must match [a-z0-9-]{1,63}", "value_error");
    return;
  }
  json_t *args = json_pack("{s:s}", "namespace", ns ? ns : "");
  ProtobufCMessage *m = to_message(req, args, &dibba__v1__ec2_namespace__descriptor);
  json_decref(args);
  if (m)
    submit_to_role(data, req, "get_ec2_instances", m, ns ? ns : "");
  json_decref(q);
}

/* ---- GET /v1/namespaces/{ns}/instances: the plugin's mirror in Redis ---- */

typedef struct read_s {
  api_aws_t *a;
  dibba_http_req_t *req;
  char ns[NS_MAX + 1];
} read_t;

static int by_id(const void *x, const void *y) {
  const char *a = json_string_value(json_object_get(*(json_t *const *)x, "instance_id"));
  const char *b = json_string_value(json_object_get(*(json_t *const *)y, "instance_id"));
  return strcmp(a ? a : "", b ? b : "");
}

static void ns_read(dibba_redis_t *r, int status, redisReply *reply, void *data) {
  read_t *q = data;
  (void)r;
  if (status < 0 || reply == NULL || reply->type != REDIS_REPLY_ARRAY) {
    dibba_http_respond_error(q->req, 503, "instance store unavailable");
    goto out;
  }
  size_t n = reply->elements / 2 > INSTANCES_MAX ? INSTANCES_MAX : reply->elements / 2;
  json_t **items = dibba_xcalloc(n ? n : 1, sizeof *items);
  for (size_t i = 0; i < n; i++) {
    const redisReply *kr = reply->element[2 * i], *vr = reply->element[2 * i + 1];
    json_t *o = vr->type == REDIS_REPLY_STRING ? json_loadb(vr->str, vr->len, 0, NULL) : NULL;
    if (!json_is_object(o)) {
      json_decref(o);
      o = json_object(); /* unreadable entry: the id alone */
    }
    json_object_set_new(o, "instance_id", json_stringn_nocheck(kr->str ? kr->str : "", kr->str ? kr->len : 0));
    items[i] = o;
  }
  qsort(items, n, sizeof *items, by_id);
  json_t *arr = json_array();
  for (size_t i = 0; i < n; i++)
    json_array_append_new(arr, items[i]);
  free(items);
  dibba_http_respond_json(q->req, 200, json_pack("{s:s, s:o}", "namespace", q->ns, "instances", arr));
out:
  dibba_http_req_unref(q->req);
  api_aws_t *a = q->a;
  free(q);
  op_unhold(a);
}

static void h_ns_instances(dibba_http_req_t *req, void *data) {
  api_aws_t *a = data;
  const char *ns = dibba_http_req_param(req, "ns");
  if (ns == NULL || !valid_namespace(ns)) {
    reject(req, json_pack("[s, s]", "path", "ns"), "must match [a-z0-9-]{1,63}", "value_error");
    return;
  }
  read_t *q = dibba_xcalloc(1, sizeof *q);
  q->a = a;
  q->req = req;
  snprintf(q->ns, sizeof q->ns, "%s", ns);
  dibba_http_req_ref(req);
  a->inflight++;
  if (dibba_redis_command(a->r, ns_read, q, NULL, "HGETALL %sns:%s:instances", a->prefix, ns) < 0) {
    dibba_http_respond_error(req, 503, "instance store unavailable");
    dibba_http_req_unref(req);
    free(q);
    op_unhold(a);
  }
}

/* ---- life cycle ---- */

static const char create_schema[] =
    "{\"type\":\"object\",\"additionalProperties\":false,"
    "\"required\":[\"instance_type\",\"ami_id\",\"key_name\",\"security_group_ids\",\"subnet_id\",\"namespace\","
    "\"min_count\",\"max_count\"],"
    "\"properties\":{"
    "\"instance_type\":{\"type\":\"string\",\"pattern\":\"^[a-z0-9][a-z0-9-]*\\\\.[a-z0-9]+$\",\"maxLength\":64},"
    "\"ami_id\":{\"type\":\"string\",\"pattern\":\"^ami-[0-9a-f]{8,17}$\"},"
    "\"key_name\":{\"type\":\"string\",\"minLength\":1,\"maxLength\":255},"
    "\"security_group_ids\":{\"type\":\"array\",\"minItems\":1,\"maxItems\":16,\"uniqueItems\":true,"
    "\"items\":{\"type\":\"string\",\"pattern\":\"^sg-[0-9a-f]{8,17}$\"}},"
    "\"subnet_id\":{\"type\":\"string\",\"pattern\":\"^subnet-[0-9a-f]{8,17}$\"},"
    "\"namespace\":{\"type\":\"string\",\"pattern\":\"^[a-z0-9-]{1,63}$\"},"
    "\"min_count\":{\"type\":\"integer\",\"minimum\":1,\"maximum\":100},"
    "\"max_count\":{\"type\":\"integer\",\"minimum\":1,\"maximum\":100},"
    "\"user_data\":{\"type\":\"string\",\"maxLength\":16384},"
    "\"tags\":{\"type\":\"object\",\"maxProperties\":40,\"additionalProperties\":{\"type\":\"string\","
    "\"maxLength\":256}},"
    "\"iam_instance_profile\":{\"type\":\"string\",\"pattern\":\"^[A-Za-z0-9+=,.@_-]{1,128}$\"},"
    "\"bootstrap\":{\"type\":\"object\",\"additionalProperties\":false,\"required\":[\"redis_url\",\"routing_key\"],"
    "\"properties\":{\"redis_url\":{\"type\":\"string\"},\"routing_key\":{\"type\":\"string\",\"minLength\":16,"
    "\"writeOnly\":true}}}}}";
static const char ns_schema[] =
    "{\"type\":\"object\",\"additionalProperties\":false,\"required\":[\"namespace\"],"
    "\"properties\":{\"namespace\":{\"type\":\"string\",\"pattern\":\"^[a-z0-9-]{1,63}$\"}}}";
static const char submitted_schema[] =
    "{\"type\":\"object\",\"properties\":{\"message\":{\"type\":\"string\"},\"task_id\":{\"type\":\"string\"}}}";

int api_aws_new(const dibba_config_t *cfg, dibba_redis_t *redis, dibba_http_router_t *router,
                const uint8_t *routing_key, size_t keylen, api_aws_t **out, char *err, size_t errlen) {
  const char *prefix;
  int64_t hb;
  int rc;
  *out = NULL;
  if ((rc = dibba_config_str(cfg, "redis.prefix", "dibba:", &prefix, err, errlen)) < 0 ||
      (rc = dibba_config_int(cfg, "worker.heartbeat_seconds", 5, 1, 3600, &hb, err, errlen)) < 0)
    return rc;
  api_aws_t *a = dibba_xcalloc(1, sizeof *a);
  a->r = redis;
  a->prefix = dibba_xstrdup(prefix);
  a->nodes_key = dibba_xasprintf("%snodes", prefix);
  a->hb_ms = hb * 1000;
  if ((rc = dibba_task_key_init(&a->key, routing_key, keylen)) < 0) {
    dibba_error_set(err, errlen, rc, "task.routing_key: unusable");
    aws_free(a);
    return rc;
  }
  const dibba_http_route_t routes[] = {
      {.method = "POST",
       .pattern = "/create-instances",
       .handler = h_create,
       .data = a,
       .role = DIBBA_ROLE_ADMIN,
       .body = DIBBA_HTTP_BODY_JSON,
       .request_schema = create_schema,
       .response_schema = submitted_schema,
       .summary = "Launch EC2 worker instances in a namespace (task create_worker_nodes on the aws role)"},
      {.method = "POST",
       .pattern = "/terminate-namespace",
       .handler = h_terminate,
       .data = a,
       .role = DIBBA_ROLE_ADMIN,
       .body = DIBBA_HTTP_BODY_JSON,
       .request_schema = ns_schema,
       .response_schema = submitted_schema,
       .summary = "Terminate every EC2 instance of a namespace (task terminate_worker_node on the aws role)"},
      {.method = "GET",
       .pattern = "/v1/namespaces/{ns}/instances",
       .handler = h_ns_instances,
       .data = a,
       .role = DIBBA_ROLE_ADMIN,
       .summary = "A namespace's EC2 instances as the aws workers recorded them in Redis"},
      {.method = "GET",
       .pattern = "/aws/instances",
       .handler = h_ec2_instances,
       .data = a,
       .role = DIBBA_ROLE_ADMIN,
       .response_schema = submitted_schema,
       .summary = "Ask EC2 for the instances Dibba manages, optionally ?namespace= (task get_ec2_instances)"},
  };
  for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
    if ((rc = dibba_http_router_add(router, &routes[i])) < 0) {
      /* Routes already added point at a: a failed start stops the daemon before any request is served. */
      dibba_error_set(err, errlen, rc, "route %s %s", routes[i].method, routes[i].pattern);
      aws_free(a);
      return rc;
    }
  *out = a;
  return 0;
}

void api_aws_close(api_aws_t *a) {
  if (a == NULL || a->closed)
    return;
  a->closed = 1;
  if (a->inflight == 0)
    aws_free(a);
}
