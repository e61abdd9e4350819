#!/bin/sh
# PID 1 of a systemd lab host (scripts/lab/netns.sh, PGREPL_NETNS_SET=systemd) until it
# execs systemd: run by netns.sh inside the host's network namespace and a fresh PID,
# mount, UTS and cgroup namespace. Arguments: the host's state directory R and its name.
#
# The host's root is an overlay of the machine's root with R/upper on top, so whatever the
# host (or systemd) writes outside its per-host directories lands in R/upper, never on the
# machine. /proc/sys and /sys are read-only; /run and /tmp are the host's own tmpfs.
set -eu
R=$1 H=$2 ROOT=$1/root
mount --make-rprivate /
mount -t overlay overlay -o "lowerdir=/,upperdir=$R/upper,workdir=$R/work" "$ROOT"
mount -t proc proc "$ROOT/proc"
mount --bind "$ROOT/proc/sys" "$ROOT/proc/sys"
mount -o remount,bind,ro "$ROOT/proc/sys"
mount -t sysfs -o ro sysfs "$ROOT/sys"
mount -t tmpfs -o mode=755 tmpfs "$ROOT/sys/fs/cgroup"
mkdir -p "$ROOT/sys/fs/cgroup/systemd" "$ROOT/sys/fs/cgroup/unified"
mount -t cgroup -o none,name=systemd cgroup "$ROOT/sys/fs/cgroup/systemd"
mount -t cgroup2 cgroup2 "$ROOT/sys/fs/cgroup/unified"
mount --rbind /dev "$ROOT/dev"
mount -t tmpfs -o mode=755 tmpfs "$ROOT/run"
# PostgreSQL's socket directory (tmpfiles does not run on these hosts).
mkdir -p "$ROOT/run/postgresql"
chown postgres:postgres "$ROOT/run/postgresql"
chmod 2775 "$ROOT/run/postgresql"
mount -t tmpfs -o mode=1777 tmpfs "$ROOT/tmp"
# The lab's view of the host: logs, and the per-host directories as on the other labs.
mkdir -p "$ROOT$R/io"
mount --bind "$R/io" "$ROOT$R/io"
for d in etc-postgresql:/etc/postgresql var-lib-postgresql:/var/lib/postgresql log-postgresql:/var/log/postgresql \
  usr-local-lib-pgrepl:/usr/local/lib/pgrepl etc-pgrepl:/etc/pgrepl var-lib-pgrepl:/var/lib/pgrepl \
  var-log-pgrepl:/var/log/pgrepl opt-pgrepl:/opt/pgrepl etc-pgbackrest:/etc/pgbackrest etc-xdg-pip:/etc/xdg/pip; do
  mkdir -p "$ROOT${d#*:}"
  mount --bind "$R/${d%%:*}" "$ROOT${d#*:}"
done
hostname "$H"
exec chroot "$ROOT" /usr/bin/env -i container=pgrepl-lab \
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  /lib/systemd/systemd --unit=pgrepl-lab.target
