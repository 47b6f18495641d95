#!/usr/bin/env bash
# The one-command demo: install the core and every plugin, then run the v1.0.1 release against the
# embedded sandbox (its own PostgreSQL, Redis and Prometheus under .tars/sandbox/, started on demand):
#
#     bash scripts/demo.sh
#
# Run as root on a fresh Debian/Ubuntu machine it installs the server packages it needs (and says so).
# It runs apply, verify, benchmark and report even when a step fails, so the report shows what happened,
# and exits with the first failing step's exit code. Environment knobs:
#   TARS_DEMO_PYTHON   interpreter for the venv (default: python3)
#   TARS_DEMO_VENV     venv folder (default: .venv in the repository)
#   TARS_DEMO_PLUGINS  value for --plugins (default: all)
#   TARS_DEMO_STEPS    the tars-run commands to run (default: "apply verify benchmark report")
set -uo pipefail

started=$(date +%s)
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
python=${TARS_DEMO_PYTHON:-python3}
venv=${TARS_DEMO_VENV:-$repo/.venv}
selection=${TARS_DEMO_PLUGINS:-all}
steps=${TARS_DEMO_STEPS:-apply verify benchmark report}

say() { printf 'demo: %s\n' "$*" >&2; }
die() { say "$*"; exit 2; }

# -- 1. server binaries the sandbox runs -----------------------------------------------------------
have_initdb() {
    command -v initdb >/dev/null 2>&1 && return 0
    command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir 2>/dev/null)/initdb" ] && return 0
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}
packages=()
have_initdb || packages+=(postgresql)
command -v redis-server >/dev/null 2>&1 || packages+=(redis-server)
command -v prometheus >/dev/null 2>&1 || packages+=(prometheus)
if ! command -v uv >/dev/null 2>&1 && ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    packages+=(python3-venv)
fi
if [ ${#packages[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        die "missing ${packages[*]}: install them (Debian/Ubuntu: sudo apt-get install -y ${packages[*]}) and rerun"
    fi
    say "installing Debian packages ${packages[*]} (running as root)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null \
        || die "apt-get install ${packages[*]} failed"
fi

# -- 2. a venv with the core and every plugin --------------------------------------------------------
installs=(-e "$repo")
for dir in "$repo"/plugins/*/; do
    name=$(basename "$dir")
    [ "$name" = "_template" ] && continue
    [ -f "$dir/pyproject.toml" ] || continue
    installs+=(-e "${dir%/}")
done
if command -v uv >/dev/null 2>&1; then
    [ -x "$venv/bin/python" ] || uv venv --quiet --python "$python" "$venv" || die "uv venv $venv failed"
    say "installing tars-core and $(( ${#installs[@]} / 2 - 1 )) plugins into $venv (uv)"
    uv pip install --quiet --python "$venv/bin/python" "${installs[@]}" || die "uv pip install failed"
else
    [ -x "$venv/bin/python" ] || "$python" -m venv "$venv" || die "$python -m venv $venv failed"
    say "installing tars-core and $(( ${#installs[@]} / 2 - 1 )) plugins into $venv (pip)"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${installs[@]}" \
        || die "pip install failed"
fi
tars="$venv/bin/tars-run"
[ -x "$tars" ] || die "$tars was not installed"
"$tars" list >&2 || die "tars-run list failed: a plugin does not load"

# -- 3. the release against the sandbox (no tars.yaml: tars-run starts the sandbox itself) -----------
if [ -e tars.yaml ]; then
    die "tars.yaml exists in $repo: the demo targets the sandbox; move it away or run tars-run yourself"
fi
first_failure=0
timings=()
for step in $steps; do
    say "tars-run --plugins $selection $step"
    step_started=$(date +%s)
    "$tars" --plugins "$selection" "$step"
    code=$?
    timings+=("$step $(( $(date +%s) - step_started ))s (exit $code)")
    if [ $code -ne 0 ]; then
        say "$step exited $code"
        [ $first_failure -eq 0 ] && first_failure=$code
        [ $code -eq 2 ] && break  # bad input (a broken plugin, a config error): later steps would say the same
    fi
done

release=$("$venv/bin/python" - 2>/dev/null <<'EOF'
import yaml
print((yaml.safe_load(open(".tars/sandbox/tars.yaml")).get("release") or {}).get("name", "v1.0.1"))
EOF
)
report="$repo/.tars/reports/${release:-v1.0.1}/report.md"
elapsed=$(( $(date +%s) - started ))
say "steps: $(IFS=,; echo "${timings[*]}" | sed 's/,/, /g')"
state=$("$tars" sandbox status --format json 2>/dev/null | "$venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["state"])')
say "the sandbox is left ${state:-unknown} for you to explore: ${tars#"$repo"/} sandbox status|down|reset"
if [ -f "$report" ]; then
    say "done in ${elapsed}s; the report is $report"
elif [[ " $steps " != *" report "* ]]; then
    say "done in ${elapsed}s (no report step)"
else
    say "done in ${elapsed}s; no report was written (expected at $report)"
    [ $first_failure -eq 0 ] && first_failure=1
fi
exit $first_failure
