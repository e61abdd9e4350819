//! Hosts where systemd runs (`PGREPL_NETNS_SET=systemd scripts/lab/netns.sh`: pgl-s/t/u,
//! systemd as each host's PID 1 on an overlay of this machine's root, booting
//! multi-user.target): Debian's PostgreSQL driven through its `postgresql@15-main` units,
//! pgrepl's etcd members and agents as systemd units, hosts that lose power and boot again.

use std::time::{Duration, Instant};

use crate::common::pgrepl_wd as run;
use crate::common::*;

/// `systemctl is-active` / `is-enabled` of `units` on a host, one word per unit.
fn systemctl(addr: &str, verb: &str, units: &str) -> String {
    SystemdLab::ssh(addr, &format!("systemctl {verb} {units} 2>/dev/null || true")).1.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The unit's main PID (0: none).
fn main_pid(addr: &str, unit: &str) -> u32 {
    SystemdLab::ssh(addr, &format!("systemctl show -p MainPID --value {unit}")).1.trim().parse().unwrap_or(0)
}

/// Waits (bounded) until `ok` holds for the cluster's `status` text; the last text on failure.
fn wait_status(f: &str, wd: &WorkDir, limit: Duration, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let t0 = Instant::now();
    let mut last = String::new();
    while t0.elapsed() < limit {
        let (_, out, err) = run(f, wd, &["status"]);
        last = format!("{out}\n{err}");
        if ok(&out) {
            return out;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("{what}: not within {limit:?}; last status:\n{last}");
}

fn node_line<'a>(status: &'a str, node: &str) -> &'a str {
    status.lines().find(|l| l.starts_with(&format!("{node} "))).unwrap_or("")
}

/// `up` on systemd hosts: each server runs in its `postgresql@15-main` unit (its main
/// PID the postmaster), the unit disabled at boot. The primary's host loses power: a
/// failover is refused without --force (nothing shows the host is down), done with it.
/// The host boots: its server stays down (the OS does not start it: autostart is off), so
/// the fenced old primary never comes back writable; `rejoin` makes it a standby of the
/// new primary with every row. `destroy` leaves no cluster and no running unit.
#[test]
fn systemd_hosts_units_power_loss_and_boot_leave_the_old_primary_down() {
    let _lab = SystemdLab::up();
    let wd = WorkDir::new("sd-plain");
    let f = wd.path.join("sd.toml");
    std::fs::write(&f, SystemdLab::spec("sdp", "", "[replication]\nslots = true\n")).unwrap();
    let f = f.to_str().unwrap();

    let (code, out, err) = run(f, &wd, &["up"]);
    assert_eq!(code, 0, "up on systemd hosts: {out}\n{err}");
    for (n, addr, _) in SYSTEMD_HOSTS {
        assert_eq!(systemctl(addr, "is-active", "postgresql@15-main"), "active", "{n}: its unit runs the server");
        assert_eq!(systemctl(addr, "is-enabled", "postgresql@15-main"), "disabled", "{n}: not started at boot");
        let (_, postmaster) = SystemdLab::ssh(addr, "head -n 1 /var/lib/postgresql/15/main/postmaster.pid");
        assert_eq!(main_pid(addr, "postgresql@15-main").to_string(), postmaster, "{n}: the unit's main PID is the postmaster");
    }
    let (_, out) = SystemdLab::ssh(
        "10.213.9.31",
        "runuser -u postgres -- psql -X -A -t -c 'CREATE TABLE t(id int); INSERT INTO t SELECT generate_series(1, 100)'",
    );
    assert!(out.contains("INSERT 0 100"), "{out}");
    wait_status(f, &wd, Duration::from_secs(30), "the standbys replay the rows", |s| {
        let lsn = |n: &str| node_line(s, n).split_whitespace().nth(5).map(str::to_string);
        lsn("db1").is_some() && lsn("db1") == lsn("db2") && lsn("db1") == lsn("db3")
    });

    // Power cut on db1's host.
    SystemdLab::sh(&["crash", "s"]);
    let (code, out, err) = run(f, &wd, &["failover"]);
    assert_ne!(code, 0, "failover past a host that merely cannot be reached: {out}\n{err}");
    assert!(err.contains("pass --force"), "{err}");
    let (code, out, err) = run(f, &wd, &["failover", "--force"]);
    assert_eq!(code, 0, "failover --force: {out}\n{err}");
    let status = wait_status(f, &wd, Duration::from_secs(60), "a new primary", |s| {
        ["db2", "db3"].iter().any(|n| node_line(s, n).split_whitespace().nth(2) == Some("primary"))
    });
    let new = ["db2", "db3"].into_iter().find(|n| node_line(&status, n).split_whitespace().nth(2) == Some("primary")).unwrap();

    // db1's host boots: the OS starts none of pgrepl's servers.
    SystemdLab::sh(&["boot", "s"]);
    let (code, _) = SystemdLab::ssh("10.213.9.31", "systemctl is-system-running --wait >/dev/null; true");
    assert_eq!(code, 0);
    assert_eq!(systemctl("10.213.9.31", "is-active", "postgresql@15-main"), "inactive", "the fenced old primary stays down after a boot");
    let (code, out) = SystemdLab::ssh("10.213.9.31", "pgrep -u postgres -x postgres || true");
    assert!(code == 0 && out.is_empty(), "no postgres runs on the booted host: {out}");

    let (code, out, err) = run(f, &wd, &["rejoin", "db1"]);
    assert_eq!(code, 0, "rejoin db1: {out}\n{err}");
    let status = wait_status(f, &wd, Duration::from_secs(60), "db1 streams from the new primary", |s| {
        let l = node_line(s, "db1");
        l.contains("standby") && l.contains("streaming") && l.contains(new)
    });
    assert!(status.contains("healthy"), "{status}");
    assert_eq!(systemctl("10.213.9.31", "is-active", "postgresql@15-main"), "active", "db1 back, in its unit");
    assert_eq!(systemctl("10.213.9.31", "is-enabled", "postgresql@15-main"), "disabled");
    let (_, n) = SystemdLab::ssh("10.213.9.31", "runuser -u postgres -- psql -X -A -t -c 'SELECT count(*) FROM t'");
    assert_eq!(n, "100", "every row on the rejoined node");

    destroy_leaves_nothing(f, &wd, "systemctl list-units --no-legend 'postgresql@*' | grep -w active; ls /etc/postgresql/15 2>/dev/null");
}

/// `[ha]` on systemd hosts: the etcd members (TLS) and the agents run as systemd units,
/// enabled (started at boot), restarted when they die; the primary's host loses power:
/// a standby takes over with no command; the host boots: its etcd member and agent start
/// with it and the agent makes its server a standby of the new primary by itself, in
/// PostgreSQL's own unit; `destroy` removes the units.
#[test]
fn ha_on_systemd_hosts_runs_etcd_and_agents_as_units_across_power_loss() {
    let _lab = SystemdLab::up();
    let wd = WorkDir::new("sd-ha");
    let f = wd.path.join("sdha.toml");
    std::fs::write(&f, SystemdLab::spec("sdha", "", "[ha]\nttl = 10\nloop_wait = 1\n\n[ha.etcd]\ndeploy = true\n")).unwrap();
    let f = f.to_str().unwrap();
    let units = "pgrepl-sdha-etcd pgrepl-sdha-agent";

    let (code, out, err) = run(f, &wd, &["up"]);
    assert_eq!(code, 0, "up with [ha] on systemd hosts: {out}\n{err}");
    assert!(err.contains("pgrepl-sdha-agent (systemd)"), "{err}");
    for (n, addr, _) in SYSTEMD_HOSTS {
        assert_eq!(systemctl(addr, "is-active", units), "active active", "{n}");
        assert_eq!(systemctl(addr, "is-enabled", units), "enabled enabled", "{n}: started at boot");
        let (_, show) = SystemdLab::ssh(addr, "systemctl show -p Restart -p After --value pgrepl-sdha-agent");
        assert!(show.contains("always") && show.contains("network-online.target"), "{n}: {show}");
    }
    wait_status(f, &wd, Duration::from_secs(60), "db1 leads, the agents report", |s| {
        s.contains("ha: leader db1") && ["db1", "db2", "db3"].iter().all(|n| s.contains(&format!("ha: member {n}:")))
    });

    // An agent that dies is started again by systemd.
    let before = main_pid("10.213.9.32", "pgrepl-sdha-agent");
    assert!(before > 0);
    SystemdLab::ssh("10.213.9.32", &format!("kill -KILL {before}"));
    let t0 = Instant::now();
    loop {
        let now = main_pid("10.213.9.32", "pgrepl-sdha-agent");
        if now != 0 && now != before && systemctl("10.213.9.32", "is-active", "pgrepl-sdha-agent") == "active" {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "db2's agent was not restarted (main PID {now})");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Power cut on the primary's host: a standby takes over with no command.
    SystemdLab::sh(&["crash", "s"]);
    let status =
        wait_status(f, &wd, Duration::from_secs(90), "a new leader", |s| s.contains("ha: leader db2") || s.contains("ha: leader db3"));
    let new = if status.contains("ha: leader db2") { "db2" } else { "db3" };

    // The host boots: etcd and the agent start with it; the agent brings db1 back as a
    // standby of the new primary, through PostgreSQL's unit.
    SystemdLab::sh(&["boot", "s"]);
    let status = wait_status(f, &wd, Duration::from_secs(120), "db1 back as a standby", |s| {
        let l = node_line(s, "db1");
        l.contains("standby") && l.contains("streaming") && l.contains(new)
    });
    assert!(status.contains(&format!("ha: leader {new}")), "the leader stays: {status}");
    assert_eq!(systemctl("10.213.9.31", "is-active", units), "active active", "started at boot");
    // The unit is "activating" until pg_ctlcluster's wait for the standby to accept
    // connections ends, which a loaded machine makes longer than the status above took.
    let t0 = Instant::now();
    while systemctl("10.213.9.31", "is-active", "postgresql@15-main") != "active" {
        assert!(t0.elapsed() < Duration::from_secs(120), "db1's unit never became active");
        std::thread::sleep(Duration::from_millis(500));
    }
    let (_, postmaster) = SystemdLab::ssh("10.213.9.31", "head -n 1 /var/lib/postgresql/15/main/postmaster.pid");
    assert_eq!(main_pid("10.213.9.31", "postgresql@15-main").to_string(), postmaster, "the agent started it through its unit");

    destroy_leaves_nothing(
        f,
        &wd,
        "ls /etc/systemd/system/pgrepl-sdha-* 2>/dev/null; systemctl list-units --no-legend 'pgrepl-sdha-*' 'postgresql@*' | grep -w active",
    );
}

/// `destroy --yes`, then `left` (sh) prints nothing on any host.
fn destroy_leaves_nothing(f: &str, wd: &WorkDir, left: &str) {
    let (code, out, err) = run(f, wd, &["destroy", "--yes"]);
    assert_eq!(code, 0, "destroy: {out}\n{err}");
    for (n, addr, _) in SYSTEMD_HOSTS {
        let (_, found) = SystemdLab::ssh(addr, &format!("{left}; true"));
        assert_eq!(found, "", "{n}: left {found}");
    }
}
