//! The HTTP side: endpoints, failover, the per-call deadline, TLS, authentication, and
//! the gateway's error answers.

use std::fmt;
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use pgrepl_core::secret::Secret;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::{EtcdOptions, OptionsError};

/// The largest answer read (a range of a whole cluster's keys is a few KiB).
const MAX_BODY: usize = 64 << 20;

/// What a call may do again on another endpoint after an ambiguous failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Reads and idempotent calls (range, grant, keepalive, revoke, authenticate): any
    /// failure moves to the next endpoint while time is left.
    Retry,
    /// Writes: only a failure that proves the request was not carried out (no connection,
    /// "no leader" before the request was proposed) moves on; any other is
    /// [`Fail::Unavailable`], since the write may have happened.
    Write,
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fail {
    /// Nothing is known (no endpoint answered in time, no quorum, a broken connection).
    Unavailable(String),
    /// etcd answered with an error: its gRPC code and message.
    Etcd { code: i64, message: String },
}

/// One endpoint.
#[derive(Clone)]
struct Endpoint {
    /// `scheme://host:port`, without a trailing slash.
    base: String,
}

pub(crate) struct Gateway {
    endpoints: Vec<Endpoint>,
    preferred: AtomicUsize,
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
    user: Option<(String, Secret)>,
    token: Mutex<Option<Arc<str>>>,
}

impl fmt::Debug for Gateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let endpoints: Vec<&str> = self.endpoints.iter().map(|e| e.base.as_str()).collect();
        f.debug_struct("EtcdClient")
            .field("endpoints", &endpoints)
            .field("preferred", &self.preferred.load(Ordering::Relaxed))
            .field("timeout", &self.timeout)
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .finish_non_exhaustive()
    }
}

/// What one exchange with one endpoint gave.
enum Exchange {
    /// The request never reached the endpoint (no connection): safe to send elsewhere.
    NotSent(String),
    /// The connection broke after the request may have been sent.
    Broken(String),
    /// An HTTP answer.
    Answer(StatusCode, Bytes),
}

fn normalize_endpoint(e: &str) -> Result<Endpoint, OptionsError> {
    let e = e.trim();
    let full = if e.contains("://") { e.to_string() } else { format!("http://{e}") };
    let uri: Uri = full.parse().map_err(|err| OptionsError::Endpoint(e.to_string(), format!("{err}")))?;
    let scheme = match uri.scheme_str() {
        Some(s @ ("http" | "https")) => s,
        _ => return Err(OptionsError::Endpoint(e.to_string(), "the scheme is neither http nor https".into())),
    };
    let Some(authority) = uri.authority().filter(|a| !a.host().is_empty()) else {
        return Err(OptionsError::Endpoint(e.to_string(), "no host".into()));
    };
    if uri.path().len() > 1 || uri.query().is_some() {
        return Err(OptionsError::Endpoint(e.to_string(), "expected scheme://host:port".into()));
    }
    Ok(Endpoint { base: format!("{scheme}://{authority}") })
}

fn read_file(what: &str, p: &Path) -> Result<Vec<u8>, OptionsError> {
    fs::read(p).map_err(|e| OptionsError::File(what.to_string(), p.display().to_string(), e.to_string()))
}

