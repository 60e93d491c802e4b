/* SPDX-License-Identifier: Apache-2.0 */
/* The generic protobuf <-> JSON converter (proto3 JSON mapping) driven by protobuf-c descriptors. */
#include <errno.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dibba/alloc.h"
#include "dibba/buf.h"
#include "dibba/pbjson.h"

#define PATH_KEY_MAX 64
#define MAX_SEGS (2 * DIBBA_PBJSON_MAX_DEPTH_LIMIT + 4)

/* ---- names ---- */

void dibba_pbjson_json_name(const char *field, char *out, size_t len) {
  size_t o = 0;
  const char *p = field;
  int first = 1;
  if (len == 0)
    return;
  while (*p) {
    const char *end = strchr(p, '_');
    size_t n = end ? (size_t)(end - p) : strlen(p);
    const char *seg = p;
    if (!first && n == 2 && memcmp(seg, "ip", 2) == 0)
      seg = "IP";
    else if (!first && n == 3 && memcmp(seg, "ips", 3) == 0)
      seg = "IPs";
    for (size_t i = 0; i < n && o + 1 < len; i++) {
      char c = seg[i];
      if (i == 0 && !first && c >= 'a' && c <= 'z')
        c = (char)(c - 'a' + 'A');
      out[o++] = c;
    }
    if (n > 0)
      first = 0;
    p += n;
    if (*p == '_')
      p++;
  }
  out[o] = '\0';
}

/* Map fields are repeated messages named <CamelField>Entry nested in the parent, with key = 1 and value = 2:
 * exactly what protoc generates for map<K,V> (protobuf-c keeps no map_entry flag). */
static int is_map(const ProtobufCMessageDescriptor *parent, const ProtobufCFieldDescriptor *fd) {
  if (fd->label != PROTOBUF_C_LABEL_REPEATED || fd->type != PROTOBUF_C_TYPE_MESSAGE)
    return 0;
  const ProtobufCMessageDescriptor *e = fd->descriptor;
  if (e->n_fields != 2 || strcmp(e->fields[0].name, "key") != 0 || e->fields[0].id != 1 ||
      strcmp(e->fields[1].name, "value") != 0 || e->fields[1].id != 2)
    return 0;
  size_t pl = strlen(parent->name);
  if (strncmp(e->name, parent->name, pl) != 0 || e->name[pl] != '.')
    return 0;
  /* CamelCase of the field name + "Entry" */
  char want[160];
  size_t o = 0;
  int up = 1;
  for (const char *p = fd->name; *p && o + 7 < sizeof want; p++) {
    if (*p == '_') {
      up = 1;
      continue;
    }
    want[o++] = (char)(up && *p >= 'a' && *p <= 'z' ? *p - 'a' + 'A' : *p);
    up = 0;
  }
  memcpy(want + o, "Entry", 6);
  return strcmp(e->name + pl + 1, want) == 0;
}

/* ---- UTF-8 and base64 ---- */

static size_t utf8_seq_len(const unsigned char *s, size_t n) {
  unsigned char c = s[0];
  size_t len;
  uint32_t cp;
  if (c < 0x80)
    return 1;
  if (c >= 0xc2 && c <= 0xdf) {
    len = 2;
    cp = c & 0x1f;
  } else if (c >= 0xe0 && c <= 0xef) {
    len = 3;
    cp = c & 0x0f;
  } else if (c >= 0xf0 && c <= 0xf4) {
    len = 4;
    cp = c & 0x07;
  } else {
    return 0;
  }
  if (n < len)
    return 0;
  for (size_t i = 1; i < len; i++) {
    if ((s[i] & 0xc0) != 0x80)
      return 0;
    cp = (cp << 6) | (s[i] & 0x3f);
  }
  if ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)))
    return 0;
  return len;
}

static json_t *json_string_lossy(const char *s) {
  size_t n = strlen(s);
  json_t *j = json_stringn(s, n);
  if (j)
    return j;
  dibba_buf_t b;
  dibba_buf_init(&b, 0);
  for (size_t i = 0; i < n;) {
    size_t l = utf8_seq_len((const unsigned char *)s + i, n - i);
    if (l == 0) {
      dibba_buf_add(&b, "\xef\xbf\xbd", 3);
      i++;
    } else {
      dibba_buf_add(&b, s + i, l);
      i += l;
    }
  }
  j = json_stringn(b.data ? b.data : "", b.len);
  dibba_buf_free(&b);
  if (j == NULL)
    dibba_oom(n);
  return j;
}

