"""Feature flags against a real Redis: the vocabulary, remember/restore, canaries, and unreachable Redis."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import redis

from tars_core.errors import TargetError
from tars_core.flags import ABSENT, FeatureFlags, FlagReader, canary_bucket, enabled_for, fraction, is_on
from tars_core.processes import Service, free_ports, redis_ready


@pytest.fixture
def flags_key(tars_redis_url: str, tars_redis_prefix: str) -> Iterator[str]:
    key = f"{tars_redis_prefix}:flags:{uuid.uuid4().hex[:8]}"
    yield key
    client = redis.Redis.from_url(tars_redis_url)
    client.delete(key, f"{key}:previous")
    client.close()


@pytest.mark.parametrize(
    ("value", "share"),
    [
        *[(None, 0.0), ("", 0.0), ("off", 0.0), (" OFF ", 0.0), ("0", 0.0), ("false", 0.0), ("no", 0.0)],
        *[("on", 1.0), ("true", 1.0), ("1", 1.0), ("1.0", 1.0), ("0.25", 0.25), ("7", 1.0), ("-1", 0.0)],
        *[("nan", 0.0), (b"on", 1.0), ("v1.0.1", 1.0)],
    ],
)
def test_one_vocabulary_for_on_off_and_canary(value: str | None, share: float) -> None:
    assert fraction(value) == share
    assert is_on(value) is (share > 0)


def test_canary_buckets_are_stable_and_close_to_the_fraction() -> None:
    ids = [f"agent-{i}" for i in range(4000)]
    inside = [i for i in ids if enabled_for("0.1", "tars-1005-ppo", i)]
    assert 300 < len(inside) < 500
    assert inside == [i for i in ids if canary_bucket("tars-1005-ppo", i) < 0.1]
    assert [i for i in ids if enabled_for("0.1", "another-flag", i)] != inside  # independent per flag
    assert enabled_for("on", "f", None) and not enabled_for("0.5", "f", None) and not enabled_for("off", "f", "x")


def test_remember_restore_brings_back_the_value_before_the_first_apply(tars_redis_url: str, flags_key: str) -> None:
    async def scenario() -> None:
        flags = FeatureFlags(tars_redis_url, flags_key)
        try:
            await flags.set("fix", "0.05")  # an operator's canary before the release
            await flags.set("fix", "on", remember=True)
            await flags.set("fix", "on", remember=True)  # re-apply keeps the first remembered value
            assert await flags.remembered("fix") == (True, "0.05")
            assert await flags.restore("fix") == "0.05"
            assert await flags.get("fix") == "0.05"
            assert await flags.remembered("fix") == (False, None)

            await flags.set("new", True, remember=True)  # the flag did not exist before apply
            assert await flags.remembered("new") == (True, None)
            assert await flags.restore("new") is None
            assert await flags.get("new") is None

            assert await flags.restore("never-applied") == "off"  # safe default with nothing remembered
            assert not await flags.is_on("never-applied")
            assert (await flags.all()) == {"fix": "0.05", "never-applied": "off"}
        finally:
            await flags.aclose()

    anyio.run(scenario)
    raw = redis.Redis.from_url(tars_redis_url, decode_responses=True)
    assert ABSENT not in raw.hvals(f"{flags_key}:previous")
    raw.close()


def test_unreachable_redis_is_a_target_error_without_the_password() -> None:
    (port,) = free_ports(1)

    async def scenario() -> None:
        flags = FeatureFlags(f"redis://:hunter22@127.0.0.1:{port}/0", connect_timeout=0.5)
        try:
            with pytest.raises(TargetError) as info:
                await flags.set("fix", "on", remember=True)
        finally:
            await flags.aclose()
        text = str(info.value)
        assert text.startswith(f"cannot reach targets.redis at 127.0.0.1:{port} to read flag fix (ConnectionError)")
        assert "hunter22" not in text

    anyio.run(scenario)
    with pytest.raises(TargetError, match=r"feature flags need targets\.redis"):
        anyio.run(FeatureFlags(None).get, "x")


def test_flag_reader_caches_and_reads_canaries(tars_redis_url: str, flags_key: str) -> None:
    client = redis.Redis.from_url(tars_redis_url)
    client.hset(flags_key, "fix", "on")
    cached = FlagReader(tars_redis_url, flags_key, ttl=3600.0)
    assert cached.value("fix") == "on"
    reader = FlagReader(tars_redis_url, flags_key, ttl=0.0)
    assert reader.is_on("fix") and reader.is_on("fix", "agent-1")
    client.hset(flags_key, "fix", "0.5")
    assert reader.value("fix") == "0.5"
    assert reader.is_on("fix")  # on for the service, the canary decides per id
    assert {reader.is_on("fix", f"a{i}") for i in range(50)} == {True, False}
    assert cached.value("fix") == "on"  # within its ttl: no Redis round trip on every request
    cached.close()
    reader.close()
    client.close()


def test_flag_reader_keeps_the_last_value_through_a_redis_outage(tmp_path: Path) -> None:
    """A service whose Redis goes away keeps the behaviour it had instead of falling back to the default."""
    (port,) = free_ports(1)
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)]
    redis_server = Service("redis", argv, log=tmp_path / "redis.log", ready=redis_ready(port))
    with redis_server:
        client = redis.Redis.from_url(f"redis://127.0.0.1:{port}/0")
        client.hset("flags", "fix", "on")
        client.close()
        reader = FlagReader(f"redis://127.0.0.1:{port}/0", "flags", ttl=0.0, timeout=0.5, default="off")
        assert reader.value("fix") == "on"
    assert reader.value("fix") == "on" and reader.is_on("fix")
    assert reader.value("other") == "off"  # never seen: the default
    reader.close()

    (port,) = free_ports(1)
    down = FlagReader(f"redis://127.0.0.1:{port}/0", "flags", ttl=0.0, timeout=0.2, default="off")
    assert down.value("fix") == "off" and not down.is_on("fix")
    down.close()
