"""Child processes started in a session of their own, so stopping one stops everything it started.

Used by the inference-tier end-to-end test and benchmarks.serving_tier, which both run `lorasp serve`
and `lorasp inference` processes with their output in a log file.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path


def spawn_logged(
    command: list[str], env: dict[str, str], log_path: Path, cwd: Path
) -> subprocess.Popen[bytes]:
    """`command` in a new session with stdout and stderr both written to `log_path`."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop_group(process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM the process's group, then SIGKILL it if it has not exited within `timeout` seconds."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
