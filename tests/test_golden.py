"""Golden tests: each method's steps equal its reference implementation's update rule, written out here.

A few steps on a small float64 problem with injected directions: the method is run as a subclass whose
`noise` returns numbers this test drew (keyed by query seed, parameter and draw order), so the test knows
every z the method used and replays the reference's rule (from the authors' code, cited per test) on its
own copy of θ. Agreement is to a few float64 ulps scaled by the values; a wrong scale, a missing bias
correction, a swapped β or a different order of operations moves θ by far more.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from zobench import registry
from zobench.optim.zo import ZOMethod
from zobench.report import figure2

DT = torch.float64
TOL = 1e3 * torch.finfo(DT).eps  # relative: a few hundred ulps of float64 over a handful of steps


def close(actual: torch.Tensor, expected: torch.Tensor, what: str = "", tol: float = TOL) -> None:
    scale = max(float(expected.abs().max()), 1.0)
    err = float((actual - expected).abs().max())
    assert err <= tol * scale, f"{what}: off by {err:.3g} (scale {scale:.3g})"


class Recorder:
    """Injected unit-normal draws: the k-th `noise` call on a generator seeded for (query seed, parameter i)
    gets the test's own tensor for (seed, i, k), the same on every regeneration."""

    def __init__(self, seed: int = 1234) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.table: dict[tuple, torch.Tensor] = {}
        self.keys: dict[int, tuple] = {}  # id(generator) → (kind, …) of its last seeding
        self.counts: dict[int, int] = {}
        self.new: list[tuple] = []  # keys drawn for the first time, in order

    def draw(self, key: tuple, shape: torch.Size) -> torch.Tensor:
        if key not in self.table:
            self.table[key] = torch.randn(shape, generator=self.gen, dtype=DT)
            self.new.append(key)
        return self.table[key].clone()

    def step_keys(self) -> list[tuple]:
        out, self.new = self.new, []
        return out


def injected(name: str, params: list[torch.nn.Parameter], rec: Recorder, seed: int = 0, **hp: object) -> ZOMethod:
    """Method `name` whose unit noise comes from `rec`. Overriding `noise` also routes plain methods through
    `draw`/`direction` (no piecewise fast path), so every z the method uses is one of `rec`'s."""
    cls = registry.methods.get(name)

    def generator(self, p, s, i):  # noqa: ANN001, ANN202
        gen = cls.generator(self, p, s, i)
        rec.keys[id(gen)], rec.counts[id(gen)] = ("z", s, i), 0
        return gen

    def noise(self, p, gen):  # noqa: ANN001, ANN202
        if id(gen) not in rec.keys:  # a basis generator (LOZO's V): fresh for its one draw
            return rec.draw(("basis", gen.initial_seed(), 0), p.shape).to(p.dtype)
        k = rec.counts[id(gen)]
        rec.counts[id(gen)] = k + 1
        return rec.draw((*rec.keys[id(gen)], k), p.shape).to(p.dtype)

    sub = type(f"Golden{cls.__name__}", (cls,), {"generator": generator, "noise": noise, "own_draw": True})
    return sub(params, cls.Params.model_validate(hp), seed)


def z_of(keys: list[tuple], rec: Recorder, i: int, k: int = 0) -> torch.Tensor:
    """The step's draw k for parameter i (its query's first)."""
    return next(rec.table[key] for key in keys if key[0] == "z" and key[2] == i and key[3] == k)


def problem(shapes: list[tuple[int, ...]], seed: int = 0) -> tuple[list[torch.nn.Parameter], Callable]:
    """L(θ) = Σ_i ½ Σ h_i θ_i² + b_i·θ_i + ¼ Σ θ_i⁴ /10 (float64): smooth, non-quadratic, per-entry curvatures."""
    gen = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=DT)) for s in shapes]
    hs = [torch.rand(s, generator=gen, dtype=DT) * 4 + 0.5 for s in shapes]
    bs = [torch.randn(s, generator=gen, dtype=DT) for s in shapes]

    def loss(thetas: list[torch.Tensor] | None = None) -> torch.Tensor:
        ts = params if thetas is None else thetas
        return sum((0.5 * h * t * t + b * t + t**4 / 40).sum() for t, h, b in zip(ts, hs, bs, strict=True))

    return params, loss


