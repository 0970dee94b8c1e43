"""A local HTML file in headless Chromium with every non-file request aborted (the offline check
shared by the analysis page and the report tests)."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest


@dataclass
class PageLog:
    requests: list[str] = field(default_factory=list)  # every non-file URL the page tried to fetch
    errors: list[str] = field(default_factory=list)  # uncaught script errors
    dialogs: list[str] = field(default_factory=list)  # alert()/confirm() messages (a script that ran)


@contextmanager
def offline_page(path: Path, viewport: tuple[int, int] = (1300, 900)):
    """Yield (page, log) once the page has loaded and its first plotly figure has drawn. Skips
    without chromium on a laptop, fails in CI (``CI=true``), where `make test` installs it."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is missing in CI: `make test` installs it (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    log = PageLog()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
        try:
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})

            def block(route):
                if not route.request.url.startswith("file://"):
                    log.requests.append(route.request.url)
                    return route.abort()
                return route.continue_()

            page.route("**/*", block)
            page.on("pageerror", lambda e: log.errors.append(str(e)))
            page.on("dialog", lambda d: (log.dialogs.append(d.message), d.dismiss()))
            page.goto(Path(path).as_uri(), wait_until="load")
            page.wait_for_selector(".main-svg", timeout=60_000)
            yield page, log
        finally:
            browser.close()
