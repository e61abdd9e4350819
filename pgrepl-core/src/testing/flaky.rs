//! [`FlakyTransport`]: a decorator that makes any [`Transport`] fail, drop or stall on
//! chosen calls, to test retries and recovery against real hosts.

use std::fmt;
use std::io::ErrorKind;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use super::clone_error;
use super::scripted::{Match, command_line};
use crate::transport::{Command, Output, Transport, TransportError};

type PathPredicate = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// What a [`FlakyTransport`] does to a call it hits.
#[derive(Debug)]
#[non_exhaustive]
pub enum Fault {
    /// Returns this error without calling the wrapped transport.
    Fail(TransportError),
    /// The connection drops: a retryable [`TransportError::Io`] of `kind`. With
    /// `after_run`, the wrapped transport runs the call to completion first and its result
    /// is thrown away (the link dropped mid-command; the command still ran on the host).
    Drop {
        /// `ConnectionReset`, `UnexpectedEof`, `BrokenPipe`, ...
        kind: ErrorKind,
        /// Whether the call reached the host first.
        after_run: bool,
    },
    /// Waits this long, then passes the call through (a slow link).
    Delay(Duration),
}

impl Fault {
    /// Returns `error` instead of calling the wrapped transport.
    pub fn fail(error: TransportError) -> Fault {
        Fault::Fail(error)
    }

    /// The connection drops before the call reaches the host: `ConnectionReset`; the
    /// command does not run.
    pub fn drop_before() -> Fault {
        Fault::Drop { kind: ErrorKind::ConnectionReset, after_run: false }
    }

    /// The connection drops mid-command: the wrapped transport runs the call, then
    /// `UnexpectedEof` is returned instead of its result.
    pub fn drop_after_run() -> Fault {
        Fault::Drop { kind: ErrorKind::UnexpectedEof, after_run: true }
    }

    /// Waits `d`, then passes the call through.
    pub fn delay(d: Duration) -> Fault {
        Fault::Delay(d)
    }

    fn error(&self) -> Option<TransportError> {
        match self {
            Fault::Fail(e) => Some(clone_error(e)),
            Fault::Drop { kind, after_run } => Some(TransportError::Io(std::io::Error::new(
                *kind,
                if *after_run { "connection dropped mid-command (injected)" } else { "connection dropped (injected)" },
            ))),
            Fault::Delay(_) => None,
        }
    }

    fn runs_inner(&self) -> bool {
        matches!(self, Fault::Drop { after_run: true, .. } | Fault::Delay(_))
    }
}

impl Clone for Fault {
    fn clone(&self) -> Fault {
        match self {
            Fault::Fail(e) => Fault::Fail(clone_error(e)),
            Fault::Drop { kind, after_run } => Fault::Drop { kind: *kind, after_run: *after_run },
            Fault::Delay(d) => Fault::Delay(*d),
        }
    }
}

/// Which calls a fault hits. Calls are numbered from 0 in the order they reach the
/// [`FlakyTransport`]; `exec`, `write_file` and `read_file` count alike.
#[derive(Clone)]
pub struct When {
    kind: WhenKind,
    limit: Option<usize>,
}

#[derive(Clone)]
enum WhenKind {
    Call(usize),
    EveryNth(usize),
    Command(Match),
    Write(String, PathPredicate),
    Read(String, PathPredicate),
    Any,
}

impl When {
    /// The call with this index (0: the first call).
    pub fn call(index: usize) -> When {
        When { kind: WhenKind::Call(index), limit: None }
    }

    /// Every `n`th call: calls `n-1`, `2n-1`, ... (`n` = 0 never hits).
    pub fn every_nth(n: usize) -> When {
        When { kind: WhenKind::EveryNth(n), limit: None }
    }

    /// `exec` calls of the commands `m` matches (see [`Match`]; [`Match::when`] takes any predicate).
    pub fn command(m: Match) -> When {
        When { kind: WhenKind::Command(m), limit: None }
    }

    /// `write_file` calls whose path satisfies `predicate`.
    pub fn write(description: impl Into<String>, predicate: impl Fn(&str) -> bool + Send + Sync + 'static) -> When {
        When { kind: WhenKind::Write(description.into(), Arc::new(predicate)), limit: None }
    }

