"""tars-slo-monitor: the plugin's entry-point module (only ``tars_plugin_info`` so far).

Imports the core, attrs and the config class only, so ``tars-run list`` stays fast; the spec reader and
rule generator (yaml) are imported by the hooks that need them. The phase and gate hooks (apply, verify,
rollback, ``tars_preflight``, ``tars_observe``) come in the next session, once the core has the gate hooks;
until then the distribution does not register this module as a ``tars.plugins`` entry point.
"""

from __future__ import annotations

from tars_core import PluginInfo, hookimpl
from tars_telemetry.config import SLOMonitorConfig

NAME = "tars-slo-monitor"


@hookimpl
def tars_plugin_info() -> PluginInfo:
    return PluginInfo(
        name=NAME,
        title="Real-time SLO monitor: multiwindow multi-burn-rate alerts and an error-budget release gate",
        kind="monitor",
        config=SLOMonitorConfig,
        description="SLOs as code (OpenSLO v1, Sloth prometheus/v1); traffic-weighted SLI ratios, budgets, "
        "burn rates and MWMB alerts with a minimum-events guard, proven by generated promtool tests.",
        risk="low: adds Prometheus rules only",
    )
