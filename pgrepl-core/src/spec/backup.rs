//! `[backup]`: base backups and a WAL archive in object storage (or a directory), for
//! point-in-time recovery.
//!
//! ```toml
//! [backup]
//! tool = "barman-cloud"          # or "pgbackrest", "directory"
//! bucket = "acme-pg-backups"
//! prefix = "prod"                # objects under s3://bucket/prefix/<cluster name>/
//! region = "eu-west-1"
//! # endpoint = "http://127.0.0.1:9000"   # an S3-compatible store
//! # profile = "backups"          # a profile of the AWS configuration
//! # credentials_file = "/var/lib/postgresql/.aws/credentials"   # 0600, the postgres user's
//! # ca_file = "/etc/ssl/private-ca.pem"   # the endpoint's CA, if not the system's
//! sse = "AES256"                 # or "aws:kms"
//! compression = "gzip"           # none | gzip | bzip2 | snappy | lz4
//! retention = { keep = 4 }       # full backups kept (or { window = "7d" })
//! schedule = "0 3 * * *"         # cron: `pgrepl render` shows the line
//! ```
//!
//! pgBackRest can keep its repository on a host reached over SSH instead of S3:
//! `repo_host = "backup1"`, `repo_host_user = "pgbackrest"`, `repo_path = "/var/lib/pgbackrest"`
//! (no bucket then).
//!
//! Credentials come only from the AWS configuration chain (environment, profile, instance
//! role): the spec names a profile or the path of a credentials file, never a key.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The whole `[backup]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupSpec {
    /// Which tool archives WAL and takes base backups.
    pub tool: BackupTool,
    /// S3 bucket (barman-cloud, pgbackrest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// Key prefix inside the bucket (no leading `/`); default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// AWS region (default: the AWS configuration's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Endpoint URL of an S3-compatible store (`http://` or `https://`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// A profile of the AWS configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// The AWS shared credentials file the tool reads (absolute; it must be readable by
    /// the server's OS user only). Default: the OS user's `~/.aws/credentials`, the
    /// environment, or the instance role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    /// The CA certificate (PEM) that signs the endpoint's TLS certificate, when it is not
    /// one the system trusts (absolute; pgBackRest's `repo1-s3-ca-file`, barman-cloud's
    /// `AWS_CA_BUNDLE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Server-side encryption.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sse: Option<Sse>,
    /// Compression of WAL and base backups.
    #[serde(default)]
    pub compression: Compression,
    /// Directory of the `directory` tool (absolute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Directory holding the tool's programs (barman-cloud: default `/opt/pgrepl/barman/bin`,
    /// where `up` installs Barman's cloud scripts in a virtual environment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bin_dir: Option<PathBuf>,
    /// What to keep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionSpec>,
    /// When to take a full backup, as a cron expression (five fields).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// pgBackRest's repository on a host reached over SSH (its `repo1-host`: a name or
    /// address the nodes' hosts reach), instead of S3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo_host: Option<String>,
    /// The OS user pgBackRest runs as on `repo_host` (default `pgbackrest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo_host_user: Option<String>,
    /// The repository's directory on `repo_host` (default `/var/lib/pgbackrest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo_path: Option<PathBuf>,
}

impl BackupSpec {
    /// The repository host's OS user (`repo_host_user`, default `pgbackrest`).
    pub fn repo_user(&self) -> &str {
        self.repo_host_user.as_deref().unwrap_or("pgbackrest")
    }

    /// The repository's directory on the repository host (`repo_path`, default `/var/lib/pgbackrest`).
    pub fn repo_dir(&self) -> String {
        self.repo_path.as_ref().map(|p| p.to_string_lossy().into_owned()).unwrap_or_else(|| "/var/lib/pgbackrest".into())
    }

