/* SPDX-License-Identifier: Apache-2.0 */
/* containerd client: namespace and deadline defaults on top of lib/grpc, and one typed function per RPC. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "dibba/alloc.h"
#include "dibba/containerd.h"
#include "dibba/error.h"

struct dibba_containerd_s {
  uv_loop_t *loop;
  dibba_grpc_client_t *grpc;
  char *ns;
  char *snapshotter;
  uint64_t timeout_ms;
  dibba_containerd_state_cb state_cb;
  void *data;
  dibba_containerd_close_cb close_cb;
  void *close_data;
  int closing;
};

/* One in-flight typed call: the user's callbacks, stored as generic pointers and cast back to their own type. */
typedef struct req_s {
  dibba_containerd_t *ctd;
  void (*cb)(void);
  void (*msg_cb)(void);
  void *data;
} req_t;

static void on_state(dibba_grpc_client_t *c, dibba_grpc_state_t state, int err, void *data) {
  dibba_containerd_t *ctd = data;
  if (ctd->state_cb)
    ctd->state_cb(ctd, state, err, ctd->data);
}

int dibba_containerd_new(uv_loop_t *loop, const dibba_containerd_opts_t *o, dibba_containerd_t **out) {
  int rc = 0;
  dibba_containerd_t *ctd = NULL;
  if (!o || !o->socket || !o->ns) {
    rc = -EINVAL;
    goto out;
  }
  ctd = dibba_xcalloc(1, sizeof *ctd);
  ctd->loop = loop;
  ctd->ns = dibba_xstrdup(o->ns);
  ctd->snapshotter = dibba_xstrdup(o->snapshotter ? o->snapshotter : "overlayfs");
  ctd->timeout_ms = o->timeout_ms ? o->timeout_ms : 30000;
  ctd->state_cb = o->state_cb;
  ctd->data = o->data;
  dibba_grpc_client_opts_t go = {.address = o->socket, .state_cb = on_state, .data = ctd};
  rc = dibba_grpc_client_new(loop, &go, &ctd->grpc);
  if (rc < 0)
    goto out;
  *out = ctd;
  ctd = NULL;
out:
  if (ctd) {
    free(ctd->ns);
    free(ctd->snapshotter);
    free(ctd);
  }
  return rc;
}

int dibba_containerd_new_from_config(uv_loop_t *loop, const dibba_config_t *cfg, dibba_containerd_state_cb state_cb,
                                     void *data, dibba_containerd_t **out, char *err, size_t errlen) {
  const char *sock, *ns, *snap;
  int64_t timeout;
  int rc;
  if ((rc = dibba_config_str(cfg, "containerd.socket", NULL, &sock, err, errlen)) < 0 ||
      (rc = dibba_config_str(cfg, "containerd.namespace", NULL, &ns, err, errlen)) < 0 ||
      (rc = dibba_config_str(cfg, "containerd.snapshotter", NULL, &snap, err, errlen)) < 0 ||
      (rc = dibba_config_int(cfg, "containerd.timeout_ms", 30000, 1, 3600000, &timeout, err, errlen)) < 0)
    goto out;
  if (!sock || !ns || !*ns) {
    rc = dibba_error_set(err, errlen, DIBBA_ECONFIG, "containerd.socket and containerd.namespace are required");
    goto out;
  }
  dibba_containerd_opts_t o = {.socket = sock,
                               .ns = ns,
                               .snapshotter = snap,
                               .timeout_ms = (uint64_t)timeout,
                               .state_cb = state_cb,
                               .data = data};
  rc = dibba_containerd_new(loop, &o, out);
  if (rc < 0)
    dibba_error_set(err, errlen, rc, "containerd.socket %s", sock);
out:
  return rc;
}

static void on_grpc_closed(dibba_grpc_client_t *c, void *data) {
  dibba_containerd_t *ctd = data;
  if (ctd->close_cb)
    ctd->close_cb(ctd, ctd->close_data);
  free(ctd->ns);
  free(ctd->snapshotter);
  free(ctd);
}

void dibba_containerd_close(dibba_containerd_t *ctd, dibba_containerd_close_cb cb, void *data) {
  if (!ctd || ctd->closing)
    return;
  ctd->closing = 1;
  ctd->close_cb = cb;
  ctd->close_data = data;
  dibba_grpc_client_close(ctd->grpc, on_grpc_closed, ctd);
}

dibba_grpc_client_t *dibba_containerd_grpc(const dibba_containerd_t *ctd) { return ctd->grpc; }
const char *dibba_containerd_namespace(const dibba_containerd_t *ctd) { return ctd->ns; }
const char *dibba_containerd_snapshotter(const dibba_containerd_t *ctd) { return ctd->snapshotter; }
void *dibba_containerd_data(const dibba_containerd_t *ctd) { return ctd->data; }
uv_loop_t *dibba_containerd_loop(const dibba_containerd_t *ctd) { return ctd->loop; }

