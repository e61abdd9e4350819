//! Finding PostgreSQL binaries on this machine.
//!
//! Order: an explicit directory (`--pg-bin`, `pg_bin` in the spec), else every
//! installation found under `pg_config --bindir`, `/usr/lib/postgresql/*/bin` (Debian),
//! `/usr/pgsql-*/bin` (RHEL), the directories in `PGREPL_PG_SEARCH` (colon-separated
//! globs of bin directories) and `PATH`. The version always comes from the binaries
//! themselves (`postgres --version`); without a requested major the newest wins.
//!
//! Server and client tools may come from different installations: some builds ship only
//! `initdb`, `pg_ctl` and `postgres`; `psql` and `pg_basebackup` of a newer major work
//! against older servers, so the nearest newer installation that has them is used.
//! `pg_rewind` must match the server's major.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::Error;
use crate::layout::Binaries;
use crate::version::PgMajor;

/// What the caller asked for.
#[derive(Debug, Clone, Default)]
pub struct DiscoveryOptions {
    /// Use the server binaries in this directory.
    pub pg_bin: Option<PathBuf>,
    /// Use the client tools in this directory.
    pub pg_client_bin: Option<PathBuf>,
    /// Use this major (the newest installed otherwise).
    pub major: Option<PgMajor>,
}

/// One installation found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installation {
    /// Its bin directory.
    pub bin_dir: PathBuf,
    /// Its major.
    pub major: PgMajor,
    /// `postgres --version` output.
    pub version: String,
    /// Has `initdb`, `pg_ctl` and `postgres`.
    pub has_server: bool,
    /// Has `psql` and `pg_basebackup`.
    pub has_client: bool,
    /// Has `pg_rewind`.
    pub has_rewind: bool,
    /// Bundled library directory (relocatable builds).
    pub lib_dir: Option<PathBuf>,
}

/// Every installation found in the standard places, newest major first.
pub fn installations() -> Vec<Installation> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            dirs.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
        }
    }
    let globbed = |parent: &str, prefix: &str, suffix: &str| -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir(parent)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
                    .map(|e| e.path().join(suffix))
                    .collect()
            })
            .unwrap_or_default();
        found.sort();
        found
    };
    dirs.extend(globbed("/usr/lib/postgresql", "", "bin"));
    dirs.extend(globbed("/usr", "pgsql-", "bin"));
    if let Ok(extra) = std::env::var("PGREPL_PG_SEARCH") {
        for entry in extra.split(':').filter(|s| !s.is_empty()) {
            // `<dir>/*/bin` globs one level; plain directories are taken as they are.
            match entry.strip_suffix("/*/bin") {
                Some(parent) => dirs.extend(globbed(parent, "", "bin")),
                None => dirs.push(PathBuf::from(entry)),
            }
        }
    }
    if let Ok(path) = std::env::var("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    let mut seen: Vec<PathBuf> = Vec::new();
    let mut out: Vec<Installation> = Vec::new();
    for d in dirs {
        let canon = std::fs::canonicalize(&d).unwrap_or(d.clone());
        if seen.contains(&canon) {
            continue;
        }
        seen.push(canon);
        if let Some(i) = inspect(&d) {
            out.push(i);
        }
    }
    out.sort_by_key(|i| std::cmp::Reverse(i.major));
    out
}

/// Reads one bin directory; `None` if it holds no `postgres`, `psql` or `pg_basebackup`.
pub fn inspect(dir: &Path) -> Option<Installation> {
    let has = |n: &str| dir.join(n).is_file();
    let has_server = has("postgres") && has("initdb") && has("pg_ctl");
    let has_client = has("psql") && has("pg_basebackup");
    if !has_server && !has_client {
        return None;
    }
    let lib_dir = dir.parent().map(|p| p.join("lib")).filter(|l| l.join("libpq.so.5").exists());
    let tool = if has("postgres") {
        "postgres"
    } else if has("pg_basebackup") {
        "pg_basebackup"
    } else {
        "psql"
    };
    let mut cmd = Command::new(dir.join(tool));
    cmd.arg("--version");
    if let Some(l) = &lib_dir {
        cmd.env("LD_LIBRARY_PATH", l);
    }
    let out = cmd.output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // "postgres (PostgreSQL) 16.4" / "pg_basebackup (PostgreSQL) 15.18 (Debian ...)"
    let version = text.split(") ").nth(1).unwrap_or(&text).to_string();
    let major: PgMajor = version.parse().ok()?;
    Some(Installation { bin_dir: dir.to_path_buf(), major, version, has_server, has_client, has_rewind: has("pg_rewind"), lib_dir })
}

