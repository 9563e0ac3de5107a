"""Celery tasks. A task takes ids only and re-reads the state it needs from the database."""

from __future__ import annotations

import logging

from celery import Task

from lorasp_service import jobs
from lorasp_service.queue import HARD_TIME_LIMIT_GRACE_SECONDS, RUN_JOB_TASK
from lorasp_service.settings import get_settings
from worker.app import celery_app

log = logging.getLogger(__name__)

MAX_TRANSIENT_RETRIES = 5


@celery_app.task(  # type: ignore[untyped-decorator]
    name=RUN_JOB_TASK,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=get_settings().job_time_limit_seconds,
    time_limit=get_settings().job_time_limit_seconds + HARD_TIME_LIMIT_GRACE_SECONDS,
    max_retries=MAX_TRANSIENT_RETRIES,
)
def run_job(self: Task, job_id: str) -> str:
    """Run fine-tuning job `job_id` under a lease; a no-op for a job that is done or running elsewhere.

    Redelivered and duplicate messages are expected (acks_late): the claim is a compare-and-set, so only
    a queued job, or a running job whose worker died (stale heartbeat), is (re)started here.
    """
    settings = get_settings()
    worker_id = jobs.worker_identity()
    try:
        claim = jobs.claim_job(settings, job_id, worker_id)
        if not claim.runs:
            log.info("job %s: nothing to do (%s)", job_id, claim.outcome.value)
            return claim.outcome.value
        log.info("job %s: %s by %s (attempt %d)", job_id, claim.outcome.value, worker_id, claim.attempt)
        from lorasp_service.training import run_claimed_job  # torch: only where a job really runs

        outcome = run_claimed_job(settings, job_id, worker_id, claim)
        log.info("job %s: %s", job_id, outcome)
        return outcome
    except jobs.TRANSIENT_DB_ERRORS as error:
        countdown = min(300, 5 * 2**self.request.retries)
        log.warning("job %s: transient database error, retrying in %d s: %s", job_id, countdown, error)
        raise self.retry(exc=error, countdown=countdown) from error
