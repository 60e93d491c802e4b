/* SPDX-License-Identifier: Apache-2.0 */
/* libFuzzer target: the gRPC message deframer fed in fuzzer-chosen chunks, then protobuf-c unpacking of
 * containerd response types and event payloads for every complete message. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "dibba/alloc.h"
#include "dibba/containerd.h"
#include "dibba/grpc.h"

static const ProtobufCMessageDescriptor *const types[] = {
    &containerd__services__version__v1__version_response__descriptor,
    &containerd__services__containers__v1__list_containers_response__descriptor,
    &containerd__services__tasks__v1__list_tasks_response__descriptor,
    &containerd__services__events__v1__envelope__descriptor,
    &containerd__services__introspection__v1__plugins_response__descriptor,
    &runtime__v1__list_images_response__descriptor,
    &containerd__services__snapshots__v1__list_snapshots_response__descriptor,
    &containerd__services__content__v1__write_content_response__descriptor,
};

static int on_message(void *data, const uint8_t *msg, size_t len) {
  const ProtobufCMessageDescriptor *d = data;
  ProtobufCMessage *m = protobuf_c_message_unpack(d, NULL, len, msg);
  if (!m)
    return 0;
  if (d == &containerd__services__events__v1__envelope__descriptor) {
    ProtobufCMessage *ev = dibba_containerd_event_decode((Containerd__Services__Events__V1__Envelope *)m);
    if (ev)
      protobuf_c_message_free_unpacked(ev, NULL);
  }
  protobuf_c_message_free_unpacked(m, NULL);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Byte 0 picks the response type, byte 1 the chunk size; the rest is the HTTP/2 DATA payload of one stream. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2)
    return 0;
  const ProtobufCMessageDescriptor *d = types[data[0] % (sizeof types / sizeof types[0])];
  size_t chunk = (size_t)data[1] + 1;
  data += 2;
  size -= 2;
  dibba_grpc_deframer_t df;
  dibba_grpc_deframer_init(&df, 1 << 20);
  while (size > 0) {
    size_t n = size < chunk ? size : chunk;
    if (dibba_grpc_deframer_feed(&df, data, n, on_message, (void *)d) != 0)
      break;
    data += n;
    size -= n;
  }
  dibba_grpc_deframer_free(&df);
  dibba_grpc_status_t st = {0};
  dibba_grpc_status_from_headers(&st, "200", "5", "a%20b%zz%4");
  dibba_grpc_status_free(&st);
  return 0;
}
