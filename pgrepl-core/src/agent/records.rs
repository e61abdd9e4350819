//! The topology kept in the store (the `topology` and `sync` keys) instead of a file on
//! an admin machine: what the executor records when agents run the cluster.

use std::sync::Arc;

use crate::deploy::TopologyRecords;
use crate::error::Error;
use crate::store::{ConsensusStore, Keys, StoreView};
use crate::topology::Topology;

/// The topology in the store. Several agents record into it (the leader its promotion and
/// synchronous standbys, a node coming back its own unfencing), so a save applies what
/// changed since this side loaded it onto what the store holds now (compare-and-set, a
/// few attempts): one writer's change never undoes another's.
#[derive(Debug, Clone)]
pub struct StoreRecords {
    store: Arc<dyn ConsensusStore>,
    keys: Keys,
    /// The topology as last loaded or saved here.
    base: Arc<std::sync::Mutex<Option<Topology>>>,
}

impl StoreRecords {
    /// The records of the cluster `keys` names, in `store`.
    pub fn new(store: Arc<dyn ConsensusStore>, keys: Keys) -> StoreRecords {
        StoreRecords { store, keys, base: Arc::new(std::sync::Mutex::new(None)) }
    }
}

/// `theirs` with the changes from `base` to `mine` applied.
pub(crate) fn merge(base: &Topology, mine: &Topology, theirs: &Topology) -> Topology {
    let mut out = theirs.clone();
    if mine.primary != base.primary || mine.timeline != base.timeline {
        out.primary = mine.primary.clone();
        out.timeline = mine.timeline;
    }
    if mine.last_primary_lsn != base.last_primary_lsn {
        out.last_primary_lsn = mine.last_primary_lsn.clone();
    }
    for f in mine.fenced.iter().filter(|f| !base.fenced.contains(f)) {
        if !out.fenced.contains(f) {
            out.fenced.push(f.clone());
        }
    }
    out.fenced.retain(|f| !base.fenced.contains(f) || mine.fenced.contains(f));
    if mine.sync != base.sync {
        out.sync = mine.sync.clone();
    }
    for p in mine.history.iter().filter(|p| !base.history.contains(p)) {
        out.record_promotion(p.clone());
    }
    out
}

fn unavailable(e: crate::store::StoreError) -> Error {
    Error::Discovery(format!("the topology in the store: {e}"))
}

#[async_trait::async_trait]
impl TopologyRecords for StoreRecords {
    async fn load(&self) -> Result<Topology, Error> {
        let snap = self.store.get_prefix(self.keys.prefix()).await.map_err(unavailable)?;
        let t = StoreView::parse(&self.keys, &snap).topology();
        *self.base.lock().unwrap_or_else(|p| p.into_inner()) = Some(t.clone());
        Ok(t)
    }

    /// The sync key first when it changes (a record of who may hold acknowledged commits
    /// must never lag behind), then the rest; each merged onto what the store holds.
    async fn save(&self, t: &Topology) -> Result<(), Error> {
        let base = self.base.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for _ in 0..5 {
            let snap = self.store.get_prefix(self.keys.prefix()).await.map_err(unavailable)?;
            let view = StoreView::parse(&self.keys, &snap);
            let theirs = view.topology();
            let next = match &base {
                Some(b) => merge(b, t, &theirs),
                None => t.clone(),
            };
            if view.sync.as_ref().map(|s| &s.value) != next.sync.as_ref() {
                let rev = view.sync.as_ref().map(|s| s.mod_revision).unwrap_or(0);
                let ok = match &next.sync {
                    Some(s) => {
                        let body = serde_json::to_vec(s).expect("a sync record serializes");
                        self.store.compare_and_set(&self.keys.sync(), rev, &body, None).await.map_err(unavailable)?
                    }
                    None => self.store.delete_if(&self.keys.sync(), rev).await.map_err(unavailable)?,
                };
                if !ok {
                    continue;
                }
            }
            let mut rest = next.clone();
            rest.sync = None;
            let mut current = theirs.clone();
            current.sync = None;
            if view.topology.is_none() || rest != current {
                let rev = view.topology.as_ref().map(|t| t.mod_revision).unwrap_or(0);
                let body = serde_json::to_vec(&rest).expect("a topology serializes");
                if !self.store.compare_and_set(&self.keys.topology(), rev, &body, None).await.map_err(unavailable)? {
                    continue;
                }
            }
            *self.base.lock().unwrap_or_else(|p| p.into_inner()) = Some(next);
            return Ok(());
        }
        Err(Error::Discovery("the topology in the store kept changing under this save (5 attempts)".into()))
    }
}

