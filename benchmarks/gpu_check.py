"""One short GPU check: LoRA-SP vs PEFT LoRA training in bf16, and the serving engine, on one GPU.

    python -m benchmarks.gpu_check --out benchmarks/results/gpu_check.json   # CUDA, < 10 min
    python -m benchmarks.gpu_check --smoke          # a tiny model on CPU: does it run?

Nothing is downloaded: a ~1B-parameter Llama-style model is built from a config with random weights
(in bf16, on the GPU), and the packaged smollm2-135m-instruct is added where it is installed. For each
model, LoRA-SP (freeze_ratio 0.5) and PEFT LoRA (same r, alpha and target modules) train side by side
with the same loop (random tokens, AdamW, bf16 autocast, frozen base held in bf16, fp32 adapter
weights) for a fixed number of steps; printed: tokens/s, model FLOP utilisation, peak GPU memory.
Then `lorasp_core.serving.ServingEngine` decodes concurrent requests on the model with 1 and with 8
adapters (aggregate generated tokens/s). Also one `lorasp_core.train()` run on synthetic chat data, so
the trainer itself is seen on CUDA.

MFU counts useful work as 4 x (base parameters) FLOPs per trained token: 2N for the forward, 2N for
the gradient with respect to the activations (the frozen base needs no weight gradients); the
adapters' own FLOPs and attention's are left out, so this is a slight under-estimate.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from lorasp_core.adapters import apply_lorasp, save_adapter
from lorasp_core.config import LoraSPConfig
from lorasp_core.data import ChatExample
from lorasp_core.layers import LoraSPLinear
from lorasp_core.models import LoadedModel, ModelUnavailableError, load_base_model, make_tiny_tokenizer
from lorasp_core.serving import GenerationRequest, ServingEngine
from lorasp_core.trainer import TrainConfig, train
from lorasp_core.wrapping import CONFIG_ATTR, MODULES_TO_SAVE_ATTR

TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Dense bf16 tensor-core peaks (no sparsity), by the name torch reports; unknown GPUs print no MFU.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0}


@dataclass(frozen=True)
class CheckModel:
    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase


def llama_1b_config(vocab_size: int) -> LlamaConfig:
    """Llama-3.2-1B's shape (16 layers, d=2048, GQA 32/8, SwiGLU 8192, tied embeddings)."""
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    )


def tiny_llama_config(vocab_size: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )


def random_llama(config: LlamaConfig, device: torch.device, dtype: torch.dtype) -> PreTrainedModel:
    torch.manual_seed(0)
    with device:  # initialise on the device: a 1B model's CPU init would take longer than its training
        model = LlamaForCausalLM(config)
    return model.to(dtype=dtype)


def check_models(device: torch.device, dtype: torch.dtype, smoke: bool) -> list[Callable[[], CheckModel]]:
    """Loaders, so only one model is in memory at a time."""
    try:
        if smoke:
            raise ModelUnavailableError("the smoke run uses the tiny tokenizer")
        smollm = load_base_model("smollm2-135m-instruct")
        tokenizer: PreTrainedTokenizerBase = smollm.tokenizer
        del smollm
        has_smollm = True
    except ModelUnavailableError:
        tokenizer, has_smollm = make_tiny_tokenizer(), False
    vocab = len(tokenizer)
    loaders: list[Callable[[], CheckModel]] = []
    if smoke:
        loaders.append(
            lambda: CheckModel("tiny-llama", random_llama(tiny_llama_config(vocab), device, dtype), tokenizer)
        )
        return loaders
    loaders.append(
        lambda: CheckModel("llama-1b-random", random_llama(llama_1b_config(vocab), device, dtype), tokenizer)
    )
    if has_smollm:

        def smollm_loader() -> CheckModel:
            loaded = load_base_model("smollm2-135m-instruct")
            return CheckModel(loaded.name, loaded.model.to(device=device, dtype=dtype), loaded.tokenizer)

        loaders.append(smollm_loader)
    return loaders


def base_parameters(model: nn.Module) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if "lora" not in name)


def wrap(kind: str, model: PreTrainedModel, rank: int) -> nn.Module:
    """LoRA-SP or PEFT LoRA on the same modules; adapter weights in fp32 (the master copy)."""
    if kind == "lorasp":
        wrapped = apply_lorasp(model, LoraSPConfig(r=rank, alpha=2.0 * rank, target_modules=TARGET_MODULES))
    else:
        config = LoraConfig(
            r=rank, lora_alpha=2 * rank, target_modules=list(TARGET_MODULES), lora_dropout=0.0
        )
        wrapped = get_peft_model(model, config)
    for name, parameter in wrapped.named_parameters():
        if parameter.requires_grad and "lora" in name:
            parameter.data = parameter.data.float()
    return wrapped


