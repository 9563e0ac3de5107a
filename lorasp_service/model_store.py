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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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
            digest.update(relative.encode("utf-8") + b"\0")
            target = work / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            with path.open("rb") as reader, target.open("wb") as writer:
                while chunk := reader.read(CHUNK_BYTES):
                    digest.update(chunk)
                    writer.write(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
                writer.flush()
                os.fsync(writer.fileno())
            digest.update(b"\0")
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
