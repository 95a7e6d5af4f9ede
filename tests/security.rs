//! What a client could forge or reach: signature version 1 merges, empty values, and the
//! fetch policy (issue: nothing a client sends can forge, reach inside, or wear down the
//! server).

mod common;

use common::*;
use nephos::auth::{api_sign, SignatureAlgorithm};
use nephos::media::samples;
use reqwest::multipart::{Form, Part};
use serde_json::Value;

async fn post_form(server: &TestServer, fields: &[(&str, &str)], data: &[u8]) -> (u16, Value) {
    let mut form = Form::new();
    for (k, v) in fields {
        form = form.text(k.to_string(), v.to_string());
    }
    form = form.part("file", Part::bytes(data.to_vec()).file_name("f.png"));
    let r = reqwest::Client::new()
        .post(server.upload_url("image"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn signature_version_1_cannot_merge_parameters() {
    let server = TestServer::start().await;
    let ts = now().to_string();
    // Signed over three parameters; resent as one whose value carries the others.
    let sig = api_sign(
        &format!("folder=fold&public_id=mergeme&timestamp={ts}"),
        SECRET,
        SignatureAlgorithm::Sha1,
    );
    let (s, body) = post_form(
        &server,
        &[
            ("folder", "fold&public_id=mergeme"),
            ("timestamp", &ts),
            ("api_key", KEY),
            ("signature", &sig),
        ],
        &samples::png(2, 2),
    )
    .await;
    assert_eq!(s, 401, "{body}");
    // The genuine request is accepted.
    let (s, body) = post_form(
        &server,
        &[
            ("folder", "fold"),
            ("public_id", "mergeme"),
            ("timestamp", &ts),
            ("api_key", KEY),
            ("signature", &sig),
        ],
        &samples::png(2, 2),
    )
    .await;
    assert_eq!(
        (s, &body["public_id"]),
        (200, &Value::from("fold/mergeme")),
        "{body}"
    );
    server.stop().await;
}

#[tokio::test]
async fn empty_values_added_to_a_signed_upload_mean_absent() {
    let server = TestServer::start().await;
    let png = samples::png(2, 2);
    let (s, _) = upload(&server, "image", &[("public_id", "same")], &png, "a.png").await;
    assert_eq!(s, 200);
    let ts = now().to_string();
    let mut fields = signed(
        &[("public_id", "same"), ("timestamp", &ts)],
        KEY,
        SECRET,
        SignatureAlgorithm::Sha1,
    );
    // Unsigned empty additions: none of them may change what happens.
    for name in ["overwrite", "unique_filename", "asset_folder", "type"] {
        fields.push((name.to_string(), String::new()));
    }
    let refs: Vec<(&str, &str)> = fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let (s, body) = post_form(&server, &refs, &png).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        body["overwritten"], true,
        "overwrite= must not turn overwriting off: {body}"
    );
    assert_eq!(body["type"], "upload");
    assert_eq!(body["asset_folder"], "");
    server.stop().await;
}
