#!/usr/bin/env python3
"""Greedy-decoding reference for the SmolLM2 ONNX files written by convert.py.

For each prompt: wrap it in the ChatML template (with the default system prompt
of the GGUF's chat template), encode it with tokenizer.json (no tokens added by
the tokenizer), run the whole prompt through the model in one call (prefill),
then generate one token per call, feeding present.* back as past_key_values.*,
taking the argmax each step. ONNX Runtime runs on the CPU with one intra-op
thread, so timings are comparable with a single-threaded runtime.

    target/py/bin/python host/pipelines/smollm2/reference.py                  # built-in prompts, both models
    target/py/bin/python host/pipelines/smollm2/reference.py -p "What is the capital of France?"
    target/py/bin/python host/pipelines/smollm2/reference.py --models model.onnx --json out.json --stop
"""

import argparse
import json
import re
import sys
import time
from pathlib import Path

try:
    import numpy as np
    import onnxruntime as ort
    from tokenizers import Tokenizer
except ImportError as e:
    raise SystemExit(f"{e}: run this script with the Python that has tests/requirements.txt installed "
                     f"(target/py/bin/python -m pip install -r tests/requirements.txt)")

REPO = Path(__file__).resolve().parents[3]
DEFAULT_DIR = REPO / "target" / "models" / "smollm2"

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "What is 12 + 7?",
    "Translate 'good morning' into Spanish.",
    "Give me three tips for staying focused while studying.",
    "Write a Python function that returns the square of a number.",
    "Why is the sky blue?",
    "Name the planets of the solar system.",
    "What is the boiling point of water in Celsius?",
    "Summarize in one sentence: The cat sat on the mat all afternoon, watching birds through the window.",
]


def default_system_prompt(template):
    """The system message the GGUF's chat template inserts when the conversation has none."""
    m = re.search(r"<\|im_start\|>system\n(.*?)<\|im_end\|>", template, re.S)
    return m.group(1) if m else None


def chatml(prompt, system):
    head = f"<|im_start|>system\n{system}<|im_end|>\n" if system is not None else ""
    return f"{head}<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"


class Model:
    def __init__(self, path):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.past_names = [i.name for i in self.session.get_inputs() if i.name.startswith("past_key_values.")]
        self.present_names = [o.name for o in self.session.get_outputs() if o.name.startswith("present.")]
        shape = next(i.shape for i in self.session.get_inputs() if i.name == self.past_names[0])
        self.kv_heads, self.head_dim = shape[1], shape[3]

    def run(self, ids, positions, mask, past):
        feed = {"input_ids": np.array([ids], dtype=np.int64),
                "attention_mask": np.array([mask], dtype=np.int64),
                "position_ids": np.array([positions], dtype=np.int64)}
        feed.update(zip(self.past_names, past))
        out = self.session.run(["logits"] + self.present_names, feed)
        return out[0][0], out[1:]

    def generate(self, prompt_ids, max_new, stop_ids=()):
        """Greedy decoding; returns (new ids, prefill seconds, per-token decode seconds)."""
        empty = np.zeros((1, self.kv_heads, 0, self.head_dim), dtype=np.float32)
        n = len(prompt_ids)
        t0 = time.perf_counter()
        logits, past = self.run(prompt_ids, list(range(n)), [1] * n, [empty] * len(self.past_names))
        prefill = time.perf_counter() - t0
        new = []
        step_times = []
        token = int(np.argmax(logits[-1]))
        while True:
            new.append(token)
            if token in stop_ids or len(new) == max_new:
                break
            pos = n + len(new) - 1
            t0 = time.perf_counter()
            logits, past = self.run([token], [pos], [1] * (pos + 1), past)
            step_times.append(time.perf_counter() - t0)
            token = int(np.argmax(logits[-1]))
        return new, prefill, step_times


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"convert.py's output directory (default {DEFAULT_DIR})")
    ap.add_argument("-p", "--prompt", action="append", help="prompt (repeatable); default: a built-in list")
    ap.add_argument("--models", nargs="+", default=["model.onnx", "model-int8.onnx"], help="model files in --dir")
    ap.add_argument("-n", "--max-new-tokens", type=int, default=32)
    ap.add_argument("--stop", action="store_true", help="stop at <|im_end|> / <|endoftext|> (generation.json)")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()

    needed = ["tokenizer.json", "chat_template.jinja", "generation.json"] + args.models
    missing = [n for n in needed if not (args.dir / n).exists()]
    if missing:
        raise SystemExit(f"{', '.join(missing)} not in {args.dir}: run host/pipelines/smollm2/convert.py "
                         f"(--out {args.dir}) first")
    tokenizer = Tokenizer.from_file(str(args.dir / "tokenizer.json"))
    system = default_system_prompt((args.dir / "chat_template.jinja").read_text())
    generation = json.loads((args.dir / "generation.json").read_text())
    stop_ids = set(generation["stop_token_ids"]) if args.stop else set()
    prompts = args.prompt or PROMPTS

    results = {}
    for name in args.models:
        model = Model(args.dir / name)
        print(f"== {name}")
        rows = []
        all_steps = []
        for prompt in prompts:
            prompt_ids = tokenizer.encode(chatml(prompt, system), add_special_tokens=False).ids
            new, prefill, steps = model.generate(prompt_ids, args.max_new_tokens, stop_ids)
            all_steps += steps
            text = tokenizer.decode(new, skip_special_tokens=False)
            rows.append({"prompt": prompt, "prompt_ids": prompt_ids, "new_ids": new, "text": text})
            per_token = f"{1000 * np.mean(steps):.1f} ms/token" if steps else "-"
            print(f"-- {prompt!r}: {len(prompt_ids)} prompt tokens, prefill {1000 * prefill:.0f} ms, {per_token}")
            print(f"   new ids: {new}")
            print(f"   text: {text!r}")
        if all_steps:
            print(f"== {name}: decode {1000 * np.median(all_steps):.1f} ms/token median over {len(all_steps)} steps "
                  f"(ONNX Runtime {ort.__version__}, 1 intra-op thread)")
        results[name] = rows

    if args.json:
        args.json.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
