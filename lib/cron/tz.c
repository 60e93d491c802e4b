/* SPDX-License-Identifier: Apache-2.0 */
/* IANA time zones without TZ/localtime: TZif v2+ parsing, the POSIX TZ footer rule, and a per-name cache. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "cron_int.h"
#include "dibba/alloc.h"
#include "dibba/config.h"
#include "dibba/error.h"

#define TZIF_MAX_TIMES 100000
#define TZIF_MAX_TYPES 256
#define TZIF_MAX_CHARS 256
#define RULE_TIME_MAX (167 * 3600)

/* ---- POSIX TZ rule dates ------------------------------------------------------------------------------ */

static int64_t rule_day(const tz_rule_t *r, int64_t year) {
  int64_t jan1 = dibba__days_from_civil(year, 1, 1);
  switch (r->kind) {
  case 'J': return jan1 + r->day - 1 + (dibba__is_leap(year) && r->day >= 60 ? 1 : 0);
  case 'N': return jan1 + r->day;
  default: {
    int64_t first = dibba__days_from_civil(year, r->month, 1);
    int wd = dibba__weekday(first);
    int64_t day = first + (r->wday - wd + 7) % 7 + (int64_t)(r->week - 1) * 7;
    int mdays = dibba__month_days(year, r->month);
    while (day >= first + mdays)
      day -= 7;
    return day;
  }
  }
}

/* Offset and next change from the footer rule (the zone has one). */
static int32_t rule_lookup(const dibba_tz_t *tz, int64_t t, int *isdst, int64_t *next) {
  if (!tz->has_dst) {
    *isdst = 0;
    *next = INT64_MAX;
    return tz->std_off;
  }
  int64_t y, m, d;
  dibba__civil_from_days(dibba__floor_div(t + tz->std_off, 86400), &y, &m, &d);
  /* Transitions of the neighbouring years, in time order; at equal instants the end sorts first. */
  int64_t at[6] = {0}; /* always filled below; the zeroes keep gcc -fsanitize from a maybe-uninitialized false alarm */
  int to_dst[6] = {0}, n = 0;
  for (int64_t yy = y - 1; yy <= y + 1; yy++) {
    at[n] = rule_day(&tz->end, yy) * 86400 + tz->end.time - tz->dst_off;
    to_dst[n++] = 0;
    at[n] = rule_day(&tz->start, yy) * 86400 + tz->start.time - tz->std_off;
    to_dst[n++] = 1;
  }
  for (int i = 1; i < n; i++)
    for (int j = i; j > 0 && (at[j] < at[j - 1] || (at[j] == at[j - 1] && !to_dst[j] && to_dst[j - 1])); j--) {
      int64_t ta = at[j];
      at[j] = at[j - 1];
      at[j - 1] = ta;
      int tb = to_dst[j];
      to_dst[j] = to_dst[j - 1];
      to_dst[j - 1] = tb;
    }
  int dst = to_dst[0] ? 0 : 1; /* the state before the first transition is the opposite of what it sets */
  *next = INT64_MAX;
  for (int i = 0; i < n; i++) {
    if (at[i] <= t) {
      dst = to_dst[i];
    } else {
      *next = at[i];
      break;
    }
  }
  *isdst = dst;
  return dst ? tz->dst_off : tz->std_off;
}

int32_t dibba_tz_offset(const dibba_tz_t *tz, int64_t t, int *isdst, int64_t *next) {
  int dummy_dst;
  int64_t dummy_next;
  if (isdst == NULL)
    isdst = &dummy_dst;
  if (next == NULL)
    next = &dummy_next;
  if (tz->ntrans == 0 || t < tz->trans[0]) {
    if (tz->ntrans == 0 && tz->has_rule)
      return rule_lookup(tz, t, isdst, next);
    *isdst = tz->types[0].isdst;
    *next = tz->ntrans ? tz->trans[0] : INT64_MAX;
    return tz->types[0].off;
  }
  size_t lo = 0, hi = tz->ntrans; /* last index with trans[i] <= t */
  while (hi - lo > 1) {
    size_t mid = lo + (hi - lo) / 2;
    if (tz->trans[mid] <= t)
      lo = mid;
    else
      hi = mid;
  }
  if (lo == tz->ntrans - 1 && tz->has_rule)
    return rule_lookup(tz, t, isdst, next);
  *isdst = tz->types[tz->idx[lo]].isdst;
  *next = lo + 1 < tz->ntrans ? tz->trans[lo + 1] : INT64_MAX;
  return tz->types[tz->idx[lo]].off;
}

