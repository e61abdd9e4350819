//! [`ScriptedTransport`]: a [`Transport`] that answers from a script, for unit tests of
//! pure logic (what pgrepl decides to run, in which order, with which files).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use async_trait::async_trait;

use super::clone_error;
use crate::transport::{Command, Output, Transport, TransportError};

type Predicate = Arc<dyn Fn(&Command) -> bool + Send + Sync>;
type Answer = Arc<dyn Fn(&Command) -> Result<Output, TransportError> + Send + Sync>;

/// Which commands a rule answers (or a [`FlakyTransport`](super::FlakyTransport) fault
/// hits): a program, optionally its arguments (exactly, or a prefix), the user, or any
/// predicate.
///
/// A program pattern without `/` matches the command's program by its file name, so
/// `Match::program("pg_ctl")` matches `/usr/lib/postgresql/16/bin/pg_ctl`; with a `/` it
/// must be equal.
///
/// ```
/// use pgrepl_core::testing::Match;
/// use pgrepl_core::transport::Command;
///
/// let start = Command::new("/usr/lib/postgresql/16/bin/pg_ctl").args(["-D", "/data", "start"]).user("postgres");
/// assert!(Match::program("pg_ctl").matches(&start));
/// assert!(Match::prefix("pg_ctl", ["-D"]).user("postgres").matches(&start));
/// assert!(Match::exact("pg_ctl", ["-D", "/data", "start"]).matches(&start));
/// assert!(!Match::exact("pg_ctl", ["-D", "/data"]).matches(&start));
/// assert!(Match::when("starts a server", |c| c.args.last().map(String::as_str) == Some("start")).matches(&start));
/// assert!(!Match::program("psql").matches(&start));
/// ```
#[derive(Clone)]
pub struct Match {
    program: Option<String>,
    args: ArgsMatch,
    user: Option<Option<String>>,
    arg_contains: Vec<String>,
    predicate: Option<Predicate>,
    description: String,
}

#[derive(Clone, Debug)]
enum ArgsMatch {
    Any,
    Exact(Vec<String>),
    Prefix(Vec<String>),
}

fn strings<I, S>(args: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    args.into_iter().map(Into::into).collect()
}

impl Match {
    /// Every command.
    pub fn any() -> Match {
        Match {
            program: None,
            args: ArgsMatch::Any,
            user: None,
            arg_contains: Vec::new(),
            predicate: None,
            description: "any command".into(),
        }
    }

    /// `program` with any arguments.
    pub fn program(program: impl Into<String>) -> Match {
        let program = program.into();
        Match { description: program.clone(), program: Some(program), ..Match::any() }
    }

    /// `program` with exactly these arguments.
    pub fn exact<I, S>(program: impl Into<String>, args: I) -> Match
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let args = strings(args);
        let program = program.into();
        Match { description: line(&program, &args), program: Some(program), args: ArgsMatch::Exact(args), ..Match::any() }
    }

    /// `program` whose arguments start with these.
    pub fn prefix<I, S>(program: impl Into<String>, args: I) -> Match
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let args = strings(args);
        let program = program.into();
        Match {
            description: format!("{} …", line(&program, &args)), program: Some(program), args: ArgsMatch::Prefix(args), ..Match::any()
        }
    }

    /// Commands for which `predicate` holds; `description` names it in messages.
    pub fn when(description: impl Into<String>, predicate: impl Fn(&Command) -> bool + Send + Sync + 'static) -> Match {
        Match { predicate: Some(Arc::new(predicate)), description: description.into(), ..Match::any() }
    }

    /// Also: run as `user` (`Command::user == Some(user)`).
    pub fn user(mut self, user: impl Into<String>) -> Match {
        let user = user.into();
        self.description = format!("{} as {user}", self.description);
        self.user = Some(Some(user));
        self
    }

    /// Also: run as the transport's own user (`Command::user == None`).
    pub fn own_user(mut self) -> Match {
        self.description = format!("{} as the transport's user", self.description);
        self.user = Some(None);
        self
    }

    /// Also: some argument contains `needle` (for `sh -c` scripts, SQL given with `-c`).
    pub fn arg_containing(mut self, needle: impl Into<String>) -> Match {
        let needle = needle.into();
        self.description = format!("{} with an argument containing {needle:?}", self.description);
        self.arg_contains.push(needle);
        self
    }

    /// Also: `predicate` holds.
    pub fn and(mut self, description: impl Into<String>, predicate: impl Fn(&Command) -> bool + Send + Sync + 'static) -> Match {
        let before = self.predicate.take();
        self.description = format!("{} and {}", self.description, description.into());
        self.predicate = Some(Arc::new(move |c| before.as_ref().is_none_or(|p| p(c)) && predicate(c)));
        self
    }

    /// Whether `cmd` is one of the commands this matches.
    pub fn matches(&self, cmd: &Command) -> bool {
        if let Some(p) = &self.program {
            let same = if p.contains('/') { cmd.program == *p } else { cmd.program.rsplit('/').next() == Some(p.as_str()) };
            if !same {
                return false;
            }
        }
        let args_ok = match &self.args {
            ArgsMatch::Any => true,
            ArgsMatch::Exact(a) => cmd.args == *a,
            ArgsMatch::Prefix(a) => cmd.args.starts_with(a),
        };
        if !args_ok {
            return false;
        }
        if let Some(u) = &self.user {
            if cmd.user != *u {
                return false;
            }
        }
        if !self.arg_contains.iter().all(|n| cmd.args.iter().any(|a| a.contains(n.as_str()))) {
            return false;
        }
        self.predicate.as_ref().is_none_or(|p| p(cmd))
    }

    /// What it matches, in words.
    pub fn description(&self) -> &str {
        &self.description
    }
}

