//! The promote floor, by hand: a primary + hot standby pair set up without pgrepl (same
//! binaries, pgrepl's initdb flags and the settings that matter for promotion: hot standby,
//! `wal_retrieve_retry_interval = 1s`, checksums). Each [`FloorPair::once`] stops the
//! primary cleanly, waits until the standby replayed all it received, then times
//! `pg_ctl promote -w` + a new connection + an INSERT (and, from the same start, the floor
//! writer's first acknowledged commit through the pair's multi-host read-write string);
//! the old primary restarts as a standby of the new one, so the pair swaps roles every run.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::writer::{APP_USER, CONNECT_LIMIT, Writer, connect, pg_err, setup_sql};
use super::{PgTools, append, mkdir_pg, path_str as s, secs_between, write_pg};

/// Limit of one command (initdb, pg_basebackup, pg_ctl, psql).
pub const STEP_LIMIT: Duration = Duration::from_secs(300);
const HEALTHY_DEADLINE: Duration = Duration::from_secs(120);
const RESUME_DEADLINE: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct FloorNode {
    name: String,
    data: PathBuf,
    port: u16,
}

#[derive(Debug)]
pub struct FloorPair {
    dir: PathBuf,
    run: PathBuf,
    nodes: [FloorNode; 2],
    /// Index of the current primary.
    primary: usize,
}

#[derive(Debug, Clone)]
pub struct FloorRun {
    pub from: String,
    pub to: String,
    /// Clean stop of the primary (not in the floor).
    pub stop: f64,
    /// `pg_ctl promote -w` alone.
    pub promote_w: f64,
    /// `pg_ctl promote -w`, then a new connection and an INSERT until it commits.
    pub literal: f64,
    /// From the promote command to the floor writer's first acknowledged commit.
    pub first_ack: f64,
}

impl FloorPair {
    /// The pair's multi-host read-write string (as pgrepl writes them).
    pub fn url(&self) -> String {
        format!(
            "postgresql://127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write&connect_timeout=5",
            self.nodes[0].port, self.nodes[1].port
        )
    }

    /// The two servers' names (the first is the primary at setup).
    pub fn node_names(&self) -> [&str; 2] {
        [&self.nodes[0].name, &self.nodes[1].name]
    }

    fn log(&self, n: &FloorNode) -> String {
        s(&self.dir.join(format!("{}.log", n.name)))
    }

    /// initdb, settings, start, the application's role (`app_password`) and table,
    /// pg_basebackup, standby, streaming. Servers on 127.0.0.1:`port` and `port + 1`.
    pub async fn setup(pg: &PgTools, dir: &Path, port: u16, app_password: &str) -> Result<FloorPair, String> {
        let caps = pg.b.major.caps();
        if caps.recovery != pgrepl_core::version::RecoveryStyle::StandbySignal {
            return Err(format!("PostgreSQL {}: the floor is written for 12+ (standby.signal)", pg.b.major));
        }
        mkdir_pg(dir)?;
        let run = dir.join("run");
        mkdir_pg(&run)?;
        let nodes = [
            FloorNode { name: "fa".into(), data: dir.join("fa"), port },
            FloorNode { name: "fb".into(), data: dir.join("fb"), port: port + 1 },
        ];
        let pair = FloorPair { dir: dir.to_path_buf(), run, nodes, primary: 0 };
        let (a, b) = (&pair.nodes[0], &pair.nodes[1]);
        let pw = "floor-repl-pw";
        let mut init: Vec<String> =
            ["-D", &s(&a.data), "-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C"]
                .iter()
                .map(|x| x.to_string())
                .collect();
        if let Some(flag) = caps.initdb_checksums {
            init.push(flag.into());
        }
        pg.run(pg.server("initdb"), init, Vec::new()).await.map_err(|e| format!("initdb: {e}"))?;
        let common = format!(
            "listen_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nwal_level = replica\nmax_wal_senders = 10\n\
             max_replication_slots = 10\n{} = '{}'\nwal_log_hints = on\nhot_standby = on\nhot_standby_feedback = on\n\
             wal_retrieve_retry_interval = '1s'\n",
            s(&pair.run),
            caps.wal_retention.setting(),
            caps.wal_retention.value_for_mb(512)
        );
        let own = |me: &FloorNode, other: &FloorNode| {
            format!(
                "port = {}\nprimary_conninfo = 'host=127.0.0.1 port={} user=replicator password={pw} application_name={}'\n",
                me.port, other.port, me.name
            )
        };
        append(&a.data.join("postgresql.conf"), &format!("{common}{}", own(a, b)))?;
        pair.pg_ctl(pg, a, &["-w", "-t", "120", "start"]).await?;
        let sql = format!("CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD '{pw}'; {}", setup_sql(app_password));
        pg.psql(&pair.run, a.port, &sql).await?;
        let bb: Vec<String> =
            ["-h", "127.0.0.1", "-p", &a.port.to_string(), "-U", "replicator", "-D", &s(&b.data), "-X", "stream", "-c", "fast"]
                .iter()
                .map(|x| x.to_string())
                .collect();
        pg.run(pg.client("pg_basebackup"), bb, vec![("PGPASSWORD".into(), pw.into())]).await.map_err(|e| format!("pg_basebackup: {e}"))?;
        append(&b.data.join("postgresql.conf"), &own(b, a))?;
        write_pg(&b.data.join("standby.signal"), "")?;
        pair.pg_ctl(pg, b, &["-w", "-t", "120", "start"]).await?;
        pair.wait_streaming(pg).await?;
        Ok(pair)
    }

