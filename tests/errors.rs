//! The error matrix: every row of the spec's message catalogue that applies to uploads, plus
//! path-traversal attempts, each with its status and message; the server stays healthy and
//! nothing is written outside the data dir.

mod common;

use common::*;
use nephos::auth::SignatureAlgorithm;
use nephos::media::samples;
use reqwest::multipart::{Form, Part};
use serde_json::Value;

async fn post(server: &TestServer, rt: &str, form: Form) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(server.upload_url(rt))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    (s, message(&v))
}

fn fields(pairs: Vec<(String, String)>) -> Form {
    pairs
        .into_iter()
        .fold(Form::new(), |f, (k, v)| f.text(k, v))
}

fn file(form: Form, data: &[u8]) -> Form {
    form.part("file", Part::bytes(data.to_vec()).file_name("f.png"))
}

async fn check(
    server: &TestServer,
    rt: &str,
    params: &[(&str, &str)],
    data: &[u8],
    status: u16,
    msg: &str,
) {
    let (s, body) = upload(server, rt, params, data, "f.png").await;
    assert_eq!(
        (s, message(&body).as_str()),
        (status, msg),
        "params {params:?}"
    );
}

#[tokio::test]
async fn upload_error_matrix() {
    let server = TestServer::start().await;
    let png = samples::png(2, 2);
    let ts = now().to_string();

    // Missing file.
    let (s, m) = post(
        &server,
        "image",
        fields(signed(
            &[("timestamp", &ts)],
            KEY,
            SECRET,
            SignatureAlgorithm::Sha1,
        )),
    )
    .await;
    assert_eq!((s, m.as_str()), (400, "Missing required parameter - file"));

    // Signature mismatch: 401 with the server's string to sign.
    let mut pairs = signed(
        &[("timestamp", &ts), ("public_id", "a")],
        KEY,
        SECRET,
        SignatureAlgorithm::Sha1,
    );
    pairs[1].1 = "b".into();
    let sig = pairs[2].1.clone();
    let (s, m) = post(&server, "image", file(fields(pairs), &png)).await;
    assert_eq!(s, 401);
    assert_eq!(
        m,
        format!("Invalid Signature {sig}. String to sign - 'public_id=b&timestamp={ts}'.")
    );
    // A signature made with another secret.
    let pairs = signed(
        &[("timestamp", &ts)],
        KEY,
        "wrong",
        SignatureAlgorithm::Sha256,
    );
    let (s, m) = post(&server, "image", file(fields(pairs), &png)).await;
    assert_eq!(s, 401);
    assert!(m.starts_with("Invalid Signature "), "{m}");

    // Stale and future timestamps.
    let old = (now() - 3700).to_string();
    let pairs = signed(
        &[("timestamp", &old)],
        KEY,
        SECRET,
        SignatureAlgorithm::Sha1,
    );
    let (s, m) = post(&server, "image", file(fields(pairs), &png)).await;
    assert_eq!(s, 400);
    assert!(
        m.starts_with("Stale request - reported time is ")
            && m.ends_with(" +0000 which is more than 1 hour ago"),
        "{m}"
    );
    let future = (now() + 7300).to_string();
    let pairs = signed(
        &[("timestamp", &future)],
        KEY,
        SECRET,
        SignatureAlgorithm::Sha1,
    );
    let (s, m) = post(&server, "image", file(fields(pairs), &png)).await;
    assert_eq!(s, 400);
    assert!(m.contains("in the future"), "{m}");

    // Unknown key, missing key, missing timestamp.
    let pairs = signed(
        &[("timestamp", &ts)],
        "999",
        SECRET,
        SignatureAlgorithm::Sha1,
    );
    assert_eq!(
        post(&server, "image", file(fields(pairs), &png)).await,
        (401, "Unknown API key 999".into())
    );
    let form = Form::new()
        .text("timestamp", ts.clone())
        .text("signature", "0".repeat(40));
    assert_eq!(
        post(&server, "image", file(form, &png)).await,
        (400, "Missing required parameter - api_key".into())
    );
    let form = Form::new()
        .text("api_key", KEY)
        .text("signature", "0".repeat(40));
    assert_eq!(
        post(&server, "image", file(form, &png)).await,
        (400, "Missing required parameter - timestamp".into())
    );
    // The key of one cloud on another cloud's route.
    let pairs = signed(&[("timestamp", &ts)], KEY, SECRET, SignatureAlgorithm::Sha1);
    let r = reqwest::Client::new()
        .post(server.url("/v1_1/other/image/upload"))
        .multipart(file(fields(pairs), &png))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        message(&r.json().await.unwrap()),
        "Unknown API key 1234567890"
    );
    // A cloud that does not exist.
    let r = reqwest::Client::new()
        .post(server.url("/v1_1/nosuchcloud/image/upload"))
        .multipart(file(Form::new(), &png))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        message(&r.json().await.unwrap()),
        "Invalid cloud_name nosuchcloud"
    );

    // Basic credentials.
    for (user, pass, want) in [
        (KEY, "nope", "api_secret mismatch"),
        ("42", SECRET, "Unknown API key 42"),
    ] {
        let r = reqwest::Client::new()
            .post(server.upload_url("image"))
            .basic_auth(user, Some(pass))
            .multipart(file(Form::new(), &png))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        assert_eq!(message(&r.json().await.unwrap()), want);
    }

    // Unsigned uploads.
    assert_eq!(
        post(&server, "image", file(Form::new(), &png)).await,
        (
            400,
            "Upload preset must be specified when using unsigned upload".into()
        )
    );
    assert_eq!(
        post(
            &server,
            "image",
            file(Form::new().text("upload_preset", "signed_preset"), &png)
        )
        .await,
        (
            400,
            "Upload preset must be whitelisted for unsigned uploads".into()
        )
    );
    assert_eq!(
        post(
            &server,
            "image",
            file(Form::new().text("upload_preset", "nope"), &png)
        )
        .await,
        (400, "Upload preset not found - nope".into())
    );

    // Content problems.
    check(&server, "image", &[], b"", 400, "Empty file").await;
    check(
        &server,
        "image",
        &[],
        b"definitely not an image",
        400,
        "Invalid image file",
    )
    .await;
    check(&server, "video", &[], &png, 400, "Invalid video file").await;
    check(
        &server,
        "image",
        &[("allowed_formats", "jpg,gif")],
        &png,
        400,
        "Image format png not allowed",
    )
    .await;
    check(
        &server,
        "image",
        &[("type", "fetch")],
        &png,
        400,
        "Invalid type fetch: must be one of upload, private, authenticated",
    )
    .await;
    check(
        &server,
        "image",
        &[("overwrite", "maybe")],
        &png,
        400,
        "Invalid value for overwrite - maybe (expected a boolean)",
    )
    .await;
    check(
        &server,
        "image",
        &[("ocr", "adv_ocr")],
        &png,
        400,
        "OCR text detection (ocr) is not enabled for this product environment",
    )
    .await;
    check(
        &server,
        "image",
        &[("auto_transcription", "1")],
        &png,
        400,
        "Automatic transcription (auto_transcription) is not enabled for this product environment",
    )
    .await;
    check(
        &server,
        "image",
        &[("callback", "http://example.com/cb")],
        &png,
        400,
        "Parameter callback is not supported by this server yet",
    )
    .await;
    check(
        &server,
        "image",
        &[("moderation", "aws_rek")],
        &png,
        400,
        "Moderation aws_rek is not enabled for this product environment (only manual is)",
    )
    .await;
    // Harmless false flags are accepted.
    let (s, _) = upload(
        &server,
        "image",
        &[("colors", "0"), ("backup", "0"), ("invalidate", "1")],
        &png,
        "f.png",
    )
    .await;
    assert_eq!(s, 200);

    // File sources.
    for (src, want) in [
        ("s3://bucket/key.png", "Unsupported source URL s3://bucket/key.png: s3 sources are not enabled on this server; upload the bytes, a data URI or an http(s) URL"),
        ("gs://bucket/key.png", "Unsupported source URL gs://bucket/key.png: gs sources are not enabled on this server; upload the bytes, a data URI or an http(s) URL"),
        ("ftp://host/key.png", "Unsupported source URL ftp://host/key.png: ftp sources are not enabled on this server; upload the bytes, a data URI or an http(s) URL"),
        ("data:image/png;base64,@@@@", "Invalid data URI: bad base64 data (Invalid symbol 64, offset 0.)"),
    ] {
        let pairs = signed(&[("timestamp", &ts)], KEY, SECRET, SignatureAlgorithm::Sha1);
        let (s, m) = post(&server, "image", fields(pairs).text("file", src)).await;
        assert_eq!((s, m.as_str()), (400, want));
    }
    let unreachable = "http://127.0.0.1:9/missing.png";
    let pairs = signed(&[("timestamp", &ts)], KEY, SECRET, SignatureAlgorithm::Sha1);
    let (s, m) = post(&server, "image", fields(pairs).text("file", unreachable)).await;
    assert_eq!((s, m), (404, format!("Resource not found - {unreachable}")));
    let missing = server.url("/demo/image/upload/not_there.png");
    let pairs = signed(&[("timestamp", &ts)], KEY, SECRET, SignatureAlgorithm::Sha1);
    let (s, m) = post(
        &server,
        "image",
        fields(pairs).text("file", missing.clone()),
    )
    .await;
    assert_eq!((s, m), (404, format!("Resource not found - {missing}")));
    // A URL that answers HTML (a raw .html asset delivered by this server).
    let (_, page) = upload(
        &server,
        "raw",
        &[("public_id", "page.html")],
        b"<html><body>hi</body></html>",
        "page.html",
    )
    .await;
    let page_url = page["secure_url"].as_str().unwrap().to_string();
    let pairs = signed(&[("timestamp", &ts)], KEY, SECRET, SignatureAlgorithm::Sha1);
    let (s, m) = post(
        &server,
        "image",
        fields(pairs).text("file", page_url.clone()),
    )
    .await;
    assert_eq!(
        (s, m),
        (
            400,
            format!("Resource not found - Error in loading {page_url} - HTML response")
        )
    );

    // Framing problems.
    let r = reqwest::Client::new()
        .post(server.upload_url("image"))
        .header("content-type", "multipart/form-data; boundary=xyz")
        .body("--xyz\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nunterminated")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(message(&r.json().await.unwrap()).starts_with("Invalid multipart body"));
    let r = reqwest::Client::new()
        .post(server.upload_url("image"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(message(&r.json().await.unwrap()).starts_with("Invalid JSON body"));
    let pairs = signed(&[("timestamp", &ts)], KEY, SECRET, SignatureAlgorithm::Sha1);
    let r = reqwest::Client::new()
        .post(server.upload_url("image"))
        .header("content-range", "bytes x-y/z")
        .multipart(file(fields(pairs), &png))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        message(&r.json().await.unwrap()),
        "Invalid Content-Range header - bytes x-y/z"
    );

    // Routes.
    let r = reqwest::Client::new()
        .post(server.url("/v1_1/demo/pictures/upload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        message(&r.json().await.unwrap()),
        "Invalid resource type pictures: must be one of image, video, raw, auto"
    );
    // A known method needs a signature; an unknown one is not a route.
    let r = reqwest::Client::new()
        .post(server.url("/v1_1/demo/image/sprite"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        message(&r.json().await.unwrap()),
        "Missing required parameter - signature"
    );
    let r = reqwest::Client::new()
        .post(server.url("/v1_1/demo/image/sprites"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(message(&r.json().await.unwrap()).starts_with("No route for POST"));

    assert_eq!(server.health().await, 200);
    server.stop().await;
}

#[tokio::test]
async fn public_ids_cannot_escape_the_data_dir() {
    let server = TestServer::start().await;
    let png = samples::png(2, 2);
    let traversal = [
        ("../../etc/passwd", "Invalid public_id '../../etc/passwd': '.' and '..' are not allowed as path segments"),
        ("a/../../b", "Invalid public_id 'a/../../b': '.' and '..' are not allowed as path segments"),
        ("..", "Invalid public_id '..': '.' and '..' are not allowed as path segments"),
        ("..\\..\\windows", "Invalid public_id '..\\..\\windows': it contains the forbidden character '\\'"),
        ("a\u{0}b", "Invalid public_id 'a\u{0}b': it contains the forbidden character control character U+0000"),
        ("%2e%2e/x", "Invalid public_id '%2e%2e/x': it contains the forbidden character '%'"),
        ("v123/x", "Invalid public_id 'v123/x': the folder 'v123' looks like a version (v followed by digits)"),
    ];
    for (id, want) in traversal {
        check(&server, "image", &[("public_id", id)], &png, 400, want).await;
    }
    let long = "x".repeat(256);
    check(
        &server,
        "image",
        &[("public_id", &long)],
        &png,
        400,
        &format!("Invalid public_id '{long}': it is longer than 255 characters"),
    )
    .await;
    check(
        &server,
        "image",
        &[("folder", "../up")],
        &png,
        400,
        "Invalid folder '../up': '.' and '..' are not allowed as path segments",
    )
    .await;
    check(&server, "raw", &[("use_filename", "1")], &png, 200, "").await;

    // Absolute paths and doubled slashes are normalised, and stay inside.
    let (s, r) = upload(&server, "raw", &[("public_id", "/etc//passwd/")], b"x", "p").await;
    assert_eq!((s, r["public_id"].as_str()), (200, Some("etc/passwd")));
    // A file name made of a path is reduced to its last segment.
    let (s, r) = upload(
        &server,
        "raw",
        &[("use_filename", "1"), ("unique_filename", "0")],
        b"y",
        "../../../../tmp/evil.sh",
    )
    .await;
    assert_eq!((s, r["public_id"].as_str()), (200, Some("evil.sh")));

    let data = std::fs::canonicalize(server.data_dir.path()).unwrap();
    for f in server.blob_files() {
        assert!(
            std::fs::canonicalize(&f).unwrap().starts_with(&data),
            "{}",
            f.display()
        );
    }
    assert_eq!(server.blob_files().len(), 3);
    assert!(!std::path::Path::new("/etc/passwd.png").exists());
    assert_eq!(server.health().await, 200);
    server.stop().await;
}

#[tokio::test]
async fn size_limit_reports_the_size() {
    let server = TestServer::start_with_limits("max_upload_bytes = 1000").await;
    let big = vec![7u8; 5000];
    check(
        &server,
        "raw",
        &[],
        &big,
        400,
        "File size too large. Got 5000. Maximum is 1000.",
    )
    .await;
    check(&server, "raw", &[], &big[..1000], 200, "").await;
    // Nothing of the refused body is left in the temp folder.
    let tmp = std::fs::read_dir(server.data_dir.path().join("tmp"))
        .unwrap()
        .count();
    assert_eq!(tmp, 0);
    assert_eq!(server.health().await, 200);
    server.stop().await;
}

/// Unknown actions, resource types and routes, and known routes called with another method,
/// all answer 404 in Cloudinary's JSON error shape.
#[tokio::test]
async fn unknown_routes_and_methods_answer_json_errors() {
    let server = TestServer::start().await;
    let client = reqwest::Client::new();
    let cases = [
        // Every unknown route is a 404, whatever the method (the SDKs turn a 405 into a bare
        // exception).
        (
            "GET",
            "/v1_1/demo/image/upload",
            404,
            "No route for GET /v1_1/demo/image/upload",
        ),
        (
            "PUT",
            "/v1_1/demo/image/upload",
            404,
            "No route for PUT /v1_1/demo/image/upload",
        ),
        (
            "DELETE",
            "/v1_1/demo/upload_presets",
            404,
            "No route for DELETE",
        ),
        (
            "POST",
            "/v1_1/demo/image/frobnicate",
            404,
            "No route for POST /v1_1/demo/image/frobnicate",
        ),
        (
            "POST",
            "/v1_1/demo/all/upload",
            404,
            "Invalid resource type all",
        ),
        (
            "POST",
            "/v1_1/demo/bogus/upload",
            404,
            "Invalid resource type bogus",
        ),
        (
            "POST",
            "/no/such/route",
            404,
            "No route for POST /no/such/route",
        ),
    ];
    for (method, path, status, msg) in cases {
        let r = client
            .request(method.parse().unwrap(), format!("{}{path}", server.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{method} {path}");
        let v: Value = r.json().await.unwrap();
        assert!(message(&v).starts_with(msg), "{method} {path}: {v}");
    }
}
