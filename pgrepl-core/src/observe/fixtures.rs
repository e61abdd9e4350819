//! Observed nodes for the tests of the planners and of the agent's decision.

use super::{Observed, ServerState};
use crate::lsn::Lsn;

/// A primary on timeline 1 at `lsn`.
pub(crate) fn primary(name: &str, lsn: u64) -> Observed {
    let mut o = Observed::unknown(name);
    o.host_reachable = true;
    o.server = ServerState::Running;
    o.in_recovery = Some(false);
    o.timeline = Some(1);
    o.lsn = Some(Lsn(lsn));
    o
}

/// A standby on timeline 1 that received and replayed up to `lsn`, streaming.
pub(crate) fn standby(name: &str, lsn: u64) -> Observed {
    let mut o = primary(name, lsn);
    o.in_recovery = Some(true);
    o.receive_lsn = Some(Lsn(lsn));
    o.receiver = Some("streaming".into());
    o
}
