//! The shared state every handler sees.

use std::path::PathBuf;
use std::sync::Arc;

use crate::auth::Accounts;
use crate::config::Limits;
use crate::db::MetaStore;
use crate::storage::chunks::ChunkRuntime;
use crate::storage::BlobStore;

/// The server's state, shared by every request: cloning it is one reference count.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl From<Shared> for AppState {
    fn from(shared: Shared) -> AppState {
        AppState(Arc::new(shared))
    }
}

/// What [`AppState`] shares.
pub struct Shared {
    /// The accounts: those configured, and the clouds the control API adds at run time.
    accounts: Arc<std::sync::RwLock<Arc<Accounts>>>,
    pub meta: Arc<dyn MetaStore>,
    pub blobs: Arc<dyn BlobStore>,
    /// Where request bodies are streamed before they are stored.
    pub tmp_dir: PathBuf,
    /// Base of the `url`/`secure_url` fields, without a trailing slash.
    pub public_url: String,
    pub limits: Limits,
    /// Fetches remote `file` URLs (the fetch policy: public addresses unless allowed).
    pub http: reqwest::Client,
    /// Sends webhooks (the webhook policy: loopback and private networks too).
    pub webhooks: reqwest::Client,
    /// This server among the instances sharing a database (random, for leases).
    pub instance: String,
    /// Wakes the notification deliverer (a delivery was queued or an attempt ended).
    pub notifications: Arc<tokio::sync::Notify>,
    /// What the fetch policy opens (for checks before connecting).
    pub fetch_allow: Arc<crate::netpolicy::AllowList>,
    /// Where the parts of chunked uploads are kept until assembly.
    pub chunk_dir: PathBuf,
    /// In-process state of chunked uploads (ranges being written, background hashers).
    pub chunks: Arc<ChunkRuntime>,
    /// Triggers cached per cloud and the poll notification channels.
    pub hub: Arc<crate::triggers::Hub>,
    /// Room for request text in memory, shared by all requests.
    pub memory: crate::form::MemoryBudget,
    /// The `https://` base of `secure_url` fields when nephos serves TLS itself.
    pub secure_base: Option<String>,
    /// The base SDKs send API calls to (`upload_prefix`), without a trailing slash.
    pub api_base: String,
    /// Asset records delivery read lately (see `delivery::cache`).
    pub records: Arc<crate::delivery::cache::RecordCache>,
    /// Derived images being rendered, and the turns renders take.
    pub renders: Arc<crate::delivery::render::Renders>,
    /// The control API's state (records, faults, hold).
    pub control: Arc<crate::control::Control>,
    /// Structured metadata fields cached per cloud.
    pub fields: Arc<crate::metadata::FieldCache>,
    /// Prometheus metrics (`/metrics`).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Who may read `/metrics`: `None` when it is off, `Some(None)` anyone, `Some(Some(t))`
    /// a caller with bearer token `t`.
    pub metrics_access: Option<Option<String>>,
    fixed_time: Option<i64>,
}

impl Shared {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        accounts: Accounts,
        meta: Arc<dyn MetaStore>,
        blobs: Arc<dyn BlobStore>,
        tmp_dir: PathBuf,
        public_url: String,
        limits: Limits,
        http: reqwest::Client,
        chunk_dir: PathBuf,
        fixed_time: Option<i64>,
    ) -> Shared {
        let buffered = limits.max_buffered_bytes;
        let render_concurrency = limits.render_concurrency;
        let render_memory = limits.max_decode_bytes;
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let blobs = metrics.counting(blobs);
        Shared {
            accounts: Arc::new(std::sync::RwLock::new(Arc::new(accounts))),
            meta,
            blobs,
            tmp_dir,
            public_url: public_url.clone(),
            limits,
            webhooks: http.clone(),
            instance: crate::util::random_hex(8),
            notifications: Arc::new(tokio::sync::Notify::new()),
            http,
            fetch_allow: Arc::new(crate::netpolicy::AllowList::default()),
            chunk_dir,
            chunks: Arc::new(ChunkRuntime::default()),
            hub: Arc::new(crate::triggers::Hub::default()),
            fields: Arc::new(crate::metadata::FieldCache::default()),
            secure_base: None,
            api_base: public_url.clone(),
            control: Arc::new(crate::control::Control::default()),
            records: Arc::new(crate::delivery::cache::RecordCache::default()),
            renders: Arc::new(crate::delivery::render::Renders::new(
                render_concurrency,
                render_memory,
            )),
            memory: crate::form::MemoryBudget::new(buffered),
            metrics,
            metrics_access: Some(None),
            fixed_time,
        }
    }

    /// The accounts as they are now (a snapshot: the control API may change them).
    pub fn accounts(&self) -> Arc<Accounts> {
        match self.accounts.read() {
            Ok(a) => a.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the accounts with what `change` makes of them.
    pub fn update_accounts<T>(&self, change: impl FnOnce(&mut Accounts) -> T) -> T {
        let mut guard = match self.accounts.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut next = Accounts::clone(&guard);
        let out = change(&mut next);
        *guard = Arc::new(next);
        out
    }

    /// The `secure_url` of a delivery URL: on the `https://` base when nephos serves TLS.
    pub fn secure_url(&self, url: &str) -> String {
        match (
            &self.secure_base,
            url.strip_prefix(self.public_url.as_str()),
        ) {
            (Some(base), Some(rest)) => format!("{base}{rest}"),
            _ => url.to_string(),
        }
    }

    /// Unix seconds (frozen when the configuration fixes the clock).
    pub fn now(&self) -> i64 {
        self.fixed_time
            .unwrap_or_else(|| chrono::Utc::now().timestamp())
    }
}
