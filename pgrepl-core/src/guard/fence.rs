//! Stopping PostgreSQL at once: the [`Fence`] trait and its real implementation,
//! [`StopPostmaster`].

use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rustix::process::{Pid, PidfdFlags, Signal};

use super::proc::{self, Identity};

/// How often the fence looks whether the processes are gone.
const POLL: Duration = Duration::from_millis(10);

/// Something that stops PostgreSQL now, so that no commit can complete afterwards.
#[async_trait::async_trait]
pub trait Fence: Send + Sync + fmt::Debug {
    /// Stops it; returns within a bounded time.
    async fn fence(&self) -> Result<FenceReport, FenceError>;
}

/// What a fence did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FenceReport {
    /// PostgreSQL was not running there; nothing was signalled.
    NotRunning {
        /// How that was seen.
        reason: String,
    },
    /// The postmaster exited after SIGQUIT (immediate shutdown; it ended its children).
    Stopped {
        /// The postmaster's pid.
        pid: u32,
        /// From the SIGQUIT to its exit.
        took: Duration,
    },
    /// The postmaster did not exit in time after SIGQUIT: it was stopped (SIGSTOP), its
    /// children and then itself killed (SIGKILL).
    Killed {
        /// The postmaster's pid.
        pid: u32,
        /// How many child processes were killed.
        children: usize,
        /// From the SIGQUIT until all were gone.
        took: Duration,
    },
}

impl fmt::Display for FenceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FenceReport::NotRunning { reason } => write!(f, "PostgreSQL was not running ({reason})"),
            FenceReport::Stopped { pid, took } => write!(f, "postmaster {pid} stopped (immediate shutdown) in {took:?}"),
            FenceReport::Killed { pid, children, took } => {
                write!(f, "postmaster {pid} and {children} child processes killed in {took:?} (SIGQUIT was not enough)")
            }
        }
    }
}

/// Why a fence failed.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// `postmaster.pid` could not be read.
    #[error("{path}: {source}")]
    PidFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Its first line is not a process id.
    #[error("{path}: first line {line:?} is not a process id")]
    BadPidFile {
        /// The file.
        path: PathBuf,
        /// The line.
        line: String,
    },
    /// The pid in `postmaster.pid` is a process that is not the postmaster of that data
    /// directory (a stale file whose pid was reused): nothing was signalled.
    #[error("refusing to signal process {pid}: {reason}")]
    NotOurPostmaster {
        /// The pid.
        pid: i32,
        /// What it is instead.
        reason: String,
    },
    /// /proc could not tell what a process is (permissions).
    #[error("cannot verify process {pid}: {source}")]
    Proc {
        /// The pid.
        pid: i32,
        /// Why.
        source: io::Error,
    },
    /// A signal could not be sent.
    #[error("{signal} to process {pid}: {source}")]
    Signal {
        /// The pid.
        pid: i32,
        /// The signal's name.
        signal: &'static str,
        /// Why.
        source: io::Error,
    },
    /// Processes still ran after SIGKILL and the wait.
    #[error("postmaster {pid}: processes {left:?} still running {waited:?} after SIGKILL")]
    StillRunning {
        /// The postmaster's pid.
        pid: i32,
        /// The pids still there.
        left: Vec<i32>,
        /// How long it waited.
        waited: Duration,
    },
    /// The fence did not return in time (set by the guard's loop).
    #[error("the fence did not finish within {0:?}")]
    TimedOut(Duration),
}

/// The real fence: stops the postmaster of `data_dir` with an immediate shutdown.
///
/// It reads the pid from the first line of `<data_dir>/postmaster.pid`, opens a pidfd on
/// it, checks through /proc that this process is a postgres postmaster whose working
/// directory is `data_dir` (and not one of its children), then sends SIGQUIT through the
/// pidfd (so the signal reaches that very process or none, even if the pid is reused).
/// The postmaster then ends every backend at once (no commit completes afterwards) and
/// exits. If it has not exited after `quit_wait`, it is stopped (SIGSTOP, so it can neither
/// fork nor reap), each of its children is killed (each checked again to be its child
/// through its own pidfd), then itself; `kill_wait` bounds the wait for them to go.
///
/// A missing `postmaster.pid`, or one naming no process, means PostgreSQL is not running
/// ([`FenceReport::NotRunning`]); one naming a process that is not that postmaster is
/// refused ([`FenceError::NotOurPostmaster`]) and nothing is signalled.
#[derive(Debug, Clone)]
pub struct StopPostmaster {
    /// The data directory.
    pub data_dir: PathBuf,
    /// How long to wait for the postmaster to exit after SIGQUIT (default 2 s).
    pub quit_wait: Duration,
    /// How long to wait for the processes to go after SIGKILL (default 2 s).
    pub kill_wait: Duration,
}

