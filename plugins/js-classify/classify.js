// js-classify: softmax over class scores, the top `k` classes, and their
// labels; the Rust `classify` stage written in JavaScript, with the same
// config, inputs and outputs (plugins/classify/src/lib.rs).
//
// Input: `logits` f32 [batch, classes]. Outputs: `scores` f32 [batch, k]
// (probabilities, highest first), `indices` i64 [batch, k], and `labels`
// utf8: one line per batch row, the row's top-k labels separated by tabs.
// Config: `labels` (list of strings) or the file `labels` (one per line);
// `top_k` (default 1); `softmax` (default true).

import * as og from './outpost-guest.js';

// The bits of an f32 ordered as Rust's total_cmp orders them (a positive
// NaN above +inf, a negative one below -inf).
const totalKey = (b) => b ^ ((b >> 31) >>> 1);

// The bits of f32 values. (Reading a NaN out of a Float32Array gives the
// engine's one NaN: its sign would be lost.)
function bitsOf(values) {
  return new Int32Array(Float32Array.from(values).buffer);
}

// What Rust's str::trim drops: Unicode White_Space.
const WHITE = '\t\n\v\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000';
const TRIM = new RegExp(`^[${WHITE}]+|[${WHITE}]+$`, 'g');

// In single precision, step by step as the Rust stage does it.
function softmax(row) {
  let max = -Infinity;
  for (const v of row) if (!Number.isNaN(v)) max = Math.max(max, v);
  const exp = Array.from(row, (v) => Math.fround(Math.exp(Math.fround(v - max))));
  let sum = 0;
  for (const e of exp) sum = Math.fround(sum + e);
  return exp.map((e) => Math.fround(e / sum));
}

class Classify {
  constructor(config) {
    config.denyUnknown(['labels', 'top_k', 'softmax']);
    let labels = config.getTyped('labels', 'strings');
    const file = config.file('labels');
    if (labels !== undefined && file !== undefined) {
      throw og.StageError.invalidConfig("labels are given both as config key 'labels' and as file 'labels'; keep one");
    }
    if (file !== undefined) {
      let text;
      try {
        text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(file);
      } catch (e) {
        throw og.StageError.invalidConfig(`file 'labels' is not UTF-8: ${e.message}`);
      }
      labels = text.split('\n').map((l) => l.replace(TRIM, '')).filter((l) => l.length > 0);
    } else if (labels === undefined) {
      throw og.StageError.invalidConfig(
        'no labels: set config key `labels = [...]` or give a file `labels` with one label per line');
    }
    if (labels.length === 0) throw og.StageError.invalidConfig('the label list is empty');
    const topK = config.getTyped('top_k', 'integer', 1);
    if (topK < 1 || topK > labels.length) {
      throw og.StageError.invalidConfig(`top_k = ${topK} must be between 1 and the number of labels (${labels.length})`);
    }
    this.labels = labels;
    this.topK = topK;
    this.softmax = config.getTyped('softmax', 'boolean', true);
  }

  describe() {
    const batch = og.sym('batch');
    const k = og.fixed(this.topK);
    return og.stageInfo('js-classify', '0.1.0', 'softmax, top-k and labels (JavaScript)',
      [og.spec('logits', 'f32', [batch, og.fixed(this.labels.length)])],
      [og.spec('scores', 'f32', [batch, k]), og.spec('indices', 'i64', [batch, k]), og.spec('labels', 'utf8')]);
  }

  run(inputs) {
    const logits = inputs.take('logits');
    const [batch, classes] = og.expectRank(logits, 2);
    if (classes !== this.labels.length) {
      throw og.StageError.invalidInput(`logits have ${classes} classes but ${this.labels.length} labels are configured`);
    }
    const values = og.toF32(logits);
    // Without softmax the scores are the inputs' own bits, NaN signs included.
    const raw = new Int32Array(logits.data.slice().buffer);
    const scores = new Int32Array(batch * this.topK);
    const indices = [];
    const lines = [];
    for (let b = 0; b < batch; b++) {
      const bits = this.softmax
        ? bitsOf(softmax(values.subarray(b * classes, (b + 1) * classes)))
        : raw.subarray(b * classes, (b + 1) * classes);
      // Array.prototype.sort is stable: the lower index first among equals.
      const order = [...bits.keys()].sort((x, y) => totalKey(bits[y]) - totalKey(bits[x])).slice(0, this.topK);
      order.forEach((i, r) => {
        scores[b * this.topK + r] = bits[i];
        indices.push(i);
      });
      lines.push(order.map((i) => this.labels[i]).join('\t'));
    }
    const dims = [batch, this.topK];
    const scoreTensor = { name: 'scores', dims: Uint32Array.from(dims), elementType: 'f32', data: new Uint8Array(scores.buffer) };
    return [scoreTensor, og.fromI64('indices', dims, indices), og.fromText('labels', lines.join('\n'))];
  }
}

export const { init, describe, run } = og.exportStage(Classify);
