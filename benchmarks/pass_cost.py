"""What one in-place pass over θ costs, per way of making z (issue 7): prints seconds and ÷ F.

    python benchmarks/pass_cost.py smollm2      # or tiny-opt, minilm

One process, 2 threads, batch 16 × 64: for Gaussian and Rademacher directions, with torch's generator and
with `rng: counter`, the time of a one-direction pass (θ += α·z), a two-direction pass (θ += α·z + β·z′,
the in-place engine's first pass of a step) and an in-place zo-sgd step, then the forward pass F.
Medians of 3 after a warm-up (the counter's first call compiles).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

import torch

from zobench import bench, registry


def median_s(call: Callable[[], object], repeats: int = 3) -> float:
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(model: str) -> None:
    torch.set_num_threads(2)
    registry.load_builtins()
    subject = bench.build_subject(model, 16, 64, torch.device("cpu"), torch.float32)
    params = list(subject.model.parameters())
    cls = registry.methods.get("zo-sgd")
    rows: dict[str, float] = {}
    for direction in ("gaussian", "rademacher"):
        for rng in ("torch", "counter"):
            for p in params:
                p.requires_grad_(True)
            method = cls(params, cls.Params.model_validate(
                {"lr": 1e-6, "eps": 1e-3, "direction": direction, "engine": "inplace", "rng": rng}), 0)
            subject.model.requires_grad_(False)
            rows[f"{direction} {rng}: one-direction pass"] = median_s(lambda m=method: m.directions.add(1, 1e-9))
            rows[f"{direction} {rng}: two-direction pass"] = median_s(
                lambda m=method: m.directions.add(1, 1e-9, then=(2, 1e-9)))
            rows[f"{direction} {rng}: in-place step"] = median_s(lambda m=method: m.step(subject.loss))
    f = median_s(torch.inference_mode()(lambda: float(subject.loss())), repeats=5)
    print(f"{model}: {subject.info['params'] / 1e6:.1f}M params, F = {f:.4f} s")
    for name, seconds in rows.items():
        print(f"{name:42s} {seconds:8.4f} s {seconds / f:6.3f} F")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "smollm2")
