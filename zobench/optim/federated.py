"""Federated zeroth-order methods: FedZO and FZooS, on the federated problems (zobench/problems/federated.py).

One runner step is one communication round: every client starts from the server's θ, runs `local_steps` local
updates on its own objective using only function values, and sends its end point back; the server averages
them. So the curve's `step` column counts rounds and `forward_passes` counts queries (function evaluations,
one client objective at one point each), and the report draws the global loss against both. Each method
queries the clients through the workload's loss on a batch of one client index (`prepare`), and ignores the
runner's closure, as population methods own their evaluations (zobench/optim/population.py).

The server step is FZooS's code for both methods (github.com/shuyao95/FZooS settings.py:77-80):
θ' = θ − η·Σ_i w_i (θ − x_i), w_i = 1/N, kept only if F(θ') < F(θ) when `keep_better` is on. The reference
evaluates F there without counting it (settings.py:169 counts client queries only); we count its N queries,
and reuse the values at the accepted θ as the next round's queries at the start point, so a client is queried
once per point. With η = 1 and keep_better off the server step is FedAvg, FedZO's Algorithm 1 (arXiv 2201.09531).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt
from scipy.linalg import cho_factor, cho_solve, lstsq
from scipy.spatial.distance import cdist
from sklearn.kernel_approximation import RBFSampler
from threadpoolctl import threadpool_limits

from zobench.optim.base import LossFn
from zobench.optim.population import PopulationMethod
from zobench.registry import methods

FEDERATED_TASKS = ("federated-function", "federated-metric")


class FederatedParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lr: PositiveFloat = 0.01  # local learning rate (FZooS run_exp.py:41)
    local_steps: PositiveInt = 10  # K local updates per round (run_exp.py:44 --iters; the README's runs use 10)
    server_lr: PositiveFloat = 1.0  # η of the server step (run_exp.py:42)
    keep_better: bool = True  # keep θ when the averaged point is not better (settings.py:79-80)
    local_optimizer: Literal["sgd", "adam"] = "adam"  # FZooS's code: optax.adam, reset every round (run_exp.py:105)


class Adam:
    """optax.adam's update (b1 0.9, b2 0.999, eps 1e-8, bias-corrected), fresh each round as the reference's
    `self.fo_opt.init(x)` at the start of every local update (FZooS optimizers.py:235, 510)."""

    def __init__(self, dim: int, lr: float) -> None:
        self.lr, self.t = lr, 0
        self.m, self.v = np.zeros(dim), np.zeros(dim)

    def step(self, x: np.ndarray, g: np.ndarray) -> np.ndarray:
        self.t += 1
        self.m = 0.9 * self.m + 0.1 * g
        self.v = 0.999 * self.v + 0.001 * g * g
        m_hat, v_hat = self.m / (1 - 0.9**self.t), self.v / (1 - 0.999**self.t)
        return x - self.lr * m_hat / (np.sqrt(v_hat) + 1e-8)


class FederatedMethod(PopulationMethod):
    """What FedZO and FZooS share: the client queries, the local optimiser and the server step."""

    Params: ClassVar[type[BaseModel]] = FederatedParams
    hp: FederatedParams
    only_tasks = FEDERATED_TASKS
    prepares = True

    def __init__(self, params: list[torch.nn.Parameter], hp: Any, seed: int) -> None:
        super().__init__(params, hp, seed)
        self.rng = np.random.default_rng([seed, 0xFED0])
        self.theta = self.start.copy()
        self.rounds = 0
        self._client_loss: Any = None
        self.clients = 0
        self.at_theta: np.ndarray | None = None  # each client's value at θ, when already queried

    def prepare(self, workload: Any) -> None:
        """The client objectives: the workload's loss on a batch of one client index."""
        self._client_loss = workload.loss
        self.clients = workload.train_size
        self.weights = np.full(self.clients, 1.0 / self.clients)

    def query(self, client: int, x: np.ndarray) -> float:
        """One function evaluation: client `client`'s objective at x."""
        self.set_point(x)
        self.forward_passes += 1
        with torch.inference_mode():
            return float(self._client_loss([client]))

    def values_at_theta(self) -> np.ndarray:
        if self.at_theta is None:
            self.at_theta = np.array([self.query(i, self.theta) for i in range(self.clients)])
        return self.at_theta

    def local_optimizer(self) -> Any:
        return Adam(self.dim, self.hp.lr) if self.hp.local_optimizer == "adam" else None

    def local_step(self, optimizer: Adam | None, x: np.ndarray, g: np.ndarray) -> np.ndarray:
        return x - self.hp.lr * g if optimizer is None else optimizer.step(x, g)

    def local_update(self, client: int, start_value: float) -> np.ndarray:
        raise NotImplementedError

    def after_server(self, ends: list[np.ndarray], moved: bool) -> None:
        """Work the server does with the new θ (FZooS: the clients' surrogates); `moved`: θ changed."""

    def server_step(self, ends: list[np.ndarray], start_values: np.ndarray) -> bool:
        """θ ← θ − η Σ w_i (θ − x_i) (settings.py:77-78); with keep_better, only if F improves (:79-80).
        Returns whether θ moved."""
        drift = sum(w * (self.theta - x) for w, x in zip(self.weights, ends, strict=True))
        proposal = self.theta - self.hp.server_lr * drift
        if self.hp.keep_better:
            values = np.array([self.query(i, proposal) for i in range(self.clients)])
            if self.weights @ start_values <= self.weights @ values:
                self.at_theta = start_values
                return False
            self.theta, self.at_theta = proposal, values
        else:
            self.theta, self.at_theta = proposal, None
        return True

    def step(self, loss_fn: LossFn) -> float:
        """One communication round; returns F(θ) at the round's start (the clients' first queries)."""
        if self._client_loss is None:
            raise RuntimeError("prepare(workload) was not called: the federated methods query clients themselves")
        with threadpool_limits(1, user_api="blas"):  # small matrices: BLAS threads only contend (70× slower on
            start_values = self.values_at_theta()  # a loaded 2-core machine for a 150×150 Cholesky)
            ends = [self.local_update(i, float(start_values[i])) for i in range(self.clients)]
            moved = self.server_step(ends, start_values)
            self.after_server(ends, moved)
        self.rounds += 1
        self.set_point(self.theta)
        return float(self.weights @ start_values)

    def state_bytes(self) -> int:
        """θ and the clients' values at it, kept between rounds."""
        return self.theta.nbytes + (self.at_theta.nbytes if self.at_theta is not None else 0)


