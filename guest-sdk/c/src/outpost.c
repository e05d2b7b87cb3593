/* outpost.c: the C SDK for Outpost stages (see outpost.h). */
#include "outpost.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void *outpost_alloc(size_t bytes) {
    void *p = malloc(bytes == 0 ? 1 : bytes);
    if (p == NULL) {
        abort();
    }
    return p;
}

/* A malloc'd copy of `len` bytes, or NULL when there are none: the
 * bindings free what they return only when its length is not 0. */
static void *copy_bytes(const void *data, size_t len) {
    if (len == 0) {
        return NULL;
    }
    void *p = outpost_alloc(len);
    memcpy(p, data, len);
    return p;
}

void outpost_string(stage_string_t *out, const char *text) {
    out->len = strlen(text);
    out->ptr = copy_bytes(text, out->len);
}

bool outpost_error(stage_stage_error_t *err, outpost_error_kind_t kind, const char *format, ...) {
    va_list args;
    va_start(args, format);
    int len = vsnprintf(NULL, 0, format, args);
    va_end(args);
    if (len < 0) {
        len = 0;
    }
    char *text = outpost_alloc((size_t)len + 1);
    va_start(args, format);
    vsnprintf(text, (size_t)len + 1, format, args);
    va_end(args);
    err->kind = kind;
    err->message.ptr = (uint8_t *)text;
    err->message.len = (size_t)len;
    return false;
}

/* ---- config ---- */

static bool equals(const stage_string_t *s, const char *text) {
    size_t len = strlen(text);
    return s->len == len && memcmp(s->ptr, text, len) == 0;
}

const stage_string_t *outpost_config_value(const stage_config_t *config, const char *key) {
    for (size_t i = 0; i < config->entries.len; i++) {
        if (equals(&config->entries.ptr[i].f0, key)) {
            return &config->entries.ptr[i].f1;
        }
    }
    return NULL;
}

const stage_list_u8_t *outpost_config_file(const stage_config_t *config, const char *name) {
    for (size_t i = 0; i < config->files.len; i++) {
        if (equals(&config->files.ptr[i].name, name)) {
            return &config->files.ptr[i].data;
        }
    }
    return NULL;
}

bool outpost_config_deny_unknown(const stage_config_t *config, const char *const *known,
                                 size_t count, stage_stage_error_t *err) {
    for (size_t i = 0; i < config->entries.len; i++) {
        const stage_string_t *key = &config->entries.ptr[i].f0;
        bool ok = false;
        for (size_t k = 0; k < count && !ok; k++) {
            ok = equals(key, known[k]);
        }
        if (!ok) {
            size_t used = 0;
            char list[256] = {0};
            for (size_t k = 0; k < count; k++) {
                int n = snprintf(list + used, sizeof list - used, "%s%s", k ? ", " : "", known[k]);
                if (n < 0 || (size_t)n >= sizeof list - used) {
                    break;
                }
                used += (size_t)n;
            }
            return outpost_error(err, OUTPOST_INVALID_CONFIG,
                                 "unknown config key '%.*s'; this stage knows: %s",
                                 (int)key->len, (const char *)key->ptr, list);
        }
    }
    return true;
}

/* A reader over JSON text. */
typedef struct {
    const uint8_t *p;
    const uint8_t *end;
} json_t;

static void skip_space(json_t *j) {
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')) {
        j->p++;
    }
}

static bool at_end(json_t *j) {
    skip_space(j);
    return j->p == j->end;
}

static bool value_error(stage_stage_error_t *err, const char *key, const stage_string_t *value,
                        const char *wanted) {
    return outpost_error(err, OUTPOST_INVALID_CONFIG, "config key '%s' must be %s, got %.*s", key,
                         wanted, (int)value->len, (const char *)value->ptr);
}

