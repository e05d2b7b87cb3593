/*
 * outpost.h: the C SDK for Outpost stages.
 *
 * A thin layer over the bindings wit-bindgen writes for the stage world
 * (stage.h): errors with kinds, the stage's config, checked reads of input
 * tensors, and outputs and stage descriptions built without hand-written
 * canonical-ABI bookkeeping. `outpost-guest-c bindings --out DIR` writes this
 * file with stage.h, stage.c and outpost.c; compile outpost.c and stage.c
 * with the stage.
 *
 * A stage defines the three exports of stage.h:
 *
 *   bool exports_stage_init(stage_config_t *config, stage_stage_error_t *err);
 *   void exports_stage_describe(stage_stage_info_t *ret);
 *   bool exports_stage_run(stage_list_tensor_t *inputs, stage_list_tensor_t *ret,
 *                          stage_stage_error_t *err);
 *
 * Returning false means failure, with `err` filled (outpost_error does it).
 * Arguments belong to the stage, which frees them (stage_config_free,
 * stage_list_tensor_free). What it returns is freed by the bindings after
 * the host read it, so every string and list in a return value must come
 * from malloc (and an empty one be NULL: the bindings free only non-empty
 * ones): the helpers below allocate that way. Out of memory, they abort,
 * which the host reports as a failed request of this stage.
 *
 * wasi-nn is in stage.h as generated (wasi_nn_graph_load_by_name, ...).
 */
#ifndef OUTPOST_H
#define OUTPOST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "stage.h"

typedef outpost_plugin_types_element_type_t outpost_type_t;
#define OUTPOST_F16 OUTPOST_PLUGIN_TYPES_ELEMENT_TYPE_F16
#define OUTPOST_F32 OUTPOST_PLUGIN_TYPES_ELEMENT_TYPE_F32
#define OUTPOST_F64 OUTPOST_PLUGIN_TYPES_ELEMENT_TYPE_F64
#define OUTPOST_BF16 OUTPOST_PLUGIN_TYPES_ELEMENT_TYPE_BF16
#define OUTPOST_U8 OUTPOST_PLUGIN_TYPES_ELEMENT_TYPE_U8
#define OUTPOST_I32 OUTPOST_PLUGIN_TYPES_ELEMENT_TYPE_I32
#define OUTPOST_I64 OUTPOST_PLUGIN_TYPES_ELEMENT_TYPE_I64
#define OUTPOST_UTF8 OUTPOST_PLUGIN_TYPES_ELEMENT_TYPE_UTF8
/* "Any type" in a tensor spec. */
#define OUTPOST_ANY_TYPE (-1)
/* "Any rank" in a tensor spec. */
#define OUTPOST_ANY_RANK (-1)

typedef outpost_plugin_types_error_kind_t outpost_error_kind_t;
#define OUTPOST_INVALID_CONFIG OUTPOST_PLUGIN_TYPES_ERROR_KIND_INVALID_CONFIG
#define OUTPOST_INVALID_INPUT OUTPOST_PLUGIN_TYPES_ERROR_KIND_INVALID_INPUT
#define OUTPOST_INFERENCE OUTPOST_PLUGIN_TYPES_ERROR_KIND_INFERENCE
#define OUTPOST_INTERNAL OUTPOST_PLUGIN_TYPES_ERROR_KIND_INTERNAL

/* ---- errors ---- */

/* Fills `err` with `kind` and the printf-formatted message; returns false,
 * so that `return outpost_error(err, ...);` ends a failing export. */
bool outpost_error(stage_stage_error_t *err, outpost_error_kind_t kind, const char *format, ...)
    __attribute__((format(printf, 3, 4)));

/* ---- memory ---- */

/* malloc that aborts instead of returning NULL. */
void *outpost_alloc(size_t bytes);

/* ---- config ---- */

/* The JSON text of config key `key`, or NULL when it is not set. */
const stage_string_t *outpost_config_value(const stage_config_t *config, const char *key);

/* The contents of the file the pipeline gives as `name`, or NULL. */
const stage_list_u8_t *outpost_config_file(const stage_config_t *config, const char *name);

/* Fails with invalid-config naming the first key not in `known`. */
bool outpost_config_deny_unknown(const stage_config_t *config, const char *const *known,
                                 size_t count, stage_stage_error_t *err);

