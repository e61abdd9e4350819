//! Acting on one server: reading its pg_control and WAL, stopping, promoting, waiting for
//! replay and for synchronous standbys, slots, repointing.

use super::*;

/// Reads and checks pg_control (read again when caught mid-write).
pub(super) async fn read_control(h: &NodeHandle, caps: &Capabilities) -> Result<ControlFile, Error> {
    let path = format!("{}/global/pg_control", h.layout.data_dir);
    let mut last = String::new();
    for _ in 0..CONTROL_READ_ATTEMPTS {
        match h.transport.read_file(&path).await.map_err(|e| tr(&h.name, "read pg_control", e))? {
            None => return Err(Error::node(&h.name, format!("{path} does not exist: there is no cluster in {}", h.layout.data_dir))),
            Some(b) => match pgcontrol::parse_control(&b, &caps.pg_control) {
                Ok(c) => return Ok(c),
                Err(e) => last = e.to_string(),
            },
        }
        tokio::time::sleep(FAST_POLL).await;
    }
    Err(Error::node(&h.name, format!("could not read {path}: {last}")))
}

/// The newest timeline's file of each WAL segment in a node's WAL directory.
pub(super) async fn wal_index(h: &NodeHandle, caps: &Capabilities, seg_size: u64) -> Result<std::collections::BTreeMap<u64, u32>, Error> {
    let dir = format!("{}/{}", h.layout.data_dir, caps.wal_dir);
    let ls = h
        .transport
        .run(&Command::new("ls").args(["-1", dir.as_str()]).user(h.layout.os_user.clone()))
        .await
        .map_err(|e| tr(&h.name, "list the WAL directory", e))?;
    let mut m = std::collections::BTreeMap::new();
    for n in ls.stdout.lines() {
        if let Some((tli, segno)) = pgcontrol::parse_wal_file_name(n.trim(), seg_size) {
            let e = m.entry(segno).or_insert(tli);
            *e = (*e).max(tli);
        }
    }
    Ok(m)
}

pub(super) async fn read_wal_file(
    h: &NodeHandle,
    caps: &Capabilities,
    tli: u32,
    segno: u64,
    seg_size: u64,
) -> Result<Option<Vec<u8>>, Error> {
    let path = format!("{}/{}/{}", h.layout.data_dir, caps.wal_dir, pgcontrol::wal_file_name(tli, segno, seg_size));
    h.transport.read_file(&path).await.map_err(|e| tr(&h.name, &format!("read {path}"), e))
}

/// `n` bytes of a node's WAL at `at` (from the newest timeline's file of each segment);
/// `None` when a segment is not on disk any more.
pub(super) async fn read_wal_bytes(h: &NodeHandle, caps: &Capabilities, at: Lsn, n: u64, seg_size: u64) -> Result<Option<Vec<u8>>, Error> {
    let files = wal_index(h, caps, seg_size).await?;
    let mut out = Vec::new();
    let mut pos = at.0;
    while (out.len() as u64) < n {
        let segno = pos / seg_size;
        let Some(&tli) = files.get(&segno) else { return Ok(None) };
        let Some(data) = read_wal_file(h, caps, tli, segno, seg_size).await? else { return Ok(None) };
        if data.len() as u64 != seg_size {
            return Ok(None);
        }
        let off = (pos % seg_size) as usize;
        let take = ((n - out.len() as u64) as usize).min(data.len() - off);
        out.extend_from_slice(&data[off..off + take]);
        pos += take as u64;
    }
    Ok(Some(out))
}

