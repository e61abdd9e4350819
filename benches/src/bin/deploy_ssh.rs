//! `deploy_ssh`: `pgrepl up` over SSH on the 3-host netns lab (`scripts/lab/netns.sh`,
//! Debian's PostgreSQL 15 on 10.213.7.11-13) against the floor measured in the same run:
//! the same steps typed by hand over one multiplexed OpenSSH connection per host.
//!
//! Per run, in alternating order:
//!
//! 1. **pgrepl over SSH**: `Deployment::open` (connect, detect, layouts) + `up` of db1
//!    (primary) and db2, db3 (standbys with slots) until both stream; `destroy` after,
//!    untimed.
//! 2. **floor**: `ssh -o ControlMaster` to each host (connection set-up included), then
//!    through those connections: on db1 `pg_createcluster` (the same initdb options),
//!    the replication settings and a pg_hba line appended, `pg_ctl start -w` with the
//!    cluster's configuration file, the role, two slots; on db2 and db3 at once
//!    `pg_createcluster`, the data directory emptied, `pg_basebackup -X stream -c fast -S
//!    slot`, standby settings, `pg_ctl start -w`; then `pg_stat_replication` polled until
//!    both stream. Teardown (`pg_dropcluster --stop`) untimed.
//! 3. **pgrepl local**: `up` of the same three nodes on this machine with the local
//!    provider and the same PostgreSQL 15 binaries, for the ratio to local.
//!
//! After each pgrepl `up` (over SSH and local alike), a **manual failover** under a write
//! load: a writer on the cluster's read-write string (the shared `pgrepl_benches::writer`,
//! one row per transaction), the primary's whole server killed (`kill -9` of the
//! postmaster and its children: nothing can acknowledge after), then
//! `Deployment::failover` at once (again every 20 ms while refused, bounded); timed from
//! the call to the first write acknowledged after the kill.
//!
//! Then the latency of a trivial command (`true`) once connected: through pgrepl's
//! `SshTransport` and through the OpenSSH multiplexed connection (`ssh -S`), 50 each.
//!
//! ```text
//! bash scripts/lab/netns.sh up
//! cargo run --release -p pgrepl-benches --bin deploy_ssh -- [--runs N]
//! ```
//!
//! Run as root. It takes the lab's lock (`$PGREPL_LAB/netns-tests.lock`) for its whole
//! run, refuses to start when a cluster already exists on a lab host, and removes every
//! cluster it created, also on failure.

use std::path::{Path, PathBuf};
use std::process::{Command as Proc, ExitCode, Stdio};
use std::time::{Duration, Instant};

use pgrepl_benches::writer::{APP_USER, Writer, setup_sql};
use pgrepl_benches::{PgTools, Scratch, free_ports, max, median, min};
use pgrepl_core::deploy::{Deployment, NoProgress};
use pgrepl_core::ha::FailoverOptions;
use pgrepl_core::local::LocalBackend;
use pgrepl_core::open::OpenOptions;
use pgrepl_core::spec::{LocalProviderSpec, ProviderSpec};
use pgrepl_core::transport::{Command, Transport};
use pgrepl_core::{ClusterSpec, NodeSpec};
use pgrepl_ssh::{SshAuth, SshBackend, SshConfig, SshTransport};

const HOSTS: [(&str, &str); 3] = [("db1", "10.213.7.11"), ("db2", "10.213.7.12"), ("db3", "10.213.7.13")];
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// Limit of one remote command of the floor.
const STEP_LIMIT: Duration = Duration::from_secs(300);
const STREAM_DEADLINE: Duration = Duration::from_secs(120);
const TRIVIAL_RUNS: usize = 50;

fn lab() -> PathBuf {
    std::env::var_os("PGREPL_LAB").map(PathBuf::from).unwrap_or_else(|| "/opt/pgrepl-lab".into())
}
fn key() -> PathBuf {
    lab().join("netns/id_ed25519")
}
fn known_hosts() -> PathBuf {
    lab().join("netns/known_hosts")
}

