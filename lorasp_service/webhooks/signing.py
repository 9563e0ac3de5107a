"""Secrets, event bodies and signatures, as OpenAI sends webhooks (the Standard Webhooks scheme).

The secret is `whsec_` + base64 of 32 random bytes; the signature header is `v1,<base64 HMAC-SHA256 of
"{webhook-id}.{webhook-timestamp}.{body}">` keyed with the decoded bytes, which is what the official
client's `webhooks.unwrap` / `verify_signature` checks.
"""

from __future__ import annotations

import base64
import json
import secrets
from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook

from lorasp_service.webhooks.models import WebhookEvent

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def _unix(moment: datetime) -> int:
    # SQLite hands back naive datetimes; they are UTC.
    return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp())


def event_body(event: WebhookEvent) -> str:
    """The JSON body of an event; byte-identical on every attempt (a receiver may dedupe by content)."""
    payload = {
        "id": event.id,
        "object": "event",
        "created_at": _unix(event.created_at),
        "type": event.type,
        "data": event.data,
    }
    return json.dumps(payload, separators=(",", ":"), sort_keys=True)


def signed_headers(secret: str, webhook_id: str, body: str, now: datetime | None = None) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt (a fresh timestamp each time)."""
    moment = now or datetime.now(UTC)
    signature = Webhook(secret).sign(msg_id=webhook_id, timestamp=moment, data=body)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
    }
