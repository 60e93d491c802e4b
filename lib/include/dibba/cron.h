/* SPDX-License-Identifier: Apache-2.0 */
/* Schedules: cron expressions, `every` intervals, IANA time zones read from TZif files, next-fire times. */
#ifndef DIBBA_CRON_H
#define DIBBA_CRON_H

#include <stddef.h>
#include <stdint.h>

/*
 * Daylight-saving policy (times are seconds since the Unix epoch; a "slot" is the UTC instant of a firing).
 *
 * - A fixed-time cron job is one whose hour field is not `*` and has no step (`0 2 * * *`, `30 1,13 * * *`,
 *   `* 2 * * *`). For every matching local wall time L it fires once, at the first instant whose local time is
 *   L or later. So in a repeated hour (fall back) it fires once, at the first occurrence; and when L is skipped
 *   (spring forward) it fires right after the jump, at the transition instant (02:30 skipped in Berlin fires at
 *   03:00 CEST). Several skipped wall times that map to the same instant make one slot.
 * - A wildcard-hour cron job (hour field `*`, `*\/N` or any step) is due by elapsed real time: it fires at every
 *   instant whose local wall time matches. In a repeated hour `0 * * * *` fires every real hour (both 01:00s)
 *   and `*\/15 * * * *` every 15 real minutes; wall times skipped by a jump do not exist and do not fire.
 * - `every` jobs ignore the zone: slots are multiples of the interval since the Unix epoch (UTC), so every
 *   replica computes the same slots without shared state.
 * - Day of month and day of week follow Vixie cron: when both fields are restricted a day matches if either
 *   matches; when either field starts with `*` (including `*\/2`) both must match. 0 and 7 are Sunday.
 */

#define DIBBA_CRON_MAX_LEN 256        /* longest accepted expression */
#define DIBBA_EVERY_MAX (366 * 86400) /* longest `every` interval, seconds */
#define DIBBA_CRON_SEARCH_YEARS 10    /* next-fire searches this far ahead (Feb 29 can be 8 years away) */
#define DIBBA_TZ_NAME_MAX 128
#define DIBBA_TZ_FILE_MAX (256 * 1024)
/* Range of instants the schedule functions accept (0001..9999 give or take); outside: -ERANGE. */
#define DIBBA_SCHED_TIME_MIN (-62135596800LL)
#define DIBBA_SCHED_TIME_MAX (253402300799LL - (int64_t)(DIBBA_CRON_SEARCH_YEARS + 1) * 366 * 86400)

/* ---- Time zones --------------------------------------------------------------------------------------- */

/* A zone: TZif transitions and types, plus the POSIX TZ footer rule for times after the last transition.
 * Immutable once loaded, so it may be shared between threads. */
typedef struct dibba_tz_s dibba_tz_t;

/* The zone named name ("Europe/Berlin", "UTC"), from $TZDIR or /usr/share/zoneinfo, cached for the life of the
 * process (the cache is thread-safe; the pointer stays valid until dibba_tz_cache_clear). "UTC" is built in.
 * Names are checked ([A-Za-z0-9_+-] components separated by '/', no "..", at most DIBBA_TZ_NAME_MAX bytes).
 * Reads one small file: call it at start-up or off the loop. Returns 0, -EINVAL (bad name or bad file),
 * -ENOENT (unknown zone), -EFBIG, or a negative errno, with a one-line reason in err. */
int dibba_tz_get(const char *name, const dibba_tz_t **out, char *err, size_t errlen);
/* Free every cached zone (at exit, for leak checkers). No zone obtained before may be used afterwards. */
void dibba_tz_cache_clear(void);
/* Parse a TZif (version 2 or later) image. On success *out is a new zone the caller frees with dibba_tz_free.
 * Returns 0 or -EINVAL with a reason in err. Leap-second ("right/") zones are rejected. */
int dibba_tz_parse(const char *name, const void *data, size_t len, dibba_tz_t **out, char *err, size_t errlen);
/* Free a zone from dibba_tz_parse (not a cached one). NULL is ignored. */
void dibba_tz_free(dibba_tz_t *tz);
/* The zone's name (owned by the zone). */
const char *dibba_tz_name(const dibba_tz_t *tz);

