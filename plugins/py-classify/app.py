"""py-classify: softmax over class scores, the top `k` classes, and their
labels; the Rust `classify` stage written in Python, with the same config,
inputs and outputs (plugins/classify/src/lib.rs).

Input: `logits` f32 [batch, classes]. Outputs: `scores` f32 [batch, k]
(probabilities, highest first), `indices` i64 [batch, k], and `labels` utf8:
one line per batch row, the row's top-k labels separated by tabs.
Config: `labels` (list of strings) or the file `labels` (one per line);
`top_k` (default 1); `softmax` (default true).
"""

import math
import struct
from array import array

import outpost_guest as og


def f32(x: float) -> float:
    """x rounded to single precision (past its range, to an infinity), as
    the Rust stage computes."""
    return array("f", [x])[0]

# What Rust's str::trim drops: Unicode White_Space.
WHITE_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680" + "".join(
    chr(c) for c in range(0x2000, 0x200B)) + "\u2028\u2029\u202f\u205f\u3000"


def total_key(x: float) -> int:
    """f32 ordered as Rust's total_cmp orders it (NaN above +inf)."""
    bits = struct.unpack("<i", struct.pack("<f", x))[0]
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


class Classify(og.Stage):
    def __init__(self, config: og.Config):
        config.deny_unknown(["labels", "top_k", "softmax"])
        labels = config.get("labels")
        file = config.file("labels")
        if labels is not None and file is not None:
            raise og.StageError.invalid_config(
                "labels are given both as config key 'labels' and as file 'labels'; keep one")
        if file is not None:
            try:
                text = file.decode("utf-8")
            except UnicodeDecodeError as e:
                raise og.StageError.invalid_config(f"file 'labels' is not UTF-8: {e}") from None
            labels = [line.strip(WHITE_SPACE) for line in text.split("\n")]
            labels = [label for label in labels if label]
        elif labels is None:
            raise og.StageError.invalid_config(
                "no labels: set config key `labels = [...]` or give a file `labels` "
                "with one label per line")
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise og.StageError.invalid_config("config key 'labels' must be a list of strings")
        if not labels:
            raise og.StageError.invalid_config("the label list is empty")
        top_k = config.get_typed("top_k", int, 1)
        if not 1 <= top_k <= len(labels):
            raise og.StageError.invalid_config(
                f"top_k = {top_k} must be between 1 and the number of labels ({len(labels)})")
        self.labels = labels
        self.top_k = top_k
        self.softmax = config.get_typed("softmax", bool, True)

    def describe(self) -> og.StageInfo:
        batch, k = og.sym("batch"), og.fixed(self.top_k)
        return og.stage_info(
            "py-classify", "0.1.0", "softmax, top-k and labels (Python)",
            inputs=[og.spec("logits", og.ElementType.F32, [batch, og.fixed(len(self.labels))])],
            outputs=[
                og.spec("scores", og.ElementType.F32, [batch, k]),
                og.spec("indices", og.ElementType.I64, [batch, k]),
                og.spec("labels", og.ElementType.UTF8),
            ],
        )

    def run(self, inputs: og.Inputs) -> list:
        logits = inputs.take("logits")
        batch, classes = og.expect_rank(logits, 2)
        if classes != len(self.labels):
            raise og.StageError.invalid_input(
                f"logits have {classes} classes but {len(self.labels)} labels are configured")
        values = og.to_f32(logits)
        scores, indices, lines = [], [], []
        for row in range(batch):
            x = values[row * classes:(row + 1) * classes]
            probs = softmax(x) if self.softmax else x
            # Stable: the lower index first among equals.
            order = sorted(range(classes), key=lambda i: -total_key(probs[i]))[: self.top_k]
            scores += [probs[i] for i in order]
            indices += order
            lines.append("\t".join(self.labels[i] for i in order))
        dims = [batch, self.top_k]
        return [
            og.from_f32("scores", dims, scores),
            og.from_i64("indices", dims, indices),
            og.from_text("labels", "\n".join(lines)),
        ]


def softmax(row: list) -> list:
    """In single precision, step by step as the Rust stage does it."""
    top = -math.inf
    for v in row:
        if not math.isnan(v):
            top = max(top, v)
    exp = [f32(math.exp(f32(v - top))) for v in row]
    total = 0.0
    for e in exp:
        total = f32(total + e)
    return [f32(e / total) for e in exp]


WitWorld = og.export_stage(Classify)
