//! The operation lock of an `[ha]` cluster in the consensus store: the key
//! `/pgrepl/<cluster>/op`, created only if absent and bound to a lease that its holder
//! renews in the background. etcd decides who holds it, for every admin machine alike; a
//! holder that dies leaves it to expire with its lease (ttl [`StoreLock::DEFAULT_TTL`]).
//!
//! Taken by every operation of the CLI on such a cluster (see
//! [`crate::deploy::Deployment::with_shared_lock`]): `up`, `destroy`, `pause`, `resume`,
//! and `switchover` / `failover` / `rejoin`, which file their request with the agents
//! and wait for it under the lock, or act themselves while the agents are paused. So two
//! operators never act at once, and no operator acts beside the agents.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{ConsensusStore, Keys, LeaseId, StoreError};
use crate::error::Error;
use crate::oplock_holder::{HeldSharedLock, LockHolder, SharedLock};

/// Time limit of one call to the store while the lock is taken or released.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause between two attempts while another holder has the key.
const RETRY: Duration = Duration::from_millis(200);
/// The operations that act on the nodes themselves (the executor's, not requests to the
/// agents): refused while agents run the cluster, since they would race them.
pub const ACTS_ON_NODES: &[&str] = &["up", "switchover", "failover", "rejoin"];

/// The operation key of a cluster in a consensus store.
#[derive(Debug, Clone)]
pub struct StoreLock {
    store: Arc<dyn ConsensusStore>,
    keys: Keys,
    ttl: Duration,
}

impl StoreLock {
    /// The lease of the key: how long a dead holder keeps the lock.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(15);

    /// The lock of the cluster `keys` names, in `store`.
    pub fn new(store: Arc<dyn ConsensusStore>, keys: Keys) -> Self {
        StoreLock { store, keys, ttl: Self::DEFAULT_TTL }
    }

    /// With a lease of `ttl` (at least 6 s: renewed every third of it, valid until 2 s
    /// before it ends).
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl.max(Duration::from_secs(6));
        self
    }

    /// The holder recorded in the key now, if any.
    pub async fn holder(&self) -> Result<Option<LockHolder>, StoreError> {
        let snap = self.store.get_prefix(&self.keys.op()).await?;
        Ok(snap.kvs.iter().find(|kv| kv.key == self.keys.op()).and_then(|kv| serde_json::from_slice(&kv.value).ok()))
    }

    /// Why an operation acting on the nodes would race the agents now (`None`: they are
    /// paused, or none reports to the store).
    pub async fn agents_in_charge(&self) -> Result<Option<String>, StoreError> {
        let view = super::StoreView::parse(&self.keys, &self.store.get_prefix(self.keys.prefix()).await?);
        if !view.agents_in_charge() {
            return Ok(None);
        }
        let members: Vec<&str> =
            view.members.values().filter(|m| m.value.role != super::MemberRole::Witness).map(|m| m.value.node.as_str()).collect();
        Ok(Some(format!(
            "agents run this cluster ({} report to the store, not paused): an operation on the nodes now would race them; `pgrepl pause` first, or let the agents carry it out",
            members.join(", ")
        )))
    }

    /// One attempt: `Ok(Some(lease))` when this call took the key.
    async fn try_take(&self, body: &[u8], token: &str) -> Result<Option<LeaseId>, StoreError> {
        let lease = timed(self.store.grant(self.ttl)).await?;
        match timed(self.store.create(&self.keys.op(), body, Some(lease))).await {
            Ok(true) => Ok(Some(lease)),
            Ok(false) => {
                let _ = timed(self.store.revoke(lease)).await;
                Ok(None)
            }
            // It may or may not have been written: read it back.
            Err(e) => match timed(self.holder()).await {
                Ok(Some(h)) if h.token == token => Ok(Some(lease)),
                _ => {
                    let _ = timed(self.store.revoke(lease)).await;
                    Err(e)
                }
            },
        }
    }
}

async fn timed<T>(f: impl std::future::Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(r) => r,
        Err(_) => Err(StoreError::Unavailable(format!("no answer within {}s", CALL_TIMEOUT.as_secs()))),
    }
}

