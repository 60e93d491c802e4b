/* SPDX-License-Identifier: Apache-2.0 */
/* The pure parts of pods: validation, the normalized spec and its hash, quantities, label selectors. */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/sha.h>

#include "dibba/alloc.h"
#include "dibba/oci.h"
#include "dibba/pbjson.h"
#include "dibba/pod.h"

static int dns_label(const char *s) {
  size_t n = s ? strlen(s) : 0;
  if (n == 0 || n > 63 || !isalnum((unsigned char)s[0]) || !isalnum((unsigned char)s[n - 1]))
    return 0;
  for (size_t i = 0; i < n; i++)
    if (!(islower((unsigned char)s[i]) || isdigit((unsigned char)s[i]) || s[i] == '-'))
      return 0;
  return 1;
}

/* A decimal number with an optional fraction, then the rest in *end. Returns 0 or -EINVAL. */
static int parse_decimal(const char *q, double *v, const char **end) {
  const char *p = q;
  if (!isdigit((unsigned char)*p) && *p != '.')
    return -EINVAL;
  double x = 0, scale = 1;
  int digits = 0, frac = 0;
  for (; isdigit((unsigned char)*p) || (*p == '.' && !frac); p++) {
    if (*p == '.') {
      frac = 1;
      continue;
    }
    digits++;
    if (frac) {
      scale /= 10;
      x += (*p - '0') * scale;
    } else {
      x = x * 10 + (*p - '0');
    }
  }
  if (!digits || x > 1e18)
    return -EINVAL;
  *v = x;
  *end = p;
  return 0;
}

int dibba_pod_parse_cpu(const char *q, int64_t *millis) {
  double v;
  const char *end;
  if (!q || parse_decimal(q, &v, &end) < 0)
    return -EINVAL;
  if (*end == '\0')
    v *= 1000; /* whole cores */
  else if (strcmp(end, "m") != 0)
    return -EINVAL;
  if (v > 1e12)
    return -EINVAL;
  *millis = (int64_t)(v + 0.999999); /* round up like Kubernetes */
  return 0;
}

int dibba_pod_parse_memory(const char *q, int64_t *bytes) {
  static const struct {
    const char *suffix;
    double mul;
  } units[] = {{"", 1},           {"k", 1e3},           {"M", 1e6},
               {"G", 1e9},        {"T", 1e12},          {"Ki", 1024.0},
               {"Mi", 1048576.0}, {"Gi", 1073741824.0}, {"Ti", 1099511627776.0}};
  double v;
  const char *end;
  if (!q || parse_decimal(q, &v, &end) < 0)
    return -EINVAL;
  for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
    if (strcmp(end, units[i].suffix) == 0) {
      v *= units[i].mul;
      if (v > 9e18)
        return -EINVAL;
      *bytes = (int64_t)v;
      return 0;
    }
  return -EINVAL;
}

uint64_t dibba_pod_backoff_ms(uint64_t base, uint64_t max, unsigned n) {
  uint64_t d = base;
  for (unsigned i = 0; i < n && d < max; i++)
    d *= 2;
  return d < max ? d : max;
}

static int fail(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t errlen, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
  return -EINVAL;
}

static const Dibba__V1__Volume *find_volume(const Dibba__V1__PodSpec *s, const char *name) {
  for (size_t i = 0; i < s->n_volumes; i++)
    if (strcmp(s->volumes[i]->name, name) == 0)
      return s->volumes[i];
  return NULL;
}