impl crate::deploy::Deployment {
    /// An `[ha]` cluster's deployment bound to its agents' store: the topology recorded
    /// there, the operation lock taken there, and operations that act on the nodes
    /// themselves (restarts, upgrades, a switchover by hand) hold the agents paused while
    /// they run and move the leader key with the primary role
    /// ([`crate::store::operator`]). What the CLI opens for every `[ha]` cluster.
    pub fn with_consensus_store(self, store: Arc<dyn crate::store::ConsensusStore>) -> Self {
        let keys = crate::store::Keys::new(&self.cluster.name);
        let mut d = self
            .with_records(Arc::new(StoreRecords::new(store.clone(), keys.clone())))
            .with_shared_lock(Arc::new(crate::store::StoreLock::new(store.clone(), keys)));
        d.consensus = Some(store);
        d
    }
}

/// Before the agents first run a cluster `up` deployed: the HA settings (the `config`
/// key; `paused` kept as the store has it), the topology (when none is recorded), and,
/// when nobody leads yet, the leader key for the primary `up` deployed, bound to a short
/// lease (`bootstrap_lease`) its agent adopts: no standby's agent races a live primary
/// whose own agent has not reported yet.
pub async fn publish(
    d: &crate::deploy::Deployment,
    store: Arc<dyn ConsensusStore>,
    bootstrap_lease: std::time::Duration,
) -> Result<(), Error> {
    use crate::store::LeaderRecord;
    let c = d.cluster();
    let keys = Keys::new(&c.name);
    let settings = c.ha.as_ref().map(|h| h.settings.clone()).unwrap_or_default();
    let view = StoreView::parse(&keys, &store.get_prefix(keys.prefix()).await.map_err(unavailable)?);
    let mut next = settings.clone();
    if let Some(cur) = &view.config {
        next.paused = cur.value.paused;
    }
    if view.config.as_ref().map(|c| &c.value) != Some(&next) {
        let body = serde_json::to_vec(&next).expect("settings serialize");
        store.put(&keys.config(), &body, None).await.map_err(unavailable)?;
    }
    if view.topology.is_none() {
        let topo = d.topology().await?;
        StoreRecords::new(store.clone(), keys.clone()).save(&topo).await?;
    }
    if view.leader.is_none() {
        let current = d.current_cluster().await?;
        let primary = current.primary().name.clone();
        let lease = store.grant(bootstrap_lease).await.map_err(unavailable)?;
        let body = serde_json::to_vec(&LeaderRecord { node: primary, timeline: None }).expect("a leader record serializes");
        store.create(&keys.leader(), &body, Some(lease)).await.map_err(unavailable)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::merge;
    use crate::topology::Topology;

    #[test]
    fn a_save_keeps_what_another_writer_changed() {
        let base = Topology { primary: Some("db2".into()), fenced: vec!["db1".into()], ..Topology::default() };
        // Another writer unfenced db1; this one recorded db3 as fenced.
        let theirs = Topology { fenced: vec![], ..base.clone() };
        let mine = Topology { fenced: vec!["db1".into(), "db3".into()], ..base.clone() };
        assert_eq!(merge(&base, &mine, &theirs).fenced, vec!["db3".to_string()]);
        // This one changed nothing about fencing: their unfencing stands.
        let mine = Topology { primary: Some("db3".into()), ..base.clone() };
        let m = merge(&base, &mine, &theirs);
        assert!(m.fenced.is_empty());
        assert_eq!(m.primary.as_deref(), Some("db3"));
    }

    #[test]
    fn promotions_from_both_writers_are_kept_once_in_order() {
        use crate::topology::{HISTORY_LEN, Promotion, PromotionKind};
        let p = |node: &str, tl: u32, at: u64, kind| Promotion {
            node: node.into(),
            from: "db1".into(),
            kind,
            timeline: Some(tl),
            lsn: None,
            at,
            millis: 300,
        };
        let base = Topology { history: vec![p("db2", 2, 10, PromotionKind::Failover)], ..Topology::default() };
        let mut theirs = base.clone();
        theirs.record_promotion(p("db3", 3, 30, PromotionKind::Switchover));
        let mut mine = base.clone();
        mine.record_promotion(p("db1", 3, 20, PromotionKind::Failover));
        // Recorded twice: kept once.
        mine.record_promotion(p("db1", 3, 20, PromotionKind::Failover));
        let m = merge(&base, &mine, &theirs);
        let order: Vec<(&str, u64)> = m.history.iter().map(|h| (h.node.as_str(), h.at)).collect();
        assert_eq!(order, vec![("db2", 10), ("db1", 20), ("db3", 30)]);
        assert_eq!((m.promotions(PromotionKind::Failover), m.promotions(PromotionKind::Switchover)), (2, 1));
        // Bounded.
        let mut t = Topology::default();
        for i in 0..(HISTORY_LEN as u64 + 7) {
            t.record_promotion(p("db2", i as u32, i, PromotionKind::Failover));
        }
        assert_eq!(t.history.len(), HISTORY_LEN);
        assert_eq!(t.history[0].at, 7, "the oldest go first");
    }
}
