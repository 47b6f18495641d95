"""What the sandbox release tests of this folder share: ``tars-run`` in a sandbox, and a release with an
incident injected the moment a fix's bake starts (as an operator would, with the documented command)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import attrs

TARS_RUN = str(Path(sys.executable).with_name("tars-run"))


def run(cwd: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TARS_RUN, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


@attrs.frozen
class Disturbed:
    """How a release with an injected incident ended: its exit code, its stderr lines, and when the
    incident went in (monotonic; ``None``: the trigger line never came)."""

    code: int
    lines: list[str]
    injected: float | None

    @property
    def stderr(self) -> str:
        return "".join(self.lines)


def apply_with_incident(
    root: Path, config: Path, plugins: str, *, trigger: str, incident: Sequence[str], timeout: float = 300
) -> Disturbed:
    """``tars-run apply``, with ``tars-run sandbox incident *incident`` run when ``trigger`` shows on its
    stderr; the incident is cleared whatever happens."""
    cmd = [TARS_RUN, "--config", str(config), "--plugins", plugins, "apply"]
    proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    injected: float | None = None
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if injected is None and trigger in line:
                started = run(root, "sandbox", "incident", *incident)
                assert started.returncode == 0, started.stderr
                injected = time.monotonic()
        code = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
        run(root, "sandbox", "incident", "--clear")
    return Disturbed(code, lines, injected)
