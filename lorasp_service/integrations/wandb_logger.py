"""A job's Weights & Biases run (its `wandb` integration): a `TrainCallback` beside the job's others.

The run's id is the job id, opened with resume="allow": a paused and resumed job, or one a surviving
worker took over, continues the same run (a step run again after a worker's death keeps the values W&B
got first). Its config is the job's resolved spec, base model and ids; every step's metrics event
(`step_metrics.metrics_data`) is logged at its step; the run is finished when training ends, with the
job's outcome in its summary (`lorasp/status`) and an exit code W&B shows as its state: 0 (finished) for a
completed or paused job (resuming continues the run), 130 for a cancelled one and 1 when training raised
(both "failed": the SDK has no call for the "killed" state, which only W&B's own stop button sets).
W&B trouble (no `wandb` package on this worker, a network or key error)
never fails the job: it becomes one warning event, and the job logs no more to W&B.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from lorasp_core.train_config import ProgressEvent, TrainCallback
from lorasp_service import jobs
from lorasp_service.orm import Job
from lorasp_service.redaction import without_paths
from lorasp_service.settings import Settings
from lorasp_service.step_metrics import metrics_data

log = logging.getLogger(__name__)

MAX_TAG_LENGTH = 64  # W&B refuses longer tags
MAX_REASON_CHARS = 500
# Exit codes by how training ended. 130 is a shell's "stopped by the user" (SIGINT): non-zero, so W&B
# does not show a cancelled job's run as finished, and distinct from a crash's 1.
FINISHED_EXIT_CODE, CANCELLED_EXIT_CODE, RAISED_EXIT_CODE = 0, 130, 1
EXIT_CODES = {
    jobs.JobStatus.SUCCEEDED: FINISHED_EXIT_CODE,
    jobs.JobStatus.PAUSED: FINISHED_EXIT_CODE,
    jobs.JobStatus.CANCELLED: CANCELLED_EXIT_CODE,
    jobs.JobStatus.FAILED: RAISED_EXIT_CODE,
}


def default_tags(job: Job) -> list[str]:
    """Like OpenAI's `openai/finetune`, `openai/<base model>`, `openai/<job id>`."""
    tags = ["lorasp/finetune", f"lorasp/{job.model}", f"lorasp/{job.id}"]
    return [tag[:MAX_TAG_LENGTH] for tag in tags]


def run_config(job: Job) -> dict[str, Any]:
    method_type = str(job.method.get("type", "supervised"))
    hyperparameters = dict((job.method.get(method_type) or {}).get("hyperparameters") or job.hyperparameters)
    return {
        "job_id": job.id,
        "model": job.parent_model or job.model,
        "base_model": job.model,
        "method": method_type,
        "hyperparameters": hyperparameters,
        "seed": job.seed,
        "training_file": job.training_file_id,
        "validation_file": job.validation_file_id,
        "suffix": job.suffix,
    }


class WandbRunCallback(TrainCallback):
    def __init__(self, settings: Settings, job: Job, params: dict[str, Any]) -> None:
        self.settings, self.job_id, self.params = settings, job.id, params
        self.config = run_config(job)
        self.tags = default_tags(job) + [str(tag) for tag in params.get("tags") or []]
        self._run: Any = None  # wandb's Run, once started
        self._given_up = False

    def on_train_begin(self, total_steps: int) -> None:
        self._guarded("start the run", lambda: self._start(total_steps))

    def on_progress(self, event: ProgressEvent) -> None:
        run = self._run
        if run is None:
            return
        # The step is the x-axis already; a metric not measured at this step is left out, not null.
        metrics = {
            key: value for key, value in metrics_data(event).items() if value is not None and key != "step"
        }
        self._guarded("log a step", lambda: run.log(metrics, step=event.step))

    def finish(self, status: jobs.JobStatus) -> None:
        run, self._run = self._run, None
        if run is not None:
            self._guarded("finish the run", lambda: self._finish(run, status))

    @staticmethod
    def _finish(run: Any, status: jobs.JobStatus) -> None:
        run.summary["lorasp/status"] = status.value
        run.finish(exit_code=EXIT_CODES[status])

    def _start(self, total_steps: int) -> None:
        import wandb  # the optional extra (lorasp[wandb]): only a job with the integration needs it

        key = self.settings.wandb_api_key
        run_settings = wandb.Settings(
            mode=self.settings.wandb_mode,
            api_key=key.get_secret_value() if key is not None and key.get_secret_value() else None,
            # A worker runs many jobs: no capture of its console, no system metrics, code or git state.
            console="off",
            silent=True,
            x_disable_stats=True,
            save_code=False,
            disable_git=True,
            x_save_requirements=False,
        )
        run_dir = self.settings.wandb_dir
        assert run_dir is not None  # filled in by Settings
        run_dir.mkdir(parents=True, exist_ok=True)
        self._run = wandb.init(
            project=self.params["project"],
            entity=self.params.get("entity"),
            name=self.params.get("name") or self.job_id,
            tags=self.tags,
            config={**self.config, "total_steps": total_steps},
            id=self.job_id,
            resume="allow",
            dir=str(run_dir),
            reinit="create_new",
            settings=run_settings,
        )

    def _guarded(self, what: str, action: Callable[[], object]) -> None:
        if self._given_up:
            return
        try:
            action()
        except Exception as error:  # noqa: BLE001 - W&B must never fail the training job
            self._given_up, self._run = True, None
            self._warn(what, error)

    def _warn(self, what: str, error: Exception) -> None:
        if isinstance(error, ImportError):
            reason = "the wandb package is not installed on this worker (install lorasp[wandb])"
        else:
            reason = without_paths(f"{type(error).__name__}: {error}")[:MAX_REASON_CHARS]
            key = self.settings.wandb_api_key
            if key is not None and key.get_secret_value():
                reason = reason.replace(key.get_secret_value(), "[redacted]")
        message = f"Weights & Biases: could not {what}, so this job logs no more to W&B: {reason}"
        log.warning("job %s: %s", self.job_id, message)
        try:
            jobs.record_message(
                self.settings, self.job_id, message, level=jobs.EventLevel.WARN, data={"integration": "wandb"}
            )
        except Exception:  # noqa: BLE001 - a lost warning must not fail the job either
            log.exception("job %s: could not record the W&B warning", self.job_id)


@dataclass
class IntegrationRuns:
    """The callbacks of one training run's integrations. Training that stops early without raising
    (cancel, pause) says so with `stopped`; a block that ends otherwise completed (succeeded)."""

    callbacks: list[TrainCallback]
    outcome: jobs.JobStatus = field(default=jobs.JobStatus.SUCCEEDED)

    def stopped(self, status: jobs.JobStatus) -> None:
        self.outcome = status


@contextlib.contextmanager
def integration_callbacks(settings: Settings, job: Job) -> Iterator[IntegrationRuns]:
    """The job's integrations for one training run; their W&B runs are finished when the block ends,
    as failed when it raised (the job fails, or this worker is stopping), else with `outcome`."""
    runs = [
        WandbRunCallback(settings, job, dict(item["wandb"]))
        for item in job.integrations or []
        if isinstance(item, dict) and item.get("type") == "wandb"
    ]
    found = IntegrationRuns(list(runs))
    try:
        yield found
    except BaseException:
        for run in runs:
            run.finish(jobs.JobStatus.FAILED)
        raise
    for run in runs:
        run.finish(found.outcome)
