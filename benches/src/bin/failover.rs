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
//!
//! Shared with the other benches: the writer (`pgrepl_benches::writer`), the floor pair
//! (`pgrepl_benches::floor`) and what the killed postmaster leaves behind
//! (`pgrepl_benches::diagnose`); this file is the bench's own flow and its output.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pgrepl_benches::diagnose::{Linger, children_of, control_summary, proc_stat, status_probe, waldump_after, watch_linger};
use pgrepl_benches::floor::{FloorPair, FloorRun};
use pgrepl_benches::writer::{APP_USER, Ack, CONNECT_LIMIT, WRITE_PAUSE, Writer, error_summary, setup_sql};
use pgrepl_benches::{PgTools, Scratch, free_ports, max, median, min, path_str as s, pg_user, secs_between};
use pgrepl_core::deploy::{Deployment, NoProgress, Progress};
use pgrepl_core::ha::FailoverOptions;
use pgrepl_core::layout::Binaries;
use pgrepl_core::local::LocalBackend;
use pgrepl_core::open::OpenOptions;
use pgrepl_core::spec::{LocalProviderSpec, ProviderSpec};
use pgrepl_core::version::RecoveryStyle;
use pgrepl_core::{ClusterSpec, NodeSpec};
use tokio_postgres::NoTls;

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
/// Peers' switchover write gap on 3 local PG15 nodes (the issue): Patroni, repmgr,
/// pg_auto_failover alike.
const PEERS_SWITCHOVER_GAP: (f64, f64) = (1.34, 1.46);

struct Args {
    pg_bin: PathBuf,
    pg_client_bin: Option<PathBuf>,
    runs: usize,
}

fn main() -> ExitCode {
    use clap::Parser;
    let cli = pgrepl_benches::BenchArgs::parse();
    pgrepl_benches::exit_code(
        "failover",
        bench(&Args { pg_bin: cli.pg_bin_or_lab("15"), pg_client_bin: cli.pg_client_bin, runs: cli.runs.into() }),
    )
}

// =======================================================================================
// The bench

/// Everything the binaries and scratch directory give the parts of the bench.
struct Ctx {
    pg: PgTools,
    scratch: Scratch,
    app_password: String,
}

fn bench(args: &Args) -> Result<(), String> {
    let pg = PgTools::discover(&args.pg_bin, args.pg_client_bin.as_deref())?;
    let b = &pg.b;
    if b.major.caps().recovery != RecoveryStyle::StandbySignal {
        return Err(format!("PostgreSQL {} : the floor of this bench is written for 12+ (standby.signal)", b.major));
    }
    let scratch = Scratch::new("pgrepl-bench-failover", Path::new(&b.bin_dir), &pg.env_ref())?;
    let start = 21000 + (std::process::id() % 900) as u16 * 10;
    let pg_port = free_ports(start, 3).ok_or("no 3 free ports on 127.0.0.1")?;
    let floor_port = free_ports(pg_port + 4, 2).ok_or("no 2 free ports on 127.0.0.1")?;
    let ctx = Ctx { pg, scratch, app_password: format!("bench-app-{}", std::process::id()) };

    print_header(&ctx.pg.b, args.runs);
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
        .postgres(ctx.pg.b.major)
        .pg_bin(&ctx.pg.b.bin_dir)
        .provider(ProviderSpec::Local(LocalProviderSpec { work_dir: Some(work.clone()), os_user: None, base_port: Some(pg_port) }))
        .node(NodeSpec::primary("db1"))
        .node(NodeSpec::standby("db2"))
        .node(NodeSpec::standby("db3"))
        .into_spec();
    spec.pg_client_bin = Some(PathBuf::from(&ctx.pg.b.client_bin_dir));
    let opts = OpenOptions::default().with_pg_bin(&ctx.pg.b.bin_dir).with_pg_client_bin(&ctx.pg.b.client_bin_dir).with_work_dir(&work);
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
    let sql = setup_sql(&ctx.app_password);
    ctx.pg.psql(&work.join(&p.name).join("run"), p.port, &sql).await.map_err(|e| format!("create the application role: {e}"))?;
    let url = d.status().await.connections.read_write;
    let mut cfg: tokio_postgres::Config = url.parse().map_err(|e| format!("{url}: {e}"))?;
    cfg.user(APP_USER).password(ctx.app_password.as_str()).application_name("pgrepl-bench-writer");
    println!("writer:   {url} (user {APP_USER}, password auth), one row per transaction, {} ms pause", WRITE_PAUSE.as_millis());

    let floor = FloorPair::setup(&ctx.pg, floor_dir, floor_port, &ctx.app_password).await.map_err(|e| format!("floor pair: {e}"))?;
    let mut fcfg: tokio_postgres::Config = floor.url().parse().map_err(|e| format!("floor url: {e}"))?;
    fcfg.user(APP_USER).password(ctx.app_password.as_str()).application_name("pgrepl-bench-floor-writer");
    println!(
        "floor:    by hand, {} (primary) and {} (standby) on ports {floor_port}-{}, writer on {}",
        floor.node_names()[0],
        floor.node_names()[1],
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
            let fl = floor.once(&ctx.pg, &fwriter, &ctx.app_password).await.map_err(|e| format!("run {}: floor: {e}", i + 1))?;
            print_floor(&fl, i);
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
// Write gaps

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
                    probe = Some(status_probe(&ctx.pg, &data, pid, t_kill).await);
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
        (Some(start), Some(tli)) => Some(waldump_after(&ctx.pg, &data, tli, &start.to_string()).await),
        _ => None,
    };

    let errors = error_summary(&w.errors_between(t_kill, first.at), t_kill);
    let steps = tl.lines();
    // What pg_rewind will read: the timelines in both control files.
    let control = format!(
        "{} (old primary, the rewind target): {}; {} (new primary, the source): {}",
        old,
        control_summary(&ctx.pg, &data).await,
        rep.to,
        control_summary(&ctx.pg, &work.join(&rep.to).join("data")).await
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

// =======================================================================================
// The floor, by hand (pgrepl_benches::floor)

fn print_floor(r: &FloorRun, i: usize) {
    println!(
        "run {} floor {} -> {}: pg_ctl promote -w + INSERT {:.3} s (pg_ctl promote -w {:.3} s); promote command -> writer's first write {:.3} s; clean stop {:.3} s (not in the floor)",
        i + 1,
        r.from,
        r.to,
        r.literal,
        r.promote_w,
        r.first_ack,
        r.stop
    );
}

// =======================================================================================
// Output

fn print_header(b: &Binaries, runs: usize) {
    println!("failover: pgrepl switchover / failover write downtime vs the promote floor, same binaries, same run");
    pgrepl_benches::print_environment(b);
    println!("runs:     {runs} (each: one switchover, one failover + rejoin, one floor promotion); servers run as OS user {}", pg_user());
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
