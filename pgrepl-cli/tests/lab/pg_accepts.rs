//! Every setting pgrepl renders for a major is one that major's own `postgres` accepts,
//! so a rendering error is caught by the server itself, not by a test's idea of it.
//!
//! For each major of the lab (and Debian's PostgreSQL 15) the test renders two clusters
//! that between them reach every branch of `conf_settings` the version allows:
//!
//! - `first`: synchronous `FIRST 2` with `remote_apply`, archiving to a directory, slots,
//!   a cascading standby, a standby name that needs quoting, and extra settings of every
//!   value type (text with a quote and a backslash, integers, a float, booleans, units),
//!   some replacing pgrepl's own in place, at cluster and at node level;
//! - `any`: quorum `ANY 1` with `remote_write`, archiving through user commands that hold
//!   single quotes, slots off (so `wal_keep_*` carries retention alone).
//!
//! For every node (primary and standbys) it lays out the files as the executor would:
//! `initdb` with the rendered init command's flags (once per major; each node's directory
//! gets that cluster's configuration files), the rendered `pgrepl.conf`, the `include`
//! line appended to `postgresql.conf`, the managed pg_hba.conf block, and
//! `standby.signal`/`recovery.conf`. Then, as the `postgres` OS user, `postgres -D <dir>
//! -C <name>` for each rendered setting: it parses the whole configuration and exits
//! non-zero ("configuration file ... contains errors") on an unknown name or an invalid
//! value. The printed value must match the rendered one (modulo units, boolean spellings
//! and quoting), and every name must appear in `postgres --describe-config` of the same
//! binary.
//!
//! Before 12 the standby settings live in `recovery.conf`, which is not made of GUCs.
//! Its names are checked against that version's recovery.conf parameter list (from the
//! `recovery-config` pages of the 10 and 11 manuals), must *not* be GUCs of that binary,
//! and its values are read back through the server's own configuration lexer (the one
//! `readRecoveryCommandFile` uses) by re-stating each line under a placeholder prefix.
//! Starting a standby from it is covered by the end-to-end tests.
//!
//! `postgres -C` prints an integer setting with a unit in its base unit (`shared_buffers =
//! '64MB'` prints `8192`), so the units come from `pg_settings.unit` of the same binary,
//! read once per major through single-user mode (`postgres --single`) on the fresh initdb.
//!
//! pg_hba.conf is laid out but not checked here: the server reads it only when it starts.
//! No postmaster is started and no port is opened by this test.

use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pgrepl_core::discovery::{DiscoveryOptions, discover};
use pgrepl_core::layout::NodeLayout;
use pgrepl_core::render::{self, Placement, RenderedNode, render_node};
use pgrepl_core::spec::{ArchiveSpec, LocalProviderSpec, ProviderSpec, ReplicationSpec, SettingValue, SyncCommit, SyncMode, SyncSpec};
use pgrepl_core::version::{RecoveryStyle, setting_rule};
use pgrepl_core::{ClusterSpec, NodeSpec, PgMajor, Role};

use crate::common::{self, WorkDir};

/// The recovery.conf parameters of PostgreSQL 10 and 11: "Archive Recovery Settings",
/// "Recovery Target Settings" and "Standby Server Settings" of
/// https://www.postgresql.org/docs/10/recovery-config.html and /docs/11/ (identical sets;
/// 10 added `recovery_target_lsn`).
const RECOVERY_CONF_10_11: &[&str] = &[
    // 27.1 Archive Recovery Settings
    "restore_command",
    "archive_cleanup_command",
    "recovery_end_command",
    // 27.2 Recovery Target Settings
    "recovery_target",
    "recovery_target_name",
    "recovery_target_time",
    "recovery_target_xid",
    "recovery_target_lsn",
    "recovery_target_inclusive",
    "recovery_target_timeline",
    "recovery_target_action",
    // 27.3 Standby Server Settings
    "standby_mode",
    "primary_conninfo",
    "primary_slot_name",
    "trigger_file",
    "recovery_min_apply_delay",
];

