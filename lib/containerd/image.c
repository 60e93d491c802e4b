/* SPDX-License-Identifier: Apache-2.0 */
/* Image import from OCI archives into containerd (content, snapshots, image record) and name → rootfs resolve. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "dibba/alloc.h"
#include "dibba/buf.h"
#include "dibba/containerd_image.h"
#include "dibba/error.h"
#include "dibba/log.h"

#define CHUNK (1u << 20)
#define MAX_ENTRIES 4096
#define MAX_DEPTH 4

#if defined(__x86_64__)
#define HOST_ARCH "amd64"
#elif defined(__aarch64__)
#define HOST_ARCH "arm64"
#elif defined(__arm__)
#define HOST_ARCH "arm"
#else
#define HOST_ARCH "unknown"
#endif

static const char *const index_types[] = {"application/vnd.oci.image.index.v1+json",
                                          "application/vnd.docker.distribution.manifest.list.v2+json"};
static const char *const manifest_types[] = {"application/vnd.oci.image.manifest.v1+json",
                                             "application/vnd.docker.distribution.manifest.v2+json"};

static int type_in(const char *t, const char *const *v, size_t n) {
  for (size_t i = 0; t && i < n; i++)
    if (!strcmp(t, v[i]))
      return 1;
  return 0;
}
#define IS_INDEX(t) type_in(t, index_types, 2)
#define IS_MANIFEST(t) type_in(t, manifest_types, 2)

int dibba_image_chain_id(const char *const *diff_ids, size_t n, char *out, size_t outlen) {
  if (n == 0 || outlen < 72)
    return -EINVAL;
  snprintf(out, outlen, "%s", diff_ids[0]);
  for (size_t i = 1; i < n; i++) {
    unsigned char md[32];
    unsigned int mdlen = 0;
    char *s = dibba_xasprintf("%s %s", out, diff_ids[i]);
    EVP_Digest(s, strlen(s), md, &mdlen, EVP_sha256(), NULL);
    free(s);
    char *p = out + snprintf(out, outlen, "sha256:");
    for (unsigned j = 0; j < mdlen; j++)
      p += sprintf(p, "%02x", md[j]);
  }
  return 0;
}

/* Pick the descriptor of an index that matches linux/HOST_ARCH, or the only one without a platform. */
static json_t *pick_platform(json_t *index) {
  json_t *ms = json_object_get(index, "manifests"), *d, *fallback = NULL;
  size_t i, n_noplat = 0;
  json_array_foreach(ms, i, d) {
    json_t *p = json_object_get(d, "platform");
    if (!p) {
      n_noplat++;
      fallback = d;
      continue;
    }
    const char *os = json_string_value(json_object_get(p, "os"));
    const char *arch = json_string_value(json_object_get(p, "architecture"));
    if (os && arch && !strcmp(os, "linux") && !strcmp(arch, HOST_ARCH))
      return d;
  }
  return n_noplat == 1 ? fallback : NULL;
}

/* Digest and size of a descriptor, checked. */
static int desc_parse(json_t *d, const char **digest, int64_t *size) {
  *digest = json_string_value(json_object_get(d, "digest"));
  json_t *sz = json_object_get(d, "size");
  if (!*digest || strncmp(*digest, "sha256:", 7) || strlen(*digest) != 71 || !json_is_integer(sz) ||
      json_integer_value(sz) < 0)
    return -EINVAL;
  for (const char *c = *digest + 7; *c; c++)
    if (!((*c >= '0' && *c <= '9') || (*c >= 'a' && *c <= 'f')))
      return -EINVAL;
  *size = json_integer_value(sz);
  return 0;
}

/* Chain ids of a config's rootfs.diff_ids, all of them (chains[i] for layers 0..i). */
static int chains_from_config(json_t *config, size_t n_layers, char (**chains)[72]) {
  json_t *ids = json_object_get(json_object_get(config, "rootfs"), "diff_ids");
  size_t n = json_array_size(ids);
  if (n == 0 || n != n_layers)
    return -EINVAL;
  const char **v = dibba_xcalloc(n, sizeof *v);
  for (size_t i = 0; i < n; i++)
    if (!(v[i] = json_string_value(json_array_get(ids, i)))) {
      free(v);
      return -EINVAL;
    }
  *chains = dibba_xcalloc(n, sizeof **chains);
  for (size_t i = 0; i < n; i++)
    dibba_image_chain_id(v, i + 1, (*chains)[i], 72);
  free(v);
  return 0;
}

/* ---------------- archive parsing (worker-pool thread) ---------------- */

typedef struct entry_s {
  char name[300];
  int64_t offset; /* of the data in the tar */
  int64_t size;
} entry_t;

typedef struct blob_s {
  char digest[72];
  char *media_type;
  int64_t size;
  int64_t offset;
  json_t *labels; /* object, set at commit */
} blob_t;

typedef struct plan_s {
  int fd;
  entry_t *entries;
  size_t n_entries;
  char *name;
  char *manifest_media_type;
  char manifest_digest[72];
  int64_t manifest_size;
  char config_digest[72];
  json_t *config;
  blob_t *blobs; /* layers..., config, manifest */
  size_t n_blobs;
  size_t n_layers; /* blobs[0..n_layers-1] are the layers */
  char (*chains)[72];
  int err;
  char msg[256];
} plan_t;

static int64_t octal(const char *p, size_t n) {
  int64_t v = 0;
  size_t i = 0;
  while (i < n && (p[i] == ' ' || p[i] == '\0'))
    i++;
  for (; i < n && p[i] >= '0' && p[i] <= '7'; i++) {
    if (v > (INT64_MAX >> 3))
      return -1;
    v = (v << 3) | (p[i] - '0');
  }
  return v;
}

