//! The blocking side: opening an authenticated, verified SSH session and running one
//! command on it. Everything here blocks; [`crate::SshTransport`] calls it from
//! `tokio::task::spawn_blocking` only.
//!
//! Every wait is bounded: the TCP connect by `connect_timeout`, each libssh2 call by the
//! session timeout, a command by its own deadline (its time limit + the remote `timeout`'s
//! kill delay + `connect_timeout` of slack).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::thread;
use std::time::{Duration, Instant};

use pgrepl_core::transport::TransportError;
use ssh2::{Channel, ErrorCode, MethodType, Session};

use crate::config::{HostKeyPolicy, SshAuth, SshConfig};
use crate::known_hosts::{self, HostEntries, Verdict};

/// Waits between connection attempts: one first try, then one retry after each of these.
/// Only failures to reach the server or to complete the handshake are retried; host key
/// and authentication failures are final.
pub const CONNECT_RETRY_DELAYS: [Duration; 3] = [Duration::from_millis(200), Duration::from_millis(500), Duration::from_secs(1)];

/// Longest single wait inside a command's I/O loop when nothing moves; bounds how late a
/// deadline is noticed.
const POLL: Duration = Duration::from_millis(100);

/// Bytes sent per write of stdin.
const STDIN_CHUNK: usize = 32 * 1024;

/// Largest stdout or stderr kept per command; a command printing more fails (the
/// connection is then dropped, which stops it).
pub(crate) const MAX_OUTPUT: usize = 256 * 1024 * 1024;

/// Longest wait for libssh2 to free a channel or session that is being abandoned.
const ABANDON_TIMEOUT: Duration = Duration::from_secs(1);

// libssh2 error codes (libssh2.h) the I/O loop tells apart.
const LIBSSH2_ERROR_TIMEOUT: i32 = -9;
const LIBSSH2_ERROR_SOCKET_SEND: i32 = -7;
const LIBSSH2_ERROR_SOCKET_DISCONNECT: i32 = -13;
const LIBSSH2_ERROR_AUTHENTICATION_FAILED: i32 = -18;
const LIBSSH2_ERROR_CHANNEL_REQUEST_DENIED: i32 = -22;
const LIBSSH2_ERROR_EAGAIN: i32 = -37;
const LIBSSH2_ERROR_SOCKET_RECV: i32 = -43;

/// An authenticated session and a second handle on its socket.
pub(crate) struct Conn {
    sess: Session,
    /// Shut down before the session is dropped after a failure, so no libssh2 call in
    /// the teardown waits on a dead or confused peer.
    socket: TcpStream,
}

impl Conn {
    /// Drops a session that failed or is in an unknown state, without waiting on it.
    pub(crate) fn abandon(self) {
        let _ = self.socket.shutdown(Shutdown::Both);
        self.sess.set_timeout(ms(ABANDON_TIMEOUT));
        // Dropped here: libssh2 sees the closed socket and frees without waiting.
    }

    /// Says goodbye to the server (bounded by `timeout`) and drops the session.
    pub(crate) fn disconnect(self, timeout: Duration) {
        self.sess.set_blocking(true);
        self.sess.set_timeout(ms(timeout));
        let _ = self.sess.disconnect(None, "pgrepl: closing", None);
        self.abandon();
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Never block in drop: a plain TCP close; sshd logs "Connection closed".
        let _ = self.socket.shutdown(Shutdown::Both);
    }
}

/// Opens a session, trying again after a short wait when the server cannot be reached or
/// the handshake fails (see [`CONNECT_RETRY_DELAYS`]).
pub(crate) fn connect(cfg: &SshConfig) -> Result<Conn, TransportError> {
    let started = Instant::now();
    let mut attempt = 0usize;
    loop {
        attempt += 1;
        match connect_once(cfg) {
            Ok(c) => {
                tracing::debug!(endpoint = %cfg.endpoint(), user = cfg.user(), attempt, "ssh session open");
                return Ok(c);
            }
            Err(TransportError::Connect(msg)) => match CONNECT_RETRY_DELAYS.get(attempt - 1) {
                Some(delay) => {
                    tracing::debug!(endpoint = %cfg.endpoint(), attempt, error = %msg, "ssh connect failed; retrying");
                    thread::sleep(*delay);
                }
                None => {
                    return Err(TransportError::Connect(format!(
                        "{msg} (gave up after {attempt} attempts in {:.1} s)",
                        started.elapsed().as_secs_f64()
                    )));
                }
            },
            Err(e) => return Err(e),
        }
    }
}

