//! `deploy_local`: how long pgrepl takes to bring up the default local cluster (one
//! primary, two hot standbys) from nothing until both standbys stream, against the
//! physical floor measured in the same run with the same binaries.
//!
//! Per run, in alternating order:
//!
//! 1. **pgrepl**: `Deployment::open` (validation, binary discovery) + `Deployment::up`
//!    (initdb, settings, start, replication role, slots, two pg_basebackups in parallel,
//!    start, wait until `pg_stat_replication` says `streaming` for both), then `destroy`
//!    (not timed into the result).
//! 2. **floor**: the same work done by hand, as `shared/docs/lab.md` §1c does it, for one
//!    standby: initdb (same flags), append the replication settings, `pg_ctl -w start`,
//!    `CREATE ROLE`, one `pg_basebackup -X stream -c fast`, standby settings,
//!    `pg_ctl -w start`, poll `pg_stat_replication` until `streaming`.
//!
//! ```text
//! cargo run --release -p pgrepl-benches --bin deploy_local -- [--pg-bin DIR] [--pg-client-bin DIR] [--runs N]
//! ```
//!
//! Default binaries: the lab's PostgreSQL 16 (`$PGREPL_LAB/pg/16/bin`, lab at
//! /opt/pgrepl-lab). Run as root (PostgreSQL then runs as `postgres`) or as the user
//! that should own the servers. Everything lives in one scratch directory under $TMPDIR;
//! every server started is stopped and the directory removed, also on failure.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pgrepl_benches::{Scratch, append, free_ports, median, mkdir_pg, pg_user, run_pg, union_len, write_pg};
use pgrepl_core::cluster::{Cluster, Node};
use pgrepl_core::deploy::{Deployment, NoProgress, Progress};
use pgrepl_core::discovery::{DiscoveryOptions, discover};
use pgrepl_core::layout::{Binaries, NodeLayout};
use pgrepl_core::local::{LocalBackend, LocalProvider, LocalTransport};
use pgrepl_core::open::OpenOptions;
use pgrepl_core::provider::{Connector, Host, NodeHandle};
use pgrepl_core::spec::{LocalProviderSpec, ProviderSpec};
use pgrepl_core::transport::{Command, Output, Transport, TransportError};
use pgrepl_core::version::RecoveryStyle;
use pgrepl_core::{ClusterSpec, NodeSpec};

/// Limit of one command of the floor.
const STEP_LIMIT: Duration = Duration::from_secs(300);
/// Limit of waiting for streaming (both sides).
const STREAM_DEADLINE: Duration = Duration::from_secs(120);

struct Args {
    pg_bin: PathBuf,
    pg_client_bin: Option<PathBuf>,
    runs: usize,
    /// Print the traced run's every operation and step in time order.
    verbose: bool,
}

fn main() -> ExitCode {
    use clap::Parser;
    let cli = pgrepl_benches::BenchArgs::parse();
    pgrepl_benches::exit_code(
        "deploy_local",
        bench(&Args { pg_bin: cli.pg_bin_or_lab("16"), pg_client_bin: cli.pg_client_bin, runs: cli.runs.into(), verbose: cli.verbose }),
    )
}

/// One pgrepl run.
struct PgreplRun {
    total: f64,
    open: f64,
    up: f64,
    destroy: f64,
    /// (node, step, start offset from t0, seconds), from the progress callbacks.
    steps: Vec<(String, String, f64, f64)>,
    /// Time inside `up` covered by no reported step: pgrepl's own checks and bookkeeping.
    uncovered: f64,
    /// The UpReport's actions: (node, what, seconds).
    actions: Vec<(String, String, f64)>,
}

