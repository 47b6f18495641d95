"""What each fix looks like *on the target*, read from the servers themselves (never from the ledger).

A judge answers two questions for its plugin: is the target as a completed apply leaves it
(``applied``), and is it as it was before the release (``baseline``)? Flags are compared with what the
services report they run, files byte for byte and mode for mode, indexes with their validity. A fact
that services pick up asynchronously (a flag) is given a few seconds to settle before it counts.
"""

from __future__ import annotations

import hashlib
import json
import stat
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import attrs

Want = Literal["applied", "baseline"]
SETTLE_S = 15.0  # services poll the flag hash; give them this long to follow a change


def _settle(check: Callable[[], list[str]], seconds: float = SETTLE_S) -> list[str]:
    """``check()`` until it finds no problem or ``seconds`` pass; the last problems found."""
    deadline = time.monotonic() + seconds
    while True:
        problems = check()
        if not problems or time.monotonic() >= deadline:
            return problems
        time.sleep(0.5)


def _redis(site: Any) -> Any:
    import redis

    return redis.Redis.from_url(site.targets["redis"], decode_responses=True, socket_timeout=5)


def _flag(site: Any, name: str) -> str | None:
    client = _redis(site)
    try:
        value = client.hget(site.targets.get("flags_key", "tars:feature_flags"), name)
    finally:
        client.close()
    return None if value is None else str(value)


def _on(value: str | None) -> bool:
    from tars_core.flags import is_on

    return is_on(value)


@attrs.define
class Judge:
    """One plugin's view of its target; ``servers`` are the sandbox services it depends on."""

    plugin: str
    fix_id: str
    servers: tuple[str, ...]
    config: dict[str, Any] = attrs.field(factory=dict)  # the plugin section the suite runs it with
    baseline_files: dict[str, tuple[str, int]] = attrs.field(factory=dict)

    def capture(self, site: Any) -> None:
        """Remember what "as before the release" means where it is not a fixed fact (files)."""

    def problems(self, site: Any, want: Want) -> list[str]:
        raise NotImplementedError


class WsJudge(Judge):
    """TARS-1001: the flag in Redis and whether the hub offers v1.0.1 must agree."""

    FLAG = "tars-1001-ws-reconnect"

    def problems(self, site: Any, want: Want) -> list[str]:
        url = site.targets["websocket_url"].replace("ws://", "http://").rstrip("/") + "/tars-ws/info"

        def check() -> list[str]:
            flag = _flag(site, self.FLAG)
            with urllib.request.urlopen(url, timeout=5) as resp:
                offered = bool(json.loads(resp.read()).get("enabled"))
            wanted = want == "applied"
            out = []
            if _on(flag) != wanted:
                out.append(f"flag {self.FLAG} is {flag!r}, want {'on' if wanted else 'off'}")
            if offered != wanted:
                out.append(f"hub {'offers' if offered else 'does not offer'} v1.0.1 with the flag {flag!r}")
            return out

        return _settle(check)


class GrafanaJudge(Judge):
    """TARS-1002: the rule file and every dashboard, bytes and mode; Prometheus's loaded rule groups."""

    def _files(self, site: Any) -> dict[str, tuple[str, int]]:
        out = {}
        for key in ("prometheus_rules_dir", "grafana_dashboards_dir"):
            for path in sorted(Path(site.targets[key]).glob("*")):
                if path.is_file() and not path.name.startswith("."):
                    out[str(path)] = (hashlib.sha256(path.read_bytes()).hexdigest(), stat.S_IMODE(path.stat().st_mode))
        return out

    def capture(self, site: Any) -> None:
        self.baseline_files = self._files(site)

    def _groups(self, site: Any) -> set[str]:
        from tars_1002_grafana.rules import GROUPS

        from tars_core.prometheus import Prometheus

        with Prometheus(site.targets["prometheus_url"]) as prom:
            loaded = {g["name"] for g in prom.rule_groups()}
        return loaded & {name for name, _, _ in GROUPS}

    def problems(self, site: Any, want: Want) -> list[str]:
        from importlib.resources import files

        from tars_1002_grafana.rules import RULE_FILE_NAME, render_rule_file

        now = self._files(site)
        out = []
        if want == "baseline":
            changed = sorted(p for p in set(now) | set(self.baseline_files) if now.get(p) != self.baseline_files.get(p))
            out += [f"{Path(p).name} differs from before the release (bytes or mode)" for p in changed]
            if groups := self._groups(site):
                out.append(f"Prometheus still serves {len(groups)} TARS-1002 group(s)")
            return out
        rules = Path(site.targets["prometheus_rules_dir"]) / RULE_FILE_NAME
        if not rules.exists() or rules.read_text() != render_rule_file():
            out.append("the rule file is missing or not the generated one")
        shipped = files("tars_1002_grafana") / "data" / "dashboards" / "v1.0.1"
        for path in Path(site.targets["grafana_dashboards_dir"]).glob("*.json"):
            if path.read_text() != (shipped / path.name).read_text():
                out.append(f"{path.name} is not patched")
        modes = {p: m for p, (_, m) in now.items()}
        for p, (_, mode) in self.baseline_files.items():
            if p in modes and modes[p] != mode:
                out.append(f"{Path(p).name} mode {modes[p]:o}, was {mode:o}")
        if not out and not self._groups(site):
            out.append("Prometheus serves none of the TARS-1002 groups")
        return out


