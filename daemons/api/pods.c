/* SPDX-License-Identifier: Apache-2.0 */
/* dibba-api's pod routes: validation into dibba.v1.Pod, placement, the pod records in Redis, and the
 * create_pod / delete_pod / pod_logs / pod_exec tasks on the pod's host (waited for where the route answers
 * with the result).
 *
 * Records (shared with plugins/pods): <prefix>pod:<ns>/<name> hash {spec, hash, host, status, created, updated,
 * task_id, deleting}; sets <prefix>pods and <prefix>pods:host:<host> of "<ns>/<name>". The API writes the record
 * before it submits create_pod, so the worker's desired set has the pod when the task runs; the worker writes
 * the status and removes the record once delete_pod succeeded. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dibba/alloc.h"
#include "dibba/error.h"
#include "dibba/id.h"
#include "dibba/log.h"
#include "dibba/pbjson.h"
#include "dibba/pod.h"
#include "dibba/task_queue.h"
#include "dibba/time.h"

#include "pods.h"

#define NAME_MAX_LEN 63
#define POLL_MS 100                 /* task record polling while a route waits for a result */
#define WAIT_MS (60 * 1000)         /* logs: how long a route waits for the task */
#define FOLLOW_MS 1000              /* logs follow: one pod_logs per period */
#define EXEC_DEFAULT_MS (30 * 1000) /* exec timeout when the body gives none */
#define EXEC_MAX_MS (10 * 60 * 1000)
#define LIST_MAX 10000

struct api_pods_s {
  uv_loop_t *loop;
  dibba_redis_t *r;
  dibba_task_key_t key;
  char *prefix;
  int64_t hb_ms;
  struct op_s *ops; /* live operations (their timers are closed by api_pods_close) */
  unsigned inflight;
  int closed;
};

typedef struct op_s op_t;
typedef void (*op_step_cb)(op_t *o, const json_t *rec);

struct op_s {
  api_pods_t *ap;
  op_t *next;
  dibba_http_req_t *req;
  int refs, done, seed, streaming;
  uv_timer_t timer;
  int timer_open;
  int64_t deadline;
  op_step_cb on_final;                /* the waited-for task reached a final state */
  void (*after_host)(struct op_s *o); /* with_host: the next step */
  char ns[NAME_MAX_LEN + 1], name[NAME_MAX_LEN + 1], host[256], task_id[DIBBA_ID_LEN + 1];
  char hash[17];
  Dibba__V1__Pod *pod; /* create */
  char *spec;          /* create: the record's spec JSON */
  json_t *args;        /* logs / exec: the task's args */
  long long offset;    /* logs follow: next_offset */
  int ending;          /* logs follow: the pod ended; one last read */
};

/* ---- lua ---- */

/* KEYS: nodes. ARGV: since, prefix, wanted host ("" any). The wanted host if its heartbeat is fresh and it runs
 * the pods plugin, else the online pods host with the fewest pod records; nil when none. */
static const char lua_place[] = "local function has_pods(h)\n"
                                "  local pl = redis.call('HGET', ARGV[2] .. 'node:' .. h, 'plugins')\n"
                                "  if not pl then return false end\n"
                                "  for x in string.gmatch(pl, '[^, ]+') do if x == 'pods' then return true end end\n"
                                "  return false\n"
                                "end\n"
                                "if ARGV[3] ~= '' then\n"
                                "  local s = redis.call('ZSCORE', KEYS[1], ARGV[3])\n"
                                "  if s and tonumber(s) >= tonumber(ARGV[1]) and has_pods(ARGV[3]) then\n"
                                "    return ARGV[3] end\n"
                                "  return false\n"
                                "end\n"
                                "local best, bestn\n"
                                "for _, h in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf')) do\n"
                                "  if has_pods(h) then\n"
                                "    local n = redis.call('SCARD', ARGV[2] .. 'pods:host:' .. h)\n"
                                "    if not best or n < bestn then best, bestn = h, n end\n"
                                "  end\n"
                                "end\n"
                                "return best or false\n";

/* KEYS: record, all set, host set. ARGV: member, spec, hash, host, now, wanted host ("" any).
 * {"created"} | {"same", task_id, host} | {"conflict", host} | {"deleting"} */
static const char lua_record[] =
    "if redis.call('EXISTS', KEYS[1]) == 1 then\n"
    "  local v = redis.call('HMGET', KEYS[1], 'hash', 'host', 'task_id', 'deleting')\n"
    "  if v[4] == '1' then return {'deleting'} end\n"
    "  if v[1] ~= ARGV[3] or (ARGV[6] ~= '' and v[2] ~= ARGV[6]) then return {'conflict', v[2] or ''} end\n"
    "  return {'same', v[3] or '', v[2] or ''}\n"
    "end\n"
    "redis.call('HSET', KEYS[1], 'spec', ARGV[2], 'hash', ARGV[3], 'host', ARGV[4], 'created', ARGV[5],\n"
    "  'updated', ARGV[5])\n"
    "redis.call('SADD', KEYS[2], ARGV[1])\n"
    "redis.call('SADD', KEYS[3], ARGV[1])\n"
    "return {'created'}\n";

/* KEYS: record. ARGV: task id. Only a record still there (the worker may have answered already). */
static const char lua_task_id[] = "if redis.call('EXISTS', KEYS[1]) == 1 then\n"
                                  "  redis.call('HSET', KEYS[1], 'task_id', ARGV[1]) end\n"
                                  "return 1\n";

/* KEYS: record. The host of a record now marked deleting, or nil when there is none. */
static const char lua_delete[] = "local h = redis.call('HGET', KEYS[1], 'host')\n"
                                 "if not h then return false end\n"
                                 "redis.call('HSET', KEYS[1], 'deleting', '1')\n"
                                 "return h\n";

/* KEYS: a set of members. ARGV: prefix, namespace ("" any). [member, spec, status, host, deleting, ...] */
static const char lua_list[] = "local out = {}\n"
                               "for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do\n"
                               "  if ARGV[2] == '' or string.sub(m, 1, #ARGV[2] + 1) == ARGV[2] .. '/' then\n"
                               "    local v = redis.call('HMGET', ARGV[1] .. 'pod:' .. m, 'spec', 'status', 'host',\n"
                               "      'deleting')\n"
                               "    if v[1] then\n"
                               "      out[#out + 1] = m\n"
                               "      out[#out + 1] = v[1]\n"
                               "      out[#out + 1] = v[2] or ''\n"
                               "      out[#out + 1] = v[3] or ''\n"
                               "      out[#out + 1] = v[4] or ''\n"
                               "    end\n"
                               "  end\n"
                               "end\n"
                               "return out\n";

/* ---- operations ---- */

static void pods_free(api_pods_t *ap) {
  dibba_task_key_free(&ap->key);
  free(ap->prefix);
  free(ap);
}

static op_t *op_new(api_pods_t *ap, dibba_http_req_t *req) {
  op_t *o = dibba_xcalloc(1, sizeof *o);
  o->ap = ap;
  o->req = req;
  o->refs = 1;
  dibba_http_req_ref(req);
  o->next = ap->ops;
  ap->ops = o;
  ap->inflight++;
  return o;
}

