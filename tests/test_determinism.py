"""Same spec and seed → identical curves and results on CPU, for every registered method.

Each method runs a shortened copy of one of its cells in suites/regression-cpu.yaml (the suite says
which tasks a method pairs with), twice, into two fresh folders; everything but wall-clock must match.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pandas as pd
import pytest

from zobench import registry, runner
from zobench.check import holds, is_timing, metrics_of
from zobench.cli import plan
from zobench.config import CheckSpec
from zobench.grid import RunSpec
from zobench.store import Store

SUITE = Path(__file__).resolve().parents[1] / "suites" / "regression-cpu.yaml"


@functools.cache
def _cells() -> dict[str, list[RunSpec]]:
    """Method name → its cells in the regression suite."""
    _, specs = plan(SUITE)
    out: dict[str, list[RunSpec]] = {}
    for spec in specs:
        out.setdefault(spec.method.name, []).append(spec)
    return out



def test_regression_suite_covers_every_method():
    missing = sorted(set(registry.methods.names()) - set(_cells()))
    assert not missing, f"add {missing} to {SUITE} (and rerun `zobench check ... --update --reason TEXT`)"


@pytest.mark.parametrize("method", registry.methods.names())
def test_same_spec_and_seed_give_identical_curves(method, tmp_path):
    if method not in _cells():
        pytest.fail(f"method '{method}' has no cell in {SUITE}; add it there")
    cells = _cells()[method]
    spec = next((s for s in cells if s.model.name != "none"), cells[0])  # a model cell exercises more
    spec = spec.model_copy(update={"settings": spec.settings.model_copy(update={"steps": 3, "eval_every": 3})})
    summaries, curves = [], []
    for attempt in ("a", "b"):
        store = Store(tmp_path / attempt, spec.suite)
        summaries.append(runner.run(spec, store))
        curves.append(pd.read_parquet(store.run_dir(spec.run_id) / "curve.parquet"))
    assert summaries[0].status == "done", summaries[0].outcome.error
    assert len(curves[0]) > 0
    cols = [c for c in curves[0] if not c.endswith("_s")]  # wall-clock columns differ, all else must not
    pd.testing.assert_frame_equal(curves[0][cols], curves[1][cols], check_exact=True)
    a, b = ({k: v for k, v in metrics_of(s, CheckSpec()).items() if not is_timing(k)} for s in summaries)
    assert a.keys() == b.keys()
    assert [k for k in a if not holds(a[k], b[k], None)] == []  # exact (NaN equals NaN: training-free runs)
