//! Replays every upload request recorded from the official SDKs (tests/fixtures/sdk-wire):
//! the exact bytes, headers and signatures, with the server clock fixed just after the
//! recording. Each signed capture must be accepted, and a tampered copy (its timestamp
//! changed, the signature kept) must be refused with 401.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine;
use common::{message, Backend, TestServer, DEFAULT_TOML};
use serde_json::Value;
use sha2::{Digest, Sha256};

const FIXTURES: &str = "tests/fixtures/sdk-wire";

struct Capture {
    file: String,
    json: Value,
    body: Vec<u8>,
}

/// The recorders' 12 MiB `large.bin`: chained SHA-256 blocks (see the fixtures' driver).
fn large_bin() -> Vec<u8> {
    const SIZE: usize = 12 * 1024 * 1024;
    let mut out = Vec::with_capacity(SIZE);
    let mut block: Vec<u8> = Sha256::digest(b"cld-wire").to_vec();
    while out.len() < SIZE {
        let d = Sha256::digest(&block[..32]).to_vec();
        let big: Vec<u8> = d.iter().cycle().take(32 * 128).cloned().collect();
        let take = big.len().min(SIZE - out.len());
        out.extend_from_slice(&big[..take]);
        block = big[..32].to_vec();
    }
    out
}

/// Rebuilds a body that was too large to be stored from its skeleton and `large.bin`.
fn rebuild(skeleton: &str, large: &[u8], file_part: &Value) -> Option<Vec<u8>> {
    let start = skeleton.find("<<")?;
    let end = skeleton[start..].find(">>")? + start + 2;
    let len = file_part["length"].as_u64()? as usize;
    let want = file_part["sha256"].as_str()?;
    let data = (0..=large.len().saturating_sub(len))
        .step_by(1024 * 1024)
        .map(|off| &large[off..off + len])
        .find(|slice| hex::encode(Sha256::digest(slice)) == want)?;
    let mut body = skeleton.as_bytes()[..start].to_vec();
    body.extend_from_slice(data);
    body.extend_from_slice(&skeleton.as_bytes()[end..]);
    Some(body)
}

fn load_captures() -> Vec<Capture> {
    let large = large_bin();
    let mut files: Vec<_> = std::fs::read_dir(FIXTURES)
        .expect("fixtures folder")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let json: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let p = json["path"].as_str().unwrap_or("");
        if json["method"] != "POST" || !p.ends_with("/upload") || p.contains("/resources") {
            continue;
        }
        let body = match json["body_b64"].as_str() {
            Some(b) => base64::engine::general_purpose::STANDARD.decode(b).unwrap(),
            None => rebuild(
                json["body_skeleton"].as_str().unwrap(),
                &large,
                &json["file_part"],
            )
            .unwrap_or_else(|| panic!("cannot rebuild the body of {}", path.display())),
        };
        assert_eq!(
            hex::encode(Sha256::digest(&body)),
            json["body_sha256"].as_str().unwrap(),
            "body of {} differs from the recording",
            path.display()
        );
        out.push(Capture {
            file: Path::new(&path)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned(),
            json,
            body,
        });
    }
    out
}

/// The answer nephos gives each capture (200 unless listed), with the reason.
fn expected_status(file: &str) -> (u16, &'static str) {
    let random_bytes_final_part = [
        "upload_large__video_public_id__chunk3of3",
        "upload_large__stream__chunk3of3",
        "upload_large__chunked_stream__chunk3of3",
    ];
    if let Some(f) = random_bytes_final_part.iter().find(|f| file.contains(*f)) {
        let why = if f.contains("video") {
            "large.bin is not a video"
        } else {
            "large.bin is not an image"
        };
        return (400, why);
    }
    let table: &[(&str, u16, &'static str)] = &[(
        "__upload__remote_url",
        404,
        "example.com is not reachable from the test machine",
    )];
    table
        .iter()
        .find(|(needle, _, _)| file.contains(needle))
        .map(|(_, s, why)| (*s, *why))
        .unwrap_or((200, "accepted"))
}

fn headers_of(c: &Capture) -> BTreeMap<String, String> {
    let mut h = BTreeMap::new();
    if let Some(obj) = c.json["headers"].as_object() {
        for (k, v) in obj {
            let lk = k.to_ascii_lowercase();
            if [
                "content-type",
                "content-range",
                "x-unique-upload-id",
                "user-agent",
            ]
            .contains(&lk.as_str())
            {
                h.insert(lk, v.as_str().unwrap_or("").to_string());
            }
        }
    }
    h
}

