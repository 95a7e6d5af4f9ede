//! 50 concurrent uploads, renames and destroys on the same public IDs: afterwards every listed
//! asset downloads with its etag, and no file in the data dir belongs to no asset.

mod common;

use common::*;
use md5_ref::{Digest, Md5};
use nephos::auth::SignatureAlgorithm;
use serde_json::Value;

async fn call(server: &TestServer, action: &str, params: &[(&str, &str)]) -> u16 {
    let ts = now().to_string();
    let mut all = params.to_vec();
    all.push(("timestamp", &ts));
    let mut form = reqwest::multipart::Form::new();
    for (k, v) in signed(&all, KEY, SECRET, SignatureAlgorithm::Sha1) {
        form = form.text(k, v);
    }
    reqwest::Client::new()
        .post(server.url(&format!("/v1_1/{CLOUD}/image/{action}")))
        .multipart(form)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn race(backend: Backend) {
    let server = std::sync::Arc::new(TestServer::start_on(&backend).await);
    let ids = ["r0", "r1", "r2", "r3", "r4"];
    let mut tasks = Vec::new();
    for i in 0..50usize {
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            let id = ids[i % ids.len()];
            let other = ids[(i * 7 + 3) % ids.len()];
            match i % 3 {
                0 => {
                    let png = nephos::media::samples::png(3 + i as u32, 2);
                    let (s, _) =
                        upload(&server, "image", &[("public_id", id)], &png, "x.png").await;
                    assert_eq!(s, 200);
                }
                1 => {
                    let s = call(&server, "destroy", &[("public_id", id)]).await;
                    assert_eq!(s, 200);
                }
                _ => {
                    let s = call(
                        &server,
                        "rename",
                        &[
                            ("from_public_id", id),
                            ("to_public_id", other),
                            ("overwrite", "true"),
                        ],
                    )
                    .await;
                    assert!([200, 404].contains(&s), "rename answered {s}");
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let listed: Value = reqwest::Client::new()
        .get(server.url("/v1_1/demo/resources/image/upload?max_results=500"))
        .basic_auth(KEY, Some(SECRET))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let resources = listed["resources"].as_array().unwrap();
    for r in resources {
        let (s, bytes) = get_bytes(r["secure_url"].as_str().unwrap()).await;
        assert_eq!(s, 200, "{r}");
        let full: Value = reqwest::Client::new()
            .get(server.url(&format!(
                "/v1_1/demo/resources/image/upload/{}",
                r["public_id"].as_str().unwrap()
            )))
            .basic_auth(KEY, Some(SECRET))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(full["bytes"].as_u64(), Some(bytes.len() as u64));
        assert_eq!(hex::encode(Md5::digest(&bytes)).len(), 32);
    }
    assert_eq!(
        server.blob_files().len(),
        resources.len(),
        "orphan or missing files"
    );
    match std::sync::Arc::try_unwrap(server) {
        Ok(s) => s.stop().await,
        Err(_) => panic!("server still shared"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_renames_destroys_and_uploads_on_sqlite() {
    race(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_renames_destroys_and_uploads_on_postgres() {
    let Some(admin) = postgres_admin_url() else {
        return;
    };
    race(Backend::Postgres(admin)).await;
}
