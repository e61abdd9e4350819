//! The agent's decision over observed nodes and store views: one case per rule, and
//! property tests over random states of three agents deciding on the same view.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::cluster::Cluster;
use crate::lsn::Lsn;
use crate::observe::{DataDirState, Observed, ServerState};
use crate::plan::Action;
use crate::spec::SyncMode;
use crate::store::view::Versioned;
use crate::store::{HaSettings, LeaderRecord, MemberRecord, MemberRole, PositionRecord, StoreView};
use crate::topology::{SyncRecord, Topology};

fn cluster(sync: &str) -> Cluster {
    let spec = crate::ClusterSpec::from_toml(&format!(
        "name = \"t\"\npostgres = \"16\"\n[replication]\nsync = {sync}\n[ha.etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n[[nodes]]\nname = \"db1\"\nrole = \"primary\"\n[[nodes]]\nname = \"db2\"\nrole = \"standby\"\n[[nodes]]\nname = \"db3\"\nrole = \"standby\"\n"
    ))
    .unwrap();
    spec.validate().unwrap()
}

use crate::observe::fixtures::{primary, standby};

fn stopped(name: &str, standby: bool) -> Observed {
    let mut o = Observed::unknown(name);
    o.host_reachable = true;
    o.server = ServerState::Stopped;
    o.data_dir = Some(DataDirState::Cluster);
    o.standby_configured = Some(standby);
    o
}

const LEASE: i64 = 7;

fn fresh() -> LeaseClock {
    LeaseClock { id: Some(LEASE), since_renewal: Some(Duration::from_millis(100)) }
}

fn stale() -> LeaseClock {
    LeaseClock { id: Some(LEASE), since_renewal: Some(Duration::from_millis(2500)) }
}

fn v<T>(value: T, lease: Option<i64>) -> Versioned<T> {
    Versioned { value, mod_revision: 10, lease }
}

fn view(leader: Option<(&str, i64)>, members: Vec<MemberRecord>) -> StoreView {
    StoreView {
        revision: 20,
        leader: leader.map(|(n, l)| v(LeaderRecord { node: n.into(), timeline: Some(1) }, Some(l))),
        members: members.into_iter().map(|m| (m.node.clone(), v(m, Some(1)))).collect::<BTreeMap<_, _>>(),
        config: Some(v(HaSettings::default(), None)),
        ..StoreView::default()
    }
}

fn member(node: &str, role: MemberRole, lsn: u64, leader_seen: Option<&str>) -> MemberRecord {
    let mut m = MemberRecord::new(node, role);
    m.lsn = Some(Lsn(lsn));
    m.timeline = Some(1);
    m.leader_seen = leader_seen.map(String::from);
    m
}

/// One decision of an agent that has seen a leader since it started (the usual case).
fn run(c: &Cluster, me: &str, local: &Observed, store: Result<&StoreView, &str>, lease: LeaseClock) -> Decision {
    decide(&AgentInput { me, cluster: c, local, store, lease, memory: &AgentMemory { saw_leader: true, ..AgentMemory::default() } })
}

fn fences(d: &Decision, me: &str) -> bool {
    d.plan.as_ref().is_some_and(|p| p.steps.iter().any(|s| s.node == me && s.action == Action::Fence))
}

fn promotes(d: &Decision, me: &str) -> bool {
    d.plan.as_ref().is_some_and(|p| p.steps.iter().any(|s| s.node == me && s.action == Action::Promote))
}

#[test]
fn the_primary_holding_its_lease_does_nothing_but_keeps_the_guard_armed() {
    let c = cluster("{ mode = \"off\" }");
    let d = run(&c, "db1", &primary("db1", 100), Ok(&view(Some(("db1", LEASE)), vec![])), fresh());
    assert!(d.plan.is_none() && d.store.is_none(), "{d:?}");
    assert_eq!(d.guard, GuardMode::Arm);
}

#[test]
fn a_primary_whose_lease_is_stale_stops_at_once() {
    let c = cluster("{ mode = \"off\" }");
    let d = run(&c, "db1", &primary("db1", 100), Ok(&view(Some(("db1", LEASE)), vec![])), stale());
    assert!(fences(&d, "db1"), "{d:?}");
    // The store unreachable: writes go on until the deadline, then stop.
    let d = run(&c, "db1", &primary("db1", 100), Err("timeout"), fresh());
    assert!(!fences(&d, "db1") && d.guard == GuardMode::Arm, "{d:?}");
    let d = run(&c, "db1", &primary("db1", 100), Err("timeout"), stale());
    assert!(fences(&d, "db1"), "{d:?}");
}

