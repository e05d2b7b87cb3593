/*
 * c-classify: softmax over class scores, the top `k` classes, and their
 * labels; the Rust `classify` stage written in C, with the same config,
 * inputs and outputs (plugins/classify/src/lib.rs).
 *
 * Input: `logits` f32 [batch, classes]. Outputs: `scores` f32 [batch, k]
 * (probabilities, highest first), `indices` i64 [batch, k], and `labels`
 * utf8: one line per batch row, the row's top-k labels separated by tabs.
 * Config: `labels` (list of strings) or the file `labels` (one per line);
 * `top_k` (default 1); `softmax` (default true).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "outpost.h"

static outpost_strings_t labels;
static size_t top_k;
static bool softmax;
/* Whether init succeeded: the state above is only meaningful then. */
static bool initialized;

bool exports_stage_init(stage_config_t *config, stage_stage_error_t *err) {
    static const char *const known[] = {"labels", "top_k", "softmax"};
    bool ok = outpost_config_deny_unknown(config, known, 3, err);
    bool listed = false;
    ok = ok && outpost_config_strings(config, "labels", &listed, &labels, err);
    const stage_list_u8_t *file = ok ? outpost_config_file(config, "labels") : NULL;
    if (ok && listed && file != NULL) {
        ok = outpost_error(err, OUTPOST_INVALID_CONFIG,
                           "labels are given both as config key 'labels' and as file 'labels'; "
                           "keep one");
    } else if (ok && file != NULL) {
        ok = outpost_lines(file->ptr, file->len, "file 'labels'", &labels, err);
    } else if (ok && !listed) {
        ok = outpost_error(err, OUTPOST_INVALID_CONFIG,
                           "no labels: set config key `labels = [...]` or give a file `labels` "
                           "with one label per line");
    }
    if (ok && labels.count == 0) {
        ok = outpost_error(err, OUTPOST_INVALID_CONFIG, "the label list is empty");
    }
    int64_t k = 1;
    ok = ok && outpost_config_int(config, "top_k", 1, &k, err);
    if (ok && (k < 1 || (uint64_t)k > labels.count)) {
        ok = outpost_error(err, OUTPOST_INVALID_CONFIG,
                           "top_k = %lld must be between 1 and the number of labels (%zu)",
                           (long long)k, labels.count);
    }
    top_k = ok ? (size_t)k : 0;
    ok = ok && outpost_config_bool(config, "softmax", true, &softmax, err);
    stage_config_free(config);
    initialized = ok;
    return ok;
}

void exports_stage_describe(stage_stage_info_t *ret) {
    outpost_info(ret, "c-classify", "0.1.0", "softmax, top-k and labels (C)", 1, 3);
    outpost_dim_t logits[] = {OUTPOST_SYM("batch"), OUTPOST_FIXED((uint32_t)labels.count)};
    outpost_dim_t top[] = {OUTPOST_SYM("batch"), OUTPOST_FIXED((uint32_t)top_k)};
    outpost_spec(&ret->inputs.ptr[0], "logits", OUTPOST_F32, logits, 2);
    outpost_spec(&ret->outputs.ptr[0], "scores", OUTPOST_F32, top, 2);
    outpost_spec(&ret->outputs.ptr[1], "indices", OUTPOST_I64, top, 2);
    outpost_spec(&ret->outputs.ptr[2], "labels", OUTPOST_UTF8, NULL, OUTPOST_ANY_RANK);
}

/* f32 ordered as Rust's total_cmp orders it (NaN above +inf). */
static int32_t total_key(float v) {
    int32_t bits;
    memcpy(&bits, &v, sizeof bits);
    return bits ^ (int32_t)(((uint32_t)(bits >> 31)) >> 1);
}

/* The row's top k (the lower index first among equals) into `order`. */
static void top(const float *probs, size_t classes, bool *taken, size_t *order) {
    memset(taken, 0, classes * sizeof(bool));
    for (size_t r = 0; r < top_k; r++) {
        size_t best = classes;
        for (size_t c = 0; c < classes; c++) {
            if (!taken[c] && (best == classes || total_key(probs[c]) > total_key(probs[best]))) {
                best = c;
            }
        }
        taken[best] = true;
        order[r] = best;
    }
}

