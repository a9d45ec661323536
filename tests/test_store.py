"""The run record (store.RunRecord): typed in Python, flat and unchanged on disk, versioned; and the one-way
flow: `zobench run` writes the suite's settings through the store, the report only reads them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from zobench.check import metrics_of
from zobench.cli import app
from zobench.config import CheckSpec
from zobench.store import RECORD_FORMAT, RunRecord, Store, load_records, read_record

AXES = {axis: {"name": "x", "label": "x", "params": {}} for axis in ("model", "task", "method", "scheme")}

# a format-1 summary.json as zobench wrote it before the record was typed (no `format`), cut to one of each kind
OLD = {
    "run_id": "t-x-zo-full-s0_abc", "spec_hash": "abc", "suite": "s", "seed": 0,
    "spec": {**AXES, "suite": "s", "seed": 0, "settings": {"steps": 4, "batch_size": 2}, "sweep": {}},
    "env": {"device": "cpu", "host": "h", "python": "3.11.7", "torch_threads": 1, "packages": {"torch": "2.13.0"},
            "git_revision": "7c05ae8", "cuda_visible_devices": None},
    "attempt": 1, "pid": 123, "metric": "accuracy", "higher_is_better": True,
    "test": {"accuracy": 0.75, "loss": 0.5}, "test_metric": 0.75, "best_dev": {"accuracy": 0.5, "loss": 0.6},
    "best_step": 4, "initial_dev_metric": None, "final_train_loss": float("nan"), "steps": 4,
    "forward_passes": 8, "backward_passes": 0, "train_s": 0.01, "eval_s": 0.002, "median_step_s": 0.002,
    "inference_forward_s": 0.001, "state_bytes": 0, "trainable_params": 33, "info": {"train": 16},
    "status": "done", "wall_s": 0.4,
    "memory": {"rss": {"bytes": 100, "source": "kernel VmHWM", "baseline_bytes": 90, "loaded_bytes": 95}},
    "memory_by_phase": {"setup": {"rss": 95}, "train": {"rss": 100}},
    "phases": {"step": {"total_s": 0.01, "median_s": 0.002, "laps": 4}},
    "files": {"spec.yaml": "0" * 64},
}


def _same(a: object, b: object) -> bool:
    """Equal, with NaN equal to NaN (JSON's NaN round-trips as a float NaN)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_an_old_summary_loads_typed_and_writes_back_the_same_keys_and_values(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(OLD))
    record, problem = read_record(path)
    assert problem is None and record is not None
    assert record.format == 1  # no `format` key: the first version
    assert record.status == "done" and record.metrics.test_metric == 0.75 and record.cost.forward_passes == 8
    assert record.timing.phases["step"].laps == 4 and record.timing.wall_s == 0.4
    assert record.memory.rss.bytes == 100 and record.memory.nvml is None  # each source by its name
    assert list(record.memory.sources()) == ["rss"]
    assert record.memory_by_phase["train"].rss == 100 and record.env.git_revision == "7c05ae8"
    assert _same(record.flat(), OLD)  # nothing renamed, nothing added, nothing dropped


def test_a_record_from_a_newer_zobench_is_named_in_one_line(tmp_path, capsys):
    folder = tmp_path / "s" / "r"
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({**OLD, "format": RECORD_FORMAT + 1}))
    record, problem = read_record(folder / "summary.json")
    assert record is None
    assert f"from a newer zobench (record format {RECORD_FORMAT + 1}; this one reads up to {RECORD_FORMAT})" in problem
    assert load_records(tmp_path / "s") == []
    err = capsys.readouterr().err
    assert len([line for line in err.splitlines() if "newer zobench" in line]) == 1, err


