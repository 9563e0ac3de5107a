"""SST-2 benchmark: LoRA-SP vs our LoRA vs PEFT LoRA (plain / length-grouped) vs full fine-tuning,
and the causal-LM (chat) run: LoRA-SP and its knobs vs TRL's SFTTrainer + PEFT vs the zero-shot base.

    python -m benchmarks.sst2 --data-dir ../shared/data/sst2 --out benchmarks/results/sst2.json

Each run is its own process (so peak RSS is its own). `--out` gets a JSON list, one object per run;
a markdown table with the machine described is written next to it. A run with chat methods first
measures this CPU's fp32 and bf16 matmul peaks (benchmarks.matmul_peak, its own process too), and
again after the last run, keeping the higher of each (the peak is what the hardware can do): the
report reads each run's useful FLOP/s against the bf16 peak.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import peak_rss_mb, process_cpu_seconds, read_sst2_tsv, run_in_subprocess, sample_train
from benchmarks.sst2_chat import LORASP_CHAT_KNOBS, missing_engine_settings

ENCODER_METHODS = ("full", "peft-lora", "peft-lora-grouped", "lora", "lorasp")
# chat-dpo: DPO from the base; chat-sft-dpo: DPO continuing the chat-lorasp adapter (SFT -> DPO)
CHAT_METHODS = ("chat-base", "trl-sft", *LORASP_CHAT_KNOBS, "chat-dpo", "chat-sft-dpo")
DEFAULT_LRS = {
    "full": [5e-5],
    "peft-lora": [1e-3],
    "peft-lora-grouped": [1e-3],
    "lora": [1e-3],
    "lorasp": [2e-3],
    "chat-base": [0.0],
    "trl-sft": [1e-3],  # chat-lorasp's rate: the same budget
    **{method: [1e-3] for method in LORASP_CHAT_KNOBS},
    "chat-dpo": [2e-4],  # the DPO stage's rate; chat-sft-dpo's SFT stage runs at chat-lorasp's
    "chat-sft-dpo": [2e-4],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data/sst2"))
    parser.add_argument("--eval-file", type=Path, default=None, help="TSV to evaluate on instead of dev.tsv")
    parser.add_argument(
        "--methods",
        default=",".join(ENCODER_METHODS),
        help=f"comma list of {', '.join(ENCODER_METHODS + CHAT_METHODS)}",
    )
    parser.add_argument("--train-size", type=int, default=8000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--lrs", default=None, help="comma list swept for every adapter method")
    parser.add_argument("--full-lrs", default=None, help="comma list for full fine-tuning")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--chat-train-size", type=int, default=2000)
    parser.add_argument("--chat-epochs", type=int, default=1)
    parser.add_argument("--chat-batch-size", type=int, default=8)
    parser.add_argument("--eval-size", type=int, default=None, help="first N eval rows only (sizes a run)")
    parser.add_argument("--chat-max-length", type=int, default=128)
    parser.add_argument("--chat-model", default="smollm2-135m-instruct", help="causal LM of the chat methods")
    parser.add_argument(
        "--matmul-n", type=int, default=2048, help="matrix size of the matmul peak measurement"
    )
    parser.add_argument(
        "--plain-lr-from-grouped",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the plain PEFT loop at the length-grouped PEFT run's best rate",
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--run-one", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def learning_rates(args: argparse.Namespace, method: str) -> list[float]:
    if method == "full":
        return floats(args.full_lrs) if args.full_lrs else DEFAULT_LRS["full"]
    if method == "chat-base":
        return DEFAULT_LRS["chat-base"]
    return floats(args.lrs) if args.lrs else DEFAULT_LRS[method]


def make_spec(args: argparse.Namespace, method: str, seed: int, lr: float) -> dict[str, Any]:
    chat = method in CHAT_METHODS
    return {
        "method": method,
        "seed": seed,
        "learning_rate": lr,
        "r": args.r,
        "alpha": args.alpha,
        "train_file": str(args.data_dir / "train.tsv"),
        "eval_file": str(args.eval_file or args.data_dir / "dev.tsv"),
        "train_size": args.chat_train_size if chat else args.train_size,
        "epochs": args.chat_epochs if chat else args.epochs,
        "batch_size": args.chat_batch_size if chat else args.batch_size,
        "max_length": args.chat_max_length if chat else args.max_length,
        "eval_size": args.eval_size,
        "model": args.chat_model,
    }


def selected_methods(args: argparse.Namespace) -> list[str]:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(ENCODER_METHODS + CHAT_METHODS))
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; choose from {ENCODER_METHODS + CHAT_METHODS}")
    # before any run, not an hour into the sweep
    unavailable = [reason for reason in map(missing_engine_settings, methods) if reason]
    if unavailable:
        raise SystemExit(f"--methods: {'; '.join(unavailable)}")
    return methods


def run_one(spec: dict[str, Any]) -> dict[str, Any]:
    train_rows = sample_train(read_sst2_tsv(Path(spec["train_file"])), spec["train_size"])
    eval_rows = read_sst2_tsv(Path(spec["eval_file"]))[: spec["eval_size"]]
    if spec["method"] == "trl-sft":
        from benchmarks.sst2_trl import run_trl_sft

        measured = run_trl_sft(spec, train_rows, eval_rows)
    elif spec["method"] in CHAT_METHODS:
        from benchmarks.sst2_chat import run_chat

        measured = run_chat(spec, train_rows, eval_rows)
    else:
        from benchmarks.sst2_runs import run_encoder

        measured = run_encoder(spec, train_rows, eval_rows)
    return {
        "method": spec["method"],
        "seed": spec["seed"],
        "learning_rate": spec["learning_rate"],
        **measured,
        "peak_rss_mb": peak_rss_mb(),
        "process_cpu_seconds": process_cpu_seconds(),  # the whole process: load, train, evaluate
    }


class Sweep:
    """Tune each method's learning rate on the first seed, then repeat the other seeds at its best rate.

    The plain PEFT loop optimises exactly what the length-grouped one does (only batch composition
    differs), so with --plain-lr-from-grouped it runs at the grouped run's best rate instead of
    sweeping again: it is the slowest method and serves as the wall-time baseline.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.results: list[dict[str, Any]] = []

    def run(self, method: str, seed: int, lr: float) -> None:
        print(f"[{len(self.results) + 1}] {method} seed={seed} lr={lr:g}", file=sys.stderr, flush=True)
        result = run_in_subprocess("benchmarks.sst2", make_spec(self.args, method, seed, lr))
        print(
            f"    dev_accuracy={result['dev_accuracy']:.4f} train_seconds={result['train_seconds']:.1f} "
            f"peak_rss_mb={result['peak_rss_mb']:.0f}",
            file=sys.stderr,
            flush=True,
        )
        self.results.append(result)
        if self.args.out:  # after every run, so an interrupted sweep keeps what it measured
            self.args.out.parent.mkdir(parents=True, exist_ok=True)
            self.args.out.write_text(json.dumps(self.results, indent=2))

    def best_lr(self, method: str, seed: int) -> float:
        rows = [r for r in self.results if r["method"] == method and r["seed"] == seed]
        return float(max(rows, key=lambda r: r["dev_accuracy"])["learning_rate"])

    def execute(self, methods: list[str], seeds: list[int]) -> None:
        first, rest = seeds[0], seeds[1:]
        borrow = self.args.plain_lr_from_grouped and {"peft-lora", "peft-lora-grouped"} <= set(methods)
        for method in methods:
            if not (borrow and method == "peft-lora"):
                for lr in learning_rates(self.args, method):
                    self.run(method, first, lr)
        best = {m: self.best_lr(m, first) for m in methods if not (borrow and m == "peft-lora")}
        if borrow:
            best["peft-lora"] = best["peft-lora-grouped"]
            self.run("peft-lora", first, best["peft-lora"])
        for seed in rest:
            for method in methods:
                if method not in CHAT_METHODS:  # the causal-LM comparison is one seed: the slow one
                    self.run(method, seed, best[method])


