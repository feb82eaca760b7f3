#!/usr/bin/env bash
# Installs what building and testing Shoal needs on a Debian machine, skipping what is there:
# a C++ toolchain and libclang (RocksDB is compiled from source through bindgen), Rust, and a
# Python venv with pymongo and pytest. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

need_apt=()
command -v clang >/dev/null 2>&1 || need_apt+=(clang)
ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || need_apt+=(libclang-dev)
command -v g++ >/dev/null 2>&1 || need_apt+=(g++)
command -v make >/dev/null 2>&1 || need_apt+=(make)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
command -v curl >/dev/null 2>&1 || need_apt+=(curl ca-certificates)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: installing Rust (rustup, stable)"
  curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component rustfmt,clippy
fi

if [ ! -x "$SHOAL_VENV/bin/pytest" ] || ! "$SHOAL_VENV/bin/python" -c 'import pymongo' >/dev/null 2>&1; then
  echo "setup: creating the Python venv at $SHOAL_VENV"
  python3 -m venv "$SHOAL_VENV"
  "$SHOAL_VENV/bin/pip" install -q --disable-pip-version-check pymongo pytest
fi
mkdir -p "$CARGO_TARGET_DIR"
