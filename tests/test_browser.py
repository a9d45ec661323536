"""The report page in a real browser: headless Chromium renders it, takes a screenshot, logs no errors."""

from __future__ import annotations

import pytest
from report_helpers import built_report

from zobench.report.browser import chromium_path


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return built_report(tmp_path_factory.getbasetemp() / "report-suite")


def test_report_renders_in_chromium_without_console_errors(report, tmp_path):
    if chromium_path() is None:
        pytest.skip("Chromium not found at /usr/bin/chromium (apt-get install chromium, or set ZOBENCH_CHROMIUM)")
    pytest.importorskip("playwright", reason="playwright is in the test extra: pip install -e '.[test]'")
    from PIL import Image

    from zobench.report.browser import screenshot

    _, page = report
    pages = ((page, tmp_path / "suite.png", 0.01), (page.parent.parent / "index.html", tmp_path / "index.png", 0.001))
    for html, png, min_ink in pages:
        errors = screenshot(html, png)
        assert errors == [], errors
        with Image.open(png) as image:
            width, height = image.size
            assert width >= 1000 and height > 600
            # not a blank page: a share of the pixels carries ink (text, table rules, figures)
            hist = image.convert("L").histogram()
            ink = sum(hist[:240]) / (width * height)
            assert ink > min_ink, f"{png.name} looks blank ({ink:.2%} non-white)"
