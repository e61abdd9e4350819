//! Observing a cluster: `status` (roles, timelines, positions, lag, sync state, slots),
//! `verify` (a canary write must reach every standby, and standbys must refuse writes),
//! and connection strings for applications.

use std::fmt;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde::Serialize;

use crate::cluster::{Cluster, Node};
use crate::deploy::{Deployment, POLL_INTERVAL};
use crate::error::Error;
use crate::lsn::Lsn;
use crate::observe::{DataDirState, Observed, ObservedCluster};
use crate::render::sql_literal;
use crate::spec::Role;
use crate::sql::{self, QueryError};

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
    pub lsn: Option<Lsn>,
    /// Last received position (standby).
    pub receive_lsn: Option<Lsn>,
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
    /// The settings changed in its files that wait for a restart (`pg_settings.pending_restart`);
    /// empty: none; `None`: unknown (it did not answer, or before 9.5 the server cannot tell).
    pub pending_restart: Option<Vec<String>>,
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

/// The status of a cluster from one observation (pure).
pub fn status_report(cluster: &Cluster, observed: &ObservedCluster, major: Option<String>) -> StatusReport {
    let primaries: Vec<&Observed> = observed.nodes.iter().filter(|o| o.writable()).collect();
    let primary_lsn = primaries.first().and_then(|o| o.lsn);
    let mut problems = Vec::new();
    if primaries.is_empty() {
        problems.push("no running primary".to_string());
    } else if primaries.len() > 1 {
        problems.push(format!(
            "{} nodes accept writes: {}",
            primaries.len(),
            primaries.iter().map(|o| o.node.as_str()).collect::<Vec<_>>().join(", ")
        ));
    }
    let mut nodes = Vec::new();
    for n in &cluster.nodes {
        let o = observed.get(&n.name);
        let (state, answered) = if !o.host_reachable {
            (NodeState::Unreachable, false)
        } else if o.answered() {
            (NodeState::Running, true)
        } else if o.runs() {
            (NodeState::Unreachable, false)
        } else if matches!(o.data_dir, Some(DataDirState::Missing) | None) {
            (NodeState::NotDeployed, false)
        } else {
            (NodeState::Stopped, false)
        };
        let up_obs = n.upstream.as_deref().map(|u| observed.get(u)).filter(|u| u.answered());
        let sender = up_obs.and_then(|uo| uo.senders.iter().find(|s| s.name == n.name));
        let slot_row = n.slot.as_ref().and_then(|s| up_obs.and_then(|uo| uo.slots.iter().find(|x| &x.name == s)));
        let in_recovery = answered && o.in_recovery == Some(true);
        let lag_bytes = match (answered, in_recovery, o.lsn, primary_lsn) {
            (true, true, Some(l), Some(p)) => Some(p.bytes_after(l)),
            (true, false, _, _) => Some(0),
            _ => None,
        };
        let lag_seconds = match (answered, lag_bytes) {
            (true, Some(b)) if in_recovery => {
                Some(if b == 0 { 0.0 } else { sender.and_then(|s| s.replay_lag_seconds).or(o.replay_age_seconds).unwrap_or(0.0) })
            }
            (true, Some(_)) => Some(0.0),
            _ => None,
        };
        let status = NodeStatus {
            name: n.name.clone(),
            spec_role: n.role,
            endpoint: format!("{}:{}", n.address_or_placeholder(), n.port),
            state: state.clone(),
            role: answered.then(|| if in_recovery { "standby".into() } else { "primary".into() }),
            timeline: if answered { o.timeline } else { None },
            lsn: if answered { o.lsn } else { None },
            receive_lsn: if answered { o.receive_lsn } else { None },
            lag_bytes,
            lag_seconds,
            streaming: in_recovery.then(|| sender.is_some_and(|s| s.state == "streaming")),
            sync_state: sender.map(|s| s.sync_state.clone()),
            slot: n.slot.clone(),
            slot_active: slot_row.map(|s| s.active),
            upstream: n.upstream.clone(),
            error: if answered { None } else { o.error.clone() },
            pending_restart: o.settings.as_ref().and_then(|s| s.pending_restart.clone()),
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
                status.error.as_ref().map(|e| format!(" ({e})")).unwrap_or_default()
            )),
        }
        if let (Some(slot), Some(false)) = (&status.slot, status.slot_active) {
            if status.streaming == Some(true) {
                problems.push(format!("{}: slot {slot} is not active", n.name));
            }
        }
        nodes.push(status);
    }
    StatusReport { cluster: cluster.name.clone(), major, nodes, problems, connections: connection_strings(cluster) }
}

