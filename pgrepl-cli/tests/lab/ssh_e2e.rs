//! Deploying over SSH onto the 3-host network-namespace lab (scripts/lab/netns.sh):
//! Debian layout (pg_createcluster, pg_ctlcluster without systemd), replication across
//! hosts, host key checking, a link cut while status runs, a connection dropped during a
//! base backup, and no password in any process's arguments on any host.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::pgrepl_wd as run;
use crate::common::*;

fn write_spec(dir: &Path, name: &str, known_hosts: &Path, policy: &str, extra: &str) -> String {
    let f = dir.join(format!("{name}.toml"));
    std::fs::write(&f, ssh_spec(name, "15", known_hosts, policy, extra)).unwrap();
    f.to_string_lossy().into_owned()
}

/// up → replication across hosts (checked with OpenSSH + psql on each host) → verify →
/// status → up again is a no-op → down → destroy.
#[test]
fn ssh_lifecycle_on_three_hosts() {
    let _lab = NetnsLab::up();
    let wd = WorkDir::new("ssh-life");
    let f = write_spec(&wd.path, "sshlife", &NetnsLab::known_hosts(), "strict", "");

    let (code, out, err) = run(&f, &wd, &["up", "--output", "json"]);
    assert_eq!(code, 0, "up over SSH: {out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let actions = v["up"]["actions"].to_string();
    assert!(actions.contains("pg_createcluster") && actions.contains("clone from db1"), "{actions}");

    // Independent checks on the hosts themselves.
    let repl = NetnsLab::psql(
        "10.213.7.11",
        5432,
        "SELECT host(client_addr) || ' ' || application_name || ' ' || state FROM pg_stat_replication ORDER BY 1",
    );
    assert_eq!(repl, "10.213.7.12 db2 streaming\n10.213.7.13 db3 streaming", "{repl}");
    for addr in ["10.213.7.12", "10.213.7.13"] {
        assert_eq!(NetnsLab::psql(addr, 5432, "SELECT status || ' ' || sender_host FROM pg_stat_wal_receiver"), "streaming 10.213.7.11");
        // Debian layout: config in /etc, the include line appended, never rewritten.
        let (_, conf) =
            NetnsLab::ssh(addr, "tail -n 1 /etc/postgresql/15/main/postgresql.conf; stat -c %a /var/lib/postgresql/pgrepl-sshlife/pgpass");
        assert_eq!(conf, "include 'pgrepl.conf'\n600", "{addr}");
    }
    // pg_hba on the primary: replication only from the cluster's other addresses.
    let (_, hba) = NetnsLab::ssh("10.213.7.11", "sed -n '/pgrepl:begin/,/pgrepl:end/p' /etc/postgresql/15/main/pg_hba.conf");
    assert!(
        hba.contains("10.213.7.12/32") && hba.contains("10.213.7.13/32") && !hba.contains("10.213.7.11/32") && !hba.contains("0.0.0.0"),
        "{hba}"
    );

    let (code, out, err) = run(&f, &wd, &["verify"]);
    assert_eq!(code, 0, "verify: {out}{err}");
    let (code, out, _) = run(&f, &wd, &["status", "--output", "json"]);
    assert_eq!(code, 0, "{out}");
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["nodes"][1]["streaming"], true);
    assert_eq!(s["nodes"][0]["endpoint"], "10.213.7.11:5432");

    let (code, out, err) = run(&f, &wd, &["up", "--output", "json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["up"]["actions"].as_array().unwrap().len(), 0, "second up over SSH changed things: {out}");

    let (code, out, err) = run(&f, &wd, &["down"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("stopped: db1, db2, db3"), "{out}");
    let (code, out, _) = run(&f, &wd, &["status"]);
    assert_eq!(code, 1);
    assert!(out.contains("problem: db1: stopped"), "{out}");
    let (code, _, err) = run(&f, &wd, &["destroy", "--yes"]);
    assert_eq!(code, 0, "{err}");
    let (_, left) = NetnsLab::ssh("10.213.7.12", "ls /etc/postgresql/15 /var/lib/postgresql 2>&1");
    assert!(!left.contains("main") && !left.contains("pgrepl-sshlife"), "destroy left: {left}");
}

/// A host key that does not match known_hosts is refused, naming the host; accept-new
/// records unknown keys (and then strict checking passes).
#[test]
fn ssh_host_key_mismatch_and_accept_new() {
    let _lab = NetnsLab::up();
    let wd = WorkDir::new("ssh-keys");
    // known_hosts where db2's address carries another host's key.
    let good = std::fs::read_to_string(NetnsLab::known_hosts()).unwrap();
    let key_of = |addr: &str| good.lines().find(|l| l.contains(addr)).unwrap().split_whitespace().skip(1).collect::<Vec<_>>().join(" ");
    let forged: String = good
        .lines()
        .map(|l| if l.contains("10.213.7.12") { format!("10.213.7.12 {}", key_of("10.213.7.11")) } else { l.to_string() })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    let kh = wd.path.join("forged_known_hosts");
    std::fs::write(&kh, forged).unwrap();
    let f = write_spec(&wd.path, "keys", &kh, "strict", "");
    let (code, out, err) = run(&f, &wd, &["status"]);
    let all = format!("{out}{err}");
    assert_eq!(code, 1, "{all}");
    assert!(all.contains("db2: unreachable") && all.contains("10.213.7.12") && all.contains("host key"), "{all}");
    assert!(!all.contains("db1: unreachable") && !all.contains("db3: unreachable"), "the other hosts are still reached: {all}");
    // up refuses: the host with the changed key is not trusted.
    let (code, _, err) = run(&f, &wd, &["up"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("10.213.7.12") && err.contains("host key"), "{err}");
    // accept-new does not accept a changed key either.
    let f = write_spec(&wd.path, "keys", &kh, "accept-new", "");
    let (code, out, err) = run(&f, &wd, &["status"]);
    assert_eq!(code, 1, "a changed key is refused even with accept-new");
    assert!(format!("{out}{err}").contains("db2: unreachable"), "{out}{err}");

    // An empty known_hosts: strict refuses every host, accept-new records the three keys.
    let empty = wd.path.join("empty_known_hosts");
    std::fs::write(&empty, "").unwrap();
    let f = write_spec(&wd.path, "keys", &empty, "strict", "");
    let (code, out, err) = run(&f, &wd, &["status"]);
    assert_eq!(code, 1);
    assert!(format!("{out}{err}").contains("host key"), "{out}{err}");
    let f = write_spec(&wd.path, "keys", &empty, "accept-new", "");
    let (code, out, err) = run(&f, &wd, &["status"]);
    assert_eq!(code, 1, "reachable, nothing deployed: {out}{err}");
    let recorded = std::fs::read_to_string(&empty).unwrap();
    for addr in ["10.213.7.11", "10.213.7.12", "10.213.7.13"] {
        assert!(recorded.contains(addr), "accept-new recorded {addr}: {recorded}");
    }
    let f = write_spec(&wd.path, "keys", &empty, "strict", "");
    assert_eq!(run(&f, &wd, &["status"]).0, 1, "strict passes with the recorded keys");
}

/// A link cut while status runs: that node is reported unreachable, the others still
/// reported; with the link back, status is whole again.
#[test]
fn ssh_link_cut_during_status() {
    let _lab = NetnsLab::up();
    let wd = WorkDir::new("ssh-link");
    let f = write_spec(&wd.path, "link", &NetnsLab::known_hosts(), "strict", "");
    let (code, _, err) = run(&f, &wd, &["up"]);
    assert_eq!(code, 0, "{err}");
    let cut = std::process::Command::new("ip").args(["link", "set", "veth-b", "down"]).status().unwrap();
    assert!(cut.success());
    let t0 = Instant::now();
    let (code, out, err) = run(&f, &wd, &["status", "--output", "json"]);
    let took = t0.elapsed();
    let up = std::process::Command::new("ip").args(["link", "set", "veth-b", "up"]).status().unwrap();
    assert!(up.success());
    assert_eq!(code, 1, "{out}{err}");
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["nodes"][1]["state"], "unreachable", "{out}");
    assert_eq!(s["nodes"][0]["state"], "running");
    assert_eq!(s["nodes"][2]["streaming"], true);
    assert!(took < Duration::from_secs(30), "status stays bounded: {took:?}");
    // Whole again once the link is back (the standby reconnects on its own).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, out, _) = run(&f, &wd, &["status"]);
        if code == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "status never whole again: {out}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = run(&f, &wd, &["destroy", "--yes"]);
}

/// The SSH connection to a standby drops during its base backup (its session and the
/// pg_basebackup it ran are killed): `up` again converges, the primary's data untouched.
#[test]
fn ssh_connection_dropped_during_base_backup() {
    let _lab = NetnsLab::up();
    let wd = WorkDir::new("ssh-drop");
    let f = write_spec(&wd.path, "drop", &NetnsLab::known_hosts(), "strict", "");
    let (code, _, err) = run(&f, &wd, &["up"]);
    assert_eq!(code, 0, "{err}");
    NetnsLab::psql("10.213.7.11", 5432, "CREATE TABLE big AS SELECT g, repeat('x', 2000) AS pad FROM generate_series(1, 150000) g");
    let before = NetnsLab::psql("10.213.7.11", 5432, "SELECT count(*), sum(g) FROM big");
    // db2 goes away (the test's own cluster), so that up clones it again.
    let (code, out) = NetnsLab::ssh("10.213.7.12", "pg_dropcluster --stop 15 main");
    assert_eq!(code, 0, "{out}");

    let child = std::process::Command::new(env!("CARGO_BIN_EXE_pgrepl"))
        .args(["up", "-f", &f, "--work-dir", wd.path.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let host_b = NetnsLab::host_dir("b");
    let marker = host_b.join("var-lib-postgresql/pgrepl-drop/clone-in-progress");
    let base = host_b.join("var-lib-postgresql/15/main/base");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(marker.exists() && base.exists()) {
        assert!(Instant::now() < deadline, "the clone never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Drop the connection: kill pgrepl's SSH sessions on pgl-b and what they ran.
    let pids = std::process::Command::new("ip").args(["netns", "pids", "pgl-b"]).output().unwrap();
    let mut killed = Vec::new();
    for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).map(|c| String::from_utf8_lossy(&c).replace('\0', " ")).unwrap_or_default();
        if cmd.starts_with("sshd: root") || cmd.contains("pg_basebackup") {
            let _ = std::process::Command::new("kill").args(["-KILL", pid]).status();
            killed.push(cmd);
        }
    }
    assert!(!killed.is_empty(), "nothing to kill");
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "up must fail when its connection drops");
    assert!(marker.exists(), "the unfinished clone stays marked");

    let (code, out, err) = run(&f, &wd, &["up", "--output", "json"]);
    assert_eq!(code, 0, "up converges: {out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["up"]["actions"].to_string().contains("clone from db1"));
    assert_eq!(v["status"]["problems"].as_array().unwrap().len(), 0, "{out}");
    assert_eq!(NetnsLab::psql("10.213.7.11", 5432, "SELECT count(*), sum(g) FROM big"), before, "primary untouched");
    assert_eq!(NetnsLab::psql("10.213.7.12", 5432, "SELECT count(*), sum(g) FROM big"), before, "standby complete");
    let _ = run(&f, &wd, &["destroy", "--yes"]);
}

/// While `up` runs over SSH, no process on any host (nor here) has the replication
/// password in its arguments; the files holding it are 0600.
#[test]
fn ssh_no_password_in_process_arguments() {
    let _lab = NetnsLab::up();
    let wd = WorkDir::new("ssh-secret");
    let password = "Pw-for-argv-check-9f3c1d7e";
    let pw_file = wd.path.join("replication.password");
    std::fs::write(&pw_file, format!("{password}\n")).unwrap();
    let f = write_spec(
        &wd.path,
        "secret",
        &NetnsLab::known_hosts(),
        "strict",
        &format!("[replication]\npassword_file = \"{}\"\n", pw_file.display()),
    );
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pgrepl"))
        .args(["up", "-f", &f, "--work-dir", wd.path.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Every process on this machine, the lab hosts' included (they share the PID namespace).
    let mut scans = 0u64;
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "up did not finish");
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                assert!(!cmd.contains(password), "password in the arguments of pid {:?}: {cmd}", e.file_name());
            }
            if let Ok(env) = std::fs::read(e.path().join("environ")) {
                assert!(!String::from_utf8_lossy(&env).contains(password), "password in the environment of pid {:?}", e.file_name());
            }
        }
        scans += 1;
    };
    assert!(status.success());
    assert!(scans > 10, "scanned while up ran ({scans} scans)");
    // The password is in 0600 files only, and the server stores a SCRAM hash.
    for (_, addr, _) in LAB_HOSTS {
        let (_, mode) = NetnsLab::ssh(addr, "stat -c '%a %U' /var/lib/postgresql/pgrepl-secret/pgpass");
        assert_eq!(mode, "600 postgres", "{addr}");
    }
    let stored = NetnsLab::psql("10.213.7.11", 5432, "SELECT left(rolpassword, 14) FROM pg_authid WHERE rolname = 'replicator'");
    assert_eq!(stored, "SCRAM-SHA-256$");
    let (_, logs) = NetnsLab::ssh("10.213.7.11", "cat /var/log/postgresql/*.log");
    assert!(!logs.contains(password), "password in the server log");
    let _ = run(&f, &wd, &["destroy", "--yes"]);
}

/// Logged in as an unprivileged user with passwordless sudo (as on cloud images): pgrepl
/// administers through `sudo -n` and runs PostgreSQL's commands as postgres.
#[test]
fn ssh_non_root_login_with_sudo() {
    let _lab = NetnsLab::up();
    let wd = WorkDir::new("ssh-sudo");
    let text = ssh_spec("sudo", "15", &NetnsLab::known_hosts(), "strict", "").replace("user = \"root\"", "user = \"pgrepl-admin\"");
    let f = wd.path.join("sudo.toml");
    std::fs::write(&f, text).unwrap();
    let f = f.to_string_lossy().into_owned();
    let (code, out, err) = run(&f, &wd, &["up"]);
    assert_eq!(code, 0, "up as pgrepl-admin: {out}\n{err}");
    assert!(out.contains("verify: ok"), "{out}");
    let (_, owner) = NetnsLab::ssh("10.213.7.12", "stat -c '%U %a' /var/lib/postgresql/pgrepl-sudo/pgpass /var/lib/postgresql/15/main");
    assert_eq!(owner, "postgres 600\npostgres 700");
    let (code, _, err) = run(&f, &wd, &["destroy", "--yes"]);
    assert_eq!(code, 0, "{err}");
}

/// The plain layout over SSH: pg_ctl with the spec's binaries, everything of the node under
/// `<data_root>/<cluster>`, no distribution cluster involved; destroy removes that directory.
#[test]
fn ssh_plain_layout_with_pg_ctl() {
    let _lab = NetnsLab::up();
    let wd = WorkDir::new("ssh-plain");
    // The lab hosts share the root filesystem except their PostgreSQL directories: the root
    // goes under the per-host /var/lib/postgresql.
    let text = ssh_spec("plain", "15", &NetnsLab::known_hosts(), "strict", "")
        .replace("postgres = \"15\"", "postgres = \"15\"\npg_bin = \"/usr/lib/postgresql/15/bin\"")
        .replace("connect_timeout_secs = 3", "connect_timeout_secs = 3\nlayout = \"plain\"\ndata_root = \"/var/lib/postgresql/plainroot\"");
    let f = wd.path.join("plain.toml");
    std::fs::write(&f, text).unwrap();
    let f = f.to_string_lossy().into_owned();
    let (code, out, err) = run(&f, &wd, &["up"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("verify: ok"), "{out}");
    for (_, addr, _) in LAB_HOSTS {
        let (_, ls) = NetnsLab::ssh(addr, "stat -c '%U %a' /var/lib/postgresql/plainroot/plain/data; pg_lsclusters -h | wc -l");
        assert_eq!(ls, "postgres 700\n0", "{addr}: a pg_ctl cluster in the plain root, no Debian cluster");
    }
    let (code, _, err) = run(&f, &wd, &["destroy", "--yes"]);
    assert_eq!(code, 0, "{err}");
    let (_, left) = NetnsLab::ssh("10.213.7.12", "ls /var/lib/postgresql/plainroot");
    assert_eq!(left, "", "destroy removed the node's directory");
}

/// `destroy` removes only what pgrepl created. db1 already runs a Debian cluster 15/main
/// holding data of its own (pgrepl adopts it as the primary); db2 has an unused 15/main
/// (pgrepl replaces its data with a clone) and another cluster 15/other on port 5433 that
/// pgrepl never touches; db3 has nothing (pgrepl creates 15/main). After `destroy --yes`:
/// db1's cluster and data survive (and start, without pgrepl's settings), db2's
/// registration is kept while pgrepl's clone is gone, 15/other is untouched, db3 is
/// clean; the output names what was left.
#[test]
fn ssh_destroy_leaves_what_pgrepl_did_not_create() {
    let _lab = NetnsLab::up();
    let wd = WorkDir::new("ssh-adopt");
    // No record of an earlier, interrupted run (the lab hosts share this machine's /var/lib/pgrepl).
    let _ = std::fs::remove_dir_all("/var/lib/pgrepl/.created/adopt");
    let (a, b, c) = ("10.213.7.11", "10.213.7.12", "10.213.7.13");
    for (addr, script) in [
        (
            a,
            "pg_createcluster 15 main --start >/dev/null && runuser -u postgres -- psql -X -q -p 5432 -c 'CREATE TABLE precious AS SELECT 42 AS answer'",
        ),
        (b, "pg_createcluster 15 main --start >/dev/null && pg_createcluster 15 other -p 5433 --start >/dev/null"),
    ] {
        let (code, out) = NetnsLab::ssh(addr, script);
        assert_eq!(code, 0, "{addr}: {out}");
    }
    let f = write_spec(&wd.path, "adopt", &NetnsLab::known_hosts(), "strict", "");
    let (code, out, err) = run(&f, &wd, &["up"]);
    assert_eq!(code, 0, "up over pre-existing clusters: {out}\n{err}");
    assert_eq!(NetnsLab::psql(b, 5432, "SELECT answer FROM precious"), "42", "db2 is a clone of the adopted primary");

    let (code, out, err) = run(&f, &wd, &["destroy", "--yes"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let left: Vec<&str> = out.lines().filter(|l| l.starts_with("left: ")).collect();
    assert_eq!(left.len(), 2, "{out}");
    assert!(left[0].starts_with("left: db1: Debian cluster 15/main with its data in /var/lib/postgresql/15/main"), "{out}");
    assert!(
        left[1].starts_with("left: db2: Debian cluster 15/main, its registration and configuration in /etc/postgresql/15/main"),
        "{out}"
    );

    // db1: the cluster pgrepl found is still there, without pgrepl's settings, and starts with its data.
    let (_, clusters) = NetnsLab::ssh(a, "pg_lsclusters -h | awk '{print $1, $2}'");
    assert_eq!(clusters, "15 main");
    let (code, conf) = NetnsLab::ssh(
        a,
        "ls /etc/postgresql/15/main/pgrepl.conf 2>&1; grep -c pgrepl /etc/postgresql/15/main/postgresql.conf /etc/postgresql/15/main/pg_hba.conf",
    );
    assert_ne!(code, 0);
    assert!(conf.contains("No such file") && conf.contains("postgresql.conf:0") && conf.contains("pg_hba.conf:0"), "{conf}");
    let (code, out) = NetnsLab::ssh(a, "pg_ctlcluster 15 main start");
    assert_eq!(code, 0, "the adopted cluster starts: {out}");
    assert_eq!(NetnsLab::psql(a, 5432, "SELECT answer FROM precious"), "42", "db1's own data survives");
    let (code, out) = NetnsLab::ssh(a, "pg_ctlcluster 15 main stop");
    assert_eq!(code, 0, "{out}");
    // db2: the registration stays (it was there before), pgrepl's clone is gone; 15/other untouched.
    let (_, state) = NetnsLab::ssh(
        b,
        "ls -d /etc/postgresql/15/main /var/lib/postgresql/15/main 2>&1; pg_lsclusters -h | awk '$2 == \"other\" {print $1, $2, $3, $4}'",
    );
    assert!(state.contains("/etc/postgresql/15/main\n") && state.contains("cannot access '/var/lib/postgresql/15/main'"), "{state}");
    assert!(state.ends_with("15 other 5433 online"), "{state}");
    // db3: pgrepl created everything there, and removed it.
    let (_, state) = NetnsLab::ssh(c, "ls /etc/postgresql/15 /var/lib/postgresql 2>&1; pg_lsclusters -h");
    assert!(!state.contains("main") && !state.contains("pgrepl-adopt"), "{state}");
    let (code, _) = NetnsLab::ssh(b, "pg_ctlcluster 15 other stop");
    assert_eq!(code, 0);
}

/// pgrepl starts the nodes itself: `up` turns off the OS's start at boot of every node it
/// deploys (db2, db3: pg_createcluster writes `auto`) or adopts (db1 comes with a cluster of
/// its own, started at boot), so that a node fenced while unreachable does not come back
/// writable after a reboot. Each host's start.conf then says `manual` (pg_lsclusters still
/// lists the cluster, pg_ctlcluster still starts it) and pgrepl's record names the change; a
/// second `up` changes nothing; after `down`, `up` starts them again.
#[test]
fn ssh_up_turns_off_start_at_boot() {
    let _lab = NetnsLab::up();
    let wd = WorkDir::new("ssh-boot");
    let (code, out) = NetnsLab::ssh(
        "10.213.7.11",
        "pg_createcluster 15 main --start >/dev/null && grep -v '^#' /etc/postgresql/15/main/start.conf | grep .",
    );
    assert_eq!((code, out.as_str()), (0, "auto"), "db1's own cluster starts at boot");
    let f = write_spec(&wd.path, "boot", &NetnsLab::known_hosts(), "strict", "");
    let (code, out, err) = run(&f, &wd, &["up", "--output", "json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let actions = v["up"]["actions"].as_array().unwrap();
    for (node, _, _) in LAB_HOSTS {
        assert!(
            actions.iter().any(|a| a["node"] == node && a["what"].as_str().unwrap().contains("turn off the OS's start at boot")),
            "{node}: {actions:?}"
        );
    }
    let check = "grep -v '^#' /etc/postgresql/15/main/start.conf | grep .; pg_lsclusters -h | awk '{print $1, $2, $4}'; cat /var/lib/postgresql/pgrepl-boot/autostart-off";
    for (node, addr, _) in LAB_HOSTS {
        let (code, out) = NetnsLab::ssh(addr, check);
        assert_eq!(code, 0, "{node}: {out}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "manual", "{node}: {out}");
        assert!(lines[1].starts_with("15 main online"), "{node}: pg_lsclusters lists it, running: {out}");
        assert!(out.contains("/etc/postgresql/15/main/start.conf: auto -> manual"), "{node}: the record names the change: {out}");
    }
    let (code, out, err) = run(&f, &wd, &["up", "--output", "json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["up"]["actions"].as_array().unwrap().len(), 0, "second up changed things: {out}");
    let (_, again) = NetnsLab::ssh("10.213.7.12", check);
    assert_eq!(again.matches("auto -> manual").count(), 1, "recorded once: {again}");

    // With start.conf manual, pgrepl (through pg_ctlcluster) still starts them.
    let (code, _, err) = run(&f, &wd, &["down"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(&f, &wd, &["up"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("verify: ok"), "{out}");
    let (code, _, err) = run(&f, &wd, &["destroy", "--yes"]);
    assert_eq!(code, 0, "{err}");
}
