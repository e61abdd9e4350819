//! `failover`: how long writes stop when pgrepl moves the primary role, against the
//! physical floor measured in the same run with the same binaries.
//!
//! One 3-node local cluster (db1 primary, db2 and db3 hot standbys) is deployed through
//! the library (`Deployment::open` + `Deployment::up`). A writer task inserts one row
//! per transaction in a tight loop (1 ms pause) over TCP through the cluster's libpq
//! multi-host read-write string (`target_session_attrs=read-write`), records when every
//! commit is acknowledged, and reconnects at once after an error. Per run:
//!
//! 1. **switchover** between db1 and db2 (back and forth) under that load: the write gap is
//!    the longest interval between consecutive acknowledged commits around the call.
//! 2. **failover**: `kill -9` of the primary's postmaster (the PID on the first line of its
//!    own `postmaster.pid`, nothing else), then `Deployment::failover` at once, repeated
//!    every 20 ms while pgrepl refuses; timed from the accepted call (and from the first
//!    call, and from the kill) to the first write acknowledged by the new primary's port
//!    (the killed postmaster's backends can still acknowledge a commit for a few ms).
//!    Recorded with it: what the killed postmaster left behind (children, its PID, its
//!    port), each refusal, `pg_ctl status` at the first refusal, the whole
//!    `FailoverReport`, acknowledged commits the new primary lacks, `pg_waldump` of the
//!    old primary's WAL past the fork and both `pg_controldata`. Then `rejoin` of the old
//!    primary (timed separately). After the N runs, one more failover with `force` right
//!    after the kill (not in the medians).
//! 3. **floor**, by hand on a separate primary + standby pair (same binaries, same settings
//!    that matter: hot standby, `wal_retrieve_retry_interval = 1s`, checksums): the primary
//!    is stopped cleanly, the standby has replayed everything, then `pg_ctl promote -w` on
//!    the standby until an INSERT on it commits (a fresh TCP connection, same client
//!    library, same role); meanwhile a second writer, the same code as the first, on the
//!    pair's own multi-host read-write string, gives "promote command to first
//!    acknowledged write" as the cluster's writer sees it. The old primary then restarts as
//!    a standby of the new one, so the pair swaps roles every run.
//!
//! ```text
//! cargo run --release -p pgrepl-benches --bin failover -- [--pg-bin DIR] [--pg-client-bin DIR] [--runs N]
//! ```
//!
//! Default binaries: the lab's PostgreSQL 15 (`$PGREPL_LAB/pg/15/bin`, lab at
//! /opt/pgrepl-lab), the major the peers were measured on. Run as root (PostgreSQL then
//! runs as `postgres`). Everything lives in one scratch directory under $TMPDIR (mode
//! 0755); every server started is stopped and the directory removed, also on failure.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgrepl_benches::{Scratch, chown_pg, free_ports, median, mkdir_pg, pg_user, run_pg};
use pgrepl_core::deploy::{Deployment, NoProgress, Progress};
use pgrepl_core::discovery::{DiscoveryOptions, discover};
use pgrepl_core::ha::FailoverOptions;
use pgrepl_core::layout::Binaries;
use pgrepl_core::local::LocalBackend;
use pgrepl_core::open::OpenOptions;
use pgrepl_core::spec::{LocalProviderSpec, ProviderSpec};
use pgrepl_core::version::RecoveryStyle;
use pgrepl_core::{ClusterSpec, NodeSpec};
use tokio_postgres::NoTls;

/// The application role the writers use (password authentication over TCP).
const APP_USER: &str = "bench_app";
/// Limit of one command (initdb, pg_basebackup, pg_ctl, psql).
const STEP_LIMIT: Duration = Duration::from_secs(300);
/// How long the cluster may take to be healthy again (every standby streaming).
const HEALTHY_DEADLINE: Duration = Duration::from_secs(120);
/// How long writes may take to resume after an operation.
const RESUME_DEADLINE: Duration = Duration::from_secs(60);
/// How long failover may keep refusing after the kill before the run fails.
const REFUSAL_DEADLINE: Duration = Duration::from_secs(60);
/// Pause between failover attempts while pgrepl refuses.
const RETRY_PAUSE: Duration = Duration::from_millis(20);
/// Quiet time before each operation (its longest gap is the noise level).
const BASELINE: Duration = Duration::from_secs(1);
/// Writer: pause between commits, limits of one connect and one INSERT, total lifetime.
const WRITE_PAUSE: Duration = Duration::from_millis(1);
const CONNECT_LIMIT: Duration = Duration::from_secs(10);
const INSERT_LIMIT: Duration = Duration::from_secs(5);
const WRITER_LIFETIME: Duration = Duration::from_secs(3 * 3600);
/// The insert: one row per transaction; the id and the port of the server that took it.
const INSERT_SQL: &str = "INSERT INTO bench_writes DEFAULT VALUES RETURNING id, inet_server_port()";
const TABLE_SQL: &str = "CREATE TABLE bench_writes (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp());";
/// Peers' switchover write gap on 3 local PG15 nodes (the issue): Patroni, repmgr,
/// pg_auto_failover alike.
const PEERS_SWITCHOVER_GAP: (f64, f64) = (1.34, 1.46);

struct Args {
    pg_bin: PathBuf,
    pg_client_bin: Option<PathBuf>,
    runs: usize,
}

fn parse_args() -> Result<Args, String> {
    use clap::Parser;
    let cli = pgrepl_benches::BenchArgs::parse();
    Ok(Args { pg_bin: cli.pg_bin_or_lab("15"), pg_client_bin: cli.pg_client_bin, runs: cli.runs.into() })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match bench(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("failover: {e}");
            ExitCode::FAILURE
        }
    }
}

// =======================================================================================
// The bench

/// Everything the binaries and scratch directory give the parts of the bench.
struct Ctx {
    b: Binaries,
    env: Vec<(String, String)>,
    scratch: Scratch,
    app_password: String,
}

impl Ctx {
    fn server(&self, tool: &str) -> PathBuf {
        Path::new(&self.b.bin_dir).join(tool)
    }
    fn client(&self, tool: &str) -> PathBuf {
        Path::new(&self.b.client_bin_dir).join(tool)
    }

