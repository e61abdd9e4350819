//! Pure accounting after the fact: the loss of a failover, whether a node's WAL fits the
//! primary's history, what status marks.

use super::*;

// =======================================================================================
// Decisions (pure)

/// The loss of a failover from what is known: the old primary's end of WAL (exact, read
/// from its data directory), the position pgrepl recorded, the furthest position a standby
/// received (both lower bounds); the furthest wins.
pub fn account_loss(
    old_wal_end: Option<Lsn>,
    recorded: Option<Lsn>,
    standby_max: Option<Lsn>,
    new_start: Option<Lsn>,
    sync_held: bool,
) -> LossReport {
    let sources = [(LsnSource::OldPrimaryWal, old_wal_end), (LsnSource::Recorded, recorded), (LsnSource::StandbyReceived, standby_max)];
    let mut best: Option<(LsnSource, Lsn)> = None;
    for (s, l) in sources {
        if let Some(l) = l {
            if best.is_none_or(|(_, b)| l > b) {
                best = Some((s, l));
            }
        }
    }
    let exact = matches!(best, Some((LsnSource::OldPrimaryWal, _)));
    let lost = match (best, new_start) {
        (Some((_, l)), Some(s)) => Some(l.bytes_after(s)),
        _ => None,
    };
    let acknowledged = if sync_held { Some(0) } else { lost };
    let from = match best.map(|b| b.0) {
        Some(LsnSource::OldPrimaryWal) => "read from its own WAL",
        Some(LsnSource::Recorded) => "the last position pgrepl recorded; a lower bound",
        Some(LsnSource::StandbyReceived) => "the furthest position a standby received; a lower bound",
        None => "unknown",
    };
    let explanation = match (best, new_start, lost) {
        (Some((_, l)), Some(s), Some(b)) => {
            let ack = if sync_held {
                "no acknowledged commit lost (synchronous replication held)".to_string()
            } else if b == 0 {
                "no WAL lost".to_string()
            } else {
                format!("commits acknowledged in those {b} bytes are lost (asynchronous replication)")
            };
            format!(
                "the old primary's WAL ended at {l} ({from}); the new timeline starts at {s}: {b} bytes only the old primary had; {ack}"
            )
        }
        _ => format!(
            "the old primary's end of WAL is unknown{}",
            if sync_held { "; no acknowledged commit lost (synchronous replication held)" } else { "" }
        ),
    };
    LossReport {
        last_primary_lsn: best.map(|b| b.1),
        source: best.map(|b| b.0),
        exact,
        new_timeline_start: new_start,
        wal_lost_bytes: lost,
        sync_held,
        acknowledged_lost_bytes: acknowledged,
        explanation,
    }
}

/// Whether a node on timeline `node_tli`, whose WAL ends at `node_end`, can follow a
/// primary on `primary_tli` whose history file lists `history`.
pub fn divergence(node_tli: u32, node_end: Lsn, primary_tli: u32, history: &[HistoryEntry]) -> Divergence {
    if node_tli == primary_tli {
        return Divergence::Follows;
    }
    if node_tli > primary_tli {
        return Divergence::ForeignTimeline;
    }
    match history.iter().find(|h| h.parent == node_tli) {
        None => Divergence::ForeignTimeline,
        Some(h) if node_end <= h.switchpoint => Divergence::Follows,
        Some(h) => Divergence::Diverged { bytes: node_end.bytes_after(h.switchpoint) },
    }
}

/// What status should mark: fenced nodes (from the recorded topology), nodes that accept
/// writes without being the primary (split brain), standbys on an older timeline than the
/// primary that do not stream (they cannot follow: `pgrepl rejoin`).
pub fn mark_nodes(status: &StatusReport, topology: &Topology) -> Vec<NodeMark> {
    let primary_name =
        topology.primary.clone().or_else(|| status.nodes.iter().find(|n| n.spec_role == Role::Primary).map(|n| n.name.clone()));
    let primary_tl = status.nodes.iter().find(|n| Some(&n.name) == primary_name.as_ref()).and_then(|n| n.timeline).or(topology.timeline);
    let mut out = Vec::new();
    for n in &status.nodes {
        let fenced = topology.fenced.contains(&n.name);
        let writable = n.state == NodeState::Running && n.role.as_deref() == Some("primary");
        let is_primary = Some(&n.name) == primary_name.as_ref();
        let old_timeline = n.role.as_deref() == Some("standby") && matches!((n.timeline, primary_tl), (Some(t), Some(p)) if t < p);
        let diverged = (writable && !is_primary) || (old_timeline && n.streaming != Some(true));
        let mut notes = Vec::new();
        if fenced {
            notes.push(format!("fenced by a failover: `pgrepl rejoin {}` brings it back as a standby", n.name));
        }
        if writable && !is_primary {
            notes.push(format!(
                "accepts writes but is not the primary ({}): split brain, `pgrepl rejoin {}` demotes it",
                primary_name.clone().unwrap_or_default(),
                n.name
            ));
        }
        if old_timeline {
            notes.push(format!(
                "on timeline {} while the primary is on {}{}",
                n.timeline.unwrap_or_default(),
                primary_tl.unwrap_or_default(),
                if n.streaming == Some(true) { "" } else { ": it does not follow, `pgrepl rejoin` it" }
            ));
        }
        if fenced || diverged || old_timeline {
            out.push(NodeMark { node: n.name.clone(), fenced, diverged, old_timeline, note: notes.join("; ") });
        }
    }
    out
}
