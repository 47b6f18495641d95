"""``tars-run``: the command line of the hotfix framework.

Contract (DESIGN.md): the exit codes are :class:`tars_core.model.ExitCode` (0 success, 1 a fix failed and
was rolled back by policy, 2 bad input, 3 another run holds the lock, 4 manual action needed: a rollback
failed or a hook would not stop, 130 interrupted by Ctrl-C/SIGTERM and rolled back by policy).
``--format json`` prints exactly one JSON document on stdout; everything for people (progress, errors)
goes to stderr, one line per error, no traceback unless ``--debug``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from tars_core.errors import LockHeld, RollbackFailed, TargetError, UsageError
from tars_core.model import ExitCode, PluginState
from tars_core.plugins import LoadedPlugin, PluginHost
from tars_core.redact import RedactingFilter, Redactor

if TYPE_CHECKING:
    from tars_core.model import Release, ReportSection
    from tars_core.runner import Runner

COMMANDS = (
    "list",
    "plan",
    "apply",
    "verify",
    "rollback",
    "benchmark",
    "report",
    "status",
    "sandbox",
    "new-plugin",
)
NEEDS_TARGETS = ("apply", "verify", "rollback", "benchmark")


def _options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    def d(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument("--plugins", default=d("all"), help="all (default) or NAME[,NAME...]; fix ids work too")
    parser.add_argument("--config", type=Path, default=d(None), help="config file (default ./tars.yaml, else sandbox)")
    parser.add_argument("--state", default=d(None), help="ledger URL: sqlite:///PATH or postgresql://...")
    parser.add_argument(
        "--region",
        default=d(None),
        help="the region this run releases (overrides release.region): its own rows and lock in the shared "
        "ledger; status and report show every region unless given",
    )
    parser.add_argument("--format", choices=("text", "json"), default=d("text"))
    parser.add_argument(
        "--dry-run", action="store_true", default=d(False), help="change nothing; say what would happen"
    )
    parser.add_argument("--no-rollback", action="store_true", default=d(False), help="leave a failed release as is")
    parser.add_argument(
        "-p",
        dest="block",
        action="append",
        default=d([]),
        metavar="no:NAME",
        help="disable a plugin (repeatable)",
    )
    parser.add_argument("--debug", action="store_true", default=d(False), help="tracebacks and debug logs")


def _core_version() -> str:
    """The installed tars-core distribution's version (what a build smoke test and a bug report need)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tars-core")
    except PackageNotFoundError:  # run from a source tree without installing
        return "unknown (tars-core not installed)"


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tars-run",
        description="Apply, verify and roll back T.A.R.S. hotfix plugins as one release.",
        epilog="exit codes: " + ", ".join(f"{int(c)} {c.meaning}" for c in ExitCode),
    )
    parser.add_argument("--version", action="version", version=f"tars-run {_core_version()}")
    _options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    helps = {
        "list": "installed plugins with their versions",
        "plan": "the order a release would run in and what each step would do",
        "apply": "apply then verify each fix; roll back on failure",
        "verify": "check every selected fix is in place and working",
        "rollback": "undo the selected fixes in reverse order",
        "benchmark": "measure each fix (before/after figures)",
        "report": "write .tars/reports/<release>/[<region>/] (report.json, report.md, junit.xml)",
        "status": "what the ledger says about each plugin, in every region",
        "sandbox": "manage the embedded sandbox deployment",
        "new-plugin": "scaffold a third-party plugin distribution",
    }
    for name in COMMANDS:
        p = sub.add_parser(name, help=helps[name])
        _options(p, suppress=True)
        if name == "sandbox":
            _sandbox_actions(p)
        if name == "new-plugin":
            p.add_argument("name", help="plugin name, e.g. acme-cache-fix")
            p.add_argument("--dir", type=Path, default=None, help="where to create it (default ./NAME)")
    return parser


