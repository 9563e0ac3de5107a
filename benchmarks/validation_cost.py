"""What per-step validation costs on the demo job: time in evaluation as a fraction of training wall time.

    OMP_NUM_THREADS=1 python -m benchmarks.validation_cost [--threads 1]

Trains the `make demo` job in-process (SmolLM2-135M-Instruct, examples/sentiment-chat.jsonl, the demo's
hyperparameters) with the demo's validation file and the settings the service resolves for it ("auto"
`eval_every`, a one-batch sample, full validation at the kept epochs' ends: `TrainingSpec.to_train_config`),
timing every evaluation; then the same job without validation. Writes
benchmarks/results/validation_cost.{json,md} with the machine described. Run it alone.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

import lorasp_core.evaluation as evaluation
from benchmarks.common import machine_description
from lorasp_core import apply_lorasp, load_base_model, read_examples
from lorasp_core.train_config import TrainConfig
from lorasp_core.trainer import train
from lorasp_service.demo import BASE_MODEL, HYPERPARAMETERS, TRAINING_FILE, UNSEEN_FILE
from lorasp_service.jobs import TrainingSpec
from lorasp_service.jobs.auto import DatasetSize, auto_eval_every

RESULTS = Path(__file__).resolve().parent / "results"


class EvaluationTimer:
    """Wraps `evaluation.evaluate_tokenized` (what the training loop's validations call) with a clock."""

    def __init__(self) -> None:
        self.seconds, self.calls, self.examples = 0.0, 0, 0
        self._inner = evaluation.evaluate_tokenized

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        started = time.perf_counter()
        try:
            return self._inner(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - started
            self.calls += 1
            self.examples += len(args[1])


def demo_config() -> TrainConfig:
    size = DatasetSize(examples=sum(1 for _ in read_examples(TRAINING_FILE)), tokens=None, bytes=0)
    n_epochs, batch_size = int(HYPERPARAMETERS["n_epochs"]), int(HYPERPARAMETERS["batch_size"])
    spec = TrainingSpec(
        seed=0,
        mask_seed=0,
        method_type="lorasp",
        n_epochs=n_epochs,
        batch_size=batch_size,
        learning_rate=float(HYPERPARAMETERS["learning_rate"]),
        rank=int(HYPERPARAMETERS["rank"]),
        freeze_ratio=float(HYPERPARAMETERS["freeze_ratio"]),
        eval_every=auto_eval_every(size, n_epochs, batch_size),
    )
    return spec.to_train_config("causal-lm")


def run(with_validation: bool) -> dict[str, Any]:
    loaded = load_base_model(BASE_MODEL, task="causal-lm", seed=0)
    train_rows, valid_rows = list(read_examples(TRAINING_FILE)), list(read_examples(UNSEEN_FILE))
    config = demo_config()
    lora = TrainingSpec(
        seed=0,
        mask_seed=0,
        rank=int(HYPERPARAMETERS["rank"]),
        freeze_ratio=float(HYPERPARAMETERS["freeze_ratio"]),
    ).to_lora_config()
    model = apply_lorasp(loaded.model, lora)
    timer = EvaluationTimer()
    evaluation.evaluate_tokenized = timer
    try:
        started = time.perf_counter()
        result = train(config, model, loaded.tokenizer, train_rows, valid_rows if with_validation else None)
        wall = time.perf_counter() - started
    finally:
        evaluation.evaluate_tokenized = timer._inner
    return {
        "validation": with_validation,
        "steps": result.steps,
        "wall_seconds": round(wall, 2),
        "evaluation_seconds": round(timer.seconds, 2),
        "evaluations": timer.calls,
        "evaluated_examples": timer.examples,
        "eval_every_steps": config.eval_every_steps,
        "eval_sample_size": config.eval_sample_size,
        "validation_rows": len(valid_rows),
        "evaluation_fraction_of_wall": round(timer.seconds / wall, 4),
        "final_full_valid_loss": (result.eval_metrics or {}).get("loss"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runs = [run(with_validation=False), run(with_validation=True)]
    without, with_v = runs
    report = {
        "machine": machine_description(),
        "threads": args.threads,
        "runs": runs,
        "wall_overhead_vs_no_validation": round(with_v["wall_seconds"] / without["wall_seconds"] - 1, 4),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "validation_cost.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Per-step validation on the demo job",
        "",
        "`OMP_NUM_THREADS=1 python -m benchmarks.validation_cost` "
        f"(torch threads: {args.threads}; machine below)",
        "",
        "| validation | steps | wall s | in evaluation s | evaluations | examples evaluated | fraction |",
        "|---|---|---|---|---|---|---|",
    ]
    for entry in runs:
        lines.append(
            f"| {'yes' if entry['validation'] else 'no'} | {entry['steps']} | {entry['wall_seconds']} | "
            f"{entry['evaluation_seconds']} | {entry['evaluations']} | {entry['evaluated_examples']} | "
            f"{entry['evaluation_fraction_of_wall']:.1%} |"
        )
    lines += [
        "",
        f"Wall time with validation vs without: {report['wall_overhead_vs_no_validation']:+.1%} "
        f"(eval_every={with_v['eval_every_steps']}, sample={with_v['eval_sample_size']} examples, "
        f"validation file {with_v['validation_rows']} rows).",
        "",
        "Machine: `" + json.dumps(report["machine"]) + "`",
        "",
    ]
    (RESULTS / "validation_cost.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
