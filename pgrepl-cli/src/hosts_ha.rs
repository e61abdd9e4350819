//! `[ha]` on SSH and EC2 hosts, from the command line: this program's own binary goes to
//! the hosts, the etcd members and agents through `pgrepl_etcd::hosts`, the agents paused
//! around a rollout that restarts any (an agent that stops while it leads stops its
//! server), and resumed after.

use std::time::Duration;

use anyhow::Context;
use pgrepl_core::deploy::Deployment;
use pgrepl_core::hostsvc::apply::{Applied, Binary};
use pgrepl_core::spec::ClusterSpec;
pub use pgrepl_etcd::hosts::{deploys_etcd, on_hosts};

/// How long `up` waits for a new etcd cluster to answer.
const ETCD_READY: Duration = Duration::from_secs(60);

/// This program's binary, and its SHA-256.
fn own_binary() -> anyhow::Result<(Vec<u8>, String)> {
    let exe = std::env::current_exe().context("where this program is")?;
    let bytes = std::fs::read(&exe).with_context(|| format!("read {}", exe.display()))?;
    let sha = pgrepl_etcd::hosts::sha256_hex(&bytes);
    Ok((bytes, sha))
}

/// `up`, first: the etcd members pgrepl deploys, then waits until the store answers.
pub async fn ensure_etcd(d: &Deployment) -> anyhow::Result<Vec<Applied>> {
    if !deploys_etcd(d) {
        return Ok(Vec::new());
    }
    let (bytes, sha) = own_binary()?;
    let (done, failed) = pgrepl_etcd::hosts::ensure_etcd(d, Binary { bytes: &bytes, sha256: &sha }).await?;
    for f in &failed {
        tracing::warn!("etcd member not deployed: {f}");
    }
    let store = crate::ha::open_store(d)?;
    pgrepl_etcd::hosts::wait_ready(&*store, ETCD_READY).await?;
    Ok(done)
}

/// `up`, last: the agents on the hosts (this binary, their files, started or restarted),
/// paused around their restart when they run the cluster. Returns what was done and the
/// hosts that could not be reached.
pub async fn ensure_agents(d: &Deployment, spec: &ClusterSpec) -> anyhow::Result<(Vec<Applied>, Vec<(String, String)>)> {
    roll(d, spec, true).await
}

/// The rollout of [`ensure_agents`]; with `pause_if_in_charge`, the agents paused around
/// it when it restarts any and they run the cluster (a caller that holds them paused
/// already passes `false`).
async fn roll(d: &Deployment, spec: &ClusterSpec, pause_if_in_charge: bool) -> anyhow::Result<(Vec<Applied>, Vec<(String, String)>)> {
    let (bytes, sha) = own_binary()?;
    let log = std::env::var("PGREPL_AGENT_LOG").unwrap_or_else(|_| "info".into());
    let rollout = pgrepl_etcd::hosts::prepare_agents(d, spec, &sha, &log).await?;
    let pause = pause_if_in_charge && !rollout.restarting.is_empty() && crate::ha::agents_in_charge(d).await.unwrap_or(false);
    if pause {
        tracing::info!("pausing the agents while {} restart", rollout.restarting.join(", "));
        crate::ha::set_paused(d, true).await?;
    }
    let r = rollout.apply(Binary { bytes: &bytes, sha256: &sha }).await;
    if pause {
        crate::ha::set_paused(d, false).await.context("resuming the agents after their restart (`pgrepl resume` does it)")?;
    }
    Ok((r?, rollout.unreachable))
}

/// `down` / `destroy`: stops the agents on the hosts (`remove_all`: the etcd members too,
/// and what pgrepl put there).
pub async fn stop_on_hosts(d: &Deployment, remove_all: bool) -> anyhow::Result<(Vec<String>, Vec<(String, String)>)> {
    Ok(pgrepl_etcd::hosts::stop_on_hosts(d, remove_all).await?)
}

/// What was done on each host, one line per host that changed (text output, on stderr).
pub fn say(done: &[Applied], text: bool) {
    if text {
        for a in done.iter().filter(|a| !a.actions.is_empty()) {
            eprintln!("{}: {}", a.host, a.actions.join(", "));
        }
    }
}

/// [`ensure_agents`], saying what was done and which hosts could not be reached; the
/// hosts whose agent was started or restarted.
pub async fn ensure_agents_saying(d: &Deployment, spec: &ClusterSpec, text: bool) -> anyhow::Result<Vec<String>> {
    let (done, unreachable) = ensure_agents(d, spec).await?;
    Ok(said(done, &unreachable, text))
}

/// The agents' rollout of `up` for agents the caller holds paused (after an upgrade: onto
/// the rewritten cluster file and its binaries), saying what was done; the hosts whose
/// agent was started or restarted. A host that cannot be reached is an error here: its
/// agent would go on with the old binaries.
pub async fn roll_held_agents(d: &Deployment, spec: &ClusterSpec, text: bool) -> anyhow::Result<Vec<String>> {
    // The hosts' addresses as `up` renders them (EC2's and witnesses' known once they exist).
    let d = if deploys_etcd(d) { d.clone().with_host_addresses(false).await? } else { d.clone() };
    let (done, unreachable) = roll(&d, spec, false).await?;
    let hosts: Vec<String> = unreachable.iter().map(|(h, e)| format!("{h} ({e})")).collect();
    let started = said(done, &unreachable, text);
    anyhow::ensure!(
        hosts.is_empty(),
        "the agents of {} could not be reached and still run the old cluster file (restarted meanwhile: {})",
        hosts.join(", "),
        if started.is_empty() { "none".to_string() } else { started.join(", ") }
    );
    Ok(started)
}

fn said(done: Vec<Applied>, unreachable: &[(String, String)], text: bool) -> Vec<String> {
    say(&done, text);
    for (h, e) in unreachable {
        eprintln!("warning: {h} cannot be reached: {e}");
    }
    done.into_iter().filter(|a| a.actions.iter().any(|x| x.contains("agent"))).map(|a| a.host).collect()
}
