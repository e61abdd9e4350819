//! pgBackRest on a node's host, through its transport: the installed version checked
//! against the cluster's major, the node's 0600 configuration written (with the S3 keys
//! read from `backup.credentials_file` as the server's OS user), and its commands run.
//! What the commands and the file say is rendered in
//! [`render::pgbackrest`](crate::render::pgbackrest).

use std::time::Duration;

use super::decide::check_pgbackrest;
use crate::deploy::tr;
use crate::error::{Error, Refusal};
use crate::provider::NodeHandle;
use crate::render::pgbackrest::{self as pgbr, PgbackrestNode, PgbackrestVersion, S3Keys};
use crate::spec::BackupSpec;
use crate::tool_failure::ToolFailure;
use crate::transport::{Command, TransportExt};
use crate::version::PgMajor;

/// The installed pgBackRest on `h`'s host, refused (before anything changes) when it does
/// not support `major`.
pub(crate) async fn check_version(b: &BackupSpec, major: PgMajor, h: &NodeHandle) -> Result<PgbackrestVersion, Error> {
    let line = pgbr::version_command(b, &h.layout.os_user);
    let out = h
        .transport
        .exec(&Command::from_line(&line).timeout(Duration::from_secs(30)))
        .await
        .map_err(|e| tr(&h.name, "run pgbackrest version", e))?;
    if !out.success() {
        return Err(Error::Backup {
            node: h.name.clone(),
            action: format!("run {} version", line.program),
            cause: ToolFailure::NotInstalled,
            detail: out.tail(),
        });
    }
    check_pgbackrest(&out.stdout, &line.program, major).map_err(|reason| Refusal { node: h.name.clone(), reason }.into())
}

/// The S3 keys of `backup.credentials_file` (and `backup.profile`), read on `h`'s host as
/// the server's OS user; `None` without a credentials file (the instance role).
async fn read_keys(b: &BackupSpec, h: &NodeHandle) -> Result<Option<S3Keys>, Error> {
    let Some(path) = &b.credentials_file else { return Ok(None) };
    let path = path.to_string_lossy();
    let bytes =
        h.transport.read_file_as(&path, &h.layout.os_user).await.map_err(|e| tr(&h.name, "read backup.credentials_file", e))?.ok_or_else(
            || Error::Backup {
                node: h.name.clone(),
                action: "read the S3 keys".into(),
                cause: ToolFailure::BadCredentials,
                detail: format!("{path} (backup.credentials_file) does not exist or {} cannot read it", h.layout.os_user),
            },
        )?;
    let text = String::from_utf8_lossy(&bytes);
    pgbr::parse_aws_credentials(&text, b.profile.as_deref()).map(Some).ok_or_else(|| Error::Backup {
        node: h.name.clone(),
        action: "read the S3 keys".into(),
        cause: ToolFailure::BadCredentials,
        detail: format!(
            "{path} (backup.credentials_file) has no aws_access_key_id and aws_secret_access_key in profile {}",
            b.profile.as_deref().unwrap_or("default")
        ),
    })
}

/// Writes the configuration of `stanza` for a server at `node` into `pgrepl_dir` on
/// `h`'s host: the directory 0700 and the file 0600, both the server's OS user's.
pub(crate) async fn write_config(
    b: &BackupSpec,
    stanza: &str,
    pgrepl_dir: &str,
    node: &PgbackrestNode<'_>,
    h: &NodeHandle,
) -> Result<(), Error> {
    let keys = read_keys(b, h).await?;
    let dir = pgbr::config_path(pgrepl_dir, stanza);
    let user = h.layout.os_user.as_str();
    let t = &*h.transport;
    let map = |e| tr(&h.name, "write pgBackRest's configuration", e);
    t.mkdir(&format!("{pgrepl_dir}/pgbackrest"), 0o700, Some(user)).await.map_err(map)?;
    for d in [dir.clone(), format!("{dir}/lock"), format!("{dir}/spool")] {
        t.mkdir(&d, 0o700, Some(user)).await.map_err(map)?;
    }
    let text = pgbr::config(b, stanza, &dir, node, keys.as_ref());
    t.write_file(&format!("{dir}/pgbackrest.conf"), text.as_bytes(), 0o600, Some(user)).await.map_err(map)?;
    Ok(())
}
