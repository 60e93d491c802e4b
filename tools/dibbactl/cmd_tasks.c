/* SPDX-License-Identifier: Apache-2.0 */
/* dibbactl run, revoke and watch (tasks), schedules run, and instances create/terminate/list (EC2). */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dibba/alloc.h"
#include "ctl.h"

#define BAR_WIDTH 30

static int is_final(const char *s) {
  return s && (strcmp(s, "SUCCESS") == 0 || strcmp(s, "FAILURE") == 0 || strcmp(s, "REVOKED") == 0);
}

static char *task_path(const char *id, const char *suffix) {
  char *e = ctl_esc(id);
  char *p = dibba_xasprintf("/v1/tasks/%s%s", e, suffix);
  free(e);
  return p;
}

/* Printable copy of a server string: no control characters. */
static void clean_into(char *dst, size_t len, const char *s) {
  snprintf(dst, len, "%s", s ? s : "");
  for (char *p = dst; *p; p++)
    if ((unsigned char)*p < 0x20 || *p == 0x7f)
      *p = ' ';
}

static void error_text(const json_t *ev, char *buf, size_t len) {
  const json_t *e = json_object_get(ev, "error");
  const char *code = json_string_value(json_object_get(e, "code"));
  const char *msg = json_string_value(json_object_get(e, "message"));
  char tmp[512];
  if (code || msg)
    snprintf(tmp, sizeof tmp, "%s%s%s", code ? code : "", code && msg ? ": " : "", msg ? msg : "");
  else
    ctl_jstr(e, tmp, sizeof tmp);
  clean_into(buf, len, tmp);
}

/* One event: a progress bar redrawn in place on a terminal, else one plain line per event. */
static void show_event(const char *id, const json_t *ev, int tty, int *bar_open) {
  const char *st = json_string_value(json_object_get(ev, "status"));
  const json_t *p = json_object_get(ev, "progress");
  double cur = json_number_value(json_object_get(p, "current")), tot = json_number_value(json_object_get(p, "total"));
  char msg[256], status[32], err[512] = "";
  clean_into(msg, sizeof msg, json_string_value(json_object_get(p, "message")));
  clean_into(status, sizeof status, st ? st : "?");
  if (json_object_get(ev, "error") && !json_is_null(json_object_get(ev, "error")))
    error_text(ev, err, sizeof err);
  if (tty) {
    int pct = tot > 0 ? (int)(cur * 100 / tot) : strcmp(status, "SUCCESS") == 0 ? 100 : 0;
    if (pct > 100)
      pct = 100;
    int fill = pct * BAR_WIDTH / 100;
    char bar[BAR_WIDTH + 1];
    memset(bar, '#', (size_t)fill);
    memset(bar + fill, '.', (size_t)(BAR_WIDTH - fill));
    bar[BAR_WIDTH] = '\0';
    printf("\r\033[K%s [%s] %3d%% %-8s %s", id, bar, pct, status, err[0] ? err : msg);
    *bar_open = 1;
    if (is_final(st)) {
      printf("\n");
      *bar_open = 0;
    }
  } else {
    char when[32];
    time_t now = time(NULL);
    struct tm tm;
    strftime(when, sizeof when, "%H:%M:%S", localtime_r(&now, &tm));
    printf("%s %s %s", when, id, status);
    if (tot > 0)
      printf(" %.0f/%.0f", cur, tot);
    if (msg[0])
      printf(" %s", msg);
    if (err[0])
      printf(" error=%s", err);
    const char *worker = json_string_value(json_object_get(ev, "worker"));
    if (worker && is_final(st))
      printf(" worker=%s", worker);
    printf("\n");
  }
  fflush(stdout);
}

