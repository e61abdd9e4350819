//! Building the one shell command line an SSH `exec` request carries (pure).
//!
//! ```text
//! cd / && exec [runuser -u U -- | sudo -n [-u U] --] [env K=V …] timeout -k 5 SECS program args…
//! ```
//!
//! Every word is shell-quoted, so the login shell (which must be POSIX-like: sh, bash,
//! dash, zsh) sees exactly the argv of the [`Command`]. `cd /` avoids "could not change
//! directory" warnings when another user cannot enter the login user's home. The remote
//! `timeout` kills the command at its limit (SIGTERM to its process group, SIGKILL 5 s
//! later); the transport also keeps its own, later deadline in case the connection dies.

use std::time::Duration;

use pgrepl_core::render::shell_quote;
use pgrepl_core::transport::Command;

/// Seconds between the remote `timeout`'s SIGTERM and its SIGKILL.
pub(crate) const KILL_AFTER: Duration = Duration::from_secs(5);

/// Exit statuses GNU `timeout` uses when the limit ran out (TERM, or KILL after `-k`).
pub(crate) const TIMEOUT_STATUSES: [i32; 2] = [124, 137];

/// Builds the remote command line for `cmd`, run on a session logged in as `login`.
/// Fails with a description of the problem when the command cannot be expressed safely.
pub(crate) fn command_line(login: &str, cmd: &Command) -> Result<String, String> {
    if cmd.program.is_empty() {
        return Err("the program name is empty".to_string());
    }
    let words = std::iter::once(&cmd.program).chain(&cmd.args);
    if let Some(w) = words.clone().find(|w| w.contains('\0')) {
        return Err(format!("argument {w:?} contains a NUL byte"));
    }
    let mut out: Vec<String> = vec!["cd".into(), "/".into(), "&&".into(), "exec".into()];
    out.extend(become_words(login, cmd.user.as_deref())?);
    if !cmd.env.is_empty() {
        out.push("env".into());
        for (k, v) in &cmd.env {
            if !is_env_name(k) {
                return Err(format!("{k:?} is not a valid environment variable name"));
            }
            if v.contains('\0') {
                return Err(format!("the value of {k} contains a NUL byte"));
            }
            out.push(shell_quote(&format!("{k}={v}")));
        }
    }
    out.push("timeout".into());
    out.push("-k".into());
    out.push(KILL_AFTER.as_secs().to_string());
    out.push(timeout_arg(cmd.timeout));
    out.extend(words.map(|w| shell_quote(w)));
    Ok(out.join(" "))
}

/// The words that switch from `login` to `user`, already quoted.
pub(crate) fn become_words(login: &str, user: Option<&str>) -> Result<Vec<String>, String> {
    let Some(user) = user.filter(|u| *u != login) else {
        return Ok(Vec::new());
    };
    if !is_user_name(user) {
        return Err(format!("{user:?} is not a valid user name"));
    }
    Ok(if login == "root" {
        vec!["runuser".into(), "-u".into(), shell_quote(user), "--".into()]
    } else if user == "root" {
        vec!["sudo".into(), "-n".into(), "--".into()]
    } else {
        vec!["sudo".into(), "-n".into(), "-u".into(), shell_quote(user), "--".into()]
    })
}

/// The duration argument of GNU `timeout`, in seconds with millisecond precision. Never
/// `0`, which would mean "no limit".
pub(crate) fn timeout_arg(d: Duration) -> String {
    let ms = d.as_millis().max(1);
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

fn is_env_name(k: &str) -> bool {
    let mut chars = k.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic()) && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

fn is_user_name(u: &str) -> bool {
    !u.is_empty() && !u.starts_with('-') && u.chars().all(|c| c.is_ascii_alphanumeric() || "._-$".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_command_as_the_login_user() {
        let c = Command::new("pg_lsclusters").args(["-h"]).timeout(Duration::from_secs(30));
        assert_eq!(command_line("root", &c).unwrap(), "cd / && exec timeout -k 5 30.000 pg_lsclusters -h");
    }

    #[test]
    fn root_uses_runuser_and_everything_is_quoted() {
        let c = Command::new("/usr/bin/psql")
            .args(["-c", "select 'x'", ""])
            .env("PGAPPNAME", "pgrepl setup")
            .env("PGPORT", "5432")
            .user("postgres")
            .timeout(Duration::from_millis(1500));
        assert_eq!(
            command_line("root", &c).unwrap(),
            "cd / && exec runuser -u postgres -- env 'PGAPPNAME=pgrepl setup' PGPORT=5432 \
             timeout -k 5 1.500 /usr/bin/psql -c 'select '\\''x'\\''' ''"
        );
    }

    #[test]
    fn same_user_needs_no_switch() {
        let c = Command::new("id").user("admin");
        assert_eq!(command_line("admin", &c).unwrap(), "cd / && exec timeout -k 5 60.000 id");
    }

    #[test]
    fn non_root_login_uses_sudo() {
        let to_root = Command::new("id").user("root");
        assert_eq!(command_line("admin", &to_root).unwrap(), "cd / && exec sudo -n -- timeout -k 5 60.000 id");
        let to_pg = Command::new("id").user("postgres");
        assert_eq!(command_line("admin", &to_pg).unwrap(), "cd / && exec sudo -n -u postgres -- timeout -k 5 60.000 id");
    }

    #[test]
    fn zero_timeout_is_not_infinite() {
        assert_eq!(timeout_arg(Duration::ZERO), "0.001");
        assert_eq!(timeout_arg(Duration::from_secs(90)), "90.000");
    }

    #[test]
    fn rejects_what_cannot_be_said_safely() {
        assert!(command_line("root", &Command::new("")).is_err());
        assert!(command_line("root", &Command::new("x").env("-i", "1")).is_err());
        assert!(command_line("root", &Command::new("x").env("A=B", "1")).is_err());
        assert!(command_line("root", &Command::new("x").env("1A", "1")).is_err());
        assert!(command_line("root", &Command::new("x").args(["a\0b"])).is_err());
        assert!(command_line("root", &Command::new("x").user("-r")).is_err());
        assert!(command_line("root", &Command::new("x").user("a b")).is_err());
    }
}
