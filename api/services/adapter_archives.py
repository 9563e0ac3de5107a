"""Safe unpacking of an uploaded adapter archive (.tar.gz / .tgz / .tar / .zip) into a fresh directory.

Nothing from the archive is trusted: member names are checked (no absolute paths, no `..`, no drive
letters or backslashes), only regular files and directories are accepted (symlinks, hard links and
devices are refused), the number of members is capped and the bytes actually written are counted
against `max_unpacked_bytes` while copying, so a zip/tar bomb stops at the cap whatever it declares.
Files are written by us with exclusive create, never by tarfile/zipfile's extract.
"""

from __future__ import annotations

import stat
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO

MAX_MEMBERS = 64
COPY_CHUNK_BYTES = 1 << 20
REQUIRED_FILES = ("adapter_config.json", "adapter_model.safetensors")


class UnsafeArchiveError(ValueError):
    """The archive is malformed, malicious or too large; the message says which member and why."""


def _safe_relative(name: str) -> PurePosixPath:
    if not name or "\\" in name or "\x00" in name:
        raise UnsafeArchiveError(f"archive member {name!r} has an invalid name")
    path = PurePosixPath(name)
    if path.is_absolute() or (path.parts and ":" in path.parts[0]):
        raise UnsafeArchiveError(f"archive member {name!r} has an absolute path")
    if ".." in path.parts:
        raise UnsafeArchiveError(f"archive member {name!r} points outside the archive ('..')")
    parts = [part for part in path.parts if part not in {"", "."}]
    if not parts:
        raise UnsafeArchiveError(f"archive member {name!r} has an empty name")
    return PurePosixPath(*parts)


class _Budget:
    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0

    def spend(self, amount: int) -> None:
        self.used += amount
        if self.used > self.limit:
            raise UnsafeArchiveError(f"archive unpacks to more than the limit of {self.limit} bytes")


def _write(dest: Path, relative: PurePosixPath, source: IO[bytes], budget: _Budget) -> None:
    target = dest.joinpath(*relative.parts)
    target.parent.mkdir(parents=True, exist_ok=True)
    if dest.resolve() not in target.resolve().parents:
        raise UnsafeArchiveError(f"archive member {str(relative)!r} points outside the archive")
    try:
        with target.open("xb") as out:
            while chunk := source.read(COPY_CHUNK_BYTES):
                budget.spend(len(chunk))
                out.write(chunk)
    except FileExistsError as exc:
        raise UnsafeArchiveError(f"archive member {str(relative)!r} appears twice") from exc


def _tar_members(archive: tarfile.TarFile) -> Iterator[tuple[tarfile.TarInfo, PurePosixPath]]:
    for count, member in enumerate(archive, start=1):
        if count > MAX_MEMBERS:
            raise UnsafeArchiveError(f"archive has more than {MAX_MEMBERS} members")
        relative = _safe_relative(member.name)
        if member.issym() or member.islnk():
            raise UnsafeArchiveError(f"archive member {member.name!r} is a link; only regular files allowed")
        if not (member.isfile() or member.isdir()):
            raise UnsafeArchiveError(f"archive member {member.name!r} is not a regular file")
        yield member, relative


def _unpack_tar(archive_path: Path, dest: Path, budget: _Budget) -> None:
    try:
        with tarfile.open(archive_path, "r:*") as archive:
            for member, relative in _tar_members(archive):
                if member.isdir():
                    continue
                source = archive.extractfile(member)
                if source is None:
                    raise UnsafeArchiveError(f"archive member {member.name!r} cannot be read")
                with source:
                    _write(dest, relative, source, budget)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise UnsafeArchiveError(f"not a readable tar archive: {exc}") from exc


def _unpack_zip(archive_path: Path, dest: Path, budget: _Budget) -> None:
    try:
        with zipfile.ZipFile(archive_path) as archive:
            infos = archive.infolist()
            if len(infos) > MAX_MEMBERS:
                raise UnsafeArchiveError(f"archive has more than {MAX_MEMBERS} members")
            for info in infos:
                relative = _safe_relative(info.filename)
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise UnsafeArchiveError(
                        f"archive member {info.filename!r} is a link; only regular files allowed"
                    )
                if info.is_dir():
                    continue
                if stat.S_IFMT(mode) and not stat.S_ISREG(mode):  # no type bits: a plain file (writestr)
                    raise UnsafeArchiveError(f"archive member {info.filename!r} is not a regular file")
                if info.flag_bits & 0x1:
                    raise UnsafeArchiveError(f"archive member {info.filename!r} is encrypted")
                with archive.open(info) as source:
                    _write(dest, relative, source, budget)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, OSError) as exc:
        raise UnsafeArchiveError(f"not a readable zip archive: {exc}") from exc


def unpack_adapter_archive(archive_path: Path, dest: Path, *, max_unpacked_bytes: int) -> Path:
    """Unpack into the empty directory `dest`; returns the adapter directory inside it.

    The adapter files may sit at the archive root or inside one top-level folder (`my-adapter/...`).
    """
    budget = _Budget(max_unpacked_bytes)
    if zipfile.is_zipfile(archive_path):
        _unpack_zip(archive_path, dest, budget)
    elif tarfile.is_tarfile(archive_path):
        _unpack_tar(archive_path, dest, budget)
    else:
        raise UnsafeArchiveError("the file is neither a .tar.gz nor a .zip archive")
    root = dest
    entries = [entry for entry in dest.iterdir() if entry.name != "__MACOSX"]
    if not (dest / REQUIRED_FILES[0]).exists() and len(entries) == 1 and entries[0].is_dir():
        root = entries[0]
    missing = [name for name in REQUIRED_FILES if not (root / name).is_file()]
    if missing:
        raise UnsafeArchiveError(
            f"the archive has no {' and no '.join(missing)} at its root (a PEFT adapter directory is needed)"
        )
    return root
