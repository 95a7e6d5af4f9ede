//! `/metrics`: the Prometheus exposition after real traffic, and its bearer token.

mod common;

use common::*;

fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbaImage::from_pixel(w, h, image::Rgba([10, 20, 30, 255]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

async fn scrape(server: &TestServer, token: Option<&str>) -> (u16, String) {
    let mut req = reqwest::Client::new().get(server.url("/metrics"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The value of the one sample line that starts with `series`.
fn value(text: &str, series: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.starts_with(series))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn requests_uploads_renders_and_pools_are_counted() {
    let server = TestServer::start().await;
    for i in 0..3 {
        let (s, j) = upload(
            &server,
            "image",
            &[("public_id", &format!("m/{i}"))],
            &png(20, 10),
            "a.png",
        )
        .await;
        assert_eq!(s, 200, "{j}");
    }
    // A refused upload (no file) and a delivery rendered once, served twice.
    let (s, _) = upload(&server, "image", &[("public_id", "m/x")], b"", "a.png").await;
    assert_eq!(s, 400);
    for _ in 0..2 {
        let (s, _) = get_bytes(&server.url("/demo/image/upload/w_5/m/0.png")).await;
        assert_eq!(s, 200);
    }
    let (s, text) = scrape(&server, None).await;
    assert_eq!(s, 200);
    assert_eq!(
        value(
            &text,
            "nephos_http_requests_total{route=\"upload\",method=\"POST\",status=\"200\"}"
        ),
        3.0
    );
    assert_eq!(
        value(
            &text,
            "nephos_http_requests_total{route=\"upload\",method=\"POST\",status=\"400\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "nephos_http_requests_total{route=\"delivery\",method=\"GET\",status=\"200\"}"
        ),
        2.0
    );
    assert_eq!(
        value(
            &text,
            "nephos_http_request_duration_seconds_count{route=\"upload\"}"
        ),
        4.0
    );
    assert!(value(&text, "nephos_http_request_bytes_total") > 3.0 * 20.0);
    assert!(value(&text, "nephos_http_response_bytes_total") > 0.0);
    assert_eq!(value(&text, "nephos_derived_renders_total"), 1.0);
    assert_eq!(value(&text, "nephos_derived_served_stored_total"), 1.0);
    assert_eq!(value(&text, "nephos_uploads_in_flight"), 0.0);
    assert_eq!(value(&text, "nephos_blob_store_errors_total"), 0.0);
    assert!(text.contains("nephos_db_pool_connections{pool=\"write\",state=\"idle\"}"));
    assert!(text.ends_with("# EOF\n"));
    // Unknown paths share one label: no request adds series.
    for i in 0..5 {
        get_bytes(&server.url(&format!("/v1_1/demo/nonsense{i}/x"))).await;
    }
    let (_, text) = scrape(&server, None).await;
    assert!(!text.contains("nonsense"));
    server.stop().await;
}

#[tokio::test]
async fn a_metrics_token_is_asked_for() {
    let toml_text = format!("metrics_token = \"scrape-secret-1\"\n{DEFAULT_TOML}");
    let server = TestServer::start_with(Backend::Sqlite, &toml_text, None).await;
    let (s, _) = scrape(&server, None).await;
    assert_eq!(s, 401);
    let (s, _) = scrape(&server, Some("wrong-secret")).await;
    assert_eq!(s, 401);
    let (s, text) = scrape(&server, Some("scrape-secret-1")).await;
    assert_eq!(s, 200);
    assert!(text.contains("nephos_http_requests_total"));
    server.stop().await;
}
