//! The account-level APIs beyond uploads, over plain HTTP on every metadata backend:
//! structured metadata, named transformations, streaming profiles, upload mappings, triggers
//! and poll notifications, moderation, backups, archives, generated images, analyses, and
//! the Admin API's rate limit. (The official SDK suites drive the same calls on SQLite.)

mod common;

use std::io::Read;

use common::*;
use nephos::media::samples;
use serde_json::{json, Value};

async fn metadata_story(server: &TestServer) {
    // Fields of every type; validation and defaults are checked when they are made.
    let (s, f) = admin(
        server,
        "POST",
        "metadata_fields",
        Some(
            json!({"type": "integer", "external_id": "stock", "label": "Stock",
                     "default_value": 5,
                     "validation": {"type": "less_than", "equals": true, "value": 10}}),
        ),
    )
    .await;
    assert_eq!(s, 200, "{f}");
    assert_eq!(f["default_value"], 5);
    assert_eq!(f["mandatory"], false);
    let (s, e) = admin(
        server,
        "POST",
        "metadata_fields",
        Some(
            json!({"type": "integer", "external_id": "bad", "label": "Bad",
                     "default_value": 11,
                     "validation": {"type": "less_than", "equals": true, "value": 10}}),
        ),
    )
    .await;
    assert_eq!((s, message(&e).as_str()), (400, "default_value is invalid"));
    let (s, e) = admin(
        server,
        "POST",
        "metadata_fields",
        Some(json!({"type": "string", "external_id": "stock", "label": "Again"})),
    )
    .await;
    assert_eq!(
        (s, message(&e).as_str()),
        (400, "external id stock already exists")
    );
    let (s, f) = admin(
        server,
        "POST",
        "metadata_fields",
        Some(
            json!({"type": "set", "external_id": "colour", "label": "Colour",
                     "datasource": {"values": [
                        {"external_id": "r", "value": "red"},
                        {"value": "green"},
                        {"external_id": "b", "value": "blue"}]}}),
        ),
    )
    .await;
    assert_eq!(s, 200, "{f}");
    let green = f["datasource"]["values"][1]["external_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!green.is_empty());
    // Datasource: merged in place, soft-deleted and restored, ordered.
    let (_, ds) = admin(
        server,
        "PUT",
        "metadata_fields/colour/datasource",
        Some(json!({"values": [{"external_id": "r", "value": "crimson"}]})),
    )
    .await;
    assert_eq!(
        ds["values"][0],
        json!({"external_id": "r", "value": "crimson"})
    );
    assert_eq!(ds["values"].as_array().unwrap().len(), 3);
    let (_, ds) = admin(
        server,
        "DELETE",
        "metadata_fields/colour/datasource",
        Some(json!({"external_ids": ["b"]})),
    )
    .await;
    assert_eq!(ds["values"].as_array().unwrap().len(), 2);
    let (_, ds) = admin(
        server,
        "POST",
        "metadata_fields/colour/datasource/order",
        Some(json!({"order_by": "value", "direction": "desc"})),
    )
    .await;
    assert_eq!(ds["values"][0]["value"], "green");
    // Upload: values are checked and stored typed; defaults fill the rest.
    let png = samples::png(20, 10);
    let (s, up) = upload(
        server,
        "image",
        &[("public_id", "meta1"), ("metadata", r#"colour=["r"]"#)],
        &png,
        "a.png",
    )
    .await;
    assert_eq!(s, 200, "{up}");
    assert_eq!(up["metadata"], json!({"colour": ["r"], "stock": 5}));
    // The soft-deleted entry is no value any more.
    let (s, e) = upload(
        server,
        "image",
        &[("metadata", r#"colour=["b"]"#)],
        &png,
        "a.png",
    )
    .await;
    assert_eq!(s, 400);
    assert!(
        message(&e).contains("is invalid for metadata field colour"),
        "{e}"
    );
    let (_, ds) = admin(
        server,
        "POST",
        "metadata_fields/colour/datasource_restore",
        Some(json!({"external_ids": ["b"]})),
    )
    .await;
    assert_eq!(ds["values"].as_array().unwrap().len(), 3);
    // update_metadata merges per field.
    let (s, r) = signed_call(
        server,
        "image",
        "metadata",
        &[("metadata", "stock=7"), ("public_ids", "meta1")],
    )
    .await;
    assert_eq!((s, &r["public_ids"]), (200, &json!(["meta1"])), "{r}");
    let (_, res) = admin(server, "GET", "resources/image/upload/meta1", None).await;
    assert_eq!(res["metadata"], json!({"colour": ["r"], "stock": 7}));
    let (s, e) = signed_call(
        server,
        "image",
        "metadata",
        &[("metadata", "stock=12"), ("public_ids", "meta1")],
    )
    .await;
    assert_eq!(s, 400, "{e}");
    // Listings carry metadata only when asked.
    let (_, list) = admin(server, "GET", "resources/image?metadata=true", None).await;
    assert!(list["resources"][0]["metadata"].is_object());
    let (_, list) = admin(server, "GET", "resources/image", None).await;
    assert!(list["resources"][0].get("metadata").is_none());
    // A deleted field disappears from answers.
    let (s, d) = admin(server, "DELETE", "metadata_fields/stock", Some(json!({}))).await;
    assert_eq!((s, d), (200, json!({"message": "ok"})));
    let (_, res) = admin(server, "GET", "resources/image/upload/meta1", None).await;
    assert_eq!(res["metadata"], json!({"colour": ["r"]}));
    let (s, _) = admin(server, "GET", "metadata_fields/stock", None).await;
    assert_eq!(s, 404);
    let (_, all) = admin(server, "GET", "metadata_fields", None).await;
    assert_eq!(all["metadata_fields"].as_array().unwrap().len(), 1);
}

async fn settings_story(server: &TestServer) {
    // Named transformations.
    let (s, _) = admin(
        server,
        "POST",
        "transformations",
        Some(json!({"name": "thumb", "transformation": "c_fill,h_50,w_50"})),
    )
    .await;
    assert_eq!(s, 200);
    let (s, t) = admin(server, "GET", "transformations?transformation=thumb", None).await;
    assert_eq!(s, 200);
    assert_eq!(
        t["info"],
        json!([{"crop": "fill", "height": 50, "width": 50}])
    );
    assert_eq!(
        (t["named"].clone(), t["used"].clone()),
        (json!(true), json!(false))
    );
    let (s, _) = admin(
        server,
        "PUT",
        "transformations",
        Some(json!({"transformation": "thumb", "unsafe_update": "c_scale,w_60"})),
    )
    .await;
    assert_eq!(s, 200);
    let (_, t) = admin(
        server,
        "GET",
        "transformations?transformation=t_thumb",
        None,
    )
    .await;
    assert_eq!(t["info"], json!([{"crop": "scale", "width": 60}]));
    let (s, e) = admin(
        server,
        "POST",
        "transformations",
        Some(json!({"name": "bad", "transformation": "e_cartoonify"})),
    )
    .await;
    assert_eq!(s, 400, "{e}");
    let (s, _) = admin(
        server,
        "DELETE",
        "transformations",
        Some(json!({"transformation": "thumb"})),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = admin(server, "GET", "transformations?transformation=thumb", None).await;
    assert_eq!(s, 404);

    // Streaming profiles: predefined and custom.
    let (_, list) = admin(server, "GET", "streaming_profiles", None).await;
    let names: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    for n in [
        "4k",
        "full_hd",
        "hd",
        "sd",
        "full_hd_wifi",
        "full_hd_lean",
        "hd_lean",
    ] {
        assert!(names.contains(&n), "{n}");
    }
    let (s, p) = admin(
        server,
        "POST",
        "streaming_profiles",
        Some(json!({"name": "mine", "representations":
            "[{\"transformation\": \"br_2m,c_limit,h_720,w_1280\"}]"})),
    )
    .await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(
        p["data"]["representations"][0]["transformation"],
        json!([{"bit_rate": "2m", "crop": "limit", "height": 720, "width": 1280}])
    );
    let (s, _) = admin(server, "DELETE", "streaming_profiles/mine", Some(json!({}))).await;
    assert_eq!(s, 200);
    let (s, _) = admin(server, "GET", "streaming_profiles/mine", None).await;
    assert_eq!(s, 404);

    // Upload mappings.
    let mapping = json!({"folder": "remote", "template": "http://127.0.0.1:9/images/"});
    let (s, _) = admin(server, "POST", "upload_mappings", Some(mapping.clone())).await;
    assert_eq!(s, 200);
    let (s, _) = admin(server, "POST", "upload_mappings", Some(mapping)).await;
    assert_eq!(s, 409);
    let (_, m) = admin(server, "GET", "upload_mappings?folder=remote", None).await;
    assert_eq!(m["template"], "http://127.0.0.1:9/images/");
    let (s, _) = admin(
        server,
        "PUT",
        "upload_mappings",
        Some(json!({"folder": "remote", "template": "https://example.com/"})),
    )
    .await;
    assert_eq!(s, 200);
    let (_, all) = admin(server, "GET", "upload_mappings", None).await;
    assert_eq!(all["mappings"][0]["template"], "https://example.com/");
    let (s, _) = admin(
        server,
        "DELETE",
        "upload_mappings",
        Some(json!({"folder": "remote"})),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = admin(server, "GET", "upload_mappings?folder=remote", None).await;
    assert_eq!(s, 404);
}

async fn triggers_story(server: &TestServer) {
    let (s, t) = admin(
        server,
        "POST",
        "triggers",
        Some(json!({"uri": "poll://chan", "event_type": "upload", "uri_type": "poll"})),
    )
    .await;
    assert_eq!(s, 200, "{t}");
    let id = t["id"].as_str().unwrap().to_string();
    let (s, e) = admin(
        server,
        "POST",
        "triggers",
        Some(json!({"uri": "ftp://x", "event_type": "upload"})),
    )
    .await;
    assert_eq!(s, 400, "{e}");
    let (s, up) = upload(
        server,
        "image",
        &[("public_id", "polled")],
        &samples::png(3, 3),
        "p.png",
    )
    .await;
    assert_eq!(s, 200, "{up}");
    let client = reqwest::Client::new();
    let poll = |q: &str| {
        client
            .get(server.url(&format!("/v2/notifications/demo/messages?{q}")))
            .basic_auth(KEY, Some(SECRET))
            .send()
    };
    let msgs: Value = poll("channel=chan&wait_seconds=5")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let m = &msgs["messages"][0];
    assert_eq!(m["payload"]["notification_type"], "upload");
    assert_eq!(m["payload"]["public_id"], "polled");
    // The signature is the notification one over the signed payload.
    use base64::Engine;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(m["signed_payload"].as_str().unwrap())
        .unwrap();
    let ts: i64 = m["timestamp"].as_str().unwrap().parse().unwrap();
    let want = nephos::notify::signature(
        std::str::from_utf8(&raw).unwrap(),
        ts,
        SECRET,
        nephos::auth::SignatureAlgorithm::Sha1,
    );
    assert_eq!(m["signature"], want.as_str());
    // Claimed messages are hidden until acknowledged or their visibility ends.
    let again: Value = poll("channel=chan&wait_seconds=0")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["messages"], json!([]));
    let acked: Value = client
        .post(server.url("/v2/notifications/demo/messages/ack"))
        .basic_auth(KEY, Some(SECRET))
        .json(&json!({"receipt_handles": [m["receipt_handle"]]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(acked["results"][0]["status"], "acked");
    let r = poll("wait_seconds=0").await.unwrap();
    assert_eq!(r.status(), 400);
    // An `all` trigger hears renames and deletions too.
    let (_, all) = admin(
        server,
        "POST",
        "triggers",
        Some(json!({"uri": "poll://ops", "event_type": "all", "uri_type": "poll"})),
    )
    .await;
    let (s, _) = signed_call(
        server,
        "image",
        "rename",
        &[("from_public_id", "polled"), ("to_public_id", "moved")],
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = signed_call(server, "image", "destroy", &[("public_id", "moved")]).await;
    assert_eq!(s, 200);
    let ops: Value = poll("channel=ops&wait_seconds=5&max_messages=10")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kinds: Vec<&str> = ops["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["payload"]["notification_type"].as_str())
        .collect();
    assert_eq!(kinds, vec!["rename", "delete"], "{ops}");
    assert_eq!(
        ops["messages"][1]["payload"]["resources"][0]["public_id"],
        "moved"
    );
    let all_id = all["id"].as_str().unwrap();
    admin(
        server,
        "DELETE",
        &format!("triggers/{all_id}"),
        Some(json!({})),
    )
    .await;
    let (s, _) = admin(
        server,
        "PUT",
        &format!("triggers/{id}"),
        Some(json!({"new_uri": "poll://other"})),
    )
    .await;
    assert_eq!(s, 200);
    let (_, list) = admin(server, "GET", "triggers", None).await;
    assert_eq!(list["triggers"][0]["uri"], "poll://other");
    let (s, _) = admin(server, "DELETE", &format!("triggers/{id}"), Some(json!({}))).await;
    assert_eq!(s, 200);
    let (_, list) = admin(server, "GET", "triggers", None).await;
    assert_eq!(list["total"], 0);
}

async fn assets_story(server: &TestServer) {
    let png = samples::png(30, 10);
    // Moderation.
    let (_, up) = upload(
        server,
        "image",
        &[("public_id", "mod1"), ("moderation", "manual")],
        &png,
        "m.png",
    )
    .await;
    assert_eq!(up["moderation"][0]["status"], "pending");
    let (_, pending) = admin(
        server,
        "GET",
        "resources/image/moderations/manual/pending",
        None,
    )
    .await;
    assert_eq!(pending["resources"][0]["public_id"], "mod1");
    let (s, r) = admin(
        server,
        "POST",
        "resources/image/upload/mod1",
        Some(json!({"moderation_status": "approved"})),
    )
    .await;
    assert_eq!(
        (s, &r["moderation"][0]["status"]),
        (200, &json!("approved"))
    );
    let (_, pending) = admin(
        server,
        "GET",
        "resources/image/moderations/manual/pending",
        None,
    )
    .await;
    assert_eq!(pending["resources"], json!([]));
    // Backups: a deleted asset is a placeholder until restored.
    let (_, up) = upload(
        server,
        "image",
        &[("public_id", "kept"), ("backup", "true")],
        &png,
        "k.png",
    )
    .await;
    let bytes = up["bytes"].clone();
    let (s, _) = admin(
        server,
        "DELETE",
        "resources/image/upload",
        Some(json!({"public_ids": ["kept"]})),
    )
    .await;
    assert_eq!(s, 200);
    let (s, r) = admin(server, "GET", "resources/image/upload/kept", None).await;
    assert_eq!(
        (s, &r["placeholder"], &r["bytes"]),
        (200, &json!(true), &json!(0))
    );
    let (_, r) = admin(
        server,
        "POST",
        "resources/image/upload/restore",
        Some(json!({"public_ids": ["kept", "never"]})),
    )
    .await;
    assert_eq!(r["kept"]["bytes"], bytes);
    assert_eq!(r["never"]["error"], "no_backup");
    let (s, got) = get_bytes(up["secure_url"].as_str().unwrap()).await;
    assert_eq!((s, got), (200, png.clone()));
    // With backups, an overwritten version is kept and can be restored.
    let (_, v1) = upload(
        server,
        "image",
        &[("public_id", "ver"), ("backup", "true")],
        &png,
        "v.png",
    )
    .await;
    let bigger = samples::png(60, 20);
    let (_, v2) = upload(
        server,
        "image",
        &[("public_id", "ver"), ("backup", "true")],
        &bigger,
        "v.png",
    )
    .await;
    assert_eq!(v2["overwritten"], true);
    let (_, r) = admin(
        server,
        "GET",
        "resources/image/upload/ver?versions=true",
        None,
    )
    .await;
    let versions = r["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2, "{r}");
    assert_eq!(versions[1]["version_id"], v1["version_id"]);
    assert_eq!(versions[1]["restorable"], true);
    let (_, r) = admin(
        server,
        "POST",
        "resources/image/upload/restore",
        Some(json!({"public_ids": ["ver"], "versions": [v1["version_id"]]})),
    )
    .await;
    assert_eq!(r["ver"]["bytes"], v1["bytes"], "{r}");
    let (_, got) = get_bytes(&server.url("/demo/image/upload/ver.png")).await;
    assert_eq!(got, png);
    let (_, r) = admin(
        server,
        "GET",
        "resources/image/upload/ver?versions=true",
        None,
    )
    .await;
    assert_eq!(r["versions"][1]["version_id"], v2["version_id"], "{r}");
    // Archives of a tag, as stored and through two transformations.
    for id in ["arch1", "arch2"] {
        upload(
            server,
            "image",
            &[("public_id", id), ("tags", "arch")],
            &png,
            "a.png",
        )
        .await;
    }
    let (s, a) = signed_call(server, "image", "generate_archive", &[("tags[]", "arch")]).await;
    assert_eq!(s, 200, "{a}");
    assert_eq!(
        (a["file_count"].clone(), a["resource_type"].clone()),
        (json!(2), json!("raw"))
    );
    let (_, zip) = get_bytes(a["secure_url"].as_str().unwrap()).await;
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip)).unwrap();
    let mut names: Vec<String> = archive
        .file_names()
        .map(|n| n.unwrap().to_string())
        .collect();
    names.sort();
    assert_eq!(names, vec!["arch1.png", "arch2.png"]);
    let mut first = Vec::new();
    archive
        .by_name("arch1.png")
        .unwrap()
        .read_to_end(&mut first)
        .unwrap();
    assert_eq!(first, png);
    let (s, a) = signed_call(
        server,
        "image",
        "generate_archive",
        &[
            ("tags[]", "arch"),
            ("transformations", "w_0.5|w_2.0"),
            ("target_format", "tgz"),
        ],
    )
    .await;
    assert_eq!((s, &a["file_count"]), (200, &json!(4)), "{a}");
    // Download mode: the archive itself, nothing stored.
    let ts = now().to_string();
    let q = signed(
        &[
            ("mode", "download"),
            ("public_ids", "arch1"),
            ("timestamp", &ts),
        ],
        KEY,
        SECRET,
        nephos::auth::SignatureAlgorithm::Sha1,
    );
    let r = reqwest::Client::new()
        .get(server.url("/v1_1/demo/image/generate_archive"))
        .query(&q)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "application/zip");
    assert!(r.bytes().await.unwrap().starts_with(b"PK\x03\x04"));
    let (s, e) = signed_call(
        server,
        "image",
        "generate_archive",
        &[("public_ids[]", "missing")],
    )
    .await;
    assert_eq!(s, 404, "{e}");
    // Generated images: text, sprite, multi.
    let (s, t) = signed_call(
        server,
        "image",
        "text",
        &[
            ("text", "Hello"),
            ("public_id", "hello"),
            ("font_size", "20"),
        ],
    )
    .await;
    assert_eq!(
        (s, &t["type"], &t["format"]),
        (200, &json!("text"), &json!("png")),
        "{t}"
    );
    assert!(t["width"].as_i64().unwrap() > 20 && t["height"].as_i64().unwrap() > 10);
    let (s, sp) = signed_call(
        server,
        "image",
        "sprite",
        &[("tag", "arch"), ("transformation", "w_10")],
    )
    .await;
    assert_eq!(s, 200, "{sp}");
    // w_10 makes each 30×10 image 10×3; they are stacked with a gap.
    assert_eq!(
        sp["image_infos"]["arch1"],
        json!({"x": 0, "y": 0, "width": 10, "height": 3})
    );
    assert_eq!(
        sp["image_infos"]["arch2"]["y"],
        3 + nephos::media::compose::SPRITE_GAP
    );
    let (s, css) = get_bytes(sp["css_url"].as_str().unwrap()).await;
    assert_eq!(s, 200);
    assert!(String::from_utf8(css).unwrap().contains(".arch2 {"));
    let (s, m) = signed_call(
        server,
        "image",
        "multi",
        &[("tag", "arch"), ("transformation", "f_pdf")],
    )
    .await;
    assert_eq!(s, 200, "{m}");
    let (_, pdf) = get_bytes(m["url"].as_str().unwrap()).await;
    assert!(pdf.starts_with(b"%PDF-"));
    // Analyses and eval.
    let (s, up) = upload(
        server,
        "image",
        &[
            ("colors", "true"),
            ("phash", "true"),
            ("eval", "upload_options.tags = ['w' + resource_info.width]; upload_options.quality_analysis = true"),
        ],
        &png,
        "e.png",
    )
    .await;
    assert_eq!(s, 200, "{up}");
    assert_eq!(up["tags"], json!(["w30"]));
    assert!(up["quality_analysis"]["focus"].is_f64());
    assert!(up["colors"][0][1].as_f64().unwrap() > 0.0);
}

async fn story(backend: Backend) {
    let server = TestServer::start_on(&backend).await;
    metadata_story(&server).await;
    settings_story(&server).await;
    triggers_story(&server).await;
    assets_story(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn platform_on_sqlite() {
    story(Backend::Sqlite).await;
}

#[tokio::test]
async fn platform_on_postgres() {
    let Some(admin) = postgres_admin_url() else {
        return;
    };
    story(Backend::Postgres(admin)).await;
}

#[tokio::test]
async fn admin_calls_are_rate_limited_per_hour() {
    let server = TestServer::start_with_limits("admin_rate_limit = 3").await;
    let client = reqwest::Client::new();
    for remaining in [2, 1, 0] {
        let r = client
            .get(server.url("/v1_1/demo/ping"))
            .basic_auth(KEY, Some(SECRET))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-featureratelimit-limit"], "3");
        assert_eq!(
            r.headers()["x-featureratelimit-remaining"],
            remaining.to_string().as_str()
        );
        assert!(httpdate::parse_http_date(
            r.headers()["x-featureratelimit-reset"].to_str().unwrap()
        )
        .is_ok());
    }
    let r = client
        .get(server.url("/v1_1/demo/ping"))
        .basic_auth(KEY, Some(SECRET))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 420);
    assert_eq!(message(&r.json().await.unwrap()), "Rate Limit Exceeded");
    // Uploads are not Admin calls.
    let (s, _) = upload(&server, "image", &[], &samples::png(2, 2), "x.png").await;
    assert_eq!(s, 200);
    server.stop().await;
}

#[tokio::test]
async fn asset_management_on_sqlite() {
    asset_management(Backend::Sqlite).await;
}

#[tokio::test]
async fn asset_management_on_postgres() {
    let Some(admin) = postgres_admin_url() else {
        return;
    };
    asset_management(Backend::Postgres(admin)).await;
}

async fn asset_management(backend: Backend) {
    let server = TestServer::start_on(&backend).await;
    let png = samples::png(30, 10);
    let (_, a) = upload(
        &server,
        "image",
        &[("public_id", "rel/a"), ("asset_folder", "deep/er")],
        &png,
        "a.png",
    )
    .await;
    let (_, b) = upload(&server, "image", &[("public_id", "rel/b")], &png, "b.png").await;
    let (aid, bid) = (
        a["asset_id"].as_str().unwrap(),
        b["asset_id"].as_str().unwrap(),
    );
    // Single-resource details.
    let (_, r) = admin(&server, "GET", "resources/image/upload/rel/a", None).await;
    assert_eq!(r["etag"], a["etag"]);
    assert_eq!(r["pixels"], 300);
    assert_eq!(r["aspect_ratio"], 3.0);
    assert_eq!(r["status"], "active");
    assert_eq!(r["backup_bytes"], 0);
    // Related assets, both ways, by public ID and by asset ID.
    let (s, rel) = admin(
        &server,
        "POST",
        "resources/related_assets/image/upload/rel/a",
        Some(json!({"assets_to_relate": ["image/upload/rel/b", "image/upload/none"]})),
    )
    .await;
    assert_eq!(s, 200, "{rel}");
    assert_eq!(rel["success"][0]["asset"], "image/upload/rel/b");
    assert_eq!(rel["failed"][0]["asset"], "image/upload/none");
    let (_, r) = admin(
        &server,
        "GET",
        "resources/image/upload/rel/b?related=true",
        None,
    )
    .await;
    assert_eq!(r["related_assets"][0]["asset_id"], aid);
    let (_, _) = admin(
        &server,
        "DELETE",
        &format!("resources/related_assets/{bid}"),
        Some(json!({"assets_to_unrelate": [aid]})),
    )
    .await;
    let (_, r) = admin(
        &server,
        "GET",
        "resources/image/upload/rel/a?related=true",
        None,
    )
    .await;
    assert_eq!(r["related_assets"], json!([]));
    // Access mode: an authenticated asset needs a signed URL.
    let (s, u) = admin(
        &server,
        "POST",
        "resources/image/upload/update_access_mode",
        Some(json!({"access_mode": "authenticated", "public_ids": ["rel/b"]})),
    )
    .await;
    assert_eq!(
        (s, &u["updated"][0]["access_mode"]),
        (200, &json!("authenticated"))
    );
    let (s, _) = get_bytes(b["secure_url"].as_str().unwrap()).await;
    assert_eq!(s, 401);
    let (_, r) = admin(&server, "GET", "resources/image/upload/rel/b", None).await;
    let signed_url = r["secure_url"].as_str().unwrap();
    assert!(signed_url.contains("/s--"), "{signed_url}");
    assert_eq!(get_bytes(signed_url).await.0, 200);
    let (_, p) = admin(
        &server,
        "POST",
        "resources/image/publish_resources",
        Some(json!({"public_ids": ["rel/b"]})),
    )
    .await;
    assert_eq!(p["published"][0]["access_mode"], "public");
    assert_eq!(get_bytes(b["secure_url"].as_str().unwrap()).await.0, 200);
    // By asset ID.
    let (s, r) = admin(
        &server,
        "PUT",
        &format!("resources/{aid}"),
        Some(json!({"display_name": "Alpha"})),
    )
    .await;
    assert_eq!((s, &r["display_name"]), (200, &json!("Alpha")));
    let (s, d) = signed_call(&server, "asset", "destroy", &[("asset_id", aid)]).await;
    assert_eq!((s, d), (200, json!({"result": "ok"})));
    // Its folder stays until deleted.
    let (_, f) = admin(&server, "GET", "folders/deep", None).await;
    assert_eq!(f["folders"][0]["path"], "deep/er");
    // Upload mappings fetch a missing asset on first delivery (here from this very server).
    let template = format!("{}/demo/image/upload/", server.base);
    admin(
        &server,
        "POST",
        "upload_mappings",
        Some(json!({"folder": "mirror", "template": template})),
    )
    .await;
    let (s, got) = get_bytes(&server.url("/demo/image/upload/mirror/rel/b.png")).await;
    assert_eq!((s, got), (200, png.clone()));
    let (s, r) = admin(&server, "GET", "resources/image/upload/mirror/rel/b", None).await;
    assert_eq!((s, &r["bytes"]), (200, &json!(png.len())));
    let (s, _) = get_bytes(&server.url("/demo/image/upload/mirror/..%2Fx.png")).await;
    assert!(s == 400 || s == 404, "{s}");
    // Explode: one derived image per frame of an animated GIF.
    let gif = samples::gif(4, 5, 3);
    upload(&server, "image", &[("public_id", "anim")], &gif, "a.gif").await;
    let (s, e) = signed_call(
        &server,
        "image",
        "explode",
        &[("public_id", "anim"), ("transformation", "pg_all")],
    )
    .await;
    assert_eq!((s, &e["status"]), (200, &json!("processing")), "{e}");
    let (_, r) = admin(&server, "GET", "resources/image/upload/anim", None).await;
    assert_eq!(r["derived"].as_array().unwrap().len(), 3, "{r}");
    let (s, frame) = get_bytes(&server.url("/demo/image/upload/pg_2/anim.png")).await;
    assert_eq!(s, 200);
    assert!(frame.starts_with(b"\x89PNG"));
    let (s, _) = get_bytes(&server.url("/demo/image/upload/pg_9/anim.png")).await;
    assert_eq!(s, 400);
    // download_generated_sprite: the signed GET answers the image.
    upload(
        &server,
        "image",
        &[("public_id", "s1"), ("tags", "sp")],
        &png,
        "a.png",
    )
    .await;
    let ts = now().to_string();
    let q = signed(
        &[("mode", "download"), ("tag", "sp"), ("timestamp", &ts)],
        KEY,
        SECRET,
        nephos::auth::SignatureAlgorithm::Sha1,
    );
    let r = reqwest::Client::new()
        .get(server.url("/v1_1/demo/image/sprite"))
        .query(&q)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap().starts_with(b"\x89PNG"));
    server.stop().await;
}