    /// `read_file` calls whose path satisfies `predicate`.
    pub fn read(description: impl Into<String>, predicate: impl Fn(&str) -> bool + Send + Sync + 'static) -> When {
        When { kind: WhenKind::Read(description.into(), Arc::new(predicate)), limit: None }
    }

    /// Every call.
    pub fn always() -> When {
        When { kind: WhenKind::Any, limit: None }
    }

    /// At most the first matching call.
    pub fn once(self) -> When {
        self.times(1)
    }

    /// At most the first `n` matching calls.
    pub fn times(mut self, n: usize) -> When {
        self.limit = Some(n);
        self
    }

    fn hits(&self, index: usize, call: &CallRef<'_>) -> bool {
        match (&self.kind, call) {
            (WhenKind::Call(i), _) => *i == index,
            (WhenKind::EveryNth(n), _) => *n > 0 && (index + 1).is_multiple_of(*n),
            (WhenKind::Command(m), CallRef::Exec(c)) => m.matches(c),
            (WhenKind::Write(_, p), CallRef::Write(path)) => p(path),
            (WhenKind::Read(_, p), CallRef::Read(path)) => p(path),
            (WhenKind::Any, _) => true,
            _ => false,
        }
    }

    fn describe(&self) -> String {
        let what = match &self.kind {
            WhenKind::Call(i) => format!("call {i}"),
            WhenKind::EveryNth(n) => format!("every {n}th call"),
            WhenKind::Command(m) => format!("exec of {}", m.description()),
            WhenKind::Write(d, _) => format!("write_file of {d}"),
            WhenKind::Read(d, _) => format!("read_file of {d}"),
            WhenKind::Any => "every call".into(),
        };
        match self.limit {
            Some(n) => format!("{what} (at most {n})"),
            None => what,
        }
    }
}

impl fmt::Debug for When {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "When({})", self.describe())
    }
}

