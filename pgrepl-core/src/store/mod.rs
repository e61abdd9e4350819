//! The cluster's truth in a consensus store: the leader key bound to a lease, every
//! member's last report, the synchronous set, the topology, the HA settings.
//!
//! [`ConsensusStore`] is the one seam: pgrepl-core never depends on an etcd client.
//! Implementations: [`memory::MemoryStore`] (in-process, a manual clock, can be made
//! unavailable; unit and property tests) and the `pgrepl-etcd` crate (etcd v3 over its
//! JSON gateway, 3.4 and newer). Keys and their values are in
//! [`keys`]; one read of every key of a cluster, parsed, is a [`view::StoreView`].
//!
//! Semantics every implementation keeps (checked by `testing::store_suite`):
//! - revisions grow with every change of the store; a key's `mod_revision` is the
//!   revision of its last change, `create_revision` of its creation (0: absent);
//! - a key bound to a lease disappears when the lease expires or is revoked;
//! - [`ConsensusStore::create`] succeeds for exactly one of any number of concurrent
//!   callers; [`ConsensusStore::compare_and_set`] only when the key's `mod_revision` is
//!   the one given (0: the key must be absent);
//! - an error is never a silent success: a call that may or may not have taken effect
//!   returns [`StoreError::Unavailable`], and the caller reads again.

pub mod keys;
#[cfg(feature = "runtime")]
pub mod memory;
#[cfg(feature = "runtime")]
mod op_lock;
#[cfg(feature = "runtime")]
pub mod operator;
pub mod view;

use std::fmt;
#[cfg(feature = "runtime")]
use std::time::Duration;

pub use keys::{HaSettings, Keys, LeaderRecord, MemberRecord, MemberRole, PositionRecord, SwitchoverRequest};
#[cfg(feature = "runtime")]
pub use op_lock::{ACTS_ON_NODES, StoreLock};
pub use view::StoreView;

/// A revision of the store (etcd's `header.revision`).
pub type Revision = i64;
/// A lease (etcd's lease ID).
pub type LeaseId = i64;

/// One key as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// Its value (pgrepl writes JSON).
    pub value: Vec<u8>,
    /// The revision that created it.
    pub create_revision: Revision,
    /// The revision of its last change.
    pub mod_revision: Revision,
    /// The lease it is bound to.
    pub lease: Option<LeaseId>,
}

/// Every key under a prefix at one revision.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// The store's revision when read.
    pub revision: Revision,
    /// The keys, sorted by key.
    pub kvs: Vec<KeyValue>,
}

/// A change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A key was created or changed.
    Put(KeyValue),
    /// A key was deleted (or its lease expired).
    Delete {
        /// The key.
        key: String,
        /// The revision of the deletion.
        mod_revision: Revision,
    },
}

/// Why the store could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// No endpoint answered in time, or the store has no quorum: nothing is known, and a
    /// write may or may not have happened.
    #[error("the consensus store cannot be reached: {0}")]
    Unavailable(String),
    /// The store answered with an error (authentication, permission, a bad request).
    #[error("the consensus store refused: {0}")]
    Rejected(String),
}

/// A stream of changes under a prefix.
#[cfg(feature = "runtime")]
#[async_trait::async_trait]
pub trait Watch: Send + fmt::Debug {
    /// The next changes, in revision order; `Ok(None)` when the watch ended (the caller
    /// reads again and watches from there).
    async fn next(&mut self) -> Result<Option<Vec<WatchEvent>>, StoreError>;
}

/// A consensus store (etcd): keys, leases, compare-and-set, watches.
#[cfg(feature = "runtime")]
#[async_trait::async_trait]
pub trait ConsensusStore: Send + Sync + fmt::Debug {
    /// Every key under `prefix`.
    async fn get_prefix(&self, prefix: &str) -> Result<Snapshot, StoreError>;
    /// A new lease of `ttl`.
    async fn grant(&self, ttl: Duration) -> Result<LeaseId, StoreError>;
    /// Refreshes `lease` to its full ttl: the ttl left, or `None` when it no longer exists.
    async fn keep_alive(&self, lease: LeaseId) -> Result<Option<Duration>, StoreError>;
    /// The time `lease` has left without a renewal (whole seconds on etcd), or `None`
    /// when it no longer exists. Reads only: the lease is not renewed.
    async fn time_to_live(&self, lease: LeaseId) -> Result<Option<Duration>, StoreError>;
    /// Revokes `lease` (its keys disappear).
    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError>;
    /// Creates `key` only if it is absent: `true` when this call created it.
    async fn create(&self, key: &str, value: &[u8], lease: Option<LeaseId>) -> Result<bool, StoreError>;
    /// Writes `key` only if its `mod_revision` is `expected` (0: absent): `true` when written.
    async fn compare_and_set(&self, key: &str, expected: Revision, value: &[u8], lease: Option<LeaseId>) -> Result<bool, StoreError>;
    /// Writes `key` whatever it holds: the new revision.
    async fn put(&self, key: &str, value: &[u8], lease: Option<LeaseId>) -> Result<Revision, StoreError>;
    /// Deletes `key` only if its `mod_revision` is `expected`: `true` when deleted.
    async fn delete_if(&self, key: &str, expected: Revision) -> Result<bool, StoreError>;
    /// Deletes every key under `prefix` (the cluster's keys when it is destroyed).
    async fn delete_prefix(&self, prefix: &str) -> Result<(), StoreError>;
    /// Changes under `prefix` after `after` (a revision from [`Snapshot::revision`]).
    async fn watch(&self, prefix: &str, after: Revision) -> Result<Box<dyn Watch>, StoreError>;
}

impl fmt::Display for WatchEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WatchEvent::Put(kv) => write!(f, "put {} @{}", kv.key, kv.mod_revision),
            WatchEvent::Delete { key, mod_revision } => write!(f, "delete {key} @{mod_revision}"),
        }
    }
}
