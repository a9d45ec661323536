"""Reports: a frame of runs → tables, figures and a self-contained HTML page."""

from zobench.report.build import build_report
from zobench.report.frame import runs_frame

__all__ = ["build_report", "runs_frame"]
