//! One observed state: what a probe of each node found, as plain data.
//!
//! [`Observed`] is one node (its host, its server, its role, positions, replication
//! peers, slots, the synchronous standbys it actually runs with, its `pg_control` state
//! when it does not answer); [`ObservedCluster`] is every node plus what pgrepl recorded
//! ([`Topology`]). `status`, `verify` and the planners of [`crate::plan`] read these and
//! nothing else, so a decision is a pure function of an observation. The probe that fills
//! them (one SQL round trip per answering node) is [`probe`] (feature `runtime`).

#[cfg(test)]
pub(crate) mod fixtures;
#[cfg(feature = "runtime")]
pub mod probe;
#[cfg(feature = "runtime")]
pub mod server_state;

use serde::Serialize;

use crate::lsn::Lsn;
use crate::pgcontrol::DbState;
use crate::topology::Topology;

/// Whether and how a node's server runs, as far as its host can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerState {
    /// It runs and answered a query.
    Running,
    /// It runs but refuses connections while it starts up (or recovers from a crash).
    Starting,
    /// It runs but did not answer (hung, overloaded, shutting down).
    Unresponsive,
    /// No server runs on its data directory.
    Stopped,
    /// Nothing could be learned: the host did not answer.
    Unknown,
}

/// What a node's data directory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DataDirState {
    /// Absent or empty.
    Missing,
    /// Files, but no PostgreSQL cluster (no `PG_VERSION`).
    Foreign,
    /// A cluster.
    Cluster,
}

/// A walsender of a node (a row of `pg_stat_replication`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sender {
    /// `application_name` (pgrepl sets it to the standby's node name).
    pub name: String,
    /// `streaming`, `catchup`, `startup`, `backup`, `stopping`.
    pub state: String,
    /// `sync`, `quorum`, `potential`, `async`.
    pub sync_state: String,
    /// `replay_lag` in seconds (10+).
    pub replay_lag_seconds: Option<f64>,
    /// The bytes of WAL the standby has still to replay (the primary's current position
    /// minus its `replay_lsn`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_lag_bytes: Option<u64>,
}

/// A physical replication slot on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Slot {
    /// Its name.
    pub name: String,
    /// A walsender uses it now.
    pub active: bool,
    /// The WAL it keeps from being removed, in bytes (from its `restart_lsn` to the
    /// node's current position).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retained_bytes: Option<u64>,
}

/// One node as observed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Observed {
    /// The node.
    pub node: String,
    /// Its host answered (a command ran there).
    pub host_reachable: bool,
    /// Its server.
    pub server: ServerState,
    /// In recovery (a standby) or not (it accepts writes); `None` when it did not answer.
    pub in_recovery: Option<bool>,
    /// Its timeline.
    pub timeline: Option<u32>,
    /// Primary: its current WAL position; standby: the last replayed.
    pub lsn: Option<Lsn>,
    /// Standby: the last position received and flushed.
    pub receive_lsn: Option<Lsn>,
    /// Standby: seconds since the last replayed transaction's commit.
    pub replay_age_seconds: Option<f64>,
    /// Standby: its walreceiver's status (`streaming`, `waiting`, ...; 9.6+).
    pub receiver: Option<String>,
    /// `synchronous_standby_names` as the server runs with it (`None` when it did not answer).
    pub synchronous_standby_names: Option<String>,
    /// Its walsenders.
    pub senders: Vec<Sender>,
    /// Its physical slots.
    pub slots: Vec<Slot>,
    /// The state in `global/pg_control`, read when the server does not answer.
    pub control_state: Option<DbState>,
    /// Its data directory is set up as a standby's (standby.signal or recovery.conf),
    /// checked when the server does not answer.
    pub standby_configured: Option<bool>,
    /// What its data directory holds, checked when the server does not answer.
    pub data_dir: Option<DataDirState>,
    /// pgrepl's marker of a clone under way is there (a clone was interrupted), checked
    /// when the server does not answer.
    pub unfinished_clone: bool,
    /// Recorded as fenced by a failover.
    pub fenced: bool,
    /// When its host cannot be reached: signs, seen from elsewhere, that its server still runs.
    pub alive_evidence: Vec<String>,
    /// What went wrong observing it.
    pub error: Option<String>,
    /// Its settings as far as a restart is concerned (read by `status`, `up` and
    /// `restart`, not by the probe of the HA operations); `None` when not read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<RestartSettings>,
}

