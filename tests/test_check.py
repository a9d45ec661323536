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
from zobench.store import RunRecord

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
    scoped = CheckSpec(tolerances={"test.*": Tolerance(rel=1e-6), "*-linear-probe-*/test.loss": Tolerance(rel=0.05)})
    assert tolerance_for("test.loss", scoped, "sst2-opt-linear-probe-full-s0").rel == 0.05  # that run only
    assert tolerance_for("test.loss", scoped, "sst2-opt-zo-sgd-full-s0").rel == 1e-6
    assert tolerance_for("test.accuracy", scoped, "sst2-opt-linear-probe-full-s0").rel == 1e-6
    assert holds(1.0, 1.0005, Tolerance(rel=1e-3)) and not holds(1.0, 1.002, Tolerance(rel=1e-3))
    assert holds(0.0, 0.4, Tolerance(abs=0.5)) and not holds(0.0, 1e-300, None)
    assert holds(math.nan, math.nan, None) and not holds(math.nan, 1.0, Tolerance(abs=10))
    assert holds("done", "done", None) and not holds("done", "failed", Tolerance(abs=1))
    assert not holds(1, 2, None) and holds(None, None, None) and not holds(None, 0.0, Tolerance(abs=1))


def record(**fields) -> RunRecord:
    """A run record as summary.json holds it (flat keys), with the identity fields every record has."""
    axes = {axis: {"name": "x", "label": "x"} for axis in ("model", "task", "method", "scheme")}
    return RunRecord.model_validate({"run_id": "r_abc", "spec_hash": "abc", "suite": "s", "seed": 0, "spec": axes,
                                     **fields})


def test_compare_names_missing_extra_and_drifted_runs():
    summary = {"status": "done", "steps": 4, "test": {"accuracy": 0.5}, "final_train_loss": 0.25, "wall_s": 3.0}
    ref = {"a": metrics_of(record(**summary), CheckSpec()), "gone": metrics_of(record(**summary), CheckSpec())}
    new = record(**{**summary, "test": {"accuracy": 0.75}, "wall_s": 30.0})
    drifts, compared = compare(ref, {"a": new, "gone": None, "new": record(**summary)}, CheckSpec(), timing=False)
    assert {(d.run, d.metric) for d in drifts} == {("a", "test.accuracy"), ("gone", "(run)"), ("new", "(run)")}
    assert compared == 5  # spec_hash, status, steps, test.accuracy, final_train_loss: wall-clock left out
    drifts, _ = compare(ref, {"a": new, "gone": record(**summary)}, CheckSpec(), timing=True)
    assert {d.metric for d in drifts} == {"test.accuracy", "wall_s"}


def test_check_update_hold_drift_and_revert(write_suite, tmp_path, monkeypatch):
    path, ref = write_suite(SUITE), tmp_path / "ref.json"
    code, out = _check(path, ref)
    assert code == 2 and "no reference file" in out and "--update" in out

    code, out = _check(path, ref, "--update", "--reason", "first")
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
    assert _check(path, ref, "--update", "--reason", "first", "--results", str(results))[0] == 0
    changed = json.loads(json.dumps(SUITE))
    changed["grid"]["methods"][0]["lr"] = 0.06
    changed["grid"]["seeds"] = [0, 1]
    path2 = write_suite(changed, "changed.yaml")
    code, out = _check(path2, ref, "--results", str(results))
    assert code == 1
    assert "spec_hash" in out and "run not in the reference" in out
    assert _check(path2, ref, "--update", "--reason", "first", "--results", str(results))[0] == 0
    assert _check(path2, ref, "--results", str(results), "--no-run")[0] == 0  # reads what is there


def test_timing_is_compared_only_when_asked(write_suite, tmp_path):
    path, ref = write_suite(SUITE), tmp_path / "ref.json"
    results = tmp_path / "results"
    assert _check(path, ref, "--update", "--reason", "first", "--results", str(results))[0] == 0
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


def test_update_needs_a_reason_and_records_it_with_the_platform(write_suite, tmp_path):
    path, ref = write_suite(SUITE), tmp_path / "ref.json"
    code, out = _check(path, ref, "--update")
    assert code == 2 and "--update needs --reason" in out and not ref.exists()
    assert _check(path, ref, "--update", "--reason", "zo-sgd: new default eps")[0] == 0
    stored = json.loads(ref.read_text())
    assert stored["format"] == 2 and stored["reason"] == "zo-sgd: new default eps"
    assert {"cpu", "cpu_capability", "torch_blas", "torch", "transformers", "threads"} <= set(stored["platform"])
    assert stored["platform"]["threads"] == 1