static const char b64std[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *dibba_base64_encode(const void *data, size_t n) {
  const unsigned char *p = data;
  if (n > (SIZE_MAX - 1) / 4 * 3 - 3)
    dibba_oom(SIZE_MAX);
  char *out = dibba_xmalloc((n + 2) / 3 * 4 + 1);
  size_t o = 0;
  for (size_t i = 0; i < n; i += 3) {
    uint32_t v = (uint32_t)p[i] << 16;
    if (i + 1 < n)
      v |= (uint32_t)p[i + 1] << 8;
    if (i + 2 < n)
      v |= p[i + 2];
    out[o++] = b64std[(v >> 18) & 63];
    out[o++] = b64std[(v >> 12) & 63];
    out[o++] = i + 1 < n ? b64std[(v >> 6) & 63] : '=';
    out[o++] = i + 2 < n ? b64std[v & 63] : '=';
  }
  out[o] = '\0';
  return out;
}

static int b64val(char c) {
  if (c >= 'A' && c <= 'Z')
    return c - 'A';
  if (c >= 'a' && c <= 'z')
    return c - 'a' + 26;
  if (c >= '0' && c <= '9')
    return c - '0' + 52;
  if (c == '+' || c == '-')
    return 62;
  if (c == '/' || c == '_')
    return 63;
  return -1;
}

int dibba_base64_decode(const char *s, size_t len, unsigned char **out, size_t *outlen) {
  *out = NULL;
  *outlen = 0;
  if (len % 4 == 0 && len >= 2 && s[len - 1] == '=')
    len -= s[len - 2] == '=' ? 2 : 1;
  if (len % 4 == 1)
    return -EINVAL;
  unsigned char *buf = dibba_xmalloc(len / 4 * 3 + 3);
  size_t o = 0;
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < len; i++) {
    int v = b64val(s[i]);
    if (v < 0) {
      free(buf);
      return -EINVAL;
    }
    acc = (acc << 6) | (uint32_t)v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      buf[o++] = (unsigned char)(acc >> bits);
      acc &= (1u << bits) - 1;
    }
  }
  if (acc != 0) { /* non-canonical trailing bits */
    free(buf);
    return -EINVAL;
  }
  *out = buf;
  *outlen = o;
  return 0;
}

/* ---- message -> JSON ---- */

static json_t *emit_message(const ProtobufCMessage *m, unsigned flags);

static size_t type_size(ProtobufCType t) {
  switch (t) {
  case PROTOBUF_C_TYPE_INT32:
  case PROTOBUF_C_TYPE_SINT32:
  case PROTOBUF_C_TYPE_SFIXED32:
  case PROTOBUF_C_TYPE_UINT32:
  case PROTOBUF_C_TYPE_FIXED32: return 4;
  case PROTOBUF_C_TYPE_INT64:
  case PROTOBUF_C_TYPE_SINT64:
  case PROTOBUF_C_TYPE_SFIXED64:
  case PROTOBUF_C_TYPE_UINT64:
  case PROTOBUF_C_TYPE_FIXED64: return 8;
  case PROTOBUF_C_TYPE_FLOAT: return sizeof(float);
  case PROTOBUF_C_TYPE_DOUBLE: return sizeof(double);
  case PROTOBUF_C_TYPE_BOOL: return sizeof(protobuf_c_boolean);
  case PROTOBUF_C_TYPE_ENUM: return sizeof(int);
  case PROTOBUF_C_TYPE_STRING: return sizeof(char *);
  case PROTOBUF_C_TYPE_BYTES: return sizeof(ProtobufCBinaryData);
  case PROTOBUF_C_TYPE_MESSAGE: return sizeof(ProtobufCMessage *);
  }
  return 0;
}

static json_t *float_json(double d) {
  if (isnan(d))
    return json_string("NaN");
  if (isinf(d))
    return json_string(d > 0 ? "Infinity" : "-Infinity");
  return json_real(d);
}

