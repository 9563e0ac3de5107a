"""`lorasp jobs follow`: a progress bar fed by the job's live events; the fine-tuned model id at the end."""

from __future__ import annotations

import json
import sys
from typing import Any

import httpx
from tqdm import tqdm

from lorasp_client.connection import check_response
from lorasp_client.events import follow_events

# Exit statuses: 0 succeeded; a failed or cancelled job is 1, as an API error is.
JOB_NOT_SUCCEEDED = 1


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class ProgressBar:
    """step/total, losses, tokens/s and the server's ETA (it knows about validation time; tqdm's own
    rate-based estimate would not)."""

    def __init__(self) -> None:
        self.bar = tqdm(
            total=None,
            unit="step",
            file=sys.stderr,
            dynamic_ncols=True,
            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]",
        )

    def metrics(self, data: dict[str, Any]) -> None:
        total, step = data.get("total_steps"), data.get("step")
        if isinstance(total, int) and total != self.bar.total:
            self.bar.total = total
        if isinstance(step, int):
            self.bar.n = step
        shown: dict[str, str] = {}
        for name, label in (("train_loss", "loss"), ("valid_loss", "valid_loss")):
            if isinstance(data.get(name), int | float):
                shown[label] = f"{data[name]:.4f}"
        if isinstance(data.get("tokens_per_second"), int | float):
            shown["tok/s"] = f"{data['tokens_per_second']:.0f}"
        shown["eta"] = _duration(data.get("eta_seconds"))
        self.bar.set_postfix(shown, refresh=False)
        self.bar.refresh()

    def message(self, text: str) -> None:
        self.bar.write(text, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()


def follow_job(http: httpx.Client, job_id: str, as_json: bool) -> int:
    """Show the job's events until it is final; print its model id (stdout) or its error (stderr)."""
    bar = None if as_json else ProgressBar()
    try:
        for event in follow_events(http, job_id):
            if bar is None:
                print(json.dumps(event), flush=True)
            elif event.get("type") == "metrics" and isinstance(event.get("data"), dict):
                bar.metrics(event["data"])
            else:
                bar.message(f"[{event.get('level', 'info')}] {event.get('message', '')}")
    finally:
        if bar is not None:
            bar.close()
    response = http.get(f"/fine_tuning/jobs/{job_id}")
    check_response(response)
    job = response.json()
    if job["status"] == "succeeded":
        print(json.dumps(job) if as_json else job["fine_tuned_model"], flush=True)
        return 0
    error = job.get("error") or {}
    reason = error.get("message") or f"the job was {job['status']}"
    print(f"job {job_id} {job['status']}: {reason}", file=sys.stderr)
    return JOB_NOT_SUCCEEDED
