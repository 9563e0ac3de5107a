"""API keys: created once and shown once, stored as sha256 hashes, looked up per request.

Helpers here never commit: the caller (an API service, the CLI) owns the transaction.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime

from sqlalchemy import BindParameter, ColumnElement, and_, bindparam, select
from sqlalchemy.orm import Session

from lorasp_service.ids import new_id
from lorasp_service.orm import ApiKey, Tenant

API_KEY_PREFIX = "sk-lorasp-"
# How much of a key is kept in clear (to tell keys apart in listings); fits ApiKey.key_prefix.
SHOWN_KEY_CHARS = 14


def active_key_with_hash(key_hash: BindParameter[str]) -> ColumnElement[bool]:
    """The one rule for a valid key, in every lookup: its hash matches and it is not revoked."""
    return and_(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))


# The per-request lookup, built once: one indexed query (unique key_hash) for key and tenant together,
# not a second lazy load of `ApiKey.tenant`, and no statement construction on every request.
_TENANT_FOR_HASH = (
    select(Tenant)
    .join(ApiKey, ApiKey.tenant_id == Tenant.id)
    .where(active_key_with_hash(bindparam("key_hash")))
)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def generate_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def get_or_create_tenant(session: Session, tenant_name: str) -> Tenant:
    tenant = session.scalars(select(Tenant).where(Tenant.name == tenant_name)).one_or_none()
    if tenant is None:
        tenant = Tenant(id=new_id("tenant"), name=tenant_name)
        session.add(tenant)
        session.flush()
    return tenant


def create_api_key(session: Session, tenant: Tenant, *, admin: bool = False) -> str:
    """Add a new key for `tenant` (`admin`: it may also manage the deployment); returns the plaintext key
    (the only time it exists)."""
    key = generate_api_key()
    session.add(
        ApiKey(
            id=new_id("key"),
            tenant_id=tenant.id,
            key_hash=hash_api_key(key),
            key_prefix=key[:SHOWN_KEY_CHARS],
            is_admin=admin,
        )
    )
    session.flush()
    return key


def create_tenant_with_key(session: Session, tenant_name: str, *, admin: bool = False) -> tuple[Tenant, str]:
    """Create the tenant if missing and a fresh key for it. The caller commits."""
    tenant = get_or_create_tenant(session, tenant_name)
    return tenant, create_api_key(session, tenant, admin=admin)


def lookup_hash(key: str) -> str | None:
    """The hash to look a presented key up by (with `active_key_with_hash`); None for a string that
    cannot be a key (no query needed)."""
    if not key.startswith(API_KEY_PREFIX) or not key.isascii():
        return None
    return hash_api_key(key)


def tenant_for_key(session: Session, key: str) -> Tenant | None:
    """The tenant owning a valid (existing, not revoked) key, else None."""
    key_hash = lookup_hash(key)
    if key_hash is None:
        return None
    return session.scalars(_TENANT_FOR_HASH, {"key_hash": key_hash}).one_or_none()


def is_admin_key(session: Session, key: str) -> bool | None:
    """True for a valid admin key, False for a valid tenant key, None for an unknown or revoked one."""
    if not key.startswith(API_KEY_PREFIX) or not key.isascii():
        return None
    statement = select(ApiKey.is_admin).where(
        ApiKey.key_hash == hash_api_key(key), ApiKey.revoked_at.is_(None)
    )
    found = session.execute(statement).one_or_none()
    return None if found is None else bool(found[0])


def revoke_api_key(session: Session, key: str) -> bool:
    """Mark a key revoked; True if it existed and was active. The caller commits."""
    api_key = session.scalars(
        select(ApiKey).where(ApiKey.key_hash == hash_api_key(key), ApiKey.revoked_at.is_(None))
    ).one_or_none()
    if api_key is None:
        return False
    api_key.revoked_at = datetime.now(UTC)
    session.flush()
    return True
