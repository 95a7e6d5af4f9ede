//! An object store that refuses nephos's one-request `PUT` (a presigned URL): uploads are
//! stored all the same, by multipart upload, whole and with the right etag. And stores whose
//! `PUT` answers carry an `ETag` that is not the object's MD5 (always, or for large objects
//! encrypted with keys of their own): nephos hashes the uploads itself. The store is the test
//! S3 server behind a small proxy of this file that answers 503 to every presigned `PUT` (or
//! passes it on and changes its answer) and passes everything else on. A file of its own: the proxy's address is the process's
//! `AWS_ENDPOINT_URL`, which the other S3 tests set to the server itself.

mod common;

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

use axum::response::IntoResponse;
use common::*;
use md5_ref::{Digest, Md5};

/// What the proxy saw.
#[derive(Default)]
struct Seen {
    refused_puts: AtomicUsize,
    multipart_uploads: AtomicUsize,
    /// What the proxy does to presigned `PUT`s: one of the modes below.
    mode: AtomicU8,
    /// Answers it changed.
    changed_etags: AtomicUsize,
}

/// Presigned `PUT`s are answered 503.
const REFUSE: u8 = 0;
/// They pass, and every answer's `ETag` is changed.
const WRONG_TAGS: u8 = 1;
/// They pass; the answers to those of 1 KiB or more get another `ETag` and say the object is
/// encrypted with a key the store manages (so a small `PUT` gets its true MD5).
const KEY_MANAGED: u8 = 2;

/// The `ETag` the proxy answers instead of the store's.
const WRONG_ETAG: &str = "\"0123456789abcdef0123456789abcdef\"";

/// Starts the proxy in front of `target`; returns its address and what it sees.
async fn refusing_proxy(target: String) -> (String, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let counts = seen.clone();
    let client = reqwest::Client::new();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let (client, target, seen) = (client.clone(), target.clone(), counts.clone());
        async move {
            let (parts, body) = req.into_parts();
            let path_and_query = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_default();
            let method = parts.method.clone();
            let presigned_put =
                method == axum::http::Method::PUT && path_and_query.contains("X-Amz-Signature=");
            let mode = seen.mode.load(Ordering::SeqCst);
            let large = parts
                .headers
                .get("content-length")
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .is_some_and(|n| n >= 1024);
            let change_etag =
                presigned_put && (mode == WRONG_TAGS || (mode == KEY_MANAGED && large));
            if presigned_put && mode == REFUSE {
                seen.refused_puts.fetch_add(1, Ordering::SeqCst);
                return (
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>",
                )
                    .into_response();
            }
            // Starting a multipart upload: `POST <key>?uploads` (with or without `=`).
            if method == axum::http::Method::POST
                && path_and_query.contains("?uploads")
                && !path_and_query.contains("uploadId=")
            {
                seen.multipart_uploads.fetch_add(1, Ordering::SeqCst);
            }
            let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
            let mut out = client.request(method, format!("{target}{path_and_query}"));
            for (name, value) in &parts.headers {
                if !matches!(name.as_str(), "host" | "content-length" | "transfer-encoding") {
                    out = out.header(name, value);
                }
            }
            let answer = out.body(body).send().await.unwrap();
            let status = answer.status();
            // The length stays (a HEAD's answer tells the object's size by it).
            let mut headers = answer.headers().clone();
            headers.remove("transfer-encoding");
            if change_etag && headers.contains_key("etag") {
                headers.insert("etag", WRONG_ETAG.parse().unwrap());
                if mode == KEY_MANAGED {
                    headers.insert("x-amz-server-side-encryption", "aws:kms".parse().unwrap());
                }
                seen.changed_etags.fetch_add(1, Ordering::SeqCst);
            }
            let bytes = answer.bytes().await.unwrap();
            (status, headers, bytes).into_response()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), seen)
}

fn md5_hex(data: &[u8]) -> String {
    hex::encode(Md5::digest(data))
}

