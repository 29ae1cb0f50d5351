#!/usr/bin/env bash
# Builds the previous release's binaries, `memds-server` and `memds-ctl`, for the mixed-version
# tests (memds-server/tests/compat.rs), into
#   $CARGO_TARGET_DIR/previous-release/v0.1.0/bin/   (target dir default: target)
# and prints that directory. scripts/test.sh runs it and exports it as MEMDS_PREVIOUS_RELEASE_BIN.
#
# The previous release is v0.1.0, commit 593893d of this repository (ALPN memds/1, logs MDSWAL02,
# checkpoints MDSSTAT2, snapshots MDSS version 1). Its tree is extracted with `git archive` into
# previous-release/v0.1.0/src and built from there (debug profile, --locked: its own Cargo.lock).
# Idempotent: when bin/ holds both binaries and a stamp naming the commit, nothing is done.
#
# Target directory: the shared one (CARGO_TARGET_DIR), chosen for cost. Measured on 2 cores
# (debug; the workspace's dependencies build at opt-level 2):
# - in a target directory of its own, cold: 260 s (and 2 GB);
# - in the shared one, after this tree's memds-server and memds-proto tests were built there:
#   48 s. Cargo.lock is the same at 593893d, so most dependencies get the same metadata hash
#   and are reused (143 of the old build's 191 libraries here; `cargo tree` finds 164 of its
#   171 packages with the same features under `cargo test --workspace`'s selection too).
#   On a cold CI run it adds about a minute, not four and a half, to the 21 of 45.
# The workspace crates themselves do not collide: the old memds-proto, memds-client and
# memds-server get other hashes than today's, so neither build undoes the other. What does
# collide is the uplifted target/debug/memds-server and memds-ctl (same names): cargo re-links
# them on its next build of this tree (checked), and this script puts back the ones it found
# anyway, so once it is done target/debug holds none of v0.1.0's binaries.
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
# This tree's uplifted binaries (and dep-info) in the shared target directory, kept aside while
# the old build replaces them, then put back.
uplifted=(memds-server memds-ctl memds-server.d memds-ctl.d)
debug="$target_dir/debug"
mkdir -p "$debug"
restore() {
  for f in "${uplifted[@]}"; do
    rm -f "$debug/$f"
    if [ -e "$debug/.$f.kept-by-previous-release" ]; then
      mv -f "$debug/.$f.kept-by-previous-release" "$debug/$f"
    fi
  done
}
for f in "${uplifted[@]}"; do
  if [ -e "$debug/$f" ]; then mv -f "$debug/$f" "$debug/.$f.kept-by-previous-release"; fi
done
trap restore EXIT
CARGO_TARGET_DIR="$target_dir" cargo build --locked --quiet \
  --manifest-path "$out/src/Cargo.toml" -p memds-server --bin memds-server --bin memds-ctl
cp "$debug/memds-server" "$debug/memds-ctl" "$bin/"
restore
trap - EXIT
echo "$full" >"$stamp"
say "built $release in $((SECONDS - start)) s"
echo "$bin"
