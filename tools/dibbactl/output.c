/* SPDX-License-Identifier: Apache-2.0 */
/* dibbactl's output: aligned tables, the describe view, pretty JSON, and the small formatters they share. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dibba/alloc.h"
#include "ctl.h"

#define CELL_MAX 256

struct ctl_table_s {
  size_t ncols;
  size_t nrows; /* including the header */
  size_t ncur;  /* cells in the row being built */
  char **cells; /* nrows * ncols */
  size_t alloc_rows;
};

/* Replace control characters: a server string must not move the cursor or start a new line. */
static char *clean(const char *s, size_t max) {
  size_t n = strlen(s);
  if (n > max)
    n = max;
  char *o = dibba_xstrndup(s, n);
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)o[i] < 0x20 || o[i] == 0x7f)
      o[i] = '?';
  return o;
}

/* Columns on a terminal: UTF-8 lead bytes (wide characters are rare in names). */
static size_t width(const char *s) {
  size_t w = 0;
  for (; *s; s++)
    w += ((unsigned char)*s & 0xC0) != 0x80;
  return w;
}

ctl_table_t *ctl_table_new(const char *const *header) {
  ctl_table_t *t = dibba_xcalloc(1, sizeof *t);
  while (header[t->ncols])
    t->ncols++;
  for (size_t i = 0; i < t->ncols; i++)
    ctl_table_cell(t, header[i]);
  ctl_table_row(t);
  return t;
}

void ctl_table_cell(ctl_table_t *t, const char *s) {
  if (t->ncur == t->ncols)
    return;
  if (t->nrows == t->alloc_rows) {
    t->alloc_rows = t->alloc_rows ? t->alloc_rows * 2 : 16;
    t->cells = dibba_xreallocarray(t->cells, t->alloc_rows * t->ncols, sizeof *t->cells);
  }
  t->cells[t->nrows * t->ncols + t->ncur++] = clean(s && s[0] ? s : "<none>", CELL_MAX);
}

void ctl_table_cellf(ctl_table_t *t, const char *fmt, ...) {
  char buf[CELL_MAX + 1];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  ctl_table_cell(t, buf);
}

void ctl_table_row(ctl_table_t *t) {
  while (t->ncur > 0 && t->ncur < t->ncols)
    ctl_table_cell(t, "");
  if (t->ncur == t->ncols) {
    t->nrows++;
    t->ncur = 0;
  }
}

void ctl_table_print(ctl_table_t *t) {
  size_t *w = dibba_xcalloc(t->ncols, sizeof *w);
  for (size_t r = 0; r < t->nrows; r++)
    for (size_t k = 0; k < t->ncols; k++) {
      size_t x = width(t->cells[r * t->ncols + k]);
      if (x > w[k])
        w[k] = x;
    }
  for (size_t r = 0; r < t->nrows; r++) {
    for (size_t k = 0; k < t->ncols; k++) {
      const char *s = t->cells[r * t->ncols + k];
      if (k + 1 == t->ncols)
        printf("%s\n", s);
      else
        printf("%s%*s", s, (int)(w[k] - width(s) + 3), "");
    }
  }
  for (size_t i = 0; i < t->nrows * t->ncols; i++)
    free(t->cells[i]);
  free(t->cells);
  free(w);
  free(t);
}

void ctl_print_json(const json_t *j) {
  char *s = json_dumps(j, JSON_INDENT(2) | JSON_ENCODE_ANY);
  if (s)
    printf("%s\n", s);
  free(s);
}

/* ---- describe ---- */

static void put_clean(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    putchar(ch < 0x20 && ch != '\t' ? '?' : ch == 0x7f ? '?' : ch);
  }
}

static void describe_value(const json_t *v, int indent, int in_list);

static void scalar_line(const json_t *v, int indent) {
  if (json_is_string(v) && memchr(json_string_value(v), '\n', json_string_length(v))) {
    /* A block, one line per line of the text. */
    const char *s = json_string_value(v), *end = s + json_string_length(v);
    printf("|\n");
    while (s < end) {
      const char *nl = memchr(s, '\n', (size_t)(end - s));
      size_t n = nl ? (size_t)(nl - s) : (size_t)(end - s);
      printf("%*s", indent, "");
      put_clean(s, n);
      putchar('\n');
      s += n + (nl != NULL);
    }
    return;
  }
  char buf[64];
  if (json_is_string(v) && json_string_length(v) > 0)
    put_clean(json_string_value(v), json_string_length(v));
  else
    fputs(json_is_null(v) || json_is_string(v) ? "<none>" : ctl_jstr(v, buf, sizeof buf), stdout);
  putchar('\n');
}

static int is_empty_container(const json_t *v) {
  return (json_is_object(v) && json_object_size(v) == 0) || (json_is_array(v) && json_array_size(v) == 0);
}

