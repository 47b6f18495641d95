"""Fixtures for the core tests: real plugin distributions on disk, the real ``tars-run`` binary, and
fresh PostgreSQL databases (created per test, dropped after; the machine's other data is never touched)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from plugin_factory import write_dist

from tars_core.waiting import wait_until

TARS_RUN = shutil.which("tars-run") or "tars-run"


class InFlight:
    """A ``tars-run`` started by :meth:`Project.start`."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.out = self.err = ""

    def wait_for(self, path: Path, timeout: float = 60) -> None:
        """Until ``path`` exists (a hook in flight wrote it); fails with the run's output if it ended."""

        def written() -> bool:
            assert self.proc.poll() is None, self.proc.communicate()
            return path.exists()

        wait_until(written, timeout=timeout, interval=0.05, what=f"{path.name} written by the run")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 120) -> int:
        """Send ``sig`` and collect the run's exit code and output (``out``, ``err``)."""
        self.proc.send_signal(sig)
        self.out, self.err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode


class Project:
    """A working folder with a plugin distribution on PYTHONPATH and a tars.yaml, driven through the CLI."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.site = root / "site"
        self.work = root / "work"
        self.work.mkdir(parents=True)
        self.plugins: list[str] = []

    def dist(self, dist: str, plugins: dict[str, list[str]], **kw: object) -> None:
        write_dist(self.site, dist, plugins, **kw)  # type: ignore[arg-type]
        self.plugins += list(plugins)

    def module(self, name: str, source: str, *, release: bool = True) -> None:
        """Install plugin ``name`` whose entry-point module is ``source`` (its own one-plugin distribution).

        ``release=False`` is an observer or wrapper: loaded by every command, never selected or configured.
        """
        module = "tpx_" + name.replace("-", "_")
        self.site.mkdir(parents=True, exist_ok=True)
        (self.site / f"{module}.py").write_text(textwrap.dedent(source))
        info = self.site / f"{module}-0.1.0.dist-info"
        info.mkdir(parents=True, exist_ok=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1.0\n")
        (info / "entry_points.txt").write_text(f"[tars.plugins]\n{name} = {module}\n")
        (info / "RECORD").write_text("")
        if release:
            self.plugins.append(name)

    def config(self, plugins: dict[str, dict[str, object]] | None = None, **extra: object) -> Path:
        doc: dict[str, object] = {"plugins": {n: {"dir": str(self.work)} for n in self.plugins}}
        for name, section in (plugins or {}).items():
            doc["plugins"][name].update(section)  # type: ignore[index]
        doc.update(extra)
        # no bake unless a test asks for one: the production default (minutes) would only slow tests down
        release = doc.setdefault("release", {})
        if isinstance(release, dict):
            release.setdefault("bake_time", 0)
        path = self.work / "tars.yaml"
        path.write_text(yaml.safe_dump(doc))
        return path

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(self.site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env.update(extra)
        return env

    def cmd(self, *args: str, select: bool = True) -> list[str]:
        sel = ["--plugins", ",".join(self.plugins)] if select and self.plugins else []
        return [TARS_RUN, *sel, *args]

    def run(
        self, *args: str, select: bool = True, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.cmd(*args, select=select),
            cwd=self.work,
            env=env or self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    @contextlib.contextmanager
    def start(self, *args: str, env: dict[str, str] | None = None) -> Iterator[InFlight]:
        """``tars-run ARGS`` in the background, for lock, Ctrl-C and crash tests that act on a run while
        it is in flight; a run still alive when the block ends is killed, so no test leaves one behind."""
        proc = subprocess.Popen(
            self.cmd(*args),
            cwd=self.work,
            env=env or self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            yield InFlight(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()

    def json(self, *args: str, **kw: object) -> tuple[int, dict[str, object]]:
        res = self.run("--format", "json", *args, **kw)  # type: ignore[arg-type]
        return res.returncode, json.loads(res.stdout) if res.stdout.strip() else {}

    def calls(self) -> list[str]:
        log = self.work / "calls.log"
        return log.read_text().splitlines() if log.exists() else []

    def applied(self) -> set[str]:
        return {p.name.removesuffix(".applied") for p in self.work.glob("*.applied")}


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(tmp_path)


@pytest.fixture
def three(project: Project) -> Project:
    """Three fixes a <- b <- c (c requires b requires a) in one third-party distribution."""
    project.dist("acme-fixes", {"fix-c": ["fix-b"], "fix-a": [], "fix-b": ["fix-a"]}, fix_ids={"fix-a": "ACME-1"})
    return project
