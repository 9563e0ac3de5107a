"""Continued training end to end, with the official `openai` client against a live server and worker.

A parent job trains; a child from its fine-tuned model and another from its epoch checkpoint start from
the parent's weights: under the parent's mask their frozen entries are bit-identical to the parent's,
although their seed differs (a fresh job with that seed has other frozen values), and their trainable
entries differ from that fresh job's. A classifier continues on a subset of its labels with its head's
rows unchanged in meaning; a parent that vanished before the worker loaded it fails the job.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
import torch
from e2e_stack import Stack, chat_rows, jsonl, openai_client, poll_until_finished

from lorasp_core.layers import LoraSPLinear
from lorasp_core.models.tiny import tiny_random_llama
from lorasp_core.peft_format import load_adapter, read_adapter_metadata
from lorasp_core.wrapping import lorasp_layers

pytestmark = pytest.mark.services

PARENT_SEED, CHILD_SEED = 11, 12
# 8 rows / batch 4 = 2 steps an epoch: the parent's 2 epochs leave a checkpoint model at step 2.
SMALL = {"batch_size": 4}


def _download(stack: Stack, model_id: str, into: Path) -> Path:
    archive = httpx.get(
        f"{stack.base_url}/v1/adapters/{model_id}/download", headers=stack.headers, timeout=60
    )
    assert archive.status_code == 200, archive.text
    with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as tar:
        tar.extractall(into, filter="data")
    return into


def _layers(directory: Path) -> dict[str, LoraSPLinear]:
    model = tiny_random_llama(seed=0)
    load_adapter(model, directory)  # wraps it with the masks the adapter's lorasp.json derives
    return dict(lorasp_layers(model))


def _dense(layer: LoraSPLinear, matrix: str) -> torch.Tensor:
    return (layer.lora_A if matrix == "A" else layer.lora_B).detach().flatten()


def test_children_start_from_the_parents_weights_under_its_mask(
    stack: Stack, worker: Path, tmp_path: Path
) -> None:
    client = openai_client(stack)
    training = client.files.create(file=("t.jsonl", io.BytesIO(jsonl(chat_rows(8)))), purpose="fine-tune")
    method = {"type": "supervised", "supervised": {"hyperparameters": {**SMALL, "n_epochs": 2}}}
    parent = client.fine_tuning.jobs.create(
        model="tiny-random-llama", training_file=training.id, seed=PARENT_SEED, method=method
    )
    parent = poll_until_finished(client, parent)
    assert parent.status == "succeeded", parent.error
    final = parent.fine_tuned_model
    assert final is not None
    checkpoint = f"{final}:ckpt-step-2"
    one_epoch = {"type": "supervised", "supervised": {"hyperparameters": {**SMALL, "n_epochs": 1}}}
    jobs = {
        name: client.fine_tuning.jobs.create(
            model=model, training_file=training.id, seed=CHILD_SEED, method=one_epoch, suffix=name
        )
        for name, model in (("child", final), ("fromckpt", checkpoint), ("fresh", "tiny-random-llama"))
    }
    assert jobs["child"].model == final and jobs["fromckpt"].model == checkpoint
    done = {name: poll_until_finished(client, job) for name, job in jobs.items()}
    for job in done.values():
        assert job.status == "succeeded", job.error
        assert job.fine_tuned_model is not None and job.fine_tuned_model.startswith("ft:tiny-random-llama:")

    layers = {"parent": _layers(_download(stack, final, tmp_path / "parent"))}
    for name, job in done.items():
        assert job.fine_tuned_model is not None
        directory = _download(stack, job.fine_tuned_model, tmp_path / name)
        layers[name] = _layers(directory)
        metadata = read_adapter_metadata(directory)
        expected_mask = CHILD_SEED if name == "fresh" else PARENT_SEED
        assert (metadata.mask_seed, metadata.init_seed) == (expected_mask, CHILD_SEED)
    assert layers["parent"].keys() == layers["child"].keys() == layers["fresh"].keys()
    for module, theirs in layers["parent"].items():
        for matrix in ("A", "B"):
            frozen = getattr(theirs, f"lora_{matrix}_frozen_index")
            trainable = getattr(theirs, f"lora_{matrix}_trainable_index")
            parents = _dense(theirs, matrix)
            for child in ("child", "fromckpt"):
                ours = layers[child][module]
                assert torch.equal(getattr(ours, f"lora_{matrix}_frozen_index"), frozen)  # the parent's mask
                assert torch.equal(_dense(ours, matrix)[frozen], parents[frozen]), (child, module, matrix)
                fresh = _dense(layers["fresh"][module], matrix)
                assert not torch.equal(_dense(ours, matrix)[trainable], fresh[trainable]), (child, module)
        # A starts random (B at zero): a fresh job of the child's seed has other values where the parent froze
        frozen_a = theirs.lora_A_frozen_index
        assert not torch.equal(_dense(layers["fresh"][module], "A")[frozen_a], _dense(theirs, "A")[frozen_a])


def _classification_rows(labels: tuple[str, ...], count: int) -> list[dict[str, str]]:
    return [
        {"text": f"{labels[i % len(labels)]} words #{i}", "label": labels[i % len(labels)]}
        for i in range(count)
    ]


def test_a_classifier_continues_on_a_subset_of_its_labels(stack: Stack, worker: Path, tmp_path: Path) -> None:
    client = openai_client(stack)
    both = client.files.create(
        file=("b.jsonl", io.BytesIO(jsonl(_classification_rows(("neg", "pos"), 8)))), purpose="fine-tune"
    )
    method = {"type": "supervised", "supervised": {"hyperparameters": {**SMALL, "n_epochs": 1}}}
    parent = poll_until_finished(
        client,
        client.fine_tuning.jobs.create(
            model="tiny-random-bert", training_file=both.id, seed=PARENT_SEED, method=method
        ),
    )
    assert parent.status == "succeeded" and parent.fine_tuned_model, parent.error
    only_pos = client.files.create(
        file=("p.jsonl", io.BytesIO(jsonl(_classification_rows(("pos",), 8)))), purpose="fine-tune"
    )
    child = poll_until_finished(
        client,
        client.fine_tuning.jobs.create(
            model=parent.fine_tuned_model, training_file=only_pos.id, seed=CHILD_SEED, method=method
        ),
    )
    assert child.status == "succeeded" and child.fine_tuned_model, child.error
    # The head has the parent's two rows (a one-label head would not have loaded the parent's weights).
    labels = read_adapter_metadata(_download(stack, child.fine_tuned_model, tmp_path / "child")).label_names
    assert labels == ["neg", "pos"]


def test_a_parent_gone_before_the_worker_loads_it_fails_the_job(stack: Stack, tmp_path: Path) -> None:
    """The API keeps a model in use; an epoch checkpoint its own running job prunes is not kept."""
    client = openai_client(stack)
    training = client.files.create(file=("t.jsonl", io.BytesIO(jsonl(chat_rows(4)))), purpose="fine-tune")
    method = {"type": "supervised", "supervised": {"hyperparameters": {**SMALL, "n_epochs": 2}}}
    stack.ensure_workers(1)
    parent = poll_until_finished(
        client,
        client.fine_tuning.jobs.create(
            model="tiny-random-llama", training_file=training.id, seed=PARENT_SEED, method=method
        ),
    )
    assert parent.status == "succeeded" and parent.fine_tuned_model, parent.error
    checkpoint = f"{parent.fine_tuned_model}:ckpt-step-1"
    stack.ensure_workers(0)  # the child waits in the queue while its parent's row goes
    child = client.fine_tuning.jobs.create(model=checkpoint, training_file=training.id, method=method)
    with stack.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM adapters WHERE id = :id"), {"id": checkpoint})
    stack.ensure_workers(1)
    child = poll_until_finished(client, child)
    assert child.status == "failed" and child.error is not None
    assert (child.error.code, child.error.param) == ("model_not_available", "model")
    assert checkpoint in child.error.message
