//! [`MemoryStore`]: a [`ConsensusStore`] in this process, with a manual clock.
//!
//! For unit and property tests of the logic that drives a store: leases expire only when
//! the test says time passed ([`MemoryStore::advance`]), and the store can be made
//! unreachable ([`MemoryStore::set_available`]) to test what the caller does without a
//! quorum. It keeps etcd's rules: one revision per change (a lease expiring with several
//! keys is one change), a key's `create_revision` kept across puts, watches that replay
//! history after a revision and then follow, in revision order.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, watch};

use super::{ConsensusStore, KeyValue, LeaseId, Revision, Snapshot, StoreError, Watch, WatchEvent};

/// An in-process consensus store with a manual clock (see the module doc).
///
/// Clones share the same store.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
    available: Arc<watch::Sender<bool>>,
}

struct Lease {
    ttl: Duration,
    deadline: Duration,
    keys: BTreeSet<String>,
}

struct Watcher {
    prefix: String,
    tx: mpsc::UnboundedSender<Vec<WatchEvent>>,
}

#[derive(Default)]
struct Inner {
    /// The time of the manual clock since the store was made.
    now: Duration,
    revision: Revision,
    kvs: BTreeMap<String, KeyValue>,
    leases: BTreeMap<LeaseId, Lease>,
    next_lease: LeaseId,
    /// Every change, one entry per revision (watches replay it).
    history: Vec<(Revision, Vec<WatchEvent>)>,
    watchers: Vec<Watcher>,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = self.lock();
        f.debug_struct("MemoryStore")
            .field("revision", &g.revision)
            .field("keys", &g.kvs.len())
            .field("leases", &g.leases.len())
            .field("now", &g.now)
            .field("available", &*self.available.borrow())
            .finish()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

fn event_key(e: &WatchEvent) -> &str {
    match e {
        WatchEvent::Put(kv) => &kv.key,
        WatchEvent::Delete { key, .. } => key,
    }
}

impl Inner {
    /// Records the events of one revision and sends them to the watches they concern.
    fn publish(&mut self, events: Vec<WatchEvent>) {
        if events.is_empty() {
            return;
        }
        self.watchers.retain(|w| {
            let mine: Vec<WatchEvent> = events.iter().filter(|e| event_key(e).starts_with(&w.prefix)).cloned().collect();
            mine.is_empty() || w.tx.send(mine).is_ok()
        });
        self.history.push((self.revision, events));
    }

    /// Removes `key` at the current revision (the caller bumped it).
    fn remove(&mut self, key: &str) -> Option<WatchEvent> {
        let kv = self.kvs.remove(key)?;
        if let Some(l) = kv.lease.and_then(|id| self.leases.get_mut(&id)) {
            l.keys.remove(key);
        }
        Some(WatchEvent::Delete { key: kv.key, mod_revision: self.revision })
    }

    /// Ends `lease` and deletes its keys in one revision.
    fn end_lease(&mut self, id: LeaseId) {
        let Some(lease) = self.leases.remove(&id) else { return };
        if lease.keys.is_empty() {
            return;
        }
        self.revision += 1;
        let events: Vec<WatchEvent> = lease.keys.iter().filter_map(|k| self.remove(k)).collect();
        self.publish(events);
    }

    fn check_lease(&self, lease: Option<LeaseId>) -> Result<(), StoreError> {
        match lease {
            Some(id) if !self.leases.contains_key(&id) => Err(StoreError::Rejected(format!("lease {id:x} not found"))),
            _ => Ok(()),
        }
    }

    /// Writes `key` (the lease was checked): the new revision.
    fn write(&mut self, key: &str, value: &[u8], lease: Option<LeaseId>) -> Revision {
        self.revision += 1;
        let rev = self.revision;
        let old = self.kvs.get(key).cloned();
        if let Some(old_lease) = old.as_ref().and_then(|o| o.lease) {
            if Some(old_lease) != lease {
                if let Some(l) = self.leases.get_mut(&old_lease) {
                    l.keys.remove(key);
                }
            }
        }
        if let Some(l) = lease.and_then(|id| self.leases.get_mut(&id)) {
            l.keys.insert(key.to_string());
        }
        let kv = KeyValue {
            key: key.to_string(),
            value: value.to_vec(),
            create_revision: old.map(|o| o.create_revision).unwrap_or(rev),
            mod_revision: rev,
            lease,
        };
        self.kvs.insert(key.to_string(), kv.clone());
        self.publish(vec![WatchEvent::Put(kv)]);
        rev
    }

