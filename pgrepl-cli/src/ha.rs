//! `[ha]` clusters: the store, the agents (`pgrepl agent`, started in the background by
//! `up` on local clusters), `pause` / `resume`, and what `status` adds from the store.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use pgrepl_core::agent::{Agent, GuardControl};
use pgrepl_core::deploy::Deployment;
use pgrepl_core::guard::GuardHandle;
use pgrepl_core::store::{ConsensusStore, Keys, StoreView};

/// How long the key `up` writes for the first primary lives before its agent adopts it.
const BOOTSTRAP_LEASE: Duration = Duration::from_secs(30);

/// Set by an agent: `Some(node)` on that node's own host (its etcd client certificate is
/// the one `up` put there, and it asks its own host's member first), `None` for an agent
/// run from the admin machine (local clusters).
static AGENT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

/// This process is the agent of `node` on that node's own host.
pub fn set_agent_on_host(node: &str) {
    let _ = AGENT.set(Some(node.to_string()));
}

/// This process is an agent run from the admin machine (no effect after
/// [`set_agent_on_host`]).
pub fn set_agent() {
    let _ = AGENT.set(None);
}

/// The node whose host this agent runs on.
fn on_host_node() -> Option<&'static str> {
    AGENT.get().and_then(|a| a.as_deref())
}

/// The store the cluster's `[ha.etcd]` names (an etcd pgrepl deployed: with the
/// cluster's CA and the admin's client certificate, or on a host the agent's).
pub fn open_store(d: &Deployment) -> anyhow::Result<Arc<dyn ConsensusStore>> {
    Ok(Arc::new(pgrepl_etcd::EtcdStore::new(&store_options(d)?)?))
}

/// How this process reaches the cluster's etcd (see [`open_store`]).
fn store_options(d: &Deployment) -> anyhow::Result<pgrepl_etcd::EtcdOptions> {
    let ha = d.cluster().ha.as_ref().context("the cluster has no [ha] section")?;
    let e = &ha.etcd;
    let password = match &e.password_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("ha.etcd.password_file: cannot read {}", p.display()))?
                .trim_end()
                .to_string(),
        ),
        None => None,
    };
    // PGREPL_ETCD_ENDPOINTS (comma-separated) overrides the spec's endpoints for this
    // process: an agent reaching etcd through another path (a proxy, another network).
    let endpoints = match std::env::var("PGREPL_ETCD_ENDPOINTS") {
        Ok(v) if !v.trim().is_empty() => v.split(',').map(|s| s.trim().to_string()).collect(),
        _ => pgrepl_core::render::etcd_endpoints(d.cluster()),
    };
    let mut endpoints: Vec<String> = endpoints;
    // An agent on its host asks its own host's member first: another host's, whose link
    // may be gone, would hang its calls and its watch (no reset comes) until they time out.
    if let Some(a) = on_host_node().and_then(|n| host_address(d, n)) {
        let mine = |e: &String| e.contains(&format!("//{a}:")) || e.contains(&format!("//[{a}]:"));
        endpoints.sort_by_key(|e| !mine(e));
    }
    let mut opts = pgrepl_etcd::EtcdOptions::new(endpoints);
    opts.ca_file = e.ca_file.clone();
    opts.cert_file = e.cert_file.clone();
    opts.key_file = e.key_file.clone();
    if AGENT.get().is_none() {
        // A command, not an agent's loop: a member that hangs may take longer.
        opts.request_timeout = opts.request_timeout.max(Duration::from_secs(2));
    }
    if e.deploy {
        if on_host_node().is_some() {
            let f = pgrepl_core::render::EtcdFiles::of(&d.cluster().name);
            opts.ca_file = Some(f.ca.into());
            opts.cert_file = Some(f.client_cert.into());
            opts.key_file = Some(f.client_key.into());
        } else {
            // The cluster's CA is made on first use (`up` deploys etcd with it).
            let pki = pgrepl_etcd::pki::AdminPki::in_state_dir(d.state_dir());
            pki.load_or_create(&d.cluster().name, true).with_context(|| format!("the cluster's etcd CA in {}", pki.dir.display()))?;
            opts.ca_file = Some(pki.ca_cert());
            opts.cert_file = Some(pki.admin_cert());
            opts.key_file = Some(pki.admin_key());
        }
    }
    opts.user = e.user.clone();
    opts.password = password.map(pgrepl_core::secret::Secret::new);
    Ok(opts)
}

