//! The blocking side: opening an authenticated, verified SSH session and running commands
//! on it through long-lived framed shells ([`crate::shell`]). Everything here blocks;
//! [`crate::SshTransport`] calls it from `tokio::task::spawn_blocking` only.
//!
//! One connection carries up to [`MAX_SHELLS`] channels, each running the framed shell;
//! a command takes an idle one (or opens one), so after the first command a command
//! costs one exchange on an open channel, not a channel and a login session of sshd's.
//! Several commands may run at once on one connection (a clone and the poll of its
//! progress): each drives its own channel in short non-blocking turns under one lock.
//!
//! Every wait is bounded: the TCP connect by `connect_timeout`, each blocking libssh2
//! call by the session timeout, a command by its own deadline (its time limit + the
//! remote `timeout`'s kill delay + `connect_timeout` of slack), a ping of an idle shell by
//! `connect_timeout`.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use pgrepl_core::transport::TransportError;
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use ssh2::{BlockDirections, Channel, ErrorCode, MethodType, Session};

use crate::config::{HostKeyPolicy, SshAuth, SshConfig};
use crate::known_hosts::{self, HostEntries, Verdict};
use crate::shell::{self, FrameError, Reply};

/// Waits between connection attempts: one first try, then one retry after each of these.
/// Only failures to reach the server or to complete the handshake are retried; host key
/// and authentication failures are final.
pub const CONNECT_RETRY_DELAYS: [Duration; 3] = [Duration::from_millis(200), Duration::from_millis(500), Duration::from_secs(1)];

/// Longest single wait inside a command's I/O loop when nothing moves; bounds how late a
/// deadline is noticed.
const POLL: Duration = Duration::from_millis(100);

/// The same while other commands share the connection (they may have read this one's
/// answer off the socket into its channel).
const SHARED_POLL: Duration = Duration::from_millis(3);

/// Shells (channels) per connection at most; sshd allows 10 sessions per connection by
/// default (`MaxSessions`).
pub(crate) const MAX_SHELLS: usize = 4;

/// How long a command waits for a busy shell to come free before it opens another (which
/// stays for later commands, up to [`MAX_SHELLS`]): most commands take a few ms; a new
/// shell costs a channel and a session on the server once. 100 ms made a failover's
/// concurrent steps on one host wait in line (deploy_ssh: 2.8x local, 2.0x at 5 ms).
const SHELL_PATIENCE: Duration = Duration::from_millis(20);

/// An idle shell unused for this long is pinged before a command is sent to it, so that a
/// connection that died while idle is found before anything of the command leaves.
const PING_AFTER: Duration = Duration::from_secs(1);

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
const LIBSSH2_ERROR_SOCKET_RECV: i32 = -43;

/// An authenticated session, its shells, and a second handle on its socket.
pub(crate) struct Conn {
    io: Mutex<Io>,
    /// Waited on between turns; shut down when the connection is abandoned, so no libssh2
    /// call in the teardown waits on a dead or confused peer.
    socket: TcpStream,
    broken: AtomicBool,
    /// Callers running a command on this connection now.
    active: AtomicUsize,
    /// Signalled when a shell becomes free.
    freed: Condvar,
}

/// What only one thread at a time touches.
struct Io {
    sess: Session,
    idle: Vec<Shell>,
    /// Shells open (idle or in use).
    shells: usize,
}

impl Conn {
    fn new(sess: Session, socket: TcpStream) -> Conn {
        sess.set_blocking(false);
        Conn {
            io: Mutex::new(Io { sess, idle: Vec::new(), shells: 0 }),
            socket,
            broken: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            freed: Condvar::new(),
        }
    }

    /// Gives up on a connection that failed or is in an unknown state, without waiting on
    /// it: the socket is shut down, so every command on it fails at once and libssh2 frees
    /// the session without waiting when the last user drops it.
    pub(crate) fn abandon(&self) {
        self.broken.store(true, Ordering::SeqCst);
        let _ = self.socket.shutdown(Shutdown::Both);
        self.freed.notify_all();
    }

