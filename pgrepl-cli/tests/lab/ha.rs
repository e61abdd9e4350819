//! Switchover, failover and rejoin against real servers, through the library as an
//! embedding application calls it, under a steady write load from a client that connects
//! as applications do (TCP, multi-host `target_session_attrs=read-write`) and records
//! every commit it was acknowledged.
//!
//! - failover after `kill -9` of the primary's postmaster: with synchronous replication
//!   every acknowledged row is on the new primary; with asynchronous replication the rows
//!   missing are exactly covered by the reported loss (11, 15, 17, 18);
//! - switchover back and forth 10 times: no acknowledged row lost, the timeline advances
//!   by one each time, every standby streams from the new primary without a re-clone;
//! - rejoin of a killed old primary that had unreplicated writes: rewound with pg_rewind
//!   (16), or re-cloned where rewind is impossible (11); its extra rows are gone;
//! - pg_control and the end of WAL as pgrepl reads them, against the servers' own view;
//! - a switchover whose candidate cannot promote (its promotion fails, injected through a
//!   `FlakyTransport`): the executor abandons the plan, undoes its steps in reverse, and
//!   the old primary runs as the primary again, nothing lost; after a switchover, destroy
//!   and up again give the spec's primary (the record of roles goes with the cluster).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pgrepl_core::ClusterSpec;
use pgrepl_core::deploy::{Deployment, NoProgress};
use pgrepl_core::discovery::DiscoveryOptions;
use pgrepl_core::ha::{FailoverOptions, FenceOutcome, LsnSource, RejoinMethod, Repoint};
use pgrepl_core::local::{LocalDeployment, LocalOptions};
use pgrepl_core::pgcontrol::{self, Lsn, WalScanner};
use pgrepl_core::version::PgMajor;

use crate::common::*;

const NODES: [&str; 3] = ["db1", "db2", "db3"];

/// A deployed 3-node local cluster of the lab.
struct Lab {
    wd: WorkDir,
    pub(crate) port: u16,
    bin: PathBuf,
    client: PathBuf,
    d: Deployment,
}

impl Lab {
    async fn up(name: &str, major: &str, extra: &str) -> Lab {
        let (bin, client) = bins(major);
        let wd = WorkDir::new(name).with_bin(&bin);
        let port = free_ports(3);
        let spec = ClusterSpec::from_toml(&local_spec(name, major, port, &wd.str(), extra)).unwrap();
        let opts = LocalOptions {
            discovery: DiscoveryOptions { pg_bin: Some(bin.clone()), pg_client_bin: Some(client.clone()), major: None },
            work_dir: None,
        };
        let d = LocalDeployment::open(&spec, &opts).await.unwrap();
        d.up(&NoProgress).await.unwrap_or_else(|e| panic!("up {name}: {e}"));
        create_app_role(&client, &wd.path, "db1", port);
        psql(&client, &wd.path, "db1", port, "CREATE TABLE load (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())");
        Lab { wd, port, bin, client, d }
    }

    fn port_of(&self, node: &str) -> u16 {
        self.port + NODES.iter().position(|n| *n == node).unwrap() as u16
    }

    fn sql(&self, node: &str, q: &str) -> String {
        psql(&self.client, &self.wd.path, node, self.port_of(node), q)
    }

    fn data(&self, node: &str) -> PathBuf {
        self.wd.path.join(node).join("data")
    }

    /// Whether a server runs on the node's data directory (pg_ctl status).
    fn running(&self, node: &str) -> bool {
        std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("status")
            .arg("-D")
            .arg(self.data(node))
            .output()
            .unwrap()
            .status
            .success()
    }

