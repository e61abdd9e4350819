//! pgBackRest, rendered (pure): its configuration file, its command lines, which
//! PostgreSQL majors an installed version supports, and the S3 keys it needs.
//!
//! pgBackRest reads no AWS configuration file: its S3 keys are options. They are written
//! only into the node's 0600 configuration file, owned by the server's OS user
//! (`<pgrepl_dir>/pgbackrest/<stanza>/pgbackrest.conf`, passed as `--config-path`), never
//! into a command line, a rendered file or a log. Without `backup.credentials_file`
//! pgBackRest uses the instance role (`repo1-s3-key-type=auto`). Its S3 client always uses
//! TLS and verifies the certificate (`backup.ca_file` names a CA of your own).
//!
//! One configuration directory per node and stanza (the cluster's name) lets several
//! nodes share a host (the local provider) and lets a restore read another cluster's
//! archive (its stanza) from the new cluster's host.

use super::{CommandLine, shell_quote};
use crate::secret::Secret;
use crate::spec::{BackupSpec, Compression};
use crate::version::PgMajor;

/// Where pgBackRest is when `backup.bin_dir` does not say (Debian's and PGDG's package).
pub const PGBACKREST_BIN_DIR: &str = "/usr/bin";

/// The configuration directory of `stanza` on a node (`--config-path`).
pub fn config_path(pgrepl_dir: &str, stanza: &str) -> String {
    format!("{}/pgbackrest/{stanza}", pgrepl_dir.trim_end_matches('/'))
}

/// The program.
pub fn program(b: &BackupSpec) -> String {
    super::backup_tool::program(b, "pgbackrest")
}

/// The options every pgBackRest command of `stanza` on this node starts with.
pub fn base_args(pgrepl_dir: &str, stanza: &str) -> Vec<String> {
    vec![format!("--config-path={}", config_path(pgrepl_dir, stanza)), format!("--stanza={stanza}")]
}

/// A pgBackRest command of `stanza`, run as `user` (the server's OS user).
pub fn command(b: &BackupSpec, pgrepl_dir: &str, stanza: &str, user: &str, tail: &[&str]) -> CommandLine {
    let mut args = base_args(pgrepl_dir, stanza);
    args.extend(tail.iter().map(|s| s.to_string()));
    CommandLine { program: program(b), args, env: Vec::new(), user: user.into() }
}

/// `pgbackrest version`, run as `user`.
pub fn version_command(b: &BackupSpec, user: &str) -> CommandLine {
    CommandLine { program: program(b), args: vec!["version".into()], env: Vec::new(), user: user.into() }
}

/// `archive_command`: `pgbackrest ... archive-push %p`, `%` doubled in the paths.
pub fn archive_command(b: &BackupSpec, stanza: &str, pgrepl_dir: &str) -> String {
    let mut words: Vec<String> = std::iter::once(program(b)).chain(base_args(pgrepl_dir, stanza)).map(|w| pct(&w)).collect();
    words.extend(["archive-push".into(), "%p".into()]);
    words.join(" ")
}

/// `restore_command`: `pgbackrest ... archive-get %f "%p"`.
pub fn restore_command(b: &BackupSpec, stanza: &str, pgrepl_dir: &str) -> String {
    let mut words: Vec<String> = std::iter::once(program(b)).chain(base_args(pgrepl_dir, stanza)).map(|w| pct(&w)).collect();
    words.extend(["archive-get".into(), "%f".into(), "\"%p\"".into()]);
    words.join(" ")
}

fn pct(word: &str) -> String {
    shell_quote(word).replace('%', "%%")
}

/// The node a configuration is for: its data directory and how pgBackRest connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgbackrestNode<'a> {
    /// The data directory (`pg1-path`).
    pub data_dir: &'a str,
    /// The socket directory (`pg1-socket-path`).
    pub socket_dir: &'a str,
    /// The port (`pg1-port`).
    pub port: u16,
    /// The database superuser (`pg1-user`).
    pub user: &'a str,
}

/// S3 keys, read from an AWS shared credentials file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Keys {
    /// `aws_access_key_id`.
    pub key: Secret,
    /// `aws_secret_access_key`.
    pub secret: Secret,
    /// `aws_session_token`, when there is one.
    pub token: Option<Secret>,
}

