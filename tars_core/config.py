"""``tars.yaml``: loading, ``${ENV}`` interpolation, structuring with cattrs, and secret redaction.

Every error here is the user's to fix, so each names the file, the dotted path and what was expected
(``plugins.tars-1004-db.lock_timeout: expected float``) instead of showing a cattrs traceback. Secrets
(DSN passwords, values of keys such as ``password``/``token``, environment variables with such names) are
collected while loading so that the same ``Redactor`` can scrub every log line and report.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Mapping, MutableSequence, Sequence
from pathlib import Path
from typing import Any, Literal, TypeGuard, get_args, get_origin

import attrs
import cattrs
import yaml
from cattrs.cols import homogenous_tuple_structure_factory, list_structure_factory
from cattrs.gen import make_dict_structure_fn
from cattrs.v import format_exception

from tars_core.errors import ConfigError, ValueRefused
from tars_core.model import PluginInfo, Targets, non_negative, positive
from tars_core.redact import SECRET_KEY, Redactor

ENV_REF = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


@attrs.define
class Timeouts:
    """Per-phase hook timeouts in seconds: a hung hook must not hold the release lock forever."""

    apply: float = attrs.field(default=900.0, validator=positive)
    verify: float = attrs.field(default=300.0, validator=positive)
    rollback: float = attrs.field(default=900.0, validator=positive)
    benchmark: float = attrs.field(default=3600.0, validator=positive)
    report: float = attrs.field(default=120.0, validator=positive)
    preflight: float = attrs.field(default=300.0, validator=positive)
    sandbox: float = attrs.field(default=600.0, validator=positive)


TIMED_PHASES = tuple(a.name for a in attrs.fields(Timeouts))


#: A region name: letters, digits, ``-`` and ``_``, starting and ending with a letter or digit, at most
#: 63 characters (a DNS label: the Helm chart puts it into Job names; a SQLite ledger into a file name).
REGION = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?")


def _region_problem(value: object) -> str | None:
    if isinstance(value, str) and REGION.fullmatch(value):
        return None
    return (
        "expected a region name such as us-east-1 (letters, digits, - and _, at most 63, starting and ending "
        f"with a letter or digit), got {value!r}"
    )


def check_region(value: object, where: str) -> str:
    """``value`` as a region name, or a :class:`ConfigError` (exit 2) naming ``where`` it came from."""
    problem = _region_problem(value)
    if problem is not None:
        raise ConfigError(f"{where}: {problem}")
    return str(value)


def _region_name(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
    """The validator of ``release.region``; its message reaches the user (``release: region: ...``)."""
    problem = _region_problem(value)
    if problem is not None:
        raise ValueError(f"{attribute.name}: {problem}")


@attrs.define
class ReleaseConfig:
    """The ``release`` section.

    ``timeout_grace``: after a hook's timeout (or Ctrl-C) the runner waits this long for the hook's worker
    to stop before anything else touches the target; a worker still running then leaves the plugin
    ``unknown``, not rolled back, exit 4.
    """

    name: str = "v1.0.1"
    rollback: bool = True
    timeouts: Timeouts = attrs.field(factory=Timeouts)
    # plugin name -> phase -> seconds (phases checked against TIMED_PHASES before structuring)
    plugin_timeouts: dict[str, dict[str, float]] = attrs.field(factory=dict)
    timeout_grace: float = attrs.field(default=30.0, validator=non_negative)
    progress_every: float = attrs.field(
        default=15.0, validator=positive
    )  # seconds between "still running" lines during a long phase
    # release gates (monitors): a reliability release passes an error-budget freeze with a warning;
    # each fix is observed for bake_time seconds (0: not observed), bake_times overrides it per plugin;
    # 5 minutes by default, the Workbook's fast page tier's short window: a fast burn shows within it.
    # Only monitors that implement tars_observe make a bake happen; without one nothing waits.
    reliability: bool = False
    bake_time: float = attrs.field(default=300.0, validator=non_negative)
    bake_times: dict[str, float] = attrs.field(
        factory=dict, validator=attrs.validators.deep_mapping(attrs.validators.instance_of(str), non_negative)
    )
    on_inconclusive: Literal["fail", "pass"] = "fail"
    # a rollback that cannot reach its target is tried again this many times, delay x the try apart
    rollback_retries: int = attrs.field(default=2, validator=non_negative)
    rollback_retry_delay: float = attrs.field(default=2.5, validator=non_negative)
    # the region this runner releases (``--region`` overrides it): its own ledger rows and run lock inside
    # one shared ledger, so the regions of one release run in parallel; None: the ledger without regions
    region: str | None = attrs.field(default=None, validator=attrs.validators.optional(_region_name))


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
        """The plugin's own timeout for ``phase`` if it has one, else the release-wide one."""
        own = self.release.plugin_timeouts.get(plugin, {}).get(phase)
        if own is not None:
            return float(own)
        return float(getattr(self.release.timeouts, phase, self.release.timeouts.apply))

    def bake(self, plugin: str) -> float:
        """Seconds the monitors watch ``plugin`` after its verify: its own bake time, else the release's."""
        return float(self.release.bake_times.get(plugin, self.release.bake_time))


