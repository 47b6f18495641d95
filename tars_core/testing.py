"""Test helpers for plugin authors, loaded by pytest through the ``pytest11`` entry point.

Everything here drives a plugin the way ``tars-run`` does (a :class:`~tars_core.plugins.PluginHost`,
pluggy's registered implementations, the real CLI in a subprocess), so a plugin that passes these
checks cannot fail ``tars-run`` for a reason the tests skipped (an unmarked hook, a heavy import).

Fixtures:

* ``tars_host``: an empty :class:`~tars_core.plugins.PluginHost` (no entry points loaded), so a test sees
  only the plugins it registers.
* ``tars_register``: ``tars_register(obj, name)`` registers a plugin object in ``tars_host`` and
  unregisters it when the test ends.
* ``tars_redis_url`` (session): the real Redis the tests use (``TARS_TEST_REDIS``, default
  ``redis://127.0.0.1:6379/0``); fails the test run with one line when it does not answer.
* ``tars_redis_prefix`` (session): a key prefix owned by this test run; every key under it is deleted
  at the end, so tests never touch data they did not create.
* ``tars_postgres_url`` (session): the real PostgreSQL server the tests use (``TARS_TEST_POSTGRES``,
  default ``postgresql://postgres@127.0.0.1:5432/test``, a database that must exist to connect to);
  fails the test run with one line when it does not answer.
* ``tars_postgres_db``: a factory ``tars_postgres_db(template=None) -> url`` that creates a database
  named ``tars_test_<random>`` (a copy of ``template``, a database name or URL, when given) and drops it
  ``WITH (FORCE)`` when the test ends. :func:`create_database` / :func:`drop_database` do the same for
  session-scoped fixtures (e.g. a template seeded once per run, as tars-1004-db's tests do).

Functions:

* :func:`make_context` builds the ``ctx`` a hook receives, structuring a dict config through the
  plugin's own config class exactly as ``tars-run`` does (so config errors surface in tests too). The
  plugin is registered in a host of its own first, so an unmarked ``tars_*`` function fails here.
* :func:`check_conformance` is the contract every fix must meet: apply, verify, apply again changes
  nothing, rollback, verify reports not applied, rollback again changes nothing; every call goes
  through ``PluginHost.call`` as in ``tars-run``.
* :func:`assert_cheap_import` imports a plugin's entry point (or any module) in a fresh interpreter and
  fails naming each heavy module (default: :data:`HEAVY_MODULES`) it pulled in, with the import chain
  that did it.
* :func:`assert_hooks_raise_target_error` calls apply, verify and rollback as ``tars-run`` would and
  checks each raises ``TargetError`` with a one-line message that matches and hides the password.
* :func:`assert_unreachable_target_exits_2` runs the real ``tars-run`` against a target URL on a closed
  port with a password in it, and checks the bad-input contract: exit 2, exactly one ``tars-run:``
  line naming the problem, no traceback, the password never printed.
* :func:`unreachable_target_test` is that check as a test of its own, one per command (apply and verify
  by default), so a plugin states it once per target: ``test_unreachable_redis = unreachable_target_test(
  "acme-fix", "redis", "redis://:{password}@127.0.0.1:{port}/0", expect="cannot reach targets.redis")``.
* :func:`release_for` is the :class:`~tars_core.model.Release` a ``tars_report`` hook receives when its
  plugin is the only one in the release (its state, phases and benchmark), for report-section tests.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
import yaml

from tars_core.config import structure_section
from tars_core.flags import FeatureFlags
from tars_core.model import (
    ApplyResult,
    BenchmarkResult,
    Context,
    PhaseRecord,
    PluginInfo,
    Release,
    Targets,
    VerifyResult,
)
from tars_core.plugins import LoadedPlugin, PluginHost
from tars_core.redact import safe_url

HEAVY_MODULES = (
    "tensorflow",
    "keras",
    "gymnasium",
    "numpy",
    "scipy",
    "matplotlib",
    "asyncpg",
    "psycopg",
    "redis",
    "websockets",
    "opentelemetry",
    "prometheus_client",
    "httpx",
)
"""What :func:`assert_cheap_import` forbids by default: libraries a plugin must import inside its hooks."""

# ``__import__`` rather than importlib.import_module: only the former shows up in ``-X importtime``.
_IMPORT_SCRIPT = """
import importlib.metadata as md, json, sys
name = sys.argv[1]
eps = [ep for ep in md.entry_points(group="tars.plugins") if ep.name == name]
__import__(eps[0].module if eps else name)
if eps:
    eps[0].load()
