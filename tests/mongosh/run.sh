#!/usr/bin/env bash
# mongosh against a Shoal cluster: installs mongosh from the npm registry (once, under
# ~/.cache/shoal/mongosh), starts `shoal up` on free loopback ports, and checks that mongosh
# connects to the router, that `sh.status()` prints the shards, and that an insert and a find
# work. Skips (exit 0, saying so) when npm or the registry is unavailable.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/env.sh

prefix="$HOME/.cache/shoal/mongosh"
mongosh="$prefix/node_modules/.bin/mongosh"
if [ ! -x "$mongosh" ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "mongosh: SKIPPED (npm is not installed)"; exit 0
  fi
  mkdir -p "$prefix"
  if ! timeout 900 npm install --silent --no-audit --no-fund --prefix "$prefix" mongosh@2 >/dev/null 2>&1; then
    echo "mongosh: SKIPPED (the npm registry is not reachable)"; exit 0
  fi
fi

port=$(python3 -c 'import socket
for base in range(29100, 29900, 10):
    ok = True
    for p in range(base, base + 5):
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            s = socket.socket(socket.AF_INET, kind)
            try: s.bind(("127.0.0.1", p))
            except OSError: ok = False
            finally: s.close()
    if ok:
        print(base); break')
dir=$(mktemp -d)
log="$dir/up.log"
"$SHOAL_BIN_DIR/shoal" up --dir "$dir/data" --port "$port" --shards 2 >"$log" 2>&1 &
up_pid=$!
cleanup() { kill -TERM "$up_pid" 2>/dev/null || true; wait "$up_pid" 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
for _ in $(seq 1 240); do
  grep -q "Shoal cluster ready" "$log" && break
  kill -0 "$up_pid" 2>/dev/null || { cat "$log"; echo "mongosh: shoal up exited"; exit 1; }
  sleep 0.5
done
grep -q "Shoal cluster ready" "$log" || { cat "$log"; echo "mongosh: cluster not ready in 120 s"; exit 1; }

status=$("$mongosh" --quiet --norc "mongodb://127.0.0.1:$port/" --eval 'sh.status()' 2>&1)
out=$("$mongosh" --quiet --norc "mongodb://127.0.0.1:$port/" --eval '
  const r = db.getSiblingDB("mongoshtest").c.insertOne({k: 42, s: "hello"});
  const d = db.getSiblingDB("mongoshtest").c.findOne({k: 42});
  print("MONGOSH_FIND " + d.s + " " + r.acknowledged);
' 2>&1)
echo "$status" | head -30
echo "$out" | tail -40
echo "$status" | grep -q "shard0/127.0.0.1" || { echo "mongosh: sh.status() did not list shard0"; exit 1; }
echo "$status" | grep -q "shard1/127.0.0.1" || { echo "mongosh: sh.status() did not list shard1"; exit 1; }
echo "$out" | grep -q "MONGOSH_FIND hello true" || { echo "mongosh: insert/find failed"; exit 1; }
echo "checked with mongosh $("$mongosh" --version)"
echo "mongosh: 1 passed, 0 failed"