/// The end of a stopped node's WAL: records read forward from its last checkpoint, with
/// the timeline of the segment file it ends in and the segment size. `None` when this
/// major's WAL format is not read by pgrepl (≤9.4) or the checkpoint record is not on disk.
pub(super) async fn scan_wal_end(h: &NodeHandle, caps: &Capabilities, control: &ControlFile) -> Result<Option<(WalEnd, u32, u64)>, Error> {
    if !caps.wal_end_scan {
        return Ok(None);
    }
    let mut seg_size = DEFAULT_SEG_SIZE;
    let mut files = wal_index(h, caps, seg_size).await?;
    let start = control.checkpoint.0 / seg_size;
    let Some(&tli) = files.get(&start) else { return Ok(None) };
    let Some(first) = read_wal_file(h, caps, tli, start, seg_size).await? else { return Ok(None) };
    if first.len() as u64 != seg_size {
        // Another segment size (initdb --wal-segsize): the file itself says which.
        let len = first.len() as u64;
        if !len.is_power_of_two() || !(1 << 20..=1 << 30).contains(&len) {
            return Ok(None);
        }
        seg_size = len;
        files = wal_index(h, caps, seg_size).await?;
    }
    let mut scanner = WalScanner::new(control.checkpoint, seg_size);
    let mut seg_tli: Vec<(u64, u32)> = Vec::new();
    for _ in 0..MAX_WAL_SCAN_SEGMENTS {
        let segno = scanner.next_segment();
        let Some(&tli) = files.get(&segno) else {
            scanner.finish();
            break;
        };
        let data = if segno == start && first.len() as u64 == seg_size {
            Some(first.clone())
        } else {
            read_wal_file(h, caps, tli, segno, seg_size).await?
        };
        let Some(data) = data else {
            scanner.finish();
            break;
        };
        seg_tli.push((segno, tli));
        if !scanner.feed(segno, &data) {
            break;
        }
    }
    Ok(scanner.end().map(|e| {
        let seg = e.last_record.0 / seg_size;
        let tli = seg_tli.iter().find(|(s, _)| *s == seg).map(|(_, t)| *t).unwrap_or(e.timeline).max(e.timeline);
        (e, tli, seg_size)
    }))
}

/// The history of timeline `tli` (empty for timeline 1), from the node's WAL directory.
pub(super) async fn read_history(h: &NodeHandle, caps: &Capabilities, tli: u32) -> Result<Vec<HistoryEntry>, Error> {
    if tli <= 1 {
        return Ok(Vec::new());
    }
    let path = format!("{}/{}/{}", h.layout.data_dir, caps.wal_dir, pgcontrol::history_file_name(tli));
    match h.transport.read_file(&path).await.map_err(|e| tr(&h.name, "read the timeline history", e))? {
        Some(b) => Ok(pgcontrol::parse_history(&String::from_utf8_lossy(&b))),
        None => Err(Error::node(&h.name, format!("{path} is missing: the timeline history of timeline {tli} is unknown"))),
    }
}

/// The primary's timeline, from the WAL file name of its current position.
pub(super) async fn primary_timeline(h: &NodeHandle, port: u16, caps: &Capabilities) -> Result<Option<u32>, Error> {
    let q = format!("SELECT substr(pg_catalog.{}(pg_catalog.{}()), 1, 8);", caps.lsn.walfile_name, caps.lsn.current);
    Ok(query_one(h, port, &q, "read the timeline").await?.and_then(|t| u32::from_str_radix(&t, 16).ok()))
}

pub(super) fn lsn_of(s: Option<String>) -> Option<Lsn> {
    s.and_then(|s| s.parse().ok())
}

pub(super) async fn current_lsn(h: &NodeHandle, port: u16, caps: &Capabilities) -> Result<Option<Lsn>, Error> {
    let q = format!("SELECT pg_catalog.{}()::text;", caps.lsn.current);
    Ok(lsn_of(query_one(h, port, &q, "read the WAL position").await?))
}

/// Removes standby.signal and recovery.conf from a stopped node's data directory (it
/// starts as a primary again: only when abandoning a switchover before any promotion).
pub(super) async fn remove_standby_signal(h: &NodeHandle) -> Result<(), Error> {
    for f in ["standby.signal", "recovery.conf"] {
        h.transport.remove_file(&format!("{}/{f}", h.layout.data_dir)).await.map_err(|e| tr(&h.name, &format!("remove {f}"), e))?;
    }
    Ok(())
}

/// The stop command in immediate mode (no shutdown checkpoint; for fencing only).
pub(super) fn immediate_stop(r: &RenderedNode) -> Command {
    let mut c = Command::from_line(&r.commands.stop);
    for a in &mut c.args {
        if a == "fast" {
            *a = "immediate".into();
        }
    }
    c
}

