//! The agent's loop: observe its node, read the store, [`decide`], act; a lease renewed
//! in the background (so a long step never delays it), a watch on the cluster's keys that
//! wakes the loop at once (a leader key that expires, a member that reports), and the
//! guard armed with the write deadline whenever the node may accept writes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::decide::{AgentInput, AgentMemory, GuardMode, LeaseClock, StoreOp, decide};
use super::local::LocalDb;
use super::records::StoreRecords;
use super::status::{AgentStatus, LoopFacts};
use crate::deploy::{Deployment, NoProgress};
use crate::error::Error;
use crate::observe::{Observed, ObservedCluster};
use crate::plan::Action;
use crate::store::{ConsensusStore, Keys, LeaderRecord, LeaseId, MemberRecord, PositionRecord, StoreError, StoreView};

/// Time limit of one call to the store from the loop.
const STORE_TIMEOUT: Duration = Duration::from_millis(800);
/// Most loops run back to back (after a change) before the loop waits again.
const MAX_BURST: u32 = 5;

/// What enforces the write deadline outside the agent's process.
pub trait GuardControl: Send + std::fmt::Debug {
    /// The node may accept writes for `left` more, unless told again.
    fn arm(&mut self, left: Duration) -> Result<(), String>;
    /// Nothing to enforce.
    fn disarm(&mut self) -> Result<(), String>;
}

/// One node's agent. Build it with [`Agent::new`], run it with [`Agent::run`]: a program
/// with its own process supervision embeds it as it is.
#[derive(Debug)]
pub struct Agent {
    d: Deployment,
    me: String,
    store: Arc<dyn ConsensusStore>,
    keys: Keys,
    guard: Arc<Mutex<Option<Box<dyn GuardControl>>>>,
    address: Option<String>,
    status: tokio::sync::watch::Sender<Arc<AgentStatus>>,
}

#[derive(Debug, Default)]
pub(super) struct LeaseState {
    pub(super) id: Option<LeaseId>,
    /// When the last successful grant or renewal was sent.
    pub(super) sent: Option<Instant>,
}

impl Agent {
    /// The agent of node `me` of `d`'s cluster (which must have `[ha]`), with the cluster's
    /// truth in `store`. The deployment records its topology in the store from now on.
    pub fn new(d: Deployment, me: &str, store: Arc<dyn ConsensusStore>) -> Result<Agent, Error> {
        let c = d.cluster();
        if c.node(me).is_none() {
            return Err(Error::node(me, format!("not a node of cluster {}", c.name)));
        }
        if c.ha.is_none() {
            return Err(Error::Discovery(format!("cluster {} has no [ha] section: agents need the store it names", c.name)));
        }
        let keys = Keys::new(&c.name);
        let (status, _) =
            tokio::sync::watch::channel(Arc::new(AgentStatus { cluster: c.name.clone(), node: me.to_string(), ..AgentStatus::default() }));
        let d = d.with_records(Arc::new(StoreRecords::new(store.clone(), keys.clone())));
        Ok(Agent { d, me: me.to_string(), store, keys, guard: Arc::new(Mutex::new(None)), address: None, status })
    }

    /// Its status, updated after every loop (what its HTTP endpoint serves).
    pub fn status(&self) -> tokio::sync::watch::Receiver<Arc<AgentStatus>> {
        self.status.subscribe()
    }

    /// Enforces the write deadline through `guard` too (a process of its own, or a watchdog).
    pub fn with_guard(self, guard: Box<dyn GuardControl>) -> Agent {
        *self.guard.lock().unwrap_or_else(|p| p.into_inner()) = Some(guard);
        self
    }

    /// Published in its member key (`host:port` of its HTTP endpoint).
    pub fn with_address(mut self, address: impl Into<String>) -> Agent {
        self.address = Some(address.into());
        self
    }

