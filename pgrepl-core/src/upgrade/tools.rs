//! The command lines of a major upgrade (initdb or Debian's `pg_createcluster` with the old
//! cluster's settings, `pg_upgrade`, `vacuumdb`), the edits of a Debian cluster's files that
//! keep the old cluster aside, and the reading of `pg_upgrade --check`'s output. Pure.

use crate::layout::NodeLayout;
use crate::plan::upgrade::InitSettings;
use crate::render::server_env;
use crate::transport::Command;
use crate::version::PgMajor;

pub use crate::debian_kept::{RETIRED_MARKER, dropcluster};

/// Time limit of `pg_upgrade` (and of its `--check`).
pub const PG_UPGRADE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(6 * 3600);
/// Time limit of `initdb`.
pub const INITDB_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// The environment of the new major's tools: its library directory for relocatable builds.
pub fn tool_env(layout: &NodeLayout) -> Vec<(String, String)> {
    server_env(layout).into_iter().filter(|(k, _)| k == "LD_LIBRARY_PATH").collect()
}

/// `initdb` of `to` into `data_dir` with the old cluster's encoding, locale, data
/// checksums and bootstrap superuser; local connections by peer (pgrepl's own path),
/// host connections by `auth_host`.
pub fn initdb(layout: &NodeLayout, data_dir: &str, s: &InitSettings, to: PgMajor, auth_host: &str) -> Command {
    let mut args = vec![
        format!("--pgdata={data_dir}"),
        format!("--username={}", s.superuser),
        format!("--encoding={}", s.encoding),
        format!("--lc-collate={}", s.lc_collate),
        format!("--lc-ctype={}", s.lc_ctype),
        "--auth-local=peer".to_string(),
        format!("--auth-host={auth_host}"),
    ];
    args.extend(checksum_args(s, to));
    let mut c = Command::new(layout.server_tool("initdb")).args(args).user(layout.os_user.clone()).timeout(INITDB_TIMEOUT);
    c.env = tool_env(layout);
    c
}

/// The initdb options that carry the old cluster's data checksums to `to`.
fn checksum_args(s: &InitSettings, to: PgMajor) -> Option<String> {
    match (s.checksums, to.caps().initdb_checksums, to.upgrade_caps().initdb_no_checksums) {
        (true, Some(flag), _) => Some(flag.to_string()),
        (false, _, Some(off)) => Some(off.to_string()),
        _ => None,
    }
}

/// Debian's `pg_createcluster <version> <cluster>` of the new major (run as root; the
/// configuration in `/etc/postgresql/<version>/<cluster>`), as `pg_upgradecluster` makes
/// it: the old cluster's encoding, `LC_COLLATE`, `LC_CTYPE` and data checksums, its
/// bootstrap superuser when that is not the OS user, on `port` until the old cluster gives
/// its own up; local connections by peer, host connections by `auth_host`.
pub fn createcluster(new: &NodeLayout, version: &str, cluster: &str, port: u16, s: &InitSettings, to: PgMajor, auth_host: &str) -> Command {
    let mut args = vec![
        format!("--port={port}"),
        format!("--encoding={}", s.encoding),
        format!("--lc-collate={}", s.lc_collate),
        format!("--lc-ctype={}", s.lc_ctype),
        version.to_string(),
        cluster.to_string(),
        "--".to_string(),
        "--auth-local=peer".to_string(),
        format!("--auth-host={auth_host}"),
    ];
    args.extend(checksum_args(s, to));
    if s.superuser != new.os_user {
        args.push(format!("--username={}", s.superuser));
    }
    let mut c = Command::new("/usr/bin/pg_createcluster").args(args).user("root").timeout(INITDB_TIMEOUT);
    c.env = tool_env(new);
    c
}

/// The `start.conf` of an old Debian cluster the upgrade of pgrepl cluster `name` kept
/// (`old` → `new`, both `<version>/<cluster>`): `manual` (pg_upgradecluster's choice: not
/// started at boot, still startable by hand) or `disabled` (pg_ctlcluster refuses it).
pub fn retired_start_conf(name: &str, old: &str, new: &str, disable: bool) -> String {
    format!(
        "{RETIRED_MARKER}{new} (pgrepl cluster \"{name}\"). This cluster ({old}) is kept, not\n# started, until `pgrepl upgrade --finish` drops it (pg_dropcluster).{}\n{}\n",
        if disable { "\n# disabled: pg_upgrade --link made its files the new cluster's; it must never start again." } else { "" },
        if disable { "disabled" } else { "manual" }
    )
}

