//! Triggers (Admin API `triggers`): an account-wide subscription of a URI to an event type.
//! A `webhook` trigger gets the notification POSTed (as `notification_url` does); a `poll`
//! trigger (`poll://<channel>`) queues it on a channel that clients read with the v2
//! notifications API (`GET /v2/notifications/<cloud>/messages`, then `…/messages/ack`).
//!
//! Triggers are documents of the metadata store, cached per cloud in this process; poll
//! channels live in memory (bounded), like Cloudinary's short-lived queues.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Map, Value as Json};
use tokio::sync::Notify;

use crate::error::{ApiError, ApiResult};
use crate::form::Params;
use crate::notify::Signer;
use crate::state::AppState;

const KIND: &str = "trigger";
/// Triggers an account may have.
const MAX_TRIGGERS: usize = 100;
/// Messages a channel keeps (the oldest are dropped beyond it).
const MAX_QUEUED: usize = 1000;
/// Event types a trigger may name.
const EVENT_TYPES: &[&str] = &[
    "all",
    "upload",
    "delete",
    "rename",
    "restore",
    "eager",
    "explicit",
    "tags",
    "context",
    "metadata",
    "moderation",
    "resource_display_name_changed",
    "resource_tags_changed",
    "resource_context_changed",
    "resource_metadata_changed",
    "access_control_changed",
    "create_folder",
    "delete_folder",
    "move_or_rename_asset_folder",
    "generate_archive",
    "multi",
    "sprite",
    "explode",
    "text",
];

/// A queued message and when a reader may see it again.
struct Queued {
    handle: String,
    message: Json,
    visible_at: i64,
}

/// How long the triggers of a cloud are cached (another process sharing the database sees a
/// change within this time).
const CACHE_SECS: u64 = 5;

/// Triggers cached per cloud and the poll channels' queues.
#[derive(Default)]
pub struct Hub {
    cache: Mutex<HashMap<String, (std::time::Instant, Vec<Json>)>>,
    queues: Mutex<HashMap<(String, String), VecDeque<Queued>>>,
    arrived: Notify,
}

impl Hub {
    /// Forgets a cloud's cached triggers and queued poll messages (the cloud was reset).
    pub fn forget_cloud(&self, cloud: &str) {
        lock(&self.cache).remove(cloud);
        lock(&self.queues).retain(|(c, _), _| c != cloud);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("Trigger {id} not found"))
}

/// The triggers of a cloud (cached).
async fn of_cloud(state: &AppState, cloud: &str) -> ApiResult<Vec<Json>> {
    if let Some((at, t)) = lock(&state.hub.cache).get(cloud) {
        if at.elapsed() < Duration::from_secs(CACHE_SECS) {
            return Ok(t.clone());
        }
    }
    let list: Vec<Json> = state
        .meta
        .list_docs(cloud, KIND)
        .await?
        .into_iter()
        .map(|d| d.body)
        .collect();
    lock(&state.hub.cache).insert(cloud.to_string(), (std::time::Instant::now(), list.clone()));
    Ok(list)
}

fn forget(state: &AppState, cloud: &str) {
    lock(&state.hub.cache).remove(cloud);
}

fn check_uri(uri_type: &str, uri: &str) -> ApiResult<()> {
    let ok = match uri_type {
        "webhook" => crate::notify::check_url(uri).is_ok(),
        "poll" => uri
            .strip_prefix("poll://")
            .is_some_and(|c| !c.is_empty() && c.len() <= 255 && !c.contains('/')),
        _ => false,
    };
    if !ok {
        return Err(ApiError::bad(format!(
            "Invalid uri {uri} for uri_type {uri_type}"
        )));
    }
    Ok(())
}

pub async fn list(state: &AppState, cloud: &str, params: &Params) -> ApiResult<Json> {
    let event = params.nonempty("event_type");
    let triggers: Vec<Json> = of_cloud(state, cloud)
        .await?
        .into_iter()
        .filter(|t| event.is_none_or(|e| t["event_type"] == json!(e)))
        .collect();
    let total = triggers.len();
    Ok(json!({"triggers": triggers, "total": total}))
}

