//! `/dev/watchdog` as an extra where the machine has one: the kernel resets the machine
//! when nobody writes to the open device for its timeout, which covers a guard that hangs
//! too. Plain writes only (no ioctl): a write is a keepalive, `V` then close stands it
//! down (the "magic close"; a close without it leaves it running, so a guard that dies
//! while relying on it resets the machine).
//!
//! The timeout is read from sysfs (`/sys/class/watchdog/<name>/timeout`, seconds; the
//! legacy `/dev/watchdog` is `watchdog0` there). The watchdog is relied upon only for an
//! `arm` whose deadline is at least that timeout: it must fire before PostgreSQL may no
//! longer accept writes. For a shorter deadline it is not used (stood down if it ran),
//! and [`Watchdog::arm`] says why.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The kernel's sysfs class directory of watchdogs.
const SYSFS_CLASS: &str = "/sys/class/watchdog";

/// A watchdog device that could not be driven.
#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    /// The device or its sysfs entry could not be read, opened or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The sysfs timeout is not a positive number of seconds.
    #[error("{path}: {text:?} is not a timeout in seconds")]
    BadTimeout {
        /// The sysfs file.
        path: PathBuf,
        /// What it holds.
        text: String,
    },
}

/// Whether an `arm` can rely on the watchdog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchdogUse {
    /// Kept alive: it resets the machine `timeout` after this keepalive, no later than the
    /// deadline.
    Relied {
        /// Its timeout.
        timeout: Duration,
    },
    /// Not used for this deadline (and stood down if it ran).
    NotUsed {
        /// Why.
        reason: String,
    },
}

/// A watchdog device (see the [module](self) documentation).
#[derive(Debug)]
pub struct Watchdog {
    path: PathBuf,
    timeout: Duration,
    /// The open device while it runs.
    device: Option<File>,
}

impl Watchdog {
    /// The watchdog at `path` (e.g. `/dev/watchdog`) with its timeout from sysfs. The
    /// device is not opened yet (opening starts it): the first `arm` that can rely on it
    /// does.
    pub fn open(path: impl AsRef<Path>) -> Result<Watchdog, WatchdogError> {
        Watchdog::open_with_sysfs(path, SYSFS_CLASS)
    }

    /// [`Watchdog::open`] with another sysfs class directory (tests).
    pub fn open_with_sysfs(path: impl AsRef<Path>, sysfs_class: impl AsRef<Path>) -> Result<Watchdog, WatchdogError> {
        let path = path.as_ref().to_path_buf();
        std::fs::metadata(&path).map_err(|source| WatchdogError::Io { path: path.clone(), source })?;
        let name = match path.file_name().and_then(|n| n.to_str()) {
            Some("watchdog") | None => "watchdog0".to_string(),
            Some(n) => n.to_string(),
        };
        let file = sysfs_class.as_ref().join(name).join("timeout");
        let text = std::fs::read_to_string(&file).map_err(|source| WatchdogError::Io { path: file.clone(), source })?;
        let secs = match text.trim().parse::<u64>() {
            Ok(s) if s > 0 => s,
            _ => return Err(WatchdogError::BadTimeout { path: file, text: text.trim().to_string() }),
        };
        Ok(Watchdog { path, timeout: Duration::from_secs(secs), device: None })
    }

    /// The device's timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether the device is open (running).
    pub fn is_running(&self) -> bool {
        self.device.is_some()
    }

    /// On an `arm` whose deadline is `deadline` from now: a keepalive if the watchdog can
    /// be relied upon (its timeout is at most the deadline; the device is opened, which
    /// starts it, if it was not), else it is stood down and the reason returned.
    pub fn arm(&mut self, deadline: Duration) -> Result<WatchdogUse, WatchdogError> {
        if self.timeout > deadline {
            self.disarm()?;
            return Ok(WatchdogUse::NotUsed {
                reason: format!(
                    "{}: its timeout ({} s) is longer than the write deadline ({} ms): it would fire too late",
                    self.path.display(),
                    self.timeout.as_secs(),
                    deadline.as_millis()
                ),
            });
        }
        if self.device.is_none() {
            let f = std::fs::OpenOptions::new().append(true).open(&self.path).map_err(|source| self.io(source))?;
            self.device = Some(f);
        }
        self.write(b"1")?;
        Ok(WatchdogUse::Relied { timeout: self.timeout })
    }

