//! `restart`: how long writes stop when pgrepl restarts a cluster, against a plain restart
//! of the primary measured in the same run with the same binaries.
//!
//! One 3-node local cluster (db1 primary, db2 and db3 hot standbys) is deployed through the
//! library. A writer inserts one row per transaction (1 ms pause) over TCP through the
//! cluster's multi-host read-write string, records when every commit is acknowledged and
//! reconnects at once after an error. Before each case `--dirty-mb` MB of rows are
//! inserted (shared_buffers is large enough to keep them), as a production primary has
//! dirty buffers when it is restarted: its shutdown checkpoint has them to write. Per
//! run, each case's write gap is the longest interval between consecutive acknowledged
//! commits around it:
//!
//! 1. **plain restart** (the floor): `pg_ctl restart -m fast -w` of the primary by hand;
//! 2. **restart**: `Deployment::restart` in place (standbys one at a time, then the primary);
//! 3. **restart --rolling**: `Deployment::restart` rolling (standbys, a switchover to a
//!    restarted standby and back): two switchovers instead of one restart.
//!
//! ```text
//! cargo run --release -p pgrepl-benches --bin restart -- [--pg-bin DIR] [--runs N] [--dirty-mb MB]
//! ```
//!
//! Default binaries: the lab's PostgreSQL 16 (`$PGREPL_LAB/pg/16/bin`). Run as root
//! (PostgreSQL then runs as `postgres`). Everything lives in one scratch directory under
//! $TMPDIR; every server started is stopped and the directory removed, also on failure.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use pgrepl_benches::{Scratch, free_ports, median, run_pg};
use pgrepl_core::deploy::{Deployment, NoProgress};
use pgrepl_core::discovery::{DiscoveryOptions, discover};
use pgrepl_core::local::LocalBackend;
use pgrepl_core::open::OpenOptions;
use pgrepl_core::plan::{RestartMode, RestartRequest};
use pgrepl_core::spec::{LocalProviderSpec, ProviderSpec};
use pgrepl_core::{ClusterSpec, NodeSpec};

const APP_USER: &str = "bench_app";
const STEP_LIMIT: Duration = Duration::from_secs(300);
const WRITE_PAUSE: Duration = Duration::from_millis(1);
/// Quiet time before and after each case.
const SETTLE: Duration = Duration::from_secs(1);
/// How long writes may take to resume after a case before the run fails.
const RESUME_DEADLINE: Duration = Duration::from_secs(60);

