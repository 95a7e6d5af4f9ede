//! Derived images rendered once (stored, shared by concurrent requests, removed with their
//! records), strict transformations, named transformations in URLs, eager and incoming
//! transformations, image overlays and underlays, and the decoding bound.

mod common;

use common::*;
use image::{Rgba, RgbaImage};
use nephos::auth::{delivery_signature, SignatureAlgorithm};
use serde_json::{json, Value};

fn solid(w: u32, h: u32, rgba: [u8; 4]) -> Vec<u8> {
    let img = RgbaImage::from_pixel(w, h, Rgba(rgba));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

async fn stats(server: &TestServer) -> Value {
    let r = reqwest::Client::new()
        .get(server.url("/_nephos/stats"))
        .header("x-nephos-control", "1")
        .send()
        .await
        .unwrap();
    r.json::<Value>().await.unwrap()["derived"].clone()
}

async fn get(url: &str) -> (u16, Vec<u8>, Option<String>) {
    let r = reqwest::get(url).await.unwrap();
    let s = r.status().as_u16();
    let why = r
        .headers()
        .get("x-cld-error")
        .map(|v| v.to_str().unwrap().to_string());
    (s, r.bytes().await.unwrap().to_vec(), why)
}

fn pixel(bytes: &[u8], x: u32, y: u32) -> [u8; 4] {
    image::load_from_memory(bytes)
        .unwrap()
        .to_rgba8()
        .get_pixel(x, y)
        .0
}

#[tokio::test]
async fn a_derivative_is_rendered_once_and_served_as_stored() {
    let server = TestServer::start().await;
    let (s, up) = upload(
        &server,
        "image",
        &[("public_id", "once")],
        &solid(80, 40, [200, 10, 10, 255]),
        "a.png",
    )
    .await;
    assert_eq!(s, 200, "{up}");
    let url = server.url("/demo/image/upload/c_fill,h_30,w_30/once.png");
    // Concurrent requests for one uncached derivative share one render.
    let gets: Vec<_> = (0..16)
        .map(|_| tokio::spawn(get_owned(url.clone())))
        .collect();
    let mut bodies = Vec::new();
    for g in gets {
        let (s, body, why) = g.await.unwrap();
        assert_eq!(s, 200, "{why:?}");
        bodies.push(body);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(stats(&server).await["renders_started"], 1);
    let (s, again, _) = get(&url).await;
    assert_eq!(s, 200);
    assert_eq!(again, bodies[0]);
    let st = stats(&server).await;
    assert_eq!(st["renders_started"], 1, "{st}");
    assert!(st["served_stored"].as_u64().unwrap() >= 1);
    // Listed among the asset's derived versions, and removable.
    let (s, detail) = admin(&server, "GET", "resources/image/upload/once", None).await;
    assert_eq!(s, 200);
    let derived = detail["derived"].as_array().unwrap();
    assert_eq!(derived.len(), 1, "{detail}");
    assert_eq!(derived[0]["transformation"], "c_fill,h_30,w_30");
    let id = derived[0]["id"].as_str().unwrap().to_string();
    let stored_before = server.blob_files().len();
    let r = reqwest::Client::new()
        .delete(server.url("/v1_1/demo/derived_resources"))
        .basic_auth(KEY, Some(SECRET))
        .form(&[("derived_resource_ids[]", id.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        server.blob_files().len(),
        stored_before - 1,
        "the stored bytes go too"
    );
    let (s, _, _) = get(&url).await;
    assert_eq!(s, 200);
    assert_eq!(stats(&server).await["renders_started"], 2);

    // A new version is a new derivative.
    let (s, _) = upload(
        &server,
        "image",
        &[("public_id", "once"), ("overwrite", "true")],
        &solid(80, 40, [10, 10, 200, 255]),
        "b.png",
    )
    .await;
    assert_eq!(s, 200);
    let (s, body, _) = get(&url).await;
    assert_eq!(s, 200);
    assert_eq!(pixel(&body, 15, 15), [10, 10, 200, 255]);
    server.stop().await;
}

async fn get_owned(url: String) -> (u16, Vec<u8>, Option<String>) {
    get(&url).await
}

#[tokio::test]
async fn named_transformations_in_urls_eager_and_incoming() {
    let server = TestServer::start().await;
    let (s, _) = upload(
        &server,
        "image",
        &[("public_id", "named/src")],
        &solid(100, 50, [0, 120, 0, 255]),
        "a.png",
    )
    .await;
    assert_eq!(s, 200);
    let (s, j) = admin(
        &server,
        "POST",
        "transformations",
        Some(json!({"name": "thumb", "transformation": "c_fill,h_20,w_20"})),
    )
    .await;
    assert_eq!(s, 200, "{j}");
    let (s, j) = admin(
        &server,
        "POST",
        "transformations",
        Some(json!({"name": "wide", "transformation": "t_thumb/c_pad,w_40,h_20/png"})),
    )
    .await;
    assert_eq!(s, 200, "{j}");
    let (s, body, why) = get(&server.url("/demo/image/upload/t_thumb/named/src.png")).await;
    assert_eq!(s, 200, "{why:?}");
    let img = image::load_from_memory(&body).unwrap();
    assert_eq!((img.width(), img.height()), (20, 20));
    // Nested, and beside other parameters.
    let (s, body, why) = get(&server.url("/demo/image/upload/t_wide/named/src.jpg")).await;
    assert_eq!(s, 200, "{why:?}");
    let img = image::load_from_memory(&body).unwrap();
    assert_eq!((img.width(), img.height()), (40, 20));
    let (s, body, _) = get(&server.url("/demo/image/upload/t_thumb,e_negate/named/src.png")).await;
    assert_eq!(s, 200);
    assert_eq!(pixel(&body, 10, 10), [255, 135, 255, 255]);
    let (s, _, why) = get(&server.url("/demo/image/upload/t_nothing/named/src.png")).await;
    assert_eq!(s, 400);
    assert!(why.unwrap().contains("t_nothing"));
    // Eager with a named transformation keeps the name.
    let (s, up) = upload(
        &server,
        "image",
        &[("public_id", "named/eager"), ("eager", "t_thumb")],
        &solid(60, 30, [9, 9, 9, 255]),
        "e.png",
    )
    .await;
    assert_eq!(s, 200, "{up}");
    assert_eq!(up["eager"][0]["transformation"], "t_thumb");
    assert_eq!(up["eager"][0]["width"], 20);
    // An incoming transformation by name.
    let (s, up) = upload(
        &server,
        "image",
        &[
            ("public_id", "named/incoming"),
            ("transformation", "t_thumb"),
        ],
        &solid(60, 30, [9, 9, 9, 255]),
        "i.png",
    )
    .await;
    assert_eq!(s, 200, "{up}");
    assert_eq!(
        (up["width"].as_i64(), up["height"].as_i64()),
        (Some(20), Some(20))
    );
    server.stop().await;
}

#[tokio::test]
async fn strict_transformations_render_only_what_is_allowed() {
    let toml_text = format!("{DEFAULT_TOML}\n[limits]\nstrict_transformations = true\n");
    let server = TestServer::start_with(Backend::Sqlite, &toml_text, None).await;
    let (s, _) = upload(
        &server,
        "image",
        &[("public_id", "strict/src"), ("eager", "w_10|f_auto,w_16")],
        &solid(40, 20, [1, 2, 3, 255]),
        "a.png",
    )
    .await;
    assert_eq!(s, 200);
    // A new transformation by an unsigned URL: refused.
    let (s, _, why) = get(&server.url("/demo/image/upload/w_12/strict/src.png")).await;
    assert_eq!(s, 401);
    assert!(why.unwrap().contains("strict"));
    // The eager one exists: served.
    let (s, _, why) = get(&server.url("/demo/image/upload/w_10/strict/src.png")).await;
    assert_eq!(s, 200, "{why:?}");
    // Signed: rendered.
    let sig = delivery_signature(
        "w_12/strict/src.png",
        SECRET,
        SignatureAlgorithm::Sha1,
        false,
    );
    let (s, _, why) = get(&server.url(&format!(
        "/demo/image/upload/s--{sig}--/w_12/strict/src.png"
    )))
    .await;
    assert_eq!(s, 200, "{why:?}");
    // A named transformation allowed for strict mode.
    let (s, j) = admin(
        &server,
        "POST",
        "transformations",
        Some(json!({"name": "ok_strict", "transformation": "w_14", "allowed_for_strict": true})),
    )
    .await;
    assert_eq!(s, 200, "{j}");
    let (s, _, why) = get(&server.url("/demo/image/upload/t_ok_strict/strict/src.png")).await;
    assert_eq!(s, 200, "{why:?}");
    // Breakpoints as JSON are a transformation like any other.
    let (s, _, why) =
        get(&server.url("/demo/image/upload/w_auto:breakpoints:json/strict/src.png")).await;
    assert_eq!(s, 401, "{why:?}");
    // f_auto: a browser's AVIF choice was never rendered; the eager PNG is served instead.
    let r = reqwest::Client::new()
        .get(server.url("/demo/image/upload/f_auto,w_16/strict/src.png"))
        .header("accept", "image/avif,image/webp,*/*")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/png");
    let body = r.bytes().await.unwrap();
    assert_eq!(image::load_from_memory(&body).unwrap().width(), 16);
    // Not for a transformation that was never made.
    let r = reqwest::Client::new()
        .get(server.url("/demo/image/upload/f_auto,w_18/strict/src.png"))
        .header("accept", "image/avif,image/webp,*/*")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    server.stop().await;
}

#[tokio::test]
async fn breakpoints_json_is_a_derivative_rendered_once() {
    let server = TestServer::start().await;
    let (s, _) = upload(
        &server,
        "image",
        &[("public_id", "bp")],
        &solid(900, 300, [9, 80, 200, 255]),
        "bp.png",
    )
    .await;
    assert_eq!(s, 200);
    let url = server.url("/demo/image/upload/w_auto:breakpoints_100_800_5_2:json/bp.png");
    let before = stats(&server).await["renders_started"].as_u64().unwrap();
    for _ in 0..3 {
        let r = reqwest::get(&url).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/json");
        let body: Value = r.json().await.unwrap();
        let widths = body["breakpoints"].as_array().unwrap();
        assert!(!widths.is_empty());
        assert!(widths
            .iter()
            .all(|w| (100..=800).contains(&w.as_u64().unwrap())));
    }
    let after = stats(&server).await["renders_started"].as_u64().unwrap();
    assert_eq!(after - before, 1);
    let (_, detail) = admin(&server, "GET", "resources/image/upload/bp", None).await;
    assert_eq!(detail["derived"][0]["format"], "json");
    server.stop().await;
}

#[tokio::test]
async fn image_overlays_and_underlays() {
    let server = TestServer::start().await;
    for (id, img) in [
        ("ov/base", solid(40, 20, [255, 0, 0, 255])),
        ("ov/mark", solid(10, 10, [0, 0, 255, 255])),
        ("ov/clear", solid(20, 20, [0, 0, 0, 0])),
    ] {
        let (s, j) = upload(&server, "image", &[("public_id", id)], &img, "x.png").await;
        assert_eq!(s, 200, "{j}");
    }
    let base = server.url("/demo/image/upload");
    // In one component: the layer's size and place.
    let (s, body, why) = get(&format!("{base}/l_ov:mark,g_north_west/ov/base.png")).await;
    assert_eq!(s, 200, "{why:?}");
    assert_eq!(pixel(&body, 2, 2), [0, 0, 255, 255]);
    assert_eq!(pixel(&body, 30, 15), [255, 0, 0, 255]);
    // Layer transformations between l_ and fl_layer_apply, placed by the latter.
    let (s, body, why) = get(&format!(
        "{base}/l_ov:mark/c_scale,w_4/e_negate/fl_layer_apply,g_south_east,x_1,y_1/ov/base.png"
    ))
    .await;
    assert_eq!(s, 200, "{why:?}");
    let img = image::load_from_memory(&body).unwrap().to_rgba8();
    assert_eq!((img.width(), img.height()), (40, 20));
    assert_eq!(
        img.get_pixel(36, 16).0,
        [255, 255, 0, 255],
        "negated blue, 4 px, 1 px in"
    );
    assert_eq!(img.get_pixel(39, 19).0, [255, 0, 0, 255]);
    // An underlay shows where the image is transparent.
    let (s, body, why) = get(&format!("{base}/u_ov:mark,w_20,h_20,c_scale/ov/clear.png")).await;
    assert_eq!(s, 200, "{why:?}");
    assert_eq!(pixel(&body, 10, 10), [0, 0, 255, 255]);
    // Refusals.
    let (s, _, why) = get(&format!("{base}/l_ov:missing/ov/base.png")).await;
    assert_eq!(s, 400);
    assert!(why.unwrap().contains("ov/missing"));
    let (s, _, _) = get(&format!("{base}/fl_layer_apply/ov/base.png")).await;
    assert_eq!(s, 400);
    let (s, _, _) = get(&format!("{base}/l_fetch:aHR0cDovL3g=/ov/base.png")).await;
    assert_eq!(s, 400);
    server.stop().await;
}

#[tokio::test]
async fn decoding_is_bounded_in_memory() {
    let toml_text = format!("{DEFAULT_TOML}\n[limits]\nmax_decode_bytes = 4000000\n");
    let server = TestServer::start_with(Backend::Sqlite, &toml_text, None).await;
    // 1200 × 1200 at 16 bits a channel: 11.5 MB decoded, a small file.
    let img = image::ImageBuffer::<image::Rgba<u16>, Vec<u16>>::from_pixel(
        1200,
        1200,
        image::Rgba([1000, 2000, 3000, 65535]),
    );
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png).unwrap();
    let (s, j) = upload(
        &server,
        "image",
        &[("public_id", "deep")],
        png.get_ref(),
        "d.png",
    )
    .await;
    assert_eq!(s, 200, "{j}");
    let (s, _, why) = get(&server.url("/demo/image/upload/w_10/deep.png")).await;
    assert_eq!(s, 400);
    assert!(why.unwrap().contains("too large"));
    assert_eq!(server.health().await, 200);
    // Too many chained components.
    let chain = vec!["w_10"; 40].join("/");
    let (s, _, why) = get(&server.url(&format!("/demo/image/upload/{chain}/deep.png"))).await;
    assert_eq!(s, 400, "{why:?}");
    server.stop().await;
}

#[tokio::test]
async fn f_auto_follows_accept_and_faces_guide_crops() {
    let server = TestServer::start().await;
    let (s, _) = upload(
        &server,
        "image",
        &[("public_id", "auto/png")],
        &solid(30, 20, [5, 6, 7, 255]),
        "a.png",
    )
    .await;
    assert_eq!(s, 200);
    let url = server.url("/demo/image/upload/f_auto,w_15/auto/png");
    // A browser that takes AVIF gets AVIF (of the right size), one that takes WebP gets WebP.
    let avif = reqwest::Client::new()
        .get(&url)
        .header("accept", "image/avif,image/webp,image/*,*/*;q=0.8")
        .send()
        .await
        .unwrap();
    assert_eq!(avif.status(), 200);
    assert_eq!(avif.headers()["content-type"], "image/avif");
    let avif_etag = avif.headers()["etag"].clone();
    let body = avif.bytes().await.unwrap();
    assert_eq!(&body[4..12], b"ftypavif");
    let size = imagesize::blob_size(&body).unwrap();
    assert_eq!((size.width, size.height), (15, 10));
    let webp = reqwest::Client::new()
        .get(&url)
        .header("accept", "image/webp,image/*,*/*;q=0.8")
        .send()
        .await
        .unwrap();
    assert_eq!(webp.status(), 200);
    assert_eq!(webp.headers()["content-type"], "image/webp");
    assert_ne!(webp.headers()["etag"], avif_etag);
    // AVIF is written up to 2048 × 2048: beyond, f_auto gives WebP and f_avif a clear 400.
    let big = server.url("/demo/image/upload/f_auto,w_3000/auto/png");
    let r = reqwest::Client::new()
        .get(&big)
        .header("accept", "image/avif,image/webp,*/*")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/webp");
    assert_eq!(&r.bytes().await.unwrap()[8..12], b"WEBP");
    let (s, _, why) = get(&server.url("/demo/image/upload/w_3000/auto/png.avif")).await;
    assert_eq!(s, 400);
    assert!(why.unwrap_or_default().contains("AVIF"));
    assert!(webp
        .headers()
        .get_all("vary")
        .iter()
        .any(|v| v.to_str().unwrap().contains("Accept")));
    let plain = reqwest::get(&url).await.unwrap();
    assert_eq!(plain.headers()["content-type"], "image/png");
    let etag_plain = plain.headers()["etag"].clone();
    assert_ne!(
        webp.headers()["etag"],
        etag_plain,
        "each format has its own ETag"
    );

    // Faces stored at upload guide g_face crops.
    let img = RgbaImage::from_fn(100, 20, |x, _| Rgba([x as u8, 0, 0, 255]));
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png).unwrap();
    let (s, j) = upload(
        &server,
        "image",
        &[
            ("public_id", "auto/face"),
            ("face_coordinates", "80,5,10,10"),
        ],
        png.get_ref(),
        "f.png",
    )
    .await;
    assert_eq!(s, 200, "{j}");
    let (s, body, why) =
        get(&server.url("/demo/image/upload/c_thumb,g_face,w_20,h_20/auto/face.png")).await;
    assert_eq!(s, 200, "{why:?}");
    assert_eq!(pixel(&body, 0, 0)[0], 75);
    server.stop().await;
}

#[tokio::test]
async fn derived_images_kept_per_asset_are_bounded() {
    let toml_text = format!("{DEFAULT_TOML}\n[limits]\nmax_derived_per_asset = 3\n");
    let server = TestServer::start_with(Backend::Sqlite, &toml_text, None).await;
    let (s, _) = upload(
        &server,
        "image",
        &[("public_id", "many")],
        &solid(50, 50, [1, 1, 1, 255]),
        "m.png",
    )
    .await;
    assert_eq!(s, 200);
    let blobs_before = server.blob_files().len();
    for w in 1..=8 {
        let (s, _, why) = get(&server.url(&format!("/demo/image/upload/w_{w}/many.png"))).await;
        assert_eq!(s, 200, "{why:?}");
    }
    assert_eq!(server.blob_files().len(), blobs_before + 3);
    let (_, detail) = admin(&server, "GET", "resources/image/upload/many", None).await;
    assert_eq!(detail["derived"].as_array().unwrap().len(), 3);
    // Those beyond are rendered each time, and still right.
    let (s, body, _) = get(&server.url("/demo/image/upload/w_7/many.png")).await;
    assert_eq!(s, 200);
    assert_eq!(image::load_from_memory(&body).unwrap().width(), 7);
    server.stop().await;
}

#[tokio::test]
async fn animated_gifs_stay_animated_through_transformations() {
    use image::AnimationDecoder;
    let server = TestServer::start().await;
    let gif = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/sdk/assets/anim.gif"
    ))
    .unwrap();
    let frames_of = |bytes: &[u8]| {
        image::codecs::gif::GifDecoder::new(std::io::Cursor::new(bytes.to_vec()))
            .unwrap()
            .into_frames()
            .collect_frames()
            .unwrap()
    };
    let source_frames = frames_of(&gif);
    assert!(source_frames.len() > 1);
    let (s, j) = upload(&server, "image", &[("public_id", "anim")], &gif, "anim.gif").await;
    assert_eq!(s, 200, "{j}");
    let (s, body, why) =
        get(&server.url("/demo/image/upload/c_scale,w_20/e_negate/anim.gif")).await;
    assert_eq!(s, 200, "{why:?}");
    let frames = frames_of(&body);
    assert_eq!(frames.len(), source_frames.len());
    assert!(frames.iter().all(|f| f.buffer().width() == 20));
    assert_eq!(frames[0].delay(), source_frames[0].delay());
    // As PNG (or with pg_), one frame.
    let (s, body, _) = get(&server.url("/demo/image/upload/c_scale,w_20/anim.png")).await;
    assert_eq!(s, 200);
    assert_eq!(image::load_from_memory(&body).unwrap().width(), 20);

    // As WebP, an animated WebP; uploaded as such, it stays animated as WebP and as GIF.
    let webp_frames = |bytes: &[u8]| {
        image::codecs::webp::WebPDecoder::new(std::io::Cursor::new(bytes.to_vec()))
            .unwrap()
            .into_frames()
            .collect_frames()
            .unwrap()
    };
    let (s, awebp, why) = get(&server.url("/demo/image/upload/c_scale,w_30/anim.webp")).await;
    assert_eq!(s, 200, "{why:?}");
    let frames = webp_frames(&awebp);
    assert_eq!(frames.len(), source_frames.len());
    assert!(frames.iter().all(|f| f.buffer().width() == 30));
    assert_eq!(frames[1].delay(), source_frames[1].delay());
    let (s, j) = upload(
        &server,
        "image",
        &[("public_id", "awebp")],
        &awebp,
        "a.webp",
    )
    .await;
    assert_eq!(s, 200, "{j}");
    assert_eq!(j["pages"], json!(source_frames.len()));
    let (s, body, why) = get(&server.url("/demo/image/upload/c_scale,w_10/awebp.webp")).await;
    assert_eq!(s, 200, "{why:?}");
    let frames = webp_frames(&body);
    assert_eq!(frames.len(), source_frames.len());
    assert!(frames.iter().all(|f| f.buffer().width() == 10));
    let (s, body, why) = get(&server.url("/demo/image/upload/c_scale,w_10/awebp.gif")).await;
    assert_eq!(s, 200, "{why:?}");
    assert_eq!(frames_of(&body).len(), source_frames.len());
    // pg_ takes one frame of an animated WebP: a red frame then a blue one.
    let mut two = Vec::new();
    {
        let mut encoder = image::codecs::gif::GifEncoder::new(&mut two);
        for c in [[250, 0, 0, 255], [0, 0, 250, 255]] {
            let frame = image::Frame::from_parts(
                RgbaImage::from_pixel(12, 12, Rgba(c)),
                0,
                0,
                image::Delay::from_numer_denom_ms(100, 1),
            );
            encoder.encode_frame(frame).unwrap();
        }
    }
    let (s, j) = upload(&server, "image", &[("public_id", "two")], &two, "two.gif").await;
    assert_eq!(s, 200, "{j}");
    let (s, two_webp, _) = get(&server.url("/demo/image/upload/two.webp")).await;
    assert_eq!(s, 200);
    let (s, j) = upload(
        &server,
        "image",
        &[("public_id", "two_w")],
        &two_webp,
        "t.webp",
    )
    .await;
    assert_eq!(s, 200, "{j}");
    let (_, first, _) = get(&server.url("/demo/image/upload/pg_1/two_w.png")).await;
    let (s, second, why) = get(&server.url("/demo/image/upload/pg_2/two_w.png")).await;
    assert_eq!(s, 200, "{why:?}");
    assert!(pixel(&first, 5, 5)[0] > 200);
    assert!(pixel(&second, 5, 5)[2] > 200);
    let (s, _, why) = get(&server.url("/demo/image/upload/pg_99/awebp.png")).await;
    assert_eq!(s, 400);
    assert!(why.unwrap_or_default().contains("no page 99"));
    server.stop().await;
}

