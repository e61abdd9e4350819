//! After a major upgrade of an `[ha]` cluster: the agents onto the new binaries.
//!
//! The library held the agents paused during the upgrade and leaves them paused once the
//! primary runs the new major (their processes still run the old major's binaries and
//! settings: acting, they would start, stop or clone with the wrong ones). Here, for a
//! local cluster: the agents this machine runs are stopped (paused, an agent that stops
//! leaves its server as it is) and started again with the rewritten cluster file and the
//! new binaries; once they report, the leader key (still the primary's, on the old agent's
//! lease, which runs out) is bound to the primary's new agent's lease by a
//! compare-and-set ([`pgrepl_core::store::operator::move_leader`]); then the agents are resumed if
//! the upgrade paused them. The primary stays writable throughout, and the key never
//! names another node.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use pgrepl_core::deploy::Deployment;
use pgrepl_core::store::{Keys, StoreView};

use crate::{ha, hosts_ha};

/// How long the restarted agents may take to report.
const REPORT_WAIT: Duration = Duration::from_secs(60);

/// The agents after the upgrade (`d`: the deployment opened again on the new major, its
/// cluster file rewritten at `spec_path`; `pass`: the agents' arguments, the new binaries;
/// `resume`: the upgrade paused them). Returns what was done, one line.
pub async fn agents_after_upgrade(d: &Deployment, spec_path: &Path, pass: &[OsString], resume: bool) -> anyhow::Result<String> {
    if hosts_ha::on_hosts(d) {
        return Ok(format!(
            "the agents on the hosts still run the old major's binaries and are left paused: `pgrepl up` (it converges the nodes and rolls the agents onto the new binaries){}",
            if resume { ", then `pgrepl resume`" } else { "" }
        ));
    }
    let store = ha::open_store(d)?;
    let keys = Keys::new(&d.cluster().name);
    let read = || async { anyhow::Ok(StoreView::parse(&keys, &store.get_prefix(keys.prefix()).await?)) };
    let before: BTreeMap<String, Option<i64>> = read().await?.members.into_iter().map(|(n, m)| (n, m.lease)).collect();
    let primary = d.current_cluster().await?.primary().name.clone();
    let stopped = ha::stop_agents(d, Duration::from_secs(60)).await;
    let mut said = Vec::new();
    if !stopped.is_empty() {
        let started = ha::start_agents(d, spec_path, pass)?;
        // Every agent started reports again, on a lease of its own.
        let t = Instant::now();
        loop {
            let v = read().await?;
            let waiting: Vec<&String> = started
                .iter()
                .filter(|n| v.members.get(*n).and_then(|m| m.lease).is_none_or(|l| before.get(*n).copied().flatten() == Some(l)))
                .collect();
            if waiting.is_empty() {
                break;
            }
            anyhow::ensure!(
                t.elapsed() < REPORT_WAIT,
                "the agents of {} did not report within {}s of their restart (their logs are in {})",
                waiting.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
                REPORT_WAIT.as_secs(),
                d.state_dir().join("agents").display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        said.push(format!("agents restarted on the new binaries: {}", started.join(", ")));
        let bound = pgrepl_core::store::operator::move_leader(&*store, &keys, &primary, &primary)
            .await
            .with_context(|| format!("binding the leader key to {primary}'s new agent"))?;
        said.push(bound);
    }
    if resume {
        ha::set_paused(d, false).await.context("resuming the agents")?;
        said.push("the agents, paused for the upgrade, were resumed".into());
    } else {
        said.push("the agents were paused before the upgrade and are left paused".into());
    }
    Ok(said.join("; "))
}