/// The keys of `profile` (default `default`) in an AWS shared credentials file (INI).
pub fn parse_aws_credentials(text: &str, profile: Option<&str>) -> Option<S3Keys> {
    let want = profile.unwrap_or("default");
    let mut section = String::new();
    let (mut key, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().trim_start_matches("profile ").trim().to_string();
            continue;
        }
        if section != want {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = Secret::new(v.trim());
            match k.trim() {
                "aws_access_key_id" => key = Some(v),
                "aws_secret_access_key" => secret = Some(v),
                "aws_session_token" => token = Some(v),
                _ => {}
            }
        }
    }
    Some(S3Keys { key: key?, secret: secret?, token })
}

/// `https://host:port/...` → (host, port).
fn endpoint_host_port(endpoint: &str) -> (String, Option<u16>) {
    let rest = endpoint.trim_start_matches("https://").trim_start_matches("http://");
    let hostport = rest.split('/').next().unwrap_or(rest);
    match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => match p.parse() {
            Ok(p) => (h.to_string(), Some(p)),
            Err(_) => (hostport.to_string(), None),
        },
        _ => (hostport.to_string(), None),
    }
}

/// The configuration of `stanza` for `node`. `keys`: `None` renders the lines without
/// them (what `render` shows); the keys go only into the 0600 file on the host.
pub fn config(b: &BackupSpec, stanza: &str, config_path: &str, node: &PgbackrestNode<'_>, keys: Option<&S3Keys>) -> String {
    if let Some(host) = &b.repo_host {
        return repo_client_config(b, host, stanza, config_path, node);
    }
    let mut s = String::from("# written by pgrepl ([backup] tool = \"pgbackrest\"); mode 0600\n[global]\nrepo1-type=s3\n");
    s += &format!("repo1-s3-bucket={}\n", b.bucket.as_deref().unwrap_or_default());
    s += &format!("repo1-path=/{}\n", b.prefix.as_deref().unwrap_or("pgbackrest"));
    s += &format!("repo1-s3-region={}\n", b.region.as_deref().unwrap_or("us-east-1"));
    match b.endpoint.as_deref() {
        Some(e) => {
            let (host, port) = endpoint_host_port(e);
            s += &format!("repo1-s3-endpoint={host}\n");
            if let Some(p) = port {
                s += &format!("repo1-s3-port={p}\n");
            }
            s += "repo1-s3-uri-style=path\n";
        }
        None => s += "repo1-s3-endpoint=s3.amazonaws.com\n",
    }
    if let Some(ca) = &b.ca_file {
        s += &format!("repo1-s3-ca-file={}\n", ca.to_string_lossy());
    }
    if let Some(sse) = b.sse {
        s += &format!("repo1-s3-sse-type={}\n", sse.as_str().to_ascii_lowercase());
    }
    s += &compress_and_retention(b);
    // Its own files beside this one: no log file (the console says enough), locks and
    // the spool per node, so nodes sharing a host do not share them.
    s += &format!("lock-path={config_path}/lock\nspool-path={config_path}/spool\n");
    s += "log-level-file=off\nlog-level-console=warn\nlog-level-stderr=error\nstart-fast=y\n";
    // Retention applies when asked (`pgrepl backup --apply-retention`, the schedule's
    // line), as with barman-cloud, not after every backup.
    s += "expire-auto=n\n";
    match b.credentials_file {
        None => s += "repo1-s3-key-type=auto\n",
        Some(_) => {
            s += "repo1-s3-key-type=shared\n";
            let shown = |x: Option<&Secret>| x.map(|v| v.expose().to_string()).unwrap_or_else(|| "********".into());
            s += &format!("repo1-s3-key={}\n", shown(keys.map(|k| &k.key)));
            s += &format!("repo1-s3-key-secret={}\n", shown(keys.map(|k| &k.secret)));
            if let Some(t) = keys.and_then(|k| k.token.as_ref()) {
                s += &format!("repo1-s3-token={}\n", t.expose());
            }
        }
    }
    s += &format!(
        "\n[{stanza}]\npg1-path={}\npg1-socket-path={}\npg1-port={}\npg1-user={}\n",
        node.data_dir, node.socket_dir, node.port, node.user
    );
    s
}

