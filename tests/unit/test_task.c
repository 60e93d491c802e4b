/* SPDX-License-Identifier: Apache-2.0 */
/* Unit tests for lib/task (routes, envelopes, states, plugins) and lib/core/pbjson.c (the JSON converter). */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <uv.h>

#include "dibba/alloc.h"
#include "dibba/error.h"
#include "dibba/log.h"
#include "dibba/pbjson.h"
#include "dibba/route.h"
#include "dibba/task.h"
#include "dibba/task_registry.h"
#include "pod.pb-c.h"
#include "task.pb-c.h"
#include "tests/unit/plugins/test_plugins.h"

static const char KEY[] = "0123456789abcdef0123456789abcdef";

static void key_init(dibba_task_key_t *k) { ck_assert_int_eq(dibba_task_key_init(k, KEY, strlen(KEY)), 0); }

/* ---- routes ---- */

START_TEST(route_known_answer) {
  dibba_task_key_t k;
  char r[DIBBA_ROUTE_LEN + 1];
  key_init(&k);
  /* Computed independently:
   *   printf 'route\0worker-1.example.com' | openssl dgst -sha256 -hmac 0123456789abcdef0123456789abcdef -binary \
   *     | python3 -c "import sys,base64;print(base64.b32encode(sys.stdin.buffer.read()).decode().lower()[:26])"
   * and the same with 'role\0control'. */
  ck_assert_int_eq(dibba_route_host(&k, "worker-1.example.com", r), 0);
  ck_assert_str_eq(r, "berdjmtrpafnljadnlyl5fkyc2");
  ck_assert_int_eq(dibba_route_role(&k, "control", r), 0);
  ck_assert_str_eq(r, "cl7ft6eal42wqspyyfudqvdqka");
  ck_assert(dibba_route_valid(r));
  dibba_task_key_free(&k);
  dibba_task_key_free(&k);
}
END_TEST

START_TEST(route_determinism_and_separation) {
  dibba_task_key_t k, k2;
  char a[DIBBA_ROUTE_LEN + 1], b[DIBBA_ROUTE_LEN + 1];
  key_init(&k);
  ck_assert_int_eq(dibba_task_key_init(&k2, "another secret key of 32 bytes!!", 32), 0);
  ck_assert_int_eq(dibba_route_host(&k, "node1", a), 0);
  ck_assert_int_eq(dibba_route_host(&k, "node1", b), 0);
  ck_assert_str_eq(a, b);
  ck_assert_int_eq(dibba_route_host(&k, "NODE1.", b), 0); /* DNS names are case-insensitive */
  ck_assert_str_eq(a, b);
  ck_assert_int_eq(dibba_route_host(&k, "node2", b), 0);
  ck_assert_str_ne(a, b);
  ck_assert_int_eq(dibba_route_host(&k2, "node1", b), 0);
  ck_assert_str_ne(a, b);
  /* a host named like a role never shares the role's stream */
  ck_assert_int_eq(dibba_route_host(&k, "control", a), 0);
  ck_assert_int_eq(dibba_route_role(&k, "control", b), 0);
  ck_assert_str_ne(a, b);
  /* the MAC key is neither the secret nor a route */
  ck_assert(memcmp(k.mac_key, KEY, 32) != 0);
  ck_assert_int_eq(dibba_route_host(&k, "", a), -EINVAL);
  ck_assert_int_eq(dibba_route_host(&k, "bad host", a), -EINVAL);
  ck_assert_int_eq(dibba_route_role(&k, "Control", a), -EINVAL);
  char longname[300];
  memset(longname, 'a', sizeof longname - 1);
  longname[sizeof longname - 1] = '\0';
  ck_assert_int_eq(dibba_route_host(&k, longname, a), -EINVAL);
  dibba_task_key_free(&k2);
  ck_assert_int_eq(dibba_task_key_init(&k2, "short", 5), -EINVAL);
  char sk[64];
  ck_assert_int_eq(dibba_route_role(&k, "aws", a), 0);
  ck_assert_int_eq(dibba_route_stream_key("dibba:", a, sk, sizeof sk), 0);
  ck_assert_int_eq(strncmp(sk, "dibba:q:", 8), 0);
  ck_assert_str_eq(sk + 8, a);
  ck_assert_int_eq(dibba_route_stream_key("dibba:", a, sk, 20), -ENAMETOOLONG);
  ck_assert_int_eq(dibba_route_stream_key("dibba:", "node1", sk, sizeof sk), -EINVAL);
  dibba_task_key_free(&k);
  dibba_task_key_free(&k2);
}
END_TEST

/* ---- envelopes ---- */

#define NOW 1700000000000LL

