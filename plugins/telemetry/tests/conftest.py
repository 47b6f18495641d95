"""promtool is required: the rule tests run the real binary (Debian package ``prometheus``)."""

from __future__ import annotations

import shutil

import pytest

if shutil.which("promtool") is None:  # pragma: no cover
    raise pytest.UsageError("tars-telemetry tests need promtool (Debian package 'prometheus')")
