//! `pgrepl upgrade --to N` (a major upgrade, pgrepl-core's `upgrade`) and `--finish`
//! (`--minor` is a rolling restart: `day2`). After a major upgrade the cluster file says the new major (the
//! file as it was is kept beside it).

use std::path::{Path, PathBuf};

use anyhow::Context;
use pgrepl_core::PgMajor;
use pgrepl_core::discovery::{DiscoveryOptions, discover};
use pgrepl_core::spec::{ClusterSpec, ProviderSpec, VersionChoice};
use pgrepl_core::upgrade::UpgradeOptions;

use crate::args::{Common, OutputFormat};
use crate::output::Spinners;
use crate::{UsageError, open, read_spec};

/// What `pgrepl upgrade` was asked.
pub(crate) struct UpgradeArgs {
    pub(crate) to: Option<PgMajor>,
    pub(crate) finish: bool,
    pub(crate) link: bool,
    pub(crate) new_pg_bin: Option<PathBuf>,
    pub(crate) new_pg_client_bin: Option<PathBuf>,
    pub(crate) dry_run: bool,
    pub(crate) yes: bool,
}

pub(crate) async fn upgrade(common: &Common, a: UpgradeArgs) -> anyhow::Result<u8> {
    if a.finish {
        return finish(common, a.dry_run, a.yes).await;
    }
    let Some(to) = a.to else {
        return Err(UsageError("upgrade: say which: --to MAJOR, --minor or --finish".into()).into());
    };
    let (d, spec_path) = open(common, false).await?;
    let spec = read_spec(&spec_path)?;
    let local = matches!(d.cluster().provider(), ProviderSpec::Local(_));
    let mut opts = UpgradeOptions::new(to).link(a.link);
    if local {
        let b = discover(&DiscoveryOptions { pg_bin: a.new_pg_bin.clone(), pg_client_bin: a.new_pg_client_bin.clone(), major: Some(to) })
            .with_context(|| format!("the binaries of PostgreSQL {to} (--new-pg-bin DIR)"))?;
        opts = opts.with_binaries(&b);
    } else if let Some(b) = &a.new_pg_bin {
        opts = opts.with_bin_dir(b.to_string_lossy());
        opts.client_bin_dir = a.new_pg_client_bin.as_ref().map(|c| c.to_string_lossy().into_owned());
    }
    let text = common.output == OutputFormat::Text;
    if a.dry_run {
        let spinners = Spinners::new(text);
        let plan = d.plan_upgrade(&spec, &opts, &spinners).await;
        spinners.clear();
        let plan = plan?;
        match common.output {
            OutputFormat::Text => print!("{plan}"),
            OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&plan)?),
        }
        return Ok(0);
    }
    if !a.yes && !confirm(&format!("Upgrade cluster {} to PostgreSQL {to} (its servers stop meanwhile)? [y/N] ", d.cluster().name))? {
        eprintln!("not upgraded");
        return Ok(3);
    }
    let spinners = Spinners::new(text);
    let report = d.upgrade(&spec, &opts, &spinners).await;
    spinners.clear();
    let mut report = report?;
    let mut saved = None;
    if report.primary_upgraded {
        saved = Some(rewrite_cluster_file(&spec_path, &spec, to, opts.bin_dir.as_deref(), opts.client_bin_dir.as_deref(), report.from)?);
    }
    let new_common = reopened(common, opts.bin_dir.as_deref(), opts.client_bin_dir.as_deref(), local);
    let d2 = open(&new_common, false).await.map(|(d, _)| d);
    // `[ha]`: the agents onto the new binaries, then resumed if the upgrade paused them.
    let mut agents_failed = None;
    let agents = match (&d2, d.cluster().ha.is_some() && report.primary_upgraded) {
        (Ok(d2), true) => {
            match crate::ha_upgrade::agents_after_upgrade(d2, &spec_path, &crate::agent_args(&new_common), report.agents_paused_here, text)
                .await
            {
                Ok(s) => Some(s),
                Err(e) => {
                    let s = format!("{e:#}");
                    agents_failed = Some(s.clone());
                    Some(s)
                }
            }
        }
        (Err(_), true) => {
            let s = "the deployment could not be opened on the new major: the agents are left paused (`pgrepl up`, then `pgrepl resume`)"
                .to_string();
            agents_failed = Some(s.clone());
            Some(s)
        }
        _ => None,
    };
    if agents.is_some() {
        // What the command did with them replaces what the library left to do.
        report.agents = agents;
    }
    let status = match &d2 {
        Ok(d2) => Some(d2.status().await),
        Err(e) => {
            eprintln!("warning: status after the upgrade could not be read: {e:#}");
            None
        }
    };
    match common.output {
        OutputFormat::Text => {
            print!("{report}");
            if let Some(s) = &saved {
                println!("cluster file {}: postgres = \"{to}\" (as it was before: {})", spec_path.display(), s.display());
            }
            if let Some(s) = &status {
                println!();
                print!("{s}");
            }
        }
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "upgrade": report,
                "cluster_file_before": saved.map(|s| s.display().to_string()),
                "status": status,
            }))?
        ),
    }
    Ok(if report.failed.is_some() || agents_failed.is_some() { 4 } else { 0 })
}

