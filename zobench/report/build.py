"""Build reports/<suite>/index.html from results/<suite>: tables (also as CSV/Markdown), figures, provenance."""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path
from typing import Any

import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape

from zobench.report.figures import convergence
from zobench.report.frame import method_task_table, runs_frame
from zobench.store import atomic_write, load_curves, load_summaries


def cost_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per method and task: median step time, forward/backward passes, peak memory, optimiser state."""
    done = frame[frame["status"] == "done"]
    if done.empty:
        return pd.DataFrame()
    cols = {"median_step_s": "median step (ms)", "forward_passes": "forward passes",
            "backward_passes": "backward passes", "state_bytes": "optimizer state (MiB)"}
    cols.update({c: c.replace("peak_", "peak ").replace("_bytes", " (MiB)") for c in done if c.startswith("peak_")})
    agg = done.groupby(["task", "method"])[list(cols)].median(numeric_only=True)
    agg["median_step_s"] *= 1000
    for c in agg.columns:
        if c.endswith("bytes"):
            agg[c] /= 2**20
    return agg.rename(columns=cols).round(3)


def build_report(results: Path | str, out_root: Path | str = "reports", description: str = "") -> Path:
    """Write the suite's HTML page (figures embedded) and its tables; return the page's path."""
    results = Path(results)
    frame = runs_frame(results)
    suite = str(frame["suite"].iloc[0]) if not frame.empty else results.name
    out = Path(out_root) / suite
    table = method_task_table(frame)
    cost = cost_table(frame)
    png = convergence(load_curves(results))
    summaries = load_summaries(results)
    env: dict[str, Any] = summaries[0].get("env", {}) if summaries else {}
    provenance = {
        "device": env.get("device_name", env.get("device")), "driver": env.get("driver", "—"),
        "host": env.get("host"), "torch threads": env.get("torch_threads"),
        **{f"{k}": v for k, v in env.get("packages", {}).items()}, "git revision": env.get("git_revision"),
    }
    page = Environment(loader=PackageLoader("zobench", "report/templates"),
                       autoescape=select_autoescape()).get_template("suite.html").render(
        suite=suite, description=description, n_runs=len(frame),
        statuses=", ".join(f"{n} {s}" for s, n in frame["status"].value_counts().items()) if len(frame) else "none",
        generated=dt.datetime.now().isoformat(timespec="seconds"),
        table_html=table.to_html(border=0) if not table.empty else "<p>No runs.</p>",
        cost_html=cost.to_html(border=0) if not cost.empty else "<p>No finished runs.</p>",
        convergence=base64.b64encode(png).decode() if png else None, provenance=provenance,
    )
    atomic_write(out / "index.html", page.encode())
    if not table.empty:
        atomic_write(out / "table.csv", table.to_csv().encode())
        atomic_write(out / "table.md", table.to_markdown().encode())
    frame.to_csv(out / "runs.csv", index=False)
    return out / "index.html"