bool outpost_config_int(const stage_config_t *config, const char *key, int64_t fallback,
                        int64_t *out, stage_stage_error_t *err) {
    const stage_string_t *value = outpost_config_value(config, key);
    if (value == NULL) {
        *out = fallback;
        return true;
    }
    json_t j = {value->ptr, value->ptr + value->len};
    skip_space(&j);
    bool negative = j.p < j.end && *j.p == '-';
    if (negative) {
        j.p++;
    }
    if (j.p == j.end || *j.p < '0' || *j.p > '9') {
        return value_error(err, key, value, "an integer");
    }
    uint64_t magnitude = 0;
    while (j.p < j.end && *j.p >= '0' && *j.p <= '9') {
        uint64_t digit = (uint64_t)(*j.p - '0');
        if (magnitude > (UINT64_MAX - digit) / 10) {
            return value_error(err, key, value, "an integer that fits in 64 bits");
        }
        magnitude = magnitude * 10 + digit;
        j.p++;
    }
    if (!at_end(&j) || magnitude > (uint64_t)INT64_MAX + (negative ? 1u : 0u)) {
        return value_error(err, key, value, "an integer that fits in 64 bits");
    }
    *out = negative ? (int64_t)(0 - magnitude) : (int64_t)magnitude;
    return true;
}

bool outpost_config_number(const stage_config_t *config, const char *key, double fallback,
                           double *out, stage_stage_error_t *err) {
    const stage_string_t *value = outpost_config_value(config, key);
    if (value == NULL) {
        *out = fallback;
        return true;
    }
    /* strtod needs a terminated string; JSON numbers are short. */
    char text[64];
    if (value->len == 0 || value->len >= sizeof text) {
        return value_error(err, key, value, "a number");
    }
    memcpy(text, value->ptr, value->len);
    text[value->len] = '\0';
    char *end = NULL;
    double number = strtod(text, &end);
    /* strtod also reads "inf", "nan" and hex, which JSON does not have. */
    bool json = (text[0] == '-' || (text[0] >= '0' && text[0] <= '9')) && strpbrk(text, "xXnN") == NULL;
    if (!json || end != text + value->len) {
        return value_error(err, key, value, "a number");
    }
    *out = number;
    return true;
}

bool outpost_config_bool(const stage_config_t *config, const char *key, bool fallback, bool *out,
                         stage_stage_error_t *err) {
    const stage_string_t *value = outpost_config_value(config, key);
    if (value == NULL) {
        *out = fallback;
        return true;
    }
    if (equals(value, "true") || equals(value, "false")) {
        *out = equals(value, "true");
        return true;
    }
    return value_error(err, key, value, "true or false");
}

void outpost_strings_free(outpost_strings_t *strings) {
    for (size_t i = 0; i < strings->count; i++) {
        free(strings->items[i]);
    }
    free(strings->items);
    strings->items = NULL;
    strings->count = 0;
}

static void push(outpost_strings_t *strings, size_t *capacity, char *item) {
    if (strings->count == *capacity) {
        *capacity = *capacity ? *capacity * 2 : 8;
        char **grown = realloc(strings->items, *capacity * sizeof *grown);
        if (grown == NULL) {
            abort();
        }
        strings->items = grown;
    }
    strings->items[strings->count++] = item;
}

static int hex(uint8_t c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static bool read_hex4(json_t *j, uint32_t *out) {
    if (j->end - j->p < 4) {
        return false;
    }
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        int d = hex(j->p[i]);
        if (d < 0) {
            return false;
        }
        v = v * 16 + (uint32_t)d;
    }
    j->p += 4;
    *out = v;
    return true;
}

