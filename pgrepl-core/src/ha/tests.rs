use super::*;
use crate::spec::SyncCommit;

/// A small deterministic generator for property tests (no extra dependency).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn view(name: &str, recv: Option<u64>, replay: Option<u64>, prio: u32) -> CandidateView {
    CandidateView {
        node: name.into(),
        priority: prio,
        same_location: false,
        answered: true,
        in_recovery: true,
        fenced: false,
        timeline: Some(1),
        receive_lsn: recv.map(Lsn),
        replay_lsn: replay.map(Lsn),
        eligible: false,
        note: None,
    }
}

#[test]
fn the_most_wal_wins_then_replay_then_priority_then_name() {
    let mut v = vec![view("db2", Some(100), Some(90), 100), view("db3", Some(120), Some(80), 50)];
    let i = choose_candidate(&mut v, Some(1), None, false).unwrap();
    assert_eq!(v[i].node, "db3");
    let mut v = vec![view("db2", Some(100), Some(90), 100), view("db3", Some(100), Some(95), 50)];
    let i = choose_candidate(&mut v, Some(1), None, false).unwrap();
    assert_eq!(v[i].node, "db3");
    let mut v = vec![view("db2", Some(100), Some(90), 100), view("db3", Some(100), Some(90), 150)];
    let i = choose_candidate(&mut v, Some(1), None, false).unwrap();
    assert_eq!(v[i].node, "db3");
    let mut v = vec![view("db3", Some(100), Some(90), 100), view("db2", Some(100), Some(90), 100)];
    let i = choose_candidate(&mut v, Some(1), None, false).unwrap();
    assert_eq!(v[i].node, "db2");
}

#[test]
fn the_old_primarys_location_wins_a_tie_of_wal_never_more() {
    // Same WAL received: the standby in the old primary's location, over more replayed
    // and a higher priority.
    let mut v = vec![view("db2", Some(100), Some(100), 200), view("db3", Some(100), Some(50), 50)];
    v[1].same_location = true;
    let i = choose_candidate(&mut v, Some(1), None, false).unwrap();
    assert_eq!(v[i].node, "db3");
    // More WAL elsewhere: that one (promoting the near one would discard it).
    let mut v = vec![view("db2", Some(101), Some(100), 100), view("db3", Some(100), Some(100), 100)];
    v[1].same_location = true;
    let i = choose_candidate(&mut v, Some(1), None, false).unwrap();
    assert_eq!(v[i].node, "db2");
}

#[test]
fn ineligible_standbys_are_explained() {
    let mut v = vec![view("db2", Some(100), Some(90), 100), view("db3", Some(500), None, 100), view("db4", Some(900), None, 100)];
    v[1].timeline = Some(0);
    v[2].fenced = true;
    let i = choose_candidate(&mut v, Some(1), None, false).unwrap();
    assert_eq!(v[i].node, "db2");
    assert!(v[1].note.as_deref().unwrap().contains("timeline"));
    assert!(v[2].note.as_deref().unwrap().contains("fenced"));
    let mut none: Vec<CandidateView> = vec![];
    assert!(choose_candidate(&mut none, None, None, false).unwrap_err().to_string().contains("no standby"));
}

#[test]
fn a_requested_candidate_behind_another_is_refused_unless_forced() {
    let mut v = vec![view("db2", Some(100), Some(100), 100), view("db3", Some(300), Some(300), 100)];
    let e = choose_candidate(&mut v, Some(1), Some("db2"), false).unwrap_err();
    assert!(e.to_string().contains("db2 is 200 bytes behind db3"), "{e}");
    assert_eq!(choose_candidate(&mut v, Some(1), Some("db2"), true).unwrap(), 0);
    assert_eq!(choose_candidate(&mut v, Some(1), Some("db3"), false).unwrap(), 1);
    assert!(choose_candidate(&mut v, Some(1), Some("nope"), false).is_err());
}