class JaegerJudge(Judge):
    """TARS-1003: the flag and the propagation every required service reports in the registry."""

    def problems(self, site: Any, want: Want) -> list[str]:
        from tars_1003_jaeger.plugin import JaegerConfig

        cfg = JaegerConfig()

        def check() -> list[str]:
            flag = _flag(site, cfg.flag)
            client = _redis(site)
            try:
                registry = {k: json.loads(v) for k, v in client.hgetall(cfg.registry_key).items()}
            finally:
                client.close()
            wanted = "on" if want == "applied" else "off"
            out = [] if _on(flag) == (want == "applied") else [f"flag {cfg.flag} is {flag!r}, want {wanted}"]
            for name in cfg.services:
                got = registry.get(name, {}).get("propagation")
                if got != wanted:
                    out.append(f"{name} reports propagation {got!r} with the flag {flag!r}")
            return out

        return _settle(check)


class DbJudge(Judge):
    """TARS-1004: the three indexes and their validity (an INVALID one is never consistent)."""

    def indexes(self, site: Any) -> dict[str, bool]:
        import anyio
        import asyncpg
        from tars_1004_db.indexes import index_specs

        async def read() -> dict[str, bool]:
            conn = await asyncpg.connect(site.targets["postgres"], timeout=10)
            try:
                rows = await conn.fetch(
                    "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                    "WHERE c.relname = ANY($1::text[])",
                    [s.name for s in index_specs()],
                )
            finally:
                await conn.close()
            return {r["relname"]: bool(r["indisvalid"]) for r in rows}

        return anyio.run(read)

    def problems(self, site: Any, want: Want) -> list[str]:
        from tars_1004_db.indexes import index_specs

        found = self.indexes(site)
        out = [f"index {n} is INVALID" for n, valid in found.items() if not valid]
        if want == "baseline":
            out += [f"index {n} is still there" for n, valid in found.items() if valid]
        else:
            out += [f"index {s.name} is missing" for s in index_specs() if s.name not in found]
        return out


class PpoJudge(Judge):
    """TARS-1005: the flag and the trainer implementation every live trainer reports."""

    def problems(self, site: Any, want: Want) -> list[str]:
        from tars_1005_ppo.config import PPOFixConfig

        cfg = PPOFixConfig()

        def check() -> list[str]:
            flag = _flag(site, cfg.flag)
            client = _redis(site)
            try:
                trainers = sorted(client.smembers(f"{cfg.status_prefix}:trainers"))
                status = {t: client.hgetall(f"{cfg.status_prefix}:trainer:{t}") for t in trainers}
            finally:
                client.close()
            wanted = "fixed" if want == "applied" else "legacy"
            out = [] if _on(flag) == (want == "applied") else [f"flag {cfg.flag} is {flag!r}"]
            live = {t: s for t, s in status.items() if s.get("state") == "running"}
            if not live:
                out.append("no live trainer reports")
            out += [
                f"trainer {t} runs {s.get('implementation')!r}, want {wanted!r}"
                for t, s in live.items()
                if s.get("implementation") != wanted
            ]
            return out

        return _settle(check, seconds=60.0)


def judges() -> dict[str, Judge]:
    """Every hotfix of the release, with the services its faults hit and the settings the suite uses
    (fast but real: no bake, no canary pause, a short soak, no wait for recorded data)."""
    return {
        j.plugin: j
        for j in (
            WsJudge("tars-1001-ws", "TARS-1001", ("tars-1001-ws.hub", "redis")),
            GrafanaJudge("tars-1002-grafana", "TARS-1002", ("prometheus",), {"verify_data": False}),
            JaegerJudge("tars-1003-jaeger", "TARS-1003", ("redis", "tars-1003-jaeger.eval-consumer")),
            DbJudge("tars-1004-db", "TARS-1004", ("postgres",)),
            PpoJudge(
                "tars-1005-ppo",
                "TARS-1005",
                ("redis", "tars-1005-ppo.ppo-a"),
                {"canary_fraction": 0.0, "canary_observe_s": 0.0, "verify_iterations": 12},
            ),
        )
    }