static int read_at(int fd, void *buf, size_t n, int64_t off) {
  size_t have = 0;
  while (have < n) {
    ssize_t r = pread(fd, (char *)buf + have, n - have, off + (int64_t)have);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      return r < 0 ? -errno : -EINVAL;
    have += (size_t)r;
  }
  return 0;
}

static int tar_index(plan_t *p) {
  int rc = 0;
  int64_t off = 0;
  char hdr[512], longname[256] = "";
  struct stat st;
  if (fstat(p->fd, &st) < 0)
    return -errno;
  while (off + 512 <= st.st_size) {
    if ((rc = read_at(p->fd, hdr, 512, off)) < 0)
      return rc;
    if (hdr[0] == '\0')
      break; /* end-of-archive block */
    int64_t size = octal(hdr + 124, 12);
    if (size < 0 || off + 512 + size > st.st_size)
      return dibba_error_set(p->msg, sizeof p->msg, -EINVAL, "archive: truncated or bad entry size");
    char type = hdr[156];
    if (type == 'L' || type == 'x') {
      /* GNU long name or pax header: only "path" matters here. */
      char *b = dibba_xmalloc((size_t)size + 1);
      if ((rc = read_at(p->fd, b, (size_t)size, off + 512)) < 0) {
        free(b);
        return rc;
      }
      b[size] = '\0';
      if (type == 'L')
        snprintf(longname, sizeof longname, "%s", b);
      else {
        char *path = strstr(b, " path=");
        if (path) {
          path += 6;
          char *nl = strchr(path, '\n');
          snprintf(longname, sizeof longname, "%.*s", nl ? (int)(nl - path) : (int)strlen(path), path);
        }
      }
      free(b);
    } else {
      if ((type == '0' || type == '\0') && p->n_entries < MAX_ENTRIES) {
        entry_t *e;
        p->entries = dibba_xreallocarray(p->entries, p->n_entries + 1, sizeof *p->entries);
        e = &p->entries[p->n_entries++];
        if (*longname)
          snprintf(e->name, sizeof e->name, "%s", longname);
        else if (!memcmp(hdr + 257, "ustar", 5) && hdr[345])
          snprintf(e->name, sizeof e->name, "%.155s/%.100s", hdr + 345, hdr);
        else
          snprintf(e->name, sizeof e->name, "%.100s", hdr);
        char *n = e->name;
        while (n[0] == '.' && n[1] == '/')
          memmove(n, n + 2, strlen(n + 2) + 1);
        e->offset = off + 512;
        e->size = size;
      }
      longname[0] = '\0';
    }
    off += 512 + ((size + 511) / 512) * 512;
  }
  return 0;
}

static entry_t *find_entry(plan_t *p, const char *name) {
  for (size_t i = 0; i < p->n_entries; i++)
    if (!strcmp(p->entries[i].name, name))
      return &p->entries[i];
  return NULL;
}

static entry_t *find_blob(plan_t *p, const char *digest) {
  char name[128];
  snprintf(name, sizeof name, "blobs/sha256/%s", digest + 7);
  return find_entry(p, name);
}

static int load_json(plan_t *p, entry_t *e, const char *what, json_t **out) {
  int rc;
  if (e->size > (int64_t)DIBBA_IMAGE_MAX_JSON)
    return dibba_error_set(p->msg, sizeof p->msg, -EFBIG, "archive: %s is larger than %u bytes", what,
                           DIBBA_IMAGE_MAX_JSON);
  char *b = dibba_xmalloc((size_t)e->size + 1);
  if ((rc = read_at(p->fd, b, (size_t)e->size, e->offset)) < 0) {
    free(b);
    return dibba_error_set(p->msg, sizeof p->msg, rc, "archive: reading %s", what);
  }
  json_error_t je;
  *out = json_loadb(b, (size_t)e->size, 0, &je);
  free(b);
  if (!*out || !json_is_object(*out)) {
    json_decref(*out);
    *out = NULL;
    return dibba_error_set(p->msg, sizeof p->msg, -EINVAL, "archive: %s is not a JSON object", what);
  }
  return 0;
}

static void add_blob(plan_t *p, const char *digest, const char *media_type, int64_t size, int64_t offset) {
  p->blobs = dibba_xreallocarray(p->blobs, p->n_blobs + 1, sizeof *p->blobs);
  blob_t *b = &p->blobs[p->n_blobs++];
  memset(b, 0, sizeof *b);
  snprintf(b->digest, sizeof b->digest, "%s", digest);
  b->media_type = dibba_xstrdup(media_type ? media_type : "application/octet-stream");
  b->size = size;
  b->offset = offset;
  b->labels = json_object();
}