static void make_env(Dibba__V1__TaskEnvelope *env, Dibba__V1__SleepArgs *args, char *route) {
  dibba__v1__task_envelope__init(env);
  dibba__v1__sleep_args__init(args);
  args->ms = 5;
  env->id = "6f1c2a4e-8b7d-4c1e-9f3a-2b5d7e9c1a3f";
  env->name = "test.sleep";
  env->issued_at_ms = NOW;
  env->expires_at_ms = NOW + 60000;
  env->max_retries = 3;
  env->route = route;
  env->args_case = DIBBA__V1__TASK_ENVELOPE__ARGS_SLEEP;
  env->sleep = args;
}

static void remac(const dibba_task_key_t *k, const uint8_t *e, size_t n, uint8_t m[32]) {
  unsigned int ml = 0;
  ck_assert_ptr_nonnull(HMAC(EVP_sha256(), k->mac_key, 32, e, n, m, &ml));
}

START_TEST(envelope_round_trip_and_rejections) {
  dibba_task_key_t k;
  char route[DIBBA_ROUTE_LEN + 1], other[DIBBA_ROUTE_LEN + 1];
  Dibba__V1__TaskEnvelope env, *got = NULL;
  Dibba__V1__SleepArgs args;
  dibba_envelope_wire_t w;
  key_init(&k);
  ck_assert_int_eq(dibba_route_host(&k, "node1", route), 0);
  ck_assert_int_eq(dibba_route_host(&k, "node2", other), 0);
  make_env(&env, &args, route);
  ck_assert_int_eq(dibba_envelope_seal(&k, &env, &w), 0);
  ck_assert_uint_gt(w.elen, 0);

  ck_assert_int_eq(dibba_envelope_open(&k, w.e, w.elen, w.m, sizeof w.m, route, NOW + 1, &got), 0);
  ck_assert_str_eq(got->id, env.id);
  ck_assert_str_eq(got->name, "test.sleep");
  ck_assert_int_eq(got->args_case, DIBBA__V1__TASK_ENVELOPE__ARGS_SLEEP);
  ck_assert_uint_eq(got->sleep->ms, 5);
  ck_assert_int_eq(got->expires_at_ms, NOW + 60000);
  dibba_envelope_free(got);

  /* one flipped bit anywhere in the envelope or the MAC */
  for (size_t i = 0; i < w.elen; i++) {
    for (int bit = 0; bit < 8; bit++) {
      w.e[i] ^= (uint8_t)(1u << bit);
      ck_assert_int_eq(dibba_envelope_open(&k, w.e, w.elen, w.m, sizeof w.m, route, NOW, &got), DIBBA_EFORGED);
      ck_assert_ptr_null(got);
      w.e[i] ^= (uint8_t)(1u << bit);
    }
  }
  for (size_t i = 0; i < sizeof w.m; i++) {
    w.m[i] ^= 0x80;
    ck_assert_int_eq(dibba_envelope_open(&k, w.e, w.elen, w.m, sizeof w.m, route, NOW, &got), DIBBA_EFORGED);
    w.m[i] ^= 0x80;
  }
  ck_assert_int_eq(dibba_envelope_open(&k, w.e, w.elen, w.m, 31, route, NOW, &got), DIBBA_EFORGED);
  /* a different key */
  dibba_task_key_t k2;
  ck_assert_int_eq(dibba_task_key_init(&k2, "another secret key of 32 bytes!!", 32), 0);
  ck_assert_int_eq(dibba_envelope_open(&k2, w.e, w.elen, w.m, sizeof w.m, route, NOW, &got), DIBBA_EFORGED);
  dibba_task_key_free(&k2);
  /* expiry, replay onto another host's stream, clock skew */
  ck_assert_int_eq(dibba_envelope_open(&k, w.e, w.elen, w.m, sizeof w.m, route, NOW + 60000, &got), DIBBA_EEXPIRED);
  ck_assert_int_eq(dibba_envelope_open(&k, w.e, w.elen, w.m, sizeof w.m, other, NOW, &got), DIBBA_EREPLAY);
  ck_assert_int_eq(
      dibba_envelope_open(&k, w.e, w.elen, w.m, sizeof w.m, route, NOW - DIBBA_ENVELOPE_MAX_SKEW_MS - 1, &got),
      -EINVAL);
  /* truncations: forged without the MAC; malformed (not a crash) when re-MACed with the real key */
  for (size_t n = 1; n < w.elen; n++) {
    uint8_t m[32];
    ck_assert_int_eq(dibba_envelope_open(&k, w.e, n, w.m, sizeof w.m, route, NOW, &got), DIBBA_EFORGED);
    remac(&k, w.e, n, m);
    int r = dibba_envelope_open(&k, w.e, n, m, sizeof m, route, NOW, &got);
    /* a prefix that ends on a field boundary is a well-formed (shorter) envelope */
    ck_assert_msg(r == -EINVAL || r == DIBBA_EREPLAY || r == 0, "prefix %zu gave %d", n, r);
    ck_assert((r == 0) == (got != NULL));
    dibba_envelope_free(got);
    got = NULL;
  }
  ck_assert_int_eq(dibba_envelope_open(&k, w.e, 0, w.m, sizeof w.m, route, NOW, &got), -EINVAL);
  ck_assert_int_eq(dibba_envelope_open(&k, w.e, DIBBA_ENVELOPE_MAX_BYTES + 1, w.m, sizeof w.m, route, NOW, &got),
                   -EINVAL);
  dibba_envelope_wire_free(&w);
  dibba_envelope_wire_free(&w);

  /* garbage with a valid MAC is malformed, not a crash */
  uint8_t junk[64], jm[32];
  memset(junk, 0xff, sizeof junk);
  remac(&k, junk, sizeof junk, jm);
  ck_assert_int_eq(dibba_envelope_open(&k, junk, sizeof junk, jm, sizeof jm, route, NOW, &got), -EINVAL);

  /* too many attempts */
  env.attempt = 4;
  ck_assert_int_eq(dibba_envelope_seal(&k, &env, &w), 0);
  ck_assert_int_eq(dibba_envelope_open(&k, w.e, w.elen, w.m, sizeof w.m, route, NOW, &got), -ELOOP);
  dibba_envelope_wire_free(&w);
  /* seal refuses envelopes without a route or expiry */
  env.attempt = 0;
  env.route = "node1";
  ck_assert_int_eq(dibba_envelope_seal(&k, &env, &w), -EINVAL);
  env.route = route;
  env.expires_at_ms = 0;
  ck_assert_int_eq(dibba_envelope_seal(&k, &env, &w), -EINVAL);
  dibba_task_key_free(&k);
}
END_TEST

