"""The admin analytics page in a real headless Chromium (Debian's, driven by
Playwright) against a real daemon subprocess: an admin created with
``bambidctl`` signs in, follows the admin page's link, and sees every chart
drawn (styled by analytics.css, values in tooltips), a hostile trigger name
shown as text, and no console error, page error, dialog or CSP violation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from playwright.sync_api import Browser

from tests.browsersupport import CSP_RECORDER, watch
from tests.daemon import Daemon, daemon_environment
from tests.test_ctl import BAMBIDCTL

pytestmark = pytest.mark.slow

WAIT = 15000  # ms
PASSWORD = "correct horse battery"
HOSTILE = '<img src=x onerror="alert(1)">'

#: Writes what the charts count with the daemon's own storage, before it starts.
#: argv: the database file, the hostile trigger name.
SEED = """
import sys
from pathlib import Path
from twisted.internet import defer, task
from bambid.models import AIInteraction, AudioInteraction, NewChatMessage, UserInteraction
from bambid.storage.sqlite import SQLiteStorage

async def main(reactor):
    storage = SQLiteStorage(Path(sys.argv[1]), reactor)
    await storage.open()
    now = reactor.seconds()
    try:
        for n in range(12):
            then = now - n * 7200
            await storage.append_chat_message(NewChatMessage("lobby", "root", "hi", then))
            error = "timeout" if n % 4 == 0 else None
            await storage.record(AIInteraction("root", "chat", "q", "a", 1.0, then, "c", error))
            await storage.record(AudioInteraction("root", "tts", "af", then, {"error": None}))
        for name in ("relax", "relax", "focus", sys.argv[2]):
            await storage.record(AudioInteraction("root", "trigger", name, now))
        await storage.record(UserInteraction("root", "profile.view", now))
        await storage.add_xp("root", 3000)
    finally:
        await storage.close()

task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor)))
"""

#: Per chart: its svg's drawn size, how many bars are drawn with a height or
#: width, the bars' fill colour, and the tooltips.
CHARTS_JS = """
() => [...document.querySelectorAll("figure.analytics-chart")].map((figure) => {
  const svg = figure.querySelector("svg");
  const box = svg.getBoundingClientRect();
  const bars = [...svg.querySelectorAll("rect.chart-bar")];
  return {
    id: figure.id,
    width: box.width,
    height: box.height,
    drawn: bars.filter((b) => b.getBBox().width > 0 && b.getBBox().height > 0).length,
    fill: bars.length ? getComputedStyle(bars[0]).fill : "",
    tooltips: [...svg.querySelectorAll("rect > title")].map((t) => t.textContent),
    tableHidden: getComputedStyle(figure.querySelector("table")).position === "absolute",
  };
})
"""


def test_admin_sees_the_charts(browser: Browser, tmp_path: Path) -> None:
    config = tmp_path / "bambid.toml"
    data = tmp_path / "data"
    data.mkdir()
    config.write_text(
        f'[storage]\nuri = "sqlite:///{data}/bambid.sqlite3"\n[auth]\nadmins = ["root"]\n',
        encoding="utf-8",
    )
    env = daemon_environment()
    created = subprocess.run(
        [str(BAMBIDCTL), "--config", str(config), "user", "create", "root"],
        input=PASSWORD,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert created.returncode == 0, created.stderr
    seeded = subprocess.run(
        [sys.executable, "-c", SEED, str(data / "bambid.sqlite3"), HOSTILE],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert seeded.returncode == 0, seeded.stderr

    workdir = tmp_path / "daemon"
    workdir.mkdir()
    with Daemon.start(workdir, ("--config", str(config))) as daemon:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        problems, dialogs = watch(page, CSP_RECORDER)
        page.goto(daemon.http + "/admin/analytics?days=7")
        page.wait_for_url("**/login?next=/admin/analytics", timeout=WAIT)
        page.fill("#login-username", "root")
        page.fill("#login-password", PASSWORD)
        page.click("#login-form button[type=submit]")
        page.wait_for_url("**/admin/analytics", timeout=WAIT)
        page.goto(daemon.http + "/admin")
        page.click("#analytics-link")
        page.wait_for_selector("figure#chart-levels svg", timeout=WAIT)

        charts = {chart["id"]: chart for chart in page.evaluate(CHARTS_JS)}
        assert len(charts) == 9
        for chart in charts.values():
            assert chart["width"] > 200 and chart["height"] > 50, chart
            assert chart["tableHidden"], chart  # the table is for screen readers
        for drawn in ("chart-chat", "chart-companion", "chart-speech", "chart-triggers"):
            assert charts[drawn]["drawn"] > 0, charts[drawn]
            assert charts[drawn]["fill"] not in ("", "rgb(0, 0, 0)"), "analytics.css applies"
        assert "relax: 2" in charts["chart-triggers"]["tooltips"]
        assert f"{HOSTILE}: 1" in charts["chart-triggers"]["tooltips"]
        assert charts["chart-levels"]["tooltips"][2] == "Level 2 (2500 XP, unlocks collar): 1"
        assert page.locator("#stat-companion-total").inner_text() == "12"
        assert page.locator("#stat-companion-error-rate").inner_text() == "25.0 %"
        assert page.locator("figure#chart-triggers img").count() == 0
        page.screenshot(path=str(tmp_path / "analytics.png"), full_page=True)

        assert page.evaluate("window.__csp") == []
        assert (problems, dialogs) == ([], [])
        page.close()
