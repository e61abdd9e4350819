//! Checks of `[backup]`: every field named as written in pgrepl.toml.

use crate::spec::{ArchiveSpec, BackupSpec, BackupTool, Compression, parse_window};

/// Checks `[backup]` against the rest of the spec.
pub(super) fn check_backup(b: &BackupSpec, archive: &ArchiveSpec, err: &mut impl FnMut(String, String, &str)) {
    let f = |name: &str| format!("backup.{name}");
    if *archive != ArchiveSpec::None {
        err(
            f("tool"),
            "[archive] is set too: a cluster has one archive_command".into(),
            "either [archive] (a directory or your own commands) or [backup]",
        );
    }
    let repo_host = b.tool == BackupTool::Pgbackrest && b.repo_host.is_some();
    check_repo_host(b, err);
    let s3 = matches!(b.tool, BackupTool::BarmanCloud | BackupTool::Pgbackrest) && !repo_host;
    if repo_host {
        for (name, set) in [
            ("bucket", b.bucket.is_some()),
            ("endpoint", b.endpoint.is_some()),
            ("region", b.region.is_some()),
            ("profile", b.profile.is_some()),
            ("credentials_file", b.credentials_file.is_some()),
            ("ca_file", b.ca_file.is_some()),
            ("sse", b.sse.is_some()),
            ("prefix", b.prefix.is_some()),
            ("path", b.path.is_some()),
        ] {
            if set {
                err(f(name), "set, but the repository is on backup.repo_host (not S3)".into(), "nothing (or no repo_host)");
            }
        }
    } else if s3 {
        match b.bucket.as_deref() {
            None => err(f("bucket"), format!("missing (tool = \"{}\" stores in S3)", b.tool.as_str()), "an S3 bucket name"),
            Some(name) => {
                if let Err(p) = check_bucket(name) {
                    err(f("bucket"), p, "3 to 63 lowercase letters, digits, '.' and '-', starting and ending with a letter or digit");
                }
            }
        }
        if b.path.is_some() {
            err(f("path"), format!("set, but tool = \"{}\" stores in S3", b.tool.as_str()), "no path (or tool = \"directory\")");
        }
    } else {
        match &b.path {
            None => err(f("path"), "missing (tool = \"directory\")".into(), "an absolute directory path"),
            Some(p) if !p.is_absolute() || p.to_string_lossy().chars().any(char::is_control) => {
                err(f("path"), format!("\"{}\" is not an absolute one-line path", p.display()), "an absolute directory path")
            }
            Some(_) => {}
        }
        for (name, set) in [
            ("bucket", b.bucket.is_some()),
            ("endpoint", b.endpoint.is_some()),
            ("region", b.region.is_some()),
            ("profile", b.profile.is_some()),
            ("sse", b.sse.is_some()),
            ("ca_file", b.ca_file.is_some()),
        ] {
            if set {
                err(
                    f(name),
                    "set, but tool = \"directory\" does not use S3".into(),
                    "nothing (or tool = \"barman-cloud\" or \"pgbackrest\")",
                );
            }
        }
    }
    if let Some(p) = &b.prefix {
        if p.is_empty() || p.starts_with('/') || p.ends_with('/') || !p.chars().all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c)) {
            err(
                f("prefix"),
                format!("\"{p}\" is not a key prefix"),
                "letters, digits, '/', '.', '_' and '-', without a leading or trailing '/'",
            );
        }
    }
    if let Some(r) = &b.region {
        if r.is_empty() || !r.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
            err(f("region"), format!("\"{r}\" is not a region name"), "a region such as \"eu-west-1\"");
        }
    }
    if let Some(e) = &b.endpoint {
        let scheme_ok = e.starts_with("https://") || (e.starts_with("http://") && b.tool != BackupTool::Pgbackrest);
        if !scheme_ok || e.chars().any(|c| c.is_whitespace() || c.is_control() || c == '\'' || c == '"') || e.len() < 10 {
            let expected = if b.tool == BackupTool::Pgbackrest {
                "an https:// URL (pgBackRest talks to S3 over TLS only)"
            } else {
                "an http:// or https:// URL"
            };
            err(f("endpoint"), format!("\"{e}\" is not an endpoint URL for this tool"), expected);
        }
    }
    if let Some(p) = &b.profile {
        if p.is_empty() || !p.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
            err(f("profile"), format!("\"{p}\" is not a profile name"), "letters, digits, '.', '_' and '-'");
        }
    }
    for (name, path) in [("credentials_file", &b.credentials_file), ("ca_file", &b.ca_file), ("bin_dir", &b.bin_dir)] {
        if let Some(p) = path {
            if !p.is_absolute() || p.to_string_lossy().chars().any(|c| c.is_control()) {
                err(f(name), format!("\"{}\" is not an absolute one-line path", p.display()), "an absolute path");
            }
        }
    }
    if b.tool == BackupTool::Pgbackrest && b.compression == Compression::Snappy {
        err(f("compression"), "pgBackRest has no snappy".into(), "none, gzip, bzip2 or lz4");
    }
    if let Some(r) = &b.retention {
        match (r.keep, &r.window) {
            (Some(_), Some(_)) | (None, None) => {
                err(f("retention"), "give exactly one of keep and window".into(), "{ keep = 4 } or { window = \"7d\" }")
            }
            (Some(0), _) => err(f("retention.keep"), "0 would remove every backup".into(), "1 or more full backups"),
            (None, Some(w)) => {
                if let Err(p) = parse_window(w) {
                    err(f("retention.window"), p, "a whole number and a unit: \"90m\", \"36h\", \"7d\", \"2w\"");
                }
            }
            _ => {}
        }
    }
    if let Some(s) = &b.schedule {
        if let Err(e) = crate::backup::Schedule::parse(s) {
            err(f("schedule"), e, "five cron fields, e.g. \"0 3 * * *\" (03:00 every day, UTC)");
        }
    }
}

