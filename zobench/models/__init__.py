"""Model loaders. A model entry in a suite names one of these (or a hub id / local path)."""

from zobench.models import hf, presets, quantized  # noqa: F401
from zobench.models.base import ModelBundle, ModelLoader, NoModel

__all__ = ["ModelBundle", "ModelLoader", "NoModel"]
