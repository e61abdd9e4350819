//! One test per spec the core issue says must be rejected. Each checks that the error
//! names the field (as written in pgrepl.toml) and what was expected.

use pgrepl_core::{ClusterSpec, PgMajor, SpecErrors};

const BASE: &str = r#"
name = "t"
postgres = "16"
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

fn errors(toml: &str) -> SpecErrors {
    let spec = match ClusterSpec::from_toml(toml) {
        Ok(s) => s,
        Err(e) => return e,
    };
    match spec.validate() {
        Ok(c) => panic!("expected errors, got a valid cluster: {c:?}"),
        Err(e) => e,
    }
}

/// Asserts an error on `field` whose message contains every one of `words`.
fn assert_field(errs: &SpecErrors, field: &str, words: &[&str]) {
    let e = errs.get(field).unwrap_or_else(|| panic!("no error on {field}; got:\n{errs}"));
    let text = e.to_string();
    assert!(text.starts_with(&format!("{field}: ")), "{text}");
    for w in words {
        assert!(text.contains(w), "error on {field} lacks {w:?}: {text}");
    }
}

fn with(version: &str, extra: &str) -> String {
    BASE.replace("postgres = \"16\"", &format!("postgres = \"{version}\"\n{extra}"))
}

#[test]
fn valid_base_spec() {
    let c = ClusterSpec::from_toml(BASE).unwrap().validate().unwrap();
    assert_eq!(c.primary().name, "db1");
    assert_eq!(c.node("db2").unwrap().slot.as_deref(), Some("pgrepl_db2"));
    assert_eq!(c.node("db3").unwrap().port, 5434);
}

#[test]
fn no_primary() {
    let e = errors(&BASE.replace("role = \"primary\"", "role = \"standby\""));
    assert_field(&e, "nodes", &["no node has role = \"primary\"", "expected exactly one primary"]);
}

#[test]
fn two_primaries() {
    let e = errors(&BASE.replacen("role = \"standby\"", "role = \"primary\"", 1));
    assert_field(&e, "nodes[1].role", &["\"db2\" is a second primary", "\"db1\" is already primary", "exactly one primary"]);
}

#[test]
fn duplicate_names() {
    let e = errors(&BASE.replace("name = \"db3\"", "name = \"db2\""));
    assert_field(&e, "nodes[2].name", &["duplicate node name \"db2\"", "nodes[1]", "unique node names"]);
}

#[test]
fn duplicate_address_and_port() {
    let toml = BASE.replace("name = \"db3\"\nrole = \"standby\"", "name = \"db3\"\nrole = \"standby\"\nport = 5432");
    let e = errors(&toml);
    assert_field(&e, "nodes[2].port", &["127.0.0.1:5432 is also used by nodes[0] (\"db1\")", "unique address:port"]);
}

#[test]
fn unknown_version() {
    let e = errors(&with("19", ""));
    let text = e.to_string();
    assert!(text.contains("unknown PostgreSQL version \"19\""), "{text}");
    assert!(text.contains("from 9.0 to 18"), "{text}");
    assert!(text.contains("line "), "names the line: {text}");
}

#[test]
fn unsupported_version() {
    let e = errors(&with("9.2", "[replication]\nslots = false\n"));
    assert_field(&e, "postgres", &["PostgreSQL 9.2 is not supported", "9.3", "one of 9.3, 9.4"]);
}

#[test]
fn sync_count_larger_than_standbys() {
    let e = errors(&with("16", "[replication]\nsync = { mode = \"any\", count = 3 }\n"));
    assert_field(&e, "replication.sync.count", &["3 synchronous standbys asked but only 2", "a count from 1 to 2"]);
}

#[test]
fn slots_on_a_version_without_them() {
    let e = errors(&with("9.3", "[replication]\nslots = true\n"));
    assert_field(&e, "replication.slots", &["PostgreSQL 9.3 has no replication slots", "slots = false before 9.4"]);
}

