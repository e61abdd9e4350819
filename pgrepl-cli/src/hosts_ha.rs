//! `[ha]` on SSH and EC2 hosts: the etcd members (`[ha.etcd] deploy`) and the agents
//! pgrepl runs there. The certificates come from the cluster's CA on this machine
//! (pgrepl-etcd's PKI, in the state directory); what each host gets is decided by
//! `pgrepl_core::hostsvc` and carried out there by its `apply`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::future::join_all;
use pgrepl_core::deploy::Deployment;
use pgrepl_core::hostsvc::apply::{Applied, Binary, apply, install_binary, remove};
use pgrepl_core::hostsvc::{AgentInputs, HostCerts, HostPlan, host_plan};
use pgrepl_core::secret::Secret;
use pgrepl_core::spec::{ClusterSpec, ProviderSpec, SshProviderSpec, VersionChoice};
use pgrepl_core::transport::Transport;
use pgrepl_etcd::pki::{AdminPki, Ca};
use sha2::Digest;

/// How long `up` waits for a new etcd cluster to answer.
const ETCD_READY: Duration = Duration::from_secs(60);

/// Whether this cluster runs its HA services on its hosts (`[ha]` with a remote provider).
pub fn on_hosts(d: &Deployment) -> bool {
    d.cluster().ha.is_some() && !matches!(d.cluster().provider(), ProviderSpec::Local(_))
}

/// Whether pgrepl deploys the cluster's etcd.
pub fn deploys_etcd(d: &Deployment) -> bool {
    d.cluster().ha.as_ref().is_some_and(|h| h.etcd.deploy)
}

/// Every host of the cluster with its transport: data nodes, then witnesses; hosts that
/// cannot be reached are returned apart with the reason.
async fn hosts(d: &Deployment) -> anyhow::Result<(Vec<(String, Arc<dyn Transport>)>, Vec<(String, String)>)> {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for (name, r) in d.host_transports().await? {
        match r {
            Ok(t) => ok.push((name, t)),
            Err(e) => bad.push((name, e.to_string())),
        }
    }
    Ok((ok, bad))
}

/// The host's address as the cluster knows it.
fn address_of(d: &Deployment, host: &str) -> Option<String> {
    let c = d.cluster();
    c.node(host).and_then(|n| n.address.clone()).or_else(|| c.witnesses.iter().find(|w| w.name == host).and_then(|w| w.address.clone()))
}

/// The certificates of `host`, kept in the admin's PKI directory (issued once).
fn certs(d: &Deployment, pki: &AdminPki, ca: &Ca, host: &str, agent: bool) -> anyhow::Result<HostCerts> {
    let c = d.cluster();
    let member = c.ha.as_ref().is_some_and(|h| h.etcd.deploy && h.etcd_members.iter().any(|m| m == host));
    let member = if member {
        let address = address_of(d, host).with_context(|| format!("{host}: no address for its etcd member's certificate"))?;
        let i = pki.kept(&format!("member-{host}-{address}"), || ca.issue_member(host, std::slice::from_ref(&address)))?;
        Some((i.cert_pem, i.key_pem))
    } else {
        None
    };
    let client = if agent {
        let i = pki.kept(&format!("agent-{host}"), || ca.issue_client(&format!("pgrepl {} agent {host}", c.name)))?;
        Some((i.cert_pem, i.key_pem))
    } else {
        None
    };
    Ok(HostCerts { ca: ca.cert_pem().to_string(), member, client })
}

fn pki(d: &Deployment, create: bool) -> anyhow::Result<(AdminPki, Ca)> {
    let pki = AdminPki::in_state_dir(d.state_dir());
    let ca = pki
        .load_or_create(&d.cluster().name, create)
        .with_context(|| format!("the cluster's etcd CA in {} (made by `pgrepl up`)", pki.dir.display()))?;
    Ok((pki, ca))
}

