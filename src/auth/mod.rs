//! Accounts and request authentication: Upload API signatures (SHA-1/SHA-256, versions 1 and 2),
//! HTTP Basic credentials, and the signatures the server itself produces (response and delivery
//! URL signatures).

pub mod sign;

use base64::Engine;
use chrono::{TimeZone, Utc};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::form::Params;

pub use sign::{
    api_sign, api_sign_matches, delivery_signature, string_to_sign, SignatureAlgorithm,
};

/// One API key of a cloud.
#[derive(Clone, PartialEq, Eq)]
pub struct Account {
    pub cloud: String,
    pub api_key: String,
    pub api_secret: String,
    /// The algorithm the account prefers for signatures the server makes when the request
    /// did not show one (Basic auth, unsigned uploads).
    pub algorithm: SignatureAlgorithm,
    /// Whether signature version 1 is accepted (`?signature_version=1`): it does not escape
    /// `&` in values, so two parameters can be forged from one; off by default.
    pub signature_v1: bool,
}

/// Never prints the secret.
impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("cloud", &self.cloud)
            .field("api_key", &self.api_key)
            .field("api_secret", &"***")
            .field("algorithm", &self.algorithm)
            .field("signature_v1", &self.signature_v1)
            .finish()
    }
}

/// All configured accounts, and the static OAuth bearer tokens of each cloud.
#[derive(Debug, Clone, Default)]
pub struct Accounts {
    accounts: Vec<std::sync::Arc<Account>>,
    /// `(cloud, token)`.
    tokens: Vec<(String, String)>,
}

impl Accounts {
    pub fn new(accounts: Vec<Account>) -> Self {
        Accounts {
            accounts: accounts.into_iter().map(std::sync::Arc::new).collect(),
            tokens: Vec::new(),
        }
    }

    /// Adds the OAuth bearer tokens accepted for each cloud.
    pub fn with_tokens(mut self, tokens: Vec<(String, String)>) -> Self {
        self.tokens = tokens;
        self
    }

    pub fn all(&self) -> &[std::sync::Arc<Account>] {
        &self.accounts
    }

    pub fn has_cloud(&self, cloud: &str) -> bool {
        self.accounts.iter().any(|a| a.cloud == cloud)
    }

