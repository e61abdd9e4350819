//! Day two on `[ha]` clusters whose agents run (real etcd shared with `auto`, real
//! PostgreSQL, the agents `pgrepl up` starts), through the `pgrepl` binary:
//!
//! - `restart --rolling` under a write load that records every acknowledged commit, with
//!   the agents acting: pgrepl pauses them itself (seen in etcd while it runs), the
//!   switchovers move the leader key with the role, every node runs the new setting, the
//!   agents act again after, db1 is the primary and holds the key, nothing acknowledged is
//!   lost, never two writable nodes (probed every 50 ms), no agent stopped a writable node
//!   (their logs) and none failed over (the promotions recorded are the two switchovers);
//! - `upgrade --minor` onto a copy of the 15 build with the agents acting: paused during
//!   it, every postmaster and every agent on the copy after, the key moved db1 → db2 →
//!   db1, the agents acting again, db1 leading;
//! - `upgrade --to 16` of a 14 cluster: the agents paused during it (seen in etcd),
//!   restarted on the new binaries and resumed after; db1 leads, on 16, every row there,
//!   the standbys stream from it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::auto::{AutoLab, NODES, WritableProbe, missing_on};
use crate::common::*;
use crate::ha::Load;
use pgrepl_core::store::{ConsensusStore, Keys, StoreView};
use pgrepl_etcd::{EtcdOptions, EtcdStore};

/// Reads the cluster's keys every 100 ms while an operation runs: whether the agents
/// were seen paused, and every node the leader key named.
struct StoreWatch {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(bool, Vec<String>)>,
}

