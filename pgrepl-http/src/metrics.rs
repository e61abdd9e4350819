//! `/metrics`: an agent's status in the Prometheus text exposition (through
//! `prometheus-client`, the Prometheus organisation's crate). Every series carries the
//! `cluster` and `node` labels; per-standby and per-slot series add `standby` / `slot`.
//!
//! | metric | what |
//! |---|---|
//! | `pgrepl_up` | its PostgreSQL runs (1/0) |
//! | `pgrepl_role{role}` | 1 for what it is: `primary`, `standby`, `stopped` |
//! | `pgrepl_primary` | it answers `/primary` (holds the lease and accepts writes) |
//! | `pgrepl_timeline` | its timeline |
//! | `pgrepl_wal_lsn_bytes` | its WAL position (a primary's current, a standby's received) |
//! | `pgrepl_wal_replay_lsn_bytes` | a standby's replayed position |
//! | `pgrepl_standby_lag_bytes` | a standby's distance behind the leader's last published position |
//! | `pgrepl_replay_delay_seconds` | a standby: since the last replayed commit was made on the primary |
//! | `pgrepl_replication_lag_bytes{standby}` | a primary: WAL each standby has still to replay |
//! | `pgrepl_replication_lag_seconds{standby}` | a primary: each standby's `replay_lag` |
//! | `pgrepl_slot_retained_wal_bytes{slot}` | WAL each physical slot keeps |
//! | `pgrepl_slot_active{slot}` | a walsender uses it |
//! | `pgrepl_lease_seconds_left` | the leader: how long it may accept writes without a renewal |
//! | `pgrepl_store_reachable` | the consensus store answered the last read |
//! | `pgrepl_paused` | the agents are paused |
//! | `pgrepl_failovers_total`, `pgrepl_switchovers_total` | promotions recorded in the cluster's topology |
//! | `pgrepl_last_failover_seconds` | how long the last failover's promotion took |
//! | `pgrepl_agent_loops_total` | loops this agent ran |

use std::sync::atomic::AtomicU64;