#[test]
fn quorum_on_a_version_without_it() {
    let e = errors(&with("9.6", "[replication]\nsync = { mode = \"any\", count = 1 }\n"));
    assert_field(&e, "replication.sync.mode", &["quorum (\"any\") needs PostgreSQL 10", "9.6", "mode = \"first\" before 10"]);
}

#[test]
fn several_sync_standbys_before_96() {
    let e = errors(&with("9.5", "[replication]\nsync = { mode = \"first\", count = 2 }\n"));
    assert_field(&e, "replication.sync.count", &["one synchronous standby at most", "count = 1 before 9.6"]);
}

#[test]
fn remote_apply_before_96() {
    let e = errors(&with("9.5", "[replication]\nsync = { mode = \"first\", count = 1, commit = \"remote_apply\" }\n"));
    assert_field(&e, "replication.sync.commit", &["remote_apply needs PostgreSQL 9.6"]);
}

#[test]
fn scram_on_9x() {
    let e = errors(&with("9.6", "[replication]\nauth = \"scram-sha-256\"\n"));
    assert_field(&e, "replication.auth", &["scram-sha-256 does not exist in PostgreSQL 9.6", "\"md5\" before PostgreSQL 10"]);
}

#[test]
fn upstream_cycle() {
    let toml = BASE
        .replace("name = \"db2\"\nrole = \"standby\"", "name = \"db2\"\nrole = \"standby\"\nupstream = \"db3\"")
        .replace("name = \"db3\"\nrole = \"standby\"", "name = \"db3\"\nrole = \"standby\"\nupstream = \"db2\"");
    let e = errors(&toml);
    assert_field(&e, "nodes[1].upstream", &["never reaches the primary", "cycle: db2 -> db3", "end at the primary"]);
    assert_field(&e, "nodes[2].upstream", &["never reaches the primary"]);
}

#[test]
fn unknown_upstream() {
    let toml = BASE.replace("name = \"db3\"\nrole = \"standby\"", "name = \"db3\"\nrole = \"standby\"\nupstream = \"db9\"");
    let e = errors(&toml);
    assert_field(&e, "nodes[2].upstream", &["unknown node \"db9\"", "one of: db1, db2, db3"]);
}

#[test]
fn upstream_on_primary_and_self() {
    let toml = BASE
        .replace("name = \"db1\"\nrole = \"primary\"", "name = \"db1\"\nrole = \"primary\"\nupstream = \"db2\"")
        .replace("name = \"db3\"\nrole = \"standby\"", "name = \"db3\"\nrole = \"standby\"\nupstream = \"db3\"");
    let e = errors(&toml);
    assert_field(&e, "nodes[0].upstream", &["the primary cannot stream from \"db2\""]);
    assert_field(&e, "nodes[2].upstream", &["streams from itself"]);
}

#[test]
fn invalid_slot_names() {
    let toml = BASE.replace("name = \"db2\"\nrole = \"standby\"", "name = \"db2\"\nrole = \"standby\"\nslot_name = \"Bad-Slot\"");
    let e = errors(&toml);
    assert_field(&e, "nodes[1].slot_name", &["\"Bad-Slot\" is not a valid slot name", "lowercase letters, digits and '_'"]);
}

#[test]
fn duplicate_slot_names() {
    let toml = BASE
        .replace("name = \"db2\"\nrole = \"standby\"", "name = \"db2\"\nrole = \"standby\"\nslot_name = \"s\"")
        .replace("name = \"db3\"\nrole = \"standby\"", "name = \"db3\"\nrole = \"standby\"\nslot_name = \"s\"");
    let e = errors(&toml);
    assert_field(&e, "nodes[2].slot_name", &["slot \"s\" is also used by nodes[1]"]);
}

