"""Test helpers for plugin authors, loaded by pytest through the ``pytest11`` entry point.

Fixtures:

* ``tars_host``: an empty :class:`~tars_core.plugins.PluginHost` (no entry points loaded), so a test sees
  only the plugins it registers.
* ``tars_register``: ``tars_register(obj, name)`` registers a plugin object in ``tars_host`` and
  unregisters it when the test ends.
* ``tars_redis_url`` (session): the real Redis the tests use (``TARS_TEST_REDIS``, default
  ``redis://127.0.0.1:6379/0``); fails the test run with one line when it does not answer.
* ``tars_redis_prefix`` (session): a key prefix owned by this test run; every key under it is deleted
  at the end, so tests never touch data they did not create.

Functions:

* :func:`make_context` builds the ``ctx`` a hook receives, structuring a dict config through the
  plugin's own config class exactly as ``tars-run`` does (so config errors surface in tests too).
* :func:`check_conformance` is the contract every fix must meet: apply, verify, apply again changes
  nothing, rollback, verify reports not applied, rollback again changes nothing.
"""

from __future__ import annotations

import inspect
import logging
import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tars_core.config import structure_section
from tars_core.flags import FeatureFlags
from tars_core.model import ApplyResult, Context, PluginInfo, Targets, VerifyResult
from tars_core.plugins import LoadedPlugin, PluginHost


def _info(plugin: Any) -> PluginInfo:
    info = plugin.tars_plugin_info()
    assert isinstance(info, PluginInfo), f"tars_plugin_info returned {info!r}, not a PluginInfo"
    return info


def make_context(
    plugin: Any,
    *,
    targets: Targets,
    config: Mapping[str, Any] | Any | None = None,
    state_dir: Path,
    dry_run: bool = False,
    phase: str = "",
    release: str = "v1.0.1",
) -> Context:
    """The ``ctx`` for ``plugin`` (its hook module or object) as ``tars-run`` would build it."""
    info = _info(plugin)
    section: Any = config
    if info.config is not None and (config is None or isinstance(config, Mapping)):
        section = structure_section(info.config, dict(config or {}), "", f"plugins.{info.name}")
    state_dir.mkdir(parents=True, exist_ok=True)
    return Context(
        plugin=info,
        config=section,
        targets=targets,
        log=logging.getLogger(f"tars.{info.name}"),
        dry_run=dry_run,
        flags=FeatureFlags(targets.redis, targets.flags_key),
        state_dir=state_dir,
        release=release,
        phase=phase,
    )


async def _call(plugin: Any, hook: str, ctx: Context) -> Any:
    fn = getattr(plugin, hook)
    ctx.phase = hook.removeprefix("tars_")
    result = fn(ctx)
    while inspect.isawaitable(result):
        result = await result
    return result


async def check_conformance(plugin: Any, ctx: Context) -> None:
    """Run the lifecycle every fix must support on the real target of ``ctx``; AssertionError if not."""
    name = _info(plugin).name
    try:
        await _call(plugin, "tars_apply", ctx)
        first = await _call(plugin, "tars_verify", ctx)
        assert isinstance(first, VerifyResult), f"{name}: tars_verify returned {first!r}, not VerifyResult"
        assert first.ok, f"{name}: verify after apply is not ok: {first.detail}"
        again = await _call(plugin, "tars_apply", ctx)
        assert isinstance(again, ApplyResult) and not again.changed, (
            f"{name}: a second apply must return ApplyResult(changed=False), got {again!r}"
        )
        assert (await _call(plugin, "tars_verify", ctx)).ok, f"{name}: verify after re-apply is not ok"
        await _call(plugin, "tars_rollback", ctx)
        after = await _call(plugin, "tars_verify", ctx)
        assert not after.ok, f"{name}: verify after rollback still reports the fix in place: {after.detail}"
        twice = await _call(plugin, "tars_rollback", ctx)
        assert twice is None or (isinstance(twice, ApplyResult) and not twice.changed), (
            f"{name}: a second rollback must change nothing, got {twice!r}"
        )
    finally:
        await ctx.flags.aclose()


@pytest.fixture
def tars_host() -> PluginHost:
    return PluginHost(trace=False)


@pytest.fixture
def tars_register(tars_host: PluginHost) -> Iterator[Callable[..., LoadedPlugin | None]]:
    names: list[str] = []

    def register(obj: Any, name: str, **kw: Any) -> LoadedPlugin | None:
        loaded = tars_host.register(obj, name, **kw)
        names.append(name)
        return loaded

    yield register
    for name in reversed(names):
        tars_host.unregister(name)


@pytest.fixture(scope="session")
def tars_redis_url() -> str:
    import redis

    url = os.environ.get("TARS_TEST_REDIS", "redis://127.0.0.1:6379/0")
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=3)
        client.ping()
        client.close()
    except redis.RedisError as exc:
        pytest.fail(f"these tests need a real Redis at {url} ({exc}); start one or set TARS_TEST_REDIS")
    return url


@pytest.fixture(scope="session")
def tars_redis_prefix(tars_redis_url: str) -> Iterator[str]:
    import redis

    prefix = f"tars-test:{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url(tars_redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


__all__ = ["check_conformance", "make_context", "tars_host", "tars_redis_prefix", "tars_redis_url", "tars_register"]
