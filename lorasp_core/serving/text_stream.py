"""Incremental detokenisation with stop strings: emit only text that can no longer change or be cut."""

from __future__ import annotations

import threading
from contextlib import nullcontext
from typing import Any


class TextStream:
    """Turns generated token ids into text deltas.

    Text is held back while it (a) ends in an incomplete UTF-8 sequence (decoded as U+FFFD) or (b) ends in
    a prefix of a stop string, so a streamed client never sees text that the final answer would not have.
    """

    def __init__(self, tokenizer: Any, stop: list[str] | None, lock: threading.Lock | None = None) -> None:
        self.tokenizer = tokenizer
        self.lock = lock
        self.stop = list(stop or [])
        self.token_ids: list[int] = []
        self.emitted = 0  # characters of the text already handed out
        self.text = ""
        self.stopped = False

    def _decode(self) -> str:
        with self.lock or nullcontext():
            text: str = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        return text

    def add(self, token_id: int) -> str:
        """Append one token; return the new safe text. Sets `stopped` when a stop string appeared."""
        self.token_ids.append(token_id)
        text = self._decode()
        if self.stop:
            # A stop string can only start in text not yet emitted (emitted text never contains a prefix).
            search_from = max(0, self.emitted - max(len(s) for s in self.stop))
            cuts = [pos for s in self.stop if (pos := text.find(s, search_from)) != -1]
            if cuts:
                self.text = text[: min(cuts)]
                self.stopped = True
                return self._emit(len(self.text))
        self.text = text
        safe = len(text)
        while safe > self.emitted and text[safe - 1] == "\ufffd":
            safe -= 1
        safe -= self._stop_prefix_length(text[:safe])
        return self._emit(max(safe, self.emitted))

    def _stop_prefix_length(self, text: str) -> int:
        longest = 0
        for stop in self.stop:
            for k in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:k]):
                    longest = k
                    break
        return longest

    def _emit(self, end: int) -> str:
        delta = self.text[self.emitted : end]
        self.emitted = max(self.emitted, end)
        return delta

    def flush(self) -> str:
        """Everything not yet emitted (at the end of generation)."""
        return self._emit(len(self.text))
