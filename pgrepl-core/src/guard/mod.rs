//! The guard: a small process per node, started by the agent, that stops PostgreSQL when
//! the agent stops vouching for it (the hung-agent fence of
//! `docs/design/automatic-failover.md`).
//!
//! - [`fence`]: the [`Fence`] trait and [`StopPostmaster`], which signals only a process
//!   it has verified to be the postmaster of the given data directory (or its children).
//! - [`watchdog`]: `/dev/watchdog` as an extra where the machine has one.

pub mod fence;
mod proc;
pub mod watchdog;

pub use fence::{Fence, FenceError, FenceReport, StopPostmaster};
pub use watchdog::{Watchdog, WatchdogError, WatchdogUse};