    fn mod_revision(&self, key: &str) -> Revision {
        self.kvs.get(key).map(|kv| kv.mod_revision).unwrap_or(0)
    }
}

impl MemoryStore {
    /// An empty store at revision 1 (as a new etcd), its clock at zero, available.
    pub fn new() -> MemoryStore {
        let inner = Inner { revision: 1, next_lease: 0x7000_0000_0000_0001, ..Inner::default() };
        MemoryStore { inner: Arc::new(Mutex::new(inner)), available: Arc::new(watch::Sender::new(true)) }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every change is applied
        // whole before anything can panic), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ready(&self) -> Result<MutexGuard<'_, Inner>, StoreError> {
        if !*self.available.borrow() {
            return Err(StoreError::Unavailable("the memory store is set unavailable".into()));
        }
        Ok(self.lock())
    }

    /// Lets `d` pass on the store's clock: every lease whose ttl ran out since its last
    /// refresh expires, and its keys are deleted (one revision per lease, watched as
    /// deletions). Time passes whether the store is available or not.
    pub fn advance(&self, d: Duration) {
        let mut g = self.lock();
        g.now += d;
        let now = g.now;
        let expired: Vec<LeaseId> = g.leases.iter().filter(|(_, l)| l.deadline <= now).map(|(id, _)| *id).collect();
        for id in expired {
            g.end_lease(id);
        }
    }

    /// The time on the store's clock.
    pub fn now(&self) -> Duration {
        self.lock().now
    }

    /// Makes every call fail with [`StoreError::Unavailable`] (`false`), as a store
    /// without quorum does, or answer again (`true`). Open watches fail on their next
    /// call and end.
    pub fn set_available(&self, available: bool) {
        self.available.send_replace(available);
    }

    /// Refreshes every lease to its full ttl: what a leader change inside etcd 3.4 does
    /// (it has no lease checkpoints).
    pub fn reset_leases(&self) {
        let mut g = self.lock();
        let now = g.now;
        for l in g.leases.values_mut() {
            l.deadline = now + l.ttl;
        }
    }

    /// The leases alive, with the time each has left.
    pub fn leases(&self) -> Vec<(LeaseId, Duration)> {
        let g = self.lock();
        g.leases.iter().map(|(id, l)| (*id, l.deadline.saturating_sub(g.now))).collect()
    }
}

#[async_trait]
impl ConsensusStore for MemoryStore {
    async fn get_prefix(&self, prefix: &str) -> Result<Snapshot, StoreError> {
        let g = self.ready()?;
        let kvs = g.kvs.range(prefix.to_string()..).take_while(|(k, _)| k.starts_with(prefix)).map(|(_, v)| v.clone()).collect();
        Ok(Snapshot { revision: g.revision, kvs })
    }

    async fn grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        if ttl.is_zero() {
            return Err(StoreError::Rejected("a lease needs a ttl above zero".into()));
        }
        let mut g = self.ready()?;
        let id = g.next_lease;
        g.next_lease += 1;
        let deadline = g.now + ttl;
        g.leases.insert(id, Lease { ttl, deadline, keys: BTreeSet::new() });
        Ok(id)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Option<Duration>, StoreError> {
        let mut g = self.ready()?;
        let now = g.now;
        Ok(g.leases.get_mut(&lease).map(|l| {
            l.deadline = now + l.ttl;
            l.ttl
        }))
    }

    async fn time_to_live(&self, lease: LeaseId) -> Result<Option<Duration>, StoreError> {
        let g = self.ready()?;
        Ok(g.leases.get(&lease).map(|l| l.deadline.saturating_sub(g.now)))
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.ready()?.end_lease(lease);
        Ok(())
    }

    async fn create(&self, key: &str, value: &[u8], lease: Option<LeaseId>) -> Result<bool, StoreError> {
        self.compare_and_set(key, 0, value, lease).await
    }

    async fn compare_and_set(&self, key: &str, expected: Revision, value: &[u8], lease: Option<LeaseId>) -> Result<bool, StoreError> {
        let mut g = self.ready()?;
        g.check_lease(lease)?;
        if g.mod_revision(key) != expected {
            return Ok(false);
        }
        g.write(key, value, lease);
        Ok(true)
    }

