//! The restart planner: which nodes restart, in which order, and how the primary does
//! (never, in place, or through a switchover), from one observation of the nodes'
//! settings ([`crate::observe::RestartSettings`]).
//!
//! The order follows PostgreSQL's rule for the [`STANDBY_LIMITS`]: a hot standby must run
//! with at least the values its primary wrote to the WAL (before 14 it stops otherwise,
//! from 14 its replay pauses). So a standby restarts before the primary when its new
//! values are at least the primary's running ones (a raise), after it when they are not
//! (a lower: the primary first); a change that raises one limit and lowers another has no
//! safe order and is refused. `up` ([`RestartMode::Up`]) restarts only the standbys that
//! may restart now, never the primary; the rest is left [`PendingRestart`].
//!
//! A rolling restart of the primary is a switchover to a standby restarted already (the
//! old primary stops and starts again as a standby, so it restarts on the way), and by
//! default a switchover back, so the primary role ends where it was: applications,
//! monitoring and the spec name it, and a restart is not meant to move it. Lowering a
//! limit is the exception: no standby can run with less than the primary's value before
//! the primary does, so no switchover can spare the primary its restart; it is restarted
//! in place first (one restart's write pause) and the plan says so.
//!
//! Pure: no I/O, no clock.

use std::fmt;

use serde::Serialize;

use super::{Action, Operation, Plan, Refusal, Step};
use crate::cluster::{Cluster, Node};
use crate::observe::{ObservedCluster, STANDBY_LIMITS};

/// How the primary is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartMode {
    /// `up`: only standbys whose new values are safe against the primary's running ones
    /// restart; the primary never does. What is left is reported pending.
    Up,
    /// Standbys one at a time, the primary in place.
    InPlace,
    /// Standbys one at a time, the primary through a switchover to a restarted standby,
    /// and back when `switch_back`.
    Rolling {
        /// Switch back to the old primary at the end (the default).
        switch_back: bool,
    },
}

/// A minor upgrade's check of one node: its new binaries' major against its data
/// directory's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BinaryCheck {
    /// The node.
    pub node: String,
    /// Where its binaries are.
    pub path: String,
    /// Their major (`postgres --version`), `None` when it did not run.
    pub binaries: Option<String>,
    /// The data directory's (`PG_VERSION`), `None` when unreadable.
    pub data: Option<String>,
}

/// What `pgrepl restart` (or `up`, or a minor upgrade) asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestartRequest {
    /// How the primary is treated.
    pub mode: RestartMode,
    /// The nodes to restart; empty: every node. With [`RestartMode::Up`]: the nodes whose
    /// files `up` changed (what a server before 9.5 cannot tell about itself).
    pub nodes: Vec<String>,
    /// Only the nodes whose settings wait for a restart.
    pub pending_only: bool,
    /// A minor upgrade: each node's check (empty: not an upgrade).
    pub binaries: Vec<BinaryCheck>,
}

impl RestartRequest {
    /// A restart of every node, the primary as `mode` says.
    pub fn all(mode: RestartMode) -> RestartRequest {
        RestartRequest { mode, nodes: Vec::new(), pending_only: false, binaries: Vec::new() }
    }
}

/// A restart left for later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PendingRestart {
    /// The node.
    pub node: String,
    /// The settings waiting for it; `None`: the server cannot tell (before 9.5).
    pub settings: Option<Vec<String>>,
    /// Why it was not restarted now.
    pub why: String,
    /// The command that applies it.
    pub command: String,
}

impl fmt::Display for PendingRestart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match &self.settings {
            Some(s) => s.join(", "),
            None => "unknown (before 9.5 the server cannot tell; its files changed)".into(),
        };
        write!(f, "{}: {what}; {}; `{}` applies it", self.node, self.why, self.command)
    }
}

/// The command that applies what is pending.
pub const RESTART_COMMAND: &str = "pgrepl restart --rolling";

