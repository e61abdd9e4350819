//! Shared pieces of pgrepl's benchmarks: running PostgreSQL tools as the server's OS
//! user with a time limit, a scratch directory that stops its own servers on drop, free
//! loopback ports, and small statistics; an application's write load ([`writer`]), the
//! promote floor by hand ([`floor`]), what a killed server leaves behind ([`diagnose`]).
//!
//! Benchmarks are plain programs (`src/bin/*.rs`) that print numbers; see README.md.

#![allow(missing_docs)]

pub mod diagnose;
pub mod floor;
pub mod ha;
pub mod writer;

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

/// A bench's exit: success, or its error printed after its name.
pub fn exit_code(name: &str, r: Result<(), String>) -> std::process::ExitCode {
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            std::process::ExitCode::FAILURE
        }
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

/// Appends `text` to the file at `path`.
pub fn append(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    f.write_all(text.as_bytes()).map_err(|e| format!("write {}: {e}", path.display()))
}

/// Writes `text` to `path` (mode 0600) for [`pg_user`].
pub fn write_pg(path: &Path, text: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).map_err(|e| format!("write {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| format!("chmod {}: {e}", path.display()))?;
    chown_pg(path)
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
