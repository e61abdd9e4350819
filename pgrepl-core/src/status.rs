//! Observing a cluster: `status` (roles, timelines, positions, lag, sync state, slots),
//! `verify` (a canary write must reach every standby, and standbys must refuse writes),
//! and connection strings for applications.

use std::fmt;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use postgres_types::PgLsn;
use serde::Serialize;

use crate::cluster::{Cluster, Node};
use crate::deploy::{Deployment, POLL_INTERVAL, is_running};
use crate::error::Error;
use crate::provider::NodeHandle;
use crate::render::sql_literal;
use crate::spec::Role;
use crate::sql::{self, QueryError};
use crate::transport::TransportExt;
use crate::version::Capabilities;

/// Time limit of status queries per node.
const STATUS_TIMEOUT: Duration = Duration::from_secs(10);

/// A node as observed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// The server runs and answered.
    Running,
    /// The server does not run.
    Stopped,
    /// The host has no node directory or data yet.
    NotDeployed,
    /// The host or server could not be reached.
    Unreachable,
}

/// One node's status.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    /// Node name.
    pub name: String,
    /// Role in the spec.
    pub spec_role: Role,
    /// Address:port.
    pub endpoint: String,
    /// State.
    pub state: NodeState,
    /// Observed role: `primary` (not in recovery) or `standby`.
    pub role: Option<String>,
    /// Timeline.
    pub timeline: Option<u32>,
    /// Current WAL position (primary) or last replayed position (standby).
    pub lsn: Option<String>,
    /// Last received position (standby).
    pub receive_lsn: Option<String>,
    /// Replay lag behind the primary's current position, bytes.
    pub lag_bytes: Option<u64>,
    /// Replay lag in time, seconds (0 when caught up).
    pub lag_seconds: Option<f64>,
    /// The standby streams from its upstream (state `streaming` there).
    pub streaming: Option<bool>,
    /// Synchronous state on the upstream (`sync`, `quorum`, `potential`, `async`).
    pub sync_state: Option<String>,
    /// The slot it uses on its upstream, and whether it is active.
    pub slot: Option<String>,
    /// Whether that slot is active.
    pub slot_active: Option<bool>,
    /// The upstream in the spec.
    pub upstream: Option<String>,
    /// What went wrong observing it.
    pub error: Option<String>,
}

/// The whole cluster's status.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// Cluster name.
    pub cluster: String,
    /// PostgreSQL major.
    pub major: Option<String>,
    /// Nodes in spec order.
    pub nodes: Vec<NodeStatus>,
    /// Problems found (empty when healthy).
    pub problems: Vec<String>,
    /// Connection strings for applications.
    pub connections: ConnectionStrings,
}

impl StatusReport {
    /// No problems: one primary, every standby streaming.
    pub fn healthy(&self) -> bool {
        self.problems.is_empty()
    }
}

/// libpq multi-host connection strings for applications.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionStrings {
    /// Reaches whichever node accepts writes.
    pub read_write: String,
    /// Prefers a standby (libpq 14+), falls back to the primary.
    pub read_only: String,
}

/// The connection strings of a cluster (no credentials: applications bring their own).
pub fn connection_strings(cluster: &Cluster) -> ConnectionStrings {
    let hosts = cluster
        .nodes
        .iter()
        .map(|n| {
            let a = n.address_or_placeholder();
            if a.contains(':') { format!("[{a}]:{}", n.port) } else { format!("{a}:{}", n.port) }
        })
        .collect::<Vec<_>>()
        .join(",");
    ConnectionStrings {
        read_write: format!("postgresql://{hosts}/postgres?target_session_attrs=read-write&connect_timeout=5"),
        read_only: format!("postgresql://{hosts}/postgres?target_session_attrs=prefer-standby&connect_timeout=5"),
    }
}

struct Observed {
    in_recovery: bool,
    timeline: Option<u32>,
    lsn: Option<String>,
    receive_lsn: Option<String>,
    replay_age: Option<f64>,
    /// Rows of pg_stat_replication: (application_name, state, sync_state, lag seconds).
    senders: Vec<(String, String, String, Option<f64>)>,
    /// Rows of pg_replication_slots: (slot_name, active).
    slots: Vec<(String, bool)>,
}

