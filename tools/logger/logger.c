/* SPDX-License-Identifier: Apache-2.0 */
/* dibba-logger: a containerd "binary://" log driver that writes a container's stdout/stderr in CRI format.
 *
 * The shim starts it with the container's stdout on fd 3, stderr on fd 4 and a readiness pipe on fd 5, and
 * CONTAINER_ID / CONTAINER_NAMESPACE in the environment; the URI's query becomes "key value" argument pairs:
 * path (required), max-size (bytes, 0: no rotation), max-files (rotated files kept). It is a separate process
 * so logs keep flowing while the worker restarts; it exits when both streams reach EOF. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define LINE_CAP (16 * 1024) /* longer lines are split into P(artial) records */

typedef struct stream_s {
  int fd;
  const char *name;
  char buf[LINE_CAP];
  size_t len;
} stream_t;

static const char *path;
static long long max_size;
static int max_files = 1;
static int out_fd = -1;
static long long out_size;

static int open_log(void) {
  struct stat st;
  out_fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
  if (out_fd < 0)
    return -errno;
  out_size = fstat(out_fd, &st) == 0 ? (long long)st.st_size : 0;
  return 0;
}

/* path.N-1 → path.N ... path → path.1, keeping max_files rotated files. */
static void rotate(void) {
  char from[4096], to[4096];
  close(out_fd);
  out_fd = -1;
  if (max_files <= 0) {
    if (truncate(path, 0) < 0)
      perror("dibba-logger: truncate");
  } else {
    for (int i = max_files - 1; i >= 1; i--) {
      snprintf(from, sizeof from, "%s.%d", path, i);
      snprintf(to, sizeof to, "%s.%d", path, i + 1);
      rename(from, to);
    }
    snprintf(to, sizeof to, "%s.1", path);
    rename(path, to);
  }
  if (open_log() < 0)
    perror("dibba-logger: reopen");
}

static void write_all(const char *p, size_t n) {
  while (n > 0 && out_fd >= 0) {
    ssize_t w = write(out_fd, p, n);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      return;
    p += w;
    n -= (size_t)w;
    out_size += w;
  }
}

static void record(const stream_t *s, const char *line, size_t n, char tag) {
  struct timespec ts;
  struct tm tm;
  char head[96];
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  size_t h = strftime(head, sizeof head, "%Y-%m-%dT%H:%M:%S", &tm);
  h += (size_t)snprintf(head + h, sizeof head - h, ".%09ldZ %s %c ", ts.tv_nsec, s->name, tag);
  if (max_size > 0 && out_size > 0 && out_size + (long long)(h + n + 1) > max_size)
    rotate();
  /* One record, one write: readers never see half a line. */
  char *rec = malloc(h + n + 1);
  if (!rec)
    return;
  memcpy(rec, head, h);
  memcpy(rec + h, line, n);
  rec[h + n] = '\n';
  write_all(rec, h + n + 1);
  free(rec);
}

static void drain(stream_t *s, int eof) {
  size_t start = 0;
  for (size_t i = 0; i < s->len; i++)
    if (s->buf[i] == '\n') {
      record(s, s->buf + start, i - start, 'F');
      start = i + 1;
    }
  memmove(s->buf, s->buf + start, s->len - start);
  s->len -= start;
  if (s->len == sizeof s->buf) {
    record(s, s->buf, s->len, 'P');
    s->len = 0;
  }
  if (eof && s->len) {
    record(s, s->buf, s->len, 'F');
    s->len = 0;
  }
}

int main(int argc, char **argv) {
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "path"))
      path = argv[i + 1];
    else if (!strcmp(argv[i], "max-size"))
      max_size = atoll(argv[i + 1]);
    else if (!strcmp(argv[i], "max-files"))
      max_files = atoi(argv[i + 1]);
  }
  if (!path || path[0] != '/') {
    fprintf(stderr, "dibba-logger: usage: dibba-logger path /abs/file.log [max-size N] [max-files N]\n");
    return 2;
  }
  if (open_log() < 0) {
    fprintf(stderr, "dibba-logger: %s: %s\n", path, strerror(errno));
    return 1;
  }
  close(5); /* ready: the shim waits for this pipe to close before starting the container */
  static stream_t st[2] = {{.fd = 3, .name = "stdout"}, {.fd = 4, .name = "stderr"}};
  int open_streams = 2;
  while (open_streams > 0) {
    struct pollfd p[2];
    for (int i = 0; i < 2; i++)
      p[i] = (struct pollfd){.fd = st[i].fd, .events = POLLIN};
    if (poll(p, 2, -1) < 0) {
      if (errno == EINTR)
        continue;
      break;
    }
    for (int i = 0; i < 2; i++) {
      if (st[i].fd < 0 || !(p[i].revents & (POLLIN | POLLHUP | POLLERR)))
        continue;
      ssize_t r = read(st[i].fd, st[i].buf + st[i].len, sizeof st[i].buf - st[i].len);
      if (r < 0 && errno == EINTR)
        continue;
      if (r <= 0) {
        drain(&st[i], 1);
        close(st[i].fd);
        st[i].fd = -1;
        open_streams--;
        continue;
      }
      st[i].len += (size_t)r;
      drain(&st[i], 0);
    }
  }
  close(out_fd);
  return 0;
}
