"""Incidents injected into the sandbox's simulated T.A.R.S. traffic (``tars-run sandbox incident``).

The sandbox's traffic runs below every SLO, so nothing would ever show that a burn-rate alert fires or that a
release gate rolls back. An incident makes an SLO burn on purpose: for a while, a share of the matching events
fail (``errors``), their latencies are multiplied (``latency``) or their rate is (``traffic``).

``.tars/sandbox/incidents.json`` is the contract between the command and the services that simulate traffic:
a sandbox service reads it when its argv has ``--incidents PATH`` (TARS-1002's exporter does), re-reading it
when it changes (:class:`IncidentFile`). Simulated values are a pure function of (time, incidents), so an
edit may only change the future: the command starts incidents, and ends them early, at least
:data:`EFFECT_DELAY` after it writes the file, and ``clear`` keeps ended incidents. Removing one would lower
counters already scraped, which Prometheus reads as a process restart.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import attrs

from tars_core.errors import UsageError
from tars_core.state import atomic_write_text

if TYPE_CHECKING:
    from tars_core.model import SandboxSite

Kind = Literal["errors", "latency", "traffic"]
Status = Literal["pending", "active", "ended"]
KINDS: tuple[str, ...] = get_args(Kind)
FILE_NAME = "incidents.json"
FILE_VERSION = 1
#: Seconds between writing the file and the earliest instant an edit takes effect. A consumer may have
#: reported an instant just before the file changed; an edit that reached back before it would change a
#: value already scraped (a counter going down reads as a restart).
EFFECT_DELAY = 1.0

_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_METRIC = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _check_value(kind: str, value: float) -> None:
    if not math.isfinite(value):
        raise UsageError(f"incident {kind} value must be a finite number, got {value!r}")
    if kind == "errors" and not 0 < value <= 1:
        raise UsageError(
            f"--errors takes the share of matching events that fail, in (0, 1], got {value:g}: "
            "e.g. --errors 0.02 for 2%"
        )
    if kind == "latency" and value <= 0:
        raise UsageError(
            f"--latency takes a factor > 0 for the matching latencies, got {value:g}: e.g. --latency 3 (three "
            "times slower) or 0.5 (twice as fast)"
        )
    if kind == "traffic" and value < 0:
        raise UsageError(
            f"--traffic takes a factor >= 0 for the matching event rates, got {value:g}: e.g. --traffic 0.01 "
            "(a 99% drop) or 3 (a surge)"
        )


def _match(value: Mapping[str, str] | Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    pairs = sorted(dict(value).items())
    for name, val in pairs:
        if not _LABEL.fullmatch(name) or name.startswith("__"):
            raise UsageError(f"incident label {name!r} is not a label name: use LABEL=VALUE, e.g. region=us-east-1")
        if not isinstance(val, str):
            raise UsageError(f"incident label {name} needs a string value, got {val!r}")
    return tuple(pairs)


def _families(value: Sequence[str]) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(value))
    for name in names:
        if not _METRIC.fullmatch(name):
            raise UsageError(
                f"{name!r} is not a metric family name: use e.g. --families tars_http_requests_total "
                "(histograms by base name, tars_http_request_duration_seconds)"
            )
    return names


@attrs.frozen
class Incident:
    """One injected incident. ``start`` and ``end`` are unix times; ``match`` selects series by label values
    (empty: every series); ``families`` names the metric families it applies to (empty: the ones a consumer
    applies that kind to by default, e.g. the request, evaluation and latency families of T.A.R.S.).

    ``value`` by kind: ``errors`` the share of matching events that would have succeeded and fail instead
    (0 < r <= 1, on top of the normal errors, so the bad share becomes b + r·(1 − b)); ``latency`` the
    factor applied to matching latencies (> 0); ``traffic`` the factor applied to matching event rates (>= 0).
    """

    kind: Kind
    value: float = attrs.field(converter=float)
    start: float = attrs.field(converter=float)
    end: float = attrs.field(converter=float)
    match: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_match)
    families: tuple[str, ...] = attrs.field(default=(), converter=_families)
    id: int = 0
    created: float = 0.0

    def __attrs_post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UsageError(f"unknown incident kind {self.kind!r}: use {', '.join(KINDS)}")
        _check_value(self.kind, self.value)
        if not (math.isfinite(self.start) and math.isfinite(self.end)):
            raise UsageError("an incident needs finite start and end times (unix seconds)")
        if self.end <= self.start:
            raise UsageError(
                f"an incident must end after it starts (start {self.start:.0f}, end {self.end:.0f}): "
                "give a positive duration, e.g. --for 2m"
            )

    def status(self, now: float) -> Status:
        if now < self.start:
            return "pending"
        return "active" if now < self.end else "ended"

    def selects(self, labels: Mapping[str, str]) -> bool:
        """Does this incident select a series with ``labels``? A label the series lacks never matches."""
        return all(labels.get(k) == v for k, v in self.match)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "value": self.value,
            "match": dict(self.match),
            "families": list(self.families),
            "start": self.start,
            "end": self.end,
            "created": self.created,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Incident:
        return cls(
            kind=raw["kind"],
            value=raw["value"],
            start=raw["start"],
            end=raw["end"],
            match=raw.get("match") or {},
            families=raw.get("families") or (),
            id=int(raw.get("id", 0)),
            created=float(raw.get("created", 0.0)),
        )

    def effect(self) -> str:
        """What happens to the matching events, in words."""
        if self.kind == "errors":
            return f"errors +{self.value * 100:.4g}% (of the events that would succeed)"
        if self.kind == "latency":
            return f"latency ×{self.value:g}"
        return f"traffic ×{self.value:g}"

    def describe(self, now: float) -> str:
        """One line: what, on which labels (and families), from when to when, and where it stands now."""
        where = ",".join(f"{k}={v}" for k, v in self.match) or "every series"
        if self.families:
            where += " in " + ",".join(self.families)
        status = self.status(now)
        if status == "pending":
            when = f"pending, starts in {format_duration(self.start - now)}"
        elif status == "active":
            when = f"active, {format_duration(self.end - now)} left"
        else:
            when = f"ended {format_duration(now - self.end)} ago"
        return f"#{self.id} {self.effect()} on {where}, {_clock(self.start)} to {_clock(self.end)} ({when})"

    def row(self, now: float) -> dict[str, Any]:
        """The JSON form with the status and readable times (``--format json``)."""
        return {
            **self.to_json(),
            "status": self.status(now),
            "start_iso": _iso(self.start),
            "end_iso": _iso(self.end),
            "text": self.describe(now),
        }


def _clock(ts: float) -> str:
    local = datetime.fromtimestamp(ts).astimezone()
    same_day = local.date() == datetime.now().astimezone().date()
    return local.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M:%S")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")


def format_duration(seconds: float) -> str:
    """``95`` → ``1m35s``; ``3600`` → ``1h``: how the command prints what it was given."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        n, s = divmod(s, size)
        if n:
            parts.append(f"{n}{unit}")
    return "".join(parts)