    pub fn for_cloud<'a>(
        &'a self,
        cloud: &'a str,
    ) -> impl Iterator<Item = &'a std::sync::Arc<Account>> + 'a {
        self.accounts.iter().filter(move |a| a.cloud == cloud)
    }

    /// The account the server uses for its own signatures when the caller was not identified
    /// by key (unsigned uploads): the first key of the cloud.
    pub fn primary(&self, cloud: &str) -> Option<&std::sync::Arc<Account>> {
        self.accounts.iter().find(|a| a.cloud == cloud)
    }

    pub fn find(&self, cloud: &str, api_key: &str) -> Option<&std::sync::Arc<Account>> {
        self.accounts
            .iter()
            .find(|a| a.cloud == cloud && a.api_key == api_key)
    }

    /// Adds accounts (a cloud created at run time).
    pub fn add(&mut self, accounts: impl IntoIterator<Item = Account>) {
        self.accounts
            .extend(accounts.into_iter().map(std::sync::Arc::new));
    }

    /// Adds OAuth bearer tokens `(cloud, token)` not there yet.
    pub fn add_tokens(&mut self, tokens: &[(String, String)]) {
        for t in tokens {
            if !self.tokens.contains(t) {
                self.tokens.push(t.clone());
            }
        }
    }

    /// Removes every account and token of a cloud; answers whether it had any.
    pub fn remove_cloud(&mut self, cloud: &str) -> bool {
        let before = self.accounts.len();
        self.accounts.retain(|a| a.cloud != cloud);
        self.tokens.retain(|(c, _)| c != cloud);
        before != self.accounts.len()
    }

    /// The configured clouds, each once.
    pub fn clouds(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.accounts.iter().map(|a| a.cloud.as_str()).collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// How a request was authenticated.
#[derive(Debug, Clone)]
pub enum Caller {
    /// Signed parameters or Basic credentials of this account; `algorithm` is the one the
    /// caller used (or the account's preference for Basic auth).
    Key {
        account: std::sync::Arc<Account>,
        algorithm: SignatureAlgorithm,
    },
    /// An unsigned upload through an unsigned upload preset.
    Unsigned { preset: String },
}

impl Caller {
    pub fn api_key(&self) -> Option<&str> {
        match self {
            Caller::Key { account, .. } => Some(&account.api_key),
            Caller::Unsigned { .. } => None,
        }
    }

    pub fn is_signed(&self) -> bool {
        matches!(self, Caller::Key { .. })
    }
}

/// Parameters never part of the string to sign.
const UNSIGNED_PARAMS: &[&str] = &[
    "file",
    "api_key",
    "signature",
    "cloud_name",
    "resource_type",
];
/// Python leaves these out of the signature on the tags/context/metadata endpoints.
const NOTIFICATION_PARAMS: &[&str] = &["notification_url", "batch_id"];

/// Checks an `Authorization: Basic` header against the cloud's accounts.
/// `Ok(None)` when the header is absent or not Basic.
pub fn basic_auth(
    accounts: &Accounts,
    cloud: &str,
    header: Option<&str>,
) -> Result<Option<std::sync::Arc<Account>>, ApiError> {
    let Some(value) = header else { return Ok(None) };
    let Some(encoded) = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))
    else {
        return Ok(None);
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| ApiError::Unauthorized("Invalid credentials".into()))?;
    let (key, secret) = decoded
        .split_once(':')
        .ok_or_else(|| ApiError::Unauthorized("Invalid credentials".into()))?;
    let account = accounts
        .find(cloud, key)
        .ok_or_else(|| ApiError::Unauthorized(format!("Unknown API key {key}")))?;
    if bool::from(secret.as_bytes().ct_eq(account.api_secret.as_bytes())) {
        Ok(Some(account.clone()))
    } else {
        Err(ApiError::Unauthorized("api_secret mismatch".into()))
    }
}

/// Checks an `Authorization: Bearer` header against the cloud's configured OAuth tokens; a
/// valid token acts as the cloud's first account. `Ok(None)` when the header is not Bearer.
pub fn bearer_auth(
    accounts: &Accounts,
    cloud: &str,
    header: Option<&str>,
) -> Result<Option<std::sync::Arc<Account>>, ApiError> {
    let Some(value) = header else { return Ok(None) };
    let Some(token) = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
    else {
        return Ok(None);
    };
    let token = token.trim();
    let valid = accounts
        .tokens
        .iter()
        .filter(|(c, _)| c == cloud)
        .fold(false, |ok, (_, t)| {
            ok | bool::from(t.as_bytes().ct_eq(token.as_bytes()))
        });
    match (valid, accounts.primary(cloud)) {
        (true, Some(account)) => Ok(Some(account.clone())),
        _ => Err(ApiError::Unauthorized("Invalid token".into())),
    }
}

/// Refuses a signed request's timestamp more than `ttl_secs` away from `now`, with
/// Cloudinary's messages.
pub fn check_timestamp(timestamp: i64, now: i64, ttl_secs: i64) -> Result<(), ApiError> {
    if now.saturating_sub(timestamp) > ttl_secs {
        let when = Utc
            .timestamp_opt(timestamp, 0)
            .single()
            .map(|t| t.format("%Y-%m-%d %H:%M:%S +0000").to_string())
            .unwrap_or_else(|| timestamp.to_string());
        return Err(ApiError::bad(format!(
            "Stale request - reported time is {when} which is more than 1 hour ago"
        )));
    }
    if timestamp.saturating_sub(now) > ttl_secs {
        return Err(ApiError::bad(format!(
            "Invalid timestamp - {timestamp} is more than 1 hour in the future"
        )));
    }
    Ok(())
}

