#!/usr/bin/env python3
"""Makes the demo's intent classifier: intent.onnx, vocab.txt and labels.txt.

A bag-of-words softmax regression over WordPiece tokens, trained here from
templated commands for a drone and a factory line. Deterministic: running it
again writes the same files. Needs numpy and onnx (tests/requirements.txt).

    python3 host/pipelines/demo/make_intent_model.py
"""

import itertools
import re
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent

PLACES = ["the red building", "the north gate", "waypoint three", "the loading dock",
          "the roof", "the parking lot", "the water tower", "the east field"]
LINES = ["conveyor one", "conveyor two", "the belt", "the line", "the conveyor", "the packing line"]

INTENTS = {
    "fly_to": [f"{verb} {place}" for verb, place in itertools.product(
        ["fly to", "go to", "navigate to", "head over to", "move to", "fly over to"], PLACES)],
    "land": ["land", "land now", "land the drone", "touch down on the pad", "descend and land",
             "land on the roof", "set down here", "please land", "land immediately", "bring it down"],
    "take_off": ["take off", "lift off now", "launch the drone", "start flying", "take off now",
                 "get airborne", "lift off", "launch", "begin the flight", "go up"],
    "return_home": ["return home", "come back to base", "fly back home", "return to launch point",
                    "go home", "head back to base", "return to base now", "come home",
                    "fly back to the start", "return to the dock"],
    "stop_conveyor": [f"{verb} {line}" for verb, line in itertools.product(
        ["stop", "halt", "shut down", "pause", "freeze", "turn off"], LINES)],
    "start_conveyor": [f"{verb} {line}" for verb, line in itertools.product(
        ["start", "run", "resume", "turn on", "restart", "power up"], LINES)],
    "take_photo": ["take a picture", "capture an image", "snap a photo of the gate", "record a photo",
                   "take a photo", "photograph the roof", "grab a picture of the field",
                   "shoot a picture", "capture a photo now", "take a snapshot"],
    "status_report": ["what is the battery level", "report status", "how much battery is left",
                      "give me a status update", "status", "battery status", "are you ok",
                      "report your position", "what is your altitude", "system status please"],
}

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def words(text):
    """BERT's basic tokenizer for lowercase ASCII: split on spaces and punctuation."""
    return re.findall(r"[a-z0-9]+|[^\sa-z0-9]", text.lower())


def main():
    labels = list(INTENTS)
    vocab = SPECIALS + sorted({w for examples in INTENTS.values() for t in examples for w in words(t)})
    index = {w: i for i, w in enumerate(vocab)}

    # Features: the mean one-hot over [CLS] words [SEP], exactly what the ONNX
    # graph computes from input_ids under an all-ones attention mask.
    rows, targets = [], []
    for label, examples in INTENTS.items():
        for text in examples:
            ids = [index["[CLS]"]] + [index[w] for w in words(text)] + [index["[SEP]"]]
            x = np.zeros(len(vocab))
            np.add.at(x, ids, 1.0)
            rows.append(x / len(ids))
            targets.append(labels.index(label))
    x, y = np.array(rows), np.array(targets)
    onehot = np.eye(len(labels))[y]

    weights = np.zeros((len(vocab), len(labels)))
    bias = np.zeros(len(labels))
    for _ in range(3000):
        logits = x @ weights + bias
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        grad = (p - onehot) / len(x)
        weights -= 20.0 * (x.T @ grad + 1e-4 * weights)
        bias -= 20.0 * grad.sum(axis=0)
    accuracy = ((x @ weights + bias).argmax(axis=1) == y).mean()
    assert accuracy > 0.97, f"training accuracy {accuracy:.3f} is too low"

    graph = helper.make_graph(
        nodes=[
            helper.make_node("Gather", ["embedding", "input_ids"], ["token_scores"]),
            helper.make_node("Cast", ["attention_mask"], ["mask"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["mask", "axis_2"], ["mask3"]),
            helper.make_node("Mul", ["token_scores", "mask3"], ["kept"]),
            helper.make_node("ReduceSum", ["kept", "axis_1"], ["summed"], keepdims=0),
            helper.make_node("ReduceSum", ["mask", "axis_1"], ["count"], keepdims=1),
            helper.make_node("Max", ["count", "one"], ["count_at_least_one"]),
            helper.make_node("Div", ["summed", "count_at_least_one"], ["mean"]),
            helper.make_node("Add", ["mean", "bias"], ["logits"]),
        ],
        name="intent",
        inputs=[
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"]),
        ],
        outputs=[helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(labels)])],
        initializer=[
            numpy_helper.from_array(weights.astype(np.float32), "embedding"),
            numpy_helper.from_array(bias.astype(np.float32), "bias"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis_1"),
            numpy_helper.from_array(np.array([2], dtype=np.int64), "axis_2"),
            numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="outpost make_intent_model.py")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, HERE / "intent.onnx")
    (HERE / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (HERE / "labels.txt").write_text("\n".join(labels) + "\n")
    print(f"intent.onnx: {len(vocab)} tokens x {len(labels)} intents, "
          f"training accuracy {accuracy:.3f}, {len(x)} examples")


if __name__ == "__main__":
    main()
