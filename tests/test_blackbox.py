"""The black-box methods: ZO-RankSGD's rank-based step and its oracles, CBO through CBXpy, nevergrad's optimisers.

Golden tests replay each method's update rule written out here (the paper's equation, or CBXpy's documented
CBO step) on the test's own copy of the numbers, to a tolerance of float64's epsilon times the values' scale.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from zobench import registry
from zobench.errors import FieldError
from zobench.optim import zo_rank
from zobench.problems.test_functions import ALL_FUNCTIONS as FUNCTIONS

pytest.importorskip("cbx")
pytest.importorskip("nevergrad")

EPS = torch.finfo(torch.float64).eps
TOL = 1e3 * EPS  # relative to the values' scale: a few hundred ulps over one step's sums


def workload(function: str = "c", seed: int = 0, task: str = "test-function", **params: object):
    params = {"function": function, **params} if task == "test-function" else params
    return registry.tasks.get(task).build(params, None, torch.device("cpu"), seed)


def method(name: str, w, seed: int = 0, **hp: object):  # noqa: ANN001, ANN201
    cls = registry.methods.get(name)
    checked = cls.Params.model_validate(hp)
    cls.check(checked.model_dump(mode="json"))
    m = cls(w.trainable(), checked, seed)
    w.module.requires_grad_(cls.needs_grad)
    return m


def run(name: str, steps: int, seed: int = 0, w=None, **hp: object) -> tuple[np.ndarray, object]:  # noqa: ANN001
    w = w or workload()
    m = method(name, w, seed, **hp)
    for _ in range(steps):
        m.step(lambda: w.loss(None))
    m.settle()
    return torch.cat([p.detach().flatten() for p in m.params]).numpy().copy(), m


def close(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    scale = max(float(np.abs(expected).max()), 1.0)
    err = float(np.abs(actual - expected).max())
    assert err <= TOL * scale, f"{what}: off by {err:.3g} (scale {scale:.3g})"


# -- ZO-RankSGD -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("m", "k", "weights"), [(6, None, "paper"), (7, 3, "paper"), (6, 2, "code")])
def test_ranksgd_step_is_the_papers_update(m: int, k: int | None, weights: str) -> None:
    """One step equals arXiv 2303.03751 Alg. 1 written out: candidates θ + μξ_i ranked by loss (top k),
    g = (1/|E|) Σ_{(better i, worse j)} (ξ_j − ξ_i), θ ← θ − η·g; `code`: the released optimizer.py:121's
    weight m − 2r on the r-th ranked candidate (−k on the unranked, /|E| as its line 127)."""
    lr, mu, seed = 0.05, 0.1, 3
    w = workload("rosenbrock")
    fn = FUNCTIONS["rosenbrock"]
    rank = method("zo-ranksgd", w, seed, lr=lr, eps=mu, q=m, k=k, weights=weights)
    theta0 = w.module.xy.detach().clone()
    rank.step(lambda: w.loss(None))
    seeds = [int(s) for s in np.random.default_rng(seed).integers(0, 2**62, size=m)]  # the method's query seeds
    xis = [rank.direction(0, w.module.xy, s) for s in seeds]
    losses = [float(fn.f(*(theta0 + mu * xi))) for xi in xis]
    kk = k or m
    order = sorted(range(m), key=lambda i: losses[i])[:kk]
    pairs = [(order[a], order[b]) for a in range(kk) for b in range(a + 1, kk)]
    pairs += [(i, j) for i in order for j in range(m) if j not in order]
    assert len(pairs) == kk * (kk - 1) // 2 + kk * (m - kk)
    if weights == "paper":
        g = sum((xis[j] - xis[i] for i, j in pairs), torch.zeros(2, dtype=torch.float64)) / len(pairs)
    else:
        up = sum(((m - 2 * r) * xis[i] for r, i in enumerate(order)), torch.zeros(2, dtype=torch.float64))
        up -= kk * sum((xis[j] for j in range(m) if j not in order), torch.zeros(2, dtype=torch.float64))
        g = -up / (kk * (kk - 1) / 2 + kk * (m - kk))
    close(w.module.xy.detach().numpy(), (theta0 - lr * g).numpy(), f"zo-ranksgd m={m} k={k} {weights}")
    assert rank.forward_passes == m  # one forward per candidate, no L(θ)


def test_ranking_weights_are_net_wins() -> None:
    """For a full ranking the coefficients are (m − 1 − 2r)/|E| and sum to zero (the paper's estimator is
    unbiased in the mean direction); the code's weights add one per ranked candidate."""
    m = 5
    edges = zo_rank.ranking_edges([2, 0, 4, 1, 3], m)
    c = zo_rank.coefficients(edges, m)
    want = np.zeros(m)
    for r, i in enumerate([2, 0, 4, 1, 3]):
        want[i] = (m - 1 - 2 * r) / (m * (m - 1) / 2)
    np.testing.assert_allclose(c, want, rtol=0, atol=10 * EPS)
    assert abs(c.sum()) <= 10 * EPS
    np.testing.assert_allclose(zo_rank.coefficients(edges, m, [2, 0, 4, 1, 3]) - c, 1 / len(edges), atol=10 * EPS)


