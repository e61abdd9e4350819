//! Day two without downtime, through the `pgrepl` binary on local clusters of the lab,
//! under the write load of `ha::Load` (multi-host read-write connection, every
//! acknowledged commit recorded, every failed write counted):
//!
//! - a setting that needs a restart (shared_buffers) changed in the cluster file and `up`
//!   re-run: the primary's postmaster is the same process, no write fails, the standbys
//!   run the new value, `status` (text and JSON) shows the primary pending a restart;
//!   then `restart --rolling`: every node runs the new value, the primary is db1 again,
//!   writes resumed, nothing acknowledged lost; the write gap is printed next to the
//!   switchovers' own measure;
//! - max_connections raised, then lowered (`up`, then `restart --rolling`, each time):
//!   every standby streams and replays after every step, and no standby log says
//!   "insufficient parameter settings" (12: a standby stops on it; 16: its replay pauses);
//! - a minor upgrade onto a copy of the lab's build: every postmaster runs from the new
//!   binaries (/proc/PID/exe), the data is there, every standby streams; binaries of
//!   another major are refused with the majors named and nothing restarted.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::ha::{Load, longest_gap};

const NODES: [&str; 3] = ["db1", "db2", "db3"];

/// A 3-node local cluster deployed by the `pgrepl` binary from a cluster file.
struct Day2 {
    wd: WorkDir,
    port: u16,
    major: String,
    client: PathBuf,
    spec: PathBuf,
    name: String,
}

impl Day2 {
    /// Writes the cluster file (`extra`: top-level keys and tables before `[provider]`) and runs `up`.
    fn up(name: &str, major: &str, extra: &str) -> Day2 {
        let (bin, client) = bins(major);
        let wd = WorkDir::new(name).with_bin(&bin);
        let port = free_ports(3);
        let spec = wd.path.join("pgrepl.toml");
        let lab = Day2 { wd, port, major: major.into(), client, spec, name: name.into() };
        lab.write_spec(extra);
        let (code, out, err) = lab.cli(&["up"]);
        assert_eq!(code, 0, "up: {out}\n{err}");
        create_app_role(&lab.client, &lab.wd.path, "db1", port);
        lab.sql("db1", "CREATE TABLE load (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())");
        lab
    }

    fn write_spec(&self, extra: &str) {
        std::fs::write(&self.spec, local_spec(&self.name, &self.major, self.port, &self.wd.str(), extra)).unwrap();
    }