static void plan_archive(plan_t *p) {
  int rc;
  json_t *doc = NULL, *manifest = NULL, *desc;
  const char *name = NULL;
  char *annot_name = NULL;
  if ((rc = tar_index(p)) < 0) {
    if (!*p->msg)
      dibba_error_set(p->msg, sizeof p->msg, rc, "archive: reading");
    goto out;
  }
  entry_t *e = find_entry(p, "index.json");
  if (!e) {
    rc = dibba_error_set(p->msg, sizeof p->msg, -ENOENT, "archive: no index.json (not an oci-layout archive)");
    goto out;
  }
  if ((rc = load_json(p, e, "index.json", &doc)) < 0)
    goto out;
  /* Follow (nested) indexes to the host platform's manifest. */
  for (int depth = 0;; depth++) {
    if (depth > MAX_DEPTH) {
      rc = dibba_error_set(p->msg, sizeof p->msg, -EINVAL, "archive: indexes nested too deep");
      goto out;
    }
    desc = pick_platform(doc);
    if (!desc) {
      rc = dibba_error_set(p->msg, sizeof p->msg, -ENOENT, "archive: no manifest for linux/%s", HOST_ARCH);
      goto out;
    }
    json_t *an = json_object_get(desc, "annotations");
    const char *n1 = json_string_value(json_object_get(an, "io.containerd.image.name"));
    const char *n2 = json_string_value(json_object_get(an, "org.opencontainers.image.ref.name"));
    if (!annot_name && (n1 || (n2 && strchr(n2, '/'))))
      annot_name = dibba_xstrdup(n1 ? n1 : n2);
    const char *digest, *mt = json_string_value(json_object_get(desc, "mediaType"));
    int64_t size;
    if (desc_parse(desc, &digest, &size) < 0) {
      rc = dibba_error_set(p->msg, sizeof p->msg, -EINVAL, "archive: bad descriptor");
      goto out;
    }
    entry_t *be = find_blob(p, digest);
    if (!be || be->size != size) {
      rc = dibba_error_set(p->msg, sizeof p->msg, -ENOENT, "archive: blob %s missing or of the wrong size", digest);
      goto out;
    }
    json_t *next = NULL;
    if ((rc = load_json(p, be, digest, &next)) < 0)
      goto out;
    if (!mt)
      mt = json_string_value(json_object_get(next, "mediaType"));
    if (IS_INDEX(mt)) {
      json_decref(doc);
      doc = next;
      continue;
    }
    if (!IS_MANIFEST(mt) && !json_object_get(next, "layers")) {
      json_decref(next);
      rc = dibba_error_set(p->msg, sizeof p->msg, -EINVAL, "archive: %s is neither index nor manifest", digest);
      goto out;
    }
    manifest = next;
    snprintf(p->manifest_digest, sizeof p->manifest_digest, "%s", digest);
    p->manifest_size = size;
    p->manifest_media_type = dibba_xstrdup(mt ? mt : manifest_types[0]);
    break;
  }
  name = p->name ? p->name : annot_name;
  if (!name) {
    rc = dibba_error_set(p->msg, sizeof p->msg, -EINVAL, "archive: no image name given or annotated");
    goto out;
  }
  if (!p->name)
    p->name = dibba_xstrdup(name);
  /* Layers, then config, then manifest (parents last, so their GC labels point at present content). */
  json_t *layers = json_object_get(manifest, "layers"), *l;
  size_t i;
  json_array_foreach(layers, i, l) {
    const char *digest;
    int64_t size;
    entry_t *be;
    if (desc_parse(l, &digest, &size) < 0 || !(be = find_blob(p, digest)) || be->size != size) {
      rc = dibba_error_set(p->msg, sizeof p->msg, -ENOENT, "archive: layer %zu missing or malformed", i);
      goto out;
    }
    add_blob(p, digest, json_string_value(json_object_get(l, "mediaType")), size, be->offset);
  }
  p->n_layers = p->n_blobs;
  const char *cdigest;
  int64_t csize;
  entry_t *ce;
  json_t *cdesc = json_object_get(manifest, "config");
  if (desc_parse(cdesc, &cdigest, &csize) < 0 || !(ce = find_blob(p, cdigest)) || ce->size != csize) {
    rc = dibba_error_set(p->msg, sizeof p->msg, -ENOENT, "archive: config missing or malformed");
    goto out;
  }
  if ((rc = load_json(p, ce, "config", &p->config)) < 0)
    goto out;
  if (p->n_layers == 0 || chains_from_config(p->config, p->n_layers, &p->chains) < 0) {
    rc = dibba_error_set(p->msg, sizeof p->msg, -EINVAL, "archive: config diff_ids do not match the %zu layers",
                         p->n_layers);
    goto out;
  }
  snprintf(p->config_digest, sizeof p->config_digest, "%s", cdigest);
  add_blob(p, cdigest, json_string_value(json_object_get(cdesc, "mediaType")), csize, ce->offset);
  entry_t *me = find_blob(p, p->manifest_digest);
  add_blob(p, p->manifest_digest, p->manifest_media_type, p->manifest_size, me->offset);
  rc = 0;
out:
  free(annot_name);
  json_decref(doc);
  json_decref(manifest);
  p->err = rc;
}

/* ---------------- import state machine (loop) ---------------- */

typedef enum { ST_LEASE, ST_BLOBS, ST_UNPACK, ST_IMAGE, ST_DONE } step_t;

typedef struct import_s {
  dibba_containerd_t *ctd;
  uv_loop_t *loop;
  uv_work_t work;
  uv_fs_t fs;
  plan_t plan;
  char *ns;
  char *snapshotter;
  char lease[64];
  int have_lease;
  dibba_image_cb cb;
  void *data;
  step_t step;
  size_t cur;       /* blob or layer index */
  int64_t written;  /* bytes of the current blob sent */
  uint8_t *chunk;   /* read buffer */
  size_t chunk_len; /* bytes read into it */
  dibba_grpc_call_t *write;
  int write_acked;
  char extract_key[128];
  size_t unpacked, reused, blobs_written;
  int err;
  char msg[256];
} import_t;

static void step(import_t *im);

static dibba_containerd_call_opts_t call_opts(import_t *im) {
  return (dibba_containerd_call_opts_t){.ns = im->ns, .lease = im->have_lease ? im->lease : NULL};
}

/* Keep the first error: "what detail: reason". */
static void fail(import_t *im, int err, const char *what, const char *detail) {
  if (!im->err) {
    im->err = err;
    snprintf(im->msg, sizeof im->msg, "%s%s%s: %s", what, detail ? " " : "", detail ? detail : "", dibba_strerror(err));
  }
}

