//! The commands of the backup tools, rendered (pure): `archive_command` and
//! `restore_command` for PostgreSQL, and the command lines pgrepl runs for a base backup,
//! the list of backups, a restore and retention.
//!
//! Credentials never appear: the tools read the AWS configuration chain. The spec's
//! `credentials_file`, `profile` and `region` are names and paths, passed as
//! `AWS_SHARED_CREDENTIALS_FILE`, `--profile` and `AWS_DEFAULT_REGION`.

use super::{CommandLine, shell_quote};
use crate::spec::{BackupSpec, BackupTool, Compression, RetentionSpec};

/// Where Barman's cloud scripts are when the spec does not say (`up` installs them there).
pub const BARMAN_BIN_DIR: &str = "/opt/pgrepl/barman/bin";

/// `s3://bucket/prefix` (barman-cloud's source and destination URL).
pub fn s3_url(b: &BackupSpec) -> String {
    let bucket = b.bucket.as_deref().unwrap_or_default();
    match b.prefix.as_deref() {
        Some(p) => format!("s3://{bucket}/{p}"),
        None => format!("s3://{bucket}"),
    }
}

/// The directory of the tool's programs.
pub fn bin_dir(b: &BackupSpec) -> String {
    match (&b.bin_dir, b.tool) {
        (Some(d), _) => d.to_string_lossy().trim_end_matches('/').to_string(),
        (None, BackupTool::BarmanCloud) => BARMAN_BIN_DIR.into(),
        (None, _) => "/usr/bin".into(),
    }
}

/// A program of the tool, by name.
pub fn program(b: &BackupSpec, name: &str) -> String {
    format!("{}/{name}", bin_dir(b))
}

/// The environment the tool runs with: where the AWS configuration is, the region.
pub fn tool_env(b: &BackupSpec) -> Vec<(String, String)> {
    let mut env = Vec::new();
    if let Some(f) = &b.credentials_file {
        env.push(("AWS_SHARED_CREDENTIALS_FILE".to_string(), f.to_string_lossy().into_owned()));
    }
    if let Some(r) = &b.region {
        env.push(("AWS_DEFAULT_REGION".to_string(), r.clone()));
    }
    if let Some(ca) = &b.ca_file {
        env.push(("AWS_CA_BUNDLE".to_string(), ca.to_string_lossy().into_owned()));
    }
    env
}

/// Options every barman-cloud script takes: the endpoint and the profile.
fn cloud_args(b: &BackupSpec) -> Vec<String> {
    let mut a = vec!["--cloud-provider".to_string(), "aws-s3".to_string()];
    if let Some(e) = &b.endpoint {
        a.extend(["--endpoint-url".into(), e.clone()]);
    }
    if let Some(p) = &b.profile {
        a.extend(["--profile".into(), p.clone()]);
    }
    a
}

fn compression_arg(c: Compression) -> Option<&'static str> {
    match c {
        Compression::None => None,
        Compression::Gzip => Some("--gzip"),
        Compression::Bzip2 => Some("--bzip2"),
        Compression::Snappy => Some("--snappy"),
        Compression::Lz4 => Some("--lz4"),
    }
}

fn sse_args(b: &BackupSpec) -> Vec<String> {
    b.sse.map(|s| vec!["-e".to_string(), s.as_str().to_string()]).unwrap_or_default()
}

/// A command line as one shell line for PostgreSQL (`archive_command`): environment
/// first, every word quoted, `%` doubled except in the placeholders given.
fn shell_line(env: &[(String, String)], program: &str, args: &[String], placeholders: &[&str]) -> String {
    let mut words: Vec<String> = env.iter().map(|(k, v)| format!("{k}={}", shell_quote(v).replace('%', "%%"))).collect();
    words.push(shell_quote(program).replace('%', "%%"));
    for a in args {
        if placeholders.contains(&a.as_str()) {
            words.push(a.clone());
        } else {
            words.push(shell_quote(a).replace('%', "%%"));
        }
    }
    words.join(" ")
}

