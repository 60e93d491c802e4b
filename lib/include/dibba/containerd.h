/* SPDX-License-Identifier: Apache-2.0 */
/* Typed asynchronous calls to containerd's gRPC API (and CRI's ImageService) over lib/grpc. */
#ifndef DIBBA_CONTAINERD_H
#define DIBBA_CONTAINERD_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "dibba/config.h"
#include "dibba/grpc.h"

#include "containers.pb-c.h"
#include "content.pb-c.h"
#include "cri_image.pb-c.h"
#include "diff.pb-c.h"
#include "event_types.pb-c.h"
#include "events.pb-c.h"
#include "gtypes.pb-c.h"
#include "images.pb-c.h"
#include "introspection.pb-c.h"
#include "leases.pb-c.h"
#include "namespace.pb-c.h"
#include "snapshots.pb-c.h"
#include "tasks.pb-c.h"
#include "version.pb-c.h"

typedef struct dibba_containerd_s dibba_containerd_t;

/* Connection state, as dibba_grpc_state_cb. On READY after TRANSIENT_FAILURE, re-subscribe to events and
 * resync (list containers and tasks): calls in flight during the drop finished with UNAVAILABLE. */
typedef void (*dibba_containerd_state_cb)(dibba_containerd_t *ctd, dibba_grpc_state_t state, int err, void *data);
typedef void (*dibba_containerd_close_cb)(dibba_containerd_t *ctd, void *data);

typedef struct dibba_containerd_opts_s {
  const char *socket;      /* "unix:///run/containerd/containerd.sock" or a path; required */
  const char *ns;          /* default containerd namespace, sent as containerd-namespace; required */
  const char *snapshotter; /* default snapshotter for snapshot calls; NULL: "overlayfs" */
  uint64_t timeout_ms;     /* default per-call deadline; 0: 30 s */
  dibba_containerd_state_cb state_cb;
  void *data;
} dibba_containerd_opts_t;

/* Create the client and start connecting (strings are copied). Errors as dibba_grpc_client_new. */
int dibba_containerd_new(uv_loop_t *loop, const dibba_containerd_opts_t *opts, dibba_containerd_t **out);
/* Same, from containerd.socket / containerd.namespace / containerd.snapshotter / containerd.timeout_ms.
 * Returns DIBBA_ECONFIG with a line in err for a bad value. */
int dibba_containerd_new_from_config(uv_loop_t *loop, const dibba_config_t *cfg, dibba_containerd_state_cb state_cb,
                                     void *data, dibba_containerd_t **out, char *err, size_t errlen);
/* Close: every call finishes with CANCELLED, then cb (may be NULL) runs and the client is freed. Safe twice. */
void dibba_containerd_close(dibba_containerd_t *ctd, dibba_containerd_close_cb cb, void *data);
dibba_grpc_client_t *dibba_containerd_grpc(const dibba_containerd_t *ctd);
const char *dibba_containerd_namespace(const dibba_containerd_t *ctd);
const char *dibba_containerd_snapshotter(const dibba_containerd_t *ctd);
void *dibba_containerd_data(const dibba_containerd_t *ctd);
uv_loop_t *dibba_containerd_loop(const dibba_containerd_t *ctd);

/* Per-call overrides; pass NULL for the defaults. */
typedef struct dibba_containerd_call_opts_s {
  const char *ns;      /* containerd namespace for this call */
  uint64_t timeout_ms; /* deadline for this call */
  const char *lease;   /* sent as containerd-lease: what the call creates is held by that lease */
} dibba_containerd_call_opts_t;

/* Unary calls: X(name, request type, response type, path, response descriptor).
 * dibba_containerd_<name>(ctd, opts, req, cb, data) starts the call; cb(ctd, err, st, resp, data) runs once
 * with err = dibba_grpc_code_to_errno(st->code) (NotFound → -ENOENT, AlreadyExists → -EEXIST, ...) and the
 * unpacked response (NULL on error), which is freed after cb returns. req is packed at once and not kept.
 * Returns 0 or the errors of dibba_grpc_call_start (then cb is not called). */