use pgrepl_core::agent::AgentStatus;
use pgrepl_core::store::MemberRole;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode as text_encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The exposition's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Node {
    cluster: String,
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Role {
    cluster: String,
    node: String,
    role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Standby {
    cluster: String,
    node: String,
    standby: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SlotLabels {
    cluster: String,
    node: String,
    slot: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// One registry per scrape, filled from `st`.
struct Exposition {
    reg: Registry,
    node: Node,
}

impl Exposition {
    fn gauge(&mut self, name: &str, help: &str, v: Option<i64>) {
        let f = Family::<Node, Gauge>::default();
        if let Some(v) = v {
            f.get_or_create(&self.node).set(v);
        }
        self.reg.register(name, help, f);
    }

    fn float(&mut self, name: &str, help: &str, v: Option<f64>) {
        let f = Family::<Node, FloatGauge>::default();
        if let Some(v) = v {
            f.get_or_create(&self.node).set(v);
        }
        self.reg.register(name, help, f);
    }

    fn counter(&mut self, name: &str, help: &str, v: u64) {
        let f = Family::<Node, Counter>::default();
        f.get_or_create(&self.node).inc_by(v);
        self.reg.register(name, help, f);
    }
}

/// The text exposition of `st`.
pub fn encode(st: &AgentStatus) -> String {
    let node = Node { cluster: st.cluster.clone(), node: st.node.clone() };
    let mut e = Exposition { reg: Registry::with_prefix("pgrepl"), node: node.clone() };
    let b = |x: bool| Some(i64::from(x));
    e.gauge("up", "Its PostgreSQL runs and answers (1) or not (0)", b(st.postgres_up));
    let roles = Family::<Role, Gauge>::default();
    for (name, r) in [
        ("primary", MemberRole::Primary),
        ("standby", MemberRole::Standby),
        ("stopped", MemberRole::Stopped),
        ("witness", MemberRole::Witness),
    ] {
        if st.role.is_some() {
            roles
                .get_or_create(&Role { cluster: st.cluster.clone(), node: st.node.clone(), role: name.into() })
                .set(i64::from(st.role == Some(r)));
        }
    }
    e.reg.register("role", "What its server is: 1 for its role", roles);
    e.gauge("primary", "It holds the leader key on a fresh lease and accepts writes (what /primary answers)", b(st.primary_ok()));
    e.gauge("timeline", "Its timeline", st.timeline.map(i64::from));
    e.gauge("wal_lsn_bytes", "Its WAL position: a primary's current one, a standby's last received", st.lsn.map(|l| l.0 as i64));
    e.gauge("wal_replay_lsn_bytes", "A standby's last replayed WAL position", st.replay_lsn.map(|l| l.0 as i64));
    e.gauge("standby_lag_bytes", "A standby's distance behind the leader's last published WAL position", st.lag_bytes.map(|l| l as i64));
    e.float(
        "replay_delay_seconds",
        "A standby: seconds since the last transaction it replayed committed on the primary",
        st.replay_delay_seconds,
    );
    let lag_b = Family::<Standby, Gauge>::default();
    let lag_s = Family::<Standby, FloatGauge>::default();
    for s in &st.standbys {
        let l = Standby { cluster: st.cluster.clone(), node: st.node.clone(), standby: s.name.clone() };
        if let Some(b) = s.lag_bytes {
            lag_b.get_or_create(&l).set(b as i64);
        }
        if let Some(x) = s.lag_seconds {
            lag_s.get_or_create(&l).set(x);
        }
    }
    e.reg.register("replication_lag_bytes", "A primary: WAL each standby has still to replay", lag_b);
    e.reg.register("replication_lag_seconds", "A primary: each standby's replay_lag", lag_s);
    let retained = Family::<SlotLabels, Gauge>::default();
    let active = Family::<SlotLabels, Gauge>::default();
    for s in &st.slots {
        let l = SlotLabels { cluster: st.cluster.clone(), node: st.node.clone(), slot: s.name.clone() };
        if let Some(b) = s.retained_bytes {
            retained.get_or_create(&l).set(b as i64);
        }
        active.get_or_create(&l).set(i64::from(s.active));
    }
    e.reg.register("slot_retained_wal_bytes", "WAL each physical replication slot keeps from removal", retained);
    e.reg.register("slot_active", "A walsender uses the slot", active);
    let left = if st.holds_lease { st.lease_left_ms.map(|ms| ms as f64 / 1000.0) } else { None };
    e.float("lease_seconds_left", "The leader: seconds it may still accept writes without renewing its lease", left);
    e.gauge("store_reachable", "The consensus store answered the agent's last read", b(st.store_reachable));
    e.gauge("paused", "The agents are paused (observe only)", b(st.paused));
    e.counter("failovers", "Failovers recorded in the cluster's topology", st.failovers);
    e.counter("switchovers", "Switchovers recorded in the cluster's topology", st.switchovers);
    e.float("last_failover_seconds", "How long the last failover's promotion took", st.last_failover_ms.map(|ms| ms as f64 / 1000.0));
    e.counter("agent_loops", "Loops this agent ran", st.loops);
    let mut out = String::new();
    text_encode(&mut out, &e.reg).expect("writing to a String cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgrepl_core::agent::StandbyStat;
    use pgrepl_core::lsn::Lsn;
    use pgrepl_core::observe::Slot;

    fn parse(text: &str) -> prometheus_parse::Scrape {
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("a valid exposition")
    }

    fn value(s: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>) -> Option<f64> {
        s.samples.iter().find(|x| x.metric == name && label.is_none_or(|(k, v)| x.labels.get(k) == Some(v))).map(|x| match x.value {
            prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
    }

    #[test]
    fn a_primary_with_standbys_and_slots() {
        let st = AgentStatus {
            cluster: "c".into(),
            node: "db1".into(),
            loops: 42,
            postgres_up: true,
            role: Some(MemberRole::Primary),
            timeline: Some(3),
            lsn: Some(Lsn(0x3000060)),
            leader: Some("db1".into()),
            holds_lease: true,
            lease_left_ms: Some(1500),
            store_reachable: true,
            standbys: vec![StandbyStat {
                name: "db2".into(),
                state: "streaming".into(),
                sync_state: "quorum".into(),
                lag_bytes: Some(4096),
                lag_seconds: Some(0.25),
            }],
            slots: vec![Slot { name: "pgrepl_db2".into(), active: true, retained_bytes: Some(8192) }],
            failovers: 2,
            switchovers: 1,
            last_failover_ms: Some(420),
            at: Some(std::time::Instant::now()),
            ..AgentStatus::default()
        };
        let s = parse(&encode(&st));
        assert_eq!(value(&s, "pgrepl_up", None), Some(1.0));
        assert_eq!(value(&s, "pgrepl_primary", None), Some(1.0));
        assert_eq!(value(&s, "pgrepl_role", Some(("role", "primary"))), Some(1.0));
        assert_eq!(value(&s, "pgrepl_role", Some(("role", "standby"))), Some(0.0));
        assert_eq!(value(&s, "pgrepl_timeline", None), Some(3.0));
        assert_eq!(value(&s, "pgrepl_wal_lsn_bytes", None), Some(f64::from(0x3000060)));
        assert_eq!(value(&s, "pgrepl_replication_lag_bytes", Some(("standby", "db2"))), Some(4096.0));
        assert_eq!(value(&s, "pgrepl_replication_lag_seconds", Some(("standby", "db2"))), Some(0.25));
        assert_eq!(value(&s, "pgrepl_slot_retained_wal_bytes", Some(("slot", "pgrepl_db2"))), Some(8192.0));
        assert_eq!(value(&s, "pgrepl_lease_seconds_left", None), Some(1.5));
        assert_eq!(value(&s, "pgrepl_failovers_total", None), Some(2.0));
        assert_eq!(value(&s, "pgrepl_switchovers_total", None), Some(1.0));
        assert_eq!(value(&s, "pgrepl_last_failover_seconds", None), Some(0.42));
        assert_eq!(value(&s, "pgrepl_agent_loops_total", None), Some(42.0));
        assert!(s.samples.iter().all(|x| x.labels.get("cluster") == Some("c") && x.labels.get("node") == Some("db1")));
    }

    #[test]
    fn before_the_first_loop_nothing_is_claimed() {
        let s = parse(&encode(&AgentStatus { cluster: "c".into(), node: "db2".into(), ..AgentStatus::default() }));
        assert_eq!(value(&s, "pgrepl_up", None), Some(0.0));
        assert_eq!(value(&s, "pgrepl_primary", None), Some(0.0));
        assert_eq!(value(&s, "pgrepl_timeline", None), None, "unknown: no sample");
        assert_eq!(value(&s, "pgrepl_role", None), None);
    }
}
