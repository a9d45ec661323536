"""The method family: exact restore, unbiased estimates of the right scale, progress, seeds, lean state."""

from __future__ import annotations

import math

import pytest
import torch

from zobench import registry
from zobench.errors import FieldError
from zobench.optim.zo import ZOMethod
from zobench.optim.zo_adamu import END, PHI, anneal

# qzo trains only the scales of quantized layers, which these plain networks lack: tests/test_qzo.py runs these checks
ZO = [n for n, cls in registry.methods.items() if issubclass(cls, ZOMethod) and n != "qzo"]
FO = [n for n, cls in registry.methods.items() if n.startswith("fo-")]


def make(name: str, params: list[torch.nn.Parameter], seed: int = 0, **hp: object):
    """A method with `hp` set without validation (so lr = 0 is possible here; users get lr > 0 enforced). ZO
    methods on the virtual engine unless `hp` says otherwise: θ bit-exact, which several tests here rely on."""
    cls = registry.methods.get(name)
    fields = cls.Params().model_dump()
    virtual = {"engine": "virtual"} if "engine" in fields else {}
    return cls(params, cls.Params.model_construct(**{**fields, **virtual, **hp}), seed)


def mlp(seed: int = 0) -> tuple[torch.nn.Module, callable]:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    return net, lambda: torch.nn.functional.cross_entropy(net(x), y)


def quadratic(d: int = 10, seed: int = 0) -> tuple[torch.nn.Parameter, callable, callable]:
    """L(θ) = ½ θᵀHθ + bᵀθ (float64) with its exact gradient."""
    gen = torch.Generator().manual_seed(seed)
    h = torch.linspace(1.0, 10.0, d, dtype=torch.float64)
    b = torch.randn(d, generator=gen, dtype=torch.float64)
    theta = torch.nn.Parameter(torch.randn(d, generator=gen, dtype=torch.float64))
    return theta, (lambda: 0.5 * (h * theta * theta).sum() + b @ theta), (lambda: h * theta.detach() + b)


# --------------------------------------------------------------------------- 1. exact restore
VARIANTS = [(n, {}) for n in ZO] + [
    ("zo-sgd", {"q": 3}), ("zo-sgd", {"direction": "sphere"}), ("zo-sgd", {"direction": "rademacher"}),
    ("zo-sgd", {"one_sided": True, "q": 2}), ("zo-adamu", {"t1": 1, "t2": 3, "t3": 4, "q": 2}),
    ("zo-sgd-mmt", {"weight_decay": 0.1}), ("hizoo", {"hessian_smooth": 0.5}), ("cge", {"q": 5}),
]


@pytest.mark.parametrize(("name", "hp"), VARIANTS, ids=[f"{n}{hp or ''}" for n, hp in VARIANTS])
def test_lr_zero_leaves_every_parameter_bit_identical(name, hp):
    net, loss_fn = mlp()
    before = [p.detach().clone() for p in net.parameters()]
    method = make(name, list(net.parameters()), lr=0.0, **hp)
    for _ in range(4):
        assert math.isfinite(method.step(loss_fn))
    for a, b in zip(before, net.parameters(), strict=True):
        assert torch.equal(a, b.detach()), f"{name} changed a parameter with lr = 0"


def takes_inplace(name: str) -> bool:
    cls = registry.methods.get(name)
    try:
        cls.check({**cls.Params().model_dump(), "engine": "inplace"})
    except FieldError:
        return False
    return "engine" in cls.Params.model_fields


INPLACE = [(n, {"engine": "inplace"}) for n in ZO if takes_inplace(n)] + [
    ("zo-sgd", {"engine": "inplace", "one_sided": True, "q": 2}), ("zo-sgd", {"engine": "inplace", "q": 3}),
    ("zo-sgd", {"engine": "inplace", "direction": "sphere"}),
]


