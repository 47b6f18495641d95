"""Issue 18 (faults get the contract's answer): the cases of this plugin, on real servers."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from tars_1001_ws import plugin

from tars_core.processes import Service, free_port, http_ready, tcp_ready
from tars_core.testing import assert_bad_config_refused

pytestmark = [pytest.mark.timeout(300)]


def test_every_bad_config_value_is_refused_naming_its_key() -> None:
    """Defects 5 and 7: every numeric and enum key (verify_channels, probe_timeout, ...) with a value of the wrong
    kind or out of range is refused on one line that names it, before anything runs."""
    cases = assert_bad_config_refused(plugin)
    assert len({c.path for c in cases}) > 5


@pytest.fixture
def hub_url(tars_redis_url: str, tars_redis_prefix: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A real hub process obeying the flag in our own hash on the real Redis: (websocket URL, flags key)."""
    key = f"{tars_redis_prefix}:faults:flags"
    port = free_port()
    argv = [sys.executable, "-m", "tars_1001_ws.hub", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--flags-redis", tars_redis_url, "--flags-key", key, "--flag", "tars-1001-ws-reconnect"]
    ready = http_ready(f"http://127.0.0.1:{port}/tars-ws/info")
    with Service("hub", argv, log=tmp_path / "hub.log", ready=ready, start_timeout=30):
        yield f"ws://127.0.0.1:{port}/", key


def _run(tmp_path: Path, redis: str, hub: tuple[str, str], command: str) -> subprocess.CompletedProcess[str]:
    doc = {
        "targets": {"websocket_url": hub[0], "redis": redis, "flags_key": hub[1]},
        "release": {"bake_time": 0, "rollback_retry_delay": 0.1},
    }
    (tmp_path / "tars.yaml").write_text(yaml.safe_dump(doc))
    argv = [str(Path(sys.executable).with_name("tars-run")), "--plugins", "TARS-1001", "--config", "tars.yaml"]
    argv += ["--state", f"sqlite:///{tmp_path / 'ledger.db'}", command]
    return subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=180)


def _one_line(res: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in res.stderr.splitlines() if line.startswith("tars-run:")]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    return lines[0]


def test_redis_unreachable_or_refusing_the_password_is_exit_2_never_4(
    hub_url: tuple[str, str], tars_redis_url: str, tmp_path: Path
) -> None:
    """Defect 6: with the fix applied, a rollback against an unreachable Redis exited 4 (manual action)
    though it changed nothing. Now: exit 2 naming targets.redis, the fix left applied, and the rollback
    done by the next ordinary run once Redis answers. A Redis that refuses the password is exit 2 too."""
    assert _run(tmp_path, tars_redis_url, hub_url, "apply").returncode == 0
    closed = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    res = _run(tmp_path, closed, hub_url, "rollback")
    assert res.returncode == 2, res.stderr
    line = _one_line(res)
    assert "targets.redis" in line and "again once the target answers" in line and "s3cret" not in res.stderr
    assert _run(tmp_path, tars_redis_url, hub_url, "rollback").returncode == 0

    port = free_port()
    argv = ["redis-server", "--port", str(port), "--requirepass", "right", "--save", "", "--appendonly", "no"]
    with Service("redis", argv, log=tmp_path / "redis.log", ready=tcp_ready(port), start_timeout=30):
        wrong = f"redis://:wrong@127.0.0.1:{port}/0"
        for command in ("apply", "verify", "rollback"):
            res = _run(tmp_path, wrong, hub_url, command)
            assert res.returncode == (0 if command == "rollback" else 2), (command, res.stderr)
            assert "wrong" not in res.stderr, res.stderr