    /// Runs until `shutdown` completes. On shutdown a leader stops its server first (so
    /// nothing writes without the lease), then the lease is revoked: a standby takes over
    /// at once instead of after the ttl.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> Result<(), Error> {
        let cluster = self.d.cluster().clone();
        let settings0 = cluster.ha.as_ref().map(|h| h.settings.clone()).unwrap_or_default();
        let node = cluster.node(&self.me).expect("checked").clone();
        let caps =
            cluster.caps().ok_or_else(|| Error::Discovery("the PostgreSQL major is not known: set `postgres` in the spec".into()))?;
        let (_, handles, _) = self.d.connect_partial().await?;
        let handle = handles.into_iter().find(|h| h.name == self.me).ok_or_else(|| Error::node(&self.me, "its host cannot be reached"))?;
        let mut db = LocalDb::new(handle, node.port, caps);

        let lease = Arc::new(Mutex::new(LeaseState::default()));
        let armed = Arc::new(AtomicBool::new(false));
        let wake = Arc::new(Notify::new());
        let ttl = settings0.ttl();
        let deadline = settings0.write_deadline();
        let renewer = tokio::spawn(renew(
            self.store.clone(),
            lease.clone(),
            ttl,
            deadline,
            settings0.loop_wait() / 2,
            armed.clone(),
            self.guard.clone(),
            wake.clone(),
        ));
        let watcher = tokio::spawn(watch(self.store.clone(), self.keys.prefix().to_string(), wake.clone()));
        let scheduler =
            tokio::spawn(super::backups::scheduler(self.d.clone(), self.me.clone(), self.store.clone(), self.keys.clone(), lease.clone()));

