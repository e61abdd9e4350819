//! The operation lock: one operation at a time on a cluster (`up`, `switchover`,
//! `failover`, `rejoin`, `destroy`), from one admin machine or several.
//!
//! Two layers, taken in this order and released in the reverse one:
//!
//! 1. **On this machine**: an exclusive `flock` on `<state_dir>/oplock`, so two pgrepl
//!    processes (or two tasks) of one admin machine serialise. The kernel releases it when
//!    the process dies, however it dies. The file holds the holder's record (JSON).
//! 2. **On the hosts**, when the cluster's hosts are not this machine (SSH, EC2, any
//!    provider but the local one, see [`Deployment::hosts_on_this_machine`]): a lease
//!    taken on a strict majority of the cluster's hosts, asked all at once (each take is
//!    a try, never a wait), through each node's [`Transport`] as the admin user. On each host the lock is the
//!    directory `/var/lib/pgrepl/.oplock/<cluster>/<node>/oplock` (root's; named after the
//!    node too, so hosts that share that path still lock apart; it outlives `destroy`)
//!    holding `holder` (the record), `token` and `lease`. Every step on a host (take,
//!    renew, release) runs in one short shell script under `flock(1)` on the
//!    `oplock.guard` file beside it, so check-then-act is atomic per host even between
//!    admin machines; the lock itself is still an atomic `mkdir`. The lease is judged by the host's own clock only (the age of the lock
//!    directory's mtime, against the holder's lease), so admin machines need no
//!    synchronised clocks. The holder renews it (`touch`) every `renew_every` from one
//!    background task per host; a dead admin machine's lock expires after `lease`, and the
//!    next taker breaks it by renaming the directory to a tombstone
//!    (`oplock.broken.<time>.<token>`, kept a day) and taking a fresh one.
//!
//! If a majority cannot be taken (another holder has some, or hosts do not answer),
//! what was taken is released and the attempt repeated until the wait runs out; then
//! [`Error::Locked`] names the holder, since when and until when. Hosts that cannot be
//! reached count as not taken: a failover whose dead primary's host is unreachable on a
//! 3-node cluster still takes 2 of 3.
//!
//! A cluster that keeps its truth in a consensus store (`[ha]`) takes a third kind
//! instead of the host locks: a [`SharedLock`], the store's `/pgrepl/<cluster>/op` key
//! bound to a lease ([`crate::store::StoreLock`]). etcd decides who holds it, for every
//! admin machine alike, whatever the hosts' state.
//!
//! The lock is released by [`OperationLock::release`]; a guard dropped without it
//! releases the flock at once and the host locks from a spawned task (a program about to
//! exit awaits those with [`finish_releases`]); a holder that dies leaves the host locks
//! to expire.

use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::join_all;

use crate::deploy::Deployment;
use crate::error::Error;
pub use crate::oplock_holder::{HeldSharedLock, LockHolder, SharedLock, fmt_utc};
use crate::oplock_holder::{admin_host_name, unix_now};
pub use crate::oplock_options::{DEFAULT_LEASE, DEFAULT_LOCK_WAIT, DEFAULT_MAX_HOLD, DEFAULT_RENEW_EVERY, HOST_LOCK_DIR, LockOptions};
use crate::transport::{Command, Transport, TransportError, TransportExt};

/// Time limit of one lock step on a host.
const HOST_STEP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a host step waits for the host's guard (seconds, `flock -w`).
const GUARD_WAIT_SECS: &str = "10";
/// Polling interval while waiting for the local flock.
const LOCAL_POLL: Duration = Duration::from_millis(100);
/// A host lock counts as valid until this long before its lease ends (mtimes and
/// `date +%s` have a resolution of one second).
const VALIDITY_MARGIN: Duration = Duration::from_secs(2);

/// The operation lock of a cluster, held until [`release`](Self::release) or drop.
#[derive(Debug)]
pub struct OperationLock {
    cluster: String,
    holder: LockHolder,
    local: Option<LocalLock>,
    hosts: Option<HostLock>,
    shared: Option<Box<dyn HeldSharedLock>>,
}

impl OperationLock {
    /// Who holds it (this process).
    pub fn holder(&self) -> &LockHolder {
        &self.holder
    }

    /// The nodes whose hosts carry the lock (empty when the local lock alone serialises).
    pub fn hosts(&self) -> Vec<String> {
        self.hosts.as_ref().map(|h| h.taken_nodes()).unwrap_or_default()
    }

    /// Whether the lock is still held: the local lock always is; host locks while a
    /// majority of them was renewed within its lease. A long operation checks it before
    /// an irrevocable step: after a partition longer than the lease another admin machine
    /// may have taken the lock.
    pub fn check(&self) -> Result<(), Error> {
        if let Some(s) = &self.shared {
            s.check(&self.cluster)?;
        }
        match &self.hosts {
            Some(h) => h.check(&self.cluster),
            None => Ok(()),
        }
    }

    /// Releases the host locks (this holder's only: a lock broken and taken by another
    /// after its lease ran out is left alone), then the local lock. A host that cannot be
    /// reached keeps its lock until the lease runs out.
    pub async fn release(mut self) {
        if let Some(h) = self.hosts.take() {
            h.release().await;
        }
        if let Some(s) = self.shared.take() {
            s.release().await;
        }
        self.local.take();
    }

    /// Removes the local lock file while it is held (`destroy` removes the state
    /// directory): a waiter that then locks the removed file sees it is no longer the
    /// file at that path and tries again. A process that opens the path afterwards gets
    /// a new file and the lock at once, so this is the holder's very last step.
    pub(crate) fn remove_local_file(&self) {
        if let Some(l) = &self.local {
            let _ = std::fs::remove_file(&l.path);
        }
    }
}

impl Drop for OperationLock {
    fn drop(&mut self) {
        let (hosts, shared) = (self.hosts.take(), self.shared.take());
        if hosts.is_none() && shared.is_none() {
            return;
        }
        if let Some(h) = &hosts {
            h.stop_renewing();
        }
        let local = self.local.take();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                // The local flock is kept until the other locks are released (or the task is
                // dropped with its runtime).
                let task = rt.spawn(async move {
                    if let Some(h) = hosts {
                        h.release().await;
                    }
                    if let Some(s) = shared {
                        s.release().await;
                    }
                    drop(local);
                });
                let mut pending = PENDING.lock().unwrap_or_else(|p| p.into_inner());
                pending.retain(|t| !t.is_finished());
                pending.push(task);
            }
            Err(_) => tracing::warn!("operation lock dropped outside a runtime: its host or store locks expire after their lease"),
        }
    }
}

