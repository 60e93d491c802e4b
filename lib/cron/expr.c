/* SPDX-License-Identifier: Apache-2.0 */
/* Cron expression and `every` interval parsing, with the character offset of the first error. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>

#include "cron_int.h"
#include "dibba/error.h"

typedef struct {
  const char *what; /* "minute", ... for messages */
  int min, max;
  const char *const *names; /* 3-letter names for min.., or NULL */
} field_t;

static const char *const month_names[] = {"JAN", "FEB", "MAR", "APR", "MAY", "JUN",
                                          "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"};
static const char *const day_names[] = {"SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"};

static const field_t fields[5] = {
    {"minute", 0, 59, NULL},          {"hour", 0, 23, NULL},
    {"day of month", 1, 31, NULL},    {"month", 1, 12, month_names},
    {"day of week", 0, 7, day_names},
};

typedef struct {
  const char *expr;
  size_t *errpos;
  char *err;
  size_t errlen;
} ctx_t;

__attribute__((format(printf, 3, 4))) static int fail(ctx_t *c, const char *at, const char *fmt, ...) {
  char msg[160];
  va_list ap;
  size_t pos = (size_t)(at - c->expr);
  if (c->errpos)
    *c->errpos = pos;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return dibba_error_set(c->err, c->errlen, -EINVAL, "at %zu: %s", pos, msg);
}

