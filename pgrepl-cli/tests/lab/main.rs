//! Tests against real parts: real PostgreSQL servers of several majors (installed by
//! `scripts/lab/install.sh`), real sshd, a real EC2 API (moto). A missing lab part makes
//! a test fail with the script to run; nothing here skips itself.
//!
//! Every server these tests start listens on 127.0.0.1 (or inside the network
//! namespaces of `scripts/lab/netns.sh`) and is stopped by the test that started it.

mod auto;
mod auto_day2;
#[cfg(feature = "aws")]
mod aws_handoff;
mod backups;
mod backups_common;
mod backups_ha;
mod backups_install;
mod common;
mod day2;
mod ha;
mod ha_hosts;
mod haproxy;
mod local_e2e;
mod oplock;
mod pg_accepts;
mod pgbackrest;
mod pgbackrest_ssh;
mod routing;
mod ssh_e2e;
mod systemd_hosts;
mod transports;
mod upgrade;