static PENDING: Mutex<Vec<tokio::task::JoinHandle<()>>> = Mutex::new(Vec::new());

/// Waits (at most `limit`) for the releases of operation locks that were dropped without
/// [`OperationLock::release`] (an operation that failed): a program calls it before it
/// exits, so that it does not leave host locks to expire.
pub async fn finish_releases(limit: Duration) {
    let tasks: Vec<_> = std::mem::take(&mut *PENDING.lock().unwrap_or_else(|p| p.into_inner()));
    if tasks.is_empty() {
        return;
    }
    let _ = tokio::time::timeout(limit, join_all(tasks)).await;
}

impl Deployment {
    /// Takes the cluster's operation lock for `op`, waiting at most `wait` (see the
    /// [module](crate::oplock)). Fails with [`Error::Locked`] naming the holder when it
    /// is held past `wait`. Not re-entrant: an operation that holds it must not take it again.
    pub async fn lock_operation(&self, op: &str, wait: Duration) -> Result<OperationLock, Error> {
        let started = Instant::now();
        let deadline = started.checked_add(wait).unwrap_or(started + Duration::from_secs(365 * 24 * 3600));
        let opts = &self.lock_options;
        let on_hosts = !self.hosts_on_this_machine() && self.shared_lock.is_none();
        let lease = if self.shared_lock.is_some() {
            Some(crate::store::StoreLock::DEFAULT_TTL.as_secs())
        } else {
            on_hosts.then(|| opts.lease_secs())
        };
        let holder = LockHolder::this_process(op, lease);
        let cluster = self.cluster().name.clone();
        let local = LocalLock::acquire(self.state_dir(), &cluster, &holder, started, deadline).await?;
        let shared = match &self.shared_lock {
            Some(s) => Some(s.acquire(&cluster, &holder, started, deadline).await?),
            None => None,
        };
        let hosts = if on_hosts {
            let hosts = self.lock_hosts().await?;
            if hosts.is_empty() {
                // No host exists yet (a first `up` of a provider that creates them).
                None
            } else {
                Some(HostLock::acquire(&cluster, hosts, &holder, opts, started, deadline).await?)
            }
        } else {
            None
        };
        tracing::info!(cluster = %cluster, operation = op, hosts = ?hosts.as_ref().map(|h| h.taken_nodes()), store = shared.is_some(), "operation lock taken");
        Ok(OperationLock { cluster, holder, local: Some(local), hosts, shared })
    }

    /// The lock settings.
    pub fn lock_options(&self) -> &LockOptions {
        &self.lock_options
    }

    /// How long operations wait for the lock.
    pub fn lock_wait(&self) -> Duration {
        self.lock_options.wait
    }

    /// Sets how long operations wait for the lock.
    pub fn with_lock_wait(mut self, wait: Duration) -> Self {
        self.lock_options.wait = wait;
        self
    }

    /// Sets every lock setting.
    pub fn with_lock_options(mut self, opts: LockOptions) -> Self {
        self.lock_options = opts;
        self
    }

    /// Takes the operation lock in `lock` (the consensus store's key of an `[ha]` cluster)
    /// instead of on the hosts; the lock on this machine is still taken first.
    pub fn with_shared_lock(mut self, lock: Arc<dyn SharedLock>) -> Self {
        self.shared_lock = Some(lock);
        self
    }

    /// Whether every node of the cluster lives on this machine (the local provider): then
    /// the local lock alone serialises operations.
    pub fn hosts_on_this_machine(&self) -> bool {
        self.local_ports
    }

    /// The hosts that exist, in node-name order, each with where its lock lives.
    async fn lock_hosts(&self) -> Result<Vec<LockHost>, Error> {
        let (cluster, handles, failed) = self.connect_partial().await?;
        let root = |node: &str| format!("{}/{}/{node}", self.lock_options.host_dir.trim_end_matches('/'), cluster.name);
        let mut hosts: Vec<LockHost> = handles
            .into_iter()
            .map(|h| LockHost { root: root(&h.name), node: h.name, transport: Ok(h.transport) })
            .chain(failed.into_iter().map(|(node, e)| LockHost { root: root(&node), node, transport: Err(crate::error::chain(&e)) }))
            .collect();
        hosts.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(hosts)
    }
}

// ---------------------------------------------------------------------------------------
// On this machine

#[derive(Debug)]
struct LocalLock {
    path: PathBuf,
    file: std::fs::File,
}

enum TryLocal {
    Got(std::fs::File),
    Held,
    /// The file was removed or replaced after it was opened: try again.
    Replaced,
}

impl LocalLock {
    async fn acquire(
        state_dir: &Path,
        cluster: &str,
        holder: &LockHolder,
        started: Instant,
        deadline: Instant,
    ) -> Result<LocalLock, Error> {
        let io =
            |path: &Path, action: &str, e: std::io::Error| Error::Io { path: path.display().to_string(), action: action.into(), source: e };
        let path = state_dir.join("oplock");
        // Bounded: every round either returns or sleeps LOCAL_POLL, until the deadline.
        let max_rounds = 10 + (deadline.saturating_duration_since(started).as_millis() / LOCAL_POLL.as_millis()) as u64 * 2;
        for _ in 0..max_rounds {
            if !state_dir.is_dir() {
                std::fs::create_dir_all(state_dir).map_err(|e| io(state_dir, "create the state directory", e))?;
                std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o700))
                    .map_err(|e| io(state_dir, "set the state directory's mode", e))?;
            }
            match try_flock(&path).map_err(|e| io(&path, "take the operation lock", e))? {
                TryLocal::Got(file) => {
                    let body = serde_json::to_vec(holder).expect("a holder serializes");
                    file.set_len(0).and_then(|_| file.write_all_at(&body, 0)).map_err(|e| io(&path, "record the lock's holder", e))?;
                    return Ok(LocalLock { path, file });
                }
                TryLocal::Replaced => continue,
                TryLocal::Held => {}
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            tokio::time::sleep(jitter(LOCAL_POLL).min(deadline - now)).await;
        }
        let holder = match read_local_holder(&path).await {
            Some(h) => format!("held on this machine by {}, until that process ends", h.who()),
            None => "held on this machine by another pgrepl process (its record is not written yet)".to_string(),
        };
        Err(Error::Locked { cluster: cluster.to_string(), holder, waited: started.elapsed() })
    }
}

