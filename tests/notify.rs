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
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let log = log.clone();
            async move {
                let mut l = log.lock().unwrap();
                l.push((headers, body));
                if l.len() == 1 {
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