/// Property: without --force, the promoted standby is never behind another reachable,
/// eligible standby.
#[test]
fn never_promote_a_candidate_behind_another_reachable_standby() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        let n = 1 + rng.below(5) as usize;
        let mut v: Vec<CandidateView> = (0..n)
            .map(|i| {
                let mut c = view(&format!("db{i}"), None, None, rng.below(3) as u32 * 50);
                c.receive_lsn = (rng.below(5) > 0).then(|| Lsn(rng.below(8)));
                c.replay_lsn = (rng.below(5) > 0).then(|| Lsn(rng.below(8)));
                c.answered = rng.below(6) > 0;
                c.in_recovery = rng.below(8) > 0;
                c.fenced = rng.below(8) == 0;
                c.timeline = Some(1 + (rng.below(6) == 0) as u32);
                c
            })
            .collect();
        let requested = (rng.below(2) == 0).then(|| format!("db{}", rng.below(n as u64)));
        if let Ok(i) = choose_candidate(&mut v, Some(1), requested.as_deref(), false) {
            assert!(v[i].eligible);
            for o in v.iter().filter(|o| o.eligible) {
                assert!(
                    o.position() <= v[i].position(),
                    "{} at {:?} is ahead of chosen {} at {:?}",
                    o.node,
                    o.position(),
                    v[i].node,
                    v[i].position()
                );
            }
        }
    }
}

fn random_state(rng: &mut Rng) -> PeerState {
    match rng.below(6) {
        0 => PeerState::Writable,
        1 => PeerState::ReadOnly,
        2 => PeerState::Stopped,
        3 => PeerState::Unreachable { evidence: vec![] },
        4 => PeerState::Unresponsive,
        _ => PeerState::Unreachable { evidence: vec!["db2 still streams from it".into()] },
    }
}

/// Property: whatever was observed, a fencing plan that allows a promotion stops every
/// other writable (or hung) node first, and only with --force; a node that looks alive
/// but cannot be reached never lets a promotion through, even with --force; the old
/// primary is always recorded as fenced.
#[test]
fn never_two_writable_nodes() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for _ in 0..20_000 {
        let n = 2 + rng.below(4) as usize;
        let peers: Vec<(String, PeerState)> = (0..n).map(|i| (format!("db{i}"), random_state(&mut rng))).collect();
        let old = "db0";
        let cand = format!("db{}", 1 + rng.below(n as u64 - 1));
        let force = rng.below(2) == 0;
        match plan_fencing(old, &cand, &peers, force) {
            Ok(plan) => {
                for (p, st) in &peers {
                    if *p == cand {
                        continue;
                    }
                    if *st == PeerState::Writable || *st == PeerState::Unresponsive {
                        assert!(force, "a writable {p} passed without --force");
                        assert!(plan.stop.contains(p), "writable {p} is not stopped before the promotion");
                    }
                    assert!(
                        !matches!(st, PeerState::Unreachable { evidence } if !evidence.is_empty()),
                        "{p} looks alive, cannot be stopped, and a promotion was planned"
                    );
                }
                assert!(plan.record.iter().any(|p| p == old));
                assert!(!plan.stop.contains(&cand) && !plan.record.contains(&cand));
            }
            Err(e) => {
                assert!(!e.is_empty());
                let stoppable = peers.iter().any(|(p, st)| *p != cand && (*st == PeerState::Writable || *st == PeerState::Unresponsive));
                let unstoppable =
                    peers.iter().any(|(p, st)| *p != cand && matches!(st, PeerState::Unreachable { evidence } if !evidence.is_empty()));
                let unknown_old =
                    peers.iter().any(|(p, st)| p == old && matches!(st, PeerState::Unreachable { evidence } if evidence.is_empty()));
                assert!(unstoppable || ((stoppable || unknown_old) && !force), "refused without a reason: {e:?}");
            }
        }
    }
}