/// libpq connection options of libpq 10 (the oldest walreceiver in the lab), for the
/// keywords of a rendered `primary_conninfo`: a newer libpq's keyword makes an older
/// walreceiver fail with "invalid connection option" (lab.md §1c pitfall 1).
const LIBPQ_10_KEYWORDS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "passfile",
    "connect_timeout",
    "client_encoding",
    "options",
    "application_name",
    "fallback_application_name",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "sslmode",
    "sslcompression",
    "sslcert",
    "sslkey",
    "sslrootcert",
    "sslcrl",
    "requirepeer",
    "krbsrvname",
    "gsslib",
    "service",
    "target_session_attrs",
];

/// Prefix under which recovery.conf lines are re-stated for the server's lexer (any
/// `a.b` name is a valid placeholder GUC since 9.2).
const RECOVERY_PROBE_PREFIX: &str = "pgrepl_recovery_conf";

macro_rules! pg_accepts {
    ($($test:ident => $major:literal),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                let (bin, client) = common::bins($major);
                check_major($major.parse().expect("a major pgrepl knows"), &bin, &client, concat!("lab-", $major));
            }
        )*
    };
}

pg_accepts! {
    major_10 => "10",
    major_11 => "11",
    major_12 => "12",
    major_13 => "13",
    major_14 => "14",
    major_15 => "15",
    major_16 => "16",
    major_17 => "17",
    major_18 => "18",
}

/// Debian's own PostgreSQL 15 (`postgresql-15`), a build with other paths and libraries.
#[test]
fn debian_15() {
    let bin = PathBuf::from("/usr/lib/postgresql/15/bin");
    assert!(
        bin.join("postgres").is_file() && bin.join("initdb").is_file(),
        "Debian's PostgreSQL 15 is not installed ({}): run scripts/lab/install.sh",
        bin.display()
    );
    check_major(PgMajor::V15, &bin, &bin, "debian-15");
}

/// One rendering scenario: a spec and the nodes of it to check.
struct Scenario {
    name: &'static str,
    spec: ClusterSpec,
}

