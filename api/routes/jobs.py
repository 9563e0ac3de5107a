"""/v1/fine_tuning/jobs: create, list, read, cancel, pause and resume jobs; their events and checkpoints."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.sse import EventSourceResponse
from pydantic import TypeAdapter, ValidationError

from api.deps import CurrentTenant, EnqueueDep, ResourcesDep, SessionDep, SettingsDep, StorageDep
from api.errors import ERROR_RESPONSES, APIError
from api.schemas.common import ListPage, list_page
from api.schemas.job_requests import (
    MAX_METADATA_PAIRS,
    CreateFineTuningJobRequest,
    MetadataKey,
    MetadataValue,
)
from api.schemas.jobs import FineTuningJob, FineTuningJobCheckpoint, FineTuningJobEvent
from api.services import event_stream
from api.services import jobs as job_service
from api.services.paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE

router = APIRouter(prefix="/fine_tuning/jobs", tags=["fine-tuning"], responses=ERROR_RESPONSES)

PageLimit = Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description=f"1 to {MAX_PAGE_SIZE}")]
Cursor = Annotated[str | None, Query(description="Id of the last item of the previous page")]
_METADATA_PAIR: TypeAdapter[tuple[MetadataKey, MetadataValue]] = TypeAdapter(
    tuple[MetadataKey, MetadataValue]
)


def metadata_filter(request: Request) -> job_service.MetadataFilter:
    """`metadata[k]=v` query parameters (how the official client sends `jobs.list(metadata={k: v})`), or
    the literal `metadata=null` (only jobs without metadata), as OpenAI's list documents them."""
    pairs: dict[str, str] = {}
    only_null = False
    for name, value in request.query_params.multi_items():
        if name == "metadata":
            if value != "null":
                raise APIError(
                    400,
                    "Invalid value for 'metadata': use metadata[key]=value or metadata=null.",
                    param="metadata",
                )
            only_null = True
            continue
        if not (name.startswith("metadata[") and name.endswith("]")):
            continue
        try:
            key, text = _METADATA_PAIR.validate_python((name[len("metadata[") : -1], value))
        except ValidationError as error:
            detail = error.errors()[0]["msg"]
            raise APIError(400, f"Invalid value for '{name}': {detail}.", param=name) from None
        pairs[key] = text
    if len(pairs) > MAX_METADATA_PAIRS:
        raise APIError(
            400, f"Invalid value for 'metadata': at most {MAX_METADATA_PAIRS} pairs.", param="metadata"
        )
    if only_null and pairs:
        raise APIError(
            400,
            "Invalid value for 'metadata': metadata=null cannot be combined with metadata[key]=value.",
            param="metadata",
        )
    return job_service.MetadataFilter(pairs=pairs, only_null=only_null)


MetadataQuery = Annotated[job_service.MetadataFilter, Depends(metadata_filter)]


@router.post("", response_model=FineTuningJob)
def create_job(
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
    tenant: CurrentTenant,
    enqueue: EnqueueDep,
    request: CreateFineTuningJobRequest,
) -> FineTuningJob:
    job = job_service.create_job(session, settings, storage, tenant, request, enqueue)
    return FineTuningJob.from_row(job)


@router.get("", response_model=ListPage[FineTuningJob])
def list_jobs(
    session: SessionDep,
    tenant: CurrentTenant,
    metadata: MetadataQuery,
    after: Cursor = None,
    limit: PageLimit = DEFAULT_PAGE_SIZE,
) -> ListPage[FineTuningJob]:
    """Newest first; `metadata[k]=v` keeps only the jobs whose metadata holds every given pair."""
    jobs, has_more = job_service.list_jobs(session, tenant, after, limit, metadata)
    return list_page([FineTuningJob.from_row(job) for job in jobs], [job.id for job in jobs], has_more)


@router.get("/{fine_tuning_job_id}", response_model=FineTuningJob)
def get_job(session: SessionDep, tenant: CurrentTenant, fine_tuning_job_id: str) -> FineTuningJob:
    return FineTuningJob.from_row(job_service.get_job(session, tenant, fine_tuning_job_id))


@router.post("/{fine_tuning_job_id}/cancel", response_model=FineTuningJob)
def cancel_job(session: SessionDep, tenant: CurrentTenant, fine_tuning_job_id: str) -> FineTuningJob:
    """Queued: cancelled at once. Running: `cancel_requested` is set and the worker stops the job."""
    return FineTuningJob.from_row(job_service.cancel_job(session, tenant, fine_tuning_job_id))


@router.post("/{fine_tuning_job_id}/pause", response_model=FineTuningJob)
def pause_job(session: SessionDep, tenant: CurrentTenant, fine_tuning_job_id: str) -> FineTuningJob:
    """Queued: paused at once. Running: `pause_requested` is set; the worker checkpoints and pauses it."""
    return FineTuningJob.from_row(job_service.pause_job(session, tenant, fine_tuning_job_id))


@router.post("/{fine_tuning_job_id}/resume", response_model=FineTuningJob)
def resume_job(
    session: SessionDep, tenant: CurrentTenant, enqueue: EnqueueDep, fine_tuning_job_id: str
) -> FineTuningJob:
    """Paused: queued again; a worker continues it from the checkpoint its pause wrote."""
    return FineTuningJob.from_row(job_service.resume_job(session, tenant, fine_tuning_job_id, enqueue))


_EVENT_STREAM_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A page of events, newest first; with `stream=true`, server-sent events instead.",
        "content": {
            "text/event-stream": {
                "schema": {"type": "string"},
                "example": 'id: ftevent-...\nevent: message\ndata: {"id": "ftevent-...", ...}\n\n',
            }
        },
    }
}


@router.get(
    "/{fine_tuning_job_id}/events", response_model=ListPage[FineTuningJobEvent], responses=_EVENT_STREAM_DOC
)
def list_events(
    session: SessionDep,
    resources: ResourcesDep,
    tenant: CurrentTenant,
    fine_tuning_job_id: str,
    after: Cursor = None,
    limit: PageLimit = DEFAULT_PAGE_SIZE,
    stream: Annotated[
        bool, Query(description="Server-sent events, oldest first, until the job is final (`limit` unused)")
    ] = False,
    last_event_id: Annotated[
        str | None, Header(description="With `stream=true`: resume after this event (as `after`)")
    ] = None,
) -> ListPage[FineTuningJobEvent] | Response:
    if stream:
        start = event_stream.start_stream(session, tenant, fine_tuning_job_id, last_event_id or after)
        return EventSourceResponse(
            event_stream.stream_events(resources.sessions, start),
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
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
    items = [FineTuningJobCheckpoint.of(row, job) for row in rows]
    return list_page(items, [row.id for row in rows], has_more)
