//! What an operation pgrepl carries out itself (a restart, a minor or major upgrade, a
//! switchover by hand) does with the store of a cluster agents run: it holds the agents
//! paused while it acts ([`AgentHold`]: the `paused` flag put back as it was afterwards,
//! also when the operation fails), and it moves the leader key with the primary role
//! ([`move_leader`]).
//!
//! Why the key moves inside the switchover, not after the operation: even paused, an
//! agent stops its node at once when the node accepts writes while another node holds the
//! leader key (only the key's holder may accept writes, paused or not; see
//! [`crate::agent::decide()`]). So a switchover's plan, for an `[ha]` cluster, has a step
//! [`crate::plan::Action::MoveLeaderKey`] after the old primary stopped cleanly and the
//! candidate replayed its shutdown checkpoint, right before the promotion; undone (the
//! key back) when the switchover is abandoned before its promotion. The move is a
//! compare-and-set on the key naming the old primary: an agent or another operator that
//! changed it meanwhile makes the step fail instead of being overwritten. The key is bound
//! to the new holder's agent's lease (as the agents' own hand-over binds it), so it lives
//! while that agent does; a target whose agent does not report gets no key (deleted,
//! compare-and-set again): its agent takes it when it acts again, and no other node's
//! agent may then take it while that node accepts writes.
//!
//! Every write here is made under the cluster's operation lock, which `pause`, `resume`
//! and the operations take (so a pause never interleaves with another operation's).

use std::sync::Arc;

use super::{ConsensusStore, HaSettings, Keys, LeaderRecord, StoreError, StoreView};
use crate::error::Error;

/// Attempts of a compare-and-set that keeps losing to other writers before giving up.
const ATTEMPTS: usize = 10;

fn unavailable(what: &str, e: StoreError) -> Error {
    Error::Discovery(format!("{what}: {e}"))
}

async fn read(store: &dyn ConsensusStore, keys: &Keys) -> Result<StoreView, Error> {
    let snap = store.get_prefix(keys.prefix()).await.map_err(|e| unavailable("reading the cluster's keys", e))?;
    Ok(StoreView::parse(keys, &snap))
}

/// Writes the agents' `paused` flag (compare-and-set on the `config` key; `defaults`
/// written when the key is missing). Returns what it was before.
pub async fn set_paused(store: &dyn ConsensusStore, keys: &Keys, defaults: &HaSettings, paused: bool) -> Result<bool, Error> {
    for _ in 0..ATTEMPTS {
        let view = read(store, keys).await?;
        let (mut next, rev) = match &view.config {
            Some(c) => (c.value.clone(), c.mod_revision),
            None => (defaults.clone(), 0),
        };
        let was = next.paused;
        if was == paused && view.config.is_some() {
            return Ok(was);
        }
        next.paused = paused;
        let body = serde_json::to_vec(&next).expect("settings serialize");
        if store.compare_and_set(&keys.config(), rev, &body, None).await.map_err(|e| unavailable("writing the paused flag", e))? {
            return Ok(was);
        }
    }
    Err(Error::Discovery(format!("the HA settings kept changing under this write ({ATTEMPTS} attempts); try again")))
}

