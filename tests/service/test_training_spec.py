"""`TrainingSpec`: the API builds it once from the request, the stored JSON keeps its shape, and the
worker reads back the same spec, hence the same engine configs; omitted knobs are the engine's defaults."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from api.errors import APIError
from api.schemas.job_requests import CreateFineTuningJobRequest
from api.services.job_spec import build_spec
from lorasp_core.config import LoraSPConfig
from lorasp_core.train_config import TrainConfig
from lorasp_service.jobs import InvalidSpecError, TrainingSpec
from lorasp_service.jobs.auto import DatasetSize
from lorasp_service.jobs.spec import AUTO_N_EPOCHS
from lorasp_service.orm import Job
from lorasp_service.settings import Settings


def request(**body: Any) -> CreateFineTuningJobRequest:
    return CreateFineTuningJobRequest.model_validate(
        {"model": "tiny-random-llama", "training_file": "file-x", **body}
    )


# A training file for which "auto" is 3 epochs of batch 8 (the engine's batch size): 4000 examples.
SIZED_LIKE_THE_ENGINE = DatasetSize(examples=4000, tokens=100_000, bytes=400_000)


def stored_and_read_back(spec: TrainingSpec) -> TrainingSpec:
    """What the worker sees: the job's columns written, sent through JSON (as the database does), parsed."""
    job = Job()
    spec.store_on(job)
    method, seed = json.loads(json.dumps(job.method)), json.loads(json.dumps(job.seed))
    return TrainingSpec.from_json(method, seed)


def test_omitted_knobs_are_the_engine_dataclass_defaults(tmp_path: Path) -> None:
    spec = build_spec(request(seed=11), Settings(home=tmp_path), SIZED_LIKE_THE_ENGINE)
    back = stored_and_read_back(spec)
    assert back == spec
    # Everything the request left out is LoraSPConfig's / TrainConfig's own default; only service policy
    # differs: "auto" epochs (as OpenAI's) and validation (the sample about 10 times a run: 3 epochs of
    # 500 steps / 10; the whole file at the ends of the epochs whose models the job keeps; the sample is
    # one batch of at least 8 examples).
    assert back.to_lora_config() == LoraSPConfig(mask_seed=11, init_seed=11)
    assert back.to_train_config("causal-lm") == TrainConfig(
        task="causal-lm",
        epochs=AUTO_N_EPOCHS,
        seed=11,
        eval_every_steps=150,
        eval_sample_size=8,
        full_eval_epochs=3,
    )
    assert TrainConfig(task="causal-lm").epochs != AUTO_N_EPOCHS  # the one knob that is not the engine's


def test_a_full_lorasp_request_round_trips_into_the_same_engine_configs(tmp_path: Path) -> None:
    method = {
        "type": "lorasp",
        "lorasp": {
            "hyperparameters": {
                "rank": 4,
                "alpha": 8,
                "dropout": 0.1,
                "freeze_ratio": 0.25,
                "target_modules": ["q_proj", "v_proj"],
                "learning_rate": 0.002,
                "learning_rate_multiplier": 0.5,
                "n_epochs": 2,
                "batch_size": "auto",
                "weight_decay": 0.01,
                "warmup_ratio": 0.1,
                "max_length": 256,
                "eval_every": 3,
                "mixed_precision": "bf16",
                "gradient_checkpointing": True,
            }
        },
    }
    spec = build_spec(
        request(seed=5, method=method, hyperparameters={"batch_size": 4}),
        Settings(home=tmp_path),
        SIZED_LIKE_THE_ENGINE,
    )
    back = stored_and_read_back(spec)
    assert back == spec
    checkpoints = tmp_path / "ckpt"
    lora, train = (
        back.to_lora_config(),
        back.to_train_config("causal-lm", checkpoint_dir=checkpoints, checkpoint_every_steps=7),
    )
    assert lora == LoraSPConfig(
        r=4,
        alpha=8.0,
        dropout=0.1,
        target_modules=("q_proj", "v_proj"),
        freeze_ratio=0.25,
        mask_seed=5,
        init_seed=5,
    )
    assert train == TrainConfig(
        task="causal-lm",
        epochs=2,
        batch_size=4,
        learning_rate=0.001,
        weight_decay=0.01,
        warmup_ratio=0.1,
        max_length=256,
        seed=5,
        eval_every_steps=3,
        eval_sample_size=8,
        full_eval_epochs=3,
        checkpoint_every_steps=7,
        checkpoint_dir=str(checkpoints),
        mixed_precision="bf16",
        gradient_checkpointing=True,
    )


