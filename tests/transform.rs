//! Delivery transformations over HTTP: sizes, formats by `f_` and by extension, conditional
//! requests, signed URLs with a transformation, and clear refusals.

mod common;

use common::*;
use nephos::auth::{delivery_signature, SignatureAlgorithm};
use nephos::media::samples;
use reqwest::StatusCode;

async fn fetch(url: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = reqwest::Client::new().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

async fn image_at(url: &str) -> (image::ImageFormat, u32, u32, String) {
    let r = fetch(url, &[]).await;
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "{url}: {:?}",
        r.headers().get("x-cld-error")
    );
    let ctype = r.headers()["content-type"].to_str().unwrap().to_string();
    let bytes = r.bytes().await.unwrap();
    let format = image::guess_format(&bytes).unwrap();
    let img = image::load_from_memory(&bytes).unwrap();
    (format, img.width(), img.height(), ctype)
}

#[tokio::test]
async fn transformations_and_conversions() {
    let server = TestServer::start().await;
    let png = samples::png(200, 100);
    let (s, up) = upload(
        &server,
        "image",
        &[("public_id", "shop/pic")],
        &png,
        "p.png",
    )
    .await;
    assert_eq!(s, 200, "{up}");
    let base = format!("{}/demo/image/upload", server.base);
    use image::ImageFormat::*;
    let cases = [
        (
            "c_fill,h_100,w_100/v1/shop/pic.png",
            Png,
            100,
            100,
            "image/png",
        ),
        ("w_50/shop/pic", Png, 50, 25, "image/png"),
        (
            "c_pad,h_60,w_60/q_auto,f_auto/shop/pic.png",
            Png,
            60,
            60,
            "image/png",
        ),
        ("c_scale,w_0.25/shop/pic.jpg", Jpeg, 50, 25, "image/jpeg"),
        (
            "c_fit,h_40,w_40/f_webp/shop/pic.png",
            WebP,
            40,
            20,
            "image/webp",
        ),
        (
            "c_crop,g_north_west,h_10,w_20/shop/pic.gif",
            Gif,
            20,
            10,
            "image/gif",
        ),
    ];
    for (path, format, w, h, ctype) in cases {
        let got = image_at(&format!("{base}/{path}")).await;
        assert_eq!(got, (format, w, h, ctype.to_string()), "{path}");
    }
    // A format by extension alone converts the original.
    assert_eq!(image_at(&format!("{base}/v1/shop/pic.webp")).await.0, WebP);
    // The untransformed original is still the stored bytes.
    assert_eq!(
        get_bytes(&format!("{base}/shop/pic.png")).await,
        (200, png.clone())
    );

    // Conditional GET and HEAD on a derived image.
    let url = format!("{base}/w_30/shop/pic.png");
    let first = fetch(&url, &[]).await;
    let etag = first.headers()["etag"].to_str().unwrap().to_string();
    assert_ne!(etag, format!("\"{}\"", up["etag"].as_str().unwrap()));
    let len = first.bytes().await.unwrap().len();
    let again = fetch(&url, &[("if-none-match", &etag)]).await;
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    let head = reqwest::Client::new().head(&url).send().await.unwrap();
    assert_eq!(head.headers()["content-length"], len.to_string().as_str());
    let attach = fetch(&format!("{base}/fl_attachment,w_30/shop/pic.png"), &[]).await;
    assert_eq!(
        attach.headers()["content-disposition"],
        "attachment; filename=\"pic.png\""
    );

    // Refusals name what is wrong, in X-Cld-Error.
    for (path, msg) in [
        (
            "e_cartoonify/shop/pic.png",
            "Transformation e_cartoonify is not supported by this server",
        ),
        (
            "c_fill,w_abc/shop/pic.png",
            "Invalid transformation w_abc: expected a positive number",
        ),
        (
            "w_100000,h_100000,c_scale/shop/pic.png",
            "The result would be too large (100000x100000)",
        ),
    ] {
        let r = fetch(&format!("{base}/{path}"), &[]).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(r.headers()["x-cld-error"], msg, "{path}");
    }
    let r = fetch(&format!("{base}/w_10/shop/nothing.png"), &[]).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // An authenticated asset: the signature covers the transformation.
    let (s, _) = upload(
        &server,
        "image",
        &[("public_id", "secret_pic"), ("type", "authenticated")],
        &png,
        "p.png",
    )
    .await;
    assert_eq!(s, 200);
    let sig = delivery_signature(
        "w_20/secret_pic.png",
        SECRET,
        SignatureAlgorithm::Sha1,
        false,
    );
    let signed = format!(
        "{}/demo/image/authenticated/s--{sig}--/w_20/v1/secret_pic.png",
        server.base
    );
    assert_eq!(image_at(&signed).await.1, 20);
    let wrong = format!(
        "{}/demo/image/authenticated/s--{sig}--/w_21/v1/secret_pic.png",
        server.base
    );
    assert_eq!(fetch(&wrong, &[]).await.status(), StatusCode::UNAUTHORIZED);

    // Videos are not transformed (yet); SVG cannot be decoded.
    let mp4 = samples::mp4(16, 16, 1.0, b"isom");
    let (s, _) = upload(&server, "video", &[("public_id", "clip")], &mp4, "c.mp4").await;
    assert_eq!(s, 200);
    let r = fetch(
        &format!("{}/demo/video/upload/w_10/clip.mp4", server.base),
        &[],
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let svg = br#"<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>"#;
    let (s, _) = upload(&server, "image", &[("public_id", "vec")], svg, "v.svg").await;
    assert_eq!(s, 200);
    let r = fetch(&format!("{base}/w_5/vec.svg"), &[]).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.headers()["x-cld-error"]
        .to_str()
        .unwrap()
        .starts_with("Cannot transform svg"));
    server.stop().await;
}

