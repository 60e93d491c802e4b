/* SPDX-License-Identifier: Apache-2.0 */
/* CNI: network config lists, plugin chains (spec 1.0.0, 0.4.0, 0.3.x) run with uv_spawn, and a result cache. */
#ifndef DIBBA_CNI_H
#define DIBBA_CNI_H

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <uv.h>

#include "dibba/config.h"

#define DIBBA_CNI_CONF_MAX_BYTES (1024 * 1024)   /* one config file, one cache file */
#define DIBBA_CNI_STDOUT_MAX_BYTES (1024 * 1024) /* a plugin's stdout */
#define DIBBA_CNI_STDERR_MAX_BYTES (64 * 1024)   /* a plugin's stderr (the rest is dropped) */
#define DIBBA_CNI_ID_MAX 128
#define DIBBA_CNI_ERR_MAX 1024

typedef struct dibba_cni_s dibba_cni_t;

typedef struct dibba_cni_opts_s {
  const char *path;      /* CNI_PATH: colon-separated plugin directories; required */
  const char *conf_dir;  /* CNI_CONF_DIR; required */
  const char *net_name;  /* default network name; required */
  const char *ifname;    /* default container interface; NULL: "eth0" */
  const char *state_dir; /* the cache lives in state_dir/cni/; required */
  uint64_t timeout_ms;   /* per plugin execution; 0: 30000 */
} dibba_cni_opts_t;

typedef struct dibba_cni_port_mapping_s {
  int host_port;
  int container_port;
  const char *protocol; /* "tcp" (NULL) or "udp" or "sctp" */
  const char *host_ip;  /* NULL: all */
} dibba_cni_port_mapping_t;

/* One ADD / CHECK / DEL. Strings are copied when the call is made. */
typedef struct dibba_cni_req_s {
  const char *container_id; /* required: [A-Za-z0-9_.-], at most DIBBA_CNI_ID_MAX, no leading '.' */
  const char *net;          /* NULL: the default network */
  const char *ifname;       /* NULL: the default interface */
  const char *netns_path;   /* ADD/CHECK: required; DEL: NULL uses the cached one; a missing file means "" */
  const char *pod_ns;       /* K8S_POD_NAMESPACE (NULL: omitted) */
  const char *pod_name;     /* K8S_POD_NAME (NULL: omitted) */
  const dibba_cni_port_mapping_t *port_mappings; /* runtimeConfig.portMappings (ADD; DEL/CHECK use the cache) */
  size_t n_port_mappings;
} dibba_cni_req_t;

/* The outcome handed to a callback; everything is borrowed for the duration of the call. */
typedef struct dibba_cni_status_s {
  int status;                 /* 0, or negative: -EIO (a plugin failed), UV_ETIMEDOUT (a plugin was
                                 killed at the timeout), -ENOENT (no network / no cache / no plugin),
                                 -EINVAL (bad config or result), -EEXIST (ADD over a cached ADD) */
  const char *error;          /* one line ("" on success); several DEL failures are joined by "; " */
  json_t *result;             /* ADD: the chain's final result (borrowed; json_incref to keep) */
  char ip4[INET_ADDRSTRLEN];  /* ADD: the pod's IPv4 on the container interface, or "" */
  char ip6[INET6_ADDRSTRLEN]; /* ADD: the pod's IPv6 on the container interface, or "" */
} dibba_cni_status_t;

typedef void (*dibba_cni_cb)(dibba_cni_t *cni, const dibba_cni_status_t *st, void *data);

/* Create a CNI runner (strings copied). Makes state_dir/cni if missing (start-up). Returns 0, -EINVAL
 * for a missing option, or a negative errno from mkdir. */
int dibba_cni_new(uv_loop_t *loop, const dibba_cni_opts_t *opts, dibba_cni_t **out);
/* Same from cni.path, cni.conf_dir, cni.net_name, cni.ifname, cni.timeout_ms and worker.state_dir.
 * Returns DIBBA_ECONFIG with a line in err for a bad value, or the errors of dibba_cni_new. */
int dibba_cni_new_from_config(uv_loop_t *loop, const dibba_config_t *cfg, dibba_cni_t **out, char *err, size_t errlen);
/* Release the runner. Operations still running complete (their callbacks run) and then it is freed;
 * until then a second call is a no-op. Safe with NULL. */
void dibba_cni_free(dibba_cni_t *cni);

/* ADD: load the network's config list, cache a pending entry, run every plugin in order with prevResult
 * chaining, then cache the final result (atomic write) and call cb with it and the pod IPs. A failed ADD
 * runs DEL over the chain (with the last result) and removes the cache entry. Returns 0 (cb runs later,
 * never from inside this call) or at once -EINVAL (bad request), -ENOENT / -EINVAL (network not found or
 * invalid; reason in err) or -EEXIST (container already has a cached ADD; DEL it first). */