        // The first decision waits (bounded) for the first grant: an agent (re)started on
        // the primary's node finds the key its own, on its previous run's lease, and
        // without a lease of its own yet it would take itself for one whose lease ran out
        // and fence a primary the store still names. Not granted in time, the store
        // counts as unreachable for that first loop, as it would be.
        let first_grant = Instant::now();
        while lease.lock().unwrap_or_else(|p| p.into_inner()).id.is_none() && first_grant.elapsed() < 2 * STORE_TIMEOUT {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut memory = AgentMemory::default();
        let mut published: Option<(MemberRecord, LeaseId)> = None;
        let mut last_why = String::new();
        let mut burst = 0u32;
        let mut loops = 0u64;
        tokio::pin!(shutdown);
        loop {
            let local = db.observe().await;
            let read = tokio::time::timeout(STORE_TIMEOUT, self.store.get_prefix(self.keys.prefix())).await;
            let view: Result<StoreView, String> = match read {
                Ok(Ok(snap)) => Ok(StoreView::parse(&self.keys, &snap)),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("the store did not answer in time".into()),
            };
            let settings = view.as_ref().map(|v| v.settings()).unwrap_or_else(|_| settings0.clone());
            if view.as_ref().is_ok_and(|v| v.leader.is_some()) {
                memory.saw_leader = true;
            }
            let clock = {
                let l = lease.lock().unwrap_or_else(|p| p.into_inner());
                LeaseClock { id: l.id, since_renewal: l.sent.map(|s| s.elapsed()) }
            };
            let d = decide(&AgentInput {
                me: &self.me,
                cluster: &cluster,
                local: &local,
                store: view.as_ref().map_err(String::as_str),
                lease: clock,
                memory: &memory,
            });
            if d.why != last_why {
                tracing::info!(node = %self.me, "{}", d.why);
                last_why = d.why.clone();
            }
            // The guard: armed whenever the node may accept writes (a deadline already past
            // fences at once), or is about to.
            let arm = local.writable() || d.guard == GuardMode::Arm;
            set_guard(&self.guard, &armed, arm, clock, deadline);

            let mut changed = false;
            if let (Some(op), Ok(view), Some(id)) = (&d.store, &view, clock.id) {
                changed = self.store_op(op, view, id, &local).await;
            }
            if let Some(plan) = d.plan.as_ref().filter(|p| self.still_current(p, &lease, deadline)) {
                // A plan that stops this node's server: it no longer answers as the primary
                // from now on (health checks move clients away while it stops), not only
                // once the plan is done.
                if plan.steps.iter().any(|s| s.node == self.me && matches!(s.action, Action::Stop | Action::StopClean | Action::Fence)) {
                    self.status.send_modify(|st| {
                        let mut next = (**st).clone();
                        next.holds_lease = false;
                        next.why = format!("stopping: {}", d.why);
                        *st = Arc::new(next);
                    });
                }
                let obs = d.observed.clone().unwrap_or_else(|| ObservedCluster {
                    nodes: vec![local.clone()],
                    topology: view.as_ref().map(|v| v.topology()).unwrap_or_default(),
                });
                db.reset();
                let result = self.d.execute_plan(plan, &obs, &NoProgress).await;
                remember(&mut memory, plan, &result);
                match &result {
                    Ok(_) => tracing::info!(node = %self.me, "done: {}", steps_of(plan)),
                    Err(e) => tracing::warn!(node = %self.me, "failed: {}: {e}", steps_of(plan)),
                }
                changed = true;
            }
            let mut m = d.member.clone();
            m.agent = self.address.clone();
            if let Some(id) = clock.id {
                if published.as_ref() != Some(&(m.clone(), id)) {
                    let body = serde_json::to_vec(&m).expect("a member record serializes");
                    if matches!(
                        tokio::time::timeout(STORE_TIMEOUT, self.store.put(&self.keys.member(&self.me), &body, Some(id))).await,
                        Ok(Ok(_))
                    ) {
                        published = Some((m, id));
                    }
                }
            }
            if let (true, Ok(v), Some(lsn)) = (local.writable(), &view, local.lsn) {
                if v.leader_node() == Some(self.me.as_str()) && v.position.as_ref().is_none_or(|p| p.value.lsn != lsn) {
                    let body =
                        serde_json::to_vec(&PositionRecord { node: self.me.clone(), timeline: local.timeline, lsn }).expect("serializes");
                    let _ = tokio::time::timeout(STORE_TIMEOUT, self.store.put(&self.keys.position(), &body, None)).await;
                }
            }
            loops += 1;
            let write_time_left = clock.id.and(clock.since_renewal).map(|s| deadline.saturating_sub(s));
            let mut st = AgentStatus::of(
                &LoopFacts {
                    cluster: &cluster.name,
                    me: &self.me,
                    local: &local,
                    store: view.as_ref().map_err(String::as_str),
                    write_time_left,
                    why: &d.why,
                },
                loops,
            );
            st.upstream = d.member.upstream.clone();
            self.status.send_replace(Arc::new(st));
            if changed && burst < MAX_BURST {
                burst += 1;
                continue;
            }
            burst = 0;
            tokio::select! {
                _ = tokio::time::sleep(settings.loop_wait()) => {}
                _ = wake.notified() => {}
                _ = db.lost.notified() => {}
                _ = &mut shutdown => break,
            }
        }
        renewer.abort();
        watcher.abort();
        scheduler.abort();
        let id = lease.lock().unwrap_or_else(|p| p.into_inner()).id;
        self.leave(&mut db, id).await;
        Ok(())
    }

    /// Whether a plan that makes this node writable (a promotion, a start as the leader)
    /// still stands right before it runs: the lease is fresh on this process's clock (a
    /// process stopped between deciding and acting finds it stale). Other plans always
    /// stand.
    fn still_current(&self, plan: &crate::plan::Plan, lease: &Mutex<LeaseState>, deadline: Duration) -> bool {
        let writable_after = plan.steps.iter().any(|s| s.node == self.me && matches!(s.action, Action::Promote | Action::Start));
        if !writable_after {
            return true;
        }
        let l = lease.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = l.id.is_some() && l.sent.is_some_and(|s| s.elapsed() < deadline);
        if !fresh {
            tracing::warn!(node = %self.me, "not carried out (the lease is no longer fresh): {}", steps_of(plan));
        }
        fresh
    }