def test_oracles() -> None:
    """The noisy judge with error 0 is the exact ranking; the pairwise oracle flips a pair with probability p."""
    rng = np.random.default_rng(0)
    losses = list(rng.normal(size=8))
    exact = zo_rank.LossRanking(3, 0.0)(losses, rng)
    assert exact == zo_rank.NoisyRanking(3, 0.0)(losses, np.random.default_rng(1))
    assert set(exact) == set(zo_rank.ranking_edges(sorted(range(8), key=losses.__getitem__)[:3], 8))
    p, n = 0.3, 4000
    pairwise = zo_rank.PairwisePreference(8, p)
    judge = np.random.default_rng(2)
    wrong = sum(losses[b] > losses[w] for _ in range(n) for b, w in pairwise(losses, judge))
    trials = 4 * n
    assert abs(wrong / trials - p) <= 5 * math.sqrt(p * (1 - p) / trials)


def test_ranksgd_rejects_inconsistent_settings() -> None:
    cls = registry.methods.get("zo-ranksgd")
    base = cls.Params.model_validate({}).model_dump(mode="json")
    for bad, field in [({"k": 11}, "k"), ({"oracle": "pairwise", "q": 5}, "q"), ({"error": 0.2}, "error"),
                       ({"one_sided": True}, "one_sided"), ({"engine": "inplace"}, "engine")]:
        with pytest.raises(FieldError) as e:
            cls.check({**base, **bad})
        assert e.value.field == field


# -- CBO ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("noise", ["isotropic", "anisotropic"])
def test_cbo_step_is_the_consensus_update(noise: str) -> None:
    """One step equals CBO written out: v = Σ x_i e^{−α f_i} / Σ e^{−α f_i}; x_i ← x_i − λ dt (x_i − v)
    + σ √dt ‖x_i − v‖ ξ_i (isotropic) or σ √dt (x_i − v) ⊙ ξ_i (anisotropic), ξ from cbx's sampler
    (numpy's default_rng(seed)); θ is left at v."""
    n, dt, lam, sigma, alpha, r, seed = 7, 0.1, 0.8, 1.3, 0.2, 2.0, 5  # α small: v is a real average
    w = workload("rastrigin")
    fn = FUNCTIONS["rastrigin"]
    start = w.module.xy.detach().numpy().copy()
    cbo = method("cbo", w, seed, particles=n, dt=dt, lamda=lam, sigma=sigma, alpha=alpha, init_radius=r,
                 noise=noise)
    x = start + np.random.default_rng([seed, 0xCB0]).uniform(-r, r, size=(n, 2))
    cbo.step(lambda: w.loss(None))
    f = np.array([float(fn.f(*torch.from_numpy(xi))) for xi in x])
    weights = np.exp(-alpha * (f - f.min()))
    v = (weights[:, None] * x).sum(0) / weights.sum()
    xi = np.random.default_rng(seed).standard_normal((1, n, 2))[0]
    drift = x - v
    spread = np.linalg.norm(drift, axis=1, keepdims=True) * xi if noise == "isotropic" else drift * xi
    close(cbo.dynamic.x[0], x - lam * dt * drift + sigma * math.sqrt(dt) * spread, f"cbo particles ({noise})")
    close(w.module.xy.detach().numpy(), v, "cbo consensus")
    assert cbo.forward_passes == n


def test_cbo_state_is_its_arrays() -> None:
    _, cbo = run("cbo", 3, particles=10)
    assert cbo.state_bytes() >= 3 * 10 * 2 * 8  # particles, their previous positions and the drift, float64
    assert cbo.state_bytes() == sum(v.nbytes for v in vars(cbo.dynamic).values() if isinstance(v, np.ndarray))


# -- every black-box method --------------------------------------------------------------------------------
CASES = [("zo-ranksgd", {"lr": 0.01, "eps": 0.01, "q": 6}), ("zo-ranksgd", {"lr": 0.01, "eps": 0.01, "q": 6,
          "oracle": "noisy-ranking", "error": 0.2}), ("cbo", {"particles": 8}), ("ng-cma", {}),
         ("ng-oneplusone", {}), ("nevergrad", {"optimizer": "TwoPointsDE"})]


