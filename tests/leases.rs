//! Leases in the database: work that one of several instances sharing it does at a time.

mod common;

use common::*;

/// One instance at a time holds a lease; it passes on when it expires.
async fn leases_pass_on_expiry(backend: Backend) {
    let direct = DirectStore::open(&backend).await;
    let store = direct.meta.clone();
    assert!(store.try_lease("sweep", "a", 100, 200).await.unwrap());
    assert!(!store.try_lease("sweep", "b", 150, 250).await.unwrap());
    // The holder renews.
    assert!(store.try_lease("sweep", "a", 190, 300).await.unwrap());
    assert!(!store.try_lease("sweep", "b", 250, 350).await.unwrap());
    // Expired: another takes it, and the first one no longer has it.
    assert!(store.try_lease("sweep", "b", 301, 400).await.unwrap());
    assert!(!store.try_lease("sweep", "a", 302, 400).await.unwrap());
    // Leases are by name.
    assert!(store.try_lease("other", "a", 302, 400).await.unwrap());
    drop(store);
    direct.close().await;
}

#[tokio::test]
async fn leases_on_sqlite() {
    leases_pass_on_expiry(Backend::Sqlite).await;
}

#[tokio::test]
async fn leases_on_postgres() {
    let Some(admin) = postgres_admin_url() else {
        return;
    };
    leases_pass_on_expiry(Backend::Postgres(admin)).await;
}