#[derive(Parser)]
struct Args {
    /// Server binaries (default: the lab's PostgreSQL 16).
    #[arg(long)]
    pg_bin: Option<PathBuf>,
    /// Runs (default 3).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// MB of rows written just before each case (dirty buffers for the shutdown checkpoint).
    #[arg(long, default_value_t = 256)]
    dirty_mb: u32,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match bench(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("restart bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bench(args: &Args) -> Result<(), String> {
    let lab = std::env::var_os("PGREPL_LAB").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/opt/pgrepl-lab"));
    let pg_bin = args.pg_bin.clone().unwrap_or_else(|| lab.join("pg/16/bin"));
    let b = discover(&DiscoveryOptions { pg_bin: Some(pg_bin), pg_client_bin: None, major: None })
        .map_err(|e| format!("{e} (install the test lab with scripts/lab/install.sh, or pass --pg-bin)"))?;
    let env: Vec<(String, String)> = b.lib_dir.iter().map(|l| ("LD_LIBRARY_PATH".to_string(), l.clone())).collect();
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let scratch = Scratch::new("pgrepl-bench-restart", Path::new(&b.bin_dir), &env_ref)?;
    let port = free_ports(23000 + (std::process::id() % 900) as u16 * 10, 3).ok_or("no 3 free ports on 127.0.0.1")?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| format!("tokio runtime: {e}"))?;
    let work = scratch.path.join("cluster");
    let r = rt.block_on(async {
        let spec = ClusterSpec::builder("benchrestart")
            .postgres(b.major)
            .pg_bin(&b.bin_dir)
            .provider(ProviderSpec::Local(LocalProviderSpec { work_dir: Some(work.clone()), os_user: None, base_port: Some(port) }))
            .setting("shared_buffers", "1GB")
            .setting("max_wal_size", "4GB")
            .node(NodeSpec::primary("db1"))
            .node(NodeSpec::standby("db2"))
            .node(NodeSpec::standby("db3"))
            .into_spec();
        let opts = OpenOptions::default().with_pg_bin(&b.bin_dir).with_pg_client_bin(&b.client_bin_dir).with_work_dir(&work);
        let d = Deployment::open(&spec, &opts, &[&LocalBackend]).await.map_err(|e| format!("open: {e}"))?;
        d.up(&NoProgress).await.map_err(|e| format!("up: {e}"))?;
        let r = measure(&b.bin_dir, &b.client_bin_dir, &env_ref, &d, &work, args, port).await;
        println!("(PostgreSQL {}, binaries in {})", b.major, b.bin_dir);
        let _ = d.destroy(&NoProgress).await;
        r
    });
    drop(rt);
    r
}

/// One acknowledged commit's time, and the writer's stop flag.
struct Writer {
    acks: Arc<Mutex<Vec<Instant>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    fn start(cfg: tokio_postgres::Config) -> Writer {
        let (acks, stop) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicBool::new(false)));
        let (a, s) = (acks.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut client: Option<tokio_postgres::Client> = None;
            // Bounded: stops when asked, or after an hour.
            let end = Instant::now() + Duration::from_secs(3600);
            while !s.load(Ordering::Relaxed) && Instant::now() < end {
                let Some(c) = client.as_ref() else {
                    match tokio::time::timeout(Duration::from_secs(10), cfg.connect(tokio_postgres::NoTls)).await {
                        Ok(Ok((c, conn))) => {
                            tokio::spawn(conn);
                            client = Some(c);
                        }
                        _ => tokio::time::sleep(Duration::from_millis(2)).await,
                    }
                    continue;
                };
                match tokio::time::timeout(Duration::from_secs(5), c.execute("INSERT INTO bench_writes DEFAULT VALUES", &[])).await {
                    Ok(Ok(_)) => a.lock().unwrap().push(Instant::now()),
                    _ => client = None,
                }
                tokio::time::sleep(WRITE_PAUSE).await;
            }
        });
        Writer { acks, stop, task }
    }

    /// The longest interval between acknowledged commits that overlaps [from, to].
    fn gap(&self, from: Instant, to: Instant) -> f64 {
        let acks = self.acks.lock().unwrap();
        acks.windows(2).filter(|w| w[1] >= from && w[0] <= to).map(|w| (w[1] - w[0]).as_secs_f64()).fold(0.0, f64::max)
    }

    async fn wait_resumed(&self, after: Instant) -> Result<(), String> {
        let t = Instant::now();
        while t.elapsed() < RESUME_DEADLINE {
            if self.acks.lock().unwrap().last().is_some_and(|a| *a > after) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err("writes did not resume within 60 s".into())
    }
}