print(json.dumps(sorted(sys.modules)))
"""


def _load(plugin: Any) -> tuple[PluginHost, LoadedPlugin]:
    """``plugin`` registered alone in a new host, validated as discovery validates an entry point.

    A test has no entry point to take the name from, so the name is the one the plugin gives itself.
    """
    describe = getattr(plugin, "tars_plugin_info", None)
    assert callable(describe), f"{plugin!r} has no tars_plugin_info hook: it is not a release plugin"
    info = describe()
    assert isinstance(info, PluginInfo), f"tars_plugin_info returned {info!r}, not a PluginInfo"
    host = PluginHost(trace=False)
    loaded = host.register(plugin, info.name)
    assert loaded is not None, f"plugin {info.name} was not registered: TARS_DISABLE_PLUGINS blocks it"
    return host, loaded


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
    info = _load(plugin)[1].info
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


async def check_conformance(plugin: Any, ctx: Context) -> None:
    """Run the lifecycle every fix must support on the real target of ``ctx``; AssertionError if not.

    The plugin is registered in a :class:`PluginHost` and every hook is called through
    ``PluginHost.call``, the path ``tars-run`` takes: a hook pluggy would not call (unmarked, or a
    wrapper only) fails here exactly as it fails a release.
    """
    host, loaded = _load(plugin)
    name = loaded.name

    async def call(hook: str) -> Any:
        assert host.has_hook(name, hook), f"{name}: {hook} is not implemented (no @hookimpl function of that name)"
        ctx.phase = hook.removeprefix("tars_")
        return await host.call(name, hook, ctx=ctx)

    try:
        await call("tars_apply")
        first = await call("tars_verify")
        assert isinstance(first, VerifyResult), f"{name}: tars_verify returned {first!r}, not VerifyResult"
        assert first.ok, f"{name}: verify after apply is not ok: {first.detail}"
        again = await call("tars_apply")
        assert isinstance(again, ApplyResult) and not again.changed, (
            f"{name}: a second apply must return ApplyResult(changed=False), got {again!r}"
        )
        assert (await call("tars_verify")).ok, f"{name}: verify after re-apply is not ok"
        await call("tars_rollback")
        after = await call("tars_verify")
        assert not after.ok, f"{name}: verify after rollback still reports the fix in place: {after.detail}"
        twice = await call("tars_rollback")
        assert twice is None or (isinstance(twice, ApplyResult) and not twice.changed), (
            f"{name}: a second rollback must change nothing, got {twice!r}"
        )
    finally:
        await ctx.flags.aclose()


async def assert_hooks_raise_target_error(
    plugin: Any,
    ctx: Context,
    *,
    expect: str,
    hooks: Sequence[str] = ("tars_apply", "tars_verify", "tars_rollback"),
    secret: str = "s3cret",
) -> None:
    """Each of ``hooks``, called as ``tars-run`` calls it, raises :class:`~tars_core.errors.TargetError`
    whose one-line message matches the regex ``expect`` and never contains ``secret``.

    The in-process twin of :func:`assert_unreachable_target_exits_2`: it reaches ``tars_rollback`` too,
    which the CLI only calls when the ledger says the fix was applied.
    """
    import re

    from tars_core.errors import TargetError

    host, loaded = _load(plugin)
    try:
        for hook in hooks:
            ctx.phase = hook.removeprefix("tars_")
            try:
                await host.call(loaded.name, hook, ctx=ctx)
            except TargetError as exc:
                text = str(exc)
                assert re.search(expect, text), f"{loaded.name}: {hook}: {text!r} does not match {expect!r}"
                assert "\n" not in text, f"{loaded.name}: {hook}: the message is not one line: {text!r}"
                assert secret not in text, f"{loaded.name}: {hook}: the message shows the password: {text!r}"
            else:
                raise AssertionError(f"{loaded.name}: {hook} did not raise TargetError")
    finally:
        await ctx.flags.aclose()


def _import_chain(importtime: str, module: str) -> str:
    """``a -> b -> module`` from ``python -X importtime`` output, where children precede their parent."""
    rows: list[tuple[int, str]] = []
    for line in importtime.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            name = line.rsplit("|", 1)[1]
            rows.append((len(name) - len(name.lstrip()), name.strip()))
    at = next((i for i, (_, name) in enumerate(rows) if name == module), None)
    if at is None:
        return module
    chain, depth = [module], rows[at][0]
    for level, name in rows[at + 1 :]:
        if level < depth:
            chain.append(name)
            depth = level
    return " -> ".join(reversed(chain))


def assert_cheap_import(
    name: str, forbidden: Iterable[str] = HEAVY_MODULES, *, env: Mapping[str, str] | None = None
) -> None:
    """Import ``name`` in a fresh interpreter; fail naming every ``forbidden`` module that came with it.

    ``name`` is a ``tars.plugins`` entry-point name (``tars-1004-db``: its object is loaded, as
    ``tars-run list`` does) or a module name (``tars_1004_db.plugin``). ``forbidden`` are top-level
    packages (a submodule counts as its package). ``env`` replaces the subprocess environment (e.g. a
    ``PYTHONPATH`` with a test distribution). The message shows, for each heavy module, the chain of
    imports that reached it, so the line to move into a hook is plain to see.
    """
    res = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", _IMPORT_SCRIPT, name],
        capture_output=True,
        text=True,
        env=dict(env) if env is not None else None,
        timeout=120,
    )
    errors = [line for line in res.stderr.splitlines() if not line.startswith("import time:")]
    assert res.returncode == 0, f"importing {name} failed:\n" + "\n".join(errors[-15:])
    modules = json.loads(res.stdout.splitlines()[-1])
    heavy = sorted({f for f in forbidden for m in modules if m == f or m.startswith(f + ".")})
    assert not heavy, f"importing {name} imported heavy modules; import them inside the hooks instead:\n" + "\n".join(
        f"  {_import_chain(res.stderr, h)}" for h in heavy
    )


def _tars_run() -> list[str]:
    """The ``tars-run`` script of this interpreter's environment (the module when it is not installed)."""
    script = Path(sys.executable).with_name("tars-run")
    return [str(script)] if script.exists() else [sys.executable, "-m", "tars_core.cli"]