impl fmt::Debug for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Match({})", self.description)
    }
}

/// A command as one line (program and arguments; arguments with spaces or quotes quoted),
/// as [`ScriptedTransport::command_lines`] and error messages show it.
pub fn command_line(cmd: &Command) -> String {
    line(&cmd.program, &cmd.args)
}

fn line(program: &str, args: &[String]) -> String {
    let mut s = program.to_string();
    for a in args {
        s.push(' ');
        if a.is_empty() || a.chars().any(|c| c.is_whitespace() || "'\"\\$`;&|<>*?()".contains(c)) {
            s.push_str(&format!("{a:?}"));
        } else {
            s.push_str(a);
        }
    }
    s
}

/// What a rule answers: an [`Output`], a [`TransportError`], or whatever a closure returns.
///
/// Errors are cloned for each answer (an I/O error keeps its kind and message).
#[derive(Clone)]
pub struct Reply(ReplyKind);

#[derive(Clone)]
enum ReplyKind {
    Output(Output),
    Error(Arc<TransportError>),
    Timeout,
    With(Answer),
}

impl Reply {
    /// Exit status 0 with this stdout.
    pub fn ok(stdout: impl Into<String>) -> Reply {
        Reply(ReplyKind::Output(Output { status: 0, stdout: stdout.into(), stderr: String::new() }))
    }

    /// Exit status `status` with this stdout and stderr.
    pub fn exit(status: i32, stdout: impl Into<String>, stderr: impl Into<String>) -> Reply {
        Reply(ReplyKind::Output(Output { status, stdout: stdout.into(), stderr: stderr.into() }))
    }

    /// This output.
    pub fn output(output: Output) -> Reply {
        Reply(ReplyKind::Output(output))
    }

    /// This error (a fresh copy each time).
    pub fn error(error: TransportError) -> Reply {
        Reply(ReplyKind::Error(Arc::new(error)))
    }

    /// [`TransportError::Timeout`] naming the command's program and time limit.
    pub fn timeout() -> Reply {
        Reply(ReplyKind::Timeout)
    }

