//! `[ha]` on SSH and EC2 hosts: the etcd members (`[ha.etcd] deploy`) and the agents
//! pgrepl runs there, for a [`Deployment`] whose hosts are remote. The certificates come
//! from the cluster's CA on the admin machine ([`crate::pki`], in the state directory);
//! what each host gets is decided by `pgrepl_core::hostsvc` and carried out there by its
//! `apply`. The `pgrepl` command calls these; a program embedding pgrepl calls them the
//! same way, with its own build of the agent binary.
//!
//! ```no_run
//! # async fn demo(d: &pgrepl_core::deploy::Deployment, spec: &pgrepl_core::ClusterSpec) -> Result<(), Box<dyn std::error::Error>> {
//! use pgrepl_core::hostsvc::apply::Binary;
//! let bytes = std::fs::read("/usr/local/bin/pgrepl")?;
//! let sha = pgrepl_etcd::hosts::sha256_hex(&bytes);
//! let bin = Binary { bytes: &bytes, sha256: &sha };
//! let etcd = pgrepl_etcd::hosts::ensure_etcd(d, bin).await?;   // members up, TLS
//! // ... `d.up()`, the settings, topology and bootstrap leader key in the store
//! // (`pgrepl_core::agent::publish`), then the agents:
//! let rollout = pgrepl_etcd::hosts::prepare_agents(d, spec, &sha, "info").await?;
//! let done = rollout.apply(bin).await?;
//! # let _ = (etcd, done); Ok(()) }
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use pgrepl_core::cluster::AgentBinary;
use pgrepl_core::deploy::Deployment;
use pgrepl_core::hostsvc::apply::{Applied, Binary, apply, ensure_binary, remote_sha256, remove};
use pgrepl_core::hostsvc::{AgentInputs, HostCerts, HostPlan, host_plan};
use pgrepl_core::secret::Secret;
use pgrepl_core::spec::{ClusterSpec, ProviderSpec, SshProviderSpec, VersionChoice};
use pgrepl_core::store::ConsensusStore;
use pgrepl_core::transport::Transport;
use sha2::Digest;

use crate::pki::{AdminPki, Ca, PkiError};

/// What went wrong deploying pgrepl's services on the hosts.
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    #[error(transparent)]
    Core(#[from] pgrepl_core::Error),
    #[error("the cluster's etcd certificates in {dir}: {source}")]
    Pki {
        dir: String,
        #[source]
        source: PkiError,
    },
    #[error("{0}")]
    Refused(String),
}

fn pki_err(pki: &AdminPki) -> impl FnOnce(PkiError) -> HostsError + '_ {
    move |source| HostsError::Pki { dir: pki.dir.display().to_string(), source }
}

