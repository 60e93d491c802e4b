/* SPDX-License-Identifier: Apache-2.0 */
/* Unit tests for lib/cron: cron expressions, intervals, TZif zones and DST policy, job files, the scheduler. */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dibba/alloc.h"
#include "dibba/beat.h"
#include "dibba/buf.h"
#include "dibba/cron.h"

/* UTC instant of a calendar time. */
static int64_t utc(int y, int mo, int d, int h, int mi) {
  struct tm tm = {.tm_year = y - 1900, .tm_mon = mo - 1, .tm_mday = d, .tm_hour = h, .tm_min = mi};
  return (int64_t)timegm(&tm);
}

static const dibba_tz_t *zone(const char *name) {
  const dibba_tz_t *tz = NULL;
  char err[256];
  int r = dibba_tz_get(name, &tz, err, sizeof err);
  ck_assert_msg(r == 0, "zone %s: %s", name, err);
  return tz;
}

static dibba_schedule_t cron(const char *expr) {
  dibba_schedule_t s = {.kind = DIBBA_SCHED_CRON};
  char err[256];
  int r = dibba_cron_parse(expr, &s.cron, NULL, err, sizeof err);
  ck_assert_msg(r == 0, "%s: %s", expr, err);
  return s;
}

/* The next n slots after t. */
static void next_n(const char *expr, const char *zname, int64_t t, int64_t *out, int n) {
  dibba_schedule_t s = cron(expr);
  const dibba_tz_t *tz = zone(zname);
  for (int i = 0; i < n; i++) {
    ck_assert_int_eq(dibba_schedule_next(&s, tz, t, &out[i]), 0);
    t = out[i];
  }
}

START_TEST(berlin_daily_0200_across_dst) {
  int64_t f[3];
  /* Spring forward 2023-03-26: 02:00 CET does not exist; fires at 03:00 CEST = 01:00 UTC. */
  next_n("0 2 * * *", "Europe/Berlin", utc(2023, 3, 24, 12, 0), f, 3);
  ck_assert_int_eq(f[0], utc(2023, 3, 25, 1, 0)); /* 02:00 CET */
  ck_assert_int_eq(f[1], utc(2023, 3, 26, 1, 0)); /* right after the jump */
  ck_assert_int_eq(f[2], utc(2023, 3, 27, 0, 0)); /* 02:00 CEST */
  /* Fall back 2023-10-29: 02:00 happens twice; fires once, at the first (CEST) = 00:00 UTC. */
  next_n("0 2 * * *", "Europe/Berlin", utc(2023, 10, 27, 12, 0), f, 3);
  ck_assert_int_eq(f[0], utc(2023, 10, 28, 0, 0));
  ck_assert_int_eq(f[1], utc(2023, 10, 29, 0, 0));
  ck_assert_int_eq(f[2], utc(2023, 10, 30, 1, 0)); /* 02:00 CET; not 01:00 UTC on the 29th */
  /* Starting between the two 02:00s does not fire the second one. */
  int64_t t;
  dibba_schedule_t s = cron("0 2 * * *");
  ck_assert_int_eq(dibba_schedule_next(&s, zone("Europe/Berlin"), utc(2023, 10, 29, 0, 30), &t), 0);
  ck_assert_int_eq(t, utc(2023, 10, 30, 1, 0));
  /* A skipped 02:30 also fires at the jump. */
  next_n("30 2 * * *", "Europe/Berlin", utc(2023, 3, 25, 12, 0), f, 1);
  ck_assert_int_eq(f[0], utc(2023, 3, 26, 1, 0));
}
END_TEST

START_TEST(pacific_hourly_fall_back) {
  /* 2023-11-05 01:00 PDT = 08:00 UTC, 01:00 PST = 09:00 UTC, 02:00 PST = 10:00 UTC. */
  int64_t f[5];
  next_n("0 * * * *", "US/Pacific", utc(2023, 11, 5, 6, 30), f, 5);
  for (int i = 0; i < 5; i++)
    ck_assert_int_eq(f[i], utc(2023, 11, 5, 7 + i, 0)); /* every real hour, both 01:00s */
  /* Every 15 real minutes through the repeated hour. */
  int64_t q[9];
  next_n("*/15 * * * *", "US/Pacific", utc(2023, 11, 5, 7, 59), q, 9);
  for (int i = 0; i < 9; i++)
    ck_assert_int_eq(q[i], utc(2023, 11, 5, 8, 0) + i * 900);
  /* Spring forward 2023-03-12: local 02:00 does not exist, an hourly job fires 01:00 PST then 03:00 PDT. */
  next_n("0 * * * *", "US/Pacific", utc(2023, 3, 12, 8, 30), f, 2);
  ck_assert_int_eq(f[0], utc(2023, 3, 12, 9, 0));
  ck_assert_int_eq(f[1], utc(2023, 3, 12, 10, 0));
}
END_TEST

