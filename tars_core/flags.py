"""Feature flags the running T.A.R.S. services obey (DESIGN: "feature flags for all runtime changes").

A fix that changes running code ships the fixed code behind a flag; apply turns the flag on only after
checking the fixed code is what runs, rollback turns it back to what it was. The flags live in a Redis
hash (default ``tars:feature_flags`` on ``targets.redis``), the place the services already read. Values
are strings: ``on``/``off`` (see :data:`OFF_VALUES`), or a canary fraction such as ``"0.1"``, which turns
the new behaviour on for the ids whose stable bucket (:func:`canary_bucket`) falls below it.

Two readers, one vocabulary: :class:`FeatureFlags` (async, for hooks: remember/restore, errors as
``TargetError``) and :class:`FlagReader` (sync, cached, for services: never raises, keeps the last value
it saw when Redis is briefly away).
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any, ClassVar

from tars_core.errors import TargetError, TargetLost
from tars_core.redact import host_port

#: Values that mean "off" (compared case-insensitively, surrounding blanks ignored); a missing flag is off.
OFF_VALUES = frozenset({"", "0", "off", "false", "no", "disabled"})
#: What :meth:`FeatureFlags.remember` stores for "the flag did not exist", so restore deletes it again.
ABSENT = "\x00absent"

log = logging.getLogger("tars.flags")


def is_on(value: str | bytes | None) -> bool:
    """Is this flag value "on" for anyone? (A canary fraction above zero is.)"""
    return fraction(value) > 0.0


def fraction(value: str | bytes | None) -> float:
    """The share of ids the value turns on: 0.0 off, 1.0 on, a number in between for a canary."""
    if value is None:
        return 0.0
    text = (value.decode() if isinstance(value, bytes) else str(value)).strip().lower()
    if text in OFF_VALUES:
        return 0.0
    try:
        number = float(text)
    except ValueError:
        return 1.0  # "on", "true", "yes", "enabled", or a build name: on for everyone
    return min(max(number, 0.0), 1.0) if number == number else 0.0  # NaN is off


def canary_bucket(flag: str, ident: str) -> float:
    """A stable number in [0, 1) for ``ident`` under ``flag``: the same id stays in (or out of) a canary
    across processes, restarts and hosts, and different flags pick independent canaries."""
    digest = hashlib.sha256(f"{flag}\x00{ident}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def enabled_for(value: str | bytes | None, flag: str, ident: str | None) -> bool:
    """Is the new behaviour on for ``ident`` (an agent, a connection, a worker) given the flag's value?

    ``ident=None`` asks for the whole service: on only when the fraction is 1 (or "on").
    """
    share = fraction(value)
    if share >= 1.0 or share <= 0.0:
        return share >= 1.0
    return ident is not None and canary_bucket(flag, ident) < share


class FeatureFlags:
    """Async access to the flag hash for hooks; the Redis client is created on first use (cheap import).

    Every Redis failure becomes a :class:`TargetError` naming ``targets.redis`` by host and port (never
    its password), so ``tars-run`` exits 2 for an unreachable Redis instead of failing the fix.

    A Redis this process has already talked to that stops answering (restarted, paused, a network blip)
    is tried again with backoff for up to ``reconnect_for`` seconds before that error: a dependency that
    came back must not cost a release (it ended in exit 4 with the fix in fact in place). One never
    reached, or refusing the password, fails at once: that is the config, and waiting will not fix it.
    """

    #: Redis URLs this process has had an answer from (see the class doc).
    _answered: ClassVar[set[str]] = set()

    def __init__(
        self,
        redis_url: str | None,
        key: str = "tars:feature_flags",
        *,
        connect_timeout: float = 3.0,
        read_timeout: float = 5.0,
        reconnect_for: float = 30.0,
    ) -> None:
        self.redis_url = redis_url
        self.key = key
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.reconnect_for = reconnect_for
        self._client: Any = None

    @property
    def previous_key(self) -> str:
        """The hash remembering, per flag, the value apply replaced (survives a lost ``.tars`` folder)."""
        return f"{self.key}:previous"

    def _redis(self) -> Any:
        if self._client is None:
            if not self.redis_url:
                raise TargetError("feature flags need targets.redis: set it to the Redis the services read")
            import redis.asyncio as aioredis

            try:
                self._client = aioredis.from_url(
                    self.redis_url,
                    decode_responses=True,
                    socket_connect_timeout=self.connect_timeout,
                    socket_timeout=self.read_timeout,
                )
            except ValueError as exc:
                raise TargetError(f"targets.redis is not a valid Redis URL ({exc}); fix targets.redis") from None
        return self._client

    async def _call(self, action: str, name: str, method: str, *args: Any) -> Any:
        import anyio
        from redis.exceptions import AuthenticationError, RedisError
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        where = host_port(self.redis_url or "", 6379)
        transient = (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError)
        deadline: float | None = None
        delay = 0.25
        while True:
            try:
                result = await getattr(self._redis(), method)(*args)
            except AuthenticationError as exc:
                raise self._unreachable(action, name, where, exc) from None
            except transient as exc:
                if self.redis_url not in self._answered or self.reconnect_for <= 0:
                    raise self._unreachable(action, name, where, exc) from None
                deadline = deadline if deadline is not None else time.monotonic() + self.reconnect_for
                if time.monotonic() >= deadline:
                    raise self._unreachable(action, name, where, exc, lost=True) from None
                log.warning("targets.redis at %s stopped answering (%s); trying again", where, type(exc).__name__)
                await anyio.sleep(delay)
                delay = min(delay * 2, 3.0)
                continue
            except (RedisError, OSError, ValueError) as exc:
                raise self._unreachable(action, name, where, exc) from None
            if self.redis_url:
                self._answered.add(self.redis_url)
            return result

    def _unreachable(
        self, action: str, name: str, where: str, exc: BaseException, *, lost: bool = False
    ) -> TargetError:
        if lost:
            return TargetLost(
                f"targets.redis at {where} stopped answering while trying to {action} flag {name} and did not "
                f"come back within {self.reconnect_for:g}s ({type(exc).__name__}): start Redis, then run again"
            )
        return TargetError(
            f"cannot reach targets.redis at {where} to {action} flag {name} ({type(exc).__name__}): "
            "start Redis or fix targets.redis"
        )

    async def get(self, name: str) -> str | None:
        value = await self._call("read", name, "hget", self.key, name)
        return None if value is None else str(value)

    async def is_on(self, name: str) -> bool:
        return is_on(await self.get(name))

    async def set(self, name: str, value: str | bool = "on", *, remember: bool = False) -> None:
        """Set the flag; with ``remember`` first keep the value it replaces for :meth:`restore`."""
        if remember:
            await self.remember(name)
        if isinstance(value, bool):
            value = "on" if value else "off"
        await self._call("set", name, "hset", self.key, name, value)

    async def clear(self, name: str) -> None:
        await self._call("clear", name, "hdel", self.key, name)

    async def all(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in (await self._call("read", "*", "hgetall", self.key)).items()}

    async def remember(self, name: str) -> None:
        """Keep the current value of ``name`` (or that it was absent) unless one is already kept.

        "Unless already kept" makes a re-apply after a partial apply harmless: the value kept is the
        one from before the *first* apply, which is what a rollback must bring back.
        """
        current = await self.get(name)
        await self._call("remember", name, "hsetnx", self.previous_key, name, ABSENT if current is None else current)

    async def remembered(self, name: str) -> tuple[bool, str | None]:
        """(whether a value is kept, the kept value or ``None`` for "was absent")."""
        value = await self._call("read", name, "hget", self.previous_key, name)
        if value is None:
            return False, None
        return True, None if value == ABSENT else str(value)

    async def restore(self, name: str, *, default: str | None = "off") -> str | None:
        """Put back the value :meth:`remember` kept and forget it; returns the value now in force.

        With nothing kept (apply never ran here, or ran with a core that did not remember), the flag is
        set to ``default`` (``None``: deleted), the safe state for a rollback.
        """
        kept, value = await self.remembered(name)
        if not kept:
            value = default
        if value is None:
            await self.clear(name)
        else:
            await self._call("restore", name, "hset", self.key, name, value)
        await self._call("forget", name, "hdel", self.previous_key, name)
        return value

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            try:
                await client.aclose()
            except Exception as exc:  # closing a connection to a dead Redis must not mask the real error
                log.debug("closing the flags client failed: %s", exc)


def redis_client(url: str, *, reconnect_for: float = 30.0, **kwargs: Any) -> Any:
    """An asyncio Redis client (``decode_responses``) for a hook's own commands (streams, status keys,
    probes) that rides out what :class:`FeatureFlags` rides out: a lost connection or a timeout is tried
    again with backoff for about ``reconnect_for`` seconds. Use it after ``ctx.flags`` has read the flag,
    which reports a Redis never reached or a refused password at once; ``kwargs`` go to ``from_url``."""
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    retry = Retry(ExponentialBackoff(cap=2.0, base=0.25), max(1, int(reconnect_for / 2)))
    return aioredis.from_url(
        url,
        decode_responses=True,
        retry=retry,
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        **kwargs,
    )


class FlagReader:
    """Synchronous, cached flag reads for services (a hub, a worker, a trainer loop).

    A service asks on every request or step, so values are cached for ``ttl`` seconds; Redis being
    briefly unreachable must not take the service down or flip behaviour, so a failed read keeps the
    last value seen (``default`` before any) and is logged once per outage.
    """

    def __init__(
        self,
        redis_url: str,
        key: str = "tars:feature_flags",
        *,
        ttl: float = 1.0,
        timeout: float = 1.0,
        default: str | None = None,
    ) -> None:
        import redis

        self.key = key
        self.ttl = ttl
        self.default = default
        self._client = redis.Redis.from_url(
            redis_url, decode_responses=True, socket_connect_timeout=timeout, socket_timeout=timeout
        )
        self._where = host_port(redis_url, 6379)
        self._cache: dict[str, tuple[float, str | None]] = {}
        self._failing = False

    def value(self, name: str) -> str | None:
        now = time.monotonic()
        cached = self._cache.get(name)
        if cached is not None and now - cached[0] < self.ttl:
            return cached[1]
        from redis.exceptions import RedisError

        try:
            raw = self._client.hget(self.key, name)
            value = None if raw is None else str(raw)
            if self._failing:
                log.warning("feature flags readable again at %s", self._where)
                self._failing = False
        except (RedisError, OSError) as exc:
            if not self._failing:
                log.warning("cannot read feature flags at %s (%s); keeping the last values", self._where, exc)
                self._failing = True
            value = cached[1] if cached is not None else self.default
        self._cache[name] = (now, value)
        return value

    def is_on(self, name: str, ident: str | None = None) -> bool:
        """``ident=None``: is the flag on at all (any share above zero, as :func:`is_on`); with an id:
        is it on for that id (:func:`enabled_for`, the canary's stable bucket)."""
        value = self.value(name)
        return is_on(value) if ident is None else enabled_for(value, name, ident)

    def close(self) -> None:
        self._client.close()
