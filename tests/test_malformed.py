"""The malformed-suite corpus (tests/malformed/): every bad suite ends in one message that names the file,
the line and the field, exit code 2, and nothing written — for `run` and `validate` alike."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from zobench.cli import app

CORPUS = Path(__file__).parent / "malformed"
EXPECT: dict[str, list[str]] = yaml.safe_load((CORPUS / "expectations.yaml").read_text())


def _tree(root: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(root)), p.stat().st_mtime_ns) for p in root.rglob("*"))


def test_corpus_matches_expectations():
    cases = sorted(p.name for p in CORPUS.glob("*.yaml") if p.name != "expectations.yaml")
    assert cases == sorted(EXPECT)
    assert len(cases) >= 20


@pytest.mark.parametrize("name", sorted(EXPECT))
def test_malformed_suite_one_message_exit_2_nothing_written(name, tmp_path, monkeypatch):
    if "gpu" in name and torch.cuda.is_available():
        pytest.skip("a GPU is visible here, so asking for one is not an error")
    monkeypatch.chdir(tmp_path)  # relative model paths resolve from here, and nothing may appear here
    path = CORPUS / name
    corpus_before = _tree(CORPUS)
    messages = []
    for args in (["run", str(path), "--results", "results", "--reports", "reports"], ["validate", str(path)]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, (args, result.output, result.exception)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), result.output
        messages.append(lines[0])
    message = messages[0]
    assert messages[1] == message  # validate says exactly what run says
    assert message.startswith(f"error: {path}"), message
    for part in EXPECT[name]:
        assert part in message, f"{part!r} not in {message!r}"
    assert list(tmp_path.iterdir()) == []  # no results, no reports, nothing else
    assert _tree(CORPUS) == corpus_before


PAYLOAD = "{{ review }}{{ lipsum.__globals__['os'].popen('touch X').read() }}"  # issue 22's


@pytest.mark.parametrize("template, refused_by", [
    (PAYLOAD, "reaches for '__globals__'"),  # named outright: refused from the template's text
    ("{{ review }}{{ (lipsum|attr('__glo' ~ 'bals__'))['os'].popen('touch X').read() }}", "sandbox"),  # built
])
def test_a_template_cannot_run_code(tmp_path, monkeypatch, template, refused_by):
    """A shared suite's template reaching for Python is refused at `validate` (exit 2) and at `run`, and the
    command it carries never runs: no file X appears. The second payload builds the name at render time, so
    only jinja2's sandbox can stop it (planning renders the template on the first row of each file)."""
    import shutil

    monkeypatch.chdir(tmp_path)
    shutil.copytree(CORPUS / "custom-data", tmp_path / "custom-data")
    suite = yaml.safe_load((CORPUS / "49-template-escapes-the-sandbox.yaml").read_text())
    suite["grid"]["tasks"][0]["template"] = template
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    for args in (["validate", "suite.yaml"], ["run", "suite.yaml", "--results", "r", "--reports", "p"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "grid.tasks[0].template" in result.output and refused_by in result.output, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["custom-data", "suite.yaml"]  # no X, no results


def test_the_sandbox_stops_a_template_at_render_time_too(tmp_path, monkeypatch):
    """Planning is not the only guard: a run renders every row in the sandbox (a later row, a file changed
    after planning)."""
    from zobench.errors import UserError

    monkeypatch.chdir(tmp_path)
    from zobench.tasks.custom import _env, _render

    tpl = _env.from_string("{{ (lipsum|attr('__glo' ~ 'bals__'))['os'].popen('touch X').read() }}")
    with pytest.raises(UserError, match="refused by jinja2's sandbox"):
        _render(tpl, {"review": "fine"}, "row 1")
    assert _render(_env.from_string("{{ review }} It was"), {"review": "fine"}, "row 1") == "fine It was"
    assert list(tmp_path.iterdir()) == []
