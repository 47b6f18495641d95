"""The ``plugins.tars-slo-monitor`` config section (attrs classes the core structures with cattrs).

Only attrs at import time so the entry-point module stays cheap. No ``from __future__ import
annotations``: cattrs reads these annotations at run time.
"""

import attrs


@attrs.define
class SLOMonitorConfig:
    """``plugins.tars-slo-monitor``: which SLOs to watch and where their rules go."""

    # OpenSLO v1 / Sloth prometheus/v1 files or folders; empty means the T.A.R.S. SLOs shipped in the package
    slo_files: list[str] = attrs.field(factory=list)
    rule_file_name: str = "tars-slo-rules.yml"