    /// Runs a server or client tool as the server's OS user, off the async threads.
    async fn run(&self, program: PathBuf, args: Vec<String>, extra_env: Vec<(String, String)>) -> Result<String, String> {
        let mut env = self.env.clone();
        env.extend(extra_env);
        tokio::task::spawn_blocking(move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            let e: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            run_pg(&program, &a, &e, STEP_LIMIT).map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        })
        .await
        .map_err(|e| format!("task: {e}"))?
    }

    /// `sql` through psql over the Unix socket in `socket_dir` as the superuser.
    async fn psql(&self, socket_dir: &Path, port: u16, sql: &str) -> Result<String, String> {
        let args = ["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", &s(socket_dir), "-p", &port.to_string(), "-U", "postgres"];
        let mut a: Vec<String> = args.iter().map(|x| x.to_string()).collect();
        a.extend(["-d".into(), "postgres".into(), "-c".into(), sql.to_string()]);
        self.run(self.client("psql"), a, Vec::new()).await
    }
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn bench(args: &Args) -> Result<(), String> {
    let b = discover(&DiscoveryOptions { pg_bin: Some(args.pg_bin.clone()), pg_client_bin: args.pg_client_bin.clone(), major: None })
        .map_err(|e| format!("{e} (install the test lab with scripts/lab/install.sh, or pass --pg-bin)"))?;
    if b.major.caps().recovery != RecoveryStyle::StandbySignal {
        return Err(format!("PostgreSQL {} : the floor of this bench is written for 12+ (standby.signal)", b.major));
    }
    let env: Vec<(String, String)> = b.lib_dir.iter().map(|l| ("LD_LIBRARY_PATH".to_string(), l.clone())).collect();
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let scratch = Scratch::new("pgrepl-bench-failover", Path::new(&b.bin_dir), &env_ref)?;
    let start = 21000 + (std::process::id() % 900) as u16 * 10;
    let pg_port = free_ports(start, 3).ok_or("no 3 free ports on 127.0.0.1")?;
    let floor_port = free_ports(pg_port + 4, 2).ok_or("no 2 free ports on 127.0.0.1")?;
    let ctx = Ctx { b, env, scratch, app_password: format!("bench-app-{}", std::process::id()) };

    print_header(&ctx.b, args.runs);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| format!("tokio runtime: {e}"))?;
    let results = rt.block_on(run_all(&ctx, args.runs, pg_port, floor_port));
    drop(rt);
    let results = results?;
    print_summary(&results);
    // `ctx.scratch` drops here: anything still running below it is stopped.
    Ok(())
}

struct Results {
    switchovers: Vec<SwRun>,
    failovers: Vec<FoRun>,
    forced: Option<FoRun>,
    floors: Vec<FloorRun>,
    writer_stats: String,
}

async fn run_all(ctx: &Ctx, runs: usize, pg_port: u16, floor_port: u16) -> Result<Results, String> {
    let work = ctx.scratch.path.join("cluster");
    let mut spec = ClusterSpec::builder("bench")
        .postgres(ctx.b.major)
        .pg_bin(&ctx.b.bin_dir)
        .provider(ProviderSpec::Local(LocalProviderSpec { work_dir: Some(work.clone()), os_user: None, base_port: Some(pg_port) }))
        .node(NodeSpec::primary("db1"))
        .node(NodeSpec::standby("db2"))
        .node(NodeSpec::standby("db3"))
        .into_spec();
    spec.pg_client_bin = Some(PathBuf::from(&ctx.b.client_bin_dir));
    let opts = OpenOptions::default().with_pg_bin(&ctx.b.bin_dir).with_pg_client_bin(&ctx.b.client_bin_dir).with_work_dir(&work);
    let d = Deployment::open(&spec, &opts, &[&LocalBackend]).await.map_err(|e| format!("open: {e}"))?;
    let t = Instant::now();
    let up = d.up(&NoProgress).await;
    println!(
        "cluster:  pgrepl `up` of db1 + db2 + db3 in {:.3} s (ports {pg_port}-{}), work dir {}",
        t.elapsed().as_secs_f64(),
        pg_port + 2,
        work.display()
    );
    let floor_dir = ctx.scratch.path.join("floor");
    let r = match up {
        Ok(_) => measure(ctx, &d, &work, runs, &floor_dir, floor_port).await,
        Err(e) => Err(format!("up: {e}")),
    };
    // Clean up: the floor pair, then the cluster (through pgrepl; by hand if that fails).
    ctx.scratch.stop_servers_under(&floor_dir);
    let destroyed = d.destroy(&NoProgress).await;
    if destroyed.is_err() {
        ctx.scratch.stop_servers_under(&work);
    }
    let r = r?;
    destroyed.map_err(|e| format!("destroy: {e}"))?;
    Ok(r)
}

async fn measure(ctx: &Ctx, d: &Deployment, work: &Path, runs: usize, floor_dir: &Path, floor_port: u16) -> Result<Results, String> {
    // The application's role and table, on the primary (they replicate).
    let c = d.current_cluster().await.map_err(|e| e.to_string())?;
    let p = c.primary();
    let sql = format!(
        "CREATE ROLE {APP_USER} LOGIN PASSWORD '{}'; {TABLE_SQL} GRANT SELECT, INSERT ON bench_writes TO {APP_USER}; \
         GRANT USAGE ON SEQUENCE bench_writes_id_seq TO {APP_USER};",
        ctx.app_password
    );
    ctx.psql(&work.join(&p.name).join("run"), p.port, &sql).await.map_err(|e| format!("create the application role: {e}"))?;
    let url = d.status().await.connections.read_write;
    let mut cfg: tokio_postgres::Config = url.parse().map_err(|e| format!("{url}: {e}"))?;
    cfg.user(APP_USER).password(ctx.app_password.as_str()).application_name("pgrepl-bench-writer");
    println!("writer:   {url} (user {APP_USER}, password auth), one row per transaction, {} ms pause", WRITE_PAUSE.as_millis());

    let floor = FloorPair::setup(ctx, floor_dir, floor_port).await.map_err(|e| format!("floor pair: {e}"))?;
    let mut fcfg: tokio_postgres::Config = floor.url().parse().map_err(|e| format!("floor url: {e}"))?;
    fcfg.user(APP_USER).password(ctx.app_password.as_str()).application_name("pgrepl-bench-floor-writer");
    println!(
        "floor:    by hand, {} (primary) and {} (standby) on ports {floor_port}-{}, writer on {}",
        floor.nodes[0].name,
        floor.nodes[1].name,
        floor_port + 1,
        floor.url()
    );
    println!();

    let writer = Writer::start(cfg.clone(), false);
    let fwriter = Writer::start(fcfg, true);
    let mut out = Results { switchovers: Vec::new(), failovers: Vec::new(), forced: None, floors: Vec::new(), writer_stats: String::new() };
    let mut floor = floor;
    let r: Result<(), String> = async {
        for i in 0..runs {
            writer.set_paused(false);
            let sw = switchover_once(d, &writer).await.map_err(|e| format!("run {}: switchover: {e}", i + 1))?;
            sw.print(i);
            out.switchovers.push(sw);
            let fo = failover_once(ctx, d, &writer, work, &cfg, false).await.map_err(|e| format!("run {}: failover: {e}", i + 1))?;
            fo.print(i);
            out.failovers.push(fo);
            // The cluster idles while the floor is measured.
            writer.set_paused(true);
            let fl = floor.once(ctx, &fwriter).await.map_err(|e| format!("run {}: floor: {e}", i + 1))?;
            fl.print(i);
            out.floors.push(fl);
            println!();
        }
        // Once more with --force right after the kill (not in the medians): does it
        // shorten the refusal window?
        writer.set_paused(false);
        println!("one more failover, with --force (FailoverOptions.force) right after kill -9; not in the medians:");
        let fo = failover_once(ctx, d, &writer, work, &cfg, true).await.map_err(|e| format!("forced failover: {e}"))?;
        fo.print(runs);
        out.forced = Some(fo);
        println!();
        Ok(())
    }
    .await;
    out.writer_stats = format!("cluster writer: {}; floor writer: {}", writer.stats(), fwriter.stats());
    writer.stop().await;
    fwriter.stop().await;
    r.map(|()| out)
}