#[test]
fn settings_a_version_does_not_have() {
    let e = errors(&with("12", "[settings]\nwal_keep_size = \"1GB\"\nmax_slot_wal_keep_size = \"10GB\"\n"));
    // wal_keep_size is managed by pgrepl; max_slot_wal_keep_size is 13+.
    assert_field(&e, "settings.wal_keep_size", &["managed by pgrepl", "[replication] wal_keep_mb"]);
    assert_field(
        &e,
        "settings.max_slot_wal_keep_size",
        &["PostgreSQL 12 has no setting \"max_slot_wal_keep_size\"", "a setting of PostgreSQL 12"],
    );
    let e = errors(&with("16", "[settings]\nvacuum_defer_cleanup_age = 0\n"));
    assert_field(&e, "settings.vacuum_defer_cleanup_age", &["PostgreSQL 16 has no setting", "hot_standby_feedback"]);
    let e = errors(&with("11", "[settings]\nrecovery_min_apply_delay = \"5min\"\n"));
    assert_field(&e, "settings.recovery_min_apply_delay", &["it lives in recovery.conf"]);
    let toml = with("17", "").replace(
        "name = \"db3\"\nrole = \"standby\"",
        "name = \"db3\"\nrole = \"standby\"\nsettings = { stats_temp_directory = \"/tmp\" }",
    );
    let e = errors(&toml);
    assert_field(&e, "nodes[2].settings.stats_temp_directory", &["PostgreSQL 17 has no setting"]);
}

#[test]
fn version_rules_wait_for_detection() {
    // With "detect", version rules apply once the major is known.
    let spec = ClusterSpec::from_toml(&with("detect", "[replication]\nsync = { mode = \"any\", count = 1 }\n")).unwrap();
    assert!(spec.validate().is_ok());
    let e = spec.validate_for(PgMajor::V9_6).unwrap_err();
    assert_field(&e, "replication.sync.mode", &["needs PostgreSQL 10"]);
    assert!(spec.validate_for(PgMajor::V16).is_ok());
    // An explicit major must match the binaries.
    let e = ClusterSpec::from_toml(BASE).unwrap().validate_for(PgMajor::V15).unwrap_err();
    assert_field(&e, "postgres", &["asks for PostgreSQL 16 but the binaries are 15"]);
}

#[test]
fn unknown_fields_name_the_key_and_line() {
    let e = errors(&BASE.replace("name = \"db2\"\nrole = \"standby\"", "name = \"db2\"\nrole = \"standby\"\nprot = 1"));
    let text = e.to_string();
    assert!(text.contains("unknown field `prot`"), "{text}");
    assert!(text.contains("line "), "{text}");
}

#[test]
fn bad_role_and_types() {
    let e = errors(&BASE.replace("role = \"primary\"", "role = \"leader\""));
    assert!(e.to_string().contains("unknown variant `leader`, expected one of `primary`, `standby`, `witness`"), "{e}");
    let e = errors(&BASE.replace("name = \"db3\"\nrole = \"standby\"", "name = \"db3\"\nrole = \"standby\"\nport = 70000"));
    assert!(e.to_string().contains("line "), "{e}");
}

#[test]
fn local_provider_needs_loopback() {
    let e = errors(&BASE.replace("name = \"db2\"\nrole = \"standby\"", "name = \"db2\"\nrole = \"standby\"\naddress = \"10.0.0.5\""));
    assert_field(&e, "nodes[1].address", &["\"10.0.0.5\" is not a loopback address"]);
}

#[test]
fn ssh_provider_needs_addresses() {
    let e = errors(&format!("{BASE}\n[provider]\nkind = \"ssh\"\n"));
    assert_field(&e, "nodes[0].address", &["missing", "SSH provider"]);
}

#[test]
fn aws_provider_never_opens_ssh_to_everyone_by_default() {
    let e = errors(&format!("{BASE}\n[provider]\nkind = \"aws\"\nregion = \"us-east-2\"\n"));
    assert_field(&e, "provider.admin_cidr", &["missing", "never opens it to 0.0.0.0/0"]);
    let e = errors(&format!("{BASE}\n[provider]\nkind = \"aws\"\nadmin_cidr = \"not-a-cidr\"\n"));
    assert_field(&e, "provider.admin_cidr", &["is not a CIDR"]);
    assert_field(&e, "provider.ssh_public_key_file", &["no key pair", "key_name"]);
    let e = errors(&format!(
        "{BASE}\n[provider]\nkind = \"aws\"\nadmin_cidr = \"10.0.0.1/32\"\nkey_name = \"k\"\nami = \"ubuntu\"\nsubnet_ids = [\"sub-1\"]\nvolume_type = \"fast\"\n"
    ));
    assert_field(&e, "provider.ami", &["is not an AMI id"]);
    assert_field(&e, "provider.subnet_ids[0]", &["is not a subnet id"]);
    assert_field(&e, "provider.volume_type", &["\"fast\"", "gp3"]);
}

