"""The SLO gate letting a healthy release through, on the embedded sandbox (nox ``together``).

The other half of test_slo_gate_sandbox.py (whose ``sandbox`` fixture and helpers this module reuses; it
gets a sandbox of its own, module-scoped): TARS-1001 released under ``tars-slo-monitor`` with the
sandbox's short bake and no incident injected must come through ``tars-run apply`` with exit 0, both
plugins applied, and the monitor's pass judgement of the fix in the ledger and the report. The
sandbox's own traffic, Prometheus and rules, no stand-ins; its steady background burns (queue wait,
trace continuity without TARS-1003) are there before the release and must not be blamed on the fix.
"""

from __future__ import annotations

import json
from pathlib import Path

from test_slo_gate_sandbox import PLUGINS, TARS_RUN, _config, _run, sandbox  # noqa: F401 (sandbox: fixture)

BAKE_S = 15  # the sandbox's own release.bake_time, named here so the test reads what it checks


def test_a_clean_release_passes_the_gate_after_a_real_bake(sandbox: Path) -> None:  # noqa: F811
    config = _config(sandbox, "pass", bake_times={"tars-1001-ws": BAKE_S})
    proc = _run(sandbox, "--config", str(config), "--plugins", PLUGINS, "apply", timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"tars-1001-ws: observed by tars-slo-monitor for {BAKE_S}s" in proc.stderr
    assert "tars-slo-monitor: observe of tars-1001-ws pass: " in proc.stderr, proc.stderr

    status = _run(sandbox, "--config", str(config), "--plugins", PLUGINS, "--format", "json", "status")
    states = {p["plugin"]: p["state"] for p in json.loads(status.stdout)["plugins"]}
    assert states == {"tars-slo-monitor": "applied", "tars-1001-ws": "applied"}, status.stdout

    report = _run(sandbox, "--config", str(config), "--plugins", PLUGINS, "report")
    assert report.returncode == 0, report.stderr
    (path,) = sandbox.glob(".tars/reports/v1.0.1/report.json")
    judged = json.loads(path.read_text())["judgements"]
    observed = [j for j in judged if j["monitor"] == "tars-slo-monitor" and j["kind"] == "observe"]
    assert [(j["plugin"], j["verdict"]) for j in observed] == [("tars-1001-ws", "pass")], observed
    (reason,) = observed[0]["reasons"]
    assert reason.endswith(f"SLO(s) burned below 14.4x during the {BAKE_S}s bake"), reason
    details = [e["detail"] for e in observed[0]["evidence"]]
    assert any(d.startswith("budget spent by the release api-availability: ") for d in details), details
    assert any(d.startswith("burn ") and "since tars-1001-ws was applied" in d for d in details), details
    text = path.with_name("report.md").read_text()
    assert "| tars-slo-monitor | observe of tars-1001-ws | pass |" in text
    assert "SLO monitor: error budget spent by the release" in text
    assert "preflight release: pass; observe tars-1001-ws: pass" in text
