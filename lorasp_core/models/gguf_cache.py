"""GGUF causal LMs dequantised into plain safetensors folders (`dequantise_gguf`), and the core's
cache of the packaged SmolLM2 built with it (for library use without the service, whose model store
holds the same folder).

Dequantising the Q4_1 GGUF takes ~15 s of CPU; reading the cached float32 checkpoint takes ~1 s.
The cache directory appears atomically (built in a temporary sibling, then `os.replace`d into place),
and concurrent first loads (API and worker processes) are serialised with an `fcntl.flock` on a lock
file, so exactly one process dequantises and the others then read its result.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GgufConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from lorasp_core.models.catalog import SMOLLM2_GGUF_FILE, SMOLLM2_NAME, CatalogEntry, packaged_file

CACHE_MARKER_FILE = "lorasp_cache.json"
CACHE_FORMAT_VERSION = 1


def cached_smollm2(entry: CatalogEntry, cache_root: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load SmolLM2 from `cache_root/<name>`, building that cache from the GGUF first if needed."""
    gguf_path = packaged_file(entry, SMOLLM2_GGUF_FILE)
    expected_marker = _marker_for(gguf_path)
    cache_path = cache_root / entry.name
    if not _cache_is_valid(cache_path, expected_marker):
        cache_root.mkdir(parents=True, exist_ok=True)
        with _exclusive_lock(cache_root / f".{entry.name}.lock"):
            if not _cache_is_valid(cache_path, expected_marker):  # another process may have built it
                _build_cache(gguf_path, cache_path, expected_marker)
    return _load_cache(cache_path)


def smollm2_tokenizer(entry: CatalogEntry, cache_root: Path) -> PreTrainedTokenizerBase:
    """SmolLM2's tokenizer alone (no weights): from the cache when built, else straight from the GGUF."""
    gguf_path = packaged_file(entry, SMOLLM2_GGUF_FILE)
    cache_path = cache_root / entry.name
    if _cache_is_valid(cache_path, _marker_for(gguf_path)):
        tokenizer = AutoTokenizer.from_pretrained(str(cache_path), local_files_only=True)
    else:
        tokenizer = AutoTokenizer.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, local_files_only=True
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _marker_for(gguf_path: Path) -> dict[str, Any]:
    """What the cache was built from; a different GGUF (package upgrade) invalidates it."""
    return {
        "format": CACHE_FORMAT_VERSION,
        "model": SMOLLM2_NAME,
        "source_file": gguf_path.name,
        "source_bytes": gguf_path.stat().st_size,
    }


def _cache_is_valid(cache_path: Path, expected_marker: dict[str, Any]) -> bool:
    try:
        marker = json.loads((cache_path / CACHE_MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and all(marker.get(k) == v for k, v in expected_marker.items())


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a+b") as lock_file:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)


def _build_cache(gguf_path: Path, cache_path: Path, marker: dict[str, Any]) -> None:
    """Dequantise the GGUF into a temporary directory, then move it into place in one step."""
    staging = Path(tempfile.mkdtemp(prefix=f".{cache_path.name}.tmp-", dir=cache_path.parent))
    try:
        dequantise_gguf(gguf_path, staging, SMOLLM2_NAME)
        (staging / CACHE_MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        _make_readable_by_all(staging)
        _replace_directory(staging, cache_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def dequantise_gguf(gguf_path: Path, target: Path, name: str) -> None:
    """Write the GGUF causal LM as a float32 safetensors directory with its tokenizer into `target`.

    The one dequantisation: the core's SmolLM2 cache and the service's model store (gguf:FILE
    registrations, the catalog SmolLM2) both build their folders with it. `name` becomes
    `config.name_or_path`. ValueError when the GGUF is not a chat-ready causal LM transformers reads.
    """
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, local_files_only=True
        )
        # dequantize=True: plain float32 nn.Linear weights (LoRA-SP wraps them), even where the optional
        # `kernels` package would let transformers keep the blocks packed.
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent),
            gguf_file=gguf_path.name,
            quantization_config=GgufConfig(gguf_file=gguf_path.name, dequantize=True),
            local_files_only=True,
            dtype=torch.float32,
        )
    except (OSError, KeyError, ValueError, RuntimeError) as error:  # transformers' GGUF reader raises these
        raise ValueError(f"{gguf_path.name} cannot be read as a GGUF causal LM: {error}") from error
    _prepare_tokenizer(tokenizer, model.config.max_position_embeddings, gguf_path.name)
    _forget_gguf_origin(model)
    model.config.name_or_path = name
    # Tied embeddings (SmolLM2's lm_head is embed_tokens): save_pretrained stores the shared tensor once
    # and from_pretrained re-ties it (config.tie_word_embeddings stays True).
    model.save_pretrained(str(target), safe_serialization=True)
    tokenizer.save_pretrained(str(target))


def _forget_gguf_origin(model: PreTrainedModel) -> None:
    """Turn the dequantised GGUF model into an ordinary one that save_pretrained accepts.

    Its weights are already dense float32; only the quantizer bookkeeping remains, which would make
    save_pretrained refuse and the cached config ask for the GGUF quantizer again on reload.
    """
    packed = [
        name for name, module in model.named_modules() if type(module).__name__.lower().startswith("gguf")
    ]
    if packed:
        raise RuntimeError(f"GGUF weights were left packed in {packed[:3]}; expected a dequantised model")
    model.hf_quantizer = None  # type: ignore[assignment]  # declared HfQuantizer | None in transformers
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _make_readable_by_all(directory: Path) -> None:
    """mkdtemp makes the directory private (0700); API and worker may run as different users."""
    directory.chmod(0o755)
    for child in directory.iterdir():
        child.chmod(0o644)


def _replace_directory(staging: Path, cache_path: Path) -> None:
    """os.replace cannot overwrite a non-empty directory: move a stale cache aside first."""
    if cache_path.exists():
        stale = Path(tempfile.mkdtemp(prefix=f".{cache_path.name}.stale-", dir=cache_path.parent))
        os.replace(cache_path, stale / cache_path.name)
        os.replace(staging, cache_path)
        shutil.rmtree(stale, ignore_errors=True)
    else:
        os.replace(staging, cache_path)


def _prepare_tokenizer(tokenizer: PreTrainedTokenizerBase, max_positions: int, file_name: str) -> None:
    """A chat GGUF carries its template (SmolLM2's ChatML) and pad token; refuse one without a template."""
    tokenizer.model_max_length = max_positions  # the GGUF leaves transformers' "unlimited" sentinel
    if not tokenizer.chat_template:
        raise ValueError(f"{file_name} produced a tokenizer without a chat template")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def _load_cache(cache_path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    tokenizer = AutoTokenizer.from_pretrained(str(cache_path), local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(cache_path), local_files_only=True, dtype=torch.float32)
    return model, tokenizer
