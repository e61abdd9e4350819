#!/usr/bin/env bash
# pgrepl lab: a moto EC2 mock on loopback (installed by scripts/lab/install.sh).
#
#   scripts/lab/moto.sh start  [PORT]   start moto_server -H 127.0.0.1 -p PORT (default 5000), wait until it answers
#   scripts/lab/moto.sh stop   [PORT]   stop the server this script started on PORT (by its recorded pid)
#   scripts/lab/moto.sh reset  [PORT]   POST /moto-api/reset: forget every resource (moto keeps state until then)
#   scripts/lab/moto.sh status [PORT]   say whether it runs and answers
#   scripts/lab/moto.sh env    [PORT]   print the AWS_* exports that point a client at it
#
# State: $PGREPL_MOTO_DIR (default /tmp/pgrepl-moto)/<port>.pid and <port>.log.
# MOTO_AMIS_PATH, if set, is passed on (a JSON AMI catalogue replacing moto's built-in one;
# the built-in one has no current Ubuntu images).
# Remember: the instance addresses moto returns are fake; never connect to them.
set -euo pipefail

LAB=${PGREPL_LAB:-/opt/pgrepl-lab}
MOTO=$LAB/venv/bin/moto_server
PY=$LAB/venv/bin/python
DIR=${PGREPL_MOTO_DIR:-/tmp/pgrepl-moto}
READY_TIMEOUT=${PGREPL_MOTO_READY_TIMEOUT:-30}

cmd=${1:-}
port=${2:-5000}
[[ $port =~ ^[0-9]+$ && $port -ge 1 && $port -le 65535 ]] || { echo "moto.sh: bad port '$port'" >&2; exit 2; }
pidfile=$DIR/$port.pid
logfile=$DIR/$port.log
url=http://127.0.0.1:$port

need_moto() {
  [[ -x $MOTO && -x $PY ]] || { echo "moto.sh: $MOTO not found: run scripts/lab/install.sh (as root) first" >&2; exit 1; }
}

# http METHOD PATH: exit 0 when moto answers 2xx within 3 s.
http() {
  "$PY" - "$1" "$url$2" <<'EOF'
import sys, urllib.request
req = urllib.request.Request(sys.argv[2], method=sys.argv[1], data=b"" if sys.argv[1] == "POST" else None)
try:
    with urllib.request.urlopen(req, timeout=3) as r:
        sys.exit(0 if 200 <= r.status < 300 else 1)
except Exception as e:
    print(e, file=sys.stderr)
    sys.exit(1)
EOF
}

# our_pid: the recorded pid, if that process is still a moto_server.
our_pid() {
  [[ -f $pidfile ]] || return 1
  local pid
  pid=$(cat "$pidfile")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [[ -r /proc/$pid/cmdline ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "moto_server" || return 1
  echo "$pid"
}

case $cmd in
  start)
    need_moto
    mkdir -p "$DIR"
    if pid=$(our_pid); then
      echo "moto.sh: already running on $url (pid $pid)"
      exit 0
    fi
    if http GET /moto-api/ 2>/dev/null; then
      echo "moto.sh: something else already answers on $url; choose another port" >&2
      exit 1
    fi
    setsid "$MOTO" -H 127.0.0.1 -p "$port" >"$logfile" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$pidfile"
    deadline=$(( $(date +%s) + READY_TIMEOUT ))
    until http GET /moto-api/ 2>/dev/null; do
      if ! kill -0 "$pid" 2>/dev/null; then
        echo "moto.sh: moto_server exited; log $logfile:" >&2
        tail -n 20 "$logfile" >&2
        rm -f "$pidfile"
        exit 1
      fi
      if (( $(date +%s) >= deadline )); then
        echo "moto.sh: moto_server did not answer on $url within ${READY_TIMEOUT}s; stopping it (log $logfile)" >&2
        kill "$pid" 2>/dev/null || true
        rm -f "$pidfile"
        exit 1
      fi
      sleep 0.2
    done
    echo "moto.sh: running on $url (pid $pid, log $logfile)"
    ;;
  stop)
    if pid=$(our_pid); then
      kill "$pid"
      for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
      rm -f "$pidfile"
      echo "moto.sh: stopped pid $pid on port $port"
    else
      rm -f "$pidfile"
      echo "moto.sh: no moto_server started by this script on port $port"
    fi
    ;;
  reset)
    need_moto
    http POST /moto-api/reset || { echo "moto.sh: reset of $url failed (is it running? scripts/lab/moto.sh start $port)" >&2; exit 1; }
    echo "moto.sh: reset $url"
    ;;
  status)
    if pid=$(our_pid) && [[ -x $PY ]] && http GET /moto-api/ 2>/dev/null; then
      echo "moto.sh: running on $url (pid $pid)"
    else
      echo "moto.sh: not running on $url"
      exit 1
    fi
    ;;
  env)
    cat <<EOF
export AWS_ENDPOINT_URL=$url
export AWS_REGION=us-east-2
export AWS_ACCESS_KEY_ID=testing
export AWS_SECRET_ACCESS_KEY=testing
EOF
    ;;
  *)
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