def test_exact_on_the_reference_platform_tolerances_on_another(write_suite, tmp_path):
    """The same platform repeats bit for bit, so a last-digit change is drift there; on another platform
    (another CPU here) the suite's tolerances apply, and a change past them is still drift."""
    path, ref, results = write_suite(SUITE), tmp_path / "ref.json", tmp_path / "results"
    assert _check(path, ref, "--update", "--reason", "first", "--results", str(results))[0] == 0
    stored = json.loads(ref.read_text())
    key = next(k for k in stored["runs"] if "fo-sgd" in k)
    stored["runs"][key]["final_train_loss"] *= 1 + 1e-8  # within rel 1e-6
    ref.write_text(json.dumps(stored))
    code, out = _check(path, ref, "--results", str(results), "--no-run")
    assert code == 1 and "values compared exactly" in out and "final_train_loss" in out, out

    stored["platform"]["cpu"] = "AMD EPYC 9654 96-Core Processor"
    ref.write_text(json.dumps(stored))
    code, out = _check(path, ref, "--results", str(results), "--no-run")
    assert code == 0 and "platform differs" in out and "cpu: AMD EPYC 9654" in out, out

    stored["runs"][key]["final_train_loss"] *= 1 + 1e-4  # past rel 1e-6: drift on any platform
    ref.write_text(json.dumps(stored))
    code, out = _check(path, ref, "--results", str(results), "--no-run")
    assert code == 1 and "final_train_loss" in out


def test_a_reference_without_a_platform_is_compared_under_tolerances(write_suite, tmp_path):
    path, ref, results = write_suite(SUITE), tmp_path / "ref.json", tmp_path / "results"
    assert _check(path, ref, "--update", "--reason", "first", "--results", str(results))[0] == 0
    stored = json.loads(ref.read_text())
    del stored["platform"]  # format 1
    ref.write_text(json.dumps(stored))
    code, out = _check(path, ref, "--results", str(results), "--no-run")
    assert code == 0 and "no platform recorded" in out


@pytest.mark.parametrize("damage, message", [
    (lambda ref: (ref.unlink(), ref.mkdir()), "is a folder; --against takes the reference JSON file"),
    (lambda ref: ref.write_bytes(b'{"suite": "chk", "runs": {"\xff": 1}}'), "not UTF-8"),
    (lambda ref: ref.write_text(json.dumps({"suite": "chk", "runs": {"a": 5}})), "runs.a: a run's entry must be"),
    (lambda ref: ref.write_text(json.dumps({"suite": "chk", "runs": {"a": {"steps": [8]}}})),
     "runs.a.steps: a value must be"),
    (lambda ref: ref.write_text(json.dumps({"suite": "chk", "runs": {}, "platform": "x86"})), "platform: must be"),
])
def test_a_damaged_reference_is_exit_2_naming_it_not_drift(write_suite, tmp_path, damage, message):
    path, ref, results = write_suite(SUITE), tmp_path / "ref.json", tmp_path / "results"
    assert _check(path, ref, "--update", "--reason", "first", "--results", str(results))[0] == 0
    damage(ref)
    code, out = _check(path, ref, "--results", str(results), "--no-run")
    assert code == 2 and out.startswith(f"error: {ref}") and message in out, out


def test_output_folders_that_are_files_or_read_only_are_exit_2(write_suite, tmp_path, monkeypatch):
    import os

    path, a_file = write_suite(SUITE), tmp_path / "a-file"
    a_file.write_text("x")
    runner = CliRunner()
    for args in (["check", str(path), "--against", str(tmp_path / "ref.json"), "--update", "--reason", "r",
                  "--results", str(a_file)],
                 ["run", str(path), "--results", str(a_file)],
                 ["run", str(path), "--results", str(tmp_path / "r"), "--reports", str(a_file)],
                 ["report", str(a_file)],
                 ["report", str(tmp_path), "--reports", str(a_file)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and f"{a_file}: is a file" in result.output, (args, result.output)
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    real = os.access  # root may write anywhere, so the permission is what the test denies
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(read_only) else real(p, mode))
    result = runner.invoke(app, ["run", str(path), "--results", str(read_only / "results")])
    assert result.exit_code == 2 and f"{read_only}: cannot be written" in result.output, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "read-only", "suite.yaml"]


def test_a_platform_bound_run_keeps_only_its_structure_on_another_platform():
    summary = {"status": "done", "steps": 4, "forward_passes": 8, "test": {"loss": 0.5}, "final_train_loss": 0.25}
    spec = CheckSpec(platform_bound=["*-counter-*"])
    ref = {"t-m-zo-counter-full-s0": metrics_of(record(**summary), spec),
           "t-m-zo-full-s0": metrics_of(record(**summary), spec)}
    moved = {**summary, "test": {"loss": 0.9}, "final_train_loss": 0.7}
    runs = {"t-m-zo-counter-full-s0": record(**moved), "t-m-zo-full-s0": record(**moved)}
    drifts, _ = compare(ref, runs, spec, timing=False, exact=False)
    assert {d.run for d in drifts} == {"t-m-zo-full-s0"}
    drifts, _ = compare(ref, runs, spec, timing=False, exact=True)  # on the reference's platform: every value
    assert {d.run for d in drifts} == {"t-m-zo-full-s0", "t-m-zo-counter-full-s0"}
    drifts, _ = compare(ref, {**runs, "t-m-zo-counter-full-s0": record(**{**moved, "forward_passes": 9})}, spec,
                        timing=False)
    assert ("t-m-zo-counter-full-s0", "forward_passes") in {(d.run, d.metric) for d in drifts}
