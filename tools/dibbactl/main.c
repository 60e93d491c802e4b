/* SPDX-License-Identifier: Apache-2.0 */
/* dibbactl: the command-line client of dibba-api. Global options, dispatch, help, and one-line errors. */
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dibba-config.h"
#include "dibba/alloc.h"
#include "completion.h"
#include "ctl.h"

static const char usage_text[] =
    "Usage: dibbactl [--server URL] [-o table|wide|json|name] COMMAND [ARGS]\n"
    "\n"
    "Commands:\n"
    "  login [-u USER] [--password-stdin]        log in (POST /token) and store the token\n"
    "  logout                                    forget the stored token\n"
    "  whoami                                    who the stored token belongs to\n"
    "  get nodes|tasks|pods|schedules|users [NAME]\n"
    "                                            list, or show one (pods: NS/NAME or -n NS NAME)\n"
    "  describe node|task|pod|schedule NAME      everything the server knows about one object\n"
    "  apply -f FILE                             create the Pod in FILE (YAML or JSON, '-' for stdin)\n"
    "  delete pod NS/NAME | -n NS NAME           delete a pod\n"
    "  logs [-f] [-c CONTAINER] [--tail N] NS/NAME\n"
    "                                            a pod's logs (-f follows)\n"
    "  exec NS/NAME [-c CONTAINER] -- CMD [ARG...]\n"
    "                                            run a command in a pod; exits with its exit code\n"
    "  run TASK --host H|--role R [--args JSON] [--watch]\n"
    "                                            submit a task, print its id\n"
    "  watch TASK_ID [--timeout SECONDS]         follow a task until it is final\n"
    "  revoke TASK_ID                            revoke a task\n"
    "  instances create -f SPEC | --namespace NS [--count N] [--instance-type T] [--ami AMI] ...\n"
    "  instances terminate NS | instances list NS\n"
    "  users list | add NAME --role ROLE [--password-stdin] | del NAME | passwd NAME [--password-stdin]\n"
    "        | role NAME ROLE | enable NAME | disable NAME\n"
    "  schedules list | run NAME\n"
    "  completion bash                           print the bash completion script\n"
    "  version                                   print dibbactl's version\n"
    "\n"
    "Global options (anywhere before --):\n"
    "  --server URL   dibba-api to talk to; else $DIBBA_SERVER, else \"server\" in config.json, else the server\n"
    "                 of the last login, else http://127.0.0.1:8080\n"
    "  -o FORMAT      table (default), wide (more columns), json (the server's JSON), name (names only)\n"
    "\n"
    "Files: $XDG_CONFIG_HOME/dibba (default ~/.config/dibba): config.json {\"server\": URL}; credentials.json\n"
    "       (0600) holds the token, which is only sent to the server that issued it.\n"
    "\n"
    "Exit codes: 0 ok; 1 other error (server error, missing route, local failure); 2 usage;\n"
    "            3 not logged in, 401 or 403; 4 not found (404); 5 conflict or invalid (409, 422, bad manifest);\n"
    "            6 server unavailable (connection failure, timeout, 502/503/504).\n"
    "            exec exits with the command's exit code; watch exits 1 when the task ends in FAILURE or REVOKED.\n";

/* Print msg as one line: a server's text must not add lines or move the cursor. */
int ctl_fail(int code, const char *fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  for (char *p = buf; *p; p++)
    if ((unsigned char)*p < 0x20 || *p == 0x7f)
      *p = ' ';
  fprintf(stderr, "dibbactl: %s\n", buf);
  return code;
}

int ctl_usage(const char *cmd, const char *fmt, ...) {
  char prefix[64];
  va_list ap;
  snprintf(prefix, sizeof prefix, "%s%s", cmd ? cmd : "", cmd ? ": " : "");
  char msg[768];
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return ctl_fail(CTL_EUSAGE, "%s%s (see dibbactl --help)", prefix, msg);
}

int ctl_opt_error(const char *cmd, int opt, char **argv) {
  const char *arg = argv[optind - 1];
  if (opt == ':')
    return ctl_usage(cmd, "option %s needs a value", arg);
  if (optopt && arg[0] == '-' && arg[1] != '-')
    return ctl_usage(cmd, "unknown option -%c", optopt);
  return ctl_usage(cmd, "unknown option %s", arg);
}

