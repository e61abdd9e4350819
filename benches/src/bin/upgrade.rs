//! `upgrade`: a major upgrade of a 3-node local cluster holding about `--mb` MB of data,
//! `pgrepl upgrade --to N --link` (`Deployment::upgrade`), against the floor measured in
//! the same run: the same upgrade typed by hand.
//!
//! Both cases start from the same kind of cluster: deployed by `Deployment::up` on the old
//! major, filled with one table of `--mb` MB, every standby caught up (untimed). Then:
//!
//! 1. **pgrepl**: `Deployment::upgrade` with `--link`, from the call until it returns with
//!    both standbys streaming: its checks (observation, the new binaries, extensions,
//!    disk, `pg_upgrade --check` with a scratch cluster), the clean stops, initdb, settings,
//!    `pg_upgrade --link`, start, `vacuumdb --analyze-in-stages`, slots, two clones.
//! 2. **floor**: `pg_ctl stop` of the three, the primary's directory moved aside, `initdb`
//!    (same encoding, locale, checksums), listen/port/socket and a replication line in
//!    pg_hba.conf, `pg_upgrade --link`, start, then per standby (one after the other) its
//!    directory moved aside, `pg_basebackup -R -X stream -c fast`, its port, start; until
//!    `pg_stat_replication` shows both streaming. No checks, no statistics.
//!
//! ```text
//! cargo run --release -p pgrepl-benches --bin upgrade -- [--from 14] [--to 16] [--mb 1024] [--runs 1]
//! ```
//!
//! Binaries: the test lab's (`$PGREPL_LAB/pg/<major>/bin`). Run as root (PostgreSQL runs as
//! `postgres`). Everything lives in one scratch directory under $TMPDIR (about 5 × `--mb`
//! at the peak); every server is stopped and the directory removed, also on failure.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::Parser;
use pgrepl_benches::{Scratch, append, free_ports, median, run_pg};
use pgrepl_core::deploy::{Deployment, NoProgress, Progress};
use pgrepl_core::discovery::{DiscoveryOptions, discover};
use pgrepl_core::layout::Binaries;
use pgrepl_core::local::LocalBackend;
use pgrepl_core::open::OpenOptions;
use pgrepl_core::spec::{LocalProviderSpec, ProviderSpec};
use pgrepl_core::upgrade::UpgradeOptions;
use pgrepl_core::{ClusterSpec, NodeSpec, PgMajor};

const STEP_LIMIT: Duration = Duration::from_secs(3600);
const STREAM_DEADLINE: Duration = Duration::from_secs(600);

/// A major upgrade of 3 local nodes against the same upgrade typed by hand.
#[derive(Debug, Parser)]
struct Args {
    /// The old major.
    #[arg(long, default_value = "14")]
    from: String,
    /// The new major.
    #[arg(long, default_value = "16")]
    to: String,
    /// MB of table data on the primary.
    #[arg(long, default_value_t = 1024)]
    mb: u64,
    /// Runs of each case.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Accepted and ignored (`cargo bench` passes it).
    #[arg(long, hide = true)]
    bench: bool,
}

fn lab_bin(major: &str) -> PathBuf {
    std::env::var_os("PGREPL_LAB").map(PathBuf::from).unwrap_or_else(|| "/opt/pgrepl-lab".into()).join("pg").join(major).join("bin")
}

fn main() -> ExitCode {
    let args = Args::parse();
    match bench(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("upgrade: {e}");
            ExitCode::FAILURE
        }
    }
}

fn find(major: &str) -> Result<Binaries, String> {
    let m: PgMajor = major.parse().map_err(|e| format!("{major}: {e}"))?;
    discover(&DiscoveryOptions { pg_bin: Some(lab_bin(major)), pg_client_bin: None, major: Some(m) })
        .map_err(|e| format!("{e} (install the test lab with scripts/lab/install.sh)"))
}

fn env_of(b: &Binaries) -> Vec<(String, String)> {
    b.lib_dir.iter().map(|l| ("LD_LIBRARY_PATH".to_string(), l.clone())).collect()
}

/// Records when each step starts and ends.
struct Timeline {
    t0: Instant,
    events: Mutex<Vec<(f64, String, bool)>>,
}

