#!/usr/bin/env bash
# The issue-7 bench on a GPU: a 1.3B OPT-shaped model (random init from its config), batch 16 x 256, bf16.
# First the GPU tests (tests/test_gpu.py: the fused kernel, both engines against the four-pass reference).
# Timings in one process (CUDA-synchronised, interleaved repeats, medians); peak memory (NVML by GPU,
# torch allocator, RSS) in a fresh process per mode. Writes JSON and the table to $OUT (default
# benchmarks/results).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results}
tag=${TAG:-gpu}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/opt-1.3b-$tag.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -3 | tee -a "$out/opt-1.3b-$tag.txt"
python3 -c "from zobench.cli import app; app()" bench --model opt-1.3b --device cuda --dtype bfloat16 \
  --batch 16 --seq 256 --repeats "${REPEATS:-10}" --json "$out/opt-1.3b-$tag.json" | tee -a "$out/opt-1.3b-$tag.txt"