def assert_unreachable_target_exits_2(
    plugin: str,
    target: str,
    url: str,
    *,
    expect: str | Sequence[str],
    tmp_path: Path,
    command: str = "apply",
    targets: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    password: str = "s3cret",
    env: Mapping[str, str] | None = None,
    timeout: float = 120.0,
) -> subprocess.CompletedProcess[str]:
    """Run ``tars-run --plugins PLUGIN COMMAND`` with ``targets.TARGET`` on a closed port; check exit 2.

    ``url`` is the target URL with ``{port}`` (a loopback port nobody listens on) and ``{password}``
    placeholders, e.g. ``"redis://:{password}@127.0.0.1:{port}/0"``. ``targets`` adds other target keys
    (a real Redis for flags, a rules folder), ``config`` is the plugin's config section, ``env`` extra
    environment variables. Asserts: exit code 2 (bad input), no traceback, ``password`` nowhere in
    stdout or stderr, and exactly one line of stderr starting with ``tars-run:`` (the verdict; progress
    lines aside), which contains every ``expect`` text (``{port}`` replaced). Returns the completed
    process for further checks. The config and a throwaway ledger are written into ``tmp_path``.
    """
    from tars_core.processes import free_port

    assert "{port}" in url and "{password}" in url, f"url {url!r} needs {{port}} and {{password}} placeholders"
    port = str(free_port())
    doc = {
        "targets": {**(targets or {}), target: url.replace("{port}", port).replace("{password}", password)},
        "plugins": {plugin: dict(config or {})},
    }
    cfg = tmp_path / "tars-unreachable.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    ledger = f"sqlite:///{tmp_path / 'tars-unreachable.db'}"
    argv = [*_tars_run(), "--plugins", plugin, "--config", str(cfg), "--state", ledger, command]
    res = subprocess.run(
        argv,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "TARS_TRACE_PLUGINS": "", **(env or {})},
    )
    shown = f"tars-run {command} against targets.{target} on closed port {port}"
    assert res.returncode == 2, f"{shown} exited {res.returncode}, not 2 (bad input):\n{res.stderr}"
    assert "Traceback" not in res.stderr, f"{shown} printed a traceback:\n{res.stderr}"
    assert password not in res.stdout + res.stderr, f"{shown} printed the password:\n{res.stdout}\n{res.stderr}"
    verdicts = [line for line in res.stderr.splitlines() if line.startswith("tars-run:")]
    assert len(verdicts) == 1, f"{shown}: want exactly one 'tars-run:' line, got {len(verdicts)}:\n{res.stderr}"
    for text in [expect] if isinstance(expect, str) else expect:
        wanted = text.replace("{port}", port)
        assert wanted in verdicts[0], f"{shown}: {wanted!r} is not in the error line {verdicts[0]!r}"
    return res


