#!/usr/bin/env bash
# Every test of pgrepl: installs what the tests need (PostgreSQL 10-18 builds, sshd,
# moto, etcd: scripts/lab/install.sh, idempotent and cached), then runs the whole
# workspace's tests. Run as root on Debian 12 (the tests run servers as the `postgres`
# OS user and build network namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pgrepl/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

bash scripts/lab/install.sh
cargo test --workspace --all-targets --no-fail-fast "$@"
cargo test --workspace --doc
