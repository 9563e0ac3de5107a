"""Serving under load: requests arriving as a Poisson process, static vs continuous batching.

    python -m benchmarks.serving_load --out benchmarks/results/serving_load.json   # smollm2, 8 adapters
    python -m benchmarks.serving_load --quick                                     # tiny-random-llama smoke

For each engine configuration (static batching, continuous batching, continuous in bf16) and each
arrival rate, the same seeded arrival times and requests (spread over 8 adapters) go to a fresh
in-process ServingEngine; each request is a thread that submits at its arrival time and reads its
stream. Reported per run: throughput (requests/s and generated tokens/s over the run), p50/p99 time to
first token and end-to-end latency. Target (issue 11): at the rate where static batching saturates,
continuous batching at least halves p99 latency at equal or better throughput.

Output lengths: every request generates exactly `--max-tokens` tokens by default (ignore_eos), the case
least favourable to continuous batching (a static batch never waits for a longer row). `--range-ratio R`
draws each request's length uniformly from [L(1-R), L(1+R)] (seeded, the same for every engine), as
vLLM's `benchmark_serving --random-range-ratio` does: the mean stays L, rows of a batch end at
different steps, as real answers do.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import machine_description
from benchmarks.serving import make_adapters, percentile, requests_for
from benchmarks.serving_load_report import length_range, write_serving_load_report
from lorasp_core.models import LoadedModel, load_base_model
from lorasp_core.serving import BatchingMode, GenerationRequest, ServingEngine


@dataclass(frozen=True)
class EngineConfig:
    name: str
    batching: BatchingMode
    dtype: str  # "float32" | "bfloat16"


CONFIGS = (
    EngineConfig("static-fp32", "static", "float32"),
    EngineConfig("continuous-fp32", "continuous", "float32"),
    EngineConfig("static-bf16", "static", "bfloat16"),
    EngineConfig("continuous-bf16", "continuous", "bfloat16"),
)


@dataclass
class Timing:
    arrival: float
    first_token: float | None = None
    finished: float | None = None
    tokens: int = 0
    error: str | None = None


def arrival_times(rate: float, count: int, seed: int) -> list[float]:
    """Seconds from the start at which each request arrives (exponential gaps: a Poisson process)."""
    rng, now, times = random.Random(seed), 0.0, []
    for _ in range(count):
        now += rng.expovariate(rate)
        times.append(now)
    return times


def output_lengths(mean: int, range_ratio: float, count: int, seed: int) -> list[int]:
    """Each request's generated tokens: `mean` for all, or uniform in [mean(1-R), mean(1+R)] (at least 1)."""
    if not 0.0 <= range_ratio < 1.0:
        raise ValueError(f"--range-ratio must be in [0, 1), got {range_ratio}")
    low, high = length_range(mean, range_ratio)
    rng = random.Random(seed + 1)  # its own stream: the arrivals stay those of a fixed-length run
    return [rng.randint(low, high) for _ in range(count)]


def base_loader(dtype: str) -> Callable[[str], LoadedModel]:
    torch_dtype = getattr(torch, dtype)
    return lambda name: load_base_model(name, dtype=torch_dtype)