impl Deployment {
    /// Observes every node (one probe each, see [`crate::observe`]). Never fails as a
    /// whole: an unreachable node is reported as such, and a deployment whose major is
    /// unknown reports that.
    pub async fn status(&self) -> StatusReport {
        let connections = connection_strings(&self.cluster);
        let major = self.cluster.major.map(|m| m.to_string());
        let (cluster, handles, mut observed) = match self.observe().await {
            Ok(x) => x,
            Err(e) => {
                return StatusReport {
                    cluster: self.cluster.name.clone(),
                    major,
                    nodes: Vec::new(),
                    problems: vec![format!("could not observe the cluster: {}", crate::error::chain(&e))],
                    connections,
                };
            }
        };
        if let Some(caps) = cluster.caps() {
            crate::observe::probe::observe_settings(&cluster, &handles, &caps, &mut observed).await;
        }
        status_report(&cluster, &observed, major)
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
            "{:<10} {:<17} {:<8} {:<12} {:>3} {:<12} {:>10} {:>8} {:<9} {:<10} SLOT",
            "NODE", "ENDPOINT", "ROLE", "STATE", "TL", "LSN", "LAG", "LAG(s)", "SYNC", "UPSTREAM"
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
                n.lsn.map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
                n.lag_bytes.map(human_bytes).unwrap_or_else(|| "-".into()),
                n.lag_seconds.map(|s| format!("{s:.3}")).unwrap_or_else(|| "-".into()),
                n.sync_state.as_deref().unwrap_or("-"),
                n.upstream.as_deref().unwrap_or("-"),
                slot
            )?;
        }
        let pending: Vec<String> = self
            .nodes
            .iter()
            .filter_map(|n| match (&n.pending_restart, &n.state) {
                (Some(p), _) if !p.is_empty() => Some(format!("{} ({})", n.name, p.join(", "))),
                (None, NodeState::Running) if self.major.as_deref().is_some_and(|m| m.starts_with("9.") && m < "9.5") => {
                    Some(format!("{} (unknown: before 9.5 the server cannot tell)", n.name))
                }
                _ => None,
            })
            .collect();
        if !pending.is_empty() {
            writeln!(f, "pending restart: {}: `pgrepl restart --rolling` applies it", pending.join("; "))?;
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

    fn cluster() -> Cluster {
        crate::observe::fixtures::three_nodes("")
    }

    #[test]
    fn status_from_one_observation() {
        let c = cluster();
        let mut p = Observed::unknown("db1");
        p.host_reachable = true;
        crate::observe::apply_probe_rows(
            &mut p,
            &[
                vec![
                    Some("n".into()),
                    Some("f".into()),
                    Some("0/3000060".into()),
                    None,
                    Some("x00000001".into()),
                    None,
                    None,
                    Some(String::new()),
                ],
                vec![Some("r".into()), Some("db2".into()), Some("streaming".into()), Some("async".into()), Some("0.25".into())],
                vec![Some("s".into()), c.node("db2").unwrap().slot.clone(), Some("t".into())],
            ],
        );
        let mut s2 = Observed::unknown("db2");
        s2.host_reachable = true;
        crate::observe::apply_probe_rows(
            &mut s2,
            &[vec![
                Some("n".into()),
                Some("t".into()),
                Some("0/3000000".into()),
                Some("0/3000060".into()),
                Some("1".into()),
                Some("streaming".into()),
                Some("1.5".into()),
                Some(String::new()),
            ]],
        );
        let mut s3 = Observed::unknown("db3");
        s3.host_reachable = true;
        s3.server = crate::observe::ServerState::Stopped;
        s3.data_dir = Some(DataDirState::Cluster);
        let obs = ObservedCluster { nodes: vec![p, s2, s3], topology: Default::default() };
        let r = status_report(&c, &obs, Some("16".into()));
        assert_eq!(r.nodes[0].role.as_deref(), Some("primary"));
        assert_eq!(r.nodes[1].lag_bytes, Some(0x60));
        assert_eq!(r.nodes[1].lag_seconds, Some(0.25), "the walsender's replay_lag first");
        assert_eq!(r.nodes[1].streaming, Some(true));
        assert_eq!(r.nodes[1].slot_active, Some(true));
        assert_eq!(r.nodes[2].state, NodeState::Stopped);
        assert_eq!(r.problems, vec!["db3: stopped".to_string()]);
        assert!(!r.healthy());
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["nodes"][0]["lsn"], "0/3000060", "LSNs stay strings in JSON");
    }
}
