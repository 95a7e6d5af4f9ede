//! Search, lookups by asset ID and asset folder, and folder renames over HTTP, on every
//! metadata backend (the SDK suites cover the same calls on the default one).

mod common;

use common::*;
use nephos::media::samples;
use serde_json::{json, Value};

fn ids(v: &Value, list: &str, key: &str) -> Vec<String> {
    v[list]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| r[key].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

async fn story(backend: Backend) {
    let server = TestServer::start_on(&backend).await;
    let png = samples::png(40, 20);
    let mut asset_ids = Vec::new();
    for (i, folder) in ["shop/shoes", "shop/shoes", "shop/hats", "misc"]
        .iter()
        .enumerate()
    {
        let pid = format!("p{i}");
        let tags = if i % 2 == 0 { "even,all" } else { "odd,all" };
        let (s, body) = upload(
            &server,
            "image",
            &[
                ("public_id", &pid),
                ("asset_folder", folder),
                ("tags", tags),
            ],
            &png,
            "a.png",
        )
        .await;
        assert_eq!(s, 200, "{body}");
        asset_ids.push(body["asset_id"].as_str().unwrap().to_string());
    }

    let (s, r) = admin(
        &server,
        "POST",
        "resources/search",
        Some(json!({
            "expression": "folder:shop/* AND tags=even",
            "sort_by": [{"public_id": "desc"}],
            "with_field": ["tags"],
        })),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(ids(&r, "resources", "public_id"), ["p2", "p0"]);
    assert_eq!(r["total_count"], 2);
    assert_eq!(r["resources"][0]["tags"], json!(["all", "even"]));
    assert_eq!(r["resources"][0]["pixels"], 800);
    assert_eq!(r["resources"][0]["aspect_ratio"], 2.0);

    // Node encodes a path given as one string as one segment.
    let (s, r) = admin(
        &server,
        "POST",
        "resources%2Fsearch",
        Some(json!({"expression": "tags=odd"})),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["total_count"], 2);
    let (s, r) = admin(&server, "GET", "folders/shop%2Fshoes", None).await;
    assert_eq!((s, &r["folders"]), (200, &json!([])));

    let (_, page1) = admin(
        &server,
        "POST",
        "resources/search",
        Some(json!({
        "expression": "tags:all", "max_results": 3, "sort_by": [{"public_id": "asc"}]})),
    )
    .await;
    let cursor = page1["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_string();
    let (_, page2) = admin(&server, "POST", "resources/search", Some(json!({
        "expression": "tags:all", "max_results": 3, "sort_by": [{"public_id": "asc"}], "next_cursor": cursor}))).await;
    assert_eq!(ids(&page1, "resources", "public_id"), ["p0", "p1", "p2"]);
    assert_eq!(ids(&page2, "resources", "public_id"), ["p3"]);
    assert!(page2.get("next_cursor").is_none());

    for (expr, msg) in [
        ("tags:(", "Invalid search expression"),
        ("colour:red", "unknown field colour"),
    ] {
        let (s, r) = admin(
            &server,
            "POST",
            "resources/search",
            Some(json!({"expression": expr})),
        )
        .await;
        assert_eq!(s, 400, "{expr}");
        assert!(message(&r).contains(msg), "{expr}: {r}");
    }
    let (s, r) = admin(
        &server,
        "POST",
        "resources/search",
        Some(json!({"next_cursor": "bogus"})),
    )
    .await;
    assert_eq!(
        (s, message(&r).as_str()),
        (400, "Invalid next_cursor bogus")
    );

    let (s, r) = admin(&server, "GET", &format!("resources/{}", asset_ids[2]), None).await;
    assert_eq!((s, r["public_id"].as_str()), (200, Some("p2")));
    let (s, r) = admin(
        &server,
        "GET",
        "resources/by_asset_folder?asset_folder=shop/shoes",
        None,
    )
    .await;
    assert_eq!(s, 200);
    let mut got = ids(&r, "resources", "public_id");
    got.sort();
    assert_eq!(got, ["p0", "p1"]);

    // Node sends Admin bodies urlencoded.
    let r = reqwest::Client::new()
        .put(server.url(&format!("/v1_1/{CLOUD}/folders/shop")))
        .basic_auth(KEY, Some(SECRET))
        .form(&[("to_folder", "store/2024")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (_, r) = admin(
        &server,
        "GET",
        "resources/by_asset_folder?asset_folder=store/2024/shoes",
        None,
    )
    .await;
    assert_eq!(r["resources"].as_array().map(Vec::len), Some(2));
    let (_, r) = admin(&server, "GET", "folders/store/2024", None).await;
    assert_eq!(
        ids(&r, "folders", "path"),
        ["store/2024/hats", "store/2024/shoes"]
    );
    let (s, _) = admin(&server, "GET", "folders/shop", None).await;
    assert_eq!(s, 404);
    let (_, r) = admin(
        &server,
        "POST",
        "folders/search",
        Some(json!({"expression": "path:store/*"})),
    )
    .await;
    assert_eq!(
        ids(&r, "folders", "path"),
        ["store", "store/2024", "store/2024/hats", "store/2024/shoes"]
    );
    let (s, r) = admin(
        &server,
        "PUT",
        "folders/misc",
        Some(json!({"to_folder": "store"})),
    )
    .await;
    assert_eq!(
        (s, message(&r).as_str()),
        (409, "Folder store already exists")
    );
    // Every asset still downloads from its unchanged URL.
    for i in 0..4 {
        let (s, r) = admin(
            &server,
            "GET",
            &format!("resources/image/upload/p{i}"),
            None,
        )
        .await;
        assert_eq!(s, 200);
        let (status, bytes) = get_bytes(r["secure_url"].as_str().unwrap()).await;
        assert_eq!((status, bytes.len()), (200, png.len()));
    }
    server.stop().await;
}

#[tokio::test]
async fn search_and_folders_on_sqlite() {
    story(Backend::Sqlite).await;
}

#[tokio::test]
async fn search_and_folders_on_postgres() {
    let Some(admin) = postgres_admin_url() else {
        return;
    };
    story(Backend::Postgres(admin)).await;
}
