//! The `pgrepl` binary without servers: render of the examples, error messages for bad
//! specs, and exit codes. Each test runs the built binary in its own temp directory.

use std::path::{Path, PathBuf};
use std::process::Command;

fn pgrepl(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_pgrepl"))
        .args(args)
        .current_dir(dir)
        .env_remove("PGREPL_FILE")
        .env("PGREPL_WORK_DIR", dir.join("work"))
        .output()
        .expect("pgrepl runs");
    (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").join(name)
}

#[test]
fn render_three_node_for_96_12_16() {
    let dir = tempfile::tempdir().unwrap();
    let ex = example("three-node.toml");
    let ex = ex.to_str().unwrap();
    let (code, out, err) = pgrepl(dir.path(), &["render", "-f", ex, "--pg-version", "9.6"]);
    assert_eq!(code, 0, "{err}");
    for k in ["recovery.conf", "standby_mode = 'on'", "trigger_file = ", "wal_keep_segments", "--xlog-method=stream", "hot_standby = on"] {
        assert!(out.contains(k), "9.6 render lacks {k}");
    }
    let (code, out, _) = pgrepl(dir.path(), &["render", "-f", ex, "--pg-version", "12", "--node", "db2"]);
    assert_eq!(code, 0);
    assert!(out.contains("standby.signal") && out.contains("promote_trigger_file") && out.contains("primary_slot_name = 'pgrepl_db2'"));
    assert!(!out.contains("=== db1"), "--node db2 renders db2 only");
    let (code, out, _) = pgrepl(dir.path(), &["render", "-f", ex, "--pg-version", "16"]);
    assert_eq!(code, 0);
    assert!(!out.contains("promote_trigger_file") && out.contains("wal_keep_size = '512MB'"));
    assert!(out.contains("promote: DO $$BEGIN IF NOT pg_catalog.pg_promote(false)"), "{out}");
}

#[test]
fn render_json_is_machine_readable_and_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let ex = example("five-node-cascade-quorum.toml");
    let (code, out, err) = pgrepl(dir.path(), &["render", "-f", ex.to_str().unwrap(), "--output", "json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let nodes = v.as_array().unwrap();
    assert_eq!(nodes.len(), 5);
    assert_eq!(nodes[0]["role"], "primary");
    let settings = nodes[0]["settings"].as_array().unwrap();
    assert!(settings.iter().any(|s| s[0] == "synchronous_standby_names" && s[1] == "'ANY 2 (db2, db3, db4)'"), "{settings:?}");
    // db5 cascades from db2: its conninfo points at db2's port, and db2 creates its slot.
    let db5 = nodes.iter().find(|n| n["node"] == "db5").unwrap();
    assert!(db5["settings"].to_string().contains("port=7433"));
    let db2 = nodes.iter().find(|n| n["node"] == "db2").unwrap();
    assert!(db2["sql"].to_string().contains("pgrepl_db5"));
    assert!(out.contains("********"), "the passfile is redacted");
}

#[test]
fn five_node_example_renders_for_every_major_that_has_quorum() {
    // --pg-version overrides the spec's major for render: "what would this be on N?".
    let dir = tempfile::tempdir().unwrap();
    let ex = example("five-node-cascade-quorum.toml");
    for m in ["10", "11", "12", "13", "14", "15", "16", "17", "18"] {
        let (code, out, err) = pgrepl(dir.path(), &["render", "-f", ex.to_str().unwrap(), "--pg-version", m]);
        assert_eq!(code, 0, "{m}: {err}");
        assert!(out.contains("synchronous_standby_names = 'ANY 2 (db2, db3, db4)'"), "{m}");
    }
    // 9.6 has no quorum: refused, naming the field.
    let (code, _, err) = pgrepl(dir.path(), &["render", "-f", ex.to_str().unwrap(), "--pg-version", "9.6"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("replication.sync.mode: quorum (\"any\") needs PostgreSQL 10, this is 9.6"), "{err}");
}

#[test]
fn bad_spec_exits_2_and_names_fields() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.toml");
    std::fs::write(
        &f,
        "name = \"x\"\npostgres = \"9.6\"\n[replication]\nauth = \"scram-sha-256\"\n[[nodes]]\nname = \"db1\"\nrole = \"primary\"\n[[nodes]]\nname = \"db2\"\nrole = \"standby\"\nupstream = \"db9\"\n",
    )
    .unwrap();
    let (code, _, err) = pgrepl(dir.path(), &["render", "-f", f.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("nodes[1].upstream: unknown node \"db9\" (expected one of: db1, db2)"), "{err}");
    assert!(err.contains("replication.auth: scram-sha-256 does not exist in PostgreSQL 9.6"), "{err}");
    // up refuses the same spec before touching anything.
    let (code, _, err) = pgrepl(dir.path(), &["up", "-f", f.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(!dir.path().join("work").exists(), "nothing created for an invalid spec");
}

#[test]
fn missing_file_and_unknown_node() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = pgrepl(dir.path(), &["render", "-f", "/nonexistent/pgrepl.toml"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("could not read cluster file /nonexistent/pgrepl.toml"), "{err}");
    let ex = example("three-node.toml");
    let (code, _, err) = pgrepl(dir.path(), &["render", "-f", ex.to_str().unwrap(), "--pg-version", "16", "--node", "db9"]);
    assert_ne!(code, 0);
    assert!(err.contains("db9: no such node (the cluster has: db1, db2, db3)"), "{err}");
}

#[test]
fn missing_binaries_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let ex = example("three-node.toml");
    let (code, _, err) = pgrepl(dir.path(), &["up", "-f", ex.to_str().unwrap(), "--pg-bin", "/nonexistent/bin"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("--pg-bin /nonexistent/bin: no PostgreSQL server there"), "{err}");
    assert!(!dir.path().join("work").exists(), "nothing created");
}

#[test]
fn status_without_a_cluster_says_how_to_create_one() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = pgrepl(dir.path(), &["status"]);
    assert_eq!(code, 2, "a usage error: {err}");
    assert!(err.contains("no cluster file given (-f) and no default cluster at"), "{err}");
    assert!(err.contains("run `pgrepl up`"), "{err}");
}

#[test]
fn destroy_without_a_terminal_needs_yes() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let spec = format!(
        "name = \"d\"\npostgres = \"16\"\n[provider]\nkind = \"local\"\nwork_dir = \"{}\"\n[[nodes]]\nname = \"db1\"\nrole = \"primary\"\n",
        work.display()
    );
    let f = dir.path().join("d.toml");
    std::fs::write(&f, spec).unwrap();
    // Binaries may or may not exist here: with none, discovery fails first (exit 4);
    // with some, destroy must refuse without --yes (exit 4 from the bail) and remove nothing.
    let (code, _, _) = pgrepl(dir.path(), &["destroy", "-f", f.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(work.exists());
}

/// `status` of a spec whose major has no binaries here: a clear error and exit 4, never a
/// panic (101).
#[test]
fn status_with_a_major_that_has_no_binaries_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("pgrepl.toml");
    std::fs::write(
        &spec,
        format!(
            "name = \"nobins\"\npostgres = \"9.6\"\n[provider]\nkind = \"local\"\nwork_dir = \"{}\"\n[[nodes]]\nname = \"db1\"\nrole = \"primary\"\n",
            dir.path().join("work").display()
        ),
    )
    .unwrap();
    for output in ["text", "json"] {
        let (code, out, err) = pgrepl(dir.path(), &["status", "-f", spec.to_str().unwrap(), "--output", output]);
        assert_eq!(code, 4, "{out}\n{err}");
        assert!(err.contains("no PostgreSQL 9.6 server binaries found") && !err.contains("panicked"), "{err}");
    }
}

/// A cluster file that does not exist is a usage error (exit 2) naming the path, for every
/// command that reads one, given with -f or PGREPL_FILE; a directory is one too.
#[test]
fn missing_cluster_file_is_a_usage_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let m = missing.to_str().unwrap();
    let said = format!("could not read cluster file {m}: it does not exist");
    for args in [
        &["status", "-f", m][..],
        &["status", "-f", m, "--watch", "1"],
        &["up", "-f", m],
        &["render", "-f", m],
        &["render", "--haproxy", "-f", m],
        &["connstr", "-f", m],
        &["switchover", "--to", "db2", "-f", m],
        &["destroy", "--yes", "-f", m],
    ] {
        let (code, out, err) = pgrepl(dir.path(), args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(err.contains(&said), "{args:?}: {err}");
    }
    let o =
        Command::new(env!("CARGO_BIN_EXE_pgrepl")).args(["status"]).current_dir(dir.path()).env("PGREPL_FILE", &missing).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains(&said));
    let (code, _, err) = pgrepl(dir.path(), &["status", "-f", dir.path().to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("it is a directory"), "{err}");
    assert!(!dir.path().join("work").exists(), "nothing created");
}

#[test]
fn completions_for_bash_zsh_and_fish() {
    let dir = tempfile::tempdir().unwrap();
    for (shell, marker) in [("bash", "complete -F _pgrepl"), ("zsh", "#compdef pgrepl"), ("fish", "complete -c pgrepl")] {
        let (code, out, err) = pgrepl(dir.path(), &["completions", shell]);
        assert_eq!(code, 0, "{shell}: {err}");
        assert!(out.contains(marker), "{shell}: no {marker:?} in\n{out}");
        for word in ["switchover", "failover", "--haproxy", "--watch"] {
            assert!(out.contains(word), "{shell}: {word} missing");
        }
        if shell == "bash" {
            let f = dir.path().join("pgrepl.bash");
            std::fs::write(&f, &out).unwrap();
            let o = Command::new("bash").arg("-n").arg(&f).output().unwrap();
            assert!(o.status.success(), "bash -n: {}", String::from_utf8_lossy(&o.stderr));
        }
    }
    let (code, _, err) = pgrepl(dir.path(), &["completions", "tcsh"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn render_haproxy_of_an_ha_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let ex = example("ha-local.toml");
    let ex = ex.to_str().unwrap();
    let (code, out, err) = pgrepl(dir.path(), &["render", "--haproxy", "-f", ex]);
    assert_eq!(code, 0, "{err}");
    for k in [
        "listen ha-demo-rw\n    bind 127.0.0.1:5000\n",
        "listen ha-demo-ro\n    bind 127.0.0.1:5001\n    balance roundrobin\n",
        "http-check send meth GET uri /primary\n",
        "http-check send meth GET uri /replica\n",
        "server db1 127.0.0.1:6532 check port 8008\n",
        "server db3 127.0.0.1:6534 check port 8010\n",
    ] {
        assert!(out.contains(k), "no {k:?} in\n{out}");
    }
    assert!(!out.contains("stats enable"), "no stats page unless asked");
    // -o writes the same text to the file, nothing on stdout.
    let cfg = dir.path().join("haproxy.cfg");
    let (code, out2, err) = pgrepl(dir.path(), &["render", "--haproxy", "-f", ex, "-o", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out2.is_empty());
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), out);
    // Options.
    let (code, out, err) = pgrepl(
        dir.path(),
        &["render", "--haproxy", "-f", ex, "--bind", "::1", "--rw-port", "6000", "--ro-port", "6001", "--stats-port", "7000"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("bind [::1]:6000") && out.contains("bind [::1]:6001") && out.contains("bind [::1]:7000\n"), "{out}");
    assert!(out.contains("stats enable"), "{out}");
}

#[test]
fn render_haproxy_refusals_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let plain = example("three-node.toml");
    let ha = example("ha-local.toml");
    let (plain, ha) = (plain.to_str().unwrap(), ha.to_str().unwrap());
    for (args, said) in [
        (&["render", "--haproxy", "-f", plain][..], "HAProxy routing needs the agents' health endpoints"),
        (&["render", "--haproxy", "-f", ha, "--bind", "localhost"], "\"localhost\" is not an IP address"),
        (&["render", "--haproxy", "-f", ha, "--ro-port", "5000"], "ports are both 5000"),
        (&["render", "--haproxy", "-f", ha, "--output", "json"], "--output json does not apply"),
        (&["render", "--haproxy"], "render needs a cluster file"),
        (&["render", "-f", ha, "--rw-port", "6000"], "--haproxy"),
        (&["render", "-f", ha, "-o", "x.cfg"], "--haproxy"),
        (&["render", "--haproxy", "-f", ha, "--node", "db1"], "cannot be used with"),
        (&["render", "--haproxy", "-f", ha, "--rw-port", "0"], "0"),
    ] {
        let (code, out, err) = pgrepl(dir.path(), args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(err.contains(said), "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}: {out}");
    }
    assert!(!dir.path().join("x.cfg").exists());
}

#[test]
fn status_watch_options_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let ex = example("three-node.toml");
    let ex = ex.to_str().unwrap();
    for args in [
        &["status", "-f", ex, "--count", "2"][..],
        &["status", "-f", ex, "--watch", "0"],
        &["status", "-f", ex, "--watch", "soon"],
        &["status", "-f", ex, "--watch", "1", "--count", "0"],
    ] {
        let (code, _, err) = pgrepl(dir.path(), args);
        assert_eq!(code, 2, "{args:?}: {err}");
    }
    let (_, out, _) = pgrepl(dir.path(), &["status", "--help"]);
    assert!(out.contains("24 hours"), "the help says the watch's limit:\n{out}");
}

#[test]
fn render_backup_section_per_version_and_its_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bk.toml");
    std::fs::write(
        &f,
        "name = \"bk\"\npostgres = \"15\"\n[backup]\ntool = \"barman-cloud\"\nbucket = \"acme-pg\"\nprefix = \"prod\"\n\
         schedule = \"0 3 * * *\"\nretention = { keep = 2 }\n[[nodes]]\nname = \"db1\"\nrole = \"primary\"\n[[nodes]]\nname = \"db2\"\nrole = \"standby\"\n",
    )
    .unwrap();
    let f = f.to_str().unwrap();
    let (code, out, err) = pgrepl(dir.path(), &["render", "-f", f]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("archive_mode = always"), "{out}");
    assert!(
        out.contains("/opt/pgrepl/barman/bin/barman-cloud-wal-archive --cloud-provider aws-s3 --gzip s3://acme-pg/prod bk %p"),
        "{out}"
    );
    assert!(out.contains("barman-cloud-wal-restore --cloud-provider aws-s3 --no-partial --spool-dir "), "{out}");
    assert!(out.contains("/db2/pgrepl/barman-spool s3://acme-pg/prod bk %f %p"), "each node its own spool directory: {out}");
    assert!(out.contains("=== backup schedule (/etc/cron.d/pgrepl-bk) ===\n0 3 * * * root pgrepl backup -f "), "{out}");
    let (code, out, _) = pgrepl(dir.path(), &["render", "-f", f, "--pg-version", "11", "--node", "db2"]);
    assert_eq!(code, 0);
    assert!(out.contains("recovery.conf") && out.contains("restore_command = '/opt/pgrepl/barman/bin/barman-cloud-wal-restore"), "{out}");
    assert!(out.contains("archive_mode = always"), "{out}");
    // Bad input names the field; a restore needs a target.
    std::fs::write(
        dir.path().join("bad.toml"),
        "name = \"bk\"\n[backup]\ntool = \"barman-cloud\"\n[[nodes]]\nname = \"db1\"\nrole = \"primary\"\n",
    )
    .unwrap();
    let (code, _, err) = pgrepl(dir.path(), &["render", "-f", dir.path().join("bad.toml").to_str().unwrap(), "--pg-version", "15"]);
    assert_eq!(code, 2);
    assert!(err.contains("backup.bucket"), "{err}");
    let (code, _, err) = pgrepl(dir.path(), &["restore", "-f", f, "--into", "x.toml"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = pgrepl(dir.path(), &["restore", "-f", f, "--into", "x.toml", "--to-time", "yesterday"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--to-time"), "{err}");
}