def clone(params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def two_point(loss: Callable, theta: list[torch.Tensor], z: list[torch.Tensor], eps: float) -> float:
    plus = float(loss([t + eps * d for t, d in zip(theta, z, strict=True)]))
    minus = float(loss([t - eps * d for t, d in zip(theta, z, strict=True)]))
    return (plus - minus) / (2 * eps)


SHAPES = [(4, 3), (3,)]  # a matrix and a vector (bias-like: MeZO does not decay it)


# --------------------------------------------------------------------------- MeZO ZO-SGD
def test_zo_sgd_is_mezo_with_biases_and_norms_not_decayed():
    """princeton-nlp/MeZO large_models/trainer.py:757-789 (g) and :791-806 (update): θ ← θ − η(g z + wd θ),
    the wd term skipped for biases and LayerNorm weights (here: the 1-D tensor)."""
    params, loss = problem(SHAPES)
    rec = Recorder()
    lr, eps, wd = 0.05, 1e-3, 0.1
    method = injected("zo-sgd", params, rec, lr=lr, eps=eps, weight_decay=wd)
    theta = clone(params)
    for _ in range(4):
        method.step(loss)
        keys = rec.step_keys()
        z = [z_of(keys, rec, i) for i in range(len(theta))]
        g = two_point(loss, theta, z, eps)
        theta = [t - lr * (g * zi + (wd * t if t.dim() >= 2 else 0)) for t, zi in zip(theta, z, strict=True)]
    for p, t in zip(params, theta, strict=True):
        close(p.detach(), t, "zo-sgd")


def test_zo_sgd_sign_and_momentum_follow_zo_bench():
    """ZO-Bench zo-bench/trainer.py:1053-1068: ĝ = sign(g)·z (zo_sign_opt) or g·z, then torch SGD
    (momentum μ: b ← μ b + ĝ, θ ← θ − η b; trainer.py:321)."""
    for name, hp in (("zo-sgd-sign", {}), ("zo-sgd-mmt", {"momentum": 0.8})):
        params, loss = problem(SHAPES)
        rec = Recorder()
        lr, eps = 0.02, 1e-3
        method = injected(name, params, rec, lr=lr, eps=eps, **hp)
        theta, buf = clone(params), None
        for _ in range(4):
            method.step(loss)
            keys = rec.step_keys()
            z = [z_of(keys, rec, i) for i in range(len(theta))]
            g = two_point(loss, theta, z, eps)
            est = [(math.copysign(1.0, g) if name == "zo-sgd-sign" else g) * zi for zi in z]
            if name == "zo-sgd-mmt":
                buf = est if buf is None else [0.8 * b + e for b, e in zip(buf, est, strict=True)]
                est = buf
            theta = [t - lr * e for t, e in zip(theta, est, strict=True)]
        for p, t in zip(params, theta, strict=True):
            close(p.detach(), t, name)


def test_zo_sgd_cons_follows_zo_bench():
    """ZO-Bench trainer.py:1251-1336: L0, g; L1 = L(θ − ηĝ), L2 = L(θ + ηĝ); if L1 > L0: move to θ + ηĝ
    unless L0 < L2 (stay); else θ − ηĝ if L1 < L2, else θ + ηĝ."""
    params, loss = problem([(5,)])
    rec = Recorder()
    lr, eps = 0.3, 1e-3  # large: some steps are rejected or reversed
    method = injected("zo-sgd-cons", params, rec, lr=lr, eps=eps)
    theta = clone(params)
    for _ in range(6):
        method.step(loss)
        z = z_of(rec.step_keys(), rec, 0)
        g = two_point(loss, theta, [z], eps)
        l0, l1, l2 = (float(loss([t])) for t in (theta[0], theta[0] - lr * g * z, theta[0] + lr * g * z))
        if l1 > l0:
            theta = theta if l0 < l2 else [theta[0] + lr * g * z]
        else:
            theta = [theta[0] - lr * g * z] if l1 < l2 else [theta[0] + lr * g * z]
    close(params[0].detach(), theta[0], "zo-sgd-cons")


# --------------------------------------------------------------------------- ZO-Adam, ZO-AdaMM
def test_zo_adam_is_torch_adam_on_the_zo_gradient():
    """ZO-Bench trainer.py:315-316 and :1066-1068: torch.optim.Adam(lr) stepped with .grad = g·z."""
    params, loss = problem(SHAPES)
    rec = Recorder()
    lr, eps = 0.01, 1e-3
    method = injected("zo-adam", params, rec, lr=lr, eps=eps)
    theta = [torch.nn.Parameter(t) for t in clone(params)]
    adam = torch.optim.Adam(theta, lr=lr)
    for _ in range(5):
        method.step(loss)
        keys = rec.step_keys()
        z = [z_of(keys, rec, i) for i in range(len(theta))]
        g = two_point(loss, [t.detach() for t in theta], z, eps)
        for t, zi in zip(theta, z, strict=True):
            t.grad = g * zi
        adam.step()
    for p, t in zip(params, theta, strict=True):
        close(p.detach(), t.detach(), "zo-adam")


def test_zo_adamm_is_amsgrad_without_bias_correction():
    """ZO-AdaMM (Chen et al. 2019, Alg. 1): m, v EMAs of ĝ, v̂ = max(v̂, v), θ ← θ − η m/(√v̂ + δ)."""
    params, loss = problem(SHAPES)
    rec = Recorder()
    lr, eps, b1, b2, delta = 0.01, 1e-3, 0.9, 0.999, 1e-8
    method = injected("zo-adamm", params, rec, lr=lr, eps=eps)
    theta = clone(params)
    m, v, vmax = ([torch.zeros_like(t) for t in theta] for _ in range(3))
    for _ in range(5):
        method.step(loss)
        keys = rec.step_keys()
        z = [z_of(keys, rec, i) for i in range(len(theta))]
        g = two_point(loss, theta, z, eps)
        for i in range(len(theta)):
            m[i] = b1 * m[i] + (1 - b1) * g * z[i]
            v[i] = b2 * v[i] + (1 - b2) * (g * z[i]) ** 2
            vmax[i] = torch.maximum(vmax[i], v[i])
            theta[i] = theta[i] - lr * m[i] / (vmax[i].sqrt() + delta)
    for p, t in zip(params, theta, strict=True):
        close(p.detach(), t, "zo-adamm")


# --------------------------------------------------------------------------- ZO-AdaMU
def paper_schedule(t: int, t1: int, t2: int, t3: int, phi: float, end: float) -> float:
    """Eq. 7 (cosine with (t − T1), its angle stopped at π) mapped onto [end, 1]; end held from T2 on."""
    def c(tt: int) -> float:
        s = min(tt, t2) - t1
        return 0.5 + 0.5 * math.cos(math.pi * min(1.0, s / (t3 - s * phi * (t3 - t2) / (t2 - t1))))
    return 1.0 if t < t1 else end + (1 - end) * (c(t) - c(t2)) / (1 - c(t2))


def code_schedule(t: int, t1: int, t2: int, t3: int, phi: float) -> float:
    """MathIsAll/ZO-AdaMU trainer.py:238-246 read per step: the cosine, held at its T2 value."""
    s = min(t, t2) - t1
    return 1.0 if t < t1 else 0.5 + 0.5 * math.cos(math.pi * s / (t3 - s * phi * (t3 - t2) / (t2 - t1)))


@pytest.mark.parametrize("name", ["zo-adamu", "zo-adamu-code"])
def test_zo_adamu_follows_algorithm_1(name):
    """Alg. 1 + Eq. 6-7 with the authors' update (trainer.py:827-841): ż ~ N(0, α), z̈ ~ N(m, 1 − α),
    m_t = β1 ż + (1 − β1) z̈, v = β2 ż² + (1 − β2) z̈², θ ← θ − η(g m_t/√(v + σ) + wd θ) (no decay on
    biases / norms); the code variant keeps sign(g)·m_t and holds the cosine's T2 value."""
    params, loss = problem(SHAPES)
    rec = Recorder()
    lr, eps, wd, sigma = 0.01, 1e-3, 0.05, 1e-8
    t1, t2, t3 = 2, 5, 6
    method = injected(name, params, rec, lr=lr, eps=eps, weight_decay=wd, t1=t1, t2=t2, t3=t3)
    theta = clone(params)
    mom = [torch.zeros_like(t) for t in theta]
    phi = {"alpha": 1.0, "beta1": 0.1, "beta2": 1.5}
    end = {"alpha": 0.5, "beta1": 0.9, "beta2": 0.01}
    for t in range(1, 9):
        method.step(loss)
        keys = rec.step_keys()
        if name == "zo-adamu":
            a, b1, b2 = (paper_schedule(t, t1, t2, t3, phi[k], end[k]) for k in ("alpha", "beta1", "beta2"))
        else:
            a, b1, b2 = (code_schedule(t, t1, t2, t3, phi[k]) for k in ("alpha", "beta1", "beta2"))
        z_dot = [math.sqrt(a) * z_of(keys, rec, i, 0) for i in range(len(theta))]
        z_ddot = [mom[i] + math.sqrt(1 - a) * z_of(keys, rec, i, 1) for i in range(len(theta))]
        m = [b1 * zd + (1 - b1) * zdd for zd, zdd in zip(z_dot, z_ddot, strict=True)]
        g = two_point(loss, theta, m, eps)
        for i in range(len(theta)):
            v = b2 * z_dot[i] ** 2 + (1 - b2) * z_ddot[i] ** 2
            decay = wd * theta[i] if theta[i].dim() >= 2 else 0
            theta[i] = theta[i] - lr * (g * m[i] / (v + sigma).sqrt() + decay)
            mom[i] = m[i] if name == "zo-adamu" else math.copysign(1.0, g) * m[i]
    assert (method.alpha, method.beta1, method.beta2) == pytest.approx(
        (0.5, 0.9, 0.01) if name == "zo-adamu" else tuple(code_schedule(8, t1, t2, t3, phi[k]) for k in phi))
    for p, t in zip(params, theta, strict=True):
        close(p.detach(), t, name)


# --------------------------------------------------------------------------- HiZOO
@pytest.mark.parametrize("order", [None, "perturbed"])
def test_hizoo_follows_the_authors_code(order):
    """Yanjun-Zhao/HiZOO trainer.py:475-513: L0; L± = L(θ ± ε z/√H); H ← (1 − α)H + α|L+ + L− − 2L0|/(2ε²)·H z²;
    θ ← θ − η(g z/√H + wd θ) with the updated H (every tensor decayed). `perturbed`: the H that was perturbed."""
    params, loss = problem(SHAPES)
    rec = Recorder()
    lr, eps, alpha, wd = 0.02, 1e-2, 0.5, 0.1
    # the curvature (L+ + L− − 2L0)/2ε² carries the losses' rounding (a few ulps of |L|) times 1/ε²
    tol = 1e3 * torch.finfo(DT).eps * max(1.0, float(loss())) / eps**2
    method = injected("hizoo", params, rec, lr=lr, eps=eps, hessian_smooth=alpha, weight_decay=wd,
                      **({"step_sigma": order} if order else {}))  # None: the default, the code's order
    theta = clone(params)
    hess = [torch.ones_like(t) for t in theta]
    for _ in range(4):
        method.step(loss)
        keys = rec.step_keys()
        z = [z_of(keys, rec, i) for i in range(len(theta))]
        l0 = float(loss(theta))
        lp = float(loss([t + eps * zi / h.sqrt() for t, zi, h in zip(theta, z, hess, strict=True)]))
        lm = float(loss([t - eps * zi / h.sqrt() for t, zi, h in zip(theta, z, hess, strict=True)]))
        g = (lp - lm) / (2 * eps)
        for i in range(len(theta)):
            old = hess[i]
            hess[i] = (1 - alpha) * old + alpha * abs(lp + lm - 2 * l0) / (2 * eps**2) * old * z[i] ** 2
            h = old if order == "perturbed" else hess[i]
            theta[i] = theta[i] - lr * (g * z[i] / h.sqrt() + wd * theta[i])
    for p, t in zip(params, theta, strict=True):
        close(p.detach(), t, f"hizoo {order}", tol)


# --------------------------------------------------------------------------- LOZO, SubZero
def test_lozo_steps_along_unscaled_u_v_transpose():
    """optsuite/LOZO large_models/LOZOtrainer.py:699-719, 800-818: W ± ε U Vᵀ, V redrawn every ν steps,
    W ← W − η(g U Vᵀ + wd W); vectors: Gaussian z, no decay."""
    params, loss = problem([(5, 4), (4,)])
    rec = Recorder()
    lr, eps, rank, nu, wd = 0.01, 1e-3, 2, 3, 0.1
    method = injected("lozo", params, rec, lr=lr, eps=eps, rank=rank, interval=nu, weight_decay=wd)
    theta = clone(params)
    vs = []
    for t in range(1, 8):
        method.step(loss)
        keys = rec.step_keys()
        basis = [rec.table[k] for k in keys if k[0] == "basis"]
        if (t - 1) % nu == 0:
            assert len(basis) == 1, "V is redrawn at the start of each period"
            vs.append(basis[0])
        else:
            assert not basis, "V is kept within a period"
        z = [z_of(keys, rec, 0) @ vs[-1].T, z_of(keys, rec, 1)]
        assert z[0].shape == (5, 4)
        g = two_point(loss, theta, z, eps)
        theta = [theta[0] - lr * (g * z[0] + wd * theta[0]), theta[1] - lr * g * z[1]]
    for p, t in zip(params, theta, strict=True):
        close(p.detach(), t, "lozo")


def test_subzero_scales_the_subspace_perturbation_by_sqrt_mn_over_r():
    """SubZero (Yu et al. 2024): z = √(mn)/r · P Z̃ Qᵀ per matrix with P, Q orthonormal, refreshed every F steps."""
    params, loss = problem([(6, 5), (5,)])
    rec = Recorder()
    lr, eps, rank, every = 0.01, 1e-3, 2, 3
    method = injected("subzero", params, rec, lr=lr, eps=eps, rank=rank, interval=every)
    theta, bases = clone(params), None
    for t in range(1, 8):
        method.step(loss)
        p_, q_ = (b.clone() for b in method.bases[0])
        # orthonormal to float32 precision (the bases' QR runs in float32)
        assert torch.allclose(p_.T @ p_, torch.eye(rank, dtype=DT), atol=20 * torch.finfo(torch.float32).eps)
        if bases is not None:
            assert torch.equal(bases[0], p_) == bool((t - 1) % every), "bases refresh every F steps"
        bases = (p_, q_)
        keys = rec.step_keys()
        z = [math.sqrt(6 * 5) / rank * p_ @ z_of(keys, rec, 0) @ q_.T, z_of(keys, rec, 1)]
        g = two_point(loss, theta, z, eps)
        theta = [th - lr * g * zi for th, zi in zip(theta, z, strict=True)]
    for p, t in zip(params, theta, strict=True):
        close(p.detach(), t, "subzero")
    assert registry.methods.get("subzero").Params().interval == 2000


# --------------------------------------------------------------------------- Sparse MeZO
def test_sparse_mezo_perturbs_only_the_small_weights():
    """Sparse MeZO (Liu et al. 2024, Alg. 1): z ⊙ 1[|θ| ≤ h], h each tensor's (1 − s) magnitude quantile
    from the θ at the start of the step; perturbation and update use the same mask."""
    params, loss = problem([(5, 4)])
    rec = Recorder()
    lr, eps, sparsity = 0.05, 1e-3, 0.75
    method = injected("sparse-mezo", params, rec, lr=lr, eps=eps, sparsity=sparsity)
    theta = clone(params)
    for _ in range(4):
        method.step(loss)
        keep = round((1 - sparsity) * theta[0].numel())
        h = theta[0].abs().flatten().sort().values[keep - 1]
        z = z_of(rec.step_keys(), rec, 0) * (theta[0].abs() <= h)
        assert int((z != 0).sum()) == keep
        g = two_point(loss, theta, [z], eps)
        theta = [theta[0] - lr * g * z]
    close(params[0].detach(), theta[0], "sparse-mezo")


# --------------------------------------------------------------------------- DeepZero RGE, CGE
def test_rge_is_a_forward_difference_averaged_over_queries():
    """DeepZero Eq. 1 (RGE): ĝ = (1/q) Σ_j (L(θ + μ u_j) − L(θ))/μ · u_j, θ ← θ − η ĝ."""
    params, loss = problem(SHAPES)
    rec = Recorder()
    lr, mu, q = 0.02, 1e-3, 3
    method = injected("rge", params, rec, lr=lr, eps=mu, q=q)
    theta = clone(params)
    for _ in range(3):
        method.step(loss)
        keys = rec.step_keys()
        seeds = list(dict.fromkeys(k[1] for k in keys if k[0] == "z"))
        assert len(seeds) == q
        base = float(loss(theta))
        est = [torch.zeros_like(t) for t in theta]
        for s in seeds:
            u = [rec.table[("z", s, i, 0)] for i in range(len(theta))]
            d = (float(loss([t + mu * ui for t, ui in zip(theta, u, strict=True)])) - base) / mu
            est = [e + d * ui / q for e, ui in zip(est, u, strict=True)]
        theta = [t - lr * e for t, e in zip(theta, est, strict=True)]
    for p, t in zip(params, theta, strict=True):
        close(p.detach(), t, "rge")


@pytest.mark.parametrize("nesterov", [False, True])
def test_cge_steps_with_deepzero_sgd_momentum(nesterov):
    """DeepZero models/distributed_model.py:30-40 (forward difference per coordinate, μ) and
    experiments/sparse_gradient_training.py:47 (torch SGD, momentum 0.9, coupled weight decay)."""
    params, loss = problem(SHAPES)
    lr, mu, wd = 0.02, 5e-3, 5e-4
    method = registry.methods.get("cge")(params, registry.methods.get("cge").Params.model_validate(
        {"lr": lr, "eps": mu, "weight_decay": wd, "nesterov": nesterov}), 0)
    theta = [torch.nn.Parameter(t) for t in clone(params)]
    sgd = torch.optim.SGD(theta, lr=lr, momentum=0.9, weight_decay=wd, nesterov=nesterov)
    for _ in range(4):
        method.step(loss)
        with torch.no_grad():
            base = float(loss([t.detach() for t in theta]))
            for i, t in enumerate(theta):
                grad = torch.zeros_like(t).view(-1)
                for j in range(t.numel()):
                    moved = [x.detach().clone() for x in theta]
                    moved[i].view(-1)[j] += mu
                    grad[j] = (float(loss(moved)) - base) / mu
                t.grad = grad.view(t.shape)
        sgd.step()
    for p, t in zip(params, theta, strict=True):
        close(p.detach(), t.detach(), "cge")


# --------------------------------------------------------------------------- forward gradient
def test_forward_grad_is_the_exact_directional_derivative_times_z():
    """ZO-Bench trainer.py:1357-1412 (forward_grad_step): jvp of L along v, θ ← θ − η (∇L·v) v."""
    params, loss = problem(SHAPES)
    rec = Recorder()
    lr = 0.02
    method = injected("forward-grad", params, rec, lr=lr)
    theta = clone(params)
    for _ in range(3):
        method.step(loss)
        keys = rec.step_keys()
        z = [z_of(keys, rec, i) for i in range(len(theta))]
        ts = [t.clone().requires_grad_(True) for t in theta]
        grads = torch.autograd.grad(loss(ts), ts)
        d = sum(float((gr * zi).sum()) for gr, zi in zip(grads, z, strict=True))
        theta = [t - lr * d * zi for t, zi in zip(theta, z, strict=True)]
    for p, t in zip(params, theta, strict=True):
        close(p.detach(), t, "forward-grad")


# --------------------------------------------------------------------------- the Figure 2 fast path
@pytest.mark.parametrize("name", ["zo-sgd", "zo-adamu", "zo-adamu-code"])
def test_figure2_batched_updates_equal_the_registered_methods(name):
    """zobench/report/figure2.py moves every (seed, lr) at once; fed the same draws, its runs equal the
    registered method's on the task's 2-D point, step for step through all three ZO-AdaMU phases."""
    fn = figure2.FUNCTIONS["beale"]
    steps, lr = 30, 0.01
    point = torch.nn.Parameter(torch.tensor(fn.start, dtype=DT))
    rec = Recorder()
    t1, t2, t3 = figure2.schedule(steps)
    hp = {"lr": lr, "eps": figure2.EPS} | ({} if name == "zo-sgd" else {"t1": t1, "t2": t2, "t3": t3})
    method = injected(name, [point], rec, **hp)
    draws = []
    for _ in range(steps):
        method.step(lambda: fn.f(point[0], point[1]))
        keys = rec.step_keys()
        draws.append([z_of(keys, rec, 0, k).view(1, 1, 2) for k in range(1 if name == "zo-sgd" else 2)])
    result = figure2.run_zo(name, fn, (lr,), 1, steps, record_every=1, draw=lambda t: draws[t - 1])
    close(point.detach(), torch.tensor(result.path[-1, 0, 0]), f"figure2 {name}")


@pytest.mark.parametrize("name", ["fo-adam", "fo-adamax"])
def test_figure2_first_order_rules_equal_torch(name):
    fn = figure2.FUNCTIONS["rosenbrock"]
    lrs = (0.001, 0.03)
    result = figure2.run_fo(name, fn, lrs, 40, record_every=40)
    for k, lr in enumerate(lrs):
        point = torch.nn.Parameter(torch.tensor(fn.start, dtype=DT))
        opt = (torch.optim.Adam if name == "fo-adam" else torch.optim.Adamax)([point], lr=lr)
        for _ in range(40):
            opt.zero_grad()
            fn.f(point[0], point[1]).backward()
            opt.step()
        close(torch.tensor(result.path[-1, 0, k]), point.detach(), f"{name} lr {lr}")


def test_figure2_writes_the_figure_and_tables(tmp_path):
    figure2.main(["--out", str(tmp_path), "--steps", "40", "--seeds", "2", "--record-every", "10"])
    table = (tmp_path / "final-distance.md").read_text()
    assert "median of 2 seeds" in table and "zo-adamu-code" in table and "Learning rates (of 12)" in table
    every = figure2.pd.read_csv(tmp_path / "final-distance-all.csv")
    assert len(every) == 6 * (3 * 2 + 2) * len(figure2.LRS)  # functions × (ZO seeds + FO runs) × lrs
    assert (tmp_path / "figure2.png").stat().st_size > 10_000