/* ---- states ---- */

START_TEST(states_and_transitions) {
  dibba_task_state_t s;
  static const char *all[] = {"PENDING", "RECEIVED", "STARTED", "PROGRESS", "SUCCESS", "FAILURE", "RETRY", "REVOKED"};
  for (int i = 0; i < 8; i++) {
    ck_assert_int_eq(dibba_task_state_parse(all[i], &s), 0);
    ck_assert_int_eq(s, i);
    ck_assert_str_eq(dibba_task_state_name(i), all[i]);
    ck_assert_int_eq(dibba_task_state_is_final(i),
                     i == DIBBA_TASK_SUCCESS || i == DIBBA_TASK_FAILURE || i == DIBBA_TASK_REVOKED);
  }
  ck_assert_int_eq(dibba_task_state_parse("success", &s), -EINVAL);
  ck_assert_str_eq(dibba_task_state_name(99), "UNKNOWN");
  for (int from = 0; from < 8; from++)
    for (int to = 0; to < 8; to++)
      if (dibba_task_state_is_final(from))
        ck_assert(!dibba_task_state_can_transition(from, to));
  ck_assert(dibba_task_state_can_transition(DIBBA_TASK_PENDING, DIBBA_TASK_RECEIVED));
  ck_assert(dibba_task_state_can_transition(DIBBA_TASK_STARTED, DIBBA_TASK_PROGRESS));
  ck_assert(dibba_task_state_can_transition(DIBBA_TASK_PROGRESS, DIBBA_TASK_PROGRESS));
  ck_assert(dibba_task_state_can_transition(DIBBA_TASK_PROGRESS, DIBBA_TASK_SUCCESS));
  ck_assert(dibba_task_state_can_transition(DIBBA_TASK_RETRY, DIBBA_TASK_PENDING));
  ck_assert(!dibba_task_state_can_transition(DIBBA_TASK_PENDING, DIBBA_TASK_SUCCESS));
  ck_assert(!dibba_task_state_can_transition(DIBBA_TASK_STARTED, DIBBA_TASK_PENDING));
  ck_assert(!dibba_task_state_can_transition(-1, DIBBA_TASK_PENDING));
}
END_TEST

START_TEST(backoff_bounds) {
  for (uint32_t a = 0; a < 70; a++) {
    int64_t d = 1000;
    for (uint32_t i = 0; i < a && d < 60000; i++)
      d = d * 2 > 60000 ? 60000 : d * 2;
    for (uint64_t rnd = 0; rnd < 5000; rnd += 7) {
      int64_t b = dibba_task_backoff_ms(a, 1000, 60000, rnd * 2654435761u);
      ck_assert_int_ge(b, d / 2);
      ck_assert_int_le(b, d);
    }
  }
  ck_assert_int_eq(dibba_task_backoff_ms(0, 1000, 60000, 0), 500);
  ck_assert_int_eq(dibba_task_backoff_ms(100, 1000, 60000, 0), 30000);
  ck_assert_int_eq(dibba_task_backoff_ms(3, 0, 60000, 12345), 0);
}
END_TEST

/* ---- pbjson ---- */