/// The parameters whose value on a hot standby must be at least the primary's
/// (PostgreSQL checks them against the values the primary wrote to its WAL): raising one
/// restarts the standbys first, lowering one the primary first.
pub const STANDBY_LIMITS: [&str; 5] =
    ["max_connections", "max_worker_processes", "max_wal_senders", "max_prepared_transactions", "max_locks_per_transaction"];

/// A node's settings as far as a restart is concerned: what waits for one, and the
/// [`STANDBY_LIMITS`] as it runs with them and as its files say.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct RestartSettings {
    /// The settings changed in its files that take effect only at a restart
    /// (`pg_settings.pending_restart`, 9.5+); `None`: the server cannot tell (before 9.5).
    pub pending_restart: Option<Vec<String>>,
    /// Each of [`STANDBY_LIMITS`]: the value it runs with, and the value it will run with
    /// after a restart (its files', or the built-in default when no file sets it; the
    /// running value when the server cannot tell).
    pub limits: Vec<LimitValue>,
}

/// One of [`STANDBY_LIMITS`] on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LimitValue {
    /// The parameter.
    pub name: String,
    /// The value it runs with.
    pub running: i64,
    /// The value after a restart.
    pub next: i64,
}

impl RestartSettings {
    /// Whether a restart would change something (unknown before 9.5: `None`).
    pub fn pending(&self) -> Option<bool> {
        self.pending_restart.as_ref().map(|p| !p.is_empty())
    }

    /// The value of `name` it runs with, or after a restart (`next`).
    pub fn limit(&self, name: &str, next: bool) -> Option<i64> {
        self.limits.iter().find(|l| l.name == name).map(|l| if next { l.next } else { l.running })
    }
}

/// Fills [`RestartSettings`] from the rows of [`crate::observe::probe::settings_sql`]:
/// `p` rows (name, running value, pending_restart, the files' value, the built-in default).
pub fn parse_settings_rows(rows: &[Vec<Option<String>>], knows_pending: bool) -> RestartSettings {
    let mut s = RestartSettings { pending_restart: knows_pending.then(Vec::new), limits: Vec::new() };
    for r in rows {
        let f = |i: usize| r.get(i).cloned().flatten();
        if f(0).as_deref() != Some("p") {
            continue;
        }
        let Some(name) = f(1) else { continue };
        if f(3).as_deref() == Some("t") {
            if let Some(p) = s.pending_restart.as_mut() {
                p.push(name.clone());
            }
        }
        if STANDBY_LIMITS.contains(&name.as_str()) {
            let Some(running) = f(2).and_then(|v| v.trim().parse::<i64>().ok()) else { continue };
            let next = if knows_pending {
                f(4).or_else(|| f(5)).and_then(|v| v.trim().trim_matches('\'').parse::<i64>().ok()).unwrap_or(running)
            } else {
                running
            };
            s.limits.push(LimitValue { name, running, next });
        }
    }
    if let Some(p) = s.pending_restart.as_mut() {
        p.sort();
        p.dedup();
    }
    s
}

impl Observed {
    /// A node about which nothing is known yet.
    pub fn unknown(node: &str) -> Observed {
        Observed {
            node: node.to_string(),
            host_reachable: false,
            server: ServerState::Unknown,
            in_recovery: None,
            timeline: None,
            lsn: None,
            receive_lsn: None,
            replay_age_seconds: None,
            receiver: None,
            synchronous_standby_names: None,
            senders: Vec::new(),
            slots: Vec::new(),
            control_state: None,
            standby_configured: None,
            data_dir: None,
            unfinished_clone: false,
            fenced: false,
            alive_evidence: Vec::new(),
            error: None,
            settings: None,
        }
    }