fn connect_once(cfg: &SshConfig) -> Result<Conn, TransportError> {
    let endpoint = cfg.endpoint();
    let timeout = cfg.connect_timeout();
    let tcp = tcp_connect(cfg)?;
    let _ = tcp.set_nodelay(true);
    let socket = tcp.try_clone().map_err(|e| TransportError::Connect(format!("{endpoint}: {e}")))?;

    let mut sess = Session::new().map_err(|e| TransportError::Other(format!("{endpoint}: cannot create an SSH session: {e}")))?;
    sess.set_timeout(ms(timeout));
    let name = known_hosts::lookup_name(cfg.host(), cfg.port());
    let entries = HostEntries::load(&sess, cfg.known_hosts(), &name).map_err(|e| {
        TransportError::HostKey(format!("{endpoint}: cannot read the known_hosts file {}: {e}", cfg.known_hosts().display()))
    })?;
    sess.method_pref(MethodType::HostKey, &entries.hostkey_preference())
        .map_err(|e| TransportError::Other(format!("{endpoint}: cannot set host key algorithms: {e}")))?;
    sess.set_tcp_stream(tcp);
    sess.handshake().map_err(|e| TransportError::Connect(format!("{endpoint}: SSH handshake failed: {}", e.message())))?;

    let conn = Conn { sess, socket };
    verify_host_key(cfg, &conn.sess, &entries, &name)?;
    authenticate(cfg, &conn.sess)?;
    Ok(conn)
}

