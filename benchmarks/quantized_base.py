"""A quantized frozen base against the full one: peak RSS, weight bytes and loss of a short smollm2 run.

    python -m benchmarks.quantized_base --steps 20 --out benchmarks/results/quantized_base.json

Each variant (`base_quantization` "none", "int8") trains LoRA-SP (r=8, fp32 compute) on
examples/sentiment-chat.jsonl for `--steps` steps of batch 8 in its own process, then evaluates the loss
on examples/sentiment-chat-val.jsonl. The fp32 base is loaded memory-mapped from its safetensors file, so
its weights are file-backed pages (RssFile) that count in VmRSS/VmHWM once touched, and quantizing touches
every one of them (they stay mapped, clean and reclaimable, beside the int8 copies). VmHWM therefore does
not tell what the process needs; this samples, every 5 ms while it trains (after the quantization and a
`malloc_trim`), the anonymous memory (RssAnon: activations, optimizer, int8 weights, the interpreter) and
reports its peak plus the frozen weights that are still file-backed (the unquantized ones: for int8 the
embeddings and norms; the int8 data and scales are anonymous memory already): the memory a worker holding
that base needs while training (`needed_mb`). Set MALLOC_MMAP_THRESHOLD_=131072 to keep glibc from
holding on to freed large blocks (the per-matmul fp32 temporaries), which otherwise inflates RssAnon.
A smoke-sized run: whether int8 holds the loss and what it saves, not SST-2 accuracy (benchmarks.sst2_chat).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import multiprocessing
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import machine_description

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
VARIANTS = ("none", "int8")


def _memory_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


class _AnonPeak(threading.Thread):
    """The peak of RssAnon, sampled every 5 ms until `stop` is set."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.peak_kib = 0

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak_kib = max(self.peak_kib, _memory_kib("RssAnon"))
            self.stop.wait(0.005)
        self.peak_kib = max(self.peak_kib, _memory_kib("RssAnon"))


def _run(quantization: str, steps: int, queue: Any) -> None:
    import torch

    from lorasp_core import LoraSPConfig, TrainConfig, apply_lorasp, load_base_model, train
    from lorasp_core.data import read_examples
    from lorasp_core.quantization import held_bytes, is_quantized, quantize_frozen_base
    from lorasp_core.trainer import evaluate

    torch.set_num_threads(1)
    loaded = load_base_model("smollm2-135m-instruct")
    model = apply_lorasp(loaded.model, LoraSPConfig(r=8, alpha=16.0))
    quantize_frozen_base(model, quantization)  # train()'s own call then finds nothing left to do
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    sampler = _AnonPeak()
    sampler.start()
    train_data = list(read_examples(EXAMPLES / "sentiment-chat.jsonl"))
    eval_data = list(read_examples(EXAMPLES / "sentiment-chat-val.jsonl"))
    config = TrainConfig(
        task="causal-lm",
        batch_size=8,
        epochs=100,
        max_steps=steps,
        mixed_precision="no",
        base_quantization=quantization,  # type: ignore[arg-type]
    )
    started = time.perf_counter()
    result = train(config, model, loaded.tokenizer, train_data)
    seconds = time.perf_counter() - started
    sampler.stop.set()
    sampler.join()
    frozen = [p for p in model.parameters() if not p.requires_grad]
    file_backed = [p for p in frozen if not is_quantized(p)]  # mmapped from the safetensors file
    queue.put(
        {
            "base_quantization": quantization,
            "steps": result.steps,
            "train_loss": result.train_loss,
            "eval_loss": evaluate(model, loaded.tokenizer, eval_data, config)["loss"],
            "train_seconds": seconds,
            "frozen_weight_bytes": held_bytes(frozen),
            "training_peak_anon_mb": sampler.peak_kib / 1024,
            "needed_mb": sampler.peak_kib / 1024 + held_bytes(file_backed) / 2**20,
            "rss_file_mb": _memory_kib("RssFile") / 1024,
            "process_peak_rss_mb": _memory_kib("VmHWM") / 1024,
        }
    )


def measure(quantization: str, steps: int) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_run, args=(quantization, steps, queue))
    process.start()
    result: dict[str, Any] = queue.get(timeout=1800)
    process.join()
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    results = []
    for quantization in VARIANTS:
        result = measure(quantization, args.steps)
        results.append(result)
        print(
            f"base {quantization}: {result['steps']} steps in {result['train_seconds']:.0f} s, train loss "
            f"{result['train_loss']:.4f}, eval loss {result['eval_loss']:.4f}, frozen weights "
            f"{result['frozen_weight_bytes'] / 2**20:.0f} MiB, training peak RssAnon "
            f"{result['training_peak_anon_mb']:.0f} MB (+ file-backed frozen weights: "
            f"{result['needed_mb']:.0f} MB), "
            f"RssFile {result['rss_file_mb']:.0f} MB, VmHWM {result['process_peak_rss_mb']:.0f} MB",
            flush=True,
        )
    if args.out is not None:
        document = {"machine": machine_description(), "steps": args.steps, "variants": results}
        args.out.write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    main()
