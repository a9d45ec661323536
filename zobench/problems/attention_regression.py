"""In-context linear regression with one softmax self-attention layer (Goel, Soltanolkotabi, Bartlett 2026,
arXiv 2603.01514 — seed 003, of which we have the abstract only).

A prompt holds N pairs (x_i, y_i = wᵀx_i) and a query x_q, with x ~ N(0, Σ) (Σ diagonal, condition
number κ) and a fresh w ~ N(0, I/d) per prompt. The layer predicts ŷ_q = v·Σ_i softmax_i(x_iᵀ W_Kᵀ W_Q x_q)·y_i
and trains on ½(ŷ_q − y_q)² over n fixed prompts. As N → ∞ the softmax average becomes the tilted
Gaussian mean, ŷ_q → v·wᵀ Σ W_Kᵀ W_Q x_q, so the population risk is the matrix-factorisation loss
½/d·‖(vΣ W_KᵀW_Q − I) Σ^{1/2}‖²_F (the abstract's "nonconvex matrix factorisation"), minimum 0 on the
manifold vΣW_KᵀW_Q = I: that is the reported metric (exact, known optimum). Test MSE on fresh
finite-N prompts is reported too (it keeps an O(1/N) floor).

`init: spectral` starts at W_K = W_Q = Σ̂^{-1/2}/√v₀, v = v₀ (Σ̂ the inputs' sample covariance: a data-
dependent point near the manifold of minima, with a small softmax tilt so finite N is close to the limit);
`init: random` draws entries N(0, 1/d), v = v₀.
The structure-aware optimiser `attention-pgd` below is our reading of the abstract (preconditioning,
renormalisation, spectral start): ScaledGD (Tong, Ma & Chi 2021) on the factor pair with the inputs
whitened by Σ̂. The paper's exact preconditioner and regulariser are not in the seed text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt

from zobench.errors import UserError
from zobench.models.base import ModelBundle
from zobench.optim.base import LossFn, Method, MethodParams
from zobench.registry import methods, tasks
from zobench.tasks.base import Task
from zobench.workload import Workload


class AttentionRegressionParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    d: PositiveInt = 4  # input dimension
    context: PositiveInt = 256  # N: (x_i, y_i) pairs per prompt
    prompts: PositiveInt = 128  # n: training prompts
    test_prompts: PositiveInt = 1024
    condition: float = Field(10.0, ge=1)  # κ of Σ (eigenvalues geometric, mean 1)
    init: Literal["random", "spectral"] = "random"
    value_init: PositiveFloat = 4.0  # v at the start; spectral W_KᵀW_Q = Σ̂⁻¹/v (a small softmax tilt)
    instance_seed: int | None = None  # None: the run seed draws Σ's data and the prompts


@dataclass
class Structure:
    """What the structure-aware optimiser needs to know: the input covariance estimate."""

    cov: torch.Tensor  # Σ̂, d × d


def _prompts(n: int, p: AttentionRegressionParams, sqrt_sigma: torch.Tensor, gen: torch.Generator,
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    d, big_n = p.d, p.context
    x = torch.randn(n, big_n + 1, d, generator=gen, dtype=torch.float64) * sqrt_sigma
    w = torch.randn(n, d, generator=gen, dtype=torch.float64) / d**0.5
    y = torch.einsum("bnd,bd->bn", x, w)
    return x[:, :-1], y[:, :-1], x[:, -1], y[:, -1]


class SoftmaxAttention(torch.nn.Module):
    def __init__(self, p: AttentionRegressionParams, cov_hat: torch.Tensor, gen: torch.Generator) -> None:
        super().__init__()
        if p.init == "spectral":
            evals, evecs = torch.linalg.eigh(cov_hat)
            root = evecs @ torch.diag(evals.rsqrt()) @ evecs.T / p.value_init**0.5
            wk, wq = root.clone(), root.clone()
        else:
            wk, wq = (torch.randn(p.d, p.d, generator=gen, dtype=torch.float64) / p.d**0.5 for _ in range(2))
        self.key = torch.nn.Parameter(wk)
        self.query = torch.nn.Parameter(wq)
        self.value = torch.nn.Parameter(torch.tensor(p.value_init, dtype=torch.float64))

    def forward(self, x: torch.Tensor, y: torch.Tensor, xq: torch.Tensor) -> torch.Tensor:
        tilt = xq @ (self.key.T @ self.query).T  # W x_q for each prompt
        scores = torch.einsum("bnd,bd->bn", x, tilt)
        return self.value * (torch.softmax(scores, dim=-1) * y).sum(-1)


@tasks.register("attention-regression")
class AttentionRegressionTask(Task):
    """Seed 003: one softmax attention layer doing in-context linear regression; metric = population gap."""

    Params = AttentionRegressionParams
    needs_model = False

    @classmethod
    def build(cls, params: dict[str, Any], bundle: ModelBundle | None, device: torch.device,
              seed: int) -> Workload:
        p = AttentionRegressionParams.model_validate(params)
        gen = torch.Generator().manual_seed(seed if p.instance_seed is None else p.instance_seed)
        eig = torch.logspace(0, -torch.log10(torch.tensor(p.condition)).item(), p.d, dtype=torch.float64)
        sigma = torch.diag(eig / eig.mean())
        train = _prompts(p.prompts, p, sigma.diagonal().sqrt(), gen)
        test = _prompts(p.test_prompts, p, sigma.diagonal().sqrt(), gen)
        inputs = torch.cat([train[0].reshape(-1, p.d), train[2]])
        cov_hat = inputs.T @ inputs / inputs.shape[0]
        model = SoftmaxAttention(p, cov_hat, torch.Generator().manual_seed(seed + 1)).to(device)
        structure = Structure(cov=cov_hat.to(device))
        for param in model.parameters():
            param._zb_attention = structure  # type: ignore[attr-defined]  # read by attention-pgd
        train = tuple(t.to(device) for t in train)
        test = tuple(t.to(device) for t in test)
        sigma, root = sigma.to(device), sigma.sqrt().to(device)
        eye = torch.eye(p.d, dtype=torch.float64, device=device)

        def loss(idx: list[int]) -> torch.Tensor:
            x, y, xq, yq = (t[idx] for t in train)
            return 0.5 * (model(x, y, xq) - yq).pow(2).mean()

        @torch.no_grad()
        def evaluate(split: str) -> dict[str, float]:
            w = model.key.T @ model.query
            gap = 0.5 * ((model.value * sigma @ w - eye) @ root).pow(2).sum() / p.d
            x, y, xq, yq = test
            return {"population_gap": float(gap), "test_mse": float((model(x, y, xq) - yq).pow(2).mean()),
                    "train_loss": float(loss(list(range(p.prompts))))}

        return Workload(module=model, train_size=p.prompts, loss=loss, make_batch=lambda idx: idx,
                        evaluate=evaluate, metric="population_gap", higher_is_better=False,
                        info={"d": p.d, "context": p.context, "prompts": p.prompts, "init": p.init})


class AttentionPGDParams(MethodParams):
    lr: PositiveFloat = 0.1
    damping: PositiveFloat = 1e-6  # λ added to the preconditioners before inversion
    rebalance: bool = True  # renormalise W_K, W_Q to equal norms after each step (W_KᵀW_Q unchanged)


@methods.register("attention-pgd")
class AttentionPGD(Method):
    """Structure-aware preconditioned GD for `attention-regression` only (first-order, one backward).

    W_K ← W_K − η (W_Q Σ̂ W_Qᵀ + λI)⁻¹ ∇_{W_K} Σ̂⁻¹,  W_Q ← W_Q − η (W_K Σ̂ W_Kᵀ + λI)⁻¹ ∇_{W_Q} Σ̂⁻¹,
    v ← v − η ∇_v / ‖Σ̂^{1/2} W_KᵀW_Q Σ̂^{1/2}‖²: ScaledGD's factor preconditioning with the inputs whitened
    by their sample covariance, then a rebalancing of the two factors. Our reading of Goel et al.'s
    abstract (see the module docstring); pair it with `init: spectral`. No state besides Σ̂.
    """

    Params = AttentionPGDParams
    hp: AttentionPGDParams
    needs_grad = True
    only_tasks = ("attention-regression",)

    def __init__(self, params: list[torch.nn.Parameter], hp: AttentionPGDParams, seed: int) -> None:
        super().__init__(params, hp, seed)
        structure = getattr(self.params[0], "_zb_attention", None)
        if structure is None or len(self.params) != 3:
            raise UserError("method 'attention-pgd' trains only the 'attention-regression' task; "
                            "use another method for this task")
        self.cov = structure.cov
        self.cov_inv = torch.linalg.inv(self.cov)

    def step(self, loss_fn: LossFn) -> float:
        key, query, value = self.params
        for p in self.params:
            p.grad = None
        with torch.enable_grad():
            loss = loss_fn()
            loss.backward()
        self.forward_passes += 1
        self.backward_passes += 1
        with torch.no_grad():
            eye = torch.eye(key.shape[0], dtype=key.dtype, device=key.device) * self.hp.damping
            pre_k = torch.linalg.inv(query @ self.cov @ query.T + eye)
            pre_q = torch.linalg.inv(key @ self.cov @ key.T + eye)
            root = torch.linalg.cholesky(self.cov)
            scale = (root.T @ key.T @ query @ root).pow(2).sum().clamp_min(self.hp.damping)
            gk, gq = pre_k @ key.grad @ self.cov_inv, pre_q @ query.grad @ self.cov_inv
            key.sub_(gk, alpha=self.hp.lr)
            query.sub_(gq, alpha=self.hp.lr)
            value.sub_(value.grad / scale, alpha=self.hp.lr)
            if self.hp.rebalance:
                ratio = (query.norm() / key.norm()).sqrt()
                key.mul_(ratio)
                query.div_(ratio)
        return float(loss.detach())

    def state_tensors(self) -> list[torch.Tensor]:
        return [self.cov, self.cov_inv]
