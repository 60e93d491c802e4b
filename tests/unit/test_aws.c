/* SPDX-License-Identifier: Apache-2.0 */
/* Unit tests for lib/aws: SigV4 against AWS's published test suite, EC2 XML parsing, form parameters, and the
 * libcurl-on-libuv client against a tiny libuv HTTP server in the same loop. */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "dibba/error.h"

#ifdef DIBBA_HAVE_AWS
#include "dibba/aws.h"

/* ---- SigV4: vectors from AWS's aws-sig-v4-test-suite (credentials AKIDEXAMPLE, 20150830T123600Z, us-east-1,
 * service "service"). Expected canonical request, string to sign and Authorization are the published ones. */

typedef struct vector_s {
  const char *name;
  const char *method;
  const char *query;
  const char *content_type; /* NULL: not sent */
  const char *body;
  const char *creq;
  const char *sts;
  const char *authz;
} vector_t;

#define EMPTY_HASH "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
#define CRED "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "

static const vector_t vectors[] = {
    {"get-vanilla", "GET", NULL, NULL, "",
     "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n" EMPTY_HASH,
     "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n"
     "bb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63",
     CRED "SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"},
    {"get-vanilla-query-order-key-case", "GET", "Param2=value2&Param1=value1", NULL, "",
     "GET\n/\nParam1=value1&Param2=value2\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\n"
     "host;x-amz-date\n" EMPTY_HASH,
     "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n"
     "816cd5b414d056048ba4f7c5386d6e0533120fb1fcfa93762cf0fc39e2cf19e0",
     CRED "SignedHeaders=host;x-amz-date, Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"},
    {"post-vanilla", "POST", NULL, NULL, "",
     "POST\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n" EMPTY_HASH,
     "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n"
     "553f88c9e4d10fc9e109e2aeb65f030801b70c2f6468faca261d401ae622fc87",
     CRED "SignedHeaders=host;x-amz-date, Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"},
    {"post-x-www-form-urlencoded", "POST", NULL, "application/x-www-form-urlencoded", "Param1=value1",
     "POST\n/\n\ncontent-type:application/x-www-form-urlencoded\nhost:example.amazonaws.com\n"
     "x-amz-date:20150830T123600Z\n\ncontent-type;host;x-amz-date\n"
     "9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e",
     "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n"
     "42a5e5bb34198acb3e84da4f085bb7927f2bc277ca766e6d19c73c2154021281",
     CRED "SignedHeaders=content-type;host;x-amz-date, "
          "Signature=ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a"},
};

static const dibba_aws_sigv4_key_t example_key = {.access_key_id = "AKIDEXAMPLE",
                                                  .secret_access_key = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                                                  .region = "us-east-1",
                                                  .service = "service",
                                                  .amz_date = "20150830T123600Z"};

START_TEST(sigv4_vectors) {
  const vector_t *v = &vectors[_i];
  /* The suite's headers, in the suite's own (mixed) case and order. */
  dibba_aws_header_t hs[3];
  size_t nh = 0;
  if (v->content_type)
    hs[nh++] = (dibba_aws_header_t){"Content-Type", v->content_type};
  hs[nh++] = (dibba_aws_header_t){"Host", "example.amazonaws.com"};
  hs[nh++] = (dibba_aws_header_t){"X-Amz-Date", "20150830T123600Z"};
  dibba_aws_sigv4_req_t req = {.method = v->method,
                               .path = "/",
                               .query = v->query,
                               .headers = hs,
                               .nheaders = nh,
                               .payload = v->body,
                               .payload_len = strlen(v->body)};
  dibba_aws_sigv4_t s;
  ck_assert_int_eq(dibba_aws_sigv4_sign(&req, &example_key, &s), 0);
  ck_assert_msg(strcmp(s.canonical_request, v->creq) == 0, "%s creq:\n%s", v->name, s.canonical_request);
  ck_assert_msg(strcmp(s.string_to_sign, v->sts) == 0, "%s sts:\n%s", v->name, s.string_to_sign);
  ck_assert_msg(strcmp(s.authorization, v->authz) == 0, "%s authz:\n%s", v->name, s.authorization);
  dibba_aws_sigv4_free(&s);
  dibba_aws_sigv4_free(&s); /* safe twice */
}
END_TEST

