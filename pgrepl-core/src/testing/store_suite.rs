//! [`store_suite`]: the conformance suite of [`ConsensusStore`] implementations.
//!
//! It checks every promise of the store module's doc against any store: a manual clock
//! (`MemoryStore`) or a real one (etcd), told apart by the [`LeaseClock`] the caller
//! gives. Everything happens under a fresh prefix below the one given, removed at the end.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures_util::future::join_all;

use crate::store::memory::MemoryStore;
use crate::store::{ConsensusStore, KeyValue, LeaseId, Revision, Snapshot, StoreError, Watch, WatchEvent};

/// How the suite lets time pass for the store's leases.
#[async_trait]
pub trait LeaseClock: Send + Sync {
    /// Lets `d` pass on the clock the store expires leases by.
    async fn pass(&self, d: Duration);
}

/// Real time: the store's leases run out by themselves (etcd); `pass` sleeps.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealTime;

#[async_trait]
impl LeaseClock for RealTime {
    async fn pass(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }
}

/// A [`MemoryStore`]'s manual clock: `pass` advances it.
#[async_trait]
impl LeaseClock for MemoryStore {
    async fn pass(&self, d: Duration) {
        self.advance(d);
    }
}

/// The ttl of the suite's leases (etcd may round it up to its minimum, 1 to 2 s).
const TTL: Duration = Duration::from_secs(1);
/// The step by which the suite waits for a lease to run out, and how many steps at most
/// (etcd revokes expired leases every 500 ms, through raft).
const STEP: Duration = Duration::from_millis(250);
const MAX_STEPS: u32 = 40;
/// How long a watch may take to deliver an event that already happened.
const WATCH_BOUND: Duration = Duration::from_secs(10);
/// A lease no store granted (etcd's are random 63-bit numbers).
const UNKNOWN_LEASE: LeaseId = 0x0bad_5eed_0123_4567;

/// Runs the conformance suite against `store`; panics on the first broken promise.
///
/// - `scratch`: a key prefix the suite may use (it works in a fresh sub-prefix and
///   deletes it at the end), for example `/pgrepl-suite/`;
/// - `clock`: how time passes for the store's leases ([`RealTime`] for etcd, the
///   [`MemoryStore`] itself for its manual clock).
///
/// It checks: revisions grow with every change (and a key's `create_revision` stays
/// across writes); `get_prefix` returns exactly the keys under the prefix, sorted;
/// `create` succeeds for exactly one of 8 concurrent callers and never over an existing
/// key; `compare_and_set` by `mod_revision` (0: absent), also with concurrent callers;
/// `delete_if` by `mod_revision`; `delete_prefix` removes the prefix's keys and no
/// others; a watch delivers puts and deletions in revision order with their revisions,
/// also replaying changes made before it was created; a key bound to a lease vanishes
/// when the lease is revoked or expires, and a watch sees the deletion; `keep_alive`
/// keeps a lease past its ttl and returns `None` for an unknown, revoked or expired
/// lease; writing with an unknown lease is [`StoreError::Rejected`].
pub async fn store_suite(store: &dyn ConsensusStore, scratch: &str, clock: &dyn LeaseClock) {
    let base =
        format!("{}{}-{}/", scratch, std::process::id(), SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    let s = Suite { store, base: &base, clock };
    s.revisions_grow().await;
    s.get_prefix_is_sorted_and_limited().await;
    s.create_has_one_winner().await;
    s.compare_and_set_by_mod_revision().await;
    s.delete_if_by_mod_revision().await;
    s.delete_prefix_stays_in_its_prefix().await;
    s.watch_follows_in_revision_order().await;
    s.unknown_leases().await;
    s.revoke_deletes_the_lease_keys().await;
    s.keep_alive_keeps_the_lease().await;
    lease_expiry_is_watched(store, &format!("{base}expiry/"), clock).await;
    s.call(s.store.delete_prefix(&base), "cleanup: delete_prefix").await;
    let left = s.get(&base).await;
    assert!(left.kvs.is_empty(), "{:?}: cleanup left keys: {:?}", s.store, left.kvs);
}

/// A key bound to a lease vanishes when the lease expires (the suite waits through
/// `clock`), a watch sees its deletion, and `keep_alive` of the expired lease is `None`.
/// Works under `prefix`, which should be empty; leaves it empty.
pub async fn lease_expiry_is_watched(store: &dyn ConsensusStore, prefix: &str, clock: &dyn LeaseClock) {
    let s = Suite { store, base: prefix, clock };
    let key = format!("{prefix}leased");
    let lease = s.call(store.grant(TTL), "grant").await;
    assert!(s.call(store.create(&key, b"v", Some(lease)), "create with a lease").await, "{store:?}: create {key}");
    let snap = s.get(prefix).await;
    assert_eq!(s.kv(&snap, &key).lease, Some(lease), "{store:?}: {key} is bound to its lease");
    let mut w = s.call(store.watch(prefix, snap.revision), "watch").await;
    clock.pass(TTL).await;
    let gone = s.wait_gone(&key).await;
    let events = s.collect(&mut *w, 1).await;
    assert!(
        matches!(&events[..], [WatchEvent::Delete { key: k, mod_revision: r }] if *k == key && *r > snap.revision && *r <= gone),
        "{store:?}: the watch sees the expiry of {key} (after {}, by {gone}): {events:?}",
        snap.revision
    );
    assert_eq!(s.call(store.keep_alive(lease), "keep_alive of an expired lease").await, None, "{store:?}: expired lease");
    assert_eq!(s.call(store.time_to_live(lease), "time_to_live of an expired lease").await, None, "{store:?}: expired lease");
    s.call(store.revoke(lease), "revoke an expired lease").await;
}

struct Suite<'a> {
    store: &'a dyn ConsensusStore,
    base: &'a str,
    clock: &'a dyn LeaseClock,
}