/// `up`, first: the etcd members on their hosts (certificates, configuration, data
/// directory, a service each), then waits until the store answers. Nothing to do when
/// pgrepl does not deploy etcd.
pub async fn ensure_etcd(d: &Deployment) -> anyhow::Result<Vec<Applied>> {
    if !deploys_etcd(d) {
        return Ok(Vec::new());
    }
    let (pki, ca) = pki(d, true)?;
    let members = &d.cluster().ha.as_ref().expect("deploys etcd").etcd_members;
    let (reachable, unreachable) = hosts(d).await?;
    // pgrepl's binary first: it supervises the member where systemd does not run.
    let (bytes, sha) = own_binary()?;
    let bin = Binary { bytes: &bytes, sha256: &sha };
    let jobs = reachable.iter().filter(|(n, _)| members.contains(n)).map(|(name, t)| {
        let plan = certs(d, &pki, &ca, name, false).and_then(|c| host_plan(d.cluster(), name, &c, None).map_err(anyhow::Error::msg));
        async move {
            let plan = plan?;
            let uploaded = install_binary(&**t, name, bin).await?;
            let mut a = apply(&**t, &plan).await?;
            if uploaded {
                a.actions.insert(0, uploaded_note(bin));
            }
            Ok::<_, anyhow::Error>(a)
        }
    });
    let results = join_all(jobs).await;
    let mut done = Vec::new();
    let mut failed: Vec<String> = unreachable.iter().filter(|(n, _)| members.contains(n)).map(|(n, e)| format!("{n}: {e}")).collect();
    for r in results {
        match r {
            Ok(a) => done.push(a),
            Err(e) => failed.push(format!("{e:#}")),
        }
    }
    // A majority of members is enough to go on (the others join when their host is back).
    if done.len() * 2 <= members.len() {
        anyhow::bail!("etcd: a majority of the {} members could not be deployed: {}", members.len(), failed.join("; "));
    }
    for f in &failed {
        tracing::warn!("etcd member not deployed: {f}");
    }
    wait_ready(d).await?;
    Ok(done)
}