/// One floor run: (step, seconds) in order, and the total.
struct FloorRun {
    total: f64,
    steps: Vec<(&'static str, f64)>,
}

fn bench(args: &Args) -> Result<(), String> {
    let b = discover(&DiscoveryOptions { pg_bin: Some(args.pg_bin.clone()), pg_client_bin: args.pg_client_bin.clone(), major: None })
        .map_err(|e| format!("{e} (install the test lab with scripts/lab/install.sh, or pass --pg-bin)"))?;
    let env = server_env(&b);
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let scratch = Scratch::new("pgrepl-bench-deploy-local", Path::new(&b.bin_dir), &env_ref)?;
    let start = 20000 + (std::process::id() % 1000) as u16 * 20;
    let pg_port = free_ports(start, 3).ok_or("no 3 free ports on 127.0.0.1")?;
    let floor_port = free_ports(pg_port + 4, 3).ok_or("no 3 free ports on 127.0.0.1")?;

    print_header(&b, args.runs);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| format!("tokio runtime: {e}"))?;

    let mut pg_runs: Vec<PgreplRun> = Vec::new();
    let mut floor1: Vec<FloorRun> = Vec::new();
    let mut floor2: Vec<FloorRun> = Vec::new();
    for i in 0..args.runs {
        // Rotate the order so no case always runs first (on a cooler or warmer machine).
        let mut pg = None;
        let (mut f1, mut f2) = (None, None);
        for case in 0..3 {
            match (case + i) % 3 {
                0 => pg = Some(rt.block_on(pgrepl_once(i, &scratch, &b, pg_port))?),
                1 => f1 = Some(floor_once(i, &scratch, &b, floor_port, 1)?),
                _ => f2 = Some(floor_once(i, &scratch, &b, floor_port, 2)?),
            }
        }
        let (pg, f1, f2) = (pg.expect("ran"), f1.expect("ran"), f2.expect("ran"));
        println!(
            "run {}: pgrepl {:6.3} s (open {:.3} + up {:.3}; destroy {:.3} untimed)   floor {:6.3} s   ratio {:.2}   floor(2 standbys) {:6.3} s   ratio {:.2}",
            i + 1,
            pg.total,
            pg.open,
            pg.up,
            pg.destroy,
            f1.total,
            pg.total / f1.total,
            f2.total,
            pg.total / f2.total
        );
        pg_runs.push(pg);
        floor1.push(f1);
        floor2.push(f2);
    }

    let totals = |rs: &[FloorRun]| rs.iter().map(|r| r.total).collect::<Vec<f64>>();
    let pg_totals: Vec<f64> = pg_runs.iter().map(|r| r.total).collect();
    let (t1, t2) = (totals(&floor1), totals(&floor2));
    let pm = median(&pg_totals);
    let ratios = |fl: &[f64]| median(&pg_totals.iter().zip(fl).map(|(p, f)| p / f).collect::<Vec<f64>>());
    println!();
    println!("case                                          median      min      max   ratio   ratio of pairs");
    println!("pgrepl up, 1 primary + 2 standbys          {:8.3} s {:8.3} {:8.3}", pm, min(&pg_totals), max(&pg_totals));
    println!(
        "floor, 1 primary + 1 standby               {:8.3} s {:8.3} {:8.3}   {:5.2}   {:5.2}   <- the issue's floor (target ratio <= 1.30)",
        median(&t1),
        min(&t1),
        max(&t1),
        pm / median(&t1),
        ratios(&t1)
    );
    println!(
        "floor, 1 primary + 2 standbys (parallel)   {:8.3} s {:8.3} {:8.3}   {:5.2}   {:5.2}   <- the same work as pgrepl",
        median(&t2),
        min(&t2),
        max(&t2),
        pm / median(&t2),
        ratios(&t2)
    );
    println!("(ratio: median pgrepl / median floor; ratio of pairs: median of each run's pgrepl / floor, which share the machine's load)");

    print_floor_breakdown("floor, 1 standby", &floor1);
    print_floor_breakdown("floor, 2 standbys in parallel", &floor2);
    print_pgrepl_breakdown(&pg_runs);
    rt.block_on(traced_run(&scratch, &b, pg_port, args.verbose))?;
    Ok(())
}

