"""Serving benchmark: hot-load, adapter overhead, and mixed-adapter batching vs the alternatives.

    python -m benchmarks.serving --out benchmarks/results/serving.json     # smollm2-135m-instruct (lead)
    python -m benchmarks.serving --quick                                  # tiny-random-llama smoke run

Everything runs on CPU in one process, side by side: hot-load time of one r=8 LoRA-SP adapter onto
the resident base; first-token latency and tokens/s with an adapter vs the bare base; requests/s for
N concurrent requests spread over 8 adapters with (a) mixed-adapter batching, (b) one adapter at a
time (a batch per adapter), (c) PEFT's own PeftModel with set_adapter switching.
Targets: hot-load < 50 ms; adapter tokens/s overhead < 10%; mixed batching >= 3x one-at-a-time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel

from lorasp_core.adapters import apply_lorasp, save_adapter
from lorasp_core.config import LoraSPConfig
from lorasp_core.models import load_base_model
from lorasp_core.serving import GenerationRequest, ServingEngine
from lorasp_core.serving.openmp_threads import run_in_short_lived_thread

PROMPTS = [
    "Explain why the sky is blue in one sentence.",
    "Write a haiku about autumn.",
    "List three uses of a paperclip.",
    "What is the capital of France?",
]


def make_adapters(model_name: str, directory: Path, count: int, rank: int) -> list[Path]:
    """`count` LoRA-SP adapters with random trainable B entries (so they differ), saved in PEFT format.

    Built on a thread that ends with it: the benchmark's own thread keeps no OpenMP team that would slow
    the engine's decoding thread (lorasp_core/serving/openmp_threads.py), as an API process keeps none.
    """
    return run_in_short_lived_thread(lambda: _make_adapters(model_name, directory, count, rank))


def _make_adapters(model_name: str, directory: Path, count: int, rank: int) -> list[Path]:
    paths = []
    for index in range(count):
        model = apply_lorasp(
            load_base_model(model_name).model, LoraSPConfig(r=rank, alpha=2.0 * rank, mask_seed=index)
        )
        generator = torch.Generator().manual_seed(index)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_B_trainable" in name:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.01)
        path = directory / f"adapter-{index}"
        save_adapter(model, path, base_model_name_or_path=model_name, task_type="causal-lm")
        paths.append(path)
    return paths


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def hot_load(engine: ServingEngine, model_name: str, path: Path, repeats: int) -> list[float]:
    engine.load_adapter("warmup", path, model_name)  # installs the slot wrappers once
    engine.unload_adapter("warmup")
    times = []
    for _ in range(repeats):
        times.append(engine.load_adapter("hot", path, model_name).load_ms)
        engine.unload_adapter("hot")
    return times


def single_stream(
    engine: ServingEngine, model_name: str, adapter_id: str | None, max_tokens: int
) -> tuple[float, float]:
    """(ms to the first token, decode tokens/s) for one streamed request."""
    request = GenerationRequest(
        model=model_name, adapter_id=adapter_id, prompt=PROMPTS[0], max_tokens=max_tokens, ignore_eos=True
    )
    started = time.perf_counter()
    first = last = None
    tokens = 0
    for chunk in engine.generate(request):
        now = time.perf_counter()
        first = first if first is not None else now
        last, tokens = now, chunk.token_count
    assert first is not None and last is not None
    return (first - started) * 1e3, (tokens - 1) / max(last - first, 1e-9)


def requests_for(
    model_name: str, adapter_ids: list[str], total: int, max_tokens: int
) -> list[GenerationRequest]:
    return [
        GenerationRequest(
            model=model_name,
            adapter_id=adapter_ids[i % len(adapter_ids)],
            prompt=PROMPTS[i % len(PROMPTS)],
            max_tokens=max_tokens,
            ignore_eos=True,
        )
        for i in range(total)
    ]


def mixed_batching(engine: ServingEngine, requests: list[GenerationRequest]) -> float:
    """Concurrent clients; the scheduler batches them across adapters. Returns requests/s."""
    started = time.perf_counter()
    threads = [threading.Thread(target=lambda r=r: engine.generate(r).text()) for r in requests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(requests) / (time.perf_counter() - started)


def one_adapter_at_a_time(engine: ServingEngine, requests: list[GenerationRequest]) -> float:
    started = time.perf_counter()
    for adapter_id in dict.fromkeys(r.adapter_id for r in requests):
        engine.generate_batch([r for r in requests if r.adapter_id == adapter_id])
    return len(requests) / (time.perf_counter() - started)


def peft_set_adapter(
    model_name: str, paths: list[Path], requests: list[GenerationRequest], max_tokens: int
) -> float:
    """PEFT's multi-adapter model: set_adapter per adapter, one HF generate batch per adapter."""
    loaded = load_base_model(model_name)
    tokenizer = loaded.tokenizer
    tokenizer.padding_side = "left"
    peft_model = PeftModel.from_pretrained(loaded.model, str(paths[0]), adapter_name="adapter-0")
    for index, path in enumerate(paths[1:], start=1):
        peft_model.load_adapter(str(path), adapter_name=f"adapter-{index}")
    peft_model.eval()
    started = time.perf_counter()
    for adapter_id in dict.fromkeys(r.adapter_id for r in requests):
        peft_model.set_adapter(str(adapter_id))
        prompts = [r.prompt for r in requests if r.adapter_id == adapter_id]
        batch = tokenizer(prompts, return_tensors="pt", padding=True)
        with torch.inference_mode():
            peft_model.generate(
                **batch, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False
            )
    return len(requests) / (time.perf_counter() - started)