static void op_unref(op_t *o) {
  if (--o->refs > 0)
    return;
  api_pods_t *ap = o->ap;
  for (op_t **pp = &ap->ops; *pp; pp = &(*pp)->next)
    if (*pp == o) {
      *pp = o->next;
      break;
    }
  dibba_http_req_unref(o->req);
  dibba_pbjson_message_free(o->pod ? &o->pod->base : NULL);
  free(o->spec);
  json_decref(o->args);
  free(o);
  if (--ap->inflight == 0 && ap->closed)
    pods_free(ap);
}

static void on_timer_closed(uv_handle_t *h) { op_unref(h->data); }

/* The operation is over (responded, or the client went away): close its timer and drop the main reference. */
static void op_end(op_t *o) {
  if (o->done)
    return;
  o->done = 1;
  if (o->timer_open) {
    o->timer_open = 0;
    uv_close((uv_handle_t *)&o->timer, on_timer_closed);
  }
  op_unref(o);
}

static void op_error(op_t *o, int status, const char *detail) {
  if (o->streaming)
    dibba_http_stream_end(o->req);
  else
    dibba_http_respond_error(o->req, status, detail);
  op_end(o);
}

static void on_cancel(dibba_http_req_t *req, void *data) {
  (void)req;
  op_end(data);
}

/* Run a Redis command for o: cb runs with o referenced; it must op_unref(o). Returns 0 or < 0 (o answered 503). */
static int op_redis(op_t *o, dibba_redis_cb cb, int argc, const char **argv) {
  o->refs++;
  if (dibba_redis_command_argv(o->ap->r, cb, o, NULL, argc, argv, NULL) < 0) {
    o->refs--;
    op_error(o, 503, "pod store unavailable");
    return -1;
  }
  return 0;
}

/* ---- 422s ---- */

static void reject(dibba_http_req_t *req, json_t *loc, const char *msg, const char *type) {
  dibba_http_respond_json(req, 422, json_pack("{s:[{s:o, s:s, s:s}]}", "detail", "loc", loc, "msg", msg, "type", type));
}

static int dns_label(const char *s) {
  size_t n = s ? strlen(s) : 0;
  if (n == 0 || n > NAME_MAX_LEN || s[0] == '-' || s[n - 1] == '-')
    return 0;
  for (size_t i = 0; i < n; i++)
    if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '-'))
      return 0;
  return 1;
}

static int empty(const char *s) { return s == NULL || *s == '\0'; }

/* Replace a string field of a message from dibba_pbjson_to_message: an unset field points at protobuf-c's
 * shared empty string, which must not be freed. */
static void set_str(char **field, const char *v) {
  if (*field != protobuf_c_empty_string)
    free(*field);
  *field = dibba_xstrdup(v);
}

/* The checks that name a field, then lib/pod's own (its message starts with the dotted path). Returns 0 or -1
 * (answered 422). */
static int check_pod(dibba_http_req_t *req, const Dibba__V1__Pod *pod) {
  char err[300];
  if (!empty(pod->api_version) && strcmp(pod->api_version, "v1") != 0) {
    reject(req, json_pack("[s, s]", "body", "apiVersion"), "must be v1", "value_error");
    return -1;
  }
  if (!empty(pod->kind) && strcmp(pod->kind, "Pod") != 0) {
    reject(req, json_pack("[s, s]", "body", "kind"), "must be Pod", "value_error");
    return -1;
  }
  if (!pod->metadata || empty(pod->metadata->name)) {
    reject(req, json_pack("[s, s, s]", "body", "metadata", "name"), "field required", "missing");
    return -1;
  }
  if (!dns_label(pod->metadata->name)) {
    reject(req, json_pack("[s, s, s]", "body", "metadata", "name"),
           "must be a DNS-1123 label: [a-z0-9-], at most 63, starting and ending with a letter or digit",
           "value_error");
    return -1;
  }
  if (!empty(pod->metadata->namespace_) && !dns_label(pod->metadata->namespace_)) {
    reject(req, json_pack("[s, s, s]", "body", "metadata", "namespace"), "must be a DNS-1123 label", "value_error");
    return -1;
  }
  if (!pod->spec || pod->spec->n_containers == 0) {
    reject(req, json_pack("[s, s, s]", "body", "spec", "containers"), "at least one container is required", "missing");
    return -1;
  }
  for (size_t i = 0; i < pod->spec->n_containers; i++) {
    const Dibba__V1__Container *c = pod->spec->containers[i];
    if (empty(c->name) || !dns_label(c->name)) {
      reject(req, json_pack("[s, s, s, I, s]", "body", "spec", "containers", (json_int_t)i, "name"),
             empty(c->name) ? "field required" : "must be a DNS-1123 label",
             empty(c->name) ? "missing" : "value_error");
      return -1;
    }
    for (size_t j = 0; j < i; j++)
      if (strcmp(pod->spec->containers[j]->name, c->name) == 0) {
        reject(req, json_pack("[s, s, s, I, s]", "body", "spec", "containers", (json_int_t)i, "name"),
               "container names must be unique", "value_error");
        return -1;
      }
    if (empty(c->image)) {
      reject(req, json_pack("[s, s, s, I, s]", "body", "spec", "containers", (json_int_t)i, "image"), "field required",
             "missing");
      return -1;
    }
  }
  if (dibba_pod_validate(pod, err, sizeof err) < 0) {
    json_t *loc = json_pack("[s]", "body");
    const char *colon = strstr(err, ": ");
    if (colon && memchr(err, ' ', (size_t)(colon - err)) == NULL) {
      char path[200];
      snprintf(path, sizeof path, "%.*s", (int)(colon - err), err);
      char *save = NULL;
      for (char *seg = strtok_r(path, ".", &save); seg; seg = strtok_r(NULL, ".", &save))
        json_array_append_new(loc, json_string(seg));
    }
    reject(req, loc, err, "value_error");
    return -1;
  }
  return 0;
}

static int has_runtime(const Dibba__V1__Pod *pod) {
  const Dibba__V1__RuntimeOverrides *r = pod->runtime;
  return r && (!empty(r->containerd_socket) || !empty(r->containerd_namespace) || !empty(r->snapshotter) ||
               !empty(r->cni_network) || !empty(r->cni_ifname));
}

/* The record hash: the normalized pod without nodeName (placement fills that in) or status. */
static void spec_hash(const Dibba__V1__Pod *pod, char hash[17]) {
  Dibba__V1__Pod copy = *pod;
  Dibba__V1__PodSpec spec = *pod->spec;
  spec.node_name = (char *)"";
  copy.spec = &spec;
  copy.status = NULL;
  free(dibba_pod_normalized(&copy, hash));
}

/* ---- waiting for a task ---- */

static void poll_record(op_t *o);
static void on_poll_timer(uv_timer_t *t) { poll_record(t->data); }

