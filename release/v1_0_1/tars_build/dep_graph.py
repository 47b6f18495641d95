"""Print, as JSON, the runtime dependency graph of the given distributions as installed in this interpreter.

``cyclonedx-py environment`` links a package to every installed package named by any of its
requirements, extras included (``redis`` -> opentelemetry because ``redis[otel]`` exists and something
else installed opentelemetry), which would put OpenTelemetry into the SBOM of the database fix. Here each
requirement's marker is evaluated with the extras actually requested along the way, starting from each
root with none, so an artifact's SBOM lists what installing that artifact pulls in.

Output: ``{"edges": {name: [dep, ...]}, "closure": {root: [name, ...]}}`` with canonical names.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def _requirements(name: str) -> list[Requirement]:
    return [Requirement(r) for r in metadata.distribution(name).requires or []]


def _deps(name: str, extras: Iterable[str]) -> list[tuple[str, frozenset[str]]]:
    """(dependency, extras it is asked for) of ``name`` installed with ``extras``."""
    found: list[tuple[str, frozenset[str]]] = []
    for req in _requirements(name):
        wanted = ["", *sorted(extras)]
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in wanted):
            found.append((str(canonicalize_name(req.name)), frozenset(req.extras)))
    return found


def closure(root: str) -> dict[str, set[str]]:
    """Every distribution ``root`` pulls in, each with the extras asked of it; installed ones only."""
    asked: dict[str, set[str]] = {str(canonicalize_name(root)): set()}
    todo = [str(canonicalize_name(root))]
    while todo:
        name = todo.pop()
        for dep, extras in _deps(name, asked[name]):
            try:
                metadata.distribution(dep)
            except metadata.PackageNotFoundError:
                continue  # a requirement whose marker holds but that is not installed (pip check would say)
            if dep not in asked or not extras <= asked[dep]:
                asked.setdefault(dep, set()).update(extras)
                todo.append(dep)
    return asked


def graph(roots: Iterable[str]) -> dict[str, dict[str, list[str]]]:
    edges: dict[str, set[str]] = {}
    closures: dict[str, list[str]] = {}
    for root in roots:
        asked = closure(root)
        closures[str(canonicalize_name(root))] = sorted(asked)
        for name, extras in asked.items():
            edges.setdefault(name, set()).update(d for d, _ in _deps(name, extras) if d in asked)
    return {"edges": {k: sorted(v) for k, v in sorted(edges.items())}, "closure": closures}


if __name__ == "__main__":
    json.dump(graph(sys.argv[1:]), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
