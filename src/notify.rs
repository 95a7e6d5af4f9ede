//! Notifications (webhooks): after an operation that named a `notification_url`, nephos POSTs
//! a JSON payload there, signed the way the SDKs' `verify_notification_signature` checks:
//! `X-Cld-Timestamp` (Unix seconds) and `X-Cld-Signature` = `hex(HASH(body + timestamp +
//! api_secret))`, SHA-1 or SHA-256 after the account.
//!
//! Deliveries are queued in the database before the operation answers, and made in the
//! background by [`deliver_forever`], which every instance runs: an instance takes a
//! delivery by lease, so it is made by one instance at a time, and one left by a stopped
//! process is made by another instance (or by the next start). A failed attempt (no
//! connection, or a status other than 2xx) is tried again three times, 1, 2 and 4 seconds
//! apart.

use std::time::Duration;

use serde_json::Value as Json;

use crate::auth::sign::api_sign;
use crate::auth::SignatureAlgorithm;
use crate::db::NotificationJob;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Attempts after the first one.
const RETRIES: i64 = 3;
/// Deliveries made at once by one instance.
const IN_FLIGHT: usize = 32;

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

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// How long after failed attempt `attempt` (0 for the first) the next one is made: 1, 2, 4 s.
fn retry_delay(attempt: i64) -> Duration {
    Duration::from_secs(1 << attempt.clamp(0, 10))
}

/// Queues `payload` for `url` (a notification about `cloud`, signed by `signer`); it is sent
/// in the background, failed attempts tried again. Every notification and its attempts are
/// recorded for the control API. Should the database refuse it, this process sends it.
pub async fn send(state: &AppState, cloud: &str, url: reqwest::Url, payload: Json, signer: Signer) {
    let record = state.control.notifications.start(url.as_str(), &payload);
    // The secret is not stored: the account that holds it is.
    let api_key = state
        .accounts()
        .for_cloud(cloud)
        .find(|a| a.api_secret == signer.secret)
        .map(|a| a.api_key.clone());
    let job = NotificationJob {
        id: crate::util::random_hex(16),
        cloud: cloud.to_string(),
        url: url.to_string(),
        body: payload.to_string(),
        api_key: api_key.clone().unwrap_or_default(),
        algorithm: signer.algorithm.name().to_string(),
        attempts: 0,
        due_at: now_ms(),
        origin: state.instance.clone(),
        record_id: i64::try_from(record).unwrap_or(0),
        holder: String::new(),
        lease_until: 0,
    };
    let queued = match api_key {
        Some(_) => state
            .meta
            .queue_notification(&job)
            .await
            .map_err(|e| e.to_string()),
        None => Err("no account of the cloud holds its secret".to_string()),
    };
    match queued {
        Ok(()) => state.notifications.notify_one(),
        Err(why) => {
            tracing::warn!(%url, %why, "notification not queued: sent by this process");
            let state = state.clone();
            tokio::spawn(async move {
                for attempt in 0..=RETRIES {
                    let last = attempt == RETRIES;
                    if deliver(&state, &url, &job.body, &signer, record, last).await {
                        return;
                    }
                    if !last {
                        tokio::time::sleep(retry_delay(attempt)).await;
                    }
                }
            });
        }
    }
}

/// One attempt; answers whether it was delivered. Recorded as an attempt of `record`, the
/// last one when `last`.
async fn deliver(
    state: &AppState,
    url: &reqwest::Url,
    body: &str,
    signer: &Signer,
    record: u64,
    last: bool,
) -> bool {
    let (control, metrics) = (&state.control, &state.metrics);
    // Signed anew each attempt: receivers refuse old timestamps.
    let timestamp = chrono::Utc::now().timestamp();
    let result = state
        .webhooks
        .post(url.clone())
        .header("content-type", "application/json")
        .header("x-cld-timestamp", timestamp.to_string())
        .header(
            "x-cld-signature",
            signature(body, timestamp, &signer.secret, signer.algorithm),
        )
        .body(body.to_string())
        .send()
        .await;
    match result {
        Ok(r) if r.status().is_success() => {
            metrics.notification("delivered");
            control
                .notifications
                .attempt(record, r.status().as_u16().to_string(), Some(true));
            true
        }
        Ok(r) => {
            metrics.notification("refused");
            control.notifications.attempt(
                record,
                r.status().as_u16().to_string(),
                last.then_some(false),
            );
            tracing::warn!(%url, status = %r.status(), "notification refused");
            false
        }
        Err(e) => {
            metrics.notification("failed");
            control
                .notifications
                .attempt(record, e.to_string(), last.then_some(false));
            tracing::warn!(%url, error = %e, "notification not delivered");
            false
        }
    }
}

