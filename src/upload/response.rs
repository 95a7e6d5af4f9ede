//! The upload answer (spec §10): field order and presence as Cloudinary sends them.

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value as Json};

use super::Outcome;
use crate::auth::sign::response_signature;
use crate::auth::{Caller, SignatureAlgorithm};
use crate::db::AssetRecord;
use crate::delivery;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::util::iso_time;

/// The secret and algorithm of the response `signature` and of signed delivery URLs.
#[derive(Clone)]
pub struct ResponseSigner {
    pub secret: String,
    pub algorithm: SignatureAlgorithm,
    pub api_key: Option<String>,
}

impl ResponseSigner {
    /// The caller's key (and the algorithm it signed with); for unsigned uploads the cloud's
    /// first key with its preferred algorithm.
    pub fn for_caller(state: &AppState, cloud: &str, caller: &Caller) -> ApiResult<ResponseSigner> {
        match caller {
            Caller::Key { account, algorithm } => Ok(ResponseSigner {
                secret: account.api_secret.clone(),
                algorithm: *algorithm,
                api_key: Some(account.api_key.clone()),
            }),
            Caller::Unsigned { .. } => {
                let account =
                    state.accounts().primary(cloud).cloned().ok_or_else(|| {
                        ApiError::Unauthorized(format!("Invalid cloud_name {cloud}"))
                    })?;
                Ok(ResponseSigner {
                    secret: account.api_secret.clone(),
                    algorithm: account.algorithm,
                    api_key: None,
                })
            }
        }
    }
}

/// The upload answer for a stored asset, written field by field in Cloudinary's order when it
/// is serialized (no map of its own is built for it), with fields added after the standard
/// ones (`faces`, `eager`, ...) in the order they were added.
pub struct UploadAnswer {
    rec: AssetRecord,
    signature: String,
    url: String,
    secure_url: Option<String>,
    outcome: Outcome,
    api_key: Option<String>,
    more: Vec<(&'static str, Json)>,
}

impl UploadAnswer {
    /// The answer for `rec`, stored with `outcome`, signed for `signer`.
    pub fn new(
        state: &AppState,
        rec: AssetRecord,
        signer: &ResponseSigner,
        outcome: Outcome,
    ) -> UploadAnswer {
        let signature = response_signature(
            &rec.key.public_id,
            rec.version,
            &signer.secret,
            signer.algorithm,
        );
        let url = delivery::asset_url(&state.public_url, &rec, &signer.secret, signer.algorithm);
        // `https://` when nephos serves TLS (on the same port), else the same as `url`.
        let secure_url = state.secure_base.is_some().then(|| state.secure_url(&url));
        UploadAnswer {
            rec,
            signature,
            url,
            secure_url,
            outcome,
            api_key: signer.api_key.clone(),
            more: Vec::new(),
        }
    }

    /// The stored asset the answer describes.
    pub fn record(&self) -> &AssetRecord {
        &self.rec
    }

    /// Adds a field after the standard ones (in place of one of the same name).
    pub fn insert(&mut self, key: &'static str, value: Json) {
        match self.more.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.more.push((key, value)),
        }
    }

    /// Whether every field has a name of its own: an asset field or an added one named like
    /// a standard field would take its place, which only the map does ([`Self::to_map`]).
    fn names_apart(&self) -> bool {
        let standard = |k: &str| STANDARD.contains(&k);
        !self.rec.extra.keys().any(|k| standard(k))
            && !self
                .more
                .iter()
                .any(|(k, _)| standard(k) || self.rec.extra.contains_key(*k))
    }

    /// The answer as a JSON object: a field named like an earlier one takes its place.
    pub fn to_map(&self) -> Map<String, Json> {
        match serde_json::to_value(Fields(self)) {
            Ok(Json::Object(m)) => m,
            _ => Map::new(),
        }
    }
}

/// The fields of every upload answer, by name.
const STANDARD: &[&str] = &[
    "asset_id",
    "public_id",
    "version",
    "version_id",
    "signature",
    "width",
    "height",
    "format",
    "resource_type",
    "created_at",
    "tags",
    "pages",
    "bytes",
    "type",
    "etag",
    "placeholder",
    "url",
    "secure_url",
    "asset_folder",
    "display_name",
    "context",
    "metadata",
    "existing",
    "overwritten",
    "original_filename",
    "api_key",
];

/// Asset fields not answered: coordinates are reported by the Admin API (`coordinates`),
/// and `backup` is a setting of the asset.
const HIDDEN: &[&str] = &["face_coordinates", "custom_coordinates", "backup"];

impl Serialize for UploadAnswer {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Written out, a name given twice would stand twice: such an answer goes through the
        // map, where the later field takes the earlier one's place.
        if self.names_apart() {
            Fields(self).serialize(s)
        } else {
            self.to_map().serialize(s)
        }
    }
}

