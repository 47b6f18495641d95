"""The embedded sandbox against real processes: its own PostgreSQL cluster, redis-server and Prometheus.

One sandbox is built for the module (with two small in-process plugins contributing a web service, a
process tree and seeds) and shared by the tests in file order, to keep the cost at one ``initdb``. Every
process the sandbox starts inherits ``TARS_SANDBOX_TEST_MARK``, so "nothing left behind" is checked by
scanning ``/proc`` for it (and for processes running from the test's folder, since PostgreSQL and Redis hide
their environment), which catches grandchildren, escaped daemons and PostgreSQL backends.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import attrs
import pytest
import redis as redis_lib
import yaml

from tars_core import (
    Context,
    PluginInfo,
    SandboxContribution,
    SandboxSite,
    ServiceSpec,
    hookimpl,
    sandbox,
)
from tars_core.config import load_config
from tars_core.errors import UsageError
from tars_core.plugins import LoadFailure, PluginHost
from tars_core.promtool import promtool

MARK = "TARS_SANDBOX_TEST_MARK"
SEED_ORDER_KEY = "sbx:seed-order"

pytestmark = pytest.mark.timeout(300)


# -- small plugins that contribute to the sandbox -------------------------------------------------


@attrs.define
class AlphaConfig:
    port: int = 0
    greeting: str = "hello"


class Alpha:
    """Contributes a real HTTP exporter (scraped by Prometheus), a target hint and a seed in PostgreSQL."""

    @hookimpl
    def tars_plugin_info(self) -> PluginInfo:
        return PluginInfo(name="sbx-alpha", title="sandbox test alpha", config=AlphaConfig)

    @hookimpl
    def tars_sandbox(self, site: SandboxSite) -> SandboxContribution:
        port = site.free_port()
        www = site.dir / "www"
        www.mkdir(exist_ok=True)
        (www / "metrics").write_text("# TYPE sbx_alpha_up gauge\nsbx_alpha_up 1\n")
        argv = [site.python, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(www), str(port)]
        return SandboxContribution(
            services=[ServiceSpec("web", argv, port=port, ready="http:/metrics")],
            scrape_targets=[f"127.0.0.1:{port}"],
            config={
                "port": port,
                "greeting": "hi",
                "targets": {"websocket_url": f"ws://127.0.0.1:{port}/ws"},
            },
        )

    @hookimpl
    async def tars_sandbox_seed(self, ctx: Context) -> None:
        conn = await asyncpg.connect(ctx.targets.require("postgres"))
        try:
            await conn.execute("CREATE TABLE IF NOT EXISTS sbx_alpha_seed (greeting text PRIMARY KEY)")
            await conn.execute("INSERT INTO sbx_alpha_seed VALUES ($1) ON CONFLICT DO NOTHING", ctx.config.greeting)
        finally:
            await conn.close()
        rules = {
            "groups": [{"name": "sbx_alpha", "rules": [{"record": "sbx:alpha_up:sum", "expr": "sum(sbx_alpha_up)"}]}]
        }
        (Path(ctx.targets.require("prometheus_rules_dir")) / "sbx_alpha.yml").write_text(yaml.safe_dump(rules))
        r = redis_lib.Redis.from_url(ctx.targets.require("redis"))
        r.rpush(SEED_ORDER_KEY, "sbx-alpha")
        r.close()


class Beta:
    """Requires alpha; contributes a process tree with no readiness port: a parent, a child in its session
    and a child that escaped into a session of its own (``down`` must still find it)."""

    @hookimpl
    def tars_plugin_info(self) -> PluginInfo:
        return PluginInfo(name="sbx-beta", title="sandbox test beta", requires=("sbx-alpha",))

    @hookimpl
    def tars_sandbox(self, site: SandboxSite) -> SandboxContribution:
        code = (
            "import subprocess, sys, time\n"
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(3600)'])\n"
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(3600)'], start_new_session=True)\n"
            "time.sleep(3600)\n"
        )
        return SandboxContribution(services=[ServiceSpec("tree", [site.python, "-c", code], ready=None)])

    @hookimpl
    def tars_sandbox_seed(self, ctx: Context) -> None:
        r = redis_lib.Redis.from_url(ctx.targets.require("redis"))
        r.rpush(SEED_ORDER_KEY, "sbx-beta")
        r.close()


class Gamma:
    """Installed after the sandbox exists: it must join without rebuilding anything."""

    @hookimpl
    def tars_plugin_info(self) -> PluginInfo:
        return PluginInfo(name="sbx-gamma", title="sandbox test gamma")

    @hookimpl
    def tars_sandbox(self, site: SandboxSite) -> SandboxContribution:
        prom = site.targets.require("prometheus_url").removeprefix("http://")
        return SandboxContribution(scrape_targets=[prom], config={"joined": True})


# -- helpers --------------------------------------------------------------------------------------


@attrs.define
class Box:
    root: Path
    host: PluginHost
    mark: str

    def ensure(self) -> None:
        """Make the sandbox healthy whatever ran before, so each test also runs on its own (``-k``)."""
        sandbox.ensure_running(self.host, self.root, announce=lambda _: None)

    def state(self) -> dict[str, Any]:
        return json.loads((self.root / ".tars" / "sandbox" / "state.json").read_text())

    def pids(self) -> dict[str, int]:
        return {s["name"]: s["pid"] for s in self.state()["services"]}

    def targets(self) -> dict[str, Any]:
        return self.state()["targets"]


def sandbox_pids(root: Path, mark: str) -> list[int]:
    """Live processes (not zombies) that belong to the sandbox under ``root``.

    Either the test's mark is in their environment, or they run from a folder under ``root``: PostgreSQL
    and Redis overwrite the memory ``/proc/<pid>/environ`` shows with their process title.
    """
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or not running(int(entry)):
            continue
        try:
            env = Path(f"/proc/{entry}/environ").read_bytes()
            cwd = os.readlink(f"/proc/{entry}/cwd").removesuffix(" (deleted)")
        except OSError:
            continue
        if f"{MARK}={mark}".encode() in env.split(b"\0") or cwd.startswith(f"{root}/"):
            found.append(int(entry))
    return found


def postmasters(data_dir: str) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"/postgres") and data_dir.encode() in argv:
                out.append(int(entry))
    return out


def kill_and_wait(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)  # our child in this process: reap it like init would
        except ChildProcessError:
            pass
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return
        if stat[stat.rindex(")") + 2] in "ZX":
            return
        time.sleep(0.02)
    raise AssertionError(f"pid {pid} survived SIGKILL")


def running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def doc_pid(doc: dict[str, Any], name: str) -> int | None:
    return next(r["pid"] for r in doc["services"] if r["name"] == name)


def run_json(box: Box, action: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    code = sandbox.run_command(box.host, box.root, action, "json")
    out = capsys.readouterr().out
    return code, json.loads(out)


def pg_fetch(dsn: str, query: str) -> Any:
    async def go() -> Any:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetch(query)
        finally:
            await conn.close()

    return anyio.run(go)


# -- the shared sandbox ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def box() -> Iterator[Box]:
    root = Path(tempfile.mkdtemp(prefix="tars-sbx-"))
    os.chmod(root, 0o755)  # the postgres account must reach the cluster folder inside
    mark = uuid.uuid4().hex
    os.environ[MARK] = mark
    host = PluginHost()
    host.register(Alpha(), "sbx-alpha")
    host.register(Beta(), "sbx-beta")
    try:
        yield Box(root, host, mark)
    finally:
        sandbox.destroy(root)
        del os.environ[MARK]
        shutil.rmtree(root, ignore_errors=True)
        assert sandbox_pids(root, mark) == [], "sandbox processes left behind after destroy"


def test_up_announces_once_and_writes_a_loadable_config(box: Box) -> None:
    said: list[str] = []
    path = sandbox.ensure_running(box.host, box.root, announce=said.append)
    assert path == box.root / ".tars" / "sandbox" / "tars.yaml"
    assert len(said) == 1 and said[0].startswith("tars: no tars.yaml; using the sandbox at"), said
    assert "PostgreSQL :" in said[0] and "started in" in said[0]

    cfg, _ = load_config(path)
    t = cfg.targets
    assert t.postgres and t.postgres.endswith("/tars") and ":5432/" not in t.postgres
    assert t.redis and ":6379" not in t.redis
    assert t.prometheus_url and t.prometheus_rules_dir and t.grafana_dashboards_dir
    assert Path(t.prometheus_rules_dir).is_dir() and Path(t.grafana_dashboards_dir).is_dir()
    alpha = cfg.plugins["sbx-alpha"]
    assert alpha["greeting"] == "hi" and "targets" not in alpha  # target hints moved into targets
    assert t.websocket_url == f"ws://127.0.0.1:{alpha['port']}/ws"
    assert cfg.plugins["sbx-beta"] == {}


def test_services_are_real_seeded_and_scraped(box: Box) -> None:
    box.ensure()
    state = box.state()
    names = [s["name"] for s in state["services"]]
    assert names == ["postgres", "redis", "prometheus", "sbx-alpha.web", "sbx-beta.tree"]
    logs = box.root / ".tars" / "sandbox" / "logs"
    assert {p.name for p in logs.glob("*.log")} >= {"postgres.log", "redis.log", "prometheus.log"}

    # PostgreSQL runs unprivileged, in its own session, from a data folder that account owns
    pg = next(s for s in state["services"] if s["name"] == "postgres")
    status = Path(f"/proc/{pg['pid']}/status").read_text()
    uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
    if os.geteuid() == 0:
        assert uid != 0
        assert (Path(state["pg_dir"]) / "data").stat().st_uid == uid
    assert os.getsid(pg["pid"]) == pg["pid"]

    targets = box.targets()
    assert pg_fetch(targets["postgres"], "SELECT greeting FROM sbx_alpha_seed")[0]["greeting"] == "hi"
    r = redis_lib.Redis.from_url(targets["redis"])
    assert r.lrange(SEED_ORDER_KEY, 0, -1) == [b"sbx-alpha", b"sbx-beta"]  # dependency order
    r.close()

    prom = targets["prometheus_url"]
    with urllib.request.urlopen(f"{prom}/api/v1/rules", timeout=5) as resp:
        rules = json.load(resp)["data"]["groups"]
    assert any(rule["name"] == "sbx:alpha_up:sum" for g in rules for rule in g["rules"])
    with urllib.request.urlopen(f"{prom}/api/v1/status/config", timeout=5) as resp:
        loaded = yaml.safe_load(json.load(resp)["data"]["yaml"])
    jobs = {j["job_name"]: j for j in loaded["scrape_configs"]}
    alpha_port = box.state()["plugins"]["sbx-alpha"]["port"]
    assert jobs["sbx-alpha"]["static_configs"][0]["targets"] == [f"127.0.0.1:{alpha_port}"]


def test_second_up_reuses_the_healthy_sandbox(box: Box, capsys: pytest.CaptureFixture[str]) -> None:
    box.ensure()
    before = box.pids()
    said: list[str] = []
    sandbox.ensure_running(box.host, box.root, announce=said.append)
    assert said == []
    code, doc = run_json(box, "up", capsys)
    assert code == 0 and doc["state"] == "running" and doc["started"] == [] and not doc["created"]
    assert box.pids() == before
    assert len(postmasters(str(Path(box.state()["pg_dir"]) / "data"))) == 1


def test_concurrent_ups_after_down_start_one_cluster(box: Box) -> None:
    box.ensure()
    sandbox.down(box.root)
    said: list[str] = []
    errors: list[BaseException] = []

    def up() -> None:
        try:
            sandbox.ensure_running(box.host, box.root, announce=said.append)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=up) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(said) == 1, said  # the second caller found it healthy and said nothing
    assert len(postmasters(str(Path(box.state()["pg_dir"]) / "data"))) == 1
    assert sandbox.status(box.root)["state"] == "running"


def test_killed_services_are_reported_unhealthy_and_restarted_by_up(
    box: Box, capsys: pytest.CaptureFixture[str]
) -> None:
    box.ensure()
    before = box.pids()
    kill_and_wait(before["redis"])
    kill_and_wait(before["sbx-beta.tree"])

    code, doc = run_json(box, "status", capsys)
    assert code == 1 and doc["state"] == "degraded"
    health = {r["name"]: r["health"] for r in doc["services"]}
    assert health == {
        "postgres": "healthy",
        "redis": "unhealthy",
        "prometheus": "healthy",
        "sbx-alpha.web": "healthy",
        "sbx-beta.tree": "unhealthy",
    }
    assert next(r for r in doc["services"] if r["name"] == "redis")["pid"] is None

    code, doc = run_json(box, "up", capsys)
    assert code == 0 and doc["state"] == "running"
    assert sorted(doc["started"]) == ["redis", "sbx-beta.tree"]
    after = box.pids()
    assert after["redis"] != before["redis"] and after["sbx-beta.tree"] != before["sbx-beta.tree"]
    assert after["postgres"] == before["postgres"] and after["prometheus"] == before["prometheus"]


def test_killed_postgres_recovers_with_its_data(box: Box) -> None:
    box.ensure()
    before = box.pids()
    kill_and_wait(before["postgres"])
    assert sandbox.status(box.root)["state"] == "degraded"
    said: list[str] = []
    sandbox.ensure_running(box.host, box.root, announce=said.append)
    assert len(said) == 1 and "restarted postgres" in said[0], said
    assert box.pids()["postgres"] != before["postgres"]
    assert pg_fetch(box.targets()["postgres"], "SELECT greeting FROM sbx_alpha_seed")[0]["greeting"] == "hi"
    assert len(postmasters(str(Path(box.state()["pg_dir"]) / "data"))) == 1


def test_postgres_killed_under_a_busy_backend_is_restarted_by_the_next_up(box: Box) -> None:
    """Issue 18, defect 10: a backend busy in a CPU-bound query (PostgreSQL backends call setsid(), so the
    postmaster's session does not hold them) outlives a SIGKILLed postmaster and keeps the shared memory;
    ``up`` failed ("pre-existing shared memory block is still in use") until it ended. It must stop it."""
    box.ensure()
    dsn = box.targets()["postgres"]
    client = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import asyncio, asyncpg, sys\n"
            "async def main():\n"
            "    conn = await asyncpg.connect(sys.argv[1])\n"
            "    await conn.execute('CREATE TEMP TABLE busy AS SELECT g AS n FROM generate_series(1, 20000) g')\n"
            "    await conn.fetchval('SELECT count(*) FROM busy a, busy b, busy c')\n"
            "asyncio.run(main())\n",
            dsn,
        ],
        stderr=subprocess.DEVNULL,
    )
    try:

        def busy() -> list[Any]:
            return list(
                pg_fetch(
                    dsn,
                    "SELECT pid FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%busy a, busy b%' "
                    "AND pid <> pg_backend_pid()",
                )
            )

        deadline = time.monotonic() + 30
        while not (rows := [r for r in busy() if r["pid"]]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert rows, "the busy query never started"
        backend = int(rows[0]["pid"])
        kill_and_wait(box.pids()["postgres"])
        assert running(backend), "the busy backend should outlive its postmaster (that is the fault)"
        said: list[str] = []
        sandbox.ensure_running(box.host, box.root, announce=said.append)
        assert len(said) == 1 and "restarted postgres" in said[0], said
        assert not running(backend)
        assert pg_fetch(box.targets()["postgres"], "SELECT greeting FROM sbx_alpha_seed")[0]["greeting"] == "hi"
    finally:
        client.kill()
        client.wait()


def test_a_plugin_installed_later_joins_the_running_sandbox(box: Box) -> None:
    box.ensure()
    before = box.pids()
    box.host.register(Gamma(), "sbx-gamma")
    said: list[str] = []
    path = sandbox.ensure_running(box.host, box.root, announce=said.append)
    assert len(said) == 1 and "added sbx-gamma" in said[0], said
    assert box.pids() == before  # nothing restarted, Prometheus reloaded in place
    cfg, _ = load_config(path)
    assert cfg.plugins["sbx-gamma"] == {"joined": True}
    with urllib.request.urlopen(f"{cfg.targets.prometheus_url}/api/v1/status/config", timeout=5) as resp:
        loaded = yaml.safe_load(json.load(resp)["data"]["yaml"])
    assert "sbx-gamma" in {j["job_name"] for j in loaded["scrape_configs"]}


def test_down_leaves_no_process_and_up_brings_the_data_back(box: Box, capsys: pytest.CaptureFixture[str]) -> None:
    box.ensure()
    r = redis_lib.Redis.from_url(box.targets()["redis"])
    r.set("sbx:kept", "yes")
    r.close()
    alive = sandbox_pids(box.root, box.mark)
    assert len(alive) >= len(box.pids()) + 2  # postgres backends, the tree's two children

    code, doc = run_json(box, "down", capsys)
    assert code == 0 and set(doc["stopped"]) == set(box.pids()) and doc["not_running"] == []
    assert sandbox_pids(box.root, box.mark) == []
    code, doc = run_json(box, "status", capsys)
    assert code == 1 and doc["state"] == "stopped"
    assert {r["health"] for r in doc["services"]} == {"stopped"}
    code, doc = run_json(box, "down", capsys)
    assert code == 0 and doc["stopped"] == []

    said: list[str] = []
    sandbox.ensure_running(box.host, box.root, announce=said.append)
    assert len(said) == 1
    r = redis_lib.Redis.from_url(box.targets()["redis"])
    assert r.get("sbx:kept") == b"yes"  # saved on the clean stop
    r.close()
    assert pg_fetch(box.targets()["postgres"], "SELECT count(*) AS n FROM sbx_alpha_seed")[0]["n"] == 1


def test_reset_builds_a_fresh_sandbox_and_seeds_it_again(box: Box, capsys: pytest.CaptureFixture[str]) -> None:
    box.ensure()
    before = box.pids()
    code, doc = run_json(box, "reset", capsys)
    assert code == 0 and doc["created"] and doc["state"] == "running"
    after = box.pids()
    assert set(after) == set(before) and all(after[n] != before[n] for n in before)
    r = redis_lib.Redis.from_url(box.targets()["redis"])
    assert r.get("sbx:kept") is None
    assert r.lrange(SEED_ORDER_KEY, 0, -1) == [b"sbx-alpha", b"sbx-beta"]
    r.close()
    assert len(postmasters(str(Path(box.state()["pg_dir"]) / "data"))) == 1


def test_text_output_goes_to_stderr(box: Box, capsys: pytest.CaptureFixture[str]) -> None:
    box.ensure()
    capsys.readouterr()
    assert sandbox.run_command(box.host, box.root, "status", "text") == 0
    out, err = capsys.readouterr()
    assert out == ""
    assert "running" in err and "postgres" in err and "healthy" in err
    with pytest.raises(UsageError, match="unknown sandbox action"):
        sandbox.run_command(box.host, box.root, "start", "text")


def test_the_cli_reports_and_stops_the_same_sandbox(box: Box) -> None:
    """``tars-run sandbox status|down`` from the sandbox's folder, through the real command line."""
    box.ensure()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tars_core.cli", *args], cwd=box.root, capture_output=True, text=True, timeout=120
        )

    done = cli("sandbox", "status", "--format", "json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["state"] == "running" and {r["name"]: r["pid"] for r in doc["services"]} == box.pids()
    done = cli("sandbox", "down")
    assert done.returncode == 0 and done.stdout == "" and "sandbox stopped" in done.stderr, done.stderr
    assert sandbox_pids(box.root, box.mark) == []
    done = cli("sandbox", "status")
    assert done.returncode == 1 and "stopped" in done.stderr


def start_ticks(pid: int) -> int:
    """Field 22 of ``/proc/<pid>/stat``: what a format-1 ``state.json`` recorded as ``start_ticks``."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[19])


def test_a_state_written_by_the_previous_format_keeps_its_running_services(
    box: Box, capsys: pytest.CaptureFixture[str]
) -> None:
    """A sandbox built by an older tars-run (pids identified by start ticks) is taken over as it runs."""
    box.ensure()
    before = box.pids()
    old = box.state()
    for svc in old["services"]:
        del svc["create_time"]
        svc["start_ticks"] = start_ticks(svc["pid"])
    old["version"] = 1
    (box.root / ".tars" / "sandbox" / "state.json").write_text(json.dumps(old))

    assert sandbox.status(box.root)["state"] == "running"
    code, doc = run_json(box, "up", capsys)
    assert code == 0 and doc["started"] == [] and not doc["created"]
    state = box.state()
    assert state["version"] == 2 and all(s["create_time"] for s in state["services"])
    assert box.pids() == before


def test_a_plugin_not_loaded_this_time_keeps_its_place_and_an_uninstalled_one_leaves(box: Box) -> None:
    """Failing to load, or left out by TARS_LOAD_PLUGINS, a plugin is still installed: its services stay."""
    box.ensure()
    tree = box.pids()["sbx-beta.tree"]
    box.host.unregister("sbx-beta")

    def up_keeps_beta() -> None:
        assert sandbox.run_command(box.host, box.root, "up", "json") == 0
        assert box.pids()["sbx-beta.tree"] == tree and "sbx-beta" in box.state()["contributed"]

    box.host.failures["sbx-beta"] = LoadFailure("sbx-beta", "sbx-beta", "0.1", "ImportError: half-done edit")
    try:
        up_keeps_beta()
    finally:
        del box.host.failures["sbx-beta"]
    box.host.not_allowed["sbx-beta"] = "sbx-beta"
    try:
        up_keeps_beta()
    finally:
        del box.host.not_allowed["sbx-beta"]

    assert sandbox.run_command(box.host, box.root, "up", "json") == 0  # now it is really gone
    assert "sbx-beta.tree" not in box.pids() and "sbx-beta" not in box.state()["contributed"]
    assert not running(tree)
    box.host.register(Beta(), "sbx-beta")
    said: list[str] = []
    sandbox.ensure_running(box.host, box.root, announce=said.append)
    assert len(said) == 1 and "added sbx-beta" in said[0], said
    assert running(box.pids()["sbx-beta.tree"])


# -- separate roots -------------------------------------------------------------------------------


def test_missing_binaries_are_named_with_the_package_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(UsageError) as info:
        sandbox.ensure_running(PluginHost(), tmp_path, announce=print)
    msg = str(info.value)
    assert "\n" not in msg
    assert "redis-server: apt-get install -y redis-server" in msg and "targets.redis" in msg
    assert "prometheus: apt-get install -y prometheus" in msg
    assert not (tmp_path / ".tars" / "sandbox" / "state.json").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the cluster as another account")
def test_cluster_moves_out_of_a_folder_postgres_cannot_reach() -> None:
    parent = Path(tempfile.mkdtemp(prefix="tars-sbx-private-"))  # 0700, like /root
    root = parent / "checkout"
    root.mkdir()
    try:
        sandbox.ensure_running(PluginHost(), root, announce=lambda _: None)
        link = root / ".tars" / "sandbox" / "pg"
        assert link.is_symlink() and str(link.resolve()).startswith("/var/tmp/tars-sandbox-")
        assert sandbox.status(root)["state"] == "running"
        outside = link.resolve().parent
    finally:
        sandbox.destroy(root)
        shutil.rmtree(parent, ignore_errors=True)
    assert not outside.exists()


def test_prometheus_config_is_one_prometheus_accepts(tmp_path: Path) -> None:
    """The core's one Prometheus config writer, as plugins use it for their own servers."""
    text = sandbox.prometheus_config(
        {"tars": ["127.0.0.1:9101", "127.0.0.1:9102"], "idle": []},
        rule_files=[str(tmp_path / "rules" / "*.yml")],
        scrape_interval="15s",
        evaluation_interval="30s",
        comment="written by a test\nsecond line",
    )
    assert text.startswith("# written by a test\n# second line\n")
    doc = yaml.safe_load(text)
    assert doc["global"] == {"scrape_interval": "15s", "evaluation_interval": "30s"}
    assert doc["rule_files"] == [str(tmp_path / "rules" / "*.yml")]
    assert doc["scrape_configs"] == [
        {"job_name": "tars", "static_configs": [{"targets": ["127.0.0.1:9101", "127.0.0.1:9102"]}]}
    ]
    (tmp_path / "prometheus.yml").write_text(text)
    promtool("check", "config", str(tmp_path / "prometheus.yml"))  # .ci/run installs promtool; raises if refused


class Broken:
    """A plugin whose seed fails: the sandbox must say which plugin, where the traceback is, how to skip it."""

    @hookimpl
    def tars_plugin_info(self) -> PluginInfo:
        return PluginInfo(name="sbx-broken", title="sandbox test broken seed")

    @hookimpl
    def tars_sandbox_seed(self, ctx: Context) -> None:
        raise RuntimeError("schema file missing")


def test_a_failing_seed_is_named_and_a_corrupt_state_is_reset(capsys: pytest.CaptureFixture[str]) -> None:
    root = Path(tempfile.mkdtemp(prefix="tars-sbx-broken-"))
    os.chmod(root, 0o755)
    host = PluginHost()
    host.register(Broken(), "sbx-broken")
    try:
        with pytest.raises(sandbox.SandboxError) as info:
            sandbox.ensure_running(host, root, announce=lambda _: None)
        msg = str(info.value)
        assert "plugin sbx-broken: tars_sandbox_seed failed (RuntimeError: schema file missing)" in msg
        assert "-p no:sbx-broken" in msg and "\n" not in msg
        assert "schema file missing" in (root / ".tars" / "sandbox" / "logs" / "sandbox.log").read_text()

        host.unregister("sbx-broken")  # skipped: the sandbox comes up without it, same cluster
        pg_before = json.loads((root / ".tars" / "sandbox" / "state.json").read_text())["services"][0]["pid"]
        said: list[str] = []
        sandbox.ensure_running(host, root, announce=said.append)
        assert len(said) == 1 and "restarted prometheus" in said[0], said
        state = json.loads((root / ".tars" / "sandbox" / "state.json").read_text())
        assert state["services"][0]["pid"] == pg_before and "sbx-broken" not in state["contributed"]

        old_pids = {s["name"]: s["pid"] for s in state["services"]}
        (root / ".tars" / "sandbox" / "state.json").write_text("{not json")
        with pytest.raises(sandbox.SandboxError, match="sandbox reset"):
            sandbox.status(root)
        capsys.readouterr()
        assert sandbox.run_command(host, root, "reset", "json") == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["created"] and doc["state"] == "running"
        assert len(postmasters(str(Path(state["pg_dir"]) / "data"))) == 1
        for name, pid in old_pids.items():  # found through their TARS_SANDBOX_DIR mark, without state.json
            assert not running(pid) or pid == doc_pid(doc, name), name
    finally:
        sandbox.destroy(root)
        shutil.rmtree(root, ignore_errors=True)
