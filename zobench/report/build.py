"""Build reports/<suite>/index.html from results/<suite>: paper tables, our tables, figures, provenance.

Every table is also written as CSV, Markdown and LaTeX under reports/<suite>/tables/; reports/index.html
lists every suite built into the same reports folder. Figures are embedded, so a page is one file.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape

from zobench.report import figures as figs
from zobench.report.frame import SOURCE_NAMES, cost_table, memory_table, method_task_table, results_table, runs_frame
from zobench.report.papers import LAYOUTS, layout_keys, place
from zobench.report.profiles import profiles_figure
from zobench.report.render import export, panel_csv, panel_html, panel_text
from zobench.report.selection import Selection, select, tuning_table
from zobench.store import RunRecord, SuiteRecord, atomic_write, load_curves, load_records, read_suite


def _env() -> Environment:
    return Environment(loader=PackageLoader("zobench", "report/templates"), autoescape=select_autoescape())


def _b64(png: bytes | None) -> str | None:
    return base64.b64encode(png).decode() if png else None


def suite_meta(results: Path, description: str | None = None, regenerates: str | None = None) -> dict[str, Any]:
    """What the suite said about itself (its `suite.json`, written by `zobench run` through the store); an
    argument given here overrides it for this page only. The report writes nothing beside the runs."""
    saved = read_suite(results) or SuiteRecord()
    return {"description": description if description is not None else saved.description,
            "regenerates": regenerates if regenerates is not None else saved.regenerates}


def provenance(records: list[RunRecord]) -> dict[str, str]:
    """Device, driver, packages, git revision: every distinct value across the runs, so mixed origins show."""
    keys = {"device": lambda e: e.device_name or e.device, "driver": lambda e: e.driver, "CUDA": lambda e: e.cuda,
            "CPU": lambda e: e.cpu, "host": lambda e: e.host, "platform": lambda e: e.platform,
            "python": lambda e: e.python, "torch threads": lambda e: e.torch_threads,
            "git revision": lambda e: e.git_revision}
    envs = [r.env for r in records]
    out: dict[str, str] = {}
    for name, get in keys.items():
        values = list(dict.fromkeys(str(v) for v in map(get, envs) if v is not None))
        out[name] = ", ".join(values) if values else "— (not available)"
    packages = sorted({p for e in envs for p in e.packages})
    for p in packages:
        values = list(dict.fromkeys(str(e.packages.get(p)) for e in envs))
        out[p] = ", ".join(values)
    return out


def _table_html(table: pd.DataFrame, empty: str) -> str:
    if table.empty:
        return f"<p class='muted'>{empty}</p>"
    return table.to_html(border=0, na_rep="—", float_format=lambda v: f"{v:.4g}", classes="data",
                         index=not isinstance(table.index, pd.RangeIndex))


def _paper_sections(frame: pd.DataFrame, keys: list[str], folder: Path) -> tuple[list[dict], list[dict]]:
    """(named: the tables the suite regenerates, touched: other paper tables some run landed in)."""
    named, touched = [], []
    for key, lay in LAYOUTS.items():
        panels = place(frame, lay)
        has_ours = any(p.cells["ours_mean"].notna().any() for p in panels)
        if key not in keys and not has_ours:
            continue
        for i, panel in enumerate(panels):
            name = f"{key}" + (f"-{i + 1}" if len(panels) > 1 else "")
            files = export(panel_text(panel), folder, name, csv=panel_csv(panel), caption=lay.title)
            entry = {"title": lay.title, "key": key, "model": panel.ours_model, "note": panel.note,
                     "html": panel_html(panel), "files": files, "csv": lay.csv}
            (named if key in keys else touched).append(entry)
    return named, touched


def _selection_sections(selection: Selection, folder: Path) -> list[dict[str, Any]]:
    """The per-cell choice (values, configurations tried, tuning cost) and every configuration's dev and test."""
    by = {"best-dev": "each run's best dev evaluation", "last": "each run's last dev evaluation"}[selection.mode]
    table = tuning_table(selection)
    configs = selection.configs
    if not configs.empty:
        configs = configs.drop(columns=["config"]).set_index(["model", "task", "method", "scheme", "values"]).round(4)
    out = []
    for name, title, data, note in [
        ("selection", "Chosen configuration per cell and its tuning cost", table,
         f"Chosen on dev: the configuration whose mean over seeds of {by} is best (`zobench report --select "
         f"best-dev|last`); test is not read while choosing. Only configurations with every seed finished and "
         f"evaluated on dev are eligible; ties go to the first in order of the swept values. Cost: every run of "
         f"the cell (all configurations and seeds): training forward + backward passes and wall-clock hours "
         f"(loading and evaluation included). Every other table and figure shows the chosen configurations."),
        ("configurations", "Every configuration tried: dev score, test, eligibility", configs,
         "dev: the selection score (mean over seeds); test: mean and std over finished seeds; metrics in % "
         "where accuracy-like."),
    ]:
        files = export(data, folder, name, caption=title) if not data.empty else {}
        out.append({"title": title, "html": _table_html(data, "No runs."), "note": note, "files": files,
                    "section": "results"})
    return out


