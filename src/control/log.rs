//! What the control API reports: the requests the server answered (method, path, parameters
//! without secrets, status, error message, duration, request id) and the notifications
//! (webhooks) it sent. Both are bounded rings: the oldest entries go first.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{json, Value as Json};

use crate::form::{Params, Value};

/// Entries each ring keeps.
pub const CAPACITY: usize = 2000;
/// Longest parameter value kept (longer ones are cut and their size noted).
const MAX_VALUE_CHARS: usize = 256;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// What the layers below the HTTP middleware learn about the request being answered.
#[derive(Debug, Default)]
pub struct Capture {
    pub method: String,
    pub path: String,
    pub cloud: Option<String>,
    /// As JSON text ([`redacted`]).
    pub params: Option<String>,
    pub error: Option<String>,
}

pub type SharedCapture = Arc<Mutex<Capture>>;

tokio::task_local! {
    /// The capture of the request being answered (set by the HTTP layer).
    pub static CAPTURE: SharedCapture;
}

/// Notes the request's parameters (secrets masked, long values cut).
pub fn capture_params(params: &Params) {
    let _ = CAPTURE.try_with(|c| lock(c).params = Some(redacted(params)));
}

/// Notes the message of an error answer.
pub fn capture_error(message: &str) {
    let _ = CAPTURE.try_with(|c| lock(c).error = Some(message.to_string()));
}

/// The method, path and cloud of the request being answered, when inside one.
pub fn current() -> Option<(String, String, Option<String>)> {
    CAPTURE
        .try_with(|c| {
            let c = lock(c);
            (c.method.clone(), c.path.clone(), c.cloud.clone())
        })
        .ok()
}

/// A parameter value as shown: whole, or cut to [`MAX_VALUE_CHARS`] with its size noted.
struct Shown<'a>(&'a str);

impl serde::Serialize for Shown<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.char_indices().nth(MAX_VALUE_CHARS) {
            None => s.serialize_str(self.0),
            Some((end, _)) => {
                s.serialize_str(&format!("{}… ({} bytes)", &self.0[..end], self.0.len()))
            }
        }
    }
}

/// Parameters in received order, with what must not be shown masked.
struct Redacted<'a>(&'a Params);

impl serde::Serialize for Redacted<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(None)?;
        for (name, value) in self.0.entries() {
            match (name, value) {
                ("api_secret" | "signature" | "oauth_token" | "token", _) => {
                    map.serialize_entry(name, "***")?
                }
                (_, Value::Text(t)) => map.serialize_entry(name, &Shown(t))?,
                (_, Value::List(items)) => {
                    let shown: Vec<Shown<'_>> = items.iter().map(|i| Shown(i)).collect();
                    map.serialize_entry(name, &shown)?
                }
            }
        }
        map.end()
    }
}

/// Parameters as JSON text (an object), with what must not be shown masked and long values
/// cut: one string per request, made into JSON only when the log is read.
pub fn redacted(params: &Params) -> String {
    serde_json::to_string(&Redacted(params)).unwrap_or_else(|_| "{}".into())
}

/// The cloud a path names: `/v1_1/<cloud>/…`, `/v2/…/<cloud>/…` or a delivery URL's first
/// segment.
pub fn cloud_of(path: &str) -> Option<String> {
    let mut segs = path.trim_start_matches('/').split('/');
    let first = segs.next()?;
    let cloud = match first {
        "v1_1" => segs.next()?,
        "v2" => segs.nth(1)?,
        // The private-CDN form names no cloud.
        "_nephos" | "health" | "image" | "video" | "raw" | "" => return None,
        other => other,
    };
    (!cloud.is_empty()).then(|| cloud.to_string())
}