#[tokio::test]
async fn tiff_pages_are_delivered_one_by_one() {
    use tiff::encoder::{colortype, TiffEncoder};
    let server = TestServer::start().await;
    let mut tif = std::io::Cursor::new(Vec::new());
    {
        let mut encoder = TiffEncoder::new(&mut tif).unwrap();
        encoder
            .write_image::<colortype::RGB8>(40, 20, &[0u8; 40 * 20 * 3])
            .unwrap();
        let page2: Vec<u8> = [250u8, 10, 10].repeat(30 * 30);
        encoder
            .write_image::<colortype::RGB8>(30, 30, &page2)
            .unwrap();
    }
    let (s, j) = upload(
        &server,
        "image",
        &[("public_id", "scan")],
        &tif.into_inner(),
        "scan.tif",
    )
    .await;
    assert_eq!(s, 200, "{j}");
    assert_eq!(j["pages"], json!(2));
    let (s, body, why) = get(&server.url("/demo/image/upload/pg_2,w_15/scan.png")).await;
    assert_eq!(s, 200, "{why:?}");
    let img = image::load_from_memory(&body).unwrap();
    assert_eq!((img.width(), img.height()), (15, 15));
    assert_eq!(pixel(&body, 7, 7)[0], 250);
    let (s, body, _) = get(&server.url("/demo/image/upload/pg_1/scan.png")).await;
    assert_eq!(s, 200);
    assert_eq!(pixel(&body, 7, 7), [0, 0, 0, 255]);
    let (s, _, why) = get(&server.url("/demo/image/upload/pg_3/scan.png")).await;
    assert_eq!(s, 400, "{why:?}");
    server.stop().await;
}

