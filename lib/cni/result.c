/* SPDX-License-Identifier: Apache-2.0 */
/* CNI results and error results: shape checks, and the pod IPs on the container interface. */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "dibba/cni.h"
#include "dibba/error.h"

int dibba_cni_result_parse(const char *text, size_t len, json_t **out, char *err, size_t errlen) {
  json_error_t je;
  int rc = 0;
  *out = NULL;
  json_t *r = json_loadb(text, len, 0, &je);
  if (!r)
    return dibba_error_set(err, errlen, -EINVAL, "result is not JSON: %s", je.text);
  if (!json_is_object(r)) {
    rc = dibba_error_set(err, errlen, -EINVAL, "result is not an object");
    goto out;
  }
  if (!json_is_string(json_object_get(r, "cniVersion"))) {
    rc = dibba_error_set(err, errlen, -EINVAL, "result has no cniVersion");
    goto out;
  }
  static const char *const arrays[] = {"interfaces", "ips", "routes"};
  for (size_t i = 0; i < 3; i++) {
    json_t *a = json_object_get(r, arrays[i]);
    if (a && !json_is_array(a)) {
      rc = dibba_error_set(err, errlen, -EINVAL, "result.%s is not an array", arrays[i]);
      goto out;
    }
    for (size_t j = 0; j < json_array_size(a); j++)
      if (!json_is_object(json_array_get(a, j))) {
        rc = dibba_error_set(err, errlen, -EINVAL, "result.%s[%zu] is not an object", arrays[i], j);
        goto out;
      }
  }
  json_t *ips = json_object_get(r, "ips");
  for (size_t j = 0; j < json_array_size(ips); j++) {
    json_t *ip = json_array_get(ips, j);
    if (!json_is_string(json_object_get(ip, "address"))) {
      rc = dibba_error_set(err, errlen, -EINVAL, "result.ips[%zu] has no address", j);
      goto out;
    }
    json_t *ifx = json_object_get(ip, "interface");
    if (ifx && (!json_is_integer(ifx) || json_integer_value(ifx) < 0)) {
      rc = dibba_error_set(err, errlen, -EINVAL, "result.ips[%zu].interface is not an index", j);
      goto out;
    }
  }
  *out = json_incref(r);
out:
  json_decref(r);
  return rc;
}

/* "10.0.0.2/24" -> "10.0.0.2" and its family, or 0 if it is not an address. */
static int split_addr(const char *cidr, char *buf, size_t len) {
  const char *slash = strchr(cidr, '/');
  size_t n = slash ? (size_t)(slash - cidr) : strlen(cidr);
  if (n == 0 || n >= len)
    return 0;
  memcpy(buf, cidr, n);
  buf[n] = '\0';
  unsigned char tmp[16];
  if (inet_pton(AF_INET, buf, tmp) == 1)
    return AF_INET;
  if (inet_pton(AF_INET6, buf, tmp) == 1)
    return AF_INET6;
  return 0;
}

int dibba_cni_result_ips(const json_t *result, const char *ifname, char ip4[INET_ADDRSTRLEN],
                         char ip6[INET6_ADDRSTRLEN]) {
  ip4[0] = ip6[0] = '\0';
  json_t *ifs = json_object_get(result, "interfaces");
  json_t *ips = json_object_get(result, "ips");
  long want = -1;
  for (size_t i = 0; i < json_array_size(ifs); i++) {
    json_t *f = json_array_get(ifs, i);
    const char *name = json_string_value(json_object_get(f, "name"));
    const char *sb = json_string_value(json_object_get(f, "sandbox"));
    if (name && ifname && strcmp(name, ifname) == 0 && sb && *sb) {
      want = (long)i;
      break;
    }
  }
  /* Pass 0: addresses on the container interface. Pass 1: addresses that name no interface. */
  for (int pass = 0; pass < 2; pass++) {
    for (size_t i = 0; i < json_array_size(ips); i++) {
      json_t *ip = json_array_get(ips, i);
      json_t *ifx = json_object_get(ip, "interface");
      if (pass == 0 && !(ifx && json_is_integer(ifx) && want >= 0 && json_integer_value(ifx) == want))
        continue;
      if (pass == 1 && ifx)
        continue;
      char buf[INET6_ADDRSTRLEN];
      const char *addr = json_string_value(json_object_get(ip, "address"));
      int fam = addr ? split_addr(addr, buf, sizeof buf) : 0;
      /* 0.3.x/0.4.0 also say "version": it must agree with the address. */
      const char *ver = json_string_value(json_object_get(ip, "version"));
      if (ver && !((fam == AF_INET && strcmp(ver, "4") == 0) || (fam == AF_INET6 && strcmp(ver, "6") == 0)))
        continue;
      if (fam == AF_INET && !ip4[0])
        memcpy(ip4, buf, strlen(buf) + 1);
      else if (fam == AF_INET6 && !ip6[0])
        memcpy(ip6, buf, strlen(buf) + 1);
    }
    if (ip4[0] || ip6[0])
      break;
  }
  return ip4[0] || ip6[0] ? 0 : -ENOENT;
}

int dibba_cni_error_parse(const char *text, size_t len, char *err, size_t errlen) {
  json_t *r = json_loadb(text, len, 0, NULL);
  int rc = -EINVAL;
  json_t *code = json_object_get(r, "code");
  if (!json_is_object(r) || !json_is_integer(code) || json_integer_value(code) <= 0 ||
      json_integer_value(code) > 1000000)
    goto out;
  rc = (int)json_integer_value(code);
  const char *msg = json_string_value(json_object_get(r, "msg"));
  const char *details = json_string_value(json_object_get(r, "details"));
  if (details && *details)
    snprintf(err, errlen, "code %d: %.400s (%.400s)", rc, msg ? msg : "", details);
  else
    snprintf(err, errlen, "code %d: %.400s", rc, msg ? msg : "");
out:
  json_decref(r);
  return rc;
}
