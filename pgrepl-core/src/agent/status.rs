//! What an agent knows after each loop, for its HTTP endpoint (health checks for HAProxy,
//! `/cluster`, `/metrics`): [`AgentStatus`], built by a pure function of the loop's
//! observation, the store's view and the lease clock; and the health rules
//! ([`AgentStatus::primary_ok`], [`AgentStatus::replica_ok`]) that answer 200 or 503.

use serde::Serialize;

use crate::lsn::Lsn;
use crate::observe::{Observed, Slot};
use crate::store::{MemberRecord, MemberRole, StoreView};
use crate::topology::{PromotionKind, SyncRecord};

/// One standby as its primary sees it (a row of `pg_stat_replication`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StandbyStat {
    /// The standby (`application_name`).
    pub name: String,
    /// `streaming`, `catchup`, ...
    pub state: String,
    /// `sync`, `quorum`, `potential`, `async`.
    pub sync_state: String,
    /// WAL it has still to replay, in bytes.
    pub lag_bytes: Option<u64>,
    /// `replay_lag` in seconds.
    pub lag_seconds: Option<f64>,
}

/// An agent's status after a loop.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct AgentStatus {
    /// The cluster.
    pub cluster: String,
    /// This agent's node.
    pub node: String,
    /// Loops run so far (0: none yet, nothing is known).
    pub loops: u64,
    /// Its PostgreSQL accepts connections.
    pub postgres_up: bool,
    /// What its server is (`None` before the first loop).
    pub role: Option<MemberRole>,
    /// Its timeline.
    pub timeline: Option<u32>,
    /// Its WAL position: a primary's current one, a standby's last received.
    pub lsn: Option<Lsn>,
    /// A standby's last replayed position.
    pub replay_lsn: Option<Lsn>,
    /// A standby's WAL receiver streams.
    pub streaming: bool,
    /// The node a standby streams from.
    pub upstream: Option<String>,
    /// Seconds since the last transaction a standby replayed committed on the primary.
    pub replay_delay_seconds: Option<f64>,
    /// The node holding the leader key, as last read.
    pub leader: Option<String>,
    /// This node holds the leader key and its lease is fresh on the agent's clock.
    pub holds_lease: bool,
    /// How long this node may still accept writes without a renewal (its leader lease,
    /// less the safety margin), in milliseconds.
    pub lease_left_ms: Option<u64>,
    /// The store answered the last read.
    pub store_reachable: bool,
    /// Why not, when it did not.
    pub store_error: Option<String>,
    /// The agents are paused.
    pub paused: bool,
    /// A standby's distance behind the leader's last published position, in bytes.
    pub lag_bytes: Option<u64>,
    /// A primary's standbys.
    pub standbys: Vec<StandbyStat>,
    /// The node's physical replication slots and the WAL they retain.
    pub slots: Vec<Slot>,
    /// The synchronous set in the store.
    pub sync: Option<SyncRecord>,
    /// Every member's last report.
    pub members: Vec<MemberRecord>,
    /// Failovers recorded in the topology's history.
    pub failovers: u64,
    /// Switchovers recorded there.
    pub switchovers: u64,
    /// How long the last failover's promotion took, in milliseconds.
    pub last_failover_ms: Option<u64>,
    /// The decision of the last loop, in words.
    pub why: String,
    /// When the loop ended (on this process's monotonic clock): the lease left is counted
    /// down from it when a check is answered later.
    #[serde(skip)]
    pub at: Option<std::time::Instant>,
}

/// What a loop saw, for [`AgentStatus::of`].
#[derive(Debug, Clone, Copy)]
pub struct LoopFacts<'a> {
    /// The cluster.
    pub cluster: &'a str,
    /// This node.
    pub me: &'a str,
    /// Its server.
    pub local: &'a Observed,
    /// The store's view, or why it could not be read.
    pub store: Result<&'a StoreView, &'a str>,
    /// The time this node may still accept writes on its own lease (`None`: it has none
    /// fresh).
    pub write_time_left: Option<std::time::Duration>,
    /// The decision in words.
    pub why: &'a str,
}