START_TEST(feb_29_and_never) {
  int64_t t;
  dibba_schedule_t s = cron("0 0 29 2 *");
  ck_assert_int_eq(dibba_schedule_next(&s, NULL, utc(2023, 3, 1, 0, 0), &t), 0);
  ck_assert_int_eq(t, utc(2024, 2, 29, 0, 0));
  ck_assert_int_eq(dibba_schedule_next(&s, NULL, t, &t), 0);
  ck_assert_int_eq(t, utc(2028, 2, 29, 0, 0));
  /* 2100 is not a leap year: eight years from 2096 to 2104. */
  ck_assert_int_eq(dibba_schedule_next(&s, NULL, utc(2096, 3, 1, 0, 0), &t), 0);
  ck_assert_int_eq(t, utc(2104, 2, 29, 0, 0));
  s = cron("0 0 30 2 *");
  ck_assert_int_eq(dibba_schedule_next(&s, zone("Europe/Berlin"), utc(2023, 1, 1, 0, 0), &t), -ENOENT);
  s = cron("0 0 31 4,6,9,11 *");
  ck_assert_int_eq(dibba_schedule_next(&s, NULL, utc(2023, 1, 1, 0, 0), &t), -ENOENT);
  ck_assert_int_eq(dibba_schedule_next(&s, NULL, INT64_MAX, &t), -ERANGE);
}
END_TEST

static void bad(const char *expr, size_t pos, const char *reason) {
  dibba_cron_t c;
  size_t at = 9999;
  char err[256] = "";
  ck_assert_msg(dibba_cron_parse(expr, &c, &at, err, sizeof err) == -EINVAL, "accepted: %s", expr);
  ck_assert_msg(at == pos, "%s: position %zu, want %zu (%s)", expr, at, pos, err);
  ck_assert_msg(strstr(err, reason) != NULL, "%s: \"%s\" lacks \"%s\"", expr, err, reason);
}

START_TEST(cron_rejects_with_position) {
  bad("60 * * * *", 0, "minute out of range");
  bad("* * * * MON-FOO", 12, "unknown day name \"FOO\"");
  bad("* * * *", 7, "too few fields");
  bad("* * * * * *", 10, "too many fields");
  bad("*/0 * * * *", 2, "step 0");
  bad("0 5-2 * * *", 2, "reversed range");
  bad("0 0 0 * *", 4, "day of month out of range");
  bad("0 0 * 13 *", 6, "month out of range");
  bad("0 0 * FOO *", 6, "unknown month name");
  bad("0 0 * * 8", 8, "day of week out of range");
  bad("1,,2 * * * *", 2, "empty list element");
  bad("*/90 * * * *", 2, "step larger");
  bad("5x * * * *", 1, "unexpected character");
  bad("@reboot", 0, "unknown macro");
  bad("@daily 5", 7, "unexpected text");
  bad("", 0, "too few fields");
  bad("0 JAN * * *", 2, "names are not allowed");
  bad("0 0 * * SAT-SUN", 8, "reversed range");
}
END_TEST

START_TEST(cron_fields_names_lists_steps) {
  dibba_cron_t c;
  char err[256];
  ck_assert_int_eq(dibba_cron_parse(" 0,30 9-17/2 * jan,Jul-sep mon-FRI ", &c, NULL, err, sizeof err), 0);
  ck_assert_uint_eq(c.minute, 1ULL | 1ULL << 30);
  ck_assert_uint_eq(c.hour, 1u << 9 | 1u << 11 | 1u << 13 | 1u << 15 | 1u << 17);
  ck_assert_uint_eq(c.month, 1u << 1 | 1u << 7 | 1u << 8 | 1u << 9);
  ck_assert_uint_eq(c.dow, 0x3e);
  ck_assert_int_eq(c.flags, DIBBA_CRON_DOM_STAR | DIBBA_CRON_HOUR_WILD);
  /* 0 and 7 are both Sunday; a/n is a-max/n. */
  ck_assert_int_eq(dibba_cron_parse("50/5 0 * * 7", &c, NULL, err, sizeof err), 0);
  ck_assert_uint_eq(c.dow, 1);
  ck_assert_uint_eq(c.minute, 1ULL << 50 | 1ULL << 55);
  ck_assert_int_eq(c.flags & DIBBA_CRON_HOUR_WILD, 0);
  ck_assert_int_eq(dibba_cron_parse("0 0 * * 0", &c, NULL, err, sizeof err), 0);
  ck_assert_uint_eq(c.dow, 1);
  ck_assert_int_eq(dibba_cron_parse("0 0 * * 5-7", &c, NULL, err, sizeof err), 0);
  ck_assert_uint_eq(c.dow, 1u | 1u << 5 | 1u << 6);

  /* DOM/DOW OR semantics when both are restricted: the 13th, or any Friday. 2023-01-06 is a Friday. */
  int64_t f[3];
  next_n("0 12 13 * FRI", "UTC", utc(2023, 1, 1, 0, 0), f, 3);
  ck_assert_int_eq(f[0], utc(2023, 1, 6, 12, 0));
  ck_assert_int_eq(f[1], utc(2023, 1, 13, 12, 0)); /* a Friday and the 13th: once */
  ck_assert_int_eq(f[2], utc(2023, 1, 20, 12, 0));
  next_n("0 12 14 * FRI", "UTC", utc(2023, 1, 7, 0, 0), f, 2);
  ck_assert_int_eq(f[0], utc(2023, 1, 13, 12, 0));
  ck_assert_int_eq(f[1], utc(2023, 1, 14, 12, 0)); /* a Saturday: matched by day of month */
  /* With a '*' day of month (even a step), both must match: odd days that are Mondays. */
  next_n("0 0 */2 * MON", "UTC", utc(2023, 1, 1, 0, 0), f, 2);
  ck_assert_int_eq(f[0], utc(2023, 1, 9, 0, 0));
  ck_assert_int_eq(f[1], utc(2023, 1, 23, 0, 0));
}
END_TEST