/// The directory tool's WAL directory of a cluster.
pub fn directory_wal_dir(b: &BackupSpec, server: &str) -> String {
    format!("{}/{server}/wal", b.path.as_deref().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default())
}

/// The directory tool's base backups of a cluster (`<id>/base.tar` and `<id>/backup.json` each).
pub fn directory_base_dir(b: &BackupSpec, server: &str) -> String {
    format!("{}/{server}/base", b.path.as_deref().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default())
}

/// `archive_command` of `[backup]` for cluster `server` on a node whose pgrepl directory
/// is `pgrepl_dir` (pgBackRest's configuration lives there).
pub fn archive_command(b: &BackupSpec, server: &str, pgrepl_dir: &str) -> String {
    match b.tool {
        BackupTool::BarmanCloud => {
            let mut args = cloud_args(b);
            args.extend(compression_arg(b.compression).map(String::from));
            args.extend(sse_args(b));
            args.extend([s3_url(b), server.to_string(), "%p".to_string()]);
            shell_line(&tool_env(b), &program(b, "barman-cloud-wal-archive"), &args, &["%p"])
        }
        BackupTool::Pgbackrest => super::pgbackrest::archive_command(b, server, pgrepl_dir),
        BackupTool::Directory => {
            // Every node archives (`always`): a segment already there (from another node,
            // or an earlier try whose success was not recorded) is kept, never written
            // over; a new one appears whole (copied beside, then renamed).
            let dir = shell_quote(&directory_wal_dir(b, server)).replace('%', "%%");
            format!("test -f {dir}/%f || {{ cp %p {dir}/%f.part && mv -f {dir}/%f.part {dir}/%f; }}")
        }
    }
}

/// How many times a restore's recovery asks the archive for one segment when the tool
/// fails for another reason than the segment being absent.
pub const RECOVERY_FETCH_TRIES: u32 = 5;

/// `restore_command` of a restore's (or `verify --backup`'s) archive recovery: the tool's
/// [`restore_command`], tried again (up to [`RECOVERY_FETCH_TRIES`] times, 2 s apart)
/// when it fails for another reason than the segment being absent, and then stopping the
/// recovery instead of ending it. PostgreSQL takes any failure of `restore_command` for
/// "no such segment": without this, one timeout of the store (exit 4 from
/// barman-cloud-wal-restore, pgBackRest's error codes) would end the replay there and
/// promote, silently short of the target (`--latest` loses every later commit). Exit 0 and
/// 1 (what the three tools return for "fetched" and "not in the archive") pass through;
/// exit 127 after the last try makes the startup process stop with a FATAL error (an
/// exit status above 125 is not "not found" to PostgreSQL), which the restore reports.
/// Not for standbys: they fall back to streaming and try again anyway, and a FATAL error
/// would stop them.
pub fn recovery_restore_command(b: &BackupSpec, server: &str, pgrepl_dir: &str) -> String {
    retrying(&restore_command(b, server, pgrepl_dir), 2)
}

/// `fetch` tried again after `pause` seconds while it fails with another status than 1.
fn retrying(fetch: &str, pause: u32) -> String {
    format!(
        "pgrepl_try=1; while :; do {fetch}; rc=$?; case $rc in 0|1) exit $rc;; esac; \
         if [ $pgrepl_try -ge {RECOVERY_FETCH_TRIES} ]; then echo \"pgrepl: fetching %f from the archive failed $pgrepl_try times (exit $rc): recovery stops here rather than end short of its target\" >&2; exit 127; fi; \
         echo \"pgrepl: fetching %f from the archive failed (exit $rc), trying again\" >&2; pgrepl_try=$((pgrepl_try+1)); sleep {pause}; done"
    )
}

