//! Dry runs: the plan an operation would carry out now, from one observation, touching
//! nothing. (`plan_switchover`, `plan_failover` and `plan_rejoin` live with their
//! executors in [`crate::ha`].)

use crate::deploy::Deployment;
use crate::error::Error;
use crate::plan::{self, Plan};

impl Deployment {
    /// The plan `up` would carry out now. Hosts are not created and nothing is written;
    /// a provider that creates hosts (EC2) lists only those that exist.
    pub async fn plan_up(&self) -> Result<Plan, Error> {
        let (cluster, _, observed) = self.observe().await?;
        Ok(plan::up(&cluster, &observed)?)
    }
}
