//! pgBackRest's repository on a host over SSH (`backup.repo_host`), through pgrepl's
//! transports: the SSH trust both ways between the nodes' server OS user and the
//! repository host's user (keys made where missing, each key allowed to run pgBackRest
//! only, host keys learnt through pgrepl's own authenticated connection to each host),
//! the repository host's configuration of the stanza, and the commands that run there
//! (`stanza-create`, `backup`, `expire`). The nodes' own commands (`archive-push`,
//! `archive-get`, `info`, `restore`) reach the repository over SSH by their configuration.
//! What the files and scripts say is rendered in [`render::pgbackrest`](crate::render::pgbackrest).

use std::sync::Arc;
use std::time::Duration;

use super::pgbackrest::check_version;
use crate::cluster::Cluster;
use crate::deploy::{Deployment, tr};
use crate::error::Error;
use crate::provider::NodeHandle;
use crate::render::CommandLine;
use crate::render::pgbackrest::{self as pgbr, PgbackrestNode, RepoHostPg};
use crate::spec::BackupSpec;
use crate::transport::{Command, Transport};

/// How messages name the repository host.
const NAME: &str = "repository host";

/// A connection to the repository host.
pub(crate) struct RepoHost {
    transport: Arc<dyn Transport>,
    address: String,
}

/// A node's host in the trust: its handle, and the address the repository host reaches it at.
fn address_of(cluster: &Cluster, h: &NodeHandle) -> Result<String, Error> {
    cluster.node(&h.name).and_then(|n| n.address.clone()).ok_or_else(|| {
        Error::node(&h.name, "backup.repo_host: the repository host reaches the nodes over SSH, and this node has no address")
    })
}

async fn root_script(t: &dyn Transport, who: &str, what: &str, script: String) -> Result<String, Error> {
    let out = t
        .exec(&Command::new("sh").args(["-c", script.as_str()]).user("root").timeout(Duration::from_secs(120)))
        .await
        .map_err(|e| tr(who, what, e))?;
    if !out.success() {
        return Err(Error::node(who, format!("{what}: {}", out.tail())));
    }
    Ok(out.stdout)
}

/// (the user's public key, the host's own SSH host key line) from [`pgbr::ssh_prepare_script`].
fn keys_of(who: &str, out: &str) -> Result<(String, String), Error> {
    let mut lines = out.lines().map(str::trim).filter(|l| !l.is_empty());
    match (lines.next(), lines.next()) {
        (Some(k), Some(h)) if k.starts_with("ssh-") && h.contains(" ssh-") => Ok((k.to_string(), h.to_string())),
        _ => Err(Error::node(who, format!("set up pgBackRest's SSH key: unexpected output \"{}\"", out.trim()))),
    }
}

impl Deployment {
    /// The repository host, connected; `None` without `backup.repo_host`.
    pub(crate) async fn repo_host(&self, b: &BackupSpec) -> Result<Option<RepoHost>, Error> {
        let Some(address) = &b.repo_host else { return Ok(None) };
        let transport = self.connector.connect_bare(NAME, address).await?;
        Ok(Some(RepoHost { transport, address: address.clone() }))
    }
}

impl RepoHost {
    /// The SSH trust between each of `handles` (the server's OS user) and the repository
    /// host's user, both ways, and the repository's directories: idempotent.
    pub(crate) async fn ensure_trust(&self, b: &BackupSpec, stanza: &str, cluster: &Cluster, handles: &[&NodeHandle]) -> Result<(), Error> {
        let t = &*self.transport;
        let user = b.repo_user();
        let conf = pgbr::repo_host_config_path(stanza);
        let repo_dir = b.repo_dir();
        let prep = pgbr::ssh_prepare_script(user, &self.address, Some((&repo_dir, &conf)));
        let (repo_key, repo_host_key) = keys_of(NAME, &root_script(t, NAME, "set up pgBackRest's SSH key", prep).await?)?;
        let (mut authorized, mut known) = (Vec::new(), Vec::new());
        for h in handles {
            let address = address_of(cluster, h)?;
            let l = &h.layout;
            let out =
                root_script(&*h.transport, &h.name, "set up pgBackRest's SSH key", pgbr::ssh_prepare_script(&l.os_user, &address, None))
                    .await?;
            let (key, host_key) = keys_of(&h.name, &out)?;
            authorized.push(pgbr::authorized_key_line(b, &key));
            known.push(host_key);
            let trust =
                pgbr::ssh_trust_script(&l.os_user, &[pgbr::authorized_key_line(b, &repo_key)], std::slice::from_ref(&repo_host_key));
            root_script(&*h.transport, &h.name, "trust the repository host over SSH", trust).await?;
        }
        root_script(t, NAME, "trust the nodes over SSH", pgbr::ssh_trust_script(user, &authorized, &known)).await?;
        Ok(())
    }

