//! `pgrepl upgrade --to N` on real 3-node clusters of the lab's full builds (14, 16, 18):
//! every row written before is on every node after, the standbys stream from the upgraded
//! primary, every node runs the new major, the old data directories are kept, status and
//! verify work on the new major; a failing `pg_upgrade --check` (an extension the new
//! binaries lack) is refused with the extension named and changes nothing.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;

const ROWS: i64 = 5000;

fn run(args: &[&str]) -> (i32, String, String) {
    pgrepl_ok(args)
}

/// A 3-node local cluster of `major` up in `wd` (the lab's binaries), run with its file
/// and binaries appended to every command.
struct Local {
    port: u16,
    spec: std::path::PathBuf,
    args: Vec<String>,
}

impl Local {
    fn up(wd: &WorkDir, name: &str, major: &str, bin: &Path, client: &Path) -> Local {
        let port = free_ports(3);
        let spec = wd.path.join("pgrepl.toml");
        std::fs::write(&spec, local_spec(name, major, port, &wd.str(), "")).unwrap();
        let args = ["-f", spec.to_str().unwrap(), "--pg-bin", bin.to_str().unwrap(), "--pg-client-bin", client.to_str().unwrap()]
            .map(String::from)
            .to_vec();
        let l = Local { port, spec, args };
        let (code, out, err) = l.run(&["up"]);
        assert_eq!(code, 0, "{out}\n{err}");
        l
    }

    fn run(&self, cmd: &[&str]) -> (i32, String, String) {
        let mut a: Vec<&str> = cmd.to_vec();
        a.extend(self.args.iter().map(String::as_str));
        run(&a)
    }
}

/// The postmaster pid of each node (first line of its postmaster.pid).
fn pids(wd: &Path) -> Vec<String> {
    ["db1", "db2", "db3"]
        .iter()
        .map(|n| {
            let t = std::fs::read_to_string(wd.join(n).join("data/postmaster.pid")).unwrap_or_default();
            t.lines().next().unwrap_or_default().to_string()
        })
        .collect()
}

