//! Whether a node's server runs, from its host: the postmaster's pid file and process as
//! well as the service manager, in one command.

use std::time::Duration;

use serde::Serialize;

use crate::node_handle::NodeHandle;
use crate::transport::{Command, TransportError};

/// What a node's server is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerState {
    /// A postmaster runs on the data directory and is up (or the service manager says the
    /// unit is active).
    Running,
    /// It is starting: the systemd unit is `activating`, or the pid file says `starting`
    /// (crash recovery at boot, a standby not yet consistent).
    Starting,
    /// It is shutting down (the pid file says `stopping`, the unit is `deactivating`).
    Stopping,
    /// Nothing runs on the data directory.
    Stopped,
}

impl ServerState {
    /// Whether a server runs (anything but [`ServerState::Stopped`]): starting and stopping
    /// servers hold the data directory too.
    pub fn is_running(self) -> bool {
        self != ServerState::Stopped
    }
}

/// The script behind [`server_state`], run with `sh -c SCRIPT NAME DATA_DIR UNIT` as the
/// transport's admin user: prints the service manager's word for the unit (when one is
/// given), the postmaster's pid file (pid, status line) and what that pid is now (state,
/// executable, name, `argv[0]`, and whether its working directory is the data directory: a
/// postmaster runs in its data directory).
pub const SERVER_STATE_SCRIPT: &str = r#"d=$1 unit=$2
if [ -n "$unit" ]; then printf 'unit=%s\n' "$(systemctl is-active "$unit" 2>/dev/null | head -n 1)"; fi
f=$d/postmaster.pid
if [ ! -e "$f" ]; then echo pidfile=none; exit 0; fi
if [ ! -r "$f" ]; then echo pidfile=unreadable; exit 0; fi
pid=$(sed -n 1p "$f")
printf 'pid=%s\npm_status=%s\n' "$pid" "$(sed -n 8p "$f")"
pid=${pid#-}
case $pid in ''|*[!0-9]*) exit 0;; esac
p=/proc/$pid
if [ ! -d "$p" ]; then echo proc=none; exit 0; fi
printf 'state=%s\n' "$(sed -n 's/^State:[[:space:]]*//p' "$p/status" 2>/dev/null)"
printf 'exe=%s\n' "$(readlink "$p/exe" 2>/dev/null)"
printf 'comm=%s\n' "$(cat "$p/comm" 2>/dev/null)"
printf 'argv0=%s\n' "$(tr '\0' '\n' <"$p/cmdline" 2>/dev/null | head -n 1)"
if [ "$p/cwd" -ef "$d" ]; then echo cwd=data_dir; elif [ -e "$p/cwd" ]; then echo cwd=other; else echo cwd=unknown; fi
exit 0
"#;

/// What the node's server is doing, in one command on its host: from the postmaster's pid
/// file and the process it names (alive, not a zombie, a postgres/postmaster running in this
/// data directory, so a recycled pid is not taken for the server) and, on systemd layouts,
/// from `systemctl is-active`. Running if either says so: a server started outside systemd
/// (pg_ctl by hand) or still in crash recovery (unit `activating`) is not stopped.
pub async fn server_state(h: &NodeHandle) -> Result<ServerState, TransportError> {
    let unit = match &h.layout.service {
        crate::layout::ServiceControl::Systemd { unit } => unit.as_str(),
        crate::layout::ServiceControl::PgCtl | crate::layout::ServiceControl::PgCtlCluster { .. } => "",
    };
    let c = Command::new("sh").args(["-c", SERVER_STATE_SCRIPT, "pgrepl-server-state", h.layout.data_dir.as_str(), unit]);
    let c = Command { user: h.transport.admin_user().map(str::to_string), ..c }.timeout(Duration::from_secs(30));
    let out = h.transport.exec(&c).await?;
    if !out.success() {
        return Err(TransportError::CommandFailed { program: "sh".into(), status: out.status, tail: out.tail() });
    }
    Ok(parse_server_state(&out.stdout))
}

/// Reads the output of [`SERVER_STATE_SCRIPT`].
pub fn parse_server_state(out: &str) -> ServerState {
    let get = |key: &str| out.lines().find_map(|l| l.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v.trim()));
    let from_unit = match get("unit") {
        Some("active" | "reloading" | "refreshing") => ServerState::Running,
        Some("activating") => ServerState::Starting,
        Some("deactivating") => ServerState::Stopping,
        _ => ServerState::Stopped,
    };
    let postmaster = match get("pidfile") {
        Some("none") => None,
        // A pid file pgrepl cannot read: assume its server runs.
        Some(_) => Some(ServerState::Running),
        None => match get("pid").map(|p| p.trim_start_matches('-')) {
            // Empty or not a number: being written by a postmaster that is starting.
            Some(p) if p.is_empty() || !p.chars().all(|c| c.is_ascii_digit()) => Some(ServerState::Starting),
            None => Some(ServerState::Starting),
            Some(_) => {
                let name = |v: Option<&str>| {
                    let v = v.unwrap_or("").trim_end_matches(" (deleted)");
                    matches!(v.rsplit('/').next().unwrap_or(""), "postgres" | "postmaster")
                };
                let alive = get("proc") != Some("none") && process_alive(get("state").unwrap_or(""));
                let is_postgres = name(get("exe")) || name(get("comm")) || name(get("argv0"));
                if alive && is_postgres && get("cwd") != Some("other") {
                    Some(match get("pm_status") {
                        Some("starting") => ServerState::Starting,
                        Some("stopping") => ServerState::Stopping,
                        _ => ServerState::Running,
                    })
                } else {
                    None
                }
            }
        },
    };
    match (postmaster, from_unit) {
        (None, u) => u,
        (Some(ServerState::Running), u @ (ServerState::Starting | ServerState::Stopping)) => u,
        (Some(p), _) => p,
    }
}