#[test]
fn every_problem_is_reported_at_once() {
    let toml = BASE.replace("name = \"t\"", "name = \"Bad Name\"").replace("name = \"db3\"", "name = \"db2\"");
    let e = errors(&toml);
    assert!(e.get("name").is_some() && e.get("nodes[2].name").is_some(), "{e}");
}

#[test]
fn bad_input_never_panics() {
    // Every prefix of a realistic spec either parses or is an error, never a panic.
    let text = include_str!("../../examples/five-node-cascade-quorum.toml");
    for cut in (0..text.len()).step_by(7) {
        if !text.is_char_boundary(cut) {
            continue;
        }
        if let Ok(spec) = ClusterSpec::from_toml(&text[..cut]) {
            let _ = spec.validate();
            for m in PgMajor::ALL {
                let _ = spec.validate_for(*m);
            }
        }
    }
}

#[test]
fn builder_matches_toml() {
    use pgrepl_core::NodeSpec;
    let from_builder = ClusterSpec::builder("t")
        .postgres(PgMajor::V16)
        .node(NodeSpec::primary("db1"))
        .node(NodeSpec::standby("db2"))
        .node(NodeSpec::standby("db3"))
        .into_spec();
    assert_eq!(from_builder, ClusterSpec::from_toml(BASE).unwrap());
    // The same validation: a builder error names the same field.
    let e = ClusterSpec::builder("t").postgres(PgMajor::V16).node(NodeSpec::standby("db2")).build().unwrap_err();
    assert_field(&e, "nodes", &["no node has role = \"primary\""]);
}

#[test]
fn with_primary_moves_the_topology() {
    let toml = BASE.replace(
        "[[nodes]]\nname = \"db3\"\nrole = \"standby\"",
        "[[nodes]]\nname = \"db3\"\nrole = \"standby\"\n\n[[nodes]]\nname = \"db4\"\nrole = \"standby\"\nupstream = \"db3\"",
    );
    let toml = toml.replace("postgres = \"16\"", "postgres = \"16\"\n[replication]\nsync = { mode = \"first\", count = 1 }");
    let c = ClusterSpec::from_toml(&toml).unwrap().validate().unwrap();
    assert_eq!(c.replication.sync.standbys, vec!["db2", "db3"]);
    let moved = c.with_primary("db2").unwrap();
    assert_eq!(moved.primary().name, "db2");
    let db1 = moved.node("db1").unwrap();
    assert_eq!((db1.role, db1.upstream.as_deref(), db1.slot.as_deref()), (pgrepl_core::Role::Standby, Some("db2"), Some("pgrepl_db1")));
    assert_eq!(moved.node("db3").unwrap().upstream.as_deref(), Some("db2"));
    assert_eq!(moved.node("db4").unwrap().upstream.as_deref(), Some("db3"), "cascaded standbys keep their upstream");
    assert_eq!(moved.node("db2").unwrap().slot, None);
    assert_eq!(moved.replication.sync.standbys, vec!["db1", "db3"], "sync candidates follow the new primary");
    assert_eq!(moved.with_primary("db1").unwrap().primary().name, "db1");
    assert_eq!(c.with_primary("db9").unwrap_err().to_string(), "primary: unknown node \"db9\" (expected one of: db1, db2, db3, db4)");
}