fn tcp_connect(cfg: &SshConfig) -> Result<TcpStream, TransportError> {
    let endpoint = cfg.endpoint();
    let addrs: Vec<SocketAddr> = (cfg.host(), cfg.port())
        .to_socket_addrs()
        .map_err(|e| TransportError::Connect(format!("{endpoint}: cannot resolve the host name: {e}")))?
        .collect();
    let mut last: Option<io::Error> = None;
    for addr in &addrs {
        match TcpStream::connect_timeout(addr, cfg.connect_timeout()) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(TransportError::Connect(match last {
        Some(e) => format!("{endpoint}: TCP connect failed: {e}"),
        None => format!("{endpoint}: the host name resolved to no address"),
    }))
}

fn verify_host_key(cfg: &SshConfig, sess: &Session, entries: &HostEntries, name: &str) -> Result<(), TransportError> {
    let endpoint = cfg.endpoint();
    let file = cfg.known_hosts().display();
    let Some((key, key_type)) = sess.host_key() else {
        return Err(TransportError::HostKey(format!("{endpoint}: the server sent no host key")));
    };
    let type_name = known_hosts::key_type_name(key_type).unwrap_or("unknown-key-type");
    let fingerprint = known_hosts::fingerprint_sha256(sess);
    let verdict = entries
        .verify(sess, name, key)
        .map_err(|e| TransportError::HostKey(format!("{endpoint}: cannot check the host key against {file}: {e}")))?;
    match verdict {
        Verdict::Match => Ok(()),
        Verdict::Revoked => Err(TransportError::HostKey(format!(
            "{endpoint}: the host key ({type_name} {fingerprint}) is marked @revoked in {file}; refusing to connect"
        ))),
        Verdict::Mismatch => Err(TransportError::HostKey(format!(
            "{endpoint}: the host key ({type_name} {fingerprint}) does not match the {} key(s) recorded for \
             {name} in {file}. Someone may be intercepting the connection, or the host was reinstalled. \
             If the change is expected, remove the old entry (ssh-keygen -R '{name}' -f {file}) and add the new key",
            entries.key_types().join("/"),
        ))),
        Verdict::NotFound => match cfg.host_key_policy() {
            HostKeyPolicy::AcceptNew => {
                if key_type_name_known(type_name) {
                    known_hosts::append(cfg.known_hosts(), name, type_name, key)
                        .map_err(|e| TransportError::HostKey(format!("{endpoint}: cannot add the host key to {file}: {e}")))?;
                    tracing::info!(endpoint = %endpoint, key = %fingerprint, file = %file, "added new host key to known_hosts");
                    Ok(())
                } else {
                    Err(TransportError::HostKey(format!(
                        "{endpoint}: the server's host key has a type pgrepl cannot record; add it to {file} yourself"
                    )))
                }
            }
            // Strict, and any policy added later: never accept an unknown key silently.
            _ => Err(TransportError::HostKey(format!(
                "{endpoint}: the host key ({type_name} {fingerprint}) is not in {file}{}. Check the fingerprint \
                 out of band, then add it (for example: ssh-keyscan -p {} -t {} {} >> {file}), or connect once \
                 with HostKeyPolicy::AcceptNew",
                if entries.file_exists { "" } else { " (the file does not exist)" },
                cfg.port(),
                type_name.trim_start_matches("ssh-"),
                cfg.host(),
            ))),
        },
    }
}

fn key_type_name_known(t: &str) -> bool {
    t != "unknown-key-type"
}

fn authenticate(cfg: &SshConfig, sess: &Session) -> Result<(), TransportError> {
    let who = format!("{}@{}", cfg.user(), cfg.endpoint());
    let result = match cfg.auth() {
        SshAuth::KeyFile(path) => {
            if let Err(e) = std::fs::File::open(path) {
                return Err(TransportError::Auth(format!("{who}: cannot read the private key {}: {e}", path.display())));
            }
            sess.userauth_pubkey_file(cfg.user(), None, path, None).map_err(|e| {
                (
                    e,
                    format!(
                        "the server refused the key {} (is its public key in {}'s authorized_keys on the host? \
                         a key with a passphrase must be used through an agent)",
                        path.display(),
                        cfg.user()
                    ),
                )
            })
        }
        SshAuth::Agent => agent_auth(sess, cfg.user()),
    };
    match result {
        Ok(()) if sess.authenticated() => Ok(()),
        Ok(()) => Err(TransportError::Auth(format!("{who}: the server did not accept the authentication"))),
        Err((e, _)) if is_connection_error(&e) => {
            Err(TransportError::Connect(format!("{who}: connection lost during authentication: {}", e.message())))
        }
        Err((e, what)) => Err(TransportError::Auth(format!("{who}: {what}: {}", e.message()))),
    }
}

fn agent_auth(sess: &Session, user: &str) -> Result<(), (ssh2::Error, String)> {
    let mut agent = sess.agent().map_err(|e| (e, "cannot use the SSH agent".to_string()))?;
    agent.connect().map_err(|e| (e, "cannot reach the SSH agent (is SSH_AUTH_SOCK set?)".to_string()))?;
    agent.list_identities().map_err(|e| (e, "cannot list the SSH agent's identities".to_string()))?;
    let identities = agent.identities().map_err(|e| (e, "cannot list the SSH agent's identities".to_string()))?;
    let mut last = None;
    for id in &identities {
        match agent.userauth(user, id) {
            Ok(()) => {
                let _ = agent.disconnect();
                return Ok(());
            }
            Err(e) if is_connection_error(&e) => return Err((e, String::new())),
            Err(e) => last = Some(e),
        }
    }
    let _ = agent.disconnect();
    let what = format!("none of the SSH agent's {} identities was accepted", identities.len());
    Err((last.unwrap_or_else(|| ssh2::Error::new(ErrorCode::Session(LIBSSH2_ERROR_AUTHENTICATION_FAILED), "no identities")), what))
}

/// Whether an ssh2 error means the connection itself failed.
fn is_connection_error(e: &ssh2::Error) -> bool {
    matches!(
        e.code(),
        ErrorCode::Session(LIBSSH2_ERROR_SOCKET_SEND | LIBSSH2_ERROR_SOCKET_RECV | LIBSSH2_ERROR_SOCKET_DISCONNECT | LIBSSH2_ERROR_TIMEOUT)
    )
}

/// What a finished remote command returned.
#[derive(Debug)]
pub(crate) struct RawOutput {
    /// Exit status; `-1` when killed by a signal.
    pub(crate) status: i32,
    /// The signal that killed it, if any (`TERM`, `KILL`, …).
    pub(crate) signal: Option<String>,
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: Vec<u8>,
    /// From the channel's opening to its close.
    pub(crate) elapsed: Duration,
}

/// Why running a command failed, as far as the session layer can tell.
#[derive(Debug)]
pub(crate) enum ExecError {
    /// No channel could be opened: the command did not start, and the session is likely
    /// dead (safe to reconnect and try once more).
    NotStarted(ssh2::Error),
    /// The server refused to run the command (the session is fine).
    Refused(ssh2::Error),
    /// The connection failed after the command may have started.
    Broken(io::Error),
    /// The local deadline passed (the connection is dropped, which stops the command).
    Deadline,
    /// Stdout or stderr grew past [`MAX_OUTPUT`].
    TooMuchOutput(&'static str),
}

impl ExecError {
    /// Whether the session must be dropped after this error.
    pub(crate) fn poisons_session(&self) -> bool {
        !matches!(self, ExecError::Refused(_))
    }
}

/// One command's request.
pub(crate) struct Request<'a> {
    pub(crate) line: &'a str,
    pub(crate) stdin: &'a [u8],
    /// The command's own time limit plus slack; past it the transport gives up.
    pub(crate) local_limit: Duration,
}

impl Conn {
    /// Runs one command line on a new channel of this session.
    pub(crate) fn run(&self, req: &Request<'_>, open_timeout: Duration) -> Result<RawOutput, ExecError> {
        let sess = &self.sess;
        sess.set_blocking(true);
        sess.set_timeout(ms(open_timeout));
        let mut ch = sess.channel_session().map_err(ExecError::NotStarted)?;
        let started = Instant::now();
        if let Err(e) = ch.exec(req.line) {
            return Err(if matches!(e.code(), ErrorCode::Session(LIBSSH2_ERROR_CHANNEL_REQUEST_DENIED)) {
                ExecError::Refused(e)
            } else {
                ExecError::Broken(e.into())
            });
        }
        let deadline = started + req.local_limit;
        let result = pump(sess, &mut ch, req.stdin, deadline);
        sess.set_blocking(true);
        let (stdout, stderr) = result?;

        // Both streams are at EOF; the exit status comes with (or before) the close.
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(ExecError::Deadline);
        }
        sess.set_timeout(ms(remaining));
        if let Err(e) = ch.wait_close() {
            return Err(if is_timeout(&e) { ExecError::Deadline } else { ExecError::Broken(e.into()) });
        }
        let elapsed = started.elapsed();
        let signal = ch.exit_signal().ok().and_then(|s| s.exit_signal);
        let status = if signal.is_some() { -1 } else { ch.exit_status().map_err(|e| ExecError::Broken(e.into()))? };
        sess.set_timeout(ms(open_timeout));
        Ok(RawOutput { status, signal, stdout, stderr, elapsed })
    }
}

