/* SPDX-License-Identifier: Apache-2.0 */
/* Parsing of redis://, unix:// and redis+sentinel:// addresses into dibba_redis_addr_t. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "dibba/alloc.h"
#include "dibba/error.h"
#include "dibba/redis.h"

#define URL_MAX 4096

static int hexval(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

/* Percent-decode s[0..n) into a new string. %00 is refused: values are used as C strings. */
static int pct_decode(const char *s, size_t n, char **out) {
  char *d = dibba_xmalloc(n + 1);
  size_t j = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] != '%') {
      d[j++] = s[i];
      continue;
    }
    int hi = i + 1 < n ? hexval(s[i + 1]) : -1;
    int lo = i + 2 < n ? hexval(s[i + 2]) : -1;
    if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
      explicit_bzero(d, n + 1);
      free(d);
      return -EINVAL;
    }
    d[j++] = (char)(hi * 16 + lo);
    i += 2;
  }
  d[j] = '\0';
  *out = d;
  return 0;
}

/* Decimal integer in [min, max] from s[0..n). */
static int parse_num(const char *s, size_t n, long min, long max, int *out) {
  if (n == 0 || n > 10)
    return -EINVAL;
  long v = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9')
      return -EINVAL;
    v = v * 10 + (s[i] - '0');
  }
  if (v < min || v > max)
    return -EINVAL;
  *out = (int)v;
  return 0;
}

static void wipe_free(char **p) {
  if (*p) {
    explicit_bzero(*p, strlen(*p));
    free(*p);
    *p = NULL;
  }
}

void dibba_redis_addr_free(dibba_redis_addr_t *a) {
  if (a == NULL)
    return;
  wipe_free(&a->password);
  wipe_free(&a->sentinel_password);
  free(a->host);
  free(a->path);
  free(a->user);
  free(a->master_name);
  free(a->sentinel_user);
  for (size_t i = 0; i < a->nsentinels; i++)
    free(a->sentinels[i].host);
  free(a->sentinels);
  memset(a, 0, sizeof *a);
}

/* user:pass from the userinfo part u[0..n). */
static int parse_userinfo(const char *u, size_t n, dibba_redis_addr_t *a, char *err, size_t errlen) {
  const char *colon = memchr(u, ':', n);
  if (colon == NULL)
    return dibba_error_set(err, errlen, -EINVAL, "redis url: user without password (use user:password@ or :password@)");
  size_t ulen = (size_t)(colon - u);
  if (ulen > 0 && pct_decode(u, ulen, &a->user) < 0)
    return dibba_error_set(err, errlen, -EINVAL, "redis url: bad percent-escape in user name");
  size_t plen = n - ulen - 1;
  if (plen == 0)
    return dibba_error_set(err, errlen, -EINVAL, "redis url: empty password");
  if (pct_decode(colon + 1, plen, &a->password) < 0)
    return dibba_error_set(err, errlen, -EINVAL, "redis url: bad percent-escape in password");
  return 0;
}

/* Query string q[0..n) of a unix URL (db=, user=, password=) or a sentinel URL (sentinel_user=,
 * sentinel_password=). */
static int parse_query(const char *q, size_t n, dibba_redis_addr_t *a, char *err, size_t errlen) {
  int sentinel = a->kind == DIBBA_REDIS_SENTINEL;
  while (n > 0) {
    const char *amp = memchr(q, '&', n);
    size_t plen = amp ? (size_t)(amp - q) : n;
    const char *eq = memchr(q, '=', plen);
    if (eq == NULL)
      return dibba_error_set(err, errlen, -EINVAL, "redis url: query parameter without '='");
    size_t klen = (size_t)(eq - q);
    const char *v = eq + 1;
    size_t vlen = plen - klen - 1;
    if (sentinel && klen == 13 && memcmp(q, "sentinel_user", 13) == 0) {
      free(a->sentinel_user);
      a->sentinel_user = NULL;
      if (vlen == 0 || pct_decode(v, vlen, &a->sentinel_user) < 0)
        return dibba_error_set(err, errlen, -EINVAL, "redis url: bad or empty sentinel_user");
    } else if (sentinel && klen == 17 && memcmp(q, "sentinel_password", 17) == 0) {
      wipe_free(&a->sentinel_password);
      if (vlen == 0 || pct_decode(v, vlen, &a->sentinel_password) < 0)
        return dibba_error_set(err, errlen, -EINVAL, "redis url: bad or empty sentinel_password");
    } else if (sentinel) {
      return dibba_error_set(err, errlen, -EINVAL, "redis url: unknown query parameter '%.*s'", (int)klen, q);
    } else if (klen == 2 && memcmp(q, "db", 2) == 0) {
      if (parse_num(v, vlen, 0, 0x7fffffffL, &a->db) < 0)
        return dibba_error_set(err, errlen, -EINVAL, "redis url: db must be a non-negative integer");
    } else if (klen == 4 && memcmp(q, "user", 4) == 0) {
      free(a->user);
      a->user = NULL;
      if (pct_decode(v, vlen, &a->user) < 0)
        return dibba_error_set(err, errlen, -EINVAL, "redis url: bad percent-escape in user name");
    } else if (klen == 8 && memcmp(q, "password", 8) == 0) {
      wipe_free(&a->password);
      if (vlen == 0 || pct_decode(v, vlen, &a->password) < 0)
        return dibba_error_set(err, errlen, -EINVAL, "redis url: bad or empty password");
    } else {
      return dibba_error_set(err, errlen, -EINVAL, "redis url: unknown query parameter '%.*s'", (int)klen, q);
    }
    if (amp == NULL)
      break;
    n -= plen + 1;
    q = amp + 1;
  }
  return 0;
}

