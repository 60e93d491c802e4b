/* SPDX-License-Identifier: Apache-2.0 */
/* dibbactl login, logout, whoami and users: tokens from POST /token, and the /v1/users admin routes. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "dibba/alloc.h"
#include "ctl.h"

/* One line from f into buf (without the newline). Returns 0, -E2BIG if longer than len - 1, -ENODATA at EOF. */
static int read_line(FILE *f, char *buf, size_t len) {
  size_t n = 0;
  int ch;
  while ((ch = fgetc(f)) != EOF && ch != '\n') {
    if (n + 1 >= len)
      return -E2BIG;
    buf[n++] = (char)ch;
  }
  if (ch == EOF && n == 0)
    return -ENODATA;
  if (n > 0 && buf[n - 1] == '\r')
    n--;
  buf[n] = '\0';
  return 0;
}

/* Ask on the terminal (echo off for secrets); or read stdin's first line with --password-stdin. */
static int ask(const char *cmd, const char *prompt, int secret, int from_stdin, char *buf, size_t len) {
  int rc = 0;
  if (from_stdin) {
    int r = read_line(stdin, buf, len);
    if (r == -E2BIG)
      return ctl_fail(CTL_EUSAGE, "%s: the password on stdin is longer than %zu bytes", cmd, len - 2);
    if (r < 0 || buf[0] == '\0')
      return ctl_fail(CTL_EUSAGE, "%s: no password on stdin", cmd);
    return 0;
  }
  int fd = open("/dev/tty", O_RDWR | O_CLOEXEC);
  if (fd < 0)
    return ctl_usage(cmd, "no terminal to ask for the %s: use %s", secret ? "password" : "user name",
                     secret ? "--password-stdin" : "-u USER");
  FILE *tty = fdopen(fd, "r+");
  if (tty == NULL) {
    close(fd);
    return ctl_fail(CTL_EFAIL, "%s: cannot use the terminal", cmd);
  }
  struct termios old, quiet;
  int restore = 0;
  fputs(prompt, tty);
  fflush(tty);
  if (secret && tcgetattr(fd, &old) == 0) {
    quiet = old;
    quiet.c_lflag &= ~(tcflag_t)ECHO;
    quiet.c_lflag |= ECHONL;
    restore = tcsetattr(fd, TCSAFLUSH, &quiet) == 0;
  }
  int r = read_line(tty, buf, len);
  if (restore)
    tcsetattr(fd, TCSAFLUSH, &old);
  if (r == -E2BIG)
    rc = ctl_fail(CTL_EUSAGE, "%s: longer than %zu bytes", cmd, len - 2);
  else if (r < 0 || buf[0] == '\0')
    rc = ctl_fail(CTL_EUSAGE, "%s: nothing entered", cmd);
  fclose(tty);
  return rc;
}

/* A new password, asked twice on a terminal. */
static int new_password(const char *cmd, int from_stdin, char *buf, size_t len) {
  int rc = ask(cmd, "New password: ", 1, from_stdin, buf, len);
  if (rc != 0 || from_stdin)
    return rc;
  char again[CTL_PASSWORD_MAX + 2];
  rc = ask(cmd, "Repeat it: ", 1, 0, again, sizeof again);
  if (rc == 0 && strcmp(again, buf) != 0)
    rc = ctl_fail(CTL_EUSAGE, "%s: the passwords differ", cmd);
  explicit_bzero(again, sizeof again);
  return rc;
}

