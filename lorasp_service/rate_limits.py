"""Per-tenant rate limits: requests per minute and tokens per minute, as OpenAI counts them.

The counting is the `limits` library's sliding-window counter (two fixed-window counters weighted by
the time elapsed: O(1) per hit, atomic in Redis through its Lua scripts, a token cost is one INCRBY).
Counters live in Redis when the settings point at one, so every API process shares them, and in this
process otherwise (the embedded default). The API asks `RateLimiter.charge` before serving a request;
a request over a limit raises `RateLimitExceededError`, which the API answers as OpenAI's 429.
An unreachable Redis fails open (the request is served unlimited, with a warning logged).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from enum import StrEnum

from limits import RateLimitItem, RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError

from lorasp_service.settings import Settings

log = logging.getLogger(__name__)

REDIS_KEY_PREFIX = "lorasp-ratelimit"
REDIS_TIMEOUT_SECONDS = 1.0


class LimitKind(StrEnum):
    REQUESTS = "requests"
    TOKENS = "tokens"


@dataclass(frozen=True)
class WindowState:
    """One limit after a request: what OpenAI's x-ratelimit-{limit,remaining,reset}-<kind> report."""

    kind: LimitKind
    limit: int
    remaining: int
    reset_seconds: float  # until the window has room again for one more unit


@dataclass(frozen=True)
class RateLimitOutcome:
    windows: tuple[WindowState, ...]  # only the limited kinds (an unlimited kind has no window)


class RateLimitExceededError(Exception):
    """A request over one of its tenant's limits; `outcome` holds both windows for the headers."""

    def __init__(self, kind: LimitKind, limit: int, requested: int, outcome: RateLimitOutcome) -> None:
        self.kind = kind
        self.limit = limit
        self.requested = requested
        self.outcome = outcome
        window = next(w for w in outcome.windows if w.kind == kind)
        # A request larger than the whole limit never fits: waiting a full window is the honest answer.
        self.retry_after_seconds = 60.0 if requested > limit else max(window.reset_seconds, 0.001)
        super().__init__(f"{kind} limit {limit} per minute exceeded (requested {requested})")


def _check_storage_url(url: str) -> str:
    """The settings' check: a URL the limiter can count in (raises ValueError naming the setting)."""
    if not url.startswith(("redis://", "rediss://", "memory://")):
        raise ValueError(f"rate_limit_storage_url must be a redis:// URL or memory://, got {url!r}")
    return url


def _storage(url: str) -> Storage:
    if url.startswith(("redis://", "rediss://")):
        # redis-py's asyncio client (already a dependency), not coredis, the library's default.
        # Short timeouts: a hung Redis delays a request by a second at most, then fails open.
        return RedisStorage(
            f"async+{url}",
            implementation="redispy",
            key_prefix=REDIS_KEY_PREFIX,
            wrap_exceptions=True,
            socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
            socket_timeout=REDIS_TIMEOUT_SECONDS,
        )
    _check_storage_url(url)
    return MemoryStorage()


Limits = list[tuple[LimitKind, RateLimitItem]]


class RateLimiter:
    """The deployment's limits (settings), each tenant's overrides, counted per tenant id in one storage."""

    def __init__(self, settings: Settings) -> None:
        self.requests_per_minute = settings.rate_limit_rpm
        self.tokens_per_minute = settings.rate_limit_tpm
        self._key_prefix = settings.broker_key_prefix  # isolates deployments sharing a Redis db
        self._items = self._limits(self.requests_per_minute, self.tokens_per_minute)
        self._tenant_items = {
            name: self._limits(
                self.requests_per_minute if own.rpm is None else own.rpm,
                self.tokens_per_minute if own.tpm is None else own.tpm,
            )
            for name, own in settings.rate_limit_tenants.items()
        }
        anything_limited = bool(self._items) or any(self._tenant_items.values())
        storage = _storage(settings.rate_limit_storage) if anything_limited else None
        self._strategy = None if storage is None else SlidingWindowCounterRateLimiter(storage)

    def _limits(self, requests_per_minute: int, tokens_per_minute: int) -> Limits:
        # The library's key includes the amount, so a tenant moved to other limits starts fresh windows.
        items: Limits = []
        for kind, amount in (
            (LimitKind.REQUESTS, requests_per_minute),
            (LimitKind.TOKENS, tokens_per_minute),
        ):
            if amount > 0:
                items.append((kind, RateLimitItemPerMinute(amount, namespace=f"{self._key_prefix}{kind}")))
        return items

    def limits_for(self, tenant_name: str | None) -> Limits:
        """The tenant's own limits when the settings name it, else the deployment's."""
        if tenant_name is not None and tenant_name in self._tenant_items:
            return self._tenant_items[tenant_name]
        return self._items

    async def charge(
        self, tenant_id: str, tokens: int = 0, *, tenant_name: str | None = None
    ) -> RateLimitOutcome | None:
        """Count one request of `tokens` tokens for the tenant; None when nothing limits it.

        The request window is tested first, then the tokens are taken, then the request: each take is
        atomic, so concurrent API processes never overshoot; a refused request takes nothing more."""
        limits = self.limits_for(tenant_name)
        if self._strategy is None or not limits:
            return None
        strategy = self._strategy
        costs = {LimitKind.REQUESTS: 1, LimitKind.TOKENS: tokens}
        try:
            refused = await self._take(strategy, limits, costs, tenant_id)
            windows = [await self._window(kind, item, tenant_id) for kind, item in limits]
        except StorageError as error:
            # Fail open: an unreachable Redis must not take the whole API down with it.
            log.warning("rate limits not applied (storage unavailable): %s", error.storage_error)
            return None
        outcome = RateLimitOutcome(tuple(windows))
        if refused is not None:
            item = dict(limits)[refused]
            raise RateLimitExceededError(refused, item.amount, costs[refused], outcome)
        return outcome

    @staticmethod
    async def _take(
        strategy: SlidingWindowCounterRateLimiter,
        limits: Limits,
        costs: dict[LimitKind, int],
        tenant_id: str,
    ) -> LimitKind | None:
        """The kind that refused the request, or None once every cost is taken."""
        by_kind = dict(limits)
        requests = by_kind.get(LimitKind.REQUESTS)
        if requests is not None and not await strategy.test(requests, tenant_id):
            return LimitKind.REQUESTS
        tokens = by_kind.get(LimitKind.TOKENS)
        cost = costs[LimitKind.TOKENS]
        if (
            tokens is not None
            and cost > 0
            and (cost > tokens.amount or not await strategy.hit(tokens, tenant_id, cost=cost))
        ):
            return LimitKind.TOKENS
        if requests is not None and not await strategy.hit(requests, tenant_id):
            return LimitKind.REQUESTS  # another process took the last one since the test
        return None

    async def _window(self, kind: LimitKind, item: RateLimitItem, tenant_id: str) -> WindowState:
        assert self._strategy is not None
        stats = await self._strategy.get_window_stats(item, tenant_id)
        reset = max(0.0, stats.reset_time - time.time())
        return WindowState(kind, item.amount, max(0, stats.remaining), reset)


def openai_duration(seconds: float) -> str:
    """A duration as OpenAI's x-ratelimit-reset-* headers write it (Go's format): 20ms, 1s, 6m0s."""
    if seconds < 1:
        return f"{max(1, math.ceil(seconds * 1000))}ms"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    secs_text = f"{secs:.3f}".rstrip("0").rstrip(".")
    if hours >= 1:
        return f"{int(hours)}h{int(minutes)}m{secs_text}s"
    if minutes >= 1:
        return f"{int(minutes)}m{secs_text}s"
    return f"{secs_text}s"
