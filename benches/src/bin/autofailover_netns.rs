//! `autofailover_netns`: automatic failover on hosts reached over SSH, where the fault is
//! a real one: the primary's network link dropped (`ip link set eth0 down` in its
//! namespace), timed to the first write acknowledged by the new primary, next to the
//! configured ttl (the lease a partitioned primary keeps: nothing can take over sooner
//! without risking two primaries). The same measure on the local provider (a whole node
//! killed) is the `autofailover` bench; run both with the same `--ttl`.
//!
//! Per run, on the five-host lab (`PGREPL_NETNS_SET=ha scripts/lab/netns.sh`, brought
//! up when it is not, and taken down at the end only when this program brought it up):
//! a fresh cluster of d, e ("east"), f, g ("west") and the witness w ("third") with
//! `[ha]`, etcd deployed by pgrepl (TLS), sync `{ mode = "any", count = 1 }`, deployed with
//! `pgrepl up` (the release binary beside this program, uploaded to the hosts). A writer
//! inserts one row per transaction through the four hosts' multi-host read-write string
//! and records every acknowledged commit. Then:
//!
//! 1. d's link down (timed from when `ip link set` returned); **failover**: until the
//!    first write acknowledged after that (nothing from d can arrive once its link is
//!    down); **fenced**: until d itself (asked over its own socket, inside its
//!    namespaces, every 50 ms) no longer accepts writes;
//!    **promoted**: until one of e, f, g (asked the same way) accepts writes. The writer
//!    gives up on an INSERT after 1 s (no reset comes from a host whose link is gone),
//!    then reconnects through the hosts in order (1 s connect limit);
//! 2. d's link up; **rejoin**: until d streams from the new primary, by itself;
//! 3. every acknowledged row must be on the new primary;
//! 4. `pgrepl destroy --yes`.
//!
//! ```text
//! cargo build --release -p pgrepl-cli -p pgrepl-benches
//! target/release/autofailover_netns [--runs N] [--ttl SECONDS] [--loop-wait SECONDS]
//! ```
//!
//! Run as root. Every wait is bounded; the processes it stops are the lab's (through
//! netns.sh) and the cluster's (through `pgrepl destroy`).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use clap::Parser;
use pgrepl_benches::ha::{blocking, pgrepl_binary, run_bench};
use pgrepl_benches::writer::{APP_USER, Writer, setup_sql};
use pgrepl_benches::{max, median, min, secs_between};

const HOSTS: [(&str, &str, &str, &str); 5] = [
    ("d", "10.213.8.21", "east", "primary"),
    ("e", "10.213.8.22", "east", "standby"),
    ("f", "10.213.8.23", "west", "standby"),
    ("g", "10.213.8.24", "west", "standby"),
    ("w", "10.213.8.25", "third", "witness"),
];
const APP_PASSWORD: &str = "bench-app-password";
const UP_LIMIT: Duration = Duration::from_secs(300);
const READY_LIMIT: Duration = Duration::from_secs(90);
const RESUME_LIMIT: Duration = Duration::from_secs(60);
const REJOIN_LIMIT: Duration = Duration::from_secs(120);
const BASELINE: Duration = Duration::from_secs(2);
/// The writer's limit of one INSERT.
const WRITE_LIMIT: Duration = Duration::from_secs(1);

#[derive(Debug, Parser)]
#[command(about = "Automatic failover on the netns lab: the primary's link dropped, to the first write on the new primary")]
struct Cli {
    /// Runs (fresh cluster each).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The leader lease, seconds (`[ha] ttl`).
    #[arg(long, default_value_t = 3.0)]
    ttl: f64,
    /// Seconds between two loops of an agent (`[ha] loop_wait`).
    #[arg(long, default_value_t = 1.0)]
    loop_wait: f64,
    /// The pgrepl binary (default: beside this program).
    #[arg(long)]
    pgrepl: Option<PathBuf>,
}

fn lab() -> PathBuf {
    PathBuf::from(std::env::var("PGREPL_LAB").unwrap_or_else(|_| "/opt/pgrepl-lab".into()))
}

fn netns_sh(args: &[&str]) -> Command {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/lab/netns.sh");
    let mut c = Command::new("bash");
    c.arg(script).args(args).env("PGREPL_NETNS_SET", "ha");
    c
}

