"""Blob storage in a local directory. Every write is atomic: temp file/dir, fsync, rename."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, BinaryIO, cast


class BlobTooLargeError(ValueError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"upload exceeds the limit of {limit} bytes")
        self.limit = limit


class _HashingWriter:
    def __init__(self, out: BinaryIO, max_bytes: int | None) -> None:
        self.out, self.max_bytes = out, max_bytes
        self.size, self.digest = 0, hashlib.sha256()

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.max_bytes is not None and self.size > self.max_bytes:
            raise BlobTooLargeError(self.max_bytes)
        self.digest.update(chunk)
        self.out.write(chunk)


class BlobStorage:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / ".tmp").mkdir(exist_ok=True)

    def path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"storage key escapes the storage root: {key!r}")
        return path

    def _tmp(self, suffix: str = "") -> Path:
        fd, name = tempfile.mkstemp(dir=self.root / ".tmp", suffix=suffix)
        os.close(fd)
        return Path(name)

    def _commit(self, tmp: Path, key: str) -> Path:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, target)
        return target

    @contextmanager
    def _hashed_writer(self, key: str, max_bytes: int | None = None) -> Iterator[_HashingWriter]:
        """A writer that hashes, counts and enforces `max_bytes`; the file lands at `key` atomically
        when the block succeeds, and nothing is left when it fails."""
        tmp = self._tmp()
        try:
            with tmp.open("wb") as out:
                writer = _HashingWriter(out, max_bytes)
                yield writer
                out.flush()
                os.fsync(out.fileno())
            self._commit(tmp, key)
        finally:
            tmp.unlink(missing_ok=True)

    async def write_stream(self, key: str, chunks: AsyncIterator[bytes], max_bytes: int) -> tuple[int, str]:
        """Stream chunks to `key` in constant memory; returns (size, sha256). Nothing is left on error."""
        with self._hashed_writer(key, max_bytes) as writer:
            async for chunk in chunks:
                writer.write(chunk)
        return writer.size, writer.digest.hexdigest()

    def write_bytes(self, key: str, data: bytes | Iterable[bytes]) -> tuple[int, str]:
        with self._hashed_writer(key) as writer:
            for chunk in [data] if isinstance(data, bytes) else data:
                writer.write(chunk)
        return writer.size, writer.digest.hexdigest()

    def put_dir(self, key: str, source: Path) -> Path:
        """Copy a directory in under `key` atomically (copy to a temp dir, then rename)."""
        tmp = Path(tempfile.mkdtemp(dir=self.root / ".tmp"))
        try:
            shutil.copytree(source, tmp, dirs_exist_ok=True)
            target = self.path(key)
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
            return target
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def archive_dir(self, dir_key: str, archive_key: str) -> tuple[int, str]:
        """Write `dir_key` as a .tar.gz at `archive_key` (files at the archive root)."""
        source = self.path(dir_key)
        # Streamed through the hashing writer: written once, hashed on the way (the tar closes first).
        with (
            self._hashed_writer(archive_key) as writer,
            tarfile.open(fileobj=cast(IO[bytes], writer), mode="w|gz") as tar,
        ):
            for item in sorted(source.iterdir()):
                tar.add(item, arcname=item.name)
        return writer.size, writer.digest.hexdigest()

    def delete(self, key: str) -> None:
        path = self.path(key)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