    /// A dropped connection: a retryable [`TransportError::Io`] (`ConnectionReset`).
    pub fn connection_reset() -> Reply {
        Reply::error(TransportError::Io(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection reset (scripted)")))
    }

    /// Whatever `answer` returns for the command (called outside the transport's lock, so
    /// it may use a clone of the transport, for example to create files).
    pub fn with(answer: impl Fn(&Command) -> Result<Output, TransportError> + Send + Sync + 'static) -> Reply {
        Reply(ReplyKind::With(Arc::new(answer)))
    }

    fn answer(&self, cmd: &Command) -> Result<Output, TransportError> {
        match &self.0 {
            ReplyKind::Output(o) => Ok(o.clone()),
            ReplyKind::Error(e) => Err(clone_error(e)),
            ReplyKind::Timeout => Err(TransportError::Timeout { program: cmd.program.clone(), after: cmd.timeout }),
            ReplyKind::With(f) => f(cmd),
        }
    }
}

impl From<Output> for Reply {
    fn from(o: Output) -> Reply {
        Reply::output(o)
    }
}

impl From<TransportError> for Reply {
    fn from(e: TransportError) -> Reply {
        Reply::error(e)
    }
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            ReplyKind::Output(o) => write!(f, "Reply(exit {}, {} bytes out, {} bytes err)", o.status, o.stdout.len(), o.stderr.len()),
            ReplyKind::Error(e) => write!(f, "Reply(error: {e})"),
            ReplyKind::Timeout => write!(f, "Reply(timeout)"),
            ReplyKind::With(_) => write!(f, "Reply(closure)"),
        }
    }
}

/// A file of the in-memory file system of a [`ScriptedTransport`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Contents.
    pub contents: Vec<u8>,
    /// Mode given to `write_file` (or [`ScriptedTransport::put_file`]).
    pub mode: u32,
    /// Owner given to `write_file` (`None`: the transport's user).
    pub owner: Option<String>,
}

/// One call made through a [`ScriptedTransport`], in the order made.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Call {
    /// [`Transport::exec`].
    Exec {
        /// The command as given (stdin included; redacted in `Debug`).
        command: Command,
        /// The index of the rule that answered (in the order added); `None`: no rule did.
        rule: Option<usize>,
    },
    /// [`Transport::write_file`].
    Write {
        /// Path.
        path: String,
        /// Contents.
        contents: Vec<u8>,
        /// Mode.
        mode: u32,
        /// Owner.
        owner: Option<String>,
    },
    /// [`Transport::read_file`].
    Read {
        /// Path.
        path: String,
        /// Whether the file existed.
        found: bool,
    },
}

impl Call {
    /// `exec LINE` (with `[user]` when the command switches user), `write PATH`, `read PATH`:
    /// the words [`ScriptedTransport::assert_order`] looks for.
    pub fn summary(&self) -> String {
        match self {
            Call::Exec { command, .. } => match &command.user {
                Some(u) => format!("exec [{u}] {}", command_line(command)),
                None => format!("exec {}", command_line(command)),
            },
            Call::Write { path, .. } => format!("write {path}"),
            Call::Read { path, .. } => format!("read {path}"),
        }
    }

    /// The command of an `Exec` call.
    pub fn command(&self) -> Option<&Command> {
        match self {
            Call::Exec { command, .. } => Some(command),
            _ => None,
        }
    }
}

struct Rule {
    matcher: Match,
    reply: Reply,
    /// `None`: always.
    limit: Option<usize>,
    used: usize,
}

impl Rule {
    fn describe(&self) -> String {
        let times = match self.limit {
            None => "always".to_string(),
            Some(1) => "once".to_string(),
            Some(n) => format!("{n} times"),
        };
        format!("{} ({times}, used {})", self.matcher.description, self.used)
    }
}

#[derive(Default)]
struct State {
    rules: Vec<Rule>,
    files: BTreeMap<String, FileEntry>,
    calls: Vec<Call>,
}

struct Shared {
    host: String,
    admin_user: OnceLock<String>,
    panic_on_unmatched: AtomicBool,
    state: Mutex<State>,
}