impl AgentStatus {
    /// The status after loop number `loops`.
    pub fn of(f: &LoopFacts<'_>, loops: u64) -> AgentStatus {
        let o = f.local;
        let role = MemberRole::of(o);
        let view = f.store.ok();
        let leader = view.and_then(|v| v.leader_node()).map(String::from);
        let holds_lease = leader.as_deref() == Some(f.me) && f.write_time_left.is_some_and(|d| !d.is_zero());
        // A standby's lag: from the leader's last published position (its member record,
        // or the position key it keeps) to what this standby replayed.
        let leader_lsn = view.and_then(|v| {
            let l = v.leader_node()?;
            let m = v.member(l).and_then(|m| m.lsn);
            let p = v.position.as_ref().filter(|p| p.value.node == l).map(|p| p.value.lsn);
            m.max(p)
        });
        let replay = o.lsn.filter(|_| o.standby());
        let lag_bytes = match (role, leader_lsn, replay) {
            (MemberRole::Standby, Some(l), Some(r)) => Some(l.0.saturating_sub(r.0)),
            _ => None,
        };
        let topo = view.map(|v| v.topology()).unwrap_or_default();
        AgentStatus {
            cluster: f.cluster.to_string(),
            node: f.me.to_string(),
            loops,
            postgres_up: o.runs(),
            role: Some(role),
            timeline: o.timeline,
            lsn: if o.standby() { o.receive_lsn.or(o.lsn) } else { o.lsn },
            replay_lsn: replay,
            streaming: o.receiver.as_deref() == Some("streaming"),
            upstream: None,
            replay_delay_seconds: o.replay_age_seconds.filter(|_| o.standby()),
            leader,
            holds_lease,
            lease_left_ms: f.write_time_left.map(|d| d.as_millis() as u64),
            store_reachable: f.store.is_ok(),
            store_error: f.store.err().map(String::from),
            paused: view.is_some_and(|v| v.settings().paused),
            lag_bytes,
            standbys: if o.writable() {
                o.senders
                    .iter()
                    .map(|s| StandbyStat {
                        name: s.name.clone(),
                        state: s.state.clone(),
                        sync_state: s.sync_state.clone(),
                        lag_bytes: s.replay_lag_bytes,
                        lag_seconds: s.replay_lag_seconds,
                    })
                    .collect()
            } else {
                Vec::new()
            },
            slots: o.slots.clone(),
            sync: view.and_then(|v| v.sync.as_ref().map(|s| s.value.clone())),
            members: view.map(|v| v.members.values().map(|m| m.value.clone()).collect()).unwrap_or_default(),
            failovers: topo.promotions(PromotionKind::Failover) as u64,
            switchovers: topo.promotions(PromotionKind::Switchover) as u64,
            last_failover_ms: topo.history.iter().rev().find(|p| p.kind == PromotionKind::Failover).map(|p| p.millis),
            why: f.why.to_string(),
            at: Some(std::time::Instant::now()),
        }
    }

    /// `/primary`: this node holds the leader key on a lease still fresh now (counted down
    /// from when the loop ended: a loop that hangs does not keep it the primary) and its
    /// server accepts writes.
    pub fn primary_ok(&self) -> bool {
        let fresh = match (self.at, self.lease_left_ms) {
            (Some(at), Some(left)) => at.elapsed() < std::time::Duration::from_millis(left),
            (None, Some(left)) => left > 0,
            _ => false,
        };
        self.postgres_up && self.role == Some(MemberRole::Primary) && self.holds_lease && fresh
    }

    /// `/replica`: a running standby whose WAL receiver streams and which is at most
    /// `max_lag` bytes behind the leader's last published position (unknown: not ok).
    pub fn replica_ok(&self, max_lag: u64) -> bool {
        self.postgres_up && self.role == Some(MemberRole::Standby) && self.streaming && self.lag_bytes.is_some_and(|l| l <= max_lag)
    }

    /// `/read-only`: the primary, or a standby as [`replica_ok`](Self::replica_ok).
    pub fn read_only_ok(&self, max_lag: u64) -> bool {
        self.primary_ok() || self.replica_ok(max_lag)
    }

    /// `/health`: its PostgreSQL runs and answers; a witness's: the store answers it.
    pub fn health_ok(&self) -> bool {
        self.postgres_up || (self.role == Some(MemberRole::Witness) && self.store_reachable)
    }
}