    /// Stands the watchdog down if it runs (writes `V`, then closes the device).
    pub fn disarm(&mut self) -> Result<(), WatchdogError> {
        if self.device.is_some() {
            let written = self.write(b"V");
            self.device = None;
            written?;
        }
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), WatchdogError> {
        let r = match self.device.as_mut() {
            Some(f) => f.write_all(bytes).and_then(|()| f.flush()),
            None => Ok(()),
        };
        r.map_err(|source| self.io(source))
    }

    fn io(&self, source: io::Error) -> WatchdogError {
        WatchdogError::Io { path: self.path.clone(), source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A regular file stands in for the device, a temp dir for sysfs.
    fn fake(name: &str, timeout: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let dev = d.path().join(name);
        std::fs::write(&dev, "").unwrap();
        let class = d.path().join("class");
        let sysname = if name == "watchdog" { "watchdog0" } else { name };
        std::fs::create_dir_all(class.join(sysname)).unwrap();
        std::fs::write(class.join(sysname).join("timeout"), timeout).unwrap();
        (d, dev, class)
    }

    #[test]
    fn keepalive_on_each_arm_and_magic_close_on_disarm() {
        let (_d, dev, class) = fake("watchdog", "2\n");
        let mut w = Watchdog::open_with_sysfs(&dev, &class).unwrap();
        assert_eq!(w.timeout(), Duration::from_secs(2));
        assert!(!w.is_running(), "not started before the first arm");
        assert_eq!(w.arm(Duration::from_millis(2500)).unwrap(), WatchdogUse::Relied { timeout: Duration::from_secs(2) });
        assert_eq!(w.arm(Duration::from_secs(2)).unwrap(), WatchdogUse::Relied { timeout: Duration::from_secs(2) });
        assert!(w.is_running());
        assert_eq!(std::fs::read_to_string(&dev).unwrap(), "11");
        w.disarm().unwrap();
        assert!(!w.is_running());
        w.disarm().unwrap();
        assert_eq!(std::fs::read_to_string(&dev).unwrap(), "11V", "V once, then closed");
    }

    #[test]
    fn not_used_when_its_timeout_exceeds_the_deadline() {
        let (_d, dev, class) = fake("watchdog1", "60");
        let mut w = Watchdog::open_with_sysfs(&dev, &class).unwrap();
        let r = w.arm(Duration::from_secs(3)).unwrap();
        assert!(matches!(&r, WatchdogUse::NotUsed { reason } if reason.contains("60 s") && reason.contains("3000 ms")), "{r:?}");
        assert!(!w.is_running());
        assert_eq!(std::fs::read_to_string(&dev).unwrap(), "", "never opened, never written");

        // Running, then a deadline too short for it: stood down.
        let (_d, dev, class) = fake("watchdog0", "5");
        let mut w = Watchdog::open_with_sysfs(&dev, &class).unwrap();
        assert!(matches!(w.arm(Duration::from_secs(6)).unwrap(), WatchdogUse::Relied { .. }));
        assert!(matches!(w.arm(Duration::from_secs(4)).unwrap(), WatchdogUse::NotUsed { .. }));
        assert!(!w.is_running());
        assert_eq!(std::fs::read_to_string(&dev).unwrap(), "1V");
    }

    #[test]
    fn a_missing_device_or_timeout_is_an_error() {
        let (d, dev, class) = fake("watchdog", "abc");
        assert!(matches!(Watchdog::open_with_sysfs(&dev, &class), Err(WatchdogError::BadTimeout { .. })));
        std::fs::write(class.join("watchdog0/timeout"), "0").unwrap();
        assert!(matches!(Watchdog::open_with_sysfs(&dev, &class), Err(WatchdogError::BadTimeout { .. })));
        assert!(matches!(Watchdog::open_with_sysfs(d.path().join("nope"), &class), Err(WatchdogError::Io { .. })));
        assert!(matches!(Watchdog::open_with_sysfs(&dev, d.path().join("nosys")), Err(WatchdogError::Io { .. })));
        // This machine has none: /dev/watchdog is absent here.
        if !Path::new("/dev/watchdog").exists() {
            assert!(matches!(Watchdog::open("/dev/watchdog"), Err(WatchdogError::Io { .. })));
        }
    }
}