START_TEST(sigv4_header_folding_and_token) {
  /* Header names are case-insensitive, values trimmed with inner spaces folded; the token header is signed. */
  dibba_aws_header_t hs[] = {{"X-Amz-Date", "20150830T123600Z"},
                             {"host", "  example.amazonaws.com "},
                             {"My-Header1", "  a   b   c  "},
                             {"X-Amz-Security-Token", "TOKEN"}};
  dibba_aws_sigv4_req_t req = {.method = "GET", .headers = hs, .nheaders = 4};
  dibba_aws_sigv4_t s;
  ck_assert_int_eq(dibba_aws_sigv4_sign(&req, &example_key, &s), 0);
  ck_assert_str_eq(s.signed_headers, "host;my-header1;x-amz-date;x-amz-security-token");
  ck_assert_ptr_nonnull(strstr(s.canonical_request, "\nmy-header1:a b c\n"));
  ck_assert_ptr_nonnull(strstr(s.canonical_request, "\nx-amz-security-token:TOKEN\n"));
  ck_assert_ptr_null(strstr(s.authorization, example_key.secret_access_key));
  dibba_aws_sigv4_free(&s);

  dibba_aws_header_t bad[] = {{"Bad:Name", "x"}};
  req.headers = bad;
  req.nheaders = 1;
  ck_assert_int_eq(dibba_aws_sigv4_sign(&req, &example_key, &s), -EINVAL);
  dibba_aws_sigv4_key_t k = example_key;
  k.amz_date = "2015-08-30";
  req.nheaders = 0;
  ck_assert_int_eq(dibba_aws_sigv4_sign(&req, &k, &s), -EINVAL);
  req.query = "a=%zz";
  ck_assert_int_eq(dibba_aws_sigv4_sign(&req, &example_key, &s), -EINVAL);
}
END_TEST

START_TEST(uri_encode_and_params) {
  dibba_buf_t b;
  dibba_buf_init(&b, 0);
  ck_assert_int_eq(dibba_aws_uri_encode(&b, "a b/~+=", 7, 0), 0);
  ck_assert_str_eq(b.data, "a%20b%2F~%2B%3D");
  dibba_buf_free(&b);

  dibba_ec2_params_t p;
  dibba_ec2_params_init(&p, "RunInstances");
  ck_assert_int_eq(dibba_ec2_params_add(&p, "ami-1", "ImageId"), 0);
  ck_assert_int_eq(dibba_ec2_params_add(&p, "dibba:managed", "TagSpecification.1.Tag.%d.Key", 3), 0);
  ck_assert_int_eq(dibba_ec2_params_add(&p, "#!/bin/sh\necho hi", "UserData"), 0);
  ck_assert_str_eq(p.body.data, "Action=RunInstances&Version=2016-11-15&ImageId=ami-1"
                                "&TagSpecification.1.Tag.3.Key=dibba%3Amanaged&UserData=%23%21%2Fbin%2Fsh%0Aecho%20hi");
  dibba_ec2_params_free(&p);
  dibba_ec2_params_free(&p);
}
END_TEST

/* ---- XML ---- */

