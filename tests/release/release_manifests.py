"""Rendering the Kubernetes manifests of deploy/ and their golden files.

    python tests/release/release_manifests.py --update    # re-render every golden file after a change

The chart is rendered by Helm's own engine: the ``helm`` binary when it is on PATH (``helm template``),
else Helm's Go SDK through ``helm-python-sdk`` (a wheel that bundles it as a C library; run in a
subprocess so its Go runtime never shares the test process). With neither there is no Helm here and
the chart tests are skipped, saying so. The kustomize base is rendered by ``kubectl kustomize`` (or a
``kustomize`` binary). Golden files hold the parsed documents in a canonical form (sorted keys, sorted
by kind and name), so they compare equal whatever printed them.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "tars-release"
KUSTOMIZE = ROOT / "deploy" / "kustomize"
GOLDEN = Path(__file__).resolve().parent / "golden"
HELM_RELEASE = "tars-release"
NAMESPACE = "tars-release"
KUBE_VERSION = "1.31.0"  # the chart's kubeVersion floor (Chart.yaml): what helm template is told it targets

# golden file -> values files given to helm (after the chart's values.yaml)
HELM_CASES: dict[str, tuple[str, ...]] = {
    "helm-default.yaml": (),
    "helm-benchmark.yaml": ("ci/benchmark-values.yaml",),
    "helm-dry-run.yaml": ("ci/dry-run-values.yaml",),
}
# golden file -> kustomization folder
KUSTOMIZE_CASES: dict[str, str] = {
    "kustomize-base.yaml": "base",
    "kustomize-all-regions.yaml": "overlays/all-regions",
}
KIND_ORDER = ("Namespace", "NetworkPolicy", "ServiceAccount", "ConfigMap", "PersistentVolumeClaim", "Job")
HEADER = (
    "# Golden file: {what}, in canonical form (keys sorted, documents by kind and name).\n"
    "# Do not edit: python tests/release/release_manifests.py --update re-renders it.\n"
)

_SDK_RENDER = """
import json, sys
import helm_python
chart = helm_python.Chart.load(sys.argv[1])
values = json.loads(sys.argv[2])
chart.validate_schema(values)
out = chart.render(values, name=sys.argv[3], namespace=sys.argv[4], is_install=True)
print(json.dumps({k: v for k, v in out.items() if k.endswith((".yaml", ".yml"))}))
"""


def helm_engine() -> str | None:
    """'helm <version>' or 'helm-python-sdk <version> (Helm SDK <v>)', or None when there is no Helm here."""
    if shutil.which("helm"):
        out = subprocess.run(["helm", "version", "--short"], capture_output=True, text=True, check=False)
        return f"helm {out.stdout.strip()}"
    probe = "import helm_python as h; print(h.__version__, h.helm_sdk_version())"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
    if out.returncode == 0:
        version, sdk = out.stdout.split()
        return f"helm-python-sdk {version} (Helm SDK {sdk})"
    return None


def kustomize_tool() -> list[str] | None:
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


def merge(base: Any, over: Any) -> Any:
    """Helm's merge of values files: mappings merge key by key, anything else is replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = merge(base.get(k), v) if k in base else v
        return out
    return over


def values_of(files: Sequence[str]) -> dict[str, Any]:
    """The user values of ``files`` (chart-relative), merged in order (the chart's defaults not included)."""
    merged: dict[str, Any] = {}
    for name in files:
        merged = merge(merged, yaml.safe_load((CHART / name).read_text()) or {})
    return merged


def full_values(files: Sequence[str]) -> dict[str, Any]:
    """values.yaml with ``files`` merged over it: what the templates see."""
    return merge(yaml.safe_load((CHART / "values.yaml").read_text()), values_of(files))  # type: ignore[no-any-return]


def documents(texts: Iterable[str]) -> list[dict[str, Any]]:
    docs = [d for t in texts for d in yaml.safe_load_all(t) if d]
    return sorted(docs, key=lambda d: (_rank(d["kind"]), d["metadata"]["name"]))


