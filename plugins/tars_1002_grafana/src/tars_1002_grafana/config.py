"""The ``plugins.tars-1002-grafana`` config section (attrs classes the core structures with cattrs).

Its own module so the hooks, the fix and the benchmark share one typed definition without importing
each other; it needs only attrs, so the entry-point module stays cheap to import. No ``from __future__
import annotations``: cattrs reads these annotations at run time.
"""

from typing import Literal

import attrs

from tars_core.model import positive


@attrs.define
class ExtraRule:
    """A site-specific recording rule added to the generated file (and matched by the patcher)."""

    record: str
    expr: str
    group: str = "tars_site_aggregations"
    interval: str = "30s"


@attrs.define
class GrafanaConfig:
    """``plugins.tars-1002-grafana`` section. See the README for what each key changes."""

    rule_file_name: str = "tars-1002-recording-rules.yml"
    macro_windows: dict[str, str] = attrs.field(factory=dict)
    extra_rules: list[ExtraRule] = attrs.field(factory=list)
    reload_method: Literal["http", "sighup"] = "http"
    prometheus_pid_file: str | None = None
    reload_timeout_s: float = attrs.field(default=150.0, validator=positive)
    verify_data: bool = True
    data_timeout_s: float = attrs.field(
        default=150.0, validator=positive
    )  # verify waits this long for fresh rules to record their first samples
    seed_dashboards: bool = True
    benchmark_agents: int = attrs.field(default=100, validator=positive)
    benchmark_regions: int = attrs.field(default=5, validator=positive)
    benchmark_hours: float = attrs.field(default=2.0, validator=positive)
    benchmark_calls: int = attrs.field(default=5, validator=positive)
    benchmark_resolution_s: int = attrs.field(default=30, validator=positive)
    benchmark_step_s: int = attrs.field(default=60, validator=positive)
