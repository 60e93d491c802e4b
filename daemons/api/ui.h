/* SPDX-License-Identifier: Apache-2.0 */
/* dibba-api's dashboard files: GET /ui, /ui/{file} from a bounded in-memory set, reloaded on SIGHUP. */
#ifndef DIBBA_API_UI_H
#define DIBBA_API_UI_H

#include <uv.h>

#include "dibba/buf.h"
#include "dibba/config.h"
#include "dibba/http.h"

typedef struct api_ui_s api_ui_t;

/* Limits of the file set: more files, more bytes, or a file name outside [a-z0-9][a-z0-9._-]* are not served. */
#define API_UI_MAX_FILES 64
#define API_UI_MAX_BYTES (2u << 20)
#define API_UI_NAME_MAX 64

/* Read the files of api.ui_dir (DIBBA_UI_DIR; default DIBBA_DATADIR/ui) into memory now (a bounded start-up
 * read) and register GET /ui and GET /ui/{file} on router. A directory that was configured and cannot be
 * loaded is an error; a missing default directory only logs a warning (the API serves without a dashboard).
 * Returns 0 or < 0 with one line in err; *out is NULL on error. */
int api_ui_new(uv_loop_t *loop, const dibba_config_t *cfg, dibba_http_router_t *router, api_ui_t **out, char *err,
               size_t errlen);
/* Read the directory again through uv_fs_* and swap the new set in when every file was read; on any error the
 * current set stays and a warning is logged. A reload requested while one runs is done once after it. */
void api_ui_reload(api_ui_t *u);
/* Free u once no read is in flight; cb (may be NULL) runs then, possibly before this returns. Safe with NULL. */
void api_ui_close(api_ui_t *u, void (*cb)(void *data), void *data);
/* Prometheus lines: files and bytes served, reloads and failed reloads. */
void api_ui_metrics(const api_ui_t *u, dibba_buf_t *out);

#endif
