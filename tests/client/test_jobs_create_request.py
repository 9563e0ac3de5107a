"""`lorasp jobs create` builds the body the API takes, checked on the wire: the CLI runs against a small
local HTTP server that records each request and answers like the jobs route (no lorasp server needed,
so a method the API does not offer yet, such as dpo, is still tested for its shape)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from lorasp_service.cli import main

JOB = {"id": "ftjob-recorded", "object": "fine_tuning.job", "status": "queued", "model": "tiny-random-llama"}


@dataclass
class Recorded:
    base_url: str
    requests: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)


@pytest.fixture()
def api() -> Iterator[Recorded]:
    recorded = Recorded(base_url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            recorded.requests.append((self.path, self.headers.get("Authorization", ""), body))
            answer = json.dumps(JOB).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *_: Any) -> None:  # keep the test output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    recorded.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield recorded
    server.shutdown()
    server.server_close()


def create(api: Recorded, *flags: str) -> int:
    base = ["jobs", "create", "--base-url", api.base_url, "--api-key", "sk-test"]
    return main([*base, "--model", "tiny-random-llama", "--file", "file-abc", *flags])


def test_method_dpo_sends_the_dpo_block_with_beta(api: Recorded, capsys: pytest.CaptureFixture[str]) -> None:
    status = create(api, "--method", "dpo", "--beta", "0.25", "--epochs", "2", "--batch-size", "4")
    assert status == 0, capsys.readouterr().err
    assert capsys.readouterr().out.strip() == JOB["id"]
    ((path, authorization, body),) = api.requests
    assert path == "/v1/fine_tuning/jobs" and authorization == "Bearer sk-test"
    assert body == {
        "model": "tiny-random-llama",
        "training_file": "file-abc",
        "method": {"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 2, "batch_size": 4, "beta": 0.25}}},
    }


def test_beta_alone_picks_dpo_and_method_alone_sends_empty_hyperparameters(api: Recorded) -> None:
    assert create(api, "--beta", "0.1") == 0
    assert create(api, "--method", "dpo") == 0
    assert [body["method"] for _, _, body in api.requests] == [
        {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1}}},
        {"type": "dpo", "dpo": {"hyperparameters": {}}},
    ]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--method", "supervised", "--beta", "0.1"), "--beta is a dpo setting: use --method dpo"),
        (("--method", "dpo", "--rank", "8"), "--rank is a lorasp setting: use --method lorasp"),
        (("--beta", "0.1", "--rank", "8"), "--beta and --rank belong to different methods"),
    ],
)
def test_a_setting_of_another_method_is_refused_before_any_request(
    api: Recorded, capsys: pytest.CaptureFixture[str], flags: tuple[str, ...], message: str
) -> None:
    assert create(api, *flags) == 1
    assert message in capsys.readouterr().err
    assert api.requests == []


def test_processes_picks_lorasp_and_reaches_the_hyperparameters(api: Recorded) -> None:
    assert create(api, "--processes", "2", "--batch-size", "8") == 0
    ((_, _, body),) = api.requests
    assert body["method"] == {
        "type": "lorasp",
        "lorasp": {"hyperparameters": {"batch_size": 8, "processes": 2}},
    }
