//! The scheduled base backups of `[backup] schedule`, taken by the agent of the node that
//! holds the leader key: a task of its own beside the loop (a backup takes minutes; the
//! loop and the lease never wait for it). One at a time cluster-wide: the taker creates
//! `backup/running` bound to its lease (create-if-absent: one winner; the key goes with
//! the lease if its agent dies), then records the slot in `backup/last`, whatever the
//! result, so that the next leader, after a failover, goes on with the next slot.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;

use super::run::LeaseState;
use crate::backup::schedule::{Schedule, ScheduledBackup, due};
use crate::deploy::Deployment;
use crate::store::{ConsensusStore, Keys, StoreView};

/// How often the scheduler looks at the clock and the store.
const TICK: Duration = Duration::from_secs(5);
/// Time limit of one store call.
const STORE_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs until aborted: every [`TICK`], when this agent's node leads and a slot is due,
/// takes the backup (`retention` applied after it when the spec sets one).
pub(super) async fn scheduler(d: Deployment, me: String, store: Arc<dyn ConsensusStore>, keys: Keys, lease: Arc<Mutex<LeaseState>>) {
    let Some(expr) = d.cluster().backup.as_ref().and_then(|b| b.schedule.clone()) else { return };
    let schedule = match Schedule::parse(&expr) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(node = %me, "backup.schedule: {e}: no scheduled backups");
            return;
        }
    };
    let since = OffsetDateTime::now_utc();
    loop {
        tokio::time::sleep(TICK).await;
        let Some(id) = lease.lock().unwrap_or_else(|p| p.into_inner()).id else { continue };
        let Ok(Ok(snap)) = tokio::time::timeout(STORE_TIMEOUT, store.get_prefix(keys.prefix())).await else { continue };
        let view = StoreView::parse(&keys, &snap);
        if view.leader_node() != Some(me.as_str()) {
            continue;
        }
        let record =
            |key: &str| snap.kvs.iter().find(|kv| kv.key == key).and_then(|kv| serde_json::from_slice::<ScheduledBackup>(&kv.value).ok());
        if record(&keys.backup_running()).is_some() {
            continue;
        }
        let last = record(&keys.backup_last()).map(|r| r.slot);
        let Some(slot) = due(&schedule, last, since, OffsetDateTime::now_utc()) else { continue };
        let mut rec = ScheduledBackup { slot, node: me.clone(), id: None, error: None };
        let body = serde_json::to_vec(&rec).expect("serializes");
        if !matches!(tokio::time::timeout(STORE_TIMEOUT, store.create(&keys.backup_running(), &body, Some(id))).await, Ok(Ok(true))) {
            continue;
        }
        tracing::info!(node = %me, "scheduled base backup for {slot}: starting");
        match d.take_backup(Some(&me)).await {
            Ok(b) => {
                tracing::info!(node = %me, "scheduled base backup {} taken", b.id);
                rec.id = Some(b.id);
                if d.cluster().backup.as_ref().is_some_and(|b| b.retention.is_some()) {
                    if let Err(e) = d.apply_retention().await {
                        tracing::warn!(node = %me, "retention after the scheduled backup: {}", crate::error::chain(&e));
                    }
                }
            }
            Err(e) => {
                let why = crate::error::chain(&e);
                tracing::warn!(node = %me, "scheduled base backup for {slot} failed: {why}");
                rec.error = Some(why);
            }
        }
        let body = serde_json::to_vec(&rec).expect("serializes");
        let _ = tokio::time::timeout(STORE_TIMEOUT, store.put(&keys.backup_last(), &body, None)).await;
        if let Ok(Ok(snap)) = tokio::time::timeout(STORE_TIMEOUT, store.get_prefix(&keys.backup_running())).await {
            if let Some(kv) = snap.kvs.iter().find(|kv| kv.key == keys.backup_running()) {
                let _ = tokio::time::timeout(STORE_TIMEOUT, store.delete_if(&kv.key, kv.mod_revision)).await;
            }
        }
    }
}