static const char run_xml[] =
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
    "<RunInstancesResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\n"
    "  <requestId>r-1</requestId><reservationId>r-abc</reservationId>\n"
    "  <groupSet><item><groupId>sg-1</groupId></item></groupSet>\n"
    "  <instancesSet>\n"
    "    <item><instanceId>i-0001</instanceId><imageId>ami-1</imageId>\n"
    "      <instanceState><code>0</code><name>pending</name></instanceState>\n"
    "      <privateDnsName>ip-10-0-0-5.ec2.internal</privateDnsName>\n"
    "      <launchTime>2024-01-02T03:04:05.000Z</launchTime>\n"
    "      <privateIpAddress>10.0.0.5</privateIpAddress>\n"
    "      <networkInterfaceSet><item><privateIpAddress>10.9.9.9</privateIpAddress></item></networkInterfaceSet>\n"
    "    </item>\n"
    "    <item><instanceId>i-0002</instanceId>\n"
    "      <instanceState><code>0</code><name>pending</name></instanceState>\n"
    "    </item>\n"
    "  </instancesSet>\n"
    "</RunInstancesResponse>\n";

static const char describe_xml[] =
    "<DescribeInstancesResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>x</requestId>"
    "<reservationSet><item><reservationId>r-1</reservationId><instancesSet>"
    "<item><instanceId>i-0001</instanceId><instanceState><code>16</code><name>running</name></instanceState>"
    "<privateIpAddress>10.0.0.5</privateIpAddress><privateDnsName>ip-10-0-0-5</privateDnsName></item>"
    "</instancesSet></item><item><instancesSet>"
    "<item><instanceId>i-0002</instanceId><instanceState><code>0</code><name>pending</name></instanceState></item>"
    "</instancesSet></item></reservationSet><nextToken>tok-2</nextToken></DescribeInstancesResponse>";

static const char terminate_xml[] =
    "<TerminateInstancesResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><instancesSet><item>"
    "<instanceId>i-0001</instanceId><currentState><code>32</code><name>shutting-down</name></currentState>"
    "<previousState><code>16</code><name>running</name></previousState></item></instancesSet>"
    "</TerminateInstancesResponse>";

static const char error_xml[] = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error>"
                                "<Code>InsufficientInstanceCapacity</Code><Message>We currently do not have "
                                "sufficient capacity.</Message></Error></Errors><RequestID>r</RequestID></Response>";

START_TEST(xml_run_describe_terminate) {
  dibba_ec2_instance_t *v;
  size_t n;
  char next[64];
  ck_assert_int_eq(dibba_ec2_parse_instances(run_xml, strlen(run_xml), &v, &n, next, sizeof next), 0);
  ck_assert_uint_eq(n, 2);
  ck_assert_str_eq(v[0].id, "i-0001");
  ck_assert_str_eq(v[0].state, "pending");
  ck_assert_str_eq(v[0].private_ip, "10.0.0.5"); /* not the network interface's */
  ck_assert_str_eq(v[0].private_dns, "ip-10-0-0-5.ec2.internal");
  ck_assert_str_eq(v[0].launch_time, "2024-01-02T03:04:05.000Z");
  ck_assert_str_eq(v[1].id, "i-0002");
  ck_assert_str_eq(v[1].private_ip, "");
  ck_assert_str_eq(next, "");
  free(v);

  ck_assert_int_eq(dibba_ec2_parse_instances(describe_xml, strlen(describe_xml), &v, &n, next, sizeof next), 0);
  ck_assert_uint_eq(n, 2);
  ck_assert_str_eq(v[0].state, "running");
  ck_assert_str_eq(v[0].private_dns, "ip-10-0-0-5");
  ck_assert_str_eq(v[1].state, "pending");
  ck_assert_str_eq(next, "tok-2");
  free(v);

  ck_assert_int_eq(dibba_ec2_parse_instances(terminate_xml, strlen(terminate_xml), &v, &n, NULL, 0), 0);
  ck_assert_uint_eq(n, 1);
  ck_assert_str_eq(v[0].state, "shutting-down");
  free(v);
}
END_TEST

