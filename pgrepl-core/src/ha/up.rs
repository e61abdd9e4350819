//! `up` through the executor: observe, [`crate::plan::up`], carry the plan out.

use super::*;

/// Observes every node of `cluster` (reached through `handles`), plans `up` and carries
/// the plan out with the executor of the HA operations; returns what it did. The caller
/// (`Deployment::up`) holds the operation lock and has installed PostgreSQL where missing.
pub(crate) async fn execute_up(
    d: &Deployment,
    cluster: &Cluster,
    handles: &[NodeHandle],
    secrets: &Secrets,
    lock: &crate::oplock::OperationLock,
    progress: &dyn Progress,
) -> Result<Vec<Action>, Error> {
    let t0 = Instant::now();
    let caps = cluster.caps().ok_or_else(|| Error::Discovery("the PostgreSQL major is not known: set `postgres` in the spec".into()))?;
    let op = Op {
        d,
        cluster: cluster.clone(),
        handles: handles.to_vec(),
        unreachable: Vec::new(),
        caps,
        secrets: secrets.clone(),
        progress,
        topology: d.topology().await?,
        lock: Some(lock),
    };
    let obs = op.observe().await;
    let plan = plan::up(cluster, &obs)?;
    let exec = Exec::new(&op, &plan, &obs, t0);
    exec.run().await?;
    let report = exec.st.into_inner().unwrap_or_else(|p| p.into_inner()).report;
    if let Some(p) = report.problems.first() {
        return Err(Error::node(&plan.primary, p.clone()));
    }
    Ok(report.actions)
}
