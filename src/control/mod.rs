//! The control API under `/_nephos/`, for test suites and developers: clouds created and
//! removed at run time, resets, seeding, the record of requests and notifications, injected
//! faults, and holding asynchronous work. [`Control`] is its run-time state; [`api`] the routes.
//!
//! It is on by default only when the server listens on loopback, otherwise only with a token;
//! every call needs a header no simple cross-site request can carry, and `/_nephos/` sends no
//! CORS headers, so a web page the developer visits cannot drive it.

pub mod api;
pub mod clouds;
pub mod faults;
pub mod log;

use std::path::PathBuf;

use crate::auth::Account;
use crate::config::PresetSeed;
use crate::error::ApiResult;
use crate::form::Params;
use crate::state::AppState;

/// Whether asynchronous uploads and eager jobs may run (the control API can hold them).
pub struct Hold {
    held: tokio::sync::watch::Sender<bool>,
}

impl Default for Hold {
    fn default() -> Self {
        Hold {
            held: tokio::sync::watch::channel(false).0,
        }
    }
}

impl Hold {
    pub fn set(&self, held: bool) {
        self.held.send_replace(held);
    }

    pub fn is_held(&self) -> bool {
        *self.held.borrow()
    }

    /// Waits until work may run.
    pub async fn wait(&self) {
        let mut rx = self.held.subscribe();
        let _ = rx.wait_for(|held| !*held).await;
    }
}

/// The control API's run-time state.
#[derive(Default)]
pub struct Control {
    /// Whether `/_nephos/` answers at all.
    pub enabled: bool,
    /// When set, calls need `Authorization: Bearer <token>`.
    pub token: Option<String>,
    pub requests: log::RequestLog,
    pub notifications: log::NotificationLog,
    pub faults: faults::Faults,
    pub hold: Hold,
    /// The configured accounts (what a full reset returns to).
    pub configured: Vec<Account>,
    /// The configured OAuth tokens `(cloud, token)` (restored with the accounts).
    pub configured_tokens: Vec<(String, String)>,
    /// The configured upload presets (what a reset restores).
    pub presets: Vec<PresetSeed>,
    /// The folder uploaded into each configured cloud at start and after a reset.
    pub seed_dir: Option<PathBuf>,
}

/// Notes a call's parameters for the request record and applies the fault rules that look at
/// parameters (a delay, an answer, or both).
pub async fn observe_params(state: &AppState, params: &Params) -> ApiResult<()> {
    log::capture_params(params);
    let control = &state.control;
    if !control.faults.any_with_param() {
        return Ok(());
    }
    let Some((method, path, cloud)) = log::current() else {
        return Ok(());
    };
    if let Some(effect) = control
        .faults
        .check(&method, &path, cloud.as_deref(), Some(params))
    {
        if let Some(d) = effect.delay {
            tokio::time::sleep(d).await;
        }
        if let Some(answer) = effect.answer {
            return Err(answer);
        }
    }
    Ok(())
}
