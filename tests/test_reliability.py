"""Resume, caching, failure isolation and locking: a killed, crashed or doubled `zobench run` loses nothing,
caches no failure and runs nothing twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import TINY_LLAMA
from typer.testing import CliRunner

from zobench.cli import app, plan
from zobench.optim.first_order import FirstOrder
from zobench.report.frame import method_task_table, runs_frame
from zobench.store import RunRecord, Store

FAST = {
    "name": "fast",
    "defaults": {"steps": 5, "eval_every": 5},
    "grid": {"tasks": [{"name": "softmax-regression", "n": 16, "d": 8}],
             "methods": [{"name": "zo-sgd", "lr": 0.01}, {"name": "fo-sgd", "lr": 0.1}]},
}
# ~1-2 s per run on one core: long enough to be killed mid-run, short enough to rerun
SLOW = {
    "name": "slow",
    "defaults": {"steps": 1500, "eval_every": 1500},
    "grid": {"tasks": [{"name": "softmax-regression", "n": 256, "d": 128}],
             "methods": [{"name": "zo-sgd", "lr": 0.01}, {"name": "fo-sgd", "lr": 0.1}],
             "seeds": [0, 1]},
}


def _invoke(path: Path, results: Path, *extra: str):
    return CliRunner().invoke(app, ["run", str(path), "--results", str(results), "--no-report", *extra])


def _cli(*args: object) -> list[str]:
    return [sys.executable, "-c", "import sys; from zobench.cli import app; sys.exit(app())", *map(str, args)]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _attempts(run_dir: Path) -> list[dict]:
    path = run_dir / "attempts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _runs(suite_dir: Path) -> list[Path]:
    return sorted(p for p in suite_dir.iterdir() if p.is_dir()) if suite_dir.exists() else []


def test_rerun_skips_done_runs_and_reruns_changed_specs(write_suite, tmp_path):
    path, results = write_suite(FAST), tmp_path / "results"
    first = _invoke(path, results)
    assert first.exit_code == 0, first.output
    assert "0 already done, 2 to run" in first.output
    again = _invoke(path, results)
    assert "2 already done, 0 to run" in again.output
    assert [len(_attempts(r)) for r in _runs(results / "fast")] == [1, 1]

    changed = json.loads(json.dumps(FAST))
    changed["grid"]["methods"][1]["lr"] = 0.2  # a changed spec is a new run; the other stays cached
    third = _invoke(write_suite(changed), results)
    assert "1 already done, 1 to run" in third.output
    runs = _runs(results / "fast")
    assert len(runs) == 3 and [len(_attempts(r)) for r in runs] == [1, 1, 1]

    forced = _invoke(path, results, "--rerun")
    assert "0 already done, 2 to run" in forced.output
    assert sorted(len(_attempts(r)) for r in _runs(results / "fast")) == [1, 2, 2]


def test_diverged_oom_and_crashed_runs_are_recorded_and_not_cached(write_suite, tmp_path, monkeypatch):
    """NaN → diverged (with its step); CUDA OOM / MemoryError → oom; anything else → failed + traceback.
    The grid goes on, the table names them, and the next invocation runs them again."""
    faults = {0.0777: torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
              0.0778: MemoryError("simulated host OOM"), 0.0779: ValueError("simulated crash")}
    step = FirstOrder.step

    def faulty(self, loss_fn):
        if self.forward_passes >= 2 and self.hp.lr in faults:  # fail on the third step, after some progress
            raise faults[self.hp.lr]
        return step(self, loss_fn)

    monkeypatch.setattr(FirstOrder, "step", faulty)
    suite = {
        "name": "faults", "defaults": {"steps": 6, "batch_size": 4, "eval_every": 3},
        "grid": {"models": [{"name": "tiny", "label": "tiny-llama", "config": TINY_LLAMA}],
                 "tasks": [{"name": "synthetic-sentiment", "train_size": 16, "dev_size": 8, "test_size": 8}],
                 "methods": [{"name": "zo-sgd", "label": "ok", "lr": 0.001},
                             {"name": "fo-sgd", "label": "nan", "lr": 1.0e8},
                             {"name": "fo-adam", "label": "cuda-oom", "lr": 0.0777},
                             {"name": "fo-adamw", "label": "host-oom", "lr": 0.0778},
                             {"name": "fo-sgd", "label": "crash", "lr": 0.0779}]},
    }
    path, results = write_suite(suite), tmp_path / "results"
    result = CliRunner().invoke(app, ["run", str(path), "--results", str(results), "--reports",
                                      str(tmp_path / "reports")])
    assert result.exit_code == 1, result.output  # runs that did not finish: exit 1, the grid and report still made
    runs = {json.loads((r / "summary.json").read_text())["spec"]["method"]["label"]: r
            for r in _runs(results / "faults")}
    summary = {label: json.loads((r / "summary.json").read_text()) for label, r in runs.items()}
    assert {k: s["status"] for k, s in summary.items()} == {
        "ok": "done", "nan": "diverged", "cuda-oom": "oom", "host-oom": "oom", "crash": "failed"}
    assert summary["nan"]["diverged_at_step"] >= 1 and "nan" in summary["nan"]["error"]
    assert summary["cuda-oom"]["error"].startswith("OutOfMemoryError")
    assert summary["host-oom"]["error"].startswith("MemoryError")
    assert "ValueError: simulated crash" in (runs["crash"] / "traceback.txt").read_text()
    assert not (runs["host-oom"] / "traceback.txt").exists()
    assert pd.read_parquet(runs["crash"] / "curve.parquet")["step"].max() == 2  # the steps before the crash
    table = method_task_table(runs_frame(results / "faults"))  # what `run` prints and the report shows
    page = (tmp_path / "reports" / "faults" / "index.html").read_text()
    for label, status in (("nan", "diverged"), ("cuda-oom", "oom"), ("host-oom", "oom"), ("crash", "failed")):
        assert f"1 {status}" in " ".join(map(str, table.loc[label])), table
        assert f"1 {status}" in page
    assert "4 runs did not finish" in " ".join(result.output.split())

    monkeypatch.setattr(FirstOrder, "step", step)  # the fault is gone: failures are retried, done is kept
    again = _invoke(path, results)
    assert "1 already done, 4 to run" in again.output
    after = {label: json.loads((r / "summary.json").read_text()) for label, r in runs.items()}
    assert {k: s["status"] for k, s in after.items()} == {
        "ok": "done", "nan": "diverged", "cuda-oom": "done", "host-oom": "done", "crash": "done"}
    assert {k: len(_attempts(r)) for k, r in runs.items()} == {
        "ok": 1, "nan": 2, "cuda-oom": 2, "host-oom": 2, "crash": 2}
    assert not (runs["crash"] / "traceback.txt").exists()  # the old attempt's traceback went with it


def test_sigkill_mid_grid_then_rerun_completes_without_duplicates(write_suite, tmp_path):
    path, results = write_suite(SLOW), tmp_path / "results"
    suite_dir = results / "slow"
    log = (tmp_path / "killed.log").open("w")
    proc = subprocess.Popen(_cli("run", path, "--results", results, "--no-report"), stdout=log, stderr=log,
                            env=_env(), cwd=tmp_path)
    deadline = time.monotonic() + 240  # generous: a loaded 2-core machine imports slowly
    try:
        while True:  # kill once one run is done and the next is under way
            assert proc.poll() is None, f"finished before the kill: {(tmp_path / 'killed.log').read_text()}"
            runs = _runs(suite_dir)
            if any((r / "summary.json").exists() for r in runs) and \
                    any(_attempts(r) and not (r / "summary.json").exists() for r in runs):
                break
            assert time.monotonic() < deadline, "the first run never finished"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL

    runs = _runs(suite_dir)
    done_before = {r.name: (r / "summary.json").read_bytes() for r in runs if (r / "summary.json").exists()}
    killed = [r.name for r in runs if _attempts(r) and r.name not in done_before]
    assert done_before and len(killed) == 1
    for blob in done_before.values():  # whatever summary exists is whole
        assert json.loads(blob)["status"] == "done"

    rerun = _invoke(path, results)
    assert rerun.exit_code == 0, rerun.output
    assert f"{len(done_before)} already done, {4 - len(done_before)} to run" in rerun.output
    runs = _runs(suite_dir)
    assert len(runs) == 4
    for r in runs:
        summary = json.loads((r / "summary.json").read_text())
        assert summary["status"] == "done"
        attempts = _attempts(r)
        if r.name in done_before:  # untouched: same bytes, one attempt, by the killed process
            assert (r / "summary.json").read_bytes() == done_before[r.name]
            assert [a["pid"] for a in attempts] == [proc.pid]
        elif r.name in killed:  # started by the killed process, finished by the rerun
            assert [a["pid"] for a in attempts] == [proc.pid, os.getpid()]
            assert summary["pid"] == os.getpid() and summary["attempt"] == 2
        else:
            assert [a["pid"] for a in attempts] == [os.getpid()]
    assert not list(suite_dir.rglob(".*.tmp"))


def test_a_run_held_by_another_process_is_waited_for_not_run_twice(write_suite, tmp_path):
    """The claim protocol, deterministically: while 'someone else' holds a run, the executor runs the rest,
    then waits; when the holder finished it, the executor takes its result instead of running it again."""
    from zobench import runner

    path, results = write_suite(FAST), tmp_path / "results"
    suite, specs = plan(path)
    store = Store(results, suite.name)
    held, rest = specs[0], specs[1]
    holding, released = threading.Event(), threading.Event()

    def other_process() -> None:  # holds `held`, and finishes it once the executor is waiting for it
        lock = store.lock(held.run_id)
        lock.acquire()
        holding.set()
        try:
            while not store.is_done(rest.run_id, rest.spec_hash):
                time.sleep(0.01)
            time.sleep(0.2)
            store.begin(held.run_id)
            runner.run(held, store)
        finally:
            lock.release()
            released.set()

    thread = threading.Thread(target=other_process)
    thread.start()
    assert holding.wait(timeout=30)
    result = _invoke(path, results)
    thread.join(timeout=60)
    assert released.is_set()
    assert result.exit_code == 0, result.output
    for spec in specs:
        assert store.is_done(spec.run_id, spec.spec_hash)
        assert len(store.attempts(spec.run_id)) == 1


def test_two_processes_on_one_suite_run_each_run_once(write_suite, tmp_path):
    suite = json.loads(json.dumps(SLOW))
    suite["defaults"]["steps"] = 500
    suite["grid"]["seeds"] = [0, 1, 2]  # 6 runs of ~1 s
    path, results = write_suite(suite), tmp_path / "results"
    logs = [(tmp_path / f"p{i}.log").open("w") for i in range(2)]
    first = subprocess.Popen(_cli("run", path, "--results", results, "--no-report"), stdout=logs[0],
                             stderr=logs[0], env=_env(), cwd=tmp_path)
    deadline = time.monotonic() + 240
    while not any(_attempts(r) for r in _runs(results / "slow")) and first.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    second = subprocess.Popen(_cli("run", path, "--results", results, "--no-report"), stdout=logs[1],
                              stderr=logs[1], env=_env(), cwd=tmp_path)
    codes = [p.wait(timeout=300) for p in (first, second)]
    assert codes == [0, 0], [(tmp_path / f"p{i}.log").read_text() for i in range(2)]
    runs = _runs(results / "slow")
    assert len(runs) == 6
    attempts = [a for r in runs for a in _attempts(r)]
    assert len(attempts) == 6  # every run started exactly once, by one of the two
    assert {a["pid"] for a in attempts} <= {first.pid, second.pid}
    for r in runs:
        summary = json.loads((r / "summary.json").read_text())
        assert summary["status"] == "done" and summary["pid"] == _attempts(r)[0]["pid"]
    for i in range(2):  # both report the whole grid at the end
        assert "results:" in (tmp_path / f"p{i}.log").read_text()


def _record(status: str, spec_hash: str = "abc") -> RunRecord:
    axes = {axis: {"name": "x", "label": "x"} for axis in ("model", "task", "method", "scheme")}
    return RunRecord.model_validate({"run_id": "r_abc", "spec_hash": spec_hash, "suite": "s", "seed": 0,
                                     "status": status, "spec": axes})


@pytest.mark.parametrize("status", ["failed", "diverged", "oom"])
def test_a_failed_summary_is_never_taken_for_done(tmp_path, status):
    store = Store(tmp_path, "s")
    store.write_spec("r_abc", {})
    store.write_curve("r_abc", [{"step": 0, "loss": 1.0}])
    store.write_record("r_abc", _record(status))
    assert not store.is_done("r_abc", "abc")
    store.write_record("r_abc", _record("done"))
    assert store.is_done("r_abc", "abc") and not store.is_done("r_abc", "other")


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {  # what a crash, a full disk, a hand edit or another program can leave in a finished run's folder
    "summary forged": lambda d, s: (d / "summary.json").write_text(json.dumps({"status": "done",
                                                                              "spec_hash": s["spec_hash"]})),
    "summary a list": lambda d, s: (d / "summary.json").write_text("[1, 2]"),
    "summary a string": lambda d, s: (d / "summary.json").write_text('"done"'),
    "summary not UTF-8": lambda d, s: (d / "summary.json").write_bytes(b'{"status": "done\xff\xfe"}'),
    "summary truncated": lambda d, s: _truncate(d / "summary.json"),
    "curve garbage": lambda d, s: (d / "curve.parquet").write_bytes(b"PAR1 not really"),
    "curve truncated": lambda d, s: _truncate(d / "curve.parquet"),
    "curve deleted": lambda d, s: (d / "curve.parquet").unlink(),
    "spec deleted": lambda d, s: (d / "spec.yaml").unlink(),
    "spec edited": lambda d, s: (d / "spec.yaml").write_text("seed: 1\n"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_run_is_named_skipped_by_the_report_and_redone(write_suite, tmp_path, case):
    path, results, reports = write_suite(FAST), tmp_path / "results", tmp_path / "reports"
    assert _invoke(path, results).exit_code == 0
    folder = sorted(p for p in (results / "fast").iterdir() if p.is_dir())[0]
    summary = json.loads((folder / "summary.json").read_text())
    assert set(summary["files"]) == {"spec.yaml", "curve.parquet"}  # checksums recorded
    DAMAGE[case](folder, summary)

    report = CliRunner().invoke(app, ["report", str(results / "fast"), "--reports", str(reports)])
    assert report.exit_code == 0, (report.output, report.exception)
    if case.startswith("summary"):  # the run is left out of the report, named once
        assert report.output.count(f"skipped {folder / 'summary.json'}") == 1, report.output
        assert len(pd.read_csv(reports / "fast" / "runs.csv")) == 1
    elif case.startswith("curve") and case != "curve deleted":
        assert f"skipped {folder / 'curve.parquet'}" in report.output, report.output

    again = _invoke(path, results)
    assert again.exit_code == 0, (again.output, again.exception)
    said = [line for line in again.output.splitlines() if line.startswith(str(folder))]
    assert len(said) == 1 and said[0].endswith("running it again"), again.output
    assert "1 already done, 1 to run" in again.output
    redone = json.loads((folder / "summary.json").read_text())
    assert redone["status"] == "done" and redone["attempt"] == 2
    assert redone["test_metric"] == summary["test_metric"]  # the same run, the same numbers
    assert "running it again" not in _invoke(path, results).output  # now whole: taken as done


def test_a_full_disk_is_recorded_and_the_grid_goes_on(write_suite, tmp_path, monkeypatch, capsys):
    """No space for a curve: that run is recorded as failed (the summary is small); no space for the summary
    either: one line says so, the run stays not done, and the next run of the grid still runs."""
    import errno

    from zobench import store as store_module

    real = store_module.atomic_write
    full = {"curve.parquet"}

    def atomic_write(path: Path, data: bytes) -> None:
        if path.name in full:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, data)

    monkeypatch.setattr(store_module, "atomic_write", atomic_write)
    path, results = write_suite(FAST), tmp_path / "results"
    result = _invoke(path, results)
    assert result.exit_code == 1, (result.output, result.exception)  # both runs recorded failed
    summaries = [json.loads(p.read_text()) for p in sorted((results / "fast").rglob("summary.json"))]
    assert [s["status"] for s in summaries] == ["failed", "failed"]
    assert all("curve.parquet not written" in s["error"] and "No space left" in s["error"] for s in summaries)

    full.add("summary.json")
    for p in (results / "fast").rglob("summary.json"):
        p.unlink()
    result = _invoke(path, results)
    assert result.exit_code == 1, (result.output, result.exception)  # no summary written: not done (issue 21)
    lines = [line for line in result.output.splitlines() if "summary.json: not written (the disk is full)" in line]
    assert len(lines) == 2  # one line per run, both runs tried
    assert not list((results / "fast").rglob("summary.json"))

    monkeypatch.setattr(store_module, "atomic_write", real)  # space again: the grid completes
    result = _invoke(path, results)
    assert result.exit_code == 0 and "0 already done, 2 to run" in result.output


def test_report_files_are_written_atomically(write_suite, tmp_path, monkeypatch):
    """runs.csv (and every other report file) goes through atomic_write: a write that fails leaves the old
    file whole, never a 0-byte one."""
    from zobench.report import build as build_module

    path, results, reports = write_suite(FAST), tmp_path / "results", tmp_path / "reports"
    assert _invoke(path, results).exit_code == 0
    assert CliRunner().invoke(app, ["report", str(results / "fast"), "--reports", str(reports)]).exit_code == 0
    before = (reports / "fast" / "runs.csv").read_bytes()
    assert len(before) > 0
    real = build_module.atomic_write

    def failing(target: Path, data: bytes) -> None:
        if target.name == "runs.csv":
            raise OSError(28, "No space left on device", str(target))
        real(target, data)

    monkeypatch.setattr(build_module, "atomic_write", failing)
    result = CliRunner().invoke(app, ["report", str(results / "fast"), "--reports", str(reports)])
    assert result.exit_code == 2 and "runs.csv: No space left on device" in result.output, result.output
    assert (reports / "fast" / "runs.csv").read_bytes() == before