    /// `kill -9` of the node's postmaster, found through its own data directory's
    /// postmaster.pid (first line): only that process is signalled.
    fn kill9(&self, node: &str) {
        let pidfile = std::fs::read_to_string(self.data(node).join("postmaster.pid")).unwrap();
        let pid: i32 = pidfile.lines().next().unwrap().trim().parse().unwrap();
        let st = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
        assert!(st.success());
        // The postmaster is gone once its pid no longer answers signal 0.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::path::Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Streaming standbys as the node's pg_stat_replication lists them.
    fn streaming_from(&self, node: &str) -> Vec<String> {
        let out = self.sql(node, "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming' ORDER BY 1");
        out.lines().map(str::to_string).filter(|l| !l.is_empty()).collect()
    }

    fn wait_streaming_from(&self, node: &str, expect: &[&str]) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.streaming_from(node);
            if got == expect || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn ids(&self, node: &str) -> BTreeSet<i64> {
        self.sql(node, "SELECT id FROM load").lines().filter(|l| !l.is_empty()).map(|l| l.parse().unwrap()).collect()
    }

    /// Kills the walsenders of `node` a few times in a row: a standby retries at once
    /// after its first failure, then only after wal_retrieve_retry_interval (1 s), so
    /// commits of the next moment reach no standby.
    async fn cut_replication(&self, node: &str) {
        for _ in 0..4 {
            self.sql(node, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_replication");
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    }
}

/// One acknowledged commit: its id, when, and WAL positions around it (`before`: taken in
/// the inserting statement, so before its commit record; `after`: taken right after the
/// commit returned, so at or past its end).
#[derive(Debug, Clone)]
pub(crate) struct Ack {
    pub(crate) id: i64,
    pub(crate) at: Instant,
    /// The port of the server that acknowledged it.
    pub(crate) port: u16,
    pub(crate) before: Lsn,
    pub(crate) after: Option<Lsn>,
}

/// A client writing one row per transaction, as fast as the cluster lets it, through a
/// multi-host read-write connection that it re-opens after every error.
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<Ack>>,
    /// When a write or a connection attempt failed.
    failures: Arc<std::sync::Mutex<Vec<Instant>>>,
}

impl Load {
    pub(crate) fn start(ports: Vec<u16>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let failed = failures.clone();
        let task = tokio::spawn(async move {
            let mut cfg = tokio_postgres::Config::new();
            for p in &ports {
                cfg.host("127.0.0.1").port(*p);
            }
            cfg.user("pgrepl_test")
                .password(APP_PASSWORD)
                .dbname("postgres")
                .connect_timeout(Duration::from_secs(2))
                .target_session_attrs(tokio_postgres::config::TargetSessionAttrs::ReadWrite);
            let mut acks = Vec::new();
            let mut client: Option<tokio_postgres::Client> = None;
            let mut id: i64 = 0;
            while !flag.load(Ordering::Relaxed) {
                let Some(c) = client.as_ref() else {
                    match cfg.connect(tokio_postgres::NoTls).await {
                        Ok((c, conn)) => {
                            tokio::spawn(async move {
                                let _ = conn.await;
                            });
                            client = Some(c);
                        }
                        Err(_) => {
                            failed.lock().unwrap().push(Instant::now());
                            tokio::time::sleep(Duration::from_millis(5)).await
                        }
                    }
                    continue;
                };
                id += 1;
                let ins = tokio::time::timeout(
                    Duration::from_secs(20),
                    c.query_one("INSERT INTO load (id) VALUES ($1) RETURNING pg_current_wal_lsn()::text, inet_server_port()", &[&id]),
                )
                .await;
                match ins {
                    Ok(Ok(row)) => {
                        let at = Instant::now();
                        let before: Lsn = row.get::<_, String>(0).parse().unwrap();
                        let port = row.get::<_, i32>(1) as u16;
                        let after =
                            match tokio::time::timeout(Duration::from_secs(5), c.query_one("SELECT pg_current_wal_lsn()::text", &[])).await
                            {
                                Ok(Ok(r)) => r.get::<_, String>(0).parse().ok(),
                                _ => {
                                    client = None;
                                    None
                                }
                            };
                        acks.push(Ack { id, at, port, before, after });
                    }
                    _ => {
                        failed.lock().unwrap().push(Instant::now());
                        client = None;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
            }
            acks
        });
        Load { stop, task, failures }
    }

    /// The failed writes and connection attempts so far.
    pub(crate) fn failures(&self) -> Vec<Instant> {
        self.failures.lock().unwrap().clone()
    }

    pub(crate) async fn finish(self) -> Vec<Ack> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// The longest time without an acknowledged commit that overlaps `[from, to]`.
pub(crate) fn longest_gap(acks: &[Ack], from: Instant, to: Instant) -> Duration {
    let mut gap = Duration::ZERO;
    for w in acks.windows(2) {
        if w[1].at >= from && w[0].at <= to {
            gap = gap.max(w[1].at - w[0].at);
        }
    }
    gap
}

async fn wait_acks(load_started: Instant, min: Duration) {
    let left = min.saturating_sub(load_started.elapsed());
    tokio::time::sleep(left).await;
}

// ---------------------------------------------------------------------------------------
// Failover

/// kill -9 of the primary under load, then failover. `sync`: the spec's replication.sync.
async fn failover_under_load(major: &str, sync: Option<&str>) {
    let name = format!("ha-fo-{major}-{}", if sync.is_some() { "sync" } else { "async" });
    let extra = sync.map(|s| format!("[replication]\nsync = {s}\n")).unwrap_or_default();
    let lab = Lab::up(&name, major, &extra).await;
    let ports: Vec<u16> = NODES.iter().map(|n| lab.port_of(n)).collect();

    // While the primary runs and accepts writes, a failover is refused.
    let e = lab.d.failover(FailoverOptions::default(), &NoProgress).await.unwrap_err();
    assert!(e.is_refusal(), "{e}");
    assert!(e.to_string().contains("db1 accepts writes"), "{e}");

    let started = Instant::now();
    let load = Load::start(ports.clone());
    wait_acks(started, Duration::from_millis(1500)).await;
    // Cut replication, go on writing a moment, then kill the primary: with asynchronous
    // replication the commits of that moment exist on the old primary only.
    lab.cut_replication("db1").await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    lab.kill9("db1");
    let t_fail = Instant::now();
    let report = lab.d.failover(FailoverOptions::default(), &NoProgress).await.unwrap_or_else(|e| panic!("failover {name}: {e}"));
    let t_done = Instant::now();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let acks = load.finish().await;
    eprintln!("{report}");

    let new = report.to.clone();
    assert!(new == "db2" || new == "db3", "{report}");
    assert!(report.problems.is_empty(), "{report}");
    let other = if new == "db2" { "db3" } else { "db2" };
    assert_eq!(report.fencing().len(), 1, "{report}");
    assert_eq!(report.fencing()[0].node, "db1");
    assert_eq!(report.fencing()[0].outcome, FenceOutcome::NotRunning);
    assert!(report.fencing()[0].demoted, "standby settings written into db1: {report}");
    let signal = if PgMajor::V11 >= major.parse().unwrap() { "recovery.conf" } else { "standby.signal" };
    assert!(lab.data("db1").join(signal).exists(), "db1 cannot start writable");
    assert_eq!(report.new_timeline, report.old_timeline.map(|t| t + 1), "{report}");
    assert_eq!(lab.wait_streaming_from(&new, &[other]), vec![other.to_string()], "the other standby follows {new}");
    let topo = lab.d.topology().await.unwrap();
    assert_eq!(topo.primary.as_deref(), Some(new.as_str()));
    assert_eq!(topo.fenced, vec!["db1".to_string()]);

    // Availability: the first acknowledged write after the command started.
    let first_after = acks.iter().find(|a| a.at > t_fail).map(|a| a.at - t_fail);
    eprintln!(
        "{name}: failover returned after {:.3}s; writes accepted {:.3}s after the command started (report: {:.3}s, promotion {:.3}s); first acknowledged write after {:?}",
        (t_done - t_fail).as_secs_f64(),
        report.timings.write_available_seconds,
        report.timings.write_available_seconds,
        report.timings.promote_seconds,
        first_after
    );
    assert!(first_after.is_some(), "writes resumed on {new}");

    // Loss accounting.
    let loss = report.loss().expect("a failover accounts for loss");
    assert!(loss.exact, "the old primary's WAL was read: {loss:?}");
    assert_eq!(loss.source, Some(LsnSource::OldPrimaryWal));
    let start = loss.new_timeline_start.expect("switch point known");
    let last = loss.last_primary_lsn.unwrap();
    let present = lab.ids(&new);
    let missing: Vec<&Ack> = acks.iter().filter(|a| !present.contains(&a.id)).collect();
    eprintln!(
        "{name}: {} acknowledged, {} missing on {new}; WAL lost {:?} bytes ({} .. {}), acknowledged loss {:?}",
        acks.len(),
        missing.len(),
        loss.wal_lost_bytes,
        start,
        last,
        loss.acknowledged_lost_bytes
    );
    let old_port = lab.port_of("db1");
    assert!(acks.iter().any(|a| a.port != old_port), "writes went on on the new primary");
    for a in &acks {
        if a.port != old_port {
            assert!(present.contains(&a.id), "row {} acknowledged by the new primary is missing", a.id);
            continue;
        }
        // Every commit on the old primary that ended before the new timeline began is there.
        if a.after.is_some_and(|l| l <= start) {
            assert!(present.contains(&a.id), "acknowledged row {} (committed before {start}) is missing", a.id);
        }
        // The old primary's reported end of WAL covers every commit it acknowledged.
        assert!(a.before < last, "row {} at {} is past the reported end of the old primary's WAL {last}", a.id, a.before);
    }
    if sync.is_some() {
        assert!(loss.sync_held, "{loss:?}");
        assert_eq!(loss.acknowledged_lost_bytes, Some(0));
        assert!(missing.is_empty(), "synchronous replication: every acknowledged row is on {new}, missing {:?}", missing);
    } else {
        assert!(!loss.sync_held);
        let lost = loss.wal_lost_bytes.unwrap();
        assert_eq!(loss.acknowledged_lost_bytes, Some(lost));
        // What is missing is what the report says was lost: commits of the old primary
        // after the fork, inside the reported range.
        for a in &missing {
            assert_eq!(a.port, old_port);
            assert!(a.after.is_none_or(|l| l > start), "row {} missing although committed before the fork", a.id);
            assert!(
                a.before >= Lsn(start.0.saturating_sub(8192)) && a.before < last,
                "row {} at {} outside the lost range",
                a.id,
                a.before
            );
        }
        if !missing.is_empty() {
            assert!(lost > 0, "{} rows missing but no loss reported", missing.len());
        }
        assert!(
            !missing.is_empty(),
            "replication was cut 300 ms before the kill: acknowledged commits of that moment must be missing (the test's premise)"
        );
    }

    // A switchover to the fenced node is refused until it rejoins.
    let e = lab.d.switchover("db1", &NoProgress).await.unwrap_err();
    assert!(e.is_refusal() && e.to_string().contains("fenced"), "{e}");

    // `up` leaves the fenced node alone: it is not started, and never as a primary.
    lab.d.up(&NoProgress).await.unwrap();
    assert!(!lab.running("db1"), "up did not start the fenced db1");
    let marks = lab.d.ha_marks(&lab.d.status().await).await.unwrap();
    assert!(marks.iter().any(|m| m.node == "db1" && m.fenced), "{marks:?}");
    let _ = lab.d.destroy(&NoProgress).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_failover_sync_pg11() {
    failover_under_load("11", Some("{ mode = \"first\", count = 1 }")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_failover_async_pg11() {
    failover_under_load("11", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_failover_sync_pg15() {
    failover_under_load("15", Some("{ mode = \"any\", count = 1 }")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_failover_async_pg15() {
    failover_under_load("15", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_failover_sync_pg17() {
    failover_under_load("17", Some("{ mode = \"first\", count = 1, commit = \"remote_apply\" }")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_failover_async_pg18() {
    failover_under_load("18", None).await;
}

// ---------------------------------------------------------------------------------------
// Switchover

async fn switchover_back_and_forth(major: &str, extra: &str, rounds: usize) {
    let name = format!("ha-so-{major}");
    let lab = Lab::up(&name, major, extra).await;
    let ports: Vec<u16> = NODES.iter().map(|n| lab.port_of(n)).collect();
    // Markers inside every data directory: a re-clone or rewind would remove them.
    for n in NODES {
        std::fs::write(lab.data(n).join("pgrepl_test_marker"), n).unwrap();
    }
    let sysid = |n: &str| lab.sql(n, "SELECT system_identifier FROM pg_control_system()");
    let id0 = sysid("db1");

    let started = Instant::now();
    let load = Load::start(ports.clone());
    wait_acks(started, Duration::from_millis(800)).await;
    let mut windows = Vec::new();
    let mut reports = Vec::new();
    let mut primary = "db1";
    for i in 0..rounds {
        let to = if i % 2 == 0 { "db2" } else { "db1" };
        let t = Instant::now();
        let r = lab.d.switchover(to, &NoProgress).await.unwrap_or_else(|e| panic!("switchover {i} to {to}: {e}"));
        windows.push((t, Instant::now()));
        assert!(r.changed, "{r}");
        assert_eq!((r.from.as_str(), r.to.as_str()), (primary, to), "{r}");
        assert_eq!(r.new_timeline, r.old_timeline.map(|t| t + 1), "timeline advances by one: {r}");
        assert_eq!(r.new_timeline, Some(2 + i as u32), "{r}");
        assert!(r.problems.is_empty(), "{r}");
        assert!(r.standbys.iter().all(|s| s.streaming), "{r}");
        assert!(r.standbys.iter().any(|s| s.node == primary && s.method == Repoint::Started), "{r}");
        assert!(!r.actions.iter().any(|a| a.what.contains("clone") || a.what.contains("rewind")), "{r}");
        let others: Vec<&str> = NODES.iter().copied().filter(|n| *n != to).collect();
        assert_eq!(lab.wait_streaming_from(to, &others), others, "every standby streams from {to}");
        reports.push(r);
        primary = to;
        // Let the load run on the new primary before the next switch.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Once more to the same node: a no-op.
    let again = lab.d.switchover(primary, &NoProgress).await.unwrap();
    assert!(!again.changed, "{again}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let acks = load.finish().await;

    let present = lab.ids(primary);
    let missing: Vec<i64> = acks.iter().filter(|a| !present.contains(&a.id)).map(|a| a.id).collect();
    assert!(missing.is_empty(), "acknowledged rows lost across switchovers: {missing:?}");
    for n in NODES {
        assert!(lab.data(n).join("pgrepl_test_marker").exists(), "{n} was not re-cloned");
        assert_eq!(sysid(n), id0);
    }
    let mut gaps = Vec::new();
    for (i, (r, (from, to))) in reports.iter().zip(&windows).enumerate() {
        let g = longest_gap(&acks, *from, *to);
        gaps.push(g.as_secs_f64());
        eprintln!(
            "{name} #{i} {} -> {}: client write gap {:.3}s; reported unavailable {:.3}s (stop {:.3}, catch-up {:.3}, promote {:.3}); total {:.3}s",
            r.from,
            r.to,
            g.as_secs_f64(),
            r.timings.write_unavailable_seconds,
            r.timings.stop_seconds,
            r.timings.catchup_seconds,
            r.timings.promote_seconds,
            r.timings.total_seconds
        );
    }
    gaps.sort_by(f64::total_cmp);
    eprintln!(
        "{name}: {} acknowledged writes; write gap median {:.3}s, max {:.3}s",
        acks.len(),
        gaps[gaps.len() / 2],
        gaps[gaps.len() - 1]
    );
    eprintln!("{}", reports.last().unwrap());
    assert!(gaps[gaps.len() - 1] < 15.0, "a switchover left writes unavailable for {:.1}s", gaps[gaps.len() - 1]);
    let _ = lab.d.destroy(&NoProgress).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_switchover_10x_sync_pg15() {
    switchover_back_and_forth("15", "[replication]\nsync = { mode = \"first\", count = 1 }\n", 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_switchover_10x_async_pg11() {
    switchover_back_and_forth("11", "", 10).await;
}

// ---------------------------------------------------------------------------------------
// Rejoin

/// A killed old primary with writes nobody else has: failover, then rejoin.
async fn rejoin_after_divergence(major: &str, expect: RejoinMethod) {
    let name = format!("ha-rj-{major}");
    let lab = Lab::up(&name, major, "").await;
    lab.sql("db1", "CREATE TABLE extra (id int PRIMARY KEY)");
    lab.sql("db1", "INSERT INTO load SELECT g FROM generate_series(1, 1000) g");
    assert_eq!(lab.wait_streaming_from("db1", &["db2", "db3"]), vec!["db2", "db3"]);
    // Wait until both standbys have replayed everything so far.
    let target = lab.sql("db1", "SELECT pg_current_wal_lsn()");
    for n in ["db2", "db3"] {
        let deadline = Instant::now() + Duration::from_secs(20);
        while lab.sql(n, &format!("SELECT pg_last_wal_replay_lsn() >= '{target}'")) != "t" && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    lab.cut_replication("db1").await;
    lab.sql("db1", "INSERT INTO extra SELECT g FROM generate_series(1, 500) g");
    lab.kill9("db1");
    let f = lab.d.failover(FailoverOptions::default(), &NoProgress).await.unwrap();
    eprintln!("{f}");
    let new = f.to.clone();
    let extra_on_new: i64 = lab.sql(&new, "SELECT count(*) FROM extra").parse().unwrap();
    assert!(extra_on_new < 500, "the extra rows did not all reach {new}");
    assert!(f.loss().unwrap().wal_lost_bytes.unwrap() > 0, "{f}");

    let r = lab.d.rejoin("db1", &NoProgress).await.unwrap_or_else(|e| panic!("rejoin {name}: {e}"));
    eprintln!("{r}");
    assert_eq!(r.rejoin.as_ref().unwrap().method, expect, "{r}");
    assert!(r.rejoin.as_ref().unwrap().streaming, "{r}");
    assert!(r.changed);
    if expect == RejoinMethod::Rewound {
        assert!(matches!(r.rejoin.as_ref().unwrap().divergence, Some(pgrepl_core::ha::Divergence::Diverged { .. })), "{r}");
    }
    let others: Vec<&str> = NODES.iter().copied().filter(|n| *n != new).collect();
    assert_eq!(lab.wait_streaming_from(&new, &others), others, "db1 streams from {new}");
    assert_eq!(lab.sql("db1", "SELECT pg_is_in_recovery()"), "t", "db1 is a standby");
    // Its extra rows are gone: it has exactly what the new primary has.
    lab.sql(&new, "INSERT INTO extra VALUES (100000)");
    let want = lab.sql(&new, "SELECT count(*) || '/' || coalesce(sum(id), 0) FROM extra");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = String::new();
    while Instant::now() < deadline {
        got = lab.sql("db1", "SELECT count(*) || '/' || coalesce(sum(id), 0) FROM extra");
        if got == want {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(got, want, "db1 has the new primary's rows and none of its own");
    // Runs on its own port with its own settings (pg_rewind copied the source's).
    assert_eq!(lab.sql("db1", "SHOW port"), lab.port_of("db1").to_string());
    assert!(lab.d.topology().await.unwrap().fenced.is_empty());
    // Again: nothing to do.
    let again = lab.d.rejoin("db1", &NoProgress).await.unwrap();
    assert_eq!(again.rejoin.as_ref().unwrap().method, RejoinMethod::AlreadyStreaming, "{again}");
    assert!(!again.changed);
    // A standby stopped cleanly comes back as it is (its WAL is a prefix of the history).
    let third = if new == "db2" { "db3" } else { "db2" };
    let stop = std::process::Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(lab.bin.join("pg_ctl"))
        .arg("-D")
        .arg(lab.data(third))
        .args(["-m", "fast", "-w", "stop"])
        .output()
        .unwrap();
    assert!(stop.status.success());
    let r3 = lab.d.rejoin(third, &NoProgress).await.unwrap();
    assert_eq!(r3.rejoin.as_ref().unwrap().method, RejoinMethod::Restarted, "{r3}");
    assert!(r3.rejoin.as_ref().unwrap().streaming && lab.running(third), "{r3}");
    // A switchover back to db1 works from there (it follows the new primary's history).
    let s = lab.d.switchover("db1", &NoProgress).await.unwrap();
    assert!(s.problems.is_empty(), "{s}");
    let _ = lab.d.destroy(&NoProgress).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_rejoin_rewinds_pg16() {
    rejoin_after_divergence("16", RejoinMethod::Rewound).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_rejoin_reclones_without_rewind_pg11() {
    rejoin_after_divergence("11", RejoinMethod::Recloned).await;
}

// ---------------------------------------------------------------------------------------
// On-disk formats

fn read_control(data: &Path, major: PgMajor) -> pgcontrol::ControlFile {
    let b = std::fs::read(data.join("global/pg_control")).unwrap();
    pgcontrol::parse_control(&b, &major.caps().pg_control).unwrap()
}

/// The end of WAL from the files, as pgrepl's scanner reads it.
fn scan_end(data: &Path, major: PgMajor, from: Lsn) -> Lsn {
    let wal = data.join(major.caps().wal_dir);
    let seg = 16 * 1024 * 1024;
    let mut s = WalScanner::new(from, seg);
    loop {
        let segno = s.next_segment();
        let file = std::fs::read_dir(&wal)
            .unwrap()
            .flatten()
            .filter_map(|e| pgcontrol::parse_wal_file_name(&e.file_name().to_string_lossy(), seg))
            .filter(|(_, n)| *n == segno)
            .map(|(t, _)| t)
            .max();
        let Some(tli) = file else { return s.finish().unwrap().end };
        let data = std::fs::read(wal.join(pgcontrol::wal_file_name(tli, segno, seg))).unwrap();
        if !s.feed(segno, &data) {
            return s.end().unwrap().end;
        }
    }
}

/// pg_waldump's view of the end of WAL: the end of the last record it prints.
fn waldump_end(bin: &Path, data: &Path, from: Lsn) -> Option<Lsn> {
    let tool = bin.join("pg_waldump");
    if !tool.exists() {
        return None;
    }
    let o = std::process::Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(&tool)
        .arg("-p")
        .arg(data.join("pg_wal"))
        .args(["-s", &from.to_string()])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let mut end = None;
    for line in out.lines() {
        let (Some(l), Some(t)) = (line.split("lsn: ").nth(1), line.split("len (rec/tot):").nth(1)) else { continue };
        let lsn: Lsn = l.split(',').next().unwrap().trim().parse().unwrap();
        let tot: u64 = t.split(',').next().unwrap().split('/').nth(1).unwrap().trim().parse().unwrap();
        end = Some(record_end(lsn.0, tot));
    }
    end
}

/// Where a record of `tot` bytes starting at `start` ends, as PostgreSQL counts it:
/// page headers crossed (24 bytes, 40 at a segment start) included, MAXALIGN'd.
fn record_end(start: u64, tot: u64) -> Lsn {
    let (blk, seg) = (8192u64, 16 * 1024 * 1024u64);
    let (mut pos, mut left) = (start, tot);
    while left > 0 {
        let take = left.min((pos / blk + 1) * blk - pos);
        pos += take;
        left -= take;
        if left > 0 {
            pos += if pos % seg == 0 { 40 } else { 24 };
        }
    }
    Lsn((pos + 7) & !7)
}

async fn formats(major: &str) {
    let m: PgMajor = major.parse().unwrap();
    let (bin, client) = bins(major);
    let wd = WorkDir::new(&format!("ha-fmt-{major}")).with_bin(&bin);
    let port = free_ports(1);
    let spec = ClusterSpec::from_toml(&format!(
        "name = \"fmt\"\npostgres = \"{major}\"\n[provider]\nkind = \"local\"\nbase_port = {port}\nwork_dir = \"{}\"\n[[nodes]]\nname = \"db1\"\nrole = \"primary\"\n",
        wd.str()
    ))
    .unwrap();
    let opts = LocalOptions {
        discovery: DiscoveryOptions { pg_bin: Some(bin.clone()), pg_client_bin: Some(client.clone()), major: None },
        work_dir: None,
    };
    let d = LocalDeployment::open(&spec, &opts).await.unwrap();
    d.up(&NoProgress).await.unwrap();
    let data = wd.path.join("db1/data");
    let q = |s: &str| psql(&client, &wd.path, "db1", port, s);
    q("CREATE TABLE t AS SELECT g, repeat('x', 300) AS pad FROM generate_series(1, 20000) g");
    q("CHECKPOINT");
    let sql_cp = q("SELECT checkpoint_lsn || ' ' || redo_lsn || ' ' || timeline_id FROM pg_control_checkpoint()");
    let version = q("SELECT pg_control_version FROM pg_control_system()");
    let c = read_control(&data, m);
    assert_eq!(format!("{} {} {}", c.checkpoint, c.redo, c.timeline), sql_cp, "{major}: pg_control as the server reports it");
    assert_eq!(c.pg_control_version.to_string(), version, "{major}: the version table's pg_control_version");
    assert!(!c.unexpected_version);
    assert_eq!(c.state, pgcontrol::DbState::InProduction);
    // More WAL, some of it crossing segments, then a crash (immediate stop: no checkpoint).
    q("INSERT INTO t SELECT g, repeat('y', 900) FROM generate_series(1, 30000) g");
    let flushed: Lsn = q("SELECT pg_current_wal_flush_lsn()").parse().unwrap();
    let st = std::process::Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(bin.join("pg_ctl"))
        .arg("-D")
        .arg(&data)
        .args(["-m", "immediate", "-w", "stop"])
        .output()
        .unwrap();
    assert!(st.status.success());
    let c = read_control(&data, m);
    let end = scan_end(&data, m, c.checkpoint);
    assert!(end >= flushed && end.0 - flushed.0 < 64 * 1024, "{major}: end {end} vs flushed {flushed}");
    if let Some(w) = waldump_end(&bin, &data, c.checkpoint) {
        assert_eq!(end, w, "{major}: pgrepl's end of WAL equals pg_waldump's");
    }
    // Clean shutdown: the shutdown checkpoint is the last record.
    assert!(
        std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .args(["-w", "-l"])
            .arg(wd.path.join("db1/log/postgresql.log"))
            .arg("start")
            .env("LD_LIBRARY_PATH", bin.parent().unwrap().join("lib"))
            .output()
            .unwrap()
            .status
            .success()
    );
    let _ = d.down(&NoProgress).await.unwrap();
    let c = read_control(&data, m);
    assert_eq!(c.state, pgcontrol::DbState::ShutDown);
    let end = scan_end(&data, m, c.checkpoint);
    assert!(end > c.checkpoint && end.0 - c.checkpoint.0 < 512, "{major}: the shutdown checkpoint is last: {} {end}", c.checkpoint);
    if let Some(w) = waldump_end(&bin, &data, c.checkpoint) {
        assert_eq!(end, w);
    }
    eprintln!("{major}: pg_control {} (TL {}), end of WAL {end}", c.checkpoint, c.timeline);
    let _ = d.destroy(&NoProgress).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_pgcontrol_and_wal_end_match_the_server() {
    for major in lab_majors().into_iter().filter(|m| m.caps().wal_end_scan) {
        formats(&major.to_string()).await;
    }
}

// ---------------------------------------------------------------------------------------
// Over SSH: an old primary that runs but cannot be reached

/// Freezes or thaws a lab host's sshd listener (its pid from the lab's own pid file):
/// frozen, new SSH connections to that host time out while everything else on it (its
/// PostgreSQL, its sessions) runs on.
#[cfg(feature = "ssh")]
fn sshd_signal(letter: &str, signal: &str) {
    let pid = std::fs::read_to_string(NetnsLab::host_dir(letter).join("sshd.pid")).unwrap();
    let st = std::process::Command::new("kill").args([signal, pid.trim()]).status().unwrap();
    assert!(st.success(), "kill {signal} sshd of pgl-{letter}");
}

/// Failover while the old primary still runs but the tool cannot reach its host (SSH
/// frozen; PostgreSQL still streaming to the standbys): refused, with --force too (it
/// cannot be fenced). Reachable again, it accepts writes: refused without --force; with
/// --force it is stopped first. Never two writable nodes. Then it rejoins over SSH.
#[cfg(feature = "ssh")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_failover_with_an_unreachable_live_primary_over_ssh() {
    let _lab = NetnsLab::up();
    let wd = WorkDir::new("ha-ssh");
    let spec = ClusterSpec::from_toml(&ssh_spec("hassh", "15", &NetnsLab::known_hosts(), "strict", "")).unwrap();
    let opts = pgrepl_ssh::SshOptions { state_dir: Some(wd.path.join("secrets")), major: None };
    let d = pgrepl_ssh::open(&spec, &opts).await.unwrap();
    d.up(&NoProgress).await.unwrap_or_else(|e| panic!("up over SSH: {e}"));
    let writable = || -> Vec<&str> {
        LAB_HOSTS
            .iter()
            .filter(|(_, addr, _)| {
                let (code, out) =
                    NetnsLab::ssh(addr, "runuser -u postgres -- psql -X -A -t -p 5432 -d postgres -c 'SELECT pg_is_in_recovery()'");
                code == 0 && out == "f"
            })
            .map(|(n, _, _)| *n)
            .collect()
    };

    // A new invocation of the tool (fresh SSH sessions) cannot reach db1.
    sshd_signal("a", "-STOP");
    let cut_off = pgrepl_ssh::open(&spec, &opts).await;
    let (refused, forced) = match &cut_off {
        Ok(d) => (
            d.failover(FailoverOptions::default(), &NoProgress).await,
            d.failover(FailoverOptions { to: None, force: true }, &NoProgress).await,
        ),
        Err(e) => panic!("open with db1 unreachable: {e}"),
    };
    sshd_signal("a", "-CONT");
    drop(cut_off);
    for (what, r) in [("without --force", refused), ("with --force", forced)] {
        let e = r.expect_err(what);
        assert!(e.is_refusal(), "{what}: {e}");
        assert!(e.to_string().contains("looks alive"), "{what}: {e}");
    }
    assert_eq!(writable(), vec!["db1"], "nothing was promoted");
    assert_eq!(
        NetnsLab::psql("10.213.7.12", 5432, "SELECT status || ' ' || sender_host FROM pg_stat_wal_receiver"),
        "streaming 10.213.7.11"
    );

    // Reachable again and writable: a failover needs --force, and then stops it first.
    let d = pgrepl_ssh::open(&spec, &opts).await.unwrap();
    let e = d.failover(FailoverOptions::default(), &NoProgress).await.unwrap_err();
    assert!(e.to_string().contains("db1 accepts writes"), "{e}");
    let f = d.failover(FailoverOptions { to: None, force: true }, &NoProgress).await.unwrap();
    eprintln!("{f}");
    assert_eq!(f.fencing()[0].outcome, FenceOutcome::Stopped, "{f}");
    assert!(f.fencing()[0].demoted, "{f}");
    assert_eq!(writable(), vec![f.to.as_str()], "exactly one writable node");
    let (_, signal) = NetnsLab::ssh("10.213.7.11", "test -e /var/lib/postgresql/15/main/standby.signal && echo yes");
    assert_eq!(signal, "yes");
    assert!(f.problems.is_empty(), "{f}");

    // Back as a standby over SSH.
    let r = d.rejoin("db1", &NoProgress).await.unwrap_or_else(|e| panic!("rejoin over SSH: {e}"));
    eprintln!("{r}");
    assert!(r.rejoin.as_ref().unwrap().streaming, "{r}");
    assert_eq!(writable(), vec![f.to.as_str()]);

    // An operator error: db1 started by hand as a primary again (on the timeline it shares
    // with the primary) and written to. Status marks it; rejoin stops it and, as pg_rewind
    // cannot see a divergence on a shared timeline, clones it afresh: its writes are gone.
    let (code, out) = NetnsLab::ssh(
        "10.213.7.11",
        "pg_ctlcluster 15 main stop && rm /var/lib/postgresql/15/main/standby.signal && pg_ctlcluster 15 main start && \
         runuser -u postgres -- psql -X -q -p 5432 -d postgres -c 'CREATE TABLE split_brain AS SELECT g FROM generate_series(1, 1000) g'",
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(writable().len(), 2, "the test made a second primary");
    let marks = d.ha_marks(&d.status().await).await.unwrap();
    assert!(marks.iter().any(|m| m.node == "db1" && m.diverged), "{marks:?}");
    let r = d.rejoin("db1", &NoProgress).await.unwrap_or_else(|e| panic!("rejoin of a split-brain db1 over SSH: {e}"));
    eprintln!("{r}");
    assert_eq!(r.rejoin.as_ref().unwrap().method, RejoinMethod::Recloned, "{r}");
    assert_eq!(r.rejoin.as_ref().unwrap().divergence, Some(pgrepl_core::ha::Divergence::Conflicting), "{r}");
    assert!(r.rejoin.as_ref().unwrap().streaming, "{r}");
    assert_eq!(writable(), vec![f.to.as_str()], "one writable node again");
    let (_, gone) = NetnsLab::ssh(
        "10.213.7.11",
        "runuser -u postgres -- psql -X -A -t -p 5432 -d postgres -c \"SELECT to_regclass('split_brain') IS NULL\"",
    );
    assert_eq!(gone, "t", "db1's own writes are gone");

    // A crash of the primary right after writes its standbys did not get (timeline 2), a
    // failover (timeline 3), and its rejoin with pg_rewind over SSH (Debian layout: its
    // configuration in /etc, a clean shutdown in recovery through pg_ctlcluster first).
    let p = f.to.clone();
    let paddr = LAB_HOSTS.iter().find(|(n, _, _)| *n == p).unwrap().1;
    let cut = "for i in 1 2 3 4; do runuser -u postgres -- psql -X -q -p 5432 -d postgres -c 'SELECT pg_terminate_backend(pid) FROM pg_stat_replication' >/dev/null; sleep 0.04; done";
    let (code, out) = NetnsLab::ssh(
        paddr,
        &format!(
            "{cut}; runuser -u postgres -- psql -X -q -p 5432 -d postgres -c 'CREATE TABLE lost_on_{p} AS SELECT g FROM generate_series(1, 5000) g' && pg_ctlcluster 15 main stop -m immediate"
        ),
    );
    assert_eq!(code, 0, "{out}");
    let f3 = d.failover(FailoverOptions::default(), &NoProgress).await.unwrap_or_else(|e| panic!("failover over SSH: {e}"));
    eprintln!("{f3}");
    assert!(f3.loss().unwrap().exact && f3.loss().unwrap().wal_lost_bytes.unwrap() > 0, "{f3}");
    let r = d.rejoin(&p, &NoProgress).await.unwrap_or_else(|e| panic!("rejoin with pg_rewind over SSH: {e}"));
    eprintln!("{r}");
    assert_eq!(r.rejoin.as_ref().unwrap().method, RejoinMethod::Rewound, "{r}");
    assert!(r.rejoin.as_ref().unwrap().streaming, "{r}");
    assert_eq!(writable(), vec![f3.to.as_str()]);
    let (_, gone) = NetnsLab::ssh(
        paddr,
        &format!("runuser -u postgres -- psql -X -A -t -p 5432 -d postgres -c \"SELECT to_regclass('lost_on_{p}') IS NULL\""),
    );
    assert_eq!(gone, "t", "{p}'s unreplicated writes are gone");
    let _ = d.destroy(&NoProgress).await;
}

/// Regression: right after kill -9 the postmaster is a zombie until its parent reaps it,
/// and `pg_ctl status` (and PostgreSQL's own lock-file check) take a zombie for a live
/// server. Failover was refused, and a restart failed, until the reap. Now failover
/// proceeds at once and rejoin starts the node even if the zombie is still there.
#[test]
fn ha_failover_and_rejoin_right_after_kill9_pg15() {
    let (bin, client) = bins("15");
    let wd = WorkDir::new("ha-zombie").with_bin(&bin);
    let port = free_ports(3);
    let spec = wd.path.join("pgrepl.toml");
    std::fs::write(&spec, local_spec("zombie", "15", port, &wd.str(), "")).unwrap();
    let base = ["-f", spec.to_str().unwrap(), "--pg-bin", bin.to_str().unwrap(), "--pg-client-bin", client.to_str().unwrap()];
    assert_eq!(pgrepl_ok(&[&["up"][..], &base[..]].concat()).0, 0);
    let pid = std::fs::read_to_string(wd.path.join("db1/data/postmaster.pid")).unwrap().lines().next().unwrap().trim().to_string();
    assert!(std::process::Command::new("kill").args(["-KILL", &pid]).status().unwrap().success());
    let (code, out, err) = pgrepl_ok(&[&["failover"][..], &base[..]].concat());
    assert_eq!(code, 0, "failover right after kill -9: {out}{err}");
    assert!(out.contains("failover db1 -> db2"), "{out}");
    let (code, out, err) = pgrepl_ok(&[&["rejoin", "db1"][..], &base[..]].concat());
    assert_eq!(code, 0, "rejoin: {out}{err}");
    let (code, out, _) = pgrepl_ok(&[&["status"][..], &base[..]].concat());
    assert_eq!(code, 0, "{out}");
    let _ = pgrepl_ok(&[&["destroy", "--yes"][..], &base[..]].concat());
}

/// Hole 6a of "HA as plans": synchronous `FIRST 1 (db2, db3)`; db3 falls behind (stopped
/// while db1 commits rows that db2 confirms), then db1 and db2 die and db3 comes back as a
/// standby. `pgrepl failover` must refuse (exit 3), naming db2 as the standby that may hold
/// acknowledged commits; with --force it promotes db3 and the report says the loss.
#[test]
fn ha_sync_failover_refuses_past_acknowledged_commits_pg15() {
    let (bin, client) = bins("15");
    let wd = WorkDir::new("ha-sync-6a").with_bin(&bin);
    let port = free_ports(3);
    let spec = wd.path.join("pgrepl.toml");
    std::fs::write(&spec, local_spec("sync6a", "15", port, &wd.str(), "[replication]\nsync = { mode = \"first\", count = 1 }")).unwrap();
    let base = ["-f", spec.to_str().unwrap(), "--pg-bin", bin.to_str().unwrap(), "--pg-client-bin", client.to_str().unwrap()];
    let (code, out, err) = pgrepl_ok(&[&["up"][..], &base[..]].concat());
    assert_eq!(code, 0, "up: {out}{err}");
    let data = |n: &str| wd.path.join(n).join("data");
    let pg_ctl = |args: &[&str], node: &str| {
        let out = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin.join("pg_ctl"))
            .args(args)
            .arg("-D")
            .arg(data(node))
            .env("LD_LIBRARY_PATH", bin.parent().unwrap().join("lib"))
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_ctl {args:?} {node}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let sql = |node: &str, q: &str| {
        psql(&client, &wd.path, node, port + ["db1", "db2", "db3"].iter().position(|n| *n == node).unwrap() as u16, q)
    };
    assert!(sql("db1", "SHOW synchronous_standby_names").contains("FIRST 1"), "the premise: FIRST 1");
    sql("db1", "CREATE TABLE acked (id int)");
    // db3 stops: db2 alone confirms what follows.
    pg_ctl(&["stop", "-m", "fast", "-w", "-t", "300"], "db3");
    sql("db1", "INSERT INTO acked SELECT g FROM generate_series(1, 200) g");
    assert_eq!(sql("db2", "SELECT count(*) FROM acked"), "200", "db2 confirmed every acknowledged row");
    for n in ["db1", "db2"] {
        let pid = std::fs::read_to_string(data(n).join("postmaster.pid")).unwrap().lines().next().unwrap().trim().to_string();
        assert!(std::process::Command::new("kill").args(["-KILL", &pid]).status().unwrap().success());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    // db3 back as a standby of the dead primary: it lacks the 200 acknowledged rows.
    // -t 300: pg_ctl's default of 60 s was once too short on a loaded CI machine.
    pg_ctl(&["start", "-w", "-t", "300", "-l", data("db3").join("restart.log").to_str().unwrap()], "db3");

    let (code, out, err) = pgrepl_ok(&[&["failover", "--dry-run"][..], &base[..]].concat());
    assert_eq!(code, 3, "a dry run is refused the same way: {out}{err}");
    let (code, out, err) = pgrepl_ok(&[&["failover"][..], &base[..]].concat());
    assert_eq!(code, 3, "refused: {out}{err}");
    assert!(err.contains("db2") && err.contains("acknowledged"), "names the standby that may hold acknowledged commits: {err}");
    assert_eq!(sql("db3", "SELECT pg_is_in_recovery()"), "t", "nothing was promoted");

    let (code, out, err) = pgrepl_ok(&[&["failover", "--force"][..], &base[..]].concat());
    assert_eq!(code, 0, "forced: {out}{err}");
    assert!(out.contains("failover db1 -> db3"), "{out}");
    assert!(out.contains("forced") && out.contains("db2"), "the report names the loss: {out}");
    assert!(!out.contains("synchronous replication held"), "{out}");
    assert_eq!(sql("db3", "SELECT pg_is_in_recovery()"), "f");
    assert_eq!(sql("db3", "SELECT count(*) FROM acked"), "0", "the test's premise: db3 lacked them");
    let _ = pgrepl_ok(&[&["destroy", "--yes"][..], &base[..]].concat());
}

// =======================================================================================
// An abandoned plan is undone

/// Reaches one node's host through a [`FlakyTransport`] that fails its promotion.
#[derive(Debug)]
struct FailPromotionOf {
    inner: Arc<dyn pgrepl_core::provider::Connector>,
    node: String,
}

#[async_trait::async_trait]
impl pgrepl_core::provider::Connector for FailPromotionOf {
    async fn connect(
        &self,
        cluster: &pgrepl_core::Cluster,
        node: &pgrepl_core::cluster::Node,
        host: &pgrepl_core::provider::Host,
    ) -> Result<pgrepl_core::provider::NodeHandle, pgrepl_core::Error> {
        use pgrepl_core::testing::{Fault, FlakyTransport, Match, When};
        let mut h = self.inner.connect(cluster, node, host).await?;
        if node.name == self.node {
            let promote = Match::when("a promotion", |c| {
                c.stdin.as_deref().is_some_and(|s| String::from_utf8_lossy(s).contains("pg_promote"))
                    || c.args.iter().any(|a| a == "promote")
            });
            let flaky = FlakyTransport::from_arc(h.transport.clone()).with(
                When::command(promote),
                Fault::fail(pgrepl_core::transport::TransportError::Other("promotion refused by the test".into())),
            );
            h.transport = Arc::new(flaky);
        }
        Ok(h)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ha_switchover_abandoned_when_the_candidate_cannot_promote_pg15() {
    let lab = Lab::up("ha-abandon", "15", "").await;
    lab.sql("db1", "INSERT INTO load (id) VALUES (1)");
    let (bin, client) = bins("15");
    let spec = ClusterSpec::from_toml(&local_spec("ha-abandon", "15", lab.port, &lab.wd.str(), "")).unwrap();
    let opts = LocalOptions { discovery: DiscoveryOptions { pg_bin: Some(bin), pg_client_bin: Some(client), major: None }, work_dir: None };
    let d =
        LocalDeployment::open(&spec, &opts).await.unwrap().wrap_connector(|inner| Arc::new(FailPromotionOf { inner, node: "db2".into() }));

    let e = d.switchover("db2", &NoProgress).await.expect_err("the promotion of db2 fails");
    let msg = e.to_string();
    assert!(msg.contains("abandoned before any promotion"), "{msg}");
    assert!(msg.contains("db1 runs as the primary, nothing changed"), "{msg}");

    // Undone in reverse: db2 started again as a standby, db1's data directory a primary's
    // again and db1 started, db3's settings put back; the record as it was.
    assert_eq!(lab.sql("db1", "SELECT pg_is_in_recovery()"), "f");
    assert_eq!(lab.sql("db2", "SELECT pg_is_in_recovery()"), "t");
    assert_eq!(lab.sql("db3", "SELECT pg_is_in_recovery()"), "t");
    assert_eq!(lab.wait_streaming_from("db1", &["db2", "db3"]), vec!["db2".to_string(), "db3".to_string()]);
    let signal = lab.data("db1").join("standby.signal");
    assert!(!signal.exists(), "db1's data directory is a primary's again");
    let topo = lab.d.topology().await.unwrap();
    assert!(topo.primary.is_none() || topo.primary.as_deref() == Some("db1"), "{topo:?}");
    assert!(topo.fenced.is_empty(), "{topo:?}");
    // Nothing lost, and writes go on.
    lab.sql("db1", "INSERT INTO load (id) VALUES (2)");
    assert_eq!(lab.sql("db1", "SELECT count(*) FROM load"), "2");
    // Without the fault the same switchover goes through.
    let r = lab.d.switchover("db2", &NoProgress).await.unwrap_or_else(|e| panic!("switchover: {e}"));
    assert!(r.problems.is_empty(), "{r}");
    assert!(r.steps.iter().all(|s| s.outcome == pgrepl_core::ha::StepOutcome::Done), "{r}");
    assert_eq!(lab.sql("db2", "SELECT count(*) FROM load"), "2");
    // Destroyed and deployed again under the same name: the spec's primary, not the one
    // the switchover left on record.
    lab.d.destroy(&NoProgress).await.unwrap_or_else(|e| panic!("destroy: {e}"));
    assert!(lab.d.topology().await.unwrap().primary.is_none(), "the record of roles went with the cluster");
    lab.d.up(&NoProgress).await.unwrap_or_else(|e| panic!("up again: {e}"));
    assert_eq!(lab.sql("db1", "SELECT pg_is_in_recovery()"), "f", "db1, the spec's primary, is the primary again");
    assert_eq!(lab.sql("db2", "SELECT pg_is_in_recovery()"), "t");
}