    /// Takes, adopts or releases the leader key: whether anything changed.
    async fn store_op(&self, op: &StoreOp, view: &StoreView, id: LeaseId, local: &Observed) -> bool {
        let body = serde_json::to_vec(&LeaderRecord { node: self.me.clone(), timeline: local.timeline }).expect("serializes");
        let key = self.keys.leader();
        let r = match op {
            StoreOp::TakeLeader => self.store.create(&key, &body, Some(id)).await,
            StoreOp::AdoptLeader { mod_revision } => self.store.compare_and_set(&key, *mod_revision, &body, Some(id)).await,
            StoreOp::ReleaseLeader { mod_revision } => self.store.delete_if(&key, *mod_revision).await,
            StoreOp::HandOver { to, lease, mod_revision } => {
                let body = serde_json::to_vec(&LeaderRecord { node: to.clone(), timeline: local.timeline }).expect("serializes");
                self.store.compare_and_set(&key, *mod_revision, &body, Some(*lease)).await
            }
            StoreOp::ClearSwitchover { mod_revision } => self.store.delete_if(&self.keys.switchover(), *mod_revision).await,
            StoreOp::RefuseSwitchover { mod_revision, reason } => match &view.switchover {
                Some(r) => {
                    let mut answer = r.value.clone();
                    answer.refused = Some(reason.clone());
                    let body = serde_json::to_vec(&answer).expect("serializes");
                    self.store.compare_and_set(&self.keys.switchover(), *mod_revision, &body, None).await
                }
                None => Ok(false),
            },
        };
        match r {
            Ok(true) => {
                tracing::info!(node = %self.me, "leader key: {op:?} done (revision {})", view.revision);
                true
            }
            Ok(false) => {
                tracing::info!(node = %self.me, "leader key: {op:?} lost the race");
                true
            }
            Err(e) => {
                tracing::warn!(node = %self.me, "leader key: {op:?}: {e}");
                false
            }
        }
    }

    /// On shutdown: a leader stops its server (nothing writes without the lease), then the
    /// lease is revoked, so a standby takes over at once instead of after the ttl. Paused,
    /// nothing changes: the server runs on and the key stays until the lease runs out (a
    /// rolling restart of the agents: pause, restart them, resume).
    async fn leave(&self, db: &mut LocalDb, lease: Option<LeaseId>) {
        let local = db.observe().await;
        let snap = tokio::time::timeout(STORE_TIMEOUT, self.store.get_prefix(self.keys.prefix())).await;
        let view = match &snap {
            Ok(Ok(s)) => Some(StoreView::parse(&self.keys, s)),
            _ => None,
        };
        let paused = view.as_ref().is_some_and(|v| v.settings().paused);
        let leader = view.as_ref().and_then(|v| v.leader_node().map(String::from));
        if !paused && (local.writable() || leader.as_deref() == Some(self.me.as_str())) {
            let mut p = crate::plan::Plan::new(&self.d.cluster().name, crate::plan::Operation::Up, &self.me);
            p.steps = vec![crate::plan::Step::new(&self.me, Action::Stop)];
            let obs = ObservedCluster { nodes: vec![local], topology: Default::default() };
            if let Err(e) = self.d.execute_plan(&p, &obs, &NoProgress).await {
                // Still armed, the lease kept: the guard fences at the deadline, and only
                // then can a standby take the key.
                tracing::warn!(node = %self.me, "stopping the primary on shutdown failed ({e}): its guard stops it at the lease deadline");
                return;
            }
        }
        if let Some(g) = self.guard.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            let _ = g.disarm();
        }
        if let (false, Some(id)) = (paused, lease) {
            if let Err(e) = self.store.revoke(id).await {
                tracing::warn!(node = %self.me, "revoking the lease on shutdown: {e}");
            }
        }
        tracing::info!(node = %self.me, "agent stopped{}", if paused { " (paused: the server left as it is)" } else { "" });
    }
}

/// The plan's steps, one line.
fn steps_of(plan: &crate::plan::Plan) -> String {
    plan.steps.iter().map(|s| format!("{}: {}", s.node, s.action)).collect::<Vec<_>>().join("; ")
}

fn set_guard(guard: &Mutex<Option<Box<dyn GuardControl>>>, armed: &AtomicBool, arm: bool, clock: LeaseClock, deadline: Duration) {
    armed.store(arm, Ordering::SeqCst);
    let mut g = guard.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(g) = g.as_mut() {
        let r = if arm {
            let left = clock.since_renewal.map(|s| deadline.saturating_sub(s)).unwrap_or(Duration::ZERO);
            g.arm(left)
        } else {
            g.disarm()
        };
        if let Err(e) = r {
            tracing::warn!("guard: {e}");
        }
    }
}