impl StopPostmaster {
    /// The fence of the server of `data_dir`, with the default waits.
    pub fn new(data_dir: impl Into<PathBuf>) -> StopPostmaster {
        StopPostmaster { data_dir: data_dir.into(), quit_wait: Duration::from_secs(2), kill_wait: Duration::from_secs(2) }
    }

    /// The postmaster's pid from `postmaster.pid` (`None`: no such file).
    fn read_pid(&self) -> Result<Option<i32>, FenceError> {
        let path = self.data_dir.join("postmaster.pid");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(FenceError::PidFile { path, source }),
        };
        let line = text.lines().next().unwrap_or_default().trim();
        match line.parse::<i32>() {
            Ok(pid) if pid > 0 && line.bytes().all(|b| b.is_ascii_digit()) => Ok(Some(pid)),
            _ => Err(FenceError::BadPidFile { path, line: line.to_string() }),
        }
    }

    fn postmaster(&self, pid: i32) -> Result<Option<proc::Stat>, FenceError> {
        match proc::identify(pid, &self.data_dir).map_err(|source| FenceError::Proc { pid, source })? {
            Identity::Postmaster(st) => Ok(Some(st)),
            Identity::Gone => Ok(None),
            Identity::Other(reason) => Err(FenceError::NotOurPostmaster { pid, reason }),
        }
    }

    async fn stop(&self) -> Result<FenceReport, FenceError> {
        let not_running = |reason: String| Ok(FenceReport::NotRunning { reason });
        let Some(pid) = self.read_pid()? else {
            return not_running(format!("no postmaster.pid in {}", self.data_dir.display()));
        };
        let me = rustix::process::getpid().as_raw_nonzero().get();
        if pid == 1 || pid == me {
            return Err(FenceError::NotOurPostmaster {
                pid,
                reason: if pid == 1 { "it is init".into() } else { "it is this process".into() },
            });
        }
        let stale = || format!("stale postmaster.pid: no process {pid}");
        // Open the handle first, then verify: the signal can only reach what was verified.
        let Some(target) = Target::open(pid).map_err(|source| FenceError::Proc { pid, source })? else {
            return not_running(stale());
        };
        let Some(st) = self.postmaster(pid)? else { return not_running(stale()) };

        let started = Instant::now();
        target.signal(Signal::QUIT, "SIGQUIT")?;
        if wait_gone(&[(pid, st.starttime)], self.quit_wait).await.is_empty() {
            return Ok(FenceReport::Stopped { pid: pid as u32, took: started.elapsed() });
        }

        // Still there: stop it so it neither forks nor reaps (child pids stay ours), kill
        // its children, then itself.
        match self.postmaster(pid) {
            Ok(Some(again)) if again.starttime == st.starttime => {}
            // Exited meanwhile (its pid gone or already another process's).
            Ok(_) | Err(FenceError::NotOurPostmaster { .. }) => {
                return Ok(FenceReport::Stopped { pid: pid as u32, took: started.elapsed() });
            }
            Err(e) => return Err(e),
        }
        target.signal(Signal::STOP, "SIGSTOP")?;
        let mut waiting = vec![(pid, st.starttime)];
        for (child, cst) in proc::children(pid).map_err(|source| FenceError::Proc { pid, source })? {
            let Some(t) = Target::open(child).map_err(|source| FenceError::Proc { pid: child, source })? else { continue };
            // Checked again through the open handle's pid: still that child of the postmaster.
            match proc::stat(child).map_err(|source| FenceError::Proc { pid: child, source })? {
                Some(now) if now.ppid == pid && now.starttime == cst.starttime && !now.is_dead() => {
                    t.signal(Signal::KILL, "SIGKILL")?;
                    waiting.push((child, cst.starttime));
                }
                _ => {}
            }
        }
        target.signal(Signal::KILL, "SIGKILL")?;
        let left = wait_gone(&waiting, self.kill_wait).await;
        if left.is_empty() {
            Ok(FenceReport::Killed { pid: pid as u32, children: waiting.len() - 1, took: started.elapsed() })
        } else {
            Err(FenceError::StillRunning { pid, left, waited: self.kill_wait })
        }
    }
}

#[async_trait::async_trait]
impl Fence for StopPostmaster {
    async fn fence(&self) -> Result<FenceReport, FenceError> {
        self.stop().await
    }
}