pub async fn create(state: &AppState, cloud: &str, params: &Params) -> ApiResult<Json> {
    let uri = params.required("uri")?;
    let event = params.required("event_type")?;
    if !EVENT_TYPES.contains(&event) {
        return Err(ApiError::bad(format!("Invalid event_type {event}")));
    }
    let uri_type = params.nonempty("uri_type").unwrap_or("webhook");
    check_uri(uri_type, uri)?;
    if of_cloud(state, cloud).await?.len() >= MAX_TRIGGERS {
        return Err(ApiError::bad(format!(
            "An account has at most {MAX_TRIGGERS} triggers"
        )));
    }
    let id = crate::util::random_hex(32);
    let now = crate::util::iso_time(state.now());
    let trigger = json!({
        "id": id,
        "product_environment_id": cloud,
        "uri_type": uri_type,
        "uri": uri,
        "event_type": event,
        "created_at": now,
        "updated_at": now,
    });
    state
        .meta
        .create_doc(cloud, KIND, &id, &trigger, state.now())
        .await?;
    forget(state, cloud);
    Ok(trigger)
}

pub async fn update(state: &AppState, cloud: &str, id: &str, params: &Params) -> ApiResult<Json> {
    let new_uri = params.required("new_uri")?.to_string();
    let now = crate::util::iso_time(state.now());
    let change = |t: &mut Json| {
        let uri_type = t["uri_type"].as_str().unwrap_or("webhook").to_string();
        check_uri(&uri_type, &new_uri).map_err(|e| e.to_string())?;
        t["uri"] = json!(new_uri);
        t["updated_at"] = json!(now);
        Ok(())
    };
    let out = state.meta.modify_doc(cloud, KIND, id, &change).await?;
    forget(state, cloud);
    match out {
        crate::db::DocOutcome::Changed(_) => Ok(json!({"message": "ok"})),
        crate::db::DocOutcome::Refused(why) => Err(ApiError::bad(why)),
        crate::db::DocOutcome::NotFound => Err(not_found(id)),
    }
}

pub async fn delete(state: &AppState, cloud: &str, id: &str) -> ApiResult<Json> {
    let removed = state.meta.delete_doc(cloud, KIND, id).await?;
    forget(state, cloud);
    if !removed {
        return Err(not_found(id));
    }
    Ok(json!({"message": "ok"}))
}

/// `POST triggers/<id>/test`: whether the trigger exists and would fire (no filters here).
pub async fn test(state: &AppState, cloud: &str, id: &str) -> ApiResult<Json> {
    if state.meta.get_doc(cloud, KIND, id).await?.is_none() {
        return Err(not_found(id));
    }
    Ok(json!({"trigger_id": id, "filter_present": false, "filter_result": true}))
}

/// Whether a trigger is for `event`.
fn listens_to(trigger: &Json, event: &str) -> bool {
    let wanted = trigger["event_type"].as_str().unwrap_or("");
    wanted == event || wanted == "all"
}

/// Whether [`fire`] would notify anyone of `event` in `cloud` (when the triggers cannot be
/// read, yes: `fire` reports that).
pub async fn any_for(state: &AppState, cloud: &str, event: &str) -> bool {
    match of_cloud(state, cloud).await {
        Ok(triggers) => triggers.iter().any(|t| listens_to(t, event)),
        Err(_) => true,
    }
}

/// Sends a notification of `event` to the cloud's triggers for it (or for `all`).
pub async fn fire(state: &AppState, cloud: &str, event: &str, payload: &Json, signer: &Signer) {
    let triggers = match of_cloud(state, cloud).await {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "reading triggers failed");
            return;
        }
    };
    for t in triggers {
        if !listens_to(&t, event) {
            continue;
        }
        let uri = t["uri"].as_str().unwrap_or("");
        match t["uri_type"].as_str() {
            Some("poll") => {
                let channel = uri.trim_start_matches("poll://");
                enqueue(state, cloud, channel, payload, signer);
            }
            _ => {
                if let Ok(url) = crate::notify::check_url(uri) {
                    crate::notify::send(state, cloud, url, payload.clone(), signer.clone()).await;
                }
            }
        }
    }
}