static int parse_output(ctl_t *c, const char *v) {
  static const char *const names[] = {"table", "wide", "json", "name"};
  for (size_t i = 0; i < 4; i++)
    if (strcmp(v, names[i]) == 0) {
      c->output = (ctl_output_t)i;
      c->output_set = 1;
      return 0;
    }
  return ctl_usage(NULL, "-o %s: the output format is one of table, wide, json, name", v);
}

/* Take the global options out of argv (up to "--"), so every command accepts them anywhere. */
static int global_options(ctl_t *c, int *argc, char **argv, const char **server) {
  int o = 1, rc = 0;
  for (int i = 1; i < *argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--") == 0) {
      while (i < *argc)
        argv[o++] = argv[i++];
      break;
    }
    const char *val = NULL;
    int is_server = 0;
    if (strcmp(a, "--server") == 0 || strcmp(a, "-s") == 0 || strcmp(a, "-o") == 0 || strcmp(a, "--output") == 0) {
      if (i + 1 >= *argc)
        return ctl_usage(NULL, "%s needs a value", a);
      is_server = a[1] == 's' || a[2] == 's';
      val = argv[++i];
    } else if (strncmp(a, "--server=", 9) == 0) {
      is_server = 1;
      val = a + 9;
    } else if (strncmp(a, "--output=", 9) == 0) {
      val = a + 9;
    } else if (strncmp(a, "-o", 2) == 0 && a[2]) {
      val = a + 2;
    } else {
      argv[o++] = argv[i];
      continue;
    }
    if (is_server)
      *server = val;
    else if ((rc = parse_output(c, val)) != 0)
      return rc;
  }
  *argc = o;
  argv[o] = NULL;
  return 0;
}

typedef struct cmd_s {
  const char *name;
  int (*run)(ctl_t *c, int argc, char **argv);
} cmd_t;

static const cmd_t commands[] = {
    {"login", ctl_cmd_login},         {"logout", ctl_cmd_logout},
    {"whoami", ctl_cmd_whoami},       {"get", ctl_cmd_get},
    {"describe", ctl_cmd_describe},   {"apply", ctl_cmd_apply},
    {"delete", ctl_cmd_delete},       {"logs", ctl_cmd_logs},
    {"exec", ctl_cmd_exec},           {"run", ctl_cmd_run},
    {"revoke", ctl_cmd_revoke},       {"watch", ctl_cmd_watch},
    {"instances", ctl_cmd_instances}, {"users", ctl_cmd_users},
    {"schedules", ctl_cmd_schedules},
};

int main(int argc, char **argv) {
  ctl_t c = {0};
  const char *server = NULL;
  int rc;
  dibba_alloc_init();
  /* A closed pipe (dibbactl logs -f | head) shows up as EPIPE on write. */
  signal(SIGPIPE, SIG_IGN);
  if ((rc = global_options(&c, &argc, argv, &server)) != 0)
    return rc;
  if (argc < 2)
    return ctl_usage(NULL, "no command given");
  const char *name = argv[1];
  if (strcmp(name, "-h") == 0 || strcmp(name, "--help") == 0 || strcmp(name, "help") == 0) {
    fputs(usage_text, stdout);
    return CTL_OK;
  }
  if (strcmp(name, "version") == 0 || strcmp(name, "--version") == 0) {
    printf("dibbactl %s\n", DIBBA_VERSION);
    return CTL_OK;
  }
  if (strcmp(name, "completion") == 0) {
    if (argc != 3 || strcmp(argv[2], "bash") != 0)
      return ctl_usage("completion", "only 'completion bash' is supported");
    fputs(dibbactl_completion_bash, stdout);
    return CTL_OK;
  }
  const cmd_t *cmd = NULL;
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    if (strcmp(commands[i].name, name) == 0)
      cmd = &commands[i];
  if (cmd == NULL)
    return ctl_usage(NULL, "unknown command \"%s\"", name);
  if ((rc = ctl_http_init()) != 0)
    return rc;
  rc = ctl_config_load(&c, server);
  if (rc == 0)
    rc = cmd->run(&c, argc - 1, argv + 1);
  if (fflush(stdout) != 0 && rc == 0)
    rc = ctl_fail(CTL_EFAIL, "writing output failed");
  ctl_config_free(&c);
  ctl_http_cleanup();
  return rc;
}
