//! `pgrepl supervise`: keeps one program running on a host without systemd (an agent, an
//! etcd member), as systemd's `Restart=always` would: started again after it exits,
//! with a growing pause (1 s, doubling to 30 s; back to 1 s after a minute up), and at
//! most [`MAX_RESTARTS`] restarts in [`RESTART_WINDOW`] before it gives up. SIGTERM or
//! SIGINT are passed on to the program (SIGKILL after [`STOP_LIMIT`]), then the
//! supervisor exits. Its pid file is locked while it runs, so a second supervisor of the
//! same name refuses to start; the program's output goes to the log file.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::Command;
use tokio::signal::unix::{SignalKind, signal};

/// Restarts allowed within [`RESTART_WINDOW`] before the supervisor gives up.
pub const MAX_RESTARTS: usize = 30;
pub const RESTART_WINDOW: Duration = Duration::from_secs(600);
/// How long the program has to exit after SIGTERM.
pub const STOP_LIMIT: Duration = Duration::from_secs(30);
/// Attempts at the pid file's lock, 50 ms apart.
const LOCK_TRIES: u32 = 20;
const FIRST_PAUSE: Duration = Duration::from_secs(1);
const MAX_PAUSE: Duration = Duration::from_secs(30);
/// Up this long, the next pause starts again at [`FIRST_PAUSE`].
const STABLE: Duration = Duration::from_secs(60);

/// Runs `program args` until told to stop. Returns the exit status for the supervisor.
pub async fn supervise(pid_file: &Path, log: &Path, program: &Path, args: &[String]) -> anyhow::Result<u8> {
    let _lock = lock_pid_file(pid_file)?;
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut pause = FIRST_PAUSE;
    let mut restarts: Vec<Instant> = Vec::new();
    // Bounded by the restart budget: each turn is a start of the program.
    for turn in 0usize.. {
        let out = open_log(log)?;
        let err = out.try_clone().context("log file")?;
        note(log, &format!("starting {} {}", program.display(), args.join(" ")));
        let mut child = Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        let started = Instant::now();
        let status = tokio::select! {
            s = child.wait() => s.context("wait for the program")?,
            _ = term.recv() => return stop(child, log, "SIGTERM").await,
            _ = int.recv() => return stop(child, log, "SIGINT").await,
        };
        if started.elapsed() >= STABLE {
            pause = FIRST_PAUSE;
        }
        restarts.retain(|t| t.elapsed() < RESTART_WINDOW);
        if restarts.len() >= MAX_RESTARTS {
            note(log, &format!("{status}; {MAX_RESTARTS} restarts within {RESTART_WINDOW:?}: giving up"));
            bail!("{} keeps exiting ({status}): gave up after {MAX_RESTARTS} restarts", program.display());
        }
        note(log, &format!("{status} after {:.1}s (start {}); starting again in {pause:?}", started.elapsed().as_secs_f64(), turn + 1));
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = term.recv() => return Ok(0),
            _ = int.recv() => return Ok(0),
        }
        restarts.push(Instant::now());
        pause = (pause * 2).min(MAX_PAUSE);
    }
    unreachable!("the loop only ends by returning")
}

async fn stop(mut child: tokio::process::Child, log: &Path, why: &str) -> anyhow::Result<u8> {
    note(log, &format!("{why}: stopping the program"));
    if let Some(pid) = child.id().and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    match tokio::time::timeout(STOP_LIMIT, child.wait()).await {
        Ok(s) => note(log, &format!("stopped: {}", s.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()))),
        Err(_) => {
            note(log, &format!("still running after {STOP_LIMIT:?}: SIGKILL"));
            let _ = child.kill().await;
        }
    }
    Ok(0)
}

/// A line of the supervisor's own in the log.
fn note(log: &Path, what: &str) {
    if let Ok(mut f) = open_log(log) {
        let _ = writeln!(f, "{} pgrepl supervise: {what}", humantime_now());
    }
}

fn humantime_now() -> String {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:03}", d.as_secs(), d.subsec_millis())
}

fn open_log(log: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(log)
        .with_context(|| format!("cannot open the log {}", log.display()))
}

/// The pid file, locked (flock) for the supervisor's life, holding its pid.
struct PidLock {
    _file: std::fs::File,
    path: PathBuf,
}

impl Drop for PidLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn lock_pid_file(path: &Path) -> anyhow::Result<PidLock> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o644)
        .open(path)
        .with_context(|| format!("cannot open the pid file {}", path.display()))?;
    // Tried for a moment: a check that the service runs (`flock -n PIDFILE true`) holds
    // the lock for an instant; a running supervisor holds it for good.
    let mut tries = 0;
    while rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        tries += 1;
        if tries >= LOCK_TRIES {
            let other = std::fs::read_to_string(path).unwrap_or_default();
            bail!("{} is held by a running supervisor (pid {})", path.display(), other.trim());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f.set_len(0).context("truncate the pid file")?;
    writeln!(f, "{}", std::process::id()).context("write the pid file")?;
    Ok(PidLock { _file: f, path: path.to_path_buf() })
}
