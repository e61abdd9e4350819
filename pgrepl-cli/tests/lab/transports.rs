//! The transport conformance suite (pgrepl_core::testing) against the local transport,
//! running commands as the `postgres` OS user as the local provider does.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_transport_conformance() {
    let wd = crate::common::WorkDir::new("transport-suite");
    pgrepl_core::testing::transport_suite(&pgrepl_core::local::LocalTransport, "postgres", &wd.str()).await;
}