/// Polls `sql` on a node until it returns `want` (standbys replay asynchronously), for 30 s at most.
fn wait_for(client: &Path, wd: &Path, node: &str, port: u16, sql: &str, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = psql(client, wd, node, port, sql);
        if got == want || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// With `switch_first`, a switchover to db2 before the upgrade: the upgrade starts from the
/// recorded primary (db2, on timeline 2) and the new cluster's timeline (1) is recorded.
async fn major_upgrade(from: &str, to: &str, link: bool, extra: &str, switch_first: bool) {
    let (bin, client) = bins(from);
    let (nbin, nclient) = bins(to);
    let mut wd = WorkDir::new(&format!("upgrade-{from}-{to}")).with_bin(&bin);
    let port = free_ports(3);
    let spec = wd.path.join("pgrepl.toml");
    std::fs::write(&spec, local_spec(&format!("upg{from}{to}"), from, port, &wd.str(), extra)).unwrap();
    let f = spec.to_str().unwrap();
    let old = ["--pg-bin", bin.to_str().unwrap(), "--pg-client-bin", client.to_str().unwrap()];
    let new = ["--pg-bin", nbin.to_str().unwrap(), "--pg-client-bin", nclient.to_str().unwrap()];
    let with = |cmd: &[&str], bins: &[&str]| -> (i32, String, String) {
        let mut a: Vec<&str> = cmd.to_vec();
        a.extend(["-f", f]);
        a.extend(bins);
        run(&a)
    };

    let (code, out, err) = with(&["up"], &old);
    assert_eq!(code, 0, "up {from}: {out}\n{err}");
    // Rows in the default database and in a database of its own, written before the upgrade.
    psql(
        &client,
        &wd.path,
        "db1",
        port,
        &format!(
            "CREATE TABLE upg (i int PRIMARY KEY, note text); INSERT INTO upg SELECT g, md5(g::text) FROM generate_series(1, {ROWS}) g;"
        ),
    );
    psql(&client, &wd.path, "db1", port, "CREATE DATABASE appdb;");
    let appdb = |client: &Path, node: &str, p: u16, sql: &str| -> String {
        let o = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(client.join("psql"))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(wd.path.join(node).join("run"))
            .args(["-p", &p.to_string(), "-U", "postgres", "-d", "appdb", "-c", sql])
            .output()
            .unwrap();
        assert!(o.status.success(), "psql appdb on {node}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    appdb(&client, "db1", port, "CREATE TABLE orders (id bigint PRIMARY KEY); INSERT INTO orders SELECT generate_series(1, 777);");
    let sum_before = psql(&client, &wd.path, "db1", port, "SELECT sum(i)::text || md5(string_agg(note, ',' ORDER BY i)) FROM upg;");

    let (primary, others) = if switch_first {
        let (code, out, err) = with(&["switchover", "--to", "db2"], &old);
        assert_eq!(code, 0, "switchover before the upgrade: {out}\n{err}");
        ("db2", ["db1", "db3"])
    } else {
        ("db1", ["db2", "db3"])
    };
    let port_of = |n: &str| port + n[2..].parse::<u16>().unwrap() - 1;
    let pport = port_of(primary);

    // The dry run: checks, then the plan; nothing stops.
    let pids_before = pids(&wd.path);
    let mut dry =
        vec!["upgrade", "--to", to, "--dry-run", "--new-pg-bin", nbin.to_str().unwrap(), "--new-pg-client-bin", nclient.to_str().unwrap()];
    if link {
        dry.push("--link");
    }
    let (code, out, err) = with(&dry, &old);
    assert_eq!(code, 0, "dry run: {out}\n{err}");
    assert!(out.contains(&format!("upgrade PostgreSQL {from} -> {to}")), "{out}");
    assert!(out.contains("[point of no return]"), "{out}");
    assert!(out.contains(if link { "pg_upgrade --link" } else { "pg_upgrade (a copy" }), "{out}");
    assert_eq!(pids(&wd.path), pids_before, "the dry run restarted nothing");
    assert!(out.contains(&format!("primary {primary}")), "{out}");
    assert!(!wd.path.join(format!("{primary}/data-{from}.old")).exists(), "the dry run renamed nothing");

    let mut up = vec![
        "upgrade",
        "--to",
        to,
        "--yes",
        "--output",
        "json",
        "--new-pg-bin",
        nbin.to_str().unwrap(),
        "--new-pg-client-bin",
        nclient.to_str().unwrap(),
    ];
    if link {
        up.push("--link");
    }
    let (code, out, err) = with(&up, &old);
    assert_eq!(code, 0, "upgrade {from} -> {to}: {out}\n{err}");
    wd.bin = Some(nbin.clone());
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["upgrade"]["primary_upgraded"], true, "{out}");
    assert!(v["upgrade"]["failed"].is_null(), "{out}");
    assert!(v["upgrade"]["steps"].as_array().unwrap().iter().all(|s| s["outcome"] == "done"), "{out}");
    assert_eq!(v["upgrade"]["link"], link);

    // Every node runs the new major.
    for (i, n) in ["db1", "db2", "db3"].iter().enumerate() {
        let num: u32 = psql(&nclient, &wd.path, n, port + i as u16, "SHOW server_version_num;").parse().unwrap();
        assert_eq!((num / 10000).to_string(), to, "{n} runs {num}");
    }
    // Streaming from the upgraded primary.
    let senders = psql(
        &nclient,
        &wd.path,
        primary,
        pport,
        "SELECT string_agg(application_name || ':' || state, ',' ORDER BY application_name) FROM pg_stat_replication;",
    );
    assert_eq!(senders, format!("{}:streaming,{}:streaming", others[0], others[1]));
    // Every row written before, on every node, in both databases.
    for (i, n) in ["db1", "db2", "db3"].iter().enumerate() {
        let p = port + i as u16;
        assert_eq!(psql(&nclient, &wd.path, n, p, "SELECT count(*) FROM upg;"), ROWS.to_string(), "{n}");
        assert_eq!(
            psql(&nclient, &wd.path, n, p, "SELECT sum(i)::text || md5(string_agg(note, ',' ORDER BY i)) FROM upg;"),
            sum_before,
            "{n}"
        );
        assert_eq!(appdb(&nclient, n, p, "SELECT count(*) FROM orders;"), "777", "{n}");
    }
    // A write after the upgrade reaches the standbys.
    psql(&nclient, &wd.path, primary, pport, "INSERT INTO upg VALUES (0, 'after');");
    for n in others {
        let got = wait_for(&nclient, &wd.path, n, port_of(n), "SELECT count(*) FROM upg;", &(ROWS + 1).to_string());
        assert_eq!(got, (ROWS + 1).to_string(), "{n} did not replay the write made after the upgrade");
    }
    // The old data directories are kept, with the old major's files.
    for n in ["db1", "db2", "db3"] {
        let kept = wd.path.join(n).join(format!("data-{from}.old"));
        assert_eq!(std::fs::read_to_string(kept.join("PG_VERSION")).unwrap().trim(), from, "{}", kept.display());
        assert_eq!(std::fs::read_to_string(wd.path.join(n).join("data/PG_VERSION")).unwrap().trim(), to);
    }
    // The recorded state follows: the primary as it was, the new cluster's timeline (1:
    // pg_upgrade starts it there), where a switchover before had recorded 2.
    let topo: serde_json::Value =
        serde_json::from_slice(&std::fs::read(wd.path.join("secrets/topology.json")).unwrap_or_default()).unwrap_or_default();
    if switch_first {
        assert_eq!(topo["primary"], primary, "{topo}");
    }
    assert_eq!(topo["timeline"], 1, "the recorded timeline is the new cluster's: {topo}");
    // The cluster file says the new major; the old one is kept beside it.
    let text = std::fs::read_to_string(&spec).unwrap();
    assert!(text.contains(&format!("postgres = \"{to}\"")), "{text}");
    assert!(wd.path.join(format!("pgrepl.toml.before-upgrade-{from}")).exists());

    // status, verify and up work on the new major.
    let (code, out, err) = with(&["status", "--output", "json"], &new);
    assert_eq!(code, 0, "status after the upgrade: {out}\n{err}");
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(s["problems"].as_array().unwrap().is_empty(), "{out}");
    for n in s["nodes"].as_array().unwrap() {
        if n["name"] == primary {
            assert_eq!(n["role"], "primary", "{out}");
            assert_eq!(n["timeline"], 1, "the new cluster's timeline: {out}");
        } else {
            assert_eq!(n["role"], "standby", "{out}");
            assert_eq!(n["streaming"], true, "{out}");
            assert_eq!(n["slot_active"], true, "{out}");
        }
    }
    let (code, out, err) = with(&["verify"], &new);
    assert_eq!(code, 0, "verify after the upgrade: {out}\n{err}");
    let (code, out, err) = with(&["up"], &new);
    assert_eq!(code, 0, "up after the upgrade: {out}\n{err}");
    assert!(out.contains("nothing to do"), "up after the upgrade changed things: {out}");

    // --finish: the kept directories listed, then removed; the cluster runs on.
    let (code, out, err) = with(&["upgrade", "--finish", "--dry-run"], &new);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(out.matches("would remove").count(), 3, "{out}");
    assert!(wd.path.join(format!("db2/data-{from}.old")).exists(), "the dry run removed nothing");
    let (code, out, err) = with(&["upgrade", "--finish", "--yes"], &new);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains(&format!("{primary}: removed {}/{primary}/data-{from}.old (PostgreSQL {from})", wd.str())), "{out}");
    for n in ["db1", "db2", "db3"] {
        assert!(!wd.path.join(n).join(format!("data-{from}.old")).exists(), "{n}: removed");
    }
    let (code, out, err) = with(&["status"], &new);
    assert_eq!(code, 0, "status after --finish: {out}\n{err}");

    // A switchover on the new major: a standby takes over, the primary follows it.
    let next = others[0];
    let (code, out, err) = with(&["switchover", "--to", next], &new);
    assert_eq!(code, 0, "switchover after the upgrade: {out}\n{err}");
    assert_eq!(psql(&nclient, &wd.path, next, port_of(next), "SELECT pg_is_in_recovery();"), "f");
    assert_eq!(psql(&nclient, &wd.path, primary, pport, "SELECT pg_is_in_recovery();"), "t");
    let (code, out, err) = with(&["status"], &new);
    assert_eq!(code, 0, "status after the switchover: {out}\n{err}");
    let (code, _, err) = with(&["down"], &new);
    assert_eq!(code, 0, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn major_upgrade_14_to_16_copy() {
    major_upgrade("14", "16", false, "", false).await;
}

/// From a cluster whose primary moved (db2, timeline 2) before the upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn major_upgrade_14_to_16_after_a_switchover() {
    major_upgrade("14", "16", false, "", true).await;
}

/// With synchronous replication: the new primary's own writes before its standbys are
/// back (statistics) commit locally instead of waiting for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn major_upgrade_16_to_18_link_sync() {
    major_upgrade("16", "18", true, "[replication]\nsync = { mode = \"any\", count = 1 }\n", false).await;
}

/// adminpack is in 16's contrib and gone from 17 on: a 16 cluster using it cannot be
/// upgraded to 18. Refused with the extension and the library named, before anything is
/// stopped: the same postmasters run, writes are accepted, nothing was renamed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_upgrade_check_is_refused_and_changes_nothing() {
    let (bin, client) = bins("16");
    let (nbin, _) = bins("18");
    assert!(
        !nbin.parent().unwrap().join("share/extension/adminpack.control").exists(),
        "the 18 build has adminpack: this test needs an extension it lacks"
    );
    let wd = WorkDir::new("upgrade-refused").with_bin(&bin);
    let cluster = Local::up(&wd, "upgref", "16", &bin, &client);
    let (port, spec) = (cluster.port, cluster.spec.clone());
    let with = |cmd: &[&str]| cluster.run(cmd);
    psql(&client, &wd.path, "db1", port, "CREATE EXTENSION adminpack; CREATE TABLE t (i int); INSERT INTO t VALUES (1);");
    let spec_before = std::fs::read_to_string(&spec).unwrap();
    let pids_before = pids(&wd.path);
    assert!(pids_before.iter().all(|p| !p.is_empty()), "{pids_before:?}");

    for extra in [&["--dry-run"][..], &["--yes"][..]] {
        let mut a = vec!["upgrade", "--to", "18", "--new-pg-bin", nbin.to_str().unwrap()];
        a.extend(extra);
        let (code, out, err) = with(&a);
        assert_eq!(code, 3, "refused (exit 3) {extra:?}: {out}\n{err}");
        assert!(err.contains("the upgrade to PostgreSQL 18 is refused; nothing was changed"), "{err}");
        assert!(err.contains("extensions installed here are missing from the new binaries: adminpack (database postgres)"), "{err}");
        assert!(err.contains("pg_upgrade --check failed: Checking for presence of required libraries"), "{err}");
        assert!(err.contains("$libdir/adminpack"), "the library is named: {err}");
    }
    assert_eq!(pids(&wd.path), pids_before, "the same postmasters run");
    assert_eq!(std::fs::read_to_string(&spec).unwrap(), spec_before, "the cluster file is unchanged");
    for n in ["db1", "db2", "db3"] {
        assert!(!wd.path.join(n).join("data-16.old").exists(), "{n}: nothing renamed");
        assert_eq!(std::fs::read_to_string(wd.path.join(n).join("data/PG_VERSION")).unwrap().trim(), "16");
    }
    assert!(!wd.path.join("db1/pgrepl/upgrade-check").exists(), "the scratch cluster of the check is removed");
    // Still serving: a write on the primary reaches every standby.
    psql(&client, &wd.path, "db1", port, "INSERT INTO t VALUES (2);");
    let (code, out, err) = with(&["verify"]);
    assert_eq!(code, 0, "verify after the refusal: {out}\n{err}");
    for (i, n) in ["db2", "db3"].iter().enumerate() {
        assert_eq!(wait_for(&client, &wd.path, n, port + 1 + i as u16, "SELECT count(*) FROM t;", "2"), "2", "{n}");
    }
    let (code, _, err) = with(&["down"]);
    assert_eq!(code, 0, "{err}");
}

