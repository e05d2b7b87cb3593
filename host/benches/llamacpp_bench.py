"""llama.cpp on SmolLM2-135M-Instruct's original Q4_1 GGUF, timed the way
host/benches/generate.rs times the other runtimes: greedy, one thread, the
prompt evaluated in one call (time to first token), then one token per call.

Run by the generation benchmark when a Python with `llama_cpp` is at hand
(host/benches/llama_cpp_env.sh makes target/llama-py):

    target/llama-py/bin/python host/benches/llamacpp_bench.py GGUF --prompt 1000,1037,... \
        --new 32 --rounds 5

Prints one JSON object: {"ttft_ms", "ms_per_token", "tokens", "version"},
each time the median over the rounds.
"""

import argparse
import json
import statistics
import time

import llama_cpp
import numpy as np


def last_logits(llm):
    """The logits of the last token evaluated (llama.cpp's own buffer)."""
    pointer = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(pointer, shape=(llm.n_vocab(),))


def once(llm, prompt, new):
    llm.reset()
    start = time.perf_counter()
    llm.eval(prompt)
    token = int(np.argmax(last_logits(llm)))
    first_at = time.perf_counter()
    tokens = [token]
    while len(tokens) < new:
        llm.eval([token])
        token = int(np.argmax(last_logits(llm)))
        tokens.append(token)
    end = time.perf_counter()
    return first_at - start, (end - first_at) / (new - 1), tokens


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("gguf")
    parser.add_argument("--prompt", required=True, help="comma-separated token ids")
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    prompt = [int(t) for t in args.prompt.split(",")]
    llm = llama_cpp.Llama(model_path=args.gguf, n_ctx=512, n_batch=512, n_threads=1,
                          n_threads_batch=1, verbose=False)
    firsts, per_tokens, tokens = [], [], []
    for _ in range(args.rounds):
        first, per_token, tokens = once(llm, prompt, args.new)
        firsts.append(first)
        per_tokens.append(per_token)
    print(json.dumps({
        "ttft_ms": statistics.median(firsts) * 1e3,
        "ms_per_token": statistics.median(per_tokens) * 1e3,
        "tokens": tokens,
        "version": llama_cpp.__version__,
    }))


if __name__ == "__main__":
    main()
