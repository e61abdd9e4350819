//! etcd's own leadership, which pgrepl keeps off the host of the PostgreSQL primary: etcd
//! 3.4 restarts every lease at its full ttl when its leader changes, so a primary's host
//! that also holds etcd's leader makes its own loss cost etcd's election plus a whole ttl
//! before anyone may take over. Asked of one member (the store's first endpoint): which
//! member it is and which leads, the members, and a move of the leadership (etcd's
//! `MoveLeader`, only the leader carries it out).

use serde_json::{Value, json};

use crate::client::Kind;
use crate::{EtcdStore, rejected};
use pgrepl_core::store::StoreError;

/// A member ID (etcd's uint64, a string in the JSON gateway).
fn id(v: &Value, field: &str) -> Result<u64, StoreError> {
    match v.get(field) {
        Some(Value::String(s)) => s.parse().map_err(|_| StoreError::Rejected(format!("etcd: {field} is not a member ID: {s}"))),
        Some(Value::Number(n)) => n.as_u64().ok_or_else(|| StoreError::Rejected(format!("etcd: {field} is not a member ID: {n}"))),
        _ => Err(StoreError::Rejected(format!("etcd: no {field} in {v}"))),
    }
}

impl EtcdStore {
    /// The member answering (the first endpoint's) and the member that leads etcd now.
    pub async fn member_and_leader(&self) -> Result<(u64, u64), StoreError> {
        let v = self.gw.call("/v3/maintenance/status", &json!({}), Kind::Retry).await.map_err(rejected)?;
        let header = v.get("header").cloned().unwrap_or(Value::Null);
        Ok((id(&header, "member_id")?, id(&v, "leader")?))
    }

    /// Every member: its ID and name.
    pub async fn member_names(&self) -> Result<Vec<(u64, String)>, StoreError> {
        let v = self.gw.call("/v3/cluster/member/list", &json!({}), Kind::Retry).await.map_err(rejected)?;
        let members = v.get("members").and_then(Value::as_array).cloned().unwrap_or_default();
        members.iter().map(|m| Ok((id(m, "ID")?, m.get("name").and_then(Value::as_str).unwrap_or_default().to_string()))).collect()
    }

    /// Asks the leader (this store's first endpoint must be it) to hand its leadership to
    /// member `target`.
    pub async fn move_leader(&self, target: u64) -> Result<(), StoreError> {
        self.gw
            .call("/v3/maintenance/transfer-leadership", &json!({ "targetID": target.to_string() }), Kind::Write)
            .await
            .map_err(rejected)?;
        Ok(())
    }
}
