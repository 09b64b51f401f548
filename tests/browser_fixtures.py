"""Browser tests' shared parts: Debian's Chromium driven by Playwright (never a downloaded
browser), one page per test in Lagos time, reading what the page drew from the data
attributes on ``#heat-state``, and screenshots a person can look at afterwards.

The session-scoped ``browser`` fixture lives in tests/conftest.py (it calls
``launch_browser`` here) so both browser test modules share one Chromium.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import OUTPUT

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
SCREENSHOTS = OUTPUT / "screenshots"
VIEWPORT = {"width": 1280, "height": 860}
WAIT_MS = 15_000


def launch_browser() -> Iterator[Any]:
    """Start Playwright and Debian's Chromium once; skip (not fail) where neither exists."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # pragma: no cover - the venv has it
        pytest.skip("playwright is not installed")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Page:
    """A Playwright page plus what the tests need to see: the sockets it opened, the
    messages it sent, uncaught script errors."""

    def __init__(self, page: Any, name: str):
        self.page = page
        self.name = name
        self.errors: list[str] = []
        self.sockets: list[str] = []  # URLs of every WebSocket the page opened
        self.socket_times: list[float] = []  # time.monotonic() of each opening
        self.sent: list[dict[str, Any]] = []  # JSON messages the page sent on them
        self.received: list[dict[str, Any]] = []  # and the ones it received
        self.closes: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on("websocket", self._on_socket)

    def _on_socket(self, ws: Any) -> None:
        self.sockets.append(ws.url)
        self.socket_times.append(time.monotonic())
        ws.on("framesent", lambda payload: self._record(self.sent, payload))
        ws.on("framereceived", lambda payload: self._record(self.received, payload))
        ws.on("close", lambda w: self.closes.append(w.url))

    @staticmethod
    def _record(into: list[dict[str, Any]], payload: Any) -> None:
        try:
            msg = json.loads(payload)
        except (TypeError, ValueError):
            return
        if isinstance(msg, dict):
            into.append(msg)

    def state(self) -> dict[str, str]:
        return self.page.evaluate("() => ({...document.getElementById('heat-state').dataset})")  # type: ignore[no-any-return]

    def wait_state(self, timeout_ms: int = WAIT_MS, **want: Any) -> dict[str, str]:
        """Wait until every given data-* attribute of #heat-state has the given value
        (compared as strings); a callable value is evaluated in Python on each change."""
        exact = {k: str(v) for k, v in want.items() if not callable(v)}
        checks = {k: v for k, v in want.items() if callable(v)}
        if exact:
            try:
                self.page.wait_for_function(
                    """(want) => { const d = document.getElementById('heat-state').dataset;
                        return Object.entries(want).every(([k, v]) => d[k] === v); }""",
                    arg=exact,
                    timeout=timeout_ms,
                )
            except Exception as exc:
                have = self.state()
                raise AssertionError(f"#heat-state never had {exact}; it has {have}") from exc
        if checks:
            deadline = time.monotonic() + timeout_ms / 1000
            while True:
                state = self.state()
                if all(k in state and check(state[k]) for k, check in checks.items()):
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(f"#heat-state never met {list(checks)}; it has {state}")
                self.page.wait_for_timeout(50)
        return self.state()

    def poll(self, predicate: Any, timeout_s: float = WAIT_MS / 1000) -> Any:
        """Like conftest.wait_until, but lets Playwright deliver page events meanwhile
        (the sync API only dispatches them inside its own calls, never in time.sleep)."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout_s}s (last: {value!r})")
            self.page.wait_for_timeout(50)

    def text(self, selector: str) -> str:
        return self.page.locator(selector).inner_text()  # type: ignore[no-any-return]

    def heat_pixels(self) -> int:
        """Pixels the heat canvas actually painted (alpha > 0): what a person sees."""
        return self.page.evaluate(  # type: ignore[no-any-return]
            """() => { const c = document.querySelector('canvas.leaflet-heatmap-layer');
                if (!c || !c.width || !c.height) return 0;
                const a = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                let n = 0; for (let i = 3; i < a.length; i += 4) if (a[i] > 0) n++;
                return n; }"""
        )

    def shot(self, step: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{self.name}-{step}.png"
        self.page.screenshot(path=str(path))
        return path


@pytest.fixture
def ui(browser: Any, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh page in Lagos time. Nothing leaves the machine: requests to any host but
    this one are refused, as base-map tiles are here anyway (the heat must not care)."""
    context = browser.new_context(viewport=VIEWPORT, timezone_id="Africa/Lagos", locale="en-GB")
    context.route(
        re.compile(r"^https?://(?!127\.0\.0\.1[:/]|localhost[:/])"), lambda route: route.abort()
    )
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name.removeprefix("test_"))
    wrapped = Page(context.new_page(), name)
    yield wrapped
    context.close()
    assert not wrapped.errors, f"uncaught script errors on the page: {wrapped.errors}"