    async fn put(&self, key: &str, value: &[u8], lease: Option<LeaseId>) -> Result<Revision, StoreError> {
        let mut g = self.ready()?;
        g.check_lease(lease)?;
        Ok(g.write(key, value, lease))
    }

    async fn delete_if(&self, key: &str, expected: Revision) -> Result<bool, StoreError> {
        let mut g = self.ready()?;
        if expected == 0 || g.mod_revision(key) != expected {
            return Ok(false);
        }
        g.revision += 1;
        let ev: Vec<WatchEvent> = g.remove(key).into_iter().collect();
        g.publish(ev);
        Ok(true)
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<(), StoreError> {
        let mut g = self.ready()?;
        let keys: Vec<String> =
            g.kvs.range(prefix.to_string()..).take_while(|(k, _)| k.starts_with(prefix)).map(|(k, _)| k.clone()).collect();
        if keys.is_empty() {
            return Ok(());
        }
        g.revision += 1;
        let events: Vec<WatchEvent> = keys.iter().filter_map(|k| g.remove(k)).collect();
        g.publish(events);
        Ok(())
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<Box<dyn Watch>, StoreError> {
        let mut g = self.ready()?;
        let (tx, rx) = mpsc::unbounded_channel();
        // Under the lock: the history up to now, then every later change, none twice.
        for (rev, events) in &g.history {
            if *rev <= after {
                continue;
            }
            let mine: Vec<WatchEvent> = events.iter().filter(|e| event_key(e).starts_with(prefix)).cloned().collect();
            if !mine.is_empty() {
                let _ = tx.send(mine);
            }
        }
        g.watchers.push(Watcher { prefix: prefix.to_string(), tx });
        Ok(Box::new(MemoryWatch { rx, available: self.available.subscribe(), ended: false }))
    }
}

/// A watch on a [`MemoryStore`].
#[derive(Debug)]
struct MemoryWatch {
    rx: mpsc::UnboundedReceiver<Vec<WatchEvent>>,
    available: watch::Receiver<bool>,
    ended: bool,
}

#[async_trait]
impl Watch for MemoryWatch {
    async fn next(&mut self) -> Result<Option<Vec<WatchEvent>>, StoreError> {
        if self.ended {
            return Ok(None);
        }
        if !*self.available.borrow_and_update() {
            self.ended = true;
            return Err(StoreError::Unavailable("the memory store is set unavailable".into()));
        }
        // Bounded: each turn either returns or sees the availability change once.
        for _ in 0..2 {
            tokio::select! {
                biased;
                changed = self.available.changed() => {
                    if changed.is_err() || !*self.available.borrow_and_update() {
                        self.ended = true;
                        return Err(StoreError::Unavailable("the memory store is set unavailable".into()));
                    }
                }
                ev = self.rx.recv() => return Ok(ev),
            }
        }
        Ok(self.rx.recv().await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv_rev(s: &Snapshot, key: &str) -> Option<Revision> {
        s.kvs.iter().find(|kv| kv.key == key).map(|kv| kv.mod_revision)
    }

    #[tokio::test]
    async fn leases_expire_on_the_manual_clock_only() {
        let s = MemoryStore::new();
        let l = s.grant(Duration::from_secs(3)).await.unwrap();
        assert!(s.create("/a/k", b"v", Some(l)).await.unwrap());
        let snap = s.get_prefix("/a/").await.unwrap();
        let mut w = s.watch("/a/", snap.revision).await.unwrap();
        s.advance(Duration::from_secs(2));
        assert_eq!(s.keep_alive(l).await.unwrap(), Some(Duration::from_secs(3)));
        s.advance(Duration::from_secs(2));
        assert!(kv_rev(&s.get_prefix("/a/").await.unwrap(), "/a/k").is_some(), "refreshed 2 s ago, ttl 3 s");
        s.advance(Duration::from_secs(1));
        let after = s.get_prefix("/a/").await.unwrap();
        assert!(after.kvs.is_empty());
        assert_eq!(after.revision, snap.revision + 1);
        assert_eq!(s.keep_alive(l).await.unwrap(), None);
        let ev = w.next().await.unwrap().unwrap();
        assert_eq!(ev, vec![WatchEvent::Delete { key: "/a/k".into(), mod_revision: after.revision }]);
    }

    #[tokio::test]
    async fn unavailable_fails_every_call_and_open_watches() {
        let s = MemoryStore::new();
        let l = s.grant(Duration::from_secs(3)).await.unwrap();
        let mut w = s.watch("/", 0).await.unwrap();
        s.set_available(false);
        let un = |r: Result<(), StoreError>| assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
        un(s.get_prefix("/").await.map(drop));
        un(s.grant(Duration::from_secs(1)).await.map(drop));
        un(s.keep_alive(l).await.map(drop));
        un(s.revoke(l).await);
        un(s.create("/k", b"", None).await.map(drop));
        un(s.compare_and_set("/k", 0, b"", None).await.map(drop));
        un(s.put("/k", b"", None).await.map(drop));
        un(s.delete_if("/k", 1).await.map(drop));
        un(s.delete_prefix("/").await);
        un(s.watch("/", 0).await.map(drop));
        un(w.next().await.map(drop));
        assert_eq!(w.next().await.unwrap(), None, "a failed watch has ended");
        s.set_available(true);
        assert!(s.create("/k", b"", Some(l)).await.unwrap());
    }

    #[tokio::test]
    async fn a_watch_fails_when_the_store_becomes_unavailable_while_it_waits() {
        let s = MemoryStore::new();
        let mut w = s.watch("/", 0).await.unwrap();
        let s2 = s.clone();
        let t = tokio::spawn(async move { w.next().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        s2.set_available(false);
        let r = tokio::time::timeout(Duration::from_secs(5), t).await.unwrap().unwrap();
        assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    }

    #[tokio::test]
    async fn reset_leases_gives_every_lease_its_full_ttl() {
        let s = MemoryStore::new();
        let l = s.grant(Duration::from_secs(3)).await.unwrap();
        s.put("/k", b"v", Some(l)).await.unwrap();
        s.advance(Duration::from_secs(2));
        assert_eq!(s.leases(), vec![(l, Duration::from_secs(1))]);
        s.reset_leases();
        s.advance(Duration::from_secs(2));
        assert_eq!(s.get_prefix("/").await.unwrap().kvs.len(), 1);
        s.advance(Duration::from_secs(1));
        assert!(s.get_prefix("/").await.unwrap().kvs.is_empty());
    }

    #[tokio::test]
    async fn a_key_moved_to_another_lease_outlives_its_first_one() {
        let s = MemoryStore::new();
        let a = s.grant(Duration::from_secs(1)).await.unwrap();
        let b = s.grant(Duration::from_secs(5)).await.unwrap();
        s.put("/k", b"1", Some(a)).await.unwrap();
        s.put("/k", b"2", Some(b)).await.unwrap();
        s.put("/j", b"1", Some(a)).await.unwrap();
        s.put("/j", b"2", None).await.unwrap();
        s.advance(Duration::from_secs(2));
        let snap = s.get_prefix("/").await.unwrap();
        assert_eq!(snap.kvs.iter().map(|kv| kv.key.as_str()).collect::<Vec<_>>(), ["/j", "/k"]);
        assert_eq!(snap.kvs[1].lease, Some(b));
        assert_eq!(snap.kvs[0].lease, None);
    }

    #[tokio::test]
    async fn a_watch_replays_history_after_its_revision_then_follows() {
        let s = MemoryStore::new();
        let r1 = s.put("/p/a", b"1", None).await.unwrap();
        let r2 = s.put("/q/x", b"1", None).await.unwrap();
        let r3 = s.put("/p/b", b"1", None).await.unwrap();
        let mut w = s.watch("/p/", r1).await.unwrap();
        assert!(r2 > r1);
        let r4 = s.put("/p/a", b"2", None).await.unwrap();
        let e = w.next().await.unwrap().unwrap();
        assert!(matches!(&e[..], [WatchEvent::Put(kv)] if kv.key == "/p/b" && kv.mod_revision == r3));
        let e = w.next().await.unwrap().unwrap();
        assert!(matches!(&e[..], [WatchEvent::Put(kv)] if kv.key == "/p/a" && kv.mod_revision == r4 && kv.create_revision == r1));
    }
}