int dibba_tz_local_to_utc(const dibba_tz_t *tz, int64_t local, int64_t cand[2], int64_t *after_gap) {
  /* Every answer lies in [local - max_off, local - min_off]: walk the pieces of constant offset there. */
  int64_t t = local - tz->max_off, end = local - tz->min_off, gap = INT64_MAX;
  int n = 0, first = 1;
  int32_t prev_off = 0;
  while (t <= end) {
    int64_t next;
    int32_t off = dibba_tz_offset(tz, t, NULL, &next);
    if (!first && n == 0 && gap == INT64_MAX && t + prev_off <= local && local < t + off)
      gap = t; /* the jump at t skipped over local */
    int64_t c = local - off;
    if (c >= t && c < next && n < 2)
      cand[n++] = c;
    if (next == INT64_MAX || next > end)
      break;
    t = next;
    prev_off = off;
    first = 0;
  }
  if (after_gap)
    *after_gap = n ? INT64_MAX : gap;
  return n;
}

void dibba__tz_off_range(const dibba_tz_t *tz, int64_t t0, int64_t t1, int32_t *lo, int32_t *hi) {
  int64_t t = t0, next;
  int32_t off = dibba_tz_offset(tz, t, NULL, &next);
  *lo = *hi = off;
  while (next != INT64_MAX && next <= t1) {
    t = next;
    off = dibba_tz_offset(tz, t, NULL, &next);
    if (off < *lo)
      *lo = off;
    if (off > *hi)
      *hi = off;
  }
}

const char *dibba_tz_name(const dibba_tz_t *tz) { return tz->name; }

/* ---- POSIX TZ string ("CET-1CEST,M3.5.0,M10.5.0/3") ---------------------------------------------------------- */

static int parse_tzname(const char **p) {
  const char *s = *p;
  size_t n = 0;
  if (*s == '<') {
    s++;
    while (s[n] && s[n] != '>') {
      if (!((s[n] >= 'A' && s[n] <= 'Z') || (s[n] >= 'a' && s[n] <= 'z') || (s[n] >= '0' && s[n] <= '9') ||
            s[n] == '+' || s[n] == '-'))
        return -1;
      n++;
    }
    if (s[n] != '>' || n < 3)
      return -1;
    *p = s + n + 1;
    return 0;
  }
  while ((s[n] >= 'A' && s[n] <= 'Z') || (s[n] >= 'a' && s[n] <= 'z'))
    n++;
  if (n < 3)
    return -1;
  *p = s + n;
  return 0;
}

static int parse_num(const char **p, int max, int *out) {
  const char *s = *p;
  int v = 0, n = 0;
  while (*s >= '0' && *s <= '9') {
    v = v * 10 + (*s++ - '0');
    if (++n > 3 || v > max)
      return -1;
  }
  if (n == 0)
    return -1;
  *p = s;
  *out = v;
  return 0;
}

/* [+-]hh[:mm[:ss]] with hh <= maxh; returns seconds. */
static int parse_hms(const char **p, int maxh, int32_t *out) {
  int sign = 1, h, m = 0, sec = 0;
  if (**p == '+' || **p == '-')
    sign = *(*p)++ == '-' ? -1 : 1;
  if (parse_num(p, maxh, &h) < 0)
    return -1;
  if (**p == ':') {
    (*p)++;
    if (parse_num(p, 59, &m) < 0)
      return -1;
    if (**p == ':') {
      (*p)++;
      if (parse_num(p, 59, &sec) < 0)
        return -1;
    }
  }
  *out = sign * (h * 3600 + m * 60 + sec);
  return 0;
}

