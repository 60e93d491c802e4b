/* SPDX-License-Identifier: Apache-2.0 */
/* OCI runtime spec builder: turns an image config plus Dibba's container settings into a runtime-spec JSON. */
#ifndef DIBBA_OCI_H
#define DIBBA_OCI_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

/* Smallest memory limit accepted: runc cannot start a container below this reliably (cgroup v1 charges the
 * runtime's own init), so a smaller limit is rejected up front. */
#define DIBBA_OCI_MIN_MEMORY (6ll * 1024 * 1024)
/* Default RLIMIT_NOFILE (soft and hard), as containerd's default spec. */
#define DIBBA_OCI_DEFAULT_NOFILE 1024u

/* One extra mount: a hostPath or an emptyDir directory, bind-mounted at destination. */
typedef struct dibba_oci_mount_s {
  const char *destination; /* absolute path in the container; required */
  const char *source;      /* absolute host path; required */
  int readonly;            /* add "ro" */
  int recursive;           /* "rbind" instead of "bind" */
} dibba_oci_mount_t;

/* A namespace of the container: new (path NULL) or joined (path, e.g. "/proc/<pid>/ns/net" of the pod sandbox
 * or a CNI netns path). type is one of "pid", "ipc", "uts", "mount", "network", "cgroup". */
typedef struct dibba_oci_namespace_s {
  const char *type;
  const char *path;
} dibba_oci_namespace_t;

/* Everything the builder needs. Strings and arrays are borrowed for the duration of the call only. */
typedef struct dibba_oci_opts_s {
  const char *id;           /* container id; required */
  const char *ns;           /* containerd namespace, for the default cgroupsPath; required */
  const char *cgroups_path; /* NULL: "/dibba/<ns>/<id>" */
  const char *hostname;     /* NULL: none set */
  /* The image config blob (application/vnd.oci.image.config.v1+json) or NULL. Its "config" object supplies
   * Entrypoint, Cmd, Env, WorkingDir and User. */
  const json_t *image_config;
  /* Kubernetes semantics: a non-NULL command replaces Entrypoint and drops the image's Cmd; non-NULL args
   * replace Cmd. An empty array (n = 0, pointer non-NULL) counts as set. */
  const char *const *command;
  size_t n_command;
  const char *const *args;
  size_t n_args;
  const char *const *env; /* "KEY=VALUE"; overrides image variables of the same key */
  size_t n_env;
  const char *working_dir; /* NULL: image WorkingDir, else "/" */
  const char *user;        /* NULL: image User, else root. "uid", "uid:gid", "name", "name:group" */
  /* Contents of the rootfs' /etc/passwd and /etc/group (may be NULL): needed to resolve user/group names,
   * the primary gid of a bare uid and supplementary groups. Read them through uv_fs from the snapshot. */
  const char *passwd;
  const char *group;
  int64_t cpu_millis;   /* 0: no CPU limit; else quota = millis*100, period 100000, shares millis*1024/1000 */
  int64_t memory_bytes; /* 0: unlimited; else at least DIBBA_OCI_MIN_MEMORY */
  const char *cpuset;   /* NULL: any CPU; else "0-1" style */
  uint64_t nofile;      /* 0: DIBBA_OCI_DEFAULT_NOFILE */
  int readonly_rootfs;  /* root.readonly */
  const dibba_oci_namespace_t *namespaces; /* NULL: new pid, ipc, uts, mount and network namespaces */
  size_t n_namespaces;
  const dibba_oci_mount_t *mounts; /* appended after the default mounts */
  size_t n_mounts;
} dibba_oci_opts_t;

/* Build a runtime spec (OCI runtime-spec 1.0.2) into *out (new reference, caller json_decref's it): default
 * mounts, masked and read-only paths, default capabilities, noNewPrivileges, rlimits, cgroupsPath, resources,
 * namespaces, process from image config and overrides. Returns 0, or -EINVAL (missing id/ns, empty process
 * args, memory below DIBBA_OCI_MIN_MEMORY, negative CPU, bad mount or namespace, malformed image config)
 * or -ENOENT (user or group name not found, or a name given without passwd/group text); err gets one line. */
int dibba_oci_spec_build(const dibba_oci_opts_t *opts, json_t **out, char *err, size_t errlen);

/* Resolve a user string against passwd/group text (either may be NULL). "uid" alone takes the gid from passwd
 * when the uid is listed there, else 0. *additional (may be NULL) receives a malloc'd array of supplementary
 * gids from group (members naming the user), *n_additional its length; free() it. Returns 0, -EINVAL for a
 * malformed string or an id above 2^32-2, -ENOENT for an unknown name; err gets one line. */
int dibba_oci_resolve_user(const char *user, const char *passwd, const char *group, uint32_t *uid, uint32_t *gid,
                           uint32_t **additional, size_t *n_additional, char *err, size_t errlen);

/* Build a "process" object for Tasks.Exec from args (required, n_args >= 1), env ("K=V", may be NULL), cwd
 * (NULL: "/") and uid/gid, with the default capabilities, noNewPrivileges and rlimits. Returns 0 or -EINVAL. */
int dibba_oci_process_build(const char *const *args, size_t n_args, const char *const *env, size_t n_env,
                            const char *cwd, uint32_t uid, uint32_t gid, json_t **out, char *err, size_t errlen);

#endif