START_TEST(cron_macros) {
  static const struct {
    const char *macro, *expr;
  } m[] = {{"@yearly", "0 0 1 1 *"}, {"@annually", "0 0 1 1 *"}, {"@monthly", "0 0 1 * *"}, {"@weekly", "0 0 * * 0"},
           {"@daily", "0 0 * * *"},  {"@MIDNIGHT", "0 0 * * *"}, {"@hourly", "0 * * * *"}};
  for (size_t i = 0; i < sizeof m / sizeof m[0]; i++) {
    dibba_cron_t a, b;
    char err[256];
    ck_assert_int_eq(dibba_cron_parse(m[i].macro, &a, NULL, err, sizeof err), 0);
    ck_assert_int_eq(dibba_cron_parse(m[i].expr, &b, NULL, err, sizeof err), 0);
    ck_assert_int_eq(memcmp(&a, &b, sizeof a), 0);
  }
  int64_t f[2];
  next_n("@yearly", "America/New_York", utc(2023, 6, 1, 0, 0), f, 2);
  ck_assert_int_eq(f[0], utc(2024, 1, 1, 5, 0));
  ck_assert_int_eq(f[1], utc(2025, 1, 1, 5, 0));
  next_n("@weekly", "UTC", utc(2023, 6, 1, 0, 0), f, 1);
  ck_assert_int_eq(f[0], utc(2023, 6, 4, 0, 0));
}
END_TEST

START_TEST(every_intervals) {
  static const struct {
    const char *text;
    int64_t secs;
  } ok[] = {{"30s", 30},    {"5m", 300},         {"1h", 3600},          {"1h30m", 5400},
            {"2d", 172800}, {"1d2h3m4s", 93784}, {"366d", 366 * 86400}, {"1s", 1}};
  static const struct {
    const char *text;
    size_t pos;
    const char *reason;
  } ko[] = {{"", 0, "empty"},
            {"0s", 0, "shorter than 1 second"},
            {"367d", 0, "longer than 366 days"},
            {"30", 2, "unit"},
            {"30m1h", 4, "order"},
            {"1h1h", 3, "order"},
            {"h", 0, "number"},
            {"5 m", 1, "unit"},
            {"1x", 1, "unit"},
            {"99999999999d", 0, "longer"}};
  char err[256];
  for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
    int64_t s = 0;
    ck_assert_msg(dibba_every_parse(ok[i].text, &s, NULL, err, sizeof err) == 0, "%s: %s", ok[i].text, err);
    ck_assert_int_eq(s, ok[i].secs);
  }
  for (size_t i = 0; i < sizeof ko / sizeof ko[0]; i++) {
    int64_t s;
    size_t pos = 999;
    ck_assert_msg(dibba_every_parse(ko[i].text, &s, &pos, err, sizeof err) == -EINVAL, "accepted %s", ko[i].text);
    ck_assert_msg(pos == ko[i].pos && strstr(err, ko[i].reason), "%s: %zu %s", ko[i].text, pos, err);
  }
  /* Slots are multiples of the interval since the epoch, whatever the zone. */
  dibba_schedule_t s = {.kind = DIBBA_SCHED_EVERY, .every = 300};
  int64_t t;
  ck_assert_int_eq(dibba_schedule_next(&s, zone("US/Pacific"), utc(2023, 11, 5, 8, 59), &t), 0);
  ck_assert_int_eq(t, utc(2023, 11, 5, 9, 0));
  ck_assert_int_eq(dibba_schedule_next(&s, NULL, t, &t), 0);
  ck_assert_int_eq(t, utc(2023, 11, 5, 9, 5));
}
END_TEST

