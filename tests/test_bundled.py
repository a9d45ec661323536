"""Suites and published tables ship with zobench: found by name from any folder, a local file wins,
and the wheel's build step copies every one of them into the package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from zobench import bundled
from zobench.cli import app
from zobench.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def test_a_bundled_suite_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert bundled.find_suite("quickstart") == bundled.find_suite("quickstart.yaml") == REPO / "suites/quickstart.yaml"
    # the README's `suites/quickstart.yaml` works outside a checkout too
    assert bundled.find_suite("suites/quickstart.yaml") == REPO / "suites/quickstart.yaml"
    result = CliRunner().invoke(app, ["validate", "quickstart"])
    assert result.exit_code == 0 and "suite 'quickstart'" in result.output


def test_a_local_file_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "suites").mkdir()
    mine = tmp_path / "suites" / "quickstart.yaml"
    mine.write_text((REPO / "suites/quickstart.yaml").read_text().replace("name: quickstart", "name: mine"))
    assert bundled.find_suite("suites/quickstart.yaml") == Path("suites/quickstart.yaml")
    assert CliRunner().invoke(app, ["validate", "suites/quickstart.yaml"]).output.count("suite 'mine'") == 1
    (tmp_path / "quickstart").write_text("name: local\n")  # a bare name that is a local file is that file
    assert bundled.find_suite("quickstart") == Path("quickstart")


def test_an_unknown_name_is_a_user_error_with_a_hint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="did you mean 'quickstart'"):
        bundled.find_suite("quickstar")
    with pytest.raises(UserError, match="no such suite file"):
        bundled.find_suite("elsewhere/quickstart.yaml")  # a path in another folder is not a bundled name
    result = CliRunner().invoke(app, ["run", "quickstar", "--results", str(tmp_path / "r")])
    assert result.exit_code == 2 and "zobench suites" in result.output and not (tmp_path / "r").exists()


def test_suites_lists_every_bundled_suite():
    result = CliRunner().invoke(app, ["suites"])
    assert result.exit_code == 0
    names = {line.split()[0] for line in result.output.splitlines()[1:] if line.strip()}
    assert names == {p.stem for p in (REPO / "suites").glob("*.yaml")}


def test_published_tables_are_read_from_the_shipped_folder(monkeypatch):
    from zobench.report.papers import baselines_dir

    monkeypatch.delenv("ZOBENCH_BASELINES", raising=False)
    assert baselines_dir() == bundled.baselines_dir() == REPO / "baselines"


def test_the_build_ships_every_suite_and_table(tmp_path):
    """setup.py's build step (what `pip wheel` and `python -m build` run) copies suites/ and baselines/."""
    build = tmp_path / "lib"
    subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(build)], cwd=REPO, check=True,
                   capture_output=True)
    shipped = build / "zobench" / "_bundled"
    for folder, pattern in (("suites", "*.yaml"), ("baselines", "*.csv"), ("baselines", "reference/*.json")):
        expected = {p.relative_to(REPO / folder) for p in (REPO / folder).glob(pattern)}
        assert expected and {p.relative_to(shipped / folder) for p in (shipped / folder).glob(pattern)} == expected
    # the built package finds its own copy first
    probe = ("import zobench.bundled as b, zobench.report.papers as p; "
             "print(b.suites_dir()); print(p.baselines_dir())")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env={"PYTHONPATH": str(build)},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(shipped / "suites"), str(shipped / "baselines")]
