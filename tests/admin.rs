//! Admin API authentication and the shapes the SDKs rely on, over plain HTTP.

mod common;

use common::*;
use futures_util::StreamExt;
use nephos::auth::SignatureAlgorithm;
use nephos::media::samples;
use serde_json::Value;

#[tokio::test]
async fn admin_routes_need_the_clouds_basic_credentials() {
    let server = TestServer::start().await;
    let client = reqwest::Client::new();
    let ping = server.url("/v1_1/demo/ping");
    let r = client
        .get(&ping)
        .basic_auth(KEY, Some(SECRET))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "ok");
    // Wrong secret, unknown key, no credentials.
    for (user, pass, want) in [
        (KEY, "bad", "api_secret mismatch"),
        ("nokey", SECRET, "Unknown API key nokey"),
    ] {
        let r = client
            .get(&ping)
            .basic_auth(user, Some(pass))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        assert_eq!(message(&r.json().await.unwrap()), want);
    }
    let r = client.get(&ping).send().await.unwrap();
    assert_eq!(r.status(), 401);
    // An Upload API signature is not accepted on Admin routes.
    let ts = now().to_string();
    let pairs = signed(&[("timestamp", &ts)], KEY, SECRET, SignatureAlgorithm::Sha1);
    let r = client.get(&ping).query(&pairs).send().await.unwrap();
    assert_eq!(r.status(), 401);
    // Another cloud's key is refused.
    let r = client
        .get(server.url("/v1_1/other/ping"))
        .basic_auth(KEY, Some(SECRET))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        message(&r.json().await.unwrap()),
        "Unknown API key 1234567890"
    );
    server.stop().await;
}

#[tokio::test]
async fn node_style_encoded_paths_and_bodies() {
    let server = TestServer::start().await;
    let png = samples::png(2, 2);
    let (_, up) = upload(
        &server,
        "image",
        &[("public_id", "folder/my id")],
        &png,
        "x.png",
    )
    .await;
    let client = reqwest::Client::new();
    // Node encodes the whole public ID as one segment.
    let r = client
        .get(server.url("/v1_1/demo/resources/image/upload/folder%2Fmy%20id"))
        .basic_auth(KEY, Some(SECRET))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["public_id"], "folder/my id");
    assert_eq!(v["asset_id"], up["asset_id"]);
    assert!(v.get("tags").is_none());
    // DELETE with a urlencoded body (Node) and a missing cursor value.
    let r = client
        .delete(server.url("/v1_1/demo/resources/image/upload"))
        .basic_auth(KEY, Some(SECRET))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("public_ids%5B%5D=folder%2Fmy%20id&public_ids%5B%5D=nope")
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["deleted"]["folder/my id"], "deleted");
    assert_eq!(v["deleted"]["nope"], "not_found");
    assert_eq!(v["partial"], false);
    assert_eq!(server.blob_files().len(), 0);
    let r = client
        .get(server.url("/v1_1/demo/resources/image/upload?next_cursor=garbage"))
        .basic_auth(KEY, Some(SECRET))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = client
        .get(server.url("/v1_1/demo/resources/pictures"))
        .basic_auth(KEY, Some(SECRET))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    server.stop().await;
}

#[tokio::test]
async fn delete_tokens_work_once() {
    let server = TestServer::start().await;
    let png = samples::png(2, 2);
    let (s, up) = upload(
        &server,
        "image",
        &[("return_delete_token", "1")],
        &png,
        "t.png",
    )
    .await;
    assert_eq!(s, 200, "{up}");
    let token = up["delete_token"].as_str().unwrap().to_string();
    let url = server.url("/v1_1/demo/delete_by_token");
    let client = reqwest::Client::new();
    // JSON, as browser widgets send it; no other credential.
    let r = client
        .post(&url)
        .json(&serde_json::json!({"token": token}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["result"], "ok");
    assert_eq!(get_bytes(up["secure_url"].as_str().unwrap()).await.0, 404);
    let r = client
        .post(&url)
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        message(&r.json().await.unwrap()),
        "Stale or invalid delete token"
    );
    let r = client.post(&url).send().await.unwrap();
    assert_eq!(
        message(&r.json().await.unwrap()),
        "Missing required parameter - token"
    );
    server.stop().await;
}

#[tokio::test]
async fn bulk_deletes_go_by_thousands() {
    let server = TestServer::start().await;
    let client = reqwest::Client::new();
    // Uploaded 32 at a time over one client's pooled connections: the test is about the
    // bulk delete's pages, not about how many sockets this machine accepts at once.
    let uploads = futures_util::stream::iter(0..1005).map(|i| {
        let form = reqwest::multipart::Form::new()
            .text("public_id", format!("bulk/{i}"))
            .part(
                "file",
                reqwest::multipart::Part::bytes(vec![b'x']).file_name("b.txt"),
            );
        client
            .post(server.upload_url("raw"))
            .basic_auth(KEY, Some(SECRET))
            .multipart(form)
            .send()
    });
    let statuses: Vec<_> = uploads
        .buffer_unordered(32)
        .map(|r| r.unwrap().status())
        .collect()
        .await;
    assert_eq!(statuses.len(), 1005);
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let delete = || {
        client
            .delete(server.url("/v1_1/demo/resources/raw/upload"))
            .basic_auth(KEY, Some(SECRET))
            .json(&serde_json::json!({"prefix": "bulk/"}))
            .send()
    };
    let first: Value = delete().await.unwrap().json().await.unwrap();
    assert_eq!(first["deleted"].as_object().unwrap().len(), 1000);
    assert_eq!(first["partial"], true);
    assert!(first["next_cursor"].is_string());
    let second: Value = delete().await.unwrap().json().await.unwrap();
    assert_eq!(second["deleted"].as_object().unwrap().len(), 5);
    assert_eq!(second["partial"], false);
    assert!(second.get("next_cursor").is_none());
    assert_eq!(server.blob_files().len(), 0);
}

#[tokio::test]
async fn oauth_bearer_tokens_authenticate_admin_and_upload_calls() {
    let toml_text = format!("oauth_tokens = [\"demo:token-0123456789\"]\n{DEFAULT_TOML}");
    let server = TestServer::start_with(Backend::Sqlite, &toml_text, None).await;
    let client = reqwest::Client::new();
    let r = client
        .get(server.url("/v1_1/demo/ping"))
        .bearer_auth("token-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for (cloud, token) in [("demo", "token-wrong"), ("other", "token-0123456789")] {
        let r = client
            .get(server.url(&format!("/v1_1/{cloud}/ping")))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{cloud} {token}");
        assert_eq!(message(&r.json().await.unwrap()), "Invalid token");
    }
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(samples::png(2, 2)).file_name("x.png"),
    );
    let r = client
        .post(server.upload_url("image"))
        .bearer_auth("token-0123456789")
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["api_key"], KEY);
    server.stop().await;
}