def build_suite(frame: pd.DataFrame, curves: pd.DataFrame, records: list[tuple[Path, RunRecord]], suite: str,
                out_root: Path, meta: dict[str, Any], extra_layouts: tuple[str, ...] = (),
                select_by: str = "best-dev") -> Path:
    out = out_root / suite
    tables_dir = out / "tables"
    everything = frame
    selection = select(frame, select_by, curves)
    frame = selection.chosen  # every table and curve below: the chosen configuration of each cell
    if not curves.empty and not frame.empty:
        curves = curves[curves["run_id"].isin(set(frame["run_id"]))]
    keys = layout_keys(",".join([meta.get("regenerates") or "", *extra_layouts]))
    named, touched = _paper_sections(frame, keys, tables_dir)
    if not selection.table.empty and (selection.table["configurations"] > 1).any():
        for entry in named + touched:
            entry["note"] += (" Swept cells show the configuration chosen on dev (mean over seeds; see 'Chosen "
                              "configuration per cell' for the values and the tuning cost).")

    ours = _selection_sections(selection, tables_dir)
    for name, title, table, empty, note in [
        ("results", "Test metric at the best dev evaluation (mean ± std over seeds)", method_task_table(frame),
         "No runs.", "Accuracy-like metrics in %."),
        ("results-ci", "Every cell: n, mean, std and bootstrap 95% CI of the mean", results_table(frame),
         "No runs.", "Percentile bootstrap (2000 resamples, seeded) of the mean over seeds; empty for one seed."),
        ("memory", "Peak memory: forward-only probe vs training", memory_table(frame),
         "No finished runs.", ""),
        ("cost", "Cost per step: phases (median ms per step), passes, optimizer state", cost_table(frame),
         "No finished runs.", "Phases are timed with the device synchronised at each boundary; a phase a method "
                              "does not report is absent."),
    ]:
        if name == "memory" and not table.empty:
            source = table.attrs.get("source")
            note = (f"Source: {SOURCE_NAMES.get(source, source)}. Windows of one run: 'loaded' is what the "
                    f"process holds once model, data and method are built; the probe is two forward passes of "
                    f"the training loss on the first training batch without autograd; 'train' covers every "
                    f"training step. Freed heap is handed back at each window change, so evaluation and "
                    f"loading are in neither peak.")
        files = export(table, tables_dir, name, caption=title) if not table.empty else {}
        ours.append({"title": title, "html": _table_html(table, empty), "note": note, "files": files,
                     "section": "cost" if name in ("memory", "cost") else "results"})

    figures: list[dict[str, Any]] = []  # {title, png (base64), caption}: append here to add a figure
    for task in dict.fromkeys(frame["task"]) if not frame.empty else []:
        png = figs.curves_figure(curves, frame, task) if not curves.empty else None
        if png:
            figures.append({"title": f"Convergence — {task}", "png": _b64(png),
                            "caption": "Top: training loss (10-step running mean); bottom: dev metric at each "
                                       "evaluation. Columns: against steps, forward passes, training seconds "
                                       "(evaluation excluded). Line: median over seeds; band: min–max."})
    png = figs.memory_figure(frame)
    if png:
        figures.append({"title": "Peak memory by method and model", "png": _b64(png),
                        "caption": "Peak above the memory held once the model was loaded; the forward-only "
                                   "probe is the inference cost of the same model and batch."})
    for method in dict.fromkeys(selection.configs["method"]) if not selection.configs.empty else []:
        png = figs.sensitivity_figure(selection.configs, everything, method)
        if png:
            figures.append({"title": f"Sensitivity — {method}", "png": _b64(png),
                            "caption": "Dev (dashed, circles) and test (solid, squares) metric of each swept "
                                       "configuration, mean over seeds (faint points: single seeds); the star is "
                                       "the configuration chosen on dev. Where several parameters are swept, each "
                                       "value shows the configuration with the best dev among those taking it."})
    png, caption = profiles_figure(curves, frame)
    if png or caption:
        figures.append({"title": "Performance profiles", "png": _b64(png), "caption": caption})
    from zobench.report.trajectories import section as trajectory_section  # only with 2-D test-function runs

    traj_table, traj_figure = trajectory_section(records, tables_dir)
    ours += [traj_table] if traj_table else []
    figures += [traj_figure] if traj_figure else []
    from zobench.report.blackbox import section as blackbox_section  # only with black-box method runs

    blackbox_tables, blackbox_figures = blackbox_section(records, tables_dir)
    ours += blackbox_tables
    figures += blackbox_figures
    from zobench.report.quantized import section as quantized_section  # only with qzo runs

    ours += quantized_section(records, tables_dir)
    from zobench.report.federated import section as federated_section  # only with fedzo / fzoos runs

    federated_tables, federated_figures = federated_section(records, tables_dir)
    ours += federated_tables
    figures += federated_figures

    statuses = ", ".join(f"{n} {s}" for s, n in everything["status"].value_counts().items()) \
        if len(everything) else "none"
    page = _env().get_template("suite.html").render(
        suite=suite, description=meta.get("description", ""), regenerates=meta.get("regenerates"),
        n_runs=len(everything), statuses=statuses, generated=dt.datetime.now().isoformat(timespec="seconds"),
        named=named, touched=touched, ours=ours, figures=figures, provenance=provenance([r for _, r in records]),
        layouts=sorted(LAYOUTS))
    atomic_write(out / "index.html", page.encode())
    table = everything.assign(chosen=everything["run_id"].isin(set(frame["run_id"])) if len(everything) else [])
    atomic_write(out / "runs.csv", table.drop(columns=[c for c in ("task_params", "method_params") if c in table])
                 .to_csv(index=False).encode())
    atomic_write(out / "meta.json", json.dumps({
        "suite": suite, "description": meta.get("description", ""), "regenerates": meta.get("regenerates"),
        "runs": len(everything), "statuses": statuses, "generated": dt.datetime.now().isoformat(timespec="seconds"),
        "tasks": sorted(map(str, frame["task"].dropna().unique())) if len(frame) else [],
        "methods": sorted(map(str, frame["method"].dropna().unique())) if len(frame) else []}).encode())
    return out / "index.html"


