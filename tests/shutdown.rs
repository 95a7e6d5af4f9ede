//! Graceful shutdown: new connections are refused at once, a request in flight finishes
//! within the deadline, and one past the deadline is cut off.

mod common;

use std::time::Duration;

use common::*;
use nephos::auth::SignatureAlgorithm;

/// A signed upload whose file arrives in `pieces` of 1 KB, one every `gap`; answers the
/// status and body, or the transport error.
fn slow_upload(
    server: &TestServer,
    public_id: &str,
    pieces: usize,
    gap: Duration,
) -> tokio::task::JoinHandle<Result<(u16, serde_json::Value), String>> {
    let ts = now().to_string();
    let fields = signed(
        &[("public_id", public_id), ("timestamp", ts.as_str())],
        KEY,
        SECRET,
        SignatureAlgorithm::Sha1,
    );
    let url = server.upload_url("raw");
    tokio::spawn(async move {
        let body = futures_util::stream::unfold(0usize, move |n| async move {
            if n == pieces {
                return None;
            }
            if n > 0 {
                tokio::time::sleep(gap).await;
            }
            Some((Ok::<_, std::io::Error>(vec![b'x'; 1024]), n + 1))
        });
        let mut form = reqwest::multipart::Form::new();
        for (k, v) in fields {
            form = form.text(k, v);
        }
        form = form.part(
            "file",
            reqwest::multipart::Part::stream(reqwest::Body::wrap_stream(body)).file_name("s.bin"),
        );
        let r = reqwest::Client::new()
            .post(url)
            .multipart(form)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or_default()))
    })
}

#[tokio::test]
async fn requests_in_flight_finish_and_new_connections_are_refused() {
    let mut server = TestServer::start_with_limits("shutdown_timeout_secs = 10").await;
    let addr = server.base.trim_start_matches("http://").to_string();
    // Eight pieces, 100 ms apart: under way when shutdown begins.
    let upload = slow_upload(&server, "slow/one", 8, Duration::from_millis(100));
    tokio::time::sleep(Duration::from_millis(250)).await;
    server.signal_stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The listener is closed: a new connection is refused.
    assert!(tokio::net::TcpStream::connect(&addr).await.is_err());
    let (status, answer) = upload
        .await
        .unwrap()
        .expect("the upload in flight was cut off");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["bytes"], 8 * 1024);
    tokio::time::timeout(Duration::from_secs(5), server.stop())
        .await
        .expect("the server ended after its last request");
}

#[tokio::test]
async fn a_request_past_the_deadline_is_cut_off() {
    let mut server = TestServer::start_with_limits("shutdown_timeout_secs = 1").await;
    // Forty pieces, 100 ms apart: four seconds, past the one-second deadline.
    let upload = slow_upload(&server, "slow/two", 40, Duration::from_millis(100));
    tokio::time::sleep(Duration::from_millis(250)).await;
    let started = std::time::Instant::now();
    server.signal_stop();
    tokio::time::timeout(Duration::from_secs(5), server.stop())
        .await
        .expect("shutdown waited past its deadline");
    assert!(started.elapsed() < Duration::from_secs(3));
    // Cut off: a transport error, or at least no success.
    if let Ok((status, _)) = upload.await.unwrap() {
        assert_ne!(status, 200);
    }
}
