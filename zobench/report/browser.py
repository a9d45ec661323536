"""Render a report page in headless Chromium (Debian's package) and screenshot it, collecting console errors.

Playwright drives the system browser (`executable_path`), so nothing is downloaded. Used by the browser
test and by `python -m zobench.report.browser PAGE.html OUT.png`.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")


def chromium_path() -> str | None:
    """$ZOBENCH_CHROMIUM, else the first Chromium found."""
    env = os.environ.get("ZOBENCH_CHROMIUM")
    if env:
        return env if Path(env).exists() else None
    for path in CANDIDATES:
        if Path(path).exists():
            return path
    return shutil.which("chromium")


def screenshot(page: Path | str, png: Path | str, width: int = 1540, full_page: bool = True) -> list[str]:
    """Open `page` (file), wait for it to load, save a PNG; return console errors and page errors."""
    from playwright.sync_api import sync_playwright

    exe = chromium_path()
    if exe is None:
        raise FileNotFoundError("no Chromium found; apt-get install chromium or set ZOBENCH_CHROMIUM")
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        try:
            tab = browser.new_page(viewport={"width": width, "height": 900})
            tab.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
            tab.on("pageerror", lambda e: errors.append(f"page error: {e}"))
            tab.on("requestfailed", lambda r: errors.append(f"request failed: {r.url} {r.failure}"))
            tab.goto(Path(page).resolve().as_uri(), wait_until="load")
            tab.wait_for_function("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
            tab.screenshot(path=str(png), full_page=full_page)
        finally:
            browser.close()
    return errors


if __name__ == "__main__":  # pragma: no cover
    problems = screenshot(sys.argv[1], sys.argv[2])
    print("\n".join(problems) or "no console errors")
    sys.exit(1 if problems else 0)
