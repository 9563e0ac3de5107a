"""The dashboard-load benchmark's markdown: phases side by side, the median of each kind compared."""

from __future__ import annotations

import statistics
from typing import Any


def _median(phases: list[dict[str, Any]], key: str) -> float:
    return round(float(statistics.median(phase[key] for phase in phases)), 3)


def _fetches(phase: dict[str, Any]) -> str:
    pages = phase["pages"]
    if not pages:
        return ""
    kinds: dict[str, int] = {}
    for page in pages:
        for kind, count in page["requests"].items():
            kinds[kind] = kinds.get(kind, 0) + count
    per_page = ", ".join(f"{kind} {count / len(pages):g}" for kind, count in sorted(kinds.items()))
    return per_page or "none completed"


def _lag(phase: dict[str, Any]) -> str:
    if not phase["pages"]:
        return ""
    return str(max(phase["last_step_written"] - page["shown_step"] for page in phase["pages"]))


def markdown(results: dict[str, Any]) -> str:
    phases, machine, settings = results["phases"], results["machine"], results["settings"]
    bare = [phase for phase in phases if phase["viewers"] == 0]
    watched = [phase for phase in phases if phase["viewers"] > 0]
    rps_ratio = _median(watched, "requests_per_second") / _median(bare, "requests_per_second")
    cpu_bare, cpu_watched = (_median(group, "server_cpu_ms_per_request") for group in (bare, watched))
    lines = [
        "# Dashboard load benchmark",
        "",
        f"`{results['command']}`: a live `lorasp serve --no-worker` on Postgres (loopback), one job running "
        f"({settings['steps_per_second']} steps/s, its metrics events flushed once a second as the worker "
        f"does, {settings['history_steps']} steps written before the pages open); `GET /v1/models` from "
        f"{settings['concurrency']} concurrent keep-alive httpx clients for {settings['phase_seconds']} s "
        f"per phase, with no dashboard and with {settings['viewers']} headless chromium tabs (Debian's "
        "package via Playwright) signed in on that job's page, following its SSE stream and redrawing "
        "its curves. The browser, the load client and the server share the machine.",
        "",
        "| viewers | req/s | p50 ms | p99 ms | errors | server CPU ms/request | server CPU s | "
        "browser CPU s | steps written | max page lag (steps) | completed fetches per page |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        *(
            f"| {p['viewers']} | {p['requests_per_second']} | {p['p50_ms']} | {p['p99_ms']} | "
            f"{p['errors']} | "
            f"{p['server_cpu_ms_per_request']} | {p['server_cpu_seconds']} | {p['browser_cpu_seconds']} | "
            f"{p['steps_written']} | {_lag(p)} | {_fetches(p)} |"
            for p in phases
        ),
        "",
        f"**req/s with {settings['viewers']} viewers / without: {rps_ratio:.3f}** (medians of "
        f"{len(watched)} and {len(bare)} phases). Server CPU per `GET /v1/models` request: "
        f"{cpu_bare} ms without, {cpu_watched} ms with the viewers (which includes serving their streams).",
        "",
        "Page lag is the last step written minus the step the page shows at the end of the phase (the "
        "worker flushes once a second, so up to a second's steps is expected). A page's open event stream "
        "is one long fetch, counted only once it completes: `events stream` 0 means it stayed open.",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB, Python "
        f"{machine['python']}, {machine['platform']}; load average at the end "
        f"{[round(x, 2) for x in machine['load_average_at_end']]}.",
    ]
    if results.get("note"):
        lines += ["", f"Note: {results['note']}"]
    return "\n".join(lines) + "\n"
