"""The API side of one generation streamed from an inference process (NDJSON over HTTP)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import httpx

from api.inference_tier import wire
from lorasp_core.serving import GenerationChunk, GenerationStream


class RemoteGenerationStream(GenerationStream):
    """A GenerationStream read straight from the HTTP response (no thread): `next()` blocks on the
    socket, as the in-process one blocks on its queue. A connection lost mid-stream fails this request
    alone (InferenceStreamBrokenError) and reports the process as down through `on_broken`."""

    def __init__(
        self, response: httpx.Response, process: str, on_broken: Callable[[], None], choices: int = 1
    ) -> None:
        super().__init__(choices)
        self._response = response
        self._lines: Iterator[str] = response.iter_lines()
        self._on_broken = on_broken
        self.process = process  # the inference process answering (its URL)
        # its own name (`lorasp inference --name`), which the API forwards to the client
        self.process_name: str | None = response.headers.get(wire.PROCESS_HEADER)

    def _end(self) -> None:
        self._done = True
        self._response.close()

    def _broken(self, why: str) -> wire.InferenceStreamBrokenError:
        self._end()
        if not self.cancelled:
            self._on_broken()
        return wire.InferenceStreamBrokenError(f"the inference process {self.process} {why}")

    def __next__(self) -> GenerationChunk:
        if self._done:
            raise StopIteration
        try:
            line = ""
            while not line.strip():
                line = next(self._lines)
        except StopIteration:
            raise self._broken("ended the stream before its last chunk") from None
        except httpx.HTTPError as error:
            raise self._broken(f"was lost mid-stream ({type(error).__name__})") from error
        payload = json.loads(line)
        if wire.ERROR_KEY in payload:
            self._end()
            raise wire.error_from_wire(payload[wire.ERROR_KEY])
        chunk = wire.from_wire(GenerationChunk, payload[wire.CHUNK_KEY])
        if chunk.finish_reason is not None:
            self._unfinished -= 1  # the stream ends when every choice (`n`) has finished
            if self._unfinished <= 0:
                self._end()
        return chunk

    def cancel(self) -> None:
        super().cancel()
        self._end()  # closing the connection makes the inference process cancel the row
