#!/usr/bin/env python3
"""Reference results the end-to-end tests compare Outpost against.

    reference.py tokenize TOKENIZER_JSON   < sentences.json  -> [[ids...], ...]
    reference.py embed MODEL TOKENIZER_JSON OUTPUT_NAME < sentences.json -> [[f32 x 384], ...]

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


def main():
    sentences = json.load(sys.stdin)
    command = sys.argv[1]
    if command == "tokenize":
        out = tokenize(sys.argv[2], sentences)
    elif command == "embed":
        out = embed(sys.argv[2], sys.argv[3], sys.argv[4], sentences)
    else:
        raise SystemExit(f"unknown command {command}")
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
