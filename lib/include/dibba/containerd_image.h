/* SPDX-License-Identifier: Apache-2.0 */
/* Images on containerd: import an OCI archive (content, image record, unpacked snapshots) and resolve an image
 * name to its config and rootfs chain id. */
#ifndef DIBBA_CONTAINERD_IMAGE_H
#define DIBBA_CONTAINERD_IMAGE_H

#include <stddef.h>

#include <jansson.h>

#include "dibba/containerd.h"

/* Largest manifest, index or config blob read into memory. */
#define DIBBA_IMAGE_MAX_JSON (4u * 1024u * 1024u)

/* What an import or a resolve produced. Strings are owned by the result and valid during the callback. */
typedef struct dibba_image_result_s {
  const char *name;            /* image record name */
  const char *manifest_digest; /* the platform manifest (the image record's target) */
  const char *config_digest;
  const char *chain_id;   /* rootfs snapshot name (committed) to prepare containers from */
  json_t *config;         /* the image config blob (borrowed; json_incref to keep) */
  size_t layers;          /* number of layers */
  size_t layers_unpacked; /* import: layers applied now */
  size_t layers_reused;   /* import: layers whose chain-id snapshot already existed */
  size_t blobs_written;   /* import: blobs written (the others were present) */
} dibba_image_result_t;

/* err is 0 or a negative errno / UV_E*; msg is a one-line reason on error ("" on success). */
typedef void (*dibba_image_cb)(dibba_containerd_t *ctd, int err, const char *msg, const dibba_image_result_t *res,
                               void *data);

typedef struct dibba_image_import_opts_s {
  const char *archive;     /* oci-layout tar; required */
  const char *name;        /* NULL: the io.containerd.image.name / org.opencontainers.image.ref.name annotation */
  const char *ns;          /* NULL: the client's namespace */
  const char *snapshotter; /* NULL: the client's snapshotter */
} dibba_image_import_opts_t;

/* Import an OCI archive: parse it on a worker-pool thread, pick the linux/<host arch> manifest (nested indexes
 * followed), write missing blobs with Content.Write (digest-verified, GC labels on manifest and config), unpack
 * layers into snapshots named by chain id (existing ones reused), then create or update the image record.
 * Everything happens under a lease that is deleted at the end. cb runs exactly once, later, from the loop.
 * Returns 0, or -EINVAL (no archive) or uv_fs_open's error, without calling cb. Errors given to cb: -ENOENT (archive,
 * blob or platform missing), -EINVAL (malformed archive or JSON), -EFBIG (JSON blob above DIBBA_IMAGE_MAX_JSON), or
 * containerd's errors (see dibba_grpc_code_to_errno). */
int dibba_containerd_image_import(dibba_containerd_t *ctd, const dibba_image_import_opts_t *opts, dibba_image_cb cb,
                                  void *data);

/* Resolve an image name in namespace ns (NULL: the client's): Images.Get, then the manifest (an index is
 * followed to the host platform) and config through Content.Read; computes the chain id. The snapshot is not
 * checked. cb gets -ENOENT when the image is unknown. Returns 0 or -EINVAL (then cb is not called). */
int dibba_containerd_image_resolve(dibba_containerd_t *ctd, const char *ns, const char *name, dibba_image_cb cb,
                                   void *data);

/* The chain id of diff ids d[0..n-1] (OCI: chain(0) = d0; chain(i) = sha256(chain(i-1) + " " + d_i)), written
 * as "sha256:<hex>" into out (at least 72 bytes). Returns 0 or -EINVAL (n == 0). */
int dibba_image_chain_id(const char *const *diff_ids, size_t n, char *out, size_t outlen);

#endif