/// Stops a node's server through its own service command; with `escalate`, in immediate
/// mode when the fast stop does not finish in time. Confirms it stopped.
pub(super) async fn stop_server(h: &NodeHandle, r: &RenderedNode, timeout: Duration, escalate: bool) -> Result<(), Error> {
    let _ = h.transport.exec(&Command::from_line(&r.commands.stop).timeout(timeout)).await;
    if !is_running(h).await.map_err(|e| tr(&h.name, "check whether the server runs", e))? {
        return Ok(());
    }
    if escalate {
        let _ = h.transport.exec(&immediate_stop(r).timeout(timeout)).await;
        if !is_running(h).await.map_err(|e| tr(&h.name, "check whether the server runs", e))? {
            return Ok(());
        }
    }
    Err(Error::node(&h.name, "its server still runs after the stop command"))
}

/// A CHECKPOINT on a freshly promoted primary, once writes flow again (outside the write
/// gap). Until its first checkpoint the control file still names the old timeline (up to
/// 15 the end-of-recovery checkpoint is spread out), and a later `pg_rewind` against this
/// node would pick a wrong divergence point and fall back to a re-clone.
pub(super) async fn checkpoint_after_promotion(h: &NodeHandle, port: u16, actions: &mut Vec<Action>, warnings: &mut Vec<String>) {
    let t = Instant::now();
    match sql::query(&*h.transport, &h.layout, port, "CHECKPOINT;", PROMOTE_DEADLINE).await {
        Ok(_) => act(actions, &h.name, "CHECKPOINT after the promotion", t),
        Err(e) => warnings.push(format!("{}: CHECKPOINT after the promotion failed: {e}", h.name)),
    }
}

/// Promotes a standby the way its major does (`r` rendered for it as a standby) and
/// waits until it accepts writes. Over SQL (12+) one session asks for the promotion and
/// polls the end of recovery inside the server every 5 ms; `pg_ctl promote -w` and the
/// trigger file wait in 100 ms steps or not at all, so they run in the background while
/// the end of recovery is polled every [`FAST_POLL`].
///
/// With `reload`, its configuration is reloaded first (in the same session when the
/// promotion is SQL), so the primary's settings written just before are in effect when it
/// accepts its first write.
pub(super) async fn promote(h: &NodeHandle, port: u16, r: &RenderedNode, reload: bool) -> Result<(), Error> {
    if reload && !matches!(r.commands.promote, Some(Promote::Sql { .. })) {
        h.transport.run(&Command::from_line(&r.commands.reload)).await.map_err(|e| tr(&h.name, "reload the configuration", e))?;
    }
    let call: tokio::task::JoinHandle<Result<(), Error>> = match &r.commands.promote {
        Some(Promote::Sql { sql: q }) => {
            let q = if reload { format!("SELECT pg_catalog.pg_reload_conf();\n{q}") } else { q.clone() };
            let rows = sql::query(&*h.transport, &h.layout, port, &q, PROMOTE_DEADLINE).await.map_err(|e| sqlerr(&h.name, "promote", e))?;
            return match rows.last().and_then(|r| r.first().cloned().flatten()).as_deref() {
                Some("t") => Ok(()),
                _ => Err(Error::Timeout {
                    node: h.name.clone(),
                    waited: PROMOTE_DEADLINE,
                    waiting_for: "the end of recovery after promotion".into(),
                }),
            };
        }
        Some(Promote::Command { command }) => {
            let (h, c) = (h.clone(), Command::from_line(command).timeout(PROMOTE_DEADLINE));
            tokio::spawn(async move { h.transport.run(&c).await.map(|_| ()).map_err(|e| tr(&h.name, "promote (pg_ctl promote)", e)) })
        }
        Some(Promote::TriggerFile { path }) => {
            h.transport
                .write_file(path, b"promote\n", 0o600, Some(&h.layout.os_user))
                .await
                .map_err(|e| tr(&h.name, "create the trigger file", e))?;
            tokio::spawn(async { Ok(()) })
        }
        None => return Err(Error::node(&h.name, "no promotion method rendered (it is not a standby)")),
    };
    let start = Instant::now();
    let mut call = Some(call);
    loop {
        if let Ok(Some(v)) = sql::query_one(&*h.transport, &h.layout, port, "SELECT pg_catalog.pg_is_in_recovery();", PROBE_TIMEOUT).await {
            if v == "f" {
                return Ok(());
            }
        }
        if call.as_ref().is_some_and(|c| c.is_finished()) {
            // The command ended and recovery did not (yet): its error, if any, is the answer.
            match call.take().expect("checked").await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(e) => return Err(Error::node(&h.name, format!("the promotion task failed: {e}"))),
            }
        }
        if start.elapsed() > PROMOTE_DEADLINE {
            return Err(Error::Timeout {
                node: h.name.clone(),
                waited: start.elapsed(),
                waiting_for: "the end of recovery after promotion".into(),
            });
        }
        tokio::time::sleep(FAST_POLL).await;
    }
}

