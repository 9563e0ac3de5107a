"""/v1/chat/completions, /v1/completions and /v1/classifications (OpenAI shapes; `stream: true` is SSE).

Each body comes through its rate-limit dependency, which charges the request and its estimated tokens.

Sync routes on purpose: FastAPI runs them in its threadpool, where the engine's blocking calls belong.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Response
from fastapi.responses import StreamingResponse

from api.deps import CurrentTenant, EngineDep, SessionDep, SettingsDep, StorageDep
from api.errors import ERROR_RESPONSES, ErrorResponse
from api.rate_limits import ChargedChatBody, ChargedClassificationBody, ChargedCompletionBody
from api.schemas.inference import SSE_RESPONSES, ChatCompletion, ClassificationList, TextCompletion
from api.services import completions as completions_service
from api.services import inference as inference_service
from api.services.inference import AnswerT, Served

router = APIRouter(
    tags=["inference"],
    responses={
        **ERROR_RESPONSES,
        429: {
            "model": ErrorResponse,
            "description": "Over the tenant's requests or tokens per minute, or its resident-adapter quota",
        },
        503: {"model": ErrorResponse, "description": "No adapter slot free"},
    },
)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _answer(served: Served[AnswerT], response: Response) -> AnswerT | StreamingResponse:
    """The body (with the served headers, e.g. which inference process answered) or the SSE stream."""
    if isinstance(served.answer, AsyncIterator):
        headers = {**SSE_HEADERS, **served.headers}
        return StreamingResponse(served.answer, media_type="text/event-stream", headers=headers)
    response.headers.update(served.headers)
    return served.answer


@router.post("/chat/completions", response_model=ChatCompletion, responses=SSE_RESPONSES)
def create_chat_completion(
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
    engine: EngineDep,
    tenant: CurrentTenant,
    body: ChargedChatBody,
    response: Response,
) -> ChatCompletion | StreamingResponse:
    served = completions_service.chat_completion(session, settings, storage, engine, tenant, body)
    return _answer(served, response)


@router.post("/completions", response_model=TextCompletion, responses=SSE_RESPONSES)
def create_completion(
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
    engine: EngineDep,
    tenant: CurrentTenant,
    body: ChargedCompletionBody,
    response: Response,
) -> TextCompletion | StreamingResponse:
    served = completions_service.text_completion(session, settings, storage, engine, tenant, body)
    return _answer(served, response)


@router.post("/classifications", response_model=ClassificationList)
def create_classification(
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
    engine: EngineDep,
    tenant: CurrentTenant,
    body: ChargedClassificationBody,
) -> ClassificationList:
    return inference_service.classify(session, settings, storage, engine, tenant, body)
