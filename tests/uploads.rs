//! The upload and delivery story over HTTP, on every metadata backend.

mod common;

use base64::Engine;
use common::*;
use md5_ref::{Digest, Md5};
use nephos::auth::{api_sign, delivery_signature, SignatureAlgorithm};
use nephos::media::samples;
use serde_json::Value;

fn md5_hex(b: &[u8]) -> String {
    hex::encode(Md5::digest(b))
}

async fn story(backend: Backend) {
    let server = TestServer::start_on(&backend).await;
    let png = samples::png(16, 9);

    // A signed image upload: every field of the answer, and the bytes at `secure_url`.
    let (s, r) = upload(
        &server,
        "image",
        &[
            ("public_id", "folder/sample"),
            ("tags", "b,a"),
            ("context", "alt=x\\=y\\|z|caption=hi"),
        ],
        &png,
        "dir/logo.png",
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["public_id"], "folder/sample");
    assert_eq!(
        (r["width"].as_i64(), r["height"].as_i64()),
        (Some(16), Some(9))
    );
    assert_eq!(r["format"], "png");
    assert_eq!(r["resource_type"], "image");
    assert_eq!(r["type"], "upload");
    assert_eq!(r["pages"], 1);
    assert_eq!(r["bytes"].as_u64(), Some(png.len() as u64));
    assert_eq!(r["etag"], md5_hex(&png));
    assert_eq!(r["tags"], serde_json::json!(["a", "b"]));
    assert_eq!(r["context"]["custom"]["alt"], "x=y|z");
    assert_eq!(r["original_filename"], "logo");
    assert_eq!(r["display_name"], "sample");
    assert_eq!(r["api_key"], KEY);
    assert_eq!(r["placeholder"], false);
    assert_eq!(r["asset_id"].as_str().unwrap().len(), 32);
    assert_eq!(r["version_id"].as_str().unwrap().len(), 32);
    let created = r["created_at"].as_str().unwrap();
    assert!(created.ends_with('Z') && created.len() == 20, "{created}");
    let version = r["version"].as_i64().unwrap();
    let want_sig = api_sign(
        &format!("public_id=folder/sample&version={version}"),
        SECRET,
        SignatureAlgorithm::Sha1,
    );
    assert_eq!(r["signature"], want_sig);
    let url = r["secure_url"].as_str().unwrap().to_string();
    assert_eq!(
        url,
        format!(
            "{}/demo/image/upload/v{version}/folder/sample.png",
            server.base
        )
    );
    assert_eq!(r["url"], url.as_str());

    let client = reqwest::Client::new();
    let resp = client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "image/png");
    let etag = resp.headers()["etag"].to_str().unwrap().to_string();
    let last_modified = resp.headers()["last-modified"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(etag, format!("\"{}\"", md5_hex(&png)));
    assert_eq!(resp.bytes().await.unwrap().to_vec(), png);
    // Version-less and query-string forms deliver the same bytes.
    assert_eq!(
        get_bytes(&format!(
            "{}/demo/image/upload/folder/sample.png?_a=BAMAABcd",
            server.base
        ))
        .await,
        (200, png.clone())
    );
    assert_eq!(
        get_bytes(&format!(
            "{}/demo/image/upload/v1/folder/sample",
            server.base
        ))
        .await,
        (200, png.clone())
    );
    // Conditional GET, Range, HEAD.
    let r304 = client
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r304.status(), 304);
    let r304 = client
        .get(&url)
        .header("if-modified-since", &last_modified)
        .send()
        .await
        .unwrap();
    assert_eq!(r304.status(), 304);
    let part = client
        .get(&url)
        .header("range", "bytes=2-9")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.headers()["content-range"],
        format!("bytes 2-9/{}", png.len()).as_str()
    );
    assert_eq!(part.bytes().await.unwrap().to_vec(), png[2..10].to_vec());
    let bad_range = client
        .get(&url)
        .header("range", "bytes=999999-")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_range.status(), 416);
    let head = client.head(&url).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(
        head.headers()["content-length"],
        png.len().to_string().as_str()
    );

    // overwrite (default true): same asset_id, newer version, the old blob is gone.
    let png2 = samples::png(4, 4);
    let (s, r2) = upload(
        &server,
        "image",
        &[("public_id", "folder/sample")],
        &png2,
        "x.png",
    )
    .await;
    assert_eq!(s, 200, "{r2}");
    assert_eq!(r2["overwritten"], true);
    assert_eq!(r2["asset_id"], r["asset_id"]);
    assert!(r2["version"].as_i64().unwrap() > version);
    assert_eq!(server.blob_files().len(), 1);
    assert_eq!(get_bytes(r2["secure_url"].as_str().unwrap()).await.1, png2);
    // overwrite=0: nothing changes, the existing asset is answered.
    let (s, r3) = upload(
        &server,
        "image",
        &[("public_id", "folder/sample"), ("overwrite", "0")],
        &png,
        "y.png",
    )
    .await;
    assert_eq!(s, 200, "{r3}");
    assert_eq!(r3["existing"], true);
    assert_eq!(r3["version"], r2["version"]);
    assert_eq!(r3["etag"], md5_hex(&png2));
    assert_eq!(server.blob_files().len(), 1);

    // use_filename with and without unique_filename.
    let (_, r) = upload(
        &server,
        "image",
        &[("use_filename", "1")],
        &png,
        "my logo.png",
    )
    .await;
    let id = r["public_id"].as_str().unwrap();
    assert!(id.starts_with("my_logo_") && id.len() == 14, "{id}");
    let (_, r) = upload(
        &server,
        "image",
        &[
            ("use_filename", "true"),
            ("unique_filename", "false"),
            ("folder", "f"),
        ],
        &png,
        "logo.png",
    )
    .await;
    assert_eq!(r["public_id"], "f/logo");
    assert_eq!(r["asset_folder"], "f");
    // Random IDs: 20 characters of [a-z0-9].
    let (_, r) = upload(&server, "image", &[], &png, "file").await;
    let id = r["public_id"].as_str().unwrap();
    assert!(
        id.len() == 20
            && id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
        "{id}"
    );

    // Raw: the extension stays in the public ID; no format, no dimensions.
    let text = b"hello, raw world\n".to_vec();
    let (s, r) = upload(
        &server,
        "raw",
        &[("use_filename", "1"), ("unique_filename", "0")],
        &text,
        "notes.txt",
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["public_id"], "notes.txt");
    assert!(
        r.get("format").is_none() && r.get("width").is_none() && r.get("pages").is_none(),
        "{r}"
    );
    assert_eq!(
        r["secure_url"],
        format!(
            "{}/demo/raw/upload/v{}/notes.txt",
            server.base, r["version"]
        )
        .as_str()
    );
    let resp = client
        .get(r["secure_url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(resp.bytes().await.unwrap().to_vec(), text);

    // Video: MP4 and WebM read by the pure-Rust parsers.
    let mp4 = samples::mp4(640, 360, 3.5, b"isom");
    let (s, r) = upload(&server, "video", &[("public_id", "clip")], &mp4, "clip.mp4").await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(
        (
            r["format"].as_str(),
            r["width"].as_i64(),
            r["height"].as_i64()
        ),
        (Some("mp4"), Some(640), Some(360))
    );
    assert_eq!(r["duration"].as_f64(), Some(3.5));
    assert_eq!(r["pages"], 0);
    assert_eq!(r["video"]["codec"], "h264");
    assert_eq!(r["is_audio"], false);
    assert!(r["audio"].is_object());
    assert_eq!(get_bytes(r["secure_url"].as_str().unwrap()).await.1, mp4);
    let webm = samples::webm(320, 240, 2.25);
    let (s, r) = upload(&server, "auto", &[], &webm, "movie.webm").await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(
        (r["resource_type"].as_str(), r["format"].as_str()),
        (Some("video"), Some("webm"))
    );
    assert_eq!(
        (
            r["width"].as_i64(),
            r["height"].as_i64(),
            r["duration"].as_f64()
        ),
        (Some(320), Some(240), Some(2.25))
    );
    let mov = samples::mp4(100, 50, 1.0, b"qt  ");
    let (_, r) = upload(&server, "auto", &[], &mov, "m.mov").await;
    assert_eq!(r["format"], "mov");

    // auto: content decides, not the name.
    let gif = samples::gif(5, 6, 4);
    let (_, r) = upload(&server, "auto", &[], &gif, "anim.txt").await;
    assert_eq!(
        (
            r["resource_type"].as_str(),
            r["format"].as_str(),
            r["pages"].as_i64()
        ),
        (Some("image"), Some("gif"), Some(4))
    );
    let (_, r) = upload(&server, "auto", &[], b"plain text", "a.png").await;
    assert_eq!(r["resource_type"], "raw");
    let svg = b"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"30\" height=\"20\"></svg>";
    let (_, r) = upload(&server, "image", &[], svg, "v.svg").await;
    assert_eq!(
        (
            r["format"].as_str(),
            r["width"].as_i64(),
            r["height"].as_i64()
        ),
        (Some("svg"), Some(30), Some(20))
    );
    let bmp = samples::bmp(3, 2);
    let (_, r) = upload(&server, "image", &[], &bmp, "b.bmp").await;
    assert_eq!(
        (r["format"].as_str(), r["width"].as_i64()),
        (Some("bmp"), Some(3))
    );

    // Private and authenticated assets need a signed URL.
    for ty in ["private", "authenticated"] {
        let pid = format!("secret_{ty}");
        let (s, r) = upload(
            &server,
            "image",
            &[("public_id", &pid), ("type", ty)],
            &png,
            "s.png",
        )
        .await;
        assert_eq!(s, 200, "{r}");
        let url = r["secure_url"].as_str().unwrap();
        let sig = delivery_signature(
            &format!("{pid}.png"),
            SECRET,
            SignatureAlgorithm::Sha1,
            false,
        );
        assert!(url.contains(&format!("/image/{ty}/s--{sig}--/v")), "{url}");
        assert_eq!(get_bytes(url).await, (200, png.clone()));
        let unsigned = format!("{}/demo/image/{ty}/{pid}.png", server.base);
        let resp = client.get(&unsigned).send().await.unwrap();
        assert_eq!(resp.status(), 401);
        assert!(resp.headers().contains_key("x-cld-error"));
        let forged = format!("{}/demo/image/{ty}/s--AAAAAAAA--/{pid}.png", server.base);
        assert_eq!(client.get(&forged).send().await.unwrap().status(), 401);
        let long = delivery_signature(
            &format!("{pid}.png"),
            SECRET,
            SignatureAlgorithm::Sha1,
            true,
        );
        let long_url = format!("{}/demo/image/{ty}/s--{long}--/v1/{pid}.png", server.base);
        assert_eq!(get_bytes(&long_url).await, (200, png.clone()));
    }

    // Delivery errors: missing asset, an unsupported transformation, another cloud.
    let resp = client
        .get(format!(
            "{}/demo/image/upload/nothing_here.png",
            server.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(
        resp.headers()["x-cld-error"],
        "Resource not found - nothing_here.png"
    );
    let resp = client
        .get(format!(
            "{}/demo/image/upload/c_fill,w_100/e_cartoonify/folder/sample.png",
            server.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(
        resp.headers()["x-cld-error"],
        "Transformation e_cartoonify is not supported by this server"
    );
    let resp = client
        .get(format!(
            "{}/other/image/upload/folder/sample.png",
            server.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    // Data URI, remote URL (the server's own delivery URL), JSON and urlencoded bodies.
    let data_uri = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&png)
    );
    let ts = now().to_string();
    let fields = signed(
        &[("timestamp", &ts), ("public_id", "from_data_uri")],
        KEY,
        SECRET,
        SignatureAlgorithm::Sha1,
    );
    let mut form = reqwest::multipart::Form::new().text("file", data_uri.clone());
    for (k, v) in fields.clone() {
        form = form.text(k, v);
    }
    let r: Value = client
        .post(server.upload_url("image"))
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (r["public_id"].as_str(), r["width"].as_i64()),
        (Some("from_data_uri"), Some(16)),
        "{r}"
    );
    let mut body = serde_json::Map::new();
    for (k, v) in &fields {
        body.insert(k.clone(), Value::String(v.clone()));
    }
    body.insert("file".into(), Value::String(data_uri.clone()));
    let resp = client
        .post(server.upload_url("image"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut pairs = fields.clone();
    pairs.push(("file".into(), url.clone()));
    let resp = client
        .post(server.upload_url("auto"))
        .form(&pairs)
        .send()
        .await
        .unwrap();
    let r: Value = resp.json().await.unwrap();
    assert_eq!(r["etag"], md5_hex(&png2), "{r}");
    assert_eq!(r["original_filename"], "sample");

    // HTTP Basic credentials instead of a signature.
    let form = reqwest::multipart::Form::new()
        .text("public_id", "basic_auth")
        .part(
            "file",
            reqwest::multipart::Part::bytes(png.clone()).file_name("b.png"),
        );
    let resp = client
        .post(server.upload_url("image"))
        .basic_auth(KEY, Some(SECRET))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // A SHA-256 account on another cloud: its assets are separate, its signatures SHA-256.
    let ts = now().to_string();
    let mut form = reqwest::multipart::Form::new();
    for (k, v) in signed(
        &[("timestamp", &ts), ("public_id", "folder/sample")],
        "5555",
        "sha256secret",
        SignatureAlgorithm::Sha256,
    ) {
        form = form.text(k, v);
    }
    form = form.part(
        "file",
        reqwest::multipart::Part::bytes(png.clone()).file_name("o.png"),
    );
    let r: Value = client
        .post(server.url("/v1_1/other/image/upload"))
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        r.get("overwritten").is_none(),
        "a new asset in the other cloud: {r}"
    );
    let v = r["version"].as_i64().unwrap();
    assert_eq!(
        r["signature"],
        api_sign(
            &format!("public_id=folder/sample&version={v}"),
            "sha256secret",
            SignatureAlgorithm::Sha256
        )
    );
    assert_eq!(get_bytes(r["secure_url"].as_str().unwrap()).await.1, png);
    assert_eq!(
        get_bytes(&format!(
            "{}/demo/image/upload/folder/sample.png",
            server.base
        ))
        .await
        .1,
        png2
    );

    // Unsigned upload through the preset: folder and tags from the preset, call tags merged,
    // overwrite forced off.
    let form = reqwest::multipart::Form::new()
        .text("upload_preset", "my_unsigned_preset")
        .text("tags", "mine")
        .text("type", "private")
        .part(
            "file",
            reqwest::multipart::Part::bytes(png.clone()).file_name("u.png"),
        );
    let r: Value = client
        .post(server.upload_url("image"))
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = r["public_id"].as_str().unwrap();
    assert!(
        id.starts_with("preset_folder/") && id.len() == "preset_folder/".len() + 20,
        "{r}"
    );
    assert_eq!(r["tags"], serde_json::json!(["from_preset", "mine"]));
    assert_eq!(r["type"], "upload", "type is not an unsigned parameter");
    assert!(r.get("api_key").is_none());
    let form = reqwest::multipart::Form::new()
        .text("upload_preset", "my_unsigned_preset")
        .text(
            "public_id",
            id.trim_start_matches("preset_folder/").to_string(),
        )
        .part(
            "file",
            reqwest::multipart::Part::bytes(png2.clone()).file_name("u.png"),
        );
    let r2: Value = client
        .post(server.upload_url("image"))
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r2["existing"], true, "{r2}");
    assert_eq!(r2["etag"], r["etag"]);
    // A signed upload naming a preset gets its settings where the call is silent.
    let (_, r) = upload(
        &server,
        "image",
        &[("upload_preset", "signed_preset")],
        &png,
        "s.png",
    )
    .await;
    assert_eq!(r["tags"], serde_json::json!(["signed_preset_tag"]));
    let (_, r) = upload(
        &server,
        "image",
        &[("upload_preset", "signed_preset"), ("tags", "own")],
        &png,
        "s.png",
    )
    .await;
    assert_eq!(r["tags"], serde_json::json!(["own"]));

    // Uploads arriving together share a batch, where their etags are made side by side: each
    // gets its own content's MD5, in the answer and in its stored row.
    let images: Vec<Vec<u8>> = (1..=24).map(|w| samples::png(w, 5)).collect();
    let answers = futures_util::future::join_all(
        images
            .iter()
            .map(|png| upload(&server, "image", &[], png, "together.png")),
    )
    .await;
    for (png, (s, r)) in images.iter().zip(&answers) {
        assert_eq!(*s, 200, "{r}");
        assert_eq!(r["etag"], md5_hex(png), "{r}");
        let id = r["public_id"].as_str().unwrap();
        let (s, stored) = admin(
            &server,
            "GET",
            &format!("resources/image/upload/{id}"),
            None,
        )
        .await;
        assert_eq!(s, 200, "{stored}");
        assert_eq!(stored["etag"], md5_hex(png), "{stored}");
    }

    assert_eq!(server.health().await, 200);
    server.stop().await;
}

#[tokio::test]
async fn upload_and_delivery_story_on_sqlite() {
    story(Backend::Sqlite).await;
}

#[tokio::test]
async fn upload_and_delivery_story_on_postgres() {
    let Some(admin) = postgres_admin_url() else {
        return;
    };
    story(Backend::Postgres(admin)).await;
}

#[tokio::test]
async fn x_request_id_on_every_answer() {
    let server = TestServer::start().await;
    for url in [
        server.url("/health"),
        server.url("/demo/image/upload/missing.png"),
    ] {
        let r = reqwest::get(url).await.unwrap();
        assert_eq!(r.headers()["x-request-id"].len(), 32);
    }
    let r = reqwest::Client::new()
        .post(server.upload_url("image"))
        .send()
        .await
        .unwrap();
    assert!(r.headers().contains_key("x-request-id"));
    server.stop().await;
}

#[tokio::test]
async fn private_cdn_paths_without_the_cloud_segment() {
    let toml_text = r#"accounts = ["cloudinary://1234567890:abcd@demo"]"#;
    let server = TestServer::start_with(Backend::Sqlite, toml_text, None).await;
    let png = samples::png(3, 3);
    let (s, r) = upload(
        &server,
        "image",
        &[("public_id", "cdn/logo")],
        &png,
        "l.png",
    )
    .await;
    assert_eq!(s, 200, "{r}");
    let v = r["version"].as_i64().unwrap();
    assert_eq!(
        get_bytes(&server.url(&format!("/image/upload/v{v}/cdn/logo.png"))).await,
        (200, png.clone())
    );
    assert_eq!(
        get_bytes(&server.url("/image/upload/cdn/missing.png"))
            .await
            .0,
        404
    );
    // With several clouds the cloud segment is required.
    let two = TestServer::start().await;
    let (_, r) = upload(&two, "image", &[("public_id", "x")], &png, "l.png").await;
    assert_eq!(r["public_id"], "x");
    assert_eq!(get_bytes(&two.url("/image/upload/x.png")).await.0, 404);
    server.stop().await;
    two.stop().await;
}