def parse_duration(text: str, option: str = "--for") -> float:
    """``90``, ``90s``, ``2m``, ``1h30m``, ``500ms`` → seconds (Prometheus' duration units, plain = seconds)."""
    raw = text.strip()
    try:
        seconds = float(raw)
    except ValueError:
        parts = _DURATION_PART.findall(raw)
        if not parts or "".join(n + u for n, u in parts) != raw:
            raise UsageError(f"{option} takes a duration like 90s, 2m or 1h30m, got {text!r}") from None
        seconds = sum(float(n) * _UNIT[u] for n, u in parts)
    if not math.isfinite(seconds) or seconds < 0:
        raise UsageError(f"{option} takes a duration like 90s, 2m or 1h30m, got {text!r}")
    return seconds


def parse_match(items: Sequence[str]) -> dict[str, str]:
    """``["service=eval-api", "region=us-east-1,method=GET"]`` → label pairs (repeatable, comma-separated)."""
    out: dict[str, str] = {}
    for item in items:
        for part in (p.strip() for p in item.split(",")):
            if not part:
                continue
            name, sep, value = part.partition("=")
            name = name.strip()
            if not sep or not name or not value.strip():
                raise UsageError(f"--match takes LABEL=VALUE, got {part!r}: e.g. --match region=us-east-1")
            if name in out and out[name] != value.strip():
                raise UsageError(f"--match gives {name} twice ({out[name]}, {value.strip()}): keep one")
            out[name] = value.strip()
    _match(out)
    return out


# -- the file ----------------------------------------------------------------------------------------------


def incidents_path(sandbox_dir: Path) -> Path:
    """The incidents file of the sandbox in ``sandbox_dir`` (``.tars/sandbox``)."""
    return sandbox_dir / FILE_NAME


def site_incidents_path(site: SandboxSite) -> Path:
    """The incidents file a plugin's sandbox service reads: ``site.dir`` is ``<sandbox>/plugins/<name>``."""
    return incidents_path(site.dir.parent.parent)


