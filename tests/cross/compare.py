#!/usr/bin/env python3
"""Compares what the x86_64 host and another architecture's host made of the
same signed bundles (tests/cross/run.sh: aarch64; tests/cross/riscv64.sh:
riscv64, compiler-less): exact where no float kernel is involved, cosine >=
0.9999 for embeddings. Writes WORK/report.json and prints a table; exits 1 on
any mismatch.

    python3 tests/cross/compare.py WORK ONNXRUNTIME(true|false) [ARCH]

ARCH (default aarch64) is the prefix of the other host's result files,
WORK/ARCH-NAME.json next to WORK/x86_64-NAME.json.
"""

import json
import math
import sys
from pathlib import Path

MIN_COSINE = 0.9999


def results(path):
    doc = json.loads(path.read_text())
    return [(r["input"], r["outputs"]) for r in doc["results"]]


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return dot / (na * nb)


def main():
    work = Path(sys.argv[1])
    onnxruntime = len(sys.argv) > 2 and sys.argv[2] == "true"
    other = sys.argv[3] if len(sys.argv) > 3 else "aarch64"
    failures = []
    report = {}

    def exact(name, output, against="x86_64"):
        x86 = results(work / f"{against}-{name}.json")
        arm = results(work / f"{other}-{name}.json")
        same = len(x86) == len(arm) and all(
            xi == ai and xo[output] == ao[output] for (xi, xo), (ai, ao) in zip(x86, arm))
        report[f"{name}.{output}"] = {"requests": len(x86), "bit_identical": same}
        if not same:
            failures.append(f"{name}: '{output}' differs between x86_64 and {other}")

    def close(name, output, arm_file, label):
        x86 = results(work / f"x86_64-{name}.json")
        arm = results(work / arm_file)
        if len(x86) != len(arm):
            failures.append(f"{label}: {len(x86)} results on x86_64, {len(arm)} on {other}")
            return
        cosines = []
        identical = 0
        for (xi, xo), (ai, ao) in zip(x86, arm):
            a, b = xo[output], ao[output]
            if xi != ai or a["dims"] != b["dims"]:
                failures.append(f"{label}: request '{xi}' shapes {a['dims']} vs {b['dims']}")
                continue
            identical += a["data"] == b["data"]
            cosines.append(cosine(a["data"], b["data"]))
        worst = min(cosines) if cosines else float("nan")
        report[label] = {"requests": len(x86), "bit_identical_requests": identical,
                         "min_cosine": worst}
        if not cosines or worst < MIN_COSINE:
            failures.append(f"{label}: cosine {worst} < {MIN_COSINE}")

    exact("tokenize", "input_ids")
    exact("tokenize", "attention_mask")
    exact("intent-demo", "labels")
    close("intent-demo", "scores", f"{other}-intent-demo.json", "intent-demo.scores")
    for name in ["minilm-l3", "minilm-l6-int8"]:
        close(name, "sentence_embedding", f"{other}-{name}.json", f"{name} (tract)")
        if onnxruntime:
            close(name, "sentence_embedding", f"aarch64-ort-{name}.json",
                  f"{name} (aarch64 ONNX Runtime vs x86_64 tract)")

    # The compiler-less host keeps no compile cache: nothing was planted.
    planted_file = work / f"{other}-planted-intent-demo.json"
    if planted_file.exists():
        planted = results(planted_file)
        first = results(work / f"{other}-intent-demo.json")[0]
        if planted[0][1]["labels"] != first[1]["labels"]:
            failures.append(
                f"after the x86_64 artifacts were planted, {other} answered differently")
        report["planted_x86_64_artifacts_refused"] = not any(
            "planted" in f for f in failures)
    cache_dirs = work / "cache-dirs.txt"
    report["cache_dirs"] = cache_dirs.read_text().split() if cache_dirs.exists() else []

    (work / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'what':<58} {'requests':>8}  result")
    for key, value in report.items():
        if isinstance(value, dict):
            if "bit_identical" in value:
                outcome = "bit-identical" if value["bit_identical"] else "DIFFERENT"
            else:
                outcome = (f"min cosine {value['min_cosine']:.8f}, "
                           f"{value['bit_identical_requests']} bit-identical")
            print(f"{key:<58} {value['requests']:>8}  {outcome}")
    if report["cache_dirs"]:
        print(f"caches: {', '.join(report['cache_dirs'])}")
    if failures:
        for f in failures:
            print(f"FAIL: {f}", file=sys.stderr)
        sys.exit(1)
    print(f"x86_64 and {other} agree")


if __name__ == "__main__":
    main()