/// Barman's spool directory for a node whose pgrepl directory is `pgrepl_dir`: its own,
/// never Barman's default `/var/tmp/walrestore`, which every restore on the host shares
/// and which barman-cloud-wal-restore reads before the archive, by segment name alone (a
/// file another cluster's restore left there is handed over as this cluster's segment).
/// pgrepl asks for no prefetching (`--parallel`) and no `.partial` files, so nothing is
/// ever written there: the directory stays absent and no stale file can be taken.
pub fn barman_spool_dir(pgrepl_dir: &str) -> String {
    format!("{}/barman-spool", pgrepl_dir.trim_end_matches('/'))
}

/// `restore_command` of `[backup]`: WAL of cluster `server` fetched from the archive (by a
/// node whose pgrepl directory is `pgrepl_dir`). Barman's with `--no-partial`: PostgreSQL
/// asks for whole segments by name, and a `.partial` (the old primary's last segment of a
/// timeline, archived at a promotion) handed over in place of one would replay WAL past
/// the fork, possibly never acknowledged; the next timeline's segment holds what is needed.
pub fn restore_command(b: &BackupSpec, server: &str, pgrepl_dir: &str) -> String {
    match b.tool {
        BackupTool::BarmanCloud => {
            let mut args = cloud_args(b);
            args.extend(["--no-partial".to_string(), "--spool-dir".to_string(), barman_spool_dir(pgrepl_dir)]);
            args.extend([s3_url(b), server.to_string(), "%f".to_string(), "%p".to_string()]);
            shell_line(&tool_env(b), &program(b, "barman-cloud-wal-restore"), &args, &["%f", "%p"])
        }
        BackupTool::Pgbackrest => super::pgbackrest::restore_command(b, server, pgrepl_dir),
        BackupTool::Directory => {
            let dir = shell_quote(&directory_wal_dir(b, server)).replace('%', "%%");
            format!("cp {dir}/%f %p")
        }
    }
}

/// barman-cloud-backup of the server listening on `socket_dir`:`port`, as `user`.
pub fn barman_backup(b: &BackupSpec, server: &str, socket_dir: &str, port: u16, user: &str) -> CommandLine {
    let mut args = cloud_args(b);
    args.extend(compression_arg(b.compression).map(String::from));
    args.extend(sse_args(b));
    args.extend([
        "--immediate-checkpoint".into(),
        "-h".into(),
        socket_dir.into(),
        "-p".into(),
        port.to_string(),
        "-U".into(),
        user.into(),
        "-d".into(),
        "postgres".into(),
        s3_url(b),
        server.into(),
    ]);
    CommandLine { program: program(b, "barman-cloud-backup"), args, env: tool_env(b), user: user.into() }
}

/// barman-cloud-backup-list in JSON.
pub fn barman_list(b: &BackupSpec, server: &str, user: &str) -> CommandLine {
    let mut args = cloud_args(b);
    args.extend(["--format".into(), "json".into(), s3_url(b), server.into()]);
    CommandLine { program: program(b, "barman-cloud-backup-list"), args, env: tool_env(b), user: user.into() }
}

/// barman-cloud-restore of `backup_id` into `dir`.
pub fn barman_restore(b: &BackupSpec, server: &str, backup_id: &str, dir: &str, user: &str) -> CommandLine {
    let mut args = cloud_args(b);
    args.extend([s3_url(b), server.into(), backup_id.into(), dir.into()]);
    CommandLine { program: program(b, "barman-cloud-restore"), args, env: tool_env(b), user: user.into() }
}

/// Barman's retention policy for `r`: `REDUNDANCY n` or `RECOVERY WINDOW OF n DAYS`
/// (a window in hours or minutes is rounded up to whole days, Barman's smallest unit).
pub fn barman_retention_policy(r: &RetentionSpec) -> Option<String> {
    if let Some(k) = r.keep {
        return Some(format!("REDUNDANCY {k}"));
    }
    let secs = r.window_seconds()?.ok()?;
    Some(format!("RECOVERY WINDOW OF {} DAYS", secs.div_ceil(86_400)))
}

