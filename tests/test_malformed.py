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
