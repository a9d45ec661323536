"""Seaborn figures, returned as PNG bytes so the HTML page can embed them.

Curves are drawn per method (and scheme/model where those vary) as the median over seeds with a band
from the lowest to the highest seed. Seeds log at the same steps but not at the same seconds, so every
run is first interpolated onto a common grid of the x axis (steps, forward passes or seconds), over the
range every seed of the series covers.
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
import pandas as pd

from zobench.report.frame import SOURCE_NAMES

X_AXES = {"step": "steps", "forward_passes": "forward passes", "wall_s": "training seconds"}
GRID_POINTS = 80


def pyplot():
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def to_png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    pyplot().close(fig)
    return buf.getvalue()


def series_label(frame: pd.DataFrame) -> pd.Series:
    """method, plus scheme and model where a suite varies them."""
    label = frame["method"].astype(str)
    for axis in ("scheme", "model"):
        if axis in frame and frame[axis].nunique() > 1:
            label = label + " / " + frame[axis].astype(str)
    return label


def on_grid(curves: pd.DataFrame, x: str, y: str, points: int = GRID_POINTS) -> pd.DataFrame:
    """Each run's y interpolated onto a grid of x shared by the runs of its series (NaN outside a run's range)."""
    out = []
    data = curves.dropna(subset=[x, y])
    for series, group in data.groupby("series", sort=False):
        hi = group.groupby("run_id")[x].max().min()  # the range every seed covers: medians over all seeds
        lo = group[x].min()
        if not np.isfinite(hi):
            continue
        if hi <= lo:  # one point per run (a single evaluation): keep the points as they are
            out.append(group[["series", "run_id", x, y]])
            continue
        grid = np.linspace(lo, hi, points)
        for run_id, run in group.groupby("run_id", sort=False):
            run = run.sort_values(x)
            xs, ys = run[x].to_numpy(float), run[y].to_numpy(float)
            vals = np.interp(grid, xs, ys, left=np.nan, right=np.nan) if len(xs) > 1 else \
                np.where(np.isclose(grid, xs[0]), ys[0], np.nan)
            out.append(pd.DataFrame({"series": series, "run_id": run_id, x: grid, y: vals}))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=["series", "run_id", x, y])


def _band_plot(ax: Any, data: pd.DataFrame, x: str, y: str, palette: dict[str, Any]) -> None:
    for series, group in data.groupby("series", sort=False):
        stats = group.groupby(x)[y].agg(["median", "min", "max", "count"]).dropna(subset=["median"])
        if stats.empty:
            continue
        color = palette.get(series)
        ax.plot(stats.index, stats["median"], label=series, color=color, lw=1.6, marker="o" if len(stats) < 3 else None)
        if (stats["count"] > 1).any():
            ax.fill_between(stats.index, stats["min"], stats["max"], color=color, alpha=0.18, lw=0)


def curves_figure(curves: pd.DataFrame, runs: pd.DataFrame, task: str) -> bytes | None:
    """For one task: training loss (top) and the dev metric (bottom) against steps, forward passes, seconds."""
    part = curves[curves["task"] == task].copy()
    if part.empty:
        return None
    import seaborn as sns

    plt = pyplot()
    metric = runs.loc[runs["task"] == task, "metric"].dropna()
    metric = str(metric.iloc[0]) if len(metric) else None
    part["series"] = series_label(part)
    part = part.sort_values(["run_id", "step"])
    if "train_loss" in part:  # ZO losses are noisy: a 10-step running mean per run
        part["train_loss_smoothed"] = part.groupby("run_id")["train_loss"].transform(
            lambda s: s.rolling(10, min_periods=1).mean())
    rows = [("train_loss_smoothed", "train loss (10-step mean)")]
    if metric and f"dev_{metric}" in part and part[f"dev_{metric}"].notna().any():
        rows.append((f"dev_{metric}", f"dev {metric}"))
    names = list(dict.fromkeys(part["series"]))
    palette = dict(zip(names, sns.color_palette("tab10", len(names)), strict=True))
    fig, axes = plt.subplots(len(rows), len(X_AXES), figsize=(4.4 * len(X_AXES), 3.2 * len(rows)), squeeze=False)
    for i, (y, ylabel) in enumerate(rows):
        if y not in part:
            continue
        for j, (x, xlabel) in enumerate(X_AXES.items()):
            ax = axes[i][j]
            data = on_grid(part, x, y)
            _band_plot(ax, data, x, y, palette)
            values = data[y].dropna()
            if y.startswith("train_loss") and len(values) and (values > 0).all() and values.max() / values.min() > 100:
                ax.set_yscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
    fig.suptitle(f"{task}: median over seeds, band = min–max over seeds")
    fig.tight_layout()
    legend_below(fig, axes[0][0])
    return to_png(fig)


def legend_below(fig: Any, ax: Any) -> None:
    """One legend for the figure, under the panels (long labels never cover a title)."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 4), frameon=False,
                   bbox_to_anchor=(0.5, 0.0))