/* An integer key, `fallback` when unset; fails when set to anything else. */
bool outpost_config_int(const stage_config_t *config, const char *key, int64_t fallback,
                        int64_t *out, stage_stage_error_t *err);

/* A number key (integer or not), `fallback` when unset; fails when set to
 * anything else. */
bool outpost_config_number(const stage_config_t *config, const char *key, double fallback,
                           double *out, stage_stage_error_t *err);

/* A boolean key, `fallback` when unset; fails when set to anything else. */
bool outpost_config_bool(const stage_config_t *config, const char *key, bool fallback, bool *out,
                         stage_stage_error_t *err);

/* A list of strings, NUL-terminated, each from malloc (so a string with a
 * NUL character in it is refused where one is read). */
typedef struct {
    char **items;
    size_t count;
} outpost_strings_t;

void outpost_strings_free(outpost_strings_t *strings);

/* A key holding a list of strings. `*found` says whether it was set; when
 * set to anything but a list of strings it fails. */
bool outpost_config_strings(const stage_config_t *config, const char *key, bool *found,
                            outpost_strings_t *out, stage_stage_error_t *err);

/* The non-empty lines of UTF-8 text, each trimmed of surrounding spaces.
 * Fails (invalid-config, naming `what`) when the text is not UTF-8. */
bool outpost_lines(const uint8_t *text, size_t len, const char *what, outpost_strings_t *out,
                   stage_stage_error_t *err);

/* ---- inputs ---- */

/* The input tensor named `name`, or NULL with invalid-input when missing. */
const stage_tensor_t *outpost_input(const stage_list_tensor_t *inputs, const char *name,
                                    stage_stage_error_t *err);

/* Checks a tensor's rank. */
bool outpost_expect_rank(const stage_tensor_t *tensor, size_t rank, stage_stage_error_t *err);

/* Checks a tensor's type and rank (OUTPOST_ANY_RANK for any), and that its
 * data holds exactly the elements its dims say. */
bool outpost_expect(const stage_tensor_t *tensor, outpost_type_t type, int rank,
                    stage_stage_error_t *err);

/* A copy of an f32 tensor's elements (after outpost_expect's checks with
 * any rank), from malloc; `*count` is their number. NULL on failure. */
float *outpost_to_f32(const stage_tensor_t *tensor, size_t *count, stage_stage_error_t *err);

/* ---- outputs ---- */

/* Makes `list` a list of `count` tensors to fill with outpost_tensor. */
void outpost_outputs(stage_list_tensor_t *list, size_t count);

/* Fills `out` with a tensor, copying `name`, `dims` and `bytes` bytes of
 * `data`. Fails (internal) when the bytes do not match the dims and type. */
bool outpost_tensor(stage_tensor_t *out, const char *name, outpost_type_t type,
                    const uint32_t *dims, size_t rank, const void *data, size_t bytes,
                    stage_stage_error_t *err);

/* Fills `out` with a utf8 tensor holding `len` bytes of `text`. */
void outpost_text(stage_tensor_t *out, const char *name, const char *text, size_t len);

/* ---- describe ---- */

/* One dimension of a tensor spec: a symbol (`batch`), or a fixed size. */
typedef struct {
    const char *symbol;
    uint32_t fixed;
} outpost_dim_t;
#define OUTPOST_SYM(name) ((outpost_dim_t){.symbol = (name), .fixed = 0})
#define OUTPOST_FIXED(size) ((outpost_dim_t){.symbol = NULL, .fixed = (size)})

/* Fills `info` with the stage's name, version and description, and room
 * for `inputs` and `outputs` specs, to fill with outpost_spec. */
void outpost_info(stage_stage_info_t *info, const char *name, const char *version,
                  const char *description, size_t inputs, size_t outputs);

/* Fills a tensor spec: `type` may be OUTPOST_ANY_TYPE, `rank` may be
 * OUTPOST_ANY_RANK (then `dims` is not read). */
void outpost_spec(outpost_plugin_types_tensor_spec_t *spec, const char *name, int type,
                  const outpost_dim_t *dims, int rank);

/* Copies a NUL-terminated string into a bindings string, from malloc. */
void outpost_string(stage_string_t *out, const char *text);

#endif