def unreachable_target_test(
    plugin: str,
    target: str,
    url: str,
    *,
    expect: str | Sequence[str],
    commands: Sequence[str] = ("apply", "verify"),
    targets: Mapping[str, Any] | Callable[..., Mapping[str, Any]] | None = None,
    **options: Any,
) -> Callable[..., None]:
    """A pytest test running :func:`assert_unreachable_target_exits_2` once per command in ``commands``.

    Every plugin owes the same check for each target it connects to, so a test module states it in one
    line: ``test_unreachable_redis = unreachable_target_test("acme-fix", "redis", URL, expect=...)``.
    ``targets`` is a mapping, or a function whose parameters name fixtures (``lambda tars_redis_url:
    {"redis": tars_redis_url}``, ``tmp_path`` included) for targets that only a fixture knows.
    ``options`` go to :func:`assert_unreachable_target_exits_2` as they are (``config``, ``password``,
    ``env``, ``timeout``).
    """

    @pytest.mark.parametrize("command", commands)
    def test(request: pytest.FixtureRequest, tmp_path: Path, command: str) -> None:
        more = targets
        if callable(more):  # fixtures named by its parameters
            more = more(**{name: request.getfixturevalue(name) for name in inspect.signature(more).parameters})
        assert_unreachable_target_exits_2(
            plugin, target, url, expect=expect, tmp_path=tmp_path, command=command, targets=more, **options
        )

    test.__doc__ = f"targets.{target} on a closed port is bad input: exit 2, one line naming it, no password."
    return test


@attrs.frozen
class BadValue:
    """One wrong value for one key of a plugin's config section, and what the refusal must mention.

    ``section`` is the whole section to give the plugin (nested keys as nested mappings), ``path`` the
    dotted key, ``mention`` texts the one-line error must contain (the key's name, and for an enum
    every allowed value).
    """

    path: str
    value: Any
    section: Mapping[str, Any]
    mention: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.path}={self.value!r}"


_NUMERIC_LIMITS: dict[str, tuple[Any, ...]] = {
    "positive": (0, -1),
    "non_negative": (-1,),
    "unit_interval": (-0.1, 1.5),
    "percentage": (-1, 101),
}