@pytest.mark.parametrize(("name", "hp"), INPLACE, ids=[f"{n}{hp}" for n, hp in INPLACE])
def test_in_place_engine_restores_every_parameter_up_to_rounding(name, hp):
    """MeZO's way: θ += εz, −2εz, +εz comes back only up to rounding, but it does come back (every
    perturbation is undone, also where the restore waits for the update or no update follows)."""
    net, loss_fn = mlp()
    before = [p.detach().clone() for p in net.parameters()]
    method = make(name, list(net.parameters()), lr=0.0, **hp)
    for _ in range(4):
        assert math.isfinite(method.step(loss_fn))
    method.settle()  # the last step's restore waits for the next step's first pass
    for a, b in zip(before, net.parameters(), strict=True):
        torch.testing.assert_close(b.detach(), a, rtol=0, atol=1e-6)
    method.gradient_estimate(loss_fn)  # a probe with no update after it restores too
    for a, b in zip(before, net.parameters(), strict=True):
        torch.testing.assert_close(b.detach(), a, rtol=0, atol=1e-6)


def test_methods_with_their_own_queries_refuse_the_in_place_engine():
    refused = {n for n in ZO if "engine" in registry.methods.get(n).Params.model_fields and not takes_inplace(n)}
    assert {"hizoo", "cge", "forward-grad", "sparse-mezo"} <= refused
    assert takes_inplace("zo-sgd") and takes_inplace("zo-adamu")


def test_users_cannot_set_lr_zero():
    with pytest.raises(ValueError):
        registry.methods.get("zo-sgd").Params.model_validate({"lr": 0})


def test_forward_pass_over_the_in_place_sum_matches_mezo_on_a_transformer():
    """The virtual θ+εz the forward sees equals MeZO's in-place θ+εz (tied embeddings, norms, linears)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                   num_key_value_heads=2, vocab_size=64, tie_word_embeddings=True)
    model = transformers.LlamaForCausalLM(cfg)
    ids = torch.randint(0, 64, (2, 8))
    method = make("zo-sgd", list(model.parameters()))
    model.requires_grad_(False)
    before = [p.clone() for p in model.parameters()]
    virtual = method.evaluate(lambda: model(ids, labels=ids).loss, method.along(seed=7, scale=1e-2))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    for i, p in enumerate(model.parameters()):
        p.add_(method.direction(i, p, 7), alpha=1e-2)
    assert virtual == pytest.approx(float(model(ids, labels=ids).loss), rel=1e-6)


# --------------------------------------------------------------------------- 2. unbiased, right scale
@pytest.mark.parametrize(("name", "hp"), [
    ("zo-sgd", {}), ("zo-sgd", {"direction": "rademacher"}), ("zo-sgd", {"direction": "sphere"}),
    ("rge", {}), ("forward-grad", {}),
])
def test_mean_of_2000_estimates_is_the_gradient(name, hp):
    theta, loss_fn, grad = quadratic()
    method = make(name, [theta], q=2000, eps=1e-3, **hp)  # q queries: the estimate is their mean
    (est,) = method.gradient_estimate(loss_fn)
    true = grad()
    cosine = float(est @ true / (est.norm() * true.norm()))
    scale = float(est @ true / (true @ true))  # E[zzᵀ] = I: the projection on ∇L has coefficient 1
    assert cosine >= 0.95, cosine
    assert 0.9 <= scale <= 1.1, scale
    assert torch.equal(theta.detach(), quadratic()[0].detach())  # estimating moved nothing


def test_a_non_differentiable_objective_is_optimised():
    """Minus accuracy (a step function) as the objective: ZO only needs the scalar."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=gen)
    y = (x @ torch.tensor([1.0, -2.0, 0.5, 1.5, -1.0]) > 0).float()
    w = torch.nn.Parameter(torch.tensor([-1.0, 1.0, 0.0, 0.0, 0.0]))

    def minus_accuracy() -> float:
        return -float(((x @ w > 0).float() == y).float().mean())

    start = minus_accuracy()
    method = make("zo-sgd", [w], lr=2.0, eps=0.3, q=4)
    for _ in range(100):
        method.step(minus_accuracy)
    assert minus_accuracy() < start - 0.3, (start, minus_accuracy())