/// `upgrade --finish`: the kept old data directories removed (or listed, with --dry-run).
async fn finish(common: &Common, dry_run: bool, yes: bool) -> anyhow::Result<u8> {
    let (d, _) = open(common, false).await?;
    if !dry_run && !yes && !confirm(&format!("Remove the old data directories the upgrade of {} kept? [y/N] ", d.cluster().name))? {
        eprintln!("nothing removed");
        return Ok(3);
    }
    let removed = d.finish_upgrade(dry_run).await?;
    match common.output {
        OutputFormat::Text if removed.is_empty() => println!("no old data directory kept by an upgrade was found"),
        OutputFormat::Text => {
            for k in &removed {
                println!(
                    "{}: {} {} (PostgreSQL {})",
                    k.node,
                    if dry_run { "would remove" } else { "removed" },
                    k.path,
                    k.major.map(|m| m.to_string()).unwrap_or_else(|| "?".into())
                );
            }
        }
        OutputFormat::Json => println!("{}", serde_json::json!({ "dry_run": dry_run, "removed": removed })),
    }
    Ok(0)
}

/// The options that open the deployment again on the new binaries (status after the
/// upgrade, the agents' arguments).
fn reopened(common: &Common, bin: Option<&str>, client: Option<&str>, local: bool) -> Common {
    Common {
        file: common.file.clone(),
        pg_bin: if local { bin.map(PathBuf::from) } else { common.pg_bin.clone() },
        pg_client_bin: if local { client.map(PathBuf::from) } else { common.pg_client_bin.clone() },
        pg_version: None,
        work_dir: common.work_dir.clone(),
        output: common.output,
        lock_wait: common.lock_wait,
    }
}

fn confirm(prompt: &str) -> anyhow::Result<bool> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        return Err(UsageError("refusing to upgrade without confirmation: stdin is not a terminal (pass --yes)".into()).into());
    }
    eprint!("{prompt}");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}

/// The cluster file made to say the new major (and the new binaries where it names
/// binaries), the file as it was kept as `<file>.before-upgrade-<old>`; returns that path.
fn rewrite_cluster_file(
    path: &Path,
    spec: &ClusterSpec,
    to: PgMajor,
    bin: Option<&str>,
    client: Option<&str>,
    from: PgMajor,
) -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string(path).with_context(|| format!("could not read {}", path.display()))?;
    let new = with_major(
        &text,
        to,
        spec.pg_bin.is_some().then_some(bin).flatten(),
        spec.pg_client_bin.is_some().then_some(client.or(bin)).flatten(),
    );
    let check = ClusterSpec::from_toml(&new).map_err(pgrepl_core::Error::Spec).context("the rewritten cluster file does not parse")?;
    anyhow::ensure!(check.postgres == VersionChoice::Major(to), "the rewritten cluster file does not say postgres = \"{to}\"");
    let before = PathBuf::from(format!("{}.before-upgrade-{from}", path.display()));
    std::fs::write(&before, &text).with_context(|| format!("could not write {}", before.display()))?;
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    std::fs::write(&tmp, new).with_context(|| format!("could not write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("could not replace {}", path.display()))?;
    Ok(before)
}

/// `text` with its top-level `postgres` (and `pg_bin`, `pg_client_bin` when given) set;
/// `postgres` added after `name` when the file has none. Comments and everything else kept.
fn with_major(text: &str, to: PgMajor, bin: Option<&str>, client: Option<&str>) -> String {
    let key = |l: &str| l.split('=').next().map(|k| k.trim().to_string()).filter(|_| l.contains('='));
    let quote = |v: &str| format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""));
    let mut out = Vec::new();
    let mut top = true;
    let mut seen = false;
    for line in text.lines() {
        if line.trim_start().starts_with('[') {
            top = false;
        }
        let k = if top && !line.trim_start().starts_with('#') { key(line) } else { None };
        match k.as_deref() {
            Some("postgres") => {
                out.push(format!("postgres = \"{to}\""));
                seen = true;
            }
            Some("pg_bin") if bin.is_some() => out.push(format!("pg_bin = {}", quote(bin.unwrap_or_default()))),
            Some("pg_client_bin") if client.is_some() => out.push(format!("pg_client_bin = {}", quote(client.unwrap_or_default()))),
            _ => out.push(line.to_string()),
        }
    }
    if !seen {
        let at = out.iter().position(|l| key(l).as_deref() == Some("name")).map(|i| i + 1).unwrap_or(0);
        out.insert(at, format!("postgres = \"{to}\""));
    }
    let mut s = out.join("\n");
    if text.ends_with('\n') {
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_major_is_rewritten_and_nothing_else() {
        let t = "# my cluster\nname = \"c\"\npostgres = \"14\"   # old\npg_bin = \"/old/bin\"\n\n[settings]\npostgres = \"not me\"\n";
        assert_eq!(
            with_major(t, PgMajor::V16, Some("/new/bin"), None),
            "# my cluster\nname = \"c\"\npostgres = \"16\"\npg_bin = \"/new/bin\"\n\n[settings]\npostgres = \"not me\"\n"
        );
        assert_eq!(with_major("name = \"c\"\n[provider]\n", PgMajor::V18, None, None), "name = \"c\"\npostgres = \"18\"\n[provider]\n");
        assert_eq!(
            with_major("name = \"c\"\npg_bin = \"/o\"\n", PgMajor::V18, None, None),
            "name = \"c\"\npostgres = \"18\"\npg_bin = \"/o\"\n"
        );
    }
}
