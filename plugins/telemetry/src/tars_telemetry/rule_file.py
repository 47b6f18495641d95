"""A monitor's own rule file on the Prometheus it reads: the change both monitors make, and undo.

Apply has promtool check the text before anything is written (a refusal is the fix's fault: exit 1,
nothing changed), then writes the file through the core's rule-file code (atomic write, reload, wait until every rule
evaluated; a refused file is replaced by what was there) and keeps in ``ctx.state`` what the file held
before the *first* apply, so re-applies of newer versions still roll back to the pre-release file. An
identical file already loaded and healthy (the sandbox seeds the regression rules at its first start) is
left alone and nothing is recorded: a rollback only ever puts back what this plugin's apply replaced.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tars_core import ApplyResult, Context, TargetError
from tars_core.errors import FixError, PromtoolError
from tars_core.prometheus import connect, load_rule_file, rule_health, unload_rule_file
from tars_core.promtool import check_rules_text

PREVIOUS = "previous_rule_file"  # ctx.state key: the file's text before our first apply (None: none)
RULES_PATH = "rule_file"  # ctx.state key: where apply wrote it


def install(ctx: Context, text: str, *, file_name: str, names: Sequence[str], timeout: float, what: str) -> ApplyResult:
    """Load ``text`` as ``file_name`` in ``targets.prometheus_rules_dir``; ``what`` names the rules in
    the step's detail and errors ("12 SLO rules for 7 SLOs")."""
    try:
        check_rules_text(text, file_name)
    except PromtoolError as exc:
        raise FixError(f"promtool refused {what}, nothing was changed: {exc}") from None
    rules_dir = Path(ctx.targets.require("prometheus_rules_dir"))
    if not rules_dir.is_dir():
        raise TargetError(f"targets.prometheus_rules_dir {rules_dir} is not a folder: fix the path in the config")
    path = rules_dir / file_name
    with connect(ctx.targets) as prom:
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text and all(v == "ok" for v in rule_health(prom, names).values()):
            return ApplyResult(changed=False, detail=f"{what} already loaded")
        if ctx.dry_run:
            return ApplyResult(changed=False, detail=f"dry run: would load {what} into {path}")
        if PREVIOUS not in ctx.state:  # the pre-release file, kept across re-applies of newer versions
            ctx.state.update({PREVIOUS: current, RULES_PATH: str(path)})
        load_rule_file(prom, path, text, names, timeout=timeout)
    return ApplyResult(changed=True, detail=f"{what} loaded and healthy")


def restore(ctx: Context, *, names: Sequence[str], timeout: float) -> ApplyResult:
    """Put back what the first apply replaced (the old file, or no file)."""
    if PREVIOUS not in ctx.state:
        ctx.log.warning("%s: nothing to roll back (apply loaded no rule file)", ctx.plugin.name)
        return ApplyResult(changed=False, detail="not applied")
    path = Path(ctx.state[RULES_PATH])
    previous = ctx.state[PREVIOUS]
    if ctx.dry_run:
        return ApplyResult(changed=False, detail=f"dry run: would {'restore' if previous else 'remove'} {path}")
    with connect(ctx.targets) as prom:
        unload_rule_file(prom, path, previous, names, timeout=timeout)
    del ctx.state[PREVIOUS]
    del ctx.state[RULES_PATH]
    return ApplyResult(changed=True, detail=f"{'restored' if previous else 'removed'} {path}")
