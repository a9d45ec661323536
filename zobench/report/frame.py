"""One pandas row per run, aggregates over seeds (mean ± std, bootstrap 95% CI), and our own tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from zobench.store import MEMORY_SOURCES, RunRecord, load_records

AXES = ("model", "task", "method", "scheme")
# the memory a table shows: the first one measured (the process's own NVML figure is absent in many containers)
SOURCE_ORDER = MEMORY_SOURCES
SOURCE_NAMES = {"nvml": "NVML, this process", "nvml_device": "NVML, device used minus baseline",
                "torch_allocator": "torch allocator peak", "rss": "process peak RSS"}
PERCENT_METRICS = {"accuracy", "acc", "f1", "em", "exact_match", "matthews"}


def run_row(record: RunRecord) -> dict[str, Any]:
    """One run as a row: its labels and parameters, status, scores, counts, seconds, peak memory by source."""
    spec, metrics, cost, timing = record.spec, record.metrics, record.cost, record.timing
    row: dict[str, Any] = {
        "suite": record.suite, "run_id": record.run_id, "status": record.status,
        **{axis: getattr(spec, axis).label for axis in AXES},
        **{f"{axis}_name": getattr(spec, axis).name for axis in AXES},
        "model_id": spec.model.params.get("id"),
        "task_params": spec.task.params, "method_params": spec.method.params,
        "sweep": spec.sweep,  # the swept values (grid.py): a cell's configuration
        "batch_size": spec.settings.get("batch_size"),
        "seed": record.seed, "metric": metrics.metric, "higher_is_better": metrics.higher_is_better,
        "test_metric": metrics.test_metric, "initial_dev_metric": metrics.initial_dev_metric,
        "best_dev_metric": (metrics.best_dev or {}).get(metrics.metric or ""),
        "best_step": metrics.best_step, "steps": cost.steps, "forward_passes": cost.forward_passes,
        "backward_passes": cost.backward_passes, "wall_s": timing.wall_s, "train_s": timing.train_s,
        "median_step_s": timing.median_step_s, "inference_forward_s": timing.inference_forward_s,
        "state_bytes": cost.state_bytes, "trainable_params": cost.trainable_params,
        "device": record.env.device_name or record.env.device,
    }
    for name, ph in timing.phases.items():
        row[f"phase_{name}_total_s"] = ph.total_s
        row[f"phase_{name}_median_s"] = ph.median_s
    for source, peak in record.memory.sources().items():
        row[f"peak_{source}_bytes"] = peak.bytes
        row[f"peak_{source}_source"] = peak.source
        row[f"baseline_{source}_bytes"] = peak.baseline_bytes
        row[f"loaded_{source}_bytes"] = peak.loaded_bytes
    for window, peaks in record.memory_by_phase.items():
        for source, value in peaks.model_dump(exclude_unset=True).items():
            row[f"mem_{window}_{source}_bytes"] = value
    return row


def runs_frame(results: Path | str) -> pd.DataFrame:
    """Every run under `results` (a suite folder or a folder of suites), one row each."""
    return pd.DataFrame([run_row(record) for _, record in load_records(results)])


# --------------------------------------------------------------------------- aggregates
def bootstrap_ci(values: np.ndarray, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean (seeded, so a report is reproducible); NaN for fewer than 2 values."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def describe(values: pd.Series | np.ndarray | list[float]) -> dict[str, float]:
    """n, mean, std (ddof 1), median, bootstrap 95% CI of the mean."""
    v = pd.Series(values, dtype=float).dropna().to_numpy()
    lo, hi = bootstrap_ci(v)
    return {"n": len(v), "mean": float(v.mean()) if len(v) else float("nan"),
            "std": float(v.std(ddof=1)) if len(v) > 1 else float("nan"),
            "median": float(np.median(v)) if len(v) else float("nan"), "ci95_low": lo, "ci95_high": hi}


def scale_for(metric: str | None) -> float:
    """Accuracy-like metrics are reported in percent, as the papers do."""
    # a run that failed before its task was built has no metric (NaN in the frame)
    return 100.0 if isinstance(metric, str) and metric.lower() in PERCENT_METRICS else 1.0


def aggregate(frame: pd.DataFrame, by: tuple[str, ...] = AXES) -> pd.DataFrame:
    """One row per cell (over seeds): test metric n/mean/std/median/CI, failures, cost medians."""
    if frame.empty:
        return pd.DataFrame()
    rows = []
    for key, group in frame.groupby(list(by) + ["metric"], dropna=False, sort=False):
        done = group[group["status"] == "done"]
        metric = key[-1]
        scale = scale_for(metric)
        stats = describe(done["test_metric"] * scale)
        rows.append({**dict(zip([*by, "metric"], key, strict=True)),
                     "unit": "%" if scale == 100 else "", "runs": len(group), **stats,
                     "not_done": ", ".join(f"{n} {st}" for st, n in group.loc[group["status"] != "done", "status"]
                                           .value_counts().items()),
                     "median_step_ms": done["median_step_s"].median() * 1000 if len(done) else np.nan,
                     "forward_passes": done["forward_passes"].median() if len(done) else np.nan})
    return pd.DataFrame(rows)


def fmt_mean_std(mean: float, std: float, n: int, digits: int = 3) -> str:
    if not n or not np.isfinite(mean):
        return "—"
    if n == 1 or not np.isfinite(std):
        return f"{mean:.{digits}g}"
    return f"{mean:.{digits}g} ± {std:.2g}"


def method_task_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Methods × tasks: test metric (at the best dev evaluation), mean ± std over seeds; failures named."""
    if frame.empty:
        return pd.DataFrame()
    agg = aggregate(frame, by=("method", "task"))
    cells: dict[tuple[str, str], str] = {}
    for r in agg.itertuples():
        text = fmt_mean_std(r.mean, r.std, r.n)
        if r.not_done:
            text += f" ({r.not_done})"
        unit = f", {r.unit}" if r.unit else ""
        cells[(r.method, f"{r.task} ({r.metric}{unit})")] = text
    table = pd.Series(cells).unstack()
    table.index.name = "method"
    return table


