"""MultiAdapterLinear / RowDispatchModule against a direct per-row computation, and TextStream."""

from __future__ import annotations

import torch
from serving_fixtures import make_tiny_tokenizer
from torch import nn
from transformers.pytorch_utils import Conv1D

from lorasp_core.serving import MultiAdapterLinear, RowDispatchModule, SlotSelection
from lorasp_core.serving.text_stream import TextStream


def direct(
    base: nn.Module, x: torch.Tensor, lora: tuple[torch.Tensor, torch.Tensor, float] | None
) -> torch.Tensor:
    out: torch.Tensor = base(x)
    if lora is None:
        return out
    lora_A, lora_B, scaling = lora
    return out + scaling * (x @ lora_A.T @ lora_B.T)


def check_layer(base: nn.Module, in_features: int, out_features: int) -> None:
    generator = torch.Generator().manual_seed(0)
    selection = SlotSelection()
    layer = MultiAdapterLinear(base, num_slots=4, rank=2, selection=selection)
    adapters = {
        1: (
            torch.randn(2, in_features, generator=generator),
            torch.randn(out_features, 2, generator=generator),
            0.5,
        ),
        2: (
            torch.randn(6, in_features, generator=generator),
            torch.randn(out_features, 6, generator=generator),
            2.0,
        ),
    }
    for slot, (lora_A, lora_B, scaling) in adapters.items():
        layer.set_slot(slot, lora_A, lora_B, scaling)  # slot 2 grows the rank from 2 to 6
    assert layer.allocated_rank == 6
    x = torch.randn(4, 3, in_features, generator=generator)
    row_slots = torch.tensor([1, 0, 2, 1])
    selection.set(row_slots)
    mixed = layer(x)
    for row, slot in enumerate(row_slots.tolist()):
        expected = direct(base, x[row : row + 1], adapters.get(slot))
        torch.testing.assert_close(mixed[row : row + 1], expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(mixed[1], base(x[1]))  # a slot-0 row is exactly the base output
    selection.set(torch.tensor([2, 2, 2, 2]))  # uniform batch: the single-adapter path
    torch.testing.assert_close(layer(x), direct(base, x, adapters[2]), atol=1e-5, rtol=1e-5)
    selection.set(None)
    assert torch.equal(layer(x), base(x))
    layer.clear_slot(2)
    assert not layer.lora_A_slots[2].any() and layer.slot_ranks[2] == 0


def test_linear_and_conv1d_wrappers_match_direct_computation() -> None:
    torch.manual_seed(0)
    check_layer(nn.Linear(8, 5), 8, 5)
    check_layer(Conv1D(5, 8), 8, 5)  # GPT-2 style: weight stored (in, out)


def test_row_dispatch_pads_heads_of_different_width() -> None:
    torch.manual_seed(0)
    selection = SlotSelection()
    base = nn.Linear(4, 2)
    dispatch = RowDispatchModule(base, selection)
    head3 = dispatch.make_copy({"weight": torch.randn(3, 4), "bias": torch.randn(3)})
    dispatch.set_slot(1, head3)
    x = torch.randn(3, 4)
    selection.set(torch.tensor([1, 0, 1]))
    out = dispatch(x)
    assert out.shape == (3, 3)
    torch.testing.assert_close(out[[0, 2]], head3(x[[0, 2]]))
    torch.testing.assert_close(out[1, :2], base(x[1]))
    assert out[1, 2] == 0
    assert base.weight.shape == (2, 4)  # the copy did not touch the base head


def test_text_stream_holds_back_stop_prefixes_and_partial_utf8() -> None:
    tokenizer = make_tiny_tokenizer()
    ids = tokenizer("héllo wörld STOP more", add_special_tokens=False)["input_ids"]
    stream = TextStream(tokenizer, stop=["STOP"])
    deltas = []
    for token in ids:
        deltas.append(stream.add(token))
        if stream.stopped:
            break
    assert stream.stopped and stream.text == "héllo wörld "
    assert "".join(deltas) == "héllo wörld "
    assert all("\ufffd" not in d and "S" not in d for d in deltas)

    plain = TextStream(tokenizer, stop=None)
    streamed = "".join(plain.add(token) for token in ids) + plain.flush()
    assert streamed == "héllo wörld STOP more"