/// A [`Transport`] that answers commands from a script of rules, keeps files in memory and
/// records every call, for unit tests of the logic that drives a transport.
///
/// - Rules are tried in the order they were added; the first that matches and is not used
///   up answers. A rule answers [`always`](RuleBuilder::always) (the default),
///   [`once`](RuleBuilder::once) or a number of [`times`](RuleBuilder::times).
/// - A command no rule answers fails with [`TransportError::Other`] naming the command and
///   listing the rules (or panics, with [`panic_on_unmatched`](Self::panic_on_unmatched)).
/// - `write_file` and `read_file` use an in-memory file system that records modes and
///   owners ([`file`](Self::file), [`put_file`](Self::put_file)).
/// - Every call is recorded ([`calls`](Self::calls), [`command_lines`](Self::command_lines),
///   [`assert_order`](Self::assert_order)).
///
/// Clones share the script, files and record: keep one to inspect and hand another (for
/// example in an `Arc<dyn Transport>`) to the code under test.
///
/// ```
/// use pgrepl_core::testing::{Match, Reply, ScriptedTransport};
/// use pgrepl_core::transport::{Command, Transport, TransportError, TransportExt};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let t = ScriptedTransport::new("db1");
/// t.on(Match::exact("pg_ctl", ["-D", "/data", "status"])).once().reply(Reply::exit(3, "", "no server running"))
///     .on(Match::exact("pg_ctl", ["-D", "/data", "status"])).reply(Reply::ok("server is running"))
///     .on(Match::program("psql").user("postgres")).reply(Reply::connection_reset());
///
/// assert_eq!(t.exec(&Command::new("pg_ctl").args(["-D", "/data", "status"])).await.unwrap().status, 3);
/// assert!(t.run(&Command::new("pg_ctl").args(["-D", "/data", "status"])).await.is_ok());
/// let e = t.exec(&Command::new("psql").user("postgres")).await.unwrap_err();
/// assert!(e.is_retryable());
/// // Nothing answers this one: the error names it.
/// let e = t.exec(&Command::new("rm").args(["-rf", "/data"])).await.unwrap_err();
/// assert!(matches!(&e, TransportError::Other(m) if m.contains("rm -rf /data")), "{e}");
///
/// t.write_file("/data/pgrepl.conf", b"port = 5432\n", 0o600, Some("postgres")).await.unwrap();
/// let f = t.file("/data/pgrepl.conf").unwrap();
/// assert_eq!((f.mode, f.owner.as_deref()), (0o600, Some("postgres")));
/// assert_eq!(t.read_file("/data/missing").await.unwrap(), None);
///
/// t.assert_order(&["pg_ctl -D /data status", "exec [postgres] psql", "rm -rf", "write /data/pgrepl.conf", "read /data/missing"]);
/// assert_eq!(t.unmatched().len(), 1);
/// t.assert_rules_used();
/// # });
/// ```
#[derive(Clone)]
pub struct ScriptedTransport {
    shared: Arc<Shared>,
}