#[test]
fn sync_degrades_unless_strict() {
    let toml = BASE.replace("postgres = \"16\"", "postgres = \"16\"\n[replication]\nsync = { mode = \"any\", count = 2 }");
    let c = ClusterSpec::from_toml(&toml).unwrap().validate().unwrap();
    let mut lenient = c.clone();
    let note = pgrepl_core::ha::exclude_from_sync(&mut lenient, &["db3".to_string()]).unwrap();
    assert_eq!((lenient.replication.sync.count, lenient.replication.sync.standbys.clone()), (1, vec!["db2".to_string()]));
    assert!(note.contains("only 1 available"), "{note}");
    let strict_toml = toml.replace("count = 2 }", "count = 2, strict = true }");
    let mut strict = ClusterSpec::from_toml(&strict_toml).unwrap().validate().unwrap();
    let note = pgrepl_core::ha::exclude_from_sync(&mut strict, &["db3".to_string()]).unwrap();
    assert_eq!(strict.replication.sync.count, 2, "strict keeps the count");
    assert_eq!(strict.replication.sync.standbys, vec!["db2", "db3"]);
    assert!(note.contains("commits wait") && note.contains("strict"), "{note}");
}

#[test]
fn plain_layout_needs_binaries() {
    let ssh = |extra: &str| {
        format!(
            "{}\n[provider]\nkind = \"ssh\"\n{extra}\n",
            BASE.replace("role = \"primary\"", "role = \"primary\"\naddress = \"127.0.0.11\"")
                .replace("name = \"db2\"\nrole = \"standby\"", "name = \"db2\"\nrole = \"standby\"\naddress = \"127.0.0.12\"")
                .replace("name = \"db3\"\nrole = \"standby\"", "name = \"db3\"\nrole = \"standby\"\naddress = \"127.0.0.13\"")
        )
    };
    let e = errors(&ssh("layout = \"plain\""));
    assert_field(&e, "pg_bin", &["missing with layout = \"plain\""]);
    let e = errors(&ssh("layout = \"tarball\""));
    assert_field(&e, "provider.layout", &["\"tarball\"", "\"auto\" or \"plain\""]);
    let ok = ssh("layout = \"plain\"").replace("postgres = \"16\"", "postgres = \"16\"\npg_bin = \"/opt/pg16/bin\"");
    assert!(ClusterSpec::from_toml(&ok).unwrap().validate().is_ok());
}

#[test]
fn hot_standby_is_managed() {
    let e = errors(&with("16", "[settings]\nhot_standby = false\n"));
    assert_field(&e, "settings.hot_standby", &["managed by pgrepl", "expected to set it through nothing", "standbys serve reads"]);
}

#[test]
fn listen_addresses_is_managed() {
    let e = errors(
        &BASE.replace("name = \"db2\"\nrole = \"standby\"", "name = \"db2\"\nrole = \"standby\"\nsettings = { listen_addresses = \"*\" }"),
    );
    assert_field(&e, "nodes[1].settings.listen_addresses", &["managed by pgrepl", "expected to set it through nodes[].address"]);
}

#[test]
fn wal_log_hints_is_managed() {
    let e = errors(&with("16", "[settings]\nwal_log_hints = \"off\"\n"));
    assert_field(&e, "settings.wal_log_hints", &["managed by pgrepl", "pg_rewind"]);
    let e = errors(
        &BASE.replace("name = \"db3\"\nrole = \"standby\"", "name = \"db3\"\nrole = \"standby\"\nsettings = { wal_log_hints = false }"),
    );
    assert_field(&e, "nodes[2].settings.wal_log_hints", &["managed by pgrepl"]);
}

#[test]
fn archive_path_with_a_line_break() {
    let e = errors(&with("16", "[archive]\nmode = \"dir\"\npath = \"/srv/arch\\nive\"\n"));
    assert_field(&e, "archive.path", &["control character", "a one-line path"]);
    // Spaces, quotes and percent signs are fine: they are quoted in the commands.
    let ok = with("16", "[archive]\nmode = \"dir\"\npath = \"/srv/with space/it's 100%\"\n");
    assert!(ClusterSpec::from_toml(&ok).unwrap().validate().is_ok());
}

