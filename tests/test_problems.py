"""The seed papers' problems: known optima are optima, and the Figure-2 suite reports trajectories."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from zobench import registry
from zobench.cli import app
from zobench.problems.attention_regression import AttentionRegressionParams
from zobench.problems.softmax_regression import SoftmaxRegression, SoftmaxRegressionParams, softmax_loss
from zobench.problems.test_functions import FUNCTIONS

CPU = torch.device("cpu")


def build(task: str, seed: int = 0, **params: object):
    return registry.tasks.get(task).build(params, None, CPU, seed)


# --------------------------------------------------------------------------- softmax regression
@pytest.mark.parametrize("reg", [0.0, 0.5])
def test_softmax_regression_optimum_is_exact(reg):
    problem = SoftmaxRegression(SoftmaxRegressionParams(d=12, n=24, reg=reg), seed=3)
    x_opt = problem.x_opt.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(softmax_loss(problem.A, problem.b, reg, x_opt), x_opt)
    assert grad.norm() < 1e-10
    if reg == 0:
        assert problem.optimum == 0.0 and float(softmax_loss(problem.A, problem.b, 0, problem.x_opt)) < 1e-30
    # nothing found from random starts goes below L*
    for seed in range(3):
        x = (torch.randn(12, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3).requires_grad_()
        opt = torch.optim.LBFGS([x], max_iter=200, tolerance_grad=1e-13, line_search_fn="strong_wolfe")

        def closure(x=x, opt=opt):
            opt.zero_grad()
            loss = softmax_loss(problem.A, problem.b, reg, x)
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            assert float(softmax_loss(problem.A, problem.b, reg, x)) - problem.optimum > -1e-12


def test_softmax_regression_gap_is_zero_at_the_optimum_and_positive_elsewhere():
    workload = build("softmax-regression", d=8, n=16, reg=0.2)
    assert workload.evaluate("dev")["loss_gap"] > 0
    with torch.no_grad():
        workload.module.x.copy_(workload.module.x_opt)
    assert abs(workload.evaluate("dev")["loss_gap"]) < 1e-15


# --------------------------------------------------------------------------- 2-D test functions
@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_test_functions_have_their_optimum(name):
    fn = FUNCTIONS[name]
    xy = torch.tensor(fn.optimum, dtype=torch.float64)
    assert float(fn.f(xy[0], xy[1])) == pytest.approx(0.0, abs=1e-12)
    gen = torch.Generator().manual_seed(0)
    pts = torch.empty(500, 2, dtype=torch.float64).uniform_(*fn.domain, generator=gen)
    assert (fn.f(pts[:, 0], pts[:, 1]) >= 0).all()  # all six are sums of squares / absolute values
    workload = build("test-function", function=name, start=fn.optimum)
    metrics = workload.evaluate("dev")
    assert metrics["distance_to_optimum"] == 0.0 and (metrics["x"], metrics["y"]) == fn.optimum


def test_rosenbrock_is_the_papers_printed_form():
    fn = FUNCTIONS["rosenbrock"]
    x, y = torch.tensor(4.0, dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64)  # x = y², y ≠ 1
    assert float(fn.f(x, y)) == pytest.approx(1.0)  # 100(x − y²)² + (1 − y)², not 100(y − x²)² + (1 − x)²


# --------------------------------------------------------------------------- attention regression
def test_attention_population_gap_is_zero_on_the_manifold_of_minima():
    workload = build("attention-regression", d=4, prompts=16, test_prompts=16, context=16)
    model = workload.module
    p = AttentionRegressionParams(d=4)
    eig = torch.logspace(0, -torch.log10(torch.tensor(p.condition)).item(), p.d, dtype=torch.float64)
    sigma_inv = torch.diag(eig.mean() / eig)
    with torch.no_grad():
        model.key.copy_(torch.eye(4, dtype=torch.float64) * 2)
        model.query.copy_(sigma_inv / (2 * 3.0))
        model.value.fill_(3.0)  # vΣ W_KᵀW_Q = I
    assert workload.evaluate("dev")["population_gap"] == pytest.approx(0.0, abs=1e-20)


def test_finite_context_prediction_tends_to_the_tilted_mean():
    """Large N, small tilt: v·Σ softmax·y ≈ v·wᵀΣ W x_q (the limit behind the population gap)."""
    torch.manual_seed(0)
    d, big_n = 3, 200_000
    w, xq = torch.randn(d, dtype=torch.float64), torch.randn(d, dtype=torch.float64)
    weights = torch.randn(d, d, dtype=torch.float64) * 0.2
    x = torch.randn(1, big_n, d, dtype=torch.float64)
    scores = x[0] @ (weights @ xq)
    pred = float((torch.softmax(scores, 0) * (x[0] @ w)).sum())
    assert pred == pytest.approx(float(w @ weights @ xq), abs=0.02)


def test_structure_aware_gd_beats_plain_gd_on_attention_regression():
    gaps = {}
    for init, method, lr in [("random", "fo-sgd", 0.3), ("spectral", "attention-pgd", 0.1)]:
        workload = build("attention-regression", init=init, prompts=64, test_prompts=64, context=128)
        cls = registry.methods.get(method)
        opt = cls(workload.trainable(), cls.Params(lr=lr), 0)
        everything = list(range(64))
        for _ in range(60):
            opt.step(lambda w=workload, idx=everything: w.loss(idx))
        gaps[method] = workload.evaluate("dev")["population_gap"]
    assert gaps["attention-pgd"] < 0.1 * gaps["fo-sgd"], gaps


def test_attention_pgd_refuses_other_tasks():
    from zobench.errors import UserError

    cls = registry.methods.get("attention-pgd")
    with pytest.raises(UserError, match="attention-regression"):
        cls([torch.nn.Parameter(torch.zeros(3))] * 3, cls.Params(), 0)


# --------------------------------------------------------------------------- Figure 2 through the CLI
def test_test_function_suite_reports_trajectories(write_suite, tmp_path):
    suite = {
        "name": "fig2-mini",
        "defaults": {"steps": 20, "eval_every": 1, "select": "last", "device": "cpu"},
        "grid": {
            "tasks": [{"name": "test-function", "function": "c", "label": "c"}],
            "methods": [{"name": "zo-sgd", "lr": 0.001, "label": "zo-sgd lr=0.001"},
                        {"name": "zo-sgd", "lr": 0.01, "label": "zo-sgd lr=0.01"},
                        {"name": "fo-adam", "lr": 0.1, "label": "fo-adam lr=0.1"}],
        },
    }
    result = CliRunner().invoke(app, ["run", str(write_suite(suite)), "--results", str(tmp_path / "results"),
                                      "--reports", str(tmp_path / "reports")])
    assert result.exit_code == 0, result.output
    out = tmp_path / "reports" / "fig2-mini"
    page = (out / "index.html").read_text()
    assert "Trajectories on ZO-AdaMU" in page and "final distance to the optimum" in page
    assert (out / "trajectories.png").stat().st_size > 10_000
    table = (out / "tables" / "trajectories.csv").read_text()
    assert "zo-sgd" in table and "fo-adam" in table and "lr=" not in table.split("\n")[1]  # grouped by method
    # the chosen learning rate is the one that ended closer
    summaries = [json.loads(p.read_text()) for p in (tmp_path / "results").rglob("summary.json")]
    dist = {(s["spec"]["task"]["label"], s["spec"]["method"]["label"]): s["test"]["distance_to_optimum"]
            for s in summaries}
    best_c = min(["zo-sgd lr=0.001", "zo-sgd lr=0.01"], key=lambda m: dist[("c", m)])
    zo_row = next(r for r in table.split("\n") if r.startswith("zo-sgd"))
    assert f"lr {best_c.split('=')[1]}" in zo_row.split(",")[1]  # column (c)
