//! What a client could forge or reach: signature version 1 merges, empty values, and the
//! fetch policy (issue: nothing a client sends can forge, reach inside, or wear down the
//! server).

mod common;

use common::*;
use nephos::auth::{api_sign, SignatureAlgorithm};
use nephos::media::samples;
use reqwest::multipart::{Form, Part};
use serde_json::Value;

async fn post_form(server: &TestServer, fields: &[(&str, &str)], data: &[u8]) -> (u16, Value) {
    let mut form = Form::new();
    for (k, v) in fields {
        form = form.text(k.to_string(), v.to_string());
    }
    form = form.part("file", Part::bytes(data.to_vec()).file_name("f.png"));
    let r = reqwest::Client::new()
        .post(server.upload_url("image"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn signature_version_1_cannot_merge_parameters() {
    let server = TestServer::start().await;
    let ts = now().to_string();
    // Signed over three parameters; resent as one whose value carries the others.
    let sig = api_sign(
        &format!("folder=fold&public_id=mergeme&timestamp={ts}"),
        SECRET,
        SignatureAlgorithm::Sha1,
    );
    let (s, body) = post_form(
        &server,
        &[
            ("folder", "fold&public_id=mergeme"),
            ("timestamp", &ts),
            ("api_key", KEY),
            ("signature", &sig),
        ],
        &samples::png(2, 2),
    )
    .await;
    assert_eq!(s, 401, "{body}");
    // The genuine request is accepted.
    let (s, body) = post_form(
        &server,
        &[
            ("folder", "fold"),
            ("public_id", "mergeme"),
            ("timestamp", &ts),
            ("api_key", KEY),
            ("signature", &sig),
        ],
        &samples::png(2, 2),
    )
    .await;
    assert_eq!(
        (s, &body["public_id"]),
        (200, &Value::from("fold/mergeme")),
        "{body}"
    );
    server.stop().await;
}

#[tokio::test]
async fn empty_values_added_to_a_signed_upload_mean_absent() {
    let server = TestServer::start().await;
    let png = samples::png(2, 2);
    let (s, _) = upload(&server, "image", &[("public_id", "same")], &png, "a.png").await;
    assert_eq!(s, 200);
    let ts = now().to_string();
    let mut fields = signed(
        &[("public_id", "same"), ("timestamp", &ts)],
        KEY,
        SECRET,
        SignatureAlgorithm::Sha1,
    );
    // Unsigned empty additions: none of them may change what happens.
    for name in ["overwrite", "unique_filename", "asset_folder", "type"] {
        fields.push((name.to_string(), String::new()));
    }
    let refs: Vec<(&str, &str)> = fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let (s, body) = post_form(&server, &refs, &png).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        body["overwritten"], true,
        "overwrite= must not turn overwriting off: {body}"
    );
    assert_eq!(body["type"], "upload");
    assert_eq!(body["asset_folder"], "");
    server.stop().await;
}

/// A loopback HTTP server answering every request with `body` (or a redirect to `location`).
async fn tiny_server(body: &'static [u8], location: Option<String>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let location = location.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let head = match &location {
                    Some(l) => {
                        format!("HTTP/1.1 302 Found\r\nLocation: {l}\r\nContent-Length: 0\r\n\r\n")
                    }
                    None => format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    ),
                };
                let _ = sock.write_all(head.as_bytes()).await;
                if location.is_none() {
                    let _ = sock.write_all(body).await;
                }
            });
        }
    });
    format!("http://{addr}")
}

