"""Static vs continuous batching with requests arriving while others decode, side by side in one run.

    python -m benchmarks.serving_batching --quick             # tiny-random-llama smoke run
    python -m benchmarks.serving_batching --out benchmarks/results/serving_batching.json  # smollm2, smoke

Requests arrive as a Poisson process (seeded: both modes see the same arrival times and requests),
spread over the adapters, greedy, `ignore_eos` so every request generates exactly max_tokens. Per mode:
throughput (requests/s over the whole run), p50/p99 time to first token and end-to-end latency.
Static batching (a window's requests decode together to the end) makes a request that arrives while a
batch decodes wait for that batch to finish; continuous batching lets it join at the next step.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import machine_description
from benchmarks.serving import PROMPTS, make_adapters, percentile
from lorasp_core.models import load_base_model
from lorasp_core.serving import BatchingMode, GenerationRequest, ServingEngine


def arrival_offsets(count: int, rate: float, seed: int) -> list[float]:
    """Seconds after the start at which each request arrives (exponential gaps)."""
    rng = random.Random(seed)
    offsets, now = [], 0.0
    for _ in range(count):
        offsets.append(now)
        now += rng.expovariate(rate)
    return offsets


def run_mode(
    mode: BatchingMode,
    model_name: str,
    paths: list[Path],
    requests: list[GenerationRequest],
    offsets: list[float],
) -> dict[str, float]:
    engine = ServingEngine(load_base_model, max_adapters=len(paths), batching=mode, batch_window_ms=20)
    try:
        for index, path in enumerate(paths):
            engine.load_adapter(f"adapter-{index}", path, model_name)
        engine.generate_batch([requests[0]])  # warm-up
        ttft: list[float] = [0.0] * len(requests)
        latency: list[float] = [0.0] * len(requests)
        started = time.perf_counter()

        def client(index: int) -> None:
            time.sleep(max(0.0, started + offsets[index] - time.perf_counter()))
            sent = time.perf_counter()
            first: float | None = None
            for chunk in engine.generate(requests[index]):
                if first is None and chunk.token_count > 0:
                    first = time.perf_counter() - sent
            latency[index] = time.perf_counter() - sent
            ttft[index] = first if first is not None else latency[index]

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(requests))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
    finally:
        engine.close()
    return {
        "requests_per_second": len(requests) / elapsed,
        "ttft_p50_s": statistics.median(ttft),
        "ttft_p99_s": percentile(ttft, 0.99),
        "latency_p50_s": statistics.median(latency),
        "latency_p99_s": percentile(latency, 0.99),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    model_name = "tiny-random-llama" if args.quick else args.model
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_adapters(model_name, Path(tmp), args.adapters, args.rank)
        requests = [
            GenerationRequest(
                model=model_name,
                adapter_id=f"adapter-{i % len(paths)}",
                prompt=PROMPTS[i % len(PROMPTS)],
                max_tokens=args.max_tokens,
                ignore_eos=True,
            )
            for i in range(args.requests)
        ]
        offsets = arrival_offsets(args.requests, args.rate, args.seed)
        modes: list[BatchingMode] = ["static", "continuous"]
        results = {mode: run_mode(mode, model_name, paths, requests, offsets) for mode in modes}
    return {
        "model": model_name,
        "adapters": args.adapters,
        "requests": args.requests,
        "max_tokens": args.max_tokens,
        "arrival_rate_per_s": args.rate,
        "torch_threads": torch.get_num_threads(),
        "machine": machine_description(),
        **results,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--quick", action="store_true", help="tiny-random-llama: a smoke run")
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--rate", type=float, default=2.0, help="mean arrivals per second")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    text = json.dumps(run(args), indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
