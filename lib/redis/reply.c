/* SPDX-License-Identifier: Apache-2.0 */
/* Type-checked accessors for hiredis replies: strings, integers, field/value arrays, stream entries. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "dibba/error.h"
#include "dibba/redis.h"

int dibba_redis_reply_is_nil(const redisReply *reply) { return reply != NULL && reply->type == REDIS_REPLY_NIL; }

int dibba_redis_reply_str(const redisReply *reply, const char **s, size_t *len) {
  if (reply == NULL)
    return DIBBA_EPROTO;
  if (reply->type == REDIS_REPLY_NIL)
    return -ENOENT;
  if (reply->type != REDIS_REPLY_STRING && reply->type != REDIS_REPLY_STATUS)
    return DIBBA_EPROTO;
  *s = reply->str;
  if (len)
    *len = reply->len;
  return 0;
}

int dibba_redis_reply_int(const redisReply *reply, long long *out) {
  if (reply == NULL)
    return DIBBA_EPROTO;
  if (reply->type == REDIS_REPLY_NIL)
    return -ENOENT;
  if (reply->type == REDIS_REPLY_INTEGER) {
    *out = reply->integer;
    return 0;
  }
  if (reply->type != REDIS_REPLY_STRING || reply->len == 0 || reply->len > 20)
    return DIBBA_EPROTO;
  char buf[24];
  memcpy(buf, reply->str, reply->len);
  buf[reply->len] = '\0';
  char *end;
  errno = 0;
  long long v = strtoll(buf, &end, 10);
  if (errno != 0 || *end != '\0' || buf[0] == ' ' || buf[0] == '+')
    return DIBBA_EPROTO;
  *out = v;
  return 0;
}

const redisReply *dibba_redis_reply_at(const redisReply *reply, size_t i) {
  if (reply == NULL || reply->type != REDIS_REPLY_ARRAY || i >= reply->elements)
    return NULL;
  return reply->element[i];
}

int dibba_redis_reply_field(const redisReply *pairs, const char *field, const char **val, size_t *len) {
  if (pairs == NULL || pairs->type != REDIS_REPLY_ARRAY || pairs->elements % 2 != 0)
    return DIBBA_EPROTO;
  size_t flen = strlen(field);
  for (size_t i = 0; i < pairs->elements; i += 2) {
    const redisReply *k = pairs->element[i], *v = pairs->element[i + 1];
    if (k->type != REDIS_REPLY_STRING)
      return DIBBA_EPROTO;
    if (k->len == flen && memcmp(k->str, field, flen) == 0) {
      if (v->type != REDIS_REPLY_STRING)
        return DIBBA_EPROTO;
      *val = v->str;
      if (len)
        *len = v->len;
      return 0;
    }
  }
  return -ENOENT;
}

/* [id, [f, v, ...] | nil] */
static int entry_ok(const redisReply *e) {
  if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 || e->element[0]->type != REDIS_REPLY_STRING)
    return 0;
  const redisReply *f = e->element[1];
  return f->type == REDIS_REPLY_NIL || (f->type == REDIS_REPLY_ARRAY && f->elements % 2 == 0);
}

static int entries_ok(const redisReply *list) {
  if (list->type != REDIS_REPLY_ARRAY)
    return 0;
  for (size_t i = 0; i < list->elements; i++)
    if (!entry_ok(list->element[i]))
      return 0;
  return 1;
}

/* An XREAD reply is [[name, entries], ...]; an XRANGE reply is [[id, fields], ...]. Tell them apart by the
 * second element of the first item: an entries list is an array of arrays. */
static int is_xread(const redisReply *reply) {
  if (reply->elements == 0)
    return 0;
  const redisReply *first = reply->element[0];
  if (first->type != REDIS_REPLY_ARRAY || first->elements != 2)
    return 0;
  const redisReply *second = first->element[1];
  return second->type == REDIS_REPLY_ARRAY && (second->elements == 0 || second->element[0]->type == REDIS_REPLY_ARRAY);
}

static void fill(dibba_redis_entry_t *out, const redisReply *stream, const redisReply *e) {
  out->stream = stream ? stream->str : NULL;
  out->stream_len = stream ? stream->len : 0;
  out->id = e->element[0]->str;
  out->id_len = e->element[0]->len;
  out->fields = e->element[1]->type == REDIS_REPLY_ARRAY ? e->element[1] : NULL;
}

int dibba_redis_reply_entries(const redisReply *reply, int (*fn)(const dibba_redis_entry_t *e, void *data),
                              void *data) {
  if (reply == NULL)
    return DIBBA_EPROTO;
  if (reply->type == REDIS_REPLY_NIL)
    return 0;
  if (reply->type != REDIS_REPLY_ARRAY)
    return DIBBA_EPROTO;
  dibba_redis_entry_t ent;
  if (!is_xread(reply)) {
    if (!entries_ok(reply))
      return DIBBA_EPROTO;
    for (size_t i = 0; i < reply->elements; i++) {
      fill(&ent, NULL, reply->element[i]);
      int rc = fn(&ent, data);
      if (rc != 0)
        return rc;
    }
    return 0;
  }
  for (size_t i = 0; i < reply->elements; i++) {
    const redisReply *s = reply->element[i];
    if (s->type != REDIS_REPLY_ARRAY || s->elements != 2 || s->element[0]->type != REDIS_REPLY_STRING ||
        !entries_ok(s->element[1]))
      return DIBBA_EPROTO;
  }
  for (size_t i = 0; i < reply->elements; i++) {
    const redisReply *s = reply->element[i];
    for (size_t j = 0; j < s->element[1]->elements; j++) {
      fill(&ent, s->element[0], s->element[1]->element[j]);
      int rc = fn(&ent, data);
      if (rc != 0)
        return rc;
    }
  }
  return 0;
}