/// Chooses the binaries for a cluster.
pub fn discover(opts: &DiscoveryOptions) -> Result<Binaries, Error> {
    let all = installations();
    let server = match &opts.pg_bin {
        Some(dir) => {
            let i = inspect(dir).filter(|i| i.has_server).ok_or_else(|| {
                Error::Discovery(format!(
                    "--pg-bin {}: no PostgreSQL server there (expected postgres, initdb and pg_ctl in that directory)",
                    dir.display()
                ))
            })?;
            if let Some(m) = opts.major {
                if i.major != m {
                    return Err(Error::Discovery(format!(
                        "--pg-bin {} holds PostgreSQL {} but PostgreSQL {m} was asked for",
                        dir.display(),
                        i.major
                    )));
                }
            }
            i
        }
        None => all
            .iter()
            .filter(|i| i.has_server && opts.major.is_none_or(|m| i.major == m))
            // Prefer an installation that carries its own client tools.
            .max_by_key(|i| (i.major, i.has_client, i.has_rewind))
            .cloned()
            .ok_or_else(|| not_found(opts.major, &all))?,
    };
    let client = match &opts.pg_client_bin {
        Some(dir) => inspect(dir).filter(|i| i.has_client).ok_or_else(|| {
            Error::Discovery(format!("--pg-client-bin {}: no psql and pg_basebackup there", dir.display()))
        })?,
        None if server.has_client => server.clone(),
        None => all
            .iter()
            .filter(|i| i.has_client && i.major.client_tools_serve(server.major))
            .min_by_key(|i| i.major)
            .cloned()
            .ok_or_else(|| {
                Error::Discovery(format!(
                    "PostgreSQL {} in {} has no psql/pg_basebackup, and no installation of the same or a newer major has them; install the client tools (e.g. apt-get install postgresql-client) or pass --pg-client-bin",
                    server.major,
                    server.bin_dir.display()
                ))
            })?,
    };
    if !client.major.client_tools_serve(server.major) {
        return Err(Error::Discovery(format!(
            "client tools in {} are PostgreSQL {}, older than the server ({}); pg_basebackup must be the same major or newer",
            client.bin_dir.display(),
            client.major,
            server.major
        )));
    }
    let has_rewind = (server.has_rewind) || (client.has_rewind && client.major == server.major);
    Ok(Binaries {
        major: server.major,
        version: server.version.clone(),
        bin_dir: server.bin_dir.to_string_lossy().into_owned(),
        client_bin_dir: client.bin_dir.to_string_lossy().into_owned(),
        lib_dir: server.lib_dir.map(|l| l.to_string_lossy().into_owned()),
        has_rewind,
    })
}

fn not_found(major: Option<PgMajor>, all: &[Installation]) -> Error {
    let what = major.map(|m| format!("PostgreSQL {m}")).unwrap_or_else(|| "PostgreSQL".into());
    let found = if all.is_empty() {
        "none found".to_string()
    } else {
        all.iter().map(|i| format!("{} in {}", i.major, i.bin_dir.display())).collect::<Vec<_>>().join(", ")
    };
    Error::Discovery(format!(
        "no {what} server binaries found (searched pg_config, /usr/lib/postgresql/*/bin, /usr/pgsql-*/bin, $PGREPL_PG_SEARCH and $PATH; installations: {found}). \
         Install one (Debian/Ubuntu: apt-get install postgresql; RHEL: dnf install postgresqlNN-server), \
         or point --pg-bin at the directory holding postgres, initdb and pg_ctl"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_dir_is_a_clear_error() {
        let e = discover(&DiscoveryOptions { pg_bin: Some("/nonexistent/bin".into()), ..Default::default() }).unwrap_err();
        assert!(e.to_string().contains("--pg-bin /nonexistent/bin: no PostgreSQL server there"), "{e}");
    }
}
