"""On a GPU: the in-place engine's step with the fused kernel against its torch-op path (one process)."""
import statistics
import time

import torch

from zobench import bench
from zobench.optim import fused

s = bench.build_subject("opt-1.3b", 16, 256, torch.device("cuda"), torch.bfloat16)
modes = {"forward": bench.make_mode("forward", s), "inplace-fused": bench.make_mode("zo-sgd-inplace", s),
         "inplace-fused-rademacher": bench.make_mode("zo-sgd-inplace-rademacher", s)}
for f in modes.values():
    f()  # the first step decides: kernel
real = fused.available
fused.available = lambda params: False
modes["inplace-torch"] = bench.make_mode("zo-sgd-inplace", s)
modes["inplace-torch-rademacher"] = bench.make_mode("zo-sgd-inplace-rademacher", s)
modes["mezo-reference"] = bench.make_mode("mezo-reference", s)
for f in modes.values():
    f()  # the torch-op ones decide now
fused.available = real
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
    print(f"{m:26s} {statistics.median(t) * 1e3:8.1f} ms {statistics.median(t) / F:6.2f} F")