/// `repo_host`, `repo_host_user`, `repo_path`: pgBackRest's only, well formed.
fn check_repo_host(b: &BackupSpec, err: &mut impl FnMut(String, String, &str)) {
    let f = |name: &str| format!("backup.{name}");
    let any = b.repo_host.is_some() || b.repo_host_user.is_some() || b.repo_path.is_some();
    if any && b.tool != BackupTool::Pgbackrest {
        let name = if b.repo_host.is_some() {
            "repo_host"
        } else if b.repo_host_user.is_some() {
            "repo_host_user"
        } else {
            "repo_path"
        };
        err(f(name), format!("set, but tool = \"{}\" has no repository host", b.tool.as_str()), "tool = \"pgbackrest\" (or no repo_host)");
        return;
    }
    if b.repo_host.is_none() {
        for (name, set) in [("repo_host_user", b.repo_host_user.is_some()), ("repo_path", b.repo_path.is_some())] {
            if set {
                err(f(name), "set without backup.repo_host".into(), "repo_host too (or neither)");
            }
        }
    }
    if let Some(h) = &b.repo_host {
        let ok =
            !h.is_empty() && h.len() <= 253 && h.chars().all(|c| c.is_ascii_alphanumeric() || ".-:_".contains(c)) && !h.starts_with('-');
        if !ok {
            err(
                f("repo_host"),
                format!("\"{h}\" is not a host name or address"),
                "a host name or IP address the nodes' hosts reach over SSH",
            );
        }
    }
    if let Some(u) = &b.repo_host_user {
        let ok = !u.is_empty()
            && u.len() <= 32
            && u.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && u.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !ok || u == "root" {
            err(
                f("repo_host_user"),
                format!("\"{u}\" is not an unprivileged OS user name"),
                "a lowercase user name other than root, such as \"pgbackrest\"",
            );
        }
    }
    if let Some(p) = &b.repo_path {
        let text = p.to_string_lossy();
        if !p.is_absolute() || text.chars().any(|c| c.is_control() || c.is_whitespace()) || text == "/" {
            err(
                f("repo_path"),
                format!("\"{}\" is not an absolute path below /", p.display()),
                "an absolute directory such as \"/var/lib/pgbackrest\"",
            );
        }
    }
}

/// S3's bucket naming rules (the ones that matter for a URL).
fn check_bucket(name: &str) -> Result<(), String> {
    let len_ok = (3..=63).contains(&name.len());
    let chars_ok = name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-');
    let ends_ok =
        name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric()) && name.chars().last().is_some_and(|c| c.is_ascii_alphanumeric());
    if len_ok && chars_ok && ends_ok { Ok(()) } else { Err(format!("\"{name}\" is not a bucket name")) }
}

#[cfg(test)]
mod tests {
    use crate::spec::ClusterSpec;

    fn spec(backup: &str) -> String {
        format!("name = \"c\"\npostgres = \"15\"\n{backup}\n[[nodes]]\nname = \"db1\"\nrole = \"primary\"\n")
    }