    async fn pg_ctl(&self, pg: &PgTools, n: &FloorNode, args: &[&str]) -> Result<String, String> {
        let mut a = vec!["-D".to_string(), s(&n.data), "-l".into(), self.log(n)];
        a.extend(args.iter().map(|x| x.to_string()));
        pg.run(pg.server("pg_ctl"), a, Vec::new()).await.map_err(|e| format!("pg_ctl {}: {e}", args.join(" ")))
    }

    /// Until the standby streams from the primary (polled every 10 ms, bounded).
    async fn wait_streaming(&self, pg: &PgTools) -> Result<(), String> {
        let (p, st) = (&self.nodes[self.primary], &self.nodes[1 - self.primary]);
        let sql =
            format!("SELECT count(*) FROM pg_catalog.pg_stat_replication WHERE application_name = '{}' AND state = 'streaming'", st.name);
        let deadline = Instant::now() + HEALTHY_DEADLINE;
        while Instant::now() < deadline {
            if pg.psql(&self.run, p.port, &sql).await? == "1" {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(format!("{} did not stream from {} within {HEALTHY_DEADLINE:?}", st.name, p.name))
    }

    /// One promotion, `w` (a writer on [`FloorPair::url`]) writing meanwhile.
    pub async fn once(&mut self, pg: &PgTools, w: &Writer, app_password: &str) -> Result<FloorRun, String> {
        self.wait_streaming(pg).await?;
        w.set_paused(false);
        let r = self.promote_once(pg, w, app_password).await;
        w.set_paused(true);
        r
    }

    async fn promote_once(&mut self, pg: &PgTools, w: &Writer, app_password: &str) -> Result<FloorRun, String> {
        let (pi, si) = (self.primary, 1 - self.primary);
        w.ack_after(Instant::now(), RESUME_DEADLINE).await.ok_or("the floor writer acknowledged nothing")?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let t = Instant::now();
        self.pg_ctl(pg, &self.nodes[pi], &["-m", "fast", "-w", "-t", "60", "stop"]).await?;
        let stop = t.elapsed().as_secs_f64();
        // Caught up: everything received is replayed (the clean stop sent all of it).
        let st = &self.nodes[si];
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v =
                pg.psql(&self.run, st.port, "SELECT pg_catalog.pg_last_wal_replay_lsn() >= pg_catalog.pg_last_wal_receive_lsn()").await?;
            if v == "t" {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("{} did not replay what it received within 30 s", st.name));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        let t0 = Instant::now();
        self.pg_ctl(pg, st, &["-w", "-t", "60", "promote"]).await?;
        let promote_w = t0.elapsed().as_secs_f64();
        // A new connection straight to it, and an INSERT (retried until it commits, bounded).
        let mut cfg = tokio_postgres::Config::new();
        cfg.host("127.0.0.1")
            .port(st.port)
            .dbname("postgres")
            .user(APP_USER)
            .password(app_password)
            .connect_timeout(Duration::from_secs(5));
        let mut last_err = String::new();
        let mut literal = None;
        for _ in 0..3000 {
            match tokio::time::timeout(CONNECT_LIMIT, connect(&cfg)).await {
                Ok(Ok((client, stmt))) => match client.query_one(&stmt, &[]).await {
                    Ok(_) => {
                        literal = Some(t0.elapsed().as_secs_f64());
                        break;
                    }
                    Err(e) => last_err = pg_err(&e),
                },
                Ok(Err(e)) => last_err = pg_err(&e),
                Err(_) => last_err = "connect timed out".into(),
            }
            if t0.elapsed() > Duration::from_secs(30) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let literal = literal.ok_or_else(|| format!("no INSERT committed on {} within 30 s after pg_ctl promote: {last_err}", st.name))?;
        let first = w.ack_after(t0, RESUME_DEADLINE).await.ok_or("the floor writer acknowledged nothing after the promotion")?;
        let first_ack = secs_between(t0, first.at);

        // The old primary follows the new one (it stopped cleanly before the fork).
        let old = &self.nodes[pi];
        write_pg(&old.data.join("standby.signal"), "")?;
        self.pg_ctl(pg, old, &["-w", "-t", "120", "start"]).await?;
        let run = FloorRun { from: old.name.clone(), to: st.name.clone(), stop, promote_w, literal, first_ack };
        self.primary = si;
        Ok(run)
    }
}
