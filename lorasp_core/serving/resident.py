"""One resident base model: its multi-adapter wrappers, slot bookkeeping and the forward lock."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import PurePath
from typing import Any

import torch
from torch import nn

from lorasp_core.peft_format import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE
from lorasp_core.serving.adapter_files import ParsedAdapter
from lorasp_core.serving.multi_lora import MultiAdapterLinear, RowDispatchModule, SlotSelection, linear_dims
from lorasp_core.serving.types import AdapterLoadError, BaseModelBundle


def model_device(model: nn.Module) -> torch.device:
    """Where the model's weights are: the batch tensors built on the CPU are moved there."""
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _same_model_name(a: str, b: str) -> bool:
    """Names match exactly, case-insensitively, or by their last path component (hub id vs local dir)."""
    a, b = a.strip().rstrip("/").lower(), b.strip().rstrip("/").lower()
    return a == b or PurePath(a).name == PurePath(b).name


def _max_text_chars(model: nn.Module, tokenizer: Any) -> int | None:
    """Characters beyond which a text cannot fit the model's context, whatever it says: no token covers
    more characters than the longest vocabulary entry (x4 for normalisers that shrink text). Checked
    before tokenizing, so a huge text never holds the shared tokenizer lock for long."""
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    get_vocab = getattr(tokenizer, "get_vocab", None)
    if not context or get_vocab is None:
        return None
    longest = max((len(str(token)) for token in get_vocab()), default=1)
    return int(context) * max(longest, 1) * 4


def _contiguous_strides(shape: torch.Size) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