fn compress_and_retention(b: &BackupSpec) -> String {
    let compress = match b.compression {
        Compression::None => "none",
        Compression::Gzip => "gz",
        Compression::Bzip2 => "bz2",
        Compression::Lz4 | Compression::Snappy => "lz4",
    };
    let mut s = format!("compress-type={compress}\n");
    if let Some(r) = &b.retention {
        if let Some(k) = r.keep {
            s += &format!("repo1-retention-full={k}\n");
        } else if let Some(Ok(secs)) = r.window_seconds() {
            s += &format!("repo1-retention-full-type=time\nrepo1-retention-full={}\n", secs.div_ceil(86_400));
        }
    }
    s
}

/// The configuration directory of `stanza` on the repository host (`backup.repo_host`),
/// owned by its OS user: `/etc/pgbackrest/pgrepl/<stanza>`.
pub fn repo_host_config_path(stanza: &str) -> String {
    format!("/etc/pgbackrest/pgrepl/{stanza}")
}

/// A node's configuration when the repository is on `backup.repo_host`: pgBackRest
/// reaches it over SSH as `backup.repo_host_user` (no S3 option, no key).
fn repo_client_config(b: &BackupSpec, host: &str, stanza: &str, config_path: &str, node: &PgbackrestNode<'_>) -> String {
    let mut s = String::from("# written by pgrepl ([backup] tool = \"pgbackrest\", repo_host); mode 0600\n[global]\n");
    s += &format!(
        "repo1-host={host}\nrepo1-host-user={}\nrepo1-host-config-path={}\nrepo1-host-cmd={}\n",
        b.repo_user(),
        repo_host_config_path(stanza),
        program(b)
    );
    s += &compress_and_retention(b);
    s += &format!("lock-path={config_path}/lock\nspool-path={config_path}/spool\n");
    s += "log-level-file=off\nlog-level-console=warn\nlog-level-stderr=error\nstart-fast=y\nexpire-auto=n\n";
    s += &format!(
        "\n[{stanza}]\npg1-path={}\npg1-socket-path={}\npg1-port={}\npg1-user={}\n",
        node.data_dir, node.socket_dir, node.port, node.user
    );
    s
}

/// A node as the repository host reaches it: its host (over SSH, as `os_user`), where
/// its pgBackRest configuration is, and its server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoHostPg<'a> {
    /// The host name or address the repository host connects to.
    pub host: &'a str,
    /// The server's OS user on it.
    pub os_user: &'a str,
    /// Its configuration directory (`config_path` of its pgrepl directory).
    pub config_path: String,
    /// Its server.
    pub node: PgbackrestNode<'a>,
}

