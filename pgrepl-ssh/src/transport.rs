//! [`SshTransport`]: the [`Transport`] implementation.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use pgrepl_core::transport::{Command, DEFAULT_TIMEOUT, Output, Transport, TransportError};
use tokio::sync::Mutex;

use crate::command::{self, KILL_AFTER, TIMEOUT_STATUSES};
use crate::config::SshConfig;
use crate::session::{self, Conn, ExecError, RawOutput, Request};

/// Exit status of the read script when the file does not exist.
const READ_MISSING_STATUS: i32 = 99;

/// Where a file is written: enters the target's directory (`cd -P`, so every later name is
/// relative to the directory itself and no path is resolved again), then writes through
/// [`WRITE_FILE_SCRIPT`] as the right user:
/// - no owner, or the owner is the user running this: as is;
/// - the owner can write the directory: as the owner (`runuser`, or `sudo -n -u`), so the
///   file is theirs from the start and nothing of theirs is ever chowned by root (a
///   symbolic link they put anywhere gives them only their own rights);
/// - else root writes and chowns, only in a directory that is reached without a symbolic
///   link, owned by root and writable by no one else; anything else is refused (exit 3).
///
/// Positional parameters: path, umask, mode, owner user (may be empty), owner group (empty:
/// the owner's login group), temp-name suffix, the write script.
const WRITE_SCRIPT: &str = r#"set -eu
d=$(dirname -- "$1"); b=$(basename -- "$1"); o=$4; g=$5
cd -P -- "$d"
if [ -z "$o" ] || [ "$o" = "$(id -un)" ]; then
  exec sh -c "$7" pgrepl-write "$b" "$2" "$3" "" "$g" "$6"
fi
as_owner() { if command -v runuser >/dev/null 2>&1; then runuser -u "$o" -- "$@"; else sudo -n -u "$o" -- "$@"; fi; }
if as_owner test -w . 2>/dev/null; then
  as_owner sh -c "$7" pgrepl-write "$b" "$2" "$3" "" "$g" "$6"
  exit 0
fi
real=$(pwd -P)
if [ "$real" != "$d" ]; then
  echo "pgrepl: refusing to write $1 for $o: $d leads through a symbolic link to $real, a directory $o cannot write" >&2
  exit 3