int ctl_cmd_login(ctl_t *c, int argc, char **argv) {
  static const struct option opts[] = {{"user", required_argument, NULL, 'u'},
                                       {"username", required_argument, NULL, 'u'},
                                       {"password-stdin", no_argument, NULL, 'P'},
                                       {NULL, 0, NULL, 0}};
  const char *user = NULL;
  int from_stdin = 0, o, rc;
  char name[256], pw[CTL_PASSWORD_MAX + 2];
  optind = 0;
  opterr = 0;
  while ((o = getopt_long(argc, argv, ":u:", opts, NULL)) != -1) {
    switch (o) {
    case 'u': user = optarg; break;
    case 'P': from_stdin = 1; break;
    default: return ctl_opt_error("login", o, argv);
    }
  }
  if (optind != argc)
    return ctl_usage("login", "unexpected argument \"%s\"", argv[optind]);
  if (user == NULL) {
    if ((rc = ask("login", "Username: ", 0, 0, name, sizeof name)) != 0)
      return rc;
    user = name;
  }
  if ((rc = ask("login", "Password: ", 1, from_stdin, pw, sizeof pw)) != 0)
    return rc;
  char *eu = ctl_esc(user), *ep = ctl_esc(pw);
  explicit_bzero(pw, sizeof pw);
  char *form = dibba_xasprintf("grant_type=password&username=%s&password=%s", eu, ep);
  explicit_bzero(ep, strlen(ep));
  free(ep);
  free(eu);
  ctl_resp_t r;
  rc = ctl_request(c, "POST", "/token", form, strlen(form), CTL_REQ_NOAUTH | CTL_REQ_FORM, &r);
  explicit_bzero(form, strlen(form));
  free(form);
  if (rc != 0)
    return rc;
  if (r.status == 401) {
    rc = ctl_fail(CTL_EAUTH, "login to %s failed: incorrect username or password", c->server);
    goto out;
  }
  if ((rc = ctl_resp_check(c, &r, "POST", "/token", "login")) != 0)
    goto out;
  const char *tok = json_string_value(json_object_get(r.json, "access_token"));
  json_int_t exp = json_integer_value(json_object_get(r.json, "expires_in"));
  if (tok == NULL || tok[0] == '\0') {
    rc = ctl_fail(CTL_EFAIL, "login: the server's answer has no access_token");
    goto out;
  }
  if ((rc = ctl_config_save_token(c, user, tok, exp > 0 ? (int64_t)time(NULL) + exp : 0)) != 0)
    goto out;
  printf("Logged in to %s as %s.\n", c->server, user);
out:
  if (r.body)
    explicit_bzero(r.body, r.len);
  ctl_resp_free(&r);
  return rc;
}

int ctl_cmd_logout(ctl_t *c, int argc, char **argv) {
  int had = 0;
  if (argc > 1)
    return ctl_usage("logout", "unexpected argument \"%s\"", argv[1]);
  int rc = ctl_config_forget_token(c, &had);
  if (rc == 0)
    printf(had ? "Logged out.\n" : "Not logged in.\n");
  return rc;
}

int ctl_cmd_whoami(ctl_t *c, int argc, char **argv) {
  json_t *me = NULL;
  if (argc > 1)
    return ctl_usage("whoami", "unexpected argument \"%s\"", argv[1]);
  int rc = ctl_call(c, "GET", "/v1/me", NULL, "whoami", &me);
  if (rc != 0)
    return rc;
  const char *sub = json_string_value(json_object_get(me, "sub"));
  const char *role = json_string_value(json_object_get(me, "role"));
  if (c->output == CTL_OUT_JSON)
    ctl_print_json(me);
  else
    printf("%s (%s) on %s\n", sub ? sub : "?", role ? role : "?", c->server);
  json_decref(me);
  return 0;
}

/* ---- users ---- */

static int user_patch(ctl_t *c, const char *name, json_t *body, const char *what, const char *done) {
  char *en = ctl_esc(name);
  char *path = dibba_xasprintf("/v1/users/%s", en);
  json_t *out = NULL;
  int rc = ctl_call(c, "PATCH", path, body, what, &out);
  if (rc == 0) {
    if (c->output == CTL_OUT_JSON)
      ctl_print_json(out);
    else
      printf("user %s %s\n", name, done);
  }
  json_decref(out);
  free(path);
  free(en);
  return rc;
}

