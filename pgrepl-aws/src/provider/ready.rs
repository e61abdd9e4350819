//! Waiting until the instances run and their SSH ports accept connections, within the
//! ready timeout.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use aws_sdk_ec2::types::Instance;
use pgrepl_core::provider::Host;
use tokio::task::JoinSet;

use super::{Ec2Provider, MAX_POLL_INTERVAL, SSH_PROBE_TIMEOUT};
use crate::error::ProviderError;
use crate::mapping;
use crate::wait::Backoff;

impl Ec2Provider {
    /// Polls until every instance runs, with backoff, within the ready timeout.
    pub(super) async fn wait_running(&self, ids: &[(String, String)]) -> Result<Vec<Instance>, ProviderError> {
        let all: Vec<String> = ids.iter().map(|(_, id)| id.clone()).collect();
        for (node, _) in ids {
            self.started(node, "wait until running");
        }
        let mut backoff = Backoff::new(self.poll_interval, MAX_POLL_INTERVAL, self.ready_timeout);
        let mut reported: BTreeSet<String> = BTreeSet::new();
        loop {
            let seen = self.instances_by_id(&all).await?;
            let mut waiting = Vec::new();
            for (node, id) in ids {
                match seen.iter().find(|i| i.instance_id() == Some(id)) {
                    Some(i) => match mapping::instance_state(i) {
                        "running" => {
                            if reported.insert(id.clone()) {
                                self.finished(node, "wait until running", "running");
                            }
                        }
                        s @ ("shutting-down" | "terminated") => {
                            let why = i.state_reason().and_then(|r| r.message()).unwrap_or("no reason given");
                            return Err(ProviderError::Invalid {
                                resource: format!("instance {id} of node {node}"),
                                problem: format!("it is {s} instead of starting ({why})"),
                            });
                        }
                        s => waiting.push(format!("{node} ({id}) {s}")),
                    },
                    None => waiting.push(format!("{node} ({id}) not listed yet")),
                }
            }
            if waiting.is_empty() {
                return Ok(seen);
            }
            tracing::info!(waiting = %waiting.join(", "), elapsed_s = backoff.elapsed().as_secs(), "waiting for instances to run");
            if !backoff.pause().await {
                return Err(ProviderError::Timeout {
                    waiting_for: "instances to run".into(),
                    waited: backoff.elapsed(),
                    last: waiting.join(", "),
                });
            }
        }
    }

    /// Polls each host's SSH port (admin address, else address) until it accepts a TCP
    /// connection, concurrently, within `timeout` (what is left of the ready timeout).
    pub(super) async fn wait_ssh(&self, hosts: &[Host], timeout: Duration) -> Result<(), ProviderError> {
        let mut set = JoinSet::new();
        for h in hosts {
            let Some(addr) = h.admin_address.clone().or_else(|| h.address.clone()) else {
                return Err(ProviderError::Invalid {
                    resource: format!("node {}", h.node),
                    problem: "its instance has no address to reach SSH at".into(),
                });
            };
            let target = format_target(&addr, self.settings.ssh_port);
            let node = h.node.clone();
            self.started(&node, "wait for SSH");
            let interval = self.poll_interval;
            set.spawn(async move {
                let r = probe_until_open(&target, interval, timeout).await;
                (node, target, r)
            });
        }
        let mut first_err = None;
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok((node, target, Ok(()))) => self.finished(&node, "wait for SSH", &format!("{target} answers")),
                Ok((node, target, Err((waited, last)))) => {
                    self.finished(&node, "wait for SSH", "timed out");
                    first_err.get_or_insert(ProviderError::Timeout {
                        waiting_for: format!("SSH of node {node} at {target}"),
                        waited,
                        last,
                    });
                }
                Err(e) => {
                    first_err.get_or_insert(ProviderError::Invalid {
                        resource: "SSH wait".into(),
                        problem: format!("the probe task failed: {e}"),
                    });
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// `host:port`, bracketing IPv6 addresses.
fn format_target(addr: &str, port: u16) -> String {
    match addr.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => SocketAddr::from((v6, port)).to_string(),
        _ => format!("{addr}:{port}"),
    }
}

/// Connects to `target` until a TCP connection succeeds; on timeout, how long it waited
/// and the last error.
async fn probe_until_open(target: &str, interval: Duration, timeout: Duration) -> Result<(), (Duration, String)> {
    let mut backoff = Backoff::new(interval, MAX_POLL_INTERVAL, timeout);
    loop {
        let limit = SSH_PROBE_TIMEOUT.min(backoff.remaining().max(Duration::from_millis(100)));
        let last = match tokio::time::timeout(limit, tokio::net::TcpStream::connect(target)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {}ms", limit.as_millis()),
        };
        tracing::debug!(target, last, "SSH port not open yet");
        if !backoff.pause().await {
            return Err((backoff.elapsed(), last));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_bracket_ipv6() {
        assert_eq!(format_target("10.0.0.1", 22), "10.0.0.1:22");
        assert_eq!(format_target("2001:db8::1", 22), "[2001:db8::1]:22");
        assert_eq!(format_target("host.example", 2222), "host.example:2222");
    }
}
