/* SPDX-License-Identifier: Apache-2.0 */
/* Host facts and usage read from the kernel; built into libdibba (heartbeat) and the node plugin. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <sys/time.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include <protobuf-c/protobuf-c.h>

#include "dibba/node.h"

#define SMALL_MAX (1024 * 1024)

static void *xcalloc(size_t n, size_t sz) {
  void *p = calloc(n ? n : 1, sz ? sz : 1);
  if (p == NULL)
    abort();
  return p;
}

static char *xstrdup(const char *s) {
  char *p = strdup(s);
  if (p == NULL)
    abort();
  return p;
}

/* Read a small procfs/sysfs file into a NUL-terminated malloc'd buffer. */
static int slurp(const char *path, char **out) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return -errno;
  size_t cap = 8192, len = 0;
  char *buf = xcalloc(1, cap);
  for (;;) {
    if (len + 1 >= cap) {
      if (cap >= SMALL_MAX)
        break;
      cap *= 2;
      char *nb = realloc(buf, cap);
      if (nb == NULL)
        abort();
      buf = nb;
    }
    ssize_t n = read(fd, buf + len, cap - len - 1);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    len += (size_t)n;
  }
  close(fd);
  buf[len] = '\0';
  *out = buf;
  return 0;
}

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void dibba_node_msg_free(void *msg) {
  if (msg)
    protobuf_c_message_free_unpacked(msg, NULL);
}

static char *trim(char *s) {
  while (*s == ' ' || *s == '\t')
    s++;
  size_t n = strlen(s);
  while (n && (s[n - 1] == '\n' || s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '"'))
    s[--n] = '\0';
  return s;
}

int dibba_node_info(const char *hostname, Dibba__V1__NodeInfo **out) {
  Dibba__V1__NodeInfo *m = xcalloc(1, sizeof *m);
  struct utsname u;
  char *text = NULL, *line, *save;
  dibba__v1__node_info__init(m);
  if (uname(&u) == 0) {
    m->hostname = xstrdup(hostname ? hostname : u.nodename);
    m->kernel_release = xstrdup(u.release);
    m->kernel_version = xstrdup(u.version);
    m->machine = xstrdup(u.machine);
    m->os = xstrdup(u.sysname);
  }
  if (slurp("/etc/os-release", &text) == 0) {
    for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
      if (strncmp(line, "PRETTY_NAME=", 12) == 0) {
        char *v = line + 12;
        if (*v == '"')
          v++;
        if (m->os != protobuf_c_empty_string)
          free(m->os);
        m->os = xstrdup(trim(v));
      }
    free(text);
  }
  if (slurp("/proc/cpuinfo", &text) == 0) {
    /* physical cores = distinct (physical id, core id) pairs */
    long pairs[1024][2];
    size_t npairs = 0;
    long phys = 0;
    for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
      char *colon = strchr(line, ':');
      if (colon == NULL)
        continue;
      *colon = '\0';
      char *k = trim(line), *v = trim(colon + 1);
      if (strcmp(k, "processor") == 0)
        m->logical_cpus++;
      else if (strcmp(k, "model name") == 0 && m->cpu_model == protobuf_c_empty_string)
        m->cpu_model = xstrdup(v);
      else if (strcmp(k, "cpu MHz") == 0 && m->cpu_mhz == 0)
        m->cpu_mhz = strtod(v, NULL);
      else if (strcmp(k, "physical id") == 0)
        phys = strtol(v, NULL, 10);
      else if (strcmp(k, "core id") == 0) {
        long core = strtol(v, NULL, 10);
        size_t i;
        for (i = 0; i < npairs; i++)
          if (pairs[i][0] == phys && pairs[i][1] == core)
            break;
        if (i == npairs && npairs < 1024) {
          pairs[npairs][0] = phys;
          pairs[npairs][1] = core;
          npairs++;
        }
      }
    }
    m->physical_cpus = npairs ? (uint32_t)npairs : m->logical_cpus;
    free(text);
  }
  if (slurp("/proc/meminfo", &text) == 0) {
    char *p = strstr(text, "MemTotal:");
    if (p)
      m->memory_total_bytes = strtoull(p + 9, NULL, 10) * 1024;
    free(text);
  }
  *out = m;
  return 0;
}