static int start_call(dibba_containerd_t *ctd, const dibba_containerd_call_opts_t *o, const char *path,
                      const ProtobufCMessageDescriptor *desc, const ProtobufCMessage *req, dibba_grpc_message_cb on_msg,
                      dibba_grpc_done_cb on_done, void (*cb)(void), void (*msg_cb)(void), void *data, int client_stream,
                      dibba_grpc_call_t **out) {
  int rc = 0;
  if (!cb || (!req && !client_stream)) {
    rc = -EINVAL;
    goto out;
  }
  const char *ns = o && o->ns ? o->ns : ctd->ns;
  dibba_grpc_md_t md[2];
  size_t n_md = 0;
  if (*ns)
    md[n_md++] = (dibba_grpc_md_t){"containerd-namespace", ns};
  if (o && o->lease && *o->lease)
    md[n_md++] = (dibba_grpc_md_t){"containerd-lease", o->lease};
  req_t *r = dibba_xcalloc(1, sizeof *r);
  r->ctd = ctd;
  r->cb = cb;
  r->msg_cb = msg_cb;
  r->data = data;
  dibba_grpc_call_opts_t co = {.path = path,
                               .response_desc = desc,
                               .metadata = md,
                               .n_metadata = n_md,
                               .timeout_ms = o && o->timeout_ms ? o->timeout_ms : ctd->timeout_ms,
                               .on_message = on_msg,
                               .on_done = on_done,
                               .client_stream = client_stream,
                               .data = r};
  rc = dibba_grpc_call_start(ctd->grpc, &co, req, out);
  if (rc < 0)
    free(r);
out:
  return rc;
}

#define DEFINE_UNARY(name, Req, Resp, path, desc)                                                                      \
  static void name##_done(dibba_grpc_call_t *call, int err, const dibba_grpc_status_t *st, ProtobufCMessage *resp,     \
                          void *data) {                                                                                \
    req_t *r = data;                                                                                                   \
    ((dibba_containerd_##name##_cb)r->cb)(r->ctd, err, st, (Resp *)resp, r->data);                                     \
    free(r);                                                                                                           \
  }                                                                                                                    \
  int dibba_containerd_##name(dibba_containerd_t *ctd, const dibba_containerd_call_opts_t *opts, const Req *req,       \
                              dibba_containerd_##name##_cb cb, void *data) {                                           \
    return start_call(ctd, opts, path, &desc, req ? &req->base : NULL, NULL, name##_done, (void (*)(void))cb, NULL,    \
                      data, 0, NULL);                                                                                  \
  }
DIBBA_CONTAINERD_UNARY_CALLS(DEFINE_UNARY)

static void stream_done(dibba_grpc_call_t *call, int err, const dibba_grpc_status_t *st, ProtobufCMessage *resp,
                        void *data) {
  req_t *r = data;
  ((dibba_containerd_done_cb)r->cb)(r->ctd, err, st, r->data);
  free(r);
}

#define DEFINE_STREAM(name, Req, Resp, path, desc)                                                                     \
  static void name##_message(dibba_grpc_call_t *call, ProtobufCMessage *msg, void *data) {                             \
    req_t *r = data;                                                                                                   \
    ((dibba_containerd_##name##_cb)r->msg_cb)(r->ctd, (Resp *)msg, r->data);                                           \
  }                                                                                                                    \
  int dibba_containerd_##name(dibba_containerd_t *ctd, const dibba_containerd_call_opts_t *opts, const Req *req,       \
                              dibba_containerd_##name##_cb on_message, dibba_containerd_done_cb on_done, void *data,   \
                              dibba_grpc_call_t **call) {                                                              \
    if (!on_message)                                                                                                   \
      return -EINVAL;                                                                                                  \
    return start_call(ctd, opts, path, &desc, req ? &req->base : NULL, name##_message, stream_done,                    \
                      (void (*)(void))on_done, (void (*)(void))on_message, data, 0, call);                             \
  }
DIBBA_CONTAINERD_STREAM_CALLS(DEFINE_STREAM)

static void content_write_message(dibba_grpc_call_t *call, ProtobufCMessage *msg, void *data) {
  req_t *r = data;
  ((dibba_containerd_content_write_cb)r->msg_cb)(r->ctd, (Containerd__Services__Content__V1__WriteContentResponse *)msg,
                                                 r->data);
}

int dibba_containerd_content_write(dibba_containerd_t *ctd, const dibba_containerd_call_opts_t *opts,
                                   dibba_containerd_content_write_cb on_message, dibba_containerd_done_cb on_done,
                                   void *data, dibba_grpc_call_t **call) {
  if (!on_message)
    return -EINVAL;
  return start_call(ctd, opts, "/containerd.services.content.v1.Content/Write",
                    &containerd__services__content__v1__write_content_response__descriptor, NULL, content_write_message,
                    stream_done, (void (*)(void))on_done, (void (*)(void))on_message, data, 1, call);
}

static const ProtobufCMessageDescriptor *const event_types[] = {
    &containerd__events__namespace_create__descriptor, &containerd__events__namespace_delete__descriptor,
    &containerd__events__container_create__descriptor, &containerd__events__container_delete__descriptor,
    &containerd__events__image_create__descriptor,     &containerd__events__image_delete__descriptor,
    &containerd__events__task_start__descriptor,       &containerd__events__task_exit__descriptor,
    &containerd__events__task_delete__descriptor,      &containerd__events__task_oom__descriptor,
};

ProtobufCMessage *dibba_containerd_event_decode(const Containerd__Services__Events__V1__Envelope *env) {
  if (!env || !env->event || !env->event->type_url)
    return NULL;
  /* "containerd.events.TaskExit", possibly behind a "type.googleapis.com/"-style prefix. */
  const char *name = strrchr(env->event->type_url, '/');
  name = name ? name + 1 : env->event->type_url;
  for (size_t i = 0; i < sizeof event_types / sizeof event_types[0]; i++)
    if (!strcmp(name, event_types[i]->name))
      return protobuf_c_message_unpack(event_types[i], NULL, env->event->value.len, env->event->value.data);
  return NULL;
}
