"""zobench: benchmark zeroth-order optimizers against first-order fine-tuning."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["curves", "load", "run"]


def __getattr__(name: str) -> Any:
    """`zobench.run`, `zobench.load`, `zobench.curves` (zobench/api.py), imported on first use so that
    `import zobench` stays light (no torch, no pandas)."""
    if name in __all__:
        from zobench import api

        return getattr(api, name)
    raise AttributeError(f"module 'zobench' has no attribute '{name}'")
