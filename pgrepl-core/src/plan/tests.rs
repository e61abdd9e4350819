//! The planners over observed clusters: one table case per refusal reason, and property
//! tests over random observations.

use proptest::prelude::*;

use super::*;
use crate::cluster::Cluster;
use crate::lsn::Lsn;
use crate::observe::{Observed, ObservedCluster, Sender, ServerState};
use crate::topology::{SyncRecord, Topology};

fn cluster(sync: &str) -> Cluster {
    crate::observe::fixtures::three_nodes(&format!("[replication]\nsync = {sync}"))
}

fn async_cluster() -> Cluster {
    cluster("{ mode = \"off\" }")
}

use crate::observe::fixtures::{primary, standby};

fn stopped(name: &str) -> Observed {
    let mut o = Observed::unknown(name);
    o.host_reachable = true;
    o.server = ServerState::Stopped;
    o
}

fn unreachable(name: &str, evidence: &[&str]) -> Observed {
    let mut o = Observed::unknown(name);
    o.alive_evidence = evidence.iter().map(|e| e.to_string()).collect();
    o
}

fn obs(nodes: Vec<Observed>) -> ObservedCluster {
    ObservedCluster { nodes, topology: Topology::default() }
}

/// A table case: name, observation, request, the refusal expected.
type Case<R> = (&'static str, ObservedCluster, R, fn(&Refusal) -> bool);

fn fo(to: Option<&str>, force: bool) -> FailoverRequest {
    FailoverRequest { to: to.map(str::to_string), force }
}

// ---- failover: one case per refusal -------------------------------------------------------

#[test]
fn failover_promotes_the_most_advanced_standby_after_fencing_the_dead_primary() {
    let c = async_cluster();
    let plan = failover(&c, &obs(vec![stopped("db1"), standby("db2", 100), standby("db3", 200)]), &fo(None, false)).unwrap();
    let d = plan.failover.as_ref().unwrap();
    assert_eq!(d.candidate, "db3");
    assert_eq!(d.fence.record, vec!["db1".to_string()]);
    assert!(plan.has("db1", |a| matches!(a, Action::WriteStandbySettings { upstream } if upstream == "db3")));
    let promote = plan.steps.iter().position(|s| s.action == Action::Promote).unwrap();
    assert!(plan.steps[promote].commits);
    assert!(plan.steps[promote].guards.contains(&Guard::NoOtherWritable { except: None }));
    assert!(plan.steps[..promote].iter().any(|s| matches!(s.action, Action::RecordFenced { .. })), "fenced before the promotion");
    assert_eq!(plan.writable_after(&[]), vec!["db3".to_string()]);
    // Text and JSON both render.
    assert!(plan.to_string().contains("promote"));
    assert!(serde_json::to_string(&plan).unwrap().contains("\"kind\":\"promote\""));
}

#[test]
fn failover_refusals() {
    let c = async_cluster();
    let cases: Vec<Case<FailoverRequest>> = vec![
        ("unknown node", obs(vec![stopped("db1"), standby("db2", 1), standby("db3", 1)]), fo(Some("db9"), false), |r| {
            matches!(r, Refusal::UnknownNode { .. })
        }),
        ("no candidate", obs(vec![stopped("db1"), stopped("db2"), unreachable("db3", &[])]), fo(None, true), |r| {
            matches!(r, Refusal::NoCandidate { .. })
        }),
        (
            "requested not eligible",
            obs(vec![stopped("db1"), standby("db2", 1), stopped("db3")]),
            fo(Some("db3"), false),
            |r| matches!(r, Refusal::NotEligible { node, .. } if node == "db3"),
        ),
        (
            "requested behind",
            obs(vec![stopped("db1"), standby("db2", 1), standby("db3", 5)]),
            fo(Some("db2"), false),
            |r| matches!(r, Refusal::CandidateBehind { node, best, behind_bytes: 4, .. } if node == "db2" && best == "db3"),
        ),
        (
            "primary writable",
            obs(vec![primary("db1", 9), standby("db2", 1), standby("db3", 1)]),
            fo(None, false),
            |r| matches!(r, Refusal::OtherWritable { node, is_primary: true, .. } if node == "db1"),
        ),
        (
            "unresponsive",
            obs(vec![
                {
                    let mut o = stopped("db1");
                    o.server = ServerState::Unresponsive;
                    o
                },
                standby("db2", 1),
                standby("db3", 1),
            ]),
            fo(None, false),
            |r| matches!(r, Refusal::Unresponsive { node } if node == "db1"),
        ),
        (
            "alive but unreachable, even forced",
            obs(vec![unreachable("db1", &["db2 still streams from it"]), standby("db2", 1), standby("db3", 1)]),
            fo(None, true),
            |r| matches!(r, Refusal::AliveButUnreachable { node, forced: true, .. } if node == "db1"),
        ),
        (
            "unreachable without evidence",
            obs(vec![unreachable("db1", &[]), standby("db2", 1), standby("db3", 1)]),
            fo(None, false),
            |r| matches!(r, Refusal::UnreachableWithoutEvidence { node } if node == "db1"),
        ),
    ];
    for (name, o, req, want) in cases {
        match failover(&c, &o, &req) {
            Err(r) => assert!(want(&r), "{name}: unexpected refusal {r:?}"),
            Ok(p) => panic!("{name}: expected a refusal, got a plan:\n{p}"),
        }
    }
}

#[test]
fn forced_failover_past_an_unreachable_primary_records_it_and_says_what_to_do() {
    let c = async_cluster();
    let p = failover(&c, &obs(vec![unreachable("db1", &[]), standby("db2", 1), standby("db3", 2)]), &fo(None, true)).unwrap();
    assert!(p.warnings.iter().any(|w| w.contains("db1") && w.contains("rejoin")), "{:?}", p.warnings);
    assert_eq!(p.failover.unwrap().fence.record, vec!["db1".to_string()]);
}

#[test]
fn forced_failover_stops_a_writable_primary_first() {
    let c = async_cluster();
    let p = failover(&c, &obs(vec![primary("db1", 9), standby("db2", 1), standby("db3", 2)]), &fo(None, true)).unwrap();
    let stop = p.steps.iter().position(|s| s.node == "db1" && s.action == Action::Stop).unwrap();
    let promote = p.steps.iter().position(|s| s.action == Action::Promote).unwrap();
    assert!(stop < promote);
    assert!(p.steps[promote].guards.contains(&Guard::NotRunning { node: "db1".into() }));
    assert_eq!(p.writable_after(&["db1".into()]), vec!["db3".to_string()]);
}

// ---- synchronous mode (hole 6a) ----------------------------------------------------------

#[test]
fn sync_first_1_refuses_a_lagging_non_synchronous_standby_when_the_synchronous_one_is_gone() {
    // FIRST 1 (db2, db3): db2 was the synchronous one; db1 and db2 are dead; db3 lags.
    let c = cluster("{ mode = \"first\", count = 1 }");
    let o = obs(vec![stopped("db1"), stopped("db2"), standby("db3", 1)]);
    match failover(&c, &o, &fo(None, false)) {
        Err(Refusal::SyncNotCovered { candidate, may_hold, .. }) => {
            assert_eq!(candidate, "db3");
            assert_eq!(may_hold, vec!["db2".to_string()]);
        }
        other => panic!("expected SyncNotCovered, got {other:?}"),
    }
    let forced = failover(&c, &o, &fo(None, true)).unwrap();
    assert_eq!(forced.failover.as_ref().unwrap().candidate, "db3");
    assert!(!forced.failover.as_ref().unwrap().sync_held);
    assert!(forced.warnings.iter().any(|w| w.contains("db2")), "{:?}", forced.warnings);
}

#[test]
fn sync_candidate_outside_the_recorded_set_is_refused_unless_forced() {
    // The primary ran with db2 alone as synchronous (recorded after a degraded failover).
    let c = cluster("{ mode = \"first\", count = 1 }");
    let mut o = obs(vec![stopped("db1"), standby("db2", 5), standby("db3", 9)]);
    o.topology.sync =
        Some(SyncRecord { primary: "db1".into(), mode: crate::spec::SyncMode::First, count: 1, standbys: vec!["db2".into()] });
    // Default choice: the most advanced member of the set, not db3.
    let p = failover(&c, &o, &fo(None, false)).unwrap();
    assert_eq!(p.failover.as_ref().unwrap().candidate, "db2");
    assert!(p.failover.as_ref().unwrap().sync_held);
    // Asking for db3 (more WAL, but outside the set) is refused.
    match failover(&c, &o, &fo(Some("db3"), false)) {
        Err(Refusal::NotInSyncSet { node, set, .. }) => {
            assert_eq!(node, "db3");
            assert_eq!(set, vec!["db2".to_string()]);
        }
        other => panic!("expected NotInSyncSet, got {other:?}"),
    }
    assert!(failover(&c, &o, &fo(Some("db3"), true)).is_ok());
}

#[test]
fn sync_guarantee_holds_when_the_synchronous_standby_is_reachable() {
    let c = cluster("{ mode = \"first\", count = 1 }");
    let p = failover(&c, &obs(vec![stopped("db1"), standby("db2", 5), standby("db3", 5)]), &fo(None, false)).unwrap();
    assert!(p.failover.unwrap().sync_held);
}

// ---- switchover ----------------------------------------------------------------------------

fn streaming_cluster() -> ObservedCluster {
    let mut p = primary("db1", 100);
    for s in ["db2", "db3"] {
        p.senders.push(Sender {
            name: s.into(),
            state: "streaming".into(),
            sync_state: "async".into(),
            replay_lag_seconds: None,
            replay_lag_bytes: None,
        });
    }
    obs(vec![p, standby("db2", 100), standby("db3", 100)])
}

#[test]
fn switchover_demotes_the_old_primary_on_disk_before_the_promotion() {
    let c = async_cluster();
    let p = switchover(&c, &streaming_cluster(), &SwitchoverRequest { to: "db2".into() }).unwrap();
    let stop = p.steps.iter().position(|s| s.node == "db1" && s.action == Action::StopClean).unwrap();
    let demote = p.steps.iter().position(|s| s.node == "db1" && matches!(s.action, Action::WriteStandbySettings { .. })).unwrap();
    let promote = p.steps.iter().position(|s| s.action == Action::Promote).unwrap();
    assert!(stop < demote && demote < promote, "{p}");
    assert_eq!(p.writable_after(&["db1".into()]), vec!["db2".to_string()]);
}

#[test]
fn switchover_refusals() {
    let c = async_cluster();
    let base = streaming_cluster();
    let req = |to: &str| SwitchoverRequest { to: to.into() };
    let mut no_primary = base.clone();
    no_primary.nodes[0] = stopped("db1");
    let mut unrecorded = base.clone();
    unrecorded.nodes[0] = standby("db1", 100);
    unrecorded.nodes[2] = primary("db3", 100);
    let mut split = base.clone();
    split.nodes[2] = primary("db3", 100);
    let mut fenced = base.clone();
    fenced.topology.fenced = vec!["db2".into()];
    let mut not_standby = base.clone();
    not_standby.nodes[1] = stopped("db2");
    let mut not_streaming = base.clone();
    not_streaming.nodes[0].senders.clear();
    not_streaming.nodes[1].receiver = Some("waiting".into());
    let mut other_tl = base.clone();
    other_tl.nodes[1].timeline = Some(2);
    let mut behind = base.clone();
    behind.nodes[1].lsn = Some(Lsn(0));
    behind.nodes[0].lsn = Some(Lsn(SWITCHOVER_MAX_LAG_BYTES + 1));
    let cases: Vec<Case<SwitchoverRequest>> = vec![
        ("unknown", base.clone(), req("db9"), |r| matches!(r, Refusal::UnknownNode { .. })),
        ("no primary", no_primary, req("db2"), |r| matches!(r, Refusal::NoRunningPrimary { .. })),
        ("unrecorded", unrecorded, req("db2"), |r| matches!(r, Refusal::UnrecordedPrimary { node, .. } if node == "db3")),
        ("split", split, req("db2"), |r| matches!(r, Refusal::SplitBrain { nodes } if nodes.len() == 2)),
        ("fenced", fenced, req("db2"), |r| matches!(r, Refusal::Fenced { .. })),
        ("not a standby", not_standby, req("db2"), |r| matches!(r, Refusal::NotAStandby { .. })),
        ("not streaming", not_streaming, req("db2"), |r| matches!(r, Refusal::NotStreaming { .. })),
        ("other timeline", other_tl, req("db2"), |r| matches!(r, Refusal::OtherTimeline { node_timeline: 2, .. })),
        ("behind", behind, req("db2"), |r| matches!(r, Refusal::TooFarBehind { .. })),
    ];
    for (name, o, r, want) in cases {
        match switchover(&c, &o, &r) {
            Err(e) => assert!(want(&e), "{name}: unexpected refusal {e:?}"),
            Ok(p) => panic!("{name}: expected a refusal, got:\n{p}"),
        }
    }
}

// ---- rejoin ---------------------------------------------------------------------------------

#[test]
fn rejoin_refusals_and_plans() {
    let c = async_cluster();
    let req = |n: &str| RejoinRequest { node: n.into() };
    let base = obs(vec![primary("db1", 9), standby("db2", 9), stopped("db3")]);
    assert!(matches!(rejoin(&c, &base, &req("db9"), None), Err(Refusal::UnknownNode { .. })));
    assert!(matches!(rejoin(&c, &base, &req("db1"), None), Err(Refusal::IsPrimary { .. })));
    let mut down = base.clone();
    down.nodes[0] = stopped("db1");
    assert!(matches!(rejoin(&c, &down, &req("db3"), None), Err(Refusal::PrimaryDown { .. })));
    let mut two = base.clone();
    two.nodes[1] = primary("db2", 9);
    assert!(matches!(rejoin(&c, &two, &req("db3"), None), Err(Refusal::OtherAlsoWritable { other }) if other == "db2"));
    let mut gone = base.clone();
    gone.nodes[2] = unreachable("db3", &[]);
    assert!(matches!(rejoin(&c, &gone, &req("db3"), None), Err(Refusal::Unreachable { .. })));
    let facts = RejoinFacts { how: RejoinHow::Reclone, reason: "x".into(), foreign_files: Some("/data".into()) };
    assert!(matches!(rejoin(&c, &base, &req("db3"), Some(&facts)), Err(Refusal::ForeignFiles { .. })));
    // A stopped node comes back as its WAL allows, never writable.
    let p = rejoin(&c, &base, &req("db3"), None).unwrap();
    assert!(p.has("db3", |a| matches!(a, Action::Rejoin { .. })));
    assert_eq!(p.writable_after(&["db1".into()]), vec!["db1".to_string()]);
    // A writable former primary (db3 here) is stopped first.
    let mut former = base.clone();
    former.nodes[2] = primary("db3", 5);
    let p = rejoin(&c, &former, &req("db3"), None).unwrap();
    assert!(p.steps[0].node == "db3" && p.steps[0].action == Action::Stop);
    assert_eq!(p.writable_after(&["db1".into(), "db3".into()]), vec!["db1".to_string()]);
}

// ---- properties -----------------------------------------------------------------------------

fn arb_node(name: &'static str) -> impl Strategy<Value = Observed> {
    (0u8..7, 0u64..1000, 0u64..1000, 1u32..3, any::<bool>(), 0u8..3).prop_map(move |(kind, recv, replay, tl, fenced, ev)| {
        let mut o = match kind {
            0 => primary(name, recv),
            1 | 2 => standby(name, recv),
            3 => stopped(name),
            4 => {
                let mut o = stopped(name);
                o.server = ServerState::Unresponsive;
                o.standby_configured = Some(ev == 0);
                o
            }
            5 => unreachable(name, if ev == 0 { &["its port answers"] } else { &[] }),
            _ => {
                let mut o = standby(name, recv);
                o.receive_lsn = None;
                o
            }
        };
        if o.standby() {
            o.lsn = Some(Lsn(replay.min(recv)));
            o.timeline = Some(tl);
        }
        o.fenced = fenced && kind != 0;
        o
    })
}

fn arb_cluster() -> impl Strategy<Value = ObservedCluster> {
    (arb_node("db1"), arb_node("db2"), arb_node("db3"), 0u8..4).prop_map(|(a, b, c, sync)| {
        let mut o = obs(vec![a, b, c]);
        o.topology.fenced = o.nodes.iter().filter(|n| n.fenced).map(|n| n.node.clone()).collect();
        o.topology.sync = match sync {
            0 => None,
            1 => Some(SyncRecord { primary: "db1".into(), mode: crate::spec::SyncMode::First, count: 1, standbys: vec!["db2".into()] }),
            2 => Some(SyncRecord {
                primary: "db1".into(),
                mode: crate::spec::SyncMode::Any,
                count: 1,
                standbys: vec!["db2".into(), "db3".into()],
            }),
            _ => Some(SyncRecord { primary: "db1".into(), mode: crate::spec::SyncMode::Off, count: 0, standbys: vec![] }),
        };
        o
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Never a plan that ends with two writable nodes (as far as the plan decides it, and
    /// with every node it cannot stop, that still may accept writes, counted as writable).
    #[test]
    fn failover_never_ends_with_two_writable_nodes(o in arb_cluster(), to in prop::option::of(prop::sample::select(vec!["db2", "db3"])), force in any::<bool>()) {
        let c = cluster("{ mode = \"first\", count = 1 }");
        if let Ok(p) = failover(&c, &o, &FailoverRequest { to: to.map(str::to_string), force }) {
            let mut before: Vec<String> = o.nodes.iter().filter(|n| n.may_accept_writes()).map(|n| n.node.clone()).collect();
            // Unreachable nodes with signs of life may accept writes too.
            before.extend(o.nodes.iter().filter(|n| !n.host_reachable && !n.alive_evidence.is_empty()).map(|n| n.node.clone()));
            let after = p.writable_after(&before);
            prop_assert!(after.len() <= 1, "writable after: {:?}\n{}", after, p);
            prop_assert_eq!(after, vec![p.failover.as_ref().unwrap().candidate.clone()]);
        }
    }

    /// In synchronous mode, never a candidate outside the set the primary ran with unless forced;
    /// and never a promotion whose reachable members do not cover the acknowledged commits.
    #[test]
    fn failover_in_sync_mode_stays_in_the_set(o in arb_cluster(), to in prop::option::of(prop::sample::select(vec!["db2", "db3"]))) {
        let c = cluster("{ mode = \"first\", count = 1 }");
        let rec = o.topology.sync_in_force("db1", &c.replication.sync);
        if let Ok(p) = failover(&c, &o, &FailoverRequest { to: to.map(str::to_string), force: false }) {
            let d = p.failover.unwrap();
            if rec.synchronous() {
                prop_assert!(rec.standbys.contains(&d.candidate), "{} outside {:?}", d.candidate, rec.standbys);
                prop_assert!(d.sync_held, "promoted {} without the synchronous guarantee", d.candidate);
            }
        }
    }

    /// A switchover plan ends with exactly the candidate writable, and refuses whenever
    /// more than one node accepts writes.
    #[test]
    fn switchover_never_ends_with_two_writable_nodes(o in arb_cluster(), to in prop::sample::select(vec!["db1", "db2", "db3"])) {
        let c = async_cluster();
        let writable = o.writable();
        if let Ok(p) = switchover(&c, &o, &SwitchoverRequest { to: to.to_string() }) {
            prop_assert!(writable.len() == 1);
            prop_assert_eq!(p.writable_after(&writable), vec![to.to_string()]);
        }
    }

    /// How the executor runs a plan is safe: a step that stops a node is confirmed before
    /// a promotion (it is in an earlier group, or separated from it by a record of the
    /// cluster), nothing runs alongside after the point of no return in its group, and
    /// every plan has exactly one point of no return.
    #[test]
    fn promotion_waits_for_everything_before_it(o in arb_cluster(), to in prop::sample::select(vec!["db2", "db3"]), force in any::<bool>()) {
        let c = cluster("{ mode = \"first\", count = 1 }");
        let plans = [
            failover(&c, &o, &FailoverRequest { to: Some(to.to_string()), force }).ok(),
            switchover(&c, &o, &SwitchoverRequest { to: to.to_string() }).ok(),
        ];
        for p in plans.into_iter().flatten() {
            prop_assert!(p.steps.iter().filter(|s| s.commits).count() <= 1, "{}", p);
            let Some(at) = p.steps.iter().position(|s| s.commits) else { continue };
            let g = p.groups().into_iter().find(|g| g.contains(&at)).unwrap();
            prop_assert_eq!(g.end, at + 1, "steps run alongside after the promotion:\n{}", p);
            let barrier = (g.start..at).rev().find(|&i| p.steps[i].node == p.cluster);
            for i in g.start..at {
                let s = &p.steps[i];
                if s.node != p.steps[at].node && s.node != p.cluster {
                    prop_assert!(barrier.is_some_and(|b| b > i), "{} {} runs alongside the promotion:\n{}", s.node, s.action, p);
                }
            }
        }
    }

    /// A rejoin never leaves the rejoined node writable.
    #[test]
    fn rejoin_never_leaves_the_node_writable(o in arb_cluster(), node in prop::sample::select(vec!["db2", "db3"])) {
        let c = async_cluster();
        if let Ok(p) = rejoin(&c, &o, &RejoinRequest { node: node.to_string() }, None) {
            let after = p.writable_after(&o.writable());
            prop_assert!(!after.contains(&node.to_string()) || p.noop && !o.get(node).writable());
            prop_assert!(after.len() <= 1);
        }
    }
}

#[test]
fn groups_follow_alongside_steps() {
    let mut p = Plan::new("t", Operation::Up, "db1");
    p.steps = vec![
        Step::new("db1", Action::Start),
        Step::new("db2", Action::Start).alongside(),
        Step::new("db3", Action::Start),
        Step::new("t", Action::Unfence).alongside(),
        Step::new("db2", Action::Stop).alongside(),
    ];
    assert_eq!(p.groups(), vec![0..2, 2..5]);
    assert_eq!(
        together(vec![Step::new("a", Action::Start), Step::new("b", Action::Start)]).iter().map(|s| s.alongside).collect::<Vec<_>>(),
        vec![false, true]
    );
    let text = p.to_string();
    assert!(text.contains(" 2+ db2"), "{text}");
}

#[test]
fn switchover_prepares_together_and_promotes_after_the_record() {
    let p = switchover(&async_cluster(), &streaming_cluster(), &SwitchoverRequest { to: "db2".into() }).unwrap();
    let groups = p.groups();
    let at = p.steps.iter().position(|s| s.action == Action::Promote).unwrap();
    let g = groups.iter().find(|g| g.contains(&at)).unwrap();
    let in_group: Vec<(&str, &Action)> = p.steps[g.clone()].iter().map(|s| (s.node.as_str(), &s.action)).collect();
    assert!(in_group.contains(&("db1", &Action::WriteStandbySettings { upstream: "db2".into() })), "{p}");
    assert!(in_group.iter().any(|(n, a)| *n == "t" && matches!(a, Action::RecordSync { .. })), "{p}");
    assert_eq!(p.steps[at - 1].action, Action::WritePrimarySettings, "{p}");
    // The old primary's clean stop is a group of its own, guarded, with an undo.
    let stop = p.steps.iter().find(|s| s.action == Action::StopClean).unwrap();
    assert!(!stop.alongside && stop.undo == Some(Action::Start) && !stop.guards.is_empty());
    assert!(p.steps.iter().all(|s| s.commits == (s.action == Action::Promote)));
}

// ---- up ---------------------------------------------------------------------------------

#[test]
fn up_plans_a_fresh_cluster_and_nothing_for_a_healthy_one() {
    let c = async_cluster();
    let fresh = |n: &str| {
        let mut o = stopped(n);
        o.data_dir = Some(crate::observe::DataDirState::Missing);
        o
    };
    let p = super::up(&c, &obs(vec![fresh("db1"), fresh("db2"), fresh("db3")])).unwrap();
    assert!(!p.noop);
    let kinds: Vec<(String, String)> = p.steps.iter().map(|s| (s.node.clone(), s.action.to_string())).collect();
    assert_eq!(kinds[0], ("db1".to_string(), "initdb (data checksums on)".to_string()), "{p}");
    assert!(p.has("db2", |a| matches!(a, Action::Clone { from } if from == "db1")), "{p}");
    assert!(p.has("db3", |a| matches!(a, Action::WaitStreaming { .. })), "{p}");
    let first_clone = p.steps.iter().position(|s| matches!(s.action, Action::Clone { .. })).unwrap();
    let primary_start = p.steps.iter().position(|s| s.node == "db1" && s.action == Action::Start).unwrap();
    assert!(primary_start < first_clone, "the primary runs before a standby clones from it");
    // Groups: the primary's steps with the standbys getting ready for their clone, then
    // both standbys together, then the waits together.
    let groups = p.groups();
    assert_eq!(groups.len(), 3, "{p}");
    assert!(p.steps[groups[0].clone()].iter().all(|s| s.node == "db1" || s.action == Action::PrepareClone), "{p}");
    for n in ["db2", "db3"] {
        let prep = p.steps[groups[0].clone()].iter().find(|s| s.node == n && s.action == Action::PrepareClone);
        assert!(prep.is_some_and(|s| s.guards == [Guard::NotRunning { node: n.into() }]), "{n} gets ready, guarded: {p}");
    }
    let level: Vec<&str> = p.steps[groups[1].clone()].iter().map(|s| s.node.as_str()).collect();
    assert!(level.contains(&"db2") && level.contains(&"db3") && !level.contains(&"db1"), "{p}");
    assert!(p.steps[groups[2].clone()].iter().all(|s| matches!(s.action, Action::WaitStreaming { .. })), "{p}");

    // An interrupted clone (pgrepl's marker, files but no cluster) is cloned again.
    let mut interrupted = stopped("db2");
    interrupted.data_dir = Some(crate::observe::DataDirState::Foreign);
    interrupted.unfinished_clone = true;
    let mut o = streaming_cluster();
    o.nodes[1] = interrupted;
    let p = super::up(&c, &o).unwrap();
    assert!(p.has("db2", |a| matches!(a, Action::Clone { .. })) && p.has("db2", |a| *a == Action::Start), "{p}");
    o.nodes[1].unfinished_clone = false;
    assert!(matches!(super::up(&c, &o), Err(Refusal::ForeignFiles { .. })), "without the marker foreign files are refused");

    assert!(!p.has("db2", |a| *a == Action::PrepareClone), "an interrupted clone is not readied beside the primary: {p}");

    let healthy = streaming_cluster();
    let p = super::up(&c, &healthy).unwrap();
    assert!(p.noop, "{p}");
    assert!(!p.steps.iter().any(|s| s.action == Action::PrepareClone), "{p}");
    assert!(!p.steps.iter().any(|s| matches!(s.action, Action::Clone { .. } | Action::Start | Action::Initdb)), "{p}");
}

#[test]
fn up_refusals() {
    let c = async_cluster();
    let mut foreign = streaming_cluster();
    foreign.nodes[1] = stopped("db2");
    foreign.nodes[1].data_dir = Some(crate::observe::DataDirState::Foreign);
    assert!(matches!(super::up(&c, &foreign), Err(Refusal::ForeignFiles { node, .. }) if node == "db2"));
    let mut former = streaming_cluster();
    former.nodes[2] = stopped("db3");
    former.nodes[2].data_dir = Some(crate::observe::DataDirState::Cluster);
    former.nodes[2].standby_configured = Some(false);
    assert!(matches!(super::up(&c, &former), Err(Refusal::WrongDataDirectory { node, .. }) if node == "db3"));
    let mut gone = streaming_cluster();
    gone.nodes[2] = unreachable("db3", &[]);
    assert!(matches!(super::up(&c, &gone), Err(Refusal::Unreachable { .. })));
    // The spec's primary holds a standby's data directory (after a failover the spec was
    // not updated), or runs as a standby.
    let mut demoted = streaming_cluster();
    demoted.nodes[0] = stopped("db1");
    demoted.nodes[0].data_dir = Some(crate::observe::DataDirState::Cluster);
    demoted.nodes[0].standby_configured = Some(true);
    assert!(matches!(super::up(&c, &demoted), Err(Refusal::WrongDataDirectory { node, .. }) if node == "db1"));
    let mut running_standby = streaming_cluster();
    running_standby.nodes[0] = standby("db1", 100);
    assert!(matches!(super::up(&c, &running_standby), Err(Refusal::WrongDataDirectory { node, .. }) if node == "db1"));
}

// ---- [ha]: the leader key moves with the role ------------------------------------------------

fn ha_cluster() -> Cluster {
    crate::observe::fixtures::three_nodes("[ha]\n[ha.etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n")
}

#[test]
fn an_ha_switchover_moves_the_leader_key_after_the_clean_stop_and_before_the_promotion() {
    let p = switchover(&ha_cluster(), &streaming_cluster(), &SwitchoverRequest { to: "db2".into() }).unwrap();
    let at = |pred: &dyn Fn(&Step) -> bool| p.steps.iter().position(pred).unwrap_or_else(|| panic!("{p}"));
    let stop = at(&|s| s.action == Action::StopClean);
    let replayed = at(&|s| matches!(s.action, Action::WaitReplayShutdownCheckpoint { .. }));
    let key = at(&|s| matches!(s.action, Action::MoveLeaderKey { .. }));
    let promote = at(&|s| s.action == Action::Promote);
    assert!(stop < replayed && replayed < key && key < promote, "{p}");
    let step = &p.steps[key];
    assert_eq!(step.node, "t", "a record of the cluster: the steps before it in its group are done first");
    assert_eq!(step.action, Action::MoveLeaderKey { from: "db1".into(), to: "db2".into() });
    assert_eq!(step.undo, Some(Action::MoveLeaderKey { from: "db2".into(), to: "db1".into() }), "back if abandoned");
    // Before the point of no return, in the promotion's group (its guards read one look).
    assert!(!step.commits && step.alongside && p.steps[key + 1..promote].iter().all(|s| s.alongside), "{p}");
    assert!(p.to_string().contains("move the agents' leader key from db1 to db2"), "{p}");
    // Without [ha], no such step.
    let plain = switchover(&async_cluster(), &streaming_cluster(), &SwitchoverRequest { to: "db2".into() }).unwrap();
    assert!(!plain.steps.iter().any(|s| matches!(s.action, Action::MoveLeaderKey { .. })), "{plain}");
}

#[test]
fn an_interrupted_ha_switchover_converges_the_key_onto_the_writable_node() {
    // db2 was promoted, the record still names db1.
    let o = obs(vec![stopped("db1"), primary("db2", 200), standby("db3", 100)]);
    let p = switchover(&ha_cluster(), &o, &SwitchoverRequest { to: "db2".into() }).unwrap();
    assert_eq!(p.steps[0].action, Action::MoveLeaderKey { from: "db1".into(), to: "db2".into() }, "{p}");
}

#[test]
fn an_ha_restart_plan_says_what_happens_to_the_agents() {
    let mut o = streaming_cluster();
    for n in &mut o.nodes {
        n.settings = Some(crate::observe::RestartSettings { pending_restart: Some(vec!["shared_buffers".into()]), limits: vec![] });
    }
    let req = RestartRequest::all(RestartMode::Rolling { switch_back: true });
    let p = restart(&ha_cluster(), &o, &req).unwrap();
    assert!(p.warnings.iter().any(|w| w == restart::HA_NOTE), "{p}");
    assert!(!restart(&async_cluster(), &o, &req).unwrap().warnings.iter().any(|w| w == restart::HA_NOTE));
}

/// With pgBackRest (only the primary archives), a failover and a switchover hand the old
/// timeline's unarchived segments to the new primary's archiver, after its promotion and
/// before the CHECKPOINT that could remove them; with the other tools (every node
/// archives) or no `[backup]`, no such step.
#[test]
fn pgbackrest_promotions_archive_the_old_timeline() {
    let mut c = async_cluster();
    let fo_obs = || obs(vec![stopped("db1"), standby("db2", 100), standby("db3", 200)]);
    let so = SwitchoverRequest { to: "db2".into() };
    for p in [failover(&c, &fo_obs(), &fo(None, false)).unwrap(), switchover(&c, &streaming_cluster(), &so).unwrap()] {
        assert!(!p.steps.iter().any(|s| s.action == Action::ArchiveOldTimeline), "{p}");
    }
    let mut b = crate::spec::BackupSpec::barman_cloud("bk");
    c.backup = Some(b.clone());
    assert!(!failover(&c, &fo_obs(), &fo(None, false)).unwrap().steps.iter().any(|s| s.action == Action::ArchiveOldTimeline));
    b.tool = crate::spec::BackupTool::Pgbackrest;
    c.backup = Some(b);
    for (p, to) in
        [(failover(&c, &fo_obs(), &fo(None, false)).unwrap(), "db3"), (switchover(&c, &streaming_cluster(), &so).unwrap(), "db2")]
    {
        let at = |a: Action| p.steps.iter().position(|s| s.action == a && s.node == to).unwrap_or_else(|| panic!("{a} on {to}: {p}"));
        let (promote, archive, checkpoint) = (at(Action::Promote), at(Action::ArchiveOldTimeline), at(Action::CheckpointAfterPromotion));
        assert!(promote < archive && archive < checkpoint, "{p}");
        assert!(p.steps[archive].best_effort && !p.steps[archive].alongside, "{p}");
    }
}