async fn measure(bin: &str, client: &str, env: &[(&str, &str)], d: &Deployment, work: &Path, args: &Args, port: u16) -> Result<(), String> {
    let runs = args.runs;
    let password = format!("bench-{}", std::process::id());
    let socket = work.join("db1").join("run");
    let sql = format!(
        "CREATE ROLE {APP_USER} LOGIN PASSWORD '{password}'; CREATE TABLE bench_writes (id bigserial PRIMARY KEY, at timestamptz DEFAULT clock_timestamp()); \
         GRANT INSERT ON bench_writes TO {APP_USER}; GRANT USAGE ON SEQUENCE bench_writes_id_seq TO {APP_USER}; \
         CREATE TABLE bench_dirty (i int, pad text);"
    );
    let psql = Path::new(client).join("psql");
    let sock = socket.to_string_lossy().into_owned();
    run_pg(&psql, &["-X", "-h", &sock, "-p", &port.to_string(), "-d", "postgres", "-c", &sql], env, STEP_LIMIT)
        .map_err(|e| format!("create the application role: {e}"))?;
    let url = d.status().await.connections.read_write;
    let mut cfg: tokio_postgres::Config = url.parse().map_err(|e| format!("{url}: {e}"))?;
    cfg.user(APP_USER).password(password.as_str());
    let w = Writer::start(cfg);
    tokio::time::sleep(SETTLE).await;
    println!("restart bench: 3 local nodes, one writer through {url}, {} MB of rows written before each case", args.dirty_mb);
    // ~1 kB rows: MB * 1000 of them.
    let dirty_sql = format!(
        "TRUNCATE bench_dirty; INSERT INTO bench_dirty SELECT g, repeat('x', 1000) FROM generate_series(1, {}) g;",
        args.dirty_mb as u64 * 1000
    );
    let dirty = || run_pg(&psql, &["-X", "-h", &sock, "-p", &port.to_string(), "-d", "postgres", "-c", &dirty_sql], env, STEP_LIMIT);
    let pg_ctl = Path::new(bin).join("pg_ctl");
    let data = work.join("db1").join("data").to_string_lossy().into_owned();
    let log = work.join("db1").join("log").join("postgresql.log").to_string_lossy().into_owned();
    let (mut plain, mut in_place, mut rolling) = (Vec::new(), Vec::new(), Vec::new());
    for run in 1..=runs {
        dirty().map_err(|e| format!("write the rows: {e}"))?;
        let t = Instant::now();
        // -l: the server's output goes to its log, not to this command's pipe.
        run_pg(&pg_ctl, &["-D", &data, "-l", &log, "-m", "fast", "-w", "-t", "120", "restart"], env, STEP_LIMIT)?;
        w.wait_resumed(t).await?;
        tokio::time::sleep(SETTLE).await;
        plain.push(w.gap(t, Instant::now()));

        dirty().map_err(|e| format!("write the rows: {e}"))?;
        let t = Instant::now();
        d.restart(&RestartRequest::all(RestartMode::InPlace), &NoProgress).await.map_err(|e| format!("restart: {e}"))?;
        w.wait_resumed(Instant::now()).await?;
        tokio::time::sleep(SETTLE).await;
        let total_in_place = t.elapsed().as_secs_f64();
        in_place.push(w.gap(t, Instant::now()));

        dirty().map_err(|e| format!("write the rows: {e}"))?;
        let t = Instant::now();
        let r = d
            .restart(&RestartRequest::all(RestartMode::Rolling { switch_back: true }), &NoProgress)
            .await
            .map_err(|e| format!("restart --rolling: {e}"))?;
        w.wait_resumed(Instant::now()).await?;
        let total_rolling = t.elapsed().as_secs_f64();
        tokio::time::sleep(SETTLE).await;
        rolling.push(w.gap(t, Instant::now()));
        println!(
            "run {run}: longest write gap: plain restart of the primary {:.3} s | pgrepl restart {:.3} s ({:.1} s in all) | restart --rolling {:.3} s ({:.1} s in all; switchovers reported {:.3} s unavailable)",
            plain[run - 1],
            in_place[run - 1],
            total_in_place,
            rolling[run - 1],
            total_rolling,
            r.timings.write_unavailable_seconds
        );
    }
    w.stop.store(true, Ordering::Relaxed);
    let _ = w.task.await;
    let (p, i, r) = (median(&plain), median(&in_place), median(&rolling));
    println!(
        "median longest write gap over {runs} run(s): plain restart of the primary (floor) {p:.3} s; pgrepl restart {i:.3} s ({:.2}x); restart --rolling {r:.3} s ({:.2}x)",
        i / p,
        r / p
    );
    Ok(())
}
