"""What the CLI calls: ``tars-run sandbox up|down|status|reset`` and the silent start behind other commands.

Human text goes to stderr and ``--format json`` prints one document on stdout, like every ``tars-run``
command.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from tars_core.errors import UsageError
from tars_core.plugins import PluginHost
from tars_core.sandbox.lifecycle import UpResult, down, healthy, reset, status, up
from tars_core.sandbox.state import CORE, Paths, State, load_state, show


def _announcement(state: State, result: UpResult, paths: Paths) -> str:
    ports = (
        f"PostgreSQL :{state.port('postgres')}, Redis :{state.port('redis')}, Prometheus :{state.port('prometheus')}"
    )
    extra = len(state.services) - len(CORE)
    if extra:
        ports += f", {extra} plugin service{'s' if extra != 1 else ''}"
    if result.created:
        what = "started"
    else:
        parts = []
        if result.started:
            parts.append("restarted " + ", ".join(result.started))
        if result.joined:
            parts.append("added " + ", ".join(result.joined))
        what = "; ".join(parts)
    where = show(paths.dir)
    return f"tars: no tars.yaml; using the sandbox at {where} ({ports}) — {what} in {result.seconds:.1f}s"


def ensure_running(host: PluginHost, root: Path, *, announce: Callable[[str], None]) -> Path:
    """The generated config of a healthy sandbox, starting or repairing it first when needed.

    Silent when the sandbox was already healthy; otherwise ``announce`` gets one line saying what was done.
    """
    paths = Paths(root)
    if healthy(host, paths):
        return paths.config
    result = up(host, root)
    if not (result.created or result.started or result.joined):
        return paths.config  # another tars-run repaired it while we waited for the lock
    state = load_state(paths)
    assert state is not None
    announce(_announcement(state, result, paths))
    return paths.config


def print_status(doc: dict[str, Any], out: IO[str]) -> None:
    print(f"sandbox {show(doc['sandbox'])}: {doc['state']}", file=out)
    if doc["config"]:
        print(f"config  {show(doc['config'])}", file=out)
    if doc["services"]:
        width = max(len(r["name"]) for r in doc["services"]) + 2
        print(f"{'SERVICE':<{width}}{'PID':>8}  {'PORT':>6}  HEALTH", file=out)
        for r in doc["services"]:
            detail = f" ({r['detail']}; log {show(r['log'])})" if r["detail"] else ""
            print(f"{r['name']:<{width}}{r['pid'] or '-':>8}  {r['port'] or '-':>6}  {r['health']}{detail}", file=out)


def _up(host: PluginHost, root: Path, action: str, text: bool) -> tuple[int, dict[str, Any]]:
    result = reset(host, root) if action == "reset" else up(host, root)
    doc = status(root)
    doc.update(
        action=action,
        created=result.created,
        started=result.started,
        joined=result.joined,
        seconds=round(result.seconds, 2),
    )
    if text:
        if result.created:
            done = "created"
        else:
            done = "restarted " + ", ".join(result.started) if result.started else "already running"
        print(f"tars: sandbox {done} in {result.seconds:.1f}s", file=sys.stderr)
        print_status(doc, sys.stderr)
    return (0 if doc["state"] == "running" else 1), doc


def _down(root: Path, text: bool) -> tuple[int, dict[str, Any]]:
    res = down(root)
    if text and res["stopped"]:
        print(f"tars: sandbox stopped ({', '.join(res['stopped'])}); data kept, `up` restarts it", file=sys.stderr)
    elif text:
        print("tars: sandbox was not running", file=sys.stderr)
    return 0, {"action": "down", "sandbox": str(Paths(root).dir), **res}


def _status(root: Path, text: bool) -> tuple[int, dict[str, Any]]:
    doc = {"action": "status", **status(root)}
    if text:
        print_status(doc, sys.stderr)
        if doc["state"] == "absent":
            print("no sandbox yet: `tars-run sandbox up` creates one", file=sys.stderr)
    if doc["state"] == "degraded":
        print("`tars-run sandbox up` restarts what is down", file=sys.stderr)
    return (0 if doc["state"] == "running" else 1), doc


def run_command(host: PluginHost, root: Path, action: str, fmt: str) -> int:
    """``tars-run sandbox up|down|status|reset``: JSON on stdout with ``--format json``, text on stderr.

    Exit 0 on success; ``status`` (and ``up``) exit 1 when the sandbox is absent, stopped or has an
    unhealthy service.
    """
    text = fmt != "json"
    if action in ("up", "reset"):
        code, doc = _up(host, root, action, text)
    elif action == "down":
        code, doc = _down(root, text)
    elif action == "status":
        code, doc = _status(root, text)
    else:
        raise UsageError(f"unknown sandbox action {action!r}: use up, down, status or reset")
    if not text:
        print(json.dumps(doc, indent=2, default=str))
    return code
