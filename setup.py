"""Ships the checkout's suites/ and baselines/ inside the wheel (as zobench/_bundled/), so a `pip install`
can run `zobench run quickstart` and put the papers' numbers beside ours. Metadata lives in pyproject.toml."""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SHIPPED = {"suites": ["*.yaml"], "baselines": ["*.csv", "*.md", "reference/*.json"]}


class BuildWithBundled(build_py):
    """build_py, then copy the shipped folders into the built package (the repository keeps one copy)."""

    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "zobench" / "_bundled"
        for folder, patterns in SHIPPED.items():
            for pattern in patterns:
                for src in sorted((ROOT / folder).glob(pattern)):
                    dest = target / folder / src.relative_to(ROOT / folder)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src, dest)


setup(cmdclass={"build_py": BuildWithBundled})
