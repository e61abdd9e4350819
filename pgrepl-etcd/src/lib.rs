//! pgrepl's consensus store on etcd v3 (3.4 and newer): [`EtcdStore`] implements
//! [`ConsensusStore`] over etcd's v3 JSON gateway (`/v3/kv/range`, `/v3/kv/put`,
//! `/v3/kv/txn`, `/v3/kv/deleterange`, `/v3/lease/grant`, `/v3/lease/keepalive`,
//! `/v3/lease/revoke`, `/v3/watch`, `/v3/auth/authenticate`), with hyper.
//!
//! # Why the JSON gateway over hyper, not the `etcd-client` crate
//!
//! - `etcd-client` (tonic, prost) needs `protoc` at build time, which the build machines
//!   do not have; this crate needs nothing beyond Rust.
//! - Its tree is about 92 crates with tonic; hyper, hyper-util, hyper-rustls and rustls
//!   are already in the lock file through the AWS SDK, and this crate adds about 36 crates
//!   to a build of pgrepl-core, nearly all shared with pgrepl-aws.
//! - `etcd-client` is tested against etcd 3.5 and newer; the lab (Debian 12) has 3.4.23,
//!   whose gateway serves every call pgrepl needs under `/v3/`.
//! - Patroni's etcd3 backend talks to the same gateway, so its behaviour is well trodden.
//!
//! On the wire: keys and values are base64, 64-bit integers are strings, and fields that
//! are false or zero are left out (a failed txn has no `succeeded`, a PUT event no `type`).
//!
//! # Endpoints, time limits and errors
//!
//! Every call goes first to the endpoint that answered last, and moves on to the next
//! one when an endpoint cannot be connected to or says it has no leader (etcd refuses at
//! once, before proposing anything, because every request carries the gRPC metadata
//! `hasleader`). Reads and idempotent calls also move on after any other failure; a write
//! that may have reached etcd does not, and returns [`StoreError::Unavailable`] (the
//! caller reads again). The whole call, failover and authentication included, is bounded
//! by [`EtcdOptions::request_timeout`] (default [`DEFAULT_REQUEST_TIMEOUT`], well within
//! the second in which an agent renews a 3 s lease); after a timeout the next call starts
//! at the next endpoint. "no leader", "request timed out", a broken connection and
//! timeouts are [`StoreError::Unavailable`]; authentication, permission and bad requests
//! are [`StoreError::Rejected`].
//!
//! # TLS and authentication
//!
//! `https://` endpoints are checked against [`EtcdOptions::ca_file`]; a client certificate
//! ([`EtcdOptions::cert_file`], [`EtcdOptions::key_file`]) is presented when given
//! (rustls with its ring provider). With [`EtcdOptions::user`] and
//! [`EtcdOptions::password`], a token from `/v3/auth/authenticate` goes in the
//! `Authorization` header of every request, and a new one is taken when etcd says it is
//! no longer valid. The password is a [`Secret`]: never logged, never in `Debug`.
//!
//! # Leases on etcd 3.4
//!
//! etcd 3.4 has no lease checkpoints: a leader change inside etcd gives every lease its
//! full ttl again. A primary counts its lease on its own clock; it never waits for etcd.
//! Lease ttls are whole seconds in etcd: [`EtcdStore::grant`] rounds up.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use pgrepl_core::secret::Secret;
use pgrepl_core::store::{ConsensusStore, KeyValue, LeaseId, Revision, Snapshot, StoreError, Watch, WatchEvent};
use serde_json::{Value, json};

mod client;
pub mod hosts;
mod leadership;
pub mod pki;

use client::{Fail, Gateway, Kind, WatchStream, watch_error};

/// The default [`EtcdOptions::request_timeout`].
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_millis(400);

