"""Sweeps in a suite, and grids that would silently drop or merge runs: refused with file, line and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from zobench.check import cell_key
from zobench.cli import app
from zobench.config import Component, load_suite
from zobench.grid import expand

REPO = Path(__file__).resolve().parents[1]

BASE = """\
name: t
defaults: {steps: 5}
grid:
  tasks: [softmax-regression]
  methods:
    - {name: zo-sgd, label: mezo, lr: {sweep: [0.01, 0.001]}, eps: {sweep: [0.01, 0.001, 0.0001]}}
    - {name: fo-adam, lr: 0.01, settings: {batch_size: {sweep: [2, 4]}}}
  seeds: [0, 1]
"""


def _expand(write_suite, text: str):
    path = write_suite(text)
    suite, lines = load_suite(path)
    return expand(suite, path, lines)


def test_sweep_expands_every_point_under_one_label(write_suite):
    specs = _expand(write_suite, BASE)
    mezo = [s for s in specs if s.method.label == "mezo"]
    assert len(mezo) == 2 * 3 * 2  # lr × eps × seeds
    assert {(s.method.params["lr"], s.method.params["eps"]) for s in mezo} == {
        (lr, eps) for lr in (0.01, 0.001) for eps in (0.01, 0.001, 0.0001)}
    assert {s.cell for s in mezo} == {("none", "softmax-regression", "mezo", "full")}  # one tuning group
    assert mezo[0].sweep == {"method.lr": 0.01, "method.eps": 0.01}
    adam = [s for s in specs if s.method.label == "fo-adam"]
    assert sorted({s.settings.batch_size for s in adam}) == [2, 4]
    assert adam[0].sweep == {"method.settings.batch_size": 2}
    ids = [s.run_id for s in specs]
    assert len(set(ids)) == len(ids) == 16
    assert any(i.startswith("softmax-regression-none-mezo-full-lr=0.01-eps=0.001-s1_") for i in ids)
    assert [s.run_id for s in _expand(write_suite, BASE)] == ids  # stable


def test_list_valued_parameter_is_not_a_sweep_and_can_be_swept(write_suite):
    text = BASE.replace("    - {name: fo-adam, lr: 0.01, settings: {batch_size: {sweep: [2, 4]}}}\n", "")
    tiny = ("{name: tiny, config: {model_type: llama, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, "
            "num_attention_heads: 2, num_key_value_heads: 2, max_position_embeddings: 128}}")
    text = text.replace("tasks: [softmax-regression]", f"tasks: [synthetic-sentiment]\n  models:\n    - {tiny}")
    plain = text.replace("{name: zo-sgd, label: mezo, lr: {sweep: [0.01, 0.001]}, eps: {sweep: [0.01, 0.001, 0.0001]}}",
                         "zo-sgd")
    plain += "  schemes:\n    - {name: lora, target_modules: [q_proj, v_proj]}\n"
    specs = _expand(write_suite, plain)
    assert [s.scheme.params["target_modules"] for s in specs] == [["q_proj", "v_proj"]] * 2
    assert all(s.sweep == {} for s in specs)
    swept = plain.replace("target_modules: [q_proj, v_proj]", "target_modules: {sweep: [[q_proj, v_proj], [q_proj]]}")
    specs = _expand(write_suite, swept)
    assert sorted(map(tuple, (s.scheme.params["target_modules"] for s in specs))) == [
        ("q_proj",), ("q_proj",), ("q_proj", "v_proj"), ("q_proj", "v_proj")]
    assert len({s.run_id for s in specs}) == 4
    assert any("-target-modules=q-proj-v-proj-s0_" in s.run_id for s in specs)  # "_", "+": "-"


def test_suites_without_sweeps_keep_their_run_ids():
    """The regression reference is keyed on these ids (with the spec hash as the last part)."""
    path = REPO / "suites" / "regression-cpu.yaml"
    suite, lines = load_suite(path)
    specs = expand(suite, path, lines)
    reference = json.loads((REPO / "baselines" / "reference" / "regression-cpu.json").read_text())["runs"]
    assert all(s.sweep == {} for s in specs)
    got = {cell_key(s.run_id): s.spec_hash for s in specs}
    stored = {key: (entry.get("spec_hash") if isinstance(entry, dict) else None) for key, entry in reference.items()}
    assert set(got) == set(stored)
    hashes = {k: v for k, v in stored.items() if v}
    assert hashes and all(got[k] == v for k, v in hashes.items())


@pytest.mark.parametrize("replace, expected", [
    # malformed sweeps
    (("lr: {sweep: [0.01, 0.001]}", "lr: {sweep: [0.01, 0.001], step: 2}"), [":6:", "grid.methods[0].lr", "one key"]),
    (("lr: {sweep: [0.01, 0.001]}", "lr: {sweep: []}"), [":6:", "grid.methods[0].lr.sweep", "non-empty list"]),
    (("lr: {sweep: [0.01, 0.001]}", "lr: {sweep: 0.01}"), [":6:", "grid.methods[0].lr.sweep", "non-empty list"]),
    (("lr: {sweep: [0.01, 0.001]}", "lr: {sweep: [0.01, 0.01]}"), [":6:", "swept twice"]),
    (("lr: {sweep: [0.01, 0.001]}", "lr: {sweep: [0.01, fast]}"), [":6:", "grid.methods[0].lr", "fast"]),
    (("{batch_size: {sweep: [2, 4]}}", "{batch_size: {sweep: [2, 0]}}"),
     [":7:", "grid.methods[1].settings.batch_size", "greater than 0"]),
    # an exclude rule naming what is not in the grid, or matching nothing
    (("  seeds: [0, 1]\n", "  seeds: [0, 1]\nexclude:\n  - {method: mezzo}\n"),
     [":10:", "exclude[0].method", "'mezzo'", "mezo"]),
    (("  seeds: [0, 1]\n", "  seeds: [0, 1]\nexclude:\n  - {method: [mezo, fo-adamw]}\n"),
     [":10:", "exclude[0].method[1]", "'fo-adamw'"]),
    (("  seeds: [0, 1]\n", "  seeds: [0, 1]\nexclude:\n  - {seed: 2}\n"), [":10:", "exclude[0].seed", "no seed 2"]),
    (("  seeds: [0, 1]\n", "  seeds: [0, 1]\nexclude:\n  - {model: tiny-opt}\n"), [":10:", "exclude[0].model"]),
    (("  seeds: [0, 1]\n", "  seeds: [0, 1]\nexclude:\n  - {method: mezo, seed: 7}\ninclude:\n"
                           "  - {method: fo-adam, seeds: [7]}\n"),
     [":10:", "exclude[0]", "matches no run"]),
    # two labels that map to one run id
    (("{name: fo-adam, lr: 0.01, settings: {batch_size: {sweep: [2, 4]}}}",
      "{name: zo-sgd, label: 'zo sgd', lr: 0.01}\n    - {name: zo-sgd, label: 'zo/sgd', lr: 0.01}"),
     [":8:", "grid.methods[2]", "'zo/sgd'", "'zo sgd'", "one run id"]),
    # an include entry reusing a grid label with other parameters
    (("  seeds: [0, 1]\n", "  seeds: [0, 1]\ninclude:\n  - {method: {name: fo-adam, lr: 0.5}}\n"),
     [":10:", "include[0].method", "'fo-adam'", "grid.methods[1]", "lr: 0.5 vs 0.01", "sweep"]),
    (("  seeds: [0, 1]\n", "  seeds: [0, 1]\ninclude:\n  - {method: {name: zo-sgd, label: mezo, lr: 0.01, eps: 0.01,"
                           " q: 2}}\n"),
     [":10:", "include[0].method", "'mezo'", "q: 2 vs 1"]),
])
def test_wrong_grids_are_refused_with_file_line_field(write_suite, tmp_path, monkeypatch, replace, expected):
    monkeypatch.chdir(tmp_path)  # a run that is not refused must not write into the checkout
    old, new = replace
    assert old in BASE
    path = write_suite(BASE.replace(old, new, 1))
    for args in (["run", str(path), "--results", "results", "--reports", "reports"], ["validate", str(path)]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, result.output
        message = " ".join(result.output.split())
        assert str(path) in message
        for part in expected:
            assert part in message, (part, message)
    assert not (tmp_path / "results").exists() and not (tmp_path / "reports").exists()


def test_include_repeating_a_grid_cell_exactly_is_one_run(write_suite):
    specs = _expand(write_suite, BASE + "include:\n  - {method: {name: fo-adam, lr: 0.01, settings: "
                                       "{batch_size: {sweep: [2, 4]}}}}\n")
    assert len(specs) == 16


def test_include_may_add_a_sweep_point_to_a_grid_label(write_suite):
    text = BASE + "include:\n  - {method: {name: zo-sgd, label: mezo, lr: {sweep: [0.1]}, eps: {sweep: [0.01]}}}\n"
    specs = _expand(write_suite, text)
    points = {tuple(sorted(s.sweep.items())) for s in specs if s.method.label == "mezo"}
    assert (("method.eps", 0.01), ("method.lr", 0.1)) in points and len(points) == 7


@pytest.mark.parametrize("name", ["mezo-opt13b", "mezo-roberta", "zo-bench-opt1.3b", "zo-adamu-opt13b",
                                  "zo-adamu-roberta", "mezo-table1-cpu"])
def test_paper_suites_expand_to_the_grid_size_their_comment_states(name, monkeypatch):
    """The hub check is skipped (the models are not cached here); everything else is planned as `validate`."""
    import re

    from zobench.models import hf

    monkeypatch.setattr(hf, "_hub_offline", lambda: False)
    path = REPO / "suites" / f"{name}.yaml"
    stated = re.findall(r"= (\d+) runs", path.read_text())
    assert stated, f"{path} states no grid size"
    suite, lines = load_suite(path)
    specs = expand(suite, path, lines)
    assert len(specs) == int(stated[-1])
    assert any(s.sweep for s in specs)


def test_paper_grids_are_the_papers():
    def swept(name: str, label: str) -> dict:
        path = REPO / "suites" / f"{name}.yaml"
        suite, _ = load_suite(path)
        comps = [m for m in suite.grid.methods if m.display == label]
        comps += [Component.model_validate(e["method"]) for e in suite.include
                  if isinstance(e.get("method"), dict) and e["method"].get("label") == label]
        return {k: v["sweep"] for k, v in {**comps[0].params, **comps[0].settings}.items() if isinstance(v, dict)}

    assert swept("mezo-opt13b", "mezo") == {"lr": [1e-6, 1e-7]}  # MeZO Table 16
    assert swept("mezo-opt13b", "mezo-lora") == {"lr": [1e-4, 5e-5]}
    assert swept("mezo-opt13b", "mezo-prefix") == {"lr": [1e-2, 1e-3]}
    assert swept("mezo-opt13b", "ft") == {"lr": [1e-5, 5e-5, 8e-5]}
    assert swept("zo-bench-opt1.3b", "zo-sgd") == {"lr": [1e-4, 1e-5, 1e-6, 1e-7, 1e-8], "eps": [1e-3, 1e-4, 1e-5]}
    assert swept("mezo-roberta", "mezo") == {"lr": [1e-7, 1e-6, 1e-5]}
    assert swept("mezo-roberta", "ft") == {"lr": [1e-5, 3e-5, 5e-5], "batch_size": [2, 4, 8]}