fn enqueue(state: &AppState, cloud: &str, channel: &str, payload: &Json, signer: &Signer) {
    let raw = payload.to_string();
    let timestamp = state.now();
    let mut message = Map::new();
    message.insert("payload".into(), payload.clone());
    if let Some(b) = payload.get("batch_id") {
        message.insert("batch_id".into(), b.clone());
    }
    message.insert(
        "signed_payload".into(),
        json!(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw.as_bytes())),
    );
    message.insert(
        "signature".into(),
        json!(crate::notify::signature(
            &raw,
            timestamp,
            &signer.secret,
            signer.algorithm
        )),
    );
    message.insert("timestamp".into(), json!(timestamp.to_string()));
    {
        let mut queues = lock(&state.hub.queues);
        let q = queues
            .entry((cloud.to_string(), channel.to_string()))
            .or_default();
        if q.len() >= MAX_QUEUED {
            q.pop_front();
        }
        q.push_back(Queued {
            handle: String::new(),
            message: Json::Object(message),
            visible_at: 0,
        });
    }
    state.hub.arrived.notify_waiters();
}

fn bounded(params: &Params, name: &str, default: i64, min: i64, max: i64) -> ApiResult<i64> {
    match params.nonempty(name) {
        None => Ok(default),
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| ApiError::bad(format!("{name} must be from {min} to {max}"))),
    }
}

/// Claims up to `max` visible messages of a channel (hidden for `hide` seconds).
fn claim(state: &AppState, key: &(String, String), max: usize, hide: i64) -> Vec<Json> {
    let now = state.now();
    let mut queues = lock(&state.hub.queues);
    let Some(q) = queues.get_mut(key) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for item in q.iter_mut() {
        if out.len() >= max {
            break;
        }
        if item.visible_at > now {
            continue;
        }
        item.handle = crate::util::random_hex(24);
        item.visible_at = now + hide;
        let mut m = item.message.clone();
        m["receipt_handle"] = json!(item.handle);
        out.push(m);
    }
    out
}

/// `GET /v2/notifications/<cloud>/messages`: long-polls a channel (or a batch's messages).
pub async fn messages(state: &AppState, cloud: &str, params: &Params) -> ApiResult<Json> {
    let channel = match (params.nonempty("channel"), params.nonempty("batch_id")) {
        (Some(c), None) => c.to_string(),
        (None, Some(_)) => {
            return Err(ApiError::bad(
                "Polling by batch_id is not supported by this server: poll a trigger's channel",
            ))
        }
        _ => {
            return Err(ApiError::bad(
                "Exactly one of channel and batch_id is required",
            ))
        }
    };
    let max = bounded(params, "max_messages", 10, 1, 100)? as usize;
    let wait = bounded(params, "wait_seconds", 20, 0, 60)?;
    let hide = bounded(params, "visibility_timeout", 30, 1, 600)?;
    let key = (cloud.to_string(), channel);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait as u64);
    loop {
        let arrived = state.hub.arrived.notified();
        let got = claim(state, &key, max, hide);
        if !got.is_empty() || tokio::time::Instant::now() >= deadline {
            return Ok(json!({ "messages": got }));
        }
        // Woken by a new message, or every second to see hidden ones come back.
        let _ = tokio::time::timeout_at(
            deadline.min(tokio::time::Instant::now() + Duration::from_secs(1)),
            arrived,
        )
        .await;
    }
}

/// `POST /v2/notifications/<cloud>/messages/ack` with `receipt_handles`.
pub async fn ack(state: &AppState, cloud: &str, params: &Params) -> ApiResult<Json> {
    let handles = params.items("receipt_handles");
    if handles.is_empty() || handles.len() > 100 {
        return Err(ApiError::bad("receipt_handles must have 1 to 100 entries"));
    }
    let mut queues = lock(&state.hub.queues);
    let results: Vec<Json> = handles
        .iter()
        .map(|h| {
            let found = queues
                .iter_mut()
                .filter(|((c, _), _)| c == cloud)
                .find_map(|(_, q)| {
                    let pos = q.iter().position(|m| !m.handle.is_empty() && m.handle == *h)?;
                    q.remove(pos)
                });
            json!({"receipt_handle": h, "status": if found.is_some() { "acked" } else { "not_found" }})
        })
        .collect();
    Ok(json!({ "results": results }))
}
