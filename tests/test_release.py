"""The real ``tars-run`` binary driving third-party plugin distributions through releases.

Every failure case checks the contract's exit code, one clear line on stderr and no traceback.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
from collections.abc import Callable

import pytest
from conftest import Project

from tars_core.processes import free_port


def one_clear_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("tars-run:")]
    assert "Traceback" not in stderr, stderr
    assert lines, stderr
    return lines[-1]


def test_list_json_shows_third_party_plugins(three: Project) -> None:
    code, doc = three.json("list", select=False)
    assert code == 0
    rows = {r["name"]: r for r in doc["plugins"]}  # type: ignore[union-attr]
    for name in ("fix-a", "fix-b", "fix-c"):
        assert rows[name]["distribution"] == "acme-fixes"
        assert rows[name]["version"] == "0.1.0"
        assert rows[name]["kind"] == "hotfix"
        assert rows[name]["title"] == f"test fix {name}"


def test_plan_orders_by_requires_and_accepts_fix_ids(three: Project) -> None:
    three.config()
    code, doc = three.json("plan")
    assert code == 0
    assert [r["plugin"] for r in doc["plugins"]] == ["fix-a", "fix-b", "fix-c"]  # type: ignore[index]
    res = three.run("--plugins", "ACME-1", "--format", "json", "plan", select=False)
    assert [r["plugin"] for r in json.loads(res.stdout)["plugins"]] == ["fix-a"]


def test_selecting_a_plugin_brings_its_requirements(three: Project) -> None:
    three.config()
    res = three.run("--plugins", "fix-c", "--format", "json", "plan", select=False)
    assert [r["plugin"] for r in json.loads(res.stdout)["plugins"]] == ["fix-a", "fix-b", "fix-c"]


def test_apply_then_idempotent_rerun(three: Project) -> None:
    three.config()
    code, doc = three.json("apply")
    assert code == 0, doc
    assert three.applied() == {"fix-a", "fix-b", "fix-c"}
    first = three.calls()
    assert first == [
        "apply fix-a",
        "verify fix-a",
        "apply fix-b",
        "verify fix-b",
        "apply fix-c",
        "verify fix-c",
    ]
    code, doc = three.json("apply")
    assert code == 0
    assert three.calls()[len(first) :] == ["verify fix-a", "verify fix-b", "verify fix-c"]
    skipped = [s for s in doc["steps"] if s["phase"] == "apply"]  # type: ignore[union-attr]
    assert all(s["outcome"] == "skipped" for s in skipped) and len(skipped) == 3
    code, status = three.json("status")
    assert {r["plugin"]: r["state"] for r in status["plugins"]} == dict.fromkeys(  # type: ignore[union-attr]
        ["fix-a", "fix-b", "fix-c"], "applied"
    )


def test_rerun_reapplies_when_fix_is_no_longer_in_place(three: Project) -> None:
    three.config()
    assert three.run("apply").returncode == 0
    (three.work / "fix-b.applied").unlink()  # someone reverted it by hand
    code, doc = three.json("apply")
    assert code == 0
    applied = [s["plugin"] for s in doc["steps"] if s["phase"] == "apply" and s["outcome"] == "ok"]  # type: ignore
    assert applied == ["fix-b"]


def test_third_plugin_fails_verify_rolls_back_in_reverse_order(three: Project) -> None:
    three.config({"fix-c": {"fail_verify": True}})
    res = three.run("--format", "json", "apply")
    assert res.returncode == 1
    doc = json.loads(res.stdout)
    assert doc["rolled_back"] == ["fix-c", "fix-b", "fix-a"]
    assert three.calls()[-3:] == ["rollback fix-c", "rollback fix-b", "rollback fix-a"]
    assert three.applied() == set()
    assert "fix-c failed" in one_clear_line(res.stderr)
    # the report tells the same story, junit included
    assert three.run("report").returncode == 0
    report = three.work / ".tars" / "reports" / "v1.0.1"
    junit = (report / "junit.xml").read_text()
    assert 'classname="fix-c" name="verify"><failure' in junit
    data = json.loads((report / "report.json").read_text())
    assert {p["name"]: p["state"] for p in data["plugins"]} == dict.fromkeys(["fix-a", "fix-b", "fix-c"], "rolled_back")
    assert "fix-a notes" in (report / "report.md").read_text()


def test_no_rollback_leaves_applied_fixes(three: Project) -> None:
    three.config({"fix-c": {"fail_verify": True}})
    res = three.run("--no-rollback", "apply")
    assert res.returncode == 1
    assert not any(c.startswith("rollback") for c in three.calls())
    assert three.applied() == {"fix-a", "fix-b", "fix-c"}
    assert "--no-rollback" in one_clear_line(res.stderr)


def test_failed_rollback_exits_4_and_names_the_plugin(three: Project) -> None:
    three.config({"fix-c": {"fail_apply": True}, "fix-a": {"fail_rollback": True}})
    res = three.run("apply")
    assert res.returncode == 4
    line = one_clear_line(res.stderr)
    assert "rollback FAILED for fix-a" in line and "manual action" in line
    _, status = three.json("status")
    assert {r["plugin"]: r["state"] for r in status["plugins"]}["fix-a"] == "rollback_failed"  # type: ignore


def test_hook_timeout_fails_the_step_and_rolls_back(three: Project) -> None:
    three.config({"fix-b": {"sleep_apply": 60}}, release={"plugin_timeouts": {"fix-b": {"apply": 0.5}}})
    res = three.run("--format", "json", "apply")
    assert res.returncode == 1
    doc = json.loads(res.stdout)
    step = next(s for s in doc["steps"] if s["plugin"] == "fix-b" and s["phase"] == "apply")
    assert "timed out after 0.5s" in step["error"]
    assert doc["rolled_back"] == ["fix-b", "fix-a"]


def test_dry_run_changes_nothing(three: Project) -> None:
    three.config()
    code, doc = three.json("--dry-run", "apply")
    assert code == 0
    assert three.applied() == set()
    assert {s["outcome"] for s in doc["steps"]} == {"dry-run"}  # type: ignore[union-attr]
    code, status = three.json("status")
    assert {r["state"] for r in status["plugins"]} == {"not_applied"}  # type: ignore[union-attr]


def test_dry_run_against_an_unreachable_target_is_bad_input(three: Project) -> None:
    """A dry run is how an operator checks a config before the window: a target it cannot reach is
    bad input (exit 2), as it is for the real apply, not a failed fix."""
    three.config({"fix-a": {"probe": "redis"}}, targets={"redis": f"redis://127.0.0.1:{free_port()}/0"})
    res = three.run("--dry-run", "--plugins", "fix-a", "apply", select=False)
    assert res.returncode == 2, res.stderr
    assert "cannot reach targets.redis" in one_clear_line(res.stderr)
    assert three.applied() == set()


def test_cycle_is_bad_input(project: Project) -> None:
    project.dist("loop", {"x-one": ["x-two"], "x-two": ["x-one"]})
    project.config()
    res = project.run("apply")
    assert res.returncode == 2
    assert "dependency cycle" in one_clear_line(res.stderr)


def test_missing_requirement_is_bad_input(project: Project) -> None:
    project.dist("lonely", {"needs-ghost": ["ghost-fix"]})
    project.config()
    res = project.run("apply")
    assert res.returncode == 2
    assert "requires ghost-fix, which is not installed" in one_clear_line(res.stderr)


def test_unknown_plugin_is_bad_input(three: Project) -> None:
    three.config()
    res = three.run("--plugins", "fix-zzz", "apply", select=False)
    assert res.returncode == 2
    assert "unknown plugin 'fix-zzz'" in one_clear_line(res.stderr)


def test_broken_plugin_is_reported_and_can_be_disabled(project: Project) -> None:
    project.dist("acme-broken", {"fix-ok": [], "fix-broken": []}, version="2.3.4", broken=["fix-broken"])
    project.plugins = ["fix-ok"]
    project.config()
    code, doc = project.json("list", select=False)
    assert code == 0
    broken = next(r for r in doc["plugins"] if r["name"] == "fix-broken")  # type: ignore[union-attr]
    assert broken["status"] == "broken" and broken["distribution"] == "acme-broken" and broken["version"] == "2.3.4"
    res = project.run("--plugins", "fix-broken", "apply", select=False)
    assert res.returncode == 2
    line = one_clear_line(res.stderr)
    assert "fix-broken (acme-broken 2.3.4) failed to load" in line and "totally_missing_dependency" in line
    # the other plugin of the same distribution still works
    assert project.run("--plugins", "fix-ok", "apply", select=False).returncode == 0
    res = project.run("-p", "no:fix-broken", "--plugins", "fix-broken", "plan", select=False)
    assert res.returncode == 2 and "disabled" in one_clear_line(res.stderr)


def test_malformed_yaml_is_bad_input(three: Project) -> None:
    (three.work / "tars.yaml").write_text("plugins:\n  fix-a: {dir: [unclosed\n")
    res = three.run("apply")
    assert res.returncode == 2
    assert "not valid YAML" in one_clear_line(res.stderr)
    assert three.calls() == []


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"fix-b": {"retries": "many"}}, "plugins.fix-b.retries"),
        ({"fix-a": {"colour": "blue"}}, "colour"),
    ],
)
def test_wrong_config_names_the_path(three: Project, section: dict[str, dict[str, object]], expected: str) -> None:
    three.config(section)
    res = three.run("apply")
    assert res.returncode == 2
    assert expected in one_clear_line(res.stderr)
    assert three.calls() == []  # nothing ran


def test_wrong_core_section_type(three: Project) -> None:
    three.config(release={"timeouts": {"apply": "soon"}})
    res = three.run("apply")
    assert res.returncode == 2
    assert "release.timeouts.apply" in one_clear_line(res.stderr)


def test_unset_env_variable_is_bad_input(three: Project) -> None:
    three.config({"fix-a": {"password": "${ACME_UNSET_VAR_XYZ}"}})
    res = three.run("apply")
    assert res.returncode == 2
    assert "ACME_UNSET_VAR_XYZ is not set" in one_clear_line(res.stderr)


def test_secrets_never_reach_logs_reports_or_ledger(three: Project) -> None:
    secret, dsn_pw = "s3cr3t-Hunter2", "dbpass-77x"
    three.config(
        {
            "fix-a": {"password": "${ACME_PASSWORD}"},
            "fix-c": {"password": "${ACME_PASSWORD}", "fail_apply": True},
        },
        targets={"postgres": f"postgresql://app:{dsn_pw}@db.example:5432/tars"},
    )
    env = three.env(ACME_PASSWORD=secret)
    res = three.run("--format", "json", "apply", env=env)
    assert res.returncode == 1
    res2 = three.run("--format", "json", "report", env=env)
    assert res2.returncode == 0
    texts = [res.stdout, res.stderr, res2.stdout, res2.stderr]
    texts += [p.read_text() for p in (three.work / ".tars" / "reports").rglob("*") if p.is_file()]
    db = sqlite3.connect(three.work / ".tars" / "state.db")
    texts += [repr(db.execute(f"SELECT * FROM {t}").fetchall()) for t in ("tars_phases", "tars_runs", "tars_state")]
    assert "applied with password ***" in res.stderr
    for text in texts:
        assert secret not in text and dsn_pw not in text
    assert "connecting with password *** failed" in res.stderr


def test_second_run_exits_3_naming_the_holder_and_ctrl_c_rolls_back(three: Project) -> None:
    three.config({"fix-b": {"sleep_apply": 120}})
    with three.start("--format", "json", "apply") as first:
        first.wait_for(three.work / "fix-b.sleeping")
        res = three.run("apply")
        assert res.returncode == 3
        line = one_clear_line(res.stderr)
        assert f"pid {first.pid}" in line and "tars-run apply" in line
        _, status = three.json("status")
        assert status["lock"]["pid"] == first.pid  # type: ignore[index]
        assert first.stop(signal.SIGINT) == 130, first.err
    doc = json.loads(first.out)
    assert doc["rolled_back"] == ["fix-b", "fix-a"]
    assert three.applied() == set()
    _, status = three.json("status")
    assert {r["plugin"]: r["state"] for r in status["plugins"]} == {  # type: ignore[union-attr]
        "fix-a": "rolled_back",
        "fix-b": "rolled_back",
        "fix-c": "not_applied",
    }
    assert three.run("--plugins", "fix-a", "apply", select=False).returncode == 0  # the lock was released


@pytest.mark.parametrize(
    ("sleep_key", "expect"), [("sleep_apply", "rolled back"), ("sleep_verify", "recorded as applied")]
)
def test_sigkill_mid_phase_is_resolved_by_the_next_run(three: Project, sleep_key: str, expect: str) -> None:
    three.config({"fix-b": {sleep_key: "${SLEEP:-0}"}})
    with three.start("apply", env=three.env(SLEEP="120")) as first:
        first.wait_for(three.work / "fix-b.sleeping")
        first.stop(signal.SIGKILL)
    db = sqlite3.connect(three.work / ".tars" / "state.db")
    running = db.execute("SELECT plugin, phase FROM tars_phases WHERE outcome='running'").fetchall()
    assert running == [("fix-b", sleep_key.removeprefix("sleep_"))]
    db.close()
    res = three.run("--format", "json", "apply", env=three.env(SLEEP="0"))
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert len(doc["recovered"]) == 1 and doc["recovered"][0].startswith("fix-b") and expect in doc["recovered"][0]
    assert "recovered: fix-b" in res.stderr
    assert three.applied() == {"fix-a", "fix-b", "fix-c"}
    db = sqlite3.connect(three.work / ".tars" / "state.db")
    assert db.execute("SELECT count(*) FROM tars_phases WHERE outcome='running'").fetchone() == (0,)
    assert db.execute("SELECT outcome FROM tars_runs ORDER BY started_at").fetchall() == [
        ("crashed",),
        ("ok",),
    ]


def test_rollback_command_reverses_and_is_idempotent(three: Project) -> None:
    three.config()
    assert three.run("apply").returncode == 0
    code, doc = three.json("--plugins", "fix-b", "rollback", select=False)
    assert code == 0
    # fix-c requires fix-b, so it goes first
    assert doc["rolled_back"] == ["fix-c", "fix-b"]
    assert three.applied() == {"fix-a"}
    code, doc = three.json("rollback")
    assert code == 0
    assert three.applied() == set()


def test_verify_command_reports_missing_fix(three: Project) -> None:
    three.config()
    assert three.run("apply").returncode == 0
    code, doc = three.json("verify")
    assert code == 0
    assert [s["checks"] for s in doc["steps"]] == [{"marker": "present"}] * 3  # type: ignore[union-attr]
    (three.work / "fix-a.applied").write_text("tampered")
    res = three.run("verify")
    assert res.returncode == 1
    assert "verify failed: fix-a" in one_clear_line(res.stderr)


def test_benchmark_figures_reach_the_report(three: Project) -> None:
    three.config()
    res = three.run("benchmark")
    assert res.returncode == 0
    assert "latency: 2 -> 1 ms; target < 1.5 ms (target met)" in res.stderr
    assert three.run("report").returncode == 0
    data = json.loads((three.work / ".tars" / "reports" / "v1.0.1" / "report.json").read_text())
    assert data["plugins"][0]["benchmark"]["metrics"][0]["after"] == 1.0


def test_postgres_ledger_and_advisory_lock(three: Project, tars_postgres_db: Callable[..., str]) -> None:
    pg_database = tars_postgres_db()
    import anyio
    import asyncpg

    three.config()
    code, doc = three.json("--state", pg_database, "apply")
    assert code == 0, doc
    code, status = three.json("--state", pg_database, "status")
    assert {r["state"] for r in status["plugins"]} == {"applied"}  # type: ignore[union-attr]
    assert not (three.work / ".tars" / "state.db").exists()

    async def hold_and_run() -> subprocess.CompletedProcess[str]:
        conn = await asyncpg.connect(pg_database)
        try:
            assert await conn.fetchval("SELECT pg_try_advisory_lock($1)", 0x7A125)
            await conn.execute(
                "INSERT INTO tars_lock (id, host, pid, started_at, command) "
                "VALUES (1, 'ops-box', 4242, '2026-11-27T00:00:00Z', 'tars-run apply')"
            )
            return await anyio.to_thread.run_sync(lambda: three.run("--state", pg_database, "apply"))
        finally:
            await conn.execute("DELETE FROM tars_lock")
            await conn.close()

    res = anyio.run(hold_and_run)
    assert res.returncode == 3
    assert "pid 4242 on ops-box" in one_clear_line(res.stderr)


def test_bad_state_url_is_bad_input(three: Project) -> None:
    three.config()
    res = three.run("--state", "postgresql://nobody:pw@127.0.0.1:1/none", "apply")
    assert res.returncode == 2
    line = one_clear_line(res.stderr)
    assert "cannot connect to ledger" in line and ":pw@" not in line


def test_long_phase_reports_progress(three: Project) -> None:
    three.config({"fix-a": {"sleep_apply": 1.0}}, release={"progress_every": 0.2})
    res = three.run("--plugins", "fix-a", "apply", select=False)
    assert res.returncode == 0
    assert "fix-a: apply still running" in res.stderr
    _, status = three.json("status")
    assert status["lock"] is None


def test_unreachable_target_is_bad_input_and_rolls_back_earlier_fixes(three: Project) -> None:
    three.config({"fix-b": {"unreachable": True}})
    res = three.run("--format", "json", "apply")
    assert res.returncode == 2
    doc = json.loads(res.stdout)
    assert doc["rolled_back"] == ["fix-a"]
    line = one_clear_line(res.stderr)
    assert "cannot reach the fix-b target" in line and "nothing to undo for fix-b" in line
    assert three.applied() == set()
    # fix-b's apply stopped at the target, so its rollback is a recorded no-op: the hook is not called
    assert three.calls() == ["apply fix-a", "verify fix-a", "apply fix-b", "rollback fix-a"]
    db = sqlite3.connect(three.work / ".tars" / "state.db")
    rows = db.execute("SELECT phase, outcome, detail FROM tars_phases WHERE plugin='fix-b' ORDER BY id").fetchall()
    assert rows == [
        ("apply", "unreached", None),
        ("rollback", "skipped", "apply never reached the target; nothing to undo"),
    ]
    assert db.execute("SELECT plugin, state FROM tars_state").fetchall() == [("fix-a", "rolled_back")]
    db.close()
    step = next(s for s in doc["steps"] if (s["plugin"], s["phase"]) == ("fix-b", "rollback"))
    assert step["outcome"] == "skipped"


def test_explicit_rollback_after_an_unreached_apply_has_nothing_to_undo(three: Project) -> None:
    """The target is still down when the operator rolls back: the fix never reached it, so the
    rollback is a recorded no-op (exit 0), not a failed rollback (exit 4) of something never applied."""
    three.config({"fix-a": {"unreachable": True}})
    assert three.run("--plugins", "fix-a", "apply").returncode == 2
    three.config({"fix-a": {"unreachable": True, "fail_rollback": True}})
    res = three.run("--plugins", "fix-a", "rollback")
    assert res.returncode == 0, res.stderr
    assert "nothing to undo for fix-a" in res.stderr
    assert "rollback fix-a" not in three.calls()
    # once a later apply succeeds, a rollback calls the hook again
    three.config({"fix-a": {}})
    assert three.run("--plugins", "fix-a", "apply").returncode == 0
    assert three.run("--plugins", "fix-a", "rollback").returncode == 0
    assert three.calls()[-1] == "rollback fix-a"


def test_dry_run_rollback_is_not_a_failed_rollback(three: Project) -> None:
    three.config()
    assert three.run("apply").returncode == 0
    code, doc = three.json("--dry-run", "rollback")
    assert code == 0, doc
    assert {s["outcome"] for s in doc["steps"]} == {"dry-run"}  # type: ignore[union-attr]
    _, status = three.json("status")
    assert {r["state"] for r in status["plugins"]} == {"applied"}  # type: ignore[union-attr]
