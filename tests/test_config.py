"""Suite loading and grid expansion: bad input names file, line and field; nothing is run."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from zobench.cli import app
from zobench.config import load_suite
from zobench.errors import UserError
from zobench.grid import expand

GOOD = """\
name: t
defaults: {steps: 5}
grid:
  tasks: [softmax-regression]
  methods:
    - {name: zo-sgd, lr: 0.01}
    - {name: fo-adam, lr: 0.01}
  seeds: [0, 1]
"""


def test_good_suite_expands_with_stable_ids(write_suite):
    path = write_suite(GOOD)
    suite, lines = load_suite(path)
    specs = expand(suite, path, lines)
    assert len(specs) == 4
    assert [s.run_id for s in specs] == [s.run_id for s in expand(suite, path, lines)]
    assert len({s.spec_hash for s in specs}) == 4
    assert specs[0].method.params["eps"] == 1e-3  # defaults filled in, so a changed default changes the hash


@pytest.mark.parametrize("text, expected", [
    (GOOD.replace("zo-sgd", "zo-sdg"), [":6:", "grid.methods[0].name", "did you mean 'zo-sgd'"]),
    (GOOD.replace("lr: 0.01}", "lr: fast}", 1), [":6:", "grid.methods[0].lr", "fast"]),
    (GOOD.replace("steps: 5", "stepz: 5"), [":2:", "defaults.stepz", "did you mean 'steps'"]),
    (GOOD.replace("[softmax-regression]", "[sst3]"), [":4:", "grid.tasks[0].name", "did you mean 'sst2'"]),
    (GOOD.replace("grid:", "grid:\n  grid: 1\n  grid: 2"), [":5:", "duplicate key 'grid'"]),
    (GOOD.replace("{steps: 5}", "{steps: 5"), ["YAML error"]),
    ("", ["empty"]),
])
def test_bad_suites_name_file_line_and_field(write_suite, tmp_path, text, expected):
    path = write_suite(text)
    result = CliRunner().invoke(app, ["run", str(path), "--results", str(tmp_path / "results")])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert str(path) in message
    for part in expected:
        assert part in message
    assert not (tmp_path / "results").exists()


def test_task_without_model_is_an_error(write_suite):
    path = write_suite(GOOD.replace("[softmax-regression]", "[synthetic-sentiment]"))
    suite, lines = load_suite(path)
    with pytest.raises(UserError, match="needs a model"):
        expand(suite, path, lines)


def test_exclude_and_include(write_suite):
    text = GOOD + ("exclude:\n  - {method: fo-adam, seed: 1}\n"
                   "include:\n  - {method: {name: fo-sgd, lr: 0.1}, seeds: [7]}\n")
    path = write_suite(text)
    suite, lines = load_suite(path)
    specs = expand(suite, path, lines)
    got = sorted((s.method.label, s.seed) for s in specs)
    assert got == [("fo-adam", 0), ("fo-sgd", 7), ("zo-sgd", 0), ("zo-sgd", 1)]


def test_lm_eval_data_dir_is_relative_to_the_suite_file_and_defaults_to_its_data_dir(write_suite, tmp_path):
    grid = {"models": [{"name": "tiny", "config": {"model_type": "llama", "hidden_size": 16, "intermediate_size": 32,
                                                    "num_hidden_layers": 1, "num_attention_heads": 2}}],
            "tasks": [{"name": "synthetic-sentiment"}], "methods": [{"name": "fo-adam"}]}
    base = {"name": "lme", "data_dir": "data", "grid": grid}
    (tmp_path / "data").mkdir()
    inherit = write_suite({**base, "defaults": {"lm_eval": {"tasks": ["zobench_copa"]}}}, "a.yaml")
    own = write_suite({**base, "defaults": {"lm_eval": {"tasks": ["zobench_copa"], "data_dir": "elsewhere"}}}, "b.yaml")
    (a,), (b,) = (expand(*(lambda s: (s[0], p, s[1]))(load_suite(p))) for p in (inherit, own))
    assert a.settings.lm_eval.data_dir == str((tmp_path / "data").resolve())
    assert b.settings.lm_eval.data_dir == str((tmp_path / "elsewhere").resolve())
    assert a.run_id == b.run_id  # where data lives is not what the run is
