"""Federated ZO: the problems, FedZO's round and FZooS's surrogates and correction, seeds, state, refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from zobench import registry
from zobench.cli import app
from zobench.optim.federated import FedZO, FZooS, RandomFeatures, fit_gp
from zobench.problems.federated import macro_precision, non_iid_shards

EPS = np.finfo(np.float64).eps
CPU = torch.device("cpu")


def build(task: str, task_params: dict, name: str, hp: dict, seed: int = 0):  # noqa: ANN201
    workload = registry.tasks.get(task).build(task_params, None, CPU, seed)
    cls = registry.methods.get(name)
    method = cls(workload.trainable(), cls.Params.model_validate(hp), seed)
    method.prepare(workload)
    return workload, method


QUAD = {"function": "quadratic", "dim": 3, "clients": 2, "heterogeneity": 0.5}


# -- problems --------------------------------------------------------------------------------------------------
def test_clients_are_heterogeneous_and_global_is_their_mean() -> None:
    workload, _ = build("federated-function", {**QUAD, "clients": 4}, "fedzo", {})
    module = workload.module
    scales, shifts = module.scales.numpy(), module.shifts.numpy()
    assert np.allclose(scales.mean(0), 1.0, atol=64 * EPS) and np.allclose(shifts.mean(0), 0.0, atol=64 * EPS)
    assert np.ptp(shifts, axis=0).min() > 0  # each coordinate's optimum differs between clients
    theta = module.theta.detach().numpy()
    by_hand = [np.mean((scales[i] * (theta - shifts[i])) ** 2) for i in range(4)]
    assert np.allclose(module.client_values().detach().numpy(), by_hand, rtol=64 * EPS)
    assert float(workload.loss([0, 1, 2, 3]).detach()) == pytest.approx(np.mean(by_hand), rel=64 * EPS)
    assert workload.evaluate("dev")["global_loss"] == pytest.approx(np.mean(by_hand), rel=64 * EPS)


def test_macro_precision_is_sklearns() -> None:
    from sklearn.metrics import precision_score

    rng = np.random.default_rng(0)
    for _ in range(20):
        true, pred = rng.integers(0, 5, 30), rng.integers(0, 4, 30)
        ours = float(macro_precision(torch.tensor(pred), torch.tensor(true), 5))
        assert ours == pytest.approx(precision_score(true, pred, average="macro", zero_division=0), abs=16 * EPS)


def test_non_iid_shards_cover_every_example_once() -> None:
    labels = np.repeat(np.arange(5), 20)
    shards = non_iid_shards(labels, 5, 0.4, np.random.default_rng(0))
    assert len(shards) == 5
    assert sorted(np.concatenate(shards).tolist()) == list(range(100))
    assert all(len(set(labels[s])) <= 2 for s in shards)  # int(0.4·5) = 2 classes each


# -- FedZO -----------------------------------------------------------------------------------------------------
def test_fedzo_round_is_the_papers_equation() -> None:
    """One round by hand: per client K steps x ← x − lr·(d/(qμ)) Σ_j [f_i(x + μv_j) − f_i(x)] v_j with v_j the
    run generator's normalised Gaussians, then the server's average."""
    hp = {"q": 2, "mu": 0.01, "lr": 0.1, "local_steps": 2, "keep_better": False}
    workload, method = build("federated-function", QUAD, "fedzo", hp, seed=3)
    scales, shifts = workload.module.scales.numpy(), workload.module.shifts.numpy()
    theta = workload.module.theta.detach().numpy().copy()

    def f(i: int, x: np.ndarray) -> float:
        return float(np.mean((scales[i] * (x - shifts[i])) ** 2))

    rng = np.random.default_rng([3, 0xFED0])
    ends = []
    for i in range(2):
        x = theta.copy()
        for _ in range(2):
            v = rng.standard_normal((2, 3))
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            g = 3 / (2 * 0.01) * sum((f(i, x + 0.01 * vj) - f(i, x)) * vj for vj in v)
            x = x - 0.1 * g
        ends.append(x)
    expected = (ends[0] + ends[1]) / 2

    loss = method.step(lambda: torch.zeros(()))
    scale = max(np.abs(theta).max(), 1.0) * max(f(0, theta), f(1, theta))
    assert np.allclose(method.theta, expected, rtol=0, atol=1e3 * EPS * scale / 0.01)
    assert np.allclose(workload.module.theta.detach().numpy(), method.theta)  # θ holds the server's point
    assert loss == pytest.approx((f(0, theta) + f(1, theta)) / 2, rel=64 * EPS)
    assert method.forward_passes == 2 * 2 * (2 + 1)  # clients × K × (q + 1)
    assert method.rounds == 1


def test_keep_better_keeps_theta_and_counts_its_queries() -> None:
    hp = {"q": 2, "lr": 1e3, "local_steps": 1, "keep_better": True}  # a step this large overshoots
    workload, method = build("federated-function", QUAD, "fedzo", hp)
    theta = method.theta.copy()
    method.step(lambda: torch.zeros(()))
    assert np.array_equal(method.theta, theta)
    assert method.forward_passes == 2 * (2 + 1) + 2  # the local steps, and F at the proposal (one per client)


# -- FZooS -----------------------------------------------------------------------------------------------------
def _smooth(x: np.ndarray) -> np.ndarray:
    return np.sin(x[:, 0]) + 0.5 * x[:, 1] ** 2 + 0.3 * x[:, 0] * x[:, 1]


def _smooth_grad(x: np.ndarray) -> np.ndarray:
    return np.array([np.cos(x[0]) + 0.3 * x[1], x[1] + 0.3 * x[0]])


def test_rff_surrogate_gradient_approaches_the_true_gradient() -> None:
    x0 = np.array([0.3, -0.4])
    rff = RandomFeatures(2, 2000, 1.0, seed=0)
    errors = []
    for n in (5, 20, 80):
        points = x0 + np.random.default_rng(n).uniform(-0.5, 0.5, (n, 2))
        nu, _ = rff.fit(points, _smooth(points))
        errors.append(np.linalg.norm(rff.grad(nu, x0) - _smooth_grad(x0)) / np.linalg.norm(_smooth_grad(x0)))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-3


def test_gp_gradient_is_its_means_derivative_and_approaches_the_true_one() -> None:
    x0 = np.array([0.3, -0.4])
    points = x0 + np.random.default_rng(0).uniform(-0.5, 0.5, (80, 2))
    gp = fit_gp(points, _smooth(points))

    def mean(z: np.ndarray) -> float:
        return float(gp.kernel(z[None], gp.x)[0] @ gp.alpha * gp.span + gp.low)

    h = 1e-5
    numeric = np.array([(mean(x0 + h * e) - mean(x0 - h * e)) / (2 * h) for e in np.eye(2)])
    assert np.allclose(gp.grad_mean(x0), numeric, atol=1e-6)
    assert np.linalg.norm(gp.grad_mean(x0) - _smooth_grad(x0)) < 1e-2 * np.linalg.norm(_smooth_grad(x0))
    # the gradient is known best where the data are: variance grows with the distance from them
    far = gp.grad_variance(np.array([x0, x0 + 3.0]))
    assert far[0] < far[1]


def test_fzoos_correction_by_hand() -> None:
    """After a round the local gradient is ∇μ_i(x) + γ/(t+1)·(Σ_j w_j ∇f̂_j(x) − ∇f̂_i(x)), f̂_j = φ·ν_j the
    clients' RFF surrogates; the surrogates' gradients taken here by central differences of φ·ν."""
    hp = {"local_steps": 2, "rff_components": 300, "server_active": 5, "active": 2, "gamma": 0.7}
    workload, method = build("federated-function", QUAD, "fzoos", hp)
    method.step(lambda: torch.zeros(()))
    assert method.client_nu is not None and method.global_nu is not None
    x = method.theta + 0.05
    gp = fit_gp(*method.nearest(1, x, 150))

    def surrogate_grad(nu: np.ndarray) -> np.ndarray:
        h = 1e-5
        return np.array([(method.rff.features((x + h * e)[None])[0] - method.rff.features((x - h * e)[None])[0]) @ nu
                         / (2 * h) for e in np.eye(3)])

    global_grad = sum(0.5 * surrogate_grad(nu) for nu in method.client_nu)
    for t in (0, 2):
        expected = gp.grad_mean(x) + 0.7 / (t + 1) * (global_grad - surrogate_grad(method.client_nu[1]))
        scale = max(np.abs(nu).sum() for nu in method.client_nu)
        assert np.allclose(method.local_gradient(1, gp, x, t), expected, rtol=0, atol=1e-8 * scale)


def test_fzoos_counts_its_queries_and_state() -> None:
    """Round 1's queries: the initial box, then per client the start, K iterates, `active` per inner step,
    the server's proposal (keep_better) and `server_active`; every query archived once."""
    hp = {"local_steps": 3, "rff_components": 200, "active": 2, "server_active": 4, "init_queries": 5}
    workload, method = build("federated-function", QUAD, "fzoos", hp)
    assert np.array_equal(workload.module.theta.detach().numpy(), method.start)  # the initial queries leave θ₀
    method.step(lambda: torch.zeros(()))
    per_client = 5 + 1 + 3 + 2 * 2 + 1 + 4
    assert method.forward_passes == 2 * per_client
    moved = not np.array_equal(method.theta, method.start)
    archived = [len(xs) for xs in method.archive_x]
    assert archived == [per_client - (0 if moved else 1)] * 2
    d, m = 3, 200
    expected = d * 8 + 2 * 8 + sum(archived) * (d + 1) * 8 + (d * m + m) * 8 + 3 * m * 8
    assert method.state_bytes() == expected
    _, fedzo = build("federated-function", QUAD, "fedzo", {"q": 2})
    fedzo.step(lambda: torch.zeros(()))
    assert fedzo.state_bytes() == d * 8 + 2 * 8  # θ and the clients' values at it


