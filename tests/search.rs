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

/// Assets with every kind of value the expression language distinguishes: words and
/// separators in any case, non-ASCII letters, missing and zero sizes, tags of several words,
/// context values, several types and times.
fn catalogue() -> Vec<nephos::db::AssetRecord> {
    use nephos::db::{AssetKey, AssetRecord};
    let public_ids = [
        "shop/Red_Shoe",
        "shop/red-shoe-2",
        "shop/shoes/boot",
        "Shop/hat",
        "café/crème",
        "misc/ÉTÉ_photo",
        "misc/a%b_c",
        "data/report.v2.csv",
        "clips/intro",
        "k\u{212A}elvin",
        "plain",
        "shop",
    ];
    let tag_sets: [&[&str]; 6] = [
        &["sale", "Summer-Sale"],
        &["summer"],
        &[],
        &["ÉTÉ", "winter sale"],
        &["red", "shoe", "sale"],
        &["50%_off"],
    ];
    let mut out = Vec::new();
    for (i, pid) in public_ids.iter().enumerate() {
        let (rt, format) = match i % 4 {
            0 | 1 => ("image", Some(if i % 3 == 0 { "jpg" } else { "PNG" })),
            2 => ("raw", None),
            _ => ("video", Some("mp4")),
        };
        let (width, height) = match i % 5 {
            0 => (Some(1600), Some(900)),
            1 => (Some(100), Some(0)),
            2 => (None, None),
            3 => (Some(300), Some(300)),
            _ => (Some(50), None),
        };
        let context = match i % 3 {
            0 => json!({"alt": "Red shoe on sale", "n": 7}),
            1 => json!({"caption": "ÉTÉ \"quoted\" text"}),
            _ => json!({}),
        };
        out.push(AssetRecord {
            asset_id: format!("{:032x}", i * 7919 + 13),
            key: AssetKey {
                cloud: "demo".into(),
                resource_type: rt.into(),
                delivery_type: if i % 6 == 5 { "private" } else { "upload" }.into(),
                public_id: pid.to_string(),
            },
            version: 1_700_000_000 + i as i64,
            version_id: "v".into(),
            format: format.map(str::to_string),
            width,
            height,
            pages: if i % 2 == 0 { Some(1) } else { None },
            bytes: (i as i64 + 1) * 700 * 1024,
            etag: format!("{:032x}", i),
            // Pairs of assets share a creation time, so ties are broken by asset ID.
            created_at: 1_000_000 - (i as i64 / 2) * 86_400,
            original_filename: None,
            display_name: pid.rsplit('/').next().unwrap_or(pid).to_string(),
            asset_folder: pid
                .rsplit_once('/')
                .map(|(f, _)| f)
                .unwrap_or("")
                .to_string(),
            tags: tag_sets[i % tag_sets.len()]
                .iter()
                .map(|t| t.to_string())
                .collect(),
            context: context.as_object().cloned().unwrap_or_default(),
            metadata: Default::default(),
            extra: Default::default(),
            blob_key: format!("b{i}"),
            api_key: None,
        });
    }
    out
}

const EXPRESSIONS: &[&str] = &[
    "tags:sale",
    "tags:SALE",
    "tags=sale",
    "tags=Summer-Sale",
    "tags:summer",
    "tags:sum*",
    "tags=Sum*",
    "tags:été",
    "tags:50",
    "tags:\"winter sale\"",
    "-tags:sale",
    "NOT (tags:sale OR tags:summer)",
    "resource_type:image",
    "resource_type=IMAGE",
    "type:private",
    "-type:upload",
    "format:png",
    "format=PNG",
    "format:jpg OR format:mp4",
    "folder:shop",
    "folder:SHOP",
    "folder:shop/*",
    "folder=shop",
    "asset_folder:misc",
    "folder:café",
    "public_id:shop/red*",
    "public_id:SHOP/*",
    "public_id=shop/Red_Shoe",
    "public_id:shop/red_shoe",
    "public_id:shoe",
    "public_id:boot",
    "public_id:a%b*",
    "public_id:kelvin",
    "-public_id:shoe",
    "filename:boot",
    "filename=hat",
    "display_name:intro",
    "shoe",
    "red*",
    "été",
    "report",
    "bytes>1mb",
    "bytes<=1400k",
    "bytes:[1m TO 3m]",
    "bytes:{700k TO *]",
    "width>200",
    "-width>200",
    "height:0",
    "width:[* TO *]",
    "pixels>1000000",
    "aspect_ratio:\"16:9\"",
    "aspect_ratio>0.5",
    "-aspect_ratio>0.5",
    "pages:1",
    "version>=1700000005",
    "created_at>3d",
    "created_at<1970-01-12",
    "uploaded_at:[1970-01-05 TO 1970-01-10]",
    "status:active",
    "-status:active",
    "context.alt:shoe",
    "context.alt=\"Red shoe on sale\"",
    "context:caption",
    "context.caption:été",
    "context.n:7",
    "(tags:sale AND bytes>1mb) OR (folder:misc AND -format:png)",
    "resource_type:image AND NOT (width>1000 OR tags:red)",
    "shoe AND -tags:shoe",
];

