//! What Linux's /proc says about a process: its state, parent and start time, and whether
//! it is the postmaster of a given data directory.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The fields of `/proc/<pid>/stat` the fence needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stat {
    /// `R`, `S`, `D`, `T`, `Z`, ...
    pub state: char,
    pub ppid: i32,
    /// Clock ticks after boot: with the pid, names one process across pid reuse.
    pub starttime: u64,
}

impl Stat {
    /// Exited (a zombie waiting for its parent, or being reaped).
    pub fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

fn proc_path(pid: i32, what: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{what}"))
}

/// `None` when the fields are not there (the comm is skipped: it may hold spaces and
/// parentheses, so the fields start after its last `)`).
pub(crate) fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // Field 3 (state) is fields[0]; 4 (ppid) fields[1]; 22 (starttime) fields[19].
    Some(Stat { state: fields.first()?.chars().next()?, ppid: fields.get(1)?.parse().ok()?, starttime: fields.get(19)?.parse().ok()? })
}

/// The process's stat; `None` when there is no such process.
pub(crate) fn stat(pid: i32) -> io::Result<Option<Stat>> {
    match std::fs::read_to_string(proc_path(pid, "stat")) {
        Ok(text) => parse_stat(&text).map(Some).ok_or_else(|| io::Error::other(format!("/proc/{pid}/stat: unexpected format"))),
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(3) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether process `pid` with start time `starttime` still runs (not gone, not a zombie,
/// and not another process that got the same pid).
pub(crate) fn still_running(pid: i32, starttime: u64) -> io::Result<bool> {
    Ok(stat(pid)?.is_some_and(|s| s.starttime == starttime && !s.is_dead()))
}

/// The live processes whose parent is `ppid`.
pub(crate) fn children(ppid: i32) -> io::Result<Vec<(i32, Stat)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        // A process that exits meanwhile, or that we may not read, is skipped.
        if let Ok(Some(s)) = stat(pid) {
            if s.ppid == ppid && !s.is_dead() {
                found.push((pid, s));
            }
        }
    }
    Ok(found)
}

/// What process `pid` is, next to a data directory.
#[derive(Debug)]
pub(crate) enum Identity {
    /// The postmaster of that data directory.
    Postmaster(Stat),
    /// No such process (or a zombie).
    Gone,
    /// Some other process: why it is not that postmaster.
    Other(String),
}

/// Whether `pid` is a postgres postmaster whose working directory is `data_dir` (the
/// postmaster chdirs into its data directory; the same directory by device and inode, so
/// symlinks and bind mounts do not matter), whose executable is named `postgres` (or
/// `postmaster`), and whose command line is not a child's process title
/// (`postgres: checkpointer`, ...). Errors: /proc could not be read (permissions).
pub(crate) fn identify(pid: i32, data_dir: &Path) -> io::Result<Identity> {
    let gone = |e: &io::Error| e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(3);
    let Some(st) = stat(pid)? else { return Ok(Identity::Gone) };
    if st.is_dead() {
        return Ok(Identity::Gone);
    }
    let exe = match std::fs::read_link(proc_path(pid, "exe")) {
        Ok(p) => p,
        Err(e) if gone(&e) => return Ok(Identity::Gone),
        Err(e) => return Err(io::Error::new(e.kind(), format!("/proc/{pid}/exe: {e}"))),
    };
    let exe_name = exe.file_name().map(|n| n.to_string_lossy().trim_end_matches(" (deleted)").to_string()).unwrap_or_default();
    if exe_name != "postgres" && exe_name != "postmaster" {
        return Ok(Identity::Other(format!("its executable is {}, not postgres", exe.display())));
    }
    let cmdline = match std::fs::read(proc_path(pid, "cmdline")) {
        Ok(c) => c,
        Err(e) if gone(&e) => return Ok(Identity::Gone),
        Err(e) => return Err(io::Error::new(e.kind(), format!("/proc/{pid}/cmdline: {e}"))),
    };
    let argv0 = String::from_utf8_lossy(cmdline.split(|b| *b == 0).next().unwrap_or_default()).to_string();
    if argv0.starts_with("postgres:") {
        return Ok(Identity::Other(format!("it is a server child process ({}), not a postmaster", argv0.trim_end())));
    }
    let want = std::fs::metadata(data_dir).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", data_dir.display())))?;
    let cwd = match std::fs::metadata(proc_path(pid, "cwd")) {
        Ok(m) => m,
        Err(e) if gone(&e) => return Ok(Identity::Gone),
        Err(e) => return Err(io::Error::new(e.kind(), format!("/proc/{pid}/cwd: {e}"))),
    };
    if (cwd.dev(), cwd.ino()) != (want.dev(), want.ino()) {
        let shown = std::fs::read_link(proc_path(pid, "cwd")).map(|p| p.display().to_string()).unwrap_or_else(|_| "elsewhere".into());
        return Ok(Identity::Other(format!("it is a postgres whose data directory is {shown}, not {}", data_dir.display())));
    }
    // Read again: the same process all along (not one that exited and whose pid was reused
    // while the checks ran).
    match stat(pid)? {
        Some(again) if again.starttime == st.starttime && !again.is_dead() => Ok(Identity::Postmaster(st)),
        _ => Ok(Identity::Gone),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_a_comm_with_spaces_and_parentheses() {
        let line = "4242 (postgres: a (b) c) S 17 4242 4242 0 -1 4194560 12 0 0 0 0 0 0 0 20 0 1 0 987654 1000 10 18446744073709551615";
        assert_eq!(parse_stat(line), Some(Stat { state: 'S', ppid: 17, starttime: 987654 }));
        assert_eq!(parse_stat("1 (x) S 0"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_is_running_and_not_a_postmaster() {
        let me = rustix::process::getpid().as_raw_nonzero().get();
        let st = stat(me).unwrap().unwrap();
        assert!(still_running(me, st.starttime).unwrap());
        assert!(!still_running(me, st.starttime + 1).unwrap(), "another start time is another process");
        let dir = std::env::current_dir().unwrap();
        assert!(matches!(identify(me, &dir).unwrap(), Identity::Other(r) if r.contains("not postgres")));
    }
}
