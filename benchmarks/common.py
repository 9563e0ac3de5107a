"""Shared benchmark helpers: machine description, SST-2 loading, per-process measurements."""

from __future__ import annotations

import csv
import json
import os
import platform
import random
import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class LabelledSentence:
    text: str
    label: int


def read_sst2_tsv(path: Path) -> list[LabelledSentence]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [LabelledSentence(row["sentence"].strip(), int(row["label"])) for row in reader]


def sample_train(rows: list[LabelledSentence], size: int, seed: int = 1234) -> list[LabelledSentence]:
    """The same `size` training examples for every method and seed (fixed sampling seed)."""
    if size >= len(rows):
        return list(rows)
    return random.Random(seed).sample(rows, size)


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux: the peak of this whole process (one run per process).
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def process_cpu_seconds() -> float:
    """CPU time (user + system) this process has used: on a shared machine it moves far less with the
    load than wall time, so divided by the thread count it estimates the wall time alone."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine_description() -> dict[str, Any]:
    import torch

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_gib, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }


def run_in_subprocess(module: str, spec: dict[str, Any], timeout_s: float = 3600) -> dict[str, Any]:
    """Run one benchmark case in a fresh interpreter so peak RSS and warm caches are its own."""
    completed = subprocess.run(
        [sys.executable, "-m", module, "--run-one", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"{module} {spec} failed:\n{completed.stderr[-4000:]}")
    last_line = completed.stdout.strip().splitlines()[-1]
    result: dict[str, Any] = json.loads(last_line)
    return result
