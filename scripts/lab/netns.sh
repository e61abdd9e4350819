#!/usr/bin/env bash
# pgrepl 3-host lab on one machine: network namespaces pgl-a/b/c behind a bridge, each with
# its own sshd and its own Debian PostgreSQL paths (run as root; see scripts/lab/README.md).
#
#   scripts/lab/netns.sh up              # idempotent
#   scripts/lab/netns.sh status          # exit 0: up, 1: partly up, 3: down
#   scripts/lab/netns.sh down [--purge]  # --purge also deletes keys and per-host data
#
# PGREPL_NETNS_SET=ha selects a second, separate lab for automatic failover across
# locations: five hosts pgl-d/e (location "east"), pgl-f/g ("west") and pgl-w (the witness,
# "third") on bridge pglbr1, 10.213.8.21-25, state in $LAB/netns-ha; the two labs can run
# at the same time. It also has:
#
#   scripts/lab/netns.sh cut HOST...      # moves the hosts' links onto a bridge of their own
#                                         # (pglbr1x): they reach each other, nothing else
#   scripts/lab/netns.sh heal             # every host back on the lab's bridge
#   scripts/lab/netns.sh link HOST up|down  # a host's own link (eth0 in its namespace)
#
# PGREPL_NETNS_SET=systemd selects a third lab whose hosts run systemd (below), with:
#
#   scripts/lab/netns.sh crash HOST       # a power cut: the host's systemd and all it runs killed
#   scripts/lab/netns.sh boot HOST        # the host boots again (same disk)
#
# Layout (LAB=${PGREPL_LAB:-/opt/pgrepl-lab}, N=$LAB/netns):
#   bridge pglbr0 10.213.7.1/24 in the root namespace; namespaces pgl-a/b/c with eth0 =
#   10.213.7.11/12/13 (veth-a/b/c on the bridge), lo up, NO default route; ip_forward is not
#   touched, so nothing can leave the machine. /etc/netns/pgl-<h>/hosts names the three hosts,
#   /etc/netns/pgl-<h>/resolv.conf points DNS at loopback.
#   Per host h: N/<h>/{etc-postgresql,var-lib-postgresql,run-postgresql,log-postgresql} are
#   bind-mounted over /etc/postgresql, /var/lib/postgresql, /var/run/postgresql and
#   /var/log/postgresql inside a private mount + UTS namespace (hostname pgl-<h>), in which
#   sshd runs on <addr>:22 with key-only auth; everything started through it (pg_ctlcluster,
#   postgres) sees those paths. N/<h>/sshd.pid, sshd.log, sshd_config, ssh_host_ed25519_key.
#   Client side: N/id_ed25519 (lab key, root login), N/known_hosts (the three host keys, for
#   strict checking), N/authorized_keys (and each user's own ~/.ssh/authorized_keys, per host
#   for postgres). Logins: root, and pgrepl-admin (unprivileged,
#   passwordless sudo, as cloud images have), both with the lab key.
#
# `down` stops the PostgreSQL servers inside the namespaces (fast shutdown, then SIGKILL
# after a timeout), then the sshd listeners recorded in the pid files together with
# everything started through them (sessions and their commands), then deletes the
# namespaces, veths, /etc/netns entries and the bridge. It never signals a process outside
# these namespaces; any other process found inside one is reported (exit status 1) and left.
set -euo pipefail
umask 022
export LC_ALL=C

LAB=${PGREPL_LAB:-/opt/pgrepl-lab}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
case ${PGREPL_NETNS_SET:-base} in
  base)
    N=$LAB/netns
    BRIDGE=pglbr0
    BRIDGE_CIDR=10.213.7.1/24
    HOSTS=(a b c)
    declare -A ADDR=([a]=10.213.7.11 [b]=10.213.7.12 [c]=10.213.7.13)
    ;;
  ha)
    N=$LAB/netns-ha
    BRIDGE=pglbr1
    BRIDGE_CIDR=10.213.8.1/24
    HOSTS=(d e f g w)
    declare -A ADDR=([d]=10.213.8.21 [e]=10.213.8.22 [f]=10.213.8.23 [g]=10.213.8.24 [w]=10.213.8.25)
    ;;
  systemd)
    N=$LAB/netns-systemd
    BRIDGE=pglbr2
    BRIDGE_CIDR=10.213.9.1/24
    HOSTS=(s t u)
    declare -A ADDR=([s]=10.213.9.31 [t]=10.213.9.32 [u]=10.213.9.33)
    ;;
  *) echo "netns.sh: PGREPL_NETNS_SET must be base, ha or systemd" >&2; exit 2 ;;
