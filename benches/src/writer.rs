//! An application's write load: one row per transaction through a libpq connection string
//! (typically the multi-host read-write one), every acknowledged commit recorded with the
//! port of the server that acknowledged it; reconnects at once after an error.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The application role the writers use (password authentication over TCP).
pub const APP_USER: &str = "bench_app";
/// The table and the insert: the id and the port of the server that took it.
pub const TABLE_SQL: &str = "CREATE TABLE bench_writes (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp());";
pub const INSERT_SQL: &str = "INSERT INTO bench_writes DEFAULT VALUES RETURNING id, inet_server_port(), host(inet_server_addr())";
/// Pause between commits, limits of one connect and one INSERT, total lifetime.
pub const WRITE_PAUSE: Duration = Duration::from_millis(1);
pub const CONNECT_LIMIT: Duration = Duration::from_secs(10);
pub const INSERT_LIMIT: Duration = Duration::from_secs(5);
const WRITER_LIFETIME: Duration = Duration::from_secs(3 * 3600);

/// The SQL that creates the application role and the table (run it on a primary).
pub fn setup_sql(password: &str) -> String {
    format!(
        "CREATE ROLE {APP_USER} LOGIN PASSWORD '{password}'; {TABLE_SQL} GRANT SELECT, INSERT ON bench_writes TO {APP_USER}; \
         GRANT USAGE ON SEQUENCE bench_writes_id_seq TO {APP_USER};"
    )
}

#[derive(Debug, Clone, Copy)]
pub struct Ack {
    pub at: Instant,
    pub id: i64,
    pub port: i32,
    /// The server's address (`None` over a Unix socket).
    pub addr: Option<std::net::IpAddr>,
}

/// Consecutive identical errors, collapsed.
#[derive(Debug, Clone)]
pub struct ErrRun {
    pub first: Instant,
    pub last: Instant,
    pub what: String,
    pub count: u32,
}

#[derive(Debug, Default)]
struct Log {
    acks: Vec<Ack>,
    errors: Vec<ErrRun>,
    connects: u64,
}

impl Log {
    fn error(&mut self, what: String) {
        let now = Instant::now();
        match self.errors.last_mut() {
            Some(e) if e.what == what => {
                e.last = now;
                e.count += 1;
            }
            _ => self.errors.push(ErrRun { first: now, last: now, what, count: 1 }),
        }
    }
}

/// The running load.
#[derive(Debug)]
pub struct Writer {
    log: Arc<Mutex<Log>>,
    stop: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    /// Starts writing (or waits, `paused`) on the current tokio runtime.
    pub fn start(cfg: tokio_postgres::Config, paused: bool) -> Writer {
        Self::start_with_limit(cfg, paused, INSERT_LIMIT)
    }

