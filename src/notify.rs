//! Notifications (webhooks): after an operation that named a `notification_url`, nephos POSTs
//! a JSON payload there, signed the way the SDKs' `verify_notification_signature` checks:
//! `X-Cld-Timestamp` (Unix seconds) and `X-Cld-Signature` = `hex(HASH(body + timestamp +
//! api_secret))`, SHA-1 or SHA-256 after the account. Delivery happens in the background
//! after the answer; a failed attempt (no connection, or a status other than 2xx) is
//! retried three times, 1, 2 and 4 seconds apart.

use std::time::Duration;

use serde_json::Value as Json;

use crate::auth::sign::api_sign;
use crate::auth::SignatureAlgorithm;
use crate::error::{ApiError, ApiResult};

/// Attempts after the first one.
const RETRIES: u32 = 3;

/// Checks a `notification_url` parameter before the operation runs.
pub fn check_url(url: &str) -> ApiResult<reqwest::Url> {
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
            // Webhooks may reach loopback and private receivers, never link-local or metadata
            // addresses (names are checked again when they resolve).
            use crate::netpolicy::{check_url as policy, AllowList, Purpose};
            policy(&u, Purpose::Webhook, &AllowList::default())
                .map_err(|why| ApiError::bad(format!("Invalid notification_url {url}: {why}")))?;
            Ok(u)
        }
        _ => Err(ApiError::bad(format!(
            "Invalid notification_url {url}: expected an http(s) URL"
        ))),
    }
}

/// The `X-Cld-Signature` of a body sent at `timestamp`.
pub fn signature(
    body: &str,
    timestamp: i64,
    secret: &str,
    algorithm: SignatureAlgorithm,
) -> String {
    api_sign(&format!("{body}{timestamp}"), secret, algorithm)
}

/// What a notification is signed with.
#[derive(Clone)]
pub struct Signer {
    pub secret: String,
    pub algorithm: SignatureAlgorithm,
}

/// Sends `payload` to `url` in the background, retrying failed attempts.
/// Every notification and its attempts are recorded for the control API.
pub fn send(state: &crate::state::AppState, url: reqwest::Url, payload: Json, signer: Signer) {
    let client = state.webhooks.clone();
    let control = state.control.clone();
    let metrics = state.metrics.clone();
    let id = control.notifications.start(url.as_str(), &payload);
    tokio::spawn(async move {
        let body = payload.to_string();
        let mut wait = Duration::from_secs(1);
        for attempt in 0..=RETRIES {
            // Signed anew each attempt: receivers refuse old timestamps.
            let timestamp = chrono::Utc::now().timestamp();
            let result = client
                .post(url.clone())
                .header("content-type", "application/json")
                .header("x-cld-timestamp", timestamp.to_string())
                .header(
                    "x-cld-signature",
                    signature(&body, timestamp, &signer.secret, signer.algorithm),
                )
                .body(body.clone())
                .send()
                .await;
            let last = attempt == RETRIES;
            match result {
                Ok(r) if r.status().is_success() => {
                    let outcome = r.status().as_u16().to_string();
                    metrics.notification("delivered");
                    control.notifications.attempt(id, outcome, Some(true));
                    return;
                }
                Ok(r) => {
                    let outcome = r.status().as_u16().to_string();
                    metrics.notification("refused");
                    control
                        .notifications
                        .attempt(id, outcome, last.then_some(false));
                    tracing::warn!(%url, status = %r.status(), attempt, "notification refused")
                }
                Err(e) => {
                    metrics.notification("failed");
                    control
                        .notifications
                        .attempt(id, e.to_string(), last.then_some(false));
                    tracing::warn!(%url, error = %e, attempt, "notification not delivered")
                }
            }
            if attempt < RETRIES {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
        }
        tracing::error!(%url, "notification dropped after {} attempts", RETRIES + 1);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectors of spec §14.1.
    #[test]
    fn signature_vectors() {
        let body =
            r#"{"notification_type":"upload","public_id":"sample_image","version":1700000000}"#;
        assert_eq!(
            signature(body, 1700000100, "abcd", SignatureAlgorithm::Sha1),
            "315c1337f76feb32c5788e27f637ba23e0ac5865"
        );
        assert_eq!(
            signature(body, 1700000100, "abcd", SignatureAlgorithm::Sha256),
            "d9e22ab75247ac91aa4c16b7ab548b39c0d987f55d3bc2ba51abf954dc8cdfce"
        );
    }

    #[test]
    fn urls_are_checked() {
        assert!(check_url("http://127.0.0.1:9000/hook").is_ok());
        assert!(check_url("https://example.com/x?y=1").is_ok());
        for bad in ["ftp://example.com/x", "not a url", "http://"] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }
}
