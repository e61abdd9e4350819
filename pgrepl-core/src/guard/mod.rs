//! The guard: a small process per node, started by the agent, that stops PostgreSQL when
//! the agent stops vouching for it (the hung-agent fence of
//! `docs/design/automatic-failover.md`).
//!
//! The agent holds the leader lease; while its node is a writable primary it writes
//! `arm <ms>` to the guard's stdin after every renewal: PostgreSQL may accept writes for
//! at most `<ms>` more milliseconds. The guard counts that on its own monotonic clock;
//! when the deadline passes without a new `arm`, or the pipe closes while armed (the agent
//! died), it stops PostgreSQL at once ([`StopPostmaster`]: SIGQUIT, immediate shutdown,
//! then SIGKILL to the postmaster and its children if it lingers).
//!
//! - [`protocol`]: the lines ([`Instruction`]) and the loop ([`run_guard`]).
//! - [`fence`]: the [`Fence`] trait and [`StopPostmaster`], which signals only a process
//!   it has verified to be the postmaster of the given data directory (or its children).
//! - [`handle`]: the agent's side, [`GuardHandle`] (spawn, `arm`, `disarm`, `exit`).
//! - [`watchdog`]: `/dev/watchdog` as an extra where the machine has one.

pub mod fence;
pub mod handle;
mod proc;
pub mod protocol;
pub mod watchdog;

#[cfg(test)]
mod lab_tests;
#[cfg(test)]
mod tests;

pub use fence::{Fence, FenceError, FenceReport, StopPostmaster};
pub use handle::{GuardHandle, GuardWriteError};
pub use protocol::{FenceCause, Fenced, GuardEnd, GuardOptions, GuardOutcome, Instruction, MAX_ARM, ParseError, run_guard};
pub use watchdog::{Watchdog, WatchdogError, WatchdogUse};