    /// [`start`](Self::start) with another limit of one INSERT: a client that gives up
    /// on a server whose link is gone (no reset ever comes) sooner than the default.
    pub fn start_with_limit(cfg: tokio_postgres::Config, paused: bool, insert_limit: Duration) -> Writer {
        let log = Arc::new(Mutex::new(Log::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let paused = Arc::new(AtomicBool::new(paused));
        let task = tokio::spawn(writer_loop(cfg, log.clone(), stop.clone(), paused.clone(), insert_limit));
        Writer { log, stop, paused, task }
    }

    pub fn set_paused(&self, p: bool) {
        self.paused.store(p, Ordering::SeqCst);
    }

    pub fn acks(&self) -> Vec<Ack> {
        self.log.lock().expect("not poisoned").acks.clone()
    }

    /// The error runs that overlap `[a, b]`.
    pub fn errors_between(&self, a: Instant, b: Instant) -> Vec<ErrRun> {
        self.log.lock().expect("not poisoned").errors.iter().filter(|e| e.last >= a && e.first <= b).cloned().collect()
    }

    /// The first acknowledgement after `t` that `accept` takes, waiting up to `limit`.
    pub async fn ack_after_where(&self, t: Instant, limit: Duration, accept: impl Fn(&Ack) -> bool) -> Option<Ack> {
        let deadline = Instant::now() + limit;
        loop {
            {
                let log = self.log.lock().expect("not poisoned");
                let start = log.acks.partition_point(|a| a.at <= t);
                if let Some(a) = log.acks[start..].iter().find(|a| accept(a)) {
                    return Some(*a);
                }
            }
            if Instant::now() > deadline || self.task.is_finished() {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// When the first error after `t` happened, waiting up to `limit` for one.
    pub async fn first_error_after(&self, t: Instant, limit: Duration) -> Option<Instant> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(e) = self.log.lock().expect("not poisoned").errors.iter().find(|e| e.first > t) {
                return Some(e.first);
            }
            if Instant::now() > deadline || self.task.is_finished() {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// The first acknowledgement after `t`, waiting up to `limit` for it.
    pub async fn ack_after(&self, t: Instant, limit: Duration) -> Option<Ack> {
        self.ack_after_where(t, limit, |_| true).await
    }

    pub fn stats(&self) -> String {
        let l = self.log.lock().expect("not poisoned");
        format!(
            "{} acknowledged commits, {} connections, {} errors",
            l.acks.len(),
            l.connects,
            l.errors.iter().map(|e| e.count as u64).sum::<u64>()
        )
    }

    /// Stops the load (bounded): every acknowledgement it recorded.
    pub async fn stop(self) -> Vec<Ack> {
        self.stop.store(true, Ordering::SeqCst);
        let log = self.log.clone();
        let _ = tokio::time::timeout(INSERT_LIMIT + CONNECT_LIMIT, self.task).await;
        log.lock().expect("not poisoned").acks.clone()
    }
}

async fn writer_loop(
    cfg: tokio_postgres::Config,
    log: Arc<Mutex<Log>>,
    stop: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    insert_limit: Duration,
) {
    let end = Instant::now() + WRITER_LIFETIME;
    let mut conn: Option<(tokio_postgres::Client, tokio_postgres::Statement)> = None;
    while !stop.load(Ordering::SeqCst) && Instant::now() < end {
        if paused.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        let (client, stmt) = match conn.take() {
            Some(c) => c,
            None => match tokio::time::timeout(CONNECT_LIMIT, connect(&cfg)).await {
                Ok(Ok(c)) => {
                    log.lock().expect("not poisoned").connects += 1;
                    c
                }
                Ok(Err(e)) => {
                    log.lock().expect("not poisoned").error(format!("connect: {}", pg_err(&e)));
                    tokio::time::sleep(WRITE_PAUSE).await;
                    continue;
                }
                Err(_) => {
                    log.lock().expect("not poisoned").error("connect: timed out".into());
                    continue;
                }
            },
        };
        match tokio::time::timeout(insert_limit, client.query_one(&stmt, &[])).await {
            Ok(Ok(row)) => {
                let at = Instant::now();
                let (id, port, addr): (i64, Option<i32>, Option<String>) = (row.get(0), row.get(1), row.get(2));
                let addr = addr.and_then(|a| a.parse().ok());
                log.lock().expect("not poisoned").acks.push(Ack { at, id, port: port.unwrap_or(0), addr });
                conn = Some((client, stmt));
                tokio::time::sleep(WRITE_PAUSE).await;
            }
            // The connection is dropped; the next turn reconnects at once.
            Ok(Err(e)) => log.lock().expect("not poisoned").error(format!("insert: {}", pg_err(&e))),
            Err(_) => log.lock().expect("not poisoned").error("insert: timed out".into()),
        }
    }
}

/// A new connection with the insert prepared.
pub async fn connect(cfg: &tokio_postgres::Config) -> Result<(tokio_postgres::Client, tokio_postgres::Statement), tokio_postgres::Error> {
    let (client, connection) = cfg.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let stmt = client.prepare(INSERT_SQL).await?;
    Ok((client, stmt))
}

/// An error with its SQLSTATE, or its chain of causes.
pub fn pg_err(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} {}", db.code().code(), db.message());
    }
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

/// Error runs as lines, times from `t0`.
pub fn error_summary(errs: &[ErrRun], t0: Instant) -> Vec<String> {
    errs.iter()
        .map(|e| {
            format!(
                "{:+.3}..{:+.3} s  {} x {}",
                super::secs_between(t0, e.first),
                super::secs_between(t0, e.last),
                e.count,
                e.what.chars().take(150).collect::<String>()
            )
        })
        .collect()
}