static int parse_unix(const char *s, dibba_redis_addr_t *a, char *err, size_t errlen) {
  /* s is what follows "unix:" : "//[userinfo@]/path", "///path" or "/path". */
  if (strncmp(s, "//", 2) == 0) {
    s += 2;
    const char *at = strchr(s, '@');
    const char *slash = strchr(s, '/');
    if (at && (slash == NULL || at < slash)) {
      int r = parse_userinfo(s, (size_t)(at - s), a, err, errlen);
      if (r < 0)
        return r;
      s = at + 1;
    } else if (slash != s) {
      return dibba_error_set(err, errlen, -EINVAL, "redis url: unix socket path must be absolute (unix:///path)");
    }
  }
  if (s[0] != '/')
    return dibba_error_set(err, errlen, -EINVAL, "redis url: unix socket path must be absolute (unix:///path)");
  const char *qm = strchr(s, '?');
  size_t plen = qm ? (size_t)(qm - s) : strlen(s);
  if (plen < 2)
    return dibba_error_set(err, errlen, -EINVAL, "redis url: empty unix socket path");
  if (plen >= 108)
    return dibba_error_set(err, errlen, -EINVAL, "redis url: unix socket path longer than 107 bytes");
  if (pct_decode(s, plen, &a->path) < 0)
    return dibba_error_set(err, errlen, -EINVAL, "redis url: bad percent-escape in socket path");
  a->kind = DIBBA_REDIS_UNIX;
  if (qm)
    return parse_query(qm + 1, strlen(qm + 1), a, err, errlen);
  return 0;
}

/* host[:port] or [v6]:port from s[0..end); *host is set (and owned by the caller) even on error. */
static int parse_hostport(const char *s, const char *end, int defport, char **host, int *port, char *err,
                          size_t errlen) {
  const char *hend;
  const char *portp = NULL;
  if (*s == '[') {
    const char *rb = memchr(s, ']', (size_t)(end - s));
    if (rb == NULL)
      return dibba_error_set(err, errlen, -EINVAL, "redis url: unterminated '[' in host");
    *host = dibba_xstrndup(s + 1, (size_t)(rb - s - 1));
    hend = rb + 1;
    if (hend < end && *hend != ':')
      return dibba_error_set(err, errlen, -EINVAL, "redis url: junk after ']'");
    if (hend < end)
      portp = hend + 1;
  } else {
    const char *colon = memchr(s, ':', (size_t)(end - s));
    hend = colon ? colon : end;
    *host = dibba_xstrndup(s, (size_t)(hend - s));
    if (colon)
      portp = colon + 1;
  }
  if ((*host)[0] == '\0')
    return dibba_error_set(err, errlen, -EINVAL, "redis url: empty host");
  for (const char *p = *host; *p; p++)
    if (*p == '%' || *p == '@' || *p == ' ' || *p == '[' || *p == ']' || *p == ',' || *p == '/')
      return dibba_error_set(err, errlen, -EINVAL, "redis url: invalid character in host");
  *port = defport;
  if (portp && parse_num(portp, (size_t)(end - portp), 1, 65535, port) < 0)
    return dibba_error_set(err, errlen, -EINVAL, "redis url: port must be 1..65535");
  return 0;
}

static int parse_tcp(const char *s, dibba_redis_addr_t *a, char *err, size_t errlen) {
  /* s follows "redis://": [userinfo@]host[:port][/db] */
  const char *end = s + strcspn(s, "/?#");
  if (*end == '?' || *end == '#')
    return dibba_error_set(err, errlen, -EINVAL, "redis url: query and fragment are not supported for redis://");
  const char *at = memrchr(s, '@', (size_t)(end - s));
  if (at) {
    int r = parse_userinfo(s, (size_t)(at - s), a, err, errlen);
    if (r < 0)
      return r;
    s = at + 1;
  }
  int r = parse_hostport(s, end, 6379, &a->host, &a->port, err, errlen);
  if (r < 0)
    return r;
  if (*end == '/') {
    const char *db = end + 1;
    if (*db != '\0' && parse_num(db, strlen(db), 0, 0x7fffffffL, &a->db) < 0)
      return dibba_error_set(err, errlen, -EINVAL, "redis url: db must be a non-negative integer");
  }
  a->kind = DIBBA_REDIS_TCP;
  return 0;
}

