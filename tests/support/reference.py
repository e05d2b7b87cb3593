#!/usr/bin/env python3
"""Reference results the end-to-end tests compare Outpost against.

    reference.py tokenize TOKENIZER_JSON   < sentences.json  -> [[ids...], ...]
    reference.py embed MODEL TOKENIZER_JSON OUTPUT_NAME < sentences.json -> [[f32 x 384], ...]
    reference.py toy-decoder OUT.onnx < {}   -> writes a tiny decoder with a key/value cache

Tokenization is Hugging Face `tokenizers`; inference is ONNX Runtime (CPU, one
thread); pooling is sentence-transformers' masked mean and L2 normalisation.
"""

import json
import sys

import numpy as np


def tokenizer(path):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(path)
    tok.no_padding()
    tok.enable_truncation(max_length=128)
    return tok


def tokenize(path, sentences):
    tok = tokenizer(path)
    return [tok.encode(s).ids for s in sentences]


def embed(model_path, tokenizer_path, output_name, sentences):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    tok = tokenizer(tokenizer_path)
    result = []
    for sentence in sentences:
        enc = tok.encode(sentence)
        feeds = {
            "input_ids": np.array([enc.ids], dtype=np.int64),
            "attention_mask": np.array([enc.attention_mask], dtype=np.int64),
            "token_type_ids": np.array([enc.type_ids], dtype=np.int64),
        }
        feeds = {k: v for k, v in feeds.items() if k in wanted}
        (tokens,) = session.run([output_name], feeds)
        mask = feeds["attention_mask"][..., None].astype(np.float32)
        pooled = (tokens * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
        pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        result.append(pooled[0].tolist())
    return result


def toy_decoder(out):
    """A decoder-shaped model small enough to check the host's cache wiring
    by hand. Inputs: input_ids [batch, seq], attention_mask [batch, total],
    position_ids [batch, seq], past.a / past.b f32 [batch, 2, past, 4].
    Each new token t becomes a [2, 4] block of t (past.a) and of 10 t
    (past.b), appended along axis 2. Outputs: present.a / present.b, and what
    the host fed: `positions` (position_ids as given), `mask_sum` (the sum of
    attention_mask), `cache_sum` (the sum of present.a), `logits` [batch,
    seq, 3] = ids times (1, 2, 3)."""
    import onnx
    from onnx import TensorProto, helper

    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    inputs = [
        helper.make_tensor_value_info("input_ids", i64, ["batch", "seq"]),
        helper.make_tensor_value_info("attention_mask", i64, ["batch", "total"]),
        helper.make_tensor_value_info("position_ids", i64, ["batch", "seq"]),
        helper.make_tensor_value_info("past.a", f32, ["batch", 2, "past", 4]),
        helper.make_tensor_value_info("past.b", f32, ["batch", 2, "past", 4]),
    ]
    outputs = [
        helper.make_tensor_value_info("logits", f32, ["batch", "seq", 3]),
        helper.make_tensor_value_info("present.a", f32, ["batch", 2, "total", 4]),
        helper.make_tensor_value_info("present.b", f32, ["batch", 2, "total", 4]),
        helper.make_tensor_value_info("positions", i64, ["batch", "seq"]),
        helper.make_tensor_value_info("mask_sum", i64, []),
        helper.make_tensor_value_info("cache_sum", f32, []),
    ]
    consts = [
        helper.make_tensor("axes_13", i64, [2], [1, 3]),
        helper.make_tensor("block", f32, [1, 2, 1, 4], [1.0] * 8),
        helper.make_tensor("ten", f32, [], [10.0]),
        helper.make_tensor("weights", f32, [3], [1.0, 2.0, 3.0]),
        helper.make_tensor("axes_2", i64, [1], [2]),
    ]
    nodes = [
        helper.make_node("Cast", ["input_ids"], ["ids_f"], to=f32),
        helper.make_node("Unsqueeze", ["ids_f", "axes_13"], ["ids_4d"]),  # [b, 1, seq, 1]
        helper.make_node("Mul", ["ids_4d", "block"], ["new_a"]),  # [b, 2, seq, 4]
        helper.make_node("Mul", ["new_a", "ten"], ["new_b"]),
        helper.make_node("Concat", ["past.a", "new_a"], ["present.a"], axis=2),
        helper.make_node("Concat", ["past.b", "new_b"], ["present.b"], axis=2),
        helper.make_node("Unsqueeze", ["ids_f", "axes_2"], ["ids_3d"]),  # [b, seq, 1]
        helper.make_node("Mul", ["ids_3d", "weights"], ["logits"]),
        helper.make_node("Identity", ["position_ids"], ["positions"]),
        helper.make_node("ReduceSum", ["attention_mask"], ["mask_sum"], keepdims=0),
        helper.make_node("ReduceSum", ["present.a"], ["cache_sum"], keepdims=0),
    ]
    graph = helper.make_graph(nodes, "toy-decoder", inputs, outputs, initializer=consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, out)
    return {"written": out}


def main():
    sentences = json.load(sys.stdin)
    command = sys.argv[1]
    if command == "tokenize":
        out = tokenize(sys.argv[2], sentences)
    elif command == "embed":
        out = embed(sys.argv[2], sys.argv[3], sys.argv[4], sentences)
    elif command == "toy-decoder":
        out = toy_decoder(sys.argv[2])
    else:
        raise SystemExit(f"unknown command {command}")
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