fn status_sql(caps: &Capabilities) -> String {
    let l = &caps.lsn;
    let receiver_tli = if caps.wal_receiver_view { "(SELECT received_tli FROM pg_catalog.pg_stat_wal_receiver)" } else { "NULL" };
    let lag = if caps.lag_columns { "extract(epoch FROM replay_lag)" } else { "NULL" };
    let slots =
        if caps.slots { "SELECT 's', slot_name, active FROM pg_catalog.pg_replication_slots WHERE slot_type = 'physical';" } else { "" };
    format!(
        "SELECT 'n', pg_catalog.pg_is_in_recovery(), \
           CASE WHEN pg_catalog.pg_is_in_recovery() THEN {receiver_tli}::text ELSE substr(pg_catalog.{walfile}(pg_catalog.{current}()), 1, 8) END, \
           CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.{replay}()::text ELSE pg_catalog.{current}()::text END, \
           CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.{receive}()::text END, \
           extract(epoch FROM now() - pg_catalog.pg_last_xact_replay_timestamp());\n\
         SELECT 'r', application_name, state, sync_state, {lag} FROM pg_catalog.pg_stat_replication;\n{slots}",
        walfile = l.walfile_name,
        current = l.current,
        replay = l.last_replay,
        receive = l.last_receive,
    )
}

async fn observe(h: &NodeHandle, port: u16, caps: &Capabilities) -> Result<Observed, QueryError> {
    let rows = sql::query(&*h.transport, &h.layout, port, &status_sql(caps), STATUS_TIMEOUT).await?;
    let mut o = Observed {
        in_recovery: false,
        timeline: None,
        lsn: None,
        receive_lsn: None,
        replay_age: None,
        senders: Vec::new(),
        slots: Vec::new(),
    };
    for r in rows {
        let f = |i: usize| r.get(i).cloned().flatten();
        match f(0).as_deref() {
            Some("n") => {
                o.in_recovery = f(1).as_deref() == Some("t");
                o.timeline = f(2).and_then(|t| if o.in_recovery { t.parse().ok() } else { u32::from_str_radix(&t, 16).ok() });
                o.lsn = f(3);
                o.receive_lsn = f(4);
                o.replay_age = f(5).and_then(|s| s.parse().ok());
            }
            Some("r") => o.senders.push((
                f(1).unwrap_or_default(),
                f(2).unwrap_or_default(),
                f(3).unwrap_or_default(),
                f(4).and_then(|s| s.parse().ok()),
            )),
            Some("s") => o.slots.push((f(1).unwrap_or_default(), f(2).as_deref() == Some("t"))),
            _ => {}
        }
    }
    Ok(o)
}

fn lsn_diff(a: &str, b: &str) -> Option<u64> {
    let a: PgLsn = a.parse().ok()?;
    let b: PgLsn = b.parse().ok()?;
    Some(u64::from(a).saturating_sub(u64::from(b)))
}

