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