#define DIBBA_CONTAINERD_UNARY_CALLS(X)                                                                                \
  X(version, Google__Protobuf__Empty, Containerd__Services__Version__V1__VersionResponse,                              \
    "/containerd.services.version.v1.Version/Version",                                                                 \
    containerd__services__version__v1__version_response__descriptor)                                                   \
  X(namespaces_list, Containerd__Services__Namespaces__V1__ListNamespacesRequest,                                      \
    Containerd__Services__Namespaces__V1__ListNamespacesResponse,                                                      \
    "/containerd.services.namespaces.v1.Namespaces/List",                                                              \
    containerd__services__namespaces__v1__list_namespaces_response__descriptor)                                        \
  X(namespaces_create, Containerd__Services__Namespaces__V1__CreateNamespaceRequest,                                   \
    Containerd__Services__Namespaces__V1__CreateNamespaceResponse,                                                     \
    "/containerd.services.namespaces.v1.Namespaces/Create",                                                            \
    containerd__services__namespaces__v1__create_namespace_response__descriptor)                                       \
  X(namespaces_delete, Containerd__Services__Namespaces__V1__DeleteNamespaceRequest, Google__Protobuf__Empty,          \
    "/containerd.services.namespaces.v1.Namespaces/Delete", google__protobuf__empty__descriptor)                       \
  X(containers_create, Containerd__Services__Containers__V1__CreateContainerRequest,                                   \
    Containerd__Services__Containers__V1__CreateContainerResponse,                                                     \
    "/containerd.services.containers.v1.Containers/Create",                                                            \
    containerd__services__containers__v1__create_container_response__descriptor)                                       \
  X(containers_get, Containerd__Services__Containers__V1__GetContainerRequest,                                         \
    Containerd__Services__Containers__V1__GetContainerResponse, "/containerd.services.containers.v1.Containers/Get",   \
    containerd__services__containers__v1__get_container_response__descriptor)                                          \
  X(containers_list, Containerd__Services__Containers__V1__ListContainersRequest,                                      \
    Containerd__Services__Containers__V1__ListContainersResponse,                                                      \
    "/containerd.services.containers.v1.Containers/List",                                                              \
    containerd__services__containers__v1__list_containers_response__descriptor)                                        \
  X(containers_delete, Containerd__Services__Containers__V1__DeleteContainerRequest, Google__Protobuf__Empty,          \
    "/containerd.services.containers.v1.Containers/Delete", google__protobuf__empty__descriptor)                       \
  X(tasks_create, Containerd__Services__Tasks__V1__CreateTaskRequest,                                                  \
    Containerd__Services__Tasks__V1__CreateTaskResponse, "/containerd.services.tasks.v1.Tasks/Create",                 \
    containerd__services__tasks__v1__create_task_response__descriptor)                                                 \
  X(tasks_start, Containerd__Services__Tasks__V1__StartRequest, Containerd__Services__Tasks__V1__StartResponse,        \
    "/containerd.services.tasks.v1.Tasks/Start", containerd__services__tasks__v1__start_response__descriptor)          \
  X(tasks_kill, Containerd__Services__Tasks__V1__KillRequest, Google__Protobuf__Empty,                                 \
    "/containerd.services.tasks.v1.Tasks/Kill", google__protobuf__empty__descriptor)                                   \
  X(tasks_wait, Containerd__Services__Tasks__V1__WaitRequest, Containerd__Services__Tasks__V1__WaitResponse,           \
    "/containerd.services.tasks.v1.Tasks/Wait", containerd__services__tasks__v1__wait_response__descriptor)            \
  X(tasks_delete, Containerd__Services__Tasks__V1__DeleteTaskRequest, Containerd__Services__Tasks__V1__DeleteResponse, \
    "/containerd.services.tasks.v1.Tasks/Delete", containerd__services__tasks__v1__delete_response__descriptor)        \
  X(tasks_delete_process, Containerd__Services__Tasks__V1__DeleteProcessRequest,                                       \
    Containerd__Services__Tasks__V1__DeleteResponse, "/containerd.services.tasks.v1.Tasks/DeleteProcess",              \
    containerd__services__tasks__v1__delete_response__descriptor)                                                      \
  X(tasks_exec, Containerd__Services__Tasks__V1__ExecProcessRequest, Google__Protobuf__Empty,                          \
    "/containerd.services.tasks.v1.Tasks/Exec", google__protobuf__empty__descriptor)                                   \
  X(tasks_get, Containerd__Services__Tasks__V1__GetRequest, Containerd__Services__Tasks__V1__GetResponse,              \
    "/containerd.services.tasks.v1.Tasks/Get", containerd__services__tasks__v1__get_response__descriptor)              \
  X(tasks_list, Containerd__Services__Tasks__V1__ListTasksRequest, Containerd__Services__Tasks__V1__ListTasksResponse, \
    "/containerd.services.tasks.v1.Tasks/List", containerd__services__tasks__v1__list_tasks_response__descriptor)      \
  X(snapshots_prepare, Containerd__Services__Snapshots__V1__PrepareSnapshotRequest,                                    \
    Containerd__Services__Snapshots__V1__PrepareSnapshotResponse,                                                      \
    "/containerd.services.snapshots.v1.Snapshots/Prepare",                                                             \
    containerd__services__snapshots__v1__prepare_snapshot_response__descriptor)                                        \
  X(snapshots_view, Containerd__Services__Snapshots__V1__ViewSnapshotRequest,                                          \
    Containerd__Services__Snapshots__V1__ViewSnapshotResponse, "/containerd.services.snapshots.v1.Snapshots/View",     \
    containerd__services__snapshots__v1__view_snapshot_response__descriptor)                                           \
  X(snapshots_mounts, Containerd__Services__Snapshots__V1__MountsRequest,                                              \
    Containerd__Services__Snapshots__V1__MountsResponse, "/containerd.services.snapshots.v1.Snapshots/Mounts",         \
    containerd__services__snapshots__v1__mounts_response__descriptor)                                                  \
  X(snapshots_commit, Containerd__Services__Snapshots__V1__CommitSnapshotRequest, Google__Protobuf__Empty,             \
    "/containerd.services.snapshots.v1.Snapshots/Commit", google__protobuf__empty__descriptor)                         \
  X(snapshots_remove, Containerd__Services__Snapshots__V1__RemoveSnapshotRequest, Google__Protobuf__Empty,             \
    "/containerd.services.snapshots.v1.Snapshots/Remove", google__protobuf__empty__descriptor)                         \
  X(snapshots_stat, Containerd__Services__Snapshots__V1__StatSnapshotRequest,                                          \
    Containerd__Services__Snapshots__V1__StatSnapshotResponse, "/containerd.services.snapshots.v1.Snapshots/Stat",     \
    containerd__services__snapshots__v1__stat_snapshot_response__descriptor)                                           \
  X(images_list, Containerd__Services__Images__V1__ListImagesRequest,                                                  \
    Containerd__Services__Images__V1__ListImagesResponse, "/containerd.services.images.v1.Images/List",                \
    containerd__services__images__v1__list_images_response__descriptor)                                                \
  X(images_create, Containerd__Services__Images__V1__CreateImageRequest,                                               \
    Containerd__Services__Images__V1__CreateImageResponse, "/containerd.services.images.v1.Images/Create",             \
    containerd__services__images__v1__create_image_response__descriptor)                                               \
  X(images_update, Containerd__Services__Images__V1__UpdateImageRequest,                                               \
    Containerd__Services__Images__V1__UpdateImageResponse, "/containerd.services.images.v1.Images/Update",             \
    containerd__services__images__v1__update_image_response__descriptor)                                               \
  X(images_delete, Containerd__Services__Images__V1__DeleteImageRequest, Google__Protobuf__Empty,                      \
    "/containerd.services.images.v1.Images/Delete", google__protobuf__empty__descriptor)                               \
  X(images_get, Containerd__Services__Images__V1__GetImageRequest, Containerd__Services__Images__V1__GetImageResponse, \
    "/containerd.services.images.v1.Images/Get", containerd__services__images__v1__get_image_response__descriptor)     \
  X(content_info, Containerd__Services__Content__V1__InfoRequest, Containerd__Services__Content__V1__InfoResponse,     \
    "/containerd.services.content.v1.Content/Info", containerd__services__content__v1__info_response__descriptor)      \
  X(diff_apply, Containerd__Services__Diff__V1__ApplyRequest, Containerd__Services__Diff__V1__ApplyResponse,           \
    "/containerd.services.diff.v1.Diff/Apply", containerd__services__diff__v1__apply_response__descriptor)             \
  X(leases_create, Containerd__Services__Leases__V1__CreateRequest, Containerd__Services__Leases__V1__CreateResponse,  \
    "/containerd.services.leases.v1.Leases/Create", containerd__services__leases__v1__create_response__descriptor)     \
  X(leases_delete, Containerd__Services__Leases__V1__DeleteRequest, Google__Protobuf__Empty,                           \
    "/containerd.services.leases.v1.Leases/Delete", google__protobuf__empty__descriptor)                               \
  X(leases_add_resource, Containerd__Services__Leases__V1__AddResourceRequest, Google__Protobuf__Empty,                \
    "/containerd.services.leases.v1.Leases/AddResource", google__protobuf__empty__descriptor)                          \
  X(introspection_plugins, Containerd__Services__Introspection__V1__PluginsRequest,                                    \
    Containerd__Services__Introspection__V1__PluginsResponse,                                                          \
    "/containerd.services.introspection.v1.Introspection/Plugins",                                                     \
    containerd__services__introspection__v1__plugins_response__descriptor)                                             \
  X(cri_list_images, Runtime__V1__ListImagesRequest, Runtime__V1__ListImagesResponse,                                  \
    "/runtime.v1.ImageService/ListImages", runtime__v1__list_images_response__descriptor)                              \
  X(cri_image_status, Runtime__V1__ImageStatusRequest, Runtime__V1__ImageStatusResponse,                               \
    "/runtime.v1.ImageService/ImageStatus", runtime__v1__image_status_response__descriptor)                            \
  X(cri_pull_image, Runtime__V1__PullImageRequest, Runtime__V1__PullImageResponse,                                     \
    "/runtime.v1.ImageService/PullImage", runtime__v1__pull_image_response__descriptor)                                \
  X(cri_remove_image, Runtime__V1__RemoveImageRequest, Runtime__V1__RemoveImageResponse,                               \
    "/runtime.v1.ImageService/RemoveImage", runtime__v1__remove_image_response__descriptor)