/// How to reach an etcd cluster.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// Its client URLs (`http://host:port` or `https://host:port`; `host:port` is http).
    pub endpoints: Vec<String>,
    /// The CA that signed etcd's server certificates (required for https).
    pub ca_file: Option<PathBuf>,
    /// A client certificate (PEM), for etcd's `--client-cert-auth`.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key_file: Option<PathBuf>,
    /// The etcd user, when etcd's authentication is enabled.
    pub user: Option<String>,
    /// Its password.
    pub password: Option<Secret>,
    /// The longest one call may take, moving between endpoints included.
    pub request_timeout: Duration,
}

impl EtcdOptions {
    /// Plain http to `endpoints`, no authentication, the default timeout.
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> EtcdOptions {
        EtcdOptions {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            user: None,
            password: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// What is wrong with [`EtcdOptions`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    /// No endpoint.
    #[error("etcd: no endpoint given")]
    NoEndpoint,
    /// An endpoint that is not a URL pgrepl can use.
    #[error("etcd: endpoint {0:?}: {1}")]
    Endpoint(String, String),
    /// A file that cannot be read or used.
    #[error("etcd: {0} {1}: {2}")]
    File(String, String, String),
    /// The TLS settings.
    #[error("etcd: TLS: {0}")]
    Tls(String),
    /// User and password.
    #[error("etcd: authentication: {0}")]
    Auth(String),
    /// A zero timeout.
    #[error("etcd: request_timeout must be above zero")]
    Timeout,
}

/// A [`ConsensusStore`] on an etcd cluster (see the crate's doc). Clones share their
/// connections.
#[derive(Clone)]
pub struct EtcdStore {
    gw: std::sync::Arc<Gateway>,
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.gw, f)
    }
}

impl EtcdStore {
    /// A store on the cluster `options` describes. Reads the TLS files; connects lazily.
    pub fn new(options: &EtcdOptions) -> Result<EtcdStore, OptionsError> {
        Ok(EtcdStore { gw: std::sync::Arc::new(Gateway::new(options)?) })
    }
}

fn b64(s: &[u8]) -> String {
    B64.encode(s)
}

/// The end of the range of every key starting with `prefix` (etcd's `range_end`).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Empty, or only 0xff bytes: every key from `prefix` on.
    vec![0]
}

/// `key` and `range_end` of a prefix (the empty prefix: every key).
fn prefix_range(prefix: &str) -> (String, String) {
    let key = if prefix.is_empty() { b64(&[0]) } else { b64(prefix.as_bytes()) };
    (key, b64(&prefix_end(prefix.as_bytes())))
}

fn bad(what: &str, v: &Value) -> StoreError {
    StoreError::Unavailable(format!("etcd: an answer pgrepl cannot read ({what}): {v}"))
}

/// An int64 field (a JSON string; absent: 0).
fn int(v: &Value, field: &str) -> Result<i64, StoreError> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::String(s)) => s.parse().map_err(|_| bad(field, v)),
        Some(Value::Number(n)) => n.as_i64().ok_or_else(|| bad(field, v)),
        Some(_) => Err(bad(field, v)),
    }
}

/// A bytes field (base64; absent: empty).
fn bytes(v: &Value, field: &str) -> Result<Vec<u8>, StoreError> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => B64.decode(s).map_err(|_| bad(field, v)),
        Some(_) => Err(bad(field, v)),
    }
}

fn header_revision(v: &Value) -> Result<Revision, StoreError> {
    let h = v.get("header").ok_or_else(|| bad("header", v))?;
    let r = int(h, "revision")?;
    if r <= 0 {
        return Err(bad("header.revision", v));
    }
    Ok(r)
}

fn key_value(kv: &Value) -> Result<KeyValue, StoreError> {
    let lease = int(kv, "lease")?;
    Ok(KeyValue {
        key: String::from_utf8_lossy(&bytes(kv, "key")?).into_owned(),
        value: bytes(kv, "value")?,
        create_revision: int(kv, "create_revision")?,
        mod_revision: int(kv, "mod_revision")?,
        lease: (lease != 0).then_some(lease),
    })
}

fn rejected(f: Fail) -> StoreError {
    match f {
        Fail::Unavailable(m) => StoreError::Unavailable(format!("etcd: {m}")),
        Fail::Etcd { message, .. } => StoreError::Rejected(format!("etcd: {message}")),
    }
}