impl Drop for LocalLock {
    fn drop(&mut self) {
        // Cleared while still held: a record in the file always names a live holder, or
        // one that died holding it (whose flock the kernel released).
        let _ = self.file.set_len(0);
    }
}

/// The local lock's holder, read by a process that could not take it. The holder writes
/// its record right after taking the lock: an empty file, or the record of a process
/// that is gone, is read again for a moment (bounded).
async fn read_local_holder(path: &Path) -> Option<LockHolder> {
    let here = admin_host_name();
    for _ in 0..20 {
        let h = std::fs::read(path).ok().and_then(|b| serde_json::from_slice::<LockHolder>(&b).ok());
        if let Some(h) = h.filter(|h| h.admin_host != here || Path::new(&format!("/proc/{}", h.pid)).exists()) {
            return Some(h);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

fn try_flock(path: &Path) -> std::io::Result<TryLocal> {
    let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(path)?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(e) if e == rustix::io::Errno::WOULDBLOCK || e == rustix::io::Errno::INTR => return Ok(TryLocal::Held),
        Err(e) => return Err(e.into()),
    }
    let mine = file.metadata()?;
    match std::fs::metadata(path) {
        Ok(m) if m.dev() == mine.dev() && m.ino() == mine.ino() => Ok(TryLocal::Got(file)),
        Ok(_) => Ok(TryLocal::Replaced),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TryLocal::Replaced),
        Err(e) => Err(e),
    }
}

// ---------------------------------------------------------------------------------------
// On the hosts

/// One host of the host lock.
#[derive(Debug, Clone)]
pub struct LockHost {
    /// The node it carries.
    pub node: String,
    /// The directory the lock lives in (`<root>/oplock`, guard `<root>/oplock.guard`);
    /// created (with parents) when missing.
    pub root: String,
    /// How to reach it, or why it cannot be reached (then it counts as not taken).
    pub transport: Result<Arc<dyn Transport>, String>,
}

/// Every step on a host, under the host's guard. Positional parameters: step, root,
/// token, lease seconds; `acquire` reads the holder record on stdin. First line of
/// output: `taken`, `broke AGE LEASE` (an expired lock was broken, then taken),
/// `held AGE LEASE` followed by the holder's record, `renewed`, `lost`, `released`,
/// `notours`; `error ...` with a non-zero status.
const HOST_SCRIPT: &str = r#"set -u
step=$1 root=$2 token=$3 lease=$4
lock=$root/oplock
if [ "$step" = acquire ]; then
  (umask 022; mkdir -p -- "$root") || { echo "error: cannot create $root">&2; exit 71; }
elif [ ! -d "$root" ]; then
  [ "$step" = renew ] && echo lost || echo notours
  exit 0
fi
umask 077
command -v flock >/dev/null 2>&1 || { echo "error: flock(1) is missing on this host (util-linux)">&2; exit 72; }
exec 9>>"$root/oplock.guard" || { echo "error: cannot open $root/oplock.guard">&2; exit 71; }
flock -w "$GUARD_WAIT" 9 || { echo "error: the lock guard $root/oplock.guard stayed busy">&2; exit 75; }
now=$(date +%s)
mtime=$(stat -c %Y -- "$lock" 2>/dev/null || true)
cur=$(cat -- "$lock/token" 2>/dev/null || true)
take() {
  mkdir -- "$lock" 2>/dev/null || return 1
  cat > "$lock/holder"
  printf '%s\n' "$lease" > "$lock/lease"
  printf '%s\n' "$token" > "$lock/token"
  touch -- "$lock"
}
case $step in
acquire)
  if [ -z "$mtime" ]; then
    take && { echo taken; exit 0; }
    echo "error: mkdir $lock failed" >&2; exit 73
  fi
  if [ "$cur" = "$token" ]; then touch -- "$lock"; echo taken; exit 0; fi
  held_lease=$(cat -- "$lock/lease" 2>/dev/null || true)
  case $held_lease in ''|*[!0-9]*) held_lease=$lease ;; esac
  age=$((now - mtime))
  if [ "$age" -gt "$held_lease" ]; then
    mv -- "$lock" "$root/oplock.broken.$now.$token" || { echo "error: cannot move the expired lock aside">&2; exit 73; }
    take || { echo "error: mkdir $lock failed after breaking the expired lock">&2; exit 73; }
    find "$root" -maxdepth 1 -name 'oplock.broken.*' -mmin +1440 -exec rm -rf -- {} + 2>/dev/null
    echo "broke $age $held_lease"; exit 0
  fi
  echo "held $age $held_lease"
  cat -- "$lock/holder" 2>/dev/null
  exit 0 ;;
renew)
  if [ -n "$mtime" ] && [ "$cur" = "$token" ]; then touch -- "$lock" && { echo renewed; exit 0; }; fi
  echo lost; exit 0 ;;
release)
  if [ -n "$mtime" ] && [ "$cur" = "$token" ]; then
    mv -- "$lock" "$root/oplock.released.$token" && rm -rf -- "$root/oplock.released.$token"
    echo released; exit 0
  fi
  echo notours; exit 0 ;;
*) echo "error: unknown step $step" >&2; exit 2 ;;
esac"#;

/// A host's answer to `acquire`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostAnswer {
    /// Taken (`broke`: an expired lock was broken first).
    Taken {
        /// Whether an expired lock was broken.
        broke: bool,
    },
    /// Held by another holder, `age` seconds since its last renewal, of `lease`.
    Held {
        /// Seconds since the holder's last renewal (the host's clock).
        age: u64,
        /// The holder's lease, seconds.
        lease: u64,
        /// Its record, when readable.
        holder: Option<LockHolder>,
    },
}

