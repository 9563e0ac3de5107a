"""A quantized frozen base (QLoRA-style): the base's linear weights held in int8 or nf4, adapters on top.

`quantize_frozen_base` is the one place a base is quantized: `train` calls it on the wrapped model and
the serving base loader on the resident, so an adapter is served on the base it was trained on.

* "int8": weight-only int8 with one fp32 scale per output channel, by torchao (`Int8WeightOnlyConfig`);
  runs forward and backward-to-input on CPU and CUDA (the weight is dequantized per matmul).
* "nf4": QLoRA's 4-bit NormalFloat by bitsandbytes (`Linear4bit`), CUDA only, an optional extra
  (`pip install 'lorasp[nf4]'`).

What is quantized (`quantizable_linear_names`): every frozen `nn.Linear` except the output layers
(`wrapping.OUTPUT_LAYER_NAMES`: the LM head, often tied to the input embedding, whose tie a quantized
copy would break; a classification head, which trains). LoRA-SP's A/B entries, the trainable head,
norms and embeddings keep their dtype.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from lorasp_core.serving.types import BaseModelBundle
from lorasp_core.train_config import BASE_QUANTIZATIONS, BaseQuantization
from lorasp_core.wrapping import OUTPUT_LAYER_NAMES, modules_to_save_of

__all__ = [
    "BASE_QUANTIZATIONS",
    "BaseQuantization",
    "QuantizationUnavailableError",
    "quantize_frozen_base",
    "quantizing_base_loader",
    "resident_name",
]
Bundle = TypeVar("Bundle", bound=BaseModelBundle)
# The devices each quantization runs on.
QUANTIZATION_DEVICES: dict[BaseQuantization, frozenset[str]] = {
    "none": frozenset({"cpu", "cuda"}),
    "int8": frozenset({"cpu", "cuda"}),
    "nf4": frozenset({"cuda"}),
}
# Bytes per quantized weight element (a per-channel fp32 scale for int8, a per-64-block absmax for nf4).
QUANTIZED_WEIGHT_BYTES: dict[BaseQuantization, float] = {"int8": 1.0, "nf4": 0.5 + 4 / 64}
# A resident base quantized `q` is known to the serving engine as f"{base}{RESIDENT_SEPARATOR}{q}";
# base model names never hold it (model_registration.NAME_PATTERN), so the name parses back.
RESIDENT_SEPARATOR = "+"


class QuantizationUnavailableError(ValueError):
    """`base_quantization` asks for what this device or installation cannot run."""

    option = "base_quantization"

    def __init__(self, quantization: str, reason: str) -> None:
        self.quantization = quantization
        self.reason = reason
        super().__init__(f"base_quantization {quantization!r} cannot run here: {reason}")


def runs_on(quantization: BaseQuantization, device_type: str) -> bool:
    return device_type in QUANTIZATION_DEVICES[quantization]


def check_quantization(quantization: str, device: torch.device) -> BaseQuantization:
    """`quantization` as a BaseQuantization, or QuantizationUnavailableError if it cannot run on `device`."""
    if quantization not in BASE_QUANTIZATIONS:
        raise QuantizationUnavailableError(quantization, f"not one of {BASE_QUANTIZATIONS}")
    chosen: BaseQuantization = quantization
    if not runs_on(chosen, device.type):
        raise QuantizationUnavailableError(
            chosen, f"needs a {' or '.join(sorted(QUANTIZATION_DEVICES[chosen]))} device, got {device.type}"
        )
    if chosen == "nf4" and importlib.util.find_spec("bitsandbytes") is None:
        raise QuantizationUnavailableError(
            chosen, "bitsandbytes is not installed (pip install 'lorasp[nf4]')"
        )
    return chosen


def quantizable_linear_names(model: nn.Module, trainable_heads: Sequence[str] | None = None) -> list[str]:
    """Full names of the `nn.Linear`s a quantized base holds quantized: not an output layer, not inside a
    trained head (`trainable_heads`; default: the wrapped model's modules_to_save) and not trainable
    (a skeleton's parameters all require grad: only the wrapped model's frozen state is read)."""
    heads = modules_to_save_of(model) if trainable_heads is None else tuple(trainable_heads)
    wrapped = trainable_heads is None
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and not any(part in OUTPUT_LAYER_NAMES for part in name.split("."))
        and not any(name == head or name.startswith(head + ".") for head in heads)
        and not (wrapped and module.weight.requires_grad)
    ]


def linear_weight(model: nn.Module, name: str) -> torch.Tensor:
    """The weight of the `nn.Linear` called `name` (one of `quantizable_linear_names`)."""
    module = model.get_submodule(name)
    assert isinstance(module, nn.Linear)
    return module.weight


def is_quantized(weight: torch.Tensor) -> bool:
    """A weight already quantized: a torchao tensor subclass (what `.data` is) or a bitsandbytes
    Params4bit (a Parameter subclass over packed uint8 data)."""
    data = weight.data if isinstance(weight, nn.Parameter) else weight
    return type(weight) not in (torch.Tensor, nn.Parameter) or type(data) is not torch.Tensor


@dataclass(frozen=True)
class QuantizedBaseReport:
    quantization: BaseQuantization
    layers: int  # how many linears were quantized by this call


def quantize_frozen_base(model: nn.Module, quantization: BaseQuantization) -> QuantizedBaseReport:
    """Quantize the frozen linears of `model` in place (on the device they are on); a no-op for "none"
    and for layers already quantized, so calling it twice (a resumed run) changes nothing."""
    device = next(model.parameters()).device
    check_quantization(quantization, device)
    if quantization == "none":
        return QuantizedBaseReport(quantization, 0)
    names = [name for name in quantizable_linear_names(model) if not is_quantized(linear_weight(model, name))]
    if names:
        if quantization == "int8":
            _int8_weight_only(model, frozenset(names))
        else:
            _nf4(model, names, device)
    return QuantizedBaseReport(quantization, len(names))


class _LinearDequantizingInBackward(torch.autograd.Function):
    """`x W^T + b` with a quantized `W` that keeps only the quantized `W` for the backward. Through plain
    autograd, torchao's matmul saves the dequantized full-precision copy of every layer's weight until the
    backward (measured: as much memory as the unquantized base); this dequantizes it again there instead,
    as bitsandbytes' MatMul4Bit does. The weight is frozen: only the input gets a gradient."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.weight, ctx.input_dtype = weight, x.dtype  # a frozen leaf: nothing to version-check
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        weight: torch.Tensor = ctx.weight.dequantize()
        grad_input = grad_output.to(weight.dtype) @ weight
        return grad_input.to(ctx.input_dtype), None, None


class Int8WeightOnlyLinear(nn.Linear):
    """An `nn.Linear` over a torchao int8 weight whose backward keeps no full-precision weight copy."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        output: torch.Tensor = _LinearDequantizingInBackward.apply(  # type: ignore[no-untyped-call]
            input, self.weight, self.bias
        )
        return output


def _int8_weight_only(model: nn.Module, names: frozenset[str]) -> None:
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    def chosen(module: nn.Module, name: str) -> bool:
        return name in names

    quantize_(model, Int8WeightOnlyConfig(), filter_fn=chosen)
    for name in names:
        linear = model.get_submodule(name)
        assert isinstance(linear, nn.Linear)
        replacement = Int8WeightOnlyLinear(
            linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta"
        )
        replacement.weight, replacement.bias = linear.weight, linear.bias
        replacement.train(linear.training)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, replacement)


def _nf4(model: nn.Module, names: list[str], device: torch.device) -> None:
    import bitsandbytes as bnb  # CUDA-only optional extra; check_quantization made sure it is there

    for name in names:
        linear = model.get_submodule(name)
        assert isinstance(linear, nn.Linear)
        weight = linear.weight.data
        quantized = bnb.nn.Linear4bit(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            compute_dtype=weight.dtype,
            quant_type="nf4",
        )
        quantized.weight = bnb.nn.Params4bit(weight.cpu(), requires_grad=False, quant_type="nf4")
        if linear.bias is not None:
            quantized.bias = nn.Parameter(linear.bias.data, requires_grad=False)
        quantized.to(device)  # Params4bit quantizes on its move to CUDA
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, quantized)


def held_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes the tensors hold as stored: a quantized weight's data and scales, not its logical size."""
    return sum(_stored_bytes(tensor) for tensor in tensors)


def _stored_bytes(tensor: torch.Tensor) -> int:
    """A tensor's own bytes; a tensor subclass's are those of the plain tensors it holds (torchao's
    `__tensor_flatten__` names them)."""
    data = tensor.data if isinstance(tensor, nn.Parameter) else tensor
    flatten = getattr(data, "__tensor_flatten__", None)
    if type(data) is torch.Tensor or flatten is None:
        return data.numel() * data.element_size()
    inner_names, _ = flatten()
    return sum(_stored_bytes(getattr(data, inner)) for inner in inner_names)


def resident_name(base_model: str, quantization: BaseQuantization) -> str:
    """The serving engine's name for `base_model` held with `quantization` (the plain name for "none")."""
    return base_model if quantization == "none" else f"{base_model}{RESIDENT_SEPARATOR}{quantization}"


def parse_resident_name(name: str) -> tuple[str, BaseQuantization]:
    """(base model, quantization) of a `resident_name`."""
    base, separator, suffix = name.rpartition(RESIDENT_SEPARATOR)
    for quantization in BASE_QUANTIZATIONS:
        if separator and suffix == quantization and quantization != "none":
            return base, quantization
    return name, "none"


def quantizing_base_loader(load: Callable[[str], Bundle]) -> Callable[[str], Bundle]:
    """A serving base loader that also holds quantized residents: for `resident_name(base, q)` it loads
    `base` through `load` and quantizes it as training did (frozen first: a resident never trains, and
    every linear but the output layers is then quantized). The engine keeps one resident per name, so
    one per (base model, quantization)."""

    def load_resident(name: str) -> Bundle:
        base, quantization = parse_resident_name(name)
        bundle = load(base)
        if quantization != "none":
            bundle.model.requires_grad_(False)
            quantize_frozen_base(bundle.model, quantization)
        return bundle

    return load_resident