static int parse_sentinel(const char *s, dibba_redis_addr_t *a, char *err, size_t errlen) {
  /* s follows "redis+sentinel://": [userinfo@]h1[:p1],h2[:p2],.../MASTERNAME[/db][?query] */
  a->kind = DIBBA_REDIS_SENTINEL;
  const char *end = s + strcspn(s, "?#");
  if (*end == '#')
    return dibba_error_set(err, errlen, -EINVAL, "redis url: fragments are not supported");
  const char *slash = memchr(s, '/', (size_t)(end - s));
  if (slash == NULL)
    return dibba_error_set(err, errlen, -EINVAL, "redis url: sentinel URL without /MASTERNAME");
  const char *at = memrchr(s, '@', (size_t)(slash - s));
  if (at) {
    int r = parse_userinfo(s, (size_t)(at - s), a, err, errlen);
    if (r < 0)
      return r;
    s = at + 1;
  }
  a->sentinels = dibba_xcalloc(DIBBA_REDIS_SENTINELS_MAX, sizeof *a->sentinels);
  for (const char *h = s; h < slash;) {
    const char *comma = memchr(h, ',', (size_t)(slash - h));
    const char *hend = comma ? comma : slash;
    if (a->nsentinels == DIBBA_REDIS_SENTINELS_MAX)
      return dibba_error_set(err, errlen, -EINVAL, "redis url: more than %d sentinels", DIBBA_REDIS_SENTINELS_MAX);
    dibba_redis_hostport_t *hp = &a->sentinels[a->nsentinels++];
    int r = parse_hostport(h, hend, 26379, &hp->host, &hp->port, err, errlen);
    if (r < 0)
      return r;
    if (comma && comma + 1 == slash)
      return dibba_error_set(err, errlen, -EINVAL, "redis url: empty host");
    h = comma ? comma + 1 : slash;
  }
  if (a->nsentinels == 0)
    return dibba_error_set(err, errlen, -EINVAL, "redis url: no sentinel hosts");
  const char *name = slash + 1;
  const char *nend = memchr(name, '/', (size_t)(end - name));
  if (nend == NULL)
    nend = end;
  if (nend == name || pct_decode(name, (size_t)(nend - name), &a->master_name) < 0)
    return dibba_error_set(err, errlen, -EINVAL, "redis url: empty or badly escaped master name");
  if (nend < end && nend + 1 < end && parse_num(nend + 1, (size_t)(end - nend - 1), 0, 0x7fffffffL, &a->db) < 0)
    return dibba_error_set(err, errlen, -EINVAL, "redis url: db must be a non-negative integer");
  if (*end == '?')
    return parse_query(end + 1, strlen(end + 1), a, err, errlen);
  return 0;
}

int dibba_redis_url_parse(const char *url, dibba_redis_addr_t *out, char *err, size_t errlen) {
  int r;
  dibba_redis_addr_t a;
  memset(&a, 0, sizeof a);
  if (err && errlen)
    err[0] = '\0';
  if (url == NULL || url[0] == '\0') {
    r = dibba_error_set(err, errlen, -EINVAL, "redis url: empty");
    goto out;
  }
  if (strlen(url) > URL_MAX) {
    r = dibba_error_set(err, errlen, -EINVAL, "redis url: longer than %d bytes", URL_MAX);
    goto out;
  }
  if (strncmp(url, "redis://", 8) == 0)
    r = parse_tcp(url + 8, &a, err, errlen);
  else if (strncmp(url, "redis+unix:", 11) == 0)
    r = parse_unix(url + 11, &a, err, errlen);
  else if (strncmp(url, "unix:", 5) == 0)
    r = parse_unix(url + 5, &a, err, errlen);
  else if (strncmp(url, "redis+sentinel://", 17) == 0)
    r = parse_sentinel(url + 17, &a, err, errlen);
  else if (strncmp(url, "rediss://", 9) == 0)
    r = dibba_error_set(err, errlen, -EINVAL, "redis url: TLS (rediss://) is not supported by hiredis 0.14");
  else
    r = dibba_error_set(err, errlen, -EINVAL,
                        "redis url: scheme must be redis://, unix://, redis+unix:// or redis+sentinel://");
out:
  if (r < 0)
    dibba_redis_addr_free(&a);
  else
    *out = a;
  return r;
}
