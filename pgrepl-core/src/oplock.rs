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
mod tests;
