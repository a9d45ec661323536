"""The smoke suite (suites/smoke-lowest.yaml) runs to the end: what `tox -e lowest` checks on the lowest
versions pyproject.toml allows, and every test run checks on the current ones."""

from __future__ import annotations

import math

from conftest import REPO

from zobench.cli import plan
from zobench.runner import run
from zobench.store import Store


def test_smoke_suite_runs_every_cell(tmp_path):
    suite, specs = plan(REPO / "suites" / "smoke-lowest.yaml")
    assert {s.method.name for s in specs} >= {"zo-sgd", "fo-adam", "linear-probe"}
    assert {s.scheme.name for s in specs} == {"full", "lora"}
    store = Store(tmp_path, suite.name)
    for spec in specs:
        record = run(spec, store)
        assert record.status == "done", (spec.run_id, record.outcome.error)
        assert math.isfinite(record.metrics.test_metric)
        if spec.method.name == "fo-adam":  # the float16 OPT trains in mixed precision, not in float16
            want = "float16" if spec.model.label == "tiny-opt-fp16" else None
            assert record.cost.precision["autocast"] == want, spec.run_id
            assert math.isfinite(record.metrics.final_train_loss)
