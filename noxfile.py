"""Sessions: the core tests, one session per plugin folder (tars-core + that plugin only), lint,
typecheck, build, demo and bench. ``nox -t tests`` runs every test session (the README's test command).

Each plugin session installs nothing but ``tars-core`` and the one plugin, so "install only the plugins
you need" is tested rather than assumed.
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

ROOT = Path(__file__).parent
PLUGINS = sorted(
    p.name for p in (ROOT / "plugins").iterdir() if (p / "pyproject.toml").exists() and not p.name.startswith("_")
)

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["core", "plugin", "together", "lint", "typecheck"]


@nox.session(tags=["tests"])
def core(session: nox.Session) -> None:
    """The core's own tests (real tars-run binary, real PostgreSQL for the shared ledger)."""
    session.install("-e", ".[test]")
    # no plugin is installed here: the discovery test checks that "none" is what tars-run sees
    session.run(
        "pytest",
        "-p",
        "no:cacheprovider",
        "tests",
        "--ignore=tests/together",
        "--ignore=tests/faults",
        *session.posargs,
        env={"TARS_EXPECT_NO_PLUGINS": "1"},
    )


@nox.session(tags=["tests"])
def together(session: nox.Session) -> None:
    """Every plugin of the repo installed at once: discovery loads them all, none imports anything heavy,
    and their entry points, hook names and config sections do not collide; and releases on the sandbox
    that need them all (tests/together: the SLO gate rolling a fix back). The fault-injection suite is
    its own session (``nox -s faults``, ``TARS_FAULTS=quick`` for the short sample), not in ``-t tests``:
    about 50 minutes on 2 cores, where the whole test run must stay under 30."""
    editable = [arg for p in PLUGINS for arg in ("-e", f"plugins/{p}")]
    session.install("-e", ".[test]", *editable)
    session.run(
        "pytest", "-p", "no:cacheprovider", "tests/test_contract_testing.py", "tests/together", *session.posargs
    )


@nox.session
def faults(session: nox.Session) -> None:
    """Issue 18's fault-injection suite, every case: on a private sandbox, for each hotfix plugin, SIGKILL
    and SIGINT of tars-run at random moments of apply, verify and rollback, its servers paused and
    killed mid-apply, two applies on one ledger, and the bad-value matrix of its config class, each
    judged on the target. About 50 minutes on 2 cores, so not tagged ``tests``. Figures at the end and
    in $TARS_FAULTS_REPORT (default faults-report.json here); TARS_FAULTS_SEED picks the moments."""
    editable = [arg for p in PLUGINS for arg in ("-e", f"plugins/{p}")]
    session.install("-e", ".[test]", *editable)
    report = os.environ.get("TARS_FAULTS_REPORT") or str(ROOT / "faults-report.json")
    session.run(
        "pytest",
        "-p",
        "no:cacheprovider",
        "tests/faults",
        *session.posargs,
        env={"TARS_FAULTS": "full", "TARS_FAULTS_REPORT": report},
    )


@nox.session(tags=["tests"])
@nox.parametrize("plugin", PLUGINS, ids=PLUGINS)
def plugin(session: nox.Session, plugin: str) -> None:
    """One plugin with the core and nothing else."""
    session.install("-e", ".", "-e", f"plugins/{plugin}[test]")
    session.run("pytest", "-p", "no:cacheprovider", f"plugins/{plugin}/tests", *session.posargs)


LINTED = ("tars_core", "tests", "plugins", "benchmarks", "release", "deploy", "noxfile.py")


@nox.session(tags=["tests"])
def lint(session: nox.Session) -> None:
    """ruff's rules and its formatter: a diff that only reformats never reaches review."""
    session.install("ruff")
    session.run("ruff", "check", *LINTED)
    session.run("ruff", "format", "--check", *LINTED)


@nox.session(tags=["tests"])
def typecheck(session: nox.Session) -> None:
    """mypy --strict (the core's settings in pyproject.toml) on the core and on every plugin's source.

    Each plugin is checked as its own run so one plugin's package root never shadows another's.
    """
    editable = [arg for p in PLUGINS for arg in ("-e", f"plugins/{p}")]
    session.install("-e", ".", *editable, "mypy", "types-PyYAML", "types-psutil", "pytest")
    session.run("mypy", "tars_core")
    for plugin in PLUGINS:
        session.run("mypy", f"plugins/{plugin}/src")


@nox.session
def build(session: nox.Session) -> None:
    """The v1.0.1 release build (release/v1_0_1/build_v1_0_1_package.py) into dist/: every wheel and sdist
    built twice from the last commit and compared byte for byte, twine/check-wheel-contents/validate-pyproject,
    requirements.lock, a clean-venv smoke test of tars-run, CycloneDX SBOMs, release notes, SHA256SUMS and a
    signed provenance statement. Slow (minutes): its own session, not part of ``-t tests``.

    ``nox -s build -- --signing-key KEY.pem`` signs with your key (``... build_v1_0_1_package.py keygen KEY.pem``
    makes one). Without it the session signs with a throwaway key and says so: that signature shows only that
    dist/ was not changed after this build, not who built it.
    """
    session.install("-r", "release/v1_0_1/build-tools.txt")
    script = "release/v1_0_1/build_v1_0_1_package.py"
    args = list(session.posargs)
    if not any(a == "--signing-key" or a.startswith("--signing-key=") for a in args):
        key = Path(session.create_tmp()) / "throwaway-signing-key.pem"
        key.unlink(missing_ok=True)
        key.with_name(key.name + ".pub").unlink(missing_ok=True)
        session.run("python", script, "keygen", str(key))
        session.warn(f"no --signing-key given: signing with the throwaway key {key} (public key: {key}.pub)")
        args += ["--signing-key", str(key)]
    session.run("python", script, "build", *args)


@nox.session(python=False)
def demo(session: nox.Session) -> None:
    """The main job: every plugin applied, verified, benchmarked and reported on the sandbox."""
    session.run("bash", "scripts/demo.sh", external=True)


@nox.session
def bench(session: nox.Session) -> None:
    """Full-size benchmarks (minutes): the core's runner overhead and startup."""
    session.install("-e", ".")
    session.run("python", "benchmarks/core_bench.py", *session.posargs)