static void on_record(int status, const json_t *rec, void *data) {
  op_t *o = data;
  if (!o->done) {
    const char *st = json_string_value(json_object_get(rec, "status"));
    if (status == 0 && st && (strcmp(st, "SUCCESS") == 0 || strcmp(st, "FAILURE") == 0 || strcmp(st, "REVOKED") == 0)) {
      o->on_final(o, rec);
    } else if (status < 0 && status != -ENOENT) {
      op_error(o, 503, "task store unavailable");
    } else if (dibba_now_ms() > o->deadline) {
      op_error(o, 504, "the worker did not answer in time");
    } else {
      uv_timer_start(&o->timer, on_poll_timer, POLL_MS, 0);
    }
  }
  op_unref(o);
}

static void poll_record(op_t *o) {
  if (o->done)
    return;
  o->refs++;
  if (dibba_task_record_get(o->ap->r, o->ap->prefix, o->task_id, on_record, o) < 0) {
    o->refs--;
    op_error(o, 503, "task store unavailable");
  }
}

static void wait_task(op_t *o, int64_t ms, op_step_cb cb) {
  if (!o->timer_open) {
    uv_timer_init(o->ap->loop, &o->timer);
    o->timer.data = o;
    o->timer_open = 1;
    o->refs++; /* dropped by the timer's close callback */
  }
  o->deadline = dibba_now_ms() + ms;
  o->on_final = cb;
  uv_timer_start(&o->timer, on_poll_timer, POLL_MS, 0);
}

/* A failed task as an HTTP error: ENOENT (no such pod or container on the worker) is a 404. */
static void task_failed(op_t *o, const json_t *rec) {
  const json_t *e = json_object_get(rec, "error");
  const char *code = json_string_value(json_object_get(e, "code"));
  const char *msg = json_string_value(json_object_get(e, "message"));
  if (!msg)
    msg = json_string_value(e);
  char detail[400];
  snprintf(detail, sizeof detail, "%s task %s: %s", json_string_value(json_object_get(rec, "name")),
           json_string_value(json_object_get(rec, "status")), msg ? msg : "failed");
  op_error(o, code && strcmp(code, "ENOENT") == 0 ? 404 : 502, detail);
}

/* Submit name with args (JSON object or a message) to o->host; then(o) on success. */
typedef void (*submit_cb)(op_t *o);
typedef struct sub_s {
  op_t *o;
  submit_cb then;
} sub_t;

static void on_submitted(int status, const char *id, void *data) {
  sub_t *s = data;
  op_t *o = s->o;
  submit_cb then = s->then;
  free(s);
  if (!o->done) {
    if (status < 0) {
      op_error(o, 503, "task store unavailable");
    } else {
      snprintf(o->task_id, sizeof o->task_id, "%s", id);
      then(o);
    }
  }
  op_unref(o);
}

static void submit(op_t *o, const char *name, const json_t *args, const ProtobufCMessage *msg, submit_cb then) {
  char id[DIBBA_ID_LEN + 1], err[256];
  char *text = args ? json_dumps(args, JSON_COMPACT) : NULL;
  dibba_task_submit_t s = {.name = name, .host = o->host, .args_json = text, .args_msg = msg};
  sub_t *sb = dibba_xcalloc(1, sizeof *sb);
  sb->o = o;
  sb->then = then;
  o->refs++;
  int rc = dibba_task_submit(o->ap->r, o->ap->prefix, &o->ap->key, &s, on_submitted, sb, id, err, sizeof err);
  free(text);
  if (rc < 0) {
    free(sb);
    o->refs--;
    if (rc == -EINVAL || rc == -E2BIG)
      reject(o->req, json_pack("[s]", "body"), err, "value_error"), op_end(o);
    else
      op_error(o, 503, "task store unavailable");
  }
}

/* ---- create ---- */

static void on_task_id_stored(dibba_redis_t *r, int status, redisReply *reply, void *data) {
  (void)r, (void)status, (void)reply;
  op_unref(data);
}

static void created_submitted(op_t *o) {
  char key[600];
  snprintf(key, sizeof key, "%spod:%s/%s", o->ap->prefix, o->ns, o->name);
  const char *argv[] = {"EVAL", lua_task_id, "1", key, o->task_id};
  o->refs++;
  if (dibba_redis_command_argv(o->ap->r, on_task_id_stored, o, NULL, 5, argv, NULL) < 0)
    o->refs--;
  if (o->seed)
    dibba_http_respond_json(o->req, 200,
                            json_pack("{s:s, s:s}", "message", "Task submitted successfully", "task_id", o->task_id));
  else
    dibba_http_respond_json(o->req, 202,
                            json_pack("{s:s, s:s, s:s, s:s, s:s}", "message", "Task submitted successfully", "task_id",
                                      o->task_id, "namespace", o->ns, "name", o->name, "host", o->host));
  op_end(o);
}

static void on_recorded(dibba_redis_t *r, int status, redisReply *reply, void *data) {
  op_t *o = data;
  const char *what = NULL, *a1 = "", *a2 = "";
  size_t n;
  (void)r;
  if (o->done)
    goto out;
  if (status < 0 || dibba_redis_reply_str(dibba_redis_reply_at(reply, 0), &what, &n) < 0) {
    op_error(o, 503, "pod store unavailable");
    goto out;
  }
  if (reply->elements > 1)
    (void)dibba_redis_reply_str(reply->element[1], &a1, &n);
  if (reply->elements > 2)
    (void)dibba_redis_reply_str(reply->element[2], &a2, &n);
  if (strcmp(what, "created") == 0) {
    submit(o, "create_pod", NULL, &o->pod->base, created_submitted);
  } else if (strcmp(what, "same") == 0) {
    dibba_http_respond_json(o->req, 200,
                            json_pack("{s:s, s:s, s:s, s:s, s:s}", "message", "pod exists with the same spec",
                                      "task_id", a1, "namespace", o->ns, "name", o->name, "host", a2));
    op_end(o);
  } else if (strcmp(what, "deleting") == 0) {
    op_error(o, 409, "the pod is being deleted; try again once it is gone");
  } else {
    char detail[400];
    snprintf(detail, sizeof detail, "pod %s/%s exists on host %s with a different spec", o->ns, o->name, a1);
    op_error(o, 409, detail);
  }
out:
  op_unref(o);
}

static void on_placed(dibba_redis_t *r, int status, redisReply *reply, void *data) {
  op_t *o = data;
  const char *h;
  size_t n;
  (void)r;
  if (o->done)
    goto out;
  if (status < 0) {
    op_error(o, 503, "pod store unavailable");
    goto out;
  }
  if (dibba_redis_reply_str(reply, &h, &n) < 0 || n == 0 || n >= sizeof o->host) {
    if (o->host[0])
      op_error(o, 404, "unknown or offline host (or it does not run the pods plugin)");
    else
      op_error(o, 503, "no online worker runs the pods plugin");
    goto out;
  }
  memcpy(o->host, h, n);
  o->host[n] = '\0';
  /* The pod as the worker gets it and the record keeps it: namespace and nodeName filled in, no status. */
  set_str(&o->pod->spec->node_name, o->host);
  o->spec = dibba_pbjson_dumps(&o->pod->base, 0);
  char key[600], all[300], hset[600], member[200], now[24];
  snprintf(key, sizeof key, "%spod:%s/%s", o->ap->prefix, o->ns, o->name);
  snprintf(all, sizeof all, "%spods", o->ap->prefix);
  snprintf(hset, sizeof hset, "%spods:host:%s", o->ap->prefix, o->host);
  snprintf(member, sizeof member, "%s/%s", o->ns, o->name);
  snprintf(now, sizeof now, "%" PRId64, dibba_now_ms());
  const char *argv[] = {"EVAL",  lua_record, "3",    key,
                        all,     hset,       member, o->spec,
                        o->hash, o->host,    now,    json_string_value(json_object_get(o->args, "wanted"))};
  op_redis(o, on_recorded, 12, argv);
out:
  op_unref(o);
}

