/* SPDX-License-Identifier: Apache-2.0 */
/* The one generic protobuf <-> JSON converter: walks protobuf-c descriptors, follows the proto3 JSON mapping. */
#ifndef DIBBA_PBJSON_H
#define DIBBA_PBJSON_H

#include <stddef.h>

#include <jansson.h>
#include <protobuf-c/protobuf-c.h>

/* JSON names: lowerCamelCase of the proto field name ("restart_policy" -> "restartPolicy"), with one
 * initialism rule so the pod JSON reads like Kubernetes: a later segment "ip" becomes "IP" and "ips" becomes
 * "IPs" ("pod_ip" -> "podIP"). protobuf-c descriptors do not carry json_name, so the .proto files state the
 * same names in json_name options for other tools, and this rule must keep matching them.
 *
 * Mapping (proto3): int64/uint64 (all 64-bit kinds) are JSON strings on output, number or string on input;
 * enums by name (a known number is accepted on input); bytes as standard base64 (URL-safe and unpadded are
 * accepted on input); repeated as arrays; map<K,V> (repeated XxxEntry{key,value}) as objects; nested
 * messages as objects; float NaN/Infinity as the strings "NaN", "Infinity", "-Infinity". Zero values of
 * implicit-presence fields are omitted on output; oneof members and explicit-presence fields are written when
 * set, even when zero. On input, null means "not set". */

#define DIBBA_PBJSON_MAX_DEPTH_LIMIT 64u
#define DIBBA_PBJSON_DEFAULT_MAX_DEPTH 32u
#define DIBBA_PBJSON_DEFAULT_MAX_STRING (64u * 1024u)
#define DIBBA_PBJSON_DEFAULT_MAX_ARRAY 1024u
#define DIBBA_PBJSON_DEFAULT_MAX_TEXT (1024u * 1024u)

/* Input caps. A zero member takes the default; max_depth is clamped to DIBBA_PBJSON_MAX_DEPTH_LIMIT.
 * max_depth counts nested messages (the root is depth 1). max_string caps every string's bytes (for bytes
 * fields: the base64 text). max_array caps every repeated field and map. */
typedef struct dibba_pbjson_limits_s {
  unsigned max_depth;
  size_t max_string;
  size_t max_array;
  size_t max_text; /* dibba_pbjson_parse only: JSON text bytes */
} dibba_pbjson_limits_t;

/* Output flags. */
enum {
  DIBBA_PBJSON_EMIT_DEFAULTS = 1u << 0, /* also write zero-valued implicit-presence scalars and empty arrays */
  DIBBA_PBJSON_PROTO_NAMES = 1u << 1,   /* write the proto field names instead of the JSON names */
};

/* Where and why input was rejected, shaped for a FastAPI-style 422 {"loc", "msg", "type"}. */
typedef struct dibba_pbjson_error_s {
  char path[256];   /* "spec.containers[1].image"; "" for the root; user-supplied keys are cut at 64 bytes */
  char msg[256];    /* "expected a string" */
  const char *type; /* static: "json_invalid", "extra_forbidden", "type_error", "value_error", "too_long",
                       "too_deep", "out_of_range" */
  json_t *loc;      /* array of keys (strings) and indexes (integers), owned; NULL until an error */
} dibba_pbjson_error_t;

/* Render a message as a new JSON object (new reference, never NULL: allocation failure aborts). Strings that
 * are not valid UTF-8 (possible in unpacked protobuf) are written with U+FFFD in place of bad bytes. */
json_t *dibba_pbjson_from_message(const ProtobufCMessage *m, unsigned flags);

/* Same, as compact JSON text (malloc'd, caller frees). */
char *dibba_pbjson_dumps(const ProtobufCMessage *m, unsigned flags);

/* Build a message of type d from a JSON object, strictly: unknown fields, duplicate fields (JSON name and
 * proto name both given), two members of one oneof, wrong JSON types, out-of-range integers, unknown enum
 * names/numbers, bad base64, strings with NUL, and anything past the caps are rejected.
 * lim may be NULL (defaults). err may be NULL; when given it must be zero-initialised or cleared, and it is
 * filled on failure (clear it with dibba_pbjson_error_clear).
 * On success *out is a new message allocated with malloc (protobuf-c's default allocator): free it with
 * dibba_pbjson_message_free or protobuf_c_message_free_unpacked(m, NULL). On failure *out is NULL.
 * Returns 0, -EINVAL (type/unknown/malformed), -ERANGE (number out of range), or -E2BIG (a cap). */
int dibba_pbjson_to_message(const json_t *j, const ProtobufCMessageDescriptor *d, const dibba_pbjson_limits_t *lim,
                            ProtobufCMessage **out, dibba_pbjson_error_t *err);

/* Parse JSON text (at most lim->max_text bytes, duplicate keys rejected) and convert it as above.
 * Extra errors: -E2BIG for oversized text, -EINVAL with type "json_invalid" for bad JSON. */
int dibba_pbjson_parse(const char *text, size_t len, const ProtobufCMessageDescriptor *d,
                       const dibba_pbjson_limits_t *lim, ProtobufCMessage **out, dibba_pbjson_error_t *err);

/* Free a message from dibba_pbjson_to_message/parse (NULL is fine). */
void dibba_pbjson_message_free(ProtobufCMessage *m);

/* Release err->loc and reset err; safe to call twice. */
void dibba_pbjson_error_clear(dibba_pbjson_error_t *err);

/* Write the JSON name of a proto field name into out (always terminated). */
void dibba_pbjson_json_name(const char *field, char *out, size_t len);

/* Base64 (RFC 4648): encode n bytes into a new malloc'd NUL-terminated string; decode standard or URL-safe,
 * padded or not, into a new malloc'd buffer. Decode returns 0 or -EINVAL. */
char *dibba_base64_encode(const void *data, size_t n);
int dibba_base64_decode(const char *s, size_t len, unsigned char **out, size_t *outlen);

#endif