impl Suite<'_> {
    async fn call<T>(&self, f: impl Future<Output = Result<T, StoreError>>, what: &str) -> T {
        match f.await {
            Ok(v) => v,
            Err(e) => panic!("{:?}: {what} failed: {e}", self.store),
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.base)
    }

    async fn get(&self, prefix: &str) -> Snapshot {
        self.call(self.store.get_prefix(prefix), &format!("get_prefix({prefix})")).await
    }

    fn kv<'s>(&self, snap: &'s Snapshot, key: &str) -> &'s KeyValue {
        snap.kvs.iter().find(|kv| kv.key == key).unwrap_or_else(|| panic!("{:?}: {key} missing from {snap:?}", self.store))
    }

    async fn mod_rev(&self, key: &str) -> Revision {
        let snap = self.get(key).await;
        snap.kvs.iter().find(|kv| kv.key == key).map(|kv| kv.mod_revision).unwrap_or(0)
    }

    async fn value(&self, key: &str) -> Option<Vec<u8>> {
        let snap = self.get(key).await;
        snap.kvs.into_iter().find(|kv| kv.key == key).map(|kv| kv.value)
    }

    /// Waits (bounded) until `key` is gone: the revision at which it was seen gone.
    async fn wait_gone(&self, key: &str) -> Revision {
        let start = Instant::now();
        for _ in 0..MAX_STEPS {
            let snap = self.get(key).await;
            if !snap.kvs.iter().any(|kv| kv.key == key) {
                // The deletion's revision: the watch reports it; the snapshot is at or after it.
                return snap.revision;
            }
            self.clock.pass(STEP).await;
        }
        panic!("{:?}: {key} still there {:?} after its lease's ttl ran out", self.store, start.elapsed());
    }

    /// At least `n` events from `w` (bounded in time), in the order delivered.
    async fn collect(&self, w: &mut dyn Watch, n: usize) -> Vec<WatchEvent> {
        let mut out = Vec::new();
        let deadline = Instant::now() + WATCH_BOUND;
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, w.next()).await {
                Ok(Ok(Some(evs))) => {
                    assert!(!evs.is_empty(), "{:?}: a watch delivered an empty batch", self.store);
                    out.extend(evs);
                }
                Ok(Ok(None)) => panic!("{:?}: the watch ended after {out:?}, {n} events expected", self.store),
                Ok(Err(e)) => panic!("{:?}: the watch failed after {out:?}: {e}", self.store),
                Err(_) => panic!("{:?}: the watch delivered {out:?} in {WATCH_BOUND:?}, {n} events expected", self.store),
            }
        }
        out
    }

    async fn revisions_grow(&self) {
        let k = self.key("rev/k");
        let before = self.get(self.base).await.revision;
        let r1 = self.call(self.store.put(&k, b"1", None), "put").await;
        let r2 = self.call(self.store.put(&k, b"2", None), "put again").await;
        assert!(before < r1 && r1 < r2, "{:?}: revisions {before}, {r1}, {r2} do not grow", self.store);
        let snap = self.get(&k).await;
        assert!(snap.revision >= r2, "{:?}: snapshot at {} before the put at {r2}", self.store, snap.revision);
        let kv = self.kv(&snap, &k);
        assert_eq!(
            (kv.create_revision, kv.mod_revision, kv.value.as_slice(), kv.lease),
            (r1, r2, &b"2"[..], None),
            "{:?}: {kv:?}",
            self.store
        );
        self.call(self.store.delete_prefix(&self.key("rev/")), "delete_prefix").await;
        let after = self.get(self.base).await.revision;
        assert!(after > r2, "{:?}: a deletion did not make a revision ({after} after {r2})", self.store);
    }

    async fn get_prefix_is_sorted_and_limited(&self) {
        let inside = ["p/b", "p/a", "p/c/x", "p/a0", "p/\u{e9}"];
        let outside = ["p", "p0", "o/z", "q/a", "pa"];
        for n in inside.iter().chain(outside.iter()) {
            self.call(self.store.put(&self.key(n), n.as_bytes(), None), "put").await;
        }
        let snap = self.get(&self.key("p/")).await;
        let got: Vec<&str> = snap.kvs.iter().map(|kv| kv.key.as_str()).collect();
        let mut want: Vec<String> = inside.iter().map(|n| self.key(n)).collect();
        want.sort();
        assert_eq!(got, want, "{:?}: get_prefix(p/): exactly the keys under it, sorted", self.store);
        for kv in &snap.kvs {
            assert_eq!(kv.value, &kv.key.as_bytes()[self.base.len()..], "{:?}: value of {}", self.store, kv.key);
        }
        let none = self.get(&self.key("nothing/")).await;
        assert!(none.kvs.is_empty() && none.revision >= snap.revision, "{:?}: {none:?}", self.store);
        for p in ["p/", "p", "o/", "q/", "pa"] {
            self.call(self.store.delete_prefix(&self.key(p)), "delete_prefix").await;
        }
        assert!(self.get(self.base).await.kvs.is_empty(), "{:?}: delete_prefix left keys", self.store);
    }

    async fn create_has_one_winner(&self) {
        let k = self.key("create/k");
        let values: Vec<[u8; 1]> = (0..8u8).map(|i| [i]).collect();
        let tries: Vec<_> = values.iter().map(|v| self.store.create(&k, v, None)).collect();
        let results = join_all(tries).await;
        let mut winners = Vec::new();
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Ok(true) => winners.push(i as u8),
                Ok(false) => {}
                Err(e) => panic!("{:?}: concurrent create {i} failed: {e}", self.store),
            }
        }
        assert_eq!(winners.len(), 1, "{:?}: create winners {winners:?} of 8 concurrent callers", self.store);
        assert_eq!(self.value(&k).await, Some(vec![winners[0]]), "{:?}: the winner's value", self.store);
        assert!(!self.call(self.store.create(&k, b"again", None), "create over a key").await, "{:?}: create over a key", self.store);
        assert_eq!(self.value(&k).await, Some(vec![winners[0]]), "{:?}: a failed create changed the value", self.store);
        self.call(self.store.delete_prefix(&self.key("create/")), "delete_prefix").await;
    }

    async fn compare_and_set_by_mod_revision(&self) {
        let k = self.key("cas/k");
        let st = self.store;
        assert!(self.call(st.compare_and_set(&k, 0, b"1", None), "cas absent").await, "{st:?}: cas 0 on an absent key");
        let r1 = self.mod_rev(&k).await;
        assert!(!self.call(st.compare_and_set(&k, 0, b"x", None), "cas 0 present").await, "{st:?}: cas 0 on a present key");
        assert!(!self.call(st.compare_and_set(&k, r1 + 1000, b"x", None), "cas wrong").await, "{st:?}: cas with a wrong revision");
        assert!(!self.call(st.compare_and_set(&k, r1 - 1, b"x", None), "cas old").await, "{st:?}: cas with an older revision");
        assert_eq!(self.value(&k).await.as_deref(), Some(&b"1"[..]), "{st:?}: failed cas changed the value");
        assert!(self.call(st.compare_and_set(&k, r1, b"2", None), "cas right").await, "{st:?}: cas with the right revision");
        let r2 = self.mod_rev(&k).await;
        assert!(r2 > r1, "{st:?}: cas did not move mod_revision ({r1} -> {r2})");
        assert_eq!(self.value(&k).await.as_deref(), Some(&b"2"[..]), "{st:?}: value after cas");
        assert!(!self.call(st.compare_and_set(&k, r1, b"3", None), "cas stale").await, "{st:?}: cas with a stale revision");
        // Concurrent callers holding the same revision: one wins.
        let values: Vec<[u8; 1]> = (0..8u8).map(|i| [i]).collect();
        let tries: Vec<_> = values.iter().map(|v| st.compare_and_set(&k, r2, v, None)).collect();
        let wins = join_all(tries).await.into_iter().filter(|r| matches!(r, Ok(true))).count();
        assert_eq!(wins, 1, "{st:?}: {wins} of 8 concurrent cas with the same revision won");
        self.call(st.delete_prefix(&self.key("cas/")), "delete_prefix").await;
    }

    async fn delete_if_by_mod_revision(&self) {
        let k = self.key("del/k");
        let st = self.store;
        let r = self.call(st.put(&k, b"v", None), "put").await;
        assert!(!self.call(st.delete_if(&k, r + 1000), "delete_if wrong").await, "{st:?}: delete_if with a wrong revision");
        assert!(!self.call(st.delete_if(&k, 0), "delete_if 0").await, "{st:?}: delete_if 0 of a present key");
        assert_eq!(self.mod_rev(&k).await, r, "{st:?}: a failed delete_if changed the key");
        assert!(self.call(st.delete_if(&k, r), "delete_if right").await, "{st:?}: delete_if with the right revision");
        assert_eq!(self.value(&k).await, None, "{st:?}: delete_if left the key");
        assert!(!self.call(st.delete_if(&k, r), "delete_if absent").await, "{st:?}: delete_if of an absent key");
        assert!(!self.call(st.delete_if(&k, 0), "delete_if 0 absent").await, "{st:?}: delete_if 0 of an absent key deletes nothing");
    }

    async fn delete_prefix_stays_in_its_prefix(&self) {
        let st = self.store;
        for n in ["d/a", "d/b/c", "d", "d0", "e"] {
            self.call(st.put(&self.key(n), b"v", None), "put").await;
        }
        self.call(st.delete_prefix(&self.key("d/")), "delete_prefix").await;
        let got: Vec<String> = self.get(self.base).await.kvs.into_iter().map(|kv| kv.key).collect();
        assert_eq!(got, vec![self.key("d"), self.key("d0"), self.key("e")], "{st:?}: delete_prefix(d/)");
        let rev = self.get(self.base).await.revision;
        self.call(st.delete_prefix(&self.key("nothing/")), "delete_prefix of nothing").await;
        for n in ["d", "d0", "e"] {
            self.call(st.delete_prefix(&self.key(n)), "delete_prefix").await;
        }
        let snap = self.get(self.base).await;
        assert!(snap.kvs.is_empty() && snap.revision > rev, "{st:?}: {snap:?}");
    }

    async fn watch_follows_in_revision_order(&self) {
        let st = self.store;
        let p = self.key("w/");
        let (a, b, other) = (self.key("w/a"), self.key("w/b"), self.key("x"));
        let r0 = self.get(self.base).await.revision;
        let mut w = self.call(st.watch(&p, r0), "watch").await;
        let r1 = self.call(st.put(&a, b"1", None), "put").await;
        self.call(st.put(&other, b"o", None), "put outside").await;
        let r2 = self.call(st.put(&b, b"1", None), "put").await;
        assert!(self.call(st.compare_and_set(&a, r1, b"2", None), "cas").await);
        let r3 = self.mod_rev(&a).await;
        assert!(self.call(st.delete_if(&b, r2), "delete_if").await);
        let r5 = self.call(st.put(&b, b"3", None), "put").await;
        self.call(st.delete_prefix(&p), "delete_prefix").await;
        let end = self.get(self.base).await.revision;
        // Other clients may write elsewhere in the store meanwhile: the deletions'
        // revisions are only known by their bounds, and read from the events.
        let kv = |key: &str, v: &[u8], create, m| KeyValue {
            key: key.into(),
            value: v.to_vec(),
            create_revision: create,
            mod_revision: m,
            lease: None,
        };
        let got = self.collect(&mut *w, 7).await;
        let del = |i: usize| match &got[i] {
            WatchEvent::Delete { mod_revision, .. } => *mod_revision,
            e => panic!("{st:?}: event {i} of the watch is {e}, a deletion expected: {got:?}"),
        };
        let (r4, r6) = (del(3), del(5));
        assert!(r3 < r4 && r4 < r5 && r5 < r6 && r6 <= end, "{st:?}: revisions of the deletions: {got:?}");
        let want = vec![
            WatchEvent::Put(kv(&a, b"1", r1, r1)),
            WatchEvent::Put(kv(&b, b"1", r2, r2)),
            WatchEvent::Put(kv(&a, b"2", r1, r3)),
            WatchEvent::Delete { key: b.clone(), mod_revision: r4 },
            WatchEvent::Put(kv(&b, b"3", r5, r5)),
            WatchEvent::Delete { key: a.clone(), mod_revision: r6 },
            WatchEvent::Delete { key: b.clone(), mod_revision: r6 },
        ];
        assert_eq!(got, want, "{st:?}: the watch's events");
        // A watch created afterwards replays the same changes.
        let mut late = self.call(st.watch(&p, r0), "late watch").await;
        let got = self.collect(&mut *late, want.len()).await;
        assert_eq!(got, want, "{st:?}: a watch from an earlier revision replays history");
        // From a later revision: only what followed.
        let mut from = self.call(st.watch(&p, r4), "watch from r4").await;
        let got = self.collect(&mut *from, 3).await;
        assert_eq!(got, want[4..].to_vec(), "{st:?}: a watch after r4");
        self.call(st.delete_prefix(self.base), "delete_prefix").await;
    }

    async fn unknown_leases(&self) {
        let st = self.store;
        assert_eq!(self.call(st.keep_alive(UNKNOWN_LEASE), "keep_alive unknown").await, None, "{st:?}: keep_alive of an unknown lease");
        assert_eq!(
            self.call(st.time_to_live(UNKNOWN_LEASE), "time_to_live unknown").await,
            None,
            "{st:?}: time_to_live of an unknown lease"
        );
        let k = self.key("unknown-lease");
        let r = st.put(&k, b"v", Some(UNKNOWN_LEASE)).await;
        assert!(matches!(r, Err(StoreError::Rejected(_))), "{st:?}: put with an unknown lease: {r:?}");
        let r = st.create(&k, b"v", Some(UNKNOWN_LEASE)).await;
        assert!(matches!(r, Err(StoreError::Rejected(_))), "{st:?}: create with an unknown lease: {r:?}");
        assert_eq!(self.value(&k).await, None, "{st:?}: a write with an unknown lease left a key");
        self.call(st.revoke(UNKNOWN_LEASE), "revoke of an unknown lease").await;
    }

    async fn revoke_deletes_the_lease_keys(&self) {
        let st = self.store;
        let p = self.key("revoke/");
        let lease = self.call(st.grant(Duration::from_secs(30)), "grant").await;
        let other = self.call(st.grant(Duration::from_secs(30)), "grant").await;
        assert_ne!(lease, other, "{st:?}: two grants gave the same lease");
        let (a, b, c, d) = (self.key("revoke/a"), self.key("revoke/b"), self.key("revoke/c"), self.key("revoke/d"));
        assert!(self.call(st.create(&a, b"1", Some(lease)), "create").await);
        assert!(self.call(st.compare_and_set(&b, 0, b"1", Some(lease)), "cas").await);
        self.call(st.put(&c, b"1", Some(other)), "put").await;
        self.call(st.put(&d, b"1", None), "put").await;
        let snap = self.get(&p).await;
        assert_eq!(self.kv(&snap, &a).lease, Some(lease), "{st:?}: lease of a");
        assert_eq!(self.kv(&snap, &b).lease, Some(lease), "{st:?}: lease of b");
        let mut w = self.call(st.watch(&p, snap.revision), "watch").await;
        self.call(st.revoke(lease), "revoke").await;
        let after = self.get(&p).await;
        let keys: Vec<&str> = after.kvs.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, vec![c.as_str(), d.as_str()], "{st:?}: revoke removes the lease's keys, and only those");
        let got = self.collect(&mut *w, 2).await;
        let rev = match got.first() {
            Some(WatchEvent::Delete { mod_revision, .. }) if *mod_revision > snap.revision && *mod_revision <= after.revision => {
                *mod_revision
            }
            _ => panic!("{st:?}: the watch saw {got:?} after the revoke"),
        };
        let want = vec![WatchEvent::Delete { key: a.clone(), mod_revision: rev }, WatchEvent::Delete { key: b.clone(), mod_revision: rev }];
        assert_eq!(got, want, "{st:?}: the watch sees the revoke's deletions (one revision)");
        assert_eq!(self.call(st.keep_alive(lease), "keep_alive revoked").await, None, "{st:?}: keep_alive of a revoked lease");
        self.call(st.revoke(lease), "revoke twice").await;
        self.call(st.revoke(other), "revoke").await;
        self.call(st.delete_prefix(&p), "delete_prefix").await;
    }

    async fn keep_alive_keeps_the_lease(&self) {
        let st = self.store;
        let ttl = Duration::from_secs(2);
        let k = self.key("kept");
        let lease = self.call(st.grant(ttl), "grant").await;
        self.call(st.put(&k, b"v", Some(lease)), "put").await;
        let fresh = self.call(st.time_to_live(lease), "time_to_live").await;
        assert!(fresh.is_some_and(|d| d <= ttl), "{st:?}: time_to_live of a fresh lease of {ttl:?}: {fresh:?}");
        for i in 0..3 {
            self.clock.pass(ttl / 2).await;
            let left = self.call(st.keep_alive(lease), "keep_alive").await;
            assert!(left.is_some_and(|d| !d.is_zero() && d <= Duration::from_secs(60)), "{st:?}: keep_alive {i} of a live lease: {left:?}");
        }
        // Read, not renewed: the ttl left does not grow between two reads.
        let a = self.call(st.time_to_live(lease), "time_to_live").await;
        let b = self.call(st.time_to_live(lease), "time_to_live").await;
        assert!(a.is_some() && b.is_some() && b <= a && a <= Some(ttl), "{st:?}: time_to_live of a live lease: {a:?} then {b:?}");
        assert!(self.value(&k).await.is_some(), "{st:?}: a lease kept alive past its ttl lost its key");
        self.call(st.revoke(lease), "revoke").await;
        assert_eq!(self.value(&k).await, None, "{st:?}: revoke left the key");
    }
}