fn check_major(major: PgMajor, bin: &Path, client: &Path, label: &str) {
    let caps = major.caps();
    let binaries =
        discover(&DiscoveryOptions { pg_bin: Some(bin.to_path_buf()), pg_client_bin: Some(client.to_path_buf()), major: Some(major) })
            .unwrap_or_else(|e| panic!("PostgreSQL {major} ({label}): discovery of {}: {e}", bin.display()));
    assert_eq!(binaries.major, major, "{label}: binaries in {} are another major", bin.display());
    if bin.parent().is_some_and(|p| p.join("lib/libpq.so.5").exists()) {
        assert!(binaries.lib_dir.is_some(), "{label}: {} bundles its libraries but discovery set no LD_LIBRARY_PATH", bin.display());
    }

    let wd = WorkDir::new(&format!("pg-accepts-{label}"));
    let work = wd.path.clone();
    let ports = common::free_ports(5);
    let gucs = describe_config(bin, &binaries.lib_dir, label);
    assert!(
        gucs.contains("port") && gucs.contains("wal_level") && gucs.len() > 150,
        "{label}: postgres --describe-config printed too little ({} names)",
        gucs.len()
    );

    let scenarios =
        [Scenario { name: "first", spec: spec_first(major, &work, ports) }, Scenario { name: "any", spec: spec_any(major, &work, ports) }];

    // One initdb per major, with the flags pgrepl renders for the primary.
    let mut template: Option<PathBuf> = None;
    let mut units: HashMap<String, String> = HashMap::new();
    let mut checked = 0usize;
    for sc in &scenarios {
        let cluster = sc
            .spec
            .validate_for(major)
            .unwrap_or_else(|e| panic!("PostgreSQL {major} ({label}), scenario {}: the spec does not validate:\n{e}", sc.name));
        let sc_dir = work.join(sc.name);
        mkdir_for_postgres(&sc_dir);
        let sc_dir_s = sc_dir.to_string_lossy().into_owned();
        for node in &cluster.nodes {
            let layout = NodeLayout::local(&sc_dir_s, &node.name, &binaries, "postgres");
            let r = render_node(&cluster, &node.name, &layout, None)
                .unwrap_or_else(|e| panic!("PostgreSQL {major} ({label}), {}/{}: render: {e}", sc.name, node.name));
            let ctx = format!("PostgreSQL {major} ({label}), scenario {}, {} {}", sc.name, r.role, r.node);
            mkdir_for_postgres(&sc_dir.join(&node.name));

            let data = PathBuf::from(&layout.data_dir);
            match &template {
                None => {
                    let init = r
                        .commands
                        .init
                        .as_ref()
                        .unwrap_or_else(|| panic!("{ctx}: the first node rendered is the primary and has an init command"));
                    assert_eq!(r.role, Role::Primary);
                    let out = run_as_postgres(Path::new(&init.program), &init.args, &init.env);
                    assert!(out.status.success(), "{ctx}: {init} failed:\n{}", text(&out));
                    units = setting_units(bin, &binaries.lib_dir, &data, &ctx);
                    template = Some(data.clone());
                }
                Some(t) => copy_config_files(t, &data),
            }

            lay_out_files(&r, &layout, &ctx);
            checked += check_settings(&r, &layout, bin, &binaries.lib_dir, &gucs, &units, &ctx);

            match (r.role, caps.recovery) {
                (Role::Standby, RecoveryStyle::RecoveryConf) => check_recovery_conf(&r, &layout, bin, &binaries.lib_dir, &gucs, &ctx),
                (Role::Standby, RecoveryStyle::StandbySignal) => {
                    assert!(
                        r.files.iter().any(|f| f.path == format!("{}/standby.signal", layout.data_dir)),
                        "{ctx}: a 12+ standby gets standby.signal"
                    );
                    assert!(
                        !r.files.iter().any(|f| f.path.ends_with("/recovery.conf")),
                        "{ctx}: 12+ refuses to start with a recovery.conf"
                    );
                    for name in ["primary_conninfo", "recovery_target_timeline"] {
                        assert!(r.settings.iter().any(|(k, _)| k == name), "{ctx}: {name} missing from pgrepl.conf of a 12+ standby");
                    }
                }
                // A witness runs no PostgreSQL; nothing of recovery to check.
                (Role::Primary | Role::Witness, _) => {}
            }
        }
    }
    assert!(checked >= 60, "PostgreSQL {major} ({label}): only {checked} settings checked");

    // The check has teeth: the same binary refuses a name it does not know.
    let primary_conf = template.expect("a primary was laid out").join("pgrepl.conf");
    let mut conf = std::fs::read_to_string(&primary_conf).unwrap();
    conf.push_str("pgrepl_no_such_setting = 1\n");
    std::fs::write(&primary_conf, conf).unwrap();
    let out = postgres_c(bin, &binaries.lib_dir, primary_conf.parent().unwrap(), "port");
    assert!(
        !out.status.success() && text(&out).contains("pgrepl_no_such_setting"),
        "PostgreSQL {major} ({label}): postgres -C accepted an unknown setting, so it proves nothing:\n{}",
        text(&out)
    );
}

/// Extra settings of every value type that exist in every lab major (10+), some of them
/// replacing settings pgrepl renders itself.
fn extra_settings(major: PgMajor) -> Vec<(&'static str, SettingValue)> {
    let mut s: Vec<(&'static str, SettingValue)> = vec![
        ("shared_buffers", "64MB".into()),
        ("max_connections", SettingValue::Int(40)),
        // Replaces pgrepl's own value in place.
        ("max_wal_senders", SettingValue::Int(16)),
        ("checkpoint_completion_target", SettingValue::Float(0.8)),
        ("random_page_cost", SettingValue::Float(1.5)),
        ("log_checkpoints", SettingValue::Bool(false)),
        ("wal_compression", SettingValue::Bool(true)),
        // A quote and a backslash: guc_quote must double the one and escape the other.
        ("log_line_prefix", r"%m [%p] it's \ ok ".into()),
        ("statement_timeout", "5min".into()),
        ("wal_sender_timeout", "45s".into()),
        ("wal_receiver_timeout", "40s".into()),
        ("max_wal_size", "2GB".into()),
        ("default_transaction_isolation", "read committed".into()),
    ];
    // Settings that exist only in some majors go in where pgrepl's table says they exist.
    for (name, value) in [
        ("max_slot_wal_keep_size", SettingValue::from("10GB")),
        ("wal_receiver_create_temp_slot", SettingValue::Bool(false)),
        ("summarize_wal", SettingValue::Bool(false)),
        ("md5_password_warnings", SettingValue::Bool(true)),
    ] {
        let rule = setting_rule(name).expect("in pgrepl's table");
        if rule.exists_in(major) {
            s.push((name, value));
        }
    }
    s
}

