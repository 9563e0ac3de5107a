"""One base model's running decode batch for continuous batching: rows join and leave between steps.

Between two steps the batch holds a KV cache of width L (left-padded, every row right-aligned), an
attention mask of width L + 1 (the pending token included), and each row's pending token. Newcomers are
prefilled as their own left-padded batch, take their first token, and are merged in: the shorter cache
and mask are left-padded with zeros (masked, so exact) to a common width and concatenated on the batch
dimension. Position ids come from the mask, so a row sees the positions it would see alone. When rows
leave, cache columns that are padding for every remaining row are trimmed off the left.

Token choice is the static decode loop's own per-row code (`decode._advance`, `decode.sample_token`,
looked up on the module at each call), so both loops pick tokens identically.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from lorasp_core.serving import decode
from lorasp_core.serving.decode import DecodeRow, _RowState
from lorasp_core.serving.resident import ResidentModel, model_device
from lorasp_core.serving.sampling import choose_token, row_sampler
from lorasp_core.serving.text_stream import TextStream


@dataclass
class LiveRow:
    row: DecodeRow
    state: _RowState

    @property
    def final_length(self) -> int:
        """Cache columns this row occupies when it finishes at max_tokens (its worst case)."""
        return len(self.row.prompt_ids) + self.row.max_tokens


def kv_bytes_per_token(resident: ResidentModel) -> int:
    """KV-cache bytes one token of one row takes, from the model config (keys and values, all layers)."""
    config = getattr(resident.model, "config", None)
    config = getattr(config, "text_config", None) or config
    layers = int(getattr(config, "num_hidden_layers", 0) or 0)
    heads = int(getattr(config, "num_attention_heads", 0) or 0)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = getattr(config, "head_dim", None) or (int(getattr(config, "hidden_size", 0)) // max(heads, 1))
    if not layers or not kv_heads or not head_dim:
        raise ValueError(f"cannot size the KV cache of {resident.name!r} from its config")
    parameter = next(resident.model.parameters())
    return 2 * layers * kv_heads * int(head_dim) * parameter.element_size()


def kv_layers(cache: DynamicCache) -> list[DynamicLayer]:
    """The cache's layers, each a full-attention DynamicLayer: the only kind whose rows can be merged
    and trimmed by padding (a sliding window or linear-attention state cannot)."""
    layers: list[DynamicLayer] = []
    for layer in cache.layers:
        if not isinstance(layer, DynamicLayer) or layer.is_sliding:
            raise NotImplementedError(f"continuous batching does not support {type(layer).__name__} caches")
        layers.append(layer)
    return layers


def cache_bytes(cache: DynamicCache | None) -> int:
    """Bytes of the key and value tensors the cache holds now (measured, not estimated)."""
    if cache is None:
        return 0
    total = 0
    for layer in kv_layers(cache):
        for tensor in (layer.keys, layer.values):
            if tensor is not None:
                total += tensor.numel() * tensor.element_size()
    return total


def _pad_left(tensor: torch.Tensor, dim: int, amount: int) -> torch.Tensor:
    if amount == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = amount
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


class RunningBatch:
    def __init__(self, resident: ResidentModel) -> None:
        self.resident = resident
        self.device = model_device(resident.model)
        self.eos_ids = decode.eos_token_ids(resident)
        self.vocab_size = decode.vocab_size(resident)
        self.pad_id = decode.pad_token_id(resident)
        self.rows: list[LiveRow] = []
        self.cache: DynamicCache | None = None
        self.attention_mask: torch.Tensor | None = None  # (rows, L + 1)
        self.step_ids: torch.Tensor | None = None  # (rows, 1): each row's pending token
        self.row_slots: torch.Tensor | None = None  # (rows,)

    def kv_bytes(self) -> int:
        return cache_bytes(self.cache)

    def _forward(
        self, ids: torch.Tensor, mask: torch.Tensor, slots: torch.Tensor, cache: DynamicCache
    ) -> torch.Tensor:
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1] :]
        with self.resident.active_slots(slots):
            output = self.resident.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=position_ids,
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        logits: torch.Tensor = output.logits[:, -1, :]
        return logits

    def _choose(self, rows: list[LiveRow], logits: torch.Tensor) -> tuple[list[int], list[int]]:
        """Each row takes its token (a row that raises fails alone); (positions still running, tokens).
        The same per-row choice as the static loop (sampling.choose_token), so outputs match it."""
        keep: list[int] = []
        tokens: list[int] = []
        for position, live in enumerate(rows):
            row, state = live.row, live.state
            try:
                assert state.sampler is not None
                choice = choose_token(state.sampler, logits[position])
                decode._advance(row, state, choice, self.eos_ids)
            except Exception as error:
                decode._fail(row, state, error)
                continue
            if state.finish_reason is None:
                keep.append(position)
                tokens.append(choice.token_id)
        return keep, tokens

    def admit(self, rows: list[DecodeRow]) -> None:
        """Prefill `rows` together, give each its first token, and merge those still running."""
        newcomers: list[LiveRow] = []
        for row in rows:
            state = _RowState(TextStream(self.resident.tokenizer, row.stop, self.resident.tokenizer_lock))
            try:
                state.sampler = row_sampler(row.sampling(), self.resident.tokenizer, self.vocab_size)
            except Exception as error:
                decode._fail(row, state, error)
                continue
            newcomers.append(LiveRow(row, state))
        if not newcomers:
            return
        try:
            self._prefill_and_merge(newcomers)
        except Exception as error:  # the newcomers' prefill or merge failed: they fail, the others go on
            for live in newcomers:
                if live.state.error is None and live.state.finish_reason is None:
                    decode._fail(live.row, live.state, error)

    def _prefill_and_merge(self, newcomers: list[LiveRow]) -> None:
        ids, mask = (t.to(self.device) for t in decode._left_pad([n.row for n in newcomers], self.pad_id))
        slots = torch.tensor([n.row.slot for n in newcomers], dtype=torch.long, device=self.device)
        cache = DynamicCache(config=getattr(self.resident.model, "config", None))
        with torch.inference_mode():
            logits = self._forward(ids, mask, slots, cache)
        kv_layers(cache)  # an unsupported cache kind fails here, before any row takes a token
        keep, tokens = self._choose(newcomers, logits)
        if not keep:
            return
        selected = torch.tensor(keep, dtype=torch.long, device=self.device)
        cache.batch_select_indices(selected)
        mask = torch.cat([mask[selected], mask.new_ones((len(keep), 1))], dim=1)
        step_ids = torch.tensor(tokens, dtype=torch.long, device=self.device).view(-1, 1)
        self._merge([newcomers[p] for p in keep], cache, mask, step_ids, slots[selected])

    def _merge(
        self,
        rows: list[LiveRow],
        cache: DynamicCache,
        mask: torch.Tensor,
        step_ids: torch.Tensor,
        slots: torch.Tensor,
    ) -> None:
        if (
            self.cache is None
            or self.attention_mask is None
            or self.step_ids is None
            or self.row_slots is None
        ):
            self.rows, self.cache, self.attention_mask, self.step_ids, self.row_slots = (
                rows,
                cache,
                mask,
                step_ids,
                slots,
            )
            return
        width = max(self.attention_mask.shape[1], mask.shape[1])
        running_pad, new_pad = width - self.attention_mask.shape[1], width - mask.shape[1]
        for running_layer, new_layer in zip(kv_layers(self.cache), kv_layers(cache), strict=True):
            for name in ("keys", "values"):
                running, new = getattr(running_layer, name), getattr(new_layer, name)
                assert running is not None and new is not None
                merged = torch.cat([_pad_left(running, 2, running_pad), _pad_left(new, 2, new_pad)], dim=0)
                setattr(running_layer, name, merged)
        self.attention_mask = torch.cat(
            [_pad_left(self.attention_mask, 1, running_pad), _pad_left(mask, 1, new_pad)], dim=0
        )
        self.step_ids = torch.cat([self.step_ids, step_ids], dim=0)
        self.row_slots = torch.cat([self.row_slots, slots], dim=0)
        self.rows = self.rows + rows

    def step(self) -> None:
        """One forward for every row; finished and failed rows leave, their padding is trimmed."""
        if not self.rows:
            return
        assert self.cache is not None and self.attention_mask is not None
        assert self.step_ids is not None and self.row_slots is not None
        with torch.inference_mode():
            logits = self._forward(self.step_ids, self.attention_mask, self.row_slots, self.cache)
        keep, tokens = self._choose(self.rows, logits)
        mask = self.attention_mask
        if len(keep) < len(self.rows):
            if not keep:
                self.clear()
                return
            selected = torch.tensor(keep, dtype=torch.long, device=self.device)
            self.cache.batch_select_indices(selected)
            mask, self.row_slots = mask[selected], self.row_slots[selected]
            self.rows = [self.rows[p] for p in keep]
            mask = self._trim(mask)
        self.step_ids = torch.tensor(tokens, dtype=torch.long, device=self.device).view(-1, 1)
        self.attention_mask = torch.cat([mask, mask.new_ones((len(self.rows), 1))], dim=1)

    def _trim(self, mask: torch.Tensor) -> torch.Tensor:
        """Drop leading columns that are padding for every row (the cache and the mask alike)."""
        first = int(torch.argmax(mask.any(dim=0).to(torch.int8)).item())
        if first == 0:
            return mask
        assert self.cache is not None
        for layer in kv_layers(self.cache):
            if layer.keys is not None and layer.values is not None:
                layer.keys, layer.values = layer.keys[:, :, first:, :], layer.values[:, :, first:, :]
        return mask[:, first:]

    def fail_all(self, error: BaseException) -> None:
        """The shared forward raised: every row fails (each told once), the batch is emptied."""
        for live in self.rows:
            decode._fail(live.row, live.state, error)
        self.clear()

    def clear(self) -> None:
        self.rows, self.cache, self.attention_mask, self.step_ids, self.row_slots = [], None, None, None, None

    def final_lengths(self) -> list[int]:
        return [live.final_length for live in self.rows]


def worst_case_kv_bytes(per_token: int, final_lengths: list[int]) -> int:
    """The most KV bytes a batch of rows can reach, every row running to max_tokens: rows x the longest
    row's final length (a right-aligned, trimmed cache is exactly as wide as its longest row)."""
    return per_token * len(final_lengths) * max(final_lengths, default=0)
