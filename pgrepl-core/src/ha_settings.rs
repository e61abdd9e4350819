//! The HA settings: the agents' timings and limits (the store's `config` key, first
//! written from the spec's `[ha]`). A module of its own so that the validated cluster
//! holds them without depending on the store.

use serde::{Deserialize, Serialize};

/// The HA settings (the `config` key; first written from the spec's `[ha]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaSettings {
    /// The leader lease, in milliseconds.
    pub ttl_ms: u64,
    /// How often each agent runs its loop when nothing wakes it, in milliseconds.
    pub loop_wait_ms: u64,
    /// A primary stops accepting writes this long before its lease could run out (on its
    /// own monotonic clock), in milliseconds.
    pub safety_margin_ms: u64,
    /// A standby further behind than this (bytes) may not take over.
    pub maximum_lag_on_failover: u64,
    /// Agents observe and report, and change nothing.
    #[serde(default)]
    pub paused: bool,
}

impl Default for HaSettings {
    fn default() -> HaSettings {
        HaSettings { ttl_ms: 3000, loop_wait_ms: 1000, safety_margin_ms: 1000, maximum_lag_on_failover: 1 << 20, paused: false }
    }
}

impl HaSettings {
    /// The lease.
    pub fn ttl(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.ttl_ms)
    }

    /// The loop's period.
    pub fn loop_wait(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.loop_wait_ms)
    }

    /// How long after its last successful renewal (counted from when the renewal was
    /// sent) a primary may still accept writes.
    pub fn write_deadline(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.ttl_ms.saturating_sub(self.safety_margin_ms))
    }

    /// What is wrong with these settings (empty: nothing): a renewal must fit several
    /// times in the lease, and the margin must leave time to renew.
    pub fn problems(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.ttl_ms < 1000 {
            v.push(format!("ttl: {} ms is too short (at least 1 s)", self.ttl_ms));
        }
        if self.loop_wait_ms == 0 || self.loop_wait_ms * 2 > self.ttl_ms {
            v.push(format!("loop_wait: {} ms must be more than 0 and at most half the ttl ({} ms)", self.loop_wait_ms, self.ttl_ms));
        }
        if self.safety_margin_ms == 0 || self.safety_margin_ms + self.loop_wait_ms > self.ttl_ms {
            v.push(format!(
                "safety_margin: {} ms must be more than 0 and leave at least one loop ({} ms) within the ttl ({} ms)",
                self.safety_margin_ms, self.loop_wait_ms, self.ttl_ms
            ));
        }
        v
    }
}