impl Deployment {
    /// Observes every node. Never fails as a whole: an unreachable node is reported as such.
    pub async fn status(&self) -> StatusReport {
        let connections = connection_strings(&self.cluster);
        let major = self.cluster.major.map(|m| m.to_string());
        let (cluster, handles, unreachable) = match self.connect_partial().await {
            Ok(x) => x,
            Err(e) => {
                return StatusReport {
                    cluster: self.cluster.name.clone(),
                    major,
                    nodes: Vec::new(),
                    problems: vec![format!("could not reach the cluster's hosts: {e}")],
                    connections,
                };
            }
        };
        let caps = cluster.caps().expect("major known");
        let observed = join_all(cluster.nodes.iter().map(|n| async {
            let Some(h) = handles.iter().find(|h| h.name == n.name) else {
                return match unreachable.iter().find(|(name, _)| name == &n.name) {
                    Some((_, e)) => (NodeState::Unreachable, None, Some(error_chain(e))),
                    None => (NodeState::NotDeployed, None, None),
                };
            };
            match is_running(h).await {
                Err(e) => (NodeState::Unreachable, None, Some(e.to_string())),
                Ok(false) => {
                    let deployed = h.transport.exists(&format!("{}/PG_VERSION", h.layout.data_dir), None).await.unwrap_or(false);
                    (if deployed { NodeState::Stopped } else { NodeState::NotDeployed }, None, None)
                }
                Ok(true) => match observe(h, n.port, &caps).await {
                    Ok(o) => (NodeState::Running, Some(o), None),
                    Err(QueryError::Transport(e)) => (NodeState::Unreachable, None, Some(e.to_string())),
                    Err(e) => (NodeState::Unreachable, None, Some(e.to_string())),
                },
            }
        }))
        .await;

        let primaries: Vec<usize> =
            observed.iter().enumerate().filter(|(_, (_, o, _))| o.as_ref().is_some_and(|o| !o.in_recovery)).map(|(i, _)| i).collect();
        let primary_lsn = primaries.first().and_then(|&i| observed[i].1.as_ref()).and_then(|o| o.lsn.clone());
        let mut problems = Vec::new();
        if primaries.is_empty() {
            problems.push("no running primary".to_string());
        } else if primaries.len() > 1 {
            problems.push(format!(
                "{} nodes accept writes: {}",
                primaries.len(),
                primaries.iter().map(|&i| cluster.nodes[i].name.as_str()).collect::<Vec<_>>().join(", ")
            ));
        }
        let mut nodes = Vec::new();
        for (i, n) in cluster.nodes.iter().enumerate() {
            let (state, o, error) = &observed[i];
            let up = n.upstream.as_deref().and_then(|u| cluster.nodes.iter().position(|x| x.name == u));
            let up_obs = up.and_then(|j| observed[j].1.as_ref());
            let sender = up_obs.and_then(|uo| uo.senders.iter().find(|s| s.0 == n.name));
            let slot_row = n.slot.as_ref().and_then(|s| up_obs.and_then(|uo| uo.slots.iter().find(|x| &x.0 == s)));
            let lag_bytes = match (o, &primary_lsn) {
                (Some(o), Some(p)) if o.in_recovery => o.lsn.as_deref().and_then(|l| lsn_diff(p, l)),
                (Some(o), _) if !o.in_recovery => Some(0),
                _ => None,
            };
            let lag_seconds = match (o, lag_bytes) {
                (Some(o), Some(b)) if o.in_recovery => {
                    Some(if b == 0 { 0.0 } else { sender.and_then(|s| s.3).or(o.replay_age).unwrap_or(0.0) })
                }
                (Some(_), Some(_)) => Some(0.0),
                _ => None,
            };
            let status = NodeStatus {
                name: n.name.clone(),
                spec_role: n.role,
                endpoint: format!("{}:{}", n.address_or_placeholder(), n.port),
                state: state.clone(),
                role: o.as_ref().map(|o| if o.in_recovery { "standby".into() } else { "primary".into() }),
                timeline: o.as_ref().and_then(|o| o.timeline),
                lsn: o.as_ref().and_then(|o| o.lsn.clone()),
                receive_lsn: o.as_ref().and_then(|o| o.receive_lsn.clone()),
                lag_bytes,
                lag_seconds,
                streaming: o.as_ref().filter(|o| o.in_recovery).map(|_| sender.is_some_and(|s| s.1 == "streaming")),
                sync_state: sender.map(|s| s.2.clone()),
                slot: n.slot.clone(),
                slot_active: slot_row.map(|s| s.1),
                upstream: n.upstream.clone(),
                error: error.clone(),
            };
            match (&status.state, n.role, status.role.as_deref()) {
                (NodeState::Running, Role::Standby, Some("standby")) if status.streaming != Some(true) => {
                    problems.push(format!("{}: not streaming from {}", n.name, n.upstream.clone().unwrap_or_default()))
                }
                (NodeState::Running, _, _) => {}
                (s, _, _) => problems.push(format!(
                    "{}: {}{}",
                    n.name,
                    serde_json::to_value(s).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default().replace('_', " "),
                    error.as_ref().map(|e| format!(" ({e})")).unwrap_or_default()
                )),
            }
            if let (Some(slot), Some(false)) = (&status.slot, status.slot_active) {
                if status.streaming == Some(true) {
                    problems.push(format!("{}: slot {slot} is not active", n.name));
                }
            }
            nodes.push(status);
        }
        StatusReport { cluster: cluster.name.clone(), major, nodes, problems, connections: connection_strings(&cluster) }
    }

