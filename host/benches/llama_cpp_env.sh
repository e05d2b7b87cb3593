#!/usr/bin/env bash
# Makes target/llama-py: a Python environment with llama-cpp-python (pinned),
# built from its PyPI source (it compiles llama.cpp: about ten minutes on two
# cores; needs g++). Only the generation benchmark's llama.cpp row uses it.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -x target/llama-py/bin/python ] || python3 -m venv target/llama-py
target/llama-py/bin/pip install --quiet --disable-pip-version-check \
    llama-cpp-python==0.3.36 numpy==2.1.3
target/llama-py/bin/python -c 'import llama_cpp; print("llama-cpp-python", llama_cpp.__version__)'
