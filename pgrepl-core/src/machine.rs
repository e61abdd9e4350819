//! This machine, below every module that needs it: the [`LocalTransport`] (commands and
//! files here, used by the local provider, by the deployment to keep its state
//! directory, and by the operation lock), who pgrepl runs as, the default work
//! directory, and whether a port answers. [`crate::local`] re-exports all of it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::AsyncWriteExt;

use crate::transport::{Command, Output, Transport, TransportError};

/// Runs commands on this machine.
#[derive(Debug, Clone, Default)]
pub struct LocalTransport;

struct Me {
    uid: u32,
    name: String,
}

fn me() -> &'static Me {
    static ME: OnceLock<Me> = OnceLock::new();
    ME.get_or_init(|| {
        let uid = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(2)).and_then(|u| u.parse().ok()))
            .unwrap_or(u32::MAX);
        let name = std::process::Command::new("id")
            .arg("-un")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|s| !s.is_empty())
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "unknown".into());
        Me { uid, name }
    })
}

/// Whether pgrepl runs as root.
pub fn running_as_root() -> bool {
    me().uid == 0
}

/// The user pgrepl runs as.
pub fn current_user() -> &'static str {
    &me().name
}

fn lookup_ids(user: &str) -> Result<(u32, u32), TransportError> {
    // Asked once per user and process (`id` is a process per question).
    static CACHE: std::sync::Mutex<Vec<(String, (u32, u32))>> = std::sync::Mutex::new(Vec::new());
    if let Some((_, ids)) =
        CACHE.lock().map_err(|_| TransportError::Other("user id cache poisoned".into()))?.iter().find(|(u, _)| u == user)
    {
        return Ok(*ids);
    }
    let ids = lookup_ids_uncached(user)?;
    if let Ok(mut c) = CACHE.lock() {
        c.push((user.to_string(), ids));
    }
    Ok(ids)
}

fn lookup_ids_uncached(user: &str) -> Result<(u32, u32), TransportError> {
    let id = |flag: &str| -> Result<u32, TransportError> {
        let out = std::process::Command::new("id").args([flag, user]).output()?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| TransportError::Other(format!("no OS user \"{user}\" on this machine")))
    };
    Ok((id("-u")?, id("-g")?))
}

#[async_trait]
impl Transport for LocalTransport {
    fn host(&self) -> &str {
        "localhost"
    }