/// A lease's ttl in etcd's whole seconds, rounded up (at least 1).
fn ttl_seconds(ttl: Duration) -> i64 {
    let s = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i64::try_from(s.max(1)).unwrap_or(i64::MAX)
}

/// The put request of a txn or `/v3/kv/put`.
fn put_request(key: &str, value: &[u8], lease: Option<LeaseId>) -> Value {
    let mut p = json!({ "key": b64(key.as_bytes()), "value": b64(value) });
    if let Some(l) = lease {
        p["lease"] = json!(l.to_string());
    }
    p
}

impl EtcdStore {
    async fn call(&self, path: &str, body: Value, kind: Kind) -> Result<Value, StoreError> {
        self.gw.call(path, &body, kind).await.map_err(rejected)
    }

    /// A txn: whether it succeeded, and its answer.
    async fn txn(&self, compare: Value, success: Value) -> Result<(bool, Value), StoreError> {
        let v = self.call("/v3/kv/txn", json!({ "compare": [compare], "success": [success] }), Kind::Write).await?;
        header_revision(&v)?;
        Ok((v.get("succeeded").and_then(Value::as_bool).unwrap_or(false), v))
    }

    /// The request timeout of this store.
    pub fn request_timeout(&self) -> Duration {
        self.gw.timeout()
    }
}

