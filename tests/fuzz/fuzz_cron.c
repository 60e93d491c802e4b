/* SPDX-License-Identifier: Apache-2.0 */
/* libFuzzer target: cron expressions (parse + next/latest in a DST zone), `every` intervals, and job files. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dibba/alloc.h"
#include "dibba/beat.h"
#include "dibba/cron.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fired(void *data, dibba_beat_job_t *job, int64_t slot) {
  (void)data;
  if (slot <= 1699990000 || !job->enabled)
    abort(); /* a catch-up is always newer than the last fired slot */
}

/* The input's first byte picks the parser; the rest is its text. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const dibba_tz_t *berlin;
  static int ready;
  char err[256];
  size_t pos;

  if (!ready) {
    dibba_alloc_init();
    if (dibba_tz_get("Europe/Berlin", &berlin, err, sizeof err) < 0)
      berlin = NULL; /* no tzdata: the UTC paths are still fuzzed */
    ready = 1;
  }
  if (size < 1 || size > DIBBA_BEAT_FILE_MAX + 1)
    return 0;
  char *text = dibba_xstrndup((const char *)data + 1, size - 1);
  switch (data[0] % 3) {
  case 0: {
    dibba_schedule_t s = {.kind = DIBBA_SCHED_CRON};
    if (dibba_cron_parse(text, &s.cron, &pos, err, sizeof err) == 0) {
      int64_t t = 1679792400, out; /* 2023-03-26 01:00 UTC, Berlin's spring forward */
      for (int i = 0; i < 4 && dibba_schedule_next(&s, berlin, t, &out) == 0; i++) {
        if (out <= t)
          abort();
        t = out;
      }
      (void)dibba_schedule_latest(&s, berlin, 1698537600 - 7200, 1698537600 + 7200, &out);
    } else if (pos > strlen(text)) {
      abort();
    }
    break;
  }
  case 1: {
    int64_t secs;
    if (dibba_every_parse(text, &secs, &pos, err, sizeof err) == 0 && (secs < 1 || secs > DIBBA_EVERY_MAX))
      abort();
    break;
  }
  default: {
    dibba_beat_jobs_t set;
    dibba_beat_jobs_init(&set);
    (void)dibba_beat_jobs_add_file(&set, "fuzz.json", (const char *)data + 1, size - 1);
    if (set.n > DIBBA_BEAT_MAX_JOBS)
      abort();
    dibba_beat_sched_t s;
    dibba_beat_sched_init(&s);
    dibba_beat_sched_update(&s, &set, 1700000000, NULL);
    for (size_t i = 0; i < set.n && i < 4; i++)
      (void)dibba_beat_sched_catchup(&s, set.v[i]->name, 1699990000, 1700000000 + 3600, fired, NULL);
    dibba_beat_sched_free(&s);
    dibba_beat_jobs_free(&set);
    break;
  }
  }
  free(text);
  return 0;
}
