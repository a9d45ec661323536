"""Dolan–Moré performance profiles over time-to-target, forward-passes-to-target and peak memory.

A problem is one (model, task, seed); a solver is one method (with scheme/model where those vary).
The target of a problem comes from the first-order baseline: the dev metric at step 0 plus `fraction`
of the way to the best dev metric any first-order run (backward passes > 0) reached on that problem.
For each measure, r(p, s) = cost(p, s) / min over solvers of cost(p, ·); ρ_s(τ) = share of problems with
r ≤ τ. A solver that never reaches the target (or did not finish) has r = ∞ and never counts.

Reference: E. D. Dolan and J. J. Moré, "Benchmarking optimization software with performance profiles",
Mathematical Programming 91 (2002).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from zobench.report.figures import legend_below, pyplot, series_label, to_png
from zobench.report.frame import SOURCE_ORDER

MEASURES = {"seconds_to_target": "training seconds to target", "forward_passes_to_target": "forward passes to target",
            "peak_memory": "training peak memory above loaded model"}


def targets(curves: pd.DataFrame, runs: pd.DataFrame, fraction: float = 0.5) -> pd.DataFrame:
    """Per problem: start, first-order best, target (NaN where no first-order run improved on the start)."""
    rows = []
    done = runs[runs["status"] == "done"]
    for (model, task, seed), group in done.groupby(["model", "task", "seed"], sort=False):
        metric, higher = group["metric"].iloc[0], bool(group["higher_is_better"].iloc[0])
        col = f"dev_{metric}"
        fo = group[group["backward_passes"] > 0]
        part = curves[curves["run_id"].isin(group["run_id"])]
        if fo.empty or col not in part:
            continue
        start_rows = part[(part["step"] == 0) & part[col].notna()]
        fo_curves = part[part["run_id"].isin(fo["run_id"])].dropna(subset=[col])
        if fo_curves.empty:
            continue
        start = start_rows[col].iloc[0] if len(start_rows) else fo_curves.sort_values("step")[col].iloc[0]
        best = fo_curves[col].max() if higher else fo_curves[col].min()
        improved = best > start if higher else best < start
        rows.append({"model": model, "task": task, "seed": seed, "metric": metric, "higher_is_better": higher,
                     "start": start, "first_order_best": best,
                     "target": start + fraction * (best - start) if improved else np.nan})
    return pd.DataFrame(rows)


def costs(curves: pd.DataFrame, runs: pd.DataFrame, fraction: float = 0.5) -> pd.DataFrame:
    """Per (problem, solver): seconds and forward passes until the dev metric first reached the target,
    and peak training memory above the loaded model; inf where a run never got there."""
    tg = targets(curves, runs, fraction)
    if tg.empty:
        return pd.DataFrame()
    runs = runs.assign(solver=series_label(runs))
    runs = runs[pd.to_numeric(runs["steps"], errors="coerce") > 0]  # zero-shot / ICL do not train: no solver
    source = next((s for s in SOURCE_ORDER if f"mem_train_{s}_bytes" in runs
                   and runs[f"mem_train_{s}_bytes"].notna().any()), None)
    out = []
    for t in tg.itertuples():
        group = runs[(runs["model"] == t.model) & (runs["task"] == t.task) & (runs["seed"] == t.seed)]
        for run in group.itertuples():
            row = {"problem": f"{t.model} · {t.task} · seed {t.seed}", "solver": run.solver,
                   "seconds_to_target": np.inf, "forward_passes_to_target": np.inf, "peak_memory": np.inf}
            if run.status == "done":
                c = curves[curves["run_id"] == run.run_id].dropna(subset=[f"dev_{t.metric}"]).sort_values("step")
                vals = c[f"dev_{t.metric}"]
                hit = c[(vals >= t.target) if t.higher_is_better else (vals <= t.target)] if np.isfinite(t.target) \
                    else c.iloc[0:0]
                if len(hit):
                    row["seconds_to_target"] = float(hit["wall_s"].iloc[0])
                    row["forward_passes_to_target"] = float(hit["forward_passes"].iloc[0])
                if source:
                    base = getattr(run, f"loaded_{source}_bytes", 0) or 0
                    row["peak_memory"] = float(getattr(run, f"mem_train_{source}_bytes") - base)
            out.append(row)
    return pd.DataFrame(out)


def ratios(cost: pd.DataFrame, measure: str) -> pd.DataFrame:
    """r(p, s) for one measure; problems that no solver solved are dropped."""
    table = cost.pivot_table(index="problem", columns="solver", values=measure, aggfunc="min")
    # a zero cost (target met at step 0) is replaced by the smallest positive cost, so ratios stay defined
    positive = table.where(table > 0)
    floor = np.nanmin(positive.to_numpy()) if np.isfinite(positive.to_numpy()).any() else 1.0
    table = table.where(table > 0, floor)
    best = table.min(axis=1)
    keep = np.isfinite(best)
    return table[keep].div(best[keep], axis=0)


def profile(r: pd.DataFrame, taus: np.ndarray) -> pd.DataFrame:
    """ρ_s(τ) for every solver at every τ."""
    return pd.DataFrame({s: [(r[s] <= tau).mean() for tau in taus] for s in r.columns}, index=taus)


def profiles_figure(curves: pd.DataFrame, runs: pd.DataFrame, fraction: float = 0.5) -> tuple[bytes | None, str]:
    """The three profiles side by side, and a caption that says how the target was set."""
    if curves.empty or runs.empty:
        return None, ""
    cost = costs(curves, runs, fraction)
    if cost.empty:
        return None, "No performance profile: no first-order run (backward passes > 0) to set a target from."
    import seaborn as sns

    plt = pyplot()
    solvers = list(dict.fromkeys(cost["solver"]))
    palette = dict(zip(solvers, sns.color_palette("tab10", len(solvers)), strict=True))
    fig, axes = plt.subplots(1, len(MEASURES), figsize=(4.6 * len(MEASURES), 3.4), squeeze=False)
    solved = {}
    for ax, (measure, title) in zip(axes[0], MEASURES.items(), strict=True):
        r = ratios(cost, measure)
        solved[measure] = len(r)
        finite = r.to_numpy()[np.isfinite(r.to_numpy())]
        top = max(2.0, float(finite.max()) * 1.5) if finite.size else 2.0
        taus = np.geomspace(1, top, 200)
        prof = profile(r, taus) if len(r) else pd.DataFrame(index=taus)
        for s in solvers:
            if s in prof:
                ax.step(taus, prof[s], where="post", label=s, color=palette[s], lw=1.6)
        ax.set_xscale("log", base=2)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("τ (ratio to the best solver)")
        ax.set_ylabel("share of problems with ratio ≤ τ")
        ax.set_title(f"{title}\n({len(r)} problems)", fontsize=10)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    legend_below(fig, max(axes[0], key=lambda ax: len(ax.get_legend_handles_labels()[0])))
    n_problems = cost["problem"].nunique()
    caption = (f"Dolan–Moré performance profiles over {n_problems} problems (model · task · seed). Target: the "
               f"step-0 dev metric plus {fraction:.0%} of the way to the best dev metric of the first-order runs "
               f"(backward passes > 0) on the same problem; reached at the first dev evaluation that meets it, so "
               f"time and passes have the evaluation interval's resolution. Forward passes exclude backward passes. "
               f"Peak memory: training window, above the memory held once the model was loaded. A curve that "
               f"stays at 0 never reached the target.")
    return to_png(fig), caption