START_TEST(tz_footer_after_last_transition) {
  const dibba_tz_t *ber = zone("Europe/Berlin"), *ny = zone("America/New_York");
  int dst;
  /* 2040 and 2100 are past the 64-bit table of a "fat" file (ends 2037) and of a "slim" one (ends 2007). */
  ck_assert_int_eq(dibba_tz_offset(ber, utc(2040, 1, 15, 0, 0), &dst, NULL), 3600);
  ck_assert_int_eq(dst, 0);
  ck_assert_int_eq(dibba_tz_offset(ber, utc(2040, 7, 15, 0, 0), &dst, NULL), 7200);
  ck_assert_int_eq(dst, 1);
  /* EU rule M3.5.0/M10.5.0/3: 2040-03-25 and 2040-10-28 at 01:00 UTC. */
  ck_assert_int_eq(dibba_tz_offset(ber, utc(2040, 3, 25, 0, 59), NULL, NULL), 3600);
  ck_assert_int_eq(dibba_tz_offset(ber, utc(2040, 3, 25, 1, 0), NULL, NULL), 7200);
  ck_assert_int_eq(dibba_tz_offset(ber, utc(2040, 10, 28, 0, 59), NULL, NULL), 7200);
  ck_assert_int_eq(dibba_tz_offset(ber, utc(2040, 10, 28, 1, 0), NULL, NULL), 3600);
  /* US rule M3.2.0/M11.1.0 at 02:00 local: 2100-03-14 07:00 UTC and 2100-11-07 06:00 UTC. */
  int64_t next;
  ck_assert_int_eq(dibba_tz_offset(ny, utc(2100, 3, 14, 6, 59), &dst, &next), -5 * 3600);
  ck_assert_int_eq(next, utc(2100, 3, 14, 7, 0));
  ck_assert_int_eq(dibba_tz_offset(ny, utc(2100, 3, 14, 7, 0), &dst, &next), -4 * 3600);
  ck_assert_int_eq(next, utc(2100, 11, 7, 6, 0));
  ck_assert_int_eq(dibba_tz_offset(ny, utc(2100, 11, 7, 6, 0), &dst, NULL), -5 * 3600);
  /* Local -> UTC around a footer gap and overlap. */
  int64_t cand[2], gap;
  ck_assert_int_eq(dibba_tz_local_to_utc(ber, utc(2040, 3, 25, 2, 30), cand, &gap), 0);
  ck_assert_int_eq(gap, utc(2040, 3, 25, 1, 0));
  ck_assert_int_eq(dibba_tz_local_to_utc(ber, utc(2040, 10, 28, 2, 30), cand, &gap), 2);
  ck_assert_int_eq(cand[0], utc(2040, 10, 28, 0, 30));
  ck_assert_int_eq(cand[1], utc(2040, 10, 28, 1, 30));
  /* The DST policy holds for footer years too. */
  int64_t f[2];
  next_n("0 2 * * *", "Europe/Berlin", utc(2040, 3, 24, 12, 0), f, 2);
  ck_assert_int_eq(f[0], utc(2040, 3, 25, 1, 0));
  ck_assert_int_eq(f[1], utc(2040, 3, 26, 0, 0));
  /* The table and the footer agree where both apply (2023). */
  ck_assert_int_eq(dibba_tz_offset(ny, utc(2023, 7, 1, 0, 0), NULL, NULL), -4 * 3600);
}
END_TEST

START_TEST(tz_names_and_files) {
  const dibba_tz_t *tz;
  char err[256];
  ck_assert_int_eq(dibba_tz_get("../etc/passwd", &tz, err, sizeof err), -EINVAL);
  ck_assert_int_eq(dibba_tz_get("Europe/../../etc", &tz, err, sizeof err), -EINVAL);
  ck_assert_int_eq(dibba_tz_get("/etc/passwd", &tz, err, sizeof err), -EINVAL);
  ck_assert_int_eq(dibba_tz_get("Mars/Olympus_Mons", &tz, err, sizeof err), -ENOENT);
  ck_assert_ptr_nonnull(strstr(err, "unknown time zone"));
  ck_assert_int_eq(dibba_tz_get("Europe", &tz, err, sizeof err), -ENOENT);
  ck_assert_int_eq(dibba_tz_get("UTC", &tz, err, sizeof err), 0);
  ck_assert_str_eq(dibba_tz_name(tz), "UTC");
  const dibba_tz_t *a = zone("Asia/Kolkata"), *b = zone("Asia/Kolkata");
  ck_assert_ptr_eq(a, b); /* cached */
  ck_assert_int_eq(dibba_tz_offset(a, utc(2023, 1, 1, 0, 0), NULL, NULL), 5 * 3600 + 1800);
  dibba_tz_t *p;
  ck_assert_int_eq(dibba_tz_parse("x", "TZif1", 5, &p, err, sizeof err), -EINVAL);
  /* A hand-made v2 file: no transitions, footer only. */
  static const unsigned char v2[] = {'T', 'Z', 'i', 'f', '2', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                     0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 'A',
                                     'B', 'C', 0,
                                     /* v2 header */
                                     'T', 'Z', 'i', 'f', '2', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                     0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 4, 0, 0, 0x0e, 0x10, 0, 0,
                                     'A', 'B', 'C', 0, '\n', '<', '+', '0', '1', '>', '-', '1', '\n'};
  ck_assert_msg(dibba_tz_parse("made", v2, sizeof v2, &p, err, sizeof err) == 0, "%s", err);
  ck_assert_int_eq(dibba_tz_offset(p, utc(2030, 1, 1, 0, 0), NULL, NULL), 3600);
  dibba_tz_free(p);
  ck_assert_int_eq(dibba_tz_parse("made", v2, sizeof v2 - 2, &p, err, sizeof err), -EINVAL);
}
END_TEST

/* ---- Jobs ---------------------------------------------------------------------------------------------------- */

static int add(dibba_beat_jobs_t *set, const char *file, const char *text) {
  return dibba_beat_jobs_add_file(set, file, text, strlen(text));
}