static size_t put_utf8(char *out, uint32_t c) {
    if (c < 0x80) {
        out[0] = (char)c;
        return 1;
    }
    if (c < 0x800) {
        out[0] = (char)(0xC0 | (c >> 6));
        out[1] = (char)(0x80 | (c & 0x3F));
        return 2;
    }
    if (c < 0x10000) {
        out[0] = (char)(0xE0 | (c >> 12));
        out[1] = (char)(0x80 | ((c >> 6) & 0x3F));
        out[2] = (char)(0x80 | (c & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (c >> 18));
    out[1] = (char)(0x80 | ((c >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((c >> 6) & 0x3F));
    out[3] = (char)(0x80 | (c & 0x3F));
    return 4;
}

/* A JSON string at j->p (the opening quote), into a NUL-terminated copy. */
static char *read_string(json_t *j) {
    if (j->p == j->end || *j->p != '"') {
        return NULL;
    }
    j->p++;
    /* Escapes only shrink the text, so its length bounds the copy. */
    char *out = outpost_alloc((size_t)(j->end - j->p) + 1);
    size_t n = 0;
    while (j->p < j->end && *j->p != '"') {
        uint8_t c = *j->p++;
        if (c != '\\') {
            out[n++] = (char)c;
            continue;
        }
        if (j->p == j->end) {
            break;
        }
        uint8_t e = *j->p++;
        uint32_t code;
        switch (e) {
        case '"': out[n++] = '"'; break;
        case '\\': out[n++] = '\\'; break;
        case '/': out[n++] = '/'; break;
        case 'b': out[n++] = '\b'; break;
        case 'f': out[n++] = '\f'; break;
        case 'n': out[n++] = '\n'; break;
        case 'r': out[n++] = '\r'; break;
        case 't': out[n++] = '\t'; break;
        case 'u':
            if (!read_hex4(j, &code)) {
                free(out);
                return NULL;
            }
            if (code >= 0xD800 && code < 0xDC00) {
                uint32_t low;
                if (j->end - j->p < 6 || j->p[0] != '\\' || j->p[1] != 'u') {
                    free(out);
                    return NULL;
                }
                j->p += 2;
                if (!read_hex4(j, &low) || low < 0xDC00 || low >= 0xE000) {
                    free(out);
                    return NULL;
                }
                code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
            } else if (code >= 0xDC00 && code < 0xE000) {
                free(out);
                return NULL;
            }
            if (code == 0) {
                /* Strings here are NUL-terminated: a NUL would cut one short. */
                free(out);
                return NULL;
            }
            n += put_utf8(out + n, code);
            break;
        default:
            free(out);
            return NULL;
        }
    }
    if (j->p == j->end) {
        free(out);
        return NULL;
    }
    j->p++; /* the closing quote */
    out[n] = '\0';
    return out;
}

bool outpost_config_strings(const stage_config_t *config, const char *key, bool *found,
                            outpost_strings_t *out, stage_stage_error_t *err) {
    out->items = NULL;
    out->count = 0;
    const stage_string_t *value = outpost_config_value(config, key);
    *found = value != NULL;
    if (value == NULL) {
        return true;
    }
    json_t j = {value->ptr, value->ptr + value->len};
    size_t capacity = 0;
    skip_space(&j);
    if (j.p == j.end || *j.p != '[') {
        return value_error(err, key, value, "a list of strings");
    }
    j.p++;
    skip_space(&j);
    if (j.p < j.end && *j.p == ']') {
        j.p++;
    } else {
        for (;;) {
            skip_space(&j);
            char *item = read_string(&j);
            if (item == NULL) {
                outpost_strings_free(out);
                return value_error(err, key, value, "a list of strings");
            }
            push(out, &capacity, item);
            skip_space(&j);
            if (j.p < j.end && *j.p == ',') {
                j.p++;
                continue;
            }
            if (j.p < j.end && *j.p == ']') {
                j.p++;
                break;
            }
            outpost_strings_free(out);
            return value_error(err, key, value, "a list of strings");
        }
    }
    if (!at_end(&j)) {
        outpost_strings_free(out);
        return value_error(err, key, value, "a list of strings");
    }
    return true;
}

/* Whether `len` bytes at `s` are well-formed UTF-8. */
static bool is_utf8(const uint8_t *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        uint8_t c = s[i];
        size_t extra;
        uint32_t min;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            extra = 1, min = 0x80;
        } else if ((c & 0xF0) == 0xE0) {
            extra = 2, min = 0x800;
        } else if ((c & 0xF8) == 0xF0) {
            extra = 3, min = 0x10000;
        } else {
            return false;
        }
        if (len - i <= extra) {
            return false;
        }
        uint32_t code = c & (0x3F >> extra);
        for (size_t k = 1; k <= extra; k++) {
            if ((s[i + k] & 0xC0) != 0x80) {
                return false;
            }
            code = (code << 6) | (s[i + k] & 0x3F);
        }
        if (code < min || code > 0x10FFFF || (code >= 0xD800 && code < 0xE000)) {
            return false;
        }
        i += extra + 1;
    }
    return true;
}

/* Whether a code point is Unicode White_Space (what Rust's str::trim drops). */
static bool is_white_space(uint32_t c) {
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

/* The code point of the well-formed UTF-8 sequence at s[i], and its length. */
static uint32_t decode_at(const uint8_t *s, size_t i, size_t *len) {
    uint8_t c = s[i];
    if (c < 0x80) {
        *len = 1;
        return c;
    }
    size_t extra = (c & 0xE0) == 0xC0 ? 1 : (c & 0xF0) == 0xE0 ? 2 : 3;
    uint32_t code = c & (0x3F >> extra);
    for (size_t k = 1; k <= extra; k++) {
        code = (code << 6) | (s[i + k] & 0x3F);
    }
    *len = extra + 1;
    return code;
}

/* The length of the well-formed UTF-8 sequence that ends at s[end - 1]. */
static size_t last_length(const uint8_t *s, size_t start, size_t end) {
    size_t i = end - 1;
    while (i > start && (s[i] & 0xC0) == 0x80) {
        i--;
    }
    return end - i;
}

bool outpost_lines(const uint8_t *text, size_t len, const char *what, outpost_strings_t *out,
                   stage_stage_error_t *err) {
    out->items = NULL;
    out->count = 0;
    if (!is_utf8(text, len)) {
        return outpost_error(err, OUTPOST_INVALID_CONFIG, "%s is not UTF-8", what);
    }
    size_t capacity = 0;
    size_t start = 0;
    while (start <= len) {
        size_t stop = start;
        while (stop < len && text[stop] != '\n') {
            stop++;
        }
        size_t a = start, b = stop, n;
        while (a < b && is_white_space(decode_at(text, a, &n))) {
            a += n;
        }
        while (b > a && is_white_space(decode_at(text, b - (n = last_length(text, a, b)), &n))) {
            b -= n;
        }
        if (memchr(text + a, 0, b - a) != NULL) {
            outpost_strings_free(out);
            return outpost_error(err, OUTPOST_INVALID_CONFIG,
                                 "%s has a NUL character in a line; labels cannot hold one", what);
        }
        if (b > a) {
            char *line = outpost_alloc(b - a + 1);
            memcpy(line, text + a, b - a);
            line[b - a] = '\0';
            push(out, &capacity, line);
        }
        start = stop + 1;
    }
    return true;
}

/* ---- inputs ---- */

const stage_tensor_t *outpost_input(const stage_list_tensor_t *inputs, const char *name,
                                    stage_stage_error_t *err) {
    for (size_t i = 0; i < inputs->len; i++) {
        if (equals(&inputs->ptr[i].name, name)) {
            return &inputs->ptr[i];
        }
    }
    char received[256] = {0};
    size_t used = 0;
    for (size_t i = 0; i < inputs->len; i++) {
        int n = snprintf(received + used, sizeof received - used, "%s%.*s", i ? ", " : "",
                         (int)inputs->ptr[i].name.len, (const char *)inputs->ptr[i].name.ptr);
        if (n < 0 || (size_t)n >= sizeof received - used) {
            break;
        }
        used += (size_t)n;
    }
    outpost_error(err, OUTPOST_INVALID_INPUT, "missing input tensor '%s'; received: [%s]", name,
                  received);
    return NULL;
}

static const char *type_name(outpost_type_t type) {
    switch (type) {
    case OUTPOST_F16: return "f16";
    case OUTPOST_F32: return "f32";
    case OUTPOST_F64: return "f64";
    case OUTPOST_BF16: return "bf16";
    case OUTPOST_U8: return "u8";
    case OUTPOST_I32: return "i32";
    case OUTPOST_I64: return "i64";
    case OUTPOST_UTF8: return "utf8";
    default: return "unknown";
    }
}

static size_t type_size(outpost_type_t type) {
    switch (type) {
    case OUTPOST_F16:
    case OUTPOST_BF16: return 2;
    case OUTPOST_F32:
    case OUTPOST_I32: return 4;
    case OUTPOST_F64:
    case OUTPOST_I64: return 8;
    default: return 1;
    }
}

/* The byte length dims and type call for, or false when it overflows. */
static bool expected_bytes(const uint32_t *dims, size_t rank, outpost_type_t type, size_t *bytes) {
    size_t total = type_size(type);
    for (size_t i = 0; i < rank; i++) {
        if (dims[i] == 0) {
            *bytes = 0;
            return true;
        }
    }
    for (size_t i = 0; i < rank; i++) {
        if (total > SIZE_MAX / dims[i]) {
            return false;
        }
        total *= dims[i];
    }
    *bytes = total;
    return true;
}

/* "[2, 3]", cut short when it does not fit. */
static void format_dims(char *out, size_t size, const uint32_t *dims, size_t rank) {
    size_t used = 0;
    int n = snprintf(out, size, "[");
    for (size_t i = 0; n >= 0 && (size_t)n < size - used && i < rank; i++) {
        used += (size_t)n;
        n = snprintf(out + used, size - used, "%s%u", i ? ", " : "", dims[i]);
    }
    if (n >= 0 && (size_t)n < size - used) {
        used += (size_t)n;
        snprintf(out + used, size - used, "]");
    }
}

bool outpost_expect_rank(const stage_tensor_t *tensor, size_t rank, stage_stage_error_t *err) {
    if (tensor->dims.len == rank) {
        return true;
    }
    char shape[128];
    format_dims(shape, sizeof shape, tensor->dims.ptr, tensor->dims.len);
    return outpost_error(err, OUTPOST_INVALID_INPUT,
                         "tensor '%.*s' has shape %s (rank %zu), expected rank %zu",
                         (int)tensor->name.len, (const char *)tensor->name.ptr, shape,
                         tensor->dims.len, rank);
}

bool outpost_expect(const stage_tensor_t *tensor, outpost_type_t type, int rank,
                    stage_stage_error_t *err) {
    const char *name = (const char *)tensor->name.ptr;
    int name_len = (int)tensor->name.len;
    if (tensor->element_type != type) {
        return outpost_error(err, OUTPOST_INVALID_INPUT, "tensor '%.*s' holds %s elements, expected %s",
                             name_len, name, type_name(tensor->element_type), type_name(type));
    }
    if (rank != OUTPOST_ANY_RANK && !outpost_expect_rank(tensor, (size_t)rank, err)) {
        return false;
    }
    size_t bytes = 0;
    bool fits = expected_bytes(tensor->dims.ptr, tensor->dims.len, type, &bytes);
    if (type != OUTPOST_UTF8 && (!fits || bytes != tensor->data.len)) {
        char shape[128], needs[32] = "too many";
        format_dims(shape, sizeof shape, tensor->dims.ptr, tensor->dims.len);
        if (fits) {
            snprintf(needs, sizeof needs, "%zu", bytes);
        }
        return outpost_error(err, OUTPOST_INVALID_INPUT,
                             "tensor '%.*s': shape %s of %s needs %s bytes but it holds %zu",
                             name_len, name, shape, type_name(type), needs, tensor->data.len);
    }
    return true;
}

float *outpost_to_f32(const stage_tensor_t *tensor, size_t *count, stage_stage_error_t *err) {
    if (!outpost_expect(tensor, OUTPOST_F32, OUTPOST_ANY_RANK, err)) {
        return NULL;
    }
    /* The bytes may sit at any address: copy them to aligned floats. */
    *count = tensor->data.len / sizeof(float);
    float *values = outpost_alloc(tensor->data.len);
    memcpy(values, tensor->data.ptr, tensor->data.len);
    return values;
}

/* ---- outputs ---- */

/* `count` zeroed items of `size` bytes from malloc, or NULL for none. */
static void *zeroed(size_t count, size_t size) {
    if (count == 0) {
        return NULL;
    }
    void *p = calloc(count, size);
    if (p == NULL) {
        abort();
    }
    return p;
}

void outpost_outputs(stage_list_tensor_t *list, size_t count) {
    list->ptr = zeroed(count, sizeof *list->ptr);
    list->len = count;
}

bool outpost_tensor(stage_tensor_t *out, const char *name, outpost_type_t type,
                    const uint32_t *dims, size_t rank, const void *data, size_t bytes,
                    stage_stage_error_t *err) {
    size_t expected;
    if (type != OUTPOST_UTF8 && (!expected_bytes(dims, rank, type, &expected) || expected != bytes)) {
        return outpost_error(err, OUTPOST_INTERNAL,
                             "output '%s': %zu bytes of data do not match its dims and type %s",
                             name, bytes, type_name(type));
    }
    outpost_string(&out->name, name);
    out->dims.ptr = copy_bytes(dims, rank * sizeof *dims);
    out->dims.len = rank;
    out->element_type = type;
    out->data.ptr = copy_bytes(data, bytes);
    out->data.len = bytes;
    return true;
}

void outpost_text(stage_tensor_t *out, const char *name, const char *text, size_t len) {
    uint32_t dims[1] = {(uint32_t)len};
    outpost_string(&out->name, name);
    out->dims.ptr = copy_bytes(dims, sizeof dims);
    out->dims.len = 1;
    out->element_type = OUTPOST_UTF8;
    out->data.ptr = copy_bytes(text, len);
    out->data.len = len;
}

/* ---- describe ---- */

void outpost_info(stage_stage_info_t *info, const char *name, const char *version,
                  const char *description, size_t inputs, size_t outputs) {
    outpost_string(&info->name, name);
    outpost_string(&info->version, version);
    outpost_string(&info->description, description);
    info->inputs.ptr = zeroed(inputs, sizeof *info->inputs.ptr);
    info->inputs.len = inputs;
    info->outputs.ptr = zeroed(outputs, sizeof *info->outputs.ptr);
    info->outputs.len = outputs;
}

void outpost_spec(outpost_plugin_types_tensor_spec_t *spec, const char *name, int type,
                  const outpost_dim_t *dims, int rank) {
    outpost_string(&spec->name, name);
    spec->element_type.is_some = type != OUTPOST_ANY_TYPE;
    spec->element_type.val = type == OUTPOST_ANY_TYPE ? 0 : (outpost_type_t)type;
    spec->dims.is_some = rank != OUTPOST_ANY_RANK;
    if (rank == OUTPOST_ANY_RANK) {
        spec->dims.val.ptr = NULL;
        spec->dims.val.len = 0;
        return;
    }
    spec->dims.val.ptr = zeroed((size_t)rank, sizeof *spec->dims.val.ptr);
    spec->dims.val.len = (size_t)rank;
    for (int i = 0; i < rank; i++) {
        outpost_plugin_types_dim_t *d = &spec->dims.val.ptr[i];
        if (dims[i].symbol != NULL) {
            d->tag = OUTPOST_PLUGIN_TYPES_DIM_SYMBOL;
            outpost_string(&d->val.symbol, dims[i].symbol);
        } else {
            d->tag = OUTPOST_PLUGIN_TYPES_DIM_FIXED;
            d->val.fixed = dims[i].fixed;
        }
    }
}
