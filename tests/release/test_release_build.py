"""release/v1_0_1/build_v1_0_1_package.py, piece by piece (fast). The whole build, twice over with every
check, is ``nox -s build``; here: release notes, the dependency graph and the SBOM cut of an artifact,
signing and verifying provenance (the verify command end to end), the reproducibility comparison, and
the guards (pinned backend, output folder)."""

from __future__ import annotations

import base64
import importlib.util
import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
HERE = ROOT / "release" / "v1_0_1"
SCRIPT = HERE / "build_v1_0_1_package.py"


def _load_script() -> Any:
    spec = importlib.util.spec_from_file_location("tars_build_v1_0_1_package", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # puts release/v1_0_1 on sys.path for its tars_build package
    return module


build = _load_script()
from tars_build import dep_graph, provenance, release_notes, sbom  # noqa: E402

META = {
    "core": "1.0.1",
    "failures": {},
    "plugins": [
        {
            "name": "tars-slo-monitor",
            "distribution": "tars-telemetry",
            "version": "1.0.1",
            "kind": "monitor",
            "fix_id": None,
            "title": "SLO monitor",
            "description": "",
            "risk": "low",
            "requires": [],
            "flags": [],
            "targets": ["prometheus_url"],
        },
        {
            "name": "tars-1004-db",
            "distribution": "tars-1004-db",
            "version": "1.0.1",
            "kind": "hotfix",
            "fix_id": "TARS-1004",
            "title": "Composite | indexes",
            "description": "Three indexes.",
            "risk": "medium: schema change",
            "requires": [],
            "flags": ["tars-1004-flag"],
            "targets": ["postgres"],
        },
    ],
}


def test_release_notes_carry_metadata_flags_targets_and_the_last_benchmark(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    report.write_text(
        json.dumps(
            {
                "plugins": [
                    {
                        "name": "tars-1004-db",
                        "benchmark": {
                            "metrics": [
                                {"name": "p95", "before": 512.0, "after": 41.5, "unit": "ms", "target": "< 100 ms",
                                 "met": True}
                            ],
                            "detail": "1,000,000 rows",
                        },
                        "phases": [
                            {"phase": "benchmark", "ended_at": "2026-12-01T10:00:00Z"},
                            {"phase": "benchmark", "ended_at": "2026-12-02T10:00:00Z"},
                            {"phase": "apply", "ended_at": "2026-12-03T10:00:00Z"},
                        ],
                    },
                    {"name": "tars-slo-monitor", "benchmark": None, "phases": []},
                ]
            }
        )
    )  # fmt: skip
    benchmarks = release_notes.load_benchmarks(report)
    assert benchmarks["tars-1004-db"]["at"] == "2026-12-02T10:00:00Z" and "tars-slo-monitor" not in benchmarks
    args = (META, benchmarks, ".tars/reports/v1.0.1/report.json", [("a.whl", "ab" * 32)])
    text = release_notes.render(*args, version="1.0.1", commit="c0ffee" * 7, epoch=1_796_000_000)
    assert text == release_notes.render(*args, version="1.0.1", commit="c0ffee" * 7, epoch=1_796_000_000)
    assert text.index("TARS-1004") < text.index("tars-slo-monitor 1.0.1"), "hotfixes before monitors"
    assert "Composite \\| indexes" in text, "cells are escaped by tars-core's table"
    assert "- Feature flags: `tars-1004-flag` (in `targets.flags_key`)" in text
    assert "- Targets it uses: `postgres`" in text and "- Risk: medium: schema change" in text
    assert "| p95 | 512 | 41.5 | ms | < 100 ms | met |" in text
    assert "run ended 2026-12-02T10:00:00Z" in text and "1,000,000 rows" in text
    assert "Last benchmark: none recorded (`.tars/reports/v1.0.1/report.json`)" in text
    assert f"| a.whl | `{'ab' * 32}` |" in text and "sha256sum --check SHA256SUMS" in text
    assert "commit `c0ffeec0ffee`" in text


def test_dependency_graph_follows_only_the_extras_asked_for() -> None:
    """On this environment's own tars-core: httpx is there, its optional 'cli' extra (rich) is not."""
    graph = dep_graph.graph(["tars-core"])
    closure = set(graph["closure"]["tars-core"])
    assert {"tars-core", "pluggy", "attrs", "cattrs", "httpx", "pyyaml", "redis", "asyncpg"} <= closure
    assert not {"rich", "opentelemetry-api", "pytest", "checkov"} & closure
    assert "rich" not in graph["edges"]["httpx"] and "httpcore" in graph["edges"]["httpx"]
    assert set(graph["edges"]) == closure


def _bom() -> dict[str, Any]:
    comp = [
        {"bom-ref": f"{n}==1", "name": n, "version": "1", "type": "library"}
        for n in ("tars-core", "tars-1004-db", "asyncpg", "opentelemetry-api", "pluggy")
    ]
    comp[1]["externalReferences"] = [{"type": "distribution", "url": "file:///tmp/x/tars_1004_db-1-py3-none-any.whl"}]
    # the generated graph links redis-like extras too; relink replaces it
    deps = [{"ref": "tars-1004-db==1", "dependsOn": ["asyncpg==1", "opentelemetry-api==1", "tars-core==1"]}]
    return {"bomFormat": "CycloneDX", "specVersion": "1.6", "version": 1, "components": comp, "dependencies": deps}


def test_sbom_of_an_artifact_is_what_its_distribution_pulls_in() -> None:
    wheels = {"tars-core": ("tars_core-1-py3-none-any.whl", "11" * 32), "tars-1004-db": ("db.whl", "22" * 32)}
    edges = {"tars-1004-db": ["asyncpg", "tars-core"], "tars-core": ["pluggy"], "asyncpg": [], "pluggy": []}
    bom = sbom.relink(sbom.mark_local(_bom(), wheels), edges)
    cut = sbom.for_artifact(
        bom, "tars-1004-db", "db.tar.gz", "33" * 32, ["tars-1004-db", "asyncpg", "tars-core", "pluggy"]
    )
    meta = cut["metadata"]["component"]
    assert meta["purl"] == "pkg:pypi/tars-1004-db@1?file_name=db.tar.gz"
    assert meta["hashes"] == [{"alg": "SHA-256", "content": "33" * 32}]
    assert meta["externalReferences"][0]["url"] == "db.tar.gz", "no path of the build machine"
    assert sorted(c["name"] for c in cut["components"]) == ["asyncpg", "pluggy", "tars-core"]
    core = next(c for c in cut["components"] if c["name"] == "tars-core")
    assert core["purl"].endswith("file_name=tars_core-1-py3-none-any.whl") and core["hashes"][0]["content"] == "11" * 32
    deps = {d["ref"]: d["dependsOn"] for d in cut["dependencies"]}
    assert deps["tars-1004-db==1"] == ["asyncpg==1", "tars-core==1"] and "opentelemetry-api==1" not in deps
    full = sbom.with_root(bom, "tars-release", "1.0.1", "all", wheels)
    root = next(d for d in full["dependencies"] if d["ref"] == "tars-release==1.0.1")
    assert root["dependsOn"] == ["tars-1004-db==1", "tars-core==1"]
    assert full["metadata"]["component"]["type"] == "application"
    assert cut["serialNumber"] == sbom.for_artifact(bom, "tars-1004-db", "db.tar.gz", "33" * 32, [])["serialNumber"]


def _signed(tmp_path: Path) -> tuple[Path, Path, dict[str, Any]]:
    dist = tmp_path / "dist"
    dist.mkdir()
    for name, body in (("a-1-py3-none-any.whl", b"wheel"), ("a-1.tar.gz", b"sdist")):
        (dist / name).write_bytes(body)
    build.write_sums(dist)
    key = tmp_path / "key.pem"
    pub = provenance.generate_key(key)
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    stmt = provenance.statement(
        [(p.name, provenance.sha256_file(p)) for p in sorted(dist.glob("a-*"))],
        external={"source": {"uri": "git+file:///repo", "digest": {"gitCommit": "ab" * 20}}},
        internal={"SOURCE_DATE_EPOCH": 1},
        resolved=[],
        builder_id="urn:tars:builder:test",
        invocation_id="1",
        started="2026-01-01T00:00:00Z",
        finished="2026-01-01T00:00:01Z",
    )
    envelope = provenance.sign(stmt, provenance.load_signer(key))
    (dist / build.PROVENANCE).write_text(json.dumps(envelope) + "\n")
    return dist, pub, envelope


def test_provenance_verifies_and_catches_tampering_and_the_wrong_key(tmp_path: Path) -> None:
    dist, pub, envelope = _signed(tmp_path)
    stmt = provenance.verify(envelope, pub.read_text())
    assert stmt["predicateType"] == "https://slsa.dev/provenance/v1" and len(stmt["subject"]) == 2
    assert provenance.check_subjects(stmt, dist) == []
    forged = dict(envelope)
    payload = json.loads(base64.b64decode(envelope["payload"]))
    payload["subject"][0]["digest"]["sha256"] = "00" * 32
    forged["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    with pytest.raises(provenance.ProvenanceError, match="does not verify"):
        provenance.verify(forged, pub.read_text())
    other = provenance.generate_key(tmp_path / "other.pem")
    with pytest.raises(provenance.ProvenanceError, match="does not verify"):
        provenance.verify(envelope, other.read_text())
    (dist / "a-1.tar.gz").write_bytes(b"changed")
    assert provenance.check_subjects(stmt, dist) == ["a-1.tar.gz: sha256 differs from the signed statement"]
    with pytest.raises(provenance.ProvenanceError, match="cannot be loaded"):
        provenance.load_signer(pub)


def test_verify_command_checks_sums_signature_and_subjects(tmp_path: Path) -> None:
    dist, pub, _ = _signed(tmp_path)
    cmd = [sys.executable, str(SCRIPT), "verify", "--dist", str(dist), "--public-key", str(pub)]
    ok = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    assert "verify: OK" in ok.stderr and "abababab" in ok.stderr
    (dist / "a-1-py3-none-any.whl").write_bytes(b"trojan")
    bad = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert bad.returncode == 1
    assert "a-1-py3-none-any.whl: FAILED" in bad.stderr and "differs from the signed statement" in bad.stderr
    again = subprocess.run([sys.executable, str(SCRIPT), "keygen", str(tmp_path / "key.pem")], capture_output=True,
                           text=True, check=False)  # fmt: skip
    assert again.returncode == 2 and "never overwritten" in again.stderr


def _wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, body in members.items():
            z.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), body)
    return path


def test_reproducibility_check_names_the_member_that_differs(tmp_path: Path) -> None:
    (tmp_path / "1").mkdir()
    (tmp_path / "2").mkdir()
    same = {"pkg/__init__.py": b"", "pkg/x.py": b"x = 1\n"}
    a = [_wheel(tmp_path / "1" / "p-1-py3-none-any.whl", same)]
    b = [_wheel(tmp_path / "2" / "p-1-py3-none-any.whl", same)]
    assert build.compare(a, b) == []
    b = [_wheel(tmp_path / "2" / "p-1-py3-none-any.whl", {**same, "pkg/x.py": b"x = 2\n"})]
    (problem,) = build.compare(a, b)
    assert problem.startswith("p-1-py3-none-any.whl: sha256 differs") and "pkg/x.py" in problem
    assert build.compare(a, []) == ["p-1-py3-none-any.whl: only in build 1"]


def test_a_wheel_from_another_backend_version_is_refused(tmp_path: Path) -> None:
    pinned = build.pinned_backend()
    good = _wheel(
        tmp_path / "g-1-py3-none-any.whl", {"g-1.dist-info/WHEEL": f"Generator: hatchling {pinned}\n".encode()}
    )
    build.check_generator([good], pinned)
    bad = _wheel(tmp_path / "b-1-py3-none-any.whl", {"b-1.dist-info/WHEEL": b"Generator: hatchling 0.1\n"})
    with pytest.raises(build.BuildError, match=r"build-constraints\.txt"):
        build.check_generator([bad], pinned)


def test_build_inputs_are_pinned() -> None:
    for name in ("build-constraints.txt", "build-tools.txt"):
        reqs = [ln.split(";")[0].strip() for ln in (HERE / name).read_text().splitlines() if ln and ln[0] != "#"]
        assert reqs and all("==" in r for r in reqs), f"{name}: every line pinned with =="
    assert build.pinned_backend().count(".") == 2


def test_output_folder_is_emptied_only_when_a_build_wrote_it(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(build.BuildError, match="did not write"):
        build.prepare_out(out)
    assert (out / "notes.txt").exists()
    (out / "notes.txt").unlink()
    build.prepare_out(out)
    (out / "old.whl").write_text("previous build")
    build.prepare_out(out)
    assert sorted(p.name for p in out.iterdir()) == [build.MARKER]
