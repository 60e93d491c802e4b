/* SPDX-License-Identifier: Apache-2.0 */
/* Unit tests for lib/redis against a real redis-server that each test starts in a temp dir. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
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
  int replica_of; /* port of the master to replicate from, or 0 */
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
                          "--repl-diskless-sync-delay",
                          "0",
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
  char mport[16];
  if (s->replica_of) {
    snprintf(mport, sizeof mport, "%d", s->replica_of);
    argv[n++] = "--replicaof";
    argv[n++] = "127.0.0.1";
    argv[n++] = mport;
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

static void srv_start_replica(srv_t *s, int acl, int replica_of) {
  static int n;
  memset(s, 0, sizeof *s);
  s->acl = acl;
  s->replica_of = replica_of;
  snprintf(s->dir, sizeof s->dir, "%s/t%d-%d", root, (int)getpid(), n++);
  ck_assert_int_eq(mkdir(s->dir, 0700), 0);
  snprintf(s->sock, sizeof s->sock, "%s/redis.sock", s->dir);
  s->port = free_port();
  snprintf(s->url_tcp, sizeof s->url_tcp, "redis://127.0.0.1:%d/0", s->port);
  snprintf(s->url_unix, sizeof s->url_unix, "unix://%s", s->sock);
  srv_spawn(s);
}

static void srv_start(srv_t *s, int acl) { srv_start_replica(s, acl, 0); }

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
  uint64_t connected_at;
} ev_t;

static uint64_t now_ms(void);

