#!/usr/bin/env bash
# The whole test suite: formatting and lints, unit tests, real-process integration tests with
# the Rust driver, the pymongo tests, and the mongosh check when the npm registry is reachable.
# Installs what is missing first. Everything builds once, in the release profile, in
# $CARGO_TARGET_DIR (outside the clone).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== build (release)"
cargo build --release --workspace --bins --tests
echo "== cargo clippy"
cargo clippy --release --workspace --all-targets -- -D warnings
echo "== cargo test (unit and real-process integration tests)"
cargo test --release --workspace -- --test-threads=2
echo "== pymongo tests"
"$SHOAL_VENV/bin/pytest" tests/python -q
if [ -f tests/mongosh/run.sh ]; then
  echo "== mongosh"
  bash tests/mongosh/run.sh
fi
