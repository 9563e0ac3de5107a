"""Fake `lorasp inference` processes behind httpx.MockTransport, for API tests of the routed path.

Each process answers /generate with a scripted answer (text pieces per choice) as the real server does:
NDJSON chunks and its name in the process header. `cut_after` resets the connection after that many
chunks, mid-body, as a process that dies while answering; a process in `down` refuses connections.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
from pydantic import SecretStr

from api.inference_tier import wire
from api.inference_tier.router import InferenceRouter
from lorasp_core.serving import GenerationChunk
from lorasp_service.settings import Settings

SECRET = "s3cret"


class ScriptedProcesses:
    def __init__(self, names: dict[str, str]) -> None:
        self.names = names  # url -> the process's own name (its header)
        self.pieces: list[str] = ["he", "llo"]  # what every choice writes, chunk by chunk
        self.finish_reason = "stop"
        self.cut_after: int | None = None
        self.down: set[str] = set()
        self.generated: list[dict[str, Any]] = []  # the GenerationRequests received, as JSON
        self.answered_by: list[str] = []

    @property
    def urls(self) -> list[str]:
        return list(self.names)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        origin = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
        assert request.headers["authorization"] == f"Bearer {SECRET}"
        if origin in self.down:
            raise httpx.ConnectError("connection refused", request=request)
        if request.url.path == "/health":
            return httpx.Response(200, json={"status": "ok", "name": self.names[origin], "hot": []})
        assert request.url.path == "/generate", request.url
        body = json.loads(request.content)
        self.generated.append(body)
        self.answered_by.append(origin)
        headers = {wire.PROCESS_HEADER: self.names[origin]}
        return httpx.Response(200, content=self._answer(int(body["n"])), headers=headers)

    def _answer(self, choices: int) -> Iterator[bytes]:
        sent = 0
        for index in range(choices):
            for position, piece in enumerate(self.pieces):
                if self.cut_after is not None and sent >= self.cut_after:
                    raise httpx.ReadError("connection reset by peer")
                last = position == len(self.pieces) - 1
                chunk = GenerationChunk(
                    piece, position + 1, self.finish_reason if last else None, prompt_tokens=3, index=index
                )
                yield (json.dumps({wire.CHUNK_KEY: wire.to_wire(chunk)}) + "\n").encode()
                sent += 1


def scripted_router(settings: Settings, processes: ScriptedProcesses) -> InferenceRouter:
    """An InferenceRouter over the scripted processes (no health thread; a down process stays down)."""
    routed = settings.model_copy(
        update={
            "inference_urls": processes.urls,
            "inference_secret": SecretStr(SECRET),
            "inference_health_interval_seconds": 0,
            "inference_retry_backoff_seconds": 60,
        }
    )
    return InferenceRouter(routed, transport=httpx.MockTransport(processes))
