/* SPDX-License-Identifier: Apache-2.0 */
/* Unit tests for lib/redis against a real redis-server that each test starts in a temp dir. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "dibba/error.h"
#include "dibba/log.h"
#include "dibba/redis.h"

/* ---- redis-server fixture ---- */

static char root[128]; /* removed by main() even when a test (a forked child) fails */

typedef struct {
  char dir[256];
  char sock[300];
  char url_tcp[128];
  char url_unix[400];
  int port;
  pid_t pid;
  int acl;
} srv_t;

static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof a;
  ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
  ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
  close(fd);
  return ntohs(a.sin_port);
}

static void srv_spawn(srv_t *s) {
  char port[16], logf[300];
  snprintf(port, sizeof port, "%d", s->port);
  snprintf(logf, sizeof logf, "%s/redis.log", s->dir);
  const char *argv[64] = {"redis-server",
                          "--port",
                          port,
                          "--bind",
                          "127.0.0.1",
                          "-::1",
                          "--unixsocket",
                          s->sock,
                          "--unixsocketperm",
                          "700",
                          "--dir",
                          s->dir,
                          "--logfile",
                          logf,
                          "--save",
                          "",
                          "--appendonly",
                          "yes",
                          "--appendfsync",
                          "always",
                          "--enable-debug-command",
                          "yes",
                          "--daemonize",
                          "no"};
  int n = 0;
  while (argv[n])
    n++;
  if (s->acl) {
    const char *more[] = {"--user", "dibba", "on", ">secret", "~*", "&*", "+@all", "--user", "default", "off"};
    for (size_t i = 0; i < sizeof more / sizeof *more; i++)
      argv[n++] = more[i];
  }
  argv[n] = NULL;
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive the test process */
    int devnull = open("/dev/null", O_RDWR);
    dup2(devnull, 1);
    dup2(devnull, 2);
    execvp("redis-server", (char *const *)argv);
    _exit(127);
  }
  s->pid = pid;
  /* Poll until it answers on the unix socket (any reply, even NOAUTH, means it is up). */
  for (int i = 0; i < 500; i++) {
    struct timeval tv = {0, 200000};
    redisContext *c = redisConnectUnixWithTimeout(s->sock, tv);
    if (c && !c->err) {
      redisReply *rep = redisCommand(c, "PING");
      if (rep) {
        freeReplyObject(rep);
        redisFree(c);
        return;
      }
    }
    if (c)
      redisFree(c);
    int st;
    ck_assert_msg(waitpid(pid, &st, WNOHANG) == 0, "redis-server exited during start");
    usleep(10000);
  }
  ck_abort_msg("redis-server did not start");
}

static void srv_start(srv_t *s, int acl) {
  static int n;
  memset(s, 0, sizeof *s);
  s->acl = acl;
  snprintf(s->dir, sizeof s->dir, "%s/t%d-%d", root, (int)getpid(), n++);
  ck_assert_int_eq(mkdir(s->dir, 0700), 0);
  snprintf(s->sock, sizeof s->sock, "%s/redis.sock", s->dir);
  s->port = free_port();
  snprintf(s->url_tcp, sizeof s->url_tcp, "redis://127.0.0.1:%d/0", s->port);
  snprintf(s->url_unix, sizeof s->url_unix, "unix://%s", s->sock);
  srv_spawn(s);
}

static void srv_kill(srv_t *s) {
  if (s->pid > 0) {
    kill(s->pid, SIGKILL);
    waitpid(s->pid, NULL, 0);
    s->pid = 0;
  }
}

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *f) { return remove(p); }

static void rm_tree(const char *dir) { nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS); }

static void srv_stop(srv_t *s) {
  srv_kill(s);
  rm_tree(s->dir);
}

/* ---- loop helpers ---- */

static uv_loop_t loop;
static uv_timer_t tick; /* keeps UV_RUN_ONCE from blocking forever */

static void tick_cb(uv_timer_t *t) {}

static uint64_t now_ms(void) { return uv_hrtime() / 1000000; }

static void loop_setup(void) {
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  uv_timer_init(&loop, &tick);
  uv_timer_start(&tick, tick_cb, 5, 5);
}

