//! `[backup] tool = "directory"`: the WAL archive and the base backups in a directory
//! (`path`) that every node's host sees at the same place (one host, or a shared mount):
//! `<path>/<cluster>/wal/` filled by `archive_command`, `<path>/<cluster>/base/<id>/`
//! holding `base.tar` (`pg_basebackup -Ft -X fetch`: the WAL from its start to its end
//! inside, so it is consistent by itself; what follows comes from the archive) and
//! `backup.json` (what `backups` lists). pgrepl
//! writes and reads it through the nodes' transports, as the server's OS user.

use std::time::Duration;

use time::OffsetDateTime;

use super::catalog::{BackupInfo, parse_basebackup_verbose};
use super::decide::{retention_removes, segment_name, wal_removable};
use crate::deploy::{CLONE_TIMEOUT, Deployment, SQL_TIMEOUT, tr};
use crate::error::Error;
use crate::provider::NodeHandle;
use crate::render::backup_tool as tool;
use crate::render::{CommandLine, server_env};
use crate::spec::BackupSpec;
use crate::sql;
use crate::tool_failure::ToolFailure;
use crate::transport::{Command, TransportExt};

fn failed(h: &NodeHandle, action: &str, detail: String) -> Error {
    Error::Backup { node: h.name.clone(), action: action.into(), cause: ToolFailure::Other, detail }
}

/// Creates the archive's directories on `h`'s host (the server's OS user's, 0700).
pub(super) async fn prepare(b: &BackupSpec, server: &str, h: &NodeHandle) -> Result<(), Error> {
    for d in [tool::directory_wal_dir(b, server), tool::directory_base_dir(b, server)] {
        h.transport.mkdir(&d, 0o700, Some(&h.layout.os_user)).await.map_err(|e| tr(&h.name, "create the backup directory", e))?;
    }
    Ok(())
}

/// The backups of cluster `server` in the directory, read on `h`'s host.
pub(super) async fn list(b: &BackupSpec, server: &str, h: &NodeHandle) -> Result<Vec<BackupInfo>, Error> {
    let base = tool::directory_base_dir(b, server);
    let script = r#"for f in "$1"/*/backup.json; do if [ -f "$f" ]; then cat "$f"; echo; fi; done"#;
    let out = h
        .transport
        .exec(&Command::new("sh").args(["-c", script, "pgrepl-backups", base.as_str()]).user(h.layout.os_user.clone()))
        .await
        .map_err(|e| tr(&h.name, "list the backups", e))?;
    if !out.success() {
        return Err(failed(h, "list the backups", out.tail()));
    }
    let mut v: Vec<BackupInfo> = out
        .stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| Error::node(&h.name, format!("{base}: a backup.json pgrepl cannot read: {e}"))))
        .collect::<Result<_, _>>()?;
    v.sort_by_key(|a| a.end_time);
    Ok(v)
}

/// The command that unpacks backup `id` into the empty `data` directory, as `user`;
/// refused (exit 3) when the backup holds a tablespace's tar too.
pub(super) fn restore_line(b: &BackupSpec, server: &str, id: &str, data: &str, user: &str) -> CommandLine {
    let dir = format!("{}/{id}", tool::directory_base_dir(b, server));
    let script = r#"set -eu
for f in "$1"/*.tar; do
  case "${f##*/}" in base.tar) ;; *) echo "$f: tablespaces are not restored by tool = directory" >&2; exit 3;; esac
done
tar -xf "$1/base.tar" -C "$2""#;
    CommandLine {
        program: "sh".into(),
        args: vec!["-c".into(), script.into(), "pgrepl-restore".into(), dir, data.into()],
        env: Vec::new(),
        user: user.into(),
    }
}

