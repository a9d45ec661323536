"""zo-sgd: MeZO's ZO-SGD (Malladi et al. 2023, arXiv 2305.17333, Algorithm 1).

z ~ N(0, I) regenerated from a per-step seed; g = (L(θ+εz) − L(θ−εz)) / 2ε; θ ← θ − η·g·z.
Defaults follow MeZO's OPT experiments (ε = 1e-3); the learning rate is the suite's to choose.
"""

from zobench.optim.zo import ZOMethod
from zobench.registry import methods


@methods.register("zo-sgd")
class ZOSGD(ZOMethod):
    """MeZO ZO-SGD: two forward passes per step, no optimiser state."""
