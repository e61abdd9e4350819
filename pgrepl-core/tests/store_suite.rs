//! The store conformance suite (`pgrepl_core::testing::store_suite`) against the
//! in-process `MemoryStore` (its manual clock stands for time). etcd runs the same suite
//! in pgrepl-etcd's tests. Needs the `testing` feature:
//! `cargo test -p pgrepl-core --features testing --test store_suite`.

#![cfg(feature = "testing")]

use pgrepl_core::store::memory::MemoryStore;
use pgrepl_core::testing::store_suite;

#[tokio::test]
async fn memory_store_keeps_every_promise() {
    let s = MemoryStore::new();
    store_suite(&s, "/pgrepl-suite/", &s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store_keeps_every_promise_on_several_threads() {
    let s = MemoryStore::new();
    store_suite(&s, "/pgrepl-suite/", &s).await;
}
