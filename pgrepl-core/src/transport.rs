//! How pgrepl acts on a host: run a command as some OS user, write and read files.
//!
//! [`Transport`] is the small object-safe surface every backend implements
//! ([`LocalTransport`](crate::local::LocalTransport) here, `SshTransport` in pgrepl-ssh).
//! Higher-level helpers ([`TransportExt`]) are built on it once, for every backend.
//!
//! Secrets never go into a [`Command`]'s program, arguments or environment: they travel
//! on stdin ([`Command::stdin`], redacted in `Debug`) or in 0600 files.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use crate::render::CommandLine;

/// Default time limit of a command.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// A command to run on a host.
#[derive(Clone)]
pub struct Command {
    /// Program (absolute path, or a name found on the host's standard PATH).
    pub program: String,
    /// Arguments, passed as they are (no shell).
    pub args: Vec<String>,
    /// Environment variables; never secrets.
    pub env: Vec<(String, String)>,
    /// Run as this OS user; `None`: the transport's own user.
    pub user: Option<String>,
    /// Bytes written to stdin, then closed. May hold secrets: redacted in `Debug`.
    pub stdin: Option<Vec<u8>>,
    /// Time limit; past it the command is killed and [`TransportError::Timeout`] returned.
    pub timeout: Duration,
}