/// What a plan's outcome teaches the loop.
fn remember(memory: &mut AgentMemory, plan: &crate::plan::Plan, result: &Result<crate::ha::OperationReport, Error>) {
    let upstream = plan.steps.iter().find_map(|s| match &s.action {
        Action::Repoint { upstream } | Action::StartAsStandby { upstream } | Action::Rejoin { upstream, .. } => Some(upstream.clone()),
        _ => None,
    });
    let starts = plan.steps.iter().any(|s| s.action == Action::Start);
    let follows = plan.steps.iter().any(|s| matches!(s.action, Action::Repoint { .. } | Action::Rejoin { .. }));
    match (result, follows) {
        (Ok(_), true) => memory.repoint_failures = 0,
        (Err(_), true) => memory.repoint_failures += 1,
        _ => {}
    }
    match result {
        Ok(_) => {
            if upstream.is_some() {
                memory.pointed_at = upstream;
            }
            if plan.steps.iter().any(|s| s.action == Action::Promote) {
                memory.pointed_at = None;
            }
            if starts {
                memory.start_failures = 0;
            }
        }
        Err(_) if starts => memory.start_failures += 1,
        Err(_) => {}
    }
}

/// Renews the lease every `every`; grants a new one when it is gone. Each success re-arms
/// the guard (when armed) with the deadline counted from when the renewal was sent.
#[allow(clippy::too_many_arguments)]
async fn renew(
    store: Arc<dyn ConsensusStore>,
    lease: Arc<Mutex<LeaseState>>,
    ttl: Duration,
    deadline: Duration,
    every: Duration,
    armed: Arc<AtomicBool>,
    guard: Arc<Mutex<Option<Box<dyn GuardControl>>>>,
    wake: Arc<Notify>,
) {
    loop {
        let sent = Instant::now();
        let id = lease.lock().unwrap_or_else(|p| p.into_inner()).id;
        let r: Result<Option<LeaseId>, StoreError> = match id {
            None => tokio::time::timeout(STORE_TIMEOUT, store.grant(ttl))
                .await
                .unwrap_or_else(|_| Err(StoreError::Unavailable("timeout".into())))
                .map(Some),
            Some(id) => match tokio::time::timeout(STORE_TIMEOUT, store.keep_alive(id)).await {
                Ok(Ok(Some(_))) => Ok(Some(id)),
                Ok(Ok(None)) => Ok(None),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(StoreError::Unavailable("timeout".into())),
            },
        };
        match r {
            Ok(Some(id)) => {
                let fresh = {
                    let mut l = lease.lock().unwrap_or_else(|p| p.into_inner());
                    let new = l.id != Some(id);
                    l.id = Some(id);
                    l.sent = Some(sent);
                    new
                };
                if armed.load(Ordering::SeqCst) {
                    if let Some(g) = guard.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                        let _ = g.arm(deadline.saturating_sub(sent.elapsed()));
                    }
                }
                if fresh {
                    wake.notify_one();
                }
            }
            Ok(None) => {
                // The lease is gone (expired in the store): its keys are gone too.
                lease.lock().unwrap_or_else(|p| p.into_inner()).id = None;
                wake.notify_one();
                continue;
            }
            Err(e) => tracing::warn!("lease renewal: {e}"),
        }
        tokio::time::sleep(every.saturating_sub(sent.elapsed())).await;
    }
}

/// Wakes the loop on every change under `prefix`; watches again when the watch ends.
async fn watch(store: Arc<dyn ConsensusStore>, prefix: String, wake: Arc<Notify>) {
    loop {
        let rev = match store.get_prefix(&prefix).await {
            Ok(s) => s.revision,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        if let Ok(mut w) = store.watch(&prefix, rev).await {
            while let Ok(Some(_)) = w.next().await {
                wake.notify_one();
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