/* Takes pod. Checks, places, records and submits; answers in every case. */
static void create_pod(api_pods_t *ap, dibba_http_req_t *req, Dibba__V1__Pod *pod, int seed) {
  const dibba_http_principal_t *who = dibba_http_req_principal(req);
  if (check_pod(req, pod) < 0) {
    dibba_pbjson_message_free(&pod->base);
    return;
  }
  if (has_runtime(pod) && (!who || who->role < DIBBA_ROLE_ADMIN)) {
    dibba_pbjson_message_free(&pod->base);
    dibba_http_respond_error(req, 403, "runtime overrides need the admin role");
    return;
  }
  op_t *o = op_new(ap, req);
  o->seed = seed;
  o->pod = pod;
  dibba_http_req_on_cancel(req, on_cancel, o);
  if (pod->status) {
    protobuf_c_message_free_unpacked(&pod->status->base, NULL); /* status is the worker's to write */
    pod->status = NULL;
  }
  if (empty(pod->metadata->namespace_)) {
    set_str(&pod->metadata->namespace_, "default");
  }
  snprintf(o->ns, sizeof o->ns, "%s", pod->metadata->namespace_);
  snprintf(o->name, sizeof o->name, "%s", pod->metadata->name);
  snprintf(o->host, sizeof o->host, "%s", empty(pod->spec->node_name) ? "" : pod->spec->node_name);
  o->args = json_pack("{s:s}", "wanted", o->host); /* the host the caller asked for ("" none) */
  spec_hash(pod, o->hash);
  char nodes[300], since[24];
  snprintf(nodes, sizeof nodes, "%snodes", ap->prefix);
  snprintf(since, sizeof since, "%" PRId64, dibba_now_ms() - 3 * ap->hb_ms);
  const char *argv[] = {"EVAL", lua_place, "1", nodes, since, ap->prefix, o->host};
  op_redis(o, on_placed, 7, argv);
}

static void h_create(dibba_http_req_t *req, void *data) {
  ProtobufCMessage *m = NULL;
  dibba_pbjson_error_t pe;
  memset(&pe, 0, sizeof pe);
  if (dibba_pbjson_to_message(dibba_http_req_json(req), &dibba__v1__pod__descriptor, NULL, &m, &pe) < 0) {
    json_t *loc = json_pack("[s]", "body");
    if (pe.loc)
      json_array_extend(loc, pe.loc);
    reject(req, loc, pe.msg, pe.type ? pe.type : "value_error");
    dibba_pbjson_error_clear(&pe);
    return;
  }
  create_pod(data, req, (Dibba__V1__Pod *)m, 0);
}

/* ---- the seed's POST /create-pods ---- */

static int seed_unknown(dibba_http_req_t *req, const json_t *o, json_t *loc, const char *const *names, size_t n) {
  const char *k;
  json_t *v;
  json_object_foreach((json_t *)o, k, v) {
    size_t i;
    for (i = 0; i < n && strcmp(k, names[i]) != 0; i++)
      ;
    if (i == n) {
      json_array_append_new(loc, json_stringn(k, strnlen(k, 64)));
      reject(req, loc, "extra fields not permitted", "extra_forbidden");
      return -1;
    }
  }
  json_decref(loc);
  return 0;
}

/* {host_name, namespace, containers:[{name, image, command, args, env, mounts, resources}], runtime} -> the Pod
 * JSON: the pod is named after the first container; env is an object or a list of "K=V"; mounts
 * [{source, destination, readonly}] become hostPath volumes; resources {cpu_millicores, memory} become limits.
 * Returns a new object or NULL (answered 422). */
