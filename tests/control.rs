//! The control API (`/_nephos/`), ephemeral mode, TLS on the same port, startup errors and
//! the health check, through plain HTTP against the real server.

mod common;

use std::time::Duration;

use common::*;
use nephos::config::{Config, FileConfig, ServeArgs};
use serde_json::{json, Value};

const PNG: &[u8] = include_bytes!("../tests/sdk/assets/logo.png");

fn control(server: &TestServer, method: &str, path: &str) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .request(
            method.parse().unwrap(),
            server.url(&format!("/_nephos{path}")),
        )
        .header("x-nephos-control", "1")
}

async fn json_of(r: reqwest::RequestBuilder) -> (u16, Value) {
    let r = r.send().await.expect("request");
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

/// A signed upload with any account.
async fn upload_as(
    server: &TestServer,
    cloud: &str,
    key: &str,
    secret: &str,
    params: &[(&str, &str)],
) -> (u16, Value) {
    let ts = now().to_string();
    let mut all = params.to_vec();
    all.push(("timestamp", &ts));
    let mut form = reqwest::multipart::Form::new();
    for (k, v) in signed(&all, key, secret, nephos::auth::SignatureAlgorithm::Sha1) {
        form = form.text(k, v);
    }
    form = form.part(
        "file",
        reqwest::multipart::Part::bytes(PNG.to_vec()).file_name("logo.png"),
    );
    json_of(
        reqwest::Client::new()
            .post(server.url(&format!("/v1_1/{cloud}/image/upload")))
            .multipart(form),
    )
    .await
}

async fn list_images(server: &TestServer, cloud: &str, key: &str, secret: &str) -> Vec<String> {
    let (s, j) = json_of(
        reqwest::Client::new()
            .get(server.url(&format!("/v1_1/{cloud}/resources/image")))
            .basic_auth(key, Some(secret)),
    )
    .await;
    assert_eq!(s, 200, "{j}");
    j["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["public_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn calls_need_the_header_or_the_token_and_get_no_cors() {
    let server = TestServer::start().await;
    // No header: refused, with the reason.
    let (s, j) = json_of(reqwest::Client::new().get(server.url("/_nephos/clouds"))).await;
    assert_eq!(s, 403);
    assert!(message(&j).contains("X-Nephos-Control"), "{j}");
    // Through a reverse proxy, the peer is not local whatever the Host says.
    let (s, _) =
        json_of(control(&server, "GET", "/clouds").header("x-forwarded-for", "203.0.113.9")).await;
    assert_eq!(s, 403);
    // A DNS-rebinding page addresses another host name.
    let (s, _) = json_of(control(&server, "GET", "/clouds").header("host", "evil.example")).await;
    assert_eq!(s, 403);
    // A preflight from a web page is not answered with CORS headers.
    let r = reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, server.url("/_nephos/reset"))
        .header("origin", "http://evil.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "x-nephos-control")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    // The API itself still sends CORS headers, and exposes the request id.
    let r = reqwest::Client::new()
        .get(server.url("/health"))
        .header("origin", "http://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    let exposed = r.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(exposed.contains("x-request-id"), "{exposed}");
    let vary: Vec<_> = r.headers().get_all("vary").iter().collect();
    assert_eq!(
        vary,
        ["origin, access-control-request-method, access-control-request-headers"]
    );
    // The same CORS headers whether or not the call names an origin (as tower-http's layer
    // gives them).
    let plain = reqwest::get(server.url("/health")).await.unwrap();
    for r in [&r, &plain] {
        assert_eq!(r.headers()["access-control-allow-origin"], "*");
        assert_eq!(
            r.headers()["access-control-expose-headers"],
            "x-request-id,x-cld-error,x-featureratelimit-limit,x-featureratelimit-remaining,\
             x-featureratelimit-reset,content-length,content-range,etag"
        );
        assert_eq!(
            r.headers()
                .get_all("access-control-allow-origin")
                .iter()
                .count(),
            1
        );
    }
    let (s, j) = json_of(control(&server, "GET", "/clouds")).await;
    assert_eq!(s, 200);
    assert_eq!(j["clouds"][0]["cloud_name"], "demo");
    let (s, _) = json_of(control(&server, "GET", "/nothing-here")).await;
    assert_eq!(s, 404);
    server.stop().await;
}

async fn start_with_args(toml_text: &str, args: ServeArgs) -> TestServer {
    let data_dir = tempfile::tempdir().unwrap();
    let file: FileConfig = toml::from_str(toml_text).unwrap();
    let args = ServeArgs {
        listen: Some("127.0.0.1:0".into()),
        data_dir: Some(data_dir.path().to_path_buf()),
        ..args
    };
    let config = Config::from_parts(file, &args).unwrap();
    TestServer::launch(config, data_dir, None).await
}

#[tokio::test]
async fn a_token_replaces_the_header_and_no_control_turns_it_off() {
    let server = start_with_args(
        DEFAULT_TOML,
        ServeArgs {
            control_token: Some("s3cret-token".into()),
            ..Default::default()
        },
    )
    .await;
    let (s, _) = json_of(control(&server, "GET", "/clouds")).await;
    assert_eq!(s, 401);
    let (s, _) = json_of(
        reqwest::Client::new()
            .get(server.url("/_nephos/clouds"))
            .bearer_auth("wrong-token"),
    )
    .await;
    assert_eq!(s, 401);
    let (s, _) = json_of(
        reqwest::Client::new()
            .get(server.url("/_nephos/clouds"))
            .bearer_auth("s3cret-token")
            .header("host", "nephos.internal"),
    )
    .await;
    assert_eq!(s, 200);
    server.stop().await;

    let off = start_with_args(
        DEFAULT_TOML,
        ServeArgs {
            no_control: true,
            ..Default::default()
        },
    )
    .await;
    let (s, _) = json_of(control(&off, "GET", "/clouds")).await;
    assert_eq!(s, 404);
    // The console goes with the control API.
    let r = reqwest::get(off.url("/console")).await.unwrap();
    assert_eq!(r.status(), 404);
    off.stop().await;
}

#[tokio::test]
async fn the_console_is_served_with_a_strict_policy() {
    let server = TestServer::start().await;
    for (path, kind) in [
        ("/console", "text/html"),
        ("/console/app.js", "text/javascript"),
        ("/console/app.css", "text/css"),
    ] {
        let r = reqwest::get(server.url(path)).await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers();
        assert!(
            h["content-type"].to_str().unwrap().starts_with(kind),
            "{path}"
        );
        let policy = h["content-security-policy"].to_str().unwrap();
        assert!(policy.contains("default-src 'none'") && policy.contains("script-src 'self'"));
        assert_eq!(h["x-frame-options"], "DENY");
    }
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(server.url("/console/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(r.headers()["location"], "/console");
    server.stop().await;
}

#[tokio::test]
async fn clouds_are_created_isolated_reset_and_deleted() {
    let server = TestServer::start().await;
    let (s, a) = json_of(control(&server, "POST", "/clouds")).await;
    assert_eq!(s, 201, "{a}");
    let (s, b) = json_of(control(&server, "POST", "/clouds").json(&json!({
        "name": "team-b", "api_key": "4242", "api_secret": "bsecret"
    })))
    .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(
        b["cloudinary_url"],
        format!(
            "cloudinary://4242:bsecret@team-b?upload_prefix={}",
            server.base
        )
    );
    let (s, _) =
        json_of(control(&server, "POST", "/clouds").json(&json!({"name": "team-b"}))).await;
    assert_eq!(s, 409);
    let (s, _) = json_of(control(&server, "POST", "/clouds").json(&json!({"name": "a/b"}))).await;
    assert_eq!(s, 400);

    let (ca, ka, sa) = (
        a["cloud_name"].as_str().unwrap(),
        a["api_key"].as_str().unwrap(),
        a["api_secret"].as_str().unwrap(),
    );
    let (s, up) = upload_as(&server, ca, ka, sa, &[("public_id", "only-in-a")]).await;
    assert_eq!(s, 200, "{up}");
    let (s, _) = upload_as(
        &server,
        "team-b",
        "4242",
        "bsecret",
        &[("public_id", "only-in-b")],
    )
    .await;
    assert_eq!(s, 200);
    // A's key does not open B.
    let (s, _) = upload_as(&server, "team-b", ka, sa, &[("public_id", "x")]).await;
    assert_eq!(s, 401);
    assert_eq!(list_images(&server, ca, ka, sa).await, vec!["only-in-a"]);
    assert_eq!(
        list_images(&server, "team-b", "4242", "bsecret").await,
        vec!["only-in-b"]
    );
    let (s, _) = get_bytes(up["secure_url"].as_str().unwrap()).await;
    assert_eq!(s, 200);

    // Resetting A leaves B alone.
    let (s, _) = json_of(control(&server, "POST", &format!("/clouds/{ca}/reset"))).await;
    assert_eq!(s, 200);
    assert!(list_images(&server, ca, ka, sa).await.is_empty());
    let (s, _) = get_bytes(up["secure_url"].as_str().unwrap()).await;
    assert_eq!(s, 404);
    assert_eq!(
        list_images(&server, "team-b", "4242", "bsecret").await,
        vec!["only-in-b"]
    );

    // Deleting B: its keys stop working, and the fault rules about it go with it.
    let (s, _) = json_of(
        control(&server, "POST", "/faults").json(&json!({"cloud": "team-b", "status": 503})),
    )
    .await;
    assert_eq!(s, 201);
    // A rule without a path leaves /health alone.
    let (s, _) = json_of(
        control(&server, "POST", "/faults")
            .json(&json!({"status": 500, "times": 1, "method": "GET", "path": null})),
    )
    .await;
    assert_eq!(s, 201);
    assert_eq!(server.health().await, 200);
    let (s, _) = json_of(control(&server, "DELETE", "/faults")).await;
    assert_eq!(s, 200);
    let (s, _) = json_of(
        control(&server, "POST", "/faults").json(&json!({"cloud": "team-b", "status": 503})),
    )
    .await;
    assert_eq!(s, 201);
    let (s, _) = json_of(control(&server, "DELETE", "/clouds/team-b")).await;
    assert_eq!(s, 200);
    let (_, j) = json_of(control(&server, "GET", "/faults")).await;
    assert_eq!(j["faults"], json!([]), "{j}");
    let (s, _) = upload_as(&server, "team-b", "4242", "bsecret", &[]).await;
    assert_ne!(s, 200);
    let (s, _) = json_of(control(&server, "DELETE", "/clouds/team-b")).await;
    assert_eq!(s, 404);

    // A full reset removes the clouds made at run time and empties the configured ones.
    let (s, _) = upload(&server, "image", &[("public_id", "demo-one")], PNG, "a.png").await;
    assert_eq!(s, 200);
    let (s, _) = json_of(control(&server, "POST", "/reset")).await;
    assert_eq!(s, 200);
    assert!(list_images(&server, CLOUD, KEY, SECRET).await.is_empty());
    let (_, clouds) = json_of(control(&server, "GET", "/clouds")).await;
    let names: Vec<&str> = clouds["clouds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["cloud_name"].as_str().unwrap())
        .collect();
    assert!(!names.contains(&ca), "{names:?}");
    assert!(names.contains(&"demo") && names.contains(&"other"));
    // The configured presets are back after the reset.
    let form = reqwest::multipart::Form::new()
        .text("upload_preset", "my_unsigned_preset")
        .part(
            "file",
            reqwest::multipart::Part::bytes(PNG.to_vec()).file_name("p.png"),
        );
    let (s, j) = json_of(
        reqwest::Client::new()
            .post(server.upload_url("image"))
            .multipart(form),
    )
    .await;
    assert_eq!(s, 200, "{j}");
    server.stop().await;
}

#[tokio::test]
async fn a_reset_removes_folders_fields_and_upload_sessions() {
    let server = TestServer::start().await;
    let (s, _) = admin(&server, "POST", "folders/keep/me", None).await;
    assert_eq!(s, 200);
    let (s, j) = admin(
        &server,
        "POST",
        "metadata_fields",
        Some(json!({"type": "string", "external_id": "color", "label": "Color"})),
    )
    .await;
    assert_eq!(s, 200, "{j}");
    // Half a chunked upload.
    let part = vec![7u8; 6_000_000];
    let mut form = reqwest::multipart::Form::new();
    let ts = now().to_string();
    for (k, v) in signed(
        &[("timestamp", &ts)],
        KEY,
        SECRET,
        nephos::auth::SignatureAlgorithm::Sha1,
    ) {
        form = form.text(k, v);
    }
    form = form.part(
        "file",
        reqwest::multipart::Part::bytes(part).file_name("big.bin"),
    );
    let r = reqwest::Client::new()
        .post(server.upload_url("raw"))
        .header("content-range", "bytes 0-5999999/20000000")
        .header("x-unique-upload-id", "reset-me-1")
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (s, _) = json_of(control(&server, "POST", "/clouds/demo/reset")).await;
    assert_eq!(s, 200);
    let (_, folders) = admin(&server, "GET", "folders", None).await;
    assert_eq!(folders["folders"], json!([]), "{folders}");
    let (_, fields) = admin(&server, "GET", "metadata_fields", None).await;
    assert_eq!(fields["metadata_fields"], json!([]), "{fields}");
    let chunk_dirs = std::fs::read_dir(server.data_dir.path().join("chunks"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(chunk_dirs, 0);
    server.stop().await;
}

#[tokio::test]
async fn seeding_uploads_a_folder_with_ids_from_relative_paths() {
    let seed = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(seed.path().join("brand/icons")).unwrap();
    std::fs::write(seed.path().join("brand/icons/logo.png"), PNG).unwrap();
    std::fs::write(seed.path().join("terms.txt"), b"the terms").unwrap();
    let server = start_with_args(
        DEFAULT_TOML,
        ServeArgs {
            seed: Some(seed.path().to_path_buf()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        list_images(&server, CLOUD, KEY, SECRET).await,
        vec!["brand/icons/logo"]
    );
    let (s, j) = admin(&server, "GET", "resources/raw", None).await;
    assert_eq!(s, 200);
    assert_eq!(j["resources"][0]["public_id"], "terms.txt");
    let (s, _) = get_bytes(&server.url("/demo/raw/upload/terms.txt")).await;
    assert_eq!(s, 200);
    // Seeding a cloud created at run time from a given folder.
    let (_, c) =
        json_of(control(&server, "POST", "/clouds").json(&json!({"name": "seeded"}))).await;
    let (s, j) = json_of(
        control(&server, "POST", "/clouds/seeded/seed")
            .json(&json!({"path": seed.path().to_string_lossy()})),
    )
    .await;
    assert_eq!(s, 200, "{j}");
    assert_eq!(j["uploaded"].as_array().unwrap().len(), 2);
    let key = c["api_key"].as_str().unwrap();
    let secret = c["api_secret"].as_str().unwrap();
    assert_eq!(
        list_images(&server, "seeded", key, secret).await,
        vec!["brand/icons/logo"]
    );
    // A reset of a configured cloud seeds it again.
    let (s, _) = upload(&server, "image", &[("public_id", "extra")], PNG, "x.png").await;
    assert_eq!(s, 200);
    let (s, _) = json_of(control(&server, "POST", "/clouds/demo/reset")).await;
    assert_eq!(s, 200);
    assert_eq!(
        list_images(&server, CLOUD, KEY, SECRET).await,
        vec!["brand/icons/logo"]
    );
    let (s, j) = json_of(
        control(&server, "POST", "/clouds/demo/seed").json(&json!({"path": "/no/such/folder"})),
    )
    .await;
    assert_eq!(s, 400);
    assert!(message(&j).contains("/no/such/folder"), "{j}");
    server.stop().await;
}

#[tokio::test]
async fn requests_are_recorded_without_secrets_and_filtered() {
    let server = TestServer::start().await;
    let since = chrono::Utc::now().timestamp_millis();
    let (s, _) = upload(&server, "image", &[("public_id", "rec/one")], PNG, "a.png").await;
    assert_eq!(s, 200);
    let (s, _) = upload(
        &server,
        "image",
        &[("public_id", "bad id?")],
        b"not an image",
        "a.png",
    )
    .await;
    assert_eq!(s, 400);
    let (s, _) = admin(&server, "GET", "resources/image", None).await;
    assert_eq!(s, 200);
    let (_, j) = json_of(control(&server, "GET", &format!("/requests?since={since}"))).await;
    let list = j["requests"].as_array().unwrap();
    assert_eq!(list.len(), 3, "{j}");
    let first = &list[0];
    assert_eq!(first["method"], "POST");
    assert_eq!(first["path"], "/v1_1/demo/image/upload");
    assert_eq!(first["cloud"], "demo");
    assert_eq!(first["status"], 200);
    assert_eq!(first["params"]["public_id"], "rec/one");
    assert_eq!(first["params"]["signature"], "***");
    assert!(first["request_id"].as_str().unwrap().len() >= 16);
    assert!(first["duration_ms"].as_f64().is_some());
    assert_eq!(list[1]["status"], 400);
    assert!(
        !list[1]["error"].as_str().unwrap().is_empty(),
        "{}",
        list[1]
    );
    let (_, j) = json_of(control(&server, "GET", "/requests?status=400")).await;
    assert_eq!(j["requests"].as_array().unwrap().len(), 1);
    let (_, j) = json_of(control(
        &server,
        "GET",
        "/requests?method=GET&path_prefix=/v1_1/demo/resources",
    ))
    .await;
    assert_eq!(j["requests"].as_array().unwrap().len(), 1);
    let (_, j) = json_of(control(&server, "GET", "/requests?cloud=other")).await;
    assert_eq!(j["requests"].as_array().unwrap().len(), 0);
    let (_, j) = json_of(control(&server, "GET", "/requests?limit=1")).await;
    assert_eq!(j["requests"][0]["method"], "GET");
    let (s, _) = json_of(control(&server, "GET", "/requests?since=yesterday")).await;
    assert_eq!(s, 400);
    let (s, j) = json_of(control(&server, "GET", "/requests?status=abc")).await;
    assert_eq!(s, 400);
    assert!(message(&j).starts_with("Invalid query"), "{j}");
    let (s, _) = json_of(control(&server, "DELETE", "/requests")).await;
    assert_eq!(s, 200);
    let (_, j) = json_of(control(&server, "GET", "/requests")).await;
    assert_eq!(j["requests"], json!([]));
    server.stop().await;
}

/// A webhook receiver on loopback answering `status`; records the bodies it got.
async fn receiver(status: u16) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use axum::routing::post;
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |body: String| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(body);
                axum::http::StatusCode::from_u16(status).unwrap()
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, got)
}

#[tokio::test]
async fn notifications_are_recorded_with_attempts_and_outcome() {
    let server = TestServer::start().await;
    let (url, got) = receiver(200).await;
    let (s, _) = upload(
        &server,
        "image",
        &[("public_id", "hooked"), ("notification_url", &url)],
        PNG,
        "a.png",
    )
    .await;
    assert_eq!(s, 200);
    let mut list = Value::Null;
    for _ in 0..100 {
        let (_, j) = json_of(control(&server, "GET", "/notifications")).await;
        if j["notifications"][0]["outcome"] == "delivered" {
            list = j;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let n = &list["notifications"][0];
    assert_eq!(n["outcome"], "delivered", "{list}");
    assert_eq!(n["url"], url);
    assert_eq!(n["cloud"], "demo");
    assert_eq!(n["body"]["public_id"], "hooked");
    assert_eq!(n["attempts"][0]["outcome"], "200");
    assert_eq!(got.lock().unwrap().len(), 1);
    let (s, _) = json_of(control(&server, "DELETE", "/notifications")).await;
    assert_eq!(s, 200);
    let (_, j) = json_of(control(&server, "GET", "/notifications")).await;
    assert_eq!(j["notifications"], json!([]));
    server.stop().await;
}

#[tokio::test]
async fn faults_answer_delay_and_count_down() {
    let server = TestServer::start().await;
    let (s, rule) = json_of(control(&server, "POST", "/faults").json(&json!({
        "method": "POST", "path": "/v1_1/*/image/upload", "status": 500,
        "message": "Injected: storage unavailable", "headers": {"Retry-After": "7"}, "times": 2
    })))
    .await;
    assert_eq!(s, 201, "{rule}");
    for _ in 0..2 {
        let resp = reqwest::Client::new()
            .post(server.upload_url("image"))
            .multipart(signed_form(&[], PNG, "a.png"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 500);
        assert_eq!(resp.headers()["retry-after"], "7");
        let j: Value = resp.json().await.unwrap();
        assert_eq!(message(&j), "Injected: storage unavailable");
    }
    let (s, _) = upload(&server, "image", &[], PNG, "a.png").await;
    assert_eq!(s, 200, "the rule is spent after two requests");

    // The ready rate-limit rule, for one cloud and one parameter.
    let (s, _) = json_of(control(&server, "POST", "/faults").json(&json!({
        "preset": "rate_limit", "cloud": "demo", "param": "public_id=limited"
    })))
    .await;
    assert_eq!(s, 201);
    let resp = reqwest::Client::new()
        .post(server.upload_url("image"))
        .multipart(signed_form(&[("public_id", "limited")], PNG, "a.png"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 420);
    assert_eq!(resp.headers()["x-featureratelimit-remaining"], "0");
    assert!(resp.headers().contains_key("x-featureratelimit-reset"));
    let (s, _) = upload(&server, "image", &[("public_id", "free")], PNG, "a.png").await;
    assert_eq!(s, 200);

    // A delay only.
    let (s, _) = json_of(control(&server, "POST", "/faults").json(&json!({
        "path": "/v1_1/demo/resources/*", "delay_ms": 400, "times": 1
    })))
    .await;
    assert_eq!(s, 201);
    let started = std::time::Instant::now();
    let (s, _) = admin(&server, "GET", "resources/image", None).await;
    assert_eq!(s, 200);
    assert!(started.elapsed() >= Duration::from_millis(400));

    let (_, j) = json_of(control(&server, "GET", "/faults")).await;
    let rules = j["faults"].as_array().unwrap();
    assert_eq!(rules.len(), 1, "{j}");
    let id = rules[0]["id"].as_str().unwrap();
    let (s, _) = json_of(control(&server, "DELETE", &format!("/faults/{id}"))).await;
    assert_eq!(s, 200);
    let (s, j) = json_of(control(&server, "POST", "/faults").json(&json!({"status": 200}))).await;
    assert_eq!(s, 400, "{j}");
    let (s, _) = json_of(control(&server, "POST", "/faults").body("{not json")).await;
    assert_eq!(s, 400);
    server.stop().await;
}

#[tokio::test]
async fn held_async_uploads_stay_pending_until_released() {
    let server = TestServer::start().await;
    let (s, _) = json_of(control(&server, "POST", "/async/hold")).await;
    assert_eq!(s, 200);
    let (s, j) = upload(
        &server,
        "image",
        &[("public_id", "later"), ("async", "true")],
        PNG,
        "a.png",
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(j["status"], "pending", "{j}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (s, _) = admin(&server, "GET", "resources/image/upload/later", None).await;
    assert_eq!(s, 404, "held work must not run");
    let (_, j) = json_of(control(&server, "GET", "/async")).await;
    assert_eq!(j["held"], true);
    let (s, _) = json_of(control(&server, "POST", "/async/release")).await;
    assert_eq!(s, 200);
    let mut found = 0;
    for _ in 0..100 {
        let (s, _) = admin(&server, "GET", "resources/image/upload/later", None).await;
        found = s;
        if s == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(found, 200);
    server.stop().await;
}

#[tokio::test]
async fn ephemeral_and_memory_databases_work_and_leave_nothing() {
    for args in [
        ServeArgs {
            ephemeral: true,
            ..Default::default()
        },
        ServeArgs {
            database_url: Some("sqlite::memory:".into()),
            ..Default::default()
        },
    ] {
        let server = start_with_args(DEFAULT_TOML, args).await;
        assert_eq!(server.health().await, 200);
        for i in 0..12 {
            let id = format!("mem{i}");
            let (s, j) = upload(&server, "image", &[("public_id", &id)], PNG, "a.png").await;
            assert_eq!(s, 200, "{j}");
        }
        // Listings read through other connections than the writer's.
        let (s, j) = admin(&server, "GET", "resources/image?max_results=500", None).await;
        assert_eq!(s, 200, "{j}");
        assert_eq!(j["resources"].as_array().unwrap().len(), 12);
        server.stop().await;
    }
    // The ephemeral folder is removed when the server stops.
    let nephos = nephos::testing::Nephos::start().await.unwrap();
    let (s, j) = {
        let r = reqwest::Client::new()
            .get(format!("{}/_nephos/clouds", nephos.base_url()))
            .header("x-nephos-control", "1")
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(s, 200, "{j}");
    let pid = std::process::id();
    let mine = || {
        std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("nephos-ephemeral-{pid}-"))
            })
            .count()
    };
    assert!(mine() >= 1);
    nephos.stop().await;
    // Other tests of this process may run ephemeral servers too: wait for none of ours.
    for _ in 0..100 {
        if mine() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(mine(), 0);
}

#[tokio::test]
async fn the_testing_api_hands_out_clouds_and_resets() {
    let nephos = nephos::testing::Nephos::start().await.unwrap();
    assert!(nephos.cloudinary_url().starts_with(
        "cloudinary://123456789012345:nephos-dev-secret@demo?upload_prefix=http://127.0.0.1:"
    ));
    let cloud = nephos.create_cloud().await.unwrap();
    assert!(cloud
        .cloudinary_url
        .ends_with(&format!("upload_prefix={}", nephos.base_url())));
    let r = reqwest::Client::new()
        .post(format!(
            "{}/v1_1/{}/image/upload",
            nephos.base_url(),
            cloud.cloud_name
        ))
        .basic_auth(&cloud.api_key, Some(&cloud.api_secret))
        .multipart(reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(PNG.to_vec()).file_name("a.png"),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(nephos.requests().await.unwrap().len(), 1);
    nephos.reset().await.unwrap();
    assert!(nephos.requests().await.unwrap().is_empty());
    assert!(
        nephos.delete_cloud(&cloud.cloud_name).await.is_err(),
        "reset removed it"
    );
    nephos.stop().await;
}

#[tokio::test]
async fn tls_and_plain_http_share_the_port() {
    let server = start_with_args(
        DEFAULT_TOML,
        ServeArgs {
            tls: true,
            ..Default::default()
        },
    )
    .await;
    let ca_path = server.data_dir.path().join("tls/ca.pem");
    let ca = std::fs::read(&ca_path).expect("the local CA is written into the data dir");
    let https = server.base.replace("http://", "https://");
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .build()
        .unwrap();
    let r = client.get(format!("{https}/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Plain HTTP on the same port.
    assert_eq!(server.health().await, 200);
    let (s, j) = upload(&server, "image", &[("public_id", "tls/one")], PNG, "a.png").await;
    assert_eq!(s, 200, "{j}");
    let secure = j["secure_url"].as_str().unwrap();
    assert!(
        secure.starts_with(&format!("{https}/demo/image/upload/")),
        "{secure}"
    );
    assert!(j["url"].as_str().unwrap().starts_with("http://"));
    let r = client.get(secure).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), PNG);
    // Without the CA, the certificate is not trusted (it is a real chain, not a bypass).
    assert!(reqwest::Client::new()
        .get(format!("{https}/health"))
        .send()
        .await
        .is_err());
    // A client that never sends a byte does not hold the port for others.
    let _idle = tokio::net::TcpStream::connect(server.base.trim_start_matches("http://"))
        .await
        .unwrap();
    assert_eq!(server.health().await, 200);
    server.stop().await;
}

#[tokio::test]
async fn startup_errors_name_what_failed() {
    // A data dir that is a file.
    let file = tempfile::NamedTempFile::new().unwrap();
    let args = ServeArgs {
        data_dir: Some(file.path().to_path_buf()),
        ..Default::default()
    };
    let config = Config::from_parts(FileConfig::default(), &args).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = nephos::Server::open(config, listener)
        .await
        .err()
        .expect("a file is no data dir")
        .to_string();
    assert!(err.contains(&file.path().display().to_string()), "{err}");

    // A PostgreSQL server that is not there: named, and within seconds.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let data = tempfile::tempdir().unwrap();
    let args = ServeArgs {
        data_dir: Some(data.path().to_path_buf()),
        database_url: Some(format!("postgres://nephos:pw@127.0.0.1:{port}/nephos")),
        ..Default::default()
    };
    let config = Config::from_parts(FileConfig::default(), &args).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let started = std::time::Instant::now();
    let err = nephos::Server::open(config, listener)
        .await
        .err()
        .expect("no database there")
        .to_string();
    assert!(started.elapsed() < Duration::from_secs(8));
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(!err.contains(":pw@"), "the password is not shown: {err}");

    // Mismatched TLS options and bad origins are refused before anything starts.
    assert!(Config::from_parts(
        FileConfig::default(),
        &ServeArgs {
            cors_origins: vec!["not a url".into()],
            ..Default::default()
        }
    )
    .is_err());
}

#[tokio::test]
async fn healthcheck_reads_the_health_endpoint() {
    let server = TestServer::start().await;
    let listen = server.base.trim_start_matches("http://").to_string();
    let checked =
        tokio::task::spawn_blocking(move || nephos::healthcheck(&listen, Duration::from_secs(3)))
            .await
            .unwrap();
    assert!(checked.is_ok(), "{checked:?}");
    server.stop().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = closed.local_addr().unwrap().to_string();
    drop(closed);
    assert!(nephos::healthcheck(&listen, Duration::from_secs(1)).is_err());
}

#[tokio::test]
async fn cors_origins_can_be_limited() {
    let server = start_with_args(
        DEFAULT_TOML,
        ServeArgs {
            cors_origins: vec!["http://app.example:3000".into()],
            ..Default::default()
        },
    )
    .await;
    let allowed = |origin: &'static str| {
        let url = server.url("/health");
        async move {
            reqwest::Client::new()
                .get(url)
                .header("origin", origin)
                .send()
                .await
                .unwrap()
                .headers()
                .get("access-control-allow-origin")
                .map(|v| v.to_str().unwrap().to_string())
        }
    };
    assert_eq!(
        allowed("http://app.example:3000").await.as_deref(),
        Some("http://app.example:3000")
    );
    assert_eq!(allowed("http://other.example").await, None);
    server.stop().await;
}