static json_t *emit_value(const ProtobufCFieldDescriptor *fd, const void *p, unsigned flags) {
  char tmp[32];
  switch (fd->type) {
  case PROTOBUF_C_TYPE_INT32:
  case PROTOBUF_C_TYPE_SINT32:
  case PROTOBUF_C_TYPE_SFIXED32: return json_integer(*(const int32_t *)p);
  case PROTOBUF_C_TYPE_UINT32:
  case PROTOBUF_C_TYPE_FIXED32: return json_integer(*(const uint32_t *)p);
  case PROTOBUF_C_TYPE_INT64:
  case PROTOBUF_C_TYPE_SINT64:
  case PROTOBUF_C_TYPE_SFIXED64: snprintf(tmp, sizeof tmp, "%" PRId64, *(const int64_t *)p); return json_string(tmp);
  case PROTOBUF_C_TYPE_UINT64:
  case PROTOBUF_C_TYPE_FIXED64: snprintf(tmp, sizeof tmp, "%" PRIu64, *(const uint64_t *)p); return json_string(tmp);
  case PROTOBUF_C_TYPE_FLOAT: return float_json(*(const float *)p);
  case PROTOBUF_C_TYPE_DOUBLE: return float_json(*(const double *)p);
  case PROTOBUF_C_TYPE_BOOL: return json_boolean(*(const protobuf_c_boolean *)p);
  case PROTOBUF_C_TYPE_ENUM: {
    int v = *(const int *)p;
    const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(fd->descriptor, v);
    return ev ? json_string(ev->name) : json_integer(v);
  }
  case PROTOBUF_C_TYPE_STRING: {
    const char *s = *(char *const *)p;
    return json_string_lossy(s ? s : "");
  }
  case PROTOBUF_C_TYPE_BYTES: {
    const ProtobufCBinaryData *b = p;
    char *s = dibba_base64_encode(b->data, b->data ? b->len : 0);
    json_t *j = json_string(s);
    free(s);
    return j;
  }
  case PROTOBUF_C_TYPE_MESSAGE: {
    const ProtobufCMessage *sub = *(ProtobufCMessage *const *)p;
    return sub ? emit_message(sub, flags) : json_object();
  }
  }
  return json_null();
}

static int is_zero(const ProtobufCFieldDescriptor *fd, const void *p) {
  switch (fd->type) {
  case PROTOBUF_C_TYPE_STRING: {
    const char *s = *(char *const *)p;
    return s == NULL || s[0] == '\0';
  }
  case PROTOBUF_C_TYPE_BYTES: return ((const ProtobufCBinaryData *)p)->len == 0;
  case PROTOBUF_C_TYPE_MESSAGE: return *(ProtobufCMessage *const *)p == NULL;
  case PROTOBUF_C_TYPE_FLOAT: return *(const float *)p == 0 && !signbit(*(const float *)p);
  case PROTOBUF_C_TYPE_DOUBLE: return *(const double *)p == 0 && !signbit(*(const double *)p);
  case PROTOBUF_C_TYPE_BOOL: return *(const protobuf_c_boolean *)p == 0;
  case PROTOBUF_C_TYPE_ENUM: return *(const int *)p == 0;
  default: break;
  }
  size_t n = type_size(fd->type);
  return n == 4 ? *(const uint32_t *)p == 0 : *(const uint64_t *)p == 0;
}

static const char *out_name(const ProtobufCFieldDescriptor *fd, unsigned flags, char *buf, size_t len) {
  if (flags & DIBBA_PBJSON_PROTO_NAMES)
    return fd->name;
  dibba_pbjson_json_name(fd->name, buf, len);
  return buf;
}

static json_t *emit_map(const ProtobufCFieldDescriptor *fd, const void *arr, size_t n, unsigned flags) {
  json_t *obj = json_object();
  const ProtobufCMessageDescriptor *ed = fd->descriptor;
  const ProtobufCFieldDescriptor *kf = &ed->fields[0], *vf = &ed->fields[1];
  for (size_t i = 0; i < n; i++) {
    const char *e = ((const char *const *)arr)[i];
    if (e == NULL)
      continue;
    json_t *k = emit_value(kf, e + kf->offset, flags);
    char kb[32];
    const char *key;
    if (json_is_string(k))
      key = json_string_value(k);
    else if (json_is_boolean(k))
      key = json_is_true(k) ? "true" : "false";
    else {
      snprintf(kb, sizeof kb, "%" JSON_INTEGER_FORMAT, json_integer_value(k));
      key = kb;
    }
    json_object_set_new(obj, key, emit_value(vf, e + vf->offset, flags));
    json_decref(k);
  }
  return obj;
}