/// One kind of upgrade at a time (`--to`, `--minor`, `--finish`), and each kind's own
/// options only with it: usage errors (exit 2).
#[test]
fn upgrade_kinds_are_one_at_a_time() {
    let (code, _, err) = run(&["upgrade", "--minor", "--to", "16"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = run(&["upgrade"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = run(&["upgrade", "--to", "16", "--in-place"]);
    assert_eq!(code, 2, "--in-place belongs to --minor: {err}");
    let (code, _, err) = run(&["upgrade", "--minor", "--link"]);
    assert_eq!(code, 2, "--link belongs to --to: {err}");
}

/// The new major's binaries as a directory of symbolic links to the lab's, whose `tool`
/// passes `--check` and `--version` through and fails anything else: a failure injected
/// after the servers stopped.
fn failing_tool(dir: &Path, major: &str, tool: &str) -> std::path::PathBuf {
    let real = lab_dir().join("pg").join(major);
    let real = std::fs::canonicalize(&real).unwrap();
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    for sub in ["lib", "share"] {
        std::os::unix::fs::symlink(real.join(sub), dir.join(sub)).unwrap();
    }
    for e in std::fs::read_dir(real.join("bin")).unwrap() {
        let e = e.unwrap();
        if e.file_name() != tool {
            std::os::unix::fs::symlink(e.path(), dir.join("bin").join(e.file_name())).unwrap();
        }
    }
    let script = format!(
        "#!/bin/sh\ncase \" $* \" in *\" --check \"*|*\" --version \"*) exec {} \"$@\";; esac\necho 'injected failure: {tool} stops here' >&2\nexit 1\n",
        real.join("bin").join(tool).display()
    );
    let p = dir.join("bin").join(tool);
    std::fs::write(&p, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir.join("bin")
}

/// pg_upgrade fails after the stop (injected: the checks pass, the real run fails): the
/// upgrade goes back by itself: the new data directory removed, the old one renamed back,
/// every node started on the old major and streaming, every row there, the cluster file
/// unchanged; the error says at which step and what was done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_after_the_stop_goes_back_to_the_old_major() {
    let (bin, client) = bins("14");
    let wd = WorkDir::new("upgrade-back").with_bin(&bin);
    let nbin = failing_tool(&wd.path.join("pg16"), "16", "pg_upgrade");
    let cluster = Local::up(&wd, "upgback", "14", &bin, &client);
    let (port, spec) = (cluster.port, cluster.spec.clone());
    let with = |cmd: &[&str]| cluster.run(cmd);
    psql(&client, &wd.path, "db1", port, "CREATE TABLE t (i int); INSERT INTO t SELECT generate_series(1, 100);");
    let spec_before = std::fs::read_to_string(&spec).unwrap();

    let (code, out, err) = with(&["upgrade", "--to", "16", "--yes", "--new-pg-bin", nbin.to_str().unwrap()]);
    assert_eq!(code, 4, "{out}\n{err}");
    assert!(err.contains("failed at step 9 (db1: pg_upgrade"), "{err}");
    assert!(err.contains("injected failure"), "pg_upgrade's own words: {err}");
    assert!(err.contains("went back to PostgreSQL 14"), "{err}");
    for n in ["db1", "db2", "db3"] {
        assert!(err.contains(&format!("{n} started on PostgreSQL 14")), "{err}");
        assert_eq!(std::fs::read_to_string(wd.path.join(n).join("data/PG_VERSION")).unwrap().trim(), "14", "{n}");
        assert!(!wd.path.join(n).join("data-14.old").exists(), "{n}: renamed back");
    }
    assert_eq!(std::fs::read_to_string(&spec).unwrap(), spec_before, "the cluster file is unchanged");
    let (code, out, err) = with(&["status", "--output", "json"]);
    assert_eq!(code, 0, "status after going back: {out}\n{err}");
    psql(&client, &wd.path, "db1", port, "INSERT INTO t VALUES (101);");
    let (code, out, err) = with(&["verify"]);
    assert_eq!(code, 0, "{out}\n{err}");
    for (i, n) in ["db1", "db2", "db3"].iter().enumerate() {
        assert_eq!(wait_for(&client, &wd.path, n, port + i as u16, "SELECT count(*) FROM t;", "101"), "101", "{n}");
        let num: u32 = psql(&client, &wd.path, n, port + i as u16, "SHOW server_version_num;").parse().unwrap();
        assert_eq!(num / 10000, 14, "{n}");
    }
    let (code, _, err) = with(&["down"]);
    assert_eq!(code, 0, "{err}");
}

/// SQL on a netns lab host's plain-layout node, through its own socket.
fn host_psql(addr: &str, cluster: &str, sql: &str) -> String {
    let (code, out) = NetnsLab::ssh(
        addr,
        &format!(
            "runuser -u postgres -- /opt/pgrepl-lab/pg/15/bin/psql -X -A -t -h /var/lib/postgresql/plainroot/{cluster}/run -p 5432 -d postgres -c \"{sql}\""
        ),
    );
    assert_eq!(code, 0, "psql on {addr}: {out}");
    out.trim().to_string()
}

/// Over SSH, on the three netns hosts, with the plain layout (pg_ctl with the lab's builds):
/// 14 -> 15 through the same transport as every other command; rows on every host, the
/// standbys streaming from the upgraded primary, the kept directories on each host.
#[test]
fn ssh_plain_layout_major_upgrade_14_to_15() {
    let _lab = NetnsLab::up();
    let wd = WorkDir::new("ssh-upgrade");
    let text = ssh_spec("sshupg", "14", &NetnsLab::known_hosts(), "strict", "")
        .replace("postgres = \"14\"", "postgres = \"14\"\npg_bin = \"/opt/pgrepl-lab/pg/14/bin\"")
        .replace("connect_timeout_secs = 3", "connect_timeout_secs = 3\nlayout = \"plain\"\ndata_root = \"/var/lib/postgresql/plainroot\"");
    let spec = wd.path.join("sshupg.toml");
    std::fs::write(&spec, text).unwrap();
    let f = spec.to_str().unwrap();
    let w = wd.path.to_str().unwrap();
    let (code, out, err) = run(&["up", "-f", f, "--work-dir", w]);
    assert_eq!(code, 0, "{out}\n{err}");
    host_psql("10.213.7.11", "sshupg", "CREATE TABLE t AS SELECT generate_series(1, 1234) AS i;");

    let (code, out, err) = run(&["upgrade", "--to", "15", "--yes", "--new-pg-bin", "/opt/pgrepl-lab/pg/15/bin", "-f", f, "--work-dir", w]);
    assert_eq!(code, 0, "upgrade over SSH: {out}\n{err}");
    assert!(out.contains("PostgreSQL 14 -> 15"), "{out}");
    let text = std::fs::read_to_string(&spec).unwrap();
    assert!(text.contains("postgres = \"15\"") && text.contains("pg_bin = \"/opt/pgrepl-lab/pg/15/bin\""), "{text}");
    assert_eq!(
        host_psql(
            "10.213.7.11",
            "sshupg",
            "SELECT string_agg(application_name || ':' || state, ',' ORDER BY application_name) FROM pg_stat_replication;"
        ),
        "db2:streaming,db3:streaming"
    );
    for (_, addr, _) in LAB_HOSTS {
        assert_eq!(host_psql(addr, "sshupg", "SHOW server_version_num;").parse::<u32>().unwrap() / 10000, 15, "{addr}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while host_psql(addr, "sshupg", "SELECT count(*) FROM t;") != "1234" && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(host_psql(addr, "sshupg", "SELECT count(*) FROM t;"), "1234", "{addr}");
        let (_, v) = NetnsLab::ssh(addr, "cat /var/lib/postgresql/plainroot/sshupg/data-14.old/PG_VERSION");
        assert_eq!(v.trim(), "14", "{addr}: the old data directory is kept");
    }
    let (code, out, err) = run(&["status", "-f", f, "--work-dir", w]);
    assert_eq!(code, 0, "status over SSH after the upgrade: {out}\n{err}");
    let (code, _, err) = run(&["destroy", "--yes", "-f", f, "--work-dir", w]);
    assert_eq!(code, 0, "{err}");
}

/// A standby's clone fails after the upgraded primary started (pg_basebackup injected to
/// fail): the primary runs the new major and the cluster file says so, the report says
/// what failed and to run `up`, every old data directory is kept; `up` with the new
/// binaries then clones the standbys and the cluster is whole, every row there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_after_the_point_of_no_return_is_finished_by_up() {
    let (bin, client) = bins("14");
    let (nbin, nclient) = bins("16");
    let mut wd = WorkDir::new("upgrade-forward").with_bin(&bin);
    let broken_client = failing_tool(&wd.path.join("pg16"), "16", "pg_basebackup");
    let port = free_ports(3);
    let spec = wd.path.join("pgrepl.toml");
    std::fs::write(&spec, local_spec("upgfwd", "14", port, &wd.str(), "")).unwrap();
    let f = spec.to_str().unwrap();
    let (code, out, err) = run(&["up", "-f", f, "--pg-bin", bin.to_str().unwrap(), "--pg-client-bin", client.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}\n{err}");
    psql(&client, &wd.path, "db1", port, "CREATE TABLE t AS SELECT generate_series(1, 300) AS i;");

    let (code, out, err) = run(&[
        "upgrade",
        "--to",
        "16",
        "--yes",
        "-f",
        f,
        "--pg-bin",
        bin.to_str().unwrap(),
        "--pg-client-bin",
        client.to_str().unwrap(),
        "--new-pg-bin",
        nbin.to_str().unwrap(),
        "--new-pg-client-bin",
        broken_client.to_str().unwrap(),
    ]);
    wd.bin = Some(nbin.clone());
    assert_eq!(code, 4, "{out}\n{err}");
    assert!(out.contains("FAILED: step 13 (db2: clone from db1"), "{out}");
    assert!(out.contains("injected failure: pg_basebackup"), "{out}");
    assert!(out.contains("runs PostgreSQL 16 (upgraded)") && out.contains("`pgrepl up`"), "{out}");
    assert!(std::fs::read_to_string(&spec).unwrap().contains("postgres = \"16\""), "the cluster file says the new major");
    assert_eq!(psql(&nclient, &wd.path, "db1", port, "SHOW server_version_num;").parse::<u32>().unwrap() / 10000, 16);
    for n in ["db1", "db2", "db3"] {
        assert_eq!(std::fs::read_to_string(wd.path.join(n).join("data-14.old/PG_VERSION")).unwrap().trim(), "14", "{n}: kept");
    }
    assert!(!wd.path.join("db3/data/PG_VERSION").exists(), "db3 holds no old major's files where `up` looks");

    let newf = ["-f", f, "--pg-bin", nbin.to_str().unwrap(), "--pg-client-bin", nclient.to_str().unwrap()];
    let (code, out, err) = run(&[&["up"][..], &newf].concat());
    assert_eq!(code, 0, "up finishes the upgrade: {out}\n{err}");
    assert_eq!(
        psql(
            &nclient,
            &wd.path,
            "db1",
            port,
            "SELECT string_agg(application_name || ':' || state, ',' ORDER BY application_name) FROM pg_stat_replication;"
        ),
        "db2:streaming,db3:streaming"
    );
    for (i, n) in ["db2", "db3"].iter().enumerate() {
        let p = port + 1 + i as u16;
        assert_eq!(psql(&nclient, &wd.path, n, p, "SHOW server_version_num;").parse::<u32>().unwrap() / 10000, 16, "{n}");
        assert_eq!(wait_for(&nclient, &wd.path, n, p, "SELECT count(*) FROM t;", "300"), "300", "{n}");
    }
    let (code, _, err) = run(&[&["down"][..], &newf].concat());
    assert_eq!(code, 0, "{err}");
}

/// Makes the lab's full build of `major` appear on a netns lab host as Debian's package of
/// it would (inside the host's own mount namespace only): `/usr/lib/postgresql/<major>`
/// beside Debian's 15, so postgresql-common (pg_createcluster, pg_lsclusters) knows the
/// version, and its libpq as the system's `libpq.so.5`, as PGDG's libpq5 (always the
/// newest major's) is on such hosts (the build's walreceiver loads the system's libpq).
fn debian_package_on_lab_host(addr: &str, letter: &str, major: &str) {
    let lab = lab_dir();
    let stage = NetnsLab::host_dir(letter).join("usr-lib-postgresql");
    let script = format!(
        "set -e; s={stage}; mkdir -p $s/15 $s/{major}; \
         mountpoint -q $s/15 || mount --bind /usr/lib/postgresql/15 $s/15; \
         mountpoint -q $s/{major} || mount --bind {lab}/pg/{major}/ $s/{major}; \
         [ -x /usr/lib/postgresql/{major}/bin/postgres ] || mount --rbind $s /usr/lib/postgresql; \
         mount --bind {lab}/pg/{major}/lib/libpq.so.5 /usr/lib/x86_64-linux-gnu/libpq.so.5; \
         ls /usr/lib/postgresql",
        stage = stage.display(),
        lab = lab.display()
    );
    let (code, out) = NetnsLab::ssh(addr, &script);
    assert_eq!(code, 0, "{addr}: {out}");
    assert!(out.contains("15") && out.contains(major), "{addr}: {out}");
}

/// SQL on a netns lab host's Debian cluster `<major>/main` through its own psql and socket.
fn debian_psql(addr: &str, major: &str, sql: &str) -> String {
    let (code, out) = NetnsLab::ssh(
        addr,
        &format!(
            "runuser -u postgres -- /usr/lib/postgresql/{major}/bin/psql -X -A -t -h /var/run/postgresql -p 5432 -d postgres -c \"{sql}\""
        ),
    );
    assert_eq!(code, 0, "psql on {addr}: {out}");
    out.trim().to_string()
}

/// Over SSH, on the three netns hosts, with Debian's layout (the lab hosts' own: Debian's
/// postgresql-15 clusters `15/main`, driven with pg_ctl): 15 -> 16 with the lab's build of
/// 16 where Debian's package would put it, and no `--new-pg-bin`. Every row on every host,
/// the standbys streaming from the upgraded primary, `pg_lsclusters` showing 16/main
/// online on port 5432 and 15/main down on another port with start.conf manual under
/// pgrepl's marker; `upgrade --finish` drops 15/main everywhere.
#[test]
fn ssh_debian_layout_major_upgrade_15_to_16() {
    debian_upgrade_15_to_16(false);
}

/// The same with `--link`: the primary's old cluster, whose files are the new one's, is
/// `disabled` (pg_ctlcluster refuses it), the standbys' `manual`; `destroy` before `--finish`
/// drops them with the new clusters.
#[test]
fn ssh_debian_layout_major_upgrade_15_to_16_link() {
    debian_upgrade_15_to_16(true);
}

fn debian_upgrade_15_to_16(link: bool) {
    let _lab = NetnsLab::up();
    for (_, addr, letter) in LAB_HOSTS {
        debian_package_on_lab_host(addr, letter, "16");
    }
    let wd = WorkDir::new("ssh-debian-upgrade");
    let spec = wd.path.join("debupg.toml");
    std::fs::write(&spec, ssh_spec("debupg", "15", &NetnsLab::known_hosts(), "strict", "")).unwrap();
    let f = spec.to_str().unwrap();
    let w = wd.path.to_str().unwrap();
    let (code, out, err) = run(&["up", "-f", f, "--work-dir", w]);
    assert_eq!(code, 0, "{out}\n{err}");
    debian_psql("10.213.7.11", "15", "CREATE TABLE t AS SELECT generate_series(1, 1234) AS i;");

    let (code, out, err) = run(&["upgrade", "--to", "16", "--dry-run", "-f", f, "--work-dir", w]);
    assert_eq!(code, 0, "dry run: {out}\n{err}");
    assert!(out.contains("pg_createcluster 16 main (new major, port "), "{out}");
    assert!(out.contains("the new cluster 16/main dropped (pg_dropcluster)"), "{out}");

    let mut args = vec!["upgrade", "--to", "16", "--yes", "-f", f, "--work-dir", w];
    if link {
        args.push("--link");
    }
    let (code, out, err) = run(&args);
    assert_eq!(code, 0, "upgrade over SSH: {out}\n{err}");
    assert!(out.contains(&format!("PostgreSQL 15 -> 16 ({})", if link { "--link" } else { "copy" })), "{out}");
    assert!(std::fs::read_to_string(&spec).unwrap().contains("postgres = \"16\""));
    assert_eq!(
        debian_psql(
            "10.213.7.11",
            "16",
            "SELECT string_agg(application_name || ':' || state, ',' ORDER BY application_name) FROM pg_stat_replication;"
        ),
        "db2:streaming,db3:streaming"
    );
    for (node, addr, _) in LAB_HOSTS {
        assert_eq!(debian_psql(addr, "16", "SHOW server_version_num;").parse::<u32>().unwrap() / 10000, 16, "{addr}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while debian_psql(addr, "16", "SELECT count(*) FROM t;") != "1234" && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(debian_psql(addr, "16", "SELECT count(*) FROM t;"), "1234", "{addr}");
        let (code, ls) = NetnsLab::ssh(addr, "pg_lsclusters -h");
        assert_eq!(code, 0, "{addr}: {ls}");
        let row = |v: &str| {
            ls.lines().find(|l| l.starts_with(&format!("{v} main "))).unwrap_or_else(|| panic!("{addr}: no {v}/main in {ls}")).to_string()
        };
        let r16 = row("16");
        let r15 = row("15");
        let f16: Vec<&str> = r16.split_whitespace().collect();
        let f15: Vec<&str> = r15.split_whitespace().collect();
        assert_eq!((f16[2], f16[3].split(',').next().unwrap()), ("5432", "online"), "{addr}: {ls}");
        assert_eq!(f15[3].split(',').next().unwrap(), "down", "{addr}: {ls}");
        assert_ne!(f15[2], "5432", "{addr}: the old cluster gave its port up: {ls}");
        let (_, start) = NetnsLab::ssh(addr, "cat /etc/postgresql/15/main/start.conf");
        let mode = if link && node == "db1" { "disabled" } else { "manual" };
        assert!(start.starts_with("# pgrepl: upgraded to 16/main") && start.lines().any(|l| l.trim() == mode), "{addr}: {start}");
        let (_, start16) = NetnsLab::ssh(addr, "grep -v '^#' /etc/postgresql/16/main/start.conf | grep -v '^$'");
        assert_eq!(start16.trim(), "manual", "{addr}: pgrepl starts the new cluster itself");
    }
    let (code, out, err) = run(&["status", "-f", f, "--work-dir", w]);
    assert_eq!(code, 0, "status over SSH after the upgrade: {out}\n{err}");

    if link {
        // `destroy` before `--finish`: the old clusters the upgrade kept go too.
        let (code, out, err) = run(&["destroy", "--yes", "-f", f, "--work-dir", w]);
        assert_eq!(code, 0, "destroy before --finish: {out}\n{err}");
        for (_, addr, _) in LAB_HOSTS {
            let (_, ls) = NetnsLab::ssh(addr, "pg_lsclusters -h");
            assert!(!ls.lines().any(|l| l.starts_with("15 main") || l.starts_with("16 main")), "{addr}: {ls}");
        }
        return;
    }
    let (code, out, err) = run(&["upgrade", "--finish", "--yes", "-f", f, "--work-dir", w]);
    assert_eq!(code, 0, "--finish: {out}\n{err}");
    for (node, addr, _) in LAB_HOSTS {
        assert!(out.contains(&format!("{node}: removed /var/lib/postgresql/15/main (PostgreSQL 15)")), "{out}");
        let (_, ls) = NetnsLab::ssh(addr, "pg_lsclusters -h");
        assert!(!ls.lines().any(|l| l.starts_with("15 ")), "{addr}: 15/main dropped: {ls}");
        assert!(ls.lines().any(|l| l.starts_with("16 main 5432 online")), "{addr}: {ls}");
    }
    let (code, _, err) = run(&["destroy", "--yes", "-f", f, "--work-dir", w]);
    assert_eq!(code, 0, "{err}");
}

/// Debian's layout over SSH, pg_upgrade failing after the stop (injected through
/// `--new-pg-bin`: the lab's 16 with a pg_upgrade that passes `--check` and fails the real
/// run): the upgrade goes back by itself: the new cluster 16/main dropped with
/// pg_dropcluster, every node's 15/main started again and streaming, every row there, the
/// cluster file unchanged.
#[test]
fn ssh_debian_layout_failure_after_the_stop_goes_back() {
    let _lab = NetnsLab::up();
    for (_, addr, letter) in LAB_HOSTS {
        debian_package_on_lab_host(addr, letter, "16");
    }
    let failing = lab_dir().join("netns").join("pg16-failing-pg-upgrade");
    let _ = std::fs::remove_dir_all(&failing);
    let nbin = failing_tool(&failing, "16", "pg_upgrade");
    let wd = WorkDir::new("ssh-debian-upgrade-back");
    let spec = wd.path.join("debback.toml");
    std::fs::write(&spec, ssh_spec("debback", "15", &NetnsLab::known_hosts(), "strict", "")).unwrap();
    let f = spec.to_str().unwrap();
    let w = wd.path.to_str().unwrap();
    let (code, out, err) = run(&["up", "-f", f, "--work-dir", w]);
    assert_eq!(code, 0, "{out}\n{err}");
    debian_psql("10.213.7.11", "15", "CREATE TABLE t AS SELECT generate_series(1, 321) AS i;");
    let spec_before = std::fs::read_to_string(&spec).unwrap();

    let (code, out, err) = run(&["upgrade", "--to", "16", "--yes", "--new-pg-bin", nbin.to_str().unwrap(), "-f", f, "--work-dir", w]);
    assert_eq!(code, 4, "{out}\n{err}");
    assert!(err.contains("(db1: pg_upgrade"), "{err}");
    assert!(err.contains("injected failure"), "pg_upgrade's own words: {err}");
    assert!(err.contains("db1: the new cluster 16/main dropped"), "{err}");
    assert!(err.contains("went back to PostgreSQL 15"), "{err}");
    assert_eq!(std::fs::read_to_string(&spec).unwrap(), spec_before, "the cluster file is unchanged");
    assert_eq!(
        debian_psql(
            "10.213.7.11",
            "15",
            "SELECT string_agg(application_name || ':' || state, ',' ORDER BY application_name) FROM pg_stat_replication;"
        ),
        "db2:streaming,db3:streaming"
    );
    debian_psql("10.213.7.11", "15", "INSERT INTO t VALUES (322);");
    for (node, addr, _) in LAB_HOSTS {
        assert!(err.contains(&format!("{node} started on PostgreSQL 15")), "{err}");
        let (code, ls) = NetnsLab::ssh(addr, "pg_lsclusters -h");
        assert_eq!(code, 0, "{addr}: {ls}");
        assert!(!ls.lines().any(|l| l.starts_with("16 ")), "{addr}: 16/main dropped: {ls}");
        assert!(ls.lines().any(|l| l.starts_with("15 main 5432 online")), "{addr}: {ls}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while debian_psql(addr, "15", "SELECT count(*) FROM t;") != "322" && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(debian_psql(addr, "15", "SELECT count(*) FROM t;"), "322", "{addr}");
    }
    let (code, _, err) = run(&["destroy", "--yes", "-f", f, "--work-dir", w]);
    assert_eq!(code, 0, "{err}");
    let _ = std::fs::remove_dir_all(&failing);
}
