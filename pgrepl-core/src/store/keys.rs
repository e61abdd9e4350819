//! Where a cluster's keys live in the store, and what they hold (JSON).
//!
//! Under `/pgrepl/<cluster>/`:
//!
//! | key | value | bound to |
//! |---|---|---|
//! | `leader` | [`LeaderRecord`]: the node that may accept writes | the leader's agent lease |
//! | `members/<node>` | [`MemberRecord`]: its role, timeline, positions, agent address | its agent's lease |
//! | `sync` | [`SyncRecord`]: the standbys the primary's `synchronous_standby_names` names | none |
//! | `topology` | [`Topology`] without its sync record: fenced nodes, promotions | none |
//! | `position` | [`PositionRecord`]: the primary's WAL position, written by its agent each loop | none |
//! | `config` | [`HaSettings`]: ttl, loop wait, maximum lag on failover, pause | none |
//! | `op` | the operation lock | the holder's lease |
//! | `requests/switchover` | [`SwitchoverRequest`]: a switchover asked by the CLI, carried out by the agents | none |
//! | `backup/running` | [`ScheduledBackup`](crate::backup::ScheduledBackup): the scheduled base backup being taken, one at a time | the taking agent's lease |
//! | `backup/last` | [`ScheduledBackup`](crate::backup::ScheduledBackup): the last scheduled slot taken (or failed) | none |

use serde::{Deserialize, Serialize};

use crate::lsn::Lsn;

#[allow(unused_imports)] // for the table above
use crate::topology::{SyncRecord, Topology};

/// The keys of one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// The keys of cluster `name`.
    pub fn new(name: &str) -> Keys {
        Keys { prefix: format!("/pgrepl/{name}/") }
    }

    /// `/pgrepl/<cluster>/`: every key of the cluster.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The leader key.
    pub fn leader(&self) -> String {
        format!("{}leader", self.prefix)
    }

    /// The member key of `node`.
    pub fn member(&self, node: &str) -> String {
        format!("{}members/{node}", self.prefix)
    }

    /// The prefix of the member keys.
    pub fn members(&self) -> String {
        format!("{}members/", self.prefix)
    }

    /// The synchronous set.
    pub fn sync(&self) -> String {
        format!("{}sync", self.prefix)
    }

    /// The topology (fenced nodes, promotions).
    pub fn topology(&self) -> String {
        format!("{}topology", self.prefix)
    }

    /// The primary's last position.
    pub fn position(&self) -> String {
        format!("{}position", self.prefix)
    }

    /// The HA settings.
    pub fn config(&self) -> String {
        format!("{}config", self.prefix)
    }

    /// The operation lock.
    pub fn op(&self) -> String {
        format!("{}op", self.prefix)
    }

    /// A switchover asked of the agents.
    pub fn switchover(&self) -> String {
        format!("{}requests/switchover", self.prefix)
    }

    /// The scheduled base backup being taken (one at a time, cluster-wide).
    pub fn backup_running(&self) -> String {
        format!("{}backup/running", self.prefix)
    }

    /// The last scheduled base backup (its slot, node, result).
    pub fn backup_last(&self) -> String {
        format!("{}backup/last", self.prefix)
    }

    /// What `key` is, relative to the cluster's prefix (`None`: not one of its keys).
    pub fn name_of<'k>(&self, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(self.prefix.as_str())
    }
}

/// The leader key's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRecord {
    /// The node that may accept writes.
    pub node: String,
    /// Its timeline when it took the key (promotion makes it one more, recorded in the
    /// topology's promotions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u32>,
}

/// The `position` key: where the primary's WAL was when its agent last looked (what
/// `maximum_lag_on_failover` is measured from once it is gone).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PositionRecord {
    /// The primary.
    pub node: String,
    /// Its timeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u32>,
    /// Its write position.
    pub lsn: Lsn,
}

/// What a member is, as its agent last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberRole {
    /// It accepts writes.
    Primary,
    /// It runs in recovery.
    Standby,
    /// Its server does not run (or does not answer yet).
    Stopped,
    /// A witness: an etcd member and an agent, no PostgreSQL.
    Witness,
}

impl MemberRole {
    /// What an observed server is.
    pub fn of(o: &crate::observe::Observed) -> MemberRole {
        if o.writable() {
            MemberRole::Primary
        } else if o.standby() {
            MemberRole::Standby
        } else {
            MemberRole::Stopped
        }
    }
}

/// A member key's value: what one agent observed of its node, published every loop in
/// which it changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// The node.
    pub node: String,
    /// What it is.
    pub role: MemberRole,
    /// Its timeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u32>,
    /// Its WAL position: the current write position of a primary, the last received (or
    /// replayed, when nothing streams) position of a standby.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsn: Option<Lsn>,
    /// The position replayed (standbys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_lsn: Option<Lsn>,
    /// The node it streams from (standbys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// Its WAL receiver streams.
    #[serde(default)]
    pub streaming: bool,
    /// The leader its agent saw when it published this (`None`: there was none). A
    /// candidate compares only positions published after the leader key went away.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_seen: Option<String>,
    /// Where its agent's HTTP endpoint listens (`host:port`), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Why it is not eligible for promotion, when it says so (paused, fenced, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl MemberRecord {
    /// A member with nothing known but its node and role.
    pub fn new(node: &str, role: MemberRole) -> MemberRecord {
        MemberRecord {
            node: node.to_string(),
            role,
            timeline: None,
            lsn: None,
            replay_lsn: None,
            upstream: None,
            streaming: false,
            leader_seen: None,
            agent: None,
            note: None,
        }
    }
}

/// A switchover asked of the agents (`pgrepl switchover` on an `[ha]` cluster). The
/// leader stops cleanly (its last WAL reaches the standbys), then hands the leader key to
/// `to`, whose agent promotes it; the old primary comes back as its standby.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchoverRequest {
    /// The standby to promote.
    pub to: String,
    /// The leader when it was asked (only that node acts on it).
    pub from: String,
    /// Why the leader refused it, once it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

pub use crate::ha_settings::HaSettings;