    /// It answered.
    pub fn answered(&self) -> bool {
        self.server == ServerState::Running && self.in_recovery.is_some()
    }

    /// It answered and accepts writes.
    pub fn writable(&self) -> bool {
        self.answered() && self.in_recovery == Some(false)
    }

    /// It answered and is in recovery.
    pub fn standby(&self) -> bool {
        self.answered() && self.in_recovery == Some(true)
    }

    /// A server process runs (whether or not it answered).
    pub fn runs(&self) -> bool {
        matches!(self.server, ServerState::Running | ServerState::Starting | ServerState::Unresponsive)
    }

    /// Its host answered and no server runs.
    pub fn stopped(&self) -> bool {
        self.host_reachable && self.server == ServerState::Stopped
    }

    /// It streams WAL to `name` (a walsender in state `streaming`).
    pub fn streams_to(&self, name: &str) -> bool {
        self.senders.iter().any(|s| s.name == name && s.state == "streaming")
    }

    /// The most WAL it has: received or replayed, whichever is further.
    pub fn position(&self) -> Option<Lsn> {
        self.receive_lsn.max(self.lsn)
    }

    /// Whether it may accept writes now or without pgrepl: it answers as a primary, or it
    /// runs without answering and its data directory is not a standby's.
    pub fn may_accept_writes(&self) -> bool {
        self.writable() || (self.runs() && !self.answered() && self.standby_configured != Some(true))
    }
}

/// Every node of a cluster as observed, with what pgrepl recorded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ObservedCluster {
    /// Nodes in cluster order.
    pub nodes: Vec<Observed>,
    /// What pgrepl recorded (fenced nodes, the synchronous set, the current primary).
    pub topology: Topology,
}

impl ObservedCluster {
    /// The node `name` (an unknown one when it was not observed).
    pub fn get(&self, name: &str) -> &Observed {
        static NONE: std::sync::OnceLock<Observed> = std::sync::OnceLock::new();
        self.nodes.iter().find(|o| o.node == name).unwrap_or_else(|| NONE.get_or_init(|| Observed::unknown("")))
    }

    /// The nodes that answered as primaries.
    pub fn writable(&self) -> Vec<String> {
        self.nodes.iter().filter(|o| o.writable()).map(|o| o.node.clone()).collect()
    }

    /// The newest timeline any node reports, or the recorded one.
    pub fn newest_timeline(&self) -> Option<u32> {
        self.nodes.iter().filter_map(|o| o.timeline).chain(self.topology.timeline).max()
    }
}

/// Parses a timeline as the probe reports it: decimal, or `x` and hexadecimal (from a WAL
/// file name).
pub fn parse_timeline(t: &str) -> Option<u32> {
    match t.strip_prefix('x') {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => t.parse().ok(),
    }
}