impl Deployment {
    /// A base backup of the server of `h` (listening on `port`) into the directory.
    pub(super) async fn directory_backup(&self, b: &BackupSpec, server: &str, h: &NodeHandle, port: u16) -> Result<BackupInfo, Error> {
        let l = &h.layout;
        let t = &*h.transport;
        prepare(b, server, h).await?;
        let begin_time = OffsetDateTime::now_utc();
        let f = time::macros::format_description!("[year][month][day]T[hour][minute][second]");
        let id = begin_time.format(&f).map_err(|e| Error::node(&h.name, format!("a backup id: {e}")))?;
        let base = tool::directory_base_dir(b, server);
        let (part, done) = (format!("{base}/{id}.partial"), format!("{base}/{id}"));
        if t.exists(&done, None).await.map_err(|e| tr(&h.name, "look at the backup directory", e))? {
            return Err(Error::node(&h.name, format!("{done} exists: a backup was taken this very second; try again")));
        }
        let cmd = Command::new(l.client_tool("pg_basebackup"))
            .args(["-h", l.socket_dir.as_str(), "-p", &port.to_string(), "-U", l.superuser.as_str()])
            .args(["-D", part.as_str(), "-Ft", "-X", "fetch", "-c", "fast", "-v", "-w"])
            .user(l.os_user.clone())
            .timeout(CLONE_TIMEOUT);
        let cmd = server_env(l).into_iter().fold(cmd, |c, (k, v)| c.env(k, v));
        let out = t.exec(&cmd).await.map_err(|e| tr(&h.name, "take a base backup", e))?;
        let parsed = parse_basebackup_verbose(&out.stderr);
        let Some((begin_lsn, timeline, end_lsn)) = parsed.filter(|_| out.success()) else {
            let _ = t.remove_tree(&part).await;
            return Err(failed(h, "take a base backup", out.tail()));
        };
        let end_time = OffsetDateTime::now_utc();
        let du = t
            .exec(&Command::new("du").args(["-sb", part.as_str()]).user(l.os_user.clone()))
            .await
            .map_err(|e| tr(&h.name, "measure the backup", e))?;
        let size_bytes = du.stdout.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
        let version = sql::query_one(&*h.transport, l, port, "SELECT current_setting('server_version_num');", SQL_TIMEOUT)
            .await
            .ok()
            .flatten()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let info = BackupInfo {
            id: id.clone(),
            status: "DONE".into(),
            begin_time,
            end_time,
            begin_lsn,
            end_lsn,
            timeline,
            size_bytes,
            server_version: version,
        };
        let json = serde_json::to_string(&info).expect("serializes");
        t.write_file(&format!("{part}/backup.json"), json.as_bytes(), 0o600, Some(&l.os_user))
            .await
            .map_err(|e| tr(&h.name, "write backup.json", e))?;
        t.run(&Command::new("mv").args(["--", part.as_str(), done.as_str()]).user(l.os_user.clone()))
            .await
            .map_err(|e| tr(&h.name, "name the backup", e))?;
        Ok(info)
    }

    /// Retention in the directory: the backups [`retention_removes`] names, then the
    /// archived WAL older than the oldest backup kept. Returns the ids removed.
    pub(super) async fn directory_retention(&self, b: &BackupSpec, server: &str, h: &NodeHandle, port: u16) -> Result<Vec<String>, Error> {
        let Some(r) = &b.retention else { return Ok(Vec::new()) };
        let window = r.window_seconds().and_then(Result::ok);
        let catalog = list(b, server, h).await?;
        let gone = retention_removes(&catalog, r.keep, window, OffsetDateTime::now_utc());
        let base = tool::directory_base_dir(b, server);
        for id in &gone {
            h.transport.remove_tree(&format!("{base}/{id}")).await.map_err(|e| tr(&h.name, "remove a backup", e))?;
        }
        let Some(oldest) = catalog.iter().filter(|x| x.done() && !gone.contains(&x.id)).min_by_key(|x| x.end_time) else {
            return Ok(gone);
        };
        // The segment size, as the server says (`16MB`).
        let size = sql::query_one(&*h.transport, &h.layout, port, "SELECT current_setting('wal_segment_size');", SQL_TIMEOUT)
            .await
            .ok()
            .flatten()
            .and_then(|s| parse_size(&s))
            .unwrap_or(16 << 20);
        let first = segment_name(oldest.timeline, oldest.begin_lsn, size);
        let wal = tool::directory_wal_dir(b, server);
        let ls = h
            .transport
            .exec(&Command::new("ls").args(["-1", wal.as_str()]).user(h.layout.os_user.clone()).timeout(Duration::from_secs(60)))
            .await
            .map_err(|e| tr(&h.name, "list the archived WAL", e))?;
        let files: Vec<String> = ls.stdout.lines().map(str::to_string).collect();
        let old: Vec<String> = wal_removable(&files, &first).into_iter().map(|f| format!("{wal}/{f}")).collect();
        for chunk in old.chunks(200) {
            let rm = Command::new("rm").args(["-f", "--"]).args(chunk.iter().cloned()).user(h.layout.os_user.clone());
            h.transport.run(&rm).await.map_err(|e| tr(&h.name, "remove archived WAL no backup needs", e))?;
        }
        Ok(gone)
    }
}

/// `16MB`, `1GB`, `16777216` (bytes) → bytes.
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "" | "B" => n,
        "kB" => n << 10,
        "MB" => n << 20,
        "GB" => n << 30,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes() {
        assert_eq!(super::parse_size("16MB"), Some(16 << 20));
        assert_eq!(super::parse_size("1GB"), Some(1 << 30));
        assert_eq!(super::parse_size("16777216"), Some(16 << 20));
        assert_eq!(super::parse_size("lots"), None);
    }
}
