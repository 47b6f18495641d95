"""Docker HEALTHCHECK of the tars-release image: healthy while tars-run still loads every plugin it was built with.

The image records ``tars-run --format json list`` at build time in /opt/tars/plugins.json; a plugin that
no longer loads (a broken or shadowed install, a mounted TARS_DISABLE_PLUGINS) makes the container
unhealthy with one line naming it. Standard library only: it runs with the image's own interpreter.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BUILT = Path("/opt/tars/plugins.json")


def main() -> int:
    expected = {p["name"] for p in json.loads(BUILT.read_text())["plugins"] if p.get("status") == "ok"}
    try:
        proc = subprocess.run(
            ["tars-run", "--format", "json", "list"], capture_output=True, text=True, timeout=25, check=False
        )
    except subprocess.TimeoutExpired:
        print("unhealthy: tars-run list did not answer within 25 s")
        return 1
    if proc.returncode != 0:
        print(f"unhealthy: tars-run list exited {proc.returncode}: {proc.stderr.strip()[-200:]}")
        return 1
    loaded = {p["name"] for p in json.loads(proc.stdout)["plugins"] if p.get("status") == "ok"}
    missing = sorted(expected - loaded)
    if missing:
        print(f"unhealthy: plugins no longer load: {', '.join(missing)} (tars-run list says why)")
        return 1
    print(f"healthy: {len(loaded)} plugins load")
    return 0


if __name__ == "__main__":
    sys.exit(main())