enum CallRef<'a> {
    Exec(&'a Command),
    Write(&'a str),
    Read(&'a str),
}

impl CallRef<'_> {
    fn summary(&self) -> String {
        match self {
            CallRef::Exec(c) => match &c.user {
                Some(u) => format!("exec [{u}] {}", command_line(c)),
                None => format!("exec {}", command_line(c)),
            },
            CallRef::Write(p) => format!("write {p}"),
            CallRef::Read(p) => format!("read {p}"),
        }
    }
}

/// A fault a [`FlakyTransport`] injected.
#[derive(Debug, Clone)]
pub struct Injection {
    /// The call's index (see [`When`]).
    pub index: usize,
    /// The call: `exec [user] program args`, `write PATH` or `read PATH`.
    pub call: String,
    /// What was done to it.
    pub fault: Fault,
    /// Whether the call reached the wrapped transport (drops after the run, and delays).
    pub reached_inner: bool,
    /// What the wrapped transport returned, in words (`exit 0`, `ok`, `error: …`), when it
    /// was reached.
    pub inner_result: Option<String>,
}

struct Rule {
    when: When,
    fault: Fault,
    fired: usize,
}

#[derive(Default)]
struct State {
    rules: Vec<Rule>,
    calls: usize,
    injected: Vec<Injection>,
}

/// Wraps a [`Transport`] and fails, drops or delays chosen calls ([`When`] × [`Fault`]),
/// recording what it injected; every other call goes through unchanged.
///
/// Faults are tried in the order added; the first that hits a call (and has hits left)
/// is applied, at most one per call. Built with [`with`](Self::with); more faults can be
/// added later through a shared reference with [`inject`](Self::inject), and all removed
/// with [`heal`](Self::heal).
///
/// ```
/// use std::time::Duration;
/// use pgrepl_core::testing::{Fault, FlakyTransport, Match, Reply, ScriptedTransport, When};
/// use pgrepl_core::transport::{Command, Transport, TransportError};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let host = ScriptedTransport::new("db1");
/// host.on(Match::any()).reply(Reply::ok("done\n"));
/// let t = FlakyTransport::new(host.clone())
///     // The base backup's link drops once, after the command ran on the host.
///     .with(When::command(Match::program("pg_basebackup")).once(), Fault::drop_after_run())
///     // The very first call never reaches the host.
///     .with(When::call(0), Fault::drop_before())
///     // Every third call is slow.
///     .with(When::every_nth(3), Fault::delay(Duration::from_millis(5)));
///
/// let e = t.exec(&Command::new("pg_isready")).await.unwrap_err();       // call 0: dropped
/// assert!(e.is_retryable());
/// let e = t.exec(&Command::new("pg_basebackup")).await.unwrap_err();    // call 1: ran, then dropped
/// assert!(matches!(&e, TransportError::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof));
/// assert_eq!(t.exec(&Command::new("pg_basebackup")).await.unwrap().stdout, "done\n"); // call 2: slow
///
/// // The host saw the dropped base backup run, but never the first pg_isready.
/// assert_eq!(host.command_lines(), ["pg_basebackup", "pg_basebackup"]);
/// let injected: Vec<(usize, bool)> = t.injected().iter().map(|i| (i.index, i.reached_inner)).collect();
/// assert_eq!(injected, [(0, false), (1, true), (2, true)]);
/// # });
/// ```
pub struct FlakyTransport<T: Transport + ?Sized = dyn Transport> {
    inner: Arc<T>,
    state: Mutex<State>,
}

impl<T: Transport> FlakyTransport<T> {
    /// Wraps `inner`; no faults yet.
    pub fn new(inner: T) -> FlakyTransport<T> {
        FlakyTransport::from_arc(Arc::new(inner))
    }
}

impl<T: Transport + ?Sized> FlakyTransport<T> {
    /// Wraps a shared transport (such as a node handle's `Arc<dyn Transport>`).
    pub fn from_arc(inner: Arc<T>) -> FlakyTransport<T> {
        FlakyTransport { inner, state: Mutex::new(State::default()) }
    }

    /// Adds a fault (builder style).
    pub fn with(self, when: When, fault: Fault) -> Self {
        self.inject(when, fault);
        self
    }

    /// Adds a fault from now on (the call count is not reset).
    pub fn inject(&self, when: When, fault: Fault) -> &Self {
        self.state().rules.push(Rule { when, fault, fired: 0 });
        self
    }

    /// Removes every fault: calls go through unchanged from now on.
    pub fn heal(&self) {
        self.state().rules.clear();
    }

    /// The wrapped transport.
    pub fn inner(&self) -> &Arc<T> {
        &self.inner
    }

    /// How many calls came through so far.
    pub fn calls(&self) -> usize {
        self.state().calls
    }

    /// The faults injected so far, in order.
    pub fn injected(&self) -> Vec<Injection> {
        self.state().injected.clone()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Numbers the call and picks the fault for it.
    fn pick(&self, call: &CallRef<'_>) -> (usize, Option<Fault>) {
        let mut s = self.state();
        let index = s.calls;
        s.calls += 1;
        let rule = s.rules.iter_mut().find(|r| r.when.limit.is_none_or(|n| r.fired < n) && r.when.hits(index, call));
        let fault = rule.map(|r| {
            r.fired += 1;
            r.fault.clone()
        });
        if let Some(f) = &fault {
            tracing::debug!(index, call = %call.summary(), fault = ?f, "injecting a fault");
        }
        (index, fault)
    }

    fn record(&self, index: usize, call: &CallRef<'_>, fault: Fault, inner_result: Option<String>) {
        let reached_inner = fault.runs_inner();
        self.state().injected.push(Injection { index, call: call.summary(), fault, reached_inner, inner_result });
    }

    /// Runs `op` on the wrapped transport unless a fault says otherwise.
    async fn apply<R, F>(
        &self,
        call: CallRef<'_>,
        describe: impl Fn(&Result<R, TransportError>) -> String,
        op: F,
    ) -> Result<R, TransportError>
    where
        F: std::future::Future<Output = Result<R, TransportError>>,
    {
        let (index, fault) = self.pick(&call);
        let Some(fault) = fault else { return op.await };
        if let Fault::Delay(d) = &fault {
            tokio::time::sleep(*d).await;
        }
        let inner = if fault.runs_inner() { Some(op.await) } else { None };
        let words = inner.as_ref().map(&describe);
        let error = fault.error();
        self.record(index, &call, fault, words);
        match (error, inner) {
            (Some(e), _) => Err(e),
            (None, Some(r)) => r,
            (None, None) => unreachable!("a fault without an error runs the call"),
        }
    }
}

fn words<R>(r: &Result<R, TransportError>, ok: impl Fn(&R) -> String) -> String {
    match r {
        Ok(v) => ok(v),
        Err(e) => format!("error: {e}"),
    }
}

impl<T: Transport + ?Sized> fmt::Debug for FlakyTransport<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.state();
        f.debug_struct("FlakyTransport")
            .field("inner", &self.inner)
            .field(
                "faults",
                &s.rules.iter().map(|r| format!("{} -> {:?} (fired {})", r.when.describe(), r.fault, r.fired)).collect::<Vec<_>>(),
            )
            .field("calls", &s.calls)
            .field("injected", &s.injected.len())
            .finish()
    }
}