int ctl_watch_task(ctl_t *c, const char *id, int timeout_s) {
  ctl_ws_t *ws = NULL;
  char *path = task_path(id, "/watch");
  int rc = ctl_ws_open(c, path, &ws);
  free(path);
  if (rc != 0)
    return rc;
  int tty = isatty(STDOUT_FILENO) && c->output != CTL_OUT_JSON, bar_open = 0;
  char final[16] = "", reason[128];
  struct timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (;;) {
    const char *msg;
    size_t len;
    int code = 0, wait = -1;
    if (timeout_s > 0) {
      struct timespec now;
      clock_gettime(CLOCK_MONOTONIC, &now);
      long long left =
          (long long)timeout_s * 1000 - ((now.tv_sec - t0.tv_sec) * 1000LL + (now.tv_nsec - t0.tv_nsec) / 1000000);
      wait = left > 0 ? (int)left : 0;
    }
    int r = ctl_ws_next(ws, wait, &msg, &len, &code, reason, sizeof reason);
    if (r == -ETIMEDOUT) {
      if (bar_open)
        printf("\n");
      rc = ctl_fail(CTL_EUNAVAIL, "watch %s: no final state within %d s", id, timeout_s);
      break;
    }
    if (r < 0) {
      if (bar_open)
        printf("\n");
      rc = -r;
      break;
    }
    if (r == 1) {
      json_t *ev = json_loadb(msg, len, 0, NULL);
      if (!json_is_object(ev)) {
        json_decref(ev);
        continue;
      }
      if (c->output == CTL_OUT_JSON) {
        char *s = json_dumps(ev, JSON_COMPACT);
        printf("%s\n", s);
        free(s);
        fflush(stdout);
      } else {
        show_event(id, ev, tty, &bar_open);
      }
      const char *st = json_string_value(json_object_get(ev, "status"));
      if (is_final(st))
        snprintf(final, sizeof final, "%s", st);
      json_decref(ev);
      continue;
    }
    /* The server closed. */
    if (bar_open)
      printf("\n");
    if (final[0])
      rc = strcmp(final, "SUCCESS") == 0 ? CTL_OK : CTL_EFAIL;
    else if (code == 4404)
      rc = ctl_fail(CTL_ENOTFOUND, "watch: unknown task %s", id);
    else if (code == 4401 || code == 4403)
      rc = ctl_fail(CTL_EAUTH, "watch %s: refused (%d %s)", id, code, reason);
    else
      rc = ctl_fail(CTL_EUNAVAIL, "watch %s: the connection closed before the task finished (%d%s%s)", id, code,
                    reason[0] ? " " : "", reason);
    break;
  }
  ctl_ws_close(ws);
  return rc;
}

