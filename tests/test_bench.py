"""`zobench bench`: structure of the table and its ratios (no timing assertions), the two losses, MeZO's step."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from zobench.bench import (
    OURS,
    SAME,
    SAME_LOSS,
    TIME_MODES,
    MeZOReference,
    bench,
    build_subject,
    compiled_modes,
    format_table,
)
from zobench.cli import app


@pytest.fixture(scope="module")
def tiny_result() -> dict:
    return bench("tiny-opt", batch=4, seq=16, repeats=1, threads=1, memory_modes=("inference", "zo-sgd"))


def test_bench_table_and_ratios(tiny_result: dict) -> None:
    r = tiny_result
    assert set(r["time"]) == set(TIME_MODES)
    assert all(v["median_s"] > 0 and v["runs"] == 1 for v in r["time"].values())
    assert r["shape"] == [4, 16] and r["params"] > 0
    assert {"zo-sgd / F", "mezo-reference / F", "fo-adam / F", "mezo-reference / zo-sgd",
            "zo-sgd rss / inference"} <= set(r["ratios"])
    assert all(math.isfinite(v) and v > 0 for v in r["ratios"].values())
    for mode in ("inference", "zo-sgd"):
        assert r["memory"][mode]["peak"]["rss"] > 100 * 2**20  # a whole interpreter with torch in it
        assert r["memory"][mode]["sources"]["rss"]
    text = format_table(r)
    table, same = text.split("\n\n")[0].splitlines(), text.split("\n\n")[1].splitlines()
    assert table[0].startswith("model tiny-opt:")
    assert table[1].split() == ["mode", "median", "s", "/", "F", "peak", "RSS", "MB", "/", "inf"]
    rows = {line.split()[0]: line.split() for line in table[2:]}
    assert set(rows) == set(TIME_MODES) | {"inference"}
    assert rows["forward"][2] == "1.00" and rows["inference"][4] == "1.000"
    assert rows["fo-adam"][3] == "-"  # no memory probe asked for it: shown as missing, not as zero
    spec = importlib.util.spec_from_file_location("targets", Path(__file__).parents[1] / "benchmarks/targets.py")
    targets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(targets)
    assert targets.OURS == OURS
    target_table = targets.target_lines(r)
    assert target_table[0].startswith("targets: ")
    checked = {line.split()[0]: line.split()[1:] for line in target_table[1:-1]}  # our modes against the targets
    assert set(checked) == set(OURS)
    assert checked["zo-sgd"][:2] == [f"{r['ratios']['zo-sgd / F']:.2f}F", "met" if r["ratios"]["zo-sgd / F"] <= 2.2
                                     else "MISSED"]
    assert checked["zo-sgd"][-1] in ("met", "MISSED")  # its memory was probed
    assert checked["zo-sgd-inplace"][-1] == "-"  # not probed: shown as missing, neither met nor missed
    assert target_table[-1].startswith("all three met by: ")
    # the same-loss block: each of our steps on MeZO's loss, over F-full, and MeZO's step over it
    t = {m: v["median_s"] for m, v in r["time"].items()}
    assert same[0].startswith("same loss") and "zo-sgd's defaults: engine" in same[0]
    same_rows = {line.split()[0]: line.split()[1:] for line in same[2:]}
    assert set(same_rows) == set(OURS)
    for m in OURS:
        assert same_rows[m][0] == f"{t[m + SAME_LOSS] / t['forward-full']:.2f}"
        assert same_rows[m][1] == f"{t['mezo-reference'] / t[m + SAME_LOSS]:.2f}"
        assert same_rows[m][2] == f"{t[m] / t['forward']:.2f}"


def test_our_loss_equals_the_full_logits_loss() -> None:
    """Keeping only the logits the loss needs changes the cost, not the number."""
    subject = build_subject("tiny-opt", 4, 16, torch.device("cpu"), torch.float32)
    with torch.inference_mode():
        assert float(subject.loss()) == pytest.approx(float(subject.full_loss()), rel=1e-5)


def test_mezo_reference_is_algorithm_1() -> None:
    """After a step θ' = θ − η·g·z with g the central difference at θ ± εz, z = torch.normal after manual_seed."""
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    x, y = torch.randn(8, 5), torch.randn(8, 3)

    def loss() -> torch.Tensor:
        return ((model(x) - y) ** 2).mean()

    before = [p.detach().clone() for p in model.parameters()]
    ref = MeZOReference(model, lr=0.1, eps=1e-3, seed=3)
    seed = int(__import__("numpy").random.RandomState(3).randint(1000000000))
    torch.manual_seed(seed)
    zs = [torch.normal(mean=0, std=1, size=p.size()) for p in before]
    with torch.no_grad():
        for p, b, z in zip(model.parameters(), before, zs, strict=True):
            p.copy_(b + 1e-3 * z)
        plus = float(loss())
        for p, b, z in zip(model.parameters(), before, zs, strict=True):
            p.copy_(b - 1e-3 * z)
        minus = float(loss())
        for p, b in zip(model.parameters(), before, strict=True):
            p.copy_(b)
    seen = ref.step(loss)
    g = (plus - minus) / 2e-3
    # float32 bounds, not one CPU's digits: each loss may differ by a few ulps between the reference's path
    # (θ+εz−2εz, rounded twice) and ours (θ−εz), and between CPUs' summation orders; dividing by 2ε carries
    # that into g, and the update carries lr·|z|·δg into θ (about 1e-5 seen on an AMD EPYC; 1.1e-4 here)
    ulp, ulps = torch.finfo(torch.float32).eps, 4
    g_error = ulps * ulp * max(abs(plus), abs(minus)) / 1e-3
    assert seen == pytest.approx(plus, rel=ulps * ulp)
    for p, b, z in zip(model.parameters(), before, zs, strict=True):
        atol = 0.1 * float(z.abs().max()) * g_error + 2 * ulp * float(b.abs().max())
        torch.testing.assert_close(p.detach(), b - 0.1 * g * z, rtol=0, atol=atol)


def test_cli_bench_verb(tmp_path) -> None:
    out = tmp_path / "bench.json"
    res = CliRunner().invoke(app, ["bench", "--model", "tiny-opt", "--batch", "4", "--seq", "16", "--repeats", "1",
                                   "--threads", "1", "--no-memory", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "mezo-reference" in res.output and "targets:" not in res.output
    assert json.loads(out.read_text())[0]["model"] == "tiny-opt"
    bad = CliRunner().invoke(app, ["bench", "--model", "gpt-9", "--no-memory"])
    assert bad.exit_code == 2 and "unknown bench model 'gpt-9'" in bad.output


def test_compiled_bench_runs_the_in_place_modes_through_the_compiled_body() -> None:
    from torch._dynamo.utils import counters

    torch._dynamo.reset()  # graphs another test compiled would be reused, uncounted
    counters.clear()
    r = bench("tiny-opt", batch=4, seq=16, repeats=1, threads=1, memory=False, compile=True,
              modes=("forward", "zo-sgd", "zo-sgd-inplace-rademacher", "mezo-reference"))
    assert r["compile"] and set(r["time"]) == {"forward", "zo-sgd-inplace-rademacher", "mezo-reference"}
    assert counters["stats"]["unique_graphs"]  # the forwards ran compiled
    assert "compiled" in format_table(r).splitlines()[0]
    assert compiled_modes(OURS) == tuple(m for m in OURS if "inplace" in m)
    assert compiled_modes(SAME) == tuple(m for m in SAME if "inplace" in m)
