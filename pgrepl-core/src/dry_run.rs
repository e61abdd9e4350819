//! Dry runs: the plan an operation would carry out now, from one observation, touching
//! nothing. (`plan_switchover`, `plan_failover` and `plan_rejoin` live with their
//! executors in [`crate::ha`].)

use crate::deploy::Deployment;
use crate::error::Error;
use crate::observe::{DataDirState, ServerState};
use crate::plan::{self, Plan};

impl Deployment {
    /// The plan `up` would carry out now. Hosts are not created and nothing is written; a
    /// node whose host does not exist yet (the local provider's node directory, an EC2
    /// instance) is planned as `up` would find it once created: empty, nothing running.
    pub async fn plan_up(&self) -> Result<Plan, Error> {
        let (cluster, _, mut observed) = self.observe().await?;
        let hosts = self.provider().list_hosts(&cluster).await?;
        let mut to_create = Vec::new();
        for o in observed.nodes.iter_mut().filter(|o| !hosts.iter().any(|h| h.node == o.node)) {
            o.host_reachable = true;
            o.server = ServerState::Stopped;
            o.data_dir = Some(DataDirState::Missing);
            o.error = None;
            to_create.push(o.node.clone());
        }
        let mut plan = plan::up(&cluster, &observed)?;
        plan.warnings.extend(to_create.into_iter().map(|n| format!("{n}: its host does not exist yet; `up` creates it")));
        // The restarts already pending (from files changed before): `up` restarts the
        // standbys the order allows after its own steps, and leaves the rest pending.
        // Settings this run writes are known only once written.
        if let (Some(caps), Ok((_, handles))) = (cluster.caps(), self.connect(false).await) {
            crate::observe::probe::observe_settings(&cluster, &handles, &caps, &mut observed).await;
            if let Ok(r) = plan::restart(&cluster, &observed, &plan::RestartRequest::all(plan::RestartMode::Up)) {
                plan.noop &= r.steps.is_empty();
                plan.steps.extend(r.steps);
                plan.pending = r.pending;
            }
        }
        Ok(plan)
    }
}