/// barman-cloud-backup-delete applying the retention policy (backups and the WAL only
/// they need).
pub fn barman_delete(b: &BackupSpec, server: &str, policy: &str, user: &str) -> CommandLine {
    let mut args = cloud_args(b);
    args.extend(["--retention-policy".into(), policy.into(), s3_url(b), server.into()]);
    CommandLine { program: program(b, "barman-cloud-backup-delete"), args, env: tool_env(b), user: user.into() }
}

/// barman-cloud-backup-delete of one backup by id.
pub fn barman_delete_id(b: &BackupSpec, server: &str, backup_id: &str, user: &str) -> CommandLine {
    let mut args = cloud_args(b);
    args.extend(["--backup-id".into(), backup_id.into(), s3_url(b), server.into()]);
    CommandLine { program: program(b, "barman-cloud-backup-delete"), args, env: tool_env(b), user: user.into() }
}

/// The cron line of `[backup] schedule`, running `pgrepl backup` on the admin machine.
pub fn schedule_line(b: &BackupSpec, spec_path: &str) -> Option<String> {
    b.schedule.as_ref().map(|s| format!("{s} root pgrepl backup -f {} --apply-retention", shell_quote(spec_path)))
}

/// The version of Barman `up` installs.
pub const BARMAN_VERSION: &str = "3.19.1";

/// The root script that installs Barman's cloud scripts into a virtual environment whose
/// `bin` is `bin_dir` (from PyPI, with boto3 and psycopg2), readable by every user;
/// `None` when the tool is not barman-cloud.
pub fn install_script(b: &BackupSpec) -> Option<String> {
    if b.tool != BackupTool::BarmanCloud {
        return None;
    }
    let bin = bin_dir(b);
    let venv = bin.strip_suffix("/bin").unwrap_or(&bin).to_string();
    let v = shell_quote(&venv);
    Some(format!(
        "set -eu\numask 022\n\
         # The system's interpreter: the venv links to it, and the server's OS user runs it (a\n\
         # python3 first on root's PATH may live under /root, which that user cannot enter).\n\
         PY=/usr/bin/python3; [ -x \"$PY\" ] || PY=$(command -v python3)\n\
         if ! \"$PY\" -m venv --help >/dev/null 2>&1; then\n  if command -v apt-get >/dev/null; then DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv; else dnf install -y -q python3; fi\nfi\n\
         test -x {v}/bin/pip || \"$PY\" -m venv {v}\n{v}/bin/pip install -q 'barman[cloud]=={BARMAN_VERSION}' psycopg2-binary\nchmod -R go+rX,go-w {v}\n"
    ))
}

/// The root script that installs pgBackRest from the distribution's package (apt-get,
/// refreshing the package lists once if the first try fails, or dnf); exit status 3 with
/// the reason on a host with neither. `None` unless the tool is pgBackRest at the
/// package's place (`bin_dir` unset or `/usr/bin`): pgrepl installs nothing elsewhere.
pub fn pgbackrest_install_script(b: &BackupSpec) -> Option<String> {
    if b.tool != BackupTool::Pgbackrest || bin_dir(b) != super::pgbackrest::PGBACKREST_BIN_DIR {
        return None;
    }
    Some(
        "set -eu
if command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  \
         apt-get install -y -q pgbackrest || { apt-get update -q && apt-get install -y -q pgbackrest; }
\
         elif command -v dnf >/dev/null 2>&1; then
  dnf install -y -q pgbackrest
\
         else
  echo 'neither apt-get nor dnf on this host: install pgBackRest from your distribution' >&2
  exit 3
fi
"
        .to_string(),
    )
}