static json_t *emit_message(const ProtobufCMessage *m, unsigned flags) {
  const ProtobufCMessageDescriptor *d = m->descriptor;
  json_t *obj = json_object();
  if (obj == NULL)
    dibba_oom(0);
  for (unsigned i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *fd = &d->fields[i];
    const char *base = (const char *)m;
    const void *p = base + fd->offset;
    char nb[128];
    json_t *v = NULL;
    if (fd->label == PROTOBUF_C_LABEL_REPEATED) {
      size_t n = *(const size_t *)(base + fd->quantifier_offset);
      const char *arr = *(char *const *)p;
      if (n == 0 && !(flags & DIBBA_PBJSON_EMIT_DEFAULTS))
        continue;
      if (is_map(d, fd)) {
        v = emit_map(fd, arr, n, flags);
      } else {
        v = json_array();
        size_t sz = type_size(fd->type);
        for (size_t k = 0; k < n; k++)
          json_array_append_new(v, emit_value(fd, arr + k * sz, flags));
      }
    } else if (fd->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
      if (*(const uint32_t *)(base + fd->quantifier_offset) != fd->id)
        continue;
      v = emit_value(fd, p, flags);
    } else if (fd->label == PROTOBUF_C_LABEL_OPTIONAL) {
      int present;
      if (fd->type == PROTOBUF_C_TYPE_MESSAGE || fd->type == PROTOBUF_C_TYPE_STRING)
        present = *(void *const *)p != NULL;
      else
        present = *(const protobuf_c_boolean *)(base + fd->quantifier_offset);
      if (!present)
        continue;
      v = emit_value(fd, p, flags);
    } else {
      if (fd->type == PROTOBUF_C_TYPE_MESSAGE && *(void *const *)p == NULL)
        continue;
      if (fd->label == PROTOBUF_C_LABEL_NONE && !(flags & DIBBA_PBJSON_EMIT_DEFAULTS) && is_zero(fd, p))
        continue;
      v = emit_value(fd, p, flags);
    }
    if (v == NULL)
      dibba_oom(0);
    json_object_set_new(obj, out_name(fd, flags, nb, sizeof nb), v);
  }
  return obj;
}

json_t *dibba_pbjson_from_message(const ProtobufCMessage *m, unsigned flags) { return emit_message(m, flags); }

char *dibba_pbjson_dumps(const ProtobufCMessage *m, unsigned flags) {
  json_t *j = emit_message(m, flags);
  char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
  json_decref(j);
  if (s == NULL)
    dibba_oom(0);
  return s;
}

/* ---- JSON -> message ---- */

typedef struct seg_s {
  const char *key; /* NULL: index */
  size_t idx;
} seg_t;

typedef struct ctx_s {
  dibba_pbjson_limits_t lim;
  dibba_pbjson_error_t *err;
  seg_t segs[MAX_SEGS];
  unsigned nsegs;
} ctx_t;

static void push_key(ctx_t *c, const char *k) {
  if (c->nsegs < MAX_SEGS)
    c->segs[c->nsegs] = (seg_t){k, 0};
  c->nsegs++;
}

static void push_idx(ctx_t *c, size_t i) {
  if (c->nsegs < MAX_SEGS)
    c->segs[c->nsegs] = (seg_t){NULL, i};
  c->nsegs++;
}

static void pop(ctx_t *c) { c->nsegs--; }

/* Cut a user-supplied key at PATH_KEY_MAX bytes without splitting a UTF-8 sequence. */
static size_t key_cut(const char *k) {
  size_t n = strlen(k);
  if (n <= PATH_KEY_MAX)
    return n;
  n = PATH_KEY_MAX;
  while (n > 0 && ((unsigned char)k[n] & 0xc0) == 0x80)
    n--;
  return n;
}

__attribute__((format(printf, 4, 5))) static int fail(ctx_t *c, int code, const char *type, const char *fmt, ...) {
  dibba_pbjson_error_t *e = c->err;
  if (e == NULL)
    return code;
  json_decref(e->loc);
  e->loc = json_array();
  e->type = type;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(e->msg, sizeof e->msg, fmt, ap);
  va_end(ap);
  dibba_buf_t b;
  dibba_buf_init(&b, sizeof e->path - 1);
  unsigned n = c->nsegs < MAX_SEGS ? c->nsegs : MAX_SEGS;
  for (unsigned i = 0; i < n; i++) {
    const seg_t *s = &c->segs[i];
    if (s->key) {
      size_t kl = key_cut(s->key);
      if (i > 0)
        (void)dibba_buf_adds(&b, ".");
      (void)dibba_buf_add(&b, s->key, kl);
      json_t *k = json_stringn(s->key, kl);
      json_array_append_new(e->loc, k ? k : json_string("?"));
    } else {
      (void)dibba_buf_printf(&b, "[%zu]", s->idx);
      json_array_append_new(e->loc, json_integer((json_int_t)s->idx));
    }
  }
  snprintf(e->path, sizeof e->path, "%s", b.data ? b.data : "");
  dibba_buf_free(&b);
  return code;
}

static const char *jtype(const json_t *v) {
  switch (json_typeof(v)) {
  case JSON_OBJECT: return "an object";
  case JSON_ARRAY: return "an array";
  case JSON_STRING: return "a string";
  case JSON_INTEGER: return "an integer";
  case JSON_REAL: return "a number";
  case JSON_TRUE:
  case JSON_FALSE: return "a boolean";
  case JSON_NULL: return "null";
  }
  return "?";
}