/// Plans restarts of `cluster` (the current one) from `obs` (with the nodes' settings
/// read: [`crate::observe::probe::observe_settings`]). See the module's documentation.
pub fn restart(cluster: &Cluster, obs: &ObservedCluster, req: &RestartRequest) -> Result<Plan, Refusal> {
    let known = || cluster.nodes.iter().map(|n| n.name.clone()).collect::<Vec<_>>();
    for n in &req.nodes {
        if cluster.node(n).is_none() {
            return Err(Refusal::UnknownNode { node: n.clone(), known: known() });
        }
    }
    for b in &req.binaries {
        if b.binaries.is_none() || b.binaries != b.data {
            return Err(Refusal::MajorMismatch {
                node: b.node.clone(),
                path: b.path.clone(),
                binaries: b.binaries.clone().unwrap_or_else(|| "unknown (postgres --version failed)".into()),
                data: b.data.clone().unwrap_or_else(|| "unknown (no PG_VERSION)".into()),
            });
        }
    }
    let p = cluster.primary().name.clone();
    let mode = req.mode;
    let how = match mode {
        RestartMode::Up => "after up".to_string(),
        RestartMode::InPlace => "in place".to_string(),
        RestartMode::Rolling { switch_back: true } => "rolling (switchover and back)".to_string(),
        RestartMode::Rolling { switch_back: false } => "rolling (switchover; the new primary stays)".to_string(),
    };
    let how = if req.binaries.is_empty() { how } else { format!("minor upgrade, {how}") };
    let mut plan = Plan::new(&cluster.name, Operation::Restart { how }, &p);
    let po = obs.get(&p);
    if mode != RestartMode::Up && !po.writable() {
        let why = po.error.clone().unwrap_or_else(|| format!("{:?}", po.server).to_lowercase());
        return Err(Refusal::NoRunningPrimary { primary: p, why });
    }
    let fenced = &obs.topology.fenced;
    let settings = |n: &str| obs.get(n).settings.clone();
    let pending = |n: &str| settings(n).and_then(|s| s.pending());
    let limit = |n: &str, name: &str, next: bool| settings(n).and_then(|s| s.limit(name, next));
    let selected = |n: &str| match mode {
        RestartMode::Up => pending(n) == Some(true) || (pending(n).is_none() && req.nodes.iter().any(|x| x == n)),
        _ => (req.nodes.is_empty() || req.nodes.iter().any(|x| x == n)) && (!req.pending_only || pending(n) != Some(false)),
    };
    let standbys: Vec<&Node> = cluster.standbys_in_order().into_iter().flatten().filter(|n| !fenced.contains(&n.name)).collect();
    let restart_primary = mode != RestartMode::Up && selected(&p);
    let mut chosen: Vec<&Node> = Vec::new();
    for s in standbys.iter().copied().filter(|s| selected(&s.name)) {
        let o = obs.get(&s.name);
        if !o.answered() {
            if mode == RestartMode::Up {
                continue; // its next start applies its settings
            }
            return Err(Refusal::NotRunning { node: s.name.clone() });
        }
        if !o.standby() {
            if mode == RestartMode::Up {
                continue; // `up` refused or reported it already; its restart waits
            }
            return Err(Refusal::NotAStandby { node: s.name.clone(), why: "it accepts writes: `pgrepl rejoin` it first".into() });
        }
        chosen.push(s);
    }
    // The limits the primary runs with now, and after its restart.
    let p_run = |name: &str| limit(&p, name, false);
    let p_next = |name: &str| if restart_primary { limit(&p, name, true) } else { limit(&p, name, false) };
    let below = |n: &str, next: bool, against: &dyn Fn(&str) -> Option<i64>| {
        STANDBY_LIMITS.iter().find_map(|name| match (limit(n, name, next), against(name)) {
            (Some(v), Some(pv)) if v < pv => Some((name.to_string(), v, pv)),
            _ => None,
        })
    };
    let (before, after): (Vec<&Node>, Vec<&Node>) = chosen.iter().copied().partition(|s| below(&s.name, true, &p_run).is_none());
    if mode == RestartMode::Up {
        for s in &after {
            let (setting, v, pv) = below(&s.name, true, &p_run).expect("partitioned");
            plan.pending.push(PendingRestart {
                node: s.name.clone(),
                settings: settings(&s.name).and_then(|x| x.pending_restart),
                why: format!("its new {setting} = {v} is below the primary's {pv}: the primary restarts first"),
                command: RESTART_COMMAND.into(),
            });
        }
        if pending(&p) != Some(false) && (pending(&p) == Some(true) || req.nodes.contains(&p)) {
            plan.pending.push(PendingRestart {
                node: p.clone(),
                settings: settings(&p).and_then(|x| x.pending_restart),
                why: "the primary: `up` never restarts it".into(),
                command: RESTART_COMMAND.into(),
            });
        }
        for s in &before {
            plan.steps.push(Step::new(&s.name, Action::Restart { upstream: s.upstream.clone() }));
        }
        plan.noop = plan.steps.is_empty();
        return Ok(plan);
    }
    let unsafe_order = |node: &str, (setting, value, primary_value): (String, i64, i64), hint: String| Refusal::UnsafeRestartOrder {
        node: node.to_string(),
        setting,
        value,
        primary: p.clone(),
        primary_value,
        hint,
    };
    if !restart_primary {
        if let Some(s) = after.first() {
            let found = below(&s.name, true, &p_run).expect("partitioned");
            return Err(unsafe_order(
                &s.name,
                found,
                format!("The primary restarts first: restart {p} too (`pgrepl restart` without node names)"),
            ));
        }
    }
    // When the primary restarts, every standby must already have at least its new values.
    if restart_primary {
        for s in standbys.iter().filter(|s| obs.get(&s.name).answered()) {
            let next = before.iter().any(|b| b.name == s.name);
            if let Some(found) = below(&s.name, next, &p_next) {
                let hint = if chosen.iter().any(|c| c.name == s.name) {
                    "The change raises one limit and lowers another, so no order is safe: make it in two rounds (`up` then `pgrepl restart` for each)".to_string()
                } else {
                    format!("Restart {} too (its files have the new value), or first", s.name)
                };
                return Err(unsafe_order(&s.name, found, hint));
            }
        }
        for s in &after {
            if let Some(found) = below(&s.name, true, &p_next) {
                return Err(unsafe_order(&s.name, found, "Give it at least the primary's value".into()));
            }
        }
    }
    for s in &before {
        plan.steps.push(Step::new(&s.name, Action::Restart { upstream: s.upstream.clone() }));
    }
    if restart_primary {
        match mode {
            RestartMode::Rolling { switch_back } if after.is_empty() => {
                let to = rolling_candidate(cluster, obs, &p, &before, &p_next, &limit)?;
                plan.steps.push(Step::new(&to, Action::Switchover { from: p.clone() }));
                if switch_back {
                    plan.steps.push(Step::new(&p, Action::Switchover { from: to.clone() }));
                } else {
                    let new = cluster.with_primary(&to).map_err(|e| Refusal::NotEligible { node: to.clone(), why: e.to_string() })?;
                    plan.warnings.push(format!("{to} stays the primary (recorded); `pgrepl switchover --to {p}` moves it back"));
                    plan.after = Some(new);
                }
            }
            RestartMode::Rolling { .. } => {
                let s = after.first().expect("not empty");
                let (setting, v, pv) = below(&s.name, true, &p_run).expect("partitioned");
                plan.warnings.push(format!(
                    "{setting} goes down ({pv} -> {v}): no standby can run with less than its primary's value, so no switchover can spare {p} its restart; it restarts in place first (writes pause for one restart), then the standbys"
                ));
                plan.steps.push(Step::new(&p, Action::Restart { upstream: None }));
            }
            _ => plan.steps.push(Step::new(&p, Action::Restart { upstream: None })),
        }
    }
    for s in &after {
        plan.steps.push(Step::new(&s.name, Action::Restart { upstream: s.upstream.clone() }));
    }
    if cluster.ha.is_some() && !plan.steps.is_empty() {
        plan.warnings.push(HA_NOTE.into());
    }
    plan.noop = plan.steps.is_empty();
    Ok(plan)
}

