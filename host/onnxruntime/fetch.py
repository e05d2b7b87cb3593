#!/usr/bin/env python3
"""Fetches ONNX Runtime's shared library for Outpost's native backend.

The library ships inside the `onnxruntime` wheel on PyPI. The wheel is pinned
to the ONNX Runtime release the host's `ort` crate targets (API 1.31), the
library inside is checked against its sha256 for this machine's architecture,
and only then written as DEST/libonnxruntime.so (default: target/onnxruntime
in the repository). A library already there with the right digest is kept.

    python3 host/onnxruntime/fetch.py [--platform x86_64|aarch64] [DEST]
    outpost --onnxruntime-lib DEST/libonnxruntime.so run ...

This is the CPU build. For GPUs, point --onnxruntime-lib at the library of the
`onnxruntime-gpu` wheel (with the CUDA and TensorRT libraries it needs
installed); Outpost checks its providers when a model asks for target = "gpu".
"""

import hashlib
import platform
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

VERSION = "1.31.1"
MEMBER = f"onnxruntime/capi/libonnxruntime.so.{VERSION}"
# machine -> (pip --platform tags, sha256 of the library inside the wheel)
BUILDS = {
    "x86_64": (["manylinux_2_28_x86_64", "manylinux_2_27_x86_64"],
               "fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3"),
    "aarch64": (["manylinux_2_28_aarch64", "manylinux_2_27_aarch64"],
                "8aa3b76b28c778a2b1dd660d34161adb1d508c9ccd04ff9dc80e26eca5df8467"),
}


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def main():
    root = Path(__file__).resolve().parents[2]
    args = sys.argv[1:]
    machine = platform.machine()
    # Another machine's library (a device's, e.g. aarch64 for tests/cross).
    if args[:1] == ["--platform"]:
        if len(args) < 2:
            raise SystemExit("--platform needs a machine name: " + ", ".join(BUILDS))
        machine, args = args[1], args[2:]
    dest = Path(args[0]) if args else root / "target" / "onnxruntime"
    if machine not in BUILDS:
        raise SystemExit(f"no pinned ONNX Runtime {VERSION} library for {machine}; "
                         f"this script knows: {', '.join(BUILDS)}")
    platforms, digest = BUILDS[machine]
    target = dest / "libonnxruntime.so"
    if target.exists() and sha256(target.read_bytes()) == digest:
        print(f"{target}: present, sha256 ok")
        return
    with tempfile.TemporaryDirectory() as cache:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                   "--only-binary=:all:", "--python-version", "3.11", "--dest", cache]
        for tag in platforms:
            command += ["--platform", tag]
        subprocess.run(command + [f"onnxruntime=={VERSION}"], check=True)
        wheels = list(Path(cache).glob("onnxruntime-*.whl"))
        if not wheels:
            raise SystemExit(f"onnxruntime=={VERSION}: pip saved no wheel in {cache}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            data = wheel.read(MEMBER)
    actual = sha256(data)
    if actual != digest:
        raise SystemExit(f"{MEMBER} from {wheels[0].name}: sha256 {actual}, expected {digest}; "
                         "refusing to write it")
    dest.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".so.partial")
    partial.write_bytes(data)
    partial.replace(target)
    print(f"{target}: ONNX Runtime {VERSION} for {machine}, {len(data)} bytes, sha256 ok")


if __name__ == "__main__":
    main()
