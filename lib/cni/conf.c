/* SPDX-License-Identifier: Apache-2.0 */
/* CNI network configuration: parsing and validating config lists, choosing one by name, plugin stdin configs. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dibba/alloc.h"
#include "dibba/buf.h"
#include "dibba/cni.h"
#include "dibba/config.h"
#include "dibba/error.h"

int dibba_cni_version_supported(const char *v) {
  static const char *const ok[] = {"1.0.0", "0.4.0", "0.3.1", "0.3.0"};
  if (!v)
    return 0;
  for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
    if (strcmp(v, ok[i]) == 0)
      return 1;
  return 0;
}

/* A plugin type names a file in CNI_PATH: no path separators, no dot files. */
static int type_valid(const char *t) {
  if (!t || !*t || *t == '.' || strlen(t) > 64)
    return 0;
  for (const char *p = t; *p; p++)
    if (*p == '/' || *p < 0x21 || *p > 0x7e)
      return 0;
  return 1;
}

static int check_plugin(json_t *p, size_t i, char *err, size_t errlen) {
  if (!json_is_object(p))
    return dibba_error_set(err, errlen, -EINVAL, "plugins[%zu] is not an object", i);
  const char *t = json_string_value(json_object_get(p, "type"));
  if (!t)
    return dibba_error_set(err, errlen, -EINVAL, "plugins[%zu] has no type", i);
  if (!type_valid(t))
    return dibba_error_set(err, errlen, -EINVAL, "plugins[%zu] has an invalid type \"%.64s\"", i, t);
  json_t *caps = json_object_get(p, "capabilities");
  if (caps && !json_is_object(caps))
    return dibba_error_set(err, errlen, -EINVAL, "plugins[%zu].capabilities is not an object", i);
  return 0;
}

int dibba_cni_conflist_parse(const char *text, size_t len, int is_list, json_t **out, char *err, size_t errlen) {
  json_error_t je;
  json_t *list = NULL;
  int rc = 0;
  *out = NULL;
  json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
  if (!root)
    return dibba_error_set(err, errlen, -EINVAL, "not JSON: %s (line %d)", je.text, je.line);
  if (!json_is_object(root)) {
    rc = dibba_error_set(err, errlen, -EINVAL, "not a JSON object");
    goto out;
  }
  const char *name = json_string_value(json_object_get(root, "name"));
  const char *ver = json_string_value(json_object_get(root, "cniVersion"));
  if (!name || !*name) {
    rc = dibba_error_set(err, errlen, -EINVAL, "no name");
    goto out;
  }
  if (!ver) {
    rc = dibba_error_set(err, errlen, -EINVAL, "no cniVersion");
    goto out;
  }
  if (!dibba_cni_version_supported(ver)) {
    rc = dibba_error_set(err, errlen, -EINVAL, "unsupported cniVersion \"%.32s\" (1.0.0, 0.4.0, 0.3.x)", ver);
    goto out;
  }
  if (is_list) {
    json_t *plugins = json_object_get(root, "plugins");
    if (!json_is_array(plugins) || json_array_size(plugins) == 0) {
      rc = dibba_error_set(err, errlen, -EINVAL, "plugins is not a non-empty array");
      goto out;
    }
    for (size_t i = 0; i < json_array_size(plugins); i++)
      if ((rc = check_plugin(json_array_get(plugins, i), i, err, errlen)) < 0)
        goto out;
    json_t *dc = json_object_get(root, "disableCheck");
    if (dc && !json_is_boolean(dc)) {
      rc = dibba_error_set(err, errlen, -EINVAL, "disableCheck is not a boolean");
      goto out;
    }
    list = json_incref(root);
  } else {
    if (json_object_get(root, "plugins")) {
      rc = dibba_error_set(err, errlen, -EINVAL, "a single-plugin config has a plugins array (name it .conflist)");
      goto out;
    }
    if ((rc = check_plugin(root, 0, err, errlen)) < 0)
      goto out;
    /* Wrap it as a one-plugin list, as libcni does; the plugin keeps its own fields. */
    json_t *p = json_deep_copy(root);
    json_object_del(p, "name");
    json_object_del(p, "cniVersion");
    list = json_pack("{s:s, s:s, s:[o]}", "cniVersion", ver, "name", name, "plugins", p);
  }
  *out = list;
out:
  json_decref(root);
  return rc;
}

