//! Tests of the upgrade planner.

use super::*;
use crate::{ClusterSpec, NodeSpec};

fn cluster() -> Cluster {
    ClusterSpec::builder("c")
        .postgres(PgMajor::V14)
        .node(NodeSpec::primary("db1"))
        .node(NodeSpec::standby("db2"))
        .node(NodeSpec::standby("db3"))
        .into_spec()
        .validate()
        .unwrap()
}

fn node(name: &str, primary: bool) -> NodeFacts {
    NodeFacts {
        node: name.into(),
        unreachable: None,
        running: true,
        in_recovery: Some(!primary),
        streaming: !primary,
        data_dir: format!("/w/{name}/data"),
        kept_as: format!("/w/{name}/data-14.old"),
        kept_exists: false,
        layout_problem: None,
        new_binaries: Ok(PgMajor::V16),
        disk: Some((1 << 30, 10 << 30)),
        debian: None,
    }
}

fn facts() -> UpgradeFacts {
    UpgradeFacts {
        from: Some(PgMajor::V14),
        primary: "db1".into(),
        ha: false,
        agents_held: false,
        spec_problem: None,
        nodes: vec![node("db1", true), node("db2", false), node("db3", false)],
        logical_slots: vec![],
        other_physical_slots: vec![],
        missing_extensions: vec![],
        check: CheckOutcome::Passed,
        init: Ok(InitSettings {
            encoding: "UTF8".into(),
            lc_collate: "C".into(),
            lc_ctype: "C".into(),
            checksums: true,
            superuser: "postgres".into(),
        }),
        auto_conf_settings: vec![],
    }
}

const COPY: UpgradeRequest = UpgradeRequest { to: PgMajor::V16, link: false };
const LINK: UpgradeRequest = UpgradeRequest { to: PgMajor::V16, link: true };

