/* SPDX-License-Identifier: Apache-2.0 */
/* `dibba-api user ...`: bootstrap and manage users in the users file from the command line. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "dibba/alloc.h"
#include "dibba/error.h"

#include "auth-int.h"

#define PROG "dibba-api"

static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs(PROG ": ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  return 1;
}

static int usage_error(const char *what) {
  fprintf(stderr, PROG ": %s\n%s", what, DIBBA_AUTH_USAGE);
  return 2;
}

/* One line of at most DIBBA_AUTH_PASSWORD_MAX bytes from f, "\n" or "\r\n" trimmed. */
static int read_line(FILE *f, char *buf, size_t size, size_t *len) {
  if (fgets(buf, (int)size, f) == NULL)
    return -ENODATA;
  size_t n = strlen(buf);
  if (n > 0 && buf[n - 1] == '\n')
    buf[--n] = '\0';
  else if (n == size - 1)
    return -E2BIG; /* no newline in a full buffer: the line is too long */
  if (n > 0 && buf[n - 1] == '\r')
    buf[--n] = '\0';
  *len = n;
  return 0;
}

static int prompt(const char *text, char *buf, size_t size, size_t *len) {
  struct termios old, quiet;
  if (tcgetattr(STDIN_FILENO, &old) < 0)
    return -errno;
  quiet = old;
  quiet.c_lflag &= ~(tcflag_t)ECHO;
  quiet.c_lflag |= ECHONL;
  fputs(text, stderr);
  fflush(stderr);
  if (tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet) < 0)
    return -errno;
  int r = read_line(stdin, buf, size, len);
  tcsetattr(STDIN_FILENO, TCSAFLUSH, &old);
  return r;
}

/* The new password: from stdin (one line) or from the terminal, typed twice. */
static int get_password(int from_stdin, char *pw, size_t size, size_t *len) {
  int r;
  if (from_stdin) {
    r = read_line(stdin, pw, size, len);
    if (r == -ENODATA)
      return fail("no password on stdin");
  } else {
    if (!isatty(STDIN_FILENO))
      return fail("stdin is not a terminal: pipe the password in with --password-stdin");
    char again[DIBBA_AUTH_PASSWORD_MAX + 2];
    size_t alen = 0;
    r = prompt("Password: ", pw, size, len);
    if (r == 0)
      r = prompt("Repeat password: ", again, sizeof again, &alen);
    if (r == 0 && (alen != *len || memcmp(again, pw, alen) != 0)) {
      OPENSSL_cleanse(again, sizeof again);
      return fail("the passwords do not match");
    }
    OPENSSL_cleanse(again, sizeof again);
    if (r == -ENODATA)
      return fail("no password entered");
  }
  if (r == -E2BIG || (r == 0 && !dibba_auth_password_valid(pw, *len)))
    return fail("the password must be %d to %d bytes", DIBBA_AUTH_PASSWORD_MIN, DIBBA_AUTH_PASSWORD_MAX);
  if (r < 0)
    return fail("cannot read the password: %s", dibba_strerror(r));
  return 0;
}

static int save(dibba_auth_users_t *u) {
  char err[600];
  if (dibba_auth_users_save(u, err, sizeof err) < 0)
    return fail("%s", err);
  return 0;
}

/* Options after NAME: --role ROLE and --password-stdin, in any order. */
static int parse_opts(int argc, char **argv, int allow_role, const char **role, int *from_stdin) {
  for (int i = 0; i < argc; i++) {
    if (strcmp(argv[i], "--password-stdin") == 0) {
      *from_stdin = 1;
    } else if (allow_role && strcmp(argv[i], "--role") == 0 && i + 1 < argc) {
      *role = argv[++i];
    } else if (allow_role && strncmp(argv[i], "--role=", 7) == 0) {
      *role = argv[i] + 7;
    } else {
      fprintf(stderr, PROG ": unexpected argument '%s'\n", argv[i]);
      return -EINVAL;
    }
  }
  return 0;
}

static int cmd_set_password(dibba_auth_users_t *u, const char *name, int adding, dibba_auth_role_t role,
                            int from_stdin) {
  char pw[DIBBA_AUTH_PASSWORD_MAX + 2];
  char *hash = NULL;
  size_t len = 0;
  int64_t now = (int64_t)time(NULL);
  int rc = get_password(from_stdin, pw, sizeof pw, &len);
  if (rc != 0)
    goto out;
  int r = dibba_auth_password_hash(pw, len, &u->params, &hash);
  if (r < 0) {
    rc = fail("cannot hash the password: %s", dibba_strerror(r));
    goto out;
  }
  r = adding ? dibba_auth_users_add(u, name, role, hash, now) : dibba_auth_users_set_hash(u, name, hash, now);
  if (r < 0) {
    rc = fail("user %s: %s", name, dibba_strerror(r));
    goto out;
  }
  rc = save(u);
  if (rc == 0)
    printf(adding ? "user %s added\n" : "password of %s changed\n", name);
out:
  OPENSSL_cleanse(pw, sizeof pw);
  if (hash) {
    OPENSSL_cleanse(hash, strlen(hash));
    free(hash);
  }
  return rc;
}

