"""What "auto" hyperparameters resolve to, from the training file's size: the rule docs/api.md states.

It follows OpenAI's published behaviour (their fine-tuning data-preparation cookbook): 3 epochs by
default, more for small files so that about 100 examples are seen in all (at most 25 epochs), fewer for
large ones so that about 25,000 are (at least 1). The batch size grows with the file (about 0.2% of its
examples, from 1 to 32), and shrinks when the examples are long so that one step holds at most
`AUTO_BATCH_TOKEN_BUDGET` tokens. The learning-rate multiplier is 1.0.

The API resolves "auto" once, at job creation, and stores the numbers in the job's spec: the values a
job shows are the ones it trains with.
"""

from __future__ import annotations

from dataclasses import dataclass

from lorasp_service.orm import File

TARGET_EPOCHS = 3
MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25_000
MIN_AUTO_EPOCHS = 1
MAX_AUTO_EPOCHS = 25
EXAMPLES_PER_BATCH_ITEM = 500  # a batch of 0.2% of the examples, rounded up
MIN_AUTO_BATCH_SIZE = 1
MAX_AUTO_BATCH_SIZE = 32
AUTO_BATCH_TOKEN_BUDGET = 16_384  # tokens in one optimizer step (memory, not quality, is the limit)
# The upload is validated without a tokenizer, so a file's token count is often unknown: estimate it
# from its size then (about 4 bytes a token for English text with a BPE tokenizer).
BYTES_PER_TOKEN_ESTIMATE = 4
AUTO_LEARNING_RATE_MULTIPLIER = 1.0
# Validation on the fixed sample about this many times a run (every step for runs this short).
AUTO_EVALUATIONS_PER_RUN = 10


@dataclass(frozen=True)
class DatasetSize:
    """What the rule reads of a training file: its example count, token count (if counted) and bytes."""

    examples: int
    tokens: int | None
    bytes: int

    @classmethod
    def of_file(cls, row: File) -> DatasetSize:
        stats = row.stats or {}
        tokens = stats.get("tokens")
        return cls(
            examples=int(stats.get("examples") or 0),
            tokens=int(tokens) if isinstance(tokens, int) else None,
            bytes=row.bytes,
        )

    @property
    def mean_example_tokens(self) -> float:
        if self.examples <= 0:
            return 0.0
        tokens = self.tokens if self.tokens is not None else self.bytes / BYTES_PER_TOKEN_ESTIMATE
        return tokens / self.examples


@dataclass(frozen=True)
class AutoHyperparameters:
    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float


def auto_eval_every(size: DatasetSize, n_epochs: int, batch_size: int) -> int:
    """Steps between validations on the sample: about `AUTO_EVALUATIONS_PER_RUN` in the whole run."""
    steps = n_epochs * -(-max(size.examples, 1) // batch_size)
    return max(1, -(-steps // AUTO_EVALUATIONS_PER_RUN))


def auto_hyperparameters(size: DatasetSize) -> AutoHyperparameters:
    """The values "auto" (or an omitted value) stands for, for a training file of this size."""
    examples = max(size.examples, 1)
    n_epochs = TARGET_EPOCHS
    if examples * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        n_epochs = min(MAX_AUTO_EPOCHS, MIN_TARGET_EXAMPLES // examples)
    elif examples * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        n_epochs = max(MIN_AUTO_EPOCHS, MAX_TARGET_EXAMPLES // examples)

    batch_size = min(MAX_AUTO_BATCH_SIZE, max(MIN_AUTO_BATCH_SIZE, -(-examples // EXAMPLES_PER_BATCH_ITEM)))
    mean_tokens = size.mean_example_tokens
    if mean_tokens > 0:
        batch_size = max(MIN_AUTO_BATCH_SIZE, min(batch_size, int(AUTO_BATCH_TOKEN_BUDGET // mean_tokens)))
    return AutoHyperparameters(n_epochs, batch_size, AUTO_LEARNING_RATE_MULTIPLIER)