static void plan_free(plan_t *p) {
  free(p->entries);
  free(p->name);
  free(p->manifest_media_type);
  json_decref(p->config);
  for (size_t i = 0; i < p->n_blobs; i++) {
    free(p->blobs[i].media_type);
    json_decref(p->blobs[i].labels);
  }
  free(p->blobs);
  free(p->chains);
  memset(p, 0, sizeof *p);
  p->fd = -1;
}

static void on_closed_fd(uv_fs_t *req) {
  import_t *im = req->data;
  uv_fs_req_cleanup(req);
  dibba_image_result_t res = {.name = im->plan.name,
                              .manifest_digest = im->plan.manifest_digest,
                              .config_digest = im->plan.config_digest,
                              .chain_id = im->plan.chains ? im->plan.chains[im->plan.n_layers - 1] : NULL,
                              .config = im->plan.config,
                              .layers = im->plan.n_layers,
                              .layers_unpacked = im->unpacked,
                              .layers_reused = im->reused,
                              .blobs_written = im->blobs_written};
  im->cb(im->ctd, im->err, im->err ? im->msg : "", im->err ? NULL : &res, im->data);
  plan_free(&im->plan);
  free(im->chunk);
  free(im->ns);
  free(im->snapshotter);
  free(im);
}

static void finish(import_t *im) {
  im->fs.data = im;
  if (im->plan.fd >= 0 && uv_fs_close(im->loop, &im->fs, im->plan.fd, on_closed_fd) == 0)
    return;
  on_closed_fd(&im->fs);
}

static void on_lease_deleted(dibba_containerd_t *ctd, int err, const dibba_grpc_status_t *st,
                             Google__Protobuf__Empty *resp, void *data) {
  import_t *im = data;
  if (err < 0)
    dibba_log_warn("containerd", json_pack("{s:s}", "lease", im->lease), "import: lease delete: %s", st->message);
  finish(im);
}

/* End: drop the lease (also after an error), then report. */
static void wind_up(import_t *im) {
  im->step = ST_DONE;
  if (im->have_lease) {
    Containerd__Services__Leases__V1__DeleteRequest req = CONTAINERD__SERVICES__LEASES__V1__DELETE_REQUEST__INIT;
    req.id = im->lease;
    dibba_containerd_call_opts_t o = {.ns = im->ns};
    im->have_lease = 0;
    if (dibba_containerd_leases_delete(im->ctd, &o, &req, on_lease_deleted, im) == 0)
      return;
  }
  finish(im);
}

static void on_lease(dibba_containerd_t *ctd, int err, const dibba_grpc_status_t *st,
                     Containerd__Services__Leases__V1__CreateResponse *resp, void *data) {
  import_t *im = data;
  if (err < 0) {
    fail(im, err, "lease create", NULL);
    wind_up(im);
    return;
  }
  im->have_lease = 1;
  im->step = ST_BLOBS;
  im->cur = 0;
  step(im);
}

/* --- blobs --- */

static void blob_next(import_t *im) {
  im->cur++;
  step(im);
}

static void read_chunk(import_t *im);

static void on_write_msg(dibba_containerd_t *ctd, Containerd__Services__Content__V1__WriteContentResponse *msg,
                         void *data) {
  import_t *im = data;
  if (msg->action == CONTAINERD__SERVICES__CONTENT__V1__WRITE_ACTION__COMMIT) {
    im->write_acked = 1;
    return;
  }
  /* A WRITE was acknowledged: send the next chunk (stop-and-wait keeps memory at one chunk). */
  if (im->err)
    return;
  read_chunk(im);
}

static void on_write_done(dibba_containerd_t *ctd, int err, const dibba_grpc_status_t *st, void *data) {
  import_t *im = data;
  blob_t *b = &im->plan.blobs[im->cur];
  im->write = NULL;
  if (err < 0 || (!im->err && !im->write_acked)) {
    fail(im, err < 0 ? err : DIBBA_EPROTO, "content write", b->digest);
    if (err < 0 && st && st->message && *st->message)
      snprintf(im->msg, sizeof im->msg, "content write %s: %s", b->digest, st->message);
  }
  if (im->err) {
    wind_up(im);
    return;
  }
  im->blobs_written++;
  blob_next(im);
}

static void send_chunk(import_t *im) {
  blob_t *b = &im->plan.blobs[im->cur];
  int last = im->written + (int64_t)im->chunk_len >= b->size;
  Containerd__Services__Content__V1__WriteContentRequest req =
      CONTAINERD__SERVICES__CONTENT__V1__WRITE_CONTENT_REQUEST__INIT;
  char ref[160];
  snprintf(ref, sizeof ref, "%s-%s", im->lease, b->digest);
  req.action = last ? CONTAINERD__SERVICES__CONTENT__V1__WRITE_ACTION__COMMIT
                    : CONTAINERD__SERVICES__CONTENT__V1__WRITE_ACTION__WRITE;
  req.ref = ref;
  req.total = b->size;
  req.offset = im->written;
  req.data.data = im->chunk;
  req.data.len = im->chunk_len;
  size_t n_labels = json_object_size(b->labels);
  Containerd__Services__Content__V1__WriteContentRequest__LabelsEntry *lab = NULL, **labp = NULL;
  if (last) {
    req.expected = b->digest;
    if (n_labels) {
      lab = dibba_xcalloc(n_labels, sizeof *lab);
      labp = dibba_xcalloc(n_labels, sizeof *labp);
      const char *k;
      json_t *v;
      size_t i = 0;
      json_object_foreach(b->labels, k, v) {
        containerd__services__content__v1__write_content_request__labels_entry__init(&lab[i]);
        lab[i].key = (char *)k;
        lab[i].value = (char *)json_string_value(v);
        labp[i] = &lab[i];
        i++;
      }
      req.n_labels = n_labels;
      req.labels = labp;
    }
  }
  int rc = dibba_grpc_call_send(im->write, &req.base);
  free(lab);
  free(labp);
  im->written += (int64_t)im->chunk_len;
  if (rc == 0 && last)
    rc = dibba_grpc_call_close_send(im->write);
  if (rc < 0) {
    fail(im, rc, "content write", b->digest);
    dibba_grpc_call_cancel(im->write);
  }
}

