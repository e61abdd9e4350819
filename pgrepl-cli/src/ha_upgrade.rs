//! After an upgrade of an `[ha]` cluster: the agents onto the new binaries.
//!
//! The agents' processes keep the binaries (and, after a major upgrade, the major) they
//! were started with: acting later, they would start, stop, promote or clone with the old
//! ones. A major upgrade leaves them paused (the library does, once the primary runs the
//! new major); after a minor upgrade they are paused here. Then, for a local cluster: the
//! agents this machine runs are stopped (paused, an agent that stops leaves its server as
//! it is) and started again with the cluster file and the new binaries; once they report,
//! the leader key (still the primary's, on the old agent's lease, which runs out) is bound
//! to the primary's new agent's lease by a compare-and-set
//! ([`pgrepl_core::store::operator::move_leader`]); then the `paused` flag goes back to
//! what it was before the upgrade. The primary stays writable throughout, and the key
//! never names another node.

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

/// The agents after an upgrade (`d`: the deployment opened on the new binaries, its
/// cluster file at `spec_path`; `pass`: the agents' arguments, the new binaries;
/// `resume`: the upgrade paused them and left them paused). Agents acting now are paused
/// here first and resumed after. Returns what was done, one line.
pub async fn agents_after_upgrade(d: &Deployment, spec_path: &Path, pass: &[OsString], resume: bool) -> anyhow::Result<String> {
    let store = ha::open_store(d)?;
    let keys = Keys::new(&d.cluster().name);
    let read = || async { anyhow::Ok(StoreView::parse(&keys, &store.get_prefix(keys.prefix()).await?)) };
    if hosts_ha::on_hosts(d) {
        return Ok(format!(
            "the agents on the hosts still run the old binaries: `pgrepl up` rolls them onto the new ones (pausing them meanwhile){}",
            if resume { "; they are left paused: `pgrepl resume` after" } else { "" }
        ));
    }
    let pause_here = !read().await?.settings().paused;
    if pause_here {
        ha::set_paused(d, true).await.context("pausing the agents to restart them")?;
    }
    let resume = resume || pause_here;
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
        said.push("the agents, paused for this, were resumed".into());
    } else {
        said.push("the agents were paused before and are left paused".into());
    }
    Ok(said.join("; "))
}