fn main() -> ExitCode {
    use clap::Parser;
    let args = pgrepl_benches::BenchArgs::parse();
    match bench(args.runs.into()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("deploy_ssh: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bench(runs: usize) -> Result<(), String> {
    if !key().exists() {
        return Err(format!("no lab key at {} (bash scripts/lab/netns.sh up)", key().display()));
    }
    // The lock the lab's tests take (pgrepl_core::testing::lab_lock), held for the whole run.
    let lock_path = lab().join("netns-tests.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("{}: {e}", lock_path.display()))?;
    lock.lock().map_err(|e| format!("{}: {e}", lock_path.display()))?;
    let scratch = Scratch::new("pgrepl-bench-deploy-ssh", Path::new(PG_BIN), &[])?;
    let masters = Masters::new(&scratch.path)?;
    for (name, addr) in HOSTS {
        let (code, out) = masters.ssh(addr, "pg_lsclusters -h", None)?;
        if code != 0 || !out.trim().is_empty() {
            return Err(format!("{name} ({addr}) already has clusters; run this on an empty lab:\n{out}"));
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| format!("tokio runtime: {e}"))?;
    let local_port = free_ports(21000 + (std::process::id() % 500) as u16 * 8, 3).ok_or("no 3 free ports on 127.0.0.1")?;

    println!("deploy_ssh: pgrepl `up` over SSH (netns lab, Debian PostgreSQL 15) vs the floor typed over OpenSSH ControlMaster");
    println!("date:     {}", String::from_utf8_lossy(&Proc::new("date").arg("-u").output().map(|o| o.stdout).unwrap_or_default()).trim());
    println!("load:     {}", std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim());
    println!("runs:     {runs} of each case, in rotating order");
    println!();
    let tools = PgTools::discover(Path::new(PG_BIN), None)?;
    let (mut ssh_up, mut floor, mut local_up) = (Vec::new(), Vec::new(), Vec::new());
    let (mut ssh_fo, mut local_fo) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let (mut s, mut f, mut l) = (0.0, 0.0, 0.0);
        let (mut sf, mut lf) = (0.0, 0.0);
        for case in 0..3 {
            match (case + i) % 3 {
                0 => (s, sf) = rt.block_on(pgrepl_ssh_once(&masters))?,
                1 => f = floor_once(&masters)?,
                _ => (l, lf) = rt.block_on(pgrepl_local_once(&scratch, &tools, i, local_port))?,
            }
        }
        println!(
            "run {}: pgrepl over SSH {s:6.3} s   floor {f:6.3} s   ratio {:.2}   pgrepl local {l:6.3} s   ratio {:.2}   failover over SSH {sf:.3} s, local {lf:.3} s",
            i + 1,
            s / f,
            s / l
        );
        ssh_up.push(s);
        floor.push(f);
        local_up.push(l);
        ssh_fo.push(sf);
        local_fo.push(lf);
    }
    let pairs = |a: &[f64], b: &[f64]| median(&a.iter().zip(b).map(|(x, y)| x / y).collect::<Vec<f64>>());
    println!();
    println!("case                              median      min      max   ratio of pairs");
    println!("pgrepl up over SSH             {:8.3} s {:8.3} {:8.3}", median(&ssh_up), min(&ssh_up), max(&ssh_up));
    println!(
        "floor (OpenSSH ControlMaster)  {:8.3} s {:8.3} {:8.3}   {:5.2}   <- target <= 1.30",
        median(&floor),
        min(&floor),
        max(&floor),
        pairs(&ssh_up, &floor)
    );
    println!(
        "pgrepl up local (same PG 15)   {:8.3} s {:8.3} {:8.3}   {:5.2}   <- target <= 2.00",
        median(&local_up),
        min(&local_up),
        max(&local_up),
        pairs(&ssh_up, &local_up)
    );
    println!();
    println!("manual failover, command -> first acknowledged write (whole primary server killed, write load)");
    println!("case                              median      min      max   ratio of pairs");
    println!("failover over SSH              {:8.3} s {:8.3} {:8.3}", median(&ssh_fo), min(&ssh_fo), max(&ssh_fo));
    println!(
        "failover local (same PG 15)    {:8.3} s {:8.3} {:8.3}   {:5.2}   <- target <= 2.00",
        median(&local_fo),
        min(&local_fo),
        max(&local_fo),
        pairs(&ssh_fo, &local_fo)
    );

    let (ours, openssh) = rt.block_on(trivial_latency(&masters))?;
    println!();
    println!("trivial remote command (`true`) once connected, {TRIVIAL_RUNS} runs:");
    println!(
        "  pgrepl SshTransport     median {:6.2} ms   min {:6.2}   max {:6.2}   <- target < 20 ms",
        median(&ours),
        min(&ours),
        max(&ours)
    );
    println!("  OpenSSH ssh -S (mux)    median {:6.2} ms   min {:6.2}   max {:6.2}", median(&openssh), min(&openssh), max(&openssh));
    Ok(())
}

/// One OpenSSH master connection per lab host, closed on drop.
struct Masters {
    dir: PathBuf,
}

impl Masters {
    fn new(scratch: &Path) -> Result<Masters, String> {
        let dir = scratch.join("ssh");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(Masters { dir })
    }

    fn base(&self, addr: &str) -> Vec<String> {
        vec![
            "-i".into(),
            key().display().to_string(),
            "-o".into(),
            format!("UserKnownHostsFile={}", known_hosts().display()),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            "ConnectTimeout=5".into(),
            "-o".into(),
            "ControlMaster=auto".into(),
            "-o".into(),
            format!("ControlPath={}/{addr}", self.dir.display()),
            "-o".into(),
            "ControlPersist=120".into(),
            format!("root@{addr}"),
        ]
    }

    /// Runs `script` on `addr` through its master (opened on first use), with `stdin`.
    fn ssh(&self, addr: &str, script: &str, stdin: Option<&str>) -> Result<(i32, String), String> {
        let mut c = Proc::new("ssh");
        c.args(self.base(addr)).arg(format!("cd / && {script}")).stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = c.spawn().map_err(|e| format!("ssh: {e}"))?;
        if let (Some(s), Some(mut w)) = (stdin, child.stdin.take()) {
            use std::io::Write;
            w.write_all(s.as_bytes()).map_err(|e| format!("ssh stdin: {e}"))?;
        }
        let deadline = Instant::now() + STEP_LIMIT;
        // Bounded by STEP_LIMIT.
        loop {
            if child.try_wait().map_err(|e| e.to_string())?.is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{addr}: `{script}` took longer than {STEP_LIMIT:?}"));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        Ok((out.status.code().unwrap_or(-1), text))
    }

    fn ok(&self, addr: &str, script: &str, stdin: Option<&str>) -> Result<String, String> {
        match self.ssh(addr, script, stdin)? {
            (0, out) => Ok(out),
            (code, out) => Err(format!("{addr}: `{script}` exited with {code}: {out}")),
        }
    }

    fn close(&self) {
        for (_, addr) in HOSTS {
            let _ = Proc::new("ssh").args(self.base(addr)).args(["-O", "exit"]).stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
    }
}

impl Drop for Masters {
    fn drop(&mut self) {
        self.close();
    }
}

fn ssh_spec() -> ClusterSpec {
    let text = format!(
        "name = \"benchssh\"\npostgres = \"15\"\n[replication]\nslots = true\n[provider]\nkind = \"ssh\"\nuser = \"root\"\n\
         key_file = \"{}\"\nknown_hosts = \"{}\"\nconnect_timeout_secs = 3\n{}",
        key().display(),
        known_hosts().display(),
        HOSTS
            .iter()
            .enumerate()
            .map(|(i, (n, a))| format!(
                "[[nodes]]\nname = \"{n}\"\naddress = \"{a}\"\nrole = \"{}\"\n",
                if i == 0 { "primary" } else { "standby" }
            ))
            .collect::<String>()
    );
    ClusterSpec::from_toml(&text).expect("the bench's spec parses")
}

/// `up` over SSH, then a manual failover: the seconds of each.
async fn pgrepl_ssh_once(masters: &Masters) -> Result<(f64, f64), String> {
    let spec = ssh_spec();
    let opts = OpenOptions { work_dir: Some(masters.dir.join("pgrepl-work")), ..OpenOptions::default() };
    let t0 = Instant::now();
    let d = Deployment::open(&spec, &opts, &[&SshBackend]).await.map_err(|e| format!("pgrepl over SSH: open: {e}"))?;
    let up = d.up(&NoProgress).await;
    let took = t0.elapsed().as_secs_f64();
    let failover = match up {
        Ok(_) => ssh_failover(masters, &d).await,
        Err(_) => Ok(0.0),
    };
    let destroyed = d.destroy(&NoProgress).await;
    up.map_err(|e| format!("pgrepl over SSH: up: {e}"))?;
    let failover = failover.map_err(|e| format!("pgrepl over SSH: failover: {e}"))?;
    destroyed.map_err(|e| format!("pgrepl over SSH: destroy: {e}"))?;
    Ok((took, failover))
}

/// The application's password of this run (in no process's arguments: psql reads the
/// SQL on stdin, the writer gets it in its configuration).
fn app_password() -> String {
    format!("bench-app-{}", std::process::id())
}

/// The writer's configuration: the cluster's read-write string, the application's role.
async fn writer_config(d: &Deployment) -> Result<tokio_postgres::Config, String> {
    let url = d.status().await.connections.read_write;
    let mut cfg: tokio_postgres::Config = url.parse().map_err(|e| format!("{url}: {e}"))?;
    cfg.user(APP_USER).password(app_password()).application_name("pgrepl-bench-writer").connect_timeout(Duration::from_secs(2));
    Ok(cfg)
}

async fn ssh_failover(m: &Masters, d: &Deployment) -> Result<f64, String> {
    let p = HOSTS[0].1;
    m.ok(p, "runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -d postgres", Some(&setup_sql(&app_password())))?;
    // This machine's address on the lab's bridge may connect as the application.
    for (_, a) in HOSTS {
        m.ok(
            a,
            &format!(
                "echo 'host all {APP_USER} 10.213.7.1/32 scram-sha-256' >> /etc/postgresql/15/main/pg_hba.conf && runuser -u postgres -- psql -X -q -c 'SELECT pg_reload_conf()' >/dev/null"
            ),
            None,
        )?;
    }
    let cfg = writer_config(d).await?;
    failover_once(
        d,
        cfg,
        || m.ok(p, "pid=$(head -1 /var/lib/postgresql/15/main/postmaster.pid) && kill -KILL $pid $(pgrep -P $pid)", None).map(|_| ()),
        |a| a.addr.is_some_and(|x| x.to_string() != p),
    )
    .await
}

/// Manual failover, command → first acknowledged write, under a write load; `kill` kills
/// the primary's whole server (postmaster and children); `new` tells a commit of another
/// server (one the old primary sent just before it died can arrive after the kill).
async fn failover_once(
    d: &Deployment,
    cfg: tokio_postgres::Config,
    kill: impl FnOnce() -> Result<(), String>,
    new: impl Fn(&pgrepl_benches::writer::Ack) -> bool,
) -> Result<f64, String> {
    const RETRY: Duration = Duration::from_millis(20);
    const MAX_TRIES: usize = 1500; // 30 s of refusals
    let w = Writer::start(cfg, false);
    if w.ack_after(Instant::now(), Duration::from_secs(30)).await.is_none() {
        let stats = w.stats();
        w.stop().await;
        return Err(format!("the writer got no commit before the kill: {stats}"));
    }
    if let Err(e) = kill() {
        w.stop().await;
        return Err(format!("kill the primary: {e}"));
    }
    let t_kill = Instant::now();
    let t_call = Instant::now();
    let mut outcome = Err("refused".to_string());
    for _ in 0..MAX_TRIES {
        match d.failover(FailoverOptions { to: None, force: false }, &NoProgress).await {
            Ok(rep) => {
                let t = &rep.timings;
                println!(
                    "    {} failover: call {:.3} s (its total {:.3}), observe {:.3}, fence {:.3}, promote {:.3}, writable at {:.3}",
                    rep.cluster,
                    t_call.elapsed().as_secs_f64(),
                    t.total_seconds,
                    t.observe_seconds,
                    t.fence_seconds,
                    t.promote_seconds,
                    t.write_available_seconds
                );
                outcome = Ok(());
                break;
            }
            Err(e) if e.is_refusal() => {
                outcome = Err(e.to_string());
                tokio::time::sleep(RETRY).await;
            }
            Err(e) => {
                outcome = Err(e.to_string());
                break;
            }
        }
    }
    let ack = match outcome {
        Ok(()) => w.ack_after_where(t_kill, Duration::from_secs(30), new).await,
        Err(_) => None,
    };
    let stats = w.stats();
    w.stop().await;
    outcome?;
    let ack = ack.ok_or_else(|| format!("no write acknowledged within 30 s of the failover: {stats}"))?;
    Ok(ack.at.duration_since(t_call).as_secs_f64())
}

/// `up` on the local provider, then a manual failover: the seconds of each.
async fn pgrepl_local_once(scratch: &Scratch, tools: &PgTools, i: usize, port: u16) -> Result<(f64, f64), String> {
    let work = scratch.path.join(format!("local-{i}"));
    let spec = ClusterSpec::builder("benchlocal")
        .postgres(pgrepl_core::version::PgMajor::V15)
        .pg_bin(PG_BIN)
        .provider(ProviderSpec::Local(LocalProviderSpec { work_dir: Some(work.clone()), os_user: None, base_port: Some(port) }))
        .node(NodeSpec::primary("db1"))
        .node(NodeSpec::standby("db2"))
        .node(NodeSpec::standby("db3"))
        .into_spec();
    let t0 = Instant::now();
    let d = Deployment::open(&spec, &OpenOptions::default(), &[&LocalBackend]).await.map_err(|e| format!("pgrepl local: open: {e}"))?;
    let up = d.up(&NoProgress).await;
    let took = t0.elapsed().as_secs_f64();
    let failover = match up {
        Ok(_) => local_failover(tools, &d, &work, port).await,
        Err(_) => Ok(0.0),
    };
    if d.destroy(&NoProgress).await.is_err() {
        scratch.stop_servers_under(&work);
    }
    let _ = std::fs::remove_dir_all(&work);
    up.map_err(|e| format!("pgrepl local: up: {e}"))?;
    let failover = failover.map_err(|e| format!("pgrepl local: failover: {e}"))?;
    Ok((took, failover))
}

async fn local_failover(tools: &PgTools, d: &Deployment, work: &Path, port: u16) -> Result<f64, String> {
    tools
        .psql(&work.join("db1").join("run"), port, &setup_sql(&app_password()))
        .await
        .map_err(|e| format!("the application's role: {e}"))?;
    let cfg = writer_config(d).await?;
    let data = work.join("db1").join("data");
    failover_once(
        d,
        cfg,
        || {
            // The postmaster: the first line of its own postmaster.pid, checked against its
            // command line before anything is killed; then it and its children.
            let text = std::fs::read_to_string(data.join("postmaster.pid")).map_err(|e| format!("db1: postmaster.pid: {e}"))?;
            let pid: u32 = text.lines().next().and_then(|l| l.trim().parse().ok()).ok_or("db1: no PID in postmaster.pid")?;
            let cmdline =
                std::fs::read(format!("/proc/{pid}/cmdline")).map(|b| String::from_utf8_lossy(&b).replace('\0', " ")).unwrap_or_default();
            if !cmdline.contains(&data.display().to_string()) {
                return Err(format!("PID {pid} is not db1's postmaster ({cmdline:?}); nothing killed"));
            }
            let script = format!("kill -KILL {pid} $(pgrep -P {pid})");
            let o = Proc::new("sh").args(["-c", &script]).output().map_err(|e| format!("kill: {e}"))?;
            if o.status.success() { Ok(()) } else { Err(format!("{script}: {}", String::from_utf8_lossy(&o.stderr))) }
        },
        |a| a.port != i32::from(port),
    )
    .await
}

fn floor_once(masters: &Masters) -> Result<f64, String> {
    masters.close(); // the connections are part of the work
    let t0 = Instant::now();
    let r = floor_steps(masters);
    let took = t0.elapsed().as_secs_f64();
    for (_, addr) in HOSTS {
        let _ = masters.ssh(addr, "pg_dropcluster --stop 15 main 2>/dev/null; rm -rf /var/lib/postgresql/bench-floor", None);
    }
    r.map(|()| took)
}

/// Appended to the primary's configuration, as pgrepl's settings would be.
const PRIMARY_SETTINGS: &str = "listen_addresses = '*'\nwal_level = replica\nmax_wal_senders = 10\nmax_replication_slots = 10\nhot_standby = on\nwal_keep_size = 512MB\n";

fn floor_steps(m: &Masters) -> Result<(), String> {
    let password = format!("floor-{}", std::process::id());
    let conf = "/etc/postgresql/15/main/postgresql.conf";
    let data = "/var/lib/postgresql/15/main";
    let create = "pg_createcluster --port=5432 --encoding=UTF8 --locale=C 15 main -- --auth-host=scram-sha-256 --data-checksums >/dev/null";
    let start = format!(
        "runuser -u postgres -- {PG_BIN}/pg_ctl -D {data} -o '-c config_file={conf}' -l /var/log/postgresql/postgresql-15-main.log -w -t 120 start >/dev/null"
    );
    let (p, s1, s2) = (HOSTS[0].1, HOSTS[1].1, HOSTS[2].1);
    // The standbys' pg_createcluster runs while the primary is set up (independent hosts).
    std::thread::scope(|sc| -> Result<(), String> {
        let standbys_ready: Vec<_> = [s1, s2].map(|a| sc.spawn(move || m.ok(a, &format!("{create} && rm -rf {data}/*"), None))).into();
        m.ok(p, create, None)?;
        m.ok(
            p,
            &format!(
                "printf %s \"$(cat)\" >> {conf} && echo 'host replication replicator 10.213.7.0/24 scram-sha-256' >> /etc/postgresql/15/main/pg_hba.conf && {start}"
            ),
            Some(PRIMARY_SETTINGS),
        )?;
        m.ok(
            p,
            "runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -d postgres",
            Some(&format!(
                "CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD '{password}';\n\
                 SELECT pg_create_physical_replication_slot('floor_db2');\nSELECT pg_create_physical_replication_slot('floor_db3');\n"
            )),
        )?;
        for h in standbys_ready {
            h.join().map_err(|_| "a thread panicked".to_string())??;
        }
        let clones: Vec<_> = [(s1, "db2"), (s2, "db3")]
            .map(|(a, n)| {
                let (password, start) = (password.clone(), start.clone());
                sc.spawn(move || {
                    // The password on stdin into a 0600 passfile, never in an argument.
                    m.ok(
                        a,
                        &format!(
                            "umask 077; cat > /var/lib/postgresql/.pgpass && chown postgres: /var/lib/postgresql/.pgpass && \
                             runuser -u postgres -- pg_basebackup -h {p} -U replicator -D {data} -X stream -c fast -S floor_{n} && \
                             printf \"primary_conninfo = 'host={p} user=replicator application_name={n}'\\nprimary_slot_name = 'floor_{n}'\\n\" >> {conf} && \
                             runuser -u postgres -- touch {data}/standby.signal && {start}"
                        ),
                        Some(&format!("{p}:5432:*:replicator:{password}\n")),
                    )
                })
            })
            .into();
        for h in clones {
            h.join().map_err(|_| "a thread panicked".to_string())??;
        }
        Ok(())
    })?;
    let deadline = Instant::now() + STREAM_DEADLINE;
    // Bounded: one poll per 10 ms until the deadline.
    for _ in 0..(STREAM_DEADLINE.as_millis() / 10) {
        let out = m.ok(
            p,
            "runuser -u postgres -- psql -X -A -t -d postgres -c \"SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'\"",
            None,
        )?;
        if out.lines().any(|l| l.trim() == "2") {
            for a in [s1, s2] {
                let _ = m.ssh(a, "rm -f /var/lib/postgresql/.pgpass", None);
            }
            return Ok(());
        }
        if Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err("the floor's standbys did not stream".into())
}

async fn trivial_latency(m: &Masters) -> Result<(Vec<f64>, Vec<f64>), String> {
    let addr = HOSTS[1].1;
    let cfg = SshConfig::builder(addr)
        .with_user("root")
        .with_auth(SshAuth::KeyFile(key()))
        .with_known_hosts(known_hosts())
        .build()
        .map_err(|e| e.to_string())?;
    let t = SshTransport::connect(cfg).await.map_err(|e| format!("connect: {e}"))?;
    t.exec(&Command::new("true")).await.map_err(|e| e.to_string())?; // the shell is open
    let mut ours = Vec::new();
    for _ in 0..TRIVIAL_RUNS {
        let t0 = Instant::now();
        let o = t.exec(&Command::new("true")).await.map_err(|e| e.to_string())?;
        ours.push(t0.elapsed().as_secs_f64() * 1000.0);
        if !o.success() {
            return Err(format!("true exited with {}", o.status));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    t.disconnect().await;
    m.ok(addr, "true", None)?; // the master is open
    let mut openssh = Vec::new();
    for _ in 0..TRIVIAL_RUNS {
        let t0 = Instant::now();
        m.ok(addr, "true", None)?;
        openssh.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    Ok((ours, openssh))
}
