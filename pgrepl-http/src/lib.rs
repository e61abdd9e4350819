//! The pgrepl agent's HTTP endpoint, read-only, served from the status the agent publishes
//! after every loop ([`pgrepl_core::agent::Agent::status`]):
//!
//! | path | 200 when | else |
//! |---|---|---|
//! | `/primary` | this node holds the leader key on a lease still fresh now, and accepts writes | 503 |
//! | `/replica` (`?lag=16MB`) | a running standby that streams, at most `lag` behind the leader (default `[ha] replica_max_lag`) | 503 |
//! | `/read-only` (`?lag=`) | `/primary` or `/replica` | 503 |
//! | `/health` | its PostgreSQL runs | 503 |
//! | `/cluster` | always: JSON of the leader, the sync set, every member, this node's standbys and lags | |
//! | `/metrics` | always: the Prometheus text exposition ([`metrics`]) | |
//! | `/` | always: this node's status as JSON | |
//!
//! The health checks answer every method (HAProxy sends `OPTIONS` or `GET`), with the
//! node's status as a JSON body. A bad `lag` is a 400 naming it. Before the agent's first
//! loop nothing is known: every check answers 503.

pub mod metrics;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use pgrepl_core::agent::{AgentStatus, parse_size};
use tokio::sync::watch;

/// What the endpoint needs besides the status.
#[derive(Debug, Clone, Copy)]
pub struct HttpOptions {
    /// `/replica`'s lag limit when the check gives none, in bytes.
    pub replica_max_lag: u64,
}

#[derive(Debug, Clone)]
struct Shared {
    status: watch::Receiver<Arc<AgentStatus>>,
    opts: HttpOptions,
}

/// The routes, over the agent's `status`.
pub fn router(status: watch::Receiver<Arc<AgentStatus>>, opts: HttpOptions) -> Router {
    Router::new()
        .route("/primary", any(primary))
        .route("/replica", any(replica))
        .route("/read-only", any(read_only))
        .route("/health", any(health))
        .route("/cluster", get(cluster))
        .route("/metrics", get(metrics_text))
        .route("/", get(node))
        .with_state(Shared { status, opts })
}

/// Serves the routes on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    status: watch::Receiver<Arc<AgentStatus>>,
    opts: HttpOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(status, opts)).with_graceful_shutdown(shutdown).await
}

#[derive(Debug, serde::Deserialize)]
struct LagQuery {
    lag: Option<String>,
}

fn now(s: &Shared) -> Arc<AgentStatus> {
    s.status.borrow().clone()
}

/// 200 or 503 with the node's status as the body.
fn check(ok: bool, st: &AgentStatus) -> Response {
    let code = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, axum::Json(st)).into_response()
}

/// The lag limit of a check, or why `lag` is not a size.
fn max_lag(s: &Shared, q: &LagQuery) -> Result<u64, String> {
    match &q.lag {
        None => Ok(s.opts.replica_max_lag),
        Some(v) => parse_size(v).map_err(|e| format!("lag: {e}\n")),
    }
}

async fn primary(State(s): State<Shared>) -> Response {
    let st = now(&s);
    check(st.loops > 0 && st.primary_ok(), &st)
}

async fn replica(State(s): State<Shared>, Query(q): Query<LagQuery>) -> Response {
    let lag = match max_lag(&s, &q) {
        Ok(l) => l,
        Err(e) => return (StatusCode::BAD_REQUEST, e).into_response(),
    };
    let st = now(&s);
    check(st.loops > 0 && st.replica_ok(lag), &st)
}

async fn read_only(State(s): State<Shared>, Query(q): Query<LagQuery>) -> Response {
    let lag = match max_lag(&s, &q) {
        Ok(l) => l,
        Err(e) => return (StatusCode::BAD_REQUEST, e).into_response(),
    };
    let st = now(&s);
    check(st.loops > 0 && st.read_only_ok(lag), &st)
}

async fn health(State(s): State<Shared>) -> Response {
    let st = now(&s);
    check(st.loops > 0 && st.health_ok(), &st)
}

async fn node(State(s): State<Shared>) -> Response {
    let st = now(&s);
    axum::Json(&*st).into_response()
}

async fn cluster(State(s): State<Shared>) -> Response {
    let st = now(&s);
    axum::Json(serde_json::json!({
        "cluster": st.cluster,
        "leader": st.leader,
        "paused": st.paused,
        "store_reachable": st.store_reachable,
        "sync": st.sync,
        "members": st.members,
        "standbys": st.standbys,
        "seen_from": st.node,
    }))
    .into_response()
}

async fn metrics_text(State(s): State<Shared>) -> Response {
    let st = now(&s);
    ([(axum::http::header::CONTENT_TYPE, metrics::CONTENT_TYPE)], metrics::encode(&st)).into_response()
}
