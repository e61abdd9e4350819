//! `pgrepl restart` and `pgrepl upgrade --minor`: parse, call the library, print.

use pgrepl_core::deploy::Deployment;
use pgrepl_core::plan::{RestartMode, RestartRequest};

use crate::args::{Common, OutputFormat};
use crate::output::Spinners;
use crate::{ha, open, print_plan, print_report};

/// The restart mode of the flags.
pub fn mode(rolling: bool, switch_back: bool) -> RestartMode {
    if rolling { RestartMode::Rolling { switch_back } } else { RestartMode::InPlace }
}

/// Refuses while agents run the cluster: a restart they did not expect looks to them like
/// a failure (and a switchover is theirs to make). Paused, pgrepl acts itself, under the
/// operation lock, and hands the leader key over afterwards.
async fn refuse_under_agents(d: &Deployment, what: &str) -> anyhow::Result<()> {
    if ha::agents_in_charge(d).await? {
        return Err(pgrepl_core::Error::Refused(pgrepl_core::error::Refusal {
            node: d.cluster().primary().name.clone(),
            reason: format!(
                "the agents run cluster {}: `pgrepl pause`, then `pgrepl {what}`, then `pgrepl resume` (a restart they did not plan would look like a failure to them)",
                d.cluster().name
            ),
        })
        .into());
    }
    Ok(())
}

/// Refuses a rolling restart of an `[ha]` cluster: its switchovers would need the leader
/// key handed over between them (the new primary's agent fences a writable node while
/// another holds the key, even paused), which the restart's plan does not do yet.
fn refuse_rolling_with_ha(d: &Deployment, mode: RestartMode, what: &str) -> anyhow::Result<()> {
    if d.cluster().ha.is_some() && matches!(mode, RestartMode::Rolling { .. }) {
        let p = d.cluster().primary().name.clone();
        return Err(pgrepl_core::Error::Refused(pgrepl_core::error::Refusal {
            node: p.clone(),
            reason: format!(
                "a rolling {what} of an [ha] cluster is not supported yet (its switchovers would need the leader key handed over between them, or the new primary's agent fences it). With the agents paused, restart in place (`pgrepl {what}` without --rolling{}), or: restart the standbys by name, `pgrepl resume`, `pgrepl switchover --to` a standby (through the agents), `pgrepl pause`, restart {p} by name, `pgrepl resume`",
                if what == "restart" { "" } else { ", --in-place" }
            ),
        })
        .into());
    }
    Ok(())
}

/// `pgrepl restart [--rolling] [--pending] [--dry-run] [NODE...]`.
pub async fn restart(common: &Common, mode: RestartMode, pending_only: bool, dry_run: bool, nodes: Vec<String>) -> anyhow::Result<u8> {
    let (d, _) = open(common, false).await?;
    let req = RestartRequest { mode, nodes, pending_only, binaries: Vec::new() };
    if dry_run {
        return print_plan(common, &d.plan_restart(&req).await?);
    }
    refuse_under_agents(&d, "restart").await?;
    refuse_rolling_with_ha(&d, mode, "restart")?;
    let spinners = Spinners::new(common.output == OutputFormat::Text);
    let report = d.restart(&req, &spinners).await;
    ha::hand_over_leader(&d).await?;
    spinners.clear();
    print_report(common, &report?)?;
    Ok(0)
}

/// `pgrepl upgrade --minor [--in-place] [--no-switch-back] [--dry-run]`.
pub async fn upgrade_minor(common: &Common, mode: RestartMode, dry_run: bool) -> anyhow::Result<u8> {
    let (d, _) = open(common, false).await?;
    if dry_run {
        return print_plan(common, &d.plan_upgrade_minor(mode).await?);
    }
    refuse_under_agents(&d, "upgrade --minor").await?;
    refuse_rolling_with_ha(&d, mode, "upgrade --minor")?;
    let spinners = Spinners::new(common.output == OutputFormat::Text);
    let report = d.upgrade_minor(mode, &spinners).await;
    ha::hand_over_leader(&d).await?;
    spinners.clear();
    print_report(common, &report?)?;
    Ok(0)
}