/// A configuration file's text with its `port` set to `port`: every active `port = …`
/// line replaced (comments and the rest kept), or one appended when there is none.
pub fn with_port(text: &str, port: u16) -> String {
    let mut out = String::new();
    let mut set = false;
    for line in text.lines() {
        let t = line.trim_start();
        let is_port = t.strip_prefix("port").is_some_and(|rest| rest.trim_start().starts_with('='));
        if is_port {
            out.push_str(&format!("port = {port}"));
            set = true;
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    if !set {
        out.push_str(&format!("port = {port}\n"));
    }
    out
}

/// What `pg_upgrade` is run with.
#[derive(Debug, Clone)]
pub struct PgUpgradeArgs<'a> {
    /// The old major's server binaries.
    pub old_bin: &'a str,
    /// The new layout (binaries, OS user).
    pub new: &'a NodeLayout,
    /// The old data directory.
    pub old_data: &'a str,
    /// The new data directory.
    pub new_data: &'a str,
    /// The old cluster's `postgresql.conf` when it is not in its data directory (Debian).
    pub old_config: Option<&'a str>,
    /// The same for the new cluster.
    pub new_config: Option<&'a str>,
    /// The bootstrap superuser.
    pub superuser: &'a str,
    /// The old server's port.
    pub old_port: u16,
    /// The new server's port (sockets only: pg_upgrade starts servers with no TCP listener).
    pub new_port: u16,
    /// Its working directory: the servers' sockets (pg_upgrade's default) and, before 15,
    /// its logs and report files.
    pub work_dir: &'a str,
    /// `--check` only.
    pub check: bool,
    /// `--link`.
    pub link: bool,
}

/// `pg_upgrade` in its working directory, as the server's OS user.
pub fn pg_upgrade(a: &PgUpgradeArgs<'_>) -> Command {
    let mut args: Vec<String> = vec![
        "-c".into(),
        "cd \"$1\" && shift && exec \"$@\"".into(),
        "pgrepl-pg-upgrade".into(),
        a.work_dir.to_string(),
        a.new.server_tool("pg_upgrade"),
        format!("--old-bindir={}", a.old_bin),
        format!("--new-bindir={}", a.new.bin_dir),
        format!("--old-datadir={}", a.old_data),
        format!("--new-datadir={}", a.new_data),
        format!("--username={}", a.superuser),
        format!("--old-port={}", a.old_port),
        format!("--new-port={}", a.new_port),
    ];
    if let Some(c) = a.old_config {
        args.push(format!("--old-options=-c config_file={c}"));
    }
    if let Some(c) = a.new_config {
        args.push(format!("--new-options=-c config_file={c}"));
    }
    if a.check {
        args.push("--check".into());
    }
    if a.link {
        args.push("--link".into());
    }
    let mut c = Command::new("sh").args(args).user(a.new.os_user.clone()).timeout(PG_UPGRADE_TIMEOUT);
    c.env = tool_env(a.new);
    c
}

/// Sessions of the steps that write on the new primary before its standbys are back:
/// their commits do not wait for synchronous standbys that are not there yet.
const LOCAL_COMMIT: (&str, &str) = ("PGOPTIONS", "-c synchronous_commit=local");

/// `vacuumdb --all --analyze-in-stages` on the node's socket (commits local).
pub fn analyze(layout: &NodeLayout, port: u16) -> Command {
    let mut c = Command::new(layout.client_tool("vacuumdb"))
        .args(["--all", "--analyze-in-stages", "-h", &layout.socket_dir, "-p", &port.to_string(), "-U", &layout.superuser])
        .user(layout.os_user.clone())
        .timeout(PG_UPGRADE_TIMEOUT);
    c.env = tool_env(layout);
    c.env.push((LOCAL_COMMIT.0.into(), LOCAL_COMMIT.1.into()));
    c
}

/// `psql -f <script>` (pg_upgrade's `update_extensions.sql`: it connects to each database
/// itself) on the node's socket (commits local).
pub fn psql_file(layout: &NodeLayout, port: u16, script: &str) -> Command {
    let mut c = Command::new(layout.client_tool("psql"))
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            &layout.socket_dir,
            "-p",
            &port.to_string(),
            "-U",
            &layout.superuser,
            "-d",
            "postgres",
            "-f",
            script,
        ])
        .user(layout.os_user.clone())
        .timeout(PG_UPGRADE_TIMEOUT);
    c.env = tool_env(layout);
    c.env.push((LOCAL_COMMIT.0.into(), LOCAL_COMMIT.1.into()));
    c
}

