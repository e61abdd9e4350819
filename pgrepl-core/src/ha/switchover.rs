//! The switchover: observe, plan ([`crate::plan::switchover`]), carry the plan out.

use super::*;

impl Deployment {
    /// Planned switchover to standby `to`, with no acknowledged write lost: the candidate
    /// must be streaming and caught up; the primary is stopped cleanly (its shutdown
    /// checkpoint reaches the standbys); once the candidate has replayed that checkpoint
    /// it is promoted; the other standbys follow it (reload 13+, restart before) and the
    /// old primary restarts as its standby, without re-cloning; slots and synchronous
    /// standbys move with it. A switchover to the current primary converges the standbys
    /// and otherwise changes nothing. If the candidate cannot take over before its
    /// promotion, the old primary is started again as the primary.
    ///
    /// `[ha]` (bound to the agents' store): the agents are held paused while it runs and
    /// put back as they were; the leader key moves to `to` right before its promotion
    /// (back if it is abandoned before). With the agents acting the store's operation lock
    /// refuses this (a switchover is theirs to make): `pgrepl switchover` then files a
    /// request with them instead.
    pub async fn switchover(&self, to: &str, progress: &dyn Progress) -> Result<OperationReport, Error> {
        let lock = self.lock_operation("switchover", self.lock_wait()).await?;
        let result = self.with_agents_held(self.switchover_under(to, progress, &lock)).await;
        lock.release().await;
        result
    }

    /// The switchover, under `lock` (held by the caller: `switchover`, or a rolling
    /// restart, whose plan runs switchovers as steps).
    pub(super) async fn switchover_under(
        &self,
        to: &str,
        progress: &dyn Progress,
        lock: &crate::oplock::OperationLock,
    ) -> Result<OperationReport, Error> {
        let t0 = Instant::now();
        async {
            let mut op = Op::open(self, progress).await?;
            op.lock = Some(lock);
            let obs = op.observe().await;
            let plan = plan::switchover(&op.cluster, &obs, &plan::SwitchoverRequest { to: to.to_string() })?;
            let exec = Exec::new(&op, &plan, &obs, t0);
            exec.st().report.sync.degraded = crate::cluster::retarget(&op.cluster, to, &op.topology.fenced).ok().and_then(|(_, d)| d);
            exec.run().await?;
            exec.settle_records().await;
            let mut report = exec.st.into_inner().unwrap_or_else(|p| p.into_inner()).report;
            if let Some(s) = report.sync.ready_seconds {
                // With synchronous replication writes wait for the standbys too.
                report.timings.write_unavailable_seconds += s;
            }
            report.timings.total_seconds = t0.elapsed().as_secs_f64();
            Ok(report)
        }
        .await
    }
}
