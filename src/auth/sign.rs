//! The signature algorithms shared by the SDKs and the server.

use base64::Engine;
use sha1::{Digest, Sha1};
use sha2::Sha256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureAlgorithm {
    Sha1,
    Sha256,
}

impl SignatureAlgorithm {
    /// Its name in a `CLOUDINARY_URL` (`signature_algorithm=`) and in stored settings.
    pub fn name(self) -> &'static str {
        match self {
            SignatureAlgorithm::Sha1 => "sha1",
            SignatureAlgorithm::Sha256 => "sha256",
        }
    }

    /// The algorithm a name (as [`SignatureAlgorithm::name`] writes it) stands for.
    pub fn from_name(name: &str) -> Option<SignatureAlgorithm> {
        match name {
            "sha1" => Some(SignatureAlgorithm::Sha1),
            "sha256" => Some(SignatureAlgorithm::Sha256),
            _ => None,
        }
    }
}

/// Builds the string to sign from `(name, value)` pairs: empty values dropped, sorted by name,
/// `name=value` joined with `&`; version 2 replaces `&` inside each pair with `%26`.
pub fn string_to_sign<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)], version: u8) -> String {
    let mut items: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(k, v)| (k.as_ref(), v.as_ref()))
        .filter(|(_, v)| !v.is_empty())
        .collect();
    // By name, then (a name given twice) by the pair as written.
    let written = |(k, v): &(&str, &str)| {
        let mut out = String::new();
        push_pair(&mut out, k, v, version);
        out
    };
    items.sort_by(|a, b| a.0.cmp(b.0).then_with(|| written(a).cmp(&written(b))));
    let room = items.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    let mut out = String::with_capacity(room);
    for (i, (k, v)) in items.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        push_pair(&mut out, k, v, version);
    }
    out
}

/// Appends `name=value`, with `&` written `%26` in version 2.
fn push_pair(out: &mut String, name: &str, value: &str, version: u8) {
    for (i, part) in [name, value].into_iter().enumerate() {
        if i > 0 {
            out.push('=');
        }
        if version >= 2 && part.contains('&') {
            out.push_str(&part.replace('&', "%26"));
        } else {
            out.push_str(part);
        }
    }
}

/// `HASH(text + secret)`, the hash every signature is made of.
struct Signed {
    bytes: [u8; 32],
    len: usize,
}

impl Signed {
    fn of(text: &str, secret: &str, algorithm: SignatureAlgorithm) -> Signed {
        let mut bytes = [0u8; 32];
        let len = match algorithm {
            SignatureAlgorithm::Sha1 => {
                let mut h = Sha1::new();
                h.update(text.as_bytes());
                h.update(secret.as_bytes());
                bytes[..20].copy_from_slice(&h.finalize());
                20
            }
            SignatureAlgorithm::Sha256 => {
                let mut h = Sha256::new();
                h.update(text.as_bytes());
                h.update(secret.as_bytes());
                bytes.copy_from_slice(&h.finalize());
                32
            }
        };
        Signed { bytes, len }
    }