impl ScriptedTransport {
    /// An empty script for a host named `host`: every command fails until rules are added.
    pub fn new(host: impl Into<String>) -> ScriptedTransport {
        ScriptedTransport {
            shared: Arc::new(Shared {
                host: host.into(),
                admin_user: OnceLock::new(),
                panic_on_unmatched: AtomicBool::new(false),
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// What [`Transport::admin_user`] answers (as a transport logged in as an unprivileged
    /// user with sudo would: `root`). Set once; clones share it.
    ///
    /// # Panics
    /// When an admin user was set already.
    pub fn with_admin_user(self, user: impl Into<String>) -> ScriptedTransport {
        let user = user.into();
        if let Err(u) = self.shared.admin_user.set(user) {
            panic!("scripted transport {}: admin user set twice (now {u:?})", self.shared.host);
        }
        self
    }

    /// A command no rule answers panics (naming it) instead of failing with
    /// [`TransportError::Other`]. Clones share the setting.
    pub fn panic_on_unmatched(self) -> ScriptedTransport {
        self.shared.panic_on_unmatched.store(true, Ordering::Relaxed);
        self
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock must not hide the first failure.
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a rule for the commands `m` matches; finish it with [`RuleBuilder::reply`].
    pub fn on(&self, m: Match) -> RuleBuilder<'_> {
        RuleBuilder { t: self, matcher: m, limit: None }
    }

    /// Puts a file into the in-memory file system (as if it existed on the host).
    pub fn put_file(&self, path: impl Into<String>, contents: impl Into<Vec<u8>>, mode: u32, owner: Option<&str>) -> &Self {
        self.state().files.insert(path.into(), FileEntry { contents: contents.into(), mode, owner: owner.map(str::to_string) });
        self
    }

    /// Removes a file from the in-memory file system; whether it was there.
    pub fn remove_file_entry(&self, path: &str) -> bool {
        self.state().files.remove(path).is_some()
    }

    /// A file of the in-memory file system.
    pub fn file(&self, path: &str) -> Option<FileEntry> {
        self.state().files.get(path).cloned()
    }

    /// A file's contents as text (lossy UTF-8).
    pub fn file_text(&self, path: &str) -> Option<String> {
        self.file(path).map(|f| String::from_utf8_lossy(&f.contents).into_owned())
    }

    /// Every file of the in-memory file system, by path.
    pub fn files(&self) -> BTreeMap<String, FileEntry> {
        self.state().files.clone()
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.state().calls.clone()
    }

    /// Forgets the calls made so far (rules, their use counts and files stay).
    pub fn clear_calls(&self) {
        self.state().calls.clear();
    }

    /// The commands run so far, in order.
    pub fn commands(&self) -> Vec<Command> {
        self.state().calls.iter().filter_map(|c| c.command().cloned()).collect()
    }

    /// The commands run so far as lines (`program arg …`), in order.
    pub fn command_lines(&self) -> Vec<String> {
        self.state().calls.iter().filter_map(Call::command).map(command_line).collect()
    }

    /// The commands no rule answered.
    pub fn unmatched(&self) -> Vec<Command> {
        self.state()
            .calls
            .iter()
            .filter_map(|c| match c {
                Call::Exec { command, rule: None } => Some(command.clone()),
                _ => None,
            })
            .collect()
    }

    /// Rules not used up: `once`/`times` rules with answers left, and `always` rules never used.
    pub fn unused_rules(&self) -> Vec<String> {
        self.state().rules.iter().filter(|r| r.limit.map_or(r.used == 0, |n| r.used < n)).map(Rule::describe).collect()
    }

    /// Panics unless every rule was used up and every command was answered.
    #[track_caller]
    pub fn assert_rules_used(&self) {
        let unused = self.unused_rules();
        assert!(unused.is_empty(), "{}: rules not used up:\n  {}", self.shared.host, unused.join("\n  "));
    }

    /// Panics unless every needle is found, in this order, in the calls' summaries
    /// ([`Call::summary`]: `exec [user] program args`, `write PATH`, `read PATH`); a needle
    /// matches a call whose summary contains it, other calls may come in between.
    #[track_caller]
    pub fn assert_order(&self, needles: &[&str]) {
        let summaries: Vec<String> = self.calls().iter().map(Call::summary).collect();
        let mut from = 0;
        for (k, needle) in needles.iter().enumerate() {
            match summaries[from..].iter().position(|s| s.contains(needle)) {
                Some(i) => from += i + 1,
                None => {
                    let found_earlier = summaries[..from].iter().any(|s| s.contains(needle));
                    panic!(
                        "{}: call {needle:?} (needle {k}) {} after the call matching {:?}; calls:\n  {}",
                        self.shared.host,
                        if found_earlier { "was made, but not" } else { "was never made, not even" },
                        if k == 0 { "<start>" } else { needles[k - 1] },
                        summaries.join("\n  ")
                    );
                }
            }
        }
    }
}

impl fmt::Debug for ScriptedTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.state();
        f.debug_struct("ScriptedTransport")
            .field("host", &self.shared.host)
            .field("rules", &s.rules.iter().map(Rule::describe).collect::<Vec<_>>())
            .field("files", &s.files.keys().collect::<Vec<_>>())
            .field("calls", &s.calls.len())
            .finish()
    }
}

/// A rule being added to a [`ScriptedTransport`] (see [`ScriptedTransport::on`]).
#[must_use = "a rule is only added by `reply`"]
pub struct RuleBuilder<'a> {
    t: &'a ScriptedTransport,
    matcher: Match,
    limit: Option<usize>,
}

impl fmt::Debug for RuleBuilder<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuleBuilder").field("matcher", &self.matcher).field("limit", &self.limit).finish()
    }
}

impl<'a> RuleBuilder<'a> {
    /// Answers the first matching command only.
    pub fn once(self) -> Self {
        self.times(1)
    }

    /// Answers the first `n` matching commands.
    pub fn times(mut self, n: usize) -> Self {
        self.limit = Some(n);
        self
    }

    /// Answers every matching command (the default).
    pub fn always(mut self) -> Self {
        self.limit = None;
        self
    }

