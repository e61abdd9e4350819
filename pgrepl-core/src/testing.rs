//! Test helpers for transports and providers (feature `testing`).
//!
//! - [`transport_suite`] is the conformance suite every [`Transport`] backend runs against a
//!   real host (in the spirit of object_store's `integration.rs`): a new backend gets the
//!   whole contract checked for free.
//! - [`provider_suite`] does the same for [`Provider`](crate::provider::Provider)s.
//! - [`store_suite`] does the same for [`ConsensusStore`](crate::store::ConsensusStore)s
//!   (the in-process `MemoryStore`, etcd), with a [`LeaseClock`] saying how time passes.
//! - [`ScriptedTransport`] answers commands from a script, keeps files in memory and
//!   records every call: for unit tests of the logic that drives a transport.
//! - [`FlakyTransport`] wraps any transport and fails, drops or delays chosen calls: for
//!   tests of retries and recovery, on real hosts too.
//!
//! ```no_run
//! # async fn demo(t: &dyn pgrepl_core::transport::Transport) {
//! pgrepl_core::testing::transport_suite(t, "postgres", "/tmp").await;
//! # }
//! ```

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use crate::transport::{Command, Output, Transport, TransportError, TransportExt};

mod flaky;
mod provider_suite;
mod scripted;
mod store_suite;

pub use flaky::{Fault, FlakyTransport, Injection, When};
pub use provider_suite::{HostLifecycle, provider_suite};
pub use scripted::{Call, FileEntry, Match, Reply, RuleBuilder, ScriptedTransport, command_line};
pub use store_suite::{LeaseClock, RealTime, lease_expiry_is_watched, store_suite};

/// A copy of a transport error (I/O errors keep their kind and message), for answers given
/// more than once.
pub(crate) fn clone_error(e: &TransportError) -> TransportError {
    match e {
        TransportError::Connect(s) => TransportError::Connect(s.clone()),
        TransportError::Auth(s) => TransportError::Auth(s.clone()),
        TransportError::HostKey(s) => TransportError::HostKey(s.clone()),
        TransportError::CommandFailed { program, status, tail } => {
            TransportError::CommandFailed { program: program.clone(), status: *status, tail: tail.clone() }
        }
        TransportError::Timeout { program, after } => TransportError::Timeout { program: program.clone(), after: *after },
        TransportError::Io(io) => TransportError::Io(std::io::Error::new(io.kind(), io.to_string())),
        TransportError::Other(s) => TransportError::Other(s.clone()),
    }
}

/// Bytes sent through stdin and read back on stdout and stderr, larger than an SSH
/// channel window (2 MiB) so that flow control and stream separation are exercised.
const BIG: usize = 3 * 1024 * 1024;

/// How long a command that exceeds a 1 s limit may take to come back as a timeout.
const TIMEOUT_BOUND: Duration = Duration::from_secs(20);

/// How long the processes of a timed-out command may take to be gone (a remote `timeout -k
/// 5` sends SIGKILL 5 s after SIGTERM).
const KILL_BOUND: Duration = Duration::from_secs(15);

/// A program no host has.
const MISSING_PROGRAM: &str = "pgrepl-suite-no-such-program";

/// Runs the transport conformance suite against `t`; panics (with the host's name) on
/// the first broken promise.
///
/// - `other_user`: an OS user on the host other than the transport's own (for example
///   `postgres`); commands and file ownership are checked against it.
/// - `scratch_dir`: an existing directory on the host, writable with root privileges and
///   traversable by `other_user`, at least one level below `/` (`/tmp` will do). The suite works in a fresh
///   subdirectory and removes it at the end.
///
/// It checks: exit statuses (0, 1, 2, 127, and a missing program, which must fail
/// without looking retryable: status 127 as a shell reports it, or an error naming the
/// program) and stdout/stderr separation (also beyond the channel window, several MiB on
/// both at once, and many small interleaved writes); stdin delivery (several MiB, checked
/// with `cksum`, also as `other_user`); environment variables (also when switching user);
/// running as `other_user`; `write_file` with exact modes and owners, atomic replacement
/// and no leftovers; `read_file` of binary and missing files; that commands take effect in
/// the order they are run and before `exec` returns, and that concurrent commands each get
/// their own output; time limits (the command and its children are killed, and
/// [`TransportError::Timeout`] is returned); that [`TransportExt::run`] turns a failure
/// into [`TransportError::CommandFailed`] with the stderr tail; and, through a
/// [`FlakyTransport`] around `t`, that a connection dropped mid-command (the command
/// still ran) or before it surfaces as a retryable error and the transport works after.
pub async fn transport_suite(t: &dyn Transport, other_user: &str, scratch_dir: &str) {
    let host = t.host().to_string();
    let dir = format!(
        "{}/pgrepl-suite-{}-{}",
        scratch_dir.trim_end_matches('/'),
        std::process::id(),
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
    );
    let s = Suite { t, host: &host };

    s.exit_status_and_streams().await;
    s.exit_codes(other_user).await;
    s.large_streams_are_separate().await;
    s.interleaved_streams_are_separate().await;
    s.stdin_is_delivered().await;
    s.large_stdin_is_intact(other_user).await;
    s.env_is_passed(other_user).await;
    s.runs_as_other_user(other_user).await;

    s.ok(&Command::new("mkdir").args(["-p", "-m", "0755", dir.as_str()]), "create the scratch dir").await;
    s.write_file_modes_and_owners(&dir, other_user).await;
    s.write_file_replaces_atomically(&dir).await;
    s.read_file_round_trips(&dir).await;
    s.missing_file_reads_as_none(&dir).await;
    s.exists_helper(&dir).await;
    s.timeout_is_enforced().await;
    s.run_reports_failure().await;

    let more = format!("{dir}/more");
    s.ok(&Command::new("mkdir").args(["-m", "0755", more.as_str()]), "create a second scratch dir").await;
    s.commands_take_effect_in_order(&more, other_user).await;
    s.concurrent_commands_keep_their_outputs().await;
    s.timeout_kills_the_command(&more).await;
    s.dropped_connection_is_retryable(&more).await;

    if let Err(e) = t.remove_tree(&dir).await {
        panic!("{host}: cleanup: remove_tree({dir}) failed: {e}");
    }
}