    fn hash(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// `hex(HASH(string_to_sign + secret))`.
pub fn api_sign(string_to_sign: &str, secret: &str, algorithm: SignatureAlgorithm) -> String {
    hex::encode(Signed::of(string_to_sign, secret, algorithm).hash())
}

/// Whether `signature` (lowercase hex) is [`api_sign`] of these, compared in constant time.
pub fn api_sign_matches(
    string_to_sign: &str,
    secret: &str,
    algorithm: SignatureAlgorithm,
    signature: &[u8],
) -> bool {
    use subtle::ConstantTimeEq;
    let signed = Signed::of(string_to_sign, secret, algorithm);
    let mut text = [0u8; 64];
    let text = &mut text[..signed.len * 2];
    if hex::encode_to_slice(signed.hash(), text).is_err() {
        return false;
    }
    let text: &[u8] = text;
    bool::from(text.ct_eq(signature))
}

/// The `signature` field of upload responses, which the SDKs' `verify_api_response_signature`
/// recomputes with signature version 1.
pub fn response_signature(
    public_id: &str,
    version: i64,
    secret: &str,
    algorithm: SignatureAlgorithm,
) -> String {
    let sts = format!("public_id={public_id}&version={version}");
    api_sign(&sts, secret, algorithm)
}

/// The `s--XXXXXXXX--` component of a signed delivery URL (without the `s--`/`--`):
/// URL-safe base64 of `HASH(to_sign + secret)`, first 8 characters (32 with `long`, which
/// always uses SHA-256).
pub fn delivery_signature(
    to_sign: &str,
    secret: &str,
    algorithm: SignatureAlgorithm,
    long: bool,
) -> String {
    let (algorithm, len) = if long {
        (SignatureAlgorithm::Sha256, 32)
    } else {
        (algorithm, 8)
    };
    let signed = Signed::of(to_sign, secret, algorithm);
    let encoded = base64::engine::general_purpose::URL_SAFE.encode(signed.hash());
    encoded[..len].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The string to sign as first written: a `name=value` string per pair, `&` replaced in
    /// version 2, sorted by name and then by that string.
    fn reference(pairs: &[(String, String)], version: u8) -> String {
        let mut items: Vec<(&str, String)> = pairs
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| {
                let item = format!("{k}={v}");
                let item = if version >= 2 {
                    item.replace('&', "%26")
                } else {
                    item
                };
                (k.as_str(), item)
            })
            .collect();
        items.sort_by(|a, b| a.0.cmp(b.0).then_with(|| a.1.cmp(&b.1)));
        items
            .into_iter()
            .map(|(_, i)| i)
            .collect::<Vec<_>>()
            .join("&")
    }

    #[test]
    fn strings_to_sign_and_their_check() {
        let sets: Vec<Vec<(&str, &str)>> = vec![
            vec![
                ("timestamp", "1"),
                ("public_id", "a&b"),
                ("eager", "w_1|w_2"),
                ("x", ""),
            ],
            vec![("t", "b&"), ("t", "b%26"), ("t", "a"), ("a&b", "c")],
            vec![],
        ];
        for set in sets {
            let owned: Vec<(String, String)> = set
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            for version in [1, 2] {
                let sts = string_to_sign(&owned, version);
                assert_eq!(sts, reference(&owned, version));
                assert_eq!(sts, string_to_sign(&set, version));
                for algorithm in [SignatureAlgorithm::Sha1, SignatureAlgorithm::Sha256] {
                    let good = api_sign(&sts, "abcd", algorithm);
                    assert!(api_sign_matches(&sts, "abcd", algorithm, good.as_bytes()));
                    assert!(!api_sign_matches(&sts, "abce", algorithm, good.as_bytes()));
                    assert!(!api_sign_matches(
                        &sts,
                        "abcd",
                        algorithm,
                        &good.as_bytes()[1..]
                    ));
                    assert!(!api_sign_matches(&sts, "abcd", algorithm, b""));
                }
            }
        }
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn spec_vectors() {
        let b = pairs(&[
            ("timestamp", "1700000000"),
            ("tags", "animal,dog"),
            ("context", "alt=x\\=y\\|z|caption=hi"),
            ("overwrite", "0"),
            ("unique_filename", "1"),
            ("folder", "my folder"),
        ]);
        let sts = string_to_sign(&b, 2);
        assert_eq!(sts, "context=alt=x\\=y\\|z|caption=hi&folder=my folder&overwrite=0&tags=animal,dog&timestamp=1700000000&unique_filename=1");
        assert_eq!(
            api_sign(&sts, "abcd", SignatureAlgorithm::Sha1),
            "4f52be6b59c29a284c3ac19f47ac6f53c5c20694"
        );
        assert_eq!(
            api_sign(&sts, "abcd", SignatureAlgorithm::Sha256),
            "09d7f5f0f1964cb11f0b72eb98023082c91d4c1cb46505bcd49df645b514fc2c"
        );
        let e = pairs(&[
            ("timestamp", "1700000000"),
            ("public_id", "café/ünï"),
            ("display_name", "Ünïcode ✓"),
        ]);
        assert_eq!(
            api_sign(&string_to_sign(&e, 2), "abcd", SignatureAlgorithm::Sha1),
            "7a36e37037bbc25f53f71cde9c138221cd803536"
        );
        let empty = pairs(&[("timestamp", "1700000000"), ("public_id", "")]);
        assert_eq!(string_to_sign(&empty, 2), "timestamp=1700000000");
    }

    #[test]
    fn response_and_delivery_vectors() {
        assert_eq!(
            response_signature("sample_image", 1700000000, "abcd", SignatureAlgorithm::Sha1),
            "6614869798823529a335b0dea6fa8a9a3908a7d4"
        );
        assert_eq!(
            response_signature("a&b", 1700000000, "abcd", SignatureAlgorithm::Sha1),
            "9a87e32729c508a42aa3e809b0af625fd03a47ae"
        );
        assert_eq!(
            response_signature(
                "sample_image",
                1700000000,
                "abcd",
                SignatureAlgorithm::Sha256
            ),
            "3cd15f7dd2a59022a8de1360586eac9d00b9061cee3e8221c70ccd873de1cfd0"
        );
        let s = |t: &str, k: &str, a, l| delivery_signature(t, k, a, l);
        use SignatureAlgorithm::*;
        assert_eq!(
            s("c_fill,h_100,w_100/sample_image.jpg", "abcd", Sha1, false),
            "kRpsy_1h"
        );
        assert_eq!(s("sample.jpg", "abcd", Sha1, false), "lGdq5NKO");
        assert_eq!(
            s("c_fill,h_100,w_100/sample_image.jpg", "abcd", Sha256, false),
            "DM84wmme"
        );
        assert_eq!(
            s("c_fill,h_100,w_100/sample_image.jpg", "abcd", Sha1, true),
            "DM84wmmeEPRBLy9l6qoDGviN0XtM67Hw"
        );
        assert_eq!(s("image.jpg", "b", Sha1, false), "--SjmNDA");
    }
}