async fn compiled_filters_select_what_the_expression_matches(backend: Backend) {
    use nephos::admin::{expression, plan};
    use nephos::db::query::{Filter, NumExpr, SearchQuery, SortExpr};
    let direct = DirectStore::open(&backend).await;
    let store = direct.meta.clone();
    let records = catalogue();
    for r in &records {
        store.save_asset(r.clone(), false).await.unwrap();
    }
    let all_tags = store.distinct_tags(100).await.unwrap();
    let now = 1_000_000;
    let (mut matched, mut exact) = (0, 0);
    for expr in EXPRESSIONS {
        let parsed = expression::parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
        let mut want: Vec<String> = records
            .iter()
            .filter(|r| expression::matches(&parsed, *r, now).unwrap())
            .map(|r| r.key.public_id.clone())
            .collect();
        want.sort();
        matched += usize::from(!want.is_empty() && want.len() < records.len());
        for tags in [Some(&all_tags[..]), None] {
            let compiled = plan::Compiler::new(now, tags)
                .compile(&parsed)
                .unwrap_or_else(|e| panic!("{expr}: {e}"));
            let found = store
                .search_assets(&SearchQuery {
                    cloud: "demo".into(),
                    filter: compiled.filter.clone(),
                    sort: vec![(SortExpr::Num(NumExpr::CreatedAt), false)],
                    after: None,
                    limit: 1000,
                })
                .await
                .unwrap_or_else(|e| panic!("{expr}: {e}"));
            let mut got: Vec<String> = found.iter().map(|r| r.key.public_id.clone()).collect();
            got.sort();
            if compiled.exact {
                exact += 1;
                assert_eq!(got, want, "{expr} (exact, tag list {})", tags.is_some());
                let n = store.count_assets("demo", &compiled.filter).await.unwrap();
                assert_eq!(n as usize, want.len(), "{expr}: count");
            } else {
                for w in &want {
                    assert!(got.contains(w), "{expr}: candidates {got:?} miss {w}");
                }
            }
        }
    }
    // The list tells some assets from others, mostly exactly.
    assert!(matched > 50, "{matched}");
    assert!(exact > 80, "{exact}");
    // The terms that can be exact are.
    for expr in [
        "tags:sale AND bytes>1mb",
        "folder:shop/* OR format=PNG",
        "-type:upload",
    ] {
        let parsed = expression::parse(expr).unwrap();
        let compiled = plan::Compiler::new(now, Some(&all_tags))
            .compile(&parsed)
            .unwrap();
        assert!(compiled.exact, "{expr}");
        assert_ne!(compiled.filter, Filter::Const(true));
    }
    // Many tag terms over many tags: the lists given to the database are bounded (later terms
    // select by containment), and the statement runs.
    let many: Vec<String> = (0..900)
        .map(|i| format!("s{i}"))
        .chain(all_tags.clone())
        .collect();
    let expr = vec!["tags:s*"; 40].join(" OR ") + " OR tags:sale";
    let parsed = expression::parse(&expr).unwrap();
    let compiled = plan::Compiler::new(now, Some(&many))
        .compile(&parsed)
        .unwrap();
    assert!(
        !compiled.exact,
        "past the bounds, tag terms select candidates"
    );
    let found = store
        .search_assets(&SearchQuery {
            cloud: "demo".into(),
            filter: compiled.filter,
            sort: vec![(SortExpr::Num(NumExpr::CreatedAt), false)],
            after: None,
            limit: 1000,
        })
        .await
        .unwrap();
    let want = records
        .iter()
        .filter(|r| expression::matches(&parsed, *r, now).unwrap())
        .count();
    assert!(
        found.len() >= want && want > 0,
        "{} candidates for {want} matches",
        found.len()
    );
    drop(store);
    direct.close().await;
}

