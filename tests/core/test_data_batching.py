"""Batch orders, packing and collation."""

from __future__ import annotations

import random

import pytest
import torch

from lorasp_core.data import (
    IGNORE_INDEX,
    TokenizedExample,
    collate,
    length_grouped_batches,
    packed_rows,
    padded_batches,
)


def varied_lengths(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(1, 512) for _ in range(n)]


def padded_tokens(batches: list[list[int]], lengths: list[int]) -> int:
    return sum(
        len(batch) * max(lengths[i] for i in batch) - sum(lengths[i] for i in batch) for batch in batches
    )


def assert_each_index_once(batches: list[list[int]], n: int, batch_size: int) -> None:
    flat = [index for batch in batches for index in batch]
    assert sorted(flat) == list(range(n))
    assert all(1 <= len(batch) <= batch_size for batch in batches)


def test_length_grouping_covers_every_example_once_and_reduces_padding() -> None:
    lengths = varied_lengths(1000)
    for epoch in range(3):
        grouped = length_grouped_batches(lengths, 8, seed=7, epoch=epoch)
        padded = padded_batches(len(lengths), 8, seed=7, epoch=epoch)
        assert_each_index_once(grouped, len(lengths), 8)
        assert_each_index_once(padded, len(lengths), 8)
        assert padded_tokens(grouped, lengths) * 5 < padded_tokens(padded, lengths)


def test_length_grouping_is_deterministic_and_changes_per_epoch() -> None:
    lengths = varied_lengths(900)
    first = length_grouped_batches(lengths, 4, seed=3, epoch=0)
    assert first == length_grouped_batches(lengths, 4, seed=3, epoch=0)
    assert first != length_grouped_batches(lengths, 4, seed=3, epoch=1)
    assert first != length_grouped_batches(lengths, 4, seed=4, epoch=0)
    # the longest example is in the first batch, so memory problems show at step 1
    assert max(range(len(lengths)), key=lambda i: lengths[i]) in first[0]
    # within a mega-batch (50 x 4 examples = 50 batches) batches come longest first
    firsts = [lengths[batch[0]] for batch in first[1:50]]
    assert firsts == sorted(firsts, reverse=True)


def test_length_grouping_does_not_touch_the_global_rng() -> None:
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    length_grouped_batches(varied_lengths(50), 4, seed=1, epoch=0)
    padded_batches(50, 4, seed=1, epoch=0)
    assert torch.equal(torch.rand(3), expected)


def test_padded_batches_order_and_edge_cases() -> None:
    assert padded_batches(7, 3, seed=0, epoch=0, shuffle=False) == [[0, 1, 2], [3, 4, 5], [6]]
    shuffled = padded_batches(100, 10, seed=5, epoch=2)
    assert shuffled == padded_batches(100, 10, seed=5, epoch=2)
    assert [i for batch in shuffled for i in batch] != list(range(100))
    assert padded_batches(0, 4, seed=0, epoch=0) == []
    assert length_grouped_batches([], 4, seed=0, epoch=0) == []
    with pytest.raises(ValueError, match="batch_size"):
        padded_batches(4, 0, seed=0, epoch=0)


def test_packed_rows_keep_whole_examples_and_their_masks() -> None:
    eos = 2
    examples = [
        TokenizedExample([10, 11, 12, eos], [IGNORE_INDEX, 11, 12, eos]),
        TokenizedExample([20, 21], [IGNORE_INDEX, 21]),  # no EOS: a separator is added, not trained on
        TokenizedExample([30, 31, 32, 33, eos], [IGNORE_INDEX, IGNORE_INDEX, 32, 33, eos]),
        TokenizedExample([40, eos], [40, eos]),
    ]
    rows = packed_rows(examples, max_length=8, eos_id=eos)
    assert [row.input_ids for row in rows] == [[10, 11, 12, eos, 20, 21, eos], [30, 31, 32, 33, eos, 40, eos]]
    assert [row.labels for row in rows] == [
        [IGNORE_INDEX, 11, 12, eos, IGNORE_INDEX, 21, IGNORE_INDEX],
        [IGNORE_INDEX, IGNORE_INDEX, 32, 33, eos, 40, eos],
    ]
    assert all(len(row.input_ids) <= 8 for row in rows)
    too_long = packed_rows([TokenizedExample(list(range(10, 30)), list(range(10, 30)))], 6, eos)
    assert [len(row.input_ids) for row in too_long] == [6]
    with pytest.raises(ValueError, match="per-token labels"):
        packed_rows([TokenizedExample([1, 2], 0)], 8, eos)


def test_collate_causal_lm_pads_right_with_ignored_labels() -> None:
    batch = [TokenizedExample([5, 6, 7], [IGNORE_INDEX, 6, 7]), TokenizedExample([8], [8])]
    tensors = collate(batch, pad_id=0)
    assert tensors["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert tensors["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert tensors["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]
    assert all(tensor.dtype == torch.long for tensor in tensors.values())


def test_collate_classification_and_errors() -> None:
    tensors = collate([TokenizedExample([5, 6], 1), TokenizedExample([7, 8, 9], 0)], pad_id=3)
    assert tensors["labels"].tolist() == [1, 0]
    assert tensors["input_ids"].tolist() == [[5, 6, 3], [7, 8, 9]]
    assert tensors["labels"].shape == (2,)
    with pytest.raises(ValueError, match="mixes"):
        collate([TokenizedExample([5], 1), TokenizedExample([5], [5])], pad_id=0)
    with pytest.raises(ValueError, match="empty"):
        collate([], pad_id=0)