/// The fields of an answer in Cloudinary's order (the asset's own, then those added).
struct Fields<'a>(&'a UploadAnswer);

impl Serialize for Fields<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let answer = self.0;
        let rec = &answer.rec;
        let raw = rec.key.resource_type == "raw";
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("asset_id", &rec.asset_id)?;
        m.serialize_entry("public_id", &rec.key.public_id)?;
        m.serialize_entry("version", &rec.version)?;
        m.serialize_entry("version_id", &rec.version_id)?;
        m.serialize_entry("signature", &answer.signature)?;
        if !raw {
            if let Some(w) = rec.width {
                m.serialize_entry("width", &w)?;
            }
            if let Some(h) = rec.height {
                m.serialize_entry("height", &h)?;
            }
            if let Some(f) = &rec.format {
                m.serialize_entry("format", f)?;
            }
        }
        m.serialize_entry("resource_type", &rec.key.resource_type)?;
        m.serialize_entry("created_at", &IsoTime(rec.created_at))?;
        m.serialize_entry("tags", &rec.tags)?;
        if !raw {
            if let Some(p) = rec.pages {
                m.serialize_entry("pages", &p)?;
            }
        }
        m.serialize_entry("bytes", &rec.bytes)?;
        m.serialize_entry("type", &rec.key.delivery_type)?;
        m.serialize_entry("etag", &rec.etag)?;
        m.serialize_entry("placeholder", &false)?;
        m.serialize_entry("url", &answer.url)?;
        m.serialize_entry(
            "secure_url",
            answer.secure_url.as_ref().unwrap_or(&answer.url),
        )?;
        m.serialize_entry("asset_folder", &rec.asset_folder)?;
        m.serialize_entry("display_name", &rec.display_name)?;
        if !rec.context.is_empty() {
            m.serialize_entry("context", &Custom(&rec.context))?;
        }
        if !rec.metadata.is_empty() {
            m.serialize_entry("metadata", &rec.metadata)?;
        }
        for (k, v) in &rec.extra {
            if !HIDDEN.contains(&k.as_str()) {
                m.serialize_entry(k, v)?;
            }
        }
        match answer.outcome {
            Outcome::Existing => m.serialize_entry("existing", &true)?,
            Outcome::Overwritten => m.serialize_entry("overwritten", &true)?,
            Outcome::Created => {}
        }
        if let Some(f) = &rec.original_filename {
            m.serialize_entry("original_filename", f)?;
        }
        if let Some(k) = &answer.api_key {
            m.serialize_entry("api_key", k)?;
        }
        for (k, v) in &answer.more {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// `{"custom": <context>}`.
struct Custom<'a>(&'a Map<String, Json>);

impl Serialize for Custom<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(1))?;
        m.serialize_entry("custom", self.0)?;
        m.end()
    }
}

/// A time as Cloudinary writes it (`iso_time`), without a string of its own.
struct IsoTime(i64);

impl Serialize for IsoTime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&iso_time(self.0))
    }
}

