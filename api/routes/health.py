"""GET /health: 200 when the database and the broker answer, else 503 naming which does not."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api.deps import ResourcesDep
from api.services.health import HealthReport, check_health

router = APIRouter(tags=["health"])


@router.get(
    "/health",
    response_model=HealthReport,
    responses={503: {"model": HealthReport, "description": "Database or broker unreachable"}},
)
async def health(resources: ResourcesDep) -> JSONResponse:
    report = await run_in_threadpool(check_health, resources.engine, resources.settings)
    return JSONResponse(report.model_dump(), status_code=200 if report.ok else 503)
