//! The agent of a witness (`role = "witness"`: an etcd member, no PostgreSQL). It never
//! races and never acts on a server: it reports the witness as a member of the cluster
//! (a key bound to its own lease, so a witness cut off disappears from the store's view
//! within the ttl), and publishes its status for its HTTP endpoint (`/health`: the store
//! answers through the witness's own member). One loop every `loop_wait`, bounded store
//! calls, the lease revoked on shutdown.

use std::sync::Arc;
use std::time::Duration;

use super::status::AgentStatus;
use crate::store::{ConsensusStore, Keys, LeaseId, MemberRecord, MemberRole, StoreView};

/// Time limit of one call to the store.
const STORE_TIMEOUT: Duration = Duration::from_millis(800);

/// One witness's agent. Build it with [`WitnessAgent::new`], run it with [`WitnessAgent::run`].
#[derive(Debug)]
pub struct WitnessAgent {
    me: String,
    store: Arc<dyn ConsensusStore>,
    keys: Keys,
    ttl: Duration,
    every: Duration,
    address: Option<String>,
    status: tokio::sync::watch::Sender<Arc<AgentStatus>>,
}

impl WitnessAgent {
    /// The agent of witness `me` of `cluster`, reporting to `store`.
    pub fn new(cluster: &crate::cluster::Cluster, me: &str, store: Arc<dyn ConsensusStore>) -> Result<WitnessAgent, crate::Error> {
        if !cluster.witnesses.iter().any(|w| w.name == me) {
            return Err(crate::Error::node(me, format!("not a witness of cluster {}", cluster.name)));
        }
        let settings = cluster.ha.as_ref().map(|h| h.settings.clone()).unwrap_or_default();
        let (status, _) = tokio::sync::watch::channel(Arc::new(AgentStatus {
            cluster: cluster.name.clone(),
            node: me.to_string(),
            role: Some(MemberRole::Witness),
            ..AgentStatus::default()
        }));
        Ok(WitnessAgent {
            me: me.to_string(),
            store,
            keys: Keys::new(&cluster.name),
            ttl: settings.ttl(),
            every: settings.loop_wait(),
            address: None,
            status,
        })
    }

    /// Published in its member key (`host:port` of its HTTP endpoint).
    pub fn with_address(mut self, address: impl Into<String>) -> WitnessAgent {
        self.address = Some(address.into());
        self
    }

    /// Its status, updated after every loop.
    pub fn status(&self) -> tokio::sync::watch::Receiver<Arc<AgentStatus>> {
        self.status.subscribe()
    }

    /// Runs until `shutdown` completes; then revokes its lease (its member key goes).
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut lease: Option<LeaseId> = None;
        let mut loops = 0u64;
        let mut record = MemberRecord::new(&self.me, MemberRole::Witness);
        record.agent = self.address.clone();
        let body = serde_json::to_vec(&record).expect("a member record serializes");
        loop {
            loops += 1;
            let (reachable, error, leader, paused) = self.once(&mut lease, &body).await;
            self.status.send_modify(|st| {
                let mut next = (**st).clone();
                next.loops = loops;
                next.store_reachable = reachable;
                next.store_error = error;
                next.leader = leader;
                next.paused = paused;
                next.at = Some(std::time::Instant::now());
                *st = Arc::new(next);
            });
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(self.every) => {}
            }
        }
        if let Some(id) = lease {
            let _ = tokio::time::timeout(STORE_TIMEOUT, self.store.revoke(id)).await;
        }
        tracing::info!(node = %self.me, "witness agent stopped");
    }

    /// One loop: the lease kept (granted again when lost, with the member key), the
    /// cluster's keys read. Returns whether the store answered, why not, the leader and
    /// whether the agents are paused.
    async fn once(&self, lease: &mut Option<LeaseId>, body: &[u8]) -> (bool, Option<String>, Option<String>, bool) {
        let call = async {
            let alive = match *lease {
                Some(id) => self.store.keep_alive(id).await?.is_some(),
                None => false,
            };
            if !alive {
                let id = self.store.grant(self.ttl).await?;
                self.store.put(&self.keys.member(&self.me), body, Some(id)).await?;
                *lease = Some(id);
            }
            self.store.get_prefix(self.keys.prefix()).await
        };
        match tokio::time::timeout(STORE_TIMEOUT * 3, call).await {
            Ok(Ok(snap)) => {
                let v = StoreView::parse(&self.keys, &snap);
                (true, None, v.leader_node().map(String::from), v.settings().paused)
            }
            Ok(Err(e)) => (false, Some(e.to_string()), None, false),
            Err(_) => (false, Some("the store did not answer in time".into()), None, false),
        }
    }
}
