"""The markdown report of benchmarks.serving_load: a row per (engine, rate), and the issue's targets."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _row(run: dict[str, Any]) -> str:
    return (
        f"| {run['config']['name']} | {run['rate']:g} | {run['completed']}/{run['requests']} | "
        f"{run['requests_per_s']:.2f} | {run['tokens_per_s']:.1f} | {run['ttft_p50_s']:.2f} | "
        f"{run['ttft_p99_s']:.2f} | {run['latency_p50_s']:.2f} | {run['latency_p99_s']:.2f} |"
    )


def saturation_rate(static_runs: list[dict[str, Any]]) -> float | None:
    """The lowest rate at which static batching no longer keeps up: its throughput falls below 90%
    of the offered rate (requests pile up); None if it kept up at every rate."""
    for run in sorted(static_runs, key=lambda r: r["rate"]):
        if run["requests_per_s"] < 0.9 * run["rate"]:
            return float(run["rate"])
    return None


def target_lines(runs: list[dict[str, Any]]) -> list[str]:
    by = {(r["config"]["name"], r["rate"]): r for r in runs}
    static = [r for r in runs if r["config"]["name"] == "static-fp32"]
    rate = saturation_rate(static)
    if rate is None:
        if not static:
            return ["- static batching was not run: no target to compare."]
        rate = max(r["rate"] for r in static)
        lines = [f"- Static batching kept up at every rate; compared at the highest, {rate:g} req/s."]
    else:
        lines = [f"- Static batching saturates at {rate:g} req/s (throughput < 90% of the offered rate)."]
    s, c = by.get(("static-fp32", rate)), by.get(("continuous-fp32", rate))
    if s is None or c is None:
        return [*lines, "- continuous batching was not run at that rate."]
    ratio = c["latency_p99_s"] / s["latency_p99_s"]
    throughput = c["requests_per_s"] / s["requests_per_s"]
    met = ratio <= 0.5 and throughput >= 0.98
    lines.append(
        f"- Target: continuous p99 latency <= 0.5x static at equal or better throughput: "
        f"{c['latency_p99_s']:.2f} vs {s['latency_p99_s']:.2f} s = {ratio:.2f}x, throughput "
        f"{throughput:.2f}x: {'met' if met else 'MISSED'}."
    )
    return lines


def length_range(mean: int, range_ratio: float) -> tuple[int, int]:
    """The output lengths a run draws from: [mean(1-R), mean(1+R)], at least 1 (vLLM's random range)."""
    return max(1, round(mean * (1 - range_ratio))), round(mean * (1 + range_ratio))


def _lengths(results: dict[str, Any]) -> str:
    mean, ratio = results["max_tokens"], results.get("range_ratio", 0.0)
    if not ratio:
        return f"{mean} generated tokens each"
    low, high = length_range(mean, ratio)
    return (
        f"generated tokens uniform in [{low}, {high}] per request (mean {mean}; vLLM's random range "
        f"ratio {ratio:g})"
    )


def ratio_lines(runs: list[dict[str, Any]], dtype: str) -> list[str]:
    """Continuous vs static in one dtype at every rate both ran: p99 latency and throughput ratios."""
    by = {(r["config"]["name"], r["rate"]): r for r in runs}
    lines = []
    for (name, rate), static in sorted(by.items(), key=lambda item: item[0][1]):
        continuous = by.get((f"continuous-{dtype}", rate))
        if name != f"static-{dtype}" or continuous is None:
            continue
        lines.append(
            f"- {rate:g} req/s: continuous p99 {continuous['latency_p99_s'] / static['latency_p99_s']:.2f}x "
            f"static, throughput {continuous['requests_per_s'] / static['requests_per_s']:.2f}x."
        )
    return lines


def write_serving_load_report(results: dict[str, Any], path: Path, command: str) -> None:
    machine = results["machine"]
    runs = results["runs"]
    out = [
        "# Serving under load: static vs continuous batching",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB, "
        f"GPU: {machine['gpu'] or 'none'}; torch {machine['torch']} ({results['torch_threads']} threads).",
        "",
        f"Model {results['model']}, {results['adapters']} LoRA-SP adapters (r=8), "
        f"{results['requests_per_rate']} requests per rate arriving as a Poisson process (same seeded "
        f"arrivals for every engine), {_lengths(results)} (ignore_eos), greedy.",
        "",
        "| engine | rate (req/s) | done | req/s | tokens/s | TTFT p50 (s) | TTFT p99 (s) | "
        "latency p50 (s) | latency p99 (s) |",
        "|---|---|---|---|---|---|---|---|---|",
        *[_row(run) for run in runs],
        "",
        "## Targets",
        "",
        *target_lines(runs),
        "",
        "At every rate (fp32):",
        "",
        *ratio_lines(runs, "fp32"),
        "",
        "At every rate (bf16):",
        "",
        *(ratio_lines(runs, "bf16") or ["- not run."]),
        "",
        f"Command: `{command}`.",
    ]
    path.write_text("\n".join(out) + "\n")
