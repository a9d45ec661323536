"""Federated problems for FZooS and FedZO: N clients, each with its own objective f_i, a server that wants
the global F(θ) = Σ_i w_i f_i(θ) with w_i = 1/N (FZooS's code, funcs/synthetics.py:46, settings.py:38).

A workload's batch is a list of client indices and its loss is the mean of those clients' objectives at θ,
so the full batch is F(θ). The federated methods (zobench/optim/federated.py) query one client at a time;
every other method sees F (with batch_size = clients) as one centralised objective.

`federated-function`: the seed problems' Ackley, Rastrigin and FZooS's quadratic in d dimensions, made
heterogeneous as FZooS's synthetic functions are (funcs/synthetics.py:28-46): client i sees
g(s_i ⊙ (θ − c_i)), with per-coordinate scales s_i and shifts c_i drawn from a Dirichlet(1/N) over the clients
(so a coordinate's scales sum to N across clients and its shifts to 0), spread by `heterogeneity`. We drop the
code's clip of θ to [0, 1]ᵈ and its map to [−10, 10]ᵈ (synthetics.py:52-55), so the gradient is never zero
outside a box, and we draw a start θ₀ ~ U(−r, r)ᵈ instead of U(0, 1)ᵈ.

`federated-metric`: FZooS's non-differentiable metric optimisation (funcs/opt_metric.py): client i's objective
is 1 − macro precision (opt_metric.py:39-41, 57, sklearn's precision_score with average='macro') of a
classifier on its own shard, the shards non-IID by class (funcs/split_data.py:12-37: each class cut into
`portion·C` parts, one to each of `portion·C` clients drawn by a shuffle, as many clients as classes). The
paper perturbs a trained MLP's last layer on covtype (opt_metric.py:14, 72); here θ is a linear classifier's
weights and biases on a seeded Gaussian mixture (no download, a few hundred dimensions at most).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat, PositiveInt

from zobench.models.base import ModelBundle
from zobench.registry import tasks
from zobench.tasks.base import Task
from zobench.workload import Workload


def ackley(z: torch.Tensor) -> torch.Tensor:
    """Ackley over the last axis (test_functions.py's 2-D form in d dimensions); minimum 0 at z = 0."""
    return (-20 * torch.exp(-0.2 * torch.sqrt(z.pow(2).mean(-1))) - torch.exp(torch.cos(2 * torch.pi * z).mean(-1))
            + torch.e + 20)


def rastrigin(z: torch.Tensor) -> torch.Tensor:
    """Rastrigin over the last axis, 10·d + Σ z² − 10 cos 2πz; minimum 0 at z = 0."""
    return 10 * z.shape[-1] + (z.pow(2) - 10 * torch.cos(2 * torch.pi * z)).sum(-1)


def quadratic(z: torch.Tensor) -> torch.Tensor:
    """FZooS's synthetic quadratic (funcs/synthetics.py:15) without its second coefficient: the mean of z²."""
    return z.pow(2).mean(-1)


SHAPES = {"ackley": ackley, "rastrigin": rastrigin, "quadratic": quadratic}


class FederatedFunctionParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    function: Literal["ackley", "rastrigin", "quadratic"] = "ackley"
    dim: PositiveInt = 10
    clients: PositiveInt = 5
    heterogeneity: NonNegativeFloat = Field(0.5, lt=1.0)  # FZooS's `div` (run_exp.py:34); < 1 keeps scales > 0
    start_radius: PositiveFloat = 2.0  # θ₀ ~ U(−r, r)ᵈ
    instance_seed: int | None = None  # None: the run seed draws the clients and θ₀


def client_draws(clients: int, dim: int, heterogeneity: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per-client scales s (N×d, mean 1) and shifts c (N×d, mean 0): a Dirichlet(1/N) over the clients per
    coordinate, centred and spread by `heterogeneity`, as FZooS's synthetics.py:30-32 draws its coeffs/centers."""
    alpha = np.full(clients, 1.0 / clients)
    scales = 1.0 + heterogeneity * (clients * rng.dirichlet(alpha, size=dim).T - 1.0)
    shifts = heterogeneity * (clients * rng.dirichlet(alpha, size=dim).T - 1.0)
    return scales, shifts


class FederatedModule(torch.nn.Module):
    """θ and every client's objective at it; forward(clients) is the mean over the given client indices."""

    def __init__(self, theta0: torch.Tensor) -> None:
        super().__init__()
        self.theta = torch.nn.Parameter(theta0.clone())

    def client_values(self) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, clients: list[int] | None = None) -> torch.Tensor:
        values = self.client_values()
        return values.mean() if clients is None else values[list(clients)].mean()


class ShiftedFunctions(FederatedModule):
    def __init__(self, shape: str, scales: torch.Tensor, shifts: torch.Tensor, theta0: torch.Tensor) -> None:
        super().__init__(theta0)
        self.shape = SHAPES[shape]
        self.register_buffer("scales", scales)
        self.register_buffer("shifts", shifts)

    def client_values(self) -> torch.Tensor:
        return self.shape(self.scales * (self.theta - self.shifts))


def federated_workload(module: FederatedModule, clients: int, info: dict[str, Any]) -> Workload:
    """Batches are client indices; evaluation reports F(θ) and the spread of the clients' objectives."""

    @torch.no_grad()
    def evaluate(split: str) -> dict[str, float]:
        values = module.client_values()
        return {"global_loss": float(values.mean()), "worst_client": float(values.max()),
                "best_client": float(values.min())}

    return Workload(module=module, train_size=clients, loss=lambda batch: module(batch),
                    make_batch=lambda indices: list(indices), evaluate=evaluate, metric="global_loss",
                    higher_is_better=False, info={"clients": clients, "dim": module.theta.numel(), **info})


@tasks.register("federated-function")
class FederatedFunctionTask(Task):
    """FZooS's heterogeneous synthetic clients (arXiv 2308.04077, funcs/synthetics.py) on the seed functions."""

    Params = FederatedFunctionParams
    needs_model = False

    @classmethod
    def build(cls, params: dict[str, Any], bundle: ModelBundle | None, device: torch.device,
              seed: int) -> Workload:
        p = FederatedFunctionParams.model_validate(params)
        rng = np.random.default_rng([p.instance_seed if p.instance_seed is not None else seed, 0xFED])
        scales, shifts = client_draws(p.clients, p.dim, p.heterogeneity, rng)
        theta0 = rng.uniform(-p.start_radius, p.start_radius, size=p.dim)
        as_t = lambda a: torch.tensor(a, dtype=torch.float64, device=device)  # noqa: E731
        module = ShiftedFunctions(p.function, as_t(scales), as_t(shifts), as_t(theta0))
        return federated_workload(module, p.clients, {"function": p.function, "heterogeneity": p.heterogeneity})


class FederatedMetricParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    classes: int = Field(5, ge=2)  # C, and as many clients (funcs/split_data.py:16)
    features: PositiveInt = 8
    per_class: PositiveInt = 200  # examples of each class, shared out among clients
    portion: float = Field(0.4, gt=0, le=1)  # classes per client = max(1, int(portion·C)) (split_data.py:13)
    separation: PositiveFloat = 1.5  # class means ~ N(0, separation²) per feature; unit-variance noise
    init_scale: PositiveFloat = 0.5  # θ₀ ~ N(0, init_scale²)
    instance_seed: int | None = None


def non_iid_shards(labels: np.ndarray, classes: int, portion: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Example indices per client, as FZooS's generate_noniid_data (split_data.py:12-37): k = int(portion·C)
    shuffles of the class ids assign class c to k clients; its examples are cut into k equal parts."""
    per_client = max(1, int(portion * classes))
    ids = np.arange(classes)
    assignment: dict[int, list[int]] = {c: [] for c in range(classes)}
    for _ in range(per_client):
        rng.shuffle(ids)
        for c in range(classes):
            assignment[c].append(int(ids[c]))
    shards: list[list[np.ndarray]] = [[] for _ in range(classes)]
    for c in range(classes):
        members = rng.permutation(np.flatnonzero(labels == c))
        for part, client in zip(np.array_split(members, per_client), assignment[c], strict=True):
            shards[client].append(part)
    return [np.concatenate(s) if s else np.zeros(0, dtype=int) for s in shards]


def macro_precision(pred: torch.Tensor, target: torch.Tensor, classes: int) -> torch.Tensor:
    """sklearn's precision_score(target, pred, average='macro', zero_division=0): the mean over the labels in
    target ∪ pred of TP/predicted (0 where a label is never predicted)."""
    onehot_pred = torch.nn.functional.one_hot(pred, classes).to(torch.float64)
    onehot_true = torch.nn.functional.one_hot(target, classes).to(torch.float64)
    predicted = onehot_pred.sum(0)
    true_pos = (onehot_pred * onehot_true).sum(0)
    present = (predicted + onehot_true.sum(0)) > 0
    precision = torch.where(predicted > 0, true_pos / predicted.clamp(min=1), torch.zeros_like(predicted))
    return precision[present].mean()


class MetricClients(FederatedModule):
    """θ = a linear classifier (W, b) flattened; client i's objective: 1 − macro precision on its shard."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, shards: list[np.ndarray], classes: int,
                 theta0: torch.Tensor) -> None:
        super().__init__(theta0)
        self.classes = classes
        self.register_buffer("x", x)
        self.register_buffer("y", y)
        self.shards = [torch.as_tensor(s, dtype=torch.long, device=x.device) for s in shards]

    def client_values(self) -> torch.Tensor:
        features = self.x.shape[1]
        weights = self.theta[: features * self.classes].view(features, self.classes)
        pred = (self.x @ weights + self.theta[features * self.classes:]).argmax(1)
        return torch.stack([1 - macro_precision(pred[s], self.y[s], self.classes) for s in self.shards])


@tasks.register("federated-metric")
class FederatedMetricTask(Task):
    """FZooS's federated non-differentiable metric optimisation (arXiv 2308.04077, funcs/opt_metric.py):
    1 − macro precision, clients non-IID by class."""

    Params = FederatedMetricParams
    needs_model = False

    @classmethod
    def build(cls, params: dict[str, Any], bundle: ModelBundle | None, device: torch.device,
              seed: int) -> Workload:
        p = FederatedMetricParams.model_validate(params)
        rng = np.random.default_rng([p.instance_seed if p.instance_seed is not None else seed, 0xFED, 1])
        means = rng.normal(0.0, p.separation, size=(p.classes, p.features))
        labels = np.repeat(np.arange(p.classes), p.per_class)
        x = means[labels] + rng.normal(size=(labels.size, p.features))
        shards = non_iid_shards(labels, p.classes, p.portion, rng)
        theta0 = rng.normal(0.0, p.init_scale, size=p.features * p.classes + p.classes)
        module = MetricClients(torch.tensor(x, device=device), torch.tensor(labels, device=device), shards,
                               p.classes, torch.tensor(theta0, device=device))
        return federated_workload(module, p.classes, {"metric_objective": "1 - macro precision",
                                                      "shard_sizes": [int(s.size) for s in shards]})
