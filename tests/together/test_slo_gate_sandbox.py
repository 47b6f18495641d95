"""The SLO gate inside a real release on the embedded sandbox, every plugin installed (nox ``together``).

What an operator would try: inject a fast burn (20x the API availability budget) with the documented
``tars-run sandbox incident`` command while a fix bakes, and expect ``tars-run apply`` to roll that fix
back and say why; and expect a release that is not a reliability release to be frozen while an SLO's
budget is spent. The sandbox's own traffic, Prometheus and rules, no stand-ins.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from releases import apply_with_incident, run

PLUGINS = "tars-slo-monitor,tars-1001-ws"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("sandbox")
    up = run(root, "sandbox", "up")
    assert up.returncode == 0, up.stderr
    try:
        yield root
    finally:
        run(root, "sandbox", "down")


def _config(root: Path, name: str, **release: Any) -> Path:
    doc = yaml.safe_load((root / ".tars" / "sandbox" / "tars.yaml").read_text())
    doc["release"].update(release)
    doc["state"] = {"url": f"sqlite:///{root / (name + '.db')}"}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_an_injected_fast_burn_during_a_bake_rolls_that_fix_back(sandbox: Path) -> None:
    config = _config(sandbox, "burn", bake_times={"tars-1001-ws": 120})
    burn = apply_with_incident(
        sandbox,
        config,
        PLUGINS,
        trigger="tars-1001-ws: observed by tars-slo-monitor",
        incident=("--errors", "0.2", "--for", "4m"),
    )
    lines, injected = burn.lines, burn.injected
    assert injected is not None, burn.stderr
    assert burn.code == 1, burn.stderr
    final = lines[-1]
    # either reason is the gate working: the bake-window burn, or the page tier that burn sets off (which of
    # the two the monitor sees first depends on where the bake's polls fall against the rule evaluations)
    assert "tars-1001-ws failed (monitor tars-slo-monitor judged it fail: api-availability: " in final
    assert "rolled back tars-1001-ws, tars-slo-monitor" in final
    print(f"incident to exit: {time.monotonic() - injected:.0f} s (target: rolled back within 180 s)")

    status = run(sandbox, "--config", str(config), "--plugins", PLUGINS, "--format", "json", "status")
    states = {p["plugin"]: p["state"] for p in json.loads(status.stdout)["plugins"]}
    assert states == {"tars-slo-monitor": "rolled_back", "tars-1001-ws": "rolled_back"}, status.stdout
    report = run(sandbox, "--config", str(config), "--plugins", PLUGINS, "report")
    assert report.returncode == 0, report.stderr
    text = "\n".join(p.read_text() for p in sandbox.glob("**/report*.md"))
    assert "api-availability: error budget burning at" in text or "api-availability: page tier" in text
    assert "SLO monitor: error budget spent by the release" in text


def test_a_release_that_is_not_a_reliability_release_is_frozen_while_a_budget_is_spent(sandbox: Path) -> None:
    # the sandbox's simulated latency overspends the api-latency budget (its 95 % under 150 ms objective)
    config = _config(sandbox, "freeze", reliability=False, bake_time=0)
    proc = run(sandbox, "--config", str(config), "--plugins", PLUGINS, "apply")
    assert proc.returncode == 1, proc.stderr
    assert "release frozen by the error-budget policy: " in proc.stderr
    status = run(sandbox, "--config", str(config), "--plugins", PLUGINS, "--format", "json", "status")
    states = {p["plugin"]: p["state"] for p in json.loads(status.stdout)["plugins"]}
    assert states["tars-1001-ws"] != "applied", status.stdout  # nothing of the release was applied
