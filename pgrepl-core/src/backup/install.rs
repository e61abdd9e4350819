//! `up`'s steps for the backup tool: installed on every host where it is missing (or
//! said what to install on this machine), pgBackRest's version checked and its node
//! configuration written, its stanza created once the primary runs.

use std::time::{Duration, Instant};

use super::pgbackrest;
use crate::deploy::{Deployment, Run, tr};
use crate::error::Error;
use crate::provider::NodeHandle;
use crate::render::backup_tool as tool;
use crate::render::pgbackrest::PgbackrestNode;
use crate::spec::BackupTool;
use crate::transport::{Command, TransportExt};

/// `up`'s step on every host, before anything of the cluster is created: the backup tool
/// installed where it is missing (Barman's cloud scripts from PyPI into a venv at
/// `bin_dir`; pgBackRest from the distribution's package when `bin_dir` is its place),
/// nothing done where it is present; on the local provider nothing is installed on this
/// machine: a missing tool is a named error saying what to install. For pgBackRest its
/// version is checked against the major (refused) and the node's configuration written.
pub(crate) async fn ensure_tool(
    run: &Run<'_>,
    h: &NodeHandle,
    progress: &dyn crate::deploy::Progress,
) -> Result<Option<crate::deploy::Action>, Error> {
    let cluster = run.cluster;
    let Some(b) = &cluster.backup else { return Ok(None) };
    let missing = |detail: String| Error::Backup {
        node: h.name.clone(),
        action: format!("find {}", if b.tool == BackupTool::Pgbackrest { "pgBackRest" } else { "Barman's cloud scripts" }),
        cause: crate::tool_failure::ToolFailure::NotInstalled,
        detail,
    };
    if b.tool == BackupTool::Pgbackrest {
        let major = cluster.major.ok_or_else(|| Error::Discovery("the PostgreSQL major is not known".into()))?;
        let mut action = None;
        if let Err(e) = pgbackrest::check_version(b, major, h).await {
            let Error::Backup { cause: crate::tool_failure::ToolFailure::NotInstalled, .. } = e else { return Err(e) };
            // On this machine pgrepl installs no package: it says what to install.
            let script = tool::pgbackrest_install_script(b).filter(|_| !run.local_ports);
            let Some(script) = script else { return Err(missing(tool::install_hint(b))) };
            action = Some(install(h, progress, "install pgbackrest", &script).await?);
            pgbackrest::check_version(b, major, h).await?;
        }
        let n = cluster.node(&h.name).ok_or_else(|| Error::node(&h.name, "no such node"))?;
        let l = &h.layout;
        run.prepare_dirs(h).await?;
        let node = PgbackrestNode { data_dir: &l.data_dir, socket_dir: &l.socket_dir, port: n.port, user: &l.superuser };
        pgbackrest::write_config(b, &cluster.name, &l.pgrepl_dir, &node, h).await?;
        return Ok(action);
    }
    if b.tool == BackupTool::Directory {
        super::directory::prepare(b, &cluster.name, h).await?;
        return Ok(None);
    }
    let Some(script) = tool::install_script(b) else { return Ok(None) };
    let probe = tool::program(b, "barman-cloud-wal-archive");
    let t = &*h.transport;
    if t.exists(&probe, None).await.map_err(|e| tr(&h.name, "look for the backup tool", e))? {
        check_barman(b, h).await?;
        return Ok(None);
    }
    if run.local_ports {
        return Err(missing(format!("{probe} is missing on this machine: {}", tool::install_hint(b))));
    }
    let action = install(h, progress, "install barman-cloud", &script).await?;
    if !t.exists(&probe, None).await.map_err(|e| tr(&h.name, "look for the backup tool", e))? {
        return Err(missing(format!("{probe} is still missing after the installation")));
    }
    check_barman(b, h).await?;
    Ok(Some(action))
}

/// Barman's barman-cloud-wal-restore on `h`'s host takes the options pgrepl's
/// `restore_command` passes (an older Barman at `backup.bin_dir` is refused by name).
async fn check_barman(b: &crate::spec::BackupSpec, h: &NodeHandle) -> Result<(), Error> {
    let program = tool::program(b, "barman-cloud-wal-restore");
    let out = h
        .transport
        .exec(&Command::new(&program).args(["--help"]).timeout(Duration::from_secs(60)))
        .await
        .map_err(|e| tr(&h.name, "run barman-cloud-wal-restore --help", e))?;
    if !out.success() {
        return Err(Error::Backup {
            node: h.name.clone(),
            action: format!("run {program} --help"),
            cause: crate::tool_failure::ToolFailure::NotInstalled,
            detail: out.tail(),
        });
    }
    super::decide::check_barman_restore(&out.stdout, &program)
        .map_err(|reason| crate::error::Refusal { node: h.name.clone(), reason }.into())
}

/// Runs an installation `script` as root on `h`'s host (bounded: 20 minutes).
async fn install(h: &NodeHandle, progress: &dyn crate::deploy::Progress, what: &str, script: &str) -> Result<crate::deploy::Action, Error> {
    let t0 = Instant::now();
    progress.started(&h.name, what);
    let r = h
        .transport
        .run(&Command::new("sh").args(["-c", script]).user("root").timeout(Duration::from_secs(1200)))
        .await
        .map_err(|e| tr(&h.name, what, e));
    progress.finished(&h.name, what, if r.is_ok() { "installed" } else { "failed" });
    r?;
    Ok(crate::deploy::Action { node: h.name.clone(), what: what.into(), seconds: t0.elapsed().as_secs_f64() })
}

/// `up`'s step once the primary runs: pgBackRest's stanza created (so archiving starts
/// succeeding). A failure (a missing bucket, say) does not fail `up`: the WAL waits in
/// `pg_wal`, and `pgrepl backup` creates the stanza or names the cause.
pub(crate) async fn after_up(d: &Deployment, cluster: &crate::cluster::Cluster, handles: &[NodeHandle]) -> Option<crate::deploy::Action> {
    let b = cluster.backup.as_ref().filter(|b| b.tool == BackupTool::Pgbackrest)?;
    let h = handles.iter().find(|h| h.name == cluster.primary().name)?;
    let t0 = Instant::now();
    if b.repo_host.is_some() {
        // The trust, the repository host's configuration and the stanza, all there.
        let all: Vec<&NodeHandle> = handles.iter().collect();
        let r =
            async { d.repo_host(b).await?.ok_or_else(|| Error::Discovery("no repository host".into()))?.prepare(b, cluster, &all).await };
        let what = match r.await {
            Ok(()) => format!("pgBackRest stanza ready (repository host {})", b.repo_host.as_deref().unwrap_or_default()),
            Err(e) => format!("pgBackRest stanza not created yet: {}", crate::error::chain(&e)),
        };
        return Some(crate::deploy::Action { node: h.name.clone(), what, seconds: t0.elapsed().as_secs_f64() });
    }
    let what = match d.stanza_create(b, h, &h.layout.pgrepl_dir).await {
        Ok(()) => "pgBackRest stanza ready".to_string(),
        Err(e) => format!("pgBackRest stanza not created yet: {}", crate::error::chain(&e)),
    };
    Some(crate::deploy::Action { node: h.name.clone(), what, seconds: t0.elapsed().as_secs_f64() })
}