def run(args: argparse.Namespace) -> dict[str, Any]:
    model_name = "tiny-random-llama" if args.quick else args.model
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_adapters(model_name, Path(tmp), args.adapters, args.rank)
        engine = ServingEngine(
            load_base_model, max_adapters=args.adapters, batch_window_ms=args.batch_window_ms
        )
        try:
            load_times = hot_load(engine, model_name, paths[0], args.hot_load_repeats)
            adapter_ids = [f"adapter-{i}" for i in range(len(paths))]
            for adapter_id, path in zip(adapter_ids, paths, strict=True):
                engine.load_adapter(adapter_id, path, model_name)
            single_stream(engine, model_name, None, 4)  # warm-up
            base_runs = [
                single_stream(engine, model_name, None, args.max_tokens) for _ in range(args.repeats)
            ]
            adapter_runs = [
                single_stream(engine, model_name, "adapter-0", args.max_tokens) for _ in range(args.repeats)
            ]
            requests = requests_for(model_name, adapter_ids, args.requests, args.max_tokens)
            mixed = mixed_batching(engine, requests)
            one_at_a_time = one_adapter_at_a_time(engine, requests)
            batch_sizes = engine.batch_sizes
        finally:
            engine.close()
        peft = peft_set_adapter(model_name, paths, requests, args.max_tokens)
    return {
        "model": model_name,
        "adapters": args.adapters,
        "rank": args.rank,
        "requests": args.requests,
        "max_tokens": args.max_tokens,
        "torch_threads": torch.get_num_threads(),
        "hot_load_ms_median": statistics.median(load_times),
        "hot_load_ms_p95": percentile(load_times, 0.95),
        "first_token_ms_base": statistics.median(r[0] for r in base_runs),
        "first_token_ms_adapter": statistics.median(r[0] for r in adapter_runs),
        "tokens_per_second_base": statistics.median(r[1] for r in base_runs),
        "tokens_per_second_adapter": statistics.median(r[1] for r in adapter_runs),
        "throughput_mixed_batching": mixed,
        "throughput_one_adapter_at_a_time": one_at_a_time,
        "throughput_peft_set_adapter": peft,
        "scheduler_batch_sizes": batch_sizes[-8:],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--quick", action="store_true", help="tiny-random-llama, few tokens: a smoke run")
    parser.add_argument("--out", type=Path, help="write the results as one JSON object")
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--hot-load-repeats", type=int, default=30)
    parser.add_argument("--batch-window-ms", type=float, default=50.0)
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.max_tokens, args.repeats, args.hot_load_repeats = 16, 8, 2, 5
    results = run(args)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
        from benchmarks.report import write_serving_report

        write_serving_report(results, args.out.with_suffix(".md"))


if __name__ == "__main__":
    main()
