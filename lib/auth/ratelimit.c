/* SPDX-License-Identifier: Apache-2.0 */
/* Failed-login limits per user and per client address: sliding windows in two bounded LRU tables. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "dibba/alloc.h"
#include "dibba/error.h"
#include "dibba/id.h"

#include "auth-int.h"

#define KEY_MAX 256

typedef struct entry_s {
  struct entry_s *hnext;
  struct entry_s *prev, *next; /* LRU: most recently failed first */
  char *key;
  unsigned count; /* failures kept, oldest at times[head] */
  unsigned head;
  int64_t times[];
} entry_t;

typedef struct table_s {
  entry_t **buckets;
  size_t mask;
  size_t n;
  size_t max;
  unsigned limit;
  entry_t *first, *last;
} table_t;

struct dibba_auth_rl_s {
  dibba_auth_rl_config_t cfg;
  uint64_t k0, k1; /* SipHash key: client-chosen keys cannot be aimed at one bucket */
  table_t users, addrs;
};

/* ---- SipHash-2-4 ---- */

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                                                       \
  do {                                                                                                                 \
    v0 += v1;                                                                                                          \
    v1 = ROTL(v1, 13);                                                                                                 \
    v1 ^= v0;                                                                                                          \
    v0 = ROTL(v0, 32);                                                                                                 \
    v2 += v3;                                                                                                          \
    v3 = ROTL(v3, 16);                                                                                                 \
    v3 ^= v2;                                                                                                          \
    v0 += v3;                                                                                                          \
    v3 = ROTL(v3, 21);                                                                                                 \
    v3 ^= v0;                                                                                                          \
    v2 += v1;                                                                                                          \
    v1 = ROTL(v1, 17);                                                                                                 \
    v1 ^= v2;                                                                                                          \
    v2 = ROTL(v2, 32);                                                                                                 \
  } while (0)

static uint64_t siphash(uint64_t k0, uint64_t k1, const unsigned char *in, size_t n) {
  uint64_t v0 = 0x736f6d6570736575ULL ^ k0, v1 = 0x646f72616e646f6dULL ^ k1;
  uint64_t v2 = 0x6c7967656e657261ULL ^ k0, v3 = 0x7465646279746573ULL ^ k1;
  uint64_t b = (uint64_t)n << 56, m;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    m = 0;
    for (int k = 0; k < 8; k++)
      m |= (uint64_t)in[i + k] << (8 * k);
    v3 ^= m;
    SIPROUND;
    SIPROUND;
    v0 ^= m;
  }
  for (int k = 0; i + k < n; k++)
    b |= (uint64_t)in[i + k] << (8 * k);
  v3 ^= b;
  SIPROUND;
  SIPROUND;
  v0 ^= b;
  v2 ^= 0xff;
  SIPROUND;
  SIPROUND;
  SIPROUND;
  SIPROUND;
  return v0 ^ v1 ^ v2 ^ v3;
}

/* ---- tables ---- */

static void table_init(table_t *t, size_t max, unsigned limit) {
  size_t nb = 16;
  while (nb < max && nb < (1u << 20))
    nb <<= 1;
  memset(t, 0, sizeof *t);
  t->buckets = dibba_xcalloc(nb, sizeof *t->buckets);
  t->mask = nb - 1;
  t->max = max;
  t->limit = limit;
}

static size_t bucket(const dibba_auth_rl_t *rl, const table_t *t, const char *key) {
  return (size_t)siphash(rl->k0, rl->k1, (const unsigned char *)key, strlen(key)) & t->mask;
}

static void lru_unlink(table_t *t, entry_t *e) {
  if (e->prev)
    e->prev->next = e->next;
  else
    t->first = e->next;
  if (e->next)
    e->next->prev = e->prev;
  else
    t->last = e->prev;
  e->prev = e->next = NULL;
}

static void lru_push_front(table_t *t, entry_t *e) {
  e->prev = NULL;
  e->next = t->first;
  if (t->first)
    t->first->prev = e;
  t->first = e;
  if (t->last == NULL)
    t->last = e;
}

static entry_t *lookup(const dibba_auth_rl_t *rl, const table_t *t, const char *key) {
  for (entry_t *e = t->buckets[bucket(rl, t, key)]; e; e = e->hnext)
    if (strcmp(e->key, key) == 0)
      return e;
  return NULL;
}

static void entry_remove(const dibba_auth_rl_t *rl, table_t *t, entry_t *e) {
  entry_t **pp = &t->buckets[bucket(rl, t, e->key)];
  while (*pp != e)
    pp = &(*pp)->hnext;
  *pp = e->hnext;
  lru_unlink(t, e);
  t->n--;
  free(e->key);
  free(e);
}

static void table_free(table_t *t) {
  entry_t *e = t->first;
  while (e) {
    entry_t *next = e->next;
    free(e->key);
    free(e);
    e = next;
  }
  free(t->buckets);
  memset(t, 0, sizeof *t);
}

/* Drop failures older than the window; an entry left empty is removed. Returns the entry or NULL. */
static entry_t *prune(dibba_auth_rl_t *rl, table_t *t, entry_t *e, int64_t now) {
  while (e->count > 0 && e->times[e->head] <= now - rl->cfg.window_ms) {
    e->head = (e->head + 1) % t->limit;
    e->count--;
  }
  if (e->count == 0) {
    entry_remove(rl, t, e);
    return NULL;
  }
  return e;
}