#[tokio::test]
async fn incoming_transformations_and_format_conversion() {
    let server = TestServer::start().await;
    let png = samples::png(200, 100);
    let (s, up) = upload(
        &server,
        "image",
        &[
            ("public_id", "small"),
            ("transformation", "c_scale,w_50"),
            ("format", "jpg"),
        ],
        &png,
        "p.png",
    )
    .await;
    assert_eq!(s, 200, "{up}");
    assert_eq!(
        (up["width"].as_i64(), up["height"].as_i64()),
        (Some(50), Some(25))
    );
    assert_eq!(up["format"], "jpg");
    let (status, stored) = get_bytes(up["secure_url"].as_str().unwrap()).await;
    assert_eq!(status, 200);
    assert!(up["secure_url"].as_str().unwrap().ends_with("/small.jpg"));
    assert_eq!(up["bytes"].as_u64(), Some(stored.len() as u64));
    use md5_ref::Digest;
    assert_eq!(up["etag"], hex::encode(md5_ref::Md5::digest(&stored)));
    assert_eq!(
        image::guess_format(&stored).unwrap(),
        image::ImageFormat::Jpeg
    );

    let (s, up) = upload(&server, "image", &[("format", "webp")], &png, "p.png").await;
    assert_eq!((s, up["format"].as_str()), (200, Some("webp")));
    // AVIF is delivered, not stored (an AVIF original could not be transformed).
    let (s, refused) = upload(&server, "image", &[("format", "avif")], &png, "p.png").await;
    assert_eq!(s, 400, "{refused}");
    assert!(message(&refused).contains("avif"), "{refused}");
    assert_eq!(up["width"], 200);

    for (params, msg) in [
        (vec![("transformation", "e_cartoonify")], "Transformation e_cartoonify is not supported by this server"),
        (vec![("format", "svg")], "Parameter format (svg) is not a format this server converts to (jpg, png, webp, gif, bmp, tiff)"),
    ] {
        let mut params = params.clone();
        params.push(("public_id", "refused"));
        let (s, body) = upload(&server, "image", &params, &png, "p.png").await;
        assert_eq!((s, message(&body).as_str()), (400, msg));
    }
    let mp4 = samples::mp4(16, 16, 1.0, b"isom");
    let (s, body) = upload(
        &server,
        "video",
        &[("transformation", "w_10")],
        &mp4,
        "c.mp4",
    )
    .await;
    assert_eq!(s, 400);
    assert!(message(&body)
        .starts_with("Incoming transformations and format conversion apply to images only"));
    // Nothing was stored by the refused uploads.
    let (status, _) = get_bytes(&format!("{}/demo/image/upload/refused.png", server.base)).await;
    assert_eq!(status, 404);
    server.stop().await;
}

async fn admin_json(
    server: &TestServer,
    method: reqwest::Method,
    path: &str,
    form: &[(&str, &str)],
) -> serde_json::Value {
    let r = reqwest::Client::new()
        .request(method, server.url(&format!("/v1_1/{CLOUD}/{path}")))
        .basic_auth(KEY, Some(SECRET))
        .form(form)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().await.unwrap()
}

async fn derived_of(server: &TestServer, public_id: &str) -> serde_json::Value {
    let path = format!("resources/image/upload/{public_id}");
    admin_json(server, reqwest::Method::GET, &path, &[]).await["derived"].clone()
}

