//! Upload presets applied to a request's parameters.

use serde_json::{Map, Value as Json};

use crate::auth::Caller;
use crate::db::{MetaStore, Preset};
use crate::error::{ApiError, ApiResult};
use crate::form::{Params, Value};

/// Call parameters honoured in an unsigned upload (the documented allow-list and the longer
/// list of newer documentation); every other call parameter is ignored.
const UNSIGNED_ALLOWED: &[&str] = &[
    "public_id",
    "folder",
    "asset_folder",
    "public_id_prefix",
    "display_name",
    "tags",
    "context",
    "metadata",
    "face_coordinates",
    "custom_coordinates",
    "regions",
    "filename_override",
    "callback",
    "upload_preset",
    "timestamp",
    "source",
    "manifest_transformation",
    "manifest_json",
    "template",
    "template_vars",
    "file",
];

/// Settings merged (not overridden) between preset and call in unsigned uploads.
const MERGED: &[&str] = &["tags", "context", "metadata"];
/// Call values that win over the preset in unsigned uploads.
const CALL_WINS: &[&str] = &["public_id", "filename_override"];

/// Escapes a context/metadata value (`=`, `|` and `\` get a backslash).
fn escape_context(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('=', "\\=")
        .replace('|', "\\|")
}

/// A preset setting in the wire form a client would send.
pub fn setting_text(v: &Json) -> Option<String> {
    match v {
        Json::Null => None,
        Json::String(s) => Some(s.clone()),
        Json::Bool(b) => Some(if *b { "1" } else { "0" }.to_string()),
        Json::Number(n) => Some(n.to_string()),
        Json::Array(items) => Some(
            items
                .iter()
                .filter_map(setting_text)
                .collect::<Vec<_>>()
                .join(","),
        ),
        Json::Object(map) => Some(
            map.iter()
                .map(|(k, v)| {
                    format!(
                        "{k}={}",
                        escape_context(&setting_text(v).unwrap_or_default())
                    )
                })
                .collect::<Vec<_>>()
                .join("|"),
        ),
    }
}

fn merge_values(name: &str, preset: &str, call: &str) -> String {
    let sep = if name == "tags" { "," } else { "|" };
    match (preset.is_empty(), call.is_empty()) {
        (true, _) => call.to_string(),
        (_, true) => preset.to_string(),
        _ => format!("{preset}{sep}{call}"),
    }
}

/// Loads the preset named by the request (if any) and returns the effective parameters.
pub async fn apply(
    meta: &dyn MetaStore,
    cloud: &str,
    caller: &Caller,
    params: Params,
) -> ApiResult<(Params, Option<Preset>)> {
    let name = params.nonempty("upload_preset").map(str::to_string);
    let Some(name) = name else {
        return Ok((params, None));
    };
    let preset = meta
        .get_preset(cloud, &name)
        .await?
        .ok_or_else(|| ApiError::bad(format!("Upload preset not found - {name}")))?;
    let settings: &Map<String, Json> = &preset.settings;
    let effective = if caller.is_signed() {
        let mut out = params;
        for (k, v) in settings {
            if out.get(k).is_none() {
                if let Some(t) = setting_text(v) {
                    out.set(k, Value::Text(t));
                }
            }
        }
        out
    } else {
        if !preset.unsigned {
            return Err(ApiError::bad(
                "Upload preset must be whitelisted for unsigned uploads",
            ));
        }
        let mut out = Params::default();
        for name in params.names() {
            if !UNSIGNED_ALLOWED.contains(&name) {
                continue;
            }
            if name == "public_id" && preset.disallow_public_id {
                continue;
            }
            if let Some(v) = params.get(name) {
                out.set(name, v.clone());
            }
        }
        for (k, v) in settings {
            let Some(text) = setting_text(v) else {
                continue;
            };
            if MERGED.contains(&k.as_str()) {
                let call = out.text(k).unwrap_or("").to_string();
                out.set(k, Value::Text(merge_values(k, &text, &call)));
            } else if CALL_WINS.contains(&k.as_str()) && out.get(k).is_some() {
                continue;
            } else {
                out.set(k, Value::Text(text));
            }
        }
        out
    };
    Ok((effective, Some(preset)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn settings_become_wire_text() {
        assert_eq!(setting_text(&json!(["a", "b c"])).unwrap(), "a,b c");
        assert_eq!(setting_text(&json!(true)).unwrap(), "1");
        assert_eq!(
            setting_text(&json!({"alt": "x=y|z", "n": 3})).unwrap(),
            "alt=x\\=y\\|z|n=3"
        );
        assert_eq!(merge_values("tags", "a", "b"), "a,b");
        assert_eq!(merge_values("context", "a=1", ""), "a=1");
    }
}