fi
st=$(stat -c '%u %a' .)
if [ "${st%% *}" != 0 ] || [ $(( 0${st#* } & 022 )) -ne 0 ]; then
  echo "pgrepl: refusing to write $1 for $o as root: $d is neither writable by $o nor a directory only root can change" >&2
  exit 3
fi
exec sh -c "$7" pgrepl-write "$b" "$2" "$3" "$o:$g" "" "$6""#;

/// Writes stdin to a new temporary file in the current directory (created with O_EXCL under
/// a umask that keeps it within `mode`), fixes owner (`chown -h`) or group, then mode
/// (chown clears set-id bits), flushes it to disk and renames it over the target (a
/// symbolic link there is replaced, never followed). `mv -T` refuses to move *into* a
/// directory of that name. Positional parameters: target name in the current directory,
/// umask, mode, chown argument (may be empty), chgrp argument (may be empty), temp-name
/// suffix.
const WRITE_FILE_SCRIPT: &str = r#"set -eu
t=".pgrepl-tmp.$6"
trap 'rm -f -- "$t"' EXIT
trap 'exit 1' HUP INT TERM
umask "$2"
set -C
cat > "$t"
set +C
if [ -n "$4" ]; then chown -h -- "$4" "$t"; fi
if [ -n "$5" ]; then chgrp -h -- "$5" "$t"; fi
chmod -- "$3" "$t"
sync -- "$t"
mv -f -T -- "$t" "$1""#;

/// Prints the file, or exits with [`READ_MISSING_STATUS`] when it does not exist.
const READ_SCRIPT: &str = r#"[ -e "$1" ] || exit 99
exec cat -- "$1""#;

/// An SSH [`Transport`]: runs commands and moves files on one host over one reused SSH
/// session (libssh2 through the `ssh2` crate).
///
/// - **Connecting** is lazy (on the first call) unless [`SshTransport::connect`] is used.
///   The TCP connect, handshake and authentication are bounded by
///   [`SshConfig::connect_timeout`]; a host that cannot be reached is tried again after
///   0.2, 0.5 and 1 s. Host key and authentication failures are never retried.
/// - **Host keys** are checked against the known_hosts file ([`crate::HostKeyPolicy`]).
/// - **Commands** run as `cd / && exec [become] [env K=V…] timeout -k 5 <limit> program
///   args…`, every word shell-quoted; `become` is `runuser -u U --` when logged in as root,
///   else `sudo -n [-u U] --`. Stdin is written then closed; stdout and stderr are read
///   separately. The remote `timeout` enforces [`Command::timeout`]; a local deadline
///   (limit + 5 s + `connect_timeout`) covers a dead connection.
/// - **One session, long-lived shells.** Commands run in framed remote shells kept open on
///   the session's channels (see the `shell` module): after the first command a command
///   is one exchange on an open channel (a few ms on a LAN), not a new channel and a new
///   login session on the server. Concurrent calls run at once on up to 4 shells of the
///   one session (every libssh2 call runs in `spawn_blocking`). An idle shell is checked
///   (and pinged after a second of idleness) before a command goes to it; a connection
///   found dead then is replaced once, transparently. A command that may have started is
///   never run again: its caller gets a retryable error.
/// - `write_file` and `read_file` work with root privileges when a file's owner is another
///   user (and `read_file` always), through the same `become` rules.
///
/// The login user's shell must be POSIX-like (sh, bash, dash, zsh).
///
/// ```no_run
/// use pgrepl_core::transport::{Command, Transport, TransportExt};
/// use pgrepl_ssh::{SshAuth, SshConfig, SshTransport};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let config = SshConfig::builder("10.213.7.12")
///     .with_user("root")
///     .with_auth(SshAuth::KeyFile("/opt/pgrepl-lab/netns/id_ed25519".into()))
///     .with_known_hosts("/opt/pgrepl-lab/netns/known_hosts")
///     .build()?;
/// let host = SshTransport::connect(config).await?;
/// let out = host.run(&Command::new("pg_lsclusters").args(["-h"]).user("postgres")).await?;
/// println!("{}", out.stdout);
/// host.write_file("/etc/postgresql/15/main/conf.d/pgrepl.conf", b"wal_level = replica\n", 0o644, Some("postgres")).await?;
/// # Ok(()) }
/// ```
pub struct SshTransport {
    config: Arc<SshConfig>,
    /// The live connection; the lock is held only to find or replace it (and while
    /// connecting, so that callers arriving together share one login).
    conn: Mutex<Option<Arc<Conn>>>,
}

impl SshTransport {
    /// A transport for `config`; it connects on first use.
    pub fn new(config: SshConfig) -> Self {
        SshTransport { config: Arc::new(config), conn: Mutex::new(None) }
    }

    /// A transport for `config`, connected now: the host is reachable, its key verified and
    /// the login accepted, or the error says which of these failed.
    pub async fn connect(config: SshConfig) -> Result<Self, TransportError> {
        let t = SshTransport::new(config);
        t.ensure_connected().await?;
        Ok(t)
    }

    /// The configuration.
    pub fn config(&self) -> &SshConfig {
        &self.config
    }

    /// Opens the session if there is none.
    pub async fn ensure_connected(&self) -> Result<(), TransportError> {
        self.live().await.map(|_| ())
    }

    /// Closes the session (politely, within `connect_timeout`); the next call reconnects.
    pub async fn disconnect(&self) {
        let Some(conn) = self.conn.lock().await.take() else {
            return;
        };
        let timeout = self.config.connect_timeout();
        let _ = tokio::task::spawn_blocking(move || conn.disconnect(timeout)).await;
    }

    /// The live connection (and whether it was already open), connecting when there is none.
    async fn live(&self) -> Result<(Arc<Conn>, bool), TransportError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.is_broken()) {
            return Ok((c.clone(), true));
        }
        if let Some(old) = slot.take() {
            old.abandon();
        }
        let config = self.config.clone();
        let fresh = tokio::task::spawn_blocking(move || session::connect(&config))
            .await
            .unwrap_or_else(|e| Err(TransportError::Other(format!("the SSH worker task failed: {e}"))))?;
        let fresh = Arc::new(fresh);
        *slot = Some(fresh.clone());
        Ok((fresh, false))
    }

    /// Gives `conn` up (and forgets it, unless another call already replaced it).
    async fn forget(&self, conn: &Arc<Conn>) {
        conn.abandon();
        let mut slot = self.conn.lock().await;
        if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            *slot = None;
        }
    }

    /// Runs a prepared command line on `conn`; a failure that poisons the session drops it.
    async fn attempt(
        &self,
        conn: Arc<Conn>,
        line: Arc<String>,
        stdin: Arc<Option<Vec<u8>>>,
        limit: Duration,
    ) -> Result<RawOutput, RunError> {
        let open_timeout = self.config.connect_timeout();
        let c = conn.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let req = Request { line: &line, stdin: stdin.as_deref(), local_limit: limit + KILL_AFTER + open_timeout };
            c.run(&req, open_timeout)
        })
        .await;
        let result = match joined {
            Ok(r) => r,
            Err(e) => {
                return Err(RunError::Transport(TransportError::Other(format!(
                    "{}: the SSH worker task failed: {e}",
                    self.config.endpoint()
                ))));
            }
        };
        if let Err(e) = &result {
            if e.poisons_session() {
                self.forget(&conn).await;
            }
        }
        result.map_err(RunError::Exec)
    }

    /// Runs a prepared command line, reconnecting once if the session turns out to be dead
    /// before anything of the command was sent.
    async fn run_line(&self, line: String, stdin: Option<Vec<u8>>, limit: Duration) -> Result<RawOutput, RunError> {
        let (line, stdin) = (Arc::new(line), Arc::new(stdin));
        let (conn, reused) = self.live().await.map_err(RunError::Transport)?;
        match self.attempt(conn, line.clone(), stdin.clone(), limit).await {
            Err(RunError::Exec(ExecError::NotStarted(e))) if reused => {
                tracing::debug!(endpoint = %self.config.endpoint(), error = %e, "ssh session is gone; reconnecting");
                let (fresh, _) = self.live().await.map_err(RunError::Transport)?;
                self.attempt(fresh, line, stdin, limit).await
            }
            other => other,
        }
    }

    /// Runs `cmd` and returns its raw output, mapping failures to [`TransportError`]s.
    async fn exec_raw(&self, cmd: &Command) -> Result<RawOutput, TransportError> {
        let endpoint = self.config.endpoint();
        let line = command::command_line(self.config.user(), cmd)
            .map_err(|p| TransportError::Other(format!("{endpoint}: cannot run `{}`: {p}", cmd.program)))?;
        let program = program_name(&cmd.program);
        tracing::debug!(endpoint = %endpoint, program, user = ?cmd.user, "ssh exec");
        let out = match self.run_line(line, cmd.stdin.clone(), cmd.timeout).await {
            Ok(out) => out,
            Err(RunError::Transport(e)) => return Err(e),
            Err(RunError::Exec(e)) => return Err(self.exec_error(e, &program, cmd.timeout)),
        };
        let timed_out = TIMEOUT_STATUSES.contains(&out.status) && out.elapsed >= cmd.timeout;
        tracing::debug!(endpoint = %endpoint, program, status = out.status, elapsed_ms = out.elapsed.as_millis() as u64, "ssh exec done");
        if timed_out {
            return Err(TransportError::Timeout { program, after: cmd.timeout });
        }
        Ok(out)
    }

    fn exec_error(&self, e: ExecError, program: &str, limit: Duration) -> TransportError {
        let endpoint = self.config.endpoint();
        match e {
            ExecError::Deadline => TransportError::Timeout { program: program.to_string(), after: limit },
            ExecError::NotStarted(e) => TransportError::Io(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!("{endpoint}: cannot reach a shell to run `{program}`: {e}"),
            )),
            ExecError::Refused(e) => TransportError::Other(format!("{endpoint}: the server refused to run `{program}`: {}", e.message())),
            ExecError::Broken(e) => TransportError::Io(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!("{endpoint}: connection lost while running `{program}` (it may or may not have run): {e}"),
            )),
            ExecError::Protocol(e) => {
                TransportError::Other(format!("{endpoint}: the remote shell's answer to `{program}` cannot be read: {e}"))
            }
            ExecError::TooMuchOutput(stream) => TransportError::Other(format!(
                "{endpoint}: `{program}` printed more than {} MiB on {stream}; it was stopped",
                session::MAX_OUTPUT / (1024 * 1024)
            )),
        }
    }
}

