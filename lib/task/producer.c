/* SPDX-License-Identifier: Apache-2.0 */
/* The task producer: seal an envelope and enqueue it with its record atomically; read records; revoke. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dibba/alloc.h"
#include "dibba/error.h"
#include "dibba/id.h"
#include "dibba/task_queue.h"
#include "dibba/time.h"
#include "task_int.h"

typedef struct submit_req_s {
  dibba_task_submit_cb cb;
  void *data;
  char id[DIBBA_ID_LEN + 1];
} submit_req_t;

static void submit_done(dibba_redis_t *r, int status, redisReply *reply, void *data) {
  submit_req_t *q = data;
  long long v = 0;
  (void)r;
  if (status == 0 && dibba_redis_reply_int(reply, &v) < 0)
    status = DIBBA_EPROTO;
  if (status == 0 && (v < 0 || v > 2))
    status = DIBBA_EPROTO;
  q->cb(status == 0 ? (v == 1 ? 0 : v == 2 ? 2 : 1) : status, q->id, q->data);
  free(q);
}

/* Put args into the envelope's oneof: the member whose message type is m's type. */
static int set_args_msg(Dibba__V1__TaskEnvelope *env, const ProtobufCMessage *m) {
  const ProtobufCMessageDescriptor *d = &dibba__v1__task_envelope__descriptor;
  for (unsigned i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *f = &d->fields[i];
    if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) && f->type == PROTOBUF_C_TYPE_MESSAGE &&
        f->descriptor == m->descriptor) {
      *(const ProtobufCMessage **)((char *)env + f->offset) = m;
      *(uint32_t *)((char *)env + f->quantifier_offset) = f->id;
      return 0;
    }
  }
  return -EINVAL;
}