    /// Writes a canary row on the primary and checks it reaches every standby within
    /// `timeout`, and that every standby refuses a write (SQLSTATE 25006).
    pub async fn verify(&self, timeout: Duration) -> Result<VerifyReport, Error> {
        let (cluster, handles) = self.connect(false).await?;
        let t0 = Instant::now();
        let status = self.status().await;
        let primary = status
            .nodes
            .iter()
            .find(|n| n.role.as_deref() == Some("primary"))
            .ok_or_else(|| Error::node(&cluster.name, "no running primary to write the canary on"))?
            .name
            .clone();
        let ph = handles.iter().find(|h| h.name == primary).expect("observed nodes have handles");
        let pn = cluster.node(&primary).expect("known");
        let token = format!("canary-{}", crate::secret::Secret::generate().expose().get(..12).unwrap_or_default());
        let write = format!(
            "CREATE SCHEMA IF NOT EXISTS pgrepl;\n\
             CREATE TABLE IF NOT EXISTS pgrepl.canary (id bigserial PRIMARY KEY, token text NOT NULL, node text NOT NULL, written_at timestamptz NOT NULL DEFAULT now());\n\
             DELETE FROM pgrepl.canary WHERE written_at < now() - interval '1 day';\n\
             INSERT INTO pgrepl.canary (token, node) VALUES ({}, {});",
            sql_literal(&token),
            sql_literal(&primary)
        );
        sql::query(&*ph.transport, &ph.layout, pn.port, &write, STATUS_TIMEOUT).await.map_err(|e| match e {
            QueryError::Sql(s) => Error::Sql { node: primary.clone(), action: "write the canary row".into(), source: s },
            QueryError::Transport(t) => Error::Transport { host: primary.clone(), action: "write the canary row".into(), source: t },
        })?;
        let written = Instant::now();
        let standbys: Vec<&Node> = cluster.nodes.iter().filter(|n| n.name != primary).collect();
        let checks = join_all(standbys.iter().map(|n| {
            let token = token.clone();
            let h = handles.iter().find(|h| h.name == n.name);
            async move {
                let Some(h) = h else {
                    return StandbyCheck {
                        node: n.name.clone(),
                        canary_seconds: None,
                        read_only: false,
                        error: Some("not deployed".into()),
                    };
                };
                let q = format!("SELECT count(*) FROM pgrepl.canary WHERE token = {};", sql_literal(&token));
                let mut seen = None;
                let mut last_err = None;
                let polls = (timeout.as_millis() / POLL_INTERVAL.as_millis()).max(1) as usize;
                for _ in 0..polls {
                    match sql::query_one(&*h.transport, &h.layout, n.port, &q, STATUS_TIMEOUT).await {
                        Ok(Some(c)) if c == "1" => {
                            seen = Some(written.elapsed().as_secs_f64());
                            break;
                        }
                        Ok(_) => {}
                        Err(e) => last_err = Some(e.to_string()),
                    }
                    if written.elapsed() > timeout {
                        break;
                    }
                    tokio::time::sleep(POLL_INTERVAL).await;
                }
                let attempt = format!("INSERT INTO pgrepl.canary (token, node) VALUES ('must-fail', {});", sql_literal(&n.name));
                let (read_only, ro_err) = match sql::query(&*h.transport, &h.layout, n.port, &attempt, STATUS_TIMEOUT).await {
                    Err(QueryError::Sql(s)) if s.sqlstate.as_deref() == Some("25006") => (true, None),
                    Err(e) => (false, Some(format!("write attempt failed unexpectedly: {e}"))),
                    Ok(_) => (false, Some("ACCEPTED A WRITE: it is not a read-only standby".into())),
                };
                let error = match (seen, ro_err) {
                    (_, Some(e)) => Some(e),
                    (None, None) => Some(format!(
                        "canary not seen within {}s{}",
                        timeout.as_secs(),
                        last_err.map(|e| format!(" (last error: {e})")).unwrap_or_default()
                    )),
                    _ => None,
                };
                StandbyCheck { node: n.name.clone(), canary_seconds: seen, read_only, error }
            }
        }))
        .await;
        Ok(VerifyReport { primary, token, standbys: checks, seconds: t0.elapsed().as_secs_f64() })
    }
}

/// One standby's verification.
#[derive(Debug, Clone, Serialize)]
pub struct StandbyCheck {
    /// Node.
    pub node: String,
    /// Seconds until the canary was visible, if it was.
    pub canary_seconds: Option<f64>,
    /// It refused a write with SQLSTATE 25006.
    pub read_only: bool,
    /// What failed.
    pub error: Option<String>,
}

