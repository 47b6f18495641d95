"""The Job limits of a release run, computed from its tars.yaml the way tars-run applies the timeouts.

    python deploy/job_sizing.py deploy/kustomize/base/tars.yaml --plugins tars-1004-db,tars-1005-ppo

prints ``{"attempt": ..., "activeDeadlineSeconds": ..., "terminationGracePeriodSeconds": ...}``. The Helm
chart computes the same in ``_helpers.tpl`` (``tars-release.sizing``) and the kustomize base carries the
numbers; tests compare both with this module on the rendered Jobs. Only the ``release`` section is read,
through ``tars_core.config`` (its defaults, per-plugin timeouts in either form, bake times), so no secret
has to be set to size a Job.

One attempt of ``apply``, at worst: the preflight gate (the longest monitor's, they run at once) + grace;
for each plugin apply, verify, bake and rollback, each followed by the grace a hook gets after its
timeout; and first the resolution of a crashed earlier run (verify then rollback of one plugin) + 2 grace.
A ``benchmark`` attempt is each plugin's benchmark + grace. The deadline covers every attempt the Job may
make (backoffLimit + 1), each with a start-up allowance (scheduling, image pull), plus the Job
controller's back-off between them (10 s doubling, capped at 6 min). After SIGTERM, tars-run stops the
step in flight (grace) and rolls back what it applied (rollback + grace each): that, + 30 s to close the
ledger, is the termination grace period.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

EXIT_MARGIN_S = 30.0
BACKOFF_FIRST_S = 10.0
BACKOFF_CAP_S = 360.0


def release_config(release: dict[str, Any] | None) -> Any:
    """A ``TarsConfig`` holding only this ``release`` section (validated as tars-run would)."""
    from tars_core.config import load_config

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tars.yaml"
        path.write_text(yaml.safe_dump({"release": release or {}}))
        cfg, _ = load_config(path)
    return cfg


def sizing(
    cfg: Any, plugins: Sequence[str], *, command: str = "apply", backoff_limit: int = 2, startup: float = 300.0
) -> dict[str, int]:
    grace = cfg.release.timeout_grace
    term = grace + EXIT_MARGIN_S + sum(cfg.timeout(p, "rollback") + grace for p in plugins)
    if command == "benchmark":
        attempt = sum(cfg.timeout(p, "benchmark") + grace for p in plugins)
    else:
        attempt = sum(
            cfg.timeout(p, "apply") + cfg.timeout(p, "verify") + cfg.bake(p) + cfg.timeout(p, "rollback") + 4 * grace
            for p in plugins
        )
        attempt += max(cfg.timeout(p, "preflight") for p in plugins) + grace
        attempt += max(cfg.timeout(p, "verify") + cfg.timeout(p, "rollback") for p in plugins) + 2 * grace
    backoff = sum(min(BACKOFF_FIRST_S * 2**i, BACKOFF_CAP_S) for i in range(backoff_limit))
    deadline = (backoff_limit + 1) * (attempt + startup) + backoff
    return {
        "attempt": math.ceil(attempt),
        "activeDeadlineSeconds": math.ceil(deadline),
        "terminationGracePeriodSeconds": math.ceil(term),
    }


def sizing_of_file(
    path: Path, plugins: Sequence[str], *, command: str = "apply", backoff_limit: int = 2, startup: float = 300.0
) -> dict[str, int]:
    raw = yaml.safe_load(path.read_text()) or {}
    cfg = release_config(raw.get("release"))
    return sizing(cfg, plugins, command=command, backoff_limit=backoff_limit, startup=startup)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path, help="a tars.yaml (only its release section is read)")
    parser.add_argument("--plugins", required=True, help="the plugins the Job runs, comma-separated")
    parser.add_argument("--command", default="apply")
    parser.add_argument("--backoff-limit", type=int, default=2)
    parser.add_argument("--startup", type=float, default=300.0, help="start-up allowance per attempt (s)")
    args = parser.parse_args(argv)
    plugins = [p for p in args.plugins.split(",") if p]
    result = sizing_of_file(
        args.config, plugins, command=args.command, backoff_limit=args.backoff_limit, startup=args.startup
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
