"""Executors: the subprocess pool, submitit (local and the Slurm script it would submit) and Ray give the
same runs and numbers as the local executor, write through the same store, and report their options'
typos with file:line."""

from __future__ import annotations

import json
import os
import signal
import stat
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from zobench.cli import app
from zobench.config import load_suite
from zobench.errors import UserError
from zobench.executors.pool import SubprocessExecutor
from zobench.grid import expand
from zobench.store import Store

SUITE = {
    "name": "fan",
    "defaults": {"steps": 30, "batch_size": 8, "eval_every": 15},
    "grid": {
        "tasks": [{"name": "softmax-regression", "d": 8, "n": 16}],
        "methods": [{"name": "zo-sgd", "lr": 0.01}, {"name": "fo-adam", "lr": 0.01}],
        "seeds": [0, 1],
    },
    "executor": {
        "name": "local",
        "local": {"threads": 1},
        "subprocess": {"workers": 2, "threads": 1},
        "slurm": {"cluster": "local", "gpus_per_node": 0, "array_parallelism": 2, "threads": 1, "timeout_min": 5,
                  "poll_s": 0.2},
        "ray": {"local_cpus": 2, "num_cpus": 1, "threads": 1},
    },
}
VOLATILE = {"env", "pid", "attempt", "memory", "memory_by_phase", "phases", "files"}  # files: checksums of timed curves


def comparable(folder: Path) -> dict[str, tuple[str, str]]:
    """run_id → (summary without timing/memory/environment, curve without timing columns), as JSON text
    (so NaN equals NaN and floats compare bit for bit through repr)."""
    out = {}
    for path in sorted(folder.glob("*/summary.json")):
        s = json.loads(path.read_text())
        curve = pd.read_parquet(path.parent / "curve.parquet")
        rows = curve[[c for c in curve.columns if not c.endswith("_s")]].to_json(orient="records", double_precision=15)
        kept = {k: v for k, v in s.items() if k not in VOLATILE and not k.endswith("_s")}
        out[s["run_id"]] = (json.dumps(kept, sort_keys=True), rows)
    return out


def run_cli(path: Path, results: Path, *extra: str):
    return CliRunner().invoke(app, ["run", str(path), "--results", str(results), "--no-report", *extra])


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict]:
    """The suite run by the local executor: what every other executor must reproduce."""
    import yaml

    root = tmp_path_factory.mktemp("ref")
    path = root / "suite.yaml"
    path.write_text(yaml.safe_dump(SUITE, sort_keys=False))
    result = run_cli(path, root / "results")
    assert result.exit_code == 0, result.output
    runs = comparable(root / "results" / "fan")
    assert len(runs) == 4 and all(json.loads(s)["status"] == "done" for s, _ in runs.values())
    return path, runs


def test_subprocess_pool_matches_local(reference, tmp_path):
    path, expected = reference
    result = run_cli(path, tmp_path, "--executor", "subprocess")
    assert result.exit_code == 0, result.output
    assert comparable(tmp_path / "fan") == expected
    summaries = [json.loads(p.read_text()) for p in (tmp_path / "fan").glob("*/summary.json")]
    assert {s["env"]["torch_threads"] for s in summaries} == {1}
    assert os.getpid() not in {s["pid"] for s in summaries}  # each run in a process of its own
    assert len({s["pid"] for s in summaries}) == 4
    assert all((tmp_path / "fan" / s["run_id"] / "worker.log").exists() for s in summaries)


def test_submitit_local_matches_local(reference, tmp_path):
    pytest.importorskip("submitit")
    path, expected = reference
    result = run_cli(path, tmp_path, "--executor", "slurm")
    assert result.exit_code == 0, result.output
    assert comparable(tmp_path / "fan") == expected
    assert list((tmp_path / ".submitit" / "fan").glob("*_result.pkl"))  # it went through submitit's jobs


def test_ray_local_cluster_matches_local(reference, tmp_path):
    ray = pytest.importorskip("ray")
    path, expected = reference

    def too_long(*_):
        raise TimeoutError("the Ray test ran past 240 s")

    previous = signal.signal(signal.SIGALRM, too_long)
    signal.alarm(240)
    try:  # the executor starts a cluster on 127.0.0.1 and must stop it
        result = run_cli(path, tmp_path, "--executor", "ray")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        if ray.is_initialized():
            ray.shutdown()
            pytest.fail("the ray executor left its local cluster running")
    assert result.exit_code == 0, result.output
    assert comparable(tmp_path / "fan") == expected


def test_pool_slots_pin_gpus_and_split_cpus(monkeypatch):
    monkeypatch.setattr("zobench.executors.pool.cpu_count", lambda: 8)
    slots = SubprocessExecutor({"gpus": ["0", "1"], "runs_per_gpu": 2}).slots()
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in slots] == ["0", "0", "1", "1"]
    assert {s.threads for s in slots} == {2} and slots[0].env["OMP_NUM_THREADS"] == "2"
    cpu = SubprocessExecutor({"gpus": [], "workers": 2}).slots()
    assert len(cpu) == 2 and {s.threads for s in cpu} == {4} and cpu[0].env["CUDA_VISIBLE_DEVICES"] == ""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in SubprocessExecutor({}).slots()] == ["3", "5"]


