//! The probe: one observation of every node of a deployment, in parallel.
//!
//! An answering node costs one SQL round trip (its role, positions, timeline, walreceiver,
//! running `synchronous_standby_names`, walsenders and slots in one script). Only a node
//! that does not answer costs more: whether its server runs, whether its data directory is
//! a standby's, and its `pg_control` state.

use std::time::Duration;

use futures_util::future::join_all;

use super::server_state::{ServerState as HostServerState, server_state};
use super::{DataDirState, Observed, ObservedCluster, ServerState, apply_probe_rows};
use crate::cluster::Cluster;
use crate::node_handle::NodeHandle;
use crate::pgcontrol;
use crate::render::sql_literal;
use crate::sql::{self, QueryError};
use crate::topology::Topology;
use crate::transport::{Command, TransportError};
use crate::version::Capabilities;

/// Time limit of the probe query of one node.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The probe script for a major: rows `n` (the node), `r` (walsenders), `s` (slots); see
/// [`apply_probe_rows`].
pub fn probe_sql(caps: &Capabilities) -> String {
    let l = &caps.lsn;
    // A standby's timeline: what its walreceiver receives; while that restarts (the
    // primary just died), the newest timeline of the WAL segments it holds; else its last
    // restartpoint's (which lags behind a timeline switch).
    let received =
        if caps.wal_receiver_view { "(SELECT nullif(received_tli, 0)::text FROM pg_catalog.pg_stat_wal_receiver)" } else { "NULL" };
    let segments = format!(
        "(SELECT max(('x' || substr(f, 1, 8))::bit(32)::int)::text FROM pg_catalog.pg_ls_dir({}) f WHERE f ~ '^[0-9A-F]{{24}}$')",
        sql_literal(caps.wal_dir)
    );
    let restartpoint = if caps.control_functions { "(pg_catalog.pg_control_checkpoint()).timeline_id::text" } else { "NULL" };
    let tli = format!("coalesce({received}, {segments}, {restartpoint})");
    let status = if caps.wal_receiver_view { "(SELECT status FROM pg_catalog.pg_stat_wal_receiver)" } else { "NULL" };
    let lag = if caps.lag_columns { "extract(epoch FROM replay_lag)" } else { "NULL" };
    // The node's own position: the current one on a primary, the replayed one on a standby.
    let here = format!("CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.{}() ELSE pg_catalog.{}() END", l.last_replay, l.current);
    let slots = if caps.slots {
        format!(
            "SELECT 's', slot_name, active, pg_catalog.{diff}({here}, restart_lsn)::bigint FROM pg_catalog.pg_replication_slots WHERE slot_type = 'physical';\n",
            diff = l.diff
        )
    } else {
        String::new()
    };
    let behind = format!("pg_catalog.{}({here}, replay{})::bigint", l.diff, l.stat_column_suffix);
    format!(
        "SELECT 'n', pg_catalog.pg_is_in_recovery(), \
           CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.{replay}()::text ELSE pg_catalog.{current}()::text END, \
           CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.{receive}()::text END, \
           CASE WHEN pg_catalog.pg_is_in_recovery() THEN {tli} ELSE 'x' || substr(pg_catalog.{walfile}(pg_catalog.{current}()), 1, 8) END, \
           {status}, \
           extract(epoch FROM now() - pg_catalog.pg_last_xact_replay_timestamp()), \
           pg_catalog.current_setting('synchronous_standby_names');\n\
         SELECT 'r', application_name, state, sync_state, {lag}, {behind} FROM pg_catalog.pg_stat_replication;\n{slots}",
        replay = l.last_replay,
        current = l.current,
        receive = l.last_receive,
        walfile = l.walfile_name,
    )
}

