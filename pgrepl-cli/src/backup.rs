//! `pgrepl backup`, `backups`, `restore`, `verify --backup`: parse, call pgrepl-core, print.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use pgrepl_core::backup::{BackupInfo, RestoreOptions, Target, format_time, parse_time};
use pgrepl_core::deploy::Deployment;
use pgrepl_core::open::OpenOptions;
use pgrepl_core::spec::{ClusterSpec, ProviderSpec};

use crate::args::{Common, OutputFormat};
use crate::{UsageError, backends, open, read_spec};

/// The target of `restore`, from its options.
pub fn target(to_time: Option<&str>, to_lsn: Option<&str>) -> anyhow::Result<Target> {
    Ok(match (to_time, to_lsn) {
        (Some(t), _) => Target::Time(parse_time(t).map_err(|e| UsageError(format!("--to-time: {e}")))?),
        (_, Some(l)) => {
            Target::Lsn(l.parse().map_err(|_| UsageError(format!("--to-lsn: \"{l}\" is not a WAL position such as 0/5000000")))?)
        }
        _ => Target::Latest,
    })
}

fn backup_line(b: &BackupInfo) -> String {
    format!(
        "{:<16} {:<6} {:>10} MiB  tl {:<3} {} .. {}  {} .. {}",
        b.id,
        b.status,
        b.size_bytes / (1024 * 1024),
        b.timeline,
        b.begin_lsn,
        b.end_lsn,
        format_time(b.begin_time),
        format_time(b.end_time)
    )
}

/// `pgrepl backup`.
pub async fn backup(common: &Common, from: Option<&str>, apply_retention: bool) -> anyhow::Result<u8> {
    let (d, _) = open(common, false).await?;
    let taken = d.take_backup(from).await?;
    let removed = if apply_retention { d.apply_retention().await? } else { Vec::new() };
    match common.output {
        OutputFormat::Text => {
            println!("backup {} taken", taken.id);
            println!("{}", backup_line(&taken));
            if !removed.is_empty() {
                println!("retention removed: {}", removed.join(", "));
            }
        }
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&serde_json::json!({"backup": taken, "removed": removed}))?),
    }
    Ok(0)
}

/// `pgrepl backups`.
pub async fn backups(common: &Common) -> anyhow::Result<u8> {
    let (d, _) = open(common, false).await?;
    let list = d.backups().await?;
    match common.output {
        OutputFormat::Text => {
            println!("{:<16} {:<6} {:>14}  {:<6} {:<21}  BEGIN .. END TIME", "ID", "STATUS", "SIZE", "TL", "BEGIN .. END LSN");
            for b in &list {
                println!("{}", backup_line(b));
            }
            if list.is_empty() {
                println!("(no backups)");
            }
        }
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&list)?),
    }
    Ok(0)
}

/// `pgrepl verify --backup`.
pub async fn verify_backup(common: &Common, scratch: Option<&Path>, port: Option<u16>) -> anyhow::Result<u8> {
    let (d, _) = open(common, false).await?;
    let scratch = scratch.map(|s| s.to_string_lossy().into_owned());
    let port = match port {
        Some(p) => p,
        None => free_port().await?,
    };
    let r = d.verify_backup(scratch.as_deref(), port).await?;
    match common.output {
        OutputFormat::Text => {
            println!(
                "backup {}: {} ({:.1} s){}",
                r.backup.id,
                if r.ok { "restored, consistent, started" } else { "FAILED" },
                r.seconds,
                r.problem.as_deref().map(|p| format!("\n{p}")).unwrap_or_default()
            );
        }
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&r)?),
    }
    Ok(if r.ok { 0 } else { 1 })
}

async fn free_port() -> anyhow::Result<u16> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("find a free port")?;
    Ok(l.local_addr()?.port())
}

/// A run of `n` free ports on 127.0.0.1 at or above 20000.
async fn free_run(n: u16) -> anyhow::Result<u16> {
    let mut base = 20000 + (std::process::id() % 2000) as u16 * 10;
    for _ in 0..500 {
        let mut ok = true;
        for p in base..base + n {
            if pgrepl_core::local::port_in_use("127.0.0.1", p).await {
                ok = false;
                break;
            }
        }
        if ok {
            return Ok(base);
        }
        base = base.wrapping_add(n).max(20000);
    }
    anyhow::bail!("no run of {n} free ports found")
}