async fn sh(mut c: Command, what: &str) -> Result<String, String> {
    c.stdin(std::process::Stdio::null());
    let o = blocking(c).await?;
    if !o.status.success() {
        return Err(format!("{what}: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)));
    }
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
}

fn ssh(addr: &str, cmd: &str) -> Command {
    let mut c = Command::new("ssh");
    c.args(["-i", &lab().join("netns-ha/id_ed25519").to_string_lossy(), "-o"])
        .arg(format!("UserKnownHostsFile={}", lab().join("netns-ha/known_hosts").display()))
        .args(["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5"])
        .arg(format!("root@{addr}"))
        .arg(cmd);
    c
}

/// Whether host `h` accepts writes, asked over its own socket inside its namespaces.
async fn writable(h: &str) -> Option<bool> {
    let pid = std::fs::read_to_string(lab().join(format!("netns-ha/{h}/sshd.pid"))).ok()?;
    let mut c = Command::new("nsenter");
    c.args(["-t", pid.trim(), "-m", "-n", "--", "sh", "-c"])
        .arg("timeout 2 runuser -u postgres -- psql -X -A -t -c 'SELECT NOT pg_is_in_recovery()' 2>/dev/null");
    let o = blocking(c).await.ok()?;
    o.status.success().then(|| String::from_utf8_lossy(&o.stdout).trim() == "t")
}

struct Run {
    failover: f64,
    promoted: f64,
    fenced: f64,
    rejoin: f64,
    leader: String,
    acked: usize,
    lost: usize,
}

struct Cluster {
    pgrepl: PathBuf,
    spec: PathBuf,
    work: PathBuf,
}

impl Cluster {
    async fn pgrepl(&self, args: &[&str], limit: Duration) -> Result<String, String> {
        let mut c = Command::new(&self.pgrepl);
        c.arg(args[0]).arg("-f").arg(&self.spec).arg("--work-dir").arg(&self.work).args(&args[1..]);
        match tokio::time::timeout(limit, sh(c, &format!("pgrepl {}", args.join(" ")))).await {
            Ok(r) => r,
            Err(_) => Err(format!("pgrepl {} did not finish within {limit:?}", args.join(" "))),
        }
    }

    /// The store's view (`status --output json`, whose exit status says whether the
    /// cluster is healthy: read either way).
    async fn view(&self) -> serde_json::Value {
        let mut c = Command::new(&self.pgrepl);
        c.arg("status").arg("-f").arg(&self.spec).arg("--work-dir").arg(&self.work).args(["--output", "json"]);
        c.stdin(std::process::Stdio::null());
        match tokio::time::timeout(Duration::from_secs(60), blocking(c)).await {
            Ok(Ok(o)) => serde_json::from_slice::<serde_json::Value>(&o.stdout).map(|v| v["ha"].clone()).unwrap_or_default(),
            _ => serde_json::Value::Null,
        }
    }

    async fn wait(&self, limit: Duration, what: &str, ok: impl Fn(&serde_json::Value) -> bool) -> Result<serde_json::Value, String> {
        let t = Instant::now();
        let mut last = serde_json::Value::Null;
        while t.elapsed() < limit {
            last = self.view().await;
            if ok(&last) {
                return Ok(last);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(format!("{what}: not within {limit:?} (last view {last})"))
    }
}

fn member<'a>(v: &'a serde_json::Value, node: &str) -> Option<&'a serde_json::Value> {
    v["members"].as_array()?.iter().find(|m| m["node"] == node)
}

async fn one_run(cli: &Cli, pgrepl: &Path, i: usize) -> Result<Run, String> {
    let work = std::env::temp_dir().join(format!("pgrepl-bench-netns-{}-{i}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let mut spec = format!(
        "name = \"bnet{i}\"\npostgres = \"15\"\n[replication]\nsync = {{ mode = \"any\", count = 1 }}\n[provider]\nkind = \"ssh\"\nuser = \"root\"\nkey_file = \"{}\"\nknown_hosts = \"{}\"\nhost_key_policy = \"strict\"\nconnect_timeout_secs = 3\n[ha]\nttl = {}\nloop_wait = {}\n[ha.etcd]\ndeploy = true\n",
        lab().join("netns-ha/id_ed25519").display(),
        lab().join("netns-ha/known_hosts").display(),
        cli.ttl,
        cli.loop_wait
    );
    for (n, a, l, r) in HOSTS {
        spec.push_str(&format!("\n[[nodes]]\nname = \"{n}\"\naddress = \"{a}\"\nrole = \"{r}\"\nlocation = \"{l}\"\n"));
    }
    let spec_path = work.join("cluster.toml");
    std::fs::write(&spec_path, spec).map_err(|e| e.to_string())?;
    let c = Cluster { pgrepl: pgrepl.to_path_buf(), spec: spec_path, work: work.clone() };
    let r = measure(&c).await;
    // d's link back first (a failed run may have left it down), then the cluster removed.
    let _ = sh(netns_sh(&["link", "d", "up"]), "link d up").await;
    if let Err(e) = c.pgrepl(&["destroy", "--yes"], UP_LIMIT).await {
        eprintln!("run {i}: destroy: {e}");
    }
    let _ = std::fs::remove_dir_all(&work);
    r
}

async fn measure(c: &Cluster) -> Result<Run, String> {
    c.pgrepl(&["up"], UP_LIMIT).await?;
    c.wait(READY_LIMIT, "d leads, every member reports", |v| {
        v["leader"] == "d" && ["d", "e", "f", "g"].iter().all(|n| member(v, n).is_some())
    })
    .await?;
    for (_, addr, _, _) in HOSTS.iter().filter(|h| h.3 != "witness") {
        sh(
            ssh(
                addr,
                &format!(
                    "grep -q '{APP_USER} 10.213.8.1/32' /etc/postgresql/15/main/pg_hba.conf || echo 'host all {APP_USER} 10.213.8.1/32 scram-sha-256' >> /etc/postgresql/15/main/pg_hba.conf; runuser -u postgres -- psql -X -q -c 'SELECT pg_reload_conf()'"
                ),
            ),
            "pg_hba for the writer",
        )
        .await?;
    }
    sh(ssh("10.213.8.21", &format!("runuser -u postgres -- psql -X -q -c \"{}\"", setup_sql(APP_PASSWORD))), "the writer's role and table")
        .await?;
    let mut cfg = tokio_postgres::Config::new();
    for (_, a, _, r) in HOSTS {
        if r != "witness" {
            cfg.host(a).port(5432);
        }
    }
    cfg.user(APP_USER).password(APP_PASSWORD).dbname("postgres").connect_timeout(Duration::from_secs(1));
    cfg.target_session_attrs(tokio_postgres::config::TargetSessionAttrs::ReadWrite);
    // A client of a server whose link is gone gets no reset: it gives up on an INSERT
    // after 1 s (and on a connection after 1 s) and moves on, as applications set
    // statement or TCP timeouts for this.
    let writer = Writer::start_with_limit(cfg, false, WRITE_LIMIT);
    tokio::time::sleep(BASELINE).await;
    if writer.acks().is_empty() {
        return Err(format!("the writer wrote nothing before the fault ({})", writer.stats()));
    }

    sh(netns_sh(&["link", "d", "down"]), "link d down").await?;
    // From here on nothing of d's can reach the writer: every acknowledgement is another
    // host's (one in flight while the command ran may still be d's).
    let cut = Instant::now();
    // d fenced: polled over its own socket until it no longer accepts writes.
    let fence = tokio::spawn(async move {
        for _ in 0..1200 {
            if writable("d").await != Some(true) {
                return Some(cut.elapsed().as_secs_f64());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    });
    // The new primary accepting writes, as the servers see it (every 50 ms, each of e, f, g
    // over its own socket): the client's first write comes after it.
    let promoted = tokio::spawn(async move {
        for _ in 0..1200 {
            for h in ["e", "f", "g"] {
                if writable(h).await == Some(true) {
                    return Some(cut.elapsed().as_secs_f64());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    });
    let ack = writer.ack_after(cut, RESUME_LIMIT).await.ok_or_else(|| format!("no write within {RESUME_LIMIT:?} ({})", writer.stats()))?;
    let failover = secs_between(cut, ack.at);
    let fenced = fence.await.ok().flatten().ok_or("d kept accepting writes")?;
    let promoted = promoted.await.ok().flatten().ok_or("no standby was seen accepting writes")?;
    let v = c.wait(Duration::from_secs(30), "the new leader reports", |v| v["leader"].as_str().is_some_and(|l| l != "d")).await?;
    let leader = v["leader"].as_str().unwrap_or_default().to_string();

    sh(netns_sh(&["link", "d", "up"]), "link d up").await?;
    let back = Instant::now();
    c.wait(REJOIN_LIMIT, "d streams from the new primary", |v| {
        member(v, "d").is_some_and(|m| m["role"] == "standby" && m["upstream"] == leader.as_str() && m["streaming"] == true)
    })
    .await?;
    let rejoin = back.elapsed().as_secs_f64();
    let acks = writer.stop().await;
    let addr = HOSTS.iter().find(|h| h.0 == leader).map(|h| h.1).ok_or("the leader's address")?;
    let have = sh(ssh(addr, "runuser -u postgres -- psql -X -A -t -c 'SELECT id FROM bench_writes'"), "read the rows back").await?;
    let have: std::collections::HashSet<i64> = have.lines().filter_map(|l| l.trim().parse().ok()).collect();
    let lost = acks.iter().filter(|a| !have.contains(&a.id)).count();
    Ok(Run { failover, promoted, fenced, rejoin, leader, acked: acks.len(), lost })
}

async fn bench(cli: Cli) -> Result<(), String> {
    let pgrepl = pgrepl_binary(cli.pgrepl.as_deref())?;
    let started_lab = !netns_sh(&["status"]).output().map(|o| o.status.success()).unwrap_or(false);
    if started_lab {
        sh(netns_sh(&["up"]), "netns.sh up").await?;
    }
    println!(
        "autofailover_netns: {} runs, PostgreSQL 15, 4 data hosts in 2 locations + a witness, sync any 1, ttl {} s, loop_wait {} s",
        cli.runs, cli.ttl, cli.loop_wait
    );
    println!(
        "{:>4} {:>10} {:>10} {:>10} {:>10} {:>7} {:>9} {:>6}",
        "run", "failover", "promoted", "fenced", "rejoin", "leader", "acked", "lost"
    );
    let mut runs = Vec::new();
    let mut failures = 0;
    for i in 0..cli.runs {
        match one_run(&cli, &pgrepl, i).await {
            Ok(r) => {
                println!(
                    "{:>4} {:>9.2}s {:>9.2}s {:>9.2}s {:>9.2}s {:>7} {:>9} {:>6}",
                    i, r.failover, r.promoted, r.fenced, r.rejoin, r.leader, r.acked, r.lost
                );
                runs.push(r);
            }
            Err(e) => {
                failures += 1;
                println!("{i:>4} failed: {e}");
            }
        }
    }
    if started_lab {
        let _ = sh(netns_sh(&["down"]), "netns.sh down").await;
    }
    if runs.is_empty() {
        return Err("no run succeeded".into());
    }
    let f: Vec<f64> = runs.iter().map(|r| r.failover).collect();
    let fe: Vec<f64> = runs.iter().map(|r| r.fenced).collect();
    let pr: Vec<f64> = runs.iter().map(|r| r.promoted).collect();
    println!(
        "failover (link down -> first write on the new primary): median {:.2}s (min {:.2}, max {:.2}) = {:.2}x the ttl of {} s",
        median(&f),
        min(&f),
        max(&f),
        median(&f) / cli.ttl,
        cli.ttl
    );
    println!(
        "a standby accepting writes (the servers' view): median {:.2}s (min {:.2}, max {:.2}); d fenced itself after: median {:.2}s (max {:.2}); lost rows: {}",
        median(&pr),
        min(&pr),
        max(&pr),
        median(&fe),
        max(&fe),
        runs.iter().map(|r| r.lost).sum::<usize>()
    );
    if failures > 0 || runs.iter().any(|r| r.lost > 0 || r.fenced > cli.ttl + 0.5) {
        return Err(format!("{failures} run(s) failed, or a run lost rows or fenced late"));
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    run_bench("autofailover_netns", bench(cli))
}
