# Shared settings for the scripts: where cargo builds (outside the clone, so CI runs on the same
# machine reuse RocksDB's 30-minute C++ build) and where the Python venv lives.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/shoal/target}"
export SHOAL_VENV="${SHOAL_VENV:-$HOME/.cache/shoal/venv}"
export SHOAL_BIN_DIR="${SHOAL_BIN_DIR:-$CARGO_TARGET_DIR/release}"
export PATH="$HOME/.cargo/bin:$PATH"
