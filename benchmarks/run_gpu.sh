#!/usr/bin/env bash
# The issue-7 bench on a GPU: a 1.3B OPT-shaped model (random init from its config), batch 16 x 256, bf16.
# First the GPU tests (tests/test_gpu.py: the fused kernel, both engines against the four-pass reference).
# Timings in one process (CUDA-synchronised, interleaved repeats, medians); peak memory (NVML by GPU,
# torch allocator, RSS) in a fresh process per mode. Writes JSON and the table to $OUT (default
# benchmarks/results).
# `run_gpu.sh offload` runs instead the issue-19 figures (benchmarks/gpu_offload.py): an OPT-30B-shaped bf16
# model ($SHAPE) resident, streamed block by block from pinned host memory by zobench's offload scheduler, and
# through accelerate's device_map (ZO steps where no weight is accelerate-offloaded), plus `hf-offload` (the
# runner's path on transformers' OPTForCausalLM), with the GPU capped at $CAP_GIB GiB; NVML per device, torch's
# allocator, RSS and step times into $OUT/offload-<shape>-<mode>.json, one line each in .txt. TIER_DTYPE=bfloat16
# (or float8_e4m3fn) keeps the host copy in low precision (ZO2's AMP mode); unset, the tier holds the model's dtype.
# `run_gpu.sh issue19` runs all of issue 19's GPU figures: the `offload` figures above, then the memory suites
# (suites/mezo-memory.yaml, suites/zo2-memory.yaml) on the sizes in $SIZES (default opt-1.3b,opt-2.7b) through the
# subprocess executor (a fresh process per run, the GPUs each row asks for reserved), the ZO2 suite with a
# first-order row beside it (fo-adam under FSDP2 with CPU offload: settings.fsdp), then `zobench report` for each:
# the papers' figures beside ours in $OUT/reports/<suite>/index.html.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results}
tag=${TAG:-gpu}
mkdir -p "$out"
if [ "${1:-bench}" = issue19 ]; then
  OUT="$out" bash "$0" offload
  for suite in mezo-memory zo2-memory; do
    python3 - "suites/$suite.yaml" "${SIZES:-opt-1.3b,opt-2.7b}" "$out/$suite-small.yaml" <<'PY'
import sys
from pathlib import Path

import yaml

source, sizes, target = Path(sys.argv[1]), sys.argv[2].split(","), Path(sys.argv[3])
suite = yaml.safe_load(source.read_text())
suite["name"] += "-small"
suite["data_dir"] = str((source.parent / suite["data_dir"]).resolve())  # the copy lives elsewhere
suite["grid"]["models"] = [m for m in suite["grid"]["models"] if m["label"] in sizes]
suite["include"] = [row for row in suite.get("include", []) if row.get("model") in sizes]
if suite["regenerates"] == "zo2-memory":  # the first-order offload baseline beside ZO's, same shapes and batch
    suite["include"] += [{"model": size, "method": {"name": "fo-adam", "label": "fo-adam-fsdp-offload", "lr": 1e-5,
                          "mixed_precision": "bf16", "settings": {"offload": None, "fsdp": {"cpu_offload": True}}}}
                         for size in sizes]
target.write_text(yaml.safe_dump(suite, sort_keys=False))
print(f"{target}: {len(suite['grid']['models'])} sizes, {len(suite['include'])} include rows")
PY
    python3 -c "from zobench.cli import app; app()" validate "$out/$suite-small.yaml"
    python3 -c "from zobench.cli import app; app()" run "$out/$suite-small.yaml" --results "$out/results" --reports "$out/reports" \
      --executor subprocess || echo "$suite: some runs did not finish (exit $?): see $out/results/$suite-small/"
  done
  exit 0
fi
if [ "${1:-bench}" = offload ]; then
  shape=${SHAPE:-opt-30b}
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/offload-$shape.txt"
  python3 -m pytest -q -p no:cacheprovider tests/test_offload.py tests/test_offload_hf.py tests/test_offload_sharded.py tests/test_parallel.py 2>&1 | tail -2 \
    | tee -a "$out/offload-$shape.txt"
  for mode in resident offload hf-offload device-map; do  # each in a fresh process; one failing does not stop the others
    timeout "${MODE_TIMEOUT:-900}" python3 benchmarks/gpu_offload.py "$mode" --shape "$shape" \
      --device "${DEVICE:-cuda}" --cap-gib "${CAP_GIB:-24}" ${TIER_DTYPE:+--tier-dtype "$TIER_DTYPE"} --batch "${BATCH:-4}" --seq "${SEQ:-256}" --steps "${STEPS:-3}" \
      --json "$out/offload-$shape-$mode.json" > /dev/null || echo "$mode: failed or timed out (exit $?)"
    python3 -c "import json,sys; d=json.load(open(sys.argv[1])); m=d['memory']; print(d['mode'], \
'median_step_s=%.3f' % d['median_step_s'], 'cap_gib=%s' % d['cap_gib'], json.dumps(m.get('peak_bytes', m)))" \
      "$out/offload-$shape-$mode.json" 2>/dev/null | tee -a "$out/offload-$shape.txt" || true
  done
  exit 0
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/opt-1.3b-$tag.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -3 | tee -a "$out/opt-1.3b-$tag.txt"
python3 -c "from zobench.cli import app; app()" bench --model opt-1.3b --device cuda --dtype bfloat16 \
  --batch 16 --seq 256 --repeats "${REPEATS:-10}" --json "$out/opt-1.3b-$tag.json" | tee -a "$out/opt-1.3b-$tag.txt"