static int run(dibba_auth_users_t *u, int argc, char **argv) {
  const char *sub = argv[1];
  const char *name = argc > 2 ? argv[2] : NULL;
  int64_t now = (int64_t)time(NULL);
  dibba_auth_role_t role = DIBBA_AUTH_ROLE_NONE;
  int r;

  if (strcmp(sub, "list") == 0) {
    if (argc != 2)
      return usage_error("user list takes no arguments");
    printf("%-32s %-9s %s\n", "NAME", "ROLE", "ENABLED");
    for (size_t i = 0; i < u->n; i++)
      printf("%-32s %-9s %s\n", u->users[i].name, dibba_auth_role_name(u->users[i].role),
             u->users[i].enabled ? "yes" : "no");
    return 0;
  }
  if (name == NULL)
    return usage_error("missing user NAME");
  if (!dibba_auth_username_valid(name))
    return fail("invalid user name \"%s\" (1-64 characters of A-Z a-z 0-9 . _ @ -)", name);
  const dibba_auth_user_t *x = dibba_auth_users_find(u, name);

  if (strcmp(sub, "add") == 0 || strcmp(sub, "passwd") == 0) {
    int adding = sub[0] == 'a', from_stdin = 0;
    const char *rname = NULL;
    if (parse_opts(argc - 3, argv + 3, adding, &rname, &from_stdin) < 0)
      return 2;
    if (adding) {
      if (rname == NULL)
        return usage_error("user add needs --role admin|operator|viewer");
      if (dibba_auth_role_parse(rname, &role) < 0)
        return fail("unknown role \"%s\" (admin, operator or viewer)", rname);
      if (x)
        return fail("user exists: %s", name);
    } else if (x == NULL) {
      return fail("no such user: %s", name);
    }
    return cmd_set_password(u, name, adding, role, from_stdin);
  }
  if (strcmp(sub, "role") == 0) {
    if (argc != 4)
      return usage_error("usage: user role NAME admin|operator|viewer");
    if (dibba_auth_role_parse(argv[3], &role) < 0)
      return fail("unknown role \"%s\" (admin, operator or viewer)", argv[3]);
    r = dibba_auth_users_set_role(u, name, role, now);
  } else if (strcmp(sub, "enable") == 0 || strcmp(sub, "disable") == 0) {
    if (argc != 3)
      return usage_error("usage: user enable|disable NAME");
    r = dibba_auth_users_set_enabled(u, name, sub[0] == 'e', now);
  } else if (strcmp(sub, "del") == 0) {
    if (argc != 3)
      return usage_error("usage: user del NAME");
    r = dibba_auth_users_del(u, name);
  } else {
    return usage_error("unknown user command");
  }
  if (r == -ENOENT)
    return fail("no such user: %s", name);
  if (r < 0)
    return fail("user %s: %s", name, dibba_strerror(r));
  if (save(u) != 0)
    return 1;
  printf("user %s: %s done\n", name, sub);
  return 0;
}

int dibba_auth_command(const dibba_config_t *cfg, int argc, char **argv) {
  char err[600];
  char *path = NULL;
  dibba_auth_scrypt_t params;
  dibba_auth_users_t u;
  int rc, lockfd = -1;
  memset(&u, 0, sizeof u);
  if (argc < 1 || strcmp(argv[0], "user") != 0)
    return usage_error(argc < 1 ? "missing command" : "unknown command (try: user)");
  if (argc < 2)
    return usage_error("missing user command");
  if (dibba_auth_users_path(cfg, &path, err, sizeof err) < 0 ||
      dibba_auth_scrypt_config(cfg, &params, err, sizeof err) < 0)
    return fail("%s", err);
  /* Two CLI runs at once must not lose each other's change: hold the directory's lock across load and save. */
  char *dircopy = dibba_xstrdup(path);
  lockfd = open(dirname(dircopy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  free(dircopy);
  if (lockfd >= 0 && flock(lockfd, LOCK_EX) < 0) {
    close(lockfd);
    lockfd = -1;
  }
  dibba_auth_users_init(&u, path, &params);
  if (dibba_auth_users_load(&u, err, sizeof err) < 0) {
    rc = fail("%s", err);
    goto out;
  }
  rc = run(&u, argc, argv);
out:
  fflush(stdout);
  dibba_auth_users_free(&u);
  if (lockfd >= 0)
    close(lockfd);
  free(path);
  return rc;
}