static void on_read(uv_fs_t *req) {
  import_t *im = req->data;
  ssize_t r = req->result;
  uv_fs_req_cleanup(req);
  blob_t *b = &im->plan.blobs[im->cur];
  if (r <= 0 && b->size > im->written) {
    fail(im, r < 0 ? (int)r : -EINVAL, "reading archive at", b->digest);
    if (im->write)
      dibba_grpc_call_cancel(im->write);
    return;
  }
  im->chunk_len = (size_t)r;
  send_chunk(im);
}

static void read_chunk(import_t *im) {
  blob_t *b = &im->plan.blobs[im->cur];
  int64_t left = b->size - im->written;
  if (left <= 0) /* acknowledged WRITE after the last chunk: nothing more to send */
    return;
  size_t n = left < (int64_t)CHUNK ? (size_t)left : CHUNK;
  uv_buf_t buf = uv_buf_init((char *)im->chunk, (unsigned)n);
  im->fs.data = im;
  int rc = uv_fs_read(im->loop, &im->fs, im->plan.fd, &buf, 1, b->offset + im->written, on_read);
  if (rc < 0) {
    fail(im, rc, "reading archive at", b->digest);
    dibba_grpc_call_cancel(im->write);
  }
}

static void on_info(dibba_containerd_t *ctd, int err, const dibba_grpc_status_t *st,
                    Containerd__Services__Content__V1__InfoResponse *resp, void *data) {
  import_t *im = data;
  blob_t *b = &im->plan.blobs[im->cur];
  if (err == 0) {
    blob_next(im); /* content is addressed by digest: present means identical */
    return;
  }
  if (err != -ENOENT) {
    fail(im, err, "content info", b->digest);
    wind_up(im);
    return;
  }
  im->written = 0;
  im->write_acked = 0;
  dibba_containerd_call_opts_t o = call_opts(im);
  o.timeout_ms = 600000;
  int rc = dibba_containerd_content_write(im->ctd, &o, on_write_msg, on_write_done, im, &im->write);
  if (rc < 0) {
    fail(im, rc, "content write", b->digest);
    wind_up(im);
    return;
  }
  if (b->size == 0) {
    im->chunk_len = 0;
    send_chunk(im);
  } else
    read_chunk(im);
}

/* --- unpack --- */

static void unpack_next(import_t *im) {
  im->cur++;
  step(im);
}

static void on_commit(dibba_containerd_t *ctd, int err, const dibba_grpc_status_t *st, Google__Protobuf__Empty *resp,
                      void *data) {
  import_t *im = data;
  if (err < 0) {
    fail(im, err, "snapshot commit", im->plan.chains[im->cur]);
    wind_up(im);
    return;
  }
  im->unpacked++;
  unpack_next(im);
}

static void on_removed_extract(dibba_containerd_t *ctd, int err, const dibba_grpc_status_t *st,
                               Google__Protobuf__Empty *resp, void *data) {
  wind_up(data);
}

/* After a failed apply, drop the active extract snapshot so nothing half-applied survives the lease. */
static void remove_extract(import_t *im) {
  Containerd__Services__Snapshots__V1__RemoveSnapshotRequest req =
      CONTAINERD__SERVICES__SNAPSHOTS__V1__REMOVE_SNAPSHOT_REQUEST__INIT;
  req.snapshotter = im->snapshotter;
  req.key = im->extract_key;
  dibba_containerd_call_opts_t o = call_opts(im);
  if (dibba_containerd_snapshots_remove(im->ctd, &o, &req, on_removed_extract, im) < 0)
    wind_up(im);
}

static void on_apply(dibba_containerd_t *ctd, int err, const dibba_grpc_status_t *st,
                     Containerd__Services__Diff__V1__ApplyResponse *resp, void *data) {
  import_t *im = data;
  json_t *ids = json_object_get(json_object_get(im->plan.config, "rootfs"), "diff_ids");
  const char *want = json_string_value(json_array_get(ids, im->cur));
  if (err < 0) {
    fail(im, err, "diff apply", im->plan.blobs[im->cur].digest);
    if (st && st->message && *st->message)
      snprintf(im->msg, sizeof im->msg, "diff apply %s: %s", im->plan.blobs[im->cur].digest, st->message);
    remove_extract(im);
    return;
  }
  if (!resp->applied || !resp->applied->digest || !want || strcmp(resp->applied->digest, want)) {
    fail(im, -EINVAL, "layer digest after apply differs from the config's diff_id", im->plan.blobs[im->cur].digest);
    remove_extract(im);
    return;
  }
  Containerd__Services__Snapshots__V1__CommitSnapshotRequest req =
      CONTAINERD__SERVICES__SNAPSHOTS__V1__COMMIT_SNAPSHOT_REQUEST__INIT;
  req.snapshotter = im->snapshotter;
  req.name = im->plan.chains[im->cur];
  req.key = im->extract_key;
  dibba_containerd_call_opts_t o = call_opts(im);
  int rc = dibba_containerd_snapshots_commit(im->ctd, &o, &req, on_commit, im);
  if (rc < 0) {
    fail(im, rc, "snapshot commit", NULL);
    wind_up(im);
  }
}

