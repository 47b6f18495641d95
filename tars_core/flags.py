"""Feature flags the running T.A.R.S. services obey (DESIGN: "feature flags for all runtime changes").

A fix that changes running code ships the fixed code behind a flag; apply turns the flag on only after
checking the fixed code is what runs, rollback turns it off. The flags live in a Redis hash (default
``tars:feature_flags`` on ``targets.redis``), the place the services already read; values are strings so
a flag can carry a canary fraction (``"0.1"``) as well as ``"on"``/``"off"``.
"""

from __future__ import annotations

from typing import Any

from tars_core.errors import TargetError


class FeatureFlags:
    """Async access to the flag hash; the Redis client is created on first use (cheap discovery)."""

    def __init__(self, redis_url: str | None, key: str = "tars:feature_flags") -> None:
        self.redis_url = redis_url
        self.key = key
        self._client: Any = None

    def _redis(self) -> Any:
        if self._client is None:
            if not self.redis_url:
                raise TargetError("feature flags need targets.redis: set it to the Redis the services read")
            import redis.asyncio as aioredis

            self._client = aioredis.from_url(self.redis_url, decode_responses=True)
        return self._client

    async def get(self, name: str) -> str | None:
        value = await self._redis().hget(self.key, name)
        return None if value is None else str(value)

    async def is_on(self, name: str) -> bool:
        return (await self.get(name)) not in (None, "", "0", "off", "false")

    async def set(self, name: str, value: str | bool = "on") -> None:
        if isinstance(value, bool):
            value = "on" if value else "off"
        await self._redis().hset(self.key, name, value)

    async def clear(self, name: str) -> None:
        await self._redis().hdel(self.key, name)

    async def all(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in (await self._redis().hgetall(self.key)).items()}

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