fn tls_config(o: &EtcdOptions) -> Result<rustls::ClientConfig, OptionsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = &o.ca_file {
        let pem = read_file("ca_file", ca)?;
        let mut n = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| OptionsError::File("ca_file".into(), ca.display().to_string(), e.to_string()))?;
            roots.add(cert).map_err(|e| OptionsError::File("ca_file".into(), ca.display().to_string(), e.to_string()))?;
            n += 1;
        }
        if n == 0 {
            return Err(OptionsError::File("ca_file".into(), ca.display().to_string(), "no certificate in it".into()));
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| OptionsError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    match (&o.cert_file, &o.key_file) {
        (Some(cert), Some(key)) => {
            let pem = read_file("cert_file", cert)?;
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<_, _>>()
                .map_err(|e| OptionsError::File("cert_file".into(), cert.display().to_string(), e.to_string()))?;
            if certs.is_empty() {
                return Err(OptionsError::File("cert_file".into(), cert.display().to_string(), "no certificate in it".into()));
            }
            let key_pem = read_file("key_file", key)?;
            // The key's error never quotes the file.
            let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
                .map_err(|_| OptionsError::File("key_file".into(), key.display().to_string(), "no PEM private key in it".into()))?;
            builder.with_client_auth_cert(certs, key_der).map_err(|e| OptionsError::Tls(e.to_string()))
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err(OptionsError::Tls("cert_file and key_file go together".into())),
    }
}

/// Classifies an etcd error: a member without a leader refused before proposing.
fn not_proposed(message: &str) -> bool {
    message.contains("no leader") || message.contains("not capable")
}

/// An etcd error that says nothing is known (no quorum, a timeout inside etcd).
fn unavailable(code: i64, message: &str) -> bool {
    // gRPC: 1 canceled, 4 deadline exceeded, 10 aborted, 14 unavailable.
    matches!(code, 1 | 4 | 10 | 14)
        || ["no leader", "request timed out", "leader changed", "timed out", "too many requests", "not capable", "stopped"]
            .iter()
            .any(|m| message.contains(m))
}

/// The error in a gateway answer: `{"error":"..","code":N}` (unary) or
/// `{"error":{"grpc_code":N,"message":".."}}` (streams).
pub(crate) fn error_of(v: &Value) -> Option<(i64, String)> {
    let e = v.get("error")?;
    match e {
        Value::String(s) if !s.is_empty() => {
            let code = v.get("code").and_then(Value::as_i64).unwrap_or(2);
            let msg = v.get("message").and_then(Value::as_str).filter(|m| !m.is_empty()).unwrap_or(s);
            Some((code, msg.to_string()))
        }
        Value::Object(o) => {
            let code = o.get("grpc_code").or_else(|| o.get("code")).and_then(Value::as_i64).unwrap_or(2);
            let msg = o.get("message").and_then(Value::as_str).unwrap_or("unknown error").to_string();
            Some((code, msg))
        }
        _ => None,
    }
}

fn is_bad_token(code: i64, message: &str) -> bool {
    code == 16 || message.contains("invalid auth token")
}

impl Gateway {
    pub(crate) fn new(o: &EtcdOptions) -> Result<Gateway, OptionsError> {
        if o.endpoints.is_empty() {
            return Err(OptionsError::NoEndpoint);
        }
        let endpoints = o.endpoints.iter().map(|e| normalize_endpoint(e)).collect::<Result<Vec<_>, _>>()?;
        if o.request_timeout.is_zero() {
            return Err(OptionsError::Timeout);
        }
        if endpoints.iter().any(|e| e.base.starts_with("https://")) && o.ca_file.is_none() {
            return Err(OptionsError::Tls("https endpoints need ca_file (the CA that signed etcd's certificate)".into()));
        }
        let user = match (&o.user, &o.password) {
            (Some(u), Some(p)) => Some((u.clone(), p.clone())),
            (None, None) => None,
            (Some(_), None) => return Err(OptionsError::Auth("a user needs a password".into())),
            (None, Some(_)) => return Err(OptionsError::Auth("a password needs a user".into())),
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(o.request_timeout));
        http.set_nodelay(true);
        let https =
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls_config(o)?).https_or_http().enable_http1().wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(https);
        Ok(Gateway { endpoints, preferred: AtomicUsize::new(0), http: client, timeout: o.request_timeout, user, token: Mutex::new(None) })
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    fn token(&self) -> Option<Arc<str>> {
        self.token.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn forget_token(&self, bad: &Option<Arc<str>>) {
        let mut t = self.token.lock().unwrap_or_else(|e| e.into_inner());
        if *t == *bad {
            *t = None;
        }
    }

    fn request(&self, idx: usize, path: &str, body: Bytes, token: Option<&str>) -> Request<Full<Bytes>> {
        let mut b = Request::builder()
            .method(Method::POST)
            .uri(format!("{}{path}", self.endpoints[idx].base))
            .header("content-type", "application/json")
            // gRPC metadata through the gateway: a member without a leader refuses at
            // once ("no leader") instead of waiting for one, and cancels its watches.
            .header("grpc-metadata-hasleader", "true");
        if let Some(t) = token {
            b = b.header("authorization", t);
        }
        b.body(Full::new(body)).expect("a request of a checked URI and fixed headers")
    }

    async fn send(&self, req: Request<Full<Bytes>>) -> Result<Response<Incoming>, Exchange> {
        self.http.request(req).await.map_err(|e| {
            let msg = error_chain(&e);
            if e.is_connect() { Exchange::NotSent(msg) } else { Exchange::Broken(msg) }
        })
    }

    /// One request to one endpoint, its whole answer read.
    async fn exchange(&self, idx: usize, path: &str, body: Bytes, token: Option<&str>) -> Exchange {
        let resp = match self.send(self.request(idx, path, body, token)).await {
            Ok(r) => r,
            Err(x) => return x,
        };
        let status = resp.status();
        match Limited::new(resp.into_body(), MAX_BODY).collect().await {
            Ok(b) => Exchange::Answer(status, b.to_bytes()),
            Err(e) => Exchange::Broken(format!("reading the answer: {e}")),
        }
    }

    /// The token to send to endpoint `idx`: the one held, or a new one.
    async fn ensure_token(&self, idx: usize) -> Result<Option<Arc<str>>, (bool, Fail)> {
        let Some((user, password)) = &self.user else { return Ok(None) };
        if let Some(t) = self.token() {
            return Ok(Some(t));
        }
        let body = json!({ "name": user, "password": password.expose() });
        let body = Bytes::from(serde_json::to_vec(&body).expect("JSON of strings"));
        match self.exchange(idx, "/v3/auth/authenticate", body, None).await {
            Exchange::NotSent(m) => Err((true, Fail::Unavailable(m))),
            Exchange::Broken(m) => Err((true, Fail::Unavailable(m))),
            Exchange::Answer(status, bytes) => {
                let v: Value = serde_json::from_slice(&bytes)
                    .map_err(|e| (true, Fail::Unavailable(format!("authenticate: an answer that is not JSON ({status}): {e}"))))?;
                if let Some((code, message)) = error_of(&v) {
                    let retry = unavailable(code, &message);
                    let fail = if retry {
                        Fail::Unavailable(message)
                    } else {
                        Fail::Etcd { code, message: format!("authenticate as {user}: {message}") }
                    };
                    return Err((retry, fail));
                }
                let Some(t) = v.get("token").and_then(Value::as_str).filter(|t| !t.is_empty()) else {
                    return Err((false, Fail::Etcd { code: 16, message: format!("authenticate as {user}: no token in the answer") }));
                };
                let t: Arc<str> = Arc::from(t);
                *self.token.lock().unwrap_or_else(|e| e.into_inner()) = Some(t.clone());
                Ok(Some(t))
            }
        }
    }

    /// Sends `body` to `path`, on the endpoint that answered last first, moving on to the
    /// next ones as `kind` allows, all within one request timeout: the answer's JSON.
    pub(crate) async fn call(&self, path: &str, body: &Value, kind: Kind) -> Result<Value, Fail> {
        let deadline = Instant::now() + self.timeout;
        let body = Bytes::from(serde_json::to_vec(body).expect("JSON of a Value"));
        let n = self.endpoints.len();
        let start = self.preferred.load(Ordering::Relaxed) % n;
        let mut failures: Vec<String> = Vec::new();
        let mut reauthenticated = false;
        let mut i = 0;
        // Bounded: each turn moves to the next endpoint, except one turn to authenticate again.
        for _ in 0..(n + 1) {
            if i >= n {
                break;
            }
            let idx = (start + i) % n;
            let url = &self.endpoints[idx].base;
            let attempt = async {
                let token = self.ensure_token(idx).await?;
                Ok::<_, (bool, Fail)>((self.exchange(idx, path, body.clone(), token.as_deref()).await, token))
            };
            // A read that may go elsewhere gives one endpoint half of what is left, so a
            // member that hangs (a host cut off: no reset, no answer) does not use up the
            // whole call; a write keeps all of it (once sent, it may have been applied).
            let left = deadline.saturating_duration_since(Instant::now());
            let more = i + 1 < n;
            let until = if kind == Kind::Retry && more { Instant::now() + left / 2 } else { deadline };
            let outcome = match tokio::time::timeout_at(until, attempt).await {
                Err(_) if until < deadline => {
                    self.preferred.store((idx + 1) % n, Ordering::Relaxed);
                    failures.push(format!("{url}: no answer within {:?}", left / 2));
                    i += 1;
                    continue;
                }
                Err(_) => {
                    // The request may have reached etcd: the next call starts elsewhere.
                    self.preferred.store((idx + 1) % n, Ordering::Relaxed);
                    failures.push(format!("{url}: no answer within {:?}", self.timeout));
                    return Err(Fail::Unavailable(failures.join("; ")));
                }
                Ok(Err((retry, fail))) => {
                    match fail {
                        Fail::Unavailable(m) if retry => failures.push(format!("{url}: {m}")),
                        f => return Err(f),
                    }
                    i += 1;
                    continue;
                }
                Ok(Ok(x)) => x,
            };
            match outcome {
                (Exchange::NotSent(m), _) => failures.push(format!("{url}: {m}")),
                (Exchange::Broken(m), _) => {
                    failures.push(format!("{url}: {m}"));
                    if kind == Kind::Write {
                        self.preferred.store((idx + 1) % n, Ordering::Relaxed);
                        return Err(Fail::Unavailable(failures.join("; ")));
                    }
                }
                (Exchange::Answer(status, bytes), token) => {
                    let v: Value = match serde_json::from_slice(&bytes) {
                        Ok(v) => v,
                        Err(e) => {
                            let m = format!("{url}: an answer that is not JSON ({status}): {e}");
                            if status.is_server_error() && kind == Kind::Retry {
                                failures.push(m);
                                i += 1;
                                continue;
                            }
                            return Err(Fail::Unavailable(m));
                        }
                    };
                    let Some((code, message)) = error_of(&v) else {
                        if !status.is_success() {
                            return Err(Fail::Unavailable(format!("{url}: HTTP {status} without an error")));
                        }
                        self.preferred.store(idx, Ordering::Relaxed);
                        return Ok(v);
                    };
                    if is_bad_token(code, &message) && self.user.is_some() && !reauthenticated {
                        // The token expired (etcd's simple tokens live 5 minutes unused).
                        self.forget_token(&token);
                        reauthenticated = true;
                        continue;
                    }
                    if not_proposed(&message) || (kind == Kind::Retry && unavailable(code, &message)) {
                        failures.push(format!("{url}: {message}"));
                    } else if unavailable(code, &message) {
                        self.preferred.store((idx + 1) % n, Ordering::Relaxed);
                        failures.push(format!("{url}: {message}"));
                        return Err(Fail::Unavailable(failures.join("; ")));
                    } else {
                        self.preferred.store(idx, Ordering::Relaxed);
                        return Err(Fail::Etcd { code, message });
                    }
                }
            }
            i += 1;
        }
        tracing::debug!(path, failures = %failures.join("; "), "etcd: no endpoint answered");
        Err(Fail::Unavailable(failures.join("; ")))
    }

    /// Opens a watch stream: the answer's body, once etcd said the watch was created.
    pub(crate) async fn open_watch(&self, body: &Value) -> Result<(String, WatchStream), Fail> {
        let deadline = Instant::now() + self.timeout;
        let body = Bytes::from(serde_json::to_vec(body).expect("JSON of a Value"));
        let n = self.endpoints.len();
        let start = self.preferred.load(Ordering::Relaxed) % n;
        let mut failures: Vec<String> = Vec::new();
        let mut reauthenticated = false;
        let mut i = 0;
        for _ in 0..(n + 1) {
            if i >= n {
                break;
            }
            let idx = (start + i) % n;
            let url = self.endpoints[idx].base.clone();
            let attempt = async {
                let token = self.ensure_token(idx).await.map_err(|(_, f)| f)?;
                let resp = self.send(self.request(idx, "/v3/watch", body.clone(), token.as_deref())).await.map_err(|x| match x {
                    Exchange::NotSent(m) | Exchange::Broken(m) => Fail::Unavailable(m),
                    Exchange::Answer(..) => unreachable!("send gives no answer as an error"),
                })?;
                let status = resp.status();
                let mut stream = WatchStream { body: resp.into_body(), buf: Vec::new() };
                let first = stream.next_message().await?;
                Ok::<_, Fail>((status, first, stream, token))
            };
            match tokio::time::timeout_at(deadline, attempt).await {
                Err(_) => {
                    self.preferred.store((idx + 1) % n, Ordering::Relaxed);
                    failures.push(format!("{url}: the watch was not created within {:?}", self.timeout));
                    return Err(Fail::Unavailable(failures.join("; ")));
                }
                Ok(Err(Fail::Unavailable(m))) => failures.push(format!("{url}: {m}")),
                Ok(Err(f)) => return Err(f),
                Ok(Ok((status, first, stream, token))) => {
                    let Some(first) = first else {
                        failures.push(format!("{url}: the watch ended at once (HTTP {status})"));
                        i += 1;
                        continue;
                    };
                    let (code, message) = match watch_error(&first) {
                        None if first.pointer("/result/created").and_then(Value::as_bool) == Some(true) => {
                            self.preferred.store(idx, Ordering::Relaxed);
                            return Ok((url, stream));
                        }
                        None => (2, format!("unexpected first message {first}")),
                        Some(e) => e,
                    };
                    if is_bad_token(code, &message) && self.user.is_some() && !reauthenticated {
                        self.forget_token(&token);
                        reauthenticated = true;
                        continue;
                    }
                    if unavailable(code, &message) {
                        failures.push(format!("{url}: {message}"));
                    } else {
                        return Err(Fail::Etcd { code, message });
                    }
                }
            }
            i += 1;
        }
        Err(Fail::Unavailable(failures.join("; ")))
    }
}

/// The error of a watch message: a gateway error, or a canceled watch with its reason.
pub(crate) fn watch_error(v: &Value) -> Option<(i64, String)> {
    if let Some(e) = error_of(v) {
        return Some(e);
    }
    let r = v.get("result")?;
    if r.get("canceled").and_then(Value::as_bool) != Some(true) {
        return None;
    }
    let reason = r.get("cancel_reason").and_then(Value::as_str).unwrap_or("").to_string();
    let code = if reason.contains("Unauthenticated") || reason.contains("invalid auth token") {
        16
    } else if reason.contains("PermissionDenied") || reason.contains("permission denied") {
        7
    } else if reason.contains("no leader") {
        14
    } else if r.get("compact_revision").is_some() {
        11
    } else {
        2
    };
    Some((code, if reason.is_empty() { format!("the watch was canceled: {r}") } else { reason }))
}

/// The body of a watch answer: JSON messages, one per line.
pub(crate) struct WatchStream {
    body: Incoming,
    buf: Vec<u8>,
}

impl fmt::Debug for WatchStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchStream").field("buffered", &self.buf.len()).finish()
    }
}

