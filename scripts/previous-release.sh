#!/usr/bin/env bash
# Builds the previous release's binaries, `memds-server` and `memds-ctl`, for the mixed-version
# tests (memds-server/tests/compat.rs), into
#   $CARGO_TARGET_DIR/previous-release/v0.1.0/bin/   (target dir default: target)
# and prints that directory. scripts/test.sh runs it and exports it as MEMDS_PREVIOUS_RELEASE_BIN.
#
# The previous release is v0.1.0, commit 593893d of this repository (ALPN memds/1, logs MDSWAL02,
# checkpoints MDSSTAT2, snapshots MDSS version 1). Its tree is extracted with `git archive` into
# previous-release/v0.1.0/src and built there (debug profile, --locked: its own Cargo.lock).
# Idempotent: when bin/ holds both binaries and a stamp naming the commit, nothing is done.
#
# Target directory: the old tree builds in a target directory of its own,
# previous-release/v0.1.0/target, not in the shared one. Measured on 2 cores (debug, the
# workspace's dependencies at opt-level 2): 260 s cold, under 0.1 s once built (the stamp).
# Sharing the target directory would reuse few dependency builds (cargo test --workspace
# unifies features over every member and its dev-dependencies, so most dependencies hash
# differently from this build of two binaries) and would clobber the workspace crates'
# artifacts, whose hashes do not depend on where the tree is (memds-proto, memds-client and
# memds-server rebuilt back and forth), and the uplifted target/debug/memds-server and
# memds-ctl. CI builds it once per cold cache, about 4.5 of its 45 minutes; with a cached
# target directory, never again.
set -euo pipefail
cd "$(dirname "$0")/.."

release=v0.1.0
commit=593893d

say() { printf 'scripts/previous-release.sh: %s\n' "$*" >&2; }

target_dir="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target_dir"
target_dir="$(cd "$target_dir" && pwd)"
out="$target_dir/previous-release/$release"
bin="$out/bin"

if ! full="$(git rev-parse --verify --quiet "$commit^{commit}")"; then
  say "commit $commit (the previous release, $release) is not in this clone."
  if [ "$(git rev-parse --is-shallow-repository 2>/dev/null)" = true ]; then
    say "this is a shallow clone: fetch full history first, e.g. \`git fetch --unshallow\`"
  else
    say "fetch the repository's full history (e.g. \`git fetch origin\`), then run again"
  fi
  exit 1
fi

stamp="$bin/.stamp"
if [ -x "$bin/memds-server" ] && [ -x "$bin/memds-ctl" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$full" ]; then
  say "$release ($full) already built in $bin"
  echo "$bin"
  exit 0
fi

say "building $release ($full) into $bin"
start=$SECONDS
rm -rf "$out/src" "$bin"
mkdir -p "$out/src" "$bin"
git archive "$full" | tar -x -C "$out/src"
CARGO_TARGET_DIR="$out/target" cargo build --locked --quiet \
  --manifest-path "$out/src/Cargo.toml" -p memds-server --bin memds-server --bin memds-ctl
cp "$out/target/debug/memds-server" "$out/target/debug/memds-ctl" "$bin/"
echo "$full" >"$stamp"
say "built $release in $((SECONDS - start)) s"
echo "$bin"
