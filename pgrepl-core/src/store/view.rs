//! One read of a cluster's keys, parsed: what the agents and the CLI decide from.

use std::collections::BTreeMap;

use super::keys::{HaSettings, Keys, LeaderRecord, MemberRecord, PositionRecord, SwitchoverRequest};
use super::{KeyValue, LeaseId, Revision, Snapshot};
use crate::topology::{SyncRecord, Topology};

/// A key's parsed value with where it stands in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T> {
    /// The value.
    pub value: T,
    /// Its `mod_revision` (for compare-and-set).
    pub mod_revision: Revision,
    /// The lease it is bound to.
    pub lease: Option<LeaseId>,
}

/// Every key of a cluster at one revision.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoreView {
    /// The store's revision when read.
    pub revision: Revision,
    /// The leader key.
    pub leader: Option<Versioned<LeaderRecord>>,
    /// The members that reported (their keys live while their agents do).
    pub members: BTreeMap<String, Versioned<MemberRecord>>,
    /// The synchronous set.
    pub sync: Option<Versioned<SyncRecord>>,
    /// The topology (its `sync` is the sync key's).
    pub topology: Option<Versioned<Topology>>,
    /// The primary's last position.
    pub position: Option<Versioned<PositionRecord>>,
    /// A switchover asked of the agents.
    pub switchover: Option<Versioned<SwitchoverRequest>>,
    /// The HA settings.
    pub config: Option<Versioned<HaSettings>>,
    /// Keys that could not be parsed (key, why): reported, never guessed at.
    pub unreadable: Vec<(String, String)>,
}

impl StoreView {
    /// Parses a snapshot of `keys.prefix()`.
    pub fn parse(keys: &Keys, snap: &Snapshot) -> StoreView {
        let mut v = StoreView { revision: snap.revision, ..StoreView::default() };
        for kv in &snap.kvs {
            let Some(name) = keys.name_of(&kv.key) else { continue };
            let res = match name {
                "leader" => parse(kv).map(|x| v.leader = Some(x)),
                "sync" => parse(kv).map(|x| v.sync = Some(x)),
                "topology" => parse(kv).map(|x| v.topology = Some(x)),
                "config" => parse(kv).map(|x| v.config = Some(x)),
                "position" => parse(kv).map(|x| v.position = Some(x)),
                "requests/switchover" => parse(kv).map(|x| v.switchover = Some(x)),
                n if n.starts_with("members/") => parse::<MemberRecord>(kv).map(|x| {
                    v.members.insert(n["members/".len()..].to_string(), x);
                }),
                _ => Ok(()),
            };
            if let Err(e) = res {
                v.unreadable.push((kv.key.clone(), e));
            }
        }
        v
    }

    /// Whether agents run the cluster now: agents of data nodes report to the store and
    /// are not paused (people then file requests with them instead of acting on the
    /// nodes). A witness's agent alone acts on nothing.
    pub fn agents_in_charge(&self) -> bool {
        !self.settings().paused && self.members.values().any(|m| m.value.role != super::MemberRole::Witness)
    }

    /// The node holding the leader key.
    pub fn leader_node(&self) -> Option<&str> {
        self.leader.as_ref().map(|l| l.value.node.as_str())
    }

    /// A member's last report.
    pub fn member(&self, node: &str) -> Option<&MemberRecord> {
        self.members.get(node).map(|m| &m.value)
    }

    /// The topology with the sync key's record in it.
    pub fn topology(&self) -> Topology {
        let mut t = self.topology.as_ref().map(|t| t.value.clone()).unwrap_or_default();
        t.sync = self.sync.as_ref().map(|s| s.value.clone());
        t
    }

    /// The HA settings (the defaults when the key is missing).
    pub fn settings(&self) -> HaSettings {
        self.config.as_ref().map(|c| c.value.clone()).unwrap_or_default()
    }
}

fn parse<T: serde::de::DeserializeOwned>(kv: &KeyValue) -> Result<Versioned<T>, String> {
    serde_json::from_slice(&kv.value)
        .map(|value| Versioned { value, mod_revision: kv.mod_revision, lease: kv.lease })
        .map_err(|e| format!("not a value pgrepl wrote: {e}"))
}