int ctl_cmd_users(ctl_t *c, int argc, char **argv) {
  static const struct option opts[] = {{"role", required_argument, NULL, 'r'},
                                       {"password-stdin", no_argument, NULL, 'P'},
                                       {"disabled", no_argument, NULL, 'd'},
                                       {NULL, 0, NULL, 0}};
  const char *role = NULL;
  int from_stdin = 0, disabled = 0, o, rc = 0;
  char pw[CTL_PASSWORD_MAX + 2];
  optind = 0;
  opterr = 0;
  while ((o = getopt_long(argc, argv, ":r:", opts, NULL)) != -1) {
    switch (o) {
    case 'r': role = optarg; break;
    case 'P': from_stdin = 1; break;
    case 'd': disabled = 1; break;
    default: return ctl_opt_error("users", o, argv);
    }
  }
  int n = argc - optind;
  char **a = argv + optind;
  if (n < 1)
    return ctl_usage("users", "say list, add, del, passwd, role, enable or disable");
  const char *sub = a[0];
  if (strcmp(sub, "list") == 0) {
    if (n != 1)
      return ctl_usage("users list", "unexpected argument \"%s\"", a[1]);
    char *gargv[] = {"get", "users", NULL};
    return ctl_cmd_get(c, 2, gargv);
  }
  if (n < 2)
    return ctl_usage("users", "%s needs a user name", sub);
  const char *name = a[1];
  if (strcmp(sub, "add") == 0) {
    if (n != 2)
      return ctl_usage("users add", "unexpected argument \"%s\"", a[2]);
    if (role == NULL)
      return ctl_usage("users add", "--role admin|operator|viewer is required");
    if ((rc = new_password("users add", from_stdin, pw, sizeof pw)) != 0)
      return rc;
    json_t *body = json_pack("{s:s, s:s, s:s}", "name", name, "role", role, "password", pw);
    explicit_bzero(pw, sizeof pw);
    if (disabled)
      json_object_set_new(body, "enabled", json_false());
    json_t *out = NULL;
    rc = ctl_call(c, "POST", "/v1/users", body, "users add", &out);
    json_decref(body);
    if (rc == 0) {
      if (c->output == CTL_OUT_JSON)
        ctl_print_json(out);
      else
        printf("user %s created\n", name);
    }
    json_decref(out);
    return rc;
  }
  if (strcmp(sub, "del") == 0 || strcmp(sub, "delete") == 0) {
    if (n != 2)
      return ctl_usage("users del", "unexpected argument \"%s\"", a[2]);
    char *en = ctl_esc(name);
    char *path = dibba_xasprintf("/v1/users/%s", en);
    rc = ctl_call(c, "DELETE", path, NULL, "users del", NULL);
    if (rc == 0)
      printf("user %s deleted\n", name);
    free(path);
    free(en);
    return rc;
  }
  if (strcmp(sub, "passwd") == 0) {
    if (n != 2)
      return ctl_usage("users passwd", "unexpected argument \"%s\"", a[2]);
    if ((rc = new_password("users passwd", from_stdin, pw, sizeof pw)) != 0)
      return rc;
    json_t *body = json_pack("{s:s}", "password", pw);
    explicit_bzero(pw, sizeof pw);
    rc = user_patch(c, name, body, "users passwd", "password changed");
    json_decref(body);
    return rc;
  }
  if (strcmp(sub, "role") == 0) {
    if (n != 3)
      return ctl_usage("users role", "say users role NAME admin|operator|viewer");
    json_t *body = json_pack("{s:s}", "role", a[2]);
    rc = user_patch(c, name, body, "users role", "role changed");
    json_decref(body);
    return rc;
  }
  if (strcmp(sub, "enable") == 0 || strcmp(sub, "disable") == 0) {
    if (n != 2)
      return ctl_usage("users", "unexpected argument \"%s\"", a[2]);
    json_t *body = json_pack("{s:b}", "enabled", sub[0] == 'e');
    rc = user_patch(c, name, body, sub[0] == 'e' ? "users enable" : "users disable",
                    sub[0] == 'e' ? "enabled" : "disabled");
    json_decref(body);
    return rc;
  }
  return ctl_usage("users", "unknown sub-command \"%s\"", sub);
}