/// Waits until the cluster's etcd answers a read (a new cluster elects its leader).
async fn wait_ready(d: &Deployment) -> anyhow::Result<()> {
    let store = crate::ha::open_store(d)?;
    let t0 = Instant::now();
    let mut last = String::new();
    while t0.elapsed() < ETCD_READY {
        match tokio::time::timeout(Duration::from_secs(3), store.get_prefix("/pgrepl-ready-probe/")).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "no answer in 3 s".into(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!("the etcd cluster pgrepl deployed did not answer within {}s: {last}", ETCD_READY.as_secs())
}

/// The cluster file an agent reads on its host: the admin's spec with this machine's
/// paths taken out (SSH keys, password files), the major named, the hosts' addresses
/// filled in, and the provider `ssh` whatever it is here (the agent reaches its own node
/// only, through its own machine).
pub fn host_spec(spec: &ClusterSpec, d: &Deployment) -> String {
    let mut s = spec.clone();
    let c = d.cluster();
    if let Some(m) = c.major {
        s.postgres = VersionChoice::Major(m);
    }
    s.replication.password_file = None;
    let layout = match &spec.provider {
        ProviderSpec::Ssh(p) => SshProviderSpec { layout: p.layout.clone(), data_root: p.data_root.clone(), ..SshProviderSpec::default() },
        _ => SshProviderSpec::default(),
    };
    s.provider = ProviderSpec::Ssh(layout);
    for n in &mut s.nodes {
        if n.address.is_none() {
            n.address = address_of(d, &n.name);
        }
        n.ssh_host = None;
    }
    if let Some(h) = &mut s.ha {
        h.etcd.user = None;
        h.etcd.password_file = None;
    }
    format!("# The cluster file of pgrepl's agent on this host, written by `pgrepl up`.\n{}", s.to_toml())
}

/// pgrepl's own binary, and its SHA-256.
fn own_binary() -> anyhow::Result<(Vec<u8>, String)> {
    let exe = std::env::current_exe().context("where this program is")?;
    let bytes = std::fs::read(&exe).with_context(|| format!("read {}", exe.display()))?;
    let sum = sha2::Sha256::digest(&bytes);
    let hex: String = sum.iter().map(|b| format!("{b:02x}")).collect();
    Ok((bytes, hex))
}

fn uploaded_note(bin: Binary<'_>) -> String {
    format!("uploaded pgrepl ({} MB, sha256 {}…, checked on the host)", bin.bytes.len() >> 20, &bin.sha256[..12])
}

/// The plan of every reachable host (agents on data nodes, etcd members where placed).
fn plans(d: &Deployment, spec: &ClusterSpec, hosts: &[(String, Arc<dyn Transport>)], binary_sha256: &str) -> anyhow::Result<Vec<HostPlan>> {
    let (pki, ca) = pki(d, true)?;
    let secrets_password = d_password(d)?;
    let inputs = AgentInputs {
        spec_toml: host_spec(spec, d),
        replication_password: secrets_password,
        log_filter: std::env::var("PGREPL_AGENT_LOG").unwrap_or_else(|_| "info".into()),
        binary_sha256: binary_sha256.to_string(),
    };
    hosts
        .iter()
        .map(|(name, _)| {
            let agent = d.cluster().node(name).is_some();
            let c = certs(d, &pki, &ca, name, agent)?;
            host_plan(d.cluster(), name, &c, agent.then_some(&inputs)).map_err(anyhow::Error::msg)
        })
        .collect()
}

fn d_password(d: &Deployment) -> anyhow::Result<Secret> {
    let p = match &d.cluster().replication.password_file {
        Some(p) => p.clone(),
        None => d.state_dir().join("replication"),
    };
    let text = std::fs::read_to_string(&p).with_context(|| format!("the replication password ({})", p.display()))?;
    Ok(Secret::new(text.trim_end_matches(['\n', '\r'])))
}

/// `up`, last: pgrepl's binary on every host (uploaded when its checksum differs), the
/// agent's files, and the agents started (restarted onto a new binary or configuration).
/// Returns what was done and the hosts that could not be reached.
pub async fn ensure_agents(d: &Deployment, spec: &ClusterSpec) -> anyhow::Result<(Vec<Applied>, Vec<(String, String)>)> {
    let (bytes, sha) = own_binary()?;
    let (reachable, unreachable) = hosts(d).await?;
    let plans = plans(d, spec, &reachable, &sha)?;
    // An agent that stops while it leads stops its server (nothing writes without the
    // lease): agents about to restart onto a new binary or configuration are paused
    // first, so the primary runs on through the restart, and resumed after.
    let restarting = stale_agents(&reachable, &plans).await;
    let pause = !restarting.is_empty() && crate::ha::agents_in_charge(d).await.unwrap_or(false);
    if pause {
        tracing::info!("pausing the agents while {} restart", restarting.join(", "));
        crate::ha::set_paused(d, true).await?;
    }
    let r = apply_all(&reachable, &plans, &bytes, &sha).await;
    if pause {
        crate::ha::set_paused(d, false).await.context("resuming the agents after their restart (`pgrepl resume` does it)")?;
    }
    Ok((r?, unreachable))
}

/// The hosts whose agent would restart: a file it reads differs from the plan's.
async fn stale_agents(hosts: &[(String, Arc<dyn Transport>)], plans: &[HostPlan]) -> Vec<String> {
    let checks = hosts.iter().zip(plans).map(|((name, t), plan)| async move {
        let agent = plan.agent.as_ref()?;
        for f in plan.files.iter().filter(|f| agent.reads.contains(&f.path)) {
            match t.read_file(&f.path).await {
                Ok(Some(now)) if now == f.contents.expose().as_bytes() => {}
                Ok(None) => return None, // a first start: nothing to pause
                _ => return Some(name.clone()),
            }
        }
        None
    });
    join_all(checks).await.into_iter().flatten().collect()
}

async fn apply_all(
    reachable: &[(String, Arc<dyn Transport>)],
    plans: &[HostPlan],
    bytes: &[u8],
    sha: &str,
) -> anyhow::Result<Vec<Applied>> {
    let bin = Binary { bytes, sha256: sha };
    let jobs = reachable.iter().zip(plans).map(|((name, t), plan)| async move {
        let uploaded = install_binary(&**t, name, bin).await?;
        let mut a = apply(&**t, plan).await?;
        if uploaded {
            a.actions.insert(0, uploaded_note(bin));
        }
        Ok::<_, pgrepl_core::Error>(a)
    });
    let mut done = Vec::new();
    for r in join_all(jobs).await {
        done.push(r?);
    }
    Ok(done)
}

/// `down` / `destroy`: stops the agents (and with `remove`, the etcd members, removing
/// what pgrepl put on the hosts). Hosts that cannot be reached are returned apart.
pub async fn stop_on_hosts(d: &Deployment, remove_all: bool) -> anyhow::Result<(Vec<String>, Vec<(String, String)>)> {
    let (reachable, unreachable) = hosts(d).await?;
    // Paths and services only: no certificate, no secret is needed (nor read: `destroy`
    // may have removed them already).
    let placeholder =
        HostCerts { ca: String::new(), member: Some((String::new(), Secret::new(""))), client: Some((String::new(), Secret::new(""))) };
    let inputs = AgentInputs {
        spec_toml: String::new(),
        replication_password: Secret::new(""),
        log_filter: String::new(),
        binary_sha256: String::new(),
    };
    let plans = reachable
        .iter()
        .map(|(name, _)| {
            let agent = d.cluster().node(name).is_some();
            host_plan(d.cluster(), name, &placeholder, agent.then_some(&inputs)).map_err(anyhow::Error::msg)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let jobs = reachable.iter().zip(&plans).map(|((name, t), plan)| async move {
        let mut stopped = Vec::new();
        if remove_all {
            for s in remove(&**t, plan, false).await? {
                stopped.push(format!("{name}: {s}"));
            }
        } else if let Some(a) = &plan.agent {
            pgrepl_core::hostsvc::apply::stop(&**t, name, a).await?;
            stopped.push(format!("{name}: {}", a.name));
        }
        Ok::<_, pgrepl_core::Error>(stopped)
    });
    let mut out = Vec::new();
    for r in join_all(jobs).await {
        out.extend(r?);
    }
    Ok((out, unreachable))
}