static void ev_connect(dibba_redis_t *r, int status, void *data) {
  ev_t *e = data;
  if (status == 0) {
    e->connects++;
    e->connected_at = now_ms();
  } else {
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
      {"redis+sentinel://a,b:2/m", 1, DIBBA_REDIS_SENTINEL, NULL, 0, 0, NULL, NULL},
      {"redis+sentinel://u:p%2F@[::1]:5,h/my%20m/3", 1, DIBBA_REDIS_SENTINEL, NULL, 0, 3, "u", "p/"},
      {"redis+sentinel://h/m?sentinel_password=s3&sentinel_user=su", 1, DIBBA_REDIS_SENTINEL, NULL, 0, 0, NULL, NULL},
      {"redis+sentinel://h", 0, 0, NULL, 0, 0, NULL, NULL},
      {"redis+sentinel://h/", 0, 0, NULL, 0, 0, NULL, NULL},
      {"redis+sentinel:///m", 0, 0, NULL, 0, 0, NULL, NULL},
      {"redis+sentinel://a,,b/m", 0, 0, NULL, 0, 0, NULL, NULL},
      {"redis+sentinel://a,/m", 0, 0, NULL, 0, 0, NULL, NULL},
      {"redis+sentinel://a:0/m", 0, 0, NULL, 0, 0, NULL, NULL},
      {"redis+sentinel://a/m/x", 0, 0, NULL, 0, 0, NULL, NULL},
      {"redis+sentinel://a/m?db=1", 0, 0, NULL, 0, 0, NULL, NULL},
      {"redis+sentinel://a/m?sentinel_password=", 0, 0, NULL, 0, 0, NULL, NULL},
      {"redis+sentinel://a,a,a,a,a,a,a,a,a,a,a,a,a,a,a,a,a/m", 0, 0, NULL, 0, 0, NULL, NULL},
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
    if (a.kind != DIBBA_REDIS_SENTINEL)
      ck_assert_str_eq(a.kind == DIBBA_REDIS_TCP ? a.host : a.path, t[i].host_or_path);
    if (a.kind == DIBBA_REDIS_TCP)
      ck_assert_int_eq(a.port, t[i].port);
    ck_assert_int_eq(a.db, t[i].db);
    ck_assert_pstr_eq(a.user, t[i].user);
    ck_assert_pstr_eq(a.password, t[i].pass);
    dibba_redis_addr_free(&a);
    dibba_redis_addr_free(&a);
  }
  /* The sentinel fields. */
  dibba_redis_addr_t a;
  char err[256];
  ck_assert_int_eq(dibba_redis_url_parse("redis+sentinel://u:p%2F@[::1]:5,h/my%20m/3", &a, err, sizeof err), 0);
  ck_assert_uint_eq(a.nsentinels, 2);
  ck_assert_str_eq(a.sentinels[0].host, "::1");
  ck_assert_int_eq(a.sentinels[0].port, 5);
  ck_assert_str_eq(a.sentinels[1].host, "h");
  ck_assert_int_eq(a.sentinels[1].port, 26379);
  ck_assert_str_eq(a.master_name, "my m");
  ck_assert_ptr_null(a.host);
  dibba_redis_addr_free(&a);
  ck_assert_int_eq(
      dibba_redis_url_parse("redis+sentinel://h/m?sentinel_password=s3&sentinel_user=su", &a, err, sizeof err), 0);
  ck_assert_str_eq(a.sentinel_user, "su");
  ck_assert_str_eq(a.sentinel_password, "s3");
  ck_assert_ptr_null(a.password);
  dibba_redis_addr_free(&a);
  dibba_redis_addr_free(&a);
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
  ck_assert_uint_eq(o.sentinel_timeout_ms, 500);
  ck_assert_ptr_null(o.sentinel_password);
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

/* ---- Sentinel mode ---- */

/* A synchronous command on a loopback port (test set-up only). NULL when it cannot connect. */
static redisReply *sync_cmd(int port, const char *fmt, ...) {
  struct timeval tv = {0, 300000};
  redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
  if (c == NULL || c->err) {
    if (c)
      redisFree(c);
    return NULL;
  }
  redisSetTimeout(c, tv);
  va_list ap;
  va_start(ap, fmt);
  redisReply *rep = redisvCommand(c, fmt, ap);
  va_end(ap);
  redisFree(c);
  return rep;
}

/* 1 when the INFO section of the server on port contains needle. */
static int info_has(int port, const char *section, const char *needle) {
  redisReply *rep = sync_cmd(port, "INFO %s", section);
  int ok = rep && rep->type == REDIS_REPLY_STRING && strstr(rep->str, needle) != NULL;
  if (rep)
    freeReplyObject(rep);
  return ok;
}

/* Poll (sleeping, outside any loop) until the replica on port is in sync with its master. */
static void wait_replica_online(int master_port) {
  for (int i = 0; i < 500 && !info_has(master_port, "replication", "state=online"); i++)
    usleep(10000);
  ck_assert_msg(info_has(master_port, "replication", "state=online"), "replica never came online");
}

/* A resolver whose target port the test moves around. */
static int role_target;
static int to_port(dibba_redis_t *r, const dibba_redis_addr_t *addr, dibba_redis_resolve_done done, void *data) {
  dibba_redis_target_t t = {.kind = DIBBA_REDIS_TCP, .ip = "127.0.0.1", .port = role_target};
  done(r, 0, &t);
  return 0;
}

typedef struct {
  res_t res;
  int acked;
} wres_t;

static void wait_cb(dibba_redis_t *r, int status, redisReply *reply, void *data) {
  wres_t *w = data;
  w->acked = dibba_redis_wait_acked(r);
  store_cb(r, status, reply, &w->res);
}

static const dibba_redis_script_t incr_script = {"return redis.call('INCRBY', KEYS[1], ARGV[1])"};

static void exists_cb(dibba_redis_t *r, int status, redisReply *reply, void *data) {
  const redisReply *e = status == 0 ? dibba_redis_reply_at(reply, 0) : NULL;
  *(int *)data = e && e->type == REDIS_REPLY_INTEGER ? (int)e->integer : -1;
}

/* SCRIPT EXISTS sha on r's connection, so it runs after any SCRIPT LOAD the client sent there: 1 or 0. */
static int script_exists(dibba_redis_t *r, const char *sha) {
  int ex = -2;
  ck_assert_int_eq(dibba_redis_command(r, exists_cb, &ex, NULL, "SCRIPT EXISTS %s", sha), 0);
  WAIT(ex != -2, 5000);
  ck_assert_int_ge(ex, 0);
  return ex;
}

/* The SHA-1 of s as the server computes it, loaded and then flushed on port (so the test needs no SHA-1). */
static void script_sha(int port, const dibba_redis_script_t *s, char sha[41]) {
  redisReply *rep = sync_cmd(port, "SCRIPT LOAD %s", s->text);
  ck_assert_ptr_nonnull(rep);
  ck_assert_int_eq(rep->type, REDIS_REPLY_STRING);
  ck_assert_uint_eq(rep->len, 40);
  memcpy(sha, rep->str, 41);
  freeReplyObject(rep);
  rep = sync_cmd(port, "SCRIPT FLUSH");
  ck_assert_ptr_nonnull(rep);
  freeReplyObject(rep);
}

/* Sentinel-mode checks that need no sentinel: ROLE before ready, READONLY → reconnect at once, WAIT. */
START_TEST(role_readonly_wait) {
  srv_t a, b;
  srv_start(&a, 0);
  srv_start_replica(&b, 0, a.port);
  wait_replica_online(a.port);
  loop_setup();
  /* A user resolver with a sentinel URL: no sentinel is asked, but only a master may become ready. */
  dibba_redis_resolver_t res = {.resolve = to_port};
  dibba_redis_options_t o = {.resolver = &res, .backoff_base_ms = 100, .backoff_cap_ms = 300};
  ev_t ev = {0};
  role_target = b.port;
  dibba_redis_t *r = client("redis+sentinel://127.0.0.1:1/mymaster", &ev, &o);
  WAIT(ev.failures >= 2, 5000);
  ck_assert_int_eq(ev.connects, 0);
  ck_assert_int_eq(ev.last_fail, DIBBA_REDIS_ENOTMASTER);
  ck_assert_ptr_nonnull(strstr(dibba_redis_last_error(r), "slave"));
  role_target = a.port;
  WAIT(ev.connects == 1, 5000);
  const char *ip;
  int port;
  ck_assert_int_eq(dibba_redis_current(r, &ip, &port), 0);
  ck_assert_str_eq(ip, "127.0.0.1");
  ck_assert_int_eq(port, a.port);
  ck_assert_int_eq(dibba_redis_wait_acked(r), -1);

  /* WAIT in the same pipeline: one replica acknowledges; asking for two times out into DIBBA_REDIS_EWAIT. */
  wres_t w1 = {0}, w2 = {0}, w3 = {0};
  dibba_redis_cmd_opts_t wo = {.flags = DIBBA_REDIS_WAIT_REPLICAS, .wait_replicas = 1, .wait_timeout_ms = 1000};
  ck_assert_int_eq(dibba_redis_command(r, wait_cb, &w1, &wo, "INCR ctr"), 0);
  WAIT(w1.res.called == 1, 5000);
  ck_assert_int_eq(w1.res.status, 0);
  ck_assert_int_eq(w1.res.type, REDIS_REPLY_INTEGER);
  ck_assert_int_eq(w1.res.integer, 1);
  ck_assert_int_eq(w1.acked, 1);
  dibba_redis_cmd_opts_t wo2 = {.flags = DIBBA_REDIS_WAIT_REPLICAS, .wait_replicas = 2, .wait_timeout_ms = 100};
  const char *i1[] = {"INCR", "ctr"};
  dibba_redis_argv_t tx[] = {{2, i1, NULL}, {2, i1, NULL}};
  ck_assert_int_eq(dibba_redis_multi(r, wait_cb, &w2, &wo2, 2, tx), 0);
  WAIT(w2.res.called == 1, 5000);
  ck_assert_int_eq(w2.res.status, DIBBA_REDIS_EWAIT);
  ck_assert_int_eq(w2.res.type, REDIS_REPLY_ARRAY);
  ck_assert_uint_eq(w2.res.elements, 2);
  ck_assert_int_eq(w2.acked, 1);
  /* An error reply stays an error reply. */
  ck_assert_int_eq(dibba_redis_command(r, wait_cb, &w3, &wo, "LPUSH ctr x"), 0);
  WAIT(w3.res.called == 1, 5000);
  ck_assert_int_eq(w3.res.status, DIBBA_REDIS_EREPLY);
  ck_assert_ptr_nonnull(strstr(w3.res.str, "WRONGTYPE"));

  /* EVALSHA with WAIT behind it; after SCRIPT FLUSH the NOSCRIPT fallback sends EVAL and WAIT again, and the
   * script runs once (ctr 3 -> 13 -> 113); asking two replicas gives DIBBA_REDIS_EWAIT with the script's reply. */
  char sha[41];
  script_sha(a.port, &incr_script, sha);
  const char *ev_argv[] = {"ctr", "10"};
  wres_t e1 = {0}, e2 = {0}, e3 = {0};
  ck_assert_int_eq(dibba_redis_eval(r, &incr_script, wait_cb, &e1, &wo, 1, 2, ev_argv, NULL), 0);
  WAIT(e1.res.called == 1, 5000);
  ck_assert_int_eq(e1.res.status, 0);
  ck_assert_int_eq(e1.res.integer, 13);
  ck_assert_int_eq(e1.acked, 1);
  ck_assert_int_eq(script_exists(r, sha), 1);
  redisReply *rep = sync_cmd(a.port, "SCRIPT FLUSH");
  ck_assert_ptr_nonnull(rep);
  freeReplyObject(rep);
  ev_argv[1] = "100";
  ck_assert_int_eq(dibba_redis_eval(r, &incr_script, wait_cb, &e2, &wo, 1, 2, ev_argv, NULL), 0);
  WAIT(e2.res.called == 1, 5000);
  ck_assert_int_eq(e2.res.status, 0);
  ck_assert_int_eq(e2.res.type, REDIS_REPLY_INTEGER);
  ck_assert_int_eq(e2.res.integer, 113);
  ck_assert_int_eq(e2.acked, 1);
  ck_assert_int_eq(script_exists(r, sha), 1); /* EVAL loaded it again */
  ev_argv[1] = "-110";
  ck_assert_int_eq(dibba_redis_eval(r, &incr_script, wait_cb, &e3, &wo2, 1, 2, ev_argv, NULL), 0);
  WAIT(e3.res.called == 1, 5000);
  ck_assert_int_eq(e3.res.status, DIBBA_REDIS_EWAIT);
  ck_assert_int_eq(e3.res.integer, 3);
  ck_assert_int_eq(e3.acked, 1);

  /* Demote a behind the client's back (b takes over): the next write gets READONLY, the client drops the
   * connection with DIBBA_REDIS_ENOTMASTER and re-resolves at once (no backoff), and ROLE keeps it off a. */
  rep = sync_cmd(b.port, "REPLICAOF NO ONE");
  ck_assert_ptr_nonnull(rep);
  freeReplyObject(rep);
  rep = sync_cmd(a.port, "REPLICAOF 127.0.0.1 %d", b.port);
  ck_assert_ptr_nonnull(rep);
  freeReplyObject(rep);
  res_t ro = {0};
  ck_assert_int_eq(dibba_redis_command(r, store_cb, &ro, NULL, "SET k v"), 0);
  WAIT(ro.called == 1 && ev.disconnects == 1, 5000);
  ck_assert_int_eq(ro.status, DIBBA_REDIS_EREPLY);
  ck_assert_ptr_nonnull(strstr(ro.str, "READONLY"));
  ck_assert_int_eq(ev.last_disc, DIBBA_REDIS_ENOTMASTER);
  int before = ev.failures;
  WAIT(ev.failures > before, 2000);
  ck_assert_int_eq(ev.last_fail, DIBBA_REDIS_ENOTMASTER);
  /* The new master must not have the script from anywhere else: the client loads it on connect. */
  rep = sync_cmd(b.port, "SCRIPT FLUSH");
  ck_assert_ptr_nonnull(rep);
  freeReplyObject(rep);
  role_target = b.port;
  WAIT(ev.connects == 2, 5000);
  ck_assert_int_eq(script_exists(r, sha), 1);
  wres_t w4 = {0};
  ck_assert_int_eq(dibba_redis_command(r, wait_cb, &w4, &wo, "INCR ctr"), 0);
  WAIT(w4.res.called == 1, 5000);
  ck_assert_int_eq(w4.res.status, 0);
  ck_assert_int_eq(w4.res.integer, 4); /* b had every acknowledged increment */
  ev_argv[1] = "2";
  wres_t e4 = {0};
  ck_assert_int_eq(dibba_redis_eval(r, &incr_script, wait_cb, &e4, &wo, 1, 2, ev_argv, NULL), 0);
  WAIT(e4.res.called == 1, 5000);
  ck_assert_int_eq(e4.res.status, 0);
  ck_assert_int_eq(e4.res.integer, 6);
  ck_assert_int_eq(e4.acked, 1);
  close_client(r, &ev);
  loop_teardown();
  srv_stop(&b);
  srv_stop(&a);
}
END_TEST

/* Close while a sentinel question is pending (the sentinel accepts but never answers): every probe and the
 * +switch-master subscription are closed, nothing leaks, and the loop closes. */
START_TEST(sentinel_close_midway) {
  int lfd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof a;
  ck_assert_int_eq(bind(lfd, (struct sockaddr *)&a, sizeof a), 0);
  ck_assert_int_eq(listen(lfd, 16), 0);
  ck_assert_int_eq(getsockname(lfd, (struct sockaddr *)&a, &len), 0);
  char url[128];
  snprintf(url, sizeof url, "redis+sentinel://127.0.0.1:%d/mymaster?sentinel_password=pw", ntohs(a.sin_port));
  loop_setup();
  ev_t ev = {0};
  dibba_redis_options_t o = {.sentinel_timeout_ms = 5000, .connect_timeout_ms = 8000};
  dibba_redis_t *r = client(url, &ev, &o);
  subev_t se = {0};
  dibba_redis_sub_options_t so = {.conn = o, .on_message = on_msg, .data = &se};
  so.conn.url = url;
  dibba_redis_sub_t *sub = NULL;
  char err[256];
  ck_assert_int_eq(dibba_redis_sub_new(&loop, &so, &sub, err, sizeof err), 0);
  res_t q = {0};
  ck_assert_int_eq(dibba_redis_command(r, store_cb, &q, &queue_opts, "PING"), 0);
  RUN_UNTIL(0, 300);
  ck_assert(!dibba_redis_is_ready(r));
  uint64_t t0 = now_ms();
  ck_assert_int_eq(dibba_redis_sub_close(sub, sub_closed), 0);
  close_client(r, &ev);
  WAIT(se.closed == 1, 5000);
  ck_assert_uint_lt(now_ms() - t0, 1000);
  ck_assert_int_eq(q.status, UV_ECANCELED);
  ck_assert_int_eq(ev.connects + ev.failures, 0);
  loop_teardown();
  close(lfd);
}
END_TEST

typedef struct {
  char dir[256];
  char conf[300];
  int port;
  pid_t pid;
} sen_t;

static void sen_spawn(sen_t *s) {
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    int devnull = open("/dev/null", O_RDWR);
    dup2(devnull, 1);
    dup2(devnull, 2);
    execlp("redis-server", "redis-server", s->conf, "--sentinel", (char *)NULL);
    _exit(127);
  }
  s->pid = pid;
  for (int i = 0; i < 500; i++) {
    redisReply *rep = sync_cmd(s->port, "PING");
    if (rep) {
      freeReplyObject(rep);
      return;
    }
    int st;
    ck_assert_msg(waitpid(pid, &st, WNOHANG) == 0, "redis-sentinel exited during start");
    usleep(10000);
  }
  ck_abort_msg("redis-sentinel did not start");
}