    /// `pgrepl ARGS -f SPEC` (the binaries: the spec's pg_bin, else the lab's build).
    fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let spec = self.spec.to_str().unwrap().to_string();
        let text = std::fs::read_to_string(&self.spec).unwrap();
        let (bin, client) = bins(&self.major);
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.extend(["-f".into(), spec]);
        if !text.contains("pg_bin") {
            all.extend(["--pg-bin".into(), bin.to_str().unwrap().into()]);
        }
        all.extend(["--pg-client-bin".into(), client.to_str().unwrap().into()]);
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        pgrepl_ok(&refs)
    }

    fn port_of(&self, node: &str) -> u16 {
        self.port + NODES.iter().position(|n| *n == node).unwrap() as u16
    }

    fn ports(&self) -> Vec<u16> {
        NODES.iter().map(|n| self.port_of(n)).collect()
    }

    fn sql(&self, node: &str, q: &str) -> String {
        psql(&self.client, &self.wd.path, node, self.port_of(node), q)
    }

    fn data(&self, node: &str) -> PathBuf {
        self.wd.path.join(node).join("data")
    }

    /// The node's postmaster, from its own postmaster.pid.
    fn postmaster(&self, node: &str) -> u32 {
        let text = std::fs::read_to_string(self.data(node).join("postmaster.pid")).unwrap();
        text.lines().next().unwrap().trim().parse().unwrap()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.extend(["--output", "json"]);
        let (code, out, err) = self.cli(&a);
        assert!(code == 0 || code == 1, "{args:?}: exit {code}\n{out}\n{err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}\n{err}"))
    }

    fn status_node(status: &serde_json::Value, node: &str) -> serde_json::Value {
        status["nodes"].as_array().unwrap().iter().find(|n| n["name"] == node).unwrap().clone()
    }

    fn ids(&self, node: &str) -> std::collections::BTreeSet<i64> {
        self.sql(node, "SELECT id FROM load").lines().filter(|l| !l.is_empty()).map(|l| l.parse().unwrap()).collect()
    }

    /// Every standby of `primary` streams, and replays past the position the primary had
    /// when asked (bounded waits).
    fn standbys_replay(&self, primary: &str) {
        let standbys: Vec<&str> = NODES.iter().copied().filter(|n| *n != primary).collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = self.sql(
                primary,
                "SELECT string_agg(application_name, ',' ORDER BY application_name) FROM pg_stat_replication WHERE state = 'streaming'",
            );
            if s == standbys.join(",") {
                break;
            }
            assert!(Instant::now() < deadline, "streaming from {primary}: {s:?}, expected {standbys:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
        let target = self.sql(primary, "SELECT pg_current_wal_lsn()");
        for s in standbys {
            let receiver = self.sql(s, "SELECT coalesce((SELECT status FROM pg_stat_wal_receiver), 'none')");
            assert_eq!(receiver, "streaming", "{s}'s walreceiver");
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let done = self.sql(s, &format!("SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn"));
                if done == "t" {
                    break;
                }
                let paused = self.sql(s, "SELECT pg_is_wal_replay_paused()");
                assert!(Instant::now() < deadline, "{s} did not replay past {target} (replay paused: {paused})");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Every line of the node's server log that says a standby's settings are too low.
    fn insufficient(&self, node: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut dirs = vec![self.wd.path.join(node)];
        for _ in 0..1000 {
            let Some(d) = dirs.pop() else { break };
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    dirs.push(p);
                } else if p.extension().is_some_and(|x| x == "log") {
                    let text = String::from_utf8_lossy(&std::fs::read(&p).unwrap_or_default()).into_owned();
                    out.extend(text.lines().filter(|l| l.contains("insufficient parameter settings")).map(str::to_string));
                }
            }
        }
        out
    }

    fn destroy(&self) {
        let _ = self.cli(&["destroy", "--yes"]);
    }
}

fn show(lab: &Day2, node: &str, setting: &str) -> String {
    lab.sql(node, &format!("SHOW {setting}"))
}