/* Signed integer in [min, max] from a JSON integer, an integral number, or a decimal string. */
static int get_i64(ctx_t *c, const json_t *v, int64_t min, int64_t max, int64_t *out) {
  int64_t x;
  if (json_is_integer(v)) {
    x = json_integer_value(v);
  } else if (json_is_real(v)) {
    double d = json_real_value(v);
    if (!isfinite(d) || floor(d) != d)
      return fail(c, -EINVAL, "type_error", "expected an integer");
    if (d < -9223372036854775808.0 || d >= 9223372036854775808.0)
      return fail(c, -ERANGE, "out_of_range", "integer out of range [%" PRId64 ", %" PRId64 "]", min, max);
    x = (int64_t)d;
  } else if (json_is_string(v)) {
    const char *s = json_string_value(v);
    size_t n = json_string_length(v);
    size_t i = s[0] == '-' ? 1 : 0;
    if (n == i || n > 24)
      return fail(c, -EINVAL, "type_error", "expected an integer string");
    for (size_t k = i; k < n; k++)
      if (s[k] < '0' || s[k] > '9')
        return fail(c, -EINVAL, "type_error", "expected an integer string");
    errno = 0;
    long long ll = strtoll(s, NULL, 10);
    if (errno == ERANGE)
      return fail(c, -ERANGE, "out_of_range", "integer out of range [%" PRId64 ", %" PRId64 "]", min, max);
    x = ll;
  } else {
    return fail(c, -EINVAL, "type_error", "expected an integer, got %s", jtype(v));
  }
  if (x < min || x > max)
    return fail(c, -ERANGE, "out_of_range", "integer out of range [%" PRId64 ", %" PRId64 "]", min, max);
  *out = x;
  return 0;
}

static int get_u64(ctx_t *c, const json_t *v, uint64_t max, uint64_t *out) {
  uint64_t x;
  if (json_is_integer(v)) {
    if (json_integer_value(v) < 0)
      return fail(c, -ERANGE, "out_of_range", "integer out of range [0, %" PRIu64 "]", max);
    x = (uint64_t)json_integer_value(v);
  } else if (json_is_real(v)) {
    double d = json_real_value(v);
    if (!isfinite(d) || floor(d) != d)
      return fail(c, -EINVAL, "type_error", "expected an integer");
    if (d < 0 || d >= 18446744073709551616.0)
      return fail(c, -ERANGE, "out_of_range", "integer out of range [0, %" PRIu64 "]", max);
    x = (uint64_t)d;
  } else if (json_is_string(v)) {
    const char *s = json_string_value(v);
    size_t n = json_string_length(v);
    if (n == 0 || n > 24)
      return fail(c, -EINVAL, "type_error", "expected an integer string");
    if (s[0] == '-' && n > 1)
      return fail(c, -ERANGE, "out_of_range", "integer out of range [0, %" PRIu64 "]", max);
    for (size_t k = 0; k < n; k++)
      if (s[k] < '0' || s[k] > '9')
        return fail(c, -EINVAL, "type_error", "expected an integer string");
    errno = 0;
    unsigned long long ull = strtoull(s, NULL, 10);
    if (errno == ERANGE)
      return fail(c, -ERANGE, "out_of_range", "integer out of range [0, %" PRIu64 "]", max);
    x = ull;
  } else {
    return fail(c, -EINVAL, "type_error", "expected an integer, got %s", jtype(v));
  }
  if (x > max)
    return fail(c, -ERANGE, "out_of_range", "integer out of range [0, %" PRIu64 "]", max);
  *out = x;
  return 0;
}

static int get_double(ctx_t *c, const json_t *v, int is_float, double *out) {
  double d;
  if (json_is_number(v)) {
    d = json_number_value(v);
  } else if (json_is_string(v)) {
    const char *s = json_string_value(v);
    if (strcmp(s, "NaN") == 0)
      d = NAN;
    else if (strcmp(s, "Infinity") == 0)
      d = INFINITY;
    else if (strcmp(s, "-Infinity") == 0)
      d = -INFINITY;
    else {
      char *end = NULL;
      size_t n = json_string_length(v);
      if (n == 0 || n > 64 || !((s[0] >= '0' && s[0] <= '9') || s[0] == '-' || s[0] == '.'))
        return fail(c, -EINVAL, "type_error", "expected a number");
      errno = 0;
      d = strtod(s, &end);
      if (end != s + n || errno == ERANGE || !isfinite(d))
        return fail(c, -EINVAL, "type_error", "expected a number");
    }
  } else {
    return fail(c, -EINVAL, "type_error", "expected a number, got %s", jtype(v));
  }
  if (is_float && isfinite(d) && (d > FLT_MAX || d < -FLT_MAX))
    return fail(c, -ERANGE, "out_of_range", "number out of float range");
  *out = d;
  return 0;
}