#[test]
fn ha_section_is_checked() {
    let e = errors(&with("16", "[ha]\nttl = 0.5\nloop_wait = 1\n[ha.etcd]\nendpoints = []\n"));
    assert_field(&e, "ha.etcd.endpoints", &["empty", "client URLs"]);
    assert_field(&e, "ha.ttl", &["too short"]);
    let e = errors(&with("16", "[ha]\n[ha.etcd]\nendpoints = [\"127.0.0.1:2379\"]\nuser = \"pgrepl\"\ncert_file = \"rel.pem\"\n"));
    assert_field(&e, "ha.etcd.endpoints[0]", &["not an etcd client URL", "http://host:port"]);
    assert_field(&e, "ha.etcd.user", &["password_file"]);
    assert_field(&e, "ha.etcd.cert_file", &["key_file"]);
    let e = errors(&with("16", "[ha]\nloop_wait = -1\n[ha.etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n"));
    assert_field(&e, "ha.loop_wait", &["not a duration", "seconds"]);
    // Unknown keys name themselves.
    let e = errors(&with("16", "[ha]\nttl_seconds = 3\n[ha.etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n"));
    assert!(e.to_string().contains("ttl_seconds"), "{e}");
    // The defaults: 3 s lease, 1 s loop, 1 s margin, 1 MiB.
    let c = ClusterSpec::from_toml(&with("16", "[ha.etcd]\nendpoints = [\"https://10.0.0.5:2379\"]\n")).unwrap().validate().unwrap();
    let ha = c.ha.unwrap();
    assert_eq!((ha.settings.ttl_ms, ha.settings.loop_wait_ms, ha.settings.safety_margin_ms), (3000, 1000, 1000));
    assert_eq!(ha.settings.maximum_lag_on_failover, 1 << 20);
    assert_eq!((ha.api_port, ha.api_listen, ha.replica_max_lag), (8008, None, 16 << 20));
    // The agents' HTTP endpoint: a port, an IP address.
    let e = errors(&with(
        "16",
        "[ha]
api_port = 0
api_listen = \"any\"
[ha.etcd]
endpoints = [\"http://127.0.0.1:2379\"]
",
    ));
    assert_field(&e, "ha.api_port", &["TCP port"]);
    assert_field(&e, "ha.api_listen", &["not an IP address", "0.0.0.0"]);
}

#[test]
fn agent_api_address_per_node() {
    // Nodes on one address (a local cluster): consecutive ports; on hosts of their own: one port.
    let local = BASE
        .replace("role = \"primary\"", "role = \"primary\"\naddress = \"127.0.0.1\"")
        .replace("role = \"standby\"", "role = \"standby\"\naddress = \"127.0.0.1\"");
    let c = ClusterSpec::from_toml(
        &local
            .replace("postgres = \"16\"", "postgres = \"16\"\n[ha]\napi_port = 9000\n[ha.etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n"),
    )
    .unwrap()
    .validate()
    .unwrap();
    assert_eq!(c.agent_api("db1"), Some(("127.0.0.1".to_string(), 9000)));
    assert_eq!(c.agent_api("db3"), Some(("127.0.0.1".to_string(), 9002)));
    assert_eq!(c.agent_url_base("db2").as_deref(), Some("http://127.0.0.1:9001"));
    let hosts = BASE
        .replacen("role = \"primary\"", "role = \"primary\"\naddress = \"127.0.0.11\"", 1)
        .replacen("role = \"standby\"", "role = \"standby\"\naddress = \"127.0.0.12\"", 1)
        .replace("name = \"db3\"\nrole = \"standby\"", "name = \"db3\"\nrole = \"standby\"\naddress = \"127.0.0.13\"");
    let c = ClusterSpec::from_toml(
        &hosts.replace("postgres = \"16\"", "postgres = \"16\"\n[ha]\n[ha.etcd]\nendpoints = [\"http://10.0.0.9:2379\"]\n"),
    )
    .unwrap()
    .validate()
    .unwrap();
    assert_eq!(c.agent_api("db3"), Some(("127.0.0.13".to_string(), 8008)));
    assert_eq!(c.agent_api("nope"), None);
}

/// Witnesses: checked apart from the data nodes, and every field still named by its
/// index among all `[[nodes]]` (a witness listed first shifts nothing).
const GEO: &str = r#"
name = "geo"
postgres = "15"
[provider]
kind = "ssh"
user = "root"
[ha.etcd]
deploy = true
[[nodes]]
name = "w"
role = "witness"
address = "10.0.0.5"
location = "third"
[[nodes]]
name = "d"
role = "primary"
address = "10.0.0.1"
location = "east"
[[nodes]]
name = "e"
role = "standby"
address = "10.0.0.2"
location = "east"
[[nodes]]
name = "f"
role = "standby"
address = "10.0.0.3"
location = "west"
[[nodes]]
name = "g"
role = "standby"
address = "10.0.0.4"
location = "west"
"#;

#[test]
fn witnesses_and_locations_validate_into_the_cluster() {
    let c = ClusterSpec::from_toml(GEO).unwrap().validate().unwrap();
    assert_eq!(c.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["d", "e", "f", "g"]);
    assert_eq!(c.witnesses.len(), 1);
    assert_eq!(c.nodes[2].location.as_deref(), Some("west"));
    assert_eq!(c.ha.as_ref().unwrap().etcd_members, ["w", "d", "e", "f", "g"]);
}

#[test]
fn data_node_errors_keep_their_index_among_witnesses() {
    let errs = errors(&GEO.replace("name = \"e\"\nrole = \"standby\"", "name = \"e\"\nrole = \"standby\"\nupstream = \"zz\""));
    assert_field(&errs, "nodes[2].upstream", &["unknown node \"zz\""]);
    let errs = errors(&GEO.replace("name = \"w\"\nrole = \"witness\"\naddress = \"10.0.0.5\"\n", "name = \"w\"\nrole = \"witness\"\n"));
    assert_field(&errs, "nodes[0].address", &["missing", "witness"]);
}

/// [`GEO`] on EC2: locations map to availability zones through `[provider.locations]`
/// or are zone names themselves.
fn geo_aws(locations: &str) -> String {
    GEO.replace("address = \"10.0.0.5\"\n", "")
        .replace("address = \"10.0.0.1\"\n", "")
        .replace("address = \"10.0.0.2\"\n", "")
        .replace("address = \"10.0.0.3\"\n", "")
        .replace("address = \"10.0.0.4\"\n", "")
        .replace(
            "[provider]\nkind = \"ssh\"\nuser = \"root\"\n",
            &format!(
                "[provider]\nkind = \"aws\"\nregion = \"us-east-2\"\nadmin_cidr = \"203.0.113.7/32\"\nkey_name = \"k\"\n{locations}\n"
            ),
        )
}

#[test]
fn aws_locations_map_to_zones_or_are_zones() {
    let ok = geo_aws("[provider.locations]\neast = \"us-east-2a\"\nwest = \"us-east-2b\"\nthird = \"us-east-2c\"\n");
    let spec = ClusterSpec::from_toml(&ok).unwrap();
    assert_eq!(ClusterSpec::from_toml(&spec.to_toml()).unwrap(), spec, "[provider.locations] survives a round trip");
    let c = spec.validate().unwrap();
    let pgrepl_core::spec::ProviderSpec::Aws(aws) = c.provider() else { panic!("aws") };
    assert_eq!(aws.zone_of("east"), Some("us-east-2a"));
    assert_eq!(c.witnesses[0].location.as_deref(), Some("third"));
    // A location that is a zone name needs no map entry.
    let zones = geo_aws("[provider.locations]\neast = \"us-east-2a\"\nwest = \"us-east-2b\"\n").replace("\"third\"", "\"us-east-2c\"");
    ClusterSpec::from_toml(&zones).unwrap().validate().unwrap();
    // Without locations at all: as before.
    let none = geo_aws("").replace("location = \"east\"\n", "").replace("location = \"west\"\n", "").replace("location = \"third\"\n", "");
    ClusterSpec::from_toml(&none).unwrap().validate().unwrap();
}

#[test]
fn aws_locations_without_a_zone_are_refused_naming_the_field() {
    // "third" (the witness, nodes[0]) has no zone: neither mapped nor a zone name.
    let errs = errors(&geo_aws("[provider.locations]\neast = \"us-east-2a\"\nwest = \"us-east-2b\"\n"));
    assert_field(&errs, "nodes[0].location", &["\"third\"", "neither in [provider.locations] nor an availability zone", "third = "]);
    assert!(errs.get("nodes[1].location").is_none(), "{errs}");
    // A map entry that is not a zone, and one in another region.
    let errs = errors(&geo_aws("[provider.locations]\neast = \"dc1\"\nwest = \"eu-west-1a\"\nthird = \"us-east-2c\"\n"));
    assert_field(&errs, "provider.locations.east", &["\"dc1\" is not an availability zone name", "us-east-2a"]);
    assert_field(&errs, "provider.locations.west", &["\"eu-west-1a\" is not in region us-east-2"]);
    // A zone name as a location, in another region.
    let errs =
        errors(&geo_aws("[provider.locations]\neast = \"us-east-2a\"\nwest = \"us-east-2b\"\n").replace("\"third\"", "\"us-west-1a\""));
    assert_field(&errs, "nodes[0].location", &["zone \"us-west-1a\" of \"w\" is not in region us-east-2"]);
}

#[test]
fn availability_zone_names() {
    use pgrepl_core::spec::{is_availability_zone, region_of_zone};
    for z in ["us-east-2a", "eu-central-1b", "ap-southeast-2c", "us-gov-west-1a", "us-west-2-lax-1a", "cn-north-1a"] {
        assert!(is_availability_zone(z), "{z}");
    }
    for z in ["us-east-2", "east", "dc1", "us-east-2A", "useast-2a", "us-2a", "", "a", "us-east-2-lax-1", "us-east-2ab-"] {
        assert!(!is_availability_zone(z), "{z}");
    }
    assert_eq!(region_of_zone("us-east-2a"), Some("us-east-2"));
    assert_eq!(region_of_zone("us-west-2-lax-1a"), Some("us-west-2"));
    assert_eq!(region_of_zone("us-gov-west-1a"), Some("us-gov-west-1"));
    assert_eq!(region_of_zone("east"), None);
}

#[test]
fn aws_api_cidrs_are_cidrs() {
    let errs = errors(&geo_aws(
        "api_cidrs = [\"10.0.0.0/8\", \"haproxy\"]\n[provider.locations]\neast = \"us-east-2a\"\nwest = \"us-east-2b\"\nthird = \"us-east-2c\"\n",
    ));
    assert_field(&errs, "provider.api_cidrs[1]", &["\"haproxy\" is not a CIDR"]);
    assert_eq!(errs.iter().count(), 1, "{errs}");
}

#[test]
fn where_the_agent_binary_comes_from_is_checked_by_field() {
    let ha = |lines: &str| with("16", &format!("[ha]\n{lines}[ha.etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n"));
    let e = errors(&ha("agent_binary = \"bin/pgrepl\"\n"));
    assert_field(&e, "ha.agent_binary", &["relative", "absolute path"]);
    let e = errors(&ha("agent_binary_url = \"http://example.invalid/pgrepl\"\n"));
    assert_field(&e, "ha.agent_binary_url", &["https://"]);
    assert_field(&e, "ha.agent_binary_sha256", &["missing"]);
    let e = errors(&ha("agent_binary_url = \"https://example.invalid/pgrepl\"\nagent_binary_sha256 = \"abc\"\n"));
    assert_field(&e, "ha.agent_binary_sha256", &["64 hex digits"]);
    let e = errors(&ha("agent_binary = \"/opt/pgrepl\"\nagent_binary_url = \"https://example.invalid/pgrepl\"\n"));
    assert_field(&e, "ha.agent_binary_url", &["one of agent_binary or agent_binary_url"]);
    let ok = ClusterSpec::from_toml(&ha(&format!(
        "agent_binary_url = \"https://example.invalid/p\"\nagent_binary_sha256 = \"{}\"\n",
        "AB".repeat(32)
    )))
    .unwrap()
    .validate()
    .unwrap();
    assert_eq!(
        ok.ha.unwrap().agent_binary,
        pgrepl_core::cluster::AgentBinary::Url { url: "https://example.invalid/p".into(), sha256: "ab".repeat(32) }
    );
}