@pytest.mark.parametrize(("name", "hp"), CASES)
def test_seeded(name: str, hp: dict) -> None:
    """Same seed, same θ; another seed, another θ."""
    a, _ = run(name, 12, 0, **hp)
    b, _ = run(name, 12, 0, **hp)
    c, _ = run(name, 12, 1, **hp)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize(("name", "hp", "per_step"), [("zo-ranksgd", {"q": 6}, 6), ("cbo", {"particles": 8}, 8),
                                                       ("ng-cma", {}, 1)])
def test_evaluations_counted(name: str, hp: dict, per_step: int) -> None:
    calls = []
    w = workload()
    m = method(name, w, **hp)
    for _ in range(4):
        m.step(lambda: calls.append(1) or w.loss(None))
    assert m.forward_passes == len(calls) == 4 * per_step


def test_ranksgd_has_no_state_and_nevergrad_measures_its_own() -> None:
    assert run("zo-ranksgd", 2, q=4)[1].state_bytes() == 0
    assert run("ng-cma", 5)[1].state_bytes() > 0


def test_blackbox_methods_descend() -> None:
    """On the convex (c) every method ends at least twice nearer the optimum than its start, 3.2 away (CBO's
    particles start within ±3 of it, so the optimum is inside their cloud)."""
    start = float(np.linalg.norm(FUNCTIONS["c"].start))
    cbo = {"particles": 10, "dt": 0.1, "init_radius": 3, "sigma": 0.5, "alpha": 10}
    for name, hp in [("zo-ranksgd", {"lr": 0.02, "eps": 0.01, "q": 8}), ("cbo", cbo), ("ng-oneplusone", {})]:
        theta, _ = run(name, 100, **hp)
        assert np.linalg.norm(theta) < 0.5 * start, name


def test_nevergrad_optimizer_names_are_checked() -> None:
    cls = registry.methods.get("nevergrad")
    with pytest.raises(FieldError, match="did you mean 'CMA'"):
        cls.check({"optimizer": "cma", "sigma": 1.0, "budget": None})


def test_new_test_functions() -> None:
    for name in ("rastrigin", "ackley"):
        fn = FUNCTIONS[name]
        zero = torch.zeros((), dtype=torch.float64)
        assert abs(float(fn.f(zero, zero))) <= 100 * EPS
        assert float(fn.f(*torch.tensor(fn.start, dtype=torch.float64))) > 1.0
    one = torch.ones((), dtype=torch.float64)
    assert abs(float(FUNCTIONS["rastrigin"].f(one, 0 * one)) - 1.0) <= 100 * EPS  # a local minimum of value 1


# -- report ------------------------------------------------------------------------------------------------
def test_report_section(tmp_path) -> None:  # noqa: ANN001
    """A tiny suite through the runner: the page gets the comparison table, the curves against evaluations and
    the robustness table; the best configuration per method is the one with the lowest median final distance."""
    import yaml

    from zobench import api

    def rank(p: float) -> dict:
        return {"name": "zo-ranksgd", "q": 4, "eps": 0.01, "lr": 0.05, "oracle": "noisy-ranking", "error": p,
                "label": f"zo-ranksgd noisy p={p}", "settings": {"steps": 10, "eval_every": 5}}

    suite = {"name": "bb-tiny", "defaults": {"eval_at_start": True, "select": "last", "device": "cpu"},
             "grid": {"tasks": [{"name": "test-function", "function": "c"}],
                      "methods": [{"name": "zo-sgd", "lr": 0.001, "label": "zo-sgd lr=0.001",
                                   "settings": {"steps": 20, "eval_every": 10}},
                                  {"name": "zo-sgd", "lr": 0.03, "label": "zo-sgd lr=0.03",
                                   "settings": {"steps": 20, "eval_every": 10}},
                                  {"name": "cbo", "particles": 4, "settings": {"steps": 10, "eval_every": 5}},
                                  rank(0.0), rank(0.3)],
                      "seeds": [0]}}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    frame = api.run(path, tmp_path / "results", report=True, reports=tmp_path / "reports")
    assert set(frame["status"]) == {"done"}
    page = (tmp_path / "reports" / "bb-tiny" / "index.html").read_text()
    assert "Black-box methods at equal function evaluations" in page
    assert "ZO-RankSGD with a judge who errs" in page
    assert (tmp_path / "reports" / "bb-tiny" / "blackbox.png").stat().st_size > 0
    table = pd.read_csv(tmp_path / "reports" / "bb-tiny" / "tables" / "blackbox.csv", index_col=0)
    zo = frame[frame["method"].str.startswith("zo-sgd")].sort_values("test_metric")
    assert zo["method"].iloc[0].split("lr=")[1] in table.loc["zo-sgd"].iloc[0]  # the better learning rate
    assert list(table.index) == ["cbo", "zo-ranksgd", "zo-sgd"]