static void on_prepare(dibba_containerd_t *ctd, int err, const dibba_grpc_status_t *st,
                       Containerd__Services__Snapshots__V1__PrepareSnapshotResponse *resp, void *data) {
  import_t *im = data;
  blob_t *b = &im->plan.blobs[im->cur];
  if (err < 0) {
    fail(im, err, "snapshot prepare", im->extract_key);
    wind_up(im);
    return;
  }
  Containerd__Types__Descriptor d = CONTAINERD__TYPES__DESCRIPTOR__INIT;
  d.media_type = b->media_type;
  d.digest = b->digest;
  d.size = b->size;
  Containerd__Services__Diff__V1__ApplyRequest req = CONTAINERD__SERVICES__DIFF__V1__APPLY_REQUEST__INIT;
  req.diff = &d;
  req.n_mounts = resp->n_mounts;
  req.mounts = resp->mounts;
  dibba_containerd_call_opts_t o = call_opts(im);
  o.timeout_ms = 600000;
  int rc = dibba_containerd_diff_apply(im->ctd, &o, &req, on_apply, im);
  if (rc < 0) {
    fail(im, rc, "diff apply", NULL);
    remove_extract(im);
  }
}

static void on_stat(dibba_containerd_t *ctd, int err, const dibba_grpc_status_t *st,
                    Containerd__Services__Snapshots__V1__StatSnapshotResponse *resp, void *data) {
  import_t *im = data;
  if (err == 0) {
    im->reused++;
    unpack_next(im);
    return;
  }
  if (err != -ENOENT) {
    fail(im, err, "snapshot stat", im->plan.chains[im->cur]);
    wind_up(im);
    return;
  }
  /* The key is unique per import so a crashed earlier attempt cannot collide with it. */
  snprintf(im->extract_key, sizeof im->extract_key, "extract-%s-%s", im->lease, im->plan.chains[im->cur] + 7);
  Containerd__Services__Snapshots__V1__PrepareSnapshotRequest req =
      CONTAINERD__SERVICES__SNAPSHOTS__V1__PREPARE_SNAPSHOT_REQUEST__INIT;
  req.snapshotter = im->snapshotter;
  req.key = im->extract_key;
  req.parent = im->cur > 0 ? im->plan.chains[im->cur - 1] : "";
  dibba_containerd_call_opts_t o = call_opts(im);
  int rc = dibba_containerd_snapshots_prepare(im->ctd, &o, &req, on_prepare, im);
  if (rc < 0) {
    fail(im, rc, "snapshot prepare", NULL);
    wind_up(im);
  }
}

/* --- image record --- */

static void on_image(dibba_containerd_t *ctd, int err, const dibba_grpc_status_t *st, void *resp, void *data);

static void image_call(import_t *im, int update) {
  Containerd__Types__Descriptor d = CONTAINERD__TYPES__DESCRIPTOR__INIT;
  d.media_type = im->plan.manifest_media_type;
  d.digest = im->plan.manifest_digest;
  d.size = im->plan.manifest_size;
  Containerd__Services__Images__V1__Image img = CONTAINERD__SERVICES__IMAGES__V1__IMAGE__INIT;
  img.name = im->plan.name;
  img.target = &d;
  dibba_containerd_call_opts_t o = call_opts(im);
  int rc;
  if (update) {
    Containerd__Services__Images__V1__UpdateImageRequest req =
        CONTAINERD__SERVICES__IMAGES__V1__UPDATE_IMAGE_REQUEST__INIT;
    req.image = &img;
    rc = dibba_containerd_images_update(im->ctd, &o, &req, (dibba_containerd_images_update_cb)on_image, im);
  } else {
    Containerd__Services__Images__V1__CreateImageRequest req =
        CONTAINERD__SERVICES__IMAGES__V1__CREATE_IMAGE_REQUEST__INIT;
    req.image = &img;
    rc = dibba_containerd_images_create(im->ctd, &o, &req, (dibba_containerd_images_create_cb)on_image, im);
  }
  if (rc < 0) {
    fail(im, rc, "image record", NULL);
    wind_up(im);
  }
}

static void on_image(dibba_containerd_t *ctd, int err, const dibba_grpc_status_t *st, void *resp, void *data) {
  import_t *im = data;
  if (err == -EEXIST && im->step == ST_IMAGE) {
    im->step = ST_DONE; /* marks the retry as an update */
    image_call(im, 1);
    return;
  }
  if (err < 0)
    fail(im, err, "image record", im->plan.name);
  wind_up(im);
}