/// The repository host's configuration of `stanza` (backups and `expire` run there):
/// the repository directory and one `pgN-*` group per node, reached over SSH as the
/// server's OS user. No secret in it; 0600 all the same, its OS user's.
pub fn repo_host_config(b: &BackupSpec, stanza: &str, nodes: &[RepoHostPg<'_>]) -> String {
    let dir = repo_host_config_path(stanza);
    let mut s = String::from("# written by pgrepl ([backup] repo_host); mode 0600\n[global]\n");
    s += &format!("repo1-path={}\n", b.repo_dir());
    s += &compress_and_retention(b);
    s +=
        &format!("lock-path={dir}/lock\nlog-level-file=off\nlog-level-console=warn\nlog-level-stderr=error\nstart-fast=y\nexpire-auto=n\n");
    s += &format!("\n[{stanza}]\n");
    for (i, n) in nodes.iter().enumerate() {
        let k = i + 1;
        s += &format!(
            "pg{k}-host={}\npg{k}-host-user={}\npg{k}-host-config-path={}\npg{k}-host-cmd={}\npg{k}-path={}\npg{k}-socket-path={}\npg{k}-port={}\npg{k}-user={}\n",
            n.host,
            n.os_user,
            n.config_path,
            program(b),
            n.node.data_dir,
            n.node.socket_dir,
            n.node.port,
            n.node.user
        );
    }
    s
}

/// The `authorized_keys` line that lets `public_key`'s holder run pgBackRest, and only
/// pgBackRest, as this account: no forwarding, no terminal, the command forced (the
/// words after the program that pgBackRest sends are kept, the program is ours).
pub fn authorized_key_line(b: &BackupSpec, public_key: &str) -> String {
    format!(
        "no-agent-forwarding,no-X11-forwarding,no-port-forwarding,no-pty,no-user-rc,command=\"{} ${{SSH_ORIGINAL_COMMAND#* }}\" {}",
        program(b),
        public_key.trim()
    )
}

/// Run as root on a host taking part in the SSH trust of `backup.repo_host`: the OS user
/// `user`'s SSH key made when it has none (ed25519, no passphrase: pgBackRest runs
/// unattended), then printed, followed by this host's own SSH host key at `address` as
/// its sshd presents it (asked here, through pgrepl's own authenticated connection to the
/// host, so the peers' `known_hosts` get the real key). On the repository host
/// (`repo`: the repository's directory and the stanza's configuration directory) the
/// user is created when missing, and both directories made, the user's only.
pub fn ssh_prepare_script(user: &str, address: &str, repo: Option<(&str, &str)>) -> String {
    let u = shell_quote(user);
    let mut s = String::from("set -eu\n");
    if repo.is_some() {
        // Its home (its ~/.ssh) apart from the repository: /home/<user>; no password, but
        // not locked either ('*', not '!': an sshd without PAM refuses keys to a locked account).
        s += &format!(
            "getent passwd {u} >/dev/null || useradd --system --create-home --home-dir /home/{user} --shell /bin/sh --password '*' {u}\n"
        );
    }
    s += &format!("home=$(getent passwd {u} | cut -d: -f6)\n[ -n \"$home\" ] || {{ echo \"no OS user {user}\" >&2; exit 3; }}\n");
    s += &format!("g=$(id -gn {u})\ninstall -d -m 0700 -o {u} -g \"$g\" \"$home/.ssh\"\n");
    if let Some((repo_path, conf)) = repo {
        let (r, c) = (shell_quote(repo_path), shell_quote(conf));
        s += &format!("install -d -m 0750 -o {u} -g \"$g\" {r}\ninstall -d -m 0755 /etc/pgbackrest /etc/pgbackrest/pgrepl\n");
        s += &format!("install -d -m 0700 -o {u} -g \"$g\" {c} {c}/lock\n", c = c);
    }
    s += &format!(
        "[ -f \"$home/.ssh/id_ed25519\" ] || runuser -u {u} -- ssh-keygen -q -t ed25519 -N '' -C pgrepl-pgbackrest -f \"$home/.ssh/id_ed25519\"\n"
    );
    s += "cat \"$home/.ssh/id_ed25519.pub\"\n";
    s += &format!("ssh-keyscan -T 10 -t ed25519 {} 2>/dev/null | grep -v '^#' | head -n 1\n", shell_quote(address));
    s
}

/// Run as root: `authorized` appended to `user`'s `~/.ssh/authorized_keys` and `known`
/// to its `~/.ssh/known_hosts`, each line once; both files 0600, the user's.
pub fn ssh_trust_script(user: &str, authorized: &[String], known: &[String]) -> String {
    let u = shell_quote(user);
    let mut s = format!("set -eu\nhome=$(getent passwd {u} | cut -d: -f6)\ng=$(id -gn {u})\n");
    for (file, lines) in [("authorized_keys", authorized), ("known_hosts", known)] {
        s += &format!("f=\"$home/.ssh/{file}\"\ntouch \"$f\"\nchown {u}:\"$g\" \"$f\"\nchmod 0600 \"$f\"\n");
        for l in lines {
            let q = shell_quote(l.trim());
            s += &format!("grep -qxF -- {q} \"$f\" || printf '%s\\n' {q} >>\"$f\"\n");
        }
    }
    s
}

/// A pgBackRest version, `2.45` or `2.53.1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PgbackrestVersion(pub u32, pub u32, pub u32);

impl std::fmt::Display for PgbackrestVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.2 {
            0 => write!(f, "{}.{}", self.0, self.1),
            p => write!(f, "{}.{}.{p}", self.0, self.1),
        }
    }
}

/// What `pgbackrest version` prints: `pgBackRest 2.45`.
pub fn parse_version(output: &str) -> Option<PgbackrestVersion> {
    let word = output.split_whitespace().skip_while(|w| *w != "pgBackRest").nth(1)?;
    let mut parts = word.split('.').map(|p| p.trim_end_matches(|c: char| !c.is_ascii_digit()).parse::<u32>());
    let major = parts.next()?.ok()?;
    let minor = parts.next()?.ok()?;
    let patch = parts.next().and_then(Result::ok).unwrap_or(0);
    Some(PgbackrestVersion(major, minor, patch))
}

