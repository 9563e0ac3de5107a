"""OpenAI's error envelope `{"error": {"message", "type", "param", "code"}}` for every failure.

Request validation errors become 400s naming the dotted field path in `param`; unknown routes and
other HTTP errors keep their status; anything unexpected is a 500 `server_error` without details.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

logger = logging.getLogger(__name__)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None

    @field_validator("message", "param")
    @classmethod
    def _encodable(cls, value: str | None) -> str | None:
        # Messages may quote client input; a lone surrogate from a JSON escape must not break encoding.
        return None if value is None else value.encode("utf-8", "replace").decode("utf-8")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class APIError(Exception):
    """An error answered to the client as it is (status + envelope)."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.detail = ErrorDetail(message=message, type=type, param=param, code=code)
        self.headers: dict[str, str] = {}


def not_found(what: str, identifier: str, *, param: str | None = None, code: str = "not_found") -> APIError:
    return APIError(404, f"No {what} found with id '{identifier}'.", param=param, code=code)


def file_too_large(message: str) -> APIError:
    return APIError(413, message, param="file", code="file_too_large")


def invalid_api_key(message: str) -> APIError:
    error = APIError(401, message, code="invalid_api_key")
    error.headers["WWW-Authenticate"] = "Bearer"
    return error


def error_response(
    status_code: int, detail: ErrorDetail, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(ErrorResponse(error=detail).model_dump(), status_code=status_code, headers=headers)


# Responses documented in OpenAPI for every route that takes input.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Invalid request"},
    401: {"model": ErrorResponse, "description": "Missing, invalid or revoked API key"},
    404: {"model": ErrorResponse, "description": "Unknown id (or another tenant's)"},
}


def _param_of(loc: Sequence[Any]) -> str | None:
    # loc = ("body" | "query" | "path" | "header", field, subfield, ...); a JSON decode error adds a position.
    parts = [str(part) for part in loc[1:]] if loc and loc[0] in {"body", "query", "path", "header"} else []
    return ".".join(parts) or None


def _describe(error: dict[str, Any], param: str | None) -> str:
    kind = error.get("type", "")
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    if kind == "json_invalid":
        reason = (error.get("ctx") or {}).get("error", "invalid JSON")
        return f"We could not parse the JSON body of your request ({reason}). Send a valid JSON object."
    if param is None:
        return f"Invalid request body: {message}."
    if kind == "missing":
        return f"Missing required parameter: '{param}'."
    if kind == "extra_forbidden":
        return f"Unrecognized request argument supplied: '{param}'."
    return f"Invalid value for '{param}': {message}."


def validation_error_detail(errors: Sequence[Any]) -> ErrorDetail:
    first = dict(errors[0]) if errors else {}
    is_json_error = first.get("type") == "json_invalid"
    param = None if is_json_error else _param_of(first.get("loc", ()))
    message = _describe(first, param)
    if len(errors) > 1:
        message += f" ({len(errors) - 1} more problem{'s' if len(errors) > 2 else ''} in the request.)"
    return ErrorDetail(message=message, type="invalid_request_error", param=param, code=None)


_HTTP_CODES = {404: "unknown_url", 405: "method_not_allowed", 413: "request_too_large"}


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return error_response(exc.status_code, exc.detail, exc.headers or None)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(400, validation_error_detail(exc.errors()))


_PROBED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> str:
    """Every method some route of the app fully matches for this path. The router raises the 405 from
    the first route whose path matched, so its own Allow header names only that route's methods (GET,
    not DELETE); asking each route through the public `matches` works whatever the router nests."""
    allowed = []
    for method in _PROBED_METHODS:
        probe = {**request.scope, "method": method}
        if any(route.matches(probe)[0] is Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return ", ".join(allowed)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers) if exc.headers else {}
    if exc.status_code == 405:
        headers["Allow"] = allowed_methods(request) or headers.get("Allow", "")
    if exc.status_code == 404:
        message = f"Unknown request URL: {request.method} {request.url.path}."
    elif exc.status_code == 405:
        message = f"Method {request.method} is not allowed for {request.url.path}."
    else:
        message = str(exc.detail)
    code = _HTTP_CODES.get(exc.status_code)
    detail = ErrorDetail(message=message, type="invalid_request_error", param=None, code=code)
    return error_response(exc.status_code, detail, headers or None)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    detail = ErrorDetail(
        message="The server had an error while processing your request.", type="server_error", code=None
    )
    return error_response(500, detail)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