#[test]
fn a_writable_node_under_another_leader_stops_at_once_then_rejoins() {
    let c = cluster("{ mode = \"off\" }");
    let vw = view(Some(("db2", 9)), vec![member("db2", MemberRole::Primary, 200, Some("db2"))]);
    let d = run(&c, "db1", &primary("db1", 100), Ok(&vw), fresh());
    assert!(fences(&d, "db1"), "{d:?}");
    let d = run(&c, "db1", &stopped("db1", false), Ok(&vw), fresh());
    let p = d.plan.expect("a rejoin");
    assert!(p.steps.iter().any(|s| s.node == "db1" && matches!(s.action, Action::Rejoin { .. })), "{p}");
    assert!(p.steps.iter().all(|s| s.node == "db1" || s.node == "t"), "only its own steps: {p}");
}

#[test]
fn the_most_advanced_standby_races_and_the_others_yield() {
    let c = cluster("{ mode = \"off\" }");
    let vw = view(None, vec![member("db2", MemberRole::Standby, 300, None), member("db3", MemberRole::Standby, 200, None)]);
    let d2 = run(&c, "db2", &standby("db2", 300), Ok(&vw), fresh());
    let d3 = run(&c, "db3", &standby("db3", 200), Ok(&vw), fresh());
    assert_eq!(d2.store, Some(StoreOp::TakeLeader), "{d2:?}");
    assert_eq!(d3.store, None, "{d3:?}");
    // A member that has not reported since the leader went away holds the race.
    let vw = view(None, vec![member("db2", MemberRole::Standby, 300, None), member("db3", MemberRole::Standby, 200, Some("db1"))]);
    assert_eq!(run(&c, "db2", &standby("db2", 300), Ok(&vw), fresh()).store, None);
}

#[test]
fn a_tie_goes_to_the_standby_in_the_old_primarys_location() {
    let spec = crate::ClusterSpec::from_toml(
        "name = \"t\"\npostgres = \"16\"\n[ha.etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n\
         [[nodes]]\nname = \"db1\"\nrole = \"primary\"\nlocation = \"east\"\n\
         [[nodes]]\nname = \"db2\"\nrole = \"standby\"\nlocation = \"west\"\npriority = 200\n\
         [[nodes]]\nname = \"db3\"\nrole = \"standby\"\nlocation = \"east\"\n",
    )
    .unwrap();
    let c = spec.validate().unwrap();
    let vw = view(None, vec![member("db2", MemberRole::Standby, 300, None), member("db3", MemberRole::Standby, 300, None)]);
    let d2 = run(&c, "db2", &standby("db2", 300), Ok(&vw), fresh());
    let d3 = run(&c, "db3", &standby("db3", 300), Ok(&vw), fresh());
    assert_eq!(d3.store, Some(StoreOp::TakeLeader), "{d3:?}");
    assert_eq!(d2.store, None, "{d2:?}");
    assert!(d2.why.contains("db3"), "{}", d2.why);
    // Further ahead in the other location: that one, whatever the location.
    let vw = view(None, vec![member("db2", MemberRole::Standby, 301, None), member("db3", MemberRole::Standby, 300, None)]);
    let d2 = run(&c, "db2", &standby("db2", 301), Ok(&vw), fresh());
    let d3 = run(&c, "db3", &standby("db3", 300), Ok(&vw), fresh());
    assert_eq!(d2.store, Some(StoreOp::TakeLeader), "{d2:?}");
    assert_eq!(d3.store, None, "{d3:?}");
}

#[test]
fn a_standby_too_far_behind_does_not_race() {
    let c = cluster("{ mode = \"off\" }");
    let mut vw = view(None, vec![member("db2", MemberRole::Standby, 300, None)]);
    vw.position = Some(v(PositionRecord { node: "db1".into(), timeline: Some(1), lsn: Lsn(300 + (2 << 20)) }, None));
    let d = run(&c, "db2", &standby("db2", 300), Ok(&vw), fresh());
    assert_eq!(d.store, None, "{d:?}");
    assert!(d.why.contains("maximum_lag_on_failover"), "{}", d.why);
}

