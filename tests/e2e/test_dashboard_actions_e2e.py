"""The dashboard's buttons in headless chromium against the live stack: the models page downloads an
adapter (the bytes the API serves) and loads, pins, unpins and unloads it in the serving cache, showing
its residency as the API reports it; a running job is paused and resumed from its page, which keeps
following it, then cancelled there."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from dashboard_pages import ensure_worker, progress_step, signed_in
from e2e_stack import Stack, chat_rows, wait_for_end, wait_until
from playwright.sync_api import Browser, expect

pytestmark = pytest.mark.services


def residency(stack: Stack, adapter_id: str) -> str:
    """What the API says of the adapter: "pinned", "yes" (resident) or "" (not loaded)."""
    with stack.client() as client:
        loaded = client.get("/adapters/loaded")
    assert loaded.status_code == 200, loaded.text
    state = next((item for item in loaded.json()["data"] if item["id"] == adapter_id), None)
    return "" if state is None else "pinned" if state["pinned"] else "yes"


def test_the_models_page_downloads_and_drives_the_serving_cache(
    browser: Browser, stack: Stack, finished_job: dict[str, Any], tmp_path: Path
) -> None:
    adapter_id = finished_job["fine_tuned_model"]
    page = signed_in(browser, stack, stack.api_key)
    page.goto(f"{stack.base_url}/ui/#/models")
    row = page.locator(f'tr[data-model-id="{adapter_id}"]')
    expect(row).to_have_count(1)

    with page.expect_download() as download:
        row.locator("button.download").click()
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    with stack.client() as client:
        served = client.get(f"/adapters/{adapter_id}/download")
    assert served.status_code == 200
    digest = hashlib.sha256(saved.read_bytes()).hexdigest()
    assert saved.name.endswith(".tar.gz") and digest == served.headers["x-checksum-sha256"]

    resident_row = page.locator(f'#resident tr[data-adapter-id="{adapter_id}"]')
    if residency(stack, adapter_id):  # another test's chat left it loaded: start from not resident
        row.locator("button.unload").click()
    expect(row.locator(".resident")).to_have_text("")
    for button, shown in (("load", "yes"), ("pin", "pinned"), ("pin", "yes"), ("unload", "")):
        row.locator(f"button.{button}").click()
        expect(row.locator(".resident")).to_have_text(shown)
        assert residency(stack, adapter_id) == shown  # the page shows what the serving cache holds
        expect(resident_row).to_have_count(1 if shown else 0)
        expect(row.locator("button.pin")).to_have_text("Unpin" if shown == "pinned" else "Pin")
    expect(row.locator("button.unload")).to_have_count(0)
    page.close()


def test_a_running_job_is_paused_resumed_and_cancelled_from_its_page(browser: Browser, stack: Stack) -> None:
    ensure_worker(stack)
    with stack.client() as client:
        file_id = stack.upload(client, chat_rows(16, words=40))
        job = stack.create_job(client, file_id, n_epochs=20, batch_size=2)  # 160 steps
    page = signed_in(browser, stack, stack.api_key)
    page.goto(f"{stack.base_url}/ui/#/jobs/{job['id']}")
    wait_until(lambda: progress_step(page), 120, "the job page to show a step", interval=0.2)

    page.locator("#job-pause").click()
    expect(page.locator("#job-status")).to_have_text("paused", timeout=60_000)
    assert stack.job_row(job["id"])["status"] == "paused"
    expect(page.locator("#job-pause")).to_have_count(0)
    paused_at = progress_step(page)
    assert 0 < paused_at < 160

    page.locator("#job-resume").click()
    expect(page.locator("#job-resume")).to_have_count(0)
    # The page kept its stream through the pause: the resumed job's steps arrive without a reload.
    wait_until(
        lambda: progress_step(page) > paused_at, 120, "the resumed job's step to advance", interval=0.2
    )
    expect(page.locator("#job-status")).to_have_text("running")

    page.locator("#job-cancel").click()
    with stack.client() as client:
        assert wait_for_end(client, job["id"], 60)["status"] == "cancelled"
    expect(page.locator("#job-status")).to_have_text("cancelled")
    expect(page.locator("#job-cancel")).to_have_count(0)
    page.close()