static void loop_teardown(void) {
  uv_close((uv_handle_t *)&tick, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
}

#define RUN_UNTIL(cond, ms)                                                                                            \
  do {                                                                                                                 \
    uint64_t end_ = now_ms() + (ms);                                                                                   \
    while (!(cond) && now_ms() < end_)                                                                                 \
      uv_run(&loop, UV_RUN_ONCE);                                                                                      \
  } while (0)
#define WAIT(cond, ms)                                                                                                 \
  do {                                                                                                                 \
    RUN_UNTIL(cond, ms);                                                                                               \
    ck_assert_msg((cond), "timed out waiting for " #cond);                                                             \
  } while (0)

/* ---- client helpers ---- */

typedef struct {
  int called;
  int status;
  int type;
  long long integer;
  char str[256];
  size_t len;
  size_t elements;
  uint64_t at;
} res_t;

static void store_cb(dibba_redis_t *r, int status, redisReply *reply, void *data) {
  res_t *res = data;
  res->called++;
  res->status = status;
  res->at = now_ms();
  res->type = reply ? reply->type : 0;
  if (reply &&
      (reply->type == REDIS_REPLY_STRING || reply->type == REDIS_REPLY_STATUS || reply->type == REDIS_REPLY_ERROR)) {
    res->len = reply->len < sizeof res->str ? reply->len : sizeof res->str - 1;
    memcpy(res->str, reply->str, res->len);
    res->str[res->len] = '\0';
  }
  if (reply && reply->type == REDIS_REPLY_INTEGER)
    res->integer = reply->integer;
  if (reply && reply->type == REDIS_REPLY_ARRAY)
    res->elements = reply->elements;
}

typedef struct {
  int connects, failures, disconnects, closed;
  int last_fail, last_disc;
} ev_t;

static void ev_connect(dibba_redis_t *r, int status, void *data) {
  ev_t *e = data;
  if (status == 0)
    e->connects++;
  else {
    e->failures++;
    e->last_fail = status;
  }
}

static void ev_disconnect(dibba_redis_t *r, int status, void *data) {
  ev_t *e = data;
  e->disconnects++;
  e->last_disc = status;
}

static void ev_closed(dibba_redis_t *r, void *data) { ((ev_t *)data)->closed++; }

static dibba_redis_t *client(const char *url, ev_t *ev, dibba_redis_options_t *extra) {
  dibba_redis_options_t o;
  if (extra)
    o = *extra;
  else
    memset(&o, 0, sizeof o);
  o.url = url;
  o.on_connect = ev_connect;
  o.on_disconnect = ev_disconnect;
  o.data = ev;
  dibba_redis_t *r = NULL;
  char err[256];
  ck_assert_int_eq(dibba_redis_new(&loop, &o, &r, err, sizeof err), 0);
  return r;
}

static void close_client(dibba_redis_t *r, ev_t *ev) {
  int before = ev->closed;
  ck_assert_int_eq(dibba_redis_close(r, ev_closed), 0);
  WAIT(ev->closed == before + 1, 5000);
}

static const dibba_redis_cmd_opts_t queue_opts = {.flags = DIBBA_REDIS_QUEUE};

/* ---- tests ---- */

START_TEST(url_table) {
  static const struct {
    const char *url;
    int ok;
    int kind;
    const char *host_or_path;
    int port, db;
    const char *user, *pass;
  } t[] = {
      {"redis://127.0.0.1:6380/2", 1, DIBBA_REDIS_TCP, "127.0.0.1", 6380, 2, NULL, NULL},
      {"redis://localhost", 1, DIBBA_REDIS_TCP, "localhost", 6379, 0, NULL, NULL},
      {"redis://host/", 1, DIBBA_REDIS_TCP, "host", 6379, 0, NULL, NULL},
      {"redis://:p%40ss@h:1/15", 1, DIBBA_REDIS_TCP, "h", 1, 15, NULL, "p@ss"},
      {"redis://us%3Aer:pa:ss@h:2", 1, DIBBA_REDIS_TCP, "h", 2, 0, "us:er", "pa:ss"},
      {"redis://u:p@ss@h", 1, DIBBA_REDIS_TCP, "h", 6379, 0, "u", "p@ss"},
      {"redis://[::1]:7000/1", 1, DIBBA_REDIS_TCP, "::1", 7000, 1, NULL, NULL},
      {"unix:///run/redis.sock", 1, DIBBA_REDIS_UNIX, "/run/redis.sock", 0, 0, NULL, NULL},
      {"unix:///run/redis.sock?db=4", 1, DIBBA_REDIS_UNIX, "/run/redis.sock", 0, 4, NULL, NULL},
      {"unix:/tmp/r.sock?db=1&user=a&password=b%20c", 1, DIBBA_REDIS_UNIX, "/tmp/r.sock", 0, 1, "a", "b c"},
      {"redis+unix:///tmp/r.sock", 1, DIBBA_REDIS_UNIX, "/tmp/r.sock", 0, 0, NULL, NULL},
      {"unix://:pw@/tmp/r.sock", 1, DIBBA_REDIS_UNIX, "/tmp/r.sock", 0, 0, NULL, "pw"},
      {"", 0, 0, NULL, 0, 0, NULL, NULL},
      {"http://h", 0, 0, NULL, 0, 0, NULL, NULL},
      {"rediss://h", 0, 0, NULL, 0, 0, NULL, NULL},
      {"redis://", 0, 0, NULL, 0, 0, NULL, NULL},
      {"redis://:6379", 0, 0, NULL, 0, 0, NULL, NULL},
      {"redis://h:0", 0, 0, NULL, 0, 0, NULL, NULL},
      {"redis://h:65536", 0, 0, NULL, 0, 0, NULL, NULL},
      {"redis://h:12x", 0, 0, NULL, 0, 0, NULL, NULL},
      {"redis://h/-1", 0, 0, NULL, 0, 0, NULL, NULL},
      {"redis://h/abc", 0, 0, NULL, 0, 0, NULL, NULL},
      {"redis://h/99999999999", 0, 0, NULL, 0, 0, NULL, NULL},
      {"redis://user@h", 0, 0, NULL, 0, 0, NULL, NULL},
      {"redis://u:@h", 0, 0, NULL, 0, 0, NULL, NULL},
      {"redis://u:%zz@h", 0, 0, NULL, 0, 0, NULL, NULL},
      {"redis://u:%00@h", 0, 0, NULL, 0, 0, NULL, NULL},
      {"redis://[::1", 0, 0, NULL, 0, 0, NULL, NULL},
      {"redis://h?db=1", 0, 0, NULL, 0, 0, NULL, NULL},
      {"unix://relative/path", 0, 0, NULL, 0, 0, NULL, NULL},
      {"unix:", 0, 0, NULL, 0, 0, NULL, NULL},
      {"unix:///s?db=x", 0, 0, NULL, 0, 0, NULL, NULL},
      {"unix:///s?foo=1", 0, 0, NULL, 0, 0, NULL, NULL},
      {"unix:///s?db", 0, 0, NULL, 0, 0, NULL, NULL},
  };
  for (size_t i = 0; i < sizeof t / sizeof *t; i++) {
    dibba_redis_addr_t a;
    char err[256] = "";
    int rc = dibba_redis_url_parse(t[i].url, &a, err, sizeof err);
    if (!t[i].ok) {
      ck_assert_msg(rc == -EINVAL, "%s: expected -EINVAL, got %d", t[i].url, rc);
      ck_assert_msg(err[0] != '\0', "%s: no message", t[i].url);
      ck_assert_msg(strstr(err, "%00") == NULL && strstr(err, "zz") == NULL, "%s: message echoes password", t[i].url);
      continue;
    }
    ck_assert_msg(rc == 0, "%s: %s", t[i].url, err);
    ck_assert_int_eq(a.kind, t[i].kind);
    ck_assert_str_eq(a.kind == DIBBA_REDIS_TCP ? a.host : a.path, t[i].host_or_path);
    if (a.kind == DIBBA_REDIS_TCP)
      ck_assert_int_eq(a.port, t[i].port);
    ck_assert_int_eq(a.db, t[i].db);
    ck_assert_pstr_eq(a.user, t[i].user);
    ck_assert_pstr_eq(a.password, t[i].pass);
    dibba_redis_addr_free(&a);
    dibba_redis_addr_free(&a);
  }
}
END_TEST

START_TEST(config_options) {
  char err[256];
  dibba_config_t cfg;
  setenv("DIBBA_REDIS_URL", "unix:///tmp/x.sock?db=2", 1);
  ck_assert_int_eq(dibba_config_load(&cfg, NULL, err, sizeof err), 0);
  dibba_redis_options_t o;
  ck_assert_int_eq(dibba_redis_options_from_config(&cfg, &o, err, sizeof err), 0);
  ck_assert_str_eq(o.url, "unix:///tmp/x.sock?db=2");
  ck_assert_uint_eq(o.connect_timeout_ms, 3000);
  ck_assert_uint_eq(o.command_timeout_ms, 5000);
  dibba_config_free(&cfg);
  unsetenv("DIBBA_REDIS_URL");
  /* A bad URL is refused at creation with a message. */
  loop_setup();
  dibba_redis_t *r = NULL;
  o.url = "redis://h:99999";
  ck_assert_int_eq(dibba_redis_new(&loop, &o, &r, err, sizeof err), -EINVAL);
  ck_assert_ptr_nonnull(strstr(err, "port"));
  loop_teardown();
}
END_TEST

static int count_entry(const dibba_redis_entry_t *e, void *data) {
  const char *v;
  size_t len;
  ck_assert_int_eq(dibba_redis_reply_field(e->fields, "f", &v, &len), 0);
  ck_assert_int_eq(len, 2);
  ck_assert_int_eq(memcmp(v, "v\0", 2), 0);
  ck_assert_int_eq(dibba_redis_reply_field(e->fields, "missing", &v, &len), -ENOENT);
  ck_assert_ptr_nonnull(e->stream);
  ck_assert_int_eq(memcmp(e->stream, "st", 2), 0);
  (*(int *)data)++;
  return 0;
}

static const dibba_redis_script_t concat_script = {"return KEYS[1] .. '|' .. ARGV[1] .. '|' .. #ARGV[2]"};

/* EVALSHA: queued before the connection is ready (the script is loaded ahead of it), binary arguments,
 * and the NOSCRIPT fallback after SCRIPT FLUSH. */
static void eval_checks(dibba_redis_t *r, res_t *queued) {
  const char *argv[] = {"k", "a\0b", "12345"};
  const size_t lens[] = {1, 3, 5};
  WAIT(queued->called == 1, 5000);
  ck_assert_int_eq(queued->status, 0);
  ck_assert_uint_eq(queued->len, 7);
  ck_assert_int_eq(memcmp(queued->str, "k|a\0b|5", 7), 0);
  res_t flush = {0}, again = {0}, noargs = {0};
  ck_assert_int_eq(dibba_redis_command(r, store_cb, &flush, NULL, "SCRIPT FLUSH"), 0);
  ck_assert_int_eq(dibba_redis_eval(r, &concat_script, store_cb, &again, NULL, 1, 3, argv, lens), 0);
  WAIT(again.called == 1, 5000);
  ck_assert_int_eq(flush.status, 0);
  ck_assert_int_eq(again.status, 0);
  ck_assert_uint_eq(again.len, 7);
  ck_assert_int_eq(memcmp(again.str, "k|a\0b|5", 7), 0);
  ck_assert_int_eq(dibba_redis_eval(r, &concat_script, store_cb, &noargs, NULL, 2, 1, argv, lens), -EINVAL);
  static const dibba_redis_script_t bad = {"return redis.call('NOSUCHCOMMAND')"};
  ck_assert_int_eq(dibba_redis_eval(r, &bad, store_cb, &noargs, NULL, 0, 0, NULL, NULL), 0);
  WAIT(noargs.called == 1, 5000);
  ck_assert_int_eq(noargs.status, DIBBA_REDIS_EREPLY);
}

static void roundtrip(const char *url) {
  ev_t ev = {0};
  dibba_redis_t *r = client(url, &ev, NULL);
  /* Not connected yet: refused at once, or queued on request. */
  res_t ping = {0}, set = {0}, get = {0}, hgetall = {0}, evq = {0};
  const char *eargv[] = {"k", "a\0b", "12345"};
  const size_t elens[] = {1, 3, 5};
  ck_assert_int_eq(dibba_redis_eval(r, &concat_script, store_cb, &evq, &queue_opts, 1, 3, eargv, elens), 0);
  ck_assert_int_eq(dibba_redis_command(r, store_cb, &ping, NULL, "PING"), UV_ENOTCONN);
  ck_assert_int_eq(dibba_redis_command(r, store_cb, &ping, &queue_opts, "PING"), 0);
  ck_assert_int_eq(dibba_redis_command(r, store_cb, &ping, NULL, "SUBSCRIBE x"), -EINVAL);
  WAIT(ping.called == 1, 5000);
  ck_assert_int_eq(ping.status, 0);
  ck_assert_str_eq(ping.str, "PONG");
  ck_assert_int_eq(ev.connects, 1);
  /* Binary-safe argv: NULs in key and value. */
  const char *argv[] = {"SET", "k\0ey", "a\0b"};
  const size_t lens[] = {3, 4, 3};
  ck_assert_int_eq(dibba_redis_command_argv(r, store_cb, &set, NULL, 3, argv, lens), 0);
  ck_assert_int_eq(dibba_redis_command(r, store_cb, &get, NULL, "GET %b", "k\0ey", (size_t)4), 0);
  WAIT(get.called == 1, 5000);
  ck_assert_int_eq(set.status, 0);
  ck_assert_int_eq(get.status, 0);
  ck_assert_int_eq(get.type, REDIS_REPLY_STRING);
  ck_assert_uint_eq(get.len, 3);
  ck_assert_int_eq(memcmp(get.str, "a\0b", 3), 0);
  /* Error replies carry DIBBA_REDIS_EREPLY and the reply. */
  res_t bad = {0};
  ck_assert_int_eq(dibba_redis_command(r, store_cb, &bad, NULL, "INCR %b", "k\0ey", (size_t)4), 0);
  WAIT(bad.called == 1, 5000);
  ck_assert_int_eq(bad.status, DIBBA_REDIS_EREPLY);
  ck_assert_int_eq(bad.type, REDIS_REPLY_ERROR);
  /* MULTI/EXEC batch. */
  res_t exec = {0};
  const char *i1[] = {"INCR", "ctr"}, *i2[] = {"INCRBY", "ctr", "10"};
  dibba_redis_argv_t tx[] = {{2, i1, NULL}, {3, i2, NULL}};
  ck_assert_int_eq(dibba_redis_multi(r, store_cb, &exec, NULL, 2, tx), 0);
  WAIT(exec.called == 1, 5000);
  ck_assert_int_eq(exec.status, 0);
  ck_assert_int_eq(exec.type, REDIS_REPLY_ARRAY);
  ck_assert_uint_eq(exec.elements, 2);
  /* Streams + helpers. */
  res_t xadd = {0}, xread = {0};
  ck_assert_int_eq(dibba_redis_command(r, store_cb, &xadd, NULL, "XADD st * f %b", "v\0", (size_t)2), 0);
  ck_assert_int_eq(dibba_redis_command(r, store_cb, &hgetall, NULL, "HSET h a 1 b x"), 0);
  WAIT(hgetall.called == 1, 5000);
  ck_assert_int_eq(dibba_redis_command(r, store_cb, &xread, NULL, "XREAD COUNT 10 STREAMS st 0"), 0);
  WAIT(xread.called == 1, 5000);
  ck_assert_int_eq(xread.status, 0);
  eval_checks(r, &evq);
  close_client(r, &ev);
  ck_assert_int_eq(ev.closed, 1);
}

START_TEST(roundtrip_tcp) {
  srv_t s;
  srv_start(&s, 0);
  loop_setup();
  roundtrip(s.url_tcp);
  loop_teardown();
  srv_stop(&s);
}
END_TEST

START_TEST(roundtrip_unix) {
  srv_t s;
  srv_start(&s, 0);
  loop_setup();
  roundtrip(s.url_unix);
  loop_teardown();
  srv_stop(&s);
}
END_TEST

/* Reply helpers on live replies: the callback inspects them while they are valid. */
static int helper_ok;
static void helpers_cb(dibba_redis_t *r, int status, redisReply *reply, void *data) {
  int *which = data;
  ck_assert_int_eq(status, 0);
  if (*which == 1) { /* HGETALL */
    const char *v;
    size_t len;
    long long n;
    ck_assert_int_eq(dibba_redis_reply_field(reply, "b", &v, &len), 0);
    ck_assert_int_eq(len, 1);
    ck_assert_int_eq(v[0], 'x');
    ck_assert_int_eq(dibba_redis_reply_field(reply, "zz", &v, &len), -ENOENT);
    ck_assert_int_eq(dibba_redis_reply_field(reply, "a", &v, &len), 0);
    ck_assert_int_eq(dibba_redis_reply_int(dibba_redis_reply_at(reply, 0), &n), DIBBA_EPROTO);
    ck_assert_ptr_null(dibba_redis_reply_at(reply, 99));
  } else if (*which == 2) { /* XREAD */
    int n = 0;
    ck_assert_int_eq(dibba_redis_reply_entries(reply, count_entry, &n), 0);
    ck_assert_int_eq(n, 2);
  } else if (*which == 4) { /* GET of a number */
    long long n = 0;
    ck_assert_int_eq(dibba_redis_reply_int(reply, &n), 0);
    ck_assert_int_eq(n, -42);
    const char *s;
    ck_assert_int_eq(dibba_redis_reply_str(reply, &s, NULL), 0);
  } else if (*which == 5) { /* GET of a missing key */
    const char *s;
    ck_assert(dibba_redis_reply_is_nil(reply));
    ck_assert_int_eq(dibba_redis_reply_str(reply, &s, NULL), -ENOENT);
  }
  helper_ok++;
}

static int xrange_entry(const dibba_redis_entry_t *e, void *data) {
  ck_assert_ptr_null(e->stream);
  ck_assert_ptr_nonnull(e->fields);
  (*(int *)data)++;
  return 0;
}

static void xrange_cb(dibba_redis_t *r, int status, redisReply *reply, void *data) {
  int n = 0;
  ck_assert_int_eq(dibba_redis_reply_entries(reply, xrange_entry, &n), 0);
  ck_assert_int_eq(n, 2);
  helper_ok++;
}

START_TEST(reply_helpers) {
  srv_t s;
  srv_start(&s, 0);
  loop_setup();
  ev_t ev = {0};
  dibba_redis_t *r = client(s.url_unix, &ev, NULL);
  static int w1 = 1, w2 = 2, w4 = 4, w5 = 5;
  res_t a = {0};
  helper_ok = 0;
  ck_assert_int_eq(dibba_redis_command(r, store_cb, &a, &queue_opts, "HSET h a 1 b x"), 0);
  ck_assert_int_eq(dibba_redis_command(r, store_cb, &a, &queue_opts, "XADD st 1-1 f %b", "v\0", (size_t)2), 0);
  ck_assert_int_eq(dibba_redis_command(r, store_cb, &a, &queue_opts, "XADD st 1-2 f %b", "v\0", (size_t)2), 0);
  ck_assert_int_eq(dibba_redis_command(r, store_cb, &a, &queue_opts, "SET num -42"), 0);
  ck_assert_int_eq(dibba_redis_command(r, helpers_cb, &w1, &queue_opts, "HGETALL h"), 0);
  ck_assert_int_eq(dibba_redis_command(r, helpers_cb, &w2, &queue_opts, "XREAD STREAMS st 0"), 0);
  ck_assert_int_eq(dibba_redis_command(r, xrange_cb, NULL, &queue_opts, "XRANGE st - +"), 0);
  ck_assert_int_eq(dibba_redis_command(r, helpers_cb, &w4, &queue_opts, "GET num"), 0);
  ck_assert_int_eq(dibba_redis_command(r, helpers_cb, &w5, &queue_opts, "GET nope"), 0);
  WAIT(helper_ok == 5, 5000);
  ck_assert_int_eq(a.called, 4);
  close_client(r, &ev);
  loop_teardown();
  srv_stop(&s);
}
END_TEST

START_TEST(acl_and_select) {
  srv_t s;
  srv_start(&s, 1);
  loop_setup();
  char u3[128], u0[512], ubad[128];
  snprintf(u3, sizeof u3, "redis://dibba:secret@127.0.0.1:%d/3", s.port);
  snprintf(u0, sizeof u0, "unix://%s?user=dibba&password=secret", s.sock);
  snprintf(ubad, sizeof ubad, "redis://dibba:wrong@127.0.0.1:%d/0", s.port);
  ev_t e3 = {0}, e0 = {0}, ebad = {0};
  dibba_redis_t *r3 = client(u3, &e3, NULL), *r0 = client(u0, &e0, NULL);
  res_t set = {0}, get0 = {0}, get3 = {0};
  ck_assert_int_eq(dibba_redis_command(r3, store_cb, &set, &queue_opts, "SET only3 yes"), 0);
  WAIT(set.called == 1, 5000);
  ck_assert_int_eq(set.status, 0);
  ck_assert_int_eq(dibba_redis_command(r0, store_cb, &get0, &queue_opts, "GET only3"), 0);
  ck_assert_int_eq(dibba_redis_command(r3, store_cb, &get3, &queue_opts, "GET only3"), 0);
  WAIT(get0.called == 1 && get3.called == 1, 5000);
  ck_assert_int_eq(get0.type, REDIS_REPLY_NIL);
  ck_assert_str_eq(get3.str, "yes");

  /* Wrong password: every attempt fails with -EACCES, with backoff (not a hot loop). */
  dibba_redis_options_t o = {.backoff_base_ms = 50, .backoff_cap_ms = 400};
  dibba_redis_t *rb = client(ubad, &ebad, &o);
  uint64_t t0 = now_ms();
  RUN_UNTIL(now_ms() - t0 >= 1500, 3000);
  ck_assert_int_eq(ebad.connects, 0);
  ck_assert_int_eq(ebad.last_fail, -EACCES);
  ck_assert_int_ge(ebad.failures, 2);
  ck_assert_int_le(ebad.failures, 40); /* >= ~ 1500 / 400 attempts; a hot loop would make thousands */
  ck_assert_ptr_nonnull(strstr(dibba_redis_last_error(rb), "WRONGPASS"));
  ck_assert_ptr_null(strstr(dibba_redis_last_error(rb), "wrong"));
  dibba_redis_stats_t st;
  dibba_redis_stats(rb, &st);
  ck_assert_uint_eq(st.connect_failures, (uint64_t)ebad.failures);
  close_client(rb, &ebad);
  close_client(r3, &e3);
  close_client(r0, &e0);
  loop_teardown();
  srv_stop(&s);
}
END_TEST

START_TEST(reconnect_no_resend) {
  srv_t s;
  srv_start(&s, 0);
  loop_setup();
  ev_t ev = {0};
  dibba_redis_options_t o = {.backoff_base_ms = 50, .backoff_cap_ms = 500};
  dibba_redis_t *r = client(s.url_tcp, &ev, &o);
  res_t first = {0}, blpop = {0}, behind = {0}, unsent = {0};
  ck_assert_int_eq(dibba_redis_command(r, store_cb, &first, &queue_opts, "INCR counter"), 0);
  WAIT(first.called == 1, 5000);
  ck_assert_int_eq(first.integer, 1);
  /* In flight at the kill: a blocking pop, and an INCR pipelined behind it (written, never executed). */
  dibba_redis_cmd_opts_t forever = {.flags = DIBBA_REDIS_NO_TIMEOUT};
  ck_assert_int_eq(dibba_redis_command(r, store_cb, &blpop, &forever, "BLPOP nothing 0"), 0);
  ck_assert_int_eq(dibba_redis_command(r, store_cb, &behind, NULL, "INCR counter"), 0);
  RUN_UNTIL(0, 200); /* let them reach the server */
  ck_assert_int_eq(dibba_redis_command(r, store_cb, &unsent, NULL, "INCR counter"), 0);
  srv_kill(&s); /* the last INCR was issued but not yet written */
  WAIT(blpop.called && behind.called && unsent.called && ev.disconnects == 1, 5000);
  ck_assert_int_eq(blpop.status, UV_ECONNRESET);
  ck_assert_int_eq(behind.status, UV_ECONNRESET);
  ck_assert_int_eq(unsent.status, UV_ECONNRESET);
  ck_assert_int_eq(ev.last_disc, UV_ECONNRESET);
  ck_assert(!dibba_redis_is_ready(r));
  res_t down = {0};
  ck_assert_int_eq(dibba_redis_command(r, store_cb, &down, NULL, "PING"), UV_ENOTCONN);
  /* Refused at once (not after the connect timeout), and retried with backoff. */
  WAIT(ev.failures >= 2, 2000);
  ck_assert_int_eq(ev.last_fail, UV_ECONNREFUSED);
  srv_spawn(&s); /* same dir (AOF), socket and port */
  WAIT(ev.connects == 2, 10000);
  dibba_redis_stats_t st;
  dibba_redis_stats(r, &st);
  ck_assert_uint_eq(st.reconnects, 1);
  ck_assert_uint_eq(st.connects, 2);
  ck_assert_uint_eq(st.disconnects, 1);
  res_t get = {0};
  RUN_UNTIL(0, 200); /* anything the client wrongly re-sent would have landed by now */
  ck_assert_int_eq(dibba_redis_command(r, store_cb, &get, NULL, "GET counter"), 0);
  WAIT(get.called == 1, 5000);
  ck_assert_str_eq(get.str, "1"); /* applied exactly once, nothing re-sent */
  ck_assert_int_eq(blpop.called, 1);
  ck_assert_int_eq(behind.called, 1);
  ck_assert_int_eq(unsent.called, 1);
  close_client(r, &ev);
  loop_teardown();
  srv_stop(&s);
}
END_TEST

typedef struct {
  int resubscribed, subscribed, unsubscribed, messages, pmessages, closed;
  char last_payload[64];
  size_t last_len;
} subev_t;

static void on_msg(dibba_redis_sub_t *s, const dibba_redis_sub_msg_t *m, void *data) {
  subev_t *e = data;
  if (m->kind == DIBBA_REDIS_SUB_SUBSCRIBED)
    e->subscribed++;
  else if (m->kind == DIBBA_REDIS_SUB_UNSUBSCRIBED)
    e->unsubscribed++;
  else {
    if (m->is_pattern)
      e->pmessages++;
    else
      e->messages++;
    e->last_len = m->payload_len < sizeof e->last_payload ? m->payload_len : sizeof e->last_payload;
    memcpy(e->last_payload, m->payload, e->last_len);
  }
}

static void on_resub(dibba_redis_sub_t *s, void *data) { ((subev_t *)data)->resubscribed++; }
static void sub_closed(dibba_redis_sub_t *s, void *data) { ((subev_t *)data)->closed++; }

START_TEST(pubsub_resubscribe) {
  srv_t s;
  srv_start(&s, 0);
  loop_setup();
  subev_t se = {0};
  dibba_redis_sub_options_t so = {.conn = {.url = s.url_unix, .backoff_base_ms = 50, .backoff_cap_ms = 500},
                                  .on_message = on_msg,
                                  .on_resubscribed = on_resub,
                                  .data = &se};
  dibba_redis_sub_t *sub = NULL;
  char err[256];
  ck_assert_int_eq(dibba_redis_sub_new(&loop, &so, &sub, err, sizeof err), 0);
  ck_assert_int_eq(dibba_redis_sub_subscribe(sub, "ch1", 3), 0);
  ck_assert_int_eq(dibba_redis_sub_subscribe(sub, "ch1", 3), -EALREADY);
  ck_assert_int_eq(dibba_redis_sub_psubscribe(sub, "ev:*", 4), 0);
  ev_t ev = {0};
  dibba_redis_t *pub = client(s.url_tcp, &ev, NULL);
  WAIT(se.resubscribed == 1, 5000);
  ck_assert_int_eq(se.subscribed, 2);
  res_t p1 = {0};
  ck_assert_int_eq(dibba_redis_command(pub, store_cb, &p1, &queue_opts, "PUBLISH ch1 %b", "he\0lo", (size_t)5), 0);
  WAIT(se.messages == 1, 5000);
  ck_assert_int_eq(p1.integer, 1);
  ck_assert_uint_eq(se.last_len, 5);
  ck_assert_int_eq(memcmp(se.last_payload, "he\0lo", 5), 0);

  srv_kill(&s);
  RUN_UNTIL(0, 200);
  srv_spawn(&s);
  WAIT(se.resubscribed == 2, 10000);
  ck_assert_uint_eq(dibba_redis_sub_conn(sub) ? 1 : 0, 1);
  res_t p2 = {0}, p3 = {0};
  ck_assert_int_eq(dibba_redis_command(pub, store_cb, &p2, &queue_opts, "PUBLISH ch1 again"), 0);
  ck_assert_int_eq(dibba_redis_command(pub, store_cb, &p3, &queue_opts, "PUBLISH ev:7 pat"), 0);
  WAIT(se.messages == 2 && se.pmessages == 1, 10000);
  ck_assert_int_eq(p2.integer, 1);
  /* Unsubscribe: once confirmed, nothing reaches us. */
  ck_assert_int_eq(dibba_redis_sub_unsubscribe(sub, "ch1", 3), 0);
  ck_assert_int_eq(dibba_redis_sub_unsubscribe(sub, "ch1", 3), -ENOENT);
  WAIT(se.unsubscribed == 1, 5000);
  res_t p4 = {0};
  ck_assert_int_eq(dibba_redis_command(pub, store_cb, &p4, NULL, "PUBLISH ch1 gone"), 0);
  WAIT(p4.called == 1, 5000);
  ck_assert_int_eq(p4.integer, 0);
  dibba_redis_stats_t st;
  dibba_redis_stats(dibba_redis_sub_conn(sub), &st);
  ck_assert_uint_eq(st.reconnects, 1);
  ck_assert_int_eq(dibba_redis_sub_close(sub, sub_closed), 0);
  ck_assert_int_eq(dibba_redis_sub_close(sub, sub_closed), UV_EALREADY);
  WAIT(se.closed == 1, 5000);
  close_client(pub, &ev);
  loop_teardown();
  srv_stop(&s);
}
END_TEST

START_TEST(command_timeouts) {
  srv_t s;
  srv_start(&s, 0);
  loop_setup();
  ev_t ev = {0};
  dibba_redis_options_t o = {.command_timeout_ms = 300, .backoff_base_ms = 20, .backoff_cap_ms = 200};
  dibba_redis_t *r = client(s.url_tcp, &ev, &o);
  WAIT(ev.connects == 1, 5000);
  res_t sleep = {0}, behind = {0};
  uint64_t t0 = now_ms();
  ck_assert_int_eq(dibba_redis_command(r, store_cb, &sleep, NULL, "DEBUG SLEEP 2"), 0);
  ck_assert_int_eq(dibba_redis_command(r, store_cb, &behind, NULL, "PING"), 0);
  WAIT(sleep.called && behind.called, 5000);
  ck_assert_int_eq(sleep.status, UV_ETIMEDOUT);
  ck_assert_int_eq(behind.status, UV_ECONNRESET);
  ck_assert_uint_lt(sleep.at - t0, 1500);
  WAIT(ev.disconnects == 1, 5000);
  ck_assert_int_eq(ev.last_disc, UV_ETIMEDOUT);
  /* The server is still asleep: a later command waits in the queue with its own longer timeout. */
  res_t ping = {0};
  dibba_redis_cmd_opts_t patient = {.timeout_ms = 5000, .flags = DIBBA_REDIS_QUEUE};
  ck_assert_int_eq(dibba_redis_command(r, store_cb, &ping, &patient, "PING"), 0);
  WAIT(ping.called == 1, 8000);
  ck_assert_int_eq(ping.status, 0);
  ck_assert_str_eq(ping.str, "PONG");
  WAIT(ev.connects >= 2, 5000);
  /* A blocking read with its own timeout (block time + margin) does not trip the 300 ms default. */
  dibba_redis_stats_t before, after;
  dibba_redis_stats(r, &before);
  res_t xr = {0};
  dibba_redis_cmd_opts_t block = {.timeout_ms = 1000 + 2000};
  t0 = now_ms();
  ck_assert_int_eq(dibba_redis_command(r, store_cb, &xr, &block, "XREAD BLOCK 1000 STREAMS nostream $"), 0);
  WAIT(xr.called == 1, 5000);
  ck_assert_int_eq(xr.status, 0);
  ck_assert_int_eq(xr.type, REDIS_REPLY_NIL);
  ck_assert_uint_ge(xr.at - t0, 900);
  dibba_redis_stats(r, &after);
  ck_assert_uint_eq(after.disconnects, before.disconnects);
  ck_assert_uint_eq(after.timeouts, 1);
  close_client(r, &ev);
  loop_teardown();
  srv_stop(&s);
}
END_TEST

START_TEST(queue_limits_and_connect_errors) {
  loop_setup();
  char url[512];
  snprintf(url, sizeof url, "unix://%s/does-not-exist.sock", root);
  ev_t ev = {0};
  dibba_redis_options_t o = {.queue_max = 2, .backoff_base_ms = 50, .backoff_cap_ms = 300};
  dibba_redis_t *r = client(url, &ev, &o);
  res_t q1 = {0}, q2 = {0}, q3 = {0};
  dibba_redis_cmd_opts_t qo = {.timeout_ms = 200, .flags = DIBBA_REDIS_QUEUE};
  ck_assert_int_eq(dibba_redis_command(r, store_cb, &q1, &qo, "PING"), 0);
  ck_assert_int_eq(dibba_redis_command(r, store_cb, &q2, &qo, "PING"), 0);
  ck_assert_int_eq(dibba_redis_command(r, store_cb, &q3, &qo, "PING"), -ENOBUFS);
  WAIT(q1.called && q2.called, 3000);
  ck_assert_int_eq(q1.status, UV_ETIMEDOUT);
  ck_assert_int_eq(q2.status, UV_ETIMEDOUT);
  ck_assert_int_eq(q3.called, 0);
  uint64_t t0 = now_ms();
  RUN_UNTIL(now_ms() - t0 >= 1000, 2000);
  ck_assert_int_eq(ev.last_fail, UV_ENOENT);
  ck_assert_int_ge(ev.failures, 2);
  ck_assert_int_le(ev.failures, 40);
  close_client(r, &ev);
  /* Connect timeout: a socket that listens but never answers; AUTH gets no reply within 200 ms. */
  int lfd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof a;
  ck_assert_int_eq(bind(lfd, (struct sockaddr *)&a, sizeof a), 0);
  ck_assert_int_eq(listen(lfd, 16), 0);
  ck_assert_int_eq(getsockname(lfd, (struct sockaddr *)&a, &len), 0);
  snprintf(url, sizeof url, "redis://:pw@127.0.0.1:%d", ntohs(a.sin_port));
  ev_t et = {0};
  dibba_redis_options_t ot = {.connect_timeout_ms = 200, .backoff_base_ms = 50, .backoff_cap_ms = 100};
  t0 = now_ms();
  dibba_redis_t *rt = client(url, &et, &ot);
  WAIT(et.failures >= 1, 3000);
  ck_assert_int_eq(et.last_fail, UV_ETIMEDOUT);
  ck_assert_uint_ge(now_ms() - t0, 150);
  ck_assert_ptr_nonnull(strstr(dibba_redis_last_error(rt), "timeout"));
  close_client(rt, &et);
  close(lfd);
  loop_teardown();
}
END_TEST

START_TEST(graceful_close) {
  srv_t s;
  srv_start(&s, 0);
  loop_setup();
  /* In-flight commands finish within the grace period. */
  ev_t ev = {0};
  dibba_redis_t *r = client(s.url_unix, &ev, NULL);
  WAIT(ev.connects == 1, 5000);
  res_t a = {0}, b = {0}, c = {0};
  ck_assert_int_eq(dibba_redis_command(r, store_cb, &a, NULL, "DEBUG SLEEP 0.3"), 0);
  ck_assert_int_eq(dibba_redis_command(r, store_cb, &b, NULL, "PING"), 0);
  ck_assert_int_eq(dibba_redis_close(r, ev_closed), 0);
  ck_assert_int_eq(dibba_redis_close(r, ev_closed), UV_EALREADY);
  ck_assert_int_eq(dibba_redis_command(r, store_cb, &c, &queue_opts, "PING"), UV_ECANCELED);
  WAIT(ev.closed == 1, 5000);
  ck_assert_int_eq(a.called, 1);
  ck_assert_int_eq(a.status, 0);
  ck_assert_int_eq(b.status, 0);
  ck_assert_int_eq(ev.disconnects, 0); /* no user events during close */
  /* Past the grace period they are cancelled. */
  ev_t e2 = {0};
  dibba_redis_options_t o = {.close_grace_ms = 100};
  dibba_redis_t *r2 = client(s.url_unix, &e2, &o);
  WAIT(e2.connects == 1, 5000);
  res_t d = {0};
  ck_assert_int_eq(dibba_redis_command(r2, store_cb, &d, NULL, "DEBUG SLEEP 1"), 0);
  uint64_t t0 = now_ms();
  ck_assert_int_eq(dibba_redis_close(r2, ev_closed), 0);
  WAIT(e2.closed == 1, 5000);
  ck_assert_int_eq(d.called, 1);
  ck_assert_int_eq(d.status, UV_ECANCELED);
  ck_assert_uint_lt(now_ms() - t0, 900);
  /* Close while still connecting: queued commands are cancelled. */
  ev_t e3 = {0};
  dibba_redis_t *r3 = client(s.url_tcp, &e3, NULL);
  res_t q = {0};
  ck_assert_int_eq(dibba_redis_command(r3, store_cb, &q, &queue_opts, "PING"), 0);
  ck_assert_int_eq(dibba_redis_close(r3, ev_closed), 0);
  WAIT(e3.closed == 1, 5000);
  ck_assert_int_eq(q.status, UV_ECANCELED);
  loop_teardown();
  srv_stop(&s);
}
END_TEST

static int resolves;
static int to_unix(dibba_redis_t *r, const dibba_redis_addr_t *addr, dibba_redis_resolve_done done, void *data) {
  resolves++;
  dibba_redis_target_t t = {.kind = DIBBA_REDIS_UNIX, .path = data};
  done(r, 0, &t);
  return 0;
}

START_TEST(resolver_paths) {
  srv_t s;
  srv_start(&s, 0);
  loop_setup();
  /* Host name: resolved off the loop with uv_getaddrinfo. */
  char url[128];
  snprintf(url, sizeof url, "redis://localhost:%d", s.port);
  ev_t e1 = {0};
  dibba_redis_t *r1 = client(url, &e1, NULL);
  res_t p1 = {0};
  ck_assert_int_eq(dibba_redis_command(r1, store_cb, &p1, &queue_opts, "PING"), 0);
  WAIT(p1.called == 1, 5000);
  ck_assert_int_eq(p1.status, 0);
  close_client(r1, &e1);
  /* A pluggable resolver (the hook Sentinel discovery will use) decides where each attempt goes. */
  dibba_redis_resolver_t res = {.resolve = to_unix, .data = s.sock};
  dibba_redis_options_t o = {.resolver = &res};
  ev_t e2 = {0};
  dibba_redis_t *r2 = client("redis://placeholder.invalid:1/2", &e2, &o);
  res_t p2 = {0};
  ck_assert_int_eq(dibba_redis_command(r2, store_cb, &p2, &queue_opts, "CLIENT INFO"), 0);
  WAIT(p2.called == 1, 5000);
  ck_assert_int_eq(p2.status, 0);
  ck_assert_ptr_nonnull(strstr(p2.str, "db=2"));
  ck_assert_int_eq(resolves, 1);
  close_client(r2, &e2);
  /* A name that does not resolve fails the attempt and backs off. */
  ev_t e3 = {0};
  dibba_redis_t *r3 = client("redis://no-such-host.invalid:6379", &e3, NULL);
  WAIT(e3.failures >= 1, 10000);
  ck_assert_int_lt(e3.last_fail, 0);
  close_client(r3, &e3);
  loop_teardown();
  srv_stop(&s);
}
END_TEST

static Suite *redis_suite(void) {
  Suite *s = suite_create("redis");
  TCase *tc = tcase_create("redis");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, url_table);
  tcase_add_test(tc, config_options);
  tcase_add_test(tc, roundtrip_tcp);
  tcase_add_test(tc, roundtrip_unix);
  tcase_add_test(tc, reply_helpers);
  tcase_add_test(tc, acl_and_select);
  tcase_add_test(tc, reconnect_no_resend);
  tcase_add_test(tc, pubsub_resubscribe);
  tcase_add_test(tc, command_timeouts);
  tcase_add_test(tc, queue_limits_and_connect_errors);
  tcase_add_test(tc, graceful_close);
  tcase_add_test(tc, resolver_paths);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  snprintf(root, sizeof root, "/tmp/dibba-redis-test-XXXXXX");
  if (mkdtemp(root) == NULL)
    return 1;
  dibba_log_open(getenv("DIBBA_TEST_LOG") ? getenv("DIBBA_TEST_LOG") : "error", NULL);
  SRunner *sr = srunner_create(redis_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  rm_tree(root);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