static int get_string(ctx_t *c, const json_t *v, const char **s, size_t *n) {
  if (!json_is_string(v))
    return fail(c, -EINVAL, "type_error", "expected a string, got %s", jtype(v));
  *s = json_string_value(v);
  *n = json_string_length(v);
  if (*n > c->lim.max_string)
    return fail(c, -E2BIG, "too_long", "string longer than %zu bytes", c->lim.max_string);
  if (memchr(*s, '\0', *n) != NULL)
    return fail(c, -EINVAL, "value_error", "string contains a NUL character");
  return 0;
}

static int parse_message(ctx_t *c, const json_t *j, const ProtobufCMessageDescriptor *d, unsigned depth,
                         ProtobufCMessage **out);

/* Parse one value of fd's type into dst (a field slot or an array element). Allocations are stored into dst
 * only on success, so the owning message stays freeable at every step. */
static int parse_value(ctx_t *c, const ProtobufCFieldDescriptor *fd, const json_t *v, void *dst, unsigned depth) {
  int r = 0;
  int64_t i;
  uint64_t u;
  double d;
  switch (fd->type) {
  case PROTOBUF_C_TYPE_INT32:
  case PROTOBUF_C_TYPE_SINT32:
  case PROTOBUF_C_TYPE_SFIXED32:
    if ((r = get_i64(c, v, INT32_MIN, INT32_MAX, &i)) == 0)
      *(int32_t *)dst = (int32_t)i;
    break;
  case PROTOBUF_C_TYPE_UINT32:
  case PROTOBUF_C_TYPE_FIXED32:
    if ((r = get_u64(c, v, UINT32_MAX, &u)) == 0)
      *(uint32_t *)dst = (uint32_t)u;
    break;
  case PROTOBUF_C_TYPE_INT64:
  case PROTOBUF_C_TYPE_SINT64:
  case PROTOBUF_C_TYPE_SFIXED64:
    if ((r = get_i64(c, v, INT64_MIN, INT64_MAX, &i)) == 0)
      *(int64_t *)dst = i;
    break;
  case PROTOBUF_C_TYPE_UINT64:
  case PROTOBUF_C_TYPE_FIXED64:
    if ((r = get_u64(c, v, UINT64_MAX, &u)) == 0)
      *(uint64_t *)dst = u;
    break;
  case PROTOBUF_C_TYPE_FLOAT:
    if ((r = get_double(c, v, 1, &d)) == 0)
      *(float *)dst = (float)d;
    break;
  case PROTOBUF_C_TYPE_DOUBLE:
    if ((r = get_double(c, v, 0, &d)) == 0)
      *(double *)dst = d;
    break;
  case PROTOBUF_C_TYPE_BOOL:
    if (!json_is_boolean(v))
      return fail(c, -EINVAL, "type_error", "expected a boolean, got %s", jtype(v));
    *(protobuf_c_boolean *)dst = json_is_true(v);
    break;
  case PROTOBUF_C_TYPE_ENUM: {
    const ProtobufCEnumDescriptor *ed = fd->descriptor;
    const ProtobufCEnumValue *ev = NULL;
    if (json_is_string(v))
      ev = protobuf_c_enum_descriptor_get_value_by_name(ed, json_string_value(v));
    else if (json_is_integer(v) && json_integer_value(v) >= INT32_MIN && json_integer_value(v) <= INT32_MAX)
      ev = protobuf_c_enum_descriptor_get_value(ed, (int)json_integer_value(v));
    else
      return fail(c, -EINVAL, "type_error", "expected an enum name (string), got %s", jtype(v));
    if (ev == NULL) {
      dibba_buf_t names;
      dibba_buf_init(&names, 160);
      for (unsigned k = 0; k < ed->n_values; k++)
        if (dibba_buf_printf(&names, "%s%s", k ? ", " : "", ed->values[k].name) < 0)
          break;
      r = fail(c, -EINVAL, "value_error", "not a valid %s; expected one of: %s", ed->short_name,
               names.data ? names.data : "");
      dibba_buf_free(&names);
      return r;
    }
    *(int *)dst = ev->value;
    break;
  }
  case PROTOBUF_C_TYPE_STRING: {
    const char *s = NULL;
    size_t n = 0;
    if ((r = get_string(c, v, &s, &n)) == 0)
      *(char **)dst = dibba_xstrndup(s, n);
    break;
  }
  case PROTOBUF_C_TYPE_BYTES: {
    const char *s;
    size_t n;
    unsigned char *data;
    size_t dl;
    if (!json_is_string(v))
      return fail(c, -EINVAL, "type_error", "expected a base64 string, got %s", jtype(v));
    s = json_string_value(v);
    n = json_string_length(v);
    if (n > c->lim.max_string)
      return fail(c, -E2BIG, "too_long", "string longer than %zu bytes", c->lim.max_string);
    if (dibba_base64_decode(s, n, &data, &dl) < 0)
      return fail(c, -EINVAL, "value_error", "invalid base64");
    ((ProtobufCBinaryData *)dst)->data = data;
    ((ProtobufCBinaryData *)dst)->len = dl;
    break;
  }
  case PROTOBUF_C_TYPE_MESSAGE: {
    ProtobufCMessage *sub = NULL;
    if ((r = parse_message(c, v, fd->descriptor, depth + 1, &sub)) == 0)
      *(ProtobufCMessage **)dst = sub;
    break;
  }
  }
  return r;
}

