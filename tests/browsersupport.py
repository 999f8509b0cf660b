"""Driving Debian's Chromium with Playwright: the launch, a page watcher that
collects console errors, page errors and dialogs (which must never appear),
and an init script recording CSP violations."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page

CHROMIUM = "/usr/bin/chromium"
#: Without the networking flags Chromium tries to reach Google's hosts, which
#: this machine's closed network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

#: An init script (``watch(page, CSP_RECORDER)``) that records the page's CSP
#: violations in ``window.__csp`` (``page.evaluate("window.__csp") == []``).
CSP_RECORDER = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__csp.push(e.violatedDirective + " " + e.blockedURI);
});
"""


@contextmanager
def launch() -> Iterator[Browser]:
    """Headless Debian Chromium (never a downloaded browser)."""
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield instance
        finally:
            instance.close()


def watch(page: Page, init_script: str | None = None) -> tuple[list[str], list[str]]:
    """Collect ``page``'s console errors and page errors (first list) and the
    messages of any dialog, which is dismissed (second list); optionally add
    an init script (e.g. a CSP-violation recorder) before anything loads."""
    problems: list[str] = []
    dialogs: list[str] = []
    page.on(
        "console",
        lambda m: problems.append(f"console.{m.type}: {m.text}") if m.type == "error" else None,
    )
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))

    def on_dialog(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    if init_script is not None:
        page.add_init_script(script=init_script)
    return problems, dialogs


def screenshot_dir(tmp_path: Path) -> Path:
    """``BAMBID_SCREENSHOT_DIR`` to keep screenshots, else the test's tmp dir."""
    kept = os.environ.get("BAMBID_SCREENSHOT_DIR")
    if kept:
        Path(kept).mkdir(parents=True, exist_ok=True)
        return Path(kept)
    return tmp_path