#[async_trait]
impl ConsensusStore for EtcdStore {
    async fn get_prefix(&self, prefix: &str) -> Result<Snapshot, StoreError> {
        let (key, range_end) = prefix_range(prefix);
        let v = self.call("/v3/kv/range", json!({ "key": key, "range_end": range_end }), Kind::Retry).await?;
        let revision = header_revision(&v)?;
        let mut kvs = match v.get("kvs") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a.iter().map(key_value).collect::<Result<Vec<_>, _>>()?,
            Some(_) => return Err(bad("kvs", &v)),
        };
        kvs.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Snapshot { revision, kvs })
    }

    async fn grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let v = self.call("/v3/lease/grant", json!({ "TTL": ttl_seconds(ttl).to_string() }), Kind::Retry).await?;
        if let Some(e) = v.get("error").and_then(Value::as_str).filter(|e| !e.is_empty()) {
            return Err(StoreError::Rejected(format!("etcd: lease grant: {e}")));
        }
        match int(&v, "ID")? {
            0 => Err(bad("ID", &v)),
            id => Ok(id),
        }
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Option<Duration>, StoreError> {
        let v = self.call("/v3/lease/keepalive", json!({ "ID": lease.to_string() }), Kind::Retry).await?;
        let r = v.get("result").ok_or_else(|| bad("result", &v))?;
        let ttl = int(r, "TTL")?;
        // An unknown or expired lease: TTL 0, left out.
        Ok((ttl > 0).then(|| Duration::from_secs(ttl.unsigned_abs())))
    }

    async fn time_to_live(&self, lease: LeaseId) -> Result<Option<Duration>, StoreError> {
        let v = match self.gw.call("/v3/lease/timetolive", &json!({ "ID": lease.to_string() }), Kind::Retry).await {
            Ok(v) => v,
            Err(Fail::Etcd { code: 5, .. }) => return Ok(None),
            Err(f) => return Err(rejected(f)),
        };
        // An unknown or expired lease: TTL -1 (etcd answers so rather than with NotFound).
        let ttl = int(&v, "TTL")?;
        Ok((ttl >= 0).then(|| Duration::from_secs(ttl.unsigned_abs())))
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        match self.gw.call("/v3/lease/revoke", &json!({ "ID": lease.to_string() }), Kind::Retry).await {
            Ok(_) => Ok(()),
            // Gone already (expired, or revoked by an earlier try): its keys are gone.
            Err(Fail::Etcd { code: 5, .. }) => Ok(()),
            Err(f) => Err(rejected(f)),
        }
    }

    async fn create(&self, key: &str, value: &[u8], lease: Option<LeaseId>) -> Result<bool, StoreError> {
        let compare = json!({ "target": "CREATE", "result": "EQUAL", "key": b64(key.as_bytes()), "create_revision": "0" });
        Ok(self.txn(compare, json!({ "request_put": put_request(key, value, lease) })).await?.0)
    }

    async fn compare_and_set(&self, key: &str, expected: Revision, value: &[u8], lease: Option<LeaseId>) -> Result<bool, StoreError> {
        if expected == 0 {
            return self.create(key, value, lease).await;
        }
        let compare = json!({ "target": "MOD", "result": "EQUAL", "key": b64(key.as_bytes()), "mod_revision": expected.to_string() });
        Ok(self.txn(compare, json!({ "request_put": put_request(key, value, lease) })).await?.0)
    }

    async fn put(&self, key: &str, value: &[u8], lease: Option<LeaseId>) -> Result<Revision, StoreError> {
        let v = self.call("/v3/kv/put", put_request(key, value, lease), Kind::Write).await?;
        header_revision(&v)
    }

    async fn delete_if(&self, key: &str, expected: Revision) -> Result<bool, StoreError> {
        if expected <= 0 {
            // Nothing with that revision exists to delete.
            return Ok(false);
        }
        let compare = json!({ "target": "MOD", "result": "EQUAL", "key": b64(key.as_bytes()), "mod_revision": expected.to_string() });
        let (ok, v) = self.txn(compare, json!({ "request_delete_range": { "key": b64(key.as_bytes()) } })).await?;
        if !ok {
            return Ok(false);
        }
        let deleted = v.pointer("/responses/0/response_delete_range").map(|r| int(r, "deleted")).transpose()?.unwrap_or(0);
        Ok(deleted > 0)
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<(), StoreError> {
        let (key, range_end) = prefix_range(prefix);
        let v = self.call("/v3/kv/deleterange", json!({ "key": key, "range_end": range_end }), Kind::Write).await?;
        header_revision(&v).map(drop)
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<Box<dyn Watch>, StoreError> {
        let (key, range_end) = prefix_range(prefix);
        let start = after.max(0) + 1;
        let body = json!({ "create_request": { "key": key, "range_end": range_end, "start_revision": start.to_string() } });
        let (endpoint, stream) = self.gw.open_watch(&body).await.map_err(rejected)?;
        Ok(Box::new(EtcdWatch { endpoint, stream: Some(stream) }))
    }
}

/// A watch on etcd: one `/v3/watch` stream.
struct EtcdWatch {
    endpoint: String,
    stream: Option<WatchStream>,
}

impl fmt::Debug for EtcdWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdWatch").field("endpoint", &self.endpoint).field("open", &self.stream.is_some()).finish()
    }
}

fn event(e: &Value) -> Result<WatchEvent, StoreError> {
    let kv = e.get("kv").ok_or_else(|| bad("event.kv", e))?;
    match e.get("type").and_then(Value::as_str) {
        // PUT is 0, left out.
        None | Some("PUT") => Ok(WatchEvent::Put(key_value(kv)?)),
        Some("DELETE") => {
            Ok(WatchEvent::Delete { key: String::from_utf8_lossy(&bytes(kv, "key")?).into_owned(), mod_revision: int(kv, "mod_revision")? })
        }
        Some(_) => Err(bad("event.type", e)),
    }
}

