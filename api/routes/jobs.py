"""/v1/fine_tuning/jobs: create, list, read and cancel jobs; their events and checkpoints."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import CurrentTenant, EnqueueDep, SessionDep, SettingsDep
from api.errors import ERROR_RESPONSES
from api.schemas.common import ListPage, list_page
from api.schemas.job_requests import CreateFineTuningJobRequest
from api.schemas.jobs import FineTuningJob, FineTuningJobCheckpoint, FineTuningJobEvent
from api.services import jobs as job_service
from api.services.paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE

router = APIRouter(prefix="/fine_tuning/jobs", tags=["fine-tuning"], responses=ERROR_RESPONSES)

PageLimit = Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description=f"1 to {MAX_PAGE_SIZE}")]
Cursor = Annotated[str | None, Query(description="Id of the last item of the previous page")]


@router.post("", response_model=FineTuningJob)
def create_job(
    session: SessionDep,
    settings: SettingsDep,
    tenant: CurrentTenant,
    enqueue: EnqueueDep,
    request: CreateFineTuningJobRequest,
) -> FineTuningJob:
    job = job_service.create_job(session, settings, tenant, request, enqueue)
    return FineTuningJob.from_row(job)


@router.get("", response_model=ListPage[FineTuningJob])
def list_jobs(
    session: SessionDep, tenant: CurrentTenant, after: Cursor = None, limit: PageLimit = DEFAULT_PAGE_SIZE
) -> ListPage[FineTuningJob]:
    jobs, has_more = job_service.list_jobs(session, tenant, after, limit)
    return list_page([FineTuningJob.from_row(job) for job in jobs], [job.id for job in jobs], has_more)


@router.get("/{fine_tuning_job_id}", response_model=FineTuningJob)
def get_job(session: SessionDep, tenant: CurrentTenant, fine_tuning_job_id: str) -> FineTuningJob:
    return FineTuningJob.from_row(job_service.get_job(session, tenant, fine_tuning_job_id))


@router.post("/{fine_tuning_job_id}/cancel", response_model=FineTuningJob)
def cancel_job(session: SessionDep, tenant: CurrentTenant, fine_tuning_job_id: str) -> FineTuningJob:
    """Queued: cancelled at once. Running: `cancel_requested` is set and the worker stops the job."""
    return FineTuningJob.from_row(job_service.cancel_job(session, tenant, fine_tuning_job_id))


@router.get("/{fine_tuning_job_id}/events", response_model=ListPage[FineTuningJobEvent])
def list_events(
    session: SessionDep,
    tenant: CurrentTenant,
    fine_tuning_job_id: str,
    after: Cursor = None,
    limit: PageLimit = DEFAULT_PAGE_SIZE,
) -> ListPage[FineTuningJobEvent]:
    events, has_more = job_service.list_events(session, tenant, fine_tuning_job_id, after, limit)
    items = [FineTuningJobEvent.from_row(event) for event in events]
    return list_page(items, [event.id for event in events], has_more)


@router.get("/{fine_tuning_job_id}/checkpoints", response_model=ListPage[FineTuningJobCheckpoint])
def list_checkpoints(
    session: SessionDep,
    tenant: CurrentTenant,
    fine_tuning_job_id: str,
    after: Cursor = None,
    limit: PageLimit = 10,
) -> ListPage[FineTuningJobCheckpoint]:
    job, rows, has_more = job_service.list_checkpoints(session, tenant, fine_tuning_job_id, after, limit)
    items = [FineTuningJobCheckpoint.from_row(row, job) for row in rows]
    return list_page(items, [row.id for row in rows], has_more)