#[test]
fn fencing_of_a_dead_primary_demotes_it_on_disk() {
    let peers = vec![("db1".to_string(), PeerState::Stopped), ("db2".into(), PeerState::ReadOnly), ("db3".into(), PeerState::ReadOnly)];
    let plan = plan_fencing("db1", "db2", &peers, false).unwrap();
    assert_eq!(plan.demote, vec!["db1"]);
    assert_eq!(plan.record, vec!["db1"]);
    assert!(plan.stop.is_empty());
    // Unreachable with no evidence either way: refused, unless the operator forces it
    // (and is told what to do on that host).
    let peers = vec![("db1".to_string(), PeerState::Unreachable { evidence: vec![] }), ("db2".into(), PeerState::ReadOnly)];
    let e = plan_fencing("db1", "db2", &peers, false).unwrap_err();
    assert!(matches!(&e[0], crate::plan::Refusal::UnreachableWithoutEvidence { node } if node == "db1"), "{e:?}");
    let plan = plan_fencing("db1", "db2", &peers, true).unwrap();
    assert_eq!(plan.record, vec!["db1"]);
    assert!(plan.warnings[0].contains("recorded as fenced"));
    let peers = vec![("db1".to_string(), PeerState::Writable), ("db2".into(), PeerState::ReadOnly)];
    let e = plan_fencing("db1", "db2", &peers, false).unwrap_err();
    assert!(e[0].to_string().contains("pgrepl switchover --to db2"), "{e:?}");
}

fn sync(mode: SyncMode, count: u32, names: &[&str]) -> Sync {
    Sync { mode, count, standbys: names.iter().map(|s| s.to_string()).collect(), commit: SyncCommit::On, strict: false }
}

#[test]
fn sync_guarantee_needs_a_quorum_intersection() {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert!(crate::plan::failover::sync_guarantee_of(&sync(SyncMode::First, 1, &["db2", "db3"]), &s(&["db2", "db3"])));
    assert!(!crate::plan::failover::sync_guarantee_of(&sync(SyncMode::First, 1, &["db2", "db3"]), &s(&["db2"])));
    assert!(crate::plan::failover::sync_guarantee_of(&sync(SyncMode::Any, 2, &["db2", "db3"]), &s(&["db3"])));
    assert!(crate::plan::failover::sync_guarantee_of(&sync(SyncMode::Any, 2, &["db2", "db3", "db4"]), &s(&["db2", "db4"])));
    assert!(!crate::plan::failover::sync_guarantee_of(&sync(SyncMode::Any, 1, &["db2", "db3", "db4"]), &s(&["db2", "db4"])));
    assert!(!crate::plan::failover::sync_guarantee_of(&sync(SyncMode::Off, 1, &["db2"]), &s(&["db2"])));
}

#[test]
fn loss_takes_the_furthest_known_position_and_says_where_from() {
    let l = account_loss(Some(Lsn(0x5000)), Some(Lsn(0x4000)), Some(Lsn(0x4800)), Some(Lsn(0x4800)), false);
    assert_eq!(l.source, Some(LsnSource::OldPrimaryWal));
    assert!(l.exact);
    assert_eq!(l.wal_lost_bytes, Some(0x800));
    assert_eq!(l.acknowledged_lost_bytes, Some(0x800));
    let l = account_loss(None, Some(Lsn(0x4000)), Some(Lsn(0x4800)), Some(Lsn(0x4800)), true);
    assert_eq!(l.source, Some(LsnSource::StandbyReceived));
    assert!(!l.exact);
    assert_eq!(l.wal_lost_bytes, Some(0));
    assert_eq!(l.acknowledged_lost_bytes, Some(0));
    assert!(l.explanation.contains("synchronous replication held"));
    let l = account_loss(Some(Lsn(0x5000)), None, None, Some(Lsn(0x4000)), true);
    assert_eq!(l.wal_lost_bytes, Some(0x1000));
    assert_eq!(l.acknowledged_lost_bytes, Some(0), "unacknowledged WAL may be lost, acknowledged commits are not");
    let l = account_loss(None, None, None, None, false);
    assert_eq!(l.wal_lost_bytes, None);
    assert!(l.explanation.contains("unknown"));
}

#[test]
fn divergence_against_the_history() {
    let h = vec![HistoryEntry { parent: 1, switchpoint: Lsn(0x3000) }, HistoryEntry { parent: 2, switchpoint: Lsn(0x5000) }];
    assert_eq!(divergence(3, Lsn(0x9000), 3, &h), Divergence::Follows);
    assert_eq!(divergence(1, Lsn(0x3000), 3, &h), Divergence::Follows);
    assert_eq!(divergence(1, Lsn(0x3100), 3, &h), Divergence::Diverged { bytes: 0x100 });
    assert_eq!(divergence(2, Lsn(0x4000), 3, &h), Divergence::Follows);
    assert_eq!(divergence(4, Lsn(0x4000), 3, &h), Divergence::ForeignTimeline);
    assert_eq!(divergence(7, Lsn(0x10), 9, &h), Divergence::ForeignTimeline);
}

