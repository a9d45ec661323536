"""Optimisers. Importing this package registers every method."""

from zobench.optim import first_order, zo_sgd  # noqa: F401
from zobench.optim.base import Method, MethodParams
from zobench.optim.zo import ZOMethod, ZOParams

__all__ = ["Method", "MethodParams", "ZOMethod", "ZOParams"]
