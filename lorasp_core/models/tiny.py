"""Tiny, fully in-code base models for tests and demos: a byte-level tokenizer and random models.

Nothing here touches the disk or the network. The tokenizer covers all 256 byte values (GPT-2's
byte-to-unicode alphabet, no merges), so every UTF-8 string encodes and decodes back exactly.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

TINY_LLAMA_NAME = "tiny-random-llama"
TINY_BERT_NAME = "tiny-random-bert"

PAD_TOKEN = "<pad>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
IM_START_TOKEN = "<|im_start|>"
IM_END_TOKEN = "<|im_end|>"
# Fixed order: the ids 0..4 are part of the tiny models' contract (pad=0, bos=1, eos=2).
SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, IM_START_TOKEN, IM_END_TOKEN)

# ChatML, as SmolLM2 uses it. The {% generation %} markers let
# `apply_chat_template(..., return_assistant_tokens_mask=True)` report the assistant tokens.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ message['content'] + '<|im_end|>' + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Qwen2.5 / Hermes style tool calling over ChatML: the tools as JSON in the system turn, each call as
# <tool_call>{"name", "arguments"}</tool_call> in the assistant turn, tool results in a user turn of
# <tool_response> blocks. The assistant header equals the generation prompt, as in Qwen2.5.
TOOL_CALLING_TEMPLATE = (
    "{% set offset = 0 %}"
    "{% if tools %}"
    "{{ '<|im_start|>system\n' }}"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}{% set offset = 1 %}"
    "{% else %}{{ 'You are a helpful assistant.' }}{% endif %}"
    "{{ '\n\n# Tools\n\n<tools>' }}"
    "{% for tool in tools %}{{ '\n' }}{{ tool | tojson }}{% endfor %}"
    "{{ '\n</tools>\n\nFor each function call, return a json object within <tool_call></tool_call> tags."
    "<|im_end|>\n' }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if loop.index0 < offset %}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}"
    "{% if message['content'] %}{{ message['content'] }}{% endif %}"
    "{% for call in message['tool_calls'] or [] %}"
    "{% if message['content'] or not loop.first %}{{ '\n' }}{% endif %}"
    "{{ '<tool_call>\n{\"name\": \"' + call['function']['name'] + '\", \"arguments\": ' }}"
    "{{ call['function']['arguments'] | tojson }}{{ '}\n</tool_call>' }}"
    "{% endfor %}"
    "{{ '<|im_end|>\n' }}"
    "{% elif message['role'] == 'tool' %}"
    "{% if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}{{ '<|im_start|>user' }}{% endif %}"
    "{{ '\n<tool_response>\n' + message['content'] + '\n</tool_response>' }}"
    "{% if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}{{ '<|im_end|>\n' }}{% endif %}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

TINY_HIDDEN_SIZE = 64
TINY_LAYERS = 2
TINY_HEADS = 4
TINY_INTERMEDIATE_SIZE = 128
TINY_MAX_POSITIONS = 2048


def _byte_level_vocab() -> dict[str, int]:
    """Special tokens first, then the 256 byte symbols in byte order (deterministic ids)."""
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    byte_symbols = sorted(pre_tokenizers.ByteLevel.alphabet(), key=_byte_of_symbol)
    for symbol in byte_symbols:
        vocab[symbol] = len(vocab)
    return vocab


def _byte_of_symbol(symbol: str) -> int:
    """Inverse of GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to 256+n."""
    code = ord(symbol)
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    if code in printable:
        return code
    non_printable = [b for b in range(256) if b not in printable]
    return non_printable[code - 256]


def prepare_for_inference(model: torch.nn.Module) -> None:
    """Float32 on CPU, eval mode (dropout off): how every catalog model is handed out."""
    model.to(device="cpu", dtype=torch.float32)
    model.eval()


def make_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A deterministic byte-level tokenizer (261 tokens) with ChatML special tokens and template."""
    backend = Tokenizer(models.BPE(vocab=_byte_level_vocab(), merges=[], fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=[IM_START_TOKEN, IM_END_TOKEN],
        model_max_length=TINY_MAX_POSITIONS,
        clean_up_tokenization_spaces=False,
        padding_side="right",
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.name_or_path = "tiny-byte-level"
    return tokenizer


def make_tiny_tool_tokenizer() -> PreTrainedTokenizerFast:
    """The tiny tokenizer with a chat template that renders tools, tool calls and tool results."""
    tokenizer = make_tiny_tokenizer()
    tokenizer.chat_template = TOOL_CALLING_TEMPLATE
    return tokenizer


def tiny_random_llama(seed: int = 0) -> LlamaForCausalLM:
    """A 2-layer, 64-wide Llama over the tiny tokenizer; weights depend only on `seed`.

    The global torch RNG is left exactly as it was (the init runs inside `fork_rng`).
    """
    tokenizer = make_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=TINY_HIDDEN_SIZE,
        intermediate_size=TINY_INTERMEDIATE_SIZE,
        num_hidden_layers=TINY_LAYERS,
        num_attention_heads=TINY_HEADS,
        num_key_value_heads=TINY_HEADS,
        max_position_embeddings=TINY_MAX_POSITIONS,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.config.name_or_path = TINY_LLAMA_NAME
    # A chat turn ends with <|im_end|>, a completion with </s>: generation stops at either.
    im_end_id = tokenizer.convert_tokens_to_ids(IM_END_TOKEN)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, im_end_id]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    prepare_for_inference(model)
    return model


def tiny_random_bert(num_labels: int = 2, seed: int = 0) -> BertForSequenceClassification:
    """A 2-layer, 64-wide BERT classifier over the tiny tokenizer; weights depend only on `seed`."""
    if num_labels < 1:
        raise ValueError(f"num_labels must be >= 1, got {num_labels}")
    tokenizer = make_tiny_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=TINY_HIDDEN_SIZE,
        intermediate_size=TINY_INTERMEDIATE_SIZE,
        num_hidden_layers=TINY_LAYERS,
        num_attention_heads=TINY_HEADS,
        max_position_embeddings=TINY_MAX_POSITIONS,
        pad_token_id=tokenizer.pad_token_id,
    )
    config.num_labels = num_labels
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertForSequenceClassification(config)
    model.config.name_or_path = TINY_BERT_NAME
    prepare_for_inference(model)
    return model