static int is_alpha(char ch) { return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z'); }
static int is_digit(char ch) { return ch >= '0' && ch <= '9'; }

/* One value: a number or (for month and day of week) a name. end bounds the field. */
static int parse_value(ctx_t *c, const field_t *f, const char **p, const char *end, int *out) {
  const char *s = *p;
  if (s < end && is_digit(*s)) {
    int v = 0;
    while (s < end && is_digit(*s)) {
      v = v * 10 + (*s++ - '0');
      if (v > 1000)
        break;
    }
    if (v < f->min || v > f->max)
      return fail(c, *p, "%s out of range (%d-%d)", f->what, f->min, f->max);
    *p = s;
    *out = v;
    return 0;
  }
  if (s < end && is_alpha(*s)) {
    size_t n = 0;
    while (s + n < end && is_alpha(s[n]))
      n++;
    char word[8] = "";
    if (f->names && n == 3) {
      int count = f == &fields[3] ? 12 : 7;
      for (int i = 0; i < count; i++)
        if (strncasecmp(s, f->names[i], 3) == 0) {
          *p = s + 3;
          *out = f->min + i;
          return 0;
        }
    }
    memcpy(word, s, n < 7 ? n : 7);
    if (f->names == NULL)
      return fail(c, s, "names are not allowed in this field (\"%s\")", word);
    return fail(c, s, f == &fields[3] ? "unknown month name \"%s\"" : "unknown day name \"%s\"", word);
  }
  return fail(c, s, "expected a number or a name in the %s field", f->what);
}

/* One list element: *, *\/n, a, a-b, a-b/n, a/n. Sets bits in *bits. */
static int parse_elem(ctx_t *c, const field_t *f, const char *s, const char *end, uint64_t *bits) {
  const char *p = s;
  int lo, hi, step = 1, r;
  if (p < end && *p == '*') {
    lo = f->min;
    hi = f->max == 7 ? 6 : f->max;
    p++;
  } else {
    if ((r = parse_value(c, f, &p, end, &lo)) < 0)
      return r;
    hi = lo;
    if (p < end && *p == '-') {
      p++;
      if ((r = parse_value(c, f, &p, end, &hi)) < 0)
        return r;
      if (hi < lo)
        return fail(c, s, "reversed range in the %s field", f->what);
    } else if (p < end && *p == '/') {
      hi = f->max; /* a/n means a-max/n, as cronie does */
    }
  }
  if (p < end && *p == '/') {
    const char *at = ++p;
    int v = 0;
    if (p >= end || !is_digit(*p))
      return fail(c, at, "expected a step number in the %s field", f->what);
    while (p < end && is_digit(*p)) {
      v = v * 10 + (*p++ - '0');
      if (v > 1000)
        break;
    }
    if (v == 0)
      return fail(c, at, "step 0 in the %s field", f->what);
    if (v > f->max - f->min + 1)
      return fail(c, at, "step larger than the %s field's range", f->what);
    step = v;
  }
  if (p != end)
    return fail(c, p, "unexpected character in the %s field", f->what);
  for (int v = lo; v <= hi; v += step)
    *bits |= (uint64_t)1 << (f->max == 7 && v == 7 ? 0 : v);
  return 0;
}

static int parse_field(ctx_t *c, const field_t *f, const char *s, const char *end, uint64_t *bits) {
  *bits = 0;
  for (const char *e = s;; e++) {
    if (e == end || *e == ',') {
      if (e == s)
        return fail(c, s, "empty list element in the %s field", f->what);
      int r = parse_elem(c, f, s, e, bits);
      if (r < 0)
        return r;
      if (e == end)
        return 0;
      s = e + 1;
    }
  }
}

static int is_space(char ch) { return ch == ' ' || ch == '\t'; }

int dibba_cron_parse(const char *expr, dibba_cron_t *out, size_t *errpos, char *err, size_t errlen) {
  static const struct {
    const char *name, *expr;
  } macros[] = {
      {"@yearly", "0 0 1 1 *"}, {"@annually", "0 0 1 1 *"}, {"@monthly", "0 0 1 * *"}, {"@weekly", "0 0 * * 0"},
      {"@daily", "0 0 * * *"},  {"@midnight", "0 0 * * *"}, {"@hourly", "0 * * * *"},
  };
  ctx_t c = {expr, errpos, err, errlen};
  const char *p = expr, *start[6], *end[6];
  uint64_t bits[5];
  int n = 0, r;

  memset(out, 0, sizeof *out);
  size_t len = strnlen(expr, DIBBA_CRON_MAX_LEN + 1);
  if (len > DIBBA_CRON_MAX_LEN)
    return fail(&c, expr + DIBBA_CRON_MAX_LEN, "expression longer than %d characters", DIBBA_CRON_MAX_LEN);
  while (is_space(*p))
    p++;
  if (*p == '@') {
    const char *e = p;
    while (*e && !is_space(*e))
      e++;
    for (const char *t = e; *t; t++)
      if (!is_space(*t))
        return fail(&c, t, "unexpected text after %s", "the macro");
    for (size_t i = 0; i < sizeof macros / sizeof macros[0]; i++)
      if ((size_t)(e - p) == strlen(macros[i].name) && strncasecmp(p, macros[i].name, (size_t)(e - p)) == 0)
        return dibba_cron_parse(macros[i].expr, out, errpos, err, errlen);
    return fail(&c, p, "unknown macro (%s)", "@yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly");
  }
  while (*p) {
    if (n == 5)
      return fail(&c, p, "%s", "too many fields (expected 5: minute hour day-of-month month day-of-week)");
    start[n] = p;
    while (*p && !is_space(*p))
      p++;
    end[n++] = p;
    while (is_space(*p))
      p++;
  }
  if (n < 5)
    return fail(&c, p, "%s", "too few fields (expected 5: minute hour day-of-month month day-of-week)");
  for (int i = 0; i < 5; i++)
    if ((r = parse_field(&c, &fields[i], start[i], end[i], &bits[i])) < 0)
      return r;
  out->minute = bits[0];
  out->hour = (uint32_t)bits[1];
  out->dom = (uint32_t)bits[2];
  out->month = (uint16_t)bits[3];
  out->dow = (uint8_t)bits[4];
  if (*start[2] == '*')
    out->flags |= DIBBA_CRON_DOM_STAR;
  if (*start[4] == '*')
    out->flags |= DIBBA_CRON_DOW_STAR;
  if (*start[1] == '*' || memchr(start[1], '/', (size_t)(end[1] - start[1])))
    out->flags |= DIBBA_CRON_HOUR_WILD;
  return 0;
}

int dibba_every_parse(const char *text, int64_t *seconds, size_t *errpos, char *err, size_t errlen) {
  static const struct {
    char unit;
    int64_t mult;
  } units[] = {{'d', 86400}, {'h', 3600}, {'m', 60}, {'s', 1}};
  ctx_t c = {text, errpos, err, errlen};
  const char *p = text;
  int64_t total = 0;
  size_t next_unit = 0;

  *seconds = 0;
  if (*p == '\0')
    return fail(&c, p, "%s", "empty interval (e.g. \"30s\", \"5m\", \"1h30m\", \"2d\")");
  while (*p) {
    const char *num = p;
    int64_t v = 0;
    if (!is_digit(*p))
      return fail(&c, p, "%s", "expected a number");
    while (is_digit(*p)) {
      v = v * 10 + (*p++ - '0');
      if (v > DIBBA_EVERY_MAX)
        return fail(&c, num, "%s", "interval longer than 366 days");
    }
    size_t u = next_unit;
    while (u < 4 && units[u].unit != *p)
      u++;
    if (u == 4) {
      for (size_t k = 0; k < next_unit; k++)
        if (units[k].unit == *p)
          return fail(&c, p, "%s", "units must be in the order d, h, m, s, each at most once");
      return fail(&c, p, "%s", "expected a unit: d, h, m or s");
    }
    next_unit = u + 1;
    p++;
    total += v * units[u].mult;
    if (total > DIBBA_EVERY_MAX)
      return fail(&c, num, "%s", "interval longer than 366 days");
  }
  if (total < 1)
    return fail(&c, text, "%s", "interval shorter than 1 second");
  *seconds = total;
  return 0;
}