static int parse_rule(const char **p, tz_rule_t *r) {
  int v;
  r->time = 7200;
  if (**p == 'J') {
    (*p)++;
    if (parse_num(p, 365, &v) < 0 || v < 1)
      return -1;
    r->kind = 'J';
    r->day = v;
  } else if (**p == 'M') {
    (*p)++;
    if (parse_num(p, 12, &r->month) < 0 || r->month < 1 || *(*p)++ != '.' || parse_num(p, 5, &r->week) < 0 ||
        r->week < 1 || *(*p)++ != '.' || parse_num(p, 6, &r->wday) < 0)
      return -1;
    r->kind = 'M';
  } else {
    if (parse_num(p, 365, &v) < 0)
      return -1;
    r->kind = 'N';
    r->day = v;
  }
  if (**p == '/') {
    (*p)++;
    if (parse_hms(p, 167, &r->time) < 0)
      return -1;
  }
  return 0;
}

int dibba__tz_parse_posix(dibba_tz_t *tz, const char *s) {
  int32_t std, dst;
  if (parse_tzname(&s) < 0 || parse_hms(&s, 24, &std) < 0)
    return -1;
  tz->std_off = -std; /* POSIX offsets count west */
  tz->has_rule = 1;
  if (*s == '\0')
    return 0;
  if (parse_tzname(&s) < 0)
    return -1;
  dst = std - 3600;
  if (*s && *s != ',' && parse_hms(&s, 24, &dst) < 0)
    return -1;
  tz->dst_off = -dst;
  tz->has_dst = 1;
  if (*s == '\0') {
    /* No rule: the POSIX default is implementation-defined; glibc and tzcode use the US rule. */
    static const tz_rule_t us_start = {'M', 0, 3, 2, 0, 7200}, us_end = {'M', 0, 11, 1, 0, 7200};
    tz->start = us_start;
    tz->end = us_end;
    return 0;
  }
  if (*s++ != ',' || parse_rule(&s, &tz->start) < 0 || *s++ != ',' || parse_rule(&s, &tz->end) < 0 || *s != '\0')
    return -1;
  return 0;
}

/* ---- TZif ------------------------------------------------------------------------------------------------ */

