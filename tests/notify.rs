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
