"""The in-code tiny tokenizer and random models: exact round-trips, ChatML, determinism."""

from __future__ import annotations

import torch

from lorasp_core.models import make_tiny_tokenizer, tiny_random_bert, tiny_random_llama

SAMPLES = [
    "hello world",
    "  leading and trailing spaces  \n\ttabs\r\n",
    "héllo 日本語 🤖 Ω≈ç",
    "\x00\x01\x7f control bytes",
    "",
]


def test_tiny_tokenizer_round_trips_arbitrary_utf8() -> None:
    tokenizer = make_tiny_tokenizer()
    for text in SAMPLES:
        ids = tokenizer.encode(text)
        assert tokenizer.decode(ids) == text
        assert len(ids) == len(text.encode("utf-8"))  # one token per byte, no specials added


def test_tiny_tokenizer_special_tokens_and_determinism() -> None:
    first, second = make_tiny_tokenizer(), make_tiny_tokenizer()
    assert first.get_vocab() == second.get_vocab()
    assert (first.pad_token, first.bos_token, first.eos_token) == ("<pad>", "<s>", "</s>")
    assert (first.pad_token_id, first.bos_token_id, first.eos_token_id) == (0, 1, 2)
    assert first.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [3, 4]
    assert first.encode("<|im_end|>") == [4]
    assert len(first) == 261


def test_tiny_tokenizer_chat_template() -> None:
    tokenizer = make_tiny_tokenizer()
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
    ]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert rendered == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
    )
    prompt = tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert isinstance(prompt, str) and prompt.endswith("<|im_start|>assistant\n")
    encoded = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    masked = [t for t, m in zip(encoded["input_ids"], encoded["assistant_masks"], strict=True) if m]
    assert tokenizer.decode(masked) == "Hello!<|im_end|>"


def test_tiny_models_deterministic_and_leave_global_rng_alone() -> None:
    rng_before = torch.get_rng_state()
    llama_a, llama_b, llama_other = tiny_random_llama(0), tiny_random_llama(0), tiny_random_llama(1)
    assert torch.equal(rng_before, torch.get_rng_state())
    for key, tensor in llama_a.state_dict().items():
        assert torch.equal(tensor, llama_b.state_dict()[key]), key
    weight = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(llama_a.state_dict()[weight], llama_other.state_dict()[weight])
    assert not llama_a.training and llama_a.dtype == torch.float32
    assert llama_a.config.name_or_path == "tiny-random-llama"

    bert_a, bert_b = tiny_random_bert(3, seed=5), tiny_random_bert(3, seed=5)
    assert torch.equal(bert_a.classifier.weight, bert_b.classifier.weight)
    assert bert_a.config.num_labels == 3 and not bert_a.training
    assert bert_a.config.name_or_path == "tiny-random-bert"


def test_tiny_models_run_on_tokenizer_output() -> None:
    tokenizer = make_tiny_tokenizer()
    batch = tokenizer(["hi there", "x"], padding=True, return_tensors="pt")
    logits = tiny_random_bert(4)(**batch).logits
    assert logits.shape == (2, 4)
    llama = tiny_random_llama()
    assert llama(**batch).logits.shape == (2, batch["input_ids"].shape[1], len(tokenizer))
    generated = llama.generate(**tokenizer(["hi"], return_tensors="pt"), max_new_tokens=3, do_sample=False)
    assert generated.shape[1] <= 2 + 3
