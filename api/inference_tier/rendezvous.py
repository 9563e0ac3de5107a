"""Rendezvous (highest random weight) hashing: which inference process serves a (base model, adapter).

Every node gets a score per key from a hash of (node, key); the key goes to the highest score, and the
order of the scores is the failover order. When a node goes, only its keys move (each to its own
second choice); when one comes, it takes about 1/n of the keys and nothing else moves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def routing_key(base_model: str, adapter_id: str | None) -> str:
    # NUL cannot occur in either name, so distinct pairs never give the same key.
    return f"{base_model}\0{adapter_id or ''}"


def _score(node: str, key: str) -> int:
    digest = hashlib.blake2b(f"{node}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rendezvous_order(key: str, nodes: Iterable[str]) -> list[str]:
    """`nodes` from the key's first choice to its last (ties, practically impossible, by name)."""
    return sorted(nodes, key=lambda node: (-_score(node, key), node))