static json_t *seed_to_pod(dibba_http_req_t *req, const json_t *b) {
  static const char *const top[] = {"host_name", "namespace", "containers", "runtime"};
  static const char *const ck[] = {"name", "image", "command", "args", "env", "mounts", "resources"};
  static const char *const rk[] = {"cpu_millicores", "memory", "cpuset_cpus"};
  static const char *const mk[] = {"source", "destination", "readonly"};
  if (seed_unknown(req, b, json_pack("[s]", "body"), top, 4) < 0)
    return NULL;
  const json_t *host = json_object_get(b, "host_name"), *ns = json_object_get(b, "namespace");
  const json_t *cs = json_object_get(b, "containers");
  if (!json_is_string(host) || !*json_string_value(host)) {
    reject(req, json_pack("[s, s]", "body", "host_name"), "field required", "missing");
    return NULL;
  }
  if (ns && !json_is_null(ns) && !json_is_string(ns)) {
    reject(req, json_pack("[s, s]", "body", "namespace"), "expected a string", "type_error");
    return NULL;
  }
  if (!json_is_array(cs) || json_array_size(cs) == 0) {
    reject(req, json_pack("[s, s]", "body", "containers"), "at least one container is required", "missing");
    return NULL;
  }
  json_t *containers = json_array(), *volumes = json_array();
  json_t *pod =
      json_pack("{s:s, s:s, s:{s:s?}, s:{s:O, s:o, s:o}}", "apiVersion", "v1", "kind", "Pod", "metadata", "namespace",
                json_string_value(ns), "spec", "nodeName", host, "containers", containers, "volumes", volumes);
  size_t i;
  json_t *c;
  json_array_foreach(cs, i, c) {
    if (!json_is_object(c)) {
      reject(req, json_pack("[s, s, I]", "body", "containers", (json_int_t)i), "expected an object", "type_error");
      goto fail;
    }
    if (seed_unknown(req, c, json_pack("[s, s, I]", "body", "containers", (json_int_t)i), ck, 7) < 0)
      goto fail;
    const json_t *name = json_object_get(c, "name");
    if (i == 0 && json_is_string(name))
      json_object_set(json_object_get(pod, "metadata"), "name", (json_t *)name);
    json_t *out = json_object();
    json_array_append_new(containers, out);
    static const char *const copy[] = {"name", "image", "command", "args"};
    for (size_t k = 0; k < 4; k++)
      if (json_object_get(c, copy[k]))
        json_object_set(out, copy[k], json_object_get(c, copy[k]));
    const json_t *env = json_object_get(c, "env");
    if (env && !json_is_null(env)) {
      json_t *list = json_array();
      json_object_set_new(out, "env", list);
      const char *k;
      json_t *v;
      size_t j;
      if (json_is_object(env)) {
        json_object_foreach((json_t *)env, k, v)
            json_array_append_new(list, json_pack("{s:s, s:O}", "name", k, "value", v));
      } else if (json_is_array(env)) {
        json_array_foreach(env, j, v) {
          const char *kv = json_string_value(v), *eq = kv ? strchr(kv, '=') : NULL;
          if (!eq) {
            reject(req, json_pack("[s, s, I, s, I]", "body", "containers", (json_int_t)i, "env", (json_int_t)j),
                   "expected \"NAME=value\"", "value_error");
            goto fail;
          }
          json_array_append_new(list, json_pack("{s:s%, s:s}", "name", kv, (size_t)(eq - kv), "value", eq + 1));
        }
      } else {
        reject(req, json_pack("[s, s, I, s]", "body", "containers", (json_int_t)i, "env"),
               "expected an object or a list of \"NAME=value\"", "type_error");
        goto fail;
      }
    }
    const json_t *mounts = json_object_get(c, "mounts");
    if (mounts && !json_is_null(mounts)) {
      size_t j;
      json_t *m;
      json_t *vm = json_array();
      json_object_set_new(out, "volumeMounts", vm);
      if (!json_is_array(mounts)) {
        reject(req, json_pack("[s, s, I, s]", "body", "containers", (json_int_t)i, "mounts"), "expected a list",
               "type_error");
        goto fail;
      }
      json_array_foreach(mounts, j, m) {
        if (!json_is_object(m) ||
            seed_unknown(req, m,
                         json_pack("[s, s, I, s, I]", "body", "containers", (json_int_t)i, "mounts", (json_int_t)j), mk,
                         3) < 0) {
          if (!json_is_object(m))
            reject(req, json_pack("[s, s, I, s, I]", "body", "containers", (json_int_t)i, "mounts", (json_int_t)j),
                   "expected an object", "type_error");
          goto fail;
        }
        char vname[48];
        snprintf(vname, sizeof vname, "m%zu-%zu", i, j);
        json_array_append_new(
            volumes, json_pack("{s:s, s:{s:O*}}", "name", vname, "hostPath", "path", json_object_get(m, "source")));
        json_array_append_new(vm,
                              json_pack("{s:s, s:O*, s:O*}", "name", vname, "mountPath",
                                        json_object_get(m, "destination"), "readOnly", json_object_get(m, "readonly")));
      }
    }
    const json_t *res = json_object_get(c, "resources");
    if (res && !json_is_null(res)) {
      json_t *loc = json_pack("[s, s, I, s]", "body", "containers", (json_int_t)i, "resources");
      if (!json_is_object(res)) {
        reject(req, loc, "expected an object", "type_error");
        goto fail;
      }
      if (seed_unknown(req, res, json_deep_copy(loc), rk, 3) < 0) {
        json_decref(loc);
        goto fail;
      }
      const json_t *cpu = json_object_get(res, "cpu_millicores"), *mem = json_object_get(res, "memory");
      const json_t *cpuset = json_object_get(res, "cpuset_cpus");
      if (cpuset && !json_is_null(cpuset) && !(json_is_string(cpuset) && !*json_string_value(cpuset))) {
        json_array_append_new(loc, json_string("cpuset_cpus"));
        reject(req, loc, "not supported for pods (use run_container)", "value_error");
        goto fail;
      }
      json_t *limits = json_object();
      char q[32];
      if (cpu && !json_is_null(cpu)) {
        if (!json_is_integer(cpu) || json_integer_value(cpu) < 0) {
          json_array_append_new(loc, json_string("cpu_millicores"));
          reject(req, loc, "expected a non-negative integer", "type_error");
          json_decref(limits);
          goto fail;
        }
        snprintf(q, sizeof q, "%" JSON_INTEGER_FORMAT "m", json_integer_value(cpu));
        json_object_set_new(limits, "cpu", json_string(q));
      }
      if (mem && !json_is_null(mem)) {
        if (json_is_integer(mem) && json_integer_value(mem) >= 0) {
          snprintf(q, sizeof q, "%" JSON_INTEGER_FORMAT, json_integer_value(mem));
          json_object_set_new(limits, "memory", json_string(q));
        } else if (json_is_string(mem)) {
          json_object_set(limits, "memory", (json_t *)mem);
        } else {
          json_array_append_new(loc, json_string("memory"));
          reject(req, loc, "expected bytes or a quantity", "type_error");
          json_decref(limits);
          goto fail;
        }
      }
      json_decref(loc);
      json_object_set_new(out, "resources", json_pack("{s:o}", "limits", limits));
    }
  }
  if (json_object_get(b, "runtime"))
    json_object_set(pod, "runtime", json_object_get(b, "runtime"));
  return pod;
fail:
  json_decref(pod);
  return NULL;
}

static void h_seed_create(dibba_http_req_t *req, void *data) {
  json_t *pj = seed_to_pod(req, dibba_http_req_json(req));
  if (!pj)
    return;
  ProtobufCMessage *m = NULL;
  dibba_pbjson_error_t pe;
  memset(&pe, 0, sizeof pe);
  int rc = dibba_pbjson_to_message(pj, &dibba__v1__pod__descriptor, NULL, &m, &pe);
  json_decref(pj);
  if (rc < 0) {
    /* the path is the Pod's (containers[0].image ...), under the converted body */
    json_t *loc = json_pack("[s]", "body");
    if (pe.loc)
      json_array_extend(loc, pe.loc);
    reject(req, loc, pe.msg, pe.type ? pe.type : "value_error");
    dibba_pbjson_error_clear(&pe);
    return;
  }
  create_pod(data, req, (Dibba__V1__Pod *)m, 1);
}

/* ---- read ---- */

/* The Pod JSON of a record: its spec, status ({"phase": "Pending"} before the worker wrote one). */
static json_t *pod_view(const char *spec, size_t sl, const char *status, size_t stl, int deleting) {
  json_t *j = json_loadb(spec, sl, 0, NULL);
  if (!json_is_object(j)) {
    json_decref(j);
    return NULL;
  }
  json_t *st = stl ? json_loadb(status, stl, 0, NULL) : NULL;
  if (!json_is_object(st)) {
    json_decref(st);
    st = json_pack("{s:s}", "phase", "Pending");
  }
  if (deleting)
    json_object_set_new(st, "reason", json_string("Terminating"));
  json_object_set_new(j, "status", st);
  return j;
}

static void on_got(dibba_redis_t *r, int status, redisReply *reply, void *data) {
  op_t *o = data;
  const char *spec = NULL, *st = NULL, *del = NULL;
  size_t sl = 0, stl = 0, dl = 0;
  (void)r;
  if (o->done)
    goto out;
  if (status < 0) {
    op_error(o, 503, "pod store unavailable");
    goto out;
  }
  if (dibba_redis_reply_field(reply, "spec", &spec, &sl) < 0) {
    op_error(o, 404, "pod not found");
    goto out;
  }
  (void)dibba_redis_reply_field(reply, "status", &st, &stl);
  (void)dibba_redis_reply_field(reply, "deleting", &del, &dl);
  json_t *j = pod_view(spec, sl, st, stl, dl == 1 && del[0] == '1');
  if (j)
    dibba_http_respond_json(o->req, 200, j);
  else
    dibba_http_respond_error(o->req, 500, "unreadable pod record");
  op_end(o);
out:
  op_unref(o);
}