esac
# PGREPL_NETNS_SET=systemd: three hosts pgl-s/t/u (10.213.9.31-33, bridge pglbr2, state in
# $LAB/netns-systemd) each running systemd as its PID 1, in a PID, mount, UTS and cgroup
# namespace of its own, on an overlay of the machine's root whose upper layer is the host's
# own ($N/<h>/upper: what the host writes outside its per-host directories stays there
# across `down` and `up`, as on a disk; `down --purge` deletes it). systemd starts only
# pgrepl-lab.target (the lab's sshd as a unit); the units of sysinit.target that could act
# on the machine (sysctl, modules, tmpfiles, udev, repart, time sync...) are masked, and
# /proc/sys and /sys are read-only. `down` powers a host off (systemd stops its units),
# then kills what is left of its PID namespace.
KIND=netns
[[ ${PGREPL_NETNS_SET:-base} == systemd ]] && KIND=systemd
CUT_BRIDGE=${BRIDGE}x
ADMIN=pgrepl-admin   # the lab's unprivileged sudoer
SSHD=/usr/sbin/sshd
READY_TIMEOUT=${PGREPL_NETNS_READY_TIMEOUT:-20}   # seconds for each sshd to accept connections
STOP_TIMEOUT=${PGREPL_NETNS_STOP_TIMEOUT:-20}     # seconds for postgres / sshd to exit
PG_DIRS=(etc-postgresql:/etc/postgresql var-lib-postgresql:/var/lib/postgresql
         run-postgresql:/var/run/postgresql log-postgresql:/var/log/postgresql)
# What pgrepl installs on a host of its own (agent binary, etcd member, its configuration
# and logs): per host too, since the hosts share the machine's other directories.
PGREPL_DIRS=(usr-local-lib-pgrepl:/usr/local/lib/pgrepl etc-pgrepl:/etc/pgrepl
             var-lib-pgrepl:/var/lib/pgrepl var-log-pgrepl:/var/log/pgrepl
             opt-pgrepl:/opt/pgrepl etc-pgbackrest:/etc/pgbackrest etc-xdg-pip:/etc/xdg/pip)
# /opt/pgrepl: where `up` installs Barman's scripts (empty on a fresh host, whatever this
# machine has there); /etc/pgbackrest: a pgBackRest repository host's configuration;
# /etc/xdg/pip: the hosts' pip configuration, which points at the lab's PyPI mirror
# ($LAB/wheelhouse, made by install.sh; no index: nothing leaves the machine).

die() { printf 'netns.sh: ERROR: %s\n' "$*" >&2; exit 2; }
warn() { printf 'netns.sh: warning: %s\n' "$*" >&2; }
say() { printf '%-8s %s\n' "$1" "$2"; }

preflight() {
  [[ $(id -u) -eq 0 ]] || die "must run as root"
  local t
  for t in ip unshare ssh-keygen flock ps "$SSHD"; do
    command -v "$t" >/dev/null 2>&1 || die "$t not found: run scripts/lab/install.sh first"
  done
  id postgres >/dev/null 2>&1 || die "no postgres OS user: run scripts/lab/install.sh first"
}

lock() {
  mkdir -p "$N"
  exec 9>"$N/.lock"
  flock -w 60 9 || die "another netns.sh holds $N/.lock"
}

ns_exists() { [[ -e /run/netns/$1 ]]; }

# The PID in pid file $2 of host h if it is ours: alive, named $3, inside namespace pgl-h,
# and (when $4 is given) started with $4 among its arguments. Prints nothing otherwise.
our_pid() {
  local h=$1 pidfile=$2 comm=$3 needle=${4:-} pid
  [[ -s $pidfile ]] || return 0
  pid=$(<"$pidfile")
  [[ $pid =~ ^[0-9]+$ ]] || return 0
  [[ -r /proc/$pid/comm && $(</proc/"$pid"/comm) == "$comm" ]] || return 0
  if [[ -n $needle ]]; then tr '\0' ' ' </proc/"$pid"/cmdline | grep -qF -- "$needle" || return 0; fi
  ns_exists "pgl-$h" || return 0
  [[ $(readlink /proc/"$pid"/ns/net) == "net:[$(stat -L -c %i /run/netns/pgl-"$h")]" ]] || return 0
  echo "$pid"
}

