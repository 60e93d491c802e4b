/* SPDX-License-Identifier: Apache-2.0 */
/* Roles (admin > operator > viewer) and the rules for user names and passwords. */
#include <errno.h>
#include <string.h>

#include "dibba/auth.h"

int dibba_auth_role_parse(const char *s, dibba_auth_role_t *out) {
  if (s == NULL)
    return -EINVAL;
  if (strcmp(s, "admin") == 0)
    *out = DIBBA_AUTH_ROLE_ADMIN;
  else if (strcmp(s, "operator") == 0)
    *out = DIBBA_AUTH_ROLE_OPERATOR;
  else if (strcmp(s, "viewer") == 0)
    *out = DIBBA_AUTH_ROLE_VIEWER;
  else
    return -EINVAL;
  return 0;
}

const char *dibba_auth_role_name(dibba_auth_role_t role) {
  switch (role) {
  case DIBBA_AUTH_ROLE_ADMIN: return "admin";
  case DIBBA_AUTH_ROLE_OPERATOR: return "operator";
  case DIBBA_AUTH_ROLE_VIEWER: return "viewer";
  default: return "none";
  }
}

int dibba_auth_role_allows(dibba_auth_role_t have, dibba_auth_role_t need) {
  if (have < DIBBA_AUTH_ROLE_VIEWER || have > DIBBA_AUTH_ROLE_ADMIN)
    return 0;
  if (need < DIBBA_AUTH_ROLE_VIEWER || need > DIBBA_AUTH_ROLE_ADMIN)
    return 0;
  return have >= need;
}

int dibba_auth_username_valid(const char *name) {
  if (name == NULL)
    return 0;
  size_t n = 0;
  for (const char *p = name; *p; p++, n++) {
    char c = *p;
    if (n >= DIBBA_AUTH_NAME_MAX)
      return 0;
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
          c == '@' || c == '-'))
      return 0;
  }
  return n >= 1;
}

int dibba_auth_password_valid(const char *pw, size_t len) {
  if (pw == NULL || len < DIBBA_AUTH_PASSWORD_MIN || len > DIBBA_AUTH_PASSWORD_MAX)
    return 0;
  return memchr(pw, '\0', len) == NULL;
}