fn problems(r: Result<UpgradePlan, Refusal>) -> Vec<UpgradeProblem> {
    match r {
        Err(Refusal::UpgradeChecks { problems, .. }) => problems,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Each step as "<node> <kind>".
fn kinds(p: &UpgradePlan) -> Vec<String> {
    p.steps.iter().map(|s| format!("{} {}", s.node(), serde_json::to_value(s).unwrap()["kind"])).collect()
}

#[test]
fn healthy_cluster_copy_plan() {
    let p = upgrade(&cluster(), &facts(), &COPY).unwrap();
    assert_eq!(
        kinds(&p),
        [
            "db1 \"stop_primary\"",
            "db2 \"stop_standby\"",
            "db3 \"stop_standby\"",
            "db1 \"keep_old_data\"",
            "db2 \"keep_old_data\"",
            "db3 \"keep_old_data\"",
            "db1 \"initdb\"",
            "db1 \"write_settings\"",
            "db1 \"pg_upgrade\"",
            "db1 \"start_primary\"",
            "db1 \"analyze\"",
            "db1 \"replication_role_and_slots\"",
            "db2 \"clone\"",
            "db2 \"start_standby\"",
            "db3 \"clone\"",
            "db3 \"start_standby\"",
        ]
    );
    assert_eq!(p.steps[p.point_of_no_return], UpgradeStep::StartPrimary { node: "db1".into() });
    assert!(p.steps.contains(&UpgradeStep::PgUpgrade { node: "db1".into(), link: false }));
    assert!(
        p.steps
            .contains(&UpgradeStep::ReplicationRoleAndSlots { node: "db1".into(), slots: vec!["pgrepl_db2".into(), "pgrepl_db3".into()] })
    );
    assert_eq!(p.kept.len(), 3);
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
}

#[test]
fn link_plan_says_the_old_cluster_must_not_start() {
    let p = upgrade(&cluster(), &facts(), &LINK).unwrap();
    assert!(p.steps.contains(&UpgradeStep::PgUpgrade { node: "db1".into(), link: true }));
    assert!(p.warnings.iter().any(|w| w.contains("must never be started again") && w.contains("/w/db1/data-14.old")), "{:?}", p.warnings);
    let text = p.to_string();
    assert!(text.contains("pg_upgrade --link (hard links"), "{text}");
}

#[test]
fn dry_run_text_lists_steps_point_of_no_return_and_kept_directories() {
    let text = upgrade(&cluster(), &facts(), &COPY).unwrap().to_string();
    assert!(text.starts_with("plan for cluster c: upgrade PostgreSQL 14 -> 16 (pg_upgrade, copying), primary db1\n"), "{text}");
    assert!(text.contains(" 1. db1        stop cleanly"), "{text}");
    assert!(text.contains("10. db1        start on the new major  [point of no return]"), "{text}");
    assert!(text.contains("a failure before step 10 goes back"), "{text}");
    assert!(text.contains("kept: db2's old data directory in /w/db2/data-14.old"), "{text}");
    assert!(text.contains("initdb (new major): encoding UTF8, LC_COLLATE C, LC_CTYPE C, data checksums on, superuser postgres"), "{text}");
}

#[test]
fn every_problem_is_reported_together() {
    let mut f = facts();
    f.nodes[1].new_binaries = Err("no pg_upgrade in /x/bin".into());
    f.nodes[2].streaming = false;
    f.logical_slots = vec!["sub1".into()];
    f.missing_extensions = vec!["adminpack (postgres)".into()];
    f.check = CheckOutcome::Failed {
        findings: vec!["Checking for presence of required libraries: could not load library \"$libdir/adminpack\"".into()],
    };
    f.nodes[0].disk = Some((5 << 30, 1 << 30));
    let got = problems(upgrade(&cluster(), &f, &COPY));
    assert_eq!(got.len(), 6, "{got:?}");
    let text = Refusal::UpgradeChecks { to: "16".into(), problems: got.clone() }.to_string();
    for want in [
        "db2: new binaries: no pg_upgrade",
        "db3: not a streaming standby",
        "logical replication slots sub1",
        "adminpack (postgres)",
        "pg_upgrade --check failed",
        "db1: not enough free disk for a copy of the data (5120 MB needed, 1024 MB free)",
    ] {
        assert!(text.contains(want), "{want} missing in {text}");
    }
    assert!(text.starts_with("the upgrade to PostgreSQL 16 is refused; nothing was changed:\n  - "), "{text}");
}

#[test]
fn link_needs_no_disk_on_the_primary_but_the_standbys_still_copy() {
    let mut f = facts();
    f.nodes[0].disk = Some((5 << 30, 1 << 30));
    assert!(upgrade(&cluster(), &f, &LINK).is_ok());
    f.nodes[1].disk = Some((5 << 30, 1 << 30));
    let got = problems(upgrade(&cluster(), &f, &LINK));
    assert_eq!(got, [UpgradeProblem::Disk { node: "db2".into(), need_bytes: 5 << 30, free_bytes: 1 << 30 }]);
}

#[test]
fn refusals_one_by_one() {
    type Change = Box<dyn Fn(&mut UpgradeFacts)>;
    let cases: Vec<(&str, Change, UpgradeRequest, &str)> = vec![
        ("same major", Box::new(|_| {}), UpgradeRequest { to: PgMajor::V14, link: false }, "not_a_later_major"),
        ("older", Box::new(|_| {}), UpgradeRequest { to: PgMajor::V13, link: false }, "not_a_later_major"),
        ("ha", Box::new(|f| f.ha = true), COPY, "agents_run_it"),
        ("spec", Box::new(|f| f.spec_problem = Some("settings.x: unknown".into())), COPY, "spec"),
        ("unreachable", Box::new(|f| f.nodes[2].unreachable = Some("timeout".into())), COPY, "unreachable"),
        ("stopped", Box::new(|f| f.nodes[1].running = false), COPY, "not_running"),
        ("primary in recovery", Box::new(|f| f.nodes[0].in_recovery = Some(true)), COPY, "primary_in_recovery"),
        ("layout", Box::new(|f| f.nodes[0].layout_problem = Some("Debian".into())), COPY, "layout"),
        ("wrong new major", Box::new(|f| f.nodes[0].new_binaries = Ok(PgMajor::V15)), COPY, "new_binaries"),
        ("kept exists", Box::new(|f| f.nodes[2].kept_exists = true), COPY, "kept_directory_exists"),
        ("logical slots", Box::new(|f| f.logical_slots = vec!["s".into()]), COPY, "logical_slots"),
        ("extensions", Box::new(|f| f.missing_extensions = vec!["e (db)".into()]), COPY, "missing_extensions"),
        ("check failed", Box::new(|f| f.check = CheckOutcome::Failed { findings: vec!["x".into()] }), COPY, "check_failed"),
        ("check not run", Box::new(|f| f.check = CheckOutcome::NotRun { why: "x".into() }), COPY, "check_not_run"),
        ("settings", Box::new(|f| f.init = Err("x".into())), COPY, "init_settings"),
    ];
    for (name, change, req, check) in cases {
        let mut f = facts();
        for n in &mut f.nodes {
            n.new_binaries = Ok(req.to);
        }
        change(&mut f);
        let got = problems(upgrade(&cluster(), &f, &req));
        assert_eq!(got.len(), 1, "{name}: {got:?}");
        assert_eq!(serde_json::to_value(&got[0]).unwrap()["check"], check, "{name}");
    }
}

#[test]
fn logical_slots_are_carried_from_17() {
    let mut f = facts();
    f.from = Some(PgMajor::V17);
    for n in &mut f.nodes {
        n.new_binaries = Ok(PgMajor::V18);
    }
    f.logical_slots = vec!["sub1".into()];
    let c = ClusterSpec::builder("c")
        .postgres(PgMajor::V17)
        .node(NodeSpec::primary("db1"))
        .node(NodeSpec::standby("db2"))
        .node(NodeSpec::standby("db3"))
        .into_spec()
        .validate()
        .unwrap();
    assert!(upgrade(&c, &f, &UpgradeRequest { to: PgMajor::V18, link: false }).is_ok());
}

#[test]
fn agents_held_paused_are_no_refusal() {
    let mut f = facts();
    f.ha = true;
    f.agents_held = true;
    let p = upgrade(&cluster(), &f, &COPY).unwrap();
    assert!(p.warnings.iter().any(|w| w.contains("agents are paused during the upgrade")), "{:?}", p.warnings);
}

#[test]
fn warnings_for_what_is_not_carried() {
    let mut f = facts();
    f.other_physical_slots = vec!["backup_slot".into()];
    f.auto_conf_settings = vec!["work_mem".into()];
    let p = upgrade(&cluster(), &f, &COPY).unwrap();
    assert!(p.warnings.iter().any(|w| w.contains("backup_slot")), "{:?}", p.warnings);
    assert!(p.warnings.iter().any(|w| w.contains("work_mem")), "{:?}", p.warnings);
}

#[test]
fn finish_removes_only_old_majors_directories_of_upgraded_nodes() {
    let k = |node: &str, major: PgMajor, running: bool| KeptDir {
        node: node.into(),
        path: format!("/w/{node}/data-{major}.old"),
        major: Some(major),
        running,
        debian_cluster: None,
    };
    let on16 = vec![("db1".to_string(), Some(PgMajor::V16)), ("db2".to_string(), Some(PgMajor::V16))];
    let kept = vec![k("db1", PgMajor::V14, false), k("db2", PgMajor::V14, false)];
    assert_eq!(finish(PgMajor::V16, &on16, &kept).unwrap(), kept);
    assert_eq!(finish(PgMajor::V16, &on16, &[]).unwrap(), []);
    let running = vec![k("db1", PgMajor::V14, true)];
    let e = finish(PgMajor::V16, &on16, &running).unwrap_err().to_string();
    assert!(e.contains("a server runs on the kept directory /w/db1/data-14.old"), "{e}");
    let not_done = vec![("db1".to_string(), Some(PgMajor::V14))];
    let e = finish(PgMajor::V16, &not_done, &[k("db1", PgMajor::V14, false)]).unwrap_err().to_string();
    assert!(e.contains("db1: its data directory is not on PostgreSQL 16 (14)"), "{e}");
    let e = finish(PgMajor::V16, &on16, &[k("db2", PgMajor::V16, false)]).unwrap_err().to_string();
    assert!(e.contains("the cluster's own major"), "{e}");
}

/// The same cluster on Debian's layout: every node's cluster is `14/main` of
/// postgresql-common, with port 5433 spare on its host.
fn debian_facts() -> UpgradeFacts {
    let mut f = facts();
    for n in &mut f.nodes {
        n.data_dir = "/var/lib/postgresql/14/main".into();
        n.kept_as = n.data_dir.clone();
        n.debian = Some(DebianFacts { cluster: "main".into(), old_version: "14".into(), spare_port: Ok(5433), new_exists: false });
    }
    f
}

#[test]
fn debian_clusters_are_upgraded_beside_the_old_ones() {
    let p = upgrade(&cluster(), &debian_facts(), &COPY).unwrap();
    assert_eq!(
        kinds(&p),
        [
            "db1 \"stop_primary\"",
            "db2 \"stop_standby\"",
            "db3 \"stop_standby\"",
            "db1 \"create_cluster\"",
            "db1 \"write_settings\"",
            "db1 \"pg_upgrade\"",
            "db1 \"start_primary\"",
            "db1 \"retire_old_cluster\"",
            "db1 \"analyze\"",
            "db1 \"replication_role_and_slots\"",
            "db2 \"retire_old_cluster\"",
            "db2 \"clone\"",
            "db2 \"start_standby\"",
            "db3 \"retire_old_cluster\"",
            "db3 \"clone\"",
            "db3 \"start_standby\"",
        ]
    );
    assert_eq!(p.steps[p.point_of_no_return], UpgradeStep::StartPrimary { node: "db1".into() });
    let UpgradeStep::CreateCluster { version, cluster, port, settings, .. } = &p.steps[3] else { panic!("{:?}", p.steps[3]) };
    assert_eq!((version.as_str(), cluster.as_str(), *port), ("16", "main", 5433));
    assert!(settings.checksums && settings.superuser == "postgres");
    assert_eq!(
        p.steps[7],
        UpgradeStep::RetireOldCluster { node: "db1".into(), version: "14".into(), cluster: "main".into(), port: 5433, disable: false }
    );
    assert_eq!(
        p.kept,
        [
            ("db1".into(), "/var/lib/postgresql/14/main".into()),
            ("db2".into(), "/var/lib/postgresql/14/main".into()),
            ("db3".into(), "/var/lib/postgresql/14/main".into())
        ]
    );
    assert!(p.warnings.iter().any(|w| w.contains("/etc/postgresql/14/main") && w.contains("not carried")), "{:?}", p.warnings);
    let text = p.to_string();
    assert!(text.contains("pg_createcluster 16 main (new major, port 5433 until the upgrade is done): encoding UTF8"), "{text}");
    assert!(
        text.contains("a failure before step 7 goes back: the new cluster 16/main dropped (pg_dropcluster), the old ones untouched"),
        "{text}"
    );
    assert!(text.contains("keep the old cluster 14/main, not started (start.conf manual), on port 5433"), "{text}");
}

#[test]
fn debian_link_disables_the_old_primary_only() {
    let p = upgrade(&cluster(), &debian_facts(), &LINK).unwrap();
    let retired: Vec<(String, bool)> = p
        .steps
        .iter()
        .filter_map(|s| match s {
            UpgradeStep::RetireOldCluster { node, disable, .. } => Some((node.clone(), *disable)),
            _ => None,
        })
        .collect();
    assert_eq!(retired, [("db1".into(), true), ("db2".into(), false), ("db3".into(), false)]);
    assert!(p.to_string().contains("start.conf disabled: --link made its files the new cluster's"));
}

#[test]
fn debian_refusals() {
    let mut f = debian_facts();
    f.nodes[2].debian.as_mut().unwrap().new_exists = true;
    f.nodes[1].debian.as_mut().unwrap().spare_port = Err("perl: PgCommon not found".into());
    let got = problems(upgrade(&cluster(), &f, &COPY));
    assert_eq!(got.len(), 2, "{got:?}");
    let text = Refusal::UpgradeChecks { to: "16".into(), problems: got }.to_string();
    assert!(text.contains("db3: the cluster 16/main exists already"), "{text}");
    assert!(text.contains("db2: no spare port for the old cluster: perl: PgCommon not found"), "{text}");
}

#[test]
fn a_plain_standby_of_a_debian_primary_is_renamed() {
    let mut f = debian_facts();
    f.nodes[2].debian = None;
    f.nodes[2].data_dir = "/srv/db3/data".into();
    f.nodes[2].kept_as = "/srv/db3/data-14.old".into();
    let p = upgrade(&cluster(), &f, &COPY).unwrap();
    assert!(p.steps.contains(&UpgradeStep::KeepOldData {
        node: "db3".into(),
        from: "/srv/db3/data".into(),
        to: "/srv/db3/data-14.old".into()
    }));
    assert!(!p.steps.iter().any(|s| matches!(s, UpgradeStep::RetireOldCluster { node, .. } if node == "db3")));
    assert!(p.steps.iter().any(|s| matches!(s, UpgradeStep::RetireOldCluster { node, .. } if node == "db2")));
}