    /// Says goodbye to the server (bounded by `timeout`) and gives the connection up.
    pub(crate) fn disconnect(&self, timeout: Duration) {
        {
            let io = self.lock();
            io.sess.set_blocking(true);
            io.sess.set_timeout(ms(timeout));
            let _ = io.sess.disconnect(None, "pgrepl: closing", None);
            io.sess.set_timeout(ms(ABANDON_TIMEOUT));
        }
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

    verify_host_key(cfg, &sess, &entries, &name)?;
    authenticate(cfg, &sess)?;
    Ok(Conn::new(sess, socket))
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
    /// Exit status (a shell's: 128 + N when killed by signal N).
    pub(crate) status: i32,
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: Vec<u8>,
    /// From sending the command to its answer.
    pub(crate) elapsed: Duration,
}

/// Why running a command failed, as far as the session layer can tell.
#[derive(Debug)]
pub(crate) enum ExecError {
    /// Nothing of the command was sent: the connection turned out dead (no channel could
    /// be opened, an idle shell found closed or silent). Safe to reconnect and try once more.
    NotStarted(String),
    /// The server refused to start the shell (the session is fine).
    Refused(ssh2::Error),
    /// The connection failed after the command may have started.
    Broken(io::Error),
    /// The shell answered in a way that cannot be read (only that shell is closed).
    Protocol(String),
    /// The local deadline passed (the connection is dropped, which stops the command).
    Deadline,
    /// Stdout or stderr grew past [`MAX_OUTPUT`].
    TooMuchOutput(&'static str),
}

impl ExecError {
    /// Whether the session must be dropped after this error.
    pub(crate) fn poisons_session(&self) -> bool {
        !matches!(self, ExecError::Refused(_) | ExecError::Protocol(_))
    }
}

/// One command's request.
pub(crate) struct Request<'a> {
    pub(crate) line: &'a str,
    /// `None`: the command reads `/dev/null`.
    pub(crate) stdin: Option<&'a [u8]>,
    /// The command's own time limit plus slack; past it the transport gives up.
    pub(crate) local_limit: Duration,
}

/// A channel running the framed shell ([`crate::shell::LOOP`]).
struct Shell {
    ch: Channel,
    /// When it last answered.
    used: Instant,
}

/// Answers a [`Conn::drive`] collects.
trait Sink {
    fn stdout(&mut self, bytes: &[u8]) -> Result<(), FrameError>;
    fn stderr(&mut self, bytes: &[u8]) -> Result<(), FrameError>;
    fn done(&self) -> bool;
}

impl Sink for Reply {
    fn stdout(&mut self, bytes: &[u8]) -> Result<(), FrameError> {
        self.push_stdout(bytes)
    }
    fn stderr(&mut self, bytes: &[u8]) -> Result<(), FrameError> {
        self.push_stderr(bytes)
    }
    fn done(&self) -> bool {
        self.complete()
    }
}

/// A ping's answer.
struct Pong {
    nonce: String,
    got: Vec<u8>,
    done: bool,
}

impl Sink for Pong {
    fn stdout(&mut self, bytes: &[u8]) -> Result<(), FrameError> {
        self.got.extend_from_slice(bytes);
        self.done = shell::ping_answered(&self.got, &self.nonce)?;
        Ok(())
    }
    fn stderr(&mut self, bytes: &[u8]) -> Result<(), FrameError> {
        if bytes.is_empty() { Ok(()) } else { Err(FrameError::Trailing("stderr")) }
    }
    fn done(&self) -> bool {
        self.done
    }
}

/// What an idle shell looked like before it was handed out.
enum Health {
    Alive,
    /// The shell ended or wrote something unasked: close it, try another.
    ShellGone,
    /// The connection failed.
    ConnGone(String),
}

impl Conn {
    /// Whether the connection failed (or was dropped); it is not used again.
    pub(crate) fn is_broken(&self) -> bool {
        self.broken.load(Ordering::SeqCst)
    }

    fn lock(&self) -> MutexGuard<'_, Io> {
        self.io.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs one command line on one of this connection's shells: an idle one, else a busy
    /// one that comes free within [`SHELL_PATIENCE`], else a new one (at most
    /// [`MAX_SHELLS`]; beyond that it waits for a free one).
    pub(crate) fn run(&self, req: &Request<'_>, open_timeout: Duration) -> Result<RawOutput, ExecError> {
        self.active.fetch_add(1, Ordering::SeqCst);
        let _active = Active(&self.active);
        let started = Instant::now();
        let deadline = started + req.local_limit;
        let mut sh = self.take_shell(open_timeout, deadline)?;
        let nonce = shell::nonce();
        let frame = shell::command_frame(&nonce, req.line, req.stdin);
        let mut reply = Reply::new(&nonce, MAX_OUTPUT);
        match self.drive(&mut sh, &frame, deadline, &mut reply) {
            Ok(()) => {
                let status = reply.status().unwrap_or(-1);
                let dirty = reply.dirty;
                self.give_back(sh, dirty);
                Ok(RawOutput { status, stdout: reply.stdout, stderr: reply.stderr, elapsed: started.elapsed() })
            }
            Err(e) => {
                self.discard(sh, e.poisons_session());
                Err(e)
            }
        }
    }