def measure_matmul_peaks(n: int) -> dict[str, Any]:
    """This CPU's fp32/bf16 matmul GFLOP/s at the thread count the runs use, measured in its own process."""
    import torch

    command = [sys.executable, "-m", "benchmarks.matmul_peak", "--threads", str(torch.get_num_threads())]
    completed = subprocess.run([*command, "--n", str(n)], capture_output=True, text=True, check=True)
    peaks: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    print(f"matmul peaks: {peaks}", file=sys.stderr, flush=True)
    return peaks


def higher_peaks(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    peaks = {**first, **{k: max(first[k], second[k]) for k in ("fp32_gflops", "bf16_gflops")}}
    peaks["bf16_over_fp32"] = round(peaks["bf16_gflops"] / peaks["fp32_gflops"], 2)
    return peaks


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.run_one:
        print(json.dumps(run_one(json.loads(args.run_one))))
        return
    from benchmarks.report import write_sst2_report

    methods = selected_methods(args)
    chat = bool(set(methods) & set(CHAT_METHODS))
    before = measure_matmul_peaks(args.matmul_n) if chat else None
    sweep = Sweep(args)
    sweep.execute(methods, [int(s) for s in args.seeds.split(",")])
    peaks = higher_peaks(before, measure_matmul_peaks(args.matmul_n)) if before else None
    if args.out:
        if peaks:
            args.out.with_suffix(".matmul_peak.json").write_text(json.dumps(peaks, indent=2))
        write_sst2_report(sweep.results, vars(args), args.out.with_suffix(".md"), matmul_peaks=peaks)
    print(json.dumps(sweep.results, indent=2))


if __name__ == "__main__":
    main()