/// The checks that failed in `pg_upgrade`'s output (`Checking for … fatal`), and the
/// report files it names (absolute, or relative to `work_dir`), in order.
pub fn check_failures(stdout: &str, work_dir: &str) -> (Vec<String>, Vec<String>) {
    let mut failed = Vec::new();
    let mut files = Vec::new();
    for line in stdout.lines() {
        let t = line.trim();
        if let Some(name) = t.strip_suffix("fatal") {
            failed.push(name.trim_end().trim_end_matches('.').trim_end().to_string());
        } else if t.ends_with(".txt") && !t.contains(' ') {
            files.push(if t.starts_with('/') { t.to_string() } else { format!("{}/{t}", work_dir.trim_end_matches('/')) });
        }
    }
    (failed, files)
}

/// The new server's port for `pg_upgrade --check` against a live old server: any other
/// number than the old one (the new server listens on a socket in its own directory only).
pub fn check_port(old: u16) -> u16 {
    if old == 50432 { 50433 } else { 50432 }
}

/// The names set in a `postgresql.auto.conf`.
pub fn auto_conf_names(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split(['=', ' ']).next().map(|n| n.trim().to_string()))
        .filter(|n| !n.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Binaries;

    fn layout() -> NodeLayout {
        let b = Binaries {
            major: PgMajor::V18,
            version: "18.1".into(),
            bin_dir: "/n/bin".into(),
            client_bin_dir: "/n/bin".into(),
            lib_dir: Some("/n/lib".into()),
            has_rewind: true,
        };
        NodeLayout::local("/w", "db1", &b, "postgres")
    }

    fn settings(checksums: bool) -> InitSettings {
        InitSettings {
            encoding: "UTF8".into(),
            lc_collate: "C".into(),
            lc_ctype: "C.UTF-8".into(),
            checksums,
            superuser: "postgres".into(),
        }
    }

    #[test]
    fn initdb_follows_the_old_checksums() {
        let on = initdb(&layout(), "/w/db1/data", &settings(true), PgMajor::V18, "scram-sha-256");
        assert!(on.args.contains(&"--data-checksums".to_string()), "{:?}", on.args);
        let off = initdb(&layout(), "/w/db1/data", &settings(false), PgMajor::V18, "scram-sha-256");
        assert!(off.args.contains(&"--no-data-checksums".to_string()), "{:?}", off.args);
        let off16 = initdb(&layout(), "/w/db1/data", &settings(false), PgMajor::V16, "md5");
        assert!(!off16.args.iter().any(|a| a.contains("checksums")), "{:?}", off16.args);
        assert!(on.args.contains(&"--lc-ctype=C.UTF-8".to_string()));
        assert_eq!(on.env, [("LD_LIBRARY_PATH".to_string(), "/n/lib".to_string())]);
        assert_eq!(on.user.as_deref(), Some("postgres"));
    }

    #[test]
    fn pg_upgrade_line() {
        let l = layout();
        let c = pg_upgrade(&PgUpgradeArgs {
            old_bin: "/o/bin",
            new: &l,
            old_data: "/w/db1/data-16.old",
            new_data: "/w/db1/data",
            old_config: None,
            new_config: None,
            superuser: "postgres",
            old_port: 5432,
            new_port: 5432,
            work_dir: "/w/db1/pgrepl/upgrade",
            check: false,
            link: true,
        });
        assert_eq!(c.program, "sh");
        assert_eq!(c.args[3], "/w/db1/pgrepl/upgrade");
        assert_eq!(c.args[4], "/n/bin/pg_upgrade");
        assert!(c.args.contains(&"--link".to_string()) && !c.args.contains(&"--check".to_string()));
        assert!(c.args.contains(&"--old-datadir=/w/db1/data-16.old".to_string()));
        assert!(!c.args.iter().any(|a| a.contains("config_file")), "{:?}", c.args);
    }

    fn debian16() -> NodeLayout {
        NodeLayout::debian(PgMajor::V16, "/var/lib/postgresql/pgrepl-c")
    }

    #[test]
    fn pg_upgrade_of_debian_clusters_names_both_configuration_files() {
        let l = debian16();
        let c = pg_upgrade(&PgUpgradeArgs {
            old_bin: "/usr/lib/postgresql/15/bin",
            new: &l,
            old_data: "/var/lib/postgresql/15/main",
            new_data: "/var/lib/postgresql/16/main",
            old_config: Some("/etc/postgresql/15/main/postgresql.conf"),
            new_config: Some("/etc/postgresql/16/main/postgresql.conf"),
            superuser: "postgres",
            old_port: 5432,
            new_port: 5432,
            work_dir: "/var/lib/postgresql/pgrepl-c/upgrade",
            check: false,
            link: false,
        });
        assert_eq!(c.args[4], "/usr/lib/postgresql/16/bin/pg_upgrade");
        for want in [
            "--old-bindir=/usr/lib/postgresql/15/bin",
            "--new-bindir=/usr/lib/postgresql/16/bin",
            "--old-datadir=/var/lib/postgresql/15/main",
            "--new-datadir=/var/lib/postgresql/16/main",
            "--old-options=-c config_file=/etc/postgresql/15/main/postgresql.conf",
            "--new-options=-c config_file=/etc/postgresql/16/main/postgresql.conf",
        ] {
            assert!(c.args.contains(&want.to_string()), "{want} missing in {:?}", c.args);
        }
        assert_eq!(c.user.as_deref(), Some("postgres"));
        assert!(c.env.is_empty(), "{:?}", c.env);
    }

    #[test]
    fn createcluster_carries_the_old_clusters_settings() {
        let l = debian16();
        let c = createcluster(&l, "16", "main", 5433, &settings(true), PgMajor::V16, "scram-sha-256");
        assert_eq!(c.program, "/usr/bin/pg_createcluster");
        assert_eq!(c.user.as_deref(), Some("root"));
        assert_eq!(
            c.args,
            [
                "--port=5433",
                "--encoding=UTF8",
                "--lc-collate=C",
                "--lc-ctype=C.UTF-8",
                "16",
                "main",
                "--",
                "--auth-local=peer",
                "--auth-host=scram-sha-256",
                "--data-checksums"
            ]
        );
        let mut other = settings(false);
        other.superuser = "admin".into();
        let c = createcluster(&l, "18", "main", 5433, &other, PgMajor::V18, "md5");
        assert_eq!(&c.args[c.args.len() - 2..], ["--no-data-checksums", "--username=admin"]);
        assert_eq!(dropcluster("16", "main").args, ["16", "main"]);
    }

    #[test]
    fn the_old_debian_cluster_is_moved_aside() {
        let conf = "data_directory = '/var/lib/postgresql/15/main'\nport = 5432\t\t\t\t# (change requires restart)\n#port = 1\n  port=5432\ninclude 'pgrepl.conf'\n";
        assert_eq!(
            with_port(conf, 5433),
            "data_directory = '/var/lib/postgresql/15/main'\nport = 5433\n#port = 1\nport = 5433\ninclude 'pgrepl.conf'\n"
        );
        assert_eq!(with_port("listen_addresses = '*'", 5432), "listen_addresses = '*'\nport = 5432\n");
        assert_eq!(with_port("portal = 1\n", 5432), "portal = 1\nport = 5432\n");
        let manual = retired_start_conf("c", "15/main", "16/main", false);
        assert!(manual.starts_with("# pgrepl: upgraded to 16/main (pgrepl cluster \"c\")"), "{manual}");
        assert_eq!(crate::render::start_conf_mode(&manual), "manual");
        let disabled = retired_start_conf("c", "15/main", "16/main", true);
        assert_eq!(crate::render::start_conf_mode(&disabled), "disabled");
        assert!(disabled.contains("must never start again"), "{disabled}");
    }

    #[test]
    fn check_output_is_read() {
        let out = "Performing Consistency Checks on Old Live Server\n\
                   ------------------------------------------------\n\
                   Checking cluster versions                                     ok\n\
                   Checking for presence of required libraries                   fatal\n\
                   \n\
                   Your installation references loadable libraries that are missing from the\n\
                   new installation.  A list of problem libraries is in the file:\n\
                   \x20   /w/db1/pgrepl/check/data/pg_upgrade_output.d/20261201T1/loadable_libraries.txt\n\
                   Failure, exiting\n";
        let (failed, files) = check_failures(out, "/w");
        assert_eq!(failed, ["Checking for presence of required libraries"]);
        assert_eq!(files, ["/w/db1/pgrepl/check/data/pg_upgrade_output.d/20261201T1/loadable_libraries.txt"]);
        let (_, rel) = check_failures("    loadable_libraries.txt\n", "/w/x/");
        assert_eq!(rel, ["/w/x/loadable_libraries.txt"]);
    }

    #[test]
    fn auto_conf() {
        let t = "# Do not edit this file manually!\n# It will be overwritten by the ALTER SYSTEM command.\nwork_mem = '64MB'\nmax_connections='200'\n";
        assert_eq!(auto_conf_names(t), ["work_mem", "max_connections"]);
        assert!(auto_conf_names("# only comments\n").is_empty());
        assert_eq!(check_port(50432), 50433);
        assert_eq!(check_port(5432), 50432);
    }
}