# What a mapping section looks like, for the error when a config gives a scalar or a list instead.
_SECTION_EXAMPLES = {
    "release": "{name: v1.0.1}",
    "state": "{url: sqlite:///.tars/state.db}",
    "targets": "{postgres: postgresql://db/tars}",
    "plugins": "{tars-1004-db: {lock_timeout_ms: 2000}}",
    "release.timeouts": "{apply: 900}",
    "release.plugin_timeouts": "{tars-1004-db: {apply: 1800}}",
    "release.bake_times": "{tars-1004-db: 300}",
}


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "a list"
    return "a string" if isinstance(value, str) else f"a {type(value).__name__}"


def _mapping(value: object, path: str) -> dict[Any, Any]:
    """``value`` as a section mapping (``None``, an empty YAML key, is an empty one), or a ConfigError."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: expected a mapping such as {_SECTION_EXAMPLES[path]}, got {_kind(value)}")
    return value


def _shape(raw: dict[str, Any]) -> dict[str, Any]:
    """Check every core section is a mapping and normalise ``release.plugin_timeouts``, before cattrs.

    cattrs would report a scalar section as "unknown error ('str' object has no attribute 'keys')". A
    plugin's timeouts may be one number (every phase) or a mapping of phases; a phase that is not one
    of the timed phases is refused with its path, since a misspelt phase would silently keep the default,
    and so is a timeout of zero or less, which would time the hook out before it starts.
    """
    body = {k: _mapping(v, k) if k in _SECTION_EXAMPLES else v for k, v in raw.items() if k != "plugins"}
    release = body.get("release", {})
    if "timeouts" in release:
        release["timeouts"] = _mapping(release["timeouts"], "release.timeouts")
    if "bake_times" in release:
        release["bake_times"] = _mapping(release["bake_times"], "release.bake_times")
    if "plugin_timeouts" in release:
        per_plugin = _mapping(release["plugin_timeouts"], "release.plugin_timeouts")
        for plugin, value in per_plugin.items():
            where = f"release.plugin_timeouts.{plugin}"
            if _number(value):
                _positive_seconds(value, where)
                per_plugin[plugin] = dict.fromkeys(TIMED_PHASES, value)
            elif not isinstance(value, dict):
                raise ConfigError(
                    f"{where}: expected seconds for every phase (1800) or a mapping such as {{apply: 1800}}, "
                    f"got {_kind(value)}"
                )
            else:
                for phase, seconds in value.items():
                    if phase not in TIMED_PHASES:
                        raise ConfigError(f"{where}.{phase}: unknown phase; expected one of {', '.join(TIMED_PHASES)}")
                    _positive_seconds(seconds, f"{where}.{phase}")
    return body


def _number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _positive_seconds(value: object, where: str) -> None:
    """Refuse a timeout of zero or less; a non-number is left to cattrs, which names its type."""
    if _number(value) and value <= 0:
        raise ConfigError(f"{where}: must be > 0, got {value!r}")


converter = cattrs.Converter(forbid_extra_keys=True)


def _strict_str(value: object, _: type) -> str:
    if not isinstance(value, str):
        kind = _kind(value)
        raise ValueRefused(f"invalid value for type, expected str, got {kind} (quote it if it is meant as text)")
    return value


# A value written as ``${VAR}`` is a string after interpolation: numbers and booleans in strings are
# taken when the whole string is one (``lock_timeout_ms: ${LOCK_MS}``); anything else is refused.
_INT_TEXT = re.compile(r"\s*[+-]?\d+\s*")
_BOOL_TEXT = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def _strict_int(value: object, _: type) -> int:
    if isinstance(value, str) and _INT_TEXT.fullmatch(value):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueRefused(f"invalid value for type, expected int, got {_kind(value)} {value!r}")
    return value


def _strict_float(value: object, _: type) -> float:
    number: object = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            pass
    if not _number(number):
        raise ValueRefused(f"invalid value for type, expected float, got {_kind(value)} {value!r}")
    if not math.isfinite(number):
        raise ValueRefused(f"invalid value for type, expected a finite float, got {value!r}")
    return float(number)


def _strict_bool(value: object, _: type) -> bool:
    if isinstance(value, str) and value.strip().lower() in _BOOL_TEXT:
        return _BOOL_TEXT[value.strip().lower()]
    if not isinstance(value, bool):
        raise ValueRefused(f"invalid value for type, expected bool (true or false), got {_kind(value)} {value!r}")
    return value


def _is_homogeneous_sequence(type_: Any) -> bool:
    args = get_args(type_)
    if get_origin(type_) is tuple:
        return len(args) == 2 and args[1] is Ellipsis
    return get_origin(type_) in (list, Sequence, MutableSequence)


def _strict_sequence(type_: Any) -> Callable[[object, Any], Any]:
    """cattrs' own list/tuple hook, after refusing a string or a mapping (cattrs would iterate it:
    ``services: abc`` became the services 'a', 'b' and 'c')."""
    base = (
        homogenous_tuple_structure_factory(type_, config_converter)
        if get_origin(type_) is tuple
        else list_structure_factory(type_, config_converter)
    )

    def hook(value: object, t: Any) -> Any:
        if not isinstance(value, list | tuple):
            raise ValueRefused(f"expected a list, got {_kind(value)}")
        return base(value, t)

    return hook


def _strict_attrs(cls: type) -> Callable[[object, Any], Any]:
    """cattrs' own hook for a settings class, after refusing anything but a mapping (cattrs reported a
    string given for a nested section as "unknown error ('str' object has no attribute 'keys')")."""
    base: Callable[[Any, Any], Any] = make_dict_structure_fn(cls, config_converter)

    def hook(value: object, t: Any) -> Any:
        if not isinstance(value, Mapping):
            raise ValueRefused(f"expected a mapping of settings, got {_kind(value)}")
        return base(value, t)

    return hook


#: What structures config sections: cattrs with every value checked for its kind. Plain cattrs coerces:
#: ``[1, 2]`` became the string "[1, 2]", ``maybe`` the boolean True, 1.5 the count 1, .nan a timeout,
#: and each ran. (``converter`` above stays lenient: it reads back what tars-run itself stored.)
config_converter = converter.copy()
config_converter.register_structure_hook(str, _strict_str)
config_converter.register_structure_hook(int, _strict_int)
config_converter.register_structure_hook(float, _strict_float)
config_converter.register_structure_hook(bool, _strict_bool)
config_converter.register_structure_hook_factory(_is_homogeneous_sequence, _strict_sequence)
config_converter.register_structure_hook_factory(attrs.has, _strict_attrs)


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
    if (type_ is None or isinstance(exc, ValueRefused)) and isinstance(exc, ValueError) and str(exc):
        return str(exc)
    if get_origin(type_) is Literal:
        return f"expected one of {', '.join(map(str, get_args(type_)))}"
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
        where = re.sub(r"\['([^']*)'\]", r".\1", where)  # plugin_timeouts['tars-x'] -> plugin_timeouts.tars-x
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
    try:
        plugins = _mapping(raw.get("plugins"), "plugins")
        for name, section in plugins.items():
            if not isinstance(section, dict | None):
                raise ConfigError(f"plugins.{name}: expected a mapping of the plugin's settings, got {_kind(section)}")
        body = _shape(raw)
    except ConfigError as exc:
        raise ConfigError(f"config {path}: {exc}") from None
    try:
        cfg = config_converter.structure(body, TarsConfig)
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
        return config_converter.structure(dict(section), cls)
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
