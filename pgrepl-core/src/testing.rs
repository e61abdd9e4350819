//! Test helpers for transports and providers (feature `testing`).
//!
//! [`transport_suite`] is the conformance suite every [`Transport`] backend runs against a
//! real host (in the spirit of object_store's `integration.rs`): a new backend gets the
//! whole contract checked for free.
//!
//! ```no_run
//! # async fn demo(t: &dyn pgrepl_core::transport::Transport) {
//! pgrepl_core::testing::transport_suite(t, "postgres", "/tmp").await;
//! # }
//! ```

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::transport::{Command, Output, Transport, TransportError, TransportExt};

/// Bytes sent through stdin and read back on stdout and stderr, larger than an SSH
/// channel window (2 MiB) so that flow control and stream separation are exercised.
const BIG: usize = 3 * 1024 * 1024;

/// How long a command that exceeds a 1 s limit may take to come back as a timeout.
const TIMEOUT_BOUND: Duration = Duration::from_secs(20);

/// Runs the transport conformance suite against `t`; panics (with the host's name) on
/// the first broken promise.
///
/// - `other_user`: an OS user on the host other than the transport's own (for example
///   `postgres`); commands and file ownership are checked against it.
/// - `scratch_dir`: an existing directory on the host, writable with root privileges and
///   traversable by `other_user`, at least one level below `/` (`/tmp` will do). The suite works in a fresh
///   subdirectory and removes it at the end.
///
/// It checks: exit statuses and stdout/stderr separation (also beyond the channel
/// window); stdin delivery; environment variables (also when switching user); running as
/// `other_user`; `write_file` with exact modes and owners, atomic replacement and no
/// leftovers; `read_file` of binary and missing files; time limits; and that
/// [`TransportExt::run`] turns a failure into [`TransportError::CommandFailed`] with the
/// stderr tail.
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
    s.large_streams_are_separate().await;
    s.stdin_is_delivered().await;
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
        let o = self.ok(&Command::new("wc").args(["-c"]).stdin(big), what).await;
        assert_eq!(o.stdout.trim(), BIG.to_string(), "{}: {what}: {BIG} bytes", self.host);

        // No stdin: the command sees EOF at once instead of waiting.
        let o = self.ok(&Command::new("cat").timeout(Duration::from_secs(20)), what).await;
        assert_eq!(o.stdout, "", "{}: {what}: empty stdin", self.host);

        // A command that does not read its stdin still finishes.
        let o = self.ok(&Command::new("true").stdin(vec![b'x'; BIG]), what).await;
        assert!(o.stdout.is_empty(), "{}: {what}: unread stdin", self.host);
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
}
