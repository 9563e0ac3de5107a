"""Tokenization with loss masks: -100 marks tokens the loss ignores.

Chat examples are rendered with the tokenizer's own chat template. The assistant spans are derived
by rendering the conversation prefix up to each assistant message (with the generation prompt, so the
"assistant header" is excluded) and through it (so its end-of-turn marker is included; tool calls the
template writes are inside that span), then mapping
those character spans onto tokens. Working in characters and not in prefix token counts keeps the
spans right when BPE merges across a boundary would change the prefix's tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from lorasp_core.data.formats import (
    ChatExample,
    ClassificationExample,
    CompletionExample,
    Example,
    PreferenceExample,
)

if TYPE_CHECKING:  # transformers is heavy; only the type is needed here
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100


@dataclass(frozen=True)
class TokenizedExample:
    """input_ids plus labels: per-token (-100 = no loss) for causal LM, one class id for classification."""

    input_ids: list[int]
    labels: list[int] | int


def _input_ids(tokenizer: PreTrainedTokenizerBase, text: str, **kwargs: Any) -> list[int]:
    return cast(list[int], tokenizer(text, **kwargs)["input_ids"])


def render_chat(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[dict[str, Any]],
    *,
    add_generation_prompt: bool = False,
    tools: Sequence[dict[str, Any]] | None = None,
) -> str:
    """The conversation as the model sees it, by the tokenizer's own chat template (tools included)."""
    extra: dict[str, Any] = {} if tools is None else {"tools": list(tools)}
    rendered = tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=add_generation_prompt, **extra
    )
    if not isinstance(rendered, str):
        raise TypeError(f"apply_chat_template(tokenize=False) returned {type(rendered).__name__}, not str")
    return rendered


def _span_by_content(
    rendered: str, message: dict[str, Any], search_from: int, header_found: bool, index: int
) -> tuple[int, int]:
    """Fallback when prefix renders do not bracket the turn: find the content itself."""
    content = message.get("content")
    if not isinstance(content, str) or "tool_calls" in message:
        raise ValueError(
            f"the chat template does not render assistant message {index} as a prefix-stable turn"
        )
    # some templates trim message content (Llama 3), so look for the stripped text as a fallback
    start = rendered.find(content, search_from)
    if start < 0:
        content = content.strip()
        start = rendered.find(content, search_from)
    if start < 0:
        if not header_found:
            raise ValueError(f"the chat template does not render assistant message {index} verbatim")
        start, content = search_from, ""
    return start, start + len(content)


def assistant_char_spans(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[dict[str, Any]],
    rendered: str,
    tools: Sequence[dict[str, Any]] | None = None,
) -> dict[int, tuple[int, int]]:
    """[start, end) character spans in `rendered` of each assistant message (by message index): what
    the template writes for the turn after the generation prompt (content, tool calls, end-of-turn).

    The span runs from the end of the prefix rendered with the generation prompt to the end of the
    prefix rendered through the message, so tool-call markup the template writes (which appears
    nowhere verbatim in the data) is found; content search is the fallback for templates whose
    prefix renders are not prefixes of the whole conversation.
    """
    spans: dict[int, tuple[int, int]] = {}
    cursor = 0
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        search_from, header_found = cursor, False
        if index > 0:
            header = render_chat(tokenizer, messages[:index], add_generation_prompt=True, tools=tools)
            if rendered.startswith(header) and len(header) >= cursor:
                search_from, header_found = len(header), True
        # the end-of-turn marker is included (the model must learn to stop), the whitespace after it
        # is formatting between turns and is not
        through = render_chat(tokenizer, messages[: index + 1], tools=tools)
        through_end = len(through.rstrip())
        if header_found and rendered.startswith(through) and through_end > search_from:
            start, end = search_from, through_end
        else:
            start, end = _span_by_content(rendered, message, search_from, header_found, index)
            if rendered.startswith(through) and through_end > end:
                end = through_end
        spans[index] = (start, end)
        cursor = end
    return spans