impl StoreWatch {
    fn start(lab: &AutoLab) -> StoreWatch {
        let store: Arc<dyn ConsensusStore> = Arc::new(EtcdStore::new(&EtcdOptions::new(lab.endpoints.split(','))).unwrap());
        let keys = Keys::new(&lab.cluster);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let (mut paused, mut leaders) = (false, Vec::<String>::new());
            let t = Instant::now();
            while !flag.load(Ordering::Relaxed) && t.elapsed() < Duration::from_secs(900) {
                if let Ok(snap) = store.get_prefix(keys.prefix()).await {
                    let v = StoreView::parse(&keys, &snap);
                    paused |= v.settings().paused;
                    if let Some(l) = v.leader_node() {
                        if leaders.last().map(String::as_str) != Some(l) {
                            leaders.push(l.to_string());
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (paused, leaders)
        });
        StoreWatch { stop, task }
    }

    async fn finish(self) -> (bool, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// What the agents logged that says they stopped a writable node.
fn agents_stopping_writes(lab: &AutoLab) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(lab.agents_dir()).unwrap().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        found.extend(text.lines().filter(|l| l.contains("stop writes")).map(|l| format!("{}: {l}", e.path().display())));
    }
    found
}

fn show(lab: &AutoLab, node: &str, setting: &str) -> String {
    lab.sql(node, &format!("SHOW {setting}"))
}

/// shared_buffers changed and `up` re-run with the agents acting (it holds them paused
/// while it converges the nodes, never restarts the primary, and resumes them), then
/// `restart --rolling` with the agents acting, under load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_rolling_restart_with_agents_pg16() {
    let lab = AutoLab::up("ad2-roll", "16", Some("{ mode = \"any\", count = 1 }"));
    let probe = WritableProbe::start(lab.client.clone(), lab.wd.path.clone(), lab.port);
    let load = Load::start(NODES.iter().map(|n| lab.port_of(n)).collect());
    tokio::time::sleep(Duration::from_millis(800)).await;
    let pm1 = lab.postmaster_pid("db1");
    let before = show(&lab, "db1", "shared_buffers");
    assert_ne!(before, "48MB");

    let mut spec = std::fs::read_to_string(&lab.spec).unwrap();
    spec.push_str("\n[settings]\nshared_buffers = \"48MB\"\n");
    std::fs::write(&lab.spec, spec).unwrap();
    // `up` with the agents acting: it holds them paused while it converges the nodes.
    let watch = StoreWatch::start(&lab);
    let (code, out, err) = lab.cli(&["up"]);
    let (paused_seen, _) = watch.finish().await;
    assert_eq!(code, 0, "up with the agents acting: {out}{err}");
    assert!(err.contains("held paused while up converged the nodes, then resumed"), "{err}");
    assert!(paused_seen, "the agents were paused while up ran");
    assert!(out.contains("pending restart"), "up says what waits for a restart: {out}");
    assert_eq!(lab.postmaster_pid("db1"), pm1, "up did not restart the primary");
    assert_eq!(show(&lab, "db1", "shared_buffers"), before, "the primary waits for its restart");
    assert_eq!(lab.wait_leader(&["db1"], 3, Duration::from_secs(30)), "db1");
    assert_eq!(lab.status()["ha"]["paused"].as_bool(), Some(false));
    let history_before = lab.status()["ha"]["history"].as_array().map_or(0, |h| h.len());

    // The dry run names what happens to the agents and the key.
    let (code, plan, err) = lab.cli(&["restart", "--rolling", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(plan.contains("the agents are paused while this runs") && plan.contains("moves the leader key"), "{plan}");

    let watch = StoreWatch::start(&lab);
    let (code, out, err) = lab.cli(&["restart", "--rolling", "--output", "json"]);
    let restart_done = Instant::now();
    let (paused_seen, leaders) = watch.finish().await;
    assert_eq!(code, 0, "restart --rolling with the agents acting: {out}{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(paused_seen, "the agents were paused while the restart ran");
    assert_eq!(leaders, ["db1", "db2", "db1"], "the leader key moved with the role, and back");
    assert_eq!(r["to"], "db1", "{r:#}");
    assert_eq!(r["switchovers"].as_array().map(|s| s.len()), Some(2), "{r:#}");

    // After: the agents act again; db1 writable and holding the key; a little longer than
    // the ttl, so that an agent that would still fence or fail over has done it.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let st = lab.status();
    assert_eq!(st["ha"]["paused"].as_bool(), Some(false), "agents resumed: {}", st["ha"]);
    assert_eq!(lab.wait_leader(&["db1"], 3, Duration::from_secs(30)), "db1");
    assert_eq!(lab.in_recovery("db1"), Some(false), "db1 accepts writes");
    for n in ["db2", "db3"] {
        lab.wait_standby_of(n, "db1", Duration::from_secs(60));
    }
    for n in NODES {
        assert_eq!(show(&lab, n, "shared_buffers"), "48MB", "{n}");
    }
    assert_ne!(lab.postmaster_pid("db1"), pm1, "the primary was restarted");
    // The only promotions recorded are the two switchovers: the agents did not fail over.
    let history = lab.status()["ha"]["history"].clone();
    let new: Vec<(String, String)> = history.as_array().unwrap()[history_before..]
        .iter()
        .map(|p| (p["node"].as_str().unwrap().to_string(), p["kind"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(new, [("db2".to_string(), "switchover".to_string()), ("db1".to_string(), "switchover".to_string())], "{history}");
    let stops = agents_stopping_writes(&lab);
    assert!(stops.is_empty(), "an agent stopped a writable node: {stops:#?}");

    let acks = load.finish().await;
    assert!(acks.iter().any(|a| a.at > restart_done), "writes went on after the restart");
    let missing = missing_on(&lab, "db1", &acks);
    assert!(missing.is_empty(), "{} acknowledged rows lost: {:?}", missing.len(), &missing[..missing.len().min(20)]);
    let both = probe.finish();
    assert!(both.is_empty(), "two nodes accepted writes at once: {both:?}");
    lab.finish();
}

/// `upgrade --to 16` with the agents acting: paused during it, restarted on the new
/// binaries and resumed after; db1 leads on 16.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_major_upgrade_14_to_16_pauses_and_resumes_the_agents() {
    let mut lab = AutoLab::up("ad2-upg", "14", None);
    lab.sql("db1", "INSERT INTO load (id) SELECT generate_series(1, 3000)");
    let (nbin, nclient) = bins("16");
    let history_before = lab.status()["ha"]["history"].as_array().map_or(0, |h| h.len());

    let watch = StoreWatch::start(&lab);
    let (code, out, err) = lab.cli(&[
        "upgrade",
        "--to",
        "16",
        "--yes",
        "--new-pg-bin",
        nbin.to_str().unwrap(),
        "--new-pg-client-bin",
        nclient.to_str().unwrap(),
    ]);
    let (paused_seen, leaders) = watch.finish().await;
    assert_eq!(code, 0, "upgrade with the agents acting: {out}{err}");
    assert!(paused_seen, "the agents were paused during the upgrade");
    assert_eq!(leaders, ["db1"], "the leader key stayed with db1");
    assert!(out.contains("agents: agents restarted on the new binaries") && out.contains("were resumed"), "{out}");

    // From now on the lab runs the new binaries.
    lab.bin = nbin;
    lab.client = nclient;
    assert_eq!(lab.wait_leader(&["db1"], 3, Duration::from_secs(60)), "db1");
    let st = lab.status();
    assert_eq!(st["ha"]["paused"].as_bool(), Some(false), "agents resumed: {}", st["ha"]);
    assert!(lab.sql("db1", "SHOW server_version_num").starts_with("16"), "db1 runs 16");
    assert_eq!(lab.in_recovery("db1"), Some(false));
    for n in ["db2", "db3"] {
        lab.wait_standby_of(n, "db1", Duration::from_secs(90));
        assert!(lab.sql(n, "SHOW server_version_num").starts_with("16"), "{n} runs 16");
    }
    // The agents run the new binaries and act: a row written now reaches the standbys.
    lab.sql("db1", "INSERT INTO load (id) VALUES (3001)");
    for n in NODES {
        let t = Instant::now();
        while lab.sql(n, "SELECT count(*) FROM load") != "3001" {
            assert!(t.elapsed() < Duration::from_secs(30), "{n} lacks rows");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let agents = std::fs::read_to_string(lab.agents_dir().join("db1.pid")).unwrap();
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", agents.trim())).unwrap();
    assert!(String::from_utf8_lossy(&cmdline).contains(lab.bin.to_str().unwrap()), "db1's agent runs with the new binaries");
    let history = lab.status()["ha"]["history"].as_array().map_or(0, |h| h.len());
    assert_eq!(history, history_before, "no promotion by the agents");
    let stops = agents_stopping_writes(&lab);
    assert!(stops.is_empty(), "an agent stopped a writable node: {stops:#?}");
    lab.finish();
}

/// `upgrade --minor` (rolling) onto a copy of the lab's 15 build, the agents acting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_minor_upgrade_with_agents_pg15() {
    let mut lab = AutoLab::up("ad2-minor", "15", None);
    let load = Load::start(NODES.iter().map(|n| lab.port_of(n)).collect());
    let build = std::fs::canonicalize(lab.bin.parent().unwrap()).unwrap();
    let new = lab.wd.path.join("pg15-new");
    let st = std::process::Command::new("cp").arg("-a").arg(&build).arg(&new).status().unwrap();
    assert!(st.success());
    let exe = |lab: &AutoLab, n: &str| std::fs::read_link(format!("/proc/{}/exe", lab.postmaster_pid(n))).unwrap();
    assert!(exe(&lab, "db1").starts_with(&build));
    lab.bin = new.join("bin");
    lab.client = new.join("bin");
    tokio::time::sleep(Duration::from_millis(500)).await;

    let watch = StoreWatch::start(&lab);
    let (code, out, err) = lab.cli(&["upgrade", "--minor"]);
    let (paused_seen, leaders) = watch.finish().await;
    assert_eq!(code, 0, "upgrade --minor with the agents acting: {out}{err}");
    assert!(paused_seen, "the agents were paused during it");
    assert_eq!(leaders, ["db1", "db2", "db1"], "the key moved with the role, and back");
    assert!(out.contains("agents restarted on the new binaries"), "{out}");
    for n in NODES {
        assert!(exe(&lab, n).starts_with(&new), "{n} runs from the new build: {}", exe(&lab, n).display());
        let agent = std::fs::read_to_string(lab.agents_dir().join(format!("{n}.pid"))).unwrap();
        let cmdline = String::from_utf8_lossy(&std::fs::read(format!("/proc/{}/cmdline", agent.trim())).unwrap()).to_string();
        assert!(cmdline.contains(new.to_str().unwrap()), "{n}'s agent runs with the new binaries: {cmdline}");
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(lab.status()["ha"]["paused"].as_bool(), Some(false), "the agents act again");
    assert_eq!(lab.wait_leader(&["db1"], 3, Duration::from_secs(30)), "db1");
    assert_eq!(lab.in_recovery("db1"), Some(false));
    for n in ["db2", "db3"] {
        lab.wait_standby_of(n, "db1", Duration::from_secs(60));
    }
    let stops = agents_stopping_writes(&lab);
    assert!(stops.is_empty(), "an agent stopped a writable node: {stops:#?}");
    let acks = load.finish().await;
    let missing = missing_on(&lab, "db1", &acks);
    assert!(missing.is_empty(), "{} acknowledged rows lost", missing.len());
    lab.finish();
}
