//! Command-line arguments (clap derive only; behaviour lives in main.rs and pgrepl-core).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use pgrepl_core::PgMajor;

/// Deploy and operate PostgreSQL streaming replication: a primary and hot standbys,
/// on this machine, over SSH, or on EC2.
///
/// Exit status: 0 ok; 1 a check failed (status found a problem, verify failed);
/// 2 usage or spec error; 3 refused by a safety check; 4 infrastructure error.
#[derive(Debug, Parser)]
#[command(name = "pgrepl", version, propagate_version = true)]
pub struct Cli {
    /// More logging on stderr (-v: steps, -vv: every command).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Cmd,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct Common {
    /// The cluster file (pgrepl.toml). Without it: the built-in default cluster
    /// (3 local nodes), created by `pgrepl up`.
    #[arg(short = 'f', long = "file", env = "PGREPL_FILE")]
    pub file: Option<PathBuf>,
    /// Directory of the PostgreSQL server binaries (postgres, initdb, pg_ctl).
    #[arg(long, env = "PGREPL_PG_BIN")]
    pub pg_bin: Option<PathBuf>,
    /// Directory of the client tools (psql, pg_basebackup), when not beside the server's.
    #[arg(long, env = "PGREPL_PG_CLIENT_BIN")]
    pub pg_client_bin: Option<PathBuf>,
    /// PostgreSQL major to use, e.g. 16 or 9.6 (default: the spec's, else the newest installed).
    #[arg(long = "pg-version", value_parser = parse_major)]
    pub pg_version: Option<PgMajor>,
    /// Work directory of a local cluster (overrides the spec's).
    #[arg(long, env = "PGREPL_WORK_DIR")]
    pub work_dir: Option<PathBuf>,
    /// Output format: text for humans, json for programs.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// Seconds to wait while another operation (up, switchover, failover, rejoin,
    /// destroy, pause, resume) holds the cluster's lock; then the command is refused
    /// (exit 3) naming it.
    #[arg(long, value_name = "SECONDS", env = "PGREPL_LOCK_WAIT", default_value_t = 30)]
    pub lock_wait: u64,
}

fn parse_major(s: &str) -> Result<PgMajor, String> {
    s.parse().map_err(|e: pgrepl_core::version::VersionError| e.to_string())
}

/// The shortest `status --watch` interval: a refresh is a round of queries to every node.
const MIN_WATCH: Duration = Duration::from_millis(100);