def _token_mask_from_spans(
    tokenizer: PreTrainedTokenizerBase, rendered: str, spans: list[tuple[int, int]], n_tokens: int
) -> list[bool]:
    if tokenizer.is_fast:
        offsets = tokenizer(rendered, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        return [
            any(token_start < end and token_end > start for start, end in spans) and token_end > token_start
            for token_start, token_end in offsets
        ]
    # slow tokenizers have no offsets: count the tokens of the text before each span boundary instead
    mask = [False] * n_tokens
    for start, end in spans:
        first = len(_input_ids(tokenizer, rendered[:start], add_special_tokens=False))
        last = len(_input_ids(tokenizer, rendered[:end], add_special_tokens=False))
        for position in range(first, min(last, n_tokens)):
            mask[position] = True
    return mask


def _chat_ids(tokenizer: PreTrainedTokenizerBase, example: ChatExample) -> tuple[str, list[int]]:
    rendered = render_chat(tokenizer, example.messages, tools=example.tools)
    # exactly what apply_chat_template(tokenize=True) does: the template writes the special tokens itself
    return rendered, _input_ids(tokenizer, rendered, add_special_tokens=False)


def _completion_ids(
    tokenizer: PreTrainedTokenizerBase, example: CompletionExample
) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids + EOS). The prompt gets the tokenizer's usual prefix (e.g. BOS)."""
    prompt_ids = _input_ids(tokenizer, example.prompt, add_special_tokens=True)
    eos_id = tokenizer.eos_token_id
    if prompt_ids and eos_id is not None and prompt_ids[-1] == eos_id:
        prompt_ids = prompt_ids[:-1]  # tokenizers that append EOS to every text must not end the prompt
    completion_ids = _input_ids(tokenizer, example.completion, add_special_tokens=False)
    if eos_id is not None:
        completion_ids = [*completion_ids, int(eos_id)]
    return prompt_ids, completion_ids


# a pair is two sequences, not one: preference.tokenize_preference / count_pair_tokens tokenize it
_PAIR_REFUSED = "preference examples are tokenized by tokenize_preference, not tokenize_example"


def count_tokens(example: Example, tokenizer: PreTrainedTokenizerBase) -> int:
    """Untruncated length of `tokenize_example(example, tokenizer, ...)`'s input_ids."""
    if isinstance(example, PreferenceExample):
        raise TypeError(_PAIR_REFUSED)
    if isinstance(example, ChatExample):
        return len(_chat_ids(tokenizer, example)[1])
    if isinstance(example, CompletionExample):
        prompt_ids, completion_ids = _completion_ids(tokenizer, example)
        return len(prompt_ids) + len(completion_ids)
    return len(_input_ids(tokenizer, example.text))


def tokenize_example(
    example: Example,
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_length: int,
    label2id: dict[str, int] | None = None,
) -> TokenizedExample:
    """Token ids and loss labels of one example, truncated to max_length tokens (the start is kept)."""
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    if isinstance(example, PreferenceExample):
        raise TypeError(_PAIR_REFUSED)
    if isinstance(example, ClassificationExample):
        if label2id is None:
            raise ValueError("label2id is required to tokenize classification examples")
        if example.label not in label2id:
            raise ValueError(f"unknown label {example.label!r} (known labels: {sorted(label2id)})")
        ids = _input_ids(tokenizer, example.text, truncation=True, max_length=max_length)
        return TokenizedExample(input_ids=ids, labels=label2id[example.label])
    if isinstance(example, CompletionExample):
        prompt_ids, completion_ids = _completion_ids(tokenizer, example)
        ids = prompt_ids + completion_ids
        labels = [IGNORE_INDEX] * len(prompt_ids) + completion_ids
    else:
        rendered, ids = _chat_ids(tokenizer, example)
        spans = assistant_char_spans(tokenizer, example.messages, rendered, example.tools)
        # a weight-0 turn stays in the input as context; its tokens get no loss (and so no gradient)
        trained_spans = [span for index, span in spans.items() if example.trains_message(index)]
        mask = _token_mask_from_spans(tokenizer, rendered, trained_spans, len(ids))
        labels = [token if trained else IGNORE_INDEX for token, trained in zip(ids, mask, strict=True)]
    return TokenizedExample(input_ids=ids[:max_length], labels=labels[:max_length])
