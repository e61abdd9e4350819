//! pgBackRest's failover gap, closed on the new primary (what is decided is in
//! [`timeline_gap`](super::timeline_gap)): after its promotion, the parent timeline's
//! whole segments it streamed (marked archived by its walreceiver) that the archive lacks
//! are marked `.ready`, so its archiver pushes them.

use std::time::Duration;

use super::timeline_gap::{archive_dirs, archive_id, missing_from_archive, old_timeline_segments};
use crate::deploy::{SQL_TIMEOUT, tr};
use crate::error::Error;
use crate::pgcontrol;
use crate::provider::NodeHandle;
use crate::render::pgbackrest as pgbr;
use crate::spec::BackupSpec;
use crate::sql;
use crate::transport::Command;
use crate::version::Capabilities;

/// On the new primary `h` (listening on `port`), the archive of `stanza` completed with
/// the parent timeline's segments it holds and the archive lacks: they are marked
/// `.ready` and the archiver woken (a reload). Says what it did.
pub(crate) async fn hand_old_timeline_to_archiver(
    b: &BackupSpec,
    stanza: &str,
    h: &NodeHandle,
    port: u16,
    caps: &Capabilities,
) -> Result<String, Error> {
    let l = &h.layout;
    let q = format!(
        "SELECT pg_catalog.{}(pg_catalog.{}()), pg_catalog.pg_size_bytes(pg_catalog.current_setting('wal_segment_size'));",
        caps.lsn.walfile_name, caps.lsn.current
    );
    let rows = sql::query(&*h.transport, l, port, &q, SQL_TIMEOUT)
        .await
        .map_err(|e| Error::node(&h.name, format!("read the new primary's timeline: {e}")))?;
    let row = rows.first().cloned().unwrap_or_default();
    let wal = row.first().cloned().flatten().unwrap_or_default();
    let seg_size: u64 = row.get(1).cloned().flatten().and_then(|s| s.parse().ok()).unwrap_or(0);
    let tli = wal.get(..8).and_then(|t| u32::from_str_radix(t, 16).ok()).filter(|_| seg_size > 0);
    let Some(tli) = tli else { return Err(Error::node(&h.name, format!("read the new primary's timeline: \"{wal}\""))) };
    if tli <= 1 {
        return Ok("timeline 1: no older timeline".into());
    }
    let wal_dir = format!("{}/{}", l.data_dir.trim_end_matches('/'), caps.wal_dir);
    let history_path = format!("{wal_dir}/{}", pgcontrol::history_file_name(tli));
    let history = h
        .transport
        .read_file_as(&history_path, &l.os_user)
        .await
        .map_err(|e| tr(&h.name, "read the new timeline's history file", e))?
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .ok_or_else(|| Error::node(&h.name, format!("{history_path} is missing after the promotion")))?;
    let Some(fork) = pgcontrol::parse_history(&history).last().cloned() else {
        return Err(Error::node(&h.name, format!("{history_path} has no line")));
    };
    let ls = |dir: String| async move {
        let out = h
            .transport
            .exec(&Command::new("ls").args(["-1", dir.as_str()]).user(&l.os_user).timeout(Duration::from_secs(30)))
            .await
            .map_err(|e| tr(&h.name, &format!("list {dir}"), e))?;
        if !out.success() {
            return Err(Error::node(&h.name, format!("list {dir}: {}", out.tail())));
        }
        Ok::<Vec<String>, Error>(out.stdout.lines().map(str::to_string).collect())
    };
    let files = ls(wal_dir.clone()).await?;
    let status = ls(format!("{wal_dir}/archive_status")).await?;
    let held = old_timeline_segments(fork.parent, fork.switchpoint, &files, &status, seg_size);
    let parent = fork.parent;
    if held.is_empty() {
        return Ok(format!("no whole segment of timeline {parent} streamed here to check against the archive"));
    }
    let repo_ls = |path: String| async move {
        let line = pgbr::command(b, &l.pgrepl_dir, stanza, &l.os_user, &["repo-ls", path.as_str()]);
        let out = h
            .transport
            .exec(&Command::from_line(&line).timeout(Duration::from_secs(180)))
            .await
            .map_err(|e| tr(&h.name, "list the archive (pgbackrest repo-ls)", e))?;
        if !out.success() {
            return Err(Error::node(&h.name, format!("list the archive (pgbackrest repo-ls {path}): {}", out.tail())));
        }
        Ok::<String, Error>(out.stdout)
    };
    let ids = repo_ls(format!("archive/{stanza}")).await?;
    let id = archive_id(&ids).ok_or_else(|| Error::node(&h.name, format!("the archive of stanza {stanza} has no archive id: {ids}")))?;
    let mut listed = Vec::new();
    for dir in archive_dirs(&held) {
        listed.extend(repo_ls(format!("archive/{stanza}/{id}/{dir}")).await?.lines().map(str::to_string));
    }
    let missing = missing_from_archive(&held, &listed);
    if missing.is_empty() {
        return Ok(format!("the archive has the {} whole segment(s) of timeline {parent} streamed here", held.len()));
    }
    for seg in &missing {
        let (done, ready) = (format!("{wal_dir}/archive_status/{seg}.done"), format!("{wal_dir}/archive_status/{seg}.ready"));
        let out = h
            .transport
            .exec(&Command::new("mv").args(["-n", done.as_str(), ready.as_str()]).user(&l.os_user).timeout(Duration::from_secs(30)))
            .await
            .map_err(|e| tr(&h.name, &format!("mark {seg} ready for the archiver"), e))?;
        if !out.success() {
            return Err(Error::node(&h.name, format!("mark {seg} ready for the archiver: {}", out.tail())));
        }
    }
    // A reload wakes the archiver (it would look again within a minute anyway).
    let _ = sql::query(&*h.transport, l, port, "SELECT pg_catalog.pg_reload_conf();", SQL_TIMEOUT).await;
    Ok(format!("handed {} segment(s) of timeline {parent} the archive lacked to the archiver: {}", missing.len(), missing.join(", ")))
}