/// Waits up to `limit` for every `(pid, starttime)` to be gone; returns those left.
async fn wait_gone(procs: &[(i32, u64)], limit: Duration) -> Vec<i32> {
    let until = Instant::now() + limit;
    loop {
        // A /proc read error counts as still running (the wait is bounded anyway).
        let left: Vec<i32> =
            procs.iter().filter(|(pid, start)| proc::still_running(*pid, *start).unwrap_or(true)).map(|(pid, _)| *pid).collect();
        if left.is_empty() || Instant::now() >= until {
            return left;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A process to signal: through a pidfd (Linux 5.3+), or by pid on older kernels.
enum Target {
    Fd(i32, OwnedFd),
    Pid(Pid),
}

impl Target {
    /// `None`: no such process.
    fn open(pid: i32) -> io::Result<Option<Target>> {
        let Some(p) = Pid::from_raw(pid) else { return Ok(None) };
        match rustix::process::pidfd_open(p, PidfdFlags::empty()) {
            Ok(fd) => Ok(Some(Target::Fd(pid, fd))),
            Err(rustix::io::Errno::SRCH) => Ok(None),
            Err(rustix::io::Errno::NOSYS) => Ok(Some(Target::Pid(p))),
            Err(e) => Err(e.into()),
        }
    }

    fn pid(&self) -> i32 {
        match self {
            Target::Fd(pid, _) => *pid,
            Target::Pid(p) => p.as_raw_nonzero().get(),
        }
    }

    /// Sends `sig`; a process that is already gone is not an error.
    fn signal(&self, sig: Signal, name: &'static str) -> Result<(), FenceError> {
        let r = match self {
            Target::Fd(_, fd) => rustix::process::pidfd_send_signal(fd, sig),
            Target::Pid(p) => rustix::process::kill_process(*p, sig),
        };
        match r {
            Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(e) => Err(FenceError::Signal { pid: self.pid(), signal: name, source: e.into() }),
        }
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Target({})", self.pid())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with_pid_file(contents: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("postmaster.pid"), contents).unwrap();
        d
    }

    #[tokio::test]
    async fn no_pid_file_is_not_running() {
        let d = tempfile::tempdir().unwrap();
        let r = StopPostmaster::new(d.path()).fence().await.unwrap();
        assert!(matches!(&r, FenceReport::NotRunning { reason } if reason.contains("no postmaster.pid")), "{r:?}");
    }

    #[tokio::test]
    async fn bad_pid_files_are_errors() {
        for line in ["", "abc", "0", "-1", "+5", "12 13", "99999999999"] {
            let d = dir_with_pid_file(&format!("{line}\n/data\n"));
            let e = StopPostmaster::new(d.path()).fence().await.unwrap_err();
            assert!(matches!(e, FenceError::BadPidFile { .. }), "{line:?}: {e:?}");
        }
    }

    #[tokio::test]
    async fn a_pid_file_naming_no_process_is_stale() {
        // Above the kernel's pid_max (4194304 at most): never a process.
        let d = dir_with_pid_file("2147483647\n");
        let r = StopPostmaster::new(d.path()).fence().await.unwrap();
        assert!(matches!(&r, FenceReport::NotRunning { reason } if reason.contains("stale")), "{r:?}");
    }

    /// Never signal what is not ours: init, this very process, and another process
    /// (a `sleep`) that a stale postmaster.pid names are refused, and they live on.
    #[tokio::test]
    async fn refuses_pids_that_are_not_the_postmaster_of_the_data_dir() {
        let d = dir_with_pid_file("1\n");
        let e = StopPostmaster::new(d.path()).fence().await.unwrap_err();
        assert!(matches!(&e, FenceError::NotOurPostmaster { pid: 1, .. }), "{e:?}");

        let d = dir_with_pid_file(&format!("{}\n{}\n", std::process::id(), "/somewhere"));
        let e = StopPostmaster::new(d.path()).fence().await.unwrap_err();
        assert!(matches!(&e, FenceError::NotOurPostmaster { .. }), "{e:?}");

        let mut sleeper = std::process::Command::new("sleep").arg("30").current_dir(d.path()).spawn().unwrap();
        std::fs::write(d.path().join("postmaster.pid"), format!("{}\n", sleeper.id())).unwrap();
        let e = StopPostmaster::new(d.path()).fence().await.unwrap_err();
        assert!(matches!(&e, FenceError::NotOurPostmaster { reason, .. } if reason.contains("not postgres")), "{e:?}");
        assert!(sleeper.try_wait().unwrap().is_none(), "the process named by a stale postmaster.pid was signalled");
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
    }
}