def poisson_run(
    engine: ServingEngine, requests: list[GenerationRequest], arrivals: list[float]
) -> dict[str, Any]:
    timings = [Timing(arrival) for arrival in arrivals]
    start = time.perf_counter() + 0.05

    def client(request: GenerationRequest, timing: Timing) -> None:
        time.sleep(max(0.0, start + timing.arrival - time.perf_counter()))
        submitted = time.perf_counter()
        timing.arrival = submitted - start  # the real submit time (a late thread start is not latency)
        try:
            for chunk in engine.generate(request):
                if timing.first_token is None and chunk.token_count > 0:
                    timing.first_token = time.perf_counter() - start
                timing.tokens = chunk.token_count
        except Exception as error:  # an overloaded engine's refusal is a result, not a crash
            timing.error = type(error).__name__
        timing.finished = time.perf_counter() - start

    threads = [
        threading.Thread(target=client, args=(request, timing))
        for request, timing in zip(requests, timings, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done = [t for t in timings if t.error is None and t.finished is not None and t.first_token is not None]
    wall = max(t.finished or 0.0 for t in timings) - min(t.arrival for t in timings)
    ttft = [(t.first_token or 0.0) - t.arrival for t in done]
    latency = [(t.finished or 0.0) - t.arrival for t in done]
    return {
        "requests": len(requests),
        "completed": len(done),
        "refused": sum(1 for t in timings if t.error is not None),
        "wall_s": wall,
        "requests_per_s": len(done) / wall,
        "tokens_per_s": sum(t.tokens for t in done) / wall,
        "ttft_p50_s": percentile(ttft, 0.5),
        "ttft_p99_s": percentile(ttft, 0.99),
        "latency_p50_s": percentile(latency, 0.5),
        "latency_p99_s": percentile(latency, 0.99),
    }


def run_config(
    config: EngineConfig, model: str, paths: list[Path], rates: list[float], args: argparse.Namespace
) -> list[dict[str, Any]]:
    engine = ServingEngine(
        base_loader(config.dtype),
        max_adapters=len(paths),
        batch_window_ms=args.batch_window_ms,
        max_batch_size=args.max_batch_size,
        batching=config.batching,
    )
    adapter_ids = [f"adapter-{i}" for i in range(len(paths))]
    results = []
    try:
        for adapter_id, path in zip(adapter_ids, paths, strict=True):
            engine.load_adapter(adapter_id, path, model)
        engine.generate_batch(requests_for(model, adapter_ids[:1], 1, 4))  # warm-up
        lengths = output_lengths(args.max_tokens, args.range_ratio, args.requests, args.seed)
        requests = [
            replace(request, max_tokens=length)
            for request, length in zip(
                requests_for(model, adapter_ids, args.requests, args.max_tokens), lengths, strict=True
            )
        ]
        for rate in rates:
            figures = poisson_run(engine, requests, arrival_times(rate, args.requests, args.seed))
            results.append({"config": asdict(config), "rate": rate, **figures})
            print(json.dumps(results[-1]), flush=True)
    finally:
        engine.close()
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--quick", action="store_true", help="tiny-random-llama, few requests: a smoke run")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--rates", default="0.5,1,2,4", help="arrival rates, requests/s, comma-separated")
    parser.add_argument("--requests", type=int, default=32, help="requests per rate")
    parser.add_argument("--max-tokens", type=int, default=32, help="generated tokens per request (the mean)")
    parser.add_argument(
        "--range-ratio",
        type=float,
        default=0.0,
        help="spread of output lengths, as vLLM's --random-range-ratio",
    )
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-window-ms", type=float, default=50.0)
    parser.add_argument("--configs", default=",".join(c.name for c in CONFIGS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    model = "tiny-random-llama" if args.quick else args.model
    if args.quick:
        args.requests, args.max_tokens = 8, 8
    rates = [float(r) for r in args.rates.split(",")]
    chosen = [c for c in CONFIGS if c.name in args.configs.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_adapters(model, Path(tmp), args.adapters, 8)
        runs = [run for config in chosen for run in run_config(config, model, paths, rates, args)]
    results = {
        "model": model,
        "adapters": args.adapters,
        "requests_per_rate": args.requests,
        "max_tokens": args.max_tokens,
        "range_ratio": args.range_ratio,
        "torch_threads": torch.get_num_threads(),
        "machine": machine_description(),
        "runs": runs,
    }
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        command = "python -m benchmarks.serving_load " + " ".join(argv if argv is not None else sys.argv[1:])
        write_serving_load_report(results, args.out.with_suffix(".md"), command)


if __name__ == "__main__":
    main()
