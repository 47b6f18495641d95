"""Issue 18 defects of TARS-1002 on a real Prometheus: what apply and rollback leave behind, to the byte and
the mode (a dashboard that came back 0600 is unreadable by the Grafana that owns it)."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

from tars_1002_grafana import plugin
from tars_1002_grafana.rules import RULE_FILE_NAME

from tars_core.testing import assert_bad_config_refused, make_context

PREVIOUS_RULES = (
    b"groups:\r\n  - name: site_rules\r\n    rules:\r\n      - record: site:up:sum\r\n        expr: sum(up)\r\n"
)


def _files(*dirs: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p): (p.read_bytes(), stat.S_IMODE(p.stat().st_mode)) for d in dirs for p in sorted(d.iterdir())}


def test_apply_then_rollback_gives_back_every_byte_and_mode(env: Any) -> None:
    """Files of modes 0644 and 0640 (one rule file with CRLF line ends) keep their mode while the fix is
    applied and come back byte- and mode-equal after rollback; the backups are private (0600)."""
    env.rules_dir.mkdir(exist_ok=True)
    (env.rules_dir / RULE_FILE_NAME).write_bytes(PREVIOUS_RULES)
    dashboards = sorted(env.dash_dir.iterdir())
    for i, path in enumerate([env.rules_dir / RULE_FILE_NAME, *dashboards]):
        path.chmod(0o640 if i % 2 else 0o644)
    before = _files(env.rules_dir, env.dash_dir)
    ctx = make_context(plugin, targets=env.targets, config={"verify_data": False}, state_dir=env.state_dir)

    assert plugin.tars_apply(ctx).changed
    during = _files(env.rules_dir, env.dash_dir)
    assert {p: mode for p, (_, mode) in during.items()} == {p: mode for p, (_, mode) in before.items()}
    assert any(during[p][0] != before[p][0] for p in before), "apply changed nothing"
    backups = list((env.state_dir / "backup").iterdir())
    assert backups and all(stat.S_IMODE(b.stat().st_mode) == 0o600 for b in backups)

    assert plugin.tars_rollback(ctx).changed
    assert _files(env.rules_dir, env.dash_dir) == before


def test_every_bad_config_value_is_refused_naming_its_key() -> None:
    """Defects 5 and 7: the matrix generated from GrafanaConfig (reload_timeout_s: -5 used to pass, and
    reload_method: ftp read "unknown error"), each refused on one line before anything runs."""
    cases = assert_bad_config_refused(plugin)
    assert {"reload_timeout_s", "reload_method", "extra_rules", "verify_data"} <= {c.path for c in cases}


def test_ctrl_c_while_rules_load_stops_the_apply_and_gives_everything_back(env: Any, tmp_path: Path) -> None:
    """Defect 2: Ctrl-C during apply. The apply is a sync hook waiting (up to reload_timeout_s) for its
    rules to evaluate; its thread lived on after the run's last line (100 s), or, past timeout_grace, the
    run gave up with exit 4 and the target half-applied. Now the wait ends at the stop request: exit 130,
    one line, the apply interrupted and rolled back, every file byte- and mode-equal, no rule loaded."""
    import signal
    import sqlite3
    import subprocess
    import sys

    import yaml

    from tars_core.waiting import wait_until

    env.rules_dir.mkdir(exist_ok=True)
    before = _files(env.rules_dir, env.dash_dir)
    doc = {
        "targets": {
            "prometheus_url": env.server.url,
            "prometheus_rules_dir": str(env.rules_dir),
            "grafana_dashboards_dir": str(env.dash_dir),
        },
        "release": {"bake_time": 0, "timeout_grace": 5},
        "plugins": {"tars-1002-grafana": {"reload_timeout_s": 120, "verify_data": False}},
    }
    (tmp_path / "tars.yaml").write_text(yaml.safe_dump(doc))
    argv = [str(Path(sys.executable).with_name("tars-run")), "--plugins", "TARS-1002", "--config", "tars.yaml"]
    argv += ["--state", f"sqlite:///{tmp_path / 'ledger.db'}", "apply"]
    run = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: (env.rules_dir / RULE_FILE_NAME).exists(), timeout=120, interval=0.01, what="rule file")
        run.send_signal(signal.SIGINT)
        _, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 130, err
    lines = [line for line in err.splitlines() if line.startswith("tars-run:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert _files(env.rules_dir, env.dash_dir) == before
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        rows = db.execute("SELECT phase, outcome FROM tars_phases ORDER BY id").fetchall()
    assert rows == [("apply", "interrupted"), ("rollback", "ok")], rows
    from tars_core.prometheus import Prometheus

    with Prometheus(env.server.url) as prom:
        assert prom.rule_groups() == []
