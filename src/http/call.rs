//! What each route requires of a request, as extractors. A handler's signature states its
//! rule: [`Admin`] (HTTP Basic credentials of the cloud, Admin API), [`Signed`] (an Upload API
//! signature or Basic credentials), [`UploadCall`] (the upload action: also unsigned presets
//! and chunked parts) or [`Open`] (no credentials: the request carries its own token). Every
//! one reads and parses the form once; rejections are Cloudinary-shaped [`ApiError`]s.

use std::marker::PhantomData;

use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, Uri};
use serde_json::Value as Json;

use super::extract::{read_form, BodyLimits};
use crate::auth::Account;
use crate::error::{ApiError, ApiResult};
use crate::form::{Form, Params};
use crate::kinds::ResourceType;
use crate::state::AppState;
use crate::upload::access::{self, AuthOptions};
use crate::upload::{self, Call};

pub fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The segments of a `/v1_1/<cloud>/…` path after `v1_1` (of `/v2/<module>/<cloud>/…`,
/// after the module).
/// The first segments after `/v1_1/` (or `/v2/<api>/`; empty past the last), and how many
/// segments there are.
fn api_segments(uri: &Uri) -> ([&str; 3], usize) {
    let path = uri.path().trim_start_matches('/');
    let skip = if path.starts_with("v2/") { 2 } else { 1 };
    let mut first = [""; 3];
    let mut count = 0;
    for seg in path.split('/').skip(skip) {
        if let Some(slot) = first.get_mut(count) {
            *slot = seg;
        }
        count += 1;
    }
    (first, count)
}

fn cloud_of(uri: &Uri) -> ApiResult<String> {
    match api_segments(uri).0[0] {
        c if !c.is_empty() => Ok(percent_encoding::percent_decode_str(c)
            .decode_utf8_lossy()
            .into_owned()),
        _ => Err(ApiError::NotFound("Missing cloud name".into())),
    }
}

/// The resource type segment of an Upload API path (`/v1_1/<cloud>/<type>/<action>`);
/// `/v1_1/<cloud>/upload` is `auto`.
fn resource_type_of(uri: &Uri) -> ApiResult<ResourceType> {
    let (segs, count) = api_segments(uri);
    if count == 2 {
        return Ok(ResourceType::Auto);
    }
    let text = segs[1];
    // `asset/<method>` addresses an asset by its asset ID, whatever its type.
    if text == "asset" {
        return Ok(ResourceType::Auto);
    }
    // `all` addresses every resource type: only archives take it.
    let archive = segs[2] == "generate_archive";
    ResourceType::parse(text)
        .filter(|rt| *rt != ResourceType::All || archive)
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "Invalid resource type {text}: must be one of image, video, raw, auto"
            ))
        })
}

pub fn body_limits(state: &AppState) -> BodyLimits {
    BodyLimits {
        max_file_bytes: state.limits.max_upload_bytes,
        max_field_bytes: state.limits.max_field_bytes,
        max_fields: state.limits.max_fields,
        idle: std::time::Duration::from_secs(state.limits.body_timeout_secs.max(1)),
        budget: Some(state.memory.clone()),
        placement: None,
        mirror: None,
        early_check: None,
    }
}

/// Bodies of calls that carry no file (everything but `upload`) are at most this large.
const MAX_CALL_BODY: u64 = 4 * 1024 * 1024;

/// The form of a call that takes no file: a file part is refused, the body is small.
async fn plain_form(
    state: &AppState,
    parts: &axum::http::request::Parts,
    body: axum::body::Body,
) -> ApiResult<Form> {
    let limits = BodyLimits {
        max_file_bytes: 0,
        max_field_bytes: state.limits.max_field_bytes.min(MAX_CALL_BODY),
        max_fields: state.limits.max_fields,
        idle: std::time::Duration::from_secs(state.limits.body_timeout_secs.max(1)),
        budget: Some(state.memory.clone()),
        placement: None,
        mirror: None,
        early_check: None,
    };
    let form = read_form(
        &parts.headers,
        parts.uri.query(),
        body,
        &state.tmp_dir,
        &limits,
    )
    .await?;
    crate::control::observe_params(state, &form.params).await?;
    Ok(form)
}

/// An Admin API call: Basic credentials checked before the body is read, then the form.
pub struct Admin {
    pub account: std::sync::Arc<Account>,
    pub cloud: String,
    pub params: Params,
    /// The body as sent when it was JSON (nested objects intact).
    pub json: Option<Json>,
    /// The request text's room in the shared memory budget, held while the call runs.
    pub budget: Vec<tokio::sync::OwnedSemaphorePermit>,
}

impl FromRequest<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        let cloud = cloud_of(&parts.uri)?;
        let auth = header_text(&parts.headers, header::AUTHORIZATION.as_str());
        let account = crate::admin::authenticate(state, &cloud, auth)?;
        let form = plain_form(state, &parts, body).await?;
        Ok(Admin {
            account,
            cloud,
            params: form.params,
            json: form.json,
            budget: form.budget,
        })
    }
}

/// How an Upload API method beside `upload` may be authenticated.
pub trait AuthRule: Send + Sync + 'static {
    const OPTIONS: AuthOptions;
}

/// A signature over every parameter sent, or Basic credentials.
pub struct Strict;
impl AuthRule for Strict {
    const OPTIONS: AuthOptions = AuthOptions {
        unsigned_preset: false,
        lenient_notification: false,
    };
}