    /// Adds the rule; returns the transport, to chain the next rule.
    pub fn reply(self, reply: impl Into<Reply>) -> &'a ScriptedTransport {
        self.t.state().rules.push(Rule { matcher: self.matcher, reply: reply.into(), limit: self.limit, used: 0 });
        self.t
    }
}

#[async_trait]
impl Transport for ScriptedTransport {
    fn host(&self) -> &str {
        &self.shared.host
    }

    fn admin_user(&self) -> Option<&str> {
        self.shared.admin_user.get().map(String::as_str)
    }

    async fn exec(&self, cmd: &Command) -> Result<Output, TransportError> {
        let (reply, rules) = {
            let mut s = self.state();
            let found = s.rules.iter().position(|r| r.limit.is_none_or(|n| r.used < n) && r.matcher.matches(cmd));
            s.calls.push(Call::Exec { command: cmd.clone(), rule: found });
            match found {
                Some(i) => {
                    s.rules[i].used += 1;
                    (Some(s.rules[i].reply.clone()), Vec::new())
                }
                None => (None, s.rules.iter().map(Rule::describe).collect::<Vec<_>>()),
            }
        };
        match reply {
            Some(r) => r.answer(cmd),
            None => {
                let user = cmd.user.as_deref().map(|u| format!(" as {u}")).unwrap_or_default();
                let msg = format!(
                    "scripted transport {}: no rule answers `{}`{user}; rules:{}",
                    self.shared.host,
                    command_line(cmd),
                    if rules.is_empty() { " none".to_string() } else { format!("\n  {}", rules.join("\n  ")) }
                );
                if self.shared.panic_on_unmatched.load(Ordering::Relaxed) {
                    panic!("{msg}");
                }
                Err(TransportError::Other(msg))
            }
        }
    }

    async fn write_file(&self, path: &str, contents: &[u8], mode: u32, owner: Option<&str>) -> Result<(), TransportError> {
        let mut s = self.state();
        s.calls.push(Call::Write { path: path.to_string(), contents: contents.to_vec(), mode, owner: owner.map(str::to_string) });
        if !path.starts_with('/') || path.ends_with('/') {
            return Err(TransportError::Other(format!(
                "scripted transport {}: cannot write \"{path}\": not an absolute file path",
                self.shared.host
            )));
        }
        if mode > 0o7777 {
            return Err(TransportError::Other(format!(
                "scripted transport {}: cannot write {path}: mode {mode:o} is not a file mode",
                self.shared.host
            )));
        }
        s.files.insert(path.to_string(), FileEntry { contents: contents.to_vec(), mode, owner: owner.map(str::to_string) });
        Ok(())
    }