int dibba_pod_validate(const Dibba__V1__Pod *pod, char *err, size_t errlen) {
  const Dibba__V1__ObjectMeta *md = pod ? pod->metadata : NULL;
  const Dibba__V1__PodSpec *s = pod ? pod->spec : NULL;
  if (!md || !dns_label(md->name))
    return fail(err, errlen, "metadata.name: must be a DNS label ([a-z0-9-], at most 63)");
  if (md->namespace_ && *md->namespace_ && !dns_label(md->namespace_))
    return fail(err, errlen, "metadata.namespace: must be a DNS label");
  if (md->uid && *md->uid && strlen(md->uid) > 128)
    return fail(err, errlen, "metadata.uid: at most 128 bytes");
  if (!s || s->n_containers == 0)
    return fail(err, errlen, "spec.containers: at least one container");
  if (s->host_network)
    return fail(err, errlen, "spec.hostNetwork: not supported");
  if (s->hostname && *s->hostname && !dns_label(s->hostname))
    return fail(err, errlen, "spec.hostname: must be a DNS label");
  for (size_t i = 0; i < s->n_volumes; i++) {
    const Dibba__V1__Volume *v = s->volumes[i];
    if (!dns_label(v->name))
      return fail(err, errlen, "spec.volumes: name %s is not a DNS label", v->name);
    for (size_t j = 0; j < i; j++)
      if (strcmp(s->volumes[j]->name, v->name) == 0)
        return fail(err, errlen, "spec.volumes: duplicate name %s", v->name);
    if (v->source_case == DIBBA__V1__VOLUME__SOURCE_HOST_PATH) {
      if (!v->host_path->path || v->host_path->path[0] != '/' || strstr(v->host_path->path, ".."))
        return fail(err, errlen, "spec.volumes[%s].hostPath.path: must be absolute without '..'", v->name);
      const char *t = v->host_path->type;
      if (t && *t && strcmp(t, "DirectoryOrCreate") && strcmp(t, "Directory") && strcmp(t, "File") &&
          strcmp(t, "FileOrCreate") && strcmp(t, "Socket"))
        return fail(err, errlen, "spec.volumes[%s].hostPath.type: unsupported %s", v->name, t);
    } else if (v->source_case != DIBBA__V1__VOLUME__SOURCE_EMPTY_DIR) {
      return fail(err, errlen, "spec.volumes[%s]: hostPath or emptyDir required", v->name);
    }
  }
  for (size_t i = 0; i < s->n_containers; i++) {
    const Dibba__V1__Container *c = s->containers[i];
    int64_t x;
    if (!dns_label(c->name))
      return fail(err, errlen, "spec.containers: name '%s' is not a DNS label", c->name);
    for (size_t j = 0; j < i; j++)
      if (strcmp(s->containers[j]->name, c->name) == 0)
        return fail(err, errlen, "spec.containers: duplicate name %s", c->name);
    if (!c->image || !*c->image)
      return fail(err, errlen, "spec.containers[%s].image: required", c->name);
    const Dibba__V1__ResourceList *lists[2] = {c->resources ? c->resources->limits : NULL,
                                               c->resources ? c->resources->requests : NULL};
    for (int k = 0; k < 2; k++) {
      if (!lists[k])
        continue;
      if (lists[k]->cpu && *lists[k]->cpu && dibba_pod_parse_cpu(lists[k]->cpu, &x) < 0)
        return fail(err, errlen, "spec.containers[%s].resources: bad cpu quantity %s", c->name, lists[k]->cpu);
      if (lists[k]->memory && *lists[k]->memory && dibba_pod_parse_memory(lists[k]->memory, &x) < 0)
        return fail(err, errlen, "spec.containers[%s].resources: bad memory quantity %s", c->name, lists[k]->memory);
    }
    if (lists[0] && lists[0]->memory && *lists[0]->memory && dibba_pod_parse_memory(lists[0]->memory, &x) == 0 &&
        x < DIBBA_OCI_MIN_MEMORY)
      return fail(err, errlen, "spec.containers[%s].resources.limits.memory: below 6Mi", c->name);
    for (size_t j = 0; j < c->n_ports; j++) {
      const Dibba__V1__ContainerPort *p = c->ports[j];
      if (p->container_port < 1 || p->container_port > 65535 || p->host_port < 0 || p->host_port > 65535)
        return fail(err, errlen, "spec.containers[%s].ports: port out of range", c->name);
    }
    for (size_t j = 0; j < c->n_env; j++)
      if (!c->env[j]->name || !*c->env[j]->name || strchr(c->env[j]->name, '='))
        return fail(err, errlen, "spec.containers[%s].env: bad name", c->name);
    for (size_t j = 0; j < c->n_volume_mounts; j++) {
      const Dibba__V1__VolumeMount *vm = c->volume_mounts[j];
      if (!find_volume(s, vm->name))
        return fail(err, errlen, "spec.containers[%s].volumeMounts: no volume %s", c->name, vm->name);
      if (!vm->mount_path || vm->mount_path[0] != '/')
        return fail(err, errlen, "spec.containers[%s].volumeMounts[%s].mountPath: must be absolute", c->name, vm->name);
      if (vm->sub_path && (vm->sub_path[0] == '/' || strstr(vm->sub_path, "..")))
        return fail(err, errlen, "spec.containers[%s].volumeMounts[%s].subPath: relative, without '..'", c->name,
                    vm->name);
    }
  }
  return 0;
}

char *dibba_pod_normalized(const Dibba__V1__Pod *pod, char hash[17]) {
  json_t *j = dibba_pbjson_from_message(&pod->base, 0);
  json_t *md = json_object_get(j, "metadata");
  json_object_del(j, "status");
  json_object_del(j, "apiVersion");
  json_object_del(j, "kind");
  if (md) {
    json_object_del(md, "uid");
    json_object_del(md, "creationTimestamp");
    if (!json_string_value(json_object_get(md, "namespace")))
      json_object_set_new(md, "namespace", json_string("default"));
  }
  char *text = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
  json_decref(j);
  unsigned char d[SHA256_DIGEST_LENGTH];
  SHA256((const unsigned char *)text, strlen(text), d);
  for (int i = 0; i < 8; i++)
    snprintf(hash + 2 * i, 3, "%02x", d[i]);
  return text;
}

int dibba_pod_selector_match(const char *selector, Dibba__V1__ObjectMeta__LabelsEntry *const *labels, size_t n) {
  if (!selector || !*selector)
    return 1;
  char *copy = dibba_xstrdup(selector), *save = NULL;
  int match = 1, rc = 0;
  for (char *term = strtok_r(copy, ",", &save); term; term = strtok_r(NULL, ",", &save)) {
    while (*term == ' ')
      term++;
    int neg = 0, exists_only = 0;
    char *op = strstr(term, "!="), *val = NULL;
    if (op) {
      neg = 1;
      *op = '\0';
      val = op + 2;
    } else if ((op = strchr(term, '='))) {
      *op = '\0';
      val = op + 1 + (op[1] == '=');
    } else {
      exists_only = 1;
      if (term[0] == '!') {
        neg = 1;
        term++;
      }
    }
    char *e = term + strlen(term);
    while (e > term && e[-1] == ' ')
      *--e = '\0';
    while (val && *val == ' ')
      val++;
    if (!*term || strchr(term, '!') || (val && strpbrk(val, "=!"))) {
      rc = -EINVAL;
      break;
    }
    const char *have = NULL;
    for (size_t i = 0; i < n; i++)
      if (strcmp(labels[i]->key, term) == 0)
        have = labels[i]->value;
    int ok = exists_only ? (have != NULL) != neg : neg ? !have || strcmp(have, val) != 0 : have && !strcmp(have, val);
    if (!ok)
      match = 0;
  }
  free(copy);
  return rc < 0 ? rc : match;
}