# -- seeds -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("task", "params", "name", "hp"), [
    ("federated-function", QUAD, "fedzo", {"q": 3, "local_steps": 2}),
    ("federated-metric", {"classes": 3, "features": 2, "per_class": 20}, "fedzo", {"q": 3, "local_steps": 2}),
    ("federated-function", QUAD, "fzoos", {"local_steps": 2, "rff_components": 100, "server_active": 3}),
])
def test_same_seed_same_numbers(task: str, params: dict, name: str, hp: dict) -> None:
    def trajectory(seed: int) -> list[float]:
        workload, method = build(task, params, name, hp, seed)
        return [method.step(lambda: torch.zeros(())) for _ in range(2)] + list(method.theta)

    assert trajectory(0) == trajectory(0)
    assert trajectory(0) != trajectory(1)


# -- planning --------------------------------------------------------------------------------------------------
def _suite(tmp_path, tasks: list[dict], methods: list[dict], models: list[dict] | None = None):  # noqa: ANN001, ANN202
    grid = {"tasks": tasks, "methods": methods, "seeds": [0]}
    if models:
        grid["models"] = models
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({"name": "fed-plan", "defaults": {"steps": 2, "device": "cpu"}, "grid": grid}))
    return path


TINY = {"name": "tiny", "config": {"model_type": "llama", "hidden_size": 16, "intermediate_size": 32,
                                   "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2,
                                   "max_position_embeddings": 64}}