def train_steps(
    model: nn.Module, device: torch.device, batch: int, seq: int, steps: int, warmup: int, vocab: int
) -> dict[str, float | None]:
    """Seconds per step after `warmup` steps, real tokens/s, peak memory (GiB) and the final loss."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    generator = torch.Generator(device="cpu").manual_seed(0)
    tokens = torch.randint(0, vocab, (steps + warmup, batch, seq), generator=generator)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    loss = torch.tensor(0.0)
    started = time.perf_counter()
    for step in range(steps + warmup):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
        input_ids = tokens[step].to(device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return {
        "seconds_per_step": seconds / steps,
        "tokens_per_second": steps * batch * seq / seconds,
        "peak_memory_gib": peak,
        "final_loss": float(loss.item()),
        "trainable_parameters": float(sum(p.numel() for p in trainable)),
    }


def mfu(tokens_per_second: float, parameters: int, device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    peak = next((tflops for key, tflops in BF16_PEAK_TFLOPS.items() if key in name), None)
    return None if peak is None else 4 * parameters * tokens_per_second / (peak * 1e12)


def random_adapters(checked: CheckModel, directory: Path, count: int, rank: int) -> list[Path]:
    """`count` distinct LoRA-SP adapters built on the (then unwrapped) model and saved in PEFT format."""
    paths = []
    for index in range(count):
        config = LoraSPConfig(r=rank, alpha=2.0 * rank, target_modules=TARGET_MODULES, mask_seed=index)
        wrapped = apply_lorasp(checked.model, config)
        with torch.no_grad():
            for name, parameter in wrapped.named_parameters():
                if "lora_B_trainable" in name:
                    parameter.normal_(0.0, 0.01)
        path = directory / f"adapter-{index}"
        save_adapter(wrapped, path, base_model_name_or_path=checked.name, task_type="causal-lm")
        paths.append(path)
        unwrap_lorasp(wrapped)
    return paths


def serving_tokens_per_second(
    checked: CheckModel, adapter_counts: tuple[int, ...], requests: int, max_tokens: int, rank: int
) -> dict[str, float]:
    """Aggregate decode tokens/s of `requests` concurrent requests spread over N adapters, for each N."""
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = random_adapters(checked, Path(tmp), max(adapter_counts), rank)
        bundle = LoadedModel(
            name=checked.name, task="causal-lm", model=checked.model, tokenizer=checked.tokenizer
        )
        engine = ServingEngine(lambda _name: bundle, max_adapters=len(paths), max_batch_size=requests)
        try:
            for index, path in enumerate(paths):
                engine.load_adapter(f"adapter-{index}", path, checked.name)

            def one(index: int, adapters: int) -> None:
                request = GenerationRequest(
                    model=checked.name,
                    adapter_id=f"adapter-{index % adapters}",
                    prompt="Write a short story about a lighthouse keeper.",
                    max_tokens=max_tokens,
                    ignore_eos=True,
                )
                engine.generate(request).text()

            one(0, 1)  # warm-up
            for adapters in adapter_counts:
                threads = [threading.Thread(target=one, args=(i, adapters)) for i in range(requests)]
                started = time.perf_counter()
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                figures[f"{adapters}_adapters_tokens_per_second"] = (
                    requests * max_tokens / (time.perf_counter() - started)
                )
        finally:
            engine.close()
    return figures


def unwrap_lorasp(model: nn.Module) -> None:
    """Put the base layers back, so the next adapter is built on the bare model (no second copy)."""
    for _, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, LoraSPLinear):
                setattr(module, child_name, child.base_layer)
    for attribute in (CONFIG_ATTR, MODULES_TO_SAVE_ATTR):
        if hasattr(model, attribute):
            delattr(model, attribute)


def trainer_run(checked: CheckModel, device: torch.device, steps: int, batch: int) -> dict[str, float]:
    """lorasp_core.train() itself on CUDA (bf16 autocast), on synthetic chat examples."""
    examples = [
        ChatExample(
            messages=(
                {
                    "role": "user",
                    "content": f"Review number {i}: the film was {'great' if i % 2 else 'dull'}.",
                },
                {"role": "assistant", "content": "positive" if i % 2 else "negative"},
            )
        )
        for i in range(steps * batch)
    ]
    model = apply_lorasp(checked.model, LoraSPConfig(r=8, alpha=16.0, target_modules=TARGET_MODULES))
    config = TrainConfig(
        task="causal-lm", batch_size=batch, max_steps=steps, device=str(device), mixed_precision="bf16"
    )
    started = time.perf_counter()
    result = train(config, model, checked.tokenizer, examples)
    seconds = time.perf_counter() - started
    unwrap_lorasp(model)
    return {
        "steps": float(result.steps),
        "seconds": seconds,
        "tokens_per_second": result.trained_tokens / seconds,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    steps, warmup = (2, 1) if args.smoke else (args.steps, 3)
    batch, seq = (2, 32) if args.smoke else (args.batch, args.seq)
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "batch": batch,
        "seq": seq,
        "steps": steps,
        "rank": args.rank,
        "models": {},
    }
    for loader in check_models(device, torch.bfloat16, args.smoke):
        for kind in ("lorasp", "peft-lora"):
            checked = loader()
            parameters = base_parameters(checked.model)
            wrapped = wrap(kind, checked.model, args.rank)
            figures = train_steps(wrapped, device, batch, seq, steps, warmup, len(checked.tokenizer))
            figures["mfu"] = mfu(float(figures["tokens_per_second"] or 0.0), parameters, device)
            entry = results["models"].setdefault(checked.name, {"base_parameters": parameters})
            entry[kind] = figures
            print(f"{checked.name} {kind}: {json.dumps(figures)}", flush=True)
            del wrapped, checked
            if device.type == "cuda":
                torch.cuda.empty_cache()
        checked = loader()
        entry = results["models"][checked.name]
        entry["trainer"] = trainer_run(checked, device, 2 if args.smoke else 20, batch)
        print(f"{checked.name} lorasp_core.train(): {json.dumps(entry['trainer'])}", flush=True)
        del checked
        checked = loader()  # a bare model: serving installs its own slot wrappers
        entry["serving"] = serving_tokens_per_second(
            checked,
            (1, 8),
            2 if args.smoke else args.requests,
            4 if args.smoke else args.max_tokens,
            args.rank,
        )
        print(f"{checked.name} serving: {json.dumps(entry['serving'])}", flush=True)
        del checked
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="a tiny model on CPU, a few steps: does it run?")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    results = run(args)
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