enum RunError {
    Transport(TransportError),
    Exec(ExecError),
}

fn program_name(program: &str) -> String {
    program.rsplit('/').next().unwrap_or(program).to_string()
}

/// A time limit for moving `len` bytes: the default plus a second per MiB.
fn file_timeout(len: usize) -> Duration {
    DEFAULT_TIMEOUT + Duration::from_secs((len / (1024 * 1024)) as u64)
}

/// A name for a temporary file that no other writer picks.
fn temp_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{}-{}-{}", std::process::id(), nanos, COUNTER.fetch_add(1, Ordering::Relaxed))
}

#[async_trait]
impl Transport for SshTransport {
    fn host(&self) -> &str {
        self.config.host()
    }

    fn admin_user(&self) -> Option<&str> {
        // Logged in as someone else, pgrepl administers the host as root through sudo.
        (self.config().user() != "root").then_some("root")
    }

    async fn exec(&self, cmd: &Command) -> Result<Output, TransportError> {
        let out = self.exec_raw(cmd).await?;
        Ok(Output {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Writes atomically through a temporary file in the same directory, created with at
    /// most `mode`'s permissions, then renamed into place. With `owner`, the file also gets
    /// that user's login group, unless `owner` is given as `user:group`. The file is written
    /// by its owner where the owner can write the directory; a symbolic link is never
    /// followed to chown or overwrite anything (see `WRITE_SCRIPT`).
    async fn write_file(&self, path: &str, contents: &[u8], mode: u32, owner: Option<&str>) -> Result<(), TransportError> {
        let endpoint = self.config.endpoint();
        if mode > 0o7777 {
            return Err(TransportError::Other(format!("{endpoint}: cannot write {path}: mode {mode:o} is not a file mode")));
        }
        if path.is_empty() || path.ends_with('/') {
            return Err(TransportError::Other(format!("{endpoint}: cannot write \"{path}\": not a file path")));
        }
        let (owner_user, owner_group) = match owner {
            None => ("", ""),
            Some(o) => o.split_once(':').unwrap_or((o, "")),
        };
        let login = self.config.user();
        let as_root = !owner_user.is_empty() && owner_user != login && login != "root";
        let mut cmd = Command::new("sh")
            .args([
                "-c",
                WRITE_SCRIPT,
                "pgrepl-write",
                path,
                &format!("{:04o}", !mode & 0o777),
                &format!("{mode:04o}"),
                owner_user,
                owner_group,
                &temp_suffix(),
                WRITE_FILE_SCRIPT,
            ])
            .stdin(contents.to_vec())
            .timeout(file_timeout(contents.len()));
        if as_root {
            cmd = cmd.user("root");
        }
        let out = self.exec_raw(&cmd).await?;
        if out.status != 0 {
            return Err(TransportError::CommandFailed { program: format!("write_file {path}"), status: out.status, tail: tail(&out) });
        }
        Ok(())
    }

    /// Reads with root privileges (through `sudo -n` when the login user is not root).
    async fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>, TransportError> {
        let mut cmd = Command::new("sh").args(["-c", READ_SCRIPT, "pgrepl-read", path]).timeout(DEFAULT_TIMEOUT);
        if self.config.user() != "root" {
            cmd = cmd.user("root");
        }
        let out = self.exec_raw(&cmd).await?;
        match out.status {
            0 => Ok(Some(out.stdout)),
            READ_MISSING_STATUS => Ok(None),
            status => Err(TransportError::CommandFailed { program: format!("read_file {path}"), status, tail: tail(&out) }),
        }
    }
}

fn tail(out: &RawOutput) -> String {
    Output { status: out.status, stdout: String::new(), stderr: String::from_utf8_lossy(&out.stderr).into_owned() }.tail()
}

impl fmt::Debug for SshTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshTransport").field("config", &self.config).finish_non_exhaustive()
    }
}

impl fmt::Display for SshTransport {
    /// `ssh://user@host:port`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ssh://{}@{}", self.config.user(), self.config.endpoint())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SshAuth;