/// A server without the tests' loopback allowance: the default policy.
async fn default_policy_server() -> TestServer {
    let toml_text = DEFAULT_TOML.replace(r#"allow_fetch_from = ["127.0.0.0/8", "::1/128"]"#, "");
    TestServer::start_with(Backend::Sqlite, &toml_text, None).await
}

#[tokio::test]
async fn fetches_refuse_special_addresses_unless_allowed() {
    static PNG: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let png: &'static [u8] = PNG.get_or_init(|| samples::png(3, 3));
    let local = tiny_server(png, None).await;
    let port = local.rsplit(':').next().unwrap().to_string();
    let server = default_policy_server().await;
    let refused = [
        format!("{local}/a.png"),
        format!("http://localhost:{port}/a.png"),
        format!("http://2130706433:{port}/a.png"),
        format!("http://0x7f.1:{port}/a.png"),
        format!("http://[::ffff:127.0.0.1]:{port}/a.png"),
        format!("http://user@127.0.0.1:{port}/a.png"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://[fd00:ec2::254]/".to_string(),
        "http://10.0.0.1/a.png".to_string(),
        "http://192.168.1.1/a.png".to_string(),
        "file:///etc/passwd".to_string(),
        "gopher://127.0.0.1:70/".to_string(),
    ];
    for url in &refused {
        let (s, body) = upload_url(&server, url).await;
        assert_eq!(s, 400, "{url}: {body}");
        let msg = message(&body);
        assert!(
            msg.contains("NEPHOS_ALLOW_FETCH_FROM")
                || msg.contains("not enabled")
                || msg.contains("credentials")
                || msg.contains("expected a file, a data URI or an http(s) URL"),
            "{url}: {msg}"
        );
    }
    server.stop().await;
    // With the loopback allowance (the tests' default configuration) the same fetch works.
    let allowed = TestServer::start().await;
    let (s, body) = upload_url(&allowed, &format!("{local}/a.png")).await;
    assert_eq!(s, 200, "{body}");
    allowed.stop().await;
}

#[tokio::test]
async fn redirects_are_checked_on_every_hop() {
    static PNG: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let png: &'static [u8] = PNG.get_or_init(|| samples::png(3, 3));
    let target = tiny_server(png, None).await;
    // Allowed: only the redirecting host's name (it resolves to loopback); its redirect to a
    // loopback literal is not.
    let hop = tiny_server(b"", Some(format!("{target}/a.png"))).await;
    let hop_port = hop.rsplit(':').next().unwrap();
    let toml_text = DEFAULT_TOML.replace(
        r#"allow_fetch_from = ["127.0.0.0/8", "::1/128"]"#,
        r#"allow_fetch_from = ["localhost"]"#,
    );
    let server = TestServer::start_with(Backend::Sqlite, &toml_text, None).await;
    let (s, body) = upload_url(&server, &format!("http://localhost:{hop_port}/start")).await;
    assert_eq!(s, 400, "{body}");
    assert!(message(&body).contains("NEPHOS_ALLOW_FETCH_FROM"), "{body}");
    // The allowed name itself is fetched.
    let target_port = target.rsplit(':').next().unwrap();
    let (s, body) = upload_url(&server, &format!("http://localhost:{target_port}/a.png")).await;
    assert_eq!(s, 200, "{body}");
    // Webhooks may not aim at metadata or link-local addresses.
    let (s, body) = upload(
        &server,
        "image",
        &[("notification_url", "http://169.254.169.254/hook")],
        &samples::png(2, 2),
        "a.png",
    )
    .await;
    assert_eq!(s, 400, "{body}");
    server.stop().await;
}

async fn upload_url(server: &TestServer, url: &str) -> (u16, Value) {
    let ts = now().to_string();
    // `file` is never signed: sign without it, then add it.
    let mut fields: Vec<(String, String)> =
        signed(&[("timestamp", &ts)], KEY, SECRET, SignatureAlgorithm::Sha1);
    fields.push(("file".into(), url.to_string()));
    let r = reqwest::Client::new()
        .post(server.upload_url("image"))
        .form(&fields)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn hostile_bodies_and_headers_are_refused_quickly() {
    let server = TestServer::start().await;
    let client = reqwest::Client::new();
    // A Content-Range that would wrap u64 is a 400, not a 500.
    let ts = now().to_string();
    let fields = signed(&[("timestamp", &ts)], KEY, SECRET, SignatureAlgorithm::Sha1);
    let mut form = Form::new();
    for (k, v) in fields {
        form = form.text(k, v);
    }
    form = form.part("file", Part::bytes(vec![0u8; 10]).file_name("f.bin"));
    let r = client
        .post(server.upload_url("raw"))
        .header(
            "content-range",
            "bytes 18446744073709551614-18446744073709551615/-1",
        )
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // 100k fields: refused at the field limit, unauthenticated, without work per field.
    let many: String = (0..100_000).map(|i| format!("f{i}=x&")).collect();
    let started = std::time::Instant::now();
    let r = client
        .post(server.upload_url("image"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(many)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(message(&r.json().await.unwrap()).starts_with("Too many parameters"));
    let json: String = format!(
        "{{{}\"x\":1}}",
        (0..5000)
            .map(|i| format!("\"k{i}\":1,"))
            .collect::<String>()
    );
    let r = client
        .post(server.upload_url("image"))
        .header("content-type", "application/json")
        .body(json)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // (No timing assertion: the limit is what is tested; the elapsed time is only reported.)
    eprintln!("field floods refused in {:?}", started.elapsed());
    // A search expression nested 2,000 deep is a 400, not a crash.
    let deep = format!("{}a{}", "(".repeat(2000), ")".repeat(2000));
    let (s, body) = admin(
        &server,
        "POST",
        "resources/search",
        Some(serde_json::json!({"expression": deep})),
    )
    .await;
    assert_eq!(s, 400, "{body}");
    // A request head past 64 KiB is refused (431), and a head just under it still answers.
    for (kib, status) in [(70, 431), (60, 200)] {
        let r = client
            .get(server.url("/health"))
            .header("x-filler", "a".repeat(kib * 1024))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{kib} KiB of headers");
    }
    assert_eq!(server.health().await, 200);
    server.stop().await;
}

#[tokio::test]
async fn slow_clients_are_cut_off_and_connections_capped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start_with_limits(
        "header_timeout_secs = 1\nbody_timeout_secs = 1\nmax_connections = 4",
    )
    .await;
    let addr = server.base.trim_start_matches("http://").to_string();
    // Headers that never finish: the connection is closed after the header deadline.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        slow.read_to_end(&mut buf),
    )
    .await;
    assert!(read.is_ok(), "the slow connection is still open after 5 s");
    // A body that stops arriving is abandoned with an answer.
    let mut stalled = tokio::net::TcpStream::connect(&addr).await.unwrap();
    stalled
        .write_all(
            b"POST /v1_1/demo/image/upload HTTP/1.1\r\nHost: x\r\n\
              Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nab",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stalled.read_to_end(&mut answer),
    )
    .await;
    assert!(
        read.is_ok(),
        "the stalled body is still waited for after 5 s"
    );
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    // Past the connection cap, new connections are closed at once; held ones time out. A
    // connection's slot is given back when the server's task for it ends, which on another
    // thread may be just after the client saw it closed: four connections are held once all
    // four stay open (one closed at once met a slot not given back yet, and is tried again).
    let mut held = Vec::new();
    for _ in 0..50 {
        while held.len() < 4 {
            held.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let mut open = Vec::new();
        for mut c in held.drain(..) {
            let mut byte = [0u8; 1];
            let read =
                tokio::time::timeout(std::time::Duration::from_millis(20), c.read(&mut byte)).await;
            // Still waiting for a request: open.
            if read.is_err() {
                open.push(c);
            }
        }
        held = open;
        if held.len() == 4 {
            break;
        }
    }
    assert_eq!(held.len(), 4, "four connections could not be held");
    let over = reqwest::Client::new()
        .get(format!("http://{addr}/health"))
        .timeout(std::time::Duration::from_secs(3))
        .send()
        .await;
    assert!(over.is_err(), "a fifth connection was served: {over:?}");
    drop(held);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(server.health().await, 200);
    server.stop().await;
}

#[tokio::test]
async fn cross_origin_pages_cannot_use_credentials() {
    let server = TestServer::start().await;
    let client = reqwest::Client::new();
    let preflight = |method: &str, headers: &str| {
        client
            .request(reqwest::Method::OPTIONS, server.url("/v1_1/demo/ping"))
            .header("origin", "https://evil.example")
            .header("access-control-request-method", method)
            .header("access-control-request-headers", headers)
            .send()
    };
    // The Admin API needs an Authorization header: a page may not send one.
    let r = preflight("GET", "authorization").await.unwrap();
    let allowed = r
        .headers()
        .get("access-control-allow-headers")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    assert!(!allowed.contains("authorization"), "{allowed}");
    assert!(r
        .headers()
        .get("access-control-allow-credentials")
        .is_none());
    // Uploads from a page (multipart, chunked headers) are allowed.
    let r = preflight("POST", "content-type,x-unique-upload-id,content-range")
        .await
        .unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    server.stop().await;
}

#[tokio::test]
async fn bad_credentials_are_refused_before_the_file_is_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start().await;
    let addr = server.base.trim_start_matches("http://").to_string();
    let ts = now().to_string();
    for (key, ts) in [("nokey", ts.as_str()), (KEY, "1000")] {
        let boundary = "XyZ";
        let head = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"api_key\"\r\n\r\n{key}\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"timestamp\"\r\n\r\n{ts}\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"signature\"\r\n\r\nabc\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f.bin\"\r\n\r\n"
        );
        let mut sock = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let request = format!(
            "POST /v1_1/demo/raw/upload HTTP/1.1\r\nHost: x\r\n\
             Content-Type: multipart/form-data; boundary={boundary}\r\n\
             Content-Length: 1000000000\r\n\r\n{head}"
        );
        sock.write_all(request.as_bytes()).await.unwrap();
        sock.write_all(&[0u8; 4096]).await.unwrap();
        // The rest of the gigabyte never comes: the answer must not wait for it.
        let mut buf = vec![0u8; 1024];
        let n = tokio::time::timeout(std::time::Duration::from_secs(3), sock.read(&mut buf))
            .await
            .expect("no answer before the file was read")
            .unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(
            text.starts_with("HTTP/1.1 401") || text.starts_with("HTTP/1.1 400"),
            "{key}: {text}"
        );
    }
    server.stop().await;
}