    async fn exec(&self, cmd: &Command) -> Result<Output, TransportError> {
        tracing::debug!(host = "localhost", user = cmd.user.as_deref().unwrap_or(current_user()), program = %cmd.program, args = ?cmd.args, "run");
        let as_other = cmd.user.as_deref().filter(|u| *u != current_user());
        let mut c = match as_other {
            Some(u) if running_as_root() => {
                let mut c = tokio::process::Command::new("runuser");
                c.args(["-u", u, "--", &cmd.program]);
                c
            }
            Some(u) => {
                return Err(TransportError::Other(format!(
                    "cannot run {} as OS user \"{u}\": pgrepl runs as \"{}\", not root",
                    cmd.program,
                    current_user()
                )));
            }
            None => tokio::process::Command::new(&cmd.program),
        };
        c.args(&cmd.args)
            .env_clear()
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LC_ALL", "C")
            .envs(cmd.env.iter().map(|(k, v)| (k, v)))
            .current_dir("/")
            .stdin(if cmd.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = c.spawn().map_err(|e| TransportError::Other(format!("could not start {}: {e}", cmd.program)))?;
        let pid = child.id();
        // Stdin is written while the output is read (a child that echoes its input would
        // otherwise fill its stdout pipe and never read the rest), all within the limit.
        let feed = {
            let stdin = child.stdin.take();
            let bytes = cmd.stdin.clone();
            async move {
                if let (Some(bytes), Some(mut stdin)) = (bytes, stdin) {
                    // A child that exits early closes its stdin; that is reported by its status.
                    let _ = stdin.write_all(&bytes).await;
                    drop(stdin);
                }
            }
        };
        let run = async { tokio::join!(feed, child.wait_with_output()).1 };
        match tokio::time::timeout(cmd.timeout, run).await {
            Ok(out) => {
                let out = out?;
                Ok(Output {
                    status: out.status.code().unwrap_or(-1),
                    stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                    stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                })
            }
            Err(_) => {
                // Kill the whole process group we started (runuser and its child).
                if let Some(pid) = pid {
                    let _ = tokio::process::Command::new("kill").args(["-KILL", "--", &format!("-{pid}")]).status().await;
                }
                Err(TransportError::Timeout { program: cmd.program.clone(), after: cmd.timeout })
            }
        }
    }

    /// Writes through a new temporary file in the same directory (`O_CREAT|O_EXCL|O_NOFOLLOW`:
    /// never through a symbolic link), sets owner and mode on the open descriptor
    /// (`fchown`, `fchmod`: never on a path someone could swap), then renames it over the
    /// target within that directory (a symbolic link at the target is replaced, not
    /// followed). Given to another user, the file must land in the directory as named, or in
    /// one that user owns: a directory reached through a symbolic link into a place the
    /// user cannot write is refused, so no file of theirs is ever planted there.
    async fn write_file(&self, path: &str, contents: &[u8], mode: u32, owner: Option<&str>) -> Result<(), TransportError> {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
        /// `O_NOFOLLOW` on Linux.
        const O_NOFOLLOW: i32 = 0o400000;
        let path = PathBuf::from(path);
        let dir = path.parent().ok_or_else(|| TransportError::Other(format!("{}: no parent directory", path.display())))?.to_path_buf();
        let name = path.file_name().ok_or_else(|| TransportError::Other(format!("{}: not a file path", path.display())))?.to_os_string();
        let ids = owner.map(lookup_ids).transpose()?.filter(|(uid, _)| *uid != me().uid);
        let owner = owner.unwrap_or_default().to_string();
        let contents = contents.to_vec();
        tokio::task::spawn_blocking(move || -> Result<(), TransportError> {
            // A name no other writer uses: this process, a counter, and the clock.
            static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
            let tmp = dir.join(format!(".pgrepl-tmp-{}-{seq}-{nanos}", std::process::id()));
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode & 0o600).custom_flags(O_NOFOLLOW).open(&tmp)?;
            // Where the file really is (open follows symbolic links in the directory part).
            let real = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd()))?;
            let result = (|| -> Result<(), TransportError> {
                let real_dir = real.parent().unwrap_or(&dir).to_path_buf();
                if let Some((uid, gid)) = ids {
                    if real_dir != dir && std::fs::symlink_metadata(&real_dir)?.uid() != uid {
                        return Err(TransportError::Other(format!(
                            "refusing to write {} for OS user \"{owner}\": {} leads through a symbolic link to {}, a directory \"{owner}\" does not own",
                            path.display(),
                            dir.display(),
                            real_dir.display()
                        )));
                    }
                    f.write_all(&contents)?;
                    f.sync_all()?;
                    std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
                } else {
                    f.write_all(&contents)?;
                    f.sync_all()?;
                }
                // After fchown, which clears set-id bits.
                f.set_permissions(std::fs::Permissions::from_mode(mode))?;
                std::fs::rename(&real, real_dir.join(&name))?;
                Ok(())
            })();
            if result.is_err() {
                let _ = std::fs::remove_file(&real);
            }
            result
        })
        .await
        .map_err(|e| TransportError::Other(e.to_string()))?
    }

    /// Without a process where it can: a regular file (opened with `O_NOFOLLOW`) that
    /// `user` owns or everyone may read is read directly; anything else (a symbolic link,
    /// a file of another owner) by `cat` run as `user`.
    async fn read_file_as(&self, path: &str, user: &str) -> Result<Option<Vec<u8>>, TransportError> {
        if user == current_user() {
            return self.read_file(path).await;
        }
        if running_as_root() {
            let (uid, _) = lookup_ids(user)?;
            let p = path.to_string();
            let direct = tokio::task::spawn_blocking(move || -> std::io::Result<Option<Option<Vec<u8>>>> {
                use std::io::Read;
                use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
                const O_NOFOLLOW: i32 = 0o400000;
                let mut f = match std::fs::OpenOptions::new().read(true).custom_flags(O_NOFOLLOW).open(&p) {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Some(None)),
                    Err(_) => return Ok(None),
                };
                let m = f.metadata()?;
                if !m.is_file() || (m.uid() != uid && m.mode() & 0o004 == 0) {
                    return Ok(None);
                }
                let mut b = Vec::new();
                f.read_to_end(&mut b)?;
                Ok(Some(Some(b)))
            })
            .await
            .map_err(|e| TransportError::Other(format!("read {path}: {e}")))??;
            if let Some(r) = direct {
                return Ok(r);
            }
        }
        let c = Command::new("sh")
            .args(["-c", "[ -e \"$1\" ] || [ -L \"$1\" ] || exit 99; exec cat -- \"$1\"", "pgrepl-read", path])
            .user(user);
        crate::transport::read_output_as_file(self.exec(&c).await?, path, user)
    }

    async fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>, TransportError> {
        match tokio::fs::read(path).await {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// The default work directory of a cluster: `/var/lib/pgrepl/<name>` as root, else
/// `$XDG_DATA_HOME/pgrepl/<name>` or `~/.local/share/pgrepl/<name>`.
pub fn default_work_dir(cluster_name: &str) -> PathBuf {
    if running_as_root() {
        return PathBuf::from("/var/lib/pgrepl").join(cluster_name);
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("pgrepl").join(cluster_name)
}

/// Whether something listens on `address:port` (a TCP connect within 300 ms).
pub async fn port_in_use(address: &str, port: u16) -> bool {
    let addr = if address.contains(':') { format!("[{address}]:{port}") } else { format!("{address}:{port}") };
    matches!(tokio::time::timeout(Duration::from_millis(300), tokio::net::TcpStream::connect(addr)).await, Ok(Ok(_)))
}
