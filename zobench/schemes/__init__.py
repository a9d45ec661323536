"""Tuning schemes: which parameters a method trains."""

from zobench.schemes import full  # noqa: F401