/// Each member of an etcd pgrepl deployed, asked on its own (1 s): which answer, and why
/// the others do not (a host cut off, a member stopped).
async fn member_health(d: &Deployment) -> Vec<(String, Result<(), String>)> {
    let Ok(base) = store_options(d) else { return Vec::new() };
    let Ok(members) = pgrepl_core::render::etcd_members(d.cluster()) else { return Vec::new() };
    let endpoints = pgrepl_core::render::etcd_endpoints(d.cluster());
    let asks = members.into_iter().zip(endpoints).map(|(m, ep)| {
        let mut o = base.clone();
        o.endpoints = vec![ep];
        o.request_timeout = Duration::from_secs(1);
        async move {
            let r = match pgrepl_etcd::EtcdStore::new(&o) {
                Ok(s) => match tokio::time::timeout(Duration::from_secs(2), s.get_prefix("/pgrepl-ready-probe/")).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("no answer in 2 s".to_string()),
                },
                Err(e) => Err(e.to_string()),
            };
            (m.name, r)
        }
    });
    futures_util::future::join_all(asks).await
}

/// The address of a node's or a witness's host.
fn host_address(d: &Deployment, name: &str) -> Option<String> {
    let c = d.cluster();
    c.node(name).and_then(|n| n.address.clone()).or_else(|| c.witnesses.iter().find(|w| w.name == name).and_then(|w| w.address.clone()))
}

/// The cluster's store, its keys, and one read of them.
async fn read(d: &Deployment) -> anyhow::Result<(Arc<dyn ConsensusStore>, Keys, StoreView)> {
    let store = open_store(d)?;
    let keys = Keys::new(&d.cluster().name);
    let view = StoreView::parse(&keys, &store.get_prefix(keys.prefix()).await?);
    Ok((store, keys, view))
}

/// The guard process, seen from the agent.
#[derive(Debug)]
struct Guard(GuardHandle);

impl GuardControl for Guard {
    fn arm(&mut self, left: Duration) -> Result<(), String> {
        self.0.arm(left).map_err(|e| e.to_string())
    }
    fn disarm(&mut self) -> Result<(), String> {
        self.0.disarm().map_err(|e| e.to_string())
    }
}

/// `pgrepl agent --node NODE`: runs until SIGTERM or SIGINT.
pub async fn agent(d: Deployment, node: &str) -> anyhow::Result<u8> {
    set_agent();
    let store = open_store(&d)?;
    let data_dir = agent_data_dir(&d, node).await?;
    let exe = std::env::current_exe().context("where this program is")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["agent", "--guard", "--data-dir"]).arg(&data_dir);
    let guard = GuardHandle::spawn(cmd).context("could not start the guard process")?;
    tracing::info!(node, guard = guard.id(), "agent starting");
    let api = d.cluster().agent_api(node);
    let url = d.cluster().agent_url_base(node);
    let replica_max_lag = d.cluster().ha.as_ref().map(|h| h.replica_max_lag).unwrap_or(16 << 20);
    let local_member = local_member_store(&d, node);
    let witnesses: Vec<String> = d.cluster().witnesses.iter().map(|w| w.name.clone()).collect();
    let mut agent = Agent::new(d, node, store)?.with_guard(Box::new(Guard(guard)));
    if let Some(u) = url {
        agent = agent.with_address(u.trim_start_matches("http://"));
    }
    // The HTTP endpoint (health checks, /metrics), on the node's own address.
    let http = api.map(|(listen, port)| tokio::spawn(serve_http(listen, port, agent.status(), replica_max_lag)));
    // On its host, with an etcd member there: etcd's leadership kept off it while it leads.
    let keeper = local_member.map(|store| tokio::spawn(keep_etcd_leader_away(store, witnesses, agent.status())));
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("a SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    let r = agent.run(shutdown).await;
    for h in [http, keeper].into_iter().flatten() {
        h.abort();
    }
    r?;
    Ok(0)
}

/// The etcd member on this agent's own host (an agent on its host, etcd deployed by
/// pgrepl, a member placed here), as a store of that one endpoint.
fn local_member_store(d: &Deployment, node: &str) -> Option<pgrepl_etcd::EtcdStore> {
    let ha = d.cluster().ha.as_ref().filter(|h| h.etcd.deploy && h.etcd_members.iter().any(|m| m == node))?;
    on_host_node()?;
    let address = d.cluster().node(node)?.address.clone()?;
    let host = if address.contains(':') { format!("[{address}]") } else { address };
    let mut o = store_options(d).ok()?;
    o.endpoints = vec![format!("https://{host}:{}", ha.etcd.client_port)];
    o.request_timeout = Duration::from_secs(2);
    pgrepl_etcd::EtcdStore::new(&o).ok()
}

