"""ZO-AdaMU's Figure 2 at the paper's step budget: every (learning rate, seed) of a method in one batch.

The runner takes a 2-D test function one step at a time through the engine (about a millisecond a
step), too slow for the figure's ~95,000 steps (the length of the authors' animations,
MathIsAll/ZO-AdaMU 3d_*.gif) × a learning-rate grid × 5 seeds × six functions on a shared CPU. Here
each method's update is written out on a (seeds × learning rates × 2) tensor, so one step moves every
run at once; tests/test_golden.py checks step for step that these updates equal the registered
`zo-sgd`, `zo-adamu` and `zo-adamu-code` methods fed the same directions. First-order baselines are
torch's Adam and Adamax rules (what `fo-adam` / `fo-adamax` run), checked against torch.optim; they have
no randomness, so one seed.

    python -m zobench.report.figure2 --out docs/zoadamu-fig2 [--steps 95000]
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from zobench.optim.zo_adamu import END, PHI, anneal
from zobench.problems.test_functions import ESCAPED, FUNCTIONS, Function2D
from zobench.store import atomic_write

LRS = tuple(float(f"{10 ** (k / 2):.3g}") for k in range(-12, 0))  # 1e-6 … 0.316, ×√10
EPS = 1e-3  # ε of every ZO method (MeZO's)
SIGMA = 1e-8  # ZO-AdaMU's σ
ZO_METHODS = ("zo-sgd", "zo-adamu", "zo-adamu-code")
FO_METHODS = ("fo-adam", "fo-adamax")
Draw = Callable[[int], list[torch.Tensor]]  # step t → the step's unit-normal draws, each (seeds, 1, 2)


@dataclass
class Result:
    method: str
    function: str
    lrs: tuple[float, ...]
    final: np.ndarray  # (seeds, lrs): final distance to the optimum, inf where the run diverged
    path: np.ndarray  # (records, seeds, lrs, 2): the point every `record_every` steps, from the start


def schedule(steps: int) -> tuple[int, int, int]:
    """T1, T2, T3 as the authors' trainer sets them (trainer.py:234-235): 1024, 0.8·T, T (T1 shrunk for short runs)."""
    t1 = min(1024, steps // 10)
    return max(t1, 1), int(0.8 * steps), steps


def _value(fn: Function2D, xy: torch.Tensor) -> torch.Tensor:
    return fn.f(xy[..., 0], xy[..., 1])


def _normal_draw(seeds: int, base_seed: int, per_step: int) -> Draw:
    gen = torch.Generator().manual_seed(base_seed)
    return lambda _t: [torch.randn((seeds, 1, 2), generator=gen, dtype=torch.float64) for _ in range(per_step)]


def run_zo(method: str, fn: Function2D, lrs: tuple[float, ...], seeds: int, steps: int, record_every: int,
           draw: Draw | None = None, base_seed: int = 0, start: tuple[float, float] | None = None) -> Result:
    """One ZO method on one function, every (seed, lr) at once, in float64.

    zo-sgd (MeZO Alg. 1): z ~ N(0, I), g = (f(θ+εz) − f(θ−εz))/2ε, θ ← θ − η g z.
    zo-adamu (Alg. 1 + Eq. 7, the paper's end points) and zo-adamu-code (the cosine held at T2, sign(g)·m
    kept as momentum): α, β1, β2 = Anneal(t); ż = √α u₁; z̈ = m + √(1−α) u₂; m ← β1 ż + (1−β1) z̈;
    g along m; v = β2 ż² + (1−β2) z̈²; θ ← θ − η g m / √(v + σ).
    A run whose point leaves 1000 domain half-widths or turns non-finite is frozen and counts as diverged.
    """
    lr = torch.tensor(lrs, dtype=torch.float64).view(1, -1, 1)
    xy = torch.tensor(start or fn.start, dtype=torch.float64).expand(seeds, len(lrs), 2).clone()
    mom = torch.zeros_like(xy)
    alive = torch.ones(seeds, len(lrs), 1, dtype=torch.bool)
    draw = draw or _normal_draw(seeds, base_seed, 1 if method == "zo-sgd" else 2)
    t1, t2, t3 = schedule(steps)
    paper = method == "zo-adamu"
    limit = ESCAPED * fn.domain[1]
    path = [xy.clone()]
    for t in range(1, steps + 1):
        if method == "zo-sgd":
            (z,) = draw(t)
            g = (_value(fn, xy + EPS * z) - _value(fn, xy - EPS * z)).unsqueeze(-1) / (2 * EPS)
            move = g * z
        else:
            a, b1, b2 = (anneal(t, t1, t2, t3, PHI[k], END[k] if paper else None) for k in ("alpha", "beta1", "beta2"))
            u1, u2 = draw(t)
            z_dot, z_ddot = math.sqrt(a) * u1, mom + math.sqrt(1 - a) * u2
            m = b1 * z_dot + (1 - b1) * z_ddot
            g = (_value(fn, xy + EPS * m) - _value(fn, xy - EPS * m)).unsqueeze(-1) / (2 * EPS)
            move = g * m / (b2 * z_dot**2 + (1 - b2) * z_ddot**2 + SIGMA).sqrt()
            mom = torch.where(alive, m if paper else torch.sign(g) * m + (g == 0) * m, mom)
        step = xy - lr * move
        alive &= torch.isfinite(step).all(-1, keepdim=True) & (step.abs() <= limit).all(-1, keepdim=True)
        xy = torch.where(alive, step, xy)
        if t % record_every == 0 or t == steps:
            path.append(xy.clone())
    return _result(method, fn, lrs, xy, alive, path)


def run_fo(method: str, fn: Function2D, lrs: tuple[float, ...], steps: int, record_every: int,
           start: tuple[float, float] | None = None) -> Result:
    """torch's Adam / Adamax with their defaults besides lr (torch/optim/adam.py, adamax.py single-tensor
    paths), the learning rates as one vector: m ← β1 m + (1−β1) ∇f; Adam: v ← β2 v + (1−β2) ∇f²,
    θ ← θ − η/(1−β1ᵗ) · m / (√v/√(1−β2ᵗ) + δ); Adamax: u ← max(β2 u, |∇f| + δ), θ ← θ − η/(1−β1ᵗ) · m / u.
    tests/test_golden.py checks both against torch.optim step for step."""
    b1, b2, delta = 0.9, 0.999, 1e-8
    lr = torch.tensor(lrs, dtype=torch.float64).view(1, -1, 1)
    xy = torch.tensor(start or fn.start, dtype=torch.float64).expand(1, len(lrs), 2).clone()
    m, v = torch.zeros_like(xy), torch.zeros_like(xy)
    limit = ESCAPED * fn.domain[1]
    alive = torch.ones(1, len(lrs), 1, dtype=torch.bool)
    path = [xy.clone()]
    for t in range(1, steps + 1):
        point = xy.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(_value(fn, point).sum(), point)
        m = b1 * m + (1 - b1) * grad
        if method == "fo-adam":
            v = b2 * v + (1 - b2) * grad**2
            step = xy - lr / (1 - b1**t) * m / (v.sqrt() / math.sqrt(1 - b2**t) + delta)
        else:
            v = torch.maximum(b2 * v, grad.abs() + delta)
            step = xy - lr / (1 - b1**t) * m / v
        alive &= torch.isfinite(step).all(-1, keepdim=True) & (step.abs() <= limit).all(-1, keepdim=True)
        xy = torch.where(alive, step, xy)
        if t % record_every == 0 or t == steps:
            path.append(xy.clone())
    return _result(method, fn, lrs, xy, alive, path)


def _result(method: str, fn: Function2D, lrs: tuple[float, ...], xy: torch.Tensor, alive: torch.Tensor,
            path: list[torch.Tensor]) -> Result:
    name = next(k for k, v in FUNCTIONS.items() if v is fn)
    dist = (xy - torch.tensor(fn.optimum, dtype=torch.float64)).norm(dim=-1)
    final = torch.where(alive.squeeze(-1) & torch.isfinite(dist), dist, torch.inf).numpy()
    return Result(method, name, lrs, final, torch.stack(path).numpy())


def best(result: Result) -> tuple[int, float]:
    """(lr index, median final distance over seeds) of the learning rate with the lowest median."""
    med = np.median(result.final, axis=0)
    k = int(np.argmin(med))
    return k, float(med[k])


def table(results: list[Result]) -> pd.DataFrame:
    """Methods × functions: median final distance over seeds at each cell's best learning rate."""
    rows = {}
    for r in results:
        k, med = best(r)
        seeds = r.final.shape[0]
        rows.setdefault(r.method, {})[r.function] = (f"{med:.3g} (lr {r.lrs[k]:g}"
                                                      f"{f', {seeds} seeds' if seeds > 1 else ''})")
    frame = pd.DataFrame(rows).T
    frame = frame[[f for f in FUNCTIONS if f in frame.columns]]
    frame.columns = [f"({f}) {FUNCTIONS[f].formula}" if len(f) == 1 else FUNCTIONS[f].formula for f in frame.columns]
    frame.index.name = "method"
    return frame


def tidy(results: list[Result]) -> pd.DataFrame:
    """Every (method, function, lr, seed) final distance, for the csv."""
    return pd.DataFrame([{"method": r.method, "function": r.function, "lr": lr, "seed": s,
                          "final_distance": float(r.final[s, k])}
                         for r in results for s in range(r.final.shape[0]) for k, lr in enumerate(r.lrs)])


def reached(frame: pd.DataFrame, within: float = 0.05) -> pd.DataFrame:
    """Methods × functions: how many learning rates of the grid end, median over seeds, within `within`
    of the optimum (how forgiving each method is of its learning rate); from `tidy`'s frame."""
    med = frame.groupby(["method", "function", "lr"])["final_distance"].median().reset_index()
    counts = (med["final_distance"] <= within).groupby([med["method"], med["function"]]).sum().unstack()
    counts = counts[[f for f in FUNCTIONS if f in counts.columns]]
    counts.columns = [f"({f})" if len(f) == 1 else f for f in counts.columns]
    return counts.astype(int)


def figure(results: list[Result]) -> bytes:
    """2 × 3 panels: contours, each method's median-seed trajectory at its best learning rate, start and optimum."""
    from matplotlib.colors import LogNorm

    from zobench.report.figures import pyplot, to_png

    plt = pyplot()
    methods = list(dict.fromkeys(r.method for r in results))
    colors = dict(zip(methods, plt.get_cmap("tab10").colors, strict=False))
    fig, axes = plt.subplots(2, 3, figsize=(15, 10), squeeze=False)
    for ax, name in zip(axes.flat, FUNCTIONS, strict=False):
        fn = FUNCTIONS[name]
        lo, hi = fn.domain
        grid = np.linspace(lo, hi, 300)
        gx, gy = (torch.tensor(a) for a in np.meshgrid(grid, grid))
        values = fn.f(gx, gy).numpy() + 1e-3
        ax.contour(grid, grid, values, levels=np.geomspace(values.min(), values.max(), 25), norm=LogNorm(),
                   cmap="Greys", linewidths=0.6)
        for r in (r for r in results if r.function == name):
            k, med = best(r)
            s = int(np.argsort(r.final[:, k])[(r.final.shape[0] - 1) // 2])  # the median seed's run
            xy = r.path[:, s, k]
            ax.plot(xy[:, 0], xy[:, 1], "-", color=colors[r.method], lw=1.6 if "adamu" in r.method else 1.1,
                    alpha=0.9, label=f"{r.method}")
            ax.plot(xy[-1, 0], xy[-1, 1], "o", color=colors[r.method], ms=4)
        ax.plot(*fn.start, "s", color="k", ms=6)
        ax.plot(*fn.optimum, "*", color="red", ms=14, zorder=5)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_title(f"({name}) {fn.formula}" if len(name) == 1 else fn.formula)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(methods), frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return to_png(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=95_000)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--record-every", type=int, default=50)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = []
    for name, fn in FUNCTIONS.items():
        for method in ZO_METHODS + FO_METHODS:
            began = time.perf_counter()
            if method in ZO_METHODS:
                r = run_zo(method, fn, LRS, args.seeds, args.steps, args.record_every)
            else:
                r = run_fo(method, fn, LRS, args.steps, args.record_every)
            k, med = best(r)
            print(f"{name:>10} {method:>14}: best lr {LRS[k]:g}, median final distance {med:.4g} "
                  f"({time.perf_counter() - began:.1f} s)", flush=True)
            results.append(r)
    args.out.mkdir(parents=True, exist_ok=True)
    frame = table(results)
    t1, t2, t3 = schedule(args.steps)
    caption = (f"ZO-AdaMU Fig. 2 regenerated: final distance to the optimum after {args.steps} steps, median of "
               f"{args.seeds} seeds (first-order: deterministic, 1 run), at each cell's best lr of {LRS[0]:g}…"
               f"{LRS[-1]:g} (×√10); ε = {EPS:g}; ZO-AdaMU T1/T2/T3 = {t1}/{t2}/{t3}; starts: "
               + "; ".join(f"{k} {v.start}" for k, v in FUNCTIONS.items()))
    every = tidy(results)
    counts = reached(every)
    atomic_write(args.out / "final-distance.md", (
        f"{caption}\n\n{frame.to_markdown()}\n\nLearning rates (of {len(LRS)}) whose median run ends within 0.05 "
        f"of the optimum:\n\n{counts.to_markdown()}\n").encode())
    atomic_write(args.out / "final-distance-all.csv", every.to_csv(index=False).encode())
    atomic_write(args.out / "figure2.png", figure(results))
    print(frame.to_markdown())


if __name__ == "__main__":
    main()