class FedZOParams(FederatedParams):
    local_optimizer: Literal["sgd", "adam"] = "sgd"  # FedZO's Algorithm 1: plain local SGD
    q: PositiveInt = 20  # directions per local step (b2 in FedZO; FZooS run_exp.py:49 --q 20)
    mu: PositiveFloat = 0.01  # smoothing radius (run_exp.py:48 --mu)


@methods.register("fedzo")
class FedZO(FederatedMethod):
    """FedZO (Fang et al., arXiv 2201.09531): K local ZO-SGD steps per client from the server's θ, averaged.

    Local gradient estimate (FedZO's two-point estimator, one data batch): g = (d/(qμ)) Σ_j [f_i(x + μv_j) −
    f_i(x)] v_j with v_j uniform on the unit sphere (Gaussian draws normalised), q + 1 queries per local step
    (q at the first, whose f_i(x) is the value at the server's θ, queried once per round).
    FZooS's own baseline (`--zo_opt rgf`, optimizers.py:209-231) orthonormalises the directions and drops the d
    factor, then steps with Adam; `local_optimizer: adam` gives the latter (the d/q scale is immaterial to Adam).
    No public FedZO code is used."""

    Params = FedZOParams
    hp: FedZOParams

    def estimate(self, client: int, x: np.ndarray, fx: float) -> np.ndarray:
        v = self.rng.standard_normal((self.hp.q, self.dim))
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        diffs = np.array([self.query(client, x + self.hp.mu * vj) - fx for vj in v])
        return self.dim / (self.hp.q * self.hp.mu) * diffs @ v

    def local_update(self, client: int, start_value: float) -> np.ndarray:
        x, optimizer = self.theta.copy(), self.local_optimizer()
        for k in range(self.hp.local_steps):
            fx = start_value if k == 0 else self.query(client, x)
            x = self.local_step(optimizer, x, self.estimate(client, x, fx))
        return x


# --- FZooS's surrogates -------------------------------------------------------------------------------------

