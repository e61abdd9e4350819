#!/usr/bin/env bash
# pgrepl lab: a 3-member etcd cluster on loopback (etcd 3.4, installed by scripts/lab/install.sh).
#
#   scripts/lab/etcd.sh start        [BASEPORT]    start the members not running yet, wait until the cluster is healthy
#   scripts/lab/etcd.sh stop         [BASEPORT]    stop the members this script started (by their recorded pids)
#   scripts/lab/etcd.sh stop-member  BASEPORT N    stop member N (1-3) only (two stopped: the cluster has no quorum)
#   scripts/lab/etcd.sh start-member BASEPORT N    start member N again on its data, wait until it answers
#   scripts/lab/etcd.sh endpoints    [BASEPORT]    print the client URLs, comma-separated
#   scripts/lab/etcd.sh status       [BASEPORT]    say which members run and whether each is healthy
#
# Member N (1-3) listens for clients on 127.0.0.1:BASEPORT+N-1 and for its peers on
# 127.0.0.1:BASEPORT+10+N-1 (default BASEPORT 23790), nowhere else.
# State: ${PGREPL_ETCD_DIR:-/tmp/pgrepl-etcd}/<BASEPORT>/m<N>.{data,pid,log}. `start` on a
# running cluster is a no-op; `stop` leaves the data (remove the directory to start afresh).
#
# Timing: --heartbeat-interval 50 --election-timeout 500 (ms; PGREPL_ETCD_HEARTBEAT_MS,
# PGREPL_ETCD_ELECTION_MS). etcd's defaults (100/1000) are sized for real networks; on
# loopback a round trip takes microseconds, so a lost leader is replaced within about a
# second, and etcd's minimum lease ttl (1.5 election timeouts) drops to 750 ms, so 1 s
# leases are not rounded up to 2 s. The election timeout stays 10 heartbeats, as etcd
# advises, so a busy 2-core machine does not start elections for nothing.
set -euo pipefail

ETCD=${PGREPL_ETCD_BIN:-etcd}
DIR_ROOT=${PGREPL_ETCD_DIR:-/tmp/pgrepl-etcd}
READY_TIMEOUT=${PGREPL_ETCD_READY_TIMEOUT:-30}
HEARTBEAT=${PGREPL_ETCD_HEARTBEAT_MS:-50}
ELECTION=${PGREPL_ETCD_ELECTION_MS:-500}

usage() {
  sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
}

cmd=${1:-}
case $cmd in
  stop-member | start-member)
    base=${2:-}
    member=${3:-}
    [[ $member =~ ^[1-3]$ ]] || { echo "etcd.sh: $cmd BASEPORT N: N is 1, 2 or 3 (got '$member')" >&2; exit 2; }
    ;;
  start | stop | endpoints | status) base=${2:-23790} ;;
  *) usage ;;
esac
[[ $base =~ ^[0-9]+$ && $base -ge 1024 && $base -le 65520 ]] || { echo "etcd.sh: bad base port '$base'" >&2; exit 2; }

DIR=$DIR_ROOT/$base
client_port() { echo $((base + $1 - 1)); }
peer_port() { echo $((base + 10 + $1 - 1)); }
client_url() { echo "http://127.0.0.1:$(client_port "$1")"; }
initial_cluster() {
  local i out=""
  for i in 1 2 3; do out+="${out:+,}m$i=http://127.0.0.1:$(peer_port $i)"; done
  echo "$out"
}

# http_get PORT PATH: the response body of a GET on 127.0.0.1:PORT, within 2 s (bash's
# /dev/tcp, so no HTTP client is needed).
http_get() {
  timeout 2 bash -c '
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" "$2" >&3
    sed "1,/^\r\{0,1\}$/d" <&3' _ "$1" "$2" 2>/dev/null
}

healthy() { http_get "$(client_port "$1")" /health | grep -q '"health":"true"'; }
answers() { http_get "$(client_port "$1")" /version | grep -q etcdserver; }