def test_dead_worker_is_recorded_failed_and_rerun_later(write_suite, tmp_path):
    """A worker killed mid-run leaves a 'failed' summary naming the signal; the next `zobench run` reruns it."""
    crash = tmp_path / "crash.sh"
    crash.write_text("#!/bin/sh\nkill -9 $$\n")
    crash.chmod(crash.stat().st_mode | stat.S_IEXEC)
    suite = {**SUITE, "grid": {**SUITE["grid"], "methods": [SUITE["grid"]["methods"][0]], "seeds": [0]},
             "executor": {"name": "subprocess", "options": {"workers": 1, "python": str(crash)}}}
    path = write_suite(suite)
    result = run_cli(path, tmp_path / "results")
    assert result.exit_code == 1, result.output  # a run that did not finish: exit 1, the grid still reported
    [summary] = [json.loads(p.read_text()) for p in (tmp_path / "results" / "fan").glob("*/summary.json")]
    assert summary["status"] == "failed" and "signal 9" in summary["error"]
    result = run_cli(path, tmp_path / "results", "--executor", "local")
    assert "1 to run" in result.output
    [summary] = [json.loads(p.read_text()) for p in (tmp_path / "results" / "fan").glob("*/summary.json")]
    assert summary["status"] == "done"


def test_slurm_array_script(write_suite, tmp_path, monkeypatch):
    """What would go to a real Slurm: one array job with the suite's partition, GPUs, time, parallelism, requeue."""
    pytest.importorskip("submitit")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\ncp \"$1\" {tmp_path}/sbatch.sh\necho 'Submitted batch job 4242'\n")
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    options = {"partition": "gpu", "gpus_per_node": 1, "cpus_per_task": 4, "timeout_min": 90,
               "array_parallelism": 3, "wait": False, "setup": ["module load cuda"]}
    path = write_suite({**SUITE, "executor": {"name": "slurm", "options": options}})
    result = run_cli(path, tmp_path / "results")
    assert result.exit_code == 0, result.output
    assert "submitted array job 4242: 4 runs" in result.output.replace("\n", " ")
    script = (tmp_path / "sbatch.sh").read_text()
    for line in ("#SBATCH --array=0-3%3", "#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --cpus-per-task=4", "#SBATCH --time=90", "#SBATCH --requeue", "module load cuda"):
        assert line in script, (line, script)


def test_executor_option_typos_name_file_and_line(write_suite, tmp_path):
    suite = dict(SUITE, executor={"name": "local", "subprocess": {"wrokers": 2}})
    with pytest.raises(UserError, match=r"suite\.yaml:\d+: executor\.subprocess\.wrokers: unknown field 'wrokers'; "
                                        r"did you mean 'workers'"):
        load_suite(write_suite(suite))
    with pytest.raises(UserError, match=r"suite\.yaml:\d+: executor\.slrum: unknown field.*did you mean 'slurm'"):
        load_suite(write_suite(dict(SUITE, executor={"name": "local", "slrum": {}})))
    with pytest.raises(UserError, match=r"executor\.name: unknown executor 'rey'"):
        load_suite(write_suite(dict(SUITE, executor={"name": "rey"})))
    with pytest.raises(UserError, match="given twice"):
        twice = {"name": "ray", "options": {"num_cpus": 2}, "ray": {"num_cpus": 1}}
        load_suite(write_suite(dict(SUITE, executor=twice)))
    result = run_cli(write_suite(SUITE), tmp_path, "--executor", "subproces")
    assert result.exit_code == 2 and "did you mean 'subprocess'" in result.output


def test_options_follow_the_engine_picked(write_suite):
    suite, _ = load_suite(write_suite(SUITE))
    assert suite.executor.options_for("local") == {"threads": 1}
    assert suite.executor.options_for("subprocess") == {"workers": 2, "threads": 1}
    plain, _ = load_suite(write_suite(dict(SUITE, executor={"name": "subprocess", "options": {"workers": 3}})))
    assert plain.executor.options_for("subprocess") == {"workers": 3} and plain.executor.options_for("ray") == {}


def test_run_held_by_another_process_is_waited_for_not_run_twice(write_suite, tmp_path, monkeypatch):
    """The pool's worker finds the run locked (exit 3), the executor waits for the holder in a second pass,
    and takes the holder's result instead of running the run again."""
    import threading

    from zobench import runner

    path = write_suite({**SUITE, "grid": {**SUITE["grid"], "methods": [SUITE["grid"]["methods"][0]], "seeds": [0]}})
    suite, _ = load_suite(path)
    [spec] = expand(suite, path)
    store = Store(tmp_path / "results", "fan")
    held, first_pass_over = threading.Event(), threading.Event()

    def holder() -> None:  # "another process": holds the lock, then runs the run itself
        with store.claim(spec.run_id) as mine:
            assert mine
            held.set()
            first_pass_over.wait(120)
            runner.run(spec, store)

    fan = SubprocessExecutor.fan

    def fan_and_signal(self, specs, store, wait):
        out = fan(self, specs, store, wait)
        if not wait:
            assert [s.get("held_elsewhere") for s in out] == [True]
            first_pass_over.set()
        return out

    monkeypatch.setattr(SubprocessExecutor, "fan", fan_and_signal)
    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(60)
    try:
        [summary] = SubprocessExecutor({"workers": 1, "threads": 1}).run([spec], store)
    finally:
        first_pass_over.set()
        thread.join(120)
    assert summary["status"] == "done" and summary["pid"] == os.getpid()  # the holder's run, not a second one