int dibba_cni_add(dibba_cni_t *cni, const dibba_cni_req_t *req, dibba_cni_cb cb, void *data, char *err, size_t errlen);
/* CHECK with the cached network and result (prevResult). cb gets 0, -ENOENT (nothing cached),
 * -ENOTSUP (cniVersion < 0.4.0) or a plugin failure; disableCheck in the list makes it succeed at once.
 * Returns 0 or -EINVAL / -ENOENT at once (reason in err). */
int dibba_cni_check(dibba_cni_t *cni, const dibba_cni_req_t *req, dibba_cni_cb cb, void *data, char *err,
                    size_t errlen);
/* DEL in reverse order. With a cache entry it runs from the cache alone (network config, ifname, netns,
 * CNI_ARGS, runtimeConfig, prevResult), so it works after restarts and config changes; without one it
 * loads the network from the config dir. A netns path that no longer exists is passed as an empty
 * CNI_NETNS. Every plugin runs even if an earlier one failed; the failures are joined in the error. The
 * cache entry is removed only after a clean DEL. Returns 0 or -EINVAL / -ENOENT at once (reason in err). */
int dibba_cni_del(dibba_cni_t *cni, const dibba_cni_req_t *req, dibba_cni_cb cb, void *data, char *err, size_t errlen);
/* The cache entry of container_id ({containerId, network, ifName, netns, cniArgs, runtimeConfig, result}),
 * read synchronously (small, capped). *out is a new reference. Returns 0, -ENOENT, -EINVAL. */
int dibba_cni_cached(dibba_cni_t *cni, const char *container_id, json_t **out);

/* ---- The pure parts, exposed for tests and fuzzing. ---- */

/* 1 for a cniVersion this runner speaks: "1.0.0", "0.4.0", "0.3.0", "0.3.1". */
int dibba_cni_version_supported(const char *version);
/* Parse and validate one config file's text. is_list: a .conflist; otherwise a single plugin .conf/.json
 * that is wrapped as a one-plugin list. *out is a new {cniVersion, name, plugins[], ...} list. Returns 0
 * or -EINVAL with the reason in err. */
int dibba_cni_conflist_parse(const char *text, size_t len, int is_list, json_t **out, char *err, size_t errlen);
/* Find, in conf_dir, the *.conflist / *.conf / *.json (sorted by file name, first match wins) whose name is
 * name. Invalid files are skipped; if none matches, err names each rejected file and why. Small bounded
 * reads. *out is a new reference, *path (may be NULL) a malloc'd file path. Returns 0, -ENOENT or
 * -EINVAL. */
int dibba_cni_conflist_load(const char *conf_dir, const char *name, json_t **out, char **path, char *err,
                            size_t errlen);
/* The stdin config of plugin index in list: the plugin object plus name, cniVersion, prevResult (if prev)
 * and runtimeConfig holding only the keys of runtime that the plugin's capabilities enable. New ref. */
json_t *dibba_cni_plugin_conf(const json_t *list, size_t index, const json_t *prev, const json_t *runtime);
/* The CNI_ARGS value "IgnoreUnknown=1;K8S_POD_NAMESPACE=..;K8S_POD_NAME=..;K8S_POD_INFRA_CONTAINER_ID=..".
 * Returns a malloc'd string, or NULL if a value contains ';' or '='. */
char *dibba_cni_args(const char *pod_ns, const char *pod_name, const char *container_id);
/* Parse a plugin's success output into a result (object with cniVersion; ips/interfaces/routes checked
 * for shape). *out is a new reference. Returns 0 or -EINVAL with the reason in err. */
int dibba_cni_result_parse(const char *text, size_t len, json_t **out, char *err, size_t errlen);
/* The IPv4 and IPv6 addresses (without prefix) on interface ifname (the interface with a sandbox), from
 * ips[].interface (1.0.0) or ips[].version + interface (0.4.0/0.3.x); ips without an interface index are
 * used only when none names the container interface. Returns 0 if any address was found, else -ENOENT. */
int dibba_cni_result_ips(const json_t *result, const char *ifname, char ip4[INET_ADDRSTRLEN],
                         char ip6[INET6_ADDRSTRLEN]);
/* Turn a plugin's error output ({cniVersion, code, msg, details}) into "code N: msg (details)" in err.
 * Returns the code (> 0) or -EINVAL if text is not an error object. */
int dibba_cni_error_parse(const char *text, size_t len, char *err, size_t errlen);

#endif