/// While this node leads, keeps etcd's own leadership off its host's member: etcd 3.4
/// restarts every lease at its full ttl when its leader changes, so a primary whose host
/// also held etcd's leader would, by vanishing, delay its successor by etcd's election
/// plus a whole ttl. The leadership goes to a witness's member when there is one (a
/// witness never becomes the primary), else to any other. Checked every 5 s.
async fn keep_etcd_leader_away(
    local: pgrepl_etcd::EtcdStore,
    witnesses: Vec<String>,
    status: tokio::sync::watch::Receiver<Arc<pgrepl_core::agent::AgentStatus>>,
) {
    let limit = Duration::from_secs(3);
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        if !status.borrow().holds_lease {
            continue;
        }
        let Ok(Ok((me, leader))) = tokio::time::timeout(limit, local.member_and_leader()).await else { continue };
        if me != leader {
            continue;
        }
        let Ok(Ok(members)) = tokio::time::timeout(limit, local.member_names()).await else { continue };
        let others: Vec<&(u64, String)> = members.iter().filter(|(id, _)| *id != me).collect();
        let Some((target, name)) = others.iter().find(|(_, n)| witnesses.contains(n)).or(others.first()).copied() else { continue };
        match tokio::time::timeout(limit, local.move_leader(*target)).await {
            Ok(Ok(())) => tracing::info!(
                "etcd's leadership moved from this host's member to {name}'s: losing this host no longer restarts the leases"
            ),
            Ok(Err(e)) => tracing::warn!("moving etcd's leadership to {name}'s member: {e}"),
            Err(_) => tracing::warn!("moving etcd's leadership to {name}'s member: no answer in 3 s"),
        }
    }
}