/// Runs one lock step on a host (as the admin user, bounded in time).
async fn host_step(
    t: &dyn Transport,
    step: &str,
    root: &str,
    token: &str,
    lease: u64,
    stdin: Option<Vec<u8>>,
) -> Result<String, TransportError> {
    let mut c = Command::new("sh")
        .args(["-c", HOST_SCRIPT, "pgrepl-oplock", step, root, token, &lease.to_string()])
        .env("GUARD_WAIT", GUARD_WAIT_SECS)
        .timeout(HOST_STEP_TIMEOUT);
    c.user = t.admin_user().map(str::to_string);
    if let Some(s) = stdin {
        c = c.stdin(s);
    }
    // A transport that queues calls (one SSH session per host) may make this wait: bounded.
    match tokio::time::timeout(HOST_STEP_TIMEOUT + Duration::from_secs(10), t.run(&c)).await {
        Ok(r) => r.map(|o| o.stdout),
        Err(_) => Err(TransportError::Timeout { program: "sh (operation lock)".into(), after: HOST_STEP_TIMEOUT }),
    }
}

/// Asks one host for the lock for `holder` (exposed for tests of the protocol).
pub async fn acquire_on_host(t: &dyn Transport, root: &str, holder: &LockHolder, lease: u64) -> Result<HostAnswer, TransportError> {
    let body = serde_json::to_vec(holder).expect("a holder serializes");
    let out = host_step(t, "acquire", root, &holder.token, lease, Some(body)).await?;
    let mut lines = out.splitn(2, '\n');
    let first = lines.next().unwrap_or("").trim();
    let words: Vec<&str> = first.split_whitespace().collect();
    let num = |i: usize| words.get(i).and_then(|w| w.parse::<u64>().ok()).unwrap_or(0);
    match words.first() {
        Some(&"taken") => Ok(HostAnswer::Taken { broke: false }),
        Some(&"broke") => Ok(HostAnswer::Taken { broke: true }),
        Some(&"held") => {
            Ok(HostAnswer::Held { age: num(1), lease: num(2), holder: serde_json::from_str(lines.next().unwrap_or("").trim()).ok() })
        }
        _ => Err(TransportError::Other(format!("unexpected answer from the lock step: {first:?}"))),
    }
}

/// Per taken host: until when its lease surely holds, or lost.
#[derive(Debug)]
struct Slot {
    node: String,
    root: String,
    transport: Arc<dyn Transport>,
    valid_until: Option<Instant>,
}

#[derive(Debug)]
struct HostLock {
    need: usize,
    total: usize,
    token: String,
    lease: u64,
    slots: Arc<Mutex<Vec<Slot>>>,
    renewals: Vec<tokio::task::JoinHandle<()>>,
}

/// Who holds a host's lock, as seen while trying to take it.
struct Seen {
    holder: Option<LockHolder>,
    nodes: Vec<String>,
    /// Seconds left of its lease on the host where the most is left.
    left: u64,
}

impl HostLock {
    async fn acquire(
        cluster: &str,
        mut hosts: Vec<LockHost>,
        holder: &LockHolder,
        opts: &LockOptions,
        started: Instant,
        deadline: Instant,
    ) -> Result<HostLock, Error> {
        hosts.sort_by(|a, b| a.node.cmp(&b.node));
        let total = hosts.len();
        let need = total / 2 + 1;
        let lease = opts.lease_secs();
        // Bounded: each attempt takes at least 200 ms of backoff (or ends at the deadline).
        let max_attempts = 2 + deadline.saturating_duration_since(started).as_millis() / 200;
        let mut attempt = 0u128;
        loop {
            attempt += 1;
            let mut taken: Vec<Slot> = Vec::new();
            let mut seen: Option<Seen> = None;
            let mut problems: Vec<String> = Vec::new();
            // Every host at once (each take is a try, never a wait: the order cannot
            // deadlock two takers; a split is given back and tried again after a jittered
            // backoff).
            let asks = hosts.iter().map(|h| async move {
                let t = match &h.transport {
                    Ok(t) => t.clone(),
                    Err(why) if why.starts_with(&format!("{}: ", h.node)) => return (h, Err(why.clone())),
                    Err(why) => return (h, Err(format!("{}: {why}", h.node))),
                };
                let sent = Instant::now();
                let r = acquire_on_host(&*t, &h.root, holder, lease).await.map_err(|e| format!("{}: {e}", h.node));
                (h, r.map(|a| (a, sent, t)))
            });
            for (h, r) in join_all(asks).await {
                match r {
                    Ok((HostAnswer::Taken { broke }, sent, t)) => {
                        if broke {
                            tracing::warn!(node = %h.node, "broke an expired operation lock (its holder stopped renewing it)");
                        }
                        taken.push(Slot {
                            node: h.node.clone(),
                            root: h.root.clone(),
                            transport: t,
                            valid_until: Some(sent + Duration::from_secs(lease)),
                        });
                    }
                    Ok((HostAnswer::Held { age, lease: their, holder: other }, ..)) => {
                        let left = their.saturating_sub(age);
                        let s = seen.get_or_insert_with(|| Seen { holder: other.clone(), nodes: Vec::new(), left });
                        if s.holder.is_none() {
                            s.holder = other;
                        }
                        s.left = s.left.max(left);
                        s.nodes.push(h.node.clone());
                    }
                    Err(e) => problems.push(e),
                }
            }
            if taken.len() >= need {
                let slots = Arc::new(Mutex::new(taken));
                let mut lock = HostLock { need, total, token: holder.token.clone(), lease, slots, renewals: Vec::new() };
                lock.start_renewing(opts);
                return Ok(lock);
            }
            release_slots(&taken, &holder.token, lease).await;
            let now = Instant::now();
            if now >= deadline || attempt >= max_attempts {
                let mut text = match &seen {
                    Some(s) => format!(
                        "held by {} on {}, until {} unless renewed",
                        s.holder.as_ref().map(LockHolder::who).unwrap_or_else(|| "another pgrepl (its record is unreadable)".into()),
                        s.nodes.join(", "),
                        fmt_utc(unix_now() + s.left)
                    ),
                    None => format!("not taken: only {} of {total} hosts could be locked ({need} needed)", taken.len()),
                };
                if !problems.is_empty() {
                    text.push_str(&format!("; not taken on {}", problems.join("; ")));
                }
                return Err(Error::Locked { cluster: cluster.to_string(), holder: text, waited: started.elapsed() });
            }
            let backoff = jitter(Duration::from_millis(200 + 100 * (attempt.min(8) as u64)));
            tokio::time::sleep(backoff.min(deadline - now)).await;
        }
    }

