//! Upload notifications: the payload is the upload answer plus `notification_type`, signed as
//! the SDKs verify it, and an attempt the receiver refuses is retried.

mod common;

use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, StatusCode};
use common::*;
use nephos::auth::SignatureAlgorithm;
use nephos::media::samples;
use serde_json::Value;

type Seen = Arc<Mutex<Vec<(HeaderMap, String)>>>;

/// A receiver that refuses its first call with 500 and accepts the rest.
async fn receiver() -> (String, Seen) {
    receiver_refusing(1).await
}

/// A receiver that refuses its first `refused` calls with 500 and accepts the rest.
async fn receiver_refusing(refused: usize) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let log = log.clone();
            async move {
                let mut l = log.lock().unwrap();
                l.push((headers, body));
                if l.len() <= refused {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook?run=1"), seen)
}

#[tokio::test]
async fn uploads_notify_signed_and_retry_a_refused_attempt() {
    let server = TestServer::start().await;
    let (url, seen) = receiver().await;
    let png = samples::png(3, 2);
    let (s, answer) = upload(
        &server,
        "image",
        &[("public_id", "hooked"), ("notification_url", &url)],
        &png,
        "h.png",
    )
    .await;
    assert_eq!(s, 200, "{answer}");
    for _ in 0..100 {
        if seen.lock().unwrap().len() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let calls = seen.lock().unwrap().clone();
    assert_eq!(calls.len(), 2, "one refused attempt, then the retry");
    for (headers, body) in &calls {
        let ts: i64 = headers["x-cld-timestamp"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((now() - ts).abs() < 30);
        let want = nephos::notify::signature(body, ts, SECRET, SignatureAlgorithm::Sha1);
        assert_eq!(headers["x-cld-signature"].to_str().unwrap(), want);
        assert_eq!(headers["content-type"], "application/json");
        let mut payload: Value = serde_json::from_str(body).unwrap();
        assert_eq!(payload["notification_type"], "upload");
        payload.as_object_mut().unwrap().remove("notification_type");
        assert_eq!(payload, answer);
    }

    let (s, body) = upload(
        &server,
        "image",
        &[("notification_url", "ftp://example.com/x")],
        &png,
        "h.png",
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(
        message(&body),
        "Invalid notification_url ftp://example.com/x: expected an http(s) URL"
    );
    server.stop().await;
}

#[tokio::test]
async fn async_uploads_answer_pending_then_notify() {
    let server = TestServer::start().await;
    let (url, seen) = receiver().await;
    let png = samples::png(3, 2);
    // The receiver refuses its first call: the retry carries the same payload.
    let (s, pending) = upload(
        &server,
        "image",
        &[
            ("public_id", "later"),
            ("async", "true"),
            ("notification_url", &url),
        ],
        &png,
        "l.png",
    )
    .await;
    assert_eq!(s, 200, "{pending}");
    assert_eq!(pending["status"], "pending");
    assert_eq!(pending["public_id"], "later");
    assert_eq!(pending["type"], "upload");
    let batch = pending["batch_id"].as_str().unwrap().to_string();
    for _ in 0..100 {
        if seen.lock().unwrap().len() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let calls = seen.lock().unwrap().clone();
    assert_eq!(calls.len(), 2);
    let payload: Value = serde_json::from_str(&calls[1].1).unwrap();
    assert_eq!(payload["notification_type"], "upload");
    assert_eq!(payload["batch_id"], batch.as_str());
    assert_eq!(payload["public_id"], "later");
    let (status, bytes) = get_bytes(payload["secure_url"].as_str().unwrap()).await;
    assert_eq!((status, bytes), (200, png.clone()));

    // Not for a part of a chunked upload.
    let part = vec![7u8; 6 * 1024 * 1024];
    let r = reqwest::Client::new()
        .post(server.upload_url("raw"))
        .header(
            "content-range",
            format!("bytes 0-{}/{}", part.len() - 1, part.len() * 2),
        )
        .header("x-unique-upload-id", "async-parts")
        .multipart(signed_form(&[("async", "true")], &part, "big.bin"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        message(&v),
        "Parameter async is not supported for uploads in parts"
    );
    server.stop().await;
}

/// A server on the data dir `dir` (kept by the caller) and, when given, a PostgreSQL
/// database (dropped by the caller).
async fn instance(dir: &std::path::Path, database_url: Option<&str>) -> TestServer {
    let file: nephos::config::FileConfig = toml::from_str(DEFAULT_TOML).unwrap();
    let args = nephos::config::ServeArgs {
        listen: Some("127.0.0.1:0".into()),
        data_dir: Some(dir.to_path_buf()),
        database_url: database_url.map(str::to_string),
        ..Default::default()
    };
    let config = nephos::config::Config::from_parts(file, &args).unwrap();
    TestServer::launch(config, tempfile::tempdir().unwrap(), None).await
}

async fn wait_for(seen: &Seen, calls: usize) -> Vec<(HeaderMap, String)> {
    for _ in 0..200 {
        if seen.lock().unwrap().len() >= calls {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    seen.lock().unwrap().clone()
}

/// A notification whose first attempt failed is queued in the database: stopped before its
/// retry, the server leaves it to the next one on the same data (here: a restart on the same
/// SQLite file; on PostgreSQL, another instance).
async fn queued_notifications_outlive_their_process(database_url: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let first = instance(dir.path(), database_url).await;
    let (url, seen) = receiver().await;
    let (s, answer) = upload(
        &first,
        "image",
        &[("public_id", "kept"), ("notification_url", &url)],
        &samples::png(3, 2),
        "k.png",
    )
    .await;
    assert_eq!(s, 200, "{answer}");
    assert_eq!(
        wait_for(&seen, 1).await.len(),
        1,
        "the refused first attempt"
    );
    first.stop().await;
    let second_dir = tempfile::tempdir().unwrap();
    let next_dir = if database_url.is_some() {
        second_dir.path()
    } else {
        dir.path()
    };
    let second = instance(next_dir, database_url).await;
    let calls = wait_for(&seen, 2).await;
    assert_eq!(calls.len(), 2, "the retry, made by the next server");
    let payload: Value = serde_json::from_str(&calls[1].1).unwrap();
    assert_eq!(payload["public_id"], "kept");
    let ts: i64 = calls[1].0["x-cld-timestamp"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let want = nephos::notify::signature(&calls[1].1, ts, SECRET, SignatureAlgorithm::Sha1);
    assert_eq!(calls[1].0["x-cld-signature"].to_str().unwrap(), want);
    // Delivered: nothing more comes.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(seen.lock().unwrap().len(), 2);
    second.stop().await;
}

#[tokio::test]
async fn queued_notifications_outlive_their_process_on_sqlite() {
    queued_notifications_outlive_their_process(None).await;
}

#[tokio::test]
async fn queued_notifications_outlive_their_process_on_postgres() {
    let Some(admin) = postgres_admin_url() else {
        return;
    };
    let pg = PgDb::create(&admin).await;
    queued_notifications_outlive_their_process(Some(&pg.url)).await;
    pg.drop_db().await;
}

/// Two instances on one PostgreSQL database, each queuing notifications: every one is
/// delivered once, whichever instance takes it.
#[tokio::test]
async fn two_instances_deliver_each_notification_once() {
    let Some(admin) = postgres_admin_url() else {
        return;
    };
    let pg = PgDb::create(&admin).await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = instance(dir_a.path(), Some(&pg.url)).await;
    let b = instance(dir_b.path(), Some(&pg.url)).await;
    let (url, seen) = receiver_refusing(0).await;
    let count = 20;
    for i in 0..count {
        let server = if i % 2 == 0 { &a } else { &b };
        let id = format!("once/{i}");
        let (s, j) = upload(
            server,
            "image",
            &[
                ("public_id", id.as_str()),
                ("notification_url", url.as_str()),
            ],
            &samples::png(2, 2),
            "o.png",
        )
        .await;
        assert_eq!(s, 200, "{j}");
    }
    let calls = wait_for(&seen, count).await;
    // Anything delivered twice would show up now.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let calls_after = seen.lock().unwrap().len();
    assert_eq!((calls.len(), calls_after), (count, count));
    let mut ids: Vec<String> = calls
        .iter()
        .map(|(_, body)| {
            let v: Value = serde_json::from_str(body).unwrap();
            v["public_id"].as_str().unwrap().to_string()
        })
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), count);
    a.stop().await;
    b.stop().await;
    pg.drop_db().await;
}
