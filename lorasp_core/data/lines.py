"""Physical lines of a byte stream, in bounded memory whatever the stream holds.

Iterating a file object line by line holds a whole line, so one 500 MiB line costs 500 MiB (and more
once decoded and parsed). Here a line longer than `max_line_bytes` is dropped as soon as it passes the
limit: the reader then discards bytes up to the next newline, holding at most the limit plus one chunk.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import BinaryIO

# Read size of dataset files: large enough for the C-level newline search to dominate, small enough to
# keep what a reader holds well under any sensible line limit.
READ_CHUNK_BYTES = 64 * 1024


class OverlongLine:
    """Stands in for a line longer than the limit; only its length so far is kept, never its bytes."""

    __slots__ = ()


OVERLONG = OverlongLine()


def line_too_long_reason(limit: int) -> str:
    return f"longer than the limit of {limit} bytes per line"


def file_chunks(handle: BinaryIO, size: int = READ_CHUNK_BYTES) -> Iterator[bytes]:
    while chunk := handle.read(size):
        yield chunk


def split_lines(chunks: Iterable[bytes], max_line_bytes: int | None = None) -> Iterator[bytes | OverlongLine]:
    """Yield each physical line (newline kept, like file iteration) or OVERLONG for one whose content
    (without its newline) exceeds `max_line_bytes`. None means no limit."""
    limit = sys.maxsize if max_line_bytes is None else max_line_bytes
    pending = bytearray()  # the start of the current line, never more than `limit` bytes
    overlong = False
    for chunk in chunks:
        # split() keeps the per-line work in C; parts[1:-1] are whole lines inside this chunk
        parts = chunk.split(b"\n")
        head = parts[0]
        if not overlong and len(pending) + len(head) > limit:
            overlong = True
            pending.clear()  # drop what was held: the rest of the line is skipped unread
        if len(parts) == 1:
            if not overlong:
                pending += head
            continue
        if overlong:
            yield OVERLONG
        else:
            pending += head
            pending += b"\n"
            yield bytes(pending)
        for line in parts[1:-1]:
            yield OVERLONG if len(line) > limit else line + b"\n"
        tail = parts[-1]
        overlong = len(tail) > limit
        pending = bytearray() if overlong else bytearray(tail)
    if overlong:
        yield OVERLONG
    elif pending:
        yield bytes(pending)


class LineLengthGuard:
    """Checks line lengths of a stream as it passes through, holding nothing but two counters.

    The upload path feeds it every chunk so that an overlong line is refused before the rest of a huge
    upload is written to storage.
    """

    def __init__(self, max_line_bytes: int) -> None:
        self.max_line_bytes = max_line_bytes
        self.line = 1  # 1-based number of the line the next byte belongs to
        self.current = 0  # bytes of that line seen so far (newline excluded)

    def feed(self, chunk: bytes) -> int | None:
        """The number of the first line that exceeds the limit, or None while every line fits."""
        # split + map(len) keep the per-line work in C: this runs on every uploaded byte
        parts = chunk.split(b"\n")
        lengths = [self.current + len(parts[0]), *map(len, parts[1:])]
        if max(lengths) > self.max_line_bytes:
            return self.line + next(i for i, n in enumerate(lengths) if n > self.max_line_bytes)
        self.line += len(parts) - 1
        self.current = lengths[-1]
        return None
