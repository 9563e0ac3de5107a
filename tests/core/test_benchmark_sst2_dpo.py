"""benchmarks.sst2's DPO methods run end to end on a tiny slice with the tiny model (the real benchmark
is `python -m benchmarks.sst2 --methods chat-base,chat-lorasp,chat-dpo,chat-sft-dpo`, not run in CI)."""

from __future__ import annotations

import pytest

from benchmarks.common import LabelledSentence
from benchmarks.sst2 import parse_args, selected_methods
from benchmarks.sst2_chat import as_preference, run_chat

ROWS = [LabelledSentence("a great film", 1), LabelledSentence("dull and long", 0)] * 2


def test_the_pairs_prefer_the_right_word() -> None:
    pair = as_preference(ROWS[1])
    assert (pair.chosen["content"], pair.rejected["content"]) == ("negative", "positive")
    assert pair.prompt[-1]["role"] == "user" and "dull and long" in pair.prompt[-1]["content"]


@pytest.mark.parametrize("method", ["chat-dpo", "chat-sft-dpo"])
def test_dpo_methods_train_and_score(method: str) -> None:
    assert selected_methods(parse_args(["--methods", f"chat-base,{method}"])) == ["chat-base", method]
    spec = {"method": method, "seed": 0, "learning_rate": 1e-3, "r": 4, "alpha": 8, "epochs": 1}
    spec.update(batch_size=2, max_length=128, model="tiny-random-llama")
    result = run_chat(spec, ROWS, ROWS[:2])
    assert result["trainable_parameters"] > 0 and result["train_seconds"] > 0
    assert result["tokens_per_second"] > 0 and 0.0 <= result["dev_accuracy"] <= 1.0