# Host h's sshd (netns hosts), started with our config.
our_sshd_pid() { our_pid "$1" "$N/$1/sshd.pid" sshd "$N/$1/sshd_config"; }

# Host h's PID 1 (systemd hosts), as seen from this machine.
our_init_pid() { our_pid "$1" "$N/$1/init.pid" systemd; }

# What runs host h: its sshd (netns hosts) or its systemd (systemd hosts).
host_pid() { if [[ $KIND == systemd ]]; then our_init_pid "$1"; else our_sshd_pid "$1"; fi; }

# Whether something accepts TCP connections on addr:22 (bounded by 1 s).
accepting() { timeout 1 bash -c "exec 3<>/dev/tcp/$1/22" 2>/dev/null; }

write_host_files() {
  local h=$1 ns=pgl-$1 R=$N/$1 x
  mkdir -p "/etc/netns/$ns"
  {
    echo "127.0.0.1 localhost"
    echo "::1 localhost ip6-localhost ip6-loopback"
    for x in "${HOSTS[@]}"; do echo "${ADDR[$x]} pgl-$x"; done
  } >"/etc/netns/$ns/hosts"
  # Name lookups other than the hosts file stay on loopback (nothing listens there).
  printf '# pgrepl netns lab: no DNS leaves the namespace\nnameserver 127.0.0.1\n' >"/etc/netns/$ns/resolv.conf"

  cat >"$R/sshd_config" <<EOF
# generated by scripts/lab/netns.sh
ListenAddress ${ADDR[$h]}:22
HostKey $R/ssh_host_ed25519_key
PidFile $R/sshd.pid
PermitRootLogin prohibit-password
PubkeyAuthentication yes
AuthenticationMethods publickey
AuthorizedKeysFile $N/authorized_keys .ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
PrintMotd no
X11Forwarding no
AllowAgentForwarding no
AllowTcpForwarding no
PermitTunnel no
MaxStartups 30:30:100
MaxSessions 20
LogLevel INFO
EOF
}

