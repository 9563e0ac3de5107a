"""Per-tenant rate limits: OpenAI's 429 and x-ratelimit-* headers, counted in Redis (shared by API
processes) or in process (the embedded default), requests on every tenant route, tokens on inference."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import openai
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api.main import create_app
from lorasp_service.auth import create_tenant_with_key
from lorasp_service.rate_limits import openai_duration
from lorasp_service.settings import Settings, TenantRateLimits

LLAMA = "tiny-random-llama"
MESSAGES = [{"role": "user", "content": "Say something"}]  # 13 characters: 4 tokens by the estimate
RATE_HEADERS = ("limit", "remaining", "reset")


@contextmanager
def limited_client(settings: Settings, **limits: Any) -> Iterator[TestClient]:
    with TestClient(create_app(settings.model_copy(update=limits))) as client:
        yield client


def openai_client(client: TestClient, headers: dict[str, str]) -> openai.OpenAI:
    key = headers["Authorization"].removeprefix("Bearer ")
    return openai.OpenAI(api_key=key, base_url="http://testserver/v1", http_client=client, max_retries=0)


def remaining(response: Any, kind: str = "requests") -> int:
    return int(response.headers[f"x-ratelimit-remaining-{kind}"])


def test_a_tenant_over_its_requests_gets_openai_429_and_another_tenant_is_unaffected(
    api_settings: Settings, make_tenant: Callable[[], dict[str, str]]
) -> None:
    alice, bob = make_tenant(), make_tenant()
    with limited_client(api_settings, rate_limit_rpm=3) as client:
        assert api_settings.model_copy(update={"rate_limit_rpm": 3}).rate_limit_storage.startswith("redis://")
        alice_client = openai_client(client, alice)
        listed = alice_client.models.with_raw_response.list()
        assert listed.headers["x-ratelimit-limit-requests"] == "3" and remaining(listed) == 2
        assert "x-ratelimit-limit-tokens" not in listed.headers  # tokens are unlimited here
        files = client.get("/v1/files", headers=alice)  # any tenant route counts a request
        assert files.status_code == 200 and remaining(files) == 1
        assert remaining(alice_client.models.with_raw_response.retrieve(LLAMA)) == 0

        with pytest.raises(openai.RateLimitError) as refused:
            alice_client.models.list()
        response = refused.value.response
        assert response.status_code == 429
        assert response.json()["error"] == {
            "message": response.json()["error"]["message"],
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
        assert "Rate limit reached for requests per minute: limit 3" in response.json()["error"]["message"]
        assert 1 <= int(response.headers["Retry-After"]) <= 60
        assert int(response.headers["retry-after-ms"]) > 0
        assert response.headers["x-ratelimit-remaining-requests"] == "0"
        assert response.headers["x-ratelimit-reset-requests"].endswith("s")
        assert client.post("/v1/fine_tuning/jobs", headers=alice, json={}).status_code == 429

        bobs = client.get("/v1/models", headers=bob)
        assert bobs.status_code == 200 and remaining(bobs) == 2
        assert client.get("/health").status_code == 200  # unauthenticated routes are not limited
        unknown = client.get("/v1/models", headers={"Authorization": "Bearer sk-lorasp-unknown"})
        assert unknown.status_code == 401


def test_the_redis_limiter_is_shared_by_two_api_processes(
    api_settings: Settings, make_tenant: Callable[[], dict[str, str]]
) -> None:
    tenant = make_tenant()
    with (
        limited_client(api_settings, rate_limit_rpm=4) as first,
        limited_client(api_settings, rate_limit_rpm=4) as second,
    ):
        assert first.app is not second.app
        assert remaining(first.get("/v1/files", headers=tenant)) == 3
        assert remaining(second.get("/v1/files", headers=tenant)) == 2
        assert remaining(first.get("/v1/models", headers=tenant)) == 1
        assert remaining(second.get("/v1/models", headers=tenant)) == 0
        assert first.get("/v1/files", headers=tenant).status_code == 429
        assert second.get("/v1/files", headers=tenant).status_code == 429


def test_the_in_process_limiter_works_without_redis(
    api_settings: Settings, make_tenant: Callable[[], dict[str, str]]
) -> None:
    """The embedded default's broker (no Redis): counters live in each process, and are not shared."""
    tenant = make_tenant()
    no_redis = api_settings.model_copy(update={"broker_url": "filesystem://"})
    assert no_redis.model_copy(update={"rate_limit_rpm": 2}).rate_limit_storage == "memory://"
    with (
        limited_client(no_redis, rate_limit_rpm=2) as first,
        limited_client(no_redis, rate_limit_rpm=2) as second,
    ):
        assert remaining(first.get("/v1/files", headers=tenant)) == 1
        assert remaining(first.get("/v1/files", headers=tenant)) == 0
        refused = first.get("/v1/files", headers=tenant)
        assert refused.status_code == 429 and refused.json()["error"]["type"] == "requests"
        assert remaining(second.get("/v1/files", headers=tenant)) == 1  # another process, its own count


