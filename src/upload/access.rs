//! Who may call an Upload API method: Basic credentials, a signature, or (for uploads) an
//! unsigned upload preset. The checks themselves live in [`crate::auth`].

use crate::auth::{basic_auth, bearer_auth, verify_signed, Caller};
use crate::error::ApiError;
use crate::form::Params;
use crate::state::AppState;

/// What a route accepts besides signed requests and Basic credentials.
#[derive(Debug, Clone, Copy, Default)]
pub struct AuthOptions {
    /// Unsigned requests naming an `upload_preset` (the upload action only).
    pub unsigned_preset: bool,
    /// Retry the signature without `notification_url`/`batch_id` (tags, context, metadata).
    pub lenient_notification: bool,
}

/// Authenticates an Upload API request: Basic credentials, else a signature, else (where
/// allowed) an unsigned upload preset. The preset itself is checked by the caller.
pub fn authenticate(
    state: &AppState,
    cloud: &str,
    authorization: Option<&str>,
    params: &Params,
    opts: AuthOptions,
) -> Result<Caller, ApiError> {
    let accounts = &state.accounts();
    if !accounts.has_cloud(cloud) {
        return Err(ApiError::Unauthorized(format!(
            "Invalid cloud_name {cloud}"
        )));
    }
    if let Some(account) = basic_auth(accounts, cloud, authorization)? {
        let algorithm = account.algorithm;
        return Ok(Caller::Key { account, algorithm });
    }
    if let Some(account) = bearer_auth(accounts, cloud, authorization)? {
        let algorithm = account.algorithm;
        return Ok(Caller::Key { account, algorithm });
    }
    if params.nonempty("signature").is_some() {
        return verify_signed(
            accounts,
            cloud,
            params,
            state.now(),
            state.limits.signature_ttl_secs,
            opts.lenient_notification,
        );
    }
    if opts.unsigned_preset {
        return match params.nonempty("upload_preset") {
            Some(preset) => Ok(Caller::Unsigned {
                preset: preset.to_string(),
            }),
            None => Err(ApiError::bad(
                "Upload preset must be specified when using unsigned upload",
            )),
        };
    }
    Err(ApiError::missing("signature"))
}

/// The caller the fields before a file part authenticate as an uploader (signed, Basic, or an
/// unsigned preset that exists and is unsigned), or `None`. What the fields after the file
/// add is judged once the whole form is read; this only decides whether the file may be
/// written somewhere before then.
pub async fn uploader_before_file(
    state: &AppState,
    cloud: &str,
    authorization: Option<&str>,
    params: &Params,
) -> Option<Caller> {
    let opts = AuthOptions {
        unsigned_preset: true,
        lenient_notification: false,
    };
    let caller = authenticate(state, cloud, authorization, params, opts).ok()?;
    if let Caller::Unsigned { preset } = &caller {
        let preset = state.meta.get_preset(cloud, preset).await.ok()??;
        if !preset.unsigned {
            return None;
        }
    }
    Some(caller)
}
