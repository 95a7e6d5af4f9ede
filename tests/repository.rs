//! The metadata repository story, run unchanged on SQLite and on PostgreSQL.

mod common;

use common::{postgres_admin_url, PgDb};
use nephos::db::{self, AssetKey, AssetRecord, MetaStore, Preset, SaveOutcome};
use serde_json::{json, Map};
use std::sync::Arc;

fn record(public_id: &str, version: i64, tags: &[&str]) -> AssetRecord {
    let vid = nephos::util::random_hex(16);
    let mut context = Map::new();
    context.insert("alt".into(), json!("x=y|z"));
    let mut extra = Map::new();
    extra.insert("duration".into(), json!(1.5));
    AssetRecord {
        asset_id: nephos::util::random_hex(16),
        key: AssetKey {
            cloud: "demo".into(),
            resource_type: "image".into(),
            delivery_type: "upload".into(),
            public_id: public_id.into(),
        },
        version,
        version_id: vid.clone(),
        format: Some("png".into()),
        width: Some(10),
        height: Some(20),
        pages: Some(1),
        bytes: 1234,
        etag: "0123456789abcdef0123456789abcdef".into(),
        created_at: version,
        original_filename: Some("logo".into()),
        display_name: public_id.rsplit('/').next().unwrap().into(),
        asset_folder: String::new(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        context,
        metadata: Map::new(),
        extra,
        blob_key: format!("demo/{}/{vid}", &vid[..2]),
        api_key: Some("1234567890".into()),
    }
}

async fn story(store: Arc<dyn MetaStore>) {
    store.ping().await.unwrap();
    let a = record("folder/a", 100, &["b", "a", "b"]);
    let created = match store.save_asset(a.clone(), true).await.unwrap() {
        SaveOutcome::Created(r) => r,
        other => panic!("expected Created, got {other:?}"),
    };
    assert_eq!(
        created.tags,
        vec!["a", "b"],
        "tags are stored sorted and unique"
    );
    let found = store.find_asset(&a.key).await.unwrap().unwrap();
    assert_eq!(found, created);
    assert_eq!(found.context["alt"], "x=y|z");
    assert_eq!(found.extra["duration"], 1.5);

    // The same key in another resource type or cloud is another asset.
    let mut other_rt = record("folder/a", 100, &[]);
    other_rt.key.resource_type = "raw".into();
    assert!(matches!(
        store.save_asset(other_rt.clone(), false).await.unwrap(),
        SaveOutcome::Created(_)
    ));
    let mut other_cloud = record("folder/a", 100, &[]);
    other_cloud.key.cloud = "other".into();
    assert!(matches!(
        store.save_asset(other_cloud.clone(), false).await.unwrap(),
        SaveOutcome::Created(_)
    ));

    // overwrite=false leaves the asset as it was.
    let b = record("folder/a", 100, &["new"]);
    match store.save_asset(b.clone(), false).await.unwrap() {
        SaveOutcome::Existing(r) => assert_eq!(r, created),
        other => panic!("expected Existing, got {other:?}"),
    }
    // overwrite=true keeps the asset_id and moves the version forward even in the same second.
    match store.save_asset(b.clone(), true).await.unwrap() {
        SaveOutcome::Replaced { stored, previous } => {
            assert_eq!(stored.asset_id, created.asset_id);
            assert_eq!(stored.version, 101);
            assert_eq!(stored.tags, vec!["new"]);
            assert_eq!(previous.blob_key, a.blob_key);
            assert_eq!(store.find_asset(&a.key).await.unwrap().unwrap(), *stored);
        }
        other => panic!("expected Replaced, got {other:?}"),
    }

    // Concurrent writers of one key: exactly one row, every writer succeeds.
    let key = record("race", 1, &[]).key;
    let mut tasks = Vec::new();
    for i in 0..12 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            let r = record("race", 50 + i, &["t"]);
            s.save_asset(r.clone(), true)
                .await
                .map(|o| matches!(o, SaveOutcome::Created(_)))
        }));
    }
    let mut creations = 0;
    for t in tasks {
        if t.await.unwrap().unwrap() {
            creations += 1;
        }
    }
    assert_eq!(creations, 1);
    assert!(store.find_asset(&key).await.unwrap().is_some());

    // Concurrent writers of different keys (inserted together): all created, tags kept.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            let r = record(&format!("many/{i}"), 10, &["x", &format!("t{i}")]);
            (s.save_asset(r.clone(), false).await, r.key)
        }));
    }
    for t in tasks {
        let (outcome, key) = t.await.unwrap();
        assert!(matches!(outcome.unwrap(), SaveOutcome::Created(_)));
        let got = store.find_asset(&key).await.unwrap().unwrap();
        assert_eq!(got.tags.len(), 2);
        assert!(got.tags.contains(&"x".to_string()));
        store.delete_asset(&key).await.unwrap();
    }

    let keys = store.blob_keys().await.unwrap();
    assert_eq!(keys.len(), 4, "{keys:?}");
    assert!(keys.contains(&b.blob_key));
    assert!(!keys.contains(&a.blob_key));

    // Deleting returns the row once.
    let (gone, derived) = store.delete_asset(&a.key).await.unwrap().unwrap();
    assert_eq!(gone.key, a.key);
    assert!(derived.is_empty());
    assert!(store.delete_asset(&a.key).await.unwrap().is_none());
    assert!(store.find_asset(&a.key).await.unwrap().is_none());

    // Delete tokens: valid until they expire, usable once, per cloud.
    let k = record("tok", 1, &[]).key;
    store.put_delete_token("old", &k, 100).await.unwrap();
    assert!(store
        .take_delete_token("demo", "old", 101)
        .await
        .unwrap()
        .is_none());
    store.put_delete_token("fresh", &k, 200).await.unwrap();
    assert!(store
        .take_delete_token("other", "fresh", 150)
        .await
        .unwrap()
        .is_none());
    store.put_delete_token("fresh2", &k, 200).await.unwrap();
    assert_eq!(
        store
            .take_delete_token("demo", "fresh2", 150)
            .await
            .unwrap(),
        Some(k.clone())
    );
    assert!(store
        .take_delete_token("demo", "fresh2", 150)
        .await
        .unwrap()
        .is_none());

    // Folders: created ones and those of assets.
    assert!(store
        .create_folder("demo", "made/here", "x", 1)
        .await
        .unwrap());
    assert!(!store
        .create_folder("demo", "made/here", "x", 1)
        .await
        .unwrap());
    assert!(store
        .folder_paths("demo")
        .await
        .unwrap()
        .contains(&"made/here".to_string()));
    assert!(!store.folder_has_assets("demo", "made").await.unwrap());
    assert_eq!(
        store.delete_folders("demo", "made").await.unwrap(),
        vec!["made/here".to_string()]
    );
    assert!(store.folder_paths("other").await.unwrap().is_empty());

    // Presets: create, read, replace.
    let mut settings = Map::new();
    settings.insert("folder".into(), json!("f"));
    settings.insert("tags".into(), json!(["a", "b"]));
    let mut p = Preset {
        cloud: "demo".into(),
        name: "p1".into(),
        unsigned: true,
        disallow_public_id: false,
        settings,
        external_id: "ext".into(),
        created_at: 5,
    };
    store.put_preset(&p).await.unwrap();
    assert_eq!(store.get_preset("demo", "p1").await.unwrap().unwrap(), p);
    assert!(store.get_preset("other", "p1").await.unwrap().is_none());
    p.unsigned = false;
    p.settings.insert("overwrite".into(), json!(false));
    store.put_preset(&p).await.unwrap();
    let got = store.get_preset("demo", "p1").await.unwrap().unwrap();
    assert!(!got.unsigned);
    assert_eq!(got.settings["overwrite"], false);

    // A chunked upload's assembly claim: renewing it dates it afresh, only while it is held.
    let init = db::ChunkSession {
        session_id: "s-renew".into(),
        cloud: "demo".into(),
        upload_id: "u1".into(),
        resource_type: "raw".into(),
        identity: "key:k".into(),
        total: Some(10),
        public_id: None,
        filename: None,
        state: "open".into(),
        state_since: 100,
        created_at: 100,
        updated_at: 100,
    };
    let part = db::ChunkPart {
        start: 0,
        end: 9,
        md5: String::new(),
        file: "f".into(),
    };
    let claim = |_: &db::ChunkSession, _: &[db::ChunkPart]| db::ChunkDecision::Accept {
        total: Some(10),
        claim: true,
    };
    store.record_chunk(&init, &part, 10, &claim).await.unwrap();
    let since = |store: Arc<dyn MetaStore>| async move {
        let (s, _) = store.chunk_session("s-renew").await.unwrap().unwrap();
        (s.state, s.state_since)
    };
    assert_eq!(since(store.clone()).await, ("assembling".to_string(), 100));
    assert!(store.renew_assembly("s-renew", 100, 700).await.unwrap());
    assert_eq!(since(store.clone()).await, ("assembling".to_string(), 700));
    // A renewal that names a claim dated otherwise (taken over since) changes nothing.
    assert!(!store.renew_assembly("s-renew", 100, 760).await.unwrap());
    assert_eq!(since(store.clone()).await, ("assembling".to_string(), 700));
    store.reopen_chunk_session("s-renew", 800).await.unwrap();
    assert!(!store.renew_assembly("s-renew", 700, 900).await.unwrap());
    assert_eq!(since(store.clone()).await, ("open".to_string(), 800));
}

