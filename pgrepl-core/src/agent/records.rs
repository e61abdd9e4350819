//! The topology kept in the store (the `topology` and `sync` keys) instead of a file on
//! an admin machine: what the executor records when agents run the cluster.

use std::sync::Arc;

use crate::deploy::TopologyRecords;
use crate::error::Error;
use crate::store::{ConsensusStore, Keys, StoreView};
use crate::topology::Topology;

/// The topology in the store.
#[derive(Debug, Clone)]
pub struct StoreRecords {
    store: Arc<dyn ConsensusStore>,
    keys: Keys,
}

impl StoreRecords {
    /// The records of the cluster `keys` names, in `store`.
    pub fn new(store: Arc<dyn ConsensusStore>, keys: Keys) -> StoreRecords {
        StoreRecords { store, keys }
    }
}

fn unavailable(e: crate::store::StoreError) -> Error {
    Error::Discovery(format!("the topology in the store: {e}"))
}

#[async_trait::async_trait]
impl TopologyRecords for StoreRecords {
    async fn load(&self) -> Result<Topology, Error> {
        let snap = self.store.get_prefix(self.keys.prefix()).await.map_err(unavailable)?;
        Ok(StoreView::parse(&self.keys, &snap).topology())
    }

    /// The sync key first when it changes (a record of who may hold acknowledged commits
    /// must never lag behind), then the rest.
    async fn save(&self, t: &Topology) -> Result<(), Error> {
        let snap = self.store.get_prefix(self.keys.prefix()).await.map_err(unavailable)?;
        let view = StoreView::parse(&self.keys, &snap);
        if view.sync.as_ref().map(|s| &s.value) != t.sync.as_ref() {
            match &t.sync {
                Some(s) => {
                    let body = serde_json::to_vec(s).expect("a sync record serializes");
                    self.store.put(&self.keys.sync(), &body, None).await.map_err(unavailable)?;
                }
                None => {
                    if let Some(s) = &view.sync {
                        self.store.delete_if(&self.keys.sync(), s.mod_revision).await.map_err(unavailable)?;
                    }
                }
            }
        }
        let mut rest = t.clone();
        rest.sync = None;
        let body = serde_json::to_vec(&rest).expect("a topology serializes");
        self.store.put(&self.keys.topology(), &body, None).await.map_err(unavailable)?;
        Ok(())
    }
}