#[tokio::test]
async fn videos_give_posters_and_animated_previews() {
    use image::AnimationDecoder;
    let server = TestServer::start().await;
    // 160×90, 2 s at 10 frames a second, H.264 High profile with B-frames.
    let mp4 = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/sdk/assets/tiny_h264.mp4"
    ))
    .unwrap();
    let (s, j) = upload(
        &server,
        "video",
        &[("public_id", "movies/clip")],
        &mp4,
        "clip.mp4",
    )
    .await;
    assert_eq!(s, 200, "{j}");
    let base = server.url("/demo/video/upload");
    let size = |b: &[u8]| {
        let i = image::load_from_memory(b).unwrap();
        (i.width(), i.height())
    };
    let (s, body, why) = get(&format!("{base}/movies/clip.jpg")).await;
    assert_eq!(s, 200, "{why:?}");
    assert_eq!(size(&body), (160, 90));
    let (s, body, why) = get(&format!("{base}/c_fill,h_40,w_40,so_0.5/movies/clip.png")).await;
    assert_eq!(s, 200, "{why:?}");
    assert_eq!(size(&body), (40, 40));
    // Other offsets give other pictures.
    let (_, first, _) = get(&format!("{base}/so_0/movies/clip.png")).await;
    let (_, last, _) = get(&format!("{base}/so_90p/movies/clip.png")).await;
    assert_ne!(first, last);
    // An animated preview: vs_ frames, dl_ apart.
    let (s, body, why) = get(&format!("{base}/c_scale,w_64/vs_5,dl_150/movies/clip.gif")).await;
    assert_eq!(s, 200, "{why:?}");
    let frames = image::codecs::gif::GifDecoder::new(std::io::Cursor::new(body))
        .unwrap()
        .into_frames()
        .collect_frames()
        .unwrap();
    assert_eq!(frames.len(), 5);
    assert_eq!(frames[0].buffer().width(), 64);
    assert_eq!(frames[0].delay().numer_denom_ms(), (150, 1));
    // WebM: VP9 (any frame) and VP8 (keyframes).
    for name in ["tiny_vp9", "tiny_vp8"] {
        let webm = std::fs::read(format!(
            "{}/tests/sdk/assets/{name}.webm",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let (s, j) = upload(&server, "video", &[("public_id", name)], &webm, "v.webm").await;
        assert_eq!(s, 200, "{j}");
        let (s, body, why) = get(&format!("{base}/w_80/{name}.jpg")).await;
        assert_eq!(s, 200, "{name}: {why:?}");
        assert_eq!(size(&body), (80, 45));
        let (s, body, why) = get(&format!("{base}/vs_3,w_32/{name}.gif")).await;
        assert_eq!(s, 200, "{name}: {why:?}");
        let frames = image::codecs::gif::GifDecoder::new(std::io::Cursor::new(body))
            .unwrap()
            .into_frames()
            .collect_frames()
            .unwrap();
        assert_eq!(frames.len(), 3, "{name}");
    }
    let (_, first, _) = get(&format!("{base}/so_0/tiny_vp9.png")).await;
    let (_, later, _) = get(&format!("{base}/so_1.3/tiny_vp9.png")).await;
    assert_ne!(first, later, "VP9 frames between keyframes are decoded");
    // What is not a picture is refused, as are video options on images and junk videos.
    let (s, _, why) = get(&format!("{base}/w_80/movies/clip.mp4")).await;
    assert_eq!(s, 400, "{why:?}");
    let (s, _) = upload(
        &server,
        "image",
        &[("public_id", "still")],
        &solid(10, 10, [1, 2, 3, 255]),
        "s.png",
    )
    .await;
    assert_eq!(s, 200);
    let (s, _, why) = get(&server.url("/demo/image/upload/so_1/still.png")).await;
    assert_eq!(s, 400, "{why:?}");
    server.stop().await;
}

/// Serves `bytes` at `/mark.png` on loopback; answers the URL.
async fn image_server(bytes: Vec<u8>) -> String {
    use axum::routing::get as route_get;
    let app = axum::Router::new().route(
        "/mark.png",
        route_get(move || {
            let bytes = bytes.clone();
            async move { ([("content-type", "image/png")], bytes) }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mark.png", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    url
}

#[tokio::test]
async fn fetched_layers_follow_the_fetch_policy() {
    use base64::Engine;
    let url = image_server(solid(8, 8, [0, 200, 0, 255])).await;
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&url);
    // The test configuration allows loopback fetches.
    let server = TestServer::start().await;
    let (s, _) = upload(
        &server,
        "image",
        &[("public_id", "fbase")],
        &solid(20, 20, [200, 0, 0, 255]),
        "b.png",
    )
    .await;
    assert_eq!(s, 200);
    let (s, body, why) = get(&server.url(&format!(
        "/demo/image/upload/l_fetch:{encoded},g_north_west/fbase.png"
    )))
    .await;
    assert_eq!(s, 200, "{why:?}");
    assert_eq!(pixel(&body, 1, 1), [0, 200, 0, 255]);
    assert_eq!(pixel(&body, 15, 15), [200, 0, 0, 255]);
    server.stop().await;
    // Without that, loopback is refused, with the reason.
    let server = TestServer::start_with(
        Backend::Sqlite,
        r#"accounts = ["cloudinary://1234567890:abcd@demo"]"#,
        None,
    )
    .await;
    let (s, _) = upload(
        &server,
        "image",
        &[("public_id", "fbase")],
        &solid(20, 20, [200, 0, 0, 255]),
        "b.png",
    )
    .await;
    assert_eq!(s, 200);
    let (s, _, why) =
        get(&server.url(&format!("/demo/image/upload/l_fetch:{encoded}/fbase.png"))).await;
    assert_eq!(s, 400);
    assert!(why.unwrap().contains("could not be fetched"));
    server.stop().await;
}

#[tokio::test]
async fn growing_effects_and_restricted_layers_are_refused() {
    let server = TestServer::start().await;
    let (s, _) = upload(
        &server,
        "image",
        &[("public_id", "g/base")],
        &solid(10, 10, [1, 2, 3, 255]),
        "b.png",
    )
    .await;
    assert_eq!(s, 200);
    // Canvas-growing effects piled up in one component.
    let pile = vec!["e_shadow,x_500,y_500"; 40].join(",");
    let (s, _, why) = get(&server.url(&format!("/demo/image/upload/{pile}/g/base.png"))).await;
    assert_eq!(s, 400, "{why:?}");
    let toml_text = format!("{DEFAULT_TOML}\n[limits]\nmax_image_pixels = 40000\n");
    let small = TestServer::start_with(Backend::Sqlite, &toml_text, None).await;
    let (s, _) = upload(
        &small,
        "image",
        &[("public_id", "g/base")],
        &solid(150, 150, [1, 2, 3, 255]),
        "b.png",
    )
    .await;
    assert_eq!(s, 200);
    let (s, _, why) = get(&small.url("/demo/image/upload/e_outline:100/g/base.png")).await;
    assert_eq!(s, 400, "{why:?}");
    assert!(why.unwrap().contains("too large"));
    small.stop().await;
    // A layer of an asset that needs a signed URL is not shown through another URL.
    let (s, _) = upload(
        &server,
        "image",
        &[("public_id", "g/secret"), ("access_mode", "authenticated")],
        &solid(10, 10, [9, 9, 9, 255]),
        "s.png",
    )
    .await;
    assert_eq!(s, 200);
    let (s, _, why) = get(&server.url("/demo/image/upload/l_g:secret/g/base.png")).await;
    assert_eq!(s, 400, "{why:?}");
    assert!(why.unwrap().contains("restricted"));
    server.stop().await;
}

#[tokio::test]
async fn replaced_assets_take_their_derived_versions_along() {
    let server = TestServer::start().await;
    let mut blobs_of_one_upload = 0;
    for (id, colour) in [("keep/a", [200, 0, 0, 255]), ("keep/b", [0, 200, 0, 255])] {
        let before = server.blob_files().len();
        let (s, _) = upload(
            &server,
            "image",
            &[("public_id", id)],
            &solid(30, 30, colour),
            "x.png",
        )
        .await;
        assert_eq!(s, 200);
        blobs_of_one_upload = server.blob_files().len() - before;
        let (s, _, why) = get(&server.url(&format!("/demo/image/upload/w_10/{id}.png"))).await;
        assert_eq!(s, 200, "{why:?}");
    }
    let with_derived = server.blob_files().len();
    // Renaming a over b replaces b: b's original and its derived image go.
    let (s, j) = signed_call(
        &server,
        "image",
        "rename",
        &[
            ("from_public_id", "keep/a"),
            ("to_public_id", "keep/b"),
            ("overwrite", "true"),
        ],
    )
    .await;
    assert_eq!(s, 200, "{j}");
    assert_eq!(
        server.blob_files().len(),
        with_derived - blobs_of_one_upload - 1
    );
    // The renamed asset keeps its own derived image, and b's URL shows a's pixels.
    let (_, detail) = admin(&server, "GET", "resources/image/upload/keep/b", None).await;
    assert_eq!(detail["derived"].as_array().unwrap().len(), 1, "{detail}");
    let (s, body, _) = get(&server.url("/demo/image/upload/w_10/keep/b.png")).await;
    assert_eq!(s, 200);
    assert_eq!(pixel(&body, 5, 5), [200, 0, 0, 255]);
    // Overwriting by upload removes the derived files of the previous original.
    let before = server.blob_files().len();
    let (s, _) = upload(
        &server,
        "image",
        &[("public_id", "keep/b"), ("overwrite", "true")],
        &solid(30, 30, [0, 0, 200, 255]),
        "x.png",
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(server.blob_files().len(), before - 1);
    let (s, body, _) = get(&server.url("/demo/image/upload/w_10/keep/b.png")).await;
    assert_eq!(s, 200);
    assert_eq!(pixel(&body, 5, 5), [0, 0, 200, 255]);
    // Destroyed: its original and its derived image go.
    let before = server.blob_files().len();
    let (s, j) = signed_call(&server, "image", "destroy", &[("public_id", "keep/b")]).await;
    assert_eq!((s, j["result"].as_str()), (200, Some("ok")));
    assert_eq!(server.blob_files().len(), before - 2);
    server.stop().await;
}
