"""Helpers of the /ui dashboard's browser tests (the `browser` and `finished_job` fixtures are in
conftest.py): signing a tab in, reading what Plotly drew and what step the job page shows."""

from __future__ import annotations

import re

from e2e_stack import Stack
from playwright.sync_api import Browser, Page

TIMEOUT_MS = 30_000


def signed_in(browser: Browser, stack: Stack, key: str) -> Page:
    page = browser.new_page(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(stack.base_url + "/ui/")
    page.fill("#api-key", key)
    page.click("#sign-in button[type=submit]")
    page.wait_for_selector("#jobs-table, #no-jobs")
    # The key is kept in this tab's session storage only: not in the URL, not in a cookie.
    assert page.evaluate("sessionStorage.getItem('lorasp.apiKey')") == key
    assert key not in page.url and page.context.cookies() == []
    return page


def ensure_worker(stack: Stack) -> None:
    if not stack.live_workers():
        stack.start_worker()


def trace(page: Page, chart: str, name: str) -> dict[str, list[float]]:
    return dict(
        page.evaluate(
            "([chart, name]) => { const t = document.getElementById(chart).data.find((d) => d.name === name);"
            " return t ? {x: Array.from(t.x), y: Array.from(t.y)} : {x: [], y: []}; }",
            [chart, name],
        )
    )


def progress_step(page: Page) -> int:
    match = re.match(r"step (\d+)/", page.locator("#job-progress").inner_text())
    return int(match.group(1)) if match else 0