/* ns/name from the path: 0, or -1 (answered 404: no pod can have that name). */
static int path_pod(dibba_http_req_t *req, char *ns, char *name) {
  const char *n = dibba_http_req_param(req, "ns"), *p = dibba_http_req_param(req, "name");
  if (!dns_label(n) || !dns_label(p)) {
    dibba_http_respond_error(req, 404, "pod not found");
    return -1;
  }
  snprintf(ns, NAME_MAX_LEN + 1, "%s", n);
  snprintf(name, NAME_MAX_LEN + 1, "%s", p);
  return 0;
}

static op_t *pod_op(api_pods_t *ap, dibba_http_req_t *req) {
  char ns[NAME_MAX_LEN + 1], name[NAME_MAX_LEN + 1];
  if (path_pod(req, ns, name) < 0)
    return NULL;
  op_t *o = op_new(ap, req);
  snprintf(o->ns, sizeof o->ns, "%s", ns);
  snprintf(o->name, sizeof o->name, "%s", name);
  dibba_http_req_on_cancel(req, on_cancel, o);
  return o;
}

static void h_get(dibba_http_req_t *req, void *data) {
  api_pods_t *ap = data;
  op_t *o = pod_op(ap, req);
  if (!o)
    return;
  char key[600];
  snprintf(key, sizeof key, "%spod:%s/%s", ap->prefix, o->ns, o->name);
  const char *argv[] = {"HGETALL", key};
  op_redis(o, on_got, 2, argv);
}

static int query(dibba_http_req_t *req, json_t **q) {
  const char *s = dibba_http_req_query(req);
  if (dibba_http_parse_form(s, strlen(s), 8192, q) < 0) {
    reject(req, json_pack("[s]", "query"), "malformed query string", "value_error");
    return -1;
  }
  return 0;
}

static int item_cmp(const void *a, const void *b) {
  json_t *x = *(json_t *const *)a, *y = *(json_t *const *)b;
  const json_t *mx = json_object_get(x, "metadata"), *my = json_object_get(y, "metadata");
  const char *nx = json_string_value(json_object_get(mx, "namespace")),
             *ny = json_string_value(json_object_get(my, "namespace"));
  int c = strcmp(nx ? nx : "", ny ? ny : "");
  if (c)
    return c;
  nx = json_string_value(json_object_get(mx, "name"));
  ny = json_string_value(json_object_get(my, "name"));
  return strcmp(nx ? nx : "", ny ? ny : "");
}

static void on_listed(dibba_redis_t *r, int status, redisReply *reply, void *data) {
  op_t *o = data;
  (void)r;
  if (o->done)
    goto out;
  if (status < 0 || !reply || reply->type != REDIS_REPLY_ARRAY) {
    op_error(o, 503, "pod store unavailable");
    goto out;
  }
  const char *sel = json_string_value(json_object_get(o->args, "labelSelector"));
  size_t n = 0, cap = reply->elements / 5 + 1;
  json_t **items = dibba_xcalloc(cap, sizeof *items);
  for (size_t i = 0; i + 4 < reply->elements && n < LIST_MAX; i += 5) {
    const char *spec, *st, *host, *del;
    size_t sl, stl, hl, dl;
    if (dibba_redis_reply_str(reply->element[i + 1], &spec, &sl) < 0 ||
        dibba_redis_reply_str(reply->element[i + 2], &st, &stl) < 0 ||
        dibba_redis_reply_str(reply->element[i + 3], &host, &hl) < 0 ||
        dibba_redis_reply_str(reply->element[i + 4], &del, &dl) < 0)
      continue;
    if (!empty(sel)) {
      ProtobufCMessage *m = NULL;
      int match = 0;
      if (dibba_pbjson_parse(spec, sl, &dibba__v1__pod__descriptor, NULL, &m, NULL) == 0) {
        const Dibba__V1__Pod *p = (const Dibba__V1__Pod *)m;
        match = p->metadata && dibba_pod_selector_match(sel, p->metadata->labels, p->metadata->n_labels) == 1;
      }
      dibba_pbjson_message_free(m);
      if (!match)
        continue;
    }
    json_t *j = pod_view(spec, sl, st, stl, dl == 1 && del[0] == '1');
    if (j)
      items[n++] = j;
  }
  qsort(items, n, sizeof *items, item_cmp);
  json_t *arr = json_array();
  for (size_t i = 0; i < n; i++)
    json_array_append_new(arr, items[i]);
  free(items);
  dibba_http_respond_json(o->req, 200,
                          json_pack("{s:s, s:s, s:o}", "apiVersion", "v1", "kind", "PodList", "items", arr));
  op_end(o);
out:
  op_unref(o);
}

static void h_list(dibba_http_req_t *req, void *data) {
  api_pods_t *ap = data;
  json_t *q = NULL;
  if (query(req, &q) < 0)
    return;
  const char *ns = json_string_value(json_object_get(q, "namespace"));
  const char *host = json_string_value(json_object_get(q, "host"));
  const char *sel = json_string_value(json_object_get(q, "labelSelector"));
  if (!empty(ns) && !dns_label(ns)) {
    reject(req, json_pack("[s, s]", "query", "namespace"), "must be a DNS-1123 label", "value_error");
    json_decref(q);
    return;
  }
  if (!empty(host) && strlen(host) > 253) {
    reject(req, json_pack("[s, s]", "query", "host"), "too long", "too_long");
    json_decref(q);
    return;
  }
  if (!empty(sel) && dibba_pod_selector_match(sel, NULL, 0) < 0) {
    reject(req, json_pack("[s, s]", "query", "labelSelector"), "must be k=v, k!=v, k or !k terms separated by commas",
           "value_error");
    json_decref(q);
    return;
  }
  op_t *o = op_new(ap, req);
  o->args = q;
  dibba_http_req_on_cancel(req, on_cancel, o);
  char set[600];
  if (!empty(host))
    snprintf(set, sizeof set, "%spods:host:%s", ap->prefix, host);
  else
    snprintf(set, sizeof set, "%spods", ap->prefix);
  const char *argv[] = {"EVAL", lua_list, "1", set, ap->prefix, ns ? ns : ""};
  op_redis(o, on_listed, 6, argv);
}

/* ---- delete ---- */

static void delete_submitted(op_t *o) {
  dibba_http_respond_json(o->req, 202,
                          json_pack("{s:s, s:s, s:s, s:s, s:s}", "message", "Task submitted successfully", "task_id",
                                    o->task_id, "namespace", o->ns, "name", o->name, "host", o->host));
  op_end(o);
}