#[test]
fn in_synchronous_mode_only_a_member_of_the_set_races() {
    let c = cluster("{ mode = \"first\", count = 1 }");
    let mut vw = view(None, vec![member("db2", MemberRole::Standby, 100, None), member("db3", MemberRole::Standby, 300, None)]);
    vw.sync = Some(v(SyncRecord { primary: "db1".into(), mode: SyncMode::First, count: 1, standbys: vec!["db2".into()] }, None));
    let d2 = run(&c, "db2", &standby("db2", 100), Ok(&vw), fresh());
    let d3 = run(&c, "db3", &standby("db3", 300), Ok(&vw), fresh());
    assert_eq!(d2.store, Some(StoreOp::TakeLeader), "{d2:?}");
    assert_eq!(d3.store, None, "{d3:?}");
    // ANY 1 of (db2, db3): db3 gone, db2 alone cannot know it has every acknowledged commit.
    vw.sync =
        Some(v(SyncRecord { primary: "db1".into(), mode: SyncMode::Any, count: 1, standbys: vec!["db2".into(), "db3".into()] }, None));
    vw.members.remove("db3");
    let d2 = run(&c, "db2", &standby("db2", 100), Ok(&vw), fresh());
    assert_eq!(d2.store, None, "{d2:?}");
}

#[test]
fn the_winner_promotes_with_the_failover_planners_steps_on_its_own_node() {
    let c = cluster("{ mode = \"off\" }");
    let vw = view(Some(("db2", LEASE)), vec![member("db3", MemberRole::Standby, 200, None)]);
    let d = run(&c, "db2", &standby("db2", 300), Ok(&vw), fresh());
    assert!(promotes(&d, "db2"), "{d:?}");
    assert_eq!(d.guard, GuardMode::Arm, "armed before the promotion");
    let p = d.plan.unwrap();
    assert!(p.steps.iter().all(|s| s.node == "db2" || s.node == "t"), "{p}");
    assert!(p.steps.iter().any(|s| matches!(&s.action, Action::RecordFenced { nodes } if nodes == &["db1".to_string()])), "{p}");
    // The others follow it once it accepts writes, rendered for the cluster it leads.
    let d = run(&c, "db3", &standby("db3", 200), Ok(&vw), fresh());
    assert!(d.plan.is_none(), "not before it reports as the primary: {d:?}");
    let mut vw = vw;
    vw.members.insert("db2".into(), v(member("db2", MemberRole::Primary, 400, Some("db2")), Some(LEASE)));
    let d = run(&c, "db3", &standby("db3", 200), Ok(&vw), fresh());
    let p = d.plan.expect("a repoint");
    assert!(p.steps.iter().any(|s| s.action == Action::Repoint { upstream: "db2".into() }), "{p}");
    assert_eq!(p.after.as_ref().map(|c| c.primary().name.as_str()), Some("db2"));
}

#[test]
fn a_crashed_leader_restarts_in_place_then_releases_the_key_after_failed_starts() {
    let c = cluster("{ mode = \"off\" }");
    let vw = view(Some(("db1", LEASE)), vec![]);
    let d = run(&c, "db1", &stopped("db1", false), Ok(&vw), fresh());
    assert!(d.plan.as_ref().is_some_and(|p| p.steps.iter().any(|s| s.action == Action::Start)), "{d:?}");
    let mem = AgentMemory { start_failures: MAX_START_FAILURES, ..AgentMemory::default() };
    let d = decide(&AgentInput { me: "db1", cluster: &c, local: &stopped("db1", false), store: Ok(&vw), lease: fresh(), memory: &mem });
    assert!(matches!(d.store, Some(StoreOp::ReleaseLeader { .. })), "{d:?}");
}

#[test]
fn the_bootstrap_leader_key_is_adopted_and_pause_changes_nothing() {
    let c = cluster("{ mode = \"off\" }");
    let d = run(&c, "db1", &primary("db1", 100), Ok(&view(Some(("db1", 99)), vec![])), fresh());
    assert!(matches!(d.store, Some(StoreOp::AdoptLeader { .. })), "{d:?}");
    let mut vw = view(None, vec![member("db2", MemberRole::Standby, 300, None)]);
    vw.config = Some(v(HaSettings { paused: true, ..HaSettings::default() }, None));
    let d = run(&c, "db2", &standby("db2", 300), Ok(&vw), fresh());
    assert!(d.store.is_none() && d.plan.is_none(), "{d:?}");
}

// ---- properties -------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct World {
    locals: Vec<Observed>,
    leader: Option<usize>,
    reported: Vec<bool>,
    sync: Option<(SyncMode, u32, Vec<usize>)>,
    fenced: Vec<bool>,
    lease_fresh: Vec<bool>,
}

