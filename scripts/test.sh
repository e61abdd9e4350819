#!/usr/bin/env bash
# Every test of pgrepl: installs what the tests need (PostgreSQL 10-18 builds, sshd,
# moto, etcd, HAProxy: scripts/lab/install.sh, idempotent and cached), checks the code's habits
# (rustfmt, clippy with warnings denied, rustdoc with warnings denied, the pure core
# without its runtime), then runs the whole workspace's tests. Run as root on Debian 12
# (the tests run servers as the `postgres` OS user and build network namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pgrepl/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

bash scripts/lab/install.sh

# Habits: each fails the run on its first complaint.
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps
cargo build -p pgrepl-core --no-default-features

cargo test --workspace --all-targets --no-fail-fast "$@"
cargo test --workspace --doc