/// What a restart plan of an `[ha]` cluster says about its agents.
pub const HA_NOTE: &str = "[ha]: the agents are paused while this runs (under the operation lock) and put back as they were after, also on a failure; each switchover moves the leader key with the primary role, before the promotion (compare-and-set: refused if another node holds it)";

/// The standby a rolling restart switches over to: one streaming straight from the
/// primary, restarted already if one is (so it runs the new settings as the primary);
/// every other node (the old primary with its new values) must then have at least its values.
fn rolling_candidate(
    cluster: &Cluster,
    obs: &ObservedCluster,
    p: &str,
    before: &[&Node],
    p_next: &dyn Fn(&str) -> Option<i64>,
    limit: &dyn Fn(&str, &str, bool) -> Option<i64>,
) -> Result<String, Refusal> {
    let fenced = &obs.topology.fenced;
    let direct: Vec<&Node> = cluster
        .downstream(p)
        .filter(|n| !fenced.contains(&n.name) && obs.get(&n.name).standby() && obs.get(p).streams_to(&n.name))
        .collect();
    let to =
        direct.iter().find(|n| before.iter().any(|b| b.name == n.name)).or(direct.first()).ok_or_else(|| Refusal::NoRollingCandidate {
            primary: p.to_string(),
            why: if cluster.downstream(p).next().is_none() { "it has no standby".into() } else { "none streams from it now".into() },
        })?;
    let restarted = before.iter().any(|b| b.name == to.name);
    // As the primary it runs with its values (its new ones when restarted before).
    for name in STANDBY_LIMITS {
        let Some(tv) = limit(&to.name, name, restarted) else { continue };
        if let Some(v) = p_next(name).filter(|v| *v < tv) {
            return Err(Refusal::UnsafeRestartOrder {
                node: p.to_string(),
                setting: name.to_string(),
                value: v,
                primary: to.name.clone(),
                primary_value: tv,
                hint: "Give every node the same value".into(),
            });
        }
    }
    Ok(to.name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::fixtures::{primary, standby};
    use crate::observe::{LimitValue, Observed, RestartSettings, Sender};
    use crate::topology::Topology;

    fn cluster() -> Cluster {
        crate::observe::fixtures::three_nodes("")
    }

    /// A node whose max_connections runs at `run` and is `next` in its files.
    fn with(mut o: Observed, pending: &[&str], run: i64, next: i64) -> Observed {
        o.settings = Some(RestartSettings {
            pending_restart: Some(pending.iter().map(|s| s.to_string()).collect()),
            limits: vec![LimitValue { name: "max_connections".into(), running: run, next }],
        });
        o
    }

    fn streaming_primary(o: Observed) -> Observed {
        let mut o = o;
        for s in ["db2", "db3"] {
            o.senders.push(Sender {
                name: s.into(),
                state: "streaming".into(),
                sync_state: "async".into(),
                replay_lag_seconds: None,
                replay_lag_bytes: None,
            });
        }
        o
    }

    fn obs(run: i64, next: i64, pending: &[&str]) -> ObservedCluster {
        ObservedCluster {
            nodes: vec![
                with(streaming_primary(primary("db1", 100)), pending, run, next),
                with(standby("db2", 100), pending, run, next),
                with(standby("db3", 100), pending, run, next),
            ],
            topology: Topology::default(),
        }
    }

    fn order(plan: &Plan) -> Vec<String> {
        plan.steps
            .iter()
            .map(|s| match &s.action {
                Action::Restart { upstream: None } => format!("{}:in-place", s.node),
                Action::Restart { .. } => format!("{}:restart", s.node),
                Action::Switchover { from } => format!("{from}->{}", s.node),
                a => format!("{}:{a}", s.node),
            })
            .collect()
    }

    #[test]
    fn up_restarts_safe_standbys_and_never_the_primary() {
        let c = cluster();
        // shared_buffers: no limit, so every standby may restart now.
        let plan =
            restart(&c, &obs(100, 100, &["shared_buffers"]), &RestartRequest { nodes: vec![], ..RestartRequest::all(RestartMode::Up) })
                .unwrap();
        assert_eq!(order(&plan), vec!["db2:restart", "db3:restart"]);
        assert!(!plan.has("db1", |_| true), "up never restarts the primary: {plan}");
        assert_eq!(plan.pending.len(), 1);
        assert_eq!(plan.pending[0].node, "db1");
        assert_eq!(plan.pending[0].settings, Some(vec!["shared_buffers".to_string()]));
        // Raised: standbys may go first; lowered: none may (the primary first), all pending.
        let raised = restart(&c, &obs(100, 200, &["max_connections"]), &RestartRequest::all(RestartMode::Up)).unwrap();
        assert_eq!(order(&raised), vec!["db2:restart", "db3:restart"]);
        let lowered = restart(&c, &obs(200, 100, &["max_connections"]), &RestartRequest::all(RestartMode::Up)).unwrap();
        assert!(lowered.steps.is_empty() && lowered.noop, "{lowered}");
        assert_eq!(lowered.pending.iter().map(|p| p.node.as_str()).collect::<Vec<_>>(), vec!["db2", "db3", "db1"]);
        assert!(lowered.pending[0].why.contains("below the primary's 200"), "{}", lowered.pending[0]);
        // Nothing pending: nothing to do.
        let none = restart(&c, &obs(100, 100, &[]), &RestartRequest::all(RestartMode::Up)).unwrap();
        assert!(none.noop && none.pending.is_empty());
    }

    #[test]
    fn raising_restarts_standbys_first_lowering_the_primary_first() {
        let c = cluster();
        let raise = restart(&c, &obs(100, 200, &["max_connections"]), &RestartRequest::all(RestartMode::InPlace)).unwrap();
        assert_eq!(order(&raise), vec!["db2:restart", "db3:restart", "db1:in-place"]);
        let lower = restart(&c, &obs(200, 100, &["max_connections"]), &RestartRequest::all(RestartMode::InPlace)).unwrap();
        assert_eq!(order(&lower), vec!["db1:in-place", "db2:restart", "db3:restart"]);
    }

    #[test]
    fn rolling_switches_over_to_a_restarted_standby_and_back() {
        let c = cluster();
        let roll =
            restart(&c, &obs(100, 200, &["max_connections"]), &RestartRequest::all(RestartMode::Rolling { switch_back: true })).unwrap();
        assert_eq!(order(&roll), vec!["db2:restart", "db3:restart", "db1->db2", "db2->db1"]);
        assert!(roll.after.is_none());
        let stay =
            restart(&c, &obs(100, 100, &["shared_buffers"]), &RestartRequest::all(RestartMode::Rolling { switch_back: false })).unwrap();
        assert_eq!(order(&stay), vec!["db2:restart", "db3:restart", "db1->db2"]);
        assert_eq!(stay.after.as_ref().unwrap().primary().name, "db2");
        // Lowering: no switchover can spare the primary its restart; it goes first, in place.
        let lower =
            restart(&c, &obs(200, 100, &["max_connections"]), &RestartRequest::all(RestartMode::Rolling { switch_back: true })).unwrap();
        assert_eq!(order(&lower), vec!["db1:in-place", "db2:restart", "db3:restart"]);
        assert!(lower.warnings.iter().any(|w| w.contains("goes down (200 -> 100)")), "{lower}");
    }

    #[test]
    fn unsafe_orders_are_refused_with_the_setting_named() {
        let c = cluster();
        // Only the primary, raising: the standbys would be below it.
        let only_primary = RestartRequest { nodes: vec!["db1".into()], ..RestartRequest::all(RestartMode::InPlace) };
        match restart(&c, &obs(100, 200, &["max_connections"]), &only_primary) {
            Err(Refusal::UnsafeRestartOrder { node, setting, value, primary_value, .. }) => {
                assert_eq!((node.as_str(), setting.as_str(), value, primary_value), ("db2", "max_connections", 100, 200))
            }
            other => panic!("{other:?}"),
        }
        // Only a standby, lowering: below the primary's running value.
        let only_standby = RestartRequest { nodes: vec!["db2".into()], ..RestartRequest::all(RestartMode::InPlace) };
        let e = restart(&c, &obs(200, 100, &["max_connections"]), &only_standby).unwrap_err();
        assert!(e.to_string().contains("restart db1 too"), "{e}");
        // One limit raised, another lowered: no safe order.
        let mut o = obs(100, 200, &["max_connections", "max_wal_senders"]);
        for n in &mut o.nodes {
            n.settings.as_mut().unwrap().limits.push(LimitValue { name: "max_wal_senders".into(), running: 10, next: 5 });
        }
        let e = restart(&c, &o, &RestartRequest::all(RestartMode::Rolling { switch_back: true })).unwrap_err();
        assert!(matches!(e, Refusal::UnsafeRestartOrder { .. }) && e.to_string().contains("two rounds"), "{e}");
        // A standby that does not run; an unknown node.
        let mut o = obs(100, 100, &[]);
        o.nodes[2] = Observed::unknown("db3");
        assert!(matches!(restart(&c, &o, &RestartRequest::all(RestartMode::InPlace)), Err(Refusal::NotRunning { node }) if node == "db3"));
        let bad = RestartRequest { nodes: vec!["db9".into()], ..RestartRequest::all(RestartMode::InPlace) };
        assert!(matches!(restart(&c, &obs(100, 100, &[]), &bad), Err(Refusal::UnknownNode { .. })));
    }

    #[test]
    fn rolling_needs_a_streaming_standby() {
        let c = cluster();
        let mut o = obs(100, 100, &[]);
        o.nodes[0].senders.clear();
        let only_primary = RestartRequest { nodes: vec!["db1".into()], ..RestartRequest::all(RestartMode::Rolling { switch_back: true }) };
        assert!(matches!(restart(&c, &o, &only_primary), Err(Refusal::NoRollingCandidate { .. })));
    }

    #[test]
    fn a_minor_upgrade_refuses_binaries_of_another_major() {
        let c = cluster();
        let check = |b: Option<&str>| RestartRequest {
            binaries: vec![BinaryCheck {
                node: "db2".into(),
                path: "/opt/pg/bin".into(),
                binaries: b.map(Into::into),
                data: Some("15".into()),
            }],
            ..RestartRequest::all(RestartMode::Rolling { switch_back: true })
        };
        let e = restart(&c, &obs(100, 100, &[]), &check(Some("16"))).unwrap_err();
        assert!(matches!(&e, Refusal::MajorMismatch { node, .. } if node == "db2"), "{e}");
        assert!(e.to_string().contains("PostgreSQL 16") && e.to_string().contains("PostgreSQL 15"), "{e}");
        assert!(restart(&c, &obs(100, 100, &[]), &check(None)).is_err());
        let ok = restart(&c, &obs(100, 100, &[]), &check(Some("15"))).unwrap();
        assert_eq!(order(&ok), vec!["db2:restart", "db3:restart", "db1->db2", "db2->db1"]);
        assert!(ok.to_string().contains("minor upgrade, rolling"), "{ok}");
    }

    #[test]
    fn the_dry_run_text_names_each_restart_and_what_stays_pending() {
        let c = cluster();
        let up = restart(&c, &obs(100, 100, &["shared_buffers"]), &RestartRequest::all(RestartMode::Up)).unwrap();
        let text = up.to_string();
        assert!(text.contains("restart, after up (primary db1)"), "{text}");
        assert!(text.contains("db2        catch up with db1, restart (stop fast, start), wait until it streams from db1 again"), "{text}");
        assert!(
            text.contains(
                "pending restart: db1: shared_buffers; the primary: `up` never restarts it; `pgrepl restart --rolling` applies it"
            ),
            "{text}"
        );
        let roll = restart(&c, &obs(100, 100, &[]), &RestartRequest::all(RestartMode::Rolling { switch_back: true })).unwrap();
        let text = roll.to_string();
        assert!(text.contains("db2        switchover db1 -> it"), "{text}");
        assert!(text.contains("db1        switchover db2 -> it"), "{text}");
    }
}
