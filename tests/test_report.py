"""Reports: aggregates, the papers' tables with our runs placed in them, profiles, the HTML page and exports."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from report_helpers import SUITE, built_report
from typer.testing import CliRunner

from zobench.cli import app
from zobench.report.frame import bootstrap_ci, describe
from zobench.report.papers import LAYOUTS, baselines_dir, layout_keys, load_published, place
from zobench.report.profiles import profile, ratios, targets


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return built_report(tmp_path_factory.getbasetemp() / "report-suite")


def run_row(method: str, task: str, value: float, seed: int = 0, scheme: str = "full", model: str = "tiny",
            model_id: str | None = None, **extra) -> dict:
    """A runs_frame row as the store would give it (only the fields the layouts read)."""
    return {"status": "done", "model": model, "model_name": "hf" if model_id else "tiny", "model_id": model_id,
            "task": task, "task_name": task, "method": method, "method_name": method, "scheme": scheme,
            "scheme_name": scheme, "seed": seed, "metric": "accuracy", "test_metric": value, "batch_size": 16,
            "task_params": extra.pop("task_params", {}), "method_params": {}, "median_step_s": 0.5, "steps": 10,
            **extra}


def test_bootstrap_ci_is_seeded_and_brackets_the_mean():
    v = np.array([0.80, 0.84, 0.90])
    lo, hi = bootstrap_ci(v)
    assert lo <= v.mean() <= hi and (lo, hi) == bootstrap_ci(v)
    assert np.isnan(bootstrap_ci(np.array([0.5]))[0])
    d = describe([1.0, 2.0, 3.0])
    assert d["n"] == 3 and d["mean"] == 2.0 and d["std"] == pytest.approx(1.0) and d["median"] == 2.0


def test_published_tables_are_cited_and_hold_the_papers_numbers():
    for csv in sorted(baselines_dir().glob("*.csv")):
        table = pd.read_csv(csv)
        assert {"paper", "arxiv", "table"} <= set(table.columns), csv.name
        assert table["arxiv"].notna().all(), csv.name
    for lay in LAYOUTS.values():
        assert set(lay.columns) <= set(load_published(lay.csv).columns), lay.key
    t1 = load_published("mezo-table1.csv").set_index(["variant", "method"])
    assert t1.loc[("published", "MeZO"), "SST-2"] == 91.4 and t1.loc[("published", "FT (12× memory)"), "DROP"] == 31.3
    assert t1.loc[("published", "MeZO (prefix)"), "WSC"] == 60.6
    assert t1.loc[("ZO-AdaMU copy", "MeZO (prefix)"), "WSC"] == 57.7  # the swapped reprint, kept and labelled
    assert t1.loc[("ZO-AdaMU copy", "MeZO (LoRA)"), "COPA"] == 87.0
    zb = load_published("zo-bench-table2.csv").set_index("method")
    assert zb.loc["ZO-SGD", "prompt"] == 84.4 and zb.loc[["FO-Adam", "ZO-SGD-MMT"], "FT"].isna().all()
    assert load_published("zo-adamu-table2.csv").set_index("method").loc["Adam", "RTE std"] == 7.2


def test_runs_land_in_mezo_table1_beside_the_paper():
    frame = pd.DataFrame([
        run_row("zo-sgd", "sst2", 0.90, seed=0), run_row("zo-sgd", "sst2", 0.92, seed=1),
        run_row("zo-sgd", "rte", 0.60), run_row("zo-sgd", "sst2", 0.88, scheme="lora"),
        run_row("fo-adam", "sst2", 0.93), run_row("fo-adamw", "sst2", 0.91),
        run_row("fo-sgd", "sst2", 0.70), run_row("zo-sgd", "synthetic-sentiment", 0.99),
        {**run_row("zo-sgd", "sst2", 0.10, seed=2), "status": "failed"},
    ])
    (panel,) = place(frame, LAYOUTS["mezo-table1"])
    cells = panel.cells.set_index(["row", "column"])
    mezo = cells.loc[("MeZO", "SST-2")]
    assert mezo["ours_n"] == 2 and mezo["ours_mean"] == pytest.approx(91.0) and mezo["paper"] == 91.4
    assert mezo["delta"] == pytest.approx(-0.4) and mezo["ours_std"] == pytest.approx(np.std([90, 92], ddof=1))
    assert cells.loc[("MeZO (LoRA)", "SST-2"), "ours_mean"] == pytest.approx(88.0)
    assert cells.loc[("MeZO", "RTE"), "paper"] == 66.1
    # two first-order methods on the FT row: each its own sub-row, each beside the paper's FT number
    assert cells.loc[("FT (12× memory) ← fo-adam/full", "SST-2"), "paper"] == 92.0
    assert cells.loc[("FT (12× memory) ← fo-adamw/full", "SST-2"), "ours_mean"] == pytest.approx(91.0)
    assert ("", "fo-sgd / full (ours only)") in panel.rows  # no paper row for it: a row of ours
    assert "SST-2" in panel.columns and "synthetic-sentiment" not in panel.columns
    assert ("", "MeZO (LoRA) [ZO-AdaMU copy]") in panel.rows
    assert "tiny is not OPT-13B" in panel.note


def test_roberta_blocks_by_k_and_zero_shot_in_every_block():
    frame = pd.DataFrame([
        run_row("zo-sgd", "sst2-mlm", 0.90, task_params={"k": 16}),
        run_row("zo-sgd", "sst2-mlm", 0.93, task_params={"k": 512}),
        run_row("zero-shot", "sst2-mlm", 0.79, task_params={"k": 16}),
    ])
    (panel,) = place(frame, LAYOUTS["mezo-table18"])
    cells = panel.cells.set_index(["block", "row", "column"])
    assert cells.loc[("k = 16", "MeZO", "SST-2"), "paper"] == 90.5
    assert cells.loc[("k = 512", "MeZO", "SST-2"), "paper"] == 93.3
    assert cells.loc[("k = 512", "MeZO", "SST-2"), "ours_mean"] == pytest.approx(93.0)
    assert cells.loc[("k = 16", "Zero-shot", "SST-2"), "delta"] == pytest.approx(0.0)
    assert cells.loc[("k = 512", "Zero-shot", "SST-2"), "paper"] == 79.0


def test_memory_and_time_tables_place_models_by_size():
    gb = 1e9
    frame = pd.DataFrame([
        run_row("zo-sgd", "multirc", 0.6, model="opt", model_id="facebook/opt-1.3b", mem_train_rss_bytes=5 * gb),
        run_row("fo-adam", "multirc", 0.6, model="opt", model_id="facebook/opt-1.3b", mem_train_rss_bytes=30 * gb,
                batch_size=8, median_step_s=0.7),
        run_row("zo-sgd", "multirc", 0.6, model="tiny", mem_train_rss_bytes=0.1 * gb),
        run_row("zero-shot", "multirc", 0.5, model="tiny", steps=0, mem_train_rss_bytes=0.01 * gb,
                mem_inference_rss_bytes=0.09 * gb),  # no training: its forward-only probe is its memory
    ])
    (mem,) = place(frame, LAYOUTS["mezo-table22"])
    cells = mem.cells.set_index(["row", "column"])
    assert cells.loc[("OPT-1.3B", "zero-shot / MeZO"), "paper"] == 4.0
    assert cells.loc[("OPT-1.3B", "zero-shot / MeZO"), "ours_mean"] == pytest.approx(5.0)
    assert cells.loc[("OPT-1.3B", "full FT"), "delta"] == pytest.approx(3.0)
    assert cells.loc[("tiny ← zero-shot/full", "zero-shot / MeZO"), "ours_mean"] == pytest.approx(0.09)
    assert cells.loc[("tiny ← zo-sgd/full", "zero-shot / MeZO"), "ours_mean"] == pytest.approx(0.1)
    assert cells.loc[("OPT-66B", "full FT"), "paper_std"] == 16 and "process peak RSS" in mem.note
    (time_,) = place(frame, LAYOUTS["mezo-table23"])
    cells = time_.cells.set_index(["row", "column"])
    assert cells.loc[("FT bsz 8", "OPT-1.3B"), "ours_mean"] == pytest.approx(0.7)
    assert cells.loc[("FT bsz 8", "OPT-1.3B"), "paper"] == 0.784
    assert cells.loc[("MeZO bsz 16", "tiny"), "ours_mean"] == pytest.approx(0.5) and "tiny" in time_.columns
    assert layout_keys("mezo-table22") == ["mezo-table22", "mezo-table23"] and layout_keys("nonsense") == []


def test_performance_profile_follows_dolan_more():
    cost = pd.DataFrame([
        {"problem": "p1", "solver": "a", "t": 1.0}, {"problem": "p1", "solver": "b", "t": 4.0},
        {"problem": "p2", "solver": "a", "t": 2.0}, {"problem": "p2", "solver": "b", "t": 1.0},
        {"problem": "p3", "solver": "a", "t": np.inf}, {"problem": "p3", "solver": "b", "t": 3.0},
        {"problem": "p4", "solver": "a", "t": np.inf}, {"problem": "p4", "solver": "b", "t": np.inf},
    ])
    r = ratios(cost, "t")
    assert list(r.index) == ["p1", "p2", "p3"]  # nobody solved p4: dropped
    prof = profile(r, np.array([1.0, 2.0, 4.0, 100.0]))
    assert list(prof["a"]) == pytest.approx([1 / 3, 2 / 3, 2 / 3, 2 / 3])  # never solves p3
    assert list(prof["b"]) == pytest.approx([2 / 3, 2 / 3, 1.0, 1.0])


def test_targets_come_from_the_first_order_runs():
    runs = pd.DataFrame([
        {"run_id": "fo", "status": "done", "model": "m", "task": "t", "seed": 0, "metric": "accuracy",
         "higher_is_better": True, "backward_passes": 10},
        {"run_id": "zo", "status": "done", "model": "m", "task": "t", "seed": 0, "metric": "accuracy",
         "higher_is_better": True, "backward_passes": 0},
    ])
    curves = pd.DataFrame({"run_id": ["fo", "fo", "zo", "zo"], "step": [0, 10, 0, 10],
                           "dev_accuracy": [0.5, 0.9, 0.5, 0.6]})
    (t,) = targets(curves, runs, fraction=0.5).itertuples()
    assert t.start == 0.5 and t.first_order_best == 0.9 and t.target == pytest.approx(0.7)


def test_report_page_exports_and_index(report):
    results, page = report
    html = page.read_text()
    assert "MeZO Table 1" in html and "None of these runs lands in this table" in html  # regenerates: table 1
    assert html.count("data:image/png;base64,") >= 4  # two tasks' curves, memory bars, profiles
    assert "Performance profiles" in html and "process peak RSS" in html and "git revision" in html
    tables = page.parent / "tables"
    for name in ("results", "results-ci", "memory", "cost", "mezo-table1"):
        for ext in ("csv", "md", "tex"):
            assert (tables / f"{name}.{ext}").stat().st_size > 0, f"{name}.{ext}"
    assert "\\begin{tabular}" in (tables / "memory.tex").read_text()
    ci = pd.read_csv(tables / "results-ci.csv")
    assert len(ci) == 6 and (ci["n"] == 2).all() and (ci["ci95_low"] <= ci["mean"]).all()
    memory = pd.read_csv(tables / "memory.csv")
    # RSS is sampled, and pages freed after the load probe go back to the OS: the training peak may read a
    # few pages under it, never a real amount
    assert (memory["train peak (MiB)"] >= memory["loaded (MiB)"] * (1 - 0.01)).all()
    index = (page.parent.parent / "index.html").read_text()
    assert f'href="{SUITE["name"]}/index.html"' in index
    assert json.loads((results / "suite.json").read_text())["regenerates"] == "mezo-table1"


def test_report_command_keeps_regenerates_adds_layouts_and_rejects_unknown(report, tmp_path):
    results, _ = report
    out = tmp_path / "again"
    ok = CliRunner().invoke(app, ["report", str(results), "--reports", str(out), "--layout", "zo-bench-table2"])
    assert ok.exit_code == 0, ok.output
    html = (out / SUITE["name"] / "index.html").read_text()
    assert "MeZO Table 1" in html and "ZO-Bench Table 2" in html  # from suite.json, and asked for
    bad = CliRunner().invoke(app, ["report", str(results), "--reports", str(out), "--layout", "table99"])
    assert bad.exit_code == 2 and "unknown paper table" in bad.output


def test_unknown_regenerates_is_a_user_error(write_suite):
    path = write_suite("name: x\nregenerates: mezo-table99\ngrid:\n  tasks: [softmax-regression]\n"
                       "  methods: [zo-sgd]\n")
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and ":2: regenerates" in result.output and "mezo-table1" in result.output


def test_sst2_runs_fill_the_mezo_table1_layout(data_dir, write_suite, tmp_path):
    from conftest import TINY_LLAMA

    suite = {"name": "t1", "regenerates": "mezo-table1",
             "defaults": {"steps": 3, "batch_size": 4, "eval_every": 3, "device": "cpu"},
             "grid": {"models": [{"name": "tiny", "config": TINY_LLAMA}],
                      "tasks": [{"name": "sst2", "data_dir": str(data_dir / "sst2"), "train_size": 8, "dev_size": 4,
                                 "test_size": 8, "max_length": 96}],
                      "methods": [{"name": "zo-sgd", "lr": 0.01}, {"name": "fo-adam", "lr": 0.01}]}}
    result = CliRunner().invoke(app, ["run", str(write_suite(suite)), "--results", str(tmp_path / "r"),
                                      "--reports", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "p" / "t1" / "tables" / "mezo-table1.csv").set_index(["row", "column"])
    assert table.loc[("MeZO", "SST-2"), "paper"] == 91.4 and 0 <= table.loc[("MeZO", "SST-2"), "ours_mean"] <= 100
    assert table.loc[("FT (12× memory)", "SST-2"), "ours_n"] == 1
