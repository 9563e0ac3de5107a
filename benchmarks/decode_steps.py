"""What one engine step costs as the running batch grows: why continuous batching's latency gain depends
on the hardware.

    python -m benchmarks.decode_steps --out benchmarks/results/decode_steps.json
    python -m benchmarks.decode_steps --quick                                     # tiny-random-llama smoke

Through the serving engine itself (continuous batching, the one decoding thread): for each dtype and each
batch size k, k concurrent requests over the adapters decode together; a decode step's time is the median
gap between a row's chunks once all k rows run. Prefill: one request alone, its time to first token.
Where a step costs about the same for 1 row as for 16 (a GPU's memory-bound decode), a request's latency
under continuous batching is its own length in steps and the wait for a static batch is all that static
batching adds; where the step grows with the rows (compute-bound CPU matmuls), every row pays for the others
and continuous batching removes only the wait.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.common import machine_description
from benchmarks.serving import make_adapters, requests_for
from benchmarks.serving_load import base_loader
from lorasp_core.serving import GenerationRequest, ServingEngine

SKIP_TOKENS = 4  # chunks before every row of the batch has surely joined


def step_ms(engine: ServingEngine, requests: list[GenerationRequest]) -> float:
    """Median gap (ms) between consecutive chunks, over all rows, once every row decodes."""
    gaps: list[float] = []
    lock = threading.Lock()

    def read(request: GenerationRequest) -> None:
        stamps = [time.perf_counter() for _ in engine.generate(request)]
        with lock:
            gaps.extend(b - a for a, b in zip(stamps[SKIP_TOKENS:], stamps[SKIP_TOKENS + 1 :], strict=False))

    threads = [threading.Thread(target=read, args=(request,)) for request in requests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statistics.median(gaps) * 1e3


def prefill_ms(engine: ServingEngine, request: GenerationRequest, repeats: int) -> float:
    """Median time to the first token of one request alone (its prompt's prefill and one token)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _chunk in engine.generate(replace(request, max_tokens=1)):
            pass
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def run_dtype(dtype: str, model: str, paths: list[Path], rows: list[int], tokens: int) -> dict[str, Any]:
    engine = ServingEngine(base_loader(dtype), max_adapters=len(paths), batching="continuous")
    adapter_ids = [f"adapter-{i}" for i in range(len(paths))]
    try:
        for adapter_id, path in zip(adapter_ids, paths, strict=True):
            engine.load_adapter(adapter_id, path, model)
        engine.generate_batch(requests_for(model, adapter_ids[:1], 1, 4))  # warm-up
        # keyed by str(k), as the JSON file and the report read them
        steps = {str(k): step_ms(engine, requests_for(model, adapter_ids, k, tokens)) for k in rows}
        prompt = requests_for(model, adapter_ids, 1, 1)[0]
        prompt_tokens = engine.generate_batch([replace(prompt, max_tokens=1)])[0].prompt_tokens
        return {
            "dtype": dtype,
            "step_ms_by_rows": steps,
            "prefill_ms": prefill_ms(engine, prompt, 5),
            "prompt_tokens": prompt_tokens,
        }
    finally:
        engine.close()


def report(results: dict[str, Any], command: str) -> str:
    machine = results["machine"]
    rows = results["rows"]
    lines = [
        "# Decode step and prefill cost by batch rows",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB, GPU: "
        f"{machine['gpu'] or 'none'}; torch {machine['torch']} ({machine['torch_threads']} threads).",
        "",
        f"Model {results['model']}, {results['adapters']} LoRA-SP adapters (r=8), k concurrent requests over "
        "the adapters through the continuous-batching engine; a step is the median gap between a "
        "row's chunks.",
        "",
        "| dtype | " + " | ".join(f"step, {k} rows (ms)" for k in rows) + " | prefill of one prompt (ms) |",
        "|---|" + "---|" * (len(rows) + 1),
    ]
    for run in results["runs"]:
        steps = " | ".join(f"{run['step_ms_by_rows'][str(k)]:.1f}" for k in rows)
        lines.append(
            f"| {run['dtype']} | {steps} | {run['prefill_ms']:.0f} ({run['prompt_tokens']} tokens) |"
        )
    lines.append("")
    for run in results["runs"]:
        first, last = run["step_ms_by_rows"][str(rows[0])], run["step_ms_by_rows"][str(rows[-1])]
        lines.append(
            f"- {run['dtype']}: a step of {rows[-1]} rows costs {last / first:.2f}x a step of {rows[0]}; "
            f"a prefill costs {run['prefill_ms'] / first:.1f} single-row steps."
        )
    return "\n".join([*lines, "", f"Command: `{command}`.", ""])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--quick", action="store_true", help="tiny-random-llama: a smoke run")
    parser.add_argument("--rows", default="1,2,4,8,16")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    model = "tiny-random-llama" if args.quick else args.model
    rows = [int(k) for k in args.rows.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_adapters(model, Path(tmp), 8, 8)
        runs = [run_dtype(dtype, model, paths, rows, args.tokens) for dtype in args.dtypes.split(",")]
    results = {"model": model, "adapters": 8, "rows": rows, "machine": machine_description(), "runs": runs}
    command = "python -m benchmarks.decode_steps " + " ".join(argv if argv is not None else sys.argv[1:])
    text = report(results, command)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