/// Waits until pg_control says the server shut down cleanly (its shutdown checkpoint is
/// written: nothing can write WAL any more), while its stop command runs in `stop`.
pub(super) async fn wait_shutdown_checkpoint(
    h: &NodeHandle,
    caps: &Capabilities,
    stop: &tokio::task::JoinHandle<Result<(), Error>>,
    deadline: Duration,
) -> Result<ControlFile, Error> {
    let path = format!("{}/global/pg_control", h.layout.data_dir);
    let start = Instant::now();
    loop {
        let finished = stop.is_finished();
        if let Ok(Some(b)) = h.transport.read_file(&path).await {
            if let Ok(c) = pgcontrol::parse_control(&b, &caps.pg_control) {
                if c.state == pgcontrol::DbState::ShutDown {
                    return Ok(c);
                }
                if finished {
                    return Err(Error::node(&h.name, format!("its stop ended but pg_control says \"{}\", not a clean shutdown", c.state)));
                }
            }
        }
        if finished && start.elapsed() > Duration::from_secs(1) {
            return Err(Error::node(&h.name, "its stop command ended without a readable clean shutdown in pg_control"));
        }
        if start.elapsed() > deadline {
            return Err(Error::Timeout { node: h.name.clone(), waited: start.elapsed(), waiting_for: "the shutdown checkpoint".into() });
        }
        tokio::time::sleep(FAST_POLL).await;
    }
}

/// Waits until the standby has replayed past `target`; returns its replay position.
pub(super) async fn wait_replayed_past(
    h: &NodeHandle,
    port: u16,
    caps: &Capabilities,
    target: Lsn,
    deadline: Duration,
) -> Result<Lsn, Error> {
    let q = format!("SELECT pg_catalog.{}()::text;", caps.lsn.last_replay);
    let start = Instant::now();
    loop {
        if let Ok(Some(l)) = sql::query_one(&*h.transport, &h.layout, port, &q, PROBE_TIMEOUT).await.map(lsn_of) {
            if l > target {
                return Ok(l);
            }
        }
        if start.elapsed() > deadline {
            return Err(Error::Timeout {
                node: h.name.clone(),
                waited: start.elapsed(),
                waiting_for: format!("replay of the old primary's shutdown checkpoint at {target}"),
            });
        }
        tokio::time::sleep(FAST_POLL).await;
    }
}

/// Waits until at least `sync.count` synchronous standbys confirm commits on the primary.
pub(super) async fn wait_sync_ready(h: &NodeHandle, port: u16, sync: &Sync, deadline: Duration) -> Result<(), Error> {
    if sync.mode == SyncMode::Off || sync.count == 0 {
        return Ok(());
    }
    let q = "SELECT count(*) FROM pg_catalog.pg_stat_replication WHERE state = 'streaming' AND sync_state IN ('sync', 'quorum');";
    let start = Instant::now();
    loop {
        if let Ok(Some(c)) = sql::query_one(&*h.transport, &h.layout, port, q, PROBE_TIMEOUT).await {
            if c.parse::<u32>().unwrap_or(0) >= sync.count {
                return Ok(());
            }
        }
        if start.elapsed() > deadline {
            return Err(Error::Timeout {
                node: h.name.clone(),
                waited: start.elapsed(),
                waiting_for: format!("{} synchronous standby(s) to confirm commits", sync.count),
            });
        }
        tokio::time::sleep(FAST_POLL).await;
    }
}

