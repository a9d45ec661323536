"""Issue 7's speed and memory targets against `zobench bench` results: `python benchmarks/targets.py FILE.json...`.

The targets belong to that issue, not to the package: `zobench bench` reports ratios, this script reads
them (the JSON files `--json` writes) and says which of our modes meet step <= 2.2 F, MeZO reference /
step >= 1.5 and peak memory <= 1.05x inference.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any

OURS = ("zo-sgd", "zo-sgd-rademacher", "zo-sgd-counter", "zo-sgd-rademacher-counter", "zo-sgd-inplace",
        "zo-sgd-inplace-rademacher", "zo-sgd-inplace-counter", "zo-sgd-inplace-rademacher-counter")


def target_memory(device: str) -> str:
    """The memory figure the targets read: process RSS on a CPU, the GPU's NVML figure on a GPU."""
    return "nvml" if device.startswith("cuda") else "rss"


def targets(device: str) -> dict[str, list[tuple[str, str, float]]]:
    """Issue 7's targets for each of our variants, as (ratio, comparison, bound): step ≤ 2.2 F, ≥ 1.5× faster
    than the MeZO reference, peak memory ≤ 1.05× inference."""
    memory = target_memory(device)
    return {ours: [(f"{ours} / F", "<=", 2.2), (f"mezo-reference / {ours}", ">=", 1.5),
                   (f"{ours} {memory} / inference", "<=", 1.05)] for ours in OURS}


def target_lines(result: dict[str, Any]) -> list[str]:
    """Our modes against the issue's three targets, a line each, then the modes that meet all three."""
    r = result["ratios"]
    lines = [f"targets: step <= 2.2 F | MeZO reference / step >= 1.5 | "
             f"{target_memory(result['device'])} / inference <= 1.05"]
    every = []
    for ours, checks in targets(result["device"]).items():
        if f"{ours} / F" not in r:
            continue
        cells, oks = [], []
        for (k, op, bound), (unit, fmt) in zip(checks, (("F", "6.2f"), ("x", "6.2f"), (" ", "6.3f")), strict=True):
            oks.append(k in r and (r[k] <= bound if op == "<=" else r[k] >= bound))
            cells.append(f"{_num(r.get(k), fmt)}{unit} {'met' if oks[-1] else 'MISSED' if k in r else '':6s}")
        every += [ours] if all(oks) else []
        lines.append(f"  {ours:34s} {'   '.join(cells)}".rstrip())
    return lines + ["all three met by: " + (", ".join(every) or "none")]


def _num(x: float | None, fmt: str) -> str:
    width = int(fmt.split(".")[0])
    return f"{x:{fmt}}" if x is not None and math.isfinite(x) else f"{'-':>{width}s}"


if __name__ == "__main__":
    for path in sys.argv[1:]:
        for result in json.loads(open(path).read()):
            print(f"{path}: model {result['model']}")
            print("\n".join(target_lines(result)))
