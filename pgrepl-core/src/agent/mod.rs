//! Automatic failover: one agent per node, the cluster's truth in a consensus store.
//!
//! Each loop an agent observes its own node, reads the cluster's keys
//! ([`crate::store::StoreView`]), and [`decide`]s: a pure function returning what to do
//! in the store (race for the leader key, adopt it, release it), a plan of steps on its
//! own node built by the planners the CLI uses, and whether its guard enforces the write
//! deadline. The rules:
//!
//! - Only the holder of the leader key, with a lease renewed within `ttl - safety_margin`
//!   on its own monotonic clock (etcd 3.4 resets leases on an etcd leader change, so the
//!   store's clock is never trusted), may accept writes. Past that deadline its guard (a
//!   separate process, so a hung agent cannot keep a primary writable) stops PostgreSQL at
//!   once, and its loop does too.
//! - With no leader key, only a running standby races for it, and only when no standby
//!   that reported since the leader went away is further ahead, it is within
//!   `maximum_lag_on_failover` of the primary's last recorded position, and (synchronous
//!   mode) it is in the synchronous set and the positions compared cover every
//!   acknowledged commit. The key is created only if absent: one winner. The winner
//!   promotes with the failover planner's steps on its own node; the others re-point.
//! - Another node leads: a writable node here stops at once, then comes back as its
//!   standby (as it is, pg_rewind, or a fresh clone: [`crate::plan::rejoin()`]).
//! - The leader's server stopped (a crash): started again in place while it holds the
//!   key (crash recovery keeps every acknowledged commit); after
//!   [`MAX_START_FAILURES`] failed starts the key is released for a standby.
//! - The store cannot be read: no promotion; a primary keeps writes only until its
//!   deadline; standbys keep serving reads.

#[cfg(feature = "runtime")]
mod backups;
mod decide;
#[cfg(feature = "runtime")]
mod local;
#[cfg(feature = "runtime")]
mod records;
#[cfg(feature = "runtime")]
mod run;
pub mod status;
#[cfg(test)]
mod tests;
#[cfg(feature = "runtime")]
mod witness;

pub use decide::{AgentInput, AgentMemory, Decision, GuardMode, LeaseClock, MAX_START_FAILURES, StoreOp, decide};
#[cfg(feature = "runtime")]
pub use records::{StoreRecords, publish};
#[cfg(feature = "runtime")]
pub use run::{Agent, GuardControl};
pub use status::{AgentStatus, LoopFacts, StandbyStat, parse_size};
#[cfg(feature = "runtime")]
pub use witness::WitnessAgent;
