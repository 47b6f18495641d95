"""What the CLI calls: ``tars-run sandbox up|down|status|reset|incident`` and the silent start behind other
commands.

Human text goes to stderr and ``--format json`` prints one document on stdout, like every ``tars-run``
command.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from tars_core.errors import UsageError
from tars_core.plugins import PluginHost
from tars_core.sandbox import incidents as inc
from tars_core.sandbox import supervise
from tars_core.sandbox.lifecycle import UpResult, down, healthy, reset, status, up
from tars_core.sandbox.state import CORE, Paths, ServiceRecord, State, load_state, show


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


# -- tars-run sandbox incident ------------------------------------------------------------------------------


def _consumers(state: State, path: Path) -> list[ServiceRecord]:
    """The sandbox services that read this incidents file: their argv has ``--incidents PATH``."""
    found = []
    for rec in state.services:
        for i, arg in enumerate(rec.argv[:-1]):
            if arg == "--incidents" and Path(rec.argv[i + 1]) == path:
                found.append(rec)
                break
    return found


def _check_can_inject(state: State, paths: Paths, path: Path) -> None:
    """An incident nobody applies would look like a monitor that misses it: refuse, saying what to do."""
    if state.stopped:
        raise UsageError(f"the sandbox at {show(paths.dir)} is stopped: `tars-run sandbox up`, then add the incident")
    consumers = _consumers(state, path)
    if not consumers:
        raise UsageError(
            f"no service of the sandbox at {show(paths.dir)} reads incidents (it was built before they existed, "
            "or no installed plugin simulates traffic): `tars-run sandbox reset`, with tars-1002-grafana installed"
        )
    down = [(rec.name, reason) for rec in consumers if (reason := supervise.check(rec, state.bindir)) is not None]
    if len(down) == len(consumers):
        what = "; ".join(f"{name}: {reason}" for name, reason in down)
        raise UsageError(f"the sandbox service that applies incidents is not running ({what}): `tars-run sandbox up`")


def _unmatched(state: State, incident: inc.Incident) -> str | None:
    """A warning when the sandbox's Prometheus has no series with the incident's labels (a typo, or a label
    value the simulation does not use), naming the values it has. None when it has, or cannot tell."""
    url = state.targets.get("prometheus_url")
    if not (incident.match or incident.families) or not url:
        return None
    matchers = [f'{k}="{_promql_string(v)}"' for k, v in incident.match]
    if incident.families:  # histograms are named by their base name
        matchers.insert(0, f'__name__=~"({"|".join(incident.families)})(_bucket|_sum|_count)?"')
    selector = ",".join(matchers)
    try:
        from tars_core.prometheus import Prometheus

        with Prometheus(str(url), timeout=3.0) as prom:
            if prom.query(f"count({{{selector}}})"):
                return None
            seen = []
            for name, _ in incident.match:
                rows = prom.query(f'group by ({name}) ({{{name}!=""}})')
                values = sorted(str(r["metric"].get(name)) for r in rows)
                shown = ", ".join(values[:10]) + (", ..." if len(values) > 10 else "")
                seen.append(f"{name}: {shown}" if values else f"no series has the label {name}")
    except Exception as exc:  # a warning must never fail the command
        return f"could not check the labels against the sandbox's Prometheus ({type(exc).__name__}: {exc})"
    known = f" ({'; '.join(seen)})" if seen else ""
    return (
        f"no series in the sandbox's Prometheus has {{{selector}}} yet{known}; "
        "the incident changes nothing unless such series appear"
    )


def _promql_string(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _new_incident(
    kind: str, value: float, match: Sequence[str], duration: str | None, delay: str | None, families: str | None
) -> inc.Incident:
    if duration is None:
        raise UsageError("an incident needs --for DURATION, how long it lasts: e.g. --for 2m")
    length = inc.parse_duration(duration, "--for")
    if length <= 0:
        raise UsageError(f"--for must be longer than 0s, got {duration!r}: e.g. --for 2m")
    wait = max(inc.parse_duration(delay or "0", "--in"), inc.EFFECT_DELAY)
    start = time.time() + wait
    names = [n.strip() for n in (families or "").split(",") if n.strip()]
    return inc.Incident(
        kind=kind,  # type: ignore[arg-type]  # checked by Incident
        value=value,
        start=start,
        end=start + length,
        match=inc.parse_match(match),
        families=names,
    )


def run_incident(
    root: Path,
    fmt: str,
    *,
    kind: str | None = None,
    value: float | None = None,
    match: Sequence[str] = (),
    duration: str | None = None,
    delay: str | None = None,
    families: str | None = None,
    clear: bool = False,
) -> int:
    """``tars-run sandbox incident``: add one (``kind`` and ``value``), end them all (``clear``), or list.

    Adding needs a running sandbox with a service that applies incidents; listing and clearing only need the
    sandbox to exist. Bad input and a sandbox that cannot take the incident are :class:`UsageError` (exit 2).
    """
    text = fmt != "json"
    paths = Paths(root)
    path = inc.incidents_path(paths.dir)
    adding = kind is not None
    if not adding and (match or duration or delay or families):
        raise UsageError("--match, --for, --in and --families go with --errors, --latency or --traffic")
    state = load_state(paths)
    if kind is not None:
        assert value is not None
        incident = _new_incident(kind, value, match, duration, delay, families)  # bad input first
    if state is None:
        raise UsageError(f"no sandbox at {show(paths.dir)}: `tars-run sandbox up` starts one, then add incidents")
    doc: dict[str, Any] = {"action": "incident", "sandbox": str(paths.dir), "file": str(path)}
    lines: list[str] = []
    if adding:
        _check_can_inject(state, paths, path)
        added = inc.add(path, incident, shift=True)
        doc["added"] = added.row(time.time())
        lines.append(f"tars: added {added.describe(time.time())}")
        warning = _unmatched(state, added)
        doc["warning"] = warning
        if warning:
            lines.append(f"tars: warning: {warning}")
    elif clear:
        done = inc.clear(path)
        doc["cleared"] = done
        ended = ", ".join(f"#{i}" for i in done["ended"]) or "none"
        dropped = ", ".join(f"#{i}" for i in done["dropped"]) or "none"
        lines.append(f"tars: incidents ended in {inc.EFFECT_DELAY:g}s: {ended}; pending ones dropped: {dropped}")
    now = time.time()
    current = inc.load(path)
    doc["incidents"] = [i.row(now) for i in current]
    if text:
        if not adding:
            lines += [i.describe(now) for i in current] or [
                "no incidents (add one: tars-run sandbox incident --errors 0.02 --for 2m)"
            ]
        for line in lines:
            print(line, file=sys.stderr)
    else:
        print(json.dumps(doc, indent=2, default=str))
    return 0
