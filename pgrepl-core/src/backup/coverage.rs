//! That a restore reaches its target, on both sides of the replay.
//!
//! Before: when the source's primary runs, its WAL up to now is made to reach the archive
//! (a commit after the target, so that recovery to a time finds one to stop before; the
//! segment switched; pgrepl waits until `pg_stat_archiver` has archived it), or the
//! restore is refused naming the segment and the archiver's last failure. After: the
//! promoted server's history file must say it stopped at the target; PostgreSQL up to 12
//! promotes silently at the end of the archived WAL when it never got there (13+ stop
//! with an error), which would lose every commit between that end and the target.

use std::time::{Duration, Instant};

use super::decide::{RestoreRefusal, Target, archived_through, target_reached};
use crate::deploy::{Deployment, SQL_TIMEOUT, is_running, tr};
use crate::error::{Error, Refusal};
use crate::provider::NodeHandle;
use crate::render::RenderedNode;
use crate::sql;
use crate::transport::{Command, TransportExt};
use crate::version::Capabilities;

/// How long a restore waits for the source's WAL up to now to be archived.
pub const ARCHIVE_WAIT: Duration = Duration::from_secs(180);

impl Deployment {
    /// When this cluster's primary runs and accepts writes: commits a transaction (one
    /// transaction id, no table touched, committed locally even in synchronous mode),
    /// switches the WAL segment and waits (bounded by [`ARCHIVE_WAIT`]) until the archiver
    /// has archived it; every commit acknowledged up to now is then in the archive.
    /// Returns the segment waited for, or `None` when the primary does not run (an
    /// in-place restore after `down`, a dead primary): the restore uses what the archive
    /// holds, and [`check_target_reached`] refuses a target it does not reach.
    pub(super) async fn archive_up_to_now(&self, target: &Target) -> Result<Option<String>, Error> {
        let Ok((cluster, h)) = self.node_handle(None).await else { return Ok(None) };
        let Some(caps) = cluster.caps() else { return Ok(None) };
        let port = cluster.primary().port;
        let q = |text: String| {
            let h = &h;
            async move { sql::query(&*h.transport, &h.layout, port, &text, SQL_TIMEOUT).await }
        };
        match q("SELECT pg_catalog.pg_is_in_recovery();".into()).await {
            Ok(rows) if rows.first().and_then(|r| r.first().cloned().flatten()).as_deref() == Some("f") => {}
            // Down, unreachable or a standby: nothing to push.
            _ => return Ok(None),
        }
        // txid_current(): every major has it (pg_current_xact_id() only from 13).
        let xid = "pg_catalog.txid_current()";
        let text = format!(
            "SET synchronous_commit = local;\nSELECT {xid};\nSELECT pg_catalog.{}(pg_catalog.{}());",
            caps.lsn.walfile_name, caps.lsn.switch
        );
        let segment = q(text)
            .await
            .map_err(|e| Error::node(&h.name, format!("switch the WAL segment before the restore: {e}")))?
            .last()
            .and_then(|r| r.first().cloned().flatten())
            .filter(|s| s.len() == 24)
            .ok_or_else(|| Error::node(&h.name, "switch the WAL segment before the restore: no segment name returned"))?;
        let t0 = Instant::now();
        let stat = "SELECT coalesce(last_archived_wal, ''), coalesce(last_archived_time::text, ''), failed_count, \
                    coalesce(last_failed_wal, ''), coalesce(last_failed_time::text, '') FROM pg_catalog.pg_stat_archiver;";
        let mut seen = String::from("not read");
        loop {
            if let Ok(rows) = q(stat.into()).await {
                let row: Vec<String> = rows.first().cloned().unwrap_or_default().into_iter().map(Option::unwrap_or_default).collect();
                let get = |i: usize| row.get(i).cloned().unwrap_or_default();
                if archived_through(&get(0), &segment) {
                    return Ok(Some(segment));
                }
                seen = format!("last archived {} at {}", or_none(&get(0)), or_none(&get(1)));
                if get(2) != "0" {
                    seen.push_str(&format!(", {} failures, the last {} at {}", get(2), or_none(&get(3)), or_none(&get(4))));
                }
            }
            if t0.elapsed() > ARCHIVE_WAIT {
                return Err(Refusal {
                    node: h.name.clone(),
                    reason: RestoreRefusal::ArchiveBehind {
                        target: target.to_string(),
                        node: h.name.clone(),
                        segment,
                        waited_seconds: ARCHIVE_WAIT.as_secs(),
                        archiver: seen,
                    }
                    .to_string(),
                }
                .into());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

fn or_none(s: &str) -> &str {
    if s.is_empty() { "none" } else { s }
}

/// After the restored server `h` (listening on `port`) promoted: reads the history file
/// of its new timeline and refuses when recovery did not stop at `target` (it ran out of
/// archived WAL first), saying where it ended.
pub(super) async fn check_target_reached(h: &NodeHandle, port: u16, caps: &Capabilities, target: &Target) -> Result<(), Error> {
    if *target == Target::Latest {
        return Ok(());
    }
    let q = format!("SELECT pg_catalog.{}(pg_catalog.{}());", caps.lsn.walfile_name, caps.lsn.current);
    let wal = sql::query_one(&*h.transport, &h.layout, port, &q, SQL_TIMEOUT)
        .await
        .map_err(|e| Error::node(&h.name, format!("read the restored server's timeline: {e}")))?
        .unwrap_or_default();
    let tli = wal.get(..8).ok_or_else(|| Error::node(&h.name, format!("read the restored server's timeline: \"{wal}\"")))?;
    let path = format!("{}/{}/{tli}.history", h.layout.data_dir.trim_end_matches('/'), caps.wal_dir);
    let history = h
        .transport
        .read_file_as(&path, &h.layout.os_user)
        .await
        .map_err(|e| tr(&h.name, "read the new timeline's history file", e))?
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .ok_or_else(|| Error::node(&h.name, format!("{path} is missing after the promotion")))?;
    target_reached(&history, target).map_err(|end| {
        Refusal { node: h.name.clone(), reason: RestoreRefusal::TargetNotReached { target: target.to_string(), end }.to_string() }.into()
    })
}

/// A restore that failed once its server was started (`r` rendered for it): the server
/// stopped and the data directory this restore created removed, so that nothing half
/// restored is left to be mistaken for the target; `e` is returned saying so.
pub(super) async fn abandon(h: &NodeHandle, r: &RenderedNode, e: Error) -> Error {
    let _ = h.transport.exec(&Command::from_line(&r.commands.stop).timeout(Duration::from_secs(120))).await;
    let note = match is_running(h).await {
        Ok(false) => match h.transport.remove_tree(&h.layout.data_dir).await {
            Ok(()) => format!("the restored server was stopped and {} removed", h.layout.data_dir),
            Err(x) => format!("the restored server was stopped; removing {} failed: {x}", h.layout.data_dir),
        },
        _ => format!("the restored server in {} did not stop: stop it and remove that directory", h.layout.data_dir),
    };
    match e {
        Error::Refused(Refusal { node, reason }) => Refusal { node, reason: format!("{reason}; {note}") }.into(),
        other => Error::node(&h.name, format!("{}; {note}", crate::error::chain(&other))),
    }
}