/// Creates on `n` (a primary, or a standby about to be promoted: physical slots can be made
/// in recovery) the slots its standbys in `run.cluster` use, where missing, in one
/// statement. Returns the actions (`create slot <name>`).
pub(super) async fn make_slots(run: &Run<'_>, n: &Node, h: &NodeHandle) -> Result<Vec<Action>, Error> {
    let wanted: Vec<String> = run.cluster.downstream(&n.name).filter_map(|d| d.slot.as_deref()).map(sql_literal).collect();
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let t = Instant::now();
    let q = format!(
        "SELECT (pg_catalog.pg_create_physical_replication_slot(w)).slot_name FROM unnest(ARRAY[{}]::text[]) w \
         WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots s WHERE s.slot_name = w);",
        wanted.join(", ")
    );
    let rows = run.sql(h, n.port, &q, "create replication slots").await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .map(|s| Action { node: n.name.clone(), what: format!("create slot {s}"), seconds: t.elapsed().as_secs_f64() })
        .collect())
}

/// Drops, on `n`, inactive physical slots pgrepl manages that none of its standbys uses
/// (a former primary keeps its standbys' slots, which would hold WAL forever).
pub(super) async fn drop_stale_slots(run: &Run<'_>, n: &Node, h: &NodeHandle, managed: &[String]) -> Result<Vec<String>, Error> {
    let wanted: Vec<&str> = run.cluster.downstream(&n.name).filter_map(|d| d.slot.as_deref()).collect();
    let rows = run
        .sql(h, n.port, "SELECT slot_name FROM pg_catalog.pg_replication_slots WHERE slot_type = 'physical' AND NOT active;", "list slots")
        .await?;
    let mut dropped = Vec::new();
    for s in rows.into_iter().filter_map(|r| r.into_iter().next().flatten()) {
        if managed.contains(&s) && !wanted.contains(&s.as_str()) {
            run.sql(h, n.port, &format!("SELECT pg_catalog.pg_drop_replication_slot({});", sql_literal(&s)), "drop a stale slot").await?;
            dropped.push(format!("{}:{s}", n.name));
        }
    }
    Ok(dropped)
}

/// Points a running or stopped standby at its upstream in `run.cluster`: files rewritten,
/// then a reload (13+) or a restart (≤12) when they changed, or a start when stopped.
pub(super) async fn repoint(
    run: &Run<'_>,
    n: &Node,
    h: &NodeHandle,
    caps: &Capabilities,
    running: bool,
    prewritten: bool,
) -> Result<Repoint, Error> {
    let r = render_node(run.cluster, &n.name, &h.layout, Some(run.secrets))?;
    let changed = run.write_files(h, &r, true).await? || prewritten;
    if !running {
        run.start(n, h, &r).await?;
        return Ok(Repoint::Started);
    }
    if !changed {
        return Ok(Repoint::Unchanged);
    }
    match caps.conninfo_change {
        ChangeContext::Reload => {
            h.transport.run(&Command::from_line(&r.commands.reload)).await.map_err(|e| tr(&n.name, "reload the configuration", e))?;
            Ok(Repoint::Reloaded)
        }
        ChangeContext::Restart => {
            h.transport
                .run(&Command::from_line(&r.commands.stop).timeout(SERVICE_TIMEOUT))
                .await
                .map_err(|e| tr(&n.name, "stop the server", e))?;
            run.start(n, h, &r).await?;
            Ok(Repoint::Restarted)
        }
    }
}

/// The `synchronous_standby_names` and `synchronous_commit` rendered for the primary.
pub(super) fn sync_settings(r: &RenderedNode) -> (Option<String>, Option<String>) {
    let get = |k: &str| r.settings.iter().find(|(n, _)| n == k).map(|(_, v)| v.trim_matches('\'').to_string());
    (get("synchronous_standby_names"), get("synchronous_commit"))
}

/// What became of a promotion that was requested but not confirmed.
pub(super) enum PromotionOutcome {
    /// It accepts writes.
    Promoted,
    /// It was stopped while still in recovery (pg_control says so), its promotion request removed.
    NotPromoted,
    /// Neither could be established.
    Unknown(String),
}