SANDBOX_ACTIONS = {
    "up": "start the sandbox, or restart only what is down",
    "down": "stop every sandbox process (data kept)",
    "status": "each sandbox service with pid, port and health",
    "reset": "delete the sandbox (data included) and build a fresh one",
    "incident": "inject an incident into the simulated traffic (errors, latency, traffic), list or end them",
}


def _sandbox_actions(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, text in SANDBOX_ACTIONS.items():
        p = actions.add_parser(action, help=text, description=text)
        _options(p, suppress=True)
        if action != "incident":
            continue
        p.formatter_class = argparse.RawDescriptionHelpFormatter
        p.epilog = (
            "examples:\n"
            "  tars-run sandbox incident --errors 0.02 --match service=eval-api --for 2m --in 10s\n"
            "  tars-run sandbox incident --latency 3 --match region=us-east-1 --for 5m\n"
            "  tars-run sandbox incident --traffic 0.01 --for 1m\n"
            "  tars-run sandbox incident --list\n"
            "  tars-run sandbox incident --clear"
        )
        what = p.add_mutually_exclusive_group(required=True)
        what.add_argument(
            "--errors", type=float, metavar="SHARE", help="share (0-1] of the matching events that fail instead"
        )
        what.add_argument("--latency", type=float, metavar="FACTOR", help="multiply matching latencies (> 0)")
        what.add_argument(
            "--traffic", type=float, metavar="FACTOR", help="multiply matching event rates (>= 0; 0.01: a drop)"
        )
        what.add_argument("--list", action="store_true", help="the incidents: pending, active and ended")
        what.add_argument("--clear", action="store_true", help="end the active incidents now and drop the pending ones")
        p.add_argument(
            "--match",
            action="append",
            default=[],
            metavar="LABEL=VALUE",
            help="only series with these labels (repeatable or comma-separated; default every series)",
        )
        p.add_argument("--for", dest="duration", metavar="DURATION", help="how long it lasts: 90s, 2m, 1h30m")
        p.add_argument("--in", dest="delay", metavar="DURATION", help="start after this long (default now, 1s)")
        p.add_argument(
            "--families",
            metavar="NAME[,NAME...]",
            help="metric families to change (default: the request, evaluation and latency families)",
        )


def _stderr(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _setup_logging(redactor: Redactor, debug: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    handler.addFilter(RedactingFilter(redactor))
    logger = logging.getLogger("tars")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    logger.propagate = False


def _emit(fmt: str, doc: dict[str, Any], text: str) -> None:
    if fmt == "json":
        sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")
    elif text:
        sys.stdout.write(text + ("\n" if not text.endswith("\n") else ""))


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    _FINISHED.clear()
    redactor = Redactor()
    _setup_logging(redactor, args.debug)
    blocked = [b[3:] if b.startswith("no:") else b for b in args.block]
    try:
        code = int(_main(args, blocked, redactor))
        if argv is None:  # the console script: the run is over, a late Ctrl-C has nothing left to stop
            _ignore_late_signals()
        return code
    except UsageError as exc:  # ConfigError and LedgerError are UsageErrors too
        _stderr(f"tars-run: error: {redactor(str(exc))}")
        return ExitCode.BAD_INPUT
    except KeyboardInterrupt:
        if _FINISHED:  # Ctrl-C after the command had finished and said so: its exit code stands
            if argv is None:
                _ignore_late_signals()
            return _FINISHED[0]
        _stderr("tars-run: interrupted")
        return ExitCode.INTERRUPTED
    except Exception as exc:
        if isinstance(exc, LockHeld):
            _stderr(f"tars-run: {redactor(str(exc))}")
            return ExitCode.LOCKED
        if args.debug:
            raise
        text = redactor(f"{type(exc).__name__}: {exc}".splitlines()[0])
        _stderr(f"tars-run: internal error: {text} (run with --debug for the traceback)")
        return ExitCode.FAILED


_FINISHED: list[int] = []  # the exit code of a command that has finished (its final line printed)


def _ignore_late_signals() -> None:
    """After the final line, Ctrl-C or SIGTERM would only kill the exiting interpreter with a traceback
    (exit -2 after an exit code was announced): the run is over, nothing is left to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _main(args: argparse.Namespace, blocked: list[str], redactor: Redactor) -> int:
    root = Path.cwd()
    if args.region is not None:  # first, whatever the command: bad input changes nothing
        from tars_core.config import check_region

        check_region(args.region, "--region")
    if args.command == "new-plugin":
        from tars_core.scaffold import new_plugin

        path = new_plugin(args.name, args.dir or root / args.name)
        _stderr(f"created {path}: pip install -e {path}[test] && pytest {path}/tests")
        return ExitCode.OK
    if args.command == "sandbox" and args.action == "incident":  # the file only: no plugin needs loading
        from tars_core.sandbox.command import run_incident

        kinds = {k: getattr(args, k) for k in ("errors", "latency", "traffic") if getattr(args, k) is not None}
        kind, value = next(iter(kinds.items()), (None, None))
        return run_incident(
            root,
            args.format,
            kind=kind,
            value=value,
            match=args.match,
            duration=args.duration,
            delay=args.delay,
            families=args.families,
            clear=args.clear,
        )
    host = PluginHost(blocked=blocked)
    host.load_entry_points()
    if args.command == "list":
        return _list(host, args.format)
    if args.command == "sandbox":
        from tars_core import sandbox

        return sandbox.run_command(host, root, args.action, args.format)
    import anyio

    from tars_core.config import find_config, load_config, plugin_config
    from tars_core.ledger import open_ledger
    from tars_core.runner import Runner

    cfg_path = find_config(args.config, root)
    if cfg_path is None:
        cfg_path = _sandbox_config(host, root, start=args.command in NEEDS_TARGETS and not args.dry_run)
    cfg, redactor = load_config(cfg_path, redactor)
    plugins = host.select(args.plugins, with_requirements=args.command in ("apply", "plan"))
    for p in plugins:  # every config error before anything runs
        plugin_config(p.info, cfg)
    region = args.region or cfg.release.region or ""
    ledger = open_ledger(args.state or cfg.state.url, root, redactor, region)
    runner = Runner(
        host,
        cfg,
        ledger,
        redactor,
        root=root,
        dry_run=args.dry_run,
        rollback_policy=not args.no_rollback,
        progress=_stderr,
        debug=args.debug,
    )
    return int(anyio.run(_run, runner, args, plugins))


def _sandbox_config(host: PluginHost, root: Path, *, start: bool) -> Path | None:
    """With no config, target the sandbox: start it for commands that touch targets."""
    from tars_core import sandbox

    generated = root / ".tars" / "sandbox" / "tars.yaml"
    if not start:
        return generated if generated.exists() else None
    return sandbox.ensure_running(host, root, announce=_stderr)


async def _run(runner: Runner, args: argparse.Namespace, plugins: list[LoadedPlugin]) -> int:
    """The command with Ctrl-C/SIGTERM routed to the runner from the start, ledger waits included."""
    import anyio

    code = ExitCode.OK
    error: Exception | None = None
    _quiet_background_errors(args.debug)
    async with anyio.create_task_group() as tg:
        await tg.start(_watch_signals, runner)  # Ctrl-C goes to the runner before the ledger is touched
        try:
            code = await _with_ledger(runner, args, plugins)
            _FINISHED[:] = [int(code)]
        except Exception as exc:  # re-raised below, outside the task group (no ExceptionGroup)
            error = exc
        tg.cancel_scope.cancel()
    if runner.stuck:
        if error is not None:
            _stderr(f"tars-run: error: {runner.redact(str(error))}")
        _exit_now(ExitCode.MANUAL_ACTION if error is not None else code)
    if error is not None:
        raise error
    return code


def _quiet_background_errors(debug: bool) -> None:
    """What the event loop reports about tasks a hook left behind (a cancelled proxy pump asked for its
    exception while the loop shut down) printed a traceback after the run's final line. Without --debug
    a cancelled task is not news, and anything else is one warning line."""
    import asyncio

    loop = asyncio.get_running_loop()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if debug:
            loop.default_exception_handler(context)
            return
        exc = context.get("exception")
        if isinstance(exc, asyncio.CancelledError):
            return
        what = f"{type(exc).__name__}: {exc}" if exc is not None else context.get("message", "unknown")
        logging.getLogger("tars").warning("a background task failed: %s", str(what).splitlines()[0])

    loop.set_exception_handler(handler)


def _exit_now(code: int) -> NoReturn:
    """End the process without waiting for a hook that would not stop.

    Its worker (a thread, or a job in the event loop's executor) would otherwise hold the interpreter
    open at exit, for as long as it runs. The ledger is closed and says ``unknown``; the final line has
    told the user to check the target.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(code))


async def _with_ledger(runner: Runner, args: argparse.Namespace, plugins: list[LoadedPlugin]) -> ExitCode:
    import anyio

    from tars_core.ledger import Holder

    ledger = runner.ledger
    cmd = args.command
    writes = cmd in NEEDS_TARGETS and not args.dry_run
    await ledger.open()
    try:
        if writes:
            await ledger.acquire(Holder.me(f"tars-run {cmd}"))
            await ledger.start_run(runner.run_id, runner.release, cmd)
        started = time.monotonic()
        try:
            code = ExitCode(await _command(runner, args, plugins, writes))
        except RollbackFailed as exc:  # the final line below says it: one line, not two
            runner.final_message = f"{exc}; manual action needed"
            code = ExitCode.MANUAL_ACTION
        except TargetError as exc:  # resolving a crashed run could not reach a target: nothing was undone
            runner.final_message = runner.redact(str(exc))
            code = ExitCode.BAD_INPUT
        except BaseException as exc:
            if writes and not isinstance(exc, Exception):  # the run itself was cancelled: close its row
                with anyio.CancelScope(shield=True):
                    await ledger.end_run(runner.run_id, ExitCode.INTERRUPTED.name.lower())
            raise
        if writes:
            await ledger.end_run(runner.run_id, code.name.lower())
        if cmd in NEEDS_TARGETS:
            message = runner.final_message
            _stderr(
                f"tars-run: {cmd}: {code.meaning} after {time.monotonic() - started:.1f}s"
                + (f": {message}" if message else "")
            )
        return code
    finally:
        with anyio.CancelScope(shield=True):
            await ledger.close()


async def _watch_signals(runner: Runner, *, task_status: Any) -> None:
    import anyio

    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for _ in signals:
            runner.interrupt()


async def _command(runner: Runner, args: argparse.Namespace, plugins: list[LoadedPlugin], writes: bool) -> int:
    cmd, fmt = args.command, args.format
    if writes:
        recovered = await runner.resolve_crashed()
    else:
        recovered = []
    if cmd == "plan":
        return await _plan(runner, plugins, fmt)
    if cmd == "status":
        return await _status(runner, plugins, fmt, args.region)
    if cmd == "report":
        return await _report(runner, plugins, fmt, args.region)
    import attrs

    action = getattr(runner, cmd)
    selected = plugins
    if cmd == "rollback":
        selected = await _with_applied_dependents(runner, plugins)
    out = await action(selected)
    doc = {
        "command": cmd,
        "release": runner.release,
        "region": runner.ledger.region or None,
        "run_id": runner.run_id,
        "dry_run": runner.dry_run,
        "exit_code": int(out.exit_code),
        "result": out.exit_code.meaning,
        "message": out.message,
        "recovered": recovered,
        "rolled_back": out.rolled_back,
        "steps": [attrs.asdict(s) for s in out.steps],
        "judgements": [attrs.asdict(j) for j in runner.judgements],
    }
    runner.final_message = out.message
    text = "\n".join(
        [
            f"{s.plugin:24} {s.phase:9} {s.outcome!s:11} {s.seconds:7.2f}s {s.error or s.detail or ''}".rstrip()
            for s in out.steps
        ]
        + [
            f"{j.monitor:24} {j.kind:9} {j.verdict:11} {j.plugin or 'release':8} {'; '.join(j.reasons)}".rstrip()
            for j in runner.judgements
        ]
    )
    _emit(fmt, doc, text)
    return int(out.exit_code)


async def _with_applied_dependents(runner: Runner, plugins: list[LoadedPlugin]) -> list[LoadedPlugin]:
    """Rolling back a fix that another applied fix requires would pull the ground from under it."""
    states = await runner.ledger.states(runner.release)
    names = {p.name for p in plugins}
    changed = True
    while changed:
        changed = False
        for p in runner.host.plugins.values():
            if p.name not in names and states.get(p.name, {}).get("state") == PluginState.APPLIED:
                if any(r in names for r in p.info.requires):
                    names.add(p.name)
                    changed = True
                    _stderr(f"tars-run: also rolling back {p.name}, which requires a plugin being rolled back")
    return [runner.host.plugins[n] for n in runner.host.order(names)]


def _list(host: PluginHost, fmt: str) -> int:
    rows = [
        {
            "name": p.name,
            "title": p.info.title,
            "kind": p.info.kind,
            "fix_id": p.info.fix_id,
            "distribution": p.distribution,
            "version": p.version,
            "requires": list(p.info.requires),
            "status": "ok",
        }
        for p in (host.plugins[n] for n in sorted(host.plugins))
    ]
    rows += [
        {
            "name": f.name,
            "title": None,
            "kind": None,
            "fix_id": None,
            "distribution": f.distribution,
            "version": f.version,
            "requires": [],
            "status": "broken",
            "error": f.error,
        }
        for f in host.failures.values()
    ]
    rows += [
        {"name": name, "distribution": dist, "status": "not_allowed", "error": "not in TARS_LOAD_PLUGINS"}
        for name, dist in sorted(host.not_allowed.items())
    ]
    notes = {"broken": "  BROKEN: ", "not_allowed": "  NOT LOADED: "}
    text = (
        "\n".join(
            f"{r['name']:24} {r.get('version') or '':10} {r.get('kind') or '':8} {r.get('fix_id') or '':10} "
            f"{r.get('title') or ''}" + (f"{notes[r['status']]}{r['error']}" if r["status"] in notes else "")
            for r in rows
        )
        or "no plugins installed (pip install a tars plugin, e.g. plugins/tars_1004_db)"
    )
    _emit(fmt, {"plugins": rows}, text)
    for f in host.failures.values():
        _stderr(f"tars-run: warning: {f.message()}")
    return ExitCode.OK


def _plan_row(runner: Runner, p: LoadedPlugin, st: dict[str, str]) -> dict[str, Any]:
    applied = st.get("state") == PluginState.APPLIED
    if applied and _same(runner, p, st):
        action = "verify; skip apply if still verified"
    elif applied:
        action = "re-apply (version or config changed)"
    else:
        action = "apply, then verify"
    return {
        "plugin": p.name,
        "fix_id": p.info.fix_id,
        "requires": list(p.info.requires),
        "state": st.get("state", str(PluginState.NOT_APPLIED)),
        "action": action,
    }


def _status_row(runner: Runner, p: LoadedPlugin, st: dict[str, str]) -> dict[str, Any]:
    return {
        "plugin": p.name,
        "fix_id": p.info.fix_id,
        "version": p.version,
        "state": st.get("state", str(PluginState.NOT_APPLIED)),
        "applied_version": st.get("version"),
        "updated_at": st.get("updated_at"),
        "config_changed": bool(st) and not _same(runner, p, st),
        "unfinished": None,
    }


async def _unfinished(runner: Runner, live: bool, region: str) -> dict[str, dict[str, Any]]:
    """Per plugin, a phase of ``region`` still ``running`` in the ledger: in progress while a run holds
    the region's lock, else interrupted by a run that died. The state row says what was true before that
    phase started, so a status that showed only it hid a half-applied target right after a crash."""
    out: dict[str, dict[str, Any]] = {}
    for _, rec, release in await runner.ledger.unfinished(region):
        if release == runner.release:
            out[rec.plugin] = {
                "phase": rec.phase,
                "started_at": rec.started_at,
                "run": "in progress" if live else "died",
            }
    return out


def _same(runner: Runner, p: LoadedPlugin, st: dict[str, str]) -> bool:
    return st.get("version") == p.version and st.get("config_digest") == runner.digest(p)


async def _plan(runner: Runner, plugins: list[LoadedPlugin], fmt: str) -> int:
    states = await runner.ledger.states(runner.release)
    rows = [_plan_row(runner, p, states.get(p.name, {})) for p in plugins]
    doc: dict[str, Any] = {
        "command": "plan",
        "release": runner.release,
        "region": runner.ledger.region or None,
        "ledger": runner.ledger.location,
        "plugins": rows,
    }
    text = "\n".join(f"{i + 1}. {r['plugin']:24} {r['state']:12} -> {r['action']}" for i, r in enumerate(rows))
    _emit(fmt, doc, text)
    return ExitCode.OK


async def _shown_regions(runner: Runner, explicit: str | None) -> list[str]:
    """The regions ``status`` and ``report`` show: the one given with ``--region``, else every region of
    the release in the ledger (this runner's own too, once it has a name), else the runner's own."""
    if explicit is not None:
        return [explicit]
    found = await runner.ledger.regions(runner.release)
    own = runner.ledger.region
    if (own and own not in found) or not found:
        found = sorted({*found, own})
    return found


async def _region_status(runner: Runner, plugins: list[LoadedPlugin], region: str) -> dict[str, Any]:
    """One region's state of the release: each plugin's row, its last run and who holds its lock."""
    import attrs

    ledger = runner.ledger
    states = await ledger.states(runner.release, region)
    rows = [_status_row(runner, p, states.get(p.name, {})) for p in plugins]
    holder = await ledger.holder(region)
    unfinished = await _unfinished(runner, live=holder is not None, region=region)
    for r in rows:
        r["unfinished"] = unfinished.get(r["plugin"])
    return {
        "region": region or None,
        "plugins": rows,
        "last_run": await ledger.last_run(region),
        "lock": attrs.asdict(holder) if holder else None,
        "_holder": holder,
    }


def _status_text(block: dict[str, Any]) -> str:
    def note(r: dict[str, Any]) -> str:
        u = r["unfinished"]
        if u is None:
            return ""
        if u["run"] == "in progress":
            return f"  {u['phase']} in progress since {u['started_at']}"
        return f"  {u['phase']} INTERRUPTED at {u['started_at']} (its run died; the next apply or rollback resolves it)"

    holder, last = block["_holder"], block["last_run"]
    text = "\n".join(
        f"{r['plugin']:24} {r['state']:14} {r['applied_version'] or '':10} {r['updated_at'] or ''}{note(r)}"
        for r in block["plugins"]
    )
    if last:
        outcome = last["outcome"] or ("running" if holder is not None else "died (the next run resolves it)")
        text += f"\nlast run: {last['command']} {outcome} at {last['started_at']}"
    return text + f"\nlock: {holder.describe() if holder else 'free'}"


async def _status(runner: Runner, plugins: list[LoadedPlugin], fmt: str, explicit: str | None) -> int:
    """Every region's state of the release (or the one of ``--region``). The JSON keeps ``plugins``,
    ``last_run`` and ``lock`` of this runner's own region at the top, as before regions, and lists every
    shown region under ``regions``. The text has one block per region, except for a ledger whose rows all
    have no region (every ledger before regions): then it is the text it always was."""
    own = runner.ledger.region
    shown = await _shown_regions(runner, explicit)
    blocks = {region: await _region_status(runner, plugins, region) for region in shown}
    mine = blocks[own] if own in blocks else await _region_status(runner, plugins, own)
    doc: dict[str, Any] = {
        "command": "status",
        "release": runner.release,
        "ledger": runner.ledger.location,
        "region": own or None,
        **{k: v for k, v in mine.items() if k in ("plugins", "last_run", "lock")},
        "regions": [{k: v for k, v in b.items() if k != "_holder"} for b in blocks.values()],
    }
    if shown == [""]:
        text = _status_text(blocks[""])
    else:
        text = "\n\n".join(f"== {_region_title(region)} ==\n{_status_text(blocks[region])}" for region in shown)
    _emit(fmt, doc, text)
    return ExitCode.OK


def _region_title(region: str) -> str:
    return f"region {region}" if region else "no region (rows written without --region)"


async def _report(runner: Runner, plugins: list[LoadedPlugin], fmt: str, explicit: str | None) -> int:
    """The report of one region (``--region R``: ``.tars/reports/<release>/R/``), or of every region of
    the release in one report with a section per region (``.tars/reports/<release>/``). A ledger without
    regions gets the report it always had."""
    from tars_core.report import write_regions_report, write_report

    shown = await _shown_regions(runner, explicit)
    base = runner.root / ".tars" / "reports" / runner.release
    versions = {p.name: p.version for p in plugins}
    if explicit is not None or shown == [""]:
        region = shown[0]
        release, sections = await _region_report(runner, plugins, region, base / region if region else base)
        paths = write_report(release, sections, runner.redact, versions, region=region or None)
        states = {region: dict(release.states)}
    else:
        parts = []
        for region in shown:
            release, sections = await _region_report(runner, plugins, region, base / region if region else base)
            parts.append((region, release, sections))
        paths = write_regions_report(runner.release, parts, runner.redact, versions, base)
        states = {region: dict(release.states) for region, release, _ in parts}
    _stderr(f"tars-run: report written to {paths['md']}")
    own = runner.ledger.region
    _emit(
        fmt,
        {
            "command": "report",
            "release": runner.release,
            "files": {k: str(v) for k, v in paths.items()},
            # this runner's region's states, as before regions ({} when the report does not show it)
            "states": states.get(own, next(iter(states.values())) if len(states) == 1 else {}),
            "regions": states,
        },
        str(paths["md"]),
    )
    return ExitCode.OK


async def _region_report(
    runner: Runner, plugins: list[LoadedPlugin], region: str, report_dir: Path
) -> tuple[Release, dict[str, ReportSection | str]]:
    """One region's release, rebuilt from the ledger, and the sections its plugins' report hooks add."""
    from tars_core.config import converter
    from tars_core.errors import HookStillRunning
    from tars_core.report import build_release

    ledger = runner.ledger
    targets = runner.redact.data(converter.unstructure(runner.cfg.targets))
    release = build_release(
        runner.release,
        plugins,
        await ledger.states(runner.release, region),
        await ledger.phases(runner.release, region),
        await ledger.benchmarks(runner.release, region),
        targets,
        report_dir,
        await ledger.judgements(runner.release, region),
    )
    sections: dict[str, ReportSection | str] = {}
    for p in plugins:
        if not runner.host.has_hook(p.name, "tars_report"):
            continue
        timeout = runner.cfg.timeout(p.name, "report")
        try:
            result = await runner.host.call(p.name, "tars_report", timeout=timeout, grace=runner.grace, release=release)
            results = result if isinstance(result, list) else [result]
            section = next((r for r in results if r is not None), None)
            if section is not None:  # a hook that returns None adds no section
                sections[p.name] = section
        except Exception as exc:
            if isinstance(exc, HookStillRunning):
                runner.stuck.append(p.name)  # the process must not wait for it at exit
            sections[p.name] = runner.redact(f"tars_report failed: {type(exc).__name__}: {exc}")
    return release, sections


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
