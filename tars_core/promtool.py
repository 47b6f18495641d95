"""``promtool``, Prometheus's own checker, as every plugin that writes rules uses it.

A plugin that generates recording or alerting rules proves them with the real tool before a Prometheus
ever loads them: ``promtool check rules`` for syntax and PromQL, ``promtool test rules`` for behaviour,
``promtool tsdb create-blocks-from ...`` to backfill history for benchmarks. One runner here, so every
plugin reports a refusal the same way (promtool's own words) and names the package when it is missing.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from tars_core.errors import PromtoolError


def promtool(*args: str, timeout: float = 600) -> str:
    """Run ``promtool ARGS`` and return its output; :class:`PromtoolError` with that output when it fails."""
    try:
        proc = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise PromtoolError("promtool not found: install the Debian package 'prometheus'") from None
    except subprocess.TimeoutExpired:
        raise PromtoolError(f"promtool {' '.join(args[:2])} did not finish in {timeout:g}s") from None
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise PromtoolError(output.strip())
    return output


def check_rules_text(text: str, name: str = "rules.yml") -> str:
    """``promtool check rules`` on a rule file's text (written to a temporary folder as ``name``)."""
    with tempfile.TemporaryDirectory(prefix="tars-promtool-") as tmp:
        path = Path(tmp) / name
        path.write_text(text, encoding="utf-8")
        return promtool("check", "rules", str(path))