static void on_marked(dibba_redis_t *r, int status, redisReply *reply, void *data) {
  op_t *o = data;
  const char *h;
  size_t n;
  (void)r;
  if (o->done)
    goto out;
  if (status < 0) {
    op_error(o, 503, "pod store unavailable");
  } else if (dibba_redis_reply_str(reply, &h, &n) < 0 || n == 0 || n >= sizeof o->host) {
    /* Deleting a pod that does not exist succeeds. */
    dibba_http_respond_json(o->req, 200,
                            json_pack("{s:s, s:s, s:s}", "message", "pod not found; nothing to delete", "namespace",
                                      o->ns, "name", o->name));
    op_end(o);
  } else {
    memcpy(o->host, h, n);
    o->host[n] = '\0';
    o->args = json_pack("{s:s, s:s}", "namespace", o->ns, "name", o->name);
    /* No liveness check: the task waits on the host's stream, and the worker's reconcile removes the pod
     * (its record says deleting) if the task expires first. */
    submit(o, "delete_pod", o->args, NULL, delete_submitted);
  }
out:
  op_unref(o);
}

static void h_delete(dibba_http_req_t *req, void *data) {
  api_pods_t *ap = data;
  op_t *o = pod_op(ap, req);
  if (!o)
    return;
  char key[600];
  snprintf(key, sizeof key, "%spod:%s/%s", ap->prefix, o->ns, o->name);
  const char *argv[] = {"EVAL", lua_delete, "1", key};
  op_redis(o, on_marked, 4, argv);
}

/* ---- logs and exec: the record names the host; the task's result is the answer ---- */

static void on_host(dibba_redis_t *r, int status, redisReply *reply, void *data);

/* Look the pod's host up, then next(o). */
static void with_host(op_t *o, submit_cb next) {
  char key[600];
  snprintf(key, sizeof key, "%spod:%s/%s", o->ap->prefix, o->ns, o->name);
  const char *argv[] = {"HMGET", key, "host", "status"};
  o->after_host = next;
  op_redis(o, on_host, 4, argv);
}

static void on_host(dibba_redis_t *r, int status, redisReply *reply, void *data) {
  op_t *o = data;
  const char *h, *st;
  size_t n, sn;
  (void)r;
  if (o->done)
    goto out;
  if (status < 0) {
    op_error(o, 503, "pod store unavailable");
    goto out;
  }
  if (dibba_redis_reply_str(dibba_redis_reply_at(reply, 0), &h, &n) == 0 && n > 0 && n < sizeof o->host) {
    memcpy(o->host, h, n);
    o->host[n] = '\0';
  } else if (o->streaming) {
    o->ending = 2; /* following, and the record is gone: the pod was deleted */
  } else {
    op_error(o, 404, "pod not found");
    goto out;
  }
  if (o->streaming && dibba_redis_reply_str(dibba_redis_reply_at(reply, 1), &st, &sn) == 0) {
    json_t *sj = json_loadb(st, sn, 0, NULL);
    const char *phase = json_string_value(json_object_get(sj, "phase"));
    if (phase && (strcmp(phase, "Succeeded") == 0 || strcmp(phase, "Failed") == 0) && !o->ending)
      o->ending = 1; /* one last read, then the stream ends */
    json_decref(sj);
  }
  o->after_host(o);
out:
  op_unref(o);
}

static void logs_poll(op_t *o);

/* Text of the lines, each followed by a newline. */
static char *lines_text(const json_t *lines, size_t *len) {
  size_t total = 0, i;
  json_t *l;
  json_array_foreach(lines, i, l) total += json_string_length(l) + 1;
  char *s = dibba_xmalloc(total + 1), *p = s;
  json_array_foreach(lines, i, l) {
    memcpy(p, json_string_value(l), json_string_length(l));
    p += json_string_length(l);
    *p++ = '\n';
  }
  *p = '\0';
  *len = total;
  return s;
}

static void follow_tick(uv_timer_t *t);

static void logs_final(op_t *o, const json_t *rec) {
  const char *st = json_string_value(json_object_get(rec, "status"));
  if (strcmp(st, "SUCCESS") != 0) {
    if (o->streaming)
      op_error(o, 0, NULL); /* the pod or container is gone: end the stream */
    else
      task_failed(o, rec);
    return;
  }
  const json_t *res = json_object_get(rec, "result");
  size_t len;
  char *text = lines_text(json_object_get(res, "lines"), &len);
  o->offset = json_integer_value(json_object_get(res, "next_offset"));
  int follow = json_is_true(json_object_get(o->args, "follow"));
  if (!follow) {
    dibba_http_respond(o->req, 200, "text/plain; charset=utf-8", text, len);
    free(text);
    op_end(o);
    return;
  }
  if (!o->streaming) {
    o->streaming = 1;
    if (dibba_http_stream_begin(o->req, 200, "text/plain; charset=utf-8") < 0) {
      free(text);
      op_end(o);
      return;
    }
  }
  int rc = len ? dibba_http_stream_write(o->req, text, len) : 0;
  free(text);
  if (rc < 0 || o->ending) {
    dibba_http_stream_end(o->req);
    op_end(o);
    return;
  }
  /* From now on: read on from next_offset, once per FOLLOW_MS. */
  json_object_del(o->args, "tailLines");
  json_object_set_new(o->args, "offset", json_integer(o->offset));
  uv_timer_start(&o->timer, follow_tick, FOLLOW_MS, 0);
}

static void follow_tick(uv_timer_t *t) {
  op_t *o = t->data;
  if (!o->done)
    with_host(o, logs_poll);
}

static void logs_submitted(op_t *o) { wait_task(o, WAIT_MS, logs_final); }

static void logs_poll(op_t *o) {
  if (o->ending == 2) {
    dibba_http_stream_end(o->req);
    op_end(o);
    return;
  }
  json_t *a = json_deep_copy(o->args);
  json_object_del(a, "follow");
  submit(o, "pod_logs", a, NULL, logs_submitted);
  json_decref(a);
}

static void h_logs(dibba_http_req_t *req, void *data) {
  api_pods_t *ap = data;
  json_t *q = NULL;
  if (query(req, &q) < 0)
    return;
  const char *ctr = json_string_value(json_object_get(q, "container"));
  const char *tail = json_string_value(json_object_get(q, "tailLines"));
  const char *follow = json_string_value(json_object_get(q, "follow"));
  long long n = 100;
  if (tail) {
    char *end = NULL;
    n = strtoll(tail, &end, 10);
    if (!*tail || *end || n < 0 || n > 10000) {
      reject(req, json_pack("[s, s]", "query", "tailLines"), "an integer from 0 to 10000", "value_error");
      json_decref(q);
      return;
    }
  }
  if (ctr && !dns_label(ctr)) {
    reject(req, json_pack("[s, s]", "query", "container"), "must be a container name", "value_error");
    json_decref(q);
    return;
  }
  if (follow && strcmp(follow, "true") != 0 && strcmp(follow, "false") != 0 && strcmp(follow, "1") != 0 &&
      strcmp(follow, "0") != 0) {
    reject(req, json_pack("[s, s]", "query", "follow"), "true or false", "value_error");
    json_decref(q);
    return;
  }
  op_t *o = pod_op(ap, req);
  if (!o) {
    json_decref(q);
    return;
  }
  o->args = json_pack("{s:s, s:s, s:I, s:b}", "namespace", o->ns, "name", o->name, "tailLines", (json_int_t)n, "follow",
                      follow && (strcmp(follow, "true") == 0 || strcmp(follow, "1") == 0));
  if (ctr)
    json_object_set_new(o->args, "container", json_string(ctr));
  json_decref(q);
  with_host(o, logs_poll);
}