/// As [`Strict`], but a signature that leaves out `notification_url`/`batch_id` is accepted
/// too (the Python SDK signs the tags, context and metadata methods that way).
pub struct Lenient;
impl AuthRule for Lenient {
    const OPTIONS: AuthOptions = AuthOptions {
        unsigned_preset: false,
        lenient_notification: true,
    };
}

/// A signed Upload API call (`/v1_1/<cloud>/<resource_type>/<method>`), authenticated by `R`.
pub struct Signed<R: AuthRule = Strict>(pub Call, pub PhantomData<R>);

impl<R: AuthRule> FromRequest<AppState> for Signed<R> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        let cloud = cloud_of(&parts.uri)?;
        let resource_type = resource_type_of(&parts.uri)?;
        let mut form = plain_form(state, &parts, body).await?;
        // Empty values are not signed: they mean "absent".
        form.params.drop_empty();
        let auth = header_text(&parts.headers, header::AUTHORIZATION.as_str());
        let caller = access::authenticate(state, &cloud, auth, &form.params, R::OPTIONS)?;
        Ok(Signed(
            Call {
                cloud,
                resource_type,
                caller,
                params: form.params,
                json: form.json,
                budget: form.budget,
            },
            PhantomData,
        ))
    }
}

/// The upload action: signed, Basic or an unsigned preset; a part of a chunked upload is
/// written in place while it streams when the fields before it authenticate it.
pub struct UploadCall {
    pub call: Call,
    pub file: Option<crate::form::FilePart>,
    pub content_range: Option<String>,
    pub upload_id: Option<String>,
}

impl FromRequest<AppState> for UploadCall {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        let cloud = cloud_of(&parts.uri)?;
        let resource_type = resource_type_of(&parts.uri)?;
        let headers = &parts.headers;
        let auth = header_text(headers, header::AUTHORIZATION.as_str());
        let content_range = header_text(headers, "content-range").map(str::to_string);
        let upload_id = header_text(headers, "x-unique-upload-id")
            .filter(|v| !v.is_empty())
            .map(str::to_string);
        // What can be refused before the body is read is refused then: an unknown cloud, bad
        // credentials in the header; and, when the file part starts, an unknown key or a stale
        // timestamp among the fields before it.
        let accounts = state.accounts();
        if !accounts.has_cloud(&cloud) {
            return Err(ApiError::Unauthorized(format!(
                "Invalid cloud_name {cloud}"
            )));
        }
        crate::auth::basic_auth(&accounts, &cloud, auth)?;
        crate::auth::bearer_auth(&accounts, &cloud, auth)?;
        drop(accounts);
        let mut limits = body_limits(state);
        limits.early_check = Some(early_check(state, &cloud, auth.is_some()));
        if let Some(range) = content_range
            .as_deref()
            .and_then(upload::parse_content_range)
        {
            if !upload::chunked::is_whole(&range, None) {
                limits.placement = Some(std::sync::Arc::new(upload::chunked::Placement {
                    state: state.clone(),
                    cloud: cloud.clone(),
                    upload_id: upload_id.clone(),
                    authorization: auth.map(str::to_string),
                    range,
                }));
            }
        }
        if limits.placement.is_none() {
            let length = super::content_length(headers);
            limits.mirror = upload::mirror::UploadMirror::for_request(state, &cloud, auth, length)
                .map(|m| std::sync::Arc::new(m) as std::sync::Arc<dyn crate::form::FileMirror>);
        }
        let mut form = read_form(headers, parts.uri.query(), body, &state.tmp_dir, &limits).await?;
        if form.file.as_ref().is_some_and(|f| f.blob.stored.is_some()) {
            state.metrics.upload_streamed();
        }
        crate::control::observe_params(state, &form.params).await?;
        // Empty values are not signed: they mean "absent".
        form.params.drop_empty();
        let options = AuthOptions {
            unsigned_preset: true,
            lenient_notification: false,
        };
        let caller = access::authenticate(state, &cloud, auth, &form.params, options)?;
        Ok(UploadCall {
            call: Call {
                cloud,
                resource_type,
                caller,
                params: form.params,
                json: form.json,
                budget: form.budget,
            },
            file: form.file,
            content_range,
            upload_id,
        })
    }
}

/// The definite refusals among the fields before a file part (a key of another cloud, a
/// stale timestamp): the rest waits for the whole form.
fn early_check(state: &AppState, cloud: &str, has_header: bool) -> super::extract::EarlyCheck {
    let (state, cloud) = (state.clone(), cloud.to_string());
    std::sync::Arc::new(move |params: &Params| {
        if has_header || params.nonempty("signature").is_none() {
            return Ok(());
        }
        if let Some(key) = params.nonempty("api_key") {
            if state.accounts().find(&cloud, key).is_none() {
                return Err(ApiError::Unauthorized(format!("Unknown API key {key}")));
            }
        }
        if let Some(ts) = params
            .nonempty("timestamp")
            .and_then(|t| t.trim().parse::<i64>().ok())
        {
            crate::auth::check_timestamp(ts, state.now(), state.limits.signature_ttl_secs)?;
        }
        Ok(())
    })
}

/// A call without credentials (`delete_by_token`: the token is the credential); the cloud
/// must exist.
pub struct Open {
    pub cloud: String,
    pub params: Params,
}

impl FromRequest<AppState> for Open {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        let cloud = cloud_of(&parts.uri)?;
        if !state.accounts().has_cloud(&cloud) {
            return Err(ApiError::Unauthorized(format!(
                "Invalid cloud_name {cloud}"
            )));
        }
        let form = plain_form(state, &parts, body).await?;
        Ok(Open {
            cloud,
            params: form.params,
        })
    }
}