def test_a_tenant_named_in_the_settings_gets_its_own_limits(
    api_settings: Settings, db_engine: sa.Engine, make_tenant: Callable[[], dict[str, str]]
) -> None:
    """LORASP_RATE_LIMIT_TENANTS overrides the defaults by tenant name; an unset kind keeps the default,
    0 lifts a limit; tenants not named keep the deployment's limits."""
    name = f"vip-{secrets.token_hex(4)}"
    with Session(db_engine) as session:
        _, key = create_tenant_with_key(session, name)
        session.commit()
    vip, ordinary = {"Authorization": f"Bearer {key}"}, make_tenant()
    overrides = {name: TenantRateLimits(rpm=5)}
    with limited_client(
        api_settings, rate_limit_rpm=1, rate_limit_tpm=50, rate_limit_tenants=overrides
    ) as client:
        first = client.get("/v1/files", headers=vip)
        assert first.headers["x-ratelimit-limit-requests"] == "5" and remaining(first) == 4
        body = {"model": LLAMA, "prompt": "Hi", "max_tokens": 60}  # 61 tokens: over the default 50 tpm
        too_large = client.post("/v1/completions", headers=vip, json=body)
        assert too_large.status_code == 429 and too_large.json()["error"]["type"] == "tokens"
        assert client.get("/v1/files", headers=ordinary).headers["x-ratelimit-limit-requests"] == "1"
        assert client.get("/v1/files", headers=ordinary).status_code == 429  # the default: 1 per minute
        assert client.get("/v1/files", headers=vip).status_code == 200

    lifted = {name: TenantRateLimits(rpm=0, tpm=0)}
    with limited_client(api_settings, rate_limit_rpm=1, rate_limit_tenants=lifted) as client:
        for _ in range(3):
            response = client.get("/v1/files", headers=vip)
            assert response.status_code == 200 and "x-ratelimit-limit-requests" not in response.headers


def test_tenant_overrides_parse_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "LORASP_RATE_LIMIT_TENANTS", '{"acme": {"rpm": 600, "tpm": 200000}, "batch": {"rpm": 0}}'
    )
    settings = Settings()
    assert settings.rate_limit_tenants["acme"] == TenantRateLimits(rpm=600, tpm=200000)
    assert settings.rate_limit_tenants["batch"].tpm is None
    monkeypatch.setenv("LORASP_RATE_LIMIT_TENANTS", '{"acme": {"rpm": -1}}')
    with pytest.raises(ValueError, match="rpm"):
        Settings()


def test_an_unreachable_redis_fails_open(
    api_settings: Settings, make_tenant: Callable[[], dict[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    tenant = make_tenant()
    with limited_client(
        api_settings, rate_limit_rpm=1, rate_limit_storage_url="redis://127.0.0.1:1/0"
    ) as client:
        for _ in range(2):  # over the limit of 1, yet served: nothing could count it
            response = client.get("/v1/files", headers=tenant)
            assert response.status_code == 200 and "x-ratelimit-limit-requests" not in response.headers
    assert "rate limits not applied (storage unavailable)" in caplog.text


def test_inference_charges_the_estimated_tokens_up_front(
    api_settings: Settings, make_tenant: Callable[[], dict[str, str]]
) -> None:
    tenant = make_tenant()
    with limited_client(api_settings, rate_limit_rpm=100, rate_limit_tpm=100) as client:
        chat = openai_client(client, tenant).chat.completions
        invalid = client.post("/v1/chat/completions", headers=tenant, json={"model": LLAMA})
        assert invalid.status_code == 400  # refused for its body: charges nothing (99 requests left below)
        first = chat.with_raw_response.create(model=LLAMA, messages=MESSAGES, max_tokens=12, temperature=0)
        assert first.parse().choices[0].message.content is not None
        # 4 prompt tokens (13 characters / 4, rounded up) + max_tokens 12 = 16 of 100.
        assert first.headers["x-ratelimit-limit-tokens"] == "100" and remaining(first, "tokens") == 84
        assert remaining(first) == 99

        with pytest.raises(openai.RateLimitError) as too_large:
            chat.create(model=LLAMA, messages=MESSAGES, max_tokens=500)
        error = too_large.value.response.json()["error"]
        assert error["type"] == "tokens" and error["code"] == "rate_limit_exceeded"
        assert error["message"].startswith("Request too large: it needs 504 tokens")
        assert too_large.value.response.headers["Retry-After"] == "60"

        # A streamed answer carries the headers too; then 84 - (4 + 80) = 0 tokens are left.
        body = {"model": LLAMA, "messages": MESSAGES, "max_tokens": 80, "temperature": 0, "stream": True}
        with client.stream("POST", "/v1/chat/completions", headers=tenant, json=body) as streamed:
            assert streamed.status_code == 200 and remaining(streamed, "tokens") == 0
            assert "data: [DONE]" in streamed.read().decode()

        completion = {"model": LLAMA, "prompt": "Hi", "max_tokens": 1}
        refused = client.post("/v1/completions", headers=tenant, json=completion)
        assert refused.status_code == 429 and refused.json()["error"]["type"] == "tokens"
        assert refused.headers["x-ratelimit-remaining-tokens"] == "0"
        # Refused for its tokens, the request took no request: 100 - 2 requests charged so far.
        assert remaining(client.get("/v1/files", headers=tenant)) == 97


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.0201, "21ms"), (1.0, "1s"), (59.5, "59.5s"), (61.25, "1m1.25s"), (360.0, "6m0s"), (3661.0, "1h1m1s")],
)
def test_reset_durations_are_written_as_openai_writes_them(seconds: float, text: str) -> None:
    assert openai_duration(seconds) == text
