//! `autofailover`: how long writes stop when the agents fail over by themselves (`[ha]`,
//! leader lease in etcd), against the promote floor measured in the same run.
//!
//! Per run, a fresh 3-node local cluster with `[ha]` (PostgreSQL 15 by default, sync
//! `{ mode = "any", count = 1 }`, ttl 3 s, loop_wait 1 s) is deployed through the `pgrepl`
//! binary (`pgrepl up -f spec`, which starts one agent per node) in a scratch directory,
//! on free loopback ports, with a 3-member etcd on loopback (`scripts/lab/etcd.sh`). A
//! writer inserts one row per transaction through the cluster's multi-host read-write
//! string (`target_session_attrs=read-write`, as applications connect) and records every
//! acknowledged commit with the port of the server that acknowledged it. Then:
//!
//! 1. **whole node**: `kill -9` of the primary's agent (its pid file), the agent's guard
//!    (its child `pgrepl agent --guard`) and the postmaster (`postmaster.pid`), in one
//!    `kill` command; timed to the first write acknowledged by another node;
//! 2. the killed node's agent started again (`pgrepl agent --node N -f spec`, kept as a
//!    child) until the node streams again as a standby of the new primary (bounded);
//! 3. **postmaster alone**: `kill -9` of the current primary's postmaster, its agent alive
//!    (restarted in place); timed to the first write acknowledged after the writer's
//!    first error following the kill (commits in flight may still be acknowledged by
//!    the dying backends for a few ms);
//! 4. every acknowledged row must be on the final primary (synchronous mode): rows lost;
//! 5. **floor**: `pgrepl pause`, then on a separate primary + standby pair set up by hand
//!    once for the whole program (the failover bench's floor, shared in the library):
//!    clean stop of its primary, `pg_ctl promote -w` of the caught-up standby, timed to
//!    the pair's own writer's first acknowledged write (and to an INSERT on a new
//!    connection);
//! 6. `pgrepl destroy --yes` (stops the agents from their pid files first); the agent the
//!    bench started itself is stopped by its PID before (also when the run fails).
//!
//! ```text
//! cargo build --release -p pgrepl-cli     # the pgrepl binary the bench drives
//! cargo run --release -p pgrepl-benches --bin autofailover -- [--runs N] [--pg-bin DIR] [--ttl SECONDS] [--loop-wait SECONDS]
//! ```
//!
//! `--pgrepl PATH` (default: `pgrepl` beside this program, i.e. `target/release/pgrepl`),
//! `--etcd-base PORT` (default 24190: members on 24190-24192, peers 24200-24202; reused
//! when already running, stopped at the end only when this program started them). Run
//! as root (PostgreSQL runs as `postgres`). Every wait is bounded; every process stopped
//! is one this program started, by PID.

use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use clap::Parser;
use pgrepl_benches::floor::{FloorPair, FloorRun};
use pgrepl_benches::ha::{Ctx, HaCluster, guard_pid, kill9};
use pgrepl_benches::writer::{APP_USER, Ack, Writer, error_summary, setup_sql};
use pgrepl_benches::{free_ports, max, median, min, pg_user, secs_between};

const SYNC: &str = r#"{ mode = "any", count = 1 }"#;
/// Limits: a cluster getting ready, writes resuming after a fault, the killed node
/// streaming again.
const READY_LIMIT: Duration = Duration::from_secs(90);
const RESUME_LIMIT: Duration = Duration::from_secs(60);
const REJOIN_LIMIT: Duration = Duration::from_secs(120);
/// Writes flowing undisturbed before each fault, and after the last one.
const BASELINE: Duration = Duration::from_secs(2);
/// The issue's targets (median of >= 5 runs, 3 s ttl).
const TARGET_WHOLE_NODE: f64 = 4.0;
const TARGET_POSTMASTER: f64 = 1.5;
/// Peers measured for the issue (3 local PG15 nodes, whole node killed): default, tuned.
const PEERS: [(&str, f64, f64, &str); 3] =
    [("Patroni", 25.1, 19.7, ""), ("pg_auto_failover", 52.4, 7.0, ""), ("repmgr", 50.9, 0.65, " (tuned: without fencing)")];

