"""Other packages' warnings and log records go to the run's run.log; zobench's own reach the console."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import zobench
from zobench.runlog import third_party_output_to

OURS = str(Path(zobench.__file__).parent / "runner.py")


def test_third_party_warnings_go_to_the_log_ours_to_the_console(tmp_path, capsys, monkeypatch):
    from transformers.utils import logging as hf_logging

    shown: list[str] = []  # what reaches Python's display of warnings (pytest replaces the console's)
    monkeypatch.setattr(warnings, "showwarning", lambda message, *args, **kwargs: shown.append(str(message)))

    log = tmp_path / "run" / "run.log"
    root = logging.getLogger("transformers")
    before = (root.handlers[:], root.propagate)
    with third_party_output_to(log):
        warnings.warn_explicit("`torch_dtype` is deprecated", FutureWarning, "/x/site-packages/transformers/a.py", 7)
        warnings.warn_explicit("checked by zobench", UserWarning, OURS, 1)
        hf_logging.get_logger("transformers.modeling_utils").warning("Some weights were not initialized")
        logging.getLogger("peft.tuners").warning("peft says so")
    err = capsys.readouterr().err
    text = log.read_text()
    assert "FutureWarning: `torch_dtype` is deprecated" in text and "torch_dtype" not in err
    assert "WARNING transformers.modeling_utils: Some weights were not initialized" in text
    assert "peft says so" in text and "Some weights" not in err and "peft says so" not in err
    assert shown == ["checked by zobench"] and "checked by zobench" not in text

    # after the run, everything is as it was
    hf_logging.get_logger("transformers.modeling_utils").warning("after the run")
    assert "after the run" not in log.read_text()
    assert (root.handlers, root.propagate) == before and warnings.showwarning is not None


def test_each_run_folder_gets_its_log(tmp_path):
    import yaml
    from typer.testing import CliRunner

    from zobench.cli import app

    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({
        "name": "logs", "defaults": {"steps": 2, "device": "cpu"},
        "grid": {"tasks": [{"name": "test-function", "function": "c"}], "methods": [{"name": "fo-sgd", "lr": 0.01}]},
    }))
    result = CliRunner().invoke(app, ["run", str(path), "--results", str(tmp_path / "r"), "--no-report"])
    assert result.exit_code == 0, result.output
    assert [p.name for p in (tmp_path / "r" / "logs").glob("*/run.log")] == ["run.log"]
