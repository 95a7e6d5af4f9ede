//! nephos: a self-hosted server that speaks Cloudinary's Upload API.
//!
//! [`serve`] runs the server on a bound listener until `shutdown` resolves; `main.rs` is a thin
//! command-line wrapper around it.

pub mod admin;
pub mod auth;
pub mod config;
pub mod console;
pub mod control;
pub mod db;
pub mod delivery;
pub mod error;
pub mod form;
pub mod http;
pub mod kinds;
pub mod media;
pub mod metadata;
pub mod metrics;
pub mod netpolicy;
pub mod notify;
pub mod state;
pub mod storage;
pub mod testing;
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

/// Writes the configured upload presets of `clouds` to the database (a preset without a
/// cloud belongs to every one).
pub(crate) async fn seed_presets(
    presets: &[config::PresetSeed],
    clouds: &[String],
    meta: &dyn MetaStore,
) -> anyhow::Result<()> {
    for seed in presets {
        let targets: Vec<&String> = match &seed.cloud {
            Some(c) => clouds.iter().filter(|x| *x == c).collect(),
            None => clouds.iter().collect(),
        };
        let settings: Map<String, Value> = seed
            .settings
            .iter()
            .map(|(k, v)| (k.clone(), toml_to_json(v)))
            .collect();
        for cloud in targets {
            meta.put_preset(&Preset {
                cloud: cloud.clone(),
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

/// A folder removed when dropped (the data dir of `--ephemeral`).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A server whose stores are open and whose listener is bound, ready to [`Server::run`].
/// Opening does everything that can fail at start, so that the ready lines are printed only
/// once the database and the data dir work.
pub struct Server {
    state: AppState,
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    tls: Option<http::tls::TlsSetup>,
    cors_origins: Vec<String>,
    config: Config,
    _ephemeral: Option<RemoveOnDrop>,
}

impl Server {
    /// Opens the data dir and the database, seeds, and prepares TLS. Every error names the
    /// path, host or option at fault.
    pub async fn open(config: Config, listener: tokio::net::TcpListener) -> anyhow::Result<Server> {
        let addr = listener.local_addr()?;
        let mut config = config;
        let ephemeral = if config.ephemeral {
            let dir = std::env::temp_dir().join(format!(
                "nephos-ephemeral-{}-{}",
                std::process::id(),
                util::random_hex(6)
            ));
            config.data_dir = dir.clone();
            if config.database_url.is_none() {
                config.database_url = Some("sqlite::memory:".into());
            }
            std::fs::create_dir_all(&dir).map_err(|e| {
                anyhow::anyhow!("cannot create the temporary folder {}: {e}", dir.display())
            })?;
            Some(RemoveOnDrop(dir))
        } else {
            None
        };
        let shown = config.data_dir.display().to_string();
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| anyhow::anyhow!("cannot create the data dir {shown}: {e}"))?;
        let data_dir: PathBuf = std::fs::canonicalize(&config.data_dir)
            .map_err(|e| anyhow::anyhow!("cannot open the data dir {shown}: {e}"))?;
        let tmp_dir = data_dir.join("tmp");
        std::fs::create_dir_all(&tmp_dir).map_err(|e| {
            anyhow::anyhow!("the data dir {} is not writable: {e}", data_dir.display())
        })?;
        let probe = tmp_dir.join(format!(".write-check-{}", util::random_hex(6)));
        std::fs::write(&probe, b"")
            .and_then(|_| std::fs::remove_file(&probe))
            .map_err(|e| {
                anyhow::anyhow!("the data dir {} is not writable: {e}", data_dir.display())
            })?;
        let swept = sweep_temp(&tmp_dir)
            .map_err(|e| anyhow::anyhow!("cannot clean {}: {e}", tmp_dir.display()))?;
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
        let meta: Arc<dyn MetaStore> = db::connect(&db_url)
            .await
            .map_err(|e| anyhow::anyhow!("cannot open the database {}: {e}", redact(&db_url)))?;
        let accounts = Accounts::new(config.accounts.clone());
        let clouds: Vec<String> = accounts.clouds().into_iter().map(str::to_string).collect();
        seed_presets(&config.presets, &clouds, meta.as_ref())
            .await
            .map_err(|e| anyhow::anyhow!("cannot write the configured upload presets: {e}"))?;
        let blobs = storage::open(config.storage_url.as_deref(), &data_dir.join("blobs"))?;
        let allow = Arc::new(config.allow_fetch_from.clone());
        let timeout = Duration::from_secs(config.limits.remote_timeout_secs);
        let redirects = config.limits.remote_max_redirects;
        let fetch =
            netpolicy::client(netpolicy::Purpose::Fetch, allow.clone(), timeout, redirects)?;
        let webhooks = netpolicy::client(netpolicy::Purpose::Webhook, allow.clone(), timeout, 0)?;
        let tls = match &config.tls {
            Some(t) => Some(http::tls::setup(
                t,
                &data_dir,
                config.public_url.as_deref(),
            )?),
            None => None,
        };
        let base = public_base(&config, addr);
        let mut state = state::Shared::new(
            accounts.with_tokens(config.oauth_tokens.clone()),
            meta,
            blobs,
            tmp_dir,
            base.clone(),
            config.limits.clone(),
            fetch,
            data_dir.join("chunks"),
            config.fixed_time,
        );
        state.webhooks = webhooks;
        state.fetch_allow = allow;
        state.metrics_access = (!config.no_metrics).then(|| config.metrics_token.clone());
        // Several instances may share a PostgreSQL database: delivery reads records afresh.
        if db_url.starts_with("postgres") {
            state.records = Arc::new(delivery::cache::RecordCache::new(false));
        }
        state.api_base = api_base(addr, "http");
        if tls.is_some() && config.public_url.is_none() {
            state.secure_base = Some(api_base(addr, "https"));
        }
        let enabled =
            !config.no_control && (config.control_token.is_some() || addr.ip().is_loopback());
        state.control = Arc::new(control::Control {
            enabled,
            token: config.control_token.clone(),
            configured: config.accounts.clone(),
            configured_tokens: config.oauth_tokens.clone(),
            presets: config.presets.clone(),
            seed_dir: config.seed.clone(),
            ..Default::default()
        });
        let state = AppState::from(state);
        if let Some(dir) = &config.seed {
            for cloud in &clouds {
                let out = control::clouds::seed(&state, cloud, dir)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot seed from {}: {e}", dir.display()))?;
                let failed = out["failed"].as_array().map_or(0, Vec::len);
                let uploaded = out["uploaded"].as_array().map_or(0, Vec::len);
                if failed > 0 {
                    tracing::warn!(%cloud, failed, detail = %out["failed"], "some seed files were refused");
                }
                tracing::info!(%cloud, uploaded, folder = %dir.display(), "seeded");
            }
        }
        tracing::debug!(%addr, data_dir = %data_dir.display(), database = %redact(&db_url), "stores open");
        Ok(Server {
            state,
            listener,
            addr,
            tls,
            cors_origins: config.cors_origins.clone(),
            config,
            _ephemeral: ephemeral,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base SDKs send calls to (`http://…`; plain HTTP is served with `--tls` too).
    pub fn base_url(&self) -> String {
        self.state.api_base.clone()
    }

    /// The `https://` base when TLS is served.
    pub fn secure_base_url(&self) -> Option<String> {
        self.tls.as_ref().map(|_| api_base(self.addr, "https"))
    }

    /// The path of the local CA's certificate, when nephos made one.
    pub fn ca_certificate(&self) -> Option<&Path> {
        self.tls.as_ref().and_then(|t| t.ca_path.as_deref())
    }

    /// The `CLOUDINARY_URL` of the first configured account.
    pub fn cloudinary_url(&self) -> String {
        cloudinary_urls(&self.config, self.addr)
            .into_iter()
            .next()
            .map(|l| l.trim_start_matches("CLOUDINARY_URL=").to_string())
            .unwrap_or_default()
    }

    /// What to print once ready: the address, then one `CLOUDINARY_URL` line per account
    /// (and, with TLS, the https lines and the CA to trust).
    pub fn ready_lines(&self) -> Vec<String> {
        let mut lines = vec![format!("nephos listening on {}", self.base_url())];
        if let Some(https) = self.secure_base_url() {
            lines.push(format!(
                "nephos listening on {https} (TLS on the same port)"
            ));
        }
        if self.config.dev_account {
            lines.push("no account configured: using the development account".into());
        }
        if self.config.ephemeral {
            lines.push("ephemeral: nothing is kept after exit".into());
        }
        if self.state.control.enabled {
            lines.push(format!(
                "control API: {}/_nephos/ ({})",
                self.base_url(),
                if self.state.control.token.is_some() {
                    "Authorization: Bearer <control token>"
                } else {
                    "header X-Nephos-Control: 1"
                }
            ));
            lines.push(format!("console: {}/console", self.base_url()));
        }
        lines.extend(cloudinary_urls(&self.config, self.addr));
        if let Some(https) = self.secure_base_url() {
            for line in cloudinary_urls(&self.config, self.addr) {
                lines.push(line.replace(&self.base_url(), &https));
            }
        }
        if let Some(ca) = self.ca_certificate() {
            lines.push(format!("CA certificate: {}", ca.display()));
            lines.push(format!("NODE_EXTRA_CA_CERTS={}", ca.display()));
        }
        lines
    }

    /// Serves until `shutdown` completes.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Server {
            state,
            listener,
            tls,
            cors_origins,
            _ephemeral,
            ..
        } = self;
        let sweeper = tokio::spawn(sweep_forever(state.clone()));
        let deliverer = tokio::spawn(notify::deliver_forever(state.clone()));
        let limits = state.limits.clone();
        let app = http::app(state, &cors_origins);
        http::server::run(listener, app, &limits, tls.map(|t| t.acceptor), shutdown).await;
        sweeper.abort();
        deliverer.abort();
        drop(_ephemeral);
        Ok(())
    }
}

/// `scheme://<bound address>` (an unspecified address shown as 127.0.0.1).
fn api_base(addr: SocketAddr, scheme: &str) -> String {
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    format!("{scheme}://{addr}")
}

/// Opens the stores, then serves HTTP on `listener` until `shutdown` completes.
pub async fn serve(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    Server::open(config, listener).await?.run(shutdown).await
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
        // A database server and its store may be shared by several instances: one of them at
        // a time lists the store (the lease outlives two rounds, so a stopped holder's turn
        // passes to another). A database file has one instance: it sweeps.
        let now = state.now();
        let lease = if state.meta.shared() {
            state
                .meta
                .try_lease(
                    "orphan-sweep",
                    &state.instance,
                    now,
                    now + 2 * every as i64 + 60,
                )
                .await
        } else {
            Ok(true)
        };
        match lease {
            Ok(true) => match upload::orphans::sweep(&state).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "removed stored files no record refers to"),
                Err(e) => tracing::warn!(error = %e, "sweeping orphaned files failed"),
            },
            Ok(false) => tracing::debug!("another instance sweeps orphaned files"),
            Err(e) => tracing::warn!(error = %e, "taking the orphan sweep's lease failed"),
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

/// Asks a running nephos at `listen` (an unspecified address means loopback) for
/// `GET /health` over plain HTTP; `Ok` when it answers 200.
pub fn healthcheck(listen: &str, timeout: Duration) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let mut addr: SocketAddr = listen
        .parse()
        .map_err(|e| anyhow::anyhow!("invalid listen address {listen:?}: {e}"))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| anyhow::anyhow!("cannot connect to {addr}: {e}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    stream
        .take(64 * 1024)
        .read_to_end(&mut answer)
        .map_err(|e| anyhow::anyhow!("no answer from {addr}: {e}"))?;
    let text = String::from_utf8_lossy(&answer);
    let status = text.lines().next().unwrap_or("");
    if status.split_whitespace().nth(1) == Some("200") {
        Ok(())
    } else {
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("").trim();
        anyhow::bail!("{addr} answered {status:?} {body}")
    }
}