#[derive(Debug, Parser)]
#[command(about = "Automatic failover (pgrepl agents, etcd lease) write downtime against the promote floor")]
struct Cli {
    #[command(flatten)]
    common: pgrepl_benches::BenchArgs,
    #[command(flatten)]
    ha: pgrepl_benches::ha::HaArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    pgrepl_benches::ha::run_bench("autofailover", bench(&cli))
}

async fn bench(cli: &Cli) -> Result<(), String> {
    let (ctx, etcd) = Ctx::start("autofailover", &cli.common, &cli.ha, SYNC)?;
    println!("autofailover: write downtime of pgrepl's automatic failover vs the promote floor, same binaries, same run");
    pgrepl_benches::print_environment(&ctx.pg.b);
    println!("pgrepl:   {}", ctx.pgrepl.display());
    println!(
        "etcd:     {} ({}), heartbeat 50 ms, election 500 ms (scripts/lab/etcd.sh)",
        etcd.endpoints.join(","),
        if etcd.started.is_empty() { "already running, reused".to_string() } else { format!("started {}", etcd.started.join(", ")) }
    );
    println!(
        "cluster:  3 nodes with [ha] ttl {} s, loop_wait {} s, safety_margin default, sync {SYNC}; servers run as {}; {} runs",
        ctx.ttl,
        ctx.loop_wait,
        pg_user(),
        cli.common.runs
    );

    let floor_port = free_ports(21000 + (std::process::id() % 900) as u16 * 10, 2).ok_or("no 2 free ports on 127.0.0.1")?;
    let mut floor = FloorPair::setup(&ctx.pg, &ctx.scratch.path.join("floor"), floor_port, &ctx.app_password)
        .await
        .map_err(|e| format!("floor pair: {e}"))?;
    println!("floor:    by hand, a primary + hot standby on 127.0.0.1:{floor_port}-{}, writer on {}", floor_port + 1, floor.url());
    println!();
    let mut fcfg: tokio_postgres::Config = floor.url().parse().map_err(|e| format!("floor url: {e}"))?;
    fcfg.user(APP_USER).password(ctx.app_password.as_str()).application_name("pgrepl-bench-floor-writer");
    let fwriter = Writer::start(fcfg, true);

    let mut runs = Vec::new();
    let mut failed = None;
    for i in 0..usize::from(cli.common.runs) {
        match one_run(&ctx, i, &mut floor, &fwriter, cli.common.verbose).await {
            Ok(r) => {
                r.print(i);
                runs.push(r);
            }
            Err(e) => {
                failed = Some(format!("run {}: {e}", i + 1));
                break;
            }
        }
    }
    fwriter.stop().await;
    if !runs.is_empty() {
        print_summary(&ctx, &runs);
    }
    ctx.scratch.stop_servers_under(&ctx.scratch.path.join("floor"));
    drop(etcd);
    failed.map_or(Ok(()), Err)
}

// =======================================================================================
// One run

struct Run {
    /// Whole node killed: from the kill to the first write another node acknowledged.
    whole: f64,
    whole_from: String,
    whole_to: String,
    /// The agents' log lines from the kill to that write (offsets from the kill).
    whole_log: Vec<String>,
    whole_errors: Vec<String>,
    /// The killed node's agent started again -> it streams from the new primary.
    rejoin: f64,
    /// Postmaster alone killed: from the kill to the first write after the writer's error.
    postmaster: f64,
    postmaster_node: String,
    postmaster_acked_by: String,
    postmaster_log: Vec<String>,
    postmaster_errors: Vec<String>,
    acked: usize,
    lost: usize,
    floor: FloorRun,
}

impl Run {
    fn print(&self, i: usize) {
        println!(
            "run {}: whole node {} -> {}: {:.3} s | rejoin of {} {:.3} s | postmaster alone on {} -> write on {}: {:.3} s | \
             {} acknowledged rows, {} lost | floor {} -> {}: promote -> writer's first write {:.3} s (pg_ctl promote -w + INSERT {:.3} s)",
            i + 1,
            self.whole_from,
            self.whole_to,
            self.whole,
            self.whole_from,
            self.rejoin,
            self.postmaster_node,
            self.postmaster_acked_by,
            self.postmaster,
            self.acked,
            self.lost,
            self.floor.from,
            self.floor.to,
            self.floor.first_ack,
            self.floor.literal
        );
        for (what, log, errs) in
            [("whole node", &self.whole_log, &self.whole_errors), ("postmaster alone", &self.postmaster_log, &self.postmaster_errors)]
        {
            println!("    {what}, the agents (seconds from the kill):");
            for l in log {
                println!("    | {l}");
            }
            for e in errs {
                println!("    | writer {e}");
            }
        }
    }
}