    /// The repository host's configuration of `stanza` (the cluster's nodes as `pgN`),
    /// written 0600 for its user; its pgBackRest checked against the major.
    pub(crate) async fn write_config(&self, b: &BackupSpec, cluster: &Cluster, handles: &[&NodeHandle]) -> Result<(), Error> {
        let major = cluster.major.ok_or_else(|| Error::Discovery("the PostgreSQL major is not known".into()))?;
        let mut pgs = Vec::new();
        let addresses = handles.iter().map(|h| address_of(cluster, h)).collect::<Result<Vec<_>, _>>()?;
        for (h, address) in handles.iter().zip(&addresses) {
            let n = cluster.node(&h.name).ok_or_else(|| Error::node(&h.name, "no such node"))?;
            let l = &h.layout;
            pgs.push(RepoHostPg {
                host: address,
                os_user: &l.os_user,
                config_path: pgbr::config_path(&l.pgrepl_dir, &cluster.name),
                node: PgbackrestNode { data_dir: &l.data_dir, socket_dir: &l.socket_dir, port: n.port, user: &l.superuser },
            });
        }
        // The version, as on the nodes (the repository host runs the backups).
        if let Some(h) = handles.first() {
            let mut layout = h.layout.clone();
            layout.os_user = b.repo_user().into();
            let probe = NodeHandle { name: NAME.into(), transport: self.transport.clone(), layout, install_script: None };
            check_version(b, major, &probe).await?;
        }
        let text = pgbr::repo_host_config(b, &cluster.name, &pgs);
        let path = format!("{}/pgbackrest.conf", pgbr::repo_host_config_path(&cluster.name));
        self.transport
            .write_file(&path, text.as_bytes(), 0o600, Some(b.repo_user()))
            .await
            .map_err(|e| tr(NAME, "write pgBackRest's configuration on the repository host", e))
    }

    /// A pgBackRest command of `stanza` on the repository host, as its user.
    pub(crate) fn command(b: &BackupSpec, stanza: &str, tail: &[&str]) -> CommandLine {
        let mut args = vec![format!("--config-path={}", pgbr::repo_host_config_path(stanza)), format!("--stanza={stanza}")];
        args.extend(tail.iter().map(|s| s.to_string()));
        CommandLine { program: pgbr::program(b), args, env: Vec::new(), user: b.repo_user().into() }
    }

    /// Runs `line` there (bounded by `timeout`); a failure is named with the tool's output.
    pub(crate) async fn run(&self, line: &CommandLine, timeout: Duration, action: &str) -> Result<String, Error> {
        let out = self.transport.exec(&Command::from_line(line).timeout(timeout)).await.map_err(|e| tr(NAME, action, e))?;
        if out.success() {
            return Ok(out.stdout);
        }
        let all = format!("{}\n{}", out.stdout, out.stderr);
        Err(Error::Backup {
            node: NAME.into(),
            action: action.into(),
            cause: crate::tool_failure::classify_failure(out.status, &all),
            detail: out.tail(),
        })
    }

    /// Everything the cluster's archiving and backups need there: the trust, the
    /// configuration, the stanza.
    pub(crate) async fn prepare(&self, b: &BackupSpec, cluster: &Cluster, handles: &[&NodeHandle]) -> Result<(), Error> {
        self.ensure_trust(b, &cluster.name, cluster, handles).await?;
        self.write_config(b, cluster, handles).await?;
        self.run(&Self::command(b, &cluster.name, &["stanza-create"]), Duration::from_secs(600), "create pgBackRest's stanza").await?;
        Ok(())
    }
}

impl Deployment {
    /// A full backup taken by the repository host (pgBackRest runs backups where the
    /// repository is); `standby`: from a standby (`--backup-standby`: pgBackRest copies
    /// the files from a standby it finds, the primary still starting and stopping the
    /// backup). The configuration and the stanza are made first (idempotent).
    pub(super) async fn repo_host_backup(
        &self,
        b: &BackupSpec,
        cluster: &Cluster,
        h: &NodeHandle,
        standby: bool,
    ) -> Result<crate::backup::BackupInfo, Error> {
        let repo = self.repo_host(b).await?.ok_or_else(|| Error::Discovery("no repository host".into()))?;
        let (_, handles) = self.connect(false).await?;
        let all: Vec<&NodeHandle> = handles.iter().collect();
        repo.write_config(b, cluster, &all).await?;
        repo.run(&RepoHost::command(b, &cluster.name, &["stanza-create"]), Duration::from_secs(600), "create pgBackRest's stanza").await?;
        let before: Vec<String> = self.list_on(b, &cluster.name, h).await?.into_iter().map(|x| x.id).collect();
        let mut tail = vec!["--type=full"];
        if standby {
            tail.push("--backup-standby");
        }
        tail.push("backup");
        repo.run(&RepoHost::command(b, &cluster.name, &tail), crate::deploy::CLONE_TIMEOUT, "take a base backup").await?;
        let after = self.list_on(b, &cluster.name, h).await?;
        after
            .into_iter()
            .rev()
            .find(|x| !before.contains(&x.id))
            .ok_or_else(|| Error::node(NAME, "the backup tool succeeded but no new backup is listed"))
    }
}