up_host() {
  local h=$1 ns=pgl-$1 R=$N/$1 A=${ADDR[$1]} d src dst pid
  ns_exists "$ns" || ip netns add "$ns"
  # A veth whose peer is not in this namespace (left from a namespace deleted while in use)
  # is replaced.
  if ip link show "veth-$h" >/dev/null 2>&1 && ! ip -n "$ns" link show eth0 >/dev/null 2>&1; then
    ip link del "veth-$h"
  fi
  ip link show "veth-$h" >/dev/null 2>&1 || ip link add "veth-$h" type veth peer name eth0 netns "$ns"
  ip link set "veth-$h" master "$BRIDGE" up
  ip -n "$ns" addr replace "$A/24" dev eth0
  ip -n "$ns" link set lo up
  ip -n "$ns" link set eth0 up
  if [[ -n $(ip -n "$ns" route show default) ]]; then
    die "$ns has a default route; refusing to continue (traffic must stay in $BRIDGE_CIDR)"
  fi

  mkdir -p "$R"
  for d in "${PG_DIRS[@]}"; do
    src=$R/${d%%:*} dst=${d#*:}
    mkdir -p "$src" "$dst"
  done
  for d in "${PGREPL_DIRS[@]}"; do
    src=$R/${d%%:*} dst=${d#*:}
    mkdir -p "$src" "$dst"
  done
  chown postgres:postgres "$R/etc-postgresql" "$R/var-lib-postgresql" "$R/run-postgresql"
  chown root:postgres "$R/log-postgresql"
  chmod 0755 "$R/etc-postgresql" "$R/var-lib-postgresql"
  chmod 2775 "$R/run-postgresql"
  chmod 1775 "$R/log-postgresql"
  if [[ -d $LAB/wheelhouse ]]; then
    printf '# the netns lab: pip installs from the lab PyPI mirror only\n[global]\nno-index = true\nfind-links = %s\n' \
      "$LAB/wheelhouse" >"$R/etc-xdg-pip/pip.conf"
  fi
  [[ -f $R/ssh_host_ed25519_key ]] || ssh-keygen -q -t ed25519 -N '' -C "pgl-$h" -f "$R/ssh_host_ed25519_key"
  write_host_files "$h"

  if [[ $KIND == systemd ]]; then
    up_systemd_host "$h"
    return 0
  fi
  pid=$(our_sshd_pid "$h")
  if [[ -n $pid ]]; then
    say "$ns" "sshd already running (pid $pid)"
    return 0
  fi
  rm -f "$R/sshd.pid"
  # sshd daemonizes; it and everything started through it keep the private mounts and name.
  ip netns exec "$ns" unshare --mount --uts --propagation private sh -c '
    set -e
    hostname "$1"
    mount --bind "$2/etc-postgresql" /etc/postgresql
    mount --bind "$2/var-lib-postgresql" /var/lib/postgresql
    mount --bind "$2/run-postgresql" /var/run/postgresql
    mount --bind "$2/log-postgresql" /var/log/postgresql
    mount --bind "$2/usr-local-lib-pgrepl" /usr/local/lib/pgrepl
    mount --bind "$2/etc-pgrepl" /etc/pgrepl
    mount --bind "$2/var-lib-pgrepl" /var/lib/pgrepl
    mount --bind "$2/var-log-pgrepl" /var/log/pgrepl
    mount --bind "$2/opt-pgrepl" /opt/pgrepl
    mount --bind "$2/etc-pgbackrest" /etc/pgbackrest
    mount --bind "$2/etc-xdg-pip" /etc/xdg/pip
    exec "$3" -f "$2/sshd_config" -E "$2/sshd.log"' sh "$ns" "$R" "$SSHD"
}

# The units systemd hosts never start: whatever of sysinit.target could act on the machine
# beyond the host's own overlay and namespaces (and what is useless in a container).
SYSTEMD_MASKED=(systemd-sysctl.service systemd-modules-load.service kmod-static-nodes.service
  systemd-tmpfiles-setup.service systemd-tmpfiles-setup-dev.service systemd-tmpfiles-clean.service
  systemd-udevd.service systemd-udev-trigger.service systemd-udev-settle.service
  systemd-repart.service systemd-firstboot.service systemd-machine-id-commit.service
  systemd-random-seed.service systemd-binfmt.service proc-sys-fs-binfmt_misc.automount
  systemd-pcrphase.service systemd-pcrphase-sysinit.service systemd-sysusers.service
  systemd-timesyncd.service systemd-pstore.service systemd-journal-flush.service
  systemd-update-utmp.service systemd-hwdb-update.service systemd-remount-fs.service
  systemd-ask-password-console.path systemd-ask-password-wall.path
  dev-hugepages.mount dev-mqueue.mount sys-kernel-config.mount sys-kernel-debug.mount
  sys-kernel-tracing.mount sys-fs-fuse-connections.mount
  cryptsetup.target integritysetup.target veritysetup.target swap.target
  timers.target getty.target console-getty.service e2scrub_reap.service ldconfig.service
  systemd-logind.service systemd-user-sessions.service systemd-update-utmp-runlevel.service
  dbus.service dbus.socket
  etcd.service haproxy.service ssh.service sshd.service)
# (The last line: services this machine enables for itself; a lab host boots
# multi-user.target, as a server does, with what pgrepl enables on it and nothing else.)

# Boots host h's systemd (idempotent): its units in its overlay's upper layer, then
# systemd as the PID 1 of its namespaces (scripts/lab/systemd-host-init.sh).
up_systemd_host() {
  local h=$1 ns=pgl-$1 R=$N/$1 pid u cg
  local U=$R/upper S=$R/upper/etc/systemd/system
  pid=$(our_init_pid "$h")
  if [[ -n $pid ]]; then
    say "$ns" "systemd already running (pid $pid)"
    return 0
  fi
  [[ -n $h && -n $R && $R == "$N"/* ]] || die "up_systemd_host: bad host '$h'"
  mkdir -p "$U" "$R/work" "$R/root" "$R/io" "$S/pgrepl-lab.target.wants"
  for u in "${SYSTEMD_MASKED[@]}"; do ln -sfn /dev/null "$S/$u"; done
  printf '%s\n' "# generated by scripts/lab/netns.sh: what this lab host boots" "[Unit]" \
    "Description=pgrepl lab host pgl-$h" "Wants=multi-user.target" "After=multi-user.target" "AllowIsolate=yes" >"$S/pgrepl-lab.target"
  printf '%s\n' "# generated by scripts/lab/netns.sh" "[Unit]" "Description=the lab's sshd" "DefaultDependencies=no" \
    "[Service]" "ExecStartPre=/bin/mkdir -p /run/sshd" "ExecStart=$SSHD -D -f $R/sshd_config -E $R/io/sshd.log" \
    "KillMode=process" "Restart=always" "[Install]" "WantedBy=pgrepl-lab.target" >"$S/pgrepl-lab-sshd.service"
  ln -sfn ../pgrepl-lab-sshd.service "$S/pgrepl-lab.target.wants/pgrepl-lab-sshd.service"
  echo "pgl-$h" >"$U/etc/hostname"
  sed -i "s#^PidFile .*#PidFile /run/sshd-lab.pid#" "$R/sshd_config"
  # Its own cgroups (systemd takes them for its root through the cgroup namespace).
  for cg in systemd unified; do mkdir -p "/sys/fs/cgroup/$cg/pgrepl-lab-$h"; done
  rm -f "$R/init.pid"
  # unshare forks the host's PID 1 (the init script, then systemd) and waits for it.
  setsid sh -c 'echo $$ >"/sys/fs/cgroup/systemd/pgrepl-lab-$3/cgroup.procs"
    echo $$ >"/sys/fs/cgroup/unified/pgrepl-lab-$3/cgroup.procs"
    exec ip netns exec "$1" unshare --pid --fork --mount --uts --cgroup --propagation private sh "$4" "$2" "$1"' \
    sh "$ns" "$R" "$h" "$HERE/systemd-host-init.sh" </dev/null >"$R/io/init.log" 2>&1 9>&- &
  local launcher=$! deadline=$((SECONDS + READY_TIMEOUT)) child=
  while :; do
    child=$(ps -o pid= --ppid "$launcher" 2>/dev/null | tr -d ' ' || true)
    [[ -n $child && $(comm_of "$child") == systemd ]] && break
    if ((SECONDS >= deadline)) || ! kill -0 "$launcher" 2>/dev/null; then
      cat "$R/io/init.log" >&2 || true
      die "systemd of pgl-$h did not start (log above: $R/io/init.log)"
    fi
    sleep 0.1
  done
  echo "$child" >"$R/init.pid"
  say "$ns" "systemd started (pid $child)"
}

# Powers host h off: systemd stops its units and exits, which ends its PID namespace
# (what is left in it is killed with it); its cgroups are removed.
down_systemd_host() {
  local h=$1 ns=pgl-$1 pid rc=0 cg
  pid=$(our_init_pid "$h")
  if [[ -n $pid ]]; then
    say "$ns" "powering off (systemd pid $pid)"
    signal RTMIN+4 "$pid"
    reap "systemd of $ns" "$pid" || rc=1
  fi
  for cg in systemd unified; do
    if [[ -d /sys/fs/cgroup/$cg/pgrepl-lab-$h ]]; then
      find "/sys/fs/cgroup/$cg/pgrepl-lab-$h" -depth -type d -exec rmdir {} + 2>/dev/null || true
    fi
  done
  rm -f "$N/$h/init.pid"
  return "$rc"
}

wait_ready() {
  local h=$1 A=${ADDR[$1]} deadline=$((SECONDS + READY_TIMEOUT)) log=$N/$1/sshd.log
  [[ $KIND == systemd ]] && log=$N/$1/io/sshd.log
  until [[ -n $(host_pid "$h") ]] && accepting "$A"; do
    if ((SECONDS >= deadline)); then
      tail -n 20 "$log" >&2 || true
      die "sshd of pgl-$h not accepting on $A:22 after ${READY_TIMEOUT}s (log above: $log)"
    fi
    sleep 0.1
  done
  say "pgl-$h" "$A:22 ready ($KIND pid $(host_pid "$h"))"
}

cmd_up() {
  preflight
  lock
  chmod 0755 "$N"
  [[ -f $N/id_ed25519 ]] || ssh-keygen -q -t ed25519 -N '' -C pgrepl-netns-lab -f "$N/id_ed25519"
  install -m 0644 "$N/id_ed25519.pub" "$N/authorized_keys"
  # What the labs share on this machine (the sudoer login, postgres's password field) is
  # set up under a lock of its own: two labs come up at once in the tests.
  exec 8>"$LAB/.netns-shared.lock"
  flock -w 60 8 || die "another netns.sh holds $LAB/.netns-shared.lock"
  # An unprivileged login with passwordless sudo, as on cloud images (ubuntu, ec2-user):
  # pgrepl administers through `sudo -n`. Its password is '*' (no password login), and the
  # shared authorized_keys file lets the lab key in.
  if ! id -u "$ADMIN" >/dev/null 2>&1; then
    useradd --create-home --shell /bin/bash "$ADMIN"
  fi
  usermod -p '*' "$ADMIN"
  # The hosts' sshd runs without PAM, which refuses any key login to a locked account
  # ('!'): postgres gets '*' (no password login either) so that pgBackRest's own SSH
  # between the hosts (a repository host, `backup.repo_host`) can log in with the keys
  # pgrepl puts in its per-host ~/.ssh/authorized_keys.
  if [[ $(getent shadow postgres | cut -d: -f2) == '!'* ]]; then usermod -p '*' postgres; fi
  if [[ ! -f /etc/sudoers.d/pgrepl-lab ]]; then
    printf '%s ALL=(ALL) NOPASSWD:ALL\n' "$ADMIN" >/etc/sudoers.d/pgrepl-lab.tmp
    chmod 0440 /etc/sudoers.d/pgrepl-lab.tmp
    mv -f /etc/sudoers.d/pgrepl-lab.tmp /etc/sudoers.d/pgrepl-lab
  fi
  exec 8>&-
  mkdir -p /run/sshd
  ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge
  ip addr replace "$BRIDGE_CIDR" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  local h
  for h in "${HOSTS[@]}"; do up_host "$h"; done
  {
    echo "# generated by scripts/lab/netns.sh: the lab hosts' keys"
    for h in "${HOSTS[@]}"; do
      echo "pgl-$h,${ADDR[$h]} $(cut -d' ' -f1,2 "$N/$h/ssh_host_ed25519_key.pub")"
    done
  } >"$N/known_hosts.tmp"
  mv -f "$N/known_hosts.tmp" "$N/known_hosts"
  for h in "${HOSTS[@]}"; do wait_ready "$h"; done
  say "lab" "up: ssh -i $N/id_ed25519 -o UserKnownHostsFile=$N/known_hosts -o StrictHostKeyChecking=yes root@${ADDR[${HOSTS[0]}]}"
}

# Sends $1 to the PIDs that follow (ignoring ones already gone).
signal() { local sig=$1; shift; (($#)) && kill "-$sig" "$@" 2>/dev/null || true; }

# The PIDs that still run (a zombie waiting for its parent to reap it does not count).
alive() {
  local p st
  for p in "$@"; do
    st=$(sed -n 's/.*) \([A-Za-z]\) .*/\1/p' "/proc/$p/stat" 2>/dev/null) || continue
    [[ -n $st && $st != Z && $st != X ]] && echo "$p"
  done
  return 0
}

# Waits (bounded) for the PIDs to exit; SIGKILLs what is left. Returns 1 if any had to be killed.
reap() {
  local what=$1; shift
  local deadline=$((SECONDS + STOP_TIMEOUT)) left
  while left=$(alive "$@") && [[ -n $left ]]; do
    if ((SECONDS >= deadline)); then
      warn "$what did not exit within ${STOP_TIMEOUT}s; killing: $(echo $left)"
      # shellcheck disable=SC2086
      signal KILL $left
      return 1
    fi
    sleep 0.1
  done
}

comm_of() { cat "/proc/$1/comm" 2>/dev/null || true; }

# PIDs of all descendants of $1 (bounded depth), space-separated.
descendants() {
  local table frontier=("$1") next out=() p pp f depth
  table=$(ps -e -o pid=,ppid=)
  for depth in 1 2 3 4 5 6 7 8; do
    next=()
    while read -r p pp; do
      for f in "${frontier[@]}"; do [[ $pp == "$f" ]] && next+=("$p"); done
    done <<<"$table"
    ((${#next[@]})) || break
    out+=("${next[@]}")
    frontier=("${next[@]}")
  done
  : "$depth"
  echo "${out[*]}"
}
ppid_of() { ps -o ppid= -p "$1" 2>/dev/null | tr -d ' ' || true; }

down_host() {
  local h=$1 ns=pgl-$1 R=$N/$1 p pg=() masters=() listener sessions=() leftovers=() rc=0
  if [[ $KIND == systemd ]]; then
    down_systemd_host "$h" || rc=1
  fi
  if ns_exists "$ns"; then
    # pgrepl's own services started through the lab's sshd (agents, their supervisors,
    # etcd members): they detach from the session, so they are found by name in the
    # namespace, which only the lab's sshd populates.
    local svc=()
    for p in $(ip netns pids "$ns"); do
      case $(comm_of "$p") in pgrepl | etcd) svc+=("$p") ;; esac
    done
    if ((${#svc[@]})); then
      say "$ns" "stopping pgrepl services (pids ${svc[*]})"
      signal TERM "${svc[@]}"
      reap "pgrepl services in $ns" "${svc[@]}" || rc=1
    fi
    # PostgreSQL: fast shutdown of each postmaster (a postgres whose parent is not postgres).
    for p in $(ip netns pids "$ns"); do
      if [[ $(comm_of "$p") == postgres ]]; then
        pg+=("$p")
        [[ $(comm_of "$(ppid_of "$p")") == postgres ]] || masters+=("$p")
      fi
    done
    if ((${#pg[@]})); then
      say "$ns" "stopping PostgreSQL (postmaster pids: ${masters[*]:-none})"
      signal INT "${masters[@]}"
      reap "postgres in $ns" "${pg[@]}" || rc=1
    fi
    # sshd: the listener from the pid file and everything started through it (its session
    # processes and the commands they run), all at once so that nothing is orphaned first.
    listener=$(our_sshd_pid "$h")
    if [[ -n $listener ]]; then
      read -r -a sessions <<<"$(descendants "$listener")"
      say "$ns" "stopping sshd (pid $listener${sessions[*]:+; sessions and their commands: ${sessions[*]}})"
      signal TERM "$listener" "${sessions[@]}"
      reap "sshd in $ns" "$listener" "${sessions[@]}" || rc=1
    fi
    for p in $(ip netns pids "$ns"); do
      leftovers+=("$p:$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | cut -c1-80)")
    done
    if ((${#leftovers[@]})); then
      warn "processes not started by this lab remain in $ns (left running): ${leftovers[*]}"
      rc=1
    fi
  fi
  # The veth first: deleting a namespace removes its end asynchronously.
  if ip link show "veth-$h" >/dev/null 2>&1; then ip link del "veth-$h" 2>/dev/null || true; fi
  if ns_exists "$ns"; then ip netns del "$ns"; fi
  rm -rf "/etc/netns/$ns"
  rm -f "$R/sshd.pid"
  return "$rc"
}

cmd_down() {
  local purge=0
  case ${1:-} in
    --purge) purge=1 ;;
    '') ;;
    *) die "usage: netns.sh down [--purge]" ;;
  esac
  preflight
  lock
  local h rc=0
  for h in "${HOSTS[@]}"; do down_host "$h" || rc=1; done
  if ip link show "$BRIDGE" >/dev/null 2>&1; then ip link del "$BRIDGE"; fi
  if ip link show "$CUT_BRIDGE" >/dev/null 2>&1; then ip link del "$CUT_BRIDGE"; fi
  if ((purge)); then
    for h in "${HOSTS[@]}"; do rm -rf "${N:?}/$h"; done
    rm -f "$N"/id_ed25519* "$N/known_hosts" "$N/authorized_keys"
    # The sudoer login is the machine's, shared by the labs: removed with the last one
    # (another lab's test may be logged in as it right now).
    local b others=()
    exec 8>"$LAB/.netns-shared.lock"
    flock -w 60 8 || die "another netns.sh holds $LAB/.netns-shared.lock"
    for b in pglbr0 pglbr1 pglbr2; do
      [[ $b != "$BRIDGE" ]] && ip link show "$b" >/dev/null 2>&1 && others+=("$b")
    done
    if ((${#others[@]})); then
      say "lab" "kept $ADMIN and its sudo rule (another lab is up: ${others[*]})"
    else
      rm -f /etc/sudoers.d/pgrepl-lab
      if id -u "$ADMIN" >/dev/null 2>&1; then userdel --remove "$ADMIN" 2>/dev/null || true; fi
    fi
    exec 8>&-
    say "lab" "down; keys and per-host data deleted"
  else
    say "lab" "down (keys and per-host data kept in $N)"
  fi
  return "$rc"
}

cmd_status() {
  [[ $(id -u) -eq 0 ]] || die "must run as root"
  local h ns pid up=0 parts=0 addr npg
  if ip link show "$BRIDGE" >/dev/null 2>&1; then
    say "$BRIDGE" "present $(ip -br addr show "$BRIDGE" | awk '{print $3}')"
    parts=$((parts + 1))
  else
    say "$BRIDGE" "absent"
  fi
  for h in "${HOSTS[@]}"; do
    ns=pgl-$h
    if ! ns_exists "$ns"; then
      say "$ns" "absent"
      continue
    fi
    parts=$((parts + 1))
    addr=$(ip -n "$ns" -br addr show eth0 2>/dev/null | awk '{print $3}')
    pid=$(host_pid "$h")
    npg=0
    for p in $(ip netns pids "$ns"); do [[ $(comm_of "$p") == postgres ]] && npg=$((npg + 1)); done
    say "$ns" "eth0 ${addr:-none}, sshd ${pid:-not running}, $npg postgres processes"
    [[ -n $pid ]] && up=$((up + 1))
  done
  if ((up == ${#HOSTS[@]} && parts == ${#HOSTS[@]} + 1)); then
    return 0
  elif ((parts == 0)); then
    return 3
  else
    return 1
  fi
}

is_host() { local h; for h in "${HOSTS[@]}"; do [[ $h == "$1" ]] && return 0; done; return 1; }

# Partitions: the hosts named move onto a bridge of their own (they still reach each
# other); `heal` puts every host back. Nothing is routed between the two bridges.
cmd_cut() {
  preflight
  lock
  (($#)) || die "usage: netns.sh cut HOST..."
  local h
  for h in "$@"; do is_host "$h" || die "$h: not a host of this lab (${HOSTS[*]})"; done
  ip link show "$CUT_BRIDGE" >/dev/null 2>&1 || ip link add "$CUT_BRIDGE" type bridge
  ip link set "$CUT_BRIDGE" up
  for h in "$@"; do ip link set "veth-$h" master "$CUT_BRIDGE"; say "pgl-$h" "cut off (on $CUT_BRIDGE)"; done
}

cmd_heal() {
  preflight
  lock
  local h
  for h in "${HOSTS[@]}"; do
    ip link show "veth-$h" >/dev/null 2>&1 && ip link set "veth-$h" master "$BRIDGE"
  done
  say "lab" "every host on $BRIDGE"
}

# systemd hosts: a power cut (systemd and everything of the host SIGKILLed at once), and a
# boot (systemd starts again on the same disk: the overlay's upper layer).
cmd_crash() {
  preflight
  [[ $KIND == systemd ]] || die "crash: only for PGREPL_NETNS_SET=systemd"
  local h=${1:-} pid
  is_host "$h" || die "usage: netns.sh crash HOST (HOST one of ${HOSTS[*]})"
  pid=$(our_init_pid "$h")
  [[ -n $pid ]] || die "pgl-$h: no systemd running"
  signal KILL "$pid"
  reap "systemd of pgl-$h" "$pid" || true
  rm -f "$N/$h/init.pid"
  say "pgl-$h" "crashed (systemd pid $pid killed)"
}

cmd_boot() {
  preflight
  lock
  [[ $KIND == systemd ]] || die "boot: only for PGREPL_NETNS_SET=systemd"
  local h=${1:-}
  is_host "$h" || die "usage: netns.sh boot HOST (HOST one of ${HOSTS[*]})"
  up_host "$h"
  wait_ready "$h"
}

cmd_link() {
  preflight
  local h=${1:-} state=${2:-}
  is_host "$h" || die "usage: netns.sh link HOST up|down (HOST one of ${HOSTS[*]})"
  [[ $state == up || $state == down ]] || die "usage: netns.sh link HOST up|down"
  ip -n "pgl-$h" link set eth0 "$state"
  say "pgl-$h" "eth0 $state"
}

case ${1:-} in
  up) cmd_up ;;
  down) shift; cmd_down "$@" ;;
  status) cmd_status ;;
  cut) shift; cmd_cut "$@" ;;
  heal) cmd_heal ;;
  link) shift; cmd_link "$@" ;;
  crash) shift; cmd_crash "$@" ;;
  boot) shift; cmd_boot "$@" ;;
  *) echo "usage: $0 up | down [--purge] | status | cut HOST... | heal | link HOST up|down | crash HOST | boot HOST" >&2; exit 2 ;;
esac