/// shared_buffers changed and `up` re-run under load: the primary runs on untouched;
/// then `restart --rolling` applies it everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn day2_pending_restart_then_rolling_restart_pg16() {
    let lab = Day2::up("d2-roll", "16", "");
    let load = Load::start(lab.ports());
    tokio::time::sleep(Duration::from_millis(800)).await;
    let pids: Vec<u32> = NODES.iter().map(|n| lab.postmaster(n)).collect();
    let before = show(&lab, "db1", "shared_buffers");
    assert_ne!(before, "48MB");

    lab.write_spec("[settings]\nshared_buffers = \"48MB\"\n");
    let t_up = Instant::now();
    let up = lab.json(&["up"]);
    let up_done = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(lab.postmaster("db1"), pids[0], "up restarted the primary: {up:#}");
    let failed: Vec<Instant> = load.failures().into_iter().filter(|t| *t >= t_up && *t <= up_done).collect();
    assert!(failed.is_empty(), "{} writes failed while up ran: {up:#}", failed.len());
    assert_eq!(show(&lab, "db1", "shared_buffers"), before, "the primary still runs with its old value");
    for (i, s) in ["db2", "db3"].iter().enumerate() {
        assert_ne!(lab.postmaster(s), pids[i + 1], "{s}: a standby may restart at once for shared_buffers");
        assert_eq!(show(&lab, s, "shared_buffers"), "48MB");
    }
    let pending = up["up"]["pending_restart"].as_array().unwrap().clone();
    assert_eq!(pending.len(), 1, "{up:#}");
    assert_eq!(pending[0]["node"], "db1");
    assert_eq!(pending[0]["settings"], serde_json::json!(["shared_buffers"]));
    assert_eq!(pending[0]["command"], "pgrepl restart --rolling");
    let (code, text, _) = lab.cli(&["up"]);
    assert_eq!(code, 0);
    assert!(text.contains("pending restart: db1: shared_buffers;") && text.contains("`pgrepl restart --rolling` applies it"), "{text}");
    let status = lab.json(&["status"]);
    assert_eq!(Day2::status_node(&status, "db1")["pending_restart"], serde_json::json!(["shared_buffers"]), "{status:#}");
    assert_eq!(Day2::status_node(&status, "db2")["pending_restart"], serde_json::json!([]), "{status:#}");
    let (_, text, _) = lab.cli(&["status"]);
    assert!(text.contains("pending restart: db1 (shared_buffers)"), "{text}");
    lab.standbys_replay("db1");

    // The dry run says what will happen, and does nothing.
    let (code, plan, err) = lab.cli(&["restart", "--rolling", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(plan.contains("switchover db1 -> it") && plan.contains("switchover db2 -> it"), "{plan}");
    assert_eq!(lab.postmaster("db1"), pids[0]);

    let t_restart = Instant::now();
    let r = lab.json(&["restart", "--rolling"]);
    let restart_done = Instant::now();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let failures = load.failures();
    let acks = load.finish().await;

    for n in NODES {
        assert_eq!(show(&lab, n, "shared_buffers"), "48MB", "{n} after restart --rolling: {r:#}");
    }
    assert_ne!(lab.postmaster("db1"), pids[0], "the primary was restarted");
    assert_eq!(lab.sql("db1", "SELECT pg_is_in_recovery()"), "f", "db1 is the primary again: {r:#}");
    assert_eq!(r["to"], "db1", "{r:#}");
    let status = lab.json(&["status"]);
    for n in NODES {
        assert_eq!(Day2::status_node(&status, n)["pending_restart"], serde_json::json!([]), "{n}: {status:#}");
    }
    lab.standbys_replay("db1");
    // Writes resumed, and nothing acknowledged is lost.
    assert!(acks.iter().any(|a| a.at > restart_done), "no write acknowledged after the rolling restart");
    let present = lab.ids("db1");
    let missing: Vec<i64> = acks.iter().filter(|a| !present.contains(&a.id)).map(|a| a.id).collect();
    assert!(missing.is_empty(), "{} acknowledged rows lost: {:?}", missing.len(), &missing[..missing.len().min(20)]);
    let gap = longest_gap(&acks, t_restart, restart_done);
    let up_gap = longest_gap(&acks, t_up, up_done);
    let switchovers: Vec<f64> =
        r["switchovers"].as_array().unwrap().iter().map(|s| s["timings"]["write_unavailable_seconds"].as_f64().unwrap()).collect();
    assert_eq!(switchovers.len(), 2, "a switchover and back: {r:#}");
    eprintln!(
        "day2 pg16: {} acknowledged writes; longest write gap during up {:.3}s, during restart --rolling {:.3}s; the switchovers reported writes unavailable {:?}s; {} failed writes or connection attempts during the restart",
        acks.len(),
        up_gap.as_secs_f64(),
        gap.as_secs_f64(),
        switchovers,
        failures.iter().filter(|t| **t >= t_restart && **t <= restart_done).count()
    );
    lab.destroy();
}

/// max_connections raised, then lowered: `up` then `restart --rolling` each time; every
/// standby keeps streaming and replaying, none ever finds its value below the primary's.
async fn max_connections_raise_and_lower(major: &str) {
    let lab = Day2::up(&format!("d2-maxc-{major}"), major, "");
    let load = Load::start(lab.ports());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start = show(&lab, "db1", "max_connections").parse::<u32>().unwrap();
    let (raised, lowered) = (start + 50, start - 20);
    let pid1 = lab.postmaster("db1");

    // Raise: `up` restarts the standbys at once (safe), not the primary.
    lab.write_spec(&format!("[settings]\nmax_connections = {raised}\n"));
    let up = lab.json(&["up"]);
    assert_eq!(lab.postmaster("db1"), pid1, "up restarted the primary: {up:#}");
    for s in ["db2", "db3"] {
        assert_eq!(show(&lab, s, "max_connections"), raised.to_string(), "{s} after up: {up:#}");
    }
    assert_eq!(up["up"]["pending_restart"][0]["node"], "db1", "{up:#}");
    lab.standbys_replay("db1");
    let r = lab.json(&["restart", "--rolling"]);
    for n in NODES {
        assert_eq!(show(&lab, n, "max_connections"), raised.to_string(), "{n}: {r:#}");
    }
    lab.standbys_replay("db1");

    // Lower: no standby may go first; `up` leaves all three pending.
    lab.write_spec(&format!("[settings]\nmax_connections = {lowered}\n"));
    let pids: Vec<u32> = NODES.iter().map(|n| lab.postmaster(n)).collect();
    let up = lab.json(&["up"]);
    assert_eq!(NODES.iter().map(|n| lab.postmaster(n)).collect::<Vec<_>>(), pids, "up restarted a node while lowering: {up:#}");
    let pending: Vec<String> =
        up["up"]["pending_restart"].as_array().unwrap().iter().map(|p| p["node"].as_str().unwrap().to_string()).collect();
    assert_eq!(pending, vec!["db2", "db3", "db1"], "{up:#}");
    lab.standbys_replay("db1");
    let (code, plan, err) = lab.cli(&["restart", "--rolling", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(plan.contains("goes down") && plan.contains("restart in place"), "{plan}");
    let r = lab.json(&["restart", "--rolling"]);
    for n in NODES {
        assert_eq!(show(&lab, n, "max_connections"), lowered.to_string(), "{n}: {r:#}");
    }
    assert_eq!(lab.sql("db1", "SELECT pg_is_in_recovery()"), "f");
    lab.standbys_replay("db1");
    let acks = load.finish().await;
    let present = lab.ids("db1");
    let missing: Vec<i64> = acks.iter().filter(|a| !present.contains(&a.id)).map(|a| a.id).collect();
    assert!(missing.is_empty(), "{} acknowledged rows lost", missing.len());
    for n in NODES {
        let bad = lab.insufficient(n);
        assert!(bad.is_empty(), "{n}'s log: {bad:?}");
    }
    eprintln!("day2 max_connections pg{major}: {start} -> {raised} -> {lowered}; {} acknowledged writes, none lost", acks.len());
    lab.destroy();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn day2_max_connections_raise_and_lower_pg16() {
    max_connections_raise_and_lower("16").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn day2_max_connections_raise_and_lower_pg12() {
    max_connections_raise_and_lower("12").await;
}

/// Copies a lab build to `to` (a new build of the same major, as far as pgrepl can tell).
fn copy_build(from: &Path, to: &Path) {
    let st = std::process::Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap();
    assert!(st.success(), "cp -a {} {}", from.display(), to.display());
}

fn exe(pid: u32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/exe")).unwrap()
}

/// A minor upgrade onto a copy of the lab's build; binaries of another major refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn day2_minor_upgrade_onto_a_copied_build_pg15() {
    let (bin, _) = bins("15");
    let lab = Day2::up("d2-minor", "15", &format!("pg_bin = \"{}\"\n", bin.display()));
    lab.sql("db1", "INSERT INTO load (id) SELECT g FROM generate_series(1000001, 1001000) g");
    // The lab's builds are reached through symbolic links; the postmaster's exe is the real path.
    let build = std::fs::canonicalize(bin.parent().unwrap()).unwrap();
    let build = build.as_path();
    let new = lab.wd.path.join("pg15-new");
    copy_build(build, &new);
    let new_bin = new.join("bin");
    for n in NODES {
        assert!(exe(lab.postmaster(n)).starts_with(build), "{n} runs from the lab's build first");
    }

    // Another major's binaries: refused with both majors named, nothing restarted.
    let (bin16, _) = bins("16");
    lab.write_spec(&format!("pg_bin = \"{}\"\n", bin16.display()));
    let pids: Vec<u32> = NODES.iter().map(|n| lab.postmaster(n)).collect();
    let (code, out, err) = lab.cli(&["upgrade", "--minor"]);
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("PostgreSQL 16") && err.contains("PostgreSQL 15"), "exit {code}: {err}");
    assert_eq!(NODES.iter().map(|n| lab.postmaster(n)).collect::<Vec<_>>(), pids, "nothing restarted");
    // The same with the major left to detection (the local discovery has nothing to
    // compare then): pgrepl's own check against each data directory's PG_VERSION.
    let text = std::fs::read_to_string(&lab.spec).unwrap().replace("postgres = \"15\"", "postgres = \"detect\"");
    std::fs::write(&lab.spec, text).unwrap();
    let (code, out, err) = pgrepl_ok(&["upgrade", "--minor", "-f", lab.spec.to_str().unwrap()]);
    assert_eq!(code, 3, "{out}\n{err}");
    assert!(
        err.contains("the binaries in")
            && err.contains("are PostgreSQL 16 but its data directory is PostgreSQL 15")
            && err.contains("a minor upgrade keeps the major"),
        "{err}"
    );
    assert_eq!(NODES.iter().map(|n| lab.postmaster(n)).collect::<Vec<_>>(), pids, "nothing restarted");

    lab.write_spec(&format!("pg_bin = \"{}\"\n", new_bin.display()));
    let load = Load::start(lab.ports());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (code, plan, err) = lab.cli(&["upgrade", "--minor", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(plan.contains("minor upgrade, rolling"), "{plan}");
    let t = Instant::now();
    let r = lab.json(&["upgrade", "--minor"]);
    let done = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acks = load.finish().await;
    for n in NODES {
        let e = exe(lab.postmaster(n));
        assert!(e.starts_with(&new), "{n}'s postmaster runs {} after the upgrade: {r:#}", e.display());
    }
    assert_eq!(lab.sql("db1", "SELECT pg_is_in_recovery()"), "f");
    lab.standbys_replay("db1");
    for n in NODES {
        assert_eq!(lab.sql(n, "SELECT count(*) FROM load WHERE id > 1000000"), "1000", "{n}");
    }
    let present = lab.ids("db1");
    let missing: Vec<i64> = acks.iter().filter(|a| !present.contains(&a.id)).map(|a| a.id).collect();
    assert!(missing.is_empty(), "{} acknowledged rows lost", missing.len());
    eprintln!(
        "day2 minor upgrade pg15: {} acknowledged writes during it, longest gap {:.3}s",
        acks.len(),
        longest_gap(&acks, t, done).as_secs_f64()
    );
    lab.destroy();
}

/// Over SSH (the 3-host netns lab, Debian layout): `up` with a changed shared_buffers
/// leaves the primary's postmaster alone and restarts the standbys; `restart --rolling`
/// applies it on db1 through a switchover and back.
#[test]
fn day2_rolling_restart_over_ssh_pg15() {
    let _lab = NetnsLab::up();
    let wd = WorkDir::new("d2-ssh");
    let f = wd.path.join("d2ssh.toml");
    let write = |extra: &str| std::fs::write(&f, ssh_spec("d2ssh", "15", &NetnsLab::known_hosts(), "strict", extra)).unwrap();
    let fs = f.to_str().unwrap().to_string();
    let run = |args: &[&str]| {
        let mut a = vec![args[0], "-f", fs.as_str(), "--work-dir", wd.path.to_str().unwrap()];
        a.extend(&args[1..]);
        pgrepl_ok(&a)
    };
    write("");
    let (code, out, err) = run(&["up"]);
    assert_eq!(code, 0, "up over SSH: {out}\n{err}");
    let pid = |addr: &str| NetnsLab::ssh(addr, "head -n 1 /var/lib/postgresql/15/main/postmaster.pid").1;
    let addrs: Vec<&str> = LAB_HOSTS.iter().map(|(_, a, _)| *a).collect();
    let pids: Vec<String> = addrs.iter().map(|a| pid(a)).collect();
    assert_ne!(NetnsLab::psql(addrs[0], 5432, "SHOW shared_buffers"), "48MB");

    write("[settings]\nshared_buffers = \"48MB\"\n");
    let (code, out, err) = run(&["up"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("pending restart: db1: shared_buffers;"), "{out}");
    assert_eq!(pid(addrs[0]), pids[0], "up restarted the primary over SSH");
    for (i, a) in addrs.iter().enumerate().skip(1) {
        assert_ne!(pid(a), pids[i], "{a}");
        assert_eq!(NetnsLab::psql(a, 5432, "SHOW shared_buffers"), "48MB");
    }
    let (code, out, err) = run(&["restart", "--rolling"]);
    assert_eq!(code, 0, "restart --rolling over SSH: {out}\n{err}");
    assert!(out.contains("2 switchover(s)") && out.contains("primary db1 -> db1"), "{out}");
    for a in &addrs {
        assert_eq!(NetnsLab::psql(a, 5432, "SHOW shared_buffers"), "48MB", "{a}");
    }
    assert_ne!(pid(addrs[0]), pids[0]);
    assert_eq!(NetnsLab::psql(addrs[0], 5432, "SELECT pg_is_in_recovery()"), "f");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let repl = NetnsLab::psql(
            addrs[0],
            5432,
            "SELECT string_agg(application_name || ' ' || state, ',' ORDER BY application_name) FROM pg_stat_replication",
        );
        if repl == "db2 streaming,db3 streaming" {
            break;
        }
        assert!(Instant::now() < deadline, "after restart --rolling over SSH: {repl}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, out, _) = run(&["status", "--output", "json"]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    for n in v["nodes"].as_array().unwrap() {
        assert_eq!(n["pending_restart"], serde_json::json!([]), "{n}");
    }
    let _ = run(&["destroy", "--yes"]);
}

/// With `[ha]` (agents on a real etcd): `restart` in place with the agents acting goes
/// through (pgrepl pauses them itself, under the store's operation lock) and leaves them
/// acting, db1 leading; a restart that fails says the agents were resumed, and they
/// were; paused by the operator first, a restart leaves them paused (the
/// flag put back as it was); resumed, db1's agent leads and both standbys stream from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn day2_restart_with_agents_pg15() {
    let lab = crate::auto::AutoLab::up("d2-ha", "15", None);
    let pid = |n: &str| {
        let text = std::fs::read_to_string(lab.wd.path.join(n).join("data").join("postmaster.pid")).unwrap();
        text.lines().next().unwrap().to_string()
    };
    let paused = || lab.status()["ha"]["paused"].as_bool();
    let before: Vec<String> = NODES.iter().map(|n| pid(n)).collect();
    let (code, out, err) = lab.cli(&["restart"]);
    assert_eq!(code, 0, "restart with the agents acting: {out}{err}");
    for (i, n) in NODES.iter().enumerate() {
        assert_ne!(pid(n), before[i], "{n} restarted");
    }
    assert_eq!(paused(), Some(false), "the agents act again");
    assert_eq!(lab.wait_leader(&["db1"], 3, Duration::from_secs(60)), "db1");
    assert_eq!(lab.in_recovery("db1"), Some(false));
    // A restart that fails (refused by its planner, after the pause): the error says what
    // became of the agents, and they act again.
    let (code, out, err) = lab.cli(&["restart", "db9"]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains("db9") && err.contains("the agents, paused for this operation, were resumed"), "{err}");
    assert_eq!(paused(), Some(false), "resumed after the failure");

    let (code, out, err) = lab.cli(&["pause"]);
    assert_eq!(code, 0, "{out}{err}");
    let before: Vec<String> = NODES.iter().map(|n| pid(n)).collect();
    let (code, out, err) = lab.cli(&["restart", "db2"]);
    assert_eq!(code, 0, "restart while paused: {out}{err}");
    assert_ne!(pid("db2"), before[1], "db2 restarted");
    assert_eq!((pid("db1"), pid("db3")), (before[0].clone(), before[2].clone()), "only db2");
    assert_eq!(paused(), Some(true), "paused by the operator: left paused");
    let (code, out, err) = lab.cli(&["resume"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(lab.wait_leader(&["db1"], 3, Duration::from_secs(60)), "db1");
    for n in ["db2", "db3"] {
        lab.wait_standby_of(n, "db1", Duration::from_secs(60));
    }
    lab.finish();
}