static void describe_value(const json_t *v, int indent, int in_list) {
  if (json_is_object(v)) {
    const char *k;
    json_t *x;
    int first = 1;
    json_object_foreach((json_t *)v, k, x) {
      if (!(in_list && first))
        printf("%*s", indent, "");
      first = 0;
      put_clean(k, strlen(k));
      if ((json_is_object(x) || json_is_array(x)) && !is_empty_container(x)) {
        printf(":\n");
        describe_value(x, indent + 2, 0);
      } else {
        printf(": ");
        if (is_empty_container(x))
          printf("<none>\n");
        else
          scalar_line(x, indent + 2);
      }
    }
  } else if (json_is_array(v)) {
    size_t i;
    json_t *x;
    json_array_foreach(v, i, x) {
      printf("%*s- ", indent, "");
      if (json_is_object(x) && json_object_size(x) > 0)
        describe_value(x, indent + 2, 1);
      else if (json_is_array(x) && json_array_size(x) > 0) {
        printf("\n");
        describe_value(x, indent + 2, 0);
      } else
        scalar_line(x, indent + 2);
    }
  } else {
    printf("%*s", indent, "");
    scalar_line(v, indent + 2);
  }
}

void ctl_print_describe(const json_t *j) { describe_value(j, 0, 0); }

/* ---- fields and formatting ---- */

json_t *ctl_jget(const json_t *obj, ...) {
  va_list ap;
  json_t *v = NULL;
  va_start(ap, obj);
  for (const char *k = va_arg(ap, const char *); k; k = va_arg(ap, const char *)) {
    v = json_object_get(obj, k);
    if (v && !json_is_null(v))
      break;
    v = NULL;
  }
  va_end(ap);
  return v;
}

const char *ctl_jstr(const json_t *v, char *buf, size_t len) {
  if (json_is_string(v))
    snprintf(buf, len, "%s", json_string_value(v));
  else if (json_is_integer(v))
    snprintf(buf, len, "%lld", (long long)json_integer_value(v));
  else if (json_is_real(v))
    snprintf(buf, len, "%g", json_real_value(v));
  else if (json_is_boolean(v))
    snprintf(buf, len, "%s", json_is_true(v) ? "true" : "false");
  else if (v && !json_is_null(v)) {
    char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    snprintf(buf, len, "%s", s ? s : "");
    free(s);
  } else
    buf[0] = '\0';
  return buf;
}

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void ctl_fmt_age(int64_t ms, char *buf, size_t len) {
  if (ms <= 0) {
    snprintf(buf, len, "<none>");
    return;
  }
  int64_t d = now_ms() - ms;
  int future = d < 0;
  int64_t s = (future ? -d : d) / 1000;
  char v[32];
  if (s < 120)
    snprintf(v, sizeof v, "%llds", (long long)s);
  else if (s < 2 * 3600)
    snprintf(v, sizeof v, "%lldm", (long long)(s / 60));
  else if (s < 2 * 86400)
    snprintf(v, sizeof v, "%lldh", (long long)(s / 3600));
  else
    snprintf(v, sizeof v, "%lldd", (long long)(s / 86400));
  snprintf(buf, len, future ? "in %s" : "%s", v);
}

int64_t ctl_time_ms(const json_t *v) {
  if (json_is_number(v)) {
    double x = json_number_value(v);
    /* Seconds and milliseconds since 1970 are years apart: 1e11 s is the year 5138, 1e11 ms is 1973. */
    return x <= 0 ? 0 : x < 1e11 ? (int64_t)(x * 1000) : (int64_t)x;
  }
  if (json_is_string(v)) {
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    const char *s = json_string_value(v);
    const char *rest = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
    if (rest == NULL)
      return 0;
    int64_t ms = (int64_t)timegm(&tm) * 1000;
    if (*rest == '.') {
      int64_t frac = 0, scale = 100;
      for (rest++; *rest >= '0' && *rest <= '9'; rest++, scale /= 10)
        frac += (*rest - '0') * scale;
      ms += frac;
    }
    int sign = *rest == '+' ? -1 : *rest == '-' ? 1 : 0;
    int hh = 0, mm = 0;
    if (sign && sscanf(rest + 1, "%2d:%2d", &hh, &mm) == 2)
      ms += sign * ((int64_t)hh * 3600 + mm * 60) * 1000;
    return ms;
  }
  return 0;
}

void ctl_fmt_bytes(double b, char *buf, size_t len) {
  static const char *const units[] = {"B", "Ki", "Mi", "Gi", "Ti", "Pi"};
  size_t u = 0;
  while (b >= 1024 && u + 1 < sizeof units / sizeof units[0]) {
    b /= 1024;
    u++;
  }
  if (u == 0)
    snprintf(buf, len, "%.0f%s", b, units[u]);
  else
    snprintf(buf, len, "%.1f%s", b, units[u]);
}
