//! The routes over a real socket: each check's code for each state the agent publishes.

use std::sync::Arc;
use std::time::Instant;

use pgrepl_core::agent::AgentStatus;
use pgrepl_core::lsn::Lsn;
use pgrepl_core::store::MemberRole;
use pgrepl_http::{HttpOptions, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// One request (HTTP/1.0, so the server closes): the status code and the body.
async fn ask(port: u16, method: &str, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(format!("{method} {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_string(&mut out)).await.unwrap().unwrap();
    let code = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string())
}

fn primary() -> AgentStatus {
    AgentStatus {
        cluster: "c".into(),
        node: "db1".into(),
        loops: 3,
        postgres_up: true,
        role: Some(MemberRole::Primary),
        lsn: Some(Lsn(5000)),
        leader: Some("db1".into()),
        holds_lease: true,
        lease_left_ms: Some(60_000),
        store_reachable: true,
        at: Some(Instant::now()),
        ..AgentStatus::default()
    }
}

fn standby(lag: u64, streaming: bool) -> AgentStatus {
    AgentStatus {
        cluster: "c".into(),
        node: "db2".into(),
        loops: 3,
        postgres_up: true,
        role: Some(MemberRole::Standby),
        streaming,
        lag_bytes: Some(lag),
        leader: Some("db1".into()),
        store_reachable: true,
        at: Some(Instant::now()),
        ..AgentStatus::default()
    }
}

#[tokio::test]
async fn every_check_on_every_role() {
    let (tx, rx) = watch::channel(Arc::new(AgentStatus { cluster: "c".into(), node: "db1".into(), ..AgentStatus::default() }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, rx, HttpOptions { replica_max_lag: 1 << 20 }, async {
        let _ = stop_rx.await;
    }));
    let codes = |port| async move {
        let mut v = Vec::new();
        for p in ["/primary", "/replica", "/read-only", "/health"] {
            v.push(ask(port, "GET", p).await.0);
        }
        v
    };
    // Before the first loop: nothing known, every check 503.
    assert_eq!(codes(port).await, vec![503, 503, 503, 503]);
    tx.send_replace(Arc::new(primary()));
    assert_eq!(codes(port).await, vec![200, 503, 200, 200]);
    // HAProxy's OPTIONS check too.
    assert_eq!(ask(port, "OPTIONS", "/primary").await.0, 200);
    // Its lease ran out on its clock (the loop hung): no longer the primary.
    tx.send_replace(Arc::new(AgentStatus { lease_left_ms: Some(0), ..primary() }));
    assert_eq!(codes(port).await, vec![503, 503, 503, 200]);
    tx.send_replace(Arc::new(standby(1000, true)));
    assert_eq!(codes(port).await, vec![503, 200, 200, 200]);
    assert_eq!(ask(port, "GET", "/replica?lag=999").await.0, 503);
    assert_eq!(ask(port, "GET", "/replica?lag=1kB").await.0, 200);
    assert_eq!(ask(port, "GET", "/read-only?lag=100").await.0, 503);
    let (code, body) = ask(port, "GET", "/replica?lag=lots").await;
    assert_eq!(code, 400);
    assert!(body.contains("lag") && body.contains("lots"), "{body}");
    // Over the default limit, or not streaming.
    tx.send_replace(Arc::new(standby(2 << 20, true)));
    assert_eq!(codes(port).await, vec![503, 503, 503, 200]);
    tx.send_replace(Arc::new(standby(0, false)));
    assert_eq!(codes(port).await, vec![503, 503, 503, 200]);
    // Its PostgreSQL down.
    tx.send_replace(Arc::new(AgentStatus { postgres_up: false, role: Some(MemberRole::Stopped), ..standby(0, false) }));
    assert_eq!(codes(port).await, vec![503, 503, 503, 503]);
    // The body is the node's status; /cluster and /metrics always answer.
    let (code, body) = ask(port, "GET", "/").await;
    assert_eq!(code, 200);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["node"], "db2");
    let (code, body) = ask(port, "GET", "/cluster").await;
    assert_eq!((code, serde_json::from_str::<serde_json::Value>(&body).unwrap()["leader"].as_str()), (200, Some("db1")));
    let (code, body) = ask(port, "GET", "/metrics").await;
    assert_eq!(code, 200);
    assert!(body.contains("pgrepl_up{cluster=\"c\",node=\"db2\"} 0"), "{body}");
    assert_eq!(ask(port, "GET", "/nothing").await.0, 404);
    stop_tx.send(()).unwrap();
    server.await.unwrap().unwrap();
}