static const char POD_JSON[] =
    "{\"apiVersion\":\"v1\",\"kind\":\"Pod\","
    "\"metadata\":{\"name\":\"web\",\"namespace\":\"default\",\"labels\":{\"app\":\"web\",\"tier\":\"front\"}},"
    "\"spec\":{\"nodeName\":\"node1\",\"restartPolicy\":\"OnFailure\",\"terminationGracePeriodSeconds\":\"30\","
    "\"containers\":[{\"name\":\"nginx\",\"image\":\"nginx:1.25\",\"command\":[\"nginx\"],"
    "\"args\":[\"-g\",\"daemon off;\"],\"env\":[{\"name\":\"A\",\"value\":\"1\"}],\"workingDir\":\"/\","
    "\"resources\":{\"limits\":{\"cpu\":\"500m\",\"memory\":\"128Mi\"}},"
    "\"ports\":[{\"containerPort\":80,\"hostPort\":8080,\"protocol\":\"UDP\"}],"
    "\"volumeMounts\":[{\"name\":\"data\",\"mountPath\":\"/data\",\"readOnly\":true}]},"
    "{\"name\":\"side\",\"image\":\"busybox\"}],"
    "\"volumes\":[{\"name\":\"data\",\"hostPath\":{\"path\":\"/srv\",\"type\":\"Directory\"}},"
    "{\"name\":\"tmp\",\"emptyDir\":{}}]}}";

static int parse_pod(const char *text, Dibba__V1__Pod **pod, dibba_pbjson_error_t *err,
                     const dibba_pbjson_limits_t *lim) {
  return dibba_pbjson_parse(text, strlen(text), &dibba__v1__pod__descriptor, lim, (ProtobufCMessage **)pod, err);
}

START_TEST(pbjson_pod_round_trip) {
  Dibba__V1__Pod *pod = NULL;
  dibba_pbjson_error_t err = {0};
  ck_assert_int_eq(parse_pod(POD_JSON, &pod, &err, NULL), 0);
  ck_assert_str_eq(pod->metadata->name, "web");
  ck_assert_uint_eq(pod->metadata->n_labels, 2);
  ck_assert_int_eq(pod->spec->restart_policy, DIBBA__V1__RESTART_POLICY__OnFailure);
  ck_assert_int_eq(pod->spec->termination_grace_period_seconds, 30);
  ck_assert_uint_eq(pod->spec->n_containers, 2);
  Dibba__V1__Container *c = pod->spec->containers[0];
  ck_assert_str_eq(c->args[1], "daemon off;");
  ck_assert_str_eq(c->resources->limits->memory, "128Mi");
  ck_assert_int_eq(c->ports[0]->container_port, 80);
  ck_assert_int_eq(c->ports[0]->protocol, DIBBA__V1__PROTOCOL__UDP);
  ck_assert(c->volume_mounts[0]->read_only);
  ck_assert_int_eq(pod->spec->volumes[1]->source_case, DIBBA__V1__VOLUME__SOURCE_EMPTY_DIR);

  /* protobuf round trip, then back to JSON: equal to the input (zero values omitted, emptyDir kept as {}) */
  size_t n = protobuf_c_message_get_packed_size(&pod->base);
  uint8_t *bytes = dibba_xmalloc(n);
  protobuf_c_message_pack(&pod->base, bytes);
  Dibba__V1__Pod *pod2 = dibba__v1__pod__unpack(NULL, n, bytes);
  ck_assert_ptr_nonnull(pod2);
  json_t *in = json_loads(POD_JSON, 0, NULL);
  json_t *out = dibba_pbjson_from_message(&pod2->base, 0);
  char *s = json_dumps(out, JSON_COMPACT | JSON_SORT_KEYS);
  ck_assert_msg(json_equal(in, out), "round trip differs: %s", s);
  ck_assert_ptr_nonnull(strstr(s, "\"terminationGracePeriodSeconds\":\"30\""));
  ck_assert_ptr_nonnull(strstr(s, "\"restartPolicy\":\"OnFailure\""));
  free(s);
  /* proto names on request, defaults on request */
  json_t *pn = dibba_pbjson_from_message(&pod2->base, DIBBA_PBJSON_PROTO_NAMES | DIBBA_PBJSON_EMIT_DEFAULTS);
  ck_assert_ptr_nonnull(json_object_get(json_object_get(pn, "spec"), "restart_policy"));
  ck_assert_ptr_nonnull(json_object_get(json_object_get(pn, "spec"), "host_network"));
  json_decref(pn);
  json_decref(in);
  json_decref(out);
  free(bytes);
  dibba__v1__pod__free_unpacked(pod2, NULL);
  dibba_pbjson_message_free(&pod->base);
  dibba_pbjson_error_clear(&err);

  /* Kubernetes initialisms and proto names on input */
  Dibba__V1__PodStatus st = DIBBA__V1__POD_STATUS__INIT;
  st.pod_ip = "10.0.0.5";
  st.phase = DIBBA__V1__POD_PHASE__Running;
  char *txt = dibba_pbjson_dumps(&st.base, 0);
  ck_assert_str_eq(txt, "{\"phase\":\"Running\",\"podIP\":\"10.0.0.5\"}");
  free(txt);
  ck_assert_int_eq(
      parse_pod("{\"api_version\":\"v1\",\"status\":{\"pod_ip\":\"1.2.3.4\",\"phase\":1}}", &pod, &err, NULL), 0);
  ck_assert_str_eq(pod->status->pod_ip, "1.2.3.4");
  ck_assert_int_eq(pod->status->phase, DIBBA__V1__POD_PHASE__Running);
  dibba_pbjson_message_free(&pod->base);
}
END_TEST