START_TEST(xml_errors_and_hostile_input) {
  char code[64], msg[128];
  ck_assert_int_eq(dibba_ec2_parse_error(error_xml, strlen(error_xml), code, sizeof code, msg, sizeof msg), 0);
  ck_assert_str_eq(code, "InsufficientInstanceCapacity");
  ck_assert_str_eq(msg, "We currently do not have sufficient capacity.");
  ck_assert_int_eq(dibba_ec2_parse_error(run_xml, strlen(run_xml), code, sizeof code, msg, sizeof msg), -ENOENT);

  dibba_ec2_instance_t *v;
  size_t n;
  ck_assert_int_eq(dibba_ec2_parse_instances("not xml", 7, &v, &n, NULL, 0), DIBBA_EPROTO);
  ck_assert_int_eq(dibba_ec2_parse_instances("", 0, &v, &n, NULL, 0), DIBBA_EPROTO);
  ck_assert_int_eq(dibba_ec2_parse_instances("<a/>", DIBBA_EC2_XML_MAX + 1, &v, &n, NULL, 0), -EFBIG);
  /* An item without an id is a protocol error, not an empty instance. */
  const char *noid = "<R><instancesSet><item><instanceState><name>x</name></instanceState></item></instancesSet></R>";
  ck_assert_int_eq(dibba_ec2_parse_instances(noid, strlen(noid), &v, &n, NULL, 0), DIBBA_EPROTO);
  /* External entities are neither fetched nor substituted: the message keeps no file content. */
  const char *xxe = "<?xml version=\"1.0\"?><!DOCTYPE r [<!ENTITY e SYSTEM \"file:///etc/passwd\">]>"
                    "<Response><Errors><Error><Code>C</Code><Message>&e;</Message></Error></Errors></Response>";
  int rc = dibba_ec2_parse_error(xxe, strlen(xxe), code, sizeof code, msg, sizeof msg);
  ck_assert(rc == 0 || rc == DIBBA_EPROTO);
  ck_assert_ptr_null(strstr(msg, "root:"));
  /* A billion-laughs document is refused or left unexpanded. */
  const char *lol = "<?xml version=\"1.0\"?><!DOCTYPE r [<!ENTITY a \"aaaaaaaaaa\"><!ENTITY b \"&a;&a;&a;&a;&a;&a;"
                    "&a;&a;&a;&a;\"><!ENTITY c \"&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;\">]>"
                    "<Response><Errors><Error><Code>C</Code><Message>&c;</Message></Error></Errors></Response>";
  rc = dibba_ec2_parse_error(lol, strlen(lol), code, sizeof code, msg, sizeof msg);
  ck_assert(rc == 0 || rc == DIBBA_EPROTO);
}
END_TEST

/* ---- HTTP on the loop, against a tiny libuv server ---- */

typedef struct server_s {
  uv_tcp_t tcp;
  int port;
  const char *reply; /* NULL: never answer */
  char last_request[8192];
  size_t last_len;
  int conns_open;
} server_t;

typedef struct sconn_s {
  uv_tcp_t tcp;
  server_t *srv;
  uv_write_t w;
} sconn_t;

static void sconn_closed(uv_handle_t *h) {
  sconn_t *c = h->data;
  c->srv->conns_open--;
  free(c);
}

static void salloc(uv_handle_t *h, size_t n, uv_buf_t *b) {
  (void)h;
  b->base = malloc(n);
  b->len = n;
}

static void swrote(uv_write_t *w, int status) {
  (void)status;
  sconn_t *c = w->data;
  uv_close((uv_handle_t *)&c->tcp, sconn_closed);
}