def results_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Every cell with n, mean ± std and the bootstrap 95% CI, for the HTML page and the CSV export."""
    agg = aggregate(frame)
    if agg.empty:
        return agg
    out = agg[[*AXES, "metric", "unit", "n", "mean", "std", "ci95_low", "ci95_high", "median_step_ms",
               "forward_passes", "not_done"]].copy()
    if out["model"].nunique() == 1 and out["model"].iloc[0] in (None, "none"):
        out = out.drop(columns="model")
    return out.round(4)


# --------------------------------------------------------------------------- cost and memory
def memory_source(frame: pd.DataFrame) -> str | None:
    """The best memory source every finished run has (NVML, then the torch allocator, then RSS)."""
    for source in SOURCE_ORDER:
        if f"mem_train_{source}_bytes" in frame and frame[f"mem_train_{source}_bytes"].notna().any():
            return source
    return None


def memory_table(frame: pd.DataFrame, source: str | None = None) -> pd.DataFrame:
    """Per model and method: memory once loaded, peak of the forward-only probe, peak of training.

    The probe is the same model on the first training batch without autograd, measured inside the run;
    'train / inference' near 1 means training costs what inference costs. Loading and evaluation are
    windows of their own and are not in either peak.
    """
    done = frame[frame["status"] == "done"] if not frame.empty else frame
    source = source or memory_source(done)
    if done.empty or source is None:
        return pd.DataFrame()

    def col(name: str) -> pd.Series:
        return done[name] if name in done else pd.Series(np.nan, index=done.index)

    data = pd.DataFrame({"model": done["model"], "method": done["method"], "scheme": done["scheme"],
                         "loaded": col(f"loaded_{source}_bytes"), "inference": col(f"mem_inference_{source}_bytes"),
                         "train": col(f"mem_train_{source}_bytes"), "state": done["state_bytes"]})
    data.loc[~(pd.to_numeric(col("steps"), errors="coerce") > 0), "train"] = np.nan  # zero-shot, ICL: no training
    mib = 2**20
    rows = []
    for (model, method, scheme), g in data.groupby(["model", "method", "scheme"], sort=False):
        loaded, inf, train = g["loaded"].median(), g["inference"].median(), g["train"].median()
        rows.append({"model": model, "method": method, "scheme": scheme, "runs": len(g),
                     "loaded (MiB)": loaded / mib, "inference probe peak (MiB)": inf / mib,
                     "train peak (MiB)": train / mib, "train − inference (MiB)": (train - inf) / mib,
                     "train / inference": train / inf if inf and inf > 0 else np.nan,
                     "optimizer state (MiB)": g["state"].median() / mib})
    out = pd.DataFrame(rows).set_index(["model", "method", "scheme"]).round(2)
    out.attrs["source"] = source
    return out


def cost_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per cell: median step time and its phases, the forward-only probe, passes per step, state size."""
    done = frame[frame["status"] == "done"] if not frame.empty else frame
    if done.empty:
        return pd.DataFrame()
    cols = {"median_step_s": "step (ms)"}
    for ph in ("forward", "perturbation", "update", "backward"):
        if f"phase_{ph}_median_s" in done and done[f"phase_{ph}_median_s"].notna().any():
            cols[f"phase_{ph}_median_s"] = f"{ph} (ms)"
    cols["inference_forward_s"] = "probe forward (ms)"
    data = done[["task", "model", "method", "scheme", *cols]].copy()
    for c in cols:
        data[c] = data[c] * 1000
    steps = done["steps"].where(done["steps"] > 0)
    data["forward passes / step"] = done["forward_passes"] / steps
    data["backward passes / step"] = done["backward_passes"] / steps
    data["optimizer state (MiB)"] = done["state_bytes"] / 2**20
    agg = data.groupby(["task", "model", "method", "scheme"], sort=False).median(numeric_only=True)
    return agg.rename(columns=cols).round(3)