static void softmax_row(const float *x, size_t classes, float *probs) {
    float max = -INFINITY, sum = 0;
    for (size_t c = 0; c < classes; c++) {
        max = fmaxf(max, x[c]);
    }
    for (size_t c = 0; c < classes; c++) {
        probs[c] = expf(x[c] - max);
        sum += probs[c];
    }
    for (size_t c = 0; c < classes; c++) {
        probs[c] /= sum;
    }
}

static bool classify(const stage_tensor_t *logits, stage_list_tensor_t *ret,
                     stage_stage_error_t *err) {
    /* Checked in the Rust stage's order: rank, classes, then type and size. */
    if (!outpost_expect_rank(logits, 2, err)) {
        return false;
    }
    size_t batch = logits->dims.ptr[0], classes = logits->dims.ptr[1];
    if (classes != labels.count) {
        return outpost_error(err, OUTPOST_INVALID_INPUT,
                             "logits have %zu classes but %zu labels are configured", classes,
                             labels.count);
    }
    size_t count;
    float *values = outpost_to_f32(logits, &count, err);
    if (values == NULL) {
        return false;
    }
    /* batch * k <= batch * classes = count, which fits; eight bytes each
     * might not. */
    size_t picked = batch * top_k;
    if (picked > SIZE_MAX / sizeof(int64_t)) {
        free(values);
        return outpost_error(err, OUTPOST_INVALID_INPUT,
                             "a batch of %zu rows is too large for this stage", batch);
    }
    float *scores = outpost_alloc(picked * sizeof(float));
    int64_t *indices = outpost_alloc(picked * sizeof(int64_t));
    size_t *order = outpost_alloc(top_k * sizeof(size_t));
    float *probs = outpost_alloc(classes * sizeof(float));
    bool *taken = outpost_alloc(classes * sizeof(bool));
    /* The text: each picked label, and a separator after all but the last. */
    size_t text_len = picked > 0 ? picked - 1 : 0;
    bool fits = true;
    for (size_t row = 0; row < batch; row++) {
        const float *x = values + row * classes;
        if (softmax) {
            softmax_row(x, classes, probs);
        } else {
            memcpy(probs, x, classes * sizeof(float));
        }
        top(probs, classes, taken, order);
        for (size_t r = 0; r < top_k; r++) {
            scores[row * top_k + r] = probs[order[r]];
            indices[row * top_k + r] = (int64_t)order[r];
            size_t n = strlen(labels.items[order[r]]);
            fits = fits && text_len <= SIZE_MAX - n;
            text_len += n;
        }
    }
    bool ok = fits || outpost_error(err, OUTPOST_INVALID_INPUT,
                                    "the labels of a batch of %zu rows do not fit in memory", batch);
    char *text = ok ? outpost_alloc(text_len) : NULL;
    size_t at = 0;
    for (size_t i = 0; ok && i < picked; i++) {
        if (i > 0) {
            text[at++] = i % top_k == 0 ? '\n' : '\t';
        }
        const char *label = labels.items[indices[i]];
        size_t n = strlen(label);
        memcpy(text + at, label, n);
        at += n;
    }
    uint32_t dims[2] = {(uint32_t)batch, (uint32_t)top_k};
    if (ok) {
        outpost_outputs(ret, 3);
        ok = outpost_tensor(&ret->ptr[0], "scores", OUTPOST_F32, dims, 2, scores,
                            picked * sizeof(float), err) &&
             outpost_tensor(&ret->ptr[1], "indices", OUTPOST_I64, dims, 2, indices,
                            picked * sizeof(int64_t), err);
        if (ok) {
            outpost_text(&ret->ptr[2], "labels", text, text_len);
        } else {
            stage_list_tensor_free(ret);
        }
    }
    free(values);
    free(scores);
    free(indices);
    free(order);
    free(probs);
    free(taken);
    free(text);
    return ok;
}

bool exports_stage_run(stage_list_tensor_t *inputs, stage_list_tensor_t *ret,
                       stage_stage_error_t *err) {
    if (!initialized) {
        stage_list_tensor_free(inputs);
        return outpost_error(err, OUTPOST_INTERNAL,
                             "the host called the stage before `init` succeeded");
    }
    const stage_tensor_t *logits = outpost_input(inputs, "logits", err);
    bool ok = logits != NULL && classify(logits, ret, err);
    stage_list_tensor_free(inputs);
    return ok;
}
