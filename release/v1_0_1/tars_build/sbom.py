"""CycloneDX 1.6 SBOMs: the full install from ``cyclonedx-py environment``, and one per artifact cut from it.

The full-install SBOM describes the clean venv the smoke test ran (the locked versions the image gets),
with the dependency graph of ``dep_graph`` (requirements evaluated with the extras really asked for).
An artifact's SBOM is the part of that install its distribution pulls in: the same versions, without a
venv per artifact. Local distributions (ours) carry no purl or hash in the generated
document and a ``file://`` reference into a temporary folder; both are replaced by the artifact's name,
``pkg:pypi`` purl with its ``file_name`` and its SHA-256.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from packaging.utils import canonicalize_name

SPEC_VERSION = "1.6"


def _ref_of(bom: Mapping[str, Any], name: str) -> str:
    """The bom-ref of the component for distribution ``name``; KeyError when the install lacks it."""
    want = canonicalize_name(name)
    for comp in bom.get("components", []):
        if canonicalize_name(comp["name"]) == want:
            return str(comp["bom-ref"])
    raise KeyError(f"{name} is not a component of the SBOM")


def _artifact_component(comp: Mapping[str, Any], filename: str, sha256: str) -> dict[str, Any]:
    out = {k: v for k, v in comp.items() if k != "externalReferences"}
    out["purl"] = f"pkg:pypi/{canonicalize_name(comp['name'])}@{comp['version']}?file_name={filename}"
    out["hashes"] = [{"alg": "SHA-256", "content": sha256}]
    out["externalReferences"] = [
        {"type": "distribution", "url": filename, "comment": "in the release's dist/ folder (SHA256SUMS)"}
    ]
    return out


def mark_local(bom: dict[str, Any], wheels: Mapping[str, tuple[str, str]]) -> dict[str, Any]:
    """``bom`` with our distributions (name -> (wheel filename, sha256)) named by their wheel, not a path."""
    out = copy.deepcopy(bom)
    for i, comp in enumerate(out.get("components", [])):
        key = canonicalize_name(comp["name"])
        if key in wheels:
            out["components"][i] = _artifact_component(comp, *wheels[key])
    return out


def with_root(bom: dict[str, Any], name: str, version: str, description: str, top: Iterable[str]) -> dict[str, Any]:
    """The full-install SBOM with an application root component that depends on ``top`` (our dists)."""
    out = copy.deepcopy(bom)
    ref = f"{name}=={version}"
    out.setdefault("metadata", {})["component"] = {
        "type": "application",
        "bom-ref": ref,
        "name": name,
        "version": version,
        "description": description,
    }
    deps = [d for d in out.get("dependencies", []) if d["ref"] != ref]
    deps.append({"ref": ref, "dependsOn": sorted(_ref_of(out, t) for t in top)})
    out["dependencies"] = sorted(deps, key=lambda d: d["ref"])
    return out


def relink(bom: Mapping[str, Any], edges: Mapping[str, Iterable[str]]) -> dict[str, Any]:
    """``bom`` with its dependency graph replaced by ``edges`` (canonical name -> canonical names).

    A component without an entry in ``edges`` keeps an empty ``dependsOn`` (nothing of ours needs it).
    """
    out = copy.deepcopy(dict(bom))
    refs = {str(canonicalize_name(c["name"])): c["bom-ref"] for c in out.get("components", [])}
    deps = []
    for comp in sorted(out.get("components", []), key=lambda c: c["bom-ref"]):
        wanted = edges.get(canonicalize_name(comp["name"]), ())
        deps.append({"ref": comp["bom-ref"], "dependsOn": sorted(refs[d] for d in wanted if d in refs)})
    out["dependencies"] = deps
    return out


def for_artifact(
    bom: Mapping[str, Any], dist_name: str, filename: str, sha256: str, closure: Iterable[str]
) -> dict[str, Any]:
    """The SBOM of one artifact: it as ``metadata.component``, the ``closure`` it pulls in as ``components``."""
    root = _ref_of(bom, dist_name)
    names = {canonicalize_name(n) for n in closure}
    comps = {c["bom-ref"]: c for c in bom.get("components", [])}
    keep = {ref for ref, c in comps.items() if canonicalize_name(c["name"]) in names} | {root}
    out: dict[str, Any] = {
        k: copy.deepcopy(v) for k, v in bom.items() if k not in ("components", "dependencies", "metadata")
    }
    out["serialNumber"] = f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, 'sha256:' + sha256)}"
    out["version"] = 1
    meta = copy.deepcopy(dict(bom.get("metadata", {})))
    meta["component"] = _artifact_component(comps[root], filename, sha256)
    out["metadata"] = meta
    out["components"] = [copy.deepcopy(comps[r]) for r in sorted(keep - {root})]
    out["dependencies"] = [
        {"ref": d["ref"], "dependsOn": [r for r in d.get("dependsOn", []) if r in keep]}
        for d in sorted(bom.get("dependencies", []), key=lambda d: d["ref"])
        if d["ref"] in keep
    ]
    return out


def validate(text: str) -> str | None:
    """None when ``text`` is a valid CycloneDX 1.6 JSON document, else the first error in one line."""
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    if error is None:
        return None
    data = getattr(error, "data", None)
    if data is not None and hasattr(data, "message"):
        return f"{getattr(data, 'json_path', '$')}: {data.message}"
    return str(error).splitlines()[0]