impl Progress for Timeline {
    fn started(&self, node: &str, step: &str) {
        self.events.lock().expect("not poisoned").push((self.t0.elapsed().as_secs_f64(), format!("{node}: {step}"), true));
    }
    fn finished(&self, node: &str, step: &str, _outcome: &str) {
        self.events.lock().expect("not poisoned").push((self.t0.elapsed().as_secs_f64(), format!("{node}: {step}"), false));
    }
}

impl Timeline {
    /// Seconds of the first step whose name contains `what`.
    fn seconds(&self, what: &str) -> f64 {
        let ev = self.events.lock().expect("not poisoned");
        let Some(i) = ev.iter().position(|(_, s, st)| *st && s.contains(what)) else { return 0.0 };
        let (at, name, _) = &ev[i];
        ev[i + 1..].iter().find(|(_, s, st)| !st && s == name).map(|(end, ..)| end - at).unwrap_or(0.0)
    }
}

struct Cluster {
    d: Deployment,
    spec: ClusterSpec,
    work: PathBuf,
    port: u16,
}

/// A 3-node cluster of `old` under `work`, filled with `mb` MB, standbys caught up.
async fn setup(old: &Binaries, work: &Path, port: u16, mb: u64) -> Result<Cluster, String> {
    let mut spec = ClusterSpec::builder("upgbench")
        .postgres(old.major)
        .pg_bin(&old.bin_dir)
        .provider(ProviderSpec::Local(LocalProviderSpec { work_dir: Some(work.to_path_buf()), os_user: None, base_port: Some(port) }))
        .node(NodeSpec::primary("db1"))
        .node(NodeSpec::standby("db2"))
        .node(NodeSpec::standby("db3"))
        .into_spec();
    spec.pg_client_bin = Some(PathBuf::from(&old.client_bin_dir));
    let d = Deployment::open(&spec, &OpenOptions::default(), &[&LocalBackend]).await.map_err(|e| format!("open: {e}"))?;
    d.up(&NoProgress).await.map_err(|e| format!("up: {e}"))?;
    // Rows of about 520 bytes.
    let rows = mb * 1024 * 1024 / 520;
    psql(
        old,
        work,
        "db1",
        port,
        &format!(
            "CREATE TABLE big (id bigint PRIMARY KEY, pad text); INSERT INTO big SELECT g, repeat(md5(g::text), 14) FROM generate_series(1, {rows}) g; CHECKPOINT;"
        ),
    )?;
    wait_caught_up(old, work, port)?;
    Ok(Cluster { d, spec, work: work.to_path_buf(), port })
}