/* The last error names file, field and reason. */
static void last_error(const dibba_beat_jobs_t *set, const char *file, const char *field, const char *reason) {
  ck_assert_uint_gt(set->nerrors, 0);
  const dibba_beat_error_t *e = &set->errors[set->nerrors - 1];
  ck_assert_str_eq(e->file, file);
  ck_assert_str_eq(e->field, field);
  ck_assert_msg(strstr(e->reason, reason) != NULL, "\"%s\" lacks \"%s\"", e->reason, reason);
}

#define JOB(name, sched)                                                                                               \
  "{\"name\":\"" name "\",\"task\":\"node.prune\",\"route\":{\"role\":\"control\"},\"schedule\":" sched "}"

START_TEST(job_files) {
  dibba_beat_jobs_t set;
  dibba_beat_jobs_init(&set);
  ck_assert_int_eq(add(&set, "a.json",
                       "{\"name\":\"backup\",\"task\":\"db.backup\",\"args\":{\"db\":\"main\"},\"route\":{\"host\":"
                       "\"db-1\"},\"schedule\":{\"cron\":\"0 2 * * *\"},\"timezone\":\"Europe/Berlin\",\"expires\":"
                       "600,\"starting_deadline\":900,\"enabled\":false}"),
                   0);
  dibba_beat_job_t *j = dibba_beat_jobs_find(&set, "backup");
  ck_assert_ptr_nonnull(j);
  ck_assert_str_eq(j->task, "db.backup");
  ck_assert_int_eq(j->route_kind, DIBBA_BEAT_ROUTE_HOST);
  ck_assert_str_eq(j->route, "db-1");
  ck_assert_str_eq(dibba_tz_name(j->tz), "Europe/Berlin");
  ck_assert_int_eq(j->expires, 600);
  ck_assert_int_eq(j->starting_deadline, 900);
  ck_assert_int_eq(j->enabled, 0);
  ck_assert_str_eq(json_string_value(json_object_get(j->args, "db")), "main");
  /* A list file, with the defaults. */
  ck_assert_int_eq(add(&set, "b.json",
                       "{\"jobs\":[" JOB("hb", "{\"every\":\"30s\"}") "," JOB("nightly", "{\"cron\":\"@daily\"}") "]}"),
                   0);
  j = dibba_beat_jobs_find(&set, "hb");
  ck_assert_int_eq(j->schedule.every, 30);
  ck_assert_int_eq(j->expires, 30);
  ck_assert_int_eq(j->starting_deadline, 30);
  ck_assert_int_eq(j->enabled, 1);
  ck_assert_str_eq(dibba_tz_name(j->tz), "UTC");
  ck_assert_int_eq(json_object_size(j->args), 0);
  j = dibba_beat_jobs_find(&set, "nightly");
  ck_assert_int_eq(j->expires, 3600);
  ck_assert_int_eq(j->starting_deadline, DIBBA_BEAT_CRON_DEADLINE);
  ck_assert_uint_eq(set.n, 3);
  ck_assert_uint_eq(set.nerrors, 0);

  /* Rejections: file, field and reason; the set keeps its jobs. */
  ck_assert_int_eq(add(&set, "c.json",
                       "{\"name\":\"x\",\"task\":\"t\",\"route\":{\"role\":\"r\"},\"schedule\":{"
                       "\"every\":\"1m\"},\"color\":\"red\"}"),
                   -EINVAL);
  last_error(&set, "c.json", "color", "unknown field");
  ck_assert_int_eq(
      add(&set, "d.json",
          "{\"jobs\":[" JOB("ok1", "{\"every\":\"1m\"}") "," JOB("bad", "{\"cron\":\"0 2 * * MON-FOO\"}") "]}"),
      -EINVAL);
  last_error(&set, "d.json", "jobs[1].schedule.cron", "at 12: unknown day name \"FOO\"");
  ck_assert_ptr_null(dibba_beat_jobs_find(&set, "ok1")); /* the whole file is rejected */
  ck_assert_int_eq(add(&set, "e.json", JOB("hb", "{\"every\":\"5m\"}")), -EINVAL);
  last_error(&set, "e.json", "name", "duplicate job name \"hb\" (already defined in b.json)");
  ck_assert_int_eq(
      add(&set, "f.json", "{\"jobs\":[" JOB("z1", "{\"every\":\"1m\"}") "," JOB("z1", "{\"every\":\"2m\"}") "]}"),
      -EINVAL);
  last_error(&set, "f.json", "jobs[1].name", "duplicate");
  ck_assert_int_eq(add(&set, "g.json", JOB("Bad Name", "{\"every\":\"1m\"}")), -EINVAL);
  last_error(&set, "g.json", "name", "[a-z0-9_.-]");
  ck_assert_int_eq(add(&set, "h.json", JOB("tz", "{\"every\":\"1m\"}")), 0);
  ck_assert_int_eq(add(&set, "i.json",
                       "{\"name\":\"tz2\",\"task\":\"t\",\"route\":{\"role\":\"r\"},\"schedule\":{"
                       "\"every\":\"1m\"},\"timezone\":\"Mars/Base\"}"),
                   -EINVAL);
  last_error(&set, "i.json", "timezone", "unknown time zone");
  ck_assert_int_eq(add(&set, "j.json", JOB("ev", "{\"every\":\"400d\"}")), -EINVAL);
  last_error(&set, "j.json", "schedule.every", "longer than 366 days");
  ck_assert_int_eq(add(&set, "k.json", JOB("two", "{\"every\":\"1m\",\"cron\":\"* * * * *\"}")), -EINVAL);
  last_error(&set, "k.json", "schedule", "required");
  ck_assert_int_eq(add(&set, "l.json",
                       "{\"name\":\"r\",\"task\":\"t\",\"route\":{\"host\":\"a\",\"role\":\"b\"},"
                       "\"schedule\":{\"every\":\"1m\"}}"),
                   -EINVAL);
  last_error(&set, "l.json", "route", "required");
  ck_assert_int_eq(add(&set, "m.json", "{\"name\": \"x\", "), -EINVAL);
  last_error(&set, "m.json", "", "line 1");
  ck_assert_int_eq(add(&set, "n.json",
                       "{\"name\":\"e\",\"task\":\"t\",\"route\":{\"role\":\"r\"},\"schedule\":{"
                       "\"every\":\"1m\"},\"expires\":0}"),
                   -EINVAL);
  last_error(&set, "n.json", "expires", "1..604800");
  ck_assert_uint_eq(set.n, 4);
  dibba_beat_jobs_free(&set);
  dibba_beat_jobs_free(&set);
}
END_TEST

