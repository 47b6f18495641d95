#!/usr/bin/env python3
"""T.A.R.S. v1.0.1 build and packaging: reproducible artifacts, checks, SBOMs, signed provenance, smoke test.

    python release/v1_0_1/build_v1_0_1_package.py build --signing-key KEY.pem   # (nox -s build runs this)
    python release/v1_0_1/build_v1_0_1_package.py verify --public-key KEY.pem.pub
    python release/v1_0_1/build_v1_0_1_package.py keygen KEY.pem

``build`` exports the last commit (``git archive HEAD``: uncommitted changes are never in an artifact)
twice into fresh folders, builds the wheel and sdist of tars-core and of every plugin in each with
``SOURCE_DATE_EPOCH`` set to the commit's time and the backend pinned by ``build-constraints.txt``, and
stops unless every artifact has the same SHA-256 in both. Then, into ``dist/``: ``twine check --strict``,
``check-wheel-contents``, ``validate-pyproject``; ``requirements.lock`` (every dependency pinned with its
hashes, resolved as of the commit's time, the artifacts by path and hash: what the image installs); a
clean venv installed from it (hashes required) in which ``tars-run --version``, ``tars-run list`` (every
plugin must load) and ``tars-run --dry-run plan`` against a sandbox config run; CycloneDX 1.6 SBOMs of
that install and of each artifact, validated; ``RELEASE_NOTES.md``; ``SHA256SUMS``; and an in-toto
Statement with a SLSA v1 provenance predicate signed (DSSE) with the local key, verified after signing.

Needs: git, uv (the lock and the clean venv) and the tools of the nox ``build`` session (build, twine,
check-wheel-contents, validate-pyproject, cyclonedx-bom, securesystemslib[crypto]). The smoke test
starts a throwaway sandbox (PostgreSQL, Redis and Prometheus binaries, as ``tars-run sandbox up``
needs them) unless ``--sandbox-config`` names an existing generated config.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

from tars_build import provenance, sbom  # noqa: E402

VERSION = "1.0.1"
RELEASE = f"v{VERSION}"
CONSTRAINTS = HERE / "build-constraints.txt"
# The image (deploy/Dockerfile) runs CPython 3.11 on Debian bookworm, x86_64: the lock is resolved for it.
LOCK_PYTHON = "3.11"
LOCK_PLATFORM = "x86_64-manylinux_2_28"
PROVENANCE = f"tars-{RELEASE}.intoto.jsonl"
PUBLIC_KEY = f"tars-{RELEASE}.intoto.pub.pem"
INSTALL_SBOM = f"tars-release-{VERSION}.install.cdx.json"
MARKER = ".tars-build"  # written into the output folder, so a later build may empty it
SANDBOX_TIMEOUT = 600.0


class BuildError(Exception):
    """A step failed; the message is one line saying what and what to do."""


# -- small helpers -------------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"build: {msg}", file=sys.stderr, flush=True)


def run(
    cmd: Sequence[str | Path],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 900.0,
    what: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``; a non-zero exit is a BuildError quoting the end of its output."""
    argv = [str(c) for c in cmd]
    try:
        proc = subprocess.run(
            argv, cwd=cwd, env=dict(env) if env is not None else None, capture_output=True, text=True, timeout=timeout
        )
    except FileNotFoundError:
        raise BuildError(f"{argv[0]} is not installed: run the build through `nox -s build`") from None
    except subprocess.TimeoutExpired:
        raise BuildError(f"{what or argv[0]} did not finish within {timeout:.0f}s") from None
    if proc.returncode != 0:
        tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-6:])
        raise BuildError(f"{what or ' '.join(argv[:3])} exited {proc.returncode}: {tail}")
    return proc


def sha256(path: Path) -> str:
    return provenance.sha256_file(path)


def git(*args: str) -> str:
    return run(["git", "-C", ROOT, *args], what=f"git {args[0]}").stdout.strip()


def utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Steps:
    """Each step's outcome and time, printed as the summary whether the build passes or not."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, float, str]] = []

    @contextmanager
    def step(self, name: str) -> Iterator[list[str]]:
        notes: list[str] = []
        log(f"{name} ...")
        t0 = time.monotonic()
        try:
            yield notes
        except BaseException as exc:
            known = isinstance(exc, BuildError | provenance.ProvenanceError)
            reason = str(exc) if known else f"{type(exc).__name__}: {exc}"
            self.rows.append((name, "FAILED", time.monotonic() - t0, reason))
            raise
        self.rows.append((name, "ok", time.monotonic() - t0, "; ".join(notes)))
        log(f"{name}: ok ({time.monotonic() - t0:.1f}s){': ' + '; '.join(notes) if notes else ''}")

    def skipped(self, name: str, reason: str) -> None:
        self.rows.append((name, "SKIPPED", 0.0, reason))
        log(f"{name}: SKIPPED: {reason}")

    def summary(self) -> str:
        width = max(len(r[0]) for r in self.rows) if self.rows else 10
        return "\n".join(f"  {n:{width}}  {s:7} {t:7.1f}s  {d}" for n, s, t, d in self.rows)


# -- source and build ----------------------------------------------------------------------------------


def source_info() -> dict[str, Any]:
    commit = git("rev-parse", "HEAD")
    epoch = int(git("log", "-1", "--format=%ct", "HEAD"))
    changed = [line for line in git("status", "--porcelain", "--untracked-files=no").splitlines() if line]
    remote = ""
    try:
        remote = git("remote", "get-url", "origin")
    except BuildError:
        pass
    return {"commit": commit, "epoch": epoch, "changed": changed, "remote": remote}


def export(dest: Path, commit: str) -> Path:
    """The committed tree of ``commit`` in ``dest``: what a fresh clone would build."""
    data = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", commit], capture_output=True, check=True)
    dest.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(data.stdout)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def distribution_dirs(src: Path) -> list[Path]:
    """The core and every plugin folder with a pyproject (the noxfile's PLUGINS rule)."""
    plugins = sorted(
        p for p in (src / "plugins").iterdir() if (p / "pyproject.toml").exists() and not p.name.startswith("_")
    )
    return [src, *plugins]


def build_env(epoch: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TARS_", "PYTHON", "PIP_CONSTRAINT"))}
    env.update(
        SOURCE_DATE_EPOCH=str(epoch),
        UV_CONSTRAINT=str(CONSTRAINTS),
        PIP_CONSTRAINT=str(CONSTRAINTS),
        TZ="UTC",
        LC_ALL="C.UTF-8",
    )
    return env


def build_all(src: Path, out: Path, epoch: int) -> list[Path]:
    installer = ["--installer", "uv"] if shutil.which("uv") else []
    env = build_env(epoch)
    for folder in distribution_dirs(src):
        # sdist first, then the wheel built from the unpacked sdist: a file missing from the sdist fails here
        run(
            [sys.executable, "-m", "build", *installer, "--outdir", out, folder],
            env=env,
            what=f"python -m build {folder.relative_to(src) if folder != src else '.'}",
        )
    return sorted(p for p in out.iterdir() if p.name.endswith((".whl", ".tar.gz")))


def _members(path: Path) -> dict[str, str]:
    """member name -> sha256 of its bytes, to say where two builds of one artifact differ."""
    found: dict[str, str] = {}
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                found[f"{info.filename} {info.date_time} {info.external_attr:o}"] = hashlib.sha256(
                    z.read(info)
                ).hexdigest()
    else:
        with tarfile.open(path) as t:
            for m in t.getmembers():
                f = t.extractfile(m)
                body = f.read() if f else b""
                found[f"{m.name} {m.mtime} {m.mode:o} {m.uid}:{m.gid}"] = hashlib.sha256(body).hexdigest()
    return found


def compare(first: Sequence[Path], second: Sequence[Path]) -> list[str]:
    """Why the two builds differ (empty: byte-identical)."""
    a = {p.name: p for p in first}
    b = {p.name: p for p in second}
    problems = [f"{n}: only in build {'1' if n in a else '2'}" for n in sorted(set(a) ^ set(b))]
    for name in sorted(set(a) & set(b)):
        if sha256(a[name]) != sha256(b[name]):
            ma, mb = _members(a[name]), _members(b[name])
            diff = sorted(set(ma.items()) ^ set(mb.items()))[:4]
            problems.append(f"{name}: sha256 differs ({', '.join(k for k, _ in diff) or 'archive headers only'})")
    return problems


def pinned_backend() -> str:
    for line in CONSTRAINTS.read_text().splitlines():
        if line.startswith("hatchling=="):
            return line.split("==", 1)[1].strip()
    raise BuildError(f"{CONSTRAINTS} pins no hatchling version: add hatchling==<version>")


def check_generator(wheels: Sequence[Path], backend: str) -> None:
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            name = next(n for n in z.namelist() if n.endswith(".dist-info/WHEEL"))
            meta = z.read(name).decode()
        generator = next((ln.split(":", 1)[1].strip() for ln in meta.splitlines() if ln.startswith("Generator:")), "")
        if generator != f"hatchling {backend}":
            raise BuildError(
                f"{wheel.name} was built by {generator!r}, not hatchling {backend}: the build did not use "
                f"{CONSTRAINTS.name} (is uv or pip ignoring UV_CONSTRAINT/PIP_CONSTRAINT?)"
            )


def prepare_out(out: Path) -> None:
    """An empty output folder; only a folder a previous build wrote (or an empty one) is emptied."""
    if out.exists():
        if any(out.iterdir()) and not (out / MARKER).exists() and out.name != "dist":
            raise BuildError(f"{out} holds files this build did not write: give an empty or new --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("written by release/v1_0_1/build_v1_0_1_package.py; emptied by the next build\n")


# -- checks, lock, clean install ------------------------------------------------------------------------


def checks(out: Path, src: Path, artifacts: Sequence[Path]) -> list[str]:
    wheels = [p for p in artifacts if p.suffix == ".whl"]
    run([sys.executable, "-m", "twine", "check", "--strict", *artifacts], what="twine check --strict")
    for wheel in wheels:  # each wheel holds its own package and nothing else at the top level
        package = dist_name(wheel).replace("-", "_")
        run(
            [sys.executable, "-m", "check_wheel_contents", "--no-config", "--toplevel", package, wheel],
            cwd=out,
            what=f"check-wheel-contents {wheel.name}",
        )
    pyprojects = [d / "pyproject.toml" for d in distribution_dirs(src)]
    run([sys.executable, "-m", "validate_pyproject", *pyprojects], what="validate-pyproject")
    return [
        f"twine --strict: {len(artifacts)} artifacts",
        f"check-wheel-contents: {len(wheels)} wheels",
        f"validate-pyproject: {len(pyprojects)} files",
    ]


def uv() -> str:
    found = shutil.which("uv")
    if not found:
        raise BuildError("uv is not installed: pip install uv (the nox build session installs it)")
    return found


def lock(out: Path, wheels: Sequence[Path], epoch: int) -> Path:
    """``requirements.lock``: the artifacts by relative path and hash, every dependency pinned with hashes."""
    (out / "requirements.in").write_text("".join(f"./{w.name}\n" for w in wheels))
    target = out / "requirements.lock"
    run(
        [
            uv(),
            "pip",
            "compile",
            "requirements.in",
            "--generate-hashes",
            "--python-version",
            LOCK_PYTHON,
            "--python-platform",
            LOCK_PLATFORM,
            "--exclude-newer",
            utc(epoch),
            "--no-header",
            "--quiet",
            "--output-file",
            "requirements.lock.tmp",
        ],
        cwd=out,
        what="uv pip compile",
    )
    body = (out / "requirements.lock.tmp").read_text()
    (out / "requirements.lock.tmp").unlink()
    header = (
        f"# T.A.R.S. {RELEASE}: every distribution the full install needs, pinned with its hashes, resolved for\n"
        f"# CPython {LOCK_PYTHON} on {LOCK_PLATFORM} from what the index had at the commit's time ({utc(epoch)}).\n"
        "# Install from this folder: pip install --require-hashes -r requirements.lock  (deploy/Dockerfile does)\n"
    )
    target.write_text(header + body)
    return target


def clean_env(venv: Path) -> dict[str, str]:
    """The environment of a user who just installed the artifacts: no TARS_* switches, no dev venv."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TARS_", "PYTHON", "VIRTUAL_ENV", "UV_", "PIP_")) and k != "CONDA_PREFIX"
    }
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    return env


def install_clean(out: Path, venv: Path) -> str:
    run(
        [uv(), "venv", "--quiet", "--no-python-downloads", "--python", LOCK_PYTHON, venv],
        what=f"uv venv (CPython {LOCK_PYTHON})",
    )
    py = venv / "bin" / "python"
    run(
        [uv(), "pip", "install", "--quiet", "--python", py, "--require-hashes", "-r", "requirements.lock"],
        cwd=out,
        what="uv pip install --require-hashes -r requirements.lock",
    )
    run([uv(), "pip", "check", "--python", py], what="uv pip check")
    listed = run([uv(), "pip", "list", "--python", py, "--format", "json"], what="uv pip list").stdout
    return f"{len(json.loads(listed))} distributions"


def entry_point_names(wheels: Sequence[Path]) -> dict[str, str]:
    """tars.plugins entry-point name -> distribution file, read from the wheels themselves."""
    names: dict[str, str] = {}
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            eps = [n for n in z.namelist() if n.endswith(".dist-info/entry_points.txt")]
            text = z.read(eps[0]).decode() if eps else ""
        section = ""
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("["):
                section = line.strip("[]")
            elif section == "tars.plugins" and "=" in line:
                names[line.split("=", 1)[0].strip()] = wheel.name
    return names


def check_version(venv: Path, work: Path, env: Mapping[str, str]) -> str | None:
    """``tars-run --version`` must print the release's version. None when it did; the reason when a
    tars-core without that option was built (its argparse refuses it): then the installed metadata is
    checked instead and the summary shows the check as SKIPPED, so it is never silently passed."""
    tars = str(venv / "bin" / "tars-run")
    proc = subprocess.run([tars, "--version"], cwd=work, env=dict(env), capture_output=True, text=True, timeout=60)
    shown = (proc.stdout + proc.stderr).strip()
    if proc.returncode == 0:
        if VERSION not in shown:
            raise BuildError(f"tars-run --version printed {shown!r}, expected {VERSION}")
        return None
    lacks = proc.returncode == 2 and ("unrecognized arguments: --version" in shown or "required: COMMAND" in shown)
    if not lacks:
        raise BuildError(f"tars-run --version exited {proc.returncode}: {shown[-300:]}")
    code = "from importlib.metadata import version; print(version('tars-core'))"
    installed = run([venv / "bin" / "python", "-c", code], env=env, what="tars-core version").stdout.strip()
    if installed != VERSION:
        raise BuildError(f"the clean venv has tars-core {installed}, expected {VERSION}")
    return (
        f"tars-core {installed} has no --version option (tars_core/cli.py refuses it with exit 2); "
        f"the installed distribution's metadata says {installed}"
    )


def smoke(venv: Path, work: Path, wheels: Sequence[Path], sandbox_config: Path | None, notes: list[str]) -> str | None:
    """tars-run from the clean venv: --version, list (every plugin loads), a dry-run plan on a sandbox config.

    Returns why ``--version`` was skipped, if it was (see :func:`check_version`).
    """
    env = clean_env(venv)
    tars = str(venv / "bin" / "tars-run")
    work.mkdir()
    skipped = check_version(venv, work, env)
    notes.append(f"--version: {'SKIPPED (see below)' if skipped else 'prints ' + VERSION}")
    listing = json.loads(run([tars, "--format", "json", "list"], cwd=work, env=env, what="tars-run list").stdout)
    expected = entry_point_names(wheels)
    rows = {r["name"]: r for r in listing["plugins"]}
    broken = [f"{n} ({r.get('status')}: {r.get('error', '')})" for n, r in rows.items() if r.get("status") != "ok"]
    missing = sorted(set(expected) - set(rows))
    if broken or missing:
        raise BuildError(f"tars-run list: not loaded: {', '.join(broken + missing)}; fix the plugin or its wheel")
    notes.append(f"list: {len(rows)} plugins ok ({', '.join(sorted(rows))})")
    started = False
    try:
        if sandbox_config is None:
            t0 = time.monotonic()
            run([tars, "sandbox", "up"], cwd=work, env=env, what="tars-run sandbox up", timeout=SANDBOX_TIMEOUT)
            started = True
            sandbox_config = work / ".tars" / "sandbox" / "tars.yaml"
            notes.append(f"sandbox up from the artifacts in {time.monotonic() - t0:.0f}s")
        plan = json.loads(
            run(
                [tars, "--config", sandbox_config, "--format", "json", "--dry-run", "plan"],
                cwd=work,
                env=env,
                what="tars-run --dry-run plan",
            ).stdout
        )
    finally:
        if started:  # stop it and delete it, data included (its cluster may live in /var/tmp, outside work/)
            destroy = "import sys, pathlib, tars_core.sandbox.lifecycle as s; s.destroy(pathlib.Path(sys.argv[1]))"
            gone = subprocess.run(
                [venv / "bin" / "python", "-c", destroy, work],
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            if gone.returncode != 0:
                log(f"warning: the smoke test's sandbox in {work} was not removed: {gone.stderr.strip()[-300:]}")
    planned = [r["plugin"] for r in plan["plugins"]]
    if sorted(planned) != sorted(expected):
        raise BuildError(f"the dry-run plan lists {planned}, expected every plugin {sorted(expected)}")
    notes.append(f"dry-run plan: {' -> '.join(planned)}")
    return skipped


# -- SBOM, notes, checksums, provenance -----------------------------------------------------------------


def dist_name(artifact: Path) -> str:
    """Distribution name of a wheel or sdist file (``tars_1004_db-1.0.1-py3-none-any.whl`` -> tars-1004-db)."""
    return artifact.name.split("-", 1)[0].replace("_", "-")


def sboms(out: Path, venv: Path, artifacts: Sequence[Path], epoch: int) -> list[str]:
    raw = venv.parent / "install.cdx.json"
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch)}
    run(
        [
            sys.executable,
            "-m",
            "cyclonedx_py",
            "environment",
            "--sv",
            sbom.SPEC_VERSION,
            "--of",
            "JSON",
            "--output-reproducible",
            "-o",
            raw,
            venv / "bin" / "python",
        ],
        env=env,
        what="cyclonedx-py environment",
    )
    wheels = {dist_name(a): (a.name, sha256(a)) for a in artifacts if a.suffix == ".whl"}
    env = clean_env(venv)
    env["PYTHONPATH"] = str(HERE)
    graph = json.loads(
        run([venv / "bin" / "python", "-m", "tars_build.dep_graph", *wheels], env=env, what="dependency graph").stdout
    )
    bom = sbom.relink(sbom.mark_local(json.loads(raw.read_text()), wheels), graph["edges"])
    full = sbom.with_root(bom, "tars-release", VERSION, f"T.A.R.S. {RELEASE}: tars-core and every plugin", wheels)
    folder = out / "sbom"
    folder.mkdir()
    docs = {INSTALL_SBOM: full}
    for artifact in artifacts:
        name = dist_name(artifact)
        closure = graph["closure"][name]
        docs[f"{artifact.name}.cdx.json"] = sbom.for_artifact(bom, name, artifact.name, sha256(artifact), closure)
    for name, doc in docs.items():
        text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
        error = sbom.validate(text)
        if error:
            raise BuildError(f"sbom/{name} is not valid CycloneDX {sbom.SPEC_VERSION}: {error}")
        (folder / name).write_text(text)
    return [
        f"{len(docs)} documents valid against CycloneDX {sbom.SPEC_VERSION}",
        f"install: {len(full['components'])} components",
    ]


def release_notes(
    out: Path, venv: Path, artifacts: Sequence[Path], src: dict[str, Any], benchmarks: Path | None, tmp: Path
) -> str:
    listing = tmp / "artifacts.json"
    listing.write_text(json.dumps([[a.name, sha256(a)] for a in artifacts]))
    cmd: list[str | Path] = [
        venv / "bin" / "python",
        "-m",
        "tars_build.release_notes",
        "--artifacts",
        listing,
        "--version",
        VERSION,
        "--commit",
        src["commit"],
        "--epoch",
        str(src["epoch"]),
        "--metadata-out",
        tmp / "plugins.json",
        "--out",
        out / "RELEASE_NOTES.md",
    ]
    if benchmarks is not None:
        benchmarks = benchmarks.resolve()
        label = benchmarks.relative_to(ROOT) if benchmarks.is_relative_to(ROOT) else benchmarks
        cmd += ["--benchmarks", benchmarks, "--benchmarks-label", str(label)]
    env = clean_env(venv)
    env["PYTHONPATH"] = str(HERE)  # tars_build only; tars_core and the plugins come from the clean venv
    run(cmd, env=env, what="release notes")
    meta = json.loads((tmp / "plugins.json").read_text())
    with_figures = 0
    if benchmarks is not None:
        from tars_build.release_notes import load_benchmarks

        with_figures = len(load_benchmarks(benchmarks))
    return f"{len(meta['plugins'])} plugins, benchmark figures for {with_figures}"


def write_sums(out: Path) -> str:
    files = sorted(
        p
        for p in out.rglob("*")
        if p.is_file() and p.name not in ("SHA256SUMS", MARKER, PROVENANCE, PUBLIC_KEY, "requirements.in")
    )
    text = "".join(f"{sha256(p)}  {p.relative_to(out).as_posix()}\n" for p in files)
    (out / "SHA256SUMS").write_text(text)
    return text


def verify_sums(folder: Path) -> list[str]:
    """What ``sha256sum --check SHA256SUMS`` would report as failed, in Python."""
    problems = []
    for line in (folder / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ", 1)
        path = folder / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif sha256(path) != digest:
            problems.append(f"{name}: FAILED")
    return problems


def tool_versions() -> list[dict[str, Any]]:
    from importlib import metadata

    found = []
    for name in ("build", "twine", "check-wheel-contents", "validate-pyproject", "cyclonedx-bom", "securesystemslib"):
        try:
            found.append({"uri": f"pkg:pypi/{name}@{metadata.version(name)}"})
        except metadata.PackageNotFoundError:
            pass
    uv_version = run([uv(), "--version"], what="uv --version").stdout.split()[1]
    found.append({"uri": f"pkg:pypi/uv@{uv_version}"})
    return found


def key_password() -> bytes | None:
    password = os.environ.get("TARS_SIGNING_KEY_PASSWORD")
    return password.encode() if password else None


def sign_provenance(
    out: Path, artifacts: Sequence[Path], src: dict[str, Any], key: Path, argv: Sequence[str], started: float
) -> str:
    signer = provenance.load_signer(key, key_password())
    source_uri = f"git+{src['remote']}" if src["remote"] else f"git+file://{ROOT}"
    stmt = provenance.statement(
        [(a.name, sha256(a)) for a in artifacts],
        external={
            "source": {"uri": source_uri, "digest": {"gitCommit": src["commit"]}},
            "command": ["python", "release/v1_0_1/build_v1_0_1_package.py", *argv],
            "distributions": [dist_name(a) for a in artifacts if a.suffix == ".whl"],
        },
        internal={
            "SOURCE_DATE_EPOCH": src["epoch"],
            "python": platform.python_version(),
            "platform": platform.platform(),
            "buildConstraints": CONSTRAINTS.read_text().splitlines(),
            "worktreeHadUncommittedChanges": bool(src["changed"]),
            "reproducibilityCheck": "two builds from two fresh exports, every artifact byte-identical",
        },
        resolved=[
            {"uri": source_uri, "digest": {"gitCommit": src["commit"]}},
            {"uri": f"pkg:pypi/hatchling@{pinned_backend()}"},
            *tool_versions(),
        ],
        builder_id=f"urn:tars:builder:local:{platform.node() or 'unknown-host'}",
        invocation_id=str(uuid.uuid4()),
        started=utc(started),
        finished=utc(time.time()),
        byproducts=[
            {"name": p.relative_to(out).as_posix(), "digest": {"sha256": sha256(p)}}
            for p in sorted(out.rglob("*"))
            if p.is_file() and p.name not in (MARKER, PROVENANCE, PUBLIC_KEY) and p not in artifacts
        ],
    )
    envelope = provenance.sign(stmt, signer)
    (out / PROVENANCE).write_text(json.dumps(envelope, sort_keys=True) + "\n")
    (out / PUBLIC_KEY).write_text(provenance.public_pem(signer))
    checked = provenance.verify(provenance.read_envelopes(out / PROVENANCE)[0], provenance.public_pem(signer))
    problems = provenance.check_subjects(checked, out)
    if problems:
        raise BuildError(f"the provenance does not match dist/: {'; '.join(problems)}")
    return f"{len(artifacts)} subjects signed with {signer.public_key.scheme} key {signer.public_key.keyid[:16]}"


# -- commands ---------------------------------------------------------------------------------------------


def cmd_build(args: argparse.Namespace, argv: Sequence[str]) -> int:
    started = time.time()
    t0 = time.monotonic()
    steps = Steps()
    out: Path = args.out.resolve()
    tmp = Path(tempfile.mkdtemp(prefix="tars-build-"))
    ok = False
    try:
        with steps.step("source") as notes:
            src = source_info()
            notes.append(f"commit {src['commit'][:12]}, SOURCE_DATE_EPOCH={src['epoch']} ({utc(src['epoch'])})")
            if src["changed"]:
                notes.append(f"{len(src['changed'])} uncommitted change(s) in the work tree are NOT built")
            backend = pinned_backend()
            provenance.load_signer(args.signing_key, key_password())  # a bad key fails now, not after the build
        builds: list[list[Path]] = []
        for label in ("1", "2"):
            with steps.step(f"build {label}") as notes:
                tree = export(tmp / f"src{label}", src["commit"])
                artifacts = build_all(tree, tmp / f"dist{label}", src["epoch"])
                check_generator([a for a in artifacts if a.suffix == ".whl"], backend)
                builds.append(artifacts)
                notes.append(f"{len(artifacts)} artifacts from {len(distribution_dirs(tree))} distributions")
        with steps.step("reproducible") as notes:
            problems = compare(builds[0], builds[1])
            if problems:
                raise BuildError("the two builds differ: " + "; ".join(problems))
            notes.append(f"{len(builds[0])} artifacts byte-identical in both builds")
        with steps.step("dist") as notes:
            prepare_out(out)
            artifacts = [Path(shutil.copy2(a, out / a.name)) for a in builds[0]]
            notes.append(str(out))
        with steps.step("checks") as notes:
            notes += checks(out, tmp / "src1", artifacts)
        wheels = [a for a in artifacts if a.suffix == ".whl"]
        with steps.step("lock") as notes:
            locked = lock(out, wheels, src["epoch"])
            pins = [ln for ln in locked.read_text().splitlines() if ln and not ln[0].isspace() and ln[0] != "#"]
            notes.append(f"requirements.lock: {len(pins)} pins with hashes")
        venv = tmp / "venv"
        with steps.step("clean install") as notes:
            notes.append(install_clean(out, venv))
        with steps.step("smoke") as notes:
            version_skipped = smoke(venv, tmp / "smoke", wheels, args.sandbox_config, notes)
        if version_skipped:
            steps.skipped("smoke: tars-run --version", version_skipped)
        with steps.step("sbom") as notes:
            notes += sboms(out, venv, artifacts, src["epoch"])
        benchmarks = args.benchmarks
        if benchmarks is None and (ROOT / ".tars" / "reports" / RELEASE / "report.json").exists():
            benchmarks = ROOT / ".tars" / "reports" / RELEASE / "report.json"
        with steps.step("release notes") as notes:
            notes.append(release_notes(out, venv, artifacts, src, benchmarks, tmp))
        with steps.step("SHA256SUMS") as notes:
            sums = write_sums(out)
            notes.append(f"{len(sums.splitlines())} files")
        with steps.step("provenance") as notes:
            notes.append(sign_provenance(out, artifacts, src, args.signing_key, argv, started))
        ok = True
    except (BuildError, provenance.ProvenanceError):
        pass
    finally:
        if args.keep_temp:
            log(f"temporary files kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        print(f"\nbuild {RELEASE} steps:\n{steps.summary()}\n", file=sys.stderr)
    if not ok:
        name, _, _, reason = next((r for r in steps.rows if r[1] == "FAILED"), ("?", "", 0.0, ""))
        log(f"FAILED at {name} after {time.monotonic() - t0:.0f}s: {reason}")
        return 1
    print((out / "SHA256SUMS").read_text(), end="")
    skipped = [r[0] for r in steps.rows if r[1] == "SKIPPED"]
    log(
        f"OK in {time.monotonic() - t0:.0f}s"
        + (f" with {len(skipped)} check(s) SKIPPED ({', '.join(skipped)}; the summary says why)" if skipped else "")
        + f": {out}. Verify: (cd {out} && sha256sum --check SHA256SUMS); "
        f"python {Path(__file__).relative_to(ROOT)} verify --dist {out} --public-key <the public key you trust>"
    )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    folder: Path = args.dist.resolve()
    problems = verify_sums(folder)
    envelope_path = args.provenance or folder / PROVENANCE
    try:
        stmt = provenance.verify(provenance.read_envelopes(envelope_path)[0], args.public_key.read_text())
    except (provenance.ProvenanceError, OSError, IndexError, ValueError) as exc:
        print(f"verify: provenance {envelope_path}: {exc}", file=sys.stderr)
        return 1
    problems += provenance.check_subjects(stmt, folder)
    for p in problems:
        print(f"verify: {p}", file=sys.stderr)
    if problems:
        return 1
    commit = stmt["predicate"]["buildDefinition"]["externalParameters"]["source"]["digest"]["gitCommit"]
    print(
        f"verify: OK: SHA256SUMS matches {folder}; the provenance signature verifies; its "
        f"{len(stmt['subject'])} subjects match; built from commit {commit}",
        file=sys.stderr,
    )
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    try:
        pub = provenance.generate_key(args.path)
    except provenance.ProvenanceError as exc:
        print(f"keygen: {exc}", file=sys.stderr)
        return 2
    print(f"keygen: private key {args.path} (mode 0600, keep it secret), public key {pub}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="build_v1_0_1_package.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build, check, smoke-test, describe and sign the v1.0.1 artifacts")
    b.add_argument(
        "--signing-key",
        type=Path,
        required=True,
        help="PEM private key (ECDSA P-256, Ed25519 or RSA); its password, if any, in TARS_SIGNING_KEY_PASSWORD",
    )
    b.add_argument("--out", type=Path, default=ROOT / "dist", help="output folder (default: dist/)")
    b.add_argument(
        "--benchmarks",
        type=Path,
        help="report.json of the last benchmark for the release notes "
        f"(default: .tars/reports/{RELEASE}/report.json when it exists)",
    )
    b.add_argument(
        "--sandbox-config",
        type=Path,
        help="a generated sandbox tars.yaml for the dry-run plan "
        "(default: start a throwaway sandbox from the installed artifacts)",
    )
    b.add_argument("--keep-temp", action="store_true", help="keep the exports, builds and clean venv")
    v = sub.add_parser("verify", help="check SHA256SUMS and the signed provenance of a dist folder")
    v.add_argument("--dist", type=Path, default=ROOT / "dist")
    v.add_argument("--provenance", type=Path, help=f"default: <dist>/{PROVENANCE}")
    v.add_argument("--public-key", type=Path, required=True, help="the PEM public key you trust (not one from dist/)")
    k = sub.add_parser("keygen", help="write a new ECDSA P-256 signing key and its public key (PATH.pub)")
    k.add_argument("path", type=Path)
    args = parser.parse_args(argv)
    if args.command == "build":
        return cmd_build(args, argv)
    if args.command == "verify":
        return cmd_verify(args)
    return cmd_keygen(args)


if __name__ == "__main__":
    sys.exit(main())