    /// An idle shell that is alive (a ping first when it has been idle for [`PING_AFTER`]),
    /// or a new one.
    fn take_shell(&self, open_timeout: Duration, deadline: Instant) -> Result<Shell, ExecError> {
        let patience = Instant::now() + SHELL_PATIENCE;
        let mut io = self.lock();
        // Each turn closes an idle shell, opens one, or waits (bounded by the deadline).
        loop {
            if self.is_broken() {
                return Err(ExecError::NotStarted("the connection was closed".into()));
            }
            if let Some(mut sh) = io.idle.pop() {
                io.sess.set_blocking(false);
                match health(&mut sh) {
                    Health::Alive => {}
                    Health::ShellGone => {
                        io.shells -= 1;
                        continue;
                    }
                    Health::ConnGone(why) => {
                        io.shells -= 1;
                        drop(io);
                        self.abandon();
                        return Err(ExecError::NotStarted(why));
                    }
                }
                drop(io);
                if sh.used.elapsed() >= PING_AFTER {
                    let nonce = shell::nonce();
                    let mut pong = Pong { nonce: nonce.clone(), got: Vec::new(), done: false };
                    if let Err(e) = self.drive(&mut sh, &shell::ping_frame(&nonce), Instant::now() + open_timeout, &mut pong) {
                        self.discard(sh, true);
                        return Err(ExecError::NotStarted(format!("an idle shell did not answer: {e:?}")));
                    }
                }
                return Ok(sh);
            }
            let now = Instant::now();
            if io.shells == 0 || (io.shells < MAX_SHELLS && now >= patience) {
                let sh = open_shell(&io.sess, open_timeout)?;
                io.shells += 1;
                return Ok(sh);
            }
            let left = deadline.saturating_duration_since(now);
            if left.is_zero() {
                return Err(ExecError::Deadline);
            }
            let wait = if io.shells < MAX_SHELLS { patience.saturating_duration_since(now) } else { Duration::from_secs(1) };
            io = self.freed.wait_timeout(io, left.min(wait).max(Duration::from_millis(1))).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    fn give_back(&self, mut sh: Shell, dirty: bool) {
        if dirty {
            tracing::debug!("output arrived after a command's end; closing that shell");
            return self.discard(sh, false);
        }
        sh.used = Instant::now();
        self.lock().idle.push(sh);
        self.freed.notify_one();
    }

    /// Closes a shell that failed; with `poison`, the whole connection.
    fn discard(&self, sh: Shell, poison: bool) {
        {
            let mut io = self.lock();
            io.shells -= 1;
            io.sess.set_blocking(false);
            let mut sh = sh;
            let _ = sh.ch.close();
        }
        if poison {
            self.abandon();
        }
        self.freed.notify_all();
    }

    /// Sends `send` on the shell and reads its streams into `sink` until it is done, the
    /// connection fails or the deadline passes. The session is used in short non-blocking
    /// turns under the lock, so that other commands' shells on the same connection move
    /// too; between turns where nothing moved it waits on the socket.
    fn drive(&self, sh: &mut Shell, send: &[u8], deadline: Instant, sink: &mut dyn Sink) -> Result<(), ExecError> {
        let mut sent = 0usize;
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            if Instant::now() >= deadline {
                return Err(ExecError::Deadline);
            }
            let (moved, outbound) = {
                let io = self.lock();
                if self.is_broken() {
                    return Err(ExecError::Broken(io::Error::new(io::ErrorKind::ConnectionAborted, "the connection was closed")));
                }
                io.sess.set_blocking(false);
                let mut moved = false;
                while sent < send.len() {
                    // Same chunk boundaries on a retry: libssh2 wants a partly sent packet resent as is.
                    let end = send.len().min(sent + STDIN_CHUNK);
                    match sh.ch.write(&send[sent..end]) {
                        Ok(0) => break,
                        Ok(n) => {
                            sent += n;
                            moved = true;
                        }
                        Err(e) if is_would_block(&e) => break,
                        Err(e) => return Err(ExecError::Broken(e)),
                    }
                }
                moved |= drain(&mut sh.ch.stream(0), &mut buf, |b| sink.stdout(b), "stdout")?;
                moved |= drain(&mut sh.ch.stderr(), &mut buf, |b| sink.stderr(b), "stderr")?;
                if !sink.done() && sh.ch.eof() {
                    return Err(ExecError::Broken(io::Error::new(io::ErrorKind::UnexpectedEof, "the remote shell ended")));
                }
                (moved, matches!(io.sess.block_directions(), BlockDirections::Outbound | BlockDirections::Both))
            };
            if sink.done() && sent == send.len() {
                return Ok(());
            }
            if !moved {
                self.wait_socket(outbound, deadline);
            }
        }
    }

    /// Waits until the socket can be read (or written, when libssh2 waits for that), at
    /// most [`POLL`] (a few ms when other commands share the connection: they may have
    /// read what was meant for this one), and never past `deadline`.
    fn wait_socket(&self, outbound: bool, deadline: Instant) {
        let cap = if self.active.load(Ordering::SeqCst) > 1 { SHARED_POLL } else { POLL };
        let wait = cap.min(deadline.saturating_duration_since(Instant::now()));
        let mut flags = PollFlags::IN;
        if outbound {
            flags |= PollFlags::OUT;
        }
        let ts = Timespec { tv_sec: wait.as_secs() as i64, tv_nsec: wait.subsec_nanos() as i64 };
        let mut fds = [PollFd::new(&self.socket, flags)];
        if poll(&mut fds, Some(&ts)).is_err() {
            thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Counts the callers using a connection.
struct Active<'a>(&'a AtomicUsize);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Opens a channel and starts the framed shell on it (blocking, within `open_timeout`).
fn open_shell(sess: &Session, open_timeout: Duration) -> Result<Shell, ExecError> {
    sess.set_blocking(true);
    sess.set_timeout(ms(open_timeout));
    let opened = sess.channel_session();
    let result = match opened {
        Err(e) => Err(ExecError::NotStarted(format!("cannot open an SSH channel: {}", e.message()))),
        Ok(mut ch) => match ch.exec(&shell::start_line()) {
            Ok(()) => Ok(Shell { ch, used: Instant::now() }),
            Err(e) if matches!(e.code(), ErrorCode::Session(LIBSSH2_ERROR_CHANNEL_REQUEST_DENIED)) => Err(ExecError::Refused(e)),
            Err(e) => Err(ExecError::NotStarted(format!("cannot start the remote shell: {}", e.message()))),
        },
    };
    sess.set_blocking(false);
    result
}

/// Looks at an idle shell without blocking: nothing to read on either stream and not at
/// its end.
fn health(sh: &mut Shell) -> Health {
    let mut b = [0u8; 1];
    for stream in [0, 1] {
        match sh.ch.stream(stream).read(&mut b) {
            Ok(0) => {}
            // Something wrote after its command ended.
            Ok(_) => return Health::ShellGone,
            Err(e) if is_would_block(&e) => {}
            Err(e) => return Health::ConnGone(format!("the connection failed while idle: {e}")),
        }
    }
    if sh.ch.eof() { Health::ShellGone } else { Health::Alive }
}

/// Reads what is available without blocking (bounded by the channel window) into `to`;
/// returns whether anything moved.
fn drain(
    r: &mut impl Read,
    buf: &mut [u8],
    mut to: impl FnMut(&[u8]) -> Result<(), FrameError>,
    stream: &'static str,
) -> Result<bool, ExecError> {
    let mut moved = false;
    // The window (2 MiB) divided by the buffer (32 KiB) bounds a drain to ~64 reads; 256
    // is a safety cap, the next turn continues where this one stopped.
    for _ in 0..256 {
        match r.read(buf) {
            Ok(0) => break,
            Ok(n) => {
                to(&buf[..n]).map_err(|e| match e {
                    FrameError::TooMuch(s) => ExecError::TooMuchOutput(s),
                    other => ExecError::Protocol(format!("{other:?}")),
                })?;
                moved = true;
            }
            Err(e) if is_would_block(&e) => break,
            Err(e) => return Err(ExecError::Broken(io::Error::new(e.kind(), format!("reading the command's {stream}: {e}")))),
        }
    }
    Ok(moved)
}

fn is_would_block(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted)
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
    fn drain_caps_output_and_reports_movement() {
        let mut buf = [0u8; 4];
        let mut reply = Reply::new("n", 5);
        let moved = drain(&mut &[b'a'; 64][..], &mut buf, |b| reply.push_stdout(b), "stdout");
        assert!(matches!(moved, Err(ExecError::TooMuchOutput("stdout"))), "{moved:?}");
        let mut got = Vec::new();
        assert!(
            !drain(
                &mut &b""[..],
                &mut buf,
                |b| {
                    got.extend_from_slice(b);
                    Ok(())
                },
                "stdout"
            )
            .unwrap()
        );
        assert!(
            drain(
                &mut &b"abc"[..],
                &mut buf,
                |b| {
                    got.extend_from_slice(b);
                    Ok(())
                },
                "stdout"
            )
            .unwrap()
        );
        assert_eq!(got, b"abc");
    }
}