START_TEST(pbjson_numbers_bytes_oneof) {
  Dibba__V1__TaskEnvelope *env = NULL;
  dibba_pbjson_error_t err = {0};
  const ProtobufCMessageDescriptor *d = &dibba__v1__task_envelope__descriptor;
#define PARSE(s) dibba_pbjson_parse(s, strlen(s), d, NULL, (ProtobufCMessage **)&env, &err)
  ck_assert_int_eq(PARSE("{\"issuedAtMs\":\"-9223372036854775808\",\"expiresAtMs\":1700000000000,\"attempt\":\"7\","
                         "\"podExec\":{\"stdin\":\"aGVsbG8_\",\"command\":[\"ls\"]}}"),
                   0);
  ck_assert_int_eq(env->issued_at_ms, INT64_MIN);
  ck_assert_int_eq(env->expires_at_ms, 1700000000000LL);
  ck_assert_uint_eq(env->attempt, 7);
  ck_assert_int_eq(env->args_case, DIBBA__V1__TASK_ENVELOPE__ARGS_POD_EXEC);
  ck_assert_uint_eq(env->pod_exec->stdin.len, 6);
  ck_assert_int_eq(memcmp(env->pod_exec->stdin.data, "hello?", 6), 0);
  json_t *j = dibba_pbjson_from_message(&env->base, 0);
  ck_assert_str_eq(json_string_value(json_object_get(j, "issuedAtMs")), "-9223372036854775808");
  ck_assert_str_eq(json_string_value(json_object_get(json_object_get(j, "podExec"), "stdin")), "aGVsbG8/");
  json_decref(j);
  dibba_pbjson_message_free(&env->base);

  /* oneof: two members, and a zero-valued member is still written */
  ck_assert_int_eq(PARSE("{\"sleep\":{\"ms\":1},\"argsJson\":\"{}\"}"), -EINVAL);
  ck_assert_str_eq(err.path, "argsJson");
  ck_assert_int_eq(PARSE("{\"sleep\":{}}"), 0);
  j = dibba_pbjson_from_message(&env->base, 0);
  ck_assert(json_is_object(json_object_get(j, "sleep")));
  json_decref(j);
  dibba_pbjson_message_free(&env->base);

  /* ranges and types */
  ck_assert_int_eq(PARSE("{\"attempt\":4294967296}"), -ERANGE);
  ck_assert_str_eq(err.type, "out_of_range");
  ck_assert_int_eq(PARSE("{\"attempt\":-1}"), -ERANGE);
  ck_assert_int_eq(PARSE("{\"attempt\":1.5}"), -EINVAL);
  ck_assert_int_eq(PARSE("{\"attempt\":\"12abc\"}"), -EINVAL);
  ck_assert_int_eq(PARSE("{\"issuedAtMs\":\"9223372036854775808\"}"), -ERANGE);
  ck_assert_int_eq(PARSE("{\"attempt\":true}"), -EINVAL);
  ck_assert_int_eq(PARSE("{\"podExec\":{\"stdin\":\"a\"}}"), -EINVAL);
  ck_assert_str_eq(err.path, "podExec.stdin");
  ck_assert_int_eq(PARSE("{\"id\":\"a\",\"id\":\"b\"}"), -EINVAL); /* duplicate keys */
  ck_assert_str_eq(err.type, "json_invalid");
  ck_assert_int_eq(PARSE("{\"issuedAtMs\":1,\"issued_at_ms\":2}"), -EINVAL);
  ck_assert_int_eq(PARSE("[]"), -EINVAL);
  ck_assert_int_eq(PARSE("{\"id\":null,\"attempt\":3.0}"), 0);
  ck_assert_uint_eq(env->attempt, 3);
  dibba_pbjson_message_free(&env->base);
  ck_assert_int_eq(PARSE("{"), -EINVAL);
  ck_assert_str_eq(err.type, "json_invalid");
#undef PARSE
  dibba_pbjson_error_clear(&err);
  dibba_pbjson_error_clear(&err);

  /* uint64 extremes as strings */
  Dibba__V1__TaskProgress *p = NULL;
  const char *big = "{\"current\":\"18446744073709551615\",\"total\":5}";
  ck_assert_int_eq(
      dibba_pbjson_parse(big, strlen(big), &dibba__v1__task_progress__descriptor, NULL, (ProtobufCMessage **)&p, &err),
      0);
  ck_assert(p->current == UINT64_MAX);
  char *s = dibba_pbjson_dumps(&p->base, 0);
  ck_assert_str_eq(s, "{\"current\":\"18446744073709551615\",\"total\":\"5\"}");
  free(s);
  dibba_pbjson_message_free(&p->base);
  big = "{\"current\":\"18446744073709551616\"}";
  ck_assert_int_eq(
      dibba_pbjson_parse(big, strlen(big), &dibba__v1__task_progress__descriptor, NULL, (ProtobufCMessage **)&p, &err),
      -ERANGE);
  ck_assert_ptr_null(p);
  dibba_pbjson_error_clear(&err);
}
END_TEST

