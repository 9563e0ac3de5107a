"""Training checkpoints: `<checkpoint_dir>/step-<N>/` = a `save_adapter` directory + `trainer_state.pt`.

Written into a temporary sibling directory and renamed into place, so a crash never leaves a
half-written `step-N/` behind that a resume could pick up.
"""

from __future__ import annotations

import os
import random
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lorasp_core.peft_format import TaskType, save_adapter

TRAINER_STATE_FILE = "trainer_state.pt"
STATE_VERSION = 1


@dataclass
class TrainerState:
    """Where the loop is: resuming from it continues bit-identically on the same hardware."""

    step: int
    epoch: int
    batch_in_epoch: int  # index of the next optimizer step's first micro-batch group in this epoch
    trained_tokens: int
    loss_sum: float  # sum of per-step losses, for the run's mean train loss
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any]
    # dpo: the reference policy's (pairs, 2) log-probs, computed before the first update; a resumed run
    # must not recompute them from the policy it resumes
    reference_log_probs: torch.Tensor | None = None
    grad_scaler: dict[str, Any] | None = None  # fp16's loss scale and its growth tracker

    def to_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, **self.__dict__}


def capture_rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_path(checkpoint_dir: str | Path, step: int) -> Path:
    return Path(checkpoint_dir) / f"step-{step}"


def save_checkpoint(
    model: nn.Module,
    checkpoint_dir: str | Path,
    state: TrainerState,
    *,
    base_model_name_or_path: str,
    task_type: TaskType,
    label_names: list[str] | None,
    chat_template: str | None,
    training_summary: dict[str, Any],
) -> Path:
    final_path = checkpoint_path(checkpoint_dir, state.step)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = final_path.with_name(f".{final_path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        save_adapter(
            model,
            tmp_path,
            base_model_name_or_path=base_model_name_or_path,
            task_type=task_type,
            label_names=label_names,
            chat_template=chat_template,
            training_summary=training_summary,
        )
        torch.save(state.to_dict(), tmp_path / TRAINER_STATE_FILE)
        if final_path.exists():  # re-saving the same step (e.g. cancelled right after a periodic save)
            stale = final_path.with_name(f".{final_path.name}.old-{uuid.uuid4().hex[:8]}")
            os.rename(final_path, stale)
            shutil.rmtree(stale, ignore_errors=True)
        os.rename(tmp_path, final_path)
    except BaseException:
        shutil.rmtree(tmp_path, ignore_errors=True)
        raise
    return final_path


def load_trainer_state(path: str | Path) -> TrainerState:
    state_file = Path(path) / TRAINER_STATE_FILE
    if not state_file.exists():
        raise ValueError(f"{state_file} is missing: {path} is not a training checkpoint")
    # RNG states include Python's random state (a tuple) and numpy-free tensors only; our own file.
    data = torch.load(state_file, map_location="cpu", weights_only=False)
    version = data.get("version") if isinstance(data, dict) else None
    if version != STATE_VERSION:
        raise ValueError(f"{state_file}: unsupported trainer state (version {version!r})")
    data.pop("version")
    return TrainerState(**data)
