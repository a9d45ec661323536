"""Optimisers. Importing this package registers every method."""

from zobench.optim import (  # noqa: F401
    cbo,
    deepzero,
    federated,
    first_order,
    forward_grad,
    hizoo,
    low_rank,
    nevergrad_methods,
    qzo,
    sparse_mezo,
    zo_adam,
    zo_adamu,
    zo_rank,
    zo_sgd,
)
from zobench.optim.base import Method, MethodParams
from zobench.optim.zo import ZOMethod, ZOParams

__all__ = ["Method", "MethodParams", "ZOMethod", "ZOParams"]
