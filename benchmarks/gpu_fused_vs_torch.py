"""On a GPU: the in-place engine's step with the fused kernel (`rng: triton`) against torch's pieces (one process)."""
import statistics
import time

import torch

from zobench import bench

s = bench.build_subject("opt-1.3b", 16, 256, torch.device("cuda"), torch.bfloat16)
modes = {m: bench.make_mode(m, s) for m in (
    "forward", "zo-sgd-inplace-triton", "zo-sgd-inplace-rademacher-triton", "zo-sgd-inplace",
    "zo-sgd-inplace-rademacher", "mezo-reference")}
for f in modes.values():
    f()  # warm-up: the kernel compiles on its first call
times = {m: [] for m in modes}
for _ in range(10):
    for m, f in modes.items():
        torch.cuda.synchronize()
        a = time.perf_counter()
        f()
        torch.cuda.synchronize()
        times[m].append(time.perf_counter() - a)
F = statistics.median(times["forward"])
for m, t in times.items():
    print(f"{m:34s} {statistics.median(t) * 1e3:8.1f} ms {statistics.median(t) / F:6.2f} F")