def memory_figure(frame: pd.DataFrame) -> bytes | None:
    """Peak memory above the loaded level (model, data and method built), by method and model: the
    forward-only probe beside training, one panel per source (RSS on CPU; NVML and the allocator on a GPU)."""
    done = frame[frame["status"] == "done"] if not frame.empty else frame
    trained = pd.to_numeric(done.get("steps"), errors="coerce") > 0  # zero-shot / ICL: the probe only
    rows = []
    for source in ("rss", "torch_allocator", "nvml_device", "nvml"):
        loaded = done.get(f"loaded_{source}_bytes")
        if loaded is None or loaded.isna().all():
            continue
        for window, label in (("inference", "inference probe"), ("train", "training")):
            col = f"mem_{window}_{source}_bytes"
            if col not in done or done[col].isna().all():
                continue
            mib = (done[col] - loaded) / 2**20
            rows.append(pd.DataFrame({"source": SOURCE_NAMES[source], "window": label,
                                      "MiB": mib.where(trained) if window == "train" else mib,
                                      "method": series_label(done.assign(model="")),
                                      "model": done["model"].astype(str)}))
    if not rows:
        return None
    import seaborn as sns

    data = pd.concat(rows, ignore_index=True).dropna(subset=["MiB"])
    multi = data["model"].nunique() > 1
    data["method / model"] = data["method"] + (" · " + data["model"] if multi else "")
    grid = sns.catplot(data=data, kind="bar", x="method / model", y="MiB", hue="window", col="source",
                       estimator="median", errorbar=("pi", 100), sharey=False, height=3.6, aspect=1.5,
                       palette={"inference probe": "#8fb3d9", "training": "#d9534f"})
    grid.set_axis_labels("", "peak above loaded model (MiB)")
    grid.set_titles("{col_name}")
    for ax in grid.axes.flat:
        ax.tick_params(axis="x", rotation=30)
        ax.grid(axis="y", alpha=0.3)
    grid.figure.suptitle("Peak memory: forward-only probe vs training (median; whiskers: min–max over runs)",
                         y=1.04)
    return to_png(grid.figure)


def sensitivity_figure(configs: pd.DataFrame, runs: pd.DataFrame, method: str) -> bytes | None:
    """Dev and test metric against each swept value of one method label (None where it sweeps nothing).

    `configs` is `selection.select(...).configs` (one row per configuration); `runs` the run frame, for the
    single seeds drawn faintly. With several swept parameters, each value of one shows the configuration with
    the best dev among those taking that value (the profile along that parameter).
    """
    import json

    from zobench.report.frame import scale_for

    rows = configs[configs["method"] == method].copy()
    if rows.empty:
        return None
    rows["point"] = [json.loads(c) for c in rows["config"]]
    keys = list(dict.fromkeys(k for p in rows["point"] for k in p))
    if not keys:
        return None
    rows["series"] = rows["task"].astype(str)
    for axis in ("scheme", "model"):
        if rows[axis].nunique() > 1:
            rows["series"] = rows["series"] + " / " + rows[axis].astype(str)
    mine = runs[runs["method"] == method].copy()
    mine["config"] = [json.dumps(p if isinstance(p, dict) else {}, sort_keys=True, default=str) for p in mine["sweep"]]
    higher = bool(mine["higher_is_better"].dropna().iloc[0]) if mine["higher_is_better"].notna().any() else True
    metric = mine["metric"].dropna().iloc[0] if mine["metric"].notna().any() else "metric"
    plt = pyplot()
    import seaborn as sns

    palette = dict(zip(dict.fromkeys(rows["series"]), sns.color_palette("tab10"), strict=False))
    fig, axes = plt.subplots(1, len(keys), figsize=(4.6 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        values = [p.get(key) for p in rows["point"]]
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values if v is not None)
        positive = numeric and all(v is not None and v > 0 for v in values)
        log = positive and max(values) / min(values) >= 10
        categories = list(dict.fromkeys(json.dumps(v, default=str) for v in values))

        def x_of(v: Any, numeric: bool = numeric, categories: list[str] = categories) -> float:
            return float(v) if numeric else float(categories.index(json.dumps(v, default=str)))

        for series, group in rows.groupby("series", sort=False):
            color = palette[series]
            profile = []
            for value in dict.fromkeys(json.dumps(p.get(key), default=str) for p in group["point"]):
                same = group[[json.dumps(p.get(key), default=str) == value for p in group["point"]]]
                ranked = same.dropna(subset=["dev"])
                best = (ranked.loc[ranked["dev"].idxmax() if higher else ranked["dev"].idxmin()]
                        if len(ranked) else same.iloc[0])
                profile.append(best)
            prof = pd.DataFrame(profile)
            prof["x"] = [x_of(p.get(key)) for p in prof["point"]]
            prof = prof.sort_values("x")
            ax.plot(prof["x"], prof["dev"], "--o", color=color, lw=1.2, alpha=0.9)
            ax.plot(prof["x"], prof["test_mean"], "-s", color=color, lw=1.6, label=series)
            for _, c in prof.iterrows():
                cell = mine[(mine["task"] == c["task"]) & (mine["model"] == c["model"])
                            & (mine["scheme"] == c["scheme"]) & (mine["config"] == c["config"])
                            & (mine["status"] == "done")]
                scale = scale_for(metric)
                ax.scatter([c["x"]] * len(cell), cell["test_metric"] * scale, color=color, alpha=0.3, s=14, marker="s")
                ax.scatter([c["x"]] * len(cell), cell["best_dev_metric"] * scale, color=color, alpha=0.3, s=14)
                if c["chosen"]:
                    ax.scatter([c["x"]], [c["test_mean"]], marker="*", s=220, color=color, edgecolor="black",
                               zorder=5)
        if log:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(range(len(categories)), categories, rotation=20)
        ax.set_xlabel(key.split(".", 1)[-1])
        ax.set_ylabel(f"{metric}{' (%)' if scale_for(metric) == 100 else ''}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(title="test (solid) / dev (dashed)", fontsize=8, title_fontsize=8)
    fig.suptitle(f"{method}: dev and test against each swept value")
    fig.tight_layout()
    return to_png(fig)