    fn taken_nodes(&self) -> Vec<String> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|s| s.node.clone()).collect()
    }

    /// One renewal loop per host, so a host whose transport is busy (a long clone through
    /// the same SSH session) does not hold back the others.
    fn start_renewing(&mut self, opts: &LockOptions) {
        let n = self.slots.lock().unwrap_or_else(|p| p.into_inner()).len();
        let every = opts.renew_every.max(Duration::from_millis(100));
        let rounds = (opts.max_hold.as_millis() / every.as_millis()).max(1) as u64;
        for i in 0..n {
            let slots = self.slots.clone();
            let token = self.token.clone();
            let lease = self.lease;
            self.renewals.push(tokio::spawn(async move {
                let (node, root, t) = {
                    let s = &slots.lock().unwrap_or_else(|p| p.into_inner())[i];
                    (s.node.clone(), s.root.clone(), s.transport.clone())
                };
                for _ in 0..rounds {
                    tokio::time::sleep(every).await;
                    let sent = Instant::now();
                    let r =
                        tokio::time::timeout(every.max(Duration::from_secs(1)), host_step(&*t, "renew", &root, &token, lease, None)).await;
                    match r {
                        Ok(Ok(out)) if out.trim() == "renewed" => {
                            slots.lock().unwrap_or_else(|p| p.into_inner())[i].valid_until = Some(sent + Duration::from_secs(lease));
                        }
                        Ok(Ok(_)) => {
                            tracing::warn!(node = %node, "the operation lock on this host was lost (broken after its lease ran out)");
                            slots.lock().unwrap_or_else(|p| p.into_inner())[i].valid_until = None;
                            return;
                        }
                        Ok(Err(e)) => tracing::warn!(node = %node, "could not renew the operation lock: {e}"),
                        Err(_) => tracing::warn!(node = %node, "renewing the operation lock timed out"),
                    }
                }
            }));
        }
    }

    fn stop_renewing(&self) {
        for r in &self.renewals {
            r.abort();
        }
    }

    fn check(&self, cluster: &str) -> Result<(), Error> {
        let now = Instant::now();
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let valid: Vec<&str> =
            slots.iter().filter(|s| s.valid_until.is_some_and(|v| v > now + VALIDITY_MARGIN)).map(|s| s.node.as_str()).collect();
        if valid.len() >= self.need {
            return Ok(());
        }
        Err(Error::Locked {
            cluster: cluster.to_string(),
            holder: format!(
                "lost: this operation's lock is no longer held on a majority of the hosts ({} of {}, {} needed: {}): another operation may hold it",
                valid.len(),
                self.total,
                self.need,
                if valid.is_empty() { "none".to_string() } else { valid.join(", ") }
            ),
            waited: Duration::ZERO,
        })
    }

    async fn release(self) {
        self.stop_renewing();
        let slots = std::mem::take(&mut *self.slots.lock().unwrap_or_else(|p| p.into_inner()));
        release_slots(&slots, &self.token, self.lease).await;
    }
}

/// Releases taken host locks (concurrently: the order does not matter for safety, and an
/// unreachable host must not delay the others).
async fn release_slots(slots: &[Slot], token: &str, lease: u64) {
    join_all(slots.iter().rev().map(|s| async move {
        match host_step(&*s.transport, "release", &s.root, token, lease, None).await {
            Ok(out) if out.trim() == "released" => {}
            Ok(out) => tracing::warn!(node = %s.node, "operation lock not released: {}", out.trim()),
            Err(e) => tracing::warn!(node = %s.node, "could not release the operation lock (it expires after its lease): {e}"),
        }
    }))
    .await;
}

// ---------------------------------------------------------------------------------------
// Helpers

/// `d` plus up to half of it, at random (two waiters do not retry in step).
fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    let r = if getrandom::fill(&mut b).is_ok() { u16::from_le_bytes(b) } else { 0 };
    d + d.mul_f64(f64::from(r) / f64::from(u16::MAX) / 2.0)
}

#[cfg(test)]
mod tests {
    //! Real locks: flock on real files, the host script through [`LocalTransport`] with
    //! one directory per "host", a second process (this test binary again) as the other
    //! holder, killed with SIGKILL to play an admin machine that dies.

    use super::*;
    use crate::cluster::{Cluster, Node};
    use crate::hosts::ExistingHosts;
    use crate::layout::{Binaries, NodeLayout};
    use crate::local::LocalTransport;
    use crate::provider::{Connector, Host, NodeHandle};
    use crate::{ClusterSpec, PgMajor};
    use async_trait::async_trait;
    use tokio::io::AsyncBufReadExt;

    /// Hosts on this machine reached through [`LocalTransport`]; `down` cannot be reached.
    #[derive(Debug)]
    struct LocalHosts {
        down: Vec<String>,
    }

    #[async_trait]
    impl Connector for LocalHosts {
        async fn connect(&self, _: &Cluster, node: &Node, _: &Host) -> Result<NodeHandle, Error> {
            if self.down.contains(&node.name) {
                return Err(Error::node(&node.name, "no route to host"));
            }
            Ok(NodeHandle {
                name: node.name.clone(),
                transport: Arc::new(LocalTransport),
                layout: NodeLayout::local("/nonexistent", &node.name, &Binaries::assumed(PgMajor::V16), "postgres"),
                install_script: None,
            })
        }
    }

    fn cluster(name: &str) -> Cluster {
        ClusterSpec::from_toml(&format!(
            "name = \"{name}\"\n[[nodes]]\nname = \"db1\"\nrole = \"primary\"\n[[nodes]]\nname = \"db2\"\nrole = \"standby\"\n[[nodes]]\nname = \"db3\"\nrole = \"standby\"\n"
        ))
        .unwrap()
        .validate_for(PgMajor::V16)
        .unwrap()
    }

