/* SPDX-License-Identifier: Apache-2.0 */
/* libFuzzer target: CNI plugin output (results, error results) and network config files (lists and single). */
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dibba/alloc.h"
#include "dibba/cni.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static int ready;
  if (!ready) {
    dibba_alloc_init();
    ready = 1;
  }
  const char *text = (const char *)data;
  char err[DIBBA_CNI_ERR_MAX];
  char ip4[INET_ADDRSTRLEN], ip6[INET6_ADDRSTRLEN];

  /* What a plugin prints on success: parse, pick the pod IPs, and chain it into the next plugin's config. */
  json_t *res = NULL;
  if (dibba_cni_result_parse(text, size, &res, err, sizeof err) == 0) {
    if (!res)
      abort();
    if (dibba_cni_result_ips(res, "eth0", ip4, ip6) == 0 && !ip4[0] && !ip6[0])
      abort();
    if (strlen(ip4) >= sizeof ip4 || strlen(ip6) >= sizeof ip6)
      abort();
  } else if (res || !memchr(err, '\0', sizeof err)) {
    abort();
  }
  /* What a plugin prints on failure. */
  int code = dibba_cni_error_parse(text, size, err, sizeof err);
  if (code == 0 || (code > 0 && !memchr(err, '\0', sizeof err)))
    abort();

  /* A config file, as a list and as a single plugin; a valid one must yield usable plugin configs. */
  for (int is_list = 0; is_list < 2; is_list++) {
    json_t *list = NULL;
    if (dibba_cni_conflist_parse(text, size, is_list, &list, err, sizeof err) < 0) {
      if (list)
        abort();
      continue;
    }
    json_t *plugins = json_object_get(list, "plugins");
    if (!dibba_cni_version_supported(json_string_value(json_object_get(list, "cniVersion"))) ||
        json_array_size(plugins) == 0)
      abort();
    json_t *runtime = json_pack("{s:[{s:i,s:i}]}", "portMappings", "hostPort", 80, "containerPort", 8080);
    for (size_t i = 0; i < json_array_size(plugins); i++) {
      json_t *conf = dibba_cni_plugin_conf(list, i, res, runtime);
      if (!json_string_value(json_object_get(conf, "type")) || !json_object_get(conf, "name"))
        abort();
      json_decref(conf);
    }
    json_decref(runtime);
    json_decref(list);
  }
  json_decref(res);
  return 0;
}