    fn transport() -> SshTransport {
        SshTransport::new(
            SshConfig::builder("db1")
                .with_user("root")
                .with_port(2222)
                .with_auth(SshAuth::KeyFile("/keys/id".into()))
                .with_known_hosts("/kh")
                .build()
                .unwrap(),
        )
    }

    #[test]
    fn display_and_debug_name_the_host() {
        let t = transport();
        assert_eq!(t.to_string(), "ssh://root@db1:2222");
        let d = format!("{t:?}");
        assert!(d.contains("db1") && d.contains("2222"), "{d}");
    }

    #[test]
    fn temp_names_differ() {
        assert_ne!(temp_suffix(), temp_suffix());
    }

    #[test]
    fn file_timeout_grows_with_size() {
        assert_eq!(file_timeout(10), DEFAULT_TIMEOUT);
        assert_eq!(file_timeout(5 * 1024 * 1024), DEFAULT_TIMEOUT + Duration::from_secs(5));
    }

    #[tokio::test]
    async fn invalid_commands_fail_before_connecting() {
        let t = transport();
        let e = t.exec(&Command::new("x").env("BAD NAME", "1")).await.unwrap_err();
        assert!(e.to_string().contains("db1:2222"), "{e}");
        let e = t.write_file("/x", b"", 0o10000, None).await.unwrap_err();
        assert!(e.to_string().contains("not a file mode"), "{e}");
    }
}
