"""The suites and published tables that ship with zobench, so a `pip install` can run and compare.

A wheel carries them under `zobench/_bundled/` (setup.py copies the checkout's `suites/` and `baselines/`
there at build time); a checkout or an editable install reads the top-level folders themselves, so the
repository keeps one copy and `suites/x.yaml` paths keep working.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from zobench.errors import UserError, did_you_mean

PACKAGE = Path(__file__).resolve().parent
BUNDLED = PACKAGE / "_bundled"  # filled only in a built wheel
CHECKOUT = PACKAGE.parent  # the repository root when zobench is run from a checkout


def _folder(name: str) -> Path | None:
    for root in (BUNDLED, CHECKOUT):
        if (root / name).is_dir():
            return root / name
    return None


def suites_dir() -> Path | None:
    """Where the bundled suites are: the wheel's copy, else the checkout's suites/; None if neither."""
    return _folder("suites")


def baselines_dir() -> Path | None:
    """Where the published tables are: the wheel's copy, else the checkout's baselines/; None if neither."""
    return _folder("baselines")


def bundled_suites() -> dict[str, Path]:
    """Suite name (file stem) → file, sorted by name."""
    folder = suites_dir()
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))} if folder else {}


def describe(path: Path) -> str:
    """A suite's description, on one line (empty when it has none or does not parse)."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return ""
    text = data.get("description", "") if isinstance(data, dict) else ""
    return " ".join(str(text or "").split())


def find_suite(arg: Path | str) -> Path:
    """A suite argument → its file: an existing path wins; else a bundled suite by name (with or without
    .yaml). Raises UserError naming the bundled suites when it is neither."""
    path = Path(arg)
    if path.exists():
        return path
    suites = bundled_suites()
    name = path.name.removesuffix(".yaml").removesuffix(".yml")
    if path.parent == Path(".") or path.parent == Path("suites"):
        if name in suites:
            return suites[name]
    hint = did_you_mean(name, suites) if suites else "no suites are bundled with this installation"
    raise UserError(f"{arg}: no such suite file, and no bundled suite named '{name}'; give a path to a "
                    f"suite file or a bundled suite's name (`zobench suites` lists them): {hint}")


def shipped(path: Path) -> bool:
    """Whether a suite file is the wheel's own copy: its relative data_dir then points inside site-packages,
    where no task data is, so the data comes from --data-dir."""
    return path.resolve().is_relative_to(BUNDLED.resolve())