fn cluster(sync_mode: &str) -> Cluster {
    let spec = crate::ClusterSpec::from_toml(&format!(
        "name = \"t\"\npostgres = \"16\"\n[replication]\nsync = {sync_mode}\n[[nodes]]\nname = \"db1\"\nrole = \"primary\"\n[[nodes]]\nname = \"db2\"\nrole = \"standby\"\n[[nodes]]\nname = \"db3\"\nrole = \"standby\"\n"
    ))
    .unwrap();
    spec.validate().unwrap()
}

#[test]
fn fenced_nodes_leave_the_synchronous_standbys() {
    let mut c = cluster("{ mode = \"first\", count = 1 }").with_primary("db2").unwrap();
    assert_eq!(c.replication.sync.standbys, vec!["db1", "db3"]);
    assert_eq!(exclude_from_sync(&mut c, &["db1".into()]), None, "one left is enough for count 1");
    assert_eq!(c.replication.sync.standbys, vec!["db3"]);
    let d = exclude_from_sync(&mut c, &["db3".into()]).unwrap();
    assert!(d.contains("asynchronous"), "{d}");
    assert_eq!(c.replication.sync.mode, SyncMode::Off);

    let mut c = cluster("{ mode = \"any\", count = 2 }");
    let d = exclude_from_sync(&mut c, &["db3".into()]).unwrap();
    assert!(d.contains("only 1 available"), "{d}");
    assert_eq!((c.replication.sync.count, c.replication.sync.standbys.clone()), (1, vec!["db2".to_string()]));
    let mut c = cluster("{ mode = \"any\", count = 1 }");
    assert_eq!(exclude_from_sync(&mut c, &[]), None);
}

#[test]
fn marks_for_status() {
    use crate::status::{ConnectionStrings, NodeStatus};
    let node = |name: &str, role: &str, tl: u32, streaming: Option<bool>| NodeStatus {
        name: name.into(),
        spec_role: if name == "db1" { Role::Primary } else { Role::Standby },
        endpoint: String::new(),
        state: NodeState::Running,
        role: Some(role.into()),
        timeline: Some(tl),
        lsn: None,
        receive_lsn: None,
        lag_bytes: None,
        lag_seconds: None,
        streaming,
        sync_state: None,
        slot: None,
        slot_active: None,
        upstream: None,
        error: None,
        pending_restart: None,
    };
    let status = StatusReport {
        cluster: "t".into(),
        major: None,
        nodes: vec![node("db1", "primary", 1, None), node("db2", "primary", 2, None), node("db3", "standby", 1, Some(false))],
        problems: vec![],
        connections: ConnectionStrings { read_write: String::new(), read_only: String::new() },
    };
    let topo = Topology {
        primary: Some("db2".into()),
        timeline: Some(2),
        fenced: vec!["db1".into()],
        last_primary_lsn: None,
        sync: None,
        history: Vec::new(),
    };
    let m = mark_nodes(&status, &topo);
    assert_eq!(m.len(), 2);
    assert!(m[0].fenced && m[0].diverged, "{m:?}");
    assert!(m[1].old_timeline && m[1].diverged, "{m:?}");
}

#[test]
fn from_its_own_host_a_node_is_rewound_only_across_timelines() {
    use super::rejoin::{own_host_method, parse_identify_system};
    assert_eq!(parse_identify_system("7324198453212345678|2|0/5044B38|\n"), Some((7324198453212345678, 2)));
    assert_eq!(parse_identify_system("garbage"), None);
    assert_eq!(own_host_method(1, 1, 1, 2).0, Some(RejoinMethod::Rewound));
    // Its own WAL on the primary's timeline: invisible to pg_rewind, so never rewound.
    let (m, why) = own_host_method(1, 2, 1, 2);
    assert_eq!(m, Some(RejoinMethod::Recloned), "{why}");
    assert_eq!(own_host_method(1, 1, 9, 2).0, Some(RejoinMethod::Recloned), "another system");
    let (m, why) = own_host_method(1, 3, 1, 2);
    assert!(m.is_none() && why.contains("ahead"), "{why}");
}
