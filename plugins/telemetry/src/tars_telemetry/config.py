"""The ``plugins.tars-slo-monitor`` config section (attrs classes the core structures with cattrs).

Only attrs at import time so the entry-point module stays cheap. No ``from __future__ import
annotations``: cattrs reads these annotations at run time.
"""

import attrs

from tars_core import percentage, positive


@attrs.define
class SLOMonitorConfig:
    """``plugins.tars-slo-monitor``: which SLOs to watch, where their rules go, and the release gate.

    Defaults follow the anchors for production (the Workbook's 14.4x fast burn, slo-generator's "freeze
    when the budget is spent"); the sandbox config shortens only what a demo must (bake times).
    """

    # OpenSLO v1 / Sloth prometheus/v1 files or folders; empty means the T.A.R.S. SLOs shipped in the package
    slo_files: list[str] = attrs.field(factory=list)
    rule_file_name: str = "tars-slo-rules.yml"
    # how often the rules are evaluated, and the 1d/3d/period windows (the sandbox uses 5s and 15s so a
    # fresh load is evaluated, and apply returns, within seconds)
    rule_interval: str = attrs.field(default="30s", validator=attrs.validators.matches_re(r"[1-9][0-9]*[smh]"))
    long_rule_interval: str = attrs.field(default="2m", validator=attrs.validators.matches_re(r"[1-9][0-9]*[smh]"))
    reload_timeout_s: float = attrs.field(default=120.0, validator=positive)
    # verify waits this long for every SLO with source data to have its error ratio recorded
    data_timeout_s: float = attrs.field(default=90.0, validator=positive)
    # error-budget policy (tars_preflight): freeze a release while an SLO has less than this share of its
    # period's budget left; a reliability release (release.reliability) gets a warning instead
    freeze_below_percent: float = attrs.field(default=10.0, validator=percentage)
    # tars_observe fails a fix when, over its bake window, an SLO it touches burns at least this fast ...
    bake_burn_rate: float = attrs.field(default=14.4, validator=positive)
    # ... and at least this many times faster than over the same time just before the fix (a burn that
    # was there already is the preflight policy's business, not this fix's) ...
    regression_factor: float = attrs.field(default=2.0, validator=positive)
    # ... on at least this many events in the window (fewer is "insufficient data", never a verdict) ...
    bake_min_events: int = attrs.field(default=100, validator=positive)
    # ... or when the release so far has spent more than this share of an SLO's period budget above what
    # the pre-release error rate (the hour before preflight) would have spent in the same time
    max_release_burn_percent: float = attrs.field(default=2.0, validator=percentage)
    poll_interval_s: float = attrs.field(default=5.0, validator=positive)
    # the shortest window a bake ratio is computed over (a few scrapes; rate() needs two samples)
    min_window_s: float = attrs.field(default=30.0, validator=positive)
    # fix plugin -> the SLOs it touches; a fix not listed here is judged on every SLO
    slos_for: dict[str, list[str]] = attrs.field(factory=dict)
    # SLO names to leave out of the gate (their rules are still loaded)
    ignore_slos: list[str] = attrs.field(factory=list)
    # tars-run benchmark replays the quick incident set (5 scenarios, ~10 s); false: all 28 (minutes)
    benchmark_quick: bool = True