#[tokio::test]
async fn repository_story_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    story(db::connect(&url).await.unwrap()).await;
    // Reopening runs the migrations again without harm and sees the data.
    let again = db::connect(&url).await.unwrap();
    assert!(again.get_preset("demo", "p1").await.unwrap().is_some());
}

#[tokio::test]
async fn repository_story_on_postgres() {
    let Some(admin) = postgres_admin_url() else {
        return;
    };
    let pg = PgDb::create(&admin).await;
    story(db::connect(&pg.url).await.unwrap()).await;
    let again = db::connect(&pg.url).await.unwrap();
    assert!(again.get_preset("demo", "p1").await.unwrap().is_some());
    drop(again);
    pg.drop_db().await;
}

/// New rows keep arriving (the inserter keeps its connection between batches) until one
/// asset has been replaced ten times (writes of their own, on the same connection pool):
/// the replacements are done while the inserts go on, not after them.
async fn writers_take_turns(store: Arc<dyn MetaStore>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let base = record("turns/base", 1, &[]);
    store.save_asset(base.clone(), true).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut inserts = tokio::task::JoinSet::new();
    // More writers than one batch holds: rows are always waiting.
    for w in 0..160 {
        let (store, stop) = (store.clone(), stop.clone());
        inserts.spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let r = record(&format!("turns/{w}-{i}"), 10, &["t"]);
                match store.save_asset(r.clone(), true).await.unwrap() {
                    SaveOutcome::Created(_) => {}
                    other => panic!("expected Created, got {other:?}"),
                }
                i += 1;
            }
            (w, i)
        });
    }
    for v in 2..12 {
        match store
            .save_asset(record("turns/base", v, &[]), true)
            .await
            .unwrap()
        {
            SaveOutcome::Replaced { stored, .. } => assert_eq!(stored.version, v),
            other => panic!("expected Replaced, got {other:?}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    while let Some(done) = inserts.join_next().await {
        let (w, count) = done.unwrap();
        for i in 0..count {
            let key = record(&format!("turns/{w}-{i}"), 10, &[]).key;
            let found = store.find_asset(&key).await.unwrap().expect("inserted");
            assert_eq!(found.tags, vec!["t"]);
        }
        total += count;
    }
    assert!(total > 0, "rows went in while the asset was replaced");
}

async fn within_a_minute(story: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(std::time::Duration::from_secs(60), story)
        .await
        .expect("the writes finished (no writer waited for good)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_take_turns_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    within_a_minute(writers_take_turns(db::connect(&url).await.unwrap())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_take_turns_on_postgres() {
    let Some(admin) = postgres_admin_url() else {
        return;
    };
    let pg = PgDb::create(&admin).await;
    within_a_minute(writers_take_turns(db::connect(&pg.url).await.unwrap())).await;
    pg.drop_db().await;
}

#[tokio::test]
async fn unknown_database_schemes_are_refused() {
    let err = db::connect("mysql://localhost/x")
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("unsupported database URL"));
}

/// Taken by the tests that keep the SQLite writer busy, so that they run one at a time: a WAL
/// bound measured while another of them loads the cores can be outgrown by a checkpoint that
/// waits for a core.
static BUSY_WRITERS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A SQLite store in a new folder (kept while the folder lives), and its WAL file's path.
async fn sqlite_store_and_wal() -> (tempfile::TempDir, Arc<dyn MetaStore>, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let store = db::connect(&format!("sqlite://{}?mode=rwc", path.display()))
        .await
        .unwrap();
    let wal = dir.path().join("t.db-wal");
    (dir, store, wal)
}

/// Saves a record that must be created, and gives the WAL file's length after it.
async fn save_new_and_measure_wal(
    store: &dyn MetaStore,
    record: AssetRecord,
    wal: &std::path::Path,
) -> u64 {
    assert!(matches!(
        store.save_asset(record, true).await.unwrap(),
        SaveOutcome::Created(_)
    ));
    std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0)
}