/// Verifies a signed request (the `signature`, `api_key` and `timestamp` parameters).
/// `lenient_notification` enables the second attempt without `notification_url`/`batch_id`
/// used by the Python SDK on the tags, context and metadata endpoints.
pub fn verify_signed(
    accounts: &Accounts,
    cloud: &str,
    params: &Params,
    now: i64,
    ttl_secs: i64,
    lenient_notification: bool,
) -> Result<Caller, ApiError> {
    let signature = params.text("signature").unwrap_or_default().trim();
    let api_key = params
        .text("api_key")
        .filter(|k| !k.is_empty())
        .ok_or_else(|| ApiError::missing("api_key"))?;
    let account = accounts
        .find(cloud, api_key)
        .ok_or_else(|| ApiError::Unauthorized(format!("Unknown API key {api_key}")))?;
    let timestamp_text = params
        .text("timestamp")
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::missing("timestamp"))?;
    let algorithm = match signature.len() {
        64 => SignatureAlgorithm::Sha256,
        _ => SignatureAlgorithm::Sha1,
    };
    let pairs = params.signable(UNSIGNED_PARAMS);
    let without_notification: Option<Vec<_>> = (lenient_notification
        && pairs.iter().any(|(k, _)| NOTIFICATION_PARAMS.contains(k)))
    .then(|| {
        pairs
            .iter()
            .filter(|(k, _)| !NOTIFICATION_PARAMS.contains(k))
            .cloned()
            .collect()
    });
    // Compared in lowercase (a hash's hex digits); one longer than a SHA-256 one cannot match.
    let mut lowered = [0u8; 64];
    let wanted: &[u8] = match lowered.get_mut(..signature.len()) {
        Some(room) => {
            room.copy_from_slice(signature.as_bytes());
            room.make_ascii_lowercase();
            room
        }
        None => signature.as_bytes(),
    };
    let mut matched = false;
    // Version 1 only for accounts that allow it; without `&` in a pair the two agree.
    let versions: &[u8] = if account.signature_v1 { &[2, 1] } else { &[2] };
    for candidate in std::iter::once(&pairs).chain(without_notification.as_ref()) {
        let has_amp = candidate
            .iter()
            .any(|(k, v)| k.contains('&') || v.contains('&'));
        for &version in versions {
            if version == 1 && !has_amp {
                continue;
            }
            let sts = string_to_sign(candidate, version);
            if api_sign_matches(&sts, &account.api_secret, algorithm, wanted) {
                matched = true;
            }
        }
    }
    if !matched {
        let sts = string_to_sign(&pairs, 2);
        return Err(ApiError::Unauthorized(format!(
            "Invalid Signature {signature}. String to sign - '{sts}'."
        )));
    }
    let timestamp: i64 = timestamp_text
        .trim()
        .parse()
        .map_err(|_| ApiError::bad(format!("Invalid timestamp - {timestamp_text}")))?;
    check_timestamp(timestamp, now, ttl_secs)?;
    Ok(Caller::Key {
        account: account.clone(),
        algorithm,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accounts() -> Accounts {
        Accounts::new(vec![Account {
            cloud: "demo".into(),
            api_key: "1234567890".into(),
            api_secret: "abcd".into(),
            algorithm: SignatureAlgorithm::Sha1,
            signature_v1: true,
        }])
    }

    fn v2_only() -> Accounts {
        let mut a = accounts();
        std::sync::Arc::make_mut(&mut a.accounts[0]).signature_v1 = false;
        a
    }

    #[test]
    fn version_1_merges_are_refused_unless_the_account_allows_version_1() {
        // Signed over folder=fold, public_id=mergeme, timestamp (three parameters), resent as
        // one parameter whose value carries the rest: the same string to sign under v1.
        let sts = "folder=fold&public_id=mergeme&timestamp=1700000000";
        let sig = api_sign(sts, "abcd", SignatureAlgorithm::Sha1);
        let forged = params(&[
            ("folder", "fold&public_id=mergeme"),
            ("timestamp", "1700000000"),
            ("api_key", "1234567890"),
            ("signature", &sig),
        ]);
        assert!(verify_signed(&v2_only(), "demo", &forged, 1700000010, 3600, false).is_err());
        assert!(verify_signed(&accounts(), "demo", &forged, 1700000010, 3600, false).is_ok());
        // The genuine request verifies either way (no `&` in a value: v1 and v2 agree).
        let genuine = params(&[
            ("folder", "fold"),
            ("public_id", "mergeme"),
            ("timestamp", "1700000000"),
            ("api_key", "1234567890"),
            ("signature", &sig),
        ]);
        assert!(verify_signed(&v2_only(), "demo", &genuine, 1700000010, 3600, false).is_ok());
    }

    #[test]
    fn debug_never_prints_the_secret() {
        let text = format!("{:?}", accounts().all()[0]);
        assert!(!text.contains("abcd"), "{text}");
    }

    fn params(pairs: &[(&str, &str)]) -> Params {
        let mut p = Params::default();
        for (k, v) in pairs {
            p.push(k, v);
        }
        p
    }

    #[test]
    fn accepts_v1_and_v2_and_both_algorithms() {
        let acc = accounts();
        // Vector D of the spec.
        for sig in [
            "2289016683fa3ac288d59d64a484a1de2cfa1eae",
            "0fcf5f5d4ca321b80aba414741d319919ce958db7bb8225d1719a1cbc89565da",
            "9b2102dc791bfbd1cba437620e068a6eee569742",
            "74c9ea40625e9e395e9b92b2f7b98cd7256cfca23942705ad9580176a8345ee5",
        ] {
            let p = params(&[
                ("timestamp", "1700000000"),
                ("public_id", "a&b"),
                ("notification_url", "https://ex.com/cb?x=1&y=2"),
                ("api_key", "1234567890"),
                ("signature", sig),
            ]);
            assert!(
                verify_signed(&acc, "demo", &p, 1700000010, 3600, false).is_ok(),
                "{sig}"
            );
        }
    }

    #[test]
    fn rejects_tampering_stale_and_unknown_keys() {
        let acc = accounts();
        let good = [
            ("timestamp", "1315060510"),
            ("public_id", "sample_image"),
            ("eager", "w_400,h_300,c_pad|w_260,h_200,c_crop"),
            ("api_key", "1234567890"),
            ("signature", "bfd09f95f331f558cbd1320e67aa8d488770583e"),
        ];
        assert!(verify_signed(&acc, "demo", &params(&good), 1315060520, 3600, false).is_ok());
        let mut bad = good;
        bad[1] = ("public_id", "sample_imagf");
        let err = verify_signed(&acc, "demo", &params(&bad), 1315060520, 3600, false).unwrap_err();
        assert!(matches!(err, ApiError::Unauthorized(_)));
        assert!(err.to_string().starts_with("Invalid Signature bfd09f95f331f558cbd1320e67aa8d488770583e. String to sign - 'eager=w_400,h_300,c_pad|w_260,h_200,c_crop&public_id=sample_imagf&timestamp=1315060510'."));
        let err = verify_signed(&acc, "demo", &params(&good), 1315060510 + 3601, 3600, false)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Stale request - reported time is 2011-09-03 14:35:10 +0000 which is more than 1 hour ago"
        );
        let err =
            verify_signed(&acc, "other", &params(&good), 1315060520, 3600, false).unwrap_err();
        assert_eq!(err.to_string(), "Unknown API key 1234567890");
    }

    #[test]
    fn basic_auth_checks_key_and_secret() {
        let acc = accounts();
        let ok = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("1234567890:abcd")
        );
        assert!(basic_auth(&acc, "demo", Some(&ok)).unwrap().is_some());
        let bad = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("1234567890:nope")
        );
        assert!(basic_auth(&acc, "demo", Some(&bad)).is_err());
        assert!(basic_auth(&acc, "other", Some(&ok)).is_err());
        assert!(basic_auth(&acc, "demo", None).unwrap().is_none());
    }
}