/// Builds the upload response for a stored asset.
pub fn upload_response(
    state: &AppState,
    rec: &AssetRecord,
    signer: &ResponseSigner,
    outcome: Outcome,
) -> Map<String, Json> {
    UploadAnswer::new(state, rec.clone(), signer, outcome).to_map()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::AssetKey;
    use serde_json::json;

    fn record(resource_type: &str, extra: Json) -> AssetRecord {
        let Json::Object(extra) = extra else {
            unreachable!()
        };
        AssetRecord {
            asset_id: "0190aa55bb66cc77dd88ee99ff001122".into(),
            key: AssetKey {
                cloud: "demo".into(),
                resource_type: resource_type.into(),
                delivery_type: "upload".into(),
                public_id: "folder/\"quoted\" name".into(),
            },
            version: 1_700_000_000,
            version_id: "0123456789abcdef0123456789abcdef".into(),
            format: Some("png".into()),
            width: Some(10),
            height: Some(20),
            pages: Some(1),
            bytes: 1234,
            etag: "d41d8cd98f00b204e9800998ecf8427e".into(),
            created_at: 1_700_000_000,
            original_filename: Some("small".into()),
            display_name: "name".into(),
            asset_folder: "folder".into(),
            tags: vec!["a".into(), "b é".into()],
            context: [("alt".to_string(), json!("x=y"))].into_iter().collect(),
            metadata: [("field".to_string(), json!(["v"]))].into_iter().collect(),
            extra,
            blob_key: "demo/ab/abcdef".into(),
            api_key: Some("1234".into()),
        }
    }

    /// The answer's map as the fields were first inserted one by one (a later name taking an
    /// earlier one's place).
    fn reference(a: &UploadAnswer) -> Map<String, Json> {
        let rec = &a.rec;
        let raw = rec.key.resource_type == "raw";
        // Room for every field an upload answers with: the map is not regrown on the way.
        let mut m = Map::with_capacity(24 + rec.extra.len() + a.more.len());
        m.insert("asset_id".into(), json!(rec.asset_id));
        m.insert("public_id".into(), json!(rec.key.public_id));
        m.insert("version".into(), json!(rec.version));
        m.insert("version_id".into(), json!(rec.version_id));
        m.insert("signature".into(), json!(a.signature));
        if !raw {
            if let Some(w) = rec.width {
                m.insert("width".into(), json!(w));
            }
            if let Some(h) = rec.height {
                m.insert("height".into(), json!(h));
            }
            if let Some(f) = &rec.format {
                m.insert("format".into(), json!(f));
            }
        }
        m.insert("resource_type".into(), json!(rec.key.resource_type));
        m.insert("created_at".into(), json!(iso_time(rec.created_at)));
        m.insert("tags".into(), json!(rec.tags));
        if !raw {
            if let Some(p) = rec.pages {
                m.insert("pages".into(), json!(p));
            }
        }
        m.insert("bytes".into(), json!(rec.bytes));
        m.insert("type".into(), json!(rec.key.delivery_type));
        m.insert("etag".into(), json!(rec.etag));
        m.insert("placeholder".into(), json!(false));
        m.insert("url".into(), json!(a.url));
        let secure = a.secure_url.as_ref().unwrap_or(&a.url);
        m.insert("secure_url".into(), json!(secure));
        m.insert("asset_folder".into(), json!(rec.asset_folder));
        m.insert("display_name".into(), json!(rec.display_name));
        if !rec.context.is_empty() {
            m.insert("context".into(), json!({ "custom": rec.context }));
        }
        if !rec.metadata.is_empty() {
            m.insert("metadata".into(), Json::Object(rec.metadata.clone()));
        }
        for (k, v) in &rec.extra {
            if !HIDDEN.contains(&k.as_str()) {
                m.insert(k.clone(), v.clone());
            }
        }
        match a.outcome {
            Outcome::Existing => {
                m.insert("existing".into(), json!(true));
            }
            Outcome::Overwritten => {
                m.insert("overwritten".into(), json!(true));
            }
            Outcome::Created => {}
        }
        if let Some(f) = &rec.original_filename {
            m.insert("original_filename".into(), json!(f));
        }
        if let Some(k) = &a.api_key {
            m.insert("api_key".into(), json!(k));
        }
        for (k, v) in &a.more {
            m.insert(k.to_string(), v.clone());
        }
        m
    }

    fn answer(rec: AssetRecord, outcome: Outcome, secure: bool) -> UploadAnswer {
        UploadAnswer {
            signature: "sig".into(),
            url: "http://127.0.0.1/demo/image/upload/v1/x.png".into(),
            secure_url: secure.then(|| "https://127.0.0.1/demo/image/upload/v1/x.png".into()),
            rec,
            outcome,
            api_key: Some("1234".into()),
            more: Vec::new(),
        }
    }

    /// Written out field by field, or as a map, an answer is the text of the map its fields
    /// make inserted one by one, whatever it holds.
    #[test]
    fn the_answer_written_out_is_its_map() {
        let extras = [
            json!({}),
            json!({"colors": [["#FFFFFF", 90.1]], "backup": true, "access_mode": "public"}),
            // Named like standard fields: the asset's value takes their place.
            json!({"pages": 7, "etag": "other", "existing": false}),
        ];
        for rt in ["image", "raw"] {
            for extra in &extras {
                for outcome in [Outcome::Created, Outcome::Existing, Outcome::Overwritten] {
                    for secure in [false, true] {
                        let mut a = answer(record(rt, extra.clone()), outcome, secure);
                        let same = |a: &UploadAnswer| {
                            let expected = serde_json::to_string(&reference(a)).unwrap();
                            assert_eq!(serde_json::to_string(a).unwrap(), expected);
                            assert_eq!(serde_json::to_string(&a.to_map()).unwrap(), expected);
                        };
                        same(&a);
                        a.insert("faces", json!([[1, 2, 3, 4]]));
                        a.insert("delete_token", json!("t"));
                        a.insert("faces", json!([]));
                        same(&a);
                        // An added field named like an asset field takes its place.
                        a.insert("colors", json!("added"));
                        same(&a);
                    }
                }
            }
        }
        let a = answer(record("image", json!({})), Outcome::Created, false);
        let v: Json = serde_json::to_value(&a).unwrap();
        assert_eq!(v["secure_url"], v["url"]);
        assert_eq!(v["context"], json!({"custom": {"alt": "x=y"}}));
        assert_eq!(v["created_at"], json!("2023-11-14T22:13:20Z"));
        assert!(v.get("backup").is_none());
    }
}