LENGTHSCALES = np.geomspace(1e-2, 1e2, 9)  # the GP's lengthscale: the grid point of highest marginal likelihood


@dataclass
class GP:
    """An RBF-kernel GP on targets scaled to [0, 1] (FZooS optimizers.py:460-462; noise 1e-6, :428), with the
    analytic gradient of its posterior mean and the trace of its gradient's posterior covariance."""

    x: np.ndarray
    lengthscale: float
    low: float
    span: float
    noise: float = 1e-6
    alpha: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def kernel(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.exp(-cdist(a, b, "sqeuclidean") / (2 * self.lengthscale**2))

    def grad_mean(self, z: np.ndarray) -> np.ndarray:
        """∇μ(z) = Σ_j α_j k(z, x_j)(x_j − z)/ℓ², on the objective's scale."""
        k = self.kernel(z[None], self.x)[0]
        return (self.alpha * k) @ (self.x - z) / self.lengthscale**2 * self.span

    def grad_variance(self, candidates: np.ndarray, points: np.ndarray | None = None) -> np.ndarray:
        """tr Cov[∇f(z) | f(points)] for each candidate z: d/ℓ² − Σ_d c_d K⁻¹ c_d with c_d = ∂k(z, ·)/∂z_d."""
        points = self.x if points is None else points
        chol = cho_factor(self.kernel(points, points) + self.noise * np.eye(len(points)), lower=True)
        k = self.kernel(candidates, points)  # (m, n)
        c = k[:, :, None] * (points[None] - candidates[:, None]) / self.lengthscale**2  # (m, n, d)
        m, n, d = c.shape
        solved = cho_solve(chol, c.transpose(1, 0, 2).reshape(n, m * d)).reshape(n, m, d).transpose(1, 0, 2)
        return d / self.lengthscale**2 - (c * solved).sum(axis=(1, 2))


def fit_gp(x: np.ndarray, y: np.ndarray, noise: float = 1e-6) -> GP:
    """The GP on (x, y) at the lengthscale of highest log marginal likelihood over LENGTHSCALES (the reference
    fits a Matérn-5/2 kernel's lengthscale by marginal likelihood with sklearn, optimizers.py:426-432, 462)."""
    low, span = float(y.min()), float(y.max() - y.min()) + 1e-20
    target = (y - low) / span
    best: tuple[float, GP] | None = None
    sq = cdist(x, x, "sqeuclidean")
    for ell in LENGTHSCALES:
        gp = GP(x, float(ell), low, span, noise)
        try:
            chol = cho_factor(np.exp(-sq / (2 * ell**2)) + noise * np.eye(len(x)), lower=True)
        except np.linalg.LinAlgError:
            continue
        alpha = cho_solve(chol, target)
        evidence = -0.5 * target @ alpha - np.log(np.diag(chol[0])).sum()
        if best is None or evidence > best[0]:
            gp.alpha = alpha
            best = (evidence, gp)
    assert best is not None, "no lengthscale gave a positive-definite kernel matrix"
    return best[1]


class RandomFeatures:
    """Random Fourier features of the RBF kernel, shared by every client and the server (the reference seeds
    sklearn's RBFSampler with random_state=0 in every client, optimizers.py:355-365): φ(x) = √(2/M) cos(xW + b)."""

    def __init__(self, dim: int, components: int, lengthscale: float, seed: int) -> None:
        sampler = RBFSampler(gamma=1 / (2 * lengthscale**2), n_components=components, random_state=seed)
        sampler.fit(np.zeros((1, dim)))
        self.w, self.b, self.components = sampler.random_weights_, sampler.random_offset_, components

    def features(self, x: np.ndarray) -> np.ndarray:
        return np.sqrt(2.0 / self.components) * np.cos(x @ self.w + self.b)

    def fit(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
        """(ν·span, low): least squares on targets scaled to [0, 1], the minimum-norm solution, as the reference's
        Ridge(alpha=0) (optimizers.py:353, 367-387); ν is returned on the objective's scale (settings.py:130-133).
        With fewer points n than features M it is Φᵀ(ΦΦᵀ)⁺y: an n×n solve instead of an n×M one."""
        low, span = float(y.min()), float(y.max() - y.min()) + 1e-40
        phi = self.features(x)
        nu = phi.T @ lstsq(phi @ phi.T, (y - low) / span, lapack_driver="gelsy")[0]
        return nu * span, low

    def grad(self, nu: np.ndarray, x: np.ndarray) -> np.ndarray:
        """∇(φ(x)·ν) = −√(2/M) W (sin(xW + b) ⊙ ν) (optimizers.py:397-405)."""
        return -np.sqrt(2.0 / self.components) * self.w @ (np.sin(x @ self.w + self.b) * nu)


class FZooSParams(FederatedParams):
    init_queries: int = Field(10, ge=0)  # queries per client around θ₀ before round 1 (run_exp.py:52, settings.py:151)
    init_radius: PositiveFloat = 0.01  # their box's half-width (settings.py:151)
    gp_queries: PositiveInt = 150  # nearest archived queries the local GP is fitted on (optimizers.py:522)
    explore: PositiveInt = 100  # candidates drawn around each local iterate (optimizers.py:536)
    explore_radius: PositiveFloat = 0.01  # their box's half-width (optimizers.py:536)
    active: int = Field(5, ge=0)  # of them, queried: the highest gradient variance (optimizers.py:537-538)
    gamma: float = Field(1.0, ge=0)  # correction weight γ_t = γ/(t+1) at local step t (optimizers.py:518-528)
    rff_components: PositiveInt = 10000  # M random features (optimizers.py:422)
    rff_lengthscale: PositiveFloat = 1.0  # fixed in the reference (optimizers.py:500)
    rff_queries: PositiveInt = 500  # nearest archived queries the RFF surrogate is fitted on (settings.py:29)
    server_explore: PositiveInt = 200  # candidates around the new θ (settings.py:22-24)
    server_active: int = Field(50, ge=0)  # of them, queried (settings.py:27)


@methods.register("fzoos")
class FZooS(FederatedMethod):
    """FZooS (Shu et al., arXiv 2308.04077): local steps along a GP surrogate's gradient fitted on the client's
    own query trajectory, corrected toward the global gradient through random-Fourier-feature surrogates.

    Client i, round r (FZooS optimizers.py:509-543): archive f_i(θ); Adam fresh; for t < K: fit the GP on the
    `gp_queries` archived points nearest x, g = ∇μ_i(x) + γ/(t+1)·(∇F̂(x) − ∇f̂_i(x)) (the correction from
    round 2 on, settings.py:53-69), Adam step, query the new x, and (but after the last step) query the
    `active` of `explore` candidates in x ± 0.01 whose gradient the GP knows least (optimizers.py:535-538).
    Server (settings.py:74-144, get_rff :18-30): the averaged θ; each client queries the `server_active` of
    `server_explore` candidates in θ ± r_i, r_i = mean|θ − x_i|/2 (:82), that the GP knows least, fits its RFF
    surrogate f̂_i on its `rff_queries` archived points nearest θ and sends ν_i; F̂ = Σ w_i f̂_i (:130-133).

    Deviations: the GP's kernel is an RBF with the lengthscale picked by marginal likelihood on a grid, and its
    mean's gradient is analytic (the reference fits sklearn's Matérn-5/2 with 20 restarts and differentiates
    it by finite differences with step 1e-20, optimizers.py:465-470, which is below float64's resolution); the
    gradient variance is the trace over all coordinates (the reference takes coordinate 0, optimizers.py:477-479).
    """

    Params = FZooSParams
    hp: FZooSParams

    def __init__(self, params: list[torch.nn.Parameter], hp: FZooSParams, seed: int) -> None:
        super().__init__(params, hp, seed)
        self.rff = RandomFeatures(self.dim, hp.rff_components, hp.rff_lengthscale, seed % 2**32)
        self.archive_x: list[list[np.ndarray]] = []
        self.archive_y: list[list[float]] = []
        self.gps: list[GP | None] = []
        self.client_nu: list[np.ndarray] | None = None  # ν_i·span_i of each client's RFF surrogate
        self.global_nu: np.ndarray | None = None  # Σ w_i ν_i·span_i

    def prepare(self, workload: Any) -> None:
        super().prepare(workload)
        self.archive_x = [[] for _ in range(self.clients)]
        self.archive_y = [[] for _ in range(self.clients)]
        self.gps = [None] * self.clients
        for i in range(self.clients):  # settings.py:149-152
            for x in self.box(self.theta, self.hp.init_radius, self.hp.init_queries):
                self.record(i, x, self.query(i, x))
        self.set_point(self.theta)  # evaluations before the first round see θ₀, not the last query

    def box(self, center: np.ndarray, radius: float, count: int) -> np.ndarray:
        """`count` points uniform in center ± radius (the reference's `explore`, optimizers.py:482-490)."""
        return center + radius * self.rng.uniform(-1.0, 1.0, size=(count, self.dim))

    def record(self, client: int, x: np.ndarray, y: float) -> None:
        self.archive_x[client].append(np.array(x, dtype=np.float64))
        self.archive_y[client].append(y)

    def nearest(self, client: int, target: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        """The `count` archived queries nearest `target` (the reference's local_queries, optimizers.py:446-453)."""
        xs, ys = np.array(self.archive_x[client]), np.array(self.archive_y[client])
        order = np.argsort(np.linalg.norm(xs - target, axis=1), kind="stable")[:count]
        return xs[order], ys[order]

    def most_uncertain(self, gp: GP, points: np.ndarray, candidates: np.ndarray, count: int) -> np.ndarray:
        """The `count` candidates of highest gradient variance given `points` (minimize_uncertainty, :492-495)."""
        if count == 0:
            return candidates[:0]
        order = np.argsort(gp.grad_variance(candidates, points), kind="stable")
        return candidates[order[-count:]]

    def local_gradient(self, client: int, gp: GP, x: np.ndarray, t: int) -> np.ndarray:
        """∇μ_i(x) + γ/(t+1)·(∇F̂(x) − ∇f̂_i(x)) (optimizers.py:523-528; no correction before the first surrogates)."""
        g = gp.grad_mean(x)
        if self.global_nu is not None and self.client_nu is not None:
            correction = self.rff.grad(self.global_nu, x) - self.rff.grad(self.client_nu[client], x)
            g = g + self.hp.gamma / (t + 1) * correction
        return g

    def local_update(self, client: int, start_value: float) -> np.ndarray:
        x, optimizer = self.theta.copy(), self.local_optimizer()
        self.record(client, x, start_value)
        for t in range(self.hp.local_steps):
            gp = fit_gp(*self.nearest(client, x, self.hp.gp_queries))
            self.gps[client] = gp
            x = self.local_step(optimizer, x, self.local_gradient(client, gp, x, t))
            self.record(client, x, self.query(client, x))
            if t < self.hp.local_steps - 1:
                candidates = self.box(x, self.hp.explore_radius, self.hp.explore)
                for z in self.most_uncertain(gp, np.vstack([gp.x, x]), candidates, self.hp.active):
                    self.record(client, z, self.query(client, z))
        return x

    def after_server(self, ends: list[np.ndarray], moved: bool) -> None:
        values = self.values_at_theta()
        nus = []
        for i, end in enumerate(ends):
            radius = float(np.mean(np.abs(self.theta - end)) / 2)  # settings.py:82
            if moved:  # (else θ is archived already, as the round's start)
                self.record(i, self.theta, float(values[i]))
            gp = self.gps[i]
            if gp is not None and self.hp.server_active:
                base, _ = self.nearest(i, self.theta, self.hp.gp_queries)
                candidates = self.box(self.theta, radius, self.hp.server_explore)
                for z in self.most_uncertain(gp, base, candidates, self.hp.server_active):
                    self.record(i, z, self.query(i, z))
            nus.append(self.rff.fit(*self.nearest(i, self.theta, self.hp.rff_queries))[0])
        self.client_nu = nus
        self.global_nu = sum(w * nu for w, nu in zip(self.weights, nus, strict=True))

    def state_bytes(self) -> int:
        """Kept between rounds: every client's archive of queries, the RFF features and the surrogates' weights."""
        archive = sum(len(xs) * (self.dim + 1) * 8 for xs in self.archive_x)
        features = self.rff.w.nbytes + self.rff.b.nbytes
        surrogates = sum(nu.nbytes for nu in self.client_nu or [])
        surrogates += self.global_nu.nbytes if self.global_nu is not None else 0
        return super().state_bytes() + archive + features + surrogates
