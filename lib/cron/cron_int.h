/* SPDX-License-Identifier: Apache-2.0 */
/* Private declarations of lib/cron: the zone layout and civil-date arithmetic shared by its files. */
#ifndef DIBBA_CRON_INT_H
#define DIBBA_CRON_INT_H

#include <stdint.h>

#include "dibba/cron.h"

/* One POSIX TZ rule date: Jn (kind 'J', day 1..365, Feb 29 never counted), n (kind 'N', day 0..365) or
 * Mm.w.d (kind 'M'); time is the local wall time of the change, seconds (may be negative or past 24 h). */
typedef struct tz_rule_s {
  int kind;
  int day;
  int month, week, wday;
  int32_t time;
} tz_rule_t;

typedef struct tz_type_s {
  int32_t off;
  uint8_t isdst;
} tz_type_t;

struct dibba_tz_s {
  char *name;
  int64_t *trans; /* ascending transition instants */
  uint8_t *idx;   /* type index per transition */
  size_t ntrans;
  tz_type_t *types;
  size_t ntypes;
  int has_rule, has_dst; /* footer present; footer has a DST part */
  int32_t std_off, dst_off;
  tz_rule_t start, end;
  int32_t min_off, max_off; /* over every type and the footer */
  struct dibba_tz_s *next;  /* cache list */
};

/* The built-in UTC zone (static, never freed). */
const dibba_tz_t *dibba__tz_utc(void);
/* Parse a POSIX TZ string into tz's footer fields. Returns 0 or -1. */
int dibba__tz_parse_posix(dibba_tz_t *tz, const char *s);
/* Smallest and largest offset in effect at any instant of [t0, t1]. */
void dibba__tz_off_range(const dibba_tz_t *tz, int64_t t0, int64_t t1, int32_t *lo, int32_t *hi);

static inline int64_t dibba__floor_div(int64_t a, int64_t b) { return a / b - ((a % b != 0) && ((a < 0) != (b < 0))); }

static inline int dibba__is_leap(int64_t y) { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }

static inline int dibba__month_days(int64_t y, int m) {
  static const int d[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  return m == 2 && dibba__is_leap(y) ? 29 : d[m - 1];
}

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm). */
static inline int64_t dibba__days_from_civil(int64_t y, int64_t m, int64_t d) {
  y -= m <= 2;
  int64_t era = dibba__floor_div(y, 400);
  int64_t yoe = y - era * 400;
  int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

static inline void dibba__civil_from_days(int64_t z, int64_t *y, int64_t *m, int64_t *d) {
  z += 719468;
  int64_t era = dibba__floor_div(z, 146097);
  int64_t doe = z - era * 146097;
  int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  int64_t mp = (5 * doy + 2) / 153;
  *d = doy - (153 * mp + 2) / 5 + 1;
  *m = mp < 10 ? mp + 3 : mp - 9;
  *y = yoe + era * 400 + (*m <= 2);
}

/* 0 = Sunday. */
static inline int dibba__weekday(int64_t days) { return (int)(((days % 7) + 11) % 7); }

#endif
