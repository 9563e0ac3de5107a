"""The webhook SSRF guard and the request an attempt really makes (no servers needed: DNS is faked and
the HTTP transport is httpx's MockTransport)."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import httpx
import pytest

from lorasp_service.settings import Settings
from lorasp_service.webhooks import urls
from lorasp_service.webhooks.delivery import retry_delay, send_once
from lorasp_service.webhooks.signing import new_secret

SECRET = new_secret()


def fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> None:
    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))
            for ip in answers[host]
        ]

    monkeypatch.setattr(urls.socket, "getaddrinfo", getaddrinfo)


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("1.1.1.1", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.0.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("224.0.0.251", False),
        ("240.0.0.1", False),
        ("::1", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("::", False),
        ("::ffff:10.0.0.1", False),
        ("::ffff:8.8.8.8", True),
    ],
)
def test_which_addresses_are_public(address: str, public: bool) -> None:
    assert urls.is_public_address(ipaddress.ip_address(address)) is public


def test_every_resolved_address_must_be_public(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dns(monkeypatch, {"mixed.example": ["93.184.215.14", "10.0.0.7"], "ok.example": ["93.184.215.14"]})
    with pytest.raises(urls.WebhookURLError, match="10.0.0.7"):
        urls.check_webhook_url("https://mixed.example/hook", allow_private_networks=False)
    checked = urls.check_webhook_url("https://ok.example:8443/hook", allow_private_networks=False)
    assert (checked.host, checked.port, str(checked.address)) == ("ok.example", 8443, "93.184.215.14")
    allowed = urls.check_webhook_url("https://mixed.example/hook", allow_private_networks=True)
    assert str(allowed.address) == "93.184.215.14"
    with pytest.raises(urls.UnresolvableHostError):
        urls.check_webhook_url("https://nowhere.example/hook", allow_private_networks=True)


def test_an_attempt_connects_to_the_checked_address_and_keeps_the_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_dns(monkeypatch, {"hooks.example": ["93.184.215.14"]})
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    result = send_once(
        Settings(),
        "https://hooks.example:8443/in?x=1",
        SECRET,
        "wh_1",
        '{"a":1}',
        transport=httpx.MockTransport(answer),
    )
    assert result.ok and result.status_code == 204 and result.error is None
    (request,) = seen
    assert request.url.host == "93.184.215.14" and request.url.port == 8443
    assert request.url.raw_path == b"/in?x=1"
    assert request.headers["host"] == "hooks.example:8443"
    assert request.extensions["sni_hostname"] == "hooks.example"  # TLS name and certificate check
    assert request.headers["webhook-id"] == "wh_1" and request.content == b'{"a":1}'


def test_dns_rebinding_to_a_private_address_is_refused_at_delivery(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dns(monkeypatch, {"hooks.example": ["169.254.169.254"]})
    transport = httpx.MockTransport(lambda request: pytest.fail("no request may be sent"))
    result = send_once(Settings(), "http://hooks.example/in", SECRET, "wh_1", "{}", transport=transport)
    assert not result.ok and not result.retryable and result.error is not None
    assert result.error.startswith("refused:") and "169.254.169.254" in result.error


def test_backoff_doubles_and_is_capped() -> None:
    settings = Settings(webhook_retry_base_seconds=1.0, webhook_retry_max_delay_seconds=10.0)
    assert [retry_delay(settings, attempt) for attempt in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
