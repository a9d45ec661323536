"""Other packages' warnings and log records go to the run's `run.log`, not the console.

transformers, peft and datasets warn through `warnings` (FutureWarning, DeprecationWarning, UserWarning)
and through their loggers; in a grid of many runs they repeat per run and bury the progress lines. Here,
for the length of one run, both land in the run's folder; zobench's own warnings still reach the console.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

OURS = str(Path(__file__).resolve().parent)  # zobench's own folder (this module sits at its top)
LOGGERS = ("transformers", "peft", "datasets", "huggingface_hub", "accelerate", "torch")


def _is_ours(filename: str) -> bool:
    try:
        return str(Path(filename).resolve()).startswith(OURS)
    except OSError:
        return False


@contextmanager
def third_party_output_to(path: Path) -> Iterator[None]:
    """Within the block: other packages' warnings and log records (WARNING and up) are appended to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as log, warnings.catch_warnings():
        original = warnings.showwarning
        warnings.simplefilter("default")  # each distinct warning once per place, as Python shows them

        def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: TextIO | None = None, line: str | None = None) -> None:
            if _is_ours(filename):
                original(message, category, filename, lineno, file, line)
            else:
                log.write(warnings.formatwarning(message, category, filename, lineno, line))
                log.flush()

        warnings.showwarning = show
        handler = logging.FileHandler(path, encoding="utf-8", delay=True)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler.setLevel(logging.WARNING)
        saved = []
        for name in LOGGERS:
            logger = logging.getLogger(name)
            saved.append((logger, logger.handlers[:], logger.propagate))
            logger.handlers = [handler]
            logger.propagate = False
        try:
            yield
        finally:
            for logger, handlers, propagate in saved:
                logger.handlers, logger.propagate = handlers, propagate
            handler.close()
