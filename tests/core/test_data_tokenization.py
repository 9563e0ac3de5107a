"""tokenize_example: loss masks per format, chat spans from the tokenizer's own template, token counting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from lorasp_core.data import (
    IGNORE_INDEX,
    ChatExample,
    ClassificationExample,
    CompletionExample,
    TokenizedExample,
    count_tokens,
    tokenize_example,
    validate_dataset,
)
from lorasp_core.models import make_tiny_tokenizer

CONVERSATION = ChatExample(
    messages=(
        {"role": "system", "content": "You are a sentiment classifier."},
        {"role": "user", "content": "A joyless slog."},
        {"role": "assistant", "content": "negative"},
        {"role": "user", "content": "Très bien ✓, a delight!"},
        {"role": "assistant", "content": "positive, clearly"},
    )
)
# a plain-text template (no special tokens between turns) where BPE merges can cross message borders
PLAIN_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}### Assistant:\n{{ m['content'] }}</s>\n"
    "{% else %}### {{ m['role'] }}:\n{{ m['content'] }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}### Assistant:\n{% endif %}"
)
# Llama-3 style: content is trimmed, the turn ends with a dedicated token
TRIMMING_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n\n{{ m['content'] | trim }}<|im_end|>{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n\n{% endif %}"
)


def trained_bpe_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE with real merges, trained in-process on text shaped like the conversations."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<pad>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    corpus = ["### Assistant:\nnegative</s>\n### user:\nA joyless slog.\n### system:\nYou are"] * 50
    backend.train_from_iterator(corpus + ["positive, clearly. Très bien ✓, a delight!"] * 50, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", pad_token="<pad>")
    tokenizer.chat_template = PLAIN_TEMPLATE
    return tokenizer


def labelled_text(tokenizer: PreTrainedTokenizerFast, tokenized: TokenizedExample) -> str:
    assert isinstance(tokenized.labels, list)
    return tokenizer.decode([label for label in tokenized.labels if label != IGNORE_INDEX])


def test_chat_labels_cover_exactly_the_assistant_turns() -> None:
    tokenizer = make_tiny_tokenizer()
    tokenized = tokenize_example(CONVERSATION, tokenizer, max_length=1024)
    assert labelled_text(tokenizer, tokenized) == "negative<|im_end|>positive, clearly<|im_end|>"
    # the ids are exactly the template's own tokenization
    reference = tokenizer.apply_chat_template(list(CONVERSATION.messages), tokenize=True, return_dict=True)
    assert tokenized.input_ids == reference["input_ids"]
    assert isinstance(tokenized.labels, list)
    labelled = [label != IGNORE_INDEX for label in tokenized.labels]
    # ... and the labelled positions agree with the template's own {% generation %} markers
    masked = tokenizer.apply_chat_template(
        list(CONVERSATION.messages), return_dict=True, return_assistant_tokens_mask=True
    )
    assert labelled == [bool(flag) for flag in masked["assistant_masks"]]
    assert all(
        label in (IGNORE_INDEX, token)
        for label, token in zip(tokenized.labels, tokenized.input_ids, strict=True)
    )


def test_chat_spans_survive_bpe_merges_and_plain_text_templates() -> None:
    tokenizer = trained_bpe_tokenizer()
    assert len(tokenizer("### Assistant:\nnegative")["input_ids"]) < len("### Assistant:\nnegative")  # merges
    tokenized = tokenize_example(CONVERSATION, tokenizer, max_length=1024)
    assert labelled_text(tokenizer, tokenized) == "negative</s>positive, clearly</s>"


def test_chat_spans_with_a_template_that_trims_content() -> None:
    tokenizer = make_tiny_tokenizer()
    tokenizer.chat_template = TRIMMING_TEMPLATE
    padded = ChatExample(
        messages=({"role": "user", "content": "hi"}, {"role": "assistant", "content": "  hello there \n"})
    )
    tokenized = tokenize_example(padded, tokenizer, max_length=1024)
    assert labelled_text(tokenizer, tokenized) == "hello there<|im_end|>"


def test_chat_without_offsets_falls_back_to_prefix_token_counts() -> None:
    class NoOffsetsTokenizer(PreTrainedTokenizerFast):
        @property
        def is_fast(self) -> bool:
            return False

    fast = make_tiny_tokenizer()
    slow = make_tiny_tokenizer()
    slow.__class__ = NoOffsetsTokenizer
    assert not slow.is_fast
    assert tokenize_example(CONVERSATION, slow, max_length=1024) == tokenize_example(
        CONVERSATION, fast, max_length=1024
    )


def test_truncation_keeps_ids_and_labels_aligned() -> None:
    tokenizer = make_tiny_tokenizer()
    full = tokenize_example(CONVERSATION, tokenizer, max_length=1024)
    short = tokenize_example(CONVERSATION, tokenizer, max_length=40)
    assert len(short.input_ids) == 40 and isinstance(short.labels, list) and len(short.labels) == 40
    assert short.input_ids == full.input_ids[:40]
    assert isinstance(full.labels, list) and short.labels == full.labels[:40]
    with pytest.raises(ValueError, match="max_length"):
        tokenize_example(CONVERSATION, tokenizer, max_length=0)


def test_prompt_completion_loss_only_on_completion_and_eos() -> None:
    tokenizer = make_tiny_tokenizer()
    example = CompletionExample(prompt="Review: dull. Sentiment:", completion=" negative")
    tokenized = tokenize_example(example, tokenizer, max_length=512)
    prompt_length = len(tokenizer(example.prompt)["input_ids"])
    assert isinstance(tokenized.labels, list)
    assert tokenized.labels[:prompt_length] == [IGNORE_INDEX] * prompt_length
    assert tokenized.labels[prompt_length:] == tokenized.input_ids[prompt_length:]
    assert tokenized.input_ids[-1] == tokenizer.eos_token_id
    assert labelled_text(tokenizer, tokenized) == " negative</s>"


def test_prompt_completion_with_a_tokenizer_that_adds_bos_and_eos() -> None:
    tokenizer = make_tiny_tokenizer()
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)]
    )
    tokenized = tokenize_example(CompletionExample("Q", "A"), tokenizer, max_length=64)
    a_id = tokenizer.convert_tokens_to_ids("A")
    q_id = tokenizer.convert_tokens_to_ids("Q")
    # BOS kept, the EOS the post-processor appended to the prompt dropped: one EOS, at the very end
    assert tokenized.input_ids == [1, q_id, a_id, 2]
    assert tokenized.labels == [IGNORE_INDEX, IGNORE_INDEX, a_id, 2]


def test_classification_ids_and_label_mapping() -> None:
    tokenizer = make_tiny_tokenizer()
    label2id = {"negative": 0, "positive": 1}
    tokenized = tokenize_example(
        ClassificationExample("great", "positive"), tokenizer, max_length=3, label2id=label2id
    )
    assert tokenized.labels == 1
    assert tokenized.input_ids == tokenizer("gre")["input_ids"]
    with pytest.raises(ValueError, match="label2id"):
        tokenize_example(ClassificationExample("x", "positive"), tokenizer, max_length=8)
    with pytest.raises(ValueError, match="unknown label 'neutral'"):
        tokenize_example(ClassificationExample("x", "neutral"), tokenizer, max_length=8, label2id=label2id)


def test_count_tokens_matches_untruncated_tokenization() -> None:
    tokenizer = make_tiny_tokenizer()
    examples = [CONVERSATION, CompletionExample("p", "completion"), ClassificationExample("some text", "a")]
    for example in examples:
        tokenized = tokenize_example(example, tokenizer, max_length=10_000, label2id={"a": 0})
        assert count_tokens(example, tokenizer) == len(tokenized.input_ids)


def test_validate_counts_tokens_and_flags_long_examples(tmp_path: Path) -> None:
    tokenizer = make_tiny_tokenizer()
    short = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    long = {"messages": [{"role": "user", "content": "hi " * 30}, {"role": "assistant", "content": "yo"}]}
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps(record) for record in (short, long, short)) + "\n")
    lengths = [count_tokens(ChatExample(messages=tuple(r["messages"])), tokenizer) for r in (short, long)]
    report = validate_dataset(path, tokenizer=tokenizer, max_tokens=lengths[1] - 1)
    assert report.tokens == 2 * lengths[0] + lengths[1]
    assert report.max_example_tokens == lengths[1]
    assert [problem.line for problem in report.problems] == [2]
    assert f"{lengths[1]} tokens" in report.problems[0].reason
    assert validate_dataset(path, tokenizer=tokenizer, max_tokens=lengths[1]).ok


def test_validate_reports_template_failures_once_per_line_or_once_per_file(tmp_path: Path) -> None:
    path = tmp_path / "chat.jsonl"
    record = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    with_system = {"messages": [{"role": "system", "content": "s"}, *record["messages"]]}
    path.write_text("\n".join(json.dumps(r) for r in (record, with_system, record)) + "\n")
    strict = make_tiny_tokenizer()
    strict.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}"
        "{% endif %}{{ m['content'] }}{% endfor %}"
    )
    report = validate_dataset(path, tokenizer=strict)
    assert [problem.line for problem in report.problems] == [2]
    assert "no system role" in report.problems[0].reason
    no_template = make_tiny_tokenizer()
    no_template.chat_template = None
    report = validate_dataset(path, tokenizer=no_template)
    assert len(report.problems) == 1 and report.problems[0].line == 0
    assert "no chat template" in report.problems[0].reason


def test_chat_content_not_rendered_verbatim() -> None:
    example = ChatExample(
        messages=({"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"})
    )
    upper = make_tiny_tokenizer()
    upper.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] | upper }}\n{% endfor %}"
    # the rendered prefix still locates the turn: everything the template writes for it is trained on
    assert labelled_text(upper, tokenize_example(example, upper, max_length=64)) == "assistant: YO"
    reversed_order = make_tiny_tokenizer()
    reversed_order.chat_template = "{% for m in messages | reverse %}{{ m['content'] | upper }}\n{% endfor %}"
    with pytest.raises(ValueError, match="verbatim"):
        tokenize_example(example, reversed_order, max_length=64)


def test_validate_reports_a_template_that_hides_the_assistant_turn(tmp_path: Path) -> None:
    tokenizer = make_tiny_tokenizer()
    tokenizer.chat_template = "{% for m in messages | reverse %}{{ m['content'] | upper }}\n{% endfor %}"
    path = tmp_path / "chat.jsonl"
    record = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    path.write_text(json.dumps(record) + "\n" + json.dumps(record) + "\n")
    report = validate_dataset(path, tokenizer=tokenizer)
    assert [problem.line for problem in report.problems] == [1, 2]
    assert "verbatim" in report.problems[0].reason