def load(path: Path) -> list[Incident]:
    """Every incident in ``path`` (none when it does not exist); malformed content is a one-line UsageError."""
    return _read(path)[0]


def _read(path: Path) -> tuple[list[Incident], int]:
    """The incidents and the next id to give (ids are never reused, so ``#3`` always means one incident)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [], 1
    except (OSError, ValueError) as exc:
        raise UsageError(f"incidents file {path} is unreadable ({exc}): fix or delete it") from None
    if not isinstance(raw, dict) or raw.get("version") != FILE_VERSION or not isinstance(raw.get("incidents"), list):
        raise UsageError(f"incidents file {path} is not a version {FILE_VERSION} incidents file: fix or delete it")
    try:
        incidents = [Incident.from_json(item) for item in raw["incidents"]]
        stored = int(raw.get("next_id", 1))
    except UsageError as exc:
        raise UsageError(f"incidents file {path}: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UsageError(f"incidents file {path} has a malformed incident ({exc!r}): fix or delete it") from None
    return incidents, max([stored, *(i.id + 1 for i in incidents)])


def _save(path: Path, incidents: Sequence[Incident], next_id: int) -> None:
    doc = {"version": FILE_VERSION, "next_id": next_id, "incidents": [i.to_json() for i in incidents]}
    atomic_write_text(path, json.dumps(doc, indent=2) + "\n")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Two commands editing at once must not lose one's incident (read, change, write is not atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def add(path: Path, incident: Incident, *, now: float | None = None, shift: bool = False) -> Incident:
    """Store ``incident`` with the next id. One that starts less than EFFECT_DELAY from now is refused, or with
    ``shift`` moved to start then, keeping its length (the command's "now" is "as soon as allowed")."""
    with _locked(path):
        t = time.time() if now is None else now
        earliest = t + EFFECT_DELAY
        if shift and incident.start < earliest:
            incident = attrs.evolve(incident, start=earliest, end=earliest + incident.end - incident.start)
        if incident.start < earliest - 1e-6:
            raise UsageError(
                f"an incident cannot start before {EFFECT_DELAY:g}s from now (values already reported cannot "
                "change): give a start in the future, e.g. --in 10s"
            )
        incidents, next_id = _read(path)
        stored = attrs.evolve(incident, id=next_id, created=t)
        _save(path, [*incidents, stored], stored.id + 1)
    return stored


def clear(path: Path, *, now: float | None = None) -> dict[str, list[int]]:
    """End every active incident EFFECT_DELAY from now and drop the pending ones; ended ones stay (their
    effect on counters is history). Returns the ids ``ended`` and ``dropped``."""
    with _locked(path):
        t = time.time() if now is None else now
        incidents, next_id = _read(path)
        cut = t + EFFECT_DELAY
        kept: list[Incident] = []
        ended: list[int] = []
        dropped: list[int] = []
        for inc in incidents:
            if inc.start >= cut:
                dropped.append(inc.id)
            elif inc.end > cut:
                kept.append(attrs.evolve(inc, end=cut))
                ended.append(inc.id)
            else:
                kept.append(inc)
        if ended or dropped:
            _save(path, kept, next_id)
    return {"ended": ended, "dropped": dropped}


class IncidentFile:
    """What a consumer (a simulated service) holds: the incidents of one file, re-read only when it changed.

    ``current()`` costs one ``stat`` when nothing changed. An unreadable or malformed file keeps the last good
    incidents (the values must not jump back) and reports the problem once through ``on_error``; a missing
    file means no incidents.
    """

    def __init__(self, path: Path, on_error: Callable[[str], None] | None = None) -> None:
        self.path = path
        self.on_error = on_error
        self._key: tuple[int, int, int] | None = None
        self._incidents: tuple[Incident, ...] = ()
        self.error: str | None = None

    def current(self) -> tuple[Incident, ...]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._key, self._incidents = None, ()
            return ()
        except OSError as exc:
            self._report(f"incidents file {self.path}: {exc}")
            return self._incidents
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if key != self._key:
            try:
                self._incidents = tuple(load(self.path))
            except UsageError as exc:
                self._report(str(exc))
            else:
                self.error = None
            self._key = key
        return self._incidents

    def _report(self, message: str) -> None:
        if message != self.error and self.on_error is not None:
            self.on_error(f"{message}; keeping the {len(self._incidents)} incident(s) read before")
        self.error = message