int dibba_task_submit(dibba_redis_t *r, const char *prefix, const dibba_task_key_t *k, const dibba_task_submit_t *s,
                      dibba_task_submit_cb cb, void *data, char id_out[DIBBA_ID_LEN + 1], char *err, size_t errlen) {
  Dibba__V1__TaskEnvelope env = DIBBA__V1__TASK_ENVELOPE__INIT;
  dibba_envelope_wire_t w = {0};
  char route[DIBBA_ROUTE_LEN + 1], rkey[512], skey[512], dkey[512];
  char now_s[24], exp_s[24], retr_s[16], due_s[24], cttl_s[24];
  int rc;

  if (s->name == NULL || s->name[0] == '\0' || strlen(s->name) > DIBBA_TASK_NAME_MAX)
    return dibba_error_set(err, errlen, -EINVAL, "task name missing or too long");
  if ((s->host == NULL) == (s->role == NULL))
    return dibba_error_set(err, errlen, -EINVAL, "exactly one of host and role");
  if (s->args_json && s->args_msg)
    return dibba_error_set(err, errlen, -EINVAL, "both args_json and args_msg");
  rc = s->host ? dibba_route_host(k, s->host, route) : dibba_route_role(k, s->role, route);
  if (rc < 0)
    return dibba_error_set(err, errlen, rc, "bad %s name", s->host ? "host" : "role");
  if (s->claim_key && (s->claim_value == NULL || s->claim_value[0] == '\0' || s->claim_ttl_ms <= 0))
    return dibba_error_set(err, errlen, -EINVAL, "claim_key needs a claim_value and a claim_ttl_ms");
  if (s->id) {
    if (!dibba_id_valid(s->id))
      return dibba_error_set(err, errlen, -EINVAL, "task id is not a UUID");
    memcpy(id_out, s->id, DIBBA_ID_LEN + 1);
  } else {
    dibba_id_new(id_out);
  }
  int64_t now = dibba_now_ms();
  int64_t due = s->eta_ms > 0 ? s->eta_ms : now + (s->countdown_ms > 0 ? s->countdown_ms : 0);
  int64_t expires = now + (s->expires_ms > 0 ? s->expires_ms : DIBBA_TASK_DEFAULT_EXPIRES_MS);
  if (expires <= due)
    return dibba_error_set(err, errlen, -EINVAL, "the task would expire before it is due");
  env.id = id_out;
  env.name = (char *)s->name;
  env.route = route;
  env.issued_at_ms = now;
  env.expires_at_ms = expires;
  env.max_retries = s->max_retries;
  env.eta_ms = due > now ? due : 0;
  if (s->args_json) {
    env.args_case = DIBBA__V1__TASK_ENVELOPE__ARGS_ARGS_JSON;
    env.args_json = (char *)s->args_json;
  } else if (s->args_msg && set_args_msg(&env, s->args_msg) < 0) {
    return dibba_error_set(err, errlen, -EINVAL, "%s is not an envelope args type", s->args_msg->descriptor->name);
  }
  if ((rc = dibba_envelope_seal(k, &env, &w)) < 0)
    return dibba_error_set(err, errlen, rc, "cannot seal the envelope");
  snprintf(rkey, sizeof rkey, "%stask:%s", prefix, id_out);
  snprintf(dkey, sizeof dkey, "%sdelayed", prefix);
  if ((rc = dibba_route_stream_key(prefix, route, skey, sizeof skey)) < 0) {
    dibba_error_set(err, errlen, rc, "stream key");
    goto out;
  }
  snprintf(now_s, sizeof now_s, "%" PRId64, now);
  snprintf(exp_s, sizeof exp_s, "%" PRId64, expires);
  snprintf(retr_s, sizeof retr_s, "%" PRIu32, s->max_retries);
  snprintf(due_s, sizeof due_s, "%" PRId64, due);
  snprintf(cttl_s, sizeof cttl_s, "%" PRId64, s->claim_key ? s->claim_ttl_ms : 0);
  int delayed = due > now;
  const char *argv[20]; /* 3 keys + 14 arguments at most */
  size_t argvlen[20];
  int argc = 0, ie, im;
  argv[argc++] = rkey;
  argv[argc++] = delayed ? dkey : skey;
  if (s->claim_key)
    argv[argc++] = s->claim_key;
  argv[argc++] = id_out;
  argv[argc++] = s->name;
  argv[argc++] = s->host ? s->host : s->role;
  argv[argc++] = route;
  argv[argc++] = now_s;
  argv[argc++] = exp_s;
  argv[argc++] = retr_s;
  ie = argc;
  argv[argc++] = (const char *)w.e;
  im = argc;
  argv[argc++] = (const char *)w.m;
  argv[argc++] = delayed ? "1" : "0";
  argv[argc++] = due_s;
  argv[argc++] = skey;
  argv[argc++] = s->claim_key ? s->claim_value : "";
  argv[argc++] = cttl_s;
  for (int i = 0; i < argc; i++)
    argvlen[i] = i == ie || i == im ? 0 : strlen(argv[i]);
  argvlen[ie] = w.elen; /* binary: envelope bytes and MAC */
  argvlen[im] = DIBBA_ENVELOPE_MAC_LEN;
  submit_req_t *q = dibba_xcalloc(1, sizeof *q);
  q->cb = cb;
  q->data = data;
  memcpy(q->id, id_out, sizeof q->id);
  /* A claimed submit is not queued while disconnected: the caller decides whether it is still in time. */
  dibba_redis_cmd_opts_t o = {.flags = s->claim_key ? 0 : DIBBA_REDIS_QUEUE};
  if (s->wait_replicas > 0) {
    o.flags |= DIBBA_REDIS_WAIT_REPLICAS;
    o.wait_replicas = s->wait_replicas;
    o.wait_timeout_ms = s->wait_timeout_ms;
  }
  rc = dibba_redis_eval(r, &dibba__lua_submit, submit_done, q, &o, s->claim_key ? 3 : 2, argc, argv, argvlen);
  if (rc < 0) {
    free(q);
    dibba_error_set(err, errlen, rc, "redis: %s", dibba_redis_strerror(rc));
  }
out:
  dibba_envelope_wire_free(&w);
  return rc;
}

/* ---- records ---- */

static json_t *field_json(const redisReply *h, const char *name) {
  const char *v;
  size_t n;
  if (dibba_redis_reply_field(h, name, &v, &n) < 0)
    return json_null();
  json_t *j = json_loadb(v, n, JSON_DECODE_ANY, NULL);
  return j ? j : json_stringn(v, n);
}

static json_t *field_str(const redisReply *h, const char *name) {
  const char *v;
  size_t n;
  if (dibba_redis_reply_field(h, name, &v, &n) < 0)
    return json_null();
  return json_stringn_nocheck(v, n);
}

static json_t *field_int(const redisReply *h, const char *name) {
  const char *v;
  size_t n;
  if (dibba_redis_reply_field(h, name, &v, &n) < 0 || n == 0 || n > 20)
    return json_null();
  char tmp[24];
  memcpy(tmp, v, n);
  tmp[n] = '\0';
  return json_integer(strtoll(tmp, NULL, 10));
}

