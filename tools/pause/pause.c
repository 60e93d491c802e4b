/* SPDX-License-Identifier: Apache-2.0 */
/* The pod sandbox: holds the pod's namespaces, reaps orphaned zombies as PID 1, exits on SIGINT/SIGTERM. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t stop_signal;

static void on_stop(int sig) { stop_signal = sig; }

static void on_child(int sig) { (void)sig; }

int main(int argc, char **argv) {
  if (argc > 1 && (!strcmp(argv[1], "-v") || !strcmp(argv[1], "--version"))) {
    printf("dibba-pause 1\n");
    return 0;
  }
  if (getpid() != 1)
    fprintf(stderr, "dibba-pause: warning: not PID 1, orphans will not be reaped here\n");

  sigset_t block, waitmask;
  sigemptyset(&block);
  sigaddset(&block, SIGINT);
  sigaddset(&block, SIGTERM);
  sigaddset(&block, SIGCHLD);
  sigprocmask(SIG_BLOCK, &block, &waitmask);

  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_stop;
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  sa.sa_handler = on_child;
  sa.sa_flags = SA_NOCLDSTOP;
  sigaction(SIGCHLD, &sa, NULL);

  /* Handlers only run inside sigsuspend, so there is no window where a signal is missed. */
  sigdelset(&waitmask, SIGINT);
  sigdelset(&waitmask, SIGTERM);
  sigdelset(&waitmask, SIGCHLD);
  while (!stop_signal) {
    sigsuspend(&waitmask);
    while (waitpid(-1, NULL, WNOHANG) > 0)
      ;
  }
  while (waitpid(-1, NULL, WNOHANG) > 0)
    ;
  return 0;
}