/// What to run on this machine to install the tool of `b` (said when `up` of a cluster on
/// the local provider finds it missing: pgrepl installs no package on the machine it
/// runs on).
pub fn install_hint(b: &BackupSpec) -> String {
    match b.tool {
        BackupTool::Pgbackrest => format!(
            "install pgBackRest (as root: `apt-get install pgbackrest` or `dnf install pgbackrest`) so that {} exists, or set backup.bin_dir",
            program(b, "pgbackrest")
        ),
        BackupTool::BarmanCloud => {
            let bin = bin_dir(b);
            let venv = bin.strip_suffix("/bin").unwrap_or(&bin).to_string();
            format!(
                "install Barman's cloud scripts (as root: `python3 -m venv {venv} && {venv}/bin/pip install 'barman[cloud]=={BARMAN_VERSION}' psycopg2-binary`), or set backup.bin_dir"
            )
        }
        BackupTool::Directory => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{RetentionSpec, Sse};

    #[test]
    fn barman_is_installed_in_a_venv_on_the_system_interpreter() {
        let b = BackupSpec::barman_cloud("bk");
        let s = install_script(&b).unwrap();
        for part in [
            "PY=/usr/bin/python3; [ -x \"$PY\" ] || PY=$(command -v python3)\n",
            "test -x /opt/pgrepl/barman/bin/pip || \"$PY\" -m venv /opt/pgrepl/barman\n",
            &format!("/opt/pgrepl/barman/bin/pip install -q 'barman[cloud]=={BARMAN_VERSION}' psycopg2-binary\n"),
            "chmod -R go+rX,go-w /opt/pgrepl/barman\n",
        ] {
            assert!(s.contains(part), "{part:?} missing from\n{s}");
        }
        assert!(!s.contains("\npython3 -m venv"), "never the python3 first on root's PATH: {s}");
        let o = std::process::Command::new("sh").args(["-n", "-c", &s]).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }

    #[test]
    fn pgbackrest_is_installed_from_the_package_at_its_place_only() {
        let mut b = BackupSpec::barman_cloud("b");
        assert!(pgbackrest_install_script(&b).is_none());
        b.tool = BackupTool::Pgbackrest;
        let s = pgbackrest_install_script(&b).unwrap();
        assert!(
            s.contains("apt-get install -y -q pgbackrest") && s.contains("dnf install -y -q pgbackrest") && s.contains("exit 3"),
            "{s}"
        );
        b.bin_dir = Some("/usr/bin".into());
        assert!(pgbackrest_install_script(&b).is_some());
        b.bin_dir = Some("/opt/pgbackrest/bin".into());
        assert!(pgbackrest_install_script(&b).is_none(), "nothing installed where the package does not put it");
        assert!(install_hint(&b).contains("/opt/pgbackrest/bin/pgbackrest"), "{}", install_hint(&b));
        let bar = BackupSpec::barman_cloud("b");
        assert!(install_hint(&bar).contains("/opt/pgrepl/barman/bin/pip install 'barman[cloud]==3.19.1'"), "{}", install_hint(&bar));
    }

    fn moto() -> BackupSpec {
        let mut b = BackupSpec::barman_cloud("pgrepl-bk");
        b.prefix = Some("lab/1".into());
        b.endpoint = Some("http://127.0.0.1:5000".into());
        b.credentials_file = Some("/srv/aws dir/credentials".into());
        b.region = Some("us-east-1".into());
        b.bin_dir = Some("/opt/pgrepl-lab/barman/bin".into());
        b
    }

    /// The recovery's fetch, run by a real shell as PostgreSQL would (placeholders
    /// replaced): fetched and absent pass through at once, a failing store is asked again,
    /// and one that keeps failing stops the recovery (127) instead of ending it.
    #[test]
    fn a_recovery_fetch_tries_again_on_errors_and_stops_rather_than_end_short() {
        let dir = std::env::temp_dir().join(format!("pgrepl-fetch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let count = dir.join("count");
        let run = |fetch: &str| -> (i32, String, u32) {
            let _ = std::fs::remove_file(&count);
            let counted = format!("echo x >> '{}'; {fetch}", count.display());
            let line = retrying(&counted, 0).replace("%f", "000000010000000000000006").replace("%p", "pg_wal/RECOVERYXLOG");
            let out = std::process::Command::new("sh").arg("-c").arg(&line).output().unwrap();
            let tries = std::fs::read_to_string(&count).unwrap_or_default().lines().count() as u32;
            (out.status.code().unwrap(), String::from_utf8_lossy(&out.stderr).into_owned(), tries)
        };
        assert_eq!(run("true").0, 0);
        assert_eq!(run("true").2, 1);
        let (code, _, tries) = run("sh -c 'exit 1'");
        assert_eq!((code, tries), (1, 1), "absent: no second try");
        // Fails twice with 4 (barman-cloud-wal-restore's "general error"), then fetches.
        let flaky = format!("sh -c '[ $(wc -l < {}) -ge 3 ] || exit 4'", count.display());
        let (code, err, tries) = run(&flaky);
        assert_eq!((code, tries), (0, 3), "{err}");
        assert!(err.contains("fetching 000000010000000000000006 from the archive failed (exit 4), trying again"), "{err}");
        let (code, err, tries) = run("sh -c 'exit 4'");
        assert_eq!((code, tries), (127, RECOVERY_FETCH_TRIES), "{err}");
        assert!(err.contains("failed 5 times (exit 4): recovery stops here"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
        // What PostgreSQL gets: the tool's own command inside, placeholders kept.
        let r = recovery_restore_command(&moto(), "c1", "/w");
        assert!(r.contains(&restore_command(&moto(), "c1", "/w")) && r.contains("sleep 2"), "{r}");
    }

    #[test]
    fn barman_archive_and_restore_commands() {
        let b = moto();
        assert_eq!(
            archive_command(&b, "c1", "/w"),
            "AWS_SHARED_CREDENTIALS_FILE='/srv/aws dir/credentials' AWS_DEFAULT_REGION=us-east-1 \
             /opt/pgrepl-lab/barman/bin/barman-cloud-wal-archive --cloud-provider aws-s3 --endpoint-url http://127.0.0.1:5000 \
             --gzip s3://pgrepl-bk/lab/1 c1 %p"
        );
        assert_eq!(
            restore_command(&b, "c1", "/w"),
            "AWS_SHARED_CREDENTIALS_FILE='/srv/aws dir/credentials' AWS_DEFAULT_REGION=us-east-1 \
             /opt/pgrepl-lab/barman/bin/barman-cloud-wal-restore --cloud-provider aws-s3 --endpoint-url http://127.0.0.1:5000 \
             --no-partial --spool-dir /w/barman-spool s3://pgrepl-bk/lab/1 c1 %f %p"
        );
    }

    #[test]
    fn percent_in_a_path_is_doubled_and_sse_profile_compression_are_passed() {
        let mut b = moto();
        b.credentials_file = Some("/srv/100%/creds".into());
        b.sse = Some(Sse::AwsKms);
        b.profile = Some("bk".into());
        b.compression = Compression::Lz4;
        let a = archive_command(&b, "c1", "/w");
        assert!(a.starts_with("AWS_SHARED_CREDENTIALS_FILE=/srv/100%%/creds "), "{a}");
        assert!(a.contains("--profile bk --lz4 -e aws:kms s3://"), "{a}");
        assert!(a.ends_with(" c1 %p"), "{a}");
    }

    #[test]
    fn retention_policies() {
        let keep = RetentionSpec { keep: Some(3), window: None };
        assert_eq!(barman_retention_policy(&keep).as_deref(), Some("REDUNDANCY 3"));
        let w = RetentionSpec { keep: None, window: Some("36h".into()) };
        assert_eq!(barman_retention_policy(&w).as_deref(), Some("RECOVERY WINDOW OF 2 DAYS"));
    }

    #[test]
    fn backup_command_has_no_secret_and_runs_as_the_os_user() {
        let c = barman_backup(&moto(), "c1", "/w/db1/run", 6001, "postgres");
        assert_eq!(c.user, "postgres");
        assert_eq!(c.program, "/opt/pgrepl-lab/barman/bin/barman-cloud-backup");
        assert!(c.args.ends_with(&["s3://pgrepl-bk/lab/1".to_string(), "c1".to_string()]));
        assert_eq!(c.env[0], ("AWS_SHARED_CREDENTIALS_FILE".into(), "/srv/aws dir/credentials".into()));
    }

    #[test]
    fn directory_and_pgbackrest_commands() {
        let mut d = BackupSpec::barman_cloud("x");
        d.tool = BackupTool::Directory;
        d.bucket = None;
        d.path = Some("/srv/bk".into());
        assert_eq!(
            archive_command(&d, "c1", "/w"),
            "test -f /srv/bk/c1/wal/%f || { cp %p /srv/bk/c1/wal/%f.part && mv -f /srv/bk/c1/wal/%f.part /srv/bk/c1/wal/%f; }"
        );
        assert_eq!(directory_base_dir(&d, "c1"), "/srv/bk/c1/base");
        assert_eq!(restore_command(&d, "c1", "/w"), "cp /srv/bk/c1/wal/%f %p");
        let mut p = moto();
        p.tool = BackupTool::Pgbackrest;
        p.bin_dir = None;
        assert_eq!(
            archive_command(&p, "c1", "/w/db1/pgrepl"),
            "/usr/bin/pgbackrest --config-path=/w/db1/pgrepl/pgbackrest/c1 --stanza=c1 archive-push %p"
        );
    }

    /// Every node archives (`always` from 9.5, so a promoted standby and the standbys of a
    /// dying primary carry on), and standbys get the archive's restore_command: in
    /// recovery.conf on 11, in pgrepl.conf on 15.
    #[test]
    fn nodes_get_archive_and_restore_commands_per_version() {
        use crate::layout::{Binaries, NodeLayout};
        use crate::render::render_node;
        use crate::spec::{ClusterSpec, NodeSpec};
        use crate::version::PgMajor;
        for major in [PgMajor::V11, PgMajor::V15, PgMajor::V18] {
            let cluster = ClusterSpec::builder("c1")
                .node(NodeSpec::primary("db1"))
                .node(NodeSpec::standby("db2"))
                .backup(moto())
                .into_spec()
                .validate_for(major)
                .unwrap();
            let layout = NodeLayout::local("/w", "db2", &Binaries::assumed(major), "postgres");
            let primary = render_node(&cluster, "db1", &layout, None).unwrap();
            let standby = render_node(&cluster, "db2", &layout, None).unwrap();
            let get = |r: &crate::render::RenderedNode, k: &str| r.settings.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            for r in [&primary, &standby] {
                assert_eq!(get(r, "archive_mode").as_deref(), Some("always"), "{major}");
                assert!(get(r, "archive_command").unwrap().contains("barman-cloud-wal-archive"), "{major}");
            }
            assert_eq!(get(&primary, "restore_command"), None);
            let restore = "restore_command = 'AWS_SHARED_CREDENTIALS_FILE=''/srv/aws dir/credentials''";
            let recovery_conf = standby.files.iter().find(|f| f.path.ends_with("/recovery.conf"));
            match major {
                PgMajor::V11 => assert!(recovery_conf.unwrap().contents.text.contains(restore), "{major}"),
                _ => {
                    assert!(recovery_conf.is_none());
                    assert!(get(&standby, "restore_command").unwrap().contains("barman-cloud-wal-restore"), "{major}");
                }
            }
        }
    }

    /// pgBackRest refuses backups with `archive_mode = always`: its nodes archive with `on`,
    /// through their own configuration directory, and standbys fetch with archive-get.
    #[test]
    fn pgbackrest_nodes_archive_with_on() {
        use crate::layout::{Binaries, NodeLayout};
        use crate::render::render_node;
        use crate::spec::{ClusterSpec, NodeSpec};
        use crate::version::PgMajor;
        let mut b = moto();
        b.tool = BackupTool::Pgbackrest;
        b.endpoint = Some("https://127.0.0.1:8443".into());
        b.bin_dir = None;
        let cluster = ClusterSpec::builder("c1")
            .node(NodeSpec::primary("db1"))
            .node(NodeSpec::standby("db2"))
            .backup(b)
            .into_spec()
            .validate_for(PgMajor::V15)
            .unwrap();
        let get = |r: &crate::render::RenderedNode, k: &str| r.settings.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let l1 = NodeLayout::local("/w", "db1", &Binaries::assumed(PgMajor::V15), "postgres");
        let l2 = NodeLayout::local("/w", "db2", &Binaries::assumed(PgMajor::V15), "postgres");
        let primary = render_node(&cluster, "db1", &l1, None).unwrap();
        let standby = render_node(&cluster, "db2", &l2, None).unwrap();
        assert_eq!(get(&primary, "archive_mode").as_deref(), Some("on"));
        assert_eq!(
            get(&primary, "archive_command").as_deref(),
            Some("'/usr/bin/pgbackrest --config-path=/w/db1/pgrepl/pgbackrest/c1 --stanza=c1 archive-push %p'")
        );
        assert_eq!(
            get(&standby, "restore_command").as_deref(),
            Some("'/usr/bin/pgbackrest --config-path=/w/db2/pgrepl/pgbackrest/c1 --stanza=c1 archive-get %f \"%p\"'")
        );
        // `render` shows each node's pgbackrest.conf, its own data directory and port, the keys hidden.
        for (r, dir, port) in [(&primary, "/w/db1", 5432), (&standby, "/w/db2", 5433)] {
            assert_eq!(r.backup_files.len(), 1);
            let f = &r.backup_files[0];
            assert_eq!(f.path, format!("{dir}/pgrepl/pgbackrest/c1/pgbackrest.conf"));
            assert_eq!(f.mode, 0o600);
            let text = &f.contents.text;
            assert!(text.contains(&format!("[c1]\npg1-path={dir}/data\n")) && text.contains(&format!("pg1-port={port}\n")), "{text}");
            assert!(text.contains("repo1-s3-key=********\nrepo1-s3-key-secret=********\n"), "{text}");
            assert!(text.contains("repo1-s3-endpoint=127.0.0.1\nrepo1-s3-port=8443\n"), "{text}");
            let shown = r.to_string();
            assert!(
                shown.contains(&format!("--- {dir}/pgrepl/pgbackrest/c1/pgbackrest.conf (mode 0600")) && shown.contains(text.as_str()),
                "{shown}"
            );
            let json = serde_json::to_string(r).unwrap();
            assert!(json.contains("pgbackrest.conf"), "{json}");
        }
        // Up to 11 in recovery.conf.
        let c11 = ClusterSpec::builder("c1")
            .node(NodeSpec::primary("db1"))
            .node(NodeSpec::standby("db2"))
            .backup(cluster.backup.clone().unwrap())
            .into_spec()
            .validate_for(PgMajor::V11)
            .unwrap();
        let l2 = NodeLayout::local("/w", "db2", &Binaries::assumed(PgMajor::V11), "postgres");
        let s11 = render_node(&c11, "db2", &l2, None).unwrap();
        let rc = s11.files.iter().find(|f| f.path.ends_with("/recovery.conf")).unwrap();
        assert!(rc.contents.text.contains("--stanza=c1 archive-get %f \"%p\"'"), "{}", rc.contents.text);
        assert_eq!(get(&s11, "archive_mode").as_deref(), Some("on"));
    }
}
