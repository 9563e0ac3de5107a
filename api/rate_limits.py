"""Rate limits at the API edge: thin dependencies over `lorasp_service.rate_limits`, and the headers.

Every tenant route depends on `RequestLimit` (one request). The inference routes take their body
through `charged_*_body` instead, which also charges the tokens OpenAI would estimate up front: the
prompt's characters / 4 plus `n` × `max_tokens`. The outcome rides on the request's scope state, and
`RateLimitHeaders` (ASGI middleware) writes OpenAI's `x-ratelimit-*` headers on whatever response
goes out: JSON, an SSE stream or an error. Over a limit: OpenAI's 429 with `Retry-After`.
Admin routes and the unauthenticated ones (/health, /metrics, /ui) are not limited.
"""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import Depends, Request
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import CurrentTenant, ResourcesDep
from api.errors import APIError
from api.schemas.inference import ChatCompletionRequest, ClassificationRequest, CompletionRequest
from api.services.completions import DEFAULT_CHAT_MAX_TOKENS
from lorasp_service.rate_limits import (
    LimitKind,
    RateLimitExceededError,
    RateLimitOutcome,
    openai_duration,
)

STATE_KEY = "lorasp.rate_limit"  # in scope["state"]: the RateLimitOutcome of this request
CHARS_PER_TOKEN = 4  # OpenAI's rule of thumb for its up-front estimate


def headers_for(outcome: RateLimitOutcome) -> dict[str, str]:
    headers = {}
    for window in outcome.windows:
        headers[f"x-ratelimit-limit-{window.kind}"] = str(window.limit)
        headers[f"x-ratelimit-remaining-{window.kind}"] = str(window.remaining)
        headers[f"x-ratelimit-reset-{window.kind}"] = openai_duration(window.reset_seconds)
    return headers


def _too_many(error: RateLimitExceededError) -> APIError:
    unit = "requests" if error.kind == LimitKind.REQUESTS else "tokens"
    if error.requested > error.limit:
        message = (
            f"Request too large: it needs {error.requested} {unit}, more than the limit of "
            f"{error.limit} {unit} per minute (RPM/TPM) for your organization."
        )
    else:
        message = (
            f"Rate limit reached for {unit} per minute: limit {error.limit}, requested {error.requested}. "
            f"Please try again in {openai_duration(error.retry_after_seconds)}."
        )
    api_error = APIError(429, message, type=str(error.kind), code="rate_limit_exceeded")
    api_error.headers.update(headers_for(error.outcome))
    api_error.headers["Retry-After"] = str(max(1, math.ceil(error.retry_after_seconds)))
    api_error.headers["retry-after-ms"] = str(max(1, math.ceil(error.retry_after_seconds * 1000)))
    return api_error


async def charge(
    request: Request, resources: ResourcesDep, tenant_id: str, tenant_name: str, tokens: int = 0
) -> None:
    try:
        outcome = await resources.rate_limiter.charge(tenant_id, tokens, tenant_name=tenant_name)
    except RateLimitExceededError as error:
        raise _too_many(error) from error
    if outcome is not None:
        request.scope.setdefault("state", {})[STATE_KEY] = outcome


async def limit_request(request: Request, resources: ResourcesDep, tenant: CurrentTenant) -> None:
    await charge(request, resources, tenant.id, tenant.name)


# For a router's or a route's `dependencies=[...]`: counts one request of the authenticated tenant.
RequestLimit = Depends(limit_request)


def _tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def chat_tokens(body: ChatCompletionRequest) -> int:
    prompt = sum(_tokens(message.text()) for message in body.messages)
    return prompt + body.n * body.token_limit(DEFAULT_CHAT_MAX_TOKENS)


async def charged_chat_body(
    request: Request, resources: ResourcesDep, tenant: CurrentTenant, body: ChatCompletionRequest
) -> ChatCompletionRequest:
    await charge(request, resources, tenant.id, tenant.name, chat_tokens(body))
    return body


async def charged_completion_body(
    request: Request, resources: ResourcesDep, tenant: CurrentTenant, body: CompletionRequest
) -> CompletionRequest:
    await charge(request, resources, tenant.id, tenant.name, _tokens(body.prompt) + body.n * body.max_tokens)
    return body


async def charged_classification_body(
    request: Request, resources: ResourcesDep, tenant: CurrentTenant, body: ClassificationRequest
) -> ClassificationRequest:
    await charge(request, resources, tenant.id, tenant.name, sum(_tokens(text) for text in body.texts()))
    return body


ChargedChatBody = Annotated[ChatCompletionRequest, Depends(charged_chat_body)]
ChargedCompletionBody = Annotated[CompletionRequest, Depends(charged_completion_body)]
ChargedClassificationBody = Annotated[ClassificationRequest, Depends(charged_classification_body)]


class RateLimitHeaders:
    """Adds the request's x-ratelimit-* headers (if it was limited) to its response's start."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            outcome = scope.get("state", {}).get(STATE_KEY)
            if message["type"] == "http.response.start" and outcome is not None:
                headers = MutableHeaders(scope=message)
                for name, value in headers_for(outcome).items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)