struct Suite<'a> {
    t: &'a dyn Transport,
    host: &'a str,
}

impl Suite<'_> {
    /// `exec` that must not fail at the transport level.
    async fn exec(&self, cmd: &Command, what: &str) -> Output {
        match self.t.exec(cmd).await {
            Ok(o) => o,
            Err(e) => panic!("{}: {what}: exec({cmd:?}) failed: {e}", self.host),
        }
    }

    /// `exec` that must exit 0.
    async fn ok(&self, cmd: &Command, what: &str) -> Output {
        let o = self.exec(cmd, what).await;
        assert!(o.success(), "{}: {what}: {cmd:?} exited with {}: stdout={:?} stderr={:?}", self.host, o.status, o.stdout, o.stderr);
        o
    }

    async fn sh(&self, script: &str, what: &str) -> Output {
        self.ok(&Command::new("sh").args(["-c", script]), what).await
    }

    async fn exit_status_and_streams(&self) {
        let what = "exit status and stream separation";
        let o = self.exec(&Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]), what).await;
        assert_eq!(o.status, 3, "{}: {what}: {o:?}", self.host);
        assert_eq!(o.stdout, "out\n", "{}: {what}: stdout", self.host);
        assert_eq!(o.stderr, "err\n", "{}: {what}: stderr", self.host);

        let o = self.exec(&Command::new("true"), what).await;
        assert!(o.success() && o.stdout.is_empty() && o.stderr.is_empty(), "{}: {what}: true: {o:?}", self.host);

        // Arguments are passed as they are: no shell expansion, quotes or globbing.
        let tricky = ["a b", "it's", "$HOME", "*", "", "x;y", "\"q\"", "back\\slash", "new\nline"];
        let o = self.ok(&Command::new("printf").args(["%s|"]).args(tricky), what).await;
        assert_eq!(o.stdout, format!("{}|", tricky.join("|")), "{}: {what}: argv", self.host);
    }

    async fn large_streams_are_separate(&self) {
        let what = "large stdout and stderr at once";
        let script = format!("head -c {BIG} /dev/zero | tr '\\0' e >&2; head -c {BIG} /dev/zero | tr '\\0' o; echo done >&2");
        let o = self.sh(&script, what).await;
        assert_eq!(o.stdout.len(), BIG, "{}: {what}: stdout length", self.host);
        assert!(o.stdout.bytes().all(|b| b == b'o'), "{}: {what}: stdout holds stderr bytes", self.host);
        assert_eq!(o.stderr.len(), BIG + 5, "{}: {what}: stderr length", self.host);
        assert!(o.stderr.ends_with("edone\n"), "{}: {what}: stderr ending", self.host);
    }

    async fn stdin_is_delivered(&self) {
        let what = "stdin";
        let secret = "line one\nsecret: hunter2 'quoted' $notexpanded\n";
        let o = self.ok(&Command::new("cat").stdin(secret.as_bytes().to_vec()), what).await;
        assert_eq!(o.stdout, secret, "{}: {what}: cat", self.host);

        let big: Vec<u8> = (0..BIG).map(|i| b'a' + (i % 26) as u8).collect();
        let o = self.ok(&Command::new("wc").args(["-c"]).stdin(big.clone()), what).await;
        assert_eq!(o.stdout.trim(), BIG.to_string(), "{}: {what}: {BIG} bytes", self.host);

        // Echoed back whole: stdin is written while stdout is read (no pipe deadlock).
        let o = self.ok(&Command::new("cat").stdin(big.clone()).timeout(Duration::from_secs(60)), what).await;
        assert!(o.stdout.as_bytes() == big.as_slice(), "{}: {what}: {BIG} bytes echoed by cat ({} came back)", self.host, o.stdout.len());

        // No stdin: the command sees EOF at once instead of waiting.
        let o = self.ok(&Command::new("cat").timeout(Duration::from_secs(20)), what).await;
        assert_eq!(o.stdout, "", "{}: {what}: empty stdin", self.host);

        // A command that does not read its stdin still finishes.
        let o = self.ok(&Command::new("true").stdin(vec![b'x'; BIG]), what).await;
        assert!(o.stdout.is_empty(), "{}: {what}: unread stdin", self.host);
        // What a command left unread never reaches the next one (a transport that keeps
        // one stream open for many commands must drain it), nor does a part left over.
        let o = self.ok(&Command::new("cat").stdin(b"next".to_vec()), what).await;
        assert_eq!(o.stdout, "next", "{}: {what}: the command after an unread stdin", self.host);
        let o = self.ok(&Command::new("head").args(["-c", "10"]).stdin(big.clone()), what).await;
        assert_eq!(o.stdout.as_bytes(), &big[..10], "{}: {what}: a command reading part of its stdin", self.host);
        let o = self.ok(&Command::new("cat"), what).await;
        assert_eq!(o.stdout, "", "{}: {what}: no stdin after a partly read one", self.host);
        // Output without a final newline, and text that looks like a frame, come back as printed.
        let o = self.ok(&Command::new("printf").args(["%s", "no newline 0\nC x 1 -\n"]), what).await;
        assert_eq!(o.stdout, "no newline 0\nC x 1 -\n", "{}: {what}: output kept as printed", self.host);
        let o = self.ok(&Command::new("sh").args(["-c", "printf 'a\\nb'; printf 'c' >&2"]), what).await;
        assert_eq!((o.stdout.as_str(), o.stderr.as_str()), ("a\nb", "c"), "{}: {what}: no newline at the end", self.host);
    }

    async fn env_is_passed(&self, other_user: &str) {
        let what = "environment variables";
        let value = "a b 'c' $d";
        let script = "printf '%s|%s' \"$PGREPL_SUITE_A\" \"$PGREPL_SUITE_B\"";
        for user in [None, Some(other_user)] {
            let mut cmd = Command::new("sh").args(["-c", script]).env("PGREPL_SUITE_A", value).env("PGREPL_SUITE_B", "2");
            cmd.user = user.map(str::to_string);
            let o = self.ok(&cmd, what).await;
            assert_eq!(o.stdout, format!("{value}|2"), "{}: {what} (user {user:?})", self.host);
        }
    }

    async fn runs_as_other_user(&self, other_user: &str) {
        let what = "running as another user";
        let o = self.ok(&Command::new("id").args(["-un"]).user(other_user), what).await;
        assert_eq!(o.stdout.trim(), other_user, "{}: {what}", self.host);
        let o = self.ok(&Command::new("sh").args(["-c", "pwd; id -un"]).user(other_user), what).await;
        assert!(o.stderr.is_empty(), "{}: {what}: unexpected stderr {:?}", self.host, o.stderr);
        let me = self.ok(&Command::new("id").args(["-un"]), what).await.stdout.trim().to_string();
        let o = self.ok(&Command::new("id").args(["-un"]).user(me.as_str()), what).await;
        assert_eq!(o.stdout.trim(), me, "{}: {what}: own user", self.host);
    }

    async fn stat(&self, path: &str) -> (String, String, String) {
        let o = self.ok(&Command::new("stat").args(["-c", "%a %U %i", path]), "stat").await;
        let f: Vec<String> = o.stdout.split_whitespace().map(str::to_string).collect();
        assert_eq!(f.len(), 3, "{}: stat {path}: {:?}", self.host, o.stdout);
        (f[0].clone(), f[1].clone(), f[2].clone())
    }

    async fn write(&self, path: &str, contents: &[u8], mode: u32, owner: Option<&str>) {
        if let Err(e) = self.t.write_file(path, contents, mode, owner).await {
            panic!("{}: write_file({path}, mode {mode:o}, owner {owner:?}) failed: {e}", self.host);
        }
    }

    async fn read(&self, path: &str) -> Option<Vec<u8>> {
        match self.t.read_file(path).await {
            Ok(v) => v,
            Err(e) => panic!("{}: read_file({path}) failed: {e}", self.host),
        }
    }

    async fn write_file_modes_and_owners(&self, dir: &str, other_user: &str) {
        let me = self.ok(&Command::new("id").args(["-un"]), "id").await.stdout.trim().to_string();
        let cases: [(&str, u32, Option<&str>, &str); 4] = [
            ("a.conf", 0o640, Some(other_user), other_user),
            ("passfile", 0o600, Some(other_user), other_user),
            ("readonly", 0o400, Some(other_user), other_user),
            ("mine.sh", 0o755, None, me.as_str()),
        ];
        for (name, mode, owner, want_owner) in cases {
            let path = format!("{dir}/{name}");
            let body = format!("contents of {name}\n");
            self.write(&path, body.as_bytes(), mode, owner).await;
            let (got_mode, got_owner, _) = self.stat(&path).await;
            assert_eq!(got_mode, format!("{mode:o}"), "{}: write_file {path}: mode", self.host);
            assert_eq!(got_owner, want_owner, "{}: write_file {path}: owner", self.host);
            assert_eq!(self.read(&path).await.as_deref(), Some(body.as_bytes()), "{}: {path}", self.host);
        }
        // The owner can read its 0600 file.
        let o = self.ok(&Command::new("cat").args([format!("{dir}/passfile")]).user(other_user), "owner reads").await;
        assert_eq!(o.stdout, "contents of passfile\n", "{}: owner reads its file", self.host);
    }

    async fn write_file_replaces_atomically(&self, dir: &str) {
        let what = "write_file replaces";
        let path = format!("{dir}/replace.conf");
        self.write(&path, b"old\n", 0o644, None).await;
        let (_, _, inode_before) = self.stat(&path).await;
        self.write(&path, b"new\n", 0o600, None).await;
        let (mode, _, inode_after) = self.stat(&path).await;
        assert_eq!(mode, "600", "{}: {what}: mode of the replacement", self.host);
        assert_ne!(inode_before, inode_after, "{}: {what}: the file was rewritten in place, not renamed over", self.host);
        assert_eq!(self.read(&path).await.as_deref(), Some(&b"new\n"[..]), "{}: {what}", self.host);

        // A directory in the way is an error, not a file moved into it.
        let sub = format!("{dir}/adir");
        self.ok(&Command::new("mkdir").args([sub.as_str()]), what).await;
        assert!(self.t.write_file(&sub, b"x", 0o644, None).await.is_err(), "{}: {what}: writing over a directory must fail", self.host);
        // A missing parent directory is an error.
        assert!(
            self.t.write_file(&format!("{dir}/no/such/dir/f"), b"x", 0o644, None).await.is_err(),
            "{}: {what}: a missing parent must fail",
            self.host
        );
        // No temporary files are left behind, even after failures.
        let o = self.ok(&Command::new("ls").args(["-A", dir]), what).await;
        let mut names: Vec<&str> = o.stdout.lines().collect();
        names.sort_unstable();
        assert_eq!(names, ["a.conf", "adir", "mine.sh", "passfile", "readonly", "replace.conf"], "{}: {what}: leftovers", self.host);
    }

    async fn read_file_round_trips(&self, dir: &str) {
        let what = "read_file";
        let path = format!("{dir}/binary");
        let bytes: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
        self.write(&path, &bytes, 0o600, None).await;
        assert_eq!(self.read(&path).await, Some(bytes), "{}: {what}: binary round trip", self.host);
        let empty = format!("{dir}/empty");
        self.write(&empty, b"", 0o644, None).await;
        assert_eq!(self.read(&empty).await, Some(Vec::new()), "{}: {what}: empty file", self.host);
        self.ok(&Command::new("rm").args([path.as_str(), empty.as_str()]), what).await;
    }

    async fn missing_file_reads_as_none(&self, dir: &str) {
        let path = format!("{dir}/does-not-exist");
        assert_eq!(self.read(&path).await, None, "{}: read_file of a missing file", self.host);
    }

    async fn exists_helper(&self, dir: &str) {
        let t = self.t;
        let yes = t.exists(&format!("{dir}/a.conf"), None).await;
        let no = t.exists(&format!("{dir}/nope"), None).await;
        assert!(matches!(yes, Ok(true)), "{}: exists(a.conf): {yes:?}", self.host);
        assert!(matches!(no, Ok(false)), "{}: exists(nope): {no:?}", self.host);
    }

    async fn timeout_is_enforced(&self) {
        let limit = Duration::from_secs(1);
        let started = Instant::now();
        let r = self.t.exec(&Command::new("sleep").args(["60"]).timeout(limit)).await;
        let took = started.elapsed();
        assert!(
            matches!(r, Err(TransportError::Timeout { .. })),
            "{}: a command past its time limit must fail with Timeout, got {r:?}",
            self.host
        );
        assert!(took >= limit, "{}: timed out early ({took:?})", self.host);
        assert!(took < TIMEOUT_BOUND, "{}: the timeout took {took:?} to come back", self.host);

        // A command that ignores SIGTERM is still stopped.
        let started = Instant::now();
        let r = self.t.exec(&Command::new("sh").args(["-c", "trap '' TERM; sleep 60"]).timeout(limit)).await;
        let took = started.elapsed();
        assert!(
            matches!(r, Err(TransportError::Timeout { .. })),
            "{}: a command ignoring SIGTERM must still time out, got {r:?}",
            self.host
        );
        assert!(took < TIMEOUT_BOUND, "{}: the timeout took {took:?} to come back", self.host);

        // The transport still works afterwards.
        let o = self.ok(&Command::new("echo").args(["after"]), "after a timeout").await;
        assert_eq!(o.stdout, "after\n", "{}: after a timeout", self.host);
    }

    async fn run_reports_failure(&self) {
        let cmd = Command::new("sh").args(["-c", "echo noise; echo first >&2; echo 'boom: it failed' >&2; exit 7"]);
        match self.t.run(&cmd).await {
            Err(TransportError::CommandFailed { program, status, tail }) => {
                assert_eq!(program, "sh", "{}: CommandFailed.program", self.host);
                assert_eq!(status, 7, "{}: CommandFailed.status", self.host);
                assert!(tail.contains("boom: it failed"), "{}: CommandFailed.tail = {tail:?}", self.host);
                assert!(!tail.contains("noise"), "{}: the tail is stderr's, got {tail:?}", self.host);
            }
            other => panic!("{}: run() of a failing command: expected CommandFailed, got {other:?}", self.host),
        }
        let ok = self.t.run(&Command::new("echo").args(["fine"])).await;
        assert!(matches!(&ok, Ok(o) if o.stdout == "fine\n"), "{}: run() of a good command: {ok:?}", self.host);
    }

    async fn exit_codes(&self, other_user: &str) {
        let what = "exit codes";
        for (cmd, want) in [
            (Command::new("true"), 0),
            (Command::new("false"), 1),
            (Command::new("sh").args(["-c", "exit 2"]), 2),
            (Command::new("sh").args(["-c", "exit 127"]), 127),
            (Command::new("sh").args(["-c", "exit 2"]).user(other_user), 2),
            (Command::new("false").user(other_user), 1),
        ] {
            let o = self.exec(&cmd, what).await;
            assert_eq!(o.status, want, "{}: {what}: {cmd:?} gave {o:?}", self.host);
        }

        // A missing program fails, says which program, and is not worth retrying.
        for user in [None, Some(other_user)] {
            let mut cmd = Command::new(MISSING_PROGRAM).args(["--version"]);
            cmd.user = user.map(str::to_string);
            match self.t.exec(&cmd).await {
                Ok(o) => assert!(
                    o.status == 127 || (o.status != 0 && o.stderr.contains(MISSING_PROGRAM)),
                    "{}: {what}: a missing program (user {user:?}) must exit 127 or name itself in a failure, got {o:?}",
                    self.host
                ),
                Err(e) => assert!(
                    !e.is_retryable() && e.to_string().contains(MISSING_PROGRAM),
                    "{}: {what}: a missing program (user {user:?}) must fail with a non-retryable error naming it, got {e:?}",
                    self.host
                ),
            }
            match self.t.run(&cmd).await {
                Err(e) => assert!(
                    !e.is_retryable() && e.to_string().contains(MISSING_PROGRAM),
                    "{}: {what}: run() of a missing program (user {user:?}): {e:?}",
                    self.host
                ),
                Ok(o) => panic!("{}: {what}: run() of a missing program (user {user:?}) succeeded: {o:?}", self.host),
            }
        }
    }

    async fn interleaved_streams_are_separate(&self) {
        let what = "stdout and stderr at once";
        // Both streams written at the same time by two processes, each well past any pipe
        // or channel buffer: a transport that drains one stream before the other stalls.
        let script = format!("head -c {BIG} /dev/zero | tr '\\0' e >&2 & head -c {BIG} /dev/zero | tr '\\0' o; wait");
        let o = self.ok(&Command::new("sh").args(["-c", script.as_str()]).timeout(Duration::from_secs(60)), what).await;
        assert_eq!(o.stdout.len(), BIG, "{}: {what}: stdout length", self.host);
        assert_eq!(o.stderr.len(), BIG, "{}: {what}: stderr length", self.host);
        assert!(o.stdout.bytes().all(|b| b == b'o'), "{}: {what}: stdout holds stderr bytes", self.host);
        assert!(o.stderr.bytes().all(|b| b == b'e'), "{}: {what}: stderr holds stdout bytes", self.host);

        // Many small writes alternating between the streams: each keeps its own, in order.
        let n = 2000;
        let script = format!("i=0; while [ $i -lt {n} ]; do echo o$i; echo e$i >&2; i=$((i+1)); done");
        let o = self.ok(&Command::new("sh").args(["-c", script.as_str()]), what).await;
        let want = |p: &str| (0..n).map(|i| format!("{p}{i}\n")).collect::<String>();
        assert!(
            o.stdout == want("o"),
            "{}: {what}: stdout is not o0..o{} in order: {:?}…",
            self.host,
            n - 1,
            &o.stdout[..o.stdout.len().min(200)]
        );
        assert!(
            o.stderr == want("e"),
            "{}: {what}: stderr is not e0..e{} in order: {:?}…",
            self.host,
            n - 1,
            &o.stderr[..o.stderr.len().min(200)]
        );
    }

    async fn large_stdin_is_intact(&self, other_user: &str) {
        let what = "large stdin";
        // Not a repeating pattern: reordered or lost chunks change the checksum.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let data: Vec<u8> = (0..BIG + 12_345)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        let want = format!("{} {}", posix_cksum(&data), data.len());
        for user in [None, Some(other_user)] {
            let mut cmd = Command::new("cksum").stdin(data.clone()).timeout(Duration::from_secs(60));
            cmd.user = user.map(str::to_string);
            let o = self.ok(&cmd, what).await;
            assert_eq!(o.stdout.trim(), want, "{}: {what} (user {user:?}): cksum of {} bytes", self.host, data.len());
        }
    }

    async fn commands_take_effect_in_order(&self, dir: &str, other_user: &str) {
        let what = "commands in order";
        // One file appended to by commands run one after the other, switching users.
        let log = format!("{dir}/order.log");
        self.write(&log, b"", 0o666, None).await;
        let n = 24;
        for i in 0..n {
            let mut cmd = Command::new("sh").args(["-c", "echo \"$2\" >> \"$1\"", "sh", log.as_str(), &i.to_string()]);
            if i % 3 == 2 {
                cmd.user = Some(other_user.to_string());
            }
            self.ok(&cmd, what).await;
        }
        let want: String = (0..n).map(|i| format!("{i}\n")).collect();
        let got = self.read(&log).await.map(|b| String::from_utf8_lossy(&b).into_owned());
        assert_eq!(got.as_deref(), Some(want.as_str()), "{}: {what}: the appends are out of order or missing", self.host);

        // What a command did is there when exec returns, and what write_file wrote is there
        // for the next command.
        let f = format!("{dir}/handoff");
        self.write(&f, b"from write_file", 0o644, None).await;
        let o = self.ok(&Command::new("cat").args([f.as_str()]), what).await;
        assert_eq!(o.stdout, "from write_file", "{}: {what}: a command right after write_file", self.host);
        self.ok(&Command::new("sh").args(["-c", "printf 'from a command' > \"$1\"", "sh", f.as_str()]), what).await;
        assert_eq!(self.read(&f).await.as_deref(), Some(&b"from a command"[..]), "{}: {what}: read_file right after a command", self.host);
    }

    async fn concurrent_commands_keep_their_outputs(&self) {
        let what = "concurrent commands";
        let runs = (0..8).map(|i| {
            let script = format!("sleep 0.{}; echo out-{i}; echo err-{i} >&2; exit {}", i % 3, 10 + i);
            async move { (i, self.exec(&Command::new("sh").args(["-c", script.as_str()]), what).await) }
        });
        for (i, o) in futures_util::future::join_all(runs).await {
            assert_eq!(
                (o.status, o.stdout.as_str(), o.stderr.as_str()),
                (10 + i, format!("out-{i}\n").as_str(), format!("err-{i}\n").as_str()),
                "{}: {what}: command {i} got another's output",
                self.host
            );
        }
    }

    /// Waits until none of `pids` runs (gone, or a zombie nobody reaped), within [`KILL_BOUND`].
    async fn assert_gone(&self, pids: &[String], what: &str) {
        let script = "for p; do s=$(sed -n 's/^State:[[:space:]]*//p' /proc/$p/status 2>/dev/null); \
                      case \"$s\" in ''|Z*) ;; *) echo \"$p $s\";; esac; done";
        let started = Instant::now();
        loop {
            let o = self.ok(&Command::new("sh").args(["-c", script, "sh"]).args(pids.iter().cloned()), what).await;
            if o.stdout.trim().is_empty() {
                return;
            }
            assert!(
                started.elapsed() < KILL_BOUND,
                "{}: {what}: still running {KILL_BOUND:?} after the time limit: {}",
                self.host,
                o.stdout.trim()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn timeout_kills_the_command(&self, dir: &str) {
        let limit = Duration::from_secs(1);
        // The shell and a child of it write their pids, then wait; with and without SIGTERM ignored.
        for (n, trap) in [(0, ""), (1, "trap '' TERM; ")] {
            let what = if trap.is_empty() { "a timed-out command is killed" } else { "a timed-out command ignoring SIGTERM is killed" };
            let pidfile = format!("{dir}/timeout-{n}.pids");
            let script = format!("{trap}echo $$ > \"$1\"; sleep 60 & echo $! >> \"$1\"; wait");
            let r = self.t.exec(&Command::new("sh").args(["-c", script.as_str(), "sh", pidfile.as_str()]).timeout(limit)).await;
            match &r {
                Err(TransportError::Timeout { program, after }) => {
                    assert_eq!((program.as_str(), *after), ("sh", limit), "{}: {what}: the Timeout names the program and limit", self.host);
                }
                other => panic!("{}: {what}: expected Timeout, got {other:?}", self.host),
            }
            let pids = self.read(&pidfile).await.map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
            let pids: Vec<String> = pids.split_whitespace().map(str::to_string).collect();
            assert_eq!(pids.len(), 2, "{}: {what}: the command did not start: pids {pids:?}", self.host);
            self.assert_gone(&pids, what).await;
        }
    }

    async fn dropped_connection_is_retryable(&self, dir: &str) {
        let what = "a dropped connection (FlakyTransport)";
        let ran = format!("{dir}/ran-before-the-drop");
        let never = format!("{dir}/never-ran");
        let written = format!("{dir}/written-before-the-drop");
        let flaky = FlakyTransport::new(Borrowed(self.t))
            .with(When::command(Match::program("sh").arg_containing(ran.as_str())).once(), Fault::drop_after_run())
            .with(When::command(Match::program("sh").arg_containing(never.as_str())).once(), Fault::drop_before())
            .with(
                When::write("the file written before the drop", {
                    let w = written.clone();
                    move |p| p == w
                })
                .once(),
                Fault::drop_after_run(),
            );
        assert_eq!(flaky.host(), self.host, "{what}: the decorator keeps the host's name");
        let touch = |p: &str| Command::new("sh").args(["-c", "echo ran > \"$1\"", "sh", p]);

        // The link drops while the command runs: a retryable error, and the command ran.
        match flaky.exec(&touch(&ran)).await {
            Err(e) if e.is_retryable() => {}
            other => panic!("{}: {what}: a drop mid-command must be a retryable error, got {other:?}", self.host),
        }
        assert_eq!(self.read(&ran).await.as_deref(), Some(&b"ran\n"[..]), "{}: {what}: the command ran before the drop", self.host);

        // The link drops before the command reaches the host: retryable, nothing ran; the
        // retry of the same step goes through.
        match flaky.run(&touch(&never)).await {
            Err(e) if e.is_retryable() => {}
            other => panic!("{}: {what}: run() through a dropped link must fail retryably, got {other:?}", self.host),
        }
        assert_eq!(self.read(&never).await, None, "{}: {what}: the command ran although its link dropped before it", self.host);
        let o = flaky.run(&touch(&never)).await;
        assert!(o.is_ok(), "{}: {what}: the retry after a drop: {o:?}", self.host);
        assert_eq!(self.read(&never).await.as_deref(), Some(&b"ran\n"[..]), "{}: {what}: the retry ran", self.host);

        // A write whose acknowledgement is lost: retryable, and the file is complete.
        let e = flaky.write_file(&written, b"all of it", 0o600, None).await.expect_err("the injected drop");
        assert!(e.is_retryable(), "{}: {what}: write_file: {e:?}", self.host);
        assert_eq!(self.read(&written).await.as_deref(), Some(&b"all of it"[..]), "{}: {what}: write_file before the drop", self.host);

        let injected = flaky.injected();
        assert_eq!(injected.len(), 3, "{}: {what}: {injected:#?}", self.host);
        assert_eq!(
            injected.iter().map(|i| i.reached_inner).collect::<Vec<_>>(),
            [true, false, true],
            "{}: {what}: {injected:#?}",
            self.host
        );
        assert_eq!(injected[0].inner_result.as_deref(), Some("exit 0"), "{}: {what}: {injected:#?}", self.host);
        // And the transport itself is unharmed.
        let o = self.ok(&Command::new("echo").args(["after"]), what).await;
        assert_eq!(o.stdout, "after\n", "{}: {what}", self.host);
    }
}

/// A connection cut for real in the middle of a command, for transports that hold one
/// (run it on a real host; the suite above covers the same through [`FlakyTransport`]).
///
/// Starts a command that records that it ran in `scratch_dir` and then waits; once it
/// runs, calls `cut`, which must end the transport's connection to the host (for example:
/// kill the server's processes of that connection). The command must come back within
/// 20 s with a retryable error, must have run exactly once and be stopped within 15 s (not
/// run on unseen), and the next command must go through (the transport reconnects). `t` must serve a second command while the first
/// runs (it checks that the first one started through `t`).
pub async fn dropped_connection_mid_command<F, Fut>(t: &dyn Transport, scratch_dir: &str, cut: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let host = t.host().to_string();
    let what = "a connection cut mid-command";
    let marker = format!(
        "{}/pgrepl-suite-cut-{}-{}",
        scratch_dir.trim_end_matches('/'),
        std::process::id(),
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
    );
    let long = Command::new("sh")
        .args(["-c", "echo $$ > \"$1.pid\"; echo run >> \"$1\"; sleep 60", "sh", marker.as_str()])
        .timeout(Duration::from_secs(90));
    let running = t.exec(&long);
    let cut_when_started = async {
        let started = Instant::now();
        // Bounded: 10 s for the command to start.
        while !t.exists(&marker, None).await.unwrap_or(false) {
            assert!(started.elapsed() < Duration::from_secs(10), "{host}: {what}: the command did not start within 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cut().await;
        Instant::now()
    };
    let (r, cut_at) = tokio::join!(async { tokio::time::timeout(Duration::from_secs(40), running).await }, cut_when_started);
    let r = r.unwrap_or_else(|_| panic!("{host}: {what}: the command did not come back within 40 s of the cut"));
    assert!(cut_at.elapsed() < Duration::from_secs(20), "{host}: {what}: the failure took {:?} after the cut", cut_at.elapsed());
    match &r {
        Err(e) if e.is_retryable() => {}
        other => panic!("{host}: {what}: expected a retryable error, got {other:?}"),
    }
    // The next command reconnects, and the first one ran exactly once.
    let o = t.exec(&Command::new("cat").args([marker.as_str()])).await;
    let o = o.unwrap_or_else(|e| panic!("{host}: {what}: the command after the cut failed: {e}"));
    assert_eq!((o.status, o.stdout.as_str()), (0, "run\n"), "{host}: {what}: the cut command ran exactly once: {o:?}");
    // And it does not run on unseen: it is stopped within KILL_BOUND.
    let pid = t.exec(&Command::new("cat").args([format!("{marker}.pid")])).await.map(|o| o.stdout.trim().to_string()).unwrap_or_default();
    assert!(!pid.is_empty(), "{host}: {what}: the command wrote no pid");
    let s = Suite { t, host: &host };
    s.assert_gone(&[pid], what).await;
    let _ = t.remove_file(&marker).await;
    let _ = t.remove_file(&format!("{marker}.pid")).await;
}

/// The CRC that POSIX `cksum` prints (polynomial 0x04C11DB7, the length appended).
fn posix_cksum(data: &[u8]) -> u32 {
    fn step(crc: u32, b: u8) -> u32 {
        let mut c = crc ^ (u32::from(b) << 24);
        for _ in 0..8 {
            c = if c & 0x8000_0000 != 0 { (c << 1) ^ 0x04C1_1DB7 } else { c << 1 };
        }
        c
    }
    let mut crc = data.iter().fold(0, |c, &b| step(c, b));
    let mut len = data.len() as u64;
    while len > 0 {
        crc = step(crc, (len & 0xff) as u8);
        len >>= 8;
    }
    !crc
}

/// A borrowed transport as a transport (to wrap it in a [`FlakyTransport`]).
#[derive(Debug)]
struct Borrowed<'a>(&'a dyn Transport);

#[async_trait]
impl Transport for Borrowed<'_> {
    fn host(&self) -> &str {
        self.0.host()
    }

    fn admin_user(&self) -> Option<&str> {
        self.0.admin_user()
    }

    async fn exec(&self, cmd: &Command) -> Result<Output, TransportError> {
        self.0.exec(cmd).await
    }

    async fn write_file(&self, path: &str, contents: &[u8], mode: u32, owner: Option<&str>) -> Result<(), TransportError> {
        self.0.write_file(path, contents, mode, owner).await
    }

    async fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>, TransportError> {
        self.0.read_file(path).await
    }
}

/// Takes the exclusive lock file `name` in `dir` (created if missing), held while the
/// returned file lives: serialises tests of several test binaries that share one lab (the
/// network-namespace SSH hosts).
pub fn lab_lock(dir: &std::path::Path, name: &str) -> std::fs::File {
    let _ = std::fs::create_dir_all(dir);
    let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(name)).expect("the lab lock file opens");
    lock.lock().expect("the lab lock is taken");
    lock
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cksum_matches_posix() {
        // `printf 123456789 | cksum` and `printf '' | cksum`.
        assert_eq!(posix_cksum(b"123456789"), 930_766_865);
        assert_eq!(posix_cksum(b""), 4_294_967_295);
    }

    #[test]
    fn errors_are_cloned_with_their_kind() {
        let e = clone_error(&TransportError::Io(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "gone")));
        assert!(matches!(&e, TransportError::Io(io) if io.kind() == std::io::ErrorKind::ConnectionReset && io.to_string() == "gone"));
        assert!(e.is_retryable());
        let e = clone_error(&TransportError::CommandFailed { program: "p".into(), status: 3, tail: "t".into() });
        assert_eq!(e.to_string(), "`p` exited with status 3: t");
    }
}