START_TEST(pbjson_errors_name_the_path) {
  Dibba__V1__Pod *pod = NULL;
  dibba_pbjson_error_t err = {0};
  ck_assert_int_eq(
      parse_pod("{\"spec\":{\"containers\":[{\"name\":\"a\"},{\"name\":\"b\",\"imagee\":\"x\"}]}}", &pod, &err, NULL),
      -EINVAL);
  ck_assert_ptr_null(pod);
  ck_assert_str_eq(err.path, "spec.containers[1].imagee");
  ck_assert_str_eq(err.type, "extra_forbidden");
  char *loc = json_dumps(err.loc, JSON_COMPACT);
  ck_assert_str_eq(loc, "[\"spec\",\"containers\",1,\"imagee\"]");
  free(loc);

  ck_assert_int_eq(
      parse_pod("{\"spec\":{\"containers\":[{\"resources\":{\"limits\":{\"memory\":128}}}]}}", &pod, &err, NULL),
      -EINVAL);
  ck_assert_str_eq(err.path, "spec.containers[0].resources.limits.memory");
  ck_assert_str_eq(err.type, "type_error");
  ck_assert_ptr_nonnull(strstr(err.msg, "string"));

  ck_assert_int_eq(parse_pod("{\"spec\":{\"restartPolicy\":\"Sometimes\"}}", &pod, &err, NULL), -EINVAL);
  ck_assert_str_eq(err.path, "spec.restartPolicy");
  ck_assert_ptr_nonnull(strstr(err.msg, "OnFailure"));
  ck_assert_int_eq(parse_pod("{\"spec\":{\"restartPolicy\":9}}", &pod, &err, NULL), -EINVAL);
  ck_assert_int_eq(
      parse_pod("{\"spec\":{\"containers\":[{\"ports\":[{\"containerPort\":2147483648}]}]}}", &pod, &err, NULL),
      -ERANGE);
  ck_assert_str_eq(err.path, "spec.containers[0].ports[0].containerPort");
  ck_assert_int_eq(parse_pod("{\"metadata\":{\"labels\":{\"a\":1}}}", &pod, &err, NULL), -EINVAL);
  ck_assert_str_eq(err.path, "metadata.labels.a");
  ck_assert_int_eq(parse_pod("{\"spec\":{\"containers\":[null]}}", &pod, &err, NULL), -EINVAL);
  ck_assert_int_eq(parse_pod("{\"spec\":{\"containers\":{}}}", &pod, &err, NULL), -EINVAL);
  ck_assert_str_eq(err.path, "spec.containers");

  /* caps: depth, string, array, text */
  dibba_pbjson_limits_t lim = {.max_depth = 2};
  ck_assert_int_eq(parse_pod(POD_JSON, &pod, &err, &lim), -E2BIG);
  ck_assert_str_eq(err.type, "too_deep");
  ck_assert_str_eq(err.path, "spec.containers[0]");
  lim = (dibba_pbjson_limits_t){.max_string = 4};
  ck_assert_int_eq(parse_pod("{\"metadata\":{\"name\":\"12345\"}}", &pod, &err, &lim), -E2BIG);
  ck_assert_str_eq(err.path, "metadata.name");
  ck_assert_str_eq(err.type, "too_long");
  lim = (dibba_pbjson_limits_t){.max_array = 1};
  ck_assert_int_eq(parse_pod(POD_JSON, &pod, &err, &lim), -E2BIG);
  ck_assert_str_eq(err.path, "metadata.labels");
  lim = (dibba_pbjson_limits_t){.max_text = 10};
  ck_assert_int_eq(parse_pod(POD_JSON, &pod, &err, &lim), -E2BIG);
  ck_assert_ptr_null(pod);
  /* a very long unknown key is cut in the path */
  char body[400];
  snprintf(body, sizeof body, "{\"%0200d\":1}", 7);
  ck_assert_int_eq(parse_pod(body, &pod, &err, NULL), -EINVAL);
  ck_assert_uint_eq(strlen(err.path), 64);
  /* a string with NUL is refused */
  ck_assert_int_eq(parse_pod("{\"kind\":\"a\\u0000b\"}", &pod, &err, NULL), -EINVAL);
  dibba_pbjson_error_clear(&err);
}
END_TEST