fn local_provider(work: &Path, sc: &str, base_port: u16) -> ProviderSpec {
    ProviderSpec::Local(LocalProviderSpec { work_dir: Some(work.join(sc)), os_user: Some("postgres".into()), base_port: Some(base_port) })
}

/// FIRST 2 of two, remote_apply, archive to a directory, slots, a cascading standby.
fn spec_first(major: PgMajor, work: &Path, base_port: u16) -> ClusterSpec {
    let mut b = ClusterSpec::builder("accepts")
        .postgres(major)
        .replication(ReplicationSpec {
            sync: SyncSpec {
                mode: SyncMode::First,
                count: 2,
                standbys: None,
                commit: if major.caps().remote_apply { SyncCommit::RemoteApply } else { SyncCommit::RemoteWrite },
                strict: false,
            },
            slots: Some(true),
            ..ReplicationSpec::default()
        })
        .archive(ArchiveSpec::Dir { path: work.join("first-archive") })
        .provider(local_provider(work, "first", base_port))
        .node(NodeSpec::primary("db1").with_setting("work_mem", "8MB"))
        .node(NodeSpec::standby("db2").with_priority(200))
        // A name that must be double-quoted in synchronous_standby_names.
        .node(NodeSpec::standby("db-3").with_priority(150).with_setting("hot_standby_feedback", false))
        .node(NodeSpec::standby("db4").with_upstream("db2"));
    for (k, v) in extra_settings(major) {
        b = b.setting(k, v);
    }
    b.into_spec()
}

/// ANY 1, remote_write, archive through quoted user commands, slots off.
fn spec_any(major: PgMajor, work: &Path, base_port: u16) -> ClusterSpec {
    let dir = work.join("any archive");
    let dir = dir.display();
    ClusterSpec::builder("accepts-any")
        .postgres(major)
        .replication(ReplicationSpec {
            sync: SyncSpec {
                mode: SyncMode::Any,
                count: 1,
                standbys: Some(vec!["db2".into(), "db3".into()]),
                commit: SyncCommit::RemoteWrite,
                strict: false,
            },
            slots: Some(false),
            wal_keep_mb: 100,
            ..ReplicationSpec::default()
        })
        .archive(ArchiveSpec::Command {
            archive_command: format!("test ! -f '{dir}/%f' && cp '%p' '{dir}/%f'"),
            restore_command: format!("cp '{dir}/%f' '%p'"),
        })
        .provider(local_provider(work, "any", base_port))
        .node(NodeSpec::primary("db1"))
        .node(NodeSpec::standby("db2"))
        .node(NodeSpec::standby("db3").with_setting("max_standby_streaming_delay", "10s"))
        .setting("cluster_name", "accepts any/override")
        .into_spec()
}

/// Writes the rendered files of one node as the executor places them.
fn lay_out_files(r: &RenderedNode, layout: &NodeLayout, ctx: &str) {
    for f in &r.files {
        if !f.path.starts_with(&layout.config_dir) && !f.path.starts_with(&layout.data_dir) {
            continue; // the passfile: not configuration
        }
        let path = Path::new(&f.path);
        let current = std::fs::read_to_string(path).ok();
        let desired = match f.placement {
            Placement::Whole => f.contents.text.clone(),
            Placement::HbaBlock => pgrepl_core::deploy::merge_hba_block(current.as_deref().unwrap_or(""), &f.contents.text),
            Placement::IncludeLine => {
                let cur = current.unwrap_or_else(|| panic!("{ctx}: {} missing after initdb", f.path));
                assert_eq!(f.contents.text, render::INCLUDE_LINE);
                format!("{cur}\n# Added by pgrepl: its settings for this node.\n{}\n", f.contents.text)
            }
        };
        write_for_postgres(path, &desired, f.mode);
    }
}

