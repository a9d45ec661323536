"""ZO-RankSGD (Tang, Rybin, Chang, arXiv 2303.03751): zeroth-order descent that sees only rankings.

Each step perturbs θ along m Gaussian directions, θ + μξ_i, and asks an oracle which candidates are better;
the oracle answers with a set E of pairs (better, worse) and never with a loss value. The step is the paper's
Algorithm 1: g = (1/|E|) Σ_{(i,j)∈E} (ξ_j − ξ_i), θ ← θ − η·g. For a top-k ranking of m candidates E holds
every ranked pair and every (ranked, unranked) pair, |E| = k(k−1)/2 + k(m−k), so candidate i's coefficient
is (wins_i − losses_i)/|E|: m−1−2r for the one ranked r-th (0 = best), −k for an unranked one.

The authors' released optimizer (TZW1998/Taming-Stable-Diffusion-with-Human-Ranking-Feedback optimizer.py)
builds the same sum in `rank_feedback`: the |E| normaliser is line 127, the candidates are θ + μξ
(line 29, so its direction is μ times ours), an unranked candidate weighs −k (line 123) and a ranked one
m − 2r (line 121), one more than the pair count m − 1 − 2r. That extra +ξ_i on every ranked candidate is
a bias toward the top-k's mean that the paper's estimator does not have; `weights: code` reproduces it,
`weights: paper` (the default) is the unbiased sum. The released code then line-searches along the direction
with human picks (lines 30-34, 141-156), an interactive device we do not reproduce.

Oracles (`oracle`) are pluggable: `ranking` orders the m candidates by their loss; `noisy-ranking` is a
simulated judge who compares every pair and errs on each with probability `error`, ranking by wins;
`pairwise` compares disjoint pairs (0, 1), (2, 3), ... (the paper's (2, 1) comparison oracle, m/2 times),
each wrong with probability `error`. The judge draws from its own generator seeded by the run seed.
"""

from __future__ import annotations

from typing import ClassVar, Literal, Protocol

import numpy as np
from pydantic import Field, NonNegativeFloat, PositiveFloat

from zobench.errors import FieldError
from zobench.optim.base import LossFn
from zobench.optim.zo import ZOMethod, ZOParams
from zobench.registry import methods

Edge = tuple[int, int]  # (index of the better candidate, index of the worse one)


class Oracle(Protocol):
    """Turns the candidates' losses (which it alone sees) into preference pairs (better, worse)."""

    def __call__(self, losses: list[float], rng: np.random.Generator) -> list[Edge]: ...


def ranking_edges(order: list[int], m: int) -> list[Edge]:
    """The pairs a top-k ranking implies: every ranked pair, and each ranked candidate over each unranked one."""
    ranked = set(order)
    edges = [(order[a], order[b]) for a in range(len(order)) for b in range(a + 1, len(order))]
    edges += [(i, j) for i in order for j in range(m) if j not in ranked]
    return edges


class LossRanking:
    """The exact oracle: the top k of the m candidates by loss (stable: ties keep the candidate order)."""

    def __init__(self, k: int, error: float) -> None:
        self.k = k
        self.order: list[int] = []  # the last ranking, best first

    def __call__(self, losses: list[float], rng: np.random.Generator) -> list[Edge]:
        self.order = [int(i) for i in np.argsort(np.asarray(losses), kind="stable")[: self.k]]
        return ranking_edges(self.order, len(losses))


class NoisyRanking:
    """A judge who compares every pair, wrong on each with probability `error`, and ranks by wins (Copeland)."""

    def __init__(self, k: int, error: float) -> None:
        self.k, self.error = k, error
        self.order: list[int] = []

    def __call__(self, losses: list[float], rng: np.random.Generator) -> list[Edge]:
        m = len(losses)
        wins = np.zeros(m)
        for i in range(m):
            for j in range(i + 1, m):
                i_better = losses[i] <= losses[j]
                if rng.random() < self.error:
                    i_better = not i_better
                wins[i if i_better else j] += 1
        self.order = [int(i) for i in np.lexsort((np.arange(m), -wins))[: self.k]]
        return ranking_edges(self.order, m)