static void step(import_t *im) {
  int rc = 0;
  dibba_containerd_call_opts_t o = call_opts(im);
  switch (im->step) {
  case ST_LEASE: {
    Containerd__Services__Leases__V1__CreateRequest req = CONTAINERD__SERVICES__LEASES__V1__CREATE_REQUEST__INIT;
    /* An expiry label lets GC reclaim the lease if this process dies before deleting it. */
    Containerd__Services__Leases__V1__CreateRequest__LabelsEntry exp =
        CONTAINERD__SERVICES__LEASES__V1__CREATE_REQUEST__LABELS_ENTRY__INIT;
    Containerd__Services__Leases__V1__CreateRequest__LabelsEntry *labels[] = {&exp};
    char when[64];
    time_t t = time(NULL) + 3600;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    exp.key = "containerd.io/gc.expire";
    exp.value = when;
    req.id = im->lease;
    req.n_labels = 1;
    req.labels = labels;
    o.lease = NULL;
    rc = dibba_containerd_leases_create(im->ctd, &o, &req, on_lease, im);
    break;
  }
  case ST_BLOBS: {
    if (im->cur >= im->plan.n_blobs) {
      im->step = ST_UNPACK;
      im->cur = 0;
      step(im);
      return;
    }
    Containerd__Services__Content__V1__InfoRequest req = CONTAINERD__SERVICES__CONTENT__V1__INFO_REQUEST__INIT;
    req.digest = im->plan.blobs[im->cur].digest;
    rc = dibba_containerd_content_info(im->ctd, &o, &req, on_info, im);
    break;
  }
  case ST_UNPACK: {
    if (im->cur >= im->plan.n_layers) {
      im->step = ST_IMAGE;
      image_call(im, 0);
      return;
    }
    Containerd__Services__Snapshots__V1__StatSnapshotRequest req =
        CONTAINERD__SERVICES__SNAPSHOTS__V1__STAT_SNAPSHOT_REQUEST__INIT;
    req.snapshotter = im->snapshotter;
    req.key = im->plan.chains[im->cur];
    rc = dibba_containerd_snapshots_stat(im->ctd, &o, &req, on_stat, im);
    break;
  }
  case ST_IMAGE:
  case ST_DONE: break;
  }
  if (rc < 0) {
    fail(im, rc, "containerd call", NULL);
    wind_up(im);
  }
}

static void work_plan(uv_work_t *w) {
  import_t *im = w->data;
  plan_archive(&im->plan);
}

static void after_plan(uv_work_t *w, int status) {
  import_t *im = w->data;
  if (status < 0 || im->plan.err < 0) {
    im->err = status < 0 ? status : im->plan.err;
    snprintf(im->msg, sizeof im->msg, "%s", status < 0 ? "import cancelled" : im->plan.msg);
    finish(im);
    return;
  }
  /* GC labels: the manifest keeps its config and layers, the config keeps the unpacked snapshot chain. */
  plan_t *p = &im->plan;
  blob_t *cfg = &p->blobs[p->n_layers], *man = &p->blobs[p->n_layers + 1];
  char key[96];
  snprintf(key, sizeof key, "containerd.io/gc.ref.snapshot.%s", im->snapshotter);
  json_object_set_new(cfg->labels, key, json_string(p->chains[p->n_layers - 1]));
  json_object_set_new(man->labels, "containerd.io/gc.ref.content.config", json_string(p->config_digest));
  for (size_t i = 0; i < p->n_layers; i++) {
    snprintf(key, sizeof key, "containerd.io/gc.ref.content.l.%zu", i);
    json_object_set_new(man->labels, key, json_string(p->blobs[i].digest));
  }
  im->step = ST_LEASE;
  step(im);
}

static void work_open(uv_fs_t *req) {
  import_t *im = req->data;
  int fd = (int)req->result;
  uv_fs_req_cleanup(req);
  if (fd < 0) {
    im->err = fd;
    snprintf(im->msg, sizeof im->msg, "archive: %s", dibba_strerror(fd));
    on_closed_fd(&im->fs);
    return;
  }
  im->plan.fd = fd;
  im->work.data = im;
  int rc = uv_queue_work(im->loop, &im->work, work_plan, after_plan);
  if (rc < 0) {
    im->err = rc;
    snprintf(im->msg, sizeof im->msg, "queue work: %s", dibba_strerror(rc));
    finish(im);
  }
}

int dibba_containerd_image_import(dibba_containerd_t *ctd, const dibba_image_import_opts_t *opts, dibba_image_cb cb,
                                  void *data) {
  if (!ctd || !opts || !opts->archive || !cb)
    return -EINVAL;
  import_t *im = dibba_xcalloc(1, sizeof *im);
  im->ctd = ctd;
  im->loop = dibba_containerd_loop(ctd);
  im->cb = cb;
  im->data = data;
  im->plan.fd = -1;
  im->plan.name = opts->name ? dibba_xstrdup(opts->name) : NULL;
  im->ns = dibba_xstrdup(opts->ns ? opts->ns : dibba_containerd_namespace(ctd));
  im->snapshotter = dibba_xstrdup(opts->snapshotter ? opts->snapshotter : dibba_containerd_snapshotter(ctd));
  im->chunk = dibba_xmalloc(CHUNK);
  unsigned char rnd[8];
  if (uv_random(NULL, NULL, rnd, sizeof rnd, 0, NULL) < 0)
    memset(rnd, 0, sizeof rnd);
  snprintf(im->lease, sizeof im->lease, "dibba-import-%02x%02x%02x%02x%02x%02x%02x%02x", rnd[0], rnd[1], rnd[2], rnd[3],
           rnd[4], rnd[5], rnd[6], rnd[7]);
  im->fs.data = im;
  int rc = uv_fs_open(im->loop, &im->fs, opts->archive, O_RDONLY | O_CLOEXEC, 0, work_open);
  if (rc < 0) {
    plan_free(&im->plan);
    free(im->chunk);
    free(im->ns);
    free(im->snapshotter);
    free(im);
  }
  return rc;
}

/* ---------------- resolve: name → manifest → config → chain id ---------------- */

typedef struct resolve_s {
  dibba_containerd_t *ctd;
  char *ns;
  char *name;
  dibba_image_cb cb;
  void *data;
  int depth;
  int reading_config;
  size_t n_layers;
  char digest[72];
  char manifest_digest[72];
  char config_digest[72];
  dibba_buf_t buf;
  json_t *config;
  char (*chains)[72];
  int err;
  char msg[256];
} resolve_t;