async fn one_run(ctx: &Ctx, i: usize, floor: &mut FloorPair, fwriter: &Writer, verbose: bool) -> Result<Run, String> {
    let mut c = HaCluster::deploy(ctx, "autofo", i, "").await?;
    let r = measure(ctx, &mut c, floor, fwriter).await;
    if r.is_err() || verbose {
        c.print_agent_logs();
    }
    r
    // `c` drops here: its extra agent stopped, the cluster destroyed.
}

async fn measure(ctx: &Ctx, c: &mut HaCluster<'_>, floor: &mut FloorPair, fwriter: &Writer) -> Result<Run, String> {
    let primary = c.wait_ready(3, None, READY_LIMIT).await?;
    ctx.pg.psql(&c.socket(&primary), c.port_of(&primary), &setup_sql(&ctx.app_password)).await?;
    let status: serde_json::Value =
        serde_json::from_str(&c.cli(&["connstr", "--output", "json"]).await?).map_err(|e| format!("connstr json: {e}"))?;
    let url = status["read_write"].as_str().ok_or("connstr: no read_write string")?.to_string();
    let mut cfg: tokio_postgres::Config = url.parse().map_err(|e| format!("{url}: {e}"))?;
    cfg.user(APP_USER).password(ctx.app_password.as_str()).application_name("pgrepl-bench-writer");
    let w = Writer::start(cfg, false);
    let r = faults(c, &w, &primary).await;
    let acks = w.stop().await;
    let (whole, pm) = r?;

    // 4. Every acknowledged row on the final primary.
    let last = acks.last().ok_or("no acknowledged write")?;
    let final_primary = c.node_of(last.port)?;
    let present: std::collections::HashSet<i64> = ctx
        .pg
        .psql(&c.socket(&final_primary), c.port_of(&final_primary), "SELECT id FROM bench_writes")
        .await?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let lost = acks.iter().filter(|a| !present.contains(&a.id)).count();

    // 5. The floor, the cluster idle and its agents paused.
    c.cli(&["pause"]).await?;
    let fl = floor.once(&ctx.pg, fwriter, &ctx.app_password).await.map_err(|e| format!("floor: {e}"))?;
    Ok(Run {
        whole: whole.secs,
        whole_from: whole.node,
        whole_to: whole.acked_by,
        whole_log: whole.log,
        whole_errors: whole.errors,
        rejoin: whole.rejoin,
        postmaster: pm.secs,
        postmaster_node: pm.node,
        postmaster_acked_by: pm.acked_by,
        postmaster_log: pm.log,
        postmaster_errors: pm.errors,
        acked: acks.len(),
        lost,
        floor: fl,
    })
}

struct Fault {
    node: String,
    secs: f64,
    acked_by: String,
    log: Vec<String>,
    errors: Vec<String>,
    rejoin: f64,
}