/// Moves the leader key from `from` to `to` (see the [module](self)): a compare-and-set
/// on the key naming `from`, bound to `to`'s agent's lease. Already `to`'s: bound to its
/// agent's current lease if on another one (an agent restarted). Absent: created for `to`
/// when its agent reports. Held by a third node: refused, nothing written. Returns what
/// was done, one line.
pub async fn move_leader(store: &dyn ConsensusStore, keys: &Keys, from: &str, to: &str) -> Result<String, Error> {
    let key = keys.leader();
    for _ in 0..ATTEMPTS {
        let view = read(store, keys).await?;
        let lease = view.members.get(to).and_then(|m| m.lease);
        let timeline = view.member(to).and_then(|m| m.timeline);
        let body = serde_json::to_vec(&LeaderRecord { node: to.to_string(), timeline }).expect("a leader record serializes");
        let (key, body) = (&key, &body);
        let cas = |rev| async move { store.compare_and_set(key, rev, body, lease).await };
        let (done, what) = match (&view.leader, lease) {
            (Some(l), _) if l.value.node != from && l.value.node != to => {
                return Err(Error::Refused(crate::error::Refusal {
                    node: to.to_string(),
                    reason: format!(
                        "the leader key names {}, neither {from} nor {to}: another primary is in charge (see `pgrepl status`)",
                        l.value.node
                    ),
                }));
            }
            (Some(l), Some(_)) if l.value.node == to && l.lease == lease => return Ok(format!("the leader key names {to} already")),
            (Some(l), None) if l.value.node == to => return Ok(format!("the leader key names {to} already")),
            (Some(l), Some(_)) if l.value.node == to => {
                (cas(l.mod_revision).await, format!("the leader key bound to {to}'s agent's lease"))
            }
            (Some(l), Some(_)) => (cas(l.mod_revision).await, format!("the leader key moved from {from} to {to}")),
            (Some(l), None) => (
                store.delete_if(key, l.mod_revision).await,
                format!("the leader key removed from {from} ({to}'s agent does not report: it takes the key when it acts)"),
            ),
            (None, Some(_)) => (cas(0).await, format!("the leader key created for {to}")),
            (None, None) => return Ok(format!("no leader key, and {to}'s agent does not report: nothing to move")),
        };
        match done {
            Ok(true) => return Ok(what),
            Ok(false) => continue, // changed meanwhile: read again
            Err(e) => return Err(unavailable(&format!("moving the leader key to {to}"), e)),
        }
    }
    Err(Error::Discovery(format!("the leader key kept changing while it was moved to {to} ({ATTEMPTS} attempts)")))
}

