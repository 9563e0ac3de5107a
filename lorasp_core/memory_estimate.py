"""How much memory a training job will need at its peak, estimated before any weight is loaded.

The API calls this at job creation with the base model's skeleton (modules on the meta device, see
`lorasp_core.models.skeleton`), so a job that no worker can hold is refused at once instead of dying of
an out-of-memory error an hour later, and a job that fits is sent to a queue whose workers can hold it.

The peak is the sum of:
* weights: every base parameter at the bytes of the dtype it is held in; with a quantized base
  (`base_quantization`), the linears `quantization.quantizable_linear_names` selects at the quantized
  bytes per weight (int8: 1, nf4: 0.5 + its block scales), their biases and everything else as held;
* adapter: per LoRA-SP entry of A and B, trainable ones as fp32 parameter + gradient + Adam's two
  moments (16 bytes), frozen ones as an fp32 buffer (4 bytes), and each entry's int64 index (8 bytes),
  plus the dense A and B rebuilt in each forward and kept for the backward (4 bytes);
* activations: what autograd keeps per token and layer for the backward. For a decoder layer with
  hidden size d, MLP width m and key/value width kv that is about 10 d + 2 kv + 5 m values
  (norm inputs, q/k/v/attention output, the MLP's gate/up/act/product and the inputs of the wrapped
  projections), at the compute dtype's bytes. With gradient checkpointing only each layer's input
  (d values per token) is kept, plus two layers' full sets (the one recomputed and its backward's);
* logits: the LM head's output, the shifted copy the loss takes, its log-softmax and the gradients of
  both in fp32 (5 x 4 bytes per vocabulary entry) at the positions that carry a loss (all positions
  when the head runs everywhere);
* runtime: the interpreter, torch and transformers themselves (measured: ~0.5 GiB RSS on CPU), and
  on CUDA the context and allocator slack.
`python -m benchmarks.memory_estimate` compares it with measured peaks (benchmarks/results/
memory_estimate.md): within ~15% of the peak RSS on CPU for smollm2 at 145 to 1715 tokens per example.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from lorasp_core.config import LoraSPConfig
from lorasp_core.quantization import QUANTIZED_WEIGHT_BYTES, linear_weight, quantizable_linear_names
from lorasp_core.train_config import BaseQuantization
from lorasp_core.wrapping import resolve_modules_to_save, resolve_target_names

GIB = 2**30
RUNTIME_BYTES = {"cpu": int(0.6 * GIB), "cuda": int(1.0 * GIB)}
DTYPE_BYTES: dict[str, float] = {
    "float32": 4,
    "bfloat16": 2,
    "float16": 2,
    "int8": 1,
    "nf4": 0.5,
    "int4": 0.5,
}
Device = Literal["cpu", "cuda"]


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes at the peak of a training step, by what holds them."""

    weights: int
    adapter: int
    activations: int
    logits: int
    runtime: int

    @property
    def total(self) -> int:
        return self.weights + self.adapter + self.activations + self.logits + self.runtime

    def describe(self) -> str:
        parts = ("weights", "adapter", "activations", "logits", "runtime")
        shown = ", ".join(f"{name} {getattr(self, name) / GIB:.2f}" for name in parts)
        return f"{self.total / GIB:.2f} GiB ({shown})"


@dataclass(frozen=True)
class TrainingShape:
    """What a job asks of the model: tokens per step and how the step is computed."""

    batch_size: int
    sequence_length: int
    weight_dtype: str = "float32"  # how the frozen base is held: a DTYPE_BYTES key
    compute_dtype: str = "float32"  # autocast dtype of the activations ("bfloat16" under bf16 autocast)
    gradient_checkpointing: bool = False
    base_quantization: BaseQuantization = "none"  # the frozen base's linears quantized (QLoRA-style)
    # Share of positions that carry a loss (chat: the assistant's tokens); 1.0 when the LM head runs
    # at every position.
    supervised_fraction: float = 1.0
    device: Device = "cpu"


def _config_int(config: object, *names: str, default: int = 0) -> int:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return default


def _adapter_bytes(skeleton: nn.Module, lora: LoraSPConfig) -> int:
    total = 0
    for name in resolve_target_names(skeleton, lora):
        module = skeleton.get_submodule(name)
        weight = getattr(module, "weight", None)
        if weight is None or weight.dim() != 2:
            continue
        out_features, in_features = weight.shape
        for entries in (lora.r * in_features, out_features * lora.r):
            frozen = round(lora.freeze_ratio * entries)
            trainable = entries - frozen
            total += 16 * trainable + 4 * frozen + 8 * entries + 4 * entries
    return total


def _weight_bytes(skeleton: nn.Module, lora: LoraSPConfig, shape: TrainingShape) -> int:
    held = DTYPE_BYTES[shape.weight_dtype]
    parameters = sum(parameter.numel() for parameter in skeleton.parameters())
    if shape.base_quantization == "none":
        return int(parameters * held)
    # the skeleton is unwrapped and all its parameters require grad: the trained head (modules_to_save,
    # as apply_lorasp picks it) is what stays unquantized, besides the output layers
    heads = resolve_modules_to_save(skeleton, lora)
    quantized = 0
    for name in quantizable_linear_names(skeleton, trainable_heads=heads):
        quantized += linear_weight(skeleton, name).numel()
    return int((parameters - quantized) * held + quantized * QUANTIZED_WEIGHT_BYTES[shape.base_quantization])


def estimate_training_memory(skeleton: nn.Module, lora: LoraSPConfig, shape: TrainingShape) -> MemoryEstimate:
    """The peak memory of training `skeleton` (a causal LM or classifier) with these adapters and shape."""
    config = getattr(skeleton, "config", None)
    weights = _weight_bytes(skeleton, lora, shape)

    hidden = _config_int(config, "hidden_size", "n_embd", "d_model")
    layers = _config_int(config, "num_hidden_layers", "n_layer", "num_layers", default=1)
    mlp = _config_int(config, "intermediate_size", "n_inner", "ffn_dim", default=4 * hidden)
    heads = _config_int(config, "num_attention_heads", "n_head", default=1)
    kv_heads = _config_int(config, "num_key_value_heads", default=heads)
    kv = hidden * kv_heads // max(heads, 1)
    vocab = _config_int(config, "vocab_size", default=0)

    tokens = shape.batch_size * shape.sequence_length
    compute_bytes = DTYPE_BYTES[shape.compute_dtype]
    per_layer_token = 10 * hidden + 2 * kv + 5 * mlp
    # checkpointing keeps each layer's input, plus two layers' full sets (recomputed + its backward's)
    kept = layers * hidden + 2 * per_layer_token if shape.gradient_checkpointing else layers * per_layer_token
    # attention probabilities of one layer at a time (eager attention keeps them; SDPA does not)
    attention = shape.batch_size * heads * shape.sequence_length**2
    activations = int((tokens * (kept + 2 * hidden) + attention) * compute_bytes)

    is_causal_lm = vocab > 0 and hasattr(skeleton, "lm_head")
    logits = int(20 * vocab * tokens * shape.supervised_fraction) if is_causal_lm else 0
    return MemoryEstimate(
        weights=weights,
        adapter=_adapter_bytes(skeleton, lora),
        activations=activations,
        logits=logits,
        runtime=RUNTIME_BYTES[shape.device],
    )
