//! `routing`: the write gap of an automatic failover and of a switchover as applications
//! see it through HAProxy (`pgrepl render --haproxy`), next to the same through the
//! cluster's multi-host libpq string, in one run.
//!
//! Per run, a fresh 3-node local `[ha]` cluster (PostgreSQL 15 by default, sync
//! `{ mode = "any", count = 1 }`, ttl 3 s, loop_wait 1 s, the agents' HTTP API on free
//! ports) is deployed through the `pgrepl` binary with a 3-member etcd on loopback
//! (`scripts/lab/etcd.sh`), and Debian's HAProxy runs the configuration `pgrepl render
//! --haproxy` writes for it (read-write port on a free loopback port). Two writers insert
//! one row per transaction at the same time and record every acknowledged commit with
//! the port of the server that took it: one through HAProxy's read-write port, one
//! through the multi-host read-write string (`target_session_attrs=read-write`). A
//! poller asks every agent's `/primary` every 20 ms, to show where the time goes: the
//! agents' part (the fault to a new node answering 200) and HAProxy's (that answer to
//! the first write through it). Then:
//!
//! 1. **automatic failover**: `kill -9` of the primary's agent, its guard and its
//!    postmaster; per writer, the fault to the first write another node acknowledged;
//! 2. the killed node's agent started again, until it streams from the new primary;
//! 3. **switchover**: `pgrepl switchover --to` a standby (the agents carry it out); per
//!    writer, the longest time without an acknowledged write from the command's start
//!    to the first write on the new primary, and the command's start to that write;
//! 4. every row either writer saw acknowledged must be on the final primary.
//!
//! ```text
//! cargo build --release -p pgrepl-cli
//! cargo run --release -p pgrepl-benches --bin routing -- [--runs N] [--pg-bin DIR]
//! ```
//!
//! Run as root (PostgreSQL runs as `postgres`); HAProxy from `scripts/lab/install.sh`.
//! Every wait is bounded; every process stopped is one this program started, by PID.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use pgrepl_benches::ha::{Ctx, HaCluster, NODES, guard_pid, kill9};
use pgrepl_benches::writer::{APP_USER, Ack, Writer, error_summary, setup_sql};
use pgrepl_benches::{free_ports, max, median, min, pg_user, secs_between};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SYNC: &str = r#"{ mode = "any", count = 1 }"#;
const READY_LIMIT: Duration = Duration::from_secs(90);
const RESUME_LIMIT: Duration = Duration::from_secs(60);
const REJOIN_LIMIT: Duration = Duration::from_secs(120);
const BASELINE: Duration = Duration::from_secs(2);
const POLL_EVERY: Duration = Duration::from_millis(20);

#[derive(Debug, Parser)]
#[command(about = "Write gap of automatic failover and switchover through HAProxy next to the multi-host libpq string")]
struct Cli {
    #[command(flatten)]
    common: pgrepl_benches::BenchArgs,
    #[command(flatten)]
    ha: pgrepl_benches::ha::HaArgs,
    /// The HAProxy binary.
    #[arg(long, default_value = "/usr/sbin/haproxy")]
    haproxy: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    pgrepl_benches::ha::run_bench("routing", bench(&cli))
}