static int has_suffix(const char *s, const char *suf) {
  size_t a = strlen(s), b = strlen(suf);
  return a > b && strcmp(s + a - b, suf) == 0;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

int dibba_cni_conflist_load(const char *conf_dir, const char *name, json_t **out, char **path, char *err,
                            size_t errlen) {
  int rc = -ENOENT;
  char **files = NULL;
  size_t n = 0;
  dibba_buf_t why;
  dibba_buf_init(&why, 768);
  *out = NULL;
  if (path)
    *path = NULL;
  DIR *d = opendir(conf_dir);
  if (!d)
    return dibba_error_set(err, errlen, -errno, "CNI config dir %s: %s", conf_dir, strerror(errno));
  struct dirent *de;
  while ((de = readdir(d)) && n < 4096) {
    if (de->d_name[0] == '.')
      continue;
    if (has_suffix(de->d_name, ".conflist") || has_suffix(de->d_name, ".conf") || has_suffix(de->d_name, ".json")) {
      files = dibba_xreallocarray(files, n + 1, sizeof *files);
      files[n++] = dibba_xstrdup(de->d_name);
    }
  }
  closedir(d);
  qsort(files, n, sizeof *files, cmp_str);
  for (size_t i = 0; i < n && !*out; i++) {
    char *fp = dibba_xasprintf("%s/%s", conf_dir, files[i]);
    char *text = NULL;
    size_t len = 0;
    char why1[256];
    json_t *list = NULL;
    int r = dibba_read_small_file(fp, DIBBA_CNI_CONF_MAX_BYTES, &text, &len);
    if (r < 0)
      dibba_error_set(why1, sizeof why1, r, "%s", r == -EFBIG ? "larger than 1 MiB" : dibba_strerror(r));
    else
      r = dibba_cni_conflist_parse(text, len, has_suffix(files[i], ".conflist"), &list, why1, sizeof why1);
    if (r < 0) {
      dibba_buf_printf(&why, "%s%s: %s", why.len ? "; " : "", files[i], why1);
    } else if (strcmp(json_string_value(json_object_get(list, "name")), name) == 0) {
      *out = list;
      if (path)
        *path = dibba_xstrdup(fp);
      rc = 0;
    } else {
      json_decref(list);
    }
    free(text);
    free(fp);
  }
  if (rc < 0) {
    if (why.len)
      dibba_error_set(err, errlen, -ENOENT, "no valid CNI network \"%s\" in %s (rejected: %s)", name, conf_dir,
                      why.data);
    else
      dibba_error_set(err, errlen, -ENOENT, "no CNI network \"%s\" in %s", name, conf_dir);
  }
  for (size_t i = 0; i < n; i++)
    free(files[i]);
  free(files);
  dibba_buf_free(&why);
  return rc;
}

json_t *dibba_cni_plugin_conf(const json_t *list, size_t index, const json_t *prev, const json_t *runtime) {
  json_t *plugin = json_array_get(json_object_get(list, "plugins"), index);
  json_t *conf = json_deep_copy(plugin ? plugin : json_object());
  json_object_set(conf, "name", json_object_get(list, "name"));
  json_object_set(conf, "cniVersion", json_object_get(list, "cniVersion"));
  json_object_del(conf, "prevResult");
  json_object_del(conf, "runtimeConfig");
  if (prev)
    json_object_set_new(conf, "prevResult", json_deep_copy(prev));
  /* runtimeConfig carries only what the plugin asked for in capabilities (spec: "Dynamic plugin specific
   * fields"); everything else is withheld. */
  json_t *caps = json_object_get(plugin, "capabilities");
  json_t *rc = json_object();
  const char *key;
  json_t *val;
  json_object_foreach((json_t *)runtime, key, val) {
    if (json_is_true(json_object_get(caps, key)))
      json_object_set(rc, key, val);
  }
  if (json_object_size(rc))
    json_object_set_new(conf, "runtimeConfig", rc);
  else
    json_decref(rc);
  return conf;
}

static int arg_ok(const char *s) { return !s || (!strchr(s, ';') && !strchr(s, '=')); }

char *dibba_cni_args(const char *pod_ns, const char *pod_name, const char *container_id) {
  if (!arg_ok(pod_ns) || !arg_ok(pod_name) || !arg_ok(container_id))
    return NULL;
  dibba_buf_t b;
  dibba_buf_init(&b, 0);
  dibba_buf_adds(&b, "IgnoreUnknown=1");
  if (pod_ns)
    dibba_buf_printf(&b, ";K8S_POD_NAMESPACE=%s", pod_ns);
  if (pod_name)
    dibba_buf_printf(&b, ";K8S_POD_NAME=%s", pod_name);
  if (container_id)
    dibba_buf_printf(&b, ";K8S_POD_INFRA_CONTAINER_ID=%s", container_id);
  return dibba_buf_steal(&b, NULL);
}
