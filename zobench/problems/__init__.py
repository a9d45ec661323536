"""Synthetic objectives from the seed papers, with known optima. Registered as tasks."""

from zobench.problems import softmax_regression  # noqa: F401