def test_the_stored_json_keeps_the_shape_jobs_have_always_had(tmp_path: Path) -> None:
    spec = build_spec(
        request(
            seed=3,
            method={
                "type": "supervised",
                "supervised": {"hyperparameters": {"n_epochs": 1, "learning_rate_multiplier": 2}},
            },
        ),
        Settings(home=tmp_path),
        SIZED_LIKE_THE_ENGINE,
    )
    job = Job()
    spec.store_on(job)
    assert job.seed == 3
    assert job.hyperparameters == {"n_epochs": 1, "batch_size": 8, "learning_rate_multiplier": 2.0}
    assert job.method == {
        "type": "supervised",
        "supervised": {
            "hyperparameters": {
                "n_epochs": 1,
                "batch_size": 8,
                "learning_rate_multiplier": 2.0,
                "learning_rate": 0.001,
                "effective_learning_rate": 0.002,
                "rank": 8,
                "alpha": 16.0,
                "dropout": 0.0,
                "freeze_ratio": 0.5,
                "target_modules": None,
                "mask_seed": 3,
                "weight_decay": 0.0,
                "warmup_ratio": 0.0,
                "max_length": 512,
                "eval_every": 50,  # 500 steps, validated about 10 times
                "mixed_precision": "auto",  # resolved on the worker, which adds "precision"
                "gradient_checkpointing": "auto",
                "processes": 1,
                "base_quantization": "none",
            }
        },
    }
    assert list(job.method["supervised"]["hyperparameters"]) == list(
        TrainingSpec(seed=0, mask_seed=0).method_json()["supervised"]["hyperparameters"]
    )
    # a job stored before base_quantization existed reads back unquantized
    del job.method["supervised"]["hyperparameters"]["base_quantization"]
    assert TrainingSpec.from_job(job).base_quantization == "none"


def test_server_limits_name_the_request_field(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, serving_max_rank=16, max_example_tokens=128)
    with pytest.raises(APIError) as raised:
        build_spec(
            request(method={"type": "lorasp", "lorasp": {"hyperparameters": {"rank": 32}}}),
            settings,
            SIZED_LIKE_THE_ENGINE,
        )
    assert raised.value.detail.param == "method.lorasp.hyperparameters.rank"
    # An omitted max_length is the engine's default capped at the server's limit, not an error.
    assert build_spec(request(), settings, SIZED_LIKE_THE_ENGINE).max_length == 128


def test_what_the_worker_resolved_is_not_read_back_as_a_knob() -> None:
    method = TrainingSpec(seed=1, mask_seed=1).method_json()
    method["supervised"]["hyperparameters"].update(precision="bf16", base_dtype="bfloat16")
    assert TrainingSpec.from_json(method, 1) == TrainingSpec(seed=1, mask_seed=1)
    method["supervised"]["hyperparameters"]["mixed_precision"] = "fp8"
    with pytest.raises(InvalidSpecError, match="mixed_precision"):
        TrainingSpec.from_json(method, 1)


def test_a_spec_stored_before_eval_every_existed_reads_back_with_its_default() -> None:
    method = TrainingSpec(seed=1, mask_seed=1).method_json()
    del method["supervised"]["hyperparameters"]["eval_every"]
    assert TrainingSpec.from_json(method, 1).eval_every == TrainingSpec.eval_every


def test_a_spec_stored_before_processes_existed_trains_in_one_process() -> None:
    method = TrainingSpec(seed=1, mask_seed=1).method_json()
    del method["supervised"]["hyperparameters"]["processes"]
    assert TrainingSpec.from_json(method, 1).to_train_config("causal-lm").processes == 1


def test_a_stored_spec_with_a_wrong_type_is_refused_naming_the_field() -> None:
    method = TrainingSpec(seed=1, mask_seed=1).method_json()
    method["supervised"]["hyperparameters"]["rank"] = "8"
    with pytest.raises(InvalidSpecError, match="rank"):
        TrainingSpec.from_json(method, 1)
    with pytest.raises(InvalidSpecError):
        TrainingSpec.from_json({"type": "supervised"}, 1)


def test_a_spec_the_engine_rejects_fails_when_the_worker_builds_its_config() -> None:
    with pytest.raises(ValueError, match="freeze_ratio"):
        replace(TrainingSpec(seed=1, mask_seed=1), freeze_ratio=1.0).to_lora_config()


def test_the_worker_turns_a_bad_stored_spec_into_a_job_failure_on_method(tmp_path: Path) -> None:
    from lorasp_service.training import JobFailure, build_configs

    job = Job(seed=1, method=TrainingSpec(seed=1, mask_seed=1).method_json())
    lora, train = build_configs(job, Settings(home=tmp_path), "causal-lm", tmp_path / "ckpt", None)
    assert lora == LoraSPConfig(mask_seed=1, init_seed=1) and train.checkpoint_dir == str(tmp_path / "ckpt")
    job.method["supervised"]["hyperparameters"]["freeze_ratio"] = 1.0  # parses, but the engine refuses it
    with pytest.raises(JobFailure) as raised:
        build_configs(job, Settings(home=tmp_path), "causal-lm", tmp_path / "ckpt", None)
    assert (raised.value.code, raised.value.param) == ("invalid_hyperparameters", "method")
    assert "freeze_ratio" in raised.value.message