static void sread(uv_stream_t *s, ssize_t nread, const uv_buf_t *b) {
  sconn_t *c = s->data;
  server_t *srv = c->srv;
  if (nread > 0) {
    size_t room = sizeof srv->last_request - 1 - srv->last_len;
    size_t n = (size_t)nread < room ? (size_t)nread : room;
    memcpy(srv->last_request + srv->last_len, b->base, n);
    srv->last_len += n;
    srv->last_request[srv->last_len] = '\0';
    char *hdr_end = strstr(srv->last_request, "\r\n\r\n");
    const char *cl = strcasestr(srv->last_request, "Content-Length:");
    size_t want = cl ? strtoul(cl + 15, NULL, 10) : 0;
    if (hdr_end && srv->last_len >= (size_t)(hdr_end + 4 - srv->last_request) + want && srv->reply) {
      uv_read_stop(s);
      uv_buf_t out = uv_buf_init((char *)srv->reply, (unsigned)strlen(srv->reply));
      c->w.data = c;
      uv_write(&c->w, s, &out, 1, swrote);
    }
  } else if (nread < 0) {
    uv_close((uv_handle_t *)&c->tcp, sconn_closed);
  }
  free(b->base);
}

static void sconnect(uv_stream_t *l, int status) {
  server_t *srv = l->data;
  ck_assert_int_eq(status, 0);
  sconn_t *c = calloc(1, sizeof *c);
  c->srv = srv;
  uv_tcp_init(l->loop, &c->tcp);
  c->tcp.data = c;
  srv->conns_open++;
  srv->last_len = 0;
  ck_assert_int_eq(uv_accept(l, (uv_stream_t *)&c->tcp), 0);
  uv_read_start((uv_stream_t *)&c->tcp, salloc, sread);
}

static void server_start(uv_loop_t *loop, server_t *srv) {
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  uv_tcp_init(loop, &srv->tcp);
  srv->tcp.data = srv;
  ck_assert_int_eq(uv_tcp_bind(&srv->tcp, (const struct sockaddr *)&a, 0), 0);
  ck_assert_int_eq(uv_listen((uv_stream_t *)&srv->tcp, 16, sconnect), 0);
  struct sockaddr_in got;
  int len = sizeof got;
  uv_tcp_getsockname(&srv->tcp, (struct sockaddr *)&got, &len);
  srv->port = ntohs(got.sin_port);
}

/* Close the listener and every connection still open (a request that never got an answer). */
static void close_walk(uv_handle_t *h, void *arg) {
  server_t *srv = arg;
  if (!uv_is_closing(h))
    uv_close(h, h == (uv_handle_t *)&srv->tcp ? NULL : sconn_closed);
}

typedef struct got_s {
  int calls;
  int status;
  long code;
  char body[256];
  char ec2code[128];
  char ec2msg[512];
} got_t;

static void http_cb(const dibba_aws_http_res_t *res, void *data) {
  got_t *g = data;
  g->calls++;
  g->status = res->status;
  g->code = res->http_code;
  snprintf(g->body, sizeof g->body, "%s", res->body);
}

static void http_closed_cb(dibba_aws_http_t *h, void *data) {
  (void)h;
  (*(int *)data)++;
}