static void sen_start(sen_t *s, int master_port) {
  static int n;
  memset(s, 0, sizeof *s);
  snprintf(s->dir, sizeof s->dir, "%s/s%d-%d", root, (int)getpid(), n++);
  ck_assert_int_eq(mkdir(s->dir, 0700), 0);
  snprintf(s->conf, sizeof s->conf, "%.250s/sentinel.conf", s->dir);
  s->port = free_port();
  FILE *f = fopen(s->conf, "w");
  ck_assert_ptr_nonnull(f);
  fprintf(f,
          "port %d\nbind 127.0.0.1\ndaemonize no\ndir %s\nlogfile %s/sentinel.log\n"
          "sentinel monitor mymaster 127.0.0.1 %d 2\n"
          "sentinel down-after-milliseconds mymaster 1000\n"
          "sentinel failover-timeout mymaster 3000\n"
          "sentinel parallel-syncs mymaster 1\n",
          s->port, s->dir, s->dir, master_port);
  fclose(f);
  sen_spawn(s);
}

static void sen_kill(sen_t *s) {
  if (s->pid > 0) {
    kill(s->pid, SIGKILL);
    waitpid(s->pid, NULL, 0);
    s->pid = 0;
  }
}

/* Number of elements of an array reply to SENTINEL <what> mymaster, or -1. */
static int sentinel_count(int port, const char *what) {
  redisReply *rep = sync_cmd(port, "SENTINEL %s mymaster", what);
  int n = rep && rep->type == REDIS_REPLY_ARRAY ? (int)rep->elements : -1;
  if (rep)
    freeReplyObject(rep);
  return n;
}