async fn eager_story(backend: Backend) {
    let server = TestServer::start_on(&backend).await;
    let png = samples::png(200, 100);
    let (s, up) = upload(
        &server,
        "image",
        &[
            ("public_id", "eg"),
            ("eager", "c_fill,h_100,w_100|c_scale,w_50/webp"),
        ],
        &png,
        "p.png",
    )
    .await;
    assert_eq!(s, 200, "{up}");
    let eager = up["eager"].as_array().expect("eager entries");
    assert_eq!(eager.len(), 2);
    assert_eq!(eager[0]["transformation"], "c_fill,h_100,w_100");
    assert_eq!(
        (eager[0]["width"].as_i64(), eager[0]["height"].as_i64()),
        (Some(100), Some(100))
    );
    assert_eq!(
        (
            eager[1]["transformation"].as_str(),
            eager[1]["format"].as_str()
        ),
        (Some("c_scale,w_50"), Some("webp"))
    );
    assert_eq!(
        (eager[1]["width"].as_i64(), eager[1]["height"].as_i64()),
        (Some(50), Some(25))
    );
    let version = up["version"].as_i64().unwrap();
    assert_eq!(
        eager[1]["secure_url"],
        format!(
            "{}/demo/image/upload/c_scale,w_50/v{version}/eg.webp",
            server.base
        )
    );
    for e in eager {
        let (status, bytes) = get_bytes(e["secure_url"].as_str().unwrap()).await;
        assert_eq!(
            (status, bytes.len() as i64),
            (200, e["bytes"].as_i64().unwrap())
        );
    }

    let res = admin_json(
        &server,
        reqwest::Method::GET,
        "resources/image/upload/eg",
        &[],
    )
    .await;
    let derived = res["derived"].as_array().unwrap();
    assert_eq!(derived.len(), 2);
    let ids: Vec<String> = derived
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect();

    // explicit adds one more; deleting one by id leaves two.
    let (s, ex) = {
        let r = reqwest::Client::new()
            .post(server.url("/v1_1/demo/image/explicit"))
            .multipart(signed_form(
                &[("public_id", "eg"), ("type", "upload"), ("eager", "w_20")],
                b"",
                "x",
            ))
            .send()
            .await
            .unwrap();
        (
            r.status().as_u16(),
            r.json::<serde_json::Value>().await.unwrap(),
        )
    };
    assert_eq!(s, 200, "{ex}");
    assert_eq!(ex["eager"][0]["width"], 20);
    let gone = admin_json(
        &server,
        reqwest::Method::DELETE,
        "derived_resources",
        &[
            ("derived_resource_ids[]", ids[0].as_str()),
            ("derived_resource_ids[]", "nope"),
        ],
    )
    .await;
    assert_eq!(gone["deleted"][&ids[0]], "deleted");
    assert_eq!(gone["deleted"]["nope"], "not_found");
    let res = admin_json(
        &server,
        reqwest::Method::GET,
        "resources/image/upload/eg",
        &[],
    )
    .await;
    assert_eq!(res["derived"].as_array().unwrap().len(), 2);

    // keep_original removes only the derived versions.
    let kept = admin_json(
        &server,
        reqwest::Method::DELETE,
        "resources/image/upload",
        &[("public_ids[]", "eg"), ("keep_original", "true")],
    )
    .await;
    assert_eq!(
        kept["deleted_counts"]["eg"],
        serde_json::json!({"original": 0, "derived": 2})
    );
    assert_eq!(derived_of(&server, "eg").await, serde_json::json!([]));

    // An overwrite forgets the previous original's derived versions.
    let (s, _) = upload(
        &server,
        "image",
        &[("public_id", "eg"), ("eager", "w_10")],
        &png,
        "p.png",
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = upload(&server, "image", &[("public_id", "eg")], &png, "p.png").await;
    assert_eq!(s, 200);
    assert_eq!(derived_of(&server, "eg").await, serde_json::json!([]));

    // Refused before anything is stored.
    let (s, body) = upload(
        &server,
        "image",
        &[("public_id", "no"), ("eager", "e_cartoonify")],
        &png,
        "p.png",
    )
    .await;
    assert_eq!(
        (s, message(&body).as_str()),
        (
            400,
            "Invalid eager transformation - Transformation e_cartoonify is not supported by this server"
        )
    );
    let mp4 = samples::mp4(16, 16, 1.0, b"isom");
    let (s, _) = upload(
        &server,
        "video",
        &[("public_id", "no"), ("eager", "w_10")],
        &mp4,
        "c.mp4",
    )
    .await;
    assert_eq!(s, 400);
    server.stop().await;
}

#[tokio::test]
async fn eager_transformations_on_sqlite() {
    eager_story(Backend::Sqlite).await;
}

#[tokio::test]
async fn eager_transformations_on_postgres() {
    let Some(admin) = postgres_admin_url() else {
        return;
    };
    eager_story(Backend::Postgres(admin)).await;
}
