"""Where the server is and which key to send: flags, else LORASP_API_BASE / LORASP_API_KEY, else the
official client's OPENAI_BASE_URL / OPENAI_API_KEY."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import httpx
import openai

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
# Reads wait past the server's 15 s keep-alive comments; a silent minute means the stream is gone.
STREAM_TIMEOUT = httpx.Timeout(30.0, read=60.0)


class ClientError(Exception):
    """What the user is told on stderr (exit status 1): an API error's message and param, or why the
    server could not be reached."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param = message, param

    def __str__(self) -> str:
        return self.message if self.param is None else f"{self.message} (param: {self.param})"


@dataclass(frozen=True)
class Connection:
    base_url: str
    api_key: str

    @classmethod
    def resolve(cls, base_url: str | None, api_key: str | None) -> Connection:
        env = os.environ
        url = base_url or env.get("LORASP_API_BASE") or env.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        key = api_key or env.get("LORASP_API_KEY") or env.get("OPENAI_API_KEY")
        if not key:
            raise ClientError("No API key: pass --api-key or set LORASP_API_KEY (or OPENAI_API_KEY).")
        return cls(url.rstrip("/"), key)

    def openai(self) -> openai.OpenAI:
        # No retries: a CLI reports the error at once rather than sleeping through backoffs.
        return openai.OpenAI(base_url=self.base_url, api_key=self.api_key, max_retries=0, timeout=60.0)

    def http(self) -> httpx.Client:
        """For what the openai client has no call for (the event stream, adapter downloads)."""
        headers = {"Authorization": f"Bearer {self.api_key}"}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=STREAM_TIMEOUT)


def error_of_body(body: Any, fallback: str) -> ClientError:
    """The API's error envelope ({"error": {...}}, or its inner object as the openai client keeps it)."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        body = body["error"]
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        param = body.get("param")
        return ClientError(body["message"], param if isinstance(param, str) else None)
    return ClientError(fallback)


def check_response(response: httpx.Response) -> None:
    """Raise the API's error for a non-2xx httpx response (streamed or not)."""
    if response.is_success:
        return
    response.read()
    try:
        body = response.json()
    except ValueError:
        body = None
    raise error_of_body(body, f"HTTP {response.status_code} from {response.request.url}")