/// Feeds stdin and drains stdout and stderr until both are at EOF (or the deadline).
///
/// Mostly non-blocking so that neither stream can stall the other (a command that fills
/// the stderr window while we wait on stdout would otherwise hang). When nothing moved in
/// a round, one blocking call with a short session timeout ([`POLL`]) waits for the
/// socket instead of spinning.
fn pump(sess: &Session, ch: &mut Channel, stdin: &[u8], deadline: Instant) -> Result<(Vec<u8>, Vec<u8>), ExecError> {
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let mut out_eof = false;
    let mut err_eof = false;
    let mut sent = 0usize;
    let mut stdin_done = false; // EOF sent, or the remote stopped taking stdin
    let mut buf = vec![0u8; 32 * 1024];

    loop {
        if Instant::now() >= deadline {
            return Err(ExecError::Deadline);
        }
        sess.set_blocking(false);
        let mut moved = false;

        if !stdin_done {
            match feed_stdin(ch, stdin, &mut sent) {
                Feed::Moved => moved = true,
                Feed::Blocked => {}
                Feed::Done => {
                    stdin_done = true;
                    moved = true;
                }
            }
        }
        if !out_eof {
            moved |= drain(&mut *ch, &mut buf, &mut stdout, &mut out_eof, "stdout")?;
        }
        if !err_eof {
            moved |= drain(&mut ch.stderr(), &mut buf, &mut stderr, &mut err_eof, "stderr")?;
        }
        if out_eof && err_eof {
            // The command closed its output; any stdin it did not read is moot.
            return Ok((stdout, stderr));
        }
        if moved {
            continue;
        }

        // Nothing moved: wait in one blocking call, bounded by POLL and the deadline.
        let wait = POLL.min(deadline.saturating_duration_since(Instant::now()));
        if wait.is_zero() {
            return Err(ExecError::Deadline);
        }
        sess.set_blocking(true);
        sess.set_timeout(ms(wait));
        if !stdin_done && sent < stdin.len() {
            let end = stdin.len().min(sent + STDIN_CHUNK);
            match ch.write(&stdin[sent..end]) {
                Ok(n) => sent += n,
                Err(e) if is_would_block(&e) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "remote stopped reading stdin");
                    stdin_done = true;
                }
            }
        } else if !out_eof {
            let n = read_one(&mut *ch, &mut buf, "stdout")?;
            take(n, &buf, &mut stdout, &mut out_eof, "stdout")?;
        } else {
            let n = read_one(&mut ch.stderr(), &mut buf, "stderr")?;
            take(n, &buf, &mut stderr, &mut err_eof, "stderr")?;
        }
    }
}

