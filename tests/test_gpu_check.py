"""benchmarks.gpu_check is run on a lent GPU machine in one short call, so it must not rot on CPU."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import gpu_check


def test_gpu_check_smoke_run_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    gpu_check.main(["--smoke", "--out", str(out)])
    results = json.loads(out.read_text())  # strict JSON: no NaN where a figure does not apply
    figures = results["models"]["tiny-llama"]
    for kind in ("lorasp", "peft-lora"):
        assert figures[kind]["tokens_per_second"] > 0
        assert figures[kind]["final_loss"] > 0
    # LoRA-SP trains half the adapter entries PEFT LoRA trains on the same modules and rank
    assert figures["lorasp"]["trainable_parameters"] * 2 == figures["peft-lora"]["trainable_parameters"]
    assert figures["trainer"]["steps"] == 2
    assert figures["serving"]["1_adapters_tokens_per_second"] > 0
    assert figures["serving"]["8_adapters_tokens_per_second"] > 0
