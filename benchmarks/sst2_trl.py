"""The causal-LM SST-2 run as a TRL user writes it today: `SFTTrainer` + a PEFT `LoraConfig`.

Same budget as chat-lorasp: smollm2-135m-instruct, the same sampled chat examples, batch 8, the same
learning rate with a linear schedule and 6% warmup, r and alpha on the same target modules, the same
epochs, max length and dev accuracy routine (greedy generation, first sentiment word). TRL's defaults
otherwise: padded batches in random order (no packing, no padding-free), loss on the completion (the
assistant's answer) only, AdamW, gradient clipping at 1.0.

Precision follows the policy chat-lorasp's default ("auto") follows on the same machine: bf16 autocast
where the hardware runs it fast (SFTConfig's `bf16`, which is also TRL's default), fp32 otherwise. The
base is held the way SFTTrainer holds a model given by name: fp32 (the adapters fp32 too). Gradient
checkpointing is off (TRL's default turns it on): chat-lorasp recomputes nothing either, and
chat-lorasp-ckpt shows what checkpointing costs.
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

import torch

from benchmarks.common import LabelledSentence, peak_rss_mb
from benchmarks.sst2_chat import WORDS, as_messages, base_parameter_count, generation_accuracy
from benchmarks.sst2_runs import adam_state_bytes

WARMUP_RATIO = 0.06  # chat-lorasp's


def prompt_completion_rows(rows: list[LabelledSentence]) -> list[dict[str, list[dict[str, str]]]]:
    """TRL's conversational prompt-completion format: the loss falls on the completion only."""
    return [
        {"prompt": as_messages(r, False), "completion": [{"role": "assistant", "content": WORDS[r.label]}]}
        for r in rows
    ]


def autocast_bf16() -> bool:
    """Whether lorasp_core's "auto" precision trains in bf16 on this machine's device."""
    from lorasp_core.precision import resolve_precision

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return resolve_precision("auto", "auto", device).compute == "bf16"


def run_trl_sft(
    spec: dict[str, Any], train_rows: list[LabelledSentence], eval_rows: list[LabelledSentence]
) -> dict[str, Any]:
    from datasets import Dataset
    from peft import LoraConfig
    from trl.trainer.sft_config import SFTConfig
    from trl.trainer.sft_trainer import SFTTrainer

    from lorasp_core import load_base_model
    from lorasp_core.config import DEFAULT_TARGET_MODULES

    torch.manual_seed(spec["seed"])
    loaded = load_base_model(spec.get("model", "smollm2-135m-instruct"))  # fp32, as SFTTrainer loads it
    model, tokenizer = loaded.model, loaded.tokenizer
    base_parameters = base_parameter_count(model)
    bf16 = autocast_bf16()
    peft_config = LoraConfig(
        r=spec["r"],
        lora_alpha=spec["alpha"],
        target_modules=list(DEFAULT_TARGET_MODULES[model.config.model_type]),
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
    )
    with tempfile.TemporaryDirectory(prefix="trl-sft-") as output_dir:
        args = SFTConfig(
            output_dir=output_dir,
            per_device_train_batch_size=spec["batch_size"],
            num_train_epochs=spec["epochs"],
            learning_rate=spec["learning_rate"],
            lr_scheduler_type="linear",
            warmup_steps=WARMUP_RATIO,  # a float below 1 is a fraction of the steps
            max_length=spec["max_length"],
            bf16=bf16,
            gradient_checkpointing=False,
            seed=spec["seed"],
            data_seed=spec["seed"],
            save_strategy="no",
            logging_strategy="no",
            report_to="none",
            use_cpu=not torch.cuda.is_available(),
            disable_tqdm=True,
        )
        # the clock starts before SFTTrainer tokenizes, as chat-lorasp's covers its own tokenization
        start = time.perf_counter()
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(prompt_completion_rows(train_rows)),
            processing_class=tokenizer,
            peft_config=peft_config,
        )
        trainer.train()
        seconds = time.perf_counter() - start
    # SFTTrainer's tokenized examples, unpadded: the real tokens its padded batches carried
    tokenized = trainer.train_dataset
    trained, optimizer = trainer.model, trainer.optimizer
    assert isinstance(tokenized, Dataset) and trained is not None and optimizer is not None
    real_tokens = spec["epochs"] * sum(len(ids) for ids in tokenized["input_ids"])
    lora_params = [p for n, p in trained.named_parameters() if "lora_" in n]
    train_peak = peak_rss_mb()  # before the eval, as for chat-lorasp
    start = time.perf_counter()
    dev_accuracy = generation_accuracy(trained, tokenizer, eval_rows)
    return {
        "dev_accuracy": dev_accuracy,
        "train_peak_rss_mb": train_peak,
        "eval_seconds": time.perf_counter() - start,
        "base_parameters": base_parameters,
        "trainable_parameters": sum(int(p.numel()) for p in trained.parameters() if p.requires_grad),
        "optimizer_state_bytes": adam_state_bytes(optimizer, lora_params),
        "train_seconds": seconds,
        "tokens_per_second": real_tokens / seconds,
        "precision": {"precision": "bf16" if bf16 else "fp32", "base_dtype": "float32"},
        "gradient_checkpointing": False,
    }
