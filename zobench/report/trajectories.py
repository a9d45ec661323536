"""ZO-AdaMU's Figure 2 regenerated: 2-D trajectories on the test functions and a final-distance table.

Used only when the results hold `test-function` runs (evaluated every few steps, so the curves carry
dev_x and dev_y). A suite may give one method several learning rates, labelled "<method> lr=<value>";
for each function and method the figure draws, and the table reports, the learning rate with the
lowest final distance to the optimum (median over seeds) — the same tuning rule for every method.
"""

from __future__ import annotations

import base64
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from zobench.problems.test_functions import ALL_FUNCTIONS as FUNCTIONS
from zobench.report.figures import pyplot, to_png
from zobench.report.render import export
from zobench.store import RunRecord, atomic_write

TASK = "test-function"
_LR = re.compile(r"\s+lr=\S+$")
REACHED = 0.05  # a run "reaches" the optimum when it ends within this distance


def _runs(records: list[tuple[Path, RunRecord]]) -> pd.DataFrame:
    rows = []
    for folder, r in records:
        if r.spec.task.name != TASK or r.status != "done":
            continue
        rows.append({"dir": str(folder), "function": r.spec.task.params["function"],
                     "method": _LR.sub("", r.spec.method.label), "lr": r.spec.method.params.get("lr"), "seed": r.seed,
                     "distance": r.metrics.test.get("distance_to_optimum")})
    return pd.DataFrame(rows)


def lowest_median(runs: pd.DataFrame, cell: list[str], config: str, score: str) -> pd.DataFrame:
    """The runs of each cell's configuration with the lowest median `score` over seeds (a missing score: +inf)."""
    runs = runs.assign(**{score: runs[score].astype(float).fillna(math.inf)})
    med = runs.groupby([*cell, config], dropna=False)[score].median().reset_index()
    best = med.loc[med.groupby(cell)[score].idxmin(), [*cell, config]]
    return runs.merge(best, on=[*cell, config])


def best_runs(records: list[tuple[Path, RunRecord]]) -> pd.DataFrame:
    """One row per (function, method, seed) at the learning rate with the lowest median final distance."""
    runs = _runs(records)
    return runs if runs.empty else lowest_median(runs, ["function", "method"], "lr", "distance")


def distance_table(best: pd.DataFrame) -> pd.DataFrame:
    """Methods × functions: final distance to the optimum (median over seeds) at the chosen learning rate."""
    agg = best.groupby(["method", "function"]).agg(distance=("distance", "median"), lr=("lr", "first"),
                                                   seeds=("seed", "count"))
    cells = {(m, f): f"{r.distance:.3g} (lr {r.lr:g}{', ' + str(r.seeds) + ' seeds' if r.seeds > 1 else ''})"
             for (m, f), r in agg.iterrows()}
    table = pd.Series(cells).unstack()
    table = table[[f for f in FUNCTIONS if f in table.columns]]
    table.columns = [f"({f}) {FUNCTIONS[f].formula}" if len(f) == 1 else FUNCTIONS[f].formula for f in table.columns]
    reached = (agg["distance"] <= REACHED).groupby("method").sum()
    table[f"reached (≤ {REACHED:g})"] = [f"{int(reached[m])}/{len(table.columns)}" for m in table.index]
    table.index.name = "method"
    return table


def figure(best: pd.DataFrame) -> bytes | None:
    """Rows of 3 panels: contours of each function, one trajectory per method (lowest seed), start and optimum."""
    plt = pyplot()
    from matplotlib.colors import LogNorm

    functions = [f for f in FUNCTIONS if f in set(best["function"])]
    methods = sorted(best["method"].unique(), key=lambda m: ("adamu" in m, m))  # ZO-AdaMU drawn on top
    colors = dict(zip(methods, plt.get_cmap("tab10" if len(methods) <= 10 else "tab20").colors, strict=False))
    rows = max(1, math.ceil(len(functions) / 3))
    fig, axes = plt.subplots(rows, 3, figsize=(15, 4.75 * rows), squeeze=False)
    for ax, name in zip(axes.flat, functions, strict=False):
        fn = FUNCTIONS[name]
        part = best[best["function"] == name]
        paths = {}
        for method, runs in part.groupby("method"):
            curve = pd.read_parquet(Path(runs.sort_values("seed")["dir"].iloc[0]) / "curve.parquet")
            paths[method] = curve.dropna(subset=["dev_x", "dev_y"])[["dev_x", "dev_y"]].to_numpy()
        pts = np.concatenate([*paths.values(), [fn.optimum]])
        lo = min(fn.domain[0], pts.min() - 0.2) if np.isfinite(pts).all() else fn.domain[0]
        hi = max(fn.domain[1], pts.max() + 0.2) if np.isfinite(pts).all() else fn.domain[1]
        grid = np.linspace(lo, hi, 300)
        import torch

        gx, gy = (torch.tensor(a) for a in np.meshgrid(grid, grid))
        values = fn.f(gx, gy).numpy() + 1e-3
        ax.contour(grid, grid, values, levels=np.geomspace(values.min(), values.max(), 25), norm=LogNorm(),
                   cmap="Greys", linewidths=0.6)
        for method in [m for m in methods if m in paths]:
            xy = paths[method]
            ax.plot(xy[:, 0], xy[:, 1], "-", color=colors[method], lw=1.8 if "adamu" in method else 1.1,
                    label=method, alpha=0.9)
            ax.plot(xy[-1, 0], xy[-1, 1], "o", color=colors[method], ms=4)
        start = next(iter(paths.values()))[0]
        ax.plot(*start, "s", color="k", ms=6)
        ax.plot(*fn.optimum, "*", color="red", ms=14, zorder=5)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_title(f"({name}) {fn.formula}" if len(name) == 1 else fn.formula)
    for ax in list(axes.flat)[len(functions):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(methods), frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return to_png(fig)


def section(records: list[tuple[Path, RunRecord]],
            tables_dir: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(table entry, figure entry) for the suite page, or (None, None) when there are no 2-D runs."""
    best = best_runs(records)
    if best.empty:
        return None, None
    table = distance_table(best)
    title = "ZO-AdaMU Fig. 2: final distance to the optimum (median over seeds, best learning rate per cell)"
    files = export(table, tables_dir, "trajectories", caption=title)
    png = figure(best)
    if png:
        atomic_write(tables_dir.parent / "trajectories.png", png)
    note = (f"Learning rate per cell: the lowest median final distance over the suite's grid for that method. "
            f"'reached' counts functions ending within {REACHED} of the optimum. The paper's claim: ZO-AdaMU "
            f"reaches all six optima, MeZO (zo-sgd) none.")
    table_entry = {"title": title, "html": table.to_html(border=0, classes="data"), "note": note, "files": files}
    figure_entry = {"title": "Trajectories on ZO-AdaMU's test functions (Fig. 2)",
                    "png": base64.b64encode(png).decode() if png else None,
                    "caption": "Square: start; star: optimum; dot: end. Each method at its best learning rate, "
                               "lowest seed. Contours are log-spaced."}
    return table_entry, figure_entry