    /// A deployment of a 3-node cluster: `host_dir: None` is the local provider's case
    /// (flock only), `Some` locks on the "hosts" too, under that directory.
    fn deployment(name: &str, state: &Path, host_dir: Option<&Path>, down: &[&str], lease: u64, renew: Duration) -> Deployment {
        let d = Deployment::new(
            cluster(name),
            Arc::new(ExistingHosts),
            Arc::new(LocalHosts { down: down.iter().map(|s| s.to_string()).collect() }),
            state,
        );
        let opts = LockOptions {
            lease: Duration::from_secs(lease),
            renew_every: renew,
            host_dir: host_dir.map(|p| p.to_string_lossy().into_owned()).unwrap_or_default(),
            ..LockOptions::default()
        };
        let d = d.with_lock_options(opts);
        if host_dir.is_some() { d } else { d.with_local_ports() }
    }

    fn locked_text(r: Result<OperationLock, Error>) -> String {
        match r {
            Err(e @ Error::Locked { .. }) => e.to_string(),
            Err(e) => panic!("expected Error::Locked, got {e}"),
            Ok(l) => panic!("expected Error::Locked, got the lock for {}", l.holder()),
        }
    }

    fn tombstones(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .map(|r| r.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("oplock.broken.")).count())
            .unwrap_or(0)
    }

    /// Sets a lock directory's mtime `secs` in the past (a holder that stopped renewing).
    fn age_lock(dir: &Path, secs: u64) {
        let st =
            std::process::Command::new("touch").args(["-d", &format!("@{}", unix_now() - secs)]).arg(dir.join("oplock")).status().unwrap();
        assert!(st.success());
    }

    /// This test binary again, running [`child_holder`]: another process that takes the
    /// lock and holds it until it is killed (at most 60 s).
    struct Child {
        child: tokio::process::Child,
        pid: u32,
    }

    impl Child {
        async fn start(state: &Path, host_dir: Option<&Path>) -> Child {
            let arg = format!("{}|{}", state.display(), host_dir.map(|p| p.display().to_string()).unwrap_or_default());
            let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
                .args(["oplock::tests::child_holder", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
                .env("PGREPL_OPLOCK_CHILD", arg)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            let pid = child.id().unwrap();
            let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
            let holding = tokio::time::timeout(Duration::from_secs(60), async {
                while let Ok(Some(l)) = lines.next_line().await {
                    if l.contains("HOLDING ") {
                        return true;
                    }
                }
                false
            })
            .await;
            assert!(matches!(holding, Ok(true)), "the child process did not take the lock");
            Child { child, pid }
        }

        /// SIGKILL: no release, no renewal, as when an admin machine dies.
        async fn kill9(mut self) {
            self.child.kill().await.unwrap();
        }
    }

    #[tokio::test]
    #[ignore = "the other process of the tests below (run by them)"]
    async fn child_holder() {
        let Ok(arg) = std::env::var("PGREPL_OPLOCK_CHILD") else { return };
        let (state, hosts) = arg.split_once('|').unwrap();
        let host_dir = (!hosts.is_empty()).then(|| PathBuf::from(hosts));
        let d = deployment("oplock-t", Path::new(state), host_dir.as_deref(), &[], 2, Duration::from_millis(300));
        let lock = d.lock_operation("child-failover", Duration::from_secs(10)).await.unwrap();
        println!("HOLDING {}", std::process::id());
        tokio::time::sleep(Duration::from_secs(60)).await;
        lock.release().await;
    }

    #[tokio::test]
    async fn local_lock_waits_for_the_holder_and_names_it() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        let d = deployment("oplock-t", &state, None, &[], 60, DEFAULT_RENEW_EVERY);
        let a = d.lock_operation("failover", Duration::ZERO).await.unwrap();
        assert!(a.hosts().is_empty(), "the local provider locks on this machine only");
        assert_eq!(std::fs::metadata(&state).unwrap().permissions().mode() & 0o777, 0o700);

        let t0 = Instant::now();
        let e = locked_text(d.lock_operation("switchover", Duration::from_millis(300)).await);
        assert!(t0.elapsed() >= Duration::from_millis(300), "it waited");
        assert!(e.contains("held on this machine by failover") && e.contains(&format!("pid {}", std::process::id())), "{e}");

        // A waiter gets it once the holder releases.
        let d2 = d.clone();
        let waiter = tokio::spawn(async move {
            let t0 = Instant::now();
            (d2.lock_operation("switchover", Duration::from_secs(20)).await, t0.elapsed())
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!waiter.is_finished(), "the second locker waits while the first holds");
        a.release().await;
        let (b, waited) = waiter.await.unwrap();
        let b = b.unwrap();
        assert!(waited >= Duration::from_millis(450), "{waited:?}");
        let record: LockHolder = serde_json::from_slice(&std::fs::read(state.join("oplock")).unwrap()).unwrap();
        assert_eq!(record.operation, "switchover");
        assert_eq!(record.lease_secs, None);

        // Dropped without release: released at once.
        drop(b);
        d.lock_operation("rejoin", Duration::ZERO).await.unwrap().release().await;
    }

    /// `destroy` removes the lock file while it holds it: a waiter that locked the removed
    /// file must not count as holding the lock.
    #[tokio::test]
    async fn local_lock_file_removed_while_held_is_not_a_second_lock() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        let path = state.join("oplock");
        let a = deployment("oplock-t", &state, None, &[], 60, DEFAULT_RENEW_EVERY).lock_operation("destroy", Duration::ZERO).await.unwrap();
        // A waiter that opened the file before it was removed.
        let stale = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        a.remove_local_file();
        drop(a);
        rustix::fs::flock(&stale, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
        assert!(matches!(try_flock(&path).unwrap(), TryLocal::Got(_)), "the path's new file is free: the stale one is not the lock");
        // The same check in the acquisition path.
        std::fs::write(&path, b"").unwrap();
        let old = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"").unwrap();
        drop(old);
        assert!(matches!(try_flock(&path).unwrap(), TryLocal::Got(_)));
    }

    /// Refused in the moment between the holder's flock and its record: the refusal
    /// still names the holder (not an empty or a stale record).
    #[tokio::test]
    async fn a_refusal_waits_for_the_holders_record() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        let path = state.join("oplock");
        // A stale record of a process that is gone, then a holder that has not written yet.
        let mut gone = LockHolder::this_process("stale-op", None);
        gone.pid = u32::MAX - 1;
        std::fs::write(&path, serde_json::to_vec(&gone).unwrap()).unwrap();
        let TryLocal::Got(f) = try_flock(&path).unwrap() else { panic!("free") };
        let late = LockHolder::this_process("late-writer", None);
        let body = serde_json::to_vec(&late).unwrap();
        let writer = tokio::spawn(async move {
            // Well inside the refusal's second of reading again, even on a loaded machine.
            tokio::time::sleep(Duration::from_millis(100)).await;
            f.set_len(0).unwrap();
            f.write_all_at(&body, 0).unwrap();
            tokio::time::sleep(Duration::from_secs(2)).await;
            drop(f);
        });
        let d = deployment("oplock-t", &state, None, &[], 60, DEFAULT_RENEW_EVERY);
        let e = locked_text(d.lock_operation("failover", Duration::ZERO).await);
        assert!(e.contains("held on this machine by late-writer") && !e.contains("stale-op"), "{e}");
        writer.await.unwrap();
        // Released: the record is cleared with it.
        d.lock_operation("failover", Duration::ZERO).await.unwrap().release().await;
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }

    #[tokio::test]
    async fn local_lock_of_another_process_and_its_death() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        let child = Child::start(&state, None).await;
        let d = deployment("oplock-t", &state, None, &[], 60, DEFAULT_RENEW_EVERY);
        let e = locked_text(d.lock_operation("failover", Duration::from_millis(300)).await);
        assert!(e.contains("child-failover") && e.contains(&format!("pid {}", child.pid)), "{e}");
        // The kernel releases a dead process's flock.
        child.kill9().await;
        d.lock_operation("failover", Duration::from_secs(10)).await.unwrap().release().await;
    }

    #[tokio::test]
    async fn host_lock_on_a_majority_refuses_others_until_released() {
        let tmp = tempfile::tempdir().unwrap();
        let hosts = tmp.path().join("hosts");
        // Two admin machines: their own state directories, the same hosts.
        let a = deployment("oplock-t", &tmp.path().join("admin-a"), Some(&hosts), &[], 60, DEFAULT_RENEW_EVERY);
        let b = deployment("oplock-t", &tmp.path().join("admin-b"), Some(&hosts), &[], 60, DEFAULT_RENEW_EVERY);
        let la = a.lock_operation("failover", Duration::ZERO).await.unwrap();
        assert_eq!(la.hosts(), ["db1", "db2", "db3"]);
        la.check().unwrap();
        for n in ["db1", "db2", "db3"] {
            let rec: LockHolder =
                serde_json::from_slice(&std::fs::read(hosts.join("oplock-t").join(n).join("oplock/holder")).unwrap()).unwrap();
            assert_eq!(rec, *la.holder());
            assert_eq!(rec.lease_secs, Some(60));
        }
        let e = locked_text(b.lock_operation("switchover", Duration::from_millis(400)).await);
        assert!(e.contains("held by failover") && e.contains("on db1, db2,") && e.contains("until"), "{e}");

        let waiter = tokio::spawn(async move { b.lock_operation("switchover", Duration::from_secs(20)).await });
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(!waiter.is_finished());
        la.release().await;
        let lb = waiter.await.unwrap().unwrap();
        assert_eq!(lb.hosts(), ["db1", "db2", "db3"]);
        // Dropped without release (an operation that failed): released by a task.
        drop(lb);
        finish_releases(Duration::from_secs(20)).await;
        for n in ["db1", "db2", "db3"] {
            assert!(!hosts.join("oplock-t").join(n).join("oplock").exists(), "{n} released");
        }
        a.lock_operation("up", Duration::ZERO).await.unwrap().release().await;
    }

    #[tokio::test]
    async fn unreachable_hosts_count_as_not_taken() {
        let tmp = tempfile::tempdir().unwrap();
        let hosts = tmp.path().join("hosts");
        // The dead primary's host does not answer: 2 of 3 is a majority.
        let a = deployment("oplock-t", &tmp.path().join("a"), Some(&hosts), &["db1"], 60, DEFAULT_RENEW_EVERY);
        let la = a.lock_operation("failover", Duration::ZERO).await.unwrap();
        assert_eq!(la.hosts(), ["db2", "db3"]);
        // Another admin machine that reaches every host gets only db1: refused.
        let b = deployment("oplock-t", &tmp.path().join("b"), Some(&hosts), &[], 60, DEFAULT_RENEW_EVERY);
        let e = locked_text(b.lock_operation("failover", Duration::ZERO).await);
        assert!(e.contains("on db2, db3"), "{e}");
        assert!(!hosts.join("oplock-t/db1/oplock").exists(), "what b took on db1 was given back");
        la.release().await;
        // Two of three unreachable: no majority, and the message says why.
        let c = deployment("oplock-t", &tmp.path().join("c"), Some(&hosts), &["db1", "db2"], 60, DEFAULT_RENEW_EVERY);
        let e = locked_text(c.lock_operation("failover", Duration::from_millis(500)).await);
        assert!(e.contains("only 1 of 3 hosts could be locked (2 needed)") && e.contains("db1: ") && e.contains("no route to host"), "{e}");
        assert!(!hosts.join("oplock-t/db3/oplock").exists(), "db3 given back");

        // A host whose lock directory cannot be made counts as not taken too.
        let t: Arc<dyn Transport> = Arc::new(LocalTransport);
        let h = |node: &str, root: String| LockHost { node: node.into(), root, transport: Ok(t.clone()) };
        let set = vec![
            h("db1", tmp.path().join("x1").display().to_string()),
            h("db2", "/proc/pgrepl-cannot-exist/db2".into()),
            h("db3", tmp.path().join("x3").display().to_string()),
        ];
        let holder = LockHolder::this_process("failover", Some(60));
        let now = Instant::now();
        let l = HostLock::acquire("oplock-t", set, &holder, &LockOptions::default(), now, now).await.unwrap();
        assert_eq!(l.taken_nodes(), ["db1", "db3"]);
        l.release().await;
    }

    /// Several takers find an expired lock at once: exactly one breaks it.
    #[tokio::test]
    async fn an_expired_lock_is_broken_exactly_once() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("h").display().to_string();
        let dead = LockHolder::this_process("failover", Some(2));
        assert_eq!(acquire_on_host(&LocalTransport, &root, &dead, 2).await.unwrap(), HostAnswer::Taken { broke: false });
        // Not expired yet: held.
        let other = LockHolder::this_process("switchover", Some(2));
        let a = acquire_on_host(&LocalTransport, &root, &other, 2).await.unwrap();
        assert!(matches!(&a, HostAnswer::Held { lease: 2, holder: Some(h), .. } if *h == dead), "{a:?}");
        age_lock(Path::new(&root), 10);
        let takers: Vec<LockHolder> = (0..8).map(|_| LockHolder::this_process("failover", Some(60))).collect();
        let root = &root;
        let answers = join_all(takers.iter().map(|h| async move { acquire_on_host(&LocalTransport, root, h, 60).await.unwrap() })).await;
        let winners: Vec<usize> = (0..8).filter(|i| answers[*i] == HostAnswer::Taken { broke: true }).collect();
        assert_eq!(winners.len(), 1, "{answers:?}");
        assert!(answers.iter().filter(|a| matches!(a, HostAnswer::Held { .. })).count() == 7, "{answers:?}");
        assert_eq!(tombstones(Path::new(&root)), 1);
        let token = std::fs::read_to_string(Path::new(&root).join("oplock/token")).unwrap();
        assert_eq!(token.trim(), takers[winners[0]].token);

        // The same race between two admin machines on three hosts.
        let hosts = tmp.path().join("hosts");
        let old = deployment("oplock-t", &tmp.path().join("old"), Some(&hosts), &[], 60, DEFAULT_RENEW_EVERY);
        // Its holder dies: no more renewal, no release.
        let mut dead = old.lock_operation("failover", Duration::ZERO).await.unwrap();
        let h = dead.hosts.take().unwrap();
        h.stop_renewing();
        drop((h, dead));
        for n in ["db1", "db2", "db3"] {
            age_lock(&hosts.join("oplock-t").join(n), 120);
        }
        let a = deployment("oplock-t", &tmp.path().join("a"), Some(&hosts), &[], 60, DEFAULT_RENEW_EVERY);
        let b = deployment("oplock-t", &tmp.path().join("b"), Some(&hosts), &[], 60, DEFAULT_RENEW_EVERY);
        let (ra, rb) = tokio::join!(a.lock_operation("failover", Duration::ZERO), b.lock_operation("failover", Duration::ZERO));
        assert!(ra.is_ok() != rb.is_ok(), "exactly one of two racing takers gets it: {:?} / {:?}", ra.as_ref().err(), rb.as_ref().err());
        for n in ["db1", "db2", "db3"] {
            assert_eq!(tombstones(&hosts.join("oplock-t").join(n)), 1, "{n}");
        }
        for r in [ra, rb].into_iter().flatten() {
            r.release().await;
        }
    }

    /// An admin process that dies holding the host lock: renewed while it lived, broken
    /// once its lease ran out.
    #[tokio::test]
    async fn a_dead_holders_host_lock_expires() {
        let tmp = tempfile::tempdir().unwrap();
        let hosts = tmp.path().join("hosts");
        let child = Child::start(&tmp.path().join("dead-admin"), Some(&hosts)).await;
        let d = deployment("oplock-t", &tmp.path().join("admin"), Some(&hosts), &[], 60, DEFAULT_RENEW_EVERY);
        // Longer than its 2 s lease: it renews while it lives.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let e = locked_text(d.lock_operation("failover", Duration::ZERO).await);
        assert!(e.contains("child-failover") && e.contains(&format!("pid {}", child.pid)) && e.contains("on db1, db2"), "{e}");
        child.kill9().await;
        let t0 = Instant::now();
        let l = d.lock_operation("failover", Duration::from_secs(20)).await.unwrap();
        let waited = t0.elapsed();
        // Not before its lease ran out (a live holder's lock is never broken).
        assert!(waited >= Duration::from_millis(500), "{waited:?}");
        assert_eq!(l.hosts(), ["db1", "db2", "db3"]);
        for n in ["db1", "db2", "db3"] {
            assert_eq!(tombstones(&hosts.join("oplock-t").join(n)), 1, "{n}: the dead holder's lock was broken");
        }
        l.release().await;
    }

    /// A holder whose lease ran out (a partition longer than the lease) learns it lost
    /// the lock, and its late release leaves the new holder's lock alone.
    #[tokio::test]
    async fn a_lost_lease_is_detected_and_not_released_from_under_the_new_holder() {
        let tmp = tempfile::tempdir().unwrap();
        let hosts = tmp.path().join("hosts");
        // Lease 1 s and no renewal within the test.
        let a = deployment("oplock-t", &tmp.path().join("a"), Some(&hosts), &[], 1, Duration::from_secs(3600));
        let la = a.lock_operation("failover", Duration::ZERO).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2600)).await;
        let b = deployment("oplock-t", &tmp.path().join("b"), Some(&hosts), &[], 60, DEFAULT_RENEW_EVERY);
        let lb = b.lock_operation("switchover", Duration::from_secs(5)).await.unwrap();
        let e = la.check().unwrap_err().to_string();
        assert!(e.contains("lost") && e.contains("0 of 3"), "{e}");
        la.release().await;
        let c = deployment("oplock-t", &tmp.path().join("c"), Some(&hosts), &[], 60, DEFAULT_RENEW_EVERY);
        let e = locked_text(c.lock_operation("rejoin", Duration::ZERO).await);
        assert!(e.contains("held by switchover"), "{e}");
        lb.check().unwrap();
        lb.release().await;
    }

    #[test]
    fn utc_format() {
        assert_eq!(fmt_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(fmt_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(fmt_utc(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