const NAMES: [&str; 3] = ["db1", "db2", "db3"];

fn arb_local(name: &'static str) -> impl Strategy<Value = Observed> {
    (0u8..4, 1u64..5, any::<bool>()).prop_map(move |(k, lsn, standby_conf)| match k {
        0 => primary(name, lsn * 100),
        1 | 2 => standby(name, lsn * 100),
        _ => stopped(name, standby_conf),
    })
}

fn arb_world() -> impl Strategy<Value = World> {
    (
        (arb_local("db1"), arb_local("db2"), arb_local("db3")),
        prop::option::of(0usize..3),
        prop::collection::vec(any::<bool>(), 3),
        prop::option::of((
            prop::sample::select(vec![SyncMode::First, SyncMode::Any]),
            1u32..3,
            prop::sample::subsequence(vec![0usize, 1, 2], 1..3),
        )),
        prop::collection::vec(prop::bool::weighted(0.2), 3),
        prop::collection::vec(prop::bool::weighted(0.8), 3),
    )
        .prop_map(|((a, b, c), leader, reported, sync, fenced, lease_fresh)| World {
            locals: vec![a, b, c],
            leader,
            reported,
            sync: sync.map(|(m, n, s)| (m, n.min(s.len() as u32), s)),
            fenced,
            lease_fresh,
        })
}

fn view_of(w: &World) -> StoreView {
    let members = (0..3)
        .filter(|&k| w.leader != Some(k) || w.locals[k].writable())
        .map(|k| {
            let o = &w.locals[k];
            let role = MemberRole::of(o);
            let seen = if w.reported[k] { w.leader.map(|l| NAMES[l]) } else { Some("db1") };
            member(NAMES[k], role, o.position().map(|l| l.0).unwrap_or(0), seen)
        })
        .collect();
    let mut vw = view(w.leader.map(|l| (NAMES[l], LEASE + l as i64)), members);
    vw.sync = w.sync.as_ref().map(|(m, n, s)| {
        v(SyncRecord { primary: "db1".into(), mode: *m, count: *n, standbys: s.iter().map(|&k| NAMES[k].to_string()).collect() }, None)
    });
    let fenced: Vec<String> = (0..3).filter(|&k| w.fenced[k]).map(|k| NAMES[k].to_string()).collect();
    vw.topology = Some(v(Topology { fenced, ..Topology::default() }, None));
    vw
}

