"""The "auto" rule (jobs/auto.py, written down in docs/api.md): epochs so that about 100 to 25,000 examples
are seen, a batch of about 0.2% of the examples (1 to 32) within a per-step token budget, multiplier 1.0."""

from __future__ import annotations

import pytest

from lorasp_service.jobs.auto import (
    AUTO_BATCH_TOKEN_BUDGET,
    BYTES_PER_TOKEN_ESTIMATE,
    DatasetSize,
    auto_hyperparameters,
)
from lorasp_service.orm import File


def sized(examples: int, tokens_per_example: int = 50) -> DatasetSize:
    return DatasetSize(examples=examples, tokens=examples * tokens_per_example, bytes=examples * 200)


@pytest.mark.parametrize(
    ("examples", "n_epochs"),
    [
        (1, 25),  # 100 // 1 = 100, capped at 25
        (4, 25),
        (10, 10),  # 10 epochs x 10 examples = the 100 targeted
        (24, 4),  # 100 // 24
        (33, 3),  # 99 examples seen at 3 epochs: just under 100, so 100 // 33 = 3
        (34, 3),  # 102 at the default 3 epochs: in range
        (8_333, 3),  # 24,999: still in range
        (8_334, 2),  # 25,002 > 25,000: 25,000 // 8,334
        (30_000, 1),  # never below one epoch
    ],
)
def test_epochs_bring_small_and_large_files_into_the_target_range(examples: int, n_epochs: int) -> None:
    assert auto_hyperparameters(sized(examples)).n_epochs == n_epochs


@pytest.mark.parametrize(
    ("examples", "batch_size"),
    [(4, 1), (500, 1), (501, 2), (4_000, 8), (16_000, 32), (1_000_000, 32)],
)
def test_batch_size_is_about_a_fifth_of_a_percent_of_the_examples(examples: int, batch_size: int) -> None:
    assert auto_hyperparameters(sized(examples)).batch_size == batch_size


def test_long_examples_shrink_the_batch_to_the_token_budget() -> None:
    # 16,000 examples would be a batch of 32; at 2,048 tokens each only 8 fit in the step's budget.
    assert AUTO_BATCH_TOKEN_BUDGET // 2_048 == 8
    assert auto_hyperparameters(sized(16_000, tokens_per_example=2_048)).batch_size == 8
    # Longer than the whole budget: still one example a step.
    assert auto_hyperparameters(sized(16_000, tokens_per_example=40_000)).batch_size == 1


def test_without_a_token_count_the_file_size_estimates_it() -> None:
    per_example_bytes = 1_024 * BYTES_PER_TOKEN_ESTIMATE  # about 1,024 tokens an example
    estimated = DatasetSize(examples=16_000, tokens=None, bytes=16_000 * per_example_bytes)
    assert auto_hyperparameters(estimated).batch_size == AUTO_BATCH_TOKEN_BUDGET // 1_024 == 16


def test_the_multiplier_is_one() -> None:
    assert auto_hyperparameters(sized(10)).learning_rate_multiplier == 1.0


def test_the_size_is_read_from_the_file_row_stats() -> None:
    row = File(bytes=1234, stats={"examples": 7, "tokens": None, "format": "chat"})
    assert DatasetSize.of_file(row) == DatasetSize(examples=7, tokens=None, bytes=1234)
    counted = File(bytes=10, stats={"examples": 3, "tokens": 90})
    assert DatasetSize.of_file(counted).mean_example_tokens == 30
