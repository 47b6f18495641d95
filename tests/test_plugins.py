"""Plugin manager behaviour, in process: per-plugin calls, wrappers, async hooks, blocking, discovery."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import anyio
import pluggy
import pytest
from conftest import Project

from tars_core import ApplyResult, PluginInfo, VerifyResult, hookimpl
from tars_core.errors import UsageError
from tars_core.plugins import PluginHost


class Fix:
    def __init__(self, name: str, requires: tuple[str, ...] = (), log: list[str] | None = None) -> None:
        self.name, self.requires, self.log = name, requires, log if log is not None else []

    @hookimpl
    def tars_plugin_info(self) -> PluginInfo:
        return PluginInfo(name=self.name, title=self.name, requires=self.requires)

    @hookimpl
    async def tars_apply(self, ctx: Any) -> ApplyResult:
        await anyio.sleep(0)
        self.log.append(f"apply {self.name}")
        return ApplyResult(changed=True)

    @hookimpl
    def tars_verify(self, ctx: Any) -> VerifyResult:
        self.log.append(f"verify {self.name}")
        return VerifyResult(ok=True)


class Timing:
    """A pure wrapper plugin: no tars_plugin_info, it only wraps other plugins' hooks."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    @hookimpl(wrapper=True)
    def tars_verify(self, ctx: Any) -> Any:
        self.log.append("wrap-before")
        result = yield
        self.log.append("wrap-after")
        return result


def test_each_plugin_is_called_alone_and_wrappers_still_wrap(tars_host: PluginHost, tars_register: Any) -> None:
    log: list[str] = []
    tars_register(Fix("fix-one", log=log), "fix-one")
    tars_register(Fix("fix-two", log=log), "fix-two")
    assert tars_register(Timing(log), "timing") is None  # wrappers are not sequenced
    assert sorted(tars_host.plugins) == ["fix-one", "fix-two"]
    result = anyio.run(lambda: tars_host.call("fix-two", "tars_verify", ctx=None))
    assert result.ok
    assert log == ["wrap-before", "verify fix-two", "wrap-after"]
    log.clear()
    result = anyio.run(lambda: tars_host.call("fix-one", "tars_apply", ctx=None))
    assert log == ["apply fix-one"] and result.changed  # the async hook was awaited


def test_hook_timeout(tars_host: PluginHost, tars_register: Any) -> None:
    class Slow(Fix):
        @hookimpl
        async def tars_apply(self, ctx: Any) -> ApplyResult:
            await anyio.sleep(30)
            return ApplyResult()

    tars_register(Slow("slow-fix"), "slow-fix")
    with pytest.raises(TimeoutError):
        anyio.run(lambda: tars_host.call("slow-fix", "tars_apply", timeout=0.05, ctx=None))


def test_order_ties_by_name_and_cycle(tars_host: PluginHost, tars_register: Any) -> None:
    for name, req in [("zeta", ()), ("alpha", ()), ("mid", ("zeta",)), ("beta", ("alpha",))]:
        tars_register(Fix(name, req), name)
    assert [p.name for p in tars_host.select("all")] == ["alpha", "beta", "zeta", "mid"]
    tars_register(Fix("c1", ("c2",)), "c1")
    tars_register(Fix("c2", ("c1",)), "c2")
    with pytest.raises(UsageError, match="dependency cycle among plugins: c1 -> c2"):
        tars_host.select("c1")


def test_misspelt_hook_fails_loudly(tars_host: PluginHost) -> None:
    class Typo(Fix):
        @hookimpl
        def tars_aply(self, ctx: Any) -> None:  # typo
            pass

    with pytest.raises(pluggy.PluginValidationError, match="tars_aply"):
        tars_host.register(Typo("typo-fix"), "typo-fix")
    assert "typo-fix" not in tars_host.plugins


def test_name_mismatch_is_refused(tars_host: PluginHost) -> None:
    with pytest.raises(ValueError, match="entry point says 'other-name'"):
        tars_host.register(Fix("real-name"), "other-name")


def test_blocked_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TARS_DISABLE_PLUGINS", "fix-one, fix-two")
    host = PluginHost(blocked=["fix-three"])
    assert host.register(Fix("fix-one"), "fix-one") is None
    assert host.register(Fix("fix-three"), "fix-three") is None
    assert host.plugins == {}
    with pytest.raises(UsageError, match="disabled"):
        host.resolve_name("fix-two")


def test_same_distribution_twice_on_path_is_loaded_once(project: Project, tmp_path: Path) -> None:
    project.dist("acme-fixes", {"fix-a": []})
    twin = tmp_path / "twin"
    twin.symlink_to(project.site)  # like a symlinked lib64
    env = project.env(PYTHONPATH=f"{project.site}:{twin}")
    res = subprocess.run(
        ["tars-run", "--format", "json", "list"], env=env, cwd=project.work, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.count('"name": "fix-a"') == 1


def test_trace_env_prints_hook_calls(project: Project) -> None:
    project.dist("acme-fixes", {"fix-a": []})
    project.config()
    res = project.run("--dry-run", "apply", env=project.env(TARS_TRACE_PLUGINS="1"))
    assert res.returncode == 0
    assert "tars_apply" in res.stderr


def test_redis_prefix_fixture_owns_a_fresh_namespace(tars_redis_url: str, tars_redis_prefix: str) -> None:
    """The shared fixtures give plugin tests a real Redis and a prefix nobody else writes under."""
    import redis

    client = redis.Redis.from_url(tars_redis_url)
    try:
        assert tars_redis_prefix.startswith("tars-test:")
        assert list(client.scan_iter(match=f"{tars_redis_prefix}:*")) == []
        client.set(f"{tars_redis_prefix}:probe", "1")  # deleted by the fixture at session end
        assert client.get(f"{tars_redis_prefix}:probe") == b"1"
    finally:
        client.close()