    async fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>, TransportError> {
        let mut s = self.state();
        let contents = s.files.get(path).map(|f| f.contents.clone());
        s.calls.push(Call::Read { path: path.to_string(), found: contents.is_some() });
        Ok(contents)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::transport::TransportExt;

    fn cmd(program: &str, args: &[&str]) -> Command {
        Command::new(program).args(args.iter().copied())
    }

    #[tokio::test]
    async fn rules_answer_in_order_once_times_always() {
        let t = ScriptedTransport::new("h");
        t.on(Match::program("psql"))
            .once()
            .reply(Reply::exit(2, "", "not yet"))
            .on(Match::program("psql"))
            .times(2)
            .reply(Reply::ok("t"))
            .on(Match::program("psql"))
            .reply(Reply::ok("f"));
        let mut got = Vec::new();
        for _ in 0..5 {
            let o = t.exec(&cmd("/usr/bin/psql", &["-c", "select 1"])).await.unwrap();
            got.push(format!("{} {}", o.status, o.stdout));
        }
        assert_eq!(got, ["2 ", "0 t", "0 t", "0 f", "0 f"]);
        assert!(t.unused_rules().is_empty(), "{:?}", t.unused_rules());
        let rules: Vec<Option<usize>> = t
            .calls()
            .iter()
            .map(|c| match c {
                Call::Exec { rule, .. } => *rule,
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(rules, [Some(0), Some(1), Some(1), Some(2), Some(2)]);
    }

    #[test]
    fn matching_program_args_user_and_predicates() {
        let c = cmd("/usr/lib/postgresql/16/bin/pg_ctl", &["-D", "/d", "start"]).user("postgres");
        assert!(Match::any().matches(&c));
        assert!(Match::program("pg_ctl").matches(&c));
        assert!(Match::program("/usr/lib/postgresql/16/bin/pg_ctl").matches(&c));
        assert!(!Match::program("/usr/bin/pg_ctl").matches(&c), "a path must be equal");
        assert!(!Match::program("ctl").matches(&c));
        assert!(Match::exact("pg_ctl", ["-D", "/d", "start"]).matches(&c));
        assert!(!Match::exact("pg_ctl", ["-D", "/d"]).matches(&c));
        assert!(Match::prefix("pg_ctl", ["-D", "/d"]).matches(&c));
        assert!(Match::prefix("pg_ctl", Vec::<String>::new()).matches(&c));
        assert!(!Match::prefix("pg_ctl", ["start"]).matches(&c));
        assert!(Match::program("pg_ctl").user("postgres").matches(&c));
        assert!(!Match::program("pg_ctl").user("root").matches(&c));
        assert!(!Match::program("pg_ctl").own_user().matches(&c));
        assert!(Match::program("pg_ctl").own_user().matches(&cmd("pg_ctl", &[])));
        assert!(Match::any().arg_containing("/d").matches(&c));
        assert!(!Match::any().arg_containing("stop").matches(&c));
        let m = Match::when("long timeout", |c| c.timeout > Duration::from_secs(100)).and("as postgres", |c| c.user.is_some());
        assert!(!m.matches(&c));
        assert!(m.matches(&c.clone().timeout(Duration::from_secs(200))));
        assert!(!m.matches(&cmd("x", &[]).timeout(Duration::from_secs(200))));
        assert_eq!(m.description(), "long timeout and as postgres");
    }

    #[tokio::test]
    async fn unmatched_commands_fail_naming_the_command_and_the_rules() {
        let t = ScriptedTransport::new("db9");
        t.on(Match::program("true")).reply(Reply::ok(""));
        let e = t.exec(&cmd("rm", &["-rf", "/a b"]).user("postgres")).await.unwrap_err();
        let TransportError::Other(m) = &e else { panic!("{e:?}") };
        assert!(
            m.contains("db9") && m.contains("rm -rf \"/a b\"") && m.contains("as postgres") && m.contains("true (always, used 0)"),
            "{m}"
        );
        assert!(!e.is_retryable());
        assert_eq!(t.unmatched().len(), 1);
        assert_eq!(t.unused_rules(), ["true (always, used 0)"]);
    }

    #[tokio::test]
    #[should_panic(expected = "no rule answers `pg_ctl stop`")]
    async fn unmatched_commands_can_panic() {
        let t = ScriptedTransport::new("h").panic_on_unmatched();
        let _ = t.exec(&cmd("pg_ctl", &["stop"])).await;
    }

    #[tokio::test]
    async fn errors_timeouts_and_closures() {
        let t = ScriptedTransport::new("h");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        t.on(Match::program("sleep"))
            .reply(Reply::timeout())
            .on(Match::program("ssh"))
            .reply(TransportError::Io(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "pipe")))
            .on(Match::program("cat"))
            .reply(Reply::with(move |c| {
                s2.lock().unwrap().push(c.stdin.as_ref().map_or(0, Vec::len));
                Ok(Output {
                    status: 0,
                    stdout: String::from_utf8_lossy(c.stdin.as_deref().unwrap_or_default()).into_owned(),
                    stderr: String::new(),
                })
            }));
        for _ in 0..2 {
            match t.exec(&cmd("sleep", &["9"]).timeout(Duration::from_secs(7))).await {
                Err(TransportError::Timeout { program, after }) => assert_eq!((program.as_str(), after), ("sleep", Duration::from_secs(7))),
                other => panic!("{other:?}"),
            }
            let e = t.exec(&cmd("ssh", &[])).await.unwrap_err();
            assert!(matches!(&e, TransportError::Io(io) if io.kind() == std::io::ErrorKind::BrokenPipe), "{e:?}");
            assert!(e.is_retryable());
        }
        let o = t.exec(&cmd("cat", &[]).stdin(b"hello".to_vec())).await.unwrap();
        assert_eq!(o.stdout, "hello");
        assert_eq!(*seen.lock().unwrap(), [5]);
        // run() turns a scripted non-zero exit into CommandFailed, as with a real host.
        t.on(Match::program("false")).reply(Reply::exit(1, "", "nope"));
        assert!(matches!(t.run(&cmd("false", &[])).await, Err(TransportError::CommandFailed { status: 1, .. })));
    }

    #[tokio::test]
    async fn files_record_modes_and_owners_and_calls_are_recorded() {
        let t = ScriptedTransport::new("h").with_admin_user("root");
        assert_eq!(t.admin_user(), Some("root"));
        let clone = t.clone();
        clone.put_file("/etc/x", "seeded", 0o644, None);
        t.write_file("/d/pgpass", b"secret", 0o600, Some("postgres")).await.unwrap();
        t.write_file("/d/pgpass", b"secret2", 0o640, None).await.unwrap();
        assert!(t.write_file("relative", b"", 0o600, None).await.is_err());
        assert!(t.write_file("/d/", b"", 0o600, None).await.is_err());
        assert!(t.write_file("/d/f", b"", 0o17777, None).await.is_err());
        assert_eq!(t.file("/d/pgpass"), Some(FileEntry { contents: b"secret2".to_vec(), mode: 0o640, owner: None }));
        assert_eq!(clone.read_file("/etc/x").await.unwrap().as_deref(), Some(&b"seeded"[..]));
        assert_eq!(t.read_file("/nope").await.unwrap(), None);
        assert_eq!(t.files().keys().collect::<Vec<_>>(), ["/d/pgpass", "/etc/x"]);
        assert!(t.remove_file_entry("/etc/x"));
        assert_eq!(t.file_text("/etc/x"), None);

        t.on(Match::any()).reply(Reply::ok(""));
        t.exec(&cmd("mkdir", &["-p", "/d"]).user("postgres").stdin(vec![0; 10]).timeout(Duration::from_secs(5))).await.unwrap();
        let calls = t.calls();
        assert_eq!(calls.len(), 8);
        let Some(Call::Exec { command, rule: Some(0) }) = calls.last() else { panic!("{calls:?}") };
        assert_eq!(
            (command.user.as_deref(), command.stdin.as_ref().map(Vec::len), command.timeout),
            (Some("postgres"), Some(10), Duration::from_secs(5))
        );
        assert!(matches!(&calls[0], Call::Write { path, mode: 0o600, owner: Some(o), .. } if path == "/d/pgpass" && o == "postgres"));
        assert!(matches!(&calls[5], Call::Read { found: true, .. }) && matches!(&calls[6], Call::Read { found: false, .. }));
        assert_eq!(t.command_lines(), ["mkdir -p /d"]);
        t.assert_order(&["write /d/pgpass", "read /etc/x", "exec [postgres] mkdir -p /d"]);
        t.clear_calls();
        assert!(t.calls().is_empty() && t.file("/d/pgpass").is_some());
    }

    #[tokio::test]
    async fn assert_order_names_what_is_missing_or_misplaced() {
        let t = ScriptedTransport::new("h");
        t.on(Match::any()).reply(Reply::ok(""));
        for p in ["initdb", "pg_ctl", "psql"] {
            t.exec(&cmd(p, &[])).await.unwrap();
        }
        t.assert_order(&["initdb", "psql"]);
        let misplaced = std::panic::catch_unwind(|| t.assert_order(&["psql", "initdb"])).unwrap_err();
        let m = misplaced.downcast_ref::<String>().unwrap();
        assert!(m.contains("\"initdb\" (needle 1) was made, but not after the call matching \"psql\""), "{m}");
        let missing = std::panic::catch_unwind(|| t.assert_order(&["pg_basebackup"])).unwrap_err();
        let m = missing.downcast_ref::<String>().unwrap();
        assert!(m.contains("was never made") && m.contains("exec initdb"), "{m}");
    }

    #[test]
    fn command_lines_quote_what_needs_it() {
        assert_eq!(command_line(&cmd("sh", &["-c", "echo $HOME", "", "plain"])), "sh -c \"echo $HOME\" \"\" plain");
    }
}