# --------------------------------------------------------------------------- 3. progress within a budget
# The budget: 150 steps; the quadratic (d = 20, κ = 10) must lose 30 % of its loss, softmax regression 20 % of L − L*.
BUDGET = {  # method: (hyper-parameters on the quadratic, on softmax regression)
    "zo-sgd": ({"lr": 0.01}, {"lr": 10.0}), "zo-sgd-sign": ({"lr": 0.03}, {"lr": 0.03}),
    "zo-sgd-mmt": ({"lr": 0.001}, {"lr": 3.0}), "zo-sgd-cons": ({"lr": 0.01}, {"lr": 10.0}),
    "zo-adam": ({"lr": 0.1}, {"lr": 0.03}), "zo-adamm": ({"lr": 0.1}, {"lr": 0.03}),
    "zo-adamu": ({"lr": 0.01, "t1": 20, "t2": 100, "t3": 150}, {"lr": 10.0, "t1": 20, "t2": 100, "t3": 150}),
    "zo-adamu-code": ({"lr": 0.01, "t1": 20, "t2": 100, "t3": 150}, {"lr": 10.0, "t1": 20, "t2": 100, "t3": 150}),
    "forward-grad": ({"lr": 0.01}, {"lr": 10.0}), "hizoo": ({"lr": 0.01, "hessian_smooth": 0.01}, {"lr": 10.0}),
    "lozo": ({"lr": 0.01}, {"lr": 10.0}), "subzero": ({"lr": 0.01}, {"lr": 10.0}),
    "sparse-mezo": ({"lr": 0.01, "sparsity": 0.1}, {"lr": 10.0, "sparsity": 0.25}),
    "cge": ({"lr": 0.002, "q": 4}, {"lr": 1.0, "q": 8}), "rge": ({"lr": 0.01}, {"lr": 10.0}),
    "fo-sgd": ({"lr": 0.05}, {"lr": 10.0}), "fo-adam": ({"lr": 0.1}, {"lr": 0.1}),
    "fo-adamw": ({"lr": 0.1}, {"lr": 0.1}), "fo-adamax": ({"lr": 0.1}, {"lr": 0.1}),
    "zo-ranksgd": ({"lr": 0.1, "eps": 0.01, "q": 6}, {"lr": 0.3, "eps": 0.01, "q": 6}),
}


def test_every_method_has_a_budget():
    assert set(BUDGET) == set(ZO) | set(FO)


@pytest.mark.parametrize("name", sorted(BUDGET))
def test_every_method_lowers_a_quadratic_and_softmax_regression(name):
    theta, loss_fn, _ = quadratic(d=20)
    start = float(loss_fn())
    method = make(name, [theta], **BUDGET[name][0])
    for _ in range(150):
        method.step(loss_fn)
    assert float(loss_fn()) < 0.7 * start, f"{name}: quadratic {start:.3g} → {float(loss_fn()):.3g}"

    workload = registry.tasks.get("softmax-regression").build({"d": 16, "n": 32}, None, torch.device("cpu"), 0)
    gap0 = workload.evaluate("dev")["loss_gap"]
    method = make(name, workload.trainable(), **BUDGET[name][1])
    for _ in range(150):
        method.step(lambda: workload.loss(None))
    gap = workload.evaluate("dev")["loss_gap"]
    assert gap < 0.8 * gap0, f"{name}: softmax regression L − L* {gap0:.3g} → {gap:.3g}"


@pytest.mark.parametrize(("name", "hp", "passes"), [
    ("zo-sgd", {}, 2), ("zo-sgd", {"q": 4}, 8), ("zo-sgd", {"q": 4, "one_sided": True}, 5), ("hizoo", {}, 3),
    ("zo-sgd-cons", {}, 5), ("forward-grad", {"q": 2}, 2), ("cge", {}, 1 + 10), ("cge", {"q": 3}, 4),
])
def test_forward_passes_per_step(name, hp, passes):
    theta, loss_fn, _ = quadratic()
    method = make(name, [theta], **hp)
    method.step(loss_fn)
    assert (method.forward_passes, method.backward_passes) == (passes, 0)


# --------------------------------------------------------------------------- 4. seeds
SEEDED = [(n, {}) for n in ZO] + [("zo-sgd", {"rng": "counter"}), ("zo-sgd", {"rng": "counter", "engine": "inplace"}),
                                   ("zo-adam", {"rng": "counter", "direction": "rademacher"})]


@pytest.mark.parametrize(("name", "hp"), SEEDED, ids=[f"{n}{hp or ''}" for n, hp in SEEDED])
def test_same_seed_same_result_other_seed_different(name, hp):
    def run(seed: int) -> list[torch.Tensor]:
        net, loss_fn = mlp()
        method = make(name, list(net.parameters()), seed=seed, lr=0.05, q=2 if name != "cge" else 5, **hp)
        for _ in range(3):
            method.step(loss_fn)
        return [p.detach().clone() for p in net.parameters()]

    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