impl WatchStream {
    /// The next message; `None` when the stream ended.
    pub(crate) async fn next_message(&mut self) -> Result<Option<Value>, Fail> {
        // Bounded by the stream: each turn reads a frame, and the buffer is bounded.
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                let line = line.trim_ascii();
                if line.is_empty() {
                    continue;
                }
                return serde_json::from_slice(line)
                    .map(Some)
                    .map_err(|e| Fail::Unavailable(format!("a watch message that is not JSON: {e}")));
            }
            if self.buf.len() > MAX_BODY {
                return Err(Fail::Unavailable("a watch message beyond 64 MiB".into()));
            }
            match self.body.frame().await {
                None => {
                    let rest = std::mem::take(&mut self.buf);
                    let rest = rest.trim_ascii();
                    if rest.is_empty() {
                        return Ok(None);
                    }
                    return serde_json::from_slice(rest)
                        .map(Some)
                        .map_err(|e| Fail::Unavailable(format!("a watch message that is not JSON: {e}")));
                }
                Some(Err(e)) => return Err(Fail::Unavailable(format!("the watch stream broke: {e}"))),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

/// An error with its sources (hyper's own message says little: "client error (Connect)").
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    for _ in 0..8 {
        let Some(x) = src else { break };
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_normalized() {
        assert_eq!(normalize_endpoint("127.0.0.1:2379").unwrap().base, "http://127.0.0.1:2379");
        assert_eq!(normalize_endpoint("https://etcd1:2379/").unwrap().base, "https://etcd1:2379");
        assert!(normalize_endpoint("ftp://x:1").is_err());
        assert!(normalize_endpoint("http://x:1/v3").is_err());
        assert!(normalize_endpoint("http://").is_err());
    }

    #[test]
    fn gateway_errors_are_read_in_both_shapes() {
        let unary = json!({"error": "etcdserver: no leader", "message": "etcdserver: no leader", "code": 14});
        assert_eq!(error_of(&unary), Some((14, "etcdserver: no leader".into())));
        let stream = json!({"error": {"grpc_code": 16, "http_code": 401, "message": "etcdserver: invalid auth token"}});
        assert_eq!(error_of(&stream), Some((16, "etcdserver: invalid auth token".into())));
        assert_eq!(error_of(&json!({"header": {}})), None);
        let canceled = json!({"result": {"canceled": true, "cancel_reason": "rpc error: code = Unauthenticated desc = etcdserver: invalid auth token"}});
        assert_eq!(watch_error(&canceled).map(|e| e.0), Some(16));
        let compacted = json!({"result": {"canceled": true, "compact_revision": "5"}});
        assert_eq!(watch_error(&compacted).map(|e| e.0), Some(11));
        assert_eq!(watch_error(&json!({"result": {"created": true}})), None);
    }

    #[test]
    fn unavailable_errors() {
        assert!(unavailable(14, "etcdserver: no leader"));
        assert!(unavailable(2, "etcdserver: request timed out"));
        assert!(unavailable(2, "etcdserver: leader changed"));
        assert!(!unavailable(5, "etcdserver: requested lease not found"));
        assert!(!unavailable(3, "etcdserver: authentication failed, invalid user ID or password"));
        assert!(not_proposed("etcdserver: no leader"));
        assert!(!not_proposed("etcdserver: request timed out"));
    }
}