fn min(xs: &[f64]) -> f64 {
    xs.iter().copied().fold(f64::INFINITY, f64::min)
}
fn max(xs: &[f64]) -> f64 {
    xs.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

fn server_env(b: &Binaries) -> Vec<(String, String)> {
    b.lib_dir.iter().map(|l| ("LD_LIBRARY_PATH".to_string(), l.clone())).collect()
}

fn print_header(b: &Binaries, runs: usize) {
    println!("deploy_local: pgrepl `up` (local provider) vs the floor, same binaries, same run");
    pgrepl_benches::print_environment(b);
    println!("runs:     {runs} of each case, in rotating order; servers run as OS user {}", pg_user());
    println!();
}

/// Records when each step starts and ends (pgrepl's Progress callbacks).
struct Timeline {
    t0: Instant,
    events: Mutex<Vec<(f64, String, String, bool)>>,
}

impl Progress for Timeline {
    fn started(&self, node: &str, step: &str) {
        self.push(node, step, true);
    }
    fn finished(&self, node: &str, step: &str, _outcome: &str) {
        self.push(node, step, false);
    }
}

impl Timeline {
    fn push(&self, node: &str, step: &str, start: bool) {
        let at = self.t0.elapsed().as_secs_f64();
        self.events.lock().expect("not poisoned").push((at, node.to_string(), step.to_string(), start));
    }

    /// (node, step, start, seconds) for every step that finished.
    fn steps(&self) -> Vec<(String, String, f64, f64)> {
        let ev = self.events.lock().expect("not poisoned");
        let mut out = Vec::new();
        for (i, (at, node, step, start)) in ev.iter().enumerate() {
            if !start {
                continue;
            }
            if let Some((end, ..)) = ev[i + 1..].iter().find(|(_, n, s, st)| !st && n == node && s == step) {
                out.push((node.clone(), step.clone(), *at, end - at));
            }
        }
        out
    }
}

async fn pgrepl_once(i: usize, scratch: &Scratch, b: &Binaries, base_port: u16) -> Result<PgreplRun, String> {
    let work = scratch.path.join(format!("pgrepl-{i}"));
    let mut spec = ClusterSpec::builder("bench")
        .postgres(b.major)
        .pg_bin(&b.bin_dir)
        .provider(ProviderSpec::Local(LocalProviderSpec { work_dir: Some(work.clone()), os_user: None, base_port: Some(base_port) }))
        .node(NodeSpec::primary("db1"))
        .node(NodeSpec::standby("db2"))
        .node(NodeSpec::standby("db3"))
        .into_spec();
    spec.pg_client_bin = Some(PathBuf::from(&b.client_bin_dir));

    let t0 = Instant::now();
    let d =
        Deployment::open(&spec, &OpenOptions::default(), &[&LocalBackend]).await.map_err(|e| format!("pgrepl run {}: open: {e}", i + 1))?;
    let open = t0.elapsed().as_secs_f64();
    let tl = Timeline { t0, events: Mutex::new(Vec::new()) };
    let up = d.up(&tl).await;
    let total = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let destroyed = d.destroy(&NoProgress).await;
    let destroy = t1.elapsed().as_secs_f64();
    if destroyed.is_err() {
        scratch.stop_servers_under(&work);
    }
    let _ = std::fs::remove_dir_all(&work);
    let report = up.map_err(|e| format!("pgrepl run {}: up: {e}", i + 1))?;
    destroyed.map_err(|e| format!("pgrepl run {}: destroy: {e}", i + 1))?;
    let steps = tl.steps();
    let covered: Vec<(f64, f64)> = steps.iter().map(|(_, _, s, d)| (*s, s + d)).collect();
    let uncovered = (total - open) - union_len(&covered);
    Ok(PgreplRun {
        total,
        open,
        up: total - open,
        destroy,
        steps,
        uncovered,
        actions: report.actions.iter().map(|a| (a.node.clone(), a.what.clone(), a.seconds)).collect(),
    })
}

fn floor_once(i: usize, scratch: &Scratch, b: &Binaries, p1: u16, standbys: usize) -> Result<FloorRun, String> {
    let dir = scratch.path.join(format!("floor{standbys}-{i}"));
    mkdir_pg(&dir)?;
    mkdir_pg(&dir.join("run"))?;
    let r = floor_steps(b, &dir, p1, standbys);
    // Stop what this run started (also after a failure), then remove it.
    scratch.stop_servers_under(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    r.map_err(|e| format!("floor ({standbys} standby) run {}: {e}", i + 1))
}

/// The floor by hand: a primary on `p1` and `standbys` standbys on the next ports, their
/// clones and starts run in parallel (threads), as pgrepl runs one level of standbys.
fn floor_steps(b: &Binaries, dir: &Path, p1: u16, standbys: usize) -> Result<FloorRun, String> {
    let caps = b.major.caps();
    let bin = |n: &str| Path::new(&b.bin_dir).join(n);
    let client = |n: &str| Path::new(&b.client_bin_dir).join(n);
    let env = server_env(b);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let pri = dir.join("pri");
    let (pri_s, run_s) = (s(&pri), s(&dir.join("run")));
    let stbs: Vec<(usize, PathBuf, u16)> = (0..standbys).map(|k| (k, dir.join(format!("stb{k}")), p1 + 1 + k as u16)).collect();
    let password = "floor-bench-pw";
    let port1 = p1.to_string();
    let mut steps: Vec<(&'static str, f64)> = Vec::new();
    let t0 = Instant::now();
    let mut step = |name: &'static str, f: &mut dyn FnMut() -> Result<(), String>| -> Result<(), String> {
        let t = Instant::now();
        f().map_err(|e| format!("{name}: {e}"))?;
        steps.push((name, t.elapsed().as_secs_f64()));
        Ok(())
    };
    // Runs `f` for every standby at once; the first error wins.
    let each_standby = |f: &(dyn Fn(usize, &Path, u16) -> Result<(), String> + Sync)| -> Result<(), String> {
        std::thread::scope(|sc| {
            let hs: Vec<_> = stbs.iter().map(|(k, d, p)| sc.spawn(move || f(*k, d, *p))).collect();
            hs.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("thread panicked".into()))).collect::<Result<Vec<()>, String>>()
        })
        .map(drop)
    };

    step("initdb", &mut || {
        let mut a = vec!["-D", &pri_s, "-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C"];
        // The same checksums pgrepl asks for.
        if let Some(flag) = caps.initdb_checksums {
            a.push(flag);
        }
        run_pg(&bin("initdb"), &a, &env, STEP_LIMIT).map(drop)
    })?;
    step("settings", &mut || {
        append(
            &pri.join("postgresql.conf"),
            &format!(
                "listen_addresses = '127.0.0.1'\nport = {p1}\nunix_socket_directories = '{run_s}'\n\
                 wal_level = replica\nmax_wal_senders = 10\nhot_standby = on\n{} = '{}'\n",
                caps.wal_retention.setting(),
                caps.wal_retention.value_for_mb(512)
            ),
        )
    })?;
    step("start primary", &mut || {
        let log = s(&dir.join("pri.log"));
        run_pg(&bin("pg_ctl"), &["-D", &pri_s, "-l", &log, "-w", "-t", "120", "start"], &env, STEP_LIMIT).map(drop)
    })?;
    step("create role", &mut || {
        let sql = format!("CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD '{password}'");
        run_pg(&client("psql"), &["-X", "-q", "-h", &run_s, "-p", &port1, "-U", "postgres", "-d", "postgres", "-c", &sql], &[], STEP_LIMIT)
            .map(drop)
    })?;
    step("pg_basebackup", &mut || {
        each_standby(&|_, d, _| {
            run_pg(
                &client("pg_basebackup"),
                &["-h", "127.0.0.1", "-p", &port1, "-U", "replicator", "-D", &s(d), "-X", "stream", "-c", "fast"],
                &[("PGPASSWORD", password)],
                STEP_LIMIT,
            )
            .map(drop)
        })
    })?;
    step("standby settings", &mut || {
        each_standby(&|k, d, port| {
            // A minimal primary_conninfo written by hand (a newer pg_basebackup -R writes
            // options an older server rejects; lab.md §1c pitfall 1).
            let conninfo = format!("host=127.0.0.1 port={p1} user=replicator password={password} application_name=floor{k}");
            append(&d.join("postgresql.conf"), &format!("port = {port}\nunix_socket_directories = '{run_s}'\n"))?;
            match caps.recovery {
                RecoveryStyle::StandbySignal => {
                    append(&d.join("postgresql.conf"), &format!("primary_conninfo = '{conninfo}'\n"))?;
                    write_pg(&d.join("standby.signal"), "")
                }
                RecoveryStyle::RecoveryConf => {
                    write_pg(&d.join("recovery.conf"), &format!("standby_mode = 'on'\nprimary_conninfo = '{conninfo}'\n"))
                }
            }
        })
    })?;
    step("start standby", &mut || {
        each_standby(&|k, d, _| {
            let log = s(&dir.join(format!("stb{k}.log")));
            run_pg(&bin("pg_ctl"), &["-D", &s(d), "-l", &log, "-w", "-t", "120", "start"], &env, STEP_LIMIT).map(drop)
        })
    })?;
    step("wait until streaming", &mut || {
        let deadline = Instant::now() + STREAM_DEADLINE;
        let sql = "SELECT count(*) FROM pg_catalog.pg_stat_replication WHERE state = 'streaming'";
        // Bounded: at most one poll per 10 ms until the deadline.
        for _ in 0..(STREAM_DEADLINE.as_millis() / 10) {
            let out = run_pg(
                &client("psql"),
                &["-X", "-A", "-t", "-h", &run_s, "-p", &port1, "-U", "postgres", "-d", "postgres", "-c", sql],
                &[],
                Duration::from_secs(30),
            )?;
            if String::from_utf8_lossy(&out.stdout).trim() == standbys.to_string() {
                return Ok(());
            }
            if Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(format!("the standbys did not stream within {STREAM_DEADLINE:?} (see {}/stb*.log)", dir.display()))
    })?;
    let total = t0.elapsed().as_secs_f64();
    Ok(FloorRun { total, steps })
}

/// One command or file operation pgrepl did on a node: (what, start offset, seconds).
type Op = (String, f64, f64);

/// [`LocalTransport`] that records every operation with its timing.
#[derive(Debug)]
struct TracingTransport {
    inner: LocalTransport,
    t0: Instant,
    ops: Mutex<Vec<Op>>,
}

impl TracingTransport {
    fn record(&self, what: String, start: Instant) {
        let at = start.duration_since(self.t0).as_secs_f64();
        self.ops.lock().expect("not poisoned").push((what, at, start.elapsed().as_secs_f64()));
    }
}

#[async_trait]
impl Transport for TracingTransport {
    fn host(&self) -> &str {
        self.inner.host()
    }

    async fn exec(&self, cmd: &Command) -> Result<Output, TransportError> {
        let t = Instant::now();
        let r = self.inner.exec(cmd).await;
        let prog = cmd.program.rsplit('/').next().unwrap_or(&cmd.program);
        // Name the command by program and its verb (pg_ctl status/start, test -e, ...).
        let verb = match prog {
            "pg_ctl" => cmd
                .args
                .iter()
                .find(|a| ["status", "start", "stop", "reload", "promote"].contains(&a.as_str()))
                .cloned()
                .unwrap_or_default(),
            "test" | "ls" | "rm" | "mkdir" => cmd.args.first().cloned().unwrap_or_default(),
            _ => String::new(),
        };
        let who = if cmd.user.is_some() { " (runuser)" } else { "" };
        self.record(format!("exec {prog} {verb}{who}").replace("  ", " "), t);
        r
    }

    async fn write_file(&self, path: &str, contents: &[u8], mode: u32, owner: Option<&str>) -> Result<(), TransportError> {
        let t = Instant::now();
        let r = self.inner.write_file(path, contents, mode, owner).await;
        self.record("write_file".into(), t);
        r
    }

    async fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>, TransportError> {
        let t = Instant::now();
        let r = self.inner.read_file(path).await;
        self.record("read_file".into(), t);
        r
    }
}

/// The local connector, with every node's transport traced.
#[derive(Debug)]
struct TracingConnector {
    work_dir: String,
    binaries: Binaries,
    transport: Arc<TracingTransport>,
}

#[async_trait]
impl Connector for TracingConnector {
    async fn connect(&self, _cluster: &Cluster, node: &Node, _host: &Host) -> Result<NodeHandle, pgrepl_core::Error> {
        Ok(NodeHandle {
            name: node.name.clone(),
            transport: self.transport.clone(),
            layout: NodeLayout::local(&self.work_dir, &node.name, &self.binaries, &pg_user()),
            // As LocalConnector: the local provider installs nothing.
            install_script: None,
        })
    }
}

/// One more `up` (not in the medians), built exactly as `LocalBackend` opens it
/// but with traced transports: how many commands pgrepl runs, and what they cost.
async fn traced_run(scratch: &Scratch, b: &Binaries, base_port: u16, verbose: bool) -> Result<(), String> {
    let work = scratch.path.join("pgrepl-traced");
    let spec = ClusterSpec::builder("bench")
        .postgres(b.major)
        .provider(ProviderSpec::Local(LocalProviderSpec { work_dir: Some(work.clone()), os_user: None, base_port: Some(base_port) }))
        .node(NodeSpec::primary("db1"))
        .node(NodeSpec::standby("db2"))
        .node(NodeSpec::standby("db3"))
        .into_spec();
    let cluster = spec.validate_for(b.major).map_err(|e| format!("traced run: {e}"))?;
    let t0 = Instant::now();
    let transport = Arc::new(TracingTransport { inner: LocalTransport, t0, ops: Mutex::new(Vec::new()) });
    let d = Deployment::new(
        cluster,
        Arc::new(LocalProvider::new(&work, pg_user())),
        Arc::new(TracingConnector { work_dir: work.to_string_lossy().into_owned(), binaries: b.clone(), transport: transport.clone() }),
        work.join("secrets"),
    )
    .with_binaries(b.clone())
    .with_local_ports();
    let tl = Timeline { t0, events: Mutex::new(Vec::new()) };
    let up = d.up(&tl).await;
    let total = t0.elapsed().as_secs_f64();
    // What `up` did; destroy's own commands are not part of it.
    let ops = transport.ops.lock().expect("not poisoned").clone();
    let destroyed = d.destroy(&NoProgress).await;
    if destroyed.is_err() {
        scratch.stop_servers_under(&work);
    }
    let _ = std::fs::remove_dir_all(&work);
    up.map_err(|e| format!("traced run: up: {e}"))?;
    destroyed.map_err(|e| format!("traced run: destroy: {e}"))?;

    if verbose {
        let mut lines: Vec<(f64, String)> = ops.iter().map(|(w, at, secs)| (*at, format!("{at:>8.4} {secs:>8.4}  {w}"))).collect();
        for (node, step, at, secs) in tl.steps() {
            lines.push((at, format!("{at:>8.4} {secs:>8.4}  == step {node}: {step}")));
        }
        lines.sort_by(|a, b| a.0.total_cmp(&b.0));
        println!();
        println!("traced `up`, in time order (start s, seconds, what):");
        for (_, l) in lines {
            println!("  {l}");
        }
    }
    let first = ops.iter().map(|o| o.1).fold(f64::INFINITY, f64::min);
    // `open` runs discovery, which inspects every installation on the machine (one
    // `postgres --version` each) even when --pg-bin and --pg-client-bin name both.
    let t = Instant::now();
    let found = pgrepl_core::discovery::installations().len();
    let scan = t.elapsed().as_secs_f64();
    println!();
    println!("where pgrepl's time goes (one more traced `up`, {total:.3} s, not in the medians):");
    println!("  before the first node command (provider: work/node dirs, `test -w` per node; secrets): {first:.3} s");
    println!("  of `open`: discovery's scan of every installation ({found} found): {scan:.3} s");
    let mut kinds: Vec<String> = Vec::new();
    for (w, ..) in &ops {
        if !kinds.contains(w) {
            kinds.push(w.clone());
        }
    }
    let sum = |f: &dyn Fn(&Op) -> bool| ops.iter().filter(|o| f(o)).map(|o| o.2).sum::<f64>();
    println!("  {:<40} {:>5} {:>9} {:>9}", "node operation", "count", "total s", "median s");
    kinds.sort_by(|a, b| sum(&|o: &Op| &o.0 == b).total_cmp(&sum(&|o: &Op| &o.0 == a)));
    for k in &kinds {
        let xs: Vec<f64> = ops.iter().filter(|o| &o.0 == k).map(|o| o.2).collect();
        println!("  {:<40} {:>5} {:>9.3} {:>9.4}", k, xs.len(), xs.iter().sum::<f64>(), median(&xs));
    }
    let heavy = |w: &str| w.contains("initdb") || w.contains("pg_basebackup") || w.contains("pg_ctl start");
    let small: Vec<&Op> = ops.iter().filter(|o| !heavy(&o.0)).collect();
    println!(
        "  => {} operations besides initdb / pg_basebackup / pg_ctl start, {:.3} s of their own \
         (several run concurrently on the two standbys)",
        small.len(),
        small.iter().map(|o| o.2).sum::<f64>()
    );
    // The critical path: time in `up` not covered by the heavy work or by waiting.
    let steps = tl.steps();
    let heavy_cover: Vec<(f64, f64)> = ops.iter().filter(|o| heavy(&o.0)).map(|o| (o.1, o.1 + o.2)).collect();
    let wait_cover: Vec<(f64, f64)> = steps.iter().filter(|s| s.1.contains("wait")).map(|s| (s.2, s.2 + s.3)).collect();
    let all: Vec<(f64, f64)> = heavy_cover.iter().chain(wait_cover.iter()).copied().collect();
    println!(
        "  wall time in `up` outside initdb, pg_basebackup, pg_ctl start and the streaming wait: {:.3} s of {:.3} s",
        total - union_len(&all),
        total
    );
    Ok(())
}

fn print_floor_breakdown(title: &str, runs: &[FloorRun]) {
    println!();
    println!("{title}: steps (median s over runs):");
    let names: Vec<&'static str> = runs[0].steps.iter().map(|(n, _)| *n).collect();
    for n in names {
        let xs: Vec<f64> = runs.iter().filter_map(|r| r.steps.iter().find(|(m, _)| *m == n).map(|(_, s)| *s)).collect();
        println!("  {:<24} {:7.3}", n, median(&xs));
    }
}

fn print_pgrepl_breakdown(runs: &[PgreplRun]) {
    println!();
    println!("pgrepl steps (median s over runs; from the Progress callbacks; standbys run in parallel):");
    let mut keys: Vec<(String, String)> = Vec::new();
    for r in runs {
        for (n, s, ..) in &r.steps {
            let k = (n.clone(), s.clone());
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
    }
    for (node, step) in &keys {
        let starts: Vec<f64> = runs.iter().filter_map(|r| r.steps.iter().find(|(n, s, ..)| n == node && s == step).map(|x| x.2)).collect();
        let secs: Vec<f64> = runs.iter().filter_map(|r| r.steps.iter().find(|(n, s, ..)| n == node && s == step).map(|x| x.3)).collect();
        println!("  {:<6} {:<34} {:7.3}   (starts at +{:.3})", node, step, median(&secs), median(&starts));
    }
    let col = |f: fn(&PgreplRun) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    println!("  {:<41} {:7.3}", "open (validate, discover binaries)", col(|r| r.open));
    println!("  {:<41} {:7.3}", "in up but in no step (checks, file writes)", col(|r| r.uncovered));
    println!("  {:<41} {:7.3}   (not in the total)", "destroy", col(|r| r.destroy));
    println!();
    println!("pgrepl UpReport actions of the median run:");
    let mut idx: Vec<usize> = (0..runs.len()).collect();
    idx.sort_by(|a, b| runs[*a].total.total_cmp(&runs[*b].total));
    let mid = &runs[idx[idx.len() / 2]];
    for (node, what, secs) in &mid.actions {
        println!("  {:<6} {:<40} {:7.3}", node, what, secs);
    }
}