/* Keys longer than KEY_MAX are cut, the same way everywhere, so a long key cannot dodge its own entry. */
static const char *clip(const char *key, char buf[KEY_MAX + 1]) {
  if (key == NULL || strnlen(key, KEY_MAX + 1) <= KEY_MAX)
    return key;
  memcpy(buf, key, KEY_MAX);
  buf[KEY_MAX] = '\0';
  return buf;
}

static int limited(dibba_auth_rl_t *rl, table_t *t, const char *key, int64_t now, int64_t *retry_ms) {
  char kb[KEY_MAX + 1];
  key = clip(key, kb);
  if (key == NULL || t->limit == 0)
    return 0;
  entry_t *e = lookup(rl, t, key);
  if (e == NULL || (e = prune(rl, t, e, now)) == NULL || e->count < t->limit)
    return 0;
  int64_t wait = e->times[e->head] + rl->cfg.window_ms - now;
  if (wait > *retry_ms)
    *retry_ms = wait;
  return 1;
}

static void record(dibba_auth_rl_t *rl, table_t *t, const char *key, int64_t now) {
  char kb[KEY_MAX + 1];
  key = clip(key, kb);
  if (key == NULL || t->limit == 0 || t->max == 0)
    return;
  entry_t *e = lookup(rl, t, key);
  if (e && (e = prune(rl, t, e, now)) != NULL) {
    lru_unlink(t, e);
  } else {
    /* Full: forget the entry whose last failure is oldest. */
    while (t->n >= t->max && t->last)
      entry_remove(rl, t, t->last);
    e = dibba_xcalloc(1, sizeof *e + t->limit * sizeof e->times[0]);
    e->key = dibba_xstrdup(key);
    size_t b = bucket(rl, t, e->key);
    e->hnext = t->buckets[b];
    t->buckets[b] = e;
    t->n++;
  }
  lru_push_front(t, e);
  if (e->count < t->limit) {
    e->times[(e->head + e->count) % t->limit] = now;
    e->count++;
  } else {
    e->times[e->head] = now;
    e->head = (e->head + 1) % t->limit;
  }
}

/* ---- public ---- */

int dibba_auth_rl_config(const dibba_config_t *cfg, dibba_auth_rl_config_t *out, char *err, size_t errlen) {
  int64_t um, am, win, tm;
  int r = dibba_config_int(cfg, "auth.login_user_failures", 5, 1, 1000, &um, err, errlen);
  if (r == 0)
    r = dibba_config_int(cfg, "auth.login_addr_failures", 20, 1, 10000, &am, err, errlen);
  if (r == 0)
    r = dibba_config_int(cfg, "auth.login_window_seconds", 300, 1, 86400, &win, err, errlen);
  if (r == 0)
    r = dibba_config_int(cfg, "auth.login_table_max", 10000, 1, 1000000, &tm, err, errlen);
  if (r < 0)
    return r;
  out->user_max = (unsigned)um;
  out->addr_max = (unsigned)am;
  out->window_ms = win * 1000;
  out->table_max = (size_t)tm;
  return 0;
}

dibba_auth_rl_t *dibba_auth_rl_new(const dibba_auth_rl_config_t *cfg) {
  dibba_auth_rl_t *rl = dibba_xcalloc(1, sizeof *rl);
  if (cfg)
    rl->cfg = *cfg;
  else
    rl->cfg = (dibba_auth_rl_config_t){5, 20, 300000, 10000};
  if (rl->cfg.window_ms < 1)
    rl->cfg.window_ms = 1;
  dibba_random_bytes(&rl->k0, sizeof rl->k0);
  dibba_random_bytes(&rl->k1, sizeof rl->k1);
  table_init(&rl->users, rl->cfg.table_max, rl->cfg.user_max);
  table_init(&rl->addrs, rl->cfg.table_max, rl->cfg.addr_max);
  return rl;
}

void dibba_auth_rl_free(dibba_auth_rl_t *rl) {
  if (rl == NULL)
    return;
  table_free(&rl->users);
  table_free(&rl->addrs);
  free(rl);
}

int dibba_auth_rl_check(dibba_auth_rl_t *rl, const char *user, const char *addr, int64_t now_ms, int64_t *retry_after) {
  int64_t wait = 0;
  int a = limited(rl, &rl->users, user, now_ms, &wait);
  int b = limited(rl, &rl->addrs, addr, now_ms, &wait);
  if (!a && !b)
    return 0;
  *retry_after = wait <= 0 ? 1 : (wait + 999) / 1000;
  return -EBUSY;
}

void dibba_auth_rl_fail(dibba_auth_rl_t *rl, const char *user, const char *addr, int64_t now_ms) {
  record(rl, &rl->users, user, now_ms);
  record(rl, &rl->addrs, addr, now_ms);
}

void dibba_auth_rl_success(dibba_auth_rl_t *rl, const char *user) {
  char kb[KEY_MAX + 1];
  user = clip(user, kb);
  entry_t *e = user ? lookup(rl, &rl->users, user) : NULL;
  if (e)
    entry_remove(rl, &rl->users, e);
}

void dibba_auth_rl_size(const dibba_auth_rl_t *rl, size_t *users, size_t *addrs) {
  *users = rl->users.n;
  *addrs = rl->addrs.n;
}