# our_pid N: the recorded pid of member N, if that process is still our etcd.
our_pid() {
  local pidfile=$DIR/m$1.pid pid
  [[ -f $pidfile ]] || return 1
  pid=$(cat "$pidfile")
  [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/cmdline ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "--data-dir $DIR/m$1.data" || return 1
  echo "$pid"
}

need_etcd() {
  command -v "$ETCD" >/dev/null || { echo "etcd.sh: $ETCD not found: run scripts/lab/install.sh (as root) first" >&2; exit 1; }
}

start_member() {
  local i=$1 pid port
  if pid=$(our_pid "$i"); then
    return 0
  fi
  port=$(client_port "$i")
  if answers "$i"; then
    echo "etcd.sh: something else already answers on 127.0.0.1:$port; choose another base port" >&2
    exit 1
  fi
  local state=new
  [[ -d $DIR/m$i.data/member ]] && state=existing
  setsid "$ETCD" --name "m$i" --data-dir "$DIR/m$i.data" \
    --listen-client-urls "$(client_url "$i")" --advertise-client-urls "$(client_url "$i")" \
    --listen-peer-urls "http://127.0.0.1:$(peer_port "$i")" --initial-advertise-peer-urls "http://127.0.0.1:$(peer_port "$i")" \
    --initial-cluster "$(initial_cluster)" --initial-cluster-token "pgrepl-$base" --initial-cluster-state "$state" \
    --heartbeat-interval "$HEARTBEAT" --election-timeout "$ELECTION" \
    >>"$DIR/m$i.log" 2>&1 </dev/null 9>&- &
  echo "$!" >"$DIR/m$i.pid"
  echo "etcd.sh: started member m$i (pid $!) on $(client_url "$i")"
}

stop_member() {
  local i=$1 pid
  if pid=$(our_pid "$i"); then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
    rm -f "$DIR/m$i.pid"
    echo "etcd.sh: stopped member m$i (pid $pid)"
  else
    rm -f "$DIR/m$i.pid"
    echo "etcd.sh: member m$i was not running (not started by this script on base $base)"
  fi
}

# wait_for CHECK MEMBERS...: until CHECK passes for every member, bounded.
wait_for() {
  local check=$1 i ok deadline=$(($(date +%s) + READY_TIMEOUT))
  shift
  while :; do
    ok=1
    for i in "$@"; do
      # The recorded pid, not our_pid: right after the fork its command line is not etcd's yet.
      if ! kill -0 "$(cat "$DIR/m$i.pid" 2>/dev/null || echo 0)" 2>/dev/null; then
        echo "etcd.sh: member m$i exited; end of $DIR/m$i.log:" >&2
        tail -n 20 "$DIR/m$i.log" >&2
        exit 1
      fi
      $check "$i" || { ok=0; break; }
    done
    ((ok)) && return 0
    if (($(date +%s) >= deadline)); then
      echo "etcd.sh: members $* not $check within ${READY_TIMEOUT}s (logs in $DIR)" >&2
      exit 1
    fi
    sleep 0.2
  done
}

# One change at a time per cluster (parallel test binaries share one).
locked() {
  mkdir -p "$DIR"
  exec 9>"$DIR/lock"
  flock -w 60 9 || { echo "etcd.sh: $DIR/lock is held by another etcd.sh for 60 s" >&2; exit 1; }
}

case $cmd in
  start)
    need_etcd
    locked
    for i in 1 2 3; do start_member "$i"; done
    wait_for healthy 1 2 3
    echo "etcd.sh: cluster healthy on $("$0" endpoints "$base")"
    ;;
  stop)
    locked
    for i in 1 2 3; do stop_member "$i"; done
    ;;
  stop-member)
    locked
    stop_member "$member"
    ;;
  start-member)
    need_etcd
    locked
    [[ -d $DIR/m$member.data/member ]] || { echo "etcd.sh: member m$member has no data in $DIR: start the cluster first" >&2; exit 1; }
    start_member "$member"
    wait_for answers "$member"
    ;;
  endpoints)
    echo "$(client_url 1),$(client_url 2),$(client_url 3)"
    ;;
  status)
    rc=0
    for i in 1 2 3; do
      if pid=$(our_pid "$i"); then
        if healthy "$i"; then h=healthy; else h="not healthy (no quorum?)"; rc=1; fi
        echo "etcd.sh: m$i on $(client_url "$i"): running (pid $pid), $h"
      else
        echo "etcd.sh: m$i on $(client_url "$i"): not running"
        rc=1
      fi
    done
    exit $rc
    ;;
esac