static uint32_t be32(const unsigned char *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int64_t be64(const unsigned char *p) { return (int64_t)((uint64_t)be32(p) << 32 | be32(p + 4)); }

typedef struct {
  uint32_t isut, isstd, leap, time, type, chars;
} tzif_counts_t;

static int read_header(const unsigned char *p, size_t len, tzif_counts_t *c, int *version) {
  if (len < 44 || memcmp(p, "TZif", 4) != 0)
    return -1;
  *version = p[4] == 0 ? 1 : p[4] - '0';
  c->isut = be32(p + 20);
  c->isstd = be32(p + 24);
  c->leap = be32(p + 28);
  c->time = be32(p + 32);
  c->type = be32(p + 36);
  c->chars = be32(p + 40);
  if (c->time > TZIF_MAX_TIMES || c->type == 0 || c->type > TZIF_MAX_TYPES || c->chars > TZIF_MAX_CHARS ||
      c->leap > TZIF_MAX_TIMES || (c->isut != 0 && c->isut != c->type) || (c->isstd != 0 && c->isstd != c->type))
    return -1;
  return 0;
}

static size_t data_len(const tzif_counts_t *c, size_t tsize) {
  /* Counts are capped above, so this cannot overflow a size_t. */
  return (size_t)c->time * tsize + c->time + (size_t)c->type * 6 + c->chars + (size_t)c->leap * (tsize + 4) + c->isstd +
         c->isut;
}

static void minmax_off(dibba_tz_t *tz) {
  tz->min_off = tz->max_off = tz->types[0].off;
  for (size_t i = 0; i < tz->ntypes; i++) {
    if (tz->types[i].off < tz->min_off)
      tz->min_off = tz->types[i].off;
    if (tz->types[i].off > tz->max_off)
      tz->max_off = tz->types[i].off;
  }
  if (tz->has_rule) {
    int32_t v[2] = {tz->std_off, tz->has_dst ? tz->dst_off : tz->std_off};
    for (int i = 0; i < 2; i++) {
      if (v[i] < tz->min_off)
        tz->min_off = v[i];
      if (v[i] > tz->max_off)
        tz->max_off = v[i];
    }
  }
}

int dibba_tz_parse(const char *name, const void *data, size_t len, dibba_tz_t **out, char *err, size_t errlen) {
  const unsigned char *p = data;
  tzif_counts_t c;
  int version, r = -EINVAL;
  dibba_tz_t *tz = NULL;
  char *footer = NULL;

  *out = NULL;
  if (read_header(p, len, &c, &version) < 0) {
    dibba_error_set(err, errlen, r, "zone %s: not a TZif file or bad header", name);
    goto out;
  }
  if (version < 2) {
    dibba_error_set(err, errlen, r, "zone %s: TZif version 1 has no 64-bit data", name);
    goto out;
  }
  size_t skip = 44 + data_len(&c, 4);
  if (skip > len || read_header(p + skip, len - skip, &c, &version) < 0) {
    dibba_error_set(err, errlen, r, "zone %s: truncated or bad 64-bit header", name);
    goto out;
  }
  if (c.leap != 0) {
    dibba_error_set(err, errlen, r, "zone %s: leap-second zones are not supported", name);
    goto out;
  }
  p += skip + 44;
  len -= skip + 44;
  size_t dl = data_len(&c, 8);
  if (dl > len) {
    dibba_error_set(err, errlen, r, "zone %s: truncated 64-bit data", name);
    goto out;
  }
  tz = dibba_xcalloc(1, sizeof *tz);
  tz->name = dibba_xstrdup(name);
  tz->ntrans = c.time;
  tz->ntypes = c.type;
  tz->trans = dibba_xcalloc(c.time ? c.time : 1, sizeof *tz->trans);
  tz->idx = dibba_xcalloc(c.time ? c.time : 1, 1);
  tz->types = dibba_xcalloc(c.type, sizeof *tz->types);
  for (uint32_t i = 0; i < c.time; i++) {
    tz->trans[i] = be64(p + 8 * (size_t)i);
    if (i > 0 && tz->trans[i] <= tz->trans[i - 1]) {
      dibba_error_set(err, errlen, r, "zone %s: transitions out of order", name);
      goto out;
    }
  }
  p += 8 * (size_t)c.time;
  for (uint32_t i = 0; i < c.time; i++) {
    tz->idx[i] = p[i];
    if (p[i] >= c.type) {
      dibba_error_set(err, errlen, r, "zone %s: transition type out of range", name);
      goto out;
    }
  }
  p += c.time;
  for (uint32_t i = 0; i < c.type; i++) {
    int32_t off = (int32_t)be32(p + 6 * (size_t)i);
    if (off < -89999 || off > 93599 || p[6 * i + 4] > 1 || p[6 * i + 5] >= c.chars) {
      dibba_error_set(err, errlen, r, "zone %s: bad local time type %u", name, i);
      goto out;
    }
    tz->types[i].off = off;
    tz->types[i].isdst = p[6 * i + 4];
  }
  p += dl - (size_t)c.time * 9; /* types were read in place; skip them and the rest */
  len -= dl;
  /* Footer: "\n" TZ-string "\n"; it may be empty. */
  if (len < 2 || p[0] != '\n') {
    dibba_error_set(err, errlen, r, "zone %s: missing footer", name);
    goto out;
  }
  const unsigned char *nl = memchr(p + 1, '\n', len - 1);
  if (nl == NULL || nl - p - 1 > 255) {
    dibba_error_set(err, errlen, r, "zone %s: bad footer", name);
    goto out;
  }
  footer = dibba_xstrndup((const char *)p + 1, (size_t)(nl - p - 1));
  if (strlen(footer) != (size_t)(nl - p - 1) || (footer[0] && dibba__tz_parse_posix(tz, footer) < 0)) {
    dibba_error_set(err, errlen, r, "zone %s: unsupported TZ footer \"%.64s\"", name, footer);
    goto out;
  }
  minmax_off(tz);
  *out = tz;
  tz = NULL;
  r = 0;
out:
  free(footer);
  dibba_tz_free(tz);
  return r;
}

void dibba_tz_free(dibba_tz_t *tz) {
  if (tz == NULL)
    return;
  free(tz->name);
  free(tz->trans);
  free(tz->idx);
  free(tz->types);
  free(tz);
}

/* ---- Cache --------------------------------------------------------------------------------------------- */

static uv_once_t cache_once = UV_ONCE_INIT;
static uv_mutex_t cache_lock;
static dibba_tz_t *cache;

static void cache_init(void) {
  if (uv_mutex_init(&cache_lock) != 0)
    abort();
}

static int valid_name(const char *name) {
  size_t n = strlen(name), comp = 0;
  if (n == 0 || n > DIBBA_TZ_NAME_MAX || name[0] == '/' || name[n - 1] == '/')
    return 0;
  for (size_t i = 0; i < n; i++) {
    char ch = name[i];
    if (ch == '/') {
      if (comp == 0)
        return 0;
      comp = 0;
      continue;
    }
    if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '_' || ch == '-' ||
          ch == '+' || (ch == '.' && comp > 0 && name[i - 1] != '.')))
      return 0;
    comp++;
  }
  return 1;
}