/// Unix milliseconds as an RFC 3339 time.
fn rfc3339_ms(ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// One answered request.
#[derive(Debug, Clone)]
pub struct RequestEntry {
    pub seq: u64,
    pub at_ms: i64,
    pub request_id: String,
    pub method: String,
    pub path: String,
    pub cloud: Option<String>,
    /// As JSON text ([`redacted`]).
    pub params: Option<String>,
    pub status: u16,
    pub error: Option<String>,
    pub duration_ms: f64,
    /// Sent by the browser console (`X-Nephos-Console: 1`), not by an application.
    pub console: bool,
}

impl RequestEntry {
    pub fn to_json(&self) -> Json {
        json!({
            "seq": self.seq,
            "time": rfc3339_ms(self.at_ms),
            "request_id": self.request_id,
            "method": self.method,
            "path": self.path,
            "cloud": self.cloud,
            "params": self.params.as_deref().and_then(|p| serde_json::from_str::<Json>(p).ok()),
            "status": self.status,
            "error": self.error,
            "duration_ms": (self.duration_ms * 1000.0).round() / 1000.0,
            "console": self.console,
        })
    }
}

/// Which requests a listing wants.
#[derive(Debug, Default)]
pub struct RequestFilter {
    pub cloud: Option<String>,
    pub method: Option<String>,
    pub path_prefix: Option<String>,
    pub status: Option<u16>,
    /// Unix milliseconds.
    pub since_ms: Option<i64>,
    pub limit: usize,
}

#[derive(Default)]
pub struct RequestLog {
    ring: Mutex<(u64, VecDeque<RequestEntry>)>,
}

impl RequestLog {
    pub fn push(&self, mut entry: RequestEntry) {
        let mut ring = lock(&self.ring);
        ring.0 += 1;
        entry.seq = ring.0;
        if ring.1.len() >= CAPACITY {
            ring.1.pop_front();
        }
        ring.1.push_back(entry);
    }

    /// The newest matching entries, oldest first.
    pub fn list(&self, f: &RequestFilter) -> Vec<RequestEntry> {
        let ring = lock(&self.ring);
        let mut out: Vec<RequestEntry> = ring
            .1
            .iter()
            .rev()
            .filter(|e| {
                f.cloud
                    .as_deref()
                    .is_none_or(|c| e.cloud.as_deref() == Some(c))
            })
            .filter(|e| {
                f.method
                    .as_deref()
                    .is_none_or(|m| e.method.eq_ignore_ascii_case(m))
            })
            .filter(|e| {
                f.path_prefix
                    .as_deref()
                    .is_none_or(|p| e.path.starts_with(p))
            })
            .filter(|e| f.status.is_none_or(|s| e.status == s))
            .filter(|e| f.since_ms.is_none_or(|s| e.at_ms >= s))
            .take(f.limit)
            .cloned()
            .collect();
        out.reverse();
        out
    }

    pub fn clear(&self) {
        lock(&self.ring).1.clear();
    }
}

/// One notification (webhook) and what became of it.
#[derive(Debug, Clone)]
pub struct NotificationEntry {
    pub id: u64,
    pub at_ms: i64,
    pub url: String,
    pub cloud: Option<String>,
    pub body: Json,
    /// `(unix ms, outcome)` per attempt: `"200"`, `"503"`, or the connection error.
    pub attempts: Vec<(i64, String)>,
    /// `pending`, `delivered` or `failed`.
    pub outcome: &'static str,
}

#[derive(Default)]
pub struct NotificationLog {
    ring: Mutex<(u64, VecDeque<NotificationEntry>)>,
}

impl NotificationLog {
    /// Records a notification about to be sent; answers its id.
    pub fn start(&self, url: &str, body: &Json) -> u64 {
        let mut ring = lock(&self.ring);
        ring.0 += 1;
        let id = ring.0;
        if ring.1.len() >= CAPACITY {
            ring.1.pop_front();
        }
        let cloud = current().and_then(|(_, _, c)| c);
        ring.1.push_back(NotificationEntry {
            id,
            at_ms: chrono::Utc::now().timestamp_millis(),
            url: url.to_string(),
            cloud,
            body: body.clone(),
            attempts: Vec::new(),
            outcome: "pending",
        });
        id
    }

    /// Records one attempt; `done` gives the final outcome when there is one.
    pub fn attempt(&self, id: u64, outcome: String, done: Option<bool>) {
        let mut ring = lock(&self.ring);
        if let Some(e) = ring.1.iter_mut().find(|e| e.id == id) {
            e.attempts
                .push((chrono::Utc::now().timestamp_millis(), outcome));
            match done {
                Some(true) => e.outcome = "delivered",
                Some(false) => e.outcome = "failed",
                None => {}
            }
        }
    }

    pub fn list(&self, cloud: Option<&str>, limit: usize) -> Vec<Json> {
        let ring = lock(&self.ring);
        let mut out: Vec<Json> = ring
            .1
            .iter()
            .rev()
            .filter(|e| cloud.is_none_or(|c| e.cloud.as_deref() == Some(c)))
            .take(limit)
            .map(|e| {
                json!({
                    "id": e.id,
                    "time": rfc3339_ms(e.at_ms),
                    "url": e.url,
                    "cloud": e.cloud,
                    "body": e.body,
                    "attempts": e.attempts.iter().map(|(at, outcome)| json!({
                        "time": rfc3339_ms(*at),
                        "outcome": outcome,
                    })).collect::<Vec<_>>(),
                    "outcome": e.outcome,
                })
            })
            .collect();
        out.reverse();
        out
    }

    pub fn clear(&self) {
        lock(&self.ring).1.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clouds_of_paths() {
        assert_eq!(cloud_of("/v1_1/demo/image/upload").as_deref(), Some("demo"));
        assert_eq!(
            cloud_of("/v2/notifications/demo/messages").as_deref(),
            Some("demo")
        );
        assert_eq!(
            cloud_of("/demo/image/upload/x.png").as_deref(),
            Some("demo")
        );
        assert_eq!(cloud_of("/_nephos/requests"), None);
        assert_eq!(cloud_of("/health"), None);
    }

    #[test]
    fn secrets_are_masked_and_long_values_cut() {
        let mut p = Params::default();
        p.push("signature", "abc");
        p.push("api_secret", "s");
        p.push("file", &"x".repeat(1000));
        p.push("public_id", "a");
        p.push("tags[]", "é");
        p.push("tags[]", &"é".repeat(300));
        let r: Json = serde_json::from_str(&redacted(&p)).unwrap();
        let names: Vec<&String> = r.as_object().unwrap().keys().collect();
        assert_eq!(
            names,
            ["signature", "api_secret", "file", "public_id", "tags"]
        );
        assert_eq!(r["tags"][0], "é");
        // Cut by characters, not bytes.
        assert_eq!(
            r["tags"][1],
            format!("{}… (600 bytes)", "é".repeat(256)).as_str()
        );
        assert_eq!(r["signature"], "***");
        assert_eq!(r["api_secret"], "***");
        assert_eq!(r["public_id"], "a");
        assert!(r["file"].as_str().unwrap().ends_with("(1000 bytes)"));
    }

    #[test]
    fn ring_is_bounded_and_filtered() {
        let log = RequestLog::default();
        for i in 0..(CAPACITY + 5) {
            log.push(RequestEntry {
                seq: 0,
                at_ms: i as i64,
                request_id: String::new(),
                method: if i % 2 == 0 { "GET" } else { "POST" }.into(),
                path: format!("/v1_1/c{}/image/upload", i % 3),
                cloud: Some(format!("c{}", i % 3)),
                params: None,
                status: 200,
                error: None,
                duration_ms: 0.0,
                console: false,
            });
        }
        let all = log.list(&RequestFilter {
            limit: usize::MAX,
            ..Default::default()
        });
        assert_eq!(all.len(), CAPACITY);
        assert_eq!(all[0].at_ms, 5);
        let some = log.list(&RequestFilter {
            cloud: Some("c1".into()),
            method: Some("post".into()),
            limit: 3,
            ..Default::default()
        });
        assert_eq!(some.len(), 3);
        assert!(some.windows(2).all(|w| w[0].seq < w[1].seq));
        assert!(some
            .iter()
            .all(|e| e.method == "POST" && e.cloud.as_deref() == Some("c1")));
    }
}
