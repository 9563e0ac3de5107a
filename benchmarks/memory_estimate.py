"""The admission estimate against measured peaks: lorasp_core.memory_estimate vs the peak RSS of train().

    python -m benchmarks.memory_estimate --out benchmarks/results/memory_estimate.json

Each case trains a few steps of `lorasp_core.train()` in its own process (so the peak RSS is that
case's alone, interpreter and libraries included, as in a worker) on synthetic chat examples of a
fixed length, and prints the estimate beside the measured peak (VmHWM). Memory does not depend on
how busy the CPU is, so this can run beside other work; it takes a minute or two.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
from pathlib import Path
from typing import Any

CASES: list[dict[str, Any]] = [
    {"model": "smollm2-135m-instruct", "batch_size": 8, "words": 40, "checkpointing": False},
    {"model": "smollm2-135m-instruct", "batch_size": 8, "words": 200, "checkpointing": False},
    {"model": "smollm2-135m-instruct", "batch_size": 4, "words": 600, "checkpointing": False},
    {"model": "smollm2-135m-instruct", "batch_size": 4, "words": 600, "checkpointing": True},
]


def _peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _run_case(case: dict[str, Any], queue: Any) -> None:
    from lorasp_core import ChatExample, LoraSPConfig, TrainConfig, apply_lorasp, load_base_model, train
    from lorasp_core.data.tokenization import count_tokens
    from lorasp_core.memory_estimate import TrainingShape, estimate_training_memory
    from lorasp_core.models.skeleton import model_skeleton

    loaded = load_base_model(case["model"])
    text = " ".join(f"word{i % 50}" for i in range(case["words"]))
    examples = [
        ChatExample(
            messages=(
                {"role": "user", "content": f"{i} {text}"},
                {"role": "assistant", "content": "positive" if i % 2 else "negative"},
            )
        )
        for i in range(case["batch_size"] * 3)
    ]
    sequence_length = max(count_tokens(example, loaded.tokenizer) for example in examples)
    lora = LoraSPConfig(r=8, alpha=16.0)
    model = apply_lorasp(loaded.model, lora)
    if case["checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    config = TrainConfig(
        task="causal-lm", batch_size=case["batch_size"], max_steps=3, max_length=2048, mixed_precision="no"
    )
    train(config, model, loaded.tokenizer, examples)
    shape = TrainingShape(
        batch_size=case["batch_size"],
        sequence_length=sequence_length,
        gradient_checkpointing=case["checkpointing"],
    )
    estimate = estimate_training_memory(model_skeleton(case["model"]), lora, shape)
    queue.put(
        {**case, "sequence_length": sequence_length, "measured": _peak_rss_bytes(), "estimate": estimate}
    )


def measure(case: dict[str, Any]) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_run_case, args=(case, queue))
    process.start()
    result: dict[str, Any] = queue.get(timeout=900)
    process.join()
    estimate = result.pop("estimate")
    result["estimate"] = estimate.total
    result["estimate_parts"] = {
        name: getattr(estimate, name) for name in ("weights", "adapter", "activations", "logits", "runtime")
    }
    result["estimate_over_measured"] = estimate.total / result["measured"]
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    results = []
    for case in CASES:
        result = measure(case)
        results.append(result)
        checkpointing = " +checkpointing" if case["checkpointing"] else ""
        print(
            f"{case['model']} batch {case['batch_size']} x {result['sequence_length']} tokens{checkpointing}:"
            f" estimate {result['estimate'] / 2**30:.2f} GiB,"
            f" measured {result['measured'] / 2**30:.2f} GiB (ratio {result['estimate_over_measured']:.2f})",
            flush=True,
        )
    if args.out is not None:
        machine = f"{platform.processor() or platform.machine()}, {multiprocessing.cpu_count()} cores"
        args.out.write_text(json.dumps({"machine": machine, "cases": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
