"""Synthetic objectives from the seed papers, with known optima. Registered as tasks."""

from zobench.problems import attention_regression, federated, softmax_regression, test_functions  # noqa: F401
