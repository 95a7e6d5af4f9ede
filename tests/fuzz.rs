//! Property tests that drive every parser of client input with arbitrary data: none may
//! panic (an error is the answer to garbage). Bounded for CI; `PROPTEST_CASES=100000 cargo
//! test --release --test fuzz` runs a longer search locally.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue};
use nephos::http::extract::{read_form, BodyLimits};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

/// Text made mostly of the characters the parsers care about.
fn syntax(chars: &'static str, max: usize) -> impl Strategy<Value = String> {
    let alphabet: Vec<char> = chars.chars().collect();
    prop::collection::vec(prop::sample::select(alphabet), 0..max)
        .prop_map(|v| v.into_iter().collect())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn transformation_strings(t in prop_oneof![
        syntax("wchgarlxyeqbof_,/:.0123456789-auto_text:arial_pg", 80),
        any::<String>(),
    ]) {
        let _ = nephos::media::transform::parse(&t);
    }

    #[test]
    fn search_expressions(e in prop_oneof![
        syntax("()[]{}:=<>\"-!+ ANDORTtags:ab*1\\\\", 200),
        any::<String>(),
    ]) {
        let _ = nephos::admin::expression::parse(&e);
    }

    #[test]
    fn content_ranges(r in prop_oneof![
        syntax("bytes 0123456789-/*", 60),
        any::<String>(),
    ]) {
        if let Some(c) = nephos::upload::parse_content_range(&r) {
            prop_assert!(c.start <= c.end);
        }
    }

    #[test]
    fn signature_strings(pairs in prop::collection::vec((any::<String>(), any::<String>()), 0..8),
                         version in 1u8..3) {
        let _ = nephos::auth::string_to_sign(&pairs, version);
    }

    #[test]
    fn public_ids_and_pairs(s in prop_oneof![
        syntax("a/./..\\\\%:?#|=[]\"", 60),
        any::<String>(),
    ]) {
        let _ = nephos::upload::naming::clean_path("public_id", &s);
        let _ = nephos::upload::parse_pairs(&s, true);
        let _ = nephos::form::parse_query(Some(&s));
    }

    #[test]
    fn delivery_paths(p in prop_oneof![
        syntax("/demo/image/upload/s--v12_,.pngw_10%2F", 80),
        any::<String>(),
    ]) {
        let _ = nephos::delivery::source_of(&p);
    }

    #[test]
    fn eval_snippets(src in prop_oneof![
        syntax("if(){}[];=+-*/!<>&|'\\\"upload_options.tags resource_info.width 12", 160),
        any::<String>(),
    ]) {
        let info = serde_json::Map::new();
        let _ = nephos::upload::eval::run(&src, &info);
    }

    #[test]
    fn media_probes(bytes in prop::collection::vec(any::<u8>(), 0..2048), prefix in 0usize..7) {
        // Real signatures in front make the probes go deeper.
        let heads: [&[u8]; 7] = [
            b"", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"\x00\x00\x00\x18ftypisom",
            b"\x1a\x45\xdf\xa3", b"%PDF-1.4\n/MediaBox [0 0 1e300 5]", b"RIFF\x00\x00\x00\x00WEBPVP8 ",
        ];
        let mut data = heads[prefix].to_vec();
        data.extend_from_slice(&bytes);
        let _ = nephos::media::probe(std::io::Cursor::new(data));
    }

    #[test]
    fn form_bodies(body in prop::collection::vec(any::<u8>(), 0..1024), kind in 0usize..4) {
        let content_type = [
            "multipart/form-data; boundary=XyZ",
            "application/x-www-form-urlencoded",
            "application/json",
            "multipart/form-data",
        ][kind];
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        let dir = tempfile::tempdir().unwrap();
        let limits = BodyLimits {
            max_file_bytes: 512,
            max_field_bytes: 512,
            max_fields: 16,
            idle: std::time::Duration::from_secs(5),
            budget: None,
            placement: None,
            mirror: None,
            early_check: None,
        };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _ = rt.block_on(read_form(&headers, Some("a=1&b[]=2"), Body::from(body), dir.path(), &limits));
    }
}