static int parse_map(ctx_t *c, const ProtobufCFieldDescriptor *fd, const json_t *v, char *base, unsigned depth) {
  if (!json_is_object(v))
    return fail(c, -EINVAL, "type_error", "expected an object, got %s", jtype(v));
  if (json_object_size(v) > c->lim.max_array)
    return fail(c, -E2BIG, "too_long", "more than %zu entries", c->lim.max_array);
  const ProtobufCMessageDescriptor *ed = fd->descriptor;
  const ProtobufCFieldDescriptor *kf = &ed->fields[0], *vf = &ed->fields[1];
  size_t *n = (size_t *)(base + fd->quantifier_offset);
  ProtobufCMessage ***arrp = (ProtobufCMessage ***)(base + fd->offset);
  *arrp = dibba_xcalloc(json_object_size(v), sizeof(ProtobufCMessage *));
  const char *key;
  json_t *val;
  int r = 0;
  json_object_foreach((json_t *)v, key, val) {
    push_key(c, key);
    ProtobufCMessage *e = dibba_xmalloc(ed->sizeof_message);
    ed->message_init(e);
    (*arrp)[(*n)++] = e; /* e is always consistent, so the parent can free it */
    json_t *kj;
    if (kf->type == PROTOBUF_C_TYPE_STRING)
      kj = json_string(key);
    else if (kf->type == PROTOBUF_C_TYPE_BOOL)
      kj = strcmp(key, "true") == 0 ? json_true() : strcmp(key, "false") == 0 ? json_false() : json_null();
    else
      kj = json_string(key); /* integer kinds parse decimal strings */
    r = parse_value(c, kf, kj, (char *)e + kf->offset, depth);
    json_decref(kj);
    if (r == 0) {
      if (json_is_null(val))
        r = fail(c, -EINVAL, "type_error", "map values cannot be null");
      else
        r = parse_value(c, vf, val, (char *)e + vf->offset, depth);
    }
    if (r < 0)
      return r;
    pop(c);
  }
  return 0;
}

static int parse_repeated(ctx_t *c, const ProtobufCFieldDescriptor *fd, const json_t *v, char *base, unsigned depth) {
  if (!json_is_array(v))
    return fail(c, -EINVAL, "type_error", "expected an array, got %s", jtype(v));
  size_t len = json_array_size(v);
  if (len > c->lim.max_array)
    return fail(c, -E2BIG, "too_long", "more than %zu items", c->lim.max_array);
  size_t sz = type_size(fd->type);
  size_t *n = (size_t *)(base + fd->quantifier_offset);
  char **arrp = (char **)(base + fd->offset);
  *arrp = dibba_xcalloc(len ? len : 1, sz);
  for (size_t i = 0; i < len; i++) {
    push_idx(c, i);
    const json_t *e = json_array_get(v, i);
    if (json_is_null(e))
      return fail(c, -EINVAL, "type_error", "array items cannot be null");
    int r = parse_value(c, fd, e, *arrp + i * sz, depth);
    if (r < 0)
      return r;
    (*n)++;
    pop(c);
  }
  return 0;
}

static const ProtobufCFieldDescriptor *find_field(const ProtobufCMessageDescriptor *d, const char *key) {
  char nb[128];
  for (unsigned i = 0; i < d->n_fields; i++) {
    if (strcmp(d->fields[i].name, key) == 0)
      return &d->fields[i];
    dibba_pbjson_json_name(d->fields[i].name, nb, sizeof nb);
    if (strcmp(nb, key) == 0)
      return &d->fields[i];
  }
  return NULL;
}