/* A stream of INCRs, one at a time, each with WAIT 1 in the same pipeline. */
typedef struct {
  dibba_redis_t *r;
  uv_timer_t next;
  int running, inflight;
  int ok, ewait, reset, timedout, other, last_other;
  int ok_after_kill;
  long long last_value, max_acked;
  int regressions;      /* a reply value not above the previous one: an increment was lost */
  uint64_t kill_at;     /* when the master was killed */
  uint64_t first_after; /* first reply from the new master */
} stream_t;

static void stream_send(uv_timer_t *t);

static void stream_cb(dibba_redis_t *r, int status, redisReply *reply, void *data) {
  stream_t *st = data;
  st->inflight = 0;
  if ((status == 0 || status == DIBBA_REDIS_EWAIT) && reply && reply->type == REDIS_REPLY_INTEGER) {
    if (reply->integer <= st->last_value)
      st->regressions++;
    st->last_value = reply->integer;
    if (status == 0) {
      st->ok++;
      st->max_acked = reply->integer;
      ck_assert_int_ge(dibba_redis_wait_acked(r), 1);
    } else {
      st->ewait++;
    }
    if (st->kill_at) {
      st->ok_after_kill++;
      if (st->first_after == 0)
        st->first_after = now_ms();
    }
  } else if (status == UV_ECONNRESET) {
    st->reset++;
  } else if (status == UV_ETIMEDOUT) {
    st->timedout++;
  } else {
    st->other++;
    st->last_other = status;
  }
  if (st->running)
    uv_timer_start(&st->next, stream_send, 1, 0);
}

