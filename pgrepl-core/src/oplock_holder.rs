//! Who holds a cluster's operation lock, and the seam for a lock kept outside the hosts
//! (the consensus store's): below both [`crate::oplock`] and [`crate::store`], which
//! implements it.

use std::fmt;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Who holds the lock: written into the lock file and into each host's lock directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHolder {
    /// The operation (`failover`, `switchover`, `rejoin`, `up`, `destroy`, ...).
    pub operation: String,
    /// The admin machine's host name.
    pub admin_host: String,
    /// The OS user pgrepl runs as there.
    pub user: String,
    /// Its process id there.
    pub pid: u32,
    /// When it took the lock (Unix seconds, the admin machine's clock).
    pub since: u64,
    /// The host lease in seconds; `None` for the local lock alone (held while the process lives).
    pub lease_secs: Option<u64>,
    /// Unique per acquisition: only its holder renews or releases a host lock.
    pub token: String,
}

impl LockHolder {
    /// A record for `operation` by this process, with a fresh token.
    pub fn this_process(operation: &str, lease_secs: Option<u64>) -> Self {
        LockHolder {
            operation: operation.to_string(),
            admin_host: admin_host_name(),
            user: crate::machine::current_user().to_string(),
            pid: std::process::id(),
            since: unix_now(),
            lease_secs,
            token: new_token(),
        }
    }

    pub(crate) fn who(&self) -> String {
        format!("{} ({}@{}, pid {}) since {}", self.operation, self.user, self.admin_host, self.pid, fmt_utc(self.since))
    }
}

impl fmt::Display for LockHolder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.who())
    }
}

/// A lock kept outside the hosts that every admin machine sees (the consensus store's
/// operation key for `[ha]` clusters: [`crate::store::StoreLock`]). When a deployment has
/// one ([`crate::deploy::Deployment::with_shared_lock`]) it takes the place of the host locks.
#[async_trait::async_trait]
pub trait SharedLock: Send + Sync + fmt::Debug {
    /// Takes it for `holder` before `deadline`; [`Error::Locked`] naming the holder (or
    /// why it could not be taken) otherwise.
    async fn acquire(
        &self,
        cluster: &str,
        holder: &LockHolder,
        started: Instant,
        deadline: Instant,
    ) -> Result<Box<dyn HeldSharedLock>, Error>;
}

/// A [`SharedLock`] held (renewed in the background until released).
#[async_trait::async_trait]
pub trait HeldSharedLock: Send + Sync + fmt::Debug {
    /// Whether it is still held (renewed within its lease).
    fn check(&self, cluster: &str) -> Result<(), Error>;
    /// Releases it (this holder's only).
    async fn release(self: Box<Self>);
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub(crate) fn new_token() -> String {
    let mut b = [0u8; 12];
    getrandom::fill(&mut b).expect("the OS random source works");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub(crate) fn admin_host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown-host".into())
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn fmt_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}