async fn bench(cli: &Cli) -> Result<(), String> {
    if !cli.haproxy.is_file() {
        return Err(format!("{}: no such file: run scripts/lab/install.sh, or pass --haproxy", cli.haproxy.display()));
    }
    let (ctx, etcd) = Ctx::start("routing", &cli.common, &cli.ha, SYNC)?;
    println!("routing: write gaps through HAProxy next to the multi-host libpq string, same cluster, same faults, same run");
    pgrepl_benches::print_environment(&ctx.pg.b);
    println!("pgrepl:   {}", ctx.pgrepl.display());
    println!("haproxy:  {} ({})", cli.haproxy.display(), haproxy_version(&cli.haproxy));
    println!("etcd:     {}", etcd.endpoints.join(","));
    println!(
        "cluster:  3 nodes with [ha] ttl {} s, loop_wait {} s, sync {SYNC}; servers run as {}; {} runs",
        ctx.ttl,
        ctx.loop_wait,
        pg_user(),
        cli.common.runs
    );
    println!();
    let mut runs = Vec::new();
    let mut failed = None;
    for i in 0..usize::from(cli.common.runs) {
        match one_run(&ctx, &cli.haproxy, i, cli.common.verbose).await {
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
    if !runs.is_empty() {
        print_summary(&runs);
    }
    drop(etcd);
    failed.map_or(Ok(()), Err)
}

fn haproxy_version(bin: &Path) -> String {
    Command::new(bin)
        .arg("-v")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().next().map(str::to_string))
        .unwrap_or_else(|| "version unknown".into())
}

// =======================================================================================
// One run

/// One fault as the two writers saw it.
#[derive(Debug, Default)]
struct Seen {
    /// Through HAProxy, through the libpq string (seconds).
    haproxy: f64,
    direct: f64,
    /// The fault (or the command) to the new primary's agent answering 200 on /primary.
    agent_200: f64,
    errors_haproxy: Vec<String>,
    errors_direct: Vec<String>,
    /// The agents' log from the fault (or command) to the first write through HAProxy.
    log: Vec<String>,
}

#[derive(Debug)]
struct Run {
    from: String,
    to: String,
    failover: Seen,
    switch_to: String,
    /// Longest time without a write, and command start -> first write on the new primary.
    switchover_gap: Seen,
    switchover_first: Seen,
    acked: usize,
    lost: usize,
}

impl Run {
    fn print(&self, i: usize) {
        let f = &self.failover;
        let (g, s) = (&self.switchover_gap, &self.switchover_first);
        println!(
            "run {}: failover {} -> {}: HAProxy {:.3} s, libpq string {:.3} s, agent answers /primary {:.3} s | \
             switchover -> {}: gap HAProxy {:.3} s, libpq string {:.3} s; command -> first write {:.3} s / {:.3} s, /primary {:.3} s | \
             {} acknowledged rows, {} lost",
            i + 1,
            self.from,
            self.to,
            f.haproxy,
            f.direct,
            f.agent_200,
            self.switch_to,
            g.haproxy,
            g.direct,
            s.haproxy,
            s.direct,
            s.agent_200,
            self.acked,
            self.lost
        );
        for (what, seen) in [("failover", f), ("switchover", s)] {
            println!("    {what}, the agents (seconds from the start):");
            for l in &seen.log {
                println!("    | {l}");
            }
            for e in &seen.errors_haproxy {
                println!("    | {what}, writer through HAProxy {e}");
            }
            for e in &seen.errors_direct {
                println!("    | {what}, writer through the libpq string {e}");
            }
        }
    }
}

async fn one_run(ctx: &Ctx, haproxy: &Path, i: usize, verbose: bool) -> Result<Run, String> {
    let api = free_ports(25000 + (std::process::id() % 900) as u16 * 10, 3).ok_or("no 3 free ports for the agents' API")?;
    let mut c = HaCluster::deploy(ctx, "routing", i, &format!("api_port = {api}\n")).await?;
    let r = measure(ctx, &mut c, haproxy, api).await;
    if r.is_err() || verbose {
        c.print_agent_logs();
    }
    r
}

async fn measure(ctx: &Ctx, c: &mut HaCluster<'_>, haproxy: &Path, api: u16) -> Result<Run, String> {
    let primary = c.wait_ready(3, None, READY_LIMIT).await?;
    ctx.pg.psql(&c.socket(&primary), c.port_of(&primary), &setup_sql(&ctx.app_password)).await?;

    // HAProxy on the configuration pgrepl renders.
    let rw = free_ports(26000 + (std::process::id() % 900) as u16 * 10, 2).ok_or("no 2 free ports for HAProxy")?;
    let cfg = c.cli(&["render", "--haproxy", "--rw-port", &rw.to_string(), "--ro-port", &(rw + 1).to_string()]).await?;
    let cfg_path = c.work.join("haproxy.cfg");
    // Its log lines with their time (RFC 5424, microseconds) instead of raw: when HAProxy
    // marked each server up or down, next to the agents' log.
    let cfg = cfg.replace("log stdout format raw", "log stdout format rfc5424");
    std::fs::write(&cfg_path, cfg).map_err(|e| format!("{}: {e}", cfg_path.display()))?;
    let hlog = c.work.join("haproxy.log");
    let _proxy = Haproxy::start(haproxy, &cfg_path, &hlog)?;
    // HAProxy counts every server up until its first check, all within its first second.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let connstr: serde_json::Value =
        serde_json::from_str(&c.cli(&["connstr", "--output", "json"]).await?).map_err(|e| format!("connstr json: {e}"))?;
    let url = connstr["read_write"].as_str().ok_or("connstr: no read_write string")?.to_string();
    let mut dcfg: tokio_postgres::Config = url.parse().map_err(|e| format!("{url}: {e}"))?;
    dcfg.user(APP_USER).password(ctx.app_password.as_str()).application_name("pgrepl-bench-direct");
    let mut hcfg = tokio_postgres::Config::new();
    hcfg.host("127.0.0.1")
        .port(rw)
        .dbname("postgres")
        .user(APP_USER)
        .password(ctx.app_password.as_str())
        .application_name("pgrepl-bench-haproxy")
        .connect_timeout(Duration::from_secs(5));
    let hw = Writer::start(hcfg, false);
    let dw = Writer::start(dcfg, false);
    let poller = Poller::start(NODES.iter().enumerate().map(|(k, n)| (n.to_string(), api + k as u16)).collect());
    let r = faults(c, &hw, &dw, &poller, &primary).await;
    poller.stop();
    let (h_acks, d_acks) = (hw.stop().await, dw.stop().await);
    let mut run = r?;

    let last = d_acks.last().ok_or("no acknowledged write")?;
    let final_primary = c.node_of(last.port)?;
    let present: std::collections::HashSet<i64> = ctx
        .pg
        .psql(&c.socket(&final_primary), c.port_of(&final_primary), "SELECT id FROM bench_writes")
        .await?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    run.acked = h_acks.len() + d_acks.len();
    run.lost = h_acks.iter().chain(&d_acks).filter(|a| !present.contains(&a.id)).count();
    Ok(run)
}

async fn faults(c: &mut HaCluster<'_>, hw: &Writer, dw: &Writer, poller: &Poller, primary: &str) -> Result<Run, String> {
    for (w, what) in [(hw, "through HAProxy"), (dw, "through the libpq string")] {
        w.ack_after(Instant::now(), RESUME_LIMIT).await.ok_or_else(|| format!("the writer {what} acknowledged nothing"))?;
    }
    tokio::time::sleep(BASELINE).await;
    let old_port = i32::from(c.port_of(primary));
    if !hw.acks().iter().rev().take(10).all(|a| a.port == old_port) {
        return Err(format!("the writes through HAProxy do not all reach {primary}"));
    }

    // 1. Automatic failover: the whole primary node.
    let agent = c.agent_pid(primary).ok_or_else(|| format!("{primary}: no agent pid"))?;
    let guard = guard_pid(agent).ok_or_else(|| format!("{primary}: its agent {agent} runs no guard"))?;
    let pm = c.postmaster_pid(primary)?;
    let (t, wall) = (Instant::now(), std::time::SystemTime::now());
    kill9(&[agent, guard, pm]).await?;
    let hf = hw
        .ack_after_where(t, RESUME_LIMIT, |a| a.port != old_port)
        .await
        .ok_or_else(|| format!("no write through HAProxy on another node within {RESUME_LIMIT:?}"))?;
    let df = dw
        .ack_after_where(t, RESUME_LIMIT, |a| a.port != old_port)
        .await
        .ok_or_else(|| format!("no write through the libpq string on another node within {RESUME_LIMIT:?}"))?;
    let to = c.node_of(df.port)?;
    let failover = Seen {
        haproxy: secs_between(t, hf.at),
        direct: secs_between(t, df.at),
        agent_200: poller.first_200(&to, t).map_or(f64::NAN, |at| secs_between(t, at)),
        errors_haproxy: error_summary(&hw.errors_between(t, hf.at), t),
        errors_direct: error_summary(&dw.errors_between(t, df.at), t),
        log: with_haproxy(
            c.agent_log_since(wall, secs_between(t, hf.at) + 0.2),
            &c.work.join("haproxy.log"),
            wall,
            secs_between(t, hf.at) + 0.2,
        ),
    };

    // 2. The killed node back, as a standby of the new primary.
    c.restart_agent(primary).await?;
    c.wait_ready(3, Some(primary), REJOIN_LIMIT).await?;
    tokio::time::sleep(BASELINE).await;

    // 3. A switchover, to the node that was the primary at the start.
    let target = primary.to_string();
    let tport = i32::from(c.port_of(&target));
    let (t, wall) = (Instant::now(), std::time::SystemTime::now());
    c.cli(&["switchover", "--to", &target]).await?;
    let hs = hw.ack_after_where(t, RESUME_LIMIT, |a| a.port == tport).await.ok_or("no write through HAProxy on the new primary")?;
    let ds =
        dw.ack_after_where(t, RESUME_LIMIT, |a| a.port == tport).await.ok_or("no write through the libpq string on the new primary")?;
    let agent_200 = poller.first_200(&target, t).map_or(f64::NAN, |at| secs_between(t, at));
    let switchover_first = Seen {
        haproxy: secs_between(t, hs.at),
        direct: secs_between(t, ds.at),
        agent_200,
        errors_haproxy: error_summary(&hw.errors_between(t, hs.at), t),
        errors_direct: error_summary(&dw.errors_between(t, ds.at), t),
        log: with_haproxy(
            c.agent_log_since(wall, secs_between(t, hs.at) + 0.2),
            &c.work.join("haproxy.log"),
            wall,
            secs_between(t, hs.at) + 0.2,
        ),
    };
    let switchover_gap =
        Seen { haproxy: longest_pause(&hw.acks(), t, hs.at), direct: longest_pause(&dw.acks(), t, ds.at), agent_200, ..Seen::default() };
    tokio::time::sleep(BASELINE / 2).await;
    Ok(Run { from: primary.to_string(), to, failover, switch_to: target, switchover_gap, switchover_first, acked: 0, lost: 0 })
}

/// The agents' lines with HAProxy's "Server ... is UP/DOWN" lines from `since` to
/// `since + for_secs` merged in, in time order (`+S.SSS s who message`).
fn with_haproxy(mut lines: Vec<String>, hlog: &Path, since: std::time::SystemTime, for_secs: f64) -> Vec<String> {
    let t0 = pgrepl_benches::ha::time_of_day(since);
    let text = std::fs::read_to_string(hlog).unwrap_or_default();
    for l in text.lines().filter(|l| l.contains(" is UP") || l.contains(" is DOWN")) {
        // <129>1 2026-12-01T06:32:23.121262+00:00 - haproxy PID - - Server x/s1 is DOWN, ...
        let Some(ts) = l.split_whitespace().nth(1) else { continue };
        let Some(at) = pgrepl_benches::ha::log_time(&ts.replace("+00:00", "Z")) else { continue };
        let off = at - t0;
        if (-0.05..=for_secs).contains(&off) {
            let msg = l.split(" - - ").nth(1).unwrap_or(l);
            lines.push(format!("{off:+7.3} s {:<13} {}", "haproxy", msg.split(", reason").next().unwrap_or(msg)));
        }
    }
    let key = |l: &String| l.trim_start().split(' ').next().and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    lines.sort_by(|a, b| key(a).total_cmp(&key(b)));
    lines
}

/// The longest time without an acknowledged write from `from` to `end` (the first write on
/// the new primary), counted from the last write before `from`.
fn longest_pause(acks: &[Ack], from: Instant, end: Instant) -> f64 {
    let mut last = acks.iter().rev().find(|a| a.at <= from).map_or(from, |a| a.at);
    let mut gap = 0.0f64;
    for a in acks.iter().filter(|a| a.at > from && a.at <= end) {
        gap = gap.max(secs_between(last, a.at));
        last = a.at;
    }
    gap
}

// =======================================================================================
// HAProxy and the /primary poller

/// HAProxy in the foreground, stopped by its PID on drop.
struct Haproxy(Child);

impl Haproxy {
    fn start(bin: &Path, cfg: &Path, log: &Path) -> Result<Haproxy, String> {
        let out = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(bin)
            .arg("-f")
            .arg(cfg)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("{}: {e}", bin.display()))?;
        Ok(Haproxy(child))
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Asks every agent's `/primary` every [`POLL_EVERY`]: when each answered 200.
struct Poller {
    seen: Arc<Mutex<Vec<(Instant, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Poller {
    fn start(agents: Vec<(String, u16)>) -> Poller {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            // Bounded: at most an hour of polls (the run ends long before and aborts it).
            for _ in 0..(3600 * 1000 / POLL_EVERY.as_millis() as usize) {
                let tick = Instant::now();
                for (node, port) in &agents {
                    if http_code(*port, "/primary").await == Some(200) {
                        log.lock().expect("not poisoned").push((Instant::now(), node.clone()));
                    }
                }
                tokio::time::sleep(POLL_EVERY.saturating_sub(tick.elapsed())).await;
            }
        });
        Poller { seen, task }
    }

    /// When `node`'s agent first answered 200 on /primary after `t`.
    fn first_200(&self, node: &str, t: Instant) -> Option<Instant> {
        self.seen.lock().expect("not poisoned").iter().find(|(at, n)| *at > t && n == node).map(|(at, _)| *at)
    }

    fn stop(&self) {
        self.task.abort();
    }
}

/// The status code of one HTTP/1.0 GET to 127.0.0.1:`port` (`None`: no answer in 500 ms).
async fn http_code(port: u16, path: &str) -> Option<u16> {
    let ask = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).await.ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        String::from_utf8_lossy(&out).split_whitespace().nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_millis(500), ask).await.ok().flatten()
}

