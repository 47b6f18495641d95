"""Finding the server binaries a new sandbox runs: PostgreSQL's initdb/postgres, redis-server, prometheus.

Looked up only when a sandbox is created: the recorded argv of each service names its binary after that,
so a healthy sandbox never pays for the search.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

import attrs

from tars_core.errors import UsageError


@attrs.frozen
class Binaries:
    pg_bindir: Path
    redis: str
    prometheus: str

    def pg(self, tool: str) -> str:
        return str(self.pg_bindir / tool)


def _has_server(bindir: Path) -> bool:
    return (bindir / "initdb").exists() and (bindir / "postgres").exists()


def _pg_config_bindir() -> Path | None:
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        return None
    try:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(out.stdout.strip())


def _debian_bindirs() -> list[Path]:
    """Debian's versioned folders (``/usr/lib/postgresql/<version>/bin``), newest first."""

    def version(bindir: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in bindir.parent.name.split(".") if x.isdigit())

    found = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    return sorted(found, key=version, reverse=True)


def pg_bindir() -> Path | None:
    """Where initdb/postgres live: PATH, then ``pg_config --bindir``, then Debian's versioned folders.

    Debian puts only wrapper scripts on PATH (no ``initdb``), hence the fallbacks.
    """
    initdb = shutil.which("initdb")
    if initdb and _has_server(Path(os.path.realpath(initdb)).parent):
        return Path(os.path.realpath(initdb)).parent
    configured = _pg_config_bindir()
    if configured is not None and _has_server(configured):
        return configured
    return next((b for b in _debian_bindirs() if _has_server(b)), None)


def find_binaries() -> Binaries:
    """The server binaries the sandbox needs, or a one-line ``UsageError`` saying how to get each."""
    missing: list[str] = []
    bindir = pg_bindir()
    if bindir is None:
        missing.append(
            "PostgreSQL server (initdb/postgres not on PATH, via pg_config --bindir or in "
            "/usr/lib/postgresql/*/bin): apt-get install -y postgresql, or point targets.postgres at a server"
        )
    redis = shutil.which("redis-server")
    if redis is None:
        missing.append("redis-server: apt-get install -y redis-server, or point targets.redis at a server")
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        missing.append("prometheus: apt-get install -y prometheus, or point targets.prometheus_url at a server")
    if missing:
        raise UsageError(
            "the sandbox cannot start, missing " + "; ".join(missing) + " (in a tars.yaml passed with --config)"
        )
    assert bindir is not None and redis is not None and prometheus is not None
    return Binaries(bindir, redis, prometheus)