#[async_trait::async_trait]
impl SharedLock for StoreLock {
    async fn acquire(
        &self,
        cluster: &str,
        holder: &LockHolder,
        started: Instant,
        deadline: Instant,
    ) -> Result<Box<dyn HeldSharedLock>, Error> {
        let body = serde_json::to_vec(holder).expect("a holder serializes");
        let max_rounds = 2 + deadline.saturating_duration_since(started).as_millis() / RETRY.as_millis();
        let mut why = String::new();
        for _ in 0..max_rounds {
            let asked = tokio::time::Instant::now();
            match self.try_take(&body, &holder.token).await {
                Ok(Some(lease)) => {
                    let held = Box::new(HeldStoreLock::start(self.clone(), lease, asked));
                    if !ACTS_ON_NODES.contains(&holder.operation.as_str()) {
                        return Ok(held);
                    }
                    // Under the lock, nobody resumes the agents until it is released.
                    let refusal = match timed(self.agents_in_charge()).await {
                        Ok(None) => return Ok(held),
                        Ok(Some(why)) => why,
                        Err(e) => format!("whether agents run this cluster could not be read: {e}"),
                    };
                    held.release().await;
                    return Err(Error::Locked { cluster: cluster.to_string(), holder: refusal, waited: started.elapsed() });
                }
                Ok(None) => {
                    why = match timed(self.holder()).await {
                        Ok(Some(h)) => {
                            format!("held in the consensus store by {h} (a holder that died frees it within {}s)", self.ttl.as_secs())
                        }
                        Ok(None) => "taken and released by others while pgrepl tried".into(),
                        Err(e) => format!("held in the consensus store, by a holder it could not read: {e}"),
                    }
                }
                Err(e) => why = format!("the consensus store holds it and could not be reached: {e}"),
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            tokio::time::sleep(RETRY.min(deadline - now)).await;
        }
        Err(Error::Locked { cluster: cluster.to_string(), holder: why, waited: started.elapsed() })
    }
}

/// The store's key, held: renewed every third of its ttl until released.
#[derive(Debug)]
struct HeldStoreLock {
    lock: StoreLock,
    lease: LeaseId,
    state: Arc<Mutex<Renewal>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug)]
struct Renewal {
    /// When the last renewal that succeeded was asked for (the lease runs from before then).
    renewed: tokio::time::Instant,
    /// The store said the lease is gone.
    lost: bool,
}

impl HeldStoreLock {
    fn start(lock: StoreLock, lease: LeaseId, asked: tokio::time::Instant) -> Self {
        let state = Arc::new(Mutex::new(Renewal { renewed: asked, lost: false }));
        let (store, ttl, st) = (lock.store.clone(), lock.ttl, state.clone());
        let task = tokio::spawn(async move {
            // Bounded by the holder: aborted when released or dropped.
            loop {
                tokio::time::sleep(ttl / 3).await;
                let asked = tokio::time::Instant::now();
                match timed(store.keep_alive(lease)).await {
                    Ok(Some(_)) => st.lock().unwrap_or_else(|p| p.into_inner()).renewed = asked,
                    Ok(None) => {
                        st.lock().unwrap_or_else(|p| p.into_inner()).lost = true;
                        tracing::warn!(lease, "the operation lock's lease is gone from the store");
                        return;
                    }
                    Err(e) => tracing::warn!(lease, error = %e, "the operation lock's lease could not be renewed"),
                }
            }
        });
        HeldStoreLock { lock, lease, state, task }
    }
}

#[async_trait::async_trait]
impl HeldSharedLock for HeldStoreLock {
    fn check(&self, cluster: &str) -> Result<(), Error> {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // Valid until a margin before the lease can have run out on the store's clock.
        let valid = self.lock.ttl.saturating_sub(Duration::from_secs(2));
        let age = st.renewed.elapsed();
        if st.lost || age > valid {
            return Err(Error::Locked {
                cluster: cluster.to_string(),
                holder: format!(
                    "lost: this operation's lock in the consensus store was {} (lease {}s): another operation may hold it",
                    if st.lost { "gone when renewed".to_string() } else { format!("last renewed {:.1}s ago", age.as_secs_f64()) },
                    self.lock.ttl.as_secs()
                ),
                waited: Duration::ZERO,
            });
        }
        Ok(())
    }

    async fn release(self: Box<Self>) {
        self.task.abort();
        // Revoking the lease deletes the key, this holder's only (another holder's key is
        // bound to its own lease).
        if let Err(e) = timed(self.lock.store.revoke(self.lease)).await {
            tracing::warn!(error = %e, "the operation lock could not be released: it expires with its lease");
        }
    }
}