def _validators(field: attrs.Attribute[Any]) -> list[Any]:
    v = field.validator
    if v is None:
        return []
    inner = getattr(v, "_validators", None)  # attrs' and_()
    return list(inner) if inner is not None else [v]


def _nest(path: Sequence[str], value: Any) -> dict[str, Any]:
    doc: Any = value
    for key in reversed(path):
        doc = {key: doc}
    return dict(doc)


def bad_config_values(config: type, *, _path: tuple[str, ...] = ()) -> list[BadValue]:
    """Wrong values for every key of the attrs class ``config``, generated from its types and validators.

    Per key: a value of the wrong kind (a string for a number, a list for a string, ``maybe`` for a
    boolean, a whole number where a list is due), a fraction or a boolean for a count, NaN for a float,
    the values just outside the core validators' ranges (:func:`~tars_core.model.positive`: 0 and -1,
    ``non_negative``: -1, ``unit_interval``: -0.1 and 1.5, ``percentage``: -1 and 101), an empty name
    for ``non_empty``, a value outside a ``Literal``; one unknown key per section; nested sections
    recursively. Every one of them must be refused before anything runs (exit 2, one line).
    """
    import math
    import typing

    hints = typing.get_type_hints(config)
    out: list[BadValue] = []

    def bad(field: str, value: Any, *mention: str) -> None:
        path = (*_path, field)
        out.append(BadValue(".".join(path), value, _nest(path, value), (field, *mention)))

    bad("no_such_key", 1)
    for f in attrs.fields(config):
        t = hints[f.name]
        origin, args = typing.get_origin(t), typing.get_args(t)
        if attrs.has(t):
            bad(f.name, "abc")
            out.extend(bad_config_values(t, _path=(*_path, f.name)))
            continue
        if origin is typing.Union or origin is getattr(__import__("types"), "UnionType", None):
            rest = [a for a in args if a is not type(None)]
            if len(rest) == 1:
                t, origin, args = rest[0], typing.get_origin(rest[0]), typing.get_args(rest[0])
        names = {getattr(v, "__name__", type(v).__name__) for v in _validators(f)}
        if origin is typing.Literal:
            bad(f.name, "no-such-choice", *map(str, args))
        elif t is bool:
            bad(f.name, "maybe")
        elif t is int:
            bad(f.name, "abc")
            bad(f.name, 1.5)
            bad(f.name, True)
            for v in (v for n in names for v in _NUMERIC_LIMITS.get(n, ())):
                bad(f.name, math.floor(v))
        elif t is float:
            bad(f.name, "abc")
            bad(f.name, math.nan)
            for v in (v for n in names for v in _NUMERIC_LIMITS.get(n, ())):
                bad(f.name, v)
        elif t is str:
            bad(f.name, [1, 2])
            if "non_empty" in names:
                bad(f.name, "")
            for v in _validators(f):
                pattern = getattr(v, "pattern", None)
                if pattern is not None:
                    bad(f.name, "!not-matching!")
        elif origin in (list, tuple) or origin is Sequence:
            bad(f.name, "abc")
        elif origin is dict or origin is Mapping:
            bad(f.name, "abc")
    return out


def assert_bad_config_refused(plugin: Any) -> list[BadValue]:
    """Every :func:`bad_config_values` case of the plugin's config class is refused the way ``tars-run``
    refuses it before anything runs: a :class:`~tars_core.errors.ConfigError` of one line that names the
    key (and an enum's allowed values), never cattrs' "unknown error". Returns the cases tried."""
    from tars_core.config import TarsConfig, plugin_config
    from tars_core.errors import ConfigError

    _, loaded = _load(plugin)
    config = loaded.info.config
    assert config is not None, f"{loaded.name} declares no config class"
    cases = bad_config_values(config)
    accepted = []
    for case in cases:
        cfg = TarsConfig(plugins={loaded.name: dict(case.section)}, source="tars.yaml")
        try:
            plugin_config(loaded.info, cfg)
        except ConfigError as exc:
            text = str(exc)
            assert "\n" not in text and "unknown error" not in text, f"{case}: unclear refusal {text!r}"
            for word in case.mention:
                assert word in text, f"{case}: the error does not mention {word!r}: {text!r}"
            continue
        accepted.append(str(case))
    assert not accepted, f"{loaded.name} accepts bad config values: {', '.join(accepted)}"
    return cases


