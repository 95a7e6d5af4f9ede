//! The upload answer (spec §10): field order and presence as Cloudinary sends them.

use serde_json::{json, Map, Value as Json};

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

/// Builds the upload response for a stored asset.
pub fn upload_response(
    state: &AppState,
    rec: &AssetRecord,
    signer: &ResponseSigner,
    outcome: Outcome,
) -> Map<String, Json> {
    let raw = rec.key.resource_type == "raw";
    // Room for every field an upload answers with: the map is not regrown on the way.
    let mut m = Map::with_capacity(24 + rec.extra.len());
    m.insert("asset_id".into(), json!(rec.asset_id));
    m.insert("public_id".into(), json!(rec.key.public_id));
    m.insert("version".into(), json!(rec.version));
    m.insert("version_id".into(), json!(rec.version_id));
    m.insert(
        "signature".into(),
        json!(response_signature(
            &rec.key.public_id,
            rec.version,
            &signer.secret,
            signer.algorithm
        )),
    );
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
    let url = delivery::asset_url(&state.public_url, rec, &signer.secret, signer.algorithm);
    m.insert("url".into(), json!(url));
    // `https://` when nephos serves TLS (on the same port), else the same as `url`.
    m.insert("secure_url".into(), json!(state.secure_url(&url)));
    m.insert("asset_folder".into(), json!(rec.asset_folder));
    m.insert("display_name".into(), json!(rec.display_name));
    if !rec.context.is_empty() {
        m.insert("context".into(), json!({ "custom": rec.context }));
    }
    if !rec.metadata.is_empty() {
        m.insert("metadata".into(), Json::Object(rec.metadata.clone()));
    }
    for (k, v) in &rec.extra {
        // Coordinates are reported by the Admin API (`coordinates`), not by uploads.
        // `backup` is a setting of the asset, not part of the answer.
        if k == "face_coordinates" || k == "custom_coordinates" || k == "backup" {
            continue;
        }
        m.insert(k.clone(), v.clone());
    }
    match outcome {
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
    if let Some(k) = &signer.api_key {
        m.insert("api_key".into(), json!(k));
    }
    m
}