/// Runs `postgres -C` for every rendered setting; returns how many were checked.
fn check_settings(
    r: &RenderedNode,
    layout: &NodeLayout,
    bin: &Path,
    lib: &Option<String>,
    gucs: &BTreeSet<String>,
    units: &HashMap<String, String>,
    ctx: &str,
) -> usize {
    let mut seen = BTreeSet::new();
    for (name, _) in &r.settings {
        assert!(seen.insert(name.to_ascii_lowercase()), "{ctx}: pgrepl.conf sets {name} twice (the last one silently wins)");
    }
    let conf = std::fs::read_to_string(format!("{}/pgrepl.conf", layout.config_dir)).unwrap();
    let data = Path::new(&layout.config_dir);
    let mut errors = Vec::new();
    for (name, rendered) in &r.settings {
        assert!(conf.contains(&format!("\n{name} = {rendered}\n")), "{ctx}: pgrepl.conf does not hold `{name} = {rendered}`:\n{conf}");
        if !gucs.contains(&name.to_ascii_lowercase()) {
            errors.push(format!("{name}: not in `postgres --describe-config` of {}", bin.display()));
        }
        let out = postgres_c(bin, lib, data, name);
        if !out.status.success() {
            errors.push(format!("{name} = {rendered}: postgres -C failed:\n{}", text(&out)));
            // One failure fails every -C (the whole file is parsed); report it once.
            break;
        }
        let printed = printed_value(&out);
        let expected = guc_unquote(rendered);
        if printed.is_empty() && !expected.is_empty() {
            errors.push(format!("{name} = {rendered}: the server printed an empty value"));
        } else if !same_value(&expected, &printed, units.get(&name.to_ascii_lowercase()).map(String::as_str)) {
            errors.push(format!("{name} = {rendered}: the server reads it as `{printed}`"));
        }
    }
    assert!(
        errors.is_empty(),
        "{ctx}: the server does not accept what pgrepl rendered:\n  {}\n--- pgrepl.conf:\n{conf}",
        errors.join("\n  ")
    );
    r.settings.len()
}

/// PostgreSQL 10–11: recovery.conf names are that version's recovery parameters (and not
/// GUCs), and its values read back as rendered through the server's own lexer.
fn check_recovery_conf(r: &RenderedNode, layout: &NodeLayout, bin: &Path, lib: &Option<String>, gucs: &BTreeSet<String>, ctx: &str) {
    let path = format!("{}/recovery.conf", layout.data_dir);
    let file =
        r.files.iter().find(|f| f.path == path).unwrap_or_else(|| panic!("{ctx}: no recovery.conf rendered for a standby before 12"));
    assert_eq!(file.placement, Placement::Whole);
    assert!(!r.files.iter().any(|f| f.path.ends_with("/standby.signal")), "{ctx}: standby.signal means nothing before 12");
    let mut lines: Vec<(String, String)> = Vec::new();
    for line in file.contents.text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line.split_once(" = ").unwrap_or_else(|| panic!("{ctx}: recovery.conf line is not `name = value`: {line}"));
        lines.push((k.trim().to_string(), v.trim().to_string()));
    }
    let names: Vec<&str> = lines.iter().map(|(k, _)| k.as_str()).collect();
    for required in ["standby_mode", "primary_conninfo", "recovery_target_timeline"] {
        assert!(names.contains(&required), "{ctx}: recovery.conf lacks {required}:\n{}", file.contents.text);
    }
    let mut errors = Vec::new();
    let mut seen = BTreeSet::new();
    for (k, _) in &lines {
        if !seen.insert(k.clone()) {
            errors.push(format!("{k}: set twice"));
        }
        if !RECOVERY_CONF_10_11.contains(&k.as_str()) {
            errors.push(format!("{k}: not a recovery.conf parameter of PostgreSQL 10/11"));
        }
        if gucs.contains(k) {
            errors.push(format!("{k}: a postgresql.conf GUC of this binary, so the version table's recovery style is wrong"));
        }
        if r.settings.iter().any(|(s, _)| s == k) {
            errors.push(format!("{k}: also in pgrepl.conf, where this version refuses it"));
        }
    }

    // Re-state every line under a placeholder prefix and let the server's lexer read it.
    let probe_file = format!("{}/pgrepl-recovery-probe.conf", layout.data_dir);
    let probe: String = lines.iter().map(|(k, v)| format!("{RECOVERY_PROBE_PREFIX}.{k} = {v}\n")).collect();
    write_for_postgres(Path::new(&probe_file), &probe, 0o600);
    let main_conf = format!("{}/postgresql.conf", layout.config_dir);
    let mut conf = std::fs::read_to_string(&main_conf).unwrap();
    conf.push_str("include 'pgrepl-recovery-probe.conf'\n");
    write_for_postgres(Path::new(&main_conf), &conf, 0o600);
    for (k, v) in &lines {
        let out = postgres_c(bin, lib, Path::new(&layout.config_dir), &format!("{RECOVERY_PROBE_PREFIX}.{k}"));
        if !out.status.success() {
            errors.push(format!("{k} = {v}: the server's lexer refuses it:\n{}", text(&out)));
            break;
        }
        let printed = printed_value(&out);
        if printed != guc_unquote(v) {
            errors.push(format!("{k} = {v}: reads as `{printed}`, expected `{}`", guc_unquote(v)));
        }
        match k.as_str() {
            "standby_mode" if !same_value("on", &printed, None) => errors.push(format!("standby_mode = {v}: not a true boolean")),
            "recovery_target_timeline" if printed != "latest" && printed.parse::<u32>().is_err() => {
                errors.push(format!("recovery_target_timeline = {v}: neither 'latest' nor a timeline id"))
            }
            "primary_conninfo" => {
                for kw in conninfo_keywords(&printed) {
                    if !LIBPQ_10_KEYWORDS.contains(&kw.as_str()) {
                        errors.push(format!("primary_conninfo: `{kw}` is not a libpq 10 option"));
                    }
                }
            }
            _ => {}
        }
    }
    // Leave the node's configuration as pgrepl renders it.
    let conf = conf.replace("include 'pgrepl-recovery-probe.conf'\n", "");
    write_for_postgres(Path::new(&main_conf), &conf, 0o600);
    let _ = std::fs::remove_file(&probe_file);
    assert!(errors.is_empty(), "{ctx}: recovery.conf:\n  {}\n--- recovery.conf:\n{}", errors.join("\n  "), file.contents.text);
}