def release_for(
    info: PluginInfo,
    *,
    report_dir: Path,
    state: str = "applied",
    phases: Sequence[PhaseRecord] = (),
    benchmark: BenchmarkResult | None = None,
) -> Release:
    """The :class:`~tars_core.model.Release` a ``tars_report`` hook sees when ``info`` is its only plugin.

    ``phases`` are the plugin's ledger rows, ``benchmark`` its result (none: the benchmark did not run).
    ``release_for(PluginInfo(name="other", title="other"), ...)`` is a release the plugin is not part of.
    """
    return Release(
        name="v1.0.1",
        plugins=[info],
        states={info.name: state},
        phases=list(phases),
        benchmarks={} if benchmark is None else {info.name: benchmark},
        targets={},
        report_dir=report_dir,
    )


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
    except (redis.RedisError, ValueError) as exc:  # ValueError: TARS_TEST_REDIS is not a Redis URL
        pytest.fail(
            f"these tests need a real Redis at {safe_url(url)} ({type(exc).__name__}: {exc}); "
            "start one or set TARS_TEST_REDIS",
            pytrace=False,
        )
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


def database_url(server_url: str, name: str) -> str:
    """``server_url`` pointing at database ``name`` of the same server (credentials and options kept)."""
    from urllib.parse import urlsplit, urlunsplit

    return urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))


def _admin(server_url: str, sql: str) -> None:
    import anyio
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(server_url, timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    anyio.run(run)


def create_database(server_url: str, *, template: str | None = None, prefix: str = "tars_test") -> str:
    """Create a database owned by this test run and return its URL; names are random so runs never meet.

    With ``template`` (a database name, or the URL :func:`create_database` returned for it) the new
    database is a file-level copy of that one (fast: seed a session-scoped template once, copy per test).
    """
    from urllib.parse import urlsplit

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    if template and "://" in template:
        template = urlsplit(template).path.lstrip("/")
    copy = f' TEMPLATE "{template}"' if template else ""
    _admin(server_url, f'CREATE DATABASE "{name}"{copy}')
    return database_url(server_url, name)


def drop_database(url: str) -> None:
    """Drop the database ``url`` names, closing its sessions first (a test that failed may hold some)."""
    from urllib.parse import urlsplit

    name = urlsplit(url).path.lstrip("/")
    _admin(database_url(url, "postgres"), f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def tars_postgres_url() -> str:
    url = os.environ.get("TARS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
    try:
        _admin(url, "SELECT 1")
    except Exception as exc:
        pytest.fail(
            f"these tests need a real PostgreSQL at {safe_url(url)} ({type(exc).__name__}: {exc}); "
            "start one or set TARS_TEST_POSTGRES",
            pytrace=False,
        )
    return url


@pytest.fixture
def tars_postgres_db(tars_postgres_url: str) -> Iterator[Callable[..., str]]:
    made: list[str] = []

    def make(template: str | None = None) -> str:
        made.append(create_database(tars_postgres_url, template=template))
        return made[-1]

    yield make
    for url in reversed(made):
        drop_database(url)


__all__ = [
    "HEAVY_MODULES",
    "assert_cheap_import",
    "assert_hooks_raise_target_error",
    "assert_unreachable_target_exits_2",
    "check_conformance",
    "create_database",
    "database_url",
    "drop_database",
    "make_context",
    "release_for",
    "tars_host",
    "tars_postgres_db",
    "tars_postgres_url",
    "tars_redis_prefix",
    "tars_redis_url",
    "tars_register",
    "unreachable_target_test",
]
