"""The /ui dashboard in a real browser (Debian's chromium, driven by Playwright; nothing downloaded)
against the live stack: sign in with a key, a finished job's curves drawn from its real events, a running
job's progress advancing live and a cancel from the UI, one streamed playground turn, and another tenant
seeing none of it. The job page's screenshot is saved as a test artifact (and, with
LORASP_UPDATE_DOCS_IMAGES=1, as docs/images/job-page.png)."""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import Any

import pytest
from dashboard_pages import ensure_worker, progress_step, signed_in, trace
from e2e_stack import REPO_ROOT, Stack, chat_rows, events_of, run_cli, wait_for_end, wait_until
from playwright.sync_api import Browser, expect

pytestmark = pytest.mark.services

ARTIFACTS = Path(os.environ.get("LORASP_TEST_ARTIFACTS", REPO_ROOT / "test-artifacts"))
DOCS_IMAGE = REPO_ROOT / "docs" / "images" / "job-page.png"


def test_a_finished_job_page_draws_every_step_from_its_events(
    browser: Browser, stack: Stack, finished_job: dict[str, Any], tmp_path: Path
) -> None:
    with stack.client() as client:
        metrics = [
            event["data"]
            for event in reversed(events_of(client, finished_job["id"]))
            if event["type"] == "metrics"
        ]
    steps = [data["step"] for data in metrics]
    assert steps == list(range(1, 13))
    page = signed_in(browser, stack, stack.api_key)
    page.click(f'a[href="#/jobs/{finished_job["id"]}"]')
    page.wait_for_function("document.getElementById('chart-loss')?.data?.length > 0")
    loss = trace(page, "chart-loss", "train_loss")
    assert loss["x"] == steps
    assert loss["y"] == pytest.approx([data["train_loss"] for data in metrics])
    valid_steps = [data["step"] for data in metrics if "valid_loss" in data]
    assert valid_steps and trace(page, "chart-loss", "valid_loss")["x"] == valid_steps
    full_steps = [data["step"] for data in metrics if "full_valid_loss" in data]
    assert full_steps and trace(page, "chart-loss", "full_valid_loss")["x"] == full_steps
    accuracy = trace(page, "chart-accuracy", "train_mean_token_accuracy")
    assert accuracy["y"] == pytest.approx([data["train_mean_token_accuracy"] for data in metrics])
    assert trace(page, "chart-accuracy", "valid_mean_token_accuracy")["x"] == valid_steps
    assert trace(page, "chart-lr", "learning_rate")["x"] == steps
    # What Plotly drew: one SVG line path per trace, with a vertex per point of the training loss.
    path = page.locator("#chart-loss .scatterlayer .trace .js-line").first.get_attribute("d") or ""
    assert len(re.findall(r"[ML]", path)) == len(steps)
    expect(page.locator("#job-status")).to_have_text("succeeded")
    expect(page.locator("#job-progress")).to_have_text("step 12/12")
    expect(page.locator("#checkpoints-table")).to_contain_text(finished_job["fine_tuned_model"])
    shot = page.screenshot(full_page=False)
    (tmp_path / "job-page.png").write_bytes(shot)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "job-page.png").write_bytes(shot)
    if os.environ.get("LORASP_UPDATE_DOCS_IMAGES") == "1":
        DOCS_IMAGE.write_bytes(shot)
    page.close()


def test_a_running_job_advances_live_and_is_cancelled_from_the_ui(browser: Browser, stack: Stack) -> None:
    ensure_worker(stack)
    with stack.client() as client:
        file_id = stack.upload(client, chat_rows(16, words=40))
        job = stack.create_job(client, file_id, n_epochs=20, batch_size=2)  # 160 steps
    page = signed_in(browser, stack, stack.api_key)
    page.goto(f"{stack.base_url}/ui/#/jobs/{job['id']}")
    # The page follows the SSE stream: the step it shows moves on without a reload.
    first = wait_until(lambda: progress_step(page), 120, "the job page to show a step", interval=0.2)
    wait_until(lambda: progress_step(page) > first, 60, "the job page's step to advance", interval=0.2)
    assert len(trace(page, "chart-loss", "train_loss")["x"]) >= first
    page.goto(f"{stack.base_url}/ui/#/jobs")
    row = page.locator(f'tr[data-job-id="{job["id"]}"]')
    expect(row.locator(".progress")).to_have_text(re.compile(r"^\d+/160$"))
    row.locator("button.cancel").click()
    with stack.client() as client:
        assert wait_for_end(client, job["id"], 60)["status"] == "cancelled"
    expect(row.locator(".status")).to_have_text("cancelled")
    expect(row.locator("button.cancel")).to_have_count(0)
    page.close()


def test_the_playground_streams_one_chat_turn(browser: Browser, stack: Stack) -> None:
    page = signed_in(browser, stack, stack.api_key)
    page.goto(f"{stack.base_url}/ui/#/playground")
    page.select_option("#playground-model", "tiny-random-llama")
    page.fill("#playground-temperature", "0")
    page.fill("#playground-max-tokens", "8")
    page.fill("#playground-input", "great great great")
    with page.expect_request("**/v1/chat/completions") as sent:
        page.click("#playground-send")
    assert sent.value.post_data_json["stream"] is True
    reply = page.locator("#playground-log .message.assistant[data-done=true]")
    expect(reply).to_have_count(1)
    expect(page.locator("#playground-error")).to_have_text("")
    body = {
        "model": "tiny-random-llama",
        "temperature": 0,
        "max_tokens": 8,
        "messages": [{"role": "user", "content": "great great great"}],
    }
    with stack.client() as client:
        answer = client.post("/chat/completions", json=body)
    assert answer.status_code == 200, answer.text
    expected = answer.json()["choices"][0]["message"]["content"]
    assert expected and reply.text_content() == expected  # greedy: the streamed turn is the same text
    page.close()


def test_another_tenant_sees_none_of_the_first_tenants_jobs(
    browser: Browser, stack: Stack, finished_job: dict[str, Any]
) -> None:
    other_key = run_cli(stack.env, "admin", "create-key", "--tenant", f"other-{secrets.token_hex(4)}")
    page = signed_in(browser, stack, other_key.strip().splitlines()[-1])
    expect(page.locator("#no-jobs")).to_be_visible()
    page.goto(f"{stack.base_url}/ui/#/jobs/{finished_job['id']}")
    expect(page.locator("#page-error")).to_contain_text(finished_job["id"])
    page.goto(f"{stack.base_url}/ui/#/models")
    expect(page.locator("#models-table")).not_to_contain_text(finished_job["fine_tuned_model"])
    page.goto(f"{stack.base_url}/ui/#/files")
    expect(page.locator("main")).to_contain_text("No files.")
    page.close()