#[async_trait]
impl<T: Transport + ?Sized> Transport for FlakyTransport<T> {
    fn host(&self) -> &str {
        self.inner.host()
    }

    fn admin_user(&self) -> Option<&str> {
        self.inner.admin_user()
    }

    async fn exec(&self, cmd: &Command) -> Result<Output, TransportError> {
        self.apply(CallRef::Exec(cmd), |r| words(r, |o: &Output| format!("exit {}", o.status)), self.inner.exec(cmd)).await
    }

    async fn write_file(&self, path: &str, contents: &[u8], mode: u32, owner: Option<&str>) -> Result<(), TransportError> {
        self.apply(CallRef::Write(path), |r| words(r, |_| "ok".into()), self.inner.write_file(path, contents, mode, owner)).await
    }

    async fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>, TransportError> {
        let describe = |r: &Result<Option<Vec<u8>>, TransportError>| {
            words(r, |v: &Option<Vec<u8>>| v.as_ref().map_or("missing".to_string(), |b| format!("{} bytes", b.len())))
        };
        self.apply(CallRef::Read(path), describe, self.inner.read_file(path)).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::testing::{Reply, ScriptedTransport};
    use crate::transport::TransportExt;

    fn host() -> ScriptedTransport {
        let t = ScriptedTransport::new("h");
        t.on(Match::any()).reply(Reply::ok("ok"));
        t
    }

    #[tokio::test]
    async fn without_faults_everything_passes_through() {
        let inner = host();
        let t = FlakyTransport::new(inner.clone());
        assert_eq!(t.host(), "h");
        for i in 0..3 {
            assert_eq!(t.exec(&Command::new(format!("c{i}"))).await.unwrap().stdout, "ok");
        }
        t.write_file("/f", b"x", 0o600, Some("postgres")).await.unwrap();
        assert_eq!(t.read_file("/f").await.unwrap().as_deref(), Some(&b"x"[..]));
        assert_eq!(t.calls(), 5);
        assert!(t.injected().is_empty());
        assert_eq!(inner.calls().len(), 5);
    }

    #[tokio::test]
    async fn drop_before_never_reaches_the_host_drop_after_does() {
        let inner = host();
        let t = FlakyTransport::new(inner.clone()).with(When::call(0), Fault::drop_before()).with(When::call(1), Fault::drop_after_run());
        let e = t.exec(&Command::new("a")).await.unwrap_err();
        assert!(matches!(&e, TransportError::Io(io) if io.kind() == ErrorKind::ConnectionReset) && e.is_retryable(), "{e:?}");
        let e = t.run(&Command::new("b")).await.unwrap_err();
        assert!(matches!(&e, TransportError::Io(io) if io.kind() == ErrorKind::UnexpectedEof) && e.is_retryable(), "{e:?}");
        t.exec(&Command::new("c")).await.unwrap();
        assert_eq!(inner.command_lines(), ["b", "c"], "a never ran, b ran although its answer was lost");
        let inj = t.injected();
        assert_eq!(inj.len(), 2);
        assert_eq!((inj[0].index, inj[0].call.as_str(), inj[0].reached_inner, inj[0].inner_result.as_deref()), (0, "exec a", false, None));
        assert_eq!(
            (inj[1].index, inj[1].call.as_str(), inj[1].reached_inner, inj[1].inner_result.as_deref()),
            (1, "exec b", true, Some("exit 0"))
        );
    }

    #[tokio::test]
    async fn every_nth_command_predicates_limits_and_first_rule_wins() {
        let inner = host();
        let t = FlakyTransport::new(inner.clone())
            .with(When::command(Match::program("psql")).times(2), Fault::fail(TransportError::Connect("refused".into())))
            .with(When::every_nth(3), Fault::drop_before());
        let mut outcome = String::new();
        for p in ["psql", "x", "psql", "psql", "x", "x", "x", "x", "x"] {
            outcome.push(match t.exec(&Command::new(p)).await {
                Ok(_) => '.',
                Err(TransportError::Connect(_)) => 'C',
                Err(TransportError::Io(_)) => 'D',
                Err(e) => panic!("{e:?}"),
            });
        }
        // Calls 0 and 2 are psql (the first rule, twice); call 3 is psql again but the
        // rule is used up; every 3rd call (2, 5, 8) drops unless the first rule took it.
        assert_eq!(outcome, "C.C..D..D");
        assert_eq!(t.injected().iter().map(|i| i.index).collect::<Vec<_>>(), [0, 2, 5, 8]);
        assert_eq!(inner.command_lines().len(), 5);
    }

    #[tokio::test]
    async fn writes_and_reads_can_be_hit_and_faults_added_or_healed_later() {
        let inner = host();
        let t: FlakyTransport<dyn Transport> = FlakyTransport::from_arc(Arc::new(inner.clone()) as Arc<dyn Transport>);
        t.inject(When::write("pgpass files", |p| p.ends_with("pgpass")).once(), Fault::drop_after_run())
            .inject(When::read("anything", |_| true), Fault::fail(TransportError::Other("denied".into())));
        assert!(t.write_file("/a/pgpass", b"s", 0o600, None).await.unwrap_err().is_retryable());
        assert!(inner.file("/a/pgpass").is_some(), "the write happened before the drop");
        t.write_file("/a/pgpass", b"s2", 0o600, None).await.unwrap();
        assert!(matches!(t.read_file("/a/pgpass").await, Err(TransportError::Other(m)) if m == "denied"));
        assert_eq!(t.injected()[1].inner_result, None);
        assert_eq!(t.injected()[0].inner_result.as_deref(), Some("ok"));
        t.heal();
        assert_eq!(t.read_file("/a/pgpass").await.unwrap().as_deref(), Some(&b"s2"[..]));
        t.inject(When::always().once(), Fault::fail(TransportError::Auth("no".into())));
        assert!(matches!(t.exec(&Command::new("x")).await, Err(TransportError::Auth(_))));
        assert!(t.exec(&Command::new("x")).await.is_ok());
        assert_eq!(t.calls(), 6);
    }

    #[tokio::test]
    async fn delays_pass_the_call_through_late() {
        let t = FlakyTransport::new(host()).with(When::call(0), Fault::delay(Duration::from_millis(200)));
        let started = Instant::now();
        assert_eq!(t.exec(&Command::new("slow")).await.unwrap().stdout, "ok");
        assert!(started.elapsed() >= Duration::from_millis(200));
        // Only call 0 is delayed (the record below has one injection, none for call 1).
        t.exec(&Command::new("fast")).await.unwrap();
        let inj = t.injected();
        assert_eq!(inj.len(), 1);
        assert!(matches!(inj[0].fault, Fault::Delay(d) if d == Duration::from_millis(200)) && inj[0].reached_inner);
    }

    #[test]
    fn every_nth_zero_never_hits() {
        let c = Command::new("x");
        assert!(!(0..10).any(|i| When::every_nth(0).hits(i, &CallRef::Exec(&c))));
        assert_eq!((0..10).filter(|i| When::every_nth(1).hits(*i, &CallRef::Exec(&c))).count(), 10);
    }
}
