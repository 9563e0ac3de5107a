"""Causal-LM SST-2: smollm2-135m-instruct fine-tuned with LoRA-SP on reviews rewritten as chat,
scored by greedy generation against the base model zero-shot.

Methods: chat-base (zero-shot), chat-lorasp (supervised, the engine's defaults) and its knob variants
(LORASP_CHAT_KNOBS), chat-dpo (DPO from the base model on pairs
from the same training sentences: chosen = the right word, rejected = the wrong one) and chat-sft-dpo
(the supervised run, then DPO from its adapter, which is then the reference)."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch

from benchmarks.common import LabelledSentence, peak_rss_mb

# chat-lorasp runs the engine's defaults (what a user gets: on a CPU with fast bf16, bf16 autocast with
# a bf16 base, the LM head at labels only, no checkpointing). chat-lorasp-fp32 turns every knob off and
# is the reference; each other row turns one knob on over it, so it shows what that knob alone buys.
FP32_REFERENCE: dict[str, Any] = {
    "mixed_precision": "no",
    "base_dtype": "float32",
    "head_at_labels": False,
    "gradient_checkpointing": False,
}
LORASP_CHAT_KNOBS: dict[str, dict[str, Any]] = {
    "chat-lorasp": {},
    "chat-lorasp-fp32": FP32_REFERENCE,
    "chat-lorasp-bf16": {**FP32_REFERENCE, "mixed_precision": "bf16", "base_dtype": "bfloat16"},
    "chat-lorasp-labelhead": {**FP32_REFERENCE, "head_at_labels": True},
    "chat-lorasp-ckpt": {**FP32_REFERENCE, "gradient_checkpointing": True},
    "chat-lorasp-int8": {**FP32_REFERENCE, "base_quantization": "int8"},
}
# The DPO methods (and chat-sft-dpo's supervised stage) train as chat-lorasp did when they were measured
# (fp32, head at labels): that is chat-lorasp-labelhead now, the supervised run to compare them with.
DPO_TRAIN_SETTINGS: dict[str, Any] = LORASP_CHAT_KNOBS["chat-lorasp-labelhead"]


def missing_engine_settings(method: str) -> str | None:
    """Why `method` cannot run with this lorasp_core (a knob its TrainConfig lacks), or None if it can."""
    from lorasp_core import TrainConfig

    missing = sorted(
        set(LORASP_CHAT_KNOBS.get(method, {})) - {f.name for f in dataclasses.fields(TrainConfig)}
    )
    if not missing:
        return None
    return f"{method} needs TrainConfig field(s) {missing}, which this lorasp_core does not have yet"


SYSTEM = "You are a sentiment classifier. Answer with one word: positive or negative."
WORDS = ("negative", "positive")
SFT_LEARNING_RATE = 1e-3  # chat-sft-dpo's supervised stage: chat-lorasp's default rate


def as_messages(row: LabelledSentence, with_answer: bool) -> list[dict[str, str]]:
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"Review: {row.text}\nIs this review positive or negative?"},
    ]
    if with_answer:
        messages.append({"role": "assistant", "content": WORDS[row.label]})
    return messages


def as_preference(row: LabelledSentence) -> Any:
    from lorasp_core.data import PreferenceExample

    return PreferenceExample(
        prompt=tuple(as_messages(row, False)),
        chosen={"role": "assistant", "content": WORDS[row.label]},
        rejected={"role": "assistant", "content": WORDS[1 - row.label]},
    )


def predicted_label(answer: str) -> int | None:
    """The sentiment word the answer names first (a zero-shot model may say "The review is negative")."""
    text = answer.lower()
    found = [(text.find(word), label) for label, word in enumerate(WORDS) if word in text]
    return min(found)[1] if found else None


@torch.no_grad()
def generation_accuracy(
    model: Any, tokenizer: Any, rows: list[LabelledSentence], batch_size: int = 32
) -> float:
    model.eval()
    tokenizer.padding_side = "left"
    correct = 0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        prompts = [
            tokenizer.apply_chat_template(as_messages(r, False), tokenize=False, add_generation_prompt=True)
            for r in chunk
        ]
        batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        output = model.generate(
            **batch, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
        answers = tokenizer.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        for row, answer in zip(chunk, answers, strict=True):
            correct += int(predicted_label(answer) == row.label)
    return correct / len(rows)


def base_parameter_count(model: torch.nn.Module) -> int:
    """The base model's parameters, a tied embedding/LM head counted once (`parameters()` dedups it):
    the count the useful-FLOPs figure (4 x this per real token) is built on."""
    return sum(p.numel() for p in model.parameters())


def _train_stage(
    spec: dict[str, Any], model: Any, tokenizer: Any, examples: list[Any], *, dpo: bool, learning_rate: float
) -> Any:
    from lorasp_core import TrainConfig, train

    reason = missing_engine_settings(spec["method"])
    if reason:
        raise RuntimeError(reason)
    train_config = TrainConfig(
        task="causal-lm",
        epochs=spec["epochs"],
        batch_size=spec["batch_size"],
        learning_rate=learning_rate,
        warmup_ratio=0.06,
        max_length=spec["max_length"],
        seed=spec["seed"],
        batching="group_by_length",
        objective="dpo" if dpo else "supervised",
        **LORASP_CHAT_KNOBS.get(spec["method"], DPO_TRAIN_SETTINGS),
    )
    return train(train_config, model, tokenizer, examples)


def run_chat(
    spec: dict[str, Any], train_rows: list[LabelledSentence], eval_rows: list[LabelledSentence]
) -> dict[str, Any]:
    from lorasp_core import ChatExample, LoraSPConfig, apply_lorasp, load_base_model, trainable_parameters

    torch.manual_seed(spec["seed"])
    loaded = load_base_model(spec.get("model", "smollm2-135m-instruct"))
    model, tokenizer = loaded.model, loaded.tokenizer
    result: dict[str, Any] = {
        "base_parameters": base_parameter_count(model),
        "trainable_parameters": 0,
        "optimizer_state_bytes": 0,
        "train_seconds": 0.0,
        "tokens_per_second": None,
    }
    method = spec["method"]
    if method != "chat-base":
        config = LoraSPConfig(
            r=spec["r"], alpha=spec["alpha"], freeze_ratio=0.5, mask_seed=spec["seed"], init_seed=spec["seed"]
        )
        apply_lorasp(model, config)
        stages: list[tuple[bool, float, list[Any]]] = []  # (dpo, learning rate, examples)
        chats = [ChatExample(messages=tuple(as_messages(r, True))) for r in train_rows]
        pairs = [as_preference(r) for r in train_rows]
        if method in LORASP_CHAT_KNOBS:
            stages.append((False, spec["learning_rate"], chats))
        if method == "chat-sft-dpo":
            stages.append((False, SFT_LEARNING_RATE, chats))
        if method in ("chat-dpo", "chat-sft-dpo"):
            stages.append((True, spec["learning_rate"], pairs))
        start = time.perf_counter()
        trained_tokens, optimizer_bytes = 0, 0
        for dpo, learning_rate, examples in stages:
            trained = _train_stage(spec, model, tokenizer, examples, dpo=dpo, learning_rate=learning_rate)
            trained_tokens += trained.trained_tokens
            optimizer_bytes = max(optimizer_bytes, int(trained.optimizer_state_bytes["adapter"]))
        seconds = time.perf_counter() - start
        result.update(
            train_seconds=seconds,
            tokens_per_second=trained_tokens / seconds,
            trainable_parameters=trainable_parameters(model),
            optimizer_state_bytes=optimizer_bytes,
            precision=trained.precision.to_dict() if trained.precision is not None else None,
            gradient_checkpointing=trained.gradient_checkpointing,
        )
    result["train_peak_rss_mb"] = peak_rss_mb()  # before the eval: bf16 generation adds its own peak
    start = time.perf_counter()
    result["dev_accuracy"] = generation_accuracy(model, tokenizer, eval_rows)
    result["eval_seconds"] = time.perf_counter() - start
    return result