// =======================================================================================
// The writer

#[derive(Debug, Clone, Copy)]
struct Ack {
    at: Instant,
    id: i64,
    port: i32,
}

/// Consecutive identical errors, collapsed.
#[derive(Debug, Clone)]
struct ErrRun {
    first: Instant,
    last: Instant,
    what: String,
    count: u32,
}

#[derive(Default)]
struct Log {
    acks: Vec<Ack>,
    errors: Vec<ErrRun>,
    connects: u64,
}

impl Log {
    fn error(&mut self, what: String) {
        let now = Instant::now();
        match self.errors.last_mut() {
            Some(e) if e.what == what => {
                e.last = now;
                e.count += 1;
            }
            _ => self.errors.push(ErrRun { first: now, last: now, what, count: 1 }),
        }
    }
}

/// Inserts continuously through a multi-host read-write connection string; records the
/// acknowledgement time of every commit; reconnects at once after any error.
struct Writer {
    log: Arc<Mutex<Log>>,
    stop: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    fn start(cfg: tokio_postgres::Config, paused: bool) -> Writer {
        let log = Arc::new(Mutex::new(Log::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let paused = Arc::new(AtomicBool::new(paused));
        let task = tokio::spawn(writer_loop(cfg, log.clone(), stop.clone(), paused.clone()));
        Writer { log, stop, paused, task }
    }

    fn set_paused(&self, p: bool) {
        self.paused.store(p, Ordering::SeqCst);
    }

    fn acks(&self) -> Vec<Ack> {
        self.log.lock().expect("not poisoned").acks.clone()
    }

    fn errors_between(&self, a: Instant, b: Instant) -> Vec<ErrRun> {
        self.log.lock().expect("not poisoned").errors.iter().filter(|e| e.last >= a && e.first <= b).cloned().collect()
    }

    /// The first acknowledgement after `t`, waiting up to `limit` for it.
    async fn ack_after(&self, t: Instant, limit: Duration) -> Option<Ack> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(a) = self.log.lock().expect("not poisoned").acks.iter().rev().take_while(|a| a.at > t).last().copied() {
                return Some(a);
            }
            if Instant::now() > deadline || self.task.is_finished() {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn stats(&self) -> String {
        let l = self.log.lock().expect("not poisoned");
        format!(
            "{} acknowledged commits, {} connections, {} errors",
            l.acks.len(),
            l.connects,
            l.errors.iter().map(|e| e.count as u64).sum::<u64>()
        )
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = tokio::time::timeout(INSERT_LIMIT + CONNECT_LIMIT, self.task).await;
    }
}

async fn writer_loop(cfg: tokio_postgres::Config, log: Arc<Mutex<Log>>, stop: Arc<AtomicBool>, paused: Arc<AtomicBool>) {
    let end = Instant::now() + WRITER_LIFETIME;
    let mut conn: Option<(tokio_postgres::Client, tokio_postgres::Statement)> = None;
    while !stop.load(Ordering::SeqCst) && Instant::now() < end {
        if paused.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        let (client, stmt) = match conn.take() {
            Some(c) => c,
            None => match tokio::time::timeout(CONNECT_LIMIT, connect(&cfg)).await {
                Ok(Ok(c)) => {
                    log.lock().expect("not poisoned").connects += 1;
                    c
                }
                Ok(Err(e)) => {
                    log.lock().expect("not poisoned").error(format!("connect: {}", pg_err(&e)));
                    tokio::time::sleep(WRITE_PAUSE).await;
                    continue;
                }
                Err(_) => {
                    log.lock().expect("not poisoned").error("connect: timed out".into());
                    continue;
                }
            },
        };
        match tokio::time::timeout(INSERT_LIMIT, client.query_one(&stmt, &[])).await {
            Ok(Ok(row)) => {
                let at = Instant::now();
                let (id, port): (i64, Option<i32>) = (row.get(0), row.get(1));
                log.lock().expect("not poisoned").acks.push(Ack { at, id, port: port.unwrap_or(0) });
                conn = Some((client, stmt));
                tokio::time::sleep(WRITE_PAUSE).await;
            }
            // The connection is dropped; the next turn reconnects at once.
            Ok(Err(e)) => log.lock().expect("not poisoned").error(format!("insert: {}", pg_err(&e))),
            Err(_) => log.lock().expect("not poisoned").error("insert: timed out".into()),
        }
    }
}

async fn connect(cfg: &tokio_postgres::Config) -> Result<(tokio_postgres::Client, tokio_postgres::Statement), tokio_postgres::Error> {
    let (client, connection) = cfg.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let stmt = client.prepare(INSERT_SQL).await?;
    Ok((client, stmt))
}

fn pg_err(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} {}", db.code().code(), db.message());
    }
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

/// The longest interval between consecutive acknowledgements from the last one at or
/// before `from` to the first one at or after `to`: (seconds, its start, its end).
fn longest_gap(acks: &[Ack], from: Instant, to: Instant) -> Option<(f64, Instant, Instant)> {
    let lo = acks.iter().rposition(|a| a.at <= from).unwrap_or(0);
    let hi = acks.iter().position(|a| a.at >= to)?;
    acks[lo..=hi].windows(2).map(|w| (w[1].at.duration_since(w[0].at).as_secs_f64(), w[0].at, w[1].at)).max_by(|a, b| a.0.total_cmp(&b.0))
}

/// The longest interval between acknowledgements within `[from, to]` (the noise level).
fn quiet_gap(acks: &[Ack], from: Instant, to: Instant) -> f64 {
    let xs: Vec<Instant> = acks.iter().filter(|a| a.at >= from && a.at <= to).map(|a| a.at).collect();
    xs.windows(2).map(|w| w[1].duration_since(w[0]).as_secs_f64()).fold(0.0, f64::max)
}

fn error_summary(errs: &[ErrRun], t0: Instant) -> Vec<String> {
    errs.iter()
        .map(|e| {
            format!(
                "{:+.3}..{:+.3} s  {} x {}",
                secs_between(t0, e.first),
                secs_between(t0, e.last),
                e.count,
                e.what.chars().take(150).collect::<String>()
            )
        })
        .collect()
}

/// `b - a` in seconds, negative when `b` is earlier.
fn secs_between(a: Instant, b: Instant) -> f64 {
    if b >= a { b.duration_since(a).as_secs_f64() } else { -a.duration_since(b).as_secs_f64() }
}

// =======================================================================================
// Cluster helpers

/// Waits until pgrepl's status says the cluster is healthy (one primary, every standby
/// streaming).
async fn wait_healthy(d: &Deployment, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        let st = d.status().await;
        if st.healthy() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("the cluster was not healthy within {limit:?}: {}", st.problems.join("; ")));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Healthy, writes flowing, then a quiet second (its gap is the noise level).
async fn settle(d: &Deployment, w: &Writer) -> Result<(), String> {
    wait_healthy(d, HEALTHY_DEADLINE).await?;
    w.ack_after(Instant::now(), RESUME_DEADLINE).await.ok_or("the writer acknowledged nothing")?;
    tokio::time::sleep(BASELINE).await;
    Ok(())
}

/// One progress event: (seconds from t0, node, step, outcome once finished).
type Event = (f64, String, String, Option<String>);

/// Records when each step of an operation starts and ends, from `t0`.
struct Timeline {
    t0: Instant,
    events: Mutex<Vec<Event>>,
}

impl Timeline {
    fn new(t0: Instant) -> Timeline {
        Timeline { t0, events: Mutex::new(Vec::new()) }
    }
    fn lines(&self) -> Vec<String> {
        self.events
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|(at, node, step, outcome)| match outcome {
                None => format!("{at:+.3} s  {node}: {step} ..."),
                Some(o) => format!("{at:+.3} s  {node}: {step} -> {o}"),
            })
            .collect()
    }
}

impl Progress for Timeline {
    fn started(&self, node: &str, step: &str) {
        let at = self.t0.elapsed().as_secs_f64();
        self.events.lock().expect("not poisoned").push((at, node.into(), step.into(), None));
    }
    fn finished(&self, node: &str, step: &str, outcome: &str) {
        let at = self.t0.elapsed().as_secs_f64();
        self.events.lock().expect("not poisoned").push((at, node.into(), step.into(), Some(outcome.into())));
    }
}

fn indent(text: &str, by: &str) -> String {
    text.lines().map(|l| format!("{by}{l}\n")).collect()
}

// =======================================================================================
// Switchover

struct SwRun {
    from: String,
    to: String,
    /// The longest gap in acknowledged writes around the call.
    gap: f64,
    /// Where it started and ended, from the start of the call.
    gap_from: f64,
    gap_to: f64,
    /// The whole call.
    call: f64,
    /// pgrepl's own figure (SwitchoverReport.timings.write_unavailable_seconds).
    reported: f64,
    /// The longest gap in the quiet second before.
    baseline: f64,
    report: String,
    errors: Vec<String>,
}

impl SwRun {
    fn print(&self, i: usize) {
        println!(
            "run {} switchover {} -> {}: write gap {:.3} s (at +{:.3}..+{:.3} s of the call), pgrepl says writes unavailable {:.3} s, call {:.3} s, quiet-second gap {:.3} s",
            i + 1,
            self.from,
            self.to,
            self.gap,
            self.gap_from,
            self.gap_to,
            self.reported,
            self.call,
            self.baseline
        );
        print!("{}", indent(&self.report, "    | "));
        for e in &self.errors {
            println!("    writer {e}");
        }
    }
}

async fn switchover_once(d: &Deployment, w: &Writer) -> Result<SwRun, String> {
    let from = d.current_cluster().await.map_err(|e| e.to_string())?.primary().name.clone();
    let to = if from == "db1" { "db2" } else { "db1" }.to_string();
    settle(d, w).await?;
    let t_call = Instant::now();
    let tl = Timeline::new(t_call);
    let r = d.switchover(&to, &tl).await;
    let t_ret = Instant::now();
    let rep = r.map_err(|e| format!("{from} -> {to}: {e}\n{}", tl.lines().join("\n")))?;
    w.ack_after(t_ret, RESUME_DEADLINE)
        .await
        .ok_or_else(|| format!("no write acknowledged within {RESUME_DEADLINE:?} after the switchover"))?;
    let acks = w.acks();
    let (gap, a, b) = longest_gap(&acks, t_call, t_ret).ok_or("no acknowledgements around the switchover")?;
    Ok(SwRun {
        from,
        to,
        gap,
        gap_from: secs_between(t_call, a),
        gap_to: secs_between(t_call, b),
        call: secs_between(t_call, t_ret),
        reported: rep.timings.write_unavailable_seconds,
        baseline: quiet_gap(&acks, t_call - BASELINE, t_call),
        report: rep.to_string(),
        errors: error_summary(&w.errors_between(t_call, b), t_call),
    })
}

// =======================================================================================
// Failover

/// What the killed postmaster left behind, from the kill.
#[derive(Default)]
struct Linger {
    /// The postmaster's parent before the kill (who reaps it): "PID (name)".
    parent: String,
    children: usize,
    /// Until no child of the killed postmaster ran any more.
    children_gone: Option<f64>,
    /// Until its own PID was gone (reaped).
    postmaster_gone: Option<f64>,
    postmaster_zombie: bool,
    /// Until its TCP port refused connections.
    port_closed: Option<f64>,
}

struct FoRun {
    old: String,
    new: String,
    /// Every call that failed: (start after the kill, end after the kill, error).
    refusals: Vec<(f64, f64, String)>,
    /// At the first refusal: the killed PID's state and what `pg_ctl status` said.
    probe: Option<String>,
    /// The accepted call's start, after the kill.
    accepted_at: f64,
    /// The accepted call's start to the first acknowledged write.
    cmd_to_write: f64,
    /// The first call's start to the first acknowledged write.
    first_call_to_write: f64,
    kill_to_write: f64,
    /// The accepted call, whole.
    call: f64,
    reported_available: f64,
    fence: f64,
    observe: f64,
    promote: f64,
    linger: Linger,
    /// Commits acknowledged in the 10 s before the new primary's first write; of them,
    /// those acknowledged by the killed primary after the kill, and those the new primary
    /// lacks.
    acked_checked: usize,
    acked_after_kill: usize,
    missing: Option<Vec<String>>,
    /// pg_waldump of the old primary's WAL from the new timeline's start.
    waldump: Option<String>,
    /// Both control files before the rejoin.
    control: String,
    report: String,
    steps: Vec<String>,
    rejoin: f64,
    rejoin_report: String,
    errors: Vec<String>,
}

impl FoRun {
    fn print(&self, i: usize) {
        println!(
            "run {} failover {} -> {}: command -> first write {:.3} s (first call {:.3} s, kill {:.3} s); {} refused call(s) before, accepted call at +{:.3} s after the kill; call {:.3} s; pgrepl says writes accepted {:.3} s (observe {:.3}, fence {:.3}, promote {:.3})",
            i + 1,
            self.old,
            self.new,
            self.cmd_to_write,
            self.first_call_to_write,
            self.kill_to_write,
            self.refusals.len(),
            self.accepted_at,
            self.call,
            self.reported_available,
            self.observe,
            self.fence,
            self.promote
        );
        let l = &self.linger;
        let f = |x: Option<f64>| x.map(|v| format!("{v:.3} s")).unwrap_or_else(|| "not within the watch".into());
        println!(
            "    after kill -9: {} children of the postmaster ran on for {}; postmaster PID gone after {}{}, its parent {}; port closed after {}",
            l.children,
            f(l.children_gone),
            f(l.postmaster_gone),
            if l.postmaster_zombie { " (a zombie until reaped)" } else { "" },
            l.parent,
            f(l.port_closed)
        );
        let mut dedup: Vec<(String, usize, f64, f64)> = Vec::new();
        for (a, b, e) in &self.refusals {
            match dedup.iter_mut().find(|d| d.0 == *e) {
                Some(d) => {
                    d.1 += 1;
                    d.3 = *b;
                }
                None => dedup.push((e.clone(), 1, *a, *b)),
            }
        }
        for (e, n, a, b) in dedup {
            println!("    refused {n} x (+{a:.3}..+{b:.3} s after the kill): {e}");
        }
        if let Some(p) = &self.probe {
            println!("    at the first refusal, {p}");
        }
        println!(
            "    commits acknowledged in this run before the new primary's first write: {} ({} of them by the killed primary's backends after the kill); missing on the new primary: {}",
            self.acked_checked,
            self.acked_after_kill,
            self.missing.as_ref().map(|m| m.len().to_string()).unwrap_or_else(|| "unknown (query failed)".into())
        );
        for m in self.missing.iter().flatten().take(10) {
            println!("      missing: {m}");
        }
        if let Some(wd) = &self.waldump {
            println!("    pg_waldump of {}'s WAL from the new timeline's start: {wd}", self.old);
        }
        println!("    steps of the accepted call (from the kill):");
        for s in &self.steps {
            println!("      {s}");
        }
        print!("{}", indent(&self.report, "    | "));
        println!("    before the rejoin, pg_controldata: {}", self.control);
        println!("    rejoin {} (not timed into the failover): {:.3} s", self.old, self.rejoin);
        print!("{}", indent(&self.rejoin_report, "    | "));
        for e in &self.errors {
            println!("    writer {e}");
        }
    }
}

async fn failover_once(
    ctx: &Ctx,
    d: &Deployment,
    w: &Writer,
    work: &Path,
    cfg: &tokio_postgres::Config,
    force: bool,
) -> Result<FoRun, String> {
    let t_begin = Instant::now();
    let cluster = d.current_cluster().await.map_err(|e| e.to_string())?;
    let old = cluster.primary().name.clone();
    let old_port = cluster.primary().port;
    settle(d, w).await?;

    // The old primary's postmaster: the first line of its own postmaster.pid, checked
    // against the process's command line before anything is killed.
    let data = work.join(&old).join("data");
    let pid_file = std::fs::read_to_string(data.join("postmaster.pid")).map_err(|e| format!("{old}: postmaster.pid: {e}"))?;
    let pid: u32 = pid_file.lines().next().and_then(|l| l.trim().parse().ok()).ok_or_else(|| format!("{old}: no PID in postmaster.pid"))?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).map(|b| String::from_utf8_lossy(&b).replace('\0', " ")).unwrap_or_default();
    if !cmdline.contains(&s(&data)) {
        return Err(format!("PID {pid} of {old}'s postmaster.pid is not its postmaster (command line: {cmdline:?}); nothing killed"));
    }
    let children = children_of(pid);
    let parent = proc_stat(pid)
        .map(|(_, pp)| {
            let name = std::fs::read_to_string(format!("/proc/{pp}/comm")).unwrap_or_default();
            format!("{pp} ({})", name.trim())
        })
        .unwrap_or_default();
    let out = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).output().map_err(|e| format!("kill: {e}"))?;
    let t_kill = Instant::now();
    if !out.status.success() {
        return Err(format!("kill -KILL {pid}: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let n_children = children.len();
    let watch = std::thread::spawn(move || watch_linger(pid, children, old_port, t_kill));

    // Fail over at once; while pgrepl refuses, again every 20 ms (bounded).
    let mut refusals = Vec::new();
    let mut probe = None;
    let mut first_call = None;
    let (t_call, t_ret, rep, tl) = loop {
        let t_call = Instant::now();
        first_call.get_or_insert(t_call);
        let tl = Timeline::new(t_kill);
        let r = d.failover(FailoverOptions { to: None, force }, &tl).await;
        let t_ret = Instant::now();
        match r {
            Ok(rep) => break (t_call, t_ret, rep, tl),
            Err(e) => {
                let kind = if e.is_refusal() { "" } else { "(not a refusal) " };
                refusals.push((secs_between(t_kill, t_call), secs_between(t_kill, t_ret), format!("{kind}{e}")));
                if probe.is_none() {
                    probe = Some(status_probe(ctx, &data, pid, t_kill).await);
                }
                if t_kill.elapsed() > REFUSAL_DEADLINE || refusals.len() >= 2000 {
                    let _ = watch.join();
                    return Err(format!("still refused {REFUSAL_DEADLINE:?} after the kill: {e}"));
                }
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    };
    let first_call = first_call.expect("set");
    // The first write on the new primary (the killed postmaster's backends can still
    // acknowledge a commit or two before they notice it is gone).
    let new_port = i32::from(cluster.node(&rep.to).map(|n| n.port).unwrap_or(0));
    let mut first = None;
    let deadline = Instant::now() + RESUME_DEADLINE;
    while first.is_none() && Instant::now() < deadline {
        first = w.acks().into_iter().find(|a| a.at > t_kill && a.port == new_port);
        if first.is_none() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let first = first.ok_or_else(|| format!("no write acknowledged by {} within {RESUME_DEADLINE:?} after the failover", rep.to))?;
    let linger = watch.join().map_err(|_| "the watch thread panicked")?;
    let linger = Linger { children: n_children, parent, ..linger };

    // Commits acknowledged in this run before the new primary's first write (the killed
    // primary's included) that the new primary lacks.
    let acks = w.acks();
    let window: Vec<Ack> = acks.iter().filter(|a| a.at > t_begin && a.at < first.at).copied().collect();
    let after_kill = window.iter().filter(|a| a.at > t_kill && a.port != new_port).count();
    let ids: Vec<i64> = window.iter().map(|a| a.id).collect();
    let found: Option<Vec<i64>> = match tokio::time::timeout(CONNECT_LIMIT, cfg.connect(NoTls)).await {
        Ok(Ok((client, connection))) => {
            let conn = tokio::spawn(async move {
                let _ = connection.await;
            });
            let rows = client.query("SELECT id FROM bench_writes WHERE id = ANY($1)", &[&ids]).await.ok();
            drop(client);
            let _ = conn.await;
            rows.map(|rs| rs.iter().map(|r| r.get::<_, i64>(0)).collect())
        }
        _ => None,
    };
    let missing: Option<Vec<String>> = found.map(|f| {
        window
            .iter()
            .filter(|a| !f.contains(&a.id))
            .map(|a| format!("id {} acknowledged by port {} at {:+.3} s from the kill", a.id, a.port, secs_between(t_kill, a.at)))
            .collect()
    });
    // The old primary's own WAL past the new timeline's start, read independently of pgrepl.
    let waldump = match (rep.loss().and_then(|l| l.new_timeline_start), rep.old_timeline) {
        (Some(start), Some(tli)) => Some(waldump_after(ctx, &data, tli, &start.to_string()).await),
        _ => None,
    };

    let errors = error_summary(&w.errors_between(t_kill, first.at), t_kill);
    let steps = tl.lines();
    // What pg_rewind will read: the timelines in both control files.
    let control = format!(
        "{} (old primary, the rewind target): {}; {} (new primary, the source): {}",
        old,
        control_summary(ctx, &data).await,
        rep.to,
        control_summary(ctx, &work.join(&rep.to).join("data")).await
    );
    // The old primary back as a standby, for the next run (timed on its own).
    let t = Instant::now();
    let rj = d.rejoin(&old, &NoProgress).await.map_err(|e| format!("rejoin {old}: {e}"))?;
    let rejoin = t.elapsed().as_secs_f64();
    Ok(FoRun {
        old,
        new: rep.to.clone(),
        refusals,
        probe,
        accepted_at: secs_between(t_kill, t_call),
        cmd_to_write: secs_between(t_call, first.at),
        first_call_to_write: secs_between(first_call, first.at),
        kill_to_write: secs_between(t_kill, first.at),
        call: secs_between(t_call, t_ret),
        reported_available: rep.timings.write_available_seconds,
        fence: rep.timings.fence_seconds,
        observe: rep.timings.observe_seconds,
        promote: rep.timings.promote_seconds,
        linger,
        acked_checked: ids.len(),
        acked_after_kill: after_kill,
        missing,
        waldump,
        control,
        report: rep.to_string(),
        steps,
        rejoin,
        rejoin_report: rj.to_string(),
        errors,
    })
}

/// What the killed postmaster's PID is now, and what `pg_ctl status` (which pgrepl asks)
/// says about its data directory.
async fn status_probe(ctx: &Ctx, data: &Path, pid: u32, t_kill: Instant) -> String {
    let at = t_kill.elapsed().as_secs_f64();
    let state = match proc_stat(pid) {
        Some(('Z', _)) => "a zombie (dead, not yet reaped)".to_string(),
        Some((st, _)) => format!("in state {st}"),
        None => "gone".to_string(),
    };
    let said = match ctx.run(ctx.server("pg_ctl"), vec!["status".into(), "-D".into(), s(data)], Vec::new()).await {
        Ok(out) => format!("exit 0, {:?}", out.lines().next().unwrap_or("")),
        Err(e) => format!("{:?}", e.lines().nth(1).unwrap_or(e.as_str())),
    };
    format!("+{at:.3} s after the kill: PID {pid} is {state}; pg_ctl status: {said}")
}

/// The cluster state and the timelines pg_rewind looks at, from `pg_controldata`.
async fn control_summary(ctx: &Ctx, data: &Path) -> String {
    match ctx.run(ctx.server("pg_controldata"), vec!["-D".into(), s(data)], Vec::new()).await {
        Ok(out) => {
            let get = |k: &str| {
                out.lines().find(|l| l.starts_with(k)).and_then(|l| l.split_once(':')).map(|x| x.1.trim().to_string()).unwrap_or_default()
            };
            format!(
                "state \"{}\", latest checkpoint {} on timeline {}, min recovery end {} on timeline {}",
                get("Database cluster state"),
                get("Latest checkpoint location"),
                get("Latest checkpoint's TimeLineID"),
                get("Minimum recovery ending location"),
                get("Min recovery ending loc's timeline")
            )
        }
        Err(e) => format!("pg_controldata failed: {}", e.lines().next().unwrap_or("")),
    }
}

/// `pg_waldump` of the WAL in `data` on timeline `tli` from `start`: how many records and
/// commits, and how it ended.
async fn waldump_after(ctx: &Ctx, data: &Path, tli: u32, start: &str) -> String {
    let prog = ctx.server("pg_waldump");
    let args = vec!["-p".to_string(), s(&data.join("pg_wal")), "-t".into(), tli.to_string(), "-s".into(), start.to_string()];
    let env = ctx.env.clone();
    let out = tokio::task::spawn_blocking(move || {
        let mut c = std::process::Command::new("timeout");
        c.args(["60", "runuser", "-u", "postgres", "--"]).arg(&prog).args(&args).envs(env).current_dir("/");
        if !pgrepl_benches::is_root() {
            c = std::process::Command::new("timeout");
            c.arg("60").arg(&prog).args(&args).current_dir("/");
        }
        c.output()
    })
    .await;
    match out {
        Ok(Ok(o)) => {
            let text = String::from_utf8_lossy(&o.stdout);
            let records = text.lines().filter(|l| l.starts_with("rmgr:")).count();
            let commits: Vec<&str> = text.lines().filter(|l| l.contains("desc: COMMIT")).collect();
            let err = String::from_utf8_lossy(&o.stderr);
            format!(
                "{records} record(s), {} commit(s){}; pg_waldump: {}",
                commits.len(),
                commits.last().map(|c| format!(" (last: {})", c.split("desc: ").nth(1).unwrap_or("").trim())).unwrap_or_default(),
                err.lines().last().unwrap_or("").trim()
            )
        }
        Ok(Err(e)) => format!("could not run pg_waldump: {e}"),
        Err(e) => format!("task: {e}"),
    }
}

/// The PIDs whose parent is `pid` (from /proc).
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(child) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            if proc_stat(child).is_some_and(|(_, ppid)| ppid == pid) {
                out.push(child);
            }
        }
    }
    out
}

/// (state, parent PID) of a process, from `/proc/<pid>/stat`.
fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &st[st.rfind(')')? + 2..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Watches what the killed postmaster left: its children, its own PID, its port (every
/// 2 ms, at most 30 s).
fn watch_linger(pid: u32, children: Vec<u32>, port: u16, t_kill: Instant) -> Linger {
    let mut l = Linger::default();
    let limit = Duration::from_secs(30);
    while t_kill.elapsed() < limit {
        let now = t_kill.elapsed().as_secs_f64();
        if l.children_gone.is_none() && children.iter().all(|c| proc_stat(*c).is_none_or(|(st, _)| st == 'Z')) {
            l.children_gone = Some(now);
        }
        if l.postmaster_gone.is_none() {
            match proc_stat(pid) {
                None => l.postmaster_gone = Some(now),
                Some(('Z', _)) => l.postmaster_zombie = true,
                _ => {}
            }
        }
        if l.port_closed.is_none()
            && std::net::TcpStream::connect_timeout(&std::net::SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_millis(50)).is_err()
        {
            l.port_closed = Some(now);
        }
        if l.children_gone.is_some() && l.postmaster_gone.is_some() && l.port_closed.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    l
}

// =======================================================================================
// The floor, by hand

struct FloorNode {
    name: String,
    data: PathBuf,
    port: u16,
}

struct FloorPair {
    dir: PathBuf,
    run: PathBuf,
    nodes: [FloorNode; 2],
    /// Index of the current primary.
    primary: usize,
}

struct FloorRun {
    from: String,
    to: String,
    /// Clean stop of the primary (not in the floor).
    stop: f64,
    /// `pg_ctl promote -w` alone.
    promote_w: f64,
    /// `pg_ctl promote -w`, then a new connection and an INSERT until it commits: the issue's floor.
    literal: f64,
    /// From the promote command to the floor writer's first acknowledged commit.
    first_ack: f64,
}

impl FloorRun {
    fn print(&self, i: usize) {
        println!(
            "run {} floor {} -> {}: pg_ctl promote -w + INSERT {:.3} s (pg_ctl promote -w {:.3} s); promote command -> writer's first write {:.3} s; clean stop {:.3} s (not in the floor)",
            i + 1,
            self.from,
            self.to,
            self.literal,
            self.promote_w,
            self.first_ack,
            self.stop
        );
    }
}

impl FloorPair {
    fn url(&self) -> String {
        format!(
            "postgresql://127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write&connect_timeout=5",
            self.nodes[0].port, self.nodes[1].port
        )
    }

    fn log(&self, n: &FloorNode) -> String {
        s(&self.dir.join(format!("{}.log", n.name)))
    }

    /// initdb (pgrepl's flags and checksums), the settings that matter for promotion as
    /// pgrepl writes them, start, roles and table, pg_basebackup, standby, streaming.
    async fn setup(ctx: &Ctx, dir: &Path, port: u16) -> Result<FloorPair, String> {
        let caps = ctx.b.major.caps();
        mkdir_pg(dir)?;
        let run = dir.join("run");
        mkdir_pg(&run)?;
        let nodes = [
            FloorNode { name: "fa".into(), data: dir.join("fa"), port },
            FloorNode { name: "fb".into(), data: dir.join("fb"), port: port + 1 },
        ];
        let pair = FloorPair { dir: dir.to_path_buf(), run, nodes, primary: 0 };
        let (a, b) = (&pair.nodes[0], &pair.nodes[1]);
        let pw = "floor-repl-pw";
        let mut init: Vec<String> =
            ["-D", &s(&a.data), "-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C"]
                .iter()
                .map(|x| x.to_string())
                .collect();
        if let Some(flag) = caps.initdb_checksums {
            init.push(flag.into());
        }
        ctx.run(ctx.server("initdb"), init, Vec::new()).await.map_err(|e| format!("initdb: {e}"))?;
        let common = format!(
            "listen_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nwal_level = replica\nmax_wal_senders = 10\n\
             max_replication_slots = 10\n{} = '{}'\nwal_log_hints = on\nhot_standby = on\nhot_standby_feedback = on\n\
             wal_retrieve_retry_interval = '1s'\n",
            s(&pair.run),
            caps.wal_retention.setting(),
            caps.wal_retention.value_for_mb(512)
        );
        let own = |me: &FloorNode, other: &FloorNode| {
            format!(
                "port = {}\nprimary_conninfo = 'host=127.0.0.1 port={} user=replicator password={pw} application_name={}'\n",
                me.port, other.port, me.name
            )
        };
        append(&a.data.join("postgresql.conf"), &format!("{common}{}", own(a, b)))?;
        pair.pg_ctl(ctx, a, &["-w", "-t", "120", "start"]).await?;
        let sql = format!(
            "CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD '{pw}'; CREATE ROLE {APP_USER} LOGIN PASSWORD '{}'; {TABLE_SQL} \
             GRANT SELECT, INSERT ON bench_writes TO {APP_USER}; GRANT USAGE ON SEQUENCE bench_writes_id_seq TO {APP_USER};",
            ctx.app_password
        );
        ctx.psql(&pair.run, a.port, &sql).await?;
        let bb: Vec<String> =
            ["-h", "127.0.0.1", "-p", &a.port.to_string(), "-U", "replicator", "-D", &s(&b.data), "-X", "stream", "-c", "fast"]
                .iter()
                .map(|x| x.to_string())
                .collect();
        ctx.run(ctx.client("pg_basebackup"), bb, vec![("PGPASSWORD".into(), pw.into())])
            .await
            .map_err(|e| format!("pg_basebackup: {e}"))?;
        append(&b.data.join("postgresql.conf"), &own(b, a))?;
        write_pg(&b.data.join("standby.signal"), "")?;
        pair.pg_ctl(ctx, b, &["-w", "-t", "120", "start"]).await?;
        pair.wait_streaming(ctx).await?;
        Ok(pair)
    }

    async fn pg_ctl(&self, ctx: &Ctx, n: &FloorNode, args: &[&str]) -> Result<String, String> {
        let mut a = vec!["-D".to_string(), s(&n.data), "-l".into(), self.log(n)];
        a.extend(args.iter().map(|x| x.to_string()));
        ctx.run(ctx.server("pg_ctl"), a, Vec::new()).await.map_err(|e| format!("pg_ctl {}: {e}", args.join(" ")))
    }

    /// Until the standby streams from the primary (polled every 10 ms, bounded).
    async fn wait_streaming(&self, ctx: &Ctx) -> Result<(), String> {
        let (p, st) = (&self.nodes[self.primary], &self.nodes[1 - self.primary]);
        let sql =
            format!("SELECT count(*) FROM pg_catalog.pg_stat_replication WHERE application_name = '{}' AND state = 'streaming'", st.name);
        let deadline = Instant::now() + HEALTHY_DEADLINE;
        while Instant::now() < deadline {
            if ctx.psql(&self.run, p.port, &sql).await? == "1" {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(format!("{} did not stream from {} within {HEALTHY_DEADLINE:?}", st.name, p.name))
    }

    /// One promotion: stop the primary cleanly, wait until the standby replayed all it
    /// received, then `pg_ctl promote -w` and an INSERT; the floor writer's first write is
    /// timed from the same start. The old primary restarts as a standby of the new one.
    async fn once(&mut self, ctx: &Ctx, w: &Writer) -> Result<FloorRun, String> {
        self.wait_streaming(ctx).await?;
        w.set_paused(false);
        let r = self.promote_once(ctx, w).await;
        w.set_paused(true);
        r
    }

    async fn promote_once(&mut self, ctx: &Ctx, w: &Writer) -> Result<FloorRun, String> {
        let (pi, si) = (self.primary, 1 - self.primary);
        w.ack_after(Instant::now(), RESUME_DEADLINE).await.ok_or("the floor writer acknowledged nothing")?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let t = Instant::now();
        self.pg_ctl(ctx, &self.nodes[pi], &["-m", "fast", "-w", "-t", "60", "stop"]).await?;
        let stop = t.elapsed().as_secs_f64();
        // Caught up: everything received is replayed (the clean stop sent all of it).
        let st = &self.nodes[si];
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v =
                ctx.psql(&self.run, st.port, "SELECT pg_catalog.pg_last_wal_replay_lsn() >= pg_catalog.pg_last_wal_receive_lsn()").await?;
            if v == "t" {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("{} did not replay what it received within 30 s", st.name));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        let t0 = Instant::now();
        self.pg_ctl(ctx, st, &["-w", "-t", "60", "promote"]).await?;
        let promote_w = t0.elapsed().as_secs_f64();
        // A new connection straight to it, and an INSERT (retried until it commits, bounded).
        let mut cfg = tokio_postgres::Config::new();
        cfg.host("127.0.0.1")
            .port(st.port)
            .dbname("postgres")
            .user(APP_USER)
            .password(ctx.app_password.as_str())
            .connect_timeout(Duration::from_secs(5));
        let mut last_err = String::new();
        let mut literal = None;
        for _ in 0..3000 {
            match tokio::time::timeout(CONNECT_LIMIT, connect(&cfg)).await {
                Ok(Ok((client, stmt))) => match client.query_one(&stmt, &[]).await {
                    Ok(_) => {
                        literal = Some(t0.elapsed().as_secs_f64());
                        break;
                    }
                    Err(e) => last_err = pg_err(&e),
                },
                Ok(Err(e)) => last_err = pg_err(&e),
                Err(_) => last_err = "connect timed out".into(),
            }
            if t0.elapsed() > Duration::from_secs(30) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let literal = literal.ok_or_else(|| format!("no INSERT committed on {} within 30 s after pg_ctl promote: {last_err}", st.name))?;
        let first = w.ack_after(t0, RESUME_DEADLINE).await.ok_or("the floor writer acknowledged nothing after the promotion")?;
        let first_ack = secs_between(t0, first.at);

        // The old primary follows the new one (it stopped cleanly before the fork).
        let old = &self.nodes[pi];
        write_pg(&old.data.join("standby.signal"), "")?;
        self.pg_ctl(ctx, old, &["-w", "-t", "120", "start"]).await?;
        let run = FloorRun { from: old.name.clone(), to: st.name.clone(), stop, promote_w, literal, first_ack };
        self.primary = si;
        Ok(run)
    }
}

fn append(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    f.write_all(text.as_bytes()).map_err(|e| format!("write {}: {e}", path.display()))
}

fn write_pg(path: &Path, text: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).map_err(|e| format!("write {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| format!("chmod {}: {e}", path.display()))?;
    chown_pg(path)
}

// =======================================================================================
// Output

fn print_header(b: &Binaries, runs: usize) {
    println!("failover: pgrepl switchover / failover write downtime vs the promote floor, same binaries, same run");
    pgrepl_benches::print_environment(b);
    println!("runs:     {runs} (each: one switchover, one failover + rejoin, one floor promotion); servers run as OS user {}", pg_user());
}

fn min(xs: &[f64]) -> f64 {
    xs.iter().copied().fold(f64::INFINITY, f64::min)
}
fn max(xs: &[f64]) -> f64 {
    xs.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

fn row(name: &str, xs: &[f64]) {
    println!("{:<62} {:7.3} s {:7.3} {:7.3}", name, median(xs), min(xs), max(xs));
}

fn row_count(name: &str, xs: &[f64]) {
    println!("{:<62} {:7.1}   {:7.0} {:7.0}", name, median(xs), min(xs), max(xs));
}

fn print_summary(r: &Results) {
    let col = |f: &dyn Fn(&FoRun) -> f64| r.failovers.iter().map(f).collect::<Vec<f64>>();
    let sw_gap: Vec<f64> = r.switchovers.iter().map(|x| x.gap).collect();
    let sw_rep: Vec<f64> = r.switchovers.iter().map(|x| x.reported).collect();
    let sw_call: Vec<f64> = r.switchovers.iter().map(|x| x.call).collect();
    let sw_base: Vec<f64> = r.switchovers.iter().map(|x| x.baseline).collect();
    let fo = col(&|x| x.cmd_to_write);
    let fo_first = col(&|x| x.first_call_to_write);
    let fo_kill = col(&|x| x.kill_to_write);
    let fo_rep = col(&|x| x.reported_available);
    let fo_fence = col(&|x| x.fence);
    let fo_obs = col(&|x| x.observe);
    let fo_prom = col(&|x| x.promote);
    let fo_call = col(&|x| x.call);
    let fo_acc = col(&|x| x.accepted_at);
    let fo_refused = col(&|x| x.refusals.len() as f64);
    let rejoin = col(&|x| x.rejoin);
    let fl_lit: Vec<f64> = r.floors.iter().map(|x| x.literal).collect();
    let fl_w: Vec<f64> = r.floors.iter().map(|x| x.promote_w).collect();
    let fl_ack: Vec<f64> = r.floors.iter().map(|x| x.first_ack).collect();

    println!("{:<62} {:>9} {:>7} {:>7}", "operation", "median", "min", "max");
    row("switchover: write gap (longest gap in acknowledged writes)", &sw_gap);
    row("  pgrepl's SwitchoverReport: writes unavailable", &sw_rep);
    row("  the whole switchover call", &sw_call);
    row("  longest gap in the quiet second before (noise)", &sw_base);
    row("failover: command -> first acknowledged write", &fo);
    row("  first call (right after kill -9) -> first write", &fo_first);
    row("  kill -9 -> first write", &fo_kill);
    row_count("  refused calls before the accepted one (count)", &fo_refused);
    row("  kill -9 -> start of the accepted call (refusal window)", &fo_acc);
    row("  kill -9 -> the killed postmaster's PID reaped", &col(&|x| x.linger.postmaster_gone.unwrap_or(f64::NAN)));
    row("  kill -9 -> its last child process gone", &col(&|x| x.linger.children_gone.unwrap_or(f64::NAN)));
    row("  pgrepl's FailoverReport: writes accepted after the command", &fo_rep);
    row("    observe", &fo_obs);
    row("    fence (the fencing step)", &fo_fence);
    row("    promote", &fo_prom);
    row("  the whole failover call", &fo_call);
    row("  rejoin of the old primary (separate, not in the above)", &rejoin);
    row("floor: pg_ctl promote -w + INSERT commits (the issue's floor)", &fl_lit);
    row("  pg_ctl promote -w alone", &fl_w);
    row("  promote command -> the same writer's first write", &fl_ack);
    println!();
    let (fo_m, first_m, lit_m, ack_m, fence_m) = (median(&fo), median(&fo_first), median(&fl_lit), median(&fl_ack), median(&fo_fence));
    println!("ratios (medians). floor A: pg_ctl promote -w + INSERT (by hand, as the issue words it; pg_ctl -w polls every 100 ms);");
    println!(
        "                  floor B: promote command -> the same writer's first acknowledged write (the physical floor as the client sees it)"
    );
    for (name, f) in [("A", lit_m), ("B", ack_m)] {
        let target = 1.5 * f + fence_m;
        println!(
            "  floor {name} {f:.3} s: failover / floor {:5.2}; target 1.5 x floor + fencing = 1.5 x {f:.3} + {fence_m:.3} = {target:.3} s: {} ({fo_m:.3} s from the accepted command; {} ({first_m:.3} s) from the first call right after kill -9)",
            fo_m / f,
            if fo_m <= target { "met" } else { "NOT met" },
            if first_m <= target { "met" } else { "NOT met" },
        );
    }
    let g = median(&sw_gap);
    println!(
        "  switchover write gap {g:.3} s: target < 0.5 s {}; peers (Patroni, repmgr, pg_auto_failover, 3 local PG15 nodes) {:.2}-{:.2} s -> {:.1}x shorter than the peers' ~1.4 s",
        if g < 0.5 { "met" } else { "NOT met" },
        PEERS_SWITCHOVER_GAP.0,
        PEERS_SWITCHOVER_GAP.1,
        1.4 / g
    );
    let checked: usize = r.failovers.iter().map(|x| x.acked_checked).sum();
    let lost: Vec<String> =
        r.failovers.iter().map(|x| x.missing.as_ref().map(|m| m.len().to_string()).unwrap_or_else(|| "?".into())).collect();
    let after: Vec<String> = r.failovers.iter().map(|x| x.acked_after_kill.to_string()).collect();
    println!(
        "  failovers: acknowledged commits missing on the new primary per run [{}] of {checked} checked (asynchronous replication); \
         commits acknowledged by the killed primary's backends after kill -9, per run [{}]",
        lost.join(", "),
        after.join(", ")
    );
    if let Some(f) = &r.forced {
        println!(
            "  with --force right after kill -9 (one run): command -> first write {:.3} s, kill -> first write {:.3} s, {} refused call(s), fence {:.3} s",
            f.cmd_to_write,
            f.kill_to_write,
            f.refusals.len(),
            f.fence
        );
    }
    println!();
    println!("{}", r.writer_stats);
}
