"""The Helm chart and the kustomize base of deploy/, validated offline.

Golden files (tests/release/golden) are re-rendered and compared: the chart with Helm's engine (the helm
binary, or Helm's Go SDK from helm-python-sdk; skipped, saying so, where neither exists), the kustomize
base with kubectl kustomize. Every golden file passes kubernetes-validate --strict against the newest
Kubernetes it knows and the chart's floor, checkov's Kubernetes checks (three skipped, with reasons),
yamllint with chart-testing's rules, and the invariants the release runner relies on: exit codes,
secrets only from Secrets, one Job per region on its own config, deadlines from the release timeouts.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from release_manifests import (
    CHART,
    CHECKOV_SKIPS,
    GOLDEN,
    HELM_CASES,
    KUSTOMIZE,
    KUSTOMIZE_CASES,
    checkov_reports,
    full_values,
    helm_engine,
    load_golden,
    render_helm,
    render_kustomize,
)

from tars_core.config import load_config
from tars_core.model import ExitCode

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DEPLOY = ROOT / "deploy"
CT = DEPLOY / "helm" / "ct"
# The newest Kubernetes kubernetes-validate ships schemas for, and the chart's kubeVersion floor
KUBE_VERSIONS = ("1.37.0", "1.31.0")
ALL_GOLDEN = [*HELM_CASES, *KUSTOMIZE_CASES]
NO_HELM = "helm is absent: no helm binary on PATH and helm-python-sdk not importable, the chart cannot be rendered"


def _sizing_module() -> Any:
    spec = importlib.util.spec_from_file_location("tars_deploy_job_sizing", DEPLOY / "job_sizing.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


job_sizing = _sizing_module()


def _tool(name: str) -> str:
    path = BIN / name
    assert path.exists(), f"{name} is not installed next to {sys.executable}: pip install -e '.[test]'"
    return str(path)


def _jobs(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == "Job"]


def _by_name(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _container(job: dict[str, Any]) -> dict[str, Any]:
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return container  # type: ignore[no-any-return]


def _arg(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def _config_of(job: dict[str, Any], docs: list[dict[str, Any]]) -> str:
    """The tars.yaml text the Job's --config names, from the ConfigMap it mounts."""
    spec = job["spec"]["template"]["spec"]
    args = _container(job)["args"]
    path = Path(_arg(args, "--config"))
    mount = next(m for m in _container(job)["volumeMounts"] if Path(m["mountPath"]) == path.parent)
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    cm = _by_name(docs, "ConfigMap")[volume["configMap"]["name"]]
    return cm["data"][path.name]  # type: ignore[no-any-return]


# -- rendering ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("golden", list(HELM_CASES))
def test_chart_renders_as_its_golden_file(golden: str) -> None:
    if helm_engine() is None:
        pytest.skip(NO_HELM)
    assert render_helm(HELM_CASES[golden]) == load_golden(golden), (
        f"the chart no longer renders as {golden}: review the change, then python tests/release/release_manifests.py "
        "--update"
    )


