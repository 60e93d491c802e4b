/* SPDX-License-Identifier: Apache-2.0 */
/* Next-fire and latest-missed slots of a schedule in a time zone, under the DST policy of dibba/cron.h. */
#include <errno.h>
#include <stdint.h>

#include "cron_int.h"

static int day_matches(const dibba_cron_t *c, int64_t dom, int wday) {
  int d = (c->dom >> dom) & 1, w = (c->dow >> wday) & 1;
  if (c->flags & (DIBBA_CRON_DOM_STAR | DIBBA_CRON_DOW_STAR))
    return d && w;
  return d || w;
}

/* The instants at which local wall time `local` fires; returns how many (0..2). */
static int fires_at(const dibba_cron_t *c, const dibba_tz_t *tz, int64_t local, int64_t out[2]) {
  int64_t gap;
  int n = dibba_tz_local_to_utc(tz, local, out, &gap);
  if (c->flags & DIBBA_CRON_HOUR_WILD)
    return n; /* elapsed real time: every real occurrence, none in a gap */
  /* Fixed time: the first instant whose local time is `local` or later. */
  if (n == 0) {
    if (gap == INT64_MAX)
      return 0;
    out[0] = gap;
    return 1;
  }
  if (gap < out[0])
    out[0] = gap;
  return 1;
}

static int cron_next(const dibba_cron_t *c, const dibba_tz_t *tz, int64_t after, int64_t *out) {
  if (c->minute == 0 || c->hour == 0 || c->month == 0 || (c->dom == 0 && c->dow == 0))
    return -EINVAL;
  /* A fire at t > after has local wall time >= after + (smallest offset near after), so the local scan starts
   * there; once a fire `best` is known, no wall time past best + (largest offset near best) can beat it. */
  int32_t lo, hi;
  dibba__tz_off_range(tz, after, after + 2 * 86400, &lo, &hi);
  int64_t lmin = after + lo + 1, best = INT64_MAX, stop = INT64_MAX;
  int64_t day = dibba__floor_div(lmin, 86400);
  int64_t last_day = day + (int64_t)DIBBA_CRON_SEARCH_YEARS * 366 + 1;

  while (day <= last_day) {
    int64_t y, m, d;
    if (day * 86400 > stop)
      break;
    dibba__civil_from_days(day, &y, &m, &d);
    if (!((c->month >> m) & 1)) {
      day += dibba__month_days(y, (int)m) - d + 1; /* the first of the next month */
      continue;
    }
    if (!day_matches(c, d, dibba__weekday(day))) {
      day++;
      continue;
    }
    for (int h = 0; h < 24; h++) {
      if (!((c->hour >> h) & 1))
        continue;
      for (int mi = 0; mi < 60; mi++) {
        if (!((c->minute >> mi) & 1))
          continue;
        int64_t local = day * 86400 + h * 3600 + mi * 60, f[2];
        if (local < lmin)
          continue;
        if (local > stop)
          goto done;
        int n = fires_at(c, tz, local, f);
        for (int i = 0; i < n; i++)
          if (f[i] > after && f[i] < best) {
            best = f[i];
            dibba__tz_off_range(tz, best - 2 * 86400, best, &lo, &hi);
            stop = best + hi;
          }
      }
    }
    day++;
  }
done:
  if (best == INT64_MAX)
    return -ENOENT;
  *out = best;
  return 0;
}

int dibba_schedule_next(const dibba_schedule_t *s, const dibba_tz_t *tz, int64_t after, int64_t *out) {
  if (after < DIBBA_SCHED_TIME_MIN || after > DIBBA_SCHED_TIME_MAX)
    return -ERANGE;
  if (s->kind == DIBBA_SCHED_EVERY) {
    if (s->every < 1 || s->every > DIBBA_EVERY_MAX)
      return -EINVAL;
    *out = (dibba__floor_div(after, s->every) + 1) * s->every;
    return 0;
  }
  if (s->kind != DIBBA_SCHED_CRON)
    return -EINVAL;
  if (tz == NULL)
    tz = dibba__tz_utc();
  return cron_next(&s->cron, tz, after, out);
}

int dibba_schedule_latest(const dibba_schedule_t *s, const dibba_tz_t *tz, int64_t from, int64_t upto, int64_t *out) {
  int64_t t, latest = INT64_MIN;
  int r;
  if (upto <= from)
    return -ENOENT;
  if (s->kind == DIBBA_SCHED_EVERY) {
    if (s->every < 1 || s->every > DIBBA_EVERY_MAX)
      return -EINVAL;
    if (upto < DIBBA_SCHED_TIME_MIN || upto > DIBBA_SCHED_TIME_MAX)
      return -ERANGE;
    t = dibba__floor_div(upto, s->every) * s->every;
    if (t <= from)
      return -ENOENT;
    *out = t;
    return 0;
  }
  for (t = from; (r = dibba_schedule_next(s, tz, t, &t)) == 0 && t <= upto;)
    latest = t;
  if (r < 0 && r != -ENOENT)
    return r;
  if (latest == INT64_MIN)
    return -ENOENT;
  *out = latest;
  return 0;
}