/// Lowercase hex SHA-256 (the checksum of the binary pgrepl uploads).
pub fn sha256_hex(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

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
async fn hosts(d: &Deployment) -> Result<(Vec<(String, Arc<dyn Transport>)>, Vec<(String, String)>), HostsError> {
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
fn certs(d: &Deployment, pki: &AdminPki, ca: &Ca, host: &str, agent: bool) -> Result<HostCerts, HostsError> {
    let c = d.cluster();
    let member = c.ha.as_ref().is_some_and(|h| h.etcd.deploy && h.etcd_members.iter().any(|m| m == host));
    let member = if member {
        let address =
            address_of(d, host).ok_or_else(|| HostsError::Refused(format!("{host}: no address for its etcd member's certificate")))?;
        let i = pki
            .kept(&format!("member-{host}-{address}"), || ca.issue_member(host, std::slice::from_ref(&address)))
            .map_err(pki_err(pki))?;
        Some((i.cert_pem, i.key_pem))
    } else {
        None
    };
    let client = if agent {
        let i = pki.kept(&format!("agent-{host}"), || ca.issue_client(&format!("pgrepl {} agent {host}", c.name))).map_err(pki_err(pki))?;
        Some((i.cert_pem, i.key_pem))
    } else {
        None
    };
    Ok(HostCerts { ca: ca.cert_pem().to_string(), member, client })
}

fn pki(d: &Deployment) -> Result<(AdminPki, Ca), HostsError> {
    let pki = AdminPki::in_state_dir(d.state_dir());
    let ca = pki.load_or_create(&d.cluster().name, true).map_err(pki_err(&pki))?;
    Ok((pki, ca))
}

/// `up`, first: the etcd members on their hosts (pgrepl's binary, which supervises them
/// where systemd does not run; certificates, configuration, data directory, a service
/// each). Nothing to do when pgrepl does not deploy etcd. A majority of members is enough
/// to go on: the others are returned as failures (they join when their host is back).
/// Then wait with [`wait_ready`].
pub async fn ensure_etcd(d: &Deployment, bin: Binary<'_>) -> Result<(Vec<Applied>, Vec<String>), HostsError> {
    if !deploys_etcd(d) {
        return Ok((Vec::new(), Vec::new()));
    }
    let (pki, ca) = pki(d)?;
    let members = &d.cluster().ha.as_ref().expect("deploys etcd").etcd_members;
    let (reachable, unreachable) = hosts(d).await?;
    let jobs = reachable.iter().filter(|(n, _)| members.contains(n)).map(|(name, t)| {
        let plan = certs(d, &pki, &ca, name, false).and_then(|c| host_plan(d.cluster(), name, &c, None).map_err(HostsError::Refused));
        let source = source(d);
        async move {
            let plan = plan?;
            let (uploaded, _) = ensure_binary(&**t, name, &source, bin).await?;
            let mut a = apply(&**t, &plan).await?;
            if uploaded {
                a.actions.insert(0, uploaded_note(&source, bin));
            }
            Ok::<_, HostsError>(a)
        }
    });
    let results = join_all(jobs).await;
    let mut done = Vec::new();
    let mut failed: Vec<String> = unreachable.iter().filter(|(n, _)| members.contains(n)).map(|(n, e)| format!("{n}: {e}")).collect();
    for r in results {
        match r {
            Ok(a) => done.push(a),
            Err(e) => failed.push(e.to_string()),
        }
    }
    if done.len() * 2 <= members.len() {
        return Err(HostsError::Refused(format!(
            "etcd: a majority of the {} members could not be deployed: {}",
            members.len(),
            failed.join("; ")
        )));
    }
    Ok((done, failed))
}

/// Waits up to `limit` until `store` answers a read (a new etcd cluster elects its leader).
pub async fn wait_ready(store: &dyn ConsensusStore, limit: Duration) -> Result<(), HostsError> {
    let t0 = Instant::now();
    let mut last = String::new();
    while t0.elapsed() < limit {
        match tokio::time::timeout(Duration::from_secs(3), store.get_prefix("/pgrepl-ready-probe/")).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "no answer in 3 s".into(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(HostsError::Refused(format!("the etcd cluster pgrepl deployed did not answer within {}s: {last}", limit.as_secs())))
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

fn uploaded_note(source: &AgentBinary, bin: Binary<'_>) -> String {
    match source {
        AgentBinary::Url { url, sha256 } => format!("downloaded pgrepl from {url} (sha256 {}…, checked on the host)", &sha256[..12]),
        _ => format!(
            "uploaded pgrepl ({} MB, sha256 {}…, checked on the host)",
            bin.bytes.len() >> 20,
            &bin.sha256[..12.min(bin.sha256.len())]
        ),
    }
}

/// The plan of every reachable host (agents on data nodes, etcd members where placed).
fn plans(
    d: &Deployment,
    spec: &ClusterSpec,
    hosts: &[(String, Arc<dyn Transport>)],
    binary_sha256: &[String],
    log_filter: &str,
) -> Result<Vec<HostPlan>, HostsError> {
    let (pki, ca) = pki(d)?;
    let inputs = AgentInputs {
        spec_toml: host_spec(spec, d),
        replication_password: d_password(d)?,
        log_filter: log_filter.to_string(),
        binary_sha256: String::new(),
    };
    hosts
        .iter()
        .zip(binary_sha256)
        .map(|((name, _), sha)| {
            let agent = true; // data nodes and witnesses alike
            let c = certs(d, &pki, &ca, name, agent)?;
            let inputs = AgentInputs { binary_sha256: sha.clone(), ..inputs.clone() };
            host_plan(d.cluster(), name, &c, agent.then_some(&inputs)).map_err(HostsError::Refused)
        })
        .collect()
}

/// Where the agents' binary comes from (`[ha] agent_binary`, `agent_binary_url`).
fn source(d: &Deployment) -> AgentBinary {
    d.cluster().ha.as_ref().map(|h| h.agent_binary.clone()).unwrap_or_default()
}

/// The SHA-256 of the binary each host's agent will run: the upload's, the URL's, or the
/// one already at the spec's path on that host.
async fn expected_sha256(d: &Deployment, hosts: &[(String, Arc<dyn Transport>)], upload: &str) -> Result<Vec<String>, HostsError> {
    let src = source(d);
    let each = hosts.iter().map(|(name, t)| {
        let src = src.clone();
        async move {
            match src {
                AgentBinary::Upload => Ok(upload.to_string()),
                AgentBinary::Url { sha256, .. } => Ok(sha256),
                AgentBinary::OnHost(path) => match remote_sha256(&**t, &path).await {
                    Ok(Some(sum)) => Ok(sum),
                    Ok(None) => Err(HostsError::Refused(format!("{name}: [ha] agent_binary {path}: no such file on the host"))),
                    Err(e) => Err(HostsError::Refused(format!("{name}: checksum {path}: {e}"))),
                },
            }
        }
    });
    join_all(each).await.into_iter().collect()
}

fn d_password(d: &Deployment) -> Result<Secret, HostsError> {
    let p = match &d.cluster().replication.password_file {
        Some(p) => p.clone(),
        None => d.state_dir().join("replication"),
    };
    let text = std::fs::read_to_string(&p).map_err(|e| HostsError::Refused(format!("the replication password ({}): {e}", p.display())))?;
    Ok(Secret::new(text.trim_end_matches(['\n', '\r'])))
}

/// What `up` does last, prepared: each reachable host's plan (pgrepl's binary, the
/// agent's files and service, the etcd member where placed), the hosts that cannot be
/// reached, and the agents [`apply`](AgentRollout::apply) would restart (a file they read
/// changed, the binary's checksum included). An agent that stops while it leads stops its
/// server: pause the agents around a rollout that restarts any (`pgrepl up` does).
#[derive(Debug)]
pub struct AgentRollout {
    hosts: Vec<(String, Arc<dyn Transport>)>,
    plans: Vec<HostPlan>,
    pub unreachable: Vec<(String, String)>,
    pub restarting: Vec<String>,
    source: AgentBinary,
}

/// Prepares the agents' rollout for a binary of SHA-256 `binary_sha256`; `log_filter`
/// is the agents' `PGREPL_LOG`.
pub async fn prepare_agents(d: &Deployment, spec: &ClusterSpec, binary_sha256: &str, log_filter: &str) -> Result<AgentRollout, HostsError> {
    let (hosts, unreachable) = hosts(d).await?;
    let sums = expected_sha256(d, &hosts, binary_sha256).await?;
    let plans = plans(d, spec, &hosts, &sums, log_filter)?;
    let restarting = stale_agents(&hosts, &plans).await;
    Ok(AgentRollout { hosts, plans, unreachable, restarting, source: source(d) })
}

impl AgentRollout {
    /// Carries the rollout out on every reachable host, in parallel: pgrepl's binary in
    /// place on every host first (uploaded, or downloaded and checked), and only when
    /// every host has it the files and services, so that a host whose binary cannot be
    /// had (a download refused, a checksum that differs) leaves every agent as it ran.
    pub async fn apply(&self, bin: Binary<'_>) -> Result<Vec<Applied>, HostsError> {
        let staged = self.hosts.iter().map(|(name, t)| ensure_binary(&**t, name, &self.source, bin));
        let mut uploads = Vec::new();
        for r in join_all(staged).await {
            uploads.push(r?.0);
        }
        let jobs = self.hosts.iter().zip(&self.plans).zip(uploads).map(|(((_, t), plan), uploaded)| async move {
            let mut a = apply(&**t, plan).await?;
            if uploaded {
                a.actions.insert(0, uploaded_note(&self.source, bin));
            }
            Ok::<_, pgrepl_core::Error>(a)
        });
        let mut done = Vec::new();
        for r in join_all(jobs).await {
            done.push(r?);
        }
        Ok(done)
    }
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

/// `down` / `destroy`: stops the agents (and with `remove`, the etcd members, removing
/// what pgrepl put on the hosts). Hosts that cannot be reached are returned apart.
pub async fn stop_on_hosts(d: &Deployment, remove_all: bool) -> Result<(Vec<String>, Vec<(String, String)>), HostsError> {
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
            let agent = true; // data nodes and witnesses alike
            host_plan(d.cluster(), name, &placeholder, agent.then_some(&inputs)).map_err(HostsError::Refused)
        })
        .collect::<Result<Vec<_>, _>>()?;
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