int dibba_node_cpu_sample(dibba_node_cpu_sample_t *s) {
  char *text = NULL, *line, *save;
  int rc = slurp("/proc/stat", &text);
  memset(s, 0, sizeof *s);
  if (rc < 0)
    return rc;
  size_t cap = 0;
  for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
    if (strncmp(line, "cpu", 3) != 0 || line[3] < '0' || line[3] > '9')
      continue;
    unsigned long long v[10] = {0};
    char *p = strchr(line, ' ');
    int n = p ? sscanf(p, "%llu %llu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5],
                       &v[6], &v[7], &v[8], &v[9])
              : 0;
    if (n < 4)
      continue;
    if (s->n == cap) {
      cap = cap ? cap * 2 : 8;
      s->busy = realloc(s->busy, cap * sizeof *s->busy);
      s->total = realloc(s->total, cap * sizeof *s->total);
      if (!s->busy || !s->total)
        abort();
    }
    uint64_t total = 0;
    for (int i = 0; i < 8 && i < n; i++) /* guest time is already inside user/nice */
      total += v[i];
    s->total[s->n] = total;
    s->busy[s->n] = total - v[3] - (n > 4 ? v[4] : 0); /* minus idle and iowait */
    s->n++;
  }
  free(text);
  return 0;
}

void dibba_node_cpu_sample_free(dibba_node_cpu_sample_t *s) {
  free(s->busy);
  free(s->total);
  memset(s, 0, sizeof *s);
}

static int pseudo_fs(const char *fs) {
  static const char *const pseudo[] = {"proc",      "sysfs",      "devtmpfs",   "devpts",   "tmpfs",   "cgroup",
                                       "cgroup2",   "securityfs", "pstore",     "debugfs",  "tracefs", "bpf",
                                       "mqueue",    "hugetlbfs",  "configfs",   "fusectl",  "autofs",  "binfmt_misc",
                                       "nsfs",      "rpc_pipefs", "overlay",    "squashfs", "ramfs",   "efivarfs",
                                       "selinuxfs", "shm",        "fuse.lxcfs", "nfsd",     "rootfs",  "none"};
  for (size_t i = 0; i < sizeof pseudo / sizeof pseudo[0]; i++)
    if (strcmp(fs, pseudo[i]) == 0)
      return 1;
  return 0;
}

static uint64_t meminfo(const char *text, const char *key) {
  const char *p = strstr(text, key);
  return p ? strtoull(p + strlen(key), NULL, 10) * 1024 : 0;
}

int dibba_node_usage(const dibba_node_cpu_sample_t *a, const dibba_node_cpu_sample_t *b, Dibba__V1__NodeUsage **out) {
  Dibba__V1__NodeUsage *m = xcalloc(1, sizeof *m);
  char *text = NULL, *line, *save;
  dibba__v1__node_usage__init(m);
  m->sampled_at_ms = now_ms();
  if (a && b && a->n == b->n && a->n) {
    m->cpu_percent = xcalloc(a->n, sizeof *m->cpu_percent);
    m->n_cpu_percent = a->n;
    for (size_t i = 0; i < a->n; i++) {
      uint64_t dt = b->total[i] - a->total[i], db = b->busy[i] - a->busy[i];
      m->cpu_percent[i] = dt ? 100.0 * (double)db / (double)dt : 0.0;
    }
  }
  if (slurp("/proc/loadavg", &text) == 0) {
    sscanf(text, "%lf %lf %lf", &m->load1, &m->load5, &m->load15);
    free(text);
  }
  if (slurp("/proc/meminfo", &text) == 0) {
    m->memory_total_bytes = meminfo(text, "MemTotal:");
    m->memory_available_bytes = meminfo(text, "MemAvailable:");
    m->memory_buffers_bytes = meminfo(text, "Buffers:");
    m->memory_cached_bytes = meminfo(text, "\nCached:");
    uint64_t fr = meminfo(text, "MemFree:");
    uint64_t used = m->memory_total_bytes - fr - m->memory_buffers_bytes - m->memory_cached_bytes;
    m->memory_used_bytes = used > m->memory_total_bytes ? 0 : used;
    m->swap_total_bytes = meminfo(text, "SwapTotal:");
    m->swap_free_bytes = meminfo(text, "SwapFree:");
    m->swap_used_bytes = m->swap_total_bytes - m->swap_free_bytes;
    free(text);
  }
  if (slurp("/proc/self/mounts", &text) == 0) {
    size_t cap = 0;
    for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
      char dev[512], mnt[1024], fs[64];
      if (sscanf(line, "%511s %1023s %63s", dev, mnt, fs) != 3 || pseudo_fs(fs))
        continue;
      struct statvfs v;
      if (statvfs(mnt, &v) != 0 || v.f_blocks == 0)
        continue;
      int dup = 0;
      for (size_t i = 0; i < m->n_disks; i++)
        dup |= strcmp(m->disks[i]->mount, mnt) == 0;
      if (dup)
        continue;
      if (m->n_disks == cap) {
        cap = cap ? cap * 2 : 8;
        m->disks = realloc(m->disks, cap * sizeof *m->disks);
        if (!m->disks)
          abort();
      }
      Dibba__V1__DiskUsage *d = xcalloc(1, sizeof *d);
      dibba__v1__disk_usage__init(d);
      d->mount = xstrdup(mnt);
      d->fs = xstrdup(fs);
      d->device = xstrdup(dev);
      d->total_bytes = (uint64_t)v.f_blocks * v.f_frsize;
      d->free_bytes = (uint64_t)v.f_bavail * v.f_frsize;
      d->used_bytes = d->total_bytes - (uint64_t)v.f_bfree * v.f_frsize;
      m->disks[m->n_disks++] = d;
    }
    free(text);
  }
  if (slurp("/proc/net/dev", &text) == 0) {
    size_t cap = 0;
    for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
      char *colon = strchr(line, ':');
      if (colon == NULL)
        continue;
      *colon = '\0';
      unsigned long long v[16] = {0};
      if (sscanf(colon + 1, "%llu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4],
                 &v[5], &v[6], &v[7], &v[8], &v[9], &v[10]) < 11)
        continue;
      if (m->n_nets == cap) {
        cap = cap ? cap * 2 : 8;
        m->nets = realloc(m->nets, cap * sizeof *m->nets);
        if (!m->nets)
          abort();
      }
      Dibba__V1__NetUsage *n = xcalloc(1, sizeof *n);
      dibba__v1__net_usage__init(n);
      n->iface = xstrdup(trim(line));
      n->rx_bytes = v[0];
      n->rx_packets = v[1];
      n->rx_errors = v[2];
      n->tx_bytes = v[8];
      n->tx_packets = v[9];
      n->tx_errors = v[10];
      m->nets[m->n_nets++] = n;
    }
    free(text);
  }
  *out = m;
  return 0;
}