    fn errors(backup: &str) -> String {
        match ClusterSpec::from_toml(&spec(backup)) {
            Ok(s) => s.validate().map(|_| String::new()).unwrap_or_else(|e| e.to_string()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_good_section_is_accepted_and_kept() {
        let s = ClusterSpec::from_toml(&spec(
            "[backup]\ntool = \"barman-cloud\"\nbucket = \"acme-pg\"\nprefix = \"prod/eu\"\nendpoint = \"http://127.0.0.1:9000\"\nretention = { keep = 2 }\nschedule = \"0 3 * * *\"\n",
        ))
        .unwrap();
        let c = s.validate().unwrap();
        assert_eq!(c.backup.unwrap().bucket.as_deref(), Some("acme-pg"));
    }

    #[test]
    fn every_bad_field_is_named() {
        for (section, field) in [
            ("[backup]\ntool = \"barman-cloud\"\n", "backup.bucket"),
            ("[backup]\ntool = \"barman-cloud\"\nbucket = \"Bad_Bucket\"\n", "backup.bucket"),
            ("[backup]\ntool = \"barman-cloud\"\nbucket = \"ok-b\"\nprefix = \"/abs\"\n", "backup.prefix"),
            ("[backup]\ntool = \"barman-cloud\"\nbucket = \"ok-b\"\nregion = \"EU West\"\n", "backup.region"),
            ("[backup]\ntool = \"barman-cloud\"\nbucket = \"ok-b\"\nendpoint = \"ftp://x\"\n", "backup.endpoint"),
            ("[backup]\ntool = \"pgbackrest\"\nbucket = \"ok-b\"\nendpoint = \"http://127.0.0.1:9000\"\n", "backup.endpoint"),
            ("[backup]\ntool = \"pgbackrest\"\nbucket = \"ok-b\"\ncompression = \"snappy\"\n", "backup.compression"),
            ("[backup]\ntool = \"barman-cloud\"\nbucket = \"ok-b\"\ncredentials_file = \"rel/creds\"\n", "backup.credentials_file"),
            ("[backup]\ntool = \"pgbackrest\"\nbucket = \"ok-b\"\nca_file = \"ca.pem\"\n", "backup.ca_file"),
            ("[backup]\ntool = \"barman-cloud\"\nbucket = \"ok-b\"\nretention = { keep = 0 }\n", "backup.retention.keep"),
            ("[backup]\ntool = \"barman-cloud\"\nbucket = \"ok-b\"\nretention = { window = \"7 days\" }\n", "backup.retention.window"),
            ("[backup]\ntool = \"barman-cloud\"\nbucket = \"ok-b\"\nretention = { keep = 2, window = \"7d\" }\n", "backup.retention"),
            ("[backup]\ntool = \"barman-cloud\"\nbucket = \"ok-b\"\nschedule = \"daily\"\n", "backup.schedule"),
            ("[backup]\ntool = \"barman-cloud\"\nbucket = \"ok-b\"\npath = \"/srv\"\n", "backup.path"),
            ("[backup]\ntool = \"directory\"\n", "backup.path"),
            ("[backup]\ntool = \"directory\"\npath = \"/srv/bk\"\nbucket = \"ok-b\"\n", "backup.bucket"),
            ("[archive]\nmode = \"dir\"\npath = \"/srv/a\"\n[backup]\ntool = \"barman-cloud\"\nbucket = \"ok-b\"\n", "backup.tool"),
        ] {
            let e = errors(section);
            assert!(e.contains(field), "{section:?} should name {field}: {e:?}");
        }
        let pgbr = "[backup]\ntool = \"pgbackrest\"\n";
        for (extra, field) in [
            ("repo_host = \"bk 1\"\n", "backup.repo_host"),
            ("repo_host = \"-oProxyCommand=x\"\n", "backup.repo_host"),
            ("repo_host = \"bk1\"\nrepo_host_user = \"root\"\n", "backup.repo_host_user"),
            ("repo_host = \"bk1\"\nrepo_host_user = \"Back Up\"\n", "backup.repo_host_user"),
            ("repo_host = \"bk1\"\nrepo_path = \"rel/repo\"\n", "backup.repo_path"),
            ("repo_host = \"bk1\"\nrepo_path = \"/\"\n", "backup.repo_path"),
            ("repo_host = \"bk1\"\nbucket = \"ok-b\"\n", "backup.bucket"),
            ("repo_host = \"bk1\"\nendpoint = \"https://s3.example\"\n", "backup.endpoint"),
            ("repo_host = \"bk1\"\ncredentials_file = \"/srv/c\"\n", "backup.credentials_file"),
            ("repo_path = \"/srv/repo\"\nbucket = \"ok-b\"\n", "backup.repo_path"),
        ] {
            let e = errors(&format!("{pgbr}{extra}"));
            assert!(e.contains(field), "{extra:?} should name {field}: {e:?}");
        }
        let e = errors("[backup]\ntool = \"barman-cloud\"\nbucket = \"ok-b\"\nrepo_host = \"bk1\"\n");
        assert!(e.contains("backup.repo_host") && e.contains("no repository host"), "{e}");
        // A repository host needs no bucket.
        assert_eq!(
            errors(&format!("{pgbr}repo_host = \"10.0.0.9\"\nrepo_host_user = \"pgbackrest\"\nrepo_path = \"/srv/pgbackrest\"\n")),
            ""
        );
        // A key in the spec is not a field at all.
        let e = errors("[backup]\ntool = \"barman-cloud\"\nbucket = \"ok-b\"\naws_secret_access_key = \"x\"\n");
        assert!(e.contains("aws_secret_access_key"), "{e}");
    }
}