impl Drop for HeldStoreLock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use crate::store::{HaSettings, MemberRecord, MemberRole};

    fn lock(store: &Arc<MemoryStore>) -> StoreLock {
        StoreLock::new(store.clone(), Keys::new("c"))
    }

    async fn take(l: &StoreLock, op: &str, wait: Duration) -> Result<Box<dyn HeldSharedLock>, Error> {
        let t = Instant::now();
        l.acquire("c", &LockHolder::this_process(op, Some(15)), t, t + wait).await
    }

    fn locked(r: Result<Box<dyn HeldSharedLock>, Error>) -> String {
        match r {
            Err(Error::Locked { holder, .. }) => holder,
            other => panic!("expected Locked, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn one_holder_at_a_time_and_the_refusal_names_it() {
        let store = Arc::new(MemoryStore::new());
        let (a, b) = (lock(&store), lock(&store));
        let held = take(&a, "switchover request", Duration::ZERO).await.unwrap();
        let why = locked(take(&b, "pause", Duration::from_millis(300)).await);
        assert!(why.contains("switchover request") && why.contains(&std::process::id().to_string()), "{why}");
        assert_eq!(a.holder().await.unwrap().map(|h| h.operation), Some("switchover request".to_string()));
        held.release().await;
        assert_eq!(a.holder().await.unwrap(), None, "released: the key is gone");
        take(&b, "pause", Duration::ZERO).await.unwrap().release().await;
    }

    #[tokio::test]
    async fn a_waiter_gets_it_once_released() {
        let store = Arc::new(MemoryStore::new());
        let held = take(&lock(&store), "up", Duration::ZERO).await.unwrap();
        let b = lock(&store);
        let waiter = tokio::spawn(async move { take(&b, "destroy", Duration::from_secs(10)).await.map(drop) });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiter.is_finished(), "the waiter waits while the lock is held");
        held.release().await;
        waiter.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_dead_holders_lock_expires_with_its_lease() {
        let store = Arc::new(MemoryStore::new());
        let held = take(&lock(&store), "failover", Duration::ZERO).await.unwrap();
        // The holder dies: nothing renews, nothing releases.
        drop(held);
        locked(take(&lock(&store), "failover", Duration::ZERO).await);
        store.advance(StoreLock::DEFAULT_TTL + Duration::from_secs(1));
        take(&lock(&store), "failover", Duration::ZERO).await.unwrap().release().await;
    }

    #[tokio::test]
    async fn the_store_unreachable_is_said() {
        let store = Arc::new(MemoryStore::new());
        store.set_available(false);
        let why = locked(take(&lock(&store), "switchover", Duration::from_millis(200)).await);
        assert!(why.contains("could not be reached"), "{why}");
    }

    async fn agents_report(store: &MemoryStore, paused: bool) {
        let keys = Keys::new("c");
        let settings = HaSettings { paused, ..HaSettings::default() };
        store.put(&keys.config(), &serde_json::to_vec(&settings).unwrap(), None).await.unwrap();
        let m = MemberRecord::new("n2", MemberRole::Standby);
        store.put(&keys.member("n2"), &serde_json::to_vec(&m).unwrap(), None).await.unwrap();
    }

    #[tokio::test]
    async fn operations_on_the_nodes_are_refused_while_agents_run_the_cluster() {
        let store = Arc::new(MemoryStore::new());
        // No agent reports yet (a first `up`): allowed.
        take(&lock(&store), "up", Duration::ZERO).await.unwrap().release().await;
        agents_report(&store, false).await;
        for op in ACTS_ON_NODES {
            let why = locked(take(&lock(&store), op, Duration::ZERO).await);
            assert!(why.contains("agents run this cluster") && why.contains("n2") && why.contains("pgrepl pause"), "{op}: {why}");
            assert_eq!(lock(&store).holder().await.unwrap(), None, "{op}: the refused lock was released");
        }
        // Requests to the agents, pause, resume, destroy: allowed.
        for op in ["switchover request", "pause", "resume", "destroy"] {
            take(&lock(&store), op, Duration::ZERO).await.unwrap().release().await;
        }
        agents_report(&store, true).await;
        for op in ACTS_ON_NODES {
            take(&lock(&store), op, Duration::ZERO).await.unwrap().release().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn check_fails_once_renewals_stop_for_the_lease() {
        let store = Arc::new(MemoryStore::new());
        let l = lock(&store).with_ttl(Duration::from_secs(6));
        let held = take(&l, "failover", Duration::ZERO).await.unwrap();
        // Renewed in the background: valid well past the ttl.
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_secs(3)).await;
            store.advance(Duration::from_secs(3));
            held.check("c").unwrap();
        }
        // The store goes away: no renewal, and the lock stops counting as held before
        // the lease can have run out there.
        store.set_available(false);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let e = held.check("c").unwrap_err().to_string();
        assert!(e.contains("lost"), "{e}");
        // The lease is gone from the store: said too.
        store.set_available(true);
        store.advance(Duration::from_secs(7));
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(held.check("c").unwrap_err().to_string().contains("gone"));
        held.release().await;
    }
}
