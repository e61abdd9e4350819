//! Plans an agent made for its own node, carried out by the one executor.

use super::*;

impl Deployment {
    /// Carries out `plan` (an agent's: steps on its own node and records of the cluster)
    /// over `obs`, the observation it was made from. No operation lock: the agent acts
    /// under the leader key or on its own node only.
    pub async fn execute_plan(&self, plan: &plan::Plan, obs: &ObservedCluster, progress: &dyn Progress) -> Result<OperationReport, Error> {
        let t0 = Instant::now();
        let op = Op::open(self, progress).await?;
        let exec = Exec::new(&op, plan, obs, t0);
        exec.run().await?;
        exec.settle_records().await;
        let mut report = exec.st.into_inner().unwrap_or_else(|p| p.into_inner()).report;
        report.timings.total_seconds = t0.elapsed().as_secs_f64();
        Ok(report)
    }
}
