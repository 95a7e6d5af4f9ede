//! nephos: a self-hosted server that speaks Cloudinary's Upload API.
//!
//! [`serve`] runs the server on a bound listener until `shutdown` resolves; `main.rs` is a thin
//! command-line wrapper around it.

pub mod admin;
pub mod auth;
pub mod config;
pub mod db;
pub mod delivery;
pub mod error;
pub mod form;
pub mod http;
pub mod kinds;
pub mod media;
pub mod metadata;
pub mod netpolicy;
pub mod notify;
pub mod state;
pub mod storage;
pub mod triggers;
pub mod upload;
pub mod util;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::auth::Accounts;
use crate::config::Config;
use crate::db::{MetaStore, Preset};
use crate::state::AppState;
use crate::storage::fs::FsBlobStore;

/// The base of returned URLs: the configured public URL, else `http://<bound address>`
/// (an unspecified address is shown as 127.0.0.1).
pub fn public_base(config: &Config, addr: SocketAddr) -> String {
    if let Some(u) = &config.public_url {
        return u.clone();
    }
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    format!("http://{addr}")
}

/// The `CLOUDINARY_URL` lines for every configured account.
pub fn cloudinary_urls(config: &Config, addr: SocketAddr) -> Vec<String> {
    let mut prefix = addr;
    if prefix.ip().is_unspecified() {
        prefix.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    config
        .accounts
        .iter()
        .map(|a| {
            let algo = match a.algorithm {
                auth::SignatureAlgorithm::Sha256 => "&signature_algorithm=sha256",
                auth::SignatureAlgorithm::Sha1 => "",
            };
            format!(
                "CLOUDINARY_URL=cloudinary://{}:{}@{}?upload_prefix=http://{prefix}{algo}",
                a.api_key, a.api_secret, a.cloud
            )
        })
        .collect()
}

/// The SQLite URL of the default database inside the data dir.
fn default_database_url(data_dir: &Path) -> String {
    format!("sqlite://{}?mode=rwc", data_dir.join("nephos.db").display())
}

/// Removes temporary files left by a crash.
fn sweep_temp(dir: &Path) -> std::io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

fn toml_to_json(v: &toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => Value::from(*f),
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => Value::Object(
            t.iter()
                .map(|(k, v)| (k.clone(), toml_to_json(v)))
                .collect(),
        ),
    }
}

/// Writes the presets of the configuration file to the database.
async fn seed_presets(config: &Config, meta: &dyn MetaStore) -> anyhow::Result<()> {
    let accounts = Accounts::new(config.accounts.clone());
    let clouds: Vec<String> = accounts.clouds().into_iter().map(str::to_string).collect();
    for seed in &config.presets {
        let targets: Vec<String> = match &seed.cloud {
            Some(c) => vec![c.clone()],
            None => clouds.clone(),
        };
        let settings: Map<String, Value> = seed
            .settings
            .iter()
            .map(|(k, v)| (k.clone(), toml_to_json(v)))
            .collect();
        for cloud in targets {
            meta.put_preset(&Preset {
                cloud,
                name: seed.name.clone(),
                unsigned: seed.unsigned,
                disallow_public_id: seed.disallow_public_id,
                settings: settings.clone(),
                external_id: util::random_hex(16),
                created_at: chrono::Utc::now().timestamp(),
            })
            .await?;
        }
    }
    Ok(())
}

/// Opens the stores, then serves HTTP on `listener` until `shutdown` completes.
pub async fn serve(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    std::fs::create_dir_all(&config.data_dir)?;
    let data_dir: PathBuf = std::fs::canonicalize(&config.data_dir)?;
    let tmp_dir = data_dir.join("tmp");
    std::fs::create_dir_all(&tmp_dir)?;
    let swept = sweep_temp(&tmp_dir)?;
    if swept > 0 {
        tracing::info!(
            files = swept,
            "removed temporary files left by an earlier run"
        );
    }
    let db_url = config
        .database_url
        .clone()
        .unwrap_or_else(|| default_database_url(&data_dir));
    let meta: Arc<dyn MetaStore> = db::connect(&db_url).await?;
    seed_presets(&config, meta.as_ref()).await?;
    let blobs = Arc::new(FsBlobStore::new(data_dir.join("blobs"))?);
    let allow = Arc::new(config.allow_fetch_from.clone());
    let timeout = Duration::from_secs(config.limits.remote_timeout_secs);
    let redirects = config.limits.remote_max_redirects;
    let http = netpolicy::client(netpolicy::Purpose::Fetch, allow.clone(), timeout, redirects)?;
    let webhooks = netpolicy::client(netpolicy::Purpose::Webhook, allow.clone(), timeout, 0)?;
    let mut state = AppState::new(
        Accounts::new(config.accounts.clone()).with_tokens(config.oauth_tokens.clone()),
        meta,
        blobs,
        tmp_dir,
        public_base(&config, addr),
        config.limits.clone(),
        http,
        data_dir.join("chunks"),
        config.fixed_time,
    );
    state.webhooks = webhooks;
    state.fetch_allow = allow;
    let sweeper = tokio::spawn(sweep_forever(state.clone()));
    tracing::info!(%addr, data_dir = %data_dir.display(), database = %redact(&db_url), "nephos listening");
    let limits = state.limits.clone();
    http::server::run(listener, http::router(state), &limits, shutdown).await;
    sweeper.abort();
    Ok(())
}

/// Removes abandoned chunked uploads and stale temporary files: once at start, then
/// periodically (a quarter of the session lifetime, at most every five minutes).
async fn sweep_forever(state: AppState) {
    let every = (state.limits.upload_session_ttl_secs / 4).clamp(1, 300) as u64;
    loop {
        match upload::chunked::sweep(&state).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "swept abandoned uploads and temporary files"),
            Err(e) => tracing::warn!(error = %e, "sweeping abandoned uploads failed"),
        }
        match upload::orphans::sweep(&state).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "removed stored files no record refers to"),
            Err(e) => tracing::warn!(error = %e, "sweeping orphaned files failed"),
        }
        tokio::time::sleep(Duration::from_secs(every)).await;
    }
}

/// A database URL without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}
