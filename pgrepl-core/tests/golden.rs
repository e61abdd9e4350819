//! Golden files: what pgrepl renders for a primary and a standby of every major from
//! 9.3 to 18, as plain files under `tests/golden/<major>/<node>/`, exactly as they would
//! land on disk (plus `setup.sql` and `commands.txt`). Each was read by hand against
//! shared/docs/postgres-versions.md when written.
//!
//! `PGREPL_BLESS=1 cargo test -p pgrepl-core --test golden` rewrites them; review the diff.

use std::path::{Path, PathBuf};

use pgrepl_core::layout::{Binaries, NodeLayout};
use pgrepl_core::render::{Promote, RenderedNode, render_node};
use pgrepl_core::secret::{Secret, Secrets};
use pgrepl_core::{ClusterSpec, PgMajor};

const MAJORS: &[&str] = &["9.3", "9.6", "10", "11", "12", "13", "14", "15", "16", "17", "18"];

/// The golden scenario: the classic 3-node cluster with a WAL archive directory and
/// one synchronous standby (FIRST 1, written in each version's own syntax).
const SPEC: &str = r#"
name = "golden"
[replication]
sync = { mode = "first", count = 1 }
[archive]
mode = "dir"
path = "/var/lib/pgrepl/golden-archive"
[provider]
kind = "local"
base_port = 5432
work_dir = "/var/lib/pgrepl/golden"
os_user = "postgres"
[[nodes]]
name = "db1"
role = "primary"
[[nodes]]
name = "db2"
role = "standby"
[[nodes]]
name = "db3"
role = "standby"
"#;

fn render(major: PgMajor, node: &str) -> RenderedNode {
    let spec = ClusterSpec::from_toml(SPEC).unwrap();
    let cluster = spec.validate_for(major).unwrap_or_else(|e| panic!("{major}: {e}"));
    let bins = Binaries::assumed(major);
    let layout = NodeLayout::local("/var/lib/pgrepl/golden", node, &bins, "postgres");
    // Fixed fake secrets show where they go; the test checks they never leak elsewhere.
    let secrets = Secrets {
        replication_password: Secret::new("GOLDEN-PASSWORD"),
        replication_verifier: Secret::new("SCRAM-SHA-256$4096:GOLDEN-VERIFIER"),
    };
    render_node(&cluster, node, &layout, Some(&secrets)).unwrap()
}

/// The files of one node: (file name, contents).
fn files(r: &RenderedNode) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> =
        r.files.iter().map(|f| (f.path.rsplit('/').next().unwrap().to_string(), f.contents.text.clone())).collect();
    let sql: String = r.sql.iter().map(|s| format!("-- {}\n{}\n", s.purpose, s.text)).collect();
    if !sql.is_empty() {
        out.push(("setup.sql".into(), sql));
    }
    let c = &r.commands;
    let mut cmds = String::new();
    for (name, line) in [
        ("init", c.init.as_ref()),
        ("clone", c.clone.as_ref()),
        ("start", Some(&c.start)),
        ("stop", Some(&c.stop)),
        ("reload", Some(&c.reload)),
    ] {
        if let Some(l) = line {
            cmds.push_str(&format!("{name}: [{}] {l}\n", l.user));
        }
    }
    match &c.promote {
        Some(Promote::Sql { sql }) => cmds.push_str(&format!("promote: SQL {sql}\n")),
        Some(Promote::Command { command }) => cmds.push_str(&format!("promote: [{}] {command}\n", command.user)),
        Some(Promote::TriggerFile { path }) => cmds.push_str(&format!("promote: create {path}\n")),
        None => {}
    }
    out.push(("commands.txt".into(), cmds));
    out
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