@pytest.mark.parametrize("method", ["cbo", "ng-cma", "fzoos"])
def test_population_methods_refused_on_model_tasks(tmp_path, method: str) -> None:  # noqa: ANN001
    path = _suite(tmp_path, [{"name": "sst2"}], [{"name": method}], [TINY])
    result = CliRunner().invoke(app, ["validate", str(path)])
    text = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "suite.yaml" in text and f"'{method}'" in text and "N × d" in text and "exclude" in text


def test_federated_methods_refused_on_other_tasks(tmp_path) -> None:  # noqa: ANN001
    path = _suite(tmp_path, [{"name": "test-function", "function": "c"}], [{"name": "fedzo"}])
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and "federated-function" in result.output


def test_population_methods_refuse_a_huge_d_at_build() -> None:
    from zobench.errors import UserError

    big = torch.nn.Parameter(torch.zeros(FZooS.max_dim + 1, dtype=torch.float64))
    with pytest.raises(UserError, match="above its limit"):
        FedZO([big], FedZO.Params(), 0)


def test_report_section(tmp_path) -> None:  # noqa: ANN001
    """A tiny suite through the runner: the curves record one row per round with the queries so far, and the page
    gets the federated table (mean ± std over seeds) and the loss-against-queries-and-rounds figure."""
    import pandas as pd

    from zobench import api

    suite = {"name": "fed-tiny", "defaults": {"eval_at_start": True, "eval_every": 1, "steps": 2, "select": "last",
                                              "device": "cpu"},
             "grid": {"tasks": [{"name": "federated-function", **QUAD}],
                      "methods": [{"name": "fedzo", "q": 2, "local_steps": 2},
                                  {"name": "fzoos", "local_steps": 2, "rff_components": 50, "server_active": 3}],
                      "seeds": [0, 1]}}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    frame = api.run(path, tmp_path / "results", report=True, reports=tmp_path / "reports")
    assert set(frame["status"]) == {"done"}
    curve = pd.read_parquet(next((tmp_path / "results").rglob("*fedzo*s0*/curve.parquet")))
    assert list(curve["step"]) == [0, 1, 2]
    # round 1: F(θ₀) (one query per client), K·q + K − 1 local queries per client, the proposal; round 2 reuses
    # the values at the accepted proposal (or at the kept θ) as its start: N·K·(q + 1)
    first = 2 + 2 * (2 * 2 + 1) + 2
    assert list(curve["forward_passes"]) == [0, first, first + 2 * 2 * (2 + 1)]
    page = (tmp_path / "reports" / "fed-tiny" / "index.html").read_text()
    assert "FZooS against FedZO" in page and "global loss against queries and against rounds" in page
    table = pd.read_csv(tmp_path / "reports" / "fed-tiny" / "tables" / "federated.csv", index_col=0)
    assert list(table.index) == ["fedzo", "fzoos"] and "±" in table.iloc[0, 0]