enum Feed {
    Moved,
    Blocked,
    Done,
}

/// One non-blocking step of sending stdin, then EOF.
fn feed_stdin(ch: &mut Channel, stdin: &[u8], sent: &mut usize) -> Feed {
    if *sent < stdin.len() {
        // Same chunk boundaries on a retry: libssh2 wants a partly sent packet resent as is.
        let end = stdin.len().min(*sent + STDIN_CHUNK);
        return match ch.write(&stdin[*sent..end]) {
            Ok(0) => Feed::Blocked,
            Ok(n) => {
                *sent += n;
                Feed::Moved
            }
            Err(e) if is_would_block(&e) => Feed::Blocked,
            Err(e) => {
                // The program exited or closed stdin without reading it all.
                tracing::debug!(error = %e, "remote stopped reading stdin");
                Feed::Done
            }
        };
    }
    match ch.send_eof() {
        Ok(()) => Feed::Done,
        Err(e) if matches!(e.code(), ErrorCode::Session(LIBSSH2_ERROR_EAGAIN | LIBSSH2_ERROR_TIMEOUT)) => Feed::Blocked,
        Err(e) => {
            tracing::debug!(error = %e, "could not send EOF on stdin");
            Feed::Done
        }
    }
}

/// Reads what is available without blocking (bounded by the channel window); returns
/// whether anything moved.
fn drain(r: &mut impl Read, buf: &mut [u8], into: &mut Vec<u8>, eof: &mut bool, stream: &'static str) -> Result<bool, ExecError> {
    let mut moved = false;
    // The window (2 MiB) divided by the buffer (32 KiB) bounds a drain to ~64 reads; 1024
    // is a safety cap, the next round continues where this one stopped.
    for _ in 0..1024 {
        let n = read_one(r, buf, stream)?;
        match n {
            None => break,
            Some(n) => {
                take(Some(n), buf, into, eof, stream)?;
                moved = true;
                if *eof {
                    break;
                }
            }
        }
    }
    Ok(moved)
}

/// One read: `Some(0)` is EOF, `None` nothing available (yet).
fn read_one(r: &mut impl Read, buf: &mut [u8], stream: &'static str) -> Result<Option<usize>, ExecError> {
    match r.read(buf) {
        Ok(n) => Ok(Some(n)),
        Err(e) if is_would_block(&e) => Ok(None),
        Err(e) => Err(ExecError::Broken(io::Error::new(e.kind(), format!("reading the command's {stream}: {e}")))),
    }
}

fn take(n: Option<usize>, buf: &[u8], into: &mut Vec<u8>, eof: &mut bool, stream: &'static str) -> Result<(), ExecError> {
    match n {
        None => Ok(()),
        Some(0) => {
            *eof = true;
            Ok(())
        }
        Some(n) => {
            if into.len() + n > MAX_OUTPUT {
                return Err(ExecError::TooMuchOutput(stream));
            }
            into.extend_from_slice(&buf[..n]);
            Ok(())
        }
    }
}

fn is_would_block(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted)
}

fn is_timeout(e: &ssh2::Error) -> bool {
    matches!(e.code(), ErrorCode::Session(LIBSSH2_ERROR_TIMEOUT | LIBSSH2_ERROR_EAGAIN))
}

/// A duration as libssh2's millisecond timeout, never 0 (which would mean "no limit").
fn ms(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ms_is_never_unbounded() {
        assert_eq!(ms(Duration::ZERO), 1);
        assert_eq!(ms(Duration::from_secs(2)), 2000);
        assert_eq!(ms(Duration::from_secs(u64::MAX)), u32::MAX);
    }

    #[test]
    fn take_caps_output() {
        let mut v = vec![0u8; MAX_OUTPUT - 1];
        let mut eof = false;
        assert!(take(Some(1), &[1, 2], &mut v, &mut eof, "stdout").is_ok());
        assert!(matches!(take(Some(1), &[1], &mut v, &mut eof, "stdout"), Err(ExecError::TooMuchOutput("stdout"))));
        assert!(take(Some(0), &[], &mut v, &mut eof, "stdout").is_ok());
        assert!(eof);
    }
}