fn psql(b: &Binaries, work: &Path, node: &str, port: u16, sql: &str) -> Result<String, String> {
    let sock = work.join(node).join("run");
    let out = run_pg(
        &Path::new(&b.client_bin_dir).join("psql"),
        &[
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            &sock.to_string_lossy(),
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
            sql,
        ],
        &[],
        STEP_LIMIT,
    )?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Until both standbys replayed what the primary wrote (bounded).
fn wait_caught_up(b: &Binaries, work: &Path, port: u16) -> Result<(), String> {
    let q = "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' AND replay_lsn = pg_current_wal_lsn()";
    let deadline = Instant::now() + STREAM_DEADLINE;
    for _ in 0..(STREAM_DEADLINE.as_millis() / 50) {
        if psql(b, work, "db1", port, q)? == "2" {
            return Ok(());
        }
        if Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err("the standbys did not catch up".into())
}

/// Until `n` standbys stream from the primary (bounded).
fn wait_streaming(b: &Binaries, work: &Path, port: u16, n: usize) -> Result<(), String> {
    let deadline = Instant::now() + STREAM_DEADLINE;
    for _ in 0..(STREAM_DEADLINE.as_millis() / 10) {
        if psql(b, work, "db1", port, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")? == n.to_string() {
            return Ok(());
        }
        if Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err("the standbys did not stream".into())
}

fn bench(args: &Args) -> Result<(), String> {
    let (old, new) = (find(&args.from)?, find(&args.to)?);
    let old_env = env_of(&old);
    let old_env: Vec<(&str, &str)> = old_env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let scratch = Scratch::new("pgrepl-bench-upgrade", Path::new(&new.bin_dir), &old_env)?;
    let start = 21000 + (std::process::id() % 1000) as u16 * 10;
    let port = free_ports(start, 3).ok_or("no 3 free ports on 127.0.0.1")?;
    println!("upgrade: `Deployment::upgrade --link` of 3 local nodes vs the same upgrade by hand, same run");
    pgrepl_benches::print_environment(&old);
    println!("new:      {} ({})", new.version, new.bin_dir);
    println!("data:     {} MB of table data on the primary; runs: {}", args.mb, args.runs);
    println!();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| format!("tokio runtime: {e}"))?;
    let (mut ours, mut own, mut floors) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..args.runs {
        for case in 0..2 {
            let work = scratch.path.join(format!("run{i}-case{case}"));
            let c = rt.block_on(setup(&old, &work, port, args.mb)).map_err(|e| format!("setup: {e}"));
            let r = c.and_then(|c| {
                let size = dir_mb(&c.work.join("db1/data"));
                if (case + i) % 2 == 0 {
                    let (t, tl) = rt.block_on(pgrepl_once(&c, &new))?;
                    println!(
                        "run {}: pgrepl {:7.2} s  (checks {:.2}, pg_upgrade {:.2}, analyze {:.2}, clones {:.2} + {:.2}; primary data {} MB)",
                        i + 1,
                        t,
                        tl.seconds("pg_upgrade --check") + tl.seconds("observe every node") + tl.seconds("check slots"),
                        tl.seconds("db1: pg_upgrade --link"),
                        tl.seconds("vacuumdb"),
                        tl.seconds("db2: clone from db1 (pg_basebackup of"),
                        tl.seconds("db3: clone from db1 (pg_basebackup of"),
                        size
                    );
                    ours.push(t);
                    own.push(t - tl.seconds("pg_upgrade --check") - tl.seconds("observe every node") - tl.seconds("check slots") - tl.seconds("vacuumdb"));
                } else {
                    let (t, parts) = floor_once(&c, &old, &new)?;
                    println!("run {}: floor  {:7.2} s  ({parts}; primary data {size} MB)", i + 1, t);
                    floors.push(t);
                }
                Ok(())
            });
            scratch.stop_servers_under(&work);
            let _ = std::fs::remove_dir_all(&work);
            r?;
        }
    }
    let (m, f) = (median(&ours), median(&floors));
    let pairs = median(&ours.iter().zip(&floors).map(|(p, f)| p / f).collect::<Vec<f64>>());
    let own_pairs = median(&own.iter().zip(&floors).map(|(p, f)| p / f).collect::<Vec<f64>>());
    println!();
    println!("median: pgrepl {m:.2} s, floor {f:.2} s, ratio {:.2}, ratio of pairs {pairs:.2}", m / f);
    println!(
        "pgrepl without what the floor does not do (its checks and vacuumdb --analyze-in-stages): median {:.2} s, ratio of pairs {own_pairs:.2}",
        median(&own)
    );
    println!("(ratio of pairs: the median of each run's pgrepl / floor, which share the machine's load)");
    Ok(())
}

fn dir_mb(p: &Path) -> u64 {
    let out = std::process::Command::new("du").args(["-sm"]).arg(p).output().ok();
    out.and_then(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().next().and_then(|v| v.parse().ok())).unwrap_or(0)
}

async fn pgrepl_once(c: &Cluster, new: &Binaries) -> Result<(f64, Timeline), String> {
    let opts = UpgradeOptions::new(new.major).link(true).with_binaries(new);
    let tl = Timeline { t0: Instant::now(), events: Mutex::new(Vec::new()) };
    let t0 = Instant::now();
    let report = c.d.upgrade(&c.spec, &opts, &tl).await.map_err(|e| format!("pgrepl upgrade: {e}"))?;
    let t = t0.elapsed().as_secs_f64();
    if let Some(f) = report.failed {
        return Err(format!("pgrepl upgrade: {f}"));
    }
    Ok((t, tl))
}

/// The upgrade by hand; returns the total and its parts.
fn floor_once(c: &Cluster, old: &Binaries, new: &Binaries) -> Result<(f64, String), String> {
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let (oenv, nenv) = (env_of(old), env_of(new));
    let oenv: Vec<(&str, &str)> = oenv.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let nenv: Vec<(&str, &str)> = nenv.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let ob = |t: &str| Path::new(&old.bin_dir).join(t);
    let nb = |t: &str| Path::new(&new.bin_dir).join(t);
    let w = &c.work;
    let data = |n: &str| w.join(n).join("data");
    let kept = |n: &str| w.join(n).join("data.old");
    let mut parts = Vec::new();
    let t0 = Instant::now();
    let mut lap = Instant::now();
    let mut mark = |name: &str, parts: &mut Vec<String>| {
        parts.push(format!("{name} {:.2}", lap.elapsed().as_secs_f64()));
        lap = Instant::now();
    };
    for n in ["db1", "db2", "db3"] {
        run_pg(&ob("pg_ctl"), &["-D", &s(&data(n)), "-m", "fast", "-w", "-t", "300", "stop"], &oenv, STEP_LIMIT)?;
    }
    mark("stop", &mut parts);
    std::fs::rename(data("db1"), kept("db1")).map_err(|e| format!("mv: {e}"))?;
    run_pg(
        &nb("initdb"),
        &[
            "-D",
            &s(&data("db1")),
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--data-checksums",
            "--auth-local=peer",
            "--auth-host=scram-sha-256",
        ],
        &nenv,
        STEP_LIMIT,
    )?;
    let sock = w.join("db1/run");
    append(
        &data("db1").join("postgresql.conf"),
        &format!(
            "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\nwal_level = replica\nhot_standby = on\n",
            c.port,
            s(&sock)
        ),
    )?;
    append(&data("db1").join("pg_hba.conf"), "host replication replicator 127.0.0.1/32 scram-sha-256\n")?;
    mark("initdb", &mut parts);
    let up = w.join("db1/upgrade-floor");
    pgrepl_benches::mkdir_pg(&up)?;
    let cd_and_run = format!(
        "cd '{}' && exec '{}' -b '{}' -B '{}' -d '{}' -D '{}' -U postgres -p {} -P {} --link",
        s(&up),
        s(&nb("pg_upgrade")),
        old.bin_dir,
        new.bin_dir,
        s(&kept("db1")),
        s(&data("db1")),
        c.port,
        c.port
    );
    run_pg(Path::new("/bin/sh"), &["-c", &cd_and_run], &nenv, STEP_LIMIT)?;
    mark("pg_upgrade --link", &mut parts);
    run_pg(&nb("pg_ctl"), &["-D", &s(&data("db1")), "-l", &s(&w.join("db1/floor.log")), "-w", "-t", "300", "start"], &nenv, STEP_LIMIT)?;
    mark("start", &mut parts);
    // One standby after the other, as pgrepl does them.
    for (n, k) in [("db2", 1u16), ("db3", 2u16)] {
        std::fs::rename(data(n), kept(n)).map_err(|e| format!("mv: {e}"))?;
        let pass = w.join(n).join("pgrepl/pgpass");
        run_pg(
            &nb("pg_basebackup"),
            &["-h", "127.0.0.1", "-p", &c.port.to_string(), "-U", "replicator", "-D", &s(&data(n)), "-R", "-X", "stream", "-c", "fast"],
            &[("PGPASSFILE", &s(&pass))],
            STEP_LIMIT,
        )?;
        append(&data(n).join("postgresql.auto.conf"), &format!("port = {}\n", c.port + k))?;
        run_pg(
            &nb("pg_ctl"),
            &["-D", &s(&data(n)), "-l", &s(&w.join(n).join("floor.log")), "-w", "-t", "300", "start"],
            &nenv,
            STEP_LIMIT,
        )?;
        mark(&format!("{n} clone+start"), &mut parts);
    }
    wait_streaming(new, w, c.port, 2)?;
    mark("streaming", &mut parts);
    Ok((t0.elapsed().as_secs_f64(), parts.join(", ")))
}
