"""Test setup: offline hubs, caches kept out of the user's home, one torch thread per test process."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_cache = Path(tempfile.gettempdir()) / "zobench-test-cache"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HOME"] = str(_cache / "hf")
os.environ["MPLCONFIGDIR"] = str(_cache / "mpl")
os.environ["ZOBENCH_CACHE"] = str(_cache / "zobench")
os.environ["XDG_CACHE_HOME"] = str(_cache / "xdg")
os.environ.setdefault("MPLBACKEND", "Agg")
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # BLAS (sklearn, numpy): one thread,
    os.environ.setdefault(_var, "1")  # like torch below: no oversubscription on a shared 2-core machine

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ZOBENCH_TEST_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def data_dir() -> Path:
    """../shared/data beside the checkout; tests that need it skip with the reason when it is absent."""
    if not DATA.is_dir():
        pytest.skip(f"task data not found at {DATA} (set ZOBENCH_TEST_DATA to a copy of shared/data)")
    return DATA


TINY_LLAMA = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
              "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 128}


@pytest.fixture
def write_suite(tmp_path: Path):
    """Write a suite YAML (text or dict) into tmp_path and return its path."""
    import yaml

    def write(content: str | dict, name: str = "suite.yaml") -> Path:
        path = tmp_path / name
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False))
        return path

    return write