json_t *dibba_task_record_json(const char *id, const redisReply *h) {
  if (h == NULL || h->type != REDIS_REPLY_ARRAY || h->elements == 0)
    return NULL;
  json_t *o = json_object();
  json_object_set_new(o, "task_id", json_string(id));
  json_object_set_new(o, "status", field_str(h, "state"));
  json_object_set_new(o, "result", field_json(h, "result"));
  json_object_set_new(o, "progress", field_json(h, "progress"));
  json_object_set_new(o, "error", field_json(h, "error"));
  json_object_set_new(o, "name", field_str(h, "name"));
  json_object_set_new(o, "target", field_str(h, "target"));
  json_object_set_new(o, "worker", field_str(h, "worker"));
  json_object_set_new(o, "attempt", field_int(h, "attempt"));
  json_object_set_new(o, "seq", field_int(h, "seq"));
  json_object_set_new(o, "completions", field_int(h, "completions"));
  json_object_set_new(o, "created_at_ms", field_int(h, "created"));
  json_object_set_new(o, "updated_at_ms", field_int(h, "updated"));
  json_object_set_new(o, "started_at_ms", field_int(h, "started"));
  json_object_set_new(o, "finished_at_ms", field_int(h, "finished"));
  if (json_is_null(json_object_get(o, "seq")))
    json_object_set_new(o, "seq", json_integer(0));
  return o;
}

typedef struct record_req_s {
  dibba_task_record_cb cb;
  void *data;
  char id[DIBBA_ID_LEN + 1];
} record_req_t;

static void record_done(dibba_redis_t *r, int status, redisReply *reply, void *data) {
  record_req_t *q = data;
  (void)r;
  json_t *j = NULL;
  if (status == 0) {
    j = dibba_task_record_json(q->id, reply);
    if (j == NULL)
      status = -ENOENT;
  }
  q->cb(status, j, q->data);
  json_decref(j);
  free(q);
}

int dibba_task_record_get(dibba_redis_t *r, const char *prefix, const char *id, dibba_task_record_cb cb, void *data) {
  if (!dibba_id_valid(id))
    return -EINVAL;
  record_req_t *q = dibba_xcalloc(1, sizeof *q);
  q->cb = cb;
  q->data = data;
  snprintf(q->id, sizeof q->id, "%s", id);
  int rc = dibba_redis_command(r, record_done, q, NULL, "HGETALL %stask:%s", prefix, id);
  if (rc < 0)
    free(q);
  return rc;
}

typedef struct revoke_req_s {
  dibba_task_revoke_cb cb;
  void *data;
} revoke_req_t;

static void revoke_done(dibba_redis_t *r, int status, redisReply *reply, void *data) {
  revoke_req_t *q = data;
  long long v = 0;
  (void)r;
  if (status == 0 && dibba_redis_reply_int(reply, &v) < 0)
    status = DIBBA_EPROTO;
  q->cb(status < 0 ? status : (v < 0 ? -ENOENT : (int)v), q->data);
  free(q);
}

int dibba_task_revoke(dibba_redis_t *r, const char *prefix, const char *id, dibba_task_revoke_cb cb, void *data) {
  char rkey[512], skey[512], chan[512], rchan[512], now_s[24], ttl_s[16];
  if (!dibba_id_valid(id))
    return -EINVAL;
  snprintf(rkey, sizeof rkey, "%stask:%s", prefix, id);
  snprintf(skey, sizeof skey, "%srevoked", prefix);
  snprintf(chan, sizeof chan, "%stask:%s:ev", prefix, id);
  snprintf(rchan, sizeof rchan, "%srevoke", prefix);
  snprintf(now_s, sizeof now_s, "%" PRId64, dibba_now_ms());
  snprintf(ttl_s, sizeof ttl_s, "%d", DIBBA_TASK_RESULT_TTL_S);
  const char *argv[] = {rkey, skey, id, now_s, chan, rchan, ttl_s};
  revoke_req_t *q = dibba_xcalloc(1, sizeof *q);
  q->cb = cb;
  q->data = data;
  int rc =
      dibba_redis_eval(r, &dibba__lua_revoke, revoke_done, q, NULL, 2, (int)(sizeof argv / sizeof argv[0]), argv, NULL);
  if (rc < 0)
    free(q);
  return rc;
}
