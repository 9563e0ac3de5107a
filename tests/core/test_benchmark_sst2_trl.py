"""benchmarks.sst2's trl-sft method and the chat report run end to end on a tiny slice with the tiny model,
each method in its own process as in the real benchmark (`python -m benchmarks.sst2 --methods
chat-base,trl-sft,chat-lorasp,...`, not run in CI)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.common import LabelledSentence
from benchmarks.report_chat import chat_target_lines
from benchmarks.sst2 import main
from benchmarks.sst2_trl import prompt_completion_rows

SENTENCES = [("a great film", 1), ("dull and long", 0), ("a joy to watch", 1), ("a tedious mess", 0)]


def write_tsv(path: Path, rows: list[tuple[str, int]]) -> None:
    path.write_text("sentence\tlabel\n" + "".join(f"{text}\t{label}\n" for text, label in rows))


def test_the_completion_is_the_answer_word_alone() -> None:
    rows = prompt_completion_rows([LabelledSentence("dull and long", 0)])
    assert rows[0]["completion"] == [{"role": "assistant", "content": "negative"}]
    assert [m["role"] for m in rows[0]["prompt"]] == ["system", "user"]
    assert "dull and long" in rows[0]["prompt"][-1]["content"]


def test_trl_sft_and_chat_lorasp_run_in_their_own_processes_and_report(tmp_path: Path) -> None:
    write_tsv(tmp_path / "train.tsv", SENTENCES * 2)
    write_tsv(tmp_path / "dev.tsv", SENTENCES)
    out = tmp_path / "chat.json"
    main(
        ["--data-dir", str(tmp_path), "--methods", "trl-sft,chat-lorasp", "--chat-model", "tiny-random-llama"]
        + ["--chat-train-size", "8", "--chat-batch-size", "4", "--eval-size", "2", "--seeds", "0"]
        + ["--r", "4", "--alpha", "8", "--matmul-n", "64", "--out", str(out)]
        + ["--chat-max-length", "256"]  # the tiny tokenizer spells the chat out in ~170 tokens
    )
    runs = {r["method"]: r for r in json.loads(out.read_text())}
    trl, lorasp = runs["trl-sft"], runs["chat-lorasp"]
    # same rank and target modules: LoRA-SP trains half of each A and B, PEFT LoRA all of them
    assert trl["trainable_parameters"] == 2 * lorasp["trainable_parameters"] > 0
    assert trl["base_parameters"] == lorasp["base_parameters"] > 0
    for run in (trl, lorasp):
        assert run["tokens_per_second"] > 0 and run["peak_rss_mb"] >= run["train_peak_rss_mb"] > 0
        assert 0.0 <= run["dev_accuracy"] <= 1.0
    assert trl["optimizer_state_bytes"] == 2 * 4 * trl["trainable_parameters"]  # AdamW's two fp32 moments
    report = (tmp_path / "chat.md").read_text()
    assert "- Real tokens/s: chat-lorasp" in report and "(target >= 1.5x)" in report
    assert "- Peak RSS while fine-tuning: chat-lorasp" in report and "of bf16 peak" in report
    peaks = json.loads((tmp_path / "chat.matmul_peak.json").read_text())
    assert peaks["fp32_gflops"] > 0 and peaks["bf16_gflops"] > 0


def run(method: str, tokens_per_second: float, dev_accuracy: float, peak_rss_mb: float) -> dict[str, Any]:
    return {
        "method": method,
        "tokens_per_second": tokens_per_second,
        "dev_accuracy": dev_accuracy,
        "peak_rss_mb": peak_rss_mb + 500,  # the process peak: the generation eval comes after training
        "train_peak_rss_mb": peak_rss_mb,
    }


def test_the_chat_targets_say_met_or_missed_and_by_how_much() -> None:
    best = {
        "chat-lorasp": run("chat-lorasp", 160, 0.875, 1000),
        "trl-sft": run("trl-sft", 100, 0.880, 1200),
        "chat-lorasp-fp32": run("chat-lorasp-fp32", 100, 0.880, 2000),
        "chat-lorasp-int8": run("chat-lorasp-int8", 90, 0.860, 1400),
    }
    speed, accuracy, rss, int8_rss, int8_accuracy = chat_target_lines(best)
    assert speed.endswith("1.60x (target >= 1.5x): met (by 0.10x)")
    assert accuracy.endswith("(-0.50 points; target >= -1.0): met (by 0.50 points)")
    assert "(-200 MB; target <= 0): met (by 200 MB)" in rss  # judged on the fine-tuning peaks
    assert rss.endswith("(whole process, generation eval included: 1500 vs 1700 MB)")
    assert int8_rss.endswith("= 0.70x (target <= 0.6x): MISSED (by 0.10x)")
    assert int8_accuracy.endswith("(-2.00 points; target >= -1.5): MISSED (by 0.50 points)")