/// The query of a node's [`RestartSettings`](super::RestartSettings): `p` rows (see
/// [`super::parse_settings_rows`]). 9.5+: the settings pending a restart (on a primary,
/// not those that apply only in recovery, such as the `recovery_target_timeline` a former
/// standby's files no longer set: they matter only once it is a standby again, and it
/// becomes one through a restart) and, for the
/// [`STANDBY_LIMITS`](super::STANDBY_LIMITS), the files' value (the last entry
/// `pg_file_settings` lists; the built-in default when no file sets it); before: the
/// limits as they run.
pub fn settings_sql(caps: &Capabilities) -> String {
    let limits = super::STANDBY_LIMITS.iter().map(|n| sql_literal(n)).collect::<Vec<_>>().join(", ");
    if caps.pending_restart {
        format!(
            "SELECT 'p', s.name, s.setting, \
               s.pending_restart AND NOT (NOT pg_catalog.pg_is_in_recovery() AND ({RECOVERY_ONLY})), \
               CASE WHEN s.pending_restart THEN coalesce((SELECT f.setting FROM pg_catalog.pg_file_settings f \
                 WHERE f.name = s.name AND (f.error IS NULL OR f.error = 'setting could not be applied') \
                 ORDER BY f.seqno DESC LIMIT 1), s.boot_val) ELSE s.setting END \
             FROM pg_catalog.pg_settings s WHERE s.pending_restart OR s.name IN ({limits});"
        )
    } else {
        format!("SELECT 'p', s.name, s.setting, 'f', NULL FROM pg_catalog.pg_settings s WHERE s.name IN ({limits});")
    }
}

/// The settings that apply only to a server in recovery (a condition on `s.name`).
const RECOVERY_ONLY: &str = "s.name LIKE 'recovery\\_%' OR s.name IN ('primary_conninfo', 'primary_slot_name', 'restore_command', \
     'archive_cleanup_command', 'promote_trigger_file', 'hot_standby', 'standby_mode', 'trigger_file')";

/// Reads the [`RestartSettings`](super::RestartSettings) of every node of `obs` that
/// answered (one query each, in parallel); a node whose query fails keeps `None`.
pub async fn observe_settings(cluster: &Cluster, handles: &[NodeHandle], caps: &Capabilities, obs: &mut ObservedCluster) {
    let q = settings_sql(caps);
    let q = &q;
    let view: &ObservedCluster = obs;
    let read = join_all(cluster.nodes.iter().map(|n| async move {
        let answered = view.get(&n.name).answered();
        let h = handles.iter().find(|h| h.name == n.name);
        match (answered, h) {
            (true, Some(h)) => sql::query(&*h.transport, &h.layout, n.port, q, PROBE_TIMEOUT)
                .await
                .ok()
                .map(|rows| (n.name.clone(), super::parse_settings_rows(&rows, caps.pending_restart))),
            _ => None,
        }
    }))
    .await;
    for (name, s) in read.into_iter().flatten() {
        if let Some(o) = obs.nodes.iter_mut().find(|o| o.node == name) {
            o.settings = Some(s);
        }
    }
}

/// Whether a transport error means the host itself could not be reached.
fn host_unreachable(e: &TransportError) -> bool {
    matches!(e, TransportError::Connect(_) | TransportError::Auth(_) | TransportError::HostKey(_) | TransportError::Io(_))
}

/// Observes one node through its handle.
pub async fn probe_node(h: &NodeHandle, port: u16, caps: &Capabilities) -> Observed {
    let mut o = Observed::unknown(&h.name);
    // The query first: a server that answers runs. Only when it does not, ask more.
    let answer = sql::query(&*h.transport, &h.layout, port, &probe_sql(caps), PROBE_TIMEOUT).await;
    let rows = match answer {
        Ok(rows) => rows,
        Err(QueryError::Transport(e)) if host_unreachable(&e) => {
            o.error = Some(format!("host unreachable: {e}"));
            return o;
        }
        Err(e) => {
            let msg = e.to_string();
            // Whether it runs, and what its data directory holds, asked at once.
            let mut dir = Observed::unknown(&h.name);
            let (state, ()) = tokio::join!(server_state(h), inspect_data_dir(h, caps, &mut dir));
            o.standby_configured = dir.standby_configured;
            o.data_dir = dir.data_dir;
            o.unfinished_clone = dir.unfinished_clone;
            o.control_state = dir.control_state;
            match state {
                Err(e) => {
                    o.error = Some(format!("host unreachable: {e}"));
                    return o;
                }
                Ok(st) => {
                    o.host_reachable = true;
                    o.server = match st {
                        HostServerState::Stopped => ServerState::Stopped,
                        HostServerState::Starting => ServerState::Starting,
                        _ if msg.contains("starting up") || msg.contains("not yet accepting connections") => ServerState::Starting,
                        _ => ServerState::Unresponsive,
                    };
                    if st != HostServerState::Stopped {
                        o.error = Some(msg);
                    }
                }
            }
            return o;
        }
    };
    o.host_reachable = true;
    apply_probe_rows(&mut o, &rows);
    if o.server != ServerState::Running {
        o.server = ServerState::Unresponsive;
        o.error = Some("the probe query returned no row".into());
    }
    o
}