#[test]
fn golden_files_match() {
    let bless = std::env::var_os("PGREPL_BLESS").is_some();
    let mut failures = Vec::new();
    for m in MAJORS {
        let major: PgMajor = m.parse().unwrap();
        for node in ["db1", "db2"] {
            let dir = golden_dir().join(m).join(node);
            let rendered = files(&render(major, node));
            if bless {
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir).unwrap();
                for (name, text) in &rendered {
                    std::fs::write(dir.join(name), text).unwrap();
                }
                continue;
            }
            let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
                .unwrap_or_else(|_| panic!("missing {}: run with PGREPL_BLESS=1", dir.display()))
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            on_disk.sort();
            let mut names: Vec<String> = rendered.iter().map(|(n, _)| n.clone()).collect();
            names.sort();
            if on_disk != names {
                failures.push(format!("{m}/{node}: files {names:?} rendered, {on_disk:?} on disk"));
            }
            for (name, text) in &rendered {
                let expected = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
                if &expected != text {
                    failures.push(format!("{m}/{node}/{name} differs\n--- expected\n{expected}--- rendered\n{text}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}\n(PGREPL_BLESS=1 rewrites the golden files)", failures.join("\n"));
}

fn text_of(major: &str, node: &str, file: &str) -> String {
    files(&render(major.parse().unwrap(), node)).into_iter().find(|(n, _)| n == file).map(|(_, t)| t).unwrap_or_default()
}

/// The issue's "done when", checked on the rendering itself (not only the golden copies).
#[test]
fn done_when_of_the_core_issue() {
    // 9.6: recovery.conf with standby_mode, primary_conninfo, trigger_file, restore_command.
    let rc = text_of("9.6", "db2", "recovery.conf");
    for k in
        ["standby_mode = 'on'", "primary_conninfo = ", "trigger_file = ", "restore_command = 'cp /var/lib/pgrepl/golden-archive/%f %p'"]
    {
        assert!(rc.contains(k), "9.6 recovery.conf lacks {k}:\n{rc}");
    }
    assert!(text_of("9.6", "db2", "standby.signal").is_empty());
    // 12: standby.signal plus primary_conninfo, primary_slot_name, promote_trigger_file.
    assert!(files(&render(PgMajor::V12, "db2")).iter().any(|(n, _)| n == "standby.signal"));
    assert!(!files(&render(PgMajor::V12, "db2")).iter().any(|(n, _)| n == "recovery.conf"));
    let c12 = text_of("12", "db2", "pgrepl.conf");
    for k in ["primary_conninfo = ", "primary_slot_name = 'pgrepl_db2'", "promote_trigger_file = "] {
        assert!(c12.contains(k), "12 standby pgrepl.conf lacks {k}:\n{c12}");
    }
    // 16 and later: no promote_trigger_file anywhere.
    for m in ["16", "17", "18"] {
        for node in ["db1", "db2"] {
            for (name, text) in files(&render(m.parse().unwrap(), node)) {
                assert!(!text.contains("promote_trigger_file"), "{m}/{node}/{name} has promote_trigger_file");
            }
        }
    }
    // wal_keep_segments up to 12, wal_keep_size from 13.
    for m in ["9.3", "9.6", "10", "11", "12"] {
        let c = text_of(m, "db1", "pgrepl.conf");
        assert!(c.contains("wal_keep_segments = ") && !c.contains("wal_keep_size"), "{m}: {c}");
    }
    for m in ["13", "14", "15", "16", "17", "18"] {
        let c = text_of(m, "db1", "pgrepl.conf");
        assert!(c.contains("wal_keep_size = ") && !c.contains("wal_keep_segments"), "{m}: {c}");
    }
    // hot_standby on standbys.
    for m in MAJORS {
        assert!(text_of(m, "db2", "pgrepl.conf").contains("hot_standby = on"), "{m}");
    }
}

#[test]
fn secrets_only_in_the_passfile_and_role_sql() {
    for m in MAJORS {
        for node in ["db1", "db2"] {
            let r = render(m.parse().unwrap(), node);
            for (name, text) in files(&r) {
                let may_hold = name == "pgpass" || name == "setup.sql";
                if !may_hold {
                    assert!(!text.contains("GOLDEN-PASSWORD") && !text.contains("GOLDEN-VERIFIER"), "{m}/{node}/{name} holds a secret");
                }
            }
            // Debug and JSON never show them.
            let dbg = format!("{r:?}");
            let json = serde_json::to_string(&r).unwrap();
            for s in [dbg, json] {
                assert!(!s.contains("GOLDEN-PASSWORD") && !s.contains("GOLDEN-VERIFIER"), "{m}/{node}: secret in Debug/JSON");
            }
            // The plain password never reaches SQL: only the verifier does.
            assert!(r.sql.iter().all(|s| !s.text.contains("GOLDEN-PASSWORD")));
        }
    }
}

#[test]
fn hba_allows_replication_only_from_cluster_addresses() {
    for m in MAJORS {
        let hba = text_of(m, "db1", "pg_hba.conf");
        for line in hba.lines().filter(|l| l.starts_with("host")) {
            let addr = line.split_whitespace().nth(3).unwrap();
            assert!(addr.ends_with("/32") || addr.ends_with("/128"), "{m}: {line}");
        }
        assert!(!hba.contains("0.0.0.0/0") && !hba.contains("::/0"), "{m}: {hba}");
        assert!(hba.contains("host    replication   replicator     127.0.0.1/32"), "{m}: {hba}");
    }
}

/// `pgrepl render --haproxy` for two `[ha]` clusters, as `tests/golden/haproxy/<case>.cfg`:
/// three local nodes with the default options (loopback, 5000/5001, agents on 8008-8010),
/// and three hosts with every option set (every interface, other ports, the stats page).
/// Each was read by hand against HAProxy 2.6's configuration manual when written; the lab
/// test `haproxy::haproxy_accepts_the_rendered_config` has HAProxy itself check them.
#[test]
fn haproxy_golden_files_match() {
    use pgrepl_core::render::{HaproxyOptions, haproxy_config};
    const LOCAL: &str = r#"
name = "ha-golden"
[ha.etcd]
endpoints = ["http://127.0.0.1:23790", "http://127.0.0.1:23791", "http://127.0.0.1:23792"]
[provider]
kind = "local"
base_port = 6532
[[nodes]]
name = "db1"
role = "primary"
[[nodes]]
name = "db2"
role = "standby"
[[nodes]]
name = "db3"
role = "standby"
"#;
    const HOSTS: &str = r#"
name = "ha-hosts"
[ha]
api_port = 8010
replica_max_lag = 1048576
[ha.etcd]
endpoints = ["http://10.0.0.21:2379", "http://10.0.0.22:2379", "http://10.0.0.23:2379"]
[provider]
kind = "ssh"
user = "root"
[[nodes]]
name = "pg-a"
address = "10.0.0.11"
role = "primary"
[[nodes]]
name = "pg-b"
address = "10.0.0.12"
role = "standby"
[[nodes]]
name = "pg-c"
address = "10.0.0.13"
role = "standby"
"#;
    let hosts_opts = HaproxyOptions { bind: "0.0.0.0".into(), rw_port: 6000, ro_port: 6001, stats_port: Some(7000) };
    let bless = std::env::var_os("PGREPL_BLESS").is_some();
    let dir = golden_dir().join("haproxy");
    let mut failures = Vec::new();
    for (case, spec, opts) in [("local", LOCAL, HaproxyOptions::default()), ("hosts", HOSTS, hosts_opts)] {
        let cluster = ClusterSpec::from_toml(spec).unwrap().validate().unwrap_or_else(|e| panic!("{case}: {e}"));
        let text = haproxy_config(&cluster, &opts).unwrap_or_else(|e| panic!("{case}: {e}"));
        let path = dir.join(format!("{case}.cfg"));
        if bless {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &text).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| panic!("missing {}: run with PGREPL_BLESS=1", path.display()));
        if expected != text {
            failures.push(format!("haproxy/{case}.cfg differs\n--- expected\n{expected}--- rendered\n{text}"));
        }
    }
    assert!(failures.is_empty(), "{}\n(PGREPL_BLESS=1 rewrites the golden files)", failures.join("\n"));
}
