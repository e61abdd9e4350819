//! The agent's look at its own server: one persistent tokio-postgres session over the
//! local socket (peer authentication as the cluster's superuser), re-established when
//! lost; the probe through the node's transport only when the server does not answer.

use std::time::Duration;

use tokio::sync::Notify;

use crate::node_handle::NodeHandle;
use crate::observe::probe::{probe_node, probe_sql};
use crate::observe::{Observed, ServerState, apply_probe_rows};
use crate::version::Capabilities;

/// How long connecting to its own server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long the probe query may take on the session.
const QUERY_TIMEOUT: Duration = Duration::from_secs(3);

/// The session with the node's own server.
pub(crate) struct LocalDb {
    handle: NodeHandle,
    port: u16,
    caps: Capabilities,
    client: Option<tokio_postgres::Client>,
    /// Notified when the session ends (the server crashed or stopped): the loop wakes.
    pub(crate) lost: std::sync::Arc<Notify>,
}

impl std::fmt::Debug for LocalDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalDb")
            .field("node", &self.handle.name)
            .field("port", &self.port)
            .field("connected", &self.client.is_some())
            .finish()
    }
}

impl LocalDb {
    pub(crate) fn new(handle: NodeHandle, port: u16, caps: Capabilities) -> LocalDb {
        LocalDb { handle, port, caps, client: None, lost: std::sync::Arc::new(Notify::new()) }
    }

    /// The node as it is now.
    pub(crate) async fn observe(&mut self) -> Observed {
        if self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.client = None;
        }
        if self.client.is_none() {
            self.client = self.connect().await.ok();
        }
        if let Some(c) = &self.client {
            match tokio::time::timeout(QUERY_TIMEOUT, c.simple_query(&probe_sql(&self.caps))).await {
                Ok(Ok(msgs)) => {
                    let rows: Vec<Vec<Option<String>>> = msgs
                        .iter()
                        .filter_map(|m| match m {
                            tokio_postgres::SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).map(String::from)).collect()),
                            _ => None,
                        })
                        .collect();
                    let mut o = Observed::unknown(&self.handle.name);
                    o.host_reachable = true;
                    apply_probe_rows(&mut o, &rows);
                    if o.server == ServerState::Running {
                        return o;
                    }
                }
                _ => self.client = None,
            }
        }
        probe_node(&self.handle, self.port, &self.caps).await
    }

    /// Drops the session (before the server is stopped or restarted on purpose).
    pub(crate) fn reset(&mut self) {
        self.client = None;
    }

    async fn connect(&self) -> Result<tokio_postgres::Client, String> {
        let l = &self.handle.layout;
        let path = format!("{}/.s.PGSQL.{}", l.socket_dir, self.port);
        let owner = os_user_ids(&l.os_user);
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::task::spawn_blocking(move || connect_as(&path, owner)))
            .await
            .map_err(|_| "connect: timed out".to_string())?
            .map_err(|e| e.to_string())??;
        stream.set_nonblocking(true).map_err(|e| e.to_string())?;
        let stream = tokio::net::UnixStream::from_std(stream).map_err(|e| e.to_string())?;
        let mut cfg = tokio_postgres::Config::new();
        cfg.user(&l.superuser).dbname("postgres").application_name("pgrepl-agent");
        let (client, conn) = tokio::time::timeout(CONNECT_TIMEOUT, cfg.connect_raw(stream, tokio_postgres::NoTls))
            .await
            .map_err(|_| "startup: timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let lost = self.lost.clone();
        tokio::spawn(async move {
            let _ = conn.await;
            lost.notify_one();
        });
        Ok(client)
    }
}

/// The uid and gid of `user` (from /etc/passwd), when this process runs as another user
/// (peer authentication maps the socket's peer to the OS user).
fn os_user_ids(user: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    let (uid, gid) = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[0] == user).then(|| (f[2].parse().ok(), f[3].parse().ok()))
    })?;
    let (uid, gid) = (uid?, gid?);
    (rustix::process::geteuid().as_raw() != uid).then_some((uid, gid))
}

/// Connects to the socket at `path` from a thread of its own that first takes `owner`'s
/// identity (only that thread's: Linux credentials are per thread at the system-call
/// level), so the server sees the OS user its peer authentication expects. The thread
/// ends with the connection made.
fn connect_as(path: &str, owner: Option<(u32, u32)>) -> Result<std::os::unix::net::UnixStream, String> {
    let path = path.to_string();
    std::thread::spawn(move || {
        if let Some((uid, gid)) = owner {
            rustix::thread::set_thread_gid(rustix::process::Gid::from_raw(gid)).map_err(|e| format!("take gid {gid}: {e}"))?;
            // SAFETY-free: a safe rustix call; the thread keeps this identity until it ends.
            rustix::thread::set_thread_uid(rustix::process::Uid::from_raw(uid)).map_err(|e| format!("take uid {uid}: {e}"))?;
        }
        std::os::unix::net::UnixStream::connect(&path).map_err(|e| format!("connect {path}: {e}"))
    })
    .join()
    .map_err(|_| "the connecting thread panicked".to_string())?
}
