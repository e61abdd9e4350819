//! `pgrepl restart` and `pgrepl upgrade --minor`: parse, call the library, print.
//!
//! `[ha]` clusters need nothing more here: the deployment is bound to the agents' store
//! ([`crate::ha::with_store_records`]), so the library holds the agents paused while it
//! restarts (under the operation lock), puts the flag back as it was, and moves the
//! leader key inside each switchover ([`pgrepl_core::store::operator`]).

use pgrepl_core::plan::{RestartMode, RestartRequest};

use crate::args::{Common, OutputFormat};
use crate::output::Spinners;
use crate::{open, print_plan, print_report};

/// The restart mode of the flags.
pub fn mode(rolling: bool, switch_back: bool) -> RestartMode {
    if rolling { RestartMode::Rolling { switch_back } } else { RestartMode::InPlace }
}

/// `pgrepl restart [--rolling] [--pending] [--dry-run] [NODE...]`.
pub async fn restart(common: &Common, mode: RestartMode, pending_only: bool, dry_run: bool, nodes: Vec<String>) -> anyhow::Result<u8> {
    let (d, _) = open(common, false).await?;
    let req = RestartRequest { mode, nodes, pending_only, binaries: Vec::new() };
    if dry_run {
        return print_plan(common, &d.plan_restart(&req).await?);
    }
    let spinners = Spinners::new(common.output == OutputFormat::Text);
    let report = d.restart(&req, &spinners).await;
    spinners.clear();
    print_report(common, &report?)?;
    Ok(0)
}

/// `pgrepl upgrade --minor [--in-place] [--no-switch-back] [--dry-run]`.
pub async fn upgrade_minor(common: &Common, mode: RestartMode, dry_run: bool) -> anyhow::Result<u8> {
    let (d, spec_path) = open(common, false).await?;
    if dry_run {
        return print_plan(common, &d.plan_upgrade_minor(mode).await?);
    }
    let spinners = Spinners::new(common.output == OutputFormat::Text);
    let report = d.upgrade_minor(mode, &spinners).await;
    spinners.clear();
    let mut report = report?;
    // `[ha]`: the agents onto the new binaries too (paused while they restart).
    if d.cluster().ha.is_some() {
        match crate::ha_upgrade::agents_after_upgrade(
            &d,
            &spec_path,
            &crate::agent_args(common),
            false,
            common.output == OutputFormat::Text,
        )
        .await
        {
            Ok(s) => report.warnings.push(format!("agents: {s}")),
            Err(e) => {
                print_report(common, &report)?;
                return Err(e.context("the nodes run the new binaries, but the agents could not be restarted on them"));
            }
        }
    }
    print_report(common, &report)?;
    Ok(0)
}
