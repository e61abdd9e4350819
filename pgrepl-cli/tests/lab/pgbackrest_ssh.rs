//! pgBackRest with its repository on a host reached over SSH (`backup.repo_host`), on the
//! 3-host network-namespace lab: db1 on pgl-a, db2 on pgl-b, the repository on pgl-c
//! (its own `/var/lib/postgresql`, the `postgres` user there); pgrepl sets up the SSH
//! trust both ways (keys allowed to run pgBackRest only), the repository host's
//! configuration and the stanza. Nothing leaves the machine (no route out of the lab).

use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::backups_common::rfc3339;
use crate::common::*;

const REPO: &str = "10.213.7.13";

fn spec(name: &str, nodes: &[(&str, &str)]) -> String {
    let mut s = format!(
        "name = \"{name}\"\npostgres = \"15\"\n[provider]\nkind = \"ssh\"\nuser = \"root\"\nkey_file = \"{}\"\nknown_hosts = \"{}\"\n\
         host_key_policy = \"strict\"\nconnect_timeout_secs = 3\n\n[backup]\ntool = \"pgbackrest\"\nrepo_host = \"{REPO}\"\n\
         repo_host_user = \"postgres\"\nrepo_path = \"/var/lib/postgresql/pgbackrest-repo\"\n",
        NetnsLab::key().display(),
        NetnsLab::known_hosts().display()
    );
    for (i, (node, addr)) in nodes.iter().enumerate() {
        let role = if i == 0 { "primary" } else { "standby" };
        s.push_str(&format!("\n[[nodes]]\nname = \"{node}\"\naddress = \"{addr}\"\nrole = \"{role}\"\n"));
    }
    s
}

fn run(f: &Path, wd: &WorkDir, args: &[&str]) -> (i32, String, String) {
    let f = f.to_string_lossy();
    let mut a = vec![args[0], "-f", &f, "--work-dir", wd.path.to_str().unwrap()];
    a.extend(&args[1..]);
    pgrepl_ok(&a)
}

/// `count` rows inserted on db1 (pgl-a), each its own transaction (committed and
/// acknowledged before the next is sent), ids from `first`.
fn write_rows(first: i64, count: i64) {
    // One statement per psql call: a DO block that commits cannot be in a transaction.
    NetnsLab::psql("10.213.7.11", 5432, "CREATE TABLE IF NOT EXISTS t (id bigint PRIMARY KEY)");
    let sql =
        format!("DO \\$\\$ BEGIN FOR i IN {first}..{} LOOP INSERT INTO t VALUES (i); COMMIT; END LOOP; END \\$\\$", first + count - 1);
    NetnsLab::psql("10.213.7.11", 5432, &sql);
}

/// up with archiving to the repository host over SSH, a backup (run there), rows, T,
/// more rows, `restore --to-time T` into a new cluster (on pgl-c): exactly the rows
/// acknowledged before T. The keys pgrepl installed run pgBackRest only.
#[test]
fn pgbackrest_repo_host_over_ssh_pitr_15() {
    let _lab = NetnsLab::up();
    let wd = WorkDir::new("brssh");
    let f = wd.path.join("brssh.toml");
    std::fs::write(&f, spec("brssh", &[("db1", "10.213.7.11"), ("db2", "10.213.7.12")])).unwrap();
    let (code, out, err) = run(&f, &wd, &["up"]);
    assert_eq!(code, 0, "up: {out}\n{err}");
    assert!(out.contains(&format!("pgBackRest stanza ready (repository host {REPO})")), "{out}");
    let cmd = NetnsLab::psql("10.213.7.11", 5432, "SELECT current_setting('archive_command')");
    assert!(cmd.contains("pgbackrest --config-path=") && cmd.ends_with("archive-push %p"), "{cmd}");

    // The trust: each key runs pgBackRest only, no terminal, no forwarding.
    let (_, keys) = NetnsLab::ssh(REPO, "cat /var/lib/postgresql/.ssh/authorized_keys");
    assert!(keys.lines().count() >= 2, "a key of db1's and of db2's postgres: {keys}");
    for l in keys.lines() {
        assert!(
            l.starts_with("no-agent-forwarding,no-X11-forwarding,no-port-forwarding,no-pty,no-user-rc,command=\"/usr/bin/pgbackrest "),
            "{l}"
        );
    }
    let (_, shell) = NetnsLab::ssh("10.213.7.11", &format!("cd / && runuser -u postgres -- ssh -o BatchMode=yes {REPO} id 2>&1; true"));
    assert!(!shell.contains("uid="), "postgres@db1 runs a shell on the repository host: {shell}");

    let (code, out, err) = run(&f, &wd, &["backup"]);
    assert_eq!(code, 0, "backup: {out}\n{err}");
    let (_, repo) = NetnsLab::ssh(REPO, "ls /var/lib/postgresql/pgbackrest-repo/backup/brssh");
    assert!(repo.lines().any(|l| l.ends_with('F')), "the full backup is on the repository host: {repo}");

    write_rows(1, 300);
    std::thread::sleep(Duration::from_millis(1500));
    let t = SystemTime::now();
    std::thread::sleep(Duration::from_millis(1500));
    write_rows(1001, 300);

    let into = wd.path.join("brssh-r.toml");
    std::fs::write(&into, spec("brssh-r", &[("db1", REPO)])).unwrap();
    let (code, out, err) = run(&f, &wd, &["restore", "--to-time", &rfc3339(t), "--into", &into.to_string_lossy()]);
    assert_eq!(code, 0, "restore --to-time into a new cluster on pgl-c: {out}\n{err}");
    let got = NetnsLab::psql(REPO, 5432, "SELECT count(*), min(id), max(id) FROM t");
    assert_eq!(got, "300|1|300", "exactly the rows acknowledged before T");
    // The source is untouched and still archives.
    assert_eq!(NetnsLab::psql("10.213.7.11", 5432, "SELECT count(*) FROM t"), "600");
    let (code, out, err) = run(&f, &wd, &["backups", "--output", "json"]);
    assert_eq!(code, 0, "backups: {out}\n{err}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{out}");
    let _ = run(&into, &wd, &["destroy", "--yes"]);
    let _ = run(&f, &wd, &["destroy", "--yes"]);
}