static void resolve_end(resolve_t *r) {
  dibba_image_result_t res = {.name = r->name,
                              .manifest_digest = r->manifest_digest,
                              .config_digest = r->config_digest,
                              .chain_id = r->chains ? r->chains[r->n_layers - 1] : NULL,
                              .config = r->config,
                              .layers = r->n_layers};
  r->cb(r->ctd, r->err, r->err ? r->msg : "", r->err ? NULL : &res, r->data);
  dibba_buf_free(&r->buf);
  json_decref(r->config);
  free(r->chains);
  free(r->ns);
  free(r->name);
  free(r);
}

static void resolve_fail(resolve_t *r, int err, const char *what) {
  r->err = err;
  snprintf(r->msg, sizeof r->msg, "image %s: %s: %s", r->name, what, dibba_strerror(err));
  resolve_end(r);
}

static void read_blob(resolve_t *r, const char *digest);

static void on_blob_chunk(dibba_containerd_t *ctd, Containerd__Services__Content__V1__ReadContentResponse *msg,
                          void *data) {
  resolve_t *r = data;
  if (!r->err && dibba_buf_add(&r->buf, msg->data.data, msg->data.len) < 0)
    r->err = -EFBIG;
}

static void on_blob_read(dibba_containerd_t *ctd, int err, const dibba_grpc_status_t *st, void *data) {
  resolve_t *r = data;
  json_t *doc = NULL;
  if (err == 0 && r->err)
    err = r->err;
  r->err = 0;
  if (err < 0) {
    resolve_fail(r, err, r->digest);
    return;
  }
  doc = json_loadb(r->buf.data ? r->buf.data : "", r->buf.len, 0, NULL);
  dibba_buf_reset(&r->buf);
  if (!json_is_object(doc)) {
    json_decref(doc);
    resolve_fail(r, -EINVAL, "blob is not a JSON object");
    return;
  }
  if (r->reading_config) {
    r->config = doc;
    snprintf(r->config_digest, sizeof r->config_digest, "%s", r->digest);
    if (chains_from_config(doc, r->n_layers, &r->chains) < 0) {
      resolve_fail(r, -EINVAL, "config diff_ids do not match the manifest's layers");
      return;
    }
    resolve_end(r);
    return;
  }
  const char *mt = json_string_value(json_object_get(doc, "mediaType"));
  json_t *layers = json_object_get(doc, "layers");
  const char *digest;
  int64_t size;
  if (IS_INDEX(mt) || (!layers && json_object_get(doc, "manifests"))) {
    json_t *d = pick_platform(doc);
    if (!d || desc_parse(d, &digest, &size) < 0 || ++r->depth > MAX_DEPTH) {
      json_decref(doc);
      resolve_fail(r, -ENOENT, "no manifest for linux/" HOST_ARCH);
      return;
    }
    char next[72];
    snprintf(next, sizeof next, "%s", digest);
    json_decref(doc);
    read_blob(r, next);
    return;
  }
  snprintf(r->manifest_digest, sizeof r->manifest_digest, "%s", r->digest);
  r->n_layers = json_array_size(layers);
  if (r->n_layers == 0 || desc_parse(json_object_get(doc, "config"), &digest, &size) < 0) {
    json_decref(doc);
    resolve_fail(r, -EINVAL, "malformed manifest");
    return;
  }
  char cfg[72];
  snprintf(cfg, sizeof cfg, "%s", digest);
  json_decref(doc);
  r->reading_config = 1;
  read_blob(r, cfg);
}

static void read_blob(resolve_t *r, const char *digest) {
  snprintf(r->digest, sizeof r->digest, "%s", digest);
  Containerd__Services__Content__V1__ReadContentRequest req =
      CONTAINERD__SERVICES__CONTENT__V1__READ_CONTENT_REQUEST__INIT;
  req.digest = r->digest;
  dibba_containerd_call_opts_t o = {.ns = r->ns};
  int rc = dibba_containerd_content_read(r->ctd, &o, &req, on_blob_chunk, on_blob_read, r, NULL);
  if (rc < 0)
    resolve_fail(r, rc, "content read");
}

static void on_image_get(dibba_containerd_t *ctd, int err, const dibba_grpc_status_t *st,
                         Containerd__Services__Images__V1__GetImageResponse *resp, void *data) {
  resolve_t *r = data;
  const char *digest;
  int64_t size;
  if (err < 0) {
    resolve_fail(r, err, "images get");
    return;
  }
  if (!resp->image || !resp->image->target || !resp->image->target->digest ||
      strlen(resp->image->target->digest) != 71) {
    resolve_fail(r, -EINVAL, "image record has no target");
    return;
  }
  digest = resp->image->target->digest;
  size = resp->image->target->size;
  (void)size;
  read_blob(r, digest);
}

int dibba_containerd_image_resolve(dibba_containerd_t *ctd, const char *ns, const char *name, dibba_image_cb cb,
                                   void *data) {
  if (!ctd || !name || !*name || !cb)
    return -EINVAL;
  resolve_t *r = dibba_xcalloc(1, sizeof *r);
  r->ctd = ctd;
  r->ns = dibba_xstrdup(ns ? ns : dibba_containerd_namespace(ctd));
  r->name = dibba_xstrdup(name);
  r->cb = cb;
  r->data = data;
  dibba_buf_init(&r->buf, DIBBA_IMAGE_MAX_JSON);
  Containerd__Services__Images__V1__GetImageRequest req = CONTAINERD__SERVICES__IMAGES__V1__GET_IMAGE_REQUEST__INIT;
  req.name = r->name;
  dibba_containerd_call_opts_t o = {.ns = r->ns};
  int rc = dibba_containerd_images_get(ctd, &o, &req, on_image_get, r);
  if (rc < 0) {
    dibba_buf_free(&r->buf);
    free(r->ns);
    free(r->name);
    free(r);
  }
  return rc;
}
