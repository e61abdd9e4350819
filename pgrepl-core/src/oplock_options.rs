//! The operation lock's options and defaults, below both [`crate::deploy`] (a
//! deployment carries its [`LockOptions`]) and [`crate::oplock`] (which takes the lock
//! with them and re-exports all of this).

use std::time::Duration;

/// How long an operation waits for the lock by default.
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(30);
/// How long a host lock lives without renewal.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);
/// How often the holder renews its host locks.
pub const DEFAULT_RENEW_EVERY: Duration = Duration::from_secs(15);
/// After this long the holder stops renewing (its host locks then expire).
pub const DEFAULT_MAX_HOLD: Duration = Duration::from_secs(24 * 3600);

/// Where host locks live by default: `<HOST_LOCK_DIR>/<cluster>/<node>/oplock`.
pub const HOST_LOCK_DIR: &str = "/var/lib/pgrepl/.oplock";

/// How the operation lock waits and how long its host leases live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockOptions {
    /// How long an operation waits for the lock before failing with [`Error::Locked`](crate::error::Error::Locked).
    pub wait: Duration,
    /// How long a host lock lives without renewal (whole seconds, at least 1).
    pub lease: Duration,
    /// How often the holder renews its host locks (well below `lease`).
    pub renew_every: Duration,
    /// The longest an operation keeps renewing (a bound on the renewal loop).
    pub max_hold: Duration,
    /// The directory on each host under which the lock lives ([`HOST_LOCK_DIR`]).
    pub host_dir: String,
}

impl Default for LockOptions {
    fn default() -> Self {
        LockOptions {
            wait: DEFAULT_LOCK_WAIT,
            lease: DEFAULT_LEASE,
            renew_every: DEFAULT_RENEW_EVERY,
            max_hold: DEFAULT_MAX_HOLD,
            host_dir: HOST_LOCK_DIR.to_string(),
        }
    }
}

impl LockOptions {
    /// The lease in whole seconds, at least 1.
    pub(crate) fn lease_secs(&self) -> u64 {
        self.lease.as_secs().max(1)
    }
}