/// For a node whose server does not answer: is its data directory a standby's, and what
/// does pg_control say (one command, one file read).
async fn inspect_data_dir(h: &NodeHandle, caps: &Capabilities, o: &mut Observed) {
    let d = &h.layout.data_dir;
    // Exit 0: a standby's; 1: a cluster, not a standby's; 3: files, no cluster; 4: empty or
    // absent. Prints "unfinished-clone" when pgrepl's marker of a clone under way is there.
    let marker = h.layout.clone_marker();
    let test = Command {
        user: h.transport.admin_user().map(str::to_string),
        ..Command::new("sh").args([
            "-c",
            "if test -e \"$2\"; then echo unfinished-clone; fi; \
             if ! test -e \"$1/PG_VERSION\"; then if test -n \"$(ls -A \"$1\" 2>/dev/null)\"; then exit 3; else exit 4; fi; fi; \
             test -e \"$1/standby.signal\" -o -e \"$1/recovery.conf\"",
            "sh",
            d.as_str(),
            marker.as_str(),
        ])
    };
    let control_path = format!("{d}/global/pg_control");
    let (status, control) = tokio::join!(h.transport.exec(&test), h.transport.read_file(&control_path));
    let (status, stdout) = match status {
        Ok(o) => (Some(o.status), o.stdout),
        Err(_) => (None, String::new()),
    };
    o.unfinished_clone = stdout.contains("unfinished-clone");
    o.standby_configured = match status {
        Some(0) => Some(true),
        Some(1) => Some(false),
        _ => None,
    };
    o.data_dir = match status {
        Some(0 | 1) => Some(DataDirState::Cluster),
        Some(3) => Some(DataDirState::Foreign),
        Some(4) => Some(DataDirState::Missing),
        _ => None,
    };
    if o.data_dir != Some(DataDirState::Cluster) {
        return;
    }
    if let Ok(Some(b)) = control {
        o.control_state = pgcontrol::parse_control(&b, &caps.pg_control).ok().map(|c| c.state);
    }
}

/// Observes every node of `cluster` (handles for the reachable hosts; `unreachable` names
/// the hosts that could not be connected to, with why), and looks for signs of life of the
/// nodes that could not be reached: a standby still streaming from one, its port answering
/// from here.
pub async fn observe_cluster(
    cluster: &Cluster,
    handles: &[NodeHandle],
    unreachable: &[(String, String)],
    caps: &Capabilities,
    topology: &Topology,
) -> ObservedCluster {
    let mut nodes = join_all(cluster.nodes.iter().map(|n| async move {
        let mut o = match handles.iter().find(|h| h.name == n.name) {
            Some(h) => probe_node(h, n.port, caps).await,
            None => {
                let mut o = Observed::unknown(&n.name);
                o.error = Some(
                    unreachable
                        .iter()
                        .find(|(u, _)| *u == n.name)
                        .map(|(_, e)| format!("host unreachable: {e}"))
                        .unwrap_or_else(|| "no host".into()),
                );
                o
            }
        };
        o.fenced = topology.is_fenced(&n.name);
        o
    }))
    .await;
    // Signs of life of what could not be reached.
    for i in 0..nodes.len() {
        if nodes[i].host_reachable {
            continue;
        }
        let n = &cluster.nodes[i];
        let mut evidence = Vec::new();
        for d in cluster.downstream(&n.name) {
            if let Some(od) = nodes.iter().find(|o| o.node == d.name) {
                if od.receiver.as_deref() == Some("streaming") {
                    evidence.push(format!("{} still streams from it", d.name));
                }
            }
        }
        if let Some(a) = &n.address {
            if crate::machine::port_in_use(a, n.port).await {
                evidence.push(format!("its port {a}:{} accepts connections", n.port));
            }
        }
        nodes[i].alive_evidence = evidence;
    }
    ObservedCluster { nodes, topology: topology.clone() }
}
