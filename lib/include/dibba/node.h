/* SPDX-License-Identifier: Apache-2.0 */
/* Host facts and resource usage from /proc, uname, statvfs and getifaddrs, as dibba.v1 node messages. */
#ifndef DIBBA_NODE_H
#define DIBBA_NODE_H

#include <stddef.h>
#include <stdint.h>

#include "node.pb-c.h"

/* These read small procfs files with plain read(2): procfs answers from memory and never waits on a disk. */

/* Static facts: hostname (given, or uname's nodename when NULL), OS (/etc/os-release PRETTY_NAME), kernel,
 * machine, CPU model and MHz, logical CPUs and physical cores ("physical id" + "core id" pairs), total memory.
 * *out is malloc'd; free it with dibba_node_msg_free. Returns 0 or a negative errno. */
int dibba_node_info(const char *hostname, Dibba__V1__NodeInfo **out);

/* Per-CPU jiffies from /proc/stat ("cpuN" lines), for usage deltas. */
typedef struct dibba_node_cpu_sample_s {
  size_t n;
  uint64_t *busy;  /* owned */
  uint64_t *total; /* owned */
} dibba_node_cpu_sample_t;
/* Take a sample (free with dibba_node_cpu_sample_free, safe twice). Returns 0 or a negative errno. */
int dibba_node_cpu_sample(dibba_node_cpu_sample_t *s);
void dibba_node_cpu_sample_free(dibba_node_cpu_sample_t *s);

/* Usage: per-CPU % between samples a and b (a may be NULL: no cpu_percent), load averages, memory and swap
 * (/proc/meminfo), disks (statvfs of the real file systems in /proc/self/mounts; pseudo ones are skipped) and
 * network counters per interface (/proc/net/dev). *out is malloc'd (dibba_node_msg_free). Returns 0 or < 0. */
int dibba_node_usage(const dibba_node_cpu_sample_t *a, const dibba_node_cpu_sample_t *b, Dibba__V1__NodeUsage **out);

/* The host's address: the IPv4 address of the interface that holds the default route (/proc/net/route, then
 * getifaddrs), and every non-loopback address. *out is malloc'd. Returns 0, -ENOENT (no default route and no
 * address) or a negative errno. */
int dibba_node_host_address(const char *hostname, Dibba__V1__HostAddress **out);

/* Free a message built by this module (NULL is fine). */
void dibba_node_msg_free(void *msg);

#endif
