#!/usr/bin/env bash
# The main job: a real 3-node PostgreSQL cluster (one primary, two hot standbys,
# streaming replication with a slot each) on this machine, verified, status printed.
#
#   scripts/demo.sh            # run it again: it converges, changing nothing
#   scripts/demo.sh --pg-version 15
#
# Uses the newest PostgreSQL installed; on Debian/Ubuntu with none, installs the
# distribution's (as root). Everything else is `pgrepl up` with no cluster file.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pgrepl/target}"

have_pg() {
  ls /usr/lib/postgresql/*/bin/postgres /usr/pgsql-*/bin/postgres >/dev/null 2>&1 && return 0
  command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/postgres" ]
}

if ! have_pg; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "no PostgreSQL found: installing the distribution's (apt-get install postgresql)" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  else
    echo "no PostgreSQL found: install one (Debian/Ubuntu: sudo apt-get install postgresql), or pass --pg-bin DIR" >&2
    exit 4
  fi
fi

# The local provider needs neither the AWS SDK nor SSH: a build without them is quick.
cargo build -q -p pgrepl-cli --no-default-features --target-dir "$CARGO_TARGET_DIR/demo"
pgrepl="$CARGO_TARGET_DIR/demo/debug/pgrepl"
"$pgrepl" up "$@"        # deploys or converges, then verifies with a canary write and prints status