START_TEST(http_roundtrip_cap_timeout_cancel) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  server_t srv = {.reply = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"};
  server_start(&loop, &srv);
  char url[64];
  snprintf(url, sizeof url, "http://127.0.0.1:%d/", srv.port);
  dibba_aws_http_t *h;
  ck_assert_int_eq(dibba_aws_http_new(&loop, &h), 0);

  got_t g = {0};
  const char *hdrs[] = {"X-Test: 1"};
  dibba_aws_http_opts_t o = {
      .method = "POST", .url = url, .headers = hdrs, .nheaders = 1, .body = "a=b", .body_len = 3};
  ck_assert_int_eq(dibba_aws_http_send(h, &o, http_cb, &g, NULL), 0);
  ck_assert_int_eq(g.calls, 0); /* never from inside send */
  while (g.calls == 0)
    uv_run(&loop, UV_RUN_ONCE);
  ck_assert_int_eq(g.status, 0);
  ck_assert_int_eq(g.code, 200);
  ck_assert_str_eq(g.body, "hello");
  ck_assert_ptr_nonnull(strstr(srv.last_request, "X-Test: 1\r\n"));
  ck_assert_ptr_nonnull(strstr(srv.last_request, "\r\n\r\na=b"));

  /* Over the response cap. */
  memset(&g, 0, sizeof g);
  o.max_response = 3;
  ck_assert_int_eq(dibba_aws_http_send(h, &o, http_cb, &g, NULL), 0);
  while (g.calls == 0)
    uv_run(&loop, UV_RUN_ONCE);
  ck_assert_int_eq(g.status, -EFBIG);

  /* A server that never answers: the request timeout fires. */
  srv.reply = NULL;
  memset(&g, 0, sizeof g);
  o.max_response = 0;
  o.timeout_ms = 200;
  ck_assert_int_eq(dibba_aws_http_send(h, &o, http_cb, &g, NULL), 0);
  while (g.calls == 0)
    uv_run(&loop, UV_RUN_ONCE);
  ck_assert_int_eq(g.status, UV_ETIMEDOUT);

  /* Cancel, then close with one request in flight: both report UV_ECANCELED, once. */
  got_t g2 = {0};
  dibba_aws_http_req_t *r;
  memset(&g, 0, sizeof g);
  o.timeout_ms = 5000;
  ck_assert_int_eq(dibba_aws_http_send(h, &o, http_cb, &g, &r), 0);
  ck_assert_int_eq(dibba_aws_http_send(h, &o, http_cb, &g2, NULL), 0);
  uv_run(&loop, UV_RUN_NOWAIT);
  ck_assert_int_eq(dibba_aws_http_cancel(r), 0);
  ck_assert_int_eq(dibba_aws_http_cancel(r), -EALREADY);
  int closed = 0;
  ck_assert_int_eq(dibba_aws_http_close(h, http_closed_cb, &closed), 0);
  ck_assert_int_eq(dibba_aws_http_close(h, http_closed_cb, &closed), UV_EALREADY);
  ck_assert_int_eq(g.calls, 1);
  ck_assert_int_eq(g.status, UV_ECANCELED);
  ck_assert_int_eq(g2.calls, 1);
  ck_assert_int_eq(g2.status, UV_ECANCELED);
  while (closed == 0)
    uv_run(&loop, UV_RUN_ONCE);
  uv_walk(&loop, close_walk, &srv);
  uv_run(&loop, UV_RUN_DEFAULT);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
}
END_TEST

static void ec2_cb(dibba_ec2_t *c, const dibba_ec2_result_t *res, void *data) {
  (void)c;
  got_t *g = data;
  g->calls++;
  g->status = res->status;
  g->code = res->http_code;
  snprintf(g->ec2code, sizeof g->ec2code, "%s", res->code);
  snprintf(g->ec2msg, sizeof g->ec2msg, "%s", res->message);
}

static void ec2_closed(dibba_ec2_t *c, void *data) {
  (void)c;
  (*(int *)data)++;
}