START_TEST(pbjson_names_and_base64) {
  char n[64];
  dibba_pbjson_json_name("restart_policy", n, sizeof n);
  ck_assert_str_eq(n, "restartPolicy");
  dibba_pbjson_json_name("pod_ip", n, sizeof n);
  ck_assert_str_eq(n, "podIP");
  dibba_pbjson_json_name("pod_ips", n, sizeof n);
  ck_assert_str_eq(n, "podIPs");
  dibba_pbjson_json_name("ip", n, sizeof n);
  ck_assert_str_eq(n, "ip");
  dibba_pbjson_json_name("load15", n, sizeof n);
  ck_assert_str_eq(n, "load15");
  static const char *vec[][2] = {{"", ""}, {"f", "Zg=="}, {"fo", "Zm8="}, {"foo", "Zm9v"}, {"foob", "Zm9vYg=="}};
  for (size_t i = 0; i < 5; i++) {
    char *e = dibba_base64_encode(vec[i][0], strlen(vec[i][0]));
    ck_assert_str_eq(e, vec[i][1]);
    free(e);
    unsigned char *dec;
    size_t dl;
    ck_assert_int_eq(dibba_base64_decode(vec[i][1], strlen(vec[i][1]), &dec, &dl), 0);
    ck_assert_uint_eq(dl, strlen(vec[i][0]));
    ck_assert_int_eq(memcmp(dec, vec[i][0], dl), 0);
    free(dec);
  }
  unsigned char *dec;
  size_t dl;
  ck_assert_int_eq(dibba_base64_decode("Zm9vYg", 6, &dec, &dl), 0); /* unpadded */
  ck_assert_uint_eq(dl, 4);
  free(dec);
  ck_assert_int_eq(dibba_base64_decode("Zm9v Yg", 7, &dec, &dl), -EINVAL);
  ck_assert_int_eq(dibba_base64_decode("Zh==", 4, &dec, &dl), -EINVAL); /* non-canonical */
}
END_TEST

/* ---- plugins ---- */

static int done_calls, progress_calls;
static void on_done(dibba_task_run_t *r) { done_calls++; }
static void on_progress(dibba_task_run_t *r, uint64_t cur, uint64_t total, const char *msg) { progress_calls++; }