fn decide_all(c: &Cluster, w: &World, vw: &StoreView) -> Vec<Decision> {
    (0..3)
        .map(|k| {
            let lease = LeaseClock {
                id: Some(LEASE + k as i64),
                since_renewal: Some(Duration::from_millis(if w.lease_fresh[k] { 100 } else { 2500 })),
            };
            decide(&AgentInput { me: NAMES[k], cluster: c, local: &w.locals[k], store: Ok(vw), lease, memory: &AgentMemory::default() })
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    /// With no leader key, at most one standby races, and in synchronous mode only a
    /// member of the set, whose reported positions cover every acknowledged commit.
    #[test]
    fn at_most_one_racer_and_never_outside_the_sync_set(mut w in arb_world()) {
        w.leader = None;
        let c = cluster("{ mode = \"off\" }");
        let vw = view_of(&w);
        let ds = decide_all(&c, &w, &vw);
        let racers: Vec<usize> = (0..3).filter(|&k| ds[k].store == Some(StoreOp::TakeLeader) && w.locals[k].standby()).collect();
        prop_assert!(racers.len() <= 1, "racers {:?}: {:?}", racers, ds.iter().map(|d| &d.why).collect::<Vec<_>>());
        if let (Some(&r), Some((_, _, set))) = (racers.first(), &w.sync) {
            prop_assert!(set.contains(&r), "{} raced outside the set {:?}", NAMES[r], set);
        }
        for &r in &racers {
            prop_assert!(!w.fenced[r], "a fenced node raced");
        }
    }

    /// A node accepting writes is stopped at once unless it holds the leader key with a
    /// fresh lease (or races for an absent key with one); nothing is ever started or
    /// promoted except by the key's holder.
    #[test]
    fn never_writable_without_the_key_and_a_fresh_lease(w in arb_world()) {
        let c = cluster("{ mode = \"off\" }");
        let vw = view_of(&w);
        let ds = decide_all(&c, &w, &vw);
        for k in 0..3 {
            let d = &ds[k];
            let holds = w.leader == Some(k);
            if w.locals[k].writable() && (!w.lease_fresh[k] || (w.leader.is_some() && !holds)) {
                prop_assert!(fences(d, NAMES[k]), "{} writable without the key or a fresh lease: {}", NAMES[k], d.why);
            }
            if promotes(d, NAMES[k]) {
                prop_assert!(holds, "{} promotes without the key", NAMES[k]);
                prop_assert_eq!(d.guard, GuardMode::Arm);
            }
            if let Some(p) = &d.plan {
                prop_assert!(p.steps.iter().all(|s| s.node == NAMES[k] || s.node == "t"), "{} plans for others: {}", NAMES[k], p);
            }
        }
    }

    /// The store unreachable: no agent races, and no writable node outlives its deadline.
    #[test]
    fn no_store_no_promotion(w in arb_world()) {
        let c = cluster("{ mode = \"off\" }");
        for (k, name) in NAMES.iter().enumerate() {
            let lease = LeaseClock { id: Some(LEASE), since_renewal: Some(Duration::from_millis(if w.lease_fresh[k] { 100 } else { 2500 })) };
            let d = decide(&AgentInput { me: name, cluster: &c, local: &w.locals[k], store: Err("no quorum"), lease, memory: &AgentMemory::default() });
            prop_assert!(d.store.is_none());
            prop_assert!(!promotes(&d, name));
            if w.locals[k].writable() && !w.lease_fresh[k] {
                prop_assert!(fences(&d, name));
            }
        }
    }
}

fn request(to: &str, from: &str) -> Versioned<crate::store::SwitchoverRequest> {
    v(crate::store::SwitchoverRequest { to: to.into(), from: from.into(), refused: None }, None)
}

#[test]
fn a_switchover_request_stops_the_leader_cleanly_then_hands_the_key_over() {
    let c = cluster("{ mode = \"off\" }");
    let mut db2 = member("db2", MemberRole::Standby, 100, Some("db1"));
    db2.streaming = true;
    let mut vw = view(Some(("db1", LEASE)), vec![db2, member("db3", MemberRole::Standby, 100, Some("db1"))]);
    vw.switchover = Some(request("db2", "db1"));
    let d = run(&c, "db1", &primary("db1", 100), Ok(&vw), fresh());
    let p = d.plan.expect("a clean stop");
    assert!(p.steps.iter().any(|s| s.action == Action::StopClean), "{p}");
    // Stopped cleanly: the key goes to db2, on db2's lease.
    let mut down = stopped("db1", false);
    down.control_state = Some(crate::pgcontrol::DbState::ShutDown);
    let d = run(&c, "db1", &down, Ok(&vw), fresh());
    assert!(matches!(&d.store, Some(StoreOp::HandOver { to, lease: 1, .. }) if to == "db2"), "{d:?}");
    // Crashed instead (not a clean shutdown): started again in place, no hand-over.
    let d = run(&c, "db1", &stopped("db1", false), Ok(&vw), fresh());
    assert!(d.store.is_none() && d.plan.is_some_and(|p| p.steps.iter().any(|s| s.action == Action::Start)));
    // db3 does not stream: refused, with the reason.
    vw.switchover = Some(request("db3", "db1"));
    let d = run(&c, "db1", &primary("db1", 100), Ok(&vw), fresh());
    assert!(matches!(&d.store, Some(StoreOp::RefuseSwitchover { reason, .. }) if reason.contains("not a streaming standby")), "{d:?}");
    // Done: the new leader clears it.
    let mut vw = view(Some(("db2", LEASE)), vec![]);
    vw.switchover = Some(request("db2", "db1"));
    let d = run(&c, "db2", &primary("db2", 300), Ok(&vw), fresh());
    assert!(matches!(d.store, Some(StoreOp::ClearSwitchover { .. })), "{d:?}");
}

/// A view after db1 failed over to db2 (timeline 2), db2 gone again.
fn after_failover_to_db2(members: Vec<MemberRecord>) -> StoreView {
    use crate::topology::{Promotion, PromotionKind};
    let mut vw = view(None, members);
    let promotion = Promotion {
        node: "db2".into(),
        from: "db1".into(),
        kind: PromotionKind::Failover,
        timeline: Some(2),
        lsn: Some("0/12C".into()),
        at: 0,
        millis: 300,
    };
    vw.topology = Some(v(Topology { primary: Some("db2".into()), history: vec![promotion], ..Topology::default() }, None));
    vw
}

#[test]
fn a_standby_left_on_an_older_timeline_does_not_race_for_a_key_it_cannot_use() {
    let c = cluster("{ mode = \"off\" }");
    // db3 still on timeline 1 while the cluster moved to 2: it could never promote, so
    // it does not take the key (and release it, over and over).
    let vw = after_failover_to_db2(vec![member("db3", MemberRole::Standby, 300, None)]);
    let mut me = standby("db3", 300);
    me.timeline = Some(1);
    let d = run(&c, "db3", &me, Ok(&vw), fresh());
    assert!(d.store.is_none(), "{d:?}");
    assert!(d.why.contains("on timeline 1, the cluster is on 2"), "{}", d.why);
    me.timeline = Some(2);
    let d = run(&c, "db3", &me, Ok(&vw), fresh());
    assert_eq!(d.store, Some(StoreOp::TakeLeader), "on the cluster's timeline it races: {d:?}");
}

#[test]
fn the_recorded_primary_stopped_takes_the_key_back_over_standbys_on_an_older_timeline() {
    let c = cluster("{ mode = \"off\" }");
    // db2 (the recorded primary, timeline 2) stopped: its timeline is not observed; db3
    // reports timeline 1. db2 is not behind db3: it takes the key to start again.
    let vw = after_failover_to_db2(vec![member("db3", MemberRole::Standby, 300, None)]);
    let d = run(&c, "db2", &stopped("db2", false), Ok(&vw), fresh());
    assert_eq!(d.store, Some(StoreOp::TakeLeader), "{d:?}");
    // A member on a newer timeline than the recorded one: db2 waits.
    let mut newer = member("db3", MemberRole::Standby, 300, None);
    newer.timeline = Some(3);
    let vw = after_failover_to_db2(vec![newer]);
    let d = run(&c, "db2", &stopped("db2", false), Ok(&vw), fresh());
    assert!(d.store.is_none() && d.why.contains("newer timeline"), "{d:?}");
}

#[test]
fn a_standby_past_the_fork_of_the_new_leaders_timeline_rejoins_instead_of_following() {
    let c = cluster("{ mode = \"off\" }");
    let mut leader = member("db2", MemberRole::Primary, 500, Some("db2"));
    leader.timeline = Some(2);
    let mut vw = after_failover_to_db2(vec![leader]);
    vw.leader = Some(v(LeaderRecord { node: "db2".into(), timeline: Some(2) }, Some(9)));
    // db3 received WAL of the old primary past 0/12C (300), where db2's timeline forked.
    let mut me = standby("db3", 400);
    me.timeline = Some(1);
    let d = run(&c, "db3", &me, Ok(&vw), fresh());
    let p = d.plan.as_ref().expect("a plan");
    assert!(p.steps.iter().any(|s| matches!(s.action, Action::Rejoin { .. })), "{d:?}");
    assert!(p.steps.iter().all(|s| s.node == "db3" || s.node == "t"), "its own steps only: {p}");
    // At the fork point it simply follows.
    let me = {
        let mut m = standby("db3", 300);
        m.timeline = Some(1);
        m
    };
    let d = run(&c, "db3", &me, Ok(&vw), fresh());
    let p = d.plan.as_ref().expect("a plan");
    assert!(p.steps.iter().any(|s| matches!(s.action, Action::Repoint { .. })), "{d:?}");
}

#[test]
fn a_fresh_agent_of_a_streaming_standby_leaves_the_key_to_the_live_primary() {
    let c = cluster("{ mode = \"off\" }");
    // The agents all starting, no leader key, the primary's agent not reported yet.
    let vw = view(None, vec![member("db3", MemberRole::Standby, 300, None)]);
    let mut me = standby("db3", 300);
    me.receiver = Some("streaming".into());
    let fresh = AgentMemory::default();
    let d = decide(&AgentInput { me: "db3", cluster: &c, local: &me, store: Ok(&vw), lease: fresh_clock(), memory: &fresh });
    assert!(d.store.is_none(), "{d:?}");
    assert!(d.why.contains("streams from a live primary"), "{}", d.why);
    // Once it has seen a leader, a vanished key is a failover: it races.
    let d = run(&c, "db3", &me, Ok(&vw), fresh_clock());
    assert_eq!(d.store, Some(StoreOp::TakeLeader), "{d:?}");
}

fn fresh_clock() -> LeaseClock {
    fresh()
}
