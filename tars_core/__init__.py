"""T.A.R.S. hotfix framework core: hookspecs, plugin manager, runner, ledger, config and reports.

Plugins import only what is re-exported here. Nothing in this package imports a plugin or a heavy
library at import time, so ``tars-run list`` stays fast with every plugin installed.
"""

from tars_core.errors import FixError, TargetError
from tars_core.hookspecs import hookimpl, hookspec
from tars_core.model import (
    ApplyResult,
    BenchmarkResult,
    Change,
    Context,
    Evidence,
    Judgement,
    JudgementRecord,
    Metric,
    PhaseRecord,
    Plan,
    PluginInfo,
    Release,
    ReportSection,
    SandboxContribution,
    SandboxSite,
    ServiceSpec,
    Targets,
    VerifyResult,
    non_empty,
    non_negative,
    percentage,
    positive,
    unit_interval,
)

__all__ = [
    "ApplyResult",
    "BenchmarkResult",
    "Change",
    "Context",
    "Evidence",
    "FixError",
    "Judgement",
    "JudgementRecord",
    "Metric",
    "PhaseRecord",
    "Plan",
    "PluginInfo",
    "Release",
    "ReportSection",
    "SandboxContribution",
    "SandboxSite",
    "ServiceSpec",
    "TargetError",
    "Targets",
    "VerifyResult",
    "hookimpl",
    "hookspec",
    "non_empty",
    "non_negative",
    "percentage",
    "positive",
    "unit_interval",
]