def _give_head_default_strides(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """Forward pre-hook of the output head: a prefill hands it the last position's hidden states as a
    slice, (B, 1, d) with the strides of (B, T, d). With frozen (requires_grad False) weights, torch's
    matmul does not fold such a 3-D input into one mm but runs a bmm on a copy of the expanded weight:
    ~70 ms per row for a 49152 x 576 bf16 head on this CPU instead of ~3 ms. A copy of B x d is cheap."""
    hidden = args[0] if args else None
    if not isinstance(hidden, torch.Tensor) or hidden.dim() < 3:
        return None
    if hidden.stride() == _contiguous_strides(hidden.shape):
        return None
    return (hidden.clone(memory_format=torch.contiguous_format), *args[1:])


class ResidentModel:
    """A base model kept in memory once, shared by every adapter trained on it.

    Wrappers are installed lazily, per module path, the first time an adapter targets that module: memory
    for slot tensors is only spent on modules some adapter adapts, and untouched modules keep their plain
    nn.Linear forward. Slot 0 is "no adapter"; slots 1..S-1 are handed out by the engine.
    """

    def __init__(self, name: str, bundle: BaseModelBundle, num_slots: int) -> None:
        self.name = name
        self.task = bundle.task
        self.model: nn.Module = bundle.model
        self.tokenizer: Any = bundle.tokenizer
        self.model.eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        get_head = getattr(self.model, "get_output_embeddings", None)
        head = get_head() if callable(get_head) else None
        if isinstance(head, nn.Module):
            head.register_forward_pre_hook(_give_head_default_strides)
        self.num_slots = num_slots
        self.selection = SlotSelection()
        self.wrappers: dict[str, MultiAdapterLinear] = {}
        self.dispatchers: dict[str, RowDispatchModule] = {}
        self.free_slots: list[int] = list(range(num_slots - 1, 0, -1))  # pop() hands out slot 1 first
        self.lock = threading.RLock()  # one forward (or slot write) at a time on this model
        # HF fast tokenizers are not safe to share across threads (padding/truncation settings mutate
        # the Rust object: "Already borrowed"); request threads and the decoder share this one.
        self.tokenizer_lock = threading.Lock()
        # What transformers passes a chat template besides the messages (bos_token, eos_token, ...),
        # read once so that rendering never touches the shared tokenizer.
        special = getattr(self.tokenizer, "special_tokens_map", None) or {}
        self.template_variables: dict[str, str] = {str(k): str(v) for k, v in dict(special).items()}
        self.max_text_chars = _max_text_chars(self.model, self.tokenizer)

    def name_aliases(self) -> list[str]:
        config = getattr(self.model, "config", None)
        aliases = [self.name, str(getattr(config, "name_or_path", "") or "")]
        aliases.append(str(getattr(config, "_name_or_path", "") or ""))
        return [a for a in aliases if a]

    def _module(self, path: str) -> nn.Module | None:
        try:
            module = self.model.get_submodule(path)
        except AttributeError:
            return None
        return module

    def _original(self, path: str) -> nn.Module | None:
        module = self._module(path)
        if isinstance(module, MultiAdapterLinear):
            return module.base_layer
        if isinstance(module, RowDispatchModule):
            return module.base_module
        return module

    def validate(self, adapter: ParsedAdapter) -> None:
        """Raise AdapterLoadError unless every tensor of `adapter` fits this model; changes nothing."""
        aid = adapter.adapter_id
        base = adapter.base_model_name_or_path
        if base is not None and not any(_same_model_name(base, alias) for alias in self.name_aliases()):
            raise AdapterLoadError(
                aid, ADAPTER_CONFIG_FILE, f"adapter was trained on base model {base!r}, not {self.name!r}"
            )
        if adapter.task != self.task:
            raise AdapterLoadError(
                aid,
                ADAPTER_CONFIG_FILE,
                f"adapter task is {adapter.task} but base model {self.name!r} is {self.task}",
            )
        for path, pair in adapter.lora.items():
            module = self._original(path)
            if module is None:
                raise AdapterLoadError(
                    aid, ADAPTER_WEIGHTS_FILE, f"target module {path!r} not found in {self.name!r}"
                )
            dims = linear_dims(module)
            if dims is None:
                raise AdapterLoadError(
                    aid,
                    ADAPTER_WEIGHTS_FILE,
                    f"target module {path!r} is a {type(module).__name__}, not a linear layer",
                )
            in_features, out_features = dims
            if pair.lora_A.shape[1] != in_features or pair.lora_B.shape[0] != out_features:
                raise AdapterLoadError(
                    aid,
                    ADAPTER_WEIGHTS_FILE,
                    f"module {path!r}: lora_A {tuple(pair.lora_A.shape)} / lora_B {tuple(pair.lora_B.shape)} "
                    f"do not fit the base layer (in={in_features}, out={out_features})",
                )
        for path, params in adapter.saved_modules.items():
            self._validate_saved_module(aid, path, params)
        if adapter.label_names is not None and adapter.saved_modules:
            widths = {int(t.shape[0]) for params in adapter.saved_modules.values() for t in params.values()}
            if len(adapter.label_names) not in widths:
                raise AdapterLoadError(
                    aid,
                    "lorasp.json",
                    f"{len(adapter.label_names)} label_names but the head outputs {widths}",
                )

    def _validate_saved_module(self, aid: str, path: str, params: dict[str, torch.Tensor]) -> None:
        module = self._original(path)
        if module is None:
            raise AdapterLoadError(
                aid, ADAPTER_WEIGHTS_FILE, f"saved module {path!r} not found in {self.name!r}"
            )
        own = dict(module.named_parameters()) | dict(module.named_buffers())
        for name, tensor in params.items():
            if name not in own:
                raise AdapterLoadError(
                    aid, ADAPTER_WEIGHTS_FILE, f"saved module {path!r} has no parameter {name!r}"
                )
            expected = own[name].shape
            # The output dimension (dim 0) may differ: a head with its own number of labels.
            if tensor.ndim != len(expected) or tuple(tensor.shape[1:]) != tuple(expected[1:]):
                raise AdapterLoadError(
                    aid,
                    ADAPTER_WEIGHTS_FILE,
                    f"{path}.{name} has shape {tuple(tensor.shape)}, incompatible with {tuple(expected)}",
                )

    def _replace_module(self, path: str, module: nn.Module) -> None:
        parent_path, _, child = path.rpartition(".")
        setattr(self.model.get_submodule(parent_path), child, module)

    def _wrapper(self, path: str, rank: int) -> MultiAdapterLinear:
        wrapper = self.wrappers.get(path)
        if wrapper is None:
            wrapper = MultiAdapterLinear(self.model.get_submodule(path), self.num_slots, rank, self.selection)
            self._replace_module(path, wrapper)
            self.wrappers[path] = wrapper
        return wrapper

    def _dispatcher(self, path: str) -> RowDispatchModule:
        dispatcher = self.dispatchers.get(path)
        if dispatcher is None:
            dispatcher = RowDispatchModule(self.model.get_submodule(path), self.selection)
            self._replace_module(path, dispatcher)
            self.dispatchers[path] = dispatcher
        return dispatcher

    def take_slot(self) -> int:
        if not self.free_slots:
            raise RuntimeError(f"no free adapter slot on {self.name!r}")  # the cache prevents this
        return self.free_slots.pop()

    def install(self, slot: int, adapter: ParsedAdapter) -> None:
        """Copy a validated adapter into `slot` (the caller holds no forward in flight)."""
        with self.lock:
            for path, pair in adapter.lora.items():
                self._wrapper(path, pair.rank).set_slot(slot, pair.lora_A, pair.lora_B, pair.scaling)
            for path, params in adapter.saved_modules.items():
                dispatcher = self._dispatcher(path)
                dispatcher.set_slot(slot, dispatcher.make_copy(params))

    def release_slot(self, slot: int) -> None:
        """Zero the slot everywhere and drop its module copies, then hand it back."""
        with self.lock:
            for wrapper in self.wrappers.values():
                wrapper.clear_slot(slot)
            for dispatcher in self.dispatchers.values():
                dispatcher.clear_slot(slot)
            if slot not in self.free_slots:
                self.free_slots.append(slot)

    def held_here(self) -> bool:
        """The calling thread holds this model's lock (it is inside `active_slots`): work that takes the
        lock must then run on this thread, not be handed to another that would wait for it forever."""
        # RLock's own check (threading.Condition relies on it); typeshed does not list it.
        return bool(self.lock._is_owned())  # type: ignore[attr-defined]

    @contextmanager
    def active_slots(self, row_slots: torch.Tensor | None) -> Iterator[None]:
        """Route each batch row through its slot for the forwards inside the block (holds the lock)."""
        with self.lock:
            self.selection.set(row_slots)
            try:
                yield
            finally:
                self.selection.set(None)