class PairwisePreference:
    """Disjoint pairs (0, 1), (2, 3), ...: one preference each, wrong with probability `error`."""

    def __init__(self, k: int, error: float) -> None:
        self.error = error

    def __call__(self, losses: list[float], rng: np.random.Generator) -> list[Edge]:
        edges = []
        for i in range(0, len(losses) - 1, 2):
            better, worse = (i, i + 1) if losses[i] <= losses[i + 1] else (i + 1, i)
            if rng.random() < self.error:
                better, worse = worse, better
            edges.append((better, worse))
        return edges


ORACLES: dict[str, type] = {"ranking": LossRanking, "noisy-ranking": NoisyRanking, "pairwise": PairwisePreference}


def coefficients(edges: list[Edge], m: int, code_bias: list[int] | None = None) -> np.ndarray:
    """c with Σ_i c_i ξ_i = −g: (wins_i − losses_i)/|E| as the paper; `code_bias`: the ranked candidates, each
    given the released code's extra +1 (optimizer.py:121 weighs m − 2r where the pair count is m − 1 − 2r)."""
    c = np.zeros(m)
    for better, worse in edges:
        c[better] += 1
        c[worse] -= 1
    if code_bias:
        c[code_bias] += 1
    return c / len(edges)


class RankParams(ZOParams):
    lr: PositiveFloat = 1e-3
    eps: PositiveFloat = 1e-3  # μ, the smoothing radius of the candidates θ + μξ
    q: int = Field(10, ge=2)  # m: candidates ranked per step (one forward each)
    k: int | None = Field(None, ge=1)  # the oracle ranks its top k (None: all m)
    oracle: Literal["ranking", "noisy-ranking", "pairwise"] = "ranking"
    error: NonNegativeFloat = Field(0.0, le=0.5)  # the simulated judge's error per comparison
    weights: Literal["paper", "code"] = "paper"


@methods.register("zo-ranksgd")
class ZORankSGD(ZOMethod):
    """ZO-RankSGD (arXiv 2303.03751): steps along the rank-based estimator of m = q perturbed candidates.

    The method gets only the oracle's preference pairs; q forwards per step (no base evaluation).
    State: none (directions are regenerated from seeds, as in MeZO).
    """

    Params = RankParams
    hp: RankParams
    own_queries: ClassVar[bool] = True

    def __init__(self, params: list, hp: RankParams, seed: int) -> None:
        super().__init__(params, hp, seed)
        self.oracle: Oracle = ORACLES[hp.oracle](hp.k or hp.q, hp.error)
        self.judge_rng = np.random.default_rng([seed, 0x52414E4B])  # the judge's own errors
        self._losses: list[float] = []

    @classmethod
    def check(cls, params: dict) -> None:
        super().check(params)
        m, k, oracle = params.get("q", 10), params.get("k"), params.get("oracle", "ranking")
        if params.get("one_sided"):
            raise FieldError("one_sided", "ZO-RankSGD evaluates only the candidates θ + μξ; remove one_sided")
        if k is not None and k > m:
            raise FieldError("k", f"k = {k} ranks more candidates than there are (q = {m}); use k ≤ q")
        if oracle == "pairwise" and (k is not None or m % 2):
            raise FieldError("q", "the pairwise oracle compares disjoint pairs: use an even q and no k")
        if oracle == "pairwise" and params.get("weights") == "code":
            raise FieldError("weights", "the released code's weights are a ranking's; use weights: paper with pairwise")
        if oracle == "ranking" and params.get("error"):
            raise FieldError("error", "the ranking oracle is exact; use oracle: noisy-ranking for a judge who errs")

    def query(self, loss_fn: LossFn, seed: int, base: float | None) -> tuple[float, float]:
        """One candidate θ + μξ: its loss goes to the oracle only (the estimate is filled in by `step`)."""
        loss = self.evaluate(loss_fn, self.along(seed, self.hp.eps))
        self._losses.append(loss)
        return 0.0, loss

    def step(self, loss_fn: LossFn) -> float:
        self._losses = []
        seeds, _, loss = self.probe(loss_fn)
        edges = self.oracle(self._losses, self.judge_rng)
        m = len(seeds)
        c = coefficients(edges, m, getattr(self.oracle, "order", None) if self.hp.weights == "code" else None)
        # ZOMethod's update is θ ← θ − η·(1/m) Σ g_i ξ_i; g_i = −m·c_i makes it θ ← θ + η Σ c_i ξ_i = θ − η·g
        self.update(seeds, [float(-m * ci) for ci in c])
        return loss