def test_an_off_schema_field_is_named_by_its_key_in_the_file(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text(json.dumps({**OLD, "forward_passes": "eight"}))
    record, problem = read_record(path)
    assert record is None and "(forward_passes: " in problem  # the key as the file has it, not its group


def test_the_store_stamps_the_format_checksums_the_files_and_refuses_a_wrong_type(tmp_path):
    store = Store(tmp_path, "s")
    store.write_spec("r", {"seed": 0})
    record = RunRecord.model_validate({k: v for k, v in OLD.items() if k != "files"})
    with pytest.raises(ValidationError):
        record.cost.steps = "four"  # a field filled with the wrong type fails where it is filled
    assert store.write_record("r", record)
    on_disk = json.loads((tmp_path / "s" / "r" / "summary.json").read_text())
    assert on_disk["format"] == RECORD_FORMAT and set(on_disk["files"]) == {"spec.yaml"}
    assert _same({k: v for k, v in on_disk.items() if k not in ("format", "files")},
                 {k: v for k, v in OLD.items() if k != "files"})
    assert store.record("r").cost.steps == 4


def test_a_run_that_failed_before_it_was_scored_has_no_score_keys():
    record = RunRecord(run_id="r", spec_hash="abc", suite="s", seed=0, spec={**AXES}, outcome={"status": "failed",
                                                                                               "error": "boom"})
    record.timing.wall_s = 1.0  # a default group changed in place is not set on the record...
    assert "wall_s" not in record.flat()
    record.timing = record.timing  # ...until it is assigned
    flat = record.flat()
    assert flat["status"] == "failed" and flat["wall_s"] == 1.0
    assert not {"test_metric", "metric", "steps", "test"} & set(flat)


def test_check_compares_the_fields_the_record_marks():
    """What `zobench check` compares is declared on the record's fields; this is the set it has always been."""
    got = metrics_of(RunRecord.model_validate(OLD), CheckSpec())
    assert set(got) == {
        "status", "metric", "spec_hash", "steps", "best_step", "forward_passes", "backward_passes", "state_bytes",
        "trainable_params", "test_metric", "initial_dev_metric", "final_train_loss",
        "wall_s", "train_s", "eval_s", "median_step_s", "inference_forward_s",
        "test.accuracy", "test.loss", "best_dev.accuracy", "best_dev.loss"}


# --------------------------------------------------------------------------- one-way flow
SUITE = {
    "name": "oneway",
    "description": "A suite whose page says what it is.",
    "regenerates": "mezo-table22",
    "defaults": {"steps": 4, "eval_every": 2},
    "grid": {"tasks": [{"name": "softmax-regression", "n": 16, "d": 8}], "methods": [{"name": "zo-sgd", "lr": 0.05}]},
}
STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")  # when the page was generated


def _page(reports: Path) -> dict[str, str]:
    """Every file of the suite's report, the generation time blanked."""
    return {str(p.relative_to(reports)): STAMP.sub("<time>", p.read_text(errors="replace"))
            for p in sorted(reports.rglob("*")) if p.is_file()}


def test_run_no_report_then_report_gives_the_page_run_builds(write_suite, tmp_path):
    path, results = write_suite(SUITE), tmp_path / "results"
    runner = CliRunner()
    first = runner.invoke(app, ["run", str(path), "--results", str(results), "--reports", str(tmp_path / "a")])
    assert first.exit_code == 0, first.output
    (results / "oneway" / "suite.json").unlink()  # the next run writes it again, before its runs start
    second = runner.invoke(app, ["run", str(path), "--results", str(results), "--no-report"])
    assert second.exit_code == 0, second.output
    assert json.loads((results / "oneway" / "suite.json").read_text())["regenerates"] == "mezo-table22"
    before = {p: p.stat().st_mtime_ns for p in (results / "oneway").rglob("*")}
    later = runner.invoke(app, ["report", str(results / "oneway"), "--reports", str(tmp_path / "b")])
    assert later.exit_code == 0, later.output
    assert {p: p.stat().st_mtime_ns for p in (results / "oneway").rglob("*")} == before  # the report wrote nothing
    a, b = _page(tmp_path / "a"), _page(tmp_path / "b")
    assert a.keys() == b.keys() and a == b
    assert "A suite whose page says what it is." in a["oneway/index.html"]
    assert json.loads(a["oneway/meta.json"])["regenerates"] == "mezo-table22"


def test_a_run_that_fails_after_its_task_is_built_still_names_its_metric(write_suite, tmp_path, monkeypatch):
    """The failed run lands in its task's column of the tables (the runner's values come back as returns)."""
    from zobench.config import load_suite
    from zobench.grid import expand
    from zobench.optim.base import Method
    from zobench.runner import run

    def broken(self, module):
        raise RuntimeError("boom")

    monkeypatch.setattr(Method, "match_model", broken)
    path = write_suite(SUITE)
    suite, lines = load_suite(path)
    (spec,) = expand(suite, path, lines)
    record = run(spec, Store(tmp_path / "results", "oneway"))
    assert record.status == "failed" and record.outcome.error == "RuntimeError: boom"
    assert record.metrics.metric is not None and record.metrics.test_metric is None
    flat = json.loads((tmp_path / "results" / "oneway" / spec.run_id / "summary.json").read_text())
    assert flat["metric"] == record.metrics.metric and "test_metric" not in flat and flat["wall_s"] > 0
