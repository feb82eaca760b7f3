#!/usr/bin/env bash
# Installs what is missing, builds Shoal (release) and starts a local cluster with `shoal up`:
# a config server, two shards and a router on 127.0.0.1:27017. Extra arguments go to `shoal up`
# (e.g. --port 28017 --shards 3 --dir /tmp/shoal). Ctrl-C stops the cluster; running it again
# brings the same cluster back with its data.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
scripts/setup.sh
cargo build --release --workspace --bins
exec "$SHOAL_BIN_DIR/shoal" up "$@"
