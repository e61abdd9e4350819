//! Shared pieces of pgrepl's benchmarks: running PostgreSQL tools as the server's OS
//! user with a time limit, a scratch directory that stops its own servers on drop, free
//! loopback ports, and small statistics.
//!
//! Benchmarks are plain programs (`src/bin/*.rs`) that print numbers; see README.md.

#![allow(missing_docs)]

pub mod ha;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The OS user PostgreSQL runs as: `postgres` when the bench runs as root (PostgreSQL
/// refuses root), else the current user.
pub fn pg_user() -> String {
    if is_root() { "postgres".into() } else { std::env::var("USER").unwrap_or_else(|_| "postgres".into()) }
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0")))
        .unwrap_or(false)
}

/// Runs `program` as [`pg_user`] (through `runuser` when root), with `env` on top of a
/// minimal environment, killed after `limit` (`timeout(1)`). Errors carry the output.
pub fn run_pg(program: &Path, args: &[&str], env: &[(&str, &str)], limit: Duration) -> Result<Output, String> {
    let mut c = Command::new("timeout");
    c.arg("--kill-after=5").arg(limit.as_secs().max(1).to_string());
    if is_root() {
        c.args(["runuser", "-u", "postgres", "--"]);
    }
    c.arg(program)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LC_ALL", "C")
        .envs(env.iter().copied())
        .current_dir("/")
        .stdin(Stdio::null());
    let out = c.output().map_err(|e| format!("could not run {}: {e}", program.display()))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{} {} failed ({}):\n{}{}",
            program.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Gives `path` to [`pg_user`] (when running as root).
pub fn chown_pg(path: &Path) -> Result<(), String> {
    if !is_root() {
        return Ok(());
    }
    let out = Command::new("chown").arg("postgres:postgres").arg(path).output().map_err(|e| format!("chown {}: {e}", path.display()))?;
    if out.status.success() { Ok(()) } else { Err(format!("chown {}: {}", path.display(), String::from_utf8_lossy(&out.stderr))) }
}

/// Creates `path` (mode 0700) for [`pg_user`].
pub fn mkdir_pg(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path).map_err(|e| format!("mkdir {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(|e| format!("chmod {}: {e}", path.display()))?;
    chown_pg(path)
}

/// A scratch directory (mode 0755, so the server's user can traverse it). On drop, every
/// server whose data directory lies under it is stopped through its own `postmaster.pid`
/// (`pg_ctl stop -m immediate`), then the directory is removed.
#[derive(Debug)]
pub struct Scratch {
    pub path: PathBuf,
    pg_ctl: PathBuf,
    env: Vec<(String, String)>,
}

impl Scratch {
    pub fn new(prefix: &str, bin_dir: &Path, env: &[(&str, &str)]) -> Result<Scratch, String> {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).map_err(|e| format!("mkdir {}: {e}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).map_err(|e| format!("chmod {}: {e}", path.display()))?;
        Ok(Scratch { path, pg_ctl: bin_dir.join("pg_ctl"), env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() })
    }

    /// Stops every server under `dir` that has a `postmaster.pid` (bounded depth).
    pub fn stop_servers_under(&self, dir: &Path) {
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        for data in find_data_dirs(dir, 5) {
            let d = data.to_string_lossy().into_owned();
            let _ = run_pg(&self.pg_ctl, &["-D", &d, "-m", "immediate", "-w", "-t", "30", "stop"], &env, Duration::from_secs(60));
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.stop_servers_under(&self.path.clone());
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn find_data_dirs(dir: &Path, depth: u32) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if dir.join("postmaster.pid").is_file() {
        out.push(dir.to_path_buf());
    }
    if depth == 0 {
        return out;
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                out.extend(find_data_dirs(&p, depth - 1));
            }
        }
    }
    out
}

/// A base port with `n` consecutive free ports on 127.0.0.1, searched from `start`.
pub fn free_ports(start: u16, n: u16) -> Option<u16> {
    let mut base = start;
    for _ in 0..2000 {
        if (base..base + n).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return Some(base);
        }
        base = base.checked_add(n + 1)?;
    }
    None
}

/// Median of `xs` (mean of the two middle values for an even count); NaN when empty.
pub fn median(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 { v[m] } else { (v[m - 1] + v[m]) / 2.0 }
}

/// Times `f`, returning its result and the seconds it took.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed().as_secs_f64())
}

/// Total length of the union of `[start, end)` intervals (seconds).
pub fn union_len(intervals: &[(f64, f64)]) -> f64 {
    let mut v: Vec<(f64, f64)> = intervals.iter().copied().filter(|(a, b)| b > a).collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut total = 0.0;
    let mut cur: Option<(f64, f64)> = None;
    for (a, b) in v {
        match cur {
            Some((ca, cb)) if a <= cb => cur = Some((ca, cb.max(b))),
            Some((ca, cb)) => {
                total += cb - ca;
                cur = Some((a, b));
            }
            None => cur = Some((a, b)),
        }
    }
    if let Some((a, b)) = cur {
        total += b - a;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn unions() {
        assert_eq!(union_len(&[(0.0, 1.0), (0.5, 2.0), (3.0, 4.0)]), 3.0);
        assert_eq!(union_len(&[]), 0.0);
    }
}

/// The options every bench program takes (`--pg-bin`, `--pg-client-bin`, `--runs`, `-v`).
#[derive(Debug, clap::Parser)]
pub struct BenchArgs {
    /// Server binaries (default: the test lab's, `$PGREPL_LAB/pg/<major>/bin`).
    #[arg(long)]
    pub pg_bin: Option<std::path::PathBuf>,
    /// psql/pg_basebackup when they are not beside the server.
    #[arg(long)]
    pub pg_client_bin: Option<std::path::PathBuf>,
    /// Runs of each case.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=100))]
    pub runs: u16,
    /// Print more (what each program documents).
    #[arg(short, long)]
    pub verbose: bool,
    /// Accepted and ignored (`cargo bench` passes it).
    #[arg(long, hide = true)]
    pub bench: bool,
}

impl BenchArgs {
    /// `--pg-bin`, or the test lab's build of `major`.
    pub fn pg_bin_or_lab(&self, major: &str) -> std::path::PathBuf {
        self.pg_bin.clone().unwrap_or_else(|| {
            std::env::var_os("PGREPL_LAB")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| "/opt/pgrepl-lab".into())
                .join("pg")
                .join(major)
                .join("bin")
        })
    }
}

/// Prints the lines every bench run records: date, machine (cores, CPU, kernel, load) and
/// the PostgreSQL binaries, so that a kept run says what it ran on.
pub fn print_environment(b: &pgrepl_core::layout::Binaries) {
    let sh = |c: &str| {
        std::process::Command::new("sh")
            .args(["-c", c])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    println!("date:     {}", sh("date -u '+%Y-%m-%d %H:%M:%S UTC'"));
    println!(
        "machine:  {} cores, {}, kernel {}, load {}",
        sh("nproc"),
        sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-"),
        sh("uname -r"),
        sh("cut -d' ' -f1-3 /proc/loadavg")
    );
    println!(
        "postgres: {} (server {}, client tools {}{})",
        b.version,
        b.bin_dir,
        b.client_bin_dir,
        b.lib_dir.as_deref().map(|l| format!(", LD_LIBRARY_PATH={l}")).unwrap_or_default()
    );
}

/// PostgreSQL's tools (the discovered binaries), run as [`pg_user`] off the async threads.
#[derive(Debug)]
pub struct PgTools {
    pub b: pgrepl_core::layout::Binaries,
    /// `LD_LIBRARY_PATH` when the binaries need it.
    pub env: Vec<(String, String)>,
}

impl PgTools {
    /// The binaries in `pg_bin` (client tools from `pg_client_bin` when given).
    pub fn discover(pg_bin: &Path, pg_client_bin: Option<&Path>) -> Result<PgTools, String> {
        use pgrepl_core::discovery::{DiscoveryOptions, discover};
        let b = discover(&DiscoveryOptions {
            pg_bin: Some(pg_bin.to_path_buf()),
            pg_client_bin: pg_client_bin.map(Path::to_path_buf),
            major: None,
        })
        .map_err(|e| format!("{e} (install the test lab with scripts/lab/install.sh, or pass --pg-bin)"))?;
        let env = b.lib_dir.iter().map(|l| ("LD_LIBRARY_PATH".to_string(), l.clone())).collect();
        Ok(PgTools { b, env })
    }

    pub fn env_ref(&self) -> Vec<(&str, &str)> {
        self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    pub fn server(&self, tool: &str) -> PathBuf {
        Path::new(&self.b.bin_dir).join(tool)
    }

    pub fn client(&self, tool: &str) -> PathBuf {
        Path::new(&self.b.client_bin_dir).join(tool)
    }

    /// Runs `program` as the server's OS user (limit [`floor::STEP_LIMIT`]): its stdout, trimmed.
    pub async fn run(&self, program: PathBuf, args: Vec<String>, extra_env: Vec<(String, String)>) -> Result<String, String> {
        let mut env = self.env.clone();
        env.extend(extra_env);
        tokio::task::spawn_blocking(move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            let e: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            run_pg(&program, &a, &e, floor::STEP_LIMIT).map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        })
        .await
        .map_err(|e| format!("task: {e}"))?
    }

    /// `sql` through psql over the Unix socket in `socket_dir` as the superuser.
    pub async fn psql(&self, socket_dir: &Path, port: u16, sql: &str) -> Result<String, String> {
        let args =
            ["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", &path_str(socket_dir), "-p", &port.to_string(), "-U", "postgres"];
        let mut a: Vec<String> = args.iter().map(|x| x.to_string()).collect();
        a.extend(["-d".into(), "postgres".into(), "-c".into(), sql.to_string()]);
        self.run(self.client("psql"), a, Vec::new()).await
    }
}

pub fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// `b - a` in seconds, negative when `b` is earlier.
pub fn secs_between(a: Instant, b: Instant) -> f64 {
    if b >= a { b.duration_since(a).as_secs_f64() } else { -a.duration_since(b).as_secs_f64() }
}

/// Smallest of `xs` (infinity when empty).
pub fn min(xs: &[f64]) -> f64 {
    xs.iter().copied().fold(f64::INFINITY, f64::min)
}

/// Largest of `xs` (minus infinity when empty).
pub fn max(xs: &[f64]) -> f64 {
    xs.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

/// An application's write load: one row per transaction through a libpq connection string
/// (typically the multi-host read-write one), every acknowledged commit recorded with the
/// port of the server that acknowledged it; reconnects at once after an error.
pub mod writer {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    /// The application role the writers use (password authentication over TCP).
    pub const APP_USER: &str = "bench_app";
    /// The table and the insert: the id and the port of the server that took it.
    pub const TABLE_SQL: &str = "CREATE TABLE bench_writes (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp());";
    pub const INSERT_SQL: &str = "INSERT INTO bench_writes DEFAULT VALUES RETURNING id, inet_server_port(), host(inet_server_addr())";
    /// Pause between commits, limits of one connect and one INSERT, total lifetime.
    pub const WRITE_PAUSE: Duration = Duration::from_millis(1);
    pub const CONNECT_LIMIT: Duration = Duration::from_secs(10);
    pub const INSERT_LIMIT: Duration = Duration::from_secs(5);
    const WRITER_LIFETIME: Duration = Duration::from_secs(3 * 3600);

    /// The SQL that creates the application role and the table (run it on a primary).
    pub fn setup_sql(password: &str) -> String {
        format!(
            "CREATE ROLE {APP_USER} LOGIN PASSWORD '{password}'; {TABLE_SQL} GRANT SELECT, INSERT ON bench_writes TO {APP_USER}; \
             GRANT USAGE ON SEQUENCE bench_writes_id_seq TO {APP_USER};"
        )
    }

    #[derive(Debug, Clone, Copy)]
    pub struct Ack {
        pub at: Instant,
        pub id: i64,
        pub port: i32,
        /// The server's address (`None` over a Unix socket).
        pub addr: Option<std::net::IpAddr>,
    }

    /// Consecutive identical errors, collapsed.
    #[derive(Debug, Clone)]
    pub struct ErrRun {
        pub first: Instant,
        pub last: Instant,
        pub what: String,
        pub count: u32,
    }

    #[derive(Debug, Default)]
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

    /// The running load.
    #[derive(Debug)]
    pub struct Writer {
        log: Arc<Mutex<Log>>,
        stop: Arc<AtomicBool>,
        paused: Arc<AtomicBool>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Writer {
        /// Starts writing (or waits, `paused`) on the current tokio runtime.
        pub fn start(cfg: tokio_postgres::Config, paused: bool) -> Writer {
            Self::start_with_limit(cfg, paused, INSERT_LIMIT)
        }

        /// [`start`](Self::start) with another limit of one INSERT: a client that gives up
        /// on a server whose link is gone (no reset ever comes) sooner than the default.
        pub fn start_with_limit(cfg: tokio_postgres::Config, paused: bool, insert_limit: Duration) -> Writer {
            let log = Arc::new(Mutex::new(Log::default()));
            let stop = Arc::new(AtomicBool::new(false));
            let paused = Arc::new(AtomicBool::new(paused));
            let task = tokio::spawn(writer_loop(cfg, log.clone(), stop.clone(), paused.clone(), insert_limit));
            Writer { log, stop, paused, task }
        }

        pub fn set_paused(&self, p: bool) {
            self.paused.store(p, Ordering::SeqCst);
        }

        pub fn acks(&self) -> Vec<Ack> {
            self.log.lock().expect("not poisoned").acks.clone()
        }

        /// The error runs that overlap `[a, b]`.
        pub fn errors_between(&self, a: Instant, b: Instant) -> Vec<ErrRun> {
            self.log.lock().expect("not poisoned").errors.iter().filter(|e| e.last >= a && e.first <= b).cloned().collect()
        }

        /// The first acknowledgement after `t` that `accept` takes, waiting up to `limit`.
        pub async fn ack_after_where(&self, t: Instant, limit: Duration, accept: impl Fn(&Ack) -> bool) -> Option<Ack> {
            let deadline = Instant::now() + limit;
            loop {
                {
                    let log = self.log.lock().expect("not poisoned");
                    let start = log.acks.partition_point(|a| a.at <= t);
                    if let Some(a) = log.acks[start..].iter().find(|a| accept(a)) {
                        return Some(*a);
                    }
                }
                if Instant::now() > deadline || self.task.is_finished() {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }

        /// When the first error after `t` happened, waiting up to `limit` for one.
        pub async fn first_error_after(&self, t: Instant, limit: Duration) -> Option<Instant> {
            let deadline = Instant::now() + limit;
            loop {
                if let Some(e) = self.log.lock().expect("not poisoned").errors.iter().find(|e| e.first > t) {
                    return Some(e.first);
                }
                if Instant::now() > deadline || self.task.is_finished() {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }

        /// The first acknowledgement after `t`, waiting up to `limit` for it.
        pub async fn ack_after(&self, t: Instant, limit: Duration) -> Option<Ack> {
            self.ack_after_where(t, limit, |_| true).await
        }

        pub fn stats(&self) -> String {
            let l = self.log.lock().expect("not poisoned");
            format!(
                "{} acknowledged commits, {} connections, {} errors",
                l.acks.len(),
                l.connects,
                l.errors.iter().map(|e| e.count as u64).sum::<u64>()
            )
        }

        /// Stops the load (bounded): every acknowledgement it recorded.
        pub async fn stop(self) -> Vec<Ack> {
            self.stop.store(true, Ordering::SeqCst);
            let log = self.log.clone();
            let _ = tokio::time::timeout(INSERT_LIMIT + CONNECT_LIMIT, self.task).await;
            log.lock().expect("not poisoned").acks.clone()
        }
    }

    async fn writer_loop(
        cfg: tokio_postgres::Config,
        log: Arc<Mutex<Log>>,
        stop: Arc<AtomicBool>,
        paused: Arc<AtomicBool>,
        insert_limit: Duration,
    ) {
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
            match tokio::time::timeout(insert_limit, client.query_one(&stmt, &[])).await {
                Ok(Ok(row)) => {
                    let at = Instant::now();
                    let (id, port, addr): (i64, Option<i32>, Option<String>) = (row.get(0), row.get(1), row.get(2));
                    let addr = addr.and_then(|a| a.parse().ok());
                    log.lock().expect("not poisoned").acks.push(Ack { at, id, port: port.unwrap_or(0), addr });
                    conn = Some((client, stmt));
                    tokio::time::sleep(WRITE_PAUSE).await;
                }
                // The connection is dropped; the next turn reconnects at once.
                Ok(Err(e)) => log.lock().expect("not poisoned").error(format!("insert: {}", pg_err(&e))),
                Err(_) => log.lock().expect("not poisoned").error("insert: timed out".into()),
            }
        }
    }

    /// A new connection with the insert prepared.
    pub async fn connect(
        cfg: &tokio_postgres::Config,
    ) -> Result<(tokio_postgres::Client, tokio_postgres::Statement), tokio_postgres::Error> {
        let (client, connection) = cfg.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let stmt = client.prepare(INSERT_SQL).await?;
        Ok((client, stmt))
    }

    /// An error with its SQLSTATE, or its chain of causes.
    pub fn pg_err(e: &tokio_postgres::Error) -> String {
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

    /// Error runs as lines, times from `t0`.
    pub fn error_summary(errs: &[ErrRun], t0: Instant) -> Vec<String> {
        errs.iter()
            .map(|e| {
                format!(
                    "{:+.3}..{:+.3} s  {} x {}",
                    super::secs_between(t0, e.first),
                    super::secs_between(t0, e.last),
                    e.count,
                    e.what.chars().take(150).collect::<String>()
                )
            })
            .collect()
    }
}

/// The promote floor, by hand: a primary + hot standby pair set up without pgrepl (same
/// binaries, pgrepl's initdb flags and the settings that matter for promotion: hot standby,
/// `wal_retrieve_retry_interval = 1s`, checksums). Each [`floor::FloorPair::once`] stops the
/// primary cleanly, waits until the standby replayed all it received, then times
/// `pg_ctl promote -w` + a new connection + an INSERT (and, from the same start, the floor
/// writer's first acknowledged commit through the pair's multi-host read-write string);
/// the old primary restarts as a standby of the new one, so the pair swaps roles every run.
pub mod floor {
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    use super::writer::{APP_USER, CONNECT_LIMIT, Writer, connect, pg_err, setup_sql};
    use super::{PgTools, chown_pg, mkdir_pg, path_str as s, secs_between};

    /// Limit of one command (initdb, pg_basebackup, pg_ctl, psql).
    pub const STEP_LIMIT: Duration = Duration::from_secs(300);
    const HEALTHY_DEADLINE: Duration = Duration::from_secs(120);
    const RESUME_DEADLINE: Duration = Duration::from_secs(60);

    #[derive(Debug)]
    struct FloorNode {
        name: String,
        data: PathBuf,
        port: u16,
    }

    #[derive(Debug)]
    pub struct FloorPair {
        dir: PathBuf,
        run: PathBuf,
        nodes: [FloorNode; 2],
        /// Index of the current primary.
        primary: usize,
    }

    #[derive(Debug, Clone)]
    pub struct FloorRun {
        pub from: String,
        pub to: String,
        /// Clean stop of the primary (not in the floor).
        pub stop: f64,
        /// `pg_ctl promote -w` alone.
        pub promote_w: f64,
        /// `pg_ctl promote -w`, then a new connection and an INSERT until it commits.
        pub literal: f64,
        /// From the promote command to the floor writer's first acknowledged commit.
        pub first_ack: f64,
    }

    impl FloorPair {
        /// The pair's multi-host read-write string (as pgrepl writes them).
        pub fn url(&self) -> String {
            format!(
                "postgresql://127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write&connect_timeout=5",
                self.nodes[0].port, self.nodes[1].port
            )
        }

        fn log(&self, n: &FloorNode) -> String {
            s(&self.dir.join(format!("{}.log", n.name)))
        }

        /// initdb, settings, start, the application's role (`app_password`) and table,
        /// pg_basebackup, standby, streaming. Servers on 127.0.0.1:`port` and `port + 1`.
        pub async fn setup(pg: &PgTools, dir: &Path, port: u16, app_password: &str) -> Result<FloorPair, String> {
            let caps = pg.b.major.caps();
            if caps.recovery != pgrepl_core::version::RecoveryStyle::StandbySignal {
                return Err(format!("PostgreSQL {}: the floor is written for 12+ (standby.signal)", pg.b.major));
            }
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
            pg.run(pg.server("initdb"), init, Vec::new()).await.map_err(|e| format!("initdb: {e}"))?;
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
            pair.pg_ctl(pg, a, &["-w", "-t", "120", "start"]).await?;
            let sql = format!("CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD '{pw}'; {}", setup_sql(app_password));
            pg.psql(&pair.run, a.port, &sql).await?;
            let bb: Vec<String> =
                ["-h", "127.0.0.1", "-p", &a.port.to_string(), "-U", "replicator", "-D", &s(&b.data), "-X", "stream", "-c", "fast"]
                    .iter()
                    .map(|x| x.to_string())
                    .collect();
            pg.run(pg.client("pg_basebackup"), bb, vec![("PGPASSWORD".into(), pw.into())])
                .await
                .map_err(|e| format!("pg_basebackup: {e}"))?;
            append(&b.data.join("postgresql.conf"), &own(b, a))?;
            write_pg(&b.data.join("standby.signal"), "")?;
            pair.pg_ctl(pg, b, &["-w", "-t", "120", "start"]).await?;
            pair.wait_streaming(pg).await?;
            Ok(pair)
        }

        async fn pg_ctl(&self, pg: &PgTools, n: &FloorNode, args: &[&str]) -> Result<String, String> {
            let mut a = vec!["-D".to_string(), s(&n.data), "-l".into(), self.log(n)];
            a.extend(args.iter().map(|x| x.to_string()));
            pg.run(pg.server("pg_ctl"), a, Vec::new()).await.map_err(|e| format!("pg_ctl {}: {e}", args.join(" ")))
        }

        /// Until the standby streams from the primary (polled every 10 ms, bounded).
        async fn wait_streaming(&self, pg: &PgTools) -> Result<(), String> {
            let (p, st) = (&self.nodes[self.primary], &self.nodes[1 - self.primary]);
            let sql = format!(
                "SELECT count(*) FROM pg_catalog.pg_stat_replication WHERE application_name = '{}' AND state = 'streaming'",
                st.name
            );
            let deadline = Instant::now() + HEALTHY_DEADLINE;
            while Instant::now() < deadline {
                if pg.psql(&self.run, p.port, &sql).await? == "1" {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(format!("{} did not stream from {} within {HEALTHY_DEADLINE:?}", st.name, p.name))
        }

        /// One promotion, `w` (a writer on [`FloorPair::url`]) writing meanwhile.
        pub async fn once(&mut self, pg: &PgTools, w: &Writer, app_password: &str) -> Result<FloorRun, String> {
            self.wait_streaming(pg).await?;
            w.set_paused(false);
            let r = self.promote_once(pg, w, app_password).await;
            w.set_paused(true);
            r
        }

        async fn promote_once(&mut self, pg: &PgTools, w: &Writer, app_password: &str) -> Result<FloorRun, String> {
            let (pi, si) = (self.primary, 1 - self.primary);
            w.ack_after(Instant::now(), RESUME_DEADLINE).await.ok_or("the floor writer acknowledged nothing")?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            let t = Instant::now();
            self.pg_ctl(pg, &self.nodes[pi], &["-m", "fast", "-w", "-t", "60", "stop"]).await?;
            let stop = t.elapsed().as_secs_f64();
            // Caught up: everything received is replayed (the clean stop sent all of it).
            let st = &self.nodes[si];
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let v = pg
                    .psql(&self.run, st.port, "SELECT pg_catalog.pg_last_wal_replay_lsn() >= pg_catalog.pg_last_wal_receive_lsn()")
                    .await?;
                if v == "t" {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!("{} did not replay what it received within 30 s", st.name));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }

            let t0 = Instant::now();
            self.pg_ctl(pg, st, &["-w", "-t", "60", "promote"]).await?;
            let promote_w = t0.elapsed().as_secs_f64();
            // A new connection straight to it, and an INSERT (retried until it commits, bounded).
            let mut cfg = tokio_postgres::Config::new();
            cfg.host("127.0.0.1")
                .port(st.port)
                .dbname("postgres")
                .user(APP_USER)
                .password(app_password)
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
            let literal =
                literal.ok_or_else(|| format!("no INSERT committed on {} within 30 s after pg_ctl promote: {last_err}", st.name))?;
            let first = w.ack_after(t0, RESUME_DEADLINE).await.ok_or("the floor writer acknowledged nothing after the promotion")?;
            let first_ack = secs_between(t0, first.at);

            // The old primary follows the new one (it stopped cleanly before the fork).
            let old = &self.nodes[pi];
            write_pg(&old.data.join("standby.signal"), "")?;
            self.pg_ctl(pg, old, &["-w", "-t", "120", "start"]).await?;
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
}