    /// A barman-cloud backup to `bucket`.
    pub fn barman_cloud(bucket: impl Into<String>) -> Self {
        BackupSpec {
            tool: BackupTool::BarmanCloud,
            bucket: Some(bucket.into()),
            prefix: None,
            region: None,
            endpoint: None,
            profile: None,
            credentials_file: None,
            ca_file: None,
            sse: None,
            compression: Compression::default(),
            path: None,
            bin_dir: None,
            retention: None,
            schedule: None,
            repo_host: None,
            repo_host_user: None,
            repo_path: None,
        }
    }
}

/// The backup tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackupTool {
    /// Barman's cloud scripts (`barman-cloud-wal-archive`, `-backup`, `-restore`, ...).
    BarmanCloud,
    /// pgBackRest with an S3 repository.
    Pgbackrest,
    /// A directory every node can reach (WAL with `cp`, base backups with pg_basebackup).
    Directory,
}

impl BackupTool {
    /// As written in the spec.
    pub fn as_str(self) -> &'static str {
        match self {
            BackupTool::BarmanCloud => "barman-cloud",
            BackupTool::Pgbackrest => "pgbackrest",
            BackupTool::Directory => "directory",
        }
    }
}

/// Server-side encryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Sse {
    /// S3-managed keys.
    #[serde(rename = "AES256")]
    Aes256,
    /// KMS-managed keys.
    #[serde(rename = "aws:kms")]
    AwsKms,
}

impl Sse {
    /// As S3 spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Sse::Aes256 => "AES256",
            Sse::AwsKms => "aws:kms",
        }
    }
}

/// Compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// None.
    None,
    /// gzip (default).
    #[default]
    Gzip,
    /// bzip2.
    Bzip2,
    /// snappy.
    Snappy,
    /// lz4.
    Lz4,
}

/// `retention = { keep = N }` or `retention = { window = "7d" }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSpec {
    /// Full backups to keep (with the WAL they need).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep: Option<u32>,
    /// A recovery window: every point in time this far back stays restorable
    /// (`"7d"`, `"36h"`, `"2w"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
}

impl RetentionSpec {
    /// The window in seconds (`"7d"`, `"36h"`, `"2w"`, `"90m"`), when one is given and well formed.
    pub fn window_seconds(&self) -> Option<Result<u64, String>> {
        self.window.as_deref().map(parse_window)
    }
}

/// `"7d"` → 604800: a whole number followed by `m`, `h`, `d` or `w`.
pub fn parse_window(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("\"{s}\" does not start with a whole number"))?;
    let per = match unit {
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(format!("\"{s}\" has no unit m, h, d or w")),
    };
    if n == 0 {
        return Err(format!("\"{s}\" is empty"));
    }
    n.checked_mul(per).ok_or_else(|| format!("\"{s}\" is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse() {
        assert_eq!(parse_window("7d"), Ok(604_800));
        assert_eq!(parse_window("36h"), Ok(129_600));
        assert_eq!(parse_window("2w"), Ok(1_209_600));
        assert!(parse_window("7").is_err());
        assert!(parse_window("d").is_err());
        assert!(parse_window("0d").is_err());
        assert!(parse_window("7 days").is_err());
    }

    #[test]
    fn toml_reads_every_field() {
        let b: BackupSpec = toml::from_str(
            r#"tool = "barman-cloud"
bucket = "b-1"
prefix = "p/q"
region = "eu-west-1"
endpoint = "http://127.0.0.1:9000"
profile = "bk"
credentials_file = "/var/lib/postgresql/.aws/credentials"
sse = "aws:kms"
compression = "lz4"
retention = { window = "7d" }
schedule = "0 3 * * *"
"#,
        )
        .unwrap();
        assert_eq!(b.tool, BackupTool::BarmanCloud);
        assert_eq!(b.sse, Some(Sse::AwsKms));
        assert_eq!(b.compression, Compression::Lz4);
        assert_eq!(b.retention.unwrap().window_seconds(), Some(Ok(604_800)));
        let e = toml::from_str::<BackupSpec>("tool = \"barman-cloud\"\naccess_key = \"AKIA\"\n").unwrap_err();
        assert!(e.to_string().contains("access_key"), "{e}");
    }
}