static void exec_final(op_t *o, const json_t *rec) {
  if (strcmp(json_string_value(json_object_get(rec, "status")), "SUCCESS") != 0) {
    task_failed(o, rec);
    return;
  }
  const json_t *res = json_object_get(rec, "result");
  json_t *out = json_pack("{s:O*, s:O*, s:O*, s:O*}", "exit_code", json_object_get(res, "exit_code"), "stdout",
                          json_object_get(res, "stdout"), "stderr", json_object_get(res, "stderr"), "timed_out",
                          json_object_get(res, "timed_out"));
  dibba_http_respond_json(o->req, 200, out);
  op_end(o);
}

static void exec_submitted(op_t *o) {
  json_int_t ms = json_integer_value(json_object_get(o->args, "timeout_ms"));
  wait_task(o, (int64_t)ms + WAIT_MS, exec_final);
}

static void exec_go(op_t *o) { submit(o, "pod_exec", o->args, NULL, exec_submitted); }

static void h_exec(dibba_http_req_t *req, void *data) {
  static const char *const keys[] = {"container", "command", "timeout_ms"};
  api_pods_t *ap = data;
  json_t *b = dibba_http_req_json(req);
  if (!json_is_object(b)) {
    reject(req, json_pack("[s]", "body"), "expected an object", "type_error");
    return;
  }
  if (seed_unknown(req, b, json_pack("[s]", "body"), keys, 3) < 0)
    return;
  const json_t *ctr = json_object_get(b, "container"), *cmd = json_object_get(b, "command");
  const json_t *tmo = json_object_get(b, "timeout_ms");
  if (ctr && !json_is_null(ctr) && !(json_is_string(ctr) && dns_label(json_string_value(ctr)))) {
    reject(req, json_pack("[s, s]", "body", "container"), "must be a container name", "value_error");
    return;
  }
  size_t i;
  json_t *v;
  int ok = json_is_array(cmd) && json_array_size(cmd) > 0 && json_array_size(cmd) <= 256;
  json_array_foreach(cmd, i, v) ok = ok && json_is_string(v);
  if (!ok) {
    reject(req, json_pack("[s, s]", "body", "command"), "a non-empty list of strings is required",
           cmd ? "value_error" : "missing");
    return;
  }
  if (tmo && !json_is_null(tmo) &&
      (!json_is_integer(tmo) || json_integer_value(tmo) <= 0 || json_integer_value(tmo) > EXEC_MAX_MS)) {
    reject(req, json_pack("[s, s]", "body", "timeout_ms"), "an integer from 1 to 600000", "value_error");
    return;
  }
  op_t *o = pod_op(ap, req);
  if (!o)
    return;
  o->args = json_pack("{s:s, s:s, s:O, s:I}", "namespace", o->ns, "name", o->name, "command", cmd, "timeout_ms",
                      (json_int_t)(json_is_integer(tmo) ? json_integer_value(tmo) : EXEC_DEFAULT_MS));
  if (json_is_string(ctr))
    json_object_set(o->args, "container", (json_t *)ctr);
  with_host(o, exec_go);
}

/* ---- life cycle ---- */

int api_pods_new(uv_loop_t *loop, const dibba_config_t *cfg, dibba_redis_t *redis, dibba_http_router_t *router,
                 const uint8_t *routing_key, size_t keylen, api_pods_t **out, char *err, size_t errlen) {
  const char *prefix;
  int64_t hb;
  int rc;
  *out = NULL;
  if ((rc = dibba_config_str(cfg, "redis.prefix", "dibba:", &prefix, err, errlen)) < 0 ||
      (rc = dibba_config_int(cfg, "worker.heartbeat_seconds", 5, 1, 3600, &hb, err, errlen)) < 0)
    return rc;
  api_pods_t *ap = dibba_xcalloc(1, sizeof *ap);
  ap->loop = loop;
  ap->r = redis;
  ap->prefix = dibba_xstrdup(prefix);
  ap->hb_ms = hb * 1000;
  if ((rc = dibba_task_key_init(&ap->key, routing_key, keylen)) < 0) {
    dibba_error_set(err, errlen, rc, "task.routing_key: unusable");
    pods_free(ap);
    return rc;
  }
  const dibba_http_route_t routes[] = {
      {.method = "POST",
       .pattern = "/v1/pods",
       .handler = h_create,
       .data = ap,
       .role = DIBBA_ROLE_OPERATOR,
       .body = DIBBA_HTTP_BODY_JSON,
       .summary = "Create a pod (Kubernetes Pod shape) on spec.nodeName or a placed host: 202 {task_id}"},
      {.method = "GET",
       .pattern = "/v1/pods",
       .handler = h_list,
       .data = ap,
       .role = DIBBA_ROLE_VIEWER,
       .summary = "Pods with their status: ?namespace=&host=&labelSelector="},
      {.method = "GET",
       .pattern = "/v1/pods/{ns}/{name}",
       .handler = h_get,
       .data = ap,
       .role = DIBBA_ROLE_VIEWER,
       .summary = "One pod with its status"},
      {.method = "DELETE",
       .pattern = "/v1/pods/{ns}/{name}",
       .handler = h_delete,
       .data = ap,
       .role = DIBBA_ROLE_OPERATOR,
       .summary = "Delete a pod (202 {task_id}; 200 when there is none)"},
      {.method = "GET",
       .pattern = "/v1/pods/{ns}/{name}/logs",
       .handler = h_logs,
       .data = ap,
       .role = DIBBA_ROLE_VIEWER,
       .summary = "A container's log lines as text: ?container=&tailLines=&follow="},
      {.method = "POST",
       .pattern = "/v1/pods/{ns}/{name}/exec",
       .handler = h_exec,
       .data = ap,
       .role = DIBBA_ROLE_OPERATOR,
       .body = DIBBA_HTTP_BODY_JSON,
       .summary = "Run a command in a container: {container, command, timeout_ms} -> {exit_code, stdout, stderr}"},
      {.method = "POST",
       .pattern = "/create-pods",
       .handler = h_seed_create,
       .data = ap,
       .role = DIBBA_ROLE_OPERATOR,
       .body = DIBBA_HTTP_BODY_JSON,
       .summary = "Seed shape {host_name, namespace, containers}: one pod named after the first container"},
  };
  for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
    if ((rc = dibba_http_router_add(router, &routes[i])) < 0) {
      /* Routes already added point at ap: a failed start stops the daemon before any request is served. */
      dibba_error_set(err, errlen, rc, "route %s %s", routes[i].method, routes[i].pattern);
      pods_free(ap);
      return rc;
    }
  *out = ap;
  return 0;
}

void api_pods_close(api_pods_t *ap) {
  if (ap == NULL || ap->closed)
    return;
  ap->closed = 1;
  for (op_t *o = ap->ops, *next; o; o = next) {
    next = o->next;
    op_end(o);
  }
  if (ap->inflight == 0)
    pods_free(ap);
}