int dibba_node_host_address(const char *hostname, Dibba__V1__HostAddress **out) {
  char *text = NULL, *line, *save, ifname[IF_NAMESIZE + 1] = "";
  struct ifaddrs *ifa = NULL;
  Dibba__V1__HostAddress *m;
  if (slurp("/proc/net/route", &text) == 0) {
    for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
      char ifc[IF_NAMESIZE + 1];
      unsigned long dest, gw, flags;
      if (sscanf(line, "%16s %lx %lx %lx", ifc, &dest, &gw, &flags) == 4 && dest == 0 && (flags & 1)) {
        snprintf(ifname, sizeof ifname, "%s", ifc);
        break;
      }
    }
    free(text);
  }
  if (getifaddrs(&ifa) != 0)
    return -errno;
  m = xcalloc(1, sizeof *m);
  dibba__v1__host_address__init(m);
  if (hostname)
    m->hostname = xstrdup(hostname);
  size_t cap = 0;
  for (struct ifaddrs *i = ifa; i; i = i->ifa_next) {
    char buf[INET6_ADDRSTRLEN];
    if (i->ifa_addr == NULL || (i->ifa_flags & IFF_LOOPBACK))
      continue;
    int fam = i->ifa_addr->sa_family;
    if (fam == AF_INET)
      inet_ntop(AF_INET, &((struct sockaddr_in *)i->ifa_addr)->sin_addr, buf, sizeof buf);
    else if (fam == AF_INET6)
      inet_ntop(AF_INET6, &((struct sockaddr_in6 *)i->ifa_addr)->sin6_addr, buf, sizeof buf);
    else
      continue;
    if (fam == AF_INET && ifname[0] && strcmp(i->ifa_name, ifname) == 0 && m->host_ip == protobuf_c_empty_string)
      m->host_ip = xstrdup(buf);
    if (m->n_addresses == cap) {
      cap = cap ? cap * 2 : 8;
      m->addresses = realloc(m->addresses, cap * sizeof *m->addresses);
      if (!m->addresses)
        abort();
    }
    m->addresses[m->n_addresses++] = xstrdup(buf);
  }
  freeifaddrs(ifa);
  if (m->host_ip == protobuf_c_empty_string && m->n_addresses == 0) {
    dibba_node_msg_free(m);
    return -ENOENT;
  }
  *out = m;
  return 0;
}
