//! Automatic failover: a real 3-member etcd on loopback (`scripts/lab/etcd.sh`), real
//! PostgreSQL, the agents `pgrepl up` starts, a write load that records every
//! acknowledged commit, and a probe asking every node every 50 ms whether it accepts
//! writes (never two at once).
//!
//! - kill -9 of the primary's whole node (its agent, its guard, its postmaster): a standby
//!   takes over with no command; in synchronous mode no acknowledged row is lost; the old
//!   node, its agent started again, rejoins as a standby;
//! - kill -9 of the postmaster alone, the agent alive: restarted in place, nothing lost;
//! - SIGSTOP of the primary's agent for twice the ttl: its guard stops the server at the
//!   deadline, a standby takes over, never two writable nodes, nothing acknowledged lost.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::ha::{Ack, Load};
use pgrepl_core::oplock::{LockHolder, SharedLock};
use pgrepl_core::store::{ConsensusStore, Keys, StoreLock};
use pgrepl_etcd::{EtcdOptions, EtcdStore};

pub(crate) const NODES: [&str; 3] = ["db1", "db2", "db3"];
/// The etcd every test of this binary shares (started once, left running for the next).
const ETCD_BASE: u16 = 23990;
const TTL_SECONDS: f64 = 3.0;

pub(crate) fn etcd_endpoints() -> String {
    static STARTED: Mutex<Option<String>> = Mutex::new(None);
    let mut s = STARTED.lock().unwrap();
    if let Some(e) = s.as_ref() {
        return e.clone();
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let script = root.join("scripts/lab/etcd.sh");
    let o = Command::new("bash").arg(&script).args(["start", &ETCD_BASE.to_string()]).output().expect("etcd.sh runs");
    assert!(o.status.success(), "scripts/lab/etcd.sh start: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    let o = Command::new("bash").arg(&script).args(["endpoints", &ETCD_BASE.to_string()]).output().unwrap();
    let e = String::from_utf8_lossy(&o.stdout).trim().to_string();
    *s = Some(e.clone());
    e
}

pub(crate) struct AutoLab {
    pub(crate) wd: WorkDir,
    /// The first agent's HTTP port (db1; db2 and db3 the next ones).
    pub(crate) api_port: u16,
    pub(crate) cluster: String,
    pub(crate) endpoints: String,
    pub(crate) spec: PathBuf,
    pub(crate) port: u16,
    pub(crate) bin: PathBuf,
    pub(crate) client: PathBuf,
    pub(crate) extra_agents: Vec<Child>,
}

impl AutoLab {
    pub(crate) fn up(name: &str, major: &str, sync: Option<&str>) -> AutoLab {
        AutoLab::up_on(name, major, sync, &etcd_endpoints())
    }

    /// On the etcd cluster of `endpoints` (comma-separated client URLs).
    pub(crate) fn up_on(name: &str, major: &str, sync: Option<&str>, endpoints: &str) -> AutoLab {
        AutoLab::up_with(name, major, sync, endpoints, "")
    }

    /// With `more` appended to the spec (whole tables: `[backup]`, say).
    pub(crate) fn up_with(name: &str, major: &str, sync: Option<&str>, endpoints: &str, more: &str) -> AutoLab {
        let (bin, client) = bins(major);
        let wd = WorkDir::new(name).with_bin(&bin);
        // A name of its own per run: the keys of a run that died without destroying its
        // cluster stay in the shared etcd.
        let name = &format!("{name}-{}", std::process::id() % 100_000);
        let port = free_ports(3);
        let endpoints: Vec<String> = endpoints.split(',').map(|e| format!("\"{e}\"")).collect();
        // The agents' HTTP ports: free ones (tests run side by side).
        let api_port = free_ports(3);
        let mut extra = format!(
            "[ha]\nttl = {TTL_SECONDS}\nloop_wait = 0.5\nsafety_margin = 1\napi_port = {api_port}\n[ha.etcd]\nendpoints = [{}]\n",
            endpoints.join(", ")
        );
        if let Some(s) = sync {
            extra = format!("[replication]\nsync = {s}\n{extra}");
        }
        extra.push_str(more);
        // `[ha]` must come after the top-level keys: local_spec puts `extra` before [provider].
        let spec_text = local_spec(name, major, port, &wd.str(), &extra);
        let spec = wd.path.join("pgrepl.toml");
        std::fs::write(&spec, spec_text).unwrap();
        let s = spec.to_str().unwrap();
        let (code, out, err) = pgrepl_ok(&["up", "-f", s, "--pg-bin", bin.to_str().unwrap(), "--pg-client-bin", client.to_str().unwrap()]);
        assert_eq!(code, 0, "up: {out}\n{err}");
        let lab = AutoLab {
            api_port,
            wd,
            cluster: name.to_string(),
            endpoints: endpoints.iter().map(|e| e.trim_matches('"')).collect::<Vec<_>>().join(","),
            spec,
            port,
            bin,
            client,
            extra_agents: Vec::new(),
        };
        lab.wait_leader(&["db1"], 3, Duration::from_secs(30));
        create_app_role(&lab.client, &lab.wd.path, "db1", port);
        lab.sql("db1", "CREATE TABLE load (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())");
        lab
    }

    pub(crate) fn port_of(&self, node: &str) -> u16 {
        self.port + NODES.iter().position(|n| *n == node).unwrap() as u16
    }

    pub(crate) fn sql(&self, node: &str, q: &str) -> String {
        psql(&self.client, &self.wd.path, node, self.port_of(node), q)
    }

    pub(crate) fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let mut a: Vec<&str> = args.to_vec();
        a.extend([
            "-f",
            self.spec.to_str().unwrap(),
            "--pg-bin",
            self.bin.to_str().unwrap(),
            "--pg-client-bin",
            self.client.to_str().unwrap(),
        ]);
        pgrepl_ok(&a)
    }

    pub(crate) fn status(&self) -> serde_json::Value {
        let (_, out, err) = self.cli(&["status", "--output", "json"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status json: {e}: {out}\n{err}"))
    }

    /// Waits until the leader key names one of `expect` and `members` members report.
    pub(crate) fn wait_leader(&self, expect: &[&str], members: usize, limit: Duration) -> String {
        let t = Instant::now();
        let mut last = serde_json::Value::Null;
        while t.elapsed() < limit {
            last = self.status();
            if let Some(l) = last["ha"]["leader"].as_str() {
                if expect.contains(&l) && last["ha"]["members"].as_array().is_some_and(|m| m.len() >= members) {
                    return l.to_string();
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("no leader among {expect:?} within {limit:?}: {last:#}");
    }

    pub(crate) fn agents_dir(&self) -> PathBuf {
        // The state directory of a local cluster: `secrets` under its work directory.
        let cands = [self.wd.path.join("secrets").join("agents"), self.wd.path.join("agents")];
        cands.iter().find(|p| p.exists()).cloned().unwrap_or_else(|| panic!("no agents directory under {}", self.wd.path.display()))
    }

    pub(crate) fn agent_pid(&self, node: &str) -> i32 {
        std::fs::read_to_string(self.agents_dir().join(format!("{node}.pid"))).unwrap().trim().parse().unwrap()
    }

    pub(crate) fn postmaster_pid(&self, node: &str) -> i32 {
        let f = std::fs::read_to_string(self.wd.path.join(node).join("data").join("postmaster.pid")).unwrap();
        f.lines().next().unwrap().trim().parse().unwrap()
    }

    /// The agent's guard: its child `pgrepl agent --guard`.
    pub(crate) fn guard_pid(&self, agent: i32) -> Option<i32> {
        for e in std::fs::read_dir("/proc").ok()?.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
            let ppid: Option<i32> = stat.rsplit(')').next().and_then(|r| r.split_whitespace().nth(1)).and_then(|p| p.parse().ok());
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if ppid == Some(agent) && String::from_utf8_lossy(&cmd).contains("--guard") {
                return Some(pid);
            }
        }
        None
    }

    /// Starts `node`'s agent, reaching etcd through `endpoints` when given.
    pub(crate) fn start_agent_with(&mut self, node: &str, endpoints: Option<&str>) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgrepl"));
        if let Some(e) = endpoints {
            cmd.env("PGREPL_ETCD_ENDPOINTS", e);
        }
        let c = cmd
            .args(["agent", "--node", node, "-f", self.spec.to_str().unwrap()])
            .args(["--pg-bin", self.bin.to_str().unwrap(), "--pg-client-bin", self.client.to_str().unwrap()])
            .env("PGREPL_LOG", "info")
            .stdout(std::fs::File::create(self.wd.path.join(format!("{node}-agent-2.log"))).unwrap())
            .stderr(std::fs::File::create(self.wd.path.join(format!("{node}-agent-2.err"))).unwrap())
            .spawn()
            .unwrap();
        self.extra_agents.push(c);
    }

    pub(crate) fn in_recovery(&self, node: &str) -> Option<bool> {
        let o = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.client.join("psql"))
            .args(["-X", "-A", "-t", "-h"])
            .arg(self.wd.path.join(node).join("run"))
            .args(["-p", &self.port_of(node).to_string(), "-U", "postgres", "-d", "postgres", "-c", "SELECT pg_is_in_recovery()"])
            .output()
            .ok()?;
        o.status.success().then(|| String::from_utf8_lossy(&o.stdout).trim() == "t")
    }

    pub(crate) fn wait_standby_of(&self, node: &str, primary: &str, limit: Duration) {
        let t = Instant::now();
        while t.elapsed() < limit {
            let out = self.sql(primary, "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'");
            if out.lines().any(|l| l == node) && self.in_recovery(node) == Some(true) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("{node} does not stream from {primary} within {limit:?}; agent logs in {}", self.wd.path.display());
    }

    pub(crate) fn finish(self) {
        // Drop stops the agents and destroys the cluster.
    }
}

impl Drop for AutoLab {
    /// Also when a test fails: every agent stopped (pid files; `destroy` does that first),
    /// those the test started itself, then the cluster and its keys destroyed.
    fn drop(&mut self) {
        if std::thread::panicking() {
            // What the agents said, before the work directory goes.
            for dir in [self.wd.path.join("secrets").join("agents"), self.wd.path.clone()] {
                for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                    let p = e.path();
                    if p.extension().is_some_and(|x| x == "log" || x == "err") {
                        let text = std::fs::read_to_string(&p).unwrap_or_default();
                        let lines: Vec<&str> = text.lines().collect();
                        eprintln!("==== {} (last 40 lines)", p.display());
                        for l in &lines[lines.len().saturating_sub(40)..] {
                            eprintln!("{l}");
                        }
                    }
                }
            }
        }
        for c in &mut self.extra_agents {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(30) && c.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let (code, out, err) = self.cli(&["destroy", "--yes"]);
        if code != 0 {
            eprintln!("destroy: {out}\n{err}");
        }
    }
}

/// Asks every node every 50 ms whether it accepts writes; records any moment with two.
pub(crate) struct WritableProbe {
    stop: Arc<AtomicBool>,
    task: std::thread::JoinHandle<Vec<(Instant, Vec<String>)>>,
}

impl WritableProbe {
    pub(crate) fn start(client: PathBuf, wd: PathBuf, port: u16) -> WritableProbe {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = std::thread::spawn(move || {
            let mut both = Vec::new();
            let t0 = Instant::now();
            while !flag.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(600) {
                let writable: Vec<String> = NODES
                    .iter()
                    .enumerate()
                    .filter(|(i, n)| {
                        let o = Command::new("runuser")
                            .args(["-u", "postgres", "--"])
                            .arg(client.join("psql"))
                            .args(["-X", "-A", "-t", "-h"])
                            .arg(wd.join(n).join("run"))
                            .args([
                                "-p",
                                &(port + *i as u16).to_string(),
                                "-U",
                                "postgres",
                                "-d",
                                "postgres",
                                "-c",
                                "SELECT pg_is_in_recovery()",
                            ])
                            .env("PGCONNECT_TIMEOUT", "1")
                            .output();
                        o.is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "f")
                    })
                    .map(|(_, n)| n.to_string())
                    .collect();
                if writable.len() > 1 {
                    both.push((Instant::now(), writable));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            both
        });
        WritableProbe { stop, task }
    }

    pub(crate) fn finish(self) -> Vec<(Instant, Vec<String>)> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.join().unwrap()
    }
}

pub(crate) fn kill(signal: &str, pid: i32) {
    let st = Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).status().unwrap();
    assert!(st.success(), "kill -{signal} {pid}");
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// kill -9 of the agent, its guard and the postmaster.
    WholeNode,
    /// kill -9 of the postmaster alone.
    Postmaster,
    /// SIGSTOP of the agent for twice the ttl, then SIGCONT.
    HungAgent,
}

async fn auto_failover(major: &str, sync: Option<&str>, fault: Fault) {
    let name = format!("auto-{major}-{}-{fault:?}", if sync.is_some() { "sync" } else { "async" }).to_lowercase();
    let lab = AutoLab::up(&name, major, sync);
    let ports: Vec<u16> = NODES.iter().map(|n| lab.port_of(n)).collect();
    let probe = WritableProbe::start(lab.client.clone(), lab.wd.path.clone(), lab.port);
    let load = Load::start(ports.clone());
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let agent = lab.agent_pid("db1");
    let t_fault = Instant::now();
    match fault {
        Fault::WholeNode => {
            let guard = lab.guard_pid(agent).expect("db1's agent runs a guard");
            let pm = lab.postmaster_pid("db1");
            kill("KILL", agent);
            kill("KILL", guard);
            kill("KILL", pm);
        }
        Fault::Postmaster => kill("KILL", lab.postmaster_pid("db1")),
        Fault::HungAgent => {
            kill("STOP", agent);
            tokio::time::sleep(Duration::from_secs_f64(2.0 * TTL_SECONDS)).await;
            kill("CONT", agent);
        }
    }
    // Two operators run `failover` at once: both wait for the agents' election and report
    // the same one new primary.
    let failovers: Vec<Child> = if matches!(fault, Fault::WholeNode) {
        (0..2)
            .map(|_| {
                Command::new(env!("CARGO_BIN_EXE_pgrepl"))
                    .args(["failover", "-f", lab.spec.to_str().unwrap(), "--pg-bin", lab.bin.to_str().unwrap()])
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect()
    } else {
        Vec::new()
    };
    // Writes resume without any command.
    let limit = Duration::from_secs(40);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let leader = lab.status()["ha"]["leader"].as_str().map(String::from);
        let ok = match fault {
            Fault::Postmaster => lab.in_recovery("db1") == Some(false),
            _ => leader.as_deref().is_some_and(|l| l != "db1") && lab.in_recovery(leader.as_deref().unwrap()) == Some(false),
        };
        if ok {
            break;
        }
        assert!(t_fault.elapsed() < limit, "no writable primary {limit:?} after the fault; logs in {}", lab.wd.path.display());
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let acks: Vec<Ack> = load.finish().await;
    let first_after = acks.iter().filter(|a| a.at > t_fault).find(|a| fault_resolved(fault, a, lab.port_of("db1"))).map(|a| a.at - t_fault);
    eprintln!("{name}: first acknowledged write after the fault: {first_after:?}");
    assert!(first_after.is_some(), "writes resumed");

    let leader = lab.wait_leader(&NODES, if matches!(fault, Fault::WholeNode) { 2 } else { 3 }, Duration::from_secs(30));
    let history = lab.status()["ha"]["history"].clone();
    if matches!(fault, Fault::Postmaster) {
        assert_eq!(leader, "db1", "the crashed postmaster is restarted in place");
        assert!(history.as_array().is_none_or(|h| h.is_empty()), "no promotion recorded: {history}");
    } else {
        assert_ne!(leader, "db1");
        // The promotion is in the topology's history.
        let last = &history[history.as_array().map_or(0, |h| h.len().saturating_sub(1))];
        assert_eq!(
            (last["node"].as_str(), last["from"].as_str(), last["kind"].as_str()),
            (Some(leader.as_str()), Some("db1"), Some("failover")),
            "{history}"
        );
    }
    // Nothing acknowledged is lost in synchronous mode (and, restarted in place, ever).
    let present: std::collections::BTreeSet<i64> =
        lab.sql(&leader, "SELECT id FROM load").lines().filter(|l| !l.is_empty()).map(|l| l.parse().unwrap()).collect();
    let missing: Vec<i64> = acks.iter().filter(|a| !present.contains(&a.id)).map(|a| a.id).collect();
    if sync.is_some() || matches!(fault, Fault::Postmaster) {
        assert!(missing.is_empty(), "{} acknowledged rows missing on {leader}: {:?}", missing.len(), &missing[..missing.len().min(20)]);
    }

    let outs: Vec<String> = failovers
        .into_iter()
        .map(|c| {
            let o = c.wait_with_output().unwrap();
            let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
            assert!(o.status.success(), "failover during the agents' election: {text}");
            text
        })
        .collect();
    for o in &outs {
        assert!(o.contains(&format!("the agents elected {leader}")), "{o}");
    }
    // The old primary comes back as a standby of the new one, by itself (`rejoin` waits
    // for its agent to do it).
    if !matches!(fault, Fault::Postmaster) {
        if matches!(fault, Fault::WholeNode) {
            // `up` on a cluster the agents lead holds them paused while it converges the
            // nodes (db1, the old primary, is left for `rejoin`), then starts the agents
            // that do not run.
            let (code, out, err) = lab.cli(&["up"]);
            assert_eq!(code, 0, "up: {out}{err}");
            assert!(err.contains("agents started: db1"), "{out}{err}");
            assert_eq!(lab.in_recovery(&leader), Some(false), "up left the new primary {leader} as it was");
            let (code, out, err) = lab.cli(&["rejoin", "db1"]);
            assert_eq!(code, 0, "rejoin through the agents: {out}{err}");
            assert!(out.contains(&format!("standby of {leader}")), "{out}");
        }
        lab.wait_standby_of("db1", &leader, Duration::from_secs(90));
    }
    let both = probe.finish();
    assert!(both.is_empty(), "two nodes accepted writes at once: {both:?}");
    lab.finish();
}

fn fault_resolved(fault: Fault, a: &Ack, old_port: u16) -> bool {
    match fault {
        Fault::Postmaster => true,
        _ => a.port != old_port,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_failover_whole_node_sync_pg15() {
    auto_failover("15", Some("{ mode = \"any\", count = 1 }"), Fault::WholeNode).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_failover_postmaster_killed_restarts_in_place_pg18() {
    auto_failover("18", Some("{ mode = \"first\", count = 1 }"), Fault::Postmaster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_failover_hung_agent_is_fenced_by_its_guard_pg11() {
    auto_failover("11", Some("{ mode = \"first\", count = 1 }"), Fault::HungAgent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_failover_whole_node_async_pg11() {
    auto_failover("11", None, Fault::WholeNode).await;
}

/// The rows acknowledged that `node` lacks.
pub(crate) fn missing_on(lab: &AutoLab, node: &str, acks: &[Ack]) -> Vec<i64> {
    let present: std::collections::BTreeSet<i64> =
        lab.sql(node, "SELECT id FROM load").lines().filter(|l| !l.is_empty()).map(|l| l.parse().unwrap()).collect();
    acks.iter().filter(|a| !present.contains(&a.id)).map(|a| a.id).collect()
}

/// A manual switchover while the agents run (two asked at once: one goes through, the
/// other is refused), pause (a crashed primary is left alone, the CLI may act by hand)
/// and resume (the agents act again, with no command).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_switchover_pause_and_resume_pg15() {
    let name = "auto-15-switchover";
    let lab = AutoLab::up(name, "15", Some("{ mode = \"any\", count = 1 }"));
    let ports: Vec<u16> = NODES.iter().map(|n| lab.port_of(n)).collect();
    let probe = WritableProbe::start(lab.client.clone(), lab.wd.path.clone(), lab.port);
    let load = Load::start(ports);
    tokio::time::sleep(Duration::from_millis(1000)).await;

    // Two operators at once.
    let spawn = |to: &str| {
        Command::new(env!("CARGO_BIN_EXE_pgrepl"))
            .args(["switchover", "--to", to, "-f", lab.spec.to_str().unwrap(), "--pg-bin", lab.bin.to_str().unwrap()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn("db2"), spawn("db3"));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let codes = (a.status.code(), b.status.code());
    let text = |o: &std::process::Output| format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    eprintln!("switchover to db2: {}\nswitchover to db3: {}", text(&a), text(&b));
    assert!(matches!(codes, (Some(0), Some(3)) | (Some(3), Some(0))), "exactly one goes through: {codes:?}");
    let (winner, loser) = if codes.0 == Some(0) { ("db2", &b) } else { ("db3", &a) };
    assert!(text(loser).contains("another switchover is under way"), "{}", text(loser));
    assert_eq!(lab.wait_leader(&[winner], 3, Duration::from_secs(30)), winner);
    let history = lab.status()["ha"]["history"].clone();
    assert_eq!(history.as_array().map(|h| h.len()), Some(1), "{history}");
    assert_eq!((history[0]["node"].as_str(), history[0]["kind"].as_str()), (Some(winner), Some("switchover")), "{history}");
    for n in NODES.iter().filter(|n| **n != winner) {
        lab.wait_standby_of(n, winner, Duration::from_secs(60));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acks = load.finish().await;
    assert!(acks.iter().any(|a| a.port == lab.port_of(winner)), "writes went on on {winner}");
    let missing = missing_on(&lab, winner, &acks);
    assert!(missing.is_empty(), "acknowledged rows missing after the switchover: {missing:?}");

    // While the agents run, a manual failover is refused with what to do.
    let (code, out, err) = lab.cli(&["failover"]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains("pgrepl pause"), "{err}");

    // `status` says how long the leader's lease has left (of the 3 s ttl).
    let st = lab.status();
    let left = st["ha"]["lease_left_seconds"].as_u64();
    assert!(left.is_some_and(|s| s as f64 <= TTL_SECONDS), "lease left: {}", st["ha"]);

    // The operation lock lives in etcd: while another admin holds it (the test, through
    // the library), `status` names it and `pause` waits for it, then says who holds it.
    let store: Arc<dyn ConsensusStore> = Arc::new(EtcdStore::new(&EtcdOptions::new(lab.endpoints.split(','))).unwrap());
    let lock = StoreLock::new(store, Keys::new(&lab.cluster));
    let t = std::time::Instant::now();
    let held = lock.acquire(&lab.cluster, &LockHolder::this_process("test-holder", Some(15)), t, t).await.unwrap();
    assert_eq!(lab.status()["ha"]["operation_lock"]["operation"].as_str(), Some("test-holder"));
    let (code, out, err) = lab.cli(&["pause", "--lock-wait", "1"]);
    assert_eq!(code, 3, "pause while the lock is held: {out}{err}");
    assert!(err.contains("test-holder") && err.contains("consensus store"), "{err}");
    assert!(lab.status()["ha"]["paused"].as_bool() != Some(true), "not paused while the lock was held");
    held.release().await;
    assert!(lab.status()["ha"]["operation_lock"].is_null(), "released");

    // Paused: a crashed primary is not restarted, the key stays.
    let (code, out, err) = lab.cli(&["pause"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(lab.status()["ha"]["paused"].as_bool() == Some(true));
    kill("KILL", lab.postmaster_pid(winner));
    tokio::time::sleep(Duration::from_secs_f64(TTL_SECONDS + 1.0)).await;
    assert_eq!(lab.in_recovery(winner), None, "paused: {winner} left stopped");
    assert_eq!(lab.status()["ha"]["leader"].as_str(), Some(winner), "paused: no failover");
    // Resumed: restarted in place.
    let (code, out, err) = lab.cli(&["resume"]);
    assert_eq!(code, 0, "{out}{err}");
    let t = Instant::now();
    while lab.in_recovery(winner) != Some(false) {
        assert!(t.elapsed() < Duration::from_secs(30), "{winner} not restarted after resume");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let both = probe.finish();
    assert!(both.is_empty(), "two nodes accepted writes at once: {both:?}");
    lab.finish();
}

/// A TCP relay to one etcd endpoint that the test can cut (every connection dropped, new
/// ones refused) and restore on the same port.
struct Relay {
    port: u16,
    target: String,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    async fn start(target: &str) -> Relay {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let r = Relay { port, target: target.trim_start_matches("http://").to_string(), tasks: Arc::new(Mutex::new(Vec::new())) };
        r.serve(l);
        r
    }

    fn serve(&self, l: tokio::net::TcpListener) {
        let (target, tasks) = (self.target.clone(), self.tasks.clone());
        let t = tokio::spawn(async move {
            while let Ok((mut a, _)) = l.accept().await {
                let target = target.clone();
                let conn = tokio::spawn(async move {
                    if let Ok(mut b) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                    }
                });
                tasks.lock().unwrap().push(conn);
            }
        });
        self.tasks.lock().unwrap().push(t);
    }

    fn cut(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    async fn restore(&self) {
        let l = tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        self.serve(l);
    }
}

/// The primary cut off from etcd (its agent reaches etcd through a relay the test cuts):
/// it stops accepting writes within the ttl, a standby takes over, never two writable;
/// the link back, it rejoins as a standby.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_primary_cut_off_from_etcd_pg15() {
    let mut lab = AutoLab::up("auto-15-cutoff", "15", Some("{ mode = \"any\", count = 1 }"));
    let first = etcd_endpoints().split(',').next().unwrap().to_string();
    let relay = Relay::start(&first).await;
    // db1's agent again, through the relay (paused meanwhile: its server runs on).
    assert_eq!(lab.cli(&["pause"]).0, 0);
    let agent = lab.agent_pid("db1");
    kill("TERM", agent);
    let t = Instant::now();
    while std::path::Path::new(&format!("/proc/{agent}")).exists() {
        assert!(t.elapsed() < Duration::from_secs(30), "db1's agent did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    lab.start_agent_with("db1", Some(&format!("http://127.0.0.1:{}", relay.port)));
    assert_eq!(lab.cli(&["resume"]).0, 0);
    lab.wait_leader(&["db1"], 3, Duration::from_secs(30));
    tokio::time::sleep(Duration::from_secs(1)).await;

    let ports: Vec<u16> = NODES.iter().map(|n| lab.port_of(n)).collect();
    let probe = WritableProbe::start(lab.client.clone(), lab.wd.path.clone(), lab.port);
    let load = Load::start(ports);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    relay.cut();
    let t_cut = Instant::now();
    // db1 stops accepting writes within the ttl (its own clock: ttl - margin).
    while lab.in_recovery("db1") == Some(false) {
        assert!(
            t_cut.elapsed() < Duration::from_secs_f64(TTL_SECONDS + 1.0),
            "db1 still accepts writes {:?} after the cut",
            t_cut.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("db1 stopped accepting writes {:?} after the cut", t_cut.elapsed());
    let leader = lab.wait_leader(&["db2", "db3"], 2, Duration::from_secs(30));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let acks = load.finish().await;
    let missing = missing_on(&lab, &leader, &acks);
    assert!(missing.is_empty(), "acknowledged rows missing on {leader}: {missing:?}");
    // The link back: db1 rejoins by itself.
    relay.restore().await;
    lab.wait_standby_of("db1", &leader, Duration::from_secs(90));
    let both = probe.finish();
    assert!(both.is_empty(), "two nodes accepted writes at once: {both:?}");
    lab.finish();
}

/// etcd loses its quorum: no promotion anywhere, the primary stops accepting writes,
/// standbys keep serving reads, status says why; quorum back, the cluster heals with no
/// command. On an etcd cluster of its own (the shared one stays whole for other tests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_etcd_quorum_loss_then_heals_pg15() {
    const BASE: &str = "24090";
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/lab/etcd.sh");
    let etcd = |args: &[&str]| {
        let o = Command::new("bash").arg(&script).args(args).output().unwrap();
        assert!(o.status.success(), "etcd.sh {args:?}: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    etcd(&["start", BASE]);
    let endpoints = etcd(&["endpoints", BASE]);
    let lab = AutoLab::up_on("auto-15-quorum", "15", Some("{ mode = \"any\", count = 1 }"), &endpoints);
    tokio::time::sleep(Duration::from_secs(1)).await;
    etcd(&["stop-member", BASE, "2"]);
    etcd(&["stop-member", BASE, "3"]);
    let t = Instant::now();
    while lab.in_recovery("db1") == Some(false) {
        assert!(t.elapsed() < Duration::from_secs_f64(TTL_SECONDS + 1.0), "db1 still accepts writes {:?} without quorum", t.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // No promotion anywhere, reads go on, status says why.
    tokio::time::sleep(Duration::from_secs_f64(TTL_SECONDS)).await;
    for n in ["db2", "db3"] {
        assert_eq!(lab.in_recovery(n), Some(true), "{n} serves reads as a standby");
    }
    let (_, out, _) = lab.cli(&["status"]);
    assert!(out.contains("no promotion can happen"), "{out}");
    etcd(&["start-member", BASE, "2"]);
    etcd(&["start-member", BASE, "3"]);
    let t = Instant::now();
    let writable = loop {
        let w: Vec<&str> = NODES.iter().copied().filter(|n| lab.in_recovery(n) == Some(false)).collect();
        if w.len() == 1 {
            break w[0];
        }
        assert!(w.len() < 2, "two writable: {w:?}");
        assert!(t.elapsed() < Duration::from_secs(60), "no primary 60 s after quorum came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("healed: {writable} accepts writes {:?} after quorum came back", t.elapsed());
    for n in NODES.iter().filter(|n| **n != writable) {
        lab.wait_standby_of(n, writable, Duration::from_secs(60));
    }
    lab.finish();
    etcd(&["stop", BASE]);
}