def test_chart_passes_helm_lint_strict() -> None:
    engine = helm_engine()
    if engine is None:
        pytest.skip(NO_HELM)
    if engine.startswith("helm "):
        out = subprocess.run(["helm", "lint", "--strict", str(CHART)], capture_output=True, text=True, check=False)
        assert out.returncode == 0, out.stdout + out.stderr
        return
    code = (
        "import json, sys, helm_python; "
        "print(json.dumps(helm_python.lint(sys.argv[1], strict=True, kube_version='v1.31.0')))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(CHART)], capture_output=True, text=True, check=True)
    report = json.loads(out.stdout)
    # severity 1 is INFO ("icon is recommended"); warnings (2) and errors (3) fail
    assert report["errors"] == [], report
    assert [m for m in report["messages"] if m["severity"] >= 2] == [], report


@pytest.mark.parametrize("golden", list(KUSTOMIZE_CASES))
def test_kustomize_renders_as_its_golden_file(golden: str) -> None:
    assert render_kustomize(KUSTOMIZE_CASES[golden]) == load_golden(golden), (
        f"kubectl kustomize no longer renders {golden}: review, then python tests/release/release_manifests.py --update"
    )


# -- validators ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_golden_manifests_pass_kubernetes_validate_strict(version: str) -> None:
    files = [str(GOLDEN / g) for g in ALL_GOLDEN]
    out = subprocess.run(
        [_tool("kubernetes-validate"), "--strict", "--kubernetes-version", version, *files],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    resources = sum(len(load_golden(g)) for g in ALL_GOLDEN)
    assert out.stdout.count("passed for resource") + out.stderr.count("passed for resource") == resources


def test_golden_manifests_pass_checkov() -> None:
    report = checkov_reports()["kubernetes"]
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert failed == [], failed
    summary = report["summary"]
    assert summary["parsing_errors"] == 0 and summary["skipped"] == 0, summary
    jobs = sum(len(_jobs(load_golden(g))) for g in ALL_GOLDEN)  # checkov counts each Job's pod too
    assert summary["resource_count"] == sum(len(load_golden(g)) for g in ALL_GOLDEN) + jobs, summary
    assert summary["passed"] > 500, summary


def test_checkov_skips_are_needed_only_where_stated() -> None:
    """The digest case passes the two image checks the others skip."""
    (job,) = _jobs(load_golden("helm-benchmark.yaml"))
    assert "@sha256:" in _container(job)["image"]
    assert set(CHECKOV_SKIPS) == {"CKV_K8S_35", "CKV_K8S_43", "CKV_K8S_15"}


def test_chart_yaml_passes_the_chart_testing_schema() -> None:
    import yamale

    schema = yamale.make_schema(str(CT / "chart_schema.yaml"))
    yamale.validate(schema, yamale.make_data(str(CHART / "Chart.yaml")), strict=True)
    bad = yaml.safe_load((CHART / "Chart.yaml").read_text()) | {"maintainers": [{"email": "x@example.com"}]}
    with pytest.raises(yamale.YamaleError, match="name"):
        yamale.validate(schema, [(bad, "Chart.yaml")], strict=True)


def test_yaml_files_are_yamllint_clean() -> None:
    files = [
        CHART / "Chart.yaml",
        CHART / "values.yaml",
        *sorted((CHART / "ci").glob("*.yaml")),
        *sorted(KUSTOMIZE.rglob("*.yaml")),
        *sorted(GOLDEN.glob("*.yaml")),
    ]
    out = subprocess.run(
        [sys.executable, "-m", "yamllint", "--strict", "-c", str(CT / "lintconf.yaml"), *map(str, files)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert len(files) >= 15


def test_values_pass_the_chart_schema(tmp_path: Path) -> None:
    schema = CHART / "values.schema.json"
    check = [sys.executable, "-m", "check_jsonschema"]
    meta = subprocess.run([*check, "--check-metaschema", str(schema)], capture_output=True, text=True, check=False)
    assert meta.returncode == 0, meta.stdout + meta.stderr
    documents = [tmp_path / "values.json"]
    documents[0].write_text(json.dumps(full_values(())))
    for files in HELM_CASES.values():
        if files:
            documents.append(tmp_path / f"{Path(files[0]).stem}.json")
            documents[-1].write_text(json.dumps(full_values(files)))
    out = subprocess.run(
        [*check, "--schemafile", str(schema), *map(str, documents)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda v: v["regions"][0]["targets"].update(redis="redis://:hunter2@redis:6379/0"), "redis"),
        (lambda v: v["regions"][0]["targets"].update(postgres="postgresql://tars:$ecret@db/tars"), "postgres"),
        (lambda v: v["ledger"].update(url="sqlite:///.tars/state.db"), "url"),
        (lambda v: v["ledger"].update(url="postgresql://tars:pw@db/ledger"), "url"),
        (lambda v: v["plugins"].update({"tars-1004-db": {"db_password": "hunter2"}}), "db_password"),
        (lambda v: v["release"].update(command="deploy"), "command"),
        (lambda v: v["regions"][0].update(name="US_East"), "name"),
        (lambda v: v["regions"][0].pop("secretName"), "secretName"),
        (lambda v: v["job"].update(backoffLimt=3), "backoffLimt"),
    ],
)
def test_schema_refuses_secrets_in_values_and_bad_settings(change: Any, where: str) -> None:
    import jsonschema

    schema = json.loads((CHART / "values.schema.json").read_text())
    values = full_values(())
    change(values)
    errors = list(jsonschema.Draft7Validator(schema).iter_errors(values))
    assert errors, f"the schema accepted a bad {where}"
    said = [" ".join(map(str, e.absolute_path)) + ": " + e.message for e in errors]
    assert any(where in line for line in said), said


# -- what the runner relies on ------------------------------------------------------------------------


@pytest.mark.parametrize("golden", ALL_GOLDEN)
def test_every_job_runs_one_region_safely(golden: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    docs = load_golden(golden)
    jobs = _jobs(docs)
    assert jobs
    regions = [j["metadata"]["labels"]["tars/region"] for j in jobs]
    assert len(set(regions)) == len(regions), f"one Job per region: {regions}"
    assert not [d["kind"] for d in docs if d["kind"] in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")]
    for sa in _by_name(docs, "ServiceAccount").values():
        assert sa["automountServiceAccountToken"] is False
    never_retry = {ExitCode.FAILED, ExitCode.BAD_INPUT, ExitCode.MANUAL_ACTION}
    for job, region in zip(jobs, regions, strict=True):
        spec = job["spec"]
        pod = spec["template"]["spec"]
        container = _container(job)
        args = container["args"]
        env = {e["name"]: e["value"] for e in container["env"]}
        # the region: the label, the env var --region expands, and the config file are the same region
        assert _arg(args, "--region") == "$(TARS_REGION)" and env["TARS_REGION"] == region
        assert spec["template"]["metadata"]["labels"]["tars/region"] == region
        assert env["TARS_LOAD_PLUGINS"] == _arg(args, "--plugins")
        rules = spec["podFailurePolicy"]["rules"]
        fail = next(r for r in rules if r["action"] == "FailJob")
        assert set(fail["onExitCodes"]["values"]) == {int(c) for c in never_retry}
        assert fail["onExitCodes"]["containerName"] == container["name"]
        assert {"action": "Ignore", "onPodConditions": [{"status": "True", "type": "DisruptionTarget"}]} in rules
        assert pod["restartPolicy"] == "Never" and spec["podReplacementPolicy"] == "Failed"
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        sec = container["securityContext"]
        assert sec["readOnlyRootFilesystem"] is True and sec["allowPrivilegeEscalation"] is False
        assert sec["capabilities"]["drop"] == ["ALL"]
        assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert "/tmp" in mounts and "/var/lib/tars" in mounts, "writable /tmp and working folder on a read-only root"
        (secret_ref,) = container["envFrom"]
        assert region in secret_ref["secretRef"]["name"] or region == "default"
        # the config it runs: loads as tars-run loads it, ledger on PostgreSQL, no secret written in it
        text = _config_of(job, docs)
        refs = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text))
        for name in refs:
            monkeypatch.setenv(name, "from-the-secret")
        path = tmp_path / f"{region}.yaml"
        path.write_text(text)
        cfg, _ = load_config(path)
        assert cfg.state.url and cfg.state.url.startswith("postgresql://")
        raw = yaml.safe_load(text)
        for key, url in [("state.url", raw["state"]["url"]), *raw["targets"].items()]:
            if isinstance(url, str) and "://" in url:
                password = urlsplit(url).password
                assert password is None or password.startswith("${"), f"{golden} {region}: literal password in {key}"
        if region != "default":
            assert region in json.dumps(raw["targets"]), f"{region}'s Job runs on another region's targets"


@pytest.mark.parametrize("golden", ALL_GOLDEN)
def test_job_deadlines_are_sized_from_the_release_timeouts(golden: str) -> None:
    docs = load_golden(golden)
    for job in _jobs(docs):
        args = _container(job)["args"]
        release = yaml.safe_load(_config_of(job, docs))["release"]
        cfg = job_sizing.release_config(release)
        want = job_sizing.sizing(
            cfg,
            _arg(args, "--plugins").split(","),
            command=args[-1],
            backoff_limit=job["spec"]["backoffLimit"],
            startup=float(job["metadata"]["annotations"]["tars/startup-allowance-seconds"]),
        )
        assert int(job["metadata"]["annotations"]["tars/attempt-seconds"]) == want["attempt"]
        spec = job["spec"]
        overridden = golden == "helm-dry-run.yaml"  # ci/dry-run-values.yaml sets both explicitly
        if overridden:
            assert (spec["activeDeadlineSeconds"], spec["template"]["spec"]["terminationGracePeriodSeconds"]) == (
                7200,
                600,
            )
        else:
            assert spec["activeDeadlineSeconds"] == want["activeDeadlineSeconds"]
            assert spec["template"]["spec"]["terminationGracePeriodSeconds"] == want["terminationGracePeriodSeconds"]


def test_sizing_follows_the_runner_semantics() -> None:
    cfg = job_sizing.release_config(
        {"timeouts": {"apply": 100, "verify": 10, "rollback": 50}, "timeout_grace": 5, "bake_time": 20,
         "plugin_timeouts": {"b": 200}, "bake_times": {"b": 0}}
    )  # fmt: skip
    got = job_sizing.sizing(cfg, ["a", "b"], backoff_limit=1, startup=60)
    # a: 100+10+20+50+4*5 = 200; b: 200*3+0+20 = 620; preflight max(300, 200)+5; resolve max(60, 400)+10
    attempt = 200 + 620 + 305 + 410
    assert got == {
        "attempt": attempt,
        "activeDeadlineSeconds": 2 * (attempt + 60) + 10,
        "terminationGracePeriodSeconds": 5 + 30 + (50 + 5) + (200 + 5),
    }
    bench = job_sizing.sizing(cfg, ["a"], command="benchmark", backoff_limit=0, startup=0)
    assert bench["attempt"] == 3600 + 5


def test_helm_and_kustomize_run_the_same_job() -> None:
    """The kustomize overlay of us-east-1 and the chart's default us-east-1 Job differ only in names."""
    helm = next(
        j for j in _jobs(load_golden("helm-default.yaml")) if j["metadata"]["labels"]["tars/region"] == "us-east-1"
    )
    kust = next(
        j
        for j in _jobs(load_golden("kustomize-all-regions.yaml"))
        if j["metadata"]["labels"]["tars/region"] == "us-east-1"
    )
    for key in ("backoffLimit", "activeDeadlineSeconds", "podFailurePolicy", "podReplacementPolicy"):
        assert helm["spec"][key] == kust["spec"][key], key
    hp, kp = helm["spec"]["template"]["spec"], kust["spec"]["template"]["spec"]
    for key in ("securityContext", "terminationGracePeriodSeconds", "restartPolicy", "automountServiceAccountToken"):
        assert hp[key] == kp[key], key
    hc, kc = _container(helm), _container(kust)
    for key in ("args", "env", "resources", "securityContext", "envFrom"):
        assert hc[key] == kc[key], key
    assert hc["image"].rsplit(":", 1)[1] == kc["image"].rsplit(":", 1)[1]
    helm_cfg = yaml.safe_load(_config_of(helm, load_golden("helm-default.yaml")))
    kust_cfg = yaml.safe_load(_config_of(kust, load_golden("kustomize-all-regions.yaml")))
    assert helm_cfg == kust_cfg


def test_kustomize_overlays_are_the_regions_of_all_regions() -> None:
    (job,) = _jobs(load_golden("kustomize-base.yaml"))
    assert job["metadata"]["labels"]["tars/region"] == "default"
    overlays = sorted(p.name for p in (KUSTOMIZE / "overlays").iterdir() if p.name != "all-regions")
    all_regions = sorted(
        j["metadata"]["labels"]["tars/region"] for j in _jobs(load_golden("kustomize-all-regions.yaml"))
    )
    assert overlays == all_regions