static char *tmpdir(void) {
  char *d = dibba_xstrdup("/tmp/dibba-beat-XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(d));
  return d;
}

static void put(const char *dir, const char *name, const char *text) {
  char *p = dibba_xasprintf("%s/%s", dir, name);
  FILE *f = fopen(p, "w");
  ck_assert_ptr_nonnull(f);
  fputs(text, f);
  fclose(f);
  free(p);
}

static void rmdir_all(char *dir, const char *const *names) {
  for (; *names; names++) {
    char *p = dibba_xasprintf("%s/%s", dir, *names);
    unlink(p);
    free(p);
  }
  rmdir(dir);
  free(dir);
}

START_TEST(job_dir_and_caps) {
  char *dir = tmpdir();
  put(dir, "10-a.json", JOB("a", "{\"every\":\"1m\"}"));
  put(dir, "20-b.json", "{\"jobs\":[" JOB("b", "{\"cron\":\"*/5 * * * *\"}") "]}");
  put(dir, "30-bad.json", JOB("c", "{\"cron\":\"60 * * * *\"}"));
  put(dir, ".hidden.json", JOB("h", "{\"every\":\"1m\"}"));
  put(dir, "notes.txt", "not json");
  /* Over the size cap. */
  char *big = dibba_xmalloc(DIBBA_BEAT_FILE_MAX + 2);
  memset(big, ' ', DIBBA_BEAT_FILE_MAX + 1);
  big[DIBBA_BEAT_FILE_MAX + 1] = '\0';
  put(dir, "40-big.json", big);
  free(big);
  dibba_beat_jobs_t set;
  dibba_beat_jobs_init(&set);
  ck_assert_int_eq(dibba_beat_jobs_load_dir(&set, dir), 0);
  ck_assert_uint_eq(set.n, 2);
  ck_assert_uint_eq(set.files, 2);
  ck_assert_uint_eq(set.nerrors, 2);
  ck_assert_str_eq(set.errors[0].file, "30-bad.json");
  ck_assert_str_eq(set.errors[0].field, "schedule.cron");
  ck_assert_ptr_nonnull(strstr(set.errors[0].reason, "at 0: minute out of range"));
  ck_assert_str_eq(set.errors[1].file, "40-big.json");
  ck_assert_ptr_nonnull(strstr(set.errors[1].reason, "larger than"));
  dibba_beat_jobs_log_errors(&set);
  dibba_beat_jobs_free(&set);
  ck_assert_int_eq(dibba_beat_jobs_load_dir(&set, "/nonexistent-dibba"), -ENOENT);
  dibba_beat_jobs_free(&set);
  static const char *const names[] = {"10-a.json", "20-b.json",   "30-bad.json", ".hidden.json",
                                      "notes.txt", "40-big.json", NULL};
  rmdir_all(dir, names);

  /* At most DIBBA_BEAT_MAX_JOBS jobs. */
  dibba_beat_jobs_init(&set);
  dibba_buf_t b;
  dibba_buf_init(&b, 0);
  dibba_buf_adds(&b, "{\"jobs\":[");
  for (int i = 0; i < DIBBA_BEAT_MAX_JOBS; i++)
    dibba_buf_printf(&b,
                     "%s{\"name\":\"j%d\",\"task\":\"t\",\"route\":{\"role\":\"r\"},\"schedule\":{\"every\":"
                     "\"1m\"}}",
                     i ? "," : "", i);
  dibba_buf_adds(&b, "]}");
  ck_assert_int_eq(dibba_beat_jobs_add_file(&set, "many.json", b.data, b.len), 0);
  ck_assert_int_eq(add(&set, "one-more.json", JOB("x", "{\"every\":\"1m\"}")), -E2BIG);
  last_error(&set, "one-more.json", "", "more than 1000 jobs");
  dibba_buf_free(&b);
  dibba_beat_jobs_free(&set);
}
END_TEST

typedef struct {
  int n;
  char names[8][32];
  int64_t slots[8];
} fired_t;

static void on_fire(void *data, dibba_beat_job_t *job, int64_t slot) {
  fired_t *f = data;
  ck_assert_int_lt(f->n, 8);
  snprintf(f->names[f->n], sizeof f->names[0], "%s", job->name);
  f->slots[f->n++] = slot;
}

START_TEST(reload_keeps_unchanged_next) {
  dibba_beat_jobs_t set;
  dibba_beat_sched_t s;
  dibba_beat_diff_t d;
  int64_t t0 = utc(2023, 6, 1, 12, 0) + 10; /* 12:00:10 */
  dibba_beat_jobs_init(&set);
  dibba_beat_sched_init(&s);
  ck_assert_int_eq(add(&set, "a.json",
                       "{\"jobs\":[" JOB("keep", "{\"every\":\"1h\"}") "," JOB("change", "{\"every\":\"1h\"}") "," JOB(
                           "drop", "{\"every\":\"1h\"}") "]}"),
                   0);
  dibba_beat_sched_update(&s, &set, t0, &d);
  ck_assert_uint_eq(d.added, 3);
  ck_assert_int_eq(dibba_beat_sched_next(&s, "keep"), utc(2023, 6, 1, 13, 0));
  dibba_beat_jobs_free(&set);
  /* A reload at 13:00:05 before the 13:00 slot was run: the unchanged job keeps its 13:00 slot; the changed job
   * is scheduled from the reload time. */
  int64_t t1 = utc(2023, 6, 1, 13, 0) + 5;
  dibba_beat_jobs_init(&set);
  ck_assert_int_eq(
      add(&set, "b.json", "{\"jobs\":[" JOB("change", "{\"every\":\"30m\"}") "," JOB("new", "{\"every\":\"1h\"}") "]}"),
      0);
  ck_assert_int_eq(add(&set, "a.json", JOB("keep", "{\"every\":\"1h\"}")), 0); /* moved file, same content */
  dibba_beat_sched_update(&s, &set, t1, &d);
  dibba_beat_jobs_free(&set);
  ck_assert_uint_eq(d.kept, 1);
  ck_assert_uint_eq(d.changed, 1);
  ck_assert_uint_eq(d.added, 1);
  ck_assert_uint_eq(d.removed, 1);
  ck_assert_int_eq(dibba_beat_sched_next(&s, "keep"), utc(2023, 6, 1, 13, 0));
  ck_assert_int_eq(dibba_beat_sched_next(&s, "change"), utc(2023, 6, 1, 13, 30));
  ck_assert_int_eq(dibba_beat_sched_next(&s, "drop"), DIBBA_BEAT_NEVER);
  fired_t f = {0};
  int64_t next = dibba_beat_sched_run(&s, t1, on_fire, &f);
  ck_assert_int_eq(f.n, 1);
  ck_assert_str_eq(f.names[0], "keep");
  ck_assert_int_eq(f.slots[0], utc(2023, 6, 1, 13, 0));
  ck_assert_int_eq(next, utc(2023, 6, 1, 13, 30));
  /* A stall over three slots fires once, for the latest. */
  memset(&f, 0, sizeof f);
  dibba_beat_sched_run(&s, utc(2023, 6, 1, 16, 10), on_fire, &f);
  ck_assert_int_eq(f.n, 3);
  for (int i = 0; i < 3; i++)
    ck_assert_int_eq(f.slots[i], utc(2023, 6, 1, 16, 0)); /* every 30m and every 1h: the latest is 16:00 */
  ck_assert_int_eq(dibba_beat_sched_next(&s, "keep"), utc(2023, 6, 1, 17, 0));
  dibba_beat_sched_free(&s);
  dibba_beat_sched_free(&s);
}
END_TEST

START_TEST(catchup_once_within_deadline) {
  dibba_beat_jobs_t set;
  dibba_beat_sched_t s;
  dibba_beat_jobs_init(&set);
  dibba_beat_sched_init(&s);
  ck_assert_int_eq(
      add(&set, "a.json",
          "{\"jobs\":[{\"name\":\"q\",\"task\":\"t\",\"route\":{\"role\":\"r\"},\"schedule\":{\"cron\":"
          "\"*/15 * * * *\"},\"starting_deadline\":600},"
          "{\"name\":\"n\",\"task\":\"t\",\"route\":{\"role\":\"r\"},\"schedule\":{\"cron\":\"0 2 * * *\"},"
          "\"timezone\":\"Europe/Berlin\"}," JOB("hb", "{\"every\":\"30s\"}") "]}"),
      0);
  int64_t down = utc(2023, 6, 1, 10, 0), now = utc(2023, 6, 1, 11, 5); /* 10:15 .. 11:00 missed */
  dibba_beat_sched_update(&s, &set, now, NULL);
  fired_t f = {0};
  /* Four missed slots, the latest (11:00) is 5 min old, within 10 min: one catch-up run, for 11:00. */
  ck_assert_int_eq(dibba_beat_sched_catchup(&s, "q", down, now, on_fire, &f), 0);
  ck_assert_int_eq(f.n, 1);
  ck_assert_int_eq(f.slots[0], utc(2023, 6, 1, 11, 0));
  /* At 11:14 the latest missed slot is 14 min old: nothing. */
  ck_assert_int_eq(dibba_beat_sched_catchup(&s, "q", down, utc(2023, 6, 1, 11, 14), on_fire, &f), -ENOENT);
  /* Already fired 11:00: nothing to catch up. */
  ck_assert_int_eq(dibba_beat_sched_catchup(&s, "q", utc(2023, 6, 1, 11, 0), now, on_fire, &f), -ENOENT);
  ck_assert_int_eq(f.n, 1);
  /* Nightly 02:00 Berlin (00:00 UTC in summer), default deadline 300 s: 00:04 UTC catches up, 00:06 does not. */
  int64_t slot;
  dibba_beat_job_t *n = dibba_beat_jobs_find(&set, "n");
  ck_assert_int_eq(dibba_beat_catchup_slot(n, utc(2023, 5, 30, 0, 0), utc(2023, 6, 1, 0, 4), &slot), 0);
  ck_assert_int_eq(slot, utc(2023, 6, 1, 0, 0));
  ck_assert_int_eq(dibba_beat_catchup_slot(n, utc(2023, 5, 30, 0, 0), utc(2023, 6, 1, 0, 6), &slot), -ENOENT);
  /* every 30s, deadline one interval: the latest slot is always within it, so one run after any downtime. */
  dibba_beat_job_t *hb = dibba_beat_jobs_find(&set, "hb");
  ck_assert_int_eq(dibba_beat_catchup_slot(hb, down, now + 7, &slot), 0);
  ck_assert_int_eq(slot, now);
  ck_assert_int_eq(dibba_beat_catchup_slot(hb, now, now + 7, &slot), -ENOENT);
  dibba_beat_sched_free(&s);
  dibba_beat_jobs_free(&set);
}
END_TEST

static int64_t fake_ms;
static int64_t fake_now(void) { return fake_ms; }

static void on_timer_fire(dibba_beat_timer_t *t, dibba_beat_job_t *job, int64_t slot) {
  fired_t *f = t->data;
  on_fire(f, job, slot);
  dibba_beat_timer_close(t, NULL); /* closing from inside the firing is allowed */
  dibba_beat_timer_close(t, NULL);
}

START_TEST(timer_driver_fires_and_closes) {
  uv_loop_t loop;
  dibba_beat_timer_t t;
  dibba_beat_jobs_t set;
  fired_t f = {0};
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  ck_assert_int_eq(dibba_beat_timer_init(&loop, &t, on_timer_fire, &f), 0);
  t.now_ms = fake_now;
  fake_ms = 1700000000LL * 1000 - 100; /* 100 ms before a 10 s slot */
  dibba_beat_jobs_init(&set);
  ck_assert_int_eq(
      add(&set, "a.json",
          "{\"jobs\":[" JOB("ten", "{\"every\":\"10s\"}") "," JOB("off", "{\"every\":\"1s\"},\"enabled\":false") "]}"),
      0);
  dibba_beat_timer_set_jobs(&t, &set, NULL);
  dibba_beat_jobs_free(&set);
  fake_ms += 100; /* the timer wakes 100 ms later (real time) and reads the injected clock */
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(f.n, 1);
  ck_assert_str_eq(f.names[0], "ten");
  ck_assert_int_eq(f.slots[0], 1700000000);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
}
END_TEST

START_TEST(shipped_examples_load) {
  const char *src = getenv("DIBBA_SRCDIR");
  char *dir = dibba_xasprintf("%s/deploy/beat.d", src ? src : ".");
  dibba_beat_jobs_t set;
  dibba_beat_jobs_init(&set);
  ck_assert_int_eq(dibba_beat_jobs_load_dir(&set, dir), 0);
  ck_assert_uint_eq(set.nerrors, 0);
  ck_assert_uint_ge(set.n, 3);
  dibba_beat_jobs_free(&set);
  free(dir);
}
END_TEST

int main(void) {
  dibba_alloc_init();
  Suite *s = suite_create("cron");
  TCase *tc = tcase_create("cron");
  tcase_add_test(tc, berlin_daily_0200_across_dst);
  tcase_add_test(tc, pacific_hourly_fall_back);
  tcase_add_test(tc, feb_29_and_never);
  tcase_add_test(tc, cron_rejects_with_position);
  tcase_add_test(tc, cron_fields_names_lists_steps);
  tcase_add_test(tc, cron_macros);
  tcase_add_test(tc, every_intervals);
  tcase_add_test(tc, tz_footer_after_last_transition);
  tcase_add_test(tc, tz_names_and_files);
  tcase_add_test(tc, job_files);
  tcase_add_test(tc, job_dir_and_caps);
  tcase_add_test(tc, reload_keeps_unchanged_next);
  tcase_add_test(tc, catchup_once_within_deadline);
  tcase_add_test(tc, timer_driver_fires_and_closes);
  tcase_add_test(tc, shipped_examples_load);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  dibba_tz_cache_clear();
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
