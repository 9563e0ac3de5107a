"""What the dashboard-load benchmark runs beside the API: a job that keeps training (as the worker
writes it), and real dashboard viewers (headless chromium pages on the job page), plus the CPU time
of process trees read from /proc.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, Page

from lorasp_core.train_config import ProgressEvent
from lorasp_service import jobs, step_metrics
from lorasp_service.settings import Settings

WORKER_ID = "bench-host:dashboard-load"
TOTAL_STEPS = 1_000_000  # never reached: the job runs for the whole benchmark
PAGE_TIMEOUT_MS = 60_000


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of one live process (Linux /proc); 0 for one that has gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(root: int) -> list[int]:
    """Every live process below `root` (chromium's renderers are grandchildren of Playwright's driver)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def tree_cpu_seconds(root: int, exclude: set[int]) -> float:
    return sum(process_cpu_seconds(pid) for pid in descendants(root) if pid not in exclude)


class RunningJob(threading.Thread):
    """Plays the worker of one claimed job: every `flush_seconds` it records the steps trained since
    the last flush in one transaction with its heartbeat (`jobs.record_metrics`, the worker's own
    write), as `JobProgressCallback` does on a job making `steps_per_second` steps."""

    def __init__(self, settings: Settings, job_id: str, attempt: int, steps_per_second: float) -> None:
        super().__init__(name="running-job", daemon=True)
        self.settings, self.job_id, self.attempt = settings, job_id, attempt
        self.steps_per_second, self.flush_seconds = steps_per_second, 1.0
        self.step, self.started = 0, time.monotonic()
        self._stopping = threading.Event()

    def write_steps(self, count: int) -> None:
        batch = []
        for _ in range(count):
            self.step += 1
            event = ProgressEvent(
                step=self.step,
                total_steps=TOTAL_STEPS,
                epoch=self.step / 1000,
                train_loss=2.0 / (1 + self.step / 500),
                learning_rate=1e-4,
                tokens_per_second=4000.0,
                elapsed_seconds=time.monotonic() - self.started,
                eta_seconds=(TOTAL_STEPS - self.step) / max(self.steps_per_second, 1e-9),
                trained_tokens=self.step * 512,
                train_mean_token_accuracy=min(0.99, 0.3 + self.step / 5000),
            )
            message = f"Step {self.step}/{TOTAL_STEPS}: training loss={event.train_loss:.4f}"
            batch.append((message, step_metrics.metrics_data(event)))
        held = jobs.record_metrics(self.settings, self.job_id, WORKER_ID, self.attempt, batch, None)
        if not held:
            raise RuntimeError(f"the benchmark lost the lease of {self.job_id}")

    def run(self) -> None:
        owed = 0.0
        while not self._stopping.wait(self.flush_seconds):
            owed += self.steps_per_second * self.flush_seconds
            whole = int(owed)
            if whole:
                self.write_steps(whole)
                owed -= whole

    def stop(self) -> None:
        self._stopping.set()
        self.join(10)


def chromium_path() -> str:
    executable = shutil.which("chromium")
    if not executable:
        raise RuntimeError("Debian's chromium package is needed (apt-get install chromium)")
    return executable


async def open_viewer(browser: Browser, base_url: str, key: str, job_id: str) -> Page:
    """A tab signed in as a person does, then on the job page, following it (curves drawn)."""
    page = await browser.new_page(viewport={"width": 1280, "height": 1000})
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    await page.goto(base_url + "/ui/")
    await page.fill("#api-key", key)
    await page.click("#sign-in button[type=submit]")
    await page.wait_for_selector("#jobs-table, #no-jobs")
    await page.goto(f"{base_url}/ui/#/jobs/{job_id}")
    await page.wait_for_function("document.getElementById('chart-loss')?.data?.length > 0")
    await page.evaluate("performance.setResourceTimingBufferSize(100000)")
    return page


@dataclass(frozen=True)
class ViewerReport:
    shown_step: int  # the step the page shows at the end of the phase
    requests: dict[str, int]  # the page's fetches during the phase, by kind


# Counts the page's fetches since `since` (performance.now() at the phase start), by what they are.
COUNT_REQUESTS = """(since) => {
  const kinds = {};
  for (const entry of performance.getEntriesByType('resource')) {
    if (entry.startTime < since) continue;
    const url = new URL(entry.name);
    const kind = url.searchParams.get('stream') === 'true' ? 'events stream'
      : url.pathname.endsWith('/events') ? 'events page' : url.pathname;
    kinds[kind] = (kinds[kind] || 0) + 1;
  }
  return kinds;
}"""


async def phase_start(page: Page) -> float:
    return float(await page.evaluate("performance.now()"))


async def viewer_report(page: Page, since: float) -> ViewerReport:
    text = await page.locator("#job-progress").inner_text()
    step = int(text.split()[1].split("/")[0]) if text.startswith("step ") else 0
    requests: dict[str, Any] = await page.evaluate(COUNT_REQUESTS, since)
    return ViewerReport(step, {str(k): int(v) for k, v in requests.items()})