impl Command {
    /// `program` with no arguments, run as the transport's user, with the default time limit.
    pub fn new(program: impl Into<String>) -> Self {
        Command { program: program.into(), args: Vec::new(), env: Vec::new(), user: None, stdin: None, timeout: DEFAULT_TIMEOUT }
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Runs as `user`.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// Adds an environment variable.
    pub fn env(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// Sets stdin.
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(bytes.into());
        self
    }

    /// Sets the time limit.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// The command of a rendered [`CommandLine`].
    pub fn from_line(line: &CommandLine) -> Self {
        Command {
            program: line.program.clone(),
            args: line.args.clone(),
            env: line.env.clone(),
            user: Some(line.user.clone()),
            stdin: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Command")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("env", &self.env)
            .field("user", &self.user)
            .field("stdin", &self.stdin.as_ref().map(|b| format!("<{} bytes>", b.len())))
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// What a finished command returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Exit status (`-1` when killed by a signal).
    pub status: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Output {
    /// Exit status 0.
    pub fn success(&self) -> bool {
        self.status == 0
    }

    /// The last lines of stderr (or stdout when stderr is empty), for error messages.
    pub fn tail(&self) -> String {
        let src = if self.stderr.trim().is_empty() { &self.stdout } else { &self.stderr };
        let lines: Vec<&str> = src.lines().filter(|l| !l.trim().is_empty()).collect();
        let start = lines.len().saturating_sub(8);
        lines[start..].join("\n")
    }
}

/// Why a transport operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The host could not be reached.
    #[error("could not connect: {0}")]
    Connect(String),
    /// Authentication was refused.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The host's key is unknown or changed (never accepted silently).
    #[error("host key check failed: {0}")]
    HostKey(String),
    /// A command exited non-zero (from [`TransportExt::run`]).
    #[error("`{program}` exited with status {status}: {tail}")]
    CommandFailed {
        /// The program.
        program: String,
        /// Its exit status.
        status: i32,
        /// The last lines it printed.
        tail: String,
    },
    /// The time limit ran out; the command was killed.
    #[error("`{program}` timed out after {}s", .after.as_secs())]
    Timeout {
        /// The program.
        program: String,
        /// The limit.
        after: Duration,
    },
    /// The connection dropped or another I/O error happened.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// Anything else, in the backend's words.
    #[error("{0}")]
    Other(String),
}

impl TransportError {
    /// Whether trying an idempotent step again may succeed (the connection, not the command, failed).
    pub fn is_retryable(&self) -> bool {
        match self {
            TransportError::Connect(_) | TransportError::Timeout { .. } => true,
            TransportError::Io(e) => matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::UnexpectedEof
            ),
            _ => false,
        }
    }
}

/// A host pgrepl can act on.
#[async_trait]
pub trait Transport: Send + Sync + fmt::Debug {
    /// The host's name as users know it (for messages).
    fn host(&self) -> &str;

    /// The OS user pgrepl's administrative commands (creating directories, inspecting and
    /// removing files) run as; `None`: the transport's own user. A transport that logs
    /// in as an unprivileged user with sudo answers `root`.
    fn admin_user(&self) -> Option<&str> {
        None
    }

    /// Runs a command to completion (or its time limit).
    async fn exec(&self, cmd: &Command) -> Result<Output, TransportError>;

    /// Writes `contents` to `path` atomically (a temporary file renamed into place), with
    /// `mode`, owned by `owner` (an OS user; `None` leaves the transport's user). The file
    /// never exists with a wider mode than `mode`, even briefly.
    async fn write_file(&self, path: &str, contents: &[u8], mode: u32, owner: Option<&str>) -> Result<(), TransportError>;

    /// Reads a file as `user` (`Ok(None)` when it does not exist): what `user` cannot read,
    /// pgrepl does not read for them either (a symbolic link they planted pointing at a
    /// file only root may read yields nothing of it). The default runs `cat` as `user`.
    async fn read_file_as(&self, path: &str, user: &str) -> Result<Option<Vec<u8>>, TransportError> {
        let c = Command::new("sh")
            .args(["-c", "[ -e \"$1\" ] || [ -L \"$1\" ] || exit 99; exec cat -- \"$1\"", "pgrepl-read", path])
            .user(user);
        read_output_as_file(self.exec(&c).await?, path, user)
    }

    /// Reads a file; `Ok(None)` when it does not exist. Reads with the privileges pgrepl
    /// administers the host with (root over SSH, through sudo when the login user is not
    /// root; the invoking user locally), so 0600 files of the server's user are readable.
    async fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>, TransportError>;
}

/// Creates a directory and sets its mode and owner without following a symbolic link:
/// `mkdir -p`, refuse when the path is a symbolic link (or not a directory), enter it, check
/// that the directory entered is still the entry at the path (same device and inode), then
/// `chmod`/`chown -h` the current directory (`.`), which no one can swap. A directory's
/// owner could otherwise replace it with a link to, say, `/etc`, and have root hand that
/// over. Positional parameters: path, mode (octal), owner (may be empty).
pub const MKDIR_SCRIPT: &str = r#"set -eu
mkdir -p -- "$1"
parent=$(dirname -- "$1"); base=$(basename -- "$1")
cd -P -- "$parent"
real=$(pwd -P)
if [ -L "$base" ] || [ ! -d "$base" ]; then
  echo "pgrepl: refusing to set the mode or owner of $1: it is a symbolic link (or not a directory)" >&2
  exit 3
fi
cd -P -- "$base"
if [ "$(stat -c %d:%i .)" != "$(stat -c %d:%i -- "$real/$base")" ]; then
  echo "pgrepl: refusing to set the mode or owner of $1: it was replaced while being set up" >&2
  exit 3
fi
chmod -- "$2" .
if [ -n "$3" ]; then chown -h -- "$3" .; fi"#;

/// The answer of the `cat` that [`Transport::read_file_as`] runs: the file, `None` (exit 99:
/// it does not exist), or the failure.
pub fn read_output_as_file(out: Output, path: &str, user: &str) -> Result<Option<Vec<u8>>, TransportError> {
    match out.status {
        0 => Ok(Some(out.stdout.into_bytes())),
        99 => Ok(None),
        status => Err(TransportError::CommandFailed { program: format!("read {path} as {user}"), status, tail: out.tail() }),
    }
}

/// Helpers built on [`Transport`], the same for every backend.
#[async_trait]
pub trait TransportExt: Transport {
    /// Runs `cmd` and fails with [`TransportError::CommandFailed`] on a non-zero status.
    async fn run(&self, cmd: &Command) -> Result<Output, TransportError> {
        let out = self.exec(cmd).await?;
        if out.success() {
            Ok(out)
        } else {
            Err(TransportError::CommandFailed {
                program: cmd.program.rsplit('/').next().unwrap_or(&cmd.program).to_string(),
                status: out.status,
                tail: out.tail(),
            })
        }
    }

    /// Whether `path` exists (file or directory), as `user` sees it.
    async fn exists(&self, path: &str, user: Option<&str>) -> Result<bool, TransportError> {
        let mut c = Command::new("test").args(["-e", path]);
        c.user = user.or(self.admin_user()).map(str::to_string);
        Ok(self.exec(&c).await?.success())
    }

    /// Creates `path` and missing parents, sets `mode` on it and `owner` on it. Refused
    /// (never followed) when `path` itself is a symbolic link: mode and owner are set on
    /// the directory entered, after checking it is the one at `path` (see [`MKDIR_SCRIPT`]).
    async fn mkdir(&self, path: &str, mode: u32, owner: Option<&str>) -> Result<(), TransportError> {
        let c = Command::new("sh").args(["-c", MKDIR_SCRIPT, "pgrepl-mkdir", path, &format!("{mode:o}"), owner.unwrap_or_default()]);
        self.run(&Command { user: self.admin_user().map(str::to_string), ..c }).await?;
        Ok(())
    }

    /// Removes a directory tree. Callers check first that nothing runs on it (see the executor's guards).
    async fn remove_tree(&self, path: &str) -> Result<(), TransportError> {
        if path.trim_end_matches('/').matches('/').count() < 2 {
            return Err(TransportError::Other(format!("refusing to remove \"{path}\": too close to the root")));
        }
        self.run(&Command { user: self.admin_user().map(str::to_string), ..Command::new("rm").args(["-rf", "--one-file-system", path]) })
            .await?;
        Ok(())
    }

    /// Removes a file if it exists.
    async fn remove_file(&self, path: &str) -> Result<(), TransportError> {
        self.run(&Command { user: self.admin_user().map(str::to_string), ..Command::new("rm").args(["-f", path]) }).await?;
        Ok(())
    }
}

impl<T: Transport + ?Sized> TransportExt for T {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdin_is_redacted_in_debug() {
        let c = Command::new("psql").stdin(b"ALTER ROLE x PASSWORD 'hunter2'".to_vec());
        let d = format!("{c:?}");
        assert!(!d.contains("hunter2"), "{d}");
        assert!(d.contains("bytes"));
    }

    #[test]
    fn tail_keeps_last_lines() {
        let o = Output { status: 1, stdout: String::new(), stderr: (1..=20).map(|i| format!("line {i}\n")).collect() };
        assert!(o.tail().starts_with("line 13"));
        assert!(o.tail().ends_with("line 20"));
    }
}
