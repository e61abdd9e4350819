//! What pgrepl recorded about a cluster's roles: the current primary when it differs from
//! the spec's, the fenced nodes, the synchronous standbys the primary actually runs with.
//! Pure data; the deployment keeps it in its state directory (0600).

use serde::{Deserialize, Serialize};

use crate::cluster::Sync;
use crate::lsn::Lsn;
use crate::spec::SyncMode;

/// The cluster's topology as pgrepl last changed it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    /// The current primary, when it differs from the spec's (after a switchover or failover).
    pub primary: Option<String>,
    /// The primary's timeline when recorded.
    pub timeline: Option<u32>,
    /// Nodes fenced by a failover: never started as a primary again; `pgrepl rejoin` brings
    /// them back as standbys.
    #[serde(default)]
    pub fenced: Vec<String>,
    /// The last WAL position pgrepl saw on the primary.
    pub last_primary_lsn: Option<String>,
    /// The synchronous standbys the primary was configured with when pgrepl last wrote its
    /// settings (after a degraded failover the spec no longer says it). `None`: never
    /// recorded (clusters deployed before pgrepl recorded it): the spec's set applies.
    #[serde(default)]
    pub sync: Option<SyncRecord>,
    /// The promotions pgrepl carried out, oldest first (the last [`HISTORY_LEN`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Promotion>,
}

/// How many promotions the topology keeps.
pub const HISTORY_LEN: usize = 50;

/// Why a standby was promoted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromotionKind {
    /// The primary was gone (or fenced).
    Failover,
    /// A planned move: the primary stopped cleanly first.
    Switchover,
}

/// One promotion, as recorded once the new primary accepted writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promotion {
    /// The node promoted.
    pub node: String,
    /// The primary before it.
    pub from: String,
    /// Failover or switchover.
    pub kind: PromotionKind,
    /// The new primary's timeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u32>,
    /// Where that timeline starts (the switch point in its history file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsn: Option<String>,
    /// When (Unix seconds, the clock of the machine that carried it out).
    pub at: u64,
    /// From the start of the operation (or of the agent's plan) until the promotion was
    /// confirmed, in milliseconds.
    pub millis: u64,
}

/// The synchronous replication a primary was configured with (its
/// `synchronous_standby_names`, as pgrepl wrote it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRecord {
    /// The primary it was written for.
    pub primary: String,
    /// `first`, `any`, or `off` (asynchronous).
    pub mode: SyncMode,
    /// How many standbys confirm each commit.
    pub count: u32,
    /// The standbys named.
    pub standbys: Vec<String>,
}

impl SyncRecord {
    /// The record of `sync` as configured on `primary`.
    pub fn of(primary: &str, sync: &Sync) -> SyncRecord {
        SyncRecord { primary: primary.to_string(), mode: sync.mode, count: sync.count, standbys: sync.standbys.clone() }
    }

    /// A record that covers both `self` and `other` (for the time a primary's settings move
    /// from one to the other): every standby either names, the smaller count. Either
    /// asynchronous: the other one.
    pub fn widened(&self, other: &SyncRecord) -> SyncRecord {
        if !self.synchronous() {
            return other.clone();
        }
        if !other.synchronous() {
            return self.clone();
        }
        let mut standbys = self.standbys.clone();
        for s in &other.standbys {
            if !standbys.contains(s) {
                standbys.push(s.clone());
            }
        }
        let mode = if self.mode == other.mode { self.mode } else { SyncMode::Any };
        SyncRecord { primary: other.primary.clone(), mode, count: self.count.min(other.count), standbys }
    }

    /// Whether commits were acknowledged only after `count` of `standbys` confirmed them.
    pub fn synchronous(&self) -> bool {
        self.mode != SyncMode::Off && self.count > 0 && !self.standbys.is_empty()
    }
}

impl Topology {
    /// The recorded last position of the primary.
    pub fn last_primary_lsn(&self) -> Option<Lsn> {
        self.last_primary_lsn.as_deref().and_then(|l| l.parse().ok())
    }

    /// Appends `p` to the history (kept to the last [`HISTORY_LEN`]; the same promotion
    /// recorded twice is kept once).
    pub fn record_promotion(&mut self, p: Promotion) {
        if !self.history.iter().any(|h| h.node == p.node && h.timeline == p.timeline && h.at == p.at) {
            self.history.push(p);
        }
        self.history.sort_by_key(|h| h.at);
        let extra = self.history.len().saturating_sub(HISTORY_LEN);
        self.history.drain(..extra);
    }

    /// How many failovers and switchovers the history holds.
    pub fn promotions(&self, kind: PromotionKind) -> usize {
        self.history.iter().filter(|h| h.kind == kind).count()
    }

    /// Whether `node` is recorded as fenced.
    pub fn is_fenced(&self, node: &str) -> bool {
        self.fenced.iter().any(|f| f == node)
    }

    /// The synchronous set in force: the recorded one when it was recorded for `primary`,
    /// else `fallback` (the spec's, resolved for the current cluster).
    pub fn sync_in_force(&self, primary: &str, fallback: &Sync) -> SyncRecord {
        match &self.sync {
            Some(s) if s.primary == primary => s.clone(),
            _ => SyncRecord::of(primary, fallback),
        }
    }
}