static int parse_message(ctx_t *c, const json_t *j, const ProtobufCMessageDescriptor *d, unsigned depth,
                         ProtobufCMessage **out) {
  int r = 0;
  unsigned char *seen = NULL;
  ProtobufCMessage *m = NULL;
  const char *key;
  json_t *val;

  *out = NULL;
  if (depth > c->lim.max_depth)
    return fail(c, -E2BIG, "too_deep", "nested deeper than %u objects", c->lim.max_depth);
  if (!json_is_object(j))
    return fail(c, -EINVAL, "type_error", "expected an object, got %s", jtype(j));
  m = dibba_xmalloc(d->sizeof_message);
  d->message_init(m);
  seen = dibba_xcalloc(d->n_fields ? d->n_fields : 1, 1);
  char *base = (char *)m;
  json_object_foreach((json_t *)j, key, val) {
    push_key(c, key);
    const ProtobufCFieldDescriptor *fd = find_field(d, key);
    if (fd == NULL) {
      r = fail(c, -EINVAL, "extra_forbidden", "unknown field");
      goto out;
    }
    size_t fi = (size_t)(fd - d->fields);
    if (seen[fi]) {
      r = fail(c, -EINVAL, "value_error", "field given twice (by its JSON name and its proto name)");
      goto out;
    }
    seen[fi] = 1;
    if (json_is_null(val)) {
      pop(c);
      continue;
    }
    if (fd->label == PROTOBUF_C_LABEL_REPEATED) {
      r = is_map(d, fd) ? parse_map(c, fd, val, base, depth) : parse_repeated(c, fd, val, base, depth);
      if (r < 0)
        goto out;
    } else {
      if (fd->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
        uint32_t *oc = (uint32_t *)(base + fd->quantifier_offset);
        if (*oc != 0) {
          r = fail(c, -EINVAL, "value_error", "only one member of this oneof may be set");
          goto out;
        }
      }
      r = parse_value(c, fd, val, base + fd->offset, depth);
      if (r < 0)
        goto out;
      if (fd->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)
        *(uint32_t *)(base + fd->quantifier_offset) = fd->id;
      else if (fd->label == PROTOBUF_C_LABEL_OPTIONAL && fd->type != PROTOBUF_C_TYPE_MESSAGE &&
               fd->type != PROTOBUF_C_TYPE_STRING)
        *(protobuf_c_boolean *)(base + fd->quantifier_offset) = 1;
    }
    pop(c);
  }
  *out = m;
  m = NULL;
out:
  free(seen);
  if (m)
    protobuf_c_message_free_unpacked(m, NULL);
  return r;
}

static void ctx_init(ctx_t *c, const dibba_pbjson_limits_t *lim, dibba_pbjson_error_t *err) {
  memset(c, 0, sizeof *c);
  if (lim)
    c->lim = *lim;
  if (c->lim.max_depth == 0)
    c->lim.max_depth = DIBBA_PBJSON_DEFAULT_MAX_DEPTH;
  if (c->lim.max_depth > DIBBA_PBJSON_MAX_DEPTH_LIMIT)
    c->lim.max_depth = DIBBA_PBJSON_MAX_DEPTH_LIMIT;
  if (c->lim.max_string == 0)
    c->lim.max_string = DIBBA_PBJSON_DEFAULT_MAX_STRING;
  if (c->lim.max_array == 0)
    c->lim.max_array = DIBBA_PBJSON_DEFAULT_MAX_ARRAY;
  if (c->lim.max_text == 0)
    c->lim.max_text = DIBBA_PBJSON_DEFAULT_MAX_TEXT;
  c->err = err;
  if (err) {
    dibba_pbjson_error_clear(err);
  }
}

int dibba_pbjson_to_message(const json_t *j, const ProtobufCMessageDescriptor *d, const dibba_pbjson_limits_t *lim,
                            ProtobufCMessage **out, dibba_pbjson_error_t *err) {
  ctx_t c;
  ctx_init(&c, lim, err);
  return parse_message(&c, j, d, 1, out);
}

int dibba_pbjson_parse(const char *text, size_t len, const ProtobufCMessageDescriptor *d,
                       const dibba_pbjson_limits_t *lim, ProtobufCMessage **out, dibba_pbjson_error_t *err) {
  ctx_t c;
  json_error_t je;
  int r;
  ctx_init(&c, lim, err);
  *out = NULL;
  if (len > c.lim.max_text)
    return fail(&c, -E2BIG, "too_long", "body larger than %zu bytes", c.lim.max_text);
  json_t *j = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
  if (j == NULL)
    return fail(&c, -EINVAL, "json_invalid", "invalid JSON at line %d column %d: %s", je.line, je.column, je.text);
  r = parse_message(&c, j, d, 1, out);
  json_decref(j);
  return r;
}

void dibba_pbjson_message_free(ProtobufCMessage *m) {
  if (m)
    protobuf_c_message_free_unpacked(m, NULL);
}

void dibba_pbjson_error_clear(dibba_pbjson_error_t *err) {
  if (err == NULL)
    return;
  json_decref(err->loc);
  memset(err, 0, sizeof *err);
}
