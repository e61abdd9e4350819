//! # pgrepl-ssh
//!
//! An SSH [`Transport`](pgrepl_core::transport::Transport) for pgrepl: [`SshTransport`]
//! runs commands and writes and reads files on a remote host over one reused SSH session
//! (libssh2 through the `ssh2` crate), for deploying PostgreSQL replication to hosts
//! reached by SSH.
//!
//! ```no_run
//! use pgrepl_core::transport::{Command, TransportExt};
//! use pgrepl_ssh::{HostKeyPolicy, SshAuth, SshConfig, SshTransport};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let config = SshConfig::builder("db2.example.net")
//!     .with_user("admin") // commands for other users go through `sudo -n`
//!     .with_auth(SshAuth::Agent)
//!     .with_host_key_policy(HostKeyPolicy::Strict) // the default
//!     .build()?;
//! let db2 = SshTransport::connect(config).await?;
//! let out = db2.run(&Command::new("id").args(["-un"]).user("postgres")).await?;
//! assert_eq!(out.stdout.trim(), "postgres");
//! # Ok(()) }
//! ```
//!
//! Safety properties:
//! - host keys are verified against a known_hosts file; an unknown key is refused unless
//!   [`HostKeyPolicy::AcceptNew`] is chosen, a changed key always;
//! - only key-file and agent authentication (no passwords anywhere);
//! - argv is shell-quoted word by word, secrets travel on stdin only, and `Debug` output
//!   holds no secrets;
//! - every wait is bounded (connect timeout, command time limits enforced remotely and
//!   locally), and a command that may have started is never run a second time.
//!
//! Modules: `config` ([`SshConfig`], [`SshAuth`], [`HostKeyPolicy`]), `transport`
//! ([`SshTransport`]); internally `command` (the remote command line), `shell` (the framed
//! remote shell every command runs in), `session` (the blocking libssh2 side) and
//! `known_hosts`.

#![warn(missing_docs)]

mod command;
mod config;
mod connector;
mod known_hosts;
mod session;
mod shell;
mod transport;

pub use config::{ConfigError, DEFAULT_CONNECT_TIMEOUT, DEFAULT_PORT, HostKeyPolicy, SshAuth, SshConfig, SshConfigBuilder};
pub use connector::{SshBackend, SshConnector, SshOptions, open};
pub use session::CONNECT_RETRY_DELAYS;
pub use transport::SshTransport;