/// A size as PostgreSQL writes them (`16MB`, `1kB`, `2GB`, `512`: bytes; units of 1024,
/// `B`, `kB`, `MB`, `GB`, `TB`, also `KiB`, `MiB`, `GiB`, `TiB`), for `?lag=`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("\"{s}\" is not a size (e.g. 16MB, 1kB, 1048576)"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" | "KB" | "KiB" | "k" | "K" => 1 << 10,
        "MB" | "MiB" | "M" => 1 << 20,
        "GB" | "GiB" | "G" => 1 << 30,
        "TB" | "TiB" | "T" => 1 << 40,
        u => return Err(format!("\"{s}\": unknown unit \"{u}\" (B, kB, MB, GB, TB)")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("\"{s}\" is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::ServerState;
    use crate::store::{KeyValue, Keys, LeaderRecord, Snapshot};

    fn view(leader: Option<&str>, leader_lsn: u64) -> StoreView {
        let keys = Keys::new("c");
        let mut kvs = Vec::new();
        let kv = |key: String, value: Vec<u8>| KeyValue { key, value, create_revision: 1, mod_revision: 1, lease: Some(7) };
        if let Some(l) = leader {
            kvs.push(kv(keys.leader(), serde_json::to_vec(&LeaderRecord { node: l.into(), timeline: Some(1) }).unwrap()));
            let m = MemberRecord {
                timeline: Some(1),
                lsn: Some(Lsn(leader_lsn)),
                leader_seen: Some(l.into()),
                ..MemberRecord::new(l, MemberRole::Primary)
            };
            kvs.push(kv(keys.member(l), serde_json::to_vec(&m).unwrap()));
        }
        StoreView::parse(&keys, &Snapshot { revision: 1, kvs })
    }

    fn node(primary: bool, lsn: u64, receiver: Option<&str>) -> Observed {
        let mut o = Observed::unknown("n");
        o.host_reachable = true;
        o.server = ServerState::Running;
        o.in_recovery = Some(!primary);
        o.lsn = Some(Lsn(lsn));
        o.receive_lsn = (!primary).then_some(Lsn(lsn));
        o.receiver = receiver.map(String::from);
        o
    }

    fn status(me: &str, o: &Observed, v: Result<&StoreView, &str>, left: Option<u64>) -> AgentStatus {
        AgentStatus::of(
            &LoopFacts { cluster: "c", me, local: o, store: v, write_time_left: left.map(std::time::Duration::from_millis), why: "test" },
            1,
        )
    }

    #[test]
    fn primary_only_with_the_key_a_fresh_lease_and_writes() {
        let v = view(Some("db1"), 1000);
        let p = node(true, 1000, None);
        assert!(status("db1", &p, Ok(&v), Some(1500)).primary_ok());
        // No lease left on its own clock, the key another node's, the store unreadable,
        // or the server in recovery: not the primary.
        assert!(!status("db1", &p, Ok(&v), Some(0)).primary_ok());
        // The lease counted down since the loop: a status not refreshed in time stops
        // answering as the primary.
        let mut old = status("db1", &p, Ok(&v), Some(1500));
        old.at = Some(std::time::Instant::now() - std::time::Duration::from_secs(2));
        assert!(!old.primary_ok());
        assert!(!status("db1", &p, Ok(&v), None).primary_ok());
        assert!(!status("db2", &p, Ok(&v), Some(1500)).primary_ok());
        assert!(!status("db1", &p, Err("down"), Some(1500)).primary_ok());
        assert!(!status("db1", &node(false, 1000, Some("streaming")), Ok(&v), Some(1500)).primary_ok());
        let mut stopped = p.clone();
        stopped.server = ServerState::Stopped;
        assert!(!status("db1", &stopped, Ok(&v), Some(1500)).primary_ok());
    }

    #[test]
    fn replica_streams_within_the_lag() {
        let v = view(Some("db1"), 10_000);
        let s = status("db2", &node(false, 9_000, Some("streaming")), Ok(&v), None);
        assert_eq!(s.lag_bytes, Some(1_000));
        assert!(s.replica_ok(1_000) && !s.replica_ok(999));
        assert!(s.read_only_ok(1_000) && !s.primary_ok());
        // Not streaming, or no leader to measure against: not a replica to route to.
        assert!(!status("db2", &node(false, 10_000, Some("waiting")), Ok(&v), None).replica_ok(u64::MAX));
        assert!(!status("db2", &node(false, 10_000, Some("streaming")), Ok(&view(None, 0)), None).replica_ok(u64::MAX));
        // Ahead of the leader's last published position (published once a loop): no lag.
        assert_eq!(status("db2", &node(false, 12_000, Some("streaming")), Ok(&v), None).lag_bytes, Some(0));
        // A primary is never a replica.
        assert!(!status("db1", &node(true, 10_000, None), Ok(&v), Some(1000)).replica_ok(u64::MAX));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16MB"), Ok(16 << 20));
        assert_eq!(parse_size("1kB"), Ok(1024));
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert!(parse_size("16 parsecs").unwrap_err().contains("unknown unit"));
        assert!(parse_size("MB").unwrap_err().contains("not a size"));
        assert!(parse_size("99999999999TB").unwrap_err().contains("too large"));
    }
}