/// The keywords of a libpq `key=value` connection string.
fn conninfo_keywords(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.trim().is_empty() {
            break;
        }
        out.push(key.trim().to_string());
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek() == Some(&'\'') {
            chars.next();
            let mut escaped = false;
            for c in chars.by_ref() {
                match (escaped, c) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '\'') => break,
                    _ => {}
                }
            }
        } else {
            while chars.peek().is_some_and(|c| !c.is_whitespace()) {
                chars.next();
            }
        }
    }
    out
}

/// Names of `postgres --describe-config` (every GUC settable in a file).
fn describe_config(bin: &Path, lib: &Option<String>, label: &str) -> BTreeSet<String> {
    let out = run_as_postgres(&bin.join("postgres"), &["--describe-config".into()], &lib_env(lib));
    assert!(out.status.success(), "{label}: postgres --describe-config:\n{}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split('\t').next())
        .filter(|n| !n.is_empty())
        .map(|n| n.to_ascii_lowercase())
        .collect()
}

fn postgres_c(bin: &Path, lib: &Option<String>, data: &Path, name: &str) -> Output {
    run_as_postgres(&bin.join("postgres"), &["-D".into(), data.to_string_lossy().into_owned(), "-C".into(), name.into()], &lib_env(lib))
}

fn lib_env(lib: &Option<String>) -> Vec<(String, String)> {
    // As the executor starts the server (render::server_env): relocatable builds need
    // their own lib directory, or they load the system's libpq.
    lib.iter().map(|l| ("LD_LIBRARY_PATH".to_string(), l.clone())).collect()
}

/// `postgres -C` prints the value and a newline; keep everything else (trailing spaces count).
fn printed_value(out: &Output) -> String {
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.strip_suffix('\n').unwrap_or(&s).to_string()
}

/// Runs a program as the `postgres` OS user, bounded by `timeout(1)`.
fn run_as_postgres(program: &Path, args: &[String], env: &[(String, String)]) -> Output {
    run_as_postgres_stdin(program, args, env, b"")
}

fn run_as_postgres_stdin(program: &Path, args: &[String], env: &[(String, String)], stdin: &[u8]) -> Output {
    use std::io::Write;
    let mut child = Command::new("timeout")
        .args(["120", "runuser", "-u", "postgres", "--"])
        .arg(program)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LC_ALL", "C")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir("/")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
    let mut input = child.stdin.take().expect("piped stdin");
    // A child that exits early closes its stdin; its status reports that.
    let _ = input.write_all(stdin);
    drop(input);
    child.wait_with_output().unwrap_or_else(|e| panic!("wait for {}: {e}", program.display()))
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).trim_end(),
        String::from_utf8_lossy(&o.stderr).trim_end()
    )
}

fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let o = Command::new("id").args([flag, "postgres"]).output().expect("id runs");
        String::from_utf8_lossy(&o.stdout).trim().parse().expect("an OS user `postgres` (run scripts/lab/install.sh)")
    };
    (id("-u"), id("-g"))
}

fn chown_postgres(p: &Path) {
    let (u, g) = postgres_ids();
    std::os::unix::fs::chown(p, Some(u), Some(g)).unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
}

fn mkdir_for_postgres(p: &Path) {
    std::fs::create_dir_all(p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700)).unwrap();
    chown_postgres(p);
}

fn write_for_postgres(p: &Path, contents: &str, mode: u32) {
    std::fs::write(p, contents).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    chown_postgres(p);
}

/// Gives a node's data directory the configuration files initdb made for the primary
/// (`postgres -C` reads only those; nothing else of the cluster is needed, or copied).
fn copy_config_files(template: &Path, data: &Path) {
    mkdir_for_postgres(data);
    for name in ["PG_VERSION", "postgresql.conf", "postgresql.auto.conf", "pg_hba.conf", "pg_ident.conf"] {
        let from = template.join(name);
        let contents = std::fs::read_to_string(&from).unwrap_or_else(|e| panic!("read {}: {e}", from.display()));
        // Each node starts from initdb's files, not from another node's rendering.
        let contents = match name {
            "postgresql.conf" => strip_include(&contents),
            "pg_hba.conf" => strip_hba_block(&contents),
            _ => contents,
        };
        write_for_postgres(&data.join(name), &contents, 0o600);
    }
}

fn strip_include(conf: &str) -> String {
    conf.replace(&format!("\n# Added by pgrepl: its settings for this node.\n{}\n", render::INCLUDE_LINE), "")
}

fn strip_hba_block(hba: &str) -> String {
    match (hba.find(render::HBA_BEGIN), hba.find(render::HBA_END)) {
        (Some(b), Some(e)) => {
            let end = e + render::HBA_END.len() + 1;
            format!("{}{}", &hba[..b], &hba[end.min(hba.len())..])
        }
        _ => hba.to_string(),
    }
}

/// The value of a postgresql.conf value as the server reads it: quotes removed, `''`
/// undoubled and backslash escapes resolved (guc-file.l, GUC_scanstr).
fn guc_unquote(v: &str) -> String {
    let Some(inner) = v.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')) else {
        return v.to_string();
    };
    let mut out = String::new();
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' if chars.peek() == Some(&'\'') => {
                chars.next();
                out.push('\'');
            }
            '\\' => match chars.next() {
                Some('b') => out.push('\u{8}'),
                Some('f') => out.push('\u{c}'),
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some('t') => out.push('\t'),
                Some(o) => out.push(o),
                None => out.push('\\'),
            },
            c => out.push(c),
        }
    }
    out
}

/// Whether the server's printed value is the rendered one: the same text, the same
/// boolean, or the same quantity. `postgres -C` prints an integer setting with a unit as a
/// bare number of its base unit (`shared_buffers = '64MB'` prints `8192`, in 8kB pages),
/// so `unit` is that base unit, from `pg_settings.unit` of the same binary.
fn same_value(expected: &str, printed: &str, unit: Option<&str>) -> bool {
    if expected == printed || expected.eq_ignore_ascii_case(printed) {
        return true;
    }
    if let (Some(a), Some(b)) = (as_bool(expected), as_bool(printed)) {
        return a == b;
    }
    if let Some(base) = unit.and_then(base_unit) {
        let want = match quantity(expected) {
            Some((n, "number")) => Some((n * base.0, base.1)),
            other => other,
        };
        let got: Option<f64> = printed.parse().ok();
        if let (Some((w, dim)), Some(g)) = (want, got) {
            // The server rounds to whole base units (truncates before 12).
            return dim == base.1 && (w - g * base.0).abs() < base.0;
        }
        return false;
    }
    if let (Some(a), Some(b)) = (quantity(expected), quantity(printed)) {
        return a.1 == b.1 && (a.0 - b.0).abs() <= 1e-9 * a.0.abs().max(1.0);
    }
    // Enum aliases the server prints under their canonical name.
    matches!(
        (expected.to_ascii_lowercase().as_str(), printed),
        // wal_compression = on is pglz (15+ made it an enum).
        ("on", "pglz")
    )
}