def build_index(out_root: Path) -> Path:
    """reports/index.html: one line per suite page in this reports folder."""
    suites = []
    for meta in sorted(out_root.glob("*/meta.json")):
        try:
            suites.append(json.loads(meta.read_text()) | {"href": f"{meta.parent.name}/index.html"})
        except json.JSONDecodeError:
            continue
    page = _env().get_template("index.html").render(
        suites=suites, generated=dt.datetime.now().isoformat(timespec="seconds"))
    atomic_write(out_root / "index.html", page.encode())
    return out_root / "index.html"


def build_report(results: Path | str, out_root: Path | str = "reports", description: str | None = None,
                 regenerates: str | None = None, layouts: tuple[str, ...] = (), select_by: str = "best-dev") -> Path:
    """Write each suite's page found under `results` (a suite folder or a folder of suites) and the index.
    Reads results only: the suite's description and tables come from its `suite.json` (`description`,
    `regenerates` override them for this page).

    Returns the suite's page, or the index where `results` held several suites.
    """
    results, out_root = Path(results), Path(out_root)
    frame = runs_frame(results)
    curves = load_curves(results)
    records = load_records(results)
    suites = list(dict.fromkeys(frame["suite"])) if not frame.empty else [results.name]
    pages = []
    for suite in suites:
        folder = results / suite if (results / suite).is_dir() else results
        meta = suite_meta(folder, description, regenerates) if len(suites) == 1 else suite_meta(folder)
        part = frame[frame["suite"] == suite] if not frame.empty else frame
        part_curves = curves[curves["suite"] == suite] if not curves.empty else curves
        part_records = [(folder, r) for folder, r in records if r.suite == suite]
        pages.append(build_suite(part, part_curves, part_records, str(suite), out_root, meta, layouts, select_by))
    index = build_index(out_root)
    return pages[0] if len(pages) == 1 else index