fn parse_interval(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|_| format!("\"{s}\" is not a number of seconds"))?;
    if !secs.is_finite() || secs < MIN_WATCH.as_secs_f64() || secs > 3600.0 {
        return Err(format!("{s}: expected seconds between {} and 3600", MIN_WATCH.as_secs_f64()));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// For humans.
    Text,
    /// For programs.
    Json,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Show every file, SQL statement and command each node gets (a dry run; touches
    /// nothing), or with --haproxy an HAProxy configuration for the cluster.
    Render {
        #[command(flatten)]
        common: Common,
        /// Only this node.
        #[arg(long, conflicts_with = "haproxy")]
        node: Option<String>,
        /// Instead of the nodes' files: an HAProxy 2.6 configuration for an `[ha]`
        /// cluster. A read-write port goes to the node whose agent answers 200 on /primary,
        /// a read-only port is balanced over the nodes whose agent answers 200 on /replica.
        #[arg(long)]
        haproxy: bool,
        #[command(flatten)]
        haproxy_args: HaproxyArgs,
    },
    /// Deploy the cluster, or converge it to the spec (safe to run again).
    Up {
        #[command(flatten)]
        common: Common,
        /// Print the plan (what each node gets, with its guards) and touch nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Roles, states, timelines, WAL positions, lag, sync state and slots.
    Status {
        #[command(flatten)]
        common: Common,
        /// Refresh every SECONDS (default 2) until Ctrl-C, until --count refreshes, or for
        /// 24 hours at most. Text is redrawn in place on a terminal (a separator line between
        /// refreshes otherwise); --output json prints one compact object per line per
        /// refresh. Exit status: that of the last refresh.
        #[arg(
            short = 'W',
            long,
            value_name = "SECONDS",
            num_args = 0..=1,
            default_missing_value = "2",
            value_parser = parse_interval
        )]
        watch: Option<Duration>,
        /// With --watch: stop after N refreshes.
        #[arg(long, value_name = "N", requires = "watch", value_parser = clap::value_parser!(u64).range(1..))]
        count: Option<u64>,
    },
    /// Write a canary row on the primary; it must reach every standby, and every standby
    /// must refuse writes. With --backup: restore the latest backup into a scratch
    /// directory and check that it reaches consistency and starts.
    Verify {
        #[command(flatten)]
        common: Common,
        /// Seconds each standby has to show the canary.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
        /// Verify the latest base backup and the archive instead of replication.
        #[arg(long)]
        backup: bool,
        /// With --backup: the scratch directory (must not exist; removed afterwards).
        #[arg(long, requires = "backup", value_name = "DIR")]
        scratch: Option<PathBuf>,
        /// With --backup: the port the restored server uses (local socket only; default: a free one).
        #[arg(long, requires = "backup", value_name = "PORT")]
        scratch_port: Option<u16>,
    },
    /// Take a full base backup now (`[backup]` in the spec), from the primary or --from NODE.
    Backup {
        #[command(flatten)]
        common: Common,
        /// The node to back up (default: the primary).
        #[arg(long, value_name = "NODE")]
        from: Option<String>,
        /// Then apply `[backup]` retention (older backups and the WAL only they need removed).
        #[arg(long)]
        apply_retention: bool,
    },
    /// List the base backups in the archive: size, begin/end LSN and time, timeline.
    Backups {
        #[command(flatten)]
        common: Common,
    },
    /// Restore the archive to a point in time into a NEW cluster (nothing of this one is
    /// touched): the new cluster's file is written (or read, when --into names an existing
    /// file), its primary restored and promoted at the target, its standbys cloned. With
    /// --in-place --yes, into this cluster once it is down.
    #[command(group(clap::ArgGroup::new("target").required(true)))]
    Restore {
        #[command(flatten)]
        common: Common,
        /// Stop at this time (RFC 3339 with its offset: 2026-12-01T05:30:00Z).
        #[arg(long, value_name = "TIME", group = "target")]
        to_time: Option<String>,
        /// Stop at this WAL position (0/5000000).
        #[arg(long, value_name = "LSN", group = "target")]
        to_lsn: Option<String>,
        /// Replay everything archived, on the latest timeline.
        #[arg(long, group = "target")]
        latest: bool,
        /// The new cluster's file: read when it exists, else written (local clusters:
        /// derived from this one with --name and --base-port).
        #[arg(long, value_name = "FILE", required_unless_present = "in_place", conflicts_with = "in_place")]
        into: Option<PathBuf>,
        /// Restore THIS cluster instead, after `pgrepl down` (refused while any of its
        /// servers runs): the primary's data directory is moved aside to
        /// `<data>.pre-restore`, the standbys' are removed, the primary is restored, then
        /// `up` clones the standbys. Needs --yes.
        #[arg(long, conflicts_with_all = ["name", "base_port"])]
        in_place: bool,
        /// Confirm --in-place.
        #[arg(long, requires = "in_place")]
        yes: bool,
        /// The new cluster's name when --into is written (default: `<name>-restored`).
        #[arg(long)]
        name: Option<String>,
        /// The new local cluster's first port when --into is written (default: a free run).
        #[arg(long)]
        base_port: Option<u16>,
        /// Restore this backup (by id) instead of the newest one that covers the target.
        #[arg(long, value_name = "ID")]
        backup_id: Option<String>,
        /// Only restore the primary; do not run `up` to clone the standbys.
        #[arg(long)]
        no_standbys: bool,
    },
    /// Stop every node (primary first, so standbys receive its last WAL).
    Down {
        #[command(flatten)]
        common: Common,
    },
    /// Stop every node and remove its data and pgrepl's secrets.
    Destroy {
        #[command(flatten)]
        common: Common,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Planned switch of the primary to NODE, losing nothing: the primary stops cleanly,
    /// NODE replays its last WAL and is promoted, every other node follows it (no re-clone).
    Switchover {
        #[command(flatten)]
        common: Common,
        /// The standby to promote.
        #[arg(long)]
        to: String,
        /// Print the plan (steps, guards, undo) and touch nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Restart nodes (every node unless NODEs are named): standbys one at a time, each back
    /// and streaming before the next, then the primary, in place or (--rolling) through a
    /// switchover to a restarted standby and back. The order follows PostgreSQL's rule
    /// that a standby's max_connections, max_worker_processes, max_wal_senders,
    /// max_prepared_transactions and max_locks_per_transaction be at least the primary's.
    Restart {
        #[command(flatten)]
        common: Common,
        /// The primary through a switchover (writes pause only for it) instead of in place.
        #[arg(long)]
        rolling: bool,
        /// With --rolling: leave the primary role on the standby it moved to.
        #[arg(long, requires = "rolling")]
        no_switch_back: bool,
        /// Only the nodes whose settings wait for a restart (`status` lists them).
        #[arg(long)]
        pending: bool,
        /// Print the plan and touch nothing.
        #[arg(long)]
        dry_run: bool,
        /// The nodes to restart (default: every node).
        nodes: Vec<String>,
    },
    /// The primary is gone: fence it, promote the standby with the most WAL (or --to),
    /// point the others at it, and report how much WAL was lost.
    Failover {
        #[command(flatten)]
        common: Common,
        /// The standby to promote (refused when another standby has more WAL, unless --force).
        #[arg(long)]
        to: Option<String>,
        /// Override a refusal that a person can take responsibility for: stop a node that
        /// still accepts writes first, promote a standby behind another or outside the
        /// synchronous set, fail over past an unreachable primary with no sign of its death.
        #[arg(long)]
        force: bool,
        /// Print the plan (candidates, fencing, steps, guards, undo) and touch nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Bring a former primary or a diverged node back as a standby of the current primary
    /// (pg_rewind, or a fresh clone when rewinding cannot work).
    Rejoin {
        #[command(flatten)]
        common: Common,
        /// The node to bring back.
        node: String,
        /// Print the plan and touch nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Upgrade the cluster's PostgreSQL: `--to N` a major upgrade with pg_upgrade (checks
    /// first, every problem named; then a clean stop, pg_upgrade on the primary, the
    /// standbys cloned again from it; the old data directories kept, `--finish` removes
    /// them); `--minor` every node restarted onto the binaries the cluster file (pg_bin)
    /// or the layout names now, a new build of the same major (checked against each data
    /// directory's PG_VERSION), as a rolling restart.
    #[command(group(clap::ArgGroup::new("upgrade_kind").required(true)))]
    Upgrade {
        #[command(flatten)]
        common: Common,
        /// The new major (e.g. 16).
        #[arg(long, value_name = "MAJOR", value_parser = parse_major, group = "upgrade_kind")]
        to: Option<PgMajor>,
        /// A minor upgrade onto new binaries of the same major (a rolling restart).
        #[arg(long, group = "upgrade_kind")]
        minor: bool,
        /// --minor: restart the primary in place instead of through a switchover.
        #[arg(long, requires = "minor")]
        in_place: bool,
        /// --minor: leave the primary role on the standby it moved to.
        #[arg(long, requires = "minor", conflicts_with = "in_place")]
        no_switch_back: bool,
        /// After a major upgrade: remove the old data directories it kept, on every node
        /// that runs the new major (Debian: the old clusters, with pg_dropcluster; refused
        /// while a server runs on one).
        #[arg(long, group = "upgrade_kind")]
        finish: bool,
        /// pg_upgrade --link: hard links instead of a copy (fast, little disk; the old
        /// cluster must never be started again).
        #[arg(long, requires = "to")]
        link: bool,
        /// The new major's server binaries (on every host; local: default found like
        /// --pg-bin, among the installed majors; Debian's layout: default
        /// /usr/lib/postgresql/N/bin).
        #[arg(long, value_name = "DIR", requires = "to")]
        new_pg_bin: Option<PathBuf>,
        /// The new major's client tools, when not beside its server binaries.
        #[arg(long, value_name = "DIR", requires = "to")]
        new_pg_client_bin: Option<PathBuf>,
        /// Run the checks and print the plan; touch nothing.
        #[arg(long)]
        dry_run: bool,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Run the agent of one node of an `[ha]` cluster (long-running; `up` starts them in
    /// the background on local clusters): it owns its PostgreSQL, holds or races for the
    /// leader key in etcd, and fails over by itself.
    Agent {
        #[command(flatten)]
        common: Common,
        /// The node.
        #[arg(long, required_unless_present = "guard")]
        node: Option<String>,
        /// The agent runs on its node's own host (SSH and EC2 clusters: how `up` starts it
        /// there): it reaches its own node through this machine and no other.
        #[arg(long)]
        on_host: bool,
        /// Run as the agent's guard (internal: started by the agent itself).
        #[arg(long, hide = true, requires = "data_dir")]
        guard: bool,
        /// The data directory the guard protects (internal).
        #[arg(long, hide = true)]
        data_dir: Option<PathBuf>,
    },
    /// Keep a program running on a host without systemd (how pgrepl runs its agents and
    /// etcd members there): restarted when it exits, stopped with the supervisor (SIGTERM).
    #[command(hide = true)]
    Supervise {
        /// The pid file, locked while the supervisor runs.
        #[arg(long)]
        pid_file: PathBuf,
        /// Where the program's output and the supervisor's notes go.
        #[arg(long)]
        log: PathBuf,
        /// The program and its arguments.
        #[arg(last = true, required = true, num_args = 1..)]
        program: Vec<String>,
    },
    /// Agents observe and report only: no promotion, no restart (for maintenance, or to
    /// run switchover/failover/rejoin by hand).
    Pause {
        #[command(flatten)]
        common: Common,
    },
    /// Agents act again.
    Resume {
        #[command(flatten)]
        common: Common,
    },
    /// Connection strings for applications (writes and reads).
    Connstr {
        #[command(flatten)]
        common: Common,
    },
    /// Print the completion script of a shell, e.g. `pgrepl completions bash >
    /// /etc/bash_completion.d/pgrepl`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: CompletionShell,
    },
}

/// `render --haproxy`'s options.
#[derive(Debug, Args)]
pub struct HaproxyArgs {
    /// The read-write port (with --haproxy).
    #[arg(long, value_name = "PORT", default_value_t = 5000, requires = "haproxy", value_parser = clap::value_parser!(u16).range(1..))]
    pub rw_port: u16,
    /// The read-only port (with --haproxy).
    #[arg(long, value_name = "PORT", default_value_t = 5001, requires = "haproxy", value_parser = clap::value_parser!(u16).range(1..))]
    pub ro_port: u16,
    /// The IP address HAProxy listens on (with --haproxy; 0.0.0.0: every interface, only
    /// when asked).
    #[arg(long, value_name = "ADDRESS", default_value = "127.0.0.1", requires = "haproxy")]
    pub bind: String,
    /// Also serve HAProxy's stats page (read-only) on this port (with --haproxy; default: none).
    #[arg(long, value_name = "PORT", requires = "haproxy", value_parser = clap::value_parser!(u16).range(1..))]
    pub stats_port: Option<u16>,
    /// Write the configuration to FILE instead of stdout (with --haproxy; replaced in one
    /// rename, so a reading HAProxy never sees half of it).
    #[arg(short = 'o', long = "out-file", value_name = "FILE", requires = "haproxy")]
    pub out_file: Option<PathBuf>,
}

/// Shells `pgrepl completions` writes for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompletionShell {
    /// Bash.
    Bash,
    /// Zsh.
    Zsh,
    /// Fish.
    Fish,
}

impl From<CompletionShell> for clap_complete::Shell {
    fn from(s: CompletionShell) -> Self {
        match s {
            CompletionShell::Bash => clap_complete::Shell::Bash,
            CompletionShell::Zsh => clap_complete::Shell::Zsh,
            CompletionShell::Fish => clap_complete::Shell::Fish,
        }
    }
}
