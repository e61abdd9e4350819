//! After an upgrade of an `[ha]` cluster: the agents onto the new binaries.
//!
//! The agents' processes keep the binaries (and, after a major upgrade, the major) they
//! were started with: acting later, they would start, stop, promote or clone with the old
//! ones. A major upgrade leaves them paused (the library does, once the primary runs the
//! new major); after a minor upgrade they are paused here. Then the agents are restarted
//! with the cluster file and the new binaries (paused, an agent that stops leaves its
//! server as it is): on a local cluster the ones this machine runs are stopped and
//! started again; on SSH hosts and EC2 they are rolled as `pgrepl up` rolls them (their
//! host's cluster file rewritten from the new one, the agent restarted). Once every
//! restarted agent reports on a lease of its own, the leader key (still the primary's, on
//! the old agent's lease, which runs out) is bound to the primary's new agent's lease by a
//! compare-and-set ([`pgrepl_core::store::operator::move_leader`]); then the `paused`
//! flag goes back to what it was before the upgrade. The primary stays writable
//! throughout, and the key never names another node.

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
/// cluster file at `spec_path`; `pass`: a local agent's arguments, the new binaries;
/// `resume`: the upgrade paused them and left them paused; `text`: what is done on each
/// host is said on stderr). Agents acting now are paused here first and resumed after.
/// Returns what was done, one line; an error ends with the state the agents are left in
/// and what to run.
pub async fn agents_after_upgrade(d: &Deployment, spec_path: &Path, pass: &[OsString], resume: bool, text: bool) -> anyhow::Result<String> {
    let on_hosts = hosts_ha::on_hosts(d);
    let store = ha::open_store(d)?;
    let keys = Keys::new(&d.cluster().name);
    let read = || async { anyhow::Ok(StoreView::parse(&keys, &store.get_prefix(keys.prefix()).await?)) };
    let paused = async {
        let pause_here = !read().await?.settings().paused;
        if pause_here {
            ha::set_paused(d, true).await.context("pausing the agents to restart them")?;
        }
        anyhow::Ok(pause_here)
    }
    .await;
    let pause_here = match paused {
        Ok(p) => p,
        // The upgrade's pause holds; otherwise the agents run on, on the old binaries.
        Err(e) if resume => return Err(e.context(left_paused(true, on_hosts))),
        Err(e) => return Err(e.context("the agents could not be paused: they were not restarted and run as before, on the old binaries")),
    };
    let resume = resume || pause_here;
    let mut said = Vec::new();
    let rolled = async {
        let before: BTreeMap<String, Option<i64>> = read().await?.members.into_iter().map(|(n, m)| (n, m.lease)).collect();
        let primary = d.current_cluster().await?.primary().name.clone();
        let started = if on_hosts {
            let spec = crate::read_spec(spec_path)?;
            hosts_ha::roll_held_agents(d, &spec, text).await.context("rolling the agents on the hosts onto the new cluster file")?
        } else if ha::stop_agents(d, Duration::from_secs(60)).await.is_empty() {
            Vec::new()
        } else {
            ha::start_agents(d, spec_path, pass)?
        };
        if started.is_empty() {
            if on_hosts {
                said.push("the agents on the hosts read an unchanged cluster file and binary: none restarted".to_string());
            }
            return anyhow::Ok(());
        }
        // Every agent started reports again, on a lease of its own.
        let t = Instant::now();
        loop {
            let now: BTreeMap<String, Option<i64>> = read().await?.members.into_iter().map(|(n, m)| (n, m.lease)).collect();
            let waiting = not_reported(&started, &before, &now);
            if waiting.is_empty() {
                break;
            }
            anyhow::ensure!(
                t.elapsed() < REPORT_WAIT,
                "the agents of {} did not report within {}s of their restart ({})",
                waiting.join(", "),
                REPORT_WAIT.as_secs(),
                if on_hosts {
                    format!("their logs: {} on their hosts", pgrepl_core::hostsvc::log_dir(&d.cluster().name))
                } else {
                    format!("their logs are in {}", d.state_dir().join("agents").display())
                }
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        said.push(format!("agents restarted on the new binaries: {}", started.join(", ")));
        let bound = pgrepl_core::store::operator::move_leader(&*store, &keys, &primary, &primary)
            .await
            .with_context(|| format!("binding the leader key to {primary}'s new agent"))?;
        said.push(bound);
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = rolled {
        return Err(e.context(left_paused(resume, on_hosts)));
    }
    if resume {
        ha::set_paused(d, false).await.context("resuming the agents (`pgrepl resume` does it)")?;
        said.push("the agents, paused for this, were resumed".into());
    } else {
        said.push("the agents were paused before and are left paused".into());
    }
    Ok(said.join("; "))
}

/// The agents of `started` that do not report yet on a lease other than the one they had
/// `before` their restart (`now`: each member's lease in the store).
fn not_reported(started: &[String], before: &BTreeMap<String, Option<i64>>, now: &BTreeMap<String, Option<i64>>) -> Vec<String> {
    started
        .iter()
        .filter(|n| now.get(*n).copied().flatten().is_none_or(|l| before.get(*n).copied().flatten() == Some(l)))
        .cloned()
        .collect()
}

/// What a failure to restart the agents after an upgrade leaves, and what to run:
/// `resumable`: the pause is this upgrade's (otherwise the operator's, kept).
fn left_paused(resumable: bool, on_hosts: bool) -> String {
    let restart = if on_hosts {
        "`pgrepl up` rolls the agents on the hosts onto the new cluster file (they stay paused)"
    } else {
        "`pgrepl up` starts the agents that do not run"
    };
    if resumable {
        format!("the agents are left paused (the primary keeps running, nothing fails over): {restart}, then `pgrepl resume`")
    } else {
        format!("the agents were paused before the upgrade and stay paused: {restart}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leases(l: &[(&str, Option<i64>)]) -> BTreeMap<String, Option<i64>> {
        l.iter().map(|(n, l)| (n.to_string(), *l)).collect()
    }

    #[test]
    fn an_agent_has_reported_once_it_holds_a_new_lease() {
        let started: Vec<String> = ["d", "e", "f", "w"].map(String::from).to_vec();
        let before = leases(&[("d", Some(1)), ("e", Some(2)), ("f", None)]);
        // d: the old lease still; e: a new one; f: no lease yet; w: not in the store yet.
        let now = leases(&[("d", Some(1)), ("e", Some(7)), ("f", None)]);
        assert_eq!(not_reported(&started, &before, &now), ["d", "f", "w"]);
        let now = leases(&[("d", Some(5)), ("e", Some(7)), ("f", Some(8)), ("w", Some(9))]);
        assert!(not_reported(&started, &before, &now).is_empty());
        // An agent that had no lease before: any lease is its new one.
        assert!(not_reported(&["f".to_string()], &before, &leases(&[("f", Some(1))])).is_empty());
        // Agents not restarted are not waited for.
        assert!(not_reported(&[], &before, &leases(&[])).is_empty());
    }

    #[test]
    fn a_failure_says_what_the_agents_are_left_as_and_what_to_run() {
        let hosts = left_paused(true, true);
        assert!(hosts.contains("left paused") && hosts.contains("`pgrepl up` rolls") && hosts.ends_with("then `pgrepl resume`"), "{hosts}");
        let local = left_paused(true, false);
        assert!(local.contains("`pgrepl up` starts") && local.ends_with("then `pgrepl resume`"), "{local}");
        // The operator's pause is theirs: no `resume` advised.
        let kept = left_paused(false, true);
        assert!(kept.contains("paused before the upgrade and stay paused") && !kept.contains("resume"), "{kept}");
    }
}
