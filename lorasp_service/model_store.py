"""The model store: base-model files copied once onto the shared storage, addressed by content hash.

`models/<sha256>/` holds a registered model's files; the hash covers every file's relative path and
bytes, so two registrations of the same files share one copy and any process can check what it loads.
A copy is built in the storage's temp folder and renamed into place (never half there).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorasp_core.models import ModelUnavailableError
from lorasp_core.models.gguf_cache import dequantise_gguf
from lorasp_service.base_models import BaseModelError
from lorasp_service.storage import BlobStorage

STORE_PREFIX = "models"
CHUNK_BYTES = 8 * 1024 * 1024

# Called with (bytes copied so far, bytes in all).
Progress = Callable[[int, int], None]


class HubDownloadsDisabledError(BaseModelError):
    code = "hub_downloads_disabled"


class UnsupportedSourceError(BaseModelError):
    code = "unsupported_source"


class InvalidGgufError(BaseModelError):
    code = "invalid_gguf"


class StoredModelCorruptError(ModelUnavailableError):
    """A store copy whose bytes are no longer those registered (a job fails on it, never loads it)."""


@dataclass(frozen=True)
class StoredModel:
    key: str
    sha256: str
    bytes: int


def model_files(source: Path) -> list[Path]:
    """The files a model directory is made of, sorted (hidden entries such as `.cache/` left out)."""
    files = []
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if path.is_file():  # follows symlinks: a hub snapshot links into its blob folder
            files.append(path)
    return files


def store_directory(storage: BlobStorage, source: Path, progress: Progress | None = None) -> StoredModel:
    """Copy `source` into the store (hashing while copying); an identical copy already there is reused."""
    files = model_files(source)
    total = sum(path.stat().st_size for path in files)
    digest = hashlib.sha256()
    done = 0
    work = Path(tempfile.mkdtemp(dir=storage.root / ".tmp", prefix="model-"))
    try:
        for path in files:
            relative = path.relative_to(source).as_posix()
            target = work / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("wb") as writer:
                for chunk in _hashed_chunks(digest, source, path):
                    writer.write(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
                writer.flush()
                os.fsync(writer.fileno())
        sha256 = digest.hexdigest()
        key = f"{STORE_PREFIX}/{sha256}"
        final = storage.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            shutil.rmtree(work)
        else:
            os.replace(work, final)
        return StoredModel(key=key, sha256=sha256, bytes=total)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _hashed_chunks(digest: Any, root: Path, path: Path) -> Iterator[bytes]:
    """The file's bytes in chunks, fed to `digest` framed by its relative path (the store's hash)."""
    digest.update(path.relative_to(root).as_posix().encode("utf-8") + b"\0")
    with path.open("rb") as reader:
        while chunk := reader.read(CHUNK_BYTES):
            digest.update(chunk)
            yield chunk
    digest.update(b"\0")


def content_sha256(directory: Path) -> str:
    """The store's hash of a model directory (what `store_directory` names its copy by)."""
    digest = hashlib.sha256()
    for path in model_files(directory):
        for _ in _hashed_chunks(digest, directory, path):
            pass
    return digest.hexdigest()


# Store copies this process has hashed and found intact: (directory, sha256). Checked once per process.
_VERIFIED: set[tuple[str, str]] = set()
_VERIFIED_LOCK = threading.Lock()


def verify_stored(directory: Path, sha256: str) -> None:
    """Raise StoredModelCorruptError unless `directory`'s files still hash to `sha256` (once per process)."""
    seen = (str(directory), sha256)
    with _VERIFIED_LOCK:
        if seen in _VERIFIED:
            return
    actual = content_sha256(directory) if directory.is_dir() else None
    if actual != sha256:
        found = f"its files hash to {actual}" if actual else "the folder is missing"
        raise StoredModelCorruptError(
            f"the model store copy {directory.name} does not match its registration ({found}, expected "
            f"{sha256}); register the model again"
        )
    with _VERIFIED_LOCK:
        _VERIFIED.add(seen)


def dequantise_into_staging(storage: BlobStorage, source: str, name: str) -> Path:
    """`gguf:FILE` -> a float32 Hugging Face folder in the storage's temp folder (the caller stores it).

    Dequantised once, here; every process then loads the stored safetensors copy, never the GGUF."""
    gguf_path = Path(source.removeprefix("gguf:")).expanduser()
    if not gguf_path.is_file():
        raise InvalidGgufError(f"{source!r}: no GGUF file at {gguf_path}")
    target = Path(tempfile.mkdtemp(dir=storage.root / ".tmp", prefix="gguf-"))
    try:
        dequantise_gguf(gguf_path, target, name)
    except ValueError as error:
        shutil.rmtree(target, ignore_errors=True)
        raise InvalidGgufError(str(error)) from error
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return target


def parse_hub_source(source: str) -> tuple[str, str | None]:
    """`hf:ORG/REPO[@REV]` -> (repo id, revision)."""
    ref = source.removeprefix("hf:")
    repo, _, revision = ref.partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise UnsupportedSourceError(f"a hub source is hf:ORG/REPO[@REVISION], got {source!r}")
    return repo, revision or None


def download_from_hub(storage: BlobStorage, source: str, allowed: bool) -> Path:
    """Download a hub snapshot into a temp folder of the storage (the caller stores and deletes it)."""
    if not allowed:
        raise HubDownloadsDisabledError(
            f"{source!r} is a Hugging Face Hub source, but this deployment does not download from the hub; "
            "set LORASP_ALLOW_HUB_DOWNLOADS=true to allow it, or download the model and register its folder"
        )
    repo, revision = parse_hub_source(source)
    from huggingface_hub import snapshot_download  # only when downloads are allowed

    target = Path(tempfile.mkdtemp(dir=storage.root / ".tmp", prefix="hub-"))
    patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "tokenizer*"]
    snapshot_download(repo_id=repo, revision=revision, local_dir=str(target), allow_patterns=patterns)
    return target
