#!/usr/bin/env bash
# Writes MemDS v0.1.0's golden fixtures with v0.1.0 itself (commit 593893d), never with the
# code of the working tree:
#
# - memds-proto/tests/fixtures/v0.1.0/wire/: request and response frames and a snapshot, encoded
#   by the old memds-proto (the generator in this directory, built against the extracted old
#   source).
# - memds-server/tests/fixtures/v0.1.0/: a data directory written by the old memds-server
#   (driven by the old memds-ctl), what the old memds-ctl printed about it, and the inputs fed.
#
# The fixtures are checked in and never regenerated to make a test pass: this script refuses to
# write over a fixture directory that exists. It is kept for provenance (and for a future
# release's fixtures, made the same way from that release's commit).
#
# Usage: scripts/fixtures-v0.1.0/generate.sh [OUT_ROOT]
#   OUT_ROOT (default: the repository) receives memds-proto/tests/fixtures/v0.1.0 and
#   memds-server/tests/fixtures/v0.1.0; give a scratch directory to compare a new run with
#   the checked-in fixtures.
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$(pwd)"
here="$root/scripts/fixtures-v0.1.0"
out_root="$(mkdir -p "${1:-$root}" && cd "${1:-$root}" && pwd)"
wire_out="$out_root/memds-proto/tests/fixtures/v0.1.0/wire"
server_out="$out_root/memds-server/tests/fixtures/v0.1.0"
# Compaction threshold of the old server: above the writes before the big table, below them
# with it, so the checkpoint is written at the big table's put and every later write stays in
# the log after it (the script checks both).
compact_wal_bytes=4096

say() { printf 'generate.sh: %s\n' "$*" >&2; }
fail() {
  say "$*"
  exit 1
}

for d in "$wire_out" "$server_out/data-dir"; do
  [ ! -e "$d" ] || fail "$d exists: fixtures are never regenerated over (remove it only to write a new release's)"
done

bin="$(scripts/previous-release.sh)"
target_dir="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)"
old="$target_dir/previous-release/v0.1.0"
ln -sfn "$old/src" "$here/previous-src"
# The generator resolves its dependencies from the old release's lock file.
[ -e "$here/Cargo.lock" ] || cp "$old/src/Cargo.lock" "$here/Cargo.lock"
work="$(mktemp -d)"
trap 'kill "$server_pid" 2>/dev/null || true; rm -rf "$work"' EXIT
server_pid=

generator() {
  CARGO_TARGET_DIR="$target_dir" cargo run --quiet --manifest-path "$here/Cargo.toml" -- "$@"
}

say "wire frames and snapshot -> $wire_out"
generator wire "$wire_out"
say "inputs -> $server_out/input"
generator inputs "$server_out/input"

# The PKI, made by the old memds-ctl (the layout the old tests use: a CA, a server certificate
# for the peer name `memds` and localhost, one client certificate per role).
pki="$work/pki"
ctl_bare() { "$bin/memds-ctl" "$@" >/dev/null; }
ctl_bare pki create-ca --dir "$pki"
ctl_bare pki create-server --dir "$pki" --host memds --host localhost --host 127.0.0.1
for role in admin router peer; do ctl_bare pki create-client --dir "$pki" --role "$role"; done

data="$work/data"
start_server() {
  rm -f "$work/announce"
  "$bin/memds-server" --listen 127.0.0.1:0 --no-metrics --data-dir "$1" \
    --cert "$pki/server.pem" --key "$pki/server.key" --client-ca "$pki/ca.pem" \
    --compact-wal-bytes "$compact_wal_bytes" >"$work/announce" 2>"$work/server.log" &
  server_pid=$!
  for _ in $(seq 100); do
    [ -s "$work/announce" ] && break
    sleep 0.1
  done
  addr="$(head -n1 "$work/announce" | jq -r .quic)"
  [ -n "$addr" ] && [ "$addr" != null ] || fail "the old server did not announce itself: $(cat "$work/server.log")"
}
stop_server() {
  kill -TERM "$server_pid"
  wait "$server_pid" || fail "the old server did not exit cleanly on SIGTERM: $(cat "$work/server.log")"
  server_pid=
}
ctl() { "$bin/memds-ctl" --server "$addr" --tls-dir "$pki" "$@"; }
input="$server_out/input"

start_server "$data"
say "old server on $addr, data dir $data"

# Before the checkpoint: small tables, drops (tombstones of a table held and of one never
# seen), then the big table, whose put outgrows the log and compacts it into state.db.
ctl put-table "$input/users-v1.json"
ctl put-table "$input/sessions-v3.json"
ctl put-table "$input/carts-v5.json"
ctl put-table "$input/regions-v2.json"
ctl drop-table sessions
ctl drop-table carts
ctl drop-table ghost --version 9
[ ! -e "$data/state.db" ] || fail "compacted before the big table: raise compact_wal_bytes"
ctl put-table "$input/orders-v10.json"
for _ in $(seq 50); do
  [ -e "$data/state.db" ] && break
  sleep 0.1
done
[ -e "$data/state.db" ] || fail "no checkpoint after the big table: lower compact_wal_bytes"
checkpoint="$(sha256sum "$data/state.db")"

# After it, in the log: an update, batches, a whole-table replacement, a put then its drop,
# a drop of a name never seen, and a dropped name brought back at a higher version.
ctl update-partitions "$input/orders-update-v11.json"
ctl update-batch "$input/orders-batch-v12.json"
ctl update-batch "$input/regions-batch-v3.json"
ctl put-table "$input/users-v2.json"
ctl put-table "$input/inventory-v1.json"
ctl drop-table inventory
ctl drop-table archive --version 4
ctl put-table "$input/carts-v7.json"
[ "$(sha256sum "$data/state.db")" = "$checkpoint" ] || fail "compacted again after the big table: raise compact_wal_bytes"

# What the old server reports, as its memds-ctl prints it.
printed="$work/printed"
mkdir -p "$printed/tables"
ctl tables >"$printed/ctl-tables.json"
ctl fleet-status >"$printed/ctl-fleet-status.json"
for name in $(jq -r '.[].name' "$printed/ctl-tables.json"); do
  ctl get-table "$name" >"$printed/tables/$name.json"
done
stop_server

# The old server reads its own directory back whole (on a scratch copy: a start writes).
cp -a "$data" "$work/reopened"
start_server "$work/reopened"
ctl fleet-status >"$work/reopened-status.json"
stop_server
[ "$(generator held "$work/reopened-status.json")" = "$(generator held "$printed/ctl-fleet-status.json")" ] ||
  fail "the old server did not read its own data directory back as it was"

mkdir -p "$server_out"
cp -a "$data" "$server_out/data-dir"
cp -a "$printed"/* "$server_out/"
# expected.json: every table (name, version, partitions, nodes, nodes digest, content digest and
# the file holding its content as `get-table` printed it) and every tombstone.
generator expected "$printed/ctl-tables.json" "$printed/ctl-fleet-status.json" >"$server_out/expected.json"
say "data directory: $(cd "$server_out/data-dir" && ls -l | tail -n +2 | awk '{print $9 " (" $5 " bytes)"}' | paste -sd ' ')"
say "done"