/// A promotion that was requested but not confirmed (`pg_promote` returned false, the
/// deadline passed, the connection dropped after the request) may still finish: find out.
/// The node is asked for a while; if it still is in recovery it is stopped, and pg_control
/// tells whether it stopped before or after the end of recovery; the promotion request
/// files are removed so that a later start does not promote it.
pub(super) async fn resolve_promotion(h: &NodeHandle, port: u16, r: &RenderedNode, caps: &Capabilities) -> PromotionOutcome {
    for _ in 0..20 {
        if let Ok(Some(v)) = sql::query_one(&*h.transport, &h.layout, port, "SELECT pg_catalog.pg_is_in_recovery();", PROBE_TIMEOUT).await {
            if v == "f" {
                return PromotionOutcome::Promoted;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Err(e) = stop_server(h, r, FENCE_STOP_TIMEOUT, true).await {
        return PromotionOutcome::Unknown(format!("it could not be stopped: {e}"));
    }
    let mut signals = vec![
        format!("{}/promote.signal", h.layout.data_dir),
        format!("{}/promote", h.layout.data_dir),
        format!("{}/fallback_promote", h.layout.data_dir),
    ];
    if let Some(Promote::TriggerFile { path }) = &r.commands.promote {
        signals.push(path.clone());
    }
    for f in &signals {
        if let Err(e) = h.transport.remove_file(f).await {
            return PromotionOutcome::Unknown(format!("its promotion request {f} could not be removed: {e}"));
        }
    }
    match read_control(h, caps).await {
        Ok(c) if c.state == pgcontrol::DbState::ShutDownInRecovery => PromotionOutcome::NotPromoted,
        Ok(c) => PromotionOutcome::Unknown(format!("after the stop pg_control says \"{}\": it may have finished promoting", c.state)),
        Err(e) => PromotionOutcome::Unknown(e.to_string()),
    }
}

impl Op<'_> {
    /// Whether a stopped node's WAL fits the history of `primary` (running); with its end of WAL.
    pub(super) async fn fits_history(
        &self,
        h: &NodeHandle,
        primary: &Node,
        ph: &NodeHandle,
    ) -> Result<(Divergence, Option<(Lsn, u32)>), Error> {
        let control = read_control(h, &self.caps).await?;
        let ptl =
            primary_timeline(ph, primary.port, &self.caps).await?.ok_or_else(|| Error::node(&primary.name, "its timeline is unknown"))?;
        let history = read_history(ph, &self.caps, ptl).await?;
        let scanned = scan_wal_end(h, &self.caps, &control).await?;
        let end = match &scanned {
            Some((e, tli, _)) => Some((e.end, *tli)),
            // Without a scan, a clean shutdown's checkpoint is its last record.
            None if control.state.is_clean_shutdown() => Some((Lsn(control.checkpoint.0 + 1), control.timeline)),
            None => None,
        };
        let Some((end_lsn, tli)) = end else {
            return Err(Error::node(&h.name, "the end of its WAL could not be read"));
        };
        let mut verdict = divergence(tli, end_lsn, ptl, &history);
        // Timelines can agree while the contents do not: a standby started without its
        // standby settings becomes a primary on the same timeline and writes its own WAL.
        if let (Divergence::Follows, Some((e, _, seg_size))) = (verdict, &scanned) {
            let plsn = current_lsn(ph, primary.port, &self.caps).await?;
            verdict = if tli == ptl && plsn.is_some_and(|p| p < e.end) {
                // Ahead of the primary on its own timeline: WAL nobody else wrote.
                Divergence::Conflicting
            } else {
                // Its last record (the header holds the previous record's position and a CRC
                // of the whole record) must be the same bytes in the primary's WAL.
                let n = e.end.bytes_after(e.last_record).min(64);
                let mine = read_wal_bytes(h, &self.caps, e.last_record, n, *seg_size).await?;
                let theirs = read_wal_bytes(ph, &self.caps, e.last_record, n, *seg_size).await?;
                match (mine, theirs) {
                    (Some(a), Some(b)) if a == b => Divergence::Follows,
                    (Some(_), Some(_)) => Divergence::Conflicting,
                    _ => Divergence::Unverifiable,
                }
            };
        }
        Ok((verdict, Some((end_lsn, tli))))
    }
}