/// Steps 1-3: the whole node, its agent again, the postmaster alone.
async fn faults(c: &mut HaCluster<'_>, w: &Writer, primary: &str) -> Result<(Fault, Fault), String> {
    w.ack_after(Instant::now(), RESUME_LIMIT).await.ok_or("the writer acknowledged nothing")?;
    tokio::time::sleep(BASELINE).await;

    // 1. The whole primary node.
    let agent = c.agent_pid(primary).ok_or_else(|| format!("{primary}: no agent pid"))?;
    let guard = guard_pid(agent).ok_or_else(|| format!("{primary}: its agent {agent} runs no guard"))?;
    let pm = c.postmaster_pid(primary)?;
    let old_port = i32::from(c.port_of(primary));
    let (t, wall) = (Instant::now(), SystemTime::now());
    kill9(&[agent, guard, pm]).await?;
    let first = w
        .ack_after_where(t, RESUME_LIMIT, |a| a.port != old_port)
        .await
        .ok_or_else(|| format!("no write on another node within {RESUME_LIMIT:?} after the kill"))?;
    let mut whole = Fault {
        node: primary.to_string(),
        secs: secs_between(t, first.at),
        acked_by: c.node_of(first.port)?,
        log: c.agent_log_since(wall, secs_between(t, first.at) + 0.5),
        errors: error_summary(&w.errors_between(t, first.at), t),
        rejoin: 0.0,
    };

    // 2. Its agent again: the node back as a standby of the new primary.
    let t2 = Instant::now();
    c.restart_agent(primary).await?;
    c.wait_ready(3, Some(primary), REJOIN_LIMIT).await?;
    whole.rejoin = t2.elapsed().as_secs_f64();

    // 3. The postmaster alone of the current primary.
    tokio::time::sleep(BASELINE).await;
    let node = whole.acked_by.clone();
    let pm = c.postmaster_pid(&node)?;
    let (t, wall) = (Instant::now(), SystemTime::now());
    kill9(&[pm]).await?;
    let err = w.first_error_after(t, RESUME_LIMIT).await.ok_or("the writer saw no error after the postmaster's kill")?;
    let first: Ack = w.ack_after(err, RESUME_LIMIT).await.ok_or_else(|| format!("no write within {RESUME_LIMIT:?} after the kill"))?;
    let pm_fault = Fault {
        node,
        secs: secs_between(t, first.at),
        acked_by: c.node_of(first.port)?,
        log: c.agent_log_since(wall, secs_between(t, first.at) + 0.5),
        errors: error_summary(&w.errors_between(t, first.at), t),
        rejoin: 0.0,
    };
    c.wait_ready(3, None, READY_LIMIT).await?;
    tokio::time::sleep(BASELINE).await;
    Ok((whole, pm_fault))
}

// =======================================================================================
// Summary

fn print_summary(ctx: &Ctx, runs: &[Run]) {
    let col = |f: &dyn Fn(&Run) -> f64| runs.iter().map(f).collect::<Vec<f64>>();
    let row = |name: &str, xs: &[f64]| println!("{name:<58} {:7.3} s {:7.3} {:7.3}", median(xs), min(xs), max(xs));
    let whole = col(&|r| r.whole);
    let pm = col(&|r| r.postmaster);
    let fl_ack = col(&|r| r.floor.first_ack);
    let fl_lit = col(&|r| r.floor.literal);
    println!();
    println!("{} runs, ttl {} s, loop_wait {} s, sync {SYNC}", runs.len(), ctx.ttl, ctx.loop_wait);
    println!("{:<58} {:>9} {:>7} {:>7}", "", "median", "min", "max");
    row("whole node kill -9 -> first write on another node", &whole);
    row("postmaster alone kill -9 -> first write (restart in place)", &pm);
    row("killed node's agent started again -> streaming again", &col(&|r| r.rejoin));
    row("floor: promote command -> the writer's first write", &fl_ack);
    row("floor: pg_ctl promote -w + INSERT on a new connection", &fl_lit);
    let lost: usize = runs.iter().map(|r| r.lost).sum();
    let acked: usize = runs.iter().map(|r| r.acked).sum();
    println!("acknowledged rows lost: {lost} of {acked} (per run: {:?})", runs.iter().map(|r| r.lost).collect::<Vec<_>>());
    let (w, p, f) = (median(&whole), median(&pm), median(&fl_ack));
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    println!(
        "target: whole node within {TARGET_WHOLE_NODE} s with a 3 s ttl (median of >= 5 runs): {w:.3} s, {}{}",
        met(w <= TARGET_WHOLE_NODE && runs.len() >= 5 && ctx.ttl == 3.0),
        if runs.len() < 5 || ctx.ttl != 3.0 { " (fewer than 5 runs or another ttl: not the target's conditions)" } else { "" }
    );
    println!("target: postmaster alone within {TARGET_POSTMASTER} s: {p:.3} s, {}", met(p <= TARGET_POSTMASTER));
    println!("whole node / floor: {:.2}; whole node - ttl: {:.3} s", w / f, w - ctx.ttl);
    for (name, default, tuned, note) in PEERS {
        println!(
            "peer {name:<17} whole node: {default:5.1} s default, {tuned:5.2} s tuned{note}; pgrepl {:.1}x / {:.1}x shorter",
            default / w,
            tuned / w
        );
    }
}
