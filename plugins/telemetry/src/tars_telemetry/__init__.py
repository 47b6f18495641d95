"""tars-telemetry: the T.A.R.S. telemetry monitors (``tars-slo-monitor`` first).

Kept empty on purpose: the entry-point module (``tars_telemetry.plugin``) must stay cheap to import, and
the spec reader and rule generator pull in yaml, which ``tars-run list`` should never pay for.
"""