START_TEST(plugin_load_and_run) {
  uv_loop_t loop;
  dibba_task_registry_t reg;
  char err[512];
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  dibba_task_registry_init(&reg, &loop, "node1");
  ck_assert_int_eq(dibba_plugin_load(&reg, TEST_PLUGIN_GOOD, NULL, err, sizeof err), 0);
  ck_assert_ptr_nonnull(dibba_task_lookup(&reg, "test.echo"));
  ck_assert_ptr_nonnull(dibba_task_lookup(&reg, "test.sleep"));
  ck_assert_ptr_null(dibba_task_lookup(&reg, "test.nope"));
  ck_assert_int_eq(dibba_plugin_load(&reg, TEST_PLUGIN_GOOD, NULL, err, sizeof err), -EEXIST);

  /* built-in duplicate and invalid names */
  dibba_task_handler_t h = {.name = "test.echo", .run = (int (*)(dibba_task_ctx_t *))abort};
  ck_assert_int_eq(dibba_task_register(&reg, &h), -EEXIST);
  h.name = "Bad Name";
  ck_assert_int_eq(dibba_task_register(&reg, &h), -EINVAL);

  /* echo: args_json, completes synchronously */
  Dibba__V1__TaskEnvelope env = DIBBA__V1__TASK_ENVELOPE__INIT;
  env.id = "t1";
  env.name = "test.echo";
  env.args_case = DIBBA__V1__TASK_ENVELOPE__ARGS_ARGS_JSON;
  env.args_json = "{\"x\":1}";
  dibba_task_run_t run;
  done_calls = 0;
  ck_assert_int_eq(dibba_task_run_start(&run, &reg, &env, NULL, on_done, NULL, err, sizeof err), 0);
  ck_assert_int_eq(done_calls, 1);
  ck_assert_int_eq(run.state, DIBBA_TASK_SUCCESS);
  ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(run.result, "args"), "x")), 1);
  ck_assert_int_eq(dibba_task_complete(&run.ctx, NULL), -EALREADY);
  dibba_task_run_free(&run);
  dibba_task_run_free(&run);

  /* sleep: typed args, a timer on the loop, progress, then success */
  Dibba__V1__SleepArgs sa = DIBBA__V1__SLEEP_ARGS__INIT;
  sa.ms = 1;
  env.name = "test.sleep";
  env.args_case = DIBBA__V1__TASK_ENVELOPE__ARGS_SLEEP;
  env.sleep = &sa;
  done_calls = progress_calls = 0;
  ck_assert_int_eq(dibba_task_run_start(&run, &reg, &env, NULL, on_done, NULL, err, sizeof err), 0);
  run.on_progress = on_progress;
  ck_assert_int_eq(done_calls, 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(done_calls, 1);
  ck_assert_int_eq(progress_calls, 1);
  ck_assert_int_eq(run.state, DIBBA_TASK_SUCCESS);
  dibba_task_run_free(&run);

  /* sleep via args_json is validated into SleepArgs; a bad field is refused with its path */
  env.args_case = DIBBA__V1__TASK_ENVELOPE__ARGS_ARGS_JSON;
  env.args_json = "{\"ms\":1,\"fail\":true}";
  ck_assert_int_eq(dibba_task_run_start(&run, &reg, &env, NULL, on_done, NULL, err, sizeof err), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(run.state, DIBBA_TASK_FAILURE);
  ck_assert_str_eq(run.error_code, "EIO");
  dibba_task_run_free(&run);
  env.args_json = "{\"ms\":\"soon\"}";
  ck_assert_int_eq(dibba_task_run_start(&run, &reg, &env, NULL, on_done, NULL, err, sizeof err), -EINVAL);
  ck_assert_ptr_nonnull(strstr(err, "args.ms"));
  /* typed args of the wrong type */
  Dibba__V1__PodRef ref = DIBBA__V1__POD_REF__INIT;
  env.args_case = DIBBA__V1__TASK_ENVELOPE__ARGS_POD;
  env.pod = &ref;
  ck_assert_int_eq(dibba_task_run_start(&run, &reg, &env, NULL, on_done, NULL, err, sizeof err), -EINVAL);

  /* cancel a long sleep: REVOKED */
  sa.ms = 60000;
  env.args_case = DIBBA__V1__TASK_ENVELOPE__ARGS_SLEEP;
  env.sleep = &sa;
  done_calls = 0;
  ck_assert_int_eq(dibba_task_run_start(&run, &reg, &env, NULL, on_done, NULL, err, sizeof err), 0);
  ck_assert_int_eq(dibba_task_run_cancel(&run), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(done_calls, 1);
  ck_assert_int_eq(run.state, DIBBA_TASK_REVOKED);
  ck_assert_int_eq(dibba_task_run_cancel(&run), -EALREADY);
  dibba_task_run_free(&run);

  env.name = "test.unknown";
  ck_assert_int_eq(dibba_task_run_start(&run, &reg, &env, NULL, on_done, NULL, err, sizeof err), -ENOENT);

  dibba_task_registry_free(&reg);
  dibba_task_registry_free(&reg);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
}
END_TEST

START_TEST(plugin_rejections) {
  uv_loop_t loop;
  dibba_task_registry_t reg;
  char err[512];
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  dibba_task_registry_init(&reg, &loop, NULL);
  ck_assert_int_eq(dibba_plugin_load(&reg, TEST_PLUGIN_BADABI, NULL, err, sizeof err), -EPROTO);
  ck_assert_ptr_nonnull(strstr(err, "ABI version"));
  ck_assert_int_eq(dibba_plugin_load(&reg, TEST_PLUGIN_DUP, NULL, err, sizeof err), -EEXIST);
  ck_assert_ptr_nonnull(strstr(err, "duplicate"));
  ck_assert_ptr_null(dibba_task_lookup(&reg, "test.echo")); /* nothing of a failed load stays */
  ck_assert_int_eq(dibba_plugin_load(&reg, "/nonexistent/plugin.so", NULL, err, sizeof err), -ENOENT);
  ck_assert_int_eq(reg.nplugins, 0);
  ck_assert_int_eq(reg.ntasks, 0);
  dibba_task_registry_free(&reg);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
}
END_TEST

static Suite *task_suite(void) {
  Suite *s = suite_create("task");
  TCase *tc = tcase_create("route");
  tcase_add_test(tc, route_known_answer);
  tcase_add_test(tc, route_determinism_and_separation);
  suite_add_tcase(s, tc);
  tc = tcase_create("envelope");
  tcase_add_test(tc, envelope_round_trip_and_rejections);
  suite_add_tcase(s, tc);
  tc = tcase_create("states");
  tcase_add_test(tc, states_and_transitions);
  tcase_add_test(tc, backoff_bounds);
  suite_add_tcase(s, tc);
  tc = tcase_create("pbjson");
  tcase_add_test(tc, pbjson_pod_round_trip);
  tcase_add_test(tc, pbjson_numbers_bytes_oneof);
  tcase_add_test(tc, pbjson_errors_name_the_path);
  tcase_add_test(tc, pbjson_names_and_base64);
  suite_add_tcase(s, tc);
  tc = tcase_create("plugin");
  tcase_add_test(tc, plugin_load_and_run);
  tcase_add_test(tc, plugin_rejections);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  dibba_alloc_init();
  dibba_log_open("error", NULL);
  SRunner *sr = srunner_create(task_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