/// New rows are written to a SQLite file on a connection of their own, whose WAL nephos
/// checkpoints itself: one insert after another (a commit each) leaves the WAL file small,
/// and every row is read back through the other connections.
#[tokio::test]
async fn sqlite_wal_stays_small_while_rows_go_in_one_by_one() {
    let _busy = BUSY_WRITERS.lock().await;
    let (_dir, store, wal) = sqlite_store_and_wal().await;
    let mut largest = 0;
    for i in 0..2000 {
        let r = record(&format!("wal/{i}"), 1, &["a", "b"]);
        largest = largest.max(save_new_and_measure_wal(&*store, r, &wal).await);
    }
    // 2,000 commits of a row, two tags and their index entries take tens of MiB of WAL
    // frames when nothing checkpoints them.
    assert!(largest < 12 << 20, "the WAL grew to {largest} bytes");
    for i in (0..2000).step_by(97) {
        let key = record(&format!("wal/{i}"), 1, &[]).key;
        let found = store.find_asset(&key).await.unwrap().expect("inserted");
        assert_eq!(found.tags, vec!["a", "b"]);
    }
}

/// The checkpoint runs beside the inserter, which goes on writing while it copies: under a
/// load that never lets the inserter go idle, the WAL must still be copied whole and started
/// over from time to time, not grow with every batch.
#[tokio::test]
async fn sqlite_wal_stays_small_while_batches_keep_coming() {
    let _busy = BUSY_WRITERS.lock().await;
    let (_dir, store, wal) = sqlite_store_and_wal().await;
    let largest = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // 32 writers, each saving its next row as soon as the last one is in: batches follow one
    // another without a pause, as under a load of concurrent uploads.
    let writers: Vec<_> = (0..32)
        .map(|w| {
            let (store, wal, largest) = (store.clone(), wal.clone(), largest.clone());
            tokio::spawn(async move {
                for i in 0..250 {
                    let r = record(&format!("busy/{w}/{i}"), 1, &["a"]);
                    let len = save_new_and_measure_wal(&*store, r, &wal).await;
                    largest.fetch_max(len, std::sync::atomic::Ordering::Relaxed);
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    // 8,000 rows with a tag each, hundreds of batches: tens of MiB of frames if the WAL never
    // starts over.
    let largest = largest.load(std::sync::atomic::Ordering::Relaxed);
    assert!(largest < 12 << 20, "the WAL grew to {largest} bytes");
    for w in (0..32).step_by(5) {
        let key = record(&format!("busy/{w}/249"), 1, &[]).key;
        let found = store.find_asset(&key).await.unwrap().expect("inserted");
        assert_eq!(found.tags, vec!["a"]);
    }
}

/// Connection threads each have an inserter of their own (a single-threaded runtime per
/// thread), all writing to the one SQLite file under the same write turn: rows saved from
/// several of them at once all go in, each once, and a key saved from two of them at the same
/// time is created once and found existing the other time.
#[test]
fn sqlite_rows_from_several_runtimes_at_once_go_in_once_each() {
    let _busy = BUSY_WRITERS.blocking_lock();
    // The store is made on a runtime of its own, kept while the test runs (its shared
    // inserter lives there), as the server's main runtime is.
    let main = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (dir, store, _wal) = main.block_on(sqlite_store_and_wal());
    let threads: Vec<_> = (0..3)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let writers: Vec<_> = (0..8)
                        .map(|w| {
                            let store = store.clone();
                            tokio::spawn(async move {
                                let mut outcomes = Vec::new();
                                for i in 0..50 {
                                    let r = record(&format!("rt/{t}/{w}/{i}"), 1, &["a"]);
                                    outcomes.push(store.save_asset(r, false).await.unwrap());
                                    // The same key from every thread at once.
                                    let r = record(&format!("shared/{w}/{i}"), 1, &["b"]);
                                    outcomes.push(store.save_asset(r, false).await.unwrap());
                                }
                                outcomes
                            })
                        })
                        .collect();
                    let mut all = Vec::new();
                    for w in writers {
                        all.extend(w.await.unwrap());
                    }
                    all
                })
            })
        })
        .collect();
    let outcomes: Vec<SaveOutcome> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let created = outcomes
        .iter()
        .filter(|o| matches!(o, SaveOutcome::Created(_)))
        .count();
    let existing = outcomes
        .iter()
        .filter(|o| matches!(o, SaveOutcome::Existing(_)))
        .count();
    // 3 x 8 x 50 own keys, 8 x 50 shared ones created once and found twice.
    assert_eq!(created, 3 * 8 * 50 + 8 * 50, "created");
    assert_eq!(existing, 2 * 8 * 50, "existing");
    main.block_on(async {
        for (t, w, i) in [(0, 0, 0), (1, 7, 49), (2, 3, 25)] {
            let key = record(&format!("rt/{t}/{w}/{i}"), 1, &[]).key;
            let found = store.find_asset(&key).await.unwrap().expect("inserted");
            assert_eq!(found.tags, vec!["a"]);
        }
        let key = record("shared/5/5", 1, &[]).key;
        let found = store.find_asset(&key).await.unwrap().expect("inserted");
        assert_eq!(found.tags, vec!["b"]);
    });
    drop(dir);
}