#[tokio::test]
async fn compiled_filters_on_sqlite() {
    compiled_filters_select_what_the_expression_matches(Backend::Sqlite).await;
}

#[tokio::test]
async fn compiled_filters_on_postgres() {
    let Some(admin) = postgres_admin_url() else {
        return;
    };
    compiled_filters_select_what_the_expression_matches(Backend::Postgres(admin)).await;
}

/// Pages joined in order are the one big page, for exact and checked searches and for orders
/// the database sorts and the one sorted here; an asset added between pages does not shift
/// the next page.
async fn pages_follow_one_order(backend: Backend) {
    let server = TestServer::start_on(&backend).await;
    for i in 0..23 {
        let pid = format!(
            "pg/item_{:02}{}",
            (i * 7) % 23,
            if i % 3 == 0 { "_shoe" } else { "" }
        );
        let tags = if i % 2 == 0 { "even,all" } else { "odd,all" };
        let body = vec![b'x'; 100 + (i % 5) * 10];
        let (s, r) = upload(
            &server,
            "raw",
            &[("public_id", &pid), ("tags", tags)],
            &body,
            "a.txt",
        )
        .await;
        assert_eq!(s, 200, "{r}");
    }
    let search = |body: Value| {
        let server = &server;
        async move {
            let (s, r) = admin(server, "POST", "resources/search", Some(body)).await;
            assert_eq!(s, 200, "{r}");
            r
        }
    };
    for (expr, sort) in [
        ("tags:all", json!([{"created_at": "desc"}])),
        (
            "tags=even",
            json!([{"bytes": "asc"}, {"public_id": "desc"}]),
        ),
        ("shoe OR tags:odd", json!([{"bytes": "desc"}])),
        ("resource_type:raw", json!([{"filename": "asc"}])),
        ("item*", json!([{"public_id": "asc"}])),
    ] {
        let whole = search(json!({"expression": expr, "sort_by": sort, "max_results": 500})).await;
        let want = ids(&whole, "resources", "public_id");
        assert!(want.len() > 5, "{expr}: {whole}");
        assert_eq!(whole["total_count"], want.len(), "{expr}");
        let mut got = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut body = json!({"expression": expr, "sort_by": sort, "max_results": 4});
            if let Some(c) = &cursor {
                body["next_cursor"] = json!(c);
            }
            let page = search(body).await;
            assert_eq!(page["total_count"], want.len(), "{expr}");
            got.extend(ids(&page, "resources", "public_id"));
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        assert_eq!(got, want, "{expr} {sort}");
    }

    // Newest first: a new asset lands before the cursor, and the next page is unchanged.
    let first = search(json!({"expression": "tags:all", "max_results": 5})).await;
    let cursor = first["next_cursor"].as_str().unwrap().to_string();
    let before =
        search(json!({"expression": "tags:all", "max_results": 5, "next_cursor": cursor})).await;
    let (s, _) = upload(
        &server,
        "raw",
        &[("public_id", "pg/late"), ("tags", "all")],
        b"late",
        "l.txt",
    )
    .await;
    assert_eq!(s, 200);
    let after =
        search(json!({"expression": "tags:all", "max_results": 5, "next_cursor": cursor})).await;
    assert_eq!(
        ids(&before, "resources", "public_id"),
        ids(&after, "resources", "public_id")
    );
    assert_eq!(after["total_count"], 24);

    // A cursor of another order is refused.
    let (s, r) = admin(
        &server,
        "POST",
        "resources/search",
        Some(json!({"expression": "tags:all", "sort_by": [{"public_id": "asc"}], "next_cursor": cursor})),
    )
    .await;
    assert_eq!(s, 400, "{r}");

    // Aggregations count every match, however they are found.
    for expr in ["tags:all", "shoe OR tags:all"] {
        let r =
            search(json!({"expression": expr, "aggregate": ["tags", "format"], "max_results": 0}))
                .await;
        assert_eq!(r["aggregations"]["tags"]["all"], 24, "{expr}: {r}");
        assert_eq!(r["aggregations"]["tags"]["even"], 12, "{expr}: {r}");
        assert_eq!(r["resources"], json!([]));
    }
    server.stop().await;
}

#[tokio::test]
async fn pages_on_sqlite() {
    pages_follow_one_order(Backend::Sqlite).await;
}

#[tokio::test]
async fn pages_on_postgres() {
    let Some(admin) = postgres_admin_url() else {
        return;
    };
    pages_follow_one_order(Backend::Postgres(admin)).await;
}
