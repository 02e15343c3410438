#!/usr/bin/env bash
# Wheels for a GPU host that has torch, transformers' own needs and triton but no internet (the benchmarks'
# H200s): what llmclone needs beyond them, for CPython 3.12 on x86-64, into DIR (default .whl).
#   bash benchmarks/gpu_wheels.sh [DIR]
# Then there: pip install --no-index --no-deps --target /tmp/site DIR/*.whl; PYTHONPATH=/tmp/site:src.
# transformers 5.24 goes too: its SDPA runs a one-token query on the KV heads without repeating them.
set -euo pipefail
dir=${1:-.whl}
mkdir -p "$dir"
get() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$dir" "$@"
}
get pydantic==2.13.5 pydantic_core==2.46.5 annotated-types typing-inspection ijson orjson msgspec \
  trl==1.16.0 datasets dill multiprocess gguf py3langid fastapi==0.165.0 starlette uvicorn opentelemetry-api \
  importlib-metadata liger-kernel==0.8.5 transformers==5.24.0 huggingface_hub==1.31.0
[ "${BNB:-0}" = 1 ] && get bitsandbytes==0.50.2
ls -la "$dir" | awk '{s+=$5} END {print s/1e6 " MB"}'