static void stream_send(uv_timer_t *t) {
  stream_t *st = t->data;
  if (!st->running || st->inflight)
    return;
  dibba_redis_cmd_opts_t o = {.timeout_ms = 1000,
                              .flags = DIBBA_REDIS_QUEUE | DIBBA_REDIS_WAIT_REPLICAS,
                              .wait_replicas = 1,
                              .wait_timeout_ms = 100};
  int rc = dibba_redis_command(st->r, stream_cb, st, &o, "INCR stream");
  if (rc == 0)
    st->inflight = 1;
  else
    uv_timer_start(&st->next, stream_send, 10, 0);
}

static void on_switch_event(dibba_redis_sub_t *s, const dibba_redis_sub_msg_t *m, void *data) {
  if (m->kind == DIBBA_REDIS_SUB_MESSAGE && *(uint64_t *)data == 0)
    *(uint64_t *)data = now_ms();
}

START_TEST(sentinel_failover) {
  uint64_t t_start = now_ms();
  srv_t m, rep;
  sen_t sen[3];
  srv_start(&m, 0);
  srv_start_replica(&rep, 0, m.port);
  wait_replica_online(m.port);
  for (int i = 0; i < 3; i++)
    sen_start(&sen[i], m.port);
  /* Every sentinel must know the replica and the two other sentinels (hello messages, every 2 s). */
  for (int i = 0; i < 3; i++) {
    uint64_t end = now_ms() + 15000;
    while ((sentinel_count(sen[i].port, "replicas") < 1 || sentinel_count(sen[i].port, "sentinels") < 2) &&
           now_ms() < end)
      usleep(50000);
    ck_assert_int_eq(sentinel_count(sen[i].port, "replicas"), 1);
    ck_assert_int_eq(sentinel_count(sen[i].port, "sentinels"), 2);
    fprintf(stderr, "sentinel: sentinel %d ready after %llu ms\n", i, (unsigned long long)(now_ms() - t_start));
  }
  fprintf(stderr, "sentinel: topology ready after %llu ms\n", (unsigned long long)(now_ms() - t_start));
  loop_setup();
  char url[512];
  /* The first sentinel in the list is a dead port: the resolver moves on to the next one. */
  int dead = free_port();
  snprintf(url, sizeof url, "redis+sentinel://127.0.0.1:%d,127.0.0.1:%d,127.0.0.1:%d,127.0.0.1:%d/mymaster", dead,
           sen[0].port, sen[1].port, sen[2].port);
  /* A long backoff: only the +switch-master event can bring the client over quickly. */
  dibba_redis_options_t o = {.backoff_base_ms = 20000, .backoff_cap_ms = 20000, .sentinel_timeout_ms = 300};
  ev_t ev = {0};
  dibba_redis_t *r = client(url, &ev, &o);
  WAIT(ev.connects == 1, 5000);
  const char *ip;
  int port;
  ck_assert_int_eq(dibba_redis_current(r, &ip, &port), 0);
  ck_assert_int_eq(port, m.port);
  /* A subscriber on the master, through the sentinels too. */
  subev_t se = {0};
  dibba_redis_sub_options_t so = {.conn = o, .on_message = on_msg, .on_resubscribed = on_resub, .data = &se};
  so.conn.url = url;
  dibba_redis_sub_t *sub = NULL;
  char err[256];
  ck_assert_int_eq(dibba_redis_sub_new(&loop, &so, &sub, err, sizeof err), 0);
  ck_assert_int_eq(dibba_redis_sub_subscribe(sub, "news", 4), 0);
  WAIT(se.resubscribed == 1, 5000);
  /* The test's own view of the failover, for timing. */
  uint64_t switch_at = 0;
  char surl[64];
  snprintf(surl, sizeof surl, "redis://127.0.0.1:%d", sen[0].port);
  dibba_redis_sub_options_t wo = {.conn = {.url = surl}, .on_message = on_switch_event, .data = &switch_at};
  dibba_redis_sub_t *watch = NULL;
  ck_assert_int_eq(dibba_redis_sub_new(&loop, &wo, &watch, err, sizeof err), 0);
  ck_assert_int_eq(dibba_redis_sub_subscribe(watch, "+switch-master", 14), 0);

  stream_t st = {.r = r, .running = 1};
  uv_timer_init(&loop, &st.next);
  st.next.data = &st;
  uv_timer_start(&st.next, stream_send, 0, 0);
  WAIT(st.ok >= 50, 5000);
  ck_assert_int_eq(st.ewait, 0);
  res_t p1 = {0};
  ck_assert_int_eq(dibba_redis_command(r, store_cb, &p1, NULL, "PUBLISH news before"), 0);
  WAIT(se.messages == 1, 5000);

  /* A script run on the old master; the replica is flushed so only the client can load it there. */
  char sha[41];
  script_sha(m.port, &incr_script, sha);
  redisReply *fl = sync_cmd(rep.port, "SCRIPT FLUSH");
  ck_assert_ptr_nonnull(fl);
  freeReplyObject(fl);
  const char *ev_argv[] = {"scripted", "5"};
  dibba_redis_cmd_opts_t eo = {.flags = DIBBA_REDIS_WAIT_REPLICAS, .wait_replicas = 1, .wait_timeout_ms = 1000};
  wres_t se1 = {0}, se2 = {0};
  ck_assert_int_eq(dibba_redis_eval(r, &incr_script, wait_cb, &se1, &eo, 1, 2, ev_argv, NULL), 0);
  WAIT(se1.res.called == 1, 5000);
  ck_assert_int_eq(se1.res.status, 0);
  ck_assert_int_eq(se1.res.integer, 5);
  ck_assert_int_eq(script_exists(r, sha), 1);

  /* kill -9 the master while INCRs keep flowing. */
  int ok_before = st.ok;
  st.kill_at = now_ms();
  srv_kill(&m);
  WAIT(dibba_redis_current(r, &ip, &port) == 0 && port == rep.port && st.ok_after_kill >= 20, 20000);
  WAIT(switch_at != 0, 5000);
  ck_assert_int_eq(ev.connects, 2);
  int64_t ready_after_event = (int64_t)ev.connected_at - (int64_t)switch_at;
  fprintf(stderr,
          "sentinel: killed master; +switch-master after %llu ms; client ready on the new master %lld ms after the "
          "event (its backoff is 20 s); first INCR reply there %llu ms after the kill\n",
          (unsigned long long)(switch_at - st.kill_at), (long long)ready_after_event,
          (unsigned long long)(st.first_after - st.kill_at));
  ck_assert_int_lt(ready_after_event, 1000);
  st.running = 0;
  WAIT(!st.inflight, 5000);
  ck_assert_int_eq(dibba_redis_current(r, &ip, &port), 0);
  ck_assert_int_eq(port, rep.port);
  res_t get = {0};
  ck_assert_int_eq(dibba_redis_command(r, store_cb, &get, NULL, "GET stream"), 0);
  WAIT(get.called == 1, 5000);
  ck_assert_int_eq(get.status, 0);
  long long final = atoll(get.str);
  int replied = st.ok + st.ewait, ambiguous = st.reset + st.timedout;
  fprintf(stderr,
          "sentinel: INCRs ok(WAIT 1 acked)=%d (before kill %d) applied-unreplicated(EWAIT)=%d "
          "ECONNRESET=%d ETIMEDOUT=%d other=%d; final counter %lld, highest WAIT-acked value %lld\n",
          st.ok, ok_before, st.ewait, st.reset, st.timedout, st.other, final, st.max_acked);
  ck_assert_int_eq(st.other, 0);
  ck_assert_int_eq(st.regressions, 0); /* no reply value came back twice: nothing acknowledged was lost */
  /* The client loaded its script on the new master when it connected there. */
  ck_assert_int_eq(script_exists(r, sha), 1);
  ck_assert_int_eq(dibba_redis_eval(r, &incr_script, wait_cb, &se2, &eo, 1, 2, ev_argv, NULL), 0);
  WAIT(se2.res.called == 1, 5000);
  ck_assert_int_eq(se2.res.status, DIBBA_REDIS_EWAIT); /* the old master, the only other server, is dead */
  ck_assert_int_eq(se2.res.integer, 10);               /* the WAIT-acked 5 survived the failover */
  ck_assert_int_ge(final, st.max_acked);
  /* Every replied INCR is in the counter; at most the ambiguous ones (reply lost) come on top. */
  ck_assert_int_ge(final, replied);
  ck_assert_int_le(final, replied + ambiguous);
  ck_assert_int_ge(ambiguous, 1); /* the switch was not free: at least the in-flight INCR failed */

  /* The subscriber followed the master and resubscribed. */
  WAIT(se.resubscribed >= 2, 10000);
  res_t p2 = {0};
  ck_assert_int_eq(dibba_redis_command(r, store_cb, &p2, NULL, "PUBLISH news after"), 0);
  WAIT(se.messages == 2, 5000);
  ck_assert_int_eq(p2.integer, 1);
  ck_assert_int_eq(memcmp(se.last_payload, "after", 5), 0);

  /* All sentinels down: a new client backs off (no hot loop) and recovers when one sentinel returns. */
  for (int i = 0; i < 3; i++)
    sen_kill(&sen[i]);
  ev_t e2 = {0};
  dibba_redis_options_t o2 = {.backoff_base_ms = 50, .backoff_cap_ms = 400, .sentinel_timeout_ms = 200};
  dibba_redis_t *r2 = client(url, &e2, &o2);
  uint64_t t0 = now_ms();
  RUN_UNTIL(0, 2000);
  fprintf(stderr, "sentinel: all sentinels down: %d failed attempts in %llu ms (last: %s)\n", e2.failures,
          (unsigned long long)(now_ms() - t0), dibba_redis_strerror(e2.last_fail));
  ck_assert_int_eq(e2.connects, 0);
  ck_assert_int_ge(e2.failures, 2);
  ck_assert_int_le(e2.failures, 40);
  ck_assert_int_eq(e2.last_fail, UV_ECONNREFUSED);
  sen_spawn(&sen[2]); /* the last one in the list; its rewritten config names the new master */
  t0 = now_ms();
  WAIT(e2.connects == 1, 10000);
  fprintf(stderr, "sentinel: recovered %llu ms after one sentinel returned\n", (unsigned long long)(now_ms() - t0));
  ck_assert_int_eq(dibba_redis_current(r2, &ip, &port), 0);
  ck_assert_int_eq(port, rep.port);
  /* The first client never lost the new master. */
  res_t ping = {0};
  ck_assert_int_eq(dibba_redis_command(r, store_cb, &ping, NULL, "PING"), 0);
  WAIT(ping.called == 1, 5000);
  ck_assert_int_eq(ping.status, 0);

  close_client(r2, &e2);
  uv_close((uv_handle_t *)&st.next, NULL);
  ck_assert_int_eq(dibba_redis_sub_close(watch, NULL), 0);
  ck_assert_int_eq(dibba_redis_sub_close(sub, sub_closed), 0);
  WAIT(se.closed == 1, 5000);
  close_client(r, &ev);
  loop_teardown();
  for (int i = 0; i < 3; i++) {
    sen_kill(&sen[i]);
    rm_tree(sen[i].dir);
  }
  srv_stop(&rep);
  srv_stop(&m);
  fprintf(stderr, "sentinel: test took %llu ms\n", (unsigned long long)(now_ms() - t_start));
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
  tcase_add_test(tc, role_readonly_wait);
  tcase_add_test(tc, sentinel_close_midway);
  suite_add_tcase(s, tc);
  TCase *ts = tcase_create("sentinel");
  tcase_set_timeout(ts, 90);
  tcase_add_test(ts, sentinel_failover);
  suite_add_tcase(s, ts);
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