def _rank(kind: str) -> int:
    return KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)


def render_helm(files: Sequence[str]) -> list[dict[str, Any]]:
    if shutil.which("helm"):
        cmd = ["helm", "template", HELM_RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION]
        for name in files:
            cmd += ["--values", str(CHART / name)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        return documents([out.stdout])
    out = subprocess.run(
        [sys.executable, "-c", _SDK_RENDER, str(CHART), json.dumps(values_of(files)), HELM_RELEASE, NAMESPACE],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"Helm SDK render failed: {out.stderr.strip()[-2000:]}")
    return documents(json.loads(out.stdout).values())


def render_kustomize(folder: str) -> list[dict[str, Any]]:
    tool = kustomize_tool()
    if tool is None:
        raise RuntimeError("neither kubectl nor kustomize is installed: apt-get install kubectl (or kustomize)")
    out = subprocess.run([*tool, str(KUSTOMIZE / folder)], capture_output=True, text=True, check=True)
    return documents([out.stdout])


# checkov's Kubernetes checks the manifests do not pass, and why
CHECKOV_SKIPS = {
    "CKV_K8S_35": "secrets as env vars: tars.yaml's ${VAR} interpolation reads the environment, by design",
    "CKV_K8S_43": "image by digest: the digest exists once the image is pushed (image.digest; helm-benchmark uses one)",
    "CKV_K8S_15": "pullPolicy Always: with a digest IfNotPresent is exact and saves a pull per region",
}


@functools.lru_cache(maxsize=1)
def checkov_reports() -> dict[str, dict[str, Any]]:
    """checkov over deploy/Dockerfile and every golden file, in one run (it takes seconds to start).

    Returns the report per framework (``dockerfile``, ``kubernetes``). ``--skip-download`` and
    BC_SKIP_MAPPING keep it from calling the vendor's API (this machine has no network).
    """
    checkov = Path(sys.executable).parent / "checkov"
    if not checkov.exists():
        raise RuntimeError(f"checkov is not installed next to {sys.executable}: pip install -e '.[test]'")
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(ROOT / "deploy" / "Dockerfile", Path(tmp) / "Dockerfile")
        for golden in GOLDEN.glob("*.yaml"):
            shutil.copy(golden, Path(tmp) / golden.name)
        out = subprocess.run(
            [str(checkov), "--directory", tmp, "--framework", "kubernetes", "dockerfile", "--skip-download",
             "--skip-check", ",".join(CHECKOV_SKIPS), "--compact", "--quiet", "--output", "json"],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
            cwd=tmp,
        )  # fmt: skip
    try:
        reports = json.loads(out.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"checkov exited {out.returncode}: {out.stderr.strip()[-1000:]}") from None
    reports = reports if isinstance(reports, list) else [reports]
    return {r["check_type"]: r for r in reports}


def dump(docs: Sequence[dict[str, Any]], what: str) -> str:
    body = yaml.safe_dump_all(docs, sort_keys=True, default_flow_style=False, width=120, explicit_start=True)
    return HEADER.format(what=what) + body


def load_golden(name: str) -> list[dict[str, Any]]:
    return documents([(GOLDEN / name).read_text()])


def update() -> None:
    GOLDEN.mkdir(exist_ok=True)
    engine = helm_engine()
    if engine is None:
        raise SystemExit("no Helm here (no helm binary, helm-python-sdk not installed): cannot render the chart")
    for name, files in HELM_CASES.items():
        what = f"helm template {HELM_RELEASE} deploy/helm/tars-release" + "".join(f" -f {f}" for f in files)
        (GOLDEN / name).write_text(dump(render_helm(files), what))
        print(f"wrote {name} ({engine})")
    for name, folder in KUSTOMIZE_CASES.items():
        (GOLDEN / name).write_text(dump(render_kustomize(folder), f"kubectl kustomize deploy/kustomize/{folder}"))
        print(f"wrote {name}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        raise SystemExit(__doc__)
    update()
