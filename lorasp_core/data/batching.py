"""Batch orders (deterministic in seed and epoch), packing of causal-LM examples, and collation."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lorasp_core.data.tokenization import IGNORE_INDEX, TokenizedExample

MEGA_BATCH_MULTIPLIER = 50  # as transformers' get_length_grouped_indices


def _permutation(n: int, *, seed: int, epoch: int) -> list[int]:
    # a private generator: the global torch RNG (model init, dropout) is left untouched
    generator = torch.Generator().manual_seed(seed + epoch)
    return [int(index) for index in torch.randperm(n, generator=generator)]


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def _chunk(indices: Sequence[int], batch_size: int) -> list[list[int]]:
    return [list(indices[start : start + batch_size]) for start in range(0, len(indices), batch_size)]


def padded_batches(
    n: int, batch_size: int, *, seed: int, epoch: int, shuffle: bool = True
) -> list[list[int]]:
    """Indices 0..n-1 in batches of batch_size (the last may be smaller), shuffled per epoch."""
    _check_batch_size(batch_size)
    order = _permutation(n, seed=seed, epoch=epoch) if shuffle else list(range(n))
    return _chunk(order, batch_size)


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, *, seed: int, epoch: int
) -> list[list[int]]:
    """Batches of similar lengths, so little padding is wasted; still random across mega-batches.

    Like HF Trainer's group_by_length: shuffle, split into mega-batches of 50 x batch_size, sort each
    by length (longest first) and chunk. The batch holding the longest example goes first so that an
    out-of-memory error shows up at step 1, not hours later.
    """
    _check_batch_size(batch_size)
    order = _permutation(len(lengths), seed=seed, epoch=epoch)
    mega_batch_size = MEGA_BATCH_MULTIPLIER * batch_size
    batches: list[list[int]] = []
    for start in range(0, len(order), mega_batch_size):
        mega_batch = sorted(order[start : start + mega_batch_size], key=lambda index: -lengths[index])
        batches.extend(_chunk(mega_batch, batch_size))
    if batches:
        longest = max(range(len(batches)), key=lambda b: lengths[batches[b][0]])
        batches[0], batches[longest] = batches[longest], batches[0]
    return batches


def packed_rows(examples: Sequence[TokenizedExample], max_length: int, eos_id: int) -> list[TokenizedExample]:
    """Concatenate causal-LM examples, in order, into rows of at most max_length tokens.

    Whole examples only (none is split across rows, so every loss mask stays intact); an example that
    does not end with eos_id gets one as a separator, not trained on. An example longer than max_length
    on its own is truncated to fill one row.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    rows: list[TokenizedExample] = []
    row_ids: list[int] = []
    row_labels: list[int] = []
    for example in examples:
        if not isinstance(example.labels, list):
            raise ValueError("packed_rows needs causal-LM examples (per-token labels), not class ids")
        ids, labels = list(example.input_ids), list(example.labels)
        if not ids:
            continue
        if ids[-1] != eos_id:
            ids.append(eos_id)
            labels.append(IGNORE_INDEX)
        ids, labels = ids[:max_length], labels[:max_length]
        if row_ids and len(row_ids) + len(ids) > max_length:
            rows.append(TokenizedExample(input_ids=row_ids, labels=row_labels))
            row_ids, row_labels = [], []
        row_ids += ids
        row_labels += labels
    if row_ids:
        rows.append(TokenizedExample(input_ids=row_ids, labels=row_labels))
    return rows


def collate(batch: Sequence[TokenizedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors: input_ids and attention_mask (B, T); labels (B, T) with -100 on pads, or (B,)."""
    if not batch:
        raise ValueError("cannot collate an empty batch")
    width = max(len(example.input_ids) for example in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, example in enumerate(batch):
        length = len(example.input_ids)
        input_ids[row, :length] = torch.tensor(example.input_ids, dtype=torch.long)
        attention_mask[row, :length] = 1
    class_labels = [isinstance(example.labels, int) for example in batch]
    if all(class_labels):
        labels = torch.tensor([example.labels for example in batch], dtype=torch.long)
    elif not any(class_labels):
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        for row, example in enumerate(batch):
            token_labels = example.labels
            assert isinstance(token_labels, list)
            if len(token_labels) != len(example.input_ids):
                raise ValueError(
                    f"example {row}: {len(token_labels)} labels for {len(example.input_ids)} tokens"
                )
            labels[row, : len(token_labels)] = torch.tensor(token_labels, dtype=torch.long)
    else:
        raise ValueError("a batch mixes class-id labels and per-token labels")
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