/// Fills a node's fields from the rows of the probe query (see [`probe`]): `n` (the
/// node), `r` (walsenders), `s` (slots). Pure, so every shape of answer is unit-tested.
pub fn apply_probe_rows(o: &mut Observed, rows: &[Vec<Option<String>>]) {
    for r in rows {
        let f = |i: usize| r.get(i).cloned().flatten();
        match f(0).as_deref() {
            Some("n") => {
                o.server = ServerState::Running;
                o.in_recovery = Some(f(1).as_deref() == Some("t"));
                o.lsn = f(2).and_then(|l| l.parse().ok());
                o.receive_lsn = f(3).and_then(|l| l.parse().ok());
                o.timeline = f(4).and_then(|t| parse_timeline(&t));
                o.receiver = f(5);
                o.replay_age_seconds = f(6).and_then(|s| s.parse().ok());
                o.synchronous_standby_names = Some(f(7).unwrap_or_default());
            }
            Some("r") => o.senders.push(Sender {
                name: f(1).unwrap_or_default(),
                state: f(2).unwrap_or_default(),
                sync_state: f(3).unwrap_or_default(),
                replay_lag_seconds: f(4).and_then(|s| s.parse().ok()),
                replay_lag_bytes: f(5).and_then(|s| s.parse().ok()),
            }),
            Some("s") => o.slots.push(Slot {
                name: f(1).unwrap_or_default(),
                active: f(2).as_deref() == Some("t"),
                retained_bytes: f(3).and_then(|s| s.parse().ok()),
            }),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(v: &[Option<&str>]) -> Vec<Option<String>> {
        v.iter().map(|x| x.map(str::to_string)).collect()
    }

    #[test]
    fn probe_rows_of_a_primary_and_a_standby() {
        let mut p = Observed::unknown("db1");
        p.host_reachable = true;
        apply_probe_rows(
            &mut p,
            &[
                row(&[Some("n"), Some("f"), Some("0/3000060"), None, Some("x00000002"), None, None, Some("FIRST 1 (db2, db3)")]),
                row(&[Some("r"), Some("db2"), Some("streaming"), Some("sync"), Some("0.001")]),
                row(&[Some("r"), Some("db3"), Some("catchup"), Some("potential"), None]),
                row(&[Some("s"), Some("db2"), Some("t")]),
            ],
        );
        assert!(p.writable() && !p.standby());
        assert_eq!(p.timeline, Some(2));
        assert_eq!(p.lsn, Some(Lsn(0x3000060)));
        assert!(p.streams_to("db2") && !p.streams_to("db3"));
        assert_eq!(p.synchronous_standby_names.as_deref(), Some("FIRST 1 (db2, db3)"));
        assert_eq!(p.slots, vec![Slot { name: "db2".into(), active: true, retained_bytes: None }]);

        let mut s = Observed::unknown("db2");
        apply_probe_rows(
            &mut s,
            &[row(&[Some("n"), Some("t"), Some("0/3000000"), Some("0/3000060"), Some("2"), Some("streaming"), Some("0.5"), Some("")])],
        );
        assert!(s.standby() && !s.may_accept_writes());
        assert_eq!(s.position(), Some(Lsn(0x3000060)));
        assert_eq!(s.replay_age_seconds, Some(0.5));
    }

    #[test]
    fn settings_rows_give_pending_settings_and_the_limits_now_and_after_a_restart() {
        let rows = vec![
            row(&[Some("p"), Some("shared_buffers"), Some("16384"), Some("t"), Some("256MB"), Some("1024")]),
            row(&[Some("p"), Some("max_connections"), Some("100"), Some("t"), Some("200"), Some("100")]),
            row(&[Some("p"), Some("max_wal_senders"), Some("10"), Some("f"), None, Some("10")]),
        ];
        let s = parse_settings_rows(&rows, true);
        assert_eq!(s.pending_restart, Some(vec!["max_connections".to_string(), "shared_buffers".to_string()]));
        assert_eq!(s.pending(), Some(true));
        assert_eq!((s.limit("max_connections", false), s.limit("max_connections", true)), (Some(100), Some(200)));
        assert_eq!(s.limit("max_wal_senders", true), Some(10));
        // Before 9.5 the server cannot tell: unknown, and the limits stay as they run.
        let old = parse_settings_rows(&rows, false);
        assert_eq!(old.pending(), None);
        assert_eq!(old.limit("max_connections", true), Some(100));
    }

    #[test]
    fn a_running_server_that_does_not_answer_may_accept_writes_unless_configured_as_a_standby() {
        let mut o = Observed::unknown("db1");
        o.host_reachable = true;
        o.server = ServerState::Unresponsive;
        assert!(o.may_accept_writes());
        o.standby_configured = Some(true);
        assert!(!o.may_accept_writes());
        o.server = ServerState::Stopped;
        o.standby_configured = None;
        assert!(!o.may_accept_writes() && o.stopped());
    }
}