/// Waits until every agent that reports has seen the pause (its member key says
/// "paused": it finished whatever it was doing before, and acts on nothing now), bounded
/// by the ttl and two loops (an agent that stopped reporting loses its member key by
/// then). Past the bound the operation goes on: what it observes next is what it acts on.
async fn await_paused(store: &dyn ConsensusStore, keys: &Keys) {
    let t = std::time::Instant::now();
    let mut limit = std::time::Duration::from_secs(5);
    loop {
        let waiting: Vec<String> = match read(store, keys).await {
            Ok(v) => {
                let s = v.settings();
                limit = limit.max(s.ttl() + 2 * s.loop_wait());
                v.members
                    .values()
                    .map(|m| &m.value)
                    .filter(|m| m.role != super::MemberRole::Witness && !matches!(m.note.as_deref(), Some("paused" | "fenced")))
                    .map(|m| m.node.clone())
                    .collect()
            }
            Err(_) => vec!["(the store did not answer)".into()],
        };
        if waiting.is_empty() {
            return;
        }
        if t.elapsed() > limit {
            tracing::warn!("agents not seen paused after {:.1}s: {}; going on", limit.as_secs_f64(), waiting.join(", "));
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The agents held paused for an operation: [`AgentHold::pause`] when it starts (under
/// its operation lock), [`AgentHold::release`] when it ends, whatever the outcome.
#[derive(Debug)]
pub struct AgentHold {
    store: Arc<dyn ConsensusStore>,
    keys: Keys,
    defaults: HaSettings,
    /// This hold paused them (they were acting); otherwise they were paused already, or
    /// no agent setting is in the store (nothing to hold).
    paused_here: bool,
}

impl AgentHold {
    /// Pauses the agents of the cluster `keys` names unless they are paused already (or
    /// the store has no HA settings for it: no agent ever ran it).
    pub async fn pause(store: Arc<dyn ConsensusStore>, keys: Keys, defaults: HaSettings) -> Result<AgentHold, Error> {
        let view = read(&*store, &keys).await?;
        let paused_here = match &view.config {
            Some(c) if !c.value.paused => !set_paused(&*store, &keys, &defaults, true).await?,
            _ => false,
        };
        if paused_here {
            tracing::info!(cluster = %keys.prefix(), "agents paused for this operation");
            await_paused(&*store, &keys).await;
        }
        Ok(AgentHold { store, keys, defaults, paused_here })
    }

    /// Whether this hold paused the agents (and so resumes them).
    pub fn paused_here(&self) -> bool {
        self.paused_here
    }

    /// Puts the flag back as it was: resumes the agents if this hold paused them. Returns
    /// what became of them, one line.
    pub async fn release(self) -> Result<String, Error> {
        if !self.paused_here {
            return Ok("the agents were paused before this operation and are left paused".into());
        }
        set_paused(&*self.store, &self.keys, &self.defaults, false).await?;
        tracing::info!(cluster = %self.keys.prefix(), "agents resumed after this operation");
        Ok("the agents, paused for this operation, were resumed".into())
    }

    /// Leaves them paused (an operation after which they must not act yet); says so.
    pub fn keep_paused(self) -> String {
        if self.paused_here {
            "the agents, paused for this operation, are left paused: `pgrepl resume` once the cluster is as it should be".into()
        } else {
            "the agents were paused before this operation and are left paused".into()
        }
    }

    /// [`AgentHold::release`] after an operation that ended with `r`: a failure carries
    /// what became of the agents ([`Error::Agents`]); a failure to resume them is one too.
    pub async fn release_after<T>(self, r: Result<T, Error>) -> Result<T, Error> {
        let paused_here = self.paused_here;
        let released = self.release().await;
        match (r, released) {
            (Ok(v), Ok(_)) => Ok(v),
            (Ok(_), Err(e)) => Err(Error::Agents {
                error: Box::new(e),
                agents: "the operation is done, but the agents it paused could not be resumed: `pgrepl resume`".into(),
            }),
            (Err(e), Ok(what)) if paused_here => Err(Error::Agents { error: Box::new(e), agents: what }),
            (Err(e), Ok(_)) => Err(e),
            (Err(e), Err(re)) => Err(Error::Agents {
                error: Box::new(e),
                agents: format!(
                    "the agents it paused are left paused (resuming them failed: {re}): `pgrepl resume` once the cluster is as it should be"
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use crate::store::{MemberRecord, MemberRole};
    use std::time::Duration;

    async fn member(store: &MemoryStore, keys: &Keys, node: &str) -> i64 {
        let lease = store.grant(Duration::from_secs(30)).await.unwrap();
        let body = serde_json::to_vec(&MemberRecord::new(node, MemberRole::Standby)).unwrap();
        store.put(&keys.member(node), &body, Some(lease)).await.unwrap();
        lease
    }

    async fn leader(store: &MemoryStore, keys: &Keys, node: &str, lease: Option<i64>) {
        let body = serde_json::to_vec(&LeaderRecord { node: node.into(), timeline: None }).unwrap();
        store.put(&keys.leader(), &body, lease).await.unwrap();
    }

    async fn view(store: &MemoryStore, keys: &Keys) -> StoreView {
        read(store, keys).await.unwrap()
    }

    #[tokio::test]
    async fn the_key_moves_to_the_targets_lease_and_back() {
        let store = MemoryStore::new();
        let keys = Keys::new("c");
        let l1 = member(&store, &keys, "db1").await;
        let l2 = member(&store, &keys, "db2").await;
        leader(&store, &keys, "db1", Some(l1)).await;
        let said = move_leader(&store, &keys, "db1", "db2").await.unwrap();
        assert!(said.contains("moved from db1 to db2"), "{said}");
        let v = view(&store, &keys).await;
        assert_eq!((v.leader_node(), v.leader.as_ref().unwrap().lease), (Some("db2"), Some(l2)));
        // Twice: nothing more to do.
        assert!(move_leader(&store, &keys, "db1", "db2").await.unwrap().contains("already"));
        // Back (an abandoned switchover's undo).
        move_leader(&store, &keys, "db2", "db1").await.unwrap();
        let v = view(&store, &keys).await;
        assert_eq!((v.leader_node(), v.leader.as_ref().unwrap().lease), (Some("db1"), Some(l1)));
    }

    #[tokio::test]
    async fn a_third_holder_is_never_overwritten() {
        let store = MemoryStore::new();
        let keys = Keys::new("c");
        let l3 = member(&store, &keys, "db3").await;
        member(&store, &keys, "db2").await;
        leader(&store, &keys, "db3", Some(l3)).await;
        let e = move_leader(&store, &keys, "db1", "db2").await.unwrap_err();
        assert!(e.is_refusal() && e.to_string().contains("names db3"), "{e}");
        assert_eq!(view(&store, &keys).await.leader_node(), Some("db3"));
    }

    #[tokio::test]
    async fn a_target_without_agent_gets_no_key_and_a_restarted_agent_is_rebound() {
        let store = MemoryStore::new();
        let keys = Keys::new("c");
        let l1 = member(&store, &keys, "db1").await;
        leader(&store, &keys, "db1", Some(l1)).await;
        let said = move_leader(&store, &keys, "db1", "db2").await.unwrap();
        assert!(said.contains("removed") && view(&store, &keys).await.leader.is_none(), "{said}");
        assert!(move_leader(&store, &keys, "db1", "db2").await.unwrap().contains("nothing to move"));
        // db2's agent reports now: the key is created for it.
        let l2 = member(&store, &keys, "db2").await;
        assert!(move_leader(&store, &keys, "db1", "db2").await.unwrap().contains("created for db2"));
        assert_eq!(view(&store, &keys).await.leader.unwrap().lease, Some(l2));
        // Its agent restarted on a new lease: the key follows it.
        let l2b = member(&store, &keys, "db2").await;
        assert!(move_leader(&store, &keys, "db2", "db2").await.unwrap().contains("bound to db2's agent's lease"));
        assert_eq!(view(&store, &keys).await.leader.unwrap().lease, Some(l2b));
    }

    #[tokio::test]
    async fn a_pause_waits_until_the_agents_say_they_saw_it() {
        let mem = Arc::new(MemoryStore::new());
        let store: Arc<dyn ConsensusStore> = mem.clone();
        let keys = Keys::new("c");
        set_paused(&*store, &keys, &HaSettings::default(), false).await.unwrap();
        let lease = member(&mem, &keys, "db2").await;
        // An agent: reports "paused" once it reads the flag.
        let (s2, k2) = (store.clone(), keys.clone());
        let agent = tokio::spawn(async move {
            for _ in 0..500 {
                if read(&*s2, &k2).await.unwrap().settings().paused {
                    let mut m = MemberRecord::new("db2", MemberRole::Standby);
                    m.note = Some("paused".into());
                    s2.put(&k2.member("db2"), &serde_json::to_vec(&m).unwrap(), Some(lease)).await.unwrap();
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        let h = AgentHold::pause(store.clone(), keys.clone(), HaSettings::default()).await.unwrap();
        assert!(h.paused_here());
        let v = read(&*store, &keys).await.unwrap();
        assert_eq!(v.member("db2").and_then(|m| m.note.as_deref()), Some("paused"), "the hold waited for the agent");
        agent.await.unwrap();
        h.release().await.unwrap();
    }

    #[tokio::test]
    async fn a_hold_puts_the_flag_back_as_it_was() {
        let store: Arc<dyn ConsensusStore> = Arc::new(MemoryStore::new());
        let keys = Keys::new("c");
        let defaults = HaSettings::default();
        // No settings in the store: nothing to hold.
        let h = AgentHold::pause(store.clone(), keys.clone(), defaults.clone()).await.unwrap();
        assert!(!h.paused_here());
        assert!(read(&*store, &keys).await.unwrap().config.is_none());
        h.release().await.unwrap();
        // Acting agents: paused for the operation, resumed after, also after a failure.
        set_paused(&*store, &keys, &defaults, false).await.unwrap();
        let h = AgentHold::pause(store.clone(), keys.clone(), defaults.clone()).await.unwrap();
        assert!(h.paused_here() && read(&*store, &keys).await.unwrap().settings().paused);
        let r: Result<(), Error> = h.release_after(Err(Error::node("db1", "boom"))).await;
        let e = r.unwrap_err();
        assert!(e.to_string().contains("boom") && e.to_string().contains("were resumed"), "{e}");
        assert!(!read(&*store, &keys).await.unwrap().settings().paused);
        // Paused by the operator: left paused.
        set_paused(&*store, &keys, &defaults, true).await.unwrap();
        let h = AgentHold::pause(store.clone(), keys.clone(), defaults.clone()).await.unwrap();
        assert!(!h.paused_here());
        h.release_after(Ok(())).await.unwrap();
        assert!(read(&*store, &keys).await.unwrap().settings().paused);
    }
}
