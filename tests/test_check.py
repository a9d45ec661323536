"""`zobench check`: fresh runs against a stored reference under declared tolerances; drift → exit 1."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from zobench.check import compare, holds, metrics_of, tolerance_for
from zobench.cli import app
from zobench.config import CheckSpec, Tolerance
from zobench.optim.first_order import FirstOrder

SUITE = {
    "name": "chk",
    "defaults": {"steps": 8, "eval_every": 4},
    "grid": {"tasks": [{"name": "softmax-regression", "n": 16, "d": 8}],
             "methods": [{"name": "zo-sgd", "lr": 0.05}, {"name": "fo-sgd", "lr": 0.5}]},
    "check": {"tolerances": {"test.*": {"rel": 1e-6}, "final_train_loss": {"abs": 1e-12, "rel": 1e-6}}},
}


def _check(path, ref, *extra):
    result = CliRunner().invoke(app, ["check", str(path), "--against", str(ref), *extra])
    return result.exit_code, " ".join(result.output.split())


def test_holds_and_tolerances():
    spec = CheckSpec(tolerances={"test.*": Tolerance(rel=1e-3), "test.loss": Tolerance(abs=0.5)})
    assert tolerance_for("test.loss", spec).abs == 0.5  # the exact name beats the glob
    assert tolerance_for("test.accuracy", spec).rel == 1e-3
    assert tolerance_for("steps", spec) is None and tolerance_for("wall_s", spec).rel > 0
    assert holds(1.0, 1.0005, Tolerance(rel=1e-3)) and not holds(1.0, 1.002, Tolerance(rel=1e-3))
    assert holds(0.0, 0.4, Tolerance(abs=0.5)) and not holds(0.0, 1e-300, None)
    assert holds(math.nan, math.nan, None) and not holds(math.nan, 1.0, Tolerance(abs=10))
    assert holds("done", "done", None) and not holds("done", "failed", Tolerance(abs=1))
    assert not holds(1, 2, None) and holds(None, None, None) and not holds(None, 0.0, Tolerance(abs=1))


def test_compare_names_missing_extra_and_drifted_runs():
    summary = {"status": "done", "steps": 4, "test": {"accuracy": 0.5}, "final_train_loss": 0.25, "wall_s": 3.0}
    ref = {"a": metrics_of(summary, CheckSpec()), "gone": metrics_of(summary, CheckSpec())}
    new = {**summary, "test": {"accuracy": 0.75}, "wall_s": 30.0}
    drifts, compared = compare(ref, {"a": new, "gone": None, "new": summary}, CheckSpec(), timing=False)
    assert {(d.run, d.metric) for d in drifts} == {("a", "test.accuracy"), ("gone", "(run)"), ("new", "(run)")}
    assert compared == 4  # status, steps, test.accuracy, final_train_loss: wall-clock left out
    drifts, _ = compare(ref, {"a": new, "gone": summary}, CheckSpec(), timing=True)
    assert {d.metric for d in drifts} == {"test.accuracy", "wall_s"}


def test_check_update_hold_drift_and_revert(write_suite, tmp_path, monkeypatch):
    path, ref = write_suite(SUITE), tmp_path / "ref.json"
    code, out = _check(path, ref)
    assert code == 2 and "no reference file" in out and "--update" in out

    code, out = _check(path, ref, "--update")
    assert code == 0 and "reference written" in out
    stored = json.loads(ref.read_text())
    assert stored["suite"] == "chk" and len(stored["runs"]) == 2
    assert all(r["status"] == "done" for r in stored["runs"].values())

    code, out = _check(path, ref)
    assert code == 0 and "0 drifted" in out and "all hold" in out

    step = FirstOrder.step  # a deliberate change to first-order training: the loss scaled by 1.001
    monkeypatch.setattr(FirstOrder, "step", lambda self, loss_fn: step(self, lambda: loss_fn() * 1.001))
    code, out = _check(path, ref)
    assert code == 1, out
    assert "fo-sgd" in out and "final_train_loss" in out and "test.loss_gap" in out
    assert "zo-sgd" not in out.split("drifted")[1]  # only the changed method drifts

    monkeypatch.setattr(FirstOrder, "step", step)  # reverted: all hold again
    code, out = _check(path, ref)
    assert code == 0 and "all hold" in out


def test_changed_spec_and_new_runs_are_drift_until_update(write_suite, tmp_path):
    path, ref = write_suite(SUITE), tmp_path / "ref.json"
    results = tmp_path / "results"
    assert _check(path, ref, "--update", "--results", str(results))[0] == 0
    changed = json.loads(json.dumps(SUITE))
    changed["grid"]["methods"][0]["lr"] = 0.06
    changed["grid"]["seeds"] = [0, 1]
    path2 = write_suite(changed, "changed.yaml")
    code, out = _check(path2, ref, "--results", str(results))
    assert code == 1
    assert "spec_hash" in out and "run not in the reference" in out
    assert _check(path2, ref, "--update", "--results", str(results))[0] == 0
    assert _check(path2, ref, "--results", str(results), "--no-run")[0] == 0  # reads what is there


def test_timing_is_compared_only_when_asked(write_suite, tmp_path):
    path, ref = write_suite(SUITE), tmp_path / "ref.json"
    results = tmp_path / "results"
    assert _check(path, ref, "--update", "--results", str(results))[0] == 0
    stored = json.loads(ref.read_text())
    for run in stored["runs"].values():
        run["wall_s"] *= 100  # as if the reference machine were 100× slower
    ref.write_text(json.dumps(stored))
    assert _check(path, ref, "--results", str(results), "--no-run")[0] == 0
    code, out = _check(path, ref, "--results", str(results), "--no-run", "--timing")
    assert code == 1 and "wall_s" in out


@pytest.mark.parametrize("text, message", [
    ("not json", "not valid JSON"),
    ('{"suite": "chk"}', "not a zobench reference"),
    ('{"suite": "other", "runs": {}}', "for suite 'other'"),
])
def test_bad_reference_is_a_user_error(write_suite, tmp_path, text, message):
    ref = tmp_path / "ref.json"
    ref.write_text(text)
    code, out = _check(write_suite(SUITE), ref)
    assert code == 2 and str(ref) in out and message in out
