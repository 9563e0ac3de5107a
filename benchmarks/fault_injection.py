"""Fault-injection figures: `python -m benchmarks.fault_injection`.

Runs the fault-injection end-to-end test (tests/e2e/test_fault_injection.py: jobs on PostgreSQL + Redis
with two workers, a worker SIGKILLed mid-job several times) and has it write its figures (jobs, kills,
per-kill take-over and recovery times) to benchmarks/results/fault_injection.json and .md. Needs the
servers the tests use (LORASP_TEST_DATABASE_URL, LORASP_TEST_BROKER_URL).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"


def main() -> int:
    env = dict(os.environ, LORASP_FAULT_INJECTION_RESULTS=str(RESULTS_DIR), LORASP_REQUIRE_SERVICES="1")
    env.setdefault("OMP_NUM_THREADS", "1")
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "tests/e2e/test_fault_injection.py",
    ]
    return subprocess.run(command, cwd=REPO_ROOT, env=env, check=False).returncode


if __name__ == "__main__":
    raise SystemExit(main())
