//! SQL on a node through its own host: `psql` over the Unix socket as the server's OS
//! user (peer authentication). The same path works locally and over SSH, needs no
//! password and no network exposure of the superuser.

use std::time::Duration;

use crate::layout::NodeLayout;
use crate::transport::{Command, Transport, TransportError};

/// Field separator in psql's unaligned output (ASCII unit separator).
const FS: char = '\u{1f}';
/// How psql prints NULL.
const NULL: &str = "\\N";

/// A server-side or connection error from psql.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", .sqlstate.as_ref().map(|s| format!("SQLSTATE {s}: ")).unwrap_or_default())]
pub struct SqlError {
    /// The SQLSTATE code, when the server reported one (`25006`: read-only transaction).
    pub sqlstate: Option<String>,
    /// The message.
    pub message: String,
    /// Whether the connection itself failed (server down or unreachable).
    pub connect_failed: bool,
}

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// psql could not run.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The server (or the connection) reported an error.
    #[error(transparent)]
    Sql(#[from] SqlError),
}

/// One result row; `None` is SQL NULL.
pub type Row = Vec<Option<String>>;

/// Runs `sql` (one or more statements, sent on stdin) on the node at `port` and returns
/// the rows of the last statement that returned any.
pub async fn query(t: &dyn Transport, layout: &NodeLayout, port: u16, sql: &str, timeout: Duration) -> Result<Vec<Row>, QueryError> {
    query_in(t, layout, port, "postgres", sql, timeout).await
}

/// Like [`query`], in database `db`.
pub async fn query_in(
    t: &dyn Transport,
    layout: &NodeLayout,
    port: u16,
    db: &str,
    sql: &str,
    timeout: Duration,
) -> Result<Vec<Row>, QueryError> {
    let cmd = Command::new(layout.client_tool("psql"))
        .args([
            "-X".to_string(),
            "-q".into(),
            "-A".into(),
            "-t".into(),
            "-v".into(),
            "ON_ERROR_STOP=1".into(),
            "-v".into(),
            "VERBOSITY=verbose".into(),
            "-F".into(),
            FS.to_string(),
            "-P".into(),
            format!("null={NULL}"),
            "-h".into(),
            layout.socket_dir.clone(),
            "-p".into(),
            port.to_string(),
            "-U".into(),
            layout.superuser.clone(),
            "-d".into(),
            db.to_string(),
            "-f".into(),
            "-".into(),
        ])
        .user(layout.os_user.clone())
        .env("PGCONNECT_TIMEOUT", "5")
        .env("PGAPPNAME", "pgrepl")
        .stdin(sql.as_bytes().to_vec())
        .timeout(timeout);
    let out = t.exec(&cmd).await?;
    if out.status != 0 {
        return Err(parse_error(out.status, &out.stderr).into());
    }
    Ok(parse_rows(&out.stdout))
}

/// Like [`query`], expecting exactly one value.
pub async fn query_one(
    t: &dyn Transport,
    layout: &NodeLayout,
    port: u16,
    sql: &str,
    timeout: Duration,
) -> Result<Option<String>, QueryError> {
    let rows = query(t, layout, port, sql, timeout).await?;
    Ok(rows.into_iter().next().and_then(|r| r.into_iter().next()).flatten())
}

fn parse_rows(stdout: &str) -> Vec<Row> {
    stdout
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split(FS).map(|f| if f == NULL { None } else { Some(f.to_string()) }).collect())
        .collect()
}

/// Reads psql's stderr: `ERROR:  25006: cannot execute …` (VERBOSITY verbose), or a
/// connection failure (exit status 2).
fn parse_error(status: i32, stderr: &str) -> SqlError {
    for line in stderr.lines() {
        for level in ["FATAL:  ", "ERROR:  "] {
            if let Some(pos) = line.find(level) {
                let rest = &line[pos + level.len()..];
                let (code, msg) = match rest.split_once(": ") {
                    Some((c, m)) if c.len() == 5 && c.chars().all(|ch| ch.is_ascii_uppercase() || ch.is_ascii_digit()) => {
                        (Some(c.to_string()), m.to_string())
                    }
                    _ => (None, rest.to_string()),
                };
                return SqlError { sqlstate: code, message: msg, connect_failed: status == 2 };
            }
        }
    }
    SqlError {
        sqlstate: None,
        message: stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("psql failed").trim().to_string(),
        connect_failed: status == 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_and_nulls() {
        let out = format!("a{FS}1{FS}\\N\nb{FS}2{FS}x\n");
        assert_eq!(
            parse_rows(&out),
            vec![vec![Some("a".into()), Some("1".into()), None], vec![Some("b".into()), Some("2".into()), Some("x".into())]]
        );
    }

    #[test]
    fn sqlstate_from_verbose_error() {
        let e = parse_error(
            3,
            "psql:<stdin>:1: ERROR:  25006: cannot execute INSERT in a read-only transaction\nLOCATION:  PreventCommandIfReadOnly, utility.c:400\n",
        );
        assert_eq!(e.sqlstate.as_deref(), Some("25006"));
        assert_eq!(e.message, "cannot execute INSERT in a read-only transaction");
        assert!(!e.connect_failed);
    }

    #[test]
    fn connection_failure() {
        let e = parse_error(
            2,
            "psql: error: connection to server on socket \"/x/.s.PGSQL.5432\" failed: No such file or directory\n\tIs the server running locally?\n",
        );
        assert!(e.connect_failed);
        assert_eq!(e.sqlstate, None);
    }
}
