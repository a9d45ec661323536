"""Seaborn figures, returned as PNG bytes so the HTML page can embed them."""

from __future__ import annotations

import io
import os

import pandas as pd


def _pyplot():
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def convergence(curves: pd.DataFrame) -> bytes | None:
    """Training loss against steps, one panel per task; median over seeds with the interquartile band."""
    if curves.empty or "train_loss" not in curves:
        return None
    plt = _pyplot()
    import seaborn as sns

    data = curves.dropna(subset=["train_loss"]).copy()
    data["smoothed"] = data.groupby("run_id")["train_loss"].transform(lambda s: s.rolling(10, min_periods=1).mean())
    tasks = sorted(data["task"].unique())
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        part = data[data["task"] == task]
        sns.lineplot(data=part, x="step", y="smoothed", hue="method", estimator="median",
                     errorbar=("pi", 50), ax=ax)
        if (part["smoothed"] > 0).all() and part["smoothed"].max() / max(part["smoothed"].min(), 1e-300) > 100:
            ax.set_yscale("log")
        ax.set_title(task)
        ax.set_ylabel("train loss (10-step mean)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