START_TEST(ec2_call_signed_and_error_scrubbed) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  const char *doc = "<Response><Errors><Error><Code>AuthFailure</Code><Message>key AKIDTEST0000 and "
                    "secret SECRETSECRETSECRET0 refused</Message></Error></Errors></Response>";
  char reply[512];
  snprintf(reply, sizeof reply,
           "HTTP/1.1 401 Unauthorized\r\nContent-Type: text/xml\r\nConnection: close\r\nContent-Length: %zu\r\n\r\n%s",
           strlen(doc), doc);
  server_t srv = {.reply = reply};
  server_start(&loop, &srv);
  char url[64], err[128];
  snprintf(url, sizeof url, "http://127.0.0.1:%d", srv.port);
  dibba_ec2_config_t cfg = {.endpoint = url,
                            .region = "eu-west-1",
                            .access_key_id = "AKIDTEST0000",
                            .secret_access_key = "SECRETSECRETSECRET0",
                            .session_token = "TOKEN-XYZ"};
  dibba_ec2_t *c;
  ck_assert_int_eq(dibba_ec2_new(&loop, &cfg, &c, err, sizeof err), 0);
  dibba_ec2_params_t p;
  dibba_ec2_params_init(&p, "DescribeInstances");
  dibba_ec2_params_add(&p, "i-1", "InstanceId.%d", 1);
  got_t g = {0};
  ck_assert_int_eq(dibba_ec2_call(c, &p, ec2_cb, &g, NULL), 0);
  dibba_ec2_params_free(&p);
  while (g.calls == 0)
    uv_run(&loop, UV_RUN_ONCE);
  ck_assert_int_eq(g.status, DIBBA_EC2_EAPI);
  ck_assert_int_eq(g.code, 401);
  ck_assert_str_eq(g.ec2code, "AuthFailure");
  ck_assert_str_eq(g.ec2msg, "key *** and secret *** refused");
  const char *rq = srv.last_request;
  ck_assert_ptr_nonnull(strstr(rq, "POST / HTTP/1.1\r\n"));
  ck_assert_ptr_nonnull(strstr(rq, "Authorization: AWS4-HMAC-SHA256 Credential=AKIDTEST0000/"));
  ck_assert_ptr_nonnull(strstr(rq, "/eu-west-1/ec2/aws4_request, "
                                   "SignedHeaders=content-type;host;x-amz-date;x-amz-security-token, Signature="));
  ck_assert_ptr_nonnull(strstr(rq, "X-Amz-Security-Token: TOKEN-XYZ\r\n"));
  ck_assert_ptr_nonnull(strstr(rq, "X-Amz-Date: "));
  ck_assert_ptr_null(strstr(rq, "SECRETSECRETSECRET0"));
  ck_assert_ptr_nonnull(strstr(rq, "Action=DescribeInstances&Version=2016-11-15&InstanceId.1=i-1"));

  int closed = 0;
  ck_assert_int_eq(dibba_ec2_close(c, ec2_closed, &closed), 0);
  while (closed == 0)
    uv_run(&loop, UV_RUN_ONCE);
  uv_walk(&loop, close_walk, &srv);
  uv_run(&loop, UV_RUN_DEFAULT);
  ck_assert_int_eq(uv_loop_close(&loop), 0);

  /* Configuration errors never echo a credential. */
  cfg.region = "";
  ck_assert_int_eq(dibba_ec2_new(&loop, &cfg, &c, err, sizeof err), -EINVAL);
  cfg.region = "us-east-1";
  cfg.endpoint = "ftp://x";
  ck_assert_int_eq(dibba_ec2_new(&loop, &cfg, &c, err, sizeof err), -EINVAL);
  cfg.endpoint = "http://AKIDTEST0000:SECRETSECRETSECRET0@host/";
  ck_assert_int_eq(dibba_ec2_new(&loop, &cfg, &c, err, sizeof err), -EINVAL);
  ck_assert_ptr_null(strstr(err, "SECRET"));
}
END_TEST

static Suite *aws_suite(void) {
  Suite *s = suite_create("aws");
  TCase *tc = tcase_create("sigv4");
  tcase_add_loop_test(tc, sigv4_vectors, 0, (int)(sizeof vectors / sizeof vectors[0]));
  tcase_add_test(tc, sigv4_header_folding_and_token);
  tcase_add_test(tc, uri_encode_and_params);
  suite_add_tcase(s, tc);
  tc = tcase_create("xml");
  tcase_add_test(tc, xml_run_describe_terminate);
  tcase_add_test(tc, xml_errors_and_hostile_input);
  suite_add_tcase(s, tc);
  tc = tcase_create("http");
  tcase_add_test(tc, http_roundtrip_cap_timeout_cancel);
  tcase_add_test(tc, ec2_call_signed_and_error_scrubbed);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(aws_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
#else
int main(void) { return 77; /* built without the aws feature: skipped */ }
#endif