async fn send(server: &TestServer, c: &Capture, body: Vec<u8>) -> (u16, Value) {
    let mut req = reqwest::Client::new().post(server.url(c.json["path"].as_str().unwrap()));
    for (k, v) in headers_of(c) {
        req = req.header(k, v);
    }
    let resp = req.body(body).send().await.expect("send capture");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Changes the signed timestamp by one second (same length, so the framing stays valid).
fn tamper(c: &Capture) -> Option<Vec<u8>> {
    let ts = c.json["params"]["timestamp"].as_str()?;
    let new_ts = (ts.parse::<i64>().ok()? - 1).to_string();
    let needle = format!("name=\"timestamp\"\r\n\r\n{ts}\r\n");
    let text = c.body.clone();
    let pos = text
        .windows(needle.len())
        .position(|w| w == needle.as_bytes())?;
    let mut out = text[..pos].to_vec();
    out.extend_from_slice(format!("name=\"timestamp\"\r\n\r\n{new_ts}\r\n").as_bytes());
    out.extend_from_slice(&text[pos + needle.len()..]);
    Some(out)
}

#[tokio::test]
async fn every_upload_capture_is_accepted_and_its_tampered_copy_refused() {
    let captures = load_captures();
    assert!(
        captures.len() >= 100,
        "only {} upload captures found",
        captures.len()
    );
    let latest = captures
        .iter()
        .filter_map(|c| c.json["params"]["timestamp"].as_str()?.parse::<i64>().ok())
        .max()
        .unwrap();
    // Some captures come from SDKs configured with signature version 1 (a value with `&`):
    // the account allows it, as a deployment serving those clients would.
    let toml_text = DEFAULT_TOML.replace(
        "cloudinary://1234567890:abcd@demo",
        "cloudinary://1234567890:abcd@demo?signature_version=1",
    );
    let server = TestServer::start_with(Backend::Sqlite, &toml_text, Some(latest + 60)).await;
    // The recorded uploads set the structured metadata field `sku`: it must exist here too.
    let r = reqwest::Client::new()
        .post(server.url("/v1_1/demo/metadata_fields"))
        .basic_auth(common::KEY, Some(common::SECRET))
        .json(&serde_json::json!({"type": "string", "external_id": "sku", "label": "SKU"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut signed = 0;
    for c in &captures {
        let (want, why) = expected_status(&c.file);
        let (status, body) = send(&server, c, c.body.clone()).await;
        assert_eq!(
            status, want,
            "{}: expected {want} ({why}), got {status} {body}",
            c.file
        );
        if c.file
            .ends_with("upload_large__raw_default__chunk3of3.json")
        {
            // The assembled file is the recorders' large.bin.
            let large = large_bin();
            assert_eq!(body["done"], true, "{}: {body}", c.file);
            assert_eq!(body["bytes"].as_u64(), Some(large.len() as u64));
            assert_eq!(body["etag"], hex::encode(md5_ref::Md5::digest(&large)));
            let (s, got) = common::get_bytes(body["secure_url"].as_str().unwrap()).await;
            assert!(s == 200 && got == large, "{}: download differs", c.file);
        }
        if c.file.contains("__upload__colors_phash_image_metadata") {
            // The analyses are computed from the (one red pixel) image.
            assert_eq!(body["colors"][0][1], 100.0, "{}: {body}", c.file);
            assert_eq!(body["predominant"]["google"][0][0], "red");
            assert_eq!(body["phash"].as_str().map(str::len), Some(16));
            assert_eq!(body["image_metadata"]["FileType"], "PNG");
        }
        if want == 200 {
            assert!(body["public_id"].is_string(), "{}: {body}", c.file);
            assert!(body.get("error").is_none(), "{}: {body}", c.file);
        } else {
            assert!(
                !message(&body).is_empty(),
                "{}: no error message: {body}",
                c.file
            );
        }
        if c.json["params"]["signature"].is_string() {
            signed += 1;
            let tampered =
                tamper(c).unwrap_or_else(|| panic!("{}: no timestamp field to tamper", c.file));
            let (status, body) = send(&server, c, tampered).await;
            assert_eq!(status, 401, "{}: tampered copy got {status} {body}", c.file);
            assert!(
                message(&body).starts_with("Invalid Signature "),
                "{}: {body}",
                c.file
            );
        }
    }
    assert!(signed >= 100, "only {signed} signed captures");
    assert_eq!(server.health().await, 200);
    server.stop().await;
}

#[tokio::test]
async fn captures_are_stale_an_hour_later() {
    let captures = load_captures();
    let c = captures
        .iter()
        .find(|c| c.file == "python__upload__basic.json")
        .unwrap();
    let ts: i64 = c.json["params"]["timestamp"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let server = TestServer::start_with(Backend::Sqlite, DEFAULT_TOML, Some(ts + 3601)).await;
    let (status, body) = send(&server, c, c.body.clone()).await;
    assert_eq!(status, 400, "{body}");
    let msg = message(&body);
    assert!(
        msg.starts_with("Stale request - reported time is 2026-11-28 "),
        "{msg}"
    );
    assert!(
        msg.ends_with(" +0000 which is more than 1 hour ago"),
        "{msg}"
    );
    let server2 = TestServer::start_with(Backend::Sqlite, DEFAULT_TOML, Some(ts + 3599)).await;
    assert_eq!(send(&server2, c, c.body.clone()).await.0, 200);
    server.stop().await;
    server2.stop().await;
}