/// The oldest pgBackRest that supports `major` (the version table's
/// `pgbackrest_min`), `None` for majors every 2.x supports.
pub fn minimum_for(major: PgMajor) -> Option<PgbackrestVersion> {
    major.caps().pgbackrest_min.map(|(a, b, c)| PgbackrestVersion(a, b, c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{BackupTool, RetentionSpec};

    fn spec() -> BackupSpec {
        let mut b = BackupSpec::barman_cloud("pgrepl-bk");
        b.tool = BackupTool::Pgbackrest;
        b.prefix = Some("lab".into());
        b.endpoint = Some("https://127.0.0.1:18443".into());
        b.credentials_file = Some("/srv/creds".into());
        b.ca_file = Some("/srv/ca.pem".into());
        b.retention = Some(RetentionSpec { keep: Some(2), window: None });
        b
    }

    #[test]
    fn commands_name_the_node_configuration_and_no_key() {
        let b = spec();
        assert_eq!(
            archive_command(&b, "c1", "/w/db1/pgrepl"),
            "/usr/bin/pgbackrest --config-path=/w/db1/pgrepl/pgbackrest/c1 --stanza=c1 archive-push %p"
        );
        assert_eq!(
            restore_command(&b, "c1", "/w/100% x/pgrepl"),
            "/usr/bin/pgbackrest '--config-path=/w/100%% x/pgrepl/pgbackrest/c1' --stanza=c1 archive-get %f \"%p\""
        );
        let c = command(&b, "/w/db1/pgrepl", "c1", "postgres", &["--type=full", "backup"]);
        assert_eq!(c.args, ["--config-path=/w/db1/pgrepl/pgbackrest/c1", "--stanza=c1", "--type=full", "backup"]);
        assert!(c.env.is_empty());
    }

    #[test]
    fn config_has_keys_only_when_given() {
        let b = spec();
        let node = PgbackrestNode { data_dir: "/w/db1/data", socket_dir: "/w/db1/run", port: 6001, user: "postgres" };
        let shown = config(&b, "c1", "/w/db1/pgrepl/pgbackrest/c1", &node, None);
        for line in [
            "repo1-s3-endpoint=127.0.0.1\n",
            "repo1-s3-port=18443\n",
            "repo1-s3-uri-style=path\n",
            "repo1-s3-ca-file=/srv/ca.pem\n",
            "repo1-path=/lab\n",
            "repo1-retention-full=2\n",
            "expire-auto=n\n",
            "repo1-s3-key=********\n",
            "[c1]\npg1-path=/w/db1/data\npg1-socket-path=/w/db1/run\npg1-port=6001\npg1-user=postgres\n",
        ] {
            assert!(shown.contains(line), "{line:?} missing from\n{shown}");
        }
        let keys =
            parse_aws_credentials("[other]\naws_access_key_id = X\n[default]\naws_access_key_id = AK\naws_secret_access_key = SK\n", None)
                .unwrap();
        let real = config(&b, "c1", "/w/db1/pgrepl/pgbackrest/c1", &node, Some(&keys));
        assert!(real.contains("repo1-s3-key=AK\nrepo1-s3-key-secret=SK\n"), "{real}");
        let mut role = spec();
        role.credentials_file = None;
        let c = config(&role, "c1", "/p", &node, None);
        assert!(c.contains("repo1-s3-key-type=auto\n") && !c.contains("repo1-s3-key="), "{c}");
    }

    #[test]
    fn credentials_by_profile() {
        let text =
            "# x\n[default]\naws_access_key_id=A\n[profile bk]\naws_access_key_id = B\naws_secret_access_key = C\naws_session_token = T\n";
        let k = parse_aws_credentials(text, Some("bk")).unwrap();
        assert_eq!((k.key.expose(), k.secret.expose(), k.token.as_ref().map(|t| t.expose())), ("B", "C", Some("T")));
        assert!(parse_aws_credentials(text, None).is_none(), "default has no secret");
        assert!(!format!("{k:?}").contains('B'), "{k:?}");
    }

    #[test]
    fn a_repository_host_over_ssh() {
        let mut b = BackupSpec::barman_cloud("unused");
        b.tool = BackupTool::Pgbackrest;
        b.bucket = None;
        b.repo_host = Some("10.213.7.14".into());
        b.repo_path = Some("/srv/pgbackrest".into());
        b.retention = Some(RetentionSpec { keep: Some(2), window: None });
        let node =
            PgbackrestNode { data_dir: "/var/lib/postgresql/15/main", socket_dir: "/var/run/postgresql", port: 5432, user: "postgres" };
        let c = config(&b, "c1", "/var/lib/postgresql/pgrepl/pgbackrest/c1", &node, None);
        for line in [
            "repo1-host=10.213.7.14\n",
            "repo1-host-user=pgbackrest\n",
            "repo1-host-config-path=/etc/pgbackrest/pgrepl/c1\n",
            "repo1-host-cmd=/usr/bin/pgbackrest\n",
            "[c1]\npg1-path=/var/lib/postgresql/15/main\n",
        ] {
            assert!(c.contains(line), "{line:?} missing from\n{c}");
        }
        assert!(!c.contains("s3") && !c.contains("repo1-path"), "no S3 and no path of the repository host's: {c}");
        let nodes: Vec<RepoHostPg<'_>> = ["10.213.7.11", "10.213.7.12"]
            .iter()
            .map(|h| RepoHostPg {
                host: h,
                os_user: "postgres",
                config_path: config_path("/var/lib/postgresql/pgrepl", "c1"),
                node: node.clone(),
            })
            .collect();
        let r = repo_host_config(&b, "c1", &nodes);
        for line in [
            "repo1-path=/srv/pgbackrest\n",
            "repo1-retention-full=2\n",
            "expire-auto=n\n",
            "[c1]\npg1-host=10.213.7.11\npg1-host-user=postgres\npg1-host-config-path=/var/lib/postgresql/pgrepl/pgbackrest/c1\n",
            "pg2-host=10.213.7.12\n",
            "pg2-path=/var/lib/postgresql/15/main\n",
        ] {
            assert!(r.contains(line), "{line:?} missing from\n{r}");
        }
        let prep = ssh_prepare_script("pgbackrest", "10.213.7.14", Some(("/srv/pgbackrest", &repo_host_config_path("c1"))));
        for part in [
            "useradd --system --create-home --home-dir /home/pgbackrest --shell /bin/sh --password '*' pgbackrest",
            "install -d -m 0750 -o pgbackrest -g \"$g\" /srv/pgbackrest\n",
            "install -d -m 0700 -o pgbackrest -g \"$g\" /etc/pgbackrest/pgrepl/c1 /etc/pgbackrest/pgrepl/c1/lock\n",
            "runuser -u pgbackrest -- ssh-keygen -q -t ed25519 -N '' ",
            "ssh-keyscan -T 10 -t ed25519 10.213.7.14 ",
        ] {
            assert!(prep.contains(part), "{part:?} missing from\n{prep}");
        }
        let node_prep = ssh_prepare_script("postgres", "10.213.7.11", None);
        assert!(!node_prep.contains("useradd") && !node_prep.contains("/etc/pgbackrest"), "{node_prep}");
        let trust = ssh_trust_script("postgres", &["command=\"x\" ssh-ed25519 K a@b".into()], &["10.213.7.14 ssh-ed25519 H".into()]);
        assert!(
            trust.contains(
                "grep -qxF -- 'command=\"x\" ssh-ed25519 K a@b' \"$f\" || printf '%s\\n' 'command=\"x\" ssh-ed25519 K a@b' >>\"$f\"\n"
            ),
            "{trust}"
        );
        assert!(trust.contains("f=\"$home/.ssh/known_hosts\"\n") && trust.contains("chmod 0600 \"$f\""), "{trust}");
        let k = authorized_key_line(&b, "ssh-ed25519 AAAAC3Nza postgres@db1\n");
        assert_eq!(
            k,
            "no-agent-forwarding,no-X11-forwarding,no-port-forwarding,no-pty,no-user-rc,command=\"/usr/bin/pgbackrest ${SSH_ORIGINAL_COMMAND#* }\" ssh-ed25519 AAAAC3Nza postgres@db1"
        );
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version("pgBackRest 2.45\n"), Some(PgbackrestVersion(2, 45, 0)));
        assert_eq!(parse_version("pgBackRest 2.53.1"), Some(PgbackrestVersion(2, 53, 1)));
        assert_eq!(parse_version("pgBackRest 2.56.0dev"), Some(PgbackrestVersion(2, 56, 0)));
        assert_eq!(parse_version("command not found"), None);
        assert_eq!(PgbackrestVersion(2, 45, 0).to_string(), "2.45");
        assert!(PgbackrestVersion(2, 53, 1) > PgbackrestVersion(2, 45, 0));
        assert!(PgbackrestVersion(2, 46, 0) < PgbackrestVersion(2, 53, 1));
    }
}
