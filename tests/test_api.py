"""The Python API: zobench.run returns the suite's runs, zobench.load and zobench.curves read them back."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import zobench
from zobench.errors import UserError

METHODS = [{"name": "fo-sgd", "lr": 0.01}, {"name": "zo-sgd", "lr": 0.01, "eps": 0.001},
           {"name": "fo-sgd", "lr": 1e9, "label": "too-big"}]


def suite(tmp_path: Path, methods: list[dict] = METHODS) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({
        "name": "api",
        "defaults": {"steps": 12, "eval_every": 4, "device": "cpu", "select": "last"},
        "grid": {"tasks": [{"name": "test-function", "function": "c"}],
                 "methods": methods,
                 "seeds": [0]},
    }))
    return path


def test_run_then_load_and_curves(tmp_path):
    results = tmp_path / "results"
    runs = zobench.run(suite(tmp_path), results)
    assert len(runs) == 3
    assert dict(zip(runs["method"], runs["status"], strict=True)) == {
        "fo-sgd": "done", "zo-sgd": "done", "too-big": "diverged"}
    done = runs[runs["status"] == "done"]
    assert (done["steps"] == 12).all() and done["test_metric"].notna().all()
    # zo-sgd: two forward passes a step, no backward; fo-sgd: one of each
    passes = done.set_index("method")[["forward_passes", "backward_passes"]]
    assert passes.loc["zo-sgd"].tolist() == [24, 0] and passes.loc["fo-sgd"].tolist() == [12, 12]

    loaded = zobench.load(results / "api")
    assert sorted(loaded["run_id"]) == sorted(runs["run_id"])
    steps = zobench.curves(results / "api")
    assert set(steps["method"]) == {"fo-sgd", "zo-sgd", "too-big"}
    assert steps[steps["method"] == "zo-sgd"]["step"].max() == 12

    again = zobench.run(suite(tmp_path), results)  # done runs are read back, not run again
    key = ["run_id", "status", "test_metric"]
    pd_equal = again.sort_values("run_id")[key].reset_index(drop=True).equals(
        runs.sort_values("run_id")[key].reset_index(drop=True))
    assert pd_equal
    attempts = {p.parent.name: len(p.read_text().splitlines()) for p in (results / "api").glob("*/attempts.jsonl")}
    assert attempts[done[done["method"] == "zo-sgd"]["run_id"].item()] == 1

    # the same suite with fo-adam for zo-sgd: only its own runs come back, not the whole folder's
    one = zobench.run(suite(tmp_path, [METHODS[0], {"name": "fo-adam", "lr": 0.01}, METHODS[2]]), results)
    assert len(zobench.load(results / "api")) == 4 and len(one) == 3 and "fo-adam" in set(one["method"])


def test_bad_input_raises_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such results folder"):
        zobench.load(tmp_path / "nothing")
    path = suite(tmp_path)
    path.write_text(path.read_text().replace("zo-sgd", "zo-sgdd"))
    with pytest.raises(UserError, match="zo-sgdd"):
        zobench.run(path, tmp_path / "results")
    assert not (tmp_path / "results").exists()


def test_import_stays_light():
    import subprocess
    import sys

    code = "import sys, zobench; print('torch' in sys.modules, 'pandas' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.split() == ["False", "False"]
    with pytest.raises(AttributeError):
        zobench.no_such_thing  # noqa: B018