/// Makes one queued delivery's next attempt, then removes it or queues the next one.
async fn attempt_job(
    state: AppState,
    job: NotificationJob,
    turn: tokio::sync::OwnedSemaphorePermit,
) {
    let signer = state
        .accounts()
        .find(&job.cloud, &job.api_key)
        .map(|a| Signer {
            secret: a.api_secret.clone(),
            algorithm: SignatureAlgorithm::from_name(&job.algorithm)
                .unwrap_or(SignatureAlgorithm::Sha1),
        });
    let url = reqwest::Url::parse(&job.url);
    let (Some(signer), Ok(url)) = (signer, url) else {
        tracing::warn!(url = %job.url, cloud = %job.cloud, "notification dropped: its account or URL is gone");
        let _ = state.meta.notification_done(&job).await;
        return;
    };
    // Recorded where it was queued; another instance keeps a record of its own attempts.
    let record = match u64::try_from(job.record_id) {
        Ok(id) if job.origin == state.instance => id,
        _ => {
            let body = serde_json::from_str(&job.body).unwrap_or(Json::Null);
            state.control.notifications.start(url.as_str(), &body)
        }
    };
    let last = job.attempts >= RETRIES;
    let delivered = deliver(&state, &url, &job.body, &signer, record, last).await;
    let outcome = if delivered || last {
        if !delivered {
            tracing::error!(%url, "notification dropped after {} attempts", RETRIES + 1);
        }
        state.meta.notification_done(&job).await
    } else {
        let wait = retry_delay(job.attempts).as_millis() as i64;
        state
            .meta
            .notification_retry(&job, job.attempts + 1, now_ms() + wait)
            .await
    };
    if let Err(e) = outcome {
        // The lease runs out and the delivery is taken again.
        tracing::warn!(error = %e, id = %job.id, "recording a notification attempt failed");
    }
    // The turn is free before the deliverer looks again.
    drop(turn);
    state.notifications.notify_one();
}

/// Takes the deliveries that are due and makes them, at most [`IN_FLIGHT`] at once, for as
/// long as the server runs: woken when this process queues one or finishes an attempt, else
/// at the next due time (on a shared database, at least every second, for what other
/// instances queue). A delivery is held for longer than an attempt can take.
pub async fn deliver_forever(state: AppState) {
    let idle = if state.meta.shared() { 1_000 } else { 60_000 };
    let lease_ms = 60_000i64.max(
        i64::try_from(state.limits.remote_timeout_secs)
            .unwrap_or(i64::MAX / 4_000)
            .saturating_mul(2_000)
            .saturating_add(30_000),
    );
    let turns = std::sync::Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    loop {
        let now = now_ms();
        let free = turns.available_permits();
        let taken = if free == 0 {
            0
        } else {
            let claimed = state
                .meta
                .claim_notifications(&state.instance, now, now + lease_ms, free as i64)
                .await;
            match claimed {
                Ok(jobs) => {
                    let n = jobs.len();
                    for job in jobs {
                        let Ok(turn) = turns.clone().try_acquire_owned() else {
                            break;
                        };
                        tokio::spawn(attempt_job(state.clone(), job, turn));
                    }
                    n
                }
                Err(e) => {
                    tracing::warn!(error = %e, "taking queued notifications failed");
                    0
                }
            }
        };
        // More may be due at once; with no turn free, an attempt's end wakes the loop.
        let wait = if free > 0 && taken == free {
            0
        } else if free == 0 {
            idle
        } else {
            match state.meta.next_notification_due().await {
                Ok(Some(at)) => (at - now_ms()).clamp(50, idle),
                Ok(None) | Err(_) => idle,
            }
        };
        tokio::select! {
            _ = state.notifications.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(wait as u64)) => {}
        }
    }
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