/* Server-streaming calls: dibba_containerd_<name>(ctd, opts, req, on_message, on_done, data, &call).
 * on_message(ctd, msg, data) runs per message (msg freed after it returns); on_done(ctd, err, st, data) runs
 * once at the end. *call (may be NULL) allows dibba_grpc_call_cancel until on_done returns. */
#define DIBBA_CONTAINERD_STREAM_CALLS(X)                                                                               \
  X(events_subscribe, Containerd__Services__Events__V1__SubscribeRequest, Containerd__Services__Events__V1__Envelope,  \
    "/containerd.services.events.v1.Events/Subscribe", containerd__services__events__v1__envelope__descriptor)         \
  X(snapshots_list, Containerd__Services__Snapshots__V1__ListSnapshotsRequest,                                         \
    Containerd__Services__Snapshots__V1__ListSnapshotsResponse, "/containerd.services.snapshots.v1.Snapshots/List",    \
    containerd__services__snapshots__v1__list_snapshots_response__descriptor)                                          \
  X(content_read, Containerd__Services__Content__V1__ReadContentRequest,                                               \
    Containerd__Services__Content__V1__ReadContentResponse, "/containerd.services.content.v1.Content/Read",            \
    containerd__services__content__v1__read_content_response__descriptor)

typedef void (*dibba_containerd_done_cb)(dibba_containerd_t *ctd, int err, const dibba_grpc_status_t *st, void *data);

