//! The agent's side of the guard: spawn it, then tell it `arm`, `disarm` or `exit`.

use std::io::{self, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::protocol::{Instruction, MAX_ARM};

/// How long a dropped handle lets a guard that was told `exit` leave on its own.
const EXIT_GRACE: Duration = Duration::from_millis(500);
/// How long a dropped handle waits for the killed guard to be reaped.
const REAP_WAIT: Duration = Duration::from_secs(1);

/// A write to the guard that did not happen.
#[derive(Debug, thiserror::Error)]
pub enum GuardWriteError {
    /// `exit` was sent already: the pipe is closed.
    #[error("the guard's stdin is closed (exit was sent)")]
    Closed,
    /// The pipe is full: the guard is not reading (hung or stopped).
    #[error("the guard is not reading its stdin (the pipe is full)")]
    Full,
    /// An `arm` longer than the protocol accepts ([`MAX_ARM`]).
    #[error("arm for {0:?} is longer than the guard accepts")]
    TooLong(Duration),
    /// The write failed (a broken pipe: the guard is gone).
    #[error("writing to the guard: {0}")]
    Io(#[from] io::Error),
}

/// The guard as a child process of the agent, fed through its stdin.
///
/// Writes never block: the pipe is non-blocking and each instruction is one short write
/// (atomic below `PIPE_BUF`), so a hung guard shows as [`GuardWriteError::Full`] instead
/// of hanging the agent. The guard runs in its own process group, so a signal to the
/// agent's group (Ctrl-C) does not take it down along with the agent.
///
/// Dropping the handle kills the guard (SIGKILL to its pid, which stays its own until
/// reaped), after giving it half a second to leave if `exit` was sent (it stands a
/// watchdog down on the way); a killed guard fences nothing. Drop waits at most about
/// 1.5 s in all.
#[derive(Debug)]
pub struct GuardHandle {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl GuardHandle {
    /// Spawns `command` (e.g. `pgrepl agent --guard --data-dir D`) with its stdin piped,
    /// in a process group of its own. Its stdout and stderr are the command's: better a
    /// file or the agent's own than a pipe the agent must drain.
    pub fn spawn(mut command: Command) -> io::Result<GuardHandle> {
        command.stdin(Stdio::piped()).process_group(0);
        let mut child = command.spawn()?;
        let handle = GuardHandle { stdin: child.stdin.take(), child };
        let Some(stdin) = handle.stdin.as_ref() else {
            return Err(io::Error::other("the guard was spawned without a stdin pipe"));
        };
        let flags = rustix::fs::fcntl_getfl(stdin)?;
        rustix::fs::fcntl_setfl(stdin, flags | rustix::fs::OFlags::NONBLOCK)?;
        Ok(handle)
    }

    /// The guard's pid.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// `arm <ms>`: PostgreSQL may accept writes for at most `within` from now (rounded
    /// down to whole milliseconds).
    pub fn arm(&mut self, within: Duration) -> Result<(), GuardWriteError> {
        if within > MAX_ARM {
            return Err(GuardWriteError::TooLong(within));
        }
        self.send(Instruction::Arm(within))
    }

    /// `disarm`: nothing to enforce.
    pub fn disarm(&mut self) -> Result<(), GuardWriteError> {
        self.send(Instruction::Disarm)
    }

    /// `exit`, then closes the pipe: the guard leaves without stopping anything.
    pub fn exit(&mut self) -> Result<(), GuardWriteError> {
        let sent = self.send(Instruction::Exit);
        self.stdin = None;
        sent
    }

    /// The guard's exit status once it has exited (the agent checks it is still there).
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    fn send(&mut self, instruction: Instruction) -> Result<(), GuardWriteError> {
        let stdin = self.stdin.as_mut().ok_or(GuardWriteError::Closed)?;
        let line = format!("{instruction}\n");
        match stdin.write(line.as_bytes()) {
            Ok(n) if n == line.len() => Ok(()),
            Ok(n) => Err(io::Error::other(format!("short write to the guard ({n} of {} bytes)", line.len())).into()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(GuardWriteError::Full),
            Err(e) => Err(e.into()),
        }
    }

    /// Polls for the child's exit for up to `limit`.
    fn reaped_within(&mut self, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return true,
                Ok(None) if Instant::now() >= until => return false,
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}

impl Drop for GuardHandle {
    fn drop(&mut self) {
        let told_to_exit = self.stdin.is_none();
        self.stdin = None;
        if told_to_exit && self.reaped_within(EXIT_GRACE) {
            return;
        }
        // std sends SIGKILL by pid only while the child is not reaped (its pid is still ours).
        if let Err(e) = self.child.kill() {
            tracing::warn!(pid = self.child.id(), error = %e, "could not kill the guard");
        }
        if !self.reaped_within(REAP_WAIT) {
            tracing::warn!(pid = self.child.id(), "the killed guard has not exited yet");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    fn alive(pid: u32) -> bool {
        super::super::proc::stat(pid as i32).unwrap().is_some_and(|s| !s.is_dead())
    }

    #[test]
    fn lines_arrive_in_order_and_exit_closes_the_pipe() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("lines");
        let mut g = GuardHandle::spawn(sh(&format!("cat > '{}'", out.display()))).unwrap();
        g.arm(Duration::from_millis(1500)).unwrap();
        g.arm(Duration::from_micros(2_999_999)).unwrap();
        g.disarm().unwrap();
        g.exit().unwrap();
        assert!(matches!(g.disarm(), Err(GuardWriteError::Closed)));
        assert!(matches!(g.arm(MAX_ARM + Duration::from_millis(1)), Err(GuardWriteError::TooLong(_))));
        let pid = g.id();
        drop(g);
        assert!(!alive(pid));
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "arm 1500\narm 2999\ndisarm\nexit\n");
    }

    #[test]
    fn a_guard_that_does_not_read_fills_the_pipe_without_blocking_and_is_killed_on_drop() {
        let mut g = GuardHandle::spawn(sh("exec sleep 60")).unwrap();
        let pid = g.id();
        let started = Instant::now();
        // A pipe holds 64 KiB by default: a few thousand lines fill it (1 MiB: about 120 000).
        let full = (0..200_000).find_map(|_| g.arm(Duration::from_millis(1000)).err());
        assert!(matches!(full, Some(GuardWriteError::Full)), "{full:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
        drop(g);
        assert!(!alive(pid), "the guard outlived its handle");
    }

    #[test]
    fn a_guard_that_is_gone_is_a_write_error_not_a_panic() {
        let mut g = GuardHandle::spawn(sh("exit 0")).unwrap();
        let until = Instant::now() + Duration::from_secs(10);
        while g.try_wait().unwrap().is_none() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        let e = g.arm(Duration::from_millis(100)).unwrap_err();
        assert!(matches!(&e, GuardWriteError::Io(io) if io.kind() == io::ErrorKind::BrokenPipe), "{e:?}");
    }

    #[test]
    fn the_guard_runs_in_its_own_process_group() {
        let g = GuardHandle::spawn(sh("exec sleep 60")).unwrap();
        let pgid = rustix::process::getpgid(rustix::process::Pid::from_raw(g.id() as i32)).unwrap();
        assert_eq!(pgid.as_raw_nonzero().get(), g.id() as i32);
    }
}