int ctl_cmd_watch(ctl_t *c, int argc, char **argv) {
  static const struct option opts[] = {{"timeout", required_argument, NULL, 't'}, {NULL, 0, NULL, 0}};
  int o, timeout = 0;
  optind = 0;
  opterr = 0;
  while ((o = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
    if (o != 't')
      return ctl_opt_error("watch", o, argv);
    char *end;
    long v = strtol(optarg, &end, 10);
    if (*end || v < 0 || v > 86400 * 7)
      return ctl_usage("watch", "--timeout takes seconds (0: none)");
    timeout = (int)v;
  }
  if (argc - optind != 1)
    return ctl_usage("watch", "say watch TASK_ID");
  return ctl_watch_task(c, argv[optind], timeout);
}

int ctl_cmd_run(ctl_t *c, int argc, char **argv) {
  static const struct option opts[] = {
      {"host", required_argument, NULL, 'H'},        {"role", required_argument, NULL, 'r'},
      {"args", required_argument, NULL, 'a'},        {"watch", no_argument, NULL, 'w'},
      {"countdown", required_argument, NULL, 'C'},   {"expires", required_argument, NULL, 'E'},
      {"max-retries", required_argument, NULL, 'R'}, {NULL, 0, NULL, 0}};
  const char *host = NULL, *role = NULL, *args = NULL;
  double countdown = -1, expires = -1;
  long retries = -1;
  int watch = 0, o, rc;
  optind = 0;
  opterr = 0;
  while ((o = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
    char *end = NULL;
    switch (o) {
    case 'H': host = optarg; break;
    case 'r': role = optarg; break;
    case 'a': args = optarg; break;
    case 'w': watch = 1; break;
    case 'C': countdown = strtod(optarg, &end); break;
    case 'E': expires = strtod(optarg, &end); break;
    case 'R': retries = strtol(optarg, &end, 10); break;
    default: return ctl_opt_error("run", o, argv);
    }
    if (end && (*end || end == optarg || (o == 'R' ? retries < 0 : o == 'C' ? countdown < 0 : expires <= 0)))
      return ctl_usage("run", "%s takes a non-negative number", argv[optind - 1]);
  }
  if (argc - optind != 1)
    return ctl_usage("run", "say run TASK_NAME --host HOST|--role ROLE [--args JSON]");
  if ((host == NULL) == (role == NULL))
    return ctl_usage("run", "give exactly one of --host and --role");
  json_t *body = json_pack("{s:s}", "name", argv[optind]), *out = NULL;
  json_object_set_new(body, host ? "host" : "role", json_string(host ? host : role));
  if (args) {
    json_error_t je;
    json_t *a = json_loads(args, JSON_REJECT_DUPLICATES, &je);
    if (!json_is_object(a)) {
      json_decref(a);
      json_decref(body);
      return ctl_usage("run", "--args must be a JSON object%s%s", a ? "" : ": ", a ? "" : je.text);
    }
    json_object_set_new(body, "args", a);
  }
  if (countdown >= 0)
    json_object_set_new(body, "countdown", json_real(countdown));
  if (expires > 0)
    json_object_set_new(body, "expires", json_real(expires));
  if (retries >= 0)
    json_object_set_new(body, "max_retries", json_integer(retries));
  rc = ctl_call(c, "POST", "/v1/tasks", body, "run", &out);
  json_decref(body);
  if (rc != 0)
    return rc;
  const char *id = json_string_value(json_object_get(out, "task_id"));
  if (id == NULL) {
    json_decref(out);
    return ctl_fail(CTL_EFAIL, "run: the server's answer has no task_id");
  }
  if (c->output == CTL_OUT_JSON)
    ctl_print_json(out);
  else
    printf("%s\n", id);
  fflush(stdout);
  if (watch)
    rc = ctl_watch_task(c, id, 0);
  json_decref(out);
  return rc;
}

int ctl_cmd_revoke(ctl_t *c, int argc, char **argv) {
  if (argc != 2 || argv[1][0] == '-')
    return ctl_usage("revoke", "say revoke TASK_ID");
  char *path = task_path(argv[1], "/revoke");
  json_t *out = NULL;
  int rc = ctl_call(c, "POST", path, NULL, "revoke", &out);
  if (rc == 0) {
    if (c->output == CTL_OUT_JSON)
      ctl_print_json(out);
    else
      printf("task %s revoked\n", argv[1]);
  }
  json_decref(out);
  free(path);
  return rc;
}

/* ---- schedules ---- */

int ctl_cmd_schedules(ctl_t *c, int argc, char **argv) {
  if (argc >= 2 && strcmp(argv[1], "list") == 0) {
    if (argc > 3)
      return ctl_usage("schedules list", "unexpected argument \"%s\"", argv[3]);
    char *gargv[] = {"get", "schedules", argc == 3 ? argv[2] : NULL, NULL};
    return ctl_cmd_get(c, argc == 3 ? 3 : 2, gargv);
  }
  if (argc != 3 || strcmp(argv[1], "run") != 0)
    return ctl_usage("schedules", "say schedules list or schedules run NAME");
  char *e = ctl_esc(argv[2]);
  char *path = dibba_xasprintf("/v1/schedules/%s/run", e);
  free(e);
  json_t *out = NULL;
  int rc = ctl_call(c, "POST", path, NULL, "schedules run", &out);
  if (rc == 0) {
    const char *id = json_string_value(json_object_get(out, "task_id"));
    if (c->output == CTL_OUT_JSON)
      ctl_print_json(out);
    else if (id)
      printf("%s\n", id);
    else
      printf("schedule %s started\n", argv[2]);
  }
  json_decref(out);
  free(path);
  return rc;
}

/* ---- instances ---- */

static const char *const inst_cols[] = {"INSTANCE", "STATE", "TYPE", "PRIVATE-IP", "PUBLIC-IP", "LAUNCHED", NULL};

static int instances_list(ctl_t *c, const char *ns) {
  char *e = ctl_esc(ns);
  char *path = dibba_xasprintf("/v1/namespaces/%s/instances", e);
  free(e);
  json_t *out = NULL;
  int rc = ctl_call(c, "GET", path, NULL, "instances list", &out);
  free(path);
  if (rc != 0)
    return rc;
  json_t *items = json_is_array(out) ? out : ctl_jget(out, "instances", "items", NULL);
  if (c->output == CTL_OUT_JSON) {
    ctl_print_json(out);
  } else if (!json_is_array(items)) {
    rc = ctl_fail(CTL_EFAIL, "instances list: the server's answer does not have the expected shape");
  } else {
    size_t i;
    json_t *x;
    char buf[64];
    if (c->output == CTL_OUT_NAME) {
      json_array_foreach(items, i, x)
          printf("%s\n", ctl_jstr(ctl_jget(x, "instance_id", "instanceId", NULL), buf, sizeof buf));
    } else {
      ctl_table_t *t = ctl_table_new(inst_cols);
      json_array_foreach(items, i, x) {
        ctl_table_cell(t, json_string_value(ctl_jget(x, "instance_id", "instanceId", NULL)));
        ctl_table_cell(t, json_string_value(ctl_jget(x, "state", NULL)));
        ctl_table_cell(t, json_string_value(ctl_jget(x, "instance_type", "instanceType", NULL)));
        ctl_table_cell(t, json_string_value(ctl_jget(x, "private_ip", "privateIP", "privateIp", NULL)));
        ctl_table_cell(t, json_string_value(ctl_jget(x, "public_ip", "publicIP", "publicIp", NULL)));
        ctl_fmt_age(ctl_time_ms(ctl_jget(x, "launched_at_ms", "launchedAtMs", NULL)), buf, sizeof buf);
        ctl_table_cell(t, buf);
        ctl_table_row(t);
      }
      ctl_table_print(t);
    }
  }
  json_decref(out);
  return rc;
}

static void print_task_answer(ctl_t *c, json_t *out, const char *fallback) {
  const char *id = json_string_value(json_object_get(out, "task_id"));
  if (c->output == CTL_OUT_JSON)
    ctl_print_json(out);
  else if (id)
    printf("%s\n", id);
  else
    printf("%s\n", fallback);
}

int ctl_cmd_instances(ctl_t *c, int argc, char **argv) {
  static const struct option opts[] = {{"filename", required_argument, NULL, 'f'},
                                       {"namespace", required_argument, NULL, 'n'},
                                       {"count", required_argument, NULL, 'c'},
                                       {"instance-type", required_argument, NULL, 't'},
                                       {"ami", required_argument, NULL, 'a'},
                                       {"region", required_argument, NULL, 'r'},
                                       {"subnet", required_argument, NULL, 's'},
                                       {"security-group", required_argument, NULL, 'g'},
                                       {"key-name", required_argument, NULL, 'k'},
                                       {"tag", required_argument, NULL, 'T'},
                                       {NULL, 0, NULL, 0}};
  const char *file = NULL;
  json_t *spec = json_object(), *sgs = json_array(), *tags = json_object(), *out = NULL;
  int o, rc = 0;
  optind = 0;
  opterr = 0;
  while ((o = getopt_long(argc, argv, ":f:n:", opts, NULL)) != -1) {
    char *end;
    switch (o) {
    case 'f': file = optarg; break;
    case 'n': json_object_set_new(spec, "namespace", json_string(optarg)); break;
    case 'c': {
      long v = strtol(optarg, &end, 10);
      if (*end || end == optarg || v < 1 || v > 100) {
        rc = ctl_usage("instances create", "--count takes 1 to 100");
        goto out;
      }
      /* POST /create-instances takes min_count and max_count (it refuses unknown fields such as "count"). */
      json_object_set_new(spec, "min_count", json_integer(v));
      json_object_set_new(spec, "max_count", json_integer(v));
      break;
    }
    case 't': json_object_set_new(spec, "instance_type", json_string(optarg)); break;
    case 'a': json_object_set_new(spec, "ami_id", json_string(optarg)); break;
    case 'r':
      /* The API has no region field: the aws worker's AWS_REGION decides. */
      rc = ctl_usage("instances create", "--region is not supported: the aws worker's AWS_REGION decides");
      goto out;
    case 's': json_object_set_new(spec, "subnet_id", json_string(optarg)); break;
    case 'g': json_array_append_new(sgs, json_string(optarg)); break;
    case 'k': json_object_set_new(spec, "key_name", json_string(optarg)); break;
    case 'T': {
      const char *eq = strchr(optarg, '=');
      if (eq == NULL || eq == optarg) {
        rc = ctl_usage("instances create", "--tag takes KEY=VALUE");
        goto out;
      }
      char *k = dibba_xstrndup(optarg, (size_t)(eq - optarg));
      json_object_set_new(tags, k, json_string(eq + 1));
      free(k);
      break;
    }
    default: rc = ctl_opt_error("instances", o, argv); goto out;
    }
  }
  int n = argc - optind;
  char **a = argv + optind;
  if (n < 1) {
    rc = ctl_usage("instances", "say instances create|terminate|list");
    goto out;
  }
  if (strcmp(a[0], "create") == 0) {
    if (n != 1) {
      rc = ctl_usage("instances create", "unexpected argument \"%s\"", a[1]);
      goto out;
    }
    if (file) {
      if (json_object_size(spec) || json_array_size(sgs) || json_object_size(tags)) {
        rc = ctl_usage("instances create", "give -f SPEC or the flags, not both");
        goto out;
      }
      json_decref(spec);
      spec = NULL;
      if ((rc = ctl_manifest_load(file, &spec)) != 0)
        goto out;
      if (!json_is_object(spec)) {
        rc = ctl_fail(CTL_EINVALID, "%s: the spec is not an object", file);
        goto out;
      }
    } else {
      if (json_array_size(sgs))
        json_object_set(spec, "security_group_ids", sgs);
      if (json_object_size(tags))
        json_object_set(spec, "tags", tags);
    }
    if (!json_is_string(json_object_get(spec, "namespace"))) {
      rc = ctl_usage("instances create", "a namespace is required (--namespace NS or \"namespace\" in the spec)");
      goto out;
    }
    if ((rc = ctl_call(c, "POST", "/create-instances", spec, "instances create", &out)) == 0)
      print_task_answer(c, out, "instances requested");
  } else if (strcmp(a[0], "terminate") == 0 || strcmp(a[0], "list") == 0) {
    if (n != 2 || file || json_object_size(spec)) {
      rc = ctl_usage("instances", "say instances %s NAMESPACE", a[0]);
      goto out;
    }
    if (a[0][0] == 'l') {
      rc = instances_list(c, a[1]);
    } else {
      json_t *body = json_pack("{s:s}", "namespace", a[1]);
      if ((rc = ctl_call(c, "POST", "/terminate-namespace", body, "instances terminate", &out)) == 0)
        print_task_answer(c, out, "termination requested");
      json_decref(body);
    }
  } else {
    rc = ctl_usage("instances", "unknown sub-command \"%s\"", a[0]);
  }
out:
  json_decref(out);
  json_decref(spec);
  json_decref(sgs);
  json_decref(tags);
  return rc;
}
