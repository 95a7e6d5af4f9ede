//! The storage story on an S3-compatible object store (`storage_url = "s3://…"`), on SQLite
//! and PostgreSQL: uploads from bytes and data URIs, a chunked upload sent out of order,
//! delivery with Range, a derived image, overwrite, rename and destroy, and what the bucket
//! holds after each. `scripts/test` starts an S3 server and sets `NEPHOS_TEST_S3_ENDPOINT`;
//! without it these tests are skipped with a warning (a failure when NEPHOS_REQUIRE_S3=1).

mod common;

use common::*;
use md5_ref::{Digest, Md5};
use nephos::auth::SignatureAlgorithm;
use serde_json::Value;

/// The keys under `prefix` in the bucket.
async fn keys(endpoint: &str, prefix: &str) -> Vec<String> {
    s3_listing(endpoint, prefix)
        .await
        .split("<Key>")
        .skip(1)
        .filter_map(|s| s.split("</Key>").next())
        .map(str::to_string)
        .collect()
}

fn png(w: u32, h: u32, rgba: [u8; 4]) -> Vec<u8> {
    let img = image::RgbaImage::from_pixel(w, h, image::Rgba(rgba));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

async fn part(server: &TestServer, id: &str, file: &[u8], start: usize, end: usize) -> Value {
    let ts = now().to_string();
    let pairs = [("public_id", "s3/big"), ("timestamp", ts.as_str())];
    let mut form = reqwest::multipart::Form::new();
    for (k, v) in signed(&pairs, KEY, SECRET, SignatureAlgorithm::Sha1) {
        form = form.text(k, v);
    }
    form = form.part(
        "file",
        reqwest::multipart::Part::bytes(file[start..=end].to_vec()).file_name("big.bin"),
    );
    let r = reqwest::Client::new()
        .post(server.upload_url("raw"))
        .header(
            "content-range",
            format!("bytes {start}-{end}/{}", file.len()),
        )
        .header("x-unique-upload-id", id)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn story(backend: Backend, endpoint: &str) {
    let prefix = format!("run-{}", nephos::util::random_hex(6));
    let toml_text = format!("storage_url = \"s3://{S3_BUCKET}/{prefix}\"\n{DEFAULT_TOML}");
    // With a database other instances may share, a chunked upload's parts may reach any of
    // them: it is sent to the store when it completes, not as its parts arrive.
    let parts_followed = matches!(backend, Backend::Sqlite);
    let server = TestServer::start_with(backend, &toml_text, None).await;
    assert!(server.health().await.is_success());
    let blobs = |p: &str| {
        let p = format!("{prefix}/{p}");
        async move { keys(endpoint, &p).await }
    };

    // Bytes and a data URI: one object each, under the prefix; nothing in the local folder.
    let (s, a) = upload(
        &server,
        "image",
        &[("public_id", "s3/a")],
        &png(40, 20, [200, 10, 10, 255]),
        "a.png",
    )
    .await;
    assert_eq!(s, 200, "{a}");
    let data_uri = format!(
        "data:image/png;base64,{}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            png(8, 8, [0, 0, 250, 255])
        )
    );
    let ts = now().to_string();
    let mut form = signed(
        &[("public_id", "s3/b"), ("timestamp", ts.as_str())],
        KEY,
        SECRET,
        SignatureAlgorithm::Sha1,
    );
    form.push(("file".to_string(), data_uri));
    let r = reqwest::Client::new()
        .post(server.upload_url("image"))
        .form(&form)
        .send()
        .await
        .unwrap();
    let (s, b): (u16, Value) = (r.status().as_u16(), r.json().await.unwrap());
    assert_eq!(s, 200, "{b}");
    assert_eq!(blobs("demo/").await.len(), 2);
    assert!(server.blob_files().is_empty());

    // A chunked upload, last part first: assembled, with the right MD5 etag.
    let big: Vec<u8> = (0..6_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let id = nephos::util::random_hex(8);
    let first = part(&server, &id, &big, 5_242_880, big.len() - 1).await;
    assert_ne!(first["done"], true);
    let done = part(&server, &id, &big, 0, 5_242_879).await;
    assert_eq!(done["etag"], hex::encode(Md5::digest(&big)), "{done}");
    let url = done["secure_url"].as_str().unwrap().to_string();
    let (s, got) = get_bytes(&url).await;
    assert_eq!(s, 200);
    assert!(got == big);

    // A large upload goes to the store while it arrives (the fields before the file
    // authenticate it): stored once, under the key its record names.
    let streamed = |text: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with("nephos_blob_store_streamed_uploads_total "))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let metrics = || async {
        let (_, body) = get_bytes(&server.url("/metrics")).await;
        String::from_utf8(body).unwrap()
    };
    let streamed_before = streamed(&metrics().await);
    let large: Vec<u8> = (0..9_500_000u32).map(|i| (i * 13 % 253) as u8).collect();
    let objects = blobs("demo/").await.len();
    let (s, j) = upload(
        &server,
        "raw",
        &[("public_id", "s3/large.bin")],
        &large,
        "large.bin",
    )
    .await;
    assert_eq!(s, 200, "{j}");
    assert_eq!(j["etag"], hex::encode(Md5::digest(&large)));
    assert_eq!(streamed(&metrics().await), streamed_before + 1);
    assert_eq!(blobs("demo/").await.len(), objects + 1);
    let (s, got) = get_bytes(j["secure_url"].as_str().unwrap()).await;
    assert_eq!(s, 200);
    assert!(got == large);
    // Refused after the file (a field after it that the signature does not cover), or not
    // kept (an existing public ID without overwrite): nothing stays in the bucket. A file
    // part followed by another field is shorter than the body's length says: its streamed
    // PUT is cut off before its end, so the store never has it.
    let ts = now().to_string();
    let mut form = reqwest::multipart::Form::new();
    for (k, v) in signed(
        &[("public_id", "s3/refused.bin"), ("timestamp", ts.as_str())],
        KEY,
        SECRET,
        SignatureAlgorithm::Sha1,
    ) {
        form = form.text(k, v);
    }
    let form = form
        .part(
            "file",
            reqwest::multipart::Part::bytes(large.clone()).file_name("x.bin"),
        )
        .text("tags", "not-signed");
    let r = reqwest::Client::new()
        .post(server.upload_url("raw"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let (s, j) = upload(
        &server,
        "raw",
        &[("public_id", "s3/large.bin"), ("overwrite", "false")],
        &large,
        "large.bin",
    )
    .await;
    assert_eq!(s, 200, "{j}");
    assert_eq!(j["existing"], true, "{j}");
    assert_eq!(streamed(&metrics().await), streamed_before + 2);
    let mut left = 0;
    for _ in 0..50 {
        left = blobs("demo/").await.len();
        if left == objects + 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(left, objects + 1, "objects of uploads not kept are removed");

    // A file part followed by a signed field is not the body's last part: the PUT sent while
    // it arrived is cut off, and the finished file is stored whole afterwards.
    let ts = now().to_string();
    let fields = signed(
        &[
            ("public_id", "s3/not-last.bin"),
            ("tags", "after"),
            ("timestamp", ts.as_str()),
        ],
        KEY,
        SECRET,
        SignatureAlgorithm::Sha1,
    );
    let mut form = reqwest::multipart::Form::new();
    for (k, v) in fields.iter().filter(|(k, _)| k != "tags") {
        form = form.text(k.clone(), v.clone());
    }
    let form = form
        .part(
            "file",
            reqwest::multipart::Part::bytes(large.clone()).file_name("x.bin"),
        )
        .text("tags", "after");
    let r = reqwest::Client::new()
        .post(server.upload_url("raw"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let j: serde_json::Value = r.json().await.unwrap();
    assert_eq!(j["etag"], hex::encode(Md5::digest(&large)), "{j}");
    assert_eq!(j["tags"], serde_json::json!(["after"]), "{j}");
    assert_eq!(streamed(&metrics().await), streamed_before + 2);
    let (s, got) = get_bytes(j["secure_url"].as_str().unwrap()).await;
    assert_eq!(s, 200);
    assert!(got == large);

    // Chunked uploads in order go to the store as their parts arrive (one instance): with
    // the total told in every part (one PUT), and with it told only in the last (multipart
    // upload, as the Node SDK sends). Each is stored once, whole, with its MD5 etag.
    let mut streamed_now = streamed(&metrics().await);
    for total_in_every_part in [true, false] {
        let objects = blobs("demo/").await.len();
        let id = nephos::util::random_hex(8);
        let cut = 5_242_880;
        let mut last = Value::Null;
        for start in (0..large.len()).step_by(cut) {
            let end = (start + cut).min(large.len()) - 1;
            let total = if total_in_every_part || end + 1 == large.len() {
                large.len().to_string()
            } else {
                "-1".to_string()
            };
            let form = signed_form(
                &[("public_id", "s3/in-order")],
                &large[start..=end],
                "l.bin",
            );
            let range = format!("{start}-{end}/{total}");
            let (status, answer) = upload_part(&server, "raw", &id, &range, form).await;
            assert_eq!(status, 200, "{answer}");
            last = answer;
        }
        assert_eq!(last["done"], true, "{last}");
        assert_eq!(last["etag"], hex::encode(Md5::digest(&large)), "{last}");
        streamed_now += u64::from(parts_followed);
        assert_eq!(streamed(&metrics().await), streamed_now, "{last}");
        let (s, got) = get_bytes(last["secure_url"].as_str().unwrap()).await;
        assert_eq!(s, 200);
        assert!(got == large);
        // Overwriting the first time, the second upload replaces its object.
        assert_eq!(
            blobs("demo/").await.len(),
            objects + usize::from(total_in_every_part)
        );
    }

    // Range requests are answered from the store.
    let r = reqwest::Client::new()
        .get(&url)
        .header("range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &big[100..200]);

    // A derived image lives in the store too.
    let before = blobs("").await.len();
    let (s, body) = get_bytes(&server.url("/demo/image/upload/w_10/s3/a.png")).await;
    assert_eq!(s, 200);
    assert_eq!(image::load_from_memory(&body).unwrap().width(), 10);
    assert_eq!(blobs("").await.len(), before + 1);

    // Overwrite: the old original and its derived image go.
    let (s, _) = upload(
        &server,
        "image",
        &[("public_id", "s3/a"), ("overwrite", "true")],
        &png(30, 30, [1, 2, 3, 255]),
        "a.png",
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(blobs("").await.len(), before - 1 + 1);
    // Rename, then destroy: the object goes with the asset.
    let (s, j) = signed_call(
        &server,
        "image",
        "rename",
        &[("from_public_id", "s3/a"), ("to_public_id", "s3/renamed")],
    )
    .await;
    assert_eq!(s, 200, "{j}");
    let (s, body) = get_bytes(&server.url("/demo/image/upload/s3/renamed.png")).await;
    assert_eq!(s, 200);
    assert_eq!(image::load_from_memory(&body).unwrap().width(), 30);
    let count = blobs("").await.len();
    let (s, j) = signed_call(&server, "image", "destroy", &[("public_id", "s3/renamed")]).await;
    assert_eq!((s, j["result"].as_str()), (200, Some("ok")));
    assert_eq!(blobs("").await.len(), count - 1);
    server.stop().await;
}

#[tokio::test]
async fn the_storage_story_on_s3_and_sqlite() {
    let Some(endpoint) = s3_endpoint() else {
        return;
    };
    s3_env(&endpoint);
    story(Backend::Sqlite, &endpoint).await;
}

#[tokio::test]
async fn the_storage_story_on_s3_and_postgres() {
    let Some(endpoint) = s3_endpoint() else {
        return;
    };
    let Some(admin) = postgres_admin_url() else {
        return;
    };
    s3_env(&endpoint);
    story(Backend::Postgres(admin), &endpoint).await;
}

#[tokio::test]
async fn an_unsupported_storage_url_is_a_clear_start_error() {
    let data_dir = tempfile::tempdir().unwrap();
    let args = nephos::config::ServeArgs {
        listen: Some("127.0.0.1:0".into()),
        data_dir: Some(data_dir.path().to_path_buf()),
        storage_url: Some("ftp://nowhere".into()),
        ..Default::default()
    };
    let config = nephos::config::Config::from_parts(Default::default(), &args).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = match nephos::Server::open(config, listener).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("an ftp storage URL was accepted"),
    };
    assert!(err.contains("unsupported storage URL"), "{err}");
}

/// Two servers sharing one PostgreSQL database and one bucket prefix.
async fn two_instances(admin: &str, prefix: &str) -> (TestServer, TestServer) {
    let pg = PgDb::create(admin).await;
    let url = pg.url.clone();
    let mut pg = Some(pg);
    let mut servers = Vec::new();
    for _ in 0..2 {
        let toml_text = format!("storage_url = \"s3://{S3_BUCKET}/{prefix}\"\n{DEFAULT_TOML}");
        let file: nephos::config::FileConfig = toml::from_str(&toml_text).unwrap();
        let data_dir = tempfile::tempdir().unwrap();
        let args = nephos::config::ServeArgs {
            listen: Some("127.0.0.1:0".into()),
            data_dir: Some(data_dir.path().to_path_buf()),
            database_url: Some(url.clone()),
            ..Default::default()
        };
        let config = nephos::config::Config::from_parts(file, &args).unwrap();
        servers.push(TestServer::launch(config, data_dir, pg.take()).await);
    }
    let b = servers.pop().unwrap();
    let a = servers.pop().unwrap();
    (a, b)
}

#[tokio::test]
async fn two_instances_on_postgres_and_s3_behave_as_one() {
    let Some(endpoint) = s3_endpoint() else {
        return;
    };
    let Some(pg_admin) = postgres_admin_url() else {
        return;
    };
    s3_env(&endpoint);
    let prefix = format!("pair-{}", nephos::util::random_hex(6));
    let (a, b) = two_instances(&pg_admin, &prefix).await;
    let width = |bytes: &[u8]| image::load_from_memory(bytes).unwrap().width();

    // Uploaded through A, delivered and listed through B.
    let (s, j) = upload(
        &a,
        "image",
        &[("public_id", "two/a")],
        &png(40, 20, [9, 9, 9, 255]),
        "a.png",
    )
    .await;
    assert_eq!(s, 200, "{j}");
    let (s, body) = get_bytes(&b.url("/demo/image/upload/two/a.png")).await;
    assert_eq!((s, width(&body)), (200, 40));
    let (s, list) = admin(&b, "GET", "resources/image/upload?prefix=two/", None).await;
    assert_eq!(s, 200);
    assert_eq!(list["resources"].as_array().unwrap().len(), 1, "{list}");

    // A derivative rendered by B is served as stored by A.
    let (s, body) = get_bytes(&b.url("/demo/image/upload/w_10/two/a.png")).await;
    assert_eq!((s, width(&body)), (200, 10));
    let (s, body) = get_bytes(&a.url("/demo/image/upload/w_10/two/a.png")).await;
    assert_eq!((s, width(&body)), (200, 10));
    let (_, stats) = get_bytes(&a.url("/metrics")).await;
    let stats = String::from_utf8(stats).unwrap();
    assert!(
        stats.contains("nephos_derived_served_stored_total 1"),
        "{stats}"
    );

    // Overwritten through B: A delivers the new original at once (and its new derivative).
    let (s, _) = get_bytes(&a.url("/demo/image/upload/two/a.png")).await;
    assert_eq!(s, 200);
    let (s, _) = upload(
        &b,
        "image",
        &[("public_id", "two/a"), ("overwrite", "true")],
        &png(25, 25, [1, 1, 1, 255]),
        "a.png",
    )
    .await;
    assert_eq!(s, 200);
    let (s, body) = get_bytes(&a.url("/demo/image/upload/two/a.png")).await;
    assert_eq!((s, width(&body)), (200, 25));
    let (s, body) = get_bytes(&a.url("/demo/image/upload/w_10/two/a.png")).await;
    assert_eq!((s, width(&body)), (200, 10));

    // Renamed through A: B sees the new name only; destroyed through B: A sees it gone.
    let (s, j) = signed_call(
        &a,
        "image",
        "rename",
        &[("from_public_id", "two/a"), ("to_public_id", "two/b")],
    )
    .await;
    assert_eq!(s, 200, "{j}");
    assert_eq!(
        get_bytes(&b.url("/demo/image/upload/two/b.png")).await.0,
        200
    );
    assert_eq!(
        get_bytes(&b.url("/demo/image/upload/two/a.png")).await.0,
        404
    );
    let (s, _) = signed_call(&b, "image", "destroy", &[("public_id", "two/b")]).await;
    assert_eq!(s, 200);
    assert_eq!(
        get_bytes(&a.url("/demo/image/upload/two/b.png")).await.0,
        404
    );
    let left = keys(&endpoint, &format!("{prefix}/demo/")).await;
    assert!(left.is_empty(), "{left:?}");

    // A preset made through one is used through the other.
    let (s, j) = admin(
        &a,
        "POST",
        "upload_presets",
        Some(serde_json::json!({"name": "pair_preset", "unsigned": true, "folder": "pair"})),
    )
    .await;
    assert_eq!(s, 200, "{j}");
    let form = reqwest::multipart::Form::new()
        .text("upload_preset", "pair_preset")
        .part(
            "file",
            reqwest::multipart::Part::bytes(png(5, 5, [0, 0, 0, 255])).file_name("p.png"),
        );
    let r = reqwest::Client::new()
        .post(b.upload_url("image"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let j: Value = r.json().await.unwrap();
    assert!(j["public_id"].as_str().unwrap().starts_with("pair/"), "{j}");

    // A chunked upload whose parts go to both instances, out of order: the first to A, the
    // last to B, the middle one to A, which completes it with B's part from the store.
    let big: Vec<u8> = (0..12_000_000u32).map(|i| (i * 31 % 241) as u8).collect();
    let id = nephos::util::random_hex(8);
    let cut = 5_242_880;
    let j = part(&a, &id, &big, 0, cut - 1).await;
    assert_ne!(j["done"], true, "{j}");
    let j = part(&b, &id, &big, 2 * cut, big.len() - 1).await;
    assert_ne!(j["done"], true, "{j}");
    assert_eq!(
        keys(&endpoint, &format!("{prefix}/demo/chunks/"))
            .await
            .len(),
        2
    );
    let done = part(&a, &id, &big, cut, 2 * cut - 1).await;
    assert_eq!(done["done"], true, "{done}");
    assert_eq!(done["etag"], hex::encode(Md5::digest(&big)), "{done}");
    let (s, got) = get_bytes(done["secure_url"].as_str().unwrap()).await;
    assert_eq!(s, 200);
    assert!(got == big, "the stored file is the parts in order");
    // Both instances serve it; the parts kept for the other instance are gone.
    let (s, got) = get_bytes(&b.url(&format!(
        "/demo/raw/upload/{}",
        done["public_id"].as_str().unwrap()
    )))
    .await;
    assert_eq!((s, got.len()), (200, big.len()));
    assert!(keys(&endpoint, &format!("{prefix}/demo/chunks/"))
        .await
        .is_empty());

    // Two overlapping parts written in place at once on the two instances, which disagree
    // where they overlap: the one that completes the upload finds it and refuses it.
    let id = nephos::util::random_hex(8);
    let mut other = big.clone();
    other[cut + 10] ^= 0xff;
    let first_end = cut + 999;
    let ts = now().to_string();
    let pairs = [("public_id", "s3/clash"), ("timestamp", ts.as_str())];
    let mut form = reqwest::multipart::Form::new();
    for (k, v) in signed(&pairs, KEY, SECRET, SignatureAlgorithm::Sha1) {
        form = form.text(k, v);
    }
    // A's part arrives slowly: its first bytes, then the rest once B's part is recorded.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    form = form.part(
        "file",
        reqwest::multipart::Part::stream_with_length(
            reqwest::Body::wrap_stream(body),
            (first_end + 1) as u64,
        )
        .file_name("big.bin"),
    );
    let slow = tokio::spawn(
        reqwest::Client::new()
            .post(a.upload_url("raw"))
            .header(
                "content-range",
                format!("bytes 0-{first_end}/{}", big.len()),
            )
            .header("x-unique-upload-id", id.clone())
            .multipart(form)
            .send(),
    );
    tx.send(Ok(big[..1000].to_vec())).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let form = signed_form(&[("public_id", "s3/clash")], &other[cut..], "big.bin");
    let r = reqwest::Client::new()
        .post(b.upload_url("raw"))
        .header(
            "content-range",
            format!("bytes {cut}-{}/{}", big.len() - 1, big.len()),
        )
        .header("x-unique-upload-id", id.clone())
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let j: Value = r.json().await.unwrap();
    assert_ne!(j["done"], true, "{j}");
    tx.send(Ok(big[1000..=first_end].to_vec())).await.unwrap();
    drop(tx);
    let r = slow.await.unwrap().unwrap();
    assert_eq!(r.status(), 400);
    let j: Value = r.json().await.unwrap();
    let msg = j["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("two parts hold different bytes"), "{j}");
    b.stop().await;
    a.stop().await;
}