/* UTC offset (seconds east of Greenwich) in effect at instant utc; *isdst (may be NULL) gets the DST flag.
 * *next (may be NULL) gets the next instant at which the offset may change, or INT64_MAX. */
int32_t dibba_tz_offset(const dibba_tz_t *tz, int64_t utc, int *isdst, int64_t *next);
/* The instants whose local wall time (local = utc + offset, counted like UTC seconds) is local. Returns how many
 * were written to cand (0, 1 or 2, ascending; a repeated hour gives 2). When local falls in a gap, returns 0 and
 * *after_gap (may be NULL) gets the transition instant, the first one after the gap; otherwise INT64_MAX. */
int dibba_tz_local_to_utc(const dibba_tz_t *tz, int64_t local, int64_t cand[2], int64_t *after_gap);

/* ---- Cron expressions and intervals ------------------------------------------------------------------- */

enum {
  DIBBA_CRON_DOM_STAR = 1,  /* day-of-month field starts with '*' */
  DIBBA_CRON_DOW_STAR = 2,  /* day-of-week field starts with '*' */
  DIBBA_CRON_HOUR_WILD = 4, /* hour field is '*' or has a step: due by elapsed real time (see above) */
};

/* A parsed 5-field expression as bit sets. */
typedef struct dibba_cron_s {
  uint64_t minute; /* bits 0..59 */
  uint32_t hour;   /* bits 0..23 */
  uint32_t dom;    /* bits 1..31 */
  uint16_t month;  /* bits 1..12 */
  uint8_t dow;     /* bits 0..6, Sunday = 0 */
  uint8_t flags;   /* DIBBA_CRON_* */
} dibba_cron_t;

/* Parse "m h dom mon dow" (ranges a-b, steps * /n and a-b/n and a/n (= a-max/n), lists, JAN-DEC, SUN-SAT, 0 or 7
 * for Sunday; names are case-insensitive) or @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly.
 * Returns 0, or -EINVAL with *errpos (may be NULL) set to the character offset of the error and a one-line
 * reason in err ("at 12: unknown day name \"FOO\""). */
int dibba_cron_parse(const char *expr, dibba_cron_t *out, size_t *errpos, char *err, size_t errlen);

/* Parse an interval: one or more <number><unit> with units d, h, m, s in that order, each at most once
 * ("30s", "5m", "1h30m", "2d"). The total must be 1 s .. DIBBA_EVERY_MAX. Returns 0 and *seconds, or -EINVAL
 * with *errpos and a reason in err. */
int dibba_every_parse(const char *text, int64_t *seconds, size_t *errpos, char *err, size_t errlen);

/* ---- Schedules -------------------------------------------------------------------------------------------- */

typedef enum { DIBBA_SCHED_EVERY = 1, DIBBA_SCHED_CRON = 2 } dibba_sched_kind_t;

typedef struct dibba_schedule_s {
  dibba_sched_kind_t kind;
  int64_t every;     /* DIBBA_SCHED_EVERY: seconds */
  dibba_cron_t cron; /* DIBBA_SCHED_CRON */
} dibba_schedule_t;

/* First slot strictly after `after` under the policy above. tz may be NULL for UTC (every ignores it).
 * Returns 0, -ENOENT if a cron schedule never fires within DIBBA_CRON_SEARCH_YEARS ("0 0 30 2 *"), -ERANGE if
 * after is outside [DIBBA_SCHED_TIME_MIN, DIBBA_SCHED_TIME_MAX], -EINVAL for a malformed schedule. */
int dibba_schedule_next(const dibba_schedule_t *s, const dibba_tz_t *tz, int64_t after, int64_t *out);
/* The latest slot in (from, upto], for coalescing missed slots. Returns 0, -ENOENT if there is none, or the
 * errors of dibba_schedule_next. Cost grows with the number of slots in the range for cron schedules. */
int dibba_schedule_latest(const dibba_schedule_t *s, const dibba_tz_t *tz, int64_t from, int64_t upto, int64_t *out);

#endif
