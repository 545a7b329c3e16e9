"""/docs and /redoc render in a real browser with no way out of this machine.

A district's intranet has no internet: pages whose scripts come from a CDN stay blank there.
The browser here may only reach the served app (127.0.0.1); every other request is
blocked.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import _unavailable
from tests.servers import ServedApp

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def loopback_only(outside: list[str]) -> Callable[[Any], None]:
    """A Playwright route handler: requests to the served app (127.0.0.1) go on; any other
    is blocked and its URL put in ``outside`` (an intranet has no internet)."""
    def handle(route: Any) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    return handle


@pytest.mark.parametrize("backend_name", ["sqlite"], indirect=True)
@pytest.mark.parametrize("page_path", ["/docs", "/redoc"])
def test_docs_page_renders_without_internet(served: ServedApp, page_path: str) -> None:
    from playwright.sync_api import Route, expect, sync_playwright

    if not Path(CHROMIUM).exists():
        _unavailable("Debian's chromium (.ci/run installs it)",
                     FileNotFoundError(CHROMIUM))
    needed_outside: list[str] = []

    def only_loopback(route: Route) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
            return
        # ReDoc's "API docs by Redocly" badge is an image from its CDN: cosmetic, and a
        # blocked image breaks nothing. Scripts, styles, fonts and data must all be ours.
        if route.request.resource_type != "image":
            needed_outside.append(route.request.url)
        route.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.route("**/*", only_loopback)
            page.goto(served.base_url + page_path)
            # The operations come from openapi.json, rendered by the page's own scripts.
            expect(page.get_by_text("/api/v1/orders/{order_no}/sync").first).to_be_visible(
                timeout=20_000)
            expect(page.locator("body")).to_contain_text("/api/v1/residents/lookup")
        finally:
            browser.close()
    assert needed_outside == [], f"{page_path} needs things from outside: {needed_outside}"