#define DIBBA_CONTAINERD_DECLARE_UNARY(name, Req, Resp, path, desc)                                                    \
  typedef void (*dibba_containerd_##name##_cb)(dibba_containerd_t * ctd, int err, const dibba_grpc_status_t *st,       \
                                               Resp *resp, void *data);                                                \
  int dibba_containerd_##name(dibba_containerd_t *ctd, const dibba_containerd_call_opts_t *opts, const Req *req,       \
                              dibba_containerd_##name##_cb cb, void *data);
#define DIBBA_CONTAINERD_DECLARE_STREAM(name, Req, Resp, path, desc)                                                   \
  typedef void (*dibba_containerd_##name##_cb)(dibba_containerd_t * ctd, Resp * msg, void *data);                      \
  int dibba_containerd_##name(dibba_containerd_t *ctd, const dibba_containerd_call_opts_t *opts, const Req *req,       \
                              dibba_containerd_##name##_cb on_message, dibba_containerd_done_cb on_done, void *data,   \
                              dibba_grpc_call_t **call);
DIBBA_CONTAINERD_UNARY_CALLS(DIBBA_CONTAINERD_DECLARE_UNARY)
DIBBA_CONTAINERD_STREAM_CALLS(DIBBA_CONTAINERD_DECLARE_STREAM)

/* Content.Write (bidirectional): opens the stream; send WriteContentRequests with dibba_grpc_call_send and
 * finish with dibba_grpc_call_close_send. on_message gets each WriteContentResponse. */
typedef void (*dibba_containerd_content_write_cb)(dibba_containerd_t *ctd,
                                                  Containerd__Services__Content__V1__WriteContentResponse *msg,
                                                  void *data);
int dibba_containerd_content_write(dibba_containerd_t *ctd, const dibba_containerd_call_opts_t *opts,
                                   dibba_containerd_content_write_cb on_message, dibba_containerd_done_cb on_done,
                                   void *data, dibba_grpc_call_t **call);

/* Unpack the payload of an event envelope for the containerd.events types Dibba knows (NamespaceCreate/Delete,
 * ContainerCreate/Delete, ImageCreate/Delete, TaskStart/Exit/Delete/OOM). Returns NULL for other types or bad
 * bytes. Free with protobuf_c_message_free_unpacked(msg, NULL); check msg->descriptor for the type. */
ProtobufCMessage *dibba_containerd_event_decode(const Containerd__Services__Events__V1__Envelope *env);

#endif