#[tokio::test]
async fn a_refused_put_falls_back_to_a_multipart_upload() {
    let Some(endpoint) = s3_endpoint() else {
        return;
    };
    let (proxy, seen) = refusing_proxy(endpoint.clone()).await;
    s3_env(&proxy);
    let prefix = format!("fallback-{}", nephos::util::random_hex(6));
    let toml_text = format!("storage_url = \"s3://{S3_BUCKET}/{prefix}\"\n{DEFAULT_TOML}");
    let server = TestServer::start_with(Backend::Sqlite, &toml_text, None).await;

    // A file stored once it is received (one PUT, refused), and one large enough to be sent
    // to the store as it arrives (that PUT refused, then the finished file's PUT too).
    let small: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let large: Vec<u8> = (0..9 * 1024 * 1024u32)
        .map(|i| (i * 13 % 253) as u8)
        .collect();
    for (name, data) in [("small", &small), ("large", &large)] {
        let refused = seen.refused_puts.load(Ordering::SeqCst);
        let multipart = seen.multipart_uploads.load(Ordering::SeqCst);
        let public_id = format!("fallback/{name}.bin");
        let (s, j) = upload(
            &server,
            "raw",
            &[("public_id", public_id.as_str())],
            data,
            "f.bin",
        )
        .await;
        assert_eq!(s, 200, "{name}: {j}");
        assert_eq!(j["etag"], md5_hex(data), "{name}: {j}");
        assert_eq!(j["bytes"], data.len(), "{name}: {j}");
        assert!(
            seen.refused_puts.load(Ordering::SeqCst) > refused,
            "{name}: no PUT was tried"
        );
        assert!(
            seen.multipart_uploads.load(Ordering::SeqCst) > multipart,
            "{name}: no multipart upload followed the refused PUT"
        );
        // The object holds the whole file: delivered back through nephos, and in the bucket
        // (read from the S3 server directly) under the upload's prefix.
        let listing = s3_listing(&endpoint, &format!("{prefix}/")).await;
        let sizes: Vec<usize> = listing
            .split("<Size>")
            .skip(1)
            .filter_map(|s| s.split("</Size>").next()?.parse().ok())
            .collect();
        assert!(
            sizes.contains(&data.len()),
            "{name}: no object of {} bytes in {listing}",
            data.len()
        );
        let (s, back) = get_bytes(j["secure_url"].as_str().unwrap()).await;
        assert_eq!(s, 200, "{name}");
        assert_eq!(md5_hex(&back), md5_hex(data), "{name}: delivered bytes");
    }
    server.stop().await;

    // Stores whose PUT answers tell another ETag than the object's MD5: always (the check of
    // the store's answers fails), or for large objects encrypted with keys of its own (the
    // check passes; the answers that say so are not taken). Uploads sent to them as they
    // arrive, in one request and in parts followed as they come, still get the MD5 of their
    // bytes, hashed here.
    for mode in [WRONG_TAGS, KEY_MANAGED] {
        seen.mode.store(mode, Ordering::SeqCst);
        let prefix = format!("etag{mode}-{}", nephos::util::random_hex(6));
        let toml_text = format!("storage_url = \"s3://{S3_BUCKET}/{prefix}\"\n{DEFAULT_TOML}");
        let server = TestServer::start_with(Backend::Sqlite, &toml_text, None).await;
        let changed = seen.changed_etags.load(Ordering::SeqCst);
        let (s, j) = upload(
            &server,
            "raw",
            &[("public_id", "etag/large.bin")],
            &large,
            "f.bin",
        )
        .await;
        assert_eq!(s, 200, "mode {mode}: {j}");
        assert_eq!(j["etag"], md5_hex(&large), "mode {mode}: {j}");
        let after_single = seen.changed_etags.load(Ordering::SeqCst);
        assert!(
            after_single > changed + usize::from(mode == WRONG_TAGS),
            "mode {mode}: the upload went as no streamed PUT"
        );
        let id = nephos::util::random_hex(8);
        let parts = [0..5_242_880, 5_242_880..large.len()];
        let mut last = serde_json::Value::Null;
        for range in parts {
            let (start, end) = (range.start, range.end - 1);
            let form = signed_form(&[("public_id", "etag/chunked")], &large[range], "c.bin");
            let range = format!("{start}-{end}/{}", large.len());
            let (status, answer) = upload_part(&server, "raw", &id, &range, form).await;
            assert_eq!(status, 200, "mode {mode}: {answer}");
            last = answer;
        }
        assert_eq!(last["etag"], md5_hex(&large), "mode {mode}: {last}");
        assert!(
            seen.changed_etags.load(Ordering::SeqCst) > after_single,
            "mode {mode}: the chunked upload went as no streamed PUT"
        );
        let (s, back) = get_bytes(last["secure_url"].as_str().unwrap()).await;
        assert_eq!(s, 200);
        assert_eq!(
            md5_hex(&back),
            md5_hex(&large),
            "mode {mode}: delivered bytes"
        );
        server.stop().await;
    }
}