// =======================================================================================
// Summary

fn print_summary(runs: &[Run]) {
    let col = |f: &dyn Fn(&Run) -> f64| runs.iter().map(f).collect::<Vec<f64>>();
    let row = |name: &str, xs: &[f64]| println!("{name:<66} {:7.3} s {:7.3} {:7.3}", median(xs), min(xs), max(xs));
    println!();
    println!("{} runs, sync {SYNC}", runs.len());
    println!("{:<66} {:>9} {:>7} {:>7}", "", "median", "min", "max");
    let (fh, fd) = (col(&|r| r.failover.haproxy), col(&|r| r.failover.direct));
    row("automatic failover, kill -9 -> first write: through HAProxy", &fh);
    row("automatic failover, kill -9 -> first write: libpq string", &fd);
    row("automatic failover, kill -9 -> new primary's agent answers 200", &col(&|r| r.failover.agent_200));
    let (sh, sd) = (col(&|r| r.switchover_gap.haproxy), col(&|r| r.switchover_gap.direct));
    row("switchover, longest time without a write: through HAProxy", &sh);
    row("switchover, longest time without a write: libpq string", &sd);
    row("switchover, command -> first write on the new primary: HAProxy", &col(&|r| r.switchover_first.haproxy));
    row("switchover, command -> first write on the new primary: libpq", &col(&|r| r.switchover_first.direct));
    row("switchover, command -> new primary's agent answers 200", &col(&|r| r.switchover_first.agent_200));
    let lost: usize = runs.iter().map(|r| r.lost).sum();
    let acked: usize = runs.iter().map(|r| r.acked).sum();
    println!("acknowledged rows lost (both writers): {lost} of {acked}");
    println!(
        "HAProxy's cost over the libpq string: failover {:+.3} s, switchover {:+.3} s (medians); peers' switchover gap ~1.4 s",
        median(&fh) - median(&fd),
        median(&sh) - median(&sd)
    );
}