# --------------------------------------------------------------------------- 5. state memory
def _held_tensors(obj: object, params: list[torch.Tensor]) -> list[torch.Tensor]:
    """Every tensor an object keeps (through attributes, lists, dicts), the parameters excluded."""
    seen, out, skip = set(), [], {id(p) for p in params}
    stack = [v for k, v in vars(obj).items() if k != "params"]
    while stack:
        v = stack.pop()
        if id(v) in seen or id(v) in skip:
            continue
        seen.add(id(v))
        if isinstance(v, torch.Tensor):
            out.append(v)
        elif isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list | tuple):
            stack.extend(v)
    return out


STATE = {"zo-sgd-mmt": 1, "zo-adam": 2, "zo-adamm": 3, "zo-adamu": 1, "zo-adamu-code": 1, "hizoo": 1,
         "cge": 1}  # parameter-sized tensors per parameter


@pytest.mark.parametrize("name", ZO)
def test_state_bytes_are_everything_the_method_keeps(name):
    net, loss_fn = mlp()
    params = list(net.parameters())
    method = make(name, params, lr=0.01, q=2 if name != "cge" else 5)
    for _ in range(2):
        method.step(loss_fn)
    held = _held_tensors(method, params)
    assert method.state_bytes() == sum(t.numel() * t.element_size() for t in held)
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    if name == "subzero":  # the bases only: (m + n)·r per matrix (r ≤ 8 here)
        assert method.state_bytes() == sum((p.shape[0] + p.shape[1]) * min(8, *p.shape) * p.element_size()
                                           for p in params if p.dim() == 2)
    else:
        assert method.state_bytes() == STATE.get(name, 0) * param_bytes


def test_zo_sgd_keeps_no_parameter_sized_tensor():
    net, loss_fn = mlp()
    params = list(net.parameters())
    method = make("zo-sgd", params, q=4, direction="sphere")
    for _ in range(3):
        method.step(loss_fn)
    assert _held_tensors(method, params) == [] and method.state_bytes() == 0


# --------------------------------------------------------------------------- ZO-AdaMU's schedule
def test_zo_adamu_schedule_follows_eq7():
    t1, t2, t3 = 100, 800, 1000
    assert anneal(1, t1, t2, t3, 1.0) == anneal(99, t1, t2, t3, 1.0) == 1.0  # warm-up: plain SPSA
    assert anneal(t1, t1, t2, t3, 1.0) == 1.0  # continuous at T1
    values = [anneal(t, t1, t2, t3, 1.0) for t in range(t1, t2 + 1, 50)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))  # α anneals down on [T1, T2)
    assert anneal(t2, t1, t2, t3, 1.5) == anneal(t3, t1, t2, t3, 1.5)  # held after T2


@pytest.mark.parametrize(("t1", "t2", "t3"), [(100, 800, 1000), (1024, 76_000, 95_000), (4, 16, 20)])
def test_zo_adamu_paper_schedule_ends_at_the_texts_values(t1, t2, t3):
    """The text fixes α = 0.5, β1 = 0.9, β2 = 0.01 from T2 on; the way there is continuous and one-way
    (also where Eq. 7's angle passes π before T2, as with the authors' 1024 / 0.8 T / T)."""
    for key, phi in PHI.items():
        values = [anneal(t, t1, t2, t3, phi, END[key]) for t in range(1, t3 + 1)]
        assert values[:t1 - 1] == [1.0] * (t1 - 1)
        assert values[t2 - 1:] == pytest.approx([END[key]] * (t3 - t2 + 1), rel=1e-12)
        assert all(a >= b for a, b in zip(values, values[1:], strict=False)), key
        assert max(abs(a - b) for a, b in zip(values, values[1:], strict=False)) < 0.5, key
    assert (END["alpha"], END["beta1"], END["beta2"]) == (0.5, 0.9, 0.01)
    with pytest.raises(ValueError, match="pole"):
        registry.methods.get("zo-adamu").Params.model_validate({"t1": 10, "t2": 20, "t3": 100})