static tz_type_t utc_types[1];
static char utc_name[] = "UTC";
static const dibba_tz_t utc_zone = {.name = utc_name, .types = utc_types, .ntypes = 1};

const dibba_tz_t *dibba__tz_utc(void) { return &utc_zone; }

int dibba_tz_get(const char *name, const dibba_tz_t **out, char *err, size_t errlen) {
  char *path = NULL, *data = NULL;
  size_t len = 0;
  dibba_tz_t *tz = NULL;
  int r = 0;

  *out = NULL;
  if (name == NULL || !valid_name(name))
    return dibba_error_set(err, errlen, -EINVAL, "bad time zone name \"%.64s\"", name ? name : "");
  if (strcmp(name, "UTC") == 0) {
    *out = &utc_zone;
    return 0;
  }
  uv_once(&cache_once, cache_init);
  uv_mutex_lock(&cache_lock);
  for (tz = cache; tz; tz = tz->next)
    if (strcmp(tz->name, name) == 0)
      goto found;
  const char *dir = getenv("TZDIR");
  path = dibba_xasprintf("%s/%s", dir && dir[0] ? dir : "/usr/share/zoneinfo", name);
  r = dibba_read_small_file(path, DIBBA_TZ_FILE_MAX, &data, &len);
  if (r < 0) {
    if (r == -ENOENT || r == -ENOTDIR || r == -EISDIR || r == -EINVAL)
      r = dibba_error_set(err, errlen, -ENOENT, "unknown time zone \"%s\"", name);
    else
      dibba_error_set(err, errlen, r, "time zone %s: %s", path, dibba_strerror(r));
    goto out;
  }
  r = dibba_tz_parse(name, data, len, &tz, err, errlen);
  if (r < 0)
    goto out;
  tz->next = cache;
  cache = tz;
found:
  *out = tz;
out:
  uv_mutex_unlock(&cache_lock);
  free(path);
  free(data);
  return r;
}

void dibba_tz_cache_clear(void) {
  uv_once(&cache_once, cache_init);
  uv_mutex_lock(&cache_lock);
  while (cache) {
    dibba_tz_t *next = cache->next;
    dibba_tz_free(cache);
    cache = next;
  }
  uv_mutex_unlock(&cache_lock);
}