/// `pgrepl agent --node W --on-host` for a witness: reports it as a member and serves
/// its HTTP endpoint (`/health`: the store answers through it), until SIGTERM or SIGINT.
pub async fn witness_agent(d: Deployment, node: &str) -> anyhow::Result<u8> {
    let store = open_store(&d)?;
    let ha = d.cluster().ha.as_ref().context("the cluster has no [ha] section")?;
    let address = d.cluster().witnesses.iter().find(|w| w.name == node).and_then(|w| w.address.clone());
    let mut agent = pgrepl_core::agent::WitnessAgent::new(d.cluster(), node, store)?;
    let http = match &address {
        Some(a) => {
            let listen = ha.api_listen.clone().unwrap_or_else(|| a.clone());
            agent = agent.with_address(if a.contains(':') { format!("[{a}]:{}", ha.api_port) } else { format!("{a}:{}", ha.api_port) });
            Some(tokio::spawn(serve_http(listen, ha.api_port, agent.status(), ha.replica_max_lag)))
        }
        None => None,
    };
    tracing::info!(node, "witness agent starting");
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("a SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    agent.run(shutdown).await;
    if let Some(h) = http {
        h.abort();
    }
    Ok(0)
}

/// Serves the agent's HTTP endpoint on `listen:port`; while the port cannot be bound (in
/// use), says so and tries again every 5 s: the agent keeps running without it.
async fn serve_http(
    listen: String,
    port: u16,
    status: tokio::sync::watch::Receiver<Arc<pgrepl_core::agent::AgentStatus>>,
    replica_max_lag: u64,
) {
    let opts = pgrepl_http::HttpOptions { replica_max_lag };
    let mut warned = false;
    loop {
        match tokio::net::TcpListener::bind((listen.as_str(), port)).await {
            Ok(l) => {
                tracing::info!(address = %listen, port, "HTTP endpoint listening (/primary, /replica, /health, /cluster, /metrics)");
                if let Err(e) = pgrepl_http::serve(l, status.clone(), opts, std::future::pending()).await {
                    tracing::warn!(address = %listen, port, error = %e, "HTTP endpoint failed");
                }
            }
            Err(e) if !warned => {
                tracing::warn!(address = %listen, port, error = %e, "the HTTP endpoint cannot listen; trying again every 5 s");
                warned = true;
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// `pgrepl agent --guard --data-dir D`: the guard (stdin: the agent's instructions).
pub async fn guard(data_dir: &Path) -> anyhow::Result<u8> {
    let fence = pgrepl_core::guard::StopPostmaster::new(data_dir);
    let input = tokio::io::BufReader::new(tokio::io::stdin());
    let out = pgrepl_core::guard::run_guard(input, &fence, Default::default()).await;
    tracing::info!("guard ends: {out:?}");
    Ok(0)
}

async fn agent_data_dir(d: &Deployment, node: &str) -> anyhow::Result<String> {
    let (_, handles, _) = d.connect_partial().await?;
    let h = handles.into_iter().find(|h| h.name == node).with_context(|| format!("node {node}: its host cannot be reached"))?;
    Ok(h.layout.data_dir)
}

/// After `up`: the HA settings, the topology and (when nobody leads yet) the leader key
/// for the primary `up` deployed, bound to a short lease its agent adopts.
pub async fn publish(d: &Deployment, store: &Arc<dyn ConsensusStore>) -> anyhow::Result<()> {
    Ok(pgrepl_core::agent::publish(d, store.clone(), BOOTSTRAP_LEASE).await?)
}

/// Where the agents' pid files and logs are.
fn agents_dir(d: &Deployment) -> PathBuf {
    d.state_dir().join("agents")
}

/// The pid of `node`'s agent, when it runs.
fn agent_pid(d: &Deployment, node: &str) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(agents_dir(d).join(format!("{node}.pid"))).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let ours = args.iter().any(|a| *a == b"agent") && args.windows(2).any(|w| w[0] == b"--node" && w[1] == node.as_bytes());
    ours.then_some(pid)
}

/// Starts every node's agent that does not run (local clusters): `pgrepl agent` in the
/// background, a pid file and a log per node.
pub fn start_agents(d: &Deployment, spec_path: &Path, pass: &[std::ffi::OsString]) -> anyhow::Result<Vec<String>> {
    let dir = agents_dir(d);
    std::fs::create_dir_all(&dir).with_context(|| format!("could not create {}", dir.display()))?;
    let exe = std::env::current_exe().context("where this program is")?;
    let spec_path = std::fs::canonicalize(spec_path).unwrap_or_else(|_| spec_path.to_path_buf());
    let mut started = Vec::new();
    for n in &d.cluster().nodes {
        if agent_pid(d, &n.name).is_some() {
            continue;
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join(format!("{}.log", n.name)))?;
        let mut cmd = std::process::Command::new(&exe);
        cmd.arg("agent").arg("--node").arg(&n.name).arg("-f").arg(&spec_path);
        cmd.args(pass);
        cmd.env("PGREPL_LOG", std::env::var("PGREPL_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().with_context(|| format!("could not start the agent of {}", n.name))?;
        std::fs::write(dir.join(format!("{}.pid", n.name)), format!("{}\n", child.id()))?;
        started.push(n.name.clone());
    }
    Ok(started)
}

/// Stops every agent this machine runs for the cluster (SIGTERM: a leader stops its
/// server first), waiting up to `wait` for each.
pub async fn stop_agents(d: &Deployment, wait: Duration) -> Vec<String> {
    let mut stopped = Vec::new();
    for n in &d.cluster().nodes {
        let Some(pid) = agent_pid(d, &n.name) else { continue };
        let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
        let t = std::time::Instant::now();
        while t.elapsed() < wait && Path::new(&format!("/proc/{pid}")).exists() && agent_pid(d, &n.name).is_some() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = std::fs::remove_file(agents_dir(d).join(format!("{}.pid", n.name)));
        stopped.push(n.name.clone());
    }
    stopped
}

/// `pause` / `resume`: the agents observe only, or act again (under the operation lock:
/// not while an operator acts on the nodes).
pub async fn set_paused(d: &Deployment, paused: bool) -> anyhow::Result<()> {
    let lock = d.lock_operation(if paused { "pause" } else { "resume" }, d.lock_wait()).await?;
    let r = write_paused(d, paused).await;
    lock.release().await;
    r
}

async fn write_paused(d: &Deployment, paused: bool) -> anyhow::Result<()> {
    let store = open_store(d)?;
    let defaults = d.cluster().ha.as_ref().map(|h| h.settings.clone()).unwrap_or_default();
    pgrepl_core::store::operator::set_paused(&*store, &Keys::new(&d.cluster().name), &defaults, paused).await?;
    Ok(())
}

/// What `status` adds for an `[ha]` cluster: the leader, the sync set, the members.
pub async fn status_lines(d: &Deployment) -> (Vec<String>, serde_json::Value) {
    let keys = Keys::new(&d.cluster().name);
    let store = match open_store(d) {
        Ok(s) => s,
        Err(e) => return (vec![format!("ha: {e}")], serde_json::json!({ "error": e.to_string() })),
    };
    let snap = match tokio::time::timeout(Duration::from_secs(3), store.get_prefix(keys.prefix())).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return (
                vec![format!("ha: {e}: no promotion can happen; standbys keep serving reads")],
                serde_json::json!({ "error": e.to_string() }),
            );
        }
        Err(_) => {
            return (
                vec!["ha: the store did not answer in 3 s: no promotion can happen".into()],
                serde_json::json!({ "error": "timeout" }),
            );
        }
    };
    let v = StoreView::parse(&keys, &snap);
    let s = v.settings();
    // The lease left on the store's clock (whole seconds): how long a dead leader would
    // keep the key.
    let lease_left = match v.leader.as_ref().and_then(|l| l.lease) {
        Some(l) => match tokio::time::timeout(Duration::from_secs(3), store.time_to_live(l)).await {
            Ok(Ok(left)) => left,
            _ => None,
        },
        None => None,
    };
    let mut lines = vec![format!(
        "ha: leader {}{}; ttl {} ms, loop {} ms{}",
        v.leader_node().unwrap_or("none"),
        match (&v.leader, lease_left) {
            (Some(_), Some(left)) => format!(" (lease {}s left)", left.as_secs()),
            (Some(l), None) if l.lease.is_some() => " (lease running out)".to_string(),
            _ => String::new(),
        },
        s.ttl_ms,
        s.loop_wait_ms,
        if s.paused { "; PAUSED (agents observe only)" } else { "" }
    )];
    let health = if d.cluster().ha.as_ref().is_some_and(|h| h.etcd.deploy) { member_health(d).await } else { Vec::new() };
    if !health.is_empty() {
        let down: Vec<String> = health.iter().filter_map(|(n, r)| r.as_ref().err().map(|e| format!("{n} ({e})"))).collect();
        lines.push(format!(
            "ha: etcd members answering: {} of {}{}",
            health.len() - down.len(),
            health.len(),
            if down.is_empty() { String::new() } else { format!("; cannot reach {}", down.join(", ")) }
        ));
    }
    let op: Option<pgrepl_core::oplock::LockHolder> =
        snap.kvs.iter().find(|kv| kv.key == keys.op()).and_then(|kv| serde_json::from_slice(&kv.value).ok());
    if let Some(h) = &op {
        lines.push(format!("ha: operation lock held by {h}"));
    }
    if let Some(r) = &v.switchover {
        lines.push(format!(
            "ha: switchover {} -> {} requested{}",
            r.value.from,
            r.value.to,
            r.value.refused.as_ref().map(|w| format!(", refused: {w}")).unwrap_or_default()
        ));
    }
    match &v.sync {
        Some(sync) if sync.value.synchronous() => {
            lines.push(format!("ha: sync set of {}: {} of ({})", sync.value.primary, sync.value.count, sync.value.standbys.join(", ")))
        }
        Some(sync) => lines.push(format!("ha: {} replicates asynchronously", sync.value.primary)),
        None => {}
    }
    let topo = v.topology();
    if let Some(last) = topo.history.last() {
        use pgrepl_core::topology::PromotionKind;
        lines.push(format!(
            "ha: promotions recorded: {} failovers, {} switchovers; last: {} -> {} ({:?}, timeline {}, {:.2}s, at {})",
            topo.promotions(PromotionKind::Failover),
            topo.promotions(PromotionKind::Switchover),
            last.from,
            last.node,
            last.kind,
            last.timeline.map(|t| t.to_string()).unwrap_or("-".into()),
            last.millis as f64 / 1000.0,
            pgrepl_core::oplock::fmt_utc(last.at)
        ));
    }
    let local = matches!(d.cluster().provider(), pgrepl_core::spec::ProviderSpec::Local(_));
    for n in &d.cluster().nodes {
        // Local clusters: whether this machine runs the node's agent; hosts: its endpoint.
        let agent = match (local, v.member(&n.name).and_then(|m| m.agent.clone())) {
            (true, _) if agent_pid(d, &n.name).is_some() => "agent runs here".to_string(),
            (true, _) => "no agent here".to_string(),
            (false, Some(a)) => format!("agent at {a}"),
            (false, None) => "agent on its host".to_string(),
        };
        match v.member(&n.name) {
            Some(m) => lines.push(format!(
                "ha: member {}: {:?}, timeline {}, lsn {}{} ({agent})",
                n.name,
                m.role,
                m.timeline.map(|t| t.to_string()).unwrap_or("-".into()),
                m.lsn.map(|l| l.to_string()).unwrap_or("-".into()),
                m.note.as_ref().map(|n| format!(", {n}")).unwrap_or_default()
            )),
            None => lines.push(format!("ha: member {}: no report (its agent is not running or its lease ran out; {agent})", n.name)),
        }
    }
    for w in &d.cluster().witnesses {
        match v.member(&w.name) {
            Some(m) => lines.push(format!(
                "ha: witness {}: reports{}",
                w.name,
                m.agent.as_ref().map(|a| format!(" (agent at {a})")).unwrap_or_default()
            )),
            None => lines.push(format!("ha: witness {}: no report (its agent is not running, or its host is cut off)", w.name)),
        }
    }
    let json = serde_json::json!({
        "leader": v.leader_node(),
        "lease_left_seconds": lease_left.map(|d| d.as_secs()),
        "operation_lock": op,
        "paused": s.paused,
        "ttl_ms": s.ttl_ms,
        "sync": v.sync.as_ref().map(|s| &s.value),
        "members": v.members.values().map(|m| &m.value).collect::<Vec<_>>(),
        "history": topo.history,
        "etcd_members": health.iter().map(|(n, r)| serde_json::json!({ "member": n, "answers": r.is_ok(), "error": r.as_ref().err() })).collect::<Vec<_>>(),
    });
    (lines, json)
}

/// Removes the cluster's keys (destroy).
pub async fn forget(d: &Deployment) -> anyhow::Result<()> {
    let store = open_store(d)?;
    store.delete_prefix(Keys::new(&d.cluster().name).prefix()).await?;
    Ok(())
}

/// After a manual operation: the leader key names the primary now recorded (the old
/// holder's key is removed; the new primary's agent takes it on resume).
pub async fn hand_over_leader(d: &Deployment) -> anyhow::Result<()> {
    if d.cluster().ha.is_none() {
        return Ok(());
    }
    let (store, keys, view) = read(d).await?;
    let primary = d.current_cluster().await?.primary().name.clone();
    if let Some(l) = &view.leader {
        if l.value.node != primary {
            store.delete_if(&keys.leader(), l.mod_revision).await?;
        }
    }
    Ok(())
}

/// The deployment bound to its store (`[ha]` clusters): its topology recorded there, its
/// operation lock there, and the operations that act on the nodes themselves hold the
/// agents paused and move the leader key with the primary role
/// ([`Deployment::with_consensus_store`]).
pub fn with_store_records(d: Deployment) -> anyhow::Result<Deployment> {
    if d.cluster().ha.is_none() {
        return Ok(d);
    }
    let store = open_store(&d)?;
    Ok(d.with_consensus_store(store))
}

/// Whether agents run this cluster now: an `[ha]` cluster whose agents are not paused
/// and report to the store.
pub async fn agents_in_charge(d: &Deployment) -> anyhow::Result<bool> {
    if d.cluster().ha.is_none() {
        return Ok(false);
    }
    let (_, _, view) = read(d).await?;
    Ok(view.agents_in_charge())
}

/// Runs `f` (filing a request with the agents) under the cluster's operation lock, if
/// the agents still run the cluster once it is held: `Ok(None)` otherwise (they were
/// paused meanwhile: the caller acts itself, under the lock again). `pause` and `resume`
/// take the lock too, so a request is never filed with agents that are being paused.
pub async fn under_lock<T, F>(d: &Deployment, op: &str, f: F) -> anyhow::Result<Option<T>>
where
    F: std::future::Future<Output = anyhow::Result<T>>,
{
    let lock = d.lock_operation(op, d.lock_wait()).await?;
    let result = match agents_in_charge(d).await {
        Ok(true) => f.await.map(Some),
        Ok(false) => Ok(None),
        Err(e) => Err(e),
    };
    lock.release().await;
    result
}

/// What a switchover through the agents did.
#[derive(Debug, serde::Serialize)]
pub struct AgentSwitchover {
    /// The old primary.
    pub from: String,
    /// The new one.
    pub to: String,
    /// From the request until the new primary reported accepting writes.
    pub seconds: f64,
}

/// A switchover request filed in the store ([`file_switchover`]).
#[derive(Debug)]
pub struct FiledSwitchover {
    store: Arc<dyn ConsensusStore>,
    keys: Keys,
    from: String,
    to: String,
    filed: std::time::Instant,
}

/// `switchover --to` on a cluster the agents run, first half: a request in the store that
/// the leader carries out (clean stop, the key handed over) and the target's agent
/// finishes (promotion); one request at a time (refused while another is under way).
pub async fn file_switchover(d: &Deployment, to: &str) -> anyhow::Result<FiledSwitchover> {
    use pgrepl_core::store::SwitchoverRequest;
    if d.cluster().node(to).is_none() {
        return Err(refused(to, format!("not a node of cluster {}", d.cluster().name)));
    }
    let (store, keys, view) = read(d).await?;
    let from = view
        .leader_node()
        .map(String::from)
        .ok_or_else(|| refused(to, "no node holds the leader key now (a failover may be under way)".into()))?;
    if from == to {
        return Err(refused(to, format!("{to} is the primary already")));
    }
    let filed = std::time::Instant::now();
    let body = serde_json::to_vec(&SwitchoverRequest { to: to.to_string(), from: from.clone(), refused: None })?;
    if !store.create(&keys.switchover(), &body, None).await? {
        let other = view.switchover.map(|r| format!(" (to {}, asked of {})", r.value.to, r.value.from)).unwrap_or_default();
        return Err(refused(to, format!("another switchover is under way{other}: one at a time")));
    }
    Ok(FiledSwitchover { store, keys, from, to: to.to_string(), filed })
}

/// Second half: waits up to `limit` for the switchover filed, and withdraws the request
/// when it did not happen in time (a leader that stopped starts again in place).
pub async fn await_switchover(f: FiledSwitchover, limit: Duration) -> anyhow::Result<AgentSwitchover> {
    use pgrepl_core::store::MemberRole;
    let FiledSwitchover { store, keys, from, to, filed: t0 } = f;
    let to = to.as_str();
    let mut last = String::new();
    while t0.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let Ok(snap) = store.get_prefix(keys.prefix()).await else { continue };
        let v = StoreView::parse(&keys, &snap);
        if let Some(r) = &v.switchover {
            if let Some(reason) = &r.value.refused {
                let _ = store.delete_if(&keys.switchover(), r.mod_revision).await;
                return Err(refused(to, format!("{from} refused the switchover: {reason}")));
            }
        }
        if v.leader_node() == Some(to) && v.member(to).is_some_and(|m| m.role == MemberRole::Primary) {
            let seconds = t0.elapsed().as_secs_f64();
            if let Some(r) = &v.switchover {
                let _ = store.delete_if(&keys.switchover(), r.mod_revision).await;
            }
            return Ok(AgentSwitchover { from, to: to.to_string(), seconds });
        }
        if v.settings().paused {
            last = "the agents were paused".into();
            break;
        }
        last = format!("leader {}", v.leader_node().unwrap_or("none"));
    }
    // Not done in time: withdrawn (a leader that stopped starts again in place).
    if let Ok(snap) = store.get_prefix(keys.prefix()).await {
        if let Some(r) = StoreView::parse(&keys, &snap).switchover {
            let _ = store.delete_if(&keys.switchover(), r.mod_revision).await;
        }
    }
    anyhow::bail!("the switchover to {to} did not finish within {}s ({last}); the request was withdrawn", limit.as_secs())
}

/// A refusal concerning `node`.
fn refused(node: &str, reason: String) -> anyhow::Error {
    pgrepl_core::Error::Refused(pgrepl_core::error::Refusal { node: node.to_string(), reason }).into()
}

/// Whether agents lead the cluster now: not paused, and a node holds the leader key.
pub async fn agents_lead(d: &Deployment) -> anyhow::Result<bool> {
    if d.cluster().ha.is_none() {
        return Ok(false);
    }
    let (_, _, view) = read(d).await?;
    Ok(!view.settings().paused && view.leader.is_some())
}

/// What `failover` or `rejoin` saw the agents do.
#[derive(Debug, serde::Serialize)]
pub struct AgentOutcome {
    /// The leader at the end.
    pub leader: String,
    /// The node asked about (`rejoin`), or the leader (`failover`).
    pub node: String,
    /// How long the command waited.
    pub seconds: f64,
}

/// `failover` on a cluster the agents lead: they fail over by themselves, so this refuses
/// while a leader holds the key (a planned move is `switchover`), and otherwise waits for
/// their election and says who won. Any number of these at once see the same one leader.
pub async fn failover_via_agents(d: &Deployment, to: Option<&str>, limit: Duration) -> anyhow::Result<AgentOutcome> {
    use pgrepl_core::store::MemberRole;
    let (store, keys, view) = read(d).await?;
    if let Some(l) = view.leader_node() {
        // The store may not know yet that the leader died (its lease runs until the ttl):
        // asked directly.
        if view.member(l).is_some_and(|m| m.role == MemberRole::Primary) && answers_writable(d, l).await {
            return Err(refused(
                l,
                format!(
                    "{l} holds the leader key and accepts writes: the agents fail over only when it is gone (`pgrepl switchover --to` moves it; `pgrepl pause` to act by hand)"
                ),
            ));
        }
    }
    if let Some(t) = to {
        return Err(refused(t, "the agents choose the most advanced eligible standby; `switchover --to` once a leader is elected".into()));
    }
    let t0 = std::time::Instant::now();
    let mut last = String::new();
    while t0.elapsed() < limit {
        if let Ok(snap) = store.get_prefix(keys.prefix()).await {
            let v = StoreView::parse(&keys, &snap);
            if let Some(l) = v.leader_node() {
                // The key of a dead leader lives until its lease runs out: asked directly.
                if v.member(l).is_some_and(|m| m.role == MemberRole::Primary) && answers_writable(d, l).await {
                    return Ok(AgentOutcome { leader: l.to_string(), node: l.to_string(), seconds: t0.elapsed().as_secs_f64() });
                }
            }
            if v.settings().paused {
                anyhow::bail!("the agents were paused while this waited for their election: `pgrepl failover` acts by hand now");
            }
            last = format!("leader {}", v.leader_node().unwrap_or("none"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!(
        "the agents elected no primary within {}s ({last}): see `pgrepl status` for why (a synchronous set that cannot be covered, a lag over maximum_lag_on_failover)",
        limit.as_secs()
    )
}

/// Whether `node`'s server answers as a primary now.
async fn answers_writable(d: &Deployment, node: &str) -> bool {
    let (Some(caps), Some(n)) = (d.cluster().caps(), d.cluster().node(node)) else { return true };
    let Ok((_, handles, _)) = d.connect_partial().await else { return true };
    match handles.iter().find(|h| h.name == node) {
        Some(h) => pgrepl_core::observe::probe::probe_node(h, n.port, &caps).await.writable(),
        // Its host cannot be reached: it may well accept writes.
        None => true,
    }
}

/// `rejoin NODE` on a cluster the agents lead: its agent brings it back by itself; this
/// waits until it reports as a standby (refused when no agent of it runs here).
pub async fn rejoin_via_agents(d: &Deployment, node: &str, limit: Duration) -> anyhow::Result<AgentOutcome> {
    use pgrepl_core::store::MemberRole;
    let refused = |reason: String| -> anyhow::Error {
        pgrepl_core::Error::Refused(pgrepl_core::error::Refusal { node: node.to_string(), reason }).into()
    };
    if d.cluster().node(node).is_none() {
        return Err(refused(format!("not a node of cluster {}", d.cluster().name)));
    }
    let (store, keys, view) = read(d).await?;
    if view.leader_node() == Some(node) {
        return Err(refused("it is the leader".into()));
    }
    if view.member(node).is_none() && agent_pid(d, node).is_none() {
        return Err(refused("its agent does not run: `pgrepl up` starts it (it then comes back by itself)".into()));
    }
    let t0 = std::time::Instant::now();
    let mut last = String::new();
    while t0.elapsed() < limit {
        if let Ok(snap) = store.get_prefix(keys.prefix()).await {
            let v = StoreView::parse(&keys, &snap);
            if let (Some(l), Some(m)) = (v.leader_node(), v.member(node)) {
                if m.role == MemberRole::Standby && m.streaming && m.upstream.as_deref() == Some(l) && !v.topology().is_fenced(node) {
                    return Ok(AgentOutcome { leader: l.to_string(), node: node.to_string(), seconds: t0.elapsed().as_secs_f64() });
                }
            }
            if v.settings().paused {
                anyhow::bail!("the agents were paused while this waited for {node}: `pgrepl rejoin {node}` acts by hand now");
            }
            last = v.member(node).map(|m| format!("{:?}", m.role)).unwrap_or_else(|| "no report".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("{node} did not come back as a standby within {}s ({last}); its agent's log says why", limit.as_secs())
}