/// The result of `verify`.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// The primary written to.
    pub primary: String,
    /// The canary's token.
    pub token: String,
    /// Each standby.
    pub standbys: Vec<StandbyCheck>,
    /// Wall time.
    pub seconds: f64,
}

impl VerifyReport {
    /// Every standby saw the canary and refused a write.
    pub fn ok(&self) -> bool {
        self.standbys.iter().all(|s| s.error.is_none() && s.read_only && s.canary_seconds.is_some())
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "canary {} written on {} (primary)", self.token, self.primary)?;
        for s in &self.standbys {
            match (&s.error, s.canary_seconds) {
                (None, Some(t)) => writeln!(f, "  {:<10} ok: canary visible after {:.3}s; writes refused (SQLSTATE 25006)", s.node, t)?,
                (Some(e), _) => writeln!(f, "  {:<10} FAILED: {e}", s.node)?,
                (None, None) => writeln!(f, "  {:<10} FAILED", s.node)?,
            }
        }
        write!(f, "{}", if self.ok() { "verify: ok\n" } else { "verify: FAILED\n" })
    }
}

impl fmt::Display for StatusReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "cluster {} (PostgreSQL {})", self.cluster, self.major.as_deref().unwrap_or("?"))?;
        writeln!(
            f,
            "{:<10} {:<17} {:<8} {:<12} {:>3} {:<12} {:>10} {:>8} {:<9} {:<10} {}",
            "NODE", "ENDPOINT", "ROLE", "STATE", "TL", "LSN", "LAG", "LAG(s)", "SYNC", "UPSTREAM", "SLOT"
        )?;
        for n in &self.nodes {
            let state = match (&n.state, n.streaming) {
                (NodeState::Running, Some(true)) => "streaming".to_string(),
                (NodeState::Running, Some(false)) => "not streaming".to_string(),
                (NodeState::Running, None) => "running".to_string(),
                (NodeState::Stopped, _) => "stopped".into(),
                (NodeState::NotDeployed, _) => "not deployed".into(),
                (NodeState::Unreachable, _) => "UNREACHABLE".into(),
            };
            let slot = match (&n.slot, n.slot_active, &n.state) {
                (Some(s), Some(true), _) => format!("{s} (active)"),
                (Some(s), Some(false), _) => format!("{s} (inactive)"),
                (Some(s), None, NodeState::Running) => format!("{s} (missing on upstream)"),
                (Some(s), None, _) => s.clone(),
                (None, _, _) => "-".into(),
            };
            writeln!(
                f,
                "{:<10} {:<17} {:<8} {:<12} {:>3} {:<12} {:>10} {:>8} {:<9} {:<10} {}",
                n.name,
                n.endpoint,
                n.role.as_deref().unwrap_or("-"),
                state,
                n.timeline.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
                n.lsn.as_deref().unwrap_or("-"),
                n.lag_bytes.map(human_bytes).unwrap_or_else(|| "-".into()),
                n.lag_seconds.map(|s| format!("{s:.3}")).unwrap_or_else(|| "-".into()),
                n.sync_state.as_deref().unwrap_or("-"),
                n.upstream.as_deref().unwrap_or("-"),
                slot
            )?;
        }
        writeln!(f, "writes: {}", self.connections.read_write)?;
        writeln!(f, "reads:  {}", self.connections.read_only)?;
        if self.problems.is_empty() {
            writeln!(f, "healthy: one primary, every standby streaming")
        } else {
            for p in &self.problems {
                writeln!(f, "problem: {p}")?;
            }
            Ok(())
        }
    }
}

/// An error and its causes on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    for _ in 0..8 {
        let Some(c) = cur else { break };
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn human_bytes(b: u64) -> String {
    match b {
        0..1024 => format!("{b} B"),
        1024..1_048_576 => format!("{:.1} kB", b as f64 / 1024.0),
        _ => format!("{:.1} MB", b as f64 / 1_048_576.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_arithmetic() {
        assert_eq!(lsn_diff("0/3000060", "0/3000000"), Some(0x60));
        assert_eq!(lsn_diff("1/0", "0/FFFFFFFF"), Some(1));
        assert_eq!(lsn_diff("0/1", "0/2"), Some(0));
        assert_eq!(lsn_diff("junk", "0/2"), None);
    }
}