/// Whether the node's server runs (see [`server_state`]).
pub async fn is_running(h: &NodeHandle) -> Result<bool, TransportError> {
    Ok(server_state(h).await?.is_running())
}

/// Whether `ps -o stat=` output (or the `State:` of /proc/<pid>/status) names a live
/// process (not a zombie, not gone).
pub(crate) fn process_alive(ps_stat: &str) -> bool {
    let s = ps_stat.trim();
    !s.is_empty() && !s.starts_with('Z')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zombies_and_gone_processes_are_not_running() {
        assert!(process_alive("Ss"));
        assert!(process_alive("S+\n"));
        assert!(!process_alive("Z"));
        assert!(!process_alive("Zs"));
        assert!(!process_alive(""));
    }

    /// What the server-state script prints, read into a state: the pid file and the process
    /// it names decide, the service manager's word counts too (running if either says so).
    #[test]
    fn server_state_from_pid_file_process_and_unit() {
        use ServerState::*;
        let live = "pid=4242\npm_status=ready   \nstate=S (sleeping)\nexe=/usr/lib/postgresql/15/bin/postgres\ncomm=postgres\nargv0=/usr/lib/postgresql/15/bin/postgres\ncwd=data_dir\n";
        // A live postmaster in this data directory, whatever systemd says (started by hand).
        assert_eq!(parse_server_state(live), Running);
        assert_eq!(parse_server_state(&format!("unit=inactive\n{live}")), Running);
        assert_eq!(parse_server_state(&format!("unit=\n{live}")), Running, "systemctl absent or no systemd");
        assert_eq!(parse_server_state(&format!("unit=failed\n{live}")), Running);
        // Started in crash recovery at boot: systemd says activating; or the pid file says starting.
        assert_eq!(parse_server_state(&format!("unit=activating\n{live}")), Starting);
        assert_eq!(parse_server_state(&live.replace("ready   ", "starting")), Starting);
        assert_eq!(parse_server_state(&live.replace("ready   ", "stopping")), Stopping);
        assert_eq!(parse_server_state(&live.replace("ready   ", "standby ")), Running);
        // 9.x pid files have no status line.
        assert_eq!(parse_server_state(&live.replace("pm_status=ready   ", "pm_status=")), Running);
        // The binary replaced by a package upgrade while it runs.
        assert_eq!(parse_server_state(&live.replace("bin/postgres\ncomm", "bin/postgres (deleted)\ncomm")), Running);
        // exe unreadable (another user's process): its name and argv[0] still tell.
        assert_eq!(
            parse_server_state(&live.replace("exe=/usr/lib/postgresql/15/bin/postgres", "exe=").replace("cwd=data_dir", "cwd=unknown")),
            Running
        );
        // Killed and not yet reaped: a zombie runs nothing.
        assert_eq!(parse_server_state(&live.replace("S (sleeping)", "Z (zombie)")), Stopped);
        assert_eq!(parse_server_state(&format!("unit=inactive\n{}", live.replace("S (sleeping)", "Z (zombie)"))), Stopped);
        // A stale pid file whose pid is now another program.
        let other = "pid=4242\npm_status=ready\nstate=S (sleeping)\nexe=/usr/bin/sleep\ncomm=sleep\nargv0=sleep\ncwd=other\n";
        assert_eq!(parse_server_state(other), Stopped);
        // ... or another cluster's postgres (its own data directory).
        assert_eq!(parse_server_state(&live.replace("cwd=data_dir", "cwd=other")), Stopped);
        // The pid is gone.
        assert_eq!(parse_server_state("pid=4242\npm_status=ready\nproc=none\n"), Stopped);
        // No pid file: stopped, unless the service manager says otherwise.
        assert_eq!(parse_server_state("pidfile=none\n"), Stopped);
        assert_eq!(parse_server_state("unit=inactive\npidfile=none\n"), Stopped);
        assert_eq!(parse_server_state("unit=active\npidfile=none\n"), Running);
        assert_eq!(parse_server_state("unit=activating\npidfile=none\n"), Starting);
        assert_eq!(parse_server_state("unit=deactivating\npidfile=none\n"), Stopping);
        // A pid file being written (empty) or unreadable: assume a server.
        assert_eq!(parse_server_state("pid=\npm_status=\n"), Starting);
        assert_eq!(parse_server_state("pidfile=unreadable\n"), Running);
        // A standalone backend writes its pid negated.
        assert_eq!(parse_server_state(&live.replace("pid=4242", "pid=-4242")), Running);
        assert!(Starting.is_running() && Stopping.is_running() && Running.is_running() && !Stopped.is_running());
    }
}