/// The new cluster's spec: read from `into` when it exists, else derived from `source`.
async fn new_spec(source: &ClusterSpec, into: &Path, name: Option<&str>, base_port: Option<u16>) -> anyhow::Result<(ClusterSpec, bool)> {
    if into.exists() {
        let s = read_spec(into)?;
        if s.name == source.name {
            return Err(UsageError(format!(
                "--into {}: it names cluster {} too; a restore goes into a new cluster",
                into.display(),
                s.name
            ))
            .into());
        }
        return Ok((s, false));
    }
    let ProviderSpec::Local(local) = &source.provider else {
        return Err(UsageError(format!(
            "--into {}: does not exist; for a cluster on other hosts write the new cluster's file first (its own name and hosts)",
            into.display()
        ))
        .into());
    };
    let mut s = source.clone();
    s.name = name.map(str::to_string).unwrap_or_else(|| format!("{}-restored", source.name));
    let mut l = local.clone();
    l.work_dir = local.work_dir.as_ref().and_then(|w| w.parent()).map(|p| p.join(&s.name));
    l.base_port = Some(match base_port {
        Some(p) => p,
        None => free_run(s.nodes.len() as u16).await?,
    });
    for n in &mut s.nodes {
        n.port = None;
    }
    s.provider = ProviderSpec::Local(l);
    if s.ha.is_some() {
        s.ha = None;
    }
    Ok((s, true))
}

/// `pgrepl restore`.
#[allow(clippy::too_many_arguments)]
pub async fn restore(
    common: &Common,
    target: Target,
    into: &Path,
    name: Option<&str>,
    base_port: Option<u16>,
    backup_id: Option<String>,
    no_standbys: bool,
) -> anyhow::Result<u8> {
    let (src, src_path) = open(common, false).await?;
    let source_spec = read_spec(&src_path)?;
    let (spec, written) = new_spec(&source_spec, into, name, base_port).await?;
    spec.validate()?;
    let opts = OpenOptions {
        major: common.pg_version,
        pg_bin: common.pg_bin.clone(),
        pg_client_bin: common.pg_client_bin.clone(),
        work_dir: None,
        state_dir: None,
    };
    let backends = backends();
    let new = Deployment::open(&spec, &opts, &backends.iter().map(|b| &**b).collect::<Vec<_>>()).await?;
    let report = src.restore_into(target, &new, &RestoreOptions { backup_id }).await?;
    // Written once the new cluster exists: a refused restore leaves no file behind.
    if written {
        std::fs::write(into, format!("# Restored from cluster {} by `pgrepl restore` ({target}).\n{}", source_spec.name, spec.to_toml()))
            .with_context(|| format!("could not write {}", into.display()))?;
    }
    let up = if no_standbys { None } else { Some(new.up(&pgrepl_core::deploy::NoProgress).await?) };
    let verify = if no_standbys { None } else { Some(new.verify(Duration::from_secs(60)).await?) };
    match common.output {
        OutputFormat::Text => {
            println!(
                "restored {} into cluster {} ({}): backup {} to {}, timeline {} (download {:.1} s, recovery {:.1} s)",
                source_spec.name,
                report.cluster,
                into.display(),
                report.backup.id,
                report.target,
                report.timeline.map(|t| t.to_string()).unwrap_or_else(|| "?".into()),
                report.download_seconds,
                report.recovery_seconds
            );
            if let Some(u) = &up {
                print!("{u}");
            }
            if let Some(v) = &verify {
                print!("{v}");
            }
        }
        OutputFormat::Json => {
            println!("{}", serde_json::to_string_pretty(&serde_json::json!({"restore": report, "up": up, "verify": verify}))?)
        }
    }
    Ok(if verify.as_ref().is_none_or(|v| v.ok()) { 0 } else { 1 })
}

/// `pgrepl restore --in-place --yes`.
pub async fn restore_in_place(common: &Common, target: Target, backup_id: Option<String>, no_standbys: bool) -> anyhow::Result<u8> {
    let (d, path) = open(common, false).await?;
    let (report, aside) = d.restore_in_place(target, &RestoreOptions { backup_id }).await?;
    let up = if no_standbys { None } else { Some(d.up(&pgrepl_core::deploy::NoProgress).await?) };
    let verify = if no_standbys { None } else { Some(d.verify(Duration::from_secs(60)).await?) };
    match common.output {
        OutputFormat::Text => {
            println!(
                "restored cluster {} ({}) in place: backup {} to {}, timeline {} (download {:.1} s, recovery {:.1} s); \
                 the former data directory of {} is kept in {aside}",
                report.cluster,
                path.display(),
                report.backup.id,
                report.target,
                report.timeline.map(|t| t.to_string()).unwrap_or_else(|| "?".into()),
                report.download_seconds,
                report.recovery_seconds,
                report.primary,
            );
            if let Some(u) = &up {
                print!("{u}");
            }
            if let Some(v) = &verify {
                print!("{v}");
            }
        }
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"restore": report, "kept": aside, "up": up, "verify": verify}))?
        ),
    }
    Ok(if verify.as_ref().is_none_or(|v| v.ok()) { 0 } else { 1 })
}