/// `pg_settings.unit` (`8kB`, `kB`, `MB`, `ms`, `s`, `min`, ...) as a quantity.
fn base_unit(unit: &str) -> Option<(f64, &'static str)> {
    let digits = unit.find(|c: char| !c.is_ascii_digit()).unwrap_or(unit.len());
    let mult: f64 = if digits == 0 { 1.0 } else { unit[..digits].parse().ok()? };
    quantity(&format!("{mult}{}", &unit[digits..])).filter(|(_, dim)| *dim != "number")
}

/// `name -> pg_settings.unit` for every setting with a unit, read through single-user
/// mode on the freshly initialised data directory (no postmaster, no port, nothing
/// left running).
fn setting_units(bin: &Path, lib: &Option<String>, data: &Path, ctx: &str) -> HashMap<String, String> {
    let out = run_as_postgres_stdin(
        &bin.join("postgres"),
        &["--single".into(), "-D".into(), data.to_string_lossy().into_owned(), "postgres".into()],
        &lib_env(lib),
        b"SELECT 'pgrepl-unit:' || name || ':' || unit FROM pg_catalog.pg_settings WHERE unit IS NOT NULL;\n",
    );
    assert!(out.status.success(), "{ctx}: postgres --single (reading pg_settings.unit):\n{}", text(&out));
    let units: HashMap<String, String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once("\"pgrepl-unit:").map(|(_, r)| r))
        .filter_map(|r| r.split_once('"').map(|(v, _)| v))
        .filter_map(|v| v.split_once(':'))
        .map(|(n, u)| (n.to_ascii_lowercase(), u.to_string()))
        .collect();
    assert!(
        units.get("shared_buffers").map(String::as_str) == Some("8kB"),
        "{ctx}: could not read setting units from single-user mode:\n{}",
        text(&out)
    );
    units
}

fn as_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" => Some(true),
        "off" | "false" | "no" => Some(false),
        _ => None,
    }
}

/// A number with an optional memory or time unit, in kB or µs; the `&str` names the dimension.
fn quantity(s: &str) -> Option<(f64, &'static str)> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+' || c == 'e')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let (factor, dim) = match unit.trim() {
        "" => (1.0, "number"),
        "B" => (1.0 / 1024.0, "memory"),
        "kB" => (1.0, "memory"),
        "MB" => (1024.0, "memory"),
        "GB" => (1024.0 * 1024.0, "memory"),
        "TB" => (1024.0 * 1024.0 * 1024.0, "memory"),
        "us" => (1.0, "time"),
        "ms" => (1e3, "time"),
        "s" => (1e6, "time"),
        "min" => (60e6, "time"),
        "h" => (3600e6, "time"),
        "d" => (86400e6, "time"),
        _ => return None,
    };
    Some((n * factor, dim))
}

#[test]
fn value_comparison_helpers() {
    assert_eq!(guc_unquote(r"'it''s \\ ok '"), r"it's \ ok ");
    assert_eq!(guc_unquote("replica"), "replica");
    assert!(same_value("on", "on", None) && same_value("true", "on", None));
    assert!(!same_value("on", "off", None));
    assert!(same_value("1024MB", "1GB", None) && same_value("60s", "1min", None));
    assert!(!same_value("1s", "1kB", None));
    assert!(same_value("64MB", "8192", Some("8kB")) && !same_value("64MB", "8192", Some("kB")));
    assert!(same_value("5min", "300000", Some("ms")) && same_value("512MB", "512", Some("MB")));
    assert!(same_value("250", "250", Some("ms")) && !same_value("1s", "1", Some("MB")));
    assert!(same_value("0.8", "0.8", None) && !same_value("0.8", "0.9", None));
    assert!(!same_value("replica", "logical", None));
    assert_eq!(
        conninfo_keywords("host=127.0.0.1 port=5 user=r application_name=db2 passfile='/a b/p\\'q' connect_timeout=5"),
        ["host", "port", "user", "application_name", "passfile", "connect_timeout"]
    );
    assert_eq!(strip_hba_block(&format!("{}\nx\n{}\nlocal all all trust\n", render::HBA_BEGIN, render::HBA_END)), "local all all trust\n");
}