#[async_trait]
impl Watch for EtcdWatch {
    async fn next(&mut self) -> Result<Option<Vec<WatchEvent>>, StoreError> {
        // Bounded by the stream: each turn reads one message, and the stream closes when
        // the connection does.
        loop {
            let Some(stream) = self.stream.as_mut() else { return Ok(None) };
            let msg = match stream.next_message().await {
                Ok(Some(m)) => m,
                Ok(None) => {
                    self.stream = None;
                    return Ok(None);
                }
                Err(f) => {
                    self.stream = None;
                    return Err(rejected(f));
                }
            };
            if let Some((code, message)) = watch_error(&msg) {
                self.stream = None;
                return match code {
                    // Compacted: the caller reads again and watches from there.
                    11 => Ok(None),
                    16 | 7 => Err(StoreError::Rejected(format!("etcd: watch on {}: {message}", self.endpoint))),
                    _ => Err(StoreError::Unavailable(format!("etcd: watch on {}: {message}", self.endpoint))),
                };
            }
            let Some(events) = msg.pointer("/result/events").and_then(Value::as_array) else { continue };
            if events.is_empty() {
                continue;
            }
            return events.iter().map(event).collect::<Result<Vec<_>, _>>().map(Some);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ranges() {
        assert_eq!(prefix_end(b"/a/"), b"/a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
        assert_eq!(prefix_end(b""), b"\0");
        assert_eq!(prefix_range(""), (b64(b"\0"), b64(b"\0")));
    }

    #[test]
    fn ttls_round_up_to_seconds() {
        assert_eq!(ttl_seconds(Duration::from_millis(1)), 1);
        assert_eq!(ttl_seconds(Duration::from_secs(3)), 3);
        assert_eq!(ttl_seconds(Duration::from_millis(3001)), 4);
        assert_eq!(ttl_seconds(Duration::ZERO), 1);
    }

    #[test]
    fn answers_are_read_with_etcd_omissions() {
        let kv = json!({"key": b64(b"/k"), "create_revision": "4", "mod_revision": "6", "version": "2", "lease": "77"});
        assert_eq!(
            key_value(&kv).unwrap(),
            KeyValue { key: "/k".into(), value: vec![], create_revision: 4, mod_revision: 6, lease: Some(77) }
        );
        let put = json!({"kv": {"key": b64(b"/k"), "value": b64(b"v"), "create_revision": "4", "mod_revision": "4"}});
        assert!(matches!(event(&put).unwrap(), WatchEvent::Put(kv) if kv.value == b"v" && kv.lease.is_none()));
        let del = json!({"type": "DELETE", "kv": {"key": b64(b"/k"), "mod_revision": "9"}});
        assert_eq!(event(&del).unwrap(), WatchEvent::Delete { key: "/k".into(), mod_revision: 9 });
        assert!(header_revision(&json!({"header": {}})).is_err());
        assert_eq!(header_revision(&json!({"header": {"revision": "12"}})).unwrap(), 12);
    }

    #[test]
    fn options_are_checked() {
        let ok = EtcdOptions::new(["127.0.0.1:2379"]);
        assert!(EtcdStore::new(&ok).is_ok());
        assert_eq!(EtcdStore::new(&EtcdOptions::new(Vec::<String>::new())).unwrap_err(), OptionsError::NoEndpoint);
        let https = EtcdOptions::new(["https://127.0.0.1:2379"]);
        assert!(matches!(EtcdStore::new(&https), Err(OptionsError::Tls(_))));
        let mut half = ok.clone();
        half.user = Some("root".into());
        assert!(matches!(EtcdStore::new(&half), Err(OptionsError::Auth(_))));
        let mut half = ok.clone();
        half.cert_file = Some("/nonexistent.pem".into());
        assert!(matches!(EtcdStore::new(&half), Err(OptionsError::Tls(_))));
        let mut missing = ok.clone();
        missing.ca_file = Some("/nonexistent/ca.pem".into());
        assert!(matches!(EtcdStore::new(&missing), Err(OptionsError::File(..))));
        let mut zero = ok;
        zero.request_timeout = Duration::ZERO;
        assert_eq!(EtcdStore::new(&zero).unwrap_err(), OptionsError::Timeout);
    }

    #[test]
    fn the_password_is_never_in_debug() {
        let mut o = EtcdOptions::new(["127.0.0.1:2379"]);
        o.user = Some("root".into());
        o.password = Some(Secret::new("hunter2-etcd"));
        assert!(!format!("{o:?}").contains("hunter2"));
        let s = EtcdStore::new(&o).unwrap();
        let d = format!("{s:?}");
        assert!(!d.contains("hunter2") && d.contains("root") && d.contains("127.0.0.1:2379"), "{d}");
    }
}
