"""``tars.yaml``: loading, ``${ENV}`` interpolation, structuring with cattrs, and secret redaction.

Every error here is the user's to fix, so each names the file, the dotted path and what was expected
(``plugins.tars-1004-db.lock_timeout: expected float``) instead of showing a cattrs traceback. Secrets
(DSN passwords, values of keys such as ``password``/``token``, environment variables with such names) are
collected while loading so that the same ``Redactor`` can scrub every log line and report.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import cattrs
import yaml
from cattrs.v import format_exception

from tars_core.errors import ConfigError
from tars_core.model import PluginInfo, Targets
from tars_core.redact import SECRET_KEY, Redactor

ENV_REF = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


@attrs.define
class Timeouts:
    """Per-phase hook timeouts in seconds: a hung hook must not hold the release lock forever."""

    apply: float = 900.0
    verify: float = 300.0
    rollback: float = 900.0
    benchmark: float = 3600.0
    report: float = 120.0
    sandbox: float = 600.0


@attrs.define
class ReleaseConfig:
    name: str = "v1.0.1"
    rollback: bool = True
    timeouts: Timeouts = attrs.field(factory=Timeouts)
    plugin_timeouts: dict[str, float] = attrs.field(factory=dict)
    progress_every: float = 15.0  # seconds between "still running" lines during a long phase


@attrs.define
class StateConfig:
    url: str | None = None


@attrs.define
class TarsConfig:
    release: ReleaseConfig = attrs.field(factory=ReleaseConfig)
    state: StateConfig = attrs.field(factory=StateConfig)
    targets: Targets = attrs.field(factory=Targets)
    plugins: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    source: str = "<defaults>"

    def timeout(self, plugin: str, phase: str) -> float:
        if plugin in self.release.plugin_timeouts:
            return self.release.plugin_timeouts[plugin]
        return float(getattr(self.release.timeouts, phase, self.release.timeouts.apply))


converter = cattrs.Converter(forbid_extra_keys=True)


def interpolate(node: Any, redactor: Redactor, path: str = "") -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in string scalars; ``$$`` is a literal ``$``.

    Done after YAML parsing so a secret containing ``:`` or ``#`` cannot change the document's shape.
    """
    if isinstance(node, dict):
        return {k: interpolate(v, redactor, f"{path}.{k}" if path else str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, redactor, f"{path}[{i}]") for i, v in enumerate(node)]
    if not isinstance(node, str):
        return node

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("name")
        value = os.environ.get(name)
        if value is None:
            if m.group("default") is None:
                raise ConfigError(
                    f"{path}: environment variable {name} is not set; export it or write ${{{name}:-default}}"
                )
            value = m.group("default")
        if SECRET_KEY.search(name):
            redactor.add(value)
        return value

    return ENV_REF.sub(sub, node)


def _format_exception(exc: BaseException, type_: type | None) -> str:
    """cattrs' wording, except that a validator's own message (``type_`` is None) is kept: "must be
    > 0, got 0" tells the user more than cattrs' generic "invalid value"."""
    if type_ is None and isinstance(exc, ValueError) and str(exc):
        return str(exc)
    return format_exception(exc, type_)


def describe_errors(exc: Exception, root: str) -> str:
    if isinstance(exc, cattrs.BaseValidationError):
        lines = cattrs.transform_error(exc, path=root, format_exception=_format_exception)
    else:
        lines = [str(exc)]
    out = []
    for line in lines:
        msg, _, where = line.rpartition(" @ ")
        if not msg:
            msg, where = line, root
        out.append(f"{where.lstrip('$.') or root}: {msg}")
    return "; ".join(out)


def load_config(path: Path | None, redactor: Redactor | None = None) -> tuple[TarsConfig, Redactor]:
    """Read and structure the config; ``None`` gives the defaults (the caller decides on the sandbox)."""
    redactor = redactor or Redactor()
    if path is None:
        return TarsConfig(), redactor
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}; pass an existing file with --config") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"config {path} is not valid YAML ({problem} at{where}); fix the syntax") from None
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path}: top level must be a mapping with release/state/targets/plugins")
    raw = interpolate(raw, redactor)
    redactor.collect(raw)
    plugins = raw.get("plugins") or {}
    if not isinstance(plugins, dict) or not all(isinstance(v, (dict, type(None))) for v in plugins.values()):
        raise ConfigError(f"config {path}: plugins must map each plugin name to a mapping of its settings")
    body = {k: v for k, v in raw.items() if k != "plugins"}
    try:
        cfg = converter.structure(body, TarsConfig)
    except Exception as exc:
        raise ConfigError(f"config {path}: {describe_errors(exc, '$')}") from None
    cfg.plugins = {str(k): dict(v or {}) for k, v in plugins.items()}
    cfg.source = str(path)
    return cfg, redactor


def plugin_config(info: PluginInfo, cfg: TarsConfig) -> Any:
    """The plugin's section structured into its attrs class (``None`` when it declares none)."""
    section = cfg.plugins.get(info.name, {})
    root = f"plugins.{info.name}"
    if info.config is None:
        if section:
            raise ConfigError(f"config {cfg.source}: {root}: plugin {info.name} takes no settings; remove them")
        return None
    return structure_section(info.config, section, f"config {cfg.source}: ", root)


def structure_section(cls: type, section: Mapping[str, Any], prefix: str, root: str) -> Any:
    try:
        return converter.structure(dict(section), cls)
    except Exception as exc:
        raise ConfigError(f"{prefix}{describe_errors(exc, root)}") from None


def config_digest(info: PluginInfo, section: Any, targets: Targets) -> str:
    """Digest of what a fix was applied with: a change in its settings or targets means re-apply."""
    data = {"plugin": converter.unstructure(section), "targets": converter.unstructure(targets)}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def find_config(explicit: Path | None, cwd: Path) -> Path | None:
    if explicit is not None:
        return explicit
    candidate = cwd / "tars.yaml"
    return candidate if candidate.exists() else None
