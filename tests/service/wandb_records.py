"""Reads a W&B offline run's transaction log (`run-<id>.wandb`): the records wandb wrote, as protobufs.

The file is a 7-byte W&B header followed by LevelDB's log format (32 KiB blocks of CRC-checked chunks);
wandb keeps it stable because `wandb sync` uploads offline runs written by older versions. wandb 0.2x
writes it from its Go core and no longer ships a Python reader, hence this one.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

FILE_HEADER = struct.Struct("<4sHB")  # b":W&B", magic 0xBEE1, version 0
CHUNK_HEADER = struct.Struct("<IHB")  # crc32 of (type byte + data), data length, type
BLOCK_BYTES = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list[Any]:
    data = path.read_bytes()
    ident, magic, version = FILE_HEADER.unpack_from(data, 0)
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), (ident, magic, version)
    position, pending, found = FILE_HEADER.size, b"", []
    while position + CHUNK_HEADER.size <= len(data):
        left_in_block = BLOCK_BYTES - position % BLOCK_BYTES
        if left_in_block < CHUNK_HEADER.size:  # a block's tail too short for a header is padding
            position += left_in_block
            continue
        checksum, length, kind = CHUNK_HEADER.unpack_from(data, position)
        chunk = data[position + CHUNK_HEADER.size : position + CHUNK_HEADER.size + length]
        assert zlib.crc32(bytes([kind]) + chunk) == checksum, f"corrupt chunk at byte {position}"
        position += CHUNK_HEADER.size + length
        if kind in (FULL, FIRST):
            pending = chunk
        elif kind in (MIDDLE, LAST):
            pending += chunk
        else:
            raise AssertionError(f"unknown chunk type {kind} at byte {position}")
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            found.append(record)
    return found


def finished_records(path: Path, timeout: float = 15.0) -> list[Any]:
    """The records of a finished run: `run.finish()` returns before wandb's core process has flushed an
    offline run's log, so wait until its last record (the exit record) is on disk."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = records(path)
            if of_type(found, "exit"):
                return found
        except (AssertionError, struct.error):  # a chunk still being written
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"{path.name} has no exit record after {timeout} s")
        time.sleep(0.05)


def of_type(found: list[Any], kind: str) -> list[Any]:
    return [getattr(record, kind) for record in found if record.WhichOneof("record_type") == kind]


def history(found: list[Any]) -> list[dict[str, Any]]:
    """Each `run.log` call's values by key (`_step` is the step it was logged at)."""
    return [
        {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in entry.item}
        for entry in of_type(found, "history")
    ]


def config(found: list[Any]) -> dict[str, Any]:
    """The run's config (in its run record, and any config records after it), later updates winning."""
    merged: dict[str, Any] = {}
    updates = [run.config for run in of_type(found, "run")] + of_type(found, "config")
    for entry in updates:
        for item in entry.update:
            merged[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return merged


def summary(found: list[Any]) -> dict[str, Any]:
    """The run's summary as its summary records set it, later updates winning."""
    merged: dict[str, Any] = {}
    for entry in of_type(found, "summary"):
        for item in entry.update:
            merged[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return merged
